//! The validated configuration of a control plane (DESIGN §8), with the defaults of the guide. Built once; the
//! parts read it, never the environment. The clap layer that fills it from flags and environment variables comes
//! with `aragora-cp serve`.

use std::path::PathBuf;
use std::time::Duration;

/// Everything the engine's behaviour depends on.
#[derive(Clone, Debug)]
pub struct Config {
    /// This server's id, written into events and plugin listings.
    pub server_id: String,
    /// The agents' heartbeat period (`HEARTBEAT_INTERVAL`, 10 s).
    pub heartbeat_interval: Duration,
    /// Silence after which an agent is offline (`HEARTBEAT_TIMEOUT`, 30 s).
    pub heartbeat_timeout: Duration,
    /// Default timeout of a task attempt (`TASK_TIMEOUT`, 300 s).
    pub task_timeout: Duration,
    /// Default automatic retries (`MAX_TASK_RETRIES`, 3).
    pub max_task_retries: u32,
    /// Retry backoff base (`RETRY_BACKOFF_BASE`, 0 = off).
    pub retry_backoff_base: Duration,
    /// Retry backoff cap (`RETRY_BACKOFF_MAX`, 60 s).
    pub retry_backoff_max: Duration,
    /// Priority aging period (`PRIORITY_AGING_SECONDS`, off).
    pub priority_aging: Option<Duration>,
    /// Housekeeping period (`CLEANUP_INTERVAL`, 60 s).
    pub cleanup_interval: Duration,
    /// Longest a synchronous `POST /deliberations` holds its request (`DELIBERATION_MAX_WAIT`, 600 s).
    pub deliberation_max_wait: Duration,
    /// How long terminal tasks are kept (`TASK_RETENTION`, 24 h); offline agents are kept as long.
    pub task_retention: Duration,
    /// Strategy for tasks that name none (`DEFAULT_STRATEGY`, least_loaded).
    pub default_strategy: String,
    /// Candidates passed to a strategy at most (`MAX_STRATEGY_CANDIDATES`, 64).
    pub max_strategy_candidates: usize,
    /// Pending tasks a claim peeks at when dispatch policies are active (`DISPATCH_SCAN`, 8).
    pub dispatch_scan: usize,
    /// Live capability signatures allowed (`MAX_SIGNATURES`, 4096).
    pub max_signatures: usize,
    /// Where plugins are loaded from and watched (`PLUGINS_DIR`, ./plugins); `None` loads only the built-ins.
    pub plugins_dir: Option<PathBuf>,
    /// The most a plugin's manifest may ask for per call (`PLUGIN_MAX_FUEL` 100 M, `PLUGIN_MAX_DEADLINE_MS` 5000,
    /// `PLUGIN_MAX_MEMORY_MIB` 64; table elements 100 k).
    pub plugin_maxima: crate::plugins::CallLimits,
    /// Largest plugin component accepted from a file or an upload (`PLUGIN_MAX_COMPONENT_MIB`, 32).
    pub max_component_bytes: usize,
    /// Events kept for resume (`SSE_BUFFER`, 10000).
    pub event_buffer: usize,
    /// Breaker failures that open it (`BREAKER_THRESHOLD`, 5).
    pub breaker_threshold: u32,
    /// Window those failures count in (`BREAKER_WINDOW`, 60 s).
    pub breaker_window: Duration,
    /// Open time before a half-open trial (`BREAKER_COOLDOWN`, 30 s).
    pub breaker_cooldown: Duration,
    /// Health probing (`PROBE_INTERVAL`, `PROBE_TIMEOUT`, `PROBE_CONCURRENCY`, `PROBE_ALLOWED_HOSTS`).
    pub probes: crate::health::ProbeSettings,
    /// Fleet-wide plugin uploads over the API (`ARAGORA_CONTROL_PLANE_POLICY_SOURCE=auto`; `inprocess` turns
    /// them off: folder and built-in plugins only).
    pub uploads_enabled: bool,
    /// Replicas each Redis write must reach before it is acknowledged (`REDIS_WAIT_REPLICAS`, 0).
    pub wait_replicas: u32,
    /// Events written to Redis as separate fields, for servers of older builds sharing it
    /// (`REDIS_EVENT_FORMAT=fields`; `compact` by default, decision 0030).
    pub redis_event_fields: bool,
    /// Longest a store call may take before the request answers 503 `store_unavailable` (`STORE_TIMEOUT`, 2 s).
    pub store_timeout: Duration,
    /// Whether a report (start, progress, complete, fail) may name neither a lease nor an agent and apply to the
    /// current attempt, whoever holds it (`ALLOW_UNFENCED_COMPLETE`, true: Aragora's clients send such reports).
    pub allow_unfenced_reports: bool,
    /// Claims that may wait for work on this server at once (`MAX_WAITING_CLAIMS`, 10000).
    pub max_waiting_claims: usize,
    /// Claims one agent may have waiting on this server at once (`MAX_WAITING_CLAIMS_PER_AGENT`, 32).
    pub max_waiting_claims_per_agent: usize,
    /// Pending tasks past which submits are refused with 429 (`MAX_PENDING_TASKS`; 0, the default, = no limit).
    pub max_pending_tasks: u64,
    /// How long audit entries are kept (`AUDIT_RETENTION`; none, the default, keeps them all). Older entries are
    /// replaced by a signed checkpoint, so verification still works.
    pub audit_retention: Option<Duration>,
    /// The key that signs audit checkpoints (`AUDIT_SIGNING_KEY`, else `ARAGORA_JWT_SECRET`); retention needs one.
    pub audit_signing_key: Option<String>,
    /// The notification worker and targets (`ARAGORA_NOTIFICATION_WORKER`, `NOTIFICATION_ALLOW_PRIVATE`).
    pub notifications: crate::notifications::NotificationSettings,
    /// The decision log and canary rollbacks (`DECISION_SAMPLE`, `DECISION_RETENTION`, `DECISION_LOG_MAX`,
    /// `CANARY_MIN_CALLS`, `CANARY_MAX_EXCESS`).
    pub decisions: DecisionSettings,
}

/// What the decision log keeps, and when a canary is rolled back by itself (decision 0022).
#[derive(Clone, Debug, PartialEq)]
pub struct DecisionSettings {
    /// Share of tasks (and agents) whose decisions are recorded, 0 to 1 (`DECISION_SAMPLE`, 1; 0 turns it off).
    pub sample: f64,
    /// How long decisions are kept (`DECISION_RETENTION`, 1 h).
    pub retention: Duration,
    /// Decisions kept at most (`DECISION_LOG_MAX`, 20,000).
    pub max_kept: usize,
    /// Calls a canary makes before it is judged (`CANARY_MIN_CALLS`, 50).
    pub canary_min_calls: u64,
    /// How far the canary's share of failed or fallen-back calls may exceed the active version's over the same
    /// time before it is rolled back (`CANARY_MAX_EXCESS`, 0.05: five points).
    pub canary_max_excess: f64,
}

impl Default for DecisionSettings {
    fn default() -> Self {
        DecisionSettings {
            sample: 1.0,
            retention: Duration::from_secs(3_600),
            max_kept: crate::model::DECISIONS_KEPT,
            canary_min_calls: 50,
            canary_max_excess: 0.05,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server_id: format!("cp-{:08x}", rand::random::<u32>()),
            uploads_enabled: true,
            wait_replicas: 0,
            redis_event_fields: false,
            store_timeout: Duration::from_secs(2),
            allow_unfenced_reports: true,
            max_waiting_claims: 10_000,
            max_waiting_claims_per_agent: 32,
            max_pending_tasks: 0,
            audit_retention: None,
            audit_signing_key: None,
            notifications: crate::notifications::NotificationSettings::default(),
            decisions: DecisionSettings::default(),
            heartbeat_interval: Duration::from_secs(10),
            heartbeat_timeout: Duration::from_secs(30),
            task_timeout: Duration::from_secs(300),
            max_task_retries: 3,
            retry_backoff_base: Duration::ZERO,
            retry_backoff_max: Duration::from_secs(60),
            priority_aging: None,
            cleanup_interval: Duration::from_secs(60),
            deliberation_max_wait: Duration::from_secs(crate::model::MAX_SYNC_WAIT_SECONDS.into()),
            task_retention: Duration::from_secs(86_400),
            default_strategy: "least_loaded".into(),
            max_strategy_candidates: 64,
            dispatch_scan: 8,
            max_signatures: 4096,
            plugins_dir: None,
            plugin_maxima: crate::plugins::CallLimits::server_maxima(),
            max_component_bytes: crate::plugins::runtime::DEFAULT_MAX_COMPONENT_BYTES,
            event_buffer: 10_000,
            breaker_threshold: 5,
            breaker_window: Duration::from_secs(60),
            breaker_cooldown: Duration::from_secs(30),
            probes: crate::health::ProbeSettings::default(),
        }
    }
}

impl Config {
    /// The store's view of the configuration.
    pub fn store_config(&self) -> crate::store::StoreConfig {
        crate::store::StoreConfig {
            server_id: self.server_id.clone(),
            wait_replicas: self.wait_replicas,
            event_fields: self.redis_event_fields,
            store_timeout_ms: self.store_timeout.as_millis() as u64,
            max_pending_tasks: self.max_pending_tasks,
            heartbeat_timeout_ms: self.heartbeat_timeout.as_millis() as u64,
            heartbeat_interval_ms: self.heartbeat_interval.as_millis() as u64,
            max_signatures: self.max_signatures,
            priority_aging_ms: self.priority_aging.map(|d| d.as_millis() as u64),
            retry_backoff_base_ms: self.retry_backoff_base.as_millis() as u64,
            retry_backoff_max_ms: self.retry_backoff_max.as_millis() as u64,
            event_buffer: self.event_buffer,
            idempotency_ttl_ms: 24 * 3600 * 1000,
            breaker_threshold: self.breaker_threshold,
            breaker_window_ms: self.breaker_window.as_millis() as u64,
            breaker_cooldown_ms: self.breaker_cooldown.as_millis() as u64,
        }
    }
}
