//! `aragora-cp serve` as a process: it prints where it listens and a development token, writes JSON log lines
//! with request ids under `--log-format json`, and on SIGTERM fails readiness, ends event streams and exits 0
//! well within its drain bound; its text log escapes what clients chose, so nobody forges a line.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

struct Served {
    child: Child,
    base: String,
    token: String,
}

fn start(log_format: &str) -> Served {
    start_with(log_format, &[])
}

fn start_with(log_format: &str, env: &[(&str, &str)]) -> Served {
    let mut child = Command::new(env!("CARGO_BIN_EXE_aragora-cp"))
        .args(["--log-format", log_format, "serve", "--drain-seconds", "20"])
        .envs(env.iter().copied())
        .env("BIND", "127.0.0.1:0")
        .env("REDIS_URL", "memory://")
        .env("PLUGINS_DIR", "/nonexistent-plugins-dir")
        .env("RUST_LOG", "info,aragora_cp::api::access=debug")
        .env_remove("ARAGORA_JWT_SECRET")
        .env_remove("ARAGORA_JWT_PUBLIC_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("aragora-cp serve starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let listening = lines.next().expect("a first line").unwrap();
    let base = listening.strip_prefix("aragora-cp listening on ").expect("the listening line").to_string();
    let token = lines.find_map(|line| line.ok().filter(|l| l.starts_with("ey"))).expect("a printed admin token");
    Served { child, base, token }
}

fn terminate(child: &Child) {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_carry_request_ids_and_sigterm_drains_promptly() {
    let mut served = start("json");
    let client = reqwest::Client::new();
    let stats = format!("{}/api/v1/control-plane/stats", served.base);
    let response =
        client.get(&stats).bearer_auth(&served.token).header("x-request-id", "trace-me-42").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let ready = client.get(format!("{}/readyz", served.base)).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    let mut events = client
        .get(format!("{}/api/v1/control-plane/events", served.base))
        .bearer_auth(&served.token)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    let asked = Instant::now();
    terminate(&served.child);
    let ended =
        tokio::time::timeout(Duration::from_secs(10), async { while let Ok(Some(_)) = events.chunk().await {} }).await;
    assert!(ended.is_ok(), "the event stream ends when draining begins");
    let status = tokio::task::spawn_blocking(move || {
        let status = served.child.wait().unwrap();
        let mut stderr = String::new();
        served.child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
        (status, stderr)
    });
    let (status, stderr) = tokio::time::timeout(Duration::from_secs(15), status).await.expect("exits").unwrap();
    assert!(status.success(), "exit status {status}; stderr:\n{stderr}");
    assert!(asked.elapsed() < Duration::from_secs(15), "a drain with an open event stream must not wait its bound");

    let lines: Vec<Value> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}")))
        .collect();
    assert!(!lines.is_empty(), "no log lines");
    assert!(
        lines.iter().any(|l| l["span"]["request_id"] == "trace-me-42"),
        "no log line carries the request id:\n{stderr}"
    );
    assert!(lines.iter().any(|l| l["fields"]["message"].as_str().is_some_and(|m| m.contains("shutting down"))));
}

/// Base64url without padding, as JWT segments are written.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn text_logs_escape_what_clients_chose_so_no_line_can_be_forged() {
    let mut served = start("pretty");
    let client = reqwest::Client::new();
    let forged = "2026-12-02T00:00:00.000000Z ERROR aragora_cp::auth: admin login ok";

    // Without a token: a JWT whose header is the forged line (any claims, any signature).
    let header = base64url(serde_json::json!({ "alg": format!("x\n{forged}") }).to_string().as_bytes());
    let token = format!("{header}.{}.c2ln", base64url(b"{}"));
    let stats = format!("{}/api/v1/control-plane/stats", served.base);
    let refused = client.get(&stats).bearer_auth(&token).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let body: Value = refused.json().await.unwrap();
    let detail = body["detail"].as_str().unwrap();
    assert!(!detail.contains("admin login"), "a 401 does not echo the token's header: {detail}");

    // With a valid token: a path that a 404's detail echoes.
    let path = format!("{}/api/v1/control-plane/tasks/x%0a{}", served.base, forged.replace(' ', "%20"));
    let missing = client.get(&path).bearer_auth(&served.token).send().await.unwrap();
    assert_eq!(missing.status(), 404);

    terminate(&served.child);
    let stderr = tokio::task::spawn_blocking(move || {
        served.child.wait().unwrap();
        let mut stderr = String::new();
        served.child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
        stderr
    })
    .await
    .unwrap();
    assert!(stderr.contains("request refused"), "the refusals are logged:\n{stderr}");
    assert!(stderr.contains("\\n2026-12-02T00:00:00"), "the newline is written escaped:\n{stderr}");
    assert!(
        !stderr.lines().any(|line| line.starts_with(forged)),
        "a client's text started a log line of its own:\n{stderr}"
    );
}

/// Reads from `stream` until the server closes it (`true`) or `limit` passes (`false`): a guard against a hang,
/// not a measurement.
async fn closed_by_server(stream: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buffer = [0u8; 4096];
    let read_until_eof = async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, read_until_eof).await.is_ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_headers_and_idle_connections_are_closed_after_the_header_read_timeout() {
    use tokio::io::AsyncWriteExt;
    let served = start_with("json", &[("HEADER_READ_TIMEOUT", "1")]);
    let address = served.base.trim_start_matches("http://").to_string();

    // A head that never ends.
    let mut slow = tokio::net::TcpStream::connect(&address).await.unwrap();
    slow.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    assert!(closed_by_server(&mut slow, Duration::from_secs(15)).await, "a head still incomplete is cut off");

    // A connection that answered one request, then idles.
    let mut idle = tokio::net::TcpStream::connect(&address).await.unwrap();
    idle.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert!(closed_by_server(&mut idle, Duration::from_secs(15)).await, "an idle keep-alive connection is closed");

    // A connection that says nothing at all.
    let mut silent = tokio::net::TcpStream::connect(&address).await.unwrap();
    assert!(closed_by_server(&mut silent, Duration::from_secs(15)).await, "a silent connection is closed");

    let client = reqwest::Client::new();
    let live = client.get(format!("{}/livez", served.base)).send().await.unwrap();
    assert_eq!(live.status(), 200, "the server still answers");
    terminate(&served.child);
    let mut child = served.child;
    tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
}

/// `serve` on the memory store with `env` added, run to its end (for settings it refuses at start-up).
fn serve_refusing(env: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_aragora-cp"))
        .arg("serve")
        .env("BIND", "127.0.0.1:0")
        .env("REDIS_URL", "memory://")
        .env("PLUGINS_DIR", "/nonexistent-plugins-dir")
        .envs(env.iter().copied())
        .output()
        .expect("aragora-cp runs")
}

#[test]
fn require_redis_accepts_1_and_refuses_a_memory_url() {
    let output = serve_refusing(&[("ARAGORA_REQUIRE_REDIS", "1")]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("ARAGORA_REQUIRE_REDIS=1 contradicts REDIS_URL=memory://"), "{stderr}");
}

#[test]
fn worker_threads_are_as_set_and_zero_is_refused() {
    let refused = serve_refusing(&[("WORKER_THREADS", "0")]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("WORKER_THREADS: must be 1 to 1024 (got 0)"), "{stderr}");

    let mut served = start_with("json", &[("WORKER_THREADS", "3")]);
    terminate(&served.child);
    let mut log = String::new();
    served.child.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    assert!(served.child.wait().unwrap().success(), "{log}");
    let started = log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["fields"]["message"] == "runtime started")
        .unwrap_or_else(|| panic!("a `runtime started` line: {log}"));
    assert_eq!(started["fields"]["worker_threads"], 3, "{started}");
}
