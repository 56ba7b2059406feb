//! Builds the guest plugin crates under `plugins/` for `wasm32-wasip2` and exposes them to the host.
//!
//! The built-in plugins are embedded as bytes (`BUILTIN_STRATEGIES`, `BUILTIN_PROBES`), and so are the example
//! plugins the `demo` command installs at run time (`EMBEDDED_EXAMPLES`, with their manifests); every guest,
//! built-in, example or test fixture, is also listed by path (`GUEST_ARTIFACTS`) so tests and benchmarks load
//! exactly what the build made. The guests get their own target directory under `OUT_DIR`: a nested cargo on the
//! outer target directory would wait for ever on the lock the outer cargo holds.
//!
//! A fresh machine's toolchain lacks `wasm32-wasip2`, and rustup does not add `rust-toolchain.toml`'s targets to a
//! toolchain that is already installed. So the script adds the target through rustup when it is missing (saying
//! so), and when that is impossible (no rustup, no network) it embeds the prebuilt components committed under
//! `plugins/prebuilt/` instead: the server and the demo still build; only the test fixtures are then missing.
//! Decision 0009 records why; `host/tests/prebuilt.rs` keeps the committed bytes equal to a rebuild.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The guest target.
const TARGET: &str = "wasm32-wasip2";

/// Built-in strategies, embedded in the binary.
const BUILTIN_STRATEGIES: &[&str] = &["least_loaded", "round_robin", "random"];

/// Built-in policies, embedded: `rules_policy` runs the rule sets `POST /policies` installs.
const BUILTIN_POLICIES: &[&str] = &["rules_policy"];

/// Built-in health probes, embedded with their manifests (the default probe judges every agent out of the box).
const BUILTIN_PROBES: &[&str] = &["heartbeat_probe"];

/// Example guests embedded with their manifests (`plugins/NAME/NAME.toml`): `aragora-cp demo` writes them into
/// the folder it watches, and the binary must not need the source tree at run time.
const EMBEDDED_EXAMPLES: &[&str] = &["cheapest_within_latency", "payload_size_policy"];

/// Folders (relative to `plugins/`) that hold guest crates, one crate per sub-folder.
const GUEST_FOLDERS: &[&str] = &[".", "testing"];

/// Where the committed components of every embedded guest live (relative to `plugins/`).
const PREBUILT: &str = "prebuilt";

/// Set to `1` to skip the rustup install and the source build (what a machine without the target gets).
const PREBUILT_ONLY_VAR: &str = "ARAGORA_PREBUILT_GUESTS";

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest_dir.parent().expect("host/ sits in the workspace root").to_path_buf();
    let plugins = root.join("plugins");
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let guest_target = out_dir.join("guests");

    watch(&root, &root.join("wit"));
    watch(&root, &plugins.join(PREBUILT));
    println!("cargo:rerun-if-env-changed={PREBUILT_ONLY_VAR}");
    let crates = guest_crates(&root, &plugins);
    for krate in &crates {
        for watched in ["src", "wit", "Cargo.toml", "Cargo.lock"] {
            watch(&root, &krate.join(watched));
        }
    }

    let artifacts: Vec<(String, PathBuf)> = match guest_target_available() {
        Ok(()) => crates.iter().map(|krate| build_guest(krate, &guest_target)).collect(),
        Err(why) => {
            println!(
                "cargo:warning=guest plugins: {why}; embedding the prebuilt components of plugins/{PREBUILT}/ \
                 (the server and demo work; tests that need the other guests will not)"
            );
            embedded_names()
                .map(|name| {
                    let path = plugins.join(PREBUILT).join(format!("{name}.wasm"));
                    assert!(path.is_file(), "prebuilt component {} is missing", path.display());
                    (name.to_string(), path)
                })
                .collect()
        }
    };

    let mut generated = String::new();
    generated.push_str("/// Every guest crate built from `plugins/`: (plugin name, path of the component).\n");
    generated.push_str("pub const GUEST_ARTIFACTS: &[(&str, &str)] = &[\n");
    for (name, path) in &artifacts {
        writeln!(generated, "    ({name:?}, {}),", path_expression(&root, path)).unwrap();
    }
    generated.push_str("];\n\n");
    embed(&mut generated, "BUILTIN_STRATEGIES", "The built-in strategies", BUILTIN_STRATEGIES, &artifacts);
    embed(&mut generated, "BUILTIN_POLICIES", "The built-in policies", BUILTIN_POLICIES, &artifacts);
    embed_with_manifests(&mut generated, "BUILTIN_PROBES", "The built-in health probes", BUILTIN_PROBES, &artifacts);
    embed_with_manifests(
        &mut generated,
        "EMBEDDED_EXAMPLES",
        "Example plugins embedded for `demo`",
        EMBEDDED_EXAMPLES,
        &artifacts,
    );
    let prebuilt_dir = plugins.join(PREBUILT);
    writeln!(
        generated,
        "/// The folder of the committed prebuilt components (checked against a rebuild by a test).\n\
         pub const PREBUILT_DIR: &str = {:?};",
        prebuilt_dir.display().to_string()
    )
    .unwrap();
    fs::write(out_dir.join("guests.rs"), generated).expect("write guests.rs");
}

/// Every guest the binary embeds, by name.
fn embedded_names() -> impl Iterator<Item = &'static str> {
    BUILTIN_STRATEGIES.iter().chain(BUILTIN_POLICIES).chain(BUILTIN_PROBES).chain(EMBEDDED_EXAMPLES).copied()
}

fn artifact<'a>(artifacts: &'a [(String, PathBuf)], name: &str) -> &'a Path {
    artifacts
        .iter()
        .find(|(built, _)| built == name)
        .map(|(_, path)| path.as_path())
        .unwrap_or_else(|| panic!("embedded plugin {name} has no crate under plugins/"))
}

/// Writes a constant of (name, component bytes) for guests embedded without a manifest.
fn embed(generated: &mut String, constant: &str, doc: &str, names: &[&str], artifacts: &[(String, PathBuf)]) {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).parent().unwrap().to_path_buf();
    writeln!(generated, "/// {doc}, embedded: (plugin name, component bytes).").unwrap();
    writeln!(generated, "pub const {constant}: &[(&str, &[u8])] = &[").unwrap();
    for name in names {
        let path = artifact(artifacts, name);
        writeln!(generated, "    ({name:?}, include_bytes!({})),", path_expression(&root, path)).unwrap();
    }
    generated.push_str("];\n\n");
}

/// Writes a constant of (name, component bytes, manifest text) for guests embedded with their manifests.
fn embed_with_manifests(
    generated: &mut String,
    constant: &str,
    doc: &str,
    names: &[&str],
    artifacts: &[(String, PathBuf)],
) {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).parent().unwrap().to_path_buf();
    writeln!(generated, "/// {doc}: (plugin name, component bytes, manifest text).").unwrap();
    writeln!(generated, "pub const {constant}: &[(&str, &[u8], &str)] = &[").unwrap();
    for name in names {
        let path = artifact(artifacts, name);
        let manifest = root.join("plugins").join(name).join(format!("{name}.toml"));
        assert!(manifest.is_file(), "embedded plugin {name} has no manifest at {}", manifest.display());
        watch(&root, &manifest);
        writeln!(
            generated,
            "    ({name:?}, include_bytes!({}), include_str!({})),",
            path_expression(&root, path),
            path_expression(&root, &manifest)
        )
        .unwrap();
    }
    generated.push_str("];\n\n");
}

/// `path` as the generated code names it: a file of the source tree relative to the crate being compiled
/// (`concat!(env!("CARGO_MANIFEST_DIR"), …)`), any other (built guests) as it is. Two checkouts sharing one
/// `CARGO_TARGET_DIR` share this script's output; an absolute path into the checkout that ran it last would make
/// the other one read that checkout's files, or fail to build once it is gone.
fn path_expression(root: &Path, path: &Path) -> String {
    match path.strip_prefix(root) {
        Ok(relative) => format!("concat!(env!(\"CARGO_MANIFEST_DIR\"), {:?})", format!("/../{}", relative.display())),
        Err(_) => format!("{:?}", path.display().to_string()),
    }
}

/// Asks cargo to rerun this script when `path` changes, naming it relative to `host/`. Cargo resolves relative
/// paths against the package being built, so two checkouts sharing one `CARGO_TARGET_DIR` (CI's cache, git
/// worktrees) each watch their own files; absolute paths would leave one checkout watching the other's.
fn watch(root: &Path, path: &Path) {
    let relative = path.strip_prefix(root).expect("watched paths sit in the workspace");
    println!("cargo:rerun-if-changed={}", Path::new("..").join(relative).display());
}

/// Every folder under the guest folders that holds a `Cargo.toml`, in a stable order.
fn guest_crates(root: &Path, plugins: &Path) -> Vec<PathBuf> {
    let mut crates = Vec::new();
    for folder in GUEST_FOLDERS {
        let dir = plugins.join(folder);
        watch(root, &dir);
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.join("Cargo.toml").is_file() {
                crates.push(path);
            }
        }
    }
    crates.sort();
    crates
}

/// Whether the toolchain can build for the guest target, installing the target through rustup when it is missing.
fn guest_target_available() -> Result<(), String> {
    if env::var(PREBUILT_ONLY_VAR).is_ok_and(|v| v == "1") {
        return Err(format!("{PREBUILT_ONLY_VAR}=1"));
    }
    if target_installed() {
        return Ok(());
    }
    // Named explicitly: a rustup proxy sets RUSTUP_TOOLCHAIN for the build, so this is the toolchain building us.
    let toolchain = env::var("RUSTUP_TOOLCHAIN").ok();
    println!(
        "cargo:warning=the {TARGET} target is not installed{}: adding it with `rustup target add {TARGET}` \
         (once; the guest plugins are built for it)",
        toolchain.as_deref().map(|t| format!(" for toolchain {t}")).unwrap_or_default()
    );
    let mut rustup = Command::new("rustup");
    rustup.args(["target", "add", TARGET]);
    if let Some(toolchain) = &toolchain {
        rustup.args(["--toolchain", toolchain]);
    }
    let output =
        rustup.output().map_err(|e| format!("the {TARGET} target is missing and rustup could not run: {e}"))?;
    if !output.status.success() || !target_installed() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
        return Err(format!("the {TARGET} target is missing and `rustup target add {TARGET}` failed ({last})"));
    }
    Ok(())
}

/// Whether the compiler building us has the guest target's standard library. Either way, cargo is asked to run
/// this script again when that changes: the target's folder when it is there (removing the target must bring the
/// install back, even with a warm cache), else the folder of all targets (adding it must bring the source build).
fn target_installed() -> bool {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(output) = Command::new(rustc).args(["--print", "target-libdir", "--target", TARGET]).output() else {
        return false;
    };
    let libdir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    let installed = output.status.success()
        && fs::read_dir(&libdir)
            .is_ok_and(|entries| entries.flatten().any(|e| e.file_name().to_string_lossy().starts_with("libcore-")));
    let watched = if installed { Some(libdir.as_path()) } else { libdir.ancestors().nth(2) };
    if let Some(watched) = watched.filter(|dir| dir.is_dir()) {
        println!("cargo:rerun-if-changed={}", watched.display());
    }
    installed
}

/// Builds one guest crate in release mode and returns (plugin name, component path).
fn build_guest(krate: &Path, target_dir: &Path) -> (String, PathBuf) {
    let name = krate.file_name().and_then(|n| n.to_str()).expect("guest folder name is UTF-8").to_string();
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args(["build", "--release", "--locked", "--quiet", "--target", TARGET, "--manifest-path"])
        .arg(krate.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    // The outer build's wrappers and flags target the host; the guests must not inherit them.
    for var in [
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_PROFILE_RELEASE_DEBUG",
    ] {
        command.env_remove(var);
    }
    // Paths of registry sources end up in panic messages: name them the same on every machine, so a rebuild
    // anywhere gives the bytes committed under plugins/prebuilt/.
    command.env("CARGO_ENCODED_RUSTFLAGS", format!("--remap-path-prefix={}=/cargo", cargo_home().display()));
    let status = command.status().unwrap_or_else(|e| panic!("could not run cargo for guest {name}: {e}"));
    if !status.success() {
        panic!("building guest plugin {name} for {TARGET} failed ({status})");
    }
    let artifact = target_dir.join(TARGET).join("release").join(format!("{name}.wasm"));
    assert!(artifact.is_file(), "guest {name} built but {} is missing", artifact.display());
    (name, artifact)
}

/// Cargo's home (registry sources live under it).
fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env::var_os("HOME").unwrap_or_default()).join(".cargo"))
}
