//! The audit log's writer. Calls are appended in batches (a group commit): every call waiting to be recorded goes
//! into the next batch, which is chained from the log's end and appended with a compare-and-set, so servers
//! sharing a store extend one chain; a server that loses the race is told the new end and chains its batch again.
//! Retention ([`run_retention`]) replaces entries older than `AUDIT_RETENTION` by a checkpoint signed with the audit
//! key, from which [`verify`] checks the chain that follows.
//!
//! A change is answered once its entry is committed (or after [`COMMIT_WAIT`], with the failure logged); a refused
//! call's entry is queued without holding its answer.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::model::{
    AuditCheckpoint, AuditEntry, AuditHead, ChainBreak, GENESIS_HASH, NewAuditEntry, StoreResult, check_chain,
    rfc3339_ms,
};
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

/// Chains `batch` after the log's end and appends it, again from the new end when another server appended first;
/// a failing store is tried [`ATTEMPTS`] times.
async fn commit(store: &dyn Store, head: &mut Option<AuditHead>, batch: &[Pending]) -> bool {
    let mut failures = 0;
    loop {
        match append(store, head, batch).await {
            Ok(true) => return true,
            // Another server appended: chain again from the end the refusal gave.
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

/// One attempt: chains `batch` after the end this server knows (or reads it) and appends it if the log still ends
/// there; `head` is the log's end after it either way (unknown when the store failed).
async fn append(store: &dyn Store, head: &mut Option<AuditHead>, batch: &[Pending]) -> StoreResult<bool> {
    let end = match head.take() {
        Some(end) => end,
        None => store.audit_head().await?,
    };
    let (entries, last) = AuditEntry::chain_after(&end, batch.iter().map(|call| call.entry.clone()));
    let moved = store.append_audit(end.seq, entries).await?;
    let appended = moved.is_none();
    *head = Some(moved.unwrap_or(last));
    Ok(appended)
}

/// Replaces entries older than `retention` by a signed checkpoint every `interval`, until shutdown.
pub async fn run_retention(
    store: Arc<dyn Store>,
    retention: Duration,
    key: String,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        match trim_expired(store.as_ref(), retention, key.as_bytes()).await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "audit entries past AUDIT_RETENTION replaced by a checkpoint"),
            Err(error) => tracing::debug!(%error, "audit retention: will retry"),
        }
    }
}

/// Removes the entries older than `retention`, 1,000 per store call; how many. Entries are removed only after they
/// check against the chain: a break stays in the log for `/audit/verify` to name, and retention stops before it.
pub async fn trim_expired(store: &dyn Store, retention: Duration, key: &[u8]) -> StoreResult<u64> {
    let cutoff = rfc3339_ms(store.now_ms().saturating_sub(retention.as_millis() as u64));
    let mut removed = 0;
    loop {
        let from = match store.audit_checkpoint().await? {
            Some(checkpoint) => AuditHead { seq: checkpoint.seq, hash: checkpoint.hash },
            None => AuditHead { seq: 0, hash: GENESIS_HASH.to_string() },
        };
        let chunk = store.audit_entries(from.seq + 1, from.seq + 1000).await?;
        let expired = chunk.iter().take_while(|entry| entry.time < cutoff).count();
        if expired == 0 {
            return Ok(removed);
        }
        if let Err(broken) = check_chain(&from, &chunk[..expired]) {
            tracing::error!(seq = broken.seq, reason = %broken.reason, "audit chain broken: retention stops before it");
            return Ok(removed);
        }
        let last = &chunk[expired - 1];
        if !store.trim_audit(AuditCheckpoint::after(last, key)).await? {
            return Ok(removed);
        }
        removed += last.seq - from.seq;
    }
}

/// What `GET /audit/verify` reports.
#[derive(Clone, Debug)]
pub struct ChainCheck {
    /// The log's recorded end.
    pub end: AuditHead,
    /// Entries checked (after the checkpoint, if any) before the first break.
    pub checked: u64,
    /// The first break.
    pub first_break: Option<ChainBreak>,
    /// Where the check started, when retention removed older entries.
    pub checkpoint: Option<AuditCheckpoint>,
}

/// Checks the chain from the checkpoint (its signature first, with `key`) or the genesis to the recorded end.
pub async fn verify(store: &dyn Store, key: Option<&[u8]>) -> StoreResult<ChainCheck> {
    let end = store.audit_head().await?;
    let checkpoint = store.audit_checkpoint().await?;
    let mut report = ChainCheck { end: end.clone(), checked: 0, first_break: None, checkpoint: checkpoint.clone() };
    let mut checked = match &checkpoint {
        Some(checkpoint) => {
            if !key.is_some_and(|key| checkpoint.signed_by(key)) {
                let seq = checkpoint.seq;
                let reason = "checkpoint_signature".to_string();
                report.first_break = Some(ChainBreak { seq, id: format!("audit_{seq}"), reason });
                return Ok(report);
            }
            AuditHead { seq: checkpoint.seq, hash: checkpoint.hash.clone() }
        }
        None => AuditHead { seq: 0, hash: GENESIS_HASH.to_string() },
    };
    let start = checked.seq;
    while checked.seq < end.seq {
        let to = (checked.seq + 1000).min(end.seq);
        let entries = store.audit_entries(checked.seq + 1, to).await?;
        let count = entries.len() as u64;
        match check_chain(&checked, &entries) {
            Err(broken) => {
                report.checked = broken.seq - 1 - start;
                report.first_break = Some(broken);
                return Ok(report);
            }
            // A short read is a missing entry at its end.
            Ok(next) if count < to - checked.seq => {
                let seq = next.seq + 1;
                report.checked = next.seq - start;
                report.first_break = Some(ChainBreak { seq, id: format!("audit_{seq}"), reason: "missing".into() });
                return Ok(report);
            }
            Ok(next) => checked = next,
        }
    }
    report.checked = checked.seq - start;
    if checked.hash != end.hash {
        let seq = end.seq;
        report.first_break = Some(ChainBreak { seq, id: format!("audit_{seq}"), reason: "head_mismatch".into() });
    }
    Ok(report)
}
