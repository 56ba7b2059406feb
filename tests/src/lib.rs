//! Shared support for the end-to-end tests: plugin runtimes with test-friendly limits, the guests built from
//! `plugins/`, candidate builders, temporary plugin directories and polling helpers; in [`store_harness`], the
//! store-agnostic harness of the store conformance suite and model test; in [`redis_server`], real `redis-server`
//! processes (standalone and a 3-master cluster); in [`browser`], Chromium driven by playwright for the dashboard; in
//! [`tls_server`], an HTTPS server with a test certificate.

pub mod browser;
pub mod languages;
pub mod python_sdk;
pub mod receiver;
pub mod redis_server;
pub mod server;
pub mod store_harness;
pub mod tls_server;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aragora_cp::plugins::bindings::{CallContext, Candidate, CandidateDetails, HealthStatus, Priority, TaskInfo};
use aragora_cp::plugins::builtin::guest_path;
use aragora_cp::plugins::{CallLimits, PluginKind, PluginRegistry, PluginRuntime, RuntimeOptions};

/// Limits for tests: the default fuel and memory, but a deadline long enough that a test process preempted on a
/// busy two-core machine does not fail a call that is not meant to fail. Deadline tests set their own.
pub fn test_limits(kind: PluginKind) -> CallLimits {
    CallLimits { deadline: Duration::from_secs(2), ..CallLimits::default_for(kind) }
}

/// A runtime with [`test_limits`], no compilation cache, and one instance warmed per version (so a test sees
/// whether the instance of a failed call came back: the next call must start a fresh one).
pub fn runtime() -> PluginRuntime {
    PluginRuntime::new(RuntimeOptions { default_limits: test_limits, warm_instances: 1, ..RuntimeOptions::default() })
        .expect("plugin runtime")
}

/// A registry holding the built-ins, on a [`runtime`].
pub fn registry() -> Arc<PluginRegistry> {
    Arc::new(PluginRegistry::new(runtime(), "test-server").expect("built-ins load"))
}

/// `NAME` under the system's temporary folder, built once per machine: answered as it is when `ready` (a path
/// inside it) exists; otherwise `build` fills a folder of this process's own (the path it gets does not exist
/// yet), published under `NAME` by an atomic rename, so concurrent test binaries never see a half-built one and
/// the one that loses the race drops its copy.
pub fn built_once(name: &str, ready: &str, build: impl FnOnce(&Path)) -> PathBuf {
    let home = std::env::temp_dir().join(name);
    if home.join(ready).exists() {
        return home;
    }
    // Named after the thread too: two tests of one binary may build the same thing at once.
    let building =
        std::env::temp_dir().join(format!("{name}.{}.{:?}", std::process::id(), std::thread::current().id()));
    let _ = std::fs::remove_dir_all(&building);
    build(&building);
    if std::fs::rename(&building, &home).is_err() {
        let _ = std::fs::remove_dir_all(&building);
    }
    assert!(home.join(ready).exists(), "{} has no {ready} after it was built", home.display());
    home
}

/// The component built from `plugins/**/NAME`.
pub fn guest(name: &str) -> PathBuf {
    PathBuf::from(guest_path(name).unwrap_or_else(|| panic!("no guest crate named {name} under plugins/")))
}

/// The bytes of the component built from `plugins/**/NAME`.
pub fn guest_bytes(name: &str) -> Vec<u8> {
    std::fs::read(guest(name)).expect("read guest component")
}

/// A call context with a fixed clock.
pub fn ctx(seed: u64) -> CallContext {
    CallContext { now_ms: 1_700_000_000_000, seed }
}

/// A task of the given type.
pub fn task(task_type: &str) -> TaskInfo {
    TaskInfo {
        id: "task_0190a1b2c3d4e5f60718293a4b5c6d7e".into(),
        task_type: task_type.into(),
        priority: Priority::Normal,
        required_capabilities: vec![],
        labels: vec![],
    }
}

/// A healthy candidate with the given load and history; everything else neutral.
pub fn candidate(in_flight: u32, completed: u64, since_assigned_ms: Option<u64>) -> Candidate {
    Candidate {
        in_flight,
        max_concurrent: 4,
        completed,
        failed: 0,
        avg_latency_ms: 100,
        heartbeat_age_ms: 500,
        since_assigned_ms,
        health: HealthStatus::Healthy,
    }
}

/// Details for `count` candidates named `agent-0`, `agent-1`, …
pub fn details(count: usize) -> Vec<CandidateDetails> {
    (0..count)
        .map(|i| CandidateDetails {
            agent_id: format!("agent-{i}"),
            model: "model".into(),
            provider: "provider".into(),
            labels: vec![],
        })
        .collect()
}

/// Polls `condition` every 10 ms until it holds or `limit` passes; returns the time it took, or `None`.
pub fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    loop {
        if condition() {
            return Some(started.elapsed());
        }
        if started.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Writes `bytes` to `dir/file` the way `cp` does over an existing file: truncate, then write in place.
pub fn write_in_place(dir: &Path, file: &str, bytes: &[u8]) {
    std::fs::write(dir.join(file), bytes).expect("write plugin file");
}

/// Writes `bytes` to `dir/file` the way editors and `mv` do: a temporary file in the same directory, renamed.
pub fn write_by_rename(dir: &Path, file: &str, bytes: &[u8]) {
    let temporary = dir.join(format!(".{file}.tmp"));
    std::fs::write(&temporary, bytes).expect("write temporary file");
    std::fs::rename(&temporary, dir.join(file)).expect("rename into place");
}

/// Installs the example plugin `name` (built from `plugins/NAME`, with its shipped manifest) on this coordinator's
/// server only, as a file in its plugins folder would.
pub fn install_example(coordinator: &aragora_cp::coordinator::ControlPlaneCoordinator, name: &str) {
    coordinator
        .install_local_plugin(name, &guest_bytes(name), example_manifest(name))
        .unwrap_or_else(|e| panic!("the example {name} loads: {e}"));
}

/// The manifest shipped beside the guest crate `plugins/NAME/NAME.toml`.
pub fn example_manifest(name: &str) -> aragora_cp::plugins::Manifest {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins").join(name).join(format!("{name}.toml"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    aragora_cp::plugins::Manifest::parse(&text).expect("example manifest parses")
}
