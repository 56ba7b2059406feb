//! Chaos: three servers on one Redis, with a proxy in front of each server and one between the servers and Redis,
//! while a seeded schedule breaks things at random points of a run: Redis paused (`DEBUG SLEEP`, longer than
//! `STORE_TIMEOUT` at times), every server↔Redis connection cut at once (scripts in flight, replies on their way,
//! the event readers' blocking reads), every client connection of one server cut, and one server killed with
//! SIGKILL and started again on a new port behind its proxy. Agents and submitters keep going through it all,
//! retrying what the harness's clients retry (a submit with its idempotency key, a complete with its lease). The
//! oracles are the fleet's: every acknowledged task completed exactly once, under one lease, the event stream
//! never showing two valid leases of a task, no 5xx but proper 503s, no panic in any server's log.
//!
//! `CHAOS_SEED=N` repeats a run's schedule (each run prints its seed); `CHAOS_TASKS=N` makes it longer.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::redis_server::RedisServer;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::harness::{Fleet, HEAVY, agents, submit_all, wait_for};
use crate::oracle::EventLog;
use crate::proxy::{ChaosProxy, socket_of};

/// Tasks of the CI run (`CHAOS_TASKS` overrides).
const TASKS: usize = 15_000;
/// Servers of the fleet.
const SERVERS: usize = 3;

/// The faults the schedule draws from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Fault {
    /// `DEBUG SLEEP` on Redis: every store call stalls, some past `STORE_TIMEOUT`.
    PauseRedis,
    /// Every connection between the servers and Redis closed at once.
    CutRedisConnections,
    /// Every client connection of one server closed at once.
    CutClientConnections,
    /// One server killed with SIGKILL, then started again.
    KillServer,
}

const FAULTS: [Fault; 4] =
    [Fault::PauseRedis, Fault::CutRedisConnections, Fault::CutClientConnections, Fault::KillServer];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_random_faults_every_task_is_completed_exactly_once() {
    let _heavy = HEAVY.lock().await;
    let started = Instant::now();
    let seed: u64 = std::env::var("CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    let total: usize = std::env::var("CHAOS_TASKS").ok().and_then(|s| s.parse().ok()).unwrap_or(TASKS);
    eprintln!("chaos: seed {seed} (CHAOS_SEED={seed} repeats this schedule), {total} tasks");
    let mut rng = StdRng::seed_from_u64(seed);

    let redis = RedisServer::start_with(&["--enable-debug-command", "local"]);
    let to_redis = ChaosProxy::start(([127, 0, 0, 1], redis.port).into());
    let redis_url = format!("redis://{}", to_redis.addr);
    let mut fronts: Vec<ChaosProxy> = Vec::new();
    let mut fleet = Fleet::start_via(redis, &redis_url, SERVERS, "fleet-chaos", |servers| {
        fronts = servers.iter().map(|s| ChaosProxy::start(socket_of(&s.base))).collect();
        fronts.iter().map(ChaosProxy::url).collect()
    });
    let run = fleet.run.clone();
    let (events, reader) = EventLog::follow(run.clone(), 0).await;
    let agents = fleet.spawn_agents(agents(18, SERVERS));
    let submitting = tokio::spawn(submit_all(run.clone(), total, 25, 3));

    // Every kind of fault once, in a random order, then random ones until nine tenths of the work is done.
    let mut schedule: Vec<Fault> = FAULTS.to_vec();
    for i in (1..schedule.len()).rev() {
        schedule.swap(i, rng.random_range(0..=i));
    }
    let mut done: Vec<(f64, Fault, String)> = Vec::new();
    let mut pauses = Vec::new();
    let mut step = 0;
    while step < schedule.len() || run.ledger.completed.load(Ordering::SeqCst) < total * 9 / 10 {
        assert!(started.elapsed() < Duration::from_secs(600), "the chaos run made no progress: {done:?}");
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..1000))).await;
        let fault = schedule.get(step).copied().unwrap_or_else(|| FAULTS[rng.random_range(0..FAULTS.len())]);
        step += 1;
        let detail = match fault {
            Fault::PauseRedis => {
                let seconds = rng.random_range(1.0..3.5f64);
                let direct = fleet.redis.url();
                // Not awaited: other faults may strike while Redis sleeps.
                pauses.push(tokio::task::spawn_blocking(move || {
                    let mut connection = redis::Client::open(direct).and_then(|c| c.get_connection()).expect("Redis");
                    redis::cmd("DEBUG").arg("SLEEP").arg(seconds).query::<()>(&mut connection).expect("DEBUG SLEEP");
                }));
                format!("{seconds:.2} s")
            }
            Fault::CutRedisConnections => {
                to_redis.cut();
                String::new()
            }
            Fault::CutClientConnections => {
                let server = rng.random_range(0..SERVERS);
                fronts[server].cut();
                format!("server {server}")
            }
            Fault::KillServer => {
                let server = rng.random_range(0..SERVERS);
                fleet.servers[server].kill9();
                let down = Duration::from_millis(rng.random_range(100..2000));
                tokio::time::sleep(down).await;
                let base = tokio::task::block_in_place(|| fleet.restart(server, &redis_url));
                fronts[server].redirect(socket_of(&base));
                format!("server {server}, down {} ms", down.as_millis())
            }
        };
        let at = started.elapsed().as_secs_f64();
        eprintln!("chaos: {at:.1} s {fault:?} {detail} ({} completed)", run.ledger.completed.load(Ordering::SeqCst));
        done.push((at, fault, detail));
    }
    for pause in pauses {
        pause.await.expect("DEBUG SLEEP ran");
    }

    submitting.await.expect("submitters");
    wait_for("every task completed after the faults", Duration::from_secs(300), || {
        events.completed.load(Ordering::SeqCst) >= total
    })
    .await;
    let report = fleet.finish(total, &events, agents, 0).await;
    reader.abort();
    for fault in FAULTS {
        assert!(done.iter().any(|(_, f, _)| *f == fault), "{fault:?} never struck: {done:?}");
    }
    assert!(run.ledger.failovers.load(Ordering::SeqCst) > 0, "clients saw connections fail");
    eprintln!("chaos: seed {seed}, {} faults; {}", done.len(), fleet.summary(&report, started));
}
