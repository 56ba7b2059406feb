//! The audit log in memory: the entries since the last checkpoint, and that checkpoint. It sits behind its own
//! lock, apart from the state every transition takes: the audit writer appends its group commits in batches of
//! hundreds, and a batch must not hold up the claims and submits waiting for the state lock meanwhile.

use std::collections::VecDeque;

use crate::model::{AuditCheckpoint, AuditEntry, AuditHead, GENESIS_HASH};

/// The kept part of the audit chain.
#[derive(Default)]
pub(super) struct AuditChain {
    /// The entries since the checkpoint (entry `seq` at index `seq - checkpoint.seq - 1`). Boxed, as the task records
    /// are: the log grows with every recorded call, each doubling of the queue moves pointers, not entries, and the
    /// boxes are made before the lock is taken.
    entries: VecDeque<Box<AuditEntry>>,
    /// What replaced the entries retention removed.
    checkpoint: Option<AuditCheckpoint>,
}

impl AuditChain {
    /// The log's end: its last entry, else the checkpoint, else the genesis.
    pub(super) fn end(&self) -> AuditHead {
        match (self.entries.back(), &self.checkpoint) {
            (Some(last), _) => AuditHead { seq: last.seq, hash: last.hash.clone() },
            (None, Some(checkpoint)) => AuditHead { seq: checkpoint.seq, hash: checkpoint.hash.clone() },
            (None, None) => AuditHead { seq: 0, hash: GENESIS_HASH.to_string() },
        }
    }

    /// Appends `entries` (already chained, and boxed before the lock was taken) if the log still ends at
    /// `expected_seq`; whether it did.
    #[expect(clippy::vec_box, reason = "boxed by the caller, before the lock is taken; the chain keeps the boxes")]
    pub(super) fn append(&mut self, expected_seq: u64, entries: Vec<Box<AuditEntry>>) -> bool {
        if self.end().seq != expected_seq {
            return false;
        }
        self.entries.extend(entries);
        true
    }

    /// Copies of the entries `from..=to` that are still kept, at most 1,000.
    pub(super) fn range(&self, from: u64, to: u64) -> Vec<AuditEntry> {
        let base = self.checkpoint.as_ref().map_or(0, |c| c.seq);
        let (from, to) = (from.max(base + 1), to.min(from.max(1) + 999));
        (from..=to)
            .filter_map(|seq| self.entries.get((seq - base - 1) as usize).map(|entry| (**entry).clone()))
            .collect()
    }

    /// The checkpoint retention left, if any.
    pub(super) fn checkpoint(&self) -> Option<AuditCheckpoint> {
        self.checkpoint.clone()
    }

    /// Replaces the entries up to `checkpoint.seq` by it (at most 1,000 at a time, and only forwards); whether it did.
    pub(super) fn trim(&mut self, checkpoint: AuditCheckpoint) -> bool {
        let base = self.checkpoint.as_ref().map_or(0, |c| c.seq);
        if checkpoint.seq <= base || checkpoint.seq > self.end().seq || checkpoint.seq - base > 1000 {
            return false;
        }
        self.entries.drain(..(checkpoint.seq - base) as usize);
        self.checkpoint = Some(checkpoint);
        true
    }
}
