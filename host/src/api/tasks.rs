//! `/tasks`: submit (single, batch, idempotent), read and wait, list, claim, and the lease-fenced reports
//! (start, progress, complete, fail) plus cancel and retry. Outcomes are fenced on the body's `lease_id`, else its
//! `agent_id`, else the caller's agent token; with none of them (existing clients complete with no body) the
//! report applies to the current attempt, unfenced.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::audit::AuditResource;
use super::auth::{Caller, Permission};
use super::errors::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiQuery, page_limit, query_param};
use super::{ApiState, Prefixed};
use crate::model::{CapabilitySet, FailKind, MAX_AGENT_CAPABILITIES, SubmitRequest, Task, TaskId, TaskStatus};
use crate::model::{Completion, FailRequest, Fence, JsonText, JsonWriter, TaskFilter};
use crate::scheduler::{Claim, MAX_BLOCK};

/// Tasks in one batch at most (DESIGN §7).
pub const MAX_BATCH: usize = 1000;
/// Longest `?wait=` (DESIGN §3).
pub const MAX_WAIT_SECONDS: f64 = 60.0;
/// Default and largest page of `GET /tasks`.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest page of `GET /tasks` (DESIGN §3).
pub const MAX_LIMIT: usize = 1000;
/// A claim's default block (DESIGN §4).
pub const DEFAULT_BLOCK_MS: u64 = 5000;
/// Tasks one claim may take at most.
pub const MAX_CLAIM_TASKS: usize = 100;

/// The task routes, relative to the API prefix.
pub fn routes(api: Prefixed<'_>) -> Prefixed<'_> {
    api.route("/tasks", get(tasks_list).post(tasks_submit))
        .route("/tasks/batch", post(tasks_submit_batch))
        .route("/tasks/claim", post(tasks_claim))
        .route("/tasks/complete", post(tasks_complete_batch))
        .route("/tasks/{task_id}", get(tasks_get))
        .route("/tasks/{task_id}/start", post(tasks_start))
        .route("/tasks/{task_id}/progress", post(tasks_progress))
        .route("/tasks/{task_id}/complete", post(tasks_complete))
        .route("/tasks/{task_id}/fail", post(tasks_fail))
        .route("/tasks/{task_id}/cancel", post(tasks_cancel))
        .route("/tasks/{task_id}/retry", post(tasks_retry))
}

/// A task id from the path: one that cannot exist is simply not found.
pub(super) fn task_id(raw: &str) -> ApiResult<TaskId> {
    TaskId::parse("task_id", raw).map_err(|_| ApiError::not_found("task_not_found", format!("task {raw} not found")))
}

/// The `Idempotency-Key` header, merged with the body's field (they must agree).
fn merge_idempotency_key(headers: &HeaderMap, request: &mut SubmitRequest) -> ApiResult<()> {
    let Some(header) = headers.get("idempotency-key") else { return Ok(()) };
    let key = header.to_str().map_err(|_| ApiError::invalid("Idempotency-Key", "must be visible ASCII"))?.to_string();
    match &request.idempotency_key {
        Some(body) if *body != key => {
            Err(ApiError::invalid("idempotency_key", "differs from the Idempotency-Key header"))
        }
        _ => {
            request.idempotency_key = Some(key);
            Ok(())
        }
    }
}

/// `POST /tasks` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubmitAnswer {
    /// The new task's id (the first submit's, on an idempotent replay).
    pub task_id: TaskId,
}

/// `POST /tasks/batch` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchSubmitAnswer {
    /// The ids, in the order of the request.
    pub task_ids: Vec<TaskId>,
}

// Written by `claim_answer_json` (the same bytes): this type describes the answer in the API document.
/// `POST /tasks/claim` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClaimAnswer {
    /// The first task granted, or null when none was (within `block_ms`).
    pub task: Option<Task>,
    /// Every task granted (up to `max_tasks`).
    pub tasks: Vec<Task>,
    /// Why the agent may not take work now (paused, breaker open, …), when that is why nothing was granted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A claim's answer, the bytes [`ClaimAnswer`]'s `Serialize` would give (a test holds the two equal). The first
/// task granted is written twice (`task` and the head of `tasks`): it is rendered once and its text copied.
fn claim_answer_json(tasks: &[Task], reason: Option<&str>) -> String {
    let rendered: usize = tasks.iter().map(|task| 512 + task.payload.get().len()).sum();
    let mut out = JsonWriter::with_capacity(64 + 2 * rendered);
    out.literal("{\"task\":");
    match tasks.split_first() {
        None => {
            out.literal("null,\"tasks\":[");
        }
        Some((first, rest)) => {
            let start = out.len();
            first.write_json(&mut out);
            let first_text = start..out.len();
            out.literal(",\"tasks\":[").repeat(first_text);
            for task in rest {
                out.literal(",");
                task.write_json(&mut out);
            }
        }
    }
    out.literal("]");
    if let Some(reason) = reason {
        out.literal(",\"reason\":").text(reason);
    }
    out.literal("}");
    out.into_string()
}

/// A JSON answer whose text is already written (as `Json` would send it: 200, `application/json`).
fn json_text_response(text: String) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], text).into_response()
}

/// The answer of every call that answers one task: the bytes `Json<Task>` would send, written by
/// [`Task::to_json`] (which skips `serde_json`'s per-key escaping on the hot path).
pub struct TaskAnswer(pub Task);

impl IntoResponse for TaskAnswer {
    fn into_response(self) -> Response {
        json_text_response(self.0.to_json())
    }
}

/// `POST /tasks/{id}/complete` answer with `claim_next`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CompleteAndNextAnswer {
    /// Always true.
    pub completed: bool,
    /// The completed task.
    pub task: Task,
    /// The agent's next task, or null when none came within `claim_next.block_ms`.
    pub next: Option<Task>,
}

/// `POST /tasks/{id}/complete` answer: the task, or with `claim_next` the task and the next one (boxed: both are
/// large, and only one exists per response).
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum CompleteAnswer {
    /// Without `claim_next`.
    // Written by `Task::to_json` (the same bytes): this variant describes it in the API document.
    Completed(Box<Task>),
    /// With `claim_next`.
    WithNext(Box<CompleteAndNextAnswer>),
}

/// One refused outcome of `POST /tasks/complete`.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchConflict {
    /// The task.
    pub task_id: String,
    /// The status the single-task call would have answered (404, 409).
    pub status: u16,
    /// Machine-readable reason (`task_not_found`, `lease_lost`, `outcome_conflict`, …).
    pub code: String,
    /// Human-readable detail.
    pub error: String,
}

/// `POST /tasks/complete` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchCompleteAnswer {
    /// The tasks completed by this call.
    pub completed: Vec<Task>,
    /// The outcomes refused, each with its reason.
    pub conflicts: Vec<BatchConflict>,
}

/// `POST /tasks` → 201 `{"task_id"}`; a replay of an idempotent submit → 200 with `Idempotent-Replayed: true`.
#[utoipa::path(post, path = "/tasks", tag = "tasks", request_body = SubmitRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Same as the body's `idempotency_key` (they must agree)")),
    responses(
        (status = 201, description = "Submitted", body = SubmitAnswer),
        (status = 200, description = "An idempotent replay: the first submit's task (header `Idempotent-Replayed: true`)", body = SubmitAnswer,
            headers(("Idempotent-Replayed" = String, description = "`true`"))),
        (status = 403, description = "A submit policy denied it (`policy_denied`, with `policy`, `reason`, `violation_id`), or an agent token submits", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The idempotency key was used with another body (`idempotency_key_reused`)", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "`MAX_PENDING_TASKS` tasks are pending already (`too_many_pending_tasks`); retry after `Retry-After`", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["controlplane:tasks"])))]
pub async fn tasks_submit(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(mut request): ApiJson<SubmitRequest>,
) -> ApiResult<Response> {
    caller.require(Permission::Tasks)?;
    caller.not_an_agent("submit tasks")?;
    merge_idempotency_key(&headers, &mut request)?;
    let submitted = state.coordinator.submit_task(request, &caller.sub).await?;
    let made = Extension(AuditResource(["task:", submitted.task_id.as_str()].concat()));
    let body = Json(SubmitAnswer { task_id: submitted.task_id });
    if submitted.replayed {
        let mut response = (StatusCode::OK, made, body).into_response();
        response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
        return Ok(response);
    }
    Ok((StatusCode::CREATED, made, body).into_response())
}

/// `POST /tasks/batch`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    tasks: Vec<SubmitRequest>,
}

/// `POST /tasks/batch {"tasks": [...]}` → 201 `{"task_ids": [...]}`, all or nothing.
#[utoipa::path(post, path = "/tasks/batch", tag = "tasks", request_body = BatchRequest,
    responses(
        (status = 201, description = "All submitted (all or nothing)", body = BatchSubmitAnswer),
        (status = 403, description = "A submit policy denied one of them: none was submitted", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "The batch would take the pending tasks past `MAX_PENDING_TASKS` (`too_many_pending_tasks`): none was submitted", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["controlplane:tasks"])))]
pub async fn tasks_submit_batch(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(batch): ApiJson<BatchRequest>,
) -> ApiResult<(StatusCode, Json<BatchSubmitAnswer>)> {
    caller.require(Permission::Tasks)?;
    caller.not_an_agent("submit tasks")?;
    if batch.tasks.is_empty() || batch.tasks.len() > MAX_BATCH {
        return Err(ApiError::invalid("tasks", format!("must hold 1 to {MAX_BATCH} tasks")));
    }
    let submitted = state.coordinator.submit_batch(batch.tasks, &caller.sub).await?;
    let task_ids = submitted.into_iter().map(|s| s.task_id).collect();
    Ok((StatusCode::CREATED, Json(BatchSubmitAnswer { task_ids })))
}

/// `GET /tasks/{id}` query.
#[derive(Debug, Deserialize)]
pub struct GetQuery {
    wait: Option<String>,
}

/// `GET /tasks/{id}[?wait=SECONDS]`: with `wait`, answers when the task is terminal or the wait (≤ 60 s) ends.
#[utoipa::path(get, path = "/tasks/{task_id}", tag = "tasks",
    params(("task_id" = String, Path, description = "The task's id (`task_` + 32 hex digits)"), ("wait" = Option<f64>, Query, description = "Seconds (0–60) to wait for a terminal status before answering")),
    responses((status = 200, description = "The task (terminal, or as it is when the wait ends)", body = Task)),
    security(("bearer" = ["controlplane:read"])))]
pub async fn tasks_get(
    State(state): State<ApiState>,
    caller: Caller,
    Path(raw_id): Path<String>,
    ApiQuery(query): ApiQuery<GetQuery>,
) -> ApiResult<TaskAnswer> {
    caller.require(Permission::Read)?;
    let id = task_id(&raw_id)?;
    let wait = query_param::<f64>("wait", query.wait.as_deref(), "a number of seconds from 0 to 60")?.unwrap_or(0.0);
    if !(0.0..=MAX_WAIT_SECONDS).contains(&wait) {
        return Err(ApiError::invalid("wait", "must be a number of seconds from 0 to 60"));
    }
    let task = state.coordinator.get_task(&id).await?;
    held_by_caller(&caller, &task)?;
    if wait == 0.0 || task.status.is_terminal() {
        return Ok(TaskAnswer(task));
    }
    Ok(TaskAnswer(state.coordinator.wait_for_result(&id, Duration::from_secs_f64(wait)).await?))
}

/// 403 when an agent token reads a task it does not hold.
fn held_by_caller(caller: &Caller, task: &Task) -> ApiResult<()> {
    match &caller.agent {
        Some(own) if task.assigned_agent.as_deref() != Some(own.as_str()) => {
            Err(ApiError::forbidden(format!("a token for agent {own} may read only the tasks that agent holds")))
        }
        _ => Ok(()),
    }
}

/// `GET /tasks` query.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    status: Option<String>,
    task_type: Option<String>,
    agent_id: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// `GET /tasks` answer: one page.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskList {
    /// The tasks, newest first.
    pub tasks: Vec<Task>,
    /// How many in this page (every list answer carries `total`, as Aragora's do).
    pub total: usize,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// `GET /tasks?status=&task_type=&agent_id=&limit=&cursor=` → `{tasks, total, next_cursor}`, newest first.
#[utoipa::path(get, path = "/tasks", tag = "tasks",
    params(
        ("status" = Option<TaskStatus>, Query, description = "Only tasks in this status"),
        ("task_type" = Option<String>, Query, description = "Only tasks of this type"),
        ("agent_id" = Option<String>, Query, description = "Only tasks assigned to this agent"),
        ("limit" = Option<usize>, Query, description = "Page size, 1–1000 (default 100)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses((status = 200, description = "One page, newest first", body = TaskList)),
    security(("bearer" = ["controlplane:read"])))]
pub async fn tasks_list(
    State(state): State<ApiState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<Json<TaskList>> {
    caller.require(Permission::Read)?;
    let status: Option<TaskStatus> = match query.status.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        Some(text) => Some(text.parse()?),
        None => None,
    };
    let limit = page_limit(query.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?;
    let mut agent_id = query.agent_id.filter(|a| !a.is_empty());
    if let Some(own) = &caller.agent {
        caller.acting_for(agent_id.as_deref().unwrap_or(own))?;
        agent_id = Some(own.clone());
    }
    let filter = TaskFilter {
        status,
        task_type: query.task_type.filter(|t| !t.is_empty()),
        agent_id,
        limit,
        cursor: query.cursor.filter(|c| !c.is_empty()),
    };
    let page = state.coordinator.list_tasks(&filter).await?;
    Ok(Json(TaskList { total: page.tasks.len(), tasks: page.tasks, next_cursor: page.next_cursor }))
}

/// `POST /tasks/claim`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimBody {
    /// The claiming agent; defaults to the agent of an `agent:<id>` token.
    #[serde(default)]
    agent_id: Option<String>,
    #[serde(default)]
    capabilities: Option<Vec<String>>,
    #[serde(default)]
    block_ms: Option<u64>,
    #[serde(default)]
    max_tasks: Option<usize>,
    #[serde(default)]
    session_id: Option<String>,
}

/// `POST /tasks/claim {agent_id, capabilities?, block_ms?, max_tasks?}` → `{"task": first-or-null, "tasks": [...]}`
/// plus `reason` when the agent may not take work.
#[utoipa::path(post, path = "/tasks/claim", tag = "tasks", request_body = ClaimBody,
    responses(
        (status = 200, description = "Granted tasks (each with its `lease_id`), or `task: null` when none came within `block_ms`", body = ClaimAnswer),
        (status = 404, description = "The agent is not registered (`agent_not_found`): register, then claim", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The claim's `session_id` is not the agent's current session (`session_replaced`)", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "No work, and too many claims wait already (`too_many_waiting_claims`: `MAX_WAITING_CLAIMS`, `MAX_WAITING_CLAIMS_PER_AGENT`); retry after `Retry-After`", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["controlplane:tasks"])))]
pub async fn tasks_claim(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(body): ApiJson<ClaimBody>,
) -> ApiResult<Response> {
    caller.require(Permission::Tasks)?;
    let agent_id = body
        .agent_id
        .or_else(|| caller.agent.clone())
        .ok_or_else(|| ApiError::invalid("agent_id", "missing field `agent_id`"))?;
    caller.acting_for(&agent_id)?;
    crate::model::validate_agent_id("agent_id", &agent_id)?;
    let claim = claim_request(
        agent_id,
        body.capabilities.as_deref(),
        body.block_ms,
        body.max_tasks.unwrap_or(1),
        body.session_id,
        "",
    )?;
    let outcome = state.coordinator.claim_task(&claim).await?;
    Ok(json_text_response(claim_answer_json(&outcome.tasks, outcome.reason.as_deref())))
}

/// Validates a claim's fields (`prefix` names where they sit in the body).
fn claim_request(
    agent_id: String,
    capabilities: Option<&[String]>,
    block_ms: Option<u64>,
    max_tasks: usize,
    session_id: Option<String>,
    prefix: &str,
) -> ApiResult<Claim> {
    let block_ms = block_ms.unwrap_or(DEFAULT_BLOCK_MS);
    if block_ms > MAX_BLOCK.as_millis() as u64 {
        return Err(ApiError::invalid(format!("{prefix}block_ms"), "must be 0 to 60000"));
    }
    if !(1..=MAX_CLAIM_TASKS).contains(&max_tasks) {
        return Err(ApiError::invalid(format!("{prefix}max_tasks"), format!("must be 1 to {MAX_CLAIM_TASKS}")));
    }
    let capabilities = match capabilities {
        Some(raw) => Some(CapabilitySet::parse(&format!("{prefix}capabilities"), raw, MAX_AGENT_CAPABILITIES)?),
        None => None,
    };
    Ok(Claim { agent_id, capabilities, block: Duration::from_millis(block_ms), max_tasks, session_id })
}

/// The fencing fields every report may carry.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FenceBody {
    #[serde(default)]
    lease_id: Option<String>,
    #[serde(default)]
    agent_id: Option<String>,
}

/// How a report is fenced: the lease, else the agent (body or agent token), else unfenced. An agent token may
/// report only on tasks it holds: a lease that is the task's current one but another agent's is refused here; a
/// stale lease is left to the store (409).
async fn fence(
    state: &ApiState,
    caller: &Caller,
    id: &TaskId,
    lease_id: Option<String>,
    agent_id: Option<String>,
) -> ApiResult<Fence> {
    caller.require(Permission::Tasks)?;
    if let Some(agent) = &agent_id {
        caller.acting_for(agent)?;
    }
    let agent_id = agent_id.or_else(|| caller.agent.clone());
    match (lease_id, agent_id) {
        (Some(lease), _) => {
            if let Some(own) = &caller.agent {
                let task = state.coordinator.get_task(id).await?;
                if task.lease_id.as_deref() == Some(lease.as_str())
                    && task.assigned_agent.as_deref() != Some(own.as_str())
                {
                    return Err(ApiError::forbidden(format!("task {id} is not held by agent {own}")));
                }
            }
            Ok(Fence::Lease(lease))
        }
        (None, Some(agent)) => Ok(Fence::Agent(agent)),
        (None, None) if state.coordinator.config().allow_unfenced_reports => Ok(Fence::Unfenced),
        (None, None) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "fence_required",
            "this server takes reports only with a lease_id or an agent_id (ALLOW_UNFENCED_COMPLETE=false)",
        )
        .with_field("lease_id")),
    }
}

/// `POST /tasks/{id}/start`.
#[utoipa::path(post, path = "/tasks/{task_id}/start", tag = "tasks", params(("task_id" = String, Path, description = "The task's id (`task_` + 32 hex digits)")),
    request_body(content = Option<FenceBody>, description = "Optional fence: `lease_id`, else `agent_id`"),
    responses((status = 200, description = "Running", body = Task), (status = 409, description = "The lease is no longer this attempt's (`lease_lost`, `task_cancelled`, `task_timeout`) or the task is already finished (`outcome_conflict`, `invalid_transition`)", body = super::openapi::ProblemBody, content_type = "application/problem+json")),
    security(("bearer" = ["controlplane:tasks"])))]
pub async fn tasks_start(
    State(state): State<ApiState>,
    caller: Caller,
    Path(raw_id): Path<String>,
    ApiJson(body): ApiJson<FenceBody>,
) -> ApiResult<TaskAnswer> {
    let id = task_id(&raw_id)?;
    let fence = fence(&state, &caller, &id, body.lease_id, body.agent_id).await?;
    Ok(TaskAnswer(state.coordinator.start_task(&id, &fence).await?))
}

/// `POST /tasks/{id}/progress`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProgressBody {
    #[serde(default)]
    lease_id: Option<String>,
    #[serde(default)]
    agent_id: Option<String>,
    /// Anything JSON the agent wants to report.
    #[serde(default)]
    progress: Option<Value>,
}

/// `POST /tasks/{id}/progress {progress}`.
#[utoipa::path(post, path = "/tasks/{task_id}/progress", tag = "tasks", params(("task_id" = String, Path, description = "The task's id (`task_` + 32 hex digits)")),
    request_body(content = Option<ProgressBody>),
    responses((status = 200, description = "Progress recorded (the task is running)", body = Task), (status = 409, description = "The lease is no longer this attempt's (`lease_lost`, `task_cancelled`, `task_timeout`) or the task is already finished (`outcome_conflict`, `invalid_transition`)", body = super::openapi::ProblemBody, content_type = "application/problem+json")),
    security(("bearer" = ["controlplane:tasks"])))]
pub async fn tasks_progress(
    State(state): State<ApiState>,
    caller: Caller,
    Path(raw_id): Path<String>,
    ApiJson(body): ApiJson<ProgressBody>,
) -> ApiResult<TaskAnswer> {
    let id = task_id(&raw_id)?;
    let fence = fence(&state, &caller, &id, body.lease_id, body.agent_id).await?;
    let progress = body.progress.unwrap_or(Value::Null);
    crate::model::check_json_size("progress", &progress, crate::model::MAX_METADATA_BYTES)?;
    Ok(TaskAnswer(state.coordinator.report_progress(&id, &fence, progress).await?))
}

/// `POST /tasks/{id}/complete`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteBody {
    #[serde(default)]
    lease_id: Option<String>,
    #[serde(default)]
    agent_id: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Value>)]
    result: Option<JsonText>,
    /// How long the work took by the agent's own clock, in ms: it feeds the agent's `avg_latency_ms` (else the
    /// time from claim to completion does).
    #[serde(default)]
    latency_ms: Option<f64>,
    /// Accepted for Aragora clients; this server has no SLA policies (a task's `timeout_seconds` bounds it).
    #[serde(default)]
    #[allow(dead_code, reason = "accepted so existing clients are not refused; nothing reads it")]
    sla_policy_id: Option<String>,
    /// Take the agent's next task in the same call (BullMQ's worker pattern).
    #[serde(default)]
    claim_next: Option<ClaimNext>,
}

/// The agent's reported latency, checked: a number of ms from 0 to a day.
fn reported_latency(field: &str, latency_ms: Option<f64>) -> ApiResult<Option<f64>> {
    match latency_ms {
        Some(ms) if !(0.0..=86_400_000.0).contains(&ms) => {
            Err(ApiError::invalid(field, "must be a number of milliseconds from 0 to 86400000"))
        }
        other => Ok(other),
    }
}

/// The `claim_next` of a complete: the claim to make once the task is completed.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimNext {
    #[serde(default)]
    capabilities: Option<Vec<String>>,
    #[serde(default)]
    block_ms: Option<u64>,
    #[serde(default)]
    session_id: Option<String>,
}

/// `POST /tasks/{id}/complete {result?, claim_next?}`; no body at all completes the current attempt, unfenced.
/// With `claim_next` the answer is `{"completed": true, "task": the completed task, "next": task-or-null}`.
#[utoipa::path(post, path = "/tasks/{task_id}/complete", tag = "tasks", params(("task_id" = String, Path, description = "The task's id (`task_` + 32 hex digits)")),
    request_body(content = Option<CompleteBody>, description = "Optional: no body and no Content-Type completes the current attempt, unfenced"),
    responses(
        (status = 200, description = "Completed: the task, or with `claim_next` the task and the next one", body = CompleteAnswer),
        (status = 409, description = "The lease is no longer this attempt's (`lease_lost`, `task_cancelled`, `task_timeout`) or the task is already finished (`outcome_conflict`, `invalid_transition`)", body = super::openapi::ProblemBody, content_type = "application/problem+json")),
    security(("bearer" = ["controlplane:tasks"])))]
pub async fn tasks_complete(
    State(state): State<ApiState>,
    caller: Caller,
    Path(raw_id): Path<String>,
    ApiJson(body): ApiJson<CompleteBody>,
) -> ApiResult<Response> {
    let id = task_id(&raw_id)?;
    let fence = fence(&state, &caller, &id, body.lease_id, body.agent_id).await?;
    let result = body.result.unwrap_or_else(JsonText::null);
    crate::model::check_json_size("result", &result, crate::model::MAX_PAYLOAD_BYTES)?;
    let completion = Completion { result, latency_ms: reported_latency("latency_ms", body.latency_ms)? };
    let Some(next) = body.claim_next else {
        let done = state.coordinator.complete_task(&id, &fence, completion).await?;
        return Ok(TaskAnswer(done).into_response());
    };
    // The next task is for the agent reporting: named by the fence, else by the agent token. Only an operator's
    // token reporting under a lease claims for the task's holder; were that lease stale, the task's holder would
    // be another agent, but the completion is then refused (409) before anything is claimed.
    let agent_id = match (&fence, &caller.agent) {
        (Fence::Agent(agent), _) => agent.clone(),
        (_, Some(own)) => own.clone(),
        _ => state.coordinator.get_task(&id).await?.assigned_agent.ok_or_else(|| {
            ApiError::invalid("claim_next", "the task has no agent to claim for: send agent_id with claim_next")
        })?,
    };
    caller.acting_for(&agent_id)?;
    let claim =
        claim_request(agent_id, next.capabilities.as_deref(), next.block_ms, 1, next.session_id, "claim_next.")?;
    let (done, outcome) = state.coordinator.complete_and_claim(&id, &fence, completion, &claim).await?;
    let next = outcome.tasks.into_iter().next();
    Ok(Json(CompleteAnswer::WithNext(Box::new(CompleteAndNextAnswer { completed: true, task: done, next })))
        .into_response())
}

/// One outcome of `POST /tasks/complete`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchOutcome {
    task_id: String,
    #[serde(default)]
    lease_id: Option<String>,
    #[serde(default)]
    agent_id: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Value>)]
    result: Option<JsonText>,
    /// The agent's own latency, in ms (as in the single complete).
    #[serde(default)]
    latency_ms: Option<f64>,
}

/// `POST /tasks/complete`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteBatchRequest {
    results: Vec<BatchOutcome>,
}

/// `POST /tasks/complete {"results": [{task_id, lease_id?, agent_id?, result?}]}` → `{"completed": [tasks],
/// "conflicts": [{task_id, status, code, error}]}`: one store step, each outcome standing alone, so a stale lease
/// on one task does not undo the others. A field error or a task the caller may not report on refuses the batch.
#[utoipa::path(post, path = "/tasks/complete", tag = "tasks", request_body = CompleteBatchRequest,
    responses((status = 200, description = "What was completed and what was refused, each outcome on its own", body = BatchCompleteAnswer)),
    security(("bearer" = ["controlplane:tasks"])))]
pub async fn tasks_complete_batch(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(batch): ApiJson<CompleteBatchRequest>,
) -> ApiResult<Json<BatchCompleteAnswer>> {
    caller.require(Permission::Tasks)?;
    if batch.results.is_empty() || batch.results.len() > MAX_BATCH {
        return Err(ApiError::invalid("results", format!("must hold 1 to {MAX_BATCH} outcomes")));
    }
    let mut outcomes = Vec::with_capacity(batch.results.len());
    // Conflicts keep the request's order: (position in the request, conflict).
    let mut conflicts = Vec::new();
    for (index, outcome) in batch.results.into_iter().enumerate() {
        let result = outcome.result.unwrap_or_else(JsonText::null);
        crate::model::check_json_size(&format!("results[{index}].result"), &result, crate::model::MAX_PAYLOAD_BYTES)?;
        let latency_ms = reported_latency(&format!("results[{index}].latency_ms"), outcome.latency_ms)?;
        let Ok(id) = TaskId::parse("task_id", &outcome.task_id) else {
            let error = format!("task {} not found", outcome.task_id);
            let code = "task_not_found".to_string();
            conflicts.push((index, BatchConflict { task_id: outcome.task_id, status: 404, code, error }));
            continue;
        };
        let fence = fence(&state, &caller, &id, outcome.lease_id, outcome.agent_id).await?;
        outcomes.push((index, id, fence, Completion { result, latency_ms }));
    }
    let positions: Vec<(usize, TaskId)> = outcomes.iter().map(|(index, id, _, _)| (*index, id.clone())).collect();
    let outcomes = outcomes.into_iter().map(|(_, id, fence, result)| (id, fence, result)).collect();
    let answers = state.coordinator.complete_batch(outcomes).await?;
    let mut completed = Vec::new();
    for ((index, id), answer) in positions.into_iter().zip(answers) {
        match answer {
            Ok(task) => completed.push(task),
            Err(error) => {
                let refusal = ApiError::from(error);
                let (status, code) = (refusal.status().as_u16(), refusal.code().to_string());
                let conflict = BatchConflict { task_id: id.to_string(), status, code, error: refusal.0.detail };
                conflicts.push((index, conflict));
            }
        }
    }
    conflicts.sort_by_key(|(index, _)| *index);
    let conflicts = conflicts.into_iter().map(|(_, conflict)| conflict).collect();
    Ok(Json(BatchCompleteAnswer { completed, conflicts }))
}

/// `POST /tasks/{id}/fail`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailBody {
    #[serde(default)]
    lease_id: Option<String>,
    #[serde(default)]
    agent_id: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    requeue: Option<bool>,
    #[serde(default)]
    kind: Option<FailKind>,
    /// Accepted for Aragora clients; a failure's duration does not feed `avg_latency_ms`, which describes how
    /// long the agent takes to do the work.
    #[serde(default)]
    latency_ms: Option<f64>,
    /// Accepted for Aragora clients; this server has no SLA policies.
    #[serde(default)]
    #[allow(dead_code, reason = "accepted so existing clients are not refused; nothing reads it")]
    sla_policy_id: Option<String>,
}

/// `POST /tasks/{id}/fail {error, requeue=true, kind=task|agent}`.
#[utoipa::path(post, path = "/tasks/{task_id}/fail", tag = "tasks", params(("task_id" = String, Path, description = "The task's id (`task_` + 32 hex digits)")),
    request_body(content = Option<FailBody>, description = "`requeue` (default true) retries while retries remain; `kind: agent` counts against the agent's breaker"),
    responses((status = 200, description = "Failed, or pending again when requeued", body = Task), (status = 409, description = "The lease is no longer this attempt's (`lease_lost`, `task_cancelled`, `task_timeout`) or the task is already finished (`outcome_conflict`, `invalid_transition`)", body = super::openapi::ProblemBody, content_type = "application/problem+json")),
    security(("bearer" = ["controlplane:tasks"])))]
pub async fn tasks_fail(
    State(state): State<ApiState>,
    caller: Caller,
    Path(raw_id): Path<String>,
    ApiJson(body): ApiJson<FailBody>,
) -> ApiResult<TaskAnswer> {
    let id = task_id(&raw_id)?;
    let fence = fence(&state, &caller, &id, body.lease_id, body.agent_id).await?;
    reported_latency("latency_ms", body.latency_ms)?;
    let error = body.error.unwrap_or_else(|| "failed (no error given)".into());
    if error.len() > 16 * 1024 {
        return Err(crate::model::ValidationError::too_large("error", "over the 16384-byte limit").into());
    }
    let failure = FailRequest { error, requeue: body.requeue.unwrap_or(true), kind: body.kind.unwrap_or_default() };
    Ok(TaskAnswer(state.coordinator.fail_task(&id, &fence, &failure).await?))
}

/// 403 unless the caller submitted the task or is an admin (cancel and retry).
pub(super) async fn submitter_or_admin(state: &ApiState, caller: &Caller, id: &TaskId, action: &str) -> ApiResult<()> {
    caller.require(Permission::Tasks)?;
    caller.not_an_agent(action)?;
    let task = state.coordinator.get_task(id).await?;
    if caller.is_admin() || task.submitted_by == caller.sub {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!("only the task's submitter or an admin may {action}")))
    }
}

/// `POST /tasks/{id}/cancel` (any body or none).
#[utoipa::path(post, path = "/tasks/{task_id}/cancel", tag = "tasks", params(("task_id" = String, Path, description = "The task's id (`task_` + 32 hex digits)")),
    responses(
        (status = 200, description = "Cancelled; the holder's lease is revoked", body = Task),
        (status = 403, description = "Neither the task's submitter nor an admin", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "Already terminal (`invalid_transition`)", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["controlplane:tasks"])))]
pub async fn tasks_cancel(
    State(state): State<ApiState>,
    caller: Caller,
    Path(raw_id): Path<String>,
) -> ApiResult<TaskAnswer> {
    let id = task_id(&raw_id)?;
    submitter_or_admin(&state, &caller, &id, "cancel tasks").await?;
    Ok(TaskAnswer(state.coordinator.cancel_task(&id).await?))
}

/// `POST /tasks/{id}/retry` (any body or none).
#[utoipa::path(post, path = "/tasks/{task_id}/retry", tag = "tasks", params(("task_id" = String, Path, description = "The task's id (`task_` + 32 hex digits)")),
    responses(
        (status = 200, description = "Pending again, with a fresh retry budget", body = Task),
        (status = 403, description = "Neither the task's submitter nor an admin", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "Not failed, timed out or cancelled (`invalid_transition`)", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["controlplane:tasks"])))]
pub async fn tasks_retry(
    State(state): State<ApiState>,
    caller: Caller,
    Path(raw_id): Path<String>,
) -> ApiResult<TaskAnswer> {
    let id = task_id(&raw_id)?;
    submitter_or_admin(&state, &caller, &id, "retry tasks").await?;
    Ok(TaskAnswer(state.coordinator.retry_task(&id).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(n: u32) -> Task {
        let id = format!("task_{n:032x}");
        serde_json::from_value(serde_json::json!({
            "task_id": id, "id": id, "task_type": "code", "payload": {"n": n}, "required_capabilities": ["gpu"],
            "priority": "high", "status": "claimed", "created_at": "2026-12-06T08:00:00.000Z",
            "claimed_at": "2026-12-06T08:00:01.000Z", "started_at": null, "completed_at": null,
            "assigned_agent": "agent \"7\"", "lease_id": "0123456789abcdef0123456789abcdef", "attempt": n,
            "timeout_seconds": 300, "max_retries": 3, "retries": 0, "manual_retries": 0, "result": null,
            "error": null, "last_error": null, "metadata": {}, "strategy": null, "idempotency_key": null,
            "submitted_by": "me", "available_at": null, "progress": null
        }))
        .unwrap()
    }

    #[test]
    fn a_claim_answer_is_written_as_its_serialize_writes_it() {
        for (tasks, reason) in [
            (vec![], None),
            (vec![], Some("paused \"by\" an operator")),
            (vec![task(1)], None),
            (vec![task(1), task(2), task(3)], None),
            (vec![task(1)], Some("a reason beside a task")),
        ] {
            let answer =
                ClaimAnswer { task: tasks.first().cloned(), tasks: tasks.clone(), reason: reason.map(Into::into) };
            assert_eq!(claim_answer_json(&tasks, reason), serde_json::to_string(&answer).unwrap());
        }
    }
}
