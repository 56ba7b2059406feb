//! The REST API (DESIGN §7): one router file per resource (`agents`, `tasks`, `health`, `plugins`, `events` for
//! SSE), `auth` for tokens and permissions, `errors` for the one error type, `access` for the one middleware (request
//! ids, the log, the request counters, the audit entries), `extract` for body and query
//! extractors that answer in that format, `readiness` for `/readyz`'s background store check, `connections` for
//! accepting and serving connections with their timeouts, `dashboard` for the operators' page at `/dashboard`. Handlers are thin: extract, call the coordinator (the only part of the
//! engine the API sees), map. [`router`] builds the routes (tests call it directly); [`serve`] runs them on a
//! listener until shutdown.

pub mod access;
pub mod agents;
pub mod audit;
pub mod auth;
mod connections;
pub mod dashboard;
pub mod decisions;
pub mod deliberations;
pub mod errors;
pub mod events;
pub mod extract;
pub mod figures;
pub mod health;
pub mod metrics;
pub mod notifications;
pub mod openapi;
pub mod plugins;
pub mod policies;
pub mod queue;
pub mod readiness;
pub mod schedules;
pub mod tasks;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::coordinator::ControlPlaneCoordinator;
pub use auth::{Authenticator, Caller, Permission};
pub use errors::{ApiError, ApiResult};

/// Largest request body by default (`MAX_BODY_BYTES`, 2 MiB): a 1 MiB payload plus metadata and JSON overhead.
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// The path prefixes every resource is served under: the current one and the guide's legacy alias.
pub const PREFIXES: [&str; 2] = ["/api/v1/control-plane", "/api/control-plane"];

/// What every handler gets: the coordinator and the token verifier, behind one shared pointer (axum clones the
/// state for every extractor and middleware of every request).
#[derive(Clone)]
pub struct ApiState(Arc<ApiParts>);

impl std::ops::Deref for ApiState {
    type Target = ApiParts;

    fn deref(&self) -> &ApiParts {
        &self.0
    }
}

impl From<ApiParts> for ApiState {
    fn from(parts: ApiParts) -> Self {
        ApiState(Arc::new(parts))
    }
}

impl ApiState {
    /// State with the default body limit.
    pub fn new(coordinator: Arc<ControlPlaneCoordinator>, auth: Arc<Authenticator>) -> Self {
        ApiParts::new(coordinator, auth).into()
    }
}

/// `HEADER_READ_TIMEOUT`'s default: longer than any client's idle keep-alive (Python's httpx keeps 5 s, reqwest
/// 90 s but retries a request that finds its pooled connection closed), shorter than a slow-headers attack needs.
pub const DEFAULT_HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The parts of [`ApiState`].
pub struct ApiParts {
    /// The control plane.
    pub coordinator: Arc<ControlPlaneCoordinator>,
    /// Verifies bearer tokens.
    pub auth: Arc<Authenticator>,
    /// Largest request body accepted (`MAX_BODY_BYTES`).
    pub max_body_bytes: usize,
    /// Bearer token `/metrics` requires (`METRICS_TOKEN`); open when `None`.
    pub metrics_token: Option<String>,
    /// Request counters for `/metrics`.
    pub metrics: Arc<metrics::Metrics>,
    /// The background store check `/readyz` answers from.
    pub readiness: Arc<readiness::Readiness>,
    /// Time a request's head may take to arrive, from the connection opening or the previous response
    /// (`HEADER_READ_TIMEOUT`): it bounds slow headers and idle keep-alive connections.
    pub header_read_timeout: std::time::Duration,
    /// When this server's API was set up (`/health/detailed`'s uptime).
    pub started: std::time::Instant,
    /// Cancelled when shutdown begins: `/readyz` fails (load balancers stop sending) and SSE streams end (so the
    /// drain does not wait for them; clients resume elsewhere with `Last-Event-ID`).
    pub draining: CancellationToken,
}

impl ApiParts {
    /// Parts with the default body limit.
    pub fn new(coordinator: Arc<ControlPlaneCoordinator>, auth: Arc<Authenticator>) -> Self {
        ApiParts {
            coordinator,
            auth,
            max_body_bytes: MAX_BODY_BYTES,
            metrics_token: None,
            metrics: Arc::default(),
            readiness: Arc::default(),
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            started: std::time::Instant::now(),
            draining: CancellationToken::new(),
        }
    }
}

/// Every route: the resources under both prefixes, `/livez`, `/readyz`, `/metrics` and `/dashboard` at the root (open), a request id on
/// every response and on every log line of a refusal (`access`).
pub fn router(state: ApiState) -> Router {
    let mut app = Router::new();
    let max_component_bytes = state.coordinator.max_component_bytes();
    for prefix in PREFIXES {
        app = resources(Prefixed { prefix, router: app, max_component_bytes }).router;
    }
    app.method_not_allowed_fallback(method_not_allowed)
        .merge(dashboard::routes())
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::metrics_get))
        .with_state(state.clone())
        .fallback(not_found)
        .layer(access::Observe::new(state))
}

/// Every resource's routes under one prefix.
fn resources(api: Prefixed<'_>) -> Prefixed<'_> {
    let resources: [for<'a> fn(Prefixed<'a>) -> Prefixed<'a>; 13] = [
        agents::routes,
        tasks::routes,
        decisions::routes,
        health::routes,
        plugins::routes,
        events::routes,
        queue::routes,
        policies::routes,
        schedules::routes,
        audit::routes,
        notifications::routes,
        deliberations::routes,
        figures::routes,
    ];
    resources.into_iter().fold(api, |api, routes| routes(api)).route("/openapi.json", get(openapi::openapi_json))
}

/// A router being given the routes of the resources under one of the [`PREFIXES`]: each resource file names its
/// paths relative to the prefix, and they are registered with it. (Not `Router::nest`, which rebuilds every
/// request's URI to strip the prefix before routing it a second time.)
pub struct Prefixed<'a> {
    prefix: &'a str,
    router: Router<ApiState>,
    /// The largest plugin component this server accepts (uploads get a larger body limit than other requests).
    pub max_component_bytes: usize,
}

impl Prefixed<'_> {
    /// Adds `path` (relative to the prefix) with its methods.
    pub fn route(self, path: &str, methods: axum::routing::MethodRouter<ApiState>) -> Self {
        let router = self.router.route(&format!("{}{path}", self.prefix), methods);
        Prefixed { router, ..self }
    }
}

/// Serves `router(state)` on `listener` until `shutdown` resolves, then stops accepting and waits for in-flight
/// requests (bounding that wait is the caller's business).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let stop_checks = CancellationToken::new();
    let _stop_checks_on_return = stop_checks.clone().drop_guard();
    state.readiness.start(state.coordinator.clone(), stop_checks);
    let header_read_timeout = state.header_read_timeout;
    connections::serve(listener, router(state), header_read_timeout, shutdown).await
}

/// `/livez`: the process is up (no dependency is checked: a failing store must not get the process restarted).
#[utoipa::path(get, path = "/livez", tag = "operations", security(()),
    responses((status = 200, description = "Up", body = Object, example = json!({"status": "ok"}))))]
pub async fn livez() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

/// `/readyz`: 200 when this server should get traffic — the store answers, the default strategy is loaded, and
/// shutdown has not begun; 503 otherwise. The body names each check either way. The store's answer comes from a
/// background check (`readiness`), so a stalled store makes this 503 at once instead of making it wait.
#[utoipa::path(get, path = "/readyz", tag = "operations", security(()),
    responses(
        (status = 200, description = "Ready: `{\"status\": \"ready\", \"checks\": {\"store\": \"ok\", \"plugins\": \"ok\", \"draining\": false}}`", body = Object),
        (status = 503, description = "Not ready: the failing checks say why", body = Object),
    ))]
pub async fn readyz(axum::extract::State(state): axum::extract::State<ApiState>) -> impl IntoResponse {
    let coordinator = &state.coordinator;
    let store = state.readiness.store(coordinator).await;
    let default_strategy = &coordinator.config().default_strategy;
    let plugins = match coordinator.strategy_ready(default_strategy) {
        Ok(()) => "ok".to_string(),
        Err(why) => format!("DEFAULT_STRATEGY: {why}"),
    };
    let draining = state.draining.is_cancelled();
    let ready = store == "ok" && plugins == "ok" && !draining;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": {"store": store, "plugins": plugins, "draining": draining},
    });
    (status, axum::Json(body))
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, access::METHOD_NOT_ALLOWED, "this path does not take that method")
}

async fn not_found() -> ApiError {
    ApiError::not_found(
        "not_found",
        "no such endpoint: the routes are listed in docs/CONTROL_PLANE.md and in GET /api/v1/control-plane/openapi.json",
    )
}
