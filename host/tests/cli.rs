//! The plugin author's path through the real `aragora-cp` binary, as docs/PLUGINS.md tells it: scaffold a crate,
//! build it for wasm32-wasip2, check it, run it, and watch it hot-load. Also the CLI's verdicts on bad plugins.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use aragora_cp::plugins::builtin::guest_path;
use serde_json::Value;

mod support;

fn aragora_cp() -> Command {
    Command::new(env!("CARGO_BIN_EXE_aragora-cp"))
}

fn run(command: &mut Command) -> Output {
    let output = command.output().expect("run aragora-cp");
    eprintln!(
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn json_of(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).expect("stdout is JSON")
}

/// Scaffolded crates share one target directory, so wit-bindgen is compiled once per test run.
fn scaffold_target_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("scaffolded-plugins")
}

/// `cargo build --release --target wasm32-wasip2` in a scaffolded crate, as the docs say; returns the component.
fn build_scaffold(dir: &Path, name: &str) -> PathBuf {
    let target_dir = scaffold_target_dir();
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--target", "wasm32-wasip2", "--quiet", "--target-dir"])
        .arg(&target_dir)
        .current_dir(dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .status()
        .expect("run cargo");
    assert!(status.success(), "the scaffolded crate {name} builds");
    target_dir.join("wasm32-wasip2/release").join(format!("{name}.wasm"))
}

#[test]
fn a_scaffolded_strategy_builds_checks_runs_and_hot_loads() {
    let work = tempfile::tempdir().unwrap();
    let crate_dir = work.path().join("fastest");
    let created = run(aragora_cp().args(["plugin", "new", "--kind", "strategy", "fastest", "--dir"]).arg(&crate_dir));
    assert!(created.status.success());
    for file in ["Cargo.toml", "src/lib.rs", "wit/control-plane.wit", "fastest.toml"] {
        assert!(crate_dir.join(file).is_file(), "{file} scaffolded");
    }
    let component = build_scaffold(&crate_dir, "fastest");

    let checked = run(aragora_cp()
        .args(["plugin", "check", "--output", "json", "--manifest"])
        .arg(crate_dir.join("fastest.toml"))
        .arg(&component));
    assert!(checked.status.success());
    let report = json_of(&checked);
    assert_eq!(report["verdict"], "ok");
    assert_eq!(report["kind"], "strategy");
    assert_eq!(report["exports"][0], "aragora:control-plane/selector@0.1.0");

    let input =
        r#"{"candidates": [{"agent_id": "a", "avg_latency_ms": 900}, {"agent_id": "b", "avg_latency_ms": 300}]}"#;
    let ran = run(aragora_cp().args(["plugin", "run", "--output", "json", "--input", input]).arg(&component));
    assert!(ran.status.success());
    let result = json_of(&ran);
    assert_eq!(result["output"], serde_json::json!({"index": 1, "agent_id": "b"}));
    assert!(result["report"]["fuel_used"].as_u64().unwrap() > 0);

    // The hot-reload loop: follow a directory, drop the component in, see it load and answer.
    let plugins = work.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    let mut watcher = aragora_cp()
        .args(["plugin", "watch", "--input", input])
        .arg(&plugins)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start plugin watch");
    let (lines, received) = mpsc::channel();
    let stdout = watcher.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let next_line = || received.recv_timeout(Duration::from_secs(10)).expect("plugin watch printed a line");
    assert!(next_line().starts_with("watching"));
    std::fs::copy(&component, plugins.join("fastest.wasm")).unwrap();
    let loaded = next_line();
    let answered = next_line();
    watcher.kill().unwrap();
    let _ = watcher.wait();
    assert!(loaded.starts_with("loaded    fastest (strategy, file"), "{loaded}");
    assert!(answered.contains(r#""agent_id":"b""#), "{answered}");
}

#[test]
fn scaffolded_policies_and_probes_build_and_pass_the_check() {
    let work = tempfile::tempdir().unwrap();
    for (kind, name) in [("policy", "deny_forbidden"), ("health-probe", "stale_heartbeat")] {
        let dir = work.path().join(name);
        assert!(run(aragora_cp().args(["plugin", "new", "--kind", kind, name, "--dir"]).arg(&dir)).status.success());
        let component = build_scaffold(&dir, name);
        let checked = run(aragora_cp().args(["plugin", "check", "--output", "json"]).arg(&component));
        assert!(checked.status.success(), "{kind} passes the check");
        assert_eq!(json_of(&checked)["kind"], if kind == "policy" { "policy" } else { "health_probe" });
    }
    let policy = work.path().join("deny_forbidden");
    let component = scaffold_target_dir().join("wasm32-wasip2/release/deny_forbidden.wasm");
    let denied = run(aragora_cp()
        .args([
            "plugin",
            "run",
            "--output",
            "json",
            "--input",
            r#"{"stage": "submit", "task": {"task_type": "forbidden"}}"#,
        ])
        .arg(&component));
    assert_eq!(json_of(&denied)["output"]["decision"], "deny");
    assert!(policy.join("deny_forbidden.toml").is_file());
}

/// A scaffold in Python or JavaScript: created, built with its one documented command (`./build.sh`, which
/// installs the tool on first use), checked, and run on its own `input.json`.
fn scaffold_in(lang: &str, kind: &str, name: &str) -> Value {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join(name);
    let created = run(aragora_cp().args(["plugin", "new", "--lang", lang, "--kind", kind, name, "--dir"]).arg(&dir));
    assert!(created.status.success(), "{lang} {kind} scaffolded");
    for file in ["README.md", "input.json", "build.sh", "wit/control-plane.wit", &format!("{name}.toml")] {
        assert!(dir.join(file).is_file(), "{lang} {kind}: {file} scaffolded");
    }
    let built = run(Command::new("./build.sh").current_dir(&dir));
    assert!(built.status.success(), "{lang} {kind}: ./build.sh builds");
    let component = dir.join(format!("{name}.wasm"));
    let manifest = dir.join(format!("{name}.toml"));
    let checked =
        run(aragora_cp().args(["plugin", "check", "--output", "json", "--manifest"]).arg(&manifest).arg(&component));
    assert!(checked.status.success(), "{lang} {kind} passes the check");
    let report = json_of(&checked);
    let start_up = &report["start_up"];
    assert!(start_up["memory_bytes"].as_u64().unwrap() > 4 * 1024 * 1024, "an interpreter starts: {report}");
    let ran = run(aragora_cp()
        .args(["plugin", "run", "--output", "json", "--input", "@input.json", "--manifest"])
        .arg(&manifest)
        .arg(&component)
        .current_dir(&dir));
    assert!(ran.status.success(), "{lang} {kind} answers its input");
    json_of(&ran)["output"].clone()
}

#[test]
fn python_scaffolds_build_with_one_command_and_answer_their_input() {
    assert_eq!(scaffold_in("python", "strategy", "fastest_py"), serde_json::json!({"index": 1, "agent_id": "b"}));
    assert_eq!(scaffold_in("python", "policy", "deny_forbidden_py")["decision"], "deny");
    assert_eq!(scaffold_in("python", "health-probe", "stale_heartbeat_py")["status"], "unhealthy");
}

#[test]
fn javascript_scaffolds_build_with_one_command_and_answer_their_input() {
    assert_eq!(scaffold_in("js", "strategy", "fastest_js"), serde_json::json!({"index": 1, "agent_id": "b"}));
    assert_eq!(scaffold_in("js", "policy", "deny_forbidden_js")["decision"], "deny");
    assert_eq!(scaffold_in("js", "health-probe", "stale_heartbeat_js")["status"], "unhealthy");
}

#[test]
fn check_rejects_a_plugin_importing_a_forbidden_interface_with_exit_code_one() {
    let forbidden = guest_path("forbidden_import").unwrap();
    let checked = run(aragora_cp().args(["plugin", "check", forbidden]));
    assert_eq!(checked.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&checked.stdout);
    assert!(stdout.contains("rejected") && stdout.contains("wasi:keyvalue"), "{stdout}");
}

#[test]
fn run_reports_the_log_and_a_failed_call() {
    let chatty = guest_path("chatty").unwrap();
    let ran = run(aragora_cp().args(["plugin", "run", chatty, "--input", r#"{"candidates": [{"agent_id": "a"}]}"#]));
    assert!(ran.status.success());
    assert!(String::from_utf8_lossy(&ran.stdout).contains("| chatty"), "the plugin's output is shown as its log");

    let trap = guest_path("trap").unwrap();
    let input = r#"{"task": {"task_type": "misbehave"}, "candidates": [{"agent_id": "a"}, {"agent_id": "b"}]}"#;
    let failed = run(aragora_cp().args(["plugin", "run", trap, "--output", "json", "--input", input]));
    assert_eq!(failed.status.code(), Some(1));
    let result = json_of(&failed);
    assert_eq!(result["ok"], false);
    assert!(result["error"].as_str().unwrap().contains("trapped"));
}

#[test]
fn bad_input_and_bad_names_are_refused_with_a_message() {
    let least_loaded = guest_path("least_loaded").unwrap();
    let bad_json = run(aragora_cp().args(["plugin", "run", least_loaded, "--input", "{not json"]));
    assert_eq!(bad_json.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_json.stderr).contains("--input is not valid JSON"));
    let empty = run(aragora_cp().args(["plugin", "run", least_loaded, "--input", r#"{"candidates": []}"#]));
    assert_eq!(empty.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&empty.stdout).contains("at least one candidate"));
    let bad_name = run(aragora_cp().args(["plugin", "new", "--kind", "strategy", "Bad-Name"]));
    assert_eq!(bad_name.status.code(), Some(2));
}

#[test]
fn run_finds_the_manifest_in_the_crate_that_built_the_component_and_says_when_it_has_none() {
    // The layout `cargo build --release --target wasm32-wasip2` leaves in a scaffolded crate.
    let work = tempfile::tempdir().unwrap();
    let crate_dir = work.path().join("size_limit");
    let release = crate_dir.join("target/wasm32-wasip2/release");
    std::fs::create_dir_all(&release).unwrap();
    std::fs::write(crate_dir.join("Cargo.toml"), "[package]\nname = \"size_limit\"\n").unwrap();
    std::fs::write(crate_dir.join("size_limit.toml"), "kind = \"policy\"\n[config]\nmax_payload_bytes = 10\n").unwrap();
    let component = release.join("size_limit.wasm");
    std::fs::copy(guest_path("payload_size_policy").unwrap(), &component).unwrap();
    let input = r#"{"stage": "submit", "task": {"task_type": "t"}, "payload": {"text": "longer than ten bytes"}}"#;

    let ran = run(aragora_cp().args(["plugin", "run", "--output", "json", "--input", input]).arg(&component));
    assert!(ran.status.success());
    assert_eq!(json_of(&ran)["output"]["decision"], "deny", "the crate's manifest set the 10-byte limit");
    let stderr = String::from_utf8_lossy(&ran.stderr);
    assert!(stderr.contains(&format!("manifest: {}", crate_dir.join("size_limit.toml").display())), "{stderr}");

    // The same component alone: no manifest anywhere, so the defaults (64 KiB) apply, and the user is told.
    let alone = work.path().join("size_limit.wasm");
    std::fs::copy(&component, &alone).unwrap();
    let ran = run(aragora_cp().args(["plugin", "run", "--output", "json", "--input", input]).arg(&alone));
    assert_eq!(json_of(&ran)["output"]["decision"], "allow");
    let stderr = String::from_utf8_lossy(&ran.stderr);
    assert!(stderr.contains("manifest: none found") && stderr.contains("--manifest"), "{stderr}");

    let checked = run(aragora_cp().args(["plugin", "check", "--output", "json"]).arg(&component));
    assert_eq!(json_of(&checked)["manifest"], crate_dir.join("size_limit.toml").display().to_string());
}

/// A recorded route decision of `least_loaded` among three candidates (`in_flight` per agent), whose answer —
/// the agent that got the task — is `answer`.
fn route_record(seq: u32, role: &str, in_flight: [u32; 3], answer: usize) -> Value {
    let agents = ["agent-a", "agent-b", "agent-c"];
    let candidates: Vec<Value> = agents
        .iter()
        .zip(in_flight)
        .enumerate()
        .map(|(i, (agent, in_flight))| {
            serde_json::json!({
                "agent_id": agent, "in_flight": in_flight, "max_concurrent": 4, "completed": 10 * i as u64,
                "failed": 0, "avg_latency_ms": 250, "heartbeat_age_ms": 1_500, "since_assigned_ms": 20_000,
                "health": "healthy",
            })
        })
        .collect();
    let task_id = format!("task_0190a1b2c3d4e5f60718293a4b5c6d{seq:02x}");
    let at_ms = 1_750_000_000_000u64 + u64::from(seq) * 1_000;
    serde_json::json!({
        "id": format!("{at_ms}-0"), "at_ms": at_ms, "server_id": "cp-1", "stage": "route", "task_id": task_id,
        "plugin": "least_loaded", "version": "5f2b9c0e7d41a3b86c0d9e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d",
        "source": "builtin", "role": role,
        "input": {
            "now_ms": at_ms, "seed": u64::from(seq) * 7919,
            "task": {"id": task_id, "task_type": "code_review", "priority": "normal",
                     "required_capabilities": ["code"]},
            "candidates": candidates,
        },
        "answer": {"agent_id": agents[answer], "index": answer},
        "answered_by": "plugin", "fuel": 1_234, "duration_us": 40,
    })
}

#[test]
fn replay_reports_agreement_and_disagreement() {
    // Three decisions where the fewest in flight got the task, one where another agent did, and a shadow's answer,
    // which had no effect and is not replayed. The least loaded sits at index 2, 0, 1 and 0.
    let records = vec![
        route_record(1, "active", [3, 2, 0], 2),
        route_record(2, "active", [0, 1, 2], 0),
        route_record(3, "canary", [2, 1, 3], 1),
        route_record(4, "active", [1, 2, 3], 2),
        route_record(4, "shadow", [1, 2, 3], 1),
    ];
    let work = tempfile::tempdir().unwrap();
    let page = work.path().join("decisions.json");
    std::fs::write(&page, serde_json::to_string(&serde_json::json!({"decisions": records})).unwrap()).unwrap();

    let least_loaded = guest_path("least_loaded").unwrap();
    let replayed =
        run(aragora_cp().args(["plugin", "replay", least_loaded, "--output", "json", "--decisions"]).arg(&page));
    assert_eq!(replayed.status.code(), Some(1), "a disagreement exits 1, like diff");
    let report = json_of(&replayed);
    assert_eq!((report["read"].as_u64(), report["replayed"].as_u64()), (Some(5), Some(4)));
    assert_eq!((report["agreed"].as_u64(), report["disagreed"].as_u64()), (Some(3), Some(1)));
    assert_eq!((report["errored"].as_u64(), report["skipped_because"]["shadow"].as_u64()), (Some(0), Some(1)));
    let disagreement = &report["disagreements"][0];
    assert_eq!(disagreement["task_id"], "task_0190a1b2c3d4e5f60718293a4b5c6d04");
    assert_eq!(disagreement["decision_id"], "1750000004000-0");
    assert_eq!((&disagreement["recorded"], &disagreement["candidate"]), (&"agent-c".into(), &"agent-a".into()));

    // `highest_index` always picks the last candidate: it agrees only where agent-c got the task (1 and 4). The
    // same records as JSON lines.
    let lines = work.path().join("decisions.jsonl");
    let text: Vec<String> = records.iter().map(Value::to_string).collect();
    std::fs::write(&lines, text.join("\n")).unwrap();
    let highest_index = guest_path("highest_index").unwrap();
    let replayed =
        run(aragora_cp().args(["plugin", "replay", highest_index, "--output", "json", "--decisions"]).arg(&lines));
    assert_eq!(replayed.status.code(), Some(1));
    let report = json_of(&replayed);
    assert_eq!((report["replayed"].as_u64(), report["agreed"].as_u64()), (Some(4), Some(2)));
    assert_eq!(report["disagreed"].as_u64(), Some(2));
    let candidates: Vec<&Value> = report["disagreements"].as_array().unwrap().iter().map(|d| &d["candidate"]).collect();
    assert_eq!(candidates, [&Value::from("agent-c"), &Value::from("agent-c")]);

    // From the fourth decision on (`--since`), `highest_index` agrees everywhere: exit 0; the text report counts
    // what `--since` left out.
    let agreeing = run(aragora_cp()
        .args(["plugin", "replay", highest_index, "--since", "2025-06-15T15:06:44Z", "--decisions"])
        .arg(&page));
    assert_eq!(agreeing.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&agreeing.stdout);
    assert!(stdout.contains("replayed   1\nagreed     1\ndisagreed  0"), "{stdout}");
    assert!(stdout.contains("shadow 1, other plugin 0, before --since 3"), "{stdout}");
}

/// The replay report counts the calls that needed another try (`retried`): none when a call ran out of fuel, which
/// does not depend on the machine and counts at once. (That a missed deadline is tried again is shown by a unit
/// test of `replay_call`, on a runtime whose fuel cannot run out first.)
#[test]
fn replay_counts_retried_calls_and_fuel_counts_at_once() {
    let mut record = route_record(1, "active", [0, 1, 2], 0);
    record["input"]["task"]["task_type"] = "misbehave".into();
    let work = tempfile::tempdir().unwrap();
    let page = work.path().join("decisions.json");
    std::fs::write(&page, serde_json::to_string(&serde_json::json!([record])).unwrap()).unwrap();
    // `spin_forever` never answers a `misbehave` task; a million units of fuel go in well under a millisecond.
    let manifest = work.path().join("spin_forever.toml");
    std::fs::write(&manifest, "[limits]\nfuel = 1000000\ndeadline_ms = 5000\n").unwrap();
    let replayed = run(aragora_cp()
        .args(["plugin", "replay", guest_path("spin_forever").unwrap(), "--output", "json", "--manifest"])
        .arg(&manifest)
        .arg("--decisions")
        .arg(&page));
    assert_eq!(replayed.status.code(), Some(1), "an error exits 1");
    let report = json_of(&replayed);
    assert_eq!((report["replayed"].as_u64(), report["errored"].as_u64()), (Some(1), Some(1)), "{report}");
    assert!(report["errors"][0]["error"].as_str().unwrap_or_default().contains("fuel"), "{report}");
    assert_eq!(report["retried"].as_u64(), Some(0), "{report}");
}

/// The must-show of replay: the active version replayed over its own live decisions agrees with every one (the
/// record holds the call's seed, so even `random` is reproduced), and another strategy is told where it differs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_the_active_strategy_over_its_live_decisions_agrees_with_every_one() {
    let server = support::server().await;
    let client = reqwest::Client::new();
    let api = |path: &str| format!("{}/api/v1/control-plane{path}", server.base);
    for agent in ["rp-1", "rp-2", "rp-3", "rp-4"] {
        let body = serde_json::json!({"agent_id": agent, "capabilities": ["replayed"]});
        let status = client.post(api("/agents")).bearer_auth(&server.token).json(&body).send().await.unwrap().status();
        assert_eq!(status, 201);
    }
    let selections = 40;
    for _ in 0..selections {
        let body = serde_json::json!({"capabilities": ["replayed"], "strategy": "random", "dry_run": true});
        let response = client.post(api("/agents/select")).bearer_auth(&server.token).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    // The decision log is written off the request path: wait until the server has them all.
    let started = std::time::Instant::now();
    loop {
        let page: Value = client
            .get(api("/decisions?plugin=random&limit=1000"))
            .bearer_auth(&server.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if page["decisions"].as_array().map(Vec::len) == Some(selections) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the decisions were not all recorded: {page}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let replay = |component: &'static str| {
        let (base, token) = (server.base.clone(), server.token.clone());
        tokio::task::spawn_blocking(move || {
            run(aragora_cp()
                .args(["plugin", "replay", guest_path(component).unwrap(), "--server", &base])
                .args(["--token", &token, "--plugin", "random", "--since", "1h", "--output", "json"]))
        })
    };
    let same = replay("random").await.unwrap();
    let report = json_of(&same);
    assert_eq!(
        (report["replayed"].as_u64(), report["agreed"].as_u64()),
        (Some(selections as u64), Some(selections as u64)),
        "{report}"
    );
    assert_eq!((report["disagreed"].as_u64(), report["errored"].as_u64()), (Some(0), Some(0)), "{report}");
    assert_eq!(same.status.code(), Some(0));
    let other = replay("highest_index").await.unwrap();
    let report = json_of(&other);
    let disagreed = report["disagreed"].as_u64().unwrap();
    assert!(
        disagreed > 0 && disagreed < selections as u64,
        "random chose the last agent sometimes, not always: {report}"
    );
    assert_eq!(report["agreed"].as_u64().unwrap() + disagreed, selections as u64);
    assert_eq!(other.status.code(), Some(1), "disagreements exit 1, like diff");
    let _ = server.shutdown.send(());
}
