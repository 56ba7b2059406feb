//! Who changed what: every state-changing call (any method but GET under the API prefix, except an agent's own work
//! on its tasks: heartbeats, claims, start, progress, complete, fail) is appended to the audit log after it is
//! answered by the handler and before the answer leaves (`access` records its [`entry`]); and the log's reads:
//! `/audit` (filters and a cursor), `/audit/stats`, `/audit/verify`, and Aragora's `/audit-logs` (offset paging).
//!
//! The actor is the caller's token subject, which the `Caller` extractor leaves in the request's [`AuditActor`]
//! slot; the resource is the route's first path parameter (`task:…`, `agent:…`), or what a creating handler names
//! in an [`AuditResource`] response extension (the task a submit made).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, Method};
use axum::response::Response;
use axum::routing::get;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::access::Refusal;
use super::auth::{Caller, Permission};
use super::errors::{ApiError, ApiResult};
use super::extract::{ApiQuery, page_limit, query_param};
use super::{ApiState, Prefixed};
use crate::model::{AuditCheckpoint, AuditDetails, AuditEntry, ChainBreak, NewAuditEntry};

/// Routes of an agent's work on its own tasks: frequent, and recorded by the task's events instead.
const AGENT_WORK: [&str; 8] = [
    "/agents/{agent_id}/heartbeat",
    "/agents/select",
    "/tasks/claim",
    "/tasks/complete",
    "/tasks/{task_id}/start",
    "/tasks/{task_id}/progress",
    "/tasks/{task_id}/complete",
    "/tasks/{task_id}/fail",
];

/// Entries a filtered read looks at per request, at most (the cursor goes on from where it stopped).
const SCAN: u64 = 10_000;

/// The caller's subject, left by the `Caller` extractor for the audit entry.
#[derive(Clone, Default)]
pub struct AuditActor(Arc<Mutex<Option<String>>>);

impl AuditActor {
    /// Called by the extractor once the token checks.
    pub fn set(&self, sub: &str) {
        *self.0.lock() = Some(sub.to_string());
    }
}

/// What a creating handler made (`task:…`), for its audit entry.
#[derive(Clone, Debug)]
pub struct AuditResource(pub String);

/// The route relative to the API prefix, when the call is one the log records.
pub fn audited_route<'a>(method: &Method, matched: &'a str) -> Option<&'a str> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return None;
    }
    let route = super::PREFIXES.iter().find_map(|prefix| matched.strip_prefix(prefix)).unwrap_or(matched);
    (!AGENT_WORK.contains(&route)).then_some(route)
}

/// The entry of an answered call: who, what, on which resource, with which outcome. (Built before the entry is
/// awaited: a response is not `Sync`, so a borrow of it may not be held across an await.)
pub fn entry(state: &ApiState, call: AuditedCall, response: &Response) -> NewAuditEntry {
    let actor = call.actor.0.lock().take().unwrap_or_else(|| "anonymous".to_string());
    let resource = match response.extensions().get::<AuditResource>() {
        Some(made) => made.0.clone(),
        None => resource_of(&call.route, &call.path),
    };
    let status = response.status().as_u16();
    let code = response.extensions().get::<Refusal>().map(|refusal| refusal.code.clone());
    let details = AuditDetails { code, status };
    NewAuditEntry {
        time_ms: state.coordinator.now_ms(),
        actor,
        action: [call.method.as_str(), " ", &call.route].concat(),
        resource,
        request_id: call.request_id,
        outcome: if response.status().is_success() { "success" } else { "failure" }.to_string(),
        details,
    }
}

/// What [`entry`] needs of the request, taken before the handler consumes it.
pub struct AuditedCall {
    method: Method,
    route: String,
    path: String,
    request_id: String,
    actor: AuditActor,
}

impl AuditedCall {
    /// Takes what the entry needs and leaves the actor slot in the request for the extractor.
    pub fn begin(request: &mut axum::extract::Request, route: &str, request_id: &HeaderValue) -> AuditedCall {
        let actor = AuditActor::default();
        request.extensions_mut().insert(actor.clone());
        AuditedCall {
            method: request.method().clone(),
            route: route.to_string(),
            path: request.uri().path().to_string(),
            request_id: request_id.to_str().unwrap_or("").to_string(),
            actor,
        }
    }
}

/// `task:<id>` from `/tasks/{task_id}/cancel` and `/…/tasks/<id>/cancel`: the route's first parameter, named by the
/// segment before it (singular). Routes and paths are aligned from their ends (the path may carry the prefix).
fn resource_of(route: &str, path: &str) -> String {
    let route: Vec<&str> = route.split('/').filter(|s| !s.is_empty()).collect();
    let path: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let Some(offset) = path.len().checked_sub(route.len()) else { return String::new() };
    for (i, segment) in route.iter().enumerate() {
        if segment.starts_with('{') && i > 0 {
            let kind = route[i - 1].strip_suffix('s').unwrap_or(route[i - 1]);
            return format!("{kind}:{}", path[offset + i]);
        }
    }
    String::new()
}

/// The routes, relative to the API prefix.
pub fn routes(api: Prefixed<'_>) -> Prefixed<'_> {
    api.route("/audit", get(audit_list))
        .route("/audit/stats", get(audit_stats))
        .route("/audit/verify", get(audit_verify))
        .route("/audit-logs", get(audit_logs))
        .route("/audit-logs/{id}", get(audit_log_get))
}

fn auditor(caller: &Caller) -> ApiResult<()> {
    caller.not_an_agent("read the audit log")?;
    caller.require(Permission::Admin)
}

/// `GET /audit` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    since: Option<String>,
    until: Option<String>,
    actor: Option<String>,
    action: Option<String>,
    resource: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// `GET /audit` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    /// Matching entries, newest first.
    pub entries: Vec<AuditEntry>,
    /// Entries in the log.
    pub total: u64,
    /// Pass back as `cursor` for older matches; none when the log's start was reached.
    pub next_cursor: Option<String>,
}

/// An RFC 3339 time as text comparable with entries' times (they are all UTC with milliseconds).
fn time_bound(field: &str, raw: Option<&str>) -> ApiResult<Option<String>> {
    let Some(raw) = raw.filter(|r| !r.is_empty()) else { return Ok(None) };
    let parsed = chrono::DateTime::parse_from_rfc3339(raw)
        .map_err(|_| ApiError::invalid(field, "must be an RFC 3339 time, e.g. 2026-12-03T10:00:00Z"))?;
    Ok(Some(crate::model::rfc3339_ms(parsed.timestamp_millis().max(0) as u64)))
}

/// `GET /audit?since=&until=&actor=&action=&resource=&limit=&cursor=` → newest first. `action` matches a prefix
/// (`POST /tasks` matches every task call); a page reads at most 10,000 entries, so a rare match may take several
/// pages (follow `next_cursor`).
#[utoipa::path(get, path = "/audit", tag = "operations",
    params(
        ("since" = Option<String>, Query, description = "Entries at or after this RFC 3339 time"),
        ("until" = Option<String>, Query, description = "Entries before this RFC 3339 time"),
        ("actor" = Option<String>, Query, description = "Only this token subject"),
        ("action" = Option<String>, Query, description = "Only actions starting with this, e.g. `DELETE /agents`"),
        ("resource" = Option<String>, Query, description = "Only this resource, e.g. `task:task_…`"),
        ("limit" = Option<usize>, Query, description = "Page size, 1–1000 (default 100)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses((status = 200, description = "One page, newest first", body = AuditPage)),
    security(("bearer" = ["controlplane:admin"])))]
pub async fn audit_list(
    State(state): State<ApiState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> ApiResult<Json<AuditPage>> {
    auditor(&caller)?;
    let limit = page_limit(query.limit.as_deref(), 100, 1000)?;
    let since = time_bound("since", query.since.as_deref())?;
    let until = time_bound("until", query.until.as_deref())?;
    let head = state.coordinator.audit_head().await?;
    let below = query_param::<u64>("cursor", query.cursor.as_deref(), "a next_cursor from an earlier page")?
        .unwrap_or(head.seq + 1)
        .min(head.seq + 1);
    let matches = |entry: &AuditEntry| {
        since.as_ref().is_none_or(|since| entry.time >= *since)
            && until.as_ref().is_none_or(|until| entry.time < *until)
            && query.actor.as_ref().is_none_or(|actor| entry.actor == *actor)
            && query.action.as_ref().is_none_or(|action| entry.action.starts_with(action.as_str()))
            && query.resource.as_ref().is_none_or(|resource| entry.resource == *resource)
    };
    let mut entries = Vec::new();
    let mut next = below;
    let floor = below.saturating_sub(SCAN).max(1);
    while next > floor && entries.len() < limit {
        let from = next.saturating_sub(1000).max(floor);
        let mut chunk = state.coordinator.audit_entries(from, next - 1).await?;
        chunk.reverse();
        // Below `from` next time, unless the page fills up within this chunk.
        let mut resume = from;
        for entry in chunk {
            if matches(&entry) {
                entries.push(entry.clone());
                if entries.len() == limit {
                    resume = entry.seq;
                    break;
                }
            }
        }
        next = resume;
    }
    let next_cursor = (next > 1).then(|| next.to_string());
    Ok(Json(AuditPage { entries, total: head.seq, next_cursor }))
}

/// `GET /audit/stats` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditStats {
    /// Entries in the log.
    pub total: u64,
    /// The newest entries the counts below cover (at most 10,000).
    pub window: u64,
    /// Entries by action.
    pub by_action: BTreeMap<String, u64>,
    /// Entries by actor.
    pub by_actor: BTreeMap<String, u64>,
    /// Entries by outcome.
    pub by_outcome: BTreeMap<String, u64>,
    /// The oldest entry's time in the window.
    pub first_time: Option<String>,
    /// The newest entry's time.
    pub last_time: Option<String>,
}

/// `GET /audit/stats` → counts by action, actor and outcome over the newest 10,000 entries.
#[utoipa::path(get, path = "/audit/stats", tag = "operations",
    responses((status = 200, description = "Counts over the newest entries", body = AuditStats)),
    security(("bearer" = ["controlplane:admin"])))]
pub async fn audit_stats(State(state): State<ApiState>, caller: Caller) -> ApiResult<Json<AuditStats>> {
    auditor(&caller)?;
    let head = state.coordinator.audit_head().await?;
    let floor = head.seq.saturating_sub(SCAN) + 1;
    let mut stats = AuditStats {
        total: head.seq,
        window: 0,
        by_action: BTreeMap::new(),
        by_actor: BTreeMap::new(),
        by_outcome: BTreeMap::new(),
        first_time: None,
        last_time: None,
    };
    let mut from = floor;
    while from <= head.seq {
        let to = (from + 999).min(head.seq);
        for entry in state.coordinator.audit_entries(from, to).await? {
            stats.window += 1;
            *stats.by_action.entry(entry.action).or_default() += 1;
            *stats.by_actor.entry(entry.actor).or_default() += 1;
            *stats.by_outcome.entry(entry.outcome).or_default() += 1;
            stats.first_time.get_or_insert_with(|| entry.time.clone());
            stats.last_time = Some(entry.time);
        }
        from = to + 1;
    }
    Ok(Json(stats))
}

/// `GET /audit/verify` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditVerification {
    /// Whether every entry checks against the one before it.
    pub valid: bool,
    /// Entries checked before the first break (all of them when valid).
    pub checked: u64,
    /// The log's recorded end.
    pub head_seq: u64,
    /// Its hash.
    pub head_hash: String,
    /// The first entry that does not check.
    pub first_break: Option<ChainBreak>,
    /// Where the check started when `AUDIT_RETENTION` removed older entries: the last removed entry's place and
    /// hash, signed with the audit key.
    pub checkpoint: Option<AuditCheckpoint>,
}

/// `GET /audit/verify` → checks the chain from the first entry: an entry edited, removed or reordered in the store
/// is named (it reads the whole log, 1,000 entries per store call).
#[utoipa::path(get, path = "/audit/verify", tag = "operations",
    responses((status = 200, description = "Whether the chain is intact, and where it is not", body = AuditVerification)),
    security(("bearer" = ["controlplane:admin"])))]
pub async fn audit_verify(State(state): State<ApiState>, caller: Caller) -> ApiResult<Json<AuditVerification>> {
    auditor(&caller)?;
    let check = state.coordinator.verify_audit().await?;
    Ok(Json(AuditVerification {
        valid: check.first_break.is_none(),
        checked: check.checked,
        head_seq: check.end.seq,
        head_hash: check.end.hash,
        first_break: check.first_break,
        checkpoint: check.checkpoint,
    }))
}

/// `GET /audit-logs` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditLogsQuery {
    limit: Option<String>,
    offset: Option<String>,
}

/// `GET /audit-logs` answer (Aragora's shape).
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditLogs {
    /// Entries, newest first.
    pub logs: Vec<AuditEntry>,
    /// Entries in the log.
    pub total: u64,
    /// The page size.
    pub limit: usize,
    /// Entries skipped.
    pub offset: u64,
}

/// `GET /audit-logs?limit=&offset=` → `{"logs", "total", "limit", "offset"}`, newest first.
#[utoipa::path(get, path = "/audit-logs", tag = "operations",
    params(
        ("limit" = Option<usize>, Query, description = "Page size, 1–1000 (default 50)"),
        ("offset" = Option<u64>, Query, description = "Entries to skip from the newest"),
    ),
    responses((status = 200, description = "One page, newest first", body = AuditLogs)),
    security(("bearer" = ["controlplane:admin"])))]
pub async fn audit_logs(
    State(state): State<ApiState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<AuditLogsQuery>,
) -> ApiResult<Json<AuditLogs>> {
    auditor(&caller)?;
    let limit = page_limit(query.limit.as_deref(), 50, 1000)?;
    let offset = query_param::<u64>("offset", query.offset.as_deref(), "a number of entries")?.unwrap_or(0);
    let head = state.coordinator.audit_head().await?;
    let newest = head.seq.saturating_sub(offset);
    let mut logs = if newest == 0 {
        Vec::new()
    } else {
        state.coordinator.audit_entries(newest.saturating_sub(limit as u64 - 1).max(1), newest).await?
    };
    logs.reverse();
    Ok(Json(AuditLogs { logs, total: head.seq, limit, offset }))
}

/// `GET /audit-logs/{id}` (`audit_<seq>`, or the bare number) → the entry.
#[utoipa::path(get, path = "/audit-logs/{id}", tag = "operations",
    params(("id" = String, Path, description = "The entry's id (`audit_<seq>`)")),
    responses(
        (status = 200, description = "The entry", body = AuditEntry),
        (status = 404, description = "No such entry (`audit_entry_not_found`)", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["controlplane:admin"])))]
pub async fn audit_log_get(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<AuditEntry>> {
    auditor(&caller)?;
    let missing = || ApiError::not_found("audit_entry_not_found", format!("audit entry {id} not found"));
    let seq: u64 = id.strip_prefix("audit_").unwrap_or(&id).parse().map_err(|_| missing())?;
    let entry = state.coordinator.audit_entries(seq, seq).await?.into_iter().next();
    Ok(Json(entry.filter(|e| e.seq == seq).ok_or_else(missing)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resource_is_the_routes_first_parameter_named_by_the_segment_before_it() {
        assert_eq!(resource_of("/tasks/{task_id}/cancel", "/api/v1/control-plane/tasks/task_1/cancel"), "task:task_1");
        assert_eq!(resource_of("/agents/{agent_id}", "/agents/coder-1"), "agent:coder-1");
        assert_eq!(
            resource_of("/policies/violations/{violation_id}", "/x/policies/violations/viol_3"),
            "violation:viol_3"
        );
        assert_eq!(resource_of("/tasks", "/api/control-plane/tasks"), "");
    }

    #[test]
    fn an_agents_work_and_reads_are_not_audited() {
        assert_eq!(audited_route(&Method::POST, "/api/v1/control-plane/tasks"), Some("/tasks"));
        assert_eq!(audited_route(&Method::DELETE, "/api/control-plane/agents/{agent_id}"), Some("/agents/{agent_id}"));
        assert_eq!(audited_route(&Method::POST, "/api/v1/control-plane/tasks/claim"), None);
        assert_eq!(audited_route(&Method::POST, "/api/v1/control-plane/agents/{agent_id}/heartbeat"), None);
        assert_eq!(audited_route(&Method::GET, "/api/v1/control-plane/tasks"), None);
    }
}
