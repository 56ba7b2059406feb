//! `demo --simulate-load`: many small tasks through a fleet of fast agents over HTTP (batch submit, batch claim,
//! batch complete), then throughput and latency percentiles from submit to acknowledged completion. A small loop
//! for the demo's audience; measured, comparable figures belong to `aragora-cp bench`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::http::Api;
use super::{Demo, show};
use crate::api::Permission;

/// Agents of the load fleet.
const LOAD_AGENTS: usize = 8;
/// Tasks per `POST /tasks/batch` (the API takes up to 1,000).
const SUBMIT_BATCH: usize = 500;
/// Tasks one claim may take.
const CLAIM_BATCH: usize = 100;
/// The capability only load agents hold, so the walkthrough's fleet stays out of it.
const CAPABILITY: &str = "bulk";

/// When each task was sent and when its completion was acknowledged.
#[derive(Default)]
struct Clocks {
    submitted: Mutex<HashMap<String, Instant>>,
    completed: Mutex<Vec<(String, Instant)>>,
    done: AtomicUsize,
}

/// Runs the load and returns its report (also printed).
pub(super) async fn run(demo: &mut Demo, tasks: usize) -> anyhow::Result<Value> {
    show::say(format!(
        "{tasks} tasks through {LOAD_AGENTS} fast agents (no simulated latency): batches of {SUBMIT_BATCH} submitted,"
    ));
    show::say(format!("up to {CLAIM_BATCH} claimed at once, completed in batches; every submit and claim is HTTP."));
    let clocks = Arc::new(Clocks::default());
    let stop = CancellationToken::new();
    let mut agents = Vec::new();
    for n in 0..LOAD_AGENTS {
        let agent_id = format!("load-{n}");
        let token = demo.auth.issue(
            &format!("agent:{agent_id}"),
            &[Permission::Agents, Permission::Tasks],
            Duration::from_secs(3600),
        )?;
        let api = demo.admin.with_token(token);
        agents.push(tokio::spawn(load_agent(api, agent_id, clocks.clone(), stop.clone())));
    }
    let bar = show::bar(tasks as u64, "load: completed");
    let started = Instant::now();
    let submitting = submit_all(demo.submitter.clone(), demo.run_id.clone(), tasks, clocks.clone());
    let progress = async {
        while clocks.done.load(Ordering::Relaxed) < tasks {
            bar.set_position(clocks.done.load(Ordering::Relaxed) as u64);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (submitted, ()) = tokio::join!(submitting, async {
        // A generous bound: a machine this slow would show it in the figures long before.
        let _ = tokio::time::timeout(Duration::from_secs(tasks as u64 / 20 + 120), progress).await;
    });
    let submit_elapsed = submitted?;
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    stop.cancel();
    for agent in agents {
        agent.await.context("a load agent panicked")??;
    }
    let done = clocks.done.load(Ordering::Relaxed);
    ensure!(done == tasks, "only {done} of {tasks} load tasks completed in time");

    let submitted = clocks.submitted.lock();
    let mut latencies: Vec<f64> = clocks
        .completed
        .lock()
        .iter()
        .filter_map(|(id, at)| submitted.get(id).map(|sent| at.duration_since(*sent).as_secs_f64() * 1000.0))
        .collect();
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies.get(((latencies.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0.0);
    let report = json!({
        "tasks": tasks,
        "agents": LOAD_AGENTS,
        "seconds": elapsed.as_secs_f64(),
        "tasks_per_second": tasks as f64 / elapsed.as_secs_f64(),
        "submits_per_second": tasks as f64 / submit_elapsed.as_secs_f64(),
        "latency_ms": {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": at(1.0)},
    });
    show::table(
        &["LOAD", "VALUE"],
        &[
            vec!["tasks completed".into(), tasks.to_string()],
            vec!["wall time".into(), format!("{:.2} s", elapsed.as_secs_f64())],
            vec!["throughput".into(), format!("{:.0} tasks/s", tasks as f64 / elapsed.as_secs_f64())],
            vec!["submit rate".into(), format!("{:.0} tasks/s", tasks as f64 / submit_elapsed.as_secs_f64())],
            vec!["latency p50".into(), format!("{:.1} ms", at(0.5))],
            vec!["latency p90".into(), format!("{:.1} ms", at(0.9))],
            vec!["latency p99".into(), format!("{:.1} ms", at(0.99))],
            vec!["latency max".into(), format!("{:.1} ms", at(1.0))],
        ],
    );
    show::say("Latency is submit sent → completion acknowledged, so it includes the time spent queued behind");
    show::say("earlier batches: with a backlog, claims take work in priority order, oldest first.");
    Ok(report)
}

/// Submits every task in batches, each task with an idempotency key; returns how long submitting took.
async fn submit_all(api: Api, run_id: String, tasks: usize, clocks: Arc<Clocks>) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let priorities = ["critical", "high", "normal", "low"];
    let mut next = 0;
    while next < tasks {
        let end = (next + SUBMIT_BATCH).min(tasks);
        let batch: Vec<Value> = (next..end)
            .map(|n| {
                json!({"task_type": "bulk", "priority": priorities[n % 4], "required_capabilities": [CAPABILITY],
                       "payload": {"n": n}, "idempotency_key": format!("{run_id}-load-{n}")})
            })
            .collect();
        let sent = Instant::now();
        let answer = api.post_idempotent("/tasks/batch", &json!({"tasks": batch})).await.context("batch submit")?;
        let ids = answer["task_ids"].as_array().context("a batch submit answered without task_ids")?;
        let mut submitted = clocks.submitted.lock();
        for id in ids {
            submitted.insert(id.as_str().unwrap_or_default().to_string(), sent);
        }
        next = end;
    }
    Ok(started.elapsed())
}

/// One load agent: register, then claim up to `CLAIM_BATCH` and complete them in one call, until `stop`.
async fn load_agent(api: Api, agent_id: String, clocks: Arc<Clocks>, stop: CancellationToken) -> anyhow::Result<()> {
    let session_id = format!("{:032x}", rand::random::<u128>());
    let registration = json!({"agent_id": agent_id, "capabilities": [CAPABILITY], "model": "load-generator",
                               "provider": "demo", "max_concurrent_tasks": CLAIM_BATCH, "session_id": session_id});
    api.post("/agents", &registration).await.with_context(|| format!("{agent_id}: registering"))?;
    let claim = json!({"agent_id": agent_id, "block_ms": 1000, "max_tasks": CLAIM_BATCH, "session_id": session_id});
    let heartbeat = json!({"session_id": session_id});
    loop {
        let answer = tokio::select! {
            _ = stop.cancelled() => break,
            answer = api.post("/tasks/claim", &claim) => answer,
        };
        let tasks = match answer {
            Ok(answer) => answer["tasks"].as_array().cloned().unwrap_or_default(),
            Err(error) if error.retryable() => continue,
            Err(error) => return Err(error).with_context(|| format!("{agent_id}: claiming")),
        };
        if tasks.is_empty() {
            // Idle: a heartbeat, so the agent stays alive however the claims fall.
            let _ = api.post(&format!("/agents/{agent_id}/heartbeat"), &heartbeat).await;
            continue;
        }
        let results: Vec<Value> = tasks
            .iter()
            .map(|t| json!({"task_id": t["task_id"], "lease_id": t["lease_id"], "result": {"ok": true}}))
            .collect();
        let answer = api.post("/tasks/complete", &json!({"results": results})).await;
        let acknowledged = Instant::now();
        let completed = match answer {
            Ok(answer) => answer["completed"].as_array().cloned().unwrap_or_default(),
            Err(error) => return Err(error).with_context(|| format!("{agent_id}: completing a batch")),
        };
        let mut log = clocks.completed.lock();
        for item in &completed {
            let id = item.as_str().or_else(|| item["task_id"].as_str()).unwrap_or_default();
            log.push((id.to_string(), acknowledged));
        }
        clocks.done.fetch_add(completed.len(), Ordering::Relaxed);
    }
    api.delete(&format!("/agents/{agent_id}")).await.with_context(|| format!("{agent_id}: unregistering"))?;
    Ok(())
}
