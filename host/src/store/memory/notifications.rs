//! The memory store's notification state: channels, the delivery cursor, and deliveries indexed by due time, by
//! age and by outcome. Each method is one step of a store transition (called under the store's lock with its
//! clock's `now`); the Redis store's `notify_change.lua` and `notify_read.lua` do the same on Redis keys.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use crate::model::{
    AttemptResult, Channel, ChannelFigures, DEAD_KEPT, Delivery, DeliveryStatus, MAX_CHANNELS, SENT_KEPT, StoreError,
    StoreResult,
};
use crate::store::Due;

#[derive(Default)]
pub(super) struct Notifications {
    channels: BTreeMap<String, Channel>,
    /// The last event turned into deliveries; `None` = from the oldest event kept.
    cursor: Option<String>,
    seq: u64,
    deliveries: HashMap<String, (u64, Delivery)>,
    /// Every delivery by creation order.
    by_seq: BTreeMap<u64, String>,
    /// Pending by due time, sending by lease end.
    due: BTreeSet<(u64, String)>,
    /// Sent, oldest first (at most [`SENT_KEPT`]).
    sent: VecDeque<String>,
    /// Dead letters by creation order.
    dead: BTreeMap<u64, String>,
    figures: HashMap<String, ChannelFigures>,
}

impl Notifications {
    /// Counts on an existing channel only: a deleted channel's last deliveries must not bring its counters back.
    fn count(&mut self, channel_id: &str, add: impl FnOnce(&mut ChannelFigures)) {
        if self.channels.contains_key(channel_id) {
            add(self.figures.entry(channel_id.to_string()).or_default());
        }
    }

    pub(super) fn put_channel(&mut self, channel: &Channel, last_event: Option<&str>) -> StoreResult<()> {
        if !self.channels.contains_key(&channel.id) {
            if self.channels.len() >= MAX_CHANNELS {
                return Err(StoreError::conflict(
                    "too_many_channels",
                    format!("the store keeps at most {MAX_CHANNELS} channels; delete some first"),
                ));
            }
            // The first channel hears of what happens from now on, not of the whole event buffer.
            if self.channels.is_empty() {
                self.cursor = last_event.map(str::to_string);
            }
        }
        self.channels.insert(channel.id.clone(), channel.clone());
        Ok(())
    }

    pub(super) fn channels(&self) -> Vec<Channel> {
        self.channels.values().cloned().collect()
    }

    pub(super) fn delete_channel(&mut self, id: &str) -> bool {
        self.figures.remove(id);
        self.channels.remove(id).is_some()
    }

    pub(super) fn cursor(&self) -> Option<String> {
        self.cursor.clone()
    }

    pub(super) fn enqueue(&mut self, from: Option<&str>, to: &str, deliveries: Vec<Delivery>, now: u64) -> bool {
        if self.cursor.as_deref() != from {
            return false;
        }
        self.cursor = Some(to.to_string());
        for mut delivery in deliveries {
            if self.deliveries.contains_key(&delivery.id) {
                continue;
            }
            self.seq += 1;
            delivery.status = DeliveryStatus::Pending;
            delivery.created_ms = now;
            delivery.due_ms = Some(now);
            self.count(&delivery.channel_id, |f| f.enqueued += 1);
            self.due.insert((now, delivery.id.clone()));
            self.by_seq.insert(self.seq, delivery.id.clone());
            self.deliveries.insert(delivery.id.clone(), (self.seq, delivery));
        }
        true
    }

    pub(super) fn claim(&mut self, limit: usize, lease_ms: u64, now: u64) -> Due<Delivery> {
        let due: Vec<(u64, String)> = self.due.iter().take_while(|(at, _)| *at <= now).take(limit).cloned().collect();
        let mut claimed = Vec::with_capacity(due.len());
        for key in due {
            self.due.remove(&key);
            let (_, delivery) = self.deliveries.get_mut(&key.1).expect("a due delivery exists");
            delivery.status = DeliveryStatus::Sending;
            delivery.attempts += 1;
            delivery.due_ms = Some(now + lease_ms);
            self.due.insert((now + lease_ms, key.1));
            claimed.push(delivery.clone());
        }
        let next_in_ms = self.due.first().map(|(at, _)| at.saturating_sub(now));
        Due { items: claimed, next_in_ms }
    }

    pub(super) fn finish(&mut self, id: &str, attempt: u32, result: AttemptResult, now: u64) -> bool {
        let Some((seq, delivery)) = self.deliveries.get_mut(id) else { return false };
        if delivery.status != DeliveryStatus::Sending || delivery.attempts != attempt {
            return false;
        }
        let (seq, channel_id) = (*seq, delivery.channel_id.clone());
        self.due.remove(&(delivery.due_ms.unwrap_or_default(), id.to_string()));
        match result {
            AttemptResult::Sent { status } => {
                delivery.status = DeliveryStatus::Sent;
                delivery.due_ms = None;
                delivery.delivered_ms = Some(now);
                delivery.last_status = Some(status);
                self.count(&channel_id, |f| f.sent += 1);
                self.sent.push_back(id.to_string());
                while self.sent.len() > SENT_KEPT {
                    let old = self.sent.pop_front().expect("not empty");
                    self.forget(&old);
                }
            }
            AttemptResult::Failed { error, status, retry_in_ms } => {
                delivery.last_error = Some(error);
                delivery.last_status = status;
                match retry_in_ms {
                    Some(delay) => {
                        delivery.status = DeliveryStatus::Pending;
                        delivery.due_ms = Some(now + delay);
                        self.due.insert((now + delay, id.to_string()));
                        self.count(&channel_id, |f| f.failed += 1);
                    }
                    None => {
                        delivery.status = DeliveryStatus::Dead;
                        delivery.due_ms = None;
                        self.count(&channel_id, |f| {
                            f.failed += 1;
                            f.dead += 1;
                        });
                        self.dead.insert(seq, id.to_string());
                        while self.dead.len() > DEAD_KEPT {
                            let (_, old) = self.dead.pop_first().expect("not empty");
                            if let Some(channel) = self.deliveries.get(&old).map(|(_, d)| d.channel_id.clone()) {
                                self.count(&channel, |f| f.dropped += 1);
                            }
                            self.forget(&old);
                        }
                    }
                }
            }
        }
        true
    }

    fn forget(&mut self, id: &str) {
        if let Some((seq, _)) = self.deliveries.remove(id) {
            self.by_seq.remove(&seq);
        }
    }

    pub(super) fn retry(&mut self, id: &str, now: u64) -> StoreResult<Option<Delivery>> {
        let Some((seq, delivery)) = self.deliveries.get_mut(id) else { return Ok(None) };
        if delivery.status != DeliveryStatus::Dead {
            return Err(StoreError::conflict(
                "not_a_dead_letter",
                format!("delivery {id} is {}, not a dead letter", delivery.status.as_str()),
            ));
        }
        self.dead.remove(seq);
        delivery.status = DeliveryStatus::Pending;
        delivery.retried_at_attempt = delivery.attempts;
        delivery.due_ms = Some(now);
        self.due.insert((now, id.to_string()));
        Ok(Some(delivery.clone()))
    }

    /// Newest first, or soonest due first for pending and sending ones; of one status when given.
    pub(super) fn list(&self, status: Option<DeliveryStatus>, limit: usize) -> Vec<Delivery> {
        let ids: Box<dyn Iterator<Item = &String>> = match status {
            Some(DeliveryStatus::Dead) => Box::new(self.dead.values().rev()),
            Some(DeliveryStatus::Sent) => Box::new(self.sent.iter().rev()),
            Some(DeliveryStatus::Pending | DeliveryStatus::Sending) => Box::new(self.due.iter().map(|(_, id)| id)),
            None => Box::new(self.by_seq.values().rev()),
        };
        ids.filter_map(|id| self.deliveries.get(id).map(|(_, d)| d))
            .filter(|d| status.is_none_or(|status| d.status == status))
            .take(limit)
            .cloned()
            .collect()
    }

    pub(super) fn get(&self, id: &str) -> Option<Delivery> {
        self.deliveries.get(id).map(|(_, d)| d.clone())
    }

    /// Every channel's counters (zeros for one with no deliveries yet).
    pub(super) fn figures(&self) -> BTreeMap<String, ChannelFigures> {
        self.channels.keys().map(|id| (id.clone(), self.figures.get(id).cloned().unwrap_or_default())).collect()
    }
}
