//! The audit log on real servers: every state-changing call recorded with its actor, action, resource and outcome
//! (an agent's own work left out), read back with filters, offsets and stats; three servers on one Redis extending
//! one chain; and an entry edited (then removed) directly in Redis, which `/audit/verify` names.

use std::sync::Arc;

use aragora_cp::api::Permission;
use aragora_cp::config::Config;
use aragora_cp::store::Store;
use aragora_cp_tests::redis_server::{shared_server, unique_prefix};
use aragora_cp_tests::server::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test]
async fn state_changing_calls_are_recorded_with_who_what_and_the_outcome_and_read_back_filtered() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let ops = server.token("ops@example", &[Permission::Tasks, Permission::Agents, Permission::Read]);
    let agent = json!({"agent_id": "coder-1", "capabilities": ["code"]});
    assert_eq!(server.call(&ops, Method::POST, "/agents", Some(agent)).await.0, StatusCode::CREATED);
    let task = json!({"task_type": "code", "required_capabilities": ["code"]});
    let (_, submitted) = server.call(&ops, Method::POST, "/tasks", Some(task)).await;
    let task_id = submitted["task_id"].as_str().unwrap().to_string();
    // An agent's work is not audited; reads are not either.
    server.call(&ops, Method::POST, "/agents/coder-1/heartbeat", Some(json!({}))).await;
    server.call(&ops, Method::GET, "/tasks", None).await;
    assert_eq!(server.call(&ops, Method::POST, &format!("/tasks/{task_id}/cancel"), None).await.0, StatusCode::OK);
    let missing = "/tasks/task_00000000000000000000000000000000/cancel";
    assert_eq!(server.call(&admin, Method::POST, missing, None).await.0, StatusCode::NOT_FOUND);

    // A refused call's entry is queued without holding its answer: wait for it.
    let started = std::time::Instant::now();
    let page = loop {
        let (status, page) = server.call(&admin, Method::GET, "/audit", None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        if page["total"] == 4 || started.elapsed() > std::time::Duration::from_secs(5) {
            break page;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let seen: Vec<(String, String, String, String)> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let field = |name: &str| e[name].as_str().unwrap().to_string();
            (field("actor"), field("action"), field("resource"), field("outcome"))
        })
        .collect();
    let row = |actor: &str, action: &str, resource: &str, outcome: &str| {
        (actor.to_string(), action.to_string(), resource.to_string(), outcome.to_string())
    };
    assert_eq!(
        seen,
        [
            row("admin", "POST /tasks/{task_id}/cancel", "task:task_00000000000000000000000000000000", "failure"),
            row("ops@example", "POST /tasks/{task_id}/cancel", &format!("task:{task_id}"), "success"),
            row("ops@example", "POST /tasks", &format!("task:{task_id}"), "success"),
            row("ops@example", "POST /agents", "agent:coder-1", "success"),
        ],
        "newest first, heartbeats and reads left out: {page}"
    );
    assert_eq!(page["entries"][0]["details"], json!({"status": 404, "code": "task_not_found"}));
    assert_eq!(page["total"], 4);

    // Filters: actor, action prefix, resource, time.
    let count = |path: String| {
        let (server, admin) = (&server, admin.clone());
        async move { server.call(&admin, Method::GET, &path, None).await.1["entries"].as_array().unwrap().len() }
    };
    assert_eq!(count("/audit?actor=ops%40example".into()).await, 3);
    assert_eq!(count("/audit?action=POST%20/tasks".into()).await, 3);
    assert_eq!(count(format!("/audit?resource=task:{task_id}")).await, 2);
    assert_eq!(count("/audit?since=2099-01-01T00:00:00Z".into()).await, 0);
    let (_, first) = server.call(&admin, Method::GET, "/audit?limit=1", None).await;
    let cursor = first["next_cursor"].as_str().unwrap().to_string();
    let (_, rest) = server.call(&admin, Method::GET, &format!("/audit?cursor={cursor}"), None).await;
    assert_eq!(rest["entries"].as_array().unwrap().len(), 3, "the cursor goes on below: {rest}");
    assert_eq!(rest["next_cursor"], Value::Null);

    // Aragora's views: offset pages, one entry, stats, and the chain intact.
    let (_, logs) = server.call(&admin, Method::GET, "/audit-logs?limit=2&offset=1", None).await;
    let ids: Vec<&str> = logs["logs"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!((ids, logs["total"].as_u64()), (vec!["audit_3", "audit_2"], Some(4)));
    let (status, one) = server.call(&admin, Method::GET, "/audit-logs/audit_1", None).await;
    assert_eq!((status, one["action"].as_str()), (StatusCode::OK, Some("POST /agents")));
    assert_eq!(server.call(&admin, Method::GET, "/audit-logs/audit_99", None).await.0, StatusCode::NOT_FOUND);
    let (_, stats) = server.call(&admin, Method::GET, "/audit/stats", None).await;
    assert_eq!(stats["by_outcome"], json!({"failure": 1, "success": 3}), "{stats}");
    assert_eq!(stats["by_actor"]["ops@example"], 3);
    let (_, verified) = server.call(&admin, Method::GET, "/audit/verify", None).await;
    assert_eq!((verified["valid"].as_bool(), verified["checked"].as_u64()), (Some(true), Some(4)), "{verified}");

    // The log is for admins.
    assert_eq!(server.call(&ops, Method::GET, "/audit", None).await.0, StatusCode::FORBIDDEN);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn servers_sharing_redis_extend_one_chain_and_verify_names_an_entry_edited_or_removed_in_the_store() {
    let prefix = unique_prefix("audit");
    let on_redis = || TestServer::start_on_redis(Config::default(), &prefix);
    let servers = [on_redis().await, on_redis().await, on_redis().await];
    // Concurrent changes through all three servers.
    let mut calls = Vec::new();
    for (n, server) in servers.iter().enumerate() {
        for i in 0..20 {
            let (client, url, token) = (server.client.clone(), server.api("/tasks"), server.admin());
            calls.push(tokio::spawn(async move {
                let body = json!({"task_type": format!("audited-{n}-{i}")});
                client.post(url).bearer_auth(token).json(&body).send().await.unwrap().status()
            }));
        }
    }
    for call in calls {
        assert_eq!(call.await.unwrap(), StatusCode::CREATED);
    }
    let admin = servers[0].admin();
    let (_, verified) = servers[1].call(&admin, Method::GET, "/audit/verify", None).await;
    assert_eq!((verified["valid"].as_bool(), verified["checked"].as_u64()), (Some(true), Some(60)), "{verified}");

    // Someone with access to Redis rewrites entry 17's actor.
    let client = redis::Client::open(shared_server().url()).expect("client");
    let mut redis = client.get_multiplexed_async_connection().await.expect("connect");
    let key = format!("{prefix}{{main}}:audit:entries");
    let stored: String = redis::cmd("HGET").arg(&key).arg("17").query_async(&mut redis).await.expect("HGET");
    let mut entry: Value = serde_json::from_str(&stored).unwrap();
    entry["actor"] = json!("someone-else");
    let _: () = redis::cmd("HSET").arg(&key).arg("17").arg(entry.to_string()).query_async(&mut redis).await.unwrap();
    let (_, verified) = servers[2].call(&admin, Method::GET, "/audit/verify", None).await;
    assert_eq!(verified["valid"], false, "{verified}");
    assert_eq!(verified["first_break"], json!({"seq": 17, "id": "audit_17", "reason": "hash_mismatch"}));
    assert_eq!(verified["checked"], 16);

    // Put back, then remove entry 40 instead.
    let _: () = redis::cmd("HSET").arg(&key).arg("17").arg(&stored).query_async(&mut redis).await.unwrap();
    let _: () = redis::cmd("HDEL").arg(&key).arg("40").query_async(&mut redis).await.unwrap();
    let (_, verified) = servers[0].call(&admin, Method::GET, "/audit/verify", None).await;
    assert_eq!(verified["first_break"], json!({"seq": 40, "id": "audit_40", "reason": "missing"}), "{verified}");
    for server in servers {
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_audit_retention_old_entries_give_way_to_a_signed_checkpoint_and_the_rest_still_verifies() {
    use aragora_cp::store::{ManualClock, MemoryStore};
    let config = Config {
        audit_retention: Some(std::time::Duration::from_secs(3600)),
        audit_signing_key: Some("audit-signing-key".into()),
        cleanup_interval: std::time::Duration::from_millis(100),
        ..Config::default()
    };
    let clock = ManualClock::new(1_800_000_000_000);
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new(config.store_config(), Arc::new(clock.clone())));
    let server = TestServer::start_with_store(config, store).await;
    let admin = server.admin();
    for n in 0..3 {
        let agent = json!({"agent_id": format!("old-{n}"), "capabilities": ["code"]});
        assert_eq!(server.call(&admin, Method::POST, "/agents", Some(agent)).await.0, StatusCode::CREATED);
    }
    clock.advance(2 * 3600 * 1000);
    for n in 0..2 {
        let agent = json!({"agent_id": format!("new-{n}"), "capabilities": ["code"]});
        assert_eq!(server.call(&admin, Method::POST, "/agents", Some(agent)).await.0, StatusCode::CREATED);
    }
    let started = std::time::Instant::now();
    let verified = loop {
        let (_, verified) = server.call(&admin, Method::GET, "/audit/verify", None).await;
        if verified["checkpoint"]["seq"] == 3 || started.elapsed() > std::time::Duration::from_secs(10) {
            break verified;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!((verified["valid"].as_bool(), verified["checked"].as_u64()), (Some(true), Some(2)), "{verified}");
    assert_eq!(verified["checkpoint"]["seq"], 3, "{verified}");
    let (_, logs) = server.call(&admin, Method::GET, "/audit-logs", None).await;
    let ids: Vec<&str> = logs["logs"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!((ids, logs["total"].as_u64()), (vec!["audit_5", "audit_4"], Some(5)), "{logs}");
    assert_eq!(server.call(&admin, Method::GET, "/audit-logs/audit_1", None).await.0, StatusCode::NOT_FOUND);
    server.stop().await;
}
