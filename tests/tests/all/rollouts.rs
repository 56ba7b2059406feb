//! Safe rule changes (decision 0022), end to end over the API: the decision log says why each task went where it
//! went; a shadow sees live inputs and changes nothing; promote swaps the active version fleet-wide without a
//! failed call; a canary takes its share of decisions by task id; a failing canary rolls itself back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aragora_cp::config::Config;
use aragora_cp::model::sha256_hex;
use aragora_cp::plugins::decision_log::bucket_of;
use aragora_cp_tests::guest_bytes;
use aragora_cp_tests::redis_server::unique_prefix;
use aragora_cp_tests::server::{TestServer, read_until};
use reqwest::Method;
use serde_json::{Value, json};

async fn send(server: &TestServer, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = server.client.request(method, server.api(path)).bearer_auth(server.admin());
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

async fn register(server: &TestServer, agents: &[&str], capability: &str) {
    for agent in agents {
        let body = json!({"agent_id": agent, "capabilities": [capability]});
        assert_eq!(send(server, Method::POST, "/agents", Some(body)).await.0, 201);
    }
}

async fn waiting_claims(server: &TestServer) -> u64 {
    server.coordinator.counters().await.unwrap().waiting_claims as u64
}

/// Agents that each keep one claim waiting: a task submitted while all wait is routed by its strategy among them.
struct Claimers {
    waiting: HashMap<String, tokio::task::JoinHandle<Value>>,
}

impl Claimers {
    fn new() -> Self {
        Claimers { waiting: HashMap::new() }
    }

    /// Starts a claim for each agent that has none, and waits until the store counts `total` waiting.
    async fn all_waiting(&mut self, server: &TestServer, agents: &[&str], total: u64) {
        for agent in agents {
            if self.waiting.contains_key(*agent) {
                continue;
            }
            let (client, url, token) = (server.client.clone(), server.api("/tasks/claim"), server.admin());
            let body = json!({"agent_id": agent, "block_ms": 20_000});
            let claim = tokio::spawn(async move {
                client.post(url).bearer_auth(token).json(&body).send().await.unwrap().json::<Value>().await.unwrap()
            });
            self.waiting.insert(agent.to_string(), claim);
        }
        let started = Instant::now();
        while waiting_claims(server).await != total {
            assert!(started.elapsed() < Duration::from_secs(20), "the claims never all waited");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The agent whose claim answered, and the task it got.
    async fn answered(&mut self) -> (String, Value) {
        let started = Instant::now();
        loop {
            let done = self.waiting.iter().find(|(_, claim)| claim.is_finished()).map(|(agent, _)| agent.clone());
            if let Some(agent) = done {
                let answer = self.waiting.remove(&agent).unwrap().await.unwrap();
                return (agent, answer["task"].clone());
            }
            assert!(started.elapsed() < Duration::from_secs(20), "no claim answered");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn stop(self) {
        for claim in self.waiting.into_values() {
            claim.abort();
        }
    }
}

/// Submits one task of `task_type` for `strategy` while every agent waits, completes it, and answers (task id,
/// agent).
async fn route_one(
    server: &TestServer,
    claimers: &mut Claimers,
    agents: &[&str],
    (capability, strategy, task_type): (&str, &str, &str),
) -> (String, String) {
    claimers.all_waiting(server, agents, agents.len() as u64).await;
    let task = json!({"task_type": task_type, "required_capabilities": [capability], "strategy": strategy});
    let (status, submitted) = send(server, Method::POST, "/tasks", Some(task)).await;
    assert_eq!(status, 201, "{submitted}");
    let (agent, task) = claimers.answered().await;
    let task_id = submitted["task_id"].as_str().unwrap().to_string();
    assert_eq!(task["task_id"], task_id.as_str(), "the waiting claim got the submitted task");
    let done = json!({"lease_id": task["lease_id"], "result": {}});
    assert_eq!(send(server, Method::POST, &format!("/tasks/{task_id}/complete"), Some(done)).await.0, 200);
    (task_id, agent)
}

async fn decisions_of(server: &TestServer, task_id: &str) -> Vec<Value> {
    // The log is written off the request path: give the writer a moment.
    let started = Instant::now();
    loop {
        let (status, body) = send(server, Method::GET, &format!("/tasks/{task_id}/decisions"), None).await;
        assert_eq!(status, 200, "{body}");
        let decisions = body["decisions"].as_array().cloned().unwrap_or_default();
        if !decisions.is_empty() || started.elapsed() > Duration::from_secs(5) {
            return decisions;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shadow_that_prefers_another_agent_disagrees_on_every_routed_task_and_changes_no_routing() {
    let server = TestServer::start().await;
    let agents = ["sh-1", "sh-2", "sh-3"];
    register(&server, &agents, "shadowed").await;
    let least_loaded = guest_bytes("least_loaded");
    assert_eq!(server.put_component("pick", least_loaded.clone()).await.0, 200);
    // A shadow needs an active version to stand beside, of its own kind.
    let (status, problem) = server.put_component("nothing_here?mode=shadow", guest_bytes("highest_index")).await;
    assert_eq!((status, problem["code"].as_str()), (400, Some("plugin_rejected")), "{problem}");
    assert_eq!(server.put_component("pick?mode=shadow&canary=5", guest_bytes("highest_index")).await.0, 400);
    let (status, staged) = server.put_component("pick?mode=shadow", guest_bytes("highest_index")).await;
    assert_eq!(status, 200, "{staged}");
    let shadow_sha = sha256_hex(&guest_bytes("highest_index"));
    assert_eq!(staged["active"]["sha256"], sha256_hex(&least_loaded).as_str(), "the active version is unchanged");
    assert_eq!(
        (staged["rollout"]["mode"].as_str(), staged["rollout"]["candidate"]["sha256"].as_str()),
        (Some("shadow"), Some(shadow_sha.as_str()))
    );
    assert_eq!(staged["fleet"]["history"][0]["action"], "staged", "{staged}");

    let mut claimers = Claimers::new();
    let rounds = 12;
    let mut routed = Vec::new();
    for _ in 0..rounds {
        routed.push(route_one(&server, &mut claimers, &agents, ("shadowed", "pick", "t")).await);
    }
    // Every routed task: the active version's decision took effect, the shadow's (another agent) did not.
    for (task_id, agent) in &routed {
        let decisions = decisions_of(&server, task_id).await;
        let active: Vec<&Value> = decisions.iter().filter(|d| d["role"] == "active").collect();
        assert_eq!(active.len(), 1, "{decisions:?}");
        let active = active[0];
        assert_eq!((active["stage"].as_str(), active["plugin"].as_str()), (Some("route"), Some("pick")));
        assert_eq!(active["answer"]["agent_id"], agent.as_str(), "the routing is the active version's: {active}");
        assert_eq!(active["input"]["candidates"].as_array().map(Vec::len), Some(3), "{active}");
        assert_eq!(active["answered_by"], "plugin");
        assert!(active["fuel"].as_u64().unwrap() > 0 && active["version"] == sha256_hex(&least_loaded).as_str());
    }
    let started = Instant::now();
    let shadow = loop {
        let (status, shadow) = send(&server, Method::GET, "/plugins/pick/shadow", None).await;
        assert_eq!(status, 200, "{shadow}");
        if shadow["compared"] == rounds || started.elapsed() > Duration::from_secs(10) {
            break shadow;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(shadow["compared"], rounds, "{shadow}");
    assert_eq!((shadow["different_agent"].as_u64(), shadow["agreed"].as_u64()), (Some(rounds), Some(0)), "{shadow}");
    assert_eq!((shadow["errors"].as_u64(), shadow["dropped"].as_u64()), (Some(0), Some(0)));
    let sample = &shadow["samples"][0];
    assert_ne!(sample["active"]["agent_id"], sample["shadow"]["agent_id"], "{sample}");
    assert_eq!(sample["shadow"]["index"], 2, "highest_index chooses the last of three: {sample}");
    // Its calls decide nothing, so they are not the name's: `/metrics` and the totals count the active version's.
    let (_, info) = send(&server, Method::GET, "/plugins/pick", None).await;
    assert_eq!(info["totals"]["calls"], info["active"]["calls"], "{info}");
    assert_eq!(info["rollout"]["candidate"]["calls"], rounds, "the shadow's own counters have them: {info}");
    // The shadow's own decisions are in the log, marked as such.
    let decisions = decisions_of(&server, &routed[0].0).await;
    let shadowed = decisions.iter().find(|d| d["role"] == "shadow").expect("the shadow's decision is recorded");
    assert_eq!(shadowed["version"], shadow_sha.as_str());
    // The shadow counts a comparison before its decision reaches the writer (which gathers for 20 ms): wait for
    // the last ones.
    let started = Instant::now();
    let page = loop {
        let (_, page) = send(&server, Method::GET, "/decisions?plugin=pick&stage=route&limit=1000", None).await;
        if page["decisions"].as_array().unwrap().len() >= 2 * rounds as usize
            || started.elapsed() > Duration::from_secs(5)
        {
            break page;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(page["decisions"].as_array().unwrap().len(), 2 * rounds as usize, "{page}");
    assert_eq!(send(&server, Method::GET, "/decisions?stage=nope", None).await.0, 400);
    assert_eq!(send(&server, Method::GET, "/decisions?since=yesterday", None).await.0, 400);
    let (_, paged) = send(&server, Method::GET, "/decisions?plugin=pick&limit=5", None).await;
    let next = paged["next"].as_str().expect("more than one page");
    let (_, second) = send(&server, Method::GET, &format!("/decisions?plugin=pick&limit=5&after={next}"), None).await;
    assert_ne!(paged["decisions"][0]["id"], second["decisions"][0]["id"]);

    // A client's mistakes are 400s naming the field, on every store alike.
    let (status, problem) = send(&server, Method::POST, "/plugins/pick/promote", Some(json!({"sha256": ""}))).await;
    assert_eq!((status, problem["field"].as_str()), (400, Some("sha256")), "{problem}");
    for after in ["abc", "%2B1-0", "1-", "99999999999999999999-0"] {
        let (status, problem) = send(&server, Method::GET, &format!("/decisions?after={after}"), None).await;
        assert_eq!((status, problem["field"].as_str()), (400, Some("after")), "{after}: {problem}");
    }

    // Promote: the shadow is the active version now, and routes.
    let (status, promoted) =
        send(&server, Method::POST, "/plugins/pick/promote", Some(json!({"sha256": shadow_sha}))).await;
    assert_eq!(status, 200, "{promoted}");
    assert_eq!(promoted["active"]["sha256"], shadow_sha.as_str(), "{promoted}");
    assert!(promoted["rollout"].is_null(), "{promoted}");
    assert_eq!(promoted["fleet"]["history"][0]["action"], "promoted");
    let (status, problem) = send(&server, Method::POST, "/plugins/pick/promote", None).await;
    assert_eq!((status, problem["code"].as_str()), (409, Some("no_candidate")), "{problem}");
    assert_eq!(send(&server, Method::GET, "/plugins/pick/shadow", None).await.0, 404);
    let (task_id, agent) = route_one(&server, &mut claimers, &agents, ("shadowed", "pick", "t")).await;
    let decisions = decisions_of(&server, &task_id).await;
    assert_eq!(decisions.len(), 1, "no shadow any more: {decisions:?}");
    assert_eq!(decisions[0]["version"], shadow_sha.as_str());
    assert_eq!(decisions[0]["answer"]["index"], 2);
    assert_eq!(decisions[0]["answer"]["agent_id"], agent.as_str());
    claimers.stop();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_takes_its_share_of_decisions_by_task_id() {
    let server = TestServer::start().await;
    let agents = ["cn-1", "cn-2"];
    register(&server, &agents, "canaried").await;
    assert_eq!(server.put_component("split", guest_bytes("least_loaded")).await.0, 200);
    let (status, staged) = server.put_component("split?canary=10", guest_bytes("highest_index")).await;
    assert_eq!(status, 200, "{staged}");
    assert_eq!((staged["rollout"]["mode"].as_str(), staged["rollout"]["percent"].as_u64()), (Some("canary"), Some(10)));
    assert_eq!(server.put_component("split?canary=0", guest_bytes("highest_index")).await.0, 400);
    assert_eq!(server.put_component("split?canary=101", guest_bytes("highest_index")).await.0, 400);
    let canary_sha = sha256_hex(&guest_bytes("highest_index"));

    // 2,000 selections (`POST /agents/select` names no task: each gets an id of its own, logged as `select`).
    let decisions = 2_000;
    for _ in 0..decisions {
        let body = json!({"capabilities": ["canaried"], "strategy": "split", "dry_run": true});
        let (status, chosen) = send(&server, Method::POST, "/agents/select", Some(body)).await;
        assert_eq!(status, 200, "{chosen}");
    }
    let started = Instant::now();
    let records: Vec<Value> = loop {
        let mut records = Vec::new();
        let mut after = String::new();
        loop {
            let path = format!("/decisions?plugin=split&stage=select&limit=1000{after}");
            let (_, page) = send(&server, Method::GET, &path, None).await;
            records.extend(page["decisions"].as_array().unwrap().iter().cloned());
            match page["next"].as_str() {
                Some(next) => after = format!("&after={next}"),
                None => break,
            }
        }
        if records.len() >= decisions || started.elapsed() > Duration::from_secs(10) {
            break records;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(records.len(), decisions);
    let canary: Vec<&Value> = records.iter().filter(|r| r["role"] == "canary").collect();
    let share = canary.len() as f64 / decisions as f64;
    assert!((0.07..=0.13).contains(&share), "10 % ± 3 %: {} of {decisions}", canary.len());
    // Deterministic by task id: the canary answered exactly the tasks whose bucket is below 10.
    for record in &records {
        let task_id = record["task_id"].as_str().unwrap();
        let by_canary = record["role"] == "canary";
        assert_eq!(by_canary, bucket_of(task_id) < 10, "{record}");
        assert_eq!(record["version"] == canary_sha.as_str(), by_canary);
        assert_eq!(record["answer"]["index"], if by_canary { 1 } else { 0 }, "{record}");
    }
    // Per-version counters in GET /plugins/{name}.
    let (_, info) = send(&server, Method::GET, "/plugins/split", None).await;
    assert_eq!(info["rollout"]["candidate"]["calls"].as_u64(), Some(canary.len() as u64), "{info}");
    assert_eq!(info["rollout"]["active_since"]["calls"].as_u64(), Some((decisions - canary.len()) as u64));
    // Rollback by hand: every decision is the active version's again.
    let (status, rolled) = send(&server, Method::POST, "/plugins/split/rollback", None).await;
    assert_eq!((status, rolled["rollout"].is_null()), (200, true), "{rolled}");
    assert_eq!(rolled["fleet"]["history"][0]["action"], "rolled_back");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_rolls_itself_back() {
    let mut config = Config::default();
    config.decisions.canary_min_calls = 20;
    let server = TestServer::start_with(config).await;
    let agents = ["tr-1", "tr-2"];
    register(&server, &agents, "trapped").await;
    assert_eq!(server.put_component("guarded", guest_bytes("least_loaded")).await.0, 200);
    let (status, staged) = server.put_component("guarded?canary=50", guest_bytes("trap")).await;
    assert_eq!(status, 200, "{staged}");
    // The trap strategy traps on every task of type `misbehave`; each is still routed (by the fallback).
    let mut claimers = Claimers::new();
    let started = Instant::now();
    let info = loop {
        route_one(&server, &mut claimers, &agents, ("trapped", "guarded", "misbehave")).await;
        let (_, info) = send(&server, Method::GET, "/plugins/guarded", None).await;
        if info["rollout"].is_null() {
            break info;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "never rolled back: {info}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let entry = &info["fleet"]["history"][0];
    assert_eq!((entry["action"].as_str(), entry["by"].as_str()), (Some("rolled_back"), Some("canary-guard")), "{info}");
    assert!(entry["detail"].as_str().unwrap().contains("canary failed or fell back"), "{entry}");
    assert_eq!(info["active"]["sha256"], sha256_hex(&guest_bytes("least_loaded")).as_str());
    claimers.stop();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn promote_switches_three_servers_on_redis_without_a_failed_call() {
    let prefix = unique_prefix("rollouts");
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(TestServer::start_on_redis(Config::default(), &prefix).await);
    }
    promote_under_load(servers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn promote_switches_a_memory_server_without_a_failed_call() {
    promote_under_load(vec![TestServer::start().await]).await;
}

/// Stages a shadow through one server, promotes it through the last while every server answers selections with
/// the name, and checks that none failed and every server ends on the new version.
async fn promote_under_load(servers: Vec<TestServer>) {
    let last = servers.len() - 1;
    let agents = ["pr-1", "pr-2", "pr-3"];
    register(&servers[0], &agents, "promoted").await;
    assert_eq!(servers[0].put_component("fleetpick", guest_bytes("least_loaded")).await.0, 200);
    let shadow_sha = sha256_hex(&guest_bytes("highest_index"));
    assert_eq!(servers[last.min(1)].put_component("fleetpick?mode=shadow", guest_bytes("highest_index")).await.0, 200);
    for server in &servers {
        let started = Instant::now();
        loop {
            let (_, info) = send(server, Method::GET, "/plugins/fleetpick", None).await;
            if info["rollout"]["candidate"]["sha256"] == shadow_sha.as_str() {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "the shadow never reached a server: {info}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // Selections on every server while the promote happens: none fails, and each answer is one version's.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for server in &servers {
        let (client, url, token, stop) =
            (server.client.clone(), server.api("/agents/select"), server.admin(), stop.clone());
        load.push(tokio::spawn(async move {
            let (mut calls, mut failed) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let body = json!({"capabilities": ["promoted"], "strategy": "fleetpick", "dry_run": true});
                let response = client.post(&url).bearer_auth(&token).json(&body).send().await.unwrap();
                calls += 1;
                if response.status() != 200 {
                    failed += 1;
                }
            }
            (calls, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, promoted) = send(&servers[last], Method::POST, "/plugins/fleetpick/promote", None).await;
    assert_eq!(status, 200, "{promoted}");
    for server in &servers {
        let started = Instant::now();
        loop {
            let (_, info) = send(server, Method::GET, "/plugins/fleetpick", None).await;
            if info["active"]["sha256"] == shadow_sha.as_str() && info["rollout"].is_null() {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "never promoted here: {info}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for handle in load {
        let (calls, failed) = handle.await.unwrap();
        assert!(calls > 0);
        assert_eq!(failed, 0, "{failed} of {calls} selections failed during the promote");
    }
    // Every server now chooses as the promoted version does: the last of the three agents.
    for server in &servers {
        let body = json!({"capabilities": ["promoted"], "strategy": "fleetpick", "dry_run": true});
        let (_, chosen) = send(server, Method::POST, "/agents/select", Some(body)).await;
        assert_eq!(chosen["agent_id"], "pr-3", "{chosen}");
    }
    for server in servers {
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_file_beside_a_plugin_is_this_servers_shadow_until_it_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config { plugins_dir: Some(dir.path().to_path_buf()), ..Config::default() };
    let server = TestServer::start_with(config).await;
    aragora_cp_tests::write_by_rename(dir.path(), "least_loaded.shadow.wasm", &guest_bytes("highest_index"));
    let sha = sha256_hex(&guest_bytes("highest_index"));
    let started = Instant::now();
    let info = loop {
        let (_, info) = send(&server, Method::GET, "/plugins/least_loaded", None).await;
        if info["rollout"]["candidate"]["sha256"] == sha.as_str() {
            break info;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the shadow file was never loaded: {info}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        (info["rollout"]["mode"].as_str(), info["rollout"]["candidate"]["source"].as_str()),
        (Some("shadow"), Some("file"))
    );
    assert_eq!(info["active"]["source"], "builtin", "the built-in keeps deciding");
    // Selections are compared with it.
    register(&server, &["sf-1", "sf-2"], "filed").await;
    let body = json!({"capabilities": ["filed"], "dry_run": true});
    assert_eq!(send(&server, Method::POST, "/agents/select", Some(body)).await.0, 200);
    let started = Instant::now();
    loop {
        let (_, shadow) = send(&server, Method::GET, "/plugins/least_loaded/shadow", None).await;
        if shadow["compared"] == 1 {
            assert_eq!(shadow["different_agent"], 1, "{shadow}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "never compared: {shadow}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Not the fleet's: nothing to promote over the API.
    let (status, problem) = send(&server, Method::POST, "/plugins/least_loaded/promote", None).await;
    assert_eq!((status, problem["code"].as_str()), (409, Some("no_candidate")), "{problem}");
    std::fs::remove_file(dir.path().join("least_loaded.shadow.wasm")).unwrap();
    let started = Instant::now();
    loop {
        let (_, info) = send(&server, Method::GET, "/plugins/least_loaded", None).await;
        if info["rollout"].is_null() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the shadow outlived its file: {info}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_events_go_only_to_streams_that_ask_for_them() {
    let server = TestServer::start().await;
    let agents = ["ev-1", "ev-2"];
    register(&server, &agents, "evented").await;
    let stream = |types: &str| {
        let url = server.api(&format!("/events{types}"));
        server.client.get(url).bearer_auth(server.admin()).send()
    };
    let (mut asked, mut everything) =
        (stream("?types=decision,task_completed").await.unwrap(), stream("").await.unwrap());
    let mut claimers = Claimers::new();
    let (task_id, agent) = route_one(&server, &mut claimers, &agents, ("evented", "least_loaded", "t")).await;
    let mut seen = String::new();
    let decided = read_until(&mut asked, &mut seen, "event: decision").await;
    let data = decided.lines().skip_while(|l| *l != "event: decision").find_map(|l| l.strip_prefix("data:")).unwrap();
    let event: Value = serde_json::from_str(data.trim()).unwrap();
    assert_eq!(
        (event["task_id"].as_str(), event["data"]["answer"]["agent_id"].as_str()),
        (Some(task_id.as_str()), Some(agent.as_str())),
        "{event}"
    );
    // The stream that asked for everything got every event up to one made after the decision was sent, and no
    // decision.
    register(&server, &["ev-3"], "evented").await;
    let mut all = String::new();
    let everything = read_until(&mut everything, &mut all, "\"ev-3\"").await;
    assert!(everything.contains("event: task_completed"), "{everything}");
    assert!(!everything.contains("event: decision"), "{everything}");
    claimers.stop();
    server.stop().await;
}

/// `PUT /plugins/{name}{query}` as a form with a manifest.
async fn put_with_manifest(
    server: &TestServer,
    name_and_query: &str,
    component: Vec<u8>,
    manifest: &str,
) -> (u16, Value) {
    let form = reqwest::multipart::Form::new()
        .part("component", reqwest::multipart::Part::bytes(component).file_name("policy.wasm"))
        .text("manifest", manifest.to_string());
    let url = server.api(&format!("/plugins/{name_and_query}"));
    let response = server.client.put(url).bearer_auth(server.admin()).multipart(form).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stricter_policy_in_shadow_disagrees_without_denying_anything_and_as_a_canary_denies_its_share() {
    let server = TestServer::start().await;
    let policy = || guest_bytes("payload_size_policy");
    let lenient = "kind = \"policy\"\n[config]\nmax_payload_bytes = 100000\n";
    let strict = "kind = \"policy\"\n[config]\nmax_payload_bytes = 2\n";
    assert_eq!(put_with_manifest(&server, "size_rule", policy(), lenient).await.0, 200);
    let (status, staged) = put_with_manifest(&server, "size_rule?mode=shadow", policy(), strict).await;
    assert_eq!((status, staged["rollout"]["mode"].as_str()), (200, Some("shadow")), "{staged}");
    let submits = 10;
    let mut task_ids = Vec::new();
    for n in 0..submits {
        let task = json!({"task_type": "t", "payload": {"n": n}});
        let (status, submitted) = send(&server, Method::POST, "/tasks", Some(task)).await;
        assert_eq!(status, 201, "the active (lenient) version decides: {submitted}");
        task_ids.push(submitted["task_id"].as_str().unwrap().to_string());
    }
    let started = Instant::now();
    let shadow = loop {
        let (_, shadow) = send(&server, Method::GET, "/plugins/size_rule/shadow", None).await;
        if shadow["compared"] == submits || started.elapsed() > Duration::from_secs(10) {
            break shadow;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        (shadow["compared"].as_u64(), shadow["different_verdict"].as_u64()),
        (Some(submits), Some(submits)),
        "{shadow}"
    );
    let sample = &shadow["samples"][0];
    assert_eq!(
        (sample["active"]["verdict"].as_str(), sample["shadow"]["verdict"].as_str()),
        (Some("allow"), Some("deny")),
        "{sample}"
    );
    let decisions = decisions_of(&server, &task_ids[0]).await;
    let stages: Vec<(&str, &str)> =
        decisions.iter().map(|d| (d["stage"].as_str().unwrap(), d["role"].as_str().unwrap())).collect();
    assert!(stages.contains(&("submit", "active")) && stages.contains(&("submit", "shadow")), "{stages:?}");

    // As a canary at 50 %, the strict version decides (and denies) the submits whose task id falls in its half.
    assert_eq!(put_with_manifest(&server, "size_rule?canary=50", policy(), strict).await.0, 200);
    let (mut allowed, mut denied) = (0, 0);
    for n in 0..40 {
        let (status, answer) =
            send(&server, Method::POST, "/tasks", Some(json!({"task_type": "t", "payload": {"n": n}}))).await;
        match status {
            201 => allowed += 1,
            403 => {
                assert!(answer["detail"].as_str().unwrap().contains("size_rule"), "{answer}");
                denied += 1;
            }
            other => panic!("{other}: {answer}"),
        }
    }
    assert!(allowed > 5 && denied > 5, "a share each way: {allowed} allowed, {denied} denied");
    server.stop().await;
}
