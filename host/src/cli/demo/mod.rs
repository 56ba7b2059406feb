//! `aragora-cp demo`: an embedded control plane (memory store or `--redis`, a temporary plugins folder it watches)
//! started the way `serve` starts one, then a narrated walkthrough against it over HTTP — five simulated agents,
//! routing by `least_loaded`, a strategy hot-loaded from the folder, a policy denial, an agent lost mid-task, the
//! stats.
//!
//! `walkthrough.rs` holds the steps; `agent.rs` the simulated agents' loop; `events.rs` the record of the event
//! stream that task histories come from; `load.rs` the optional load run; `show.rs` the narration and tables.
//! `--summary-json` writes each step's facts as the server reported them, so a test can check the walkthrough
//! without reading its prose.

pub mod agent;
mod events;
mod load;
mod show;
mod walkthrough;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use super::http::Api;
use crate::api::{self, Authenticator, Permission};
use crate::cli::serve::{RunningServer, ServerSettings, ShutdownSignal};
use crate::config::Config;
use crate::store::open::{StoreKind, StoreOptions};
use agent::{Controls, Ending, LoopOptions, Profile};

/// `aragora-cp demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Short latencies and few tasks: the walkthrough takes well under a minute.
    #[arg(long)]
    pub quick: bool,
    /// After the walkthrough, push many tasks through a fleet of fast agents and report throughput and latency
    /// percentiles.
    #[arg(long)]
    pub simulate_load: bool,
    /// Tasks pushed by `--simulate-load`.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub load_tasks: u32,
    /// Write what each step did, as the server reported it, to this JSON file.
    #[arg(long, value_name = "PATH")]
    pub summary_json: Option<PathBuf>,
    /// Address of the embedded server; port 0 picks a free port. Loopback only: the demo signs its own tokens.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub bind: String,
    /// Run the embedded server on this Redis (`redis://`, `rediss://`, `redis+cluster://`) instead of the memory
    /// store. Keys go under a fresh prefix per run (printed), so a deployment's keys are never touched; they are
    /// left behind for inspection.
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,
    /// Seed of the simulated agents' failures, so a run can be repeated.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Keep the server and agents running after the walkthrough until Ctrl-C, to explore with curl or the client
    /// commands.
    #[arg(long)]
    pub hold: bool,
}

/// Timings and sizes of a run: `--quick` divides every latency by ten and submits fewer tasks.
#[derive(Clone, Debug)]
pub struct Pace {
    /// Latencies are multiplied by this.
    pub latency_scale: f64,
    /// Tasks per routing step.
    pub tasks_per_step: usize,
    /// `HEARTBEAT_INTERVAL` of the embedded server.
    pub heartbeat_interval: Duration,
    /// `HEARTBEAT_TIMEOUT`: short, so an agent lost mid-task is noticed within seconds.
    pub heartbeat_timeout: Duration,
    /// The latency bound tasks set for `cheapest_within_latency` (`metadata.max_latency_ms`).
    pub max_latency_ms: u64,
}

impl Pace {
    fn new(quick: bool) -> Self {
        if quick {
            Pace {
                latency_scale: 0.1,
                tasks_per_step: 12,
                heartbeat_interval: Duration::from_millis(500),
                heartbeat_timeout: Duration::from_secs(3),
                max_latency_ms: 250,
            }
        } else {
            Pace {
                latency_scale: 1.0,
                tasks_per_step: 20,
                heartbeat_interval: Duration::from_secs(1),
                heartbeat_timeout: Duration::from_secs(5),
                max_latency_ms: 2_500,
            }
        }
    }
}

/// The simulated fleet, at full latency. Costs and latencies are chosen so that `cheapest_within_latency` has a
/// visible answer: `llama-local` is cheapest but slower than the bound, so `gemini-flash` and `mistral-large` win.
fn fleet(pace: &Pace) -> Vec<Profile> {
    let scaled = |ms: u64| Duration::from_millis(((ms as f64) * pace.latency_scale).round() as u64);
    vec![
        Profile {
            agent_id: "claude-opus",
            model: "claude-opus-4",
            provider: "anthropic",
            capabilities: &["code", "analysis", "debate", "critique", "judge"],
            cost: 15.0,
            latency: scaled(1_200),
            failure_rate: 0.0,
        },
        Profile {
            agent_id: "gpt-4o",
            model: "gpt-4o",
            provider: "openai",
            capabilities: &["code", "analysis", "summarize", "research", "debate"],
            cost: 5.0,
            latency: scaled(800),
            failure_rate: 0.02,
        },
        Profile {
            agent_id: "gemini-flash",
            model: "gemini-2.0-flash",
            provider: "google",
            capabilities: &["code", "analysis", "summarize", "research"],
            cost: 0.5,
            latency: scaled(300),
            failure_rate: 0.05,
        },
        Profile {
            agent_id: "mistral-large",
            model: "mistral-large-2",
            provider: "mistral",
            capabilities: &["code", "debate", "critique", "summarize"],
            cost: 2.0,
            latency: scaled(600),
            failure_rate: 0.05,
        },
        Profile {
            agent_id: "llama-local",
            model: "llama-3.1-70b",
            provider: "self-hosted",
            capabilities: &["code", "analysis", "summarize"],
            cost: 0.1,
            latency: scaled(4_000),
            failure_rate: 0.15,
        },
    ]
}

/// One simulated agent while it runs.
pub(crate) struct FleetMember {
    profile: Profile,
    controls: Arc<Controls>,
    join: tokio::task::JoinHandle<anyhow::Result<Ending>>,
}

/// Everything the steps share: the server's URL, clients with the right tokens, the fleet, the event record and
/// the summary being written.
pub(crate) struct Demo {
    pace: Pace,
    auth: Arc<Authenticator>,
    /// Admin: pause/resume, plugin and violation reads.
    admin: Api,
    /// A client application: submits tasks and reads them (`controlplane:tasks` + `controlplane:read`).
    submitter: Api,
    plugins_dir: PathBuf,
    seed: u64,
    /// Prefix of idempotency keys: unique per run.
    run_id: String,
    submitted: usize,
    events: Option<events::EventRecorder>,
    members: Vec<FleetMember>,
    /// Stops the agents: they drain and unregister.
    stop_agents: CancellationToken,
    summary: Map<String, Value>,
}

impl Demo {
    /// Starts one simulated agent with its own `agent:<id>` token, as a deployed agent would hold.
    fn spawn_agent(&mut self, profile: Profile, block_ms: u64) -> anyhow::Result<()> {
        let token = self.auth.issue(
            &format!("agent:{}", profile.agent_id),
            &[Permission::Agents, Permission::Tasks],
            Duration::from_secs(24 * 3600),
        )?;
        let controls = Arc::new(Controls::default());
        let options = LoopOptions { block_ms, seed: self.seed ^ fnv(profile.agent_id) };
        let join = tokio::spawn(agent::run(
            self.admin.with_token(token),
            profile.clone(),
            options,
            controls.clone(),
            self.stop_agents.clone(),
        ));
        self.members.push(FleetMember { profile, controls, join });
        Ok(())
    }

    /// Stops every agent still running: each drains and unregisters. Errors of the agents' loops surface here.
    async fn stop_fleet(&mut self) -> anyhow::Result<()> {
        self.stop_agents.cancel();
        let mut first_error = None;
        for member in self.members.drain(..) {
            let outcome = match tokio::time::timeout(Duration::from_secs(30), member.join).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(panic)) => {
                    Err(anyhow::anyhow!("{}: the agent's task panicked: {panic}", member.profile.agent_id))
                }
                Err(_) => Err(anyhow::anyhow!("{}: did not stop within 30 s", member.profile.agent_id)),
            };
            if let Err(error) = outcome {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn record(&mut self, key: &str, value: Value) {
        self.summary.insert(key.to_string(), value);
    }

    fn step_done(&mut self, name: &str) {
        let steps = self.summary.entry("steps").or_insert_with(|| json!([]));
        if let Some(steps) = steps.as_array_mut() {
            steps.push(json!(name));
        }
    }
}

/// A stable hash of an agent id, to give each agent its own failure draws from one seed.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

/// A temporary plugins folder, removed when dropped.
struct TempFolder(PathBuf);

impl TempFolder {
    fn create() -> anyhow::Result<Self> {
        let path =
            std::env::temp_dir().join(format!("aragora-cp-demo-{}-{:08x}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("creating the demo's plugins folder {}", path.display()))?;
        Ok(TempFolder(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFolder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the demo.
pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let bind: SocketAddr =
        args.bind.parse().with_context(|| format!("--bind: {:?} is not an address such as 127.0.0.1:0", args.bind))?;
    anyhow::ensure!(bind.ip().is_loopback(), "--bind: the demo signs its own tokens, so it listens on loopback only");
    let runtime = tokio::runtime::Runtime::new().context("start the tokio runtime")?;
    runtime.block_on(run_async(args, bind))
}

async fn run_async(args: DemoArgs, bind: SocketAddr) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let pace = Pace::new(args.quick);
    let folder = TempFolder::create()?;
    let config = Config {
        plugins_dir: Some(folder.path().to_path_buf()),
        heartbeat_interval: pace.heartbeat_interval,
        heartbeat_timeout: pace.heartbeat_timeout,
        ..Config::default()
    };
    let auth = Arc::new(Authenticator::hs256(&Authenticator::generated_secret(), None, None)?);
    let settings = ServerSettings {
        bind,
        max_body_bytes: api::MAX_BODY_BYTES,
        header_read_timeout: api::DEFAULT_HEADER_READ_TIMEOUT,
        drain: Duration::from_secs(5),
        store: StoreOptions {
            // Memory unless asked: never the probe of localhost:6379 that `serve` does with REDIS_URL unset, so a
            // demo does not write into a Redis it was not told about.
            redis_url: Some(args.redis.clone().unwrap_or_else(|| "memory://".into())),
            require_redis: args.redis.is_some(),
            connect_timeout: Duration::from_secs(10),
            prefix: format!("{}demo-{:08x}:", crate::store::redis::DEFAULT_PREFIX, rand::random::<u32>()),
        },
    };
    let (store, kind) = crate::store::open::open(&settings.store, config.store_config())
        .await
        .context("--redis: cannot open the store")?;
    let store_line = match kind {
        StoreKind::Memory => "memory store".to_string(),
        StoreKind::Redis => format!("Redis, keys under {}", settings.store.prefix),
    };
    let mut signal = ShutdownSignal::install()?;
    let mut server = RunningServer::start(config, &settings, store, auth.clone(), None).await?;
    let base = format!("http://{}", server.address);
    let admin_token = auth.issue("admin", &[Permission::Admin], Duration::from_secs(24 * 3600))?;
    let submitter_token =
        auth.issue("demo-submitter", &[Permission::Tasks, Permission::Read], Duration::from_secs(24 * 3600))?;

    println!("aragora-cp demo{}", if args.quick { " (quick)" } else { "" });
    println!("   control plane  {base}  ({store_line})");
    println!("   plugins folder {}  (watched: files dropped here load while it runs)", folder.path().display());
    println!("   admin token    {admin_token}");
    println!("   watch it live: ARAGORA_SERVER={base} ARAGORA_TOKEN=<token> aragora-cp events");

    let admin = Api::new(&base, Some(admin_token.clone()))?;
    let mut demo = Demo {
        pace,
        auth,
        submitter: admin.with_token(submitter_token),
        admin,
        plugins_dir: folder.path().to_path_buf(),
        seed: args.seed,
        run_id: format!("demo-{:016x}", rand::random::<u64>()),
        submitted: 0,
        events: None,
        members: Vec::new(),
        stop_agents: CancellationToken::new(),
        summary: Map::new(),
    };
    demo.record("server", json!(base));
    demo.record("quick", json!(args.quick));
    demo.record("seed", json!(args.seed));

    let outcome = tokio::select! {
        outcome = walkthrough::run(&mut demo, &args) => Some(outcome),
        outcome = server.stopped() => Some(outcome.and_then(|()| Err(anyhow::anyhow!("the server stopped")))),
        _ = signal.recv() => None,
    };
    let mut signalled = outcome.is_none();
    if args.hold && matches!(outcome, Some(Ok(()))) {
        println!();
        println!("holding: the server and agents keep running at {base}; Ctrl-C stops them");
        tokio::select! {
            _ = signal.recv() => signalled = true,
            stopped = server.stopped() => stopped?,
        }
    }
    if outcome.is_none() {
        println!();
        println!("interrupted: stopping the agents (they drain and unregister), then draining the server");
    }
    let stopped = demo.stop_fleet().await;
    demo.events = None;
    // What the server says is left once the agents stopped: they should have unregistered, leaving only an agent
    // that died without a word (step 5), now offline.
    if let Ok(agents) = demo.admin.get("/agents").await {
        let left: Vec<Value> = agents["agents"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|a| json!({"agent_id": a["agent_id"], "status": a["status"]}))
            .collect();
        demo.record("agents_after_stop", json!(left));
    }
    demo.record("stopped_by_signal", json!(signalled));
    demo.record("elapsed_seconds", json!(started.elapsed().as_secs_f64()));
    demo.record("completed", json!(matches!(outcome, Some(Ok(())))));
    if let Some(path) = &args.summary_json {
        let text = serde_json::to_string_pretty(&Value::Object(demo.summary.clone()))?;
        std::fs::write(path, text).with_context(|| format!("--summary-json: cannot write {}", path.display()))?;
    }
    server.shutdown().await?;
    match outcome {
        None => {
            println!("agents unregistered, server drained");
            Ok(ExitCode::from(130))
        }
        Some(Err(error)) => Err(error),
        Some(Ok(())) => {
            stopped?;
            println!();
            println!("done in {:.1} s: agents unregistered, server drained", started.elapsed().as_secs_f64());
            Ok(ExitCode::SUCCESS)
        }
    }
}
