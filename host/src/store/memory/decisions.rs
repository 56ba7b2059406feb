//! The decision log in memory: records in the order they were appended, with an index by task. It sits behind its
//! own lock, apart from the state every transition takes: writing a batch of decisions or reading a task's never
//! holds up a claim or a submit.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::model::{DECISIONS_PER_TASK, DecisionRecord, decision_id_key};

/// The kept decisions.
#[derive(Default)]
pub(super) struct Decisions {
    records: VecDeque<Arc<DecisionRecord>>,
    /// Each task's newest decisions (at most [`DECISIONS_PER_TASK`]), oldest first.
    by_task: HashMap<String, VecDeque<Arc<DecisionRecord>>>,
    /// The last id given, as (ms, seq).
    last: (u64, u64),
}

impl Decisions {
    /// Appends `records` at store time `now_ms`, giving each its id, keeping at most `keep` in all; answers the ids.
    pub(super) fn append(&mut self, records: Vec<DecisionRecord>, now_ms: u64, keep: usize) -> Vec<String> {
        let mut ids = Vec::with_capacity(records.len());
        for mut record in records {
            self.last = if now_ms > self.last.0 { (now_ms, 0) } else { (self.last.0, self.last.1 + 1) };
            record.id = format!("{}-{}", self.last.0, self.last.1);
            let record = Arc::new(record);
            if let Some(task_id) = &record.task_id {
                let of_task = self.by_task.entry(task_id.clone()).or_default();
                if of_task.len() >= DECISIONS_PER_TASK {
                    of_task.pop_front();
                }
                of_task.push_back(record.clone());
            }
            ids.push(record.id.clone());
            self.records.push_back(record);
        }
        while self.records.len() > keep {
            self.pop_oldest();
        }
        ids
    }

    fn pop_oldest(&mut self) {
        let Some(oldest) = self.records.pop_front() else { return };
        let Some(task_id) = &oldest.task_id else { return };
        if let Some(of_task) = self.by_task.get_mut(task_id) {
            if of_task.front().is_some_and(|first| Arc::ptr_eq(first, &oldest)) {
                of_task.pop_front();
            }
            if of_task.is_empty() {
                self.by_task.remove(task_id);
            }
        }
    }

    /// Removes the decisions appended before `before_ms`, at most `limit`; how many.
    pub(super) fn trim(&mut self, before_ms: u64, limit: usize) -> usize {
        let mut removed = 0;
        while removed < limit && self.records.front().is_some_and(|r| decision_id_key(&r.id).0 < before_ms) {
            self.pop_oldest();
            removed += 1;
        }
        removed
    }

    /// A task's decisions, oldest first.
    pub(super) fn of_task(&self, task_id: &str) -> Vec<DecisionRecord> {
        self.by_task.get(task_id).map(|of_task| of_task.iter().map(|r| (**r).clone()).collect()).unwrap_or_default()
    }

    /// Up to `limit` decisions after the id `after` (else from `since_ms`, else from the oldest), oldest first.
    pub(super) fn range(&self, after: Option<&str>, since_ms: Option<u64>, limit: usize) -> Vec<DecisionRecord> {
        let start = match (after, since_ms) {
            (Some(after), _) => {
                let after = decision_id_key(after);
                self.records.partition_point(|r| decision_id_key(&r.id) <= after)
            }
            (None, Some(since)) => self.records.partition_point(|r| decision_id_key(&r.id).0 < since),
            (None, None) => 0,
        };
        self.records.range(start..).take(limit).map(|r| (**r).clone()).collect()
    }
}
