//! `aragora-cp bench soak`: a long mixed load on a small fleet this command starts itself (a `redis-server` with
//! an append-only file and `--servers` `aragora-cp serve` processes on it), with the churn a real fleet has:
//! agents that join, work for a while, then leave politely or die holding a task (its lease must come back
//! through the heartbeat timeout), and return later under the same id; submitters posting single tasks and
//! batches at a steady rate, half of them routed by an uploaded strategy that is replaced every `--swap-every`
//! seconds; and Redis restarted once, halfway. Every `--sample-every` seconds it prints, per server, resident
//! memory and open file descriptors, and over the window, throughput and p99 of submit, complete and heartbeat.
//! At the end it drains and checks the oracle: every acknowledged task completed exactly once (one lease), the
//! store agreeing, no 5xx other than a proper 503, no panic in any server's log. Exit status 1 when it fails.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use parking_lot::Mutex;
use rand::RngExt;
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::percentile_us;
use super::processes::{RedisProcess, Spawned, open_fds, spawn_serve, this_binary};
use crate::api::figures::resident_bytes;
use crate::api::{Authenticator, Permission};
use crate::cli::client::Output;

/// The uploaded strategy the soak swaps; half the tasks name it.
const STRATEGY: &str = "soak_strategy";
/// The built-ins whose components it alternates between.
const SWAPPED: [&str; 2] = ["least_loaded", "round_robin"];
/// Tasks in a batch submit (one submit in ten is a batch).
const BATCH: usize = 5;
/// A claim's `block_ms`.
const CLAIM_BLOCK_MS: u64 = 1000;
/// `HEARTBEAT_TIMEOUT` of the servers: how soon a dead agent's task comes back.
const HEARTBEAT_TIMEOUT_S: u64 = 3;
/// The longest any one request may take before it counts as lost.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const API: &str = "/api/v1/control-plane";

/// Arguments of `bench soak`.
#[derive(Debug, Args)]
pub struct SoakBenchArgs {
    /// Seconds of load (the drain comes after).
    #[arg(long, default_value_t = 600.0)]
    pub duration: f64,
    /// Servers sharing the Redis.
    #[arg(long, default_value_t = 2)]
    pub servers: usize,
    /// Agents (each joins, works, leaves or dies, and returns, over and over).
    #[arg(long, default_value_t = 40)]
    pub agents: usize,
    /// Concurrent submitters.
    #[arg(long, default_value_t = 8)]
    pub submitters: usize,
    /// Submits per second, all submitters together (one in ten is a batch of five tasks).
    #[arg(long, default_value_t = 150.0)]
    pub rate: f64,
    /// Seconds between strategy swaps.
    #[arg(long, default_value_t = 30.0)]
    pub swap_every: f64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 60.0)]
    pub sample_every: f64,
    /// Do not restart Redis halfway.
    #[arg(long)]
    pub no_redis_restart: bool,
    /// The `redis-server` program.
    #[arg(long, default_value = "redis-server")]
    pub redis_server: PathBuf,
    /// The `aragora-cp` binary whose `serve` runs the fleet (default: this one).
    #[arg(long)]
    pub serve_binary: Option<PathBuf>,
    /// Seconds the drain may take before unfinished tasks count as lost.
    #[arg(long, default_value_t = 120.0)]
    pub drain_timeout: f64,
    /// Table for people, JSON for scripts.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// One sample: the window since the previous one, and each server's process now.
#[derive(Clone, Debug, Serialize)]
pub struct SoakSample {
    /// Seconds since the load began, at the sample.
    pub at_s: f64,
    /// Tasks acknowledged in the window.
    pub submitted: u64,
    /// Tasks completed in the window.
    pub completed: u64,
    /// Completed tasks per second over the window.
    pub tasks_per_second: f64,
    /// p99 of submits in the window, ms.
    pub submit_p99_ms: f64,
    /// p99 of completes in the window, ms.
    pub complete_p99_ms: f64,
    /// p99 of heartbeats in the window, ms.
    pub heartbeat_p99_ms: f64,
    /// 503 answers in the window.
    pub unavailable: u64,
    /// Resident memory of each server, MiB.
    pub rss_mib: Vec<f64>,
    /// Open file descriptors of each server.
    pub fds: Vec<usize>,
    /// What happened in the window (swaps, restarts).
    pub notes: Vec<String>,
}

/// One server's process over the run.
#[derive(Clone, Debug, Serialize)]
pub struct ServerFigures {
    /// Resident memory at the start of the load, its peak, and at the end of the drain, MiB.
    pub rss_start_mib: f64,
    /// Peak of the samples.
    pub rss_peak_mib: f64,
    /// At the end.
    pub rss_end_mib: f64,
    /// Open file descriptors at the start, peak and end.
    pub fds_start: usize,
    /// Peak of the samples.
    pub fds_peak: usize,
    /// At the end.
    pub fds_end: usize,
    /// Its log shows a panic.
    pub panicked: bool,
}

/// The whole run.
#[derive(Clone, Debug, Serialize)]
pub struct SoakReport {
    /// Seconds of load.
    pub duration_s: f64,
    /// Seconds the drain took.
    pub drain_s: f64,
    /// Servers sharing the Redis.
    pub servers: usize,
    /// Agents.
    pub agents: usize,
    /// Submitters.
    pub submitters: usize,
    /// Every sample, the first at the start of the load.
    pub samples: Vec<SoakSample>,
    /// Per server.
    pub server_figures: Vec<ServerFigures>,
    /// Tasks acknowledged.
    pub submitted: u64,
    /// Tasks completed (distinct).
    pub completed: u64,
    /// Acknowledged but never completed.
    pub lost: u64,
    /// Completed under two or more leases.
    pub completed_twice: u64,
    /// Tasks an agent died holding (they had to come back through the heartbeat timeout).
    pub abandoned: u64,
    /// Agents that died without a word.
    pub agent_deaths: u64,
    /// Agents that left with `DELETE /agents/{id}`.
    pub agent_departures: u64,
    /// Agents that came back.
    pub agent_returns: u64,
    /// Strategy swaps the fleet accepted.
    pub swaps: u64,
    /// Swap uploads refused or lost (tried again at the next swap).
    pub swap_failures: u64,
    /// Redis restarts.
    pub redis_restarts: u64,
    /// Milliseconds Redis was down, all restarts together.
    pub redis_down_ms: u64,
    /// 503 answers (`store_unavailable` while Redis was down or slow).
    pub unavailable: u64,
    /// Requests with no answer (retried).
    pub lost_requests: u64,
    /// Completes refused with 409 (the lease had moved on).
    pub conflicts: u64,
    /// Answers that broke the API's rules (5xx other than 503, unexpected statuses), the first 20.
    pub anomalies: Vec<String>,
    /// The store's counts agree with the ledger (completed = acknowledged, nothing pending or running).
    pub store_agrees: bool,
    /// Nothing lost, nothing twice, no anomaly, no panic, the store agreeing.
    pub passed: bool,
}

/// What the workers share.
struct Soak {
    http: reqwest::Client,
    bases: Vec<String>,
    auth: Authenticator,
    /// The load phase is over: submitters stop, agents stop dying.
    load_over: CancellationToken,
    /// The drain is over: agents leave.
    leave: CancellationToken,
    ledger: Mutex<Ledger>,
    window: Mutex<Window>,
    unavailable: AtomicU64,
    lost_requests: AtomicU64,
    conflicts: AtomicU64,
    abandoned: AtomicU64,
    deaths: AtomicU64,
    departures: AtomicU64,
    returns: AtomicU64,
    anomalies: Mutex<Vec<String>>,
    /// Agents' lifetimes and absences scale with the run.
    life: Duration,
    /// When the fleet was up (anomalies say when they happened).
    started: Instant,
}

/// Every task acknowledged, and every lease a completion was accepted under.
#[derive(Default)]
struct Ledger {
    acknowledged: HashSet<String>,
    completions: HashMap<String, HashSet<String>>,
}

/// Latencies and counts since the last sample.
#[derive(Default)]
struct Window {
    submit: Vec<Duration>,
    complete: Vec<Duration>,
    heartbeat: Vec<Duration>,
    submitted: u64,
    completed: u64,
    notes: Vec<String>,
}

/// An answer, or none.
enum Answer {
    Status(StatusCode, Value),
    Lost,
}

impl Soak {
    fn token(&self, sub: &str, permissions: &[Permission]) -> String {
        self.auth.issue(sub, permissions, Duration::from_secs(7 * 24 * 3600)).expect("sign a token")
    }

    /// One request; counts 503s and lost requests, records any other 5xx as an anomaly.
    async fn send(&self, server: usize, method: Method, path: &str, token: &str, body: Option<&Value>) -> Answer {
        let url = format!("{}{API}{path}", self.bases[server]);
        let mut request = self.http.request(method.clone(), &url).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let Ok(response) = request.send().await else {
            self.lost_requests.fetch_add(1, Ordering::Relaxed);
            return Answer::Lost;
        };
        let status = response.status();
        let Ok(bytes) = response.bytes().await else {
            self.lost_requests.fetch_add(1, Ordering::Relaxed);
            return Answer::Lost;
        };
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status == StatusCode::SERVICE_UNAVAILABLE && value["code"] == "store_unavailable" {
            self.unavailable.fetch_add(1, Ordering::Relaxed);
        } else if status.is_server_error() {
            self.anomaly(format!("{method} {path} on server {server}: {status} {value}"));
        }
        Answer::Status(status, value)
    }

    /// Sends until answered with something other than 503 or 429, moving to the next server when one does not
    /// answer; `None` once `give_up` fires.
    async fn send_until_answered(
        &self,
        at: &AtomicUsize,
        method: Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
        give_up: &CancellationToken,
    ) -> Option<(StatusCode, Value)> {
        loop {
            let server = at.load(Ordering::Relaxed);
            match self.send(server, method.clone(), path, token, body).await {
                Answer::Status(StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS, _) => {}
                Answer::Status(status, value) => return Some((status, value)),
                Answer::Lost => at.store((server + 1) % self.bases.len(), Ordering::Relaxed),
            }
            tokio::select! {
                _ = give_up.cancelled() => return None,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    fn anomaly(&self, what: String) {
        let mut anomalies = self.anomalies.lock();
        if anomalies.len() < 20 {
            anomalies.push(format!("at {:.1} s: {what}", self.started.elapsed().as_secs_f64()));
        }
    }

    /// How many acknowledged tasks are not completed yet.
    fn outstanding(&self) -> usize {
        let ledger = self.ledger.lock();
        ledger.acknowledged.iter().filter(|id| !ledger.completions.contains_key(*id)).count()
    }
}

/// A submitter: one submit every `period` (one in ten a batch), each task with an idempotency key so a submit
/// whose answer was lost is sent again safely; half the tasks name the swapped strategy.
async fn submitter(soak: Arc<Soak>, index: usize, period: Duration) {
    let token = soak.token(&format!("soak-submitter-{index}"), &[Permission::Tasks, Permission::Read]);
    let at = AtomicUsize::new(index % soak.bases.len());
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let never = CancellationToken::new();
    let mut n = 0usize;
    loop {
        tokio::select! {
            _ = soak.load_over.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let count = if n % 10 == 9 { BATCH } else { 1 };
        let tasks: Vec<Value> = (n..n + count)
            .map(|k| {
                let priority = ["critical", "high", "normal", "low"][k % 4];
                let mut task = json!({
                    "task_type": "soak",
                    "payload": {"submitter": index, "n": k},
                    "priority": priority,
                    "idempotency_key": format!("soak-{index}-{k}"),
                });
                if k % 2 == 0 {
                    task["strategy"] = json!(STRATEGY);
                }
                task
            })
            .collect();
        n += count;
        let (path, body) = if count == 1 {
            ("/tasks", tasks.into_iter().next().expect("one task"))
        } else {
            ("/tasks/batch", json!({"tasks": tasks}))
        };
        let started = Instant::now();
        // Once acknowledged or not, a submit's outcome must be known: it is sent until answered.
        let Some((status, answer)) =
            soak.send_until_answered(&at, Method::POST, path, &token, Some(&body), &never).await
        else {
            continue;
        };
        let elapsed = started.elapsed();
        if !status.is_success() {
            soak.anomaly(format!("submit: {status} {answer}"));
            continue;
        }
        let ids: Vec<String> = match answer.get("task_ids").and_then(Value::as_array) {
            Some(ids) => ids.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
            None => answer["task_id"].as_str().map(|id| vec![id.to_string()]).unwrap_or_default(),
        };
        {
            let mut window = soak.window.lock();
            window.submit.push(elapsed);
            window.submitted += ids.len() as u64;
        }
        soak.ledger.lock().acknowledged.extend(ids);
    }
}

/// One agent's life, over and over until the drain ends: register (a new session), heartbeat with the tasks it
/// holds, claim and complete until its lifetime is over, then leave (`DELETE`) or die (stop everything, holding a
/// task when it has one), stay away a while, and return.
async fn agent(soak: Arc<Soak>, index: usize) {
    let id = format!("soak-agent-{index:03}");
    let token = soak.token(&format!("agent:{id}"), &[Permission::Agents, Permission::Tasks]);
    let at = Arc::new(AtomicUsize::new(index % soak.bases.len()));
    let mut first = true;
    loop {
        if !first {
            let away = soak.life.mul_f64(rand::rng().random_range(0.05..0.25));
            tokio::select! {
                _ = soak.leave.cancelled() => return,
                _ = tokio::time::sleep(away) => {}
            }
            soak.returns.fetch_add(1, Ordering::Relaxed);
        }
        first = false;
        let session = format!("{:032x}", rand::random::<u128>());
        let registration = json!({
            "agent_id": id, "capabilities": ["soak"], "model": "soak-model", "provider": "soak",
            "session_id": session, "max_concurrent_tasks": 1,
        });
        let answer = soak.send_until_answered(&at, Method::POST, "/agents", &token, Some(&registration), &soak.leave);
        match answer.await {
            None => return,
            Some((StatusCode::CREATED | StatusCode::OK, _)) => {}
            Some((status, answer)) => {
                soak.anomaly(format!("register {id}: {status} {answer}"));
                return;
            }
        }
        let held: Arc<Mutex<Option<String>>> = Arc::default();
        let alive = CancellationToken::new();
        let beating = tokio::spawn(heartbeat(
            soak.clone(),
            id.clone(),
            token.clone(),
            session.clone(),
            at.clone(),
            held.clone(),
            alive.clone(),
        ));
        let lifetime = soak.life.mul_f64(rand::rng().random_range(0.3..1.0));
        let dies = rand::rng().random_bool(0.4);
        let born = Instant::now();
        let claim = json!({"agent_id": id, "block_ms": CLAIM_BLOCK_MS, "session_id": session});
        let left = loop {
            let ending = !soak.load_over.is_cancelled() && born.elapsed() > lifetime;
            if soak.leave.is_cancelled() || (ending && !dies) {
                break true;
            }
            let Some((status, answer)) =
                soak.send_until_answered(&at, Method::POST, "/tasks/claim", &token, Some(&claim), &soak.leave).await
            else {
                break true;
            };
            if status != StatusCode::OK {
                soak.anomaly(format!("claim by {id}: {status} {answer}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            let Some(task) = answer.get("task").filter(|t| t.is_object()) else {
                if ending {
                    break false;
                }
                continue;
            };
            let task_id = task["task_id"].as_str().unwrap_or_default().to_string();
            let lease = task["lease_id"].as_str().unwrap_or_default().to_string();
            if ending {
                // Dies holding it: the task must come back through the heartbeat timeout.
                soak.abandoned.fetch_add(1, Ordering::Relaxed);
                break false;
            }
            *held.lock() = Some(task_id.clone());
            complete(&soak, &at, &token, &task_id, &lease).await;
            *held.lock() = None;
        };
        alive.cancel();
        let _ = beating.await;
        if left {
            let path = format!("/agents/{id}");
            let never = CancellationToken::new();
            if let Some((status, answer)) =
                soak.send_until_answered(&at, Method::DELETE, &path, &token, None, &never).await
                && !status.is_success()
                && status != StatusCode::NOT_FOUND
            {
                soak.anomaly(format!("unregister {id}: {status} {answer}"));
            }
            soak.departures.fetch_add(1, Ordering::Relaxed);
            if soak.leave.is_cancelled() {
                return;
            }
        } else {
            soak.deaths.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Completes under the lease, sending again while the answer is lost or 503 (the same outcome again is answered
/// from the store, so it applies once).
async fn complete(soak: &Soak, at: &AtomicUsize, token: &str, task_id: &str, lease: &str) {
    let body = json!({"lease_id": lease, "result": {"soak": true}});
    let path = format!("/tasks/{task_id}/complete");
    let started = Instant::now();
    let never = CancellationToken::new();
    let Some((status, answer)) = soak.send_until_answered(at, Method::POST, &path, token, Some(&body), &never).await
    else {
        return;
    };
    match status {
        StatusCode::OK => {
            let first = {
                let mut ledger = soak.ledger.lock();
                let leases = ledger.completions.entry(task_id.to_string()).or_default();
                let first = leases.is_empty();
                leases.insert(lease.to_string());
                first
            };
            let mut window = soak.window.lock();
            window.complete.push(started.elapsed());
            if first {
                window.completed += 1;
            }
        }
        StatusCode::CONFLICT => {
            soak.conflicts.fetch_add(1, Ordering::Relaxed);
        }
        _ => soak.anomaly(format!("complete of {task_id}: {status} {answer}")),
    }
}

/// Heartbeats every second with the task held, until `alive` ends (a death or a departure).
async fn heartbeat(
    soak: Arc<Soak>,
    id: String,
    token: String,
    session: String,
    at: Arc<AtomicUsize>,
    held: Arc<Mutex<Option<String>>>,
    alive: CancellationToken,
) {
    let path = format!("/agents/{id}/heartbeat");
    loop {
        tokio::select! {
            _ = alive.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let current: Vec<String> = held.lock().iter().cloned().collect();
        let body = json!({"session_id": session, "current_task_ids": current});
        let server = at.load(Ordering::Relaxed);
        let started = Instant::now();
        match soak.send(server, Method::POST, &path, &token, Some(&body)).await {
            Answer::Status(StatusCode::OK, _) => soak.window.lock().heartbeat.push(started.elapsed()),
            Answer::Status(StatusCode::SERVICE_UNAVAILABLE | StatusCode::NOT_FOUND, _) => {}
            Answer::Status(status, answer) => soak.anomaly(format!("heartbeat of {id}: {status} {answer}")),
            Answer::Lost => at.store((server + 1) % soak.bases.len(), Ordering::Relaxed),
        }
    }
}

/// Uploads `component` as the swapped strategy through `server`; whether the fleet took it.
async fn upload(soak: &Soak, admin: &str, server: usize, component: &'static [u8]) -> bool {
    let url = format!("{}{API}/plugins/{STRATEGY}", soak.bases[server]);
    let request = soak.http.put(url).bearer_auth(admin).header("content-type", "application/wasm").body(component);
    match request.send().await {
        Ok(response) if response.status().is_success() => true,
        Ok(response) => {
            let status = response.status();
            if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
                soak.anomaly(format!("upload: {status} {}", response.text().await.unwrap_or_default()));
            }
            false
        }
        Err(_) => false,
    }
}

fn mib(bytes: Option<u64>) -> f64 {
    bytes.map(|b| b as f64 / (1024.0 * 1024.0)).unwrap_or(0.0)
}

/// Takes the window and the processes' figures.
fn sample(soak: &Soak, servers: &[Spawned], at: f64, since: f64, unavailable_before: &mut u64) -> SoakSample {
    let window = std::mem::take(&mut *soak.window.lock());
    let p99 = |mut v: Vec<Duration>| {
        v.sort_unstable();
        percentile_us(&v, 0.99) / 1e3
    };
    let unavailable = soak.unavailable.load(Ordering::Relaxed);
    let delta = unavailable - *unavailable_before;
    *unavailable_before = unavailable;
    SoakSample {
        at_s: at,
        submitted: window.submitted,
        completed: window.completed,
        tasks_per_second: if at > since { window.completed as f64 / (at - since) } else { 0.0 },
        submit_p99_ms: p99(window.submit),
        complete_p99_ms: p99(window.complete),
        heartbeat_p99_ms: p99(window.heartbeat),
        unavailable: delta,
        rss_mib: servers.iter().map(|s| mib(resident_bytes(s.child.id()))).collect(),
        fds: servers.iter().map(|s| open_fds(s.child.id()).unwrap_or(0)).collect(),
        notes: window.notes,
    }
}

fn print_sample(s: &SoakSample) {
    let rss: Vec<String> = s.rss_mib.iter().map(|m| format!("{m:.0}")).collect();
    let fds: Vec<String> = s.fds.iter().map(usize::to_string).collect();
    eprintln!(
        "soak {:>6.0} s: {:>6} submitted, {:>6} completed ({:>5.0}/s), p99 submit {:>6.1} ms, complete {:>6.1} ms, \
         heartbeat {:>6.1} ms, 503s {:>4}, RSS MiB {}, fds {}{}",
        s.at_s,
        s.submitted,
        s.completed,
        s.tasks_per_second,
        s.submit_p99_ms,
        s.complete_p99_ms,
        s.heartbeat_p99_ms,
        s.unavailable,
        rss.join("/"),
        fds.join("/"),
        if s.notes.is_empty() { String::new() } else { format!("; {}", s.notes.join(", ")) }
    );
}

/// Runs the soak and returns its report; `Err` only when the fleet cannot start.
pub async fn run_soak(args: &SoakBenchArgs) -> anyhow::Result<SoakReport> {
    anyhow::ensure!(args.duration > 0.0 && args.sample_every > 0.0 && args.swap_every > 0.0, "durations must be > 0");
    anyhow::ensure!(
        args.servers > 0 && args.agents > 0 && args.submitters > 0 && args.rate > 0.0,
        "counts must be > 0"
    );
    let binary = match &args.serve_binary {
        Some(path) => path.clone(),
        None => this_binary()?,
    };
    let mut redis = tokio::task::block_in_place(|| RedisProcess::start(&args.redis_server))?;
    let logs = tempfile::tempdir().context("a directory for the servers' logs and plugins")?;
    let secret = format!("{:064x}", rand::random::<u128>());
    let env = [
        ("REDIS_URL", redis.url()),
        ("ARAGORA_JWT_SECRET", secret.clone()),
        ("HEARTBEAT_INTERVAL", "1".to_string()),
        ("HEARTBEAT_TIMEOUT", HEARTBEAT_TIMEOUT_S.to_string()),
        ("PLUGINS_DIR", logs.path().join("plugins").display().to_string()),
        ("RUST_LOG", "warn".to_string()),
        ("REDIS_CONNECT_TIMEOUT", "30".to_string()),
    ];
    let mut servers = Vec::new();
    let mut log_paths = Vec::new();
    for index in 0..args.servers {
        let path = logs.path().join(format!("server-{index}.log"));
        let log = std::fs::File::create(&path).context("a server log")?;
        servers.push(tokio::task::block_in_place(|| spawn_serve(&binary, &env, Stdio::from(log)))?);
        log_paths.push(path);
    }
    let soak = Arc::new(Soak {
        http: reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build()?,
        bases: servers.iter().map(|s| s.base.clone()).collect(),
        auth: Authenticator::hs256(secret.as_bytes(), None, None)?,
        load_over: CancellationToken::new(),
        leave: CancellationToken::new(),
        ledger: Mutex::default(),
        window: Mutex::default(),
        unavailable: AtomicU64::new(0),
        lost_requests: AtomicU64::new(0),
        conflicts: AtomicU64::new(0),
        abandoned: AtomicU64::new(0),
        deaths: AtomicU64::new(0),
        departures: AtomicU64::new(0),
        returns: AtomicU64::new(0),
        anomalies: Mutex::default(),
        life: Duration::from_secs_f64(args.duration / 3.0),
        started: Instant::now(),
    });
    let admin = soak.token("soak-operator", &[Permission::Admin]);
    anyhow::ensure!(
        upload(&soak, &admin, 0, crate::plugins::builtin::builtin_bytes(SWAPPED[0]).expect("a built-in")).await,
        "the first upload of {STRATEGY} was refused"
    );
    // The other servers load an upload from the store a moment later; tasks naming it start once all have.
    for server in 0..servers.len() {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(
            soak.send(server, Method::GET, &format!("/plugins/{STRATEGY}"), &admin, None).await,
            Answer::Status(StatusCode::OK, info) if info["active"].is_object()
        ) {
            anyhow::ensure!(Instant::now() < deadline, "server {server} did not load {STRATEGY} within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let started = Instant::now();
    let mut unavailable_seen = 0;
    let mut samples = vec![sample(&soak, &servers, 0.0, 0.0, &mut unavailable_seen)];
    print_sample(&samples[0]);
    let mut workers = Vec::new();
    let period = Duration::from_secs_f64(args.submitters as f64 / args.rate);
    for index in 0..args.submitters {
        workers.push(tokio::spawn(submitter(soak.clone(), index, period)));
    }
    let agents: Vec<_> = (0..args.agents).map(|index| tokio::spawn(agent(soak.clone(), index))).collect();

    let duration = Duration::from_secs_f64(args.duration);
    let sample_every = Duration::from_secs_f64(args.sample_every);
    let swap_every = Duration::from_secs_f64(args.swap_every);
    let mut next_sample = sample_every;
    let mut next_swap = swap_every;
    let mut restart_at = (!args.no_redis_restart).then_some(duration / 2);
    let (mut swaps, mut swap_failures, mut restarts, mut down_ms) = (1u64, 0u64, 0u64, 0u64);
    loop {
        let now = started.elapsed();
        if now >= duration {
            break;
        }
        let wake = [Some(next_sample), Some(next_swap), restart_at, Some(duration)].into_iter().flatten().min();
        tokio::time::sleep(wake.unwrap_or(duration).saturating_sub(now)).await;
        let now = started.elapsed();
        if restart_at.is_some_and(|at| now >= at) {
            restart_at = None;
            let down = Instant::now();
            tokio::task::block_in_place(|| redis.stop())?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            tokio::task::block_in_place(|| redis.start_again())?;
            down_ms += down.elapsed().as_millis() as u64;
            restarts += 1;
            soak.window.lock().notes.push(format!("Redis restarted ({} ms down)", down.elapsed().as_millis()));
        }
        if now >= next_swap {
            next_swap += swap_every;
            let component = SWAPPED[swaps as usize % SWAPPED.len()];
            let server = swaps as usize % servers.len();
            if upload(&soak, &admin, server, crate::plugins::builtin::builtin_bytes(component).expect("built-in")).await
            {
                swaps += 1;
                soak.window.lock().notes.push(format!("{STRATEGY} ← {component}"));
            } else {
                swap_failures += 1;
            }
        }
        if now >= next_sample {
            next_sample += sample_every;
            let previous = samples.last().map_or(0.0, |s| s.at_s);
            let taken = sample(&soak, &servers, now.as_secs_f64(), previous, &mut unavailable_seen);
            print_sample(&taken);
            samples.push(taken);
        }
    }

    // The drain: no more submits; agents stop dying and work until every acknowledged task is done.
    soak.load_over.cancel();
    for worker in workers {
        let _ = worker.await;
    }
    let load_end = started.elapsed();
    let drain_deadline = Instant::now() + Duration::from_secs_f64(args.drain_timeout);
    while soak.outstanding() > 0 && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drain = started.elapsed() - load_end;
    soak.leave.cancel();
    for agent in agents {
        let _ = tokio::time::timeout(REQUEST_TIMEOUT * 2, agent).await;
    }
    let end = sample(&soak, &servers, started.elapsed().as_secs_f64(), load_end.as_secs_f64(), &mut unavailable_seen);
    print_sample(&end);
    samples.push(end);

    let stats = match soak.send(0, Method::GET, "/stats", &admin, None).await {
        Answer::Status(StatusCode::OK, stats) => stats,
        _ => Value::Null,
    };
    let ledger = std::mem::take(&mut *soak.ledger.lock());
    let submitted = ledger.acknowledged.len() as u64;
    let lost = ledger.acknowledged.iter().filter(|id| !ledger.completions.contains_key(*id)).count() as u64;
    let completed_twice = ledger.completions.values().filter(|leases| leases.len() > 1).count() as u64;
    let scheduler = &stats["scheduler"];
    let store_agrees = scheduler["by_status"]["completed"].as_u64() == Some(submitted)
        && scheduler["pending_tasks"].as_u64() == Some(0)
        && scheduler["running_tasks"].as_u64() == Some(0);
    let server_figures: Vec<ServerFigures> = (0..servers.len())
        .map(|i| {
            let rss: Vec<f64> = samples.iter().map(|s| s.rss_mib[i]).collect();
            let fds: Vec<usize> = samples.iter().map(|s| s.fds[i]).collect();
            ServerFigures {
                rss_start_mib: rss[0],
                rss_peak_mib: rss.iter().copied().fold(0.0, f64::max),
                rss_end_mib: *rss.last().expect("samples"),
                fds_start: fds[0],
                fds_peak: fds.iter().copied().max().unwrap_or(0),
                fds_end: *fds.last().expect("samples"),
                panicked: std::fs::read_to_string(&log_paths[i]).is_ok_and(|log| log.contains("panicked")),
            }
        })
        .collect();
    let anomalies = soak.anomalies.lock().clone();
    let passed = lost == 0
        && completed_twice == 0
        && anomalies.is_empty()
        && store_agrees
        && server_figures.iter().all(|s| !s.panicked);
    drop(servers);
    drop(redis);
    Ok(SoakReport {
        duration_s: load_end.as_secs_f64(),
        drain_s: drain.as_secs_f64(),
        servers: args.servers,
        agents: args.agents,
        submitters: args.submitters,
        samples,
        server_figures,
        submitted,
        completed: ledger.completions.len() as u64,
        lost,
        completed_twice,
        abandoned: soak.abandoned.load(Ordering::Relaxed),
        agent_deaths: soak.deaths.load(Ordering::Relaxed),
        agent_departures: soak.departures.load(Ordering::Relaxed),
        agent_returns: soak.returns.load(Ordering::Relaxed),
        swaps,
        swap_failures,
        redis_restarts: restarts,
        redis_down_ms: down_ms,
        unavailable: soak.unavailable.load(Ordering::Relaxed),
        lost_requests: soak.lost_requests.load(Ordering::Relaxed),
        conflicts: soak.conflicts.load(Ordering::Relaxed),
        anomalies,
        store_agrees,
        passed,
    })
}

/// `aragora-cp bench soak`: runs it, prints the report, exits 1 when the oracle failed.
pub fn run(args: SoakBenchArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(run_soak(&args))?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => print_report(&report),
    }
    Ok(if report.passed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn print_report(r: &SoakReport) {
    println!(
        "{:>7} {:>9} {:>9} {:>8} {:>10} {:>10} {:>10} {:>5} {:>14} {:>10}",
        "at s", "submitted", "completed", "tasks/s", "submit p99", "complete", "heartbeat", "503s", "RSS MiB", "fds"
    );
    for s in &r.samples {
        let rss: Vec<String> = s.rss_mib.iter().map(|m| format!("{m:.0}")).collect();
        let fds: Vec<String> = s.fds.iter().map(usize::to_string).collect();
        println!(
            "{:>7.0} {:>9} {:>9} {:>8.0} {:>8.1}ms {:>8.1}ms {:>8.1}ms {:>5} {:>14} {:>10}  {}",
            s.at_s,
            s.submitted,
            s.completed,
            s.tasks_per_second,
            s.submit_p99_ms,
            s.complete_p99_ms,
            s.heartbeat_p99_ms,
            s.unavailable,
            rss.join("/"),
            fds.join("/"),
            s.notes.join(", ")
        );
    }
    println!();
    for (i, s) in r.server_figures.iter().enumerate() {
        println!(
            "server {i}: RSS {:.0} MiB at start, {:.0} peak, {:.0} at end; fds {} / {} / {}{}",
            s.rss_start_mib,
            s.rss_peak_mib,
            s.rss_end_mib,
            s.fds_start,
            s.fds_peak,
            s.fds_end,
            if s.panicked { "; PANICKED" } else { "" }
        );
    }
    println!(
        "{} s of load + {:.1} s drain; {} tasks acknowledged, {} completed, lost {}, completed twice {}; \
         {} tasks abandoned by dying agents; agents: {} deaths, {} departures, {} returns; {} strategy swaps \
         ({} failed); Redis restarted {} time(s), {} ms down; {} answers 503, {} requests lost, {} conflicts; \
         store agrees: {}",
        r.duration_s.round(),
        r.drain_s,
        r.submitted,
        r.completed,
        r.lost,
        r.completed_twice,
        r.abandoned,
        r.agent_deaths,
        r.agent_departures,
        r.agent_returns,
        r.swaps,
        r.swap_failures,
        r.redis_restarts,
        r.redis_down_ms,
        r.unavailable,
        r.lost_requests,
        r.conflicts,
        r.store_agrees
    );
    for anomaly in &r.anomalies {
        println!("anomaly: {anomaly}");
    }
    println!("{}", if r.passed { "soak: passed" } else { "soak: FAILED" });
}
