//! Strategy plugins: choose which waiting agent gets a task. Called on every routed task and every
//! `select_agent`, so this is the hot path of the plugin system.
//!
//! Failure chain (DESIGN §5): the named plugin → the embedded `least_loaded` → [`fewest_in_flight`], the only
//! native selection code. Each step down is counted as a fallback on the plugin that failed.

use wasmtime::Store;
use wasmtime::component::InstancePre;

use super::bindings::strategy::{Strategy, StrategyPre};
use super::bindings::{CallContext, Candidate, CandidateDetails, HealthStatus, Priority, TaskInfo};
use super::instance::{CallReport, Sandbox, World};
use super::sandbox::HostState;
use super::{CallError, PluginVersion};

impl World for Strategy {
    type Pre = StrategyPre<HostState>;

    fn pre(pre: InstancePre<HostState>) -> wasmtime::Result<Self::Pre> {
        StrategyPre::new(pre)
    }

    fn instantiate(pre: &Self::Pre, store: &mut Store<HostState>) -> wasmtime::Result<Self> {
        pre.instantiate(store)
    }

    fn init(&self, store: &mut Store<HostState>, config: &str) -> wasmtime::Result<Result<(), String>> {
        self.aragora_control_plane_selector().call_init(store, config)
    }
}

/// A loaded strategy version.
pub struct StrategyPlugin {
    pub(crate) sandbox: Sandbox<Strategy>,
}

impl StrategyPlugin {
    /// Asks the plugin to choose among `candidates`. A guest error and an out-of-range index are failures.
    pub fn select(
        &self,
        ctx: CallContext,
        task: &TaskInfo,
        candidates: &[Candidate],
        details: &[CandidateDetails],
    ) -> Result<(u32, CallReport), CallError> {
        self.sandbox.call(ctx.now_ms, ctx.seed, |bindings, store| {
            let answer =
                bindings.aragora_control_plane_selector().call_select(store, ctx, task, candidates, details)?;
            Ok(match answer {
                Ok(index) if (index as usize) < candidates.len() => Ok(index),
                Ok(index) => Err(CallError::BadIndex { index, candidates: candidates.len() }),
                Err(message) => Err(CallError::Guest(message)),
            })
        })
    }

    /// The validation call made before a version is activated: three candidates that differ in every counter.
    pub(crate) fn trial(&self) -> Result<(), CallError> {
        let task = trial_task();
        let candidates: Vec<Candidate> = (0..3u32)
            .map(|i| Candidate {
                in_flight: 2 - i,
                max_concurrent: 4,
                completed: u64::from(i) * 10,
                failed: u64::from(i),
                avg_latency_ms: 100 * (i + 1),
                heartbeat_age_ms: 1_000,
                since_assigned_ms: if i == 0 { None } else { Some(u64::from(i) * 1_000) },
                health: HealthStatus::Healthy,
            })
            .collect();
        let details: Vec<CandidateDetails> = (0..3)
            .map(|i| CandidateDetails {
                agent_id: format!("trial-agent-{i}"),
                model: "trial-model".into(),
                provider: "trial-provider".into(),
                labels: Vec::new(),
            })
            .collect();
        match self.select(CallContext { now_ms: 1_700_000_000_000, seed: 7 }, &task, &candidates, &details) {
            // A guest that declines the synthetic input is not broken; a trap or a bad index is.
            Ok(_) | Err(CallError::Guest(_)) => Ok(()),
            Err(error) => Err(error),
        }
    }
}

pub(crate) fn trial_task() -> TaskInfo {
    TaskInfo {
        id: "task_0190a1b2c3d4e5f60718293a4b5c6d7e".into(),
        task_type: "trial".into(),
        priority: Priority::Normal,
        required_capabilities: vec!["code".into()],
        labels: Vec::new(),
    }
}

/// Who answered a selection.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Answerer {
    /// The requested plugin (or the only candidate, without a call).
    Plugin,
    /// The embedded `least_loaded`, after the requested plugin failed.
    EmbeddedLeastLoaded,
    /// The native rule, after the embedded plugin failed too.
    Native,
}

/// The outcome of [`select_with_fallback`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct Selection {
    /// Index into the candidates.
    pub index: usize,
    /// Who chose it.
    pub answered_by: Answerer,
    /// sha256 of the version that answered, when a plugin did.
    pub sha256: Option<String>,
    /// Why the requested plugin did not answer, when it did not.
    pub fallback_reason: Option<String>,
    /// Whether the requested plugin was called (a single candidate is chosen without a call).
    pub called: bool,
    /// Fuel the requested plugin's call burned.
    pub fuel: u64,
    /// Wall time of the selection, fallbacks included, µs.
    pub duration_us: u64,
}

/// Chooses among `candidates` (never empty) with `plugin`, falling back along the chain of DESIGN §5. A single
/// candidate is chosen without a call. `details` is passed to plugins that asked for it (see
/// [`PluginVersion::wants_details`]); callers may leave it empty otherwise.
pub fn select_with_fallback(
    plugin: &PluginVersion,
    embedded: &PluginVersion,
    ctx: CallContext,
    task: &TaskInfo,
    candidates: &[Candidate],
    details: &[CandidateDetails],
) -> Selection {
    assert!(!candidates.is_empty(), "select_with_fallback needs at least one candidate");
    let answer = |index, answered_by, sha256, fallback_reason, fuel, started: Option<std::time::Instant>| Selection {
        index,
        answered_by,
        sha256,
        fallback_reason,
        called: started.is_some(),
        fuel,
        duration_us: started.map_or(0, |at| at.elapsed().as_micros() as u64),
    };
    if candidates.len() == 1 {
        return answer(0, Answerer::Plugin, None, None, 0, None);
    }
    let started = Some(std::time::Instant::now());
    // When the requested strategy is the embedded one, asking it again would only fail (and count) twice.
    let embedded_failed = std::ptr::eq(plugin, embedded);
    let reason = match plugin.select_reporting(ctx, task, candidates, details) {
        Ok((index, report)) => {
            return answer(index, Answerer::Plugin, Some(plugin.sha256.clone()), None, report.fuel_used, started);
        }
        Err(error) => error.to_string(),
    };
    plugin.record_fallback();
    if !embedded_failed && let Ok(index) = embedded.select(ctx, task, candidates, &[]) {
        let sha256 = Some(embedded.sha256.clone());
        return answer(index, Answerer::EmbeddedLeastLoaded, sha256, Some(reason), 0, started);
    }
    if !embedded_failed {
        embedded.record_fallback();
    }
    answer(fewest_in_flight(candidates), Answerer::Native, None, Some(reason), 0, started)
}

/// The last resort when no plugin can answer: fewest in flight, first index among equals.
pub fn fewest_in_flight(candidates: &[Candidate]) -> usize {
    candidates.iter().enumerate().min_by_key(|(_, c)| c.in_flight).map(|(index, _)| index).unwrap_or(0)
}
