//! `/health`, `/health/{agent_id}`, `/stats` and `/policies/violations`: read-only views of the fleet.

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiState;
use super::auth::{Caller, Permission};
use super::errors::{ApiError, ApiResult};
use super::extract::{ApiQuery, query_param};
use crate::coordinator::{Stats, SystemHealth};
use crate::store::AgentHealth;

/// Violations listed at most per request.
pub const MAX_VIOLATIONS: usize = 1000;

/// The health routes, relative to the API prefix.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/health", get(health_system))
        .route("/health/{agent_id}", get(health_agent))
        .route("/stats", get(stats_get))
        .route("/policies/violations", get(violations_list))
}

/// `GET /health` → `{"status", "agents": {id: …}}`.
pub async fn health_system(State(state): State<ApiState>, caller: Caller) -> ApiResult<Json<SystemHealth>> {
    caller.require(Permission::Read)?;
    caller.not_an_agent("read the fleet's health")?;
    Ok(Json(state.coordinator.get_system_health().await?))
}

/// `GET /health/{agent_id}`.
pub async fn health_agent(
    State(state): State<ApiState>,
    caller: Caller,
    Path(agent_id): Path<String>,
) -> ApiResult<Json<AgentHealth>> {
    caller.require(Permission::Read)?;
    caller.acting_for(&agent_id)?;
    Ok(Json(state.coordinator.get_agent_health(&agent_id).await?))
}

/// `GET /stats`: the guide's sections.
pub async fn stats_get(State(state): State<ApiState>, caller: Caller) -> ApiResult<Json<Stats>> {
    caller.require(Permission::Read)?;
    caller.not_an_agent("read the stats")?;
    Ok(Json(state.coordinator.get_stats().await?))
}

/// `GET /policies/violations` query.
#[derive(Debug, Deserialize)]
pub struct ViolationsQuery {
    limit: Option<String>,
}

/// `GET /policies/violations?limit=` → `{"violations": [...]}`, newest first.
pub async fn violations_list(
    State(state): State<ApiState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ViolationsQuery>,
) -> ApiResult<Json<Value>> {
    caller.require(Permission::Read)?;
    caller.not_an_agent("read policy violations")?;
    let limit = query_param::<usize>("limit", query.limit.as_deref(), "a number from 1 to 1000")?.unwrap_or(100);
    if !(1..=MAX_VIOLATIONS).contains(&limit) {
        return Err(ApiError::invalid("limit", format!("must be a number from 1 to {MAX_VIOLATIONS}")));
    }
    Ok(Json(json!({"violations": state.coordinator.violations(limit)})))
}
