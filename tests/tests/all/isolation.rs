//! Misbehaving plugins are stopped or rejected with a clear error, and the host keeps serving.
//! The fixtures under `plugins/testing/` behave during the load-time trial call and misbehave only for tasks of
//! type `misbehave`, so these tests reach the call-time limits, not just load-time validation.

use std::time::Duration;

use aragora_cp::plugins::strategy::Answerer;
use aragora_cp::plugins::{
    CallError, CallLimits, LoadError, Manifest, PluginKind, PluginRuntime, PluginSource, PluginVersion, RuntimeOptions,
    loader,
};
use aragora_cp_tests::{candidate, ctx, details, guest_bytes, registry, runtime, task, test_limits};

fn fixture(name: &str) -> PluginVersion {
    fixture_with(name, Manifest::default())
}

fn fixture_with(name: &str, manifest: Manifest) -> PluginVersion {
    loader::load(&runtime(), name, PluginSource::File, &guest_bytes(name), manifest).expect("fixture loads")
}

fn three() -> Vec<aragora_cp::plugins::bindings::Candidate> {
    vec![candidate(2, 0, None), candidate(0, 0, None), candidate(1, 0, None)]
}

/// After a failed call, the same version answers the next ordinary call, on a fresh instance: the failed one
/// was not put back in the pool.
fn still_serves(plugin: &PluginVersion) {
    let (index, report) = plugin.select_reporting(ctx(1), &task("code"), &three(), &[]).expect("serves again");
    assert_eq!(index, 0, "{} answers", plugin.name);
    assert!(report.fresh_instance, "{}: the instance of the failed call must not be reused", plugin.name);
}

#[test]
fn an_endless_loop_runs_out_of_fuel() {
    let plugin = fixture("spin_forever");
    let outcome = plugin.select(ctx(1), &task("misbehave"), &three(), &[]);
    assert_eq!(outcome, Err(CallError::OutOfFuel { fuel: CallLimits::default_for(PluginKind::Strategy).fuel }));
    still_serves(&plugin);
    assert_eq!(plugin.stats.snapshot().failures, 1);
}

/// The endless loop with fuel practically unlimited (on a runtime of its own whose maxima allow it) and a 5 ms
/// deadline, so only the wall-clock deadline can stop it, however long the test machine keeps the epoch ticker
/// waiting.
fn spin_with_ample_fuel() -> (PluginRuntime, PluginVersion) {
    let maxima = CallLimits { fuel: u64::MAX / 2, ..CallLimits::server_maxima() };
    let runtime = PluginRuntime::new(RuntimeOptions {
        maxima,
        default_limits: test_limits,
        warm_instances: 1,
        ..RuntimeOptions::default()
    })
    .unwrap();
    let manifest = Manifest::parse("[limits]\nfuel = 1000000000000\ndeadline_ms = 5\n").unwrap();
    let plugin = loader::load(&runtime, "spin", PluginSource::File, &guest_bytes("spin_forever"), manifest).unwrap();
    (runtime, plugin)
}

#[test]
fn an_endless_loop_with_ample_fuel_hits_the_deadline() {
    let (_runtime, plugin) = spin_with_ample_fuel();
    assert_eq!(plugin.limits.deadline, Duration::from_millis(5));
    let outcome = plugin.select(ctx(1), &task("misbehave"), &three(), &[]);
    assert_eq!(outcome, Err(CallError::Deadline { deadline: Duration::from_millis(5) }));
    still_serves(&plugin);
}

/// The epoch ticker rests when no call needs it (an idle server would otherwise wake a thousand times a second),
/// and a call made while it rests still meets its deadline: arming the call wakes it.
#[test]
fn an_endless_loop_called_while_the_epoch_ticker_rests_still_hits_the_deadline() {
    let (runtime, plugin) = spin_with_ample_fuel();
    let resting_by = std::time::Instant::now() + Duration::from_secs(30);
    while runtime.epoch_ticking() {
        assert!(std::time::Instant::now() < resting_by, "the epoch ticker never rests");
        std::thread::sleep(Duration::from_millis(50));
    }
    let outcome = plugin.select(ctx(1), &task("misbehave"), &three(), &[]);
    assert_eq!(outcome, Err(CallError::Deadline { deadline: Duration::from_millis(5) }));
    assert!(runtime.epoch_ticking(), "a call wakes the ticker for its deadline and a while after");
    still_serves(&plugin);
}

#[test]
fn a_trap_is_reported_and_the_instance_replaced() {
    let plugin = fixture("trap");
    match plugin.select(ctx(1), &task("misbehave"), &three(), &[]) {
        Err(CallError::Trap(message)) => assert!(!message.is_empty()),
        other => panic!("expected a trap, got {other:?}"),
    }
    still_serves(&plugin);
}

#[test]
fn growing_memory_without_end_hits_the_memory_cap() {
    // Enough fuel and time that memory is the limit that stops it.
    let manifest = Manifest::parse("[limits]\nfuel = 100000000\ndeadline_ms = 2000\n").unwrap();
    let plugin = fixture_with("memory_hog", manifest);
    let outcome = plugin.select(ctx(1), &task("misbehave"), &three(), &[]);
    assert_eq!(outcome, Err(CallError::Memory { limit_bytes: 16 * 1024 * 1024 }));
    still_serves(&plugin);
}

#[test]
fn a_plugin_importing_an_interface_outside_the_allowlist_is_rejected_naming_it() {
    let error =
        loader::load(&runtime(), "kv", PluginSource::File, &guest_bytes("forbidden_import"), Manifest::default())
            .expect_err("must be rejected");
    match &error {
        LoadError::ForbiddenImport(interface) => assert!(interface.starts_with("wasi:keyvalue/"), "{interface}"),
        other => panic!("expected a forbidden import, got {other:?}"),
    }
    assert!(error.to_string().contains("wasi:keyvalue"));
}

#[test]
fn a_plugin_reading_a_file_finds_no_file_to_read() {
    // It imports wasi:filesystem (as interpreters always do), linked with no directory preopened.
    let plugin = fixture("file_reader");
    assert!(plugin.imports.iter().any(|i| i.starts_with("wasi:filesystem/")), "{:?}", plugin.imports);
    match plugin.select(ctx(1), &task("code"), &three(), &[]) {
        Err(CallError::Guest(message)) => assert!(message.starts_with("cannot read /etc/passwd"), "{message}"),
        other => panic!("the read must fail, got {other:?}"),
    }
}

#[test]
fn a_plugin_whose_init_fails_is_rejected_with_its_message() {
    let error = loader::load(&runtime(), "b", PluginSource::File, &guest_bytes("bad_init"), Manifest::default())
        .expect_err("must be rejected");
    assert_eq!(error, LoadError::Init("bad_init refuses to start".into()));
}

#[test]
fn bytes_that_are_not_a_component_are_rejected_clearly() {
    let runtime = runtime();
    let garbage = loader::load(&runtime, "g", PluginSource::File, b"definitely not wasm", Manifest::default());
    assert!(matches!(garbage, Err(LoadError::NotAComponent(_))), "{garbage:?}");
    let core_module = b"\0asm\x01\0\0\0";
    let module = loader::load(&runtime, "m", PluginSource::File, core_module, Manifest::default());
    match module {
        Err(LoadError::NotAComponent(message)) => assert!(message.contains("core WebAssembly module"), "{message}"),
        other => panic!("expected a clear rejection, got {other:?}"),
    }
    let truncated = &guest_bytes("least_loaded")[..1000];
    assert!(loader::load(&runtime, "t", PluginSource::File, truncated, Manifest::default()).is_err());
}

#[test]
fn a_manifest_declaring_another_kind_is_rejected() {
    let manifest = Manifest::parse("kind = \"policy\"").unwrap();
    let error = loader::load(&runtime(), "x", PluginSource::File, &guest_bytes("highest_index"), manifest).unwrap_err();
    assert_eq!(error, LoadError::KindMismatch { declared: PluginKind::Policy, actual: PluginKind::Strategy });
}

#[test]
fn manifest_limits_are_capped_by_the_server_maxima() {
    let manifest = Manifest::parse("[limits]\nfuel = 999999999999\nmemory_mib = 4096\n").unwrap();
    let plugin = fixture_with("highest_index", manifest);
    assert_eq!(plugin.limits.fuel, CallLimits::server_maxima().fuel);
    assert_eq!(plugin.limits.memory_bytes, CallLimits::server_maxima().memory_bytes);
}

#[test]
fn a_failing_strategy_falls_back_to_the_embedded_least_loaded_and_counts_it() {
    let registry = registry();
    registry.install("trap", PluginSource::File, &guest_bytes("trap"), Manifest::default()).unwrap();
    let set = three();
    let selection = registry.select("trap", ctx(1), &task("misbehave"), &set, &details(3)).unwrap();
    assert_eq!(selection.answered_by, Answerer::EmbeddedLeastLoaded);
    assert_eq!(selection.index, 1, "least_loaded picks the candidate with nothing in flight");
    assert!(selection.fallback_reason.unwrap().contains("trapped"));
    let stats = registry.active("trap").unwrap().stats.snapshot();
    assert_eq!((stats.calls, stats.failures, stats.fallbacks), (1, 1, 1));
    assert!(stats.last_error.is_some());
    // The host kept serving: the same strategy answers the next ordinary task itself.
    let next = registry.select("trap", ctx(2), &task("code"), &set, &[]).unwrap();
    assert_eq!((next.answered_by, next.index), (Answerer::Plugin, 0));
}

#[test]
fn plugin_output_becomes_its_log() {
    let plugin = fixture("chatty");
    let (index, report) = plugin.select_reporting(ctx(1), &task("code"), &three(), &details(3)).unwrap();
    assert_eq!(index, 0);
    assert!(report.log.contains("chatty"), "log was {:?}", report.log);
    assert!(report.fuel_used > 0);
    assert!(report.peak_memory_bytes > 0);
    // The log belongs to its call: the next call starts with an empty one (then fills it again).
    let (_, again) = plugin.select_reporting(ctx(2), &task("code"), &three(), &[]).unwrap();
    assert_eq!(again.log.matches("chatty").count(), report.log.matches("chatty").count());
}

#[test]
fn guest_clocks_read_the_call_time() {
    let plugin = fixture("clock_reader");
    for now_ms in [1_700_000_000_000, 1_800_000_000_123] {
        let context = aragora_cp::plugins::bindings::CallContext { now_ms, seed: 1 };
        let outcome = plugin.select(context, &task("read-clock"), &three(), &[]);
        assert_eq!(outcome, Err(CallError::Guest(format!("now_ms={now_ms}"))));
    }
}

#[test]
fn a_plugin_that_sleeps_does_not_hold_its_caller() {
    // The fixture sleeps an hour; clock subscriptions in the sandbox are ready at once, so it answers now.
    let plugin = fixture("sleeper");
    let started = std::time::Instant::now();
    assert_eq!(plugin.select(ctx(1), &task("code"), &three(), &[]), Ok(2));
    assert!(started.elapsed() < Duration::from_secs(60), "the sleep was not cut short");
}

#[test]
fn a_strategy_answering_an_out_of_range_index_fails_and_its_instance_is_dropped() {
    let plugin = fixture("highest_index");
    let outcome = plugin.select(ctx(1), &task("misbehave"), &three(), &[]);
    assert_eq!(outcome, Err(CallError::BadIndex { index: 3, candidates: 3 }));
    let (index, report) = plugin.select_reporting(ctx(1), &task("code"), &three(), &[]).unwrap();
    assert_eq!(index, 2);
    assert!(report.fresh_instance, "an instance that answered nonsense is not reused");
}

#[test]
fn a_name_keeps_its_kind_across_sources() {
    let registry = registry();
    let error = registry
        .install("least_loaded", PluginSource::File, &guest_bytes("payload_size_policy"), Manifest::default())
        .expect_err("a policy must not shadow the built-in strategy");
    assert!(matches!(error, LoadError::KindConflict { .. }), "{error:?}");
    assert_eq!(registry.active("least_loaded").unwrap().source, PluginSource::Builtin);
    assert!(registry.policies().is_empty());
}

#[test]
fn a_manifest_with_an_absurd_deadline_is_refused_not_a_panic() {
    assert!(Manifest::parse("[limits]\ndeadline_ms = 1e300\n").is_err());
    assert!(Manifest::parse("[limits]\ndeadline_ms = -1\n").is_err());
    assert!(Manifest::parse("unknown_key = 1\n").is_err());
}
