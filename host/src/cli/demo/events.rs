//! The demo's record of the server's event stream (`GET /events`, SSE), followed from before the first agent
//! registers. Task histories (who claimed which attempt, routed or pulled; retries; completion) come from here:
//! the server's own account of what happened, not the demo's guess.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::cli::http::Api;

/// Every event seen so far, in stream order.
#[derive(Default)]
struct Log {
    events: Mutex<Vec<Value>>,
    grew: Notify,
}

/// A running reader of the event stream; dropping it stops the reader.
pub(super) struct EventRecorder {
    log: Arc<Log>,
    reader: JoinHandle<()>,
}

impl Drop for EventRecorder {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// One attempt of a task, as the `task_claimed` events tell it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub(super) struct Attempt {
    /// The attempt number (the fencing token).
    pub attempt: u64,
    /// The agent that got the lease.
    pub agent_id: String,
    /// `routed` (the strategy chose among waiting agents) or `claim` (pulled from the backlog).
    pub via: String,
}

impl EventRecorder {
    /// Connects to `GET /events` and returns once the server has answered, so nothing emitted afterwards is missed.
    pub(super) async fn start(api: &Api) -> anyhow::Result<Self> {
        let response = api.stream("/events").send().await.context("connecting to the event stream (GET /events)")?;
        anyhow::ensure!(response.status().is_success(), "GET /events answered {}", response.status());
        let log = Arc::new(Log::default());
        let reader = tokio::spawn(read(response, log.clone()));
        Ok(EventRecorder { log, reader })
    }

    /// Events for `task_id`, in order.
    pub(super) fn of_task(&self, task_id: &str) -> Vec<Value> {
        self.log.events.lock().iter().filter(|e| e["task_id"].as_str() == Some(task_id)).cloned().collect()
    }

    /// The attempts of `task_id`.
    pub(super) fn attempts(&self, task_id: &str) -> Vec<Attempt> {
        self.of_task(task_id)
            .iter()
            .filter(|e| e["type"] == "task_claimed")
            .map(|e| Attempt {
                attempt: e["data"]["attempt"].as_u64().unwrap_or(0),
                agent_id: e["agent_id"].as_str().unwrap_or_default().to_string(),
                via: e["data"]["via"].as_str().unwrap_or_default().to_string(),
            })
            .collect()
    }

    /// Waits until some event satisfies `seen`, or `limit` passes (an error naming `what`).
    pub(super) async fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        seen: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let grew = self.log.grew.notified();
            if let Some(event) = self.log.events.lock().iter().find(|e| seen(e)) {
                return Ok(event.clone());
            }
            if self.reader.is_finished() {
                anyhow::bail!("the event stream ended before {what}");
            }
            if tokio::time::timeout_at(deadline, grew).await.is_err() {
                anyhow::bail!("no event showed {what} within {limit:?}");
            }
        }
    }

    /// Waits for the event of type `kind` about `task_id`.
    pub(super) async fn wait_for_task(&self, task_id: &str, kind: &str, limit: Duration) -> anyhow::Result<Value> {
        self.wait_for(&format!("{kind} for {task_id}"), limit, |e| {
            e["task_id"].as_str() == Some(task_id) && e["type"] == kind
        })
        .await
    }
}

/// Splits the SSE body into frames and keeps each event's JSON `data`.
async fn read(mut response: reqwest::Response, log: Arc<Log>) {
    let mut pending = String::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        pending.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = pending.find("\n\n") {
            let frame: String = pending.drain(..end + 2).collect();
            let data: String = frame.lines().filter_map(|l| l.strip_prefix("data:")).map(str::trim).collect();
            if let Ok(event) = serde_json::from_str::<Value>(&data)
                && event.get("type").is_some()
            {
                log.events.lock().push(event);
                log.grew.notify_waiters();
            }
        }
    }
    log.grew.notify_waiters();
}
