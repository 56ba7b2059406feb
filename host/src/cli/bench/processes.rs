//! The processes the benches start themselves: `aragora-cp serve` children (`compare`, `soak`) and a
//! `redis-server` the soak restarts mid-run, each killed when dropped; and what Linux's `/proc` says of a process
//! (resident memory, open file descriptors), which the soak samples over time.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long a child may take to start listening (a loaded two-core machine, a cold page cache).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A server process a bench started; killed when dropped.
pub struct Spawned {
    /// The process.
    pub child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port (bound and released: the child binds it a moment later).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts `binary serve` on a port of its own choosing with a clean environment (only `PATH`, `HOME` and `TMPDIR`
/// of ours, so a developer's `REDIS_URL` or JWT settings cannot leak in) plus `env`; its stderr goes to `stderr`.
/// Answers once it printed its listening line.
pub fn spawn_serve(binary: &Path, env: &[(&str, String)], stderr: Stdio) -> anyhow::Result<Spawned> {
    let mut command = Command::new(binary);
    command.arg("serve").env_clear();
    for kept in ["PATH", "HOME", "TMPDIR"] {
        if let Some(value) = std::env::var_os(kept) {
            command.env(kept, value);
        }
    }
    command.env("BIND", "127.0.0.1:0").envs(env.iter().map(|(k, v)| (k, v))).stdin(Stdio::null());
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("start {} serve", binary.display()))?;
    let stdout = child.stdout.take().expect("piped");
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + START_TIMEOUT;
    let base = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(base) = line.split("listening on ").nth(1) {
                    break base.trim().to_string();
                }
            }
            _ => {
                let _ = child.kill();
                bail!("{} serve exited before it listened", binary.display());
            }
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("{} serve did not start listening", binary.display());
        }
    };
    // Keep reading its stdout so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok(Spawned { child, base })
}

/// This binary, the one whose `serve` the benches start unless told otherwise.
pub fn this_binary() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("the path of this binary")
}

/// A process's open file descriptors (entries of `/proc/PID/fd`; Linux).
pub fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// A `redis-server` child on a free loopback port with an append-only file (`appendfsync always`) in a
/// directory of its own, so that a restart loses nothing it acknowledged.
pub struct RedisProcess {
    /// Its port.
    pub port: u16,
    program: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisProcess {
    /// Starts `program` (`redis-server`); answers once it answers PING.
    pub fn start(program: &Path) -> anyhow::Result<RedisProcess> {
        let dir = tempfile::tempdir().context("a directory for Redis")?;
        let mut redis = RedisProcess { port: free_port()?, program: program.to_path_buf(), dir, child: None };
        redis.start_again()?;
        Ok(redis)
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops it as an operator's restart does (SIGTERM: Redis flushes and exits) and waits for the exit.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().to_string();
            Command::new("kill").args(["-TERM", &pid]).status().context("run kill")?;
            child.wait().context("wait for redis-server")?;
        }
        Ok(())
    }

    /// Starts it (again) on the same port and directory, so it reloads its append-only file.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        let dir = self.dir.path().display().to_string();
        let child = Command::new(&self.program)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--dir", &dir])
            .args(["--save", "", "--appendonly", "yes", "--appendfsync", "always"])
            .args(["--logfile", &self.dir.path().join("redis.log").display().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start {} (install Redis, or pass --redis-server)", self.program.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while !self.answers_ping() {
            if Instant::now() > deadline {
                bail!("redis-server on port {} did not answer PING", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn answers_ping(&self) -> bool {
        let ping = || -> std::io::Result<bool> {
            let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
            stream.set_read_timeout(Some(Duration::from_secs(1)))?;
            stream.write_all(b"PING\r\n")?;
            let mut reply = [0u8; 16];
            let read = stream.read(&mut reply)?;
            Ok(reply[..read].starts_with(b"+PONG"))
        };
        ping().unwrap_or(false)
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
