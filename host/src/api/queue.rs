//! The work as an operator reads it, in the shapes Aragora's clients expect: `/queue` (what runs, then what waits)
//! and `/tasks/history` (what finished, newest first, with offset paging), both views over the task list (`GET
//! /tasks` stays the way to page through every task with a cursor); `/queue/metrics` (what waits and how long work
//! waited, from the queue's own indexes); and `POST /queue/prioritize`, the one change an operator makes to waiting
//! work besides cancelling it.

use axum::Json;
use axum::extract::State;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::auth::{Caller, Permission};
use super::errors::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiQuery, page_limit, query_param};
use super::tasks::{TaskAnswer, submitter_or_admin};
use super::{ApiState, Prefixed};
use crate::model::{JsonText, Priority, QueueFigures, Task, TaskFilter, TaskId, TaskStatus};

/// Default page of both views.
const DEFAULT_QUEUE_LIMIT: usize = 50;
const DEFAULT_HISTORY_LIMIT: usize = 100;
/// Largest page of both views.
const MAX_LIMIT: usize = 1000;
/// Deepest `offset` of the history: offset paging reads everything before the page, so it is bounded (use
/// `GET /tasks` with its cursor to go further back).
pub const MAX_HISTORY_OFFSET: usize = 10_000;

/// Metadata keys a history entry carries (the rest of the metadata stays on the task).
const HISTORY_METADATA: [&str; 4] = ["name", "workspace_id", "user_id", "tags"];

/// The routes, relative to the API prefix.
pub fn routes(api: Prefixed<'_>) -> Prefixed<'_> {
    api.route("/queue", get(queue_get))
        .route("/queue/metrics", get(queue_metrics))
        .route("/queue/prioritize", post(queue_prioritize))
        .route("/tasks/history", get(history_get))
}

/// `GET /queue` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueQuery {
    limit: Option<String>,
}

/// One job of `GET /queue`.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueJob {
    /// The task's id.
    pub id: TaskId,
    /// Its type.
    #[serde(rename = "type")]
    pub task_type: String,
    /// `metadata.name`, else "`<type>` task".
    pub name: String,
    /// `running`, `claimed` or `pending`.
    pub status: TaskStatus,
    /// 0 to 1: the last progress report's number (a bare number, or its `progress` or `percent`/100 field), 0
    /// without one.
    pub progress: f64,
    /// When the current attempt started.
    pub started_at: Option<String>,
    /// When it was submitted.
    pub created_at: String,
    /// The agent holding it (none while pending).
    pub agents_assigned: Vec<String>,
    /// Its priority.
    pub priority: Priority,
}

/// `GET /queue` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueAnswer {
    /// Running and claimed tasks first, then pending ones; newest first within each status.
    pub jobs: Vec<QueueJob>,
    /// How many jobs this answer holds.
    pub total: usize,
    /// Whether some status held more than `limit` tasks.
    pub has_more: bool,
}

/// A progress report as a fraction: a number is taken as is, an object's `progress` likewise, its `percent` / 100.
fn fraction(progress: Option<&Value>) -> f64 {
    let number = match progress {
        Some(Value::Object(fields)) => fields
            .get("progress")
            .and_then(Value::as_f64)
            .or_else(|| fields.get("percent").and_then(Value::as_f64).map(|p| p / 100.0)),
        Some(value) => value.as_f64(),
        None => None,
    };
    number.unwrap_or(0.0).clamp(0.0, 1.0)
}

impl From<Task> for QueueJob {
    fn from(task: Task) -> Self {
        let name = match task.metadata.get("name").and_then(Value::as_str) {
            Some(name) => name.to_string(),
            None => format!("{} task", task.task_type),
        };
        QueueJob {
            progress: fraction(task.progress.as_ref()),
            id: task.task_id,
            task_type: task.task_type,
            name,
            status: task.status,
            started_at: task.started_at.or(task.claimed_at),
            created_at: task.created_at,
            agents_assigned: task.assigned_agent.into_iter().collect(),
            priority: task.priority,
        }
    }
}

/// `GET /queue?limit=` → `{"jobs": [...], "total", "has_more"}`: up to `limit` tasks of each of running, claimed
/// and pending, in that order.
#[utoipa::path(get, path = "/queue", tag = "tasks",
    params(("limit" = Option<usize>, Query, description = "Tasks per status, 1–1000 (default 50)")),
    responses((status = 200, description = "What runs, then what waits", body = QueueAnswer)),
    security(("bearer" = ["controlplane:read"])))]
pub async fn queue_get(
    State(state): State<ApiState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<QueueQuery>,
) -> ApiResult<Json<QueueAnswer>> {
    caller.require(Permission::Read)?;
    caller.not_an_agent("read the queue")?;
    let limit = page_limit(query.limit.as_deref(), DEFAULT_QUEUE_LIMIT, MAX_LIMIT)?;
    let statuses = [TaskStatus::Running, TaskStatus::Claimed, TaskStatus::Pending];
    let (tasks, has_more) = state.coordinator.tasks_in(&statuses, &TaskFilter::default(), limit).await?;
    let jobs: Vec<QueueJob> = tasks.into_iter().map(QueueJob::from).collect();
    Ok(Json(QueueAnswer { total: jobs.len(), jobs, has_more }))
}

/// `GET /tasks/history` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    status: Option<String>,
    task_type: Option<String>,
    agent_id: Option<String>,
    limit: Option<String>,
    offset: Option<String>,
}

/// One finished task of `GET /tasks/history`.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryEntry {
    /// The task's id.
    pub id: TaskId,
    /// Its type.
    #[serde(rename = "type")]
    pub task_type: String,
    /// `completed`, `failed`, `cancelled` or `timeout`.
    pub status: TaskStatus,
    /// Its priority.
    pub priority: Priority,
    /// The agent that held it last.
    pub assigned_agent: Option<String>,
    /// The result, when completed.
    #[schema(value_type = Option<Value>)]
    pub result: Option<JsonText>,
    /// The failure, when failed or timed out.
    pub error: Option<String>,
    /// Automatic retries used.
    pub retries: u32,
    /// From the last attempt's start (or grant) to the end, in ms.
    pub duration_ms: Option<u64>,
    /// When it was submitted.
    pub created_at: String,
    /// When its last attempt started.
    pub started_at: Option<String>,
    /// When it ended.
    pub completed_at: Option<String>,
    /// Its `name`, `workspace_id`, `user_id` and `tags` metadata, where set.
    pub metadata: Map<String, Value>,
}

/// Milliseconds between two RFC 3339 times, when both parse and the second is not earlier.
fn between(from: &str, to: &str) -> Option<u64> {
    let from = chrono::DateTime::parse_from_rfc3339(from).ok()?;
    let to = chrono::DateTime::parse_from_rfc3339(to).ok()?;
    u64::try_from((to - from).num_milliseconds()).ok()
}

impl From<Task> for HistoryEntry {
    fn from(task: Task) -> Self {
        let began = task.started_at.as_deref().or(task.claimed_at.as_deref());
        let duration_ms = began.zip(task.completed_at.as_deref()).and_then(|(from, to)| between(from, to));
        let metadata = task.metadata.into_iter().filter(|(key, _)| HISTORY_METADATA.contains(&key.as_str())).collect();
        let error = match task.status {
            TaskStatus::Failed | TaskStatus::Timeout => {
                task.error.or_else(|| task.last_error.map(|error| error.message))
            }
            _ => None,
        };
        HistoryEntry {
            id: task.task_id,
            task_type: task.task_type,
            status: task.status,
            priority: task.priority,
            assigned_agent: task.assigned_agent,
            result: if task.status == TaskStatus::Completed { task.result } else { None },
            error,
            retries: task.retries,
            duration_ms,
            created_at: task.created_at,
            started_at: task.started_at,
            completed_at: task.completed_at,
            metadata,
        }
    }
}

/// `GET /tasks/history` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryAnswer {
    /// Finished tasks, the most recently finished first.
    pub history: Vec<HistoryEntry>,
    /// Matching finished tasks counted while reading: exact when `has_more` is false, else at least this many.
    pub total: usize,
    /// The page size asked for.
    pub limit: usize,
    /// Entries skipped before this page.
    pub offset: usize,
    /// Whether entries follow this page.
    pub has_more: bool,
}

/// `GET /tasks/history?status=&task_type=&agent_id=&limit=&offset=` → `{"history", "total", "limit", "offset",
/// "has_more"}`. An agent token reads its own agent's history.
#[utoipa::path(get, path = "/tasks/history", tag = "tasks",
    params(
        ("status" = Option<TaskStatus>, Query, description = "Only this terminal status: completed, failed, cancelled or timeout"),
        ("task_type" = Option<String>, Query, description = "Only tasks of this type"),
        ("agent_id" = Option<String>, Query, description = "Only tasks this agent held last"),
        ("limit" = Option<usize>, Query, description = "Page size, 1–1000 (default 100)"),
        ("offset" = Option<usize>, Query, description = "Entries to skip, 0–10000 (default 0); `GET /tasks` with its cursor reads further back"),
    ),
    responses((status = 200, description = "One page of finished tasks, the most recently finished first", body = HistoryAnswer)),
    security(("bearer" = ["controlplane:read"])))]
pub async fn history_get(
    State(state): State<ApiState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> ApiResult<Json<HistoryAnswer>> {
    caller.require(Permission::Read)?;
    let limit = page_limit(query.limit.as_deref(), DEFAULT_HISTORY_LIMIT, MAX_LIMIT)?;
    let offset = query_param::<usize>("offset", query.offset.as_deref(), "a number from 0 to 10000")?.unwrap_or(0);
    if offset > MAX_HISTORY_OFFSET {
        return Err(ApiError::invalid("offset", format!("must be a number from 0 to {MAX_HISTORY_OFFSET}")));
    }
    let terminal = [TaskStatus::Completed, TaskStatus::Failed, TaskStatus::Cancelled, TaskStatus::Timeout];
    let statuses: Vec<TaskStatus> = match query.status.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => terminal.to_vec(),
        Some(text) => {
            let status: TaskStatus = text.parse()?;
            if !status.is_terminal() {
                return Err(ApiError::invalid("status", "must be completed, failed, cancelled or timeout"));
            }
            vec![status]
        }
    };
    let mut agent_id = query.agent_id.filter(|a| !a.is_empty());
    if let Some(own) = &caller.agent {
        caller.acting_for(agent_id.as_deref().unwrap_or(own))?;
        agent_id = Some(own.clone());
    }
    let filter = TaskFilter { task_type: query.task_type.filter(|t| !t.is_empty()), agent_id, ..TaskFilter::default() };
    let (mut tasks, more) = state.coordinator.tasks_in(&statuses, &filter, offset + limit).await?;
    // Newest end first; RFC 3339 times of one format sort as text. A finished task always has its end time.
    tasks.sort_by(|a, b| b.completed_at.cmp(&a.completed_at).then_with(|| b.task_id.cmp(&a.task_id)));
    let total = tasks.len();
    let history: Vec<HistoryEntry> = tasks.into_iter().skip(offset).take(limit).map(HistoryEntry::from).collect();
    Ok(Json(HistoryAnswer { history, total, limit, offset, has_more: more || total > offset + limit }))
}

/// Claim waits of `GET /queue/metrics`: over the newest grants the store remembers.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClaimWaits {
    /// How many grants these figures cover (at most 1024, the newest).
    pub samples: usize,
    /// Median wait in pending before the grant, in ms (none without samples).
    pub p50_ms: Option<u64>,
    /// 99th percentile, in ms.
    pub p99_ms: Option<u64>,
    /// Longest, in ms.
    pub max_ms: Option<u64>,
}

impl ClaimWaits {
    /// Nearest-rank percentiles of `waits`.
    fn of(mut waits: Vec<u64>) -> Self {
        waits.sort_unstable();
        let rank = |p: f64| {
            let index = ((p * waits.len() as f64).ceil() as usize).clamp(1, waits.len().max(1)) - 1;
            waits.get(index).copied()
        };
        ClaimWaits { samples: waits.len(), p50_ms: rank(0.50), p99_ms: rank(0.99), max_ms: waits.last().copied() }
    }
}

/// Claimable tasks of one capability signature.
#[derive(Debug, Serialize, ToSchema)]
pub struct SignatureDepth {
    /// The capabilities the tasks require (sorted; empty: any agent may take them).
    pub capabilities: Vec<String>,
    /// Claimable tasks requiring exactly these.
    pub ready: u64,
}

/// `GET /queue/metrics` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueMetrics {
    /// Pending tasks: claimable ones plus those sitting out a retry backoff.
    pub pending: u64,
    /// Pending tasks sitting out a retry backoff.
    pub delayed: u64,
    /// Pending tasks by priority (every level, zeros included).
    pub by_priority: std::collections::BTreeMap<String, u64>,
    /// Claimable tasks per capability signature, the deepest first.
    pub by_signature: Vec<SignatureDepth>,
    /// How long the longest-waiting pending task has waited since it (last) entered pending, in ms.
    pub oldest_pending_age_ms: Option<u64>,
    /// How long tasks waited in pending before their grant (backoff included).
    pub claim_wait: ClaimWaits,
    /// Claims blocked waiting for work now.
    pub waiting_claims: u64,
}

impl QueueMetrics {
    fn new(figures: QueueFigures, pending_by_priority: &std::collections::BTreeMap<String, u64>, waiting: u64) -> Self {
        let by_priority: std::collections::BTreeMap<String, u64> = Priority::ALL
            .iter()
            .map(|p| (p.as_str().to_string(), pending_by_priority.get(p.as_str()).copied().unwrap_or(0)))
            .collect();
        let mut by_signature: Vec<SignatureDepth> = figures
            .ready_by_signature
            .into_iter()
            .map(|(capabilities, ready)| SignatureDepth { capabilities, ready })
            .collect();
        by_signature.sort_by(|a, b| b.ready.cmp(&a.ready).then_with(|| a.capabilities.cmp(&b.capabilities)));
        QueueMetrics {
            pending: by_priority.values().sum(),
            delayed: figures.delayed,
            by_priority,
            by_signature,
            oldest_pending_age_ms: figures.oldest_waiting_since_ms.map(|since| figures.now_ms.saturating_sub(since)),
            claim_wait: ClaimWaits::of(figures.claim_waits_ms),
            waiting_claims: waiting,
        }
    }
}

/// `GET /queue/metrics` → depth by priority and capability signature, the oldest pending task's age and claim-wait
/// percentiles, read from indexes the transitions keep (its cost does not grow with the backlog).
#[utoipa::path(get, path = "/queue/metrics", tag = "tasks",
    responses((status = 200, description = "What waits and how long work waited for a claim", body = QueueMetrics)),
    security(("bearer" = ["controlplane:read"])))]
pub async fn queue_metrics(State(state): State<ApiState>, caller: Caller) -> ApiResult<Json<QueueMetrics>> {
    caller.require(Permission::Read)?;
    caller.not_an_agent("read the queue")?;
    let (figures, counters) = tokio::try_join!(state.coordinator.queue_figures(), state.coordinator.counters())?;
    Ok(Json(QueueMetrics::new(figures, &counters.pending_by_priority, counters.waiting_claims)))
}

/// `POST /queue/prioritize` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PrioritizeRequest {
    /// The pending task.
    pub task_id: String,
    /// Its new priority: `critical` (or `urgent`), `high`, `normal`, `low`, or the level 0–3.
    #[schema(value_type = String)]
    pub priority: Priority,
}

/// `POST /queue/prioritize {"task_id", "priority"}` → the task at its new priority. It takes the place it would
/// hold had it been submitted with that priority: behind the tasks of that level submitted before it, ahead of those
/// submitted after (with aging on, the age it has is kept).
#[utoipa::path(post, path = "/queue/prioritize", tag = "tasks", request_body = PrioritizeRequest,
    responses(
        (status = 200, description = "Pending at its new priority", body = Task),
        (status = 403, description = "Neither the task's submitter nor an admin", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such task", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "Not pending (`invalid_transition`)", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["controlplane:tasks"])))]
pub async fn queue_prioritize(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(request): ApiJson<PrioritizeRequest>,
) -> ApiResult<TaskAnswer> {
    let id = TaskId::parse("task_id", &request.task_id)?;
    submitter_or_admin(&state, &caller, &id, "reprioritize tasks").await?;
    Ok(TaskAnswer(state.coordinator.prioritize_task(&id, request.priority).await?))
}
