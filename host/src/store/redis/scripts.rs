//! The Lua scripts, one per transition (or consistent read): the shared prelude `scripts/lib.lua` and one body
//! `scripts/<name>.lua` each. On Redis 7 they are one function library (`aragora_cp_<version>`, every body a function
//! `aragora_cp_<version>_<name>`) loaded once with `FUNCTION LOAD` and called with `FCALL`, so a call does not pay
//! for building the prelude's ~80 functions again; the version is a hash of the text, so servers of different
//! builds can share a Redis. A Redis that lost the library (restarted without persistence, a failed-over replica)
//! gets it again on the first call that misses it. Where functions are not available (Redis 6, a cluster, whose
//! nodes each need the library) each body runs after the prelude by EVALSHA, which loads a script on `NOSCRIPT`.
//!
//! A transition may write, so Redis checks memory before it starts (`#!lua`; a function without flags) and refuses
//! it whole while out of memory instead of failing at some write halfway through; a read is declared read-only
//! (`#!lua flags=no-writes`; the `no-writes` flag) and may run on a replica or while Redis refuses writes.

use std::collections::HashMap;

use redis::Script;
use sha2::{Digest, Sha256};

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

/// A body as an EVAL script: the shebang, the call's keys and arguments kept before the prelude declares its own,
/// the prelude, the call started, the body.
fn eval_text(kind: &str, lib: &str, body: &str) -> String {
    format!("{kind}\nlocal CALL_KEYS, CALL_ARGV = KEYS, ARGV\n{lib}\nbegin(CALL_KEYS, CALL_ARGV)\n{body}")
}

/// The function library: the prelude once, then each body as a registered function.
pub(super) struct Library {
    /// `aragora_cp_<first 16 hex digits of the text's SHA-256>`.
    pub(super) name: String,
    /// The `FUNCTION LOAD` text.
    pub(super) text: String,
    /// Function name by the EVAL script's hash.
    functions: HashMap<String, String>,
}

impl Library {
    fn build(
        lib: &str,
        bodies: &[(&'static str, &'static str, &'static str)],
    ) -> (Library, HashMap<&'static str, Script>) {
        let mut hasher = Sha256::new();
        hasher.update(lib.as_bytes());
        for (name, kind, body) in bodies {
            hasher.update(format!("{name}\n{kind}\n{body}").as_bytes());
        }
        let digest = hasher.finalize();
        let version: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        let name = format!("aragora_cp_{version}");
        let mut text = format!("#!lua name={name}\n{lib}\n");
        let mut functions = HashMap::new();
        let mut scripts = HashMap::new();
        for (script_name, kind, body) in bodies {
            let function = format!("{name}_{script_name}");
            let flags = if *kind == READS { "'no-writes'" } else { "" };
            text.push_str(&format!(
                "redis.register_function{{function_name = '{function}', flags = {{ {flags} }}, callback = function(keys, args)\n\
                 begin(keys, args)\n{body}\nend}}\n"
            ));
            let script = Script::new(&eval_text(kind, lib, body));
            functions.insert(script.get_hash().to_string(), function);
            scripts.insert(*script_name, script);
        }
        (Library { name, text, functions }, scripts)
    }

    /// The function that runs `script`'s body.
    pub(super) fn function_of(&self, script: &Script) -> Option<&str> {
        self.functions.get(script.get_hash()).map(String::as_str)
    }
}

macro_rules! scripts {
    ($($(#[$attr:meta])* $name:ident: $kind:ident),* $(,)?) => {
        /// Every script, compiled once per store, and the library that holds them all.
        pub(super) struct Scripts {
            $($(#[$attr])* pub(super) $name: Script,)*
            pub(super) library: Library,
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
                let bodies: Vec<(&'static str, &'static str, &'static str)> = vec![
                    $($(#[$attr])* (
                        stringify!($name),
                        $kind,
                        include_str!(concat!("scripts/", stringify!($name), ".lua")),
                    ),)*
                ];
                let (library, mut scripts) = Library::build(&lib, &bodies);
                Scripts {
                    $($(#[$attr])* $name: scripts.remove(stringify!($name)).expect("every body was built"),)*
                    library,
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
    decisions_append: WRITES,
    decisions_read: READS,
    decisions_trim: WRITES,
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
        assert!(production.contains("NOW, PINNED = clock()"), "the clock itself stays");
        assert_eq!(LIB.lines().count() - production.lines().count(), 5, "the hook's three lines and two markers");
    }

    /// The prelude reads its own arguments after `ARG_BASE` configuration values: one more or fewer from the host
    /// would shift every script's arguments.
    #[test]
    fn the_host_passes_as_many_configuration_values_as_the_prelude_reads() {
        let base: usize = LIB
            .lines()
            .find_map(|line| line.strip_prefix("local ARG_BASE = "))
            .and_then(|n| n.trim().parse().ok())
            .expect("lib.lua sets ARG_BASE");
        let args = super::super::config_args(&crate::store::StoreConfig::default());
        assert_eq!(args.len(), base);
        let joined = args.last().expect("the configuration values");
        assert_eq!(joined.split('|').count(), 13, "the thirteen values `config` in lib.lua reads");
        assert!(joined.ends_with("|compact"), "the last one is REDIS_EVENT_FORMAT");
    }
}
