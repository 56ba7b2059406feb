//! JSON forms of plugin inputs and outputs, for `aragora-cp plugin run` and for plugin authors' fixtures.
//! Every field has a default, so a fixture states only what matters to the rule under test.
//!
//! ```json
//! {"task": {"task_type": "code"}, "candidates": [{"agent_id": "a", "in_flight": 2}, {"agent_id": "b"}]}
//! {"stage": "submit", "task": {"labels": {"sensitive": "true"}}, "payload": {"prompt": "hi"}}
//! {"agent": {"agent_id": "a"}, "observations": {"heartbeat_age_ms": 40000}}
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::bindings::{
    AgentInfo, CallContext, Candidate, CandidateDetails, Decision, DispatchRequest, HealthStatus, HttpCheck,
    Modification, Observations, PolicyInput, Priority, ProbeResult, SubmitRequest, TaskInfo,
};

/// Largest payload passed to a policy that asks for it (DESIGN §5).
pub const POLICY_PAYLOAD_LIMIT: usize = 64 * 1024;

fn labels(map: &BTreeMap<String, String>) -> Vec<(String, String)> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Parses a priority as the API does (name in any case, `urgent`, or 0–3).
fn parse_priority(text: &str) -> Option<Priority> {
    text.parse::<crate::model::Priority>().ok().map(Priority::from)
}

fn parse_health(text: &str) -> Result<HealthStatus, String> {
    match text {
        "healthy" => Ok(HealthStatus::Healthy),
        "degraded" => Ok(HealthStatus::Degraded),
        "unhealthy" => Ok(HealthStatus::Unhealthy),
        "unknown" => Ok(HealthStatus::Unknown),
        other => Err(format!("health: {other:?} is not one of healthy, degraded, unhealthy, unknown")),
    }
}

/// A task in fixture form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskJson {
    #[serde(default = "default_task_id")]
    id: String,
    #[serde(default = "default_task_type")]
    task_type: String,
    #[serde(default = "default_priority")]
    priority: String,
    #[serde(default)]
    required_capabilities: Vec<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

fn default_task_id() -> String {
    "task_00000000000000000000000000000000".into()
}
fn default_task_type() -> String {
    "general".into()
}
fn default_priority() -> String {
    "normal".into()
}

impl TaskJson {
    fn into_wit(self) -> Result<TaskInfo, String> {
        let priority = parse_priority(&self.priority)
            .ok_or_else(|| format!("task.priority: {:?} is not critical, high, normal, low or 0-3", self.priority))?;
        Ok(TaskInfo {
            id: self.id,
            task_type: self.task_type,
            priority,
            required_capabilities: self.required_capabilities,
            labels: labels(&self.labels),
        })
    }
}

/// A candidate in fixture form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CandidateJson {
    agent_id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    provider: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    in_flight: u32,
    #[serde(default = "one")]
    max_concurrent: u32,
    #[serde(default)]
    completed: u64,
    #[serde(default)]
    failed: u64,
    #[serde(default)]
    avg_latency_ms: u32,
    #[serde(default)]
    heartbeat_age_ms: u64,
    #[serde(default)]
    since_assigned_ms: Option<u64>,
    #[serde(default = "default_health")]
    health: String,
}

fn one() -> u32 {
    1
}
fn default_health() -> String {
    "healthy".into()
}

impl CandidateJson {
    fn into_wit(self) -> Result<(Candidate, CandidateDetails), String> {
        let details = CandidateDetails {
            labels: labels(&self.labels),
            agent_id: self.agent_id,
            model: self.model,
            provider: self.provider,
        };
        let candidate = Candidate {
            health: parse_health(&self.health)?,
            in_flight: self.in_flight,
            max_concurrent: self.max_concurrent,
            completed: self.completed,
            failed: self.failed,
            avg_latency_ms: self.avg_latency_ms,
            heartbeat_age_ms: self.heartbeat_age_ms,
            since_assigned_ms: self.since_assigned_ms,
        };
        Ok((candidate, details))
    }
}

/// An agent in fixture form (register and dispatch policies, probes).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentJson {
    agent_id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    provider: String,
    #[serde(default)]
    capabilities: Vec<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

impl AgentJson {
    fn into_wit(self) -> AgentInfo {
        AgentInfo {
            agent_id: self.agent_id,
            model: self.model,
            provider: self.provider,
            capabilities: self.capabilities,
            labels: labels(&self.labels),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpJson {
    status: Option<u16>,
    #[serde(default)]
    latency_ms: u32,
    #[serde(default)]
    body_prefix: String,
    error: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ObservationsJson {
    #[serde(default)]
    heartbeat_age_ms: u64,
    #[serde(default)]
    recent_successes: u32,
    #[serde(default)]
    recent_failures: u32,
    #[serde(default)]
    latency_p50_ms: u32,
    http: Option<HttpJson>,
}

/// The context fields every fixture may carry.
#[derive(Debug, Default, Deserialize)]
struct ContextJson {
    #[serde(default)]
    now_ms: Option<u64>,
    #[serde(default)]
    seed: u64,
}

impl ContextJson {
    fn into_wit(self) -> CallContext {
        let now_ms = self.now_ms.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0)
        });
        CallContext { now_ms, seed: self.seed }
    }
}

/// A strategy call in fixture form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StrategyJson {
    #[serde(flatten)]
    ctx: ContextJson,
    #[serde(default = "default_task")]
    task: TaskJson,
    candidates: Vec<CandidateJson>,
}

fn default_task() -> TaskJson {
    serde_json::from_value(json!({})).expect("every task field has a default")
}

/// A strategy call decoded from JSON.
pub struct StrategyCall {
    /// The call's context.
    pub ctx: CallContext,
    /// The task.
    pub task: TaskInfo,
    /// The candidates.
    pub candidates: Vec<Candidate>,
    /// Their strings, in the same order.
    pub details: Vec<CandidateDetails>,
}

/// Decodes `{"task": …, "candidates": […], "now_ms"?, "seed"?}`.
pub fn strategy_call(input: Value) -> Result<StrategyCall, String> {
    let call: StrategyJson = serde_json::from_value(input).map_err(|e| e.to_string())?;
    if call.candidates.is_empty() {
        return Err("candidates: at least one candidate is needed".into());
    }
    let (candidates, details) =
        call.candidates.into_iter().map(CandidateJson::into_wit).collect::<Result<Vec<_>, _>>()?.into_iter().unzip();
    Ok(StrategyCall { ctx: call.ctx.into_wit(), task: call.task.into_wit()?, candidates, details })
}

#[derive(Debug, Deserialize)]
#[serde(tag = "stage", rename_all = "snake_case", deny_unknown_fields)]
enum PolicyJson {
    Submit {
        #[serde(default)]
        now_ms: Option<u64>,
        #[serde(default)]
        seed: u64,
        #[serde(default = "default_task")]
        task: TaskJson,
        #[serde(default)]
        payload: Value,
    },
    Register {
        #[serde(default)]
        now_ms: Option<u64>,
        #[serde(default)]
        seed: u64,
        agent: AgentJson,
    },
    Dispatch {
        #[serde(default)]
        now_ms: Option<u64>,
        #[serde(default)]
        seed: u64,
        #[serde(default = "default_task")]
        task: TaskJson,
        agent: AgentJson,
    },
}

/// Decodes `{"stage": "submit"|"register"|"dispatch", …}`. `needs_payload` decides whether a submit's payload
/// is passed (when at most 64 KiB), as the engine does.
pub fn policy_call(input: Value, needs_payload: bool) -> Result<(CallContext, PolicyInput), String> {
    let call: PolicyJson = serde_json::from_value(input).map_err(|e| e.to_string())?;
    let ctx = |now_ms, seed| ContextJson { now_ms, seed }.into_wit();
    Ok(match call {
        PolicyJson::Submit { now_ms, seed, task, payload } => {
            let text = if payload.is_null() { "{}".to_string() } else { payload.to_string() };
            let request = SubmitRequest {
                task: task.into_wit()?,
                payload_bytes: u32::try_from(text.len()).unwrap_or(u32::MAX),
                payload: (needs_payload && text.len() <= POLICY_PAYLOAD_LIMIT).then_some(text),
            };
            (ctx(now_ms, seed), PolicyInput::Submit(request))
        }
        PolicyJson::Register { now_ms, seed, agent } => (ctx(now_ms, seed), PolicyInput::Register(agent.into_wit())),
        PolicyJson::Dispatch { now_ms, seed, task, agent } => (
            ctx(now_ms, seed),
            PolicyInput::Dispatch(DispatchRequest { task: task.into_wit()?, agent: agent.into_wit() }),
        ),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeJson {
    #[serde(flatten)]
    ctx: ContextJson,
    agent: AgentJson,
    #[serde(default)]
    observations: ObservationsJson,
}

/// Decodes `{"agent": …, "observations": …}`.
pub fn probe_call(input: Value) -> Result<(CallContext, AgentInfo, Observations), String> {
    let call: ProbeJson = serde_json::from_value(input).map_err(|e| e.to_string())?;
    let o = call.observations;
    let observed = Observations {
        heartbeat_age_ms: o.heartbeat_age_ms,
        recent_successes: o.recent_successes,
        recent_failures: o.recent_failures,
        latency_p50_ms: o.latency_p50_ms,
        http: o.http.map(|h| HttpCheck {
            status: h.status,
            latency_ms: h.latency_ms,
            body_prefix: h.body_prefix,
            error: h.error,
        }),
    };
    Ok((call.ctx.into_wit(), call.agent.into_wit(), observed))
}

/// A policy decision as JSON: `{"decision": "allow"|"deny"|"warn"|"modify", "reason"?, "changes"?}`.
pub fn decision_json(decision: &Decision) -> Value {
    match decision {
        Decision::Allow => json!({"decision": "allow"}),
        Decision::Deny(reason) => json!({"decision": "deny", "reason": reason}),
        Decision::Warn(reason) => json!({"decision": "warn", "reason": reason}),
        Decision::Modify(Modification::Submit(changes)) => json!({
            "decision": "modify",
            "stage": "submit",
            "priority": changes.priority.map(|p| crate::model::Priority::from(p).as_str()),
            "add_capabilities": changes.add_capabilities,
            "metadata": changes.metadata.iter().cloned().collect::<BTreeMap<_, _>>(),
        }),
        Decision::Modify(Modification::Register(changes)) => json!({
            "decision": "modify",
            "stage": "register",
            "add_capabilities": changes.add_capabilities,
            "remove_capabilities": changes.remove_capabilities,
        }),
    }
}

/// A probe verdict as JSON.
#[derive(Debug, Serialize)]
pub struct ProbeJsonResult<'a> {
    /// healthy, degraded, unhealthy or unknown.
    pub status: &'static str,
    /// The probe's explanation.
    pub message: &'a str,
}

/// A probe result as JSON.
pub fn probe_json(result: &ProbeResult) -> Value {
    json!(ProbeJsonResult { status: crate::model::HealthState::from(result.status).as_str(), message: &result.message })
}
