//! The decision log's records (issue "Safe rule changes", decision 0022): one per plugin decision — which plugin
//! and version answered what, from which inputs, how long it took — so an operator can say afterwards why a task
//! went where it went, and a candidate version can be replayed over what the live one saw.
//!
//! A strategy's decision keeps its whole input (the numbers each candidate had, the call's seed and clock), so a
//! replay is exact; a policy's or a probe's keeps who it was about and its verdict.

use serde::{Deserialize, Serialize};

use super::{HealthState, Priority};

/// Where in the engine a plugin was asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DecisionStage {
    /// A submit policy judged a task.
    Submit,
    /// A register policy judged an agent.
    Register,
    /// A dispatch policy judged an agent for a task.
    Dispatch,
    /// A strategy chose the waiting claim a task goes to.
    Route,
    /// A strategy answered `POST /agents/select`.
    Select,
    /// A health probe judged an agent.
    Probe,
}

impl DecisionStage {
    /// The snake_case name, as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionStage::Submit => "submit",
            DecisionStage::Register => "register",
            DecisionStage::Dispatch => "dispatch",
            DecisionStage::Route => "route",
            DecisionStage::Select => "select",
            DecisionStage::Probe => "probe",
        }
    }

    /// The stage named `name`.
    pub fn parse(name: &str) -> Option<DecisionStage> {
        [Self::Submit, Self::Register, Self::Dispatch, Self::Route, Self::Select, Self::Probe]
            .into_iter()
            .find(|stage| stage.as_str() == name)
    }
}

/// Which version of a plugin name answered: the one that serves, a canary taking a share of decisions, or a shadow
/// whose answer had no effect.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DecisionRole {
    /// The active version.
    #[default]
    Active,
    /// The canary version (its answer took effect).
    Canary,
    /// The shadow version (its answer had no effect).
    Shadow,
}

/// A task as a strategy saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DecisionTask {
    /// The task id.
    pub id: String,
    /// Its type.
    pub task_type: String,
    /// Its priority.
    pub priority: Priority,
    /// The capabilities it requires.
    pub required_capabilities: Vec<String>,
    /// The metadata entries the manifest listed, as (key, value).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<(String, String)>,
}

/// One candidate as a strategy saw it: the agent and the numbers of the WIT `candidate` record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DecisionCandidate {
    /// The agent.
    pub agent_id: String,
    /// Leases it held.
    pub in_flight: u32,
    /// Its `max_concurrent_tasks`.
    pub max_concurrent: u32,
    /// Tasks it had completed.
    pub completed: u64,
    /// Tasks it had failed.
    pub failed: u64,
    /// Its average latency, ms.
    pub avg_latency_ms: u32,
    /// Age of its last heartbeat, ms.
    pub heartbeat_age_ms: u64,
    /// Time since it was last given a task, ms (`null`: never).
    pub since_assigned_ms: Option<u64>,
    /// Its health.
    pub health: HealthState,
    /// Model, provider and labels, for strategies that asked for details (`needs_details` or `labels`).
    // Boxed: most strategies ask for none, and a kept decision holds up to 64 candidates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Box<DecisionDetails>>,
}

/// A candidate's details as a strategy saw them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DecisionDetails {
    /// The agent's model.
    pub model: String,
    /// The model's provider.
    pub provider: String,
    /// The agent's metadata entries the manifest listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<(String, String)>,
}

/// Everything a strategy call received, so the same call can be made again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SelectionInput {
    /// The call's clock (`call-context.now-ms`).
    pub now_ms: u64,
    /// The call's seed (`call-context.seed`).
    pub seed: u64,
    /// The task.
    pub task: DecisionTask,
    /// The candidates, in the order the strategy saw them.
    pub candidates: Vec<DecisionCandidate>,
}

/// What the plugin answered.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DecisionAnswer {
    /// Strategies: the agent chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Strategies: its index among the candidates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    /// Policies: `allow`, `deny`, `warn` or `modify`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    /// Policies: the reason of a deny or warn. Probes: the probe's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Probes: the health judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthState>,
    /// The call failed: why (the fallback's answer, if any, is the one above).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One plugin decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DecisionRecord {
    /// `<ms>-<seq>`, given by the store; a cursor for `GET /decisions?after=`.
    #[serde(default)]
    pub id: String,
    /// When the plugin answered, ms since the Unix epoch.
    pub at_ms: u64,
    /// The server that asked.
    pub server_id: String,
    /// Where in the engine.
    pub stage: DecisionStage,
    /// The task concerned (route, select, submit, dispatch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// The agent concerned (register, dispatch, probe).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// The plugin name.
    pub plugin: String,
    /// sha256 of the version asked.
    pub version: String,
    /// Where that version came from (`builtin`, `file`, `upload`).
    pub source: String,
    /// Which of the name's versions answered.
    #[serde(default)]
    pub role: DecisionRole,
    /// Strategies: the call's whole input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<SelectionInput>,
    /// The answer that took effect (for a shadow: the answer it gave).
    pub answer: DecisionAnswer,
    /// `plugin`, or the fallback that answered because the plugin failed (`embedded_least_loaded`, `native`,
    /// `on_error`).
    pub answered_by: String,
    /// Fuel the plugin's call burned.
    pub fuel: u64,
    /// Wall time of the call, µs.
    pub duration_us: u64,
}

/// Decisions kept by default (`DECISION_LOG_MAX`): a routed decision with eight candidates takes about 2.5 KB of the
/// memory store (1.5 KB in Redis), so the default log holds about 50 MB at most (docs/BENCHMARKS.md).
pub const DECISIONS_KEPT: usize = 20_000;
/// Decisions kept per task: a task requeued a thousand times keeps its last ones.
pub const DECISIONS_PER_TASK: usize = 100;
/// Most decisions one page answers.
pub const MAX_DECISION_PAGE: usize = 1_000;

/// Which decisions `GET /decisions` pages through, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DecisionQuery {
    /// Only this plugin name.
    pub plugin: Option<String>,
    /// Only this stage.
    pub stage: Option<DecisionStage>,
    /// Only decisions at or after this time, ms.
    pub since_ms: Option<u64>,
    /// Only decisions after this id (the previous page's `next`).
    pub after: Option<String>,
    /// At most this many (capped at [`MAX_DECISION_PAGE`]).
    pub limit: usize,
}

impl DecisionQuery {
    /// Whether `record` passes the plugin and stage filters (the time and cursor are the store's to apply).
    pub fn matches(&self, record: &DecisionRecord) -> bool {
        self.plugin.as_ref().is_none_or(|plugin| &record.plugin == plugin)
            && self.stage.is_none_or(|stage| record.stage == stage)
    }
}

/// Orders decision ids (`<ms>-<seq>`) as the store wrote them.
pub fn decision_id_key(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}
