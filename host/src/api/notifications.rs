//! `/notifications`: channels (webhook, Slack, Teams) the fleet's events are sent to, the deliveries and their
//! counters, and dead letters sent again by hand. Admin only: channels hold URLs and secrets. The sending itself
//! is the notification worker's (`crate::notifications`).

use std::collections::{BTreeMap, HashMap};

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::audit::AuditResource;
use super::auth::{Caller, Permission};
use super::errors::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiQuery, page_limit};
use super::{ApiState, Prefixed};
use crate::model::{
    Channel, ChannelFigures, ChannelKind, Delivery, DeliveryMessage, DeliveryStatus, NewChannel, rfc3339_ms,
};

/// The routes, relative to the API prefix.
pub fn routes(api: Prefixed<'_>) -> Prefixed<'_> {
    api.route("/notifications", get(notifications_list))
        .route("/notifications/stats", get(notifications_stats))
        .route("/notifications/channels", get(channels_list).post(channels_create))
        .route("/notifications/channels/{channel_id}", delete(channels_delete))
        .route("/notifications/dead-letters", get(dead_letters_list))
        .route("/notifications/dead-letters/{delivery_id}/retry", post(dead_letters_retry))
}

fn admin(caller: &Caller) -> ApiResult<()> {
    caller.not_an_agent("manage notifications")?;
    caller.require(Permission::Admin)
}

/// `POST /notifications/channels` answer: the channel, and a webhook's secret (shown this once).
#[derive(Debug, Serialize, ToSchema)]
pub struct ChannelCreated {
    /// The channel as listed.
    #[schema(value_type = Object)]
    pub channel: Value,
    /// The webhook's signing secret (`X-Aragora-Signature: sha256=HMAC(secret, body)`); never shown again.
    pub secret: Option<String>,
}

/// `GET /notifications/channels` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChannelList {
    /// Every channel (secrets never; Slack and Teams URLs without their path).
    #[schema(value_type = Vec<Object>)]
    pub channels: Vec<Value>,
    /// How many.
    pub total: usize,
}

/// One delivery as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    /// `<event id>:<channel id>`.
    pub id: String,
    /// The channel.
    pub channel_id: String,
    /// Its type (`webhook`, `slack`, `teams`); none once the channel was deleted.
    pub channel: Option<ChannelKind>,
    /// The event sent (its `X-Aragora-Event-Id`).
    pub event_id: String,
    /// The event's type.
    pub event_type: String,
    /// The task concerned.
    pub task_id: Option<String>,
    /// The agent concerned.
    pub agent_id: Option<String>,
    /// `pending`, `sending`, `sent` or `dead`.
    pub status: DeliveryStatus,
    /// Whether the receiver accepted it.
    pub success: bool,
    /// Attempts begun in the delivery's life (a manual retry goes on counting).
    pub attempts: u32,
    /// When it was made.
    pub created_at: String,
    /// Pending: when the next attempt is due; sending: when the sending server's lease ends.
    pub next_attempt_at: Option<String>,
    /// When the receiver accepted it.
    pub delivered_at: Option<String>,
    /// The last failed attempt's error (`HTTP 500: …`, a connection error, a refused address).
    pub last_error: Option<String>,
    /// The receiver's last HTTP status.
    pub last_status: Option<u16>,
}

fn view(delivery: Delivery, kinds: &HashMap<String, ChannelKind>) -> DeliveryView {
    let message: Option<DeliveryMessage> = serde_json::from_str(&delivery.message).ok();
    let event = message.as_ref().map(|m| &m.event);
    DeliveryView {
        channel: kinds.get(&delivery.channel_id).copied(),
        event_id: event.map(|e| e.id.clone()).unwrap_or_default(),
        event_type: event.map(|e| e.kind.as_str().to_string()).unwrap_or_default(),
        task_id: event.and_then(|e| e.task_id.clone()),
        agent_id: event.and_then(|e| e.agent_id.clone()),
        success: delivery.status == DeliveryStatus::Sent,
        status: delivery.status,
        attempts: delivery.attempts,
        created_at: rfc3339_ms(delivery.created_ms),
        next_attempt_at: delivery.due_ms.map(rfc3339_ms),
        delivered_at: delivery.delivered_ms.map(rfc3339_ms),
        last_error: delivery.last_error,
        last_status: delivery.last_status,
        id: delivery.id,
        channel_id: delivery.channel_id,
    }
}

async fn channel_kinds(state: &ApiState) -> ApiResult<HashMap<String, ChannelKind>> {
    Ok(state.coordinator.channels().await?.into_iter().map(|c| (c.id, c.kind)).collect())
}

/// `GET /notifications` and `/notifications/dead-letters` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryQuery {
    status: Option<String>,
    limit: Option<String>,
}

/// `GET /notifications` answer (Aragora's shape: `notifications`, `total`, `stats`).
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    /// Recent deliveries, newest first.
    pub notifications: Vec<DeliveryView>,
    /// How many are listed.
    pub total: usize,
    /// The counters of `GET /notifications/stats`.
    pub stats: NotificationStats,
}

/// `GET /notifications?status=&limit=` → recent deliveries with their status, newest first (the last 1,000 sent
/// ones, every pending one, dead letters until retried); pending and sending ones soonest due first.
#[utoipa::path(get, path = "/notifications", tag = "notifications",
    params(
        ("status" = Option<String>, Query, description = "`pending`, `sending`, `sent` or `dead`"),
        ("limit" = Option<usize>, Query, description = "At most this many (1 to 1000, default 100)"),
    ),
    responses(
        (status = 200, description = "Recent deliveries", body = DeliveryList),
        (status = 400, description = "An unknown status or a bad limit", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["controlplane:admin"])))]
pub async fn notifications_list(
    State(state): State<ApiState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<DeliveryQuery>,
) -> ApiResult<Json<DeliveryList>> {
    admin(&caller)?;
    let status = match query.status.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => None,
        Some(name) => Some(
            DeliveryStatus::parse(name)
                .ok_or_else(|| ApiError::invalid("status", "must be pending, sending, sent or dead"))?,
        ),
    };
    delivery_list(&state, status, query.limit.as_deref()).await
}

/// The deliveries in `status` (any when `None`), newest first, at most `limit` (1 to 1000, default 100), with the
/// figures: the answer of both lists.
async fn delivery_list(
    state: &ApiState,
    status: Option<DeliveryStatus>,
    limit: Option<&str>,
) -> ApiResult<Json<DeliveryList>> {
    let limit = page_limit(limit, 100, 1_000)?;
    let kinds = channel_kinds(state).await?;
    let deliveries = state.coordinator.deliveries(status, limit).await?;
    let notifications: Vec<DeliveryView> = deliveries.into_iter().map(|d| view(d, &kinds)).collect();
    Ok(Json(DeliveryList { total: notifications.len(), notifications, stats: stats(state).await? }))
}

/// `GET /notifications/dead-letters?limit=` → deliveries whose attempts ran out, newest first.
#[utoipa::path(get, path = "/notifications/dead-letters", tag = "notifications",
    params(("limit" = Option<usize>, Query, description = "At most this many (1 to 1000, default 100)")),
    responses((status = 200, description = "Dead letters", body = DeliveryList)),
    security(("bearer" = ["controlplane:admin"])))]
pub async fn dead_letters_list(
    State(state): State<ApiState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<DeliveryQuery>,
) -> ApiResult<Json<DeliveryList>> {
    admin(&caller)?;
    if query.status.is_some() {
        return Err(ApiError::invalid("status", "is dead here; use GET /notifications?status= for others"));
    }
    delivery_list(&state, Some(DeliveryStatus::Dead), query.limit.as_deref()).await
}

/// `POST /notifications/dead-letters/{id}/retry` → the dead letter is pending again, due now, with a new round of the
/// channel's `max_attempts` (the attempt number goes on).
#[utoipa::path(post, path = "/notifications/dead-letters/{delivery_id}/retry", tag = "notifications",
    params(("delivery_id" = String, Path, description = "The delivery's id (`<event id>:<channel id>`)")),
    responses(
        (status = 200, description = "Pending again", body = DeliveryView),
        (status = 404, description = "No such delivery (`delivery_not_found`)", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "Not a dead letter (`not_a_dead_letter`)", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["controlplane:admin"])))]
pub async fn dead_letters_retry(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<DeliveryView>> {
    admin(&caller)?;
    let delivery = state.coordinator.retry_delivery(&id).await?;
    Ok(Json(view(delivery, &channel_kinds(&state).await?)))
}

/// `GET /notifications/stats` answer: Aragora's fields (`total_sent`, `successful`, `failed`, `success_rate`,
/// `by_channel`, `channels_configured`) and each channel's counters.
#[derive(Debug, Serialize, ToSchema)]
pub struct NotificationStats {
    /// Attempts made (accepted or failed).
    pub total_sent: u64,
    /// Deliveries the receivers accepted.
    pub successful: u64,
    /// Attempts that failed.
    pub failed: u64,
    /// `successful / total_sent` (0 before any attempt).
    pub success_rate: f64,
    /// Deliveries that became dead letters.
    pub dead: u64,
    /// Attempts by channel type (`webhook`, `slack`, `teams`).
    pub by_channel: BTreeMap<String, u64>,
    /// Channels configured.
    pub channels_configured: usize,
    /// Each channel's counters, by channel id.
    pub channels: BTreeMap<String, ChannelFigures>,
}

async fn stats(state: &ApiState) -> ApiResult<NotificationStats> {
    let kinds = channel_kinds(state).await?;
    let channels = state.coordinator.notification_figures().await?;
    let mut stats = NotificationStats {
        total_sent: 0,
        successful: 0,
        failed: 0,
        success_rate: 0.0,
        dead: 0,
        by_channel: BTreeMap::new(),
        channels_configured: kinds.len(),
        channels: BTreeMap::new(),
    };
    for (id, figures) in channels {
        stats.successful += figures.sent;
        stats.failed += figures.failed;
        stats.dead += figures.dead;
        if let Some(kind) = kinds.get(&id) {
            *stats.by_channel.entry(kind.as_str().to_string()).or_default() += figures.sent + figures.failed;
        }
        stats.channels.insert(id, figures);
    }
    stats.total_sent = stats.successful + stats.failed;
    if stats.total_sent > 0 {
        stats.success_rate = stats.successful as f64 / stats.total_sent as f64;
    }
    Ok(stats)
}

/// `GET /notifications/stats` → sent, failed and dead, in all and by channel.
#[utoipa::path(get, path = "/notifications/stats", tag = "notifications",
    responses((status = 200, description = "Delivery counters", body = NotificationStats)),
    security(("bearer" = ["controlplane:admin"])))]
pub async fn notifications_stats(State(state): State<ApiState>, caller: Caller) -> ApiResult<Json<NotificationStats>> {
    admin(&caller)?;
    Ok(Json(stats(&state).await?))
}

/// `GET /notifications/channels` → every channel.
#[utoipa::path(get, path = "/notifications/channels", tag = "notifications",
    responses((status = 200, description = "Every channel", body = ChannelList)),
    security(("bearer" = ["controlplane:admin"])))]
pub async fn channels_list(State(state): State<ApiState>, caller: Caller) -> ApiResult<Json<ChannelList>> {
    admin(&caller)?;
    let channels: Vec<Value> = state.coordinator.channels().await?.iter().map(Channel::public_view).collect();
    Ok(Json(ChannelList { total: channels.len(), channels }))
}

/// `POST /notifications/channels {name, type, url, secret, filter: {events, task_types, priorities}, max_attempts,
/// backoff_ms, enabled}` → 201 with the channel and, for a webhook, its secret (shown once).
#[utoipa::path(post, path = "/notifications/channels", tag = "notifications", request_body = NewChannel,
    responses(
        (status = 201, description = "Created; it gets the events that happen from now on", body = ChannelCreated),
        (status = 400, description = "A bad field, or a URL whose host is a refused address (loopback, private, link-local, metadata)", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "100 channels exist already (`too_many_channels`)", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["controlplane:admin"])))]
pub async fn channels_create(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(new): ApiJson<NewChannel>,
) -> ApiResult<(StatusCode, Extension<AuditResource>, Json<ChannelCreated>)> {
    admin(&caller)?;
    let channel = state.coordinator.create_channel(new).await?;
    let resource = Extension(AuditResource(format!("channel:{}", channel.id)));
    Ok((StatusCode::CREATED, resource, Json(ChannelCreated { channel: channel.public_view(), secret: channel.secret })))
}

/// `DELETE /notifications/channels/{id}` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChannelDeleted {
    /// Always true.
    pub deleted: bool,
    /// The channel's id.
    pub channel_id: String,
}

/// `DELETE /notifications/channels/{id}`: no new deliveries; those already made end as dead letters.
#[utoipa::path(delete, path = "/notifications/channels/{channel_id}", tag = "notifications",
    params(("channel_id" = String, Path, description = "The channel's id (`chn_` + 32 hex digits)")),
    responses(
        (status = 200, description = "Deleted", body = ChannelDeleted),
        (status = 404, description = "No such channel (`channel_not_found`)", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["controlplane:admin"])))]
pub async fn channels_delete(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<ChannelDeleted>> {
    admin(&caller)?;
    state.coordinator.delete_channel(&id).await?;
    Ok(Json(ChannelDeleted { deleted: true, channel_id: id }))
}
