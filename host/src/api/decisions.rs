//! The decision log over HTTP (decision 0022): `GET /tasks/{id}/decisions` — why a task went where it went, every
//! plugin decision about it in order — and `GET /decisions`, which pages through all of them by plugin, stage and
//! time. Reading takes `read`: decisions name agents and tasks, not payloads.

use axum::Json;
use axum::extract::{Path, State};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{Caller, Permission};
use super::errors::{ApiError, ApiResult};
use super::extract::{ApiQuery, query_param};
use super::tasks::task_id;
use super::{ApiState, Prefixed};
use crate::coordinator::decision_log::DecisionPage;
use crate::model::{DecisionQuery, DecisionRecord, DecisionStage, MAX_DECISION_PAGE, millis_of};

/// The decision routes, relative to the API prefix.
pub fn routes(api: Prefixed<'_>) -> Prefixed<'_> {
    api.route("/tasks/{task_id}/decisions", get(task_decisions)).route("/decisions", get(decisions_list))
}

/// `GET /tasks/{id}/decisions` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskDecisions {
    /// The task.
    pub task_id: String,
    /// Its decisions, oldest first (the newest 100 a task had).
    pub decisions: Vec<DecisionRecord>,
}

/// `GET /tasks/{id}/decisions`.
#[utoipa::path(get, path = "/tasks/{task_id}/decisions", tag = "decisions",
    params(("task_id" = String, Path, description = "The task's id")),
    responses((status = 200, description = "Every plugin decision recorded about the task, oldest first: stage, plugin, version, what it saw, what it answered, who answered (the plugin or a fallback), fuel and time. Empty when the task was not sampled (`DECISION_SAMPLE`) or its decisions are past `DECISION_RETENTION`", body = TaskDecisions)),
    security(("bearer" = ["controlplane:read"])))]
pub async fn task_decisions(
    State(state): State<ApiState>,
    caller: Caller,
    Path(raw_id): Path<String>,
) -> ApiResult<Json<TaskDecisions>> {
    caller.require(Permission::Read)?;
    let id = task_id(&raw_id)?;
    let decisions = state.coordinator.task_decisions(&id).await?;
    Ok(Json(TaskDecisions { task_id: id.to_string(), decisions }))
}

/// `GET /decisions` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionsQuery {
    plugin: Option<String>,
    stage: Option<String>,
    since: Option<String>,
    after: Option<String>,
    limit: Option<String>,
}

/// `GET /decisions`: pages through the log, oldest first.
#[utoipa::path(get, path = "/decisions", tag = "decisions",
    params(
        ("plugin" = Option<String>, Query, description = "Only this plugin's decisions"),
        ("stage" = Option<String>, Query, description = "Only this stage: submit, register, dispatch, route, select, probe"),
        ("since" = Option<String>, Query, description = "Only decisions from this time on: RFC 3339, or an age such as `90s`, `15m`, `1h`, `2d`"),
        ("after" = Option<String>, Query, description = "Go on after this id (the previous page's `next`)"),
        ("limit" = Option<usize>, Query, description = "At most this many (1 to 1,000; 100 by default)"),
    ),
    responses((status = 200, description = "Decisions, oldest first, and `next` when there may be more", body = DecisionPage)),
    security(("bearer" = ["controlplane:read"])))]
pub async fn decisions_list(
    State(state): State<ApiState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<DecisionsQuery>,
) -> ApiResult<Json<DecisionPage>> {
    caller.require(Permission::Read)?;
    let stage = match query.stage.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => None,
        Some(name) => Some(DecisionStage::parse(name).ok_or_else(|| {
            ApiError::invalid("stage", "must be one of submit, register, dispatch, route, select, probe")
        })?),
    };
    let limit = query_param::<usize>("limit", query.limit.as_deref(), "a number from 1 to 1000")?.unwrap_or(100);
    if !(1..=MAX_DECISION_PAGE).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be a number from 1 to 1000"));
    }
    let since_ms = match query.since.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => None,
        Some(text) => Some(since(text, state.coordinator.now_ms()).ok_or_else(|| {
            ApiError::invalid("since", "must be an RFC 3339 time or an age such as 90s, 15m, 1h, 2d")
        })?),
    };
    // Rebuilt from its numbers, so what reaches the store is always a well-formed id of this log.
    let after = match query.after.as_deref().map(str::trim).filter(|a| !a.is_empty()) {
        None => None,
        Some(text) => Some(
            decision_id(text)
                .ok_or_else(|| ApiError::invalid("after", "must be a decision id (`next` of a previous page)"))?,
        ),
    };
    let plugin = query.plugin.filter(|p| !p.trim().is_empty());
    let query = DecisionQuery { plugin, stage, since_ms, after, limit };
    Ok(Json(state.coordinator.decisions(&query).await?))
}

/// A decision id `<ms>-<seq>`, digits only, within the range a store gives.
fn decision_id(text: &str) -> Option<String> {
    let (ms, seq) = text.split_once('-')?;
    let digits = |part: &str| !part.is_empty() && part.len() <= 18 && part.bytes().all(|b| b.is_ascii_digit());
    if !digits(ms) || !digits(seq) {
        return None;
    }
    Some(format!("{}-{}", ms.parse::<u64>().ok()?, seq.parse::<u64>().ok()?))
}

/// A time from `since`: RFC 3339, or an age before `now_ms` (`90s`, `15m`, `1h`, `2d`).
pub fn since(text: &str, now_ms: u64) -> Option<u64> {
    if let Some(ms) = millis_of(text) {
        return Some(ms);
    }
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return None,
    };
    let age = number.parse::<u64>().ok()?.checked_mul(seconds * 1_000)?;
    Some(now_ms.saturating_sub(age))
}
