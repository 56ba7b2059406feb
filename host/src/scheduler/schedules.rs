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

/// How often each server looks for due ticks (plus up to 50 ms of jitter, so servers do not race in step).
const POLL: Duration = Duration::from_millis(200);

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
        view(&stored)
    }

    /// Deletes a schedule (the tasks it made stay).
    pub async fn delete_schedule(&self, id: &str) -> Result<(), EngineError> {
        if self.store.delete_schedule(id).await? { Ok(()) } else { Err(EngineError::ScheduleNotFound(id.to_string())) }
    }

    /// Looks for due ticks five times a second (with jitter) until shutdown.
    pub async fn run_schedules(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let wait = POLL + Duration::from_millis(rand::random::<u64>() % 50);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            if let Err(error) = self.fire_due_schedules().await {
                tracing::debug!(%error, "firing schedules: will retry");
            }
        }
    }

    /// Fires the ticks due now; how many tasks this server made (replays of another server's included).
    pub async fn fire_due_schedules(&self) -> Result<u64, EngineError> {
        let mut made = 0;
        for record in self.store.due_schedules(FIRED_PER_PASS).await? {
            made += self.fire(&record).await?;
        }
        Ok(made)
    }

    /// Fires one due schedule's ticks and moves it on. A store outage stops the firing before anything moves (the
    /// ticks stay due); a refused submit (a policy, a full queue) skips its tick with the reason on record.
    async fn fire(&self, record: &ScheduleRecord) -> Result<u64, EngineError> {
        let Some(from_ms) = record.next_run_ms else { return Ok(0) };
        let Ok(definition) = definition(record) else { return Ok(0) };
        let Ok(timing) = definition.spec.timing(definition.created_ms) else { return Ok(0) };
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
        let runs = advance.runs;
        self.store.advance_schedule(advance).await?;
        Ok(runs)
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
