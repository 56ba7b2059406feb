//! `aragora-cp bench engine`: the engine in-process on the memory store. Two measurements:
//! - lifecycle throughput: submit → claim → complete through the coordinator, one agent at a time and with
//!   several agents at once, with p50/p99 of each call;
//! - claim latency against the backlog: claims with 1,000 and with 1,000,000 pending tasks, plus the store's own
//!   count of pending-index entries a claim examined (the complexity oracle: it must not grow with the backlog).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use crate::cli::OutputFormat;
use crate::config::Config;
use crate::coordinator::ControlPlaneCoordinator;
use crate::model::Fence;
use crate::model::{RegisterRequest, SubmitRequest};
use crate::plugins::{PluginRegistry, PluginRuntime, RuntimeOptions};
use crate::scheduler::Claim;
use crate::store::{ClaimRequest, MemoryStore, Store, SystemClock};

/// Arguments of `bench engine`.
#[derive(Debug, Args)]
pub struct EngineBenchArgs {
    /// Tasks pushed through the lifecycle per run.
    #[arg(long, default_value_t = 20_000)]
    pub tasks: usize,
    /// Concurrent agents in the parallel run.
    #[arg(long, default_value_t = 8)]
    pub agents: usize,
    /// Backlog sizes for the claim-latency measurement.
    #[arg(long, value_delimiter = ',', default_value = "1000,1000000")]
    pub backlogs: Vec<usize>,
    /// Claims measured per backlog size.
    #[arg(long, default_value_t = 2_000)]
    pub claims: usize,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// p50 / p99 of one call, in µs (the plugin bench's type, so both print alike).
pub use super::Percentiles as Latency;

/// The figures.
#[derive(Clone, Debug, Serialize)]
pub struct EngineBench {
    /// Lifecycles per second with one agent working sequentially.
    pub sequential_tasks_per_second: f64,
    /// Lifecycles per second with `agents` agents and as many submitters in parallel.
    pub parallel_tasks_per_second: f64,
    /// Agents in the parallel run.
    pub agents: usize,
    /// Submit latency (sequential run).
    pub submit: Latency,
    /// Claim latency (sequential run).
    pub claim: Latency,
    /// Complete latency (sequential run).
    pub complete: Latency,
    /// Claim latency and index entries examined per backlog size.
    pub backlog: Vec<BacklogRow>,
}

/// Claim cost at one backlog size.
#[derive(Clone, Debug, Serialize)]
pub struct BacklogRow {
    /// Pending tasks before the claims.
    pub pending: usize,
    /// Store-level claim + complete latency.
    pub claim: Latency,
    /// Pending-index entries the last claim examined.
    pub examined_per_claim: u64,
}

async fn coordinator() -> anyhow::Result<Arc<ControlPlaneCoordinator>> {
    Ok(coordinator_and_store().await?.0)
}

/// A coordinator, and its store for the measurements made beneath it.
async fn coordinator_and_store() -> anyhow::Result<(Arc<ControlPlaneCoordinator>, Arc<dyn Store>)> {
    let config = Config { heartbeat_timeout: Duration::from_secs(3600), ..Config::default() };
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new(config.store_config(), Arc::new(SystemClock::default())));
    let plugins = Arc::new(PluginRegistry::new(PluginRuntime::new(RuntimeOptions::default())?, "bench")?);
    Ok((ControlPlaneCoordinator::with_parts(config, store.clone(), plugins).await?, store))
}

fn task(n: usize, capability: &str) -> SubmitRequest {
    SubmitRequest {
        task_type: "bench".into(),
        payload: Some(serde_json::json!({"n": n}).into()),
        required_capabilities: vec![capability.to_string()],
        ..Default::default()
    }
}

async fn register(cp: &ControlPlaneCoordinator, agent: &str) -> anyhow::Result<()> {
    let request = RegisterRequest {
        agent_id: agent.into(),
        capabilities: vec!["code".into(), "debate".into(), "judge".into()],
        max_concurrent_tasks: Some(1024),
        ..Default::default()
    };
    cp.register_agent(request).await?;
    Ok(())
}

fn claim(agent: &str) -> Claim {
    Claim { agent_id: agent.into(), capabilities: None, block: Duration::ZERO, max_tasks: 1, session_id: None }
}

async fn sequential(tasks: usize) -> anyhow::Result<(f64, Latency, Latency, Latency)> {
    let cp = coordinator().await?;
    register(&cp, "seq").await?;
    let (mut submits, mut claims, mut completes) = (Vec::new(), Vec::new(), Vec::new());
    let started = Instant::now();
    for n in 0..tasks {
        let t = Instant::now();
        cp.submit_task(task(n, "code"), "bench").await?;
        submits.push(t.elapsed());
        let t = Instant::now();
        let granted = cp.claim_task(&claim("seq")).await?.tasks.pop().expect("a task is pending");
        claims.push(t.elapsed());
        let t = Instant::now();
        let fence = Fence::Lease(granted.lease_id.clone().unwrap_or_default());
        cp.complete_task(&granted.task_id, &fence, serde_json::json!({"ok": true})).await?;
        completes.push(t.elapsed());
    }
    let rate = tasks as f64 / started.elapsed().as_secs_f64();
    cp.shutdown().await;
    Ok((rate, Latency::of(submits), Latency::of(claims), Latency::of(completes)))
}

async fn parallel(tasks: usize, agents: usize) -> anyhow::Result<f64> {
    let cp = coordinator().await?;
    for a in 0..agents {
        register(&cp, &format!("agent-{a}")).await?;
    }
    let per_agent = tasks / agents;
    let started = Instant::now();
    let mut workers = Vec::new();
    for a in 0..agents {
        let cp = cp.clone();
        workers.push(tokio::spawn(async move {
            let agent = format!("agent-{a}");
            for n in 0..per_agent {
                cp.submit_task(task(n, "code"), "bench").await?;
            }
            let mut done = 0;
            while done < per_agent {
                let claimed = Claim { block: Duration::from_millis(50), ..claim(&agent) };
                for granted in cp.claim_task(&claimed).await?.tasks {
                    let fence = Fence::Lease(granted.lease_id.clone().unwrap_or_default());
                    cp.complete_task(&granted.task_id, &fence, serde_json::json!({})).await?;
                    done += 1;
                }
            }
            anyhow::Ok(())
        }));
    }
    for worker in workers {
        worker.await??;
    }
    let rate = (per_agent * agents) as f64 / started.elapsed().as_secs_f64();
    cp.shutdown().await;
    Ok(rate)
}

async fn backlog(pending: usize, claims: usize) -> anyhow::Result<BacklogRow> {
    let (cp, store) = coordinator_and_store().await?;
    register(&cp, "claimer").await?;
    // Fill through submit_batch (1,000 at a time), spread over three signatures.
    let signatures = ["code", "debate", "judge"];
    let mut n = 0;
    while n < pending {
        let batch: Vec<SubmitRequest> = (n..(n + 1000).min(pending)).map(|i| task(i, signatures[i % 3])).collect();
        n += batch.len();
        cp.submit_batch(batch, "bench").await?;
    }
    let agent = store.get_agent("claimer").await?.expect("registered");
    let request = ClaimRequest {
        agent_id: "claimer".into(),
        capabilities: Some(agent.capabilities),
        max_tasks: 1,
        session_id: None,
    };
    let mut samples = Vec::with_capacity(claims);
    for _ in 0..claims {
        let t = Instant::now();
        let granted = store.claim(&request).await?.pop().expect("backlog not empty");
        let fence = Fence::Lease(granted.lease_id.clone().unwrap_or_default());
        store.complete(&granted.task_id, &fence, serde_json::json!({}).into()).await?;
        samples.push(t.elapsed());
    }
    let examined = store.stats().await?.last_claim_examined;
    cp.shutdown().await;
    Ok(BacklogRow { pending, claim: Latency::of(samples), examined_per_claim: examined })
}

/// Runs the engine benchmark.
pub fn run(args: EngineBenchArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let bench = runtime.block_on(async {
        let (sequential_rate, submit, claim, complete) = sequential(args.tasks).await?;
        let parallel_rate = parallel(args.tasks, args.agents.max(1)).await?;
        let mut rows = Vec::new();
        for &pending in &args.backlogs {
            eprintln!("filling a backlog of {pending} tasks…");
            rows.push(backlog(pending, args.claims.min(pending)).await?);
        }
        anyhow::Ok(EngineBench {
            sequential_tasks_per_second: sequential_rate,
            parallel_tasks_per_second: parallel_rate,
            agents: args.agents,
            submit,
            claim,
            complete,
            backlog: rows,
        })
    })?;
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&bench)?),
        OutputFormat::Text => {
            println!("engine, memory store, in-process");
            println!(
                "  lifecycle (submit + claim + complete), 1 agent:  {:>10.0} tasks/s",
                bench.sequential_tasks_per_second
            );
            println!(
                "  lifecycle, {} agents in parallel:               {:>10.0} tasks/s",
                bench.agents, bench.parallel_tasks_per_second
            );
            for (name, l) in [("submit", &bench.submit), ("claim", &bench.claim), ("complete", &bench.complete)] {
                println!("  {name:<9} p50 {:>8.1} µs   p99 {:>8.1} µs", l.p50_us, l.p99_us);
            }
            println!("  claim + complete against the backlog (store level):");
            for row in &bench.backlog {
                println!(
                    "    {:>9} pending: p50 {:>7.1} µs  p99 {:>7.1} µs  index entries examined per claim: {}",
                    row.pending, row.claim.p50_us, row.claim.p99_us, row.examined_per_claim
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
