//! Deliberations (DESIGN §10) in their queued form: a request for a vetted decision becomes one ordinary task of
//! type `deliberation` that a deliberation worker claims and completes with the decision. The request id and the
//! task id share their 32 hex digits (`req_…` / `task_…`), so either finds the session without an index, and a
//! session is read from its task: `queued` while pending, `running` while claimed or running, then the decision.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Priority, SubmitRequest, Task, TaskId, TaskStatus, ValidationError};

/// The task type of a queued deliberation.
pub const DELIBERATION_TASK_TYPE: &str = "deliberation";

/// Longest a synchronous `POST /deliberations` holds its request open, whatever `timeout_seconds` says.
pub const MAX_SYNC_WAIT_SECONDS: u32 = 600;

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

    /// The task that carries the deliberation to a worker: payload `{content, decision_type, mode, context,
    /// config}`.
    pub fn into_task(self, mode: DeliberationMode) -> Result<SubmitRequest, ValidationError> {
        if self.content.trim().is_empty() {
            return Err(ValidationError::new("content", "must not be empty"));
        }
        let decision_type = self.decision_type.unwrap_or_else(|| "debate".to_string());
        if decision_type.trim().is_empty() || decision_type.chars().count() > 64 {
            return Err(ValidationError::new("decision_type", "must be 1 to 64 characters"));
        }
        let mode = match mode {
            DeliberationMode::Queued => "async",
            DeliberationMode::Sync => "sync",
            DeliberationMode::Orchestrated => "orchestrated",
        };
        let mut payload = json!({"content": self.content, "decision_type": decision_type, "mode": mode});
        for (name, value) in [("context", self.context), ("config", self.config)] {
            if let Some(value) = value {
                payload[name] = value;
            }
        }
        Ok(SubmitRequest {
            task_type: DELIBERATION_TASK_TYPE.to_string(),
            payload: Some(payload),
            required_capabilities: self.required_capabilities.unwrap_or_else(|| vec!["deliberation".to_string()]),
            priority: self.priority,
            timeout_seconds: self.timeout_seconds,
            metadata: self.metadata,
            ..SubmitRequest::default()
        })
    }
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
        TaskStatus::Failed => "failed",
        TaskStatus::Timeout => "timeout",
        TaskStatus::Cancelled if task.payload["mode"] == "sync" => "timeout",
        TaskStatus::Cancelled => "failed",
    }
}

/// `GET /deliberations/{id}`: the session with the worker's decision once there is one (`answer`, `confidence`,
/// `consensus_reached`, `reasoning`, `agent_contributions`, `evidence_used` from the task's result; a result that
/// is not an object is the `answer`).
pub fn deliberation_view(task: &Task) -> Value {
    let status = deliberation_status(task);
    let result = task.result.clone().unwrap_or(Value::Null);
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
        "decision_type": task.payload["decision_type"],
        "content": task.payload["content"],
        "mode": task.payload["mode"],
        "answer": answer,
        "confidence": field("confidence"),
        "consensus_reached": field("consensus_reached"),
        "reasoning": field("reasoning"),
        "evidence_used": field("evidence_used"),
        "agent_contributions": contributions(task, &result),
        "agent_id": task.assigned_agent,
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
    let parse = |t: &str| chrono::DateTime::parse_from_rfc3339(t).ok();
    match (parse(&task.created_at), task.completed_at.as_deref().and_then(parse)) {
        (Some(from), Some(to)) => json!((to - from).num_milliseconds() as f64 / 1000.0),
        _ => Value::Null,
    }
}

/// `GET /deliberations/{id}/transcript`: the rounds and their contributions in order. A queued deliberation has
/// one round, the worker's decision.
pub fn deliberation_transcript(task: &Task) -> Value {
    let result = task.result.clone().unwrap_or(Value::Null);
    let rounds = match result.get("rounds") {
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
        "content": task.payload["content"],
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
        };
        assert_eq!(request(None, Some(true)).mode().unwrap(), DeliberationMode::Queued);
        assert_eq!(request(Some("async"), None).mode().unwrap(), DeliberationMode::Queued);
        assert_eq!(request(None, None).mode().unwrap(), DeliberationMode::Sync);
        assert_eq!(request(Some("orchestrated"), None).mode().unwrap(), DeliberationMode::Orchestrated);
        assert_eq!(request(Some("later"), None).mode().unwrap_err().field, "mode");
        let task = request(None, Some(true)).into_task(DeliberationMode::Queued).unwrap();
        assert_eq!(task.required_capabilities, ["deliberation"]);
        assert_eq!(task.payload.unwrap()["decision_type"], "debate");
    }
}
