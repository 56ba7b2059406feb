//! A REST client that submits a mix of tasks to a running server and, optionally, waits for their results with
//! `GET /tasks/{id}?wait=`; the `submitter` binary is a command line around [`run`].
//!
//! Run it: `cargo run -p aragora-cp-examples --bin submitter -- --token $TOKEN --count 12 --wait 30`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The API prefix the submitter talks to (the legacy `/api/control-plane` works too).
pub const API_PREFIX: &str = "/api/v1/control-plane";

/// The server caps one `?wait=` at 60 s; longer waits are made of several requests.
const MAX_WAIT_PER_REQUEST: Duration = Duration::from_secs(60);

/// Priorities cycled through, so any run of four tasks or more holds each of them.
const PRIORITIES: [&str; 4] = ["critical", "high", "normal", "low"];

/// What to submit and how long to wait.
#[derive(Clone, Debug)]
pub struct Options {
    /// The server's base URL, for example `http://127.0.0.1:8080`.
    pub server: String,
    /// A bearer token with `controlplane:tasks` and `controlplane:read` (or admin).
    pub token: String,
    /// How many tasks.
    pub count: usize,
    /// Task types, cycled through; with `require_capability`, each task requires the capability named by its type.
    pub task_types: Vec<String>,
    /// Whether each task requires the capability named by its type (else any agent may take it).
    pub require_capability: bool,
    /// How long to wait for all results in total; `None` submits and returns.
    pub wait: Option<Duration>,
    /// Prefix of the idempotency keys: a run submitted again with the same id creates no duplicates.
    pub run_id: String,
}

/// One submitted task and, when waited for, how it ended.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The id the server gave.
    pub task_id: String,
    /// The type submitted.
    pub task_type: String,
    /// The priority submitted.
    pub priority: String,
    /// The last status seen (`pending` when not waited for).
    pub status: String,
    /// The agent that held it last.
    pub agent: Option<String>,
    /// The agent's result, for completed tasks.
    pub result: Option<Value>,
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Every task, in submission order.
    pub tasks: Vec<Outcome>,
    /// Whether results were awaited.
    pub waited: bool,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl Summary {
    /// Tasks per status.
    pub fn by_status(&self) -> BTreeMap<&str, usize> {
        let mut counts = BTreeMap::new();
        for task in &self.tasks {
            *counts.entry(task.status.as_str()).or_insert(0) += 1;
        }
        counts
    }

    /// Whether every task completed (only meaningful when results were awaited).
    pub fn all_completed(&self) -> bool {
        self.tasks.iter().all(|t| t.status == "completed")
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for task in &self.tasks {
            let mut line = format!("{}  {:<10} {:<8}  {:<9}", task.task_id, task.task_type, task.priority, task.status);
            if let Some(agent) = &task.agent {
                line.push_str(&format!("  by {agent}"));
            }
            writeln!(f, "{}", line.trim_end())?;
        }
        let statuses: Vec<String> = self.by_status().iter().map(|(s, n)| format!("{n} {s}")).collect();
        let mut by_type: BTreeMap<&str, usize> = BTreeMap::new();
        for task in &self.tasks {
            *by_type.entry(task.task_type.as_str()).or_insert(0) += 1;
        }
        let types: Vec<String> = by_type.iter().map(|(t, n)| format!("{n} {t}")).collect();
        writeln!(
            f,
            "{} tasks ({}) in {:.2} s: {}",
            self.tasks.len(),
            types.join(", "),
            self.elapsed.as_secs_f64(),
            statuses.join(", ")
        )
    }
}

/// The base URL of the API under `server` (which may already end with the prefix).
pub fn api_base(server: &str) -> anyhow::Result<String> {
    let server = server.trim_end_matches('/');
    if !(server.starts_with("http://") || server.starts_with("https://")) {
        bail!("--server must start with http:// or https://, got {server:?}");
    }
    if server.ends_with(API_PREFIX) || server.ends_with("/api/control-plane") {
        return Ok(server.to_string());
    }
    Ok(format!("{server}{API_PREFIX}"))
}

/// Submits `options.count` tasks, then (with `options.wait`) waits for each to end.
pub async fn run(options: &Options) -> anyhow::Result<Summary> {
    if options.task_types.is_empty() {
        bail!("--types needs at least one task type");
    }
    let base = api_base(&options.server)?;
    let client = reqwest::Client::builder()
        .timeout(MAX_WAIT_PER_REQUEST + Duration::from_secs(15))
        .build()
        .context("building the HTTP client")?;
    let started = Instant::now();

    let mut tasks = Vec::with_capacity(options.count);
    for n in 0..options.count {
        let task_type = &options.task_types[n % options.task_types.len()];
        let priority = PRIORITIES[n % PRIORITIES.len()];
        let required: Vec<&str> = if options.require_capability { vec![task_type.as_str()] } else { vec![] };
        let body = json!({
            "task_type": task_type,
            "priority": priority,
            "required_capabilities": required,
            "payload": {"text": format!("task {n} of run {}", options.run_id), "n": n},
            "idempotency_key": format!("{}-{n}", options.run_id),
        });
        let answer = submit(&client, &base, &options.token, &body).await?;
        let task_id = answer["task_id"]
            .as_str()
            .with_context(|| format!("the server answered a submit without a task_id: {answer}"))?
            .to_string();
        tasks.push(Outcome {
            task_id,
            task_type: task_type.clone(),
            priority: priority.to_string(),
            status: "pending".into(),
            agent: None,
            result: None,
        });
    }

    if let Some(wait) = options.wait {
        let deadline = Instant::now() + wait;
        for task in &mut tasks {
            let seen = wait_for(&client, &base, &options.token, &task.task_id, deadline).await?;
            task.status = seen["status"].as_str().unwrap_or("unknown").to_string();
            task.agent = seen["assigned_agent"].as_str().map(str::to_string);
            task.result = Some(seen["result"].clone()).filter(|r| !r.is_null());
        }
    }
    Ok(Summary { tasks, waited: options.wait.is_some(), elapsed: started.elapsed() })
}

/// `POST /tasks`, retried with the same idempotency key when the outcome is unknown (a 503 or a lost
/// connection): the key makes the retry safe, since the server answers a replay with the first task id.
async fn submit(client: &reqwest::Client, base: &str, token: &str, body: &Value) -> anyhow::Result<Value> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let sent = client.post(format!("{base}/tasks")).bearer_auth(token).json(body).send().await;
        let retryable = match sent {
            Ok(response) if response.status() == StatusCode::SERVICE_UNAVAILABLE => {
                format!("the server answered 503: {}", response.text().await.unwrap_or_default())
            }
            Ok(response) => return answer(response, "submitting a task").await,
            Err(error) if error.is_connect() && attempt == 1 => {
                bail!("cannot reach {base}: {error}; is the server running (`cargo run -p aragora-cp -- serve`)?")
            }
            Err(error) => format!("{error}"),
        };
        if attempt == 3 {
            bail!("submitting a task failed 3 times; last: {retryable}");
        }
        tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
    }
}

/// `GET /tasks/{id}?wait=` until the task is terminal or `deadline` passes; returns the task as last seen.
async fn wait_for(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    task_id: &str,
    deadline: Instant,
) -> anyhow::Result<Value> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now()).min(MAX_WAIT_PER_REQUEST);
        let url = format!("{base}/tasks/{task_id}?wait={:.3}", left.as_secs_f64());
        let response = client.get(url).bearer_auth(token).send().await.with_context(|| format!("reading {task_id}"))?;
        let task = answer(response, "reading a task").await?;
        let terminal = matches!(task["status"].as_str(), Some("completed" | "failed" | "cancelled" | "timeout"));
        if terminal || left.is_zero() {
            return Ok(task);
        }
    }
}

/// The JSON body of a successful response, or an error carrying the server's problem detail.
async fn answer(response: reqwest::Response, doing: &str) -> anyhow::Result<Value> {
    let status = response.status();
    let text = response.text().await.with_context(|| format!("{doing}: reading the response"))?;
    if status.is_success() {
        return serde_json::from_str(&text).with_context(|| format!("{doing}: the server answered non-JSON: {text}"));
    }
    let detail = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|problem| problem["detail"].as_str().map(str::to_string))
        .unwrap_or(text);
    let hint = match status {
        StatusCode::UNAUTHORIZED => " (check --token or ARAGORA_TOKEN: `serve` prints an admin token at start)",
        StatusCode::FORBIDDEN => " (the token needs controlplane:tasks and controlplane:read)",
        _ => "",
    };
    bail!("{doing}: the server answered {status}: {detail}{hint}")
}
