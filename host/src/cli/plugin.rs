//! `aragora-cp plugin check|run|new`: what a plugin author needs between writing a guest and dropping it into
//! `PLUGINS_DIR`. `check` and `run` load the component exactly as the server does (same runtime, limits,
//! validation), so a plugin that passes here loads there.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

use super::OutputFormat;
use crate::plugins::builtin::WIT;
use crate::plugins::watcher::WatchOptions;
use crate::plugins::{
    CallReport, Manifest, PluginEvent, PluginKind, PluginRegistry, PluginRuntime, PluginSource, PluginVersion,
    PluginWatcher, RuntimeOptions, io, loader,
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

/// The kinds `plugin new` can scaffold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ScaffoldKind {
    /// An agent-selection strategy.
    Strategy,
    /// A submit/register/dispatch policy.
    Policy,
    /// A health probe.
    #[value(name = "health-probe")]
    HealthProbe,
}

/// Arguments of `plugin new`.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// The plugin's kind.
    #[arg(long, value_enum)]
    pub kind: ScaffoldKind,
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
        PluginCommand::New(args) => scaffold(args),
        PluginCommand::Watch(args) => watch(args),
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
fn read_manifest(file: &Path, explicit: Option<&Path>) -> anyhow::Result<(Manifest, Option<PathBuf>)> {
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

fn scaffold(args: NewArgs) -> anyhow::Result<ExitCode> {
    let name = args.name.as_str();
    if name.is_empty()
        || name.len() > 64
        || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        || name.starts_with(|c: char| c.is_ascii_digit())
    {
        bail!("plugin name {name:?}: use lower-case letters, digits and _ (starting with a letter), at most 64");
    }
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(name));
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        bail!("{} exists and is not empty", dir.display());
    }
    std::fs::create_dir_all(dir.join("src")).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::create_dir_all(dir.join("wit"))?;
    let (world, kind_name, body, manifest_extra) = match args.kind {
        ScaffoldKind::Strategy => ("strategy", "strategy", STRATEGY_TEMPLATE, ""),
        ScaffoldKind::Policy => ("policy", "policy", POLICY_TEMPLATE, "order = 50\non_error = \"deny\"\n"),
        ScaffoldKind::HealthProbe => ("health-probe", "health-probe", PROBE_TEMPLATE, ""),
    };
    let files = [
        ("Cargo.toml", CARGO_TEMPLATE.replace("{name}", name)),
        ("src/lib.rs", body.replace("{name}", name).replace("{world}", world)),
        ("wit/control-plane.wit", WIT.to_string()),
        (&format!("{name}.toml") as &str, format!("kind = \"{kind_name}\"\n{manifest_extra}\n[config]\n")),
        (".gitignore", "/target\n".to_string()),
    ];
    for (path, content) in files {
        std::fs::write(dir.join(path), content).with_context(|| format!("writing {path}"))?;
    }
    println!("created {} ({kind_name} plugin {name})", dir.display());
    println!("next:");
    println!("  cd {}", dir.display());
    println!("  cargo build --release --target wasm32-wasip2");
    println!("  aragora-cp plugin check target/wasm32-wasip2/release/{name}.wasm --manifest {name}.toml");
    println!("  cp target/wasm32-wasip2/release/{name}.wasm {name}.toml $PLUGINS_DIR/");
    Ok(ExitCode::SUCCESS)
}

const CARGO_TEMPLATE: &str = r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
wit-bindgen = { version = "0.61", default-features = false, features = ["macros", "realloc", "std"] }

[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
strip = true

# A plugin crate stands alone even when created inside another cargo workspace.
[workspace]
"#;

const STRATEGY_TEMPLATE: &str = r#"//! Strategy plugin `{name}`: chooses which waiting agent gets a task.
//! Build: cargo build --release --target wasm32-wasip2

wit_bindgen::generate!({ world: "{world}", path: "wit" });

use aragora::control_plane::types::{CallContext, Candidate, CandidateDetails, TaskInfo};
use exports::aragora::control_plane::selector::Guest;

struct Plugin;

impl Guest for Plugin {
    /// Receives the manifest's `[config]` table as JSON, once per instance.
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }

    /// Returns the index of the chosen candidate. `details` (ids, models, providers, labels) is empty unless the
    /// manifest sets `needs_details = true`. This template picks the lowest average latency, ties to the lowest
    /// index; replace the rule with yours.
    fn select(
        _ctx: CallContext,
        _task: TaskInfo,
        candidates: Vec<Candidate>,
        _details: Vec<CandidateDetails>,
    ) -> Result<u32, String> {
        candidates
            .iter()
            .enumerate()
            .min_by_key(|(_, c)| c.avg_latency_ms)
            .map(|(index, _)| index as u32)
            .ok_or_else(|| "no candidates".to_string())
    }
}

export!(Plugin);
"#;

const POLICY_TEMPLATE: &str = r#"//! Policy plugin `{name}`: allows, denies, warns about or modifies submits, registrations and dispatches.
//! Build: cargo build --release --target wasm32-wasip2

wit_bindgen::generate!({ world: "{world}", path: "wit" });

use aragora::control_plane::types::{CallContext, Decision, PolicyInput};
use exports::aragora::control_plane::evaluator::Guest;

struct Plugin;

impl Guest for Plugin {
    /// Receives the manifest's `[config]` table as JSON, once per instance.
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }

    /// This template denies tasks of type `forbidden` and allows everything else; replace the rule with yours.
    fn evaluate(_ctx: CallContext, input: PolicyInput) -> Decision {
        match input {
            PolicyInput::Submit(request) if request.task.task_type == "forbidden" => {
                Decision::Deny("tasks of type forbidden are not accepted".to_string())
            }
            _ => Decision::Allow,
        }
    }
}

export!(Plugin);
"#;

const PROBE_TEMPLATE: &str = r#"//! Health-probe plugin `{name}`: judges an agent's health from the host's observations.
//! Build: cargo build --release --target wasm32-wasip2

wit_bindgen::generate!({ world: "{world}", path: "wit" });

use aragora::control_plane::types::{AgentInfo, CallContext, HealthStatus, Observations, ProbeResult};
use exports::aragora::control_plane::prober::Guest;

struct Plugin;

impl Guest for Plugin {
    /// Receives the manifest's `[config]` table as JSON, once per instance.
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }

    /// This template calls an agent unhealthy after 30 s without a heartbeat; replace the rule with yours.
    fn probe(_ctx: CallContext, _agent: AgentInfo, observed: Observations) -> ProbeResult {
        if observed.heartbeat_age_ms > 30_000 {
            ProbeResult { status: HealthStatus::Unhealthy, message: "no heartbeat for 30 s".to_string() }
        } else {
            ProbeResult { status: HealthStatus::Healthy, message: "heartbeat fresh".to_string() }
        }
    }
}

export!(Plugin);
"#;
