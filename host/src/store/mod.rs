//! The `Store` trait: all control-plane state, changed only through named transitions. Each method is one atomic
//! step (the memory store holds one lock; the Redis store will run one Lua script), so two servers can never both
//! claim or both finish a task, and a process dying between two calls leaves nothing half-done.
//!
//! Transitions take no "now": the store reads its own clock, so every server agrees on time. Backends: `memory`
//! (the embedded default, `memory.rs`) and `redis` (one Lua script per transition, `redis/`); both pass the same
//! conformance suite (`tests/tests/all/store_conformance.rs`).

pub mod clock;
pub mod memory;
pub mod open;
pub mod redis;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::broadcast;

use crate::model::{
    Agent, AgentStatus, CapabilitySet, Event, FailKind, HeartbeatRequest, NewTask, Task, TaskId, TaskStatus,
};

pub use self::redis::RedisStore;
pub use clock::{Clock, ManualClock, SystemClock};
pub use memory::MemoryStore;

/// Settings the store's transitions depend on (from the server configuration, DESIGN §8).
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// The id written into events this process causes.
    pub server_id: String,
    /// Silence after which an agent is offline, in ms.
    pub heartbeat_timeout_ms: u64,
    /// The agents' heartbeat period, in ms: leases younger than this are not released by a heartbeat that omits
    /// them (the agent may not know of them yet).
    pub heartbeat_interval_ms: u64,
    /// Live capability signatures allowed (DESIGN §4).
    pub max_signatures: usize,
    /// Priority aging period in ms (`None` = strict priority).
    pub priority_aging_ms: Option<u64>,
    /// Retry backoff base in ms (0 = requeued tasks are claimable at once).
    pub retry_backoff_base_ms: u64,
    /// Retry backoff cap in ms.
    pub retry_backoff_max_ms: u64,
    /// Events kept for resume (SSE `Last-Event-ID`).
    pub event_buffer: usize,
    /// Idempotency keys are remembered this long, in ms.
    pub idempotency_ttl_ms: u64,
    /// Breaker failures (agent-kind failures, attempt timeouts, unhealthy probes) that open it.
    pub breaker_threshold: u32,
    /// Window in which those failures count, in ms.
    pub breaker_window_ms: u64,
    /// Time an open breaker waits before a half-open trial, in ms.
    pub breaker_cooldown_ms: u64,
    /// Replicas a Redis write must reach before it is acknowledged (`REDIS_WAIT_REPLICAS`; 0 = don't wait).
    pub wait_replicas: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            server_id: "local".into(),
            heartbeat_timeout_ms: 30_000,
            heartbeat_interval_ms: 10_000,
            max_signatures: 4096,
            priority_aging_ms: None,
            retry_backoff_base_ms: 0,
            retry_backoff_max_ms: 60_000,
            event_buffer: 10_000,
            idempotency_ttl_ms: 24 * 3600 * 1000,
            breaker_threshold: 5,
            breaker_window_ms: 60_000,
            breaker_cooldown_ms: 30_000,
            wait_replicas: 0,
        }
    }
}

/// Why a transition was refused. Each variant maps to one HTTP status in the API.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// 404: no such agent (a claim tells the agent to register).
    #[error("agent {0} is not registered")]
    AgentNotFound(String),
    /// 404: no uploaded plugin of that name (delete, enable or disable of a name the fleet never heard of).
    #[error("no plugin named {0:?} in the fleet's uploads")]
    PluginNotFound(String),
    /// 404: no such task.
    #[error("task {0} not found")]
    TaskNotFound(TaskId),
    /// 409: the transition does not apply to the current state; `code` says why (`lease_lost`, `task_cancelled`,
    /// `task_timeout`, `outcome_conflict`, `session_replaced`, `idempotency_key_reused`, `invalid_transition`).
    #[error("{message}")]
    Conflict {
        /// Machine-readable reason.
        code: &'static str,
        /// Human-readable detail.
        message: String,
    },
    /// 503: the pending index already has `MAX_SIGNATURES` distinct capability sets.
    #[error("too many distinct capability signatures pending ({0}); retry later")]
    TooManySignatures(usize),
    /// 503: the store cannot be reached; the outcome of a write is unknown.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    pub(crate) fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        StoreError::Conflict { code, message: message.into() }
    }
}

/// Result of a store transition.
pub type StoreResult<T> = Result<T, StoreError>;

/// How a task outcome proves its sender holds the task (DESIGN §4, leases and fencing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fence {
    /// The lease id of the grant.
    Lease(String),
    /// The holding agent (body `agent_id`, or an `agent:<id>` token).
    Agent(String),
    /// Neither (existing clients complete with no body): applies to the current attempt, recorded `unfenced`.
    Unfenced,
}

/// A task's successful outcome, as the agent reports it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Completion {
    /// The result (any JSON; `null` when the agent sent none).
    pub result: Value,
    /// How long the agent says the work took, in ms (Aragora clients send it). It feeds the agent's
    /// `avg_latency_ms` in place of the store's own measure (claim to completion), which includes queueing on the
    /// agent's side and the network.
    pub latency_ms: Option<f64>,
}

impl From<Value> for Completion {
    fn from(result: Value) -> Self {
        Completion { result, latency_ms: None }
    }
}

/// A fleet-wide plugin change, as the API asks for it.
#[derive(Clone, Debug, PartialEq)]
pub enum PluginAction {
    /// A new component (validated by the server that received it) with its manifest text.
    Upload {
        /// The component.
        bytes: Vec<u8>,
        /// Its sha256, hex.
        sha256: String,
        /// The manifest (TOML), if one was sent.
        manifest: Option<String>,
    },
    /// Remove the upload: the file or built-in of the name (if any) answers again.
    Delete,
    /// Let the name answer calls again.
    Enable,
    /// No version of the name answers calls, on any server.
    Disable,
}

impl PluginAction {
    /// The history and event name of the action (`uploaded`, `deleted`, `enabled`, `disabled`).
    pub fn as_str(&self) -> &'static str {
        match self {
            PluginAction::Upload { .. } => "uploaded",
            PluginAction::Delete => "deleted",
            PluginAction::Enable => "enabled",
            PluginAction::Disable => "disabled",
        }
    }
}

/// A change to a plugin name, by whom.
#[derive(Clone, Debug, PartialEq)]
pub struct PluginChange {
    /// The plugin name.
    pub name: String,
    /// What to do.
    pub action: PluginAction,
    /// The token subject asking.
    pub by: String,
}

/// One entry of a plugin's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PluginHistoryEntry {
    /// The fleet version this change made.
    pub version: u64,
    /// `uploaded`, `deleted`, `enabled` or `disabled`.
    pub action: String,
    /// The component's sha256 (uploads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Who (the token's `sub`).
    pub by: String,
    /// When (RFC 3339, store clock).
    pub at: String,
}

/// What the fleet holds for a plugin name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PluginRecord {
    /// The plugin name.
    pub name: String,
    /// Bumped by every change: servers report the version they applied.
    pub version: u64,
    /// Whether the name may answer calls.
    pub enabled: bool,
    /// sha256 of the current upload, if there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Size of the current upload in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The current upload's manifest (TOML).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    /// The most recent changes, newest first (at most [`PLUGIN_HISTORY`]).
    pub history: Vec<PluginHistoryEntry>,
}

/// A policy deny or warn, as the policy stage reports it (DESIGN §5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewViolation {
    /// The policy's plugin name.
    pub policy: String,
    /// `submit`, `register` or `dispatch`.
    pub stage: &'static str,
    /// `deny` or `warn`.
    pub decision: &'static str,
    /// The policy's reason.
    pub reason: String,
    /// The task concerned (the id it was to get, for a denied submit).
    pub task_id: Option<String>,
    /// The agent concerned.
    pub agent_id: Option<String>,
}

/// A recorded deny or warn: fleet-wide, newest first in `GET /policies/violations`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Violation {
    /// `viol_` + a fleet-wide sequence number.
    pub id: String,
    /// The policy's plugin name.
    pub policy: String,
    /// `submit`, `register` or `dispatch`.
    pub stage: String,
    /// `deny` or `warn`.
    pub decision: String,
    /// The policy's reason.
    pub reason: String,
    /// The task concerned (the id it was to get, for a denied submit).
    #[serde(default)]
    pub task_id: Option<String>,
    /// The agent concerned.
    #[serde(default)]
    pub agent_id: Option<String>,
    /// When (RFC 3339, store clock).
    pub time: String,
}

/// Violations kept (the oldest are dropped past this).
pub const VIOLATIONS_KEPT: usize = 10_000;

/// Changes kept per plugin name.
pub const PLUGIN_HISTORY: usize = 100;

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
}

/// What `submit` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submitted {
    /// The task's id (the first one's, on a replay).
    pub task_id: TaskId,
    /// The same idempotency key and body were seen before: nothing new was created.
    pub replayed: bool,
}

/// A claim: who asks, with which capabilities, for how many tasks.
#[derive(Clone, Debug, PartialEq)]
pub struct ClaimRequest {
    /// The agent.
    pub agent_id: String,
    /// Capabilities to match on: the registered ones, narrowed by the claim body's.
    pub capabilities: CapabilitySet,
    /// Tasks to take at most.
    pub max_tasks: usize,
    /// The agent's session, checked against the live one.
    pub session_id: Option<String>,
}

/// A blocked claim waiting for a routed task.
#[derive(Clone, Debug, PartialEq)]
pub struct Waiter {
    /// Single-use token.
    pub token: String,
    /// The waiting agent.
    pub agent_id: String,
    /// The capabilities it claims with.
    pub capabilities: CapabilitySet,
}

/// What withdrawing a waiter found.
#[derive(Clone, Debug, PartialEq)]
pub enum Withdrawn {
    /// The token was still unused: nothing was assigned.
    Unused,
    /// A submit consumed the token first: this task is the claim's answer.
    Assigned(Box<Task>),
}

/// A failure report.
#[derive(Clone, Debug, PartialEq)]
pub struct FailRequest {
    /// What went wrong.
    pub error: String,
    /// Try again if retries remain (default true).
    pub requeue: bool,
    /// Blame the task or the agent.
    pub kind: FailKind,
}

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
}

/// Filters of `GET /agents`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AgentFilter {
    /// Only agents holding this capability.
    pub capability: Option<String>,
    /// Only agents that could take work now (or only those that could not).
    pub available: Option<bool>,
}

/// Filters and paging of `GET /tasks`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskFilter {
    /// Only this status.
    pub status: Option<TaskStatus>,
    /// Only this type.
    pub task_type: Option<String>,
    /// Only tasks assigned to this agent.
    pub agent_id: Option<String>,
    /// Page size (≤ 1,000).
    pub limit: usize,
    /// Continue after this cursor (from the previous page).
    pub cursor: Option<String>,
}

/// A page of tasks, newest first.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct TaskPage {
    /// The tasks.
    pub tasks: Vec<Task>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Counters kept by the transitions (never computed by scanning).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StoreStats {
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

/// All control-plane state. Every method is one atomic transition (or one consistent read).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// One line for the start-up log ("memory", "redis at 127.0.0.1:6379, prefix aragora:cp:").
    fn describe(&self) -> String;

    /// The store's clock, in ms since the Unix epoch.
    fn now_ms(&self) -> u64;

    /// Events from now on (every transition's events, from every server of the store).
    fn subscribe(&self) -> broadcast::Receiver<Event>;

    /// Events after `after` (or the oldest kept), at most `limit`; `None` when `after` fell out of the buffer.
    async fn events_after(&self, after: Option<&str>, limit: usize) -> StoreResult<Option<Vec<Event>>>;

    /// Registers or re-registers an agent (upsert). A different session revokes the old session's leases.
    async fn register(&self, registration: AgentRegistration) -> StoreResult<Registered>;

    /// Records a heartbeat: keeps the agent alive, applies its reported status and `current_task_ids`, and
    /// reports the leases it lost.
    async fn heartbeat(&self, agent_id: &str, heartbeat: &HeartbeatRequest) -> StoreResult<HeartbeatOutcome>;

    /// Removes an agent; its tasks are requeued (counting a retry) or failed with `agent_lost`.
    async fn unregister(&self, agent_id: &str) -> StoreResult<()>;

    /// Pauses or resumes an agent.
    async fn set_paused(&self, agent_id: &str, paused: bool) -> StoreResult<Agent>;

    /// One agent.
    async fn get_agent(&self, agent_id: &str) -> StoreResult<Option<Agent>>;

    /// Agents matching the filter, by id.
    async fn list_agents(&self, filter: &AgentFilter) -> StoreResult<Vec<Agent>>;

    /// Accepts a task: pending and indexed under its capability signature, or a replay of an idempotent submit.
    async fn submit(&self, task: NewTask) -> StoreResult<Submitted>;

    /// Accepts several tasks, all or nothing.
    async fn submit_batch(&self, tasks: Vec<NewTask>) -> StoreResult<Vec<Submitted>>;

    /// Grants the best pending tasks the agent can take (priority, then FIFO), at most `max_tasks`.
    async fn claim(&self, request: &ClaimRequest) -> StoreResult<Vec<Task>>;

    /// The next pending tasks the capabilities match, in claim order, without taking them (dispatch policies).
    async fn peek(&self, capabilities: &CapabilitySet, limit: usize) -> StoreResult<Vec<Task>>;

    /// Grants `task_id` to the agent if it is still pending and claimable by it.
    async fn claim_if(&self, task_id: &TaskId, request: &ClaimRequest) -> StoreResult<Option<Task>>;

    /// Registers a blocked claim's single-use waiter token, alive for `lifetime` (store time): the claim's block.
    /// Past it the claim has withdrawn the token — or the server holding the claim died without withdrawing it, and
    /// nobody would receive a task assigned through it — so an expired token is never listed nor assigned, and
    /// registrations drop expired ones.
    async fn register_waiter(&self, waiter: Waiter, lifetime: std::time::Duration) -> StoreResult<()>;

    /// Withdraws a waiter token: unused, or the task a submit assigned through it.
    async fn withdraw_waiter(&self, token: &str) -> StoreResult<Withdrawn>;

    /// Live (unexpired) waiters whose capabilities cover `required`, oldest first, at most `limit`.
    async fn waiters_for(&self, required: &CapabilitySet, limit: usize) -> StoreResult<Vec<Waiter>>;

    /// Grants `task_id` through a waiter token: only if the task is still pending, the token unused and unexpired,
    /// and the agent still eligible.
    async fn assign(&self, task_id: &TaskId, token: &str) -> StoreResult<Option<Task>>;

    /// The agent started the task (claimed → running).
    async fn start(&self, task_id: &TaskId, fence: &Fence) -> StoreResult<Task>;

    /// The agent reports progress (claimed → running, progress recorded).
    async fn progress(&self, task_id: &TaskId, fence: &Fence, progress: Value) -> StoreResult<Task>;

    /// The task completed with `result`. Repeating the same outcome on the same lease answers the stored task.
    async fn complete(&self, task_id: &TaskId, fence: &Fence, completion: Completion) -> StoreResult<Task>;

    /// Completes several tasks in one step; each outcome stands alone (a conflict on one does not undo others).
    async fn complete_batch(&self, outcomes: Vec<(TaskId, Fence, Completion)>) -> StoreResult<Vec<StoreResult<Task>>>;

    /// Completes a task and claims the agent's next work in one atomic step (BullMQ's worker pattern). Any wait
    /// after an empty claim is the caller's, not part of this step.
    async fn complete_and_claim(
        &self,
        task_id: &TaskId,
        fence: &Fence,
        completion: Completion,
        next: &ClaimRequest,
    ) -> StoreResult<(Task, Vec<Task>)>;

    /// The attempt failed: requeued while retries remain (if asked), else failed.
    async fn fail(&self, task_id: &TaskId, fence: &Fence, failure: &FailRequest) -> StoreResult<Task>;

    /// Cancels a pending or leased task (revoking its lease); cancelling a cancelled task is a no-op.
    async fn cancel(&self, task_id: &TaskId) -> StoreResult<Task>;

    /// Manual retry of a failed, timed-out or cancelled task: back to pending, `retries` reset.
    async fn retry(&self, task_id: &TaskId) -> StoreResult<Task>;

    /// Releases a committed grant that never reached its agent: back to pending at its place, no retry counted.
    async fn release(&self, task_id: &TaskId, lease_id: &str) -> StoreResult<()>;

    /// One task.
    async fn get_task(&self, task_id: &TaskId) -> StoreResult<Option<Task>>;

    /// Tasks matching the filter, newest first, one page.
    async fn list_tasks(&self, filter: &TaskFilter) -> StoreResult<TaskPage>;

    /// Ends attempts past their timeout (requeue or `timeout`); at most `limit`. Returns how many.
    async fn sweep_timeouts(&self, limit: usize) -> StoreResult<usize>;

    /// Marks agents silent past the heartbeat timeout offline and requeues their tasks; at most `limit`.
    async fn sweep_offline(&self, limit: usize) -> StoreResult<usize>;

    /// Retention (`CLEANUP_INTERVAL` housekeeping): removes terminal tasks ended more than `task_retention_ms` ago,
    /// offline agents silent for `agent_retention_ms`, and expired idempotency keys; at most `limit` records.
    async fn housekeeping(&self, task_retention_ms: u64, agent_retention_ms: u64, limit: usize) -> StoreResult<usize>;

    /// The earliest timeout, heartbeat expiry or backoff deadline, in store ms (what the sweeper sleeps to).
    async fn next_deadline(&self) -> StoreResult<Option<u64>>;

    /// Records a probe verdict: health, `failed` status while unhealthy (cleared by a healthy verdict), and an
    /// unhealthy verdict feeds the agent's breaker.
    async fn record_health(&self, agent_id: &str, verdict: HealthVerdict) -> StoreResult<AgentHealth>;

    /// An agent's health and breaker.
    async fn agent_health(&self, agent_id: &str) -> StoreResult<Option<AgentHealth>>;

    /// Every agent's health and breaker, by agent id.
    async fn all_health(&self) -> StoreResult<Vec<AgentHealth>>;

    /// Keeps an agent alive (a blocked or refused claim is a sign of life) without consuming its revocation
    /// notices, which only a heartbeat answers.
    async fn keep_alive(&self, agent_id: &str) -> StoreResult<()>;

    /// Records that the agent was chosen (a non-dry-run `select_agent`): `last_assigned_at` in store time.
    async fn mark_assigned(&self, agent_id: &str) -> StoreResult<()>;

    /// The task an idempotency key already created for this submitter, if the key is live.
    async fn idempotent_task(&self, submitted_by: &str, key: &str) -> StoreResult<Option<(TaskId, String)>>;

    /// The counters.
    async fn stats(&self) -> StoreResult<StoreStats>;

    /// Records a fleet-wide plugin change (upload, delete, enable, disable) with its author, bumps the name's fleet
    /// version, appends to its history and emits `plugin_<action>` so every server applies it. Delete, enable
    /// and disable of a name with no record → `PluginNotFound` (enable/disable create a record for names that only
    /// exist as built-ins or files, so a built-in can be disabled fleet-wide; see `PluginChange`).
    async fn change_plugin(&self, change: PluginChange) -> StoreResult<PluginRecord>;

    /// The agents `ids` that exist, each with its health record, in the order asked: what routing reads to
    /// choose among waiting claims. The default asks agent by agent; a networked store answers in one call.
    async fn agents_with_health(&self, ids: &[String]) -> StoreResult<Vec<(Agent, Option<AgentHealth>)>> {
        let mut found = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(agent) = self.get_agent(id).await? {
                let health = self.agent_health(id).await?;
                found.push((agent, health));
            }
        }
        Ok(found)
    }

    /// Records `server_id` as alive for `ttl_ms` more and answers the ids of every live server, sorted (health
    /// probing divides the agents among them).
    async fn server_alive(&self, server_id: &str, ttl_ms: u64) -> StoreResult<Vec<String>>;

    /// Records policy violations, each with a fleet-wide id and a `policy_violation` event, keeping the newest
    /// [`VIOLATIONS_KEPT`].
    async fn record_violations(&self, violations: Vec<NewViolation>) -> StoreResult<Vec<Violation>>;

    /// The newest `limit` violations, newest first.
    async fn violations(&self, limit: usize) -> StoreResult<Vec<Violation>>;

    /// The fleet's plugin records (without component bytes), by name.
    async fn plugin_records(&self) -> StoreResult<Vec<PluginRecord>>;

    /// The fleet's record of one name (without component bytes), if it has one.
    async fn plugin_record(&self, name: &str) -> StoreResult<Option<PluginRecord>>;

    /// One name's uploaded component: (sha256, bytes), if an upload is current.
    async fn plugin_component(&self, name: &str) -> StoreResult<Option<(String, Vec<u8>)>>;
}
