//! `cargo run -p aragora-cp-examples --bin submitter -- --token $TOKEN --count 12 --wait 30`: submits a mix of
//! task types and priorities to a running server over REST, waits for the results, prints a summary. Exits 1 when
//! a request is refused or, with `--wait`, when a task did not complete.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aragora_cp_examples::submitter::{Options, run};
use clap::Parser;

/// Submit tasks to an aragora-cp server and report how they ended.
#[derive(Debug, Parser)]
#[command(name = "submitter")]
struct Cli {
    /// The server's base URL.
    #[arg(long, env = "ARAGORA_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// A bearer token (the admin token `aragora-cp serve` prints, or one from `aragora-cp token`).
    #[arg(long, env = "ARAGORA_TOKEN", hide_env_values = true)]
    token: String,
    /// How many tasks to submit.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    count: u32,
    /// Task types, comma-separated and cycled through; each task requires the capability named by its type.
    #[arg(long, value_delimiter = ',', default_value = "code,analysis,summarize")]
    types: Vec<String>,
    /// Let any agent take any task instead of requiring the capability named by the task's type.
    #[arg(long)]
    any_agent: bool,
    /// Wait up to this many seconds in total for the results (0: submit and exit).
    #[arg(long, default_value_t = 0.0)]
    wait: f64,
    /// Prefix of the idempotency keys; running again with the same id submits nothing new.
    #[arg(long)]
    run_id: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if !(cli.wait.is_finite() && cli.wait >= 0.0) {
        eprintln!("error: --wait must be a number of seconds, 0 or more; got {}", cli.wait);
        return ExitCode::from(2);
    }
    let run_id = cli.run_id.unwrap_or_else(|| {
        let millis = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or_default();
        format!("submitter-{millis}-{}", std::process::id())
    });
    let options = Options {
        server: cli.server,
        token: cli.token,
        count: cli.count as usize,
        task_types: cli.types.into_iter().map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect(),
        require_capability: !cli.any_agent,
        wait: (cli.wait > 0.0).then(|| Duration::from_secs_f64(cli.wait)),
        run_id,
    };
    match run(&options).await {
        Ok(summary) => {
            print!("{summary}");
            if summary.waited && !summary.all_completed() {
                eprintln!("not every task completed: is an agent with the right capabilities running?");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
