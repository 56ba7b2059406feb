//! Agent health and circuit breakers as the engine speaks of them (DESIGN §3, §4): the probes' verdicts, the
//! breaker's states, and the record `GET /health/{agent_id}` shows. The stores keep them; probes produce them.

use serde::{Deserialize, Serialize};

/// An agent's health as the probes judged it (DESIGN §3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// The last probe passed.
    Healthy,
    /// Working, but something is off.
    Degraded,
    /// No work for it.
    Unhealthy,
    /// Not probed yet, or the probe could not answer.
    #[default]
    Unknown,
}

impl HealthState {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Healthy => "healthy",
            HealthState::Degraded => "degraded",
            HealthState::Unhealthy => "unhealthy",
            HealthState::Unknown => "unknown",
        }
    }
}

/// A per-agent circuit breaker (DESIGN §4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Work flows.
    #[default]
    Closed,
    /// Too many failures: no work until the cooldown passes.
    Open,
    /// After the cooldown: exactly one trial lease; its success closes the breaker, its failure reopens it.
    HalfOpen,
}

impl BreakerState {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// A probe round's verdict on one agent.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthVerdict {
    /// The verdict.
    pub status: HealthState,
    /// Why.
    pub message: String,
    /// Latency the check saw, in ms.
    pub latency_ms: Option<f64>,
}

/// An agent's health record (`GET /health/{agent_id}`).
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AgentHealth {
    /// The agent.
    pub agent_id: String,
    /// Its health.
    pub status: HealthState,
    /// When it was last judged (RFC 3339).
    pub last_check: Option<String>,
    /// Unhealthy verdicts in a row.
    pub consecutive_failures: u32,
    /// Latency seen by the last check, in ms.
    pub latency_ms: Option<f64>,
    /// The last verdict's explanation.
    pub message: String,
    /// Its circuit breaker.
    pub breaker: BreakerState,
    /// When the breaker opened (absent while it is closed).
    pub breaker_opened_at: Option<String>,
    /// Agent failures on the breaker's record: those within `BREAKER_WINDOW` of the latest one.
    pub breaker_failures: u32,
    /// The task holding the half-open breaker's one trial lease.
    pub breaker_trial: Option<String>,
}

/// An agent's load and history as a strategy reads them (the numbers of the WIT `candidate` record), in store
/// time: what the stores keep per waiting agent so routing never reads, clones or parses an agent record.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CandidateNumbers {
    /// Tasks it holds.
    pub in_flight: u32,
    /// Tasks it may hold.
    pub max_concurrent: u32,
    /// Tasks it completed.
    pub completed: u64,
    /// Tasks it failed.
    pub failed: u64,
    /// Its rolling average latency, in ms.
    pub avg_latency_ms: f64,
    /// When it last showed a sign of life, store ms.
    pub last_heartbeat_ms: u64,
    /// When it was last given a task (or chosen), store ms.
    pub last_assigned_ms: Option<u64>,
    /// Its last probe verdict.
    pub health: HealthState,
}
