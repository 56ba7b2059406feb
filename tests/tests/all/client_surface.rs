//! The views Aragora's clients read beyond the core API, on a real server: `/tasks/history` (finished tasks with
//! offset paging and filters), `/queue` (running, then waiting), `/health/detailed` (this server's parts and every
//! agent), `/stream` (where the events are). Each under both prefixes, where `history` and `detailed` used to be
//! read as a task id and an agent id.

use aragora_cp::api::Permission;
use aragora_cp_tests::server::TestServer;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn call(server: &TestServer, method: reqwest::Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    server.call(&server.admin(), method, path, body).await
}

async fn post(server: &TestServer, path: &str, body: Value) -> Value {
    let (status, answer) = call(server, reqwest::Method::POST, path, Some(body)).await;
    assert!(status.is_success(), "POST {path}: {status} {answer}");
    answer
}

async fn get(server: &TestServer, path: &str) -> Value {
    let (status, answer) = call(server, reqwest::Method::GET, path, None).await;
    assert_eq!(status, StatusCode::OK, "GET {path}: {answer}");
    answer
}

/// Submits a task of `task_type` (named `name` in its metadata) and returns its id.
async fn submit(server: &TestServer, task_type: &str, name: &str) -> String {
    let task =
        json!({"task_type": task_type, "required_capabilities": ["work"], "metadata": {"name": name, "secret": 1}});
    post(server, "/tasks", task).await["task_id"].as_str().unwrap().to_string()
}

/// Claims the next task for `agent` and returns it.
async fn claim(server: &TestServer, agent: &str) -> Value {
    let claimed = post(server, "/tasks/claim", json!({"agent_id": agent, "block_ms": 0})).await;
    assert!(claimed["task"].is_object(), "{claimed}");
    claimed["task"].clone()
}

#[tokio::test]
async fn history_lists_finished_tasks_newest_first_with_filters_and_offset_paging() {
    let server = TestServer::start().await;
    post(&server, "/agents", json!({"agent_id": "worker", "capabilities": ["work"]})).await;
    // Five tasks end, in this order: completed, failed, completed, cancelled (never claimed), completed.
    let mut ended = Vec::new();
    for (n, outcome) in ["complete", "fail", "complete", "cancel", "complete"].iter().enumerate() {
        let id = submit(&server, if n % 2 == 0 { "even" } else { "odd" }, &format!("task {n}")).await;
        if *outcome == "cancel" {
            post(&server, &format!("/tasks/{id}/cancel"), json!({})).await;
        } else {
            let task = claim(&server, "worker").await;
            assert_eq!(task["task_id"], id.as_str());
            let lease = task["lease_id"].clone();
            let body = match *outcome {
                "complete" => json!({"lease_id": lease, "result": {"n": n}}),
                _ => json!({"lease_id": lease, "error": "no luck", "requeue": false}),
            };
            post(&server, &format!("/tasks/{id}/{outcome}"), body).await;
        }
        ended.push(id);
        // Ends one millisecond apart at least, so their order is their end times' order.
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let pending = submit(&server, "even", "still waiting").await;

    for prefix_path in ["/tasks/history", "/tasks/history?limit=100&offset=0"] {
        let page = get(&server, prefix_path).await;
        let ids: Vec<&str> = page["history"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
        let newest_first: Vec<&str> = ended.iter().rev().map(String::as_str).collect();
        assert_eq!(ids, newest_first, "finished tasks only, the last to end first: {page}");
        assert!(!ids.contains(&pending.as_str()));
        assert_eq!((page["total"].as_u64(), page["has_more"].as_bool()), (Some(5), Some(false)), "{page}");
    }
    let first = &get(&server, "/tasks/history?limit=1").await["history"][0];
    assert_eq!(first["type"], "even");
    assert_eq!(first["status"], "completed");
    assert_eq!(first["result"], json!({"n": 4}));
    assert_eq!(first["assigned_agent"], "worker");
    assert_eq!(first["metadata"], json!({"name": "task 4"}), "only the metadata keys history shows");
    assert!(first["duration_ms"].is_u64(), "{first}");

    let failed = get(&server, "/tasks/history?status=failed").await;
    assert_eq!(failed["history"].as_array().unwrap().len(), 1, "{failed}");
    assert_eq!(
        (failed["history"][0]["error"].as_str(), failed["history"][0]["result"].is_null()),
        (Some("no luck"), true)
    );
    let odd = get(&server, "/tasks/history?task_type=odd").await;
    assert_eq!(odd["total"], 2, "{odd}");
    let paged = get(&server, "/tasks/history?limit=2&offset=2").await;
    let ids: Vec<&str> = paged["history"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [ended[2].as_str(), ended[1].as_str()]);
    assert_eq!(
        (paged["has_more"].as_bool(), paged["offset"].as_u64(), paged["limit"].as_u64()),
        (Some(true), Some(2), Some(2))
    );

    for (query, field) in
        [("status=pending", "status"), ("limit=0", "limit"), ("offset=10001", "offset"), ("offset=x", "offset")]
    {
        let (status, problem) = call(&server, reqwest::Method::GET, &format!("/tasks/history?{query}"), None).await;
        assert_eq!((status, problem["field"].as_str()), (StatusCode::BAD_REQUEST, Some(field)), "{query}: {problem}");
    }
    server.stop().await;
}

#[tokio::test]
async fn the_queue_shows_running_work_first_then_waiting_work() {
    let server = TestServer::start().await;
    post(&server, "/agents", json!({"agent_id": "busy", "capabilities": ["work"], "max_concurrent_tasks": 2})).await;
    let running = submit(&server, "report", "quarterly").await;
    let claimed = submit(&server, "summary", "weekly").await;
    let waiting = submit(&server, "report", "annual").await;
    let task = claim(&server, "busy").await;
    post(
        &server,
        &format!("/tasks/{running}/progress"),
        json!({"lease_id": task["lease_id"], "progress": {"percent": 40}}),
    )
    .await;
    claim(&server, "busy").await;
    let done = submit(&server, "report", "finished").await;
    post(&server, &format!("/tasks/{done}/cancel"), json!({})).await;

    let queue = get(&server, "/queue").await;
    let jobs = queue["jobs"].as_array().unwrap();
    let order: Vec<(&str, &str)> =
        jobs.iter().map(|j| (j["id"].as_str().unwrap(), j["status"].as_str().unwrap())).collect();
    assert_eq!(
        order,
        [(running.as_str(), "running"), (claimed.as_str(), "claimed"), (waiting.as_str(), "pending")],
        "running, then claimed, then pending; nothing finished: {queue}"
    );
    assert_eq!((queue["total"].as_u64(), queue["has_more"].as_bool()), (Some(3), Some(false)));
    assert_eq!(jobs[0]["name"], "quarterly");
    assert_eq!(jobs[0]["type"], "report");
    assert_eq!(jobs[0]["progress"], 0.4, "{}", jobs[0]);
    assert_eq!(jobs[0]["agents_assigned"], json!(["busy"]));
    assert_eq!((jobs[2]["agents_assigned"].clone(), jobs[2]["progress"].as_f64()), (json!([]), Some(0.0)));
    assert_eq!(jobs[2]["priority"], "normal");
    assert!(jobs[2]["created_at"].is_string());

    let one_each = get(&server, "/queue?limit=1").await;
    assert_eq!(one_each["total"], 3, "one per status: {one_each}");
    server.stop().await;
}

#[tokio::test]
async fn detailed_health_names_the_parts_and_every_agent_under_both_prefixes() {
    let server = TestServer::start().await;
    post(&server, "/agents", json!({"agent_id": "probed", "capabilities": ["work"]})).await;
    for url in [server.api("/health/detailed"), server.url("/api/control-plane/health/detailed")] {
        let response = server.client.get(url).bearer_auth(server.admin()).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let health: Value = response.json().await.unwrap();
        let parts: Vec<(&str, &str)> = health["components"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["name"].as_str().unwrap(), c["status"].as_str().unwrap()))
            .collect();
        assert_eq!(parts, [("store", "healthy"), ("plugins", "healthy"), ("scheduler", "healthy")], "{health}");
        assert!(health["agents"]["probed"]["breaker"].is_string(), "{health}");
        assert!(health["uptime_seconds"].is_u64() && health["version"].is_string(), "{health}");
        assert_ne!(health["status"], "unhealthy", "{health}");
    }
    // The fixed path shadows an agent named `detailed` under /health/ only: the agent itself is read as ever.
    post(&server, "/agents", json!({"agent_id": "detailed", "capabilities": ["work"]})).await;
    assert_eq!(get(&server, "/agents/detailed").await["agent_id"], "detailed");

    server.begin_drain();
    let draining = get(&server, "/health/detailed").await;
    assert_eq!(draining["status"], "unhealthy", "a draining server says so: {draining}");
    server.stop().await;
}

#[tokio::test]
async fn stream_info_points_at_the_event_stream_that_answers_there() {
    let server = TestServer::start().await;
    let info = get(&server, "/stream").await;
    assert_eq!(info["transport"], "sse");
    let types: Vec<&str> = info["event_types"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert!(types.contains(&"task_completed") && types.contains(&"breaker_changed"), "{info}");
    let url = info["url"].as_str().unwrap();
    let response = server.client.get(server.url(url)).bearer_auth(server.admin()).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    drop(response);

    server.stop().await;
}

#[tokio::test]
async fn a_read_token_reads_the_views_and_an_agent_token_only_its_own_history() {
    let server = TestServer::start().await;
    post(&server, "/agents", json!({"agent_id": "mine", "capabilities": ["work"]})).await;
    let reader = server.token("dashboard", &[Permission::Read]);
    let agent = server.token("agent:mine", &[Permission::Tasks, Permission::Read]);
    let status = |token: String, path: &'static str| {
        let request = server.client.get(server.api(path)).bearer_auth(token);
        async move { request.send().await.unwrap().status() }
    };
    for path in ["/queue", "/tasks/history", "/health/detailed", "/stream"] {
        assert_eq!(status(reader.clone(), path).await, StatusCode::OK, "a read token reads {path}");
    }
    assert_eq!(status(agent.clone(), "/queue").await, StatusCode::FORBIDDEN, "the operator's view");
    assert_eq!(status(agent.clone(), "/health/detailed").await, StatusCode::FORBIDDEN);
    assert_eq!(status(agent.clone(), "/tasks/history").await, StatusCode::OK, "its own history");
    assert_eq!(status(agent, "/tasks/history?agent_id=someone-else").await, StatusCode::FORBIDDEN);
    server.stop().await;
}

#[tokio::test]
async fn the_metrics_as_json_agree_with_what_happened() {
    let server = TestServer::start().await;
    post(&server, "/agents", json!({"agent_id": "counted", "capabilities": ["work"], "max_concurrent_tasks": 1})).await;
    post(&server, "/agents", json!({"agent_id": "idle", "capabilities": ["other"]})).await;
    for outcome in ["complete", "fail"] {
        let id = submit(&server, "report", outcome).await;
        let task = claim(&server, "counted").await;
        let body = match outcome {
            "complete" => json!({"lease_id": task["lease_id"], "result": {}, "latency_ms": 100}),
            _ => json!({"lease_id": task["lease_id"], "error": "boom", "requeue": false, "latency_ms": 300}),
        };
        post(&server, &format!("/tasks/{id}/{outcome}"), body).await;
    }
    submit(&server, "report", "held").await;
    claim(&server, "counted").await;
    submit(&server, "summary", "waiting").await;

    let summary = get(&server, "/metrics").await;
    assert_eq!(
        summary,
        json!({"active_jobs": 1, "queued_jobs": 1, "completed_jobs": 1, "failed_jobs": 1, "agents_available": 1,
               "agents_busy": 1, "total_agents": 2, "waiting_claims": 0}),
        "counted holds one task at its capacity; idle is available"
    );
    let tasks = get(&server, "/metrics/tasks").await;
    assert_eq!(tasks["by_type"], json!({"report": 3, "summary": 1}), "{tasks}");
    assert_eq!(tasks["pending_by_priority"]["normal"], 1, "{tasks}");
    let system = get(&server, "/metrics/system").await;
    assert_eq!(system["agents_by_status"]["busy"], 1, "{system}");
    assert!(system["store"].as_str().unwrap().starts_with("memory"), "{system}");
    assert!(system["resident_bytes"].as_u64().unwrap() > 1_000_000, "{system}");

    for path in ["/metrics/agents/counted", "/agents/counted/metrics"] {
        let agent = get(&server, path).await;
        assert_eq!((agent["tasks_completed"].as_u64(), agent["tasks_failed"].as_u64()), (Some(1), Some(1)), "{agent}");
        assert_eq!(agent["error_rate"], 0.5, "{agent}");
        assert_eq!((agent["in_flight"].as_u64(), agent["status"].as_str()), (Some(1), Some("busy")), "{agent}");
    }
    let (status, problem) = call(&server, reqwest::Method::GET, "/agents/nobody/metrics", None).await;
    assert_eq!((status, problem["code"].as_str()), (StatusCode::NOT_FOUND, Some("agent_not_found")));
    // The Prometheus text is still at the root.
    let text = server.client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("# TYPE aragora_cp_tasks gauge"), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn violations_are_counted_and_read_one_by_one() {
    let server = TestServer::start().await;
    let policy = "payload_size_policy";
    aragora_cp_tests::install_example(&server.coordinator, policy);
    for _ in 0..2 {
        let big = json!({"task_type": "report", "payload": {"blob": "x".repeat(70_000)}});
        let (status, problem) = call(&server, reqwest::Method::POST, "/tasks", Some(big)).await;
        assert_eq!((status, problem["code"].as_str()), (StatusCode::FORBIDDEN, Some("policy_denied")), "{problem}");
    }
    let stats = get(&server, "/policies/violations/stats").await;
    assert_eq!(
        (stats["total"].as_u64(), stats["open"].as_u64(), stats["resolved"].as_u64()),
        (Some(2), Some(2), Some(0)),
        "{stats}"
    );
    assert_eq!(stats["by_type"], json!({policy: 2}));
    assert_eq!((stats["by_stage"]["submit"].as_u64(), stats["by_decision"]["deny"].as_u64()), (Some(2), Some(2)));

    let listed = get(&server, "/policies/violations").await;
    let id = listed["violations"][0]["id"].as_str().unwrap();
    let one = get(&server, &format!("/policies/violations/{id}")).await;
    assert_eq!(one["violation"], listed["violations"][0], "{one}");
    let (status, problem) = call(&server, reqwest::Method::GET, "/policies/violations/viol_999999", None).await;
    assert_eq!((status, problem["code"].as_str()), (StatusCode::NOT_FOUND, Some("violation_not_found")));

    // A reviewer resolves one with a note (Aragora's `resolution_notes`), acknowledges the other over POST.
    let path = format!("/policies/violations/{id}");
    let change = json!({"status": "resolved", "resolution_notes": "raised the limit for this team"});
    let (status, changed) = call(&server, reqwest::Method::PATCH, &path, Some(change)).await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!((changed["updated"].as_bool(), changed["status"].as_str()), (Some(true), Some("resolved")));
    assert_eq!(changed["violation"]["note"], "raised the limit for this team");
    assert_eq!(changed["violation"]["updated_by"], "admin");
    let other = listed["violations"][1]["id"].as_str().unwrap();
    post(&server, &format!("/policies/violations/{other}"), json!({"status": "acknowledged"})).await;
    assert_eq!(get(&server, &path).await["violation"]["status"], "resolved");
    let stats = get(&server, "/policies/violations/stats").await;
    assert_eq!((stats["open"].as_u64(), stats["resolved"].as_u64()), (Some(0), Some(2)), "{stats}");
    assert_eq!(stats["by_status"], json!({"acknowledged": 1, "resolved": 1}));

    for (body, field) in [
        (json!({"status": "done"}), "status"),
        (json!({"status": "resolved", "note": "a", "resolution_notes": "b"}), "note"),
        (json!({"status": "resolved", "note": "x".repeat(5000)}), "note"),
        (json!({"note": "no status"}), "status"),
    ] {
        let (status, problem) = call(&server, reqwest::Method::PATCH, &path, Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {problem}");
        assert_eq!(problem["field"].as_str(), Some(field), "{body}: {problem}");
    }
    let (status, _) =
        call(&server, reqwest::Method::PATCH, "/policies/violations/viol_999999", Some(json!({"status": "open"})))
            .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let reader = server.token("auditor", &[Permission::Read]);
    let refused = server
        .client
        .patch(server.api(&path))
        .bearer_auth(reader)
        .json(&json!({"status": "open"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN, "a read token does not change violations");
    server.stop().await;
}

#[tokio::test]
async fn breakers_show_state_failures_and_when_a_trial_is_let_through() {
    let config = aragora_cp::config::Config {
        breaker_threshold: 2,
        breaker_cooldown: std::time::Duration::from_secs(30),
        ..Default::default()
    };
    let server = TestServer::start_with(config).await;
    post(&server, "/agents", json!({"agent_id": "shaky", "capabilities": ["work"]})).await;
    post(&server, "/agents", json!({"agent_id": "steady", "capabilities": ["other"]})).await;
    for n in 0..2 {
        let id = submit(&server, "report", &format!("doomed {n}")).await;
        let task = claim(&server, "shaky").await;
        let failure = json!({"lease_id": task["lease_id"], "error": "crashed", "kind": "agent", "requeue": false});
        post(&server, &format!("/tasks/{id}/fail"), failure).await;
    }
    let listed = get(&server, "/breakers").await;
    assert_eq!((listed["total"].as_u64(), listed["open"].as_u64()), (Some(2), Some(1)), "{listed}");
    let shaky = &listed["breakers"][0];
    assert_eq!((shaky["name"].as_str(), shaky["state"].as_str()), (Some("shaky"), Some("open")), "{listed}");
    assert_eq!((shaky["failure_count"].as_u64(), shaky["reset_timeout_ms"].as_u64()), (Some(2), Some(30_000)));
    let opened = chrono::DateTime::parse_from_rfc3339(shaky["opened_at"].as_str().unwrap()).unwrap();
    let trial_at = chrono::DateTime::parse_from_rfc3339(shaky["next_half_open_at"].as_str().unwrap()).unwrap();
    assert_eq!((trial_at - opened).num_milliseconds(), 30_000, "{shaky}");
    let steady = &listed["breakers"][1];
    assert_eq!((steady["state"].as_str(), steady["opened_at"].is_null()), (Some("closed"), true), "{steady}");
    let health = get(&server, "/health/shaky").await;
    assert_eq!((health["breaker"].as_str(), health["breaker_failures"].as_u64()), (Some("open"), Some(2)), "{health}");
    server.stop().await;
}

#[tokio::test]
async fn queue_metrics_show_depth_by_priority_and_signature_the_oldest_wait_and_claim_waits() {
    let server = TestServer::start().await;
    post(&server, "/agents", json!({"agent_id": "worker", "capabilities": ["work"]})).await;
    let empty = get(&server, "/queue/metrics").await;
    assert_eq!(
        (empty["pending"].as_u64(), empty["oldest_pending_age_ms"].clone(), empty["claim_wait"]["samples"].as_u64()),
        (Some(0), Value::Null, Some(0)),
        "{empty}"
    );
    assert_eq!(empty["by_priority"], json!({"critical": 0, "high": 0, "normal": 0, "low": 0}));
    for priority in ["high", "normal", "normal"] {
        post(&server, "/tasks", json!({"task_type": "t", "required_capabilities": ["work"], "priority": priority}))
            .await;
    }
    post(&server, "/tasks", json!({"task_type": "t", "required_capabilities": ["gpu", "work"]})).await;
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    claim(&server, "worker").await;

    for url in [server.api("/queue/metrics"), server.url("/api/control-plane/queue/metrics")] {
        let response = server.client.get(url).bearer_auth(server.admin()).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let metrics: Value = response.json().await.unwrap();
        assert_eq!(metrics["pending"], 3, "{metrics}");
        assert_eq!(
            metrics["by_priority"],
            json!({"critical": 0, "high": 0, "normal": 3, "low": 0}),
            "the high one went first"
        );
        assert_eq!(
            metrics["by_signature"],
            json!([{"capabilities": ["work"], "ready": 2}, {"capabilities": ["gpu", "work"], "ready": 1}]),
            "the deepest first"
        );
        assert!(metrics["oldest_pending_age_ms"].as_u64().unwrap() >= 30, "{metrics}");
        let wait = &metrics["claim_wait"];
        assert_eq!(wait["samples"], 1, "{metrics}");
        assert!(wait["p50_ms"].as_u64().unwrap() >= 30 && wait["p50_ms"] == wait["p99_ms"], "{metrics}");
    }
    server.stop().await;
}

#[tokio::test]
async fn prioritize_moves_a_pending_task_ahead_and_refuses_what_it_cannot_move() {
    let server = TestServer::start().await;
    post(&server, "/agents", json!({"agent_id": "worker", "capabilities": ["work"]})).await;
    let first = submit(&server, "t", "first").await;
    let second = submit(&server, "t", "second").await;
    let moved = post(&server, "/queue/prioritize", json!({"task_id": second, "priority": "urgent"})).await;
    assert_eq!((moved["task_id"].as_str(), moved["priority"].as_str()), (Some(second.as_str()), Some("critical")));
    assert_eq!(claim(&server, "worker").await["task_id"], second.as_str(), "the raised task goes first");

    let refusals = [
        (json!({"task_id": second, "priority": "high"}), StatusCode::CONFLICT, "invalid_transition"),
        (
            json!({"task_id": "task_00000000000000000000000000000000", "priority": "high"}),
            StatusCode::NOT_FOUND,
            "task_not_found",
        ),
        (json!({"task_id": first, "priority": "soonest"}), StatusCode::BAD_REQUEST, "validation_error"),
        (json!({"task_id": first}), StatusCode::BAD_REQUEST, "validation_error"),
        (json!({"task_id": "nope", "priority": "high"}), StatusCode::BAD_REQUEST, "validation_error"),
    ];
    for (body, status, code) in refusals {
        let (got, problem) = call(&server, reqwest::Method::POST, "/queue/prioritize", Some(body.clone())).await;
        assert_eq!((got, problem["code"].as_str()), (status, Some(code)), "{body}: {problem}");
    }
    // Only the submitter or an admin moves a task.
    let stranger = server.token("someone-else", &[Permission::Tasks]);
    let response = server
        .client
        .post(server.api("/queue/prioritize"))
        .bearer_auth(stranger)
        .json(&json!({"task_id": first, "priority": "high"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(get(&server, &format!("/tasks/{first}")).await["priority"], "normal", "a refusal changes nothing");
    server.stop().await;
}
