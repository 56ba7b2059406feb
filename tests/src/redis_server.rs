//! Real Redis for tests: [`RedisServer`] starts a `redis-server` child on a free loopback port (no persistence) and
//! [`RedisCluster`] three of them as a 3-master cluster. Each test binary shares one of each ([`shared_server`],
//! [`shared_cluster`]); tests isolate themselves with a unique key prefix ([`unique_prefix`]), never by port.
//!
//! Every server runs under a small `sh` guard that kills it when the test process's end of the guard's stdin closes,
//! so a shared server (a `static`, never dropped) still dies with the test binary, even after a panic or an abort.
//! Never the Redis a developer may run on 6379: ports are picked fresh.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a fresh server may take to answer PING (a busy two-core machine builds while tests run).
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Tries at a free port before giving up (another process may take the port between the probe and the bind).
const PORT_TRIES: usize = 5;

/// The shell guard: starts redis-server in the background, waits until its stdin reaches EOF (the test process
/// closed it or exited), then stops the server.
const GUARD: &str =
    r#"redis-server "$@" & pid=$!; trap 'kill $pid 2>/dev/null' EXIT; read -r _; kill $pid 2>/dev/null; wait $pid"#;

/// One `redis-server` child on 127.0.0.1.
pub struct RedisServer {
    /// Its TCP port.
    pub port: u16,
    args: Vec<String>,
    guard: Child,
    stdin: Option<ChildStdin>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a standalone server with `--save "" --appendonly no` on a free port; panics with an install hint if
    /// `redis-server` is missing.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Starts a server with extra arguments (`--cluster-enabled yes`, …); `{dir}` in them is its temporary
    /// directory, `{bus}` a free port for the cluster bus.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        require_binary("redis-server");
        let mut last_error = String::new();
        for _ in 0..PORT_TRIES {
            let dir = tempfile::tempdir().expect("temporary directory for redis");
            let port = free_port();
            let bus = free_port().to_string();
            let dir_text = dir.path().display().to_string();
            let mut args: Vec<String> = vec![
                "--port".into(),
                port.to_string(),
                "--bind".into(),
                "127.0.0.1".into(),
                "--save".into(),
                String::new(),
                "--appendonly".into(),
                "no".into(),
                "--dir".into(),
                dir_text.clone(),
                "--logfile".into(),
                dir.path().join("redis.log").display().to_string(),
                // The suites share one server; a 10,000-task batch script on a loaded 2-core machine can run past
                // the default 5 s, after which every other test's call would be answered BUSY instead of waiting.
                "--busy-reply-threshold".into(),
                "60000".into(),
            ];
            // Later arguments win: `extra` may turn the append-only file on.
            args.extend(extra.iter().map(|a| a.replace("{dir}", &dir_text).replace("{bus}", &bus)));
            let (guard, stdin) = spawn_guarded(&args);
            let mut server = RedisServer { port, args, guard, stdin, dir };
            if server.wait_ready() {
                return server;
            }
            last_error = server.log();
            server.stop();
        }
        panic!("redis-server did not start after {PORT_TRIES} tries; its log:\n{last_error}");
    }

    /// Stops the server (`SHUTDOWN`-like: the guard's SIGTERM lets Redis flush its append-only file) and starts it
    /// again on the same port and directory, as an operator's restart would.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Kills the server with SIGKILL, as a crash or an OOM kill would: no flush, no goodbye to clients. Only what
    /// the append-only file already holds survives (everything acknowledged, with `--appendfsync always`). Bring
    /// it back with [`start_again`](Self::start_again).
    pub fn crash(&mut self) {
        let info = self.command("INFO server").expect("INFO server before the crash");
        let pid = info
            .lines()
            .find_map(|line| line.strip_prefix("process_id:"))
            .map(|pid| pid.trim().to_string())
            .expect("INFO server names the process id");
        let status = Command::new("kill").args(["-KILL", &pid]).status().expect("run kill");
        assert!(status.success(), "kill -KILL {pid} failed");
        let started = Instant::now();
        while self.command("PING").is_ok() {
            assert!(started.elapsed() < START_TIMEOUT, "redis-server {pid} still answers after SIGKILL");
            std::thread::sleep(Duration::from_millis(10));
        }
        self.stop();
    }

    /// Starts a stopped or crashed server again with the same arguments: same port, same directory, so it reloads
    /// its append-only file.
    pub fn start_again(&mut self) {
        let (guard, stdin) = spawn_guarded(&self.args);
        (self.guard, self.stdin) = (guard, stdin);
        assert!(self.wait_ready(), "redis-server did not come back; its log:\n{}", self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Sends one inline command and returns the raw reply.
    pub fn command(&self, line: &str) -> std::io::Result<String> {
        inline_command(self.port, line)
    }

    fn wait_ready(&mut self) -> bool {
        let started = Instant::now();
        while started.elapsed() < START_TIMEOUT {
            if matches!(self.guard.try_wait(), Ok(Some(_))) {
                return false;
            }
            if self.command("PING").is_ok_and(|reply| reply.starts_with("+PONG")) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn stop(&mut self) {
        // Closing stdin tells the guard to stop the server and wait for it.
        drop(self.stdin.take());
        let _ = self.guard.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Three masters, no replicas, all slots assigned.
pub struct RedisCluster {
    /// The nodes.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers, joins them with `redis-cli --cluster create`, and waits until every
    /// node reports `cluster_state:ok`.
    pub fn start() -> RedisCluster {
        require_binary("redis-cli");
        let cluster_args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "{dir}/nodes.conf",
            "--cluster-port",
            "{bus}",
            "--cluster-node-timeout",
            "5000",
        ];
        let nodes: Vec<RedisServer> = (0..3).map(|_| RedisServer::start_with(&cluster_args)).collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let output = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let started = Instant::now();
        while !nodes.iter().all(|n| n.command("CLUSTER INFO").is_ok_and(|info| info.contains("cluster_state:ok"))) {
            assert!(started.elapsed() < START_TIMEOUT, "the cluster did not reach cluster_state:ok");
            std::thread::sleep(Duration::from_millis(50));
        }
        RedisCluster { nodes }
    }

    /// The seed nodes, `redis://127.0.0.1:PORT` each.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}

/// The standalone server of this test binary, started on first use.
pub fn shared_server() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(RedisServer::start)
}

/// The cluster of this test binary, started on first use.
pub fn shared_cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(RedisCluster::start)
}

/// A key prefix no other test of any process uses (process id, a counter, the time).
pub fn unique_prefix(name: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("test:{name}:{}:{n}:{nanos}:", std::process::id())
}

/// Starts `redis-server args…` under the shell guard; the guard's stdin is the test process's handle on it.
fn spawn_guarded(args: &[String]) -> (Child, Option<ChildStdin>) {
    let mut guard = Command::new("sh")
        .arg("-c")
        .arg(GUARD)
        .arg("redis-guard")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sh for redis-server");
    let stdin = guard.stdin.take();
    (guard, stdin)
}

fn require_binary(name: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| Path::new(&dir).join(name).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{name} not found on PATH: the Redis tests need a real Redis 7 (Debian: apt-get install redis-server)"
    );
}

/// A port that was free a moment ago (bind to port 0, read it, release it).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a probe socket");
    listener.local_addr().expect("probe address").port()
}

fn inline_command(port: u16, line: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(format!("{line}\r\n").as_bytes())?;
    let mut buffer = [0u8; 8192];
    let read = stream.read(&mut buffer)?;
    Ok(String::from_utf8_lossy(&buffer[..read]).into_owned())
}
