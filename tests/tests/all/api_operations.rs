//! The API's operational parts end to end: batch completion, readiness and draining, public-key tokens.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aragora_cp::api::Authenticator;
use aragora_cp::config::Config;
use aragora_cp_tests::server::TestServer;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn post(server: &TestServer, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
    let response = server.client.post(server.api(path)).bearer_auth(token).json(&body).send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn batch_completion_completes_what_it_holds_and_lists_each_conflict() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let agent = json!({"agent_id": "batcher", "capabilities": ["code"], "model": "m", "provider": "p"});
    assert_eq!(post(&server, "/agents", &admin, agent).await.0, StatusCode::CREATED);
    let tasks: Vec<Value> = (0..3).map(|n| json!({"task_type": "code", "payload": {"n": n}})).collect();
    let (status, submitted) = post(&server, "/tasks/batch", &admin, json!({"tasks": tasks})).await;
    assert_eq!(status, StatusCode::CREATED, "{submitted}");
    let (_, claimed) =
        post(&server, "/tasks/claim", &admin, json!({"agent_id": "batcher", "max_tasks": 3, "block_ms": 0})).await;
    let held = claimed["tasks"].as_array().unwrap().clone();
    assert_eq!(held.len(), 3, "{claimed}");
    // `task` is the head of `tasks` (the answer renders it once and writes it twice), each a whole claimed task.
    assert_eq!(claimed["task"], held[0], "{claimed}");
    let payloads: Vec<&Value> = held.iter().map(|t| &t["payload"]).collect();
    assert_eq!(payloads, [&json!({"n": 0}), &json!({"n": 1}), &json!({"n": 2})], "{claimed}");
    assert!(held.iter().all(|t| t["status"] == "claimed" && t["lease_id"].is_string()), "{claimed}");

    let mut results: Vec<Value> = held
        .iter()
        .map(|t| json!({"task_id": t["task_id"], "lease_id": t["lease_id"], "result": {"ok": t["task_id"]}}))
        .collect();
    results[2]["lease_id"] = json!("a-stale-lease");
    results.push(json!({"task_id": "no-such-task"}));
    let (status, answer) = post(&server, "/tasks/complete", &admin, json!({"results": results})).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let completed: Vec<&str> =
        answer["completed"].as_array().unwrap().iter().map(|t| t["task_id"].as_str().unwrap()).collect();
    assert_eq!(completed, [held[0]["task_id"].as_str().unwrap(), held[1]["task_id"].as_str().unwrap()]);
    let conflicts = answer["conflicts"].as_array().unwrap();
    assert_eq!(conflicts.len(), 2, "{answer}");
    assert_eq!(conflicts[0]["task_id"], held[2]["task_id"]);
    assert_eq!(conflicts[0]["status"], 409, "{answer}");
    assert_eq!((conflicts[1]["code"].as_str(), conflicts[1]["status"].as_u64()), (Some("task_not_found"), Some(404)));

    // The stale lease did not touch the third task; the first two are done with their results.
    let read = |id: &str| {
        let request = server.client.get(server.api(&format!("/tasks/{id}"))).bearer_auth(&admin);
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let task = read(held[2]["task_id"].as_str().unwrap()).await;
    assert_eq!(task["status"], "claimed", "{task}");
    let first = held[0]["task_id"].as_str().unwrap();
    let task = read(first).await;
    assert_eq!((task["status"].as_str(), &task["result"]), (Some("completed"), &json!({"ok": first})));

    for bad in [json!({"results": []}), json!({"results": [{"lease_id": "x"}]}), json!({})] {
        let (status, body) = post(&server, "/tasks/complete", &admin, bad.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    server.stop().await;
}

#[tokio::test]
async fn readiness_names_its_checks_and_fails_once_draining_which_ends_event_streams() {
    let server = TestServer::start().await;
    let ready: Value = server.client.get(server.url("/readyz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready, json!({"status": "ready", "checks": {"store": "ok", "plugins": "ok", "draining": false}}));

    let mut events = server.client.get(server.api("/events")).bearer_auth(server.admin()).send().await.unwrap();
    assert_eq!(events.status(), StatusCode::OK);
    server.begin_drain();
    let response = server.client.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.unwrap();
    assert_eq!((body["status"].as_str(), &body["checks"]["draining"]), (Some("not_ready"), &json!(true)));
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while events.chunk().await.expect("stream read").is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the event stream must end when draining begins");
    server.stop().await;
}

#[tokio::test]
async fn a_readiness_check_fails_when_the_default_strategy_is_not_loaded() {
    let config = Config { default_strategy: "not_loaded_anywhere".into(), ..Config::default() };
    let server = TestServer::start_with(config).await;
    let response = server.client.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.unwrap();
    assert!(body["checks"]["plugins"].as_str().unwrap().contains("not_loaded_anywhere"), "{body}");
    server.stop().await;
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/fixtures/jwt/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn claims() -> Value {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    json!({"sub": "ops", "exp": now + 600, "permissions": ["controlplane:read"]})
}

#[tokio::test]
async fn public_key_servers_accept_only_tokens_of_their_key_and_algorithm() {
    let cases = [
        ("ed25519", Algorithm::EdDSA, EncodingKey::from_ed_pem(&fixture("ed25519-private.pem")).unwrap()),
        ("rsa", Algorithm::RS256, EncodingKey::from_rsa_pem(&fixture("rsa-private.pem")).unwrap()),
    ];
    for (key, algorithm, signer) in cases {
        let public = fixture(&format!("{key}-public.pem"));
        let server =
            TestServer::start_with_auth(Config::default(), Authenticator::public_key(&public, None, None).unwrap())
                .await;
        let stats = server.api("/stats");
        let good = jsonwebtoken::encode(&Header::new(algorithm), &claims(), &signer).unwrap();
        let response = server.client.get(&stats).bearer_auth(&good).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{key}");

        // Algorithm confusion: an HS256 token whose "secret" is the public key must not pass.
        let confused =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims(), &EncodingKey::from_secret(&public))
                .unwrap();
        // A token signed by another key of the other type.
        let (other_algorithm, other) = match key {
            "rsa" => (Algorithm::EdDSA, EncodingKey::from_ed_pem(&fixture("ed25519-private.pem")).unwrap()),
            _ => (Algorithm::RS256, EncodingKey::from_rsa_pem(&fixture("rsa-private.pem")).unwrap()),
        };
        let foreign = jsonwebtoken::encode(&Header::new(other_algorithm), &claims(), &other).unwrap();
        for token in [confused, foreign] {
            let response = server.client.get(&stats).bearer_auth(&token).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{key}");
        }
        server.stop().await;
    }
}
