//! One server of three killed with SIGKILL mid-run. Its agents, like agents behind a load balancer, see their
//! connections fail and go to another server; what the dead server had granted is recovered by the store (its
//! agents heartbeat elsewhere with the tasks they hold, so grants whose answers died with it are released), and
//! submits lost with it are sent again with the same idempotency keys. Every task still ends completed exactly
//! once, and the lease oracle holds across the death.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::redis_server::RedisServer;

use crate::harness::{Fleet, HEAVY, agents, submit_all, wait_for};
use crate::oracle::EventLog;

/// Tasks of the run (fewer than the three-server run: the point is the death, and the suite shares two cores).
const TOTAL: usize = 10_000;
/// Completions before the kill.
const KILL_AFTER: usize = 3_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_run_loses_no_task_and_completes_none_twice() {
    let _heavy = HEAVY.lock().await;
    let started = Instant::now();
    let mut fleet = Fleet::start(RedisServer::start(), 3, "fleet-death");
    let run = fleet.run.clone();
    let (events, reader) = EventLog::follow(run.clone(), 0).await;
    let agents = fleet.spawn_agents(agents(24, 3));
    let submitting = tokio::spawn(submit_all(run.clone(), TOTAL, 100, 3));
    wait_for("the first completions", Duration::from_secs(120), || {
        run.ledger.completed.load(Ordering::SeqCst) >= KILL_AFTER
    })
    .await;
    fleet.servers[2].kill9();
    eprintln!("server 2 killed after {} completions", run.ledger.completed.load(Ordering::SeqCst));
    submitting.await.expect("submitters");
    let report = fleet.finish(TOTAL, &events, agents, 0).await;
    reader.abort();
    assert!(run.ledger.failovers.load(Ordering::SeqCst) > 0, "the dead server's clients failed over");
    eprintln!("server death: {}", fleet.summary(&report, started));
}

/// Agents blocked in claims on a server that dies leave their waiter tokens in the store. A submit routed to such a
/// token grants work to a claim nobody waits on; an agent whose heartbeats do not list its tasks (existing clients)
/// never hears of it, and the task sits until `TASK_TIMEOUT` (300 s). A token dies with its claim's block, so work
/// submitted once the dead server's claims would have ended reaches live claims only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_while_its_agents_wait_strands_no_routed_task() {
    const TASKS: usize = 60;
    let _heavy = HEAVY.lock().await;
    let started = Instant::now();
    let mut fleet = Fleet::start(RedisServer::start(), 3, "fleet-death-idle");
    let run = fleet.run.clone();
    let (events, reader) = EventLog::follow(run.clone(), 0).await;
    let specs: Vec<_> =
        agents(6, 3).into_iter().map(|spec| crate::harness::AgentSpec { reports_tasks: false, ..spec }).collect();
    let agents = fleet.spawn_agents(specs);
    wait_for_waiting_claims(&run, 6).await;
    fleet.servers[2].kill9();
    // Its agents move to a live server at once (their blocked claims fail). Its claims' tokens die with their blocks
    // (plus half a second of grace): wait for that.
    tokio::time::sleep(Duration::from_millis(crate::harness::CLAIM_BLOCK_MS + 1500)).await;
    submit_all(run.clone(), TASKS, 1, 1).await;
    wait_for("every task completed, well before TASK_TIMEOUT", Duration::from_secs(60), || {
        events.completed.load(Ordering::SeqCst) >= TASKS
    })
    .await;
    let report = fleet.finish(TASKS, &events, agents, 0).await;
    reader.abort();
    eprintln!("server death while waiting: {}", fleet.summary(&report, started));
}

/// Waits until `count` claims are blocked (the fleet's `waiting_claims`).
async fn wait_for_waiting_claims(run: &crate::harness::Run, count: u64) {
    let admin = run.admin();
    let started = Instant::now();
    loop {
        let (_, stats) = run
            .send(0, reqwest::Method::GET, &format!("{}/stats", crate::harness::API), &admin, None)
            .await
            .expect("stats");
        if stats["scheduler"]["waiting_claims"].as_u64() == Some(count) {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "claims never all blocked: {stats}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A server stopped with SIGTERM mid-run (the first half of a rolling restart) drains: it answers what it was
/// answering, and its clients go to the other servers for the rest. Unlike a SIGKILL, nothing is lost with it, so
/// even agents whose heartbeats do not list their tasks (existing clients, who would only get a stranded grant back
/// at `TASK_TIMEOUT`) see every task completed within a bound far below `TASK_TIMEOUT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stopped_with_sigterm_mid_run_strands_nothing() {
    const TASKS: usize = 5_000;
    let _heavy = HEAVY.lock().await;
    let started = Instant::now();
    let mut fleet = Fleet::start(RedisServer::start(), 3, "fleet-sigterm");
    let run = fleet.run.clone();
    let (events, reader) = EventLog::follow(run.clone(), 0).await;
    let specs: Vec<_> =
        agents(24, 3).into_iter().map(|spec| crate::harness::AgentSpec { reports_tasks: false, ..spec }).collect();
    let agents = fleet.spawn_agents(specs);
    let submitting = tokio::spawn(submit_all(run.clone(), TASKS, 100, 3));
    wait_for("the first completions", Duration::from_secs(120), || {
        run.ledger.completed.load(Ordering::SeqCst) >= TASKS / 3
    })
    .await;
    let status = tokio::task::block_in_place(|| fleet.servers[1].terminate());
    assert!(status.success(), "server 1 exited {status}; its log:\n{}", fleet.servers[1].log());
    eprintln!("server 1 stopped after {} completions", run.ledger.completed.load(Ordering::SeqCst));
    submitting.await.expect("submitters");
    wait_for("every task completed, well before TASK_TIMEOUT", Duration::from_secs(120), || {
        events.completed.load(Ordering::SeqCst) >= TASKS
    })
    .await;
    let report = fleet.finish(TASKS, &events, agents, 0).await;
    reader.abort();
    eprintln!("server stopped with SIGTERM: {}", fleet.summary(&report, started));
}
