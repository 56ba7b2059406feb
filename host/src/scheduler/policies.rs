//! Policy plugins at the three stages (DESIGN §5): submit and register policies run in manifest order, each
//! seeing the changes of the earlier ones, and the first deny wins; dispatch policies only allow or deny a pending
//! task for a claiming agent. Denials and warnings become violations; a policy that cannot answer denies unless
//! its manifest says `on_error = "allow"`.

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::{Map, Value};

use crate::model::{Agent, CapabilitySet, NewTask, Priority, Task, normalize_capability};
use crate::plugins::bindings::{
    AgentInfo, CallContext, Decision, DispatchRequest, Modification, PolicyInput, SubmitRequest, TaskInfo,
};
use crate::plugins::io::POLICY_PAYLOAD_LIMIT;
use crate::plugins::manifest::OnError;
use crate::plugins::{PluginRegistry, PluginVersion};
use crate::store::AgentRegistration;

/// A policy refused a submit or a registration: the API answers 403 naming the policy and the reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("denied by policy {policy}: {reason}")]
pub struct PolicyDenied {
    /// The policy's plugin name.
    pub policy: String,
    /// Its reason.
    pub reason: String,
    /// The id of the violation recorded for it.
    pub violation_id: Option<String>,
}

/// What a submit or register stage ends with: its warnings, or the deny with the violations recorded up to it.
pub(crate) type StageOutcome = Result<Vec<PendingViolation>, (PolicyDenied, Vec<PendingViolation>)>;

/// A violation before the store gives it its id and time.
pub type PendingViolation = crate::store::NewViolation;

/// Dispatch denials already recorded, by (policy, task, agent): a claimer peeking at the same denied task again
/// must not flood the log (DESIGN §5: recorded at most once per triple). Per server; bounded by emptying it.
pub(crate) struct DispatchSeen {
    seen: Mutex<HashSet<(String, String, String)>>,
    capacity: usize,
}

impl DispatchSeen {
    pub(crate) fn new(capacity: usize) -> Self {
        DispatchSeen { seen: Mutex::new(HashSet::new()), capacity }
    }

    /// The violations not recorded before (every non-dispatch one, and the first of each dispatch triple).
    pub(crate) fn first_time(&self, pending: Vec<PendingViolation>) -> Vec<PendingViolation> {
        let mut seen = self.seen.lock();
        pending
            .into_iter()
            .filter(|violation| {
                if violation.stage != "dispatch" {
                    return true;
                }
                if seen.len() >= self.capacity {
                    seen.clear();
                }
                seen.insert((
                    violation.policy.clone(),
                    violation.task_id.clone().unwrap_or_default(),
                    violation.agent_id.clone().unwrap_or_default(),
                ))
            })
            .collect()
    }
}

/// The labels a plugin asked for (manifest `labels`), taken from a metadata object; non-string values as JSON.
fn labels_for(plugin: &PluginVersion, metadata: &Map<String, Value>) -> Vec<(String, String)> {
    plugin
        .manifest
        .labels
        .iter()
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

/// The task as a plugin sees it (labels chosen by `plugin`'s manifest).
pub(crate) fn task_info(
    plugin: &PluginVersion,
    id: &str,
    task_type: &str,
    priority: Priority,
    required: &CapabilitySet,
    metadata: &Map<String, Value>,
) -> TaskInfo {
    TaskInfo {
        id: id.to_string(),
        task_type: task_type.to_string(),
        priority: priority.into(),
        required_capabilities: required.as_slice().to_vec(),
        labels: labels_for(plugin, metadata),
    }
}

fn agent_info(plugin: &PluginVersion, agent: &Agent) -> AgentInfo {
    AgentInfo {
        agent_id: agent.agent_id.clone(),
        model: agent.model.clone(),
        provider: agent.provider.clone(),
        capabilities: agent.capabilities.as_slice().to_vec(),
        labels: labels_for(plugin, &agent.metadata),
    }
}

fn ctx(now_ms: u64) -> CallContext {
    CallContext { now_ms, seed: rand::random() }
}

/// What one policy's answer means for the request.
enum Verdict {
    Allow,
    Deny(String),
    Warn(String),
    Modify(Modification),
}

/// Runs one policy; a failure becomes a deny or an allow by its `on_error`.
fn verdict(policy: &Arc<PluginVersion>, input: &PolicyInput, now_ms: u64) -> Verdict {
    match policy.evaluate(ctx(now_ms), input) {
        Ok((Decision::Allow, _)) => Verdict::Allow,
        Ok((Decision::Deny(reason), _)) => Verdict::Deny(reason),
        Ok((Decision::Warn(reason), _)) => Verdict::Warn(reason),
        Ok((Decision::Modify(modification), _)) => Verdict::Modify(modification),
        Err(error) => match policy.manifest.on_error {
            OnError::Deny => Verdict::Deny(format!("the policy failed ({error}) and fails closed")),
            OnError::Allow => {
                tracing::warn!(policy = %policy.name, %error, "policy failed; on_error = allow lets the request through");
                Verdict::Allow
            }
        },
    }
}

fn violation(
    policy: &str,
    stage: &'static str,
    decision: &'static str,
    reason: String,
    task_id: Option<String>,
    agent_id: Option<String>,
) -> PendingViolation {
    PendingViolation { policy: policy.to_string(), stage, decision, reason, task_id, agent_id }
}

/// Runs the submit policies over `task`, applying their modifications. Returns the warnings, or the deny (with
/// the warnings recorded before it).
pub(crate) fn on_submit(plugins: &PluginRegistry, task: &mut NewTask, now_ms: u64) -> StageOutcome {
    let mut violations = Vec::new();
    for policy in plugins.policies().iter() {
        let payload_text = task.payload.to_string();
        let info = task_info(
            policy,
            task.task_id.as_str(),
            &task.task_type,
            task.priority,
            &task.required_capabilities,
            &task.metadata,
        );
        let input = PolicyInput::Submit(SubmitRequest {
            task: info,
            payload_bytes: u32::try_from(payload_text.len()).unwrap_or(u32::MAX),
            payload: (policy.manifest.needs_payload && payload_text.len() <= POLICY_PAYLOAD_LIMIT)
                .then_some(payload_text),
        });
        let task_id = Some(task.task_id.to_string());
        match verdict(policy, &input, now_ms) {
            Verdict::Allow => {}
            Verdict::Warn(reason) => violations.push(violation(&policy.name, "submit", "warn", reason, task_id, None)),
            Verdict::Deny(reason) => {
                violations.push(violation(&policy.name, "submit", "deny", reason.clone(), task_id, None));
                return Err((PolicyDenied { policy: policy.name.clone(), reason, violation_id: None }, violations));
            }
            Verdict::Modify(Modification::Submit(changes)) => {
                if let Some(priority) = changes.priority {
                    task.priority = priority.into();
                }
                let mut added = Vec::new();
                for capability in &changes.add_capabilities {
                    match normalize_capability("add_capabilities", capability) {
                        Ok(capability) => added.push(capability),
                        Err(error) => {
                            let reason = format!("the policy added an invalid capability: {error}");
                            violations.push(violation(&policy.name, "submit", "deny", reason.clone(), task_id, None));
                            return Err((
                                PolicyDenied { policy: policy.name.clone(), reason, violation_id: None },
                                violations,
                            ));
                        }
                    }
                }
                let mut required = task.required_capabilities.clone();
                required.apply(&added, &[]);
                task.required_capabilities = required;
                for (key, value) in changes.metadata {
                    task.metadata.insert(key, Value::String(value));
                }
            }
            Verdict::Modify(Modification::Register(_)) => {}
        }
    }
    Ok(violations)
}

/// Runs the register policies over a registration, applying their capability changes.
pub(crate) fn on_register(plugins: &PluginRegistry, registration: &mut AgentRegistration, now_ms: u64) -> StageOutcome {
    let mut violations = Vec::new();
    for policy in plugins.policies().iter() {
        let info = AgentInfo {
            agent_id: registration.agent_id.clone(),
            model: registration.model.clone(),
            provider: registration.provider.clone(),
            capabilities: registration.capabilities.as_slice().to_vec(),
            labels: labels_for(policy, &registration.metadata),
        };
        let agent_id = Some(registration.agent_id.clone());
        match verdict(policy, &PolicyInput::Register(info), now_ms) {
            Verdict::Allow => {}
            Verdict::Warn(reason) => {
                violations.push(violation(&policy.name, "register", "warn", reason, None, agent_id))
            }
            Verdict::Deny(reason) => {
                violations.push(violation(&policy.name, "register", "deny", reason.clone(), None, agent_id));
                return Err((PolicyDenied { policy: policy.name.clone(), reason, violation_id: None }, violations));
            }
            Verdict::Modify(Modification::Register(changes)) => {
                let normalize = |list: &[String]| -> Vec<String> {
                    list.iter().filter_map(|c| normalize_capability("capabilities", c).ok()).collect()
                };
                registration
                    .capabilities
                    .apply(&normalize(&changes.add_capabilities), &normalize(&changes.remove_capabilities));
            }
            Verdict::Modify(Modification::Submit(_)) => {}
        }
    }
    Ok(violations)
}

/// Runs the dispatch policies for `task` going to `agent`: the denials (empty = allowed).
pub(crate) fn on_dispatch(plugins: &PluginRegistry, task: &Task, agent: &Agent, now_ms: u64) -> Vec<PendingViolation> {
    for policy in plugins.policies().iter() {
        let input = PolicyInput::Dispatch(DispatchRequest {
            task: task_info(
                policy,
                task.task_id.as_str(),
                &task.task_type,
                task.priority,
                &task.required_capabilities,
                &task.metadata,
            ),
            agent: agent_info(policy, agent),
        });
        if let Verdict::Deny(reason) = verdict(policy, &input, now_ms) {
            return vec![violation(
                &policy.name,
                "dispatch",
                "deny",
                reason,
                Some(task.task_id.to_string()),
                Some(agent.agent_id.clone()),
            )];
        }
    }
    Vec::new()
}
