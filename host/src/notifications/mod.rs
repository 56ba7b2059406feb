//! Notifications: the fleet's events sent to people's channels (webhooks, Slack, Teams), at least once.
//!
//! Two loops run on each server with the worker on (`ARAGORA_NOTIFICATION_WORKER`, on by default):
//! - the **dispatcher** turns events into deliveries. It reads the event log from the fleet's delivery cursor,
//!   matches each event against the channels' filters and commits the deliveries together with the cursor's move
//!   (a compare-and-set): servers sharing a store race for each stretch of the log and exactly one makes its
//!   deliveries; a server that dies before committing leaves the cursor where it was.
//! - the **sender** leases due deliveries ([`Store::claim_deliveries`]), one server per delivery, sends them
//!   (`send.rs`) and records each attempt's end: sent, retried after an exponential backoff with jitter, or a dead
//!   letter once the channel's attempts ran out. A server that dies mid-send leaves the lease to run out, and
//!   another sends the delivery again: receivers de-duplicate on `X-Aragora-Event-Id`.

pub mod send;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::Notify;
use tokio::sync::broadcast::error::TryRecvError;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::model::{
    AttemptResult, Channel, Delivery, DeliveryMessage, Event, EventKind, Priority, StoreResult, TaskFacts, TaskId,
    backoff_ms,
};
use crate::store::{Due, Store};

pub use send::{Sender, check_url};

/// Events read from the log per dispatch step.
const DISPATCH_BATCH: usize = 500;
/// Pause between dispatch rounds, so a busy log is read in batches rather than once per event.
const DISPATCH_PAUSE: Duration = Duration::from_millis(50);
/// Dispatch rounds happen at least this often, events or not (a lost wake-up costs at most this).
const DISPATCH_TICK: Duration = Duration::from_secs(1);
/// Deliveries one server sends at once.
const SEND_BATCH: usize = 16;
/// How long a server owns a delivery it is sending: longer than an attempt may take.
const LEASE_MS: u64 = 3 * send::SEND_TIMEOUT.as_millis() as u64;
/// The longest a sender that leased nothing sleeps before it looks again, however far off the next due delivery is
/// (or with none queued): deliveries another server enqueued (or a person retried) reach this one's sender only by
/// looking, and that server's sender may be busy or dead. Retries and lease ends due sooner wake it when they come
/// due.
const SEND_IDLE_MAX: Duration = Duration::from_secs(1);

/// The shortest sleep of a sender that leased nothing: retries due at many different moments make it look at most
/// ten times a second, as often as it once polled, not once per retry.
const SEND_IDLE_MIN: Duration = Duration::from_millis(100);

/// The notification settings of a server.
#[derive(Clone, Debug)]
pub struct NotificationSettings {
    /// Whether this server dispatches and sends (`ARAGORA_NOTIFICATION_WORKER`, on). Off, it still serves the
    /// API; other servers of the fleet send.
    pub worker: bool,
    /// Whether channels may target loopback, link-local and private addresses (`NOTIFICATION_ALLOW_PRIVATE`, off).
    pub allow_private: bool,
}

impl Default for NotificationSettings {
    fn default() -> Self {
        NotificationSettings { worker: true, allow_private: false }
    }
}

/// Starts the dispatcher and the sender on `store` until `shutdown`.
pub fn start(
    store: Arc<dyn Store>,
    settings: &NotificationSettings,
    shutdown: CancellationToken,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let sender = Sender::new(settings.allow_private)?;
    let made = Arc::new(Notify::new());
    Ok(vec![
        tokio::spawn(run_dispatcher(store.clone(), made.clone(), shutdown.clone())),
        tokio::spawn(run_sender(store, sender, made, shutdown)),
    ])
}

async fn run_dispatcher(store: Arc<dyn Store>, made: Arc<Notify>, shutdown: CancellationToken) {
    let mut events = store.subscribe();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = events.recv() => {}
            _ = tokio::time::sleep(DISPATCH_TICK) => {}
        }
        // Everything that arrived meanwhile is read from the log in this round.
        while !matches!(events.try_recv(), Err(TryRecvError::Empty | TryRecvError::Closed)) {}
        match dispatch(store.as_ref()).await {
            Ok(0) => {}
            Ok(_) => made.notify_one(),
            // A stretch made before the error is sent within the sender's longest sleep.
            Err(error) => tracing::debug!(%error, "notification dispatch: will retry"),
        }
        tokio::time::sleep(DISPATCH_PAUSE).await;
    }
}

/// Turns the events after the fleet's cursor into deliveries, until the log's end; how many it made.
pub async fn dispatch(store: &dyn Store) -> StoreResult<usize> {
    if store.channels().await?.is_empty() {
        // With no channel the cursor stays put (and the log unread); the first channel moves it to the log's end.
        return Ok(0);
    }
    let mut made = 0;
    loop {
        let cursor = store.notification_cursor().await?;
        let events = match store.events_after(cursor.as_deref(), DISPATCH_BATCH).await? {
            Some(events) => events,
            None => {
                tracing::warn!(
                    cursor = cursor.as_deref().unwrap_or_default(),
                    "notifications fell behind the event log's cap (SSE_BUFFER): events were missed; going on from \
                     the oldest event kept"
                );
                store.events_after(None, DISPATCH_BATCH).await?.unwrap_or_default()
            }
        };
        let Some(last) = events.last() else { return Ok(made) };
        let to = last.id.clone();
        let full = events.len() == DISPATCH_BATCH;
        // The channels are read after the events: a channel created before an event of this stretch is seen, so
        // no channel misses what happened after its creation. Disabled channels get nothing, and the cursor
        // still moves, so enabling one later does not replay the past.
        let channels: Vec<Channel> = store.channels().await?.into_iter().filter(|c| c.enabled).collect();
        let deliveries = deliveries_for(store, &channels, events).await?;
        let count = deliveries.len();
        // Lost the race: another server made this stretch's deliveries; read the new cursor.
        if store.enqueue_deliveries(cursor.as_deref(), &to, deliveries).await? {
            made += count;
            if !full {
                return Ok(made);
            }
        }
    }
}

/// The deliveries `events` make on `channels`, reading a task's type and priority when a channel needs them.
async fn deliveries_for(store: &dyn Store, channels: &[Channel], events: Vec<Event>) -> StoreResult<Vec<Delivery>> {
    let mut facts: HashMap<String, Option<TaskFacts>> = HashMap::new();
    let mut deliveries = Vec::new();
    for event in events {
        let wanted: Vec<&Channel> = channels.iter().filter(|c| c.filter.wants_kind(event.kind)).collect();
        if wanted.is_empty() {
            continue;
        }
        let task = match &event.task_id {
            Some(task_id) => match facts.get(task_id) {
                Some(known) => known.clone(),
                None => {
                    let read = task_facts(store, &event, task_id).await?;
                    facts.insert(task_id.clone(), read.clone());
                    read
                }
            },
            None => None,
        };
        let message = DeliveryMessage { event, task };
        for channel in wanted {
            if channel.filter.matches(message.event.kind, message.task.as_ref()) {
                deliveries.push(Delivery::new(&message.event.id, &channel.id, &message));
            }
        }
    }
    Ok(deliveries)
}

/// A task's type and priority: from a submit event's own facts, else from the task (gone after retention: none).
async fn task_facts(store: &dyn Store, event: &Event, task_id: &str) -> StoreResult<Option<TaskFacts>> {
    if event.kind == EventKind::TaskSubmitted
        && let (Some(task_type), Some(priority)) = (event.data.get("task_type"), event.data.get("priority"))
        && let (Some(task_type), Ok(priority)) =
            (task_type.as_str(), serde_json::from_value::<Priority>(priority.clone()))
    {
        return Ok(Some(TaskFacts { task_type: task_type.to_string(), priority }));
    }
    let Ok(id) = TaskId::parse("task_id", task_id) else { return Ok(None) };
    Ok(store.get_task(&id).await?.map(|task| TaskFacts { task_type: task.task_type, priority: task.priority }))
}

async fn run_sender(store: Arc<dyn Store>, sender: Sender, made: Arc<Notify>, shutdown: CancellationToken) {
    loop {
        let idle = match send_due(store.as_ref(), &sender).await {
            Ok(Sent { count: 0, next_due_in }) => {
                Some(next_due_in.map_or(SEND_IDLE_MAX, |next| next.clamp(SEND_IDLE_MIN, SEND_IDLE_MAX)))
            }
            Ok(_) => None,
            Err(error) => {
                tracing::debug!(%error, "notification sender: will retry");
                Some(SEND_IDLE_MAX)
            }
        };
        match idle {
            Some(pause) => tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = made.notified() => {}
                _ = tokio::time::sleep(pause) => {}
            },
            None if shutdown.is_cancelled() => return,
            None => {}
        }
    }
}

/// What one round of [`send_due`] did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sent {
    /// Deliveries sent (each attempt recorded, whatever its end).
    pub count: usize,
    /// How long until the next delivery left comes due, as the store answered when leasing (none queued: none).
    pub next_due_in: Option<Duration>,
}

/// Leases the due deliveries (up to 16), sends them at once and records how each attempt ended.
pub async fn send_due(store: &dyn Store, sender: &Sender) -> StoreResult<Sent> {
    let Due { items: leased, next_in_ms } = store.claim_deliveries(SEND_BATCH, LEASE_MS).await?;
    let next_due_in = next_in_ms.map(Duration::from_millis);
    if leased.is_empty() {
        return Ok(Sent { count: 0, next_due_in });
    }
    let channels: HashMap<String, Channel> = store.channels().await?.into_iter().map(|c| (c.id.clone(), c)).collect();
    let attempts = leased.iter().map(|delivery| async {
        let result = match channels.get(&delivery.channel_id) {
            None => AttemptResult::Failed { error: "the channel was deleted".into(), status: None, retry_in_ms: None },
            Some(channel) => match sender.send(channel, delivery).await {
                Ok(status) => AttemptResult::Sent { status },
                Err(failure) => AttemptResult::Failed {
                    error: failure.error,
                    status: failure.status,
                    retry_in_ms: (delivery.attempts_this_round() < channel.max_attempts)
                        .then(|| backoff_ms(channel.backoff_ms, delivery.attempts_this_round(), rand::random::<f64>())),
                },
            },
        };
        if let Err(error) = store.finish_delivery(&delivery.id, delivery.attempts, result).await {
            // The lease runs out and the delivery is sent again (even if this attempt was accepted): at least once.
            tracing::warn!(%error, delivery = %delivery.id, "cannot record a notification attempt");
        }
    });
    join_all(attempts).await;
    Ok(Sent { count: leased.len(), next_due_in })
}
