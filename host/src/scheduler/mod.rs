//! The scheduler: how work moves. Submits run the submit policies and land in the store; new work is routed to
//! waiting agents by the task's strategy plugin; claims take the best pending task or block, woken by a
//! notification (never a poll loop); sweeps end timed-out attempts and requeue the work of silent agents.
//!
//! The store does every state change atomically; this layer decides *which* change to ask for and delivers the
//! result to the right waiter. A grant that cannot be delivered (the claimer went away) is released back to its
//! place without counting a retry (DESIGN §4, "delivery is part of the claim").

mod policies;
pub mod routing;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{broadcast, oneshot};

pub use crate::store::Violation;
pub use policies::PolicyDenied;

use crate::config::Config;
use crate::model::{CapabilitySet, NewTask, SubmitRequest, Task, TaskId, ValidationError};
use crate::plugins::PluginRegistry;
use crate::store::{ClaimRequest, Store, StoreError, Submitted, Waiter, Withdrawn};

/// How long a waiter token outlives its claim's block in the store. The claim measures its block on this host from
/// after the registration returns, so a token dying exactly at the block would refuse hand-offs in the claim's last
/// moments; a token that outlives its claim is harmless (the claim withdraws it), unless the server died holding the
/// claim — then this grace is how long work can still be routed to a claim nobody waits on.
const WAITER_GRACE: Duration = Duration::from_millis(500);

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

/// The scheduler; shared as `Arc<Scheduler>`.
pub struct Scheduler {
    store: Arc<dyn Store>,
    plugins: Arc<PluginRegistry>,
    config: Config,
    /// Blocked claims of this server, by waiter token: woken when a task is assigned through the token.
    waiting: Mutex<HashMap<String, oneshot::Sender<()>>>,
    /// Dispatch denials already recorded by this server.
    dispatch_seen: policies::DispatchSeen,
}

impl Scheduler {
    /// A scheduler over `store`, routing with the strategies of `plugins`.
    pub fn new(store: Arc<dyn Store>, plugins: Arc<PluginRegistry>, config: Config) -> Self {
        Scheduler {
            store,
            plugins,
            config,
            waiting: Mutex::new(HashMap::new()),
            dispatch_seen: policies::DispatchSeen::new(crate::store::VIOLATIONS_KEPT),
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Validates, runs the submit policies, stores the task and routes it to a waiting agent if one fits.
    pub async fn submit(&self, request: SubmitRequest, submitted_by: &str) -> Result<Submitted, EngineError> {
        let mut task = request.validate(
            submitted_by,
            self.config.task_timeout.as_secs().clamp(1, 86_400) as u32,
            self.config.max_task_retries,
        )?;
        self.check_strategy(&task)?;
        // Idempotency is checked before the policies (DESIGN §4): a replay answers the first task even if a policy
        // changed since. The store checks again atomically when it commits.
        if let Some(key) = &task.idempotency_key
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
        self.apply_submit_policies(&mut task).await?;
        let submitted = self.store.submit(task).await?;
        if !submitted.replayed {
            self.route(&submitted.task_id).await;
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

    /// Submits several tasks, all or nothing.
    pub async fn submit_batch(
        &self,
        requests: Vec<SubmitRequest>,
        submitted_by: &str,
    ) -> Result<Vec<Submitted>, EngineError> {
        let mut tasks: Vec<NewTask> = Vec::with_capacity(requests.len());
        let mut keys = std::collections::HashSet::new();
        for (index, request) in requests.into_iter().enumerate() {
            let mut task = request
                .validate(
                    submitted_by,
                    self.config.task_timeout.as_secs().clamp(1, 86_400) as u32,
                    self.config.max_task_retries,
                )
                .map_err(|e| ValidationError { field: format!("tasks[{index}].{}", e.field), ..e })?;
            if let Some(key) = &task.idempotency_key
                && !keys.insert(key.clone())
            {
                return Err(
                    ValidationError::new(format!("tasks[{index}].idempotency_key"), "repeated in this batch").into()
                );
            }
            self.check_strategy(&task)?;
            self.apply_submit_policies(&mut task).await?;
            tasks.push(task);
        }
        let submitted = self.store.submit_batch(tasks).await?;
        for done in submitted.iter().filter(|s| !s.replayed) {
            self.route(&done.task_id).await;
        }
        Ok(submitted)
    }

    fn check_strategy(&self, task: &NewTask) -> Result<(), EngineError> {
        let name = task.strategy.as_deref().unwrap_or(&self.config.default_strategy);
        self.plugins.strategy(name).map(|_| ()).map_err(|_| EngineError::UnknownStrategy(name.to_string()))
    }

    /// Takes work for an agent: at once if some is pending, else after waiting up to `block` for a routed task.
    pub async fn claim(&self, claim: &Claim) -> Result<ClaimOutcome, EngineError> {
        let agent = self.store.get_agent(&claim.agent_id).await?.ok_or_else(|| {
            StoreError::AgentNotFound(format!("{} (register with POST /agents before claiming)", claim.agent_id))
        })?;
        let capabilities = match &claim.capabilities {
            None => agent.capabilities.clone(),
            Some(narrowed) => CapabilitySet::from_normalized(
                narrowed.as_slice().iter().filter(|c| agent.capabilities.contains(c)).cloned().collect(),
            ),
        };
        let block = claim.block.min(MAX_BLOCK);
        if matches!(agent.status, crate::model::AgentStatus::Offline | crate::model::AgentStatus::Starting) {
            // A claim is a sign of life and brings the agent back before anything else looks at it: routing
            // offers work only to live agents, and the policy path below may wait without touching the store.
            self.store.keep_alive(&claim.agent_id).await?;
        }
        let health = self.store.agent_health(&claim.agent_id).await?;
        if let Some(reason) = refusal(&agent, health.as_ref()) {
            // A refused agent waits its full block, so it cannot spin on the claim endpoint; it is alive meanwhile.
            self.keep_alive_for(&claim.agent_id, block).await;
            return Ok(ClaimOutcome { tasks: Vec::new(), reason: Some(reason.into()) });
        }
        let request = ClaimRequest {
            agent_id: claim.agent_id.clone(),
            capabilities: capabilities.clone(),
            max_tasks: claim.max_tasks.max(1),
            session_id: claim.session_id.clone(),
        };
        let tasks = self.claim_now(&request).await?;
        if !tasks.is_empty() || block.is_zero() {
            return Ok(ClaimOutcome { tasks, reason: None });
        }
        self.wait_for_work(&request, block).await
    }

    /// One attempt at taking pending work, through the dispatch policies when there are any.
    async fn claim_now(&self, request: &ClaimRequest) -> Result<Vec<Task>, EngineError> {
        if self.plugins.policies().is_empty() {
            return Ok(self.store.claim(request).await?);
        }
        let Some(agent) = self.store.get_agent(&request.agent_id).await? else {
            return Err(StoreError::AgentNotFound(request.agent_id.clone()).into());
        };
        let mut granted = Vec::new();
        for task in self.store.peek(&request.capabilities, self.config.dispatch_scan).await? {
            if granted.len() >= request.max_tasks {
                break;
            }
            let denials = policies::on_dispatch(&self.plugins, &task, &agent, self.store.now_ms());
            if !denials.is_empty() {
                self.record(denials).await;
                continue;
            }
            if let Some(task) = self.store.claim_if(&task.task_id, request).await? {
                granted.push(task);
            }
        }
        Ok(granted)
    }

    /// Registers a waiter and waits for a routed task, keeping the agent alive meanwhile.
    ///
    /// The task assigned through the waiter token is always taken from `withdraw_waiter`, never from the wake-up:
    /// the wake-up only says "look now". So a grant reaches the claim exactly once whatever the interleaving, and
    /// a claim that went away (future dropped) has its grant released by [`WaiterGuard`].
    async fn wait_for_work(&self, request: &ClaimRequest, block: Duration) -> Result<ClaimOutcome, EngineError> {
        let token = format!("{:032x}", rand::random::<u128>());
        let (sender, mut woken) = oneshot::channel();
        self.waiting.lock().insert(token.clone(), sender);
        let mut guard = WaiterGuard { scheduler: self, token: token.clone(), armed: true };
        self.store
            .register_waiter(
                Waiter {
                    token: token.clone(),
                    agent_id: request.agent_id.clone(),
                    capabilities: request.capabilities.clone(),
                },
                block + WAITER_GRACE,
            )
            .await?;
        // Work submitted between the first attempt and the registration saw no waiter: look once more.
        let mut tasks = self.claim_now(request).await?;
        if tasks.is_empty() {
            let deadline = tokio::time::Instant::now() + block;
            let keepalive = self.config.heartbeat_interval.max(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = &mut woken => break,
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = tokio::time::sleep(keepalive) => {
                        // While a claim is blocked the agent is alive (DESIGN §4); not a heartbeat, which would
                        // consume the revocation notices meant for the agent's own next heartbeat.
                        let _ = self.store.keep_alive(&request.agent_id).await;
                    }
                }
            }
        }
        self.waiting.lock().remove(&token);
        let assigned = self.store.withdraw_waiter(&token).await?;
        guard.armed = false;
        if let Withdrawn::Assigned(task) = assigned {
            if tasks.len() < request.max_tasks {
                tasks.push(*task);
            } else if let Some(lease) = &task.lease_id {
                // The second look filled the claim and a submit routed one more: give the extra back unharmed.
                self.store.release(&task.task_id, lease).await?;
            }
        }
        Ok(ClaimOutcome { tasks, reason: None })
    }

    /// Keeps an agent alive for `period` (a refused claim's wait).
    async fn keep_alive_for(&self, agent_id: &str, period: Duration) {
        let deadline = tokio::time::Instant::now() + period;
        let keepalive = self.config.heartbeat_interval.max(Duration::from_millis(100));
        loop {
            let _ = self.store.keep_alive(agent_id).await;
            let next = (tokio::time::Instant::now() + keepalive).min(deadline);
            tokio::time::sleep_until(next).await;
            if next >= deadline {
                return;
            }
        }
    }

    /// Offers requeued and released work to blocked claims, as a submit offers new work: claims wait on
    /// notifications only, so work that becomes pending again must be routed too (once its backoff is over).
    pub async fn run_router(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        use crate::model::EventKind;
        let mut events = self.store.subscribe();
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => return,
                received = events.recv() => match received {
                    Ok(event) => event,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            // A task routed to a blocked claim of this server, possibly by another server's router.
            if event.kind == EventKind::TaskClaimed
                && let Some(token) = event.data.get("waiter").and_then(serde_json::Value::as_str)
            {
                self.wake(token);
                continue;
            }
            if !matches!(event.kind, EventKind::TaskRetried | EventKind::TaskReleased) {
                continue;
            }
            let Some(task_id) = event.task_id.as_deref().and_then(|id| TaskId::parse("task_id", id).ok()) else {
                continue;
            };
            let Ok(Some(task)) = self.store.get_task(&task_id).await else { continue };
            let due_in = task
                .available_at
                .as_deref()
                .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
                .map(|at| (at.timestamp_millis().max(0) as u64).saturating_sub(self.store.now_ms()));
            match due_in {
                Some(wait) if wait > 0 => {
                    let scheduler = self.clone();
                    let shutdown = shutdown.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = shutdown.cancelled() => {}
                            _ = tokio::time::sleep(Duration::from_millis(wait)) => scheduler.route(&task_id).await,
                        }
                    });
                }
                _ => self.route(&task_id).await,
            }
        }
    }

    /// Wakes the blocked claim that registered `token` (a task was assigned through it).
    fn wake(&self, token: &str) {
        if let Some(sender) = self.waiting.lock().remove(token) {
            let _ = sender.send(());
        }
    }

    /// Policy violations of the fleet, newest first.
    pub async fn violations(&self, limit: usize) -> Result<Vec<Violation>, EngineError> {
        Ok(self.store.violations(limit).await?)
    }

    /// The plugins.
    pub fn plugins(&self) -> &Arc<PluginRegistry> {
        &self.plugins
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Runs the deadline-driven sweeps until `shutdown` fires: sleeps to the store's earliest deadline (at least
    /// 250 ms, with jitter), then ends timed-out attempts and requeues silent agents' work, 100 at a time; every
    /// `CLEANUP_INTERVAL` it also applies retention.
    pub async fn run_sweeper(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
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
                    next.unwrap_or(now + 1000)
                }
                Err(_) => {
                    store_lost_at.get_or_insert_with(tokio::time::Instant::now);
                    now + 1000
                }
            };
            let wait_ms = next.saturating_sub(now).clamp(250, 1000) + rand::random::<u64>() % 50;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(wait_ms)) => {}
            }
            if store_lost_at.is_some() || tokio::time::Instant::now() < sweeps_resume_at {
                continue;
            }
            if tokio::time::Instant::now() >= next_cleanup {
                let retention = self.config.task_retention.as_millis() as u64;
                while matches!(self.store.housekeeping(retention, retention, 1000).await, Ok(1000)) {}
                next_cleanup = tokio::time::Instant::now() + self.config.cleanup_interval;
            }
            while matches!(self.store.sweep_timeouts(100).await, Ok(100)) {}
            while matches!(self.store.sweep_offline(100).await, Ok(100)) {}
        }
    }
}

/// Why an agent may not take work now, if it may not.
fn refusal(agent: &crate::model::Agent, health: Option<&crate::store::AgentHealth>) -> Option<&'static str> {
    use crate::model::AgentStatus;
    use crate::store::{BreakerState, HealthState};
    if agent.paused {
        return Some("paused");
    }
    if let Some(health) = health {
        if health.status == HealthState::Unhealthy {
            return Some("unhealthy");
        }
        if health.breaker == BreakerState::Open {
            return Some("breaker_open");
        }
    }
    match agent.status {
        AgentStatus::Draining => Some("draining"),
        AgentStatus::Failed => Some("failed"),
        _ => None,
    }
}

/// Withdraws a blocked claim's waiter if the claim future is dropped (client gone) before it answered, and
/// releases a task assigned to it meanwhile, so nothing is stranded.
struct WaiterGuard<'a> {
    scheduler: &'a Scheduler,
    token: String,
    armed: bool,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.scheduler.waiting.lock().remove(&self.token);
        let store = self.scheduler.store.clone();
        let token = std::mem::take(&mut self.token);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Ok(Withdrawn::Assigned(task)) = store.withdraw_waiter(&token).await
                    && let Some(lease) = &task.lease_id
                {
                    let _ = store.release(&task.task_id, lease).await;
                }
            });
        }
    }
}

/// Runs the register policies over a registration (the agent registry's entry to the policy stage), recording
/// violations in the scheduler's log.
pub async fn policies_on_register(
    scheduler: &Scheduler,
    registration: &mut crate::store::AgentRegistration,
) -> Result<(), EngineError> {
    scheduler.settle(policies::on_register(&scheduler.plugins, registration, scheduler.store.now_ms())).await
}
