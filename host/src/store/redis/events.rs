//! The store's one event reader: a task that follows the capped event stream with `XREAD BLOCK` on a dedicated
//! connection and fans each event out to the `broadcast` channel of `Store::subscribe`, in stream order. It
//! publishes how far it got (`delivered`), so a transition can wait until its own events reached this process's
//! subscribers before it returns, as the memory store's do.
//!
//! Falling behind the cap: every event carries a store-wide number `n`; a jump means entries were trimmed before
//! this reader saw them. The reader then resyncs: it logs how many were lost and goes on from the oldest entry kept
//! (clients that need the full history resume through `events_after`, which answers "gone" for a trimmed id).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::Value;
use tokio::sync::{broadcast, watch};

use super::connection::{Commands, Target};
use super::decode;
use crate::model::Event;

/// How long one `XREAD` blocks before it asks again (so a silently dead connection is noticed).
const BLOCK_MS: u64 = 5_000;

/// Entries read per call.
const BATCH: usize = 1_000;

/// Pause before the first reconnection attempt after an error; it doubles up to [`RETRY_MAX`] while Redis stays
/// away, so an outage costs a few log lines, not four a second.
const RETRY: Duration = Duration::from_millis(250);

/// Longest pause between reconnection attempts.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// What the reader shares with the store.
pub(super) struct Feed {
    /// Where events go.
    pub(super) events: broadcast::Sender<Arc<Event>>,
    /// The last stream id published, as (ms, seq).
    pub(super) delivered: watch::Sender<(u64, u64)>,
    /// The reader is connected and following the stream (else transitions do not wait for it).
    pub(super) live: Arc<AtomicBool>,
}

/// Follows the stream from `start` (the last id before this store opened) until aborted.
pub(super) async fn follow(
    target: Target,
    mut connection: Commands,
    stream: String,
    start: (u64, u64, u64),
    feed: Feed,
) {
    let (mut ms, mut seq, mut last_n) = start;
    let mut retry = RETRY;
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
                if feed.live.swap(false, Ordering::SeqCst) {
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
        if !feed.live.swap(true, Ordering::SeqCst) {
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
            match decode::event(entry) {
                Ok((event, n)) => {
                    if last_n != 0 && n > last_n + 1 {
                        tracing::warn!(
                            missed = n - last_n - 1,
                            "redis event reader fell behind the stream cap; resynced"
                        );
                    }
                    last_n = n;
                    if let Some((m, s)) = decode::stream_id(&event.id) {
                        (ms, seq) = (m, s);
                    }
                    let _ = feed.events.send(Arc::new(event));
                }
                Err(error) => {
                    tracing::error!(%error, "redis event reader skipped an unreadable entry");
                    if let Some(id) = decode::array(entry).ok().and_then(|p| p.first()).and_then(decode::text)
                        && let Some((m, s)) = decode::stream_id(&id)
                    {
                        (ms, seq) = (m, s);
                    }
                }
            }
        }
        feed.delivered.send_replace((ms, seq));
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
