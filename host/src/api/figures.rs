//! The counters as JSON under the API prefix, in the shapes Aragora's dashboards read: `/metrics` (the dashboard's
//! summary), `/metrics/tasks`, `/metrics/system`, and one agent's figures at `/metrics/agents/{id}` and
//! `/agents/{id}/metrics`. Every figure comes from the store's counters or the agent's record, never from a scan.
//! (The Prometheus text stays at the server's root `/metrics`, in `metrics.rs`.)

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::routing::get;
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::{Caller, Permission};
use super::errors::ApiResult;
use super::{ApiState, Prefixed};
use crate::model::{Agent, FleetStats};

/// The routes, relative to the API prefix.
pub fn routes(api: Prefixed<'_>) -> Prefixed<'_> {
    api.route("/metrics", get(summary_get))
        .route("/metrics/tasks", get(tasks_get))
        .route("/metrics/system", get(system_get))
        .route("/metrics/agents/{agent_id}", get(agent_get))
        .route("/agents/{agent_id}/metrics", get(agent_metrics_get))
}

fn count(map: &BTreeMap<String, u64>, key: &str) -> u64 {
    map.get(key).copied().unwrap_or(0)
}

/// `GET /metrics` answer: the dashboard's summary.
#[derive(Debug, Serialize, ToSchema)]
pub struct Summary {
    /// Tasks an agent holds (claimed or running).
    pub active_jobs: u64,
    /// Tasks waiting for an agent.
    pub queued_jobs: u64,
    /// Tasks completed (among those retained).
    pub completed_jobs: u64,
    /// Tasks failed or timed out for good (among those retained).
    pub failed_jobs: u64,
    /// Agents that could take work now.
    pub agents_available: u64,
    /// Agents at capacity.
    pub agents_busy: u64,
    /// Registered agents.
    pub total_agents: u64,
    /// Claims blocked waiting for work now.
    pub waiting_claims: u64,
}

impl From<&FleetStats> for Summary {
    fn from(stats: &FleetStats) -> Self {
        let tasks = &stats.tasks_by_status;
        Summary {
            active_jobs: count(tasks, "claimed") + count(tasks, "running"),
            queued_jobs: count(tasks, "pending"),
            completed_jobs: count(tasks, "completed"),
            failed_jobs: count(tasks, "failed") + count(tasks, "timeout"),
            agents_available: stats.available_agents,
            agents_busy: count(&stats.agents_by_status, "busy"),
            total_agents: stats.total_agents,
            waiting_claims: stats.waiting_claims,
        }
    }
}

/// `GET /metrics` (JSON; the Prometheus text is at the server's root `/metrics`).
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "The dashboard's summary: jobs active, queued, completed, failed; agents available, busy, total", body = Summary)),
    security(("bearer" = ["controlplane:read"])))]
pub async fn summary_get(State(state): State<ApiState>, caller: Caller) -> ApiResult<Json<Summary>> {
    caller.require(Permission::Read)?;
    caller.not_an_agent("read the fleet's metrics")?;
    Ok(Json(Summary::from(&state.coordinator.counters().await?)))
}

/// `GET /metrics/tasks` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskFigures {
    /// Tasks by status (among those retained).
    pub by_status: BTreeMap<String, u64>,
    /// Tasks by type (among those retained).
    pub by_type: BTreeMap<String, u64>,
    /// Pending tasks by priority.
    pub pending_by_priority: BTreeMap<String, u64>,
    /// Capability signatures with pending work.
    pub pending_signatures: u64,
    /// Claims blocked waiting for work now.
    pub waiting_claims: u64,
}

/// `GET /metrics/tasks`.
#[utoipa::path(get, path = "/metrics/tasks", tag = "health",
    responses((status = 200, description = "Tasks by status, type and pending priority; waiting claims", body = TaskFigures)),
    security(("bearer" = ["controlplane:read"])))]
pub async fn tasks_get(State(state): State<ApiState>, caller: Caller) -> ApiResult<Json<TaskFigures>> {
    caller.require(Permission::Read)?;
    caller.not_an_agent("read the fleet's metrics")?;
    let stats = state.coordinator.counters().await?;
    Ok(Json(TaskFigures {
        by_status: stats.tasks_by_status,
        by_type: stats.tasks_by_type,
        pending_by_priority: stats.pending_by_priority,
        pending_signatures: stats.live_signatures,
        waiting_claims: stats.waiting_claims,
    }))
}

/// `GET /metrics/system` answer: this server.
#[derive(Debug, Serialize, ToSchema)]
pub struct SystemFigures {
    /// The server that answered.
    pub server_id: String,
    /// Its version.
    pub version: &'static str,
    /// Seconds since it started.
    pub uptime_seconds: u64,
    /// The store it runs on.
    pub store: String,
    /// Its resident memory in bytes (from `/proc`; absent where there is none).
    pub resident_bytes: Option<u64>,
    /// Agents by status, fleet-wide.
    pub agents_by_status: BTreeMap<String, u64>,
    /// Agents by last probe verdict, fleet-wide.
    pub agents_by_health: BTreeMap<String, u64>,
    /// Agents whose breaker is open or half-open.
    pub open_breakers: u64,
}

/// A process's resident memory in bytes (`VmRSS` of `/proc/PID/status`; Linux). `bench soak` samples its
/// servers with it too.
pub fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kib: u64 = line.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// `GET /metrics/system`.
#[utoipa::path(get, path = "/metrics/system", tag = "health",
    responses((status = 200, description = "This server (uptime, store, memory) and the fleet's agents by status and health", body = SystemFigures)),
    security(("bearer" = ["controlplane:read"])))]
pub async fn system_get(State(state): State<ApiState>, caller: Caller) -> ApiResult<Json<SystemFigures>> {
    caller.require(Permission::Read)?;
    caller.not_an_agent("read the fleet's metrics")?;
    let coordinator = &state.coordinator;
    let stats = coordinator.counters().await?;
    Ok(Json(SystemFigures {
        server_id: coordinator.config().server_id.clone(),
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: state.started.elapsed().as_secs(),
        store: coordinator.describe_store(),
        resident_bytes: resident_bytes(std::process::id()),
        agents_by_status: stats.agents_by_status,
        agents_by_health: stats.agents_by_health,
        open_breakers: stats.open_breakers,
    }))
}

/// `GET /metrics/agents/{agent_id}` answer: one agent's figures.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentFigures {
    /// The agent.
    pub agent_id: String,
    /// Its status.
    pub status: String,
    /// Tasks it completed.
    pub tasks_completed: u64,
    /// Tasks it failed.
    pub tasks_failed: u64,
    /// Failed over finished (0 before any).
    pub error_rate: f64,
    /// Its rolling average latency.
    pub average_response_time_ms: f64,
    /// Tasks it holds now.
    pub in_flight: u32,
    /// Tasks it may hold.
    pub max_concurrent_tasks: u32,
    /// Its last heartbeat.
    pub last_active: String,
    /// When it was last given a task.
    pub last_assigned_at: Option<String>,
    /// Seconds since it registered.
    pub uptime_seconds: u64,
}

impl AgentFigures {
    fn of(agent: Agent) -> Self {
        let finished = agent.tasks_completed + agent.tasks_failed;
        let error_rate = if finished == 0 { 0.0 } else { agent.tasks_failed as f64 / finished as f64 };
        let uptime_seconds = chrono::DateTime::parse_from_rfc3339(&agent.registered_at)
            .map(|at| (chrono::Utc::now() - at.with_timezone(&chrono::Utc)).num_seconds().max(0) as u64)
            .unwrap_or(0);
        AgentFigures {
            status: agent.status.as_str().to_string(),
            agent_id: agent.agent_id,
            tasks_completed: agent.tasks_completed,
            tasks_failed: agent.tasks_failed,
            error_rate,
            average_response_time_ms: agent.avg_latency_ms,
            in_flight: agent.in_flight,
            max_concurrent_tasks: agent.max_concurrent_tasks,
            last_active: agent.last_heartbeat,
            last_assigned_at: agent.last_assigned_at,
            uptime_seconds,
        }
    }
}

/// `GET /metrics/agents/{agent_id}`.
#[utoipa::path(get, path = "/metrics/agents/{agent_id}", tag = "health",
    params(("agent_id" = String, Path, description = "The agent's id")),
    responses((status = 200, description = "One agent's figures: completed, failed, error rate, latency, load, uptime", body = AgentFigures)),
    security(("bearer" = ["controlplane:read"])))]
pub async fn agent_get(
    State(state): State<ApiState>,
    caller: Caller,
    Path(agent_id): Path<String>,
) -> ApiResult<Json<AgentFigures>> {
    caller.require(Permission::Read)?;
    caller.acting_for(&agent_id)?;
    Ok(Json(AgentFigures::of(state.coordinator.get_agent(&agent_id).await?)))
}

/// `GET /agents/{agent_id}/metrics`: the same figures under the agent's own path.
#[utoipa::path(get, path = "/agents/{agent_id}/metrics", tag = "agents",
    params(("agent_id" = String, Path, description = "The agent's id")),
    responses((status = 200, description = "The agent's figures, as `GET /metrics/agents/{agent_id}`", body = AgentFigures)),
    security(("bearer" = ["controlplane:read"])))]
pub async fn agent_metrics_get(
    state: State<ApiState>,
    caller: Caller,
    agent_id: Path<String>,
) -> ApiResult<Json<AgentFigures>> {
    agent_get(state, caller, agent_id).await
}
