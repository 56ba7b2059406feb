//! The API's one middleware: every request's id, its line in the log, its count in `/metrics` and, for a
//! state-changing call, its entry in the audit log. A request keeps the `x-request-id` it came with (or gets a
//! fresh one), and every response carries it back. Refusals are logged at `info` with their code, server errors at
//! `error` with their cause (the client's body stays opaque), each line with the request's method, uri and id;
//! at `debug` for `aragora_cp::api::access` every request also runs in a span with those fields (so everything it
//! logs carries them) and ends with a line giving its status and latency. Requests to the API's routes are counted
//! by route template (`metrics`), and the calls the audit log records are recorded before they are answered
//! (`audit`).
//!
//! An error response the framework made itself (text, not JSON) is rewritten as a problem document here.
//!
//! It is a hand-written layer with a concrete future rather than `axum::middleware::from_fn`: that boxes a future
//! and clones the route's service for every request, which cost more than a claim's store step. It also sets the
//! body limit, which a layer of its own would have cost the same way. Nothing here formats or allocates for a
//! request that succeeds at the default level, except a fresh request id and the limit's place among the request's
//! extensions; an audited call or a framework error finishes in one boxed future (docs/BENCHMARKS.md).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use tracing::Instrument;

use super::ApiState;
use super::audit::AuditedCall;
use super::errors::ApiError;

/// The header carrying the request id both ways.
pub const REQUEST_ID: &str = "x-request-id";

/// [`REQUEST_ID`] as a header name, parsed once.
const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static(REQUEST_ID);

/// The code of the router's own 405 (a method the route does not take), which calls nothing and is not audited.
pub(super) const METHOD_NOT_ALLOWED: &str = "method_not_allowed";

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

/// The layer, added last so that it wraps every route and the fallback (axum applies a router's layers to each
/// route after routing, so the matched route template is known here).
#[derive(Clone)]
pub struct Observe {
    state: ApiState,
}

impl Observe {
    /// The layer over `state`'s metrics, audit log and coordinator.
    pub fn new(state: ApiState) -> Self {
        Observe { state }
    }
}

impl<S> tower_layer::Layer<S> for Observe {
    type Service = Observed<S>;

    fn layer(&self, inner: S) -> Observed<S> {
        Observed { inner, state: self.state.clone() }
    }
}

/// A route (or the fallback) wrapped by [`Observe`].
#[derive(Clone)]
pub struct Observed<S> {
    inner: S,
    state: ApiState,
}

impl<S> tower_service::Service<Request> for Observed<S>
where
    S: tower_service::Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Answer<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let (seen, request) = Seen::arriving(request, &self.state);
        Answer { step: Step::Handler { handler: self.inner.call(request) }, seen: Some(seen) }
    }
}

pin_project_lite::pin_project! {
    /// The future of an observed request: the handler's, then (only for an audited call or a framework error) the
    /// boxed rest.
    pub struct Answer<F> {
        #[pin]
        step: Step<F>,
        seen: Option<Seen>,
    }
}

pin_project_lite::pin_project! {
    #[project = StepProjection]
    enum Step<F> {
        Handler { #[pin] handler: F },
        Finishing { finishing: BoxFuture<'static, Response> },
    }
}

impl<F> Future for Answer<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.step.as_mut().project() {
                StepProjection::Handler { handler } => {
                    let Ok(response) = {
                        let _in_span = this.seen.as_ref().map(|seen| seen.span.enter());
                        ready!(handler.poll(cx))
                    };
                    let seen = this.seen.take().expect("a request is answered once");
                    match seen.answered(response) {
                        Ok(response) => return Poll::Ready(Ok(response)),
                        Err(finishing) => this.step.set(Step::Finishing { finishing }),
                    }
                }
                StepProjection::Finishing { finishing } => return finishing.as_mut().poll(cx).map(Ok),
            }
        }
    }
}

/// What the layer keeps of a request for its answer.
struct Seen {
    state: ApiState,
    request_id: HeaderValue,
    method: Method,
    uri: Uri,
    /// Disabled (and free) unless `debug` is on for this module.
    span: tracing::Span,
    started: Instant,
    /// The route template, when the request matched one of the API's routes (what `/metrics` counts by).
    route: Option<MatchedPath>,
    /// What the audit entry needs, when the call is one the log records.
    audited: Option<AuditedCall>,
}

impl Seen {
    fn arriving(mut request: Request, state: &ApiState) -> (Seen, Request) {
        // The body limit of every route (`MAX_BODY_BYTES`; a route may set its own within): set here rather than
        // by a layer of its own, which would box a future and clone the route's service per request.
        DefaultBodyLimit::max(state.max_body_bytes).apply(&mut request);
        let request_id = match request.headers().get(REQUEST_ID_HEADER) {
            Some(given) if given.len() <= MAX_GIVEN_ID && given.to_str().is_ok() => given.clone(),
            _ => fresh_request_id(),
        };
        let method = request.method().clone();
        let uri = request.uri().clone();
        let span = tracing::debug_span!("request", %method, %uri, request_id = request_id.to_str().unwrap_or("-"));
        // `MatchedPath` is a shared string: keeping it costs a reference count, not a copy.
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .filter(|route| super::PREFIXES.iter().any(|prefix| route.as_str().starts_with(prefix)))
            .cloned();
        let audited = route
            .as_ref()
            .and_then(|route| super::audit::audited_route(&method, route.as_str()))
            .map(|audited| AuditedCall::begin(&mut request, audited, &request_id));
        let seen =
            Seen { state: state.clone(), request_id, method, uri, span, started: Instant::now(), route, audited };
        (seen, request)
    }

    /// The handler has answered: counted at once; then finished at once, or by the returned future when the call is
    /// audited or its answer must become a problem document.
    fn answered(mut self, response: Response) -> Result<Response, BoxFuture<'static, Response>> {
        if let Some(route) = &self.route {
            let seconds = self.started.elapsed().as_secs_f64();
            self.state.metrics.record(&self.method, route.as_str(), response.status().as_u16(), seconds);
        }
        // A method the route does not take called nothing: counted, not audited. (A handler's own 405, such as
        // `uploads_disabled`, is a refused call and is audited.)
        let refused_by_router = response.extensions().get::<Refusal>().is_some_and(|r| r.code == METHOD_NOT_ALLOWED);
        if refused_by_router {
            self.audited = None;
        }
        if self.audited.is_some() || from_the_framework(&response) {
            let span = self.span.clone();
            return Err(Box::pin(self.finishing(response).instrument(span)));
        }
        Ok(self.logged(response))
    }

    async fn finishing(mut self, mut response: Response) -> Response {
        if let Some(call) = self.audited.take() {
            let entry = super::audit::entry(&self.state, call, &response);
            self.state.coordinator.record_audit(entry, response.status().is_success()).await;
        }
        if from_the_framework(&response) {
            response = as_problem(response).await;
        }
        self.logged(response)
    }

    /// The refusal's line, the span's last line, and the request id on the answer.
    fn logged(self, mut response: Response) -> Response {
        let Seen { request_id, method, uri, span, started, .. } = self;
        let id = request_id.to_str().unwrap_or("-");
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
        response.headers_mut().insert(REQUEST_ID_HEADER, request_id);
        response
    }
}

/// Sixteen hex digits, written without formatting.
fn fresh_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits = rand::random::<u64>();
    let mut id = [0u8; 16];
    for (i, digit) in id.iter_mut().enumerate() {
        *digit = HEX[(bits >> (60 - 4 * i)) as usize & 0xf];
    }
    HeaderValue::from_bytes(&id).expect("hex digits are a header value")
}

/// An error the framework answered in text (our handlers answer errors in JSON).
fn from_the_framework(response: &Response) -> bool {
    response.status().as_u16() >= 400 && !is_json(response)
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
