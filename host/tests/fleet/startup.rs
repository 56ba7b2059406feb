//! How `serve` starts on Redis, as an operator sees it: an explicit `REDIS_URL` nobody answers is retried for
//! `REDIS_CONNECT_TIMEOUT`, then the process exits non-zero naming `REDIS_URL` (never falling back to memory); a
//! server on Redis without `ARAGORA_JWT_SECRET` refuses to start naming it (a fleet must share its secret); a
//! Redis whose `maxmemory-policy` may evict keys is a loud start-up warning.

use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use crate::redis_server::{RedisServer, shared_server, unique_prefix};

use crate::harness::{SECRET, Server, serve_command};

/// Runs `serve` to its exit (it must exit within a minute) and returns what it wrote.
fn run_to_exit(command: &mut std::process::Command) -> Output {
    let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let started = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let output = child.wait_with_output().expect("output");
            panic!("serve did not exit within 60 s; stderr:\n{}", String::from_utf8_lossy(&output.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// The line `main` prints for the error that ended the process.
fn error_line(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    stderr.lines().rev().find(|l| l.starts_with("error: ")).unwrap_or_default().to_string()
}

#[test]
fn an_unreachable_redis_url_ends_serve_naming_redis_url() {
    // A port that was free a moment ago: nothing answers there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let started = Instant::now();
    let output = run_to_exit(
        serve_command()
            .env("REDIS_URL", format!("redis://127.0.0.1:{port}"))
            .env("REDIS_CONNECT_TIMEOUT", "1")
            .env("ARAGORA_JWT_SECRET", SECRET)
            .env("CONTROL_PLANE_PREFIX", unique_prefix("fleet-unreachable")),
    );
    assert!(!output.status.success(), "serve exited {}", output.status);
    let line = error_line(&output);
    assert!(line.starts_with("error: REDIS_URL"), "the error names REDIS_URL: {line:?}");
    assert!(!line.contains("within 5 s"), "the error states the wait it really made: {line:?}");
    assert!(output.stdout.is_empty(), "it never listened: {}", String::from_utf8_lossy(&output.stdout));
    eprintln!("gave up after {:.1} s: {line}", started.elapsed().as_secs_f64());
}

#[test]
fn serve_on_redis_without_a_jwt_secret_refuses_naming_it() {
    let output = run_to_exit(
        serve_command()
            .env("REDIS_URL", shared_server().url())
            .env("CONTROL_PLANE_PREFIX", unique_prefix("fleet-no-secret")),
    );
    assert!(!output.status.success(), "serve exited {}", output.status);
    let line = error_line(&output);
    assert!(line.starts_with("error: ARAGORA_JWT_SECRET"), "the error names ARAGORA_JWT_SECRET: {line:?}");
    assert!(output.stdout.is_empty(), "it never listened: {}", String::from_utf8_lossy(&output.stdout));
}

#[test]
fn a_redis_that_may_evict_keys_is_a_startup_warning() {
    let redis = RedisServer::start_with(&["--maxmemory-policy", "allkeys-lru"]);
    let logs = tempfile::tempdir().unwrap();
    let mut servers = Server::start_fleet(1, &redis.url(), &unique_prefix("fleet-eviction"), logs.path());
    let log = servers[0].log();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("maxmemory-policy is not noeviction")
            && l.contains("allkeys-lru")),
        "no eviction warning in the start-up log:\n{log}"
    );
    let status = servers[0].terminate();
    assert!(status.success(), "SIGTERM ended the server with {status}; its log:\n{}", servers[0].log());

    // And none with noeviction (the shared server runs Redis's default). Its own log directory: a server's log
    // continues the log of the one before it in the same position.
    let quiet_logs = tempfile::tempdir().unwrap();
    let prefix = unique_prefix("fleet-noeviction");
    let mut quiet = Server::start_fleet(1, &shared_server().url(), &prefix, quiet_logs.path());
    assert!(!quiet[0].log().contains("maxmemory-policy"), "a warning with noeviction:\n{}", quiet[0].log());
    let status = quiet[0].terminate();
    assert!(status.success(), "SIGTERM ended the server with {status}; its log:\n{}", quiet[0].log());
    drop(servers);
}
