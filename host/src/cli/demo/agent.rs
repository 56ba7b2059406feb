//! A simulated agent of the demo: a real HTTP client of the server running the guide's agent loop — register with
//! a session, heartbeat in the background, blocking claim, start, "work" for its latency, then complete or (at its
//! failure rate) fail with requeue; on stop, report `draining`, finish the work in hand and unregister.
//!
//! The examples crate's `agent-loop` runs the same loop in-process against the coordinator; this one has to speak
//! HTTP (the demo shows the server as clients see it), so it lives here, where the binary can use it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::cli::http::{Api, CallError};

/// Who an agent is and how it behaves.
#[derive(Clone, Debug)]
pub struct Profile {
    /// Its id.
    pub agent_id: &'static str,
    /// Its model.
    pub model: &'static str,
    /// Its provider.
    pub provider: &'static str,
    /// What it can do.
    pub capabilities: &'static [&'static str],
    /// Price per task, declared in metadata (`cost`) for strategies that read it.
    pub cost: f64,
    /// How long one task takes it; also declared in metadata (`latency_ms`).
    pub latency: Duration,
    /// Share of tasks it fails (a provider error), from 0 to 1.
    pub failure_rate: f64,
}

/// How the loop talks to the server.
#[derive(Clone, Debug)]
pub struct LoopOptions {
    /// How long one claim waits for work: long, so an idle agent is almost always waiting in a claim.
    pub block_ms: u64,
    /// Seeds this agent's failure draws, so a run can be repeated.
    pub seed: u64,
}

/// Controls of a running agent shared with the demo driver.
#[derive(Debug, Default)]
pub struct Controls {
    /// When set, the agent dies in the middle of its next task: it starts it, then stops heartbeating and never
    /// completes or unregisters, as a crashed process would.
    pub crash_on_next_task: AtomicBool,
    /// Set once it has crashed.
    pub crashed: AtomicBool,
    /// Tasks it completed.
    pub completed: AtomicU64,
    /// Tasks it failed (simulated provider errors).
    pub failed: AtomicU64,
    /// Leases it lost (the server took the task away).
    pub lost: AtomicU64,
}

/// How an agent's loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Stopped on request: drained and unregistered.
    Unregistered,
    /// Crashed on purpose mid-task: still registered, silent.
    Crashed,
}

/// Runs one agent until `stop` fires (or it crashes on purpose). `api` carries the agent's own token.
pub async fn run(
    api: Api,
    profile: Profile,
    options: LoopOptions,
    controls: Arc<Controls>,
    stop: CancellationToken,
) -> anyhow::Result<Ending> {
    let agent_id = profile.agent_id;
    // A fresh session per run: if this id were started twice, the server would revoke the older run's leases
    // instead of letting two processes believe they hold the same task.
    let session_id = format!("{:032x}", rand::random::<u128>());
    let registration = json!({
        "agent_id": agent_id,
        "capabilities": profile.capabilities,
        "model": profile.model,
        "provider": profile.provider,
        "metadata": {"cost": profile.cost, "latency_ms": profile.latency.as_millis() as u64},
        "session_id": session_id,
    });
    api.post("/agents", &registration).await.with_context(|| format!("{agent_id}: registering"))?;

    // The heartbeat loop runs until the work in hand is done, or stops at once when the agent crashes.
    let alive = CancellationToken::new();
    let heartbeats = tokio::spawn(heartbeat_loop(api.clone(), agent_id, session_id.clone(), alive.clone()));
    let ending = serve_tasks(&api, &profile, &options, &session_id, &controls, &stop).await;
    alive.cancel();
    let _ = heartbeats.await;
    if !matches!(ending, Ok(Ending::Crashed)) {
        // Leaving (on request or after an error): say so first (no new work), then unregister, which hands anything
        // still held back at once instead of after HEARTBEAT_TIMEOUT.
        let draining = json!({"status": "draining", "session_id": session_id});
        let _ = api.post(&format!("/agents/{agent_id}/heartbeat"), &draining).await;
        let unregistered = api.delete(&format!("/agents/{agent_id}")).await;
        if ending.is_ok() {
            unregistered.with_context(|| format!("{agent_id}: unregistering"))?;
        }
    }
    ending
}

/// Claim → work until `stop`, or until the agent crashes on purpose.
async fn serve_tasks(
    api: &Api,
    profile: &Profile,
    options: &LoopOptions,
    session_id: &str,
    controls: &Controls,
    stop: &CancellationToken,
) -> anyhow::Result<Ending> {
    let agent_id = profile.agent_id;
    let mut rng = StdRng::seed_from_u64(options.seed);
    let claim = json!({"agent_id": agent_id, "block_ms": options.block_ms, "session_id": session_id});
    loop {
        let answer = tokio::select! {
            _ = stop.cancelled() => return Ok(Ending::Unregistered),
            // Dropping a blocked claim is safe: the server releases a grant it could not deliver.
            answer = api.post("/tasks/claim", &claim) => answer,
        };
        let task = match answer {
            Ok(answer) => answer["task"].clone(),
            Err(error) if error.retryable() => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(error) => return Err(error).with_context(|| format!("{agent_id}: claiming")),
        };
        if task.is_null() {
            continue;
        }
        if controls.crash_on_next_task.load(Ordering::SeqCst) {
            // Start it, so the server sees the task running on this agent, then die without a word.
            let _ = start(api, &task).await;
            controls.crashed.store(true, Ordering::SeqCst);
            return Ok(Ending::Crashed);
        }
        work(api, profile, &task, &mut rng, controls).await?;
    }
}

async fn start(api: &Api, task: &Value) -> Result<Value, CallError> {
    let task_id = task["task_id"].as_str().unwrap_or_default();
    api.post(&format!("/tasks/{task_id}/start"), &json!({"lease_id": task["lease_id"]})).await
}

/// One task: start, work for the agent's latency, then complete or fail. A 409 means the lease was lost (the task
/// was cancelled, timed out or given to another agent): the work is dropped, as the guide says.
async fn work(api: &Api, profile: &Profile, task: &Value, rng: &mut StdRng, controls: &Controls) -> anyhow::Result<()> {
    let task_id = task["task_id"].as_str().unwrap_or_default();
    let lease = &task["lease_id"];
    let outcome = async {
        start(api, task).await?;
        tokio::time::sleep(profile.latency).await;
        // Deliberation rounds are answered, never failed: the walkthrough shows the rounds, not a replacement.
        let deliberating = task["task_type"].as_str().is_some_and(|t| t.starts_with("deliberation."));
        if !deliberating && rng.random::<f64>() < profile.failure_rate {
            let failure = json!({"lease_id": lease, "error": format!("{}: provider overloaded (simulated)",
                profile.provider), "requeue": true, "kind": "task"});
            api.post(&format!("/tasks/{task_id}/fail"), &failure).await?;
            controls.failed.fetch_add(1, Ordering::Relaxed);
        } else {
            let answer = if deliberating {
                position(profile, task)
            } else {
                json!({"answer": format!("{} by {}", task["task_type"].as_str().unwrap_or("task"), profile.model),
                       "agent_id": profile.agent_id})
            };
            let result = json!({"lease_id": lease, "result": answer});
            api.post(&format!("/tasks/{task_id}/complete"), &result).await?;
            controls.completed.fetch_add(1, Ordering::Relaxed);
        }
        Ok::<_, CallError>(())
    }
    .await;
    match outcome {
        Ok(()) => Ok(()),
        Err(error) if error.status() == Some(reqwest::StatusCode::CONFLICT) => {
            controls.lost.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Err(error) if error.retryable() => Ok(()),
        Err(error) => Err(error).with_context(|| format!("{}: working on {task_id}", profile.agent_id)),
    }
}

/// Heartbeats at the interval the server asks for until `alive` is cancelled. A missed beat is not fatal: the
/// server waits `HEARTBEAT_TIMEOUT` before calling the agent offline.
async fn heartbeat_loop(api: Api, agent_id: &'static str, session_id: String, alive: CancellationToken) {
    // Until the server names its interval, beat often: a quick demo's HEARTBEAT_TIMEOUT is short.
    let mut interval = Duration::from_millis(250);
    let body = json!({"session_id": session_id});
    loop {
        tokio::select! {
            _ = alive.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        if let Ok(answer) = api.post(&format!("/agents/{agent_id}/heartbeat"), &body).await
            && let Some(seconds) = answer["heartbeat_interval"].as_f64().filter(|s| s.is_finite() && *s > 0.0)
        {
            interval = Duration::from_secs_f64(seconds);
        }
    }
}

/// A round task of an orchestrated deliberation, answered without a model: proposing, the cheap agents (under 3 per
/// task) would rather wait and the others ship; revising, an agent takes the view most positions hold; judging,
/// the judge names the view most final positions hold.
fn position(profile: &Profile, task: &Value) -> Value {
    let payload = &task["payload"];
    let held: Vec<&str> =
        payload["positions"].as_array().into_iter().flatten().filter_map(|p| p["answer"].as_str()).collect();
    let most = |views: &[&str]| {
        let ship = views.iter().filter(|v| **v == SHIP).count();
        if ship * 2 > views.len() { SHIP } else { WAIT }
    };
    let (answer, reasoning) = match payload["phase"].as_str() {
        Some("propose") if profile.cost < 3.0 => (WAIT, "cheap to wait a week, costly to roll back"),
        Some("propose") => (SHIP, "the tests pass and the change is small"),
        Some("revise") => {
            let mut views = held.clone();
            views.extend(payload["own_position"]["answer"].as_str());
            (most(&views), "most of the panel is of this view")
        }
        _ => (most(&held), "the panel's final positions"),
    };
    json!({"answer": answer, "confidence": 0.8, "reasoning": format!("{}: {reasoning}", profile.model)})
}

const SHIP: &str = "ship this week";
const WAIT: &str = "wait a week";
