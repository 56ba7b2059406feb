//! One server of three killed with SIGKILL mid-run. Its agents, like agents behind a load balancer, see their
//! connections fail and go to another server; what the dead server had granted is recovered by the store (its
//! agents heartbeat elsewhere with the tasks they hold, so grants whose answers died with it are released), and
//! submits lost with it are sent again with the same idempotency keys. Every task still ends completed exactly
//! once, and the lease oracle holds across the death.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use aragora_cp_tests::redis_server::RedisServer;

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
