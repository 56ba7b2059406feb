//! Every request's id and its line in the log. A request keeps the `x-request-id` it came with (or gets a fresh
//! one), and every response carries it back. Refusals are logged at `info` with their code, server errors at
//! `error` with their cause (the client's body stays opaque), each line with the request's method, uri and id;
//! at `debug` for `aragora_cp::api::access` every request also runs in a span with those fields (so everything it
//! logs carries them) and ends with a line giving its status and latency.
//!
//! An error response the framework made itself (text, not JSON) is rewritten as a problem document here.
//!
//! Nothing here formats or allocates for a request that succeeds at the default level: a span per request cost
//! more than a claim's store step (docs/BENCHMARKS.md).

use std::time::Instant;

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use super::errors::ApiError;

/// The header carrying the request id both ways.
pub const REQUEST_ID: &str = "x-request-id";

/// Longest request id taken from a client; a longer one is replaced by a generated id.
const MAX_GIVEN_ID: usize = 128;

/// Why a request was refused, as the error mapping leaves it on the response for this log.
#[derive(Clone, Debug)]
pub struct Refusal {
    /// The problem's `code`.
    pub code: String,
    /// What the client was told.
    pub detail: String,
    /// What the client was not told: the cause of a server error.
    pub cause: Option<String>,
}

/// The middleware (outermost, so the fallback and every layer inside are covered).
pub async fn observe(mut request: Request, next: Next) -> Response {
    let request_id = match request.headers().get(REQUEST_ID) {
        Some(given) if given.len() <= MAX_GIVEN_ID && given.to_str().is_ok() => given.clone(),
        _ => {
            let fresh = HeaderValue::from_str(&format!("{:016x}", rand::random::<u64>())).expect("hex is a header");
            request.headers_mut().insert(REQUEST_ID, fresh.clone());
            fresh
        }
    };
    let method = request.method().clone();
    let uri = request.uri().clone();
    let id = request_id.to_str().unwrap_or("-");
    let span = tracing::debug_span!("request", %method, %uri, request_id = id);
    let started = Instant::now();
    let mut response =
        if span.is_disabled() { next.run(request).await } else { next.run(request).instrument(span.clone()).await };
    if response.status().as_u16() >= 400 && !is_json(&response) {
        response = as_problem(response).await;
    }
    let status = response.status().as_u16();
    if let Some(refusal) = response.extensions_mut().remove::<Refusal>() {
        let Refusal { code, detail, cause } = refusal;
        match cause {
            Some(cause) => tracing::error!(%method, %uri, request_id = id, status, code, %cause, "request failed"),
            None => tracing::info!(%method, %uri, request_id = id, status, code, detail, "request refused"),
        }
    }
    if !span.is_disabled() {
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        tracing::debug!(parent: &span, status, latency_ms, "request finished");
    }
    response.headers_mut().insert(REQUEST_ID, request_id);
    response
}

/// Our handlers answer errors in JSON (problem documents; `/readyz` its own checks); the framework in text.
fn is_json(response: &Response) -> bool {
    response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(super::extract::is_json)
}

/// An error answered by the framework rather than by our handlers (a body over the limit while buffering an
/// upload, a rejected path, a timeout): the same status as a problem document, its text as the detail. So every
/// error a client sees has one shape, whoever produced it.
async fn as_problem(response: Response) -> Response {
    /// Longest framework message kept; they are one line.
    const MAX_DETAIL: usize = 4 * 1024;
    let status = response.status();
    let text = axum::body::to_bytes(response.into_body(), MAX_DETAIL).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let detail = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_string() } else { text };
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large".to_string(),
        StatusCode::REQUEST_TIMEOUT => "request_timeout".to_string(),
        status => status.canonical_reason().unwrap_or("error").to_ascii_lowercase().replace([' ', '-'], "_"),
    };
    ApiError::new(status, code, detail).into_response()
}
