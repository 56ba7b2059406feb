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

/// The prelude as this build runs it: without the test clock's lines unless the `test-clock` feature is on, so a
/// production script never reads the test key (one less read per transition, and no way to move a server's clock
/// by writing a key).
fn prelude() -> String {
    if cfg!(feature = "test-clock") { LIB.to_string() } else { without_test_clock(LIB) }
}

/// `lib` without the lines between the `test-clock:begin` and `test-clock:end` markers.
fn without_test_clock(lib: &str) -> String {
    let mut kept = String::with_capacity(lib.len());
    let mut skipping = false;
    for line in lib.lines() {
        match line.trim() {
            "-- test-clock:begin" => skipping = true,
            "-- test-clock:end" => skipping = false,
            _ if !skipping => {
                kept.push_str(line);
                kept.push('\n');
            }
            _ => {}
        }
    }
    kept
}

macro_rules! scripts {
    ($($(#[$attr:meta])* $name:ident: $kind:ident),* $(,)?) => {
        /// Every script, compiled once per store.
        pub(super) struct Scripts {
            $($(#[$attr])* pub(super) $name: Script,)*
        }

        impl Scripts {
            /// Whether `script` may write (`REDIS_WAIT_REPLICAS` waits after those only).
            pub(super) fn is_write(&self, script: &Script) -> bool {
                let hash = script.get_hash();
                let writes = false;
                $($(#[$attr])* let writes = writes || ($kind == WRITES && hash == self.$name.get_hash());)*
                writes
            }

            pub(super) fn new() -> Self {
                let lib = prelude();
                Scripts {
                    $($(#[$attr])* $name: Script::new(&format!(
                        "{}\n{lib}\n{}",
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
    audit_append: WRITES,
    audit_read: READS,
    audit_trim: WRITES,
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
    notify_change: WRITES,
    notify_read: READS,
    now: READS,
    offer: WRITES,
    peek: WRITES,
    peek_signature: READS,
    plugin_change: WRITES,
    plugin_read: READS,
    progress: WRITES,
    prioritize: WRITES,
    promote_due: WRITES,
    queue_figures: READS,
    read_agents: READS,
    schedule_change: WRITES,
    schedule_read: READS,
    read_candidates: WRITES,
    record_event: WRITES,
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
    #[cfg(feature = "test-clock")]
    test_clock: WRITES,
    unregister: WRITES,
    update_violation: WRITES,
    violations: READS,
    withdraw_waiter: WRITES,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_production_prelude_never_reads_the_test_clock() {
        let production = without_test_clock(LIB);
        assert!(LIB.contains("HMGET', K.test_clock"), "the full prelude has the hook this test is about");
        assert!(!production.contains("HMGET', K.test_clock"), "the hook is gone");
        assert!(production.contains("local NOW, PINNED = clock()"), "the clock itself stays");
        assert_eq!(LIB.lines().count() - production.lines().count(), 5, "the hook's three lines and two markers");
    }
}
