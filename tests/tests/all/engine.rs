//! The engine through the coordinator: routing of new work to blocked claims by strategy plugins (and after a
//! hot swap), policies at submit and register, refusals, wait-for-result. Real plugins, the memory store.

use std::sync::Arc;
use std::time::Duration;

use aragora_cp::config::Config;
use aragora_cp::coordinator::ControlPlaneCoordinator;
use aragora_cp::model::Fence;
use aragora_cp::model::{CapabilitySet, EventKind, RegisterRequest, SubmitRequest, Task, TaskId, TaskStatus};
use aragora_cp::plugins::registry::BUILTIN_MAX_CANDIDATES;
use aragora_cp::plugins::{PluginRegistry, PluginSource};
use aragora_cp::scheduler::{Claim, EngineError};
use aragora_cp::store::{MemoryStore, Store, SystemClock};
use aragora_cp_tests::{candidate, ctx, example_manifest, guest_bytes, runtime, task, wait_until};
use serde_json::json;

async fn coordinator(plugins_dir: Option<&std::path::Path>) -> Arc<ControlPlaneCoordinator> {
    let config = Config { plugins_dir: plugins_dir.map(|p| p.to_path_buf()), ..Config::default() };
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new(config.store_config(), Arc::new(SystemClock::default())));
    let plugins = Arc::new(PluginRegistry::new(runtime(), config.server_id.clone()).unwrap());
    ControlPlaneCoordinator::with_parts(config, store, plugins).await.unwrap()
}

async fn register(cp: &ControlPlaneCoordinator, id: &str, capabilities: &[&str]) {
    let request = RegisterRequest {
        agent_id: id.into(),
        capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
        max_concurrent_tasks: Some(8),
        ..Default::default()
    };
    cp.register_agent(request).await.unwrap();
}

async fn submit(cp: &ControlPlaneCoordinator, task_type: &str) -> TaskId {
    let request = SubmitRequest { task_type: task_type.into(), ..Default::default() };
    cp.submit_task(request, "tester").await.unwrap().task_id
}

fn claim(agent: &str, block_ms: u64) -> Claim {
    Claim {
        agent_id: agent.into(),
        capabilities: None,
        block: Duration::from_millis(block_ms),
        max_tasks: 1,
        session_id: None,
    }
}

/// Gives `agent` `count` tasks in flight (claimed, not finished).
async fn load(cp: &ControlPlaneCoordinator, agent: &str, count: usize) {
    for _ in 0..count {
        submit(cp, "load").await;
        let outcome = cp.claim_task(&claim(agent, 0)).await.unwrap();
        assert_eq!(outcome.tasks.len(), 1);
    }
}

/// Starts blocked claims for `agents`, in this order (the order strategies see them), and waits until all wait.
async fn block_claims(
    cp: &Arc<ControlPlaneCoordinator>,
    agents: &[&str],
) -> Vec<(String, tokio::task::JoinHandle<Vec<Task>>)> {
    let mut handles = Vec::new();
    for (i, agent) in agents.iter().enumerate() {
        let worker = cp.clone();
        let agent_id = agent.to_string();
        let handle = tokio::spawn(async move { worker.claim_task(&claim(&agent_id, 3_000)).await.unwrap().tasks });
        let coordinator = cp.clone();
        let waiting = async {
            loop {
                if coordinator.counters().await.unwrap().waiting_claims as usize == i + 1 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("claim blocked");
        handles.push((agent.to_string(), handle));
    }
    handles
}

/// Which of the blocked claims got `task_id`; the others are left to time out.
async fn receiver_of(handles: Vec<(String, tokio::task::JoinHandle<Vec<Task>>)>, task_id: &TaskId) -> String {
    let mut receiver = None;
    for (agent, handle) in handles {
        let tasks = handle.await.unwrap();
        if tasks.iter().any(|t| &t.task_id == task_id) {
            assert!(receiver.is_none(), "the task reached two claims");
            receiver = Some(agent);
        }
    }
    receiver.expect("one blocked claim received the routed task")
}

/// What routing hands a strategy is what a direct call over the documented sample would get: the
/// `BUILTIN_MAX_CANDIDATES` longest-waiting claims, in waiting order, with their agents' numbers. So the routed
/// choice equals the plugin's own answer over that sample, and an agent outside it is not chosen even when it is
/// the least loaded of all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_routed_choice_is_the_strategys_direct_answer_over_the_longest_waiting_sample() {
    let cp = coordinator(None).await;
    // Twelve agents waiting, in this order; the two idle ones wait after the sample of eight.
    let in_flight = [5, 3, 6, 4, 7, 2, 5, 6, 0, 1, 0, 3];
    let agents: Vec<String> = (0..in_flight.len()).map(|i| format!("agent-{i:02}")).collect();
    for (agent, load_of) in agents.iter().zip(in_flight) {
        register(&cp, agent, &["code"]).await;
        load(&cp, agent, load_of).await;
    }
    let order: Vec<&str> = agents.iter().map(String::as_str).collect();
    let waiting = block_claims(&cp, &order).await;

    let sample = &agents[..BUILTIN_MAX_CANDIDATES];
    let mut candidates = Vec::new();
    for agent in sample {
        let record = cp.get_agent(agent).await.unwrap();
        candidates.push(candidate(record.in_flight, record.tasks_completed, None));
    }
    // The same built-in, loaded apart from the server: what it answers is what routing must have done.
    let plugin = aragora_cp_tests::registry().active("least_loaded").expect("the built-in loads");
    let direct = plugin.select(ctx(1), &task("code"), &candidates, &[]).expect("the strategy answers");

    let routed = submit(&cp, "code").await;
    let receiver = receiver_of(waiting, &routed).await;
    assert_eq!(receiver, sample[direct], "routing chose what the strategy chooses over the sample");
    assert_eq!(receiver, "agent-05", "the least loaded of the eight longest-waiting");
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn least_loaded_routes_to_the_least_loaded_waiter_and_a_hot_swapped_strategy_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let cp = coordinator(Some(dir.path())).await;
    for agent in ["busy", "medium", "idle"] {
        register(&cp, agent, &["code"]).await;
    }
    load(&cp, "busy", 3).await;
    load(&cp, "medium", 1).await;

    let waiting = block_claims(&cp, &["busy", "medium", "idle"]).await;
    let routed = submit(&cp, "code").await;
    assert_eq!(receiver_of(waiting, &routed).await, "idle", "least_loaded chose the agent with nothing in flight");

    // Override the default strategy by dropping another plugin under its name: highest_index picks the last
    // waiter, which is now the busiest agent.
    std::fs::write(dir.path().join("least_loaded.wasm"), guest_bytes("highest_index")).unwrap();
    wait_until(Duration::from_secs(5), || {
        cp.plugin_list()
            .iter()
            .any(|p| p.name == "least_loaded" && p.active.as_ref().is_some_and(|v| v.source == PluginSource::File))
    })
    .expect("the override is active");
    for _ in 0..2 {
        let waiting = block_claims(&cp, &["idle", "medium", "busy"]).await;
        let routed = submit(&cp, "code").await;
        assert_eq!(receiver_of(waiting, &routed).await, "busy", "the swapped-in strategy decides now");
    }
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_claim_times_out_empty_and_leaves_no_waiter_behind() {
    let cp = coordinator(None).await;
    register(&cp, "a", &["code"]).await;
    let outcome = cp.claim_task(&claim("a", 150)).await.unwrap();
    assert!(outcome.tasks.is_empty());
    assert_eq!(cp.counters().await.unwrap().waiting_claims, 0);
    // A task submitted afterwards waits to be pulled, not routed to a ghost.
    let task = submit(&cp, "code").await;
    assert_eq!(cp.get_task(&task).await.unwrap().status, TaskStatus::Pending);
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_from_an_unregistered_agent_is_told_to_register() {
    let cp = coordinator(None).await;
    match cp.claim_task(&claim("ghost", 0)).await {
        Err(EngineError::Store(error)) => assert!(error.to_string().contains("register"), "{error}"),
        other => panic!("expected agent not found, got {other:?}"),
    }
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_agent_is_refused_for_its_whole_block_then_served_when_resumed() {
    let cp = coordinator(None).await;
    register(&cp, "a", &[]).await;
    submit(&cp, "code").await;
    cp.pause_agent("a").await.unwrap();
    let started = std::time::Instant::now();
    let refused = cp.claim_task(&claim("a", 200)).await.unwrap();
    assert!(refused.tasks.is_empty());
    assert_eq!(refused.reason.as_deref(), Some("paused"));
    assert!(started.elapsed() >= Duration::from_millis(200), "a refused claim waits its full block");
    cp.resume_agent("a").await.unwrap();
    assert_eq!(cp.claim_task(&claim("a", 0)).await.unwrap().tasks.len(), 1);
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_policy_denies_with_a_recorded_violation_and_an_event() {
    let cp = coordinator(None).await;
    aragora_cp_tests::install_example(&cp, "payload_size_policy");
    let mut events = cp.subscribe();
    let big = SubmitRequest {
        task_type: "code".into(),
        payload: Some(json!({"blob": "x".repeat(70_000)}).into()),
        ..Default::default()
    };
    match cp.submit_task(big, "tester").await {
        Err(EngineError::Denied(denied)) => {
            assert_eq!(denied.policy, "payload_size_policy");
            assert!(denied.reason.contains("65536"), "{}", denied.reason);
        }
        other => panic!("expected a policy denial, got {other:?}"),
    }
    let violations = cp.violations(10).await.expect("violations");
    assert_eq!(violations.len(), 1);
    assert_eq!((violations[0].stage.as_str(), violations[0].decision.as_str()), ("submit", "deny"));
    let event = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            let event = events.recv().await.unwrap();
            if event.kind == EventKind::PolicyViolation {
                return event;
            }
        }
    })
    .await
    .expect("a policy_violation event");
    assert_eq!(event.data["policy"], "payload_size_policy");
    assert_eq!(cp.get_stats().await.unwrap().scheduler["pending_tasks"], 0, "nothing was stored");
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_region_policy_routes_sensitive_work_only_to_approved_agents() {
    let cp = coordinator(None).await;
    aragora_cp_tests::install_example(&cp, "region_policy");
    let eu = RegisterRequest {
        agent_id: "eu".into(),
        metadata: json!({"region": "eu-west-1"}).as_object().unwrap().clone(),
        ..Default::default()
    };
    let us = RegisterRequest {
        agent_id: "us".into(),
        capabilities: vec!["region:approved".into()],
        metadata: json!({"region": "us-east-1"}).as_object().unwrap().clone(),
        ..Default::default()
    };
    let eu = cp.register_agent(eu).await.unwrap().agent;
    let us = cp.register_agent(us).await.unwrap().agent;
    assert!(eu.capabilities.contains("region:approved"), "granted from its region");
    assert!(!us.capabilities.contains("region:approved"), "a self-declared approval is taken away");

    let sensitive = SubmitRequest {
        task_type: "code".into(),
        metadata: Some(json!({"sensitive": "true"}).as_object().unwrap().clone()),
        ..Default::default()
    };
    let task_id = cp.submit_task(sensitive, "tester").await.unwrap().task_id;
    let task = cp.get_task(&task_id).await.unwrap();
    assert_eq!(task.required_capabilities, CapabilitySet::from_normalized(vec!["region:approved".into()]));
    assert!(cp.claim_task(&claim("us", 0)).await.unwrap().tasks.is_empty());
    assert_eq!(cp.claim_task(&claim("eu", 0)).await.unwrap().tasks[0].task_id, task_id);
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_result_returns_when_the_task_completes() {
    let cp = coordinator(None).await;
    register(&cp, "a", &[]).await;
    let task_id = submit(&cp, "code").await;
    let waiter = {
        let cp = cp.clone();
        let task_id = task_id.clone();
        // A deadline far past the test's own bound: only the completion's event can end this wait in time.
        tokio::spawn(async move { cp.wait_for_result(&task_id, Duration::from_secs(3600)).await.unwrap() })
    };
    let granted = cp.claim_task(&claim("a", 0)).await.unwrap().tasks.remove(0);
    let lease = Fence::Lease(granted.lease_id.clone().unwrap());
    cp.complete_task(&task_id, &lease, json!({"answer": 42})).await.unwrap();
    let done = tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("woken by the completion's event, not by its deadline")
        .unwrap();
    assert_eq!(done.status, TaskStatus::Completed);
    assert_eq!(done.result, Some(json!({"answer": 42}).into()));
    let stats = cp.get_stats().await.unwrap();
    assert_eq!(stats.scheduler["by_status"]["completed"], 1);
    assert_eq!(stats.registry["total_agents"], 1);
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_agent_applies_the_strategy_to_available_agents() {
    let cp = coordinator(None).await;
    for agent in ["a", "b", "c"] {
        register(&cp, agent, &["code"]).await;
    }
    load(&cp, "a", 2).await;
    load(&cp, "b", 1).await;
    let code = CapabilitySet::from_normalized(vec!["code".into()]);
    let chosen = cp.select_agent(&code, None, &[], true).await.unwrap().unwrap();
    assert_eq!(chosen.agent_id, "c");
    let without_c = cp.select_agent(&code, Some("least_loaded"), &["c".into()], true).await.unwrap().unwrap();
    assert_eq!(without_c.agent_id, "b");
    let nobody = cp.select_agent(&CapabilitySet::from_normalized(vec!["judge".into()]), None, &[], true).await.unwrap();
    assert!(nobody.is_none());
    assert!(matches!(cp.select_agent(&code, Some("nope"), &[], true).await, Err(EngineError::UnknownStrategy(_))));
    cp.shutdown().await;
}

/// A tiny HTTP server answering every request with `status`; returns its port.
fn http_server(status: &'static str) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let mut buffer = [0u8; 1024];
            let _ = stream.read(&mut buffer);
            let _ = write!(stream, "HTTP/1.1 {status}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        }
    });
    port
}

/// A coordinator on the memory store with the built-in health probe, `heartbeat_probe`, built from `plugins/`.
async fn probing_coordinator(config: Config) -> Arc<ControlPlaneCoordinator> {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new(config.store_config(), Arc::new(SystemClock::default())));
    let plugins = Arc::new(PluginRegistry::new(runtime(), config.server_id.clone()).unwrap());
    plugins
        .install(
            "heartbeat_probe",
            PluginSource::File,
            &guest_bytes("heartbeat_probe"),
            example_manifest("heartbeat_probe"),
        )
        .unwrap();
    ControlPlaneCoordinator::with_parts(config, store, plugins).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_judge_agents_by_heartbeat_and_http_and_unhealthy_agents_get_no_work() {
    let mut config = Config::default();
    config.probes.allowed_hosts = vec!["127.0.0.1".into()];
    let cp = probing_coordinator(config).await;
    let failing = http_server("503 Service Unavailable");
    let working = http_server("200 OK");
    for (agent, url) in [
        ("down", Some(format!("http://127.0.0.1:{failing}/health"))),
        ("up", Some(format!("http://127.0.0.1:{working}/health"))),
        ("metadata", Some("http://169.254.169.254/latest/meta-data".to_string())),
        ("plain", None),
    ] {
        let request = RegisterRequest { agent_id: agent.into(), health_url: url, ..Default::default() };
        cp.register_agent(request).await.unwrap();
    }
    assert_eq!(cp.probe_now().await, 4);

    let down = cp.get_agent_health("down").await.unwrap();
    assert_eq!(down.status.as_str(), "unhealthy", "{}", down.message);
    assert!(down.message.contains("503"), "{}", down.message);
    assert_eq!(cp.get_agent_health("up").await.unwrap().status.as_str(), "healthy");
    assert_eq!(cp.get_agent_health("plain").await.unwrap().status.as_str(), "healthy");
    let metadata = cp.get_agent_health("metadata").await.unwrap();
    assert_eq!(metadata.status.as_str(), "unhealthy");
    assert!(metadata.message.contains("refused address"), "{}", metadata.message);

    submit(&cp, "code").await;
    let refused = cp.claim_task(&claim("down", 0)).await.unwrap();
    assert!(refused.tasks.is_empty());
    assert_eq!(refused.reason.as_deref(), Some("unhealthy"));
    assert_eq!(cp.claim_task(&claim("up", 0)).await.unwrap().tasks.len(), 1);

    let system = cp.get_system_health().await.unwrap();
    assert_eq!(system.status, "degraded");
    assert_eq!(system.agents.len(), 4);
    assert_eq!(cp.get_stats().await.unwrap().health["healthy_count"], 2);
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_check_verifies_the_certificate_against_its_roots_and_the_url_host() {
    use aragora_cp::health::http_check::{ProbeTrust, check};
    use aragora_cp_tests::tls_server::{TEST_CA, serve};
    let timeout = Duration::from_secs(10);
    let trust = ProbeTrust::with_pem(TEST_CA.as_bytes()).unwrap();
    assert_eq!(trust.added(), 1);
    for close_notify in [true, false] {
        let port = serve("200 OK", close_notify).await;
        let allowed = vec![format!("localhost:{port}")];
        let answer = check(&format!("https://localhost:{port}/health"), &allowed, &trust, timeout).await;
        assert_eq!(answer.error, None, "close_notify {close_notify}");
        assert_eq!(answer.status, Some(200), "close_notify {close_notify}");
        assert_eq!(answer.body_prefix, "all is ok\n", "close_notify {close_notify}");
    }

    let port = serve("200 OK", true).await;
    let allowed = vec![format!("localhost:{port}"), format!("127.0.0.1:{port}")];
    // Mozilla's roots alone do not know the test authority.
    let untrusted = check(&format!("https://localhost:{port}/"), &allowed, &ProbeTrust::public(), timeout).await;
    assert_eq!(untrusted.status, None);
    let error = untrusted.error.expect("an untrusted certificate fails the check");
    assert!(error.contains("TLS with localhost") && error.contains("UnknownIssuer"), "{error}");
    // Trusted, but issued for `localhost`: the URL's host is what it must name, here an address.
    let by_address = check(&format!("https://127.0.0.1:{port}/"), &allowed, &trust, timeout).await;
    assert_eq!(by_address.status, None);
    let error = by_address.error.expect("a certificate for another name fails the check");
    assert!(error.contains("not valid for name \"127.0.0.1\""), "{error}");
    // The address rules come first: loopback is refused unless allowed, before any handshake.
    let refused = check(&format!("https://localhost:{port}/"), &[], &trust, timeout).await;
    assert!(refused.error.expect("refused").contains("loopback"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_judge_an_https_health_url_by_its_answer_and_its_certificate() {
    use aragora_cp::health::http_check::ProbeTrust;
    use aragora_cp_tests::tls_server::{TEST_CA, serve};
    let mut config = Config::default();
    config.probes.allowed_hosts = vec!["localhost".into(), "127.0.0.1".into()];
    config.probes.trust = ProbeTrust::with_pem(TEST_CA.as_bytes()).unwrap();
    let cp = probing_coordinator(config).await;
    let working = serve("200 OK", false).await;
    let failing = serve("503 Service Unavailable", true).await;
    for (agent, url) in [
        ("up", format!("https://localhost:{working}/health")),
        ("down", format!("https://localhost:{failing}/health")),
        ("wrong-name", format!("https://127.0.0.1:{working}/health")),
    ] {
        let request = RegisterRequest { agent_id: agent.into(), health_url: Some(url), ..Default::default() };
        cp.register_agent(request).await.unwrap();
    }
    assert_eq!(cp.probe_now().await, 3);

    let up = cp.get_agent_health("up").await.unwrap();
    assert_eq!(up.status.as_str(), "healthy", "{}", up.message);
    let down = cp.get_agent_health("down").await.unwrap();
    assert_eq!(down.status.as_str(), "unhealthy", "{}", down.message);
    assert!(down.message.contains("503"), "{}", down.message);
    let wrong_name = cp.get_agent_health("wrong-name").await.unwrap();
    assert_eq!(wrong_name.status.as_str(), "unhealthy", "{}", wrong_name.message);
    assert!(wrong_name.message.contains("not valid for name"), "{}", wrong_name.message);
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeued_work_reaches_a_claim_that_is_already_blocked() {
    let cp = coordinator(None).await;
    register(&cp, "first", &[]).await;
    register(&cp, "second", &[]).await;
    let task_id = submit(&cp, "code").await;
    let held = cp.claim_task(&claim("first", 0)).await.unwrap().tasks.remove(0);
    // "second" blocks with nothing pending; then "first" fails its task with requeue.
    let waiting = block_claims(&cp, &["second"]).await;
    let failure = aragora_cp::model::FailRequest { error: "crash".into(), requeue: true, kind: Default::default() };
    cp.fail_task(&task_id, &Fence::Lease(held.lease_id.unwrap()), &failure).await.unwrap();
    assert_eq!(receiver_of(waiting, &task_id).await, "second", "the requeued task was routed, not left to a poll");
    cp.shutdown().await;
}
