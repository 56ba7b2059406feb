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

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::{broadcast, watch};

use crate::model::{
    Agent, AgentFilter, AgentHealth, AgentRegistration, AttemptResult, AuditCheckpoint, AuditEntry, AuditHead,
    CandidateNumbers, CapabilitySet, Channel, ChannelFigures, Completion, DecisionRecord, Delivery, DeliveryStatus,
    Event, EventKind, EventRecord, FailRequest, Fence, FleetStats, HealthVerdict, HeartbeatOutcome, HeartbeatRequest,
    NewTask, NewViolation, PluginChange, PluginRecord, Priority, QueueFigures, Refusal, Registered, ScheduleAdvance,
    ScheduleRecord, StoreResult, Submitted, Task, TaskFilter, TaskId, TaskPage, Violation, ViolationUpdate,
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
    /// Longest a store call may take before it fails as unavailable (`STORE_TIMEOUT`), in ms. Blocking reads of
    /// the event stream are exempt; they wait by design.
    pub store_timeout_ms: u64,
    /// Pending tasks past which a submit is refused (`MAX_PENDING_TASKS`; 0 = no limit).
    pub max_pending_tasks: u64,
    /// Redis writes each event as separate fields, which servers of builds before the compact form can read
    /// (`REDIS_EVENT_FORMAT=fields`, for a rolling upgrade); otherwise as one field (decision 0030). Every build
    /// since reads both.
    pub event_fields: bool,
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
            store_timeout_ms: 2_000,
            max_pending_tasks: 0,
            event_fields: false,
        }
    }
}

/// A claim: who asks, with which capabilities, for how many tasks.
#[derive(Clone, Debug, PartialEq)]
pub struct ClaimRequest {
    /// The agent.
    pub agent_id: String,
    /// Narrows the registered capabilities for this claim (the store never widens past the registration);
    /// `None` claims with all of them.
    pub capabilities: Option<CapabilitySet>,
    /// Tasks to take at most.
    pub max_tasks: usize,
    /// The agent's session, checked against the live one.
    pub session_id: Option<String>,
}

/// The waiter a claim registers, in the same step, when it finds nothing to take (DESIGN §4: a blocked claim
/// waits on a single-use token that routing assigns a task through).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaitSpec {
    /// The single-use token (128 random bits, hex), shared with the claim that waits on it.
    pub token: Arc<str>,
    /// How long it lives, store time: the claim's block and a grace. Past it the claim has withdrawn the token, or
    /// the server holding the claim died; an expired token is never offered nor assigned.
    pub lifetime: std::time::Duration,
}

/// What a claim (or the claim half of a complete-and-claim) found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClaimAnswer {
    /// The tasks granted, best first.
    pub tasks: Vec<Task>,
    /// Why the agent may not take work now; nothing was granted nor registered.
    pub refusal: Option<Refusal>,
    /// Nothing was pending for it: the claim's waiter token is registered.
    pub waiting: bool,
    /// Requeued tasks whose backoff ended, made claimable by this step and not granted here (the caller routes
    /// them to other waiting claims).
    pub promoted: Vec<TaskId>,
}

/// A waiting claim as routing offers it to a strategy: its token, its agent and the numbers a strategy reads, as
/// the store held them when the offer was made. Routing never reads the agent record itself.
#[derive(Clone, Debug, PartialEq)]
pub struct WaitingClaim {
    /// The claim's waiter token.
    pub token: Arc<str>,
    /// The waiting agent.
    pub agent_id: Arc<str>,
    /// Its load and history.
    pub numbers: CandidateNumbers,
    /// Its place in the waiting order (earlier = waiting longer); a cursor for a further offer.
    pub seq: u64,
}

/// What a look for due items found ([`Store::claim_deliveries`], [`Store::due_schedules`]): those due now, and how
/// long until the next one left comes due, so that a background loop that found nothing sleeps until then instead
/// of polling.
#[derive(Clone, Debug, PartialEq)]
pub struct Due<T> {
    /// Due now (deliveries: leased, each counting one more attempt).
    pub items: Vec<T>,
    /// Milliseconds until the next item not due now comes due (0: more are due than `items` holds); none when
    /// there is none. Deliveries just leased count, at their lease's end.
    pub next_in_ms: Option<u64>,
}

impl<T> Default for Due<T> {
    fn default() -> Self {
        Due { items: Vec::new(), next_in_ms: None }
    }
}

/// The claims a pending task may go to: the longest-waiting ones first, at most the strategy's `max_candidates`,
/// only agents the eligibility rule allows. Agents at capacity come after every agent below it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Offer {
    /// The store's time when the offer was made (ages are measured from it).
    pub now_ms: u64,
    /// The claims, longest-waiting first (those at capacity last).
    pub waiting: Vec<WaitingClaim>,
}

/// What a submit committed, and the offer of waiting claims routing starts from (`None`: none waits for it).
#[derive(Clone, Debug, PartialEq)]
pub struct Committed {
    /// The task id, and whether the submit was an idempotent replay (nothing new: nothing to route).
    pub submitted: Submitted,
    /// The waiting claims that could take it.
    pub offer: Option<Arc<Offer>>,
}

/// A task assigned through a waiter token.
#[derive(Clone, Debug, PartialEq)]
pub struct Assigned {
    /// The token it went through (the claim to wake).
    pub token: Arc<str>,
    /// The task, granted to the token's agent.
    pub task: Task,
}

/// A blocked claim waiting for a routed task.
#[derive(Clone, Debug, PartialEq)]
pub struct Waiter {
    /// Single-use token.
    pub token: Arc<str>,
    /// The waiting agent.
    pub agent_id: String,
    /// The capabilities it claims with.
    pub capabilities: CapabilitySet,
}

/// What a sweep did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Swept {
    /// Items swept (attempts ended, agents marked offline).
    pub count: usize,
    /// Tasks pending again and claimable now (the caller routes them).
    pub requeued: Vec<TaskId>,
}

/// What withdrawing a waiter found.
#[derive(Clone, Debug, PartialEq)]
pub enum Withdrawn {
    /// The token was still unused: nothing was assigned.
    Unused,
    /// A submit consumed the token first: this task is the claim's answer.
    Assigned(Box<Task>),
}

/// All control-plane state. Every method is one atomic transition (or one consistent read).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// One line for the start-up log ("memory", "redis at 127.0.0.1:6379, prefix aragora:cp:").
    fn describe(&self) -> String;

    /// The store's clock, in ms since the Unix epoch.
    fn now_ms(&self) -> u64;

    /// Events from now on (every transition's events, from every server of the store).
    fn subscribe(&self) -> broadcast::Receiver<Arc<EventRecord>>;

    /// Changes each time [`subscribe`](Self::subscribe)'s events skipped some that the store will never send: a
    /// shared store's reader that fell behind its stream's cap (the entries were trimmed before it read them), or
    /// a store that lost events it had sent (a Redis restarted with less than it had, a failover to a replica behind).
    /// Counted before the first event after the gap is sent, so a consumer that looks at it before acting on each
    /// event sees the gap no later than its place. The memory store never skips (its channel is closed at once).
    fn skipped_events(&self) -> watch::Receiver<u64> {
        watch::channel(0).1
    }

    /// Events after `after` (or the oldest kept), at most `limit`; `None` when `after` fell out of the buffer.
    async fn events_after(&self, after: Option<&str>, limit: usize) -> StoreResult<Option<Vec<Event>>>;

    /// Registers or re-registers an agent (upsert). A different session revokes the old session's leases.
    async fn register(&self, registration: AgentRegistration) -> StoreResult<Registered>;

    /// Records a heartbeat: keeps the agent alive, applies its reported status and `current_task_ids`, and
    /// reports the leases it lost.
    async fn heartbeat(&self, agent_id: &str, heartbeat: &HeartbeatRequest) -> StoreResult<HeartbeatOutcome>;

    /// Removes an agent; its tasks are requeued (counting a retry) or failed with `agent_lost`. Answers the tasks
    /// that are pending again and claimable now (the caller routes them).
    async fn unregister(&self, agent_id: &str) -> StoreResult<Vec<TaskId>>;

    /// Pauses or resumes an agent.
    async fn set_paused(&self, agent_id: &str, paused: bool) -> StoreResult<Agent>;

    /// One agent.
    async fn get_agent(&self, agent_id: &str) -> StoreResult<Option<Agent>>;

    /// Agents matching the filter, by id.
    async fn list_agents(&self, filter: &AgentFilter) -> StoreResult<Vec<Agent>>;

    /// Accepts a task: pending and indexed under its capability signature, or a replay of an idempotent submit.
    /// In the same step it makes the offer routing starts from: up to `offer_limit` claims waiting for such work.
    async fn submit(&self, task: NewTask, offer_limit: usize) -> StoreResult<Committed>;

    /// Accepts several tasks, all or nothing, each with its offer (shared by the tasks of one signature).
    async fn submit_batch(&self, tasks: Vec<NewTask>, offer_limit: usize) -> StoreResult<Vec<Committed>>;

    /// Grants the best pending tasks the agent can take (priority, then FIFO), at most `max_tasks`; with `wait`,
    /// registers that waiter in the same step when nothing was granted, so no submit can fall between the look and
    /// the registration. A claim is a sign of life: it keeps the agent alive and brings an offline or starting one
    /// back before the eligibility rule is asked.
    async fn claim_or_wait(&self, request: &ClaimRequest, wait: Option<WaitSpec>) -> StoreResult<ClaimAnswer>;

    /// [`claim_or_wait`](Self::claim_or_wait) without a wait: the granted tasks.
    async fn claim(&self, request: &ClaimRequest) -> StoreResult<Vec<Task>> {
        Ok(self.claim_or_wait(request, None).await?.tasks)
    }

    /// The next pending tasks the capabilities match, in claim order, without taking them (dispatch policies).
    async fn peek(&self, capabilities: &CapabilitySet, limit: usize) -> StoreResult<Vec<Task>>;

    /// The next pending tasks whose required capabilities are exactly `signature`, in claim order, taking none:
    /// work for one kind of claimer only (the deliberation orchestrators' sessions), which `peek` would bury under
    /// the tasks anyone may take.
    async fn peek_signature(&self, signature: &CapabilitySet, limit: usize) -> StoreResult<Vec<Task>>;

    /// Grants `task_id` to the agent if it is still pending and claimable by it.
    async fn claim_if(&self, task_id: &TaskId, request: &ClaimRequest) -> StoreResult<Option<Task>>;

    /// Registers a blocked claim's single-use waiter token, alive for `lifetime` (store time): the claim's block.
    /// Past it the claim has withdrawn the token — or the server holding the claim died without withdrawing it, and
    /// nobody would receive a task assigned through it — so an expired token is never listed nor assigned, and
    /// registrations drop expired ones.
    async fn register_waiter(&self, waiter: Waiter, lifetime: std::time::Duration) -> StoreResult<()>;

    /// Withdraws a waiter token: unused, or the task a submit assigned through it.
    async fn withdraw_waiter(&self, token: &str) -> StoreResult<Withdrawn>;

    /// The offer for a pending task (requeued, released, due after its backoff): up to `limit` live waiting claims
    /// that could take it, longest-waiting first, after the waiting place `after` if given. `None` when the task is
    /// not pending or none waits.
    async fn offer(&self, task_id: &TaskId, limit: usize, after: Option<u64>) -> StoreResult<Option<Offer>>;

    /// What is left of an offer for `task_id` by the time routing runs, where the store can tell without a round
    /// trip: `false` when the task is no longer pending (a claim took it, it was cancelled), else `claims` keeps
    /// only the tokens still live. So a strategy is not asked, and no decision is recorded, about work that has
    /// already gone, nor about claims that other routings took since the offer was made. A store that cannot
    /// tell cheaply keeps everything (`assign` checks the same atomically either way).
    fn still_offered(&self, _task_id: &TaskId, _claims: &mut Vec<&WaitingClaim>) -> bool {
        true
    }

    /// Grants `task_id` through the first of `tokens` that can still take it (task pending, token live, agent
    /// eligible and holding the capabilities); with `any_waiter`, then through any live waiting claim that can,
    /// longest-waiting first. So work that the strategy's choices cannot take goes to a waiting claim rather than
    /// waiting for the next claim to arrive.
    async fn assign(&self, task_id: &TaskId, tokens: &[&str], any_waiter: bool) -> StoreResult<Option<Assigned>>;

    /// The agent started the task (claimed → running).
    async fn start(&self, task_id: &TaskId, fence: &Fence) -> StoreResult<Task>;

    /// The agent reports progress (claimed → running, progress recorded).
    async fn progress(&self, task_id: &TaskId, fence: &Fence, progress: Value) -> StoreResult<Task>;

    /// The task completed with `result`. Repeating the same outcome on the same lease answers the stored task.
    async fn complete(&self, task_id: &TaskId, fence: &Fence, completion: Completion) -> StoreResult<Task>;

    /// Completes several tasks in one step; each outcome stands alone (a conflict on one does not undo others).
    async fn complete_batch(&self, outcomes: Vec<(TaskId, Fence, Completion)>) -> StoreResult<Vec<StoreResult<Task>>>;

    /// Completes a task and claims the agent's next work in one atomic step (BullMQ's worker pattern), registering
    /// `wait` when nothing was granted, as [`claim_or_wait`](Self::claim_or_wait).
    async fn complete_and_claim(
        &self,
        task_id: &TaskId,
        fence: &Fence,
        completion: Completion,
        next: &ClaimRequest,
        wait: Option<WaitSpec>,
    ) -> StoreResult<(Task, ClaimAnswer)>;

    /// The attempt failed: requeued while retries remain (if asked), else failed.
    async fn fail(&self, task_id: &TaskId, fence: &Fence, failure: &FailRequest) -> StoreResult<Task>;

    /// Cancels a pending or leased task (revoking its lease); cancelling a cancelled task is a no-op.
    async fn cancel(&self, task_id: &TaskId) -> StoreResult<Task>;

    /// Manual retry of a failed, timed-out or cancelled task: back to pending, `retries` reset.
    async fn retry(&self, task_id: &TaskId) -> StoreResult<Task>;

    /// Releases a committed grant that never reached its agent: back to pending at its place, no retry counted.
    /// Answers whether it did (the lease may have ended meanwhile).
    async fn release(&self, task_id: &TaskId, lease_id: &str) -> StoreResult<bool>;

    /// One task.
    async fn get_task(&self, task_id: &TaskId) -> StoreResult<Option<Task>>;

    /// Tasks matching the filter, newest first, one page.
    async fn list_tasks(&self, filter: &TaskFilter) -> StoreResult<TaskPage>;

    /// Ends attempts past their timeout (requeue or `timeout`); at most `limit`.
    async fn sweep_timeouts(&self, limit: usize) -> StoreResult<Swept>;

    /// Marks agents silent past the heartbeat timeout offline and requeues their tasks; at most `limit` agents.
    async fn sweep_offline(&self, limit: usize) -> StoreResult<Swept>;

    /// Makes requeued tasks whose backoff is over claimable; at most `limit`. Answers them (the caller routes them).
    async fn promote_due(&self, limit: usize) -> StoreResult<Vec<TaskId>>;

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

    /// Appends an event that no transition of the store makes (a deliberation's progress), in order with the rest.
    async fn record_event(&self, kind: EventKind, task_id: Option<&TaskId>, data: Value) -> StoreResult<()>;

    /// Keeps an agent alive (a blocked or refused claim is a sign of life) without consuming its revocation
    /// notices, which only a heartbeat answers.
    async fn keep_alive(&self, agent_id: &str) -> StoreResult<()>;

    /// Records that the agent was chosen (a non-dry-run `select_agent`): `last_assigned_at` in store time.
    async fn mark_assigned(&self, agent_id: &str) -> StoreResult<()>;

    /// The task an idempotency key already created for this submitter, if the key is live.
    async fn idempotent_task(&self, submitted_by: &str, key: &str) -> StoreResult<Option<(TaskId, String)>>;

    /// The counters.
    async fn stats(&self) -> StoreResult<FleetStats>;

    /// Whether the store answers, by the cheapest call that shows it: readiness asks twice a second, so it must not
    /// cost more with a larger fleet. By default a read of the counters.
    async fn check(&self) -> StoreResult<()> {
        self.stats().await.map(|_| ())
    }

    /// Where the audit log ends.
    async fn audit_head(&self) -> StoreResult<AuditHead>;

    /// Appends `entries` (chained by the caller after `expected_seq`) if the log still ends at `expected_seq`:
    /// `None` when it did, else where the log ends now (another server appended first; chain again from there,
    /// without a read of the end of one's own).
    async fn append_audit(&self, expected_seq: u64, entries: Vec<AuditEntry>) -> StoreResult<Option<AuditHead>>;

    /// Audit entries with `from <= seq <= to`, ascending (at most 1,000; missing ones left out).
    async fn audit_entries(&self, from: u64, to: u64) -> StoreResult<Vec<AuditEntry>>;

    /// The checkpoint that replaced the entries retention removed, if any.
    async fn audit_checkpoint(&self) -> StoreResult<Option<AuditCheckpoint>>;

    /// Removes the entries up to `checkpoint.seq` and keeps the checkpoint in their place; false (nothing changed)
    /// when the current checkpoint is already as far, or `checkpoint.seq` is past the log's end or more than 1,000
    /// entries past the current checkpoint.
    async fn trim_audit(&self, checkpoint: AuditCheckpoint) -> StoreResult<bool>;

    /// Creates schedule `record.id`, or replaces its definition: its next tick too when `replace_next` (the
    /// timing changed), otherwise the store keeps the one it has (a firing may have moved it meanwhile). Its
    /// firing record (last run, counts) is kept. A new schedule past [`crate::model::MAX_SCHEDULES`] → 409
    /// `too_many_schedules`.
    async fn put_schedule(&self, record: ScheduleRecord, replace_next: bool) -> StoreResult<ScheduleRecord>;

    /// One schedule.
    async fn schedule(&self, id: &str) -> StoreResult<Option<ScheduleRecord>>;

    /// Every schedule, by id.
    async fn schedules(&self) -> StoreResult<Vec<ScheduleRecord>>;

    /// Deletes a schedule; whether it existed.
    async fn delete_schedule(&self, id: &str) -> StoreResult<bool>;

    /// Schedules whose next tick is due at the store's clock, the most overdue first, at most `limit`; and when the
    /// next tick of the others comes due.
    async fn due_schedules(&self, limit: usize) -> StoreResult<Due<ScheduleRecord>>;

    /// Applies a firing if the schedule's next tick is still `advance.from_ms`; whether it did (false: another
    /// server fired it first, or it was changed or deleted).
    async fn advance_schedule(&self, advance: ScheduleAdvance) -> StoreResult<bool>;

    /// Adds or replaces a notification channel (kept as JSON). A new channel past [`crate::model::MAX_CHANNELS`] →
    /// 409 `too_many_channels`. The first channel moves the delivery cursor to the newest event: channels hear of
    /// what happens from their creation on.
    async fn put_channel(&self, channel: &Channel) -> StoreResult<()>;

    /// Every channel, by id.
    async fn channels(&self) -> StoreResult<Vec<Channel>>;

    /// Deletes a channel and its counters (its deliveries stay until they end); whether it existed.
    async fn delete_channel(&self, id: &str) -> StoreResult<bool>;

    /// The last event turned into deliveries (`None`: start from the oldest event kept).
    async fn notification_cursor(&self) -> StoreResult<Option<String>>;

    /// Adds `deliveries` (due now; one already known by id is skipped) and moves the cursor to `to`, if it is
    /// still at `from`; false, adding nothing, when another server moved it first.
    async fn enqueue_deliveries(&self, from: Option<&str>, to: &str, deliveries: Vec<Delivery>) -> StoreResult<bool>;

    /// Leases up to `limit` due deliveries (pending and due, or sending past their lease) for `lease_ms`, each
    /// counting one more attempt: a server that dies while sending leaves it to another once the lease ends. Also
    /// answers when the next delivery left comes due, in the same step.
    async fn claim_deliveries(&self, limit: usize, lease_ms: u64) -> StoreResult<Due<Delivery>>;

    /// Records how attempt `attempt` of a delivery ended, if it is still leased at that attempt (false when its
    /// lease ran out and another server took it).
    async fn finish_delivery(&self, id: &str, attempt: u32, result: AttemptResult) -> StoreResult<bool>;

    /// Makes a dead letter pending again, due now, with its attempts counted from 0. Not dead → 409
    /// `not_a_dead_letter`; `None` when there is no such delivery.
    async fn retry_delivery(&self, id: &str) -> StoreResult<Option<Delivery>>;

    /// Deliveries newest first, of one status when given, at most `limit`.
    async fn deliveries(&self, status: Option<DeliveryStatus>, limit: usize) -> StoreResult<Vec<Delivery>>;

    /// One delivery.
    async fn delivery(&self, id: &str) -> StoreResult<Option<Delivery>>;

    /// Each channel's counters, by channel id.
    async fn notification_figures(&self) -> StoreResult<BTreeMap<String, ChannelFigures>>;

    /// What waits and how long work waited for a claim, from the queue's own indexes (never a scan of the backlog).
    async fn queue_figures(&self) -> StoreResult<QueueFigures>;

    /// Moves a pending task to `priority`, in the place it would hold had it been submitted with it (FIFO by
    /// submission within the new level; with aging, its age is kept). Not pending → `InvalidTransition`.
    async fn prioritize(&self, task_id: &TaskId, priority: Priority) -> StoreResult<Task>;

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
    /// [`VIOLATIONS_KEPT`](crate::model::VIOLATIONS_KEPT).
    async fn record_violations(&self, violations: Vec<NewViolation>) -> StoreResult<Vec<Violation>>;

    /// The newest `limit` violations, newest first.
    async fn violations(&self, limit: usize) -> StoreResult<Vec<Violation>>;

    /// A reviewer's status change (and note) on violation `id`, stamped with the store's time; `None` when no kept
    /// violation has that id.
    async fn update_violation(&self, id: &str, update: ViolationUpdate) -> StoreResult<Option<Violation>>;

    /// The fleet's plugin records (without component bytes), by name.
    async fn plugin_records(&self) -> StoreResult<Vec<PluginRecord>>;

    /// The fleet's record of one name (without component bytes), if it has one.
    async fn plugin_record(&self, name: &str) -> StoreResult<Option<PluginRecord>>;

    /// One name's uploaded component: (sha256, bytes), if an upload is current.
    async fn plugin_component(&self, name: &str) -> StoreResult<Option<(String, Vec<u8>)>>;

    /// One name's candidate component (shadow or canary): (sha256, bytes), if it has one.
    async fn plugin_candidate_component(&self, name: &str) -> StoreResult<Option<(String, Vec<u8>)>>;

    /// Appends plugin decisions (a writer's batch), giving each its id (`<ms>-<seq>`, ascending); keeps the newest
    /// `keep` in all and the newest [`DECISIONS_PER_TASK`](crate::model::DECISIONS_PER_TASK) of each task, each
    /// task's for `retention_ms`. Answers the ids given, in the records' order (the records are not handed back:
    /// a deep copy of every routed decision cost more than the append, and only a live subscriber needs them).
    async fn append_decisions(
        &self,
        records: Vec<DecisionRecord>,
        keep: usize,
        retention_ms: u64,
    ) -> StoreResult<Vec<String>>;

    /// A task's decisions, oldest first.
    async fn task_decisions(&self, task_id: &str) -> StoreResult<Vec<DecisionRecord>>;

    /// Up to `limit` decisions (at most 1,000) after the id `after`, else from the time `since_ms`, else from the
    /// oldest kept; oldest first.
    async fn decisions(
        &self,
        after: Option<&str>,
        since_ms: Option<u64>,
        limit: usize,
    ) -> StoreResult<Vec<DecisionRecord>>;

    /// Removes decisions appended before `before_ms` (retention), at most `limit`; how many.
    async fn trim_decisions(&self, before_ms: u64, limit: usize) -> StoreResult<usize>;
}
