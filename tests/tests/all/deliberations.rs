//! Deliberations queued for a worker (DESIGN §10), on memory and Redis, with the test as the deliberation agent
//! over HTTP: async queued → running → completed with the worker's decision, read by id, status and transcript,
//! and listed; the synchronous form answering with the decision, or 408 then `timeout` when no worker comes; bad
//! ids and modes refused with clear errors.

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
    let agent = json!({"agent_id": "deliberator", "capabilities": ["deliberation"]});
    call(&server, Method::POST, "/agents", Some(agent)).await;
    // A worker waiting in a claim answers while the request waits.
    let worker = {
        let (base, token) = (server.base.clone(), server.admin());
        tokio::spawn(async move { DeliberationAgent { base, token }.decide().await })
    };
    let request = json!({"content": "Friday?", "timeout_seconds": 20});
    let (status, decided) = call(&server, Method::POST, "/deliberations", Some(request)).await;
    assert_eq!(status, StatusCode::OK, "{decided}");
    assert_eq!((decided["status"].as_str(), decided["answer"].as_str()), (Some("completed"), Some("Ship on Monday")));
    worker.await.unwrap();

    // Nobody to decide: 408 with the request id, and the session reads timeout.
    let request = json!({"content": "Friday again?", "mode": "sync", "timeout_seconds": 1,
                         "required_capabilities": ["nobody-has-this"]});
    let (status, problem) = call(&server, Method::POST, "/deliberations", Some(request)).await;
    assert_eq!((status, problem["code"].as_str()), (StatusCode::REQUEST_TIMEOUT, Some("deliberation_timeout")));
    let request_id = problem["request_id"].as_str().expect("the request id to poll");
    let (_, read) = call(&server, Method::GET, &format!("/deliberations/{request_id}"), None).await;
    assert_eq!(read["status"], "timeout", "{read}");

    for (body, code) in [
        (json!({"content": "x", "mode": "orchestrated"}), "not_implemented"),
        (json!({"content": "x", "mode": "later"}), "validation_error"),
        (json!({"content": "  ", "async": true}), "validation_error"),
        (json!({"decision_type": "debate"}), "validation_error"),
    ] {
        let (status, problem) = call(&server, Method::POST, "/deliberations", Some(body.clone())).await;
        assert!(status.is_client_error() || status == StatusCode::NOT_IMPLEMENTED, "{body}: {status}");
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

/// A deliberation agent in another task: a plain HTTP client on the server's address that claims the next
/// deliberation (waiting for it) and completes it with a decision.
struct DeliberationAgent {
    base: String,
    token: String,
}

impl DeliberationAgent {
    async fn decide(&self) {
        let client = reqwest::Client::new();
        let api = |path: &str| format!("{}{}{path}", self.base, aragora_cp::api::PREFIXES[0]);
        let claimed: Value = client
            .post(api("/tasks/claim"))
            .bearer_auth(&self.token)
            .json(&json!({"agent_id": "deliberator", "block_ms": 20_000}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let task = &claimed["task"];
        let decision = json!({"lease_id": task["lease_id"], "result": {"answer": "Ship on Monday"}});
        let path = format!("/tasks/{}/complete", task["task_id"].as_str().unwrap());
        let done = client.post(api(&path)).bearer_auth(&self.token).json(&decision).send().await.unwrap();
        assert!(done.status().is_success());
    }
}
