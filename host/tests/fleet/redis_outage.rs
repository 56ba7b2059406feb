//! Redis crashes (SIGKILL) for five seconds mid-run and comes back on the same port from its append-only file
//! (`appendfsync always`, so nothing acknowledged is lost). While it is down every server answers 503 problem+json
//! `store_unavailable` (never 500) and `/readyz` 503; then the fleet resumes by itself: agents keep their leases
//! (no agent is marked offline for the outage), submits answered 503 are sent again with the same idempotency
//! keys, and every acknowledged task ends completed exactly once. No server log shows a panic.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::redis_server::RedisServer;
use aragora_cp::api::Permission;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::{API, Fleet, HEAVY, Run, agents, submit_all, wait_for};
use crate::oracle::EventLog;

/// Tasks the submitters send.
const TOTAL: usize = 10_000;
/// Completions before the crash.
const CRASH_AFTER: usize = 2_000;
/// How long Redis stays down.
const OUTAGE: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_answers_503_and_the_fleet_resumes_losing_nothing() {
    let _heavy = HEAVY.lock().await;
    let started = Instant::now();
    let redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let mut fleet = Fleet::start(redis, 3, "fleet-outage");
    let run = fleet.run.clone();
    let (events, reader) = EventLog::follow(run.clone(), 0).await;
    let agents = fleet.spawn_agents(agents(24, 3));
    // Small batches, so submits are still going when Redis goes.
    let submitting = tokio::spawn(submit_all(run.clone(), TOTAL, 50, 3));
    wait_for("the first completions", Duration::from_secs(120), || {
        run.ledger.completed.load(Ordering::SeqCst) >= CRASH_AFTER
    })
    .await;

    fleet.redis.crash();
    let down = Instant::now();
    eprintln!("redis killed after {} completions", run.ledger.completed.load(Ordering::SeqCst));
    let submitter = run.token("fleet-submitter", &[Permission::Tasks, Permission::Read]);
    let probe = json!({"task_type": "fleet", "payload": {"n": TOTAL}, "idempotency_key": format!("fleet-{TOTAL}")});
    for server in 0..run.bases.len() {
        let failing = readyz_becomes(&run, server, StatusCode::SERVICE_UNAVAILABLE, Duration::from_secs(3)).await;
        assert!(failing, "server {server}: /readyz kept answering 200 with Redis down");
        let (status, problem) = run
            .send(server, Method::POST, &format!("{API}/tasks"), &submitter, Some(&probe))
            .await
            .expect("the server answers while Redis is down");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "a submit with Redis down: {problem}");
        assert_eq!(problem["code"], "store_unavailable", "{problem}");
        let (status, problem) =
            run.send(server, Method::GET, &format!("{API}/stats"), &run.admin(), None).await.expect("an answer");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "stats with Redis down: {problem}");
        assert_eq!(problem["code"], "store_unavailable", "{problem}");
    }
    assert!(down.elapsed() < OUTAGE, "the checks while down outlasted the outage");
    tokio::time::sleep(OUTAGE.saturating_sub(down.elapsed())).await;
    fleet.redis.start_again();
    eprintln!("redis back after {:.1} s", down.elapsed().as_secs_f64());

    // The probe's outcome was unknown (503): sent again with the same key, it is acknowledged once.
    let at = std::sync::atomic::AtomicUsize::new(0);
    let (status, answer, _) =
        run.send_until_answered(&at, Method::POST, &format!("{API}/tasks"), &submitter, Some(&probe)).await;
    assert!(status == StatusCode::CREATED || status == StatusCode::OK, "{status} {answer}");
    let probe_id = answer["task_id"].as_str().expect("task_id").to_string();
    run.ledger.acknowledged.lock().insert(format!("fleet-{TOTAL}"), probe_id);
    for server in 0..run.bases.len() {
        let ready = readyz_becomes(&run, server, StatusCode::OK, Duration::from_secs(30)).await;
        assert!(ready, "server {server} is ready again once Redis is back");
    }

    submitting.await.expect("submitters");
    let report = fleet.finish(TOTAL + 1, &events, agents, 0).await;
    reader.abort();
    assert!(run.ledger.unavailable.load(Ordering::SeqCst) > 0, "clients saw 503 store_unavailable");
    assert_eq!(report.counts.get("agent_offline"), None, "an outage must not mark agents offline");
    for server in &fleet.servers {
        let log = server.log();
        assert!(
            log.contains("store is back after an outage"),
            "server {} did not hold its sweeps back after the outage (DESIGN §6); its log:\n{log}",
            server.index
        );
    }
    eprintln!("redis outage: {}", fleet.summary(&report, started));
}

/// Polls `/readyz` of `server` until it answers `status` (true) or `limit` passes (false). A 503 must say
/// `not_ready`.
async fn readyz_becomes(run: &Run, server: usize, status: StatusCode, limit: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Ok(response) = run.client.get(format!("{}/readyz", run.bases[server])).send().await {
            let answered = response.status();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            if answered == StatusCode::SERVICE_UNAVAILABLE {
                assert_eq!(body["status"], "not_ready", "{body}");
            }
            if answered == status {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
