//! A store that stalls: with Redis asleep (`DEBUG SLEEP`), requests answer 503 `store_unavailable` with
//! `Retry-After` once `STORE_TIMEOUT` has passed, instead of waiting out the stall; `/readyz` answers at once from
//! its background check and says the store is not fit; and everything works again once Redis wakes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aragora_cp::config::Config;
use aragora_cp::store::{RedisStore, Store};
use aragora_cp_tests::redis_server::RedisServer;
use aragora_cp_tests::server::TestServer;
use serde_json::{Value, json};

/// How long Redis sleeps: far longer than the store timeout below.
const STALL_SECONDS: u64 = 4;

async fn readyz(server: &TestServer) -> (u16, Value) {
    let response = server
        .client
        .get(format!("{}/readyz", server.base))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .expect("readyz answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn until_ready(server: &TestServer) {
    let started = Instant::now();
    while readyz(server).await.0 != 200 {
        assert!(started.elapsed() < Duration::from_secs(15), "never ready: {:?}", readyz(server).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_answers_503_with_retry_after_and_readyz_says_so_at_once() {
    let redis = RedisServer::start_with(&["--enable-debug-command", "yes"]);
    let config = Config { store_timeout: Duration::from_millis(500), ..Config::default() };
    let store: Arc<dyn Store> =
        Arc::new(RedisStore::connect(&redis.url(), "slow-store:", config.store_config()).await.expect("redis"));
    let server = TestServer::start_with_store(config, store).await;
    let admin = server.admin();
    until_ready(&server).await;

    let url = redis.url();
    let stall = tokio::task::spawn_blocking(move || {
        let client = redis::Client::open(url).unwrap();
        let mut connection = client.get_connection().unwrap();
        redis::cmd("DEBUG").arg("SLEEP").arg(STALL_SECONDS).query::<()>(&mut connection).expect("DEBUG SLEEP");
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    let response =
        server.client.post(server.api("/tasks")).bearer_auth(&admin).json(&json!({"task_type": "x"})).send().await;
    let response = response.unwrap();
    let status = response.status().as_u16();
    let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    let body: Value = response.json().await.unwrap();
    assert!(!stall.is_finished(), "the submit must be answered while Redis still sleeps");
    assert_eq!((status, body["code"].as_str()), (503, Some("store_unavailable")), "{body}");
    assert_eq!(retry_after.as_deref(), Some("1"), "a 503 says when to try again");

    let mut not_ready = None;
    while !stall.is_finished() {
        let (status, body) = readyz(&server).await;
        if status == 503 {
            not_ready = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let body = not_ready.expect("/readyz said 503 while Redis slept");
    assert_ne!(body["checks"]["store"], "ok", "{body}");

    stall.await.unwrap();
    until_ready(&server).await;
    let (status, body) = {
        let response = server
            .client
            .post(server.api("/tasks"))
            .bearer_auth(&admin)
            .json(&json!({"task_type": "x"}))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json::<Value>().await.unwrap())
    };
    assert_eq!(status, 201, "submits work again once Redis answers: {body}");
    server.stop().await;
}
