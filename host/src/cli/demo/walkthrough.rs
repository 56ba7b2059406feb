//! The demo's steps, in order. Each narrates what it does, acts only through the REST API and the watched plugins
//! folder, and records what the server answered (never what the demo assumed) into the summary.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::events::EventRecorder;
use super::{Demo, DemoArgs, fleet, load, show};
use crate::plugins::builtin::embedded_example;

/// Task types of the mix; each requires the capability of its name.
const TASK_TYPES: [&str; 6] = ["code", "analysis", "summarize", "debate", "research", "critique"];
/// Priorities cycled through alongside the types.
const PRIORITIES: [&str; 4] = ["critical", "high", "normal", "low"];
/// The strategy hot-loaded in step 3.
const CHEAPEST: &str = "cheapest_within_latency";
/// The policy hot-loaded in step 4.
const POLICY: &str = "payload_size_policy";
/// The agent lost in step 5: the flaky self-hosted one.
const VICTIM: &str = "llama-local";
/// How long one claim blocks: long, so an idle agent is almost always waiting in a claim when a task arrives.
const BLOCK_MS: u64 = 30_000;
/// Call deadline the demo writes into the manifests of the plugins it installs.
const DEMO_DEADLINE_MS: u32 = 50;
/// The longest the demo waits for anything (a task to end, a plugin to load, the fleet to settle): generous,
/// because a busy machine is slow, not wrong.
const PATIENCE: Duration = Duration::from_secs(120);

/// Runs every step; `--simulate-load` adds the load run before the final stats.
pub(super) async fn run(demo: &mut Demo, args: &DemoArgs) -> anyhow::Result<()> {
    let total = if args.simulate_load { 8 } else { 7 };
    demo.events = Some(EventRecorder::start(&demo.admin).await?);
    register_fleet(demo, total).await?;
    let before = routing(demo, total).await?;
    hot_swap(demo, total, &before).await?;
    policy(demo, total).await?;
    agent_loss(demo, total).await?;
    deliberation(demo, total).await?;
    if args.simulate_load {
        // The walkthrough's histories are taken; the load's events would only fill memory.
        demo.events = None;
        show::step(7, total, "Simulated load");
        let report = load::run(demo, args.load_tasks as usize).await?;
        demo.record("load", report);
        demo.step_done("load");
    }
    final_stats(demo, total).await
}

fn recorder(demo: &Demo) -> anyhow::Result<&EventRecorder> {
    demo.events.as_ref().context("the event stream is not being recorded")
}

/// Step 1: five agents register and start waiting for work.
async fn register_fleet(demo: &mut Demo, total: usize) -> anyhow::Result<()> {
    show::step(1, total, "Register five simulated agents");
    show::say("Each is a real HTTP client with its own agent token, running the guide's loop: register with a");
    show::say(
        "session, heartbeat, blocking claim, work for its latency, then complete (or fail, at its failure rate).",
    );
    let profiles = fleet(&demo.pace);
    for profile in profiles.clone() {
        demo.spawn_agent(profile, BLOCK_MS)?;
    }
    wait_idle(demo, profiles.len()).await?;
    let agents = demo.admin.get("/agents").await?;
    let mut rows = Vec::new();
    let mut recorded = Vec::new();
    for profile in &profiles {
        let agent = find_agent(&agents, profile.agent_id)?;
        rows.push(vec![
            profile.agent_id.to_string(),
            text(&agent["model"]),
            text(&agent["provider"]),
            list(&agent["capabilities"]),
            agent["metadata"]["cost"].as_f64().map(|cost| cost.to_string()).unwrap_or_else(|| "-".into()),
            format!("{} ms", text(&agent["metadata"]["latency_ms"])),
            format!("{:.0}%", profile.failure_rate * 100.0),
            text(&agent["status"]),
        ]);
        recorded.push(json!({
            "agent_id": profile.agent_id,
            "model": agent["model"],
            "provider": agent["provider"],
            "capabilities": agent["capabilities"],
            "cost": agent["metadata"]["cost"],
            "latency_ms": agent["metadata"]["latency_ms"],
            "failure_rate": profile.failure_rate,
            "status": agent["status"],
        }));
    }
    show::table(&["AGENT", "MODEL", "PROVIDER", "CAPABILITIES", "COST", "LATENCY", "FAILS", "STATUS"], &rows);
    demo.record("fleet", json!(recorded));
    demo.step_done("fleet");
    Ok(())
}

/// Step 2: a mix of tasks routed by `least_loaded`.
async fn routing(demo: &mut Demo, total: usize) -> anyhow::Result<Value> {
    show::step(2, total, "Submit a mix of tasks: routing by least_loaded");
    show::say("Six task types (each needs the capability of its name) at four priorities, submitted one at a time");
    show::say("into an idle fleet, so the strategy makes each choice among the agents waiting in a claim.");
    show::say("least_loaded picks the fewest tasks in flight, then the fewest completed: the work spreads.");
    let phase = routed_tasks(demo, "least_loaded", None, None).await?;
    distribution_table(demo, &[("least_loaded", &phase)]);
    demo.record("routing", phase.clone());
    demo.step_done("routing");
    Ok(phase)
}

/// Step 3: `cheapest_within_latency` dropped into the watched folder while the server runs, then used.
async fn hot_swap(demo: &mut Demo, total: usize, before: &Value) -> anyhow::Result<()> {
    show::step(3, total, "Hot-swap the strategy: drop a plugin into the watched folder");
    let (bytes, manifest) =
        embedded_example(CHEAPEST).context("the binary was built without cheapest_within_latency")?;
    let probe = json!({"task_type": "code", "required_capabilities": ["code"], "strategy": CHEAPEST,
                       "idempotency_key": key(demo)});
    let refused = match demo.submitter.post("/tasks", &probe).await {
        Ok(answer) => bail!("the server accepted a task naming {CHEAPEST} before the plugin was loaded: {answer}"),
        Err(error) => error,
    };
    show::say(format!(
        "Before: the server does not know {CHEAPEST}; a task naming it is refused ({} {}).",
        refused.status().map(|s| s.as_u16()).unwrap_or_default(),
        refused.code().unwrap_or("no answer")
    ));
    let dropped = Instant::now();
    let plugin = install(demo, CHEAPEST, bytes, manifest).await?;
    show::say(format!(
        "Wrote {CHEAPEST}.wasm + .toml into the folder: validated and active {} ms later (sha256 {}…).",
        dropped.elapsed().as_millis(),
        &text(&plugin["active"]["sha256"]).chars().take(12).collect::<String>()
    ));
    show::say(format!(
        "Tasks now name it, with metadata max_latency_ms = {}: the cheapest agent whose latency (observed,",
        demo.pace.max_latency_ms
    ));
    show::say("else declared) meets the bound. llama-local is cheapest but too slow, so gemini-flash and");
    show::say("mistral-large get the work; no agent restarted, no server restarted.");
    let metadata = json!({"max_latency_ms": demo.pace.max_latency_ms});
    let mut after = routed_tasks(demo, CHEAPEST, Some(CHEAPEST), Some(metadata)).await?;
    distribution_table(demo, &[("least_loaded", before), (CHEAPEST, &after)]);
    after["max_latency_ms"] = json!(demo.pace.max_latency_ms);
    after["refused_before_install"] = json!({
        "status": refused.status().map(|s| s.as_u16()),
        "code": refused.code(),
    });
    after["plugin"] = json!({
        "name": CHEAPEST,
        "status": plugin["status"],
        "source": plugin["active"]["source"],
        "sha256": plugin["active"]["sha256"],
        "expected_sha256": hex::encode(Sha256::digest(bytes)),
    });
    demo.record("hot_swap", after);
    demo.step_done("hot_swap");
    Ok(())
}

/// Step 4: `payload_size_policy` dropped in, a large payload denied, the violation read back.
async fn policy(demo: &mut Demo, total: usize) -> anyhow::Result<()> {
    show::step(4, total, "A policy plugin denies a task");
    let (bytes, manifest) = embedded_example(POLICY).context("the binary was built without payload_size_policy")?;
    let plugin = install(demo, POLICY, bytes, manifest).await?;
    show::say(format!(
        "Dropped {POLICY} into the folder (active, {}): it denies submitted tasks whose payload is over",
        text(&plugin["active"]["kind"])
    ));
    show::say("65536 bytes; a policy fails closed unless its manifest says otherwise.");
    let document = "lorem ipsum ".repeat(10_000);
    let payload = json!({"document": document});
    let payload_bytes = serde_json::to_vec(&payload)?.len();
    let body = json!({"task_type": "summarize", "required_capabilities": ["summarize"], "payload": payload,
                      "idempotency_key": key(demo)});
    let denial = match demo.submitter.post_idempotent("/tasks", &body).await {
        Ok(answer) => bail!("the server accepted a {payload_bytes}-byte payload that {POLICY} should deny: {answer}"),
        Err(error) if error.status() == Some(StatusCode::FORBIDDEN) => error,
        Err(error) => return Err(error).context("submitting the oversized task"),
    };
    show::say(format!("A summarize task with a {payload_bytes}-byte payload: 403 {}", denial.code().unwrap_or("-")));
    show::say(format!("  \"{}\"", denial.problem()["detail"].as_str().unwrap_or_default()));
    let violation_id = denial.problem()["violation_id"].as_str().context("the denial names no violation_id")?;
    let violations = demo.admin.get("/policies/violations?limit=50").await?;
    let violation = violations["violations"]
        .as_array()
        .and_then(|all| all.iter().find(|v| v["id"] == violation_id))
        .cloned()
        .with_context(|| format!("GET /policies/violations does not list {violation_id}, named by the denial"))?;
    let denied_id = text(&violation["task_id"]);
    let lookup = demo.admin.get(&format!("/tasks/{denied_id}")).await;
    let lookup_status = match &lookup {
        Ok(_) => 200,
        Err(error) => error.status().map(|s| s.as_u16()).unwrap_or(0),
    };
    show::say("GET /policies/violations records it (the task id it would have had was never stored):");
    show::table(
        &["VIOLATION", "POLICY", "STAGE", "DECISION", "TASK", "REASON"],
        &[vec![
            text(&violation["id"]),
            text(&violation["policy"]),
            text(&violation["stage"]),
            text(&violation["decision"]),
            format!("{denied_id} ({lookup_status})"),
            text(&violation["reason"]),
        ]],
    );
    let small = json!({"task_type": "summarize", "required_capabilities": ["summarize"],
                       "payload": {"document": "a short memo"}, "idempotency_key": key(demo)});
    let small_id = submit(demo, &small).await?;
    let small_task = wait_terminal(demo, &small_id).await?;
    show::say(format!(
        "A small summarize task passes the same policy: {} by {}.",
        text(&small_task["status"]),
        text(&small_task["assigned_agent"])
    ));
    demo.record(
        "policy",
        json!({
            "policy": POLICY,
            "plugin": {"status": plugin["status"], "source": plugin["active"]["source"], "kind": plugin["active"]["kind"]},
            "payload_bytes": payload_bytes,
            "refusal": {"status": denial.status().map(|s| s.as_u16()), "code": denial.code(),
                        "problem": denial.problem()},
            "violation": violation,
            "denied_task_lookup_status": lookup_status,
            "allowed_task": {"task_id": small_id, "status": small_task["status"],
                             "assigned_agent": small_task["assigned_agent"]},
        }),
    );
    demo.step_done("policy");
    Ok(())
}

/// Step 5: an agent dies mid-task; the server notices by its silence and another agent finishes the task.
async fn agent_loss(demo: &mut Demo, total: usize) -> anyhow::Result<()> {
    show::step(5, total, "Lose an agent mid-task");
    let live = demo.members.len();
    wait_idle(demo, live).await?;
    let others: Vec<&'static str> =
        demo.members.iter().map(|m| m.profile.agent_id).filter(|id| *id != VICTIM).collect();
    // Only the victim may take the next task: the others are paused (their claims wait) until it holds it.
    for agent in &others {
        demo.admin.post(&format!("/agents/{agent}/pause"), &json!({})).await?;
    }
    let victim = demo.members.iter().find(|m| m.profile.agent_id == VICTIM).context("the victim is not running")?;
    victim.controls.crash_on_next_task.store(true, std::sync::atomic::Ordering::SeqCst);
    show::say(format!("Paused the other agents so {VICTIM} takes the next task, and told {VICTIM} to crash"));
    show::say("right after starting it: no heartbeats, no result, no unregister, as a dead process.");
    let body = json!({"task_type": "code", "priority": "high", "required_capabilities": ["code"],
                      "payload": {"prompt": "refactor the billing module"}, "idempotency_key": key(demo)});
    let task_id = submit(demo, &body).await?;
    let started = recorder(demo)?.wait_for_task(&task_id, "task_started", PATIENCE).await?;
    ensure!(started["agent_id"] == VICTIM, "{task_id} was started by {} instead of {VICTIM}", started["agent_id"]);
    let crashed_at = Instant::now();
    show::say(format!("{VICTIM} started {task_id} and died. Resuming the others."));
    for agent in &others {
        demo.admin.post(&format!("/agents/{agent}/resume"), &json!({})).await?;
    }
    let timeout = demo.pace.heartbeat_timeout;
    let offline = recorder(demo)?
        .wait_for(&format!("{VICTIM} going offline"), PATIENCE, |e| {
            e["type"] == "agent_offline" && e["agent_id"] == VICTIM
        })
        .await?;
    show::say(format!(
        "{:.1} s later the server marked it offline (HEARTBEAT_TIMEOUT {} s) and requeued the task.",
        crashed_at.elapsed().as_secs_f64(),
        timeout.as_secs_f64()
    ));
    let task = wait_terminal(demo, &task_id).await?;
    let attempts = recorder(demo)?.attempts(&task_id);
    let victim_after = demo.admin.get(&format!("/agents/{VICTIM}")).await?;
    let offline_id = text(&offline["id"]);
    let history: Vec<Value> = {
        let events = recorder(demo)?;
        let mut history = events.of_task(&task_id);
        history.push(offline.clone());
        // Stream ids are `<ms>-<seq>`: numeric order is the order the server emitted them in.
        history.sort_by_key(|e| stream_position(&text(&e["id"])));
        history
    };
    let rows: Vec<Vec<String>> = history
        .iter()
        .map(|e| {
            let detail = match e["type"].as_str().unwrap_or_default() {
                "task_claimed" => format!("attempt {} ({})", text(&e["data"]["attempt"]), text(&e["data"]["via"])),
                "task_retried" => e["data"].to_string(),
                _ if text(&e["id"]) == offline_id => "heartbeats stopped".to_string(),
                _ => String::new(),
            };
            vec![text(&e["time"]), text(&e["type"]), text(&e["agent_id"]), detail]
        })
        .collect();
    show::say(format!("The task's history from the event stream ({}):", text(&task["status"])));
    show::table(&["TIME", "EVENT", "AGENT", "DETAIL"], &rows);
    show::say(format!(
        "Finished by {} on attempt {}, retries {}; last error: {}",
        text(&task["assigned_agent"]),
        text(&task["attempt"]),
        text(&task["retries"]),
        task["last_error"]
    ));
    demo.record(
        "agent_loss",
        json!({
            "task_id": task_id,
            "killed_agent": VICTIM,
            "paused_during_handover": others,
            "attempts": attempts,
            "final": {"status": task["status"], "assigned_agent": task["assigned_agent"], "attempt": task["attempt"],
                      "retries": task["retries"], "last_error": task["last_error"]},
            "killed_agent_status": victim_after["status"],
            "history": history.iter().map(|e| json!({"type": e["type"], "agent_id": e["agent_id"], "data": e["data"]}))
                .collect::<Vec<_>>(),
        }),
    );
    demo.step_done("agent_loss");
    Ok(())
}

/// The last step: the server's counters, completed work per agent, and the plugins' call counts.
/// Step 6: an orchestrated deliberation: the three agents holding `debate` propose, revise having read each
/// other's positions, and the majority of the last round decides.
async fn deliberation(demo: &mut Demo, total: usize) -> anyhow::Result<()> {
    show::step(6, total, "The fleet deliberates");
    let question = "Ship the billing refactor this week?";
    let body = json!({"content": question, "mode": "orchestrated", "agents": 3, "rounds": 2, "decide": "majority",
                      "required_capabilities": ["debate"], "timeout_seconds": 80});
    show::say(format!("POST /deliberations \"{question}\" (mode orchestrated): the control plane asks three agents"));
    show::say("holding debate to propose, then to revise having read the others' positions; the majority decides.");
    let session = demo.submitter.post("/deliberations", &body).await.context("running the deliberation")?;
    let request_id = text(&session["request_id"]);
    let transcript = demo.submitter.get(&format!("/deliberations/{request_id}/transcript")).await?;
    let mut rows = Vec::new();
    for round in transcript["rounds"].as_array().map(Vec::as_slice).unwrap_or_default() {
        for contribution in round["contributions"].as_array().map(Vec::as_slice).unwrap_or_default() {
            rows.push(vec![
                text(&round["round"]),
                text(&round["phase"]),
                text(&contribution["agent_id"]),
                text(&contribution["answer"]),
                text(&contribution["reasoning"]),
            ]);
        }
    }
    show::table(&["ROUND", "PHASE", "AGENT", "ANSWER", "REASONING"], &rows);
    show::say(format!(
        "Decision: {} (consensus {}, confidence {}), {} in {} s; every round was ordinary tasks, addressed to",
        text(&session["answer"]),
        text(&session["consensus_reached"]),
        text(&session["confidence"]),
        text(&session["status"]),
        text(&session["duration_seconds"]),
    ));
    show::say("their participants (agent:<id>), so routing, leases and events applied to each.");
    // The orchestrator leaves the agent list once it has no session: the final stats count the fleet alone.
    let started = Instant::now();
    while find_agent(&demo.admin.get("/agents").await?, &orchestrator_of(&session)).is_ok() {
        ensure!(started.elapsed() < PATIENCE, "the orchestrator agent is still registered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rounds = transcript["rounds"].as_array().map(Vec::len).unwrap_or(0);
    demo.record(
        "deliberation",
        json!({
            "request_id": request_id,
            "status": session["status"],
            "answer": session["answer"],
            "consensus_reached": session["consensus_reached"],
            "participants": session["participants"],
            "rounds": rounds,
            "tasks": 1 + rows.len(),
            "transcript": transcript["rounds"],
        }),
    );
    demo.step_done("deliberation");
    Ok(())
}

/// The agent that drove a session (its task's holder).
fn orchestrator_of(session: &Value) -> String {
    text(&session["agent_id"])
}

async fn final_stats(demo: &mut Demo, total: usize) -> anyhow::Result<()> {
    show::step(total, total, "Final stats");
    let stats = demo.admin.get("/stats").await?;
    let completed = completed_per_agent(demo).await?;
    let agents = demo.admin.get("/agents").await?;
    let rows: Vec<Vec<String>> = agents["agents"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|a| {
            let id = text(&a["agent_id"]);
            vec![
                id.clone(),
                text(&a["status"]),
                completed.get(&id).copied().unwrap_or(0).to_string(),
                text(&a["tasks_failed"]),
                format!("{:.0}", a["avg_latency_ms"].as_f64().unwrap_or(0.0)),
            ]
        })
        .collect();
    show::table(&["AGENT", "STATUS", "COMPLETED", "FAILED", "AVG MS"], &rows);
    println!();
    let figure = |label: &str, value: &Value| vec![label.to_string(), text(value)];
    show::table(
        &["GET /stats", "VALUE"],
        &[
            figure("registry.total_agents", &stats["registry"]["total_agents"]),
            figure("registry.available_agents", &stats["registry"]["available_agents"]),
            vec!["registry.by_status".into(), compact(&stats["registry"]["by_status"])],
            figure("scheduler.pending_tasks", &stats["scheduler"]["pending_tasks"]),
            figure("scheduler.running_tasks", &stats["scheduler"]["running_tasks"]),
            vec!["scheduler.by_status".into(), compact(&stats["scheduler"]["by_status"])],
            vec!["scheduler.by_type".into(), compact(&stats["scheduler"]["by_type"])],
            figure("health.healthy_count", &stats["health"]["healthy_count"]),
        ],
    );
    println!();
    let plugins = demo.admin.get("/plugins").await?;
    let plugin_rows: Vec<Vec<String>> = plugins["plugins"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|p| {
            let active = &p["active"];
            vec![
                text(&p["name"]),
                text(&active["kind"]),
                text(&active["source"]),
                text(&active["calls"]),
                text(&active["failures"]),
                text(&active["fallbacks"]),
            ]
        })
        .collect();
    show::table(&["PLUGIN", "KIND", "SOURCE", "CALLS", "FAILURES", "FALLBACKS"], &plugin_rows);
    let tasks_completed = stats["scheduler"]["by_status"]["completed"].as_u64().unwrap_or(0);
    demo.record("stats", stats);
    demo.record("completed_per_agent", json!(completed));
    demo.record("tasks_completed", json!(tasks_completed));
    demo.record("plugins", plugins);
    demo.step_done("stats");
    Ok(())
}

/// Submits `count` tasks one at a time into an idle fleet, each naming `strategy` (or none: the default), and
/// records for each the fleet as it was just before (the strategy's inputs), who took each attempt and how, and
/// whether the strategy plugin answered every call itself (no failure, no fallback).
async fn routed_tasks(
    demo: &mut Demo,
    plugin: &str,
    strategy: Option<&str>,
    metadata: Option<Value>,
) -> anyhow::Result<Value> {
    let count = demo.pace.tasks_per_step;
    let live = demo.members.len();
    let bar = show::bar(count as u64, plugin);
    let mut tasks = Vec::new();
    for n in 0..count {
        let task_type = TASK_TYPES[n % TASK_TYPES.len()];
        let priority = PRIORITIES[n % PRIORITIES.len()];
        wait_idle(demo, live).await?;
        let snapshot = fleet_snapshot(demo).await?;
        let counters_before = plugin_counters(demo, plugin).await?;
        let mut body = json!({"task_type": task_type, "priority": priority, "required_capabilities": [task_type],
                              "payload": {"prompt": format!("{task_type} request #{n}")},
                              "idempotency_key": key(demo)});
        if let Some(strategy) = strategy {
            body["strategy"] = json!(strategy);
        }
        if let Some(metadata) = &metadata {
            body["metadata"] = metadata.clone();
        }
        let task_id = submit(demo, &body).await?;
        let task = wait_terminal(demo, &task_id).await?;
        let counters_after = plugin_counters(demo, plugin).await?;
        let attempts = recorder(demo)?.attempts(&task_id);
        let delta = |field: &str| {
            counters_after[field].as_u64().unwrap_or(0).saturating_sub(counters_before[field].as_u64().unwrap_or(0))
        };
        tasks.push(json!({
            "task_id": task_id,
            "task_type": task_type,
            "priority": priority,
            "required_capabilities": [task_type],
            "status": task["status"],
            "final_agent": task["assigned_agent"],
            "attempts": attempts,
            "fleet_before": snapshot,
            "strategy_calls": delta("calls"),
            "strategy_failures": delta("failures"),
            "strategy_fallbacks": delta("fallbacks"),
        }));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let mut first: BTreeMap<String, u64> = BTreeMap::new();
    let mut completed: BTreeMap<String, u64> = BTreeMap::new();
    for task in &tasks {
        if let Some(agent) = task["attempts"][0]["agent_id"].as_str() {
            *first.entry(agent.to_string()).or_default() += 1;
        }
        if task["status"] == "completed"
            && let Some(agent) = task["final_agent"].as_str()
        {
            *completed.entry(agent.to_string()).or_default() += 1;
        }
    }
    Ok(json!({"strategy": plugin, "tasks": tasks, "first_attempts_per_agent": first,
              "completed_per_agent": completed}))
}

/// Tasks per agent, one column per routing step.
fn distribution_table(demo: &Demo, phases: &[(&str, &Value)]) {
    let mut headers = vec!["AGENT", "COST", "LATENCY"];
    headers.extend(phases.iter().map(|(name, _)| *name));
    let rows: Vec<Vec<String>> = demo
        .members
        .iter()
        .map(|m| {
            let mut row = vec![
                m.profile.agent_id.to_string(),
                format!("{}", m.profile.cost),
                format!("{} ms", m.profile.latency.as_millis()),
            ];
            for (_, phase) in phases {
                row.push(phase["first_attempts_per_agent"][m.profile.agent_id].as_u64().unwrap_or(0).to_string());
            }
            row
        })
        .collect();
    show::say("Tasks per agent (first attempts, as the task_claimed events report them):");
    show::table(&headers, &rows);
}

/// Writes a plugin's manifest, then its component (through a rename, so the watcher never reads half a file),
/// and waits until `GET /plugins/{name}` shows that exact version active from the folder.
async fn install(demo: &Demo, name: &str, bytes: &[u8], manifest: &str) -> anyhow::Result<Value> {
    let dir: &Path = &demo.plugins_dir;
    let write = |file: &str, contents: &[u8]| {
        let path = dir.join(file);
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))
    };
    // The shipped manifest, with a call deadline a busy laptop can keep: the default 5 ms is for servers, and a
    // policy that misses it fails closed, which would turn a slow moment into a denied task.
    let manifest = format!(
        "{manifest}\n# Added by `aragora-cp demo`: room for a busy machine.\n[limits]\ndeadline_ms = {DEMO_DEADLINE_MS}\n"
    );
    write(&format!("{name}.toml"), manifest.as_bytes())?;
    write(&format!(".{name}.partial"), bytes)?;
    std::fs::rename(dir.join(format!(".{name}.partial")), dir.join(format!("{name}.wasm")))
        .with_context(|| format!("moving {name}.wasm into {}", dir.display()))?;
    let expected = hex::encode(Sha256::digest(bytes));
    let deadline = Instant::now() + PATIENCE;
    loop {
        match demo.admin.get(&format!("/plugins/{name}")).await {
            Ok(info) if info["active"]["sha256"] == expected.as_str() && info["active"]["source"] == "file" => {
                return Ok(info);
            }
            Ok(info) if info["status"] == "rejected" => {
                bail!("the server rejected {name}: {}", info["last_rejection"])
            }
            Ok(_) => {}
            Err(error) if error.status() == Some(StatusCode::NOT_FOUND) => {}
            Err(error) => return Err(error.into()),
        }
        ensure!(Instant::now() < deadline, "{name} was not active within {PATIENCE:?} of being written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Submits with the demo's token and an idempotency key (retried while the outcome is unknown); the task id.
async fn submit(demo: &mut Demo, body: &Value) -> anyhow::Result<String> {
    demo.submitted += 1;
    let answer = demo.submitter.post_idempotent("/tasks", body).await.context("submitting a task")?;
    answer["task_id"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("a submit answered without a task_id: {answer}"))
}

/// A fresh idempotency key.
fn key(demo: &Demo) -> String {
    format!("{}-{}-{:08x}", demo.run_id, demo.submitted, rand::random::<u32>())
}

/// Waits with `GET /tasks/{id}?wait=` (the server waits, not us) until the task ends, then until the event stream
/// has shown its end too, so the task's history is complete when read.
async fn wait_terminal(demo: &Demo, task_id: &str) -> anyhow::Result<Value> {
    let deadline = Instant::now() + PATIENCE;
    let task = loop {
        let task = demo.submitter.get(&format!("/tasks/{task_id}?wait=20")).await?;
        if matches!(task["status"].as_str(), Some("completed" | "failed" | "cancelled" | "timeout")) {
            break task;
        }
        ensure!(Instant::now() < deadline, "{task_id} did not finish within {PATIENCE:?}: {}", task["status"]);
    };
    let kind = format!("task_{}", text(&task["status"]));
    recorder(demo)?.wait_for_task(task_id, &kind, PATIENCE).await?;
    Ok(task)
}

/// Waits until the fleet is idle: nothing pending or running, and at least `agents` claims waiting for work.
async fn wait_idle(demo: &Demo, agents: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        for member in &demo.members {
            let crashed = member.controls.crashed.load(std::sync::atomic::Ordering::SeqCst);
            ensure!(!member.join.is_finished() || crashed, "agent {} stopped unexpectedly", member.profile.agent_id);
        }
        let stats = demo.admin.get("/stats").await?;
        let scheduler = &stats["scheduler"];
        let waiting = scheduler["waiting_claims"].as_u64().unwrap_or(0) as usize;
        if waiting >= agents && scheduler["pending_tasks"] == 0 && scheduler["running_tasks"] == 0 {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the fleet did not settle within {PATIENCE:?}: {waiting} of {agents} agents waiting, {} pending, {} running",
            scheduler["pending_tasks"],
            scheduler["running_tasks"]
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The agents as a strategy sees them (the inputs of the next routing decision).
async fn fleet_snapshot(demo: &Demo) -> anyhow::Result<Value> {
    let agents = demo.admin.get("/agents").await?;
    let snapshot: Vec<Value> = agents["agents"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|a| {
            json!({
                "agent_id": a["agent_id"], "capabilities": a["capabilities"], "status": a["status"],
                "paused": a["paused"], "in_flight": a["in_flight"], "tasks_completed": a["tasks_completed"],
                "avg_latency_ms": a["avg_latency_ms"], "cost": a["metadata"]["cost"],
                "latency_ms": a["metadata"]["latency_ms"],
            })
        })
        .collect();
    Ok(json!(snapshot))
}

/// A plugin's active version from `GET /plugins/{name}`, whose `calls`, `failures` and `fallbacks` count its calls.
async fn plugin_counters(demo: &Demo, name: &str) -> anyhow::Result<Value> {
    let info = demo.admin.get(&format!("/plugins/{name}")).await?;
    Ok(info["active"].clone())
}

/// Completed tasks per final agent, from every page of `GET /tasks?status=completed`.
async fn completed_per_agent(demo: &Demo) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut counts = BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let page_query = cursor.as_ref().map(|c| format!("&cursor={c}")).unwrap_or_default();
        let page = demo.admin.get(&format!("/tasks?status=completed&limit=1000{page_query}")).await?;
        for task in page["tasks"].as_array().map(Vec::as_slice).unwrap_or_default() {
            *counts.entry(text(&task["assigned_agent"])).or_default() += 1;
        }
        match page["next_cursor"].as_str() {
            Some(next) if !next.is_empty() => cursor = Some(next.to_string()),
            _ => return Ok(counts),
        }
    }
}

fn find_agent<'a>(agents: &'a Value, agent_id: &str) -> anyhow::Result<&'a Value> {
    agents["agents"]
        .as_array()
        .and_then(|all| all.iter().find(|a| a["agent_id"] == agent_id))
        .with_context(|| format!("GET /agents does not list {agent_id}"))
}

/// `<ms>-<seq>` as a sortable pair.
fn stream_position(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// A JSON value as table text: strings bare, null as `-`.
fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A list as comma-separated text.
fn list(value: &Value) -> String {
    value.as_array().map(|items| items.iter().map(text).collect::<Vec<_>>().join(",")).unwrap_or_else(|| text(value))
}

/// An object of counts as `key=value` pairs.
fn compact(value: &Value) -> String {
    match value.as_object() {
        Some(map) if !map.is_empty() => {
            map.iter().map(|(k, v)| format!("{k}={}", text(v))).collect::<Vec<_>>().join(" ")
        }
        _ => "-".into(),
    }
}
