//! Notification channels on real servers, delivering to a real local HTTP receiver: signed webhooks, Slack and
//! Teams formats, filters by event type, task type and priority; retries after 500s with growing delays, a dead
//! letter after the channel's attempts and a manual retry that delivers; private targets refused; and three
//! servers on one Redis delivering every event exactly once.

use std::collections::HashSet;
use std::time::Duration;

use aragora_cp::api::Permission;
use aragora_cp::config::Config;
use aragora_cp_tests::receiver::{Received, Receiver};
use aragora_cp_tests::redis_server::unique_prefix;
use aragora_cp_tests::server::TestServer;
use futures_util::StreamExt;
use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Sha256;

/// A configuration whose channels may target the receiver on loopback (`NOTIFICATION_ALLOW_PRIVATE=1`).
fn allowing_loopback() -> Config {
    let mut config = Config::default();
    config.notifications.allow_private = true;
    config
}

async fn create_channel(server: &TestServer, channel: Value) -> Value {
    let (status, created) = server.call(&server.admin(), Method::POST, "/notifications/channels", Some(channel)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created
}

/// Runs one task of `task_type` at `priority` through agent `worker`: submit, claim, complete.
async fn run_task(server: &TestServer, task_type: &str, priority: &str) -> String {
    let admin = server.admin();
    let task = json!({"task_type": task_type, "priority": priority, "required_capabilities": ["work"]});
    let (_, submitted) = server.call(&admin, Method::POST, "/tasks", Some(task)).await;
    let task_id = submitted["task_id"].as_str().expect("submitted").to_string();
    let (_, claimed) =
        server.call(&admin, Method::POST, "/tasks/claim", Some(json!({"agent_id": "worker", "block_ms": 0}))).await;
    assert_eq!(claimed["task"]["task_id"], task_id.as_str(), "{claimed}");
    let done = json!({"lease_id": claimed["task"]["lease_id"], "result": {"ok": true}});
    let (status, _) = server.call(&admin, Method::POST, &format!("/tasks/{task_id}/complete"), Some(done)).await;
    assert_eq!(status, StatusCode::OK);
    task_id
}

fn signed_by(received: &Received, secret: &str) -> bool {
    let header = received.header("x-aragora-signature").expect("signed");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(&received.body);
    header == format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[tokio::test]
async fn channels_get_the_events_their_filters_want_signed_or_in_slack_and_teams_formats() {
    let receiver = Receiver::start().await;
    let server = TestServer::start_with(allowing_loopback()).await;
    let secret = "receiver-secret-0123456789";
    let webhook = create_channel(
        &server,
        json!({"name": "alpha done", "type": "webhook", "url": receiver.url("/webhook"), "secret": secret,
               "filter": {"events": ["task_completed"], "task_types": ["alpha"]}}),
    )
    .await;
    assert_eq!(webhook["secret"], secret, "the secret is shown once, at creation");
    assert_eq!(webhook["channel"]["signed"], true);
    create_channel(
        &server,
        json!({"name": "ops", "type": "slack", "url": receiver.url("/slack/T000/B000/XXXX"),
               "filter": {"events": ["task_submitted"], "task_types": ["alpha"]}}),
    )
    .await;
    create_channel(
        &server,
        json!({"name": "urgent", "type": "teams", "url": receiver.url("/teams"),
               "filter": {"events": ["task_submitted", "task_completed"], "priorities": ["high"]}}),
    )
    .await;
    let admin = server.admin();
    let (_, listed) = server.call(&admin, Method::GET, "/notifications/channels", None).await;
    assert_eq!(listed["total"], 3);
    let shown = listed.to_string();
    assert!(!shown.contains(secret) && !shown.contains("XXXX"), "no secret and no Slack path in a listing: {shown}");

    server.call(&admin, Method::POST, "/agents", Some(json!({"agent_id": "worker", "capabilities": ["work"]}))).await;
    let alpha = run_task(&server, "alpha", "high").await;
    let beta = run_task(&server, "beta", "normal").await;
    let _alpha_low = run_task(&server, "alpha", "low").await;

    // The webhook: the two alpha completions, signed, with the event id to de-duplicate on. (Deliveries are sent
    // concurrently: find each by its task.)
    let hooks = receiver.wait_for("/webhook", 2, Duration::from_secs(10)).await;
    assert_eq!(hooks.len(), 2);
    let about = |received: &[Received], task: &str| -> Received {
        received.iter().find(|r| String::from_utf8_lossy(&r.body).contains(task)).expect("a message about it").clone()
    };
    let hook = about(&hooks, &alpha);
    let first = hook.json();
    assert!(signed_by(&hook, secret), "X-Aragora-Signature is HMAC-SHA256 of the body with the secret");
    assert!(!signed_by(&hook, "another-secret-0123456789"));
    assert_eq!(hook.header("x-aragora-event-id"), first["id"].as_str());
    assert_eq!((first["type"].as_str(), first["task_id"].as_str()), (Some("task_completed"), Some(alpha.as_str())));
    assert_eq!(first["task"], json!({"task_type": "alpha", "priority": "high"}));
    // Slack: the submits of the two alpha tasks, as a message with text and blocks.
    let slack = receiver.wait_for("/slack/T000/B000/XXXX", 2, Duration::from_secs(10)).await;
    assert_eq!(slack.len(), 2);
    let message = about(&slack, &alpha).json();
    assert!(
        message["text"].as_str().unwrap().contains(&format!("task submitted: task {alpha} (alpha, high)")),
        "{message}"
    );
    assert!(message["blocks"].as_array().is_some_and(|blocks| !blocks.is_empty()));
    assert!(slack[0].header("x-aragora-signature").is_none(), "Slack URLs are their own secret");
    // Teams: only the high-priority task's submit and completion, as an Adaptive Card.
    let teams = receiver.wait_for("/teams", 2, Duration::from_secs(10)).await;
    let card = teams[0].json();
    assert_eq!(card["attachments"][0]["contentType"], "application/vnd.microsoft.card.adaptive");
    assert_eq!(card["attachments"][0]["content"]["type"], "AdaptiveCard");
    for received in &teams {
        assert_eq!(received.json()["summary"].as_str().map(|s| s.contains(&alpha)), Some(true));
    }
    // Nothing else comes: beta's events and the low-priority task's match no channel beyond those.
    let stats = wait_for_json(&server, "/notifications/stats", |s| s["successful"] == 6).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!((receiver.received("/webhook").len(), receiver.received("/teams").len()), (2, 2));
    assert_eq!(receiver.received("/slack/T000/B000/XXXX").len(), 2);
    assert!(receiver.received("/webhook").iter().all(|r| r.json()["task_id"] != beta.as_str()));

    let (_, sent) = server.call(&admin, Method::GET, "/notifications?status=sent", None).await;
    assert_eq!(sent["total"], 6, "{sent}");
    assert!(sent["notifications"].as_array().unwrap().iter().all(|n| n["success"] == true && n["attempts"] == 1));
    assert_eq!((stats["successful"].as_u64(), stats["failed"].as_u64()), (Some(6), Some(0)), "{stats}");
    assert_eq!(stats["by_channel"], json!({"slack": 2, "teams": 2, "webhook": 2}));
    assert_eq!(stats["channels_configured"], 3);
    server.stop().await;
}

#[tokio::test]
async fn failed_attempts_are_retried_with_growing_delays_then_dead_lettered_and_retried_by_hand() {
    let receiver = Receiver::start().await;
    let server = TestServer::start_with(allowing_loopback()).await;
    let admin = server.admin();
    // Three 500s, then the fourth attempt is accepted.
    receiver.answer_next("/flaky", &[500, 500, 500]);
    create_channel(
        &server,
        json!({"name": "flaky", "type": "webhook", "url": receiver.url("/flaky"), "max_attempts": 5,
               "backoff_ms": 400, "filter": {"events": ["agent_registered"]}}),
    )
    .await;
    server.call(&admin, Method::POST, "/agents", Some(json!({"agent_id": "a1", "capabilities": ["x"]}))).await;
    let attempts = receiver.wait_for("/flaky", 4, Duration::from_secs(20)).await;
    assert_eq!(attempts.len(), 4);
    assert_eq!(attempts.iter().map(|a| a.answered).collect::<Vec<_>>(), [500, 500, 500, 200]);
    let ids: HashSet<_> = attempts.iter().map(|a| a.header("x-aragora-event-id").unwrap().to_string()).collect();
    assert_eq!(ids.len(), 1, "every attempt carries the same event id");
    let numbers: Vec<_> = attempts.iter().map(|a| a.header("x-aragora-attempt").unwrap().to_string()).collect();
    assert_eq!(numbers, ["1", "2", "3", "4"]);
    // Delays double from 400 ms, less up to half of jitter: at least 200, 400, 800 ms.
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1].at - w[0].at).collect();
    for (n, gap) in gaps.iter().enumerate() {
        assert!(*gap >= Duration::from_millis(200 << n), "gap {n} = {gap:?}: {gaps:?}");
    }

    // A receiver that keeps failing: after max_attempts the delivery is a dead letter with the last error.
    receiver.answer_always("/down", 503);
    let down = create_channel(
        &server,
        json!({"name": "down", "type": "webhook", "url": receiver.url("/down"), "max_attempts": 2,
               "backoff_ms": 50, "filter": {"events": ["agent_registered"]}}),
    )
    .await;
    server.call(&admin, Method::POST, "/agents", Some(json!({"agent_id": "a2", "capabilities": ["x"]}))).await;
    let dead = wait_for_json(&server, "/notifications/dead-letters", |page| page["total"] == 1).await;
    let letter = &dead["notifications"][0];
    assert_eq!(letter["channel_id"], down["channel"]["id"]);
    assert_eq!((letter["status"].as_str(), letter["attempts"].as_u64()), (Some("dead"), Some(2)), "{letter}");
    assert!(letter["last_error"].as_str().unwrap().starts_with("HTTP 503"), "{letter}");
    assert_eq!(letter["last_status"], 503);
    assert_eq!(receiver.received("/down").len(), 2);
    // Fixed: a manual retry delivers it.
    receiver.answer_always("/down", 200);
    let path = format!("/notifications/dead-letters/{}/retry", letter["id"].as_str().unwrap());
    let (status, retried) = server.call(&admin, Method::POST, &path, None).await;
    assert_eq!(status, StatusCode::OK, "{retried}");
    assert_eq!((retried["status"].as_str(), retried["attempts"].as_u64()), (Some("pending"), Some(2)));
    let delivered = receiver.wait_for("/down", 3, Duration::from_secs(10)).await;
    assert_eq!(delivered.last().map(|r| r.answered), Some(200));
    assert_eq!(delivered.last().and_then(|r| r.header("x-aragora-attempt")), Some("3"), "attempt numbers go on");
    let (status, again) = server.call(&admin, Method::POST, &path, None).await;
    assert_eq!(status, StatusCode::CONFLICT, "no longer a dead letter: {again}");
    assert_eq!(again["code"], "not_a_dead_letter");
    let (status, _) = server.call(&admin, Method::POST, "/notifications/dead-letters/1-0:chn_x/retry", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Sent: a1 and a2 on the flaky channel, the retried dead letter on the down one.
    let stats = wait_for_json(&server, "/notifications/stats", |s| s["successful"] == 3).await;
    let down_id = down["channel"]["id"].as_str().unwrap();
    assert_eq!(stats["channels"][down_id], json!({"sent": 1, "failed": 2, "dead": 1, "dropped": 0, "enqueued": 1}));
    assert_eq!(stats["failed"], 5, "three on the flaky channel, two on the down one");
    server.stop().await;
}

/// Polls `path` with an admin token until `done` holds (10 s at most) and returns the last answer.
async fn wait_for_json(server: &TestServer, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = std::time::Instant::now();
    loop {
        let (status, answer) = server.call(&server.admin(), Method::GET, path, None).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        if done(&answer) || started.elapsed() > Duration::from_secs(10) {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn channels_to_private_addresses_are_refused_and_bad_channels_get_clear_errors() {
    let server = TestServer::start().await;
    let admin = server.admin();
    for (url, why) in [
        ("http://127.0.0.1:9/hook", "loopback"),
        ("http://10.1.2.3/hook", "private"),
        ("http://[::1]:9/hook", "loopback"),
        ("http://169.254.169.254/latest", "link-local"),
    ] {
        let channel = json!({"name": "x", "type": "webhook", "url": url});
        let (status, problem) = server.call(&admin, Method::POST, "/notifications/channels", Some(channel)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {problem}");
        assert_eq!(problem["field"], "url", "{problem}");
        assert!(problem["detail"].as_str().unwrap().contains(why), "{url}: {problem}");
    }
    // The metadata address stays refused when private targets are allowed.
    let allowing = TestServer::start_with(allowing_loopback()).await;
    let metadata = json!({"name": "x", "type": "webhook", "url": "http://169.254.169.254/latest"});
    let (status, problem) =
        allowing.call(&allowing.admin(), Method::POST, "/notifications/channels", Some(metadata)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(problem["detail"].as_str().unwrap().contains("metadata"), "{problem}");
    allowing.stop().await;

    for (body, field) in [
        (json!({"name": "x", "type": "pager", "url": "https://example.com"}), None),
        (json!({"name": "x", "type": "webhook", "url": "ftp://example.com/x"}), Some("url")),
        (json!({"name": "x", "type": "webhook", "url": "https://example.com", "secret": "short"}), Some("secret")),
        (
            json!({"name": "x", "type": "slack", "url": "https://example.com", "secret": "0123456789abcdef"}),
            Some("secret"),
        ),
        (
            json!({"name": "x", "type": "webhook", "url": "https://example.com", "max_attempts": 0}),
            Some("max_attempts"),
        ),
        (
            json!({"name": "x", "type": "webhook", "url": "https://example.com", "filter": {"events": ["nope"]}}),
            Some("filter.events[0]"),
        ),
    ] {
        let (status, problem) = server.call(&admin, Method::POST, "/notifications/channels", Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {problem}");
        if let Some(field) = field {
            assert_eq!(problem["field"], field, "{problem}");
        }
    }
    let (_, listed) = server.call(&admin, Method::GET, "/notifications/channels", None).await;
    assert_eq!(listed["total"], 0);
    let (status, _) = server.call(&admin, Method::DELETE, "/notifications/channels/chn_missing", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server.call(&admin, Method::GET, "/notifications?status=lost", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let reader = server.token("viewer", &[Permission::Read]);
    for (method, path) in [(Method::GET, "/notifications/channels"), (Method::GET, "/notifications")] {
        let (status, _) = server.call(&reader, method, path, None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_servers_on_one_redis_deliver_every_event_once() {
    let receiver = Receiver::start().await;
    let prefix = unique_prefix("notify");
    let mut servers = Vec::new();
    for n in 0..3 {
        let mut config = allowing_loopback();
        config.server_id = format!("server-{n}");
        // The third server serves the API but sends nothing (ARAGORA_NOTIFICATION_WORKER=0).
        config.notifications.worker = n < 2;
        servers.push(TestServer::start_on_redis(config, &prefix).await);
    }
    create_channel(
        &servers[2],
        json!({"name": "every submit", "type": "webhook", "url": receiver.url("/all"),
               "filter": {"events": ["task_submitted"]}}),
    )
    .await;
    let submits = (0..300).map(|n| {
        let server = &servers[n % 3];
        async move {
            let task = json!({"task_type": "t", "required_capabilities": ["work"]});
            let (status, answer) = server.call(&server.admin(), Method::POST, "/tasks", Some(task)).await;
            assert_eq!(status, StatusCode::CREATED, "{answer}");
            answer["task_id"].as_str().unwrap().to_string()
        }
    });
    // Sixteen at a time, like concurrent submitters.
    let submitted: HashSet<String> = futures_util::stream::iter(submits).buffer_unordered(16).collect().await;
    let got = receiver.wait_for("/all", 300, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 300);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let got = receiver.received("/all");
    let event_ids: HashSet<_> = got.iter().map(|r| r.header("x-aragora-event-id").unwrap().to_string()).collect();
    assert_eq!((got.len(), event_ids.len()), (300, 300), "each event delivered once across the fleet");
    let tasks: HashSet<String> = got.iter().map(|r| r.json()["task_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(tasks, submitted);
    let senders: HashSet<_> = got.iter().map(|r| r.json()["server_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(senders.len(), 3, "events of all three servers: {senders:?}");
    let stats = wait_for_json(&servers[2], "/notifications/stats", |s| s["successful"] == 300).await;
    assert_eq!((stats["successful"].as_u64(), stats["failed"].as_u64()), (Some(300), Some(0)));
    for server in servers {
        server.stop().await;
    }
}
