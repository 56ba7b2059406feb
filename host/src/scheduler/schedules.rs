//! Recurring tasks: the schedules' changes and the loop that fires them (decision 0016).
//!
//! Every server runs the loop. A tick is fired by submitting the schedule's task with the idempotency key
//! `schedule:<id>:<tick>` and then moving the schedule's next tick with a compare-and-set in the store. Servers
//! racing on one tick submit the same key (the store answers the second with the first task) and only one moves the
//! tick; a server dying between the two steps leaves the tick due, and the next server's submit is a replay. So each
//! tick makes one task, whatever the number of servers and wherever one dies.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{EngineError, Scheduler};
use crate::model::{
    Schedule, ScheduleAdvance, ScheduleChange, ScheduleDefinition, ScheduleRecord, ScheduleSpec, StoreError,
    new_schedule_id,
};

/// The longest a server's loop sleeps between two looks for due ticks: a schedule created or changed through another
/// server is found within it. A tick due sooner wakes the loop when it comes due, a change through this server at
/// once.
const LOOK_AT_LEAST_EVERY: Duration = Duration::from_secs(1);

/// The shortest sleep between two looks: many schedules ticking at different moments (or more due ticks than a pass
/// fires) make a server look at most five times a second, as often as it once polled, not once per tick.
const LOOK_AT_MOST_EVERY: Duration = Duration::from_millis(200);

/// Up to this much is added to each sleep, so that servers waking for the same tick do not race in step.
const JITTER_MS: u64 = 50;

/// Due schedules fired per pass.
const FIRED_PER_PASS: usize = 100;

impl Scheduler {
    /// Creates a schedule owned by `by` (its tasks are submitted as theirs).
    pub async fn create_schedule(&self, spec: ScheduleSpec, by: &str) -> Result<Schedule, EngineError> {
        spec.validate()?;
        let now = self.store.now_ms();
        let definition = ScheduleDefinition { spec, created_by: by.to_string(), created_ms: now, updated_ms: now };
        let next = next_tick(&definition, now)?;
        let record = ScheduleRecord {
            id: new_schedule_id(),
            definition: serde_json::to_string(&definition).expect("a definition serializes"),
            next_run_ms: next,
            last_run_ms: None,
            last_task_id: None,
            last_error: None,
            runs: 0,
            skipped: 0,
        };
        let stored = self.store.put_schedule(record, true).await?;
        self.schedules_changed.notify_one();
        view(&stored)
    }

    /// One schedule.
    pub async fn schedule(&self, id: &str) -> Result<Schedule, EngineError> {
        let record = self.store.schedule(id).await?.ok_or_else(|| EngineError::ScheduleNotFound(id.to_string()))?;
        view(&record)
    }

    /// Every schedule.
    pub async fn schedules(&self) -> Result<Vec<Schedule>, EngineError> {
        self.store.schedules().await?.iter().map(view).collect()
    }

    /// Changes a schedule. A change of timing (or a pause or resume) computes the next tick from now; any other
    /// change keeps the tick the store has.
    pub async fn change_schedule(&self, id: &str, change: ScheduleChange) -> Result<Schedule, EngineError> {
        let record = self.store.schedule(id).await?.ok_or_else(|| EngineError::ScheduleNotFound(id.to_string()))?;
        let mut definition = definition(&record)?;
        let (spec, timing_changed) = change.apply(definition.spec);
        spec.validate()?;
        let now = self.store.now_ms();
        definition.spec = spec;
        definition.updated_ms = now;
        let next = next_tick(&definition, now)?;
        let changed = ScheduleRecord {
            definition: serde_json::to_string(&definition).expect("a definition serializes"),
            next_run_ms: next,
            ..record
        };
        let stored = self.store.put_schedule(changed, timing_changed).await?;
        self.schedules_changed.notify_one();
        view(&stored)
    }

    /// Deletes a schedule (the tasks it made stay).
    pub async fn delete_schedule(&self, id: &str) -> Result<(), EngineError> {
        if self.store.delete_schedule(id).await? { Ok(()) } else { Err(EngineError::ScheduleNotFound(id.to_string())) }
    }

    /// Fires due ticks until shutdown, sleeping until the next one comes due (between `LOOK_AT_MOST_EVERY` and
    /// `LOOK_AT_LEAST_EVERY`, with jitter), or until a schedule changes through this server.
    pub async fn run_schedules(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let next = self.fire_due_schedules().await.unwrap_or_else(|error| {
                tracing::debug!(%error, "firing schedules: will retry");
                None
            });
            let wait = next.map_or(LOOK_AT_LEAST_EVERY, |next| next.clamp(LOOK_AT_MOST_EVERY, LOOK_AT_LEAST_EVERY))
                + Duration::from_millis(rand::random::<u64>() % JITTER_MS);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.schedules_changed.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Fires the ticks due now; how long until the next tick comes due, as far as the store and this pass's
    /// firings tell (none: no schedule ticks).
    pub async fn fire_due_schedules(&self) -> Result<Option<Duration>, EngineError> {
        let due = self.store.due_schedules(FIRED_PER_PASS).await?;
        let mut next_ms = due.next_in_ms.map(|ms| self.store.now_ms().saturating_add(ms));
        for record in &due.items {
            // A schedule this server could not move on (its definition unreadable here) is looked at again later.
            if let Some(moved_to) = self.fire(record).await? {
                next_ms = Some(next_ms.map_or(moved_to, |ms| ms.min(moved_to)));
            }
        }
        Ok(next_ms.map(|ms| Duration::from_millis(ms.saturating_sub(self.store.now_ms()))))
    }

    /// Fires one due schedule's ticks and moves it on: its next tick, when it moved it and it still ticks. A store
    /// outage stops the firing before anything moves (the ticks stay due); a refused submit (a policy, a full
    /// queue) skips its tick with the reason on record.
    async fn fire(&self, record: &ScheduleRecord) -> Result<Option<u64>, EngineError> {
        let Some(from_ms) = record.next_run_ms else { return Ok(None) };
        let Ok(definition) = definition(record) else { return Ok(None) };
        let Ok(timing) = definition.spec.timing(definition.created_ms) else { return Ok(None) };
        let now = self.store.now_ms().max(from_ms);
        let firing = timing.firing(from_ms, now, definition.spec.catch_up);
        let mut advance = ScheduleAdvance {
            id: record.id.clone(),
            from_ms,
            next_ms: firing.next,
            fired: None,
            runs: 0,
            skipped: firing.skipped,
            error: None,
        };
        for tick in firing.ticks {
            let task = definition.spec.task_for(&record.id, tick);
            match self.submit(task, &definition.created_by).await {
                Ok(submitted) => {
                    advance.runs += 1;
                    advance.fired = Some((tick, Some(submitted.task_id.to_string())));
                    advance.error = None;
                }
                // The tick's task exists: the template changed after another server submitted it.
                Err(EngineError::Store(StoreError::Conflict { code: "idempotency_key_reused", .. })) => {
                    advance.runs += 1;
                    advance.fired = Some((tick, None));
                }
                Err(error @ EngineError::Store(StoreError::Unavailable(_))) => return Err(error),
                Err(refused) => {
                    advance.skipped += 1;
                    advance.fired = Some((tick, None));
                    advance.error = Some(refused.to_string());
                }
            }
        }
        let next = advance.next_ms;
        self.store.advance_schedule(advance).await?;
        Ok(next)
    }
}

/// The stored definition.
fn definition(record: &ScheduleRecord) -> Result<ScheduleDefinition, EngineError> {
    serde_json::from_str(&record.definition).map_err(|e| {
        EngineError::Store(StoreError::Unavailable(format!(
            "schedule {} has a definition this server cannot read: {e}",
            record.id
        )))
    })
}

/// The API's view of a stored schedule.
fn view(record: &ScheduleRecord) -> Result<Schedule, EngineError> {
    definition(record)?;
    Schedule::from_record(record).ok_or_else(|| EngineError::ScheduleNotFound(record.id.clone()))
}

/// The first tick after `now`, none while paused.
fn next_tick(definition: &ScheduleDefinition, now: u64) -> Result<Option<u64>, EngineError> {
    if definition.spec.paused {
        return Ok(None);
    }
    Ok(definition.spec.timing(definition.created_ms)?.next_after(now))
}
