//! A local HTTP receiver for notification tests: it records every request (path, headers, body, arrival time)
//! and answers with the statuses a test queues, then with a default one.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    /// The request path (`/webhook`).
    pub path: String,
    /// Headers, names lower-case.
    pub headers: HashMap<String, String>,
    /// The body.
    pub body: Bytes,
    /// When it arrived.
    pub at: Instant,
    /// The status it was answered with.
    pub answered: u16,
}

impl Received {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

#[derive(Default)]
struct Inner {
    received: Mutex<Vec<Received>>,
    answers: Mutex<HashMap<String, VecDeque<u16>>>,
    default: Mutex<HashMap<String, u16>>,
    arrived: Notify,
}

/// A running receiver on 127.0.0.1.
pub struct Receiver {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    inner: Arc<Inner>,
    handle: JoinHandle<()>,
}

impl Receiver {
    /// Starts one on a free port; every path answers 200 until told otherwise.
    pub async fn start() -> Receiver {
        let inner = Arc::new(Inner::default());
        let app = Router::new().fallback(record).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let handle = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("receiver serves");
        });
        Receiver { base, inner, handle }
    }

    /// The URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Answers the next requests to `path` with `statuses`, in order.
    pub fn answer_next(&self, path: &str, statuses: &[u16]) {
        self.inner.answers.lock().entry(path.to_string()).or_default().extend(statuses);
    }

    /// Answers requests to `path` with `status` once the queued answers are used.
    pub fn answer_always(&self, path: &str, status: u16) {
        self.inner.default.lock().insert(path.to_string(), status);
    }

    /// Everything received on `path` so far, in arrival order.
    pub fn received(&self, path: &str) -> Vec<Received> {
        self.inner.received.lock().iter().filter(|r| r.path == path).cloned().collect()
    }

    /// Waits until `path` got `count` requests (or `limit` passes) and returns them.
    pub async fn wait_for(&self, path: &str, count: usize, limit: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let arrived = self.inner.arrived.notified();
            let got = self.received(path);
            if got.len() >= count || tokio::time::Instant::now() >= deadline {
                return got;
            }
            let _ = tokio::time::timeout_at(deadline, arrived).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

async fn record(State(inner): State<Arc<Inner>>, uri: Uri, headers: HeaderMap, body: Bytes) -> StatusCode {
    let path = uri.path().to_string();
    let answered = inner
        .answers
        .lock()
        .get_mut(&path)
        .and_then(VecDeque::pop_front)
        .unwrap_or_else(|| inner.default.lock().get(&path).copied().unwrap_or(200));
    let headers = headers
        .iter()
        .map(|(name, value)| (name.as_str().to_string(), value.to_str().unwrap_or_default().to_string()))
        .collect();
    inner.received.lock().push(Received { path, headers, body, at: Instant::now(), answered });
    inner.arrived.notify_waiters();
    StatusCode::from_u16(answered).expect("a valid status")
}
