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
