//! `GET /events`: the coordinator's event stream as Server-Sent Events. Each event carries `id:` (resume with
//! `Last-Event-ID`, replayed from the store's buffer, or a `reset` event when that id fell out of it), `event:`
//! (its type) and the event as JSON (ids and small facts, never payloads). `?types=a,b` filters by type
//! (`decision` events, one or more per routed task, go only to a stream that names them); an agent token sees
//! only its own agent's events; comment lines keep idle connections open. Streams end when the server starts
//! draining, and when its event pump fell behind the store (the client resumes from its last id).

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::routing::get;
use futures_util::Stream;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast;

use super::auth::{Caller, Permission};
use super::errors::{ApiError, ApiResult};
use super::extract::ApiQuery;
use super::{ApiState, Prefixed};
use crate::model::{Event, EventKind, parse_event_id};

/// Events replayed at most on a resume.
pub const MAX_REPLAY: usize = 10_000;
/// Period of the keep-alive comments.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The event routes, relative to the API prefix.
pub fn routes(api: Prefixed<'_>) -> Prefixed<'_> {
    api.route("/events", get(events_stream)).route("/stream", get(stream_info))
}

/// `GET /events` query.
#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    types: Option<String>,
    last_event_id: Option<String>,
}

/// Which events a connection receives.
struct Filter {
    types: Option<HashSet<String>>,
    agent: Option<String>,
}

impl Filter {
    fn accepts(&self, event: &Event) -> bool {
        // Decisions come one or more per routed task, on a channel of their own that only a stream naming them
        // (`?types=decision`) follows, so they never crowd the others' channel nor make a reader lag.
        let named = |types: &HashSet<String>| types.contains(event.kind.as_str());
        let wanted = match &self.types {
            Some(types) => named(types),
            None => event.kind != EventKind::Decision,
        };
        wanted && self.agent.as_ref().is_none_or(|own| event.agent_id.as_deref() == Some(own.as_str()))
    }
}

/// A connection's position: replayed events first, then the live stream (skipping what the client already had).
struct Feed {
    backlog: VecDeque<SseEvent>,
    /// The newest store event this connection has covered, as (ms, seq): the resume point (when the store knows
    /// it), then each replayed or live event passed (sent or filtered out). A live event at or before it is
    /// skipped. Not a set of the replayed ids: this server's reader of a shared store may be behind the point a
    /// client resumes from (a replay reads the store directly, and the reader may be reconnecting), and then live
    /// events the client saw on an earlier connection come again, ids the replay never held. Store event ids rise
    /// in stream order on every store.
    covered: Option<(u64, u64)>,
    /// The replay goes on after this id: its last page was full, so the store holds more events than were read,
    /// and some of them may predate the live subscription. Read page by page as the client takes them.
    more_after: Option<String>,
    /// Where further replay pages come from.
    coordinator: std::sync::Arc<crate::coordinator::ControlPlaneCoordinator>,
    live: broadcast::Receiver<std::sync::Arc<Event>>,
    /// Changes when the live stream missed store events (this server's event pump or the store's reader fell
    /// behind): the connection then ends, and its client resumes from its last id, which the store's buffer replays
    /// (or answers with a `reset` when that fell out of it).
    gaps: tokio::sync::watch::Receiver<u64>,
    /// The decision events, for a stream that named them (they have a channel of their own: see `Filter`).
    decisions: Option<broadcast::Receiver<std::sync::Arc<Event>>>,
    filter: Filter,
    draining: tokio_util::sync::CancellationToken,
}

impl Feed {
    /// Queues one page of the replay.
    fn replay(&mut self, events: Vec<Event>) {
        self.more_after = if events.len() >= MAX_REPLAY { events.last().map(|e| e.id.clone()) } else { None };
        for event in events {
            if self.filter.accepts(&event) {
                self.backlog.push_back(to_sse(&event));
            }
            self.advance(&event);
        }
    }

    /// Moves the connection past `event`; false when it was past it already (the event came before). Events whose
    /// ids are not the store's (a plugin registry's) always pass: they are not resumable.
    fn advance(&mut self, event: &Event) -> bool {
        let Some(id) = parse_event_id(&event.id) else { return true };
        if self.covered.is_some_and(|covered| id <= covered) {
            return false;
        }
        self.covered = Some(id);
        true
    }

    /// Whether the live stream missed store events since the connection subscribed (see `gaps`).
    fn missed_events(&self) -> bool {
        self.gaps.has_changed().is_ok_and(|changed| changed)
    }
}

fn to_sse(event: &Event) -> SseEvent {
    let mut data = serde_json::to_value(event).unwrap_or_default();
    // The waiter token of a routed grant is for the servers (to wake the blocked claim), not for clients.
    if let Some(fields) = data.get_mut("data").and_then(serde_json::Value::as_object_mut) {
        fields.remove("waiter");
    }
    SseEvent::default().id(event.id.clone()).event(event.kind.as_str()).data(data.to_string())
}

fn reset(reason: &str) -> SseEvent {
    SseEvent::default().event("reset").data(json!({"reason": reason}).to_string())
}

/// One message of the stream as Server-Sent Events frame it, for the OpenAPI document (the handler writes them).
#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code, reason = "a schema for the OpenAPI document only: never built")]
pub struct SseMessage {
    /// The event's id, for `Last-Event-ID`; absent on `reset`.
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    /// The event's type (`task_submitted`, …), or `reset` when the client missed events (it should re-read what it
    /// tracks).
    event: String,
    /// JSON text: the `Event`, or for `reset` a `ResetNotice`.
    data: String,
}

/// The data of an `event: reset`: why the stream could not continue from where the client was.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code, reason = "a schema for the OpenAPI document only: never built")]
pub struct ResetNotice {
    /// `last_event_id_expired` (the store does not hold the id: it fell out of the buffer, or it is not one of its
    /// ids) or `lagged` (this client fell behind).
    reason: String,
}

/// `GET /events?types=` with optional `Last-Event-ID`.
#[utoipa::path(get, path = "/events", tag = "events",
    params(
        ("types" = Option<String>, Query, description = "Comma-separated event types, e.g. `task_completed,agent_offline`"),
        ("last_event_id" = Option<String>, Query, description = "Resume after this id (as the `Last-Event-ID` header)"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this id; a `reset` event says the store does not hold it (too old, or not one of its ids)"),
    ),
    responses((status = 200, description = "Server-Sent Events: `id:` (opaque, for resume), `event:` (the type), `data:` the event as JSON (`Event`); comment lines every 15 s; the stream ends when the server drains or fell behind the store's events (resume from the last id); `event: reset` with `{\"reason\"}` when events were missed", content_type = "text/event-stream", body = SseMessage)),
    security(("bearer" = ["controlplane:read"])))]
pub async fn events_stream(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    caller.require(Permission::Read)?;
    let types = match query.types.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
        None => None,
        Some(list) => {
            let types: HashSet<String> =
                list.split(',').map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect();
            if let Some(unknown) = types.iter().find(|t| !is_event_type(t)) {
                return Err(ApiError::invalid("types", format!("unknown event type {unknown:?}")));
            }
            Some(types)
        }
    };
    let filter = Filter { types, agent: caller.agent.clone() };
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or(query.last_event_id)
        .filter(|id| !id.is_empty());
    // Subscribe before reading the buffer, so nothing falls between the replay and the live stream.
    // Gaps first: one counted between the two subscriptions then ends the stream early, harmlessly, instead of
    // going unsignalled while the live stream misses its events.
    let gaps = state.coordinator.subscribe_gaps();
    let live = state.coordinator.subscribe();
    let asks_decisions = filter.types.as_ref().is_some_and(|types| types.contains(EventKind::Decision.as_str()));
    let mut feed = Feed {
        backlog: VecDeque::new(),
        covered: None,
        more_after: None,
        coordinator: state.coordinator.clone(),
        live,
        gaps,
        decisions: asks_decisions.then(|| state.coordinator.subscribe_decisions()),
        filter,
        draining: state.draining.clone(),
    };
    if let Some(after) = &last_event_id {
        match state.coordinator.events_after(Some(after), MAX_REPLAY).await? {
            None => feed.backlog.push_back(reset("last_event_id_expired")),
            Some(events) => {
                // Only a resume point the store knows counts: after a `reset` (an id too old, from another store
                // or from the future) the client re-reads the state and takes every live event from then on.
                feed.covered = parse_event_id(after);
                feed.replay(events)
            }
        }
    }
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
        loop {
            if let Some(next) = feed.backlog.pop_front() {
                return Some((Ok(next), feed));
            }
            let Some(after) = feed.more_after.take() else { break };
            match feed.coordinator.events_after(Some(&after), MAX_REPLAY).await {
                Ok(Some(events)) => feed.replay(events),
                Ok(None) => return Some((Ok(reset("last_event_id_expired")), feed)),
                // The client resumes from the last id it received.
                Err(_) => return None,
            }
        }
        next_live(feed).await
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// The next live event the connection takes, skipping what the client already had (see `Feed::covered`).
async fn next_live(mut feed: Feed) -> Option<(Result<SseEvent, Infallible>, Feed)> {
    loop {
        let received = tokio::select! {
            _ = feed.draining.cancelled() => return None,
            Ok(()) = feed.gaps.changed() => return None,
            received = feed.live.recv() => received,
            decided = next_decision(&mut feed.decisions) => match decided {
                Some(event) => Ok(event),
                // Decisions are not resumable: a stream that fell behind them just goes on.
                None => continue,
            },
        };
        match received {
            Ok(event) => {
                // The pump sends what it received after a gap right after counting the gap, so an event may come
                // in before the change is noticed by the `select!`: one from past the gap must not go out first.
                if feed.missed_events() {
                    return None;
                }
                if !feed.advance(&event) || !feed.filter.accepts(&event) {
                    continue;
                }
                return Some((Ok(to_sse(&event)), feed));
            }
            // A gap as well: the client resumes from its last id rather than re-read everything.
            Err(broadcast::error::RecvError::Lagged(_)) if feed.missed_events() => return None,
            Err(broadcast::error::RecvError::Lagged(_)) => return Some((Ok(reset("lagged")), feed)),
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
}

/// The next decision of a stream that asked for them (never, for one that did not); `None` after a lag.
async fn next_decision(
    decisions: &mut Option<broadcast::Receiver<std::sync::Arc<Event>>>,
) -> Option<std::sync::Arc<Event>> {
    match decisions {
        Some(receiver) => receiver.recv().await.ok(),
        None => std::future::pending().await,
    }
}

fn is_event_type(name: &str) -> bool {
    serde_json::from_value::<EventKind>(json!(name)).is_ok()
}

/// `GET /stream` answer: where and how to follow the events (what Aragora's clients ask before subscribing).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct StreamInfo {
    /// `sse`: Server-Sent Events over a long-lived `GET`.
    pub transport: &'static str,
    /// The stream's path (the legacy prefix serves it too).
    pub url: String,
    /// Every path that serves it.
    pub urls: Vec<String>,
    /// How to resume after a disconnect.
    pub resume: &'static str,
    /// How to receive only some types.
    pub filter: &'static str,
    /// Every event type the stream carries.
    pub event_types: Vec<&'static str>,
    /// Seconds between the keep-alive comments of an idle stream.
    pub keep_alive_seconds: u64,
    /// Events a resume replays before going live (page by page beyond this).
    pub replay_page: usize,
}

/// `GET /stream`.
#[utoipa::path(get, path = "/stream", tag = "events",
    responses((status = 200, description = "Where and how to subscribe to the event stream", body = StreamInfo)),
    security(("bearer" = ["controlplane:read"])))]
pub async fn stream_info(caller: Caller) -> ApiResult<axum::Json<StreamInfo>> {
    caller.require(Permission::Read)?;
    Ok(axum::Json(StreamInfo {
        transport: "sse",
        url: format!("{}/events", super::PREFIXES[0]),
        urls: super::PREFIXES.iter().map(|prefix| format!("{prefix}/events")).collect(),
        resume: "send the last id received as the Last-Event-ID header (or ?last_event_id=); a `reset` event says the store does not hold it (too old, or not one of its ids)",
        filter: "?types=task_completed,task_failed (comma-separated event types); an agent token receives its own agent's events only",
        event_types: EventKind::ALL.iter().map(|kind| kind.as_str()).collect(),
        keep_alive_seconds: KEEP_ALIVE.as_secs(),
        replay_page: MAX_REPLAY,
    }))
}
