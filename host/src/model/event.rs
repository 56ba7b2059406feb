//! Events: what happened, emitted by the transition that made it happen (DESIGN §6). They carry ids and small
//! facts, never payloads or results, and feed SSE, `wait_for_result`, waiter wake-ups and plugin updates.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The kinds of event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A task was accepted.
    TaskSubmitted,
    /// A lease was granted (claim or routed assignment).
    TaskClaimed,
    /// The agent started the task.
    TaskStarted,
    /// The agent reported progress.
    TaskProgress,
    /// The task completed.
    TaskCompleted,
    /// The task failed for good.
    TaskFailed,
    /// The task went back to pending for another attempt.
    TaskRetried,
    /// An attempt ran past `timeout_seconds`.
    TaskTimeout,
    /// The task was cancelled.
    TaskCancelled,
    /// A grant was released without counting a retry (undelivered claim).
    TaskReleased,
    /// A pending task's priority was changed (`POST /queue/prioritize`).
    TaskPrioritized,
    /// An agent registered.
    AgentRegistered,
    /// An agent registered with a new session; the old session's leases were revoked.
    AgentRestarted,
    /// An agent's status changed.
    AgentStatusChanged,
    /// An agent stopped heartbeating.
    AgentOffline,
    /// An agent unregistered.
    AgentUnregistered,
    /// A policy denied or warned.
    PolicyViolation,
    /// A plugin version was loaded.
    PluginLoaded,
    /// A plugin version was rejected.
    PluginRejected,
    /// A plugin source was removed.
    PluginRemoved,
    /// A component was uploaded for the fleet.
    PluginUploaded,
    /// A fleet upload was deleted.
    PluginDeleted,
    /// A plugin name was enabled fleet-wide.
    PluginEnabled,
    /// A plugin name was disabled fleet-wide.
    PluginDisabled,
    /// A candidate version (shadow or canary) was staged fleet-wide.
    PluginStaged,
    /// A candidate version became the active one fleet-wide.
    PluginPromoted,
    /// A candidate version was dropped fleet-wide (by hand, or by the canary guard).
    PluginRolledBack,
    /// A plugin decision was recorded in the decision log (this server's; not resumable).
    Decision,
    /// An agent's circuit breaker changed state.
    BreakerChanged,
    /// An agent's health changed.
    HealthChanged,
    /// An orchestrated deliberation began (its task is the session).
    DeliberationStarted,
    /// Every participant of a deliberation round answered.
    RoundCompleted,
    /// A deliberation ended with its participants agreeing (by its decision rule).
    ConsensusReached,
    /// A deliberation ended without a decision (timeout, no agents, a round that could not be answered).
    DeliberationFailed,
    /// A deliberation passed 80 % of its `timeout_seconds`.
    SlaWarning,
    /// A deliberation passed its `timeout_seconds`.
    SlaViolated,
}

impl EventKind {
    /// Every kind, in the order of the enum.
    pub const ALL: [EventKind; 36] = [
        EventKind::TaskSubmitted,
        EventKind::TaskClaimed,
        EventKind::TaskStarted,
        EventKind::TaskProgress,
        EventKind::TaskCompleted,
        EventKind::TaskFailed,
        EventKind::TaskRetried,
        EventKind::TaskTimeout,
        EventKind::TaskCancelled,
        EventKind::TaskReleased,
        EventKind::TaskPrioritized,
        EventKind::AgentRegistered,
        EventKind::AgentRestarted,
        EventKind::AgentStatusChanged,
        EventKind::AgentOffline,
        EventKind::AgentUnregistered,
        EventKind::PolicyViolation,
        EventKind::PluginLoaded,
        EventKind::PluginRejected,
        EventKind::PluginRemoved,
        EventKind::PluginUploaded,
        EventKind::PluginDeleted,
        EventKind::PluginEnabled,
        EventKind::PluginDisabled,
        EventKind::PluginStaged,
        EventKind::PluginPromoted,
        EventKind::PluginRolledBack,
        EventKind::Decision,
        EventKind::BreakerChanged,
        EventKind::HealthChanged,
        EventKind::DeliberationStarted,
        EventKind::RoundCompleted,
        EventKind::ConsensusReached,
        EventKind::DeliberationFailed,
        EventKind::SlaWarning,
        EventKind::SlaViolated,
    ];

    /// The snake_case name, as in the `type` field and SSE `event:` lines.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::TaskSubmitted => "task_submitted",
            EventKind::TaskClaimed => "task_claimed",
            EventKind::TaskStarted => "task_started",
            EventKind::TaskProgress => "task_progress",
            EventKind::TaskCompleted => "task_completed",
            EventKind::TaskFailed => "task_failed",
            EventKind::TaskRetried => "task_retried",
            EventKind::TaskTimeout => "task_timeout",
            EventKind::TaskCancelled => "task_cancelled",
            EventKind::TaskReleased => "task_released",
            EventKind::TaskPrioritized => "task_prioritized",
            EventKind::AgentRegistered => "agent_registered",
            EventKind::AgentRestarted => "agent_restarted",
            EventKind::AgentStatusChanged => "agent_status_changed",
            EventKind::AgentOffline => "agent_offline",
            EventKind::AgentUnregistered => "agent_unregistered",
            EventKind::PolicyViolation => "policy_violation",
            EventKind::PluginLoaded => "plugin_loaded",
            EventKind::PluginRejected => "plugin_rejected",
            EventKind::PluginRemoved => "plugin_removed",
            EventKind::PluginUploaded => "plugin_uploaded",
            EventKind::PluginDeleted => "plugin_deleted",
            EventKind::PluginEnabled => "plugin_enabled",
            EventKind::PluginDisabled => "plugin_disabled",
            EventKind::PluginStaged => "plugin_staged",
            EventKind::PluginPromoted => "plugin_promoted",
            EventKind::PluginRolledBack => "plugin_rolled_back",
            EventKind::Decision => "decision",
            EventKind::BreakerChanged => "breaker_changed",
            EventKind::HealthChanged => "health_changed",
            EventKind::DeliberationStarted => "deliberation_started",
            EventKind::RoundCompleted => "round_completed",
            EventKind::ConsensusReached => "consensus_reached",
            EventKind::DeliberationFailed => "deliberation_failed",
            EventKind::SlaWarning => "sla_warning",
            EventKind::SlaViolated => "sla_violated",
        }
    }
}

/// One event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    /// `<ms>-<seq>`, as Redis stream ids; opaque to clients.
    pub id: String,
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// Store time (RFC 3339).
    pub time: String,
    /// The server whose request caused it.
    pub server_id: String,
    /// The task concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// The agent concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Small facts (status, reason, attempt…); never payloads or results.
    pub data: Value,
}
