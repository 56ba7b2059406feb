//! `aragora-cp plugin new`: a project that builds to a plugin component with one command, in Rust, Python
//! (componentize-py) or JavaScript (componentize-js), with the WIT package, a manifest, a README and a test input.
//!
//! The templates live beside this file (`templates/LANG/`), one per kind; `{name}`, `{world}` and the pinned tool
//! versions are filled in here. The versions are the ones the repository's tests build with, so a scaffold builds
//! the way the tests prove.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::ValueEnum;

use crate::plugins::builtin::WIT;

/// The componentize-py release Python plugins are built with (PyPI).
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";

/// The componentize-js release JavaScript plugins are built with (npm).
pub const COMPONENTIZE_JS_VERSION: &str = "0.23.0";

/// The componentize-js options every JavaScript plugin is built with: without HTTP, whose import the server
/// refuses (componentize-js keeps `fetch` unless told).
pub const COMPONENTIZE_JS_OPTIONS: &[&str] = &["--disable", "http", "fetch-event"];

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

impl ScaffoldKind {
    /// The WIT world, which is also the kind's name in a manifest.
    fn world(self) -> &'static str {
        match self {
            ScaffoldKind::Strategy => "strategy",
            ScaffoldKind::Policy => "policy",
            ScaffoldKind::HealthProbe => "health-probe",
        }
    }

    /// A call that shows the template's rule at work (`plugin run --input @input.json`).
    fn test_input(self) -> &'static str {
        match self {
            ScaffoldKind::Strategy => {
                r#"{"task": {"task_type": "code", "priority": "normal"},
 "candidates": [{"agent_id": "a", "avg_latency_ms": 900}, {"agent_id": "b", "avg_latency_ms": 300}]}
"#
            }
            ScaffoldKind::Policy => "{\"stage\": \"submit\", \"task\": {\"task_type\": \"forbidden\"}}\n",
            ScaffoldKind::HealthProbe => {
                "{\"agent\": {\"agent_id\": \"a\"}, \"observations\": {\"heartbeat_age_ms\": 45000}}\n"
            }
        }
    }
}

/// The languages `plugin new` can scaffold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Language {
    /// Rust with wit-bindgen (`cargo build --target wasm32-wasip2`): the smallest and fastest plugins.
    #[default]
    Rust,
    /// Python with componentize-py (the interpreter is inside the component).
    Python,
    /// JavaScript with componentize-js (the engine is inside the component).
    Js,
}

/// Per-call limits an interpreted plugin starts with: an instance starts with 9 to 13 MiB of memory, and the
/// interpreter spends 60 (Python) to 270 (JavaScript) times the instructions of compiled code (docs/BENCHMARKS.md).
/// The server's maxima cap them (`PLUGIN_MAX_*`).
const INTERPRETED_LIMITS: &str = "\n[limits]                 # an interpreter needs more than the defaults (16 MiB, 1 M fuel, 5 ms)\n\
     memory_mib = 64\nfuel = 20000000\ndeadline_ms = 20\n";

/// Creates the project of plugin `name` in `dir` (default `./NAME`).
pub fn scaffold(name: &str, kind: ScaffoldKind, language: Language, dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    if name.is_empty()
        || name.len() > 64
        || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        || name.starts_with(|c: char| c.is_ascii_digit())
    {
        bail!("plugin name {name:?}: use lower-case letters, digits and _ (starting with a letter), at most 64");
    }
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        bail!("{} exists and is not empty", dir.display());
    }
    let world = kind.world();
    let fill = |template: &str| {
        template
            .replace("{name}", name)
            .replace("{world}", world)
            .replace("{componentize_py}", COMPONENTIZE_PY_VERSION)
            .replace("{componentize_js}", COMPONENTIZE_JS_VERSION)
            .replace("{js_options}", &COMPONENTIZE_JS_OPTIONS.join(" "))
    };
    let mut manifest = format!("kind = \"{world}\"\n");
    if kind == ScaffoldKind::Policy {
        manifest.push_str("order = 50\non_error = \"deny\"\n");
    }
    let project = Project::of(language, kind);
    if language != Language::Rust {
        manifest.push_str(INTERPRETED_LIMITS);
    }
    manifest.push_str("\n[config]\n");

    let mut files = vec![
        ("wit/control-plane.wit".to_string(), WIT.to_string()),
        (format!("{name}.toml"), manifest),
        ("input.json".to_string(), kind.test_input().to_string()),
        (project.source.to_string(), fill(project.code)),
        (".gitignore".to_string(), fill(project.ignore)),
        ("README.md".to_string(), fill(&readme(&project, kind, language))),
    ];
    files.extend(project.extra.iter().map(|(path, template)| (path.to_string(), fill(template))));
    for (path, content) in &files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().expect("a file in the project"))
            .with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
    }
    for script in project.extra.iter().map(|(path, _)| path).filter(|p| p.ends_with(".sh")) {
        make_executable(&dir.join(script))?;
    }
    let wasm = fill(project.wasm);
    println!("created {} ({world} plugin {name}, {})", dir.display(), language_name(language));
    println!("next:");
    println!("  cd {}", dir.display());
    println!("  {}", fill(project.build));
    println!("  aragora-cp plugin run {wasm} --manifest {name}.toml --input @input.json");
    println!("  cp {wasm} {name}.toml $PLUGINS_DIR/");
    Ok(ExitCode::SUCCESS)
}

/// What a language's project consists of.
struct Project {
    /// The plugin's code: its path in the project and its template.
    source: &'static str,
    code: &'static str,
    /// Build files (path, template).
    extra: &'static [(&'static str, &'static str)],
    /// The one command that builds the component, and where the component lands.
    build: &'static str,
    wasm: &'static str,
    ignore: &'static str,
    /// What the README adds for this language.
    notes: &'static str,
}

impl Project {
    fn of(language: Language, kind: ScaffoldKind) -> Project {
        macro_rules! per_kind {
            ($lang:literal, $ext:literal) => {
                match kind {
                    ScaffoldKind::Strategy => include_str!(concat!("templates/", $lang, "/strategy.", $ext, ".tmpl")),
                    ScaffoldKind::Policy => include_str!(concat!("templates/", $lang, "/policy.", $ext, ".tmpl")),
                    ScaffoldKind::HealthProbe => {
                        include_str!(concat!("templates/", $lang, "/health-probe.", $ext, ".tmpl"))
                    }
                }
            };
        }
        match language {
            Language::Rust => Project {
                source: "src/lib.rs",
                code: per_kind!("rust", "rs"),
                extra: &[("Cargo.toml", include_str!("templates/rust/Cargo.toml.tmpl"))],
                build: "cargo build --release --target wasm32-wasip2",
                wasm: "target/wasm32-wasip2/release/{name}.wasm",
                ignore: "/target\n",
                notes: "\nThe build needs the guest target once: `rustup target add wasm32-wasip2`.\n",
            },
            Language::Python => Project {
                source: "plugin.py",
                code: per_kind!("python", "py"),
                extra: &[("build.sh", include_str!("templates/python/build.sh.tmpl"))],
                build: "./build.sh",
                wasm: "{name}.wasm",
                ignore: "/.tools/\n/{name}.wasm\n__pycache__/\n",
                notes: PYTHON_NOTES,
            },
            Language::Js => Project {
                source: "plugin.js",
                code: per_kind!("js", "js"),
                extra: &[
                    ("build.sh", include_str!("templates/js/build.sh.tmpl")),
                    ("package.json", include_str!("templates/js/package.json.tmpl")),
                ],
                build: "./build.sh",
                wasm: "{name}.wasm",
                ignore: "/node_modules/\n/{name}.wasm\n",
                notes: JS_NOTES,
            },
        }
    }
}

const PYTHON_NOTES: &str = "
## Notes for Python

- `./build.sh` installs componentize-py {componentize_py} into `.tools/` the first time (Python 3.10 or newer and
  pip), then runs `componentize-py -d wit -w {world} componentize plugin -o {name}.wasm`. The component holds the
  interpreter and the standard library: about 18 MiB.
- Types come from `wit_world.imports.types` (generated at build time): records are dataclasses with snake_case
  fields, variants are classes such as `types.Decision_Deny(\"reason\")`, enums are `types.HealthStatus.HEALTHY`.
  A `result` error is raised as `componentize_py_types.Err(\"reason\")`.
- The sandbox is the same as for any plugin: no files (`open` fails), no network (sockets are refused), no
  environment. `print` goes to the plugin's log. Import what you need at the top of the module: modules imported
  at build time are inside the component; an import inside a call is slower and may fail.
- The manifest raises the limits: an instance starts with about 13 MiB of memory, and Python spends about 60
  times the instructions of Rust on the same rule (with 20 M fuel the strategy template handles about 900
  candidates; the server offers a strategy at most 64 unless told otherwise).
";

const JS_NOTES: &str = "
## Notes for JavaScript

- `./build.sh` installs componentize-js {componentize_js} into `node_modules/` the first time (Node.js 18 or newer
  and npm), then runs `componentize-js plugin.js --wit wit --world-name {world} {js_options} -o {name}.wasm`. HTTP is disabled on purpose: the server refuses a component that imports `wasi:http`. The
  component holds the engine (StarlingMonkey): about 12 MiB.
- The module exports one object named after the interface (`selector`, `evaluator`, `prober`). Records have
  camelCase fields (`avgLatencyMs`), 64-bit numbers are `BigInt`s (`heartbeatAgeMs > 30000n`), variants are
  `{ tag, val }`, enums are strings. A `result` error is a thrown string.
- The sandbox is the same as for any plugin: no files, no network, no environment; `console.log` goes to the
  plugin's log.
- The manifest raises the limits: an instance starts with about 9 MiB of memory, and the engine spends about 270
  times the instructions of Rust on the same rule, most of it turning records into JavaScript objects (with 20 M
  fuel the strategy template handles about 200 candidates; the server offers a strategy at most 64 unless told
  otherwise).
";

fn readme(project: &Project, kind: ScaffoldKind, language: Language) -> String {
    include_str!("templates/README.md.tmpl")
        .replace("{kind}", kind.world())
        .replace("{language}", language_name(language))
        .replace("{build}", project.build)
        .replace("{wasm}", project.wasm)
        .replace("{wit}", "`wit/control-plane.wit`")
        .replace("{source}", project.source)
        .replace("{notes}", project.notes)
}

fn language_name(language: Language) -> &'static str {
    match language {
        Language::Rust => "Rust",
        Language::Python => "Python",
        Language::Js => "JavaScript",
    }
}

fn make_executable(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", path.display()))
}
