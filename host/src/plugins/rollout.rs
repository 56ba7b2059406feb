//! A candidate version beside a name's active one (decision 0022): a **shadow** sees the same inputs on live traffic
//! and its answers have no effect — the host counts where it agrees and keeps samples of where it does not — or a
//! **canary** answers a share of decisions, chosen by task id (agent id for probes and register policies) so a
//! task's decisions are the same version's on every server.
//!
//! Shadow calls run after the active answer took effect, on one thread of their own fed by a bounded queue: a full
//! queue drops the comparison and counts it, so a slow shadow never slows the fleet.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use parking_lot::Mutex;
use serde::Serialize;

use super::PluginVersion;
use super::decision_log::{Subject, bucket_of};
use super::loader::StatsSnapshot;
pub use crate::model::RolloutMode;
use crate::model::{DecisionAnswer, DecisionStage, rfc3339, rfc3339_ms};

/// Comparisons waiting for the shadow thread at most.
pub const SHADOW_QUEUE: usize = 1_024;
/// Disagreements kept as samples per candidate.
pub const SHADOW_SAMPLES: usize = 50;

/// One disagreement between the active version and the shadow.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ShadowSample {
    /// When (RFC 3339).
    pub at: String,
    /// Where in the engine.
    pub stage: DecisionStage,
    /// The task concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// The agent concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// What took effect.
    pub active: DecisionAnswer,
    /// What the shadow answered.
    pub shadow: DecisionAnswer,
}

/// The shadow's comparison counters.
#[derive(Default)]
pub struct ShadowTally {
    compared: AtomicU64,
    agreed: AtomicU64,
    different_agent: AtomicU64,
    different_verdict: AtomicU64,
    errors: AtomicU64,
    dropped: AtomicU64,
    samples: Mutex<VecDeque<ShadowSample>>,
}

/// [`ShadowTally`] as `GET /plugins/{name}/shadow` shows it.
#[derive(Clone, Debug, Default, Serialize, utoipa::ToSchema)]
pub struct ShadowFigures {
    /// Decisions the shadow answered beside the active version.
    pub compared: u64,
    /// Of those, the same answer.
    pub agreed: u64,
    /// Strategies: another agent chosen.
    pub different_agent: u64,
    /// Policies and probes: another verdict or health.
    pub different_verdict: u64,
    /// The shadow failed (trap, fuel, deadline, bad answer).
    pub errors: u64,
    /// Comparisons dropped because the shadow thread fell behind.
    pub dropped: u64,
    /// The latest disagreements, newest last.
    pub samples: Vec<ShadowSample>,
}

impl ShadowTally {
    /// Counts one comparison (`shadow.error` set: the shadow failed).
    pub fn count(&self, sample: ShadowSample) {
        self.compared.fetch_add(1, Ordering::Relaxed);
        let (active, shadow) = (&sample.active, &sample.shadow);
        let counter = if shadow.error.is_some() {
            &self.errors
        } else if active.agent_id != shadow.agent_id {
            &self.different_agent
        } else if active.verdict != shadow.verdict || active.health != shadow.health {
            &self.different_verdict
        } else {
            self.agreed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut samples = self.samples.lock();
        if samples.len() >= SHADOW_SAMPLES {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// The counters now.
    pub fn figures(&self) -> ShadowFigures {
        ShadowFigures {
            compared: self.compared.load(Ordering::Relaxed),
            agreed: self.agreed.load(Ordering::Relaxed),
            different_agent: self.different_agent.load(Ordering::Relaxed),
            different_verdict: self.different_verdict.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            samples: self.samples.lock().iter().cloned().collect(),
        }
    }
}

/// A candidate version of a name, with its mode and what it has done so far.
pub struct Rollout {
    /// The candidate.
    pub version: Arc<PluginVersion>,
    /// Shadow or canary.
    pub mode: RolloutMode,
    /// When it was installed.
    pub since: SystemTime,
    /// The active version's counters when the candidate was installed: a canary is judged against what the active
    /// version did over the same time.
    pub baseline: StatsSnapshot,
    /// Which version those counters are of (a later upload replaces the active version, whose counters start anew).
    pub baseline_sha256: String,
    /// Shadow comparisons.
    pub tally: ShadowTally,
}

impl Rollout {
    /// A rollout of `version` beside `active` (whose counters now are the baseline).
    pub fn new(version: Arc<PluginVersion>, mode: RolloutMode, active: &PluginVersion) -> Rollout {
        Rollout {
            version,
            mode,
            since: SystemTime::now(),
            baseline: active.stats.snapshot(),
            baseline_sha256: active.sha256.clone(),
            tally: ShadowTally::default(),
        }
    }

    /// Whether a canary answers the decision about `key`.
    pub fn takes(&self, key: &str) -> bool {
        match self.mode {
            RolloutMode::Canary { percent } => bucket_of(key) < percent,
            RolloutMode::Shadow => false,
        }
    }

    /// Counts one comparison of the active answer with this shadow's on the decision about `subject`.
    pub fn compared(&self, subject: &Subject, active: DecisionAnswer, shadow: DecisionAnswer) {
        self.tally.count(ShadowSample {
            at: rfc3339_ms(subject.at_ms),
            stage: subject.stage,
            task_id: subject.task_id.clone(),
            agent_id: subject.agent_id.clone(),
            active,
            shadow,
        });
    }

    /// Whether this is a shadow.
    pub fn is_shadow(&self) -> bool {
        self.mode == RolloutMode::Shadow
    }

    /// When it was installed (RFC 3339).
    pub fn since(&self) -> String {
        rfc3339(self.since)
    }

    /// The active version's counters since this candidate was installed (all of them, when the active version was
    /// replaced since).
    pub fn active_since(&self, active: &PluginVersion) -> StatsSnapshot {
        let now = active.stats.snapshot();
        if active.sha256 != self.baseline_sha256 {
            return now;
        }
        StatsSnapshot {
            calls: now.calls.saturating_sub(self.baseline.calls),
            failures: now.failures.saturating_sub(self.baseline.failures),
            fallbacks: now.fallbacks.saturating_sub(self.baseline.fallbacks),
            latency_us_mean: now.latency_us_mean,
            latency_us_max: now.latency_us_max,
            last_error: now.last_error.clone(),
        }
    }

    /// Why a canary should be rolled back, if it should: over at least `min_calls` of its own calls, its share of
    /// failed or fallen-back answers exceeds the active version's over the same time by more than `margin`.
    pub fn excess(&self, active: &PluginVersion, min_calls: u64, margin: f64) -> Option<String> {
        if !matches!(self.mode, RolloutMode::Canary { .. }) {
            return None;
        }
        let candidate = self.version.stats.snapshot();
        if candidate.calls < min_calls.max(1) {
            return None;
        }
        let rate = |s: &StatsSnapshot| {
            if s.calls == 0 { 0.0 } else { s.failures.max(s.fallbacks) as f64 / s.calls as f64 }
        };
        let active = self.active_since(active);
        let (new, old) = (rate(&candidate), rate(&active));
        (new > old + margin).then(|| {
            format!(
                "the canary failed or fell back on {:.1} % of {} calls, the active version on {:.1} % of {}: over the \
                 {:.1}-point margin",
                new * 100.0,
                candidate.calls,
                old * 100.0,
                active.calls,
                margin * 100.0
            )
        })
    }
}

type ShadowJob = Box<dyn FnOnce() + Send>;

/// The thread shadow calls run on, started with the first shadow.
#[derive(Default)]
pub struct ShadowRunner {
    queue: OnceLock<SyncSender<ShadowJob>>,
}

impl ShadowRunner {
    /// Runs `job` on the shadow thread, or counts it as dropped on `tally` when the thread is behind.
    pub fn run(&self, tally: &ShadowTally, job: impl FnOnce() + Send + 'static) {
        let queue = self.queue.get_or_init(|| {
            let (sender, receiver) = std::sync::mpsc::sync_channel::<ShadowJob>(SHADOW_QUEUE);
            std::thread::Builder::new()
                .name("plugin-shadow".into())
                .spawn(move || {
                    while let Ok(job) = receiver.recv() {
                        // A panicking job must not end the thread: every later shadow call would be dropped.
                        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                            tracing::error!("a shadow comparison panicked; the shadow thread goes on");
                        }
                    }
                })
                .expect("spawn the shadow thread");
            sender
        });
        match queue.try_send(Box::new(job)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                tally.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
