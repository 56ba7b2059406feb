//! Loading and validating one plugin version: bytes + manifest → a [`PluginVersion`] ready to activate, or a
//! [`LoadError`] saying why not. Runs once per version, off the request path (watcher thread, upload handler,
//! start-up, CLI).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use parking_lot::Mutex;
use serde::Serialize;

use super::bindings::{
    AgentInfo, CallContext, Candidate, CandidateDetails, Decision, Observations, PolicyInput, ProbeResult, TaskInfo,
};
use super::instance::{CallReport, Sandbox, StartUp};
use super::manifest::Manifest;
use super::policy::PolicyPlugin;
use super::probe::ProbePlugin;
use super::runtime::{CallLimits, PluginRuntime};
use super::sandbox::LogTail;
use super::strategy::StrategyPlugin;
use super::{CallError, LoadError, PluginKind, PluginSource, validate_name};

/// The kind-specific, callable part of a version.
pub enum PluginHandle {
    /// A strategy.
    Strategy(StrategyPlugin),
    /// A policy.
    Policy(PolicyPlugin),
    /// A health probe.
    HealthProbe(ProbePlugin),
}

impl PluginHandle {
    /// One call on synthetic input, as validation makes before a version replaces another.
    fn trial(&self) -> Result<(), CallError> {
        match self {
            PluginHandle::Strategy(plugin) => plugin.trial(),
            PluginHandle::Policy(plugin) => plugin.trial(),
            PluginHandle::HealthProbe(plugin) => plugin.trial(),
        }
    }

    /// Starts the instances calls will use (see [`Sandbox::warm_up`]).
    fn warm_up(&self, count: usize) -> Option<StartUp> {
        match self {
            PluginHandle::Strategy(plugin) => plugin.sandbox.warm_up(count),
            PluginHandle::Policy(plugin) => plugin.sandbox.warm_up(count),
            PluginHandle::HealthProbe(plugin) => plugin.sandbox.warm_up(count),
        }
    }
}

/// Counters of one version, kept by every call.
#[derive(Default)]
pub struct PluginStats {
    calls: AtomicU64,
    failures: AtomicU64,
    fallbacks: AtomicU64,
    total_nanos: AtomicU64,
    max_nanos: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// A snapshot of [`PluginStats`], as `GET /plugins` shows it.
#[derive(Clone, Debug, Default, Serialize, PartialEq, utoipa::ToSchema)]
pub struct StatsSnapshot {
    /// Calls made.
    pub calls: u64,
    /// Calls that produced no answer.
    pub failures: u64,
    /// Times a fallback answered instead of this version.
    pub fallbacks: u64,
    /// Mean call latency in microseconds.
    pub latency_us_mean: f64,
    /// Slowest call in microseconds.
    pub latency_us_max: f64,
    /// The most recent failure.
    pub last_error: Option<String>,
}

impl PluginStats {
    fn record<T>(&self, started: Instant, outcome: &Result<T, CallError>) {
        let nanos = started.elapsed().as_nanos() as u64;
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.total_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.max_nanos.fetch_max(nanos, Ordering::Relaxed);
        if let Err(error) = outcome {
            self.failures.fetch_add(1, Ordering::Relaxed);
            *self.last_error.lock() = Some(error.to_string());
        }
    }

    /// Counts one answer given by a fallback instead of this version.
    pub fn record_fallback(&self) {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let calls = self.calls.load(Ordering::Relaxed);
        let total = self.total_nanos.load(Ordering::Relaxed);
        StatsSnapshot {
            calls,
            failures: self.failures.load(Ordering::Relaxed),
            fallbacks: self.fallbacks.load(Ordering::Relaxed),
            latency_us_mean: if calls == 0 { 0.0 } else { total as f64 / calls as f64 / 1000.0 },
            latency_us_max: self.max_nanos.load(Ordering::Relaxed) as f64 / 1000.0,
            last_error: self.last_error.lock().clone(),
        }
    }
}

/// One loaded, validated version of a plugin.
pub struct PluginVersion {
    /// The plugin's name (file stem, upload name or built-in name).
    pub name: String,
    /// Its world.
    pub kind: PluginKind,
    /// Where it came from.
    pub source: PluginSource,
    /// Hex sha256 of the component bytes.
    pub sha256: String,
    /// Size of the component in bytes.
    pub size: usize,
    /// When this version was loaded.
    pub loaded_at: SystemTime,
    /// Its manifest (empty when there was none).
    pub manifest: Manifest,
    /// The limits each call runs under.
    pub limits: CallLimits,
    /// What a fresh instance took to start when the version loaded (calls use the instances warmed then); `None`
    /// when warming failed after the trial (a deadline missed on a busy machine).
    pub start_up: Option<StartUp>,
    /// The component's imports.
    pub imports: Vec<String>,
    /// The component's exports.
    pub exports: Vec<String>,
    /// Call counters of this version.
    pub stats: PluginStats,
    /// Call counters of every version of this name on this server since it started (a new version adds to them:
    /// `aragora_cp_plugin_calls_total` is a Prometheus counter, which only the process may reset).
    pub totals: Arc<PluginStats>,
    /// Whether this version's calls go to `totals`: not while it is a shadow, whose calls decide nothing (a shadow
    /// that fails every call must not make the name look broken); set when it is promoted.
    pub counts_in_totals: AtomicBool,
    /// What this version printed, last lines.
    pub log: Arc<LogTail>,
    /// The callable part.
    pub handle: PluginHandle,
}

impl std::fmt::Debug for PluginVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginVersion")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("source", &self.source)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

/// Trial calls a version may miss its wall-clock deadline on before it is rejected for it.
const TRIAL_ATTEMPTS: u32 = 3;

/// Loads and validates one version: compile and inspect, check the manifest's kind, type-check against the
/// world, then `init` and a trial call on a fresh instance under the version's limits.
pub fn load(
    runtime: &PluginRuntime,
    name: &str,
    source: PluginSource,
    bytes: &[u8],
    manifest: Manifest,
) -> Result<PluginVersion, LoadError> {
    load_counted(runtime, name, source, bytes, manifest, Arc::default())
}

/// Like [`load`], adding the version's calls to `totals` as well (the registry's counters for the name).
pub fn load_counted(
    runtime: &PluginRuntime,
    name: &str,
    source: PluginSource,
    bytes: &[u8],
    manifest: Manifest,
    totals: Arc<PluginStats>,
) -> Result<PluginVersion, LoadError> {
    validate_name(name)?;
    let compiled = runtime.compile(bytes)?;
    if let Some(declared) = manifest.kind
        && declared != compiled.kind
    {
        return Err(LoadError::KindMismatch { declared, actual: compiled.kind });
    }
    let kind = compiled.kind;
    let limits = manifest.limits(runtime.default_limits(kind), runtime.maxima());
    let config = manifest.config_json();
    let type_check = |message| LoadError::TypeCheck { kind, message };
    let log = Arc::new(LogTail::new(name));
    macro_rules! sandbox {
        () => {
            Sandbox::new(runtime, &compiled.component, compiled.digest, config, limits, log.clone())
                .map_err(type_check)?
        };
    }
    let handle = match kind {
        PluginKind::Strategy => PluginHandle::Strategy(StrategyPlugin { sandbox: sandbox!() }),
        PluginKind::Policy => PluginHandle::Policy(PolicyPlugin { sandbox: sandbox!() }),
        PluginKind::HealthProbe => PluginHandle::HealthProbe(ProbePlugin { sandbox: sandbox!() }),
    };
    // The deadline is wall-clock: on a busy machine (a test run, a fleet starting at once) a good plugin can miss
    // it once by being descheduled. Only deadline misses are retried; fuel, traps and bad answers are verdicts.
    let mut attempt = 1;
    let trial = loop {
        match handle.trial() {
            Err(CallError::Deadline { .. }) if attempt < TRIAL_ATTEMPTS => attempt += 1,
            trial => break trial,
        }
    };
    match trial {
        Ok(()) => {}
        Err(CallError::Init(message)) => return Err(LoadError::Init(message)),
        Err(error) => return Err(LoadError::Trial(error)),
    }
    let start_up = handle.warm_up(runtime.warm_instances());
    Ok(PluginVersion {
        name: name.to_string(),
        kind,
        source,
        sha256: compiled.sha256,
        size: compiled.size,
        loaded_at: SystemTime::now(),
        manifest,
        limits,
        start_up,
        imports: compiled.imports,
        exports: compiled.exports,
        stats: PluginStats::default(),
        totals,
        counts_in_totals: AtomicBool::new(true),
        log,
        handle,
    })
}

impl PluginVersion {
    /// Whether this strategy wants `candidate-details` (its manifest sets `needs_details` or lists labels).
    pub fn wants_details(&self) -> bool {
        self.manifest.needs_details || !self.manifest.labels.is_empty()
    }

    /// Runs a strategy version (counted in its stats). `details` is dropped unless the version wants it.
    pub fn select(
        &self,
        ctx: CallContext,
        task: &TaskInfo,
        candidates: &[Candidate],
        details: &[CandidateDetails],
    ) -> Result<usize, CallError> {
        self.select_reporting(ctx, task, candidates, details).map(|(index, _)| index)
    }

    /// Like [`select`](Self::select), with the call's report.
    pub fn select_reporting(
        &self,
        ctx: CallContext,
        task: &TaskInfo,
        candidates: &[Candidate],
        details: &[CandidateDetails],
    ) -> Result<(usize, CallReport), CallError> {
        let started = Instant::now();
        let details = if self.wants_details() { details } else { &[] };
        let outcome = match &self.handle {
            PluginHandle::Strategy(plugin) => {
                plugin.select(ctx, task, candidates, details).map(|(i, r)| (i as usize, r))
            }
            _ => Err(self.wrong_kind(PluginKind::Strategy)),
        };
        self.record(started, &outcome);
        outcome
    }

    /// Runs a policy version (counted in its stats).
    pub fn evaluate(&self, ctx: CallContext, input: &PolicyInput) -> Result<(Decision, CallReport), CallError> {
        let started = Instant::now();
        let outcome = match &self.handle {
            PluginHandle::Policy(plugin) => plugin.evaluate(ctx, input),
            _ => Err(self.wrong_kind(PluginKind::Policy)),
        };
        self.record(started, &outcome);
        outcome
    }

    /// Runs a health-probe version (counted in its stats).
    pub fn probe(
        &self,
        ctx: CallContext,
        agent: &AgentInfo,
        observed: &Observations,
    ) -> Result<(ProbeResult, CallReport), CallError> {
        let started = Instant::now();
        let outcome = match &self.handle {
            PluginHandle::HealthProbe(plugin) => plugin.probe(ctx, agent, observed),
            _ => Err(self.wrong_kind(PluginKind::HealthProbe)),
        };
        self.record(started, &outcome);
        outcome
    }

    fn record<T>(&self, started: Instant, outcome: &Result<T, CallError>) {
        self.stats.record(started, outcome);
        if self.counts_in_totals.load(Ordering::Relaxed) {
            self.totals.record(started, outcome);
        }
    }

    /// Counts one answer given by a fallback instead of this version.
    pub fn record_fallback(&self) {
        self.stats.record_fallback();
        if self.counts_in_totals.load(Ordering::Relaxed) {
            self.totals.record_fallback();
        }
    }

    fn wrong_kind(&self, expected: PluginKind) -> CallError {
        CallError::WrongKind { expected, actual: self.kind }
    }
}
