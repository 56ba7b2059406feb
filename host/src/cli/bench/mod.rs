//! `aragora-cp bench`: the benchmarks, whose figures go into docs/BENCHMARKS.md (nothing here is a pass/fail test).
//! `plugins.rs` measures a strategy plugin's selection latency; `engine.rs` the engine in-process; `load.rs` is the
//! HTTP load generator (simulated agents and submitters against a server, with its oracle); `compare.rs` starts
//! the servers itself and runs that load as a sweep, alternated with the reference ceiling; `soak.rs` runs a long
//! mixed load with churn and faults on a fleet it starts (`processes.rs`: the children the benches start, and
//! what `/proc` says of them).

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use serde::Serialize;

use super::OutputFormat;

pub mod compare;
pub mod engine;
pub mod load;
pub mod plugins;
pub mod processes;
pub mod redis_figures;
pub mod soak;

pub use plugins::{PluginBenchArgs, plugin_bench, print_plugin_table};

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Strategy selection latency: plugin (warm and fresh instances) versus native, per candidate count.
    Plugins(plugins::PluginBenchArgs),
    /// In-process engine on the memory store: lifecycle throughput and claim latency against the backlog.
    Engine(engine::EngineBenchArgs),
    /// HTTP load against a running server: simulated agents and submitters, throughput, latency percentiles,
    /// errors, and a check that every submitted task was completed exactly once.
    Load(Box<load::LoadBenchArgs>),
    /// The HTTP load against servers this command starts (the control plane, and the reference ceiling in
    /// alternation), swept over waiting agents and submitters: tasks/s, latency, server CPU per task, ratio.
    Compare(Box<compare::CompareBenchArgs>),
    /// A long mixed load on a fleet this command starts (Redis and servers): agents joining, dying and returning,
    /// the routing strategy swapped, Redis restarted; memory, file descriptors and p99 over time, and the
    /// exactly-once oracle at the end.
    Soak(Box<soak::SoakBenchArgs>),
}

/// Runs one benchmark.
pub fn run(command: BenchCommand) -> anyhow::Result<ExitCode> {
    match command {
        BenchCommand::Plugins(args) => {
            let rows = plugins::plugin_bench(&args)?;
            let strategies = plugins::strategy_bench(&args)?;
            match args.output {
                // Without --strategy, the rows alone (the shape recorded runs have).
                OutputFormat::Json if strategies.is_empty() => println!("{}", serde_json::to_string_pretty(&rows)?),
                OutputFormat::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({"least_loaded": rows, "strategies": strategies}))?
                ),
                OutputFormat::Text => {
                    plugins::print_plugin_table(&rows);
                    if !strategies.is_empty() {
                        println!();
                        plugins::print_strategy_table(&strategies);
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Engine(args) => engine::run(args),
        BenchCommand::Load(args) => load::run(*args),
        BenchCommand::Compare(args) => compare::run(*args),
        BenchCommand::Soak(args) => soak::run(*args),
    }
}

/// Latency percentiles of one configuration, in microseconds.
#[derive(Clone, Debug, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
}

impl Percentiles {
    /// p50 and p99 of `samples` (zeros when there are none).
    pub fn of(mut samples: Vec<Duration>) -> Percentiles {
        samples.sort_unstable();
        Percentiles { p50_us: percentile_us(&samples, 0.50), p99_us: percentile_us(&samples, 0.99) }
    }
}

/// The `q` quantile (0–1) of `sorted` samples in µs, by nearest rank; 0 when there are none. Every bench reports
/// through this one function, so their figures are comparable.
pub fn percentile_us(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e6
}
