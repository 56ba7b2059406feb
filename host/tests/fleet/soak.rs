//! The soak's short run (`aragora-cp bench soak`, in-process, its servers this package's binary): 24 s of mixed
//! load on two servers with agents dying and returning, the strategy swapped every 4 s and Redis restarted
//! halfway. The long run is a command (docs/RELIABILITY.md); this one proves the machinery and the oracle in CI.
//! No timing is asserted: the figures are printed, the oracle is checked.

use aragora_cp::cli::bench::BenchCommand;
use aragora_cp::cli::bench::soak::{SoakBenchArgs, run_soak};
use aragora_cp::cli::{Cli, Command as CliCommand};
use clap::Parser;

use crate::harness::{HEAVY, binary};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_soak_loses_nothing_through_churn_swaps_and_a_redis_restart() {
    let _heavy = HEAVY.lock().await;
    let serve = binary();
    let line = [
        "aragora-cp",
        "bench",
        "soak",
        "--duration",
        "24",
        "--sample-every",
        "6",
        "--swap-every",
        "4",
        "--agents",
        "12",
        "--submitters",
        "4",
        "--rate",
        "60",
        "--serve-binary",
        &serve,
    ];
    let args: SoakBenchArgs = match Cli::try_parse_from(line).expect("the command line parses").command {
        CliCommand::Bench(BenchCommand::Soak(args)) => *args,
        other => panic!("bench soak parsed as {other:?}"),
    };
    let report = run_soak(&args).await.expect("the soak runs");
    eprintln!("{}", serde_json::to_string_pretty(&report).expect("a report"));
    assert!(
        report.passed,
        "the soak's oracle failed: lost {}, twice {}, anomalies {:?}, store agrees {}",
        report.lost, report.completed_twice, report.anomalies, report.store_agrees
    );
    assert!(
        report.submitted > 500 && report.completed == report.submitted,
        "{} / {}",
        report.completed,
        report.submitted
    );
    assert_eq!(report.redis_restarts, 1);
    assert!(report.unavailable > 0, "submits during the restart saw 503 store_unavailable");
    assert!(report.swaps >= 4, "strategy swaps: {}", report.swaps);
    assert!(
        report.agent_deaths > 0 && report.agent_returns > 0,
        "churn: {} deaths, {} returns",
        report.agent_deaths,
        report.agent_returns
    );
    assert!(report.abandoned > 0, "some agent died holding a task, which came back through the heartbeat timeout");
    assert!(report.samples.len() >= 5, "a sample every 6 s: {}", report.samples.len());
    for figures in &report.server_figures {
        assert!(figures.rss_start_mib > 0.0 && figures.fds_start > 0, "process figures from /proc: {figures:?}");
    }
}
