//! From the model to the records plugins receive, in one place: the labels a manifest asks for, a task and an
//! agent as every world sees them, a strategy candidate from the numbers the store keeps, and ages from store
//! times. The engine (routing, policies, probes) builds plugin inputs only through these.

use serde_json::{Map, Value};

use super::bindings::{AgentInfo, Candidate, CandidateDetails, TaskInfo};
use crate::model::{Agent, AgentRegistration, CandidateNumbers, CapabilitySet, Priority, TaskId};

/// The values of the metadata keys `keys` (a manifest's `labels`), in that order; a non-string value as its JSON.
pub fn labels(keys: &[String], metadata: &Map<String, Value>) -> Vec<(String, String)> {
    keys.iter()
        .filter_map(|key| {
            metadata.get(key).map(|value| {
                let text = match value {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (key.clone(), text)
            })
        })
        .collect()
}

/// What plugins read of a task: never its payload.
#[derive(Clone, Copy, Debug)]
pub struct TaskView<'a> {
    /// The task's id.
    pub id: &'a TaskId,
    /// Its type.
    pub task_type: &'a str,
    /// Its priority.
    pub priority: Priority,
    /// The capabilities it requires.
    pub required: &'a CapabilitySet,
    /// Its metadata, where labels come from.
    pub metadata: &'a Map<String, Value>,
}

/// A task as a plugin sees it, with the labels its manifest lists.
pub fn task_info(task: TaskView<'_>, label_keys: &[String]) -> TaskInfo {
    TaskInfo {
        id: task.id.to_string(),
        task_type: task.task_type.to_string(),
        priority: task.priority.into(),
        required_capabilities: task.required.as_slice().to_vec(),
        labels: labels(label_keys, task.metadata),
    }
}

/// An agent as a policy or probe sees it, with the labels its manifest lists.
pub fn agent_info(agent: &Agent, label_keys: &[String]) -> AgentInfo {
    AgentInfo {
        agent_id: agent.agent_id.clone(),
        model: agent.model.clone(),
        provider: agent.provider.clone(),
        capabilities: agent.capabilities.as_slice().to_vec(),
        labels: labels(label_keys, &agent.metadata),
    }
}

/// An agent about to be registered, as a register policy sees it.
pub fn registration_info(registration: &AgentRegistration, label_keys: &[String]) -> AgentInfo {
    AgentInfo {
        agent_id: registration.agent_id.clone(),
        model: registration.model.clone(),
        provider: registration.provider.clone(),
        capabilities: registration.capabilities.as_slice().to_vec(),
        labels: labels(label_keys, &registration.metadata),
    }
}

/// A strategy candidate from the numbers the store keeps, its ages measured at `now_ms` (store time).
pub fn candidate(numbers: &CandidateNumbers, now_ms: u64) -> Candidate {
    Candidate {
        in_flight: numbers.in_flight,
        max_concurrent: numbers.max_concurrent,
        completed: numbers.completed,
        failed: numbers.failed,
        avg_latency_ms: numbers.avg_latency_ms.round().clamp(0.0, u32::MAX as f64) as u32,
        heartbeat_age_ms: now_ms.saturating_sub(numbers.last_heartbeat_ms),
        since_assigned_ms: numbers.last_assigned_ms.map(|at| now_ms.saturating_sub(at)),
        health: numbers.health.into(),
    }
}

/// A candidate's strings (asked for by `needs_details` or `labels`), with the labels the manifest lists.
pub fn candidate_details(agent: &Agent, label_keys: &[String]) -> CandidateDetails {
    CandidateDetails {
        agent_id: agent.agent_id.clone(),
        model: agent.model.clone(),
        provider: agent.provider.clone(),
        labels: labels(label_keys, &agent.metadata),
    }
}

/// Milliseconds from an RFC 3339 time to `now_ms`; 0 for a time in the future or one that does not parse.
pub fn age_ms(time: &str, now_ms: u64) -> u64 {
    crate::model::millis_of(time).map(|at| now_ms.saturating_sub(at)).unwrap_or(0)
}
