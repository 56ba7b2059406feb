//! Fleets on a real Redis: several `aragora-cp serve` processes (this package's binary) share one `redis-server`
//! that the test starts, and tokio tasks of the test act as agents and submitters over real HTTP. The oracles are
//! DESIGN §9's for multi-server runs: every acknowledged task ends completed exactly once (every completion any
//! server accepted is recorded), and the event stream read from one server — which must carry every server's
//! events — shows no two valid leases of a task at once and every re-claim preceded by a revoke or requeue.
//!
//! - `three_servers`: three servers, one Redis, 20,000 tasks.
//! - `server_death`: the same, with one server killed with SIGKILL mid-run; its agents fail over.
//! - `redis_outage`: Redis crashes for 5 s mid-run and comes back from its append-only file.
//! - `chaos`: Redis paused, connections cut, servers killed and restarted, at random points of a run.
//! - `library_loss`: Redis loses the function library (as after a failover) several times mid-run.
//! - `soak`: the short run of `bench soak` (churn, strategy swaps, a Redis restart).
//! - `deliberation`: an orchestrated deliberation finished by another server after its driver is killed.
//! - `startup`: how `serve` refuses to start (unreachable Redis, no JWT secret) and warns (eviction policy).
//!
//! The heavy runs take a process-wide lock so they never share the two cores with each other.

mod chaos;
mod deliberation;
mod harness;
mod library_loss;
mod oracle;
mod proxy;
mod redis_outage;
// The end-to-end crate's `redis-server` spawner, compiled into this test binary from its one source file: a
// dependency on that crate would make a cycle (it depends on this package).
#[path = "../../../tests/src/redis_server.rs"]
#[allow(
    dead_code,
    unreachable_pub,
    reason = "the fleet tests use part of the spawner (no cluster), and it is public in its own crate"
)]
mod redis_server;
mod server_death;
mod soak;
mod startup;
mod three_servers;
