//! The audit log's writer. Calls are appended in batches (a group commit): every call waiting to be recorded goes
//! into the next batch, which is chained from the log's end and appended with a compare-and-set, so servers
//! sharing a store extend one chain; a server that loses the race reads the new end and chains its batch again.
//! A change is answered once its entry is committed (or after [`COMMIT_WAIT`], with the failure logged); a refused
//! call's entry is queued without holding its answer.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::model::{AuditEntry, AuditHead, NewAuditEntry};
use crate::store::Store;

/// Entries appended at most per store call.
const BATCH: usize = 512;

/// How long a call waits for its entry to commit before it is answered anyway.
pub const COMMIT_WAIT: Duration = Duration::from_secs(5);

/// Calls waiting to be recorded, at most; past this, a call is answered without waiting (and logged).
const QUEUE: usize = 16_384;

/// Attempts at a batch when the store fails, a quarter second apart.
const ATTEMPTS: u32 = 8;

struct Pending {
    entry: NewAuditEntry,
    committed: oneshot::Sender<bool>,
}

/// The handle calls record through.
pub struct AuditLog {
    queue: mpsc::Sender<Pending>,
}

impl AuditLog {
    /// The writer for `store`, running until `shutdown` (then it commits what is queued and stops).
    pub fn start(store: Arc<dyn Store>, shutdown: CancellationToken) -> (Arc<AuditLog>, tokio::task::JoinHandle<()>) {
        let (queue, pending) = mpsc::channel(QUEUE);
        (Arc::new(AuditLog { queue }), tokio::spawn(run(store, pending, shutdown)))
    }

    /// Records one call. A change (`wait`) is answered once its entry committed, or after [`COMMIT_WAIT`]; a
    /// refused call changed nothing, so its entry is queued without holding the answer (a stalled store must not
    /// delay a 503). Whether the entry committed (always false without `wait`).
    pub async fn record(&self, entry: NewAuditEntry, wait: bool) -> bool {
        let (committed, done) = oneshot::channel();
        if let Err(error) = self.queue.try_send(Pending { entry, committed }) {
            tracing::error!(action = %error.into_inner().entry.action, "audit log queue full: a call went unrecorded");
            return false;
        }
        wait && matches!(tokio::time::timeout(COMMIT_WAIT, done).await, Ok(Ok(true)))
    }
}

async fn run(store: Arc<dyn Store>, mut pending: mpsc::Receiver<Pending>, shutdown: CancellationToken) {
    let mut head: Option<AuditHead> = None;
    loop {
        let first = tokio::select! {
            next = pending.recv() => match next { Some(first) => first, None => return },
            _ = shutdown.cancelled() => match pending.try_recv() { Ok(first) => first, Err(_) => return },
        };
        let mut batch = vec![first];
        while batch.len() < BATCH
            && let Ok(more) = pending.try_recv()
        {
            batch.push(more);
        }
        let committed = commit(store.as_ref(), &mut head, &batch).await;
        for call in batch {
            let _ = call.committed.send(committed);
        }
    }
}

/// Chains `batch` after the log's end and appends it, again from the new end when another server appended first.
async fn commit(store: &dyn Store, head: &mut Option<AuditHead>, batch: &[Pending]) -> bool {
    let mut failures = 0;
    loop {
        let end = match head.take() {
            Some(end) => end,
            None => match store.audit_head().await {
                Ok(end) => end,
                Err(error) => {
                    failures += 1;
                    if failures >= ATTEMPTS {
                        tracing::error!(%error, entries = batch.len(), "audit log: store unavailable, calls unrecorded");
                        return false;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
            },
        };
        let mut prev = end.hash.clone();
        let entries: Vec<AuditEntry> = batch
            .iter()
            .enumerate()
            .map(|(i, call)| {
                let entry = AuditEntry::chained(call.entry.clone(), end.seq + 1 + i as u64, &prev);
                prev = entry.hash.clone();
                entry
            })
            .collect();
        let last = AuditHead { seq: end.seq + entries.len() as u64, hash: prev };
        match store.append_audit(end.seq, entries).await {
            Ok(true) => {
                *head = Some(last);
                return true;
            }
            // Another server appended: read the new end and chain again.
            Ok(false) => {}
            Err(error) => {
                failures += 1;
                if failures >= ATTEMPTS {
                    tracing::error!(%error, entries = batch.len(), "audit log: store unavailable, calls unrecorded");
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}
