//! The plugins this server has loaded, by name: which version of each is active, which are shadowed, which
//! was rejected last and why. Activation is an atomic swap under a short write lock; callers clone an `Arc` of
//! the active version, so calls in flight finish on the version they started with.
//!
//! Per name, precedence is upload > file > built-in (the order of [`PluginSource`]). Removing a source falls back
//! to the next one, so deleting a file that overrides a built-in restores the built-in.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use crate::model::{rfc3339, sha256_hex};
use parking_lot::RwLock;
use serde::Serialize;
use tokio::sync::broadcast;

use super::bindings::{
    CallContext, Candidate, CandidateDetails, Decision, Observations, PolicyInput, ProbeResult, TaskInfo,
};
use super::builtin::{BUILTIN_PROBES, BUILTIN_STRATEGIES, FALLBACK_STRATEGY};
use super::convert;
use super::decision_log::{DecisionLog, Noted, Subject, answered_by, selection_input};
use super::instance::CallReport;
use super::loader::{self, PluginStats, StatsSnapshot};
use super::manifest::{Manifest, OnError};
use super::policy::decision_name;
use super::rollout::{Rollout, RolloutMode, ShadowFigures, ShadowRunner};
use super::runtime::{CallLimits, PluginRuntime};
use super::strategy::{Selection, select_with_fallback};
use super::{CallError, LoadError, PluginKind, PluginSource, PluginVersion};
use crate::model::Agent;
use crate::model::{DecisionAnswer, DecisionRole, DecisionStage};

/// Something that happened to a plugin; the coordinator turns these into `plugin_*` events.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PluginEvent {
    /// A version was loaded and validated. `active` is false when a higher-precedence source shadows it.
    PluginLoaded {
        /// Plugin name.
        name: String,
        /// Its kind.
        kind: PluginKind,
        /// Where it came from.
        source: PluginSource,
        /// sha256 of the component.
        sha256: String,
        /// Whether it now answers calls.
        active: bool,
    },
    /// A version failed validation; the previous version (if any) keeps serving.
    PluginRejected {
        /// Plugin name.
        name: String,
        /// Where it came from.
        source: PluginSource,
        /// sha256 of the rejected bytes.
        sha256: String,
        /// Why.
        error: String,
    },
    /// A source was removed (file deleted, upload deleted); the next source, if any, is active now.
    PluginRemoved {
        /// Plugin name.
        name: String,
        /// The removed source.
        source: PluginSource,
        /// The source active now, if any.
        now_active: Option<PluginSource>,
    },
}

/// The last rejected version of a name.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Rejection {
    /// Where the rejected version came from.
    pub source: PluginSource,
    /// sha256 of the rejected bytes.
    pub sha256: String,
    /// Why it was rejected.
    pub error: String,
    /// When (RFC 3339).
    pub at: String,
}

/// One version as `GET /plugins` shows it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct VersionInfo {
    /// The plugin's world.
    pub kind: PluginKind,
    /// Where it came from.
    pub source: PluginSource,
    /// sha256 of the component.
    pub sha256: String,
    /// Size of the component in bytes.
    pub size: usize,
    /// When it was loaded (RFC 3339).
    pub loaded_at: String,
    /// Limits per call.
    pub limits: CallLimits,
    /// Policies: evaluation order.
    pub order: i64,
    /// Policies: behaviour when the policy cannot answer.
    pub on_error: OnError,
    /// Metadata keys passed as labels.
    pub labels: Vec<String>,
    /// The component's imports.
    pub imports: Vec<String>,
    /// Strategies: whether it receives candidate details (ids, models, providers, labels).
    pub needs_details: bool,
    /// Submit policies: whether it receives the payload.
    pub needs_payload: bool,
    /// The manifest's `[config]`, as passed to `init`.
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
    /// Call counters of this version.
    #[serde(flatten)]
    pub stats: StatsSnapshot,
    /// The last lines this version printed (stdout and stderr), oldest first.
    pub log: Vec<String>,
}

/// A name's candidate version, as `GET /plugins/{name}` shows it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct RolloutInfo {
    /// `shadow`, or `canary` with its `percent`.
    #[serde(flatten)]
    pub mode: RolloutMode,
    /// When the candidate was installed on this server (RFC 3339).
    pub since: String,
    /// The candidate, with its own call counters.
    pub candidate: VersionInfo,
    /// The active version's calls, failures and fallbacks since the candidate was installed: what a canary is
    /// judged against.
    pub active_since: StatsSnapshot,
    /// Shadows: the comparison counters (samples at `GET /plugins/{name}/shadow`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowFigures>,
}

/// Whether a name has a version that answers calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PluginStatus {
    /// A version answers calls.
    Active,
    /// The only versions offered were rejected.
    Rejected,
    /// Disabled fleet-wide: no version answers calls.
    Disabled,
    /// This server holds no version (the fleet's record, with its history, remains).
    Absent,
}

/// Everything about one plugin name.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct PluginInfo {
    /// The name.
    pub name: String,
    /// Whether a version answers calls.
    pub status: PluginStatus,
    /// The version that answers calls.
    pub active: Option<VersionInfo>,
    /// Loaded versions hidden by a higher-precedence source.
    pub shadowed: Vec<VersionInfo>,
    /// The last rejected version, if it is newer than the active one.
    pub last_rejection: Option<Rejection>,
    /// Calls of every version of the name on this server since it started (what `/metrics` counts).
    pub totals: StatsSnapshot,
    /// A candidate version in shadow or canary mode, if the name has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutInfo>,
    /// The fleet version (`PUT`/`DELETE`/enable/disable) this server has applied to the name, if any.
    pub active_version: Option<u64>,
    /// The fleet's record of the name (uploads, enable/disable, history), when the API asks the store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<crate::model::PluginRecord>,
    /// The server reporting.
    pub server_id: String,
}

#[derive(Default)]
struct Slot {
    versions: BTreeMap<PluginSource, Arc<PluginVersion>>,
    rejection: Option<Rejection>,
    /// Disabled fleet-wide: the versions stay loaded (enable is instant) but none answers.
    disabled: bool,
    /// The fleet version last applied to this name.
    fleet_version: Option<u64>,
    /// A candidate version in shadow or canary mode beside the active one.
    rollout: Option<Arc<Rollout>>,
}

impl Slot {
    /// The version that answers calls.
    fn active(&self) -> Option<&Arc<PluginVersion>> {
        if self.disabled { None } else { self.top() }
    }

    /// The highest-precedence version, answering or not.
    fn top(&self) -> Option<&Arc<PluginVersion>> {
        self.versions.values().next_back()
    }

    fn is_empty(&self) -> bool {
        self.versions.is_empty() && self.rejection.is_none() && !self.disabled && self.rollout.is_none()
    }
}

#[derive(Default)]
struct State {
    slots: BTreeMap<String, Slot>,
    /// Active policies in evaluation order, rebuilt on every change so the submit path does not sort.
    policies: Arc<[Arc<PluginVersion>]>,
    /// Active health probes by name.
    probes: Arc<[Arc<PluginVersion>]>,
}

impl State {
    fn rebuild_lists(&mut self) {
        let active = || self.slots.values().filter_map(Slot::active);
        let mut policies: Vec<_> = active().filter(|v| v.kind == PluginKind::Policy).cloned().collect();
        policies.sort_by(|a, b| a.manifest.order().cmp(&b.manifest.order()).then_with(|| a.name.cmp(&b.name)));
        let probes: Vec<_> = active().filter(|v| v.kind == PluginKind::HealthProbe).cloned().collect();
        self.policies = policies.into();
        self.probes = probes.into();
    }
}

/// The registry of loaded plugins. Shared as `Arc<PluginRegistry>`.
pub struct PluginRegistry {
    runtime: PluginRuntime,
    server_id: String,
    state: RwLock<State>,
    /// Serialises installs and removals (never held by calls).
    changes: parking_lot::Mutex<()>,
    /// The embedded `least_loaded`, the fallback of every strategy call even when a file overrides the name.
    fallback: Arc<PluginVersion>,
    events: broadcast::Sender<PluginEvent>,
    /// Call counters per name over every version loaded since start (swaps never reset them).
    totals: parking_lot::Mutex<BTreeMap<String, Arc<PluginStats>>>,
    /// Where decisions are recorded, once the server set it up.
    decisions: OnceLock<Arc<DecisionLog>>,
    /// Whether any name has a rollout: the call paths look a name's rollout up only then.
    any_rollout: AtomicBool,
    /// The thread shadow calls run on.
    shadows: ShadowRunner,
}

/// A strategy name that matches no active strategy.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown strategy {0:?}")]
pub struct UnknownStrategy(pub String);

/// One strategy call as [`PluginRegistry::choose`] makes it.
pub struct SelectionCall<'a> {
    /// Route or select.
    pub stage: DecisionStage,
    /// The call's clock and seed.
    pub ctx: CallContext,
    /// The task.
    pub task: &'a TaskInfo,
    /// The candidates' agent ids, in the candidates' order.
    pub agent_ids: &'a [&'a str],
    /// The candidates (never empty).
    pub candidates: &'a [Candidate],
    /// Their details (empty unless the strategy wants them).
    pub details: &'a [CandidateDetails],
}

/// How many waiting agents the built-in strategies choose among, the longest-waiting first: enough for "fewest in
/// flight" and "longest since assigned" to mean something, few enough that a choice costs the same whatever the
/// size of the fleet (Envoy's least-request balancer samples two for the same reason). A file or upload of the
/// same name sets its own.
pub const BUILTIN_MAX_CANDIDATES: usize = 8;

/// The agents' heartbeat settings, which the built-in health probe judges heartbeat ages against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Liveness {
    /// `HEARTBEAT_INTERVAL`.
    pub heartbeat_interval: Duration,
    /// `HEARTBEAT_TIMEOUT`.
    pub heartbeat_timeout: Duration,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness { heartbeat_interval: Duration::from_secs(10), heartbeat_timeout: Duration::from_secs(30) }
    }
}

/// The built-in probe's manifest: its embedded one, with the heartbeat thresholds of this server (unhealthy past
/// the offline timeout, degraded past two missed heartbeats) and failure rates that only degrade. Task failures
/// alone never make an agent unhealthy here: a poison task failing everywhere must not take the fleet out of
/// service (breakers, fed by failures blamed on the agent, are for that).
fn builtin_probe_manifest(embedded: &str, liveness: Liveness) -> Result<Manifest, LoadError> {
    let mut manifest = Manifest::parse(embedded).map_err(LoadError::Manifest)?;
    let timeout = liveness.heartbeat_timeout.as_millis().min(i64::MAX as u128) as i64;
    let interval = liveness.heartbeat_interval.as_millis().min(i64::MAX as u128) as i64;
    let config = &mut manifest.config;
    config.insert("max_heartbeat_age_ms".into(), toml::Value::Integer(timeout));
    config.insert("degraded_heartbeat_age_ms".into(), toml::Value::Integer(interval.saturating_mul(2).min(timeout)));
    config.insert("max_failure_rate".into(), toml::Value::Float(1.0));
    config.insert("degraded_failure_rate".into(), toml::Value::Float(0.5));
    Ok(manifest)
}

impl PluginRegistry {
    /// A registry holding the built-in strategies and the built-in health probe, judging heartbeats against the
    /// default settings (10 s interval, 30 s timeout).
    pub fn new(runtime: PluginRuntime, server_id: impl Into<String>) -> Result<Self, LoadError> {
        PluginRegistry::with_liveness(runtime, server_id, Liveness::default())
    }

    /// A registry holding the built-ins, its probe judging heartbeats against `liveness`.
    pub fn with_liveness(
        runtime: PluginRuntime,
        server_id: impl Into<String>,
        liveness: Liveness,
    ) -> Result<Self, LoadError> {
        let mut state = State::default();
        let mut fallback = None;
        let mut totals: BTreeMap<String, Arc<PluginStats>> = BTreeMap::new();
        let mut builtin = |name: &str, bytes: &[u8], manifest| -> Result<Arc<PluginVersion>, LoadError> {
            let counted = totals.entry(name.to_string()).or_default().clone();
            let version = loader::load_counted(&runtime, name, PluginSource::Builtin, bytes, manifest, counted)?;
            let version = Arc::new(version);
            state.slots.entry(name.to_string()).or_default().versions.insert(PluginSource::Builtin, version.clone());
            Ok(version)
        };
        for (name, bytes) in BUILTIN_STRATEGIES {
            let manifest = Manifest { max_candidates: Some(BUILTIN_MAX_CANDIDATES), ..Manifest::default() };
            let version = builtin(name, bytes, manifest)?;
            if *name == FALLBACK_STRATEGY {
                fallback = Some(version);
            }
        }
        for (name, bytes, embedded) in BUILTIN_PROBES {
            builtin(name, bytes, builtin_probe_manifest(embedded, liveness)?)?;
        }
        state.rebuild_lists();
        let (events, _) = broadcast::channel(256);
        Ok(PluginRegistry {
            runtime,
            server_id: server_id.into(),
            state: RwLock::new(state),
            changes: parking_lot::Mutex::new(()),
            fallback: fallback.expect("least_loaded is among the built-ins"),
            events,
            totals: parking_lot::Mutex::new(totals),
            decisions: OnceLock::new(),
            any_rollout: AtomicBool::new(false),
            shadows: ShadowRunner::default(),
        })
    }

    /// The runtime versions are compiled with.
    pub fn runtime(&self) -> &PluginRuntime {
        &self.runtime
    }

    /// The id this server reports in plugin listings.
    pub fn server_id(&self) -> &str {
        &self.server_id
    }

    /// Plugin events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<PluginEvent> {
        self.events.subscribe()
    }

    /// Loads and validates `bytes` as the `source` version of `name`, and activates it if no higher-precedence
    /// source exists. On failure the previous versions stay as they were and the rejection is recorded.
    pub fn install(
        &self,
        name: &str,
        source: PluginSource,
        bytes: &[u8],
        manifest: Manifest,
    ) -> Result<Arc<PluginVersion>, LoadError> {
        // Installs and removals are serialised, so a slow validation cannot overwrite a newer version or bring
        // back a removed one. Calls are not blocked: they only take the state lock, briefly.
        let _changes = self.changes.lock();
        // Compile and validate outside the state lock: that takes milliseconds, and calls keep flowing meanwhile.
        let totals = self.totals.lock().entry(name.to_string()).or_default().clone();
        let loaded = loader::load_counted(&self.runtime, name, source, bytes, manifest, totals).and_then(|version| {
            match self.kind_taken(name, source, version.kind) {
                Some(conflict) => Err(conflict),
                None => Ok(version),
            }
        });
        match loaded {
            Ok(version) => {
                let version = Arc::new(version);
                let active = {
                    let mut state = self.state.write();
                    let slot = state.slots.entry(name.to_string()).or_default();
                    slot.versions.insert(source, version.clone());
                    if slot.rejection.as_ref().is_some_and(|r| r.source == source) {
                        slot.rejection = None;
                    }
                    let active = slot.active().is_some_and(|a| Arc::ptr_eq(a, &version));
                    state.rebuild_lists();
                    active
                };
                tracing::info!(plugin = name, kind = %version.kind, %source, sha256 = %version.sha256, active, "plugin loaded");
                let _ = self.events.send(PluginEvent::PluginLoaded {
                    name: name.to_string(),
                    kind: version.kind,
                    source,
                    sha256: version.sha256.clone(),
                    active,
                });
                Ok(version)
            }
            Err(error) => {
                self.reject(name, source, bytes, &error);
                Err(error)
            }
        }
    }

    /// Validates `bytes` as the `source` version of `name` without activating it (an upload is checked by the
    /// server that receives it before the fleet hears of it). A failure is recorded as a rejection.
    pub fn validate(
        &self,
        name: &str,
        source: PluginSource,
        bytes: &[u8],
        manifest: Manifest,
    ) -> Result<(), LoadError> {
        let checked = loader::load(&self.runtime, name, source, bytes, manifest)
            .and_then(|version| self.kind_taken(name, source, version.kind).map_or(Ok(()), Err));
        if let Err(error) = &checked {
            self.reject(name, source, bytes, error);
        }
        checked
    }

    /// Disables or enables `name` on this server (a fleet-wide change, applied by the coordinator): a disabled
    /// name answers no calls — its strategy is unknown, its policy or probe skipped — while its versions stay
    /// loaded.
    pub fn set_disabled(&self, name: &str, disabled: bool) {
        let _changes = self.changes.lock();
        let mut state = self.state.write();
        let slot = state.slots.entry(name.to_string()).or_default();
        if slot.disabled != disabled {
            slot.disabled = disabled;
            tracing::info!(plugin = name, disabled, "plugin {}", if disabled { "disabled" } else { "enabled" });
        }
        if slot.is_empty() {
            state.slots.remove(name);
        }
        state.rebuild_lists();
    }

    /// The fleet version this server has applied to `name`, if any.
    pub fn fleet_version(&self, name: &str) -> Option<u64> {
        self.state.read().slots.get(name).and_then(|slot| slot.fleet_version)
    }

    /// Records the fleet version this server has applied to `name` (a name it holds nothing of has no slot).
    pub fn set_fleet_version(&self, name: &str, version: u64) {
        if let Some(slot) = self.state.write().slots.get_mut(name) {
            slot.fleet_version = Some(version);
        }
    }

    /// A name keeps one kind across its sources: a policy file must not shadow the built-in strategy of the
    /// same name (the default strategy would vanish and the file would join the submit chain).
    fn kind_taken(&self, name: &str, source: PluginSource, kind: PluginKind) -> Option<LoadError> {
        let state = self.state.read();
        let slot = state.slots.get(name)?;
        let (other_source, other) = slot.versions.iter().find(|(s, v)| **s != source && v.kind != kind)?;
        Some(LoadError::KindConflict {
            name: name.to_string(),
            existing: other.kind,
            source_of_existing: *other_source,
            offered: kind,
        })
    }

    /// Records that a version of `name` from `source` was refused before loading (for example, its manifest
    /// does not parse), exactly as if validation had failed.
    pub fn reject(&self, name: &str, source: PluginSource, bytes: &[u8], error: &LoadError) {
        let sha256 = sha256_hex(bytes);
        tracing::warn!(plugin = name, %source, %sha256, %error, "plugin rejected; the previous version keeps serving");
        let rejection =
            Rejection { source, sha256: sha256.clone(), error: error.to_string(), at: rfc3339(SystemTime::now()) };
        self.state.write().slots.entry(name.to_string()).or_default().rejection = Some(rejection);
        let _ = self.events.send(PluginEvent::PluginRejected {
            name: name.to_string(),
            source,
            sha256,
            error: error.to_string(),
        });
    }

    /// Removes the `source` version of `name`; the next source (if any) becomes active. Returns whether there was
    /// such a version.
    pub fn remove(&self, name: &str, source: PluginSource) -> bool {
        let _changes = self.changes.lock();
        let (removed, now_active) = {
            let mut state = self.state.write();
            let Some(slot) = state.slots.get_mut(name) else { return false };
            let removed = slot.versions.remove(&source).is_some();
            if slot.rejection.as_ref().is_some_and(|r| r.source == source) {
                slot.rejection = None;
            }
            let now_active = slot.active().map(|v| v.source);
            if slot.is_empty() {
                state.slots.remove(name);
            }
            state.rebuild_lists();
            (removed, now_active)
        };
        if removed {
            tracing::info!(plugin = name, %source, ?now_active, "plugin source removed");
            let _ = self.events.send(PluginEvent::PluginRemoved { name: name.to_string(), source, now_active });
        }
        removed
    }

    /// The active version of `name`.
    pub fn active(&self, name: &str) -> Option<Arc<PluginVersion>> {
        self.state.read().slots.get(name).and_then(Slot::active).cloned()
    }

    /// The `source` version of `name`, active or shadowed.
    pub fn version(&self, name: &str, source: PluginSource) -> Option<Arc<PluginVersion>> {
        self.state.read().slots.get(name).and_then(|slot| slot.versions.get(&source)).cloned()
    }

    /// The active strategy called `name`.
    pub fn strategy(&self, name: &str) -> Result<Arc<PluginVersion>, UnknownStrategy> {
        self.active(name).filter(|v| v.kind == PluginKind::Strategy).ok_or_else(|| UnknownStrategy(name.to_string()))
    }

    /// The embedded `least_loaded`, which answers when a strategy fails.
    pub fn fallback_strategy(&self) -> &Arc<PluginVersion> {
        &self.fallback
    }

    /// Chooses among `candidates` (never empty) with the strategy called `strategy`, falling back to the
    /// embedded `least_loaded` and then to the native rule when it fails.
    pub fn select(
        &self,
        strategy: &str,
        ctx: CallContext,
        task: &TaskInfo,
        candidates: &[Candidate],
        details: &[CandidateDetails],
    ) -> Result<Selection, UnknownStrategy> {
        let plugin = self.strategy(strategy)?;
        Ok(select_with_fallback(&plugin, &self.fallback, ctx, task, candidates, details))
    }

    /// Sends this registry's decisions to `log` from now on (set once, by the server at start-up).
    pub fn log_decisions(&self, log: Arc<DecisionLog>) {
        let _ = self.decisions.set(log);
    }

    /// The decision log, when the server set one up.
    pub fn decision_log(&self) -> Option<&Arc<DecisionLog>> {
        self.decisions.get()
    }

    /// The strategy `name` as it answers the decision about `key` (a task id): the canary when `name` has one
    /// that takes this key, else the active version.
    pub fn strategy_for(&self, name: &str, key: &str) -> Result<(Arc<PluginVersion>, DecisionRole), UnknownStrategy> {
        let answering = self.answering(&self.strategy(name)?, key);
        Ok((answering.version, answering.role))
    }

    /// Which version of `active`'s name answers the decision about `key`, and the shadow that sees it too.
    fn answering(&self, active: &Arc<PluginVersion>, key: &str) -> Answering {
        let rollout = if self.any_rollout.load(Ordering::Relaxed) {
            self.rollout(&active.name).filter(|r| r.version.kind == active.kind)
        } else {
            None
        };
        match rollout {
            Some(r) if r.takes(key) => {
                Answering { version: r.version.clone(), role: DecisionRole::Canary, shadow: None }
            }
            Some(r) if r.is_shadow() => {
                Answering { version: active.clone(), role: DecisionRole::Active, shadow: Some(r) }
            }
            _ => Answering { version: active.clone(), role: DecisionRole::Active, shadow: None },
        }
    }

    /// The log, when it keeps the decisions about `key`.
    fn log_for(&self, key: &str) -> Option<Arc<DecisionLog>> {
        self.decisions.get().filter(|log| log.keeps(key)).cloned()
    }

    /// Chooses among `candidates` (never empty; `agent_ids` names them) with `version` as
    /// [`select_with_fallback`] does, then — off the caller's path — records the decision when the log keeps
    /// decisions about this task, and gives the same input to the name's shadow, if it has one.
    pub fn choose(&self, version: &Arc<PluginVersion>, role: DecisionRole, call: SelectionCall<'_>) -> Selection {
        let SelectionCall { stage, ctx, task, agent_ids, candidates, details } = call;
        let selection = select_with_fallback(version, &self.fallback, ctx, task, candidates, details);
        if !selection.called {
            return selection;
        }
        let log = self.log_for(&task.id);
        let shadow = if role == DecisionRole::Active { self.answering(version, &task.id).shadow } else { None };
        if log.is_none() && shadow.is_none() {
            return selection;
        }
        let subject = Subject { stage, at_ms: ctx.now_ms, task_id: Some(task.id.clone()), agent_id: None };
        let answer = DecisionAnswer {
            agent_id: agent_ids.get(selection.index).map(|id| id.to_string()),
            index: Some(selection.index as u32),
            error: selection.fallback_reason.clone(),
            ..DecisionAnswer::default()
        };
        let mut input = Some(selection_input(ctx.now_ms, ctx.seed, task, agent_ids, candidates, details));
        if let Some(log) = &log {
            let noted = Noted {
                answer: answer.clone(),
                answered_by: answered_by(&selection.answered_by),
                fuel: selection.fuel,
                duration_us: selection.duration_us,
            };
            // The input is copied only when a shadow needs it too: most names have none.
            let logged = if shadow.is_some() { input.clone() } else { input.take() };
            log.note(version, role, &subject, noted, logged);
        }
        if let Some(rollout) = shadow {
            let input = input.expect("kept for the shadow");
            let (task, candidates, details) = (task.clone(), candidates.to_vec(), details.to_vec());
            let tally_of = rollout.clone();
            self.shadows.run(&tally_of.tally, move || {
                let outcome = rollout.version.select_reporting(ctx, &task, &candidates, &details);
                let shadow_answer = match &outcome {
                    Ok((index, _)) => DecisionAnswer {
                        agent_id: input.candidates.get(*index).map(|c| c.agent_id.clone()),
                        index: Some(*index as u32),
                        ..DecisionAnswer::default()
                    },
                    Err(error) => DecisionAnswer { error: Some(error.to_string()), ..DecisionAnswer::default() },
                };
                rollout.compared(&subject, answer, shadow_answer.clone());
                if let Some(log) = &log {
                    let noted = Noted::of(&outcome, shadow_answer, "none");
                    log.note(&rollout.version, DecisionRole::Shadow, &subject, noted, Some(input));
                }
            });
        }
        selection
    }

    /// Runs `policy` (an active one, from [`policies`](Self::policies)) at one stage — or the name's canary, when
    /// it takes the decision about `key` (the task id; the agent id at registration) — and records the decision
    /// and feeds the shadow as [`choose`](Self::choose) does. `input_for` builds the input for a version from its
    /// own manifest (its labels, whether it reads the payload), so a canary or shadow sees what it asked for.
    /// Answers the version that answered and its decision, or why it could not answer (the caller applies that
    /// version's `on_error`).
    pub fn evaluate(
        &self,
        policy: &Arc<PluginVersion>,
        ctx: CallContext,
        key: &str,
        input_for: &dyn Fn(&PluginVersion) -> PolicyInput,
    ) -> (Arc<PluginVersion>, Result<Decision, CallError>) {
        let Answering { version, role, shadow } = self.answering(policy, key);
        let input = input_for(&version);
        let outcome = version.evaluate(ctx, &input);
        let log = self.log_for(key);
        if log.is_some() || shadow.is_some() {
            let (stage, task_id, agent_id) = match &input {
                PolicyInput::Submit(request) => (DecisionStage::Submit, Some(&request.task.id), None),
                PolicyInput::Register(agent) => (DecisionStage::Register, None, Some(&agent.agent_id)),
                PolicyInput::Dispatch(request) => {
                    (DecisionStage::Dispatch, Some(&request.task.id), Some(&request.agent.agent_id))
                }
            };
            let subject = Subject { stage, at_ms: ctx.now_ms, task_id: task_id.cloned(), agent_id: agent_id.cloned() };
            let answer = verdict_answer(&outcome);
            if let Some(log) = &log {
                log.note(&version, role, &subject, Noted::of(&outcome, answer.clone(), "on_error"), None);
            }
            if let Some(rollout) = shadow {
                let input = input_for(&rollout.version);
                let tally_of = rollout.clone();
                self.shadows.run(&tally_of.tally, move || {
                    let outcome = rollout.version.evaluate(ctx, &input);
                    let shadow_answer = verdict_answer(&outcome);
                    rollout.compared(&subject, answer, shadow_answer.clone());
                    if let Some(log) = &log {
                        let noted = Noted::of(&outcome, shadow_answer, "none");
                        log.note(&rollout.version, DecisionRole::Shadow, &subject, noted, None);
                    }
                });
            }
        }
        (version, outcome.map(|(decision, _)| decision))
    }

    /// Runs health probe `probe` (an active one, from [`probes`](Self::probes)) on `agent` — or its canary, when
    /// it takes this agent — and records the decision and feeds the shadow (on the shadow thread, so a slow shadow
    /// never delays a verdict) as [`choose`](Self::choose) does. Each version sees the agent's labels its own
    /// manifest lists.
    pub fn probe(
        &self,
        probe: &Arc<PluginVersion>,
        ctx: CallContext,
        agent: &Agent,
        observed: &Observations,
    ) -> Result<ProbeResult, CallError> {
        let key = agent.agent_id.as_str();
        let Answering { version, role, shadow } = self.answering(probe, key);
        let outcome = version.probe(ctx, &convert::agent_info(agent, &version.manifest.labels), observed);
        let log = self.log_for(key);
        if log.is_none() && shadow.is_none() {
            return outcome.map(|(result, _)| result);
        }
        let subject =
            Subject { stage: DecisionStage::Probe, at_ms: ctx.now_ms, task_id: None, agent_id: Some(key.to_string()) };
        let answer = health_answer(&outcome);
        if let Some(log) = &log {
            log.note(&version, role, &subject, Noted::of(&outcome, answer.clone(), "none"), None);
        }
        if let Some(rollout) = shadow {
            let (info, observed) = (convert::agent_info(agent, &rollout.version.manifest.labels), observed.clone());
            let tally_of = rollout.clone();
            self.shadows.run(&tally_of.tally, move || {
                let shadow_outcome = rollout.version.probe(ctx, &info, &observed);
                let shadow_answer = health_answer(&shadow_outcome);
                rollout.compared(&subject, answer, shadow_answer.clone());
                if let Some(log) = &log {
                    let noted = Noted::of(&shadow_outcome, shadow_answer, "none");
                    log.note(&rollout.version, DecisionRole::Shadow, &subject, noted, None);
                }
            });
        }
        outcome.map(|(result, _)| result)
    }

    /// The candidate version beside `name`'s active one, if any.
    pub fn rollout(&self, name: &str) -> Option<Arc<Rollout>> {
        self.state.read().slots.get(name).and_then(|slot| slot.rollout.clone())
    }

    /// The shadow comparison of `name`, if its candidate is a shadow.
    pub fn shadow_figures(&self, name: &str) -> Option<ShadowFigures> {
        self.rollout(name).filter(|r| r.is_shadow()).map(|r| r.tally.figures())
    }

    /// Loads and validates `bytes` as the candidate of `name` in `mode`, beside its active version (which must
    /// exist and be of the same kind). A candidate already there is replaced; its figures start again.
    pub fn install_rollout(
        &self,
        name: &str,
        source: PluginSource,
        bytes: &[u8],
        manifest: Manifest,
        mode: RolloutMode,
    ) -> Result<Arc<PluginVersion>, LoadError> {
        let _changes = self.changes.lock();
        let totals = self.totals.lock().entry(name.to_string()).or_default().clone();
        let loaded = loader::load_counted(&self.runtime, name, source, bytes, manifest, totals)
            .and_then(|version| self.active_beside(name, &version).map(|active| (version, active)));
        match loaded {
            Ok((version, active)) => {
                // A canary's calls are decisions of the name; a shadow's are not (until it is promoted).
                version.counts_in_totals.store(mode != RolloutMode::Shadow, Ordering::Relaxed);
                let version = Arc::new(version);
                let rollout = Arc::new(Rollout::new(version.clone(), mode, &active));
                self.state.write().slots.entry(name.to_string()).or_default().rollout = Some(rollout);
                self.any_rollout.store(true, Ordering::Relaxed);
                tracing::info!(plugin = name, mode = mode.name(), sha256 = %version.sha256, "candidate version installed");
                Ok(version)
            }
            Err(error) => {
                self.reject(name, source, bytes, &error);
                Err(error)
            }
        }
    }

    /// Validates `bytes` as a candidate of `name` without installing it: it loads, and is of the kind of the
    /// name's active version. A failure is recorded as a rejection.
    pub fn validate_rollout(&self, name: &str, bytes: &[u8], manifest: Manifest) -> Result<(), LoadError> {
        let checked = loader::load(&self.runtime, name, PluginSource::Upload, bytes, manifest)
            .and_then(|version| self.active_beside(name, &version).map(|_| ()));
        if let Err(error) = &checked {
            self.reject(name, PluginSource::Upload, bytes, error);
        }
        checked
    }

    /// The active version a candidate `version` of `name` would stand beside: one must exist, of the same kind.
    fn active_beside(&self, name: &str, version: &PluginVersion) -> Result<Arc<PluginVersion>, LoadError> {
        match self.active(name) {
            None => Err(LoadError::NoActiveVersion(name.to_string())),
            Some(active) if active.kind != version.kind => Err(LoadError::KindConflict {
                name: name.to_string(),
                existing: active.kind,
                source_of_existing: active.source,
                offered: version.kind,
            }),
            Some(active) => Ok(active),
        }
    }

    /// Makes `name`'s fleet candidate its upload version in one swap, if the candidate is the version `sha256`
    /// with `manifest`: a promote without compiling again, its figures kept. Whether it did.
    pub fn promote_rollout(&self, name: &str, sha256: &str, manifest: &Manifest) -> bool {
        let _changes = self.changes.lock();
        let promoted = {
            let mut state = self.state.write();
            let Some(slot) = state.slots.get_mut(name) else { return false };
            let Some(rollout) = slot.rollout.take_if(|r| {
                r.version.source == PluginSource::Upload
                    && r.version.sha256 == sha256
                    && &r.version.manifest == manifest
            }) else {
                return false;
            };
            rollout.version.counts_in_totals.store(true, Ordering::Relaxed);
            slot.versions.insert(PluginSource::Upload, rollout.version.clone());
            let active = slot.active().is_some_and(|a| Arc::ptr_eq(a, &rollout.version));
            state.rebuild_lists();
            let any = state.slots.values().any(|slot| slot.rollout.is_some());
            self.any_rollout.store(any, Ordering::Relaxed);
            (rollout.version.clone(), active)
        };
        let (version, active) = promoted;
        tracing::info!(plugin = name, sha256, active, "candidate promoted");
        let _ = self.events.send(PluginEvent::PluginLoaded {
            name: name.to_string(),
            kind: version.kind,
            source: PluginSource::Upload,
            sha256: version.sha256.clone(),
            active,
        });
        true
    }

    /// Every canary with its name and the name's active version.
    pub fn canaries(&self) -> Vec<(String, Arc<Rollout>, Arc<PluginVersion>)> {
        if !self.any_rollout.load(Ordering::Relaxed) {
            return Vec::new();
        }
        let state = self.state.read();
        state
            .slots
            .iter()
            .filter_map(|(name, slot)| {
                let rollout = slot.rollout.as_ref().filter(|r| !r.is_shadow())?;
                Some((name.clone(), rollout.clone(), slot.active()?.clone()))
            })
            .collect()
    }

    /// Removes `name`'s candidate if it came from `source` (a file's shadow and the fleet's candidate are removed
    /// by their own owners only). Whether there was one.
    pub fn remove_rollout(&self, name: &str, source: PluginSource) -> bool {
        let _changes = self.changes.lock();
        let mut state = self.state.write();
        let Some(slot) = state.slots.get_mut(name) else { return false };
        let matches = slot.rollout.as_ref().is_some_and(|r| r.version.source == source);
        if matches {
            slot.rollout = None;
            tracing::info!(plugin = name, "candidate version removed");
        }
        if slot.is_empty() {
            state.slots.remove(name);
        }
        let any = state.slots.values().any(|slot| slot.rollout.is_some());
        self.any_rollout.store(any, Ordering::Relaxed);
        matches
    }

    /// Active policies in evaluation order (manifest `order`, then name).
    pub fn policies(&self) -> Arc<[Arc<PluginVersion>]> {
        self.state.read().policies.clone()
    }

    /// Active health probes, by name.
    pub fn probes(&self) -> Arc<[Arc<PluginVersion>]> {
        self.state.read().probes.clone()
    }

    /// Every plugin name with its versions, by name.
    pub fn list(&self) -> Vec<PluginInfo> {
        let state = self.state.read();
        state.slots.iter().map(|(name, slot)| self.info_of(name, slot)).collect()
    }

    /// One plugin name with its versions.
    pub fn info(&self, name: &str) -> Option<PluginInfo> {
        let state = self.state.read();
        state.slots.get(name).map(|slot| self.info_of(name, slot))
    }

    /// What this server says of a name it holds nothing of.
    pub fn absent(&self, name: &str) -> PluginInfo {
        PluginInfo {
            name: name.to_string(),
            status: PluginStatus::Absent,
            active: None,
            shadowed: Vec::new(),
            last_rejection: None,
            rollout: None,
            totals: self.totals_of(name),
            active_version: None,
            fleet: None,
            server_id: self.server_id.clone(),
        }
    }

    fn totals_of(&self, name: &str) -> StatsSnapshot {
        self.totals.lock().get(name).map(|totals| totals.snapshot()).unwrap_or_default()
    }

    fn info_of(&self, name: &str, slot: &Slot) -> PluginInfo {
        let top = slot.top();
        let status = match (slot.disabled, top) {
            (true, _) => PluginStatus::Disabled,
            (false, Some(_)) => PluginStatus::Active,
            (false, None) => PluginStatus::Rejected,
        };
        PluginInfo {
            name: name.to_string(),
            status,
            active: top.map(|v| version_info(v)),
            shadowed: slot.versions.values().rev().skip(1).map(|v| version_info(v)).collect(),
            // A successful install clears the rejection, so one still here is newer than every loaded version.
            last_rejection: slot.rejection.clone(),
            rollout: slot.rollout.as_ref().map(|rollout| rollout_info(rollout, top.map(|v| &**v))),
            totals: self.totals_of(name),
            active_version: slot.fleet_version,
            fleet: None,
            server_id: self.server_id.clone(),
        }
    }
}

/// The version answering one decision: the active one or its canary, and the shadow that sees the decision too.
struct Answering {
    version: Arc<PluginVersion>,
    role: DecisionRole,
    shadow: Option<Arc<Rollout>>,
}

/// A policy's answer as the log and the shadow comparison keep it.
fn verdict_answer(outcome: &Result<(Decision, CallReport), CallError>) -> DecisionAnswer {
    match outcome {
        Ok((decision, _)) => DecisionAnswer {
            verdict: Some(decision_name(decision).to_string()),
            reason: match decision {
                Decision::Deny(reason) | Decision::Warn(reason) => Some(reason.clone()),
                _ => None,
            },
            ..DecisionAnswer::default()
        },
        Err(error) => DecisionAnswer { error: Some(error.to_string()), ..DecisionAnswer::default() },
    }
}

/// A probe's answer as the log and the shadow comparison keep it.
fn health_answer(outcome: &Result<(ProbeResult, CallReport), CallError>) -> DecisionAnswer {
    match outcome {
        Ok((result, _)) => DecisionAnswer {
            health: Some(result.status.into()),
            reason: Some(result.message.clone()),
            ..DecisionAnswer::default()
        },
        Err(error) => DecisionAnswer { error: Some(error.to_string()), ..DecisionAnswer::default() },
    }
}

fn rollout_info(rollout: &Rollout, active: Option<&PluginVersion>) -> RolloutInfo {
    let active_since = active.map(|active| rollout.active_since(active)).unwrap_or_default();
    RolloutInfo {
        mode: rollout.mode,
        since: rollout.since(),
        candidate: version_info(&rollout.version),
        active_since,
        shadow: rollout.is_shadow().then(|| {
            let mut figures = rollout.tally.figures();
            figures.samples.clear();
            figures
        }),
    }
}

fn version_info(version: &PluginVersion) -> VersionInfo {
    VersionInfo {
        kind: version.kind,
        source: version.source,
        sha256: version.sha256.clone(),
        size: version.size,
        loaded_at: rfc3339(version.loaded_at),
        limits: version.limits,
        order: version.manifest.order(),
        on_error: version.manifest.on_error,
        labels: version.manifest.labels.clone(),
        imports: version.imports.clone(),
        needs_details: version.manifest.needs_details,
        needs_payload: version.manifest.needs_payload,
        config: serde_json::to_value(&version.manifest.config).unwrap_or_default(),
        stats: version.stats.snapshot(),
        log: version.log.lines(),
    }
}
