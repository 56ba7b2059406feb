//! The vocabulary of the control plane (DESIGN §3): agents, tasks, priorities, capabilities, events, health and
//! breakers, plugin records, violations, counters, the errors of state transitions, and the validation that turns
//! a client's mistake into an error naming the field. Everything the API, the CLI, the engine, the plugin runtime
//! and the stores exchange is defined here; nothing here knows about storage, plugins or HTTP, and this module
//! depends on nothing else of the crate.

mod agent;
mod audit;
mod capability;
mod decision;
mod deliberation;
mod eligibility;
mod error;
mod event;
mod event_record;
mod health;
mod json_text;
mod notification;
mod outcome;
mod plugin;
mod priority;
mod schedule;
mod stats;
mod task;
mod violation;

pub use agent::{
    Agent, AgentFilter, AgentRegistration, AgentStatus, HeartbeatOutcome, HeartbeatRequest, ORCHESTRATOR_PREFIX,
    RegisterRequest, Registered, RevokeReason, Revoked, validate_agent_id,
};
pub use audit::{
    AuditCheckpoint, AuditDetails, AuditEntry, AuditHead, ChainBreak, GENESIS_HASH, NewAuditEntry, check_chain,
};
pub use capability::{ADDRESS_PREFIX, CapabilitySet, address_of, normalize_capability};
pub use decision::{
    DECISIONS_KEPT, DECISIONS_PER_TASK, DecisionAnswer, DecisionCandidate, DecisionDetails, DecisionQuery,
    DecisionRecord, DecisionRole, DecisionStage, DecisionTask, MAX_DECISION_PAGE, SelectionInput, decision_id_key,
};
pub use deliberation::{
    Contribution, DELIBERATION_TASK_TYPE, DecisionRule, DeliberationMode, DeliberationRequest, JUDGE_TASK_TYPE,
    MAX_SYNC_WAIT_SECONDS, ORCHESTRATE_CAPABILITY, PROPOSE_TASK_TYPE, REVISE_TASK_TYPE, SESSION_TIMEOUT_ERROR,
    SessionPlan, Verdict, decide_by_vote, deliberation_status, deliberation_transcript, deliberation_view,
    request_id_of, task_id_of,
};
pub use eligibility::{Refusal, Standing};
pub use error::{StoreError, StoreResult};
pub use event::{Event, EventKind};
pub use event_record::{CompactStr, EventData, EventRecord, parse_event_id};
pub use health::{AgentHealth, BreakerState, CandidateNumbers, HealthState, HealthVerdict};
pub use json_text::JsonText;
pub(crate) use json_text::JsonWriter;
pub use notification::{
    AttemptResult, Channel, ChannelFigures, ChannelFilter, ChannelKind, DEAD_KEPT, DEFAULT_EVENTS, Delivery,
    DeliveryMessage, DeliveryStatus, MAX_CHANNELS, NewChannel, SENT_KEPT, TaskFacts, backoff_ms, new_channel_id,
};
pub use outcome::{Completion, FailRequest, Fence, Submitted};
pub use plugin::{
    PLUGIN_HISTORY, PluginAction, PluginCandidate, PluginChange, PluginHistoryEntry, PluginRecord, RolloutMode,
    is_plugin_name, sha256_hex,
};
pub use priority::Priority;
pub use schedule::{
    CatchUp, Firing, MAX_CATCH_UP_TICKS, MAX_SCHEDULES, Schedule, ScheduleAdvance, ScheduleChange, ScheduleDefinition,
    ScheduleRecord, ScheduleSpec, Timing, new_schedule_id,
};
pub use stats::{CLAIM_WAITS_KEPT, FleetStats, QueueFigures};
pub use task::{FailKind, NewTask, SubmitRequest, Task, TaskError, TaskFilter, TaskId, TaskPage, TaskStatus};
pub use violation::{NewViolation, VIOLATIONS_KEPT, Violation, ViolationStatus, ViolationUpdate};

use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, SecondsFormat, Utc};

/// Largest task payload, serialized (DESIGN §3).
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
/// Largest metadata object, serialized.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
/// Capabilities a task may require.
pub const MAX_TASK_CAPABILITIES: usize = 16;
/// Capabilities an agent may hold.
pub const MAX_AGENT_CAPABILITIES: usize = 64;
/// Bounds of `timeout_seconds`.
pub const TIMEOUT_SECONDS_RANGE: std::ops::RangeInclusive<u32> = 1..=86_400;
/// Upper bound of `max_retries`.
pub const MAX_RETRIES_LIMIT: u32 = 100;

/// A client's mistake, naming the field: the API answers 400 (or 413 for sizes) with this message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// The offending field, as written on the wire (`payload`, `required_capabilities[2]`, …).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
    /// Whether the problem is a size limit (413) rather than a bad value (400).
    pub too_large: bool,
}

impl ValidationError {
    /// A bad value.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ValidationError { field: field.into(), message: message.into(), too_large: false }
    }

    /// A size over its limit.
    pub fn too_large(field: impl Into<String>, message: impl Into<String>) -> Self {
        ValidationError { field: field.into(), message: message.into(), too_large: true }
    }
}

/// 128 random bits as 32 lowercase hex digits: lease and session ids.
pub fn random_hex_id() -> String {
    String::from_utf8(hex_digits(rand::random()).to_vec()).expect("hex digits are ASCII")
}

/// `bits` as 32 lowercase hex digits, what `format!("{bits:032x}")` writes (lease, session and waiter ids, which
/// servers of a fleet share through Redis, keep that form). Written into a buffer: the formatter's padding and radix
/// machinery cost a grant more than drawing the bits.
pub(crate) fn hex_digits(bits: u128) -> [u8; 32] {
    let mut digits = [0u8; 32];
    hex::encode_to_slice(bits.to_be_bytes(), &mut digits).expect("32 digits for 16 bytes");
    digits
}

/// Milliseconds since the Unix epoch, as stored; rendered with [`rfc3339_ms`].
pub type Millis = u64;

/// Renders store milliseconds as RFC 3339 UTC with milliseconds (the wire's timestamp format).
///
/// Under load one task's transitions stamp a dozen times within the same millisecond (its fields, its events), and
/// formatting through chrono costs more than copying: each thread keeps the last rendering and copies it while the
/// millisecond is the same.
pub fn rfc3339_ms(ms: Millis) -> String {
    thread_local! {
        static LAST: std::cell::RefCell<(Millis, String)> = const { std::cell::RefCell::new((0, String::new())) };
    }
    LAST.with_borrow_mut(|(at, text)| {
        if *at != ms || text.is_empty() {
            *text = DateTime::<Utc>::from_timestamp_millis(ms as i64)
                .unwrap_or_default()
                .to_rfc3339_opts(SecondsFormat::Millis, true);
            *at = ms;
        }
        text.clone()
    })
}

/// Reads an RFC 3339 timestamp back as milliseconds since the Unix epoch (the inverse of [`rfc3339_ms`]).
pub fn millis_of(rfc3339: &str) -> Option<Millis> {
    DateTime::parse_from_rfc3339(rfc3339).ok().map(|at| at.timestamp_millis().max(0) as Millis)
}

/// Renders a `SystemTime` as RFC 3339 UTC with milliseconds.
pub fn rfc3339(time: SystemTime) -> String {
    rfc3339_ms(time.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0))
}

/// Checks that a JSON value serializes within `limit` bytes (counted, not written).
pub(crate) fn check_json_size(field: &str, value: &impl serde::Serialize, limit: usize) -> Result<(), ValidationError> {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    let size = serde_json::to_writer(&mut counter, value).map(|()| counter.0).unwrap_or(usize::MAX);
    if size > limit {
        return Err(ValidationError::too_large(field, format!("{size} bytes, over the {limit}-byte limit")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_hex_id_is_what_the_formatter_writes() {
        for bits in [0, 1, 0xabc, u128::MAX, u128::MAX / 3, 1 << 100, 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210] {
            assert_eq!(std::str::from_utf8(&super::hex_digits(bits)).unwrap(), format!("{bits:032x}"));
        }
        assert_ne!(super::random_hex_id(), super::random_hex_id());
    }
}
