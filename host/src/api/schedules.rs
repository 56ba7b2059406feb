//! `/schedules`: recurring tasks, fired once per tick across the fleet (`scheduler::schedules`). Thin handlers:
//! permissions here, everything else in the scheduler.

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::Serialize;
use utoipa::ToSchema;

use super::audit::AuditResource;
use super::auth::{Caller, Permission};
use super::errors::{ApiError, ApiResult};
use super::extract::ApiJson;
use super::{ApiState, Prefixed};
use crate::model::{Schedule, ScheduleChange, ScheduleSpec};

/// The routes, relative to the API prefix.
pub fn routes(api: Prefixed<'_>) -> Prefixed<'_> {
    api.route("/schedules", get(schedules_list).post(schedules_create))
        .route(
            "/schedules/{schedule_id}",
            get(schedules_get).patch(schedules_update).put(schedules_update).delete(schedules_delete),
        )
        .route("/schedules/{schedule_id}/pause", post(schedules_pause))
        .route("/schedules/{schedule_id}/resume", post(schedules_resume))
}

/// `GET /schedules` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleList {
    /// Every schedule, by id.
    pub schedules: Vec<Schedule>,
    /// How many.
    pub total: usize,
}

/// `DELETE /schedules/{id}` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleDeleted {
    /// Always true.
    pub deleted: bool,
    /// The schedule's id.
    pub schedule_id: String,
}

/// 403 unless the caller made the schedule or is an admin; a missing schedule is 404 either way.
async fn owner_or_admin(state: &ApiState, caller: &Caller, id: &str) -> ApiResult<()> {
    caller.require(Permission::Tasks)?;
    caller.not_an_agent("change schedules")?;
    let schedule = state.coordinator.get_schedule(id).await?;
    if caller.is_admin() || schedule.created_by == caller.sub {
        Ok(())
    } else {
        Err(ApiError::forbidden("only the schedule's creator or an admin may change it"))
    }
}

/// `GET /schedules` → every schedule with its next and last run.
#[utoipa::path(get, path = "/schedules", tag = "tasks",
    responses((status = 200, description = "Every schedule", body = ScheduleList)),
    security(("bearer" = ["controlplane:read"])))]
pub async fn schedules_list(State(state): State<ApiState>, caller: Caller) -> ApiResult<Json<ScheduleList>> {
    caller.require(Permission::Read)?;
    let schedules = state.coordinator.list_schedules().await?;
    Ok(Json(ScheduleList { total: schedules.len(), schedules }))
}

/// `POST /schedules {name, cron | interval_seconds, timezone, task, catch_up, paused}` → 201 with the schedule.
#[utoipa::path(post, path = "/schedules", tag = "tasks", request_body = ScheduleSpec,
    responses(
        (status = 201, description = "Created; `next_run_at` is its first tick", body = Schedule),
        (status = 400, description = "A bad cron expression, interval, time zone or task template (the field is named)", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The store keeps 10,000 schedules already (`too_many_schedules`)", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["controlplane:tasks"])))]
pub async fn schedules_create(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(spec): ApiJson<ScheduleSpec>,
) -> ApiResult<(StatusCode, Extension<AuditResource>, Json<Schedule>)> {
    caller.require(Permission::Tasks)?;
    caller.not_an_agent("create schedules")?;
    let schedule = state.coordinator.create_schedule(spec, &caller.sub).await?;
    Ok((StatusCode::CREATED, Extension(AuditResource(format!("schedule:{}", schedule.schedule_id))), Json(schedule)))
}

/// `GET /schedules/{id}`.
#[utoipa::path(get, path = "/schedules/{schedule_id}", tag = "tasks",
    params(("schedule_id" = String, Path, description = "The schedule's id (`sched_` + 32 hex digits)")),
    responses(
        (status = 200, description = "The schedule", body = Schedule),
        (status = 404, description = "No such schedule (`schedule_not_found`)", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["controlplane:read"])))]
pub async fn schedules_get(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Schedule>> {
    caller.require(Permission::Read)?;
    Ok(Json(state.coordinator.get_schedule(&id).await?))
}

/// `PATCH` (or `PUT`, which `aragora-sdk` sends) `/schedules/{id}` with the fields to change. Setting `cron`
/// clears `interval_seconds` and the reverse; a change of timing, or `paused`, moves the next tick.
#[utoipa::path(patch, path = "/schedules/{schedule_id}", tag = "tasks",
    params(("schedule_id" = String, Path, description = "The schedule's id")),
    request_body = ScheduleChange,
    responses(
        (status = 200, description = "Changed", body = Schedule),
        (status = 400, description = "The changed schedule is invalid (the field is named)", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Neither its creator nor an admin", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such schedule", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["controlplane:tasks"])))]
pub async fn schedules_update(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(change): ApiJson<ScheduleChange>,
) -> ApiResult<Json<Schedule>> {
    owner_or_admin(&state, &caller, &id).await?;
    Ok(Json(state.coordinator.change_schedule(&id, change).await?))
}

/// `POST /schedules/{id}/pause`: fires nothing until resumed.
#[utoipa::path(post, path = "/schedules/{schedule_id}/pause", tag = "tasks",
    params(("schedule_id" = String, Path, description = "The schedule's id")),
    responses((status = 200, description = "Paused", body = Schedule)),
    security(("bearer" = ["controlplane:tasks"])))]
pub async fn schedules_pause(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Schedule>> {
    owner_or_admin(&state, &caller, &id).await?;
    let change = ScheduleChange { paused: Some(true), ..ScheduleChange::default() };
    Ok(Json(state.coordinator.change_schedule(&id, change).await?))
}

/// `POST /schedules/{id}/resume`: fires again from its next future tick (what was missed meanwhile is not fired).
#[utoipa::path(post, path = "/schedules/{schedule_id}/resume", tag = "tasks",
    params(("schedule_id" = String, Path, description = "The schedule's id")),
    responses((status = 200, description = "Resumed", body = Schedule)),
    security(("bearer" = ["controlplane:tasks"])))]
pub async fn schedules_resume(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Schedule>> {
    owner_or_admin(&state, &caller, &id).await?;
    let change = ScheduleChange { paused: Some(false), ..ScheduleChange::default() };
    Ok(Json(state.coordinator.change_schedule(&id, change).await?))
}

/// `DELETE /schedules/{id}`: no more ticks; the tasks it made stay.
#[utoipa::path(delete, path = "/schedules/{schedule_id}", tag = "tasks",
    params(("schedule_id" = String, Path, description = "The schedule's id")),
    responses(
        (status = 200, description = "Deleted", body = ScheduleDeleted),
        (status = 404, description = "No such schedule", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["controlplane:tasks"])))]
pub async fn schedules_delete(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<ScheduleDeleted>> {
    owner_or_admin(&state, &caller, &id).await?;
    state.coordinator.delete_schedule(&id).await?;
    Ok(Json(ScheduleDeleted { deleted: true, schedule_id: id }))
}
