//! Existing Aragora clients against a live server: the bodies Aragora's own server takes (`latency_ms`,
//! `sla_policy_id`, `requeue` on complete and fail), `total` on every list answer, a 404 that points users at the
//! routes they can read, and the real `aragora-sdk` 2.11.0 (from PyPI) driving a new user's first hour and every
//! method of its control-plane namespace, on the memory store and on Redis.

use aragora_cp::config::Config;

use aragora_cp_tests::python_sdk;
use aragora_cp_tests::redis_server::unique_prefix;
use aragora_cp_tests::server::TestServer;
use serde_json::{Value, json};

async fn send(server: &TestServer, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = server.client.request(method, server.api(path)).bearer_auth(server.admin());
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn claimed_task(server: &TestServer, agent: &str) -> String {
    let register = json!({"agent_id": agent, "capabilities": ["code"]});
    assert_eq!(send(server, reqwest::Method::POST, "/agents", Some(register)).await.0, 201);
    let task = json!({"task_type": "code", "required_capabilities": ["code"]});
    let (status, submitted) = send(server, reqwest::Method::POST, "/tasks", Some(task)).await;
    assert_eq!(status, 201);
    let claim = json!({"agent_id": agent, "block_ms": 0});
    let (_, claimed) = send(server, reqwest::Method::POST, "/tasks/claim", Some(claim)).await;
    assert_eq!(claimed["task"]["task_id"], submitted["task_id"]);
    submitted["task_id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn complete_takes_the_body_aragoras_server_takes_and_the_agents_latency_feeds_its_average() {
    let server = TestServer::start().await;
    let task = claimed_task(&server, "latency-agent").await;
    let body = json!({"result": {"ok": true}, "agent_id": "latency-agent", "latency_ms": 150, "sla_policy_id": "p1"});
    let (status, done) = send(&server, reqwest::Method::POST, &format!("/tasks/{task}/complete"), Some(body)).await;
    assert_eq!((status, done["status"].as_str()), (200, Some("completed")), "{done}");
    let (_, agent) = send(&server, reqwest::Method::GET, "/agents/latency-agent", None).await;
    assert_eq!(agent["avg_latency_ms"], 150.0, "the agent's own figure, not the server's claim-to-complete time");

    let negative = json!({"latency_ms": -1});
    let (status, problem) =
        send(&server, reqwest::Method::POST, &format!("/tasks/{task}/complete"), Some(negative)).await;
    assert_eq!((status, problem["field"].as_str()), (400, Some("latency_ms")), "{problem}");
    server.stop().await;
}

#[tokio::test]
async fn fail_takes_latency_ms_requeue_and_sla_policy_id() {
    let server = TestServer::start().await;
    let task = claimed_task(&server, "failing-agent").await;
    let body = json!({"error": "model refused", "agent_id": "failing-agent", "latency_ms": 80, "requeue": false,
                      "sla_policy_id": "p1"});
    let (status, failed) = send(&server, reqwest::Method::POST, &format!("/tasks/{task}/fail"), Some(body)).await;
    assert_eq!((status, failed["status"].as_str()), (200, Some("failed")), "{failed}");
    server.stop().await;
}

#[tokio::test]
async fn every_list_answer_carries_total() {
    let server = TestServer::start().await;
    claimed_task(&server, "listed-agent").await;
    for (path, key) in
        [("/agents", "agents"), ("/tasks", "tasks"), ("/plugins", "plugins"), ("/policies/violations", "violations")]
    {
        let (status, answer) = send(&server, reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "{path}");
        let listed = answer[key].as_array().unwrap_or_else(|| panic!("{path}: {answer}")).len();
        assert_eq!(answer["total"].as_u64(), Some(listed as u64), "{path}: {answer}");
    }
    server.stop().await;
}

#[tokio::test]
async fn an_unknown_route_points_at_the_guide_and_the_openapi_document() {
    let server = TestServer::start().await;
    let (status, problem) = send(&server, reqwest::Method::GET, "/no/such/route", None).await;
    assert_eq!(status, 404);
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("docs/CONTROL_PLANE.md") && detail.contains("openapi.json"), "{detail}");
    assert!(!detail.contains("DESIGN"), "users have no DESIGN document: {detail}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aragora_sdk_gets_through_a_new_users_first_hour() {
    let server = TestServer::start().await;
    let policy = "payload_size_policy";
    aragora_cp_tests::install_example(&server.coordinator, policy);
    let (base, token) = (server.base.clone(), server.admin());
    let out =
        tokio::task::spawn_blocking(move || python_sdk::run_script("first_hour.py", &base, &token, &[])).await.unwrap();
    assert_eq!(out["list_agents"]["total"], 2, "{out}");
    assert_eq!(out["list_agents"]["ids"], json!(["sdk-agent-1", "sdk-agent-2"]));
    assert_eq!(out["claimed"], true);
    assert_eq!(out["completed_status"], "completed");
    assert_eq!(out["agent_after_complete"]["avg_latency_ms"], 150.0);
    assert_eq!(out["failed_status"], "failed");
    assert_eq!(out["bare_complete_status"], "completed");
    assert_eq!(out["task"]["result"], json!({"ok": true}));
    assert_eq!(out["stats"]["scheduler"]["by_status"]["completed"], 2, "{}", out["stats"]);
    assert_eq!(out["violations_total"], 0);
    assert_eq!(out["history"], json!({"total": 3, "statuses": ["completed", "completed", "failed"]}), "{out}");
    assert_eq!(out["queue_ids"], json!([out["queue_waiting_id"]]), "{out}");
    assert_eq!(out["health_detailed"]["parts"], json!(["store", "plugins", "scheduler"]), "{out}");
    assert_eq!(out["stream_url"], "/api/v1/control-plane/events");
    assert_eq!(
        (out["metrics"]["completed_jobs"].as_u64(), out["metrics"]["total_agents"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(out["task_metrics"]["failed"], 1, "{out}");
    assert!(out["system_metrics_server"].is_string(), "{out}");
    assert_eq!(out["agent_metrics"], json!([1, 1]), "{out}");
    assert_eq!(out["violation_stats_total"], 0);
    assert_eq!(out["breakers"], json!([["sdk-agent-1", "closed"], ["sdk-agent-2", "closed"]]), "{out}");
    assert_ne!(out["oversized"], "accepted", "{out}");
    assert_eq!((out["violation"].as_str(), out["violation_update"].as_str()), (Some(policy), Some("acknowledged")));
    assert_eq!(out["queue_metrics"], json!({"pending": 1, "samples": 3}), "{out}");
    assert_eq!(out["prioritized"], "critical");
    assert_eq!(out["created_policy"], json!(["no-rogue-agents", "rules"]));
    assert_eq!(out["policies"], json!([["no-rogue-agents", "rules"], [policy, "code"]]), "{out}");
    assert_eq!(out["schedule_next"], true, "{out}");
    assert_eq!(out["schedule_read"], "hourly digest");
    assert_eq!(out["schedule_paused"], Value::Null, "paused: no next run");
    assert_eq!((out["schedules_total"].as_u64(), out["schedule_deleted"].as_bool()), (Some(1), Some(true)));
    server.stop().await;
}

/// `demo` used to end with `healthy_count 0` while every agent heartbeated: no probe was loaded, so health stayed
/// `unknown`. The heartbeat probe is a built-in now, overridable and removable like the built-in strategies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeating_fleet_reads_healthy_out_of_the_box_and_the_builtin_probe_can_be_disabled() {
    let server = TestServer::start().await;
    for agent in ["well-1", "well-2", "well-3"] {
        let register = json!({"agent_id": agent, "capabilities": ["code"]});
        assert_eq!(send(&server, reqwest::Method::POST, "/agents", Some(register)).await.0, 201);
        assert_eq!(send(&server, reqwest::Method::POST, &format!("/agents/{agent}/heartbeat"), None).await.0, 200);
    }
    let (_, probe) = send(&server, reqwest::Method::GET, "/plugins/heartbeat_probe", None).await;
    assert_eq!(
        (probe["active"]["kind"].as_str(), probe["active"]["source"].as_str()),
        (Some("health_probe"), Some("builtin"))
    );
    assert_eq!(server.coordinator.probe_now().await, 3);
    let (_, stats) = send(&server, reqwest::Method::GET, "/stats", None).await;
    assert_eq!(stats["health"]["healthy_count"], 3, "{stats}");
    let (_, health) = send(&server, reqwest::Method::GET, "/health", None).await;
    assert_eq!(health["status"], "healthy", "{health}");

    let (status, _) = send(&server, reqwest::Method::POST, "/plugins/heartbeat_probe/disable", None).await;
    assert_eq!(status, 200);
    assert_eq!(server.coordinator.probe_now().await, 0, "a disabled probe judges nobody");
    server.stop().await;
}

/// Top-level keys some answers must carry (the shapes the SDK's users read).
const SHAPES: [(&str, &[&str]); 33] = [
    ("create_deliberation", &["task_id", "request_id", "status"]),
    ("get_deliberation", &["request_id", "status", "decision_type", "answer", "agent_contributions"]),
    ("get_deliberation_status", &["request_id", "status", "done"]),
    ("get_deliberation_transcript", &["request_id", "rounds"]),
    ("list_notifications", &["notifications", "total", "stats"]),
    (
        "get_notification_stats",
        &["total_sent", "successful", "failed", "success_rate", "by_channel", "channels_configured"],
    ),
    ("get_audit", &["entries", "total", "next_cursor"]),
    ("get_audit_stats", &["total", "by_action", "by_actor", "by_outcome"]),
    ("verify_audit", &["valid", "checked", "first_break"]),
    ("get_audit_logs", &["logs", "total", "limit", "offset"]),
    ("get_audit_log", &["id", "seq", "actor", "action", "resource", "outcome", "hash", "prev_hash"]),
    ("list_agents", &["agents", "total"]),
    ("get_agent", &["agent_id", "capabilities", "status"]),
    ("get_health_detailed", &["status", "components"]),
    ("get_breakers", &["breakers"]),
    ("create_task", &["task_id"]),
    ("claim_task", &["task"]),
    ("get_task", &["task_id", "status"]),
    ("get_task_history", &["history", "total", "has_more"]),
    ("get_queue", &["jobs", "total"]),
    ("get_queue_metrics", &["pending", "by_priority", "by_signature", "oldest_pending_age_ms", "claim_wait"]),
    ("prioritize_queue", &["task_id", "priority"]),
    ("get_metrics", &["active_jobs", "queued_jobs", "completed_jobs", "failed_jobs"]),
    ("get_task_metrics", &["by_status"]),
    ("list_violations", &["violations", "total"]),
    ("get_violations_stats", &["total"]),
    ("get_violation", &["violation"]),
    ("create_policy", &["name", "type", "config"]),
    ("list_policies", &["policies", "total"]),
    ("create_schedule", &["schedule_id", "next_run_at", "task"]),
    ("list_schedules", &["schedules", "total"]),
    ("delete_schedule", &["deleted"]),
    ("get_stream_info", &["url"]),
];

/// Runs `every_method.py` against `server` and checks every answer: 2xx with the expected keys; never a method left
/// out.
async fn every_sdk_method_answers(server: TestServer, store: &str) {
    aragora_cp_tests::install_example(&server.coordinator, "payload_size_policy");
    let (base, token) = (server.base.clone(), server.admin());
    let out = tokio::task::spawn_blocking(move || python_sdk::run_script("every_method.py", &base, &token, &[]))
        .await
        .unwrap();
    let results = out.as_object().unwrap();
    assert_eq!(results.len(), 50, "{store}: every method of the namespace: {out}");
    for (method, result) in results {
        assert_eq!(result["status"], json!(200), "{store}: {method}: {result}");
    }
    for (method, keys) in SHAPES {
        let present = &results[method]["keys"];
        for key in keys {
            assert!(present.as_array().unwrap().contains(&json!(key)), "{store}: {method} lacks {key}: {present}");
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_of_the_sdks_control_plane_namespace_answers_on_the_memory_store() {
    every_sdk_method_answers(TestServer::start().await, "memory").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_of_the_sdks_control_plane_namespace_answers_on_redis() {
    let server = TestServer::start_on_redis(Config::default(), &unique_prefix("sdk-every")).await;
    every_sdk_method_answers(server, "redis").await;
}
