//! `aragora-cp bench compare`: the HTTP load of `bench load` as users load a fleet (many agents waiting in claims,
//! many submitters), swept over the number of waiting agents and submitters, against servers this command starts
//! itself: a fresh `aragora-cp serve` per run (this binary; the memory store, or `--redis`), and, with
//! `--ceiling PATH`, the reference ceiling (`../shared/bench/ceiling`: the thinnest possible lifecycle server) in
//! alternation, A B A B, so that both see the same machine. Reports tasks/s, p50/p99 per step and the server's CPU
//! per task (from `/proc`), and the control plane's throughput as a ratio to the ceiling's measured in the same run.

use std::num::NonZeroUsize;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;

use super::load::{Interrupt, LoadBenchArgs, LoadReport, run_load};
use super::processes::{Spawned, free_port, spawn_serve, this_binary};
use crate::api::{Authenticator, Permission};
use crate::cli::client::{Connection, Output};
use crate::model::Priority;

/// Arguments of `bench compare`.
#[derive(Debug, Args)]
pub struct CompareBenchArgs {
    /// Numbers of agents waiting in claims to sweep.
    #[arg(long, value_delimiter = ',', default_value = "8,50")]
    pub agents: Vec<usize>,
    /// Numbers of concurrent submitters to sweep.
    #[arg(long, value_delimiter = ',', default_value = "16")]
    pub submitters: Vec<usize>,
    /// Tasks per run.
    #[arg(long, default_value_t = 20_000)]
    pub tasks: u64,
    /// Runs per point and target, alternated with the ceiling's (A B A B); the medians are compared.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// The reference ceiling's binary (build `../shared/bench/ceiling` with `cargo build --release`).
    #[arg(long)]
    pub ceiling: Option<std::path::PathBuf>,
    /// Run the control plane on this Redis (`redis://…`; the ceiling too, in its Redis mode), under a fresh key
    /// prefix per run; without it, the memory store.
    #[arg(long)]
    pub redis: Option<String>,
    /// Control-plane servers per run, sharing `--redis` (a fleet): agents and submitters are spread over them,
    /// and their CPU is summed. The ceiling is one server either way.
    #[arg(long, default_value_t = 1)]
    pub servers: usize,
    /// `HEARTBEAT_INTERVAL` of the servers, in seconds: agents heartbeat that often.
    #[arg(long, default_value_t = 1.0)]
    pub heartbeat_interval: f64,
    /// A claim's `block_ms`.
    #[arg(long, default_value_t = 500)]
    pub block_ms: u64,
    /// Ask for the next task in the complete call.
    #[arg(long)]
    pub claim_next: bool,
    /// More settings of the control-plane servers, `KEY=VALUE`, repeatable (`--server-env DECISION_SAMPLE=0.1`,
    /// `--server-env PLUGINS_DIR=…` with a `least_loaded.shadow.wasm` in it): what a feature costs, beside the
    /// same load without it.
    #[arg(long, value_parser = key_value)]
    pub server_env: Vec<(String, String)>,
    /// Worker threads of both servers, the control plane's (`WORKER_THREADS`) and the ceiling's
    /// (`TOKIO_WORKER_THREADS`) alike; without it, each runs with its default (the control plane one fewer than
    /// the cores, at least one; the ceiling one per core). `--server-env WORKER_THREADS=…` would set the control
    /// plane's alone.
    #[arg(long)]
    pub server_threads: Option<NonZeroUsize>,
    /// Table for people, JSON for scripts.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// One run: a target at a point of the sweep.
#[derive(Clone, Debug, Serialize)]
pub struct CompareRun {
    /// `control-plane` or `ceiling`.
    pub target: &'static str,
    /// Agents waiting in claims.
    pub agents: usize,
    /// Concurrent submitters.
    pub submitters: usize,
    /// Round number (from 1).
    pub round: usize,
    /// The load's report.
    pub report: LoadReport,
}

/// A point of the sweep, summarised.
#[derive(Clone, Debug, Serialize)]
pub struct ComparePoint {
    /// Agents waiting in claims.
    pub agents: usize,
    /// Concurrent submitters.
    pub submitters: usize,
    /// Median tasks/s of the control plane's rounds.
    pub control_plane_tasks_per_second: f64,
    /// Median server CPU per task, µs.
    pub control_plane_cpu_per_task_us: Option<f64>,
    /// The ceiling's.
    pub ceiling_cpu_per_task_us: Option<f64>,
    /// The ceiling's CPU per task / the control plane's, read like `ratio`: the ratio of tasks/s that CPU alone
    /// would give. On a machine whose cores the load generator takes from either server, `ratio` lies between this
    /// and 1, so it shows only part of what a task costs us beyond the floor.
    pub cpu_ratio: Option<f64>,
    /// Median of the runs' `process_cpu_per_task_us` (the load generator's CPU per task) in the control plane's
    /// rounds, µs.
    pub control_plane_load_cpu_per_task_us: Option<f64>,
    /// The same in the ceiling's rounds.
    pub ceiling_load_cpu_per_task_us: Option<f64>,
    /// Median Redis main-thread CPU per task, µs (`--redis`).
    pub control_plane_redis_cpu_per_task_us: Option<f64>,
    /// The ceiling's, in its Redis mode.
    pub ceiling_redis_cpu_per_task_us: Option<f64>,
    /// Median tasks/s of the ceiling's rounds.
    pub ceiling_tasks_per_second: Option<f64>,
    /// Control plane / ceiling.
    pub ratio: Option<f64>,
    /// Every run's oracle passed (nothing lost or completed twice).
    pub oracle_passed: bool,
}

/// The whole comparison.
#[derive(Clone, Debug, Serialize)]
pub struct CompareReport {
    /// Control-plane servers per run (`--servers`).
    pub servers: usize,
    /// Worker threads of both servers (`--server-threads`); absent: each on its default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_threads: Option<usize>,
    /// Per point.
    pub points: Vec<ComparePoint>,
    /// Every run.
    pub runs: Vec<CompareRun>,
}

/// Starts `aragora-cp serve` (this binary) for one run; answers when it listens.
fn spawn_control_plane(args: &CompareBenchArgs, secret: &str, prefix: &str) -> anyhow::Result<Spawned> {
    let mut env = vec![
        ("REDIS_URL", args.redis.clone().unwrap_or_else(|| "memory://".to_string())),
        ("CONTROL_PLANE_PREFIX", prefix.to_string()),
        ("ARAGORA_JWT_SECRET", secret.to_string()),
        ("HEARTBEAT_INTERVAL", args.heartbeat_interval.to_string()),
        ("PLUGINS_DIR", std::env::temp_dir().join("aragora-cp-bench-no-plugins").display().to_string()),
    ];
    if let Some(threads) = args.server_threads {
        env.push(("WORKER_THREADS", threads.to_string()));
    }
    // Later settings win: `--server-env` may replace the ones above.
    env.extend(args.server_env.iter().map(|(key, value)| (key.as_str(), value.clone())));
    spawn_serve(&this_binary()?, &env, Stdio::null())
}

/// A `KEY=VALUE` of `--server-env`.
fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("{text:?}: expected KEY=VALUE")),
    }
}

/// Starts the ceiling on a free port; answers when `/livez` answers.
async fn spawn_ceiling(
    path: &std::path::Path,
    redis: Option<&str>,
    threads: Option<NonZeroUsize>,
) -> anyhow::Result<Spawned> {
    let port = free_port()?;
    let mut command = Command::new(path);
    command.env("BIND", format!("127.0.0.1:{port}")).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    if let Some(url) = redis {
        command.env("REDIS", url);
    }
    // Set or removed, never inherited: the comparison is like for like whatever the shell exports.
    if let Some(threads) = threads {
        command.env("TOKIO_WORKER_THREADS", threads.to_string());
    } else {
        command.env_remove("TOKIO_WORKER_THREADS");
    }
    let child = command.spawn().with_context(|| format!("start the ceiling {}", path.display()))?;
    let spawned = Spawned { child, base: format!("http://127.0.0.1:{port}") };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.get(format!("{}/livez", spawned.base)).send().await.is_err() {
        if Instant::now() > deadline {
            bail!("the ceiling did not answer /livez");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(spawned)
}

fn load_args(
    args: &CompareBenchArgs,
    base: &str,
    token: Option<String>,
    agents: usize,
    submitters: usize,
) -> LoadBenchArgs {
    LoadBenchArgs {
        connection: Connection { server: base.to_string(), token, output: Output::Json },
        agents,
        submitters,
        batch: None,
        duration: None,
        tasks: Some(args.tasks),
        rate: None,
        task_types: vec!["bench".into()],
        priorities: vec![Priority::Normal],
        block_ms: args.block_ms,
        claim_next: args.claim_next,
        heartbeat_interval: None,
        drain_timeout: 60.0,
        quiet: true,
        ceiling: false,
        more_servers: Vec::new(),
        server_pid: Vec::new(),
        redis_url: args.redis.clone(),
    }
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len().is_multiple_of(2) { (values[mid - 1] + values[mid]) / 2.0 } else { values[mid] })
}

/// The Redis CPU per task of each run that measured it.
fn redis_cpu(reports: &[LoadReport]) -> Vec<f64> {
    reports.iter().filter_map(|r| r.redis.as_ref().map(|redis| redis.cpu_per_task_us)).collect()
}

/// Runs the sweep.
pub async fn run_compare(args: &CompareBenchArgs) -> anyhow::Result<CompareReport> {
    if args.servers == 0 {
        bail!("--servers must be at least 1");
    }
    if args.servers > 1 && args.redis.is_none() {
        bail!("--servers {} needs --redis: servers of a fleet share their work through one Redis", args.servers);
    }
    let secret = format!("{:064x}", rand::random::<u128>());
    let auth = Authenticator::hs256(secret.as_bytes(), None, None)?;
    let token = auth.issue("bench", &[Permission::Admin], Duration::from_secs(24 * 3600))?;
    let interrupt = Interrupt::default();
    let mut runs = Vec::new();
    let mut points = Vec::new();
    for &submitters in &args.submitters {
        for &agents in &args.agents {
            let mut ours = Vec::new();
            let mut theirs = Vec::new();
            for round in 1..=args.rounds {
                let prefix = format!("aragora:cp:bench-{:08x}:", rand::random::<u32>());
                let fleet = (0..args.servers)
                    .map(|_| spawn_control_plane(args, &secret, &prefix))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut load = load_args(args, &fleet[0].base, Some(token.clone()), agents, submitters);
                load.more_servers = fleet[1..].iter().map(|server| server.base.clone()).collect();
                load.server_pid = fleet.iter().map(|server| server.child.id()).collect();
                eprintln!("control plane: {agents} agents, {submitters} submitters, round {round}");
                let report = run_load(&load, &interrupt).await?;
                drop(fleet);
                ours.push(report.clone());
                runs.push(CompareRun { target: "control-plane", agents, submitters, round, report });
                if let Some(path) = &args.ceiling {
                    let ceiling = spawn_ceiling(path, args.redis.as_deref(), args.server_threads).await?;
                    let mut load = load_args(args, &ceiling.base, None, agents, submitters);
                    load.ceiling = true;
                    load.server_pid = vec![ceiling.child.id()];
                    eprintln!("ceiling:       {agents} agents, {submitters} submitters, round {round}");
                    let report = run_load(&load, &interrupt).await?;
                    drop(ceiling);
                    theirs.push(report.clone());
                    runs.push(CompareRun { target: "ceiling", agents, submitters, round, report });
                }
            }
            let ours_tps = median(ours.iter().map(|r| r.tasks_per_second).collect()).unwrap_or(0.0);
            let theirs_tps = median(theirs.iter().map(|r| r.tasks_per_second).collect());
            let server_cpu =
                |reports: &[LoadReport]| median(reports.iter().filter_map(|r| r.server_cpu_per_task_us).collect());
            let load_cpu =
                |reports: &[LoadReport]| median(reports.iter().filter_map(|r| r.process_cpu_per_task_us).collect());
            let (ours_cpu, theirs_cpu) = (server_cpu(&ours), server_cpu(&theirs));
            points.push(ComparePoint {
                agents,
                submitters,
                control_plane_tasks_per_second: ours_tps,
                control_plane_cpu_per_task_us: ours_cpu,
                ceiling_cpu_per_task_us: theirs_cpu,
                cpu_ratio: theirs_cpu.zip(ours_cpu.filter(|c| *c > 0.0)).map(|(theirs, ours)| theirs / ours),
                control_plane_load_cpu_per_task_us: load_cpu(&ours),
                ceiling_load_cpu_per_task_us: load_cpu(&theirs),
                control_plane_redis_cpu_per_task_us: median(redis_cpu(&ours)),
                ceiling_redis_cpu_per_task_us: median(redis_cpu(&theirs)),
                ceiling_tasks_per_second: theirs_tps,
                ratio: theirs_tps.filter(|t| *t > 0.0).map(|t| ours_tps / t),
                oracle_passed: ours.iter().all(|r| r.oracle.passed),
            });
        }
    }
    let server_threads = args.server_threads.map(NonZeroUsize::get);
    Ok(CompareReport { servers: args.servers, server_threads, points, runs })
}

/// `aragora-cp bench compare`: runs the sweep, prints it, exits 1 when an oracle failed.
pub fn run(args: CompareBenchArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(run_compare(&args))?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => print_compare(&report),
    }
    Ok(if report.points.iter().all(|p| p.oracle_passed) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn print_compare(report: &CompareReport) {
    if report.servers > 1 {
        println!("control plane: {} servers on one Redis, the load spread over them", report.servers);
    }
    println!(
        "{:<14} {:>6} {:>4} {:>5} {:>9} {:>15} {:>15} {:>15} {:>9} {:>9} {:>10} {:>6}",
        "target",
        "agents",
        "subs",
        "round",
        "tasks/s",
        "submit p50/p99",
        "claim p50/p99",
        "complete p50/p99",
        "cpu/task",
        "load/task",
        "redis/task",
        "oracle"
    );
    for run in &report.runs {
        let r = &run.report;
        let l = &r.latency;
        let pair = |s: &super::load::LatencySummary| format!("{:.2}/{:.2}", s.p50_us / 1e3, s.p99_us / 1e3);
        println!(
            "{:<14} {:>6} {:>4} {:>5} {:>9.0} {:>15} {:>15} {:>15} {:>9} {:>9} {:>10} {:>6}",
            run.target,
            run.agents,
            run.submitters,
            run.round,
            r.tasks_per_second,
            pair(&l.submit),
            pair(&l.claim),
            pair(&l.complete),
            micros(r.server_cpu_per_task_us),
            micros(r.process_cpu_per_task_us),
            micros(r.redis.as_ref().map(|redis| redis.cpu_per_task_us)),
            if r.oracle.passed { "ok" } else { "FAILED" }
        );
        if let Some(redis) = &r.redis {
            println!("{:<14} redis: {}", "", redis.summary());
        }
    }
    println!();
    println!(
        "{:>6} {:>4} {:>12} {:>12} {:>14} {:>12} {:>14} {:>14} {:>7} {:>9}",
        "agents",
        "subs",
        "cp tasks/s",
        "cp cpu/task",
        "cp redis/task",
        "ceiling",
        "ceil cpu/task",
        "ceil redis/task",
        "ratio",
        "cpu ratio"
    );
    for p in &report.points {
        println!(
            "{:>6} {:>4} {:>12.0} {:>12} {:>14} {:>12} {:>14} {:>14} {:>7} {:>9}",
            p.agents,
            p.submitters,
            p.control_plane_tasks_per_second,
            micros(p.control_plane_cpu_per_task_us),
            micros(p.control_plane_redis_cpu_per_task_us),
            p.ceiling_tasks_per_second.map(|t| format!("{t:.0}")).unwrap_or_default(),
            micros(p.ceiling_cpu_per_task_us),
            micros(p.ceiling_redis_cpu_per_task_us),
            times(p.ratio),
            times(p.cpu_ratio)
        );
    }
    if report.points.iter().any(|p| p.cpu_ratio.is_some()) {
        println!();
        println!(
            "ratio: our tasks/s over the ceiling's; cpu ratio: the ceiling's CPU per task over ours. On one machine"
        );
        println!(
            "the load generator (load/task above) takes cores from either server, which pulls the ratio towards 1."
        );
    }
}

/// A figure in µs, or blank.
fn micros(us: Option<f64>) -> String {
    us.map(|us| format!("{us:.0} µs")).unwrap_or_default()
}

/// A ratio, or blank.
fn times(ratio: Option<f64>) -> String {
    ratio.map(|r| format!("{r:.2}×")).unwrap_or_default()
}
