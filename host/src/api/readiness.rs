//! `/readyz`'s view of the store, kept by a background check so that the probe answers at once even when the
//! store does not: a load balancer's probe that waited on a stalled Redis would time out itself and say nothing
//! useful. [`serve`](super::serve) starts the check; a router served some other way checks inline instead.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::coordinator::ControlPlaneCoordinator;

/// Time between two checks.
const CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// A check still unanswered after this long makes the server not ready before the check itself times out.
const SLOW_CHECK: Duration = Duration::from_secs(1);

/// What the last check found, and whether one is running.
#[derive(Debug, Default)]
pub struct Readiness {
    started: AtomicBool,
    state: Mutex<Checks>,
}

#[derive(Debug, Default)]
struct Checks {
    /// The outcome of the last finished check: `"ok"` or why not.
    last: Option<String>,
    /// When the running check began.
    running_since: Option<Instant>,
}

impl Readiness {
    /// Checks the store every 500 ms (each check bounded by `STORE_TIMEOUT`) until `stop`.
    pub fn start(self: &Arc<Self>, coordinator: Arc<ControlPlaneCoordinator>, stop: CancellationToken) {
        if self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let readiness = self.clone();
        tokio::spawn(async move {
            loop {
                readiness.state.lock().running_since = Some(Instant::now());
                let outcome = check(&coordinator).await;
                *readiness.state.lock() = Checks { last: Some(outcome), running_since: None };
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(CHECK_INTERVAL) => {}
                }
            }
        });
    }

    /// `"ok"`, or why the store is not fit to serve: from the background check when it runs (at once), else
    /// from a check made now.
    pub async fn store(&self, coordinator: &ControlPlaneCoordinator) -> String {
        if !self.started.load(Ordering::SeqCst) {
            return check(coordinator).await;
        }
        let first_for = {
            let state = self.state.lock();
            if let Some(since) = state.running_since
                && since.elapsed() > SLOW_CHECK
            {
                return format!("the store has not answered a check for {} ms", since.elapsed().as_millis());
            }
            if let Some(last) = &state.last {
                return last.clone();
            }
            state.running_since.map_or(Duration::ZERO, |since| since.elapsed())
        };
        // Just started, no check finished yet (the background one may not even have been scheduled): a probe
        // right after start-up gets a real answer from a check of its own, within the same bound.
        tokio::time::timeout(SLOW_CHECK.saturating_sub(first_for), check(coordinator))
            .await
            .unwrap_or_else(|_| "the first store check has not finished".to_string())
    }
}

async fn check(coordinator: &ControlPlaneCoordinator) -> String {
    let deadline = coordinator.config().store_timeout;
    match tokio::time::timeout(deadline, coordinator.check_store()).await {
        Ok(Ok(())) => "ok".to_string(),
        Ok(Err(error)) => error.to_string(),
        Err(_) => format!("the store did not answer within STORE_TIMEOUT ({} ms)", deadline.as_millis()),
    }
}
