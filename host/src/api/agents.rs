//! `/agents`: registration, heartbeats, pause/resume, selection. An agent token (`sub = agent:<id>`) may register,
//! heartbeat, read and unregister only itself.

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiState;
use super::auth::{Caller, Permission};
use super::errors::ApiResult;
use super::extract::{ApiJson, ApiQuery, query_param};
use crate::model::{Agent, CapabilitySet, HeartbeatRequest, MAX_TASK_CAPABILITIES, RegisterRequest};
use crate::store::AgentFilter;

/// The agent routes, relative to the API prefix.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/agents", get(agents_list).post(agents_register))
        .route("/agents/select", post(agents_select))
        .route("/agents/{agent_id}", get(agents_get).delete(agents_unregister))
        .route("/agents/{agent_id}/heartbeat", post(agents_heartbeat))
        .route("/agents/{agent_id}/pause", post(agents_pause))
        .route("/agents/{agent_id}/resume", post(agents_resume))
}

/// `GET /agents` filters.
#[derive(Debug, Deserialize)]
pub struct AgentsQuery {
    capability: Option<String>,
    available: Option<String>,
}

/// `GET /agents?capability=&available=`.
pub async fn agents_list(
    State(state): State<ApiState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<AgentsQuery>,
) -> ApiResult<Json<Value>> {
    caller.require(Permission::Read)?;
    caller.not_an_agent("list agents")?;
    let capability = match query.capability.as_deref().map(str::trim).filter(|c| !c.is_empty()) {
        Some(raw) => Some(crate::model::normalize_capability("capability", raw)?),
        None => None,
    };
    let available = query_param::<bool>("available", query.available.as_deref(), "true or false")?;
    let agents = state.coordinator.list_agents(&AgentFilter { capability, available }).await?;
    Ok(Json(json!({"agents": agents, "count": agents.len()})))
}

/// `POST /agents` → 201 with the agent (its `session_id` included).
pub async fn agents_register(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(request): ApiJson<RegisterRequest>,
) -> ApiResult<(StatusCode, Json<Agent>)> {
    caller.require(Permission::Agents)?;
    caller.acting_for(&request.agent_id)?;
    caller.may_register(&request.capabilities)?;
    let registered = state.coordinator.register_agent(request).await?;
    Ok((StatusCode::CREATED, Json(registered.agent)))
}

/// `GET /agents/{id}`.
pub async fn agents_get(
    State(state): State<ApiState>,
    caller: Caller,
    Path(agent_id): Path<String>,
) -> ApiResult<Json<Agent>> {
    caller.require(Permission::Read)?;
    caller.acting_for(&agent_id)?;
    Ok(Json(state.coordinator.get_agent(&agent_id).await?))
}

/// `DELETE /agents/{id}`: its work is requeued.
pub async fn agents_unregister(
    State(state): State<ApiState>,
    caller: Caller,
    Path(agent_id): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require(Permission::Agents)?;
    caller.acting_for(&agent_id)?;
    state.coordinator.unregister_agent(&agent_id).await?;
    Ok(Json(json!({"agent_id": agent_id, "unregistered": true})))
}

/// `POST /agents/{id}/heartbeat` (body optional) → `{status, revoked, heartbeat_interval}`.
pub async fn agents_heartbeat(
    State(state): State<ApiState>,
    caller: Caller,
    Path(agent_id): Path<String>,
    ApiJson(heartbeat): ApiJson<HeartbeatRequest>,
) -> ApiResult<Json<Value>> {
    caller.require(Permission::Agents)?;
    caller.acting_for(&agent_id)?;
    let outcome = state.coordinator.heartbeat(&agent_id, heartbeat).await?;
    Ok(Json(json!({
        "status": outcome.status,
        "revoked": outcome.revoked,
        "heartbeat_interval": state.coordinator.config().heartbeat_interval.as_secs_f64(),
    })))
}

/// `POST /agents/{id}/pause`.
pub async fn agents_pause(
    State(state): State<ApiState>,
    caller: Caller,
    Path(agent_id): Path<String>,
) -> ApiResult<Json<Agent>> {
    caller.require(Permission::Agents)?;
    caller.not_an_agent("pause agents")?;
    Ok(Json(state.coordinator.pause_agent(&agent_id).await?))
}

/// `POST /agents/{id}/resume`.
pub async fn agents_resume(
    State(state): State<ApiState>,
    caller: Caller,
    Path(agent_id): Path<String>,
) -> ApiResult<Json<Agent>> {
    caller.require(Permission::Agents)?;
    caller.not_an_agent("resume agents")?;
    Ok(Json(state.coordinator.resume_agent(&agent_id).await?))
}

/// `POST /agents/select`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectRequest {
    /// Capabilities the agent must hold.
    #[serde(default)]
    capabilities: Vec<String>,
    /// Strategy plugin (default `DEFAULT_STRATEGY`).
    #[serde(default)]
    strategy: Option<String>,
    /// Agents not to choose.
    #[serde(default)]
    exclude: Vec<String>,
    /// Choose without counting it as an assignment.
    #[serde(default)]
    dry_run: bool,
}

/// `POST /agents/select {capabilities, strategy, exclude, dry_run?}` → the choice, `agent_id: null` when none fits.
pub async fn agents_select(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(request): ApiJson<SelectRequest>,
) -> ApiResult<Json<Value>> {
    caller.require(Permission::Agents)?;
    caller.not_an_agent("select agents")?;
    let capabilities = CapabilitySet::parse("capabilities", &request.capabilities, MAX_TASK_CAPABILITIES)?;
    let selection = state
        .coordinator
        .select_agent(&capabilities, request.strategy.as_deref(), &request.exclude, request.dry_run)
        .await?;
    Ok(Json(match selection {
        Some(selection) => json!(selection),
        None => json!({"agent_id": null}),
    }))
}
