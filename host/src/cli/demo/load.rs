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

use super::{Demo, show};
use crate::api::Permission;
use crate::cli::http::Api;

/// Agents of the load fleet.
const LOAD_AGENTS: usize = 8;
/// Tasks per `POST /tasks/batch` (the API takes up to 1,000).
const SUBMIT_BATCH: usize = 500;
/// Tasks one claim may take.
const CLAIM_BATCH: usize = 100;
/// Priorities cycled through: the per-priority latencies show strict priority at work on a backlog.
const PRIORITIES: [&str; 4] = ["critical", "high", "normal", "low"];
/// The capability only load agents hold, so the walkthrough's fleet stays out of it.
const CAPABILITY: &str = "bulk";

/// When each task was sent and when its completion was acknowledged.
#[derive(Default)]
struct Clocks {
    /// Per task: when its batch was sent, and its priority (an index into `PRIORITIES`).
    submitted: Mutex<HashMap<String, (Instant, usize)>>,
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
    let measured = async {
        let submitting = submit_all(demo.submitter.clone(), demo.run_id.clone(), tasks, clocks.clone());
        let ticking = async {
            loop {
                bar.set_position(clocks.done.load(Ordering::Relaxed) as u64);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        // The bar moves while submitting; a failed submit ends the run at once.
        let submit_elapsed = tokio::select! {
            submitted = submitting => submitted?,
            never = ticking => never,
        };
        // A generous bound: a machine this slow would show it in the figures long before.
        let limit = Duration::from_secs(tasks as u64 / 20 + 120);
        let finishing = async {
            while clocks.done.load(Ordering::Relaxed) < tasks {
                bar.set_position(clocks.done.load(Ordering::Relaxed) as u64);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let finished = tokio::time::timeout(limit, finishing).await;
        let done = clocks.done.load(Ordering::Relaxed);
        ensure!(finished.is_ok(), "only {done} of {tasks} load tasks completed within {limit:?}");
        Ok::<_, anyhow::Error>((submit_elapsed, started.elapsed()))
    }
    .await;
    bar.finish_and_clear();
    // Whatever happened, the load agents leave: they unregister, as the walkthrough's agents do.
    stop.cancel();
    for agent in agents {
        agent.await.context("a load agent panicked")??;
    }
    let (submit_elapsed, elapsed) = measured?;

    let submitted = clocks.submitted.lock();
    let mut latencies: Vec<(f64, usize)> = clocks
        .completed
        .lock()
        .iter()
        .filter_map(|(id, at)| {
            submitted.get(id).map(|(sent, priority)| (at.duration_since(*sent).as_secs_f64() * 1000.0, *priority))
        })
        .collect();
    latencies.sort_by(|a, b| a.0.total_cmp(&b.0));
    let all: Vec<f64> = latencies.iter().map(|(ms, _)| *ms).collect();
    let by_priority: Vec<Vec<f64>> =
        (0..PRIORITIES.len()).map(|p| latencies.iter().filter(|(_, q)| *q == p).map(|(ms, _)| *ms).collect()).collect();
    let figures = |ms: &[f64]| {
        json!({"p50": quantile(ms, 0.5), "p90": quantile(ms, 0.9), "p99": quantile(ms, 0.99),
                                      "max": quantile(ms, 1.0)})
    };
    let report = json!({
        "tasks": tasks,
        "agents": LOAD_AGENTS,
        "seconds": elapsed.as_secs_f64(),
        "tasks_per_second": tasks as f64 / elapsed.as_secs_f64(),
        "submits_per_second": tasks as f64 / submit_elapsed.as_secs_f64(),
        "latency_ms": figures(&all),
        "latency_ms_by_priority": PRIORITIES.iter().zip(&by_priority).map(|(p, ms)| (p.to_string(), figures(ms)))
            .collect::<serde_json::Map<_, _>>(),
    });
    let mut rows = vec![
        vec!["tasks completed".into(), tasks.to_string()],
        vec!["wall time".into(), format!("{:.2} s", elapsed.as_secs_f64())],
        vec!["throughput".into(), format!("{:.0} tasks/s", tasks as f64 / elapsed.as_secs_f64())],
        vec!["submit rate".into(), format!("{:.0} tasks/s", tasks as f64 / submit_elapsed.as_secs_f64())],
        vec![
            "latency p50 / p90 / p99 / max".into(),
            format!(
                "{:.0} / {:.0} / {:.0} / {:.0} ms",
                quantile(&all, 0.5),
                quantile(&all, 0.9),
                quantile(&all, 0.99),
                quantile(&all, 1.0)
            ),
        ],
    ];
    for (priority, ms) in PRIORITIES.iter().zip(&by_priority) {
        rows.push(vec![
            format!("  {priority}: p50 / p99"),
            format!("{:.0} / {:.0} ms", quantile(ms, 0.5), quantile(ms, 0.99)),
        ]);
    }
    show::table(&["LOAD", "VALUE"], &rows);
    show::say("Latency is submit sent → completion acknowledged, so it includes the wait in the backlog: claims");
    show::say("take work in strict priority order, oldest first within a priority.");
    Ok(report)
}

/// The `q` quantile of sorted samples (0 when there are none).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted.get(((sorted.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0.0)
}

/// Submits every task in batches, each task with an idempotency key; returns how long submitting took.
async fn submit_all(api: Api, run_id: String, tasks: usize, clocks: Arc<Clocks>) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut next = 0;
    while next < tasks {
        let end = (next + SUBMIT_BATCH).min(tasks);
        let batch: Vec<Value> = (next..end)
            .map(|n| {
                json!({"task_type": "bulk", "priority": PRIORITIES[n % PRIORITIES.len()], "required_capabilities": [CAPABILITY],
                       "payload": {"n": n}, "idempotency_key": format!("{run_id}-load-{n}")})
            })
            .collect();
        let sent = Instant::now();
        let answer = api.post_idempotent("/tasks/batch", &json!({"tasks": batch})).await.context("batch submit")?;
        let ids = answer["task_ids"].as_array().context("a batch submit answered without task_ids")?;
        let mut submitted = clocks.submitted.lock();
        for (offset, id) in ids.iter().enumerate() {
            let priority = (next + offset) % PRIORITIES.len();
            submitted.insert(id.as_str().unwrap_or_default().to_string(), (sent, priority));
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
