//! The scheduler: how work moves, and the one place a task's lifecycle is driven. Submits run the submit policies
//! and land in the store; new work is routed to waiting claims by the task's strategy plugin (`routing.rs`);
//! claims take the best pending task or wait for routed work, woken by a notification, never a poll loop
//! (`claims.rs`); holders start, report, complete and fail their tasks; cancels and retries; the sweeper ends
//! timed-out attempts and requeues the work of silent agents; recurring tasks fire from `schedules.rs`.
//!
//! The store does every state change atomically; this layer decides *which* change to ask for, delivers the result
//! to the right claim, and routes every task a transition makes pending again (a failure that requeues, a retry, a
//! release, a sweep, an agent lost) to the claims waiting for it, so a waiting claim never times out while work it
//! may take is pending (DESIGN §4).

mod claims;
mod policies;
pub mod routing;
mod schedules;

use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::model::Violation;
pub use policies::PolicyDenied;

use crate::config::Config;
use crate::model::{
    AgentRegistration, CapabilitySet, Completion, EventKind, EventRecord, FailRequest, Fence, NewTask, Priority,
    StoreError, SubmitRequest, Submitted, Task, TaskId, TaskStatus, ValidationError,
};
use crate::plugins::PluginRegistry;
use crate::store::Store;

/// Why the engine refused a request. Each variant maps to one HTTP status in the API.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// 400/413: the request is malformed; the error names the field.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// A store refusal (404, 409, 503).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// 403: a policy denied the request.
    #[error(transparent)]
    Denied(#[from] PolicyDenied),
    /// 400: the task names a strategy no plugin provides.
    #[error("strategy: unknown strategy {0:?} (see GET /plugins)")]
    UnknownStrategy(String),
    /// 429: a claim found nothing and may not wait, because too many claims wait already (on this server, or of
    /// this agent).
    #[error("{0}")]
    TooManyWaiting(String),
    /// 404: no schedule has this id.
    #[error("schedule {0} not found")]
    ScheduleNotFound(String),
    /// 404: no notification channel has this id.
    #[error("notification channel {0} not found")]
    ChannelNotFound(String),
    /// 404: no notification delivery has this id.
    #[error("notification delivery {0} not found")]
    DeliveryNotFound(String),
}

/// The answer to a claim.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ClaimOutcome {
    /// The granted tasks (at most `max_tasks`), best first.
    pub tasks: Vec<Task>,
    /// Why nothing was granted, when the agent may not take work (`paused`, `draining`, …).
    pub reason: Option<String>,
}

/// A claim as an agent asks for it.
#[derive(Clone, Debug, PartialEq)]
pub struct Claim {
    /// The agent.
    pub agent_id: String,
    /// Narrows the registered capabilities for this claim.
    pub capabilities: Option<CapabilitySet>,
    /// How long to wait for work when none is pending.
    pub block: Duration,
    /// Tasks to take at most.
    pub max_tasks: usize,
    /// The agent's session.
    pub session_id: Option<String>,
}

/// Longest a claim may block (DESIGN §4).
pub const MAX_BLOCK: Duration = Duration::from_secs(60);

/// The scheduler; shared as `Arc<Scheduler>` (see [`Scheduler::new`]).
pub struct Scheduler {
    store: Arc<dyn Store>,
    plugins: Arc<PluginRegistry>,
    config: Config,
    /// This scheduler, for the routing it starts after answering a submit.
    me: Weak<Scheduler>,
    /// Routing started after a submit answered: owned here, so shutdown waits for them.
    routes: TaskTracker,
    /// Claims of this server waiting for routed work.
    waiting: claims::Waiting,
    /// Dispatch denials already recorded by this server.
    dispatch_seen: policies::DispatchSeen,
    /// A schedule was created or changed through this server: the schedule loop looks again at once.
    schedules_changed: tokio::sync::Notify,
}

impl Scheduler {
    /// A scheduler over `store`, routing with the strategies of `plugins`.
    pub fn new(store: Arc<dyn Store>, plugins: Arc<PluginRegistry>, config: Config) -> Arc<Self> {
        Arc::new_cyclic(|me| Scheduler {
            store,
            plugins,
            config,
            me: me.clone(),
            routes: TaskTracker::new(),
            waiting: claims::Waiting::default(),
            dispatch_seen: policies::DispatchSeen::new(crate::model::VIOLATIONS_KEPT),
            schedules_changed: tokio::sync::Notify::new(),
        })
    }

    /// The store (the registry and health monitor share it).
    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn defaults(&self) -> (u32, u32) {
        (self.config.task_timeout.as_secs().clamp(1, 86_400) as u32, self.config.max_task_retries)
    }

    /// Validates, runs the submit policies and stores the task; answers once it is committed. Routing it to a
    /// waiting claim happens after the answer, from the offer the commit made.
    pub async fn submit(&self, request: SubmitRequest, submitted_by: &str) -> Result<Submitted, EngineError> {
        let (timeout, retries) = self.defaults();
        let mut task = request.validate(submitted_by, timeout, retries)?;
        let strategy = self.strategy_of(&task)?;
        let has_submit_policies = !self.plugins.policies().is_empty();
        // Idempotency is checked before the policies (DESIGN §4): a replay answers the first task even if a policy
        // changed since. The store checks again atomically when it commits (and alone, without policies).
        if has_submit_policies
            && let Some(key) = &task.idempotency_key
            && let Some((task_id, fingerprint)) = self.store.idempotent_task(submitted_by, key).await?
        {
            if fingerprint == task.fingerprint {
                return Ok(Submitted { task_id, replayed: true });
            }
            return Err(StoreError::conflict(
                "idempotency_key_reused",
                format!("idempotency key {key:?} was used for a different task"),
            )
            .into());
        }
        if has_submit_policies {
            self.apply_submit_policies(&mut task).await?;
        }
        let route = routing::Route::new(&task, &strategy.0, strategy.1);
        let committed = self.store.submit(task, route.offer_limit(&self.config)).await?;
        if let Some(offer) = committed.offer {
            self.spawn_routes(vec![(route, offer)]);
        }
        Ok(committed.submitted)
    }

    /// Submits several tasks, all or nothing.
    pub async fn submit_batch(
        &self,
        requests: Vec<SubmitRequest>,
        submitted_by: &str,
    ) -> Result<Vec<Submitted>, EngineError> {
        let (timeout, retries) = self.defaults();
        let mut tasks: Vec<NewTask> = Vec::with_capacity(requests.len());
        let mut routes = Vec::with_capacity(requests.len());
        let mut keys = std::collections::HashSet::new();
        let mut offer_limit = 1;
        for (index, request) in requests.into_iter().enumerate() {
            let mut task = request
                .validate(submitted_by, timeout, retries)
                .map_err(|e| ValidationError { field: format!("tasks[{index}].{}", e.field), ..e })?;
            if let Some(key) = &task.idempotency_key
                && !keys.insert(key.clone())
            {
                return Err(
                    ValidationError::new(format!("tasks[{index}].idempotency_key"), "repeated in this batch").into()
                );
            }
            let strategy = self.strategy_of(&task)?;
            self.apply_submit_policies(&mut task).await?;
            let route = routing::Route::new(&task, &strategy.0, strategy.1);
            offer_limit = offer_limit.max(route.offer_limit(&self.config));
            routes.push(route);
            tasks.push(task);
        }
        let committed = self.store.submit_batch(tasks, offer_limit).await?;
        let mut submitted = Vec::with_capacity(committed.len());
        let mut offered = Vec::new();
        for (commit, route) in committed.into_iter().zip(routes) {
            if let Some(offer) = commit.offer {
                offered.push((route, offer));
            }
            submitted.push(commit.submitted);
        }
        if !offered.is_empty() {
            self.spawn_routes(offered);
        }
        Ok(submitted)
    }

    async fn apply_submit_policies(&self, task: &mut NewTask) -> Result<(), EngineError> {
        self.settle(policies::on_submit(&self.plugins, task, self.store.now_ms())).await
    }

    /// Records a policy stage's violations; a deny becomes the error, carrying its violation's id.
    async fn settle(&self, outcome: policies::StageOutcome) -> Result<(), EngineError> {
        match outcome {
            Ok(warnings) => {
                self.record(warnings).await;
                Ok(())
            }
            Err((mut denied, violations)) => {
                denied.violation_id = self.record(violations).await.pop().map(|v| v.id);
                Err(denied.into())
            }
        }
    }

    /// Records violations in the store (fleet-wide, with their events). A store that cannot record them does not
    /// change the verdict: a deny still denies, without a violation id.
    pub(crate) async fn record(&self, pending: Vec<policies::PendingViolation>) -> Vec<Violation> {
        let pending = self.dispatch_seen.first_time(pending);
        if pending.is_empty() {
            return Vec::new();
        }
        match self.store.record_violations(pending).await {
            Ok(recorded) => recorded,
            Err(error) => {
                tracing::warn!(%error, "policy violations not recorded");
                Vec::new()
            }
        }
    }

    /// The strategy a task routes with: its own, else `DEFAULT_STRATEGY` (the name's canary when it takes this
    /// task); 400 when no plugin provides it.
    fn strategy_of(
        &self,
        task: &NewTask,
    ) -> Result<(Arc<crate::plugins::PluginVersion>, crate::model::DecisionRole), EngineError> {
        let name = task.strategy.as_deref().unwrap_or(&self.config.default_strategy);
        self.plugins
            .strategy_for(name, task.task_id.as_str())
            .map_err(|_| EngineError::UnknownStrategy(name.to_string()))
    }

    /// The agent started the task (claimed → running).
    pub async fn start(&self, task_id: &TaskId, fence: &Fence) -> Result<Task, EngineError> {
        Ok(self.store.start(task_id, fence).await?)
    }

    /// The agent reports progress.
    pub async fn progress(&self, task_id: &TaskId, fence: &Fence, progress: Value) -> Result<Task, EngineError> {
        Ok(self.store.progress(task_id, fence, progress).await?)
    }

    /// The task completed.
    pub async fn complete(&self, task_id: &TaskId, fence: &Fence, completion: Completion) -> Result<Task, EngineError> {
        Ok(self.store.complete(task_id, fence, completion).await?)
    }

    /// Completes several tasks in one store step; each outcome stands alone.
    pub async fn complete_batch(
        &self,
        outcomes: Vec<(TaskId, Fence, Completion)>,
    ) -> Result<Vec<Result<Task, StoreError>>, EngineError> {
        Ok(self.store.complete_batch(outcomes).await?)
    }

    /// The attempt failed: requeued while retries remain (and routed to the claims waiting for it), else failed.
    pub async fn fail(&self, task_id: &TaskId, fence: &Fence, failure: &FailRequest) -> Result<Task, EngineError> {
        let task = self.store.fail(task_id, fence, failure).await?;
        self.route_if_pending(&task);
        Ok(task)
    }

    /// Cancels a task.
    pub async fn cancel(&self, task_id: &TaskId) -> Result<Task, EngineError> {
        Ok(self.store.cancel(task_id).await?)
    }

    /// Moves a pending task to another priority level. Nothing to route: a pending task is one no waiting claim
    /// could take, whatever its priority.
    pub async fn prioritize(&self, task_id: &TaskId, priority: Priority) -> Result<Task, EngineError> {
        Ok(self.store.prioritize(task_id, priority).await?)
    }

    /// Retries a failed, timed-out or cancelled task: pending again, routed to the claims waiting for it.
    pub async fn retry(&self, task_id: &TaskId) -> Result<Task, EngineError> {
        let task = self.store.retry(task_id).await?;
        self.route_if_pending(&task);
        Ok(task)
    }

    /// Routes a task that a transition left pending and claimable now.
    fn route_if_pending(&self, task: &Task) {
        if task.status == TaskStatus::Pending && task.available_at.is_none() {
            self.route_requeued(vec![task.task_id.clone()]);
        }
    }

    /// Routes tasks a transition made pending again (agent lost, released, promoted after backoff) to the claims
    /// waiting for them, after the caller's answer.
    pub(crate) fn route_requeued(&self, tasks: Vec<TaskId>) {
        if tasks.is_empty() {
            return;
        }
        let Some(me) = self.me.upgrade() else { return };
        self.routes.spawn(async move {
            for task_id in tasks {
                me.route_pending(&task_id).await;
            }
        });
    }

    /// Runs the register policies over a registration (the agent registry's entry to the policy stage), recording
    /// violations in the scheduler's log.
    pub(crate) async fn policies_on_register(&self, registration: &mut AgentRegistration) -> Result<(), EngineError> {
        self.settle(policies::on_register(&self.plugins, registration, self.store.now_ms())).await
    }

    /// Policy violations of the fleet, newest first.
    pub async fn violations(&self, limit: usize) -> Result<Vec<Violation>, EngineError> {
        Ok(self.store.violations(limit).await?)
    }

    /// Waits for the routing started after submits to finish (shutdown).
    pub async fn drain_routes(&self) {
        self.routes.close();
        self.routes.wait().await;
    }

    /// Acts on one of the store's events (the coordinator's event pump hands each over, in order): a task routed
    /// by another server to a claim waiting here wakes that claim, and an agent that may take work again has its
    /// waiting and refused claims look again. Never blocks.
    pub(crate) fn observe(&self, event: &EventRecord) {
        match event.kind {
            // This server wakes the claims it routes to itself; another server's hand-off arrives here.
            EventKind::TaskClaimed if *event.server_id != *self.config.server_id => {
                if let Some(token) = event.str_field("waiter") {
                    // No claim waits on it here: not ours, or it withdrew already.
                    let _ = self.waiting.wake(token, claims::Wake::Look);
                }
            }
            EventKind::TaskSubmitted => {
                for capability in event.required_capabilities() {
                    if capability.starts_with(crate::model::ADDRESS_PREFIX) {
                        self.waiting.wake_address(capability);
                    }
                }
            }
            EventKind::AgentStatusChanged | EventKind::HealthChanged | EventKind::BreakerChanged
                if may_take_work_again(event) =>
            {
                if let Some(agent) = event.agent() {
                    self.waiting.wake_agent(agent);
                }
            }
            _ => {}
        }
    }

    /// Store events were missed (the pump fell behind, or the store's reader did): they may have been hand-offs to
    /// claims here, so every claim looks again.
    pub(crate) fn events_missed(&self) {
        self.waiting.wake_all();
    }

    /// Runs the deadline-driven sweeps until `shutdown` fires: looks at the store's earliest deadline and, once it
    /// has passed, ends timed-out attempts, requeues silent agents' work and makes backed-off tasks claimable, 100 at
    /// a time, routing what became pending; then sleeps to the deadline (at least 250 ms, with jitter, at most a
    /// second, so one set meanwhile is seen soon). With no deadline passed it sweeps nothing: an idle server makes
    /// one store call a second here. Every `CLEANUP_INTERVAL` it also applies retention.
    pub async fn run_sweeper(self: Arc<Self>, shutdown: CancellationToken) {
        let mut next_cleanup = tokio::time::Instant::now() + self.config.cleanup_interval;
        // After losing the store for over a second, agents could not heartbeat or renew leases meanwhile: give
        // them a full HEARTBEAT_TIMEOUT before sweeping, or one outage would mark the whole fleet offline.
        let mut store_lost_at: Option<tokio::time::Instant> = None;
        let mut sweeps_resume_at = tokio::time::Instant::now();
        loop {
            let now = self.store.now_ms();
            let next = match self.store.next_deadline().await {
                Ok(next) => {
                    if let Some(lost) = store_lost_at.take()
                        && lost.elapsed() > Duration::from_secs(1)
                    {
                        sweeps_resume_at = tokio::time::Instant::now() + self.config.heartbeat_timeout;
                        tracing::warn!(
                            outage = ?lost.elapsed(),
                            "store is back after an outage: no timeout or offline sweeps for HEARTBEAT_TIMEOUT"
                        );
                    }
                    next
                }
                Err(_) => {
                    store_lost_at.get_or_insert_with(tokio::time::Instant::now);
                    None
                }
            };
            if store_lost_at.is_none() {
                let sweeps_allowed = tokio::time::Instant::now() >= sweeps_resume_at;
                if sweeps_allowed && tokio::time::Instant::now() >= next_cleanup {
                    let retention = self.config.task_retention.as_millis() as u64;
                    while matches!(self.store.housekeeping(retention, retention, 1000).await, Ok(1000)) {}
                    next_cleanup = tokio::time::Instant::now() + self.config.cleanup_interval;
                }
                if next.is_some_and(|at| at <= self.store.now_ms()) {
                    self.sweep_passed(sweeps_allowed).await;
                }
            }
            // While the store is away, looked at again soon: a blip shorter than a second is no outage.
            let wait_ms = match (next, store_lost_at) {
                (_, Some(_)) => 250,
                (Some(at), None) => at.saturating_sub(now).clamp(250, 1000),
                (None, None) => 1000,
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(wait_ms + rand::random::<u64>() % 50)) => {}
            }
        }
    }

    /// Sweeps what passed its deadline: backed-off tasks become claimable (even in an outage's grace: that only
    /// makes work claimable), then, with `timeouts_too`, timed-out attempts end and silent agents go offline.
    async fn sweep_passed(&self, timeouts_too: bool) {
        while let Ok(promoted) = self.store.promote_due(100).await {
            let full = promoted.len() == 100;
            self.route_requeued(promoted);
            if !full {
                break;
            }
        }
        if !timeouts_too {
            return;
        }
        while let Ok(swept) = self.store.sweep_timeouts(100).await {
            self.route_requeued(swept.requeued);
            if swept.count < 100 {
                break;
            }
        }
        while let Ok(swept) = self.store.sweep_offline(100).await {
            self.route_requeued(swept.requeued);
            if swept.count < 100 {
                break;
            }
        }
    }
}

/// Whether an agent event means it may take work again: resumed, back from draining, failed or offline, no
/// longer unhealthy, or its breaker no longer open.
fn may_take_work_again(event: &EventRecord) -> bool {
    let field = |name: &str| event.str_field(name);
    match event.kind {
        EventKind::AgentStatusChanged => {
            event.bool_field("paused") == Some(false)
                || matches!(field("from"), Some("draining" | "failed" | "offline" | "starting"))
        }
        EventKind::HealthChanged => field("from") == Some("unhealthy"),
        EventKind::BreakerChanged => field("to") != Some("open"),
        _ => false,
    }
}
