//! The store's clock. The memory store reads time only through a `Clock`, so tests move time with a
//! [`ManualClock`] instead of sleeping. Redis reads `TIME` in its scripts instead.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, never going backwards.
pub trait Clock: Send + Sync + 'static {
    /// Now, in ms.
    fn now_ms(&self) -> u64;
}

/// Wall time at start-up advanced by a monotonic `Instant`: deadlines do not jump when the wall clock is set.
#[derive(Clone, Debug)]
pub struct SystemClock {
    wall_at_start: u64,
    start: Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        let wall_at_start = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        SystemClock { wall_at_start, start: Instant::now() }
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        self.wall_at_start + self.start.elapsed().as_millis() as u64
    }
}

/// A clock that moves only when told: for tests of timeouts, heartbeats and backoff.
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock at `start_ms`.
    pub fn new(start_ms: u64) -> Self {
        ManualClock(Arc::new(AtomicU64::new(start_ms)))
    }

    /// Moves the clock forward.
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}
