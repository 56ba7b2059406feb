//! Tasks: the record the scheduler keeps (`Task`), what clients submit (`SubmitRequest`, validated into
//! `NewTask`), and the statuses of the state machine of DESIGN §4.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{
    CapabilitySet, JsonText, JsonWriter, MAX_METADATA_BYTES, MAX_PAYLOAD_BYTES, MAX_RETRIES_LIMIT,
    MAX_TASK_CAPABILITIES, Priority, TIMEOUT_SECONDS_RANGE, ValidationError, check_json_size,
};

/// A task id: `task_` + 32 lower-case hex digits of a UUIDv7. Opaque: nothing orders by it.
// Held inline (the id's length is fixed): the store keeps a task's id in several indexes and every answer copies
// it, and a `String` made each of those copies an allocation. Every id is checked where it is made (`generate`,
// `parse`, deserialising), so the bytes are always ASCII. Opaque to clients; inside, the stores' indexes sort by it
// as a tiebreak, and the bytes order as the text does.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, utoipa::ToSchema)]
#[schema(value_type = String)]
pub struct TaskId([u8; TaskId::LEN]);

impl TaskId {
    /// The length of every id: `task_` and 32 hex digits.
    const LEN: usize = 37;

    /// A fresh id.
    pub fn generate() -> Self {
        // UUID v7 from the thread's generator: `Uuid::now_v7` asks the kernel for its random bits on every id.
        let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let id = uuid::Builder::from_unix_timestamp_millis(ms, &rand::random::<[u8; 10]>()).into_uuid();
        let mut bytes = [0; Self::LEN];
        bytes[..5].copy_from_slice(b"task_");
        id.simple().encode_lower(&mut bytes[5..]);
        TaskId(bytes)
    }

    /// Parses an id from a path or body; errors name `field`.
    pub fn parse(field: &str, text: &str) -> Result<Self, ValidationError> {
        let ok = text.len() == Self::LEN
            && text.starts_with("task_")
            && text[5..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        match text.as_bytes().try_into() {
            Ok(bytes) if ok => Ok(TaskId(bytes)),
            _ => Err(ValidationError::new(field, "a task id is task_ followed by 32 lower-case hex digits")),
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("a task id is ASCII: checked where it was made")
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TaskId").field(&self.as_str()).finish()
    }
}

impl Serialize for TaskId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for TaskId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        TaskId::parse("task_id", &text).map_err(|error| serde::de::Error::custom(error.message))
    }
}

/// The task state machine (DESIGN §4). Terminal states change only by a manual retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Waiting for an agent.
    Pending,
    /// A lease is granted; the agent has not reported starting.
    Claimed,
    /// The agent started (start call, progress report, or a heartbeat listing it).
    Running,
    /// Done, with a result.
    Completed,
    /// Failed for good (retries exhausted or not requested).
    Failed,
    /// Cancelled by its submitter or an admin.
    Cancelled,
    /// Its last attempt timed out with no retries left.
    Timeout,
}

impl TaskStatus {
    /// All statuses, for counters.
    pub const ALL: [TaskStatus; 7] = [
        TaskStatus::Pending,
        TaskStatus::Claimed,
        TaskStatus::Running,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
        TaskStatus::Timeout,
    ];

    /// Whether the status is final (until a manual retry).
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled | TaskStatus::Timeout)
    }

    /// Whether an agent holds a lease in this status.
    pub fn is_leased(self) -> bool {
        matches!(self, TaskStatus::Claimed | TaskStatus::Running)
    }

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Claimed => "claimed",
            TaskStatus::Running => "running",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
            TaskStatus::Timeout => "timeout",
        }
    }
}

impl std::str::FromStr for TaskStatus {
    type Err = ValidationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        TaskStatus::ALL.into_iter().find(|s| s.as_str() == text).ok_or_else(|| {
            ValidationError::new("status", "must be pending, claimed, running, completed, failed, cancelled or timeout")
        })
    }
}

/// What a failure is blamed on: the task (a poison input) or the agent (feeds its circuit breaker).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailKind {
    /// The task itself failed (does not count against the agent's breaker).
    #[default]
    Task,
    /// The agent failed (counts against its breaker).
    Agent,
}

/// A recorded error: a machine-readable code and a message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskError {
    /// `task_failed`, `timeout`, `agent_lost`, …
    pub code: String,
    /// Human-readable detail.
    pub message: String,
}

/// A task as the API returns it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Task {
    /// The id.
    pub task_id: TaskId,
    /// The id again, for clients of the guide's API.
    pub id: TaskId,
    /// Chosen by the submitter.
    pub task_type: String,
    /// The input (a JSON object ≤ 1 MiB), as the submitter sent it.
    #[schema(value_type = Value)]
    pub payload: JsonText,
    /// Capabilities an agent must all hold.
    pub required_capabilities: CapabilitySet,
    /// Priority.
    pub priority: Priority,
    /// State.
    pub status: TaskStatus,
    /// Submission time (RFC 3339).
    pub created_at: String,
    /// Time of the current attempt's grant.
    pub claimed_at: Option<String>,
    /// Time the current attempt started.
    pub started_at: Option<String>,
    /// Time it reached a terminal state.
    pub completed_at: Option<String>,
    /// The agent holding (or last holding) it.
    pub assigned_agent: Option<String>,
    /// The current lease (absent when none is valid).
    pub lease_id: Option<String>,
    /// Grant number, from 1: a fencing token for downstream systems.
    pub attempt: u32,
    /// Cap on each attempt, counted from `claimed_at`.
    pub timeout_seconds: u32,
    /// Automatic retries allowed.
    pub max_retries: u32,
    /// Automatic retries used.
    pub retries: u32,
    /// Manual retries (`POST /tasks/{id}/retry`).
    pub manual_retries: u32,
    /// The result, once completed, as the agent sent it.
    #[schema(value_type = Option<Value>)]
    pub result: Option<JsonText>,
    /// The failure message, once failed.
    pub error: Option<String>,
    /// The most recent error of any attempt.
    pub last_error: Option<TaskError>,
    /// Free-form metadata (≤ 16 KiB).
    pub metadata: Map<String, Value>,
    /// The strategy that routes it to waiting agents (default: the server's `DEFAULT_STRATEGY`).
    pub strategy: Option<String>,
    /// Scopes idempotent submission with the submitter.
    pub idempotency_key: Option<String>,
    /// The token subject that submitted it.
    pub submitted_by: String,
    /// Not claimable before this time (retry backoff).
    pub available_at: Option<String>,
    /// The last outcome arrived without a lease or agent to fence it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unfenced: bool,
    /// The latest progress report of the running attempt.
    pub progress: Option<Value>,
}

impl Task {
    /// The task's JSON text, the bytes its derived `Serialize` gives (a test holds the two equal).
    pub fn to_json(&self) -> String {
        let mut out = JsonWriter::with_capacity(512 + self.payload.get().len());
        self.write_json(&mut out);
        out.into_string()
    }

    /// Writes [`to_json`](Self::to_json)'s text to `out`, directly: `serde_json` escapes every key of every task it
    /// answers and checks every string byte by byte through its serializer, which made a task's rendering the
    /// largest single part of a claim's and a completion's work. (Text, not a `RawValue`: making one from a
    /// `String` parses it again.)
    pub(crate) fn write_json(&self, out: &mut JsonWriter) {
        out.literal("{\"task_id\":").text(self.task_id.as_str());
        out.literal(",\"id\":").text(self.id.as_str());
        out.literal(",\"task_type\":").text(&self.task_type);
        out.literal(",\"payload\":").literal(self.payload.get());
        out.literal(",\"required_capabilities\":").value(&self.required_capabilities);
        out.literal(",\"priority\":").text(self.priority.as_str());
        out.literal(",\"status\":").text(self.status.as_str());
        out.literal(",\"created_at\":").text(&self.created_at);
        out.literal(",\"claimed_at\":").optional_text(self.claimed_at.as_deref());
        out.literal(",\"started_at\":").optional_text(self.started_at.as_deref());
        out.literal(",\"completed_at\":").optional_text(self.completed_at.as_deref());
        out.literal(",\"assigned_agent\":").optional_text(self.assigned_agent.as_deref());
        out.literal(",\"lease_id\":").optional_text(self.lease_id.as_deref());
        out.literal(",\"attempt\":").value(&self.attempt);
        out.literal(",\"timeout_seconds\":").value(&self.timeout_seconds);
        out.literal(",\"max_retries\":").value(&self.max_retries);
        out.literal(",\"retries\":").value(&self.retries);
        out.literal(",\"manual_retries\":").value(&self.manual_retries);
        out.literal(",\"result\":").literal(self.result.as_ref().map_or("null", |result| result.get()));
        out.literal(",\"error\":").optional_text(self.error.as_deref());
        out.literal(",\"last_error\":").value(&self.last_error);
        out.literal(",\"metadata\":").value(&self.metadata);
        out.literal(",\"strategy\":").optional_text(self.strategy.as_deref());
        out.literal(",\"idempotency_key\":").optional_text(self.idempotency_key.as_deref());
        out.literal(",\"submitted_by\":").text(&self.submitted_by);
        out.literal(",\"available_at\":").optional_text(self.available_at.as_deref());
        if self.unfenced {
            out.literal(",\"unfenced\":true");
        }
        out.literal(",\"progress\":").value(&self.progress).literal("}");
    }
}

/// `POST /tasks` (and `submit_task`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// The task type.
    pub task_type: String,
    /// The input; `{}` when absent.
    #[serde(default)]
    #[schema(value_type = Option<Value>)]
    pub payload: Option<JsonText>,
    /// Capabilities required.
    #[serde(default)]
    pub required_capabilities: Vec<String>,
    /// Priority (default normal).
    #[serde(default)]
    pub priority: Option<Priority>,
    /// Timeout per attempt (default `TASK_TIMEOUT`).
    #[serde(default)]
    pub timeout_seconds: Option<u32>,
    /// Automatic retries (default `MAX_TASK_RETRIES`).
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// Free-form metadata.
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    /// Strategy for routing.
    #[serde(default)]
    pub strategy: Option<String>,
    /// Idempotency key (also accepted as the `Idempotency-Key` header).
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// A validated submission, ready for the store.
#[derive(Clone, Debug, PartialEq)]
pub struct NewTask {
    /// The id the store will use (generated before the store call, so a retried submit can be recognised).
    pub task_id: TaskId,
    /// The task type.
    pub task_type: String,
    /// The input object.
    pub payload: JsonText,
    /// Required capabilities: the signature.
    pub required_capabilities: CapabilitySet,
    /// Priority.
    pub priority: Priority,
    /// Timeout per attempt.
    pub timeout_seconds: u32,
    /// Automatic retries.
    pub max_retries: u32,
    /// Metadata.
    pub metadata: Map<String, Value>,
    /// Strategy name.
    pub strategy: Option<String>,
    /// Idempotency key.
    pub idempotency_key: Option<String>,
    /// Token subject of the submitter.
    pub submitted_by: String,
    /// sha256 of the canonical request, compared on an idempotent replay; empty without an idempotency key
    /// (nothing compares it then, and hashing a copy of the payload on every submit is not free).
    pub fingerprint: String,
}

impl NewTask {
    /// The task as it is first recorded (pending, nothing tried yet), and the fingerprint its idempotency key keeps.
    pub fn into_pending(self, created_at: String) -> (Task, String) {
        let task = Task {
            task_id: self.task_id.clone(),
            id: self.task_id,
            task_type: self.task_type,
            payload: self.payload,
            required_capabilities: self.required_capabilities,
            priority: self.priority,
            status: TaskStatus::Pending,
            created_at,
            claimed_at: None,
            started_at: None,
            completed_at: None,
            assigned_agent: None,
            lease_id: None,
            attempt: 0,
            timeout_seconds: self.timeout_seconds,
            max_retries: self.max_retries,
            retries: 0,
            manual_retries: 0,
            result: None,
            error: None,
            last_error: None,
            metadata: self.metadata,
            strategy: self.strategy,
            idempotency_key: self.idempotency_key,
            submitted_by: self.submitted_by,
            available_at: None,
            unfenced: false,
            progress: None,
        };
        (task, self.fingerprint)
    }
}

impl SubmitRequest {
    /// Validates the request and fills the defaults; errors name the field.
    pub fn validate(
        self,
        submitted_by: &str,
        default_timeout: u32,
        default_retries: u32,
    ) -> Result<NewTask, ValidationError> {
        let task_type = self.task_type.trim().to_string();
        if task_type.is_empty()
            || task_type.len() > 128
            || !task_type.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        {
            return Err(ValidationError::new("task_type", "must be 1 to 128 characters of A-Z a-z 0-9 . _ : -"));
        }
        let payload = match self.payload {
            None => JsonText::empty_object(),
            Some(null) if null.is_null() => JsonText::empty_object(),
            Some(object) if object.is_object() => object,
            Some(_) => return Err(ValidationError::new("payload", "must be a JSON object")),
        };
        check_json_size("payload", &payload, MAX_PAYLOAD_BYTES)?;
        let required =
            CapabilitySet::parse("required_capabilities", &self.required_capabilities, MAX_TASK_CAPABILITIES)?;
        let timeout_seconds = self.timeout_seconds.unwrap_or(default_timeout);
        if !TIMEOUT_SECONDS_RANGE.contains(&timeout_seconds) {
            return Err(ValidationError::new("timeout_seconds", "must be 1 to 86400"));
        }
        let max_retries = self.max_retries.unwrap_or(default_retries);
        if max_retries > MAX_RETRIES_LIMIT {
            return Err(ValidationError::new("max_retries", "must be 0 to 100"));
        }
        let metadata = self.metadata.unwrap_or_default();
        check_json_size("metadata", &metadata, MAX_METADATA_BYTES)?;
        if let Some(strategy) = &self.strategy
            && !super::is_plugin_name(strategy)
        {
            return Err(ValidationError::new(
                "strategy",
                "must be a plugin name: 1 to 64 characters of A-Z a-z 0-9 _ . -",
            ));
        }
        if let Some(key) = &self.idempotency_key
            && (key.is_empty() || key.len() > 256)
        {
            return Err(ValidationError::new("idempotency_key", "must be 1 to 256 characters"));
        }
        let priority = self.priority.unwrap_or_default();
        let fingerprint = match &self.idempotency_key {
            None => String::new(),
            // The SHA-256 of the request's canonical JSON: these fields in alphabetical order, the payload parsed so
            // that its keys come out sorted, byte for byte what the earlier `json!({...}).to_string()` of a sorted
            // map gave (fingerprints stored in a shared Redis stay comparable), written without a copy of the rest.
            Some(_) => {
                let mut out = JsonWriter::with_capacity(256 + payload.get().len());
                out.literal("{\"max_retries\":").value(&max_retries);
                out.literal(",\"metadata\":").value(&metadata);
                out.literal(",\"payload\":").value(&payload.to_value());
                out.literal(",\"priority\":").text(priority.as_str());
                out.literal(",\"required_capabilities\":").value(&required);
                out.literal(",\"strategy\":").optional_text(self.strategy.as_deref());
                out.literal(",\"task_type\":").text(&task_type);
                out.literal(",\"timeout_seconds\":").value(&timeout_seconds);
                out.literal("}");
                super::sha256_hex(out.as_bytes())
            }
        };
        Ok(NewTask {
            task_id: TaskId::generate(),
            task_type,
            payload,
            required_capabilities: required,
            priority,
            timeout_seconds,
            max_retries,
            metadata,
            strategy: self.strategy,
            idempotency_key: self.idempotency_key,
            submitted_by: submitted_by.to_string(),
            fingerprint,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task as a fresh submit leaves it: every optional field absent.
    fn bare_task() -> Task {
        let new = SubmitRequest { task_type: "code".into(), ..Default::default() }.validate("me", 300, 3).unwrap();
        new.into_pending("2026-12-06T08:00:00.000Z".into()).0
    }

    #[test]
    fn a_task_is_written_as_its_serialize_writes_it() {
        // Strings a client chooses, each with one thing JSON escapes (a quote, a backslash, a control character with
        // a short escape and one without), or non-ASCII text and DEL, which are written as they are.
        let (quote, backslash, newline, control, plain) =
            ("a \"quoted\" name", "C:\\path", "two\nlines", "bell\u{7}", "é ✓ \u{7f}");
        // The ends of the escaped range, and the other short escapes.
        let (lowest, highest, tab_return) = ("nul\u{0}", "unit\u{1f}", "a\tb\rc");
        let id = TaskId::generate();
        // Every field named (no `..`): a new field does not compile here until this test writes it.
        let full = Task {
            task_id: id.clone(),
            id,
            task_type: "code.v2:x-y".into(),
            payload: JsonText::parse(r#"{"z": [1, {"b": "\u00e9\n"}], "a": null}"#.to_string()).unwrap(),
            required_capabilities: CapabilitySet::parse("c", &["python".into(), "gpu".into()], 8).unwrap(),
            priority: Priority::Critical,
            status: TaskStatus::Failed,
            created_at: lowest.into(),
            claimed_at: Some(highest.into()),
            started_at: Some(tab_return.into()),
            completed_at: Some("2026-12-06T08:00:03.000Z".into()),
            assigned_agent: Some(quote.into()),
            lease_id: Some("0123456789abcdef0123456789abcdef".into()),
            attempt: 4_000_000_000,
            timeout_seconds: 86_400,
            max_retries: 100,
            retries: 2,
            manual_retries: 1,
            result: Some(JsonText::parse("[1, 2.50, \"x\"]".to_string()).unwrap()),
            error: Some(backslash.into()),
            last_error: Some(TaskError { code: "task_failed".into(), message: newline.into() }),
            metadata: serde_json::json!({"team": control, "n": 1.5}).as_object().unwrap().clone(),
            strategy: Some(newline.into()),
            idempotency_key: Some(control.into()),
            submitted_by: plain.into(),
            available_at: Some("2026-12-06T08:01:00.000Z".into()),
            unfenced: true,
            progress: Some(serde_json::json!({"done": 0.5, "note": newline})),
        };
        for task in [bare_task(), full] {
            assert_eq!(task.to_json(), serde_json::to_string(&task).unwrap());
        }
    }

    #[test]
    fn ids_have_the_documented_shape() {
        let id = TaskId::generate();
        assert!(TaskId::parse("task_id", id.as_str()).is_ok());
        assert!(TaskId::parse("task_id", "task_XYZ").is_err());
    }

    #[test]
    fn validation_names_the_field_and_fills_defaults() {
        let bad = SubmitRequest { task_type: "code".into(), timeout_seconds: Some(0), ..Default::default() };
        assert_eq!(bad.validate("me", 300, 3).unwrap_err().field, "timeout_seconds");
        let ok = SubmitRequest { task_type: "code".into(), ..Default::default() }.validate("me", 300, 3).unwrap();
        assert_eq!((ok.timeout_seconds, ok.max_retries, ok.priority), (300, 3, Priority::Normal));
        assert_eq!(ok.payload.get(), "{}");
        let array =
            SubmitRequest { task_type: "x".into(), payload: Some(serde_json::json!([1]).into()), ..Default::default() };
        assert_eq!(array.validate("me", 300, 3).unwrap_err().field, "payload");
    }

    #[test]
    fn a_task_id_is_task_and_32_lower_case_hex_digits_wherever_it_is_read() {
        for _ in 0..100 {
            let id = TaskId::generate();
            let text = id.as_str();
            assert!(text.len() == 37 && text.starts_with("task_"), "{text}");
            assert!(text[5..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{text}");
            assert_eq!(TaskId::parse("id", text).unwrap(), id);
            let json = serde_json::to_string(&id).unwrap();
            assert_eq!((json.clone(), serde_json::from_str::<TaskId>(&json).unwrap()), (format!("\"{text}\""), id));
        }
        let good = "task_0123456789abcdef0123456789abcdef";
        let wrong = [
            "task_0123456789ABCDEF0123456789abcdef",
            "task_0123456789abcdef0123456789abcde",
            "task_0123456789abcdef0123456789abcdef0",
            "Task_0123456789abcdef0123456789abcdef",
            "task_0123456789abcdef0123456789abcdeg",
            "task_0123456789abcdef0123456789abcdé",
        ];
        assert!(TaskId::parse("id", good).is_ok());
        for text in wrong {
            assert!(TaskId::parse("id", text).is_err(), "{text}");
            assert!(serde_json::from_str::<TaskId>(&format!("\"{text}\"")).is_err(), "{text}");
        }
        // Ordered as their text is (the store's indexes order by it).
        let mut ids: Vec<TaskId> = (0..50).map(|_| TaskId::generate()).collect();
        ids.sort();
        assert!(ids.windows(2).all(|pair| pair[0].as_str() < pair[1].as_str() || pair[0] == pair[1]));
        assert_eq!(format!("{:?}", TaskId::parse("id", good).unwrap()), format!("TaskId({good:?})"));
    }

    #[test]
    fn the_fingerprint_is_the_sorted_json_it_always_was() {
        let request = SubmitRequest {
            task_type: "code".into(),
            // As a client sends it: keys unsorted, spaces.
            payload: Some(JsonText::parse(r#"{"z": [1, {"b": 2, "a": "é\n"}], "a": null}"#.to_string()).unwrap()),
            required_capabilities: vec!["python".into(), "gpu".into()],
            priority: Some(Priority::High),
            metadata: Some(serde_json::from_str(r#"{"team": "x", "cost": 1.5}"#).unwrap()),
            strategy: Some("least_loaded".into()),
            idempotency_key: Some("k".into()),
            ..Default::default()
        };
        // The canonical form before it was written directly: a `json!` map (sorted keys), as text.
        let canonical = |task: &NewTask| {
            let canonical = serde_json::json!({
                "task_type": task.task_type,
                "payload": task.payload,
                "required_capabilities": task.required_capabilities,
                "priority": task.priority,
                "timeout_seconds": task.timeout_seconds,
                "max_retries": task.max_retries,
                "metadata": task.metadata,
                "strategy": task.strategy,
            });
            crate::model::sha256_hex(canonical.to_string().as_bytes())
        };
        let task = request.validate("me", 300, 3).unwrap();
        assert_eq!(task.fingerprint, canonical(&task));
        // No strategy, no metadata, no payload.
        let other = SubmitRequest { task_type: "code".into(), idempotency_key: Some("k".into()), ..Default::default() };
        let other = other.validate("me", 300, 3).unwrap();
        assert_eq!(other.fingerprint, canonical(&other));
        assert_ne!(other.fingerprint, task.fingerprint);
        // Pinned as the build before the fingerprint was written directly computed it: stored keys still replay.
        assert_eq!(other.fingerprint, "eb368f1b873aadaf4ab6715cc8bddfeb71cb1071eb710ef745dade948ec1af32");
    }
}

/// Filters and paging of `GET /tasks`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskFilter {
    /// Only this status.
    pub status: Option<TaskStatus>,
    /// Only this type.
    pub task_type: Option<String>,
    /// Only tasks assigned to this agent.
    pub agent_id: Option<String>,
    /// Page size (≤ 1,000).
    pub limit: usize,
    /// Continue after this cursor (from the previous page).
    pub cursor: Option<String>,
}

/// A page of tasks, newest first.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct TaskPage {
    /// The tasks.
    pub tasks: Vec<Task>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}
