//! Waiting claims and pending work, over HTTP on memory and on Redis: a claim blocked for work never times out while
//! a task it may take is pending, whatever the interleaving of submits and claims, whichever strategy routes (a
//! built-in, or one that fails on every call), and whatever state the agent was in before it claimed (offline,
//! with a policy loaded). The bounds only tell "handed over" from "timed out at block_ms".

use std::sync::Arc;
use std::time::{Duration, Instant};

use aragora_cp::config::Config;
use aragora_cp::plugins::PluginSource;
use aragora_cp::store::{RedisStore, Store};
use aragora_cp_tests::redis_server::{shared_server, unique_prefix};
use aragora_cp_tests::server::TestServer;
use aragora_cp_tests::{example_manifest, guest_bytes};
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug)]
enum Backend {
    Memory,
    Redis,
}

async fn server(backend: Backend, config: Config) -> TestServer {
    match backend {
        Backend::Memory => TestServer::start_with(config).await,
        Backend::Redis => {
            let prefix = unique_prefix("waiting-claims");
            let store: Arc<dyn Store> = Arc::new(
                RedisStore::connect(&shared_server().url(), &prefix, config.store_config()).await.expect("redis"),
            );
            TestServer::start_with_store(config, store).await
        }
    }
}

async fn post(server: &TestServer, token: &str, path: &str, body: Value) -> (u16, Value) {
    let response = server.client.post(server.api(path)).bearer_auth(token).json(&body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn get(server: &TestServer, token: &str, path: &str) -> Value {
    server.client.get(server.api(path)).bearer_auth(token).send().await.unwrap().json().await.unwrap()
}

/// Waits (polling `/stats`) until `count` claims wait in the store.
async fn until_waiting(server: &TestServer, token: &str, count: u64) {
    let started = Instant::now();
    loop {
        let stats = get(server, token, "/stats").await;
        if stats["scheduler"]["waiting_claims"].as_u64() == Some(count) {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "claims never all waited: {stats}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts one blocked claim per agent; each answers its body and how long it took.
fn claims(server: &TestServer, token: &str, agents: &[String], block_ms: u64) -> Vec<tokio::task::JoinHandle<Value>> {
    agents
        .iter()
        .map(|agent| {
            let (client, url, token) = (server.client.clone(), server.api("/tasks/claim"), token.to_string());
            let body = json!({"agent_id": agent, "block_ms": block_ms});
            tokio::spawn(async move {
                client.post(url).bearer_auth(token).json(&body).send().await.unwrap().json::<Value>().await.unwrap()
            })
        })
        .collect()
}

/// The scenario: 16 agents wait in claims (3 s), then 16 submits arrive at once. Every claim must get one
/// of the tasks, and none may stay pending.
async fn concurrent_submits_reach_every_waiting_claim(backend: Backend, strategy: Option<&str>, task_type: &str) {
    let server = server(backend, Config::default()).await;
    let token = server.admin();
    if let Some(name) = strategy.filter(|s| *s == "trap") {
        server
            .coordinator
            .plugins()
            .install(name, PluginSource::File, &guest_bytes(name), Default::default())
            .expect("the failing strategy loads");
    }
    let agents: Vec<String> = (0..16).map(|i| format!("z1-agent-{i}")).collect();
    for agent in &agents {
        let (status, _) = post(&server, &token, "/agents", json!({"agent_id": agent, "capabilities": ["z1"]})).await;
        assert_eq!(status, 201);
    }
    let waiting = claims(&server, &token, &agents, 3_000);
    until_waiting(&server, &token, 16).await;
    let submits: Vec<_> = (0..16)
        .map(|i| {
            let (client, url, token) = (server.client.clone(), server.api("/tasks"), token.clone());
            let mut body = json!({"task_type": task_type, "required_capabilities": ["z1"], "payload": {"i": i}});
            if let Some(strategy) = strategy {
                body["strategy"] = json!(strategy);
            }
            tokio::spawn(async move { client.post(url).bearer_auth(token).json(&body).send().await.unwrap().status() })
        })
        .collect();
    for submit in submits {
        assert_eq!(submit.await.unwrap(), 201);
    }
    let mut handed = std::collections::BTreeSet::new();
    for claim in waiting {
        let answer = claim.await.unwrap();
        let task = answer["task"]["task_id"].as_str().map(str::to_string);
        let task = task.unwrap_or_else(|| panic!("{backend:?}: a waiting claim timed out with work pending: {answer}"));
        assert!(handed.insert(task), "{backend:?}: one task handed to two claims");
    }
    let stats = get(&server, &token, "/stats").await;
    assert_eq!(stats["scheduler"]["pending_tasks"], 0, "{stats}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_submits_reach_every_waiting_claim_on_memory_with_least_loaded() {
    concurrent_submits_reach_every_waiting_claim(Backend::Memory, None, "code").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_submits_reach_every_waiting_claim_on_memory_with_a_failing_strategy() {
    concurrent_submits_reach_every_waiting_claim(Backend::Memory, Some("trap"), "misbehave").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_submits_reach_every_waiting_claim_on_redis_with_least_loaded() {
    concurrent_submits_reach_every_waiting_claim(Backend::Redis, None, "code").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_submits_reach_every_waiting_claim_on_redis_with_round_robin() {
    concurrent_submits_reach_every_waiting_claim(Backend::Redis, Some("round_robin"), "code").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_submits_reach_every_waiting_claim_on_redis_with_a_failing_strategy() {
    concurrent_submits_reach_every_waiting_claim(Backend::Redis, Some("trap"), "misbehave").await;
}

/// Issue: with a policy loaded, agents gone offline claimed, a matching task arrived, and both claims answered
/// `null` after their block while the task stayed pending. A claim is a sign of life: it brings the agent back,
/// and the task reaches one of them.
async fn an_offline_agents_claim_brings_it_back_with_a_policy_loaded(backend: Backend) {
    let config = Config {
        heartbeat_interval: Duration::from_millis(200),
        heartbeat_timeout: Duration::from_millis(600),
        ..Config::default()
    };
    let server = server(backend, config).await;
    let token = server.admin();
    let policy = "payload_size_policy";
    server
        .coordinator
        .plugins()
        .install(policy, PluginSource::File, &guest_bytes(policy), example_manifest(policy))
        .expect("policy loads");
    for agent in ["sleepy-1", "sleepy-2"] {
        let (status, _) = post(&server, &token, "/agents", json!({"agent_id": agent, "capabilities": ["code"]})).await;
        assert_eq!(status, 201);
    }
    let started = Instant::now();
    loop {
        let agents = get(&server, &token, "/agents").await;
        let offline = agents["agents"].as_array().unwrap().iter().filter(|a| a["status"] == "offline").count();
        if offline == 2 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "agents never went offline: {agents}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let agents = vec!["sleepy-1".to_string(), "sleepy-2".to_string()];
    let waiting = claims(&server, &token, &agents, 3_000);
    until_waiting(&server, &token, 2).await;
    let (status, submitted) =
        post(&server, &token, "/tasks", json!({"task_type": "code", "required_capabilities": ["code"]})).await;
    assert_eq!(status, 201);
    let mut attempts = Vec::new();
    for claim in waiting {
        let answer = claim.await.unwrap();
        if let Some(task) = answer["task"].as_object() {
            assert_eq!(task["task_id"], submitted["task_id"]);
            attempts.push(task["attempt"].as_u64().unwrap());
        }
    }
    // The agent that got it sends no heartbeat here, so it may go offline again and lose the task to the other
    // claim: a second attempt, never the first one twice.
    attempts.sort();
    assert_eq!(attempts.first(), Some(&1), "{backend:?}: the task was not handed over");
    assert!(attempts.windows(2).all(|pair| pair[0] < pair[1]), "{backend:?}: one attempt handed out twice");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_offline_agents_claim_brings_it_back_with_a_policy_loaded_on_memory() {
    an_offline_agents_claim_brings_it_back_with_a_policy_loaded(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_offline_agents_claim_brings_it_back_with_a_policy_loaded_on_redis() {
    an_offline_agents_claim_brings_it_back_with_a_policy_loaded(Backend::Redis).await;
}
