//! Events as the stores hand them to this server's consumers: the event pump, and through it the scheduler, fleet
//! plugins and the coordinator's stream (decision 0025). The memory store writes a transition's events as compact
//! records — id and time as numbers, short ids inline, the hot kinds' data typed — each allocated once and shared
//! (`Arc<EventRecord>`) by the store's buffer of `Last-Event-ID` resumes, its channel and every consumer: a typed
//! kind's event is that one allocation (a `task_submitted`'s capability list a second). An [`Event`], the wire type,
//! is built from a record only where an event leaves the server (SSE, `events_after`, notifications). The Redis
//! store's reader decodes its stream's entries into the same records (every server of a fleet reads every event of
//! the fleet).

use std::fmt;
use std::sync::Arc;

use serde_json::{Value, json};

use super::{AgentStatus, Event, EventKind, Priority, rfc3339_ms};

/// Longest string kept inline: a task id (`task_` + 32 hex digits) fits, and so do most agent ids and tokens.
const INLINE: usize = 46;

/// A short string kept inline, shared when longer: copying or dropping one never touches the allocator.
#[derive(Clone)]
pub struct CompactStr(Repr);

/// Private, so the only way in is [`CompactStr::new`] and the bytes are always a whole `str`.
#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE] },
    Shared(Arc<str>),
}

impl CompactStr {
    /// `text`, inline when it fits.
    pub fn new(text: &str) -> Self {
        if text.len() <= INLINE {
            let mut bytes = [0; INLINE];
            bytes[..text.len()].copy_from_slice(text.as_bytes());
            CompactStr(Repr::Inline { len: text.len() as u8, bytes })
        } else {
            CompactStr(Repr::Shared(Arc::from(text)))
        }
    }

    /// The string.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).expect("`new` copies a whole str")
            }
            Repr::Shared(text) => text,
        }
    }
}

impl fmt::Debug for CompactStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// An event's `data`: typed for the kinds every task's way emits, JSON for the rest.
#[derive(Clone, Debug)]
pub enum EventData {
    /// `task_submitted`: `{"task_type", "priority", "required_capabilities"}`.
    Submitted {
        /// The task's type.
        task_type: CompactStr,
        /// Its priority.
        priority: Priority,
        /// What an agent needs to take it: a `task_submitted`'s one allocation besides its record (none when it
        /// is empty).
        required_capabilities: Arc<[CompactStr]>,
    },
    /// `task_claimed`: `{"attempt", "via", "waiter"}` (the waiter token only for a routed grant).
    Claimed {
        /// The attempt this grant starts.
        attempt: u32,
        /// `claim` or `routed`.
        via: &'static str,
        /// The waiting claim the grant consumed.
        waiter: Option<CompactStr>,
    },
    /// `agent_status_changed` made by the store (capacity, a sign of life): `{"from", "to"}`.
    StatusChanged {
        /// The status before.
        from: AgentStatus,
        /// The status after.
        to: AgentStatus,
    },
    /// `task_completed`: `{"unfenced"}`.
    Completed {
        /// Completed without the lease's fence.
        unfenced: bool,
    },
    /// Any other kind's data.
    Json(Arc<Value>),
}

impl EventData {
    /// The data as clients see it.
    pub fn to_value(&self) -> Value {
        match self {
            EventData::Submitted { task_type, priority, required_capabilities } => {
                let required: Vec<&str> = required_capabilities.iter().map(CompactStr::as_str).collect();
                json!({"task_type": task_type.as_str(), "priority": priority, "required_capabilities": required})
            }
            EventData::Claimed { attempt, via, waiter } => {
                let mut data = json!({"attempt": attempt, "via": via});
                if let Some(token) = waiter {
                    data["waiter"] = json!(token.as_str());
                }
                data
            }
            EventData::StatusChanged { from, to } => json!({"from": from.as_str(), "to": to.as_str()}),
            EventData::Completed { unfenced } => json!({"unfenced": unfenced}),
            EventData::Json(value) => Value::clone(value),
        }
    }

    fn str_field(&self, name: &str) -> Option<&str> {
        match (self, name) {
            (EventData::Submitted { task_type, .. }, "task_type") => Some(task_type.as_str()),
            (EventData::Submitted { priority, .. }, "priority") => Some(priority.as_str()),
            (EventData::Claimed { via, .. }, "via") => Some(via),
            (EventData::Claimed { waiter, .. }, "waiter") => waiter.as_ref().map(CompactStr::as_str),
            (EventData::StatusChanged { from, .. }, "from") => Some(from.as_str()),
            (EventData::StatusChanged { to, .. }, "to") => Some(to.as_str()),
            (EventData::Json(value), _) => value.get(name).and_then(Value::as_str),
            _ => None,
        }
    }

    fn bool_field(&self, name: &str) -> Option<bool> {
        match (self, name) {
            (EventData::Completed { unfenced }, "unfenced") => Some(*unfenced),
            (EventData::Json(value), _) => value.get(name).and_then(Value::as_bool),
            _ => None,
        }
    }
}

/// The (milliseconds, sequence) of an event id `<ms>-<seq>` (a Redis stream id), or `None` when it is not one.
pub fn parse_event_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// One event as a store hands it to this server's consumers (the memory store also keeps it for resumes).
#[derive(Clone, Debug)]
pub struct EventRecord {
    /// The id's milliseconds (`<ms>-<seq>`).
    pub ms: u64,
    /// The id's sequence within `ms`.
    pub seq: u64,
    /// What happened.
    pub kind: EventKind,
    /// Store time, ms since the Unix epoch.
    pub time_ms: u64,
    /// The server whose request caused it.
    pub server_id: Arc<str>,
    /// The task concerned.
    pub task_id: Option<CompactStr>,
    /// The agent concerned.
    pub agent_id: Option<CompactStr>,
    /// Small facts.
    pub data: EventData,
}

impl EventRecord {
    /// The id clients see.
    pub fn id(&self) -> String {
        format!("{}-{}", self.ms, self.seq)
    }

    /// The event as clients see it.
    pub fn to_event(&self) -> Event {
        Event {
            id: self.id(),
            kind: self.kind,
            time: rfc3339_ms(self.time_ms),
            server_id: self.server_id.to_string(),
            task_id: self.task().map(str::to_string),
            agent_id: self.agent().map(str::to_string),
            data: self.data.to_value(),
        }
    }

    /// The agent concerned.
    pub fn agent(&self) -> Option<&str> {
        self.agent_id.as_ref().map(CompactStr::as_str)
    }

    /// The task concerned.
    pub fn task(&self) -> Option<&str> {
        self.task_id.as_ref().map(CompactStr::as_str)
    }

    /// A string field of `data`, whichever way it is kept.
    pub fn str_field(&self, name: &str) -> Option<&str> {
        self.data.str_field(name)
    }

    /// A boolean field of `data`, whichever way it is kept.
    pub fn bool_field(&self, name: &str) -> Option<bool> {
        self.data.bool_field(name)
    }

    /// The `required_capabilities` of `data` (only `task_submitted` events have them).
    pub fn required_capabilities(&self) -> impl Iterator<Item = &str> {
        let (typed, json) = match &self.data {
            EventData::Submitted { required_capabilities, .. } => {
                (Some(required_capabilities.iter().map(CompactStr::as_str)), None)
            }
            EventData::Json(data) => (None, Some(&**data)),
            _ => (None, None),
        };
        let json = json.and_then(|data| data.get("required_capabilities")).and_then(Value::as_array);
        typed.into_iter().flatten().chain(json.into_iter().flatten().filter_map(Value::as_str))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::CapabilitySet;

    #[test]
    fn compact_strings_keep_short_and_long_text() {
        let task = "task_0123456789abcdef0123456789abcdef";
        assert!(matches!(CompactStr::new(task).0, Repr::Inline { .. }));
        assert_eq!(CompactStr::new(task).as_str(), task);
        assert_eq!(CompactStr::new("").as_str(), "");
        // Multibyte text at the edge: 23 two-byte characters fill the 46 bytes, one more does not fit.
        let edge = "é".repeat(23);
        assert!(matches!(CompactStr::new(&edge).0, Repr::Inline { .. }));
        assert_eq!(CompactStr::new(&edge).as_str(), edge);
        let over = format!("{edge}x");
        assert!(matches!(CompactStr::new(&over).0, Repr::Shared(_)));
        assert_eq!(CompactStr::new(&over).as_str(), over);
    }

    #[test]
    fn typed_data_serialises_as_the_json_it_replaces() {
        let submitted = EventData::Submitted {
            task_type: CompactStr::new("review"),
            priority: Priority::High,
            required_capabilities: [CompactStr::new("agent:a1"), CompactStr::new("code")].into(),
        };
        let caps = CapabilitySet::parse("required_capabilities", &["code".into(), "agent:a1".into()], 8).unwrap();
        let as_before = json!({"task_type": "review", "priority": Priority::High, "required_capabilities": caps});
        assert_eq!(submitted.to_value(), as_before);
        let typed = EventRecord {
            ms: 1,
            seq: 0,
            kind: EventKind::TaskSubmitted,
            time_ms: 1,
            server_id: Arc::from("s1"),
            task_id: None,
            agent_id: None,
            data: submitted,
        };
        // The same event with its data kept as JSON (a shape the typed form does not take).
        let json = EventRecord { data: EventData::Json(Arc::new(typed.data.to_value())), ..typed.clone() };
        for event in [&typed, &json] {
            assert_eq!(event.required_capabilities().collect::<Vec<_>>(), ["agent:a1", "code"], "{event:?}");
            assert_eq!(event.str_field("priority"), Some("high"));
        }
        let claimed = EventData::Claimed { attempt: 2, via: "routed", waiter: Some(CompactStr::new("w1")) };
        assert_eq!(claimed.to_value(), json!({"attempt": 2, "via": "routed", "waiter": "w1"}));
        let claimed = EventData::Claimed { attempt: 1, via: "claim", waiter: None };
        assert_eq!(claimed.to_value(), json!({"attempt": 1, "via": "claim"}));
        let flip = EventData::StatusChanged { from: AgentStatus::Ready, to: AgentStatus::Busy };
        assert_eq!(flip.to_value(), json!({"from": "ready", "to": "busy"}));
        assert_eq!(EventData::Completed { unfenced: true }.to_value(), json!({"unfenced": true}));
        assert_eq!(flip.str_field("from"), Some("ready"));
        assert_eq!(claimed.str_field("waiter"), None);
    }

    #[test]
    fn a_record_becomes_the_event_clients_see() {
        let record = EventRecord {
            ms: 1_700_000_000_123,
            seq: 4,
            kind: EventKind::TaskCompleted,
            time_ms: 1_700_000_000_123,
            server_id: Arc::from("s1"),
            task_id: Some(CompactStr::new("task_1")),
            agent_id: None,
            data: EventData::Completed { unfenced: false },
        };
        let event = record.to_event();
        assert_eq!(event.id, "1700000000123-4");
        assert_eq!(event.time, rfc3339_ms(1_700_000_000_123));
        assert_eq!((event.task_id.as_deref(), event.agent_id.as_deref()), (Some("task_1"), None));
        assert_eq!(serde_json::to_value(&event).unwrap()["data"], json!({"unfenced": false}));
    }

    #[test]
    fn every_field_of_typed_data_reads_as_it_serialises() {
        let typed = [
            EventData::Submitted {
                task_type: CompactStr::new("review"),
                priority: Priority::Low,
                required_capabilities: Arc::from([]),
            },
            EventData::Claimed { attempt: 1, via: "routed", waiter: Some(CompactStr::new("w")) },
            EventData::StatusChanged { from: AgentStatus::Busy, to: AgentStatus::Ready },
            EventData::Completed { unfenced: true },
        ];
        for data in typed {
            for (key, value) in data.to_value().as_object().expect("an object") {
                match value {
                    Value::String(text) => assert_eq!(data.str_field(key), Some(text.as_str()), "{key} of {data:?}"),
                    Value::Bool(flag) => assert_eq!(data.bool_field(key), Some(*flag), "{key} of {data:?}"),
                    // Numbers and lists have no reader: nothing consumes them from a record.
                    _ => {}
                }
            }
        }
    }
}
