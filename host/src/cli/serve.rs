//! `aragora-cp serve` and `aragora-cp token`. Configuration in two layers (DESIGN §8): [`ServeArgs`] declares each
//! flag with its environment variable and default; [`ServeArgs::validate`] turns it into the engine's `Config` plus
//! the server's own settings, with errors naming the variable. Nothing else reads the environment.
//!
//! Shutdown on SIGINT/SIGTERM: stop accepting, let in-flight requests finish for at most `--drain-seconds`, then
//! stop the coordinator's background duties.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::api::{self, ApiParts, ApiState, Authenticator, Permission};
use crate::config::{Config, DecisionSettings};
use crate::coordinator::ControlPlaneCoordinator;
use crate::health::ProbeSettings;
use crate::health::http_check::ProbeTrust;
use crate::notifications::NotificationSettings;
use crate::plugins::CallLimits;
use crate::store::Store;
use crate::store::open::{StoreKind, StoreOptions};

/// How long the printed development admin token lives.
const DEV_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// Token settings shared by `serve` and `token`.
#[derive(Debug, Args)]
pub struct AuthArgs {
    /// HS256 secret for bearer tokens (≥ 32 bytes). Without it, a loopback `serve` generates one for the run.
    #[arg(long, env = "ARAGORA_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// RS256 or EdDSA public key (PEM text, or the path of a PEM file) that tokens are verified with instead of a
    /// secret; the key's type pins the algorithm.
    #[arg(long, env = "ARAGORA_JWT_PUBLIC_KEY", conflicts_with = "jwt_secret")]
    pub jwt_public_key: Option<String>,
    /// Required `iss` of tokens.
    #[arg(long, env = "ARAGORA_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` of tokens.
    #[arg(long, env = "ARAGORA_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
}

impl AuthArgs {
    fn authenticator(&self, secret: &[u8]) -> anyhow::Result<Authenticator> {
        Ok(Authenticator::hs256(secret, self.jwt_issuer.clone(), self.jwt_audience.clone())?)
    }

    /// The verifier of `ARAGORA_JWT_PUBLIC_KEY`, when one is configured.
    fn public_key_authenticator(&self) -> anyhow::Result<Option<Authenticator>> {
        let Some(key) = self.jwt_public_key.as_deref().map(str::trim).filter(|k| !k.is_empty()) else {
            return Ok(None);
        };
        let pem = if key.starts_with("-----BEGIN") {
            key.as_bytes().to_vec()
        } else {
            std::fs::read(key).with_context(|| format!("ARAGORA_JWT_PUBLIC_KEY: cannot read the PEM file {key:?}"))?
        };
        Ok(Some(Authenticator::public_key(&pem, self.jwt_issuer.clone(), self.jwt_audience.clone())?))
    }
}

/// `aragora-cp serve`: every flag also reads the environment variable of DESIGN §8. Durations are in seconds and
/// accept decimals.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "BIND", default_value = "127.0.0.1:8080")]
    pub bind: String,
    /// Worker threads of the server's runtime (default: one fewer than the cores available, at least one).
    #[arg(long, env = "WORKER_THREADS")]
    pub worker_threads: Option<usize>,
    /// The agents' heartbeat period.
    #[arg(long, env = "HEARTBEAT_INTERVAL", default_value_t = 10.0)]
    pub heartbeat_interval: f64,
    /// Silence after which an agent is offline.
    #[arg(long, env = "HEARTBEAT_TIMEOUT", default_value_t = 30.0)]
    pub heartbeat_timeout: f64,
    /// Time between health-probe rounds.
    #[arg(long, env = "PROBE_INTERVAL", default_value_t = 30.0)]
    pub probe_interval: f64,
    /// Time one agent's probing may take.
    #[arg(long, env = "PROBE_TIMEOUT", default_value_t = 10.0)]
    pub probe_timeout: f64,
    /// Agents probed at once.
    #[arg(long, env = "PROBE_CONCURRENCY", default_value_t = 32)]
    pub probe_concurrency: usize,
    /// `host:port` entries whose loopback addresses the HTTP check may reach on that port (comma-separated; a bare
    /// host allows every port).
    #[arg(long, env = "PROBE_ALLOWED_HOSTS", value_delimiter = ',')]
    pub probe_allowed_hosts: Vec<String>,
    /// PEM file of certificates that `https` health URLs may chain to, beside Mozilla's roots (a private CA).
    #[arg(long, env = "PROBE_CA_FILE")]
    pub probe_ca_file: Option<PathBuf>,
    /// Default timeout of a task attempt.
    #[arg(long, env = "TASK_TIMEOUT", default_value_t = 300.0)]
    pub task_timeout: f64,
    /// Default automatic retries of a task.
    #[arg(long, env = "MAX_TASK_RETRIES", default_value_t = 3)]
    pub max_task_retries: u32,
    /// Retry backoff base (0 = off).
    #[arg(long, env = "RETRY_BACKOFF_BASE", default_value_t = 0.0)]
    pub retry_backoff_base: f64,
    /// Retry backoff cap.
    #[arg(long, env = "RETRY_BACKOFF_MAX", default_value_t = 60.0)]
    pub retry_backoff_max: f64,
    /// Priority aging period (off when absent).
    #[arg(long, env = "PRIORITY_AGING_SECONDS")]
    pub priority_aging_seconds: Option<f64>,
    /// Housekeeping period.
    #[arg(long, env = "CLEANUP_INTERVAL", default_value_t = 60.0)]
    pub cleanup_interval: f64,
    /// Longest a synchronous deliberation request waits for its decision, in seconds (answers 408 after).
    #[arg(long, env = "DELIBERATION_MAX_WAIT", default_value_t = 600.0)]
    pub deliberation_max_wait: f64,
    /// How long terminal tasks (and offline agents) are kept.
    #[arg(long, env = "TASK_RETENTION", default_value_t = 86_400.0)]
    pub task_retention: f64,
    /// Share of tasks whose plugin decisions the decision log records, 0 to 1 (0: off).
    #[arg(long, env = "DECISION_SAMPLE", default_value_t = 1.0)]
    pub decision_sample: f64,
    /// How long recorded decisions are kept, in seconds.
    #[arg(long, env = "DECISION_RETENTION", default_value_t = 3_600.0)]
    pub decision_retention: f64,
    /// Decisions kept at most.
    #[arg(long, env = "DECISION_LOG_MAX", default_value_t = crate::model::DECISIONS_KEPT)]
    pub decision_log_max: usize,
    /// Calls a canary makes before the server judges it.
    #[arg(long, env = "CANARY_MIN_CALLS", default_value_t = 50)]
    pub canary_min_calls: u64,
    /// How much more often than the active version (a share, 0.05 = five points) a canary may fail or fall back
    /// before it is rolled back.
    #[arg(long, env = "CANARY_MAX_EXCESS", default_value_t = 0.05)]
    pub canary_max_excess: f64,
    /// How long audit entries are kept, in seconds (0: all of them); older ones become a signed checkpoint.
    #[arg(long, env = "AUDIT_RETENTION", default_value_t = 86_400.0)]
    pub audit_retention: f64,
    /// The key signing audit checkpoints (default: `ARAGORA_JWT_SECRET`); every server of a fleet needs the same.
    #[arg(long, env = "AUDIT_SIGNING_KEY", hide_env_values = true)]
    pub audit_signing_key: Option<String>,
    /// Whether this server sends notifications (dispatches events to channels and delivers them); off, the other
    /// servers of the fleet do.
    #[arg(long, env = "ARAGORA_NOTIFICATION_WORKER", default_value_t = true, action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new())]
    pub notification_worker: bool,
    /// Whether notification channels may target loopback, link-local and private addresses.
    #[arg(long, env = "NOTIFICATION_ALLOW_PRIVATE", default_value_t = false, action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new())]
    pub notification_allow_private: bool,
    /// Breaker failures that open it.
    #[arg(long, env = "BREAKER_THRESHOLD", default_value_t = 5)]
    pub breaker_threshold: u32,
    /// Window those failures count in.
    #[arg(long, env = "BREAKER_WINDOW", default_value_t = 60.0)]
    pub breaker_window: f64,
    /// Open time before a half-open trial.
    #[arg(long, env = "BREAKER_COOLDOWN", default_value_t = 30.0)]
    pub breaker_cooldown: f64,
    /// Strategy for tasks that name none.
    #[arg(long, env = "DEFAULT_STRATEGY", default_value = "least_loaded")]
    pub default_strategy: String,
    /// Candidates passed to a strategy at most.
    #[arg(long, env = "MAX_STRATEGY_CANDIDATES", default_value_t = 64)]
    pub max_strategy_candidates: usize,
    /// Pending tasks a claim peeks at when dispatch policies are active.
    #[arg(long, env = "DISPATCH_SCAN", default_value_t = 8)]
    pub dispatch_scan: usize,
    /// Live capability signatures allowed.
    #[arg(long, env = "MAX_SIGNATURES", default_value_t = 4096)]
    pub max_signatures: usize,
    /// Most fuel a plugin's manifest may ask for per call.
    #[arg(long, env = "PLUGIN_MAX_FUEL", default_value_t = 100_000_000)]
    pub plugin_max_fuel: u64,
    /// Longest deadline a plugin's manifest may ask for per call, in milliseconds.
    #[arg(long, env = "PLUGIN_MAX_DEADLINE_MS", default_value_t = 5000.0)]
    pub plugin_max_deadline_ms: f64,
    /// Most linear memory a plugin's manifest may ask for, in MiB.
    #[arg(long, env = "PLUGIN_MAX_MEMORY_MIB", default_value_t = 64)]
    pub plugin_max_memory_mib: usize,
    /// Largest plugin component accepted from a file or an upload, in MiB (at most 256). Give every server of a
    /// fleet the same value: a server with a smaller one refuses an upload the others accept.
    #[arg(long, env = "PLUGIN_MAX_COMPONENT_MIB", default_value_t = 32)]
    pub plugin_max_component_mib: usize,
    /// Folder of plugins, loaded at start-up and watched (missing: built-ins only, with a warning).
    #[arg(long, env = "PLUGINS_DIR", default_value = "./plugins")]
    pub plugins_dir: PathBuf,
    /// Events kept for resume.
    #[arg(long, env = "SSE_BUFFER", default_value_t = 10_000)]
    pub sse_buffer: usize,
    /// Largest request body, in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = api::MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// Time a request's head may take to arrive, from the connection opening or the previous response; it also
    /// closes keep-alive connections idle that long.
    #[arg(long, env = "HEADER_READ_TIMEOUT", default_value_t = api::DEFAULT_HEADER_READ_TIMEOUT.as_secs_f64())]
    pub header_read_timeout: f64,
    /// Bearer token `/metrics` requires (open without it).
    #[arg(long, env = "METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// Longest wait for in-flight requests on shutdown.
    #[arg(long, default_value_t = 10.0)]
    pub drain_seconds: f64,
    /// The store: `redis://host:port`, `rediss://…`, `redis+cluster://h1:p1,h2:p2`, or `memory://`. Unset: the
    /// Redis at localhost:6379 if one answers, else memory with a warning.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// How long an explicit REDIS_URL is retried at start-up before the server gives up.
    #[arg(long, env = "REDIS_CONNECT_TIMEOUT", default_value_t = 30.0)]
    pub redis_connect_timeout: f64,
    /// Refuse to fall back to the memory store when REDIS_URL is unset and no Redis answers.
    #[arg(long, env = "ARAGORA_REQUIRE_REDIS", action = clap::ArgAction::SetTrue,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub require_redis: bool,
    /// Where policies and other plugins may come from: `auto` (folder, built-ins and fleet-wide uploads over the
    /// API) or `inprocess` (folder and built-ins only: PUT/DELETE /plugins answer 405).
    #[arg(long, env = "ARAGORA_CONTROL_PLANE_POLICY_SOURCE", value_enum, default_value_t = PolicySource::Auto)]
    pub policy_source: PolicySource,
    /// Replicas each Redis write must reach before it is acknowledged (0 = don't wait; standalone Redis only).
    #[arg(long, env = "REDIS_WAIT_REPLICAS", default_value_t = 0)]
    pub redis_wait_replicas: u32,
    /// How Redis holds each event: `compact` (one field) or `fields` (one field per part, which servers of builds
    /// before the compact form read: set it while such servers share the Redis, during a rolling upgrade).
    #[arg(long, env = "REDIS_EVENT_FORMAT", value_enum, default_value_t = RedisEventFormat::Compact)]
    pub redis_event_format: RedisEventFormat,
    /// Longest a store call may take; past it the request answers 503 `store_unavailable` with `Retry-After`.
    #[arg(long, env = "STORE_TIMEOUT", default_value_t = 2.0)]
    pub store_timeout: f64,
    /// Whether start, progress, complete and fail may name neither a lease nor an agent (`false`: such a report is
    /// 400 `fence_required`).
    #[arg(long, env = "ALLOW_UNFENCED_COMPLETE", default_value_t = true, action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_unfenced_complete: bool,
    /// Claims that may wait for work on this server at once; past it a claim that finds nothing is 429.
    #[arg(long, env = "MAX_WAITING_CLAIMS", default_value_t = 10_000)]
    pub max_waiting_claims: usize,
    /// Claims one agent may have waiting on this server at once; past it its claim that finds nothing is 429.
    #[arg(long, env = "MAX_WAITING_CLAIMS_PER_AGENT", default_value_t = 32)]
    pub max_waiting_claims_per_agent: usize,
    /// Pending tasks past which a submit is refused with 429 (0: no limit).
    #[arg(long, env = "MAX_PENDING_TASKS", default_value_t = 0)]
    pub max_pending_tasks: u64,
    /// The start of every Redis key (one deployment per prefix).
    #[arg(long, env = "CONTROL_PLANE_PREFIX", default_value = crate::store::redis::DEFAULT_PREFIX)]
    pub prefix: String,
    /// Tokens.
    #[command(flatten)]
    pub auth: AuthArgs,
}

/// `ARAGORA_CONTROL_PLANE_POLICY_SOURCE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicySource {
    /// Folder, built-ins and uploads.
    Auto,
    /// Folder and built-ins only.
    Inprocess,
}

/// `REDIS_EVENT_FORMAT` (decision 0030).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RedisEventFormat {
    /// One field per event.
    Compact,
    /// One field per part of an event, as builds before the compact form write and read.
    Fields,
}

/// The server's settings beyond the engine's `Config`.
#[derive(Debug)]
pub struct ServerSettings {
    /// Where to listen.
    pub bind: SocketAddr,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Time a request's head may take to arrive (`HEADER_READ_TIMEOUT`).
    pub header_read_timeout: Duration,
    /// Bounded drain on shutdown.
    pub drain: Duration,
    /// How to choose the store.
    pub store: StoreOptions,
}

/// A configuration value that does not validate; the message names the variable.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {message}")]
pub struct ConfigError {
    /// The environment variable (and flag) at fault.
    pub variable: &'static str,
    /// What is wrong.
    pub message: String,
}

fn error(variable: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError { variable, message: message.into() }
}

/// Seconds (decimals allowed) as a duration, `min` inclusive.
fn seconds(variable: &'static str, value: f64, min: f64) -> Result<Duration, ConfigError> {
    if !value.is_finite() || value < min || value > 1e9 {
        return Err(error(variable, format!("must be a number of seconds ≥ {min} (got {value})")));
    }
    Ok(Duration::from_secs_f64(value))
}

fn share(variable: &'static str, value: f64) -> Result<f64, ConfigError> {
    if !(0.0..=1.0).contains(&value) {
        return Err(error(variable, format!("must be a share between 0 and 1 (got {value})")));
    }
    Ok(value)
}

/// MiB as bytes, 1 to `max` MiB.
fn mebibytes(variable: &'static str, value: usize, max: usize) -> Result<usize, ConfigError> {
    if value == 0 || value > max {
        return Err(error(variable, format!("must be 1 to {max} MiB (got {value})")));
    }
    Ok(value * 1024 * 1024)
}

/// A deadline in milliseconds (decimals allowed), from the 1 ms tick of plugin deadlines up to a minute.
fn milliseconds(variable: &'static str, value: f64) -> Result<Duration, ConfigError> {
    if !(1.0..=60_000.0).contains(&value) {
        return Err(error(variable, format!("must be 1 to 60000 milliseconds (got {value})")));
    }
    Ok(Duration::from_secs_f64(value / 1000.0))
}

/// Most worker threads a server starts (tokio starts them all at once).
const MAX_WORKER_THREADS: usize = 1024;

fn positive(variable: &'static str, value: usize) -> Result<usize, ConfigError> {
    if value == 0 { Err(error(variable, "must be at least 1")) } else { Ok(value) }
}

impl ServeArgs {
    /// Validates the arguments into the engine's configuration and the server's settings.
    pub fn validate(&self) -> Result<(Config, ServerSettings), ConfigError> {
        let bind: SocketAddr = self
            .bind
            .parse()
            .map_err(|_| error("BIND", format!("{:?} is not an address such as 127.0.0.1:8080", self.bind)))?;
        let heartbeat_interval = seconds("HEARTBEAT_INTERVAL", self.heartbeat_interval, 0.1)?;
        let heartbeat_timeout = seconds("HEARTBEAT_TIMEOUT", self.heartbeat_timeout, 0.1)?;
        if heartbeat_timeout <= heartbeat_interval {
            return Err(error("HEARTBEAT_TIMEOUT", "must be longer than HEARTBEAT_INTERVAL"));
        }
        let task_timeout = seconds("TASK_TIMEOUT", self.task_timeout, 1.0)?;
        if task_timeout > Duration::from_secs(86_400) {
            return Err(error("TASK_TIMEOUT", "must be at most 86400 seconds"));
        }
        if self.max_task_retries > crate::model::MAX_RETRIES_LIMIT {
            return Err(error("MAX_TASK_RETRIES", "must be 0 to 100"));
        }
        let priority_aging = match self.priority_aging_seconds {
            Some(value) => Some(seconds("PRIORITY_AGING_SECONDS", value, 0.001)?),
            None => None,
        };
        if self.default_strategy.trim().is_empty() {
            return Err(error("DEFAULT_STRATEGY", "must name a strategy plugin"));
        }
        if self.max_body_bytes < 1024 {
            return Err(error("MAX_BODY_BYTES", "must be at least 1024"));
        }
        let config = Config {
            heartbeat_interval,
            heartbeat_timeout,
            task_timeout,
            max_task_retries: self.max_task_retries,
            retry_backoff_base: seconds("RETRY_BACKOFF_BASE", self.retry_backoff_base, 0.0)?,
            retry_backoff_max: seconds("RETRY_BACKOFF_MAX", self.retry_backoff_max, 0.0)?,
            priority_aging,
            cleanup_interval: seconds("CLEANUP_INTERVAL", self.cleanup_interval, 0.1)?,
            deliberation_max_wait: seconds("DELIBERATION_MAX_WAIT", self.deliberation_max_wait, 1.0)?,
            task_retention: seconds("TASK_RETENTION", self.task_retention, 0.0)?,
            default_strategy: self.default_strategy.trim().to_string(),
            max_strategy_candidates: positive("MAX_STRATEGY_CANDIDATES", self.max_strategy_candidates)?,
            dispatch_scan: positive("DISPATCH_SCAN", self.dispatch_scan)?,
            max_signatures: positive("MAX_SIGNATURES", self.max_signatures)?,
            plugins_dir: Some(self.plugins_dir.clone()),
            plugin_maxima: CallLimits {
                fuel: positive("PLUGIN_MAX_FUEL", self.plugin_max_fuel as usize)? as u64,
                deadline: milliseconds("PLUGIN_MAX_DEADLINE_MS", self.plugin_max_deadline_ms)?,
                memory_bytes: mebibytes("PLUGIN_MAX_MEMORY_MIB", self.plugin_max_memory_mib, 4096)?,
                ..CallLimits::server_maxima()
            },
            // An upload is held in memory twice (the body, then the decoded component): keep that bounded.
            max_component_bytes: mebibytes("PLUGIN_MAX_COMPONENT_MIB", self.plugin_max_component_mib, 256)?,
            uploads_enabled: self.policy_source == PolicySource::Auto,
            wait_replicas: self.redis_wait_replicas,
            redis_event_fields: self.redis_event_format == RedisEventFormat::Fields,
            store_timeout: seconds("STORE_TIMEOUT", self.store_timeout, 0.1)?,
            allow_unfenced_reports: self.allow_unfenced_complete,
            max_waiting_claims: positive("MAX_WAITING_CLAIMS", self.max_waiting_claims)?,
            max_waiting_claims_per_agent: positive("MAX_WAITING_CLAIMS_PER_AGENT", self.max_waiting_claims_per_agent)?,
            max_pending_tasks: self.max_pending_tasks,
            audit_retention: match seconds("AUDIT_RETENTION", self.audit_retention, 0.0)? {
                Duration::ZERO => None,
                kept => Some(kept),
            },
            audit_signing_key: self.audit_signing_key.clone().or_else(|| self.auth.jwt_secret.clone()),
            decisions: DecisionSettings {
                sample: share("DECISION_SAMPLE", self.decision_sample)?,
                retention: seconds("DECISION_RETENTION", self.decision_retention, 1.0)?,
                max_kept: positive("DECISION_LOG_MAX", self.decision_log_max)?,
                canary_min_calls: self.canary_min_calls.max(1),
                canary_max_excess: share("CANARY_MAX_EXCESS", self.canary_max_excess)?,
            },
            notifications: NotificationSettings {
                worker: self.notification_worker,
                allow_private: self.notification_allow_private,
            },
            event_buffer: positive("SSE_BUFFER", self.sse_buffer)?,
            breaker_threshold: positive("BREAKER_THRESHOLD", self.breaker_threshold as usize)? as u32,
            breaker_window: seconds("BREAKER_WINDOW", self.breaker_window, 0.001)?,
            breaker_cooldown: seconds("BREAKER_COOLDOWN", self.breaker_cooldown, 0.0)?,
            probes: ProbeSettings {
                interval: seconds("PROBE_INTERVAL", self.probe_interval, 0.1)?,
                timeout: seconds("PROBE_TIMEOUT", self.probe_timeout, 0.1)?,
                concurrency: positive("PROBE_CONCURRENCY", self.probe_concurrency)?,
                allowed_hosts: self
                    .probe_allowed_hosts
                    .iter()
                    .map(|h| h.trim().to_string())
                    .filter(|h| !h.is_empty())
                    .collect(),
                trust: match &self.probe_ca_file {
                    Some(path) => ProbeTrust::from_file(path).map_err(|message| error("PROBE_CA_FILE", message))?,
                    None => ProbeTrust::public(),
                },
            },
            ..Config::default()
        };
        let settings = ServerSettings {
            bind,
            max_body_bytes: self.max_body_bytes,
            header_read_timeout: seconds("HEADER_READ_TIMEOUT", self.header_read_timeout, 0.1)?,
            drain: seconds("--drain-seconds", self.drain_seconds, 0.0)?,
            store: StoreOptions {
                redis_url: self.redis_url.clone().filter(|u| !u.trim().is_empty()),
                require_redis: self.require_redis,
                connect_timeout: seconds("REDIS_CONNECT_TIMEOUT", self.redis_connect_timeout, 0.0)?,
                prefix: self.prefix.clone(),
            },
        };
        Ok((config, settings))
    }

    /// The server runtime's worker threads: `WORKER_THREADS`, else one fewer than the cores (at least one).
    /// Apart from [`validate`](Self::validate) because the runtime is built before the server (the demo builds its
    /// own).
    pub fn worker_threads(&self) -> Result<usize, ConfigError> {
        match self.worker_threads {
            Some(workers) if workers == 0 || workers > MAX_WORKER_THREADS => {
                Err(error("WORKER_THREADS", format!("must be 1 to {MAX_WORKER_THREADS} (got {workers})")))
            }
            Some(workers) => Ok(workers),
            None => Ok(default_worker_threads()),
        }
    }
}

/// A control plane serving the REST API on a bound listener: what `serve` runs until a signal, and what `demo`
/// embeds. Built in one place so both get the same coordinator, API state and drain.
pub struct RunningServer {
    /// Where it listens (the port is known even when `BIND` asked for port 0).
    pub address: SocketAddr,
    /// The engine behind the API.
    pub coordinator: Arc<ControlPlaneCoordinator>,
    draining: tokio_util::sync::CancellationToken,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    /// Set once `server` has been awaited to the end: a finished join handle must not be polled again.
    finished: bool,
    drain: Duration,
}

impl RunningServer {
    /// Binds `settings.bind`, starts the coordinator on `config` over `store` (opened by `store::open` from
    /// `settings.store`) and serves the API with `auth`. Needs a tokio runtime.
    pub async fn start(
        config: Config,
        settings: &ServerSettings,
        store: Arc<dyn Store>,
        auth: Arc<Authenticator>,
        metrics_token: Option<String>,
    ) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(settings.bind)
            .await
            .with_context(|| format!("BIND: cannot listen on {}", settings.bind))?;
        let coordinator = ControlPlaneCoordinator::with_store(config, store).await?;
        let state: ApiState = ApiParts {
            max_body_bytes: settings.max_body_bytes,
            header_read_timeout: settings.header_read_timeout,
            metrics_token,
            ..ApiParts::new(coordinator.clone(), auth)
        }
        .into();
        let draining = state.draining.clone();
        let address = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(api::serve(listener, state, async move {
            let _ = stopped.await;
        }));
        Ok(RunningServer {
            address,
            coordinator,
            draining,
            stop: Some(stop),
            server,
            finished: false,
            drain: settings.drain,
        })
    }

    /// Resolves when the server stops by itself, before any [`shutdown`](Self::shutdown) (in practice: it
    /// failed); the coordinator is stopped then too.
    pub async fn stopped(&mut self) -> anyhow::Result<()> {
        if self.finished {
            return std::future::pending().await;
        }
        let outcome = (&mut self.server).await;
        self.finished = true;
        self.coordinator.shutdown().await;
        outcome.context("server task")?.context("server")?;
        Ok(())
    }

    /// Graceful stop: readiness fails and event streams end, no new connections, in-flight requests get the drain
    /// bound, then the coordinator's background duties stop.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        tracing::info!(drain = ?self.drain, "shutting down: no new connections, draining in-flight requests");
        self.draining.cancel();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if self.finished {
            return Ok(());
        }
        let outcome = match tokio::time::timeout(self.drain, &mut self.server).await {
            Ok(outcome) => outcome.context("server task").and_then(|served| served.context("server")),
            Err(_) => {
                tracing::warn!("drain timed out; dropping the remaining requests");
                self.server.abort();
                Ok(())
            }
        };
        self.coordinator.shutdown().await;
        outcome
    }
}

/// Runs `serve` until SIGINT or SIGTERM.
pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let (mut config, settings) = args.validate()?;
    for entry in &config.probes.allowed_hosts {
        if crate::health::http_check::split_entry(entry).1.is_none() {
            tracing::warn!(
                entry,
                "PROBE_ALLOWED_HOSTS names a host without a port: health checks may reach every port of its \
                 loopback addresses (Redis's too); write host:port"
            );
        }
    }
    if config.probes.trust.added() > 0 {
        tracing::info!(
            certificates = config.probes.trust.added(),
            "PROBE_CA_FILE: https health checks trust these certificates beside Mozilla's roots"
        );
    }
    if let Some(dir) = &config.plugins_dir
        && !dir.is_dir()
    {
        tracing::warn!(dir = %dir.display(), "PLUGINS_DIR does not exist: serving the built-in plugins only");
        config.plugins_dir = None;
    }
    let metrics_token = args.metrics_token.clone().filter(|t| !t.is_empty());
    let runtime = server_runtime(args.worker_threads()?)?;
    runtime.block_on(async move {
        let mut signal = ShutdownSignal::install()?;
        let (store, kind) = crate::store::open::open(&settings.store, config.store_config()).await?;
        let (auth, generated) = authenticator(&args.auth, &settings, kind)?;
        audit_key(&mut config, kind);
        let auth = Arc::new(auth);
        let mut server = RunningServer::start(config, &settings, store, auth.clone(), metrics_token).await?;
        say(format_args!("aragora-cp listening on http://{}", server.address));
        if generated {
            say(format_args!("no ARAGORA_JWT_SECRET: generated a secret for this run; an admin token valid 24 h:"));
            say(format_args!("{}", auth.issue("admin", &[Permission::Admin], DEV_TOKEN_TTL)?));
        }
        say(format_args!("dashboard: http://{}/dashboard (sign in with a token)", server.address));
        tokio::select! {
            outcome = server.stopped() => return outcome.map(|()| ExitCode::SUCCESS),
            _ = signal.recv() => {}
        }
        server.shutdown().await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// The server's runtime, on `workers` worker threads.
fn server_runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    if std::env::var_os("TOKIO_WORKER_THREADS").is_some() {
        tracing::warn!("TOKIO_WORKER_THREADS is not read by the server: WORKER_THREADS sets its workers");
    }
    tracing::info!(worker_threads = runtime.metrics().num_workers(), "runtime started");
    Ok(runtime)
}

/// One worker fewer than the cores available, at least one. A task's way crosses between tokio tasks several times
/// (the submit's routing and audit entry, the claim it wakes, the event pump) and every transition takes the
/// memory store's one lock, so a worker with no core of its own — the kernel's network stack and the processes
/// beside the server (its clients, a proxy, the agents on a laptop) need one too — cost more in wake-ups, stolen
/// tasks and contention than it added where this was measured: two cores shared with the load (docs/BENCHMARKS.md,
/// "Worker threads"). A plugin call runs inline for at most its deadline (5 ms by default for strategies and
/// policies); one whose deadline may be longer than `INLINE_CALL_LIMIT` leaves the worker through
/// `block_in_place`, so a slow plugin holds a lone worker no longer than that.
pub(crate) fn default_worker_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |cores| cores.get()).saturating_sub(1).max(1)
}

/// One line on stdout for whoever started the server. A reader that went away (`serve | head -1`, a supervisor
/// that read the address and closed the pipe) must not take the server down, so a failed write is ignored where
/// `println!` would panic.
fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// Settles the key that signs audit checkpoints. Without `AUDIT_SIGNING_KEY` or `ARAGORA_JWT_SECRET`, a server on
/// the memory store signs with a key of its own for this run (its log dies with it); servers sharing a Redis must
/// share the key, so without one retention is off (the log keeps every entry) and the start-up says so.
fn audit_key(config: &mut Config, store: StoreKind) {
    if config.audit_retention.is_none() || config.audit_signing_key.is_some() {
        return;
    }
    if store == StoreKind::Memory {
        config.audit_signing_key = Some(format!("{:032x}", rand::random::<u128>()));
    } else {
        config.audit_retention = None;
        tracing::warn!(
            "AUDIT_RETENTION is off: set AUDIT_SIGNING_KEY (the same on every server) to sign the checkpoint that \
             replaces old audit entries; until then the audit log keeps every entry"
        );
    }
}

/// The token verifier, and whether its secret was generated for this run. A generated secret is only for a
/// loopback server on the memory store: servers sharing a Redis must share their secret, so they cannot invent one.
fn authenticator(
    auth: &AuthArgs,
    settings: &ServerSettings,
    store: StoreKind,
) -> anyhow::Result<(Authenticator, bool)> {
    if let Some(verifier) = auth.public_key_authenticator()? {
        return Ok((verifier, false));
    }
    if let Some(secret) = &auth.jwt_secret {
        return Ok((auth.authenticator(secret.as_bytes())?, false));
    }
    if !settings.bind.ip().is_loopback() {
        anyhow::bail!("ARAGORA_JWT_SECRET or ARAGORA_JWT_PUBLIC_KEY: required when BIND is not a loopback address");
    }
    if store == StoreKind::Redis {
        anyhow::bail!(
            "ARAGORA_JWT_SECRET or ARAGORA_JWT_PUBLIC_KEY: required with the Redis store (the servers sharing it \
             must accept each other's tokens); or set REDIS_URL=memory:// for a single development server"
        );
    }
    Ok((auth.authenticator(&Authenticator::generated_secret())?, true))
}

/// SIGINT (Ctrl-C) and SIGTERM, listened for from the moment it is made: made before a server says it listens,
/// so a supervisor that stops it right after start-up gets a graceful stop, not the default action (death by the
/// signal, a failed exit).
pub(crate) struct ShutdownSignal {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl ShutdownSignal {
    /// Installs the handlers (needs a tokio runtime).
    pub(crate) fn install() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(ShutdownSignal {
                interrupt: signal(SignalKind::interrupt()).context("listen for SIGINT")?,
                terminate: signal(SignalKind::terminate()).context("listen for SIGTERM")?,
            })
        }
        #[cfg(not(unix))]
        Ok(ShutdownSignal {})
    }

    /// Resolves on the next SIGINT or SIGTERM.
    pub(crate) async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `aragora-cp token`: prints a token signed with the configured secret.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Permissions, comma- or space-separated (`controlplane:tasks`, or short: `tasks`).
    #[arg(long, default_value = "controlplane:admin")]
    pub permissions: String,
    /// The subject (`agent:<id>` binds the token to one agent).
    #[arg(long, default_value = "admin")]
    pub sub: String,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600.0)]
    pub ttl: f64,
    /// Tokens.
    #[command(flatten)]
    pub auth: AuthArgs,
}

/// Prints a token.
pub fn token(args: TokenArgs) -> anyhow::Result<ExitCode> {
    let secret = args.auth.jwt_secret.clone().context("ARAGORA_JWT_SECRET: required to sign a token")?;
    let auth = args.auth.authenticator(secret.as_bytes())?;
    let permissions = args
        .permissions
        .split([',', ' '])
        .filter(|p| !p.is_empty())
        .map(|p| Permission::parse(p).with_context(|| format!("--permissions: unknown permission {p:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let ttl = seconds("--ttl", args.ttl, 1.0)?;
    println!("{}", auth.issue(&args.sub, &permissions, ttl)?);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn serve_args(args: &[&str]) -> ServeArgs {
        let argv = ["aragora-cp", "serve"].iter().chain(args).copied();
        match Cli::try_parse_from(argv).expect("arguments parse").command {
            Command::Serve(args) => *args,
            other => panic!("not serve: {other:?}"),
        }
    }

    #[test]
    fn flags_fill_the_config_with_decimal_seconds() {
        let (config, settings) =
            serve_args(&["--bind", "127.0.0.1:0", "--heartbeat-interval", "0.5", "--max-task-retries", "7"])
                .validate()
                .expect("valid");
        assert_eq!(config.heartbeat_interval, Duration::from_millis(500));
        assert_eq!(config.max_task_retries, 7);
        assert!(settings.bind.ip().is_loopback());
        assert_eq!(config.probes.trust.added(), 0, "Mozilla's roots only");
        let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls/ca.pem");
        let (config, _) = serve_args(&["--probe-ca-file", ca]).validate().expect("valid");
        assert_eq!(config.probes.trust.added(), 1);
    }

    #[test]
    fn worker_threads_default_to_one_fewer_than_the_cores() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(serve_args(&[]).worker_threads().expect("valid"), cores.saturating_sub(1).max(1));
        assert_eq!(serve_args(&["--worker-threads", "3"]).worker_threads().expect("valid"), 3);
        for given in ["0", "5000"] {
            let error = serve_args(&["--worker-threads", given]).worker_threads().expect_err("refused");
            assert_eq!(error.to_string(), format!("WORKER_THREADS: must be 1 to 1024 (got {given})"));
        }
    }

    #[test]
    fn validation_errors_name_the_variable() {
        let cases: [(&[&str], &str); 6] = [
            (&["--bind", "nowhere"], "BIND"),
            (&["--heartbeat-interval", "40", "--heartbeat-timeout", "30"], "HEARTBEAT_TIMEOUT"),
            (&["--task-timeout=-1"], "TASK_TIMEOUT"),
            (&["--max-signatures", "0"], "MAX_SIGNATURES"),
            (&["--probe-ca-file", "/nonexistent/ca.pem"], "PROBE_CA_FILE"),
            // A PEM file, but of a key: no certificate to trust.
            (
                &["--probe-ca-file", concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls/localhost.key")],
                "PROBE_CA_FILE",
            ),
        ];
        for (args, variable) in cases {
            let error = serve_args(args).validate().expect_err("invalid");
            assert_eq!(error.variable, variable, "{error}");
        }
    }

    #[test]
    fn audit_retention_gets_a_key_of_its_own_on_memory_and_is_off_on_redis_without_one() {
        let defaults = serve_args(&[]).validate().expect("valid").0;
        assert_eq!(defaults.audit_retention, Some(Duration::from_secs(86_400)), "a day by default");
        let mut memory = defaults.clone();
        audit_key(&mut memory, StoreKind::Memory);
        assert!(memory.audit_signing_key.is_some() && memory.audit_retention.is_some());
        let mut redis = defaults.clone();
        audit_key(&mut redis, StoreKind::Redis);
        assert_eq!((redis.audit_signing_key, redis.audit_retention), (None, None), "no shared key: kept whole");
        let mut keyed = Config { audit_signing_key: Some("k".into()), ..defaults };
        audit_key(&mut keyed, StoreKind::Redis);
        assert_eq!((keyed.audit_signing_key.as_deref(), keyed.audit_retention.is_some()), (Some("k"), true));
    }
}
