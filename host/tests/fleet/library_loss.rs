//! The function library vanishes under load: three servers on one Redis, agents and submitters running, and Redis
//! loses the store's function library several times (`FUNCTION FLUSH`, what a failover to a replica that never had
//! the library looks like to the servers). Each server loads it again on the first call that misses it; no client
//! sees an error other than a proper 503, and every acknowledged task ends completed exactly once.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::harness::{Fleet, HEAVY, agents, submit_all, wait_for};
use crate::oracle::EventLog;
use crate::redis_server::RedisServer;

/// Tasks of the run.
const TOTAL: usize = 6_000;
/// How many times the library is flushed, spread over the run.
const LOSSES: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_reload_a_lost_function_library_without_failing_a_request() {
    let _heavy = HEAVY.lock().await;
    let started = Instant::now();
    let mut fleet = Fleet::start(RedisServer::start(), 3, "fleet-library");
    let run = fleet.run.clone();
    let (events, reader) = EventLog::follow(run.clone(), 0).await;
    let agents = fleet.spawn_agents(agents(18, 3));
    // Small batches, so submits are still going when the library goes.
    let submitting = tokio::spawn(submit_all(run.clone(), TOTAL, 20, 3));
    for loss in 1..=LOSSES {
        let due = loss * TOTAL / (LOSSES + 1);
        wait_for("completions before the next loss", Duration::from_secs(120), || {
            run.ledger.completed.load(Ordering::SeqCst) >= due
        })
        .await;
        let listed = fleet.redis.command("FUNCTION LIST").expect("FUNCTION LIST");
        assert!(listed.contains("aragora_cp_"), "the servers loaded the library again before loss {loss}: {listed}");
        let flushed = fleet.redis.command("FUNCTION FLUSH").expect("FUNCTION FLUSH");
        assert!(flushed.contains("OK"), "{flushed}");
        eprintln!("library flushed after {} completions", run.ledger.completed.load(Ordering::SeqCst));
    }
    submitting.await.expect("submitters");
    let report = fleet.finish(TOTAL, &events, agents, 0).await;
    reader.abort();
    // Each loss is met by whichever servers call in the moment before one of them has loaded the library again: at
    // least one a loss, not necessarily every server (one that had no call in flight then never sees it gone).
    let reloads: usize =
        fleet.servers.iter().map(|server| server.log().matches("the function library is gone").count()).sum();
    assert!(reloads >= LOSSES, "{reloads} reloads for {LOSSES} losses (did the test flush the library?)");
    eprintln!("library loss: {}", fleet.summary(&report, started));
}
