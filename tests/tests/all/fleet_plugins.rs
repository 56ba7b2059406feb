//! Fleet-wide plugins over HTTP: `PUT /plugins/{name}` validates and records an upload, `DELETE` removes it,
//! enable/disable switch a name off and on, every change is in the name's history with who and sha256; a rejected
//! upload leaves the last good version serving. On Redis, an upload through one of three servers becomes active on
//! all three (the test prints how long it took; docs/BENCHMARKS.md records the figure).

use std::sync::Arc;
use std::time::{Duration, Instant};

use aragora_cp::api::Permission;
use aragora_cp::config::Config;
use aragora_cp::model::sha256_hex;
use aragora_cp::store::{RedisStore, Store};
use aragora_cp_tests::guest_bytes;
use aragora_cp_tests::redis_server::{shared_server, unique_prefix};
use aragora_cp_tests::server::TestServer;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn put_wasm(server: &TestServer, name: &str, token: &str, bytes: Vec<u8>) -> (StatusCode, Value) {
    let response = server
        .client
        .put(server.api(&format!("/plugins/{name}")))
        .bearer_auth(token)
        .header("content-type", "application/wasm")
        .body(bytes)
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap_or(Value::Null))
}

async fn send(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = server.client.request(method, server.api(path)).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    (response.status(), response.json().await.unwrap_or(Value::Null))
}

async fn select(server: &TestServer, token: &str, strategy: &str) -> (StatusCode, Value) {
    let body = json!({"capabilities": [], "strategy": strategy, "dry_run": true});
    send(server, reqwest::Method::POST, "/agents/select", token, Some(body)).await
}

#[tokio::test]
async fn uploads_delete_and_enable_disable_are_recorded_with_who_and_sha() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let operator = server.token("ops-team", &[Permission::Plugins]);
    let agent = json!({"agent_id": "a-1", "capabilities": [], "model": "m", "provider": "p"});
    assert_eq!(send(&server, reqwest::Method::POST, "/agents", &admin, Some(agent)).await.0, StatusCode::CREATED);

    let component = guest_bytes("round_robin");
    let sha = sha256_hex(&component);
    let (status, info) = put_wasm(&server, "rotating", &operator, component.clone()).await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!((info["status"].as_str(), info["active"]["source"].as_str()), (Some("active"), Some("upload")));
    assert_eq!(info["active"]["sha256"], sha.as_str());
    assert_eq!(info["fleet"]["version"], 1);
    assert_eq!(info["active_version"], 1);
    let first = &info["fleet"]["history"][0];
    assert_eq!(
        (first["action"].as_str(), first["by"].as_str(), first["sha256"].as_str()),
        (Some("uploaded"), Some("ops-team"), Some(sha.as_str()))
    );
    let (status, chosen) = select(&server, &admin, "rotating").await;
    assert_eq!((status, chosen["agent_id"].as_str()), (StatusCode::OK, Some("a-1")), "{chosen}");

    // A rejected upload changes nothing: same sha active, no new fleet version.
    let (status, refused) = put_wasm(&server, "rotating", &operator, b"\0asm not really".to_vec()).await;
    assert_eq!((status, refused["code"].as_str()), (StatusCode::BAD_REQUEST, Some("plugin_rejected")), "{refused}");
    let (_, info) = send(&server, reqwest::Method::GET, "/plugins/rotating", &admin, None).await;
    assert_eq!((info["active"]["sha256"].as_str(), info["fleet"]["version"].as_u64()), (Some(sha.as_str()), Some(1)));
    assert!(info["last_rejection"]["error"].is_string(), "{info}");
    // A manifest that contradicts the component is a rejection too, and a manifest that does not parse is a 400.
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(&component);
    let wrong_kind = json!({"component": encoded, "manifest": "kind = \"policy\""});
    let (status, refused) = send(&server, reqwest::Method::PUT, "/plugins/rotating", &operator, Some(wrong_kind)).await;
    assert_eq!((status, refused["code"].as_str()), (StatusCode::BAD_REQUEST, Some("plugin_rejected")), "{refused}");
    let bad_manifest = json!({"component": encoded, "manifest": "kind = "});
    let (status, refused) =
        send(&server, reqwest::Method::PUT, "/plugins/rotating", &operator, Some(bad_manifest)).await;
    assert_eq!((status, refused["field"].as_str()), (StatusCode::BAD_REQUEST, Some("manifest")), "{refused}");

    // Disable: the strategy is unknown everywhere; enable brings it back.
    let (status, info) = send(&server, reqwest::Method::POST, "/plugins/rotating/disable", &operator, None).await;
    assert_eq!((status, info["status"].as_str()), (StatusCode::OK, Some("disabled")), "{info}");
    assert_eq!(select(&server, &admin, "rotating").await.1["code"], "unknown_strategy");
    let (status, _) = send(&server, reqwest::Method::POST, "/plugins/rotating/enable", &operator, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(select(&server, &admin, "rotating").await.0, StatusCode::OK);
    // The default strategy cannot be disabled; a built-in can.
    let (status, body) = send(&server, reqwest::Method::POST, "/plugins/least_loaded/disable", &operator, None).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::CONFLICT, Some("plugin_change_refused")), "{body}");
    let (status, body) = send(&server, reqwest::Method::POST, "/plugins/random/disable", &operator, None).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("disabled")), "{body}");

    // Delete: the name had only the upload, so nothing of it remains here but the fleet's history.
    let (status, info) = send(&server, reqwest::Method::DELETE, "/plugins/rotating", &operator, None).await;
    assert_eq!((status, info["status"].as_str()), (StatusCode::OK, Some("absent")), "{info}");
    let actions: Vec<&str> =
        info["fleet"]["history"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["deleted", "enabled", "disabled", "uploaded"]);
    assert_eq!(select(&server, &admin, "rotating").await.1["code"], "unknown_strategy");
    let (status, body) = send(&server, reqwest::Method::DELETE, "/plugins/rotating", &operator, None).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::NOT_FOUND, Some("plugin_not_found")), "{body}");

    // Who may: plugins permission, never an agent token; the body must be a component or JSON.
    let reader = server.token("reader", &[Permission::Read]);
    assert_eq!(put_wasm(&server, "x", &reader, component.clone()).await.0, StatusCode::FORBIDDEN);
    let agent_token = server.token("agent:a-1", &[Permission::Admin]);
    assert_eq!(put_wasm(&server, "x", &agent_token, component.clone()).await.0, StatusCode::FORBIDDEN);
    let response = server
        .client
        .put(server.api("/plugins/x"))
        .bearer_auth(&operator)
        .header("content-type", "text/plain")
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(put_wasm(&server, "bad%20name", &operator, component).await.0, StatusCode::BAD_REQUEST);
    server.stop().await;
}

#[tokio::test]
async fn uploads_are_refused_with_405_when_the_policy_source_is_inprocess() {
    let server = TestServer::start_with(Config { uploads_enabled: false, ..Config::default() }).await;
    let (status, body) = put_wasm(&server, "rotating", &server.admin(), guest_bytes("round_robin")).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::METHOD_NOT_ALLOWED, Some("uploads_disabled")), "{body}");
    // A refused upload is a refused call, so it is audited (unlike a method the route does not take).
    let started = std::time::Instant::now();
    let page = loop {
        let (_, page) = server.call(&server.admin(), reqwest::Method::GET, "/audit", None).await;
        if page["total"] == 1 || started.elapsed() > std::time::Duration::from_secs(5) {
            break page;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(page["entries"][0]["details"]["code"], "uploads_disabled", "{page}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_through_one_server_is_active_on_all_three_within_a_second() {
    let redis = shared_server();
    let prefix = unique_prefix("fleet-plugins");
    let mut servers = Vec::new();
    for _ in 0..3 {
        let config = Config::default();
        let store: Arc<dyn Store> =
            Arc::new(RedisStore::connect(&redis.url(), &prefix, config.store_config()).await.expect("redis"));
        servers.push(TestServer::start_with_store(config, store).await);
    }
    let admin = servers[0].admin();
    let component = guest_bytes("random");
    let sha = sha256_hex(&component);
    let started = Instant::now();
    let (status, info) = put_wasm(&servers[0], "fleet_random", &admin, component).await;
    assert_eq!(status, StatusCode::OK, "{info}");
    let mut latest = Duration::ZERO;
    for server in &servers {
        let active = loop {
            let (_, info) = send(server, reqwest::Method::GET, "/plugins/fleet_random", &admin, None).await;
            if info["active"]["sha256"] == sha.as_str() && info["active_version"] == 1 {
                break started.elapsed();
            }
            assert!(started.elapsed() < Duration::from_secs(10), "never became active: {info}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        latest = latest.max(active);
    }
    // The 1 s the fleet promises is a measured figure (docs/BENCHMARKS.md), not asserted: a loaded 2-core machine
    // running the whole suite can take longer to compile the component on three servers at once.
    println!("upload active on all three servers {latest:?} after the PUT was sent");

    // Disable through another server: every server stops answering with it.
    let (status, _) = send(&servers[2], reqwest::Method::POST, "/plugins/fleet_random/disable", &admin, None).await;
    assert_eq!(status, StatusCode::OK);
    for server in &servers {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, info) = send(server, reqwest::Method::GET, "/plugins/fleet_random", &admin, None).await;
            if info["status"] == "disabled" && info["active_version"] == 2 {
                break;
            }
            assert!(Instant::now() < deadline, "never disabled: {info}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // A server that starts later loads the fleet's state at start-up.
    let config = Config::default();
    let store: Arc<dyn Store> =
        Arc::new(RedisStore::connect(&redis.url(), &prefix, config.store_config()).await.unwrap());
    let late = TestServer::start_with_store(config, store).await;
    let (_, info) = send(&late, reqwest::Method::GET, "/plugins/fleet_random", &admin, None).await;
    assert_eq!(
        (info["status"].as_str(), info["active"]["sha256"].as_str()),
        (Some("disabled"), Some(sha.as_str())),
        "{info}"
    );
    late.stop().await;
    for server in servers {
        server.stop().await;
    }
}
