//! Schedules: recurring tasks. A schedule is a task template fired on a cron expression (in a time zone) or a fixed
//! interval. The store keeps its definition and the time of its next tick; firing a tick submits the template with
//! an idempotency key naming the tick, then moves the next tick forward with a compare-and-set, so servers racing
//! on one tick make one task (decision 0016).

use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{SubmitRequest, ValidationError};

/// Most schedules a store keeps.
pub const MAX_SCHEDULES: usize = 10_000;

/// Longest fixed interval: a year.
const MAX_INTERVAL_SECONDS: u64 = 366 * 24 * 3600;

/// Most missed ticks `catch_up: all` fires after an outage; older ones are skipped (and counted).
pub const MAX_CATCH_UP_TICKS: usize = 1_000;

/// What happens to ticks missed while no server could fire them (an outage, every server stopped).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Skip them: the schedule resumes at its next future tick.
    None,
    /// Fire once for all of them (the latest), then resume.
    #[default]
    One,
    /// Fire each of them, oldest first (at most [`MAX_CATCH_UP_TICKS`]).
    All,
}

/// What a client sets on a schedule (`POST /schedules`; `PATCH` changes some of it).
#[derive(Clone, Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// A name for people.
    pub name: String,
    /// A cron expression (5 fields, or 6 with seconds first), evaluated in `timezone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// Or a fixed interval in seconds (1 to a year), counted from the schedule's creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_seconds: Option<u64>,
    /// The IANA time zone of the cron expression (default `UTC`).
    #[serde(default = "utc")]
    pub timezone: String,
    /// The task each tick submits (`POST /tasks`'s body without `idempotency_key`: the tick is the key).
    pub task: SubmitRequest,
    /// Ticks missed while no server could fire them: `none`, `one` (default) or `all`.
    #[serde(default)]
    pub catch_up: CatchUp,
    /// A paused schedule fires nothing until resumed; it then resumes at its next future tick.
    #[serde(default)]
    pub paused: bool,
}

fn utc() -> String {
    "UTC".to_string()
}

/// A schedule as the store keeps it: the definition (opaque to the store) and the firing state it compares.
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduleRecord {
    /// `sched_` + 32 hex digits.
    pub id: String,
    /// The [`ScheduleDefinition`] as JSON.
    pub definition: String,
    /// The next tick to fire (store ms); none while paused.
    pub next_run_ms: Option<u64>,
    /// The last tick fired.
    pub last_run_ms: Option<u64>,
    /// The task the last tick made.
    pub last_task_id: Option<String>,
    /// Why the last tick made no task, when it did not.
    pub last_error: Option<String>,
    /// Ticks fired (tasks made).
    pub runs: u64,
    /// Ticks skipped: missed under `catch_up: none`, or refused at submit.
    pub skipped: u64,
}

/// A firing's outcome, applied by the store only if the schedule's next tick is still `from_ms` (the
/// compare-and-set that lets one of several racing servers move it).
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduleAdvance {
    /// The schedule.
    pub id: String,
    /// The next tick the firing server read.
    pub from_ms: u64,
    /// The next tick from now on.
    pub next_ms: Option<u64>,
    /// The last tick fired, and the task it made (none when refused at submit).
    pub fired: Option<(u64, Option<String>)>,
    /// Tasks made.
    pub runs: u64,
    /// Ticks skipped.
    pub skipped: u64,
    /// Why the last tick made no task.
    pub error: Option<String>,
}

/// The part of a schedule that changes only by the API: the spec, who made it and when.
#[derive(Clone, Debug, Serialize)]
pub struct ScheduleDefinition {
    /// What the client set.
    #[serde(flatten)]
    pub spec: ScheduleSpec,
    /// Token subject of the creator (the tasks are submitted as theirs).
    pub created_by: String,
    /// Creation time (ms): the anchor of interval ticks.
    pub created_ms: u64,
    /// Last change (ms).
    pub updated_ms: u64,
}

/// The fields of [`ScheduleSpec`], as a stored definition holds them beside its own.
const SPEC_FIELDS: [&str; 7] = ["name", "cron", "interval_seconds", "timezone", "task", "catch_up", "paused"];

/// Read by hand rather than through `flatten`, which buffers the fields in a form the task template's payload (kept
/// as JSON text) cannot be read from; a JSON value can be. Fields this build does not know are ignored, as `flatten`
/// ignored them (a newer server may have written them).
impl<'de> Deserialize<'de> for ScheduleDefinition {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut fields = serde_json::Map::<String, Value>::deserialize(deserializer)?;
        let mut own = |name: &'static str| fields.remove(name).ok_or_else(|| D::Error::missing_field(name));
        let created_by = serde_json::from_value(own("created_by")?).map_err(D::Error::custom)?;
        let created_ms = serde_json::from_value(own("created_ms")?).map_err(D::Error::custom)?;
        let updated_ms = serde_json::from_value(own("updated_ms")?).map_err(D::Error::custom)?;
        fields.retain(|name, _| SPEC_FIELDS.contains(&name.as_str()));
        let spec = ScheduleSpec::deserialize(Value::Object(fields)).map_err(D::Error::custom)?;
        Ok(ScheduleDefinition { spec, created_by, created_ms, updated_ms })
    }
}

/// A firing: the ticks to fire now and where the schedule goes next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Firing {
    /// Ticks to submit, oldest first.
    pub ticks: Vec<u64>,
    /// Due ticks not fired (missed under the catch-up policy).
    pub skipped: u64,
    /// The first tick after `now`.
    pub next: Option<u64>,
}

/// A schedule's timing, parsed once.
pub enum Timing {
    /// A cron expression in a time zone.
    Cron(Box<croner::Cron>, chrono_tz::Tz),
    /// Every `period` ms from `anchor`.
    Every {
        /// First tick (ms).
        anchor: u64,
        /// The interval (ms).
        period: u64,
    },
}

impl ScheduleSpec {
    /// Checks everything a tick would otherwise find wrong later: the timing, the zone, the task template.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.name.trim().is_empty() || self.name.len() > 200 {
            return Err(ValidationError::new("name", "must be 1 to 200 characters"));
        }
        self.timing(0)?;
        if self.task.idempotency_key.is_some() {
            return Err(ValidationError::new("task.idempotency_key", "is set by the schedule (one key per tick)"));
        }
        // The template is checked as a submit would be, so a bad one is refused now rather than at every tick.
        self.task.clone().validate("schedule", 1, 0).map_err(|mut error| {
            error.field = format!("task.{}", error.field);
            error
        })?;
        Ok(())
    }

    /// The timing, interval ticks anchored at `created_ms`.
    pub fn timing(&self, created_ms: u64) -> Result<Timing, ValidationError> {
        match (&self.cron, self.interval_seconds) {
            (Some(_), Some(_)) | (None, None) => {
                Err(ValidationError::new("cron", "give exactly one of `cron` and `interval_seconds`"))
            }
            (None, Some(seconds)) => {
                if !(1..=MAX_INTERVAL_SECONDS).contains(&seconds) {
                    return Err(ValidationError::new("interval_seconds", "must be from 1 to 31622400 (a year)"));
                }
                Ok(Timing::Every { anchor: created_ms, period: seconds * 1000 })
            }
            (Some(expression), None) => {
                let zone = chrono_tz::Tz::from_str(self.timezone.trim())
                    .map_err(|_| ValidationError::new("timezone", "must be an IANA time zone such as Europe/Paris"))?;
                let cron = croner::Cron::from_str(expression.trim())
                    .map_err(|e| ValidationError::new("cron", format!("not a cron expression: {e}")))?;
                Ok(Timing::Cron(Box::new(cron), zone))
            }
        }
    }

    /// The task a tick submits: the template with the tick's idempotency key and the schedule named in its
    /// metadata (`schedule_id`, `schedule_tick`).
    pub fn task_for(&self, schedule_id: &str, tick_ms: u64) -> SubmitRequest {
        let mut task = self.task.clone();
        let mut metadata = task.metadata.take().unwrap_or_default();
        metadata.insert("schedule_id".into(), Value::String(schedule_id.to_string()));
        metadata.insert("schedule_tick".into(), Value::String(super::rfc3339_ms(tick_ms)));
        task.metadata = Some(metadata);
        task.idempotency_key = Some(format!("schedule:{schedule_id}:{tick_ms}"));
        task
    }
}

impl Timing {
    /// The first tick strictly after `after_ms`; none when the expression never matches again.
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        match self {
            Timing::Every { anchor, period } => {
                if after_ms < *anchor {
                    return Some(*anchor);
                }
                Some(anchor + ((after_ms - anchor) / period + 1) * period)
            }
            Timing::Cron(cron, zone) => {
                let after: DateTime<Utc> = Utc.timestamp_millis_opt(i64::try_from(after_ms).ok()?).single()?;
                let next = cron.find_next_occurrence(&after.with_timezone(zone), false).ok()?;
                u64::try_from(next.timestamp_millis()).ok()
            }
        }
    }

    /// What to fire at `now_ms` for a schedule whose next tick is `next_ms` (≤ `now_ms`), by `catch_up`. One due
    /// tick always fires; several due at once means some were missed.
    pub fn firing(&self, next_ms: u64, now_ms: u64, catch_up: CatchUp) -> Firing {
        let mut due = vec![next_ms];
        let mut cursor = next_ms;
        let mut missed = 0u64;
        let future = loop {
            match self.next_after(cursor) {
                Some(tick) if tick <= now_ms => {
                    if due.len() == MAX_CATCH_UP_TICKS {
                        // Keep the newest window: drop the oldest.
                        due.remove(0);
                        missed += 1;
                    }
                    due.push(tick);
                    cursor = tick;
                }
                other => break other,
            }
        };
        if due.len() == 1 {
            return Firing { ticks: due, skipped: missed, next: future };
        }
        let count = due.len() as u64 + missed;
        match catch_up {
            CatchUp::All => Firing { ticks: due, skipped: missed, next: future },
            CatchUp::One => Firing { ticks: vec![*due.last().expect("not empty")], skipped: count - 1, next: future },
            CatchUp::None => Firing { ticks: Vec::new(), skipped: count, next: future },
        }
    }
}

/// A schedule as the API shows it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Schedule {
    /// Its id.
    pub schedule_id: String,
    /// What the client set.
    #[serde(flatten)]
    pub spec: ScheduleSpec,
    /// When it fires next (none while paused).
    pub next_run_at: Option<String>,
    /// When it last fired.
    pub last_run_at: Option<String>,
    /// The task the last tick made.
    pub last_task_id: Option<String>,
    /// Why the last tick made no task, when it did not.
    pub last_error: Option<String>,
    /// Ticks fired.
    pub runs: u64,
    /// Ticks skipped (missed under the catch-up policy, or refused at submit).
    pub skipped: u64,
    /// Who made it.
    pub created_by: String,
    /// When.
    pub created_at: String,
    /// Its last change.
    pub updated_at: String,
}

impl Schedule {
    /// The view of a stored record; `None` if its definition does not parse (written by a newer server).
    pub fn from_record(record: &ScheduleRecord) -> Option<Schedule> {
        let definition: ScheduleDefinition = serde_json::from_str(&record.definition).ok()?;
        Some(Schedule {
            schedule_id: record.id.clone(),
            spec: definition.spec,
            next_run_at: record.next_run_ms.map(super::rfc3339_ms),
            last_run_at: record.last_run_ms.map(super::rfc3339_ms),
            last_task_id: record.last_task_id.clone(),
            last_error: record.last_error.clone(),
            runs: record.runs,
            skipped: record.skipped,
            created_by: definition.created_by,
            created_at: super::rfc3339_ms(definition.created_ms),
            updated_at: super::rfc3339_ms(definition.updated_ms),
        })
    }
}

/// A `PATCH /schedules/{id}` body: the fields to change.
#[derive(Clone, Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleChange {
    /// New name.
    pub name: Option<String>,
    /// New cron expression (clears `interval_seconds`).
    pub cron: Option<String>,
    /// New interval (clears `cron`).
    pub interval_seconds: Option<u64>,
    /// New time zone.
    pub timezone: Option<String>,
    /// New task template.
    pub task: Option<SubmitRequest>,
    /// New catch-up policy.
    pub catch_up: Option<CatchUp>,
    /// Pause (`true`) or resume (`false`).
    pub paused: Option<bool>,
}

impl ScheduleChange {
    /// `spec` with this change applied; whether the timing changed (the next tick is then computed again).
    pub fn apply(self, mut spec: ScheduleSpec) -> (ScheduleSpec, bool) {
        let before = (spec.cron.clone(), spec.interval_seconds, spec.timezone.clone(), spec.paused);
        if let Some(name) = self.name {
            spec.name = name;
        }
        if let Some(cron) = self.cron {
            spec.cron = Some(cron);
            spec.interval_seconds = None;
        }
        if let Some(seconds) = self.interval_seconds {
            spec.interval_seconds = Some(seconds);
            spec.cron = None;
        }
        if let Some(zone) = self.timezone {
            spec.timezone = zone;
        }
        if let Some(task) = self.task {
            spec.task = task;
        }
        if let Some(catch_up) = self.catch_up {
            spec.catch_up = catch_up;
        }
        if let Some(paused) = self.paused {
            spec.paused = paused;
        }
        let after = (spec.cron.clone(), spec.interval_seconds, spec.timezone.clone(), spec.paused);
        (spec, before != after)
    }
}

/// A new schedule id: `sched_` + 32 hex digits.
pub fn new_schedule_id() -> String {
    format!("sched_{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every(seconds: u64) -> Timing {
        Timing::Every { anchor: 10_000, period: seconds * 1000 }
    }

    #[test]
    fn interval_ticks_count_from_the_anchor() {
        assert_eq!(every(1).next_after(0), Some(10_000));
        assert_eq!(every(1).next_after(10_000), Some(11_000));
        assert_eq!(every(1).next_after(10_999), Some(11_000));
        assert_eq!(every(60).next_after(75_000), Some(130_000));
    }

    #[test]
    fn catch_up_fires_none_one_or_all_of_the_missed_ticks_and_one_due_tick_always() {
        let timing = every(1);
        assert_eq!(
            timing.firing(11_000, 11_400, CatchUp::None),
            Firing { ticks: vec![11_000], skipped: 0, next: Some(12_000) }
        );
        assert_eq!(timing.firing(11_000, 14_500, CatchUp::All).ticks, vec![11_000, 12_000, 13_000, 14_000]);
        assert_eq!(
            timing.firing(11_000, 14_500, CatchUp::One),
            Firing { ticks: vec![14_000], skipped: 3, next: Some(15_000) }
        );
        assert_eq!(
            timing.firing(11_000, 14_500, CatchUp::None),
            Firing { ticks: vec![], skipped: 4, next: Some(15_000) }
        );
        let long = timing.firing(11_000, 11_000 + 5_000 * 1000, CatchUp::All);
        assert_eq!((long.ticks.len(), long.skipped), (MAX_CATCH_UP_TICKS, 5_001 - MAX_CATCH_UP_TICKS as u64));
        assert_eq!(long.ticks.last(), Some(&(11_000 + 5_000 * 1000)));
    }

    #[test]
    fn the_spec_fields_a_definition_reads_are_the_ones_a_spec_writes() {
        let spec = ScheduleSpec {
            name: "n".into(),
            cron: Some("* * * * *".into()),
            interval_seconds: Some(60),
            timezone: "UTC".into(),
            task: SubmitRequest { task_type: "t".into(), ..SubmitRequest::default() },
            catch_up: CatchUp::One,
            paused: false,
        };
        let written = serde_json::to_value(&spec).unwrap();
        let mut names: Vec<&str> = written.as_object().unwrap().keys().map(String::as_str).collect();
        let mut expected = SPEC_FIELDS.to_vec();
        names.sort_unstable();
        expected.sort_unstable();
        assert_eq!(names, expected);
    }

    #[test]
    fn a_stored_definition_reads_back_with_its_task_payload() {
        let stored = r#"{"name": "n", "interval_seconds": 60, "timezone": "UTC", "catch_up": "all", "paused": false,
            "task": {"task_type": "t", "payload": {"z": 1, "a": [2]}}, "created_by": "ops", "created_ms": 5,
            "updated_ms": 6, "written_by_a_newer_server": true}"#;
        let definition: ScheduleDefinition = serde_json::from_str(stored).unwrap();
        // Read through a JSON value, so compacted with its keys sorted: the same payload.
        assert_eq!(definition.spec.task.payload.as_ref().map(|p| p.get()), Some(r#"{"a":[2],"z":1}"#));
        assert_eq!((definition.created_by.as_str(), definition.created_ms, definition.updated_ms), ("ops", 5, 6));
        assert_eq!((definition.spec.interval_seconds, definition.spec.catch_up), (Some(60), CatchUp::All));
        // Written and read again: the same definition.
        let again: ScheduleDefinition = serde_json::from_str(&serde_json::to_string(&definition).unwrap()).unwrap();
        assert_eq!(serde_json::to_value(&again).unwrap(), serde_json::to_value(&definition).unwrap());
        let missing =
            r#"{"name": "n", "interval_seconds": 60, "task": {"task_type": "t"}, "created_ms": 5, "updated_ms": 6}"#;
        assert!(serde_json::from_str::<ScheduleDefinition>(missing).unwrap_err().to_string().contains("created_by"));
    }

    #[test]
    fn cron_ticks_follow_the_time_zone() {
        let spec = |cron: &str, zone: &str| ScheduleSpec {
            name: "n".into(),
            cron: Some(cron.into()),
            interval_seconds: None,
            timezone: zone.into(),
            task: SubmitRequest { task_type: "t".into(), ..SubmitRequest::default() },
            catch_up: CatchUp::One,
            paused: false,
        };
        // 2026-01-15T08:30:00Z; 09:00 in Paris (UTC+1 in January) is 08:00Z the next day.
        let at = 1_768_465_800_000;
        let paris = spec("0 9 * * *", "Europe/Paris").timing(0).unwrap();
        assert_eq!(paris.next_after(at).map(super::super::rfc3339_ms).as_deref(), Some("2026-01-16T08:00:00.000Z"));
        let utc = spec("*/15 * * * *", "UTC").timing(0).unwrap();
        assert_eq!(utc.next_after(at).map(super::super::rfc3339_ms).as_deref(), Some("2026-01-15T08:45:00.000Z"));
        assert!(spec("0 9 * * *", "Mars/Olympus").validate().is_err());
        assert!(spec("not cron", "UTC").validate().is_err());
    }
}
