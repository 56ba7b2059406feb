//! One attempt at one delivery: the message rendered in the channel's format (a signed JSON event for a webhook,
//! Slack's `{"text", "blocks"}`, a Teams message with an Adaptive Card) and POSTed to the channel's URL. The
//! target is checked like a health URL: every address the host resolves to is checked before any connection
//! (loopback, link-local and private ranges refused unless `NOTIFICATION_ALLOW_PRIVATE=1`; cloud metadata
//! addresses always), no proxy is used and no redirect followed.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::health::http_check;
use crate::model::{Channel, ChannelKind, Delivery, DeliveryMessage};

/// Longest an attempt may take, connection included.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Characters of a refusing receiver's answer kept in the delivery's error.
const ERROR_BODY_CHARS: usize = 200;

/// Bytes of a refusing receiver's answer read at most.
const ERROR_BODY_READ: usize = 1024;

/// Longest the address check of a new channel waits for DNS.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// Why an address may not receive notifications, if it may not.
pub fn refused_target(ip: IpAddr, allow_private: bool) -> Option<&'static str> {
    if is_credentials_endpoint(ip) {
        return Some("a cloud credentials address");
    }
    if !allow_private && is_internal(ip) {
        return Some("a loopback, link-local or private address (allow them with NOTIFICATION_ALLOW_PRIVATE=1)");
    }
    match http_check::refused(ip, true) {
        // Allowed private targets include link-local ones; the metadata addresses stay refused.
        Some("link-local") if allow_private => None,
        other => other,
    }
}

/// The container credential endpoints beside the metadata address (ECS 169.254.170.2, EKS pod identity
/// 169.254.170.23 and fd00:ec2::23): refused even where private targets are allowed.
fn is_credentials_endpoint(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => matches!(v4.octets(), [169, 254, 170, _]),
        IpAddr::V6(v6) => v6 == std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23),
    }
}

/// Loopback, link-local, private (RFC 1918, RFC 6598 shared, IPv6 unique-local).
fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback() || v4.is_private() || v4.is_link_local() || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || v6.to_ipv4_mapped().is_some_and(|v4| is_internal(IpAddr::V4(v4)))
        }
    }
}

/// Checks a channel URL's host when it is an address, or what it resolves to now. A host that does not resolve
/// is not refused (DNS may be down for a moment, or the server may run without it): its deliveries fail and retry.
pub async fn check_url(url: &str, allow_private: bool) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    let host = parsed.host_str().ok_or("the URL has no host")?.trim_start_matches('[').trim_end_matches(']');
    let port = parsed.port_or_known_default().unwrap_or(443);
    let addresses: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => match tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((host, port))).await {
            Ok(Ok(found)) => found.map(|a| a.ip()).collect(),
            Ok(Err(_)) | Err(_) => return Ok(()),
        },
    };
    for ip in addresses {
        if let Some(why) = refused_target(ip, allow_private) {
            return Err(format!("{host} is {ip}, {why}"));
        }
    }
    Ok(())
}

/// The resolver the HTTP client uses: every address checked before the client may connect to any.
struct CheckedResolver {
    allow_private: bool,
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            for address in &addresses {
                if let Some(why) = refused_target(address.ip(), allow_private) {
                    return Err(format!("{host} resolves to {}, {why}", address.ip()).into());
                }
            }
            Ok(Box::new(addresses.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The HTTP side of the notification worker.
pub struct Sender {
    http: reqwest::Client,
    allow_private: bool,
}

/// An attempt that failed: why, and the receiver's status when it answered.
pub struct SendError {
    /// What went wrong.
    pub error: String,
    /// The HTTP status, when there was one.
    pub status: Option<u16>,
}

impl Sender {
    /// A sender; `allow_private` lets it reach loopback, link-local and private addresses.
    pub fn new(allow_private: bool) -> anyhow::Result<Sender> {
        let http = reqwest::Client::builder()
            .dns_resolver(Arc::new(CheckedResolver { allow_private }))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(SEND_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("aragora-cp-notifications/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Sender { http, allow_private })
    }

    /// POSTs `delivery` to `channel`; the receiver's status when it answered 2xx.
    pub async fn send(&self, channel: &Channel, delivery: &Delivery) -> Result<u16, SendError> {
        let failed = |error: String| SendError { error, status: None };
        let message: DeliveryMessage =
            serde_json::from_str(&delivery.message).map_err(|e| failed(format!("unreadable message: {e}")))?;
        // A literal address never reaches the resolver: check it here.
        let url = url::Url::parse(&channel.url).map_err(|e| failed(format!("invalid URL: {e}")))?;
        if let Some(url::Host::Ipv4(_) | url::Host::Ipv6(_)) = url.host() {
            let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
            if let Some(why) = host.parse().ok().and_then(|ip| refused_target(ip, self.allow_private)) {
                return Err(failed(format!("refused address {host}: {why}")));
            }
        }
        let body = serde_json::to_vec(&render(channel, delivery, &message)).expect("a message serializes");
        let mut request = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("x-aragora-event-id", &message.event.id)
            .header("x-aragora-event", message.event.kind.as_str())
            .header("x-aragora-delivery", &delivery.id)
            .header("x-aragora-attempt", delivery.attempts.to_string());
        if let Some(secret) = &channel.secret {
            request = request.header("x-aragora-signature", format!("sha256={}", signature(secret, &body)));
        }
        let mut response = request.body(body).send().await.map_err(|e| failed(describe(e)))?;
        let status = response.status().as_u16();
        if response.status().is_success() {
            return Ok(status);
        }
        let mut read = Vec::new();
        while read.len() < ERROR_BODY_READ
            && let Ok(Some(chunk)) = response.chunk().await
        {
            read.extend_from_slice(&chunk);
        }
        let text = String::from_utf8_lossy(&read[..read.len().min(ERROR_BODY_READ)]);
        let cut = text.char_indices().nth(ERROR_BODY_CHARS).map(|(at, _)| at).unwrap_or(text.len());
        let detail = text[..cut].trim();
        let error = if detail.is_empty() { format!("HTTP {status}") } else { format!("HTTP {status}: {detail}") };
        Err(SendError { error, status: Some(status) })
    }
}

/// The error and its causes on one line (reqwest's own message hides the resolver's refusal), without the URL: a
/// Slack or Teams URL is a credential, and errors are shown in `GET /notifications`.
fn describe(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = if error.is_timeout() { format!("timed out after {SEND_TIMEOUT:?}") } else { error.to_string() };
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `hex(HMAC-SHA256(secret, body))`, the value after `sha256=` in `X-Aragora-Signature`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The body for the channel's format.
pub fn render(channel: &Channel, delivery: &Delivery, message: &DeliveryMessage) -> Value {
    let event = &message.event;
    match channel.kind {
        ChannelKind::Webhook => json!({
            "id": event.id,
            "type": event.kind,
            "time": event.time,
            "server_id": event.server_id,
            "task_id": event.task_id,
            "agent_id": event.agent_id,
            "data": event.data,
            "task": message.task,
            "channel_id": channel.id,
            "delivery_id": delivery.id,
            "attempt": delivery.attempts,
        }),
        ChannelKind::Slack => {
            let facts: Vec<String> =
                facts(message).into_iter().map(|(name, value)| format!("*{name}:* {value}")).collect();
            json!({
                "text": title(message),
                "blocks": [
                    {"type": "section", "text": {"type": "mrkdwn", "text": format!("*{}*", title(message))}},
                    {"type": "section", "text": {"type": "mrkdwn", "text": facts.join("\n")}},
                    {"type": "context", "elements": [{"type": "mrkdwn", "text": format!("event {} · {}", event.id, event.time)}]},
                ],
            })
        }
        ChannelKind::Teams => {
            let facts: Vec<Value> =
                facts(message).into_iter().map(|(name, value)| json!({"title": name, "value": value})).collect();
            json!({
                "type": "message",
                "summary": title(message),
                "attachments": [{
                    "contentType": "application/vnd.microsoft.card.adaptive",
                    "content": {
                        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                        "type": "AdaptiveCard",
                        "version": "1.4",
                        "body": [
                            {"type": "TextBlock", "text": title(message), "weight": "Bolder", "size": "Medium", "wrap": true},
                            {"type": "FactSet", "facts": facts},
                            {"type": "TextBlock", "text": format!("event {} · {}", event.id, event.time), "isSubtle": true, "size": "Small", "wrap": true},
                        ],
                    },
                }],
            })
        }
    }
}

/// One line for people: what happened to what.
fn title(message: &DeliveryMessage) -> String {
    let event = &message.event;
    let what = event.kind.as_str().replace('_', " ");
    match (&event.task_id, &event.agent_id) {
        (Some(task), _) => match &message.task {
            Some(facts) => format!("{what}: task {task} ({}, {})", facts.task_type, facts.priority.as_str()),
            None => format!("{what}: task {task}"),
        },
        (None, Some(agent)) => format!("{what}: agent {agent}"),
        (None, None) => what,
    }
}

/// The event's facts as name/value pairs.
fn facts(message: &DeliveryMessage) -> Vec<(String, String)> {
    let event = &message.event;
    let mut facts = Vec::new();
    if let Some(agent) = &event.agent_id {
        facts.push(("agent".to_string(), agent.clone()));
    }
    if let Value::Object(data) = &event.data {
        for (name, value) in data {
            let value = match value {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            facts.push((name.clone(), value));
        }
    }
    facts.push(("server".to_string(), event.server_id.clone()));
    facts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_targets_are_refused_unless_allowed_and_metadata_always() {
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.1.1",
            "::1",
            "fd00::1",
            "fe80::1",
        ] {
            let ip: IpAddr = internal.parse().unwrap();
            assert!(refused_target(ip, false).is_some(), "{internal}");
            assert!(refused_target(ip, true).is_none(), "{internal} allowed");
        }
        for never in [
            "169.254.169.254",
            "169.254.170.2",
            "169.254.170.23",
            "fd00:ec2::23",
            "0.0.0.0",
            "::ffff:10.0.0.1",
            "224.0.0.1",
        ] {
            assert!(refused_target(never.parse().unwrap(), true).is_some(), "{never}");
        }
        assert!(refused_target("93.184.216.34".parse().unwrap(), false).is_none());
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
