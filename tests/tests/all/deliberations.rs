//! Deliberations (DESIGN §10), on memory and Redis, with the test's tasks as agents over HTTP. Queued for a worker:
//! async queued → running → completed with the worker's decision, read by id, status and transcript, and listed;
//! the synchronous form answering with the decision, or 408 then `timeout` when no worker comes; bad ids and modes
//! refused with clear errors. Orchestrated: a majority among three distinct agents over two rounds, a judge, a
//! participant that vanishes mid-round replaced, a session that runs out of time, and the refusals.

use aragora_cp::config::Config;
use aragora_cp_tests::redis_server::unique_prefix;
use aragora_cp_tests::server::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn call(server: &TestServer, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    server.call(&server.admin(), method, path, body).await
}

async fn queued_then_running_then_completed(server: TestServer) {
    let agent = json!({"agent_id": "deliberator", "capabilities": ["deliberation"]});
    call(&server, Method::POST, "/agents", Some(agent)).await;
    let request = json!({"content": "Should we ship on Friday?", "decision_type": "debate", "async": true,
                         "priority": "high", "metadata": {"team": "release"}});
    let (status, queued) = call(&server, Method::POST, "/deliberations", Some(request)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{queued}");
    assert_eq!(queued["status"], "queued");
    let request_id = queued["request_id"].as_str().unwrap().to_string();
    let task_id = queued["task_id"].as_str().unwrap();
    assert_eq!((request_id.len(), &request_id[4..]), (36, &task_id[5..]), "the ids share their digits");
    let (_, task) = call(&server, Method::GET, &format!("/tasks/{task_id}"), None).await;
    assert_eq!((task["task_type"].as_str(), task["priority"].as_str()), (Some("deliberation"), Some("high")));
    assert_eq!(task["required_capabilities"], json!(["deliberation"]));
    assert_eq!(task["payload"]["content"], "Should we ship on Friday?");

    let session = |suffix: &str| format!("/deliberations/{request_id}{suffix}");
    let (_, status) = call(&server, Method::GET, &session("/status"), None).await;
    assert_eq!((status["status"].as_str(), status["done"].as_bool()), (Some("queued"), Some(false)), "{status}");
    let (_, read) = call(&server, Method::GET, &session(""), None).await;
    assert_eq!((read["status"].as_str(), &read["answer"]), (Some("queued"), &Value::Null), "{read}");

    // The worker takes it: running, with the agent named.
    let claim = json!({"agent_id": "deliberator", "block_ms": 0});
    let (_, claimed) = call(&server, Method::POST, "/tasks/claim", Some(claim)).await;
    let (_, read) = call(&server, Method::GET, &session(""), None).await;
    assert_eq!((read["status"].as_str(), read["agent_id"].as_str()), (Some("running"), Some("deliberator")));
    let (_, running) = call(&server, Method::GET, "/deliberations?status=running", None).await;
    assert_eq!((running["total"].as_u64(), &running["deliberations"][0]["request_id"]), (Some(1), &json!(request_id)));
    for other in ["queued", "completed", "failed", "timeout"] {
        let (_, listed) = call(&server, Method::GET, &format!("/deliberations?status={other}"), None).await;
        assert_eq!(listed["total"], 0, "{other}: {listed}");
    }
    let decision = json!({"lease_id": claimed["task"]["lease_id"], "result": {
        "answer": "Ship on Monday", "confidence": 0.8, "consensus_reached": true, "reasoning": "Nobody watches",
        "agent_contributions": [{"agent_id": "deliberator", "position": "Monday"}]}});
    let (status, _) = call(&server, Method::POST, &format!("/tasks/{task_id}/complete"), Some(decision)).await;
    assert_eq!(status, StatusCode::OK);

    let (_, done) = call(&server, Method::GET, &session(""), None).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!((done["answer"].as_str(), done["confidence"].as_f64()), (Some("Ship on Monday"), Some(0.8)));
    assert_eq!((done["consensus_reached"].as_bool(), done["decision_type"].as_str()), (Some(true), Some("debate")));
    assert!(done["duration_seconds"].as_f64().is_some_and(|s| s >= 0.0), "{done}");
    let (_, transcript) = call(&server, Method::GET, &session("/transcript"), None).await;
    assert_eq!(transcript["rounds"][0]["contributions"][0]["position"], "Monday", "{transcript}");
    let (_, status) = call(&server, Method::GET, &session("/status"), None).await;
    assert_eq!((status["status"].as_str(), status["done"].as_bool()), (Some("completed"), Some(true)));

    let (_, listed) = call(&server, Method::GET, "/deliberations?status=completed", None).await;
    assert_eq!(listed["total"], 1, "{listed}");
    assert_eq!(listed["deliberations"][0]["request_id"], request_id.as_str());
    let (_, none) = call(&server, Method::GET, "/deliberations?status=queued", None).await;
    assert_eq!(none["total"], 0);
    // Read by the task id too; an ordinary task is no deliberation.
    assert_eq!(call(&server, Method::GET, &format!("/deliberations/{task_id}"), None).await.0, StatusCode::OK);
    let plain = json!({"task_type": "code"});
    let (_, submitted) = call(&server, Method::POST, "/tasks", Some(plain)).await;
    let plain_id = submitted["task_id"].as_str().unwrap();
    let (status, problem) = call(&server, Method::GET, &format!("/deliberations/{plain_id}"), None).await;
    assert_eq!((status, problem["code"].as_str()), (StatusCode::NOT_FOUND, Some("deliberation_not_found")));
    server.stop().await;
}

#[tokio::test]
async fn a_queued_deliberation_is_queued_then_running_then_completed_with_the_workers_decision_on_memory() {
    queued_then_running_then_completed(TestServer::start().await).await;
}

#[tokio::test]
async fn a_queued_deliberation_is_queued_then_running_then_completed_with_the_workers_decision_on_redis() {
    queued_then_running_then_completed(TestServer::start_on_redis(Config::default(), &unique_prefix("delib")).await)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synchronous_deliberation_answers_with_the_decision_or_408_then_reads_timeout() {
    let server = TestServer::start().await;
    // A worker waiting in a claim answers while the request waits.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let monday = |_: &Value| json!("Ship on Monday");
    let worker = Participant { id: "deliberator", capabilities: vec!["deliberation"], answer: monday, vanish: false }
        .spawn(&server, &stop);
    let request = json!({"content": "Friday?", "timeout_seconds": 20});
    let (status, decided) = call(&server, Method::POST, "/deliberations", Some(request)).await;
    assert_eq!(status, StatusCode::OK, "{decided}");
    assert_eq!((decided["status"].as_str(), decided["answer"].as_str()), (Some("completed"), Some("Ship on Monday")));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(worker.await.unwrap(), 1, "the worker decided it");

    // Nobody to decide: 408 with the request id, and the session reads timeout.
    let request = json!({"content": "Friday again?", "mode": "sync", "timeout_seconds": 1,
                         "required_capabilities": ["nobody-has-this"]});
    let (status, problem) = call(&server, Method::POST, "/deliberations", Some(request)).await;
    assert_eq!((status, problem["code"].as_str()), (StatusCode::REQUEST_TIMEOUT, Some("deliberation_timeout")));
    let request_id = problem["request_id"].as_str().expect("the request id to poll");
    let (_, read) = call(&server, Method::GET, &format!("/deliberations/{request_id}"), None).await;
    assert_eq!(read["status"], "timeout", "{read}");

    for (body, code) in [
        (json!({"content": "x", "mode": "later"}), "validation_error"),
        (json!({"content": "  ", "async": true}), "validation_error"),
        (json!({"decision_type": "debate"}), "validation_error"),
    ] {
        let (status, problem) = call(&server, Method::POST, "/deliberations", Some(body.clone())).await;
        assert!(status.is_client_error(), "{body}: {status}");
        assert_eq!(problem["code"], code, "{body}: {problem}");
    }
    let (status, _) = call(&server, Method::GET, "/deliberations/req_nothex", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let missing = "/deliberations/req_00000000000000000000000000000000/status";
    assert_eq!(call(&server, Method::GET, missing, None).await.0, StatusCode::NOT_FOUND);
    let (status, _) = call(&server, Method::GET, "/deliberations?status=lost", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    server.stop().await;
}

/// An agent in another task, a plain HTTP client of the server: registers, claims until told to stop, and
/// answers each task (a queued deliberation, or an orchestrated round task) with `answer(payload)`. With `vanish`, it takes its first task and disappears with
/// it (no answer, no more claims or heartbeats), like a killed process.
struct Participant {
    id: &'static str,
    capabilities: Vec<&'static str>,
    answer: fn(&Value) -> Value,
    vanish: bool,
}

impl Participant {
    fn spawn(
        self,
        server: &TestServer,
        stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> tokio::task::JoinHandle<usize> {
        let (base, token, stop) = (server.base.clone(), server.admin(), stop.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let api = |path: &str| format!("{base}{}{path}", aragora_cp::api::PREFIXES[0]);
            let agent = json!({"agent_id": self.id, "capabilities": self.capabilities});
            client.post(api("/agents")).bearer_auth(&token).json(&agent).send().await.unwrap();
            let mut answered = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let claim = json!({"agent_id": self.id, "block_ms": 300});
                let response = client.post(api("/tasks/claim")).bearer_auth(&token).json(&claim).send().await.unwrap();
                let claimed: Value = response.json().await.unwrap_or(Value::Null);
                let task = &claimed["task"];
                let Some(task_id) = task["task_id"].as_str() else { continue };
                if self.vanish {
                    return answered;
                }
                let result = json!({"answer": (self.answer)(&task["payload"]), "confidence": 0.9,
                                    "reasoning": format!("{} thought about it", self.id)});
                let done = json!({"lease_id": task["lease_id"], "result": result});
                client
                    .post(api(&format!("/tasks/{task_id}/complete")))
                    .bearer_auth(&token)
                    .json(&done)
                    .send()
                    .await
                    .unwrap();
                answered += 1;
            }
            answered
        })
    }
}

/// Says `ship` unless it is `c` proposing; revising, it takes the view most positions hold.
fn ship_mostly(payload: &Value) -> Value {
    if payload["phase"] == "propose" {
        return json!("ship");
    }
    let mut ship = usize::from(payload["own_position"]["answer"] == "ship");
    ship += payload["positions"].as_array().unwrap().iter().filter(|p| p["answer"] == "ship").count();
    json!(if ship * 2 > payload["positions"].as_array().unwrap().len() + 1 { "ship" } else { "wait" })
}

fn says_wait_first(payload: &Value) -> Value {
    if payload["phase"] == "propose" { json!("wait") } else { ship_mostly(payload) }
}

fn judge(payload: &Value) -> Value {
    assert_eq!(payload["phase"], "judge");
    json!(format!("judged {} positions", payload["positions"].as_array().unwrap().len()))
}

async fn wait_until_done(server: &TestServer, request_id: &str) -> Value {
    let started = std::time::Instant::now();
    loop {
        let (_, session) = call(server, Method::GET, &format!("/deliberations/{request_id}"), None).await;
        if !["queued", "running"].contains(&session["status"].as_str().unwrap_or("")) {
            return session;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "still {session}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn orchestrated_majority(server: TestServer) {
    let mut events = server.coordinator.subscribe();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = [("a", ship_mostly as fn(&Value) -> Value), ("b", ship_mostly), ("c", says_wait_first)]
        .into_iter()
        .map(|(id, answer)| {
            Participant { id, capabilities: vec!["deliberation"], answer, vanish: false }.spawn(&server, &stop)
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let request = json!({"content": "Ship on Friday?", "mode": "orchestrated", "agents": 3, "rounds": 2,
                         "decide": "majority", "timeout_seconds": 60});
    let (status, session) = call(&server, Method::POST, "/deliberations", Some(request)).await;
    assert_eq!(status, StatusCode::OK, "{session}");
    assert_eq!(
        (session["status"].as_str(), session["answer"].as_str()),
        (Some("completed"), Some("ship")),
        "{session}"
    );
    assert_eq!(
        (session["consensus_reached"].as_bool(), session["decided_by"].as_str()),
        (Some(true), Some("majority"))
    );
    let mut participants: Vec<&str> =
        session["participants"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    participants.sort_unstable();
    assert_eq!(participants, ["a", "b", "c"], "three distinct agents took part");
    let request_id = session["request_id"].as_str().unwrap();
    let (_, transcript) = call(&server, Method::GET, &format!("/deliberations/{request_id}/transcript"), None).await;
    let rounds = transcript["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 2, "{transcript}");
    for round in rounds {
        let mut agents: Vec<&str> =
            round["contributions"].as_array().unwrap().iter().map(|c| c["agent_id"].as_str().unwrap()).collect();
        agents.sort_unstable();
        agents.dedup();
        assert_eq!(agents.len(), 3, "each round's slots went to distinct agents: {round}");
    }
    assert_eq!(rounds[0]["phase"], "propose");
    assert!(rounds[0]["contributions"].as_array().unwrap().iter().any(|c| c["answer"] == "wait"), "c proposed wait");
    assert!(rounds[1]["contributions"].as_array().unwrap().iter().all(|c| c["answer"] == "ship"), "c was persuaded");
    // The round tasks are ordinary tasks, addressed to their participants.
    let (_, page) = call(&server, Method::GET, "/tasks?task_type=deliberation.revise", None).await;
    let revised = page["tasks"].as_array().unwrap();
    assert_eq!(revised.len(), 3, "{page}");
    for task in revised {
        let agent = task["assigned_agent"].as_str().unwrap();
        assert!(task["required_capabilities"].as_array().unwrap().contains(&json!(format!("agent:{agent}"))), "{task}");
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for worker in workers {
        assert!(worker.await.unwrap() >= 2);
    }
    let mut kinds = Vec::new();
    while let Ok(event) = events.try_recv() {
        kinds.push(event.kind.as_str());
    }
    for kind in ["deliberation_started", "round_completed", "consensus_reached"] {
        assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
    }
    assert_eq!(kinds.iter().filter(|k| **k == "round_completed").count(), 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orchestrated_deliberation_decides_by_majority_with_three_distinct_agents_on_memory() {
    orchestrated_majority(TestServer::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orchestrated_deliberation_decides_by_majority_with_three_distinct_agents_on_redis() {
    orchestrated_majority(TestServer::start_on_redis(Config::default(), &unique_prefix("delib-orch")).await).await;
}

fn quick_to_notice_silence() -> Config {
    Config { heartbeat_timeout: std::time::Duration::from_secs(1), ..Config::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_judge_decides_and_a_vanished_participant_is_replaced_on_memory() {
    judge_and_vanished_participant(TestServer::start_with(quick_to_notice_silence()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_judge_decides_and_a_vanished_participant_is_replaced_on_redis() {
    let server = TestServer::start_on_redis(quick_to_notice_silence(), &unique_prefix("delib-judge")).await;
    judge_and_vanished_participant(server).await;
}

async fn judge_and_vanished_participant(server: TestServer) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // `lost` takes its round task and is never heard of again; `d` arrives after the session chose its three.
    let lost = Participant { id: "lost", capabilities: vec!["deliberation"], answer: ship_mostly, vanish: true }
        .spawn(&server, &stop);
    let mut workers = Vec::new();
    for id in ["a", "b"] {
        workers.push(
            Participant { id, capabilities: vec!["deliberation"], answer: ship_mostly, vanish: false }
                .spawn(&server, &stop),
        );
    }
    workers
        .push(Participant { id: "j", capabilities: vec!["judge"], answer: judge, vanish: false }.spawn(&server, &stop));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let request = json!({"content": "Which release?", "mode": "orchestrated", "async": true, "agents": 3,
                         "rounds": 1, "decide": "judge", "strategy": "round_robin", "timeout_seconds": 60,
                         "round_timeout_seconds": 30});
    let (status, queued) = call(&server, Method::POST, "/deliberations", Some(request)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{queued}");
    assert_eq!(lost.await.unwrap(), 0, "lost took its task and vanished");
    workers.push(
        Participant { id: "d", capabilities: vec!["deliberation"], answer: ship_mostly, vanish: false }
            .spawn(&server, &stop),
    );
    let session = wait_until_done(&server, queued["request_id"].as_str().unwrap()).await;
    assert_eq!(session["status"], "completed", "{session}");
    assert_eq!(session["answer"], "judged 3 positions", "{session}");
    assert_eq!(session["decided_by"], "judge");
    let participants = session["participants"].as_array().unwrap();
    assert_eq!(participants.len(), 3, "{session}");
    assert!(!participants.contains(&json!("lost")), "the vanished agent's slot went to another: {session}");
    assert!(participants.contains(&json!("d")), "{session}");
    let (_, transcript) = call(
        &server,
        Method::GET,
        &format!("/deliberations/{}/transcript", queued["request_id"].as_str().unwrap()),
        None,
    )
    .await;
    let rounds = transcript["rounds"].as_array().unwrap();
    assert_eq!((rounds.len(), rounds[1]["phase"].as_str()), (2, Some("judge")), "{transcript}");
    assert_eq!(rounds[1]["contributions"][0]["agent_id"], "j");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for worker in workers {
        worker.await.unwrap();
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orchestrated_deliberation_refuses_clearly_and_times_out_with_408_on_memory() {
    refusals_and_timeout(TestServer::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orchestrated_deliberation_refuses_clearly_and_times_out_with_408_on_redis() {
    refusals_and_timeout(TestServer::start_on_redis(Config::default(), &unique_prefix("delib-timeout")).await).await;
}

async fn refusals_and_timeout(server: TestServer) {
    let (status, problem) =
        call(&server, Method::POST, "/deliberations", Some(json!({"content": "x", "mode": "orchestrated"}))).await;
    assert_eq!((status, problem["code"].as_str()), (StatusCode::CONFLICT, Some("not_enough_agents")), "{problem}");
    for body in [
        json!({"content": "x", "mode": "orchestrated", "agents": 0}),
        json!({"content": "x", "mode": "orchestrated", "rounds": 9}),
        json!({"content": "x", "mode": "orchestrated", "decide": "coin"}),
        json!({"content": "x", "mode": "orchestrated", "required_capabilities": []}),
        json!({"content": "x", "async": true, "agents": 3}),
    ] {
        let (status, problem) = call(&server, Method::POST, "/deliberations", Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {problem}");
    }
    // Sessions are for the servers' orchestrators: an agent may not ask for them, nor for another's address.
    for capability in ["deliberation.orchestrate", "agent:x"] {
        let agent = json!({"agent_id": "sneaky", "capabilities": ["deliberation", capability]});
        let (status, problem) = call(&server, Method::POST, "/agents", Some(agent)).await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("validation_error")),
            "{problem}"
        );
    }
    // Agents that never answer: the caller gets 408 with the request id, and the session reads timeout.
    for id in ["x", "y"] {
        let agent = json!({"agent_id": id, "capabilities": ["deliberation"]});
        call(&server, Method::POST, "/agents", Some(agent)).await;
    }
    let request = json!({"content": "Anyone?", "mode": "orchestrated", "agents": 2, "timeout_seconds": 2});
    let (status, problem) = call(&server, Method::POST, "/deliberations", Some(request)).await;
    assert_eq!((status, problem["code"].as_str()), (StatusCode::REQUEST_TIMEOUT, Some("deliberation_timeout")));
    let request_id = problem["request_id"].as_str().unwrap();
    let session = wait_until_done(&server, request_id).await;
    assert_eq!(session["status"], "timeout", "{session}");
    // Its round tasks were withdrawn with it.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (_, page) = call(&server, Method::GET, "/tasks?task_type=deliberation.propose&status=pending", None).await;
    assert_eq!(page["tasks"].as_array().map(Vec::len), Some(0), "{page}");
    server.stop().await;
}
