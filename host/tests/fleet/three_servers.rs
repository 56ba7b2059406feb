//! Three servers, one Redis, 20,000 tasks: agents spread over the three servers claim (blocking), complete under
//! their leases and heartbeat while submitters send batches through all three. Every task ends completed exactly
//! once, and the event stream of one server carries the other servers' events and shows no two valid leases; a
//! second server streams exactly the same events in the same order. Server 1 writes its events in the older form
//! (`REDIS_EVENT_FORMAT=fields`, as every fleet's server 1 does), the others in the compact one.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::redis_server::RedisServer;

use crate::harness::{Fleet, HEAVY, agents, submit_all, wait_for};
use crate::oracle::EventLog;

/// Tasks of the run.
pub(crate) const TOTAL: usize = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_on_one_redis_complete_every_task_exactly_once() {
    let _heavy = HEAVY.lock().await;
    let started = Instant::now();
    let mut fleet = Fleet::start(RedisServer::start(), 3, "fleet-three");
    let forms: Vec<bool> = fleet.servers.iter().map(|s| s.log().contains("REDIS_EVENT_FORMAT=fields")).collect();
    assert_eq!(forms, [false, true, false], "server 1 alone writes the older form, and says so at start-up");
    let (events, reader) = EventLog::follow(fleet.run.clone(), 0).await;
    let (other_events, other_reader) = EventLog::follow(fleet.run.clone(), 2).await;
    let agents = fleet.spawn_agents(agents(24, 3));
    submit_all(fleet.run.clone(), TOTAL, 500, 3).await;
    let report = fleet.finish(TOTAL, &events, agents, 0).await;
    reader.abort();
    assert_eq!(report.servers.len(), 3, "server 0's event stream carries every server's events");
    wait_for("server 2's stream to catch up", Duration::from_secs(60), || {
        other_events.completed.load(Ordering::SeqCst) >= TOTAL
    })
    .await;
    other_reader.abort();
    let ids = |log: &EventLog| log.snapshot().into_iter().map(|e| e.id).collect::<Vec<_>>();
    let (here, there) = (ids(&events), ids(&other_events));
    // Each reader stopped at its own moment after the last completion (agents leaving still emit events then), so
    // the two logs are compared over the length both read, which holds every completion.
    let both = here.len().min(there.len());
    assert!(
        here[..both] == there[..both],
        "servers 0 and 2 streamed different events (first {both} of {} and {})",
        here.len(),
        there.len()
    );
    eprintln!("three servers: {}", fleet.summary(&report, started));
}
