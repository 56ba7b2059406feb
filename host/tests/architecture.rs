//! The dependency rule of `host/src/` (docs/ARCHITECTURE.md, "Who may use whom"), checked on the source: each
//! top-level module may name only the modules its row allows, through `crate::…` paths or `super::` paths that
//! climb out of it. A new arrow in the picture is a decision: change the table here and the drawing together.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Every top-level module and the modules it may use. `model` is the vocabulary every part speaks, so it uses
/// nothing of ours; storage and plugins know the vocabulary and not each other; the API reaches the engine
/// through the coordinator (and names the scheduler's and plugins' request and answer types).
const ALLOWED: &[(&str, &[&str])] = &[
    ("model", &[]),
    ("store", &["model"]),
    ("plugins", &["model"]),
    ("notifications", &["model", "store", "health"]),
    ("config", &["model", "store", "health", "notifications", "plugins"]),
    ("scheduler", &["model", "config", "store", "plugins"]),
    ("registry", &["model", "store", "scheduler"]),
    ("health", &["model", "store", "plugins"]),
    ("coordinator", &["model", "config", "store", "plugins", "scheduler", "registry", "health", "notifications"]),
    ("api", &["model", "coordinator", "scheduler", "plugins"]),
    (
        "cli",
        &[
            "model",
            "config",
            "store",
            "plugins",
            "scheduler",
            "registry",
            "health",
            "notifications",
            "coordinator",
            "api",
        ],
    ),
];

/// The stack of docs/ARCHITECTURE.md, bottom first: a module may use only modules below it (no cycles).
const STACK: [&str; 11] = [
    "model",
    "store",
    "plugins",
    "health",
    "notifications",
    "config",
    "scheduler",
    "registry",
    "coordinator",
    "api",
    "cli",
];

fn source_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The `.rs` files under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read source dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`store` for `store/redis/decode.rs`, `config` for `config.rs`) and
/// its depth below the crate root (1 for `store/mod.rs` and `config.rs`, 3 for `store/redis/decode.rs`).
fn module_of(root: &Path, file: &Path) -> (String, usize) {
    let relative = file.strip_prefix(root).expect("under src");
    let parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let top = parts[0].trim_end_matches(".rs").to_string();
    let depth = if parts.last().is_some_and(|last| last == "mod.rs") { parts.len() - 1 } else { parts.len() };
    (top, depth)
}

/// The first segments of the paths that follow `crate::` (a `{…}` group gives each of its members').
fn crate_targets(after: &str) -> Vec<String> {
    if let Some(group) = after.strip_prefix('{') {
        let mut depth = 0;
        let mut members = Vec::new();
        let mut current = String::new();
        for c in group.chars() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    members.push(std::mem::take(&mut current));
                    continue;
                }
                _ => {}
            }
            current.push(c);
        }
        members.push(current);
        return members.iter().filter_map(|m| first_segment(m.trim())).collect();
    }
    first_segment(after).into_iter().collect()
}

fn first_segment(path: &str) -> Option<String> {
    let name: String = path.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
    (!name.is_empty() && name != "self").then_some(name)
}

/// Every module of ours that `code` (one file, comments removed) names from outside its own module.
fn uses(code: &str, depth: usize) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue; // `aragora_cp_crate::…` or the like, not our crate root
        }
        found.extend(crate_targets(&code[at + "crate::".len()..]));
    }
    // `super::super::x` from a file `depth` levels down reaches the crate root after `depth` steps.
    for (at, _) in code.match_indices("super::") {
        if code[..at].ends_with("super::") {
            continue; // counted from the first `super` of the chain
        }
        let mut rest = &code[at..];
        let mut climbs = 0;
        while let Some(next) = rest.strip_prefix("super::") {
            climbs += 1;
            rest = next;
        }
        if climbs >= depth {
            found.extend(crate_targets(rest));
        }
    }
    found
}

/// The file's code without `//` comments (doc comments name modules in prose and links).
fn without_comments(text: &str) -> String {
    text.lines().map(|line| line.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

fn violations() -> Vec<String> {
    let root = source_root();
    let allowed: BTreeMap<&str, BTreeSet<&str>> =
        ALLOWED.iter().map(|(module, may)| (*module, may.iter().copied().collect())).collect();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut found = Vec::new();
    for file in files {
        let (module, depth) = module_of(&root, &file);
        if module == "lib" || module == "main" {
            continue; // the crate root declares every module
        }
        let Some(may) = allowed.get(module.as_str()) else {
            found.push(format!("{}: module `{module}` has no row in ALLOWED", file.display()));
            continue;
        };
        let code = without_comments(&fs::read_to_string(&file).expect("read source"));
        for used in uses(&code, depth) {
            let ours = allowed.contains_key(used.as_str());
            if ours && used != module && !may.contains(used.as_str()) {
                found.push(format!("{}: `{module}` uses `{used}`", file.display()));
            }
        }
    }
    found
}

#[test]
fn every_module_uses_only_what_the_architecture_allows() {
    let found = violations();
    assert!(found.is_empty(), "dependencies the architecture does not allow:\n{}", found.join("\n"));
}

#[test]
fn the_allowed_dependencies_point_down_the_stack() {
    let level = |module: &str| STACK.iter().position(|m| *m == module).expect("every module is in the stack");
    for (module, may) in ALLOWED {
        for used in *may {
            assert!(level(used) < level(module), "`{module}` may use `{used}`, which is not below it in the stack");
        }
    }
    assert_eq!(ALLOWED.len(), STACK.len(), "every module of the stack has its row");
}

#[test]
fn the_checker_sees_crate_paths_groups_and_climbs() {
    // The checker itself, on code written the ways a file can reach another module.
    assert_eq!(uses("use crate::store::Store;", 2), BTreeSet::from(["store".to_string()]));
    assert_eq!(
        uses("use crate::{model::Task, plugins::{A, B}};", 2),
        BTreeSet::from(["model".to_string(), "plugins".to_string()])
    );
    assert_eq!(uses("let x = crate::api::router(state);", 1), BTreeSet::from(["api".to_string()]));
    assert_eq!(uses("use super::super::store::Store;", 2), BTreeSet::from(["store".to_string()]));
    assert!(uses("use super::super::{ClaimAnswer};", 3).is_empty(), "a climb that stays inside the module");
    assert!(uses(&without_comments("// see crate::api for the routes"), 1).is_empty(), "prose is not a use");
    let mut root = source_root();
    root.push("store");
    assert_eq!(module_of(&source_root(), &root.join("redis").join("decode.rs")), ("store".to_string(), 3));
    assert_eq!(module_of(&source_root(), &source_root().join("config.rs")), ("config".to_string(), 1));
}

#[test]
fn the_architecture_document_draws_the_same_rule() {
    // Each row of ALLOWED appears in docs/ARCHITECTURE.md's table, so the picture and the check agree.
    let doc = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/ARCHITECTURE.md"))
        .expect("docs/ARCHITECTURE.md");
    for (module, may) in ALLOWED {
        let listed = if may.is_empty() { "nothing".to_string() } else { may.join(", ") };
        let row = format!("| `{module}` | {listed} |");
        assert!(doc.contains(&row), "docs/ARCHITECTURE.md lacks the row {row:?}");
    }
}
