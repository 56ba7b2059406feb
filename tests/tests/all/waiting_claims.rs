//! Waiting claims and pending work, over HTTP on memory and on Redis: a claim blocked for work never times out while
//! a task it may take is pending, whatever the interleaving of submits and claims, whichever strategy routes (a
//! built-in, or one that fails on every call), and whatever state the agent was in before it claimed (offline,
//! with a policy loaded). The bounds only tell "handed over" from "timed out at block_ms".

use std::sync::Arc;
use std::time::{Duration, Instant};

use aragora_cp::config::Config;
use aragora_cp::store::{RedisStore, Store};
use aragora_cp_tests::guest_bytes;
use aragora_cp_tests::redis_server::{shared_server, unique_prefix};
use aragora_cp_tests::server::TestServer;
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

/// The scenario up to its answers: 16 agents holding `z1` wait in claims (3 s), then 16 submits of
/// `task_type` needing `z1` arrive at once (through `strategy` if given). Answers each claim with its agent.
async fn sixteen_waiting_claims_then_sixteen_submits(
    server: &TestServer,
    token: &str,
    strategy: Option<&str>,
    task_type: &str,
) -> Vec<(tokio::task::JoinHandle<Value>, String)> {
    let agents: Vec<String> = (0..16).map(|i| format!("z1-agent-{i}")).collect();
    for agent in &agents {
        let (status, _) = post(server, token, "/agents", json!({"agent_id": agent, "capabilities": ["z1"]})).await;
        assert_eq!(status, 201);
    }
    let waiting = claims(server, token, &agents, 3_000);
    until_waiting(server, token, 16).await;
    let submits: Vec<_> = (0..16)
        .map(|i| {
            let (client, url, token) = (server.client.clone(), server.api("/tasks"), token.to_string());
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
    waiting.into_iter().zip(agents).collect()
}

/// The scenario: 16 agents wait in claims (3 s), then 16 submits arrive at once. Every claim must get one
/// of the tasks, and none may stay pending.
async fn concurrent_submits_reach_every_waiting_claim(backend: Backend, strategy: Option<&str>, task_type: &str) {
    let server = server(backend, Config::default()).await;
    let token = server.admin();
    if let Some(name) = strategy.filter(|s| *s == "trap") {
        server
            .coordinator
            .install_local_plugin(name, &guest_bytes(name), Default::default())
            .expect("the failing strategy loads");
    }
    let waiting = sixteen_waiting_claims_then_sixteen_submits(&server, &token, strategy, task_type).await;
    let mut handed = std::collections::BTreeSet::new();
    for (claim, _) in waiting {
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

/// The decision log tells where routed work went: with 16 claims waiting and 16 submits at once, each routing's
/// offer was made at its submit, before the routings of the others took its first claims; the strategy must choose
/// among the claims still waiting (decision 0027), so each `route` decision names the agent that got the task. One
/// thread, so that no two routings run at once (on several, a choice can lose its claim in the instant between).
#[tokio::test(flavor = "current_thread")]
async fn each_routed_tasks_decision_names_the_agent_that_got_it() {
    let server = server(Backend::Memory, Config::default()).await;
    let token = server.admin();
    let waiting = sixteen_waiting_claims_then_sixteen_submits(&server, &token, None, "code").await;
    let mut handed = Vec::new();
    for (claim, agent) in waiting {
        let answer = claim.await.unwrap();
        let task = answer["task"]["task_id"].as_str().unwrap_or_else(|| panic!("a claim timed out: {answer}"));
        handed.push((task.to_string(), agent));
    }
    // The decision writer gathers for a few ms before it stores a batch; the last routing, with one claim left,
    // asks no strategy (docs/PLUGINS.md), so 15 decisions are expected.
    let started = Instant::now();
    let decided = loop {
        let decisions = get(&server, &token, "/decisions?stage=route&limit=100").await;
        let decided: Vec<Value> = decisions["decisions"].as_array().cloned().unwrap_or_default();
        if decided.len() >= 15 || started.elapsed() > Duration::from_secs(10) {
            break decided;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(decided.len() >= 15, "a strategy chose for at least 15 of the 16 tasks: {decided:?}");
    for decision in decided {
        let task = decision["task_id"].as_str().expect("a route decision names its task");
        let got = handed.iter().find(|(id, _)| id == task).map(|(_, agent)| agent.as_str());
        assert_eq!(decision["answer"]["agent_id"].as_str(), got, "task {task}: the decision and the claim disagree");
    }
    server.stop().await;
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
    aragora_cp_tests::install_example(&server.coordinator, policy);
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

/// The routing protocol's invariant under random interleavings, on the engine itself (the coordinator over the
/// memory store, real strategy plugins): agents with different capabilities claim with random blocks, tasks of
/// random signatures arrive, held tasks fail (requeued or not) or complete, claims are abandoned (client gone),
/// agents are paused and resumed. Once routing has caught up, no pending task may have a live waiting claim that
/// could take it, and no attempt of a task was ever handed to two claims.
mod interleavings {
    use std::collections::HashSet;
    use std::sync::Arc;
    use std::time::Duration;

    use aragora_cp::config::Config;
    use aragora_cp::coordinator::ControlPlaneCoordinator;
    use aragora_cp::model::{FailRequest, Fence, RegisterRequest, SubmitRequest, Task, TaskFilter, TaskStatus};
    use aragora_cp::plugins::PluginRegistry;
    use aragora_cp::scheduler::Claim;
    use aragora_cp::store::{MemoryStore, Store, SystemClock};
    use aragora_cp_tests::runtime;
    use parking_lot::Mutex;
    use proptest::prelude::*;

    /// Agents and their capabilities: narrow, other, wide, none.
    const AGENTS: [(&str, &[&str]); 4] = [("ia", &["a"]), ("ib", &["b"]), ("iab", &["a", "b"]), ("i0", &[])];
    const SIGNATURES: [&[&str]; 4] = [&[], &["a"], &["b"], &["a", "b"]];

    #[derive(Clone, Debug)]
    enum Op {
        Claim { agent: usize, block_ms: u64 },
        Submit { signature: usize },
        Fail { requeue: bool },
        Complete,
        Abandon,
        Pause { agent: usize, paused: bool },
        Pass { ms: u64 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..AGENTS.len(), 50u64..600).prop_map(|(agent, block_ms)| Op::Claim { agent, block_ms }),
            4 => (0..SIGNATURES.len()).prop_map(|signature| Op::Submit { signature }),
            1 => any::<bool>().prop_map(|requeue| Op::Fail { requeue }),
            1 => Just(Op::Complete),
            1 => Just(Op::Abandon),
            1 => (0..AGENTS.len(), any::<bool>()).prop_map(|(agent, paused)| Op::Pause { agent, paused }),
            2 => (0u64..30).prop_map(|ms| Op::Pass { ms }),
        ]
    }

    async fn run(ops: Vec<Op>) {
        let config = Config::default();
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new(config.store_config(), Arc::new(SystemClock::default())));
        let plugins = Arc::new(PluginRegistry::new(runtime(), config.server_id.clone()).expect("built-ins"));
        let cp = ControlPlaneCoordinator::with_parts(config, store.clone(), plugins).await.expect("coordinator");
        for (agent, capabilities) in AGENTS {
            let request = RegisterRequest {
                agent_id: agent.into(),
                capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
                max_concurrent_tasks: Some(2),
                ..Default::default()
            };
            cp.register_agent(request).await.expect("register");
        }
        let held: Arc<Mutex<Vec<Task>>> = Arc::default();
        let granted: Arc<Mutex<Vec<(String, u32)>>> = Arc::default();
        let mut claims = Vec::new();
        for op in ops {
            match op {
                Op::Claim { agent, block_ms } => {
                    let (cp, held, granted) = (cp.clone(), held.clone(), granted.clone());
                    claims.push(tokio::spawn(async move {
                        let claim = Claim {
                            agent_id: AGENTS[agent].0.into(),
                            capabilities: None,
                            block: Duration::from_millis(block_ms),
                            max_tasks: 1,
                            session_id: None,
                        };
                        if let Ok(outcome) = cp.claim_task(&claim).await {
                            for task in outcome.tasks {
                                granted.lock().push((task.task_id.to_string(), task.attempt));
                                held.lock().push(task);
                            }
                        }
                    }));
                }
                Op::Submit { signature } => {
                    let request = SubmitRequest {
                        task_type: "interleaved".into(),
                        required_capabilities: SIGNATURES[signature].iter().map(|c| c.to_string()).collect(),
                        max_retries: Some(3),
                        ..Default::default()
                    };
                    cp.submit_task(request, "prop").await.expect("submit");
                }
                Op::Fail { requeue } => {
                    let task = held.lock().pop();
                    if let Some(task) = task {
                        let failure = FailRequest { error: "x".into(), requeue, kind: Default::default() };
                        let _ = cp.fail_task(&task.task_id, &Fence::Lease(task.lease_id.unwrap()), &failure).await;
                    }
                }
                Op::Complete => {
                    let task = held.lock().pop();
                    if let Some(task) = task {
                        let lease = Fence::Lease(task.lease_id.unwrap());
                        let _ = cp.complete_task(&task.task_id, &lease, serde_json::json!({})).await;
                    }
                }
                Op::Abandon => {
                    if let Some(claim) = claims.iter().find(|c| !c.is_finished()) {
                        claim.abort();
                    }
                }
                Op::Pause { agent, paused } => {
                    let agent = AGENTS[agent].0;
                    let _ = if paused { cp.pause_agent(agent).await } else { cp.resume_agent(agent).await };
                }
                Op::Pass { ms } => tokio::time::sleep(Duration::from_millis(ms)).await,
            }
        }
        // Once routing caught up: no pending task has a live waiting claim that could take it.
        let started = std::time::Instant::now();
        loop {
            let filter = TaskFilter { status: Some(TaskStatus::Pending), limit: 1000, ..TaskFilter::default() };
            let pending = cp.list_tasks(&filter).await.expect("list").tasks;
            let mut stranded = Vec::new();
            for task in &pending {
                if let Some(offer) = store.offer(&task.task_id, 64, None).await.expect("offer") {
                    stranded.push((
                        task.task_id.to_string(),
                        offer.waiting.iter().map(|c| c.agent_id.clone()).collect::<Vec<_>>(),
                    ));
                }
            }
            if stranded.is_empty() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "pending tasks with waiting claims that could take them: {stranded:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for claim in &claims {
            claim.abort();
        }
        let granted = granted.lock().clone();
        let unique: HashSet<&(String, u32)> = granted.iter().collect();
        assert_eq!(unique.len(), granted.len(), "an attempt handed to two claims: {granted:?}");
        cp.shutdown().await;
    }

    fn cases() -> u32 {
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(16)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 64, ..ProptestConfig::default() })]
        #[test]
        fn no_task_stays_pending_while_a_claim_that_may_take_it_waits(ops in prop::collection::vec(op(), 1..=40)) {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(run(ops));
        }
    }
}
