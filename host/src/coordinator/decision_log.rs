//! The decision log's writer and retention (decision 0022). Plugin calls hand their records to a bounded queue
//! (`plugins/decision_log.rs`); one task per server gathers what arrives within [`GATHER`] (up to [`BATCH`]),
//! appends it to the store in one call, and tells this server's event subscribers (`decision` events). Retention
//! removes decisions older than `DECISION_RETENTION` at every `CLEANUP_INTERVAL`.
//!
//! Reads page through the store: `GET /decisions` filters by plugin and stage here, scanning at most [`SCAN`]
//! records per request and answering a cursor to go on from.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::config::DecisionSettings;
use crate::model::{
    DecisionQuery, DecisionRecord, Event, EventKind, MAX_DECISION_PAGE, StoreResult, decision_id_key, rfc3339_ms,
};
use crate::store::Store;

/// Records appended per store call at most.
pub const BATCH: usize = 512;
/// How long the writer gathers records before it appends them.
pub const GATHER: Duration = Duration::from_millis(20);
/// Records one `GET /decisions` looks at at most, matching or not.
pub const SCAN: usize = 10_000;

/// One page of `GET /decisions`.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct DecisionPage {
    /// The decisions, oldest first.
    pub decisions: Vec<DecisionRecord>,
    /// Pass as `after` for the next page; absent when the log has no more.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// Records this server's log dropped because its writer fell behind (since it started).
    pub dropped: u64,
}

/// Appends queued records until shutdown, then writes what is left.
pub async fn run_writer(
    store: Arc<dyn Store>,
    mut queue: mpsc::Receiver<DecisionRecord>,
    subscribers: broadcast::Sender<Arc<Event>>,
    settings: DecisionSettings,
    shutdown: CancellationToken,
) {
    let retention_ms = settings.retention.as_millis() as u64;
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => None,
            record = queue.recv() => record,
        };
        let Some(first) = first else { break };
        // Gather for a moment: one store call per batch, not per decision (on Redis, a script call saved per
        // few records; the log is read by people, to whom 20 ms is nothing).
        // Sized for a full batch at once: grown one push at a time, a batch of these large records was reallocated
        // into fresh pages several times per append (page faults were a few per cent of the server's time).
        let mut batch = Vec::with_capacity(BATCH);
        batch.push(first);
        let deadline = tokio::time::Instant::now() + GATHER;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, queue.recv()).await {
                Ok(Some(record)) => batch.push(record),
                Ok(None) | Err(_) => break,
            }
        }
        write(&store, batch, &subscribers, &settings, retention_ms).await;
    }
    let mut rest = Vec::new();
    while let Ok(record) = queue.try_recv() {
        rest.push(record);
    }
    for batch in rest.chunks(BATCH) {
        write(&store, batch.to_vec(), &subscribers, &settings, retention_ms).await;
    }
}

async fn write(
    store: &Arc<dyn Store>,
    batch: Vec<DecisionRecord>,
    subscribers: &broadcast::Sender<Arc<Event>>,
    settings: &DecisionSettings,
    retention_ms: u64,
) {
    let count = batch.len();
    // Copied only for a live subscriber (an SSE client asking for decisions): most of the time nobody listens. A
    // client that connects during the append misses this batch; `decision` events are not resumable anyway.
    let listened = (subscribers.receiver_count() > 0).then(|| batch.clone());
    match store.append_decisions(batch, settings.max_kept, retention_ms).await {
        Ok(ids) => {
            for (mut record, id) in listened.into_iter().flatten().zip(ids) {
                record.id = id;
                let _ = subscribers.send(Arc::new(decision_event(record)));
            }
        }
        Err(error) => tracing::warn!(%error, count, "plugin decisions not recorded"),
    }
}

/// A decision as the coordinator's stream carries it (ids end in `-d`: not resumable).
fn decision_event(record: DecisionRecord) -> Event {
    let (ms, _) = decision_id_key(&record.id);
    Event {
        id: format!("{ms}-d"),
        kind: EventKind::Decision,
        time: rfc3339_ms(record.at_ms),
        server_id: record.server_id.clone(),
        task_id: record.task_id.clone(),
        agent_id: record.agent_id.clone(),
        data: serde_json::to_value(&record).unwrap_or_default(),
    }
}

/// Removes decisions past the retention at every `interval` until shutdown.
pub async fn run_retention(
    store: Arc<dyn Store>,
    retention: Duration,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let before = store.now_ms().saturating_sub(retention.as_millis() as u64);
        if let Err(error) = store.trim_decisions(before, 100_000).await {
            tracing::warn!(%error, "old plugin decisions not removed; retrying at the next cleanup");
        }
    }
}

/// One page of decisions matching `query`, oldest first.
pub async fn page(store: &dyn Store, query: &DecisionQuery, dropped: u64) -> StoreResult<DecisionPage> {
    let limit = query.limit.clamp(1, MAX_DECISION_PAGE);
    let mut found = Vec::new();
    let mut after = query.after.clone();
    let mut scanned = 0;
    loop {
        let chunk = store.decisions(after.as_deref(), query.since_ms, 1_000).await?;
        let exhausted = chunk.len() < 1_000;
        for record in chunk {
            scanned += 1;
            after = Some(record.id.clone());
            if query.matches(&record) {
                found.push(record);
                if found.len() == limit {
                    return Ok(DecisionPage { decisions: found, next: after, dropped });
                }
            }
        }
        if exhausted {
            return Ok(DecisionPage { decisions: found, next: None, dropped });
        }
        if scanned >= SCAN {
            return Ok(DecisionPage { decisions: found, next: after, dropped });
        }
    }
}
