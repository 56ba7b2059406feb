//! The plugin side of the decision log (decision 0022): which decisions are kept (`DECISION_SAMPLE`, chosen by
//! task or agent id so a task's decisions are all kept or none), and the hand-off of each kept record to the
//! writer that stores them. The hand-off is a `try_send` into a bounded queue: a decision never waits for the
//! store, and a full queue drops the record and counts it (`dropped` in `GET /decisions`' answer).
//!
//! The records are built here from the plugin call's own inputs, so what the log says a plugin saw is what it saw.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use super::bindings::{Candidate, CandidateDetails, HealthStatus, TaskInfo};
use super::instance::CallReport;
use super::{Answerer, CallError, PluginVersion};
use crate::model::{
    DecisionAnswer, DecisionCandidate, DecisionDetails, DecisionRecord, DecisionRole, DecisionStage, DecisionTask,
    SelectionInput,
};

/// Records waiting for the writer at most; past it records are dropped and counted.
pub const QUEUE_CAPACITY: usize = 16_384;

/// Where decisions go: sampled, then queued for the store's writer.
pub struct DecisionLog {
    /// Keep a decision when its key hashes below this (`u64::MAX`: keep all; 0: none).
    threshold: u64,
    queue: Option<mpsc::Sender<DecisionRecord>>,
    dropped: AtomicU64,
    server_id: String,
}

impl DecisionLog {
    /// A log keeping the share `sample` (0 to 1) of decisions, and the receiver its writer reads.
    pub fn new(sample: f64, server_id: impl Into<String>) -> (DecisionLog, mpsc::Receiver<DecisionRecord>) {
        let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let sample = if sample.is_finite() { sample.clamp(0.0, 1.0) } else { 0.0 };
        let threshold = if sample >= 1.0 { u64::MAX } else { (sample * u64::MAX as f64) as u64 };
        let log =
            DecisionLog { threshold, queue: Some(queue), dropped: AtomicU64::new(0), server_id: server_id.into() };
        (log, receiver)
    }

    /// A log that keeps nothing (a registry used outside a server: the CLI, tests of plugins alone).
    pub fn off() -> DecisionLog {
        DecisionLog { threshold: 0, queue: None, dropped: AtomicU64::new(0), server_id: String::new() }
    }

    /// Whether the decisions about `key` (a task id, else an agent id) are kept.
    pub fn keeps(&self, key: &str) -> bool {
        self.queue.is_some() && (self.threshold == u64::MAX || (self.threshold > 0 && key_hash(key) < self.threshold))
    }

    /// Records dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The server id records are stamped with.
    pub fn server_id(&self) -> &str {
        &self.server_id
    }

    /// Queues `record` for the store (the caller asked [`keeps`](Self::keeps) first).
    pub fn push(&self, record: DecisionRecord) {
        if let Some(queue) = &self.queue
            && queue.try_send(record).is_err()
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queues the record of `version`'s decision about `subject` (the caller asked [`keeps`](Self::keeps)).
    pub(crate) fn note(
        &self,
        version: &PluginVersion,
        role: DecisionRole,
        subject: &Subject,
        noted: Noted,
        input: Option<SelectionInput>,
    ) {
        self.push(DecisionRecord {
            id: String::new(),
            at_ms: subject.at_ms,
            server_id: self.server_id.clone(),
            stage: subject.stage,
            task_id: subject.task_id.clone(),
            agent_id: subject.agent_id.clone(),
            plugin: version.name.clone(),
            version: version.sha256.clone(),
            source: version.source.to_string(),
            role,
            input,
            answer: noted.answer,
            answered_by: noted.answered_by.into(),
            fuel: noted.fuel,
            duration_us: noted.duration_us,
        });
    }
}

/// What one decision was about: shared by the answering version's record and its shadow's.
#[derive(Clone, Debug)]
pub struct Subject {
    /// Where in the engine.
    pub stage: DecisionStage,
    /// The call's clock (store time).
    pub at_ms: u64,
    /// The task concerned.
    pub task_id: Option<String>,
    /// The agent concerned.
    pub agent_id: Option<String>,
}

/// What a version answered, and what the call cost.
pub struct Noted {
    /// The answer that took effect (or the shadow's).
    pub answer: DecisionAnswer,
    /// `plugin`, or who answered instead.
    pub answered_by: &'static str,
    /// Fuel burned.
    pub fuel: u64,
    /// Wall time, µs.
    pub duration_us: u64,
}

impl Noted {
    /// `answer`, from a plain call's outcome: answered by the plugin with its cost, or by `failed_by` when it failed.
    pub fn of<T>(
        outcome: &Result<(T, CallReport), CallError>,
        answer: DecisionAnswer,
        failed_by: &'static str,
    ) -> Noted {
        match outcome {
            Ok((_, report)) => Noted {
                answer,
                answered_by: "plugin",
                fuel: report.fuel_used,
                duration_us: report.wall_time.as_micros() as u64,
            },
            Err(_) => Noted { answer, answered_by: failed_by, fuel: 0, duration_us: 0 },
        }
    }
}

/// FNV-1a over the key, then a finaliser so ids that share a prefix spread over the whole range.
pub fn key_hash(key: &str) -> u64 {
    let mut hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

/// The percentage bucket (0 to 99) of `key`: a canary at N % takes the keys whose bucket is below N, on every
/// server alike.
pub fn bucket_of(key: &str) -> u8 {
    (key_hash(key) % 100) as u8
}

/// What a strategy call received, as the log keeps it.
pub fn selection_input(
    now_ms: u64,
    seed: u64,
    task: &TaskInfo,
    agent_ids: &[&str],
    candidates: &[Candidate],
    details: &[CandidateDetails],
) -> SelectionInput {
    SelectionInput {
        now_ms,
        seed,
        task: DecisionTask {
            id: task.id.clone(),
            task_type: task.task_type.clone(),
            priority: task.priority.into(),
            required_capabilities: task.required_capabilities.clone(),
            labels: task.labels.clone(),
        },
        candidates: candidates
            .iter()
            .zip(agent_ids)
            .enumerate()
            .map(|(i, (c, agent_id))| DecisionCandidate {
                agent_id: agent_id.to_string(),
                in_flight: c.in_flight,
                max_concurrent: c.max_concurrent,
                completed: c.completed,
                failed: c.failed,
                avg_latency_ms: c.avg_latency_ms,
                heartbeat_age_ms: c.heartbeat_age_ms,
                since_assigned_ms: c.since_assigned_ms,
                health: c.health.into(),
                details: details.get(i).map(|d| {
                    Box::new(DecisionDetails {
                        model: d.model.clone(),
                        provider: d.provider.clone(),
                        labels: d.labels.clone(),
                    })
                }),
            })
            .collect(),
    }
}

/// The strategy call a recorded input describes: (task, candidates, details — empty when none were recorded).
pub fn call_of(input: &SelectionInput) -> (TaskInfo, Vec<Candidate>, Vec<CandidateDetails>) {
    let task = TaskInfo {
        id: input.task.id.clone(),
        task_type: input.task.task_type.clone(),
        priority: input.task.priority.into(),
        required_capabilities: input.task.required_capabilities.clone(),
        labels: input.task.labels.clone(),
    };
    let candidates = input
        .candidates
        .iter()
        .map(|c| Candidate {
            in_flight: c.in_flight,
            max_concurrent: c.max_concurrent,
            completed: c.completed,
            failed: c.failed,
            avg_latency_ms: c.avg_latency_ms,
            heartbeat_age_ms: c.heartbeat_age_ms,
            since_assigned_ms: c.since_assigned_ms,
            health: HealthStatus::from(c.health),
        })
        .collect();
    let details = if input.candidates.iter().all(|c| c.details.is_some()) {
        input
            .candidates
            .iter()
            .filter_map(|c| {
                c.details.as_ref().map(|d| CandidateDetails {
                    agent_id: c.agent_id.clone(),
                    model: d.model.clone(),
                    provider: d.provider.clone(),
                    labels: d.labels.clone(),
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    (task, candidates, details)
}

/// How the log names who answered a selection.
pub fn answered_by(answerer: &Answerer) -> &'static str {
    match answerer {
        Answerer::Plugin => "plugin",
        Answerer::EmbeddedLeastLoaded => "embedded_least_loaded",
        Answerer::Native => "native",
    }
}
