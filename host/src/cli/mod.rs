//! The `aragora-cp` command line: argument parsing and dispatch to one module per command group.
//! `plugin.rs` holds the plugin author's tools (check, run, new, watch, replay); `bench/` the benchmarks (plugins, the
//! engine, HTTP load and the sweep that compares it with the reference ceiling); `serve.rs` the
//! server (`serve`) and its token tool (`token`); `client.rs` the commands that talk to a running server
//! (`agents`, `tasks`, `health`, `stats`, `plugins`, `events`); `demo/` the narrated walkthrough on an embedded
//! server (`demo`); `log_lines.rs` how text log lines write their fields.

pub mod bench;
pub mod client;
pub mod demo;
pub mod http;
mod log_lines;
pub mod plugin;
pub mod scaffold;
pub mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Control plane for fleets of AI agents, with WebAssembly strategy, policy and health-probe plugins.
#[derive(Debug, Parser)]
#[command(name = "aragora-cp", version, about)]
pub struct Cli {
    /// Log lines on stderr: `pretty` for people, `json` (one object per line) for log collectors. `RUST_LOG`
    /// sets the level.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty, global = true)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The command groups.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Plugin author's tools: check a component, run one call, scaffold a new plugin crate.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Benchmarks that print comparable figures.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Runs the REST API server.
    Serve(Box<serve::ServeArgs>),
    /// A narrated walkthrough on an embedded server: simulated agents, routing, a hot-swapped strategy, a policy
    /// denial, an agent lost mid-task, the stats.
    Demo(demo::DemoArgs),
    /// Prints a bearer token signed with ARAGORA_JWT_SECRET.
    Token(serve::TokenArgs),
    /// Agents on a running server: list, get, register, unregister.
    Agents {
        /// Server and credentials.
        #[command(flatten)]
        connection: client::Connection,
        /// What to do.
        #[command(subcommand)]
        command: client::AgentsCommand,
    },
    /// Tasks on a running server: submit, get, list, prioritize, cancel, watch.
    Tasks {
        /// Server and credentials.
        #[command(flatten)]
        connection: client::Connection,
        /// What to do.
        #[command(subcommand)]
        command: client::TasksCommand,
    },
    /// The fleet's health.
    Health {
        /// Server and credentials.
        #[command(flatten)]
        connection: client::Connection,
    },
    /// The server's counters.
    Stats {
        /// Server and credentials.
        #[command(flatten)]
        connection: client::Connection,
    },
    /// The plugins a server has loaded.
    Plugins {
        /// Server and credentials.
        #[command(flatten)]
        connection: client::Connection,
    },
    /// Every policy the server runs: rule sets and code.
    Policies {
        /// Server and credentials.
        #[command(flatten)]
        connection: client::Connection,
    },
    /// What waits in the queue and how long work waited for a claim.
    Queue {
        /// Server and credentials.
        #[command(flatten)]
        connection: client::Connection,
    },
    /// Recurring tasks: list, create, pause, resume, delete.
    Schedules {
        /// Server and credentials.
        #[command(flatten)]
        connection: client::Connection,
        /// What to do.
        #[command(subcommand)]
        command: client::SchedulesCommand,
    },
    /// The audit log: list entries, verify the chain (an admin token).
    Audit {
        /// Server and credentials.
        #[command(flatten)]
        connection: client::Connection,
        /// What to do.
        #[command(subcommand)]
        command: client::AuditCommand,
    },
    /// Ask for a vetted decision: queued for a deliberation worker (`--async`), or waited for; with `--agents`,
    /// `--rounds` or `--decide`, the control plane runs the rounds itself among that many agents.
    Deliberate {
        /// Server and credentials.
        #[command(flatten)]
        connection: client::Connection,
        /// The question or decision.
        question: String,
        /// Queue it and print its request id at once.
        #[arg(long = "async")]
        queue: bool,
        /// The decision type the worker is asked for.
        #[arg(long, default_value = "debate")]
        decision_type: String,
        /// Seconds to wait for the decision (1 to 80: the client gives up on a request after 90).
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=80))]
        timeout: u32,
        /// Orchestrated: how many distinct agents take part (1 to 16).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=16))]
        agents: Option<u32>,
        /// Orchestrated: rounds (1 to 5), the first proposing, the others revising.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=5))]
        rounds: Option<u32>,
        /// Orchestrated: majority, unanimous or judge.
        #[arg(long, value_parser = ["majority", "unanimous", "judge"])]
        decide: Option<String>,
    },
    /// Notification channels and their deliveries (an admin token).
    Notifications {
        /// Server and credentials.
        #[command(flatten)]
        connection: client::Connection,
        /// What to do.
        #[command(subcommand)]
        command: client::NotificationsCommand,
    },
    /// Follow the server's event stream.
    Events {
        /// Server and credentials.
        #[command(flatten)]
        connection: client::Connection,
        /// Only these event types (comma-separated), e.g. task_completed,agent_offline.
        #[arg(long)]
        types: Option<String>,
    },
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Pretty,
    /// One JSON object per line; a refusal's line carries its method, uri and request_id.
    Json,
}

/// How results are printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// For people.
    #[default]
    Text,
    /// For scripts: one JSON document on stdout.
    Json,
}

/// Runs the command line; the binary's `main` is this.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format, if matches!(cli.command, Command::Serve(_)) { "info" } else { "warn" });
    let outcome = match cli.command {
        Command::Plugin(command) => plugin::run(command),
        Command::Bench(command) => bench::run(command),
        Command::Serve(args) => serve::run(*args),
        Command::Token(args) => serve::token(args),
        Command::Demo(args) => demo::run(args),
        Command::Agents { connection, command } => client::run(connection, client::ClientCommand::Agents(command)),
        Command::Tasks { connection, command } => client::run(connection, client::ClientCommand::Tasks(command)),
        Command::Health { connection } => client::run(connection, client::ClientCommand::Health),
        Command::Stats { connection } => client::run(connection, client::ClientCommand::Stats),
        Command::Plugins { connection } => client::run(connection, client::ClientCommand::Plugins),
        Command::Policies { connection } => client::run(connection, client::ClientCommand::Policies),
        Command::Queue { connection } => client::run(connection, client::ClientCommand::Queue),
        Command::Schedules { connection, command } => {
            client::run(connection, client::ClientCommand::Schedules(command))
        }
        Command::Deliberate { connection, question, queue, decision_type, timeout, agents, rounds, decide } => {
            let orchestrated =
                (agents.is_some() || rounds.is_some() || decide.is_some()).then_some((agents, rounds, decide));
            let command = client::ClientCommand::Deliberate { question, queue, decision_type, timeout, orchestrated };
            client::run(connection, command)
        }
        Command::Notifications { connection, command } => {
            client::run(connection, client::ClientCommand::Notifications(command))
        }
        Command::Audit { connection, command } => client::run(connection, client::ClientCommand::Audit(command)),
        Command::Events { connection, types } => client::run(connection, client::ClientCommand::Events { types }),
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn init_tracing(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Pretty => logs.fmt_fields(log_lines::EscapedFields).try_init(),
        LogFormat::Json => logs.json().with_current_span(true).with_span_list(false).try_init(),
    };
}
