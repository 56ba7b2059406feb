//! The OpenAPI 3.1 description of the API, generated from the handlers' `#[utoipa::path]` annotations and the
//! wire types' `ToSchema` derives, so it cannot describe an endpoint that does not exist. Served at
//! `{prefix}/openapi.json` (open, like `/livez`) and committed as `docs/openapi.json`; a test fails when the two
//! differ (`UPDATE_OPENAPI=1 cargo test -p aragora-cp-tests --test all openapi` rewrites the file).
//!
//! Refusals common to many operations are added here rather than repeated on every handler: 401 and 403 on
//! every authenticated operation, 400 on those with parameters or a body, 404 on those naming a resource, 413
//! and 415 on those with a body, 500 and 503 everywhere. Handlers list only the refusals that are theirs.

use std::sync::OnceLock;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

use super::PREFIXES;

/// An error body (`application/problem+json`, RFC 9457), as every refusal is written.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Problem)]
pub struct ProblemBody {
    /// `urn:aragora-cp:problem:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The HTTP reason phrase.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong, naming the field when one is to blame.
    pub detail: String,
    /// Machine-readable reason: `validation_error`, `unauthorized`, `forbidden`, `policy_denied`,
    /// `task_not_found`, `agent_not_found`, `lease_lost`, `task_cancelled`, `task_timeout`, `outcome_conflict`,
    /// `invalid_transition`, `session_replaced`, `idempotency_key_reused`, `payload_too_large`,
    /// `unsupported_media_type`, `store_unavailable`, `too_many_signatures`, `internal_error`, …
    pub code: String,
    /// The same as `detail`, for existing clients that read `error`.
    pub error: String,
    /// The offending field, when one is to blame.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// The resources, relative to an API prefix.
#[derive(OpenApi)]
#[openapi(
    paths(
        super::agents::agents_list,
        super::agents::agents_register,
        super::agents::agents_select,
        super::agents::agents_get,
        super::agents::agents_unregister,
        super::agents::agents_heartbeat,
        super::agents::agents_pause,
        super::agents::agents_resume,
        super::tasks::tasks_submit,
        super::tasks::tasks_list,
        super::tasks::tasks_submit_batch,
        super::tasks::tasks_claim,
        super::tasks::tasks_complete_batch,
        super::tasks::tasks_get,
        super::tasks::tasks_start,
        super::tasks::tasks_progress,
        super::tasks::tasks_complete,
        super::tasks::tasks_fail,
        super::tasks::tasks_cancel,
        super::tasks::tasks_retry,
        super::health::health_system,
        super::health::health_agent,
        super::health::stats_get,
        super::health::violations_list,
        super::plugins::plugins_list,
        super::plugins::plugins_get,
        super::plugins::plugins_upload,
        super::plugins::plugins_delete,
        super::plugins::plugins_enable,
        super::plugins::plugins_disable,
        super::plugins::plugins_shadow,
        super::plugins::plugins_promote,
        super::plugins::plugins_rollback,
        super::decisions::task_decisions,
        super::decisions::decisions_list,
        super::health::health_detailed,
        super::health::breakers_list,
        super::health::violations_stats,
        super::health::violation_get,
        super::health::violation_update,
        super::figures::summary_get,
        super::figures::tasks_get,
        super::figures::system_get,
        super::figures::agent_get,
        super::figures::agent_metrics_get,
        super::queue::queue_get,
        super::queue::history_get,
        super::queue::queue_metrics,
        super::queue::queue_prioritize,
        super::policies::policies_list,
        super::policies::policies_create,
        super::schedules::schedules_list,
        super::schedules::schedules_create,
        super::schedules::schedules_get,
        super::schedules::schedules_update,
        super::schedules::schedules_pause,
        super::schedules::schedules_resume,
        super::schedules::schedules_delete,
        super::audit::audit_list,
        super::audit::audit_stats,
        super::audit::audit_verify,
        super::audit::audit_logs,
        super::audit::audit_log_get,
        super::deliberations::deliberations_create,
        super::deliberations::deliberations_list,
        super::deliberations::deliberations_get,
        super::deliberations::deliberations_status,
        super::deliberations::deliberations_transcript,
        super::notifications::notifications_list,
        super::notifications::notifications_stats,
        super::notifications::channels_list,
        super::notifications::channels_create,
        super::notifications::channels_delete,
        super::notifications::dead_letters_list,
        super::notifications::dead_letters_retry,
        super::events::events_stream,
        super::events::stream_info,
        openapi_json,
    ),
    components(schemas(ProblemBody, crate::model::Event, super::events::ResetNotice))
)]
struct Resources;

/// The whole API: the resources under the current prefix, and the open root routes.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "aragora-cp control plane",
        description = "Control plane for fleets of AI agents: registration and heartbeats, priority scheduling with \
capability matching, leases, health and circuit breakers, WebAssembly strategy, policy and probe plugins.\n\n\
Every resource is also served under the legacy prefix `/api/control-plane` (same operations, same shapes).\n\n\
Authentication: `Authorization: Bearer <JWT>` (HS256 with `ARAGORA_JWT_SECRET`, or RS256/EdDSA with \
`ARAGORA_JWT_PUBLIC_KEY`). The role names on each operation's `bearer` requirement are the permissions it needs \
(`controlplane:admin` carries all of them). A token with `sub = agent:<id>` acts only for that agent.",
        license(name = "Apache-2.0")
    ),
    nest((path = "/api/v1/control-plane", api = Resources)),
    paths(super::livez, super::readyz, super::metrics::metrics_get),
    components(schemas(ProblemBody)),
    modifiers(&Refusals),
    tags(
        (name = "agents", description = "Registration, heartbeats, pause/resume, selection"),
        (name = "tasks", description = "Submit, read, claim, and the lease-fenced reports"),
        (name = "health", description = "Fleet health, counters, policy violations"),
        (name = "plugins", description = "Strategy, policy and probe plugins this server holds; shadow and canary versions"),
        (name = "decisions", description = "The decision log: every plugin decision, what it saw and what it answered"),
        (name = "events", description = "The event stream (SSE)"),
        (name = "deliberations", description = "Vetted decisions: queued for a deliberation worker, or waited for"),
        (name = "notifications", description = "Channels events are sent to (webhook, Slack, Teams), deliveries, dead letters"),
        (name = "operations", description = "Open routes for orchestrators and scrapers, and this document"),
    )
)]
pub struct ApiDoc;

/// The document, as served and as committed (pretty JSON with a final newline).
pub fn document_json() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let mut text = ApiDoc::openapi().to_pretty_json().expect("the OpenAPI document serialises");
        text.push('\n');
        text
    })
}

/// `GET {prefix}/openapi.json`.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", security(()),
    responses((status = 200, description = "This document (OpenAPI 3.1)", content_type = "application/json")))]
pub async fn openapi_json() -> Response {
    let mut response = document_json().into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Adds the bearer scheme and the refusals many operations share.
struct Refusals;

impl Modify for Refusals {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .bearer_format("JWT")
            .description(Some("HS256, RS256 or EdDSA JWT; `exp` required; permissions in `permissions` or `scope`"))
            .build();
        components.add_security_scheme("bearer", SecurityScheme::Http(bearer));
        let metrics_token = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some("`METRICS_TOKEN`, when the server sets one"))
            .build();
        components.add_security_scheme("metrics_token", SecurityScheme::Http(metrics_token));
        for (path, item) in openapi.paths.paths.iter_mut() {
            let resource = PREFIXES.iter().any(|prefix| path.starts_with(prefix));
            for operation in operations(item) {
                add_refusals(operation, path, resource);
            }
        }
    }
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch].into_iter().flatten()
}

fn add_refusals(operation: &mut Operation, path: &str, resource: bool) {
    let secured = operation.security.as_ref().is_none_or(|requirements| !requirements.is_empty()) && resource;
    let has_body = operation.request_body.is_some();
    let has_parameters = operation.parameters.as_ref().is_some_and(|p| !p.is_empty());
    let names_resource = path.contains('{');
    let mut common: Vec<(&str, &str)> = Vec::new();
    if has_body || has_parameters {
        common.push(("400", "A field is missing or invalid (`validation_error`, naming `field`)"));
    }
    if secured {
        common.push((
            "401",
            "No bearer token, or an invalid, expired or wrongly signed one (`WWW-Authenticate` says why)",
        ));
        common.push(("403", "The token lacks the permission, or an agent token acts for another agent"));
    }
    if names_resource {
        common.push(("404", "No such task, agent or plugin"));
    }
    if has_body {
        common.push(("413", "The body or a JSON field is over its size limit (`payload_too_large`)"));
        common.push(("415", "A body that is not `application/json`"));
    }
    common.push(("500", "Internal error: the body is opaque, the cause is logged with the request id"));
    if resource {
        common.push(("503", "The store is unavailable (`store_unavailable`: a write's outcome is unknown, retry with the same idempotency key) or the pending index is full (`too_many_signatures`)"));
    }
    for (status, description) in common {
        operation.responses.responses.entry(status.to_string()).or_insert_with(|| RefOr::T(problem(description)));
    }
}

fn problem(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/problem+json",
            ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build(),
        )
        .build()
}
