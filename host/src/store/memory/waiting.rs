//! The memory store's index of waiting claims: each claim's token and deadline, grouped by the capability set it
//! claims with, each group in waiting order. Routing a task looks only at the groups whose set covers the task's
//! signature (remembered per signature, rebuilt only when a new set starts waiting), and reads them in waiting
//! order, so what it costs does not grow with the number of claims that cannot take the task.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::model::CapabilitySet;

/// Signatures whose covering groups are remembered at most (twice `MAX_SIGNATURES`' default): past it the memory
/// starts again, rather than growing with every signature ever submitted.
const MAX_REMEMBERED_SIGNATURES: usize = 8192;

/// One waiting claim.
#[derive(Clone, Debug)]
pub(super) struct WaitingRecord {
    /// Its place in the waiting order (store sequence).
    pub seq: u64,
    /// When its token dies, store ms.
    pub until: u64,
    /// The waiting agent (shared with the offers that name it).
    pub agent_id: Arc<str>,
    /// The capabilities it claims with.
    pub capabilities: CapabilitySet,
    group: usize,
}

/// The claims that wait with one capability set, in waiting order: sequence → token.
#[derive(Default)]
struct Group {
    capabilities: CapabilitySet,
    queue: BTreeMap<u64, Arc<str>>,
}

/// The waiting claims of the store. Tokens and agent ids are shared, not copied: every submit's offer names up to
/// `max_candidates` claims (docs/BENCHMARKS.md, "Shared waiter tokens").
#[derive(Default)]
pub(super) struct WaitingIndex {
    by_token: super::FastMap<Arc<str>, WaitingRecord>,
    /// Groups are kept when they empty: the sets agents claim with are few and come back.
    groups: Vec<Group>,
    group_of: super::FastMap<CapabilitySet, usize>,
    /// Per task signature, the groups whose set covers it.
    covering: super::FastMap<CapabilitySet, Arc<[usize]>>,
}

impl WaitingIndex {
    /// Claims waiting now.
    pub(super) fn len(&self) -> usize {
        self.by_token.len()
    }

    /// The claim waiting on `token`.
    pub(super) fn get(&self, token: &str) -> Option<&WaitingRecord> {
        self.by_token.get(token)
    }

    /// Adds a waiting claim (replacing one on the same token).
    pub(super) fn insert(
        &mut self,
        token: Arc<str>,
        seq: u64,
        until: u64,
        agent_id: Arc<str>,
        capabilities: CapabilitySet,
    ) {
        self.remove(&token);
        let group = match self.group_of.get(&capabilities) {
            Some(&group) => group,
            None => {
                self.groups.push(Group { capabilities: capabilities.clone(), queue: BTreeMap::new() });
                self.group_of.insert(capabilities.clone(), self.groups.len() - 1);
                // A new set may cover signatures already remembered.
                self.covering.clear();
                self.groups.len() - 1
            }
        };
        self.groups[group].queue.insert(seq, token.clone());
        self.by_token.insert(token, WaitingRecord { seq, until, agent_id, capabilities, group });
    }

    /// Removes the claim waiting on `token`.
    pub(super) fn remove(&mut self, token: &str) -> Option<WaitingRecord> {
        self.remove_entry(token).map(|(_, record)| record)
    }

    /// Removes the claim waiting on `token`, answering the index's own token with it.
    pub(super) fn remove_entry(&mut self, token: &str) -> Option<(Arc<str>, WaitingRecord)> {
        let (token, record) = self.by_token.remove_entry(token)?;
        self.groups[record.group].queue.remove(&record.seq);
        Some((token, record))
    }

    /// Removes every claim of `agent_id` (its session was replaced, it went offline or unregistered).
    pub(super) fn remove_agent(&mut self, agent_id: &str) {
        let tokens: Vec<Arc<str>> =
            self.by_token.iter().filter(|(_, w)| &*w.agent_id == agent_id).map(|(token, _)| token.clone()).collect();
        for token in tokens {
            self.remove(&token);
        }
    }

    /// Up to `limit` waiting claims whose capabilities cover `signature`, in waiting order, after the place
    /// `after`: (sequence, token). The caller judges them (expired, agent refused) and asks again after the last.
    pub(super) fn covering(&mut self, signature: &CapabilitySet, after: u64, limit: usize) -> Vec<(u64, Arc<str>)> {
        let groups = self.covering_groups(signature);
        let mut found: Vec<(u64, Arc<str>)> = Vec::with_capacity(limit.min(64));
        for &group in groups.iter() {
            let queue = &self.groups[group].queue;
            found.extend(queue.range(after.saturating_add(1)..).take(limit).map(|(seq, token)| (*seq, token.clone())));
        }
        if groups.len() > 1 {
            found.sort_unstable_by_key(|(seq, _)| *seq);
            found.truncate(limit);
        }
        found
    }

    fn covering_groups(&mut self, signature: &CapabilitySet) -> Arc<[usize]> {
        if let Some(groups) = self.covering.get(signature) {
            return groups.clone();
        }
        let groups: Arc<[usize]> =
            (0..self.groups.len()).filter(|&group| signature.is_subset_of(&self.groups[group].capabilities)).collect();
        if self.covering.len() >= MAX_REMEMBERED_SIGNATURES {
            self.covering.clear();
        }
        self.covering.insert(signature.clone(), groups.clone());
        groups
    }
}
