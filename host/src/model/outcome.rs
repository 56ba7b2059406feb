//! What a holder reports on a task and how it proves it holds it (DESIGN §4, leases and fencing): the fence, a
//! completion, a failure; and what a submit answers.

use serde_json::Value;

use super::{FailKind, JsonText, TaskId};

/// How a task outcome proves its sender holds the task (DESIGN §4, leases and fencing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fence {
    /// The lease id of the grant.
    Lease(String),
    /// The holding agent (body `agent_id`, or an `agent:<id>` token).
    Agent(String),
    /// Neither (existing clients complete with no body): applies to the current attempt, recorded `unfenced`.
    Unfenced,
}

/// A task's successful outcome, as the agent reports it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Completion {
    /// The result (any JSON, as the agent sent it; `null` when it sent none).
    pub result: JsonText,
    /// How long the agent says the work took, in ms (Aragora clients send it). It feeds the agent's
    /// `avg_latency_ms` in place of the store's own measure (claim to completion), which includes queueing on the
    /// agent's side and the network.
    pub latency_ms: Option<f64>,
}

impl From<Value> for Completion {
    fn from(result: Value) -> Self {
        Completion { result: result.into(), latency_ms: None }
    }
}

/// A failure report.
#[derive(Clone, Debug, PartialEq)]
pub struct FailRequest {
    /// What went wrong.
    pub error: String,
    /// Try again if retries remain (default true).
    pub requeue: bool,
    /// Blame the task or the agent.
    pub kind: FailKind,
}

/// What `submit` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submitted {
    /// The task's id (the first one's, on a replay).
    pub task_id: TaskId,
    /// The same idempotency key and body were seen before: nothing new was created.
    pub replayed: bool,
}
