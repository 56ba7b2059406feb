//! The fleet harness: `aragora-cp serve` child processes (killed on drop, even after a panic), agents and
//! submitters as tokio tasks speaking HTTP with fail-over between servers, and the [`Ledger`] of everything the
//! servers acknowledged and every answer that broke a rule (a 5xx other than a proper 503 `store_unavailable`).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::redis_server::{RedisServer, unique_prefix};
use aragora_cp::api::{Authenticator, Permission};
use parking_lot::Mutex;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The HS256 secret every server of a fleet shares (≥ 32 bytes).
pub(crate) const SECRET: &str = "aragora-cp-fleet-test-secret-0123456789";
/// The API prefix.
pub(crate) const API: &str = "/api/v1/control-plane";
/// `HEARTBEAT_INTERVAL` of the fleets, in seconds; agents heartbeat at this period.
pub(crate) const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// `HEARTBEAT_TIMEOUT` of the fleets, in seconds.
pub(crate) const HEARTBEAT_TIMEOUT: &str = "3";
/// How long an agent's blocking claim waits for work.
pub(crate) const CLAIM_BLOCK_MS: u64 = 1000;
/// The longest any single operation of the harness may take before the test calls it a hang.
pub(crate) const HANG: Duration = Duration::from_secs(90);
const TOKEN_TTL: Duration = Duration::from_secs(3600);

/// Serialises the heavy runs: each of them wants both cores.
pub(crate) static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The `aragora-cp` binary the servers run: the one cargo built for these tests, or `FLEET_SERVE_BINARY` (a copy
/// taken right after the build, or a release build). Checkouts sharing one target directory overwrite cargo's with
/// their own build, so a run checks that the binary did not change since its first server: servers of one run must
/// all run the same code, and a failure caused by another checkout's binary says so instead of misleading.
pub(crate) fn binary() -> String {
    static FIRST_SEEN: std::sync::OnceLock<Option<std::time::SystemTime>> = std::sync::OnceLock::new();
    let path = std::env::var("FLEET_SERVE_BINARY").unwrap_or_else(|_| env!("CARGO_BIN_EXE_aragora-cp").to_string());
    let modified = || std::fs::metadata(&path).and_then(|m| m.modified()).ok();
    let first = *FIRST_SEEN.get_or_init(modified);
    assert_eq!(
        modified(),
        first,
        "{path} was rebuilt during this run (another checkout sharing the target directory?): rerun the tests"
    );
    path
}

/// `aragora-cp serve` with a clean environment (a developer's `REDIS_URL` or JWT settings must not leak in) and
/// the fleet's settings; callers add `REDIS_URL` and the rest.
pub(crate) fn serve_command() -> Command {
    let mut command = Command::new(binary());
    command.arg("serve").env_clear();
    for kept in ["PATH", "HOME", "XDG_CACHE_HOME", "TMPDIR"] {
        if let Some(value) = std::env::var_os(kept) {
            command.env(kept, value);
        }
    }
    command
        .env("BIND", "127.0.0.1:0")
        .env("PLUGINS_DIR", "/nonexistent-fleet-plugins")
        .env("RUST_LOG", "info")
        .env("HEARTBEAT_INTERVAL", HEARTBEAT_INTERVAL.as_secs_f64().to_string())
        .env("HEARTBEAT_TIMEOUT", HEARTBEAT_TIMEOUT)
        // The oracle reads every event of a run: keep them all in the stream and the server's channel.
        .env("SSE_BUFFER", "200000")
        .env("REDIS_CONNECT_TIMEOUT", "20");
    command
}

/// One `aragora-cp serve` child; SIGKILLed on drop if still running.
pub(crate) struct Server {
    /// Its position in the fleet.
    pub index: usize,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    child: Child,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

impl Server {
    /// Starts `count` servers on `redis_url` and `prefix` together (they start in parallel), each logging to
    /// `dir/server-N.log`.
    pub(crate) fn start_fleet(count: usize, redis_url: &str, prefix: &str, dir: &Path) -> Vec<Server> {
        let children: Vec<(Child, PathBuf)> =
            (0..count).map(|index| spawn_serve(index, redis_url, prefix, dir)).collect();
        children.into_iter().enumerate().map(|(index, (child, log))| Server::listening(index, child, log)).collect()
    }

    /// Starts one server in position `index` (a restart: its log continues the dead one's).
    pub(crate) fn start_one(index: usize, redis_url: &str, prefix: &str, dir: &Path) -> Server {
        let (child, log) = spawn_serve(index, redis_url, prefix, dir);
        Server::listening(index, child, log)
    }

    /// Waits for the listening line (a server that exits first fails the test with its log).
    fn listening(index: usize, mut child: Child, log: PathBuf) -> Server {
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().and_then(Result::ok);
        let mut server = Server { index, base: String::new(), child, log, exited: None };
        let Some(base) = first.as_deref().and_then(|l| l.strip_prefix("aragora-cp listening on ")) else {
            panic!("server {index} did not start (first line {first:?}); its log:\n{}", server.log());
        };
        server.base = base.to_string();
        // Nothing else is printed with a configured secret; drain anyway so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        server
    }

    /// The server's stderr so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9`: the process dies mid-request, with no drain and no goodbye to Redis.
    pub(crate) fn kill9(&mut self) {
        let _ = self.child.kill();
        self.exited = self.child.wait().ok();
    }

    /// SIGTERM, then waits (at most [`HANG`]) for the exit status.
    pub(crate) fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
        assert!(status.success(), "kill -TERM {pid}");
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the server") {
                self.exited = Some(status);
                return status;
            }
            assert!(started.elapsed() < HANG, "server {} ignored SIGTERM; its log:\n{}", self.index, self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Fails the test if the server's log shows a panic.
    pub(crate) fn assert_no_panic(&self) {
        let log = self.log();
        assert!(!log.contains("panicked"), "server {} panicked; its log:\n{log}", self.index);
    }
}

/// Spawns server `index`, appending its stderr to `dir/server-N.log`.
fn spawn_serve(index: usize, redis_url: &str, prefix: &str, dir: &Path) -> (Child, PathBuf) {
    let log = dir.join(format!("server-{index}.log"));
    let stderr = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("open the server log");
    // Server 1 of every fleet writes events as the builds before the compact form did (decision 0030), so each
    // fleet test also runs the mixed fleet of a rolling upgrade: the others read its entries and it reads theirs.
    let event_format = if index == 1 { "fields" } else { "compact" };
    let child = serve_command()
        .env("REDIS_EVENT_FORMAT", event_format)
        .env("REDIS_URL", redis_url)
        .env("CONTROL_PLANE_PREFIX", prefix)
        .env("ARAGORA_JWT_SECRET", SECRET)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .spawn()
        .expect("spawn aragora-cp serve");
    (child, log)
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A completion a server accepted (200).
#[derive(Clone, Debug)]
pub(crate) struct Completion {
    /// The task.
    pub task_id: String,
    /// The lease the agent completed it under.
    pub lease_id: String,
    /// The attempt the completed task reports.
    pub attempt: u64,
    /// The agent (read through `Debug`, in failure messages).
    #[allow(dead_code, reason = "read through Debug in failure messages only")]
    pub agent: String,
    /// Whether this complete was a retry after a transport error (its first try may have been applied).
    pub retried: bool,
}

/// Everything the servers acknowledged, and every answer that broke a rule.
#[derive(Default)]
pub(crate) struct Ledger {
    /// Completions accepted, in the order the agents saw them.
    pub completions: Mutex<Vec<Completion>>,
    /// Tasks acknowledged by a submit (201), idempotency key → task id.
    pub acknowledged: Mutex<HashMap<String, String>>,
    /// Completions accepted so far.
    pub completed: AtomicUsize,
    /// Completions refused with 409 (the lease was revoked meanwhile).
    pub conflicts: AtomicUsize,
    /// 503 `store_unavailable` answers (problem+json).
    pub unavailable: AtomicUsize,
    /// Requests that failed at the transport level and were sent to another server.
    pub failovers: AtomicUsize,
    /// Submits answered 503 and sent again with the same idempotency keys.
    pub resubmits: AtomicUsize,
    /// Answers that broke a rule (500s, malformed 503s, unexpected statuses).
    pub anomalies: Mutex<Vec<String>>,
}

impl Ledger {
    fn anomaly(&self, what: String) {
        eprintln!("anomaly: {what}");
        self.anomalies.lock().push(what);
    }
}

/// What the agents, submitters and event readers of one run share.
pub(crate) struct Run {
    /// The servers' base URLs, in fleet order (a killed server's stays: clients find out by failing).
    pub bases: Vec<String>,
    /// One client for every task of the test (it pools connections per server).
    pub client: reqwest::Client,
    /// Signs tokens with [`SECRET`].
    pub auth: Authenticator,
    /// Agents finish the task in hand and leave once this is set.
    pub stop: AtomicBool,
    /// What happened.
    pub ledger: Ledger,
}

/// A transport-level failure: no HTTP answer (connection refused, reset, closed mid-response).
#[derive(Debug)]
pub(crate) struct Transport(#[allow(dead_code, reason = "read through Debug in failure messages only")] pub String);

impl Run {
    /// A run whose clients reach the servers at `bases` (proxies in front of them, say), in fleet order.
    pub(crate) fn with_bases(bases: Vec<String>) -> Arc<Run> {
        Arc::new(Run {
            bases,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .connect_timeout(Duration::from_secs(5))
                .build()
                .expect("http client"),
            auth: Authenticator::hs256(SECRET.as_bytes(), None, None).expect("the secret is long enough"),
            stop: AtomicBool::new(false),
            ledger: Ledger::default(),
        })
    }

    /// A token for `sub`.
    pub(crate) fn token(&self, sub: &str, permissions: &[Permission]) -> String {
        self.auth.issue(sub, permissions, TOKEN_TTL).expect("sign a token")
    }

    /// An admin token.
    pub(crate) fn admin(&self) -> String {
        self.token("admin", &[Permission::Admin])
    }

    /// One request to one server. A 5xx other than a problem+json 503 `store_unavailable` is an anomaly.
    pub(crate) async fn send(
        &self,
        server: usize,
        method: Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), Transport> {
        let url = format!("{}{path}", self.bases[server]);
        let mut request = self.client.request(method.clone(), &url).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| Transport(format!("{e:?}")))?;
        let status = response.status();
        let problem = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/problem+json"));
        let bytes = response.bytes().await.map_err(|e| Transport(format!("{e:?}")))?;
        let value: Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)));
        if status.is_server_error() {
            if status == StatusCode::SERVICE_UNAVAILABLE && problem && value["code"] == "store_unavailable" {
                self.ledger.unavailable.fetch_add(1, Ordering::Relaxed);
            } else {
                self.ledger.anomaly(format!("{method} {path} on server {server}: {status} {value}"));
            }
        }
        Ok((status, value))
    }

    /// A request that fails over: on a transport error it moves `at` to the next server and sends again; on a 503
    /// it waits a little and sends again to the same server. Returns the first other answer. Panics after [`HANG`].
    pub(crate) async fn send_until_answered(
        &self,
        at: &AtomicUsize,
        method: Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> (StatusCode, Value, bool) {
        let started = Instant::now();
        let mut retried = false;
        loop {
            assert!(started.elapsed() < HANG, "{method} {path} got no answer but 503s and errors for {HANG:?}");
            let server = at.load(Ordering::SeqCst);
            match self.send(server, method.clone(), path, token, body).await {
                Ok((StatusCode::SERVICE_UNAVAILABLE, _)) => {
                    retried = true;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok((status, value)) => return (status, value, retried),
                Err(_) => {
                    retried = true;
                    self.fail_over(at, server);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Moves a client from `from` to the next server (unless another request of the same client already did).
    fn fail_over(&self, at: &AtomicUsize, from: usize) {
        if at.compare_exchange(from, (from + 1) % self.bases.len(), Ordering::SeqCst, Ordering::SeqCst).is_ok() {
            self.ledger.failovers.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One agent of the test.
#[derive(Clone, Debug)]
pub(crate) struct AgentSpec {
    /// Its id.
    pub id: String,
    /// The server it talks to first.
    pub home: usize,
    /// Whether it asks for its next task in the complete call (`claim_next`) instead of a separate claim.
    pub claim_next: bool,
    /// Whether its heartbeats list the tasks it holds (`current_task_ids`); existing clients' do not.
    pub reports_tasks: bool,
}

/// `count` agents spread round-robin over `servers` servers; every other one uses `claim_next`.
pub(crate) fn agents(count: usize, servers: usize) -> Vec<AgentSpec> {
    (0..count)
        .map(|i| AgentSpec {
            id: format!("fleet-agent-{i:03}"),
            home: i % servers,
            claim_next: i % 2 == 1,
            reports_tasks: true,
        })
        .collect()
}

/// An agent: registers, heartbeats every [`HEARTBEAT_INTERVAL`] with the tasks it holds, claims with a blocking
/// claim, completes under its lease, and fails over to the next server when its server stops answering. Leaves
/// once [`Run::stop`] is set and it holds nothing.
pub(crate) async fn run_agent(run: Arc<Run>, spec: AgentSpec) {
    let token = run.token(&format!("agent:{}", spec.id), &[Permission::Agents, Permission::Tasks]);
    let at = Arc::new(AtomicUsize::new(spec.home));
    let session = format!("{:032x}", rand::random::<u128>());
    let registration = json!({
        "agent_id": spec.id, "capabilities": ["code"], "model": "fleet-model", "provider": "fleet",
        "session_id": session, "max_concurrent_tasks": 1,
    });
    let (status, agent, _) =
        run.send_until_answered(&at, Method::POST, &format!("{API}/agents"), &token, Some(&registration)).await;
    assert_eq!(status, StatusCode::CREATED, "register {}: {agent}", spec.id);

    let held: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let reported = if spec.reports_tasks { Some(held.clone()) } else { None };
    let heartbeats =
        tokio::spawn(heartbeat(run.clone(), spec.id.clone(), token.clone(), session.clone(), at.clone(), reported));

    let claim = json!({"agent_id": spec.id, "block_ms": CLAIM_BLOCK_MS, "session_id": session});
    let mut next: Option<Value> = None;
    loop {
        let task = match next.take() {
            Some(task) => task,
            None => {
                if run.stop.load(Ordering::SeqCst) {
                    break;
                }
                let (status, answer, _) = run
                    .send_until_answered(&at, Method::POST, &format!("{API}/tasks/claim"), &token, Some(&claim))
                    .await;
                if status != StatusCode::OK {
                    run.ledger.anomaly(format!("claim by {}: {status} {answer}", spec.id));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                match answer.get("task") {
                    Some(task) if task.is_object() => task.clone(),
                    _ => continue,
                }
            }
        };
        let task_id = task["task_id"].as_str().expect("a granted task has an id").to_string();
        let lease_id = task["lease_id"].as_str().expect("a granted task has a lease").to_string();
        held.lock().insert(task_id.clone());
        let mut body = json!({"lease_id": lease_id, "result": {"by": spec.id, "n": task["payload"]["n"]}});
        if spec.claim_next && !run.stop.load(Ordering::SeqCst) {
            body["claim_next"] = json!({"block_ms": CLAIM_BLOCK_MS / 2, "session_id": session});
        }
        let path = format!("{API}/tasks/{task_id}/complete");
        let (status, answer, retried) = run.send_until_answered(&at, Method::POST, &path, &token, Some(&body)).await;
        held.lock().remove(&task_id);
        match status {
            StatusCode::OK => {
                let done = if body.get("claim_next").is_some() { &answer["task"] } else { &answer };
                if done["status"] != "completed" || done["task_id"] != task_id.as_str() {
                    run.ledger.anomaly(format!("complete of {task_id} answered 200 with {done}"));
                }
                run.ledger.completions.lock().push(Completion {
                    task_id,
                    lease_id,
                    attempt: done["attempt"].as_u64().unwrap_or(0),
                    agent: spec.id.clone(),
                    retried,
                });
                run.ledger.completed.fetch_add(1, Ordering::SeqCst);
                if let Some(following) = answer.get("next").filter(|n| n.is_object()) {
                    next = Some(following.clone());
                }
            }
            StatusCode::CONFLICT => {
                run.ledger.conflicts.fetch_add(1, Ordering::Relaxed);
            }
            _ => run.ledger.anomaly(format!("complete of {task_id} by {}: {status} {answer}", spec.id)),
        }
    }
    heartbeats.abort();
}

/// The agent's heartbeat: every [`HEARTBEAT_INTERVAL`], with the tasks it holds when `held` is given (so a grant
/// whose answer was lost with a dead server is released, DESIGN §4). A transport error moves the agent to the next
/// server.
async fn heartbeat(
    run: Arc<Run>,
    id: String,
    token: String,
    session: String,
    at: Arc<AtomicUsize>,
    held: Option<Arc<Mutex<BTreeSet<String>>>>,
) {
    let path = format!("{API}/agents/{id}/heartbeat");
    loop {
        tokio::time::sleep(HEARTBEAT_INTERVAL).await;
        let mut body = json!({"session_id": session});
        if let Some(held) = &held {
            body["current_task_ids"] = json!(held.lock().iter().cloned().collect::<Vec<String>>());
        }
        let server = at.load(Ordering::SeqCst);
        match run.send(server, Method::POST, &path, &token, Some(&body)).await {
            Ok((StatusCode::OK | StatusCode::SERVICE_UNAVAILABLE, _)) => {}
            Ok((status, answer)) => run.ledger.anomaly(format!("heartbeat of {id}: {status} {answer}")),
            Err(_) => run.fail_over(&at, server),
        }
    }
}

/// The submit body of task number `n`: a priority cycling through the four, and an idempotency key so a submit
/// whose outcome is unknown (503, or a server that died) can be sent again safely.
pub(crate) fn task_body(n: usize) -> Value {
    let priority = ["critical", "high", "normal", "low"][n % 4];
    json!({"task_type": "fleet", "payload": {"n": n}, "priority": priority, "idempotency_key": format!("fleet-{n}")})
}

/// Submits tasks `0..total` in batches of `batch` through `submitters` concurrent submitters, batch `k` first to
/// server `k % servers`; a batch answered 503 or lost with its server is sent again (same keys, so it is replayed,
/// never doubled). Records every acknowledged task.
pub(crate) async fn submit_all(run: Arc<Run>, total: usize, batch: usize, submitters: usize) {
    let token = run.token("fleet-submitter", &[Permission::Tasks, Permission::Read]);
    let batches: Vec<std::ops::Range<usize>> =
        (0..total).step_by(batch).map(|start| start..(start + batch).min(total)).collect();
    let batches = Arc::new(batches);
    let mut handles = Vec::new();
    for submitter in 0..submitters {
        let (run, token, batches) = (run.clone(), token.clone(), batches.clone());
        handles.push(tokio::spawn(async move {
            for (k, range) in batches.iter().enumerate().skip(submitter).step_by(submitters) {
                let at = AtomicUsize::new(k % run.bases.len());
                let body = json!({"tasks": range.clone().map(task_body).collect::<Vec<_>>()});
                let (status, answer, retried) = run
                    .send_until_answered(&at, Method::POST, &format!("{API}/tasks/batch"), &token, Some(&body))
                    .await;
                assert_eq!(status, StatusCode::CREATED, "batch {k}: {answer}");
                if retried {
                    run.ledger.resubmits.fetch_add(1, Ordering::Relaxed);
                }
                let ids = answer["task_ids"].as_array().expect("task_ids");
                assert_eq!(ids.len(), range.len(), "batch {k} answered {} ids", ids.len());
                let mut acknowledged = run.ledger.acknowledged.lock();
                for (n, id) in range.clone().zip(ids) {
                    let id = id.as_str().expect("a task id").to_string();
                    if let Some(before) = acknowledged.insert(format!("fleet-{n}"), id.clone()) {
                        assert_eq!(before, id, "key fleet-{n} acknowledged as two tasks");
                    }
                }
            }
        }));
    }
    for handle in handles {
        handle.await.expect("submitter");
    }
}

/// Waits (polling, at most `limit`) until `condition` holds; panics naming `what` otherwise.
pub(crate) async fn wait_for(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every task the fleet stores, by status, read page by page through `server` (1,000 a page).
pub(crate) async fn stored_tasks(run: &Run, server: usize) -> HashMap<String, Value> {
    let token = run.admin();
    let mut tasks = HashMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("{API}/tasks?limit=1000");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let (status, page) = run.send(server, Method::GET, &path, &token, None).await.expect("list tasks");
        assert_eq!(status, StatusCode::OK, "{page}");
        for task in page["tasks"].as_array().expect("tasks") {
            let id = task["task_id"].as_str().expect("task_id").to_string();
            assert!(tasks.insert(id.clone(), task.clone()).is_none(), "task {id} listed twice");
        }
        match page["next_cursor"].as_str() {
            Some(next) if !next.is_empty() => cursor = Some(next.to_string()),
            _ => return tasks,
        }
    }
}

/// A whole fleet: one Redis, the servers, the shared run state, and the directory of the server logs.
pub(crate) struct Fleet {
    /// The servers, in fleet order.
    pub servers: Vec<Server>,
    /// Agents, submitters and readers share this.
    pub run: Arc<Run>,
    /// The Redis (dropped last: fields drop in order, and the servers go first).
    pub redis: RedisServer,
    prefix: String,
    logs: tempfile::TempDir,
}

impl Fleet {
    /// Starts `count` servers on `redis`, with a fresh key prefix.
    pub(crate) fn start(redis: RedisServer, count: usize, name: &str) -> Fleet {
        let url = redis.url();
        Fleet::start_via(redis, &url, count, name, |servers| servers.iter().map(|s| s.base.clone()).collect())
    }

    /// Starts `count` servers that reach `redis` at `redis_url` (a proxy, say), with clients that reach them at
    /// the bases `fronts` gives for them.
    pub(crate) fn start_via(
        redis: RedisServer,
        redis_url: &str,
        count: usize,
        name: &str,
        fronts: impl FnOnce(&[Server]) -> Vec<String>,
    ) -> Fleet {
        let logs = tempfile::tempdir().expect("a directory for server logs");
        let prefix = unique_prefix(name);
        let servers = Server::start_fleet(count, redis_url, &prefix, logs.path());
        let run = Run::with_bases(fronts(&servers));
        Fleet { servers, run, redis, prefix, logs }
    }

    /// Starts server `index` again (after [`Server::kill9`]) with the fleet's settings on `redis_url`; returns its
    /// new base URL.
    pub(crate) fn restart(&mut self, index: usize, redis_url: &str) -> String {
        let server = Server::start_one(index, redis_url, &self.prefix, self.logs.path());
        let base = server.base.clone();
        self.servers[index] = server;
        base
    }

    /// Starts the agents.
    pub(crate) fn spawn_agents(&self, specs: Vec<AgentSpec>) -> Vec<tokio::task::JoinHandle<()>> {
        specs.into_iter().map(|spec| tokio::spawn(run_agent(self.run.clone(), spec))).collect()
    }

    /// Ends a run and checks it: waits until the events show `total` completions, lets the agents leave, then
    /// replays the events through the lease oracle, ties them to the acknowledged submits and completions, reads
    /// every stored task and the stats back over HTTP, and stops the live servers with SIGTERM (exit 0, no panic
    /// in any log). `reader_server` is the server whose events were followed.
    pub(crate) async fn finish(
        &mut self,
        total: usize,
        events: &crate::oracle::EventLog,
        agents: Vec<tokio::task::JoinHandle<()>>,
        reader_server: usize,
    ) -> crate::oracle::LeaseReport {
        use crate::oracle::{check_leases, check_outcome, first};
        let run = self.run.clone();
        wait_for("a task_completed event for every task", Duration::from_secs(300), || {
            events.completed.load(Ordering::SeqCst) >= total
        })
        .await;
        run.stop.store(true, Ordering::SeqCst);
        for agent in agents {
            tokio::time::timeout(HANG, agent).await.expect("agents leave once stopped").expect("agent task");
        }
        // Events of the last transitions may still be on their way to the reader.
        tokio::time::sleep(Duration::from_millis(500)).await;

        let acknowledged: HashSet<String> = run.ledger.acknowledged.lock().values().cloned().collect();
        assert_eq!(acknowledged.len(), total, "every submitted task acknowledged exactly once");
        let snapshot = events.snapshot();
        let report = check_leases(&snapshot);
        assert_eq!(events.resets.load(Ordering::SeqCst), 0, "the event stream reset: the oracle would be blind");
        if !report.violations.is_empty() {
            // What the reader saw of the first few broken tasks, to tell a store's fault from a reader's.
            eprintln!(
                "event stream of server {reader_server}: {} reconnects",
                events.reconnects.load(Ordering::SeqCst)
            );
            let mut tasks: Vec<&str> = Vec::new();
            for task in report.violations.iter().filter_map(|v| v.split(':').next()) {
                if !tasks.contains(&task) {
                    tasks.push(task);
                }
            }
            for task in tasks.into_iter().take(3) {
                for event in snapshot.iter().filter(|e| e.task_id.as_deref() == Some(task)) {
                    eprintln!(
                        "  {task} {} {} {} {:?} {}",
                        event.id,
                        event.kind.as_str(),
                        event.server_id,
                        event.agent_id,
                        event.data
                    );
                }
            }
        }
        assert!(report.violations.is_empty(), "lease oracle: {}", first(&report.violations, 20));
        let completions = run.ledger.completions.lock().clone();
        let broken = check_outcome(&report, &acknowledged, &completions);
        assert!(broken.is_empty(), "outcome oracle: {}", first(&broken, 20));
        let anomalies = run.ledger.anomalies.lock().clone();
        assert!(anomalies.is_empty(), "answers that break the API's rules: {}", first(&anomalies, 20));

        // The store agrees: exactly the acknowledged tasks, all completed, nothing pending or held.
        let stored = stored_tasks(&run, reader_server).await;
        let stored_ids: HashSet<String> = stored.keys().cloned().collect();
        assert_eq!(stored_ids, acknowledged, "the store holds exactly the acknowledged tasks");
        let unfinished: Vec<&Value> = stored.values().filter(|t| t["status"] != "completed").take(5).collect();
        assert!(unfinished.is_empty(), "tasks not completed: {unfinished:?}");
        // A second completion is refused whichever server it reaches: another lease's (409 lease_lost), the same
        // lease's with another result (409 outcome_conflict); the same outcome again is answered from the store.
        for (i, completion) in completions.iter().take(30).enumerate() {
            let server = (reader_server + 1 + i) % self.servers.len();
            let server = if self.servers[server].exited.is_some() { reader_server } else { server };
            let path = format!("{API}/tasks/{}/complete", completion.task_id);
            let stored_result = &stored[&completion.task_id]["result"];
            let attempts = [
                (
                    json!({"lease_id": format!("{:032x}", rand::random::<u128>()), "result": stored_result}),
                    "lease_lost",
                ),
                (json!({"lease_id": completion.lease_id, "result": {"another": "outcome"}}), "outcome_conflict"),
            ];
            for (body, code) in attempts {
                let (status, answer) =
                    run.send(server, Method::POST, &path, &run.admin(), Some(&body)).await.expect("an answer");
                assert_eq!((status, answer["code"].as_str()), (StatusCode::CONFLICT, Some(code)), "{body} → {answer}");
            }
            let same = json!({"lease_id": completion.lease_id, "result": stored_result});
            let (status, answer) =
                run.send(server, Method::POST, &path, &run.admin(), Some(&same)).await.expect("an answer");
            assert_eq!(status, StatusCode::OK, "the same outcome again: {answer}");
            assert_eq!((&answer["status"], &answer["result"]), (&json!("completed"), stored_result), "{answer}");
        }
        let (status, stats) =
            run.send(reader_server, Method::GET, &format!("{API}/stats"), &run.admin(), None).await.expect("stats");
        assert_eq!(status, StatusCode::OK, "{stats}");
        assert_eq!(stats["scheduler"]["pending_tasks"], 0, "{stats}");
        assert_eq!(stats["scheduler"]["running_tasks"], 0, "{stats}");
        assert_eq!(stats["scheduler"]["by_status"]["completed"], total, "{stats}");
        // Every agent left: no blocked claim may still be registered (a dead server's would route work to no one).
        assert_eq!(stats["scheduler"]["waiting_claims"], 0, "{stats}");
        let (status, agents) =
            run.send(reader_server, Method::GET, &format!("{API}/agents"), &run.admin(), None).await.expect("agents");
        assert_eq!(status, StatusCode::OK, "{agents}");
        for agent in agents["agents"].as_array().expect("agents") {
            assert_eq!(agent["in_flight"], 0, "an agent holds a lease after the run: {agent}");
        }

        for server in &mut self.servers {
            if server.exited.is_none() {
                let status = tokio::task::block_in_place(|| server.terminate());
                assert!(status.success(), "server {} exited {status}; its log:\n{}", server.index, server.log());
            }
            server.assert_no_panic();
        }
        report
    }

    /// One line about the run, for the test's output.
    pub(crate) fn summary(&self, report: &crate::oracle::LeaseReport, started: Instant) -> String {
        let ledger = &self.run.ledger;
        format!(
            "{:.1} s; events {:?}; servers seen in events {}; completions accepted {}, conflicts {}, 503s {}, \
             fail-overs {}, resubmitted batches {}",
            started.elapsed().as_secs_f64(),
            report.counts,
            report.servers.len(),
            ledger.completed.load(Ordering::SeqCst),
            ledger.conflicts.load(Ordering::SeqCst),
            ledger.unavailable.load(Ordering::SeqCst),
            ledger.failovers.load(Ordering::SeqCst),
            ledger.resubmits.load(Ordering::SeqCst),
        )
    }
}

impl Drop for Fleet {
    /// A failed run shows the end of every server's log (the logs live in a directory removed with the fleet).
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for server in &self.servers {
            let log = server.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- the last lines of server {}'s log:", server.index);
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}
