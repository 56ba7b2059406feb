//! The Lua scripts, one per transition (or consistent read), each the shared prelude `scripts/lib.lua` followed by
//! its body `scripts/<name>.lua`. They run by SHA (EVALSHA; the crate loads a script on `NOSCRIPT`), so a restarted
//! or failed-over Redis just loads them again.

use redis::Script;

const LIB: &str = include_str!("scripts/lib.lua");

macro_rules! scripts {
    ($($name:ident),* $(,)?) => {
        /// Every script, compiled once per store.
        pub(super) struct Scripts {
            $(pub(super) $name: Script,)*
        }

        impl Scripts {
            pub(super) fn new() -> Self {
                Scripts {
                    $($name: Script::new(&format!(
                        "{LIB}\n{}",
                        include_str!(concat!("scripts/", stringify!($name), ".lua"))
                    )),)*
                }
            }
        }
    };
}

scripts!(
    assign,
    cancel,
    claim,
    claim_if,
    complete,
    complete_and_claim,
    events_after,
    fail,
    health,
    heartbeat,
    housekeeping,
    idempotent_task,
    keep_alive,
    list_tasks,
    mark_assigned,
    next_deadline,
    now,
    peek,
    progress,
    read_agents,
    record_health,
    register,
    register_waiter,
    release,
    retry,
    set_paused,
    start,
    stats,
    submit,
    sweep_offline,
    sweep_timeouts,
    test_clock,
    unregister,
    waiters_for,
    withdraw_waiter,
);
