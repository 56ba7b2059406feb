//! The coordinator: the façade the API, the CLI and embedding programs use, mirroring the guide's Python API in
//! idiomatic Rust (`ControlPlaneCoordinator::create(config)`, `register_agent`, `submit_task`, `claim_task`,
//! `complete_task`, `wait_for_result`, `select_agent`, `get_stats`, `shutdown`…). It owns the parts (store,
//! plugins, scheduler, agent registry), their background duties (sweeper, plugin watcher, the event pump) and
//! one typed event stream of everything that happens. `event_pump.rs` hands each store event to the parts that
//! act on it; `fleet_plugins.rs` applies the fleet's plugin uploads and enable/disable records to this server's
//! registry; `deliberations.rs` is the server's orchestrator of deliberation rounds.

pub mod audit;
pub mod decision_log;
pub mod deliberations;
mod event_pump;
pub mod fleet_plugins;

use fleet_plugins::FleetPluginError;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::health::HealthMonitor;
use crate::model::{
    Agent, AgentStatus, CapabilitySet, Event, HeartbeatRequest, RegisterRequest, SubmitRequest, Task, TaskId,
    TaskStatus,
};
use crate::model::{
    AgentFilter, AgentHealth, AuditEntry, AuditHead, Completion, EventRecord, FailRequest, Fence, FleetStats,
    HealthState, HeartbeatOutcome, NewAuditEntry, PluginAction, PluginRecord, Priority, QueueFigures, Registered,
    Schedule, ScheduleChange, ScheduleSpec, StoreError, Submitted, TaskFilter, TaskPage, ViolationUpdate,
};
use crate::model::{
    Channel, ChannelFigures, Delivery, DeliveryStatus, NewChannel, ValidationError, new_channel_id, rfc3339_ms,
};
use crate::model::{DecisionQuery, DecisionRecord, RolloutMode};
use crate::plugins::decision_log::DecisionLog;
use crate::plugins::registry::{Liveness, PluginInfo};
use crate::plugins::rollout::ShadowFigures;
use crate::plugins::rules::{RuleSet, rules_component};
use crate::plugins::watcher::WatchOptions;
use crate::plugins::{LoadError, Manifest, PluginRegistry, PluginRuntime, PluginSource, PluginWatcher, RuntimeOptions};
use crate::registry::AgentRegistry;
use crate::scheduler::routing::AgentSelection;
use crate::scheduler::{Claim, ClaimOutcome, EngineError, Scheduler, Violation};
use crate::store::{MemoryStore, Store, SystemClock};

/// The fleet's health.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SystemHealth {
    /// healthy (no agent unhealthy), degraded (some), unhealthy (all), or unknown (no agents).
    pub status: &'static str,
    /// Per agent.
    pub agents: std::collections::BTreeMap<String, AgentHealth>,
}

/// An offline agent is unhealthy whatever its last probe said: liveness is part of health.
fn with_liveness(mut health: AgentHealth, agent: &Agent) -> AgentHealth {
    if agent.status == AgentStatus::Offline {
        health.status = HealthState::Unhealthy;
        health.message = format!("offline: no heartbeat within HEARTBEAT_TIMEOUT (last probe: {})", health.message);
    }
    health
}

/// `get_stats()`: the guide's sections, from the store's counters.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Stats {
    /// Agents.
    pub registry: Value,
    /// Tasks.
    pub scheduler: Value,
    /// Health.
    pub health: Value,
}

/// The control plane, as one handle. Create it with [`create`](Self::create); share the `Arc`.
pub struct ControlPlaneCoordinator {
    config: Config,
    store: Arc<dyn Store>,
    plugins: Arc<PluginRegistry>,
    scheduler: Arc<Scheduler>,
    registry: AgentRegistry,
    health: Arc<HealthMonitor>,
    events: broadcast::Sender<Arc<Event>>,
    shutdown: CancellationToken,
    background: Mutex<Vec<JoinHandle<()>>>,
    watcher: Mutex<Option<PluginWatcher>>,
    fleet_plugins: Arc<fleet_plugins::FleetPlugins>,
    audit: Arc<audit::AuditLog>,
    /// Makes this server's deliberation orchestrator look for sessions at once.
    deliberation_wake: Arc<tokio::sync::Notify>,
    /// This server's `decision` events (the decision log's writer sends them once stored).
    decision_events: broadcast::Sender<Arc<Event>>,
    /// Store events for `wait_for_result`, as the store handed them: a long poll reads a task id off the record
    /// rather than making the pump build every event's wire form while it waits.
    task_waits: broadcast::Sender<Arc<EventRecord>>,
    /// Counts the times [`subscribe`](Self::subscribe) missed store events (the event pump fell behind the store, or
    /// the store's reader skipped some): a stream that sees it change ends, and its client resumes from its last id.
    stream_gaps: tokio::sync::watch::Sender<u64>,
}

/// Store events a `wait_for_result` may fall behind by before it reads its task again instead.
const TASK_WAIT_BUFFER: usize = 1_024;

impl ControlPlaneCoordinator {
    /// A control plane on the embedded memory store: built-in strategies, plugins from `config.plugins_dir`
    /// (watched for changes), the sweeper running. Needs a tokio runtime.
    pub async fn create(config: Config) -> anyhow::Result<Arc<Self>> {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new(config.store_config(), Arc::new(SystemClock::default())));
        Self::with_store(config, store).await
    }

    /// A control plane over `store` (memory or Redis, see `store::open`), with the built-in strategies and the
    /// plugins of `config.plugins_dir`. Needs a tokio runtime.
    pub async fn with_store(config: Config, store: Arc<dyn Store>) -> anyhow::Result<Arc<Self>> {
        let runtime = PluginRuntime::new(RuntimeOptions {
            cache_dir: RuntimeOptions::user_cache_dir(),
            maxima: config.plugin_maxima,
            max_component_bytes: config.max_component_bytes,
            ..Default::default()
        })?;
        let liveness =
            Liveness { heartbeat_interval: config.heartbeat_interval, heartbeat_timeout: config.heartbeat_timeout };
        let plugins = Arc::new(PluginRegistry::with_liveness(runtime, config.server_id.clone(), liveness)?);
        Self::with_parts(config, store, plugins).await
    }

    /// A control plane over the given store and plugin registry (tests inject a clock or a Redis store here).
    pub async fn with_parts(
        config: Config,
        store: Arc<dyn Store>,
        plugins: Arc<PluginRegistry>,
    ) -> anyhow::Result<Arc<Self>> {
        let scheduler = Scheduler::new(store.clone(), plugins.clone(), config.clone());
        let registry = AgentRegistry::new(scheduler.clone());
        let health = Arc::new(HealthMonitor::new(
            config.server_id.clone(),
            store.clone(),
            plugins.clone(),
            config.probes.clone(),
        ));
        let (events, _) = broadcast::channel(config.event_buffer.clamp(64, 65_536));
        let (decisions, decision_queue) = DecisionLog::new(config.decisions.sample, config.server_id.clone());
        plugins.log_decisions(Arc::new(decisions));
        let fleet_plugins = Arc::new(fleet_plugins::FleetPlugins::new(
            store.clone(),
            plugins.clone(),
            config.uploads_enabled,
            config.default_strategy.clone(),
        ));
        // Subscribe before the first sync, so a change landing in between is applied by the pump.
        let store_events = event_pump::StoreFeed { events: store.subscribe(), skipped: store.skipped_events() };
        let plugin_events = plugins.subscribe();
        if let Err(error) = fleet_plugins.sync_all().await {
            tracing::warn!(%error, "cannot read the fleet's plugin uploads at start-up; following changes only");
        }
        let shutdown = CancellationToken::new();
        let (audit, audit_writer) = audit::AuditLog::start(store.clone(), shutdown.clone());
        let coordinator = Arc::new(ControlPlaneCoordinator {
            config: config.clone(),
            store: store.clone(),
            plugins: plugins.clone(),
            scheduler: scheduler.clone(),
            registry,
            health: health.clone(),
            events: events.clone(),
            shutdown,
            background: Mutex::new(Vec::new()),
            watcher: Mutex::new(None),
            fleet_plugins: fleet_plugins.clone(),
            audit,
            deliberation_wake: Arc::new(tokio::sync::Notify::new()),
            decision_events: broadcast::channel(4_096).0,
            task_waits: broadcast::channel(TASK_WAIT_BUFFER).0,
            stream_gaps: tokio::sync::watch::channel(0).0,
        });
        let (fleet_changes, fleet_changes_rx) = tokio::sync::mpsc::unbounded_channel();
        let decision_writer = decision_log::run_writer(
            store.clone(),
            decision_queue,
            coordinator.decision_events.clone(),
            config.decisions.clone(),
            coordinator.shutdown.clone(),
        );
        let consumers = event_pump::Consumers {
            scheduler: scheduler.clone(),
            fleet_plugins: fleet_changes,
            subscribers: events,
            task_waits: coordinator.task_waits.clone(),
            stream_gaps: coordinator.stream_gaps.clone(),
            store: store.clone(),
            server_id: config.server_id.clone(),
        };
        let shutdown = &coordinator.shutdown;
        let mut background = vec![
            tokio::spawn(event_pump::run(consumers, store_events, plugin_events, shutdown.clone())),
            tokio::spawn(fleet_plugins.clone().run(fleet_changes_rx, shutdown.clone())),
            tokio::spawn(fleet_plugins.run_canary_guard(
                config.decisions.canary_min_calls,
                config.decisions.canary_max_excess,
                shutdown.clone(),
            )),
            tokio::spawn(decision_writer),
            tokio::spawn(decision_log::run_retention(
                store.clone(),
                config.decisions.retention,
                config.cleanup_interval,
                shutdown.clone(),
            )),
            tokio::spawn(scheduler.clone().run_sweeper(shutdown.clone())),
            tokio::spawn(health.run(shutdown.clone())),
            tokio::spawn(scheduler.clone().run_schedules(shutdown.clone())),
            audit_writer,
            tokio::spawn(deliberations::run(
                Arc::downgrade(&coordinator),
                coordinator.deliberation_wake.clone(),
                shutdown.clone(),
            )),
        ];
        if let (Some(retention), Some(key)) = (config.audit_retention, config.audit_signing_key.clone()) {
            let (store, interval) = (store.clone(), config.cleanup_interval);
            background.push(tokio::spawn(audit::run_retention(store, retention, key, interval, shutdown.clone())));
        }
        if config.notifications.worker {
            background.extend(crate::notifications::start(store.clone(), &config.notifications, shutdown.clone())?);
        }
        *coordinator.background.lock() = background;
        if let Some(dir) = &config.plugins_dir {
            let (watcher, report) = PluginWatcher::start(dir, plugins, WatchOptions::default())?;
            tracing::info!(dir = %dir.display(), loaded = ?report.loaded, rejected = ?report.rejected, "plugins loaded");
            *coordinator.watcher.lock() = Some(watcher);
            // A fleet candidate beside a plugin that only the folder provides had nothing to stand beside at the
            // first sync: apply the fleet's records again now that the folder's plugins are loaded.
            if let Err(error) = coordinator.fleet_plugins.sync_all().await {
                tracing::warn!(%error, "cannot read the fleet's plugin records after loading the plugins folder");
            }
        }
        tracing::info!(store = %store.describe(), server_id = %config.server_id, "control plane ready");
        Ok(coordinator)
    }

    /// Every event from now on: tasks, agents, policies, plugins.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.events.subscribe()
    }

    /// Changes each time [`subscribe`](Self::subscribe)'s stream missed store events (the event pump fell behind
    /// the store, or the store's reader skipped some): its readers cannot tell what they missed, so they should
    /// resume from the store's buffer.
    pub fn subscribe_gaps(&self) -> tokio::sync::watch::Receiver<u64> {
        self.stream_gaps.subscribe()
    }

    /// This server's `decision` events from now on (one or more per routed task: a channel apart from
    /// [`subscribe`](Self::subscribe)'s, so they never make its readers lag).
    pub fn subscribe_decisions(&self) -> broadcast::Receiver<Arc<Event>> {
        self.decision_events.subscribe()
    }

    /// Every plugin this server has loaded, with its versions and counters (`GET /plugins`).
    pub fn plugin_list(&self) -> Vec<PluginInfo> {
        self.plugins.list()
    }

    /// The largest component this server accepts, from a file or an upload (`PLUGIN_MAX_COMPONENT_MIB`).
    pub fn max_component_bytes(&self) -> usize {
        self.plugins.runtime().max_component_bytes()
    }

    /// This server's view of plugin `name` with the fleet's record of it (`GET /plugins/{name}`); `None` when
    /// neither this server nor the fleet knows the name.
    pub async fn plugin_info(&self, name: &str) -> Result<Option<PluginInfo>, EngineError> {
        let fleet = self.fleet_plugins.record(name).await?;
        let mut info = match (self.plugins.info(name), &fleet) {
            (Some(info), _) => info,
            (None, Some(_)) => self.plugins.absent(name),
            (None, None) => return Ok(None),
        };
        info.fleet = fleet;
        Ok(Some(info))
    }

    /// Installs a component on this server only, as if it had been dropped into the plugins folder (for programs
    /// that embed the coordinator; a fleet shares plugins with [`Self::upload_plugin`]).
    pub fn install_local_plugin(&self, name: &str, component: &[u8], manifest: Manifest) -> Result<(), LoadError> {
        self.plugins.install(name, PluginSource::File, component, manifest).map(|_| ())
    }

    /// Whether strategy `name` can route tasks now (`/readyz` asks it of `DEFAULT_STRATEGY`); why not otherwise.
    pub fn strategy_ready(&self, name: &str) -> Result<(), String> {
        self.plugins.strategy(name).map(|_| ()).map_err(|error| error.to_string())
    }

    /// Uploads a component as plugin `name` for the whole fleet (every server applies the record).
    pub async fn upload_plugin(
        &self,
        name: &str,
        component: Vec<u8>,
        manifest: Option<String>,
        by: &str,
    ) -> Result<PluginRecord, FleetPluginError> {
        self.fleet_plugins.upload(name, component, manifest, by).await
    }

    /// Installs a rule set for the whole fleet (`POST /policies`): the built-in `rules_policy` component with the
    /// rules as its config, uploaded like any policy.
    pub async fn install_rule_set(&self, rules: &RuleSet, by: &str) -> Result<PluginRecord, FleetPluginError> {
        let manifest = rules.manifest().map_err(|e| FleetPluginError::BadManifest(e.to_string()))?;
        self.fleet_plugins.upload(&rules.name, rules_component().to_vec(), Some(manifest), by).await
    }

    /// Stages a candidate version of plugin `name` for the whole fleet, as a shadow or a canary.
    pub async fn stage_plugin(
        &self,
        name: &str,
        component: Vec<u8>,
        manifest: Option<String>,
        mode: RolloutMode,
        by: &str,
    ) -> Result<PluginRecord, FleetPluginError> {
        self.fleet_plugins.stage(name, component, manifest, mode, by).await
    }

    /// The shadow comparison of plugin `name` on this server, if its candidate is a shadow.
    pub fn shadow_figures(&self, name: &str) -> Option<ShadowFigures> {
        self.plugins.shadow_figures(name)
    }

    /// The decisions recorded about a task, oldest first.
    pub async fn task_decisions(&self, task_id: &TaskId) -> Result<Vec<DecisionRecord>, EngineError> {
        Ok(self.store.task_decisions(task_id.as_str()).await?)
    }

    /// One page of recorded decisions.
    pub async fn decisions(&self, query: &DecisionQuery) -> Result<decision_log::DecisionPage, EngineError> {
        let dropped = self.plugins.decision_log().map_or(0, |log| log.dropped());
        Ok(decision_log::page(self.store.as_ref(), query, dropped).await?)
    }

    /// Enables, disables or deletes plugin `name`, or promotes or rolls back its candidate, for the whole fleet.
    pub async fn change_plugin(
        &self,
        name: &str,
        action: PluginAction,
        by: &str,
    ) -> Result<PluginRecord, FleetPluginError> {
        self.fleet_plugins.change(name, action, by).await
    }

    /// Events after `after` (or the oldest kept), at most `limit`; `None` when `after` fell out of the buffer
    /// (SSE resume with `Last-Event-ID`).
    pub async fn events_after(&self, after: Option<&str>, limit: usize) -> Result<Option<Vec<Event>>, EngineError> {
        Ok(self.store.events_after(after, limit).await?)
    }

    /// The store's counters as they are (`/metrics`, `/stats`, the queue and fleet figures).
    pub async fn counters(&self) -> Result<FleetStats, EngineError> {
        Ok(self.store.stats().await?)
    }

    /// Whether the store answers (readiness, `/health/detailed`): a call whose cost does not grow with the fleet.
    pub async fn check_store(&self) -> Result<(), EngineError> {
        Ok(self.store.check().await?)
    }

    /// What waits in the queue and how long work waited for a claim (`/queue/metrics`).
    pub async fn queue_figures(&self) -> Result<QueueFigures, EngineError> {
        Ok(self.store.queue_figures().await?)
    }

    /// One line for logs: which store this control plane runs on.
    pub fn describe_store(&self) -> String {
        self.store.describe()
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Registers (or re-registers) an agent.
    pub async fn register_agent(&self, request: RegisterRequest) -> Result<Registered, EngineError> {
        self.registry.register(request).await
    }

    /// Records an agent's heartbeat.
    pub async fn heartbeat(
        &self,
        agent_id: &str,
        heartbeat: HeartbeatRequest,
    ) -> Result<HeartbeatOutcome, EngineError> {
        self.registry.heartbeat(agent_id, heartbeat).await
    }

    /// Unregisters an agent; its work is requeued.
    pub async fn unregister_agent(&self, agent_id: &str) -> Result<(), EngineError> {
        self.registry.unregister(agent_id).await
    }

    /// Pauses an agent (no new work).
    pub async fn pause_agent(&self, agent_id: &str) -> Result<Agent, EngineError> {
        self.registry.set_paused(agent_id, true).await
    }

    /// Resumes a paused agent.
    pub async fn resume_agent(&self, agent_id: &str) -> Result<Agent, EngineError> {
        self.registry.set_paused(agent_id, false).await
    }

    /// One agent.
    pub async fn get_agent(&self, agent_id: &str) -> Result<Agent, EngineError> {
        self.registry.get(agent_id).await
    }

    /// Agents by capability and availability.
    pub async fn list_agents(&self, filter: &AgentFilter) -> Result<Vec<Agent>, EngineError> {
        self.registry.list(filter).await
    }

    /// Whether the agent could take work now and has room for it (the eligibility rule, `Standing::available`).
    pub async fn is_agent_available(&self, agent_id: &str) -> Result<bool, EngineError> {
        let agent = self.registry.get(agent_id).await?;
        let health = self.store.agent_health(agent_id).await?;
        let standing = crate::model::Standing {
            paused: agent.paused,
            status: agent.status,
            health: health.as_ref().map(|h| h.status).unwrap_or_default(),
            breaker: health.as_ref().map(|h| h.breaker).unwrap_or_default(),
            trial_in_flight: false,
        };
        Ok(standing.available(agent.in_flight, agent.max_concurrent_tasks))
    }

    /// Submits a task (policies, idempotency, routing to a waiting agent).
    pub async fn submit_task(&self, request: SubmitRequest, submitted_by: &str) -> Result<Submitted, EngineError> {
        self.scheduler.submit(request, submitted_by).await
    }

    /// Submits several tasks, all or nothing.
    pub async fn submit_batch(
        &self,
        requests: Vec<SubmitRequest>,
        submitted_by: &str,
    ) -> Result<Vec<Submitted>, EngineError> {
        self.scheduler.submit_batch(requests, submitted_by).await
    }

    /// Takes work for an agent, blocking up to `claim.block` when none is pending.
    pub async fn claim_task(&self, claim: &Claim) -> Result<ClaimOutcome, EngineError> {
        self.scheduler.claim(claim).await
    }

    /// The agent started the task.
    pub async fn start_task(&self, task_id: &TaskId, fence: &Fence) -> Result<Task, EngineError> {
        self.scheduler.start(task_id, fence).await
    }

    /// The agent reports progress.
    pub async fn report_progress(&self, task_id: &TaskId, fence: &Fence, progress: Value) -> Result<Task, EngineError> {
        self.scheduler.progress(task_id, fence, progress).await
    }

    /// The task completed: with its result (a JSON value), or a [`Completion`] carrying the agent's own latency.
    pub async fn complete_task(
        &self,
        task_id: &TaskId,
        fence: &Fence,
        completion: impl Into<Completion>,
    ) -> Result<Task, EngineError> {
        self.scheduler.complete(task_id, fence, completion.into()).await
    }

    /// Completes several tasks in one store step; each outcome stands alone (a stale lease on one does not
    /// undo the others).
    pub async fn complete_batch(
        &self,
        outcomes: Vec<(TaskId, Fence, Completion)>,
    ) -> Result<Vec<Result<Task, StoreError>>, EngineError> {
        self.scheduler.complete_batch(outcomes).await
    }

    /// Completes a task and takes the agent's next one (BullMQ's worker pattern): the completion and an immediate
    /// claim are one atomic step; only if that finds nothing does the claim wait for `next.block`.
    pub async fn complete_and_claim(
        &self,
        task_id: &TaskId,
        fence: &Fence,
        completion: Completion,
        next: &Claim,
    ) -> Result<(Task, ClaimOutcome), EngineError> {
        self.scheduler.complete_and_claim(task_id, fence, completion, next).await
    }

    /// The attempt failed (requeued while retries remain, if asked).
    pub async fn fail_task(&self, task_id: &TaskId, fence: &Fence, failure: &FailRequest) -> Result<Task, EngineError> {
        self.scheduler.fail(task_id, fence, failure).await
    }

    /// Cancels a task.
    pub async fn cancel_task(&self, task_id: &TaskId) -> Result<Task, EngineError> {
        self.scheduler.cancel(task_id).await
    }

    /// Retries a failed, timed-out or cancelled task.
    pub async fn retry_task(&self, task_id: &TaskId) -> Result<Task, EngineError> {
        self.scheduler.retry(task_id).await
    }

    /// Moves a pending task to another priority level.
    pub async fn prioritize_task(&self, task_id: &TaskId, priority: Priority) -> Result<Task, EngineError> {
        self.scheduler.prioritize(task_id, priority).await
    }

    /// Records a state-changing call in the audit log; a successful one (`wait`) waits for the commit. Whether it
    /// committed (a failure is logged, never raised: the call itself has happened).
    pub async fn record_audit(&self, entry: NewAuditEntry, wait: bool) -> bool {
        self.audit.record(entry, wait).await
    }

    /// The store's clock (ms since the epoch): the time every record is stamped with.
    pub fn now_ms(&self) -> u64 {
        self.store.now_ms()
    }

    /// Where the audit log ends.
    pub async fn audit_head(&self) -> Result<AuditHead, EngineError> {
        Ok(self.store.audit_head().await?)
    }

    /// Audit entries `from..=to`, ascending (at most 1,000).
    pub async fn audit_entries(&self, from: u64, to: u64) -> Result<Vec<AuditEntry>, EngineError> {
        Ok(self.store.audit_entries(from, to).await?)
    }

    /// Checks the whole audit chain, from the retention checkpoint (whose signature it checks first) or the first
    /// entry.
    pub async fn verify_audit(&self) -> Result<audit::ChainCheck, EngineError> {
        let key = self.config.audit_signing_key.as_deref().map(str::as_bytes);
        Ok(audit::verify(self.store.as_ref(), key).await?)
    }

    /// Creates a recurring task owned by `by`.
    pub async fn create_schedule(&self, spec: ScheduleSpec, by: &str) -> Result<Schedule, EngineError> {
        self.scheduler.create_schedule(spec, by).await
    }

    /// One schedule.
    pub async fn get_schedule(&self, id: &str) -> Result<Schedule, EngineError> {
        self.scheduler.schedule(id).await
    }

    /// Every schedule.
    pub async fn list_schedules(&self) -> Result<Vec<Schedule>, EngineError> {
        self.scheduler.schedules().await
    }

    /// Changes a schedule (name, timing, template, catch-up policy, pause).
    pub async fn change_schedule(&self, id: &str, change: ScheduleChange) -> Result<Schedule, EngineError> {
        self.scheduler.change_schedule(id, change).await
    }

    /// Deletes a schedule.
    pub async fn delete_schedule(&self, id: &str) -> Result<(), EngineError> {
        self.scheduler.delete_schedule(id).await
    }

    /// Creates a notification channel: its fields checked, and its URL's addresses (DESIGN's SSRF rules, with
    /// `NOTIFICATION_ALLOW_PRIVATE`). The answer carries the webhook secret, which is never shown again.
    pub async fn create_channel(&self, new: NewChannel) -> Result<Channel, EngineError> {
        let created_at = rfc3339_ms(self.store.now_ms());
        let channel = new.into_channel(new_channel_id(), created_at)?;
        crate::notifications::check_url(&channel.url, self.config.notifications.allow_private)
            .await
            .map_err(|why| ValidationError::new("url", why))?;
        self.store.put_channel(&channel).await?;
        Ok(channel)
    }

    /// Every notification channel.
    pub async fn channels(&self) -> Result<Vec<Channel>, EngineError> {
        Ok(self.store.channels().await?)
    }

    /// Deletes a notification channel (deliveries already made for it end as dead letters).
    pub async fn delete_channel(&self, id: &str) -> Result<(), EngineError> {
        if self.store.delete_channel(id).await? { Ok(()) } else { Err(EngineError::ChannelNotFound(id.to_string())) }
    }

    /// Notification deliveries, newest first, of one status when given.
    pub async fn deliveries(&self, status: Option<DeliveryStatus>, limit: usize) -> Result<Vec<Delivery>, EngineError> {
        Ok(self.store.deliveries(status, limit).await?)
    }

    /// Sends a dead letter again, from its first attempt.
    pub async fn retry_delivery(&self, id: &str) -> Result<Delivery, EngineError> {
        self.store.retry_delivery(id).await?.ok_or_else(|| EngineError::DeliveryNotFound(id.to_string()))
    }

    /// Each channel's delivery counters.
    pub async fn notification_figures(&self) -> Result<BTreeMap<String, ChannelFigures>, EngineError> {
        Ok(self.store.notification_figures().await?)
    }

    /// One task.
    pub async fn get_task(&self, task_id: &TaskId) -> Result<Task, EngineError> {
        self.store.get_task(task_id).await?.ok_or_else(|| StoreError::TaskNotFound(task_id.clone()).into())
    }

    /// Tasks, newest first, one page.
    pub async fn list_tasks(&self, filter: &TaskFilter) -> Result<TaskPage, EngineError> {
        Ok(self.store.list_tasks(filter).await?)
    }

    /// Tasks in each of `statuses` that match `filter`'s other fields, newest first within a status, read page by
    /// page until `wanted` of each status are in hand. Also says whether any status holds more than that (the
    /// building block of `/tasks/history` and `/queue`, which show several statuses at once).
    pub async fn tasks_in(
        &self,
        statuses: &[TaskStatus],
        filter: &TaskFilter,
        wanted: usize,
    ) -> Result<(Vec<Task>, bool), EngineError> {
        /// The store's largest page.
        const PAGE: usize = 1000;
        let (mut found, mut more) = (Vec::new(), false);
        for status in statuses {
            let mut page_filter =
                TaskFilter { status: Some(*status), limit: wanted.clamp(1, PAGE), cursor: None, ..filter.clone() };
            let mut taken = 0;
            loop {
                let page = self.store.list_tasks(&page_filter).await?;
                taken += page.tasks.len();
                found.extend(page.tasks);
                match page.next_cursor {
                    Some(cursor) if taken < wanted => {
                        page_filter.cursor = Some(cursor);
                        page_filter.limit = (wanted - taken).clamp(1, PAGE);
                    }
                    Some(_) => {
                        more = true;
                        break;
                    }
                    None => break,
                }
            }
        }
        Ok((found, more))
    }

    /// Waits (on a notification, not a poll) until the task is terminal or `timeout` passes; returns the task as
    /// it is then.
    pub async fn wait_for_result(&self, task_id: &TaskId, timeout: Duration) -> Result<Task, EngineError> {
        let mut events = self.task_waits.subscribe();
        let mut gaps = self.stream_gaps.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let task = self.get_task(task_id).await?;
            if task.status.is_terminal() {
                return Ok(task);
            }
            loop {
                let received = tokio::select! {
                    received = tokio::time::timeout_at(deadline, events.recv()) => Some(received),
                    Ok(()) = gaps.changed() => None,
                };
                match received {
                    Some(Err(_)) => return self.get_task(task_id).await,
                    Some(Ok(Ok(event))) if event.task() == Some(task_id.as_str()) => break,
                    Some(Ok(Ok(_))) => {}
                    // Fell behind, or the pump did (this task's event may be among those it missed): re-read the
                    // task rather than trust the stream.
                    Some(Ok(Err(broadcast::error::RecvError::Lagged(_)))) | None => break,
                    Some(Ok(Err(broadcast::error::RecvError::Closed))) => return self.get_task(task_id).await,
                }
            }
        }
    }

    /// Which agent the strategy chooses for `capabilities` now (the guide's `select_agent`); unless `dry_run`,
    /// the choice counts as an assignment, so `round_robin` rotates.
    pub async fn select_agent(
        &self,
        capabilities: &CapabilitySet,
        strategy: Option<&str>,
        exclude: &[String],
        dry_run: bool,
    ) -> Result<Option<AgentSelection>, EngineError> {
        self.scheduler.select_agent(capabilities, strategy, exclude, dry_run).await
    }

    /// Runs one probe round now (the monitor also runs every `PROBE_INTERVAL`); returns the verdicts recorded.
    pub async fn probe_now(&self) -> usize {
        self.health.probe_round().await
    }

    /// Policy violations of the fleet, newest first.
    pub async fn violations(&self, limit: usize) -> Result<Vec<Violation>, EngineError> {
        self.scheduler.violations(limit).await
    }

    /// A reviewer's status change on violation `id` (acknowledge, investigate, resolve…); `None` when no kept
    /// violation has that id.
    pub async fn update_violation(&self, id: &str, update: ViolationUpdate) -> Result<Option<Violation>, EngineError> {
        Ok(self.store.update_violation(id, update).await?)
    }

    /// One agent's health and breaker. An offline agent is unhealthy whatever its last probe said.
    pub async fn get_agent_health(&self, agent_id: &str) -> Result<AgentHealth, EngineError> {
        let agent = self.registry.get(agent_id).await?;
        let health =
            self.store.agent_health(agent_id).await?.ok_or_else(|| StoreError::AgentNotFound(agent_id.to_string()))?;
        Ok(with_liveness(health, &agent))
    }

    /// The fleet's health: healthy when no agent is unhealthy, degraded when some are, unhealthy when all are,
    /// unknown with no agents.
    pub async fn get_system_health(&self) -> Result<SystemHealth, EngineError> {
        let agents: std::collections::HashMap<String, Agent> =
            self.registry.list(&AgentFilter::default()).await?.into_iter().map(|a| (a.agent_id.clone(), a)).collect();
        let health: std::collections::BTreeMap<String, AgentHealth> = self
            .store
            .all_health()
            .await?
            .into_iter()
            .filter_map(|h| agents.get(&h.agent_id).map(|agent| (h.agent_id.clone(), with_liveness(h, agent))))
            .collect();
        let unhealthy = health.values().filter(|h| h.status == HealthState::Unhealthy).count();
        let status = match (health.len(), unhealthy) {
            (0, _) => "unknown",
            (_, 0) => "healthy",
            (total, bad) if bad == total => "unhealthy",
            _ => "degraded",
        };
        Ok(SystemHealth { status, agents: health })
    }

    /// Counters, in the guide's sections.
    pub async fn get_stats(&self) -> Result<Stats, EngineError> {
        let s: FleetStats = self.store.stats().await?;
        let count = |map: &std::collections::BTreeMap<String, u64>, key: &str| map.get(key).copied().unwrap_or(0);
        let healthy = count(&s.agents_by_health, "healthy");
        Ok(Stats {
            registry: json!({
                "total_agents": s.total_agents,
                "available_agents": s.available_agents,
                "by_status": s.agents_by_status,
                "by_capability": s.agents_by_capability,
                "by_provider": s.agents_by_provider,
            }),
            scheduler: json!({
                "pending_tasks": count(&s.tasks_by_status, "pending"),
                "running_tasks": count(&s.tasks_by_status, "claimed") + count(&s.tasks_by_status, "running"),
                "by_status": s.tasks_by_status,
                "by_priority": s.pending_by_priority,
                "by_type": s.tasks_by_type,
                "waiting_claims": s.waiting_claims,
            }),
            health: json!({
                "healthy_count": healthy,
                "by_status": s.agents_by_health,
                "open_breakers": s.open_breakers,
            }),
        })
    }

    /// Stops the background duties (sweeper, watcher, event pump) and waits for them.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        if let Some(watcher) = self.watcher.lock().take() {
            watcher.stop();
        }
        let background = std::mem::take(&mut *self.background.lock());
        for task in background {
            let _ = task.await;
        }
        self.scheduler.drain_routes().await;
    }
}
