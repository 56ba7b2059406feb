//! Builds the guest plugin crates under `plugins/` for `wasm32-wasip2` and exposes them to the host.
//!
//! The built-in strategies are embedded as bytes (`BUILTIN_STRATEGIES`), and so are the example plugins the `demo`
//! command installs at run time (`EMBEDDED_EXAMPLES`, with their manifests); every guest, built-in, example or test
//! fixture, is also listed by path (`GUEST_ARTIFACTS`) so tests and benchmarks load exactly what the build made.
//! The guests get their own target directory under `OUT_DIR`: a nested cargo on the outer target directory would
//! wait for ever on the lock the outer cargo holds.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Guests embedded in the binary; every other guest is only listed by path.
const BUILTINS: &[&str] = &["least_loaded", "round_robin", "random"];

/// Example guests embedded with their manifests (`plugins/NAME/NAME.toml`): `aragora-cp demo` writes them into
/// the folder it watches, and the binary must not need the source tree at run time.
const EMBEDDED_EXAMPLES: &[&str] = &["cheapest_within_latency", "payload_size_policy"];

/// Folders (relative to `plugins/`) that hold guest crates, one crate per sub-folder.
const GUEST_FOLDERS: &[&str] = &[".", "testing"];

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest_dir.parent().expect("host/ sits in the workspace root").to_path_buf();
    let plugins = root.join("plugins");
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let guest_target = out_dir.join("guests");

    watch(&root, &root.join("wit"));
    let crates = guest_crates(&root, &plugins);
    let mut artifacts = Vec::new();
    for krate in &crates {
        for watched in ["src", "Cargo.toml", "Cargo.lock"] {
            watch(&root, &krate.join(watched));
        }
        artifacts.push(build_guest(krate, &guest_target));
    }

    let mut generated = String::new();
    generated.push_str("/// Every guest crate built from `plugins/`: (plugin name, path of the component).\n");
    generated.push_str("pub const GUEST_ARTIFACTS: &[(&str, &str)] = &[\n");
    for (name, path) in &artifacts {
        writeln!(generated, "    ({name:?}, {:?}),", path.display().to_string()).unwrap();
    }
    generated.push_str("];\n\n");
    generated.push_str("/// The built-in strategies, embedded: (plugin name, component bytes).\n");
    generated.push_str("pub const BUILTIN_STRATEGIES: &[(&str, &[u8])] = &[\n");
    for builtin in BUILTINS {
        let (_, path) = artifacts
            .iter()
            .find(|(name, _)| name == builtin)
            .unwrap_or_else(|| panic!("built-in plugin {builtin} has no crate under plugins/"));
        writeln!(generated, "    ({builtin:?}, include_bytes!({:?})),", path.display().to_string()).unwrap();
    }
    generated.push_str("];\n\n");
    generated.push_str("/// Example plugins embedded for `demo`: (plugin name, component bytes, manifest text).\n");
    generated.push_str("pub const EMBEDDED_EXAMPLES: &[(&str, &[u8], &str)] = &[\n");
    for example in EMBEDDED_EXAMPLES {
        let (_, path) = artifacts
            .iter()
            .find(|(name, _)| name == example)
            .unwrap_or_else(|| panic!("embedded example {example} has no crate under plugins/"));
        let manifest = plugins.join(example).join(format!("{example}.toml"));
        assert!(manifest.is_file(), "embedded example {example} has no manifest at {}", manifest.display());
        watch(&root, &manifest);
        writeln!(
            generated,
            "    ({example:?}, include_bytes!({:?}), include_str!({:?})),",
            path.display().to_string(),
            manifest.display().to_string()
        )
        .unwrap();
    }
    generated.push_str("];\n");
    fs::write(out_dir.join("guests.rs"), generated).expect("write guests.rs");
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

/// Builds one guest crate in release mode and returns (plugin name, component path).
fn build_guest(krate: &Path, target_dir: &Path) -> (String, PathBuf) {
    let name = krate.file_name().and_then(|n| n.to_str()).expect("guest folder name is UTF-8").to_string();
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args(["build", "--release", "--locked", "--quiet", "--target", "wasm32-wasip2", "--manifest-path"])
        .arg(krate.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    // The outer build's wrappers and flags target the host; the guests must not inherit them.
    for var in [
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_PROFILE_RELEASE_DEBUG",
    ] {
        command.env_remove(var);
    }
    let status = command.status().unwrap_or_else(|e| panic!("could not run cargo for guest {name}: {e}"));
    if !status.success() {
        panic!(
            "building guest plugin {name} failed ({status}); is the wasm32-wasip2 target installed? \
             (`rustup target add wasm32-wasip2`, or run cargo from the repository so rust-toolchain.toml applies)"
        );
    }
    let artifact = target_dir.join("wasm32-wasip2/release").join(format!("{name}.wasm"));
    assert!(artifact.is_file(), "guest {name} built but {} is missing", artifact.display());
    (name, artifact)
}
