//! The built-in strategies, run as the embedded components, on hand-made candidate sets.

use aragora_cp::plugins::builtin::builtin_bytes;
use aragora_cp::plugins::strategy::Answerer;
use aragora_cp::plugins::{CallError, Manifest, PluginSource, PluginVersion, loader};
use aragora_cp_tests::{candidate, ctx, details, registry, runtime, task};

fn builtin(name: &str) -> PluginVersion {
    let bytes = builtin_bytes(name).expect("built in");
    loader::load(&runtime(), name, PluginSource::Builtin, bytes, Manifest::default()).expect("loads")
}

#[test]
fn least_loaded_picks_the_fewest_in_flight() {
    let plugin = builtin("least_loaded");
    let set = [candidate(3, 0, None), candidate(1, 50, None), candidate(2, 0, None)];
    assert_eq!(plugin.select(ctx(1), &task("code"), &set, &details(3)), Ok(1));
}

#[test]
fn least_loaded_breaks_ties_by_fewest_completed_then_lowest_index() {
    let plugin = builtin("least_loaded");
    let by_completed = [candidate(1, 9, None), candidate(1, 4, None), candidate(1, 7, None), candidate(2, 0, None)];
    assert_eq!(plugin.select(ctx(1), &task("code"), &by_completed, &[]), Ok(1));
    let full_tie = [candidate(2, 5, None), candidate(1, 5, None), candidate(1, 5, None)];
    assert_eq!(plugin.select(ctx(1), &task("code"), &full_tie, &[]), Ok(1));
}

#[test]
fn round_robin_picks_the_longest_since_last_assignment() {
    let plugin = builtin("round_robin");
    let set = [candidate(0, 0, Some(100)), candidate(5, 0, Some(9_000)), candidate(0, 0, Some(300))];
    assert_eq!(plugin.select(ctx(1), &task("code"), &set, &[]), Ok(1));
}

#[test]
fn round_robin_prefers_never_assigned_agents_and_breaks_ties_by_index() {
    let plugin = builtin("round_robin");
    let never = [candidate(0, 0, Some(u64::MAX - 1)), candidate(0, 0, None), candidate(0, 0, None)];
    assert_eq!(plugin.select(ctx(1), &task("code"), &never, &[]), Ok(1));
    let tie = [candidate(0, 0, Some(10)), candidate(0, 0, Some(700)), candidate(0, 0, Some(700))];
    assert_eq!(plugin.select(ctx(1), &task("code"), &tie, &[]), Ok(1));
}

#[test]
fn random_is_reproducible_for_a_seed() {
    let plugin = builtin("random");
    let set: Vec<_> = (0..7).map(|_| candidate(0, 0, None)).collect();
    for seed in [0, 1, 42, u64::MAX] {
        let first = plugin.select(ctx(seed), &task("code"), &set, &[]).expect("answers");
        for _ in 0..5 {
            assert_eq!(plugin.select(ctx(seed), &task("code"), &set, &[]), Ok(first), "seed {seed}");
        }
    }
}

#[test]
fn random_spreads_uniformly_over_seeds() {
    let plugin = builtin("random");
    let set: Vec<_> = (0..4).map(|_| candidate(0, 0, None)).collect();
    let mut counts = [0u32; 4];
    for seed in 0..4000 {
        counts[plugin.select(ctx(seed), &task("code"), &set, &[]).expect("answers")] += 1;
    }
    // Expected 1000 each; a fair draw lands within ±15% with overwhelming probability for these fixed seeds.
    for (index, count) in counts.iter().enumerate() {
        assert!((850..=1150).contains(count), "candidate {index} chosen {count} times of 4000: {counts:?}");
    }
}

#[test]
fn every_builtin_declines_an_empty_candidate_list() {
    for name in ["least_loaded", "round_robin", "random"] {
        let plugin = builtin(name);
        let outcome = plugin.select(ctx(1), &task("code"), &[], &[]);
        assert!(matches!(outcome, Err(CallError::Guest(_))), "{name}: {outcome:?}");
    }
}

#[test]
fn a_single_candidate_is_chosen_without_a_call() {
    let registry = registry();
    let selection =
        registry.select("round_robin", ctx(1), &task("code"), &[candidate(9, 9, Some(1))], &details(1)).unwrap();
    assert_eq!((selection.index, selection.answered_by), (0, Answerer::Plugin));
    let calls = registry.active("round_robin").unwrap().stats.snapshot().calls;
    // The validation call at load is not counted, and the single candidate never reached the plugin.
    assert_eq!(calls, 0);
}

#[test]
fn an_unknown_strategy_is_an_error_not_a_fallback() {
    let registry = registry();
    let outcome = registry.select("no_such_strategy", ctx(1), &task("code"), &[candidate(0, 0, None)], &[]);
    assert!(outcome.is_err());
}
