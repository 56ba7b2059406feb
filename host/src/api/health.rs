//! `/health`, `/health/detailed`, `/health/{agent_id}`, `/stats` and `/policies/violations`: read-only views of the
//! fleet.

use axum::Json;
use axum::extract::{Path, State};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{Caller, Permission};
use super::errors::{ApiError, ApiResult};
use super::extract::{ApiQuery, IdPaging, page_by_id, page_limit};
use super::{ApiState, Prefixed};
use crate::coordinator::{Stats, SystemHealth};
use crate::model::AgentHealth;
use crate::model::{Violation, ViolationStatus, ViolationUpdate};

/// Violations listed at most per request.
pub const MAX_VIOLATIONS: usize = 1000;

/// The health routes, relative to the API prefix.
pub fn routes(api: Prefixed<'_>) -> Prefixed<'_> {
    api.route("/health", get(health_system))
        .route("/health/detailed", get(health_detailed))
        .route("/breakers", get(breakers_list))
        .route("/health/{agent_id}", get(health_agent))
        .route("/stats", get(stats_get))
        .route("/policies/violations", get(violations_list))
        .route("/policies/violations/stats", get(violations_stats))
        .route("/policies/violations/{violation_id}", get(violation_get).patch(violation_update).post(violation_update))
}

/// `GET /health` answer: the fleet's status over every agent, and one page of the agents by id.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthPage {
    /// healthy (no agent unhealthy), degraded (some), unhealthy (all), or unknown (no agents): over every agent.
    pub status: &'static str,
    /// This page's agents, by id.
    pub agents: std::collections::BTreeMap<String, AgentHealth>,
    /// Agents in the fleet, on every page.
    pub total: usize,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `GET /health?limit=&cursor=` → `{"status", "agents": {id: …}, "total", "next_cursor"}`.
#[utoipa::path(get, path = "/health", tag = "health",
    params(
        ("limit" = Option<usize>, Query, description = "Agents per page: 1 to 10000, default 1000"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page (the last agent id it held)"),
    ),
    responses((status = 200, description = "healthy, degraded (some agents unhealthy), unhealthy (all) or unknown (no agents), and one page of the agents by id", body = HealthPage)),
    security(("bearer" = ["controlplane:read"])))]
pub async fn health_system(
    State(state): State<ApiState>,
    caller: Caller,
    ApiQuery(paging): ApiQuery<IdPaging>,
) -> ApiResult<Json<HealthPage>> {
    caller.require(Permission::Read)?;
    caller.not_an_agent("read the fleet's health")?;
    // The map is ordered by agent id, which is the order pages follow.
    let SystemHealth { status, agents } = state.coordinator.get_system_health().await?;
    let total = agents.len();
    let (page, next_cursor) = page_by_id(agents, |(id, _)| id, &paging)?;
    Ok(Json(HealthPage { status, agents: page.into_iter().collect(), total, next_cursor }))
}

/// One part of this server in `GET /health/detailed`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Component {
    /// `store`, `plugins` or `scheduler`.
    pub name: &'static str,
    /// `healthy` or `unhealthy`.
    pub status: &'static str,
    /// How long the check took, in ms.
    pub latency_ms: u64,
    /// Why it is unhealthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /health/detailed` answer: this server's parts and every agent's health (Aragora's shape, with the agents).
#[derive(Debug, Serialize, ToSchema)]
pub struct DetailedHealth {
    /// `unhealthy` when a part is, else the fleet's status (healthy, degraded, unhealthy, unknown).
    pub status: &'static str,
    /// Seconds since this server started.
    pub uptime_seconds: u64,
    /// This server's version.
    pub version: &'static str,
    /// The server that answered.
    pub server_id: String,
    /// The store (checked now), the plugins (the default strategy loaded) and the scheduler.
    pub components: Vec<Component>,
    /// Every agent's last verdict, breaker and probe latency, by id.
    pub agents: std::collections::BTreeMap<String, AgentHealth>,
}

/// `GET /health/detailed`.
#[utoipa::path(get, path = "/health/detailed", tag = "health",
    responses((status = 200, description = "This server's parts (store latency, plugins, scheduler) and every agent's health", body = DetailedHealth)),
    security(("bearer" = ["controlplane:read"])))]
pub async fn health_detailed(State(state): State<ApiState>, caller: Caller) -> ApiResult<Json<DetailedHealth>> {
    caller.require(Permission::Read)?;
    caller.not_an_agent("read the fleet's health")?;
    let coordinator = &state.coordinator;
    let check = |name, started: std::time::Instant, outcome: Result<(), String>| Component {
        name,
        status: if outcome.is_ok() { "healthy" } else { "unhealthy" },
        latency_ms: started.elapsed().as_millis() as u64,
        error: outcome.err(),
    };
    let started = std::time::Instant::now();
    let store = coordinator.check_store().await.map_err(|error| error.to_string());
    let store = check("store", started, store);
    let started = std::time::Instant::now();
    let plugins = coordinator.strategy_ready(&coordinator.config().default_strategy);
    let plugins = check("plugins", started, plugins.map_err(|why| format!("DEFAULT_STRATEGY: {why}")));
    let draining = if state.draining.is_cancelled() { Err("draining: shutdown has begun".into()) } else { Ok(()) };
    let scheduler = check("scheduler", std::time::Instant::now(), draining);
    let components = vec![store, plugins, scheduler];
    // The agents come from the store: with the store down there are none to show, and the parts say why.
    let (fleet, agents) = match coordinator.get_system_health().await {
        Ok(SystemHealth { status, agents }) => (status, agents),
        Err(_) => ("unknown", Default::default()),
    };
    let status = if components.iter().any(|c| c.error.is_some()) { "unhealthy" } else { fleet };
    Ok(Json(DetailedHealth {
        status,
        uptime_seconds: state.started.elapsed().as_secs(),
        version: env!("CARGO_PKG_VERSION"),
        server_id: coordinator.config().server_id.clone(),
        components,
        agents,
    }))
}

/// `GET /health/{agent_id}`.
#[utoipa::path(get, path = "/health/{agent_id}", tag = "health",
    params(("agent_id" = String, Path, description = "The agent's id")),
    responses((status = 200, description = "The agent's last probe verdict and breaker", body = AgentHealth)),
    security(("bearer" = ["controlplane:read"])))]
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
#[utoipa::path(get, path = "/stats", tag = "health",
    responses((status = 200, description = "Counters: registry, scheduler (tasks by status, queue depth by priority), health", body = Stats)),
    security(("bearer" = ["controlplane:read"])))]
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

/// `GET /policies/violations` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ViolationList {
    /// Newest first.
    pub violations: Vec<Violation>,
    /// How many in this answer.
    pub total: usize,
}

/// `GET /policies/violations?limit=` → `{"violations": [...], "total"}`, newest first.
#[utoipa::path(get, path = "/policies/violations", tag = "health",
    params(("limit" = Option<usize>, Query, description = "How many, 1–1000 (default 100)")),
    responses((status = 200, description = "Policy denials, newest first", body = ViolationList)),
    security(("bearer" = ["controlplane:read"])))]
pub async fn violations_list(
    State(state): State<ApiState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ViolationsQuery>,
) -> ApiResult<Json<ViolationList>> {
    caller.require(Permission::Read)?;
    caller.not_an_agent("read policy violations")?;
    let limit = page_limit(query.limit.as_deref(), 100, MAX_VIOLATIONS)?;
    let violations = state.coordinator.violations(limit).await?;
    Ok(Json(ViolationList { total: violations.len(), violations }))
}

/// `GET /policies/violations/stats` answer: counts over the violations kept.
#[derive(Debug, Serialize, ToSchema)]
pub struct ViolationStats {
    /// Violations kept (the newest 10,000).
    pub total: usize,
    /// Still `open` (nobody has acknowledged, investigated or resolved them).
    pub open: usize,
    /// The rest (Aragora counts every violation that is not open as resolved; `by_status` splits them).
    pub resolved: usize,
    /// By status: open, acknowledged, investigating, resolved, false_positive.
    pub by_status: std::collections::BTreeMap<String, usize>,
    /// By policy (Aragora's `by_type`).
    pub by_type: std::collections::BTreeMap<String, usize>,
    /// Open ones by policy.
    pub open_by_type: std::collections::BTreeMap<String, usize>,
    /// By stage: submit, register, dispatch.
    pub by_stage: std::collections::BTreeMap<String, usize>,
    /// By decision: deny, warn.
    pub by_decision: std::collections::BTreeMap<String, usize>,
}

/// `GET /policies/violations/stats`.
#[utoipa::path(get, path = "/policies/violations/stats", tag = "health",
    responses((status = 200, description = "Violations kept, by policy, stage and decision", body = ViolationStats)),
    security(("bearer" = ["controlplane:read"])))]
pub async fn violations_stats(State(state): State<ApiState>, caller: Caller) -> ApiResult<Json<ViolationStats>> {
    caller.require(Permission::Read)?;
    caller.not_an_agent("read policy violations")?;
    let violations = state.coordinator.violations(crate::model::VIOLATIONS_KEPT).await?;
    let tally = |only_open: bool, key: fn(&Violation) -> &str| {
        let mut counts = std::collections::BTreeMap::new();
        for violation in violations.iter().filter(|v| !only_open || v.status == ViolationStatus::Open) {
            *counts.entry(key(violation).to_string()).or_default() += 1;
        }
        counts
    };
    let open_by_type: std::collections::BTreeMap<String, usize> = tally(true, |v| &v.policy);
    let open = open_by_type.values().sum();
    Ok(Json(ViolationStats {
        total: violations.len(),
        open,
        resolved: violations.len() - open,
        by_type: tally(false, |v| &v.policy),
        open_by_type,
        by_status: tally(false, |v| v.status.as_str()),
        by_stage: tally(false, |v| &v.stage),
        by_decision: tally(false, |v| &v.decision),
    }))
}

/// `GET /policies/violations/{violation_id}` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ViolationAnswer {
    /// The violation.
    pub violation: Violation,
}

/// `GET /policies/violations/{violation_id}` → `{"violation": …}`, or 404 when it is not among those kept.
#[utoipa::path(get, path = "/policies/violations/{violation_id}", tag = "health",
    params(("violation_id" = String, Path, description = "The violation's id (`viol_` + a number)")),
    responses(
        (status = 200, description = "The violation", body = ViolationAnswer),
        (status = 404, description = "No such violation among those kept (`violation_not_found`)", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["controlplane:read"])))]
pub async fn violation_get(
    State(state): State<ApiState>,
    caller: Caller,
    Path(violation_id): Path<String>,
) -> ApiResult<Json<ViolationAnswer>> {
    caller.require(Permission::Read)?;
    caller.not_an_agent("read policy violations")?;
    let violations = state.coordinator.violations(crate::model::VIOLATIONS_KEPT).await?;
    match violations.into_iter().find(|v| v.id == violation_id) {
        Some(violation) => Ok(Json(ViolationAnswer { violation })),
        None => Err(ApiError::not_found("violation_not_found", format!("no violation {violation_id:?} is kept"))),
    }
}

/// One agent's circuit breaker in `GET /breakers`.
#[derive(Debug, Serialize, ToSchema)]
pub struct BreakerView {
    /// The agent (Aragora's clients read `name`).
    pub name: String,
    /// `closed`, `open` or `half_open`.
    pub state: crate::model::BreakerState,
    /// Agent failures on record (within `BREAKER_WINDOW` of the latest).
    pub failure_count: u32,
    /// When it opened (absent while closed).
    pub opened_at: Option<String>,
    /// When an open breaker lets a trial through (`opened_at` + `BREAKER_COOLDOWN`).
    pub next_half_open_at: Option<String>,
    /// The task holding the half-open trial lease.
    pub trial_task_id: Option<String>,
    /// `BREAKER_COOLDOWN`, in ms.
    pub reset_timeout_ms: u64,
}

/// `GET /breakers` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct BreakerList {
    /// Every agent's breaker, by agent id.
    pub breakers: Vec<BreakerView>,
    /// How many are open or half-open.
    pub open: usize,
    /// How many there are.
    pub total: usize,
}

/// `GET /breakers` → `{"breakers": [...], "open", "total"}`.
#[utoipa::path(get, path = "/breakers", tag = "health",
    responses((status = 200, description = "Every agent's circuit breaker: state, failures on record, when it opened and when it lets a trial through", body = BreakerList)),
    security(("bearer" = ["controlplane:read"])))]
pub async fn breakers_list(State(state): State<ApiState>, caller: Caller) -> ApiResult<Json<BreakerList>> {
    caller.require(Permission::Read)?;
    caller.not_an_agent("read the fleet's breakers")?;
    let cooldown = state.coordinator.config().breaker_cooldown;
    let SystemHealth { agents, .. } = state.coordinator.get_system_health().await?;
    let later = |at: &str| {
        let at = chrono::DateTime::parse_from_rfc3339(at).ok()?;
        let then = at + chrono::Duration::from_std(cooldown).ok()?;
        Some(then.to_utc().to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    };
    let breakers: Vec<BreakerView> = agents
        .into_values()
        .map(|health| BreakerView {
            next_half_open_at: match health.breaker {
                crate::model::BreakerState::Open => health.breaker_opened_at.as_deref().and_then(later),
                _ => None,
            },
            name: health.agent_id,
            state: health.breaker,
            failure_count: health.breaker_failures,
            opened_at: health.breaker_opened_at,
            trial_task_id: health.breaker_trial,
            reset_timeout_ms: cooldown.as_millis() as u64,
        })
        .collect();
    let open = breakers.iter().filter(|b| b.state != crate::model::BreakerState::Closed).count();
    Ok(Json(BreakerList { total: breakers.len(), open, breakers }))
}

/// Longest note on a violation.
pub const MAX_VIOLATION_NOTE: usize = 4096;

/// `PATCH`/`POST /policies/violations/{violation_id}` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ViolationChange {
    /// `open`, `acknowledged`, `investigating`, `resolved` or `false_positive`.
    status: String,
    /// The reviewer's note (≤ 4 KiB).
    #[serde(default)]
    note: Option<String>,
    /// Aragora's name for the note (give one of the two).
    #[serde(default)]
    resolution_notes: Option<String>,
}

/// `PATCH /policies/violations/{violation_id}` answer (Aragora's shape, with the violation as it is now).
#[derive(Debug, Serialize, ToSchema)]
pub struct ViolationChanged {
    /// Always true.
    pub updated: bool,
    /// The violation.
    pub violation_id: String,
    /// Its new status.
    pub status: ViolationStatus,
    /// What happened, in words.
    pub message: String,
    /// The violation with its new status, note, `updated_by` and `updated_at`.
    pub violation: Violation,
}

/// `PATCH /policies/violations/{violation_id} {status, note?}` (also `POST`): acknowledge, investigate, resolve or
/// reopen a violation, with a note. Needs `controlplane:admin`.
#[utoipa::path(patch, path = "/policies/violations/{violation_id}", tag = "health",
    params(("violation_id" = String, Path, description = "The violation's id (`viol_` + a number)")),
    request_body = ViolationChange,
    responses(
        (status = 200, description = "Updated", body = ViolationChanged),
        (status = 404, description = "No such violation among those kept (`violation_not_found`)", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["controlplane:admin"])))]
pub async fn violation_update(
    State(state): State<ApiState>,
    caller: Caller,
    Path(violation_id): Path<String>,
    super::extract::ApiJson(change): super::extract::ApiJson<ViolationChange>,
) -> ApiResult<Json<ViolationChanged>> {
    caller.require(Permission::Admin)?;
    let status: ViolationStatus = change.status.trim().parse()?;
    let note = match (change.note, change.resolution_notes) {
        (Some(_), Some(_)) => return Err(ApiError::invalid("note", "give note or resolution_notes, not both")),
        (note, notes) => note.or(notes).filter(|n| !n.trim().is_empty()),
    };
    if note.as_ref().is_some_and(|n| n.len() > MAX_VIOLATION_NOTE) {
        return Err(ApiError::invalid("note", format!("must be at most {MAX_VIOLATION_NOTE} bytes")));
    }
    let update = ViolationUpdate { status, note, by: caller.sub.clone() };
    match state.coordinator.update_violation(&violation_id, update).await? {
        Some(violation) => Ok(Json(ViolationChanged {
            updated: true,
            message: format!("violation {violation_id} is {} now", status.as_str()),
            violation_id,
            status,
            violation,
        })),
        None => Err(ApiError::not_found("violation_not_found", format!("no violation {violation_id:?} is kept"))),
    }
}
