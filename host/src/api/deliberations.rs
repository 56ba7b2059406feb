//! `/deliberations`: vetted decisions (DESIGN §10). A request becomes a `deliberation` task, for a deliberation
//! worker or (`mode: orchestrated`) for the servers' orchestrator, which runs the rounds
//! (`coordinator::deliberations`). `async` answers 202 at once, the default waits for the decision (up to
//! `timeout_seconds`, at most `DELIBERATION_MAX_WAIT`) and answers 200, or 408 with the request id to poll. Sessions are read from
//! their task (`model::deliberation`). Permission `controlplane:tasks`.

use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::audit::AuditResource;
use super::auth::{Caller, Permission};
use super::errors::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiQuery, page_limit};
use super::{ApiState, Prefixed};
use crate::model::{
    DELIBERATION_TASK_TYPE, DeliberationMode, DeliberationRequest, Task, TaskFilter, TaskStatus, deliberation_status,
    deliberation_transcript, deliberation_view, request_id_of, task_id_of,
};

/// The routes, relative to the API prefix.
pub fn routes(api: Prefixed<'_>) -> Prefixed<'_> {
    api.route("/deliberations", get(deliberations_list).post(deliberations_create))
        .route("/deliberations/{request_id}", get(deliberations_get))
        .route("/deliberations/{request_id}/status", get(deliberations_status))
        .route("/deliberations/{request_id}/transcript", get(deliberations_transcript))
}

/// `POST /deliberations` answer in the queued mode.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliberationQueued {
    /// The task that carries it.
    pub task_id: String,
    /// `req_` + the task id's 32 hex digits.
    pub request_id: String,
    /// `queued`.
    pub status: &'static str,
}

/// `POST /deliberations {content, decision_type, async | mode, priority, required_capabilities, timeout_seconds,
/// metadata, context, config}`; orchestrated also `{agents, rounds, decide, strategy, judge_capabilities,
/// round_timeout_seconds}`.
#[utoipa::path(post, path = "/deliberations", tag = "deliberations", request_body = DeliberationRequest,
    responses(
        (status = 202, description = "Queued (`async: true` or `mode: async`)", body = DeliberationQueued),
        (status = 200, description = "The decision (synchronous mode: a worker completed it in time)", body = Object),
        (status = 400, description = "A bad field (named)", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
        (status = 408, description = "No decision within `timeout_seconds` (`deliberation_timeout`, with `request_id`); the session reads `timeout`", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "Orchestrated: fewer agents able to work than `agents` (`not_enough_agents`)", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["controlplane:tasks"])))]
pub async fn deliberations_create(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(request): ApiJson<DeliberationRequest>,
) -> ApiResult<Response> {
    caller.require(Permission::Tasks)?;
    caller.not_an_agent("start deliberations")?;
    let mode = request.mode()?;
    let most = state.coordinator.config().deliberation_max_wait;
    let wait_seconds = u64::from(request.timeout_seconds.unwrap_or(300)).min(most.as_secs().max(1));
    let (task_id, waits) = if mode == DeliberationMode::Orchestrated {
        let waits = request.is_async != Some(true);
        let (task, plan) = request.into_session(waits)?;
        (state.coordinator.start_deliberation(task, &plan, &caller.sub).await?.task_id, waits)
    } else {
        let task = request.into_task(mode)?;
        (state.coordinator.submit_task(task, &caller.sub).await?.task_id, mode == DeliberationMode::Sync)
    };
    let request_id = request_id_of(&task_id);
    let made = Extension(AuditResource(format!("deliberation:{request_id}")));
    if !waits {
        let body = DeliberationQueued { task_id: task_id.to_string(), request_id, status: "queued" };
        return Ok((StatusCode::ACCEPTED, made, Json(body)).into_response());
    }
    let wait = Duration::from_secs(wait_seconds);
    let task = state.coordinator.wait_for_result(&task_id, wait).await?;
    if task.status.is_terminal() && deliberation_status(&task) != "timeout" {
        return Ok((StatusCode::OK, made, Json(deliberation_view(&task))).into_response());
    }
    // The caller stops waiting: a late decision would reach nobody, so the work is withdrawn.
    let _ = state.coordinator.cancel_task(&task_id).await;
    let mut timeout = ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "deliberation_timeout",
        format!("no decision within {} s; GET /deliberations/{request_id} reads the session", wait.as_secs()),
    );
    timeout.0.extra.insert("request_id".into(), Value::String(request_id.clone()));
    timeout.0.extra.insert("task_id".into(), Value::String(task_id.to_string()));
    Ok((made, timeout).into_response())
}

/// The deliberation task behind `id`; 404 for a task of another type.
async fn session(state: &ApiState, id: &str) -> ApiResult<Task> {
    let task_id = task_id_of(id)?;
    let not_found = || ApiError::not_found("deliberation_not_found", format!("deliberation {id} not found"));
    match state.coordinator.get_task(&task_id).await {
        Ok(task) if task.task_type == DELIBERATION_TASK_TYPE => Ok(task),
        Ok(_) => Err(not_found()),
        Err(crate::scheduler::EngineError::Store(crate::model::StoreError::TaskNotFound(_))) => Err(not_found()),
        Err(error) => Err(error.into()),
    }
}

/// `GET /deliberations/{id}` → the session: status, and the decision once there is one.
#[utoipa::path(get, path = "/deliberations/{request_id}", tag = "deliberations",
    params(("request_id" = String, Path, description = "`req_…` (or the task id)")),
    responses(
        (status = 200, description = "The session", body = Object),
        (status = 404, description = "No such deliberation (`deliberation_not_found`)", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["controlplane:tasks"])))]
pub async fn deliberations_get(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require(Permission::Tasks)?;
    Ok(Json(deliberation_view(&session(&state, &id).await?)))
}

/// `GET /deliberations/{id}/status` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliberationStatus {
    /// `req_…`.
    pub request_id: String,
    /// The task.
    pub task_id: String,
    /// `queued`, `running`, `completed`, `failed` or `timeout`.
    pub status: &'static str,
    /// Whether it ended.
    pub done: bool,
    /// The worker holding it.
    pub agent_id: Option<String>,
    /// When it was requested.
    pub created_at: String,
    /// When it ended.
    pub completed_at: Option<String>,
}

/// `GET /deliberations/{id}/status` → where the session stands (for polling).
#[utoipa::path(get, path = "/deliberations/{request_id}/status", tag = "deliberations",
    params(("request_id" = String, Path, description = "`req_…` (or the task id)")),
    responses(
        (status = 200, description = "Where it stands", body = DeliberationStatus),
        (status = 404, description = "No such deliberation", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["controlplane:tasks"])))]
pub async fn deliberations_status(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<DeliberationStatus>> {
    caller.require(Permission::Tasks)?;
    let task = session(&state, &id).await?;
    Ok(Json(DeliberationStatus {
        request_id: request_id_of(&task.task_id),
        task_id: task.task_id.to_string(),
        status: deliberation_status(&task),
        done: task.status.is_terminal(),
        agent_id: task.assigned_agent.clone(),
        created_at: task.created_at.clone(),
        completed_at: task.completed_at.clone(),
    }))
}

/// `GET /deliberations/{id}/transcript` → every round's contributions in order.
#[utoipa::path(get, path = "/deliberations/{request_id}/transcript", tag = "deliberations",
    params(("request_id" = String, Path, description = "`req_…` (or the task id)")),
    responses(
        (status = 200, description = "The rounds", body = Object),
        (status = 404, description = "No such deliberation", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["controlplane:tasks"])))]
pub async fn deliberations_transcript(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require(Permission::Tasks)?;
    Ok(Json(deliberation_transcript(&session(&state, &id).await?)))
}

/// `GET /deliberations` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliberationQuery {
    status: Option<String>,
    limit: Option<String>,
}

/// `GET /deliberations` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliberationList {
    /// Sessions, newest first.
    #[schema(value_type = Vec<Object>)]
    pub deliberations: Vec<Value>,
    /// How many are listed.
    pub total: usize,
}

/// `GET /deliberations?status=&limit=` → sessions, newest first (of one session status when given).
#[utoipa::path(get, path = "/deliberations", tag = "deliberations",
    params(
        ("status" = Option<String>, Query, description = "`queued`, `running`, `completed`, `failed` or `timeout`"),
        ("limit" = Option<usize>, Query, description = "At most this many (1 to 1000, default 100)"),
    ),
    responses(
        (status = 200, description = "Sessions", body = DeliberationList),
        (status = 400, description = "An unknown status or a bad limit", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["controlplane:tasks"])))]
pub async fn deliberations_list(
    State(state): State<ApiState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<DeliberationQuery>,
) -> ApiResult<Json<DeliberationList>> {
    caller.require(Permission::Tasks)?;
    let wanted = query.status.as_deref().map(str::trim).filter(|s| !s.is_empty());
    if let Some(status) = wanted
        && !["queued", "running", "completed", "failed", "timeout"].contains(&status)
    {
        return Err(ApiError::invalid("status", "must be queued, running, completed, failed or timeout"));
    }
    let limit = page_limit(query.limit.as_deref(), 100, 1_000)?;
    // The task statuses a deliberation status can come from (`deliberation_status`), each read through the store's
    // status index: asking for running sessions never pages through the finished ones.
    let statuses: &[Option<TaskStatus>] = match wanted {
        None => &[None],
        Some("queued") => &[Some(TaskStatus::Pending)],
        Some("running") => &[Some(TaskStatus::Claimed), Some(TaskStatus::Running)],
        Some("completed") => &[Some(TaskStatus::Completed)],
        Some("failed") => &[Some(TaskStatus::Failed), Some(TaskStatus::Cancelled)],
        _ => &[Some(TaskStatus::Failed), Some(TaskStatus::Timeout), Some(TaskStatus::Cancelled)],
    };
    let mut found = Vec::new();
    for &status in statuses {
        let mut taken = 0;
        let mut cursor = None;
        // Newest first through the deliberation tasks of this status, a page at a time, until `limit` match.
        loop {
            let filter = TaskFilter {
                status,
                task_type: Some(DELIBERATION_TASK_TYPE.to_string()),
                limit: 500,
                cursor: cursor.take(),
                ..TaskFilter::default()
            };
            let page = state.coordinator.list_tasks(&filter).await?;
            for task in page.tasks {
                if taken < limit && wanted.is_none_or(|wanted| wanted == deliberation_status(&task)) {
                    found.push(task);
                    taken += 1;
                }
            }
            match page.next_cursor {
                Some(next) if taken < limit => cursor = Some(next),
                _ => break,
            }
        }
    }
    if statuses.len() > 1 {
        // Times are RFC 3339 in one format (UTC, milliseconds), so their text sorts as the times do.
        found.sort_by(|a, b| b.created_at.cmp(&a.created_at));
        found.truncate(limit);
    }
    let deliberations: Vec<Value> = found.iter().map(deliberation_view).collect();
    Ok(Json(DeliberationList { total: deliberations.len(), deliberations }))
}
