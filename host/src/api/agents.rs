//! `/agents`: registration, heartbeats, pause/resume, selection. An agent token (`sub = agent:<id>`) may register,
//! heartbeat, read and unregister only itself.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::audit::AuditResource;
use super::auth::{Caller, Permission};
use super::errors::ApiResult;
use super::extract::{ApiJson, ApiQuery, IdPaging, page_by_id, query_param};
use super::{ApiState, Prefixed};
use crate::model::{Agent, AgentStatus, CapabilitySet, HeartbeatRequest, MAX_TASK_CAPABILITIES, RegisterRequest};
use crate::model::{AgentFilter, Revoked};
use crate::scheduler::routing::AgentSelection;

/// The agent routes, relative to the API prefix.
pub fn routes(api: Prefixed<'_>) -> Prefixed<'_> {
    api.route("/agents", get(agents_list).post(agents_register))
        .route("/agents/select", post(agents_select))
        .route("/agents/{agent_id}", get(agents_get).delete(agents_unregister))
        .route("/agents/{agent_id}/heartbeat", post(agents_heartbeat))
        .route("/agents/{agent_id}/pause", post(agents_pause))
        .route("/agents/{agent_id}/resume", post(agents_resume))
}

/// `GET /agents` filters and paging.
#[derive(Debug, Deserialize)]
pub struct AgentsQuery {
    capability: Option<String>,
    available: Option<String>,
    #[serde(flatten)]
    paging: IdPaging,
}

/// `GET /agents` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentList {
    /// The agents that match.
    pub agents: Vec<Agent>,
    /// How many.
    pub count: usize,
    /// How many match, on every page (the name Aragora's clients read).
    pub total: usize,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `GET /agents?capability=&available=&limit=&cursor=`, by agent id.
#[utoipa::path(get, path = "/agents", tag = "agents",
    params(
        ("capability" = Option<String>, Query, description = "Only agents holding this capability"),
        ("available" = Option<bool>, Query, description = "Only agents that may take work now (true) or may not (false)"),
        ("limit" = Option<usize>, Query, description = "Agents per page: 1 to 10000, default 1000"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page (the last agent id it held)"),
    ),
    responses((status = 200, description = "One page of the agents, by agent id; `total` counts every match", body = AgentList)),
    security(("bearer" = ["controlplane:read"])))]
pub async fn agents_list(
    State(state): State<ApiState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<AgentsQuery>,
) -> ApiResult<Json<AgentList>> {
    caller.require(Permission::Read)?;
    caller.not_an_agent("list agents")?;
    let capability = match query.capability.as_deref().map(str::trim).filter(|c| !c.is_empty()) {
        Some(raw) => Some(crate::model::normalize_capability("capability", raw)?),
        None => None,
    };
    let available = query_param::<bool>("available", query.available.as_deref(), "true or false")?;
    let mut agents = state.coordinator.list_agents(&AgentFilter { capability, available }).await?;
    agents.sort_unstable_by(|a, b| a.agent_id.cmp(&b.agent_id));
    let total = agents.len();
    let (page, next_cursor) = page_by_id(agents, |a| &a.agent_id, &query.paging)?;
    Ok(Json(AgentList { count: page.len(), total, agents: page, next_cursor }))
}

/// `POST /agents` → 201 with the agent (its `session_id` included).
#[utoipa::path(post, path = "/agents", tag = "agents", request_body = RegisterRequest,
    responses(
        (status = 201, description = "Registered; keep the `session_id` for claims. Registering again with a new session revokes the old session's leases (DESIGN §4)", body = Agent),
        (status = 403, description = "A registration policy denied it (`policy_denied`), or an agent token registers another agent or capabilities outside its `caps`", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["controlplane:agents"])))]
pub async fn agents_register(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(request): ApiJson<RegisterRequest>,
) -> ApiResult<(StatusCode, Extension<AuditResource>, Json<Agent>)> {
    caller.require(Permission::Agents)?;
    caller.acting_for(&request.agent_id)?;
    caller.may_register(&request.capabilities)?;
    let registered = state.coordinator.register_agent(request).await?;
    let made = Extension(AuditResource(format!("agent:{}", registered.agent.agent_id)));
    Ok((StatusCode::CREATED, made, Json(registered.agent)))
}

/// `GET /agents/{id}`.
#[utoipa::path(get, path = "/agents/{agent_id}", tag = "agents", params(("agent_id" = String, Path, description = "The agent's id")),
    responses((status = 200, description = "The agent", body = Agent)),
    security(("bearer" = ["controlplane:read"])))]
pub async fn agents_get(
    State(state): State<ApiState>,
    caller: Caller,
    Path(agent_id): Path<String>,
) -> ApiResult<Json<Agent>> {
    caller.require(Permission::Read)?;
    caller.acting_for(&agent_id)?;
    Ok(Json(state.coordinator.get_agent(&agent_id).await?))
}

/// `DELETE /agents/{id}` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Unregistered {
    /// The agent.
    pub agent_id: String,
    /// Always true.
    pub unregistered: bool,
}

/// `DELETE /agents/{id}`: its work is requeued.
#[utoipa::path(delete, path = "/agents/{agent_id}", tag = "agents", params(("agent_id" = String, Path, description = "The agent's id")),
    responses((status = 200, description = "Unregistered; the tasks it held are requeued", body = Unregistered)),
    security(("bearer" = ["controlplane:agents"])))]
pub async fn agents_unregister(
    State(state): State<ApiState>,
    caller: Caller,
    Path(agent_id): Path<String>,
) -> ApiResult<Json<Unregistered>> {
    caller.require(Permission::Agents)?;
    caller.acting_for(&agent_id)?;
    state.coordinator.unregister_agent(&agent_id).await?;
    Ok(Json(Unregistered { agent_id, unregistered: true }))
}

/// `POST /agents/{id}/heartbeat` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct HeartbeatAnswer {
    /// The agent's status now.
    pub status: AgentStatus,
    /// Leases the agent lost since its last heartbeat: stop working on these tasks.
    pub revoked: Vec<Revoked>,
    /// Seconds until the next heartbeat is due.
    pub heartbeat_interval: f64,
}

/// `POST /agents/{id}/heartbeat` (body optional) → `{status, revoked, heartbeat_interval}`.
#[utoipa::path(post, path = "/agents/{agent_id}/heartbeat", tag = "agents", params(("agent_id" = String, Path, description = "The agent's id")),
    request_body(content = Option<HeartbeatRequest>, description = "Optional: no body and no Content-Type is a plain heartbeat"),
    responses((status = 200, description = "Alive; `revoked` lists leases lost since the last heartbeat", body = HeartbeatAnswer)),
    security(("bearer" = ["controlplane:agents"])))]
pub async fn agents_heartbeat(
    State(state): State<ApiState>,
    caller: Caller,
    Path(agent_id): Path<String>,
    ApiJson(heartbeat): ApiJson<HeartbeatRequest>,
) -> ApiResult<Json<HeartbeatAnswer>> {
    caller.require(Permission::Agents)?;
    caller.acting_for(&agent_id)?;
    let outcome = state.coordinator.heartbeat(&agent_id, heartbeat).await?;
    Ok(Json(HeartbeatAnswer {
        status: outcome.status,
        revoked: outcome.revoked,
        heartbeat_interval: state.coordinator.config().heartbeat_interval.as_secs_f64(),
    }))
}

/// `POST /agents/{id}/pause`.
#[utoipa::path(post, path = "/agents/{agent_id}/pause", tag = "agents", params(("agent_id" = String, Path, description = "The agent's id")),
    responses((status = 200, description = "Paused: gets no new work, keeps what it holds", body = Agent)),
    security(("bearer" = ["controlplane:agents"])))]
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
#[utoipa::path(post, path = "/agents/{agent_id}/resume", tag = "agents", params(("agent_id" = String, Path, description = "The agent's id")),
    responses((status = 200, description = "Takes work again", body = Agent)),
    security(("bearer" = ["controlplane:agents"])))]
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
#[derive(Debug, Default, Deserialize, ToSchema)]
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

/// `POST /agents/select` answer: the choice, or only `agent_id: null` when no available agent fits.
#[derive(Debug, Serialize, ToSchema)]
pub struct SelectAnswer {
    /// The chosen agent; null when none fits.
    pub agent_id: Option<String>,
    /// The strategy asked (absent when none fits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// Who answered: the plugin, or a fallback (absent when none fits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answered_by: Option<crate::plugins::Answerer>,
    /// Agents considered (absent when none fits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidates: Option<usize>,
}

/// `POST /agents/select {capabilities, strategy, exclude, dry_run?}` → the choice, `agent_id: null` when none fits.
#[utoipa::path(post, path = "/agents/select", tag = "agents", request_body = SelectRequest,
    responses(
        (status = 200, description = "The strategy's choice; `{\"agent_id\": null}` when no available agent fits", body = SelectAnswer),
        (status = 400, description = "Unknown strategy (`unknown_strategy`) or bad capabilities", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["controlplane:agents"])))]
pub async fn agents_select(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(request): ApiJson<SelectRequest>,
) -> ApiResult<Json<SelectAnswer>> {
    caller.require(Permission::Agents)?;
    caller.not_an_agent("select agents")?;
    let capabilities = CapabilitySet::parse("capabilities", &request.capabilities, MAX_TASK_CAPABILITIES)?;
    let selection = state
        .coordinator
        .select_agent(&capabilities, request.strategy.as_deref(), &request.exclude, request.dry_run)
        .await?;
    Ok(Json(match selection {
        Some(AgentSelection { agent_id, strategy, answered_by, candidates }) => SelectAnswer {
            agent_id: Some(agent_id),
            strategy: Some(strategy),
            answered_by: Some(answered_by),
            candidates: Some(candidates),
        },
        None => SelectAnswer { agent_id: None, strategy: None, answered_by: None, candidates: None },
    }))
}
