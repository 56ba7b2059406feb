//! Notification channels and their deliveries (docs/CONTROL_PLANE.md, "Notifications"): where events are sent (a webhook, a Slack or
//! Teams incoming webhook), which events each channel wants, and the record of each event's delivery to one
//! channel: pending (due at a time), sending (leased to one server), sent, or dead (a dead letter, after the
//! channel's attempts ran out). The store keeps the channel's definition and a delivery's message as opaque JSON
//! and changes only a delivery's state, so every store handles them the same way.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Event, EventKind, Priority, StoreError, StoreResult, ValidationError};

/// Channels the store keeps at most.
pub const MAX_CHANNELS: usize = 100;
/// Delivered notifications kept for `GET /notifications` (older ones are forgotten).
pub const SENT_KEPT: usize = 1_000;
/// Dead letters kept; past this the oldest is dropped (and counted in the channel's `dropped`).
pub const DEAD_KEPT: usize = 10_000;
/// Attempts a channel makes at most, and by default.
const MAX_ATTEMPTS_RANGE: std::ops::RangeInclusive<u32> = 1..=20;
/// Default attempts before a delivery becomes a dead letter.
const DEFAULT_MAX_ATTEMPTS: u32 = 8;
/// Bounds of the first retry's delay, in ms (later ones double, up to [`MAX_BACKOFF_MS`]).
const BACKOFF_MS_RANGE: std::ops::RangeInclusive<u64> = 10..=600_000;
/// Default first retry delay.
const DEFAULT_BACKOFF_MS: u64 = 1_000;
/// Longest delay between two attempts.
const MAX_BACKOFF_MS: u64 = 15 * 60 * 1000;

/// The events a channel gets when it names none: what a person should hear about, not every claim and heartbeat.
pub const DEFAULT_EVENTS: [EventKind; 7] = [
    EventKind::TaskFailed,
    EventKind::TaskTimeout,
    EventKind::AgentOffline,
    EventKind::BreakerChanged,
    EventKind::PolicyViolation,
    EventKind::PluginRejected,
    EventKind::HealthChanged,
];

/// Where a channel's messages go, and in which format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    /// The event as JSON, signed with the channel's secret (`X-Aragora-Signature: sha256=…`).
    Webhook,
    /// A Slack incoming webhook (`{"text", "blocks"}`).
    Slack,
    /// A Microsoft Teams incoming webhook or workflow (a message with an Adaptive Card).
    Teams,
}

impl ChannelKind {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Webhook => "webhook",
            ChannelKind::Slack => "slack",
            ChannelKind::Teams => "teams",
        }
    }
}

/// Which events a channel gets. Empty lists put no condition; `events` left out means [`DEFAULT_EVENTS`], and
/// `["*"]` means every kind.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelFilter {
    /// Event types (`task_failed`, …), or `"*"` for all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
    /// Task types: only events of tasks of these types (agent and plugin events never match a task-type filter).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub task_types: Vec<String>,
    /// Priorities: only events of tasks at these priorities.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<String>)]
    pub priorities: Vec<Priority>,
}

/// What a client sends to create a channel (`POST /notifications/channels`).
#[derive(Clone, Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewChannel {
    /// A name for people.
    pub name: String,
    /// `webhook`, `slack` or `teams`.
    #[serde(rename = "type")]
    pub kind: ChannelKind,
    /// The `http://` or `https://` URL messages are POSTed to.
    pub url: String,
    /// The HMAC key of a webhook's signature (16 to 256 characters); generated and returned once when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Which events to send (see [`ChannelFilter`]).
    #[serde(default)]
    pub filter: ChannelFilter,
    /// Attempts before a delivery becomes a dead letter (1 to 20, default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Delay before the first retry in ms (10 to 600000, default 1000); each later one doubles, up to 15 minutes,
    /// less a random part of up to half (jitter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_ms: Option<u64>,
    /// A disabled channel gets no new deliveries (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// A channel as stored: the definition with its defaults applied.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct Channel {
    /// `chn_` + 32 hex digits.
    pub id: String,
    /// A name for people.
    pub name: String,
    /// The format.
    #[serde(rename = "type")]
    pub kind: ChannelKind,
    /// Where messages go.
    pub url: String,
    /// A webhook's signing key (never shown after creation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Which events it gets.
    pub filter: ChannelFilter,
    /// Attempts before a dead letter.
    pub max_attempts: u32,
    /// First retry delay, ms.
    pub backoff_ms: u64,
    /// Whether new events are delivered to it.
    pub enabled: bool,
    /// When it was created (RFC 3339).
    pub created_at: String,
}

impl NewChannel {
    /// Checks the fields that need no network (the URL's addresses are checked by the caller) and applies the
    /// defaults; a webhook without a secret gets a random one.
    pub fn into_channel(self, id: String, created_at: String) -> Result<Channel, ValidationError> {
        let name = self.name.trim().to_string();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(ValidationError::new("name", "must be 1 to 200 characters"));
        }
        let url =
            url::Url::parse(self.url.trim()).map_err(|e| ValidationError::new("url", format!("not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(ValidationError::new("url", "must be an http:// or https:// URL with a host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(ValidationError::new("url", "must not carry credentials (use the channel's secret)"));
        }
        let secret = match (self.kind, self.secret) {
            (ChannelKind::Webhook, None) => {
                Some(format!("{:032x}{:032x}", rand::random::<u128>(), rand::random::<u128>()))
            }
            (ChannelKind::Webhook, Some(secret)) if (16..=256).contains(&secret.chars().count()) => Some(secret),
            (ChannelKind::Webhook, Some(_)) => {
                return Err(ValidationError::new("secret", "must be 16 to 256 characters"));
            }
            (_, Some(_)) => {
                return Err(ValidationError::new(
                    "secret",
                    "only webhook channels are signed (Slack and Teams URLs are their own secret)",
                ));
            }
            (_, None) => None,
        };
        self.filter.validate()?;
        let max_attempts = self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
        if !MAX_ATTEMPTS_RANGE.contains(&max_attempts) {
            return Err(ValidationError::new("max_attempts", "must be from 1 to 20"));
        }
        let backoff_ms = self.backoff_ms.unwrap_or(DEFAULT_BACKOFF_MS);
        if !BACKOFF_MS_RANGE.contains(&backoff_ms) {
            return Err(ValidationError::new("backoff_ms", "must be from 10 to 600000"));
        }
        Ok(Channel {
            id,
            name,
            kind: self.kind,
            url: url.to_string(),
            secret,
            filter: self.filter,
            max_attempts,
            backoff_ms,
            enabled: self.enabled.unwrap_or(true),
            created_at,
        })
    }
}

impl ChannelFilter {
    fn validate(&self) -> Result<(), ValidationError> {
        for (i, name) in self.events.iter().flatten().enumerate() {
            if name != "*" && event_kind(name).is_none() {
                return Err(ValidationError::new(
                    format!("filter.events[{i}]"),
                    format!("unknown event type {name:?}"),
                ));
            }
        }
        for (i, task_type) in self.task_types.iter().enumerate() {
            if task_type.is_empty() || task_type.chars().count() > 128 {
                return Err(ValidationError::new(format!("filter.task_types[{i}]"), "must be 1 to 128 characters"));
            }
        }
        Ok(())
    }

    /// Whether an event of `kind` passes the type condition.
    pub fn wants_kind(&self, kind: EventKind) -> bool {
        match &self.events {
            None => DEFAULT_EVENTS.contains(&kind),
            Some(names) => names.iter().any(|name| name == "*" || name == kind.as_str()),
        }
    }

    /// Whether the filter looks at the task's type or priority (so the task must be read).
    pub fn needs_task(&self) -> bool {
        !self.task_types.is_empty() || !self.priorities.is_empty()
    }

    /// Whether an event passes, given its task's facts when it concerns a task.
    pub fn matches(&self, kind: EventKind, task: Option<&TaskFacts>) -> bool {
        if !self.wants_kind(kind) {
            return false;
        }
        if !self.needs_task() {
            return true;
        }
        let Some(task) = task else { return false };
        (self.task_types.is_empty() || self.task_types.contains(&task.task_type))
            && (self.priorities.is_empty() || self.priorities.contains(&task.priority))
    }
}

fn event_kind(name: &str) -> Option<EventKind> {
    EventKind::ALL.into_iter().find(|kind| kind.as_str() == name)
}

impl Channel {
    /// A channel as a store keeps it (JSON); one that does not parse is a store fault.
    pub fn from_stored(json: &str) -> StoreResult<Channel> {
        serde_json::from_str(json).map_err(|e| StoreError::Unavailable(format!("a stored channel does not parse: {e}")))
    }

    /// The channel as the API shows it: the secret never, and a Slack or Teams URL without its path (the path is
    /// the credential).
    pub fn public_view(&self) -> Value {
        let url = match self.kind {
            ChannelKind::Webhook => self.url.clone(),
            ChannelKind::Slack | ChannelKind::Teams => match url::Url::parse(&self.url) {
                Ok(url) => format!("{}://{}/…", url.scheme(), url.host_str().unwrap_or_default()),
                Err(_) => "…".to_string(),
            },
        };
        serde_json::json!({
            "id": self.id,
            "name": self.name,
            "type": self.kind,
            "url": url,
            "signed": self.secret.is_some(),
            "filter": {
                "events": match &self.filter.events {
                    Some(events) => serde_json::json!(events),
                    None => serde_json::json!(DEFAULT_EVENTS.iter().map(|k| k.as_str()).collect::<Vec<_>>()),
                },
                "task_types": self.filter.task_types,
                "priorities": self.filter.priorities,
            },
            "max_attempts": self.max_attempts,
            "backoff_ms": self.backoff_ms,
            "enabled": self.enabled,
            "created_at": self.created_at,
        })
    }
}

/// A task's facts a filter and a message use.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct TaskFacts {
    /// The task's type.
    pub task_type: String,
    /// Its priority.
    pub priority: Priority,
}

/// What one delivery sends: the event, the task's facts when it concerns a task, and the channel it goes to.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct DeliveryMessage {
    /// The event.
    pub event: Event,
    /// The task's type and priority, when the event concerns a task that still exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskFacts>,
}

/// Where a delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Waiting for its next attempt (due at `next_attempt_at`).
    Pending,
    /// Leased to a server that is sending it; the lease ends at `next_attempt_at`, after which another server
    /// may send it again (at-least-once).
    Sending,
    /// The receiver answered 2xx.
    Sent,
    /// Every attempt failed: a dead letter until retried by hand.
    Dead,
}

impl DeliveryStatus {
    /// The snake_case name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Sending => "sending",
            DeliveryStatus::Sent => "sent",
            DeliveryStatus::Dead => "dead",
        }
    }

    /// The status a stored name stands for.
    pub fn parse(name: &str) -> Option<DeliveryStatus> {
        [DeliveryStatus::Pending, DeliveryStatus::Sending, DeliveryStatus::Sent, DeliveryStatus::Dead]
            .into_iter()
            .find(|status| status.as_str() == name)
    }
}

/// One event's delivery to one channel.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    /// `<event id>:<channel id>`: one delivery per event and channel, whichever server made it.
    pub id: String,
    /// The channel.
    pub channel_id: String,
    /// What is sent ([`DeliveryMessage`] as JSON).
    pub message: String,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Attempts begun, in the delivery's whole life: the number fencing each attempt's report, so it never
    /// repeats (a manual retry goes on counting).
    pub attempts: u32,
    /// `attempts` when a manual retry last made it pending again: the channel's `max_attempts` counts from here.
    pub retried_at_attempt: u32,
    /// When it was made (store ms).
    pub created_ms: u64,
    /// Pending: when it is due; sending: when its lease ends.
    pub due_ms: Option<u64>,
    /// When it was delivered.
    pub delivered_ms: Option<u64>,
    /// The last failed attempt's error.
    pub last_error: Option<String>,
    /// The receiver's last HTTP status.
    pub last_status: Option<u16>,
}

impl Delivery {
    /// A new delivery of `message` to `channel_id`.
    pub fn new(event_id: &str, channel_id: &str, message: &DeliveryMessage) -> Delivery {
        Delivery {
            id: format!("{event_id}:{channel_id}"),
            channel_id: channel_id.to_string(),
            message: serde_json::to_string(message).expect("a message serializes"),
            status: DeliveryStatus::Pending,
            attempts: 0,
            retried_at_attempt: 0,
            created_ms: 0,
            due_ms: None,
            delivered_ms: None,
            last_error: None,
            last_status: None,
        }
    }
}

/// How an attempt ended, as the worker reports it to the store.
#[derive(Clone, Debug, PartialEq)]
pub enum AttemptResult {
    /// 2xx.
    Sent {
        /// The receiver's status.
        status: u16,
    },
    /// Anything else.
    Failed {
        /// What went wrong (`HTTP 500`, a connection error, a refused address…).
        error: String,
        /// The receiver's status, when it answered.
        status: Option<u16>,
        /// Delay before the next attempt; `None` makes it a dead letter.
        retry_in_ms: Option<u64>,
    },
}

/// One channel's counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ChannelFigures {
    /// Deliveries the receiver accepted.
    pub sent: u64,
    /// Attempts that failed (a delivery retried three times counts three).
    pub failed: u64,
    /// Deliveries that became dead letters.
    pub dead: u64,
    /// Dead letters dropped because more than [`DEAD_KEPT`] were kept.
    pub dropped: u64,
    /// Deliveries made for the channel.
    pub enqueued: u64,
}

impl Delivery {
    /// Attempts made since the delivery was made or last retried by hand.
    pub fn attempts_this_round(&self) -> u32 {
        self.attempts.saturating_sub(self.retried_at_attempt)
    }
}

/// A compact id for a new channel.
pub fn new_channel_id() -> String {
    format!("chn_{:032x}", rand::random::<u128>())
}

/// The delay before attempt `attempts + 1` after `attempts` failed ones: `base × 2^(attempts-1)` capped at
/// 15 minutes, less a random part of up to half (`jitter` in 0..1), so delays grow and servers that
/// failed together do not retry together.
pub fn backoff_ms(base: u64, attempts: u32, jitter: f64) -> u64 {
    let full = base.saturating_mul(1u64 << attempts.saturating_sub(1).min(30)).min(MAX_BACKOFF_MS);
    full - (full as f64 * 0.5 * jitter.clamp(0.0, 1.0)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_never_shrinks_whatever_the_jitter() {
        let mut last_max = 0;
        for attempts in 1..=12 {
            let low = backoff_ms(100, attempts, 1.0);
            let high = backoff_ms(100, attempts, 0.0);
            assert!(low >= last_max || high == MAX_BACKOFF_MS, "attempt {attempts}: {low} < {last_max}");
            assert!(low <= high && high <= MAX_BACKOFF_MS);
            last_max = high;
        }
    }

    #[test]
    fn filters_default_to_what_people_want_and_check_task_facts() {
        let filter = ChannelFilter::default();
        assert!(filter.matches(EventKind::TaskFailed, None));
        assert!(!filter.matches(EventKind::TaskClaimed, None));
        let all = ChannelFilter { events: Some(vec!["*".into()]), ..Default::default() };
        assert!(all.matches(EventKind::TaskClaimed, None));
        let typed = ChannelFilter {
            events: Some(vec!["task_completed".into()]),
            task_types: vec!["alpha".into()],
            priorities: vec![Priority::High],
        };
        let alpha_high = TaskFacts { task_type: "alpha".into(), priority: Priority::High };
        let alpha_low = TaskFacts { task_type: "alpha".into(), priority: Priority::Low };
        assert!(typed.matches(EventKind::TaskCompleted, Some(&alpha_high)));
        assert!(!typed.matches(EventKind::TaskCompleted, Some(&alpha_low)));
        assert!(!typed.matches(EventKind::TaskCompleted, None));
        assert!(!typed.matches(EventKind::TaskFailed, Some(&alpha_high)));
    }

    #[test]
    fn a_webhook_gets_a_secret_and_others_refuse_one() {
        let new = |kind, secret: Option<&str>| NewChannel {
            name: "ops".into(),
            kind,
            url: "https://hooks.example.com/x".into(),
            secret: secret.map(str::to_string),
            filter: ChannelFilter::default(),
            max_attempts: None,
            backoff_ms: None,
            enabled: None,
        };
        let made = new(ChannelKind::Webhook, None).into_channel("chn_1".into(), "t".into()).unwrap();
        assert!(made.secret.as_ref().is_some_and(|s| s.len() >= 16));
        assert_eq!(
            new(ChannelKind::Webhook, Some("short")).into_channel("c".into(), "t".into()).unwrap_err().field,
            "secret"
        );
        assert_eq!(
            new(ChannelKind::Slack, Some("0123456789abcdef")).into_channel("c".into(), "t".into()).unwrap_err().field,
            "secret"
        );
        let bad_event = NewChannel {
            filter: ChannelFilter { events: Some(vec!["task_exploded".into()]), ..Default::default() },
            ..new(ChannelKind::Teams, None)
        };
        assert_eq!(bad_event.into_channel("c".into(), "t".into()).unwrap_err().field, "filter.events[0]");
    }
}
