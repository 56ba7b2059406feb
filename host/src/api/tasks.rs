//! `/tasks`: submit (single, batch, idempotent), read and wait, list, claim, and the lease-fenced reports
//! (start, progress, complete, fail) plus cancel and retry. Outcomes are fenced on the body's `lease_id`, else its
//! `agent_id`, else the caller's agent token; with none of them (existing clients complete with no body) the
//! report applies to the current attempt, unfenced.

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiState;
use super::auth::{Caller, Permission};
use super::errors::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiQuery, query_param};
use crate::model::{CapabilitySet, FailKind, MAX_AGENT_CAPABILITIES, SubmitRequest, Task, TaskId, TaskStatus};
use crate::scheduler::{Claim, MAX_BLOCK};
use crate::store::{FailRequest, Fence, TaskFilter};

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
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/tasks", get(tasks_list).post(tasks_submit))
        .route("/tasks/batch", post(tasks_submit_batch))
        .route("/tasks/claim", post(tasks_claim))
        .route("/tasks/{task_id}", get(tasks_get))
        .route("/tasks/{task_id}/start", post(tasks_start))
        .route("/tasks/{task_id}/progress", post(tasks_progress))
        .route("/tasks/{task_id}/complete", post(tasks_complete))
        .route("/tasks/{task_id}/fail", post(tasks_fail))
        .route("/tasks/{task_id}/cancel", post(tasks_cancel))
        .route("/tasks/{task_id}/retry", post(tasks_retry))
}

/// A task id from the path: one that cannot exist is simply not found.
fn task_id(raw: &str) -> ApiResult<TaskId> {
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

/// `POST /tasks` → 201 `{"task_id"}`; a replay of an idempotent submit → 200 with `Idempotent-Replayed: true`.
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
    let body = Json(json!({"task_id": submitted.task_id}));
    if submitted.replayed {
        let mut response = (StatusCode::OK, body).into_response();
        response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
        return Ok(response);
    }
    Ok((StatusCode::CREATED, body).into_response())
}

/// `POST /tasks/batch`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    tasks: Vec<SubmitRequest>,
}

/// `POST /tasks/batch {"tasks": [...]}` → 201 `{"task_ids": [...]}`, all or nothing.
pub async fn tasks_submit_batch(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(batch): ApiJson<BatchRequest>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require(Permission::Tasks)?;
    caller.not_an_agent("submit tasks")?;
    if batch.tasks.is_empty() || batch.tasks.len() > MAX_BATCH {
        return Err(ApiError::invalid("tasks", format!("must hold 1 to {MAX_BATCH} tasks")));
    }
    let submitted = state.coordinator.submit_batch(batch.tasks, &caller.sub).await?;
    let ids: Vec<&TaskId> = submitted.iter().map(|s| &s.task_id).collect();
    Ok((StatusCode::CREATED, Json(json!({"task_ids": ids}))))
}

/// `GET /tasks/{id}` query.
#[derive(Debug, Deserialize)]
pub struct GetQuery {
    wait: Option<String>,
}

/// `GET /tasks/{id}[?wait=SECONDS]`: with `wait`, answers when the task is terminal or the wait (≤ 60 s) ends.
pub async fn tasks_get(
    State(state): State<ApiState>,
    caller: Caller,
    Path(raw_id): Path<String>,
    ApiQuery(query): ApiQuery<GetQuery>,
) -> ApiResult<Json<Task>> {
    caller.require(Permission::Read)?;
    let id = task_id(&raw_id)?;
    let wait = query_param::<f64>("wait", query.wait.as_deref(), "a number of seconds from 0 to 60")?.unwrap_or(0.0);
    if !(0.0..=MAX_WAIT_SECONDS).contains(&wait) {
        return Err(ApiError::invalid("wait", "must be a number of seconds from 0 to 60"));
    }
    let task = state.coordinator.get_task(&id).await?;
    held_by_caller(&caller, &task)?;
    if wait == 0.0 || task.status.is_terminal() {
        return Ok(Json(task));
    }
    Ok(Json(state.coordinator.wait_for_result(&id, Duration::from_secs_f64(wait)).await?))
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

/// `GET /tasks?status=&task_type=&agent_id=&limit=&cursor=` → `{tasks, next_cursor}`, newest first.
pub async fn tasks_list(
    State(state): State<ApiState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<Json<crate::store::TaskPage>> {
    caller.require(Permission::Read)?;
    let status: Option<TaskStatus> = match query.status.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        Some(text) => Some(text.parse()?),
        None => None,
    };
    let limit =
        query_param::<usize>("limit", query.limit.as_deref(), "a number from 1 to 1000")?.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::invalid("limit", format!("must be a number from 1 to {MAX_LIMIT}")));
    }
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
    Ok(Json(state.coordinator.list_tasks(&filter).await?))
}

/// `POST /tasks/claim`.
#[derive(Debug, Deserialize)]
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
pub async fn tasks_claim(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(body): ApiJson<ClaimBody>,
) -> ApiResult<Json<Value>> {
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
    let mut answer = json!({"task": outcome.tasks.first(), "tasks": outcome.tasks});
    if let Some(reason) = outcome.reason {
        answer["reason"] = json!(reason);
    }
    Ok(Json(answer))
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
#[derive(Debug, Default, Deserialize)]
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
        (None, None) => Ok(Fence::Unfenced),
    }
}

/// `POST /tasks/{id}/start`.
pub async fn tasks_start(
    State(state): State<ApiState>,
    caller: Caller,
    Path(raw_id): Path<String>,
    ApiJson(body): ApiJson<FenceBody>,
) -> ApiResult<Json<Task>> {
    let id = task_id(&raw_id)?;
    let fence = fence(&state, &caller, &id, body.lease_id, body.agent_id).await?;
    Ok(Json(state.coordinator.start_task(&id, &fence).await?))
}

/// `POST /tasks/{id}/progress`.
#[derive(Debug, Default, Deserialize)]
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
pub async fn tasks_progress(
    State(state): State<ApiState>,
    caller: Caller,
    Path(raw_id): Path<String>,
    ApiJson(body): ApiJson<ProgressBody>,
) -> ApiResult<Json<Task>> {
    let id = task_id(&raw_id)?;
    let fence = fence(&state, &caller, &id, body.lease_id, body.agent_id).await?;
    let progress = body.progress.unwrap_or(Value::Null);
    crate::model::check_json_size("progress", &progress, crate::model::MAX_METADATA_BYTES)?;
    Ok(Json(state.coordinator.report_progress(&id, &fence, progress).await?))
}

/// `POST /tasks/{id}/complete`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompleteBody {
    #[serde(default)]
    lease_id: Option<String>,
    #[serde(default)]
    agent_id: Option<String>,
    #[serde(default)]
    result: Option<Value>,
    /// Take the agent's next task in the same call (BullMQ's worker pattern).
    #[serde(default)]
    claim_next: Option<ClaimNext>,
}

/// The `claim_next` of a complete: the claim to make once the task is completed.
#[derive(Debug, Default, Deserialize)]
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
pub async fn tasks_complete(
    State(state): State<ApiState>,
    caller: Caller,
    Path(raw_id): Path<String>,
    ApiJson(body): ApiJson<CompleteBody>,
) -> ApiResult<Json<Value>> {
    let id = task_id(&raw_id)?;
    let fence = fence(&state, &caller, &id, body.lease_id, body.agent_id).await?;
    let result = body.result.unwrap_or(Value::Null);
    crate::model::check_json_size("result", &result, crate::model::MAX_PAYLOAD_BYTES)?;
    let Some(next) = body.claim_next else {
        return Ok(Json(json!(state.coordinator.complete_task(&id, &fence, result).await?)));
    };
    let agent_id = match &fence {
        Fence::Agent(agent) => agent.clone(),
        _ => state.coordinator.get_task(&id).await?.assigned_agent.ok_or_else(|| {
            ApiError::invalid("claim_next", "the task has no agent to claim for: send agent_id with claim_next")
        })?,
    };
    caller.acting_for(&agent_id)?;
    let claim =
        claim_request(agent_id, next.capabilities.as_deref(), next.block_ms, 1, next.session_id, "claim_next.")?;
    let (done, outcome) = state.coordinator.complete_and_claim(&id, &fence, result, &claim).await?;
    Ok(Json(json!({"completed": true, "task": done, "next": outcome.tasks.first()})))
}

/// `POST /tasks/{id}/fail`.
#[derive(Debug, Default, Deserialize)]
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
}

/// `POST /tasks/{id}/fail {error, requeue=true, kind=task|agent}`.
pub async fn tasks_fail(
    State(state): State<ApiState>,
    caller: Caller,
    Path(raw_id): Path<String>,
    ApiJson(body): ApiJson<FailBody>,
) -> ApiResult<Json<Task>> {
    let id = task_id(&raw_id)?;
    let fence = fence(&state, &caller, &id, body.lease_id, body.agent_id).await?;
    let error = body.error.unwrap_or_else(|| "failed (no error given)".into());
    if error.len() > 16 * 1024 {
        return Err(crate::model::ValidationError::too_large("error", "over the 16384-byte limit").into());
    }
    let failure = FailRequest { error, requeue: body.requeue.unwrap_or(true), kind: body.kind.unwrap_or_default() };
    Ok(Json(state.coordinator.fail_task(&id, &fence, &failure).await?))
}

/// 403 unless the caller submitted the task or is an admin (cancel and retry).
async fn submitter_or_admin(state: &ApiState, caller: &Caller, id: &TaskId, action: &str) -> ApiResult<()> {
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
pub async fn tasks_cancel(
    State(state): State<ApiState>,
    caller: Caller,
    Path(raw_id): Path<String>,
) -> ApiResult<Json<Task>> {
    let id = task_id(&raw_id)?;
    submitter_or_admin(&state, &caller, &id, "cancel tasks").await?;
    Ok(Json(state.coordinator.cancel_task(&id).await?))
}

/// `POST /tasks/{id}/retry` (any body or none).
pub async fn tasks_retry(
    State(state): State<ApiState>,
    caller: Caller,
    Path(raw_id): Path<String>,
) -> ApiResult<Json<Task>> {
    let id = task_id(&raw_id)?;
    submitter_or_admin(&state, &caller, &id, "retry tasks").await?;
    Ok(Json(state.coordinator.retry_task(&id).await?))
}
