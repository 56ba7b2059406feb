//! The store's one event reader: a task that follows the capped event stream with `XREAD BLOCK` on a dedicated
//! connection and fans each event out to the `broadcast` channel of `Store::subscribe`, in stream order. A
//! transition does not wait for its own events to come back this way: it answers once it committed, and this
//! server's subscribers see its events a moment later, in the same order as every other server's.
//!
//! Falling behind the cap: every event carries a store-wide number `n`; a jump means entries were trimmed before
//! this reader saw them (a number going back means Redis lost events it had already sent). The reader then counts
//! the gap (`Store::skipped_events`) before it sends the first event after it, logs it and goes on from the oldest
//! entry kept. The event pump treats the count like its own lag: waiting claims recheck, plugins resync, and SSE
//! streams end so that their clients resume through `events_after`, which answers "gone" (a `reset`) for an id the
//! stream no longer holds.

use std::sync::Arc;
use std::time::Duration;

use redis::Value;
use tokio::sync::{broadcast, watch};

use super::connection::{Commands, Target};
use super::decode;
use crate::model::EventRecord;

/// How long one `XREAD` blocks before it asks again (so a silently dead connection is noticed).
const BLOCK_MS: u64 = 5_000;

/// Entries read per call.
const BATCH: usize = 1_000;

/// Pause before the first reconnection attempt after an error; it doubles up to [`RETRY_MAX`] while Redis stays
/// away, so an outage costs a few log lines, not four a second.
const RETRY: Duration = Duration::from_millis(250);

/// Longest pause between reconnection attempts.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Where the reader hands what it read.
pub(super) struct Fanout {
    /// Each event, in stream order.
    pub events: broadcast::Sender<Arc<EventRecord>>,
    /// Counts the gaps in the event numbers (entries trimmed before they were read, or lost by Redis).
    pub skipped: watch::Sender<u64>,
}

/// Follows the stream from `start` (the last id before this store opened) until aborted, handing each event to
/// `fanout`.
pub(super) async fn follow(
    target: Target,
    mut connection: Commands,
    stream: String,
    start: (u64, u64, u64),
    fanout: Fanout,
) {
    let (mut ms, mut seq, mut last_n) = start;
    let mut retry = RETRY;
    // Following the stream (not between a lost connection and the next answer): for the log only.
    let mut live = true;
    let mut servers = decode::ServerIds::default();
    loop {
        let reply: Result<Value, _> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(BATCH)
            .arg("BLOCK")
            .arg(BLOCK_MS)
            .arg("STREAMS")
            .arg(&stream)
            .arg(format!("{ms}-{seq}"))
            .query_async(&mut connection)
            .await;
        let reply = match reply {
            Ok(reply) => reply,
            Err(error) => {
                if std::mem::replace(&mut live, false) {
                    tracing::warn!(%error, "redis event reader lost its connection; reconnecting");
                }
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
                match target.blocking().await {
                    Ok(fresh) => connection = fresh,
                    Err(error) => tracing::warn!(%error, "redis event reader could not reconnect"),
                }
                continue;
            }
        };
        if !std::mem::replace(&mut live, true) {
            tracing::info!("redis event reader follows the stream again");
        }
        retry = RETRY;
        let entries = match entries_of(&reply) {
            Ok(entries) => entries,
            Err(error) => {
                tracing::error!(%error, "redis event reader got an unreadable reply");
                continue;
            }
        };
        for entry in entries {
            // The place first, apart from the event: an entry this build cannot decode still moves the reader on
            // and keeps the numbering, so it is not taken for a gap.
            let Some(((m, s), n)) = decode::event_place(entry) else {
                tracing::error!("redis event reader skipped an entry without an id");
                continue;
            };
            (ms, seq) = (m, s);
            if let Some(n) = n {
                if n != last_n + 1 {
                    // Ahead: entries were trimmed before this reader read them. Behind: Redis lost events it had
                    // sent (a restart that kept less, a failover to a replica that was behind).
                    tracing::warn!(
                        expected = last_n + 1,
                        n,
                        "redis event reader found a gap in the event numbers; event streams end"
                    );
                    // Before the next event goes out: a consumer must see the gap no later than its place.
                    fanout.skipped.send_modify(|gaps| *gaps += 1);
                }
                last_n = n;
            }
            match decode::event_record(entry, &mut servers) {
                Ok(record) => {
                    let _ = fanout.events.send(Arc::new(record));
                }
                Err(error) => tracing::error!(%error, "redis event reader skipped an unreadable entry"),
            }
        }
    }
}

/// The entries of an `XREAD` reply on one stream (none on a timeout).
fn entries_of(reply: &Value) -> Result<&[Value], crate::model::StoreError> {
    let streams = decode::array(reply)?;
    let Some(stream) = streams.first() else { return Ok(&[]) };
    match decode::array(stream)? {
        [_, entries] => decode::array(entries),
        _ => Ok(&[]),
    }
}
