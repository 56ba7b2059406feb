//! The one task that follows the store's events and this server's plugin events and hands each, in order, to
//! whoever acts on it: the scheduler (wakes the claims an event concerns), fleet plugins (applies an upload or an
//! enable/disable record), the coordinator's subscribers (SSE streams) and `wait_for_result`. One reader instead
//! of one per consumer: an event costs one wake-up, however many consume it. An event arrives as a shared record
//! (`Arc<EventRecord>`, from either store); its wire form ([`Event`]) is built only while someone is subscribed to
//! the coordinator's stream (SSE), and then shared by all of them: `wait_for_result` reads the record.

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::fleet_plugins::FleetChange;
use crate::model::{Event, EventKind, EventRecord, rfc3339_ms};
use crate::plugins::PluginEvent;
use crate::scheduler::Scheduler;
use crate::store::Store;

/// Where the pump hands events.
pub(super) struct Consumers {
    pub scheduler: Arc<Scheduler>,
    pub fleet_plugins: mpsc::UnboundedSender<FleetChange>,
    /// The coordinator's stream (`ControlPlaneCoordinator::subscribe`).
    pub subscribers: broadcast::Sender<Arc<Event>>,
    /// Store events as they came, for `wait_for_result`.
    pub task_waits: broadcast::Sender<Arc<EventRecord>>,
    /// Counts the store events the pump missed: its own falls behind, and the store's skips
    /// (`ControlPlaneCoordinator::subscribe_gaps`).
    pub stream_gaps: watch::Sender<u64>,
    /// Stamps plugin events with this server and the store's time.
    pub store: Arc<dyn Store>,
    pub server_id: String,
}

/// What the pump reads: the store's events, and the count of those the store itself skipped
/// ([`Store::skipped_events`]).
pub(super) struct StoreFeed {
    pub events: broadcast::Receiver<Arc<EventRecord>>,
    pub skipped: watch::Receiver<u64>,
}

/// Pumps until `shutdown` fires or the store's stream closes.
pub(super) async fn run(
    consumers: Consumers,
    mut store: StoreFeed,
    mut plugin_events: broadcast::Receiver<PluginEvent>,
    shutdown: CancellationToken,
) {
    let mut plugins_open = true;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            received = store.events.recv() => match received {
                Ok(event) => {
                    // The store counts a gap before it sends the event after it: one look per event sees the gap
                    // no later than its place. One counted during a lag of the pump's still ends the streams again
                    // here, since those that resumed from the lag may have gone on past it.
                    if store.skipped.has_changed().unwrap_or(false) {
                        store.skipped.mark_unchanged();
                        tracing::warn!("the store skipped events: claims recheck, plugins resync, event streams end");
                        consumers.missed();
                    }
                    consumers.store_event(event)
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "event pump lagged: claims recheck, plugins resync, event streams end");
                    consumers.missed();
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            received = plugin_events.recv(), if plugins_open => match received {
                Ok(event) => {
                    let event = plugin_event(event, &consumers.server_id, consumers.store.now_ms());
                    let _ = consumers.subscribers.send(Arc::new(event));
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "the event pump fell behind the plugin registry; subscribers miss events");
                }
                Err(broadcast::error::RecvError::Closed) => plugins_open = false,
            },
        }
    }
}

impl Consumers {
    /// Store events went by unseen: whatever acts on them cannot tell which, so each starts again from the store.
    fn missed(&self) {
        self.scheduler.events_missed();
        let _ = self.fleet_plugins.send(FleetChange::Missed);
        self.stream_gaps.send_modify(|gaps| *gaps += 1);
    }

    fn store_event(&self, event: Arc<EventRecord>) {
        self.scheduler.observe(&event);
        if let Some(change) = FleetChange::of(&event) {
            let _ = self.fleet_plugins.send(change);
        }
        // No subscriber is the common case on a busy server, and then the wire form is not built.
        // One that subscribes meanwhile misses nothing it could have had: a subscription before a check is counted.
        if self.subscribers.receiver_count() > 0 {
            let _ = self.subscribers.send(Arc::new(event.to_event()));
        }
        if self.task_waits.receiver_count() > 0 {
            let _ = self.task_waits.send(event);
        }
    }
}

/// A plugin registry event as the coordinator's stream carries it (ids end in `-p`: not resumable, the store's
/// buffer does not hold them).
fn plugin_event(event: PluginEvent, server_id: &str, now_ms: u64) -> Event {
    let (kind, data) = match &event {
        PluginEvent::PluginLoaded { .. } => (EventKind::PluginLoaded, serde_json::to_value(&event)),
        PluginEvent::PluginRejected { .. } => (EventKind::PluginRejected, serde_json::to_value(&event)),
        PluginEvent::PluginRemoved { .. } => (EventKind::PluginRemoved, serde_json::to_value(&event)),
    };
    Event {
        id: format!("{now_ms}-p"),
        kind,
        time: rfc3339_ms(now_ms),
        server_id: server_id.to_string(),
        task_id: None,
        agent_id: None,
        data: data.unwrap_or(Value::Null),
    }
}
