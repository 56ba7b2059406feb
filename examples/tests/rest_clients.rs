//! The REST examples against a real server started in-process on an ephemeral port: the Rust submitter, the curl
//! walk-through (`examples/curl/guide.sh`) and the Python agent (`examples/python/agent.py`). Outcomes are checked
//! through the API, not through what the examples print. A missing `bash`, `curl` or `python3` fails the test with
//! an install hint rather than skipping it.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use aragora_cp::api::Permission;
use aragora_cp_examples::agent::run_agent;
use aragora_cp_examples::submitter::{Options, Summary, run};
use aragora_cp_tests::server::TestServer;
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

fn examples_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Fails (never skips) when a tool the example needs is not installed.
fn require(tool: &str) {
    let found = std::process::Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    assert!(found, "`{tool}` is needed by this example test but is not installed (or not on PATH); install it");
}

async fn get(server: &TestServer, token: &str, path: &str) -> (u16, Value) {
    let response = server.client.get(server.api(path)).bearer_auth(token).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn post(server: &TestServer, token: &str, path: &str, body: Value) -> Value {
    let response = server.client.post(server.api(path)).bearer_auth(token).json(&body).send().await.unwrap();
    assert!(response.status().is_success(), "POST {path}: {}", response.status());
    response.json().await.unwrap()
}

/// Submits a task over REST and returns its id.
async fn submit(server: &TestServer, token: &str, body: Value) -> String {
    post(server, token, "/tasks", body).await["task_id"].as_str().unwrap().to_string()
}

/// Polls `GET /tasks/{id}` until its status is `status`.
async fn wait_for_status(server: &TestServer, token: &str, task_id: &str, status: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, task) = get(server, token, &format!("/tasks/{task_id}")).await;
        if task["status"] == status {
            return;
        }
        assert!(Instant::now() < deadline, "task {task_id} never reached {status}: {task}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// --- the Rust submitter ------------------------------------------------------------------------------------------

fn submitter_options(server: &TestServer, token: String, run_id: &str) -> Options {
    Options {
        server: server.base.clone(),
        token,
        count: 9,
        task_types: vec!["code".into(), "analysis".into(), "summarize".into()],
        require_capability: true,
        wait: Some(Duration::from_secs(30)),
        run_id: run_id.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn submitter_submits_a_mix_of_types_and_priorities_and_waits_for_every_result() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let stop = CancellationToken::new();
    // Specialists: each task can only be taken by the agent holding its type's capability.
    let agents: Vec<_> = ["code", "analysis", "summarize"]
        .into_iter()
        .map(|capability| {
            let (cp, stop) = (server.coordinator.clone(), stop.clone());
            let agent_id = format!("{capability}-agent");
            tokio::spawn(run_agent(cp, agent_id, vec![capability.into()], Duration::from_millis(5), stop))
        })
        .collect();

    let summary = run(&submitter_options(&server, admin.clone(), "mixed-run")).await.expect("the run succeeds");
    assert_eq!(summary.tasks.len(), 9);
    assert!(summary.all_completed(), "{summary}");
    let priorities: std::collections::BTreeSet<&str> = summary.tasks.iter().map(|t| t.priority.as_str()).collect();
    assert_eq!(priorities.len(), 4, "every priority is used: {priorities:?}");
    for outcome in &summary.tasks {
        let (status, task) = get(&server, &admin, &format!("/tasks/{}", outcome.task_id)).await;
        assert_eq!(status, 200);
        assert_eq!(task["status"], "completed", "{task}");
        assert_eq!(task["task_type"], outcome.task_type.as_str());
        assert_eq!(task["priority"], outcome.priority.as_str());
        assert_eq!(task["required_capabilities"], json!([outcome.task_type]));
        assert_eq!(task["assigned_agent"], format!("{}-agent", outcome.task_type), "routed by capability");
        assert_eq!(outcome.result.as_ref(), Some(&task["result"]));
    }

    // The same run id again: the idempotency keys make it a replay, not nine new tasks.
    let again = run(&submitter_options(&server, admin.clone(), "mixed-run")).await.unwrap();
    let ids = |s: &Summary| -> Vec<String> { s.tasks.iter().map(|t| t.task_id.clone()).collect() };
    assert_eq!(ids(&again), ids(&summary));
    let (_, stats) = get(&server, &admin, "/stats").await;
    assert_eq!(stats["scheduler"]["by_status"]["completed"], 9, "{stats}");

    stop.cancel();
    for agent in agents {
        agent.await.unwrap().unwrap();
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submitter_reports_unfinished_tasks_and_explains_a_refused_token() {
    let server = TestServer::start().await;
    // No agent holds `code`: the tasks stay pending and the summary says so.
    let options = Options {
        count: 2,
        wait: Some(Duration::from_millis(300)),
        ..submitter_options(&server, server.admin(), "idle")
    };
    let summary = run(&options).await.unwrap();
    assert!(!summary.all_completed());
    assert_eq!(summary.by_status().get("pending"), Some(&2), "{summary}");

    let refused = run(&Options { token: "not-a-token".into(), ..options.clone() }).await.unwrap_err();
    let message = format!("{refused:#}");
    assert!(message.contains("401") && message.contains("ARAGORA_TOKEN"), "{message}");

    let unreachable = run(&Options { server: "http://127.0.0.1:9".into(), ..options.clone() }).await.unwrap_err();
    assert!(format!("{unreachable:#}").contains("cannot reach"), "{unreachable:#}");
    let bad_url = run(&Options { server: "localhost:8080".into(), ..options }).await.unwrap_err();
    assert!(format!("{bad_url:#}").contains("http://"), "{bad_url:#}");
    server.stop().await;
}

// --- the curl walk-through ---------------------------------------------------------------------------------------

async fn guide(server: &TestServer, token: &str) -> (ExitStatus, String) {
    require("bash");
    require("curl");
    require("python3");
    let output = Command::new("bash")
        .arg(examples_dir().join("curl/guide.sh"))
        .env("SERVER", &server.base)
        .env("TOKEN", token)
        .env("AGENT_ID", "guide-agent")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output).await.expect("guide.sh finishes").unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_guide_walks_a_task_from_submit_to_completed() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let (status, output) = guide(&server, &admin).await;
    assert!(status.success(), "guide.sh failed ({status}):\n{output}");

    let (_, page) = get(&server, &admin, "/tasks?status=completed&agent_id=guide-agent").await;
    let tasks = page["tasks"].as_array().expect("a task list");
    assert_eq!(tasks.len(), 1, "{page}");
    assert_eq!(tasks[0]["result"], json!({"code": "print('hello world')"}));
    assert_eq!(tasks[0]["priority"], "high");
    assert!(tasks[0]["unfenced"] != true, "completed with the lease: {}", tasks[0]);
    let (agent_status, _) = get(&server, &admin, "/agents/guide-agent").await;
    assert_eq!(agent_status, 404, "the walk-through unregisters its agent");

    // Run again on the same server: a fresh run capability keeps it from claiming anything else.
    let (status, output) = guide(&server, &admin).await;
    assert!(status.success(), "second guide.sh run failed:\n{output}");
    let (_, page) = get(&server, &admin, "/tasks?status=completed&agent_id=guide-agent").await;
    assert_eq!(page["tasks"].as_array().unwrap().len(), 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_guide_stops_at_the_first_refused_request_with_the_servers_reason() {
    let server = TestServer::start().await;
    let (status, output) = guide(&server, "not-a-token").await;
    assert!(!status.success());
    assert!(output.contains("answered 401"), "{output}");
    let (_, stats) = get(&server, &server.admin(), "/stats").await;
    assert_eq!(stats["registry"]["total_agents"], 0, "nothing happened after the refusal: {stats}");
    server.stop().await;
}

// --- the Python agent --------------------------------------------------------------------------------------------

struct PythonAgent {
    child: Child,
}

impl PythonAgent {
    /// Starts `agent.py` with an agent token for `agent_id` and waits until the agent is registered.
    async fn start(server: &TestServer, agent_id: &str, extra: &[&str]) -> PythonAgent {
        PythonAgent::start_script(server, "agent.py", agent_id, extra).await
    }

    /// Starts `examples/python/<script>` (agent.py or one built on it) the same way.
    async fn start_script(server: &TestServer, script: &str, agent_id: &str, extra: &[&str]) -> PythonAgent {
        require("python3");
        let token = server.token(&format!("agent:{agent_id}"), &[Permission::Agents, Permission::Tasks]);
        let script: PathBuf = examples_dir().join("python").join(script);
        let child = Command::new("python3")
            .arg(script)
            .args(["--server", &server.base, "--agent-id", agent_id, "--block-ms", "1000"])
            .args(extra)
            .env("ARAGORA_TOKEN", token)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 starts");
        let mut agent = PythonAgent { child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while server.coordinator.get_agent(agent_id).await.is_err() {
            if let Some(status) = agent.child.try_wait().unwrap() {
                let (_, output) = agent.finish().await;
                panic!("agent.py exited ({status}) before registering:\n{output}");
            }
            assert!(Instant::now() < deadline, "agent.py did not register within 30 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        agent
    }

    /// Waits for the process to exit; its status and everything it printed.
    async fn finish(self) -> (ExitStatus, String) {
        let output = tokio::time::timeout(Duration::from_secs(30), self.child.wait_with_output())
            .await
            .expect("agent.py exits")
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status, text)
    }

    fn interrupt(&self) {
        let pid = self.child.id().expect("still running").to_string();
        let sent = std::process::Command::new("kill").args(["-INT", &pid]).status().expect("run kill");
        assert!(sent.success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_agent_completes_three_tasks_with_its_results_then_exits_and_unregisters() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let agent = PythonAgent::start(&server, "py-agent", &["--capabilities", "code,python", "--max-tasks", "3"]).await;

    let mut ids = Vec::new();
    for (n, priority) in ["high", "normal", "low"].into_iter().enumerate() {
        let body = json!({
            "task_type": "code",
            "required_capabilities": ["python"],
            "priority": priority,
            "payload": {"text": format!("hello {n}"), "n": n},
            "idempotency_key": format!("python-{n}"),
        });
        ids.push(submit(&server, &admin, body).await);
    }
    for (n, id) in ids.iter().enumerate() {
        let (_, task) = get(&server, &admin, &format!("/tasks/{id}?wait=30")).await;
        assert_eq!(task["status"], "completed", "{task}");
        assert_eq!(task["assigned_agent"], "py-agent");
        assert_eq!(task["result"], json!({"agent_id": "py-agent", "output": {"text": format!("HELLO {n}"), "n": n}}));
        assert!(task["unfenced"] != true, "completed with the lease: {task}");
    }

    let (status, output) = agent.finish().await;
    assert!(status.success(), "agent.py exited with {status}:\n{output}");
    let (agent_status, _) = get(&server, &admin, "/agents/py-agent").await;
    assert_eq!(agent_status, 404, "agent.py unregisters when it is done:\n{output}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_agent_drops_a_task_whose_lease_was_lost_and_goes_on() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let args = ["--capabilities", "slow", "--max-tasks", "1", "--work-ms", "3000"];
    let agent = PythonAgent::start(&server, "py-slow", &args).await;

    let body = |n: u32| json!({"task_type": "t", "required_capabilities": ["slow"], "payload": {"n": n}});
    let cancelled = submit(&server, &admin, body(1)).await;
    wait_for_status(&server, &admin, &cancelled, "running").await;
    post(&server, &admin, &format!("/tasks/{cancelled}/cancel"), json!({})).await;
    // The agent's complete of the cancelled task gets 409; it must carry on and take the next one.
    let next = submit(&server, &admin, body(2)).await;
    let (_, task) = get(&server, &admin, &format!("/tasks/{next}?wait=30")).await;
    assert_eq!(task["status"], "completed", "{task}");
    assert_eq!(task["assigned_agent"], "py-slow");

    let (status, output) = agent.finish().await;
    assert!(status.success(), "agent.py exited with {status}:\n{output}");
    let (_, first) = get(&server, &admin, &format!("/tasks/{cancelled}")).await;
    assert_eq!(first["status"], "cancelled", "the late complete changed nothing: {first}");
    assert_eq!(first["result"], Value::Null);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_agent_on_ctrl_c_unregisters_and_its_task_goes_back_to_the_queue() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let agent = PythonAgent::start(&server, "py-interrupted", &["--capabilities", "long", "--work-ms", "30000"]).await;
    let task = submit(&server, &admin, json!({"task_type": "t", "required_capabilities": ["long"]})).await;
    wait_for_status(&server, &admin, &task, "running").await;

    agent.interrupt();
    let (status, output) = agent.finish().await;
    assert_eq!(status.code(), Some(130), "Ctrl-C exits with 130:\n{output}");
    let (agent_status, _) = get(&server, &admin, "/agents/py-interrupted").await;
    assert_eq!(agent_status, 404, "unregistered on Ctrl-C:\n{output}");
    let (_, requeued) = get(&server, &admin, &format!("/tasks/{task}")).await;
    assert_eq!(requeued["status"], "pending", "the interrupted task is back in the queue: {requeued}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_deliberation_agent_decides_a_deliberation_the_same_way_every_time() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let args = ["--max-tasks", "1"];
    let agent = PythonAgent::start_script(&server, "deliberation_agent.py", "py-deliberator", &args).await;
    let request = json!({"content": "Should we ship on Friday?", "decision_type": "debate", "timeout_seconds": 30});
    let decided = post(&server, &admin, "/deliberations", request).await;
    assert_eq!(decided["status"], "completed", "{decided}");
    // The question's SHA-256 makes the three voices vote yes, no, no.
    assert_eq!((decided["answer"].as_str(), decided["consensus_reached"].as_bool()), (Some("no"), Some(false)));
    assert_eq!(decided["confidence"], 0.667);
    let positions: Vec<&str> =
        decided["agent_contributions"].as_array().unwrap().iter().map(|c| c["position"].as_str().unwrap()).collect();
    assert_eq!(positions, ["yes", "no", "no"]);
    assert_eq!(decided["agent_id"], "py-deliberator");
    let (status, output) = agent.finish().await;
    assert!(status.success(), "deliberation_agent.py exited with {status}:\n{output}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_python_deliberation_agents_answer_the_rounds_of_an_orchestrated_deliberation() {
    let server = TestServer::start().await;
    let admin = server.admin();
    // Each proposes, then revises: two round tasks each, then it exits.
    let mut agents = Vec::new();
    for id in ["py-d1", "py-d2", "py-d3"] {
        agents.push(PythonAgent::start_script(&server, "deliberation_agent.py", id, &["--max-tasks", "2"]).await);
    }
    let request = json!({"content": "Should we ship on Friday?", "mode": "orchestrated", "agents": 3, "rounds": 2,
                         "decide": "majority", "timeout_seconds": 60});
    let decided = post(&server, &admin, "/deliberations", request).await;
    assert_eq!(decided["status"], "completed", "{decided}");
    let mut participants: Vec<&str> =
        decided["participants"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    participants.sort_unstable();
    assert_eq!(participants, ["py-d1", "py-d2", "py-d3"]);
    let request_id = decided["request_id"].as_str().unwrap();
    let (_, transcript) = get(&server, &admin, &format!("/deliberations/{request_id}/transcript")).await;
    let rounds = transcript["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 2, "{transcript}");
    let answers = |round: &Value| -> Vec<String> {
        round["contributions"].as_array().unwrap().iter().map(|c| c["answer"].as_str().unwrap().to_string()).collect()
    };
    // Proposals are votes read off the question's SHA-256; revising, each takes the view most positions hold.
    let first = answers(&rounds[0]);
    assert!(first.iter().all(|a| a == "yes" || a == "no"), "{transcript}");
    let leading = if first.iter().filter(|a| *a == "yes").count() * 2 > 3 { "yes" } else { "no" };
    assert!(answers(&rounds[1]).iter().all(|a| a == leading), "{transcript}");
    assert_eq!((decided["answer"].as_str(), decided["consensus_reached"].as_bool()), (Some(leading), Some(true)));
    for agent in agents {
        let (status, output) = agent.finish().await;
        assert!(status.success(), "deliberation_agent.py exited with {status}:\n{output}");
    }
    server.stop().await;
}
