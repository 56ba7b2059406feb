//! `aragora-cp bench plugins`: selection latency of a strategy plugin (warm instances, and a fresh instance per
//! call for comparison) beside the same rule written natively, for 10, 100 and 1000 candidates; and of any
//! strategy components named with `--strategy` (the same rule built in Python, JavaScript and Rust, say).

use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use super::Percentiles;
use crate::cli::OutputFormat;
use crate::plugins::bindings::{CallContext, Candidate, CandidateDetails, HealthStatus, Priority, TaskInfo};
use crate::plugins::builtin::builtin_bytes;
use crate::plugins::{Manifest, PluginRuntime, PluginSource, PluginVersion, RuntimeOptions, loader};

/// Arguments of `bench plugins`.
#[derive(Debug, Args)]
pub struct PluginBenchArgs {
    /// Calls measured per candidate count (after a warm-up of a tenth as many).
    #[arg(long, default_value_t = 5000)]
    pub iterations: usize,
    /// Calls measured per candidate count with a fresh instance per call (slower; fewer are enough).
    #[arg(long, default_value_t = 500)]
    pub fresh_iterations: usize,
    /// Candidate counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    pub candidates: Vec<usize>,
    /// Strategy components to measure too (warm, as the server calls them, each with the manifest `NAME.toml`
    /// beside it): the same rule in several languages, say.
    #[arg(long = "strategy", value_name = "COMPONENT")]
    pub strategies: Vec<std::path::PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// One row of a `--strategy` component's figures.
#[derive(Clone, Debug, Serialize)]
pub struct StrategyBenchRow {
    /// The component's name (its file stem).
    pub name: String,
    /// Candidates per call.
    pub candidates: usize,
    /// Warm instance reused across calls, with candidate-details when its manifest asks for them.
    pub warm: Percentiles,
    /// What a fresh instance took to start when the version loaded (calls do not pay it); 0 if not measured.
    pub start_up_us: f64,
    /// Fuel one call burned.
    pub fuel_per_call: u64,
    /// Calls that failed (fuel, deadline) and would have fallen back in the server.
    pub failures: usize,
}

/// Measures each `--strategy` component, warm, at each candidate count.
pub fn strategy_bench(args: &PluginBenchArgs) -> anyhow::Result<Vec<StrategyBenchRow>> {
    let runtime = PluginRuntime::new(RuntimeOptions::default())?;
    let task = bench_task();
    let mut rows = Vec::new();
    for path in &args.strategies {
        let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        let (manifest, _) = crate::cli::plugin::read_manifest(path, None)?;
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("strategy").to_string();
        let version = loader::load(&runtime, &name, PluginSource::File, &bytes, manifest)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        for &count in &args.candidates {
            let (candidates, details) = synthetic_fleet(count);
            let ctx = CallContext { now_ms: 1_700_000_000_000, seed: 1 };
            let (mut fuel_per_call, mut failures) = (0, 0);
            let warm = measure(args.iterations, || match version.select_reporting(ctx, &task, &candidates, &details) {
                Ok((_, report)) => fuel_per_call = report.fuel_used,
                Err(_) => failures += 1,
            });
            let start_up_us = version.start_up.map_or(0.0, |s| s.time.as_secs_f64() * 1e6);
            rows.push(StrategyBenchRow {
                name: name.clone(),
                candidates: count,
                warm,
                start_up_us,
                fuel_per_call,
                failures,
            });
        }
    }
    Ok(rows)
}

/// Prints the `--strategy` rows.
pub fn print_strategy_table(rows: &[StrategyBenchRow]) {
    println!("strategy selection latency, warm (µs)");
    println!(
        "{:>20}  {:>10}  {:>10} {:>10}  {:>12}  {:>10}  {:>6}",
        "component", "candidates", "p50", "p99", "start-up", "fuel", "failed"
    );
    for r in rows {
        println!(
            "{:>20}  {:>10}  {:>10.2} {:>10.2}  {:>12.0}  {:>10}  {:>6}",
            r.name, r.candidates, r.warm.p50_us, r.warm.p99_us, r.start_up_us, r.fuel_per_call, r.failures
        );
    }
}

fn bench_task() -> TaskInfo {
    TaskInfo {
        id: "task_0190a1b2c3d4e5f60718293a4b5c6d7e".into(),
        task_type: "code".into(),
        priority: Priority::Normal,
        required_capabilities: vec!["code".into()],
        labels: Vec::new(),
    }
}

/// One row of the plugin benchmark.
#[derive(Clone, Debug, Serialize)]
pub struct PluginBenchRow {
    /// Candidates per call.
    pub candidates: usize,
    /// `least_loaded` plugin, warm instance reused across calls (what the server does).
    pub plugin_warm: Percentiles,
    /// `least_loaded` plugin, fresh store + instance + init per call.
    pub plugin_fresh: Percentiles,
    /// `least_loaded` plugin, warm, also receiving candidate-details (ids, models, providers), with 10 M fuel.
    pub plugin_with_details: Percentiles,
    /// `least_loaded` plugin, warm, called from a tokio worker thread (as routing does): the call goes through
    /// `block_in_place`, which the synchronous WASI bindings need there.
    pub plugin_from_async: Percentiles,
    /// The same rule in Rust over the same records.
    pub native: Percentiles,
    /// plugin_warm p50 / native p50.
    pub ratio_p50: f64,
    /// Fuel one warm call burned.
    pub fuel_per_call: u64,
    /// Calls that failed (deadline or fuel) and would have fallen back in the server.
    pub failures: usize,
}

/// Measures `least_loaded` as plugin (warm and fresh) and natively for each candidate count.
pub fn plugin_bench(args: &PluginBenchArgs) -> anyhow::Result<Vec<PluginBenchRow>> {
    let warm = std::sync::Arc::new(load_least_loaded(true, Manifest::default())?);
    let fresh = load_least_loaded(false, Manifest::default())?;
    // The same plugin told to receive candidate-details: the price of the strings.
    // Ten times the default fuel, so that 1000 candidates with strings finish and their cost shows as time.
    let mut detailed_manifest = Manifest { needs_details: true, ..Manifest::default() };
    detailed_manifest.limits.fuel = Some(10_000_000);
    let detailed = load_least_loaded(true, detailed_manifest)?;
    let task = bench_task();
    let mut rows = Vec::new();
    for &count in &args.candidates {
        let (candidates, details) = synthetic_fleet(count);
        let ctx = CallContext { now_ms: 1_700_000_000_000, seed: 1 };
        let expected = least_loaded_native(&candidates);
        let mut fuel_per_call = 0;
        let mut failures = 0;
        let plugin_warm = measure(args.iterations, || match warm.select_reporting(ctx, &task, &candidates, &details) {
            Ok((index, report)) => {
                assert_eq!(index, expected, "the plugin and the native rule disagree");
                fuel_per_call = report.fuel_used;
            }
            // A call preempted past its deadline on a busy machine fails; the server would fall back. Count it.
            Err(_) => failures += 1,
        });
        let plugin_fresh = measure(args.fresh_iterations, || {
            if fresh.select(ctx, &task, &candidates, &details).is_err() {
                failures += 1;
            }
        });
        let plugin_with_details = measure(args.iterations, || {
            if detailed.select(ctx, &task, &candidates, &details).is_err() {
                failures += 1;
            }
        });
        let native = measure(args.iterations, || {
            std::hint::black_box(least_loaded_native(std::hint::black_box(&candidates)));
        });
        let plugin_from_async = {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build()?;
            let (warm, task, candidates, details) = (warm.clone(), task.clone(), candidates.clone(), details.clone());
            let iterations = args.iterations;
            // Spawned, so the calls run on a runtime worker thread as a router's would.
            runtime.block_on(async move {
                tokio::spawn(async move {
                    measure(iterations, || {
                        std::hint::black_box(warm.select(ctx, &task, &candidates, &details).ok());
                    })
                })
                .await
            })?
        };
        rows.push(PluginBenchRow {
            candidates: count,
            ratio_p50: plugin_warm.p50_us / native.p50_us.max(0.001),
            plugin_warm,
            plugin_fresh,
            plugin_with_details,
            plugin_from_async,
            native,
            fuel_per_call,
            failures,
        });
    }
    Ok(rows)
}

fn load_least_loaded(reuse_instances: bool, manifest: Manifest) -> anyhow::Result<PluginVersion> {
    let runtime = PluginRuntime::new(RuntimeOptions { reuse_instances, ..RuntimeOptions::default() })?;
    let bytes = builtin_bytes("least_loaded").expect("least_loaded is built in");
    Ok(loader::load(&runtime, "least_loaded", PluginSource::Builtin, bytes, manifest)?)
}

/// Candidates shaped like a real fleet (a few models and providers, varied counters, one least loaded) and
/// their details.
pub fn synthetic_fleet(count: usize) -> (Vec<Candidate>, Vec<CandidateDetails>) {
    const MODELS: &[(&str, &str)] = &[
        ("claude-sonnet-4", "anthropic"),
        ("gpt-4.1", "openai"),
        ("gemini-2.5-pro", "google"),
        ("mistral-large", "mistral"),
    ];
    (0..count)
        .map(|i| {
            let (model, provider) = MODELS[i % MODELS.len()];
            let candidate = Candidate {
                in_flight: if i == count * 2 / 3 { 0 } else { 1 + (i as u32 * 7) % 5 },
                max_concurrent: 8,
                completed: (i as u64 * 13) % 100,
                failed: (i as u64) % 3,
                avg_latency_ms: 200 + (i as u32 * 37) % 900,
                heartbeat_age_ms: (i as u64 * 101) % 10_000,
                since_assigned_ms: if i % 5 == 0 { None } else { Some(i as u64 * 17) },
                health: HealthStatus::Healthy,
            };
            let details = CandidateDetails {
                agent_id: format!("agent-{i:05}"),
                model: model.into(),
                provider: provider.into(),
                labels: Vec::new(),
            };
            (candidate, details)
        })
        .unzip()
}

/// The `least_loaded` rule in Rust, for the ratio: fewest in flight, then fewest completed, then lowest index.
pub fn least_loaded_native(candidates: &[Candidate]) -> usize {
    candidates.iter().enumerate().min_by_key(|(_, c)| (c.in_flight, c.completed)).map(|(i, _)| i).unwrap_or(0)
}

fn measure(iterations: usize, mut call: impl FnMut()) -> Percentiles {
    let iterations = iterations.max(1);
    for _ in 0..iterations / 10 {
        call();
    }
    let mut samples: Vec<Duration> = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let started = Instant::now();
        call();
        samples.push(started.elapsed());
    }
    Percentiles::of(samples)
}

/// Prints the rows as the table docs/BENCHMARKS.md quotes.
pub fn print_plugin_table(rows: &[PluginBenchRow]) {
    println!("strategy selection latency, least_loaded (µs)");
    println!(
        "{:>10}  {:>10} {:>10}  {:>10} {:>10}  {:>10} {:>10}  {:>12} {:>12}  {:>10} {:>10}  {:>6}  {:>8}  {:>6}",
        "candidates",
        "warm p50",
        "warm p99",
        "async p50",
        "async p99",
        "fresh p50",
        "fresh p99",
        "details p50",
        "details p99",
        "native p50",
        "native p99",
        "ratio",
        "fuel",
        "failed"
    );
    for r in rows {
        println!(
            "{:>10}  {:>10.2} {:>10.2}  {:>10.2} {:>10.2}  {:>10.2} {:>10.2}  {:>12.2} {:>12.2}  {:>10.3} {:>10.3}  {:>5.0}x  {:>8}  {:>6}",
            r.candidates,
            r.plugin_warm.p50_us,
            r.plugin_warm.p99_us,
            r.plugin_from_async.p50_us,
            r.plugin_from_async.p99_us,
            r.plugin_fresh.p50_us,
            r.plugin_fresh.p99_us,
            r.plugin_with_details.p50_us,
            r.plugin_with_details.p99_us,
            r.native.p50_us,
            r.native.p99_us,
            r.ratio_p50,
            r.fuel_per_call,
            r.failures
        );
    }
}
