//! The in-memory store, the embedded default: all state behind one mutex, so every transition is atomic by
//! construction — except the decision and audit logs, each behind a lock of its own (no transition needs them, and
//! their batched appends must not hold up the transitions). Time comes from an injected [`Clock`].
//!
//! Indexes keep every hot operation independent of the backlog: pending work is kept per capability signature in
//! an ordered set by score (a claim looks only at the heads of the signatures its agent covers), leases are
//! ordered by deadline and agents by heartbeat expiry (sweeps take from the front, correcting the early keys signs of
//! life leave behind first), delayed retries by due time.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use parking_lot::Mutex;
use rand::RngExt;
use serde_json::{Value, json};
use tokio::sync::broadcast;

mod audit;
mod decisions;
mod notifications;
mod waiting;

use crate::FastMap;

use super::{
    Assigned, ClaimAnswer, ClaimRequest, Clock, Committed, Due, Offer, Store, StoreConfig, Swept, WaitSpec, Waiter,
    WaitingClaim, Withdrawn,
};
use crate::model::{
    Agent, AgentFilter, AgentHealth, AgentRegistration, AgentStatus, AttemptResult, AuditCheckpoint, AuditEntry,
    AuditHead, BreakerState, CLAIM_WAITS_KEPT, CandidateNumbers, CapabilitySet, Channel, ChannelFigures, CompactStr,
    Completion, DecisionRecord, Delivery, DeliveryStatus, Event, EventData, EventKind, EventRecord, FailKind,
    FailRequest, Fence, FleetStats, HealthState, HealthVerdict, HeartbeatOutcome, HeartbeatRequest, JsonText,
    MAX_SCHEDULES, NewTask, NewViolation, PLUGIN_HISTORY, PluginAction, PluginCandidate, PluginChange,
    PluginHistoryEntry, PluginRecord, Priority, QueueFigures, Refusal, Registered, RevokeReason, Revoked,
    ScheduleAdvance, ScheduleRecord, Standing, StoreError, StoreResult, Submitted, Task, TaskError, TaskFilter, TaskId,
    TaskPage, TaskStatus, VIOLATIONS_KEPT, Violation, ViolationUpdate, parse_event_id, rfc3339_ms,
};
use waiting::WaitingIndex;

/// Ordering key of a pending task: score (priority and age), then the store-issued sequence.
type QueueKey = (u64, u64, TaskId);

/// An offer looks at most this many times its limit of waiting claims (skipping refused agents and those at
/// capacity), so its cost stays bounded whatever waits.
const OFFER_SCAN_FACTOR: usize = 4;

/// Weight of the newest completion in an agent's rolling `avg_latency_ms`.
const LATENCY_SMOOTHING: f64 = 0.2;

/// Leases revoked per task that are remembered, to answer a late outcome with the right 409 code.
const REVOKED_HISTORY: usize = 8;

/// What the eligibility rule reads of an agent record at `now`: a breaker open past its cooldown counts as half-open
/// with no trial out (the transition itself happens when work is given).
fn standing(record: &AgentRecord, now: u64, cooldown_ms: u64) -> Standing {
    let (mut breaker, mut trial_in_flight) = (record.breaker.state, record.breaker.trial.is_some());
    if breaker == BreakerState::Open && now >= record.breaker.opened_at_ms + cooldown_ms {
        (breaker, trial_in_flight) = (BreakerState::HalfOpen, false);
    }
    Standing {
        paused: record.agent.paused,
        status: record.agent.status,
        health: record.health.status,
        breaker,
        trial_in_flight,
    }
}

struct TaskRecord {
    task: Task,
    /// Store-issued sequence: FIFO within a score.
    seq: u64,
    /// Priority score (DESIGN §4), fixed at submit so a requeued task returns to its place.
    score: u64,
    claimed_at_ms: Option<u64>,
    lease_deadline_ms: Option<u64>,
    available_at_ms: Option<u64>,
    /// The lease that produced the terminal outcome, for idempotent repeats.
    outcome_lease: Option<String>,
    /// Recently revoked leases and why.
    revoked: VecDeque<(String, RevokeReason)>,
    /// When it reached its terminal state (retention counts from here).
    finished_at_ms: Option<u64>,
    /// The lease and error of the last failure that requeued the task, so a repeat of that fail answers 200.
    requeued_by: Option<(String, String)>,
    /// When it last entered pending (store ms): its key in `waiting_since`, and where its claim wait starts.
    pending_since_ms: u64,
}

impl TaskRecord {
    fn key(&self) -> QueueKey {
        (self.score, self.seq, self.task.task_id.clone())
    }
}

struct AgentRecord {
    agent: Agent,
    last_heartbeat_ms: u64,
    /// `last_assigned_at` as store ms (strategies read ages, never timestamps).
    last_assigned_ms: Option<u64>,
    /// When it goes offline without a sign of life, store ms.
    expiry_ms: u64,
    /// Its key in the expiry index (`None`: off the index, offline until a sign of life): at or before `expiry_ms`,
    /// moved on only when found early at the index's front ([`expiry_front`]), so a sign of life reorders nothing.
    indexed_at: Option<u64>,
    /// Lease grant time per held task (for the heartbeat's `current_task_ids` rule).
    leases: BTreeMap<TaskId, u64>,
    /// Leases lost since the last heartbeat.
    revocations: Vec<Revoked>,
    health: HealthRecord,
    breaker: Breaker,
    /// Its capabilities with its address (`model::address_of`): what a claim that does not narrow them matches tasks
    /// on, kept so that a claim does not build the set.
    claims_match: CapabilitySet,
}

#[derive(Default)]
struct HealthRecord {
    status: HealthState,
    last_check_ms: Option<u64>,
    consecutive_failures: u32,
    latency_ms: Option<f64>,
    message: String,
    /// The agent is `failed` because of an unhealthy verdict (a healthy one clears it; a fatal report does not).
    failed_by_probe: bool,
    /// The status the agent had when an unhealthy verdict failed it: a draining agent goes back to draining.
    status_before_failure: Option<AgentStatus>,
}

#[derive(Default)]
struct Breaker {
    state: BreakerState,
    /// Recent failures: when, and the task (none for probe failures).
    failures: VecDeque<(u64, Option<TaskId>)>,
    opened_at_ms: u64,
    /// The half-open trial lease.
    trial: Option<TaskId>,
}

#[derive(Default)]
struct State {
    seq: u64,
    /// Boxed: a record is several hundred bytes, and the table moves its entries each time it grows. Boxed, a
    /// rehash moves pointers, and the table's spare capacity costs pointers, not records.
    tasks: FastMap<TaskId, Box<TaskRecord>>,
    /// Pending, claimable work per signature.
    ready: FastMap<CapabilitySet, BTreeSet<QueueKey>>,
    /// Requeued tasks not claimable before their time.
    delayed: BTreeSet<(u64, TaskId)>,
    /// Leases by deadline.
    leases: BTreeSet<(u64, TaskId)>,
    /// All tasks by sequence, for listing newest first.
    by_seq: BTreeMap<u64, TaskId>,
    /// Terminal tasks by the time they ended, for retention.
    finished: BTreeSet<(u64, TaskId)>,
    /// Pending tasks by when they entered pending: the longest wait is the first.
    waiting_since: BTreeSet<(u64, TaskId)>,
    /// By id, in a hash table: every step of a task looks its agent up (an offer, each candidate's), and a tree's
    /// lookups cost more with every agent registered; `list_agents` and `all_health` sort by id, the retention sweep by
    /// silence (docs/BENCHMARKS.md). Boxed for the reason `tasks` is.
    agents: FastMap<String, Box<AgentRecord>>,
    /// Agents by a key at or before their heartbeat expiry (`AgentRecord::indexed_at`), made exact at the front by
    /// [`expiry_front`] before it is read; swept agents are off it.
    expiry: BTreeSet<(u64, String)>,
    /// Claims waiting for routed work.
    waiting: WaitingIndex,
    /// Tokens consumed by `assign`: the task and lease, answered at withdrawal, and when the entry may go (the
    /// token's own deadline: a claim that took its task from the wake-up never withdraws).
    consumed: FastMap<Arc<str>, (TaskId, String, u64)>,
    /// `consumed` by deadline, to drop entries nobody will withdraw.
    consumed_until: BTreeSet<(u64, Arc<str>)>,
    idempotency: FastMap<(String, String), (TaskId, String, u64)>,
    /// The last `event_buffer` events, oldest first, for `events_after`: each shared with the channel and the
    /// transition, so the buffer is a ring of pointers (see `emit_typed`). Up to `EVICTION_BATCH - 1` older ones
    /// wait in front for their batch's eviction ([`evict_oldest`]); readers skip them.
    events: VecDeque<Arc<EventRecord>>,
    event_seq: u64,
    last_event_ms: u64,
    stats: Counters,
    /// Fleet plugin records and the current upload's bytes, by name.
    plugins: BTreeMap<String, (PluginRecord, Option<Vec<u8>>)>,
    /// Each name's candidate component (shadow or canary): (sha256, bytes).
    candidates: BTreeMap<String, (String, Vec<u8>)>,
    /// Policy violations, newest last, and the last id number issued.
    violations: VecDeque<Violation>,
    violation_seq: u64,
    /// Live servers and when their presence expires (store ms).
    servers: BTreeMap<String, u64>,
    /// Schedules by id (at most `MAX_SCHEDULES`: the due scan stays small).
    schedules: BTreeMap<String, ScheduleRecord>,
    notifications: notifications::Notifications,
}

#[derive(Default)]
struct Counters {
    tasks_by_status: BTreeMap<TaskStatus, u64>,
    pending_by_priority: BTreeMap<Priority, u64>,
    tasks_by_type: BTreeMap<String, u64>,
    last_claim_examined: u64,
    /// The newest grants' waits in pending (ms), newest first.
    claim_waits: VecDeque<u64>,
}

/// A promote or rollback needs a candidate, and the one the caller saw when it names one.
fn check_candidate(name: &str, candidate: Option<&PluginCandidate>, expected: Option<&str>) -> StoreResult<()> {
    match candidate {
        None => Err(StoreError::conflict("no_candidate", format!("{name} has no shadow or canary version"))),
        Some(candidate) if expected.is_some_and(|sha| sha != candidate.sha256) => Err(StoreError::conflict(
            "candidate_changed",
            format!("{name}'s candidate is now {}, not the version asked for", candidate.sha256),
        )),
        Some(_) => Ok(()),
    }
}

/// The in-memory store.
pub struct MemoryStore {
    config: StoreConfig,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
    /// Set when a transition panicked: its changes may be half-applied, so the store refuses every call from then
    /// on (503 `store_unavailable`, `/readyz` fails) rather than serve state no transition would have produced.
    broken: AtomicBool,
    /// Held while a transition's events are sent, taken before its state lock is released (see `transition`).
    publishing: Mutex<()>,
    events: broadcast::Sender<Arc<EventRecord>>,
    /// Stamped on every event (shared, so an event copies a pointer rather than the string).
    server_id: Arc<str>,
    /// The decision log, under a lock of its own (no transition needs it).
    decisions: Mutex<decisions::Decisions>,
    /// The audit log, under a lock of its own (no transition needs it).
    audit: Mutex<audit::AuditChain>,
}

impl MemoryStore {
    /// A store with `config`, reading time from `clock`.
    pub fn new(config: StoreConfig, clock: Arc<dyn Clock>) -> Self {
        let (events, _) = broadcast::channel(config.event_buffer.clamp(16, 65_536));
        MemoryStore {
            server_id: Arc::from(config.server_id.as_str()),
            config,
            clock,
            state: Mutex::new(State::default()),
            broken: AtomicBool::new(false),
            publishing: Mutex::new(()),
            events,
            decisions: Mutex::new(decisions::Decisions::default()),
            audit: Mutex::new(audit::AuditChain::default()),
        }
    }

    /// The state, unless a transition panicked: then nothing it holds can be trusted.
    fn lock(&self) -> StoreResult<parking_lot::MutexGuard<'_, State>> {
        self.usable()?;
        Ok(self.state.lock())
    }

    /// The audit chain, unless a transition panicked.
    fn audit(&self) -> StoreResult<parking_lot::MutexGuard<'_, audit::AuditChain>> {
        self.usable()?;
        Ok(self.audit.lock())
    }

    /// Refuses the state and the audit chain once a transition panicked: nothing it may have half-applied is served.
    fn usable(&self) -> StoreResult<()> {
        if self.broken.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable(
                "the memory store stopped after an internal error left a transition half-applied (see the server \
                 log); restart the server"
                    .into(),
            ));
        }
        Ok(())
    }

    fn score(&self, priority: Priority, seq: u64, now: u64) -> u64 {
        match self.config.priority_aging_ms {
            None => (u64::from(priority.level()) << 40) + seq,
            Some(aging) => now + u64::from(priority.level()) * aging,
        }
    }

    /// Runs one transition under the lock and publishes the events it emitted.
    fn transition<R>(&self, f: impl FnOnce(&mut Tx<'_>) -> StoreResult<R>) -> StoreResult<R> {
        // The clock is read under the lock (conformance fix): reading `now` before locking let a transition that
        // waited for the lock commit with an older time than the one before it (time going backwards, duplicate
        // event ids). Events must reach subscribers in log order (a client resuming after the last id it saw
        // could miss one otherwise), but sending wakes the subscribers' tasks, often on the other thread, which
        // is too slow to do under the lock every request takes: the publication lock is taken before the state
        // lock is released, so the next transition runs while this one's events go out, still in commit order.
        let mut state = self.lock()?;
        let now = self.clock.now_ms();
        let mut tx = Tx { state: &mut state, store: self, now, emitted: Vec::new(), requeued: Vec::new() };
        // A panic inside `f` (a broken invariant: every record a transition touches was looked up by it) unwinds
        // through this guard, which marks the store broken before the lock is released.
        let on_panic = BreakOnPanic(&self.broken);
        let result = f(&mut tx);
        std::mem::forget(on_panic);
        let emitted = std::mem::take(&mut tx.emitted);
        if emitted.is_empty() {
            return result;
        }
        let publishing = self.publishing.lock();
        drop(state);
        for event in emitted {
            let _ = self.events.send(event);
        }
        drop(publishing);
        result
    }
}

/// Marks the store broken when dropped, which only happens when a transition unwinds (it is forgotten otherwise).
struct BreakOnPanic<'a>(&'a AtomicBool);

impl Drop for BreakOnPanic<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
        tracing::error!("a memory store transition panicked: the store refuses every call until the server restarts");
    }
}

/// One transition in progress: the locked state, the time it runs at, and the events it emitted.
///
/// Its helpers take ids of records the transition has already looked up (or just inserted) under the same lock, so
/// their `expect("task exists")`/`expect("agent exists")` state invariants, not outcomes a caller can cause: every
/// "not found" a client can cause is an error of the transition's first lookup. Should an invariant break anyway,
/// the panic marks the store broken (see `MemoryStore::transition`) rather than letting it run on half-applied.
struct Tx<'a> {
    state: &'a mut State,
    store: &'a MemoryStore,
    now: u64,
    emitted: Vec<Arc<EventRecord>>,
    /// Tasks this transition put back to pending, claimable now: what the caller routes.
    requeued: Vec<TaskId>,
}

impl Tx<'_> {
    /// Emits an event whose data is kept as JSON (the kinds a task's way does not emit every time).
    fn emit(&mut self, kind: EventKind, task_id: Option<&TaskId>, agent_id: Option<&str>, data: Value) {
        self.emit_typed(kind, task_id, agent_id, EventData::Json(Arc::new(data)));
    }

    /// Emits an event whose data is typed (the kinds every task's way emits): one allocation, its record.
    fn emit_typed(&mut self, kind: EventKind, task_id: Option<&TaskId>, agent_id: Option<&str>, data: EventData) {
        let state = &mut *self.state;
        // `<=`, not `==` (conformance fix): an event at an earlier ms than the last one keeps the last ms and must
        // take the next sequence number, not restart at 0 (which repeated an id already issued).
        if self.now <= state.last_event_ms {
            state.event_seq += 1;
        } else {
            state.last_event_ms = self.now.max(state.last_event_ms);
            state.event_seq = 0;
        }
        // One allocation shared by the buffer, the channel and the event pump. Kept inline, each record (216 bytes)
        // was copied into the buffer and into the channel's slot, out of both, and dropped from each: 3.5 % of a
        // task's instructions (docs/BENCHMARKS.md, "Events shared, not copied").
        let event = Arc::new(EventRecord {
            ms: state.last_event_ms,
            seq: state.event_seq,
            kind,
            time_ms: self.now,
            server_id: self.store.server_id.clone(),
            task_id: task_id.map(|t| CompactStr::new(t.as_str())),
            agent_id: agent_id.map(CompactStr::new),
            data,
        });
        state.events.push_back(event.clone());
        let surplus = state.events.len().saturating_sub(self.store.config.event_buffer);
        if surplus >= EVICTION_BATCH {
            evict_oldest(&mut state.events, surplus);
        }
        self.emitted.push(event);
    }

    fn task(&mut self, task_id: &TaskId) -> StoreResult<&mut TaskRecord> {
        self.state.tasks.get_mut(task_id).map(Box::as_mut).ok_or_else(|| StoreError::TaskNotFound(task_id.clone()))
    }

    fn set_status(&mut self, task_id: &TaskId, status: TaskStatus) {
        let record = self.state.tasks.get_mut(task_id).expect("task exists");
        let old = record.task.status;
        if old == status {
            return;
        }
        let priority = record.task.priority;
        record.task.status = status;
        let counters = &mut self.state.stats;
        *counters.tasks_by_status.entry(old).or_default() -= 1;
        *counters.tasks_by_status.entry(status).or_default() += 1;
        if old == TaskStatus::Pending {
            *counters.pending_by_priority.entry(priority).or_default() -= 1;
            self.state.waiting_since.remove(&(record.pending_since_ms, task_id.clone()));
            if status == TaskStatus::Claimed {
                counters.claim_waits.push_front(self.now.saturating_sub(record.pending_since_ms));
                counters.claim_waits.truncate(CLAIM_WAITS_KEPT);
            }
        }
        if status == TaskStatus::Pending {
            *counters.pending_by_priority.entry(priority).or_default() += 1;
            record.pending_since_ms = self.now;
            self.state.waiting_since.insert((self.now, task_id.clone()));
        }
        if old.is_terminal()
            && let Some(ended) = record.finished_at_ms.take()
        {
            self.state.finished.remove(&(ended, task_id.clone()));
        }
        if status.is_terminal() {
            record.task.completed_at = Some(rfc3339_ms(self.now));
            record.finished_at_ms = Some(self.now);
            self.state.finished.insert((self.now, task_id.clone()));
        }
    }

    /// Puts a pending task into the claim index (or the delayed set while it waits out a backoff).
    fn enqueue(&mut self, task_id: &TaskId) {
        let record = &self.state.tasks[task_id];
        match record.available_at_ms {
            Some(at) if at > self.now => {
                self.state.delayed.insert((at, task_id.clone()));
            }
            _ => {
                let key = record.key();
                let signature = record.task.required_capabilities.clone();
                self.state.ready.entry(signature).or_default().insert(key);
            }
        }
    }

    fn dequeue(&mut self, task_id: &TaskId) {
        let record = &self.state.tasks[task_id];
        let key = record.key();
        if let Some(at) = record.available_at_ms {
            self.state.delayed.remove(&(at, task_id.clone()));
        }
        let signature = &record.task.required_capabilities;
        if let Some(queue) = self.state.ready.get_mut(signature) {
            queue.remove(&key);
            if queue.is_empty() {
                self.state.ready.remove(signature);
            }
        }
    }

    /// Moves delayed tasks whose backoff is over into the claim index.
    /// Answers the tasks it made claimable, at most `limit`.
    fn promote_due(&mut self, limit: usize) -> Vec<TaskId> {
        let mut promoted = Vec::new();
        while promoted.len() < limit
            && let Some((at, task_id)) = self.state.delayed.first().cloned()
        {
            if at > self.now {
                break;
            }
            self.state.delayed.pop_first();
            if let Some(record) = self.state.tasks.get_mut(&task_id) {
                record.available_at_ms = None;
                record.task.available_at = None;
                self.enqueue(&task_id);
                promoted.push(task_id);
            }
        }
        promoted
    }

    fn agent(&mut self, agent_id: &str) -> StoreResult<&mut AgentRecord> {
        self.state
            .agents
            .get_mut(agent_id)
            .map(Box::as_mut)
            .ok_or_else(|| StoreError::AgentNotFound(agent_id.to_string()))
    }

    fn check_session(&mut self, agent_id: &str, session: Option<&str>) -> StoreResult<()> {
        let record = self.agent(agent_id)?;
        match session {
            Some(session) if session != record.agent.session_id => Err(StoreError::conflict(
                "session_replaced",
                format!("session {session} of agent {agent_id} was replaced by a newer registration"),
            )),
            _ => Ok(()),
        }
    }

    /// Keeps an agent alive: heartbeat time, expiry, and `offline` → `ready`.
    fn touch(&mut self, agent_id: &str) {
        let now = self.now;
        let timeout = self.store.config.heartbeat_timeout_ms;
        let record = self.state.agents.get_mut(agent_id).expect("agent exists");
        record.last_heartbeat_ms = now;
        record.expiry_ms = now + timeout;
        record.agent.last_heartbeat = rfc3339_ms(now);
        // Signs of life only move an expiry later (unless the clock went back): the index keeps the earlier key
        // and `expiry_front` moves it when it comes to the front, once a heartbeat timeout instead of every touch.
        match record.indexed_at {
            Some(at) if at <= record.expiry_ms => {}
            indexed => {
                if let Some(at) = indexed {
                    self.state.expiry.remove(&(at, agent_id.to_string()));
                }
                record.indexed_at = Some(record.expiry_ms);
                self.state.expiry.insert((record.expiry_ms, agent_id.to_string()));
            }
        }
        if matches!(record.agent.status, AgentStatus::Offline | AgentStatus::Starting) {
            self.set_agent_status(agent_id, AgentStatus::Ready);
        }
        self.refresh_capacity(agent_id);
    }

    fn set_agent_status(&mut self, agent_id: &str, status: AgentStatus) {
        let record = self.state.agents.get_mut(agent_id).expect("agent exists");
        let old = record.agent.status;
        if old == status {
            return;
        }
        record.agent.status = status;
        if old == AgentStatus::Failed {
            // Whatever made it leave `failed`, a later healthy verdict must not undo a later fatal report.
            record.health.failed_by_probe = false;
        }
        self.emit_typed(
            EventKind::AgentStatusChanged,
            None,
            Some(agent_id),
            EventData::StatusChanged { from: old, to: status },
        );
    }

    /// Re-derives `in_flight`, `current_task_ids` and the capacity status (`busy` at capacity, back to `ready`).
    fn refresh_capacity(&mut self, agent_id: &str) {
        let record = self.state.agents.get_mut(agent_id).expect("agent exists");
        record.agent.in_flight = record.leases.len() as u32;
        record.agent.current_task_ids = record.leases.keys().cloned().collect();
        let at_capacity = record.agent.in_flight >= record.agent.max_concurrent_tasks;
        let status = record.agent.status;
        if at_capacity && status == AgentStatus::Ready {
            self.set_agent_status(agent_id, AgentStatus::Busy);
        } else if !at_capacity && status == AgentStatus::Busy {
            self.set_agent_status(agent_id, AgentStatus::Ready);
        }
    }

    /// Grants a pending task to an agent. A routed grant names the waiter token it consumed in its event, so the
    /// server holding that blocked claim wakes it (the router may run on another server).
    fn grant(&mut self, task_id: &TaskId, agent_id: &str, via: &'static str, waiter: Option<&str>) -> Task {
        let now = self.now;
        let lease_id = crate::model::random_hex_id();
        let record = self.state.tasks.get_mut(task_id).expect("task exists");
        record.task.attempt += 1;
        record.task.lease_id = Some(lease_id);
        record.task.assigned_agent = Some(agent_id.to_string());
        record.task.claimed_at = Some(rfc3339_ms(now));
        record.task.started_at = None;
        record.task.progress = None;
        record.task.unfenced = false;
        record.requeued_by = None;
        record.claimed_at_ms = Some(now);
        let deadline = now + u64::from(record.task.timeout_seconds) * 1000;
        record.lease_deadline_ms = Some(deadline);
        let attempt = record.task.attempt;
        self.state.leases.insert((deadline, task_id.clone()));
        self.set_status(task_id, TaskStatus::Claimed);
        let agent = self.state.agents.get_mut(agent_id).expect("agent exists");
        agent.leases.insert(task_id.clone(), now);
        agent.agent.last_assigned_at = Some(rfc3339_ms(now));
        agent.last_assigned_ms = Some(now);
        if agent.breaker.state == BreakerState::HalfOpen && agent.breaker.trial.is_none() {
            agent.breaker.trial = Some(task_id.clone());
        }
        self.refresh_capacity(agent_id);
        let data = EventData::Claimed { attempt, via, waiter: waiter.map(CompactStr::new) };
        self.emit_typed(EventKind::TaskClaimed, Some(task_id), Some(agent_id), data);
        self.state.tasks[task_id].task.clone()
    }

    /// Ends the current lease of a leased task: off the deadline index and the agent's leases.
    fn drop_lease(&mut self, task_id: &TaskId, revoked: Option<RevokeReason>) {
        let record = self.state.tasks.get_mut(task_id).expect("task exists");
        if let Some(deadline) = record.lease_deadline_ms.take() {
            self.state.leases.remove(&(deadline, task_id.clone()));
        }
        let lease = record.task.lease_id.take();
        if let (Some(lease), Some(reason)) = (&lease, revoked) {
            record.revoked.push_back((lease.clone(), reason));
            while record.revoked.len() > REVOKED_HISTORY {
                record.revoked.pop_front();
            }
        }
        let holder = record.task.assigned_agent.clone();
        if let Some(agent_id) = holder
            && let Some(agent) = self.state.agents.get_mut(&agent_id)
            && agent.leases.remove(task_id).is_some()
        {
            if agent.breaker.trial.as_ref() == Some(task_id) && agent.breaker.state == BreakerState::HalfOpen {
                // Decided by `breaker_success`/`breaker_failure` when the outcome is known; a trial that just
                // ends (cancelled, released) frees the slot for another one.
                agent.breaker.trial = None;
            }
            if let Some(reason) = revoked {
                agent.revocations.push(Revoked { task_id: task_id.clone(), reason });
            }
            self.refresh_capacity(&agent_id);
        }
    }

    /// Puts a task back to pending at its original place, optionally counting a retry and applying backoff.
    fn requeue(&mut self, task_id: &TaskId, count_retry: bool, error: Option<TaskError>) {
        let now = self.now;
        let config = &self.store.config;
        let (base, cap) = (config.retry_backoff_base_ms, config.retry_backoff_max_ms);
        let record = self.state.tasks.get_mut(task_id).expect("task exists");
        if count_retry {
            record.task.retries += 1;
        }
        if let Some(error) = error {
            record.task.last_error = Some(error);
        }
        record.task.claimed_at = None;
        record.task.started_at = None;
        record.claimed_at_ms = None;
        if count_retry && base > 0 {
            let exponent = record.task.retries.saturating_sub(1).min(30);
            let backoff = base.saturating_mul(1u64 << exponent).min(cap);
            let jitter = rand::rng().random_range(0..=backoff / 2);
            let at = now + backoff / 2 + jitter;
            record.available_at_ms = Some(at);
            record.task.available_at = Some(rfc3339_ms(at));
        }
        self.set_status(task_id, TaskStatus::Pending);
        self.enqueue(task_id);
        if self.state.tasks[task_id].available_at_ms.is_none() {
            self.requeued.push(task_id.clone());
        }
    }

    /// Agent loss for one lease: requeue counting a retry, or fail with `agent_lost` when retries are exhausted.
    fn lose(&mut self, task_id: &TaskId, why: &str) {
        self.drop_lease(task_id, Some(RevokeReason::Reassigned));
        let record = &self.state.tasks[task_id];
        let error = TaskError { code: "agent_lost".into(), message: why.to_string() };
        if record.task.retries < record.task.max_retries {
            self.requeue(task_id, true, Some(error.clone()));
            self.emit(EventKind::TaskRetried, Some(task_id), None, json!({"reason": "agent_lost", "error": why}));
        } else {
            let record = self.state.tasks.get_mut(task_id).expect("task exists");
            record.task.error = Some(why.to_string());
            record.task.last_error = Some(error);
            self.set_status(task_id, TaskStatus::Failed);
            self.emit(EventKind::TaskFailed, Some(task_id), None, json!({"reason": "agent_lost", "error": why}));
        }
    }

    /// Takes every lease of an agent away (offline, unregistered, session replaced).
    fn lose_all(&mut self, agent_id: &str, why: &str) {
        let held: Vec<TaskId> = self.state.agents[agent_id].leases.keys().cloned().collect();
        for task_id in held {
            self.lose(&task_id, why);
        }
    }

    fn remove_waiters_of(&mut self, agent_id: &str) {
        self.state.waiting.remove_agent(agent_id);
    }

    /// The eligibility rule ([`Standing::refusal`]) for an agent now. An open breaker past its cooldown turns
    /// half-open here (with its event), so the answer is current; an agent that is not registered is offline.
    fn refusal(&mut self, agent_id: &str) -> Option<Refusal> {
        let now = self.now;
        let cooldown = self.store.config.breaker_cooldown_ms;
        let Some(record) = self.state.agents.get_mut(agent_id) else { return Some(Refusal::Offline) };
        if record.breaker.state == BreakerState::Open && now >= record.breaker.opened_at_ms + cooldown {
            record.breaker.state = BreakerState::HalfOpen;
            record.breaker.trial = None;
            self.emit(EventKind::BreakerChanged, None, Some(agent_id), json!({"from": "open", "to": "half_open"}));
        }
        standing(&self.state.agents[agent_id], now, cooldown).refusal()
    }

    /// Whether the agent may be given work now (the rule finds no refusal).
    fn eligible(&mut self, agent_id: &str) -> bool {
        self.refusal(agent_id).is_none()
    }

    /// Counts a failure against the agent's breaker (agent-kind failures, attempt timeouts, unhealthy probes):
    /// it opens after `breaker_threshold` failures over at least two distinct tasks within the window, and a
    /// failed half-open trial opens it again.
    fn breaker_failure(&mut self, agent_id: &str, task_id: Option<&TaskId>) {
        let now = self.now;
        let config = &self.store.config;
        let (threshold, window) = (config.breaker_threshold as usize, config.breaker_window_ms);
        let Some(record) = self.state.agents.get_mut(agent_id) else { return };
        let breaker = &mut record.breaker;
        breaker.failures.push_back((now, task_id.cloned()));
        while breaker.failures.front().is_some_and(|(at, _)| *at + window < now) {
            breaker.failures.pop_front();
        }
        let distinct_tasks: BTreeSet<&TaskId> = breaker.failures.iter().filter_map(|(_, t)| t.as_ref()).collect();
        let from = breaker.state;
        let open = match from {
            BreakerState::Closed => breaker.failures.len() >= threshold.max(1) && distinct_tasks.len() >= 2,
            BreakerState::HalfOpen => true,
            BreakerState::Open => false,
        };
        if open {
            breaker.state = BreakerState::Open;
            breaker.opened_at_ms = now;
            breaker.trial = None;
            self.emit(EventKind::BreakerChanged, None, Some(agent_id), json!({"from": from.as_str(), "to": "open"}));
        }
    }

    /// A task the agent completed: a successful half-open trial closes its breaker.
    fn breaker_success(&mut self, agent_id: &str, task_id: &TaskId) {
        let Some(record) = self.state.agents.get_mut(agent_id) else { return };
        if record.breaker.state == BreakerState::HalfOpen && record.breaker.trial.as_ref() == Some(task_id) {
            record.breaker = Breaker::default();
            self.emit(EventKind::BreakerChanged, None, Some(agent_id), json!({"from": "half_open", "to": "closed"}));
        }
    }

    fn health_of(&self, agent_id: &str) -> Option<AgentHealth> {
        let record = self.state.agents.get(agent_id)?;
        Some(AgentHealth {
            agent_id: agent_id.to_string(),
            status: record.health.status,
            last_check: record.health.last_check_ms.map(rfc3339_ms),
            consecutive_failures: record.health.consecutive_failures,
            latency_ms: record.health.latency_ms,
            message: record.health.message.clone(),
            breaker: record.breaker.state,
            breaker_opened_at: (record.breaker.state != BreakerState::Closed)
                .then(|| rfc3339_ms(record.breaker.opened_at_ms)),
            breaker_failures: record.breaker.failures.len() as u32,
            breaker_trial: record.breaker.trial.as_ref().map(ToString::to_string),
        })
    }

    /// The best claimable task for `capabilities` (lowest score among the signatures it covers), counting how
    /// many index heads it examined.
    fn best_for(&mut self, capabilities: &CapabilitySet, skip: &BTreeSet<TaskId>) -> Option<TaskId> {
        let mut best: Option<&QueueKey> = None;
        let mut examined = 0;
        for (signature, queue) in &self.state.ready {
            if !signature.is_subset_of(capabilities) {
                continue;
            }
            for key in queue.iter().filter(|k| !skip.contains(&k.2)).take(1) {
                examined += 1;
                if best.is_none_or(|b| key < b) {
                    best = Some(key);
                }
            }
        }
        let found = best.map(|k| k.2.clone());
        self.state.stats.last_claim_examined = examined;
        found
    }

    /// Checks that `fence` holds the task's current lease; explains a revoked one.
    fn check_fence(&mut self, task_id: &TaskId, fence: &Fence) -> StoreResult<()> {
        let record = self.task(task_id)?;
        let status = record.task.status;
        let revoked_reason = |lease: &str| record.revoked.iter().find(|(l, _)| l == lease).map(|(_, r)| *r);
        match (status, fence) {
            (TaskStatus::Claimed | TaskStatus::Running, Fence::Lease(lease)) => {
                if record.task.lease_id.as_deref() == Some(lease.as_str()) {
                    return Ok(());
                }
                let code = revoked_reason(lease).map(RevokeReason::conflict_code).unwrap_or("lease_lost");
                Err(StoreError::conflict(code, format!("lease {lease} no longer holds task {task_id}")))
            }
            (TaskStatus::Claimed | TaskStatus::Running, Fence::Agent(agent)) => {
                if record.task.assigned_agent.as_deref() == Some(agent.as_str()) {
                    Ok(())
                } else {
                    Err(StoreError::conflict("lease_lost", format!("agent {agent} does not hold task {task_id}")))
                }
            }
            (TaskStatus::Claimed | TaskStatus::Running, Fence::Unfenced) => Ok(()),
            (TaskStatus::Cancelled, _) => {
                Err(StoreError::conflict("task_cancelled", format!("task {task_id} was cancelled")))
            }
            (TaskStatus::Timeout, _) => Err(StoreError::conflict("task_timeout", format!("task {task_id} timed out"))),
            (_, Fence::Lease(lease)) if revoked_reason(lease).is_some() => {
                let code = revoked_reason(lease).map(RevokeReason::conflict_code).unwrap_or("lease_lost");
                Err(StoreError::conflict(code, format!("lease {lease} no longer holds task {task_id}")))
            }
            _ => Err(StoreError::conflict(
                "lease_lost",
                format!("task {task_id} is {} and held by no lease of yours", status.as_str()),
            )),
        }
    }

    /// For an outcome on a finished task: the same outcome from the same holder answers the stored task; anything
    /// else conflicts. Returns `None` when the task is not finished (the outcome should proceed).
    fn repeated_outcome(&mut self, task_id: &TaskId, fence: &Fence, outcome: Outcome<'_>) -> StoreResult<Option<Task>> {
        let record = self.task(task_id)?;
        let status = record.task.status;
        if let (Fence::Lease(lease), Some((requeued_lease, error))) = (fence, &record.requeued_by)
            && lease == requeued_lease
        {
            return match outcome {
                Outcome::Failed(again) if again == error.as_str() => Ok(Some(record.task.clone())),
                _ => Err(StoreError::conflict(
                    "outcome_conflict",
                    format!("lease {lease} already failed task {task_id}, which was requeued"),
                )),
            };
        }
        if !matches!(status, TaskStatus::Completed | TaskStatus::Failed) {
            return Ok(None);
        }
        let same_holder = match fence {
            Fence::Lease(lease) => record.outcome_lease.as_deref() == Some(lease.as_str()),
            Fence::Agent(agent) => record.task.assigned_agent.as_deref() == Some(agent.as_str()),
            Fence::Unfenced => true,
        };
        let same_outcome = match outcome {
            Outcome::Completed(result) => {
                status == TaskStatus::Completed && record.task.result.as_ref() == Some(result)
            }
            Outcome::Failed(error) => status == TaskStatus::Failed && record.task.error.as_deref() == Some(error),
        };
        if same_holder && same_outcome {
            return Ok(Some(record.task.clone()));
        }
        if same_holder {
            return Err(StoreError::conflict(
                "outcome_conflict",
                format!("task {task_id} already ended {} with a different outcome", status.as_str()),
            ));
        }
        Err(StoreError::conflict("lease_lost", format!("task {task_id} already ended {}", status.as_str())))
    }

    /// Claimed → running, if not yet.
    fn mark_started(&mut self, task_id: &TaskId) {
        if self.state.tasks[task_id].task.status == TaskStatus::Claimed {
            let now = self.now;
            self.state.tasks.get_mut(task_id).expect("task exists").task.started_at = Some(rfc3339_ms(now));
            self.set_status(task_id, TaskStatus::Running);
            let agent = self.state.tasks[task_id].task.assigned_agent.clone();
            self.emit(EventKind::TaskStarted, Some(task_id), agent.as_deref(), json!({}));
        }
    }

    fn record_outcome_lease(&mut self, task_id: &TaskId, fence: &Fence) {
        let record = self.state.tasks.get_mut(task_id).expect("task exists");
        record.outcome_lease = record.task.lease_id.clone();
        record.task.unfenced = matches!(fence, Fence::Unfenced);
    }

    /// Completes a leased task (or answers a repeat of the same outcome).
    fn complete(&mut self, task_id: &TaskId, fence: &Fence, completion: Completion) -> StoreResult<Task> {
        let Completion { result, latency_ms } = completion;
        if let Some(stored) = self.repeated_outcome(task_id, fence, Outcome::Completed(&result))? {
            return Ok(stored);
        }
        self.check_fence(task_id, fence)?;
        let now = self.now;
        self.record_outcome_lease(task_id, fence);
        let record = self.state.tasks.get_mut(task_id).expect("task exists");
        record.task.result = Some(result);
        // The agent's own figure when it sent one; else claim to completion as the store saw it.
        let latency = latency_ms.or(record.claimed_at_ms.map(|at| now.saturating_sub(at) as f64));
        let agent_id = record.task.assigned_agent.clone();
        if let Some(agent_id) = &agent_id {
            self.breaker_success(agent_id, task_id);
        }
        self.drop_lease(task_id, None);
        self.set_status(task_id, TaskStatus::Completed);
        if let Some(agent_id) = &agent_id
            && let Some(agent) = self.state.agents.get_mut(agent_id)
        {
            agent.agent.tasks_completed += 1;
            if let Some(latency) = latency {
                // Rolling: an exponentially weighted average, so an agent that got slower shows it within a few
                // tasks (the first completion sets it outright).
                agent.agent.avg_latency_ms = if agent.agent.tasks_completed == 1 {
                    latency
                } else {
                    agent.agent.avg_latency_ms * (1.0 - LATENCY_SMOOTHING) + latency * LATENCY_SMOOTHING
                };
            }
        }
        let unfenced = matches!(fence, Fence::Unfenced);
        self.emit_typed(
            EventKind::TaskCompleted,
            Some(task_id),
            agent_id.as_deref(),
            EventData::Completed { unfenced },
        );
        Ok(self.state.tasks[task_id].task.clone())
    }

    /// Grants the best pending tasks the agent can take (priority, then FIFO), at most `max_tasks`.
    /// The capabilities a claim matches on: the registered ones, narrowed by the claim's (never widened).
    fn claim_capabilities(&self, request: &ClaimRequest) -> CapabilitySet {
        let registered = &self.state.agents[&request.agent_id].agent.capabilities;
        match &request.capabilities {
            None => registered.clone(),
            Some(narrowed) => narrowed.narrowed_to(registered),
        }
    }

    /// What the claim matches tasks on: its `capabilities` and the tasks addressed to its agent (a wait matches on
    /// the capabilities alone).
    fn claim_matching(&self, request: &ClaimRequest, capabilities: &CapabilitySet) -> CapabilitySet {
        match &request.capabilities {
            None => {
                let record = &self.state.agents[&request.agent_id];
                // Registration writes the two together; nothing else changes an agent's capabilities.
                debug_assert_eq!(
                    record.claims_match,
                    record.agent.capabilities.clone().with_address_of(&request.agent_id),
                    "claims_match follows the agent's capabilities"
                );
                record.claims_match.clone()
            }
            Some(_) => capabilities.clone().with_address_of(&request.agent_id),
        }
    }

    /// Grants the best pending tasks the agent can take (priority, then FIFO), or registers `wait` when there are
    /// none. A claim keeps its agent alive first, so an offline or starting agent that claims is back.
    fn claim(&mut self, request: &ClaimRequest, wait: Option<WaitSpec>) -> StoreResult<ClaimAnswer> {
        self.check_session(&request.agent_id, request.session_id.as_deref())?;
        self.touch(&request.agent_id);
        if let Some(refusal) = self.refusal(&request.agent_id) {
            return Ok(ClaimAnswer { refusal: Some(refusal), ..ClaimAnswer::default() });
        }
        let mut promoted = self.promote_due(usize::MAX);
        let capabilities = self.claim_capabilities(request);
        let matching = self.claim_matching(request, &capabilities);
        let mut granted = Vec::new();
        // Eligibility is checked before every grant: a half-open breaker lets one trial lease through.
        while granted.len() < request.max_tasks && (granted.is_empty() || self.eligible(&request.agent_id)) {
            let Some(task_id) = self.best_for(&matching, &BTreeSet::new()) else { break };
            self.dequeue(&task_id);
            granted.push(self.grant(&task_id, &request.agent_id, "claim", None));
        }
        promoted.retain(|id| self.state.tasks.get(id).is_some_and(|r| r.task.status == TaskStatus::Pending));
        let waiting = granted.is_empty()
            && match wait {
                Some(wait) => {
                    self.add_waiter(wait, &request.agent_id, capabilities);
                    true
                }
                None => false,
            };
        Ok(ClaimAnswer { tasks: granted, refusal: None, waiting, promoted })
    }

    /// Registers a waiting claim: its token lives `wait.lifetime` from now.
    fn add_waiter(&mut self, wait: WaitSpec, agent_id: &str, capabilities: CapabilitySet) {
        self.state.seq += 1;
        let seq = self.state.seq;
        let until = self.now + wait.lifetime.as_millis() as u64;
        // Consumed tokens nobody withdrew (their claims took the task from the wake-up) go once their deadline passed.
        while let Some((deadline, token)) = self.state.consumed_until.first().cloned() {
            if deadline > self.now {
                break;
            }
            self.state.consumed_until.pop_first();
            self.state.consumed.remove(&token);
        }
        self.state.waiting.insert(wait.token, seq, until, agent_id.into(), capabilities);
    }

    /// The numbers a strategy reads of a registered agent.
    fn numbers(record: &AgentRecord) -> CandidateNumbers {
        CandidateNumbers {
            in_flight: record.leases.len() as u32,
            max_concurrent: record.agent.max_concurrent_tasks,
            completed: record.agent.tasks_completed,
            failed: record.agent.tasks_failed,
            avg_latency_ms: record.agent.avg_latency_ms,
            last_heartbeat_ms: record.last_heartbeat_ms,
            last_assigned_ms: record.last_assigned_ms,
            health: record.health.status,
        }
    }

    /// Up to `limit` waiting claims that could take work of `signature`, after the waiting place `after`: live
    /// tokens of agents the rule allows, longest-waiting first, agents at capacity after all the others. Reads
    /// only the waiting groups that cover the signature.
    fn offer(&mut self, signature: &CapabilitySet, limit: usize, after: u64) -> Option<Offer> {
        let (now, cooldown) = (self.now, self.store.config.breaker_cooldown_ms);
        let mut waiting: Vec<WaitingClaim> = Vec::new();
        let mut at_capacity: Vec<WaitingClaim> = Vec::new();
        let mut cursor = after;
        // Judged a page at a time: claims of refused agents are skipped, not counted against the limit, and agents
        // below capacity are looked for past those at capacity, within a bounded scan.
        let mut scanned = 0;
        while waiting.len() < limit && scanned < OFFER_SCAN_FACTOR * limit {
            let page = self.state.waiting.covering(signature, cursor, limit);
            let Some(last) = page.last().map(|(seq, _)| *seq) else { break };
            cursor = last;
            scanned += page.len();
            for (seq, token) in page {
                let Some(claim) = self.state.waiting.get(&token) else { continue };
                let Some(record) = self.state.agents.get(&*claim.agent_id) else { continue };
                if claim.until <= now || standing(record, now, cooldown).refusal().is_some() {
                    continue;
                }
                let numbers = Self::numbers(record);
                let full = numbers.in_flight >= numbers.max_concurrent;
                let offered = WaitingClaim { token, agent_id: claim.agent_id.clone(), numbers, seq };
                if full { at_capacity.push(offered) } else { waiting.push(offered) }
            }
        }
        waiting.extend(at_capacity);
        waiting.truncate(limit);
        (!waiting.is_empty()).then_some(Offer { now_ms: now, waiting })
    }

    /// Grants `task_id` through `token` if the task is pending and due, the token live, and its agent eligible
    /// and holding the task's capabilities.
    fn assign_through(&mut self, task_id: &TaskId, token: &str) -> Option<(Arc<str>, Task)> {
        let claim = self.state.waiting.get(token)?;
        if claim.until <= self.now {
            // Its claim is over: withdrawn by now, or its server died. Nobody would receive the task.
            self.state.waiting.remove(token);
            return None;
        }
        let (agent_id, claim_capabilities, until) = (claim.agent_id.clone(), claim.capabilities.clone(), claim.until);
        let holds = &self.state.agents.get(&*agent_id)?.agent.capabilities;
        let now = self.now;
        let record = self.state.tasks.get(task_id)?;
        // The waiter's capabilities may have been narrowed by the claim, never widened past the registration
        // (which a re-register or a register policy may have changed since).
        let claimable = record.task.status == TaskStatus::Pending
            && record.available_at_ms.is_none_or(|at| at <= now)
            && record.task.required_capabilities.is_subset_of(&claim_capabilities)
            && record.task.required_capabilities.is_subset_of(holds);
        if !claimable || !self.eligible(&agent_id) {
            return None;
        }
        let (token, _) = self.state.waiting.remove_entry(token)?;
        self.dequeue(task_id);
        self.touch(&agent_id);
        let task = self.grant(task_id, &agent_id, "routed", Some(&token));
        let lease = task.lease_id.clone().unwrap_or_default();
        self.state.consumed.insert(token.clone(), (task_id.clone(), lease, until));
        self.state.consumed_until.insert((until, token.clone()));
        Some((token, task))
    }

    fn insert_task(&mut self, new: NewTask) -> Submitted {
        let now = self.now;
        self.state.seq += 1;
        let seq = self.state.seq;
        let (task, fingerprint) = new.into_pending(rfc3339_ms(now));
        let score = self.store.score(task.priority, seq, now);
        let task_id = task.task_id.clone();
        let task_type = task.task_type.clone();
        let idempotency = task.idempotency_key.clone().map(|key| (task.submitted_by.clone(), key));
        let priority = task.priority;
        let data = EventData::Submitted {
            task_type: CompactStr::new(&task.task_type),
            priority,
            required_capabilities: task.required_capabilities.as_slice().iter().map(|c| CompactStr::new(c)).collect(),
        };
        self.state.tasks.insert(
            task_id.clone(),
            Box::new(TaskRecord {
                task,
                seq,
                score,
                claimed_at_ms: None,
                lease_deadline_ms: None,
                available_at_ms: None,
                outcome_lease: None,
                revoked: VecDeque::new(),
                finished_at_ms: None,
                requeued_by: None,
                pending_since_ms: now,
            }),
        );
        self.state.by_seq.insert(seq, task_id.clone());
        self.state.waiting_since.insert((now, task_id.clone()));
        let counters = &mut self.state.stats;
        *counters.tasks_by_status.entry(TaskStatus::Pending).or_default() += 1;
        *counters.pending_by_priority.entry(priority).or_default() += 1;
        *counters.tasks_by_type.entry(task_type).or_default() += 1;
        if let Some(slot) = idempotency {
            let expires = now + self.store.config.idempotency_ttl_ms;
            self.state.idempotency.insert(slot, (task_id.clone(), fingerprint, expires));
        }
        self.enqueue(&task_id);
        self.emit_typed(EventKind::TaskSubmitted, Some(&task_id), None, data);
        Submitted { task_id, replayed: false }
    }

    /// The idempotency check of a submit: `Some` for a replay, an error for a reused key, `None` to go ahead.
    fn idempotent_replay(&mut self, new: &NewTask) -> StoreResult<Option<Submitted>> {
        let Some(key) = &new.idempotency_key else { return Ok(None) };
        let slot = (new.submitted_by.clone(), key.clone());
        match self.state.idempotency.get(&slot) {
            Some((_, _, expires)) if *expires <= self.now => {
                self.state.idempotency.remove(&slot);
                Ok(None)
            }
            Some((task_id, fingerprint, _)) if *fingerprint == new.fingerprint => {
                Ok(Some(Submitted { task_id: task_id.clone(), replayed: true }))
            }
            Some(_) => Err(StoreError::conflict(
                "idempotency_key_reused",
                format!("idempotency key {key:?} was used for a different task"),
            )),
            None => Ok(None),
        }
    }

    /// Refuses a submit that would take the pending tasks past `MAX_PENDING_TASKS`.
    fn check_pending_room(&self, adding: usize) -> StoreResult<()> {
        let max = self.store.config.max_pending_tasks;
        let pending = self.state.stats.tasks_by_status.get(&TaskStatus::Pending).copied().unwrap_or(0);
        if max > 0 && adding > 0 && pending + adding as u64 > max {
            return Err(StoreError::TooManyPending(max));
        }
        Ok(())
    }

    fn check_new_signature(&self, signatures: &BTreeSet<&CapabilitySet>) -> StoreResult<()> {
        let new = signatures.iter().filter(|s| !self.state.ready.contains_key(**s)).count();
        let max = self.store.config.max_signatures;
        if new > 0 && self.state.ready.len() + new > max {
            return Err(StoreError::TooManySignatures(max));
        }
        Ok(())
    }
}

/// An outcome reported again, compared with the one recorded.
#[derive(Clone, Copy)]
enum Outcome<'a> {
    Completed(&'a JsonText),
    Failed(&'a str),
}

#[async_trait]
impl Store for MemoryStore {
    fn describe(&self) -> String {
        "memory (state is lost when the process exits)".into()
    }

    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<EventRecord>> {
        self.events.subscribe()
    }

    async fn events_after(&self, after: Option<&str>, limit: usize) -> StoreResult<Option<Vec<Event>>> {
        let state = self.lock()?;
        // Records past the last `event_buffer` wait for their batch's eviction ([`evict_oldest`]): already gone.
        let oldest_held = state.events.len().saturating_sub(self.config.event_buffer);
        let start = match after {
            None => oldest_held,
            // Ids rise through the buffer, so the one asked for is found by halving; an id the buffer no longer
            // (or never) held, malformed ones included, is "fell out of the buffer".
            Some(id) => {
                let Some(wanted) = parse_event_id(id) else { return Ok(None) };
                let position = state.events.partition_point(|e| (e.ms, e.seq) < wanted);
                // `u64` parsing also takes `+5-0` and `05-0`: spellings never issued, so not found, as before.
                match state.events.get(position) {
                    Some(found) if (found.ms, found.seq) == wanted && found.id() == id && position >= oldest_held => {
                        position + 1
                    }
                    _ => return Ok(None),
                }
            }
        };
        Ok(Some(state.events.iter().skip(start).take(limit).map(|event| event.to_event()).collect()))
    }

    async fn register(&self, registration: AgentRegistration) -> StoreResult<Registered> {
        self.transition(|tx| {
            let now = tx.now;
            let id = registration.agent_id.clone();
            let existing = tx.state.agents.contains_key(&id);
            let mut restarted = false;
            if existing {
                let live_session = tx.state.agents[&id].agent.session_id.clone();
                if let Some(session) = &registration.session_id
                    && *session != live_session
                {
                    tx.lose_all(&id, "the agent registered again with a new session");
                    // The old session's blocked claims must not receive work meant for the new one.
                    tx.remove_waiters_of(&id);
                    restarted = true;
                }
                let record = tx.state.agents.get_mut(&id).expect("agent exists");
                record.claims_match = registration.capabilities.clone().with_address_of(&id);
                let agent = &mut record.agent;
                agent.capabilities = registration.capabilities.clone();
                agent.model = registration.model.clone();
                agent.provider = registration.provider.clone();
                agent.metadata = registration.metadata.clone();
                agent.max_concurrent_tasks = registration.max_concurrent_tasks;
                agent.health_url = registration.health_url.clone();
                if let Some(session) = &registration.session_id {
                    agent.session_id = session.clone();
                }
                // Registering again is a fresh start: draining, failed (also by an unhealthy verdict), offline or
                // starting agents take the status they register with; capacity then decides ready or busy.
                if !matches!(agent.status, AgentStatus::Ready | AgentStatus::Busy) {
                    tx.set_agent_status(&id, registration.status);
                }
                // A new registration is a fresh start for health too (DESIGN §3: re-registering clears `failed`);
                // the breaker keeps its state, which is about recent failures, not about the registration.
                let health = &mut tx.state.agents.get_mut(&id).expect("agent exists").health;
                health.failed_by_probe = false;
                health.status = HealthState::Unknown;
                health.consecutive_failures = 0;
            } else {
                let session_id = registration.session_id.clone().unwrap_or_else(crate::model::random_hex_id);
                let agent = Agent {
                    agent_id: id.clone(),
                    capabilities: registration.capabilities.clone(),
                    status: registration.status,
                    model: registration.model.clone(),
                    provider: registration.provider.clone(),
                    metadata: registration.metadata.clone(),
                    max_concurrent_tasks: registration.max_concurrent_tasks,
                    in_flight: 0,
                    tasks_completed: 0,
                    tasks_failed: 0,
                    avg_latency_ms: 0.0,
                    registered_at: rfc3339_ms(now),
                    last_heartbeat: rfc3339_ms(now),
                    last_assigned_at: None,
                    current_task_ids: Vec::new(),
                    health_url: registration.health_url.clone(),
                    paused: false,
                    session_id,
                };
                tx.state.agents.insert(
                    id.clone(),
                    Box::new(AgentRecord {
                        agent,
                        last_heartbeat_ms: now,
                        last_assigned_ms: None,
                        expiry_ms: now,
                        indexed_at: None,
                        leases: BTreeMap::new(),
                        revocations: Vec::new(),
                        health: HealthRecord::default(),
                        breaker: Breaker::default(),
                        claims_match: registration.capabilities.clone().with_address_of(&id),
                    }),
                );
            }
            let status = tx.state.agents[&id].agent.status;
            tx.touch(&id);
            if status == AgentStatus::Starting {
                // `touch` makes a claiming agent ready; a registration keeps the status the agent reported.
                tx.set_agent_status(&id, AgentStatus::Starting);
            }
            let kind = if restarted { EventKind::AgentRestarted } else { EventKind::AgentRegistered };
            tx.emit(kind, None, Some(&id), json!({"created": !existing}));
            let requeued = std::mem::take(&mut tx.requeued);
            Ok(Registered { agent: tx.state.agents[&id].agent.clone(), created: !existing, restarted, requeued })
        })
    }

    async fn heartbeat(&self, agent_id: &str, heartbeat: &HeartbeatRequest) -> StoreResult<HeartbeatOutcome> {
        self.transition(|tx| {
            tx.check_session(agent_id, heartbeat.session_id.as_deref())?;
            tx.touch(agent_id);
            if let Some(listed) = &heartbeat.current_task_ids {
                let now = tx.now;
                let young = tx.store.config.heartbeat_interval_ms;
                let held: Vec<(TaskId, u64)> =
                    tx.state.agents[agent_id].leases.iter().map(|(t, at)| (t.clone(), *at)).collect();
                for (task_id, granted_at) in held {
                    if listed.contains(&task_id) {
                        tx.mark_started(&task_id);
                    } else if now.saturating_sub(granted_at) >= young {
                        // The agent never heard of this grant: release it, no retry counted.
                        tx.drop_lease(&task_id, Some(RevokeReason::Reassigned));
                        tx.requeue(&task_id, false, None);
                        tx.emit(
                            EventKind::TaskReleased,
                            Some(&task_id),
                            Some(agent_id),
                            json!({"reason": "undelivered"}),
                        );
                    }
                }
            }
            if let Some(status) = heartbeat.status {
                let current = tx.state.agents[agent_id].agent.status;
                let target = match status {
                    // Capacity decides between ready and busy.
                    AgentStatus::Ready | AgentStatus::Busy => AgentStatus::Ready,
                    other => other,
                };
                if current != target {
                    tx.set_agent_status(agent_id, target);
                }
                tx.refresh_capacity(agent_id);
                if status == AgentStatus::Busy {
                    tx.set_agent_status(agent_id, AgentStatus::Busy);
                }
            }
            let record = tx.agent(agent_id)?;
            let revoked = std::mem::take(&mut record.revocations);
            let status = record.agent.status;
            Ok(HeartbeatOutcome { status, revoked, requeued: std::mem::take(&mut tx.requeued) })
        })
    }

    async fn unregister(&self, agent_id: &str) -> StoreResult<Vec<TaskId>> {
        self.transition(|tx| {
            tx.agent(agent_id)?;
            tx.lose_all(agent_id, "the agent unregistered");
            tx.remove_waiters_of(agent_id);
            if let Some(at) = tx.state.agents.remove(agent_id).and_then(|record| record.indexed_at) {
                tx.state.expiry.remove(&(at, agent_id.to_string()));
            }
            tx.emit(EventKind::AgentUnregistered, None, Some(agent_id), json!({}));
            Ok(std::mem::take(&mut tx.requeued))
        })
    }

    async fn set_paused(&self, agent_id: &str, paused: bool) -> StoreResult<Agent> {
        self.transition(|tx| {
            let record = tx.agent(agent_id)?;
            if record.agent.paused != paused {
                record.agent.paused = paused;
                let status = record.agent.status.as_str();
                tx.emit(EventKind::AgentStatusChanged, None, Some(agent_id), json!({"paused": paused, "to": status}));
            }
            Ok(tx.state.agents[agent_id].agent.clone())
        })
    }

    async fn get_agent(&self, agent_id: &str) -> StoreResult<Option<Agent>> {
        Ok(self.lock()?.agents.get(agent_id).map(|r| r.agent.clone()))
    }

    async fn list_agents(&self, filter: &AgentFilter) -> StoreResult<Vec<Agent>> {
        let state = self.lock()?;
        let (now, cooldown) = (self.clock.now_ms(), self.config.breaker_cooldown_ms);
        let mut agents: Vec<Agent> = state
            .agents
            .values()
            .filter(|r| filter.capability.as_ref().is_none_or(|c| r.agent.capabilities.contains(c)))
            .filter(|r| filter.available.is_none_or(|want| available(r, now, cooldown) == want))
            .map(|r| r.agent.clone())
            .collect();
        agents.sort_unstable_by(|a, b| a.agent_id.cmp(&b.agent_id));
        Ok(agents)
    }

    async fn submit(&self, task: NewTask, offer_limit: usize) -> StoreResult<Committed> {
        self.transition(|tx| {
            if let Some(submitted) = tx.idempotent_replay(&task)? {
                return Ok(Committed { submitted, offer: None });
            }
            tx.check_new_signature(&BTreeSet::from([&task.required_capabilities]))?;
            tx.check_pending_room(1)?;
            let signature = task.required_capabilities.clone();
            let submitted = tx.insert_task(task);
            let offer = tx.offer(&signature, offer_limit, 0).map(Arc::new);
            Ok(Committed { submitted, offer })
        })
    }

    async fn submit_batch(&self, tasks: Vec<NewTask>, offer_limit: usize) -> StoreResult<Vec<Committed>> {
        self.transition(|tx| {
            // Check everything before changing anything: all or nothing.
            let mut replays: Vec<Option<Submitted>> = Vec::with_capacity(tasks.len());
            // Conformance fix: a key repeated within the batch is a replay of its first use in the batch (same
            // body) or a conflict (different body); before, both entries were inserted as separate tasks.
            let mut first_use: HashMap<(&str, &str), usize> = HashMap::new();
            for (i, task) in tasks.iter().enumerate() {
                if let Some(key) = &task.idempotency_key
                    && let Some(&first) = first_use.get(&(task.submitted_by.as_str(), key.as_str()))
                {
                    if tasks[first].fingerprint != task.fingerprint {
                        return Err(StoreError::conflict(
                            "idempotency_key_reused",
                            format!("idempotency key {key:?} is used for two different tasks of the batch"),
                        ));
                    }
                    let task_id = replays[first].as_ref().map_or(&tasks[first].task_id, |s| &s.task_id).clone();
                    replays.push(Some(Submitted { task_id, replayed: true }));
                    continue;
                }
                if let Some(key) = &task.idempotency_key {
                    first_use.insert((task.submitted_by.as_str(), key.as_str()), i);
                }
                replays.push(tx.idempotent_replay(task)?);
            }
            let signatures: BTreeSet<&CapabilitySet> = tasks.iter().map(|t| &t.required_capabilities).collect();
            tx.check_new_signature(&signatures)?;
            tx.check_pending_room(replays.iter().filter(|r| r.is_none()).count())?;
            // One offer per signature, shared by the batch's tasks of that signature.
            let mut offers: HashMap<CapabilitySet, Option<Arc<Offer>>> = HashMap::new();
            Ok(tasks
                .into_iter()
                .zip(replays)
                .map(|(task, replay)| match replay {
                    Some(submitted) => Committed { submitted, offer: None },
                    None => {
                        let signature = task.required_capabilities.clone();
                        let submitted = tx.insert_task(task);
                        let offer = match offers.get(&signature) {
                            Some(offer) => offer.clone(),
                            None => {
                                let offer = tx.offer(&signature, offer_limit, 0).map(Arc::new);
                                offers.insert(signature, offer.clone());
                                offer
                            }
                        };
                        Committed { submitted, offer }
                    }
                })
                .collect())
        })
    }

    async fn claim_or_wait(&self, request: &ClaimRequest, wait: Option<WaitSpec>) -> StoreResult<ClaimAnswer> {
        self.transition(|tx| tx.claim(request, wait))
    }

    async fn peek(&self, capabilities: &CapabilitySet, limit: usize) -> StoreResult<Vec<Task>> {
        // No promotion of backed-off tasks here: that happens in claims (which answer what they promoted) and in
        // `promote_due`, so every task that becomes claimable is offered to waiting claims.
        self.transition(|tx| {
            let mut seen = BTreeSet::new();
            let mut peeked = Vec::new();
            while peeked.len() < limit {
                let Some(task_id) = tx.best_for(capabilities, &seen) else { break };
                peeked.push(tx.state.tasks[&task_id].task.clone());
                seen.insert(task_id);
            }
            Ok(peeked)
        })
    }

    async fn peek_signature(&self, signature: &CapabilitySet, limit: usize) -> StoreResult<Vec<Task>> {
        self.transition(|tx| {
            let Some(queue) = tx.state.ready.get(signature) else { return Ok(Vec::new()) };
            Ok(queue.iter().take(limit).map(|key| tx.state.tasks[&key.2].task.clone()).collect())
        })
    }

    async fn claim_if(&self, task_id: &TaskId, request: &ClaimRequest) -> StoreResult<Option<Task>> {
        self.transition(|tx| {
            tx.check_session(&request.agent_id, request.session_id.as_deref())?;
            tx.touch(&request.agent_id);
            let now = tx.now;
            let capabilities = tx.claim_matching(request, &tx.claim_capabilities(request));
            let record = tx.task(task_id)?;
            let claimable = record.task.status == TaskStatus::Pending
                && record.available_at_ms.is_none_or(|at| at <= now)
                && record.task.required_capabilities.is_subset_of(&capabilities);
            if !claimable || !tx.eligible(&request.agent_id) {
                return Ok(None);
            }
            tx.dequeue(task_id);
            Ok(Some(tx.grant(task_id, &request.agent_id, "claim", None)))
        })
    }

    async fn register_waiter(&self, waiter: Waiter, lifetime: std::time::Duration) -> StoreResult<()> {
        self.transition(|tx| {
            tx.agent(&waiter.agent_id)?;
            let wait = WaitSpec { token: waiter.token, lifetime };
            tx.add_waiter(wait, &waiter.agent_id, waiter.capabilities);
            Ok(())
        })
    }

    async fn withdraw_waiter(&self, token: &str) -> StoreResult<Withdrawn> {
        self.transition(|tx| {
            if tx.state.waiting.remove(token).is_some() {
                return Ok(Withdrawn::Unused);
            }
            match tx.state.consumed.remove_entry(token) {
                // Only while the grant still stands: a task cancelled, timed out or requeued since the hand-off
                // is not the claim's to return.
                Some((token, (task_id, lease, until))) => {
                    tx.state.consumed_until.remove(&(until, token));
                    match tx.state.tasks.get(&task_id) {
                        Some(record) if record.task.lease_id.as_deref() == Some(lease.as_str()) => {
                            Ok(Withdrawn::Assigned(Box::new(record.task.clone())))
                        }
                        _ => Ok(Withdrawn::Unused),
                    }
                }
                None => Ok(Withdrawn::Unused),
            }
        })
    }

    async fn offer(&self, task_id: &TaskId, limit: usize, after: Option<u64>) -> StoreResult<Option<Offer>> {
        self.transition(|tx| {
            let Some(record) = tx.state.tasks.get(task_id) else { return Ok(None) };
            let due = record.available_at_ms.is_none_or(|at| at <= tx.now);
            if record.task.status != TaskStatus::Pending || !due {
                return Ok(None);
            }
            let signature = record.task.required_capabilities.clone();
            Ok(tx.offer(&signature, limit, after.unwrap_or(0)))
        })
    }

    fn still_offered(&self, task_id: &TaskId, claims: &mut Vec<&WaitingClaim>) -> bool {
        // A broken store keeps everything: `assign` then answers the error.
        let Ok(state) = self.lock() else { return true };
        let now = self.clock.now_ms();
        let routable = state.tasks.get(task_id).is_some_and(|record| {
            record.task.status == TaskStatus::Pending && record.available_at_ms.is_none_or(|at| at <= now)
        });
        if routable {
            claims.retain(|claim| state.waiting.get(&claim.token).is_some_and(|live| live.until > now));
        }
        routable
    }

    async fn assign(&self, task_id: &TaskId, tokens: &[&str], any_waiter: bool) -> StoreResult<Option<Assigned>> {
        self.transition(|tx| {
            let Some(record) = tx.state.tasks.get(task_id) else {
                return Err(StoreError::TaskNotFound(task_id.clone()));
            };
            if record.task.status != TaskStatus::Pending {
                return Ok(None);
            }
            let signature = record.task.required_capabilities.clone();
            for token in tokens {
                if let Some((token, task)) = tx.assign_through(task_id, token) {
                    return Ok(Some(Assigned { token, task }));
                }
            }
            if !any_waiter {
                return Ok(None);
            }
            // The choices could not take it: any claim that can, longest-waiting first, a page at a time.
            let mut after = 0;
            loop {
                let page = tx.state.waiting.covering(&signature, after, 32);
                let Some(last) = page.last().map(|(seq, _)| *seq) else { return Ok(None) };
                after = last;
                for (_, token) in page {
                    if let Some((token, task)) = tx.assign_through(task_id, &token) {
                        return Ok(Some(Assigned { token, task }));
                    }
                }
            }
        })
    }

    async fn start(&self, task_id: &TaskId, fence: &Fence) -> StoreResult<Task> {
        self.transition(|tx| {
            tx.check_fence(task_id, fence)?;
            tx.mark_started(task_id);
            Ok(tx.state.tasks[task_id].task.clone())
        })
    }

    async fn progress(&self, task_id: &TaskId, fence: &Fence, progress: Value) -> StoreResult<Task> {
        self.transition(|tx| {
            tx.check_fence(task_id, fence)?;
            tx.mark_started(task_id);
            tx.task(task_id)?.task.progress = Some(progress);
            let agent = tx.state.tasks[task_id].task.assigned_agent.clone();
            tx.emit(EventKind::TaskProgress, Some(task_id), agent.as_deref(), json!({}));
            Ok(tx.state.tasks[task_id].task.clone())
        })
    }

    async fn complete(&self, task_id: &TaskId, fence: &Fence, completion: Completion) -> StoreResult<Task> {
        self.transition(|tx| tx.complete(task_id, fence, completion))
    }

    async fn complete_batch(&self, outcomes: Vec<(TaskId, Fence, Completion)>) -> StoreResult<Vec<StoreResult<Task>>> {
        self.transition(|tx| {
            Ok(outcomes.into_iter().map(|(task_id, fence, done)| tx.complete(&task_id, &fence, done)).collect())
        })
    }

    async fn complete_and_claim(
        &self,
        task_id: &TaskId,
        fence: &Fence,
        completion: Completion,
        next: &ClaimRequest,
        wait: Option<WaitSpec>,
    ) -> StoreResult<(Task, ClaimAnswer)> {
        self.transition(|tx| {
            // Refuse before changing anything: the step is all or nothing.
            tx.check_session(&next.agent_id, next.session_id.as_deref())?;
            let completed = tx.complete(task_id, fence, completion)?;
            let claimed = tx.claim(next, wait)?;
            Ok((completed, claimed))
        })
    }

    async fn fail(&self, task_id: &TaskId, fence: &Fence, failure: &FailRequest) -> StoreResult<Task> {
        self.transition(|tx| {
            if let Some(stored) = tx.repeated_outcome(task_id, fence, Outcome::Failed(&failure.error))? {
                return Ok(stored);
            }
            tx.check_fence(task_id, fence)?;
            let record = &tx.state.tasks[task_id];
            let agent_id = record.task.assigned_agent.clone();
            let retry = failure.requeue && record.task.retries < record.task.max_retries;
            let error = TaskError { code: "task_failed".into(), message: failure.error.clone() };
            if let Some(agent_id) = &agent_id
                && let Some(agent) = tx.state.agents.get_mut(agent_id)
            {
                agent.agent.tasks_failed += 1;
            }
            let kind = match failure.kind {
                FailKind::Task => "task",
                FailKind::Agent => "agent",
            };
            // Only failures blamed on the agent feed its breaker: a poison task must not open the breakers of
            // every agent it visits.
            if failure.kind == FailKind::Agent
                && let Some(agent_id) = &agent_id
            {
                tx.breaker_failure(agent_id, Some(task_id));
            }
            if retry {
                let lease = tx.state.tasks[task_id].task.lease_id.clone();
                tx.state.tasks.get_mut(task_id).expect("task exists").requeued_by =
                    lease.map(|lease| (lease, failure.error.clone()));
                tx.drop_lease(task_id, None);
                tx.requeue(task_id, true, Some(error));
                let retries = tx.state.tasks[task_id].task.retries;
                tx.emit(
                    EventKind::TaskRetried,
                    Some(task_id),
                    agent_id.as_deref(),
                    json!({"error": failure.error, "kind": kind, "retries": retries}),
                );
            } else {
                tx.record_outcome_lease(task_id, fence);
                tx.drop_lease(task_id, None);
                let record = tx.state.tasks.get_mut(task_id).expect("task exists");
                record.task.error = Some(failure.error.clone());
                record.task.last_error = Some(error);
                tx.set_status(task_id, TaskStatus::Failed);
                tx.emit(
                    EventKind::TaskFailed,
                    Some(task_id),
                    agent_id.as_deref(),
                    json!({"error": failure.error, "kind": kind}),
                );
            }
            Ok(tx.state.tasks[task_id].task.clone())
        })
    }

    async fn cancel(&self, task_id: &TaskId) -> StoreResult<Task> {
        self.transition(|tx| {
            let status = tx.task(task_id)?.task.status;
            match status {
                TaskStatus::Cancelled => {}
                TaskStatus::Pending => {
                    tx.dequeue(task_id);
                    tx.set_status(task_id, TaskStatus::Cancelled);
                    tx.emit(EventKind::TaskCancelled, Some(task_id), None, json!({"was": "pending"}));
                }
                TaskStatus::Claimed | TaskStatus::Running => {
                    let agent_id = tx.state.tasks[task_id].task.assigned_agent.clone();
                    tx.drop_lease(task_id, Some(RevokeReason::Cancelled));
                    tx.set_status(task_id, TaskStatus::Cancelled);
                    tx.emit(
                        EventKind::TaskCancelled,
                        Some(task_id),
                        agent_id.as_deref(),
                        json!({"was": status.as_str()}),
                    );
                }
                _ => {
                    return Err(StoreError::conflict(
                        "invalid_transition",
                        format!("task {task_id} already ended {}; it cannot be cancelled", status.as_str()),
                    ));
                }
            }
            Ok(tx.state.tasks[task_id].task.clone())
        })
    }

    async fn retry(&self, task_id: &TaskId) -> StoreResult<Task> {
        self.transition(|tx| {
            let status = tx.task(task_id)?.task.status;
            if !matches!(status, TaskStatus::Failed | TaskStatus::Timeout | TaskStatus::Cancelled) {
                return Err(StoreError::conflict(
                    "invalid_transition",
                    format!(
                        "task {task_id} is {}; only failed, timed-out or cancelled tasks can be retried",
                        status.as_str()
                    ),
                ));
            }
            let record = tx.state.tasks.get_mut(task_id).expect("task exists");
            record.task.retries = 0;
            record.task.manual_retries += 1;
            record.task.result = None;
            record.task.error = None;
            record.task.completed_at = None;
            record.outcome_lease = None;
            record.available_at_ms = None;
            record.task.available_at = None;
            record.task.unfenced = false;
            if tx.store.config.priority_aging_ms.is_some() {
                // With aging, a manual retry is new work: it ages from now, not from its first submission.
                record.score = tx.store.score(record.task.priority, record.seq, tx.now);
            }
            tx.set_status(task_id, TaskStatus::Pending);
            tx.enqueue(task_id);
            tx.emit(EventKind::TaskRetried, Some(task_id), None, json!({"manual": true}));
            Ok(tx.state.tasks[task_id].task.clone())
        })
    }

    async fn prioritize(&self, task_id: &TaskId, priority: Priority) -> StoreResult<Task> {
        self.transition(|tx| {
            let record = tx.task(task_id)?;
            let (status, old) = (record.task.status, record.task.priority);
            if status != TaskStatus::Pending {
                return Err(StoreError::conflict(
                    "invalid_transition",
                    format!("task {task_id} is {}; only pending tasks can be prioritized", status.as_str()),
                ));
            }
            if old == priority {
                return Ok(record.task.clone());
            }
            tx.dequeue(task_id);
            let record = tx.state.tasks.get_mut(task_id).expect("task exists");
            record.task.priority = priority;
            record.score = match tx.store.config.priority_aging_ms {
                // With aging the score is `enqueued + level·aging`: keep the age, change the level.
                Some(aging) => record.score - u64::from(old.level()) * aging + u64::from(priority.level()) * aging,
                None => tx.store.score(priority, record.seq, tx.now),
            };
            let counters = &mut tx.state.stats;
            *counters.pending_by_priority.entry(old).or_default() -= 1;
            *counters.pending_by_priority.entry(priority).or_default() += 1;
            tx.enqueue(task_id);
            tx.emit(EventKind::TaskPrioritized, Some(task_id), None, json!({"from": old, "to": priority}));
            Ok(tx.state.tasks[task_id].task.clone())
        })
    }

    async fn release(&self, task_id: &TaskId, lease_id: &str) -> StoreResult<bool> {
        self.transition(|tx| {
            let record = tx.task(task_id)?;
            if !record.task.status.is_leased() || record.task.lease_id.as_deref() != Some(lease_id) {
                return Ok(false);
            }
            let agent_id = record.task.assigned_agent.clone();
            tx.drop_lease(task_id, Some(RevokeReason::Reassigned));
            tx.requeue(task_id, false, None);
            tx.emit(EventKind::TaskReleased, Some(task_id), agent_id.as_deref(), json!({"reason": "undelivered"}));
            Ok(true)
        })
    }

    async fn get_task(&self, task_id: &TaskId) -> StoreResult<Option<Task>> {
        Ok(self.lock()?.tasks.get(task_id).map(|r| r.task.clone()))
    }

    async fn list_tasks(&self, filter: &TaskFilter) -> StoreResult<TaskPage> {
        let state = self.lock()?;
        let before = match &filter.cursor {
            None => u64::MAX,
            Some(cursor) => cursor
                .parse::<u64>()
                .map_err(|_| StoreError::conflict("invalid_cursor", "cursor is not one this server issued"))?,
        };
        let limit = filter.limit.clamp(1, 1000);
        let mut tasks = Vec::new();
        let mut next_cursor = None;
        for (seq, task_id) in state.by_seq.range(..before).rev() {
            let task = &state.tasks[task_id].task;
            let matches = filter.status.is_none_or(|s| s == task.status)
                && filter.task_type.as_ref().is_none_or(|t| *t == task.task_type)
                && filter.agent_id.as_ref().is_none_or(|a| task.assigned_agent.as_ref() == Some(a));
            if !matches {
                continue;
            }
            if tasks.len() == limit {
                next_cursor = Some((seq + 1).to_string());
                break;
            }
            tasks.push(task.clone());
        }
        Ok(TaskPage { tasks, next_cursor })
    }

    async fn sweep_timeouts(&self, limit: usize) -> StoreResult<Swept> {
        self.transition(|tx| {
            let mut swept = 0;
            while swept < limit {
                let Some((deadline, task_id)) = tx.state.leases.first().cloned() else { break };
                if deadline > tx.now {
                    break;
                }
                swept += 1;
                let agent_id = tx.state.tasks[&task_id].task.assigned_agent.clone();
                let attempt = tx.state.tasks[&task_id].task.attempt;
                if let Some(agent_id) = &agent_id {
                    tx.breaker_failure(agent_id, Some(&task_id));
                }
                tx.drop_lease(&task_id, Some(RevokeReason::Timeout));
                tx.emit(EventKind::TaskTimeout, Some(&task_id), agent_id.as_deref(), json!({"attempt": attempt}));
                let record = &tx.state.tasks[&task_id];
                let error = TaskError {
                    code: "timeout".into(),
                    message: format!("attempt {attempt} ran past {} s", record.task.timeout_seconds),
                };
                if record.task.retries < record.task.max_retries {
                    tx.requeue(&task_id, true, Some(error));
                    tx.emit(EventKind::TaskRetried, Some(&task_id), None, json!({"reason": "timeout"}));
                } else {
                    tx.task(&task_id)?.task.last_error = Some(error);
                    tx.set_status(&task_id, TaskStatus::Timeout);
                }
            }
            Ok(Swept { count: swept, requeued: std::mem::take(&mut tx.requeued) })
        })
    }

    async fn sweep_offline(&self, limit: usize) -> StoreResult<Swept> {
        self.transition(|tx| {
            let mut swept = 0;
            while swept < limit {
                let Some(expiry) = expiry_front(tx.state) else { break };
                if expiry > tx.now {
                    break;
                }
                swept += 1;
                // Off the expiry index until the agent shows a sign of life again.
                let (_, agent_id) = tx.state.expiry.pop_first().expect("the front was just read");
                tx.state.agents.get_mut(&agent_id).expect("expiry_front keeps only agents").indexed_at = None;
                tx.lose_all(&agent_id, "the agent stopped heartbeating");
                tx.remove_waiters_of(&agent_id);
                tx.set_agent_status(&agent_id, AgentStatus::Offline);
                tx.emit(EventKind::AgentOffline, None, Some(&agent_id), json!({}));
            }
            Ok(Swept { count: swept, requeued: std::mem::take(&mut tx.requeued) })
        })
    }

    async fn promote_due(&self, limit: usize) -> StoreResult<Vec<TaskId>> {
        self.transition(|tx| Ok(tx.promote_due(limit)))
    }

    async fn housekeeping(&self, task_retention_ms: u64, agent_retention_ms: u64, limit: usize) -> StoreResult<usize> {
        self.transition(|tx| {
            let now = tx.now;
            let mut removed = 0;
            while removed < limit {
                let Some((ended, task_id)) = tx.state.finished.first().cloned() else { break };
                if ended + task_retention_ms > now {
                    break;
                }
                tx.state.finished.pop_first();
                if let Some(record) = tx.state.tasks.remove(&task_id) {
                    tx.state.by_seq.remove(&record.seq);
                    let counters = &mut tx.state.stats;
                    *counters.tasks_by_status.entry(record.task.status).or_default() -= 1;
                    if let Some(count) = counters.tasks_by_type.get_mut(&record.task.task_type) {
                        *count -= 1;
                        if *count == 0 {
                            counters.tasks_by_type.remove(&record.task.task_type);
                        }
                    }
                    removed += 1;
                }
            }
            if removed < limit {
                // The longest silent first (ties by id), as Redis's offline index orders them: a bounded call
                // removes the same agents, and reports them in the same order, on every store.
                let mut stale: Vec<(u64, &String)> = tx
                    .state
                    .agents
                    .iter()
                    .filter(|(_, a)| {
                        a.agent.status == AgentStatus::Offline && a.last_heartbeat_ms + agent_retention_ms <= now
                    })
                    .map(|(id, a)| (a.last_heartbeat_ms, id))
                    .collect();
                stale.sort_unstable();
                stale.truncate(limit - removed);
                let stale: Vec<String> = stale.into_iter().map(|(_, id)| id.clone()).collect();
                for agent_id in stale {
                    if let Some(at) = tx.state.agents.remove(&agent_id).and_then(|record| record.indexed_at) {
                        tx.state.expiry.remove(&(at, agent_id.clone()));
                    }
                    tx.emit(EventKind::AgentUnregistered, None, Some(&agent_id), json!({"reason": "retention"}));
                    removed += 1;
                }
            }
            tx.state.idempotency.retain(|_, (_, _, expires)| *expires > now);
            Ok(removed)
        })
    }

    async fn next_deadline(&self) -> StoreResult<Option<u64>> {
        let mut state = self.lock()?;
        let candidates = [
            state.leases.first().map(|(at, _)| *at),
            expiry_front(&mut state),
            state.delayed.first().map(|(at, _)| *at),
        ];
        Ok(candidates.into_iter().flatten().min())
    }

    async fn record_health(&self, agent_id: &str, verdict: HealthVerdict) -> StoreResult<AgentHealth> {
        self.transition(|tx| {
            let now = tx.now;
            let record = tx.agent(agent_id)?;
            let previous = record.health.status;
            let health = &mut record.health;
            health.status = verdict.status;
            health.last_check_ms = Some(now);
            health.latency_ms = verdict.latency_ms;
            health.message = verdict.message.clone();
            let status = record.agent.status;
            match verdict.status {
                HealthState::Unhealthy => {
                    record.health.consecutive_failures += 1;
                    tx.breaker_failure(agent_id, None);
                    if !matches!(status, AgentStatus::Offline | AgentStatus::Failed) {
                        tx.set_agent_status(agent_id, AgentStatus::Failed);
                        let health = &mut tx.agent(agent_id)?.health;
                        health.failed_by_probe = true;
                        health.status_before_failure = Some(status);
                    }
                }
                HealthState::Healthy | HealthState::Degraded => {
                    record.health.consecutive_failures = 0;
                    if status == AgentStatus::Failed && record.health.failed_by_probe {
                        let back = match record.health.status_before_failure.take() {
                            Some(AgentStatus::Draining) => AgentStatus::Draining,
                            _ => AgentStatus::Ready,
                        };
                        tx.set_agent_status(agent_id, back);
                        tx.refresh_capacity(agent_id);
                    }
                }
                HealthState::Unknown => {}
            }
            if previous != verdict.status {
                tx.emit(
                    EventKind::HealthChanged,
                    None,
                    Some(agent_id),
                    json!({"from": previous.as_str(), "to": verdict.status.as_str(), "message": verdict.message}),
                );
            }
            Ok(tx.health_of(agent_id).expect("agent exists"))
        })
    }

    async fn agent_health(&self, agent_id: &str) -> StoreResult<Option<AgentHealth>> {
        self.transition(|tx| {
            // Reading turns an open breaker past its cooldown half-open, so the answer is current.
            if tx.state.agents.contains_key(agent_id) {
                let _ = tx.eligible(agent_id);
            }
            Ok(tx.health_of(agent_id))
        })
    }

    async fn all_health(&self) -> StoreResult<Vec<AgentHealth>> {
        self.transition(|tx| {
            let mut ids: Vec<String> = tx.state.agents.keys().cloned().collect();
            ids.sort_unstable();
            Ok(ids
                .iter()
                .filter_map(|id| {
                    // As `agent_health`: an open breaker past its cooldown reads half-open.
                    let _ = tx.eligible(id);
                    tx.health_of(id)
                })
                .collect())
        })
    }

    async fn record_event(&self, kind: EventKind, task_id: Option<&TaskId>, data: Value) -> StoreResult<()> {
        self.transition(|tx| {
            tx.emit(kind, task_id, None, data);
            Ok(())
        })
    }

    async fn keep_alive(&self, agent_id: &str) -> StoreResult<()> {
        self.transition(|tx| {
            tx.agent(agent_id)?;
            tx.touch(agent_id);
            Ok(())
        })
    }

    async fn mark_assigned(&self, agent_id: &str) -> StoreResult<()> {
        self.transition(|tx| {
            let now = tx.now;
            let record = tx.agent(agent_id)?;
            record.agent.last_assigned_at = Some(rfc3339_ms(now));
            record.last_assigned_ms = Some(now);
            Ok(())
        })
    }

    async fn idempotent_task(&self, submitted_by: &str, key: &str) -> StoreResult<Option<(TaskId, String)>> {
        let now = self.clock.now_ms();
        let state = self.lock()?;
        Ok(state
            .idempotency
            .get(&(submitted_by.to_string(), key.to_string()))
            .filter(|(_, _, expires)| *expires > now)
            .map(|(task_id, fingerprint, _)| (task_id.clone(), fingerprint.clone())))
    }

    async fn change_plugin(&self, change: PluginChange) -> StoreResult<PluginRecord> {
        self.transition(|tx| {
            let now = tx.now;
            let PluginChange { name, action, by } = change;
            let existing = tx.state.plugins.get(&name).map(|(record, _)| record);
            if action == PluginAction::Delete && existing.is_none_or(|record| record.sha256.is_none()) {
                return Err(StoreError::PluginNotFound(name));
            }
            if let PluginAction::Promote { sha256: expected } | PluginAction::Rollback { sha256: expected, .. } =
                &action
            {
                check_candidate(&name, existing.and_then(|record| record.candidate.as_ref()), expected.as_deref())?;
            }
            let kind = match &action {
                PluginAction::Upload { .. } => EventKind::PluginUploaded,
                PluginAction::Delete => EventKind::PluginDeleted,
                PluginAction::Enable => EventKind::PluginEnabled,
                PluginAction::Disable => EventKind::PluginDisabled,
                PluginAction::Stage { .. } => EventKind::PluginStaged,
                PluginAction::Promote { .. } => EventKind::PluginPromoted,
                PluginAction::Rollback { .. } => EventKind::PluginRolledBack,
            };
            let verb = action.as_str().to_string();
            let (record, bytes) = tx.state.plugins.entry(name.clone()).or_insert_with(|| {
                let record = PluginRecord {
                    name: name.clone(),
                    version: 0,
                    enabled: true,
                    sha256: None,
                    size: None,
                    manifest: None,
                    candidate: None,
                    history: Vec::new(),
                };
                (record, None)
            });
            record.version += 1;
            let mut detail = None;
            match action {
                PluginAction::Upload { bytes: component, sha256, manifest } => {
                    record.sha256 = Some(sha256);
                    record.size = Some(component.len() as u64);
                    record.manifest = manifest;
                    *bytes = Some(component);
                }
                PluginAction::Delete => {
                    (record.sha256, record.size, record.manifest) = (None, None, None);
                    *bytes = None;
                }
                PluginAction::Enable => record.enabled = true,
                PluginAction::Disable => record.enabled = false,
                PluginAction::Stage { bytes: component, sha256, manifest, mode } => {
                    detail = Some(mode.describe());
                    let size = component.len() as u64;
                    record.candidate = Some(PluginCandidate { mode, sha256: sha256.clone(), size, manifest });
                    tx.state.candidates.insert(name.clone(), (sha256, component));
                }
                PluginAction::Promote { .. } => {
                    let candidate = record.candidate.take().expect("checked above");
                    let (_, component) = tx.state.candidates.remove(&name).expect("a candidate has its bytes");
                    record.sha256 = Some(candidate.sha256);
                    record.size = Some(candidate.size);
                    record.manifest = candidate.manifest;
                    *bytes = Some(component);
                }
                PluginAction::Rollback { reason, .. } => {
                    detail = reason;
                    record.candidate = None;
                    tx.state.candidates.remove(&name);
                }
            }
            let entry = PluginHistoryEntry {
                version: record.version,
                action: verb,
                sha256: record.sha256.clone(),
                by,
                at: rfc3339_ms(now),
                detail,
            };
            record.history.insert(0, entry);
            record.history.truncate(PLUGIN_HISTORY);
            let record = record.clone();
            let data =
                json!({"name": name, "version": record.version, "sha256": record.sha256, "enabled": record.enabled});
            tx.emit(kind, None, None, data);
            Ok(record)
        })
    }

    async fn server_alive(&self, server_id: &str, ttl_ms: u64) -> StoreResult<Vec<String>> {
        let now = self.clock.now_ms();
        let mut state = self.lock()?;
        state.servers.insert(server_id.to_string(), now.saturating_add(ttl_ms));
        state.servers.retain(|_, expires| *expires > now);
        Ok(state.servers.keys().cloned().collect())
    }

    async fn record_violations(&self, violations: Vec<NewViolation>) -> StoreResult<Vec<Violation>> {
        self.transition(|tx| {
            let mut recorded = Vec::with_capacity(violations.len());
            for new in violations {
                tx.state.violation_seq += 1;
                let violation = Violation {
                    id: format!("viol_{}", tx.state.violation_seq),
                    policy: new.policy,
                    stage: new.stage.to_string(),
                    decision: new.decision.to_string(),
                    reason: new.reason,
                    task_id: new.task_id,
                    agent_id: new.agent_id,
                    time: rfc3339_ms(tx.now),
                    status: Default::default(),
                    note: None,
                    updated_by: None,
                    updated_at: None,
                };
                let data = json!({"policy": violation.policy, "stage": violation.stage, "decision": violation.decision,
                                  "reason": violation.reason, "violation_id": violation.id});
                let task_id = violation.task_id.as_deref().and_then(|t| TaskId::parse("task_id", t).ok());
                tx.emit(EventKind::PolicyViolation, task_id.as_ref(), violation.agent_id.as_deref(), data);
                tx.state.violations.push_back(violation.clone());
                if tx.state.violations.len() > VIOLATIONS_KEPT {
                    tx.state.violations.pop_front();
                }
                recorded.push(violation);
            }
            Ok(recorded)
        })
    }

    async fn violations(&self, limit: usize) -> StoreResult<Vec<Violation>> {
        Ok(self.lock()?.violations.iter().rev().take(limit).cloned().collect())
    }

    async fn update_violation(&self, id: &str, update: ViolationUpdate) -> StoreResult<Option<Violation>> {
        self.transition(|tx| {
            let now = rfc3339_ms(tx.now);
            let Some(violation) = tx.state.violations.iter_mut().find(|v| v.id == id) else { return Ok(None) };
            violation.status = update.status;
            violation.note = update.note;
            violation.updated_by = Some(update.by);
            violation.updated_at = Some(now);
            Ok(Some(violation.clone()))
        })
    }

    async fn plugin_records(&self) -> StoreResult<Vec<PluginRecord>> {
        Ok(self.lock()?.plugins.values().map(|(record, _)| record.clone()).collect())
    }

    async fn plugin_record(&self, name: &str) -> StoreResult<Option<PluginRecord>> {
        Ok(self.lock()?.plugins.get(name).map(|(record, _)| record.clone()))
    }

    async fn plugin_component(&self, name: &str) -> StoreResult<Option<(String, Vec<u8>)>> {
        let state = self.lock()?;
        Ok(state.plugins.get(name).and_then(|(record, bytes)| Some((record.sha256.clone()?, bytes.clone()?))))
    }

    async fn plugin_candidate_component(&self, name: &str) -> StoreResult<Option<(String, Vec<u8>)>> {
        let state = self.lock()?;
        Ok(state.candidates.get(name).cloned())
    }

    async fn append_decisions(
        &self,
        records: Vec<DecisionRecord>,
        keep: usize,
        _retention_ms: u64,
    ) -> StoreResult<Vec<String>> {
        let now = self.clock.now_ms();
        Ok(self.decisions.lock().append(records, now, keep))
    }

    async fn task_decisions(&self, task_id: &str) -> StoreResult<Vec<DecisionRecord>> {
        Ok(self.decisions.lock().of_task(task_id))
    }

    async fn decisions(
        &self,
        after: Option<&str>,
        since_ms: Option<u64>,
        limit: usize,
    ) -> StoreResult<Vec<DecisionRecord>> {
        Ok(self.decisions.lock().range(after, since_ms, limit.min(1_000)))
    }

    async fn trim_decisions(&self, before_ms: u64, limit: usize) -> StoreResult<usize> {
        Ok(self.decisions.lock().trim(before_ms, limit))
    }

    async fn audit_head(&self) -> StoreResult<AuditHead> {
        Ok(self.audit()?.end())
    }

    async fn append_audit(&self, expected_seq: u64, entries: Vec<AuditEntry>) -> StoreResult<Option<AuditHead>> {
        let entries = entries.into_iter().map(Box::new).collect();
        let mut audit = self.audit()?;
        Ok(if audit.append(expected_seq, entries) { None } else { Some(audit.end()) })
    }

    async fn audit_entries(&self, from: u64, to: u64) -> StoreResult<Vec<AuditEntry>> {
        Ok(self.audit()?.range(from, to))
    }

    async fn audit_checkpoint(&self) -> StoreResult<Option<AuditCheckpoint>> {
        Ok(self.audit()?.checkpoint())
    }

    async fn trim_audit(&self, checkpoint: AuditCheckpoint) -> StoreResult<bool> {
        Ok(self.audit()?.trim(checkpoint))
    }

    async fn put_schedule(&self, record: ScheduleRecord, replace_next: bool) -> StoreResult<ScheduleRecord> {
        self.transition(|tx| {
            let schedules = &mut tx.state.schedules;
            if let Some(existing) = schedules.get_mut(&record.id) {
                existing.definition = record.definition;
                if replace_next {
                    existing.next_run_ms = record.next_run_ms;
                }
                return Ok(existing.clone());
            }
            if schedules.len() >= MAX_SCHEDULES {
                return Err(StoreError::conflict(
                    "too_many_schedules",
                    format!("the store keeps at most {MAX_SCHEDULES} schedules; delete some first"),
                ));
            }
            schedules.insert(record.id.clone(), record.clone());
            Ok(record)
        })
    }

    async fn schedule(&self, id: &str) -> StoreResult<Option<ScheduleRecord>> {
        Ok(self.lock()?.schedules.get(id).cloned())
    }

    async fn schedules(&self) -> StoreResult<Vec<ScheduleRecord>> {
        Ok(self.lock()?.schedules.values().cloned().collect())
    }

    async fn delete_schedule(&self, id: &str) -> StoreResult<bool> {
        self.transition(|tx| Ok(tx.state.schedules.remove(id).is_some()))
    }

    async fn due_schedules(&self, limit: usize) -> StoreResult<Due<ScheduleRecord>> {
        let state = self.lock()?;
        let now = self.clock.now_ms();
        let mut due: Vec<&ScheduleRecord> =
            state.schedules.values().filter(|s| s.next_run_ms.is_some_and(|next| next <= now)).collect();
        due.sort_by(|a, b| (a.next_run_ms, &a.id).cmp(&(b.next_run_ms, &b.id)));
        let next_in_ms = if due.len() > limit {
            Some(0)
        } else {
            state.schedules.values().filter_map(|s| s.next_run_ms).filter(|&next| next > now).min().map(|n| n - now)
        };
        Ok(Due { items: due.into_iter().take(limit).cloned().collect(), next_in_ms })
    }

    async fn advance_schedule(&self, advance: ScheduleAdvance) -> StoreResult<bool> {
        self.transition(|tx| {
            let Some(schedule) = tx.state.schedules.get_mut(&advance.id) else { return Ok(false) };
            if schedule.next_run_ms != Some(advance.from_ms) {
                return Ok(false);
            }
            schedule.next_run_ms = advance.next_ms;
            if let Some((tick, task)) = advance.fired {
                schedule.last_run_ms = Some(tick);
                schedule.last_task_id = task;
            }
            schedule.last_error = advance.error;
            schedule.runs += advance.runs;
            schedule.skipped += advance.skipped;
            Ok(true)
        })
    }

    async fn put_channel(&self, channel: &Channel) -> StoreResult<()> {
        self.transition(|tx| {
            let last_event = tx.state.events.back().map(|event| event.id());
            tx.state.notifications.put_channel(channel, last_event.as_deref())
        })
    }

    async fn channels(&self) -> StoreResult<Vec<Channel>> {
        Ok(self.lock()?.notifications.channels())
    }

    async fn delete_channel(&self, id: &str) -> StoreResult<bool> {
        self.transition(|tx| Ok(tx.state.notifications.delete_channel(id)))
    }

    async fn notification_cursor(&self) -> StoreResult<Option<String>> {
        Ok(self.lock()?.notifications.cursor())
    }

    async fn enqueue_deliveries(&self, from: Option<&str>, to: &str, deliveries: Vec<Delivery>) -> StoreResult<bool> {
        self.transition(|tx| Ok(tx.state.notifications.enqueue(from, to, deliveries, tx.now)))
    }

    async fn claim_deliveries(&self, limit: usize, lease_ms: u64) -> StoreResult<Due<Delivery>> {
        self.transition(|tx| Ok(tx.state.notifications.claim(limit, lease_ms, tx.now)))
    }

    async fn finish_delivery(&self, id: &str, attempt: u32, result: AttemptResult) -> StoreResult<bool> {
        self.transition(|tx| Ok(tx.state.notifications.finish(id, attempt, result, tx.now)))
    }

    async fn retry_delivery(&self, id: &str) -> StoreResult<Option<Delivery>> {
        self.transition(|tx| tx.state.notifications.retry(id, tx.now))
    }

    async fn deliveries(&self, status: Option<DeliveryStatus>, limit: usize) -> StoreResult<Vec<Delivery>> {
        Ok(self.lock()?.notifications.list(status, limit))
    }

    async fn delivery(&self, id: &str) -> StoreResult<Option<Delivery>> {
        Ok(self.lock()?.notifications.get(id))
    }

    async fn notification_figures(&self) -> StoreResult<BTreeMap<String, ChannelFigures>> {
        Ok(self.lock()?.notifications.figures())
    }

    async fn queue_figures(&self) -> StoreResult<QueueFigures> {
        let state = self.lock()?;
        let mut ready_by_signature: Vec<(Vec<String>, u64)> =
            state.ready.iter().map(|(signature, queue)| (signature.as_slice().to_vec(), queue.len() as u64)).collect();
        ready_by_signature.sort();
        Ok(QueueFigures {
            now_ms: self.clock.now_ms(),
            ready_by_signature,
            delayed: state.delayed.len() as u64,
            oldest_waiting_since_ms: state.waiting_since.first().map(|(since, _)| *since),
            claim_waits_ms: state.stats.claim_waits.iter().copied().collect(),
        })
    }

    /// The lock, taken and let go: the counters here are counted by walking every agent under it.
    async fn check(&self) -> StoreResult<()> {
        self.lock().map(drop)
    }

    async fn stats(&self) -> StoreResult<FleetStats> {
        let state = self.lock()?;
        let mut stats = FleetStats {
            total_agents: state.agents.len() as u64,
            waiting_claims: state.waiting.len() as u64,
            live_signatures: state.ready.len() as u64,
            last_claim_examined: state.stats.last_claim_examined,
            ..FleetStats::default()
        };
        let (now, cooldown) = (self.clock.now_ms(), self.config.breaker_cooldown_ms);
        for record in state.agents.values() {
            let agent = &record.agent;
            *stats.agents_by_status.entry(agent.status.as_str().into()).or_default() += 1;
            *stats.agents_by_provider.entry(agent.provider.clone()).or_default() += 1;
            for capability in agent.capabilities.as_slice() {
                *stats.agents_by_capability.entry(capability.clone()).or_default() += 1;
            }
            if available(record, now, cooldown) {
                stats.available_agents += 1;
            }
            *stats.agents_by_health.entry(record.health.status.as_str().into()).or_default() += 1;
            if record.breaker.state != BreakerState::Closed {
                stats.open_breakers += 1;
            }
        }
        for (status, count) in &state.stats.tasks_by_status {
            stats.tasks_by_status.insert(status.as_str().into(), *count);
        }
        for (priority, count) in &state.stats.pending_by_priority {
            stats.pending_by_priority.insert(priority.as_str().into(), *count);
        }
        stats.tasks_by_type = state.stats.tasks_by_type.clone();
        Ok(stats)
    }
}

/// How many records past the last `event_buffer` the buffer lets gather before it evicts them together.
const EVICTION_BATCH: usize = 16;

/// Drops the `count` oldest records of the buffer of recent events, and reads the next batch to leave.
///
/// A record leaves the buffer a whole buffer after it was made, out of the caches by then, with a locked decrement
/// that stalls until its line arrives: one such miss per event was nine tenths of `emit_typed`'s time
/// (docs/BENCHMARKS.md, "The sweep on an Intel day"). Plain reads of the next batch, side by side, let the CPU fetch
/// its lines together, so the next eviction finds them in the cache. (The channel drops its own copy later still, its
/// capacity rounded up to a power of two; that miss remains.)
fn evict_oldest(events: &mut VecDeque<Arc<EventRecord>>, count: usize) {
    for record in events.iter().skip(count).take(EVICTION_BATCH) {
        std::hint::black_box(Arc::strong_count(record));
    }
    events.drain(..count);
}

/// The earliest heartbeat expiry, once the index's front is true: agents found there early (a sign of life moved
/// their expiry since) go to their expiry, entries of agents no longer registered go.
fn expiry_front(state: &mut State) -> Option<u64> {
    loop {
        let (at, agent_id) = state.expiry.first()?;
        match state.agents.get(agent_id.as_str()).map(|record| record.expiry_ms) {
            Some(expiry) if expiry <= *at => return Some(*at),
            expiry => {
                let (_, agent_id) = state.expiry.pop_first().expect("the front was just read");
                if let Some(expiry) = expiry {
                    state.agents.get_mut(&agent_id).expect("just found").indexed_at = Some(expiry);
                    state.expiry.insert((expiry, agent_id));
                }
            }
        }
    }
}

/// Whether an agent could take work now and has room for it ([`Standing::available`]).
fn available(record: &AgentRecord, now: u64, cooldown_ms: u64) -> bool {
    standing(record, now, cooldown_ms).available(record.leases.len() as u32, record.agent.max_concurrent_tasks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SystemClock;

    #[tokio::test]
    async fn a_transition_that_panics_stops_the_store_instead_of_leaving_half_applied_state() {
        let store = MemoryStore::new(StoreConfig::default(), Arc::new(SystemClock::default()));
        assert!(store.stats().await.is_ok() && store.check().await.is_ok(), "a sound store answers");
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _: StoreResult<()> = store.transition(|tx| {
                tx.emit(EventKind::AgentOffline, None, Some("half"), json!({}));
                panic!("an invariant broke halfway");
            });
        }));
        assert!(panicked.is_err(), "the panic reached the caller");
        let later = [
            store.stats().await.map(|_| ()),
            store.check().await,
            store.get_task(&TaskId::generate()).await.map(|_| ()),
        ];
        for outcome in later {
            assert!(matches!(outcome, Err(StoreError::Unavailable(_))), "every later call is refused: {outcome:?}");
        }
        let transition: StoreResult<()> = store.transition(|_| Ok(()));
        assert!(matches!(transition, Err(StoreError::Unavailable(_))), "transitions are refused too");
    }

    /// The buffer evicts in batches, but what it answers is always exactly the last `event_buffer` events: a record
    /// waiting for its batch's eviction is already gone to a reader, so a resume from it is told it missed events.
    #[tokio::test]
    async fn the_buffer_answers_exactly_the_last_event_buffer_events_between_its_batch_evictions() {
        let config = StoreConfig { event_buffer: 4, ..StoreConfig::default() };
        let store = MemoryStore::new(config, Arc::new(SystemClock::default()));
        let mut issued = Vec::new();
        for n in 1..=3 * EVICTION_BATCH {
            store
                .transition(|tx| {
                    tx.emit(EventKind::AgentOffline, None, Some(&format!("agent-{n}")), json!({}));
                    Ok(())
                })
                .expect("emit");
            issued.push(store.events_after(None, 100).await.expect("read").expect("kept").last().unwrap().id.clone());
            // The buffer itself stays bounded: readers skip the records waiting in front, so only this sees a leak.
            let kept = if n <= 4 { n } else { 4 + (n - 4) % EVICTION_BATCH };
            assert_eq!(store.state.lock().events.len(), kept, "after {n}");
            let held = &issued[issued.len().saturating_sub(4)..];
            let all = store.events_after(None, 100).await.expect("read").expect("kept");
            assert_eq!(all.iter().map(|e| &e.id).collect::<Vec<_>>(), held.iter().collect::<Vec<_>>(), "after {n}");
            for (i, id) in issued.iter().enumerate() {
                let answer = store.events_after(Some(id), 100).await.expect("read");
                let after: Vec<&String> = issued[i + 1..].iter().collect();
                if held.contains(id) {
                    let ids = answer.expect("held").iter().map(|e| e.id.clone()).collect::<Vec<_>>();
                    assert_eq!(ids.iter().collect::<Vec<_>>(), after, "after {n}, from {id}");
                    let first = store.events_after(Some(id), 1).await.expect("read").expect("held");
                    assert_eq!(first.iter().map(|e| &e.id).collect::<Vec<_>>(), after[..after.len().min(1)], "limit");
                } else {
                    assert_eq!(answer, None, "after {n}, {id} is no longer held");
                }
            }
        }
    }

    #[tokio::test]
    async fn events_after_finds_only_ids_it_issued() {
        let store = MemoryStore::new(StoreConfig::default(), Arc::new(SystemClock::default()));
        for agent in ["a", "b", "c"] {
            store
                .transition(|tx| {
                    tx.emit(EventKind::AgentOffline, None, Some(agent), json!({}));
                    Ok(())
                })
                .expect("emit");
        }
        let all = store.events_after(None, 10).await.expect("read").expect("kept");
        let ids: Vec<&str> = all.iter().map(|event| event.id.as_str()).collect();
        assert_eq!(ids.len(), 3);
        let after_first = store.events_after(Some(ids[0]), 10).await.expect("read").expect("kept");
        assert_eq!(after_first.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), &ids[1..]);
        assert_eq!(store.events_after(Some(ids[0]), 1).await.expect("read").expect("kept").len(), 1, "the limit");
        assert_eq!(store.events_after(Some(ids[2]), 10).await.expect("read"), Some(Vec::new()), "the newest");
        let (ms, seq) = ids[1].split_once('-').expect("<ms>-<seq>");
        let past = format!("{ms}-{}", seq.parse::<u64>().unwrap() + 100);
        for unknown in ["", "abc", "5", "1-2-3", &format!("+{}", ids[1]), &format!("0{}", ids[1]), &past] {
            assert_eq!(store.events_after(Some(unknown), 10).await.expect("read"), None, "{unknown:?}");
        }
    }
}
