//! Policy plugins at the three stages (DESIGN §5): submit and register policies run in manifest order, each
//! seeing the changes of the earlier ones, and the first deny wins; dispatch policies only allow or deny a pending
//! task for a claiming agent. Denials and warnings become violations; a policy that cannot answer denies unless
//! its manifest says `on_error = "allow"`.

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::model::AgentRegistration;
use crate::model::{Agent, NewTask, Task, normalize_capability};
use crate::plugins::bindings::{CallContext, Decision, DispatchRequest, Modification, PolicyInput, SubmitRequest};
use crate::plugins::convert::{self, TaskView};
use crate::plugins::io::POLICY_PAYLOAD_LIMIT;
use crate::plugins::manifest::OnError;
use crate::plugins::{PluginRegistry, PluginVersion};

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
pub(super) type PendingViolation = crate::model::NewViolation;

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

/// What plugins read of a task about to be submitted.
fn new_task_view(task: &NewTask) -> TaskView<'_> {
    TaskView {
        id: &task.task_id,
        task_type: &task.task_type,
        priority: task.priority,
        required: &task.required_capabilities,
        metadata: &task.metadata,
    }
}

/// What plugins read of a stored task.
pub(crate) fn task_view(task: &Task) -> TaskView<'_> {
    TaskView {
        id: &task.task_id,
        task_type: &task.task_type,
        priority: task.priority,
        required: &task.required_capabilities,
        metadata: &task.metadata,
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

/// Runs one policy (or its canary, for the decision about `key`) through the registry, which records the decision;
/// `input_for` builds a version's input from its own manifest. A failure becomes a deny or an allow by the
/// answering version's `on_error`.
fn verdict(
    plugins: &PluginRegistry,
    policy: &Arc<PluginVersion>,
    key: &str,
    input_for: &dyn Fn(&PluginVersion) -> PolicyInput,
    now_ms: u64,
) -> Verdict {
    let (policy, outcome) = plugins.evaluate(policy, ctx(now_ms), key, input_for);
    match outcome {
        Ok(Decision::Allow) => Verdict::Allow,
        Ok(Decision::Deny(reason)) => Verdict::Deny(reason),
        Ok(Decision::Warn(reason)) => Verdict::Warn(reason),
        Ok(Decision::Modify(modification)) => Verdict::Modify(modification),
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
        let payload_text = task.payload.get().to_string();
        let seen: &NewTask = task;
        let input_for = |version: &PluginVersion| {
            PolicyInput::Submit(SubmitRequest {
                task: convert::task_info(new_task_view(seen), &version.manifest.labels),
                payload_bytes: u32::try_from(payload_text.len()).unwrap_or(u32::MAX),
                payload: (version.manifest.needs_payload && payload_text.len() <= POLICY_PAYLOAD_LIMIT)
                    .then(|| payload_text.clone()),
            })
        };
        let task_id = Some(task.task_id.to_string());
        match verdict(plugins, policy, task.task_id.as_str(), &input_for, now_ms) {
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
                    task.metadata.insert(key, serde_json::Value::String(value));
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
        let seen: &AgentRegistration = registration;
        let input_for =
            |version: &PluginVersion| PolicyInput::Register(convert::registration_info(seen, &version.manifest.labels));
        let agent_id = Some(registration.agent_id.clone());
        match verdict(plugins, policy, &registration.agent_id, &input_for, now_ms) {
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
        let input_for = |version: &PluginVersion| {
            PolicyInput::Dispatch(DispatchRequest {
                task: convert::task_info(task_view(task), &version.manifest.labels),
                agent: convert::agent_info(agent, &version.manifest.labels),
            })
        };
        if let Verdict::Deny(reason) = verdict(plugins, policy, task.task_id.as_str(), &input_for, now_ms) {
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
