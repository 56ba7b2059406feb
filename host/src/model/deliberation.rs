//! Deliberations (DESIGN §10). A request for a vetted decision becomes one task of type `deliberation`, the
//! session. Queued, a deliberation worker claims that task and completes it with the decision. Orchestrated, the
//! session task is for the control plane's own orchestrator (capability `deliberation.orchestrate`, see
//! `coordinator::deliberations`), which runs the rounds as ordinary tasks addressed to their participants and
//! completes the session with the decision ([`SessionPlan`], [`decide_by_vote`]). The request id and the task id
//! share their 32 hex digits (`req_…` / `task_…`), so either finds the session without an index, and a session is
//! read from its task: `queued` while pending, `running` while claimed or running, then the decision.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{JsonText, Priority, SubmitRequest, Task, TaskId, TaskStatus, ValidationError};

/// The task type of a queued deliberation.
pub const DELIBERATION_TASK_TYPE: &str = "deliberation";

/// The default of `DELIBERATION_MAX_WAIT`: longest a synchronous `POST /deliberations` holds its request open,
/// whatever `timeout_seconds` says.
pub const MAX_SYNC_WAIT_SECONDS: u32 = 600;

/// The capability of an orchestrated session's task: only the control plane's orchestrators claim it.
pub const ORCHESTRATE_CAPABILITY: &str = "deliberation.orchestrate";

/// Task types of an orchestrated session's rounds.
pub const PROPOSE_TASK_TYPE: &str = "deliberation.propose";
/// A revise round's task type: the participant sees the others' positions.
pub const REVISE_TASK_TYPE: &str = "deliberation.revise";
/// The judge's task type (`decide: judge`).
pub const JUDGE_TASK_TYPE: &str = "deliberation.judge";

/// How an orchestrated session decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DecisionRule {
    /// The answer most participants gave; consensus when more than half gave it.
    Majority,
    /// Consensus only when every participant gave the same answer.
    Unanimous,
    /// An agent with the `judge` capability reads the final positions and decides.
    Judge,
}

impl DecisionRule {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionRule::Majority => "majority",
            DecisionRule::Unanimous => "unanimous",
            DecisionRule::Judge => "judge",
        }
    }
}

/// What an orchestrated session runs, kept in its task's payload (`plan`) so any server can carry it on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionPlan {
    /// The question.
    pub content: String,
    /// `debate` or another decision type.
    pub decision_type: String,
    /// Participants (distinct agents), 1 to 16.
    pub agents: u32,
    /// Rounds: one propose round, then revise rounds.
    pub rounds: u32,
    /// How the final positions become the answer.
    pub decide: DecisionRule,
    /// The strategy choosing participants (the server's default when absent).
    pub strategy: Option<String>,
    /// What a participant must hold.
    pub capabilities: Vec<String>,
    /// What the judge must hold.
    pub judge_capabilities: Vec<String>,
    /// The whole session's limit.
    pub timeout_seconds: u32,
    /// Each round task's limit per attempt.
    pub round_timeout_seconds: u32,
    /// Whether the request waited for the decision (a session it stopped waiting for reads `timeout`).
    pub sync: bool,
}

/// The error text that marks a session that ran out of time (it reads `timeout`).
pub const SESSION_TIMEOUT_ERROR: &str = "deliberation_timeout";

/// One participant's answer in one round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Contribution {
    /// The slot (0-based), a participant's place in every round.
    pub slot: u32,
    /// Who answered.
    pub agent_id: String,
    /// The answer (`answer` of the task's result, or the whole result).
    pub answer: Value,
    /// The agent's confidence, when it gave one.
    pub confidence: Option<f64>,
    /// The agent's reasoning, when it gave some.
    pub reasoning: Option<String>,
    /// The round task.
    pub task_id: String,
}

impl Contribution {
    /// A completed round task's contribution.
    pub fn of(slot: u32, task: &Task) -> Contribution {
        let result = task.result.as_ref().map_or(Value::Null, JsonText::to_value);
        let answer = match &result {
            Value::Object(fields) => fields.get("answer").cloned().unwrap_or_else(|| result.clone()),
            other => other.clone(),
        };
        Contribution {
            slot,
            agent_id: task.assigned_agent.clone().unwrap_or_default(),
            answer,
            confidence: result.get("confidence").and_then(Value::as_f64),
            reasoning: result.get("reasoning").and_then(Value::as_str).map(str::to_string),
            task_id: task.task_id.to_string(),
        }
    }
}

/// What the votes of the final round decide.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    /// The answer given most (the earliest slot's among equals).
    pub answer: Value,
    /// The share of participants that gave it.
    pub confidence: f64,
    /// Whether the rule's consensus was reached.
    pub consensus_reached: bool,
    /// How many gave each answer, in the order first given.
    pub votes: Vec<(Value, usize)>,
}

/// Decides by vote: answers are compared as trimmed, lower-cased text (JSON text for non-strings).
pub fn decide_by_vote(rule: DecisionRule, contributions: &[Contribution]) -> Verdict {
    let key = |answer: &Value| match answer {
        Value::String(text) => text.trim().to_lowercase(),
        other => other.to_string(),
    };
    let mut votes: Vec<(Value, String, usize)> = Vec::new();
    for contribution in contributions {
        let k = key(&contribution.answer);
        match votes.iter_mut().find(|(_, seen, _)| *seen == k) {
            Some(vote) => vote.2 += 1,
            None => votes.push((contribution.answer.clone(), k, 1)),
        }
    }
    let total = contributions.len().max(1);
    let (answer, top) =
        votes.iter().fold(
            (Value::Null, 0),
            |(best, n), (answer, _, count)| if *count > n { (answer.clone(), *count) } else { (best, n) },
        );
    let consensus_reached = match rule {
        DecisionRule::Unanimous => votes.len() == 1,
        _ => top * 2 > total,
    };
    Verdict {
        answer,
        confidence: top as f64 / total as f64,
        consensus_reached,
        votes: votes.into_iter().map(|(answer, _, count)| (answer, count)).collect(),
    }
}

/// How a deliberation runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliberationMode {
    /// Queued for a deliberation worker; the request answers 202 at once (`"async": true` or `"mode": "async"`).
    Queued,
    /// Queued for a worker, the request waiting up to `timeout_seconds` for the decision (the default).
    Sync,
    /// Rounds run by the control plane itself (`"mode": "orchestrated"`).
    Orchestrated,
}

/// `POST /deliberations`: Aragora's decision request.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeliberationRequest {
    /// The question or decision to deliberate.
    pub content: String,
    /// `debate` (the default), or another decision type the worker understands.
    #[serde(default)]
    pub decision_type: Option<String>,
    /// Queue it and answer 202 at once (Aragora's async mode).
    #[serde(default, rename = "async")]
    pub is_async: Option<bool>,
    /// `async`, `sync` (the default) or `orchestrated`.
    #[serde(default)]
    pub mode: Option<String>,
    /// The task's priority.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub priority: Option<Priority>,
    /// Capabilities the worker needs (default `["deliberation"]`).
    #[serde(default)]
    pub required_capabilities: Option<Vec<String>>,
    /// Per attempt, and how long a synchronous request waits (at most 600 s).
    #[serde(default)]
    pub timeout_seconds: Option<u32>,
    /// Kept on the task.
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    /// Aragora's decision context (user, workspace…), passed to the worker.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub context: Option<Value>,
    /// Aragora's decision configuration (agents, rounds…), passed to the worker.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub config: Option<Value>,
    /// Orchestrated: how many distinct agents take part (1 to 16, default 3).
    #[serde(default)]
    pub agents: Option<u32>,
    /// Orchestrated: rounds, the first proposing and the others revising (1 to 5, default 2).
    #[serde(default)]
    pub rounds: Option<u32>,
    /// Orchestrated: `majority` (default), `unanimous` or `judge`.
    #[serde(default)]
    pub decide: Option<DecisionRule>,
    /// Orchestrated: the strategy that chooses participants (the server's default when absent).
    #[serde(default)]
    pub strategy: Option<String>,
    /// Orchestrated, `decide: judge`: what the judge must hold (default `["judge"]`).
    #[serde(default)]
    pub judge_capabilities: Option<Vec<String>>,
    /// Orchestrated: each round task's limit per attempt (default a third of `timeout_seconds`, at least 10 s).
    #[serde(default)]
    pub round_timeout_seconds: Option<u32>,
}

impl DeliberationRequest {
    /// The mode the request asks for.
    pub fn mode(&self) -> Result<DeliberationMode, ValidationError> {
        match (self.mode.as_deref().map(str::trim), self.is_async) {
            (Some("orchestrated"), _) => Ok(DeliberationMode::Orchestrated),
            (Some("async"), _) | (None, Some(true)) => Ok(DeliberationMode::Queued),
            (Some("sync"), Some(true)) => Err(ValidationError::new("async", "contradicts \"mode\": \"sync\"")),
            (Some("sync"), _) | (None, _) => Ok(DeliberationMode::Sync),
            (Some(other), _) => {
                Err(ValidationError::new("mode", format!("must be async, sync or orchestrated, not {other:?}")))
            }
        }
    }

    /// The session task of an orchestrated deliberation: for the control plane's orchestrators, with the
    /// [`SessionPlan`] in its payload (`plan`); `wait` when the request waits for the decision.
    pub fn into_session(self, wait: bool) -> Result<(SubmitRequest, SessionPlan), ValidationError> {
        let (content, decision_type) = self.question()?;
        let agents = self.agents.unwrap_or(3);
        if !(1..=16).contains(&agents) {
            return Err(ValidationError::new("agents", "must be 1 to 16"));
        }
        let rounds = self.rounds.unwrap_or(2);
        if !(1..=5).contains(&rounds) {
            return Err(ValidationError::new("rounds", "must be 1 to 5"));
        }
        let timeout_seconds = self.timeout_seconds.unwrap_or(300);
        if !(1..=3600).contains(&timeout_seconds) {
            return Err(ValidationError::new("timeout_seconds", "must be 1 to 3600"));
        }
        let round_timeout_seconds = self.round_timeout_seconds.unwrap_or((timeout_seconds / 3).max(10));
        if !(1..=3600).contains(&round_timeout_seconds) {
            return Err(ValidationError::new("round_timeout_seconds", "must be 1 to 3600"));
        }
        let normalized = |field: &str, raw: Vec<String>| -> Result<Vec<String>, ValidationError> {
            let set = super::CapabilitySet::parse(field, &raw, 16)?;
            if set.as_slice().is_empty() {
                return Err(ValidationError::new(field, "an orchestrated deliberation needs at least one"));
            }
            Ok(set.as_slice().to_vec())
        };
        let capabilities = normalized(
            "required_capabilities",
            self.required_capabilities.unwrap_or_else(|| vec!["deliberation".into()]),
        )?;
        let judge_capabilities =
            normalized("judge_capabilities", self.judge_capabilities.unwrap_or_else(|| vec!["judge".into()]))?;
        let plan = SessionPlan {
            content,
            decision_type,
            agents,
            rounds,
            decide: self.decide.unwrap_or(DecisionRule::Majority),
            strategy: self.strategy.map(|s| s.trim().to_string()).filter(|s| !s.is_empty()),
            capabilities,
            judge_capabilities,
            timeout_seconds,
            round_timeout_seconds,
            sync: wait,
        };
        let payload = json!({
            "content": plan.content, "decision_type": plan.decision_type, "mode": "orchestrated",
            "plan": serde_json::to_value(&plan).expect("a plan is JSON"),
        });
        let payload = with_caller_context(payload, self.context, self.config);
        let request = SubmitRequest {
            task_type: DELIBERATION_TASK_TYPE.to_string(),
            payload: Some(payload.into()),
            required_capabilities: vec![ORCHESTRATE_CAPABILITY.to_string()],
            priority: self.priority,
            // The session ends itself at `timeout_seconds`; the lease outlives that a little, so an orchestrator
            // that died is replaced (its heartbeats stop first) while one that lives ends the session itself.
            timeout_seconds: Some(timeout_seconds + 30),
            max_retries: Some(10),
            metadata: self.metadata,
            ..SubmitRequest::default()
        };
        Ok((request, plan))
    }

    /// The question and its decision type, checked.
    fn question(&self) -> Result<(String, String), ValidationError> {
        if self.content.trim().is_empty() {
            return Err(ValidationError::new("content", "must not be empty"));
        }
        let decision_type = self.decision_type.clone().unwrap_or_else(|| "debate".to_string());
        if decision_type.trim().is_empty() || decision_type.chars().count() > 64 {
            return Err(ValidationError::new("decision_type", "must be 1 to 64 characters"));
        }
        Ok((self.content.clone(), decision_type))
    }

    /// The task that carries the deliberation to a worker: payload `{content, decision_type, mode, context,
    /// config}`.
    pub fn into_task(self, mode: DeliberationMode) -> Result<SubmitRequest, ValidationError> {
        if let Some(field) = [
            ("agents", self.agents.is_some()),
            ("rounds", self.rounds.is_some()),
            ("decide", self.decide.is_some()),
            ("strategy", self.strategy.is_some()),
            ("judge_capabilities", self.judge_capabilities.is_some()),
            ("round_timeout_seconds", self.round_timeout_seconds.is_some()),
        ]
        .into_iter()
        .find_map(|(field, given)| given.then_some(field))
        {
            return Err(ValidationError::new(field, "applies to \"mode\": \"orchestrated\" only"));
        }
        let (content, decision_type) = self.question()?;
        let mode = match mode {
            DeliberationMode::Queued => "async",
            DeliberationMode::Sync => "sync",
            DeliberationMode::Orchestrated => "orchestrated",
        };
        let payload = json!({"content": content, "decision_type": decision_type, "mode": mode});
        let payload = with_caller_context(payload, self.context, self.config);
        Ok(SubmitRequest {
            task_type: DELIBERATION_TASK_TYPE.to_string(),
            payload: Some(payload.into()),
            required_capabilities: self.required_capabilities.unwrap_or_else(|| vec!["deliberation".to_string()]),
            priority: self.priority,
            timeout_seconds: self.timeout_seconds,
            metadata: self.metadata,
            ..SubmitRequest::default()
        })
    }
}

/// Aragora's `context` and `config`, passed on in the session task's payload when the caller gave them.
fn with_caller_context(mut payload: Value, context: Option<Value>, config: Option<Value>) -> Value {
    for (name, value) in [("context", context), ("config", config)] {
        if let Some(value) = value {
            payload[name] = value;
        }
    }
    payload
}

/// The request id of a deliberation's task: `req_` and the task id's hex digits.
pub fn request_id_of(task_id: &TaskId) -> String {
    format!("req_{}", &task_id.as_str()["task_".len()..])
}

/// The task of a request id (`req_` + 32 hex digits); a task id is taken as well.
pub fn task_id_of(id: &str) -> Result<TaskId, ValidationError> {
    let task_id = match id.strip_prefix("req_") {
        Some(hex) => format!("task_{hex}"),
        None => id.to_string(),
    };
    TaskId::parse("request_id", &task_id)
        .map_err(|_| ValidationError::new("request_id", "a request id is req_ followed by 32 lower-case hex digits"))
}

/// A session's status, from its task's: `queued`, `running`, `completed`, `failed` or `timeout` (a synchronous
/// request whose caller stopped waiting is cancelled, and reads `timeout`).
pub fn deliberation_status(task: &Task) -> &'static str {
    match task.status {
        TaskStatus::Pending => "queued",
        TaskStatus::Claimed | TaskStatus::Running => "running",
        TaskStatus::Completed => "completed",
        TaskStatus::Failed if task.error.as_deref().is_some_and(|e| e.starts_with(SESSION_TIMEOUT_ERROR)) => "timeout",
        TaskStatus::Failed => "failed",
        TaskStatus::Timeout => "timeout",
        TaskStatus::Cancelled if is_sync(&task.payload.to_value()) => "timeout",
        TaskStatus::Cancelled => "failed",
    }
}

/// Whether a session's payload asked for a synchronous answer.
fn is_sync(payload: &Value) -> bool {
    payload["mode"] == "sync" || payload["plan"]["sync"] == true
}

/// `GET /deliberations/{id}`: the session with the worker's decision once there is one (`answer`, `confidence`,
/// `consensus_reached`, `reasoning`, `agent_contributions`, `evidence_used` from the task's result; a result that
/// is not an object is the `answer`).
pub fn deliberation_view(task: &Task) -> Value {
    let status = deliberation_status(task);
    let result = task.result.as_ref().map_or(Value::Null, JsonText::to_value);
    let payload = task.payload.to_value();
    let field = |name: &str| match &result {
        Value::Object(fields) => fields.get(name).cloned().unwrap_or(Value::Null),
        _ => Value::Null,
    };
    let answer = match &result {
        Value::Object(_) => field("answer"),
        other => other.clone(),
    };
    let error = match task.status {
        TaskStatus::Cancelled if status == "timeout" => Some("the caller stopped waiting (timeout_seconds)".into()),
        TaskStatus::Cancelled => Some("cancelled".to_string()),
        _ => task.error.clone(),
    };
    json!({
        "request_id": request_id_of(&task.task_id),
        "task_id": task.task_id,
        "status": status,
        "decision_type": payload["decision_type"],
        "content": payload["content"],
        "mode": payload["mode"],
        "answer": answer,
        "confidence": field("confidence"),
        "consensus_reached": field("consensus_reached"),
        "reasoning": field("reasoning"),
        "evidence_used": field("evidence_used"),
        "agent_contributions": contributions(task, &result),
        "agent_id": task.assigned_agent,
        "participants": field("participants"),
        "decided_by": field("decided_by"),
        "progress": task.progress,
        "created_at": task.created_at,
        "started_at": task.claimed_at,
        "completed_at": task.completed_at,
        "duration_seconds": duration_seconds(task),
        "error": error,
    })
}

/// The worker's contributions, or the worker's answer as the one contribution.
fn contributions(task: &Task, result: &Value) -> Value {
    match result.get("agent_contributions") {
        Some(Value::Array(list)) => Value::Array(list.clone()),
        _ if task.status == TaskStatus::Completed => json!([{
            "agent_id": task.assigned_agent,
            "answer": result.get("answer").cloned().unwrap_or_else(|| result.clone()),
        }]),
        _ => json!([]),
    }
}

fn duration_seconds(task: &Task) -> Value {
    match (super::millis_of(&task.created_at), task.completed_at.as_deref().and_then(super::millis_of)) {
        (Some(from), Some(to)) => json!(to.saturating_sub(from) as f64 / 1000.0),
        _ => Value::Null,
    }
}

/// `GET /deliberations/{id}/transcript`: the rounds and their contributions in order. A queued deliberation has
/// one round, the worker's decision.
pub fn deliberation_transcript(task: &Task) -> Value {
    let result = task.result.as_ref().map_or(Value::Null, JsonText::to_value);
    // An orchestrated session's rounds so far are in its progress until it ends.
    let so_far = task.progress.as_ref().and_then(|p| p.get("rounds"));
    let rounds = match result.get("rounds").or(so_far) {
        Some(Value::Array(rounds)) => Value::Array(rounds.clone()),
        _ if task.status == TaskStatus::Completed => {
            json!([{"round": 1, "phase": "decision", "contributions": contributions(task, &result)}])
        }
        _ => json!([]),
    };
    json!({
        "request_id": request_id_of(&task.task_id),
        "task_id": task.task_id,
        "status": deliberation_status(task),
        "content": task.payload.to_value()["content"],
        "rounds": rounds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_task_ids_share_their_digits() {
        let task = TaskId::generate();
        let request = request_id_of(&task);
        assert!(request.starts_with("req_") && request.len() == 36);
        assert_eq!(task_id_of(&request).unwrap(), task);
        assert_eq!(task_id_of(task.as_str()).unwrap(), task);
        assert_eq!(task_id_of("req_nothex").unwrap_err().field, "request_id");
    }

    #[test]
    fn modes_follow_aragoras_flags() {
        let request = |mode: Option<&str>, is_async: Option<bool>| DeliberationRequest {
            content: "q".into(),
            decision_type: None,
            is_async,
            mode: mode.map(str::to_string),
            priority: None,
            required_capabilities: None,
            timeout_seconds: None,
            metadata: None,
            context: None,
            config: None,
            agents: None,
            rounds: None,
            decide: None,
            strategy: None,
            judge_capabilities: None,
            round_timeout_seconds: None,
        };
        assert_eq!(request(None, Some(true)).mode().unwrap(), DeliberationMode::Queued);
        assert_eq!(request(Some("async"), None).mode().unwrap(), DeliberationMode::Queued);
        assert_eq!(request(None, None).mode().unwrap(), DeliberationMode::Sync);
        assert_eq!(request(Some("orchestrated"), None).mode().unwrap(), DeliberationMode::Orchestrated);
        assert_eq!(request(Some("later"), None).mode().unwrap_err().field, "mode");
        let task = request(None, Some(true)).into_task(DeliberationMode::Queued).unwrap();
        assert_eq!(task.required_capabilities, ["deliberation"]);
        assert_eq!(task.payload.unwrap().to_value()["decision_type"], "debate");
    }

    fn said(slot: u32, answer: Value) -> Contribution {
        Contribution {
            slot,
            agent_id: format!("a-{slot}"),
            answer,
            confidence: None,
            reasoning: None,
            task_id: String::new(),
        }
    }

    #[test]
    fn votes_compare_trimmed_lower_case_text_and_count_shares() {
        let votes = [said(0, json!("Yes")), said(1, json!(" yes ")), said(2, json!("no"))];
        let verdict = decide_by_vote(DecisionRule::Majority, &votes);
        assert_eq!(verdict.answer, json!("Yes"), "the first spelling given stands for its answer");
        assert!(verdict.consensus_reached);
        assert!((verdict.confidence - 2.0 / 3.0).abs() < 1e-9);
        assert!(!decide_by_vote(DecisionRule::Unanimous, &votes).consensus_reached);
        let split = [said(0, json!("a")), said(1, json!("b"))];
        let verdict = decide_by_vote(DecisionRule::Majority, &split);
        assert_eq!(verdict.answer, json!("a"), "a tie goes to the earliest slot");
        assert!(!verdict.consensus_reached, "half is not a majority");
        assert!(
            decide_by_vote(DecisionRule::Unanimous, &[said(0, json!({"x": 1})), said(1, json!({"x": 1}))])
                .consensus_reached
        );
    }
}
