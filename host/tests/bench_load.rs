//! `aragora-cp bench load` against a real server on an ephemeral port, through the library entry point with
//! arguments parsed by the real command line (in-process: the binary in a shared target directory may be another
//! checkout's). Each run is checked against the server's own state: every task it reports completed is completed
//! there, once, and nothing is left pending or held. No timing is asserted.

// The end-to-end crate's `redis-server` spawner, compiled in from its one source file (a dependency on that crate
// would make a cycle).
#[path = "../../tests/src/redis_server.rs"]
#[allow(dead_code, unreachable_pub, reason = "a part of the spawner is used here, and it is public in its own crate")]
mod redis_server;
mod support;

use std::collections::HashSet;

use aragora_cp::cli::bench::BenchCommand;
use aragora_cp::cli::bench::load::{Interrupt, LoadBenchArgs, run_load};
use aragora_cp::cli::{Cli, Command as CliCommand};
use clap::Parser;
use serde_json::{Value, json};
use support::{Server, server};

/// `aragora-cp bench load --server … --token … --quiet ARGS`, parsed by the real command line.
fn load_args(server: &Server, args: &[&str]) -> LoadBenchArgs {
    let mut line = vec!["aragora-cp", "bench", "load", "--server", &server.base, "--token", &server.token, "--quiet"];
    line.extend_from_slice(args);
    match Cli::try_parse_from(line).unwrap().command {
        CliCommand::Bench(BenchCommand::Load(args)) => *args,
        other => panic!("bench load parsed as {other:?}"),
    }
}

async fn get(server: &Server, path: &str) -> Value {
    let url = format!("{}/api/v1/control-plane{path}", server.base);
    let response = reqwest::Client::new().get(url).bearer_auth(&server.token).send().await.unwrap();
    assert!(response.status().is_success(), "GET {path}: {}", response.status());
    response.json().await.unwrap()
}

/// Every completed task on the server, through the pages of `GET /tasks?status=completed`.
async fn completed_tasks(server: &Server) -> Vec<Value> {
    let mut tasks = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = get(server, &format!("/tasks?status=completed&limit=1000&cursor={cursor}")).await;
        tasks.extend(page["tasks"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => return tasks,
        }
    }
}

/// The server holds exactly `completed` completed tasks, each once, each by one of the run's agents with its
/// lease; nothing pending or held; the agents are gone.
async fn assert_server_agrees(server: &Server, run_id: &str, completed: u64) {
    let stats = get(server, "/stats").await;
    eprintln!("{stats:#}");
    assert_eq!(stats["scheduler"]["by_status"]["completed"], completed, "{stats}");
    assert_eq!(stats["scheduler"]["pending_tasks"], 0);
    assert_eq!(stats["scheduler"]["running_tasks"], 0);
    assert_eq!(stats["registry"]["total_agents"], 0, "the agents were unregistered");
    let tasks = completed_tasks(server).await;
    let ids: HashSet<&str> = tasks.iter().map(|t| t["task_id"].as_str().unwrap()).collect();
    assert_eq!((tasks.len(), ids.len()), (completed as usize, completed as usize), "one record per task");
    for task in &tasks {
        let agent = task["assigned_agent"].as_str().unwrap_or_default();
        assert!(agent.starts_with(run_id), "{task}");
        assert_eq!(task["result"]["agent_id"], agent, "completed by the agent that held it: {task}");
        assert!(task.get("unfenced").is_none(), "completed with its lease: {task}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_run_completes_every_task_once_and_the_server_agrees() {
    let server = server().await;
    let mixed = ["--task-types", "code,debate", "--priorities", "high,normal,low", "--block-ms", "200"];
    let mut line = vec!["--agents", "3", "--submitters", "2", "--duration", "1.5"];
    line.extend(mixed);
    let report = run_load(&load_args(&server, &line), &Interrupt::default()).await.unwrap();
    eprintln!("{report:#?}");

    assert!(report.oracle.passed, "{:?}", report.oracle);
    assert!(report.submitted > 0);
    assert_eq!((report.oracle.lost, report.oracle.completed_twice, report.oracle.foreign), (0, 0, 0));
    assert_eq!(report.oracle.completed, report.submitted);
    assert_eq!(report.completed, report.submitted);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.latency.submit.count as u64, report.submitted, "one request per task without --batch");
    assert_server_agrees(&server, &report.run_id, report.submitted).await;

    let json = serde_json::to_value(&report).unwrap();
    // The generator's CPU per task (here the server's too, as it runs in this process), read from /proc on Linux.
    if cfg!(target_os = "linux") {
        let per_task = report.process_cpu_per_task_us.expect("CPU per task");
        assert!(per_task.is_finite() && per_task > 0.0, "{per_task}");
    }
    for field in [
        "tasks_per_second",
        "submitted",
        "completed",
        "load_seconds",
        "drain_seconds",
        "window_seconds",
        "process_cpu_per_task_us",
    ] {
        assert!(json[field].is_number(), "{field} missing from {json}");
    }
    for kind in ["submit", "claim", "complete", "heartbeat"] {
        for field in ["count", "p50_us", "p90_us", "p99_us", "max_us"] {
            assert!(json["latency"][kind][field].is_number(), "latency.{kind}.{field} missing from {json}");
        }
    }
    assert_eq!(json["errors"], json!([]));
    assert_eq!(json["errors_by_status"], json!({}));
    assert_eq!(json["oracle"]["passed"], true);
    let _ = server.shutdown.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counted_paced_run_with_batches_and_claim_next_submits_exactly_that_many() {
    let server = server().await;
    let line =
        ["--agents", "2", "--submitters", "2", "--tasks", "500", "--batch", "50", "--claim-next", "--rate", "5000"];
    let report =
        serde_json::to_value(run_load(&load_args(&server, &line), &Interrupt::default()).await.unwrap()).unwrap();
    eprintln!("{report:#}");

    assert_eq!(report["submitted"], 500);
    assert_eq!(report["completed"], 500);
    assert_eq!(report["batch"], 50);
    assert_eq!(report["claim_next"], true);
    assert_eq!(report["rate"], 5000.0);
    assert_eq!(report["latency"]["submit"]["count"], 10, "ten batches of fifty");
    assert_eq!(report["oracle"]["passed"], true);
    assert_eq!(report["errors"], json!([]));
    assert_server_agrees(&server, report["run_id"].as_str().unwrap(), 500).await;
    let _ = server.shutdown.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_stops_the_run_before_any_load_with_the_servers_word() {
    let server = server().await;
    let mut args = load_args(&server, &[]);
    args.connection.token = Some("not-a-jwt".into());
    let error = run_load(&args, &Interrupt::default()).await.expect_err("a bad token is refused");
    assert!(format!("{error:#}").contains("401"), "{error:#}");
    let stats = get(&server, "/stats").await;
    assert_eq!(stats["registry"]["total_agents"], 0, "no agent left behind: {stats}");
    assert_eq!(stats["scheduler"]["by_status"], json!({}), "nothing submitted: {stats}");
    let _ = server.shutdown.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_left_when_the_drain_times_out_are_reported_lost_and_the_server_still_holds_them_pending() {
    let server = server().await;
    // One agent cannot work off 3,000 tasks in a 0.1 s drain; with --claim-next it must still stop taking work
    // when the drain ends (it used to chain through the whole backlog).
    let line = ["--agents", "1", "--submitters", "1", "--tasks", "3000", "--batch", "1000", "--claim-next"];
    let mut args = load_args(&server, &line);
    args.drain_timeout = 0.1;
    let report = run_load(&args, &Interrupt::default()).await.unwrap();
    eprintln!("{:#?}", report.oracle);

    assert_eq!(report.submitted, 3000);
    assert!(!report.oracle.passed);
    assert!(report.oracle.lost > 0);
    assert_eq!(report.oracle.lost + report.oracle.completed, 3000);
    assert!(report.oracle.lost_sample.iter().all(|lost| lost.server_status == "pending"), "{:?}", report.oracle);
    let stats = get(&server, "/stats").await;
    assert_eq!(stats["scheduler"]["pending_tasks"], report.oracle.lost, "{stats}");
    assert_eq!(stats["scheduler"]["by_status"]["completed"], report.oracle.completed, "{stats}");
    assert_eq!(stats["scheduler"]["running_tasks"], 0, "the agent holds nothing once unregistered: {stats}");
    let _ = server.shutdown.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_on_redis_reports_what_it_cost_the_redis_per_task() {
    let redis = redis_server::RedisServer::start();
    let config = aragora_cp::config::Config::default();
    let prefix = format!("aragora:cp:bench-test-{:08x}:", rand::random::<u32>());
    let store = aragora_cp::store::RedisStore::connect(&redis.url(), &prefix, config.store_config()).await.unwrap();
    let server = support::server_on(config, std::sync::Arc::new(store)).await;
    let line =
        ["--agents", "2", "--submitters", "2", "--tasks", "200", "--block-ms", "200", "--redis-url", &redis.url()];
    let report = run_load(&load_args(&server, &line), &Interrupt::default()).await.unwrap();
    assert!(report.oracle.passed, "{:?}", report.oracle);
    let figures = report.redis.expect("Redis figures with --redis-url");
    eprintln!("{}", figures.summary());
    // Every task is at least a submit, a claim and a completion, each a script.
    assert!(figures.scripts_per_task >= 3.0, "{figures:?}");
    assert!(figures.calls_per_task > figures.scripts_per_task, "commands inside scripts count: {figures:?}");
    assert!(figures.cpu_per_task_us > 0.0, "{figures:?}");
    assert!(figures.top.iter().any(|c| c.command == "fcall"), "the function library runs the scripts: {figures:?}");
    let _ = server.shutdown.send(());
}

/// `--more-servers`: the load is spread over two servers of one fleet (one Redis, one prefix). Every task is
/// completed once, and each server answered claims and submits of its own share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_spread_over_two_servers_of_a_fleet_completes_every_task_once() {
    let redis = redis_server::RedisServer::start();
    let prefix = format!("aragora:cp:bench-fleet-{:08x}:", rand::random::<u32>());
    let mut servers = Vec::new();
    for _ in 0..2 {
        let config = aragora_cp::config::Config::default();
        let store = aragora_cp::store::RedisStore::connect(&redis.url(), &prefix, config.store_config()).await.unwrap();
        servers.push(support::server_on(config, std::sync::Arc::new(store)).await);
    }
    let line = [
        "--agents",
        "4",
        "--submitters",
        "2",
        "--tasks",
        "300",
        "--block-ms",
        "200",
        "--more-servers",
        &servers[1].base,
    ];
    let report = run_load(&load_args(&servers[0], &line), &Interrupt::default()).await.unwrap();
    assert!(report.oracle.passed, "{:?}", report.oracle);
    assert_eq!((report.servers, report.completed), (2, 300), "{report:?}");
    assert_server_agrees(&servers[1], &report.run_id, 300).await;
    for server in &servers {
        let metrics = reqwest::get(format!("{}/metrics", server.base)).await.unwrap().text().await.unwrap();
        for route in ["/tasks/claim", "/tasks\"", "/tasks/{task_id}/complete"] {
            assert!(
                metrics.lines().any(|line| line.starts_with("aragora_cp_http_requests_total") && line.contains(route)),
                "{} answered no {route} of the run:\n{metrics}",
                server.base
            );
        }
    }
    for server in servers {
        let _ = server.shutdown.send(());
    }
}
