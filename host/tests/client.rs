//! The client commands against a real server on an ephemeral port: register an agent, submit a task, list, get,
//! cancel, stats and plugins, as tables and as JSON; a refused request exits 1 with the server's detail.

mod support;

use std::process::{Command, Output};

use serde_json::Value;
use support::{Server, server};

/// Runs the binary off the async runtime (it blocks) with the server and token in its environment.
async fn cli(server: &Server, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_aragora-cp"));
    command.args(args).env("ARAGORA_SERVER", &server.base).env("ARAGORA_TOKEN", &server.token);
    let output = tokio::task::spawn_blocking(move || command.output().expect("run aragora-cp")).await.unwrap();
    eprintln!("{args:?}\n{}\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    output
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).expect("JSON on stdout")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_commands_drive_a_running_server() {
    let server = server().await;
    let registered =
        cli(&server, &["agents", "register", "cli-agent", "--capability", "code", "--output", "json"]).await;
    assert!(registered.status.success());
    assert_eq!(json(&registered)["agent_id"], "cli-agent");

    let listed = cli(&server, &["agents", "list"]).await;
    let table = String::from_utf8_lossy(&listed.stdout);
    assert!(table.starts_with("AGENT_ID") && table.contains("cli-agent"), "{table}");

    let submitted = cli(&server, &["tasks", "submit", "code", "--capability", "code", "--output", "json"]).await;
    assert!(submitted.status.success());
    let task_id = json(&submitted)["task_id"].as_str().unwrap().to_string();

    let got = cli(&server, &["tasks", "get", &task_id, "--output", "json"]).await;
    assert_eq!(json(&got)["status"], "pending");
    let tasks = cli(&server, &["tasks", "list", "--status", "pending", "--output", "json"]).await;
    assert_eq!(json(&tasks)["tasks"][0]["task_id"], task_id.as_str());

    let cancelled = cli(&server, &["tasks", "cancel", &task_id, "--output", "json"]).await;
    assert_eq!(json(&cancelled)["status"], "cancelled");
    let watched = cli(&server, &["tasks", "watch", &task_id]).await;
    assert!(String::from_utf8_lossy(&watched.stdout).contains("cancelled"));

    let stats = cli(&server, &["stats", "--output", "json"]).await;
    assert_eq!(json(&stats)["registry"]["total_agents"], 1);
    let plugins = cli(&server, &["plugins"]).await;
    assert!(String::from_utf8_lossy(&plugins.stdout).contains("least_loaded"));
    let health = cli(&server, &["health", "--output", "json"]).await;
    assert!(json(&health)["agents"]["cli-agent"].is_object());

    let missing = cli(&server, &["tasks", "get", "task_00000000000000000000000000000000"]).await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("404"));
    let _ = server.shutdown.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_commands_reach_queue_schedules_policies_and_the_audit_log() {
    let server = server().await;
    let first = cli(&server, &["tasks", "submit", "report", "--output", "json"]).await;
    let second = cli(&server, &["tasks", "submit", "report", "--output", "json"]).await;
    let second_id = json(&second)["task_id"].as_str().unwrap().to_string();
    assert!(first.status.success());
    let raised = cli(&server, &["tasks", "prioritize", &second_id, "critical", "--output", "json"]).await;
    assert_eq!(json(&raised)["priority"], "critical");
    let queue = cli(&server, &["queue", "--output", "json"]).await;
    assert_eq!(
        (json(&queue)["pending"].as_u64(), json(&queue)["by_priority"]["critical"].as_u64()),
        (Some(2), Some(1))
    );

    let created = cli(
        &server,
        &[
            "schedules",
            "create",
            "nightly",
            "--task-type",
            "backup",
            "--cron",
            "0 2 * * *",
            "--timezone",
            "Europe/Paris",
            "--output",
            "json",
        ],
    )
    .await;
    assert!(created.status.success());
    let schedule_id = json(&created)["schedule_id"].as_str().unwrap().to_string();
    let paused = cli(&server, &["schedules", "pause", &schedule_id, "--output", "json"]).await;
    assert_eq!(json(&paused)["paused"], true);
    let listed = cli(&server, &["schedules", "list"]).await;
    let table = String::from_utf8_lossy(&listed.stdout);
    assert!(table.starts_with("SCHEDULE_ID") && table.contains("nightly"), "{table}");
    let deleted = cli(&server, &["schedules", "delete", &schedule_id, "--output", "json"]).await;
    assert_eq!(json(&deleted)["deleted"], true);
    let bad = cli(&server, &["schedules", "create", "x", "--task-type", "t", "--cron", "not cron"]).await;
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("400"));

    let policies = cli(&server, &["policies", "--output", "json"]).await;
    assert!(policies.status.success());
    let entries = cli(&server, &["audit", "list", "--action", "POST /schedules", "--output", "json"]).await;
    let actions: Vec<String> =
        json(&entries)["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap().into()).collect();
    assert!(!actions.is_empty() && actions.iter().all(|a| a.starts_with("POST /schedules")), "{actions:?}");
    let verified = cli(&server, &["audit", "verify", "--output", "json"]).await;
    assert_eq!(json(&verified)["valid"], true);

    let added = cli(
        &server,
        &[
            "notifications",
            "add",
            "ops",
            "--type",
            "slack",
            "--url",
            "https://hooks.example.com/T/B/X",
            "--event",
            "task_failed",
            "--priority",
            "high",
            "--output",
            "json",
        ],
    )
    .await;
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    let channel_id = json(&added)["channel"]["id"].as_str().unwrap().to_string();
    assert_eq!(json(&added)["channel"]["filter"]["events"], serde_json::json!(["task_failed"]));
    let channels = cli(&server, &["notifications", "channels", "--output", "json"]).await;
    assert_eq!(json(&channels)["total"], 1);
    let stats = cli(&server, &["notifications", "stats", "--output", "json"]).await;
    assert_eq!(json(&stats)["channels_configured"], 1);
    let deliveries = cli(&server, &["notifications", "deliveries", "--status", "dead", "--output", "json"]).await;
    assert_eq!(json(&deliveries)["total"], 0);
    let missing = cli(&server, &["notifications", "retry", "1-0:chn_none"]).await;
    assert!(String::from_utf8_lossy(&missing.stderr).contains("404"), "{}", String::from_utf8_lossy(&missing.stderr));
    let removed = cli(&server, &["notifications", "remove", &channel_id, "--output", "json"]).await;
    assert_eq!(json(&removed)["deleted"], true);
    let queued = cli(&server, &["deliberate", "Ship on Friday?", "--async", "--output", "json"]).await;
    assert_eq!(json(&queued)["status"], "queued", "{}", String::from_utf8_lossy(&queued.stderr));
    let waited = cli(&server, &["deliberate", "Nobody decides", "--timeout", "1"]).await;
    assert!(String::from_utf8_lossy(&waited.stderr).contains("408"), "{}", String::from_utf8_lossy(&waited.stderr));
    let private = cli(&server, &["notifications", "add", "x", "--type", "webhook", "--url", "http://10.0.0.1/"]).await;
    assert!(
        String::from_utf8_lossy(&private.stderr).contains("private"),
        "{}",
        String::from_utf8_lossy(&private.stderr)
    );
    let _ = server.shutdown.send(());
}
