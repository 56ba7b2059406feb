//! `aragora-cp plugin check|run|new|watch|replay`: what a plugin author needs between writing a guest and dropping
//! it into `PLUGINS_DIR`. `check` and `run` load the component exactly as the server does (same runtime, limits,
//! validation), so a plugin that passes here loads there. `replay` runs a candidate strategy over decisions the
//! server recorded (decision 0022) and says where it would have chosen another agent, before anything is installed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::OutputFormat;
use super::http::Api;
use super::scaffold::{Language, ScaffoldKind, scaffold};
use crate::api::decisions::since;
use crate::model::{DecisionRecord, DecisionRole, MAX_DECISION_PAGE};
use crate::plugins::bindings::{CallContext, Candidate, CandidateDetails, TaskInfo};
use crate::plugins::decision_log::call_of;
use crate::plugins::watcher::WatchOptions;
use crate::plugins::{
    CallError, CallReport, Manifest, PluginEvent, PluginKind, PluginRegistry, PluginRuntime, PluginSource,
    PluginVersion, PluginWatcher, RuntimeOptions, io, loader,
};

/// The plugin tools.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Load a component as the server would and report its kind, exports, imports and verdict.
    Check(CheckArgs),
    /// Load a component and make one call with a JSON input; print the answer, fuel, memory, time and log.
    Run(RunArgs),
    /// Scaffold a plugin crate that builds with `cargo build --release --target wasm32-wasip2`.
    New(NewArgs),
    /// Follow a plugins directory as the server does and print every load, rejection and removal; with
    /// `--input`, call each strategy that loads. A development loop for plugin authors.
    Watch(WatchArgs),
    /// Run a candidate strategy over recorded decisions (a file, or a server's `GET /decisions`) and report where
    /// it would have chosen another agent than the one that got the task. Exits 1 on any disagreement or failed
    /// call, like `diff`.
    Replay(ReplayArgs),
}

/// Arguments of `plugin replay`: the decisions come from a file or from a server, one of the two.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["decisions", "server"])))]
pub struct ReplayArgs {
    /// The candidate strategy component (`.wasm`).
    #[arg(value_name = "COMPONENT")]
    pub file: PathBuf,
    /// The manifest; defaults to `NAME.toml` beside the component, else in the crate that built it.
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Recorded decisions: a JSON array of records, a `GET /decisions` page (`{"decisions": [...]}`) or JSON lines
    /// (one record a line); `-` reads stdin.
    #[arg(long, value_name = "FILE")]
    pub decisions: Option<PathBuf>,
    /// Read the decisions from this server instead (`http://host:port`), paging through `GET /decisions`.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// A bearer token for `--server` (`read` suffices).
    #[arg(long, env = "ARAGORA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Only decisions from this time on: RFC 3339, or an age such as `90s`, `15m`, `1h`, `2d`.
    #[arg(long, value_name = "AGE_OR_RFC3339")]
    pub since: Option<String>,
    /// Only the decisions of this plugin name (default: every strategy's).
    #[arg(long, value_name = "NAME")]
    pub plugin: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// Arguments of `plugin watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The directory to follow (default: `./plugins`, like the server's `PLUGINS_DIR`).
    #[arg(default_value = "plugins")]
    pub dir: PathBuf,
    /// A strategy input (JSON or `@PATH`) to run against every strategy that loads.
    #[arg(long)]
    pub input: Option<String>,
}

/// Arguments of `plugin check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The component (`.wasm`).
    pub file: PathBuf,
    /// The manifest; defaults to `NAME.toml` beside the component, else in the crate that built it.
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// Arguments of `plugin run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The component (`.wasm`).
    pub file: PathBuf,
    /// The call's input as JSON, or `@PATH` to read it from a file (see docs/PLUGINS.md for the shapes).
    #[arg(long)]
    pub input: String,
    /// The manifest; defaults to `NAME.toml` beside the component, else in the crate that built it.
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// Arguments of `plugin new`.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// The plugin's kind.
    #[arg(long, value_enum)]
    pub kind: ScaffoldKind,
    /// The language to write it in.
    #[arg(long, value_enum, default_value_t)]
    pub lang: Language,
    /// The plugin's name: lower-case letters, digits and `_` (the built `.wasm` is named after it).
    pub name: String,
    /// Where to create the crate (default: `./NAME`).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Runs one plugin command.
pub fn run(command: PluginCommand) -> anyhow::Result<ExitCode> {
    match command {
        PluginCommand::Check(args) => check(args),
        PluginCommand::Run(args) => run_once(args),
        PluginCommand::New(args) => scaffold(&args.name, args.kind, args.lang, args.dir),
        PluginCommand::Watch(args) => watch(args),
        PluginCommand::Replay(args) => replay(args),
    }
}

/// The plugin name a file stands for (its stem), as the watcher names it.
fn name_of(file: &Path) -> anyhow::Result<String> {
    file.file_stem().and_then(|s| s.to_str()).map(str::to_string).context("the file name is not valid UTF-8")
}

/// The places a component's manifest is looked for, in order: `NAME.toml` beside the component (a plugins folder),
/// then in the crate that built it (`plugin new`'s layout: the component sits in `target/wasm32-wasip2/release/`
/// below the crate, whose root holds `NAME.toml`).
fn manifest_candidates(file: &Path) -> Vec<PathBuf> {
    let mut candidates = vec![file.with_extension("toml")];
    let Some(stem) = file.file_stem() else { return candidates };
    let manifest_name = Path::new(stem).with_extension("toml");
    let crate_root = file.ancestors().skip(1).find(|dir| dir.join("Cargo.toml").is_file());
    if let Some(root) = crate_root {
        candidates.push(root.join(&manifest_name));
    }
    candidates
}

/// The manifest to load a component with, and where it came from (`None`: the defaults, for want of a file).
pub(crate) fn read_manifest(file: &Path, explicit: Option<&Path>) -> anyhow::Result<(Manifest, Option<PathBuf>)> {
    let path = match explicit {
        Some(path) => path.to_path_buf(),
        None => match manifest_candidates(file).into_iter().find(|path| path.is_file()) {
            Some(found) => found,
            None => return Ok((Manifest::default(), None)),
        },
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let manifest = Manifest::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok((manifest, Some(path)))
}

/// Says which manifest a command used, on stderr (so `--output json` stays one document): a plugin loaded with the
/// defaults has no labels and an empty `[config]`, which changes what it decides.
fn announce_manifest(file: &Path, used: Option<&Path>) {
    match used {
        Some(path) => eprintln!("manifest: {}", path.display()),
        None => {
            let looked: Vec<String> = manifest_candidates(file).iter().map(|p| p.display().to_string()).collect();
            eprintln!(
                "manifest: none found (looked for {}); using the defaults: no labels, empty [config], kind from the \
                 exports. Pass --manifest PATH if the plugin has one.",
                looked.join(", ")
            );
        }
    }
}

/// Loads a component as the server would. Instances are not reused, so the call `plugin run` makes runs on a
/// fresh instance (its report includes `init`'s log and memory) rather than on the one the trial call warmed.
fn load(file: &Path, manifest: Option<&Path>) -> anyhow::Result<Loaded> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let (manifest, used) = read_manifest(file, manifest)?;
    announce_manifest(file, used.as_deref());
    let runtime = PluginRuntime::new(RuntimeOptions { reuse_instances: false, ..RuntimeOptions::default() })?;
    let version =
        loader::load(&runtime, &name_of(file)?, PluginSource::File, &bytes, manifest).map_err(|e| e.to_string());
    Ok(Loaded { outcome: version, size: bytes.len(), manifest: used })
}

/// A component loaded by `check` or `run`.
struct Loaded {
    outcome: Result<PluginVersion, String>,
    size: usize,
    /// The manifest file used (`None`: the defaults).
    manifest: Option<PathBuf>,
}

fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let Loaded { outcome, size, manifest } = load(&args.file, args.manifest.as_deref())?;
    let manifest = manifest.map(|path| path.display().to_string());
    let report = match &outcome {
        Ok(version) => json!({
            "file": args.file.display().to_string(),
            "manifest": manifest,
            "verdict": "ok",
            "name": version.name,
            "kind": version.kind,
            "sha256": version.sha256,
            "size": size,
            "exports": version.exports,
            "imports": version.imports,
            "limits": version.limits,
            "start_up": version.start_up,
        }),
        Err(error) => {
            json!({"file": args.file.display().to_string(), "manifest": manifest, "verdict": "rejected", "size": size,
                   "error": error})
        }
    };
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        OutputFormat::Text => match &outcome {
            Ok(version) => {
                println!("{}: ok", args.file.display());
                println!("  name     {}", version.name);
                println!("  kind     {}", version.kind);
                println!("  manifest {}", manifest.as_deref().unwrap_or("(none: defaults)"));
                println!("  sha256   {}", version.sha256);
                println!("  size     {size} bytes");
                println!("  exports  {}", version.exports.join(", "));
                println!(
                    "  imports  {}",
                    if version.imports.is_empty() { "(none)".into() } else { version.imports.join(", ") }
                );
                let l = version.limits;
                println!(
                    "  limits   fuel {} | deadline {:?} | memory {} MiB | tables {}",
                    l.fuel,
                    l.deadline,
                    l.memory_bytes / (1024 * 1024),
                    l.table_elements
                );
                match version.start_up {
                    Some(start_up) => println!(
                        "  start-up {:.2} ms and {:.1} MiB per instance (instances are started when the plugin \
                         loads and reused: calls do not pay for this)",
                        start_up.time.as_secs_f64() * 1000.0,
                        start_up.memory_bytes as f64 / (1024.0 * 1024.0)
                    ),
                    None => println!("  start-up not measured (a fresh instance failed to start after the trial)"),
                }
            }
            Err(error) => println!("{}: rejected\n  {error}", args.file.display()),
        },
    }
    Ok(if outcome.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Reads `--input`: JSON text, or `@PATH`.
fn read_input(argument: &str) -> anyhow::Result<Value> {
    let text = match argument.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?,
        None => argument.to_string(),
    };
    serde_json::from_str(&text).context("--input is not valid JSON")
}

fn run_once(args: RunArgs) -> anyhow::Result<ExitCode> {
    let input = read_input(&args.input)?;
    let version = match load(&args.file, args.manifest.as_deref())?.outcome {
        Ok(version) => version,
        Err(error) => bail!("{} was rejected: {error}", args.file.display()),
    };
    let (answer, report) = match call(&version, input) {
        Ok(done) => done,
        Err(error) => {
            let failure = json!({"ok": false, "error": error});
            match args.output {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&failure)?),
                OutputFormat::Text => println!("call failed: {error}"),
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    match args.output {
        OutputFormat::Json => {
            let mut document = json!({"ok": true, "output": answer});
            document["report"] = serde_json::to_value(&report)?;
            println!("{}", serde_json::to_string_pretty(&document)?);
        }
        OutputFormat::Text => {
            println!("output       {answer}");
            println!("fuel used    {}", report.fuel_used);
            println!("peak memory  {} KiB", report.peak_memory_bytes / 1024);
            println!(
                "wall time    {:.1} µs (fresh instance: {})",
                report.wall_time.as_secs_f64() * 1e6,
                report.fresh_instance
            );
            if report.log.is_empty() {
                println!("log          (empty)");
            } else {
                println!("log:");
                for line in report.log.lines() {
                    println!("  | {line}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn watch(args: WatchArgs) -> anyhow::Result<ExitCode> {
    let input = args.input.as_deref().map(read_input).transpose()?;
    let runtime =
        PluginRuntime::new(RuntimeOptions { cache_dir: RuntimeOptions::user_cache_dir(), ..Default::default() })?;
    let registry = std::sync::Arc::new(PluginRegistry::new(runtime, "plugin-watch")?);
    let mut events = registry.subscribe();
    let (_watcher, report) = PluginWatcher::start(&args.dir, registry.clone(), WatchOptions::default())?;
    println!("watching {} (Ctrl-C to stop)", args.dir.display());
    for name in &report.loaded {
        println!("loaded    {name}");
    }
    for name in &report.rejected {
        let error = registry.info(name).and_then(|i| i.last_rejection).map(|r| r.error).unwrap_or_default();
        println!("rejected  {name}: {error}");
    }
    loop {
        let event = match events.blocking_recv() {
            Ok(event) => event,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(ExitCode::SUCCESS),
        };
        match event {
            PluginEvent::PluginLoaded { name, kind, source, sha256, active } => {
                println!(
                    "loaded    {name} ({kind}, {source}, sha256 {}…){}",
                    &sha256[..12],
                    if active { "" } else { " [shadowed]" }
                );
                if let (Some(input), Some(version)) = (&input, registry.active(&name).filter(|_| active)) {
                    match call(&version, input.clone()) {
                        Ok((answer, report)) => println!(
                            "  run     {answer} (fuel {}, {:.1} µs)",
                            report.fuel_used,
                            report.wall_time.as_secs_f64() * 1e6
                        ),
                        Err(error) => println!("  run     failed: {error}"),
                    }
                }
            }
            PluginEvent::PluginRejected { name, source, error, .. } => {
                println!("rejected  {name} ({source}): {error}; the previous version keeps serving")
            }
            PluginEvent::PluginRemoved { name, source, now_active } => match now_active {
                Some(now) => println!("removed   {name} ({source}); {now} version active again"),
                None => println!("removed   {name} ({source})"),
            },
        }
    }
}

/// Decodes the input for the version's kind, makes the call, encodes the answer.
fn call(version: &PluginVersion, input: Value) -> Result<(Value, CallReport), String> {
    match version.kind {
        PluginKind::Strategy => {
            let call = io::strategy_call(input)?;
            let (index, report) = version
                .select_reporting(call.ctx, &call.task, &call.candidates, &call.details)
                .map_err(|e| e.to_string())?;
            Ok((json!({"index": index, "agent_id": call.details[index].agent_id}), report))
        }
        PluginKind::Policy => {
            let (ctx, input) = io::policy_call(input, version.manifest.needs_payload)?;
            let (decision, report) = version.evaluate(ctx, &input).map_err(|e| e.to_string())?;
            Ok((io::decision_json(&decision), report))
        }
        PluginKind::HealthProbe => {
            let (ctx, agent, observed) = io::probe_call(input)?;
            let (result, report) = version.probe(ctx, &agent, &observed).map_err(|e| e.to_string())?;
            Ok((io::probe_json(&result), report))
        }
    }
}

/// Disagreements and failed calls the text report lists (`--output json` lists them all).
const REPLAY_SHOWN: usize = 20;

/// Why a record was not replayed.
#[derive(Debug, Default)]
struct Skipped {
    /// Not a strategy decision: no recorded input to call the candidate with.
    no_input: usize,
    /// A shadow's answer, which had no effect on where the task went.
    shadow: usize,
    /// Another plugin's decision than `--plugin`'s.
    other_plugin: usize,
    /// Older than `--since` (files only: a server applies `since` itself).
    before_since: usize,
    /// No agent recorded as chosen, so nothing to compare with.
    no_answer: usize,
}

impl Skipped {
    /// Records skipped for any reason.
    fn total(&self) -> usize {
        self.no_input + self.shadow + self.other_plugin + self.before_since + self.no_answer
    }
}

/// A record on which the candidate chose another agent than the one that took effect.
struct Disagreement<'a> {
    record: &'a DecisionRecord,
    task_id: &'a str,
    /// The agent that got the task (whoever answered: the plugin or a fallback).
    recorded: &'a str,
    /// The agent the candidate chose.
    candidate: String,
}

/// A record on which the candidate's call failed.
struct ReplayFailure<'a> {
    record: &'a DecisionRecord,
    task_id: &'a str,
    error: String,
}

/// What replaying a candidate over recorded decisions found.
#[derive(Default)]
struct ReplayReport<'a> {
    read: usize,
    replayed: usize,
    agreed: usize,
    skipped: Skipped,
    /// Replayed records that carried no candidate details while the candidate's manifest asks for them: it saw
    /// empty details there, which may explain a disagreement.
    without_details: usize,
    /// Calls tried again after missing their deadline (once per call, whatever the number of tries).
    retried: usize,
    disagreements: Vec<Disagreement<'a>>,
    errors: Vec<ReplayFailure<'a>>,
}

fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    let since_text = args.since.as_deref().map(str::trim).filter(|s| !s.is_empty());
    // Checked here for both sources, so a typo is reported before a component is compiled or a server paged.
    let since_ms = since_text
        .map(|text| {
            since(text, now_ms)
                .with_context(|| format!("--since {text:?}: use an RFC 3339 time or an age such as 90s, 15m, 1h, 2d"))
        })
        .transpose()?;
    let plugin = args.plugin.as_deref().map(str::trim).filter(|p| !p.is_empty());
    let version = match load(&args.file, args.manifest.as_deref())?.outcome {
        Ok(version) => version,
        Err(error) => bail!("{} was rejected: {error}", args.file.display()),
    };
    if version.kind != PluginKind::Strategy {
        bail!("{} is a {} plugin; replay runs strategies", args.file.display(), version.kind);
    }
    let (records, since_ms) = match (&args.decisions, &args.server) {
        (Some(path), _) => (read_decisions(path)?, since_ms),
        // The server applied `since` by its own clock; applying it again by this one would drop records at the edge.
        (None, Some(server)) => (fetch_decisions(server, args.token.clone(), since_text, plugin)?, None),
        (None, None) => bail!("give the decisions to replay: --decisions FILE, or --server URL"),
    };
    let report = replay_records(&version, &records, plugin, since_ms);
    if report.without_details > 0 {
        eprintln!(
            "note: the candidate asks for candidate details (needs_details or labels), but {} replayed decisions \
             carry none (the recorded plugin did not ask for them); it saw empty details there",
            report.without_details
        );
    }
    if report.replayed == 0 {
        eprintln!("note: nothing to replay: no active or canary strategy decision with a recorded input matched");
    }
    match args.output {
        OutputFormat::Json => {
            let document = replay_json(&args.file, &version, &report);
            println!("{}", serde_json::to_string_pretty(&document)?);
        }
        OutputFormat::Text => print_replay(&args.file, &version, &report),
    }
    let clean = report.disagreements.is_empty() && report.errors.is_empty();
    Ok(if clean { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Calls `version` with each replayable record's input and compares its choice with the agent that took effect.
fn replay_records<'a>(
    version: &PluginVersion,
    records: &'a [DecisionRecord],
    plugin: Option<&str>,
    since_ms: Option<u64>,
) -> ReplayReport<'a> {
    let mut report = ReplayReport { read: records.len(), ..ReplayReport::default() };
    for record in records {
        let Some(input) = &record.input else {
            report.skipped.no_input += 1;
            continue;
        };
        if record.role == DecisionRole::Shadow {
            report.skipped.shadow += 1;
            continue;
        }
        if plugin.is_some_and(|name| record.plugin != name) {
            report.skipped.other_plugin += 1;
            continue;
        }
        if since_ms.is_some_and(|since| record.at_ms < since) {
            report.skipped.before_since += 1;
            continue;
        }
        let Some(recorded) = record.answer.agent_id.as_deref() else {
            report.skipped.no_answer += 1;
            continue;
        };
        let task_id = record.task_id.as_deref().unwrap_or(&input.task.id);
        let (task, candidates, details) = call_of(input);
        if version.wants_details() && details.is_empty() {
            report.without_details += 1;
        }
        report.replayed += 1;
        let (outcome, tries) = replay_call(version, input.now_ms, input.seed, (&task, &candidates, &details));
        report.retried += usize::from(tries > 1);
        let chosen = match outcome {
            Ok((index, _)) => input
                .candidates
                .get(index)
                .map(|c| c.agent_id.clone())
                .ok_or_else(|| format!("answered index {index} of {} candidates", input.candidates.len())),
            Err(error) => Err(error.to_string()),
        };
        match chosen {
            Ok(candidate) if candidate == recorded => report.agreed += 1,
            Ok(candidate) => report.disagreements.push(Disagreement { record, task_id, recorded, candidate }),
            Err(error) => report.errors.push(ReplayFailure { record, task_id, error }),
        }
    }
    report
}

/// Most tries of one replayed call, the first included, while it keeps missing its wall-clock deadline.
const REPLAY_ATTEMPTS: u32 = 3;

/// One replayed call, and how many tries it took. A missed deadline is tried again: it says how busy this machine
/// was at that instant (a laptop, a loaded CI runner), not what the version chooses, and the call is deterministic
/// (the record holds its seed). Fuel and memory do not depend on the machine: running out of either counts at once.
fn replay_call(
    version: &PluginVersion,
    now_ms: u64,
    seed: u64,
    (task, candidates, details): (&TaskInfo, &[Candidate], &[CandidateDetails]),
) -> (Result<(usize, CallReport), CallError>, u32) {
    let mut tries = 1;
    loop {
        let ctx = CallContext { now_ms, seed };
        match version.select_reporting(ctx, task, candidates, details) {
            Err(CallError::Deadline { .. }) if tries < REPLAY_ATTEMPTS => tries += 1,
            outcome => return (outcome, tries),
        }
    }
}

/// Reads recorded decisions from a file, or stdin for `-`.
fn read_decisions(path: &Path) -> anyhow::Result<Vec<DecisionRecord>> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("reading decisions from stdin")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    };
    let name = if path == Path::new("-") { "stdin".to_string() } else { path.display().to_string() };
    parse_decisions(&text).with_context(|| format!("{name}: not decision records"))
}

/// Decision records from a JSON array, a `GET /decisions` page (`{"decisions": [...]}`) or JSON lines.
fn parse_decisions(text: &str) -> anyhow::Result<Vec<DecisionRecord>> {
    let items = match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(items)) => items,
        Ok(Value::Object(mut page)) if page.contains_key("decisions") => match page.remove("decisions") {
            Some(Value::Array(items)) => items,
            _ => bail!("`decisions` is not an array"),
        },
        // A single record: JSON lines of one line.
        Ok(record @ Value::Object(_)) => vec![record],
        Ok(_) => bail!("expected an array of records, a page {{\"decisions\": [...]}} or JSON lines"),
        // A document that is not JSON as a whole is JSON lines, unless it opens like an array or page (then the
        // document's own error is the useful one).
        Err(error) if text.trim_start().starts_with('[') => return Err(error.into()),
        Err(_) => {
            return text
                .lines()
                .enumerate()
                .filter(|(_, line)| !line.trim().is_empty())
                .map(|(i, line)| serde_json::from_str(line).with_context(|| format!("line {}", i + 1)))
                .collect();
        }
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| serde_json::from_value(item).with_context(|| format!("decision {}", i + 1)))
        .collect()
}

/// Pages through `GET /decisions` on `server`, oldest first, following `next` until the log has no more.
fn fetch_decisions(
    server: &str,
    token: Option<String>,
    since: Option<&str>,
    plugin: Option<&str>,
) -> anyhow::Result<Vec<DecisionRecord>> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let api = Api::new(server, token)?;
        let mut records = Vec::new();
        let mut after: Option<String> = None;
        let mut dropped = 0;
        loop {
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            query.append_pair("limit", &MAX_DECISION_PAGE.to_string());
            for (key, value) in [("since", since), ("plugin", plugin), ("after", after.as_deref())] {
                if let Some(value) = value {
                    query.append_pair(key, value);
                }
            }
            let page = api
                .get(&format!("/decisions?{}", query.finish()))
                .await
                .with_context(|| format!("reading the decisions of {server}"))?;
            let Some(Value::Array(items)) = page.get("decisions") else {
                bail!("{server} answered a page without `decisions`: is it an aragora-cp server?");
            };
            for (i, item) in items.iter().enumerate() {
                let record = serde_json::from_value(item.clone()).with_context(|| {
                    format!("{server}: decision {} is not a decision record", records.len() + i + 1)
                })?;
                records.push(record);
            }
            dropped = page.get("dropped").and_then(Value::as_u64).unwrap_or(dropped);
            let next = page.get("next").and_then(Value::as_str).filter(|n| !n.is_empty()).map(str::to_string);
            match next {
                // A cursor that does not move would page for ever.
                Some(next) if after.as_deref() == Some(next.as_str()) => {
                    bail!("{server} answered the same page cursor {next} twice")
                }
                Some(next) => after = Some(next),
                None => break,
            }
        }
        if dropped > 0 {
            eprintln!(
                "note: {server}'s decision log dropped {dropped} records since it started (its writer fell behind); \
                 the replay covers the ones kept"
            );
        }
        Ok(records)
    })
}

/// The replay as one JSON document: the counts, then every disagreement and failed call.
fn replay_json(file: &Path, version: &PluginVersion, report: &ReplayReport<'_>) -> Value {
    let skipped = &report.skipped;
    json!({
        "file": file.display().to_string(),
        "name": version.name,
        "sha256": version.sha256,
        "read": report.read,
        "replayed": report.replayed,
        "agreed": report.agreed,
        "disagreed": report.disagreements.len(),
        "errored": report.errors.len(),
        "skipped": skipped.total(),
        "skipped_because": {
            "no_input": skipped.no_input,
            "shadow": skipped.shadow,
            "other_plugin": skipped.other_plugin,
            "before_since": skipped.before_since,
            "no_answer": skipped.no_answer,
        },
        "without_details": report.without_details,
        "retried": report.retried,
        "disagreements": report.disagreements.iter().map(|d| json!({
            "task_id": d.task_id,
            "stage": d.record.stage,
            "decision_id": d.record.id,
            "recorded": d.recorded,
            "candidate": d.candidate,
            "plugin": d.record.plugin,
            "version": d.record.version,
            "role": d.record.role,
            "answered_by": d.record.answered_by,
        })).collect::<Vec<_>>(),
        "errors": report.errors.iter().map(|e| json!({
            "task_id": e.task_id,
            "stage": e.record.stage,
            "decision_id": e.record.id,
            "error": e.error,
        })).collect::<Vec<_>>(),
    })
}

/// The replay for people: the counts, then the first disagreements and failed calls.
fn print_replay(file: &Path, version: &PluginVersion, report: &ReplayReport<'_>) {
    let skipped = &report.skipped;
    println!("candidate  {} ({}, sha256 {})", file.display(), version.name, version.sha256);
    println!("read       {}", report.read);
    println!("replayed   {}", report.replayed);
    println!("agreed     {}", report.agreed);
    println!("disagreed  {}", report.disagreements.len());
    println!("errors     {}", report.errors.len());
    if report.retried > 0 {
        println!(
            "retried    {} (missed the deadline and were tried again, up to {REPLAY_ATTEMPTS} tries in all)",
            report.retried
        );
    }
    println!(
        "skipped    {} (no input {}, shadow {}, other plugin {}, before --since {}, no recorded agent {})",
        skipped.total(),
        skipped.no_input,
        skipped.shadow,
        skipped.other_plugin,
        skipped.before_since,
        skipped.no_answer
    );
    let heading = |what: &str, count: usize| {
        if count > REPLAY_SHOWN {
            println!("{what} (first {REPLAY_SHOWN} of {count}; --output json lists all):");
        } else {
            println!("{what}:");
        }
    };
    if !report.disagreements.is_empty() {
        heading("disagreements", report.disagreements.len());
        for d in report.disagreements.iter().take(REPLAY_SHOWN) {
            let record = d.record;
            // The version is a sha256 from the input; a short or odd one is shown whole rather than cut mid-char.
            let short = record.version.get(..12).unwrap_or(&record.version);
            let fallback =
                if record.answered_by == "plugin" { String::new() } else { format!(", by {}", record.answered_by) };
            println!(
                "  {}  {}  recorded {} ({} {short}{fallback})  candidate {}",
                d.task_id,
                record.stage.as_str(),
                d.recorded,
                record.plugin,
                d.candidate
            );
        }
    }
    if !report.errors.is_empty() {
        heading("errors", report.errors.len());
        for e in report.errors.iter().take(REPLAY_SHOWN) {
            println!("  {}  {}  {}", e.task_id, e.record.stage.as_str(), e.error);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::SelectionInput;
    use crate::plugins::runtime::CallLimits;

    /// `spin_forever` on a runtime whose maxima allow practically unlimited fuel, with `limits` from its manifest.
    fn spin_forever(limits: &str) -> PluginVersion {
        let maxima = CallLimits { fuel: u64::MAX / 2, ..CallLimits::server_maxima() };
        let runtime =
            PluginRuntime::new(RuntimeOptions { maxima, reuse_instances: false, ..RuntimeOptions::default() }).unwrap();
        let manifest = Manifest::parse(&format!("[limits]\n{limits}\n")).unwrap();
        let path = crate::plugins::builtin::guest_path("spin_forever").unwrap();
        let bytes = std::fs::read(path).unwrap();
        loader::load(&runtime, "spin_forever", PluginSource::File, &bytes, manifest).unwrap()
    }

    /// A recorded input `spin_forever` never answers (a `misbehave` task).
    fn endless_input() -> SelectionInput {
        serde_json::from_value(json!({
            "now_ms": 1_750_000_000_000u64, "seed": 7,
            "task": {"id": "task_0190a1b2c3d4e5f60718293a4b5c6d01", "task_type": "misbehave", "priority": "normal",
                     "required_capabilities": []},
            "candidates": [
                {"agent_id": "a", "in_flight": 0, "max_concurrent": 1, "completed": 0, "failed": 0,
                 "avg_latency_ms": 0, "heartbeat_age_ms": 0, "since_assigned_ms": 0, "health": "healthy"},
                {"agent_id": "b", "in_flight": 0, "max_concurrent": 1, "completed": 0, "failed": 0,
                 "avg_latency_ms": 0, "heartbeat_age_ms": 0, "since_assigned_ms": 0, "health": "healthy"},
            ],
        }))
        .unwrap()
    }

    #[test]
    fn a_replayed_call_that_keeps_missing_its_deadline_is_tried_three_times_and_fuel_counts_at_once() {
        let input = endless_input();
        let (task, candidates, details) = call_of(&input);
        // Fuel practically unlimited: only the deadline ends each try, however long the epoch ticker waits.
        let slow = spin_forever("fuel = 1000000000000\ndeadline_ms = 5");
        let (outcome, tries) = replay_call(&slow, input.now_ms, input.seed, (&task, &candidates, &details));
        assert_eq!(outcome.err(), Some(CallError::Deadline { deadline: Duration::from_millis(5) }));
        assert_eq!(tries, REPLAY_ATTEMPTS);
        // Running out of fuel does not depend on the machine: one try.
        let hungry = spin_forever("fuel = 1000000\ndeadline_ms = 5000");
        let (outcome, tries) = replay_call(&hungry, input.now_ms, input.seed, (&task, &candidates, &details));
        assert_eq!(outcome.err(), Some(CallError::OutOfFuel { fuel: 1_000_000 }));
        assert_eq!(tries, 1);
    }
}
