//! Plugins written in Python and JavaScript, built from their sources under `plugins/` with the real tools:
//! componentize-py (PyPI) and componentize-js (npm), at the versions `aragora-cp plugin new` scaffolds with. Each
//! tool is installed once per machine under the system's temporary folder, and each component is built once per
//! source (its folder name carries a hash of the language, the tool's version, the options, the source and the
//! WIT folder), both published by an atomic rename ([`crate::built_once`]), so concurrent tests never see half of
//! either; builds in one process take turns, so two tests needing one component build it once.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use aragora_cp::cli::scaffold::{COMPONENTIZE_JS_OPTIONS, COMPONENTIZE_JS_VERSION, COMPONENTIZE_PY_VERSION};
use aragora_cp::plugins::Manifest;

/// A guest language other than Rust.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Language {
    /// componentize-py: `plugin.py`.
    Python,
    /// componentize-js: `plugin.js`.
    Js,
}

impl Language {
    fn folder(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::Js => "js",
        }
    }

    /// The build options the scaffold uses: for JavaScript, HTTP and the fetch event left out.
    pub fn default_options(self) -> &'static [&'static str] {
        match self {
            Language::Python => &[],
            Language::Js => COMPONENTIZE_JS_OPTIONS,
        }
    }

    fn source(self) -> &'static str {
        match self {
            Language::Python => "plugin.py",
            Language::Js => "plugin.js",
        }
    }
}

/// The repository root.
pub fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the repository root").to_path_buf()
}

/// The project folder of plugin `name` in `language`: `plugins/LANG/NAME` or `plugins/testing/LANG/NAME`.
pub fn project(language: Language, name: &str) -> PathBuf {
    let plugins = repository().join("plugins");
    [plugins.join(language.folder()), plugins.join("testing").join(language.folder())]
        .into_iter()
        .map(|folder| folder.join(name))
        .find(|path| path.join(language.source()).is_file())
        .unwrap_or_else(|| panic!("no {} plugin named {name} under plugins/", language.folder()))
}

/// The manifest beside the project's source (`NAME.toml`), or the defaults.
pub fn manifest(language: Language, name: &str) -> Manifest {
    match std::fs::read_to_string(project(language, name).join(format!("{name}.toml"))) {
        Ok(text) => Manifest::parse(&text).expect("the example's manifest parses"),
        Err(_) => Manifest::default(),
    }
}

/// The component of plugin `name` of `world`, built from its project with the default build options (for
/// JavaScript: HTTP and the fetch event disabled, as the scaffold does).
pub fn component(language: Language, name: &str, world: &str) -> Vec<u8> {
    component_with(language, name, world, language.default_options())
}

/// The component of plugin `name` of `world`, built with extra tool `options`.
pub fn component_with(language: Language, name: &str, world: &str, options: &[&str]) -> Vec<u8> {
    component_from(language, name, &repository().join("wit"), world, options)
}

/// The component of plugin `name` of `world` as the WIT folder `wit` defines it, built with extra tool `options`.
pub fn component_from(language: Language, name: &str, wit: &Path, world: &str, options: &[&str]) -> Vec<u8> {
    let project = project(language, name);
    let mut hasher = DefaultHasher::new();
    (language.folder(), COMPONENTIZE_PY_VERSION, COMPONENTIZE_JS_VERSION, world, options).hash(&mut hasher);
    std::fs::read(project.join(language.source())).expect("read the plugin's source").hash(&mut hasher);
    hash_folder(wit, &mut hasher);
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_build_at_a_time = BUILDING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let built = crate::built_once(&format!("aragora-cp-{name}-{:016x}", hasher.finish()), "plugin.wasm", |out| {
        std::fs::create_dir_all(out).expect("create the build folder");
        let wasm = out.join("plugin.wasm");
        let mut command = match language {
            Language::Python => {
                let tools = componentize_py();
                let mut command = Command::new(tools.join("bin/componentize-py"));
                command.env("PYTHONPATH", tools).arg("-d").arg(wit).args(["-w", world, "componentize"]);
                command.args(options).arg("plugin").arg("-o").arg(&wasm);
                command
            }
            Language::Js => {
                let mut command = Command::new(componentize_js());
                command.arg("plugin.js").arg("--wit").arg(wit).args(["--world-name", world]);
                command.args(options).arg("-o").arg(&wasm);
                command
            }
        };
        // componentize-py would leave bytecode beside the source.
        run(command.current_dir(&project).env("PYTHONDONTWRITEBYTECODE", "1"), &format!("building {name}"));
    });
    std::fs::read(built.join("plugin.wasm")).expect("read the built component")
}

/// Hashes every file under `folder` (links followed) in name order.
fn hash_folder(folder: &Path, hasher: &mut DefaultHasher) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(folder)
        .unwrap_or_else(|e| panic!("{}: {e}", folder.display()))
        .map(|entry| entry.expect("a folder entry").path())
        .collect();
    entries.sort();
    for path in entries {
        path.file_name().hash(hasher);
        if path.is_dir() {
            hash_folder(&path, hasher);
        } else {
            std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).hash(hasher);
        }
    }
}

/// The folder componentize-py is installed in (`bin/componentize-py`, with the folder on `PYTHONPATH`).
pub fn componentize_py() -> &'static Path {
    static TOOLS: OnceLock<PathBuf> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let name = format!("aragora-cp-componentize-py-{COMPONENTIZE_PY_VERSION}");
        crate::built_once(&name, "bin/componentize-py", |building| {
            let mut pip = Command::new("python3");
            pip.args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target"]);
            pip.arg(building).arg(format!("componentize-py=={COMPONENTIZE_PY_VERSION}"));
            run(&mut pip, "pip install componentize-py");
        })
    })
}

/// The `componentize-js` command, installed from npm.
pub fn componentize_js() -> &'static Path {
    static TOOL: OnceLock<PathBuf> = OnceLock::new();
    TOOL.get_or_init(|| {
        let name = format!("aragora-cp-componentize-js-{COMPONENTIZE_JS_VERSION}");
        let bin = "node_modules/.bin/componentize-js";
        crate::built_once(&name, bin, |building| {
            std::fs::create_dir_all(building).expect("create the npm folder");
            let mut npm = Command::new("npm");
            npm.args(["install", "--no-audit", "--no-fund", "--loglevel=error", "--prefix"]).arg(building);
            npm.arg(format!("@bytecodealliance/componentize-js@{COMPONENTIZE_JS_VERSION}"));
            run(&mut npm, "npm install @bytecodealliance/componentize-js");
        })
        .join(bin)
    })
}

fn run(command: &mut Command, what: &str) {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: {e} (python3 with pip and npm are needed)"));
    assert!(
        output.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
