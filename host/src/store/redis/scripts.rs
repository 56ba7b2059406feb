//! The Lua scripts, one per transition (or consistent read), each the shared prelude `scripts/lib.lua` followed by
//! its body `scripts/<name>.lua`. They run by SHA (EVALSHA; the crate loads a script on `NOSCRIPT`), so a restarted
//! or failed-over Redis just loads them again.
//!
//! Each starts with a Redis 7 shebang: a transition (`#!lua`) is refused whole while Redis is out of memory instead
//! of failing at some write halfway through, and a read (`#!lua flags=no-writes`) may run on a replica or while
//! Redis refuses writes.

use redis::Script;

const LIB: &str = include_str!("scripts/lib.lua");

/// A transition: may write, so Redis checks memory before it starts.
const WRITES: &str = "#!lua";

/// A consistent read: declared read-only.
const READS: &str = "#!lua flags=no-writes";

macro_rules! scripts {
    ($($name:ident: $kind:ident),* $(,)?) => {
        /// Every script, compiled once per store.
        pub(super) struct Scripts {
            $(pub(super) $name: Script,)*
        }

        impl Scripts {
            /// Whether `script` may write (`REDIS_WAIT_REPLICAS` waits after those only).
            pub(super) fn is_write(&self, script: &Script) -> bool {
                $(if $kind == WRITES && script.get_hash() == self.$name.get_hash() {
                    return true;
                })*
                false
            }

            pub(super) fn new() -> Self {
                Scripts {
                    $($name: Script::new(&format!(
                        "{}\n{LIB}\n{}",
                        $kind,
                        include_str!(concat!("scripts/", stringify!($name), ".lua"))
                    )),)*
                }
            }
        }
    };
}

scripts!(
    assign: WRITES,
    cancel: WRITES,
    claim: WRITES,
    claim_if: WRITES,
    complete: WRITES,
    complete_and_claim: WRITES,
    events_after: READS,
    fail: WRITES,
    health: WRITES,
    heartbeat: WRITES,
    housekeeping: WRITES,
    idempotent_task: READS,
    keep_alive: WRITES,
    list_tasks: READS,
    mark_assigned: WRITES,
    next_deadline: READS,
    now: READS,
    offer: WRITES,
    peek: WRITES,
    plugin_change: WRITES,
    plugin_read: READS,
    progress: WRITES,
    promote_due: WRITES,
    read_agents: READS,
    read_candidates: WRITES,
    record_health: WRITES,
    record_violations: WRITES,
    register: WRITES,
    register_waiter: WRITES,
    release: WRITES,
    retry: WRITES,
    server_alive: WRITES,
    set_paused: WRITES,
    start: WRITES,
    stats: READS,
    submit: WRITES,
    sweep_offline: WRITES,
    sweep_timeouts: WRITES,
    test_clock: WRITES,
    unregister: WRITES,
    violations: READS,
    withdraw_waiter: WRITES,
);
