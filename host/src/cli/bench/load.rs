//! `aragora-cp bench load`: HTTP load against a running server, and a smoke test of it. Simulated agents register,
//! then loop blocking claim → complete with the lease (optionally taking the next task in the complete call) while
//! heartbeating on the server's schedule; submitters post tasks, one by one or in batches, until a duration or a
//! task count. Then it drains, unregisters the agents, and reports throughput, latency percentiles (through
//! [`bench::percentile_us`](super::percentile_us), like the other benches) and errors by status. Its oracle:
//! every task it submitted must be completed exactly once, else the exit status is 1.
//!
//! Server, token and `--output` follow the client commands ([`Connection`]); [`run_load`] is the library entry
//! point the test calls in-process.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use futures_util::future::join_all;
use reqwest::header::CONTENT_TYPE;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::percentile_us;
use super::redis_figures::{self, RedisFigures};
use crate::cli::client::{Connection, Output};
use crate::model::{Priority, RegisterRequest, SubmitRequest, normalize_capability};

/// Tries of a submit or a complete whose answer was lost (no answer, or 503): both are safe to repeat, a submit
/// through its idempotency key, a complete through its lease (the server answers the stored outcome).
const ATTEMPTS: usize = 3;
/// Beyond a claim's `block_ms`, how long any request may take before it counts as lost.
const REQUEST_TIMEOUT_MARGIN: Duration = Duration::from_secs(30);
/// Pause after a refused or lost claim or heartbeat, so that a misconfigured run does not spin.
const ERROR_PAUSE: Duration = Duration::from_millis(50);
/// Task ids shown per oracle finding (the counts are complete).
const SAMPLE: usize = 20;

/// Arguments of `bench load`.
#[derive(Debug, Args)]
pub struct LoadBenchArgs {
    /// Server, token and output format, as for the client commands.
    #[command(flatten)]
    pub connection: Connection,
    /// Simulated agents; each holds one task at a time.
    #[arg(long, default_value_t = 8)]
    pub agents: usize,
    /// Concurrent submitters.
    #[arg(long, default_value_t = 4)]
    pub submitters: usize,
    /// Tasks per submit request, through `POST /tasks/batch` (1–1000); without it each task is one `POST /tasks`.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub batch: Option<u16>,
    /// Seconds of load (10 when --tasks is not given either).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Tasks to submit in all (refused submits count); with --duration, whichever comes first ends the load.
    #[arg(long)]
    pub tasks: Option<u64>,
    /// Tasks per second to submit, shared by the submitters (default: as fast as the server answers). Without it,
    /// batch submitters can outpace the agents many times over, and the run then measures a growing backlog.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Task types, cycled through; each is also a capability the task requires and every agent holds.
    #[arg(long, value_delimiter = ',', default_value = "bench")]
    pub task_types: Vec<String>,
    /// Priorities (critical, high, normal, low), cycled through.
    #[arg(long, value_delimiter = ',', default_value = "normal")]
    pub priorities: Vec<Priority>,
    /// How long one claim waits for work (`block_ms`, 0–60000).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub block_ms: u64,
    /// Ask for the next task in the complete call (`claim_next` with no wait); claim only when none came.
    #[arg(long)]
    pub claim_next: bool,
    /// Seconds between an agent's heartbeats (default: the interval the server answers).
    #[arg(long)]
    pub heartbeat_interval: Option<f64>,
    /// Seconds to wait, once the load stops, for every submitted task to be completed.
    #[arg(long, default_value_t = 30.0)]
    pub drain_timeout: f64,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// The server is the reference ceiling (`../shared/bench/ceiling`), which answers only register, submit, claim
    /// and complete: no heartbeats, leases, sessions or unregistering are sent, and lost tasks are not looked up.
    #[arg(long)]
    pub ceiling: bool,
    /// More servers of the same fleet (sharing one Redis): agents and submitters are spread over `--server` and
    /// these, round-robin, so a task is often submitted through one server and claimed through another.
    #[arg(long, value_delimiter = ',')]
    pub more_servers: Vec<String>,
    /// The server processes' ids (comma-separated): their CPU time (from `/proc`) over the run, summed, is reported
    /// per task.
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// The Redis the server uses (`redis://…`): its main thread's CPU and its commands over the run are reported
    /// per task (`INFO cpu`, `INFO commandstats`).
    #[arg(long)]
    pub redis_url: Option<String>,
}

/// What stops a run early: `load` ends the load phase (the drain still runs), `drain` cuts the drain short.
/// The command line fires them on the first and second Ctrl-C; the test never does.
#[derive(Clone, Debug, Default)]
pub struct Interrupt {
    /// Stop submitting and drain.
    pub load: CancellationToken,
    /// Stop waiting for the drain.
    pub drain: CancellationToken,
}

/// The arguments, checked, with typed durations.
struct Plan {
    duration: Option<Duration>,
    tasks: Option<u64>,
    batch: Option<usize>,
    task_types: Vec<String>,
    priorities: Vec<Priority>,
    heartbeat: Option<Duration>,
    drain: Duration,
    /// `--rate` divided among the submitters.
    rate_per_submitter: Option<f64>,
}

fn seconds(flag: &str, value: f64) -> anyhow::Result<Duration> {
    if !value.is_finite() || value <= 0.0 {
        bail!("{flag}: must be a positive number of seconds, not {value}");
    }
    Ok(Duration::from_secs_f64(value))
}

impl Plan {
    fn of(args: &LoadBenchArgs) -> anyhow::Result<Plan> {
        if args.agents == 0 || args.submitters == 0 {
            bail!("--agents and --submitters: must be at least 1");
        }
        let duration = args.duration.map(|d| seconds("--duration", d)).transpose()?;
        let duration = match (duration, args.tasks) {
            (None, None) => Some(Duration::from_secs(10)),
            (duration, _) => duration,
        };
        if args.tasks == Some(0) {
            bail!("--tasks: must be at least 1");
        }
        let task_types = args
            .task_types
            .iter()
            .map(|t| normalize_capability("--task-types", t).map_err(|e| anyhow::anyhow!("{e}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        if task_types.is_empty() || args.priorities.is_empty() {
            bail!("--task-types and --priorities: give at least one");
        }
        Ok(Plan {
            duration,
            tasks: args.tasks,
            batch: args.batch.map(usize::from),
            task_types,
            priorities: args.priorities.clone(),
            heartbeat: args.heartbeat_interval.map(|h| seconds("--heartbeat-interval", h)).transpose()?,
            drain: seconds("--drain-timeout", args.drain_timeout)?,
            rate_per_submitter: match args.rate {
                Some(rate) if !rate.is_finite() || rate <= 0.0 => {
                    bail!("--rate: must be a positive number, not {rate}")
                }
                rate => rate.map(|r| r / args.submitters as f64),
            },
        })
    }
}

/// Counters every worker bumps, read by the progress line and the drain.
#[derive(Default)]
struct Counters {
    submitted: AtomicU64,
    claimed: AtomicU64,
    completed: AtomicU64,
    errors: AtomicU64,
}

/// What agents, submitters and heartbeats share. Samples are not here: each worker keeps its own [`Tally`] and
/// hands it back when joined, so recording a latency takes no lock.
struct Shared {
    http: reqwest::Client,
    /// `--server`: registration errors and lost-task lookups go here.
    connection: Connection,
    /// `--server` and `--more-servers`, as base URLs of the API.
    servers: Vec<Connection>,
    run_id: String,
    /// Required by every task of the run and held by its agents only, so the agents take this run's tasks and
    /// (apart from tasks requiring nothing) no one else's.
    capability: String,
    plan: Plan,
    block_ms: u64,
    claim_next: bool,
    counters: Counters,
    /// Task slots left under `--tasks`.
    budget: Option<AtomicU64>,
    /// Woken at each completion, for the drain.
    completions: Notify,
    draining: AtomicBool,
}

/// The answer to one request, as the load generator counts it.
enum Reply<T> {
    Ok(T),
    /// An error status, with the problem's `code` and `detail`.
    Refused {
        status: u16,
        code: String,
        detail: String,
    },
    /// No usable answer (connection refused or reset, timeout, an unreadable body): the outcome is unknown.
    Lost(&'static str, String),
}

#[derive(Deserialize)]
struct Problem {
    #[serde(default)]
    code: String,
    #[serde(default)]
    detail: String,
}

/// A granted task: only the fields the agent needs (parsing the whole task would be the generator's own cost).
#[derive(Deserialize)]
struct Granted {
    task_id: String,
    lease_id: Option<String>,
}

#[derive(Deserialize)]
struct ClaimAnswer {
    task: Option<Granted>,
}

/// The task itself, or `{completed, task, next}` with `claim_next`: only `next` matters.
#[derive(Deserialize)]
struct CompleteAnswer {
    #[serde(default)]
    next: Option<Granted>,
}

/// `{"task_id"}` from `POST /tasks`, `{"task_ids"}` from the batch.
#[derive(Deserialize)]
struct SubmitAnswer {
    #[serde(default)]
    task_id: Option<String>,
    #[serde(default)]
    task_ids: Vec<String>,
}

#[derive(Deserialize)]
struct Registered {
    /// The ceiling answers none.
    #[serde(default)]
    session_id: String,
}

#[derive(Deserialize)]
struct HeartbeatAnswer {
    #[serde(default)]
    revoked: Vec<Value>,
    heartbeat_interval: f64,
}

/// What one worker saw; merged at the end.
#[derive(Default)]
struct Tally {
    submit: Vec<Duration>,
    claim: Vec<Duration>,
    complete: Vec<Duration>,
    heartbeat: Vec<Duration>,
    errors: BTreeMap<(&'static str, Option<u16>, String), u64>,
    submitted: Vec<String>,
    granted: Vec<String>,
    completed: Vec<String>,
    via_claim_next: u64,
    revoked: u64,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.submit.extend(other.submit);
        self.claim.extend(other.claim);
        self.complete.extend(other.complete);
        self.heartbeat.extend(other.heartbeat);
        for (key, count) in other.errors {
            *self.errors.entry(key).or_default() += count;
        }
        self.submitted.extend(other.submitted);
        self.granted.extend(other.granted);
        self.completed.extend(other.completed);
        self.via_claim_next += other.via_claim_next;
        self.revoked += other.revoked;
    }
}

impl Shared {
    /// Sends `request` with the token and times it up to the parsed answer (what an agent waits for).
    async fn call<T: DeserializeOwned>(&self, request: reqwest::RequestBuilder) -> (Duration, Reply<T>) {
        let started = Instant::now();
        let reply = match self.connection.authorize(request).send().await {
            Err(error) => Reply::Lost(if error.is_timeout() { "timeout" } else { "transport" }, error.to_string()),
            Ok(response) => {
                let status = response.status();
                match response.bytes().await {
                    Err(error) => Reply::Lost("transport", error.to_string()),
                    Ok(body) if status.is_success() => match serde_json::from_slice(&body) {
                        Ok(answer) => Reply::Ok(answer),
                        Err(error) => Reply::Lost("bad_answer", error.to_string()),
                    },
                    Ok(body) => {
                        let problem = serde_json::from_slice(&body)
                            .unwrap_or(Problem { code: String::new(), detail: String::from_utf8_lossy(&body).into() });
                        Reply::Refused { status: status.as_u16(), code: problem.code, detail: problem.detail }
                    }
                }
            }
        };
        (started.elapsed(), reply)
    }

    /// The server the `index`-th agent or submitter talks to.
    fn server(&self, index: usize) -> &Connection {
        &self.servers[index % self.servers.len()]
    }

    fn post(&self, url: String, body: &impl Serialize) -> reqwest::RequestBuilder {
        self.http.post(url).json(body)
    }

    /// A POST of a body serialized once: claims repeat theirs, retries resend theirs.
    fn post_json(&self, url: &str, body: &Bytes) -> reqwest::RequestBuilder {
        self.http.post(url).header(CONTENT_TYPE, "application/json").body(body.clone())
    }

    /// Counts a refused or lost request.
    fn failed<T>(&self, tally: &mut Tally, endpoint: &'static str, reply: &Reply<T>) {
        let key = match reply {
            Reply::Ok(_) => return,
            Reply::Refused { status, code, .. } => (endpoint, Some(*status), code.clone()),
            Reply::Lost(kind, _) => (endpoint, None, (*kind).to_string()),
        };
        *tally.errors.entry(key).or_default() += 1;
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes up to `wanted` task slots from the `--tasks` budget; 0 when it is spent.
    fn reserve(&self, wanted: usize) -> usize {
        let Some(budget) = &self.budget else { return wanted };
        let wanted = wanted as u64;
        match budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| Some(left - left.min(wanted))) {
            Ok(left) => left.min(wanted) as usize,
            Err(_) => 0,
        }
    }

    fn task(&self, submitter: usize, n: u64) -> SubmitRequest {
        let pick = submitter + n as usize;
        let task_type = &self.plan.task_types[pick % self.plan.task_types.len()];
        SubmitRequest {
            task_type: task_type.clone(),
            payload: Some(json!({"submitter": submitter, "n": n}).into()),
            required_capabilities: vec![self.capability.clone(), task_type.clone()],
            priority: Some(self.plan.priorities[pick % self.plan.priorities.len()]),
            idempotency_key: Some(format!("{}-{submitter}-{n}", self.run_id)),
            ..SubmitRequest::default()
        }
    }
}

/// One registered agent.
struct Seat {
    agent_id: String,
    session_id: String,
    /// Which of the servers it talks to.
    server: usize,
}

async fn register(shared: &Shared, index: usize) -> anyhow::Result<Seat> {
    let agent_id = format!("{}-agent-{index}", shared.run_id);
    let mut capabilities = vec![shared.capability.clone()];
    capabilities.extend(shared.plan.task_types.iter().cloned());
    let request = RegisterRequest {
        agent_id: agent_id.clone(),
        capabilities,
        model: "bench".into(),
        provider: "aragora-cp-bench".into(),
        max_concurrent_tasks: Some(1),
        ..RegisterRequest::default()
    };
    match shared.call::<Registered>(shared.post(shared.server(index).url("/agents"), &request)).await.1 {
        Reply::Ok(registered) => Ok(Seat { agent_id, session_id: registered.session_id, server: index }),
        Reply::Refused { status, code, detail } => bail!("registering agent {agent_id}: {status} {code}: {detail}"),
        Reply::Lost(_, error) => Err(anyhow::anyhow!(error)).with_context(|| shared.connection.unreachable()),
    }
}

/// `DELETE /agents/{id}` for each agent (its work, if any, is requeued).
async fn unregister(shared: &Shared, seats: &[Arc<Seat>]) -> Vec<Reply<Value>> {
    let calls = seats.iter().map(|seat| {
        let url = shared.server(seat.server).url(&format!("/agents/{}", seat.agent_id));
        shared.call::<Value>(shared.http.delete(url))
    });
    join_all(calls).await.into_iter().map(|(_, reply)| reply).collect()
}

/// An agent: claim (blocking), complete at once with the lease; with `claim_next` the complete brings the next
/// task when one is pending. Stops at `stop`, but never drops a task it was granted.
async fn agent(shared: Arc<Shared>, seat: Arc<Seat>, stop: CancellationToken) -> Tally {
    let mut tally = Tally::default();
    let claim_url = shared.server(seat.server).url("/tasks/claim");
    let claim =
        json_bytes(&json!({"agent_id": seat.agent_id, "block_ms": shared.block_ms, "session_id": seat.session_id}));
    let mut next: Option<Granted> = None;
    loop {
        let granted = match next.take() {
            Some(granted) => {
                tally.via_claim_next += 1;
                granted
            }
            None => {
                // A claim cut short by `stop` is one the server releases if it had granted it (DESIGN §4).
                let (took, reply) = tokio::select! {
                    biased;
                    _ = stop.cancelled() => break,
                    answer = shared.call::<ClaimAnswer>(shared.post_json(&claim_url, &claim)) => answer,
                };
                match reply {
                    Reply::Ok(ClaimAnswer { task: Some(task) }) => {
                        tally.claim.push(took);
                        task
                    }
                    Reply::Ok(ClaimAnswer { task: None }) => continue,
                    refused => {
                        shared.failed(&mut tally, "claim", &refused);
                        pause(&stop).await;
                        continue;
                    }
                }
            }
        };
        shared.counters.claimed.fetch_add(1, Ordering::Relaxed);
        tally.granted.push(granted.task_id.clone());
        // Once stopping, no next task: a complete with `claim_next` would keep the agent working off the backlog.
        next = complete(&shared, &seat, granted, shared.claim_next && !stop.is_cancelled(), &mut tally).await;
    }
    tally
}

async fn complete(shared: &Shared, seat: &Seat, task: Granted, claim_next: bool, tally: &mut Tally) -> Option<Granted> {
    let url = shared.server(seat.server).url(&format!("/tasks/{}/complete", task.task_id));
    let mut body = json!({"lease_id": task.lease_id, "result": {"agent_id": seat.agent_id}});
    if claim_next {
        // No wait: the complete's latency stays the service time; an agent finding nothing claims, blocking.
        body["claim_next"] = json!({"block_ms": 0, "session_id": seat.session_id});
    }
    let body = json_bytes(&body);
    for attempt in 1..=ATTEMPTS {
        let (took, reply) = shared.call::<CompleteAnswer>(shared.post_json(&url, &body)).await;
        match reply {
            Reply::Ok(answer) => {
                tally.complete.push(took);
                tally.completed.push(task.task_id);
                shared.counters.completed.fetch_add(1, Ordering::Relaxed);
                shared.completions.notify_waiters();
                return answer.next;
            }
            unknown @ (Reply::Lost(..) | Reply::Refused { status: 503, .. }) if attempt < ATTEMPTS => {
                shared.failed(tally, "complete", &unknown);
            }
            refused => {
                shared.failed(tally, "complete", &refused);
                return None;
            }
        }
    }
    None
}

/// Heartbeats on the server's schedule (or `--heartbeat-interval`), the first at once.
async fn heartbeats(shared: Arc<Shared>, seat: Arc<Seat>, stop: CancellationToken) -> Tally {
    let mut tally = Tally::default();
    let url = shared.server(seat.server).url(&format!("/agents/{}/heartbeat", seat.agent_id));
    let body = json!({"session_id": seat.session_id});
    let mut interval = shared.plan.heartbeat.unwrap_or(Duration::from_secs(10));
    loop {
        let (took, reply) = shared.call::<HeartbeatAnswer>(shared.post(url.clone(), &body)).await;
        match reply {
            Reply::Ok(answer) => {
                tally.heartbeat.push(took);
                tally.revoked += answer.revoked.len() as u64;
                if shared.plan.heartbeat.is_none() && answer.heartbeat_interval > 0.0 {
                    interval = Duration::from_secs_f64(answer.heartbeat_interval);
                }
            }
            refused => shared.failed(&mut tally, "heartbeat", &refused),
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
    }
    tally
}

/// A submitter: one task per `POST /tasks`, or `--batch` tasks per `POST /tasks/batch`, until `stop` or the
/// budget is spent. A submit in flight when `stop` fires is finished, so every outcome is known.
async fn submitter(shared: Arc<Shared>, index: usize, stop: CancellationToken) -> Tally {
    let mut tally = Tally::default();
    let url = &shared.server(index).url(if shared.plan.batch.is_some() { "/tasks/batch" } else { "/tasks" });
    let mut n = 0;
    let mut due = tokio::time::Instant::now();
    while !stop.is_cancelled() {
        if let Some(rate) = shared.plan.rate_per_submitter {
            // Paced by a schedule; after a stall it catches up by at most a second's worth, so that a server that
            // paused is not then flooded.
            let now = tokio::time::Instant::now();
            due = due.max(now.checked_sub(Duration::from_secs(1)).unwrap_or(now));
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep_until(due) => {}
            }
            due += Duration::from_secs_f64(shared.plan.batch.unwrap_or(1) as f64 / rate);
        }
        let count = shared.reserve(shared.plan.batch.unwrap_or(1));
        if count == 0 {
            break;
        }
        let tasks: Vec<SubmitRequest> = (n..n + count as u64).map(|i| shared.task(index, i)).collect();
        n += count as u64;
        let body = match shared.plan.batch {
            Some(_) => json_bytes(&BatchBody { tasks: &tasks }),
            None => json_bytes(&tasks[0]),
        };
        for attempt in 1..=ATTEMPTS {
            // The same idempotency keys on a retry: a submit that did land answers with its first ids.
            let (took, reply) = shared.call::<SubmitAnswer>(shared.post_json(url, &body)).await;
            match reply {
                Reply::Ok(answer) => {
                    tally.submit.push(took);
                    let ids =
                        if answer.task_ids.is_empty() { answer.task_id.into_iter().collect() } else { answer.task_ids };
                    shared.counters.submitted.fetch_add(ids.len() as u64, Ordering::Relaxed);
                    tally.submitted.extend(ids);
                    break;
                }
                unknown @ (Reply::Lost(..) | Reply::Refused { status: 503, .. }) if attempt < ATTEMPTS => {
                    shared.failed(&mut tally, "submit", &unknown);
                }
                refused => {
                    shared.failed(&mut tally, "submit", &refused);
                    pause(&stop).await;
                    break;
                }
            }
        }
    }
    tally
}

/// `POST /tasks/batch`'s body.
#[derive(Serialize)]
struct BatchBody<'a> {
    tasks: &'a [SubmitRequest],
}

fn json_bytes(body: &impl Serialize) -> Bytes {
    Bytes::from(serde_json::to_vec(body).expect("request bodies are plain JSON"))
}

async fn pause(stop: &CancellationToken) {
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = tokio::time::sleep(ERROR_PAUSE) => {}
    }
}

/// A line a second on stderr: what was submitted, claimed and completed so far.
async fn progress(shared: Arc<Shared>, started: Instant, stop: CancellationToken) {
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + Duration::from_secs(1), Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let c = &shared.counters;
        eprintln!(
            "{:>6.1}s  submitted {:>9}  claimed {:>9}  completed {:>9}  errors {:>5}{}",
            started.elapsed().as_secs_f64(),
            c.submitted.load(Ordering::Relaxed),
            c.claimed.load(Ordering::Relaxed),
            c.completed.load(Ordering::Relaxed),
            c.errors.load(Ordering::Relaxed),
            if shared.draining.load(Ordering::Relaxed) { "  (draining)" } else { "" }
        );
    }
}

/// Latency of one kind of request, in µs.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Requests measured.
    pub count: usize,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Slowest.
    pub max_us: f64,
}

impl LatencySummary {
    fn of(mut samples: Vec<Duration>) -> LatencySummary {
        samples.sort_unstable();
        LatencySummary {
            count: samples.len(),
            p50_us: percentile_us(&samples, 0.50),
            p90_us: percentile_us(&samples, 0.90),
            p99_us: percentile_us(&samples, 0.99),
            max_us: percentile_us(&samples, 1.0),
        }
    }
}

/// Latency per request kind.
#[derive(Clone, Debug, Serialize)]
pub struct LoadLatency {
    /// `POST /tasks` or `POST /tasks/batch` (per request, whatever the batch size).
    pub submit: LatencySummary,
    /// `POST /tasks/claim` calls that returned a task; one that waited for work includes the wait.
    pub claim: LatencySummary,
    /// `POST /tasks/{id}/complete` (with `--claim-next`, the immediate claim of the next task too).
    pub complete: LatencySummary,
    /// `POST /agents/{id}/heartbeat`.
    pub heartbeat: LatencySummary,
}

/// Refused or lost requests of one kind.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ErrorCount {
    /// `register`, `submit`, `claim`, `complete`, `heartbeat` or `unregister`.
    pub endpoint: String,
    /// The HTTP status; null when no answer came.
    pub status: Option<u16>,
    /// The problem's `code`; for no answer `transport`, `timeout` or `bad_answer`.
    pub code: String,
    /// How many.
    pub count: u64,
}

/// A submitted task that was not completed, with what the server says of it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LostTask {
    /// The task.
    pub task_id: String,
    /// Its status on the server at the end (or why it could not be read).
    pub server_status: String,
}

/// The smoke test's verdict: every submitted task completed exactly once.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Oracle {
    /// Tasks the server acknowledged.
    pub submitted: u64,
    /// Of those, tasks the agents completed.
    pub completed: u64,
    /// Tasks completed more than once (by two agents, or twice by one): the server granted them twice.
    pub completed_twice: u64,
    /// Some of them.
    pub completed_twice_sample: Vec<String>,
    /// Submitted tasks not completed when the drain ended.
    pub lost: u64,
    /// Some of them, with their status on the server.
    pub lost_sample: Vec<LostTask>,
    /// Tasks the agents completed that this run did not submit (another client's, requiring no capability).
    pub foreign: u64,
    /// Tasks granted more than once (a revoked lease does that; only a double completion is an error).
    pub granted_twice: u64,
    /// Leases the heartbeats said were revoked.
    pub revoked: u64,
    /// No task lost, none completed twice.
    pub passed: bool,
}

impl Oracle {
    /// Compares the acknowledged submits with the completions (and the grants, for information).
    pub fn judge(submitted: &[String], granted: &[String], completed: &[String]) -> Oracle {
        let ours: HashSet<&str> = submitted.iter().map(String::as_str).collect();
        let mut completions: HashMap<&str, u32> = HashMap::with_capacity(completed.len());
        for id in completed {
            *completions.entry(id.as_str()).or_default() += 1;
        }
        let mut grants: HashMap<&str, u32> = HashMap::with_capacity(granted.len());
        for id in granted {
            *grants.entry(id.as_str()).or_default() += 1;
        }
        let mut twice: Vec<String> =
            completions.iter().filter(|(_, n)| **n > 1).map(|(id, _)| id.to_string()).collect();
        twice.sort();
        let mut lost: Vec<&str> = ours.iter().copied().filter(|id| !completions.contains_key(id)).collect();
        lost.sort_unstable();
        let oracle = Oracle {
            submitted: ours.len() as u64,
            completed: completions.keys().filter(|id| ours.contains(*id)).count() as u64,
            completed_twice: twice.len() as u64,
            completed_twice_sample: twice.into_iter().take(SAMPLE).collect(),
            lost: lost.len() as u64,
            lost_sample: lost
                .iter()
                .take(SAMPLE)
                .map(|id| LostTask { task_id: id.to_string(), server_status: String::new() })
                .collect(),
            foreign: completions.keys().filter(|id| !ours.contains(*id)).count() as u64,
            granted_twice: grants.values().filter(|n| **n > 1).count() as u64,
            revoked: 0,
            passed: false,
        };
        Oracle { passed: oracle.completed_twice == 0 && oracle.lost == 0, ..oracle }
    }
}

/// The figures of one run.
#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    /// The server's base URL (`--server`).
    pub server: String,
    /// How many servers of the fleet the load was spread over (`--server` and `--more-servers`).
    pub servers: usize,
    /// Prefix of the run's agent ids, idempotency keys and capability.
    pub run_id: String,
    /// Simulated agents.
    pub agents: usize,
    /// Concurrent submitters.
    pub submitters: usize,
    /// Tasks per submit request (1: `POST /tasks`).
    pub batch: usize,
    /// Whether agents took their next task in the complete call.
    pub claim_next: bool,
    /// The submit rate asked for (tasks/s), if any.
    pub rate: Option<f64>,
    /// The load phase: from the first submit until the submitters stopped (duration, task count or Ctrl-C).
    pub load_seconds: f64,
    /// From the end of the load phase until every submitted task was completed (or the drain ended).
    pub drain_seconds: f64,
    /// The measured window, load and drain: from the first submit to the last completion.
    pub window_seconds: f64,
    /// Ctrl-C ended the load early.
    pub interrupted: bool,
    /// Tasks the server acknowledged.
    pub submitted: u64,
    /// Completions in all.
    pub completed: u64,
    /// Completions before the load phase ended (the rest is the backlog the drain worked off).
    pub completed_during_load: u64,
    /// `completed / window_seconds`: the throughput. The window includes the drain so that a run whose
    /// submitters outpace the agents (or a `--tasks` run, whose load phase is just the submitting) still
    /// measures the agents' rate rather than the submitters'.
    pub tasks_per_second: f64,
    /// `submitted / load_seconds`.
    pub submitted_per_second: f64,
    /// Tasks agents received in a complete's answer (`--claim-next`) rather than from a claim.
    pub via_claim_next: u64,
    /// Latency per request kind.
    pub latency: LoadLatency,
    /// Refused or lost requests, by endpoint, status and code.
    pub errors: Vec<ErrorCount>,
    /// The same counted by status alone (`none` for no answer).
    pub errors_by_status: BTreeMap<String, u64>,
    /// Every submitted task completed exactly once?
    pub oracle: Oracle,
    /// CPU time (user + system) this process used over the window: the load generator's cost when the server runs
    /// elsewhere (the whole process's when, as in the tests, the server runs inside it).
    pub process_cpu_seconds: Option<f64>,
    /// This process's CPU time per completed task, in µs: on one machine, what the load takes from the server's
    /// share of the cores.
    pub process_cpu_per_task_us: Option<f64>,
    /// CPU time (user + system) of the server process (`--server-pid`) over the window.
    pub server_cpu_seconds: Option<f64>,
    /// The server's CPU time per completed task, in µs.
    pub server_cpu_per_task_us: Option<f64>,
    /// What the run cost the Redis (`--redis-url`).
    pub redis: Option<RedisFigures>,
}

/// Runs the load against `args.connection.server` and returns the report; `Err` only when the run cannot start
/// (bad arguments, server unreachable, registration refused).
pub async fn run_load(args: &LoadBenchArgs, interrupt: &Interrupt) -> anyhow::Result<LoadReport> {
    let plan = Plan::of(args)?;
    // Every agent holds a claim and a heartbeat connection, every submitter one: keep that many idle in the pool.
    let connections = args.agents * 2 + args.submitters + 4;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .tcp_nodelay(true)
        .timeout(Duration::from_millis(args.block_ms) + REQUEST_TIMEOUT_MARGIN)
        .build()?;
    let run_id = format!("bench-{:08x}", rand::random::<u32>());
    let shared = Arc::new(Shared {
        http,
        connection: args.connection.clone(),
        servers: std::iter::once(args.connection.server.clone())
            .chain(args.more_servers.iter().cloned())
            .map(|server| Connection { server, ..args.connection.clone() })
            .collect(),
        capability: run_id.clone(),
        run_id: run_id.clone(),
        budget: plan.tasks.map(AtomicU64::new),
        plan,
        block_ms: args.block_ms,
        claim_next: args.claim_next,
        counters: Counters::default(),
        completions: Notify::new(),
        draining: AtomicBool::new(false),
    });

    // Register every agent before the clock starts: a wrong URL or token fails here, with the server's word, and
    // leaves no agent of the run behind.
    let mut seats = Vec::with_capacity(args.agents);
    let mut refusal = None;
    for registered in join_all((0..args.agents).map(|i| register(&shared, i))).await {
        match registered {
            Ok(seat) => seats.push(Arc::new(seat)),
            Err(error) => refusal = refusal.or(Some(error)),
        }
    }
    if let Some(error) = refusal {
        unregister(&shared, &seats).await;
        return Err(error);
    }
    let stop_agents = CancellationToken::new();
    let mut agent_tasks: Vec<JoinHandle<Tally>> = Vec::new();
    for seat in &seats {
        agent_tasks.push(tokio::spawn(agent(shared.clone(), seat.clone(), stop_agents.clone())));
        if !args.ceiling {
            agent_tasks.push(tokio::spawn(heartbeats(shared.clone(), seat.clone(), stop_agents.clone())));
        }
    }
    let started = Instant::now();
    let cpu_before = process_cpu_seconds("self");
    let server_cpu_before = servers_cpu_seconds(&args.server_pid);
    let redis_before = match &args.redis_url {
        Some(url) => redis_figures::read(url).await,
        None => None,
    };
    let stop_progress = CancellationToken::new();
    let progress_task = (!args.quiet).then(|| tokio::spawn(progress(shared.clone(), started, stop_progress.clone())));

    // The load: until the duration, the budget or a Ctrl-C.
    let stop_submitting = CancellationToken::new();
    let submitters: Vec<JoinHandle<Tally>> =
        (0..args.submitters).map(|i| tokio::spawn(submitter(shared.clone(), i, stop_submitting.clone()))).collect();
    let submitters = join_all(submitters);
    tokio::pin!(submitters);
    let duration = shared.plan.duration;
    let deadline = async move {
        match duration {
            Some(duration) => tokio::time::sleep(duration).await,
            None => std::future::pending().await,
        }
    };
    let mut interrupted = false;
    let submitted_tallies = tokio::select! {
        tallies = &mut submitters => tallies,
        _ = deadline => {
            stop_submitting.cancel();
            submitters.await
        }
        _ = interrupt.load.cancelled() => {
            interrupted = true;
            stop_submitting.cancel();
            submitters.await
        }
    };
    let load = started.elapsed();
    let completed_during_load = shared.counters.completed.load(Ordering::Relaxed);

    // The drain: until every acknowledged task was completed, the drain timeout, or a second Ctrl-C.
    shared.draining.store(true, Ordering::Relaxed);
    let drain_started = Instant::now();
    let drain_deadline = tokio::time::Instant::now() + shared.plan.drain;
    let submitted = shared.counters.submitted.load(Ordering::Relaxed);
    loop {
        // Registered before the check, so a completion between the two still wakes it.
        let completion = shared.completions.notified();
        if shared.counters.completed.load(Ordering::Relaxed) >= submitted {
            break;
        }
        tokio::select! {
            _ = completion => {}
            _ = tokio::time::sleep_until(drain_deadline) => break,
            _ = interrupt.drain.cancelled() => break,
        }
    }
    let drain = drain_started.elapsed();
    let window = started.elapsed();
    let cpu = process_cpu_seconds("self").zip(cpu_before).map(|(after, before)| after - before);
    let server_cpu = servers_cpu_seconds(&args.server_pid).zip(server_cpu_before).map(|(after, before)| after - before);
    let redis_after = match (&args.redis_url, &redis_before) {
        (Some(url), Some(_)) => redis_figures::read(url).await,
        _ => None,
    };
    stop_agents.cancel();
    let mut tally = Tally::default();
    for joined in submitted_tallies.into_iter().chain(join_all(agent_tasks).await) {
        tally.merge(joined.context("a load task panicked")?);
    }
    if !args.ceiling {
        for reply in unregister(&shared, &seats).await {
            shared.failed(&mut tally, "unregister", &reply);
        }
    }
    stop_progress.cancel();
    if let Some(task) = progress_task {
        let _ = task.await;
    }

    let mut oracle = Oracle::judge(&tally.submitted, &tally.granted, &tally.completed);
    oracle.revoked = tally.revoked;
    for lost in oracle.lost_sample.iter_mut().filter(|_| !args.ceiling) {
        let path = format!("/tasks/{}", lost.task_id);
        lost.server_status = match shared.call::<Value>(shared.http.get(shared.connection.url(&path))).await.1 {
            Reply::Ok(task) => task["status"].as_str().unwrap_or("?").to_string(),
            Reply::Refused { status, code, .. } => format!("{status} {code}"),
            Reply::Lost(kind, _) => kind.to_string(),
        };
    }
    let mut errors_by_status = BTreeMap::new();
    let errors: Vec<ErrorCount> = tally
        .errors
        .into_iter()
        .map(|((endpoint, status, code), count)| {
            *errors_by_status.entry(status.map_or("none".into(), |s| s.to_string())).or_default() += count;
            ErrorCount { endpoint: endpoint.into(), status, code, count }
        })
        .collect();
    let (load_seconds, window_seconds) = (load.as_secs_f64(), window.as_secs_f64());
    let completed = shared.counters.completed.load(Ordering::Relaxed);
    Ok(LoadReport {
        server: args.connection.server.clone(),
        servers: 1 + args.more_servers.len(),
        run_id,
        agents: args.agents,
        submitters: args.submitters,
        batch: shared.plan.batch.unwrap_or(1),
        claim_next: args.claim_next,
        rate: args.rate,
        load_seconds,
        drain_seconds: drain.as_secs_f64(),
        window_seconds,
        interrupted,
        submitted,
        completed,
        completed_during_load,
        tasks_per_second: completed as f64 / window_seconds.max(1e-9),
        submitted_per_second: submitted as f64 / load_seconds.max(1e-9),
        via_claim_next: tally.via_claim_next,
        latency: LoadLatency {
            submit: LatencySummary::of(tally.submit),
            claim: LatencySummary::of(tally.claim),
            complete: LatencySummary::of(tally.complete),
            heartbeat: LatencySummary::of(tally.heartbeat),
        },
        errors,
        errors_by_status,
        oracle,
        process_cpu_seconds: cpu,
        process_cpu_per_task_us: per_task_us(cpu, completed),
        server_cpu_seconds: server_cpu,
        server_cpu_per_task_us: per_task_us(server_cpu, completed),
        redis: redis_before.zip(redis_after).map(|(before, after)| redis_figures::between(&before, &after, completed)),
    })
}

/// A process's user + system CPU time, from `/proc/<pid>/stat` (`self` for this one; Linux; `None` elsewhere).
pub fn process_cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces, so split after its closing parenthesis): state is
    // the first, utime and stime the 12th and 13th, in clock ticks of 1/100 s (USER_HZ, fixed for /proc).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// The CPU time of the processes `pids` together; `None` without any, or when one cannot be read.
fn servers_cpu_seconds(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|pid| process_cpu_seconds(&pid.to_string())).sum()
}

/// `aragora-cp bench load`: runs the load, prints the report, exits 1 when the oracle failed.
pub fn run(args: LoadBenchArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(async {
        let interrupt = Interrupt::default();
        let signals = tokio::spawn({
            let interrupt = interrupt.clone();
            async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    eprintln!("interrupted: draining (Ctrl-C again to stop waiting)");
                    interrupt.load.cancel();
                }
                if tokio::signal::ctrl_c().await.is_ok() {
                    interrupt.drain.cancel();
                }
            }
        });
        let report = run_load(&args, &interrupt).await;
        signals.abort();
        report
    })?;
    match args.connection.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => print_report(&report),
    }
    Ok(if report.oracle.passed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// CPU seconds spent over `completed` tasks, as µs per task (none when no task completed).
fn per_task_us(cpu_seconds: Option<f64>, completed: u64) -> Option<f64> {
    cpu_seconds.filter(|_| completed > 0).map(|cpu| cpu * 1e6 / completed as f64)
}

/// Prints the report for people, in the other benches' style.
pub fn print_report(r: &LoadReport) {
    let submits = if r.batch > 1 { format!("batches of {}", r.batch) } else { "single submits".into() };
    let next = if r.claim_next { ", claim_next" } else { "" };
    let submits = match r.rate {
        Some(rate) => format!("{submits} at {rate:.0} tasks/s"),
        None => submits,
    };
    let fleet = if r.servers > 1 { format!(" and {} more servers", r.servers - 1) } else { String::new() };
    println!(
        "HTTP load against {}{fleet} (run {}): {} agents, {} submitters, {submits}{next}",
        r.server, r.run_id, r.agents, r.submitters
    );
    println!(
        "  load {:.1} s{}: submitted {} ({:.0}/s); drain {:.1} s",
        r.load_seconds,
        if r.interrupted { " (interrupted)" } else { "" },
        r.submitted,
        r.submitted_per_second,
        r.drain_seconds
    );
    println!(
        "  completed {} in {:.1} s: {:.0} tasks/s ({} during the load, {} in the drain)",
        r.completed,
        r.window_seconds,
        r.tasks_per_second,
        r.completed_during_load,
        r.completed - r.completed_during_load
    );
    println!("  {:<10} {:>9} {:>9} {:>9} {:>9} {:>9}", "ms", "count", "p50", "p90", "p99", "max");
    let l = &r.latency;
    for (name, s) in
        [("submit", &l.submit), ("claim", &l.claim), ("complete", &l.complete), ("heartbeat", &l.heartbeat)]
    {
        println!(
            "  {name:<10} {:>9} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            s.count,
            s.p50_us / 1e3,
            s.p90_us / 1e3,
            s.p99_us / 1e3,
            s.max_us / 1e3
        );
    }
    if r.errors.is_empty() {
        println!("  errors: none");
    }
    for e in &r.errors {
        let status = e.status.map_or("no answer".into(), |s| s.to_string());
        println!("  errors: {:>7} × {} {} ({})", e.count, status, e.code, e.endpoint);
    }
    let o = &r.oracle;
    if o.passed {
        println!("  oracle: passed: each of the {} submitted tasks completed exactly once", o.submitted);
    } else {
        println!(
            "  oracle: FAILED: {} lost, {} completed twice (of {} submitted)",
            o.lost, o.completed_twice, o.submitted
        );
        for lost in &o.lost_sample {
            println!("    lost {}  (server: {})", lost.task_id, lost.server_status);
        }
        if !o.lost_sample.is_empty() && o.lost_sample.iter().all(|lost| lost.server_status == "pending") {
            println!(
                "    (still pending: the submitters outpaced the agents; try --rate, --tasks or a longer --drain-timeout)"
            );
        }
        for id in &o.completed_twice_sample {
            println!("    completed twice {id}");
        }
    }
    if o.foreign > 0 || o.granted_twice > 0 || o.revoked > 0 {
        println!(
            "  note: {} foreign tasks completed, {} tasks granted twice, {} leases revoked",
            o.foreign, o.granted_twice, o.revoked
        );
    }
    if let Some(cpu) = r.process_cpu_seconds {
        let wall = r.window_seconds;
        let cores = cpu / wall.max(1e-9);
        let per_task = r.process_cpu_per_task_us.map(|us| format!(": {us:.0} µs per task")).unwrap_or_default();
        println!("  this process used {cpu:.1} s of CPU over {wall:.1} s ({cores:.2} cores){per_task}");
    }
    if let (Some(cpu), Some(per_task)) = (r.server_cpu_seconds, r.server_cpu_per_task_us) {
        println!("  the server used {cpu:.1} s of CPU: {per_task:.0} µs per task");
    }
    if let Some(redis) = &r.redis {
        println!("  Redis (main thread): {:.1} s of CPU, {}", redis.cpu_seconds, redis.summary());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_oracle_passes_when_each_task_is_completed_once() {
        let oracle = Oracle::judge(&ids(&["a", "b"]), &ids(&["a", "b", "b"]), &ids(&["b", "a"]));
        assert!(oracle.passed, "{oracle:?}");
        assert_eq!((oracle.submitted, oracle.completed, oracle.granted_twice), (2, 2, 1));
    }

    #[test]
    fn the_oracle_fails_on_a_lost_task_and_on_a_double_completion() {
        let lost = Oracle::judge(&ids(&["a", "b"]), &ids(&["a"]), &ids(&["a"]));
        assert!(!lost.passed);
        assert_eq!(lost.lost, 1);
        assert_eq!(lost.lost_sample[0].task_id, "b");
        let twice = Oracle::judge(&ids(&["a"]), &ids(&["a", "a"]), &ids(&["a", "a", "x"]));
        assert!(!twice.passed);
        assert_eq!((twice.completed_twice, twice.foreign), (1, 1));
        assert_eq!(twice.completed_twice_sample, ids(&["a"]));
    }
}
