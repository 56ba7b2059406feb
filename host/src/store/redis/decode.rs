//! Decoding script replies into the model: the reply header every script returns (`{'ok'|'err', now, pinned,
//! ...}`), task and agent hashes (field names as `scripts/lib.lua` writes them, read borrowed from the reply), and
//! stream entries (as the compact records the server's consumers read).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use redis::Value;
use serde::Deserialize;
use serde::de::IntoDeserializer;
use serde_json::{Map, Value as Json};

use super::super::{ClaimAnswer, WaitingClaim};
use crate::model::{
    Agent, AgentHealth, AgentStatus, AuditHead, BreakerState, CandidateNumbers, CapabilitySet, CompactStr,
    DecisionRecord, Delivery, DeliveryStatus, EventData, EventKind, EventRecord, GENESIS_HASH, HealthState, JsonText,
    PluginCandidate, PluginHistoryEntry, PluginRecord, Priority, Refusal, RolloutMode, ScheduleRecord, StoreError,
    StoreResult, Task, TaskError, TaskId, TaskStatus, Violation, ViolationStatus, parse_event_id, rfc3339_ms,
};

/// The conflict codes scripts return (`StoreError::Conflict` wants them `'static`).
const CONFLICT_CODES: [&str; 12] = [
    "lease_lost",
    "task_cancelled",
    "task_timeout",
    "outcome_conflict",
    "session_replaced",
    "idempotency_key_reused",
    "invalid_transition",
    "too_many_schedules",
    "too_many_channels",
    "not_a_dead_letter",
    "no_candidate",
    "candidate_changed",
];

/// A decoded reply: the store clock it ran at and the body (or the refusal).
pub(super) struct Reply {
    pub(super) now: u64,
    pub(super) pinned: bool,
    pub(super) body: StoreResult<Vec<Value>>,
}

pub(super) fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("redis: unexpected reply ({what})"))
}

/// A string from a bulk, simple or integer reply; `None` for nil.
pub(super) fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

pub(super) fn array(value: &Value) -> StoreResult<&[Value]> {
    match value {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(&[]),
        other => Err(corrupt(format!("expected an array, got {other:?}"))),
    }
}

pub(super) fn number(value: &Value) -> StoreResult<u64> {
    text(value).and_then(|t| t.parse().ok()).ok_or_else(|| corrupt("expected a number"))
}

/// A hash's fields, borrowed from the reply they came in (a task's two dozen fields are read once each; copying
/// them into owned strings first cost a pair of allocations per field on every task a claim or completion answers).
pub(super) type Fields<'a> = HashMap<Cow<'a, str>, Cow<'a, str>>;

/// A flat field/value list (HGETALL) as a map.
pub(super) fn hash(value: &Value) -> StoreResult<Fields<'_>> {
    let items = array(value)?;
    let mut map = HashMap::with_capacity(items.len() / 2);
    for pair in items.chunks(2) {
        if let [field, value] = pair {
            map.insert(text_ref(field).unwrap_or_default(), text_ref(value).unwrap_or_default());
        }
    }
    Ok(map)
}

/// A string reply as a shared string (a waiter token or agent id), made from the reply without a copy between.
pub(super) fn shared_text(value: &Value) -> Option<Arc<str>> {
    text_ref(value).map(|text| Arc::from(&*text))
}

/// [`text`] without a copy where the reply's bytes are already text.
fn text_ref(value: &Value) -> Option<Cow<'_, str>> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes)),
        Value::SimpleString(s) => Some(Cow::Borrowed(s)),
        Value::Int(n) => Some(Cow::Owned(n.to_string())),
        Value::VerbatimString { text, .. } => Some(Cow::Borrowed(text)),
        _ => None,
    }
}

/// The header and body of a script reply.
pub(super) fn reply(value: Value) -> StoreResult<Reply> {
    let Value::Array(mut items) = value else { return Err(corrupt("a script reply is an array")) };
    if items.len() < 3 {
        return Err(corrupt("a script reply has a header"));
    }
    let mut rest = items.split_off(3);
    let status = text(&items[0]).unwrap_or_default();
    let now = number(&items[1])?;
    let pinned = text(&items[2]).as_deref() == Some("1");
    let body = if status == "ok" {
        Ok(rest)
    } else {
        let mut parts = rest.drain(..).map(|v| text(&v).unwrap_or_default());
        let (kind, code, message) =
            (parts.next().unwrap_or_default(), parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
        Err(error(&kind, &code, message))
    };
    Ok(Reply { now, pinned, body })
}

/// A refusal as the scripts spell it: kind, code, message (the id, for not-found kinds).
pub(super) fn error(kind: &str, code: &str, message: String) -> StoreError {
    match kind {
        "task_not_found" => match TaskId::parse("task_id", &message) {
            Ok(id) => StoreError::TaskNotFound(id),
            Err(_) => corrupt("task id"),
        },
        "agent_not_found" => StoreError::AgentNotFound(message),
        "plugin_not_found" => StoreError::PluginNotFound(message),
        "too_many_signatures" => StoreError::TooManySignatures(message.parse().unwrap_or(0)),
        "too_many_pending" => StoreError::TooManyPending(message.parse().unwrap_or(0)),
        "conflict" => {
            let code = CONFLICT_CODES.iter().find(|c| **c == code).copied().unwrap_or("conflict");
            StoreError::conflict(code, message)
        }
        other => corrupt(format!("unknown refusal {other}")),
    }
}

fn field<'a>(map: &'a Fields<'_>, name: &str) -> Option<&'a str> {
    map.get(name).map(|value| &**value)
}

fn parsed<T: std::str::FromStr + Default>(map: &Fields<'_>, name: &str) -> T {
    field(map, name).and_then(|v| v.parse().ok()).unwrap_or_default()
}

fn time(map: &Fields<'_>, name: &str) -> Option<String> {
    field(map, name).and_then(|v| v.parse::<u64>().ok()).map(rfc3339_ms)
}

fn parse_json(map: &Fields<'_>, name: &str) -> StoreResult<Option<Json>> {
    field(map, name).map(|raw| serde_json::from_str(raw).map_err(|e| corrupt(format!("{name}: {e}")))).transpose()
}

/// A payload or result, kept as its stored text (checked, not parsed into a tree).
fn json_text(map: &Fields<'_>, name: &str) -> StoreResult<Option<JsonText>> {
    field(map, name)
        .map(|raw| JsonText::parse(raw.to_string()).map_err(|e| corrupt(format!("{name}: {e}"))))
        .transpose()
}

fn object(map: &Fields<'_>, name: &str) -> StoreResult<Map<String, Json>> {
    match parse_json(map, name)? {
        Some(Json::Object(object)) => Ok(object),
        _ => Ok(Map::new()),
    }
}

fn capabilities(text: &str) -> CapabilitySet {
    CapabilitySet::from_normalized(text.split(',').filter(|c| !c.is_empty()).map(str::to_string).collect())
}

/// A unit variant of `T` from its serde name, read in place (no JSON string built for it).
fn parse_enum<T: serde::de::DeserializeOwned>(value: &str) -> StoreResult<T> {
    T::deserialize(value.into_deserializer())
        .map_err(|_: serde::de::value::Error| corrupt(format!("unknown value {value}")))
}

fn task_id(text: &str) -> StoreResult<TaskId> {
    TaskId::parse("task_id", text).map_err(|_| corrupt(format!("task id {text}")))
}

/// A task from its hash.
pub(super) fn task(value: &Value) -> StoreResult<Task> {
    let map = hash(value)?;
    let id = task_id(field(&map, "id").unwrap_or_default())?;
    let level: i64 = parsed(&map, "prio");
    let last_error = match (field(&map, "le_code"), field(&map, "le_msg")) {
        (Some(code), Some(message)) => Some(TaskError { code: code.to_string(), message: message.to_string() }),
        _ => None,
    };
    Ok(Task {
        task_id: id.clone(),
        id,
        task_type: field(&map, "type").unwrap_or_default().to_string(),
        payload: json_text(&map, "payload")?.unwrap_or_else(JsonText::empty_object),
        required_capabilities: capabilities(field(&map, "caps").unwrap_or_default()),
        priority: Priority::from_level(level).ok_or_else(|| corrupt("priority"))?,
        status: field(&map, "status").unwrap_or_default().parse::<TaskStatus>().map_err(|_| corrupt("status"))?,
        created_at: time(&map, "created").unwrap_or_default(),
        claimed_at: time(&map, "claimed"),
        started_at: time(&map, "started"),
        completed_at: time(&map, "completed"),
        assigned_agent: field(&map, "agent").map(str::to_string),
        lease_id: field(&map, "lease").map(str::to_string),
        attempt: parsed(&map, "attempt"),
        timeout_seconds: parsed(&map, "timeout"),
        max_retries: parsed(&map, "max_retries"),
        retries: parsed(&map, "retries"),
        manual_retries: parsed(&map, "manual"),
        result: json_text(&map, "result")?,
        error: field(&map, "error").map(str::to_string),
        last_error,
        metadata: object(&map, "metadata")?,
        strategy: field(&map, "strategy").map(str::to_string),
        idempotency_key: field(&map, "idem").map(str::to_string),
        submitted_by: field(&map, "by").unwrap_or_default().to_string(),
        available_at: time(&map, "avail"),
        unfenced: field(&map, "unfenced") == Some("1"),
        progress: parse_json(&map, "progress")?,
    })
}

/// An optional task: absent when the reply has no such item.
pub(super) fn maybe_task(body: &[Value], at: usize) -> StoreResult<Option<Task>> {
    body.get(at).filter(|v| !matches!(v, Value::Nil)).map(task).transpose()
}

/// Tasks from an array of hashes.
pub(super) fn tasks(value: &Value) -> StoreResult<Vec<Task>> {
    array(value)?.iter().map(task).collect()
}

/// An agent from its view: `{hash, sorted lease task ids, last heartbeat ms}`.
pub(super) fn agent(value: &Value) -> StoreResult<Agent> {
    let parts = array(value)?;
    // A fourth part, when present, is the agent's refusal (read_agents); the caller reads it.
    let [record, leases, beat, ..] = parts else { return Err(corrupt("an agent view has three parts")) };
    let map = hash(record)?;
    let current_task_ids =
        array(leases)?.iter().map(|v| task_id(&text(v).unwrap_or_default())).collect::<StoreResult<Vec<TaskId>>>()?;
    Ok(Agent {
        agent_id: field(&map, "id").unwrap_or_default().to_string(),
        capabilities: capabilities(field(&map, "caps").unwrap_or_default()),
        status: parse_enum::<AgentStatus>(field(&map, "status").unwrap_or_default())?,
        model: field(&map, "model").unwrap_or_default().to_string(),
        provider: field(&map, "provider").unwrap_or_default().to_string(),
        metadata: object(&map, "metadata")?,
        max_concurrent_tasks: parsed(&map, "max"),
        in_flight: current_task_ids.len() as u32,
        tasks_completed: parsed(&map, "completed"),
        tasks_failed: parsed(&map, "failed"),
        avg_latency_ms: parsed(&map, "latency"),
        registered_at: time(&map, "registered").unwrap_or_default(),
        last_heartbeat: rfc3339_ms(number(beat)?),
        last_assigned_at: time(&map, "assigned"),
        current_task_ids,
        health_url: field(&map, "health_url").map(str::to_string),
        paused: field(&map, "paused") == Some("1"),
        session_id: field(&map, "session").unwrap_or_default().to_string(),
    })
}

/// A claim's reply (lib.lua `claim_reply`): `{task views, refusal|'', '1' if waiting, promoted ids}`.
pub(super) fn claim_answer(value: &Value) -> StoreResult<ClaimAnswer> {
    let parts = array(value)?;
    let [granted, refusal, waiting, promoted] = parts else { return Err(corrupt("a claim reply has four parts")) };
    let refusal = text(refusal).filter(|r| !r.is_empty()).map(|r| parse_enum::<Refusal>(&r)).transpose()?;
    let promoted =
        array(promoted)?.iter().map(|v| task_id(&text(v).unwrap_or_default())).collect::<StoreResult<_>>()?;
    Ok(ClaimAnswer { tasks: tasks(granted)?, refusal, waiting: text(waiting).as_deref() == Some("1"), promoted })
}

/// Waiting claims of an offer (lib.lua `offer`): each `{token, agent, seq, in flight, last heartbeat, numbers}`, the
/// numbers as `P agent-numbers` holds them (`status|paused|health|breaker|opened|trial|max|completed|failed|latency|
/// last assigned|gate`, docs/REDIS.md; the gate is the offer's, and servers of older builds write no gate).
pub(super) fn waiting_claims(value: &Value) -> StoreResult<Vec<WaitingClaim>> {
    array(value)?
        .iter()
        .map(|claim| {
            let parts = array(claim)?;
            let [token, agent, seq, in_flight, beat, numbers] = parts else {
                return Err(corrupt("a waiting claim of an offer has six parts"));
            };
            // Counts come as integers, places and heartbeats as the text Redis stored.
            let number = |value: &Value| match value {
                Value::Int(n) => u64::try_from(*n).unwrap_or(0),
                other => text_ref(other).and_then(|t| t.parse::<u64>().ok()).unwrap_or(0),
            };
            let numbers = text_ref(numbers).unwrap_or_default();
            let mut part = numbers.split('|');
            let mut next = || part.next().unwrap_or_default();
            let (_status, _paused, health, _breaker, _opened, _trial) =
                (next(), next(), next(), next(), next(), next());
            let (max, completed, failed, latency, assigned) = (next(), next(), next(), next(), next());
            Ok(WaitingClaim {
                token: shared_text(token).unwrap_or_default(),
                agent_id: shared_text(agent).unwrap_or_default(),
                seq: number(seq),
                numbers: CandidateNumbers {
                    in_flight: number(in_flight) as u32,
                    max_concurrent: max.parse().unwrap_or(0),
                    completed: completed.parse().unwrap_or(0),
                    failed: failed.parse().unwrap_or(0),
                    avg_latency_ms: latency.parse().unwrap_or(0.0),
                    last_heartbeat_ms: number(beat),
                    last_assigned_ms: assigned.parse().ok(),
                    health: parse_enum::<HealthState>(health).unwrap_or_default(),
                },
            })
        })
        .collect()
}

/// An agent's health and breaker from its hash.
pub(super) fn health(value: &Value) -> StoreResult<AgentHealth> {
    let map = hash(value)?;
    Ok(AgentHealth {
        agent_id: field(&map, "id").unwrap_or_default().to_string(),
        status: parse_enum::<HealthState>(field(&map, "h_status").unwrap_or("unknown"))?,
        last_check: time(&map, "h_check"),
        consecutive_failures: parsed(&map, "h_fails"),
        latency_ms: field(&map, "h_latency").and_then(|v| v.parse().ok()),
        message: field(&map, "h_message").unwrap_or_default().to_string(),
        breaker: parse_enum::<BreakerState>(field(&map, "b_state").unwrap_or("closed"))?,
        breaker_opened_at: time(&map, "b_opened").filter(|_| field(&map, "b_state").is_some_and(|b| b != "closed")),
        breaker_failures: parsed(&map, "b_failures"),
        breaker_trial: field(&map, "b_trial").filter(|t| !t.is_empty()).map(str::to_string),
    })
}

/// The one field of a compact stream entry and the separator of its parts (decision 0030): `e` holds
/// `n|type|time|server|task|agent|data`. Only the data, last, may contain the separator.
const COMPACT_FIELD: &[u8] = b"e";
const COMPACT_SEPARATOR: char = '|';

/// The value of a compact entry's one field, when the entry is compact (an entry of separate fields is not).
fn compact_value(fields: &[Value]) -> Option<&Value> {
    match fields {
        [Value::BulkString(name), value] if name.as_slice() == COMPACT_FIELD => Some(value),
        _ => None,
    }
}

/// A stream entry's place, read apart from the event it holds: its id's two numbers and its event number `n`
/// (`None` when absent). An entry this build cannot decode (a newer server's event type) still has one.
pub(super) fn event_place(entry: &Value) -> Option<((u64, u64), Option<u64>)> {
    let parts = array(entry).ok()?;
    let [id, fields] = parts else { return None };
    let id = parse_event_id(&text(id)?)?;
    let n = array(fields).ok().and_then(|fields| match compact_value(fields) {
        // The digits before the first separator, read from the bytes: the rest (the data) is checked once, later.
        Some(Value::BulkString(compact)) => {
            let digits = compact.split(|&byte| byte == COMPACT_SEPARATOR as u8).next()?;
            std::str::from_utf8(digits).ok()?.parse().ok()
        }
        Some(_) => None,
        // Read where it stands (`n` is written first) rather than through `hash`, which would copy every field, the
        // event's data included, once more for each event the reader passes.
        None => fields.chunks(2).find_map(|pair| match pair {
            [Value::BulkString(name), value] if name.as_slice() == b"n" => text(value)?.parse().ok(),
            _ => None,
        }),
    });
    Some((id, n))
}

/// The audit log's end from `seq, hash` (nothing stored: the empty log's end).
pub(super) fn audit_head(body: &[Value]) -> AuditHead {
    let seq = body.first().and_then(text).and_then(|t| t.parse().ok()).unwrap_or(0);
    let hash = body.get(1).and_then(text).filter(|h| !h.is_empty()).unwrap_or_else(|| GENESIS_HASH.to_string());
    AuditHead { seq, hash }
}

/// A stream entry `[id, [field, value, ...]]`, compact (one field, decision 0030) or of separate fields, as the
/// record this server's consumers read (decision 0025; its number is [`event_place`]'s): the parts read where they
/// stand, ids kept inline, the server's id shared with the entries before it from the same server (`servers`), and
/// the data of the kinds every task's way emits typed when it has exactly the shape those kinds write (anything else
/// stays JSON), so that `to_event` gives back the stored event.
/// Every server of a fleet reads every event of the fleet: this is the work each of them does per event. A replay
/// (`events_after`) makes its wire events from the same records.
pub(super) fn event_record(entry: &Value, servers: &mut ServerIds) -> StoreResult<EventRecord> {
    let parts = array(entry)?;
    let [id, fields] = parts else { return Err(corrupt("a stream entry is [id, fields]")) };
    let id = text_ref(id).unwrap_or_default();
    let (ms, seq) = parse_event_id(&id).ok_or_else(|| corrupt("a stream entry's id"))?;
    let fields = array(fields)?;
    // type, time, server, task, agent, data: borrowed from the compact field's text or from the fields themselves,
    // read as `text` reads them (bytes that are not UTF-8 replaced, not dropped).
    let compact = compact_value(fields).and_then(text_ref);
    let mut parts: [Option<Cow<'_, str>>; 6] = Default::default();
    match &compact {
        Some(text) => {
            let mut split = text.splitn(parts.len() + 1, COMPACT_SEPARATOR).skip(1);
            for part in &mut parts {
                *part = split.next().map(Cow::Borrowed);
            }
            if parts[5].is_none() {
                return Err(corrupt("a compact stream entry has seven parts"));
            }
        }
        None => {
            for pair in fields.chunks(2) {
                let [name, value] = pair else { continue };
                let (Some(name), Some(value)) = (text_ref(name), text_ref(value)) else { continue };
                let place = match &*name {
                    "type" => 0,
                    "time" => 1,
                    "server" => 2,
                    "task" => 3,
                    "agent" => 4,
                    "data" => 5,
                    _ => continue,
                };
                parts[place] = Some(value);
            }
        }
    }
    let [kind, time, server, task, agent, data] = parts;
    let (kind, server) = (kind.unwrap_or_default(), server.unwrap_or_default());
    let time_ms = time.and_then(|time| time.parse().ok()).unwrap_or_default();
    let non_empty = |value: Option<Cow<'_, str>>| value.filter(|v| !v.is_empty()).map(|v| CompactStr::new(&v));
    let (task_id, agent_id) = (non_empty(task), non_empty(agent));
    let kind = parse_enum::<EventKind>(&kind)?;
    let data = match data {
        Some(text) => event_data(kind, &text)?,
        None => EventData::Json(Arc::new(Json::Object(Map::new()))),
    };
    Ok(EventRecord { ms, seq, kind, time_ms, server_id: servers.shared(&server), task_id, agent_id, data })
}

/// The ids of the servers whose events a reader met last, to share rather than copy (a fleet has a few servers;
/// each restart brings a new id, so only the most recent are kept).
#[derive(Default)]
pub(super) struct ServerIds(Vec<Arc<str>>);

impl ServerIds {
    const KEPT: usize = 16;

    fn shared(&mut self, id: &str) -> Arc<str> {
        if let Some(known) = self.0.iter().find(|known| &***known == id) {
            return known.clone();
        }
        if self.0.len() == Self::KEPT {
            self.0.remove(0);
        }
        self.0.push(Arc::from(id));
        self.0.last().expect("just pushed").clone()
    }
}

/// An event's data: typed for the hot kinds when it has exactly their shape, so that the typed form serialises back
/// to the same JSON (unknown or missing fields, another `via`, a status change from nothing, a `null` waiter, a
/// priority not in its usual spelling keep it JSON, which is what the record would otherwise hold).
fn event_data(kind: EventKind, text: &str) -> StoreResult<EventData> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Submitted<'a> {
        #[serde(borrow)]
        task_type: Cow<'a, str>,
        #[serde(borrow)]
        priority: Cow<'a, str>,
        #[serde(borrow)]
        required_capabilities: Vec<Cow<'a, str>>,
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Claimed<'a> {
        attempt: u32,
        #[serde(borrow)]
        via: Cow<'a, str>,
        /// Absent or a string: `null` must not read as absent, which is how the typed form writes it back.
        #[serde(borrow, default, deserialize_with = "present")]
        waiter: Option<Cow<'a, str>>,
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct StatusChanged {
        from: AgentStatus,
        to: AgentStatus,
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Completed {
        unfenced: bool,
    }
    let typed = match kind {
        EventKind::TaskSubmitted => serde_json::from_str::<Submitted>(text).ok().and_then(|d| {
            // The spelling the typed form writes back, and no other ("High" and "2" parse as well).
            let priority = d.priority.parse::<Priority>().ok().filter(|p| p.as_str() == d.priority)?;
            Some(EventData::Submitted {
                task_type: CompactStr::new(&d.task_type),
                priority,
                required_capabilities: d.required_capabilities.iter().map(|c| CompactStr::new(c)).collect(),
            })
        }),
        EventKind::TaskClaimed => serde_json::from_str::<Claimed>(text).ok().and_then(|d| {
            let via = match &*d.via {
                "claim" => "claim",
                "routed" => "routed",
                _ => return None,
            };
            Some(EventData::Claimed { attempt: d.attempt, via, waiter: d.waiter.as_deref().map(CompactStr::new) })
        }),
        EventKind::AgentStatusChanged => serde_json::from_str::<StatusChanged>(text)
            .ok()
            .map(|d| EventData::StatusChanged { from: d.from, to: d.to }),
        EventKind::TaskCompleted => {
            serde_json::from_str::<Completed>(text).ok().map(|d| EventData::Completed { unfenced: d.unfenced })
        }
        _ => None,
    };
    match typed {
        Some(data) => Ok(data),
        None => serde_json::from_str(text)
            .map(|data| EventData::Json(Arc::new(data)))
            .map_err(|e| corrupt(format!("data: {e}"))),
    }
}

/// A field that, when present, is not `null`.
fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    <Cow<'de, str>>::deserialize(deserializer).map(Some)
}

/// A plugin record as `plugin_change`/`plugin_read` keep it (JSON), with its history entries.
pub(super) fn plugin_record(record: &Value, history: &Value) -> StoreResult<PluginRecord> {
    #[derive(serde::Deserialize)]
    struct Stored {
        name: String,
        version: u64,
        enabled: bool,
        sha256: Option<String>,
        size: Option<u64>,
        manifest: Option<String>,
        candidate: Option<Candidate>,
    }
    #[derive(serde::Deserialize)]
    struct Candidate {
        mode: String,
        percent: Option<u8>,
        sha256: String,
        size: u64,
        manifest: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        version: u64,
        action: String,
        by: String,
        at: f64,
        sha256: Option<String>,
        detail: Option<String>,
    }
    let raw = text(record).ok_or_else(|| corrupt("plugin record"))?;
    let stored: Stored = serde_json::from_str(&raw).map_err(|e| corrupt(format!("plugin record: {e}")))?;
    let history = array(history)?
        .iter()
        .map(|entry| {
            let raw = text(entry).ok_or_else(|| corrupt("plugin history"))?;
            let entry: Entry = serde_json::from_str(&raw).map_err(|e| corrupt(format!("plugin history: {e}")))?;
            Ok(PluginHistoryEntry {
                version: entry.version,
                action: entry.action,
                sha256: entry.sha256,
                by: entry.by,
                at: rfc3339_ms(entry.at as u64),
                detail: entry.detail,
            })
        })
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(PluginRecord {
        name: stored.name,
        version: stored.version,
        enabled: stored.enabled,
        sha256: stored.sha256,
        size: stored.size,
        manifest: stored.manifest,
        candidate: stored.candidate.map(|c| PluginCandidate {
            mode: match (c.mode.as_str(), c.percent) {
                ("canary", Some(percent)) => RolloutMode::Canary { percent },
                _ => RolloutMode::Shadow,
            },
            sha256: c.sha256,
            size: c.size,
            manifest: c.manifest.filter(|m| !m.is_empty()),
        }),
        history,
    })
}

/// Decisions as `decisions_read` answers them: `<id> <json>` each.
pub(super) fn decisions(value: &Value) -> StoreResult<Vec<DecisionRecord>> {
    array(value)?
        .iter()
        .map(|entry| {
            let raw = text(entry).ok_or_else(|| corrupt("decision"))?;
            let (id, json) = raw.split_once(' ').ok_or_else(|| corrupt("decision"))?;
            let mut record: DecisionRecord =
                serde_json::from_str(json).map_err(|e| corrupt(format!("decision: {e}")))?;
            record.id = id.to_string();
            Ok(record)
        })
        .collect()
}

/// Violations as `record_violations`/`violations` keep them (JSON, time in store ms).
pub(super) fn violations(value: &Value) -> StoreResult<Vec<Violation>> {
    #[derive(serde::Deserialize)]
    struct Stored {
        id: String,
        policy: String,
        stage: String,
        decision: String,
        reason: String,
        task_id: Option<String>,
        agent_id: Option<String>,
        time: f64,
        #[serde(default)]
        status: Option<String>,
        #[serde(default)]
        note: Option<String>,
        #[serde(default)]
        updated_by: Option<String>,
        #[serde(default)]
        updated_at: Option<f64>,
    }
    array(value)?
        .iter()
        .map(|entry| {
            let raw = text(entry).ok_or_else(|| corrupt("violation"))?;
            let v: Stored = serde_json::from_str(&raw).map_err(|e| corrupt(format!("violation: {e}")))?;
            Ok(Violation {
                id: v.id,
                policy: v.policy,
                stage: v.stage,
                decision: v.decision,
                reason: v.reason,
                task_id: v.task_id,
                agent_id: v.agent_id,
                time: rfc3339_ms(v.time as u64),
                status: v.status.as_deref().map(parse_enum::<ViolationStatus>).transpose()?.unwrap_or_default(),
                note: v.note.filter(|n| !n.is_empty()),
                updated_by: v.updated_by,
                updated_at: v.updated_at.map(|ms| rfc3339_ms(ms as u64)),
            })
        })
        .collect()
}

/// A schedule's hash (HGETALL).
pub(super) fn schedule(value: &Value) -> StoreResult<ScheduleRecord> {
    let fields = hash(value)?;
    let number = |name: &str| field(&fields, name).and_then(|v| v.parse::<u64>().ok());
    Ok(ScheduleRecord {
        id: field(&fields, "id").map(str::to_string).ok_or_else(|| corrupt("schedule without id"))?,
        definition: field(&fields, "def").map(str::to_string).ok_or_else(|| corrupt("schedule without definition"))?,
        next_run_ms: number("next"),
        last_run_ms: number("last"),
        last_task_id: field(&fields, "last_task").map(str::to_string),
        last_error: field(&fields, "last_error").map(str::to_string),
        runs: number("runs").unwrap_or(0),
        skipped: number("skipped").unwrap_or(0),
    })
}

/// A notification delivery's hash (`notify_change.lua`'s fields).
pub(super) fn delivery(value: &Value) -> StoreResult<Delivery> {
    let fields = hash(value)?;
    let number = |name: &str| field(&fields, name).and_then(|v| v.parse::<u64>().ok());
    let status = field(&fields, "status").and_then(DeliveryStatus::parse).ok_or_else(|| corrupt("delivery status"))?;
    Ok(Delivery {
        id: field(&fields, "id").map(str::to_string).ok_or_else(|| corrupt("delivery without id"))?,
        channel_id: field(&fields, "channel").map(str::to_string).ok_or_else(|| corrupt("delivery without channel"))?,
        message: field(&fields, "message").map(str::to_string).ok_or_else(|| corrupt("delivery without message"))?,
        status,
        attempts: number("attempts").unwrap_or(0) as u32,
        retried_at_attempt: number("base").unwrap_or(0) as u32,
        created_ms: number("created").unwrap_or(0),
        due_ms: number("due"),
        delivered_ms: number("delivered"),
        last_error: field(&fields, "error").map(str::to_string),
        last_status: number("code").map(|code| code as u16),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Event;

    fn entry(id: &str, fields: &[(&str, &str)]) -> Value {
        let bulk = |text: &str| Value::BulkString(text.as_bytes().to_vec());
        let fields = fields.iter().flat_map(|(name, value)| [bulk(name), bulk(value)]).collect();
        Value::Array(vec![bulk(id), Value::Array(fields)])
    }

    fn event_of(kind: &str, task: &str, agent: &str, data: &str) -> Value {
        let fields = [
            ("n", "7"),
            ("type", kind),
            ("time", "1700000000123"),
            ("server", "s-1"),
            ("task", task),
            ("agent", agent),
            ("data", data),
        ];
        entry("1700000000123-4", &fields)
    }

    /// The same event as the compact entry the scripts write by default.
    fn compact_of(kind: &str, task: &str, agent: &str, data: &str) -> Value {
        let compact = format!("7|{kind}|1700000000123|s-1|{task}|{agent}|{data}");
        entry("1700000000123-4", &[("e", &compact)])
    }

    /// The event clients see for an entry [`event_of`] writes: the stored fields and data, as they are.
    fn stored(kind: &str, task: &str, agent: &str, data: &str) -> Event {
        let id = |text: &str| Some(text.to_string()).filter(|t| !t.is_empty());
        Event {
            id: "1700000000123-4".into(),
            kind: serde_json::from_value(Json::String(kind.into())).unwrap(),
            time: rfc3339_ms(1_700_000_000_123),
            server_id: "s-1".into(),
            task_id: id(task),
            agent_id: id(agent),
            data: serde_json::from_str(data).unwrap(),
        }
    }

    /// A record gives back the stored event, for the typed kinds in every shape the scripts write and for shapes
    /// they must leave as JSON.
    #[test]
    fn a_record_read_from_the_stream_gives_back_the_stored_event() {
        let task = "task_0123456789abcdef0123456789abcdef";
        // (kind, task, agent, data, kept typed)
        let cases = [
            (
                "task_submitted",
                task,
                "",
                r#"{"priority":"high","required_capabilities":["code","x"],"task_type":"t"}"#,
                true,
            ),
            ("task_submitted", task, "", r#"{"priority":"low","required_capabilities":[],"task_type":"t\"q"}"#, true),
            ("task_claimed", task, "a1", r#"{"attempt":1,"via":"claim"}"#, true),
            ("task_claimed", task, "a1", r#"{"attempt":2,"via":"routed","waiter":"w-9"}"#, true),
            ("task_completed", task, "a1", r#"{"unfenced":false}"#, true),
            ("agent_status_changed", "", "a1", r#"{"from":"ready","to":"busy"}"#, true),
            // Left as JSON: a status change from nothing, a pause, an unknown `via`, a field more, other kinds.
            ("agent_status_changed", "", "a1", r#"{"to":"ready"}"#, false),
            ("agent_status_changed", "", "a1", r#"{"paused":true,"to":"busy"}"#, false),
            ("task_claimed", task, "a1", r#"{"attempt":1,"via":"elsewhere"}"#, false),
            ("task_claimed", task, "a1", r#"{"attempt":1,"via":"claim","waiter":null}"#, false),
            ("task_submitted", task, "", r#"{"priority":"High","required_capabilities":[],"task_type":"t"}"#, false),
            ("task_submitted", task, "", r#"{"priority":2,"required_capabilities":[],"task_type":"t"}"#, false),
            ("task_completed", task, "a1", r#"{"unfenced":true,"extra":1}"#, false),
            ("task_failed", task, "a1", r#"{"code":"boom","retry":false}"#, false),
            ("agent_registered", "", "an-agent-id-longer-than-forty-six-bytes-to-be-shared", "{}", false),
            // The compact form's separator in the data, which comes last.
            ("task_failed", task, "a1", r#"{"code":"a|b","error":"|"}"#, false),
        ];
        let mut servers = ServerIds::default();
        for (kind, task, agent, data, kept_typed) in cases {
            for entry in [event_of(kind, task, agent, data), compact_of(kind, task, agent, data)] {
                let record = event_record(&entry, &mut servers).unwrap();
                assert_eq!(!matches!(record.data, EventData::Json(_)), kept_typed, "{kind} {data}");
                assert_eq!(record.to_event(), stored(kind, task, agent, data), "{kind} {data}");
                assert_eq!(event_place(&entry), Some(((1_700_000_000_123, 4), Some(7))), "{kind} {data}");
            }
        }
    }

    /// A compact entry cut short is refused, not read with its parts shifted; its number still counts.
    #[test]
    fn a_compact_entry_without_all_its_parts_is_refused() {
        let short = entry("1700000000123-4", &[("e", "7|task_completed|1700000000123|s-1|")]);
        assert!(event_record(&short, &mut ServerIds::default()).is_err());
        assert_eq!(event_place(&short), Some(((1_700_000_000_123, 4), Some(7))));
    }

    #[test]
    fn bytes_that_are_not_text_are_replaced_not_dropped() {
        let Value::Array(mut parts) = event_of("task_failed", "", "", "{}") else { unreachable!() };
        let Value::Array(fields) = &mut parts[1] else { unreachable!() };
        fields[11] = Value::BulkString(b"agent-\xff".to_vec());
        fields[13] = Value::BulkString(b"{\"code\":\"\xfe\"}".to_vec());
        let entry = Value::Array(parts);
        let record = event_record(&entry, &mut ServerIds::default()).unwrap();
        assert_eq!(record.to_event(), stored("task_failed", "", "agent-\u{fffd}", "{\"code\":\"\u{fffd}\"}"));
        let compact = b"7|task_failed|1700000000123|s-1||agent-\xff|{\"code\":\"\xfe\"}".to_vec();
        let entry = Value::Array(vec![
            Value::BulkString(b"1700000000123-4".to_vec()),
            Value::Array(vec![Value::BulkString(b"e".to_vec()), Value::BulkString(compact)]),
        ]);
        let record = event_record(&entry, &mut ServerIds::default()).unwrap();
        assert_eq!(record.to_event(), stored("task_failed", "", "agent-\u{fffd}", "{\"code\":\"\u{fffd}\"}"));
    }

    #[test]
    fn records_of_one_server_share_its_id() {
        let mut servers = ServerIds::default();
        let first = event_record(&event_of("task_completed", "", "", "{}"), &mut servers).unwrap();
        let second = event_record(&event_of("task_completed", "", "", "{}"), &mut servers).unwrap();
        assert!(Arc::ptr_eq(&first.server_id, &second.server_id));
        for i in 0..ServerIds::KEPT {
            servers.shared(&format!("other-{i}"));
        }
        let later = event_record(&event_of("task_completed", "", "", "{}"), &mut servers).unwrap();
        assert_eq!(&*later.server_id, "s-1");
        assert!(!Arc::ptr_eq(&first.server_id, &later.server_id), "the oldest ids make way for new ones");
    }

    #[test]
    fn an_entry_of_an_unknown_kind_or_without_an_id_is_refused() {
        let mut servers = ServerIds::default();
        assert!(event_record(&event_of("from_a_newer_server", "", "", "{}"), &mut servers).is_err());
        assert!(event_record(&compact_of("from_a_newer_server", "", "", "{}"), &mut servers).is_err());
        assert!(event_record(&entry("not-an-id", &[("type", "task_completed")]), &mut servers).is_err());
    }
}
