//! The fleet's counters (`GET /stats`, `/metrics`): kept by the transitions themselves, never computed by scanning
//! (DESIGN §3).

use serde::{Deserialize, Serialize};

/// Counters kept by the transitions (never computed by scanning).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FleetStats {
    /// Registered agents.
    pub total_agents: u64,
    /// Agents that could take work now.
    pub available_agents: u64,
    /// Agents by status.
    pub agents_by_status: std::collections::BTreeMap<String, u64>,
    /// Agents by capability.
    pub agents_by_capability: std::collections::BTreeMap<String, u64>,
    /// Agents by provider.
    pub agents_by_provider: std::collections::BTreeMap<String, u64>,
    /// Tasks by status.
    pub tasks_by_status: std::collections::BTreeMap<String, u64>,
    /// Pending tasks by priority.
    pub pending_by_priority: std::collections::BTreeMap<String, u64>,
    /// Tasks by type (all statuses retained).
    pub tasks_by_type: std::collections::BTreeMap<String, u64>,
    /// Blocked claims waiting now.
    pub waiting_claims: u64,
    /// Live capability signatures in the pending index.
    pub live_signatures: u64,
    /// Pending index entries examined by the last claim (a complexity probe: flat in the backlog).
    pub last_claim_examined: u64,
    /// Agents by health.
    pub agents_by_health: std::collections::BTreeMap<String, u64>,
    /// Agents whose breaker is open or half-open.
    pub open_breakers: u64,
}

/// How many claim waits the stores remember for `GET /queue/metrics` (the newest; older ones drop off).
pub const CLAIM_WAITS_KEPT: usize = 1024;

/// What waits in the queue and how long work waited for a claim (`GET /queue/metrics`): read from indexes the
/// transitions keep, in time independent of the backlog.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueFigures {
    /// The store's clock when read (ms since the epoch).
    pub now_ms: u64,
    /// Claimable pending tasks per capability signature (sorted names), every live signature.
    pub ready_by_signature: Vec<(Vec<String>, u64)>,
    /// Pending tasks sitting out a retry backoff (not claimable yet).
    pub delayed: u64,
    /// When the task that has waited longest entered pending (ms), none while nothing is pending.
    pub oldest_waiting_since_ms: Option<u64>,
    /// How long the newest grants' tasks had waited in pending (ms, newest first, at most [`CLAIM_WAITS_KEPT`]).
    pub claim_waits_ms: Vec<u64>,
}
