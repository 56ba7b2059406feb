//! Client commands for people who live in a terminal: `aragora-cp agents|tasks|health|stats|plugins|events`
//! against a running server (`--server`, `--token` or `ARAGORA_TOKEN`). Tables for people (`--output table`),
//! the server's JSON for scripts (`--output json`). A refused request prints the server's problem detail and
//! exits 1.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

use super::http::{Api, CallError};

/// Where and as whom.
#[derive(Debug, Args, Clone)]
pub struct Connection {
    /// The server's base URL.
    #[arg(long, env = "ARAGORA_SERVER", default_value = "http://127.0.0.1:8080", global = true)]
    pub server: String,
    /// A bearer token (`aragora-cp token`, or the one `serve` printed).
    #[arg(long, env = "ARAGORA_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Table for people, JSON for scripts.
    #[arg(long, value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
}

impl Connection {
    /// The URL of `path` under the API prefix.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}{path}", self.server.trim_end_matches('/'), crate::api::PREFIXES[0])
    }

    /// `request` with the bearer token, when there is one.
    pub fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// What to say when the server cannot be reached.
    pub fn unreachable(&self) -> String {
        format!("cannot reach {}", self.server)
    }
}

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// The server's JSON.
    Json,
}

/// `aragora-cp agents …`.
#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    /// List agents.
    List {
        /// Only agents holding this capability.
        #[arg(long)]
        capability: Option<String>,
        /// Only agents that could take work now.
        #[arg(long)]
        available: bool,
    },
    /// Show one agent.
    Get {
        /// The agent id.
        agent_id: String,
    },
    /// Register (or re-register) an agent.
    Register {
        /// The agent id.
        agent_id: String,
        /// A capability (repeat for several).
        #[arg(long = "capability")]
        capabilities: Vec<String>,
        /// Its model.
        #[arg(long, default_value = "")]
        model: String,
        /// Its provider.
        #[arg(long, default_value = "")]
        provider: String,
        /// Tasks it may hold at once.
        #[arg(long, default_value_t = 1)]
        max_concurrent: u32,
    },
    /// Unregister an agent (its work is requeued).
    Unregister {
        /// The agent id.
        agent_id: String,
    },
}

/// `aragora-cp tasks …`.
#[derive(Debug, Subcommand)]
pub enum TasksCommand {
    /// Submit a task (always with an idempotency key, so a retry after an unknown outcome is safe).
    Submit {
        /// The task type.
        task_type: String,
        /// The payload, a JSON object.
        #[arg(long, default_value = "{}")]
        payload: String,
        /// Priority: critical, high, normal, low.
        #[arg(long, default_value = "normal")]
        priority: String,
        /// A required capability (repeat for several).
        #[arg(long = "capability")]
        capabilities: Vec<String>,
        /// The idempotency key (default: a fresh one).
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Show one task, optionally waiting up to `--wait` seconds for its result.
    Get {
        /// The task id.
        task_id: String,
        /// Seconds to wait for a terminal state (≤ 60).
        #[arg(long)]
        wait: Option<u32>,
    },
    /// List tasks, newest first.
    List {
        /// Only this status.
        #[arg(long)]
        status: Option<String>,
        /// Only this type.
        #[arg(long = "type")]
        task_type: Option<String>,
        /// Only tasks of this agent.
        #[arg(long)]
        agent: Option<String>,
        /// Page size.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Move a pending task to another priority (its submission order kept within the new level).
    Prioritize {
        /// The task id.
        task_id: String,
        /// The new priority: critical, high, normal, low.
        priority: String,
    },
    /// Cancel a task.
    Cancel {
        /// The task id.
        task_id: String,
    },
    /// Follow a task until it ends, printing each status it passes through.
    Watch {
        /// The task id.
        task_id: String,
    },
}

/// `aragora-cp schedules …`.
#[derive(Debug, Subcommand)]
pub enum SchedulesCommand {
    /// List the schedules with their next and last runs.
    List,
    /// Create a recurring task: on a cron expression (`--cron`) or every N seconds (`--every`).
    Create {
        /// A name for people.
        name: String,
        /// The task type each tick submits.
        #[arg(long)]
        task_type: String,
        /// A cron expression (5 fields, or 6 with seconds first).
        #[arg(long, conflicts_with = "every", required_unless_present = "every")]
        cron: Option<String>,
        /// Or an interval in seconds.
        #[arg(long)]
        every: Option<u64>,
        /// The cron expression's IANA time zone.
        #[arg(long, default_value = "UTC")]
        timezone: String,
        /// The payload, a JSON object.
        #[arg(long, default_value = "{}")]
        payload: String,
        /// A required capability (repeat for several).
        #[arg(long = "capability")]
        capabilities: Vec<String>,
        /// Ticks missed during an outage: none, one, all.
        #[arg(long, default_value = "one")]
        catch_up: String,
    },
    /// Stop a schedule firing until resumed.
    Pause {
        /// The schedule id.
        schedule_id: String,
    },
    /// Let a paused schedule fire again, from its next future tick.
    Resume {
        /// The schedule id.
        schedule_id: String,
    },
    /// Delete a schedule (the tasks it made stay).
    Delete {
        /// The schedule id.
        schedule_id: String,
    },
}

/// `aragora-cp notifications …`.
#[derive(Debug, Subcommand)]
pub enum NotificationsCommand {
    /// List the channels.
    Channels,
    /// Add a channel: a webhook (signed; its secret is printed once), Slack or Teams incoming webhook.
    Add {
        /// A name for people.
        name: String,
        /// webhook, slack or teams.
        #[arg(long = "type")]
        kind: String,
        /// Where messages are POSTed.
        #[arg(long)]
        url: String,
        /// An event type to send (repeat for several; `*` for all). Default: failures and outages.
        #[arg(long = "event")]
        events: Vec<String>,
        /// Only events of tasks of this type (repeat for several).
        #[arg(long = "task-type")]
        task_types: Vec<String>,
        /// Only events of tasks at this priority (repeat for several).
        #[arg(long = "priority")]
        priorities: Vec<String>,
        /// Attempts before a delivery becomes a dead letter.
        #[arg(long)]
        max_attempts: Option<u32>,
    },
    /// Remove a channel.
    Remove {
        /// The channel id.
        channel_id: String,
    },
    /// Recent deliveries, newest first.
    Deliveries {
        /// Only pending, sending, sent or dead ones.
        #[arg(long)]
        status: Option<String>,
        /// Page size.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Sent, failed and dead counts, in all and by channel.
    Stats,
    /// Send a dead letter again, from its first attempt.
    Retry {
        /// The delivery id (`<event id>:<channel id>`).
        delivery_id: String,
    },
}

/// `aragora-cp audit …`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// The newest audit entries, optionally filtered.
    List {
        /// Only this token subject.
        #[arg(long)]
        actor: Option<String>,
        /// Only actions starting with this, e.g. "DELETE /agents".
        #[arg(long)]
        action: Option<String>,
        /// Only this resource, e.g. task:task_….
        #[arg(long)]
        resource: Option<String>,
        /// Page size.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Check the audit chain and name the first entry that does not check.
    Verify,
}

/// A client request, as the dispatcher sees it.
pub enum ClientCommand {
    /// `agents …`.
    Agents(AgentsCommand),
    /// `tasks …`.
    Tasks(TasksCommand),
    /// `health`.
    Health,
    /// `stats`.
    Stats,
    /// `plugins`.
    Plugins,
    /// `policies`.
    Policies,
    /// `queue`.
    Queue,
    /// `schedules …`.
    Schedules(SchedulesCommand),
    /// `audit …`.
    Audit(AuditCommand),
    /// `notifications …`.
    Notifications(NotificationsCommand),
    /// `deliberate`.
    Deliberate {
        /// The question.
        question: String,
        /// Queue it (202) rather than wait.
        queue: bool,
        /// The decision type.
        decision_type: String,
        /// Seconds to wait.
        timeout: u32,
        /// Orchestrated by the control plane: participants, rounds and the decision rule.
        orchestrated: Option<(Option<u32>, Option<u32>, Option<String>)>,
    },
    /// `events`.
    Events {
        /// Comma-separated event types.
        types: Option<String>,
    },
}

/// The outcome of one request: the JSON body, or why there is none (a refusal carries the server's problem).
type Answer = Result<Value, CallError>;

/// Runs one client command.
pub fn run(connection: Connection, command: ClientCommand) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(run_async(connection, command))
}

async fn run_async(connection: Connection, command: ClientCommand) -> anyhow::Result<ExitCode> {
    let output = connection.output;
    let client = Api::new(&connection.server, connection.token.clone())?;
    let answer = match command {
        ClientCommand::Agents(command) => agents(&client, command).await?,
        ClientCommand::Tasks(TasksCommand::Watch { task_id }) => {
            return watch(&client, &task_id, output).await.or_else(|error| answered(&connection, error));
        }
        ClientCommand::Tasks(command) => tasks(&client, command).await?,
        ClientCommand::Health => client.get("/health").await,
        ClientCommand::Stats => client.get("/stats").await,
        ClientCommand::Plugins => client.get("/plugins").await.map(with_rollout_column),
        ClientCommand::Policies => client.get("/policies").await,
        ClientCommand::Queue => client.get("/queue/metrics").await,
        ClientCommand::Schedules(command) => schedules(&client, command).await?,
        ClientCommand::Notifications(command) => notifications(&client, command).await,
        ClientCommand::Deliberate { question, queue, decision_type, timeout, orchestrated } => {
            let mut body = json!({"content": question, "decision_type": decision_type, "async": queue,
                                  "timeout_seconds": timeout});
            if let Some((agents, rounds, decide)) = orchestrated {
                body["mode"] = json!("orchestrated");
                for (field, value) in [("agents", json!(agents)), ("rounds", json!(rounds)), ("decide", json!(decide))]
                {
                    if !value.is_null() {
                        body[field] = value;
                    }
                }
            }
            client.post("/deliberations", &body).await
        }
        ClientCommand::Audit(command) => audit(&client, command).await,
        ClientCommand::Events { types } => return events(&client, &connection, types.as_deref(), output).await,
    };
    match answer {
        Ok(body) => {
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&body)?),
                Output::Table => print_table(&body),
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => answered(&connection, error),
    }
}

/// A request that got no body: a refusal prints the server's problem and exits 1; no answer at all is an error.
fn answered(connection: &Connection, error: CallError) -> anyhow::Result<ExitCode> {
    match error {
        CallError::Refused { status, problem, .. } => Ok(refused(status.as_u16(), &problem)),
        transport @ CallError::Transport { .. } => Err(anyhow::Error::new(transport).context(connection.unreachable())),
    }
}

fn refused(status: u16, problem: &Value) -> ExitCode {
    let detail = problem["detail"].as_str().unwrap_or("no detail");
    let code = problem["code"].as_str().unwrap_or("error");
    eprintln!("error: {status} {code}: {detail}");
    ExitCode::FAILURE
}

async fn agents(client: &Api, command: AgentsCommand) -> anyhow::Result<Answer> {
    match command {
        AgentsCommand::List { capability, available } => {
            let mut query = Vec::new();
            if let Some(capability) = capability {
                query.push(format!("capability={capability}"));
            }
            if available {
                query.push("available=true".into());
            }
            let suffix = if query.is_empty() { String::new() } else { format!("?{}", query.join("&")) };
            Ok(client.get(&format!("/agents{suffix}")).await)
        }
        AgentsCommand::Get { agent_id } => Ok(client.get(&format!("/agents/{agent_id}")).await),
        AgentsCommand::Register { agent_id, capabilities, model, provider, max_concurrent } => {
            let body = json!({"agent_id": agent_id, "capabilities": capabilities, "model": model,
                              "provider": provider, "max_concurrent_tasks": max_concurrent});
            Ok(client.post("/agents", &body).await)
        }
        AgentsCommand::Unregister { agent_id } => Ok(client.delete(&format!("/agents/{agent_id}")).await),
    }
}

async fn tasks(client: &Api, command: TasksCommand) -> anyhow::Result<Answer> {
    match command {
        TasksCommand::Submit { task_type, payload, priority, capabilities, idempotency_key } => {
            let payload: Value = serde_json::from_str(&payload).context("--payload is not valid JSON")?;
            let key = idempotency_key.unwrap_or_else(|| format!("cli-{:032x}", rand::random::<u128>()));
            let body = json!({"task_type": task_type, "payload": payload, "priority": priority,
                              "required_capabilities": capabilities, "idempotency_key": key});
            Ok(client.post("/tasks", &body).await)
        }
        TasksCommand::Get { task_id, wait } => {
            let suffix = wait.map(|w| format!("?wait={w}")).unwrap_or_default();
            Ok(client.get(&format!("/tasks/{task_id}{suffix}")).await)
        }
        TasksCommand::List { status, task_type, agent, limit } => {
            let mut query = vec![format!("limit={limit}")];
            for (key, value) in [("status", status), ("task_type", task_type), ("agent_id", agent)] {
                if let Some(value) = value {
                    query.push(format!("{key}={value}"));
                }
            }
            Ok(client.get(&format!("/tasks?{}", query.join("&"))).await)
        }
        TasksCommand::Prioritize { task_id, priority } => {
            Ok(client.post("/queue/prioritize", &json!({"task_id": task_id, "priority": priority})).await)
        }
        TasksCommand::Cancel { task_id } => Ok(client.post(&format!("/tasks/{task_id}/cancel"), &json!({})).await),
        TasksCommand::Watch { .. } => unreachable!("watch is handled by its own loop"),
    }
}

async fn schedules(client: &Api, command: SchedulesCommand) -> anyhow::Result<Answer> {
    Ok(match command {
        SchedulesCommand::List => client.get("/schedules").await,
        SchedulesCommand::Create { name, task_type, cron, every, timezone, payload, capabilities, catch_up } => {
            let payload: Value = serde_json::from_str(&payload).context("--payload is not valid JSON")?;
            let body = json!({"name": name, "cron": cron, "interval_seconds": every, "timezone": timezone,
                              "catch_up": catch_up, "task": {"task_type": task_type, "payload": payload,
                                                             "required_capabilities": capabilities}});
            client.post("/schedules", &body).await
        }
        SchedulesCommand::Pause { schedule_id } => {
            client.post(&format!("/schedules/{schedule_id}/pause"), &json!({})).await
        }
        SchedulesCommand::Resume { schedule_id } => {
            client.post(&format!("/schedules/{schedule_id}/resume"), &json!({})).await
        }
        SchedulesCommand::Delete { schedule_id } => client.delete(&format!("/schedules/{schedule_id}")).await,
    })
}

async fn notifications(client: &Api, command: NotificationsCommand) -> Answer {
    match command {
        NotificationsCommand::Channels => client.get("/notifications/channels").await,
        NotificationsCommand::Add { name, kind, url, events, task_types, priorities, max_attempts } => {
            let mut filter = json!({"task_types": task_types, "priorities": priorities});
            if !events.is_empty() {
                filter["events"] = json!(events);
            }
            let body = json!({"name": name, "type": kind, "url": url, "filter": filter, "max_attempts": max_attempts});
            client.post("/notifications/channels", &body).await
        }
        NotificationsCommand::Remove { channel_id } => {
            client.delete(&format!("/notifications/channels/{channel_id}")).await
        }
        NotificationsCommand::Deliveries { status, limit } => {
            let status = status.map(|s| format!("&status={}", query_value(&s))).unwrap_or_default();
            client.get(&format!("/notifications?limit={limit}{status}")).await
        }
        NotificationsCommand::Stats => client.get("/notifications/stats").await,
        NotificationsCommand::Retry { delivery_id } => {
            let path = format!("/notifications/dead-letters/{}/retry", query_value(&delivery_id));
            client.post(&path, &json!({})).await
        }
    }
}

async fn audit(client: &Api, command: AuditCommand) -> Answer {
    match command {
        AuditCommand::List { actor, action, resource, limit } => {
            let mut query = vec![format!("limit={limit}")];
            for (key, value) in [("actor", actor), ("action", action), ("resource", resource)] {
                if let Some(value) = value {
                    query.push(format!("{key}={}", query_value(&value)));
                }
            }
            client.get(&format!("/audit?{}", query.join("&"))).await
        }
        AuditCommand::Verify => client.get("/audit/verify").await,
    }
}

/// `value` percent-encoded for a query string (an action such as `POST /tasks` has a space and slashes).
fn query_value(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// Polls `GET /tasks/{id}?wait=` (a server-side wait, not a busy loop) until the task ends.
async fn watch(client: &Api, task_id: &str, output: Output) -> Result<ExitCode, CallError> {
    let mut last = String::new();
    loop {
        let task = client.get(&format!("/tasks/{task_id}?wait=30")).await?;
        let status = task["status"].as_str().unwrap_or_default().to_string();
        if status != last {
            match output {
                Output::Json => println!("{task}"),
                Output::Table => println!("{task_id}  {status}  {}", task["assigned_agent"].as_str().unwrap_or("-")),
            }
            last = status.clone();
        }
        if matches!(status.as_str(), "completed" | "failed" | "cancelled" | "timeout") {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// Follows `GET /events` and prints each event line as it arrives.
async fn events(
    client: &Api,
    connection: &Connection,
    types: Option<&str>,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let suffix = types.map(|t| format!("?types={t}")).unwrap_or_default();
    let response = client.stream(&format!("/events{suffix}")).send().await.with_context(|| connection.unreachable())?;
    if !response.status().is_success() {
        let status = response.status().as_u16();
        return Ok(refused(status, &response.json().await.unwrap_or(Value::Null)));
    }
    let mut response = response;
    let mut pending = String::new();
    while let Some(chunk) = response.chunk().await? {
        pending.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = pending.find("\n\n") {
            let frame: String = pending.drain(..end + 2).collect();
            let data =
                frame.lines().filter_map(|l| l.strip_prefix("data:")).map(str::trim).collect::<Vec<_>>().join("");
            if data.is_empty() {
                continue;
            }
            match output {
                Output::Json => println!("{data}"),
                Output::Table => {
                    let event: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
                    println!(
                        "{}  {:<22} task={} agent={}",
                        event["time"].as_str().unwrap_or("-"),
                        event["type"].as_str().unwrap_or("-"),
                        event["task_id"].as_str().unwrap_or("-"),
                        event["agent_id"].as_str().unwrap_or("-"),
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Names each plugin's candidate in one cell (`shadow`, `canary 10 %`), so the table shows what is being tried.
fn with_rollout_column(mut body: Value) -> Value {
    if let Some(plugins) = body.get_mut("plugins").and_then(Value::as_array_mut) {
        for plugin in plugins {
            let rollout = &plugin["rollout"];
            let cell = match (rollout["mode"].as_str(), rollout["percent"].as_u64()) {
                (Some("canary"), Some(percent)) => json!(format!("canary {percent} %")),
                (Some(mode), _) => json!(mode),
                (None, _) => continue,
            };
            plugin["candidate"] = cell;
        }
    }
    body
}

/// Prints a list of objects as aligned columns, an object as key/value lines.
fn print_table(body: &Value) {
    let rows = match body {
        Value::Array(items) => Some(items.clone()),
        Value::Object(map) => ["agents", "tasks", "plugins", "violations", "schedules", "policies", "entries"]
            .iter()
            .find_map(|key| map.get(*key).and_then(Value::as_array).cloned()),
        _ => None,
    };
    match rows {
        Some(items) => print_rows(&items),
        None => print_object("", body),
    }
}

const COLUMNS: &[&str] = &[
    "seq",
    "agent_id",
    "task_id",
    "schedule_id",
    "name",
    "type",
    "time",
    "actor",
    "action",
    "resource",
    "outcome",
    "next_run_at",
    "runs",
    "task_type",
    "status",
    "priority",
    "in_flight",
    "assigned_agent",
    "model",
    "capabilities",
    "candidate",
];

fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn print_rows(items: &[Value]) {
    if items.is_empty() {
        println!("(none)");
        return;
    }
    let columns: Vec<&str> = COLUMNS.iter().copied().filter(|c| items.iter().any(|i| i.get(*c).is_some())).collect();
    let table: Vec<Vec<String>> =
        items.iter().map(|item| columns.iter().map(|c| cell(item.get(*c).unwrap_or(&Value::Null))).collect()).collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| table.iter().map(|row| row[i].len()).max().unwrap_or(0).max(c.len()))
        .collect();
    let line = |cells: Vec<String>| {
        cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join("  ").trim_end().to_string()
    };
    println!("{}", line(columns.iter().map(|c| c.to_uppercase()).collect()));
    for row in table {
        println!("{}", line(row));
    }
}

fn print_object(prefix: &str, value: &Value) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                print_object(&path, inner);
            }
        }
        other => println!("{prefix:<40} {}", cell(other)),
    }
}
