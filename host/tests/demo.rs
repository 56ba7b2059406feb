//! `aragora-cp demo --quick` run as a user runs it. It must exit 0, and every narrated step must have happened as
//! the server reported it: the `--summary-json` the demo writes is built from API answers and the event stream,
//! and these tests check those facts against each other — each routing decision against the fleet the strategy
//! saw, the violation against the refusal, the requeued task's attempts against the agent that was killed, the
//! completions per agent against the stats counters. Ctrl-C is checked on the server's event stream: every live
//! agent unregisters before the server drains. No timing is asserted; the bounds below only stop a hung run.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Longest a quick demo may take before the test gives up on it (it takes seconds; CI machines are busy).
const HUNG: Duration = Duration::from_secs(300);

/// One demo at a time: each keeps the machine's cores busy, and two at once would only make a slow machine slower.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn demo(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_aragora-cp"));
    command.arg("demo").args(args).env_remove("RUST_LOG").stdout(Stdio::piped()).stderr(Stdio::piped());
    command
}

/// Waits for the child to exit, killing it after `HUNG`; returns (success, stdout, stderr).
fn finish(mut child: Child) -> (bool, String, String) {
    fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    }
    // A pipe the caller already took is read by the caller.
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let deadline = Instant::now() + HUNG;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the demo did not finish within {HUNG:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (status.success(), out.join().unwrap(), err.join().unwrap())
}

fn agents_by_id(fleet_before: &Value) -> Vec<&Value> {
    fleet_before.as_array().expect("fleet_before is a list").iter().collect()
}

/// The agents that could take `task` when it was submitted: holding every required capability, ready, not paused.
fn capable(task: &Value) -> Vec<&Value> {
    let required: Vec<&str> =
        task["required_capabilities"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    agents_by_id(&task["fleet_before"])
        .into_iter()
        .filter(|a| {
            let held: Vec<&str> = a["capabilities"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
            required.iter().all(|r| held.contains(r)) && a["status"] == "ready" && a["paused"] == false
        })
        .collect()
}

fn agent<'a>(agents: &[&'a Value], id: &str) -> &'a Value {
    agents.iter().find(|a| a["agent_id"] == id).unwrap_or_else(|| panic!("{id} was not a capable agent"))
}

/// Tasks whose first attempt the strategy plugin itself decided (routed to a waiting agent, no failed call, no
/// fallback), with the agent it chose and the agents it chose among.
fn decided(phase: &Value) -> Vec<(&Value, String, Vec<&Value>)> {
    let tasks = phase["tasks"].as_array().expect("tasks");
    assert!(!tasks.is_empty(), "no tasks in {}", phase["strategy"]);
    let mut decided = Vec::new();
    for task in tasks {
        assert_eq!(task["status"], "completed", "{task}");
        let first = &task["attempts"][0];
        assert_eq!(first["attempt"], 1, "the first recorded attempt is attempt 1: {task}");
        let plugin_answered = task["strategy_failures"] == 0 && task["strategy_fallbacks"] == 0;
        if first["via"] == "routed" && plugin_answered {
            let candidates = capable(task);
            for candidate in &candidates {
                assert_eq!(candidate["in_flight"], 0, "the fleet was idle before each submit: {task}");
            }
            decided.push((task, first["agent_id"].as_str().unwrap().to_string(), candidates));
        }
    }
    // Nearly every task is routed; a claim expiring at the very moment of a submit may pull one instead.
    assert!(decided.len() * 2 >= tasks.len(), "too few routed decisions to judge {}: {phase}", phase["strategy"]);
    decided
}

/// `least_loaded`: nothing was in flight, so the choice has the fewest completed tasks among the capable agents.
/// Returns how many decisions went to each agent.
fn check_least_loaded(phase: &Value) -> BTreeMap<String, u64> {
    let mut chosen_counts = BTreeMap::new();
    for (task, chosen, candidates) in decided(phase) {
        let fewest = candidates.iter().map(|a| a["tasks_completed"].as_u64().unwrap()).min().unwrap();
        let chosen_agent = agent(&candidates, &chosen);
        assert_eq!(chosen_agent["tasks_completed"].as_u64().unwrap(), fewest, "least_loaded chose {chosen}: {task}");
        *chosen_counts.entry(chosen).or_default() += 1;
    }
    chosen_counts
}

/// `cheapest_within_latency`: the lowest cost among capable agents whose latency (observed once it completed a
/// task, else declared) meets the bound; the fastest when none does. Returns how many decisions went to each agent.
fn check_cheapest(phase: &Value) -> BTreeMap<String, u64> {
    let bound = phase["max_latency_ms"].as_f64().expect("max_latency_ms");
    let latency = |a: &Value| {
        let observed = a["avg_latency_ms"].as_f64().unwrap().round();
        if a["tasks_completed"].as_u64().unwrap() > 0 && observed > 0.0 {
            observed
        } else {
            a["latency_ms"].as_f64().unwrap()
        }
    };
    let mut chosen_counts = BTreeMap::new();
    for (task, chosen, candidates) in decided(phase) {
        let within: Vec<&&Value> = candidates.iter().filter(|a| latency(a) <= bound).collect();
        let chosen_agent = agent(&candidates, &chosen);
        if within.is_empty() {
            let fastest = candidates.iter().map(|a| latency(a)).fold(f64::INFINITY, f64::min);
            assert_eq!(latency(chosen_agent), fastest, "no agent met the bound; {chosen} is not the fastest: {task}");
        } else {
            let cheapest = within.iter().map(|a| a["cost"].as_f64().unwrap()).fold(f64::INFINITY, f64::min);
            assert!(latency(chosen_agent) <= bound, "{chosen} does not meet {bound} ms: {task}");
            assert_eq!(chosen_agent["cost"].as_f64().unwrap(), cheapest, "{chosen} is not the cheapest: {task}");
        }
        *chosen_counts.entry(chosen).or_default() += 1;
    }
    chosen_counts
}

/// Runs `demo --quick` with `extra` arguments to the end and returns its summary.
fn quick_demo(extra: &[&str]) -> Value {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("summary.json");
    let mut args = vec!["--quick", "--summary-json", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    let child = demo(&args).spawn().expect("aragora-cp demo starts");
    let (success, stdout, stderr) = finish(child);
    assert!(success, "demo {args:?} failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    serde_json::from_str(&std::fs::read_to_string(&path).expect("the summary was written"))
        .expect("the summary is JSON")
}

#[test]
fn quick_demo_shows_every_step_as_the_server_recorded_it() {
    check_walkthrough(&quick_demo(&[]));
}

#[test]
fn quick_demo_runs_the_same_on_redis() {
    let redis = Redis::start();
    let summary = quick_demo(&["--redis", &format!("redis://127.0.0.1:{}", redis.port)]);
    check_walkthrough(&summary);
}

/// A `redis-server` on a free loopback port, without persistence, killed when dropped.
struct Redis {
    port: u16,
    child: Child,
}

impl Redis {
    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let args = ["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"];
        let child = Command::new("redis-server")
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is needed by this test: install it (apt-get install redis-server)");
        let redis = Redis { port, child };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        redis
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every step of a finished walkthrough, checked against the rest of the summary.
fn check_walkthrough(summary: &Value) {
    assert_eq!(summary["completed"], true);
    assert_eq!(
        summary["steps"],
        json!(["fleet", "routing", "hot_swap", "policy", "agent_loss", "deliberation", "stats"])
    );

    // 1. Five agents with different models and providers, registered and ready.
    let fleet = summary["fleet"].as_array().unwrap();
    assert_eq!(fleet.len(), 5);
    let providers: BTreeSet<&str> = fleet.iter().map(|a| a["provider"].as_str().unwrap()).collect();
    assert_eq!(providers.len(), 5, "five providers: {fleet:?}");
    assert!(fleet.iter().all(|a| a["status"] == "ready"), "{fleet:?}");

    // 2. least_loaded spread the work, each decision by its rule.
    let before = &summary["routing"];
    assert_eq!(before["strategy"], "least_loaded");
    let spread = check_least_loaded(before);
    assert!(spread.len() >= 3, "least_loaded spreads work over the fleet: {spread:?}");

    // 3. The dropped plugin is the one active, from the folder, and every decision after the swap follows it.
    let after = &summary["hot_swap"];
    assert_eq!(after["strategy"], "cheapest_within_latency");
    assert_eq!(after["refused_before_install"], json!({"status": 400, "code": "unknown_strategy"}));
    assert_eq!(after["plugin"]["status"], "active");
    assert_eq!(after["plugin"]["source"], "file");
    assert_eq!(after["plugin"]["sha256"], after["plugin"]["expected_sha256"]);
    let concentrated = check_cheapest(after);
    assert!(concentrated.len() < spread.len(), "the swap changed the distribution: {spread:?} → {concentrated:?}");
    assert!(
        !concentrated.contains_key("llama-local"),
        "the cheapest agent is too slow for the bound: {concentrated:?}"
    );

    // 4. The policy denied the oversized task; the violation names the policy and matches the refusal.
    let policy = &summary["policy"];
    assert_eq!(policy["plugin"]["source"], "file");
    assert_eq!(policy["refusal"]["status"], 403);
    assert_eq!(policy["refusal"]["code"], "policy_denied");
    let violation = &policy["violation"];
    assert_eq!(violation["policy"], "payload_size_policy");
    assert_eq!(violation["stage"], "submit");
    assert_eq!(violation["decision"], "deny");
    assert_eq!(violation["id"], policy["refusal"]["problem"]["violation_id"]);
    assert!(policy["payload_bytes"].as_u64().unwrap() > 65_536);
    assert_eq!(policy["denied_task_lookup_status"], 404, "a denied task is never stored");
    assert_eq!(policy["allowed_task"]["status"], "completed");

    // 5. The killed agent held attempt 1; another agent finished the task on a later attempt.
    let loss = &summary["agent_loss"];
    let killed = loss["killed_agent"].as_str().unwrap();
    let attempts = loss["attempts"].as_array().unwrap();
    assert!(attempts.len() >= 2, "{loss}");
    assert_eq!(attempts[0]["agent_id"], killed);
    for (n, attempt) in attempts.iter().enumerate() {
        assert_eq!(attempt["attempt"], n as u64 + 1, "attempts are numbered in order: {loss}");
    }
    let last = attempts.last().unwrap();
    assert_eq!(loss["final"]["status"], "completed");
    assert_ne!(loss["final"]["assigned_agent"], killed);
    assert_eq!(loss["final"]["assigned_agent"], last["agent_id"]);
    assert_eq!(loss["final"]["attempt"], last["attempt"]);
    assert_eq!(loss["final"]["last_error"]["code"], "agent_lost");
    assert!(loss["final"]["retries"].as_u64().unwrap() >= 1);
    assert_eq!(loss["killed_agent_status"], "offline");
    let history: Vec<&str> = loss["history"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    let position =
        |kind: &str| history.iter().position(|k| *k == kind).unwrap_or_else(|| panic!("{kind}: {history:?}"));
    assert!(position("task_started") < position("task_retried"), "{history:?}");
    assert!(position("task_retried") < history.iter().rposition(|k| *k == "task_claimed").unwrap(), "{history:?}");
    assert_eq!(history.last(), Some(&"task_completed"));

    // 6. Three debaters deliberated in two rounds: the cautious one was persuaded, the majority decided.
    let deliberation = &summary["deliberation"];
    assert_eq!(deliberation["status"], "completed", "{deliberation}");
    assert_eq!(
        (deliberation["answer"].as_str(), deliberation["consensus_reached"].as_bool()),
        (Some("ship this week"), Some(true))
    );
    let mut participants: Vec<&str> =
        deliberation["participants"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    participants.sort_unstable();
    assert_eq!(participants, ["claude-opus", "gpt-4o", "mistral-large"], "the three holding debate");
    let transcript = deliberation["transcript"].as_array().unwrap();
    assert_eq!(transcript.len(), 2);
    let answers = |round: &Value| -> Vec<String> {
        round["contributions"].as_array().unwrap().iter().map(|c| c["answer"].as_str().unwrap().to_string()).collect()
    };
    assert!(answers(&transcript[0]).contains(&"wait a week".to_string()), "a dissent first: {deliberation}");
    assert!(answers(&transcript[1]).iter().all(|a| a == "ship this week"), "then agreement: {deliberation}");

    // 7. The stats agree with the walkthrough: completions per agent (from the task list) sum to the counter, and
    //    every completed task is one the walkthrough submitted and saw complete.
    let stats = &summary["stats"];
    let completed: u64 =
        summary["completed_per_agent"].as_object().unwrap().values().map(|n| n.as_u64().unwrap()).sum();
    assert_eq!(completed, summary["tasks_completed"].as_u64().unwrap());
    assert_eq!(completed, stats["scheduler"]["by_status"]["completed"].as_u64().unwrap());
    let walkthrough_tasks = before["tasks"].as_array().unwrap().len()
        + after["tasks"].as_array().unwrap().len()
        + 2
        + deliberation["tasks"].as_u64().unwrap() as usize;
    assert_eq!(
        completed, walkthrough_tasks as u64,
        "routing + swap tasks, the allowed task, the requeued one, the deliberation and its rounds"
    );
    assert_eq!(stats["scheduler"]["pending_tasks"], 0);
    assert_eq!(stats["scheduler"]["running_tasks"], 0);
    assert_eq!(stats["registry"]["total_agents"], 5);
    assert_eq!(stats["registry"]["by_status"]["offline"], 1, "the killed agent");

    // At the end the live agents unregistered: the server lists only the dead one.
    assert_eq!(summary["agents_after_stop"], json!([{"agent_id": killed, "status": "offline"}]));
    assert_eq!(summary["stopped_by_signal"], false);
}

#[test]
fn ctrl_c_unregisters_the_agents_before_the_server_drains() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("summary.json");
    let mut child =
        demo(&["--quick", "--hold", "--summary-json", path.to_str().unwrap()]).spawn().expect("aragora-cp demo starts");
    let stdout = child.stdout.take().unwrap();
    let (lines, seen) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let mut base = None;
    let mut token = None;
    let deadline = Instant::now() + HUNG;
    loop {
        let line = match seen.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => line,
            Err(error) => {
                let (_, _, stderr) = finish(child);
                panic!("the demo did not reach --hold ({error}); stderr:\n{stderr}");
            }
        };
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["control", "plane", url, ..] => base = Some(url.to_string()),
            ["admin", "token", value] => token = Some(value.to_string()),
            ["holding:", ..] => break,
            _ => {}
        }
    }
    let (base, token) = (base.expect("the URL was printed"), token.expect("the admin token was printed"));

    // While it holds, the server lists the four agents that outlived the walkthrough.
    let agents: Value = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let url = format!("{base}/api/v1/control-plane/agents");
        reqwest::Client::new().get(url).bearer_auth(&token).send().await.unwrap().json().await.unwrap()
    });
    let live: BTreeSet<&str> = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["status"] != "offline")
        .map(|a| a["agent_id"].as_str().unwrap())
        .collect();
    assert_eq!(live.len(), 4, "four agents outlive the walkthrough: {agents}");

    let interrupted = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(interrupted.success());
    let (success, stdout, stderr) = finish(child);
    assert!(success, "Ctrl-C ends --hold with exit 0\nstdout:\n{stdout}\nstderr:\n{stderr}");
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(summary["stopped_by_signal"], true);
    // Read from the server after the agents stopped and before it drained: none of the live ones is left.
    let left = summary["agents_after_stop"].as_array().expect("the server was asked what was left");
    assert!(left.iter().all(|a| !live.contains(a["agent_id"].as_str().unwrap())), "still registered: {left:?}");
    assert!(left.iter().all(|a| a["status"] == "offline"), "{left:?}");
}
