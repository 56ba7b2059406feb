//! An orchestrated deliberation outlives the server driving it: two servers share a Redis, the session starts on
//! server 0, whose orchestrator drives it; server 0 is killed with SIGKILL between rounds, and server 1's
//! orchestrator takes the session over (its lease lapses with the dead server's heartbeats) and finishes it from
//! the round tasks in the store. Three participants answer over HTTP on server 1 throughout.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{API, Fleet, HEAVY, Run};
use crate::redis_server::RedisServer;

/// Answers every round task on `base` with `ship`, a little slowly, until `stop`.
async fn participant(run: Arc<Run>, base: String, id: &'static str, stop: Arc<AtomicBool>) {
    let token = run.admin();
    let post = |path: String, body: Value| {
        run.client.post(format!("{base}{API}{path}")).bearer_auth(&token).json(&body).send()
    };
    post("/agents".into(), json!({"agent_id": id, "capabilities": ["deliberation"]})).await.expect("register");
    while !stop.load(Ordering::SeqCst) {
        let Ok(response) = post("/tasks/claim".into(), json!({"agent_id": id, "block_ms": 500})).await else {
            continue;
        };
        let claimed: Value = response.json().await.unwrap_or(Value::Null);
        let Some(task_id) = claimed["task"]["task_id"].as_str() else { continue };
        tokio::time::sleep(Duration::from_millis(600)).await;
        let done = json!({"lease_id": claimed["task"]["lease_id"], "result": {"answer": "ship"}});
        let _ = post(format!("/tasks/{task_id}/complete"), done).await;
    }
}

async fn session(run: &Run, base: &str, request_id: &str) -> Value {
    let url = format!("{base}{API}/deliberations/{request_id}");
    let response =
        run.client.request(Method::GET, url).bearer_auth(run.admin()).send().await.expect("read the session");
    response.json().await.expect("a session")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deliberation_whose_server_is_killed_is_finished_by_another_server() {
    let _heavy = HEAVY.lock().await;
    let mut fleet = Fleet::start(RedisServer::start(), 2, "fleet-deliberation");
    let run = fleet.run.clone();
    let (first, second) = (fleet.servers[0].base.clone(), fleet.servers[1].base.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let participants: Vec<_> = ["p1", "p2", "p3"]
        .into_iter()
        .map(|id| tokio::spawn(participant(run.clone(), second.clone(), id, stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(800)).await;

    let request = json!({"content": "Ship it?", "mode": "orchestrated", "async": true, "agents": 3, "rounds": 4,
                         "timeout_seconds": 120, "round_timeout_seconds": 30});
    let url = format!("{first}{API}/deliberations");
    let queued: Value =
        run.client.post(url).bearer_auth(run.admin()).json(&request).send().await.unwrap().json().await.unwrap();
    let request_id = queued["request_id"].as_str().unwrap_or_else(|| panic!("queued: {queued}")).to_string();

    // Once a round is done (server 0 drives: the session's lease is its orchestrator's), server 0 dies.
    let started = Instant::now();
    loop {
        let read = session(&run, &second, &request_id).await;
        if read["progress"]["round"].as_u64().is_some_and(|round| round >= 2) {
            assert!(read["agent_id"].as_str().is_some_and(|a| a.starts_with("control-plane.")), "{read}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no round completed: {read}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let driver = session(&run, &second, &request_id).await["agent_id"].clone();
    fleet.servers[0].kill9();

    let done = loop {
        let read = session(&run, &second, &request_id).await;
        if !["queued", "running"].contains(&read["status"].as_str().unwrap_or("")) {
            break read;
        }
        assert!(started.elapsed() < Duration::from_secs(100), "not finished after the death: {read}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!((done["status"].as_str(), done["answer"].as_str()), (Some("completed"), Some("ship")), "{done}");
    assert_eq!(done["consensus_reached"], true);
    let transcript_url = format!("{second}{API}/deliberations/{request_id}/transcript");
    let transcript: Value =
        run.client.get(transcript_url).bearer_auth(run.admin()).send().await.unwrap().json().await.unwrap();
    let rounds = transcript["rounds"].as_array().expect("rounds");
    assert_eq!(rounds.len(), 4, "every round, once: {transcript}");
    for round in rounds {
        assert_eq!(round["contributions"].as_array().map(Vec::len), Some(3), "{round}");
    }
    // Another orchestrator completed it.
    let task_url = format!("{second}{API}/tasks/{}", done["task_id"].as_str().unwrap());
    let task: Value = run.client.get(task_url).bearer_auth(run.admin()).send().await.unwrap().json().await.unwrap();
    assert_ne!(task["assigned_agent"], driver, "{task}");
    assert!(task["attempt"].as_u64().is_some_and(|a| a >= 2), "taken over: {task}");
    stop.store(true, Ordering::SeqCst);
    for participant in participants {
        participant.await.expect("participant");
    }
    fleet.servers[1].assert_no_panic();
}
