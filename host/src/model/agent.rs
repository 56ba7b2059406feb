//! Agents: the record the registry keeps (`Agent`), and what agents send to register and heartbeat.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{CapabilitySet, MAX_AGENT_CAPABILITIES, MAX_METADATA_BYTES, TaskId, ValidationError, check_json_size};

/// Lifecycle of an agent (DESIGN §3).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    /// Registered, not ready yet (reported by the agent).
    Starting,
    /// Ready for work.
    #[default]
    Ready,
    /// At capacity (set by the server when `in_flight` reaches `max_concurrent_tasks`), or reported busy.
    Busy,
    /// Finishing current work, taking no more.
    Draining,
    /// Heartbeats stopped (set by the server).
    Offline,
    /// Reported a fatal error, or judged unhealthy.
    Failed,
}

impl AgentStatus {
    /// All statuses, for counters.
    pub const ALL: [AgentStatus; 6] = [
        AgentStatus::Starting,
        AgentStatus::Ready,
        AgentStatus::Busy,
        AgentStatus::Draining,
        AgentStatus::Offline,
        AgentStatus::Failed,
    ];

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Starting => "starting",
            AgentStatus::Ready => "ready",
            AgentStatus::Busy => "busy",
            AgentStatus::Draining => "draining",
            AgentStatus::Offline => "offline",
            AgentStatus::Failed => "failed",
        }
    }

    /// Statuses an agent may report itself (register or heartbeat); `offline` is the server's to set.
    pub fn reportable(self) -> bool {
        !matches!(self, AgentStatus::Offline)
    }
}

/// An agent as the API returns it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Agent {
    /// Chosen by the agent: 1–128 characters of `[A-Za-z0-9._:-]`.
    pub agent_id: String,
    /// What it can do, normalised and sorted.
    pub capabilities: CapabilitySet,
    /// Lifecycle status.
    pub status: AgentStatus,
    /// Model it runs (may be empty).
    pub model: String,
    /// Provider of the model (may be empty).
    pub provider: String,
    /// Free-form metadata (≤ 16 KiB).
    pub metadata: Map<String, Value>,
    /// Tasks it may hold at once.
    pub max_concurrent_tasks: u32,
    /// Leases it holds now (derived from the leases, never a separate counter).
    pub in_flight: u32,
    /// Tasks completed since registration.
    pub tasks_completed: u64,
    /// Tasks failed since registration.
    pub tasks_failed: u64,
    /// Rolling average latency of completed tasks (claim to completion), in ms.
    pub avg_latency_ms: f64,
    /// First registration (RFC 3339).
    pub registered_at: String,
    /// Last heartbeat, claim or registration (RFC 3339).
    pub last_heartbeat: String,
    /// Last time it was given a task (RFC 3339).
    pub last_assigned_at: Option<String>,
    /// Tasks it holds.
    pub current_task_ids: Vec<TaskId>,
    /// URL the health probe's HTTP check fetches.
    pub health_url: Option<String>,
    /// Paused by an operator: no new work.
    pub paused: bool,
    /// Session of the live registration; a register with another session revokes this one's leases.
    pub session_id: String,
}

/// `POST /agents` (and `register_agent`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// The agent's id.
    pub agent_id: String,
    /// Its capabilities.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Its model.
    #[serde(default)]
    pub model: String,
    /// Its provider.
    #[serde(default)]
    pub provider: String,
    /// Free-form metadata.
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// Tasks it may hold at once (default 1).
    #[serde(default)]
    pub max_concurrent_tasks: Option<u32>,
    /// URL for the probe's HTTP check.
    #[serde(default)]
    pub health_url: Option<String>,
    /// Initial status: `starting` or `ready` (default).
    #[serde(default)]
    pub status: Option<AgentStatus>,
    /// The agent's session; omitted by existing clients (then existing leases are kept).
    #[serde(default)]
    pub session_id: Option<String>,
}

impl RegisterRequest {
    /// Validates and normalises the request; errors name the field.
    pub fn validate(&self) -> Result<(CapabilitySet, u32), ValidationError> {
        validate_agent_id("agent_id", &self.agent_id)?;
        let capabilities = CapabilitySet::parse("capabilities", &self.capabilities, MAX_AGENT_CAPABILITIES)?;
        if let Some(address) = capabilities.as_slice().iter().find(|c| c.starts_with(super::capability::ADDRESS_PREFIX))
        {
            return Err(ValidationError::new(
                "capabilities",
                format!("{address:?}: the agent: prefix is reserved (every agent holds its own address in its claims)"),
            ));
        }
        // Sessions of orchestrated deliberations are for the servers' own orchestrators (decision 0020).
        if capabilities.contains(super::ORCHESTRATE_CAPABILITY) && !self.agent_id.starts_with(ORCHESTRATOR_PREFIX) {
            return Err(ValidationError::new(
                "capabilities",
                format!(
                    "{:?} is reserved for the control plane's deliberation orchestrators",
                    super::ORCHESTRATE_CAPABILITY
                ),
            ));
        }
        check_json_size("metadata", &self.metadata, MAX_METADATA_BYTES)?;
        for (field, value) in [("model", &self.model), ("provider", &self.provider)] {
            if value.len() > 128 {
                return Err(ValidationError::new(field, "at most 128 characters"));
            }
        }
        let max_concurrent = self.max_concurrent_tasks.unwrap_or(1);
        if !(1..=1024).contains(&max_concurrent) {
            return Err(ValidationError::new("max_concurrent_tasks", "must be 1 to 1024"));
        }
        if let Some(status) = self.status
            && !matches!(status, AgentStatus::Starting | AgentStatus::Ready)
        {
            return Err(ValidationError::new("status", "an agent registers as starting or ready"));
        }
        if let Some(url) = &self.health_url {
            let lower = url.to_ascii_lowercase();
            if url.len() > 2048 || !(lower.starts_with("http://") || lower.starts_with("https://")) {
                return Err(ValidationError::new("health_url", "must be an http:// or https:// URL"));
            }
        }
        if let Some(session) = &self.session_id
            && (session.is_empty() || session.len() > 128)
        {
            return Err(ValidationError::new("session_id", "must be 1 to 128 characters"));
        }
        Ok((capabilities, max_concurrent))
    }
}

/// `POST /agents/{id}/heartbeat`; every field optional (existing clients post no body).
#[derive(Clone, Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// A status the agent reports (`starting`, `ready`, `busy`, `draining`, `failed`).
    #[serde(default)]
    pub status: Option<AgentStatus>,
    /// The tasks the agent believes it holds: older leases missing here are released as undelivered.
    // An entry that is not a task id names no lease, so it is left out, as an unknown id is ignored (the heartbeat
    // still counts). A `//` comment: the API document takes the `///` text.
    #[serde(default, deserialize_with = "task_ids_held")]
    pub current_task_ids: Option<Vec<TaskId>>,
    /// The agent's session, checked against the live one.
    #[serde(default)]
    pub session_id: Option<String>,
}

/// `current_task_ids` as sent, without the entries that are not task ids.
fn task_ids_held<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Vec<TaskId>>, D::Error> {
    let sent = Option::<Vec<String>>::deserialize(deserializer)?;
    Ok(sent.map(|ids| ids.iter().filter_map(|id| TaskId::parse("current_task_ids", id).ok()).collect()))
}

impl HeartbeatRequest {
    /// Validates the request.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if let Some(status) = self.status
            && !status.reportable()
        {
            return Err(ValidationError::new("status", "offline is set by the server, not reported"));
        }
        Ok(())
    }
}

/// The id prefix of the servers' deliberation orchestrators (`control-plane.<server id>`), the only agents that may
/// hold `deliberation.orchestrate`.
pub const ORCHESTRATOR_PREFIX: &str = "control-plane.";

/// Checks an agent id: 1–128 characters of `[A-Za-z0-9._:-]`, and not `.` or `..` (an id is a path segment in
/// `/agents/{id}`, where those two name other paths).
pub fn validate_agent_id(field: &str, id: &str) -> Result<(), ValidationError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if !ok {
        return Err(ValidationError::new(field, "must be 1 to 128 characters of A-Z a-z 0-9 . _ : -"));
    }
    if id == "." || id == ".." {
        return Err(ValidationError::new(field, "`.` and `..` are not agent ids"));
    }
    Ok(())
}

/// A validated registration.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentRegistration {
    /// The agent id.
    pub agent_id: String,
    /// Its capabilities.
    pub capabilities: CapabilitySet,
    /// Its model.
    pub model: String,
    /// Its provider.
    pub provider: String,
    /// Its metadata.
    pub metadata: Map<String, Value>,
    /// Tasks it may hold at once.
    pub max_concurrent_tasks: u32,
    /// URL for the probe's HTTP check.
    pub health_url: Option<String>,
    /// `starting` or `ready`.
    pub status: AgentStatus,
    /// The agent's session, if it sent one.
    pub session_id: Option<String>,
}

/// What `register` did.
#[derive(Clone, Debug, PartialEq)]
pub struct Registered {
    /// The agent now.
    pub agent: Agent,
    /// It was not registered before.
    pub created: bool,
    /// It came back with a new session: the old session's leases were revoked.
    pub restarted: bool,
    /// Tasks the revoked leases put back to pending, claimable now (routing offers them to waiting claims).
    pub requeued: Vec<TaskId>,
}

/// Why an agent lost a lease, as a heartbeat reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RevokeReason {
    /// The task was cancelled.
    Cancelled,
    /// The attempt timed out.
    Timeout,
    /// The task was taken away (agent presumed lost, session replaced, undelivered grant released).
    Reassigned,
}

impl RevokeReason {
    /// The 409 `code` for an outcome sent on a lease revoked for this reason.
    pub fn conflict_code(self) -> &'static str {
        match self {
            RevokeReason::Cancelled => "task_cancelled",
            RevokeReason::Timeout => "task_timeout",
            RevokeReason::Reassigned => "lease_lost",
        }
    }
}

/// A lease the agent lost since its last heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Revoked {
    /// The task.
    pub task_id: TaskId,
    /// Why.
    pub reason: RevokeReason,
}

/// What a heartbeat answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HeartbeatOutcome {
    /// The agent's status now.
    pub status: AgentStatus,
    /// Leases lost since the last heartbeat.
    pub revoked: Vec<Revoked>,
    /// Grants the heartbeat released (the agent did not list them), pending and claimable again: routing offers
    /// them to waiting claims. Not part of the answer.
    #[serde(skip)]
    pub requeued: Vec<TaskId>,
}

/// Filters of `GET /agents`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AgentFilter {
    /// Only agents holding this capability.
    pub capability: Option<String>,
    /// Only agents that could take work now (or only those that could not).
    pub available: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_leaves_out_what_is_not_a_task_id_and_still_counts() {
        let held = "task_0123456789abcdef0123456789abcdef";
        let body = format!(r#"{{"current_task_ids": ["not-a-task", "{held}", "task_XYZ"]}}"#);
        let heartbeat: HeartbeatRequest = serde_json::from_str(&body).unwrap();
        assert_eq!(heartbeat.current_task_ids, Some(vec![TaskId::parse("id", held).unwrap()]));
        let none: HeartbeatRequest = serde_json::from_str("{}").unwrap();
        assert_eq!(none.current_task_ids, None, "no list is not an empty list (which releases every lease)");
        let empty: HeartbeatRequest = serde_json::from_str(r#"{"current_task_ids": []}"#).unwrap();
        assert_eq!(empty.current_task_ids, Some(Vec::new()));
        let null: HeartbeatRequest = serde_json::from_str(r#"{"current_task_ids": null}"#).unwrap();
        assert_eq!(null.current_task_ids, None);
        assert!(serde_json::from_str::<HeartbeatRequest>(r#"{"current_task_ids": "task_1"}"#).is_err());
        assert!(serde_json::from_str::<HeartbeatRequest>(r#"{"current_task_ids": [1]}"#).is_err());
        assert!(serde_json::from_str::<HeartbeatRequest>(r#"{"nope": 1}"#).is_err(), "unknown fields still refused");
    }
}
