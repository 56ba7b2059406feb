//! Hot reload of a plugins directory: swaps within a second, rejected files leave the old version serving,
//! deleting an override restores the built-in, and calls during a swap all succeed on the old or new version.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aragora_cp::plugins::registry::PluginStatus;
use aragora_cp::plugins::strategy::Answerer;
use aragora_cp::plugins::watcher::WatchOptions;
use aragora_cp::plugins::{PluginRegistry, PluginSource, PluginWatcher};
use aragora_cp_tests::{
    candidate, ctx, details, guest_bytes, registry, task, wait_until, write_by_rename, write_in_place,
};

fn watch(registry: &Arc<PluginRegistry>) -> (tempfile::TempDir, PluginWatcher) {
    let dir = tempfile::tempdir().unwrap();
    let options = WatchOptions { debounce: Duration::from_millis(100), rescan: Duration::from_secs(1) };
    let (watcher, report) = PluginWatcher::start(dir.path(), registry.clone(), options).unwrap();
    assert!(report.loaded.is_empty());
    (dir, watcher)
}

fn active_sha(registry: &PluginRegistry, name: &str) -> Option<String> {
    registry.active(name).map(|v| v.sha256.clone())
}

fn sha_of(bytes: &[u8]) -> String {
    aragora_cp::model::sha256_hex(bytes)
}

#[test]
fn a_new_strategy_file_is_active_within_a_second() {
    let registry = registry();
    let (dir, _watcher) = watch(&registry);
    let bytes = guest_bytes("highest_index");
    write_in_place(dir.path(), "custom.wasm", &bytes);
    let took = wait_until(Duration::from_secs(1), || active_sha(&registry, "custom").is_some())
        .expect("custom strategy active within 1 s");
    eprintln!("custom strategy active after {took:?}");
    let set = [candidate(0, 0, None), candidate(5, 0, None), candidate(9, 0, None)];
    let selection = registry.select("custom", ctx(1), &task("code"), &set, &details(3)).unwrap();
    assert_eq!((selection.index, selection.answered_by), (2, Answerer::Plugin));
}

#[test]
fn a_file_overriding_a_builtin_swaps_it_and_deleting_it_restores_the_builtin() {
    let registry = registry();
    let builtin_sha = active_sha(&registry, "least_loaded").unwrap();
    let (dir, _watcher) = watch(&registry);
    let set = [candidate(3, 0, None), candidate(0, 0, None), candidate(2, 0, None)];
    let pick = || registry.select("least_loaded", ctx(1), &task("code"), &set, &[]).unwrap().index;
    assert_eq!(pick(), 1);

    write_by_rename(dir.path(), "least_loaded.wasm", &guest_bytes("highest_index"));
    wait_until(Duration::from_secs(1), || registry.active("least_loaded").unwrap().source == PluginSource::File)
        .expect("override active within 1 s");
    assert_eq!(pick(), 2, "the override's rule answers");
    let info = registry.info("least_loaded").unwrap();
    assert_eq!(info.shadowed.len(), 1, "the built-in is listed as shadowed");

    std::fs::remove_file(dir.path().join("least_loaded.wasm")).unwrap();
    wait_until(Duration::from_secs(1), || active_sha(&registry, "least_loaded").as_ref() == Some(&builtin_sha))
        .expect("built-in restored within 1 s");
    assert_eq!(pick(), 1);
}

#[test]
fn a_broken_file_is_rejected_and_the_previous_version_keeps_serving() {
    let registry = registry();
    let (dir, _watcher) = watch(&registry);
    let good = guest_bytes("highest_index");
    write_in_place(dir.path(), "custom.wasm", &good);
    wait_until(Duration::from_secs(1), || active_sha(&registry, "custom").is_some()).expect("loaded");
    let good_sha = sha_of(&good);
    assert_eq!(active_sha(&registry, "custom"), Some(good_sha.clone()));

    for (label, bytes) in [
        ("garbage", b"not a component at all".to_vec()),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("forbidden import", guest_bytes("forbidden_import")),
    ] {
        let mut events = registry.subscribe();
        write_in_place(dir.path(), "custom.wasm", &bytes);
        wait_until(Duration::from_secs(2), || {
            registry.info("custom").and_then(|i| i.last_rejection).is_some_and(|r| r.sha256 == sha_of(&bytes))
        })
        .unwrap_or_else(|| panic!("{label}: rejection recorded"));
        assert_eq!(active_sha(&registry, "custom"), Some(good_sha.clone()), "{label}: old version still active");
        let info = registry.info("custom").unwrap();
        assert_eq!(info.status, PluginStatus::Active);
        assert!(!info.last_rejection.unwrap().error.is_empty());
        let event = events.try_recv().expect("a plugin_rejected event");
        assert!(format!("{event:?}").contains("PluginRejected"), "{event:?}");
    }
    let set = [candidate(0, 0, None), candidate(0, 0, None)];
    assert_eq!(registry.select("custom", ctx(1), &task("code"), &set, &[]).unwrap().index, 1);
}

#[test]
fn a_file_written_in_several_chunks_ends_on_its_final_version() {
    let registry = registry();
    let (dir, _watcher) = watch(&registry);
    let bytes = guest_bytes("lowest_latency");
    let path = dir.path().join("chunked.wasm");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&path).unwrap();
        for chunk in bytes.chunks(bytes.len() / 4 + 1) {
            file.write_all(chunk).unwrap();
            file.flush().unwrap();
            std::thread::sleep(Duration::from_millis(60));
        }
    }
    wait_until(Duration::from_secs(3), || active_sha(&registry, "chunked") == Some(sha_of(&bytes)))
        .expect("the complete file is active");
}

#[test]
fn calls_during_repeated_swaps_all_succeed_on_the_old_or_the_new_version() {
    let registry = registry();
    let (dir, _watcher) = watch(&registry);
    let first = guest_bytes("highest_index");
    let second = guest_bytes("lowest_latency");
    let (first_sha, second_sha) = (sha_of(&first), sha_of(&second));
    write_in_place(dir.path(), "swapped.wasm", &first);
    wait_until(Duration::from_secs(1), || active_sha(&registry, "swapped").is_some()).expect("loaded");

    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..3)
        .map(|seed| {
            let registry = registry.clone();
            let stop = stop.clone();
            let (first_sha, second_sha) = (first_sha.clone(), second_sha.clone());
            std::thread::spawn(move || {
                let set = [candidate(0, 0, None), candidate(0, 0, None), candidate(0, 0, None)];
                let mut calls = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let selection = registry.select("swapped", ctx(seed), &task("code"), &set, &[]).unwrap();
                    assert_eq!(selection.answered_by, Answerer::Plugin, "no fallback during a swap");
                    let sha = selection.sha256.unwrap();
                    assert!(sha == first_sha || sha == second_sha, "answered by an unknown version {sha}");
                    calls += 1;
                }
                calls
            })
        })
        .collect();
    for round in 0..6 {
        let (bytes, sha) = if round % 2 == 0 { (&second, &second_sha) } else { (&first, &first_sha) };
        write_by_rename(dir.path(), "swapped.wasm", bytes);
        // A bound that only catches a swap that never happens: three callers spin on two cores meanwhile.
        wait_until(Duration::from_secs(20), || active_sha(&registry, "swapped").as_ref() == Some(sha))
            .unwrap_or_else(|| panic!("swap {round} happened"));
    }
    stop.store(true, Ordering::Relaxed);
    let calls: u64 = callers.into_iter().map(|c| c.join().expect("caller thread")).sum();
    assert!(calls > 0);
    let stats = registry.active("swapped").unwrap().stats.snapshot();
    assert_eq!((stats.failures, stats.fallbacks), (0, 0));
}

#[test]
fn a_call_in_flight_keeps_the_version_it_started_on() {
    let registry = registry();
    registry.install("held", PluginSource::File, &guest_bytes("highest_index"), Default::default()).unwrap();
    let held = registry.active("held").unwrap();
    registry.install("held", PluginSource::File, &guest_bytes("lowest_latency"), Default::default()).unwrap();
    let set = [candidate(0, 0, None), candidate(0, 0, None)];
    assert_eq!(held.select(ctx(1), &task("code"), &set, &[]), Ok(1), "the old version still answers its caller");
    assert_eq!(registry.select("held", ctx(1), &task("code"), &set, &[]).unwrap().index, 0);
}

#[test]
fn files_present_at_start_are_loaded_before_start_returns() {
    let registry = registry();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("early.wasm"), guest_bytes("highest_index")).unwrap();
    std::fs::write(dir.path().join("broken.wasm"), b"nope").unwrap();
    std::fs::create_dir(dir.path().join("some_guest_crate")).unwrap();
    std::fs::write(dir.path().join("some_guest_crate/ignored.wasm"), b"nope").unwrap();
    let (_watcher, report) = PluginWatcher::start(dir.path(), registry.clone(), WatchOptions::default()).unwrap();
    assert_eq!(report.loaded, vec!["early".to_string()]);
    assert_eq!(report.rejected, vec!["broken".to_string()]);
    assert!(registry.active("early").is_some());
    assert_eq!(registry.info("broken").unwrap().status, PluginStatus::Rejected);
    assert!(registry.info("ignored").is_none());
}

#[test]
fn a_manifest_change_alone_reloads_the_plugin() {
    let registry = registry();
    let (dir, _watcher) = watch(&registry);
    write_in_place(dir.path(), "limited.wasm", &guest_bytes("highest_index"));
    wait_until(Duration::from_secs(1), || registry.active("limited").is_some()).expect("loaded");
    write_in_place(dir.path(), "limited.toml", b"[limits]\nfuel = 2000000\n");
    wait_until(Duration::from_secs(2), || registry.active("limited").unwrap().limits.fuel == 2_000_000)
        .expect("manifest applied");
    write_in_place(dir.path(), "limited.toml", b"this is = = not toml");
    wait_until(Duration::from_secs(2), || registry.info("limited").unwrap().last_rejection.is_some())
        .expect("bad manifest rejected");
    assert_eq!(registry.active("limited").unwrap().limits.fuel, 2_000_000, "previous version still serving");
}

#[test]
fn a_fifo_or_directory_named_like_a_plugin_does_not_block_the_watcher() {
    let registry = registry();
    let dir = tempfile::tempdir().unwrap();
    let made = std::process::Command::new("mkfifo").arg(dir.path().join("pipe.wasm")).status().unwrap();
    assert!(made.success());
    std::fs::create_dir(dir.path().join("folder.wasm")).unwrap();
    std::fs::write(dir.path().join("real.wasm"), guest_bytes("highest_index")).unwrap();
    // Start-up reads the directory on this thread: a blocking open of the FIFO would hang the test here.
    let (_watcher, report) = PluginWatcher::start(dir.path(), registry.clone(), WatchOptions::default()).unwrap();
    assert_eq!(report.loaded, vec!["real".to_string()]);
    assert!(registry.info("pipe").is_none() && registry.info("folder").is_none());
}

#[test]
fn compiled_code_is_cached_in_a_private_directory() {
    use std::os::unix::fs::PermissionsExt;
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().join("compiled");
    let runtime = aragora_cp::plugins::PluginRuntime::new(aragora_cp::plugins::RuntimeOptions {
        cache_dir: Some(dir.clone()),
        ..Default::default()
    })
    .unwrap();
    let bytes = guest_bytes("lowest_latency");
    aragora_cp::plugins::loader::load(&runtime, "cached", PluginSource::File, &bytes, Default::default()).unwrap();
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the cache directory is private to the server's user");
    let cached = wait_until(Duration::from_secs(5), || {
        walk(&dir).iter().any(|path| std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() > 0))
    });
    assert!(cached.is_some(), "compiled code was written to the cache");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}
