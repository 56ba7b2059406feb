//! The example policy and probe plugins, loaded with the manifests shipped beside their crates.

use aragora_cp::plugins::bindings::{
    AgentInfo, Decision, DispatchRequest, HealthStatus, HttpCheck, Modification, Observations, PolicyInput,
    SubmitRequest,
};
use aragora_cp::plugins::{Manifest, PluginKind, PluginSource, PluginVersion, loader};
use aragora_cp_tests::{ctx, example_manifest, guest_bytes, runtime, task};

fn example(name: &str, manifest: Manifest) -> PluginVersion {
    loader::load(&runtime(), name, PluginSource::File, &guest_bytes(name), manifest).expect("example loads")
}

fn submit(payload_bytes: u32, labels: &[(&str, &str)]) -> PolicyInput {
    let mut task = task("code");
    task.labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    PolicyInput::Submit(SubmitRequest { task, payload_bytes, payload: None })
}

fn agent(region: Option<&str>, capabilities: &[&str]) -> AgentInfo {
    AgentInfo {
        agent_id: "agent-1".into(),
        model: "claude-sonnet-4".into(),
        provider: "anthropic".into(),
        capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
        labels: region.map(|r| vec![("region".to_string(), r.to_string())]).unwrap_or_default(),
    }
}

#[test]
fn payload_size_policy_denies_payloads_over_its_configured_limit() {
    let policy = example("payload_size_policy", example_manifest("payload_size_policy"));
    assert_eq!(policy.kind, PluginKind::Policy);
    let (small, _) = policy.evaluate(ctx(1), &submit(1_000, &[])).unwrap();
    assert_eq!(small, Decision::Allow);
    let (large, _) = policy.evaluate(ctx(1), &submit(70_000, &[])).unwrap();
    match large {
        Decision::Deny(reason) => assert!(reason.contains("70000") && reason.contains("65536"), "{reason}"),
        other => panic!("expected a deny, got {other:?}"),
    }
}

#[test]
fn payload_size_policy_reads_its_limit_from_the_manifest_config() {
    let manifest = Manifest::parse("kind = \"policy\"\n[config]\nmax_payload_bytes = 10\n").unwrap();
    let policy = example("payload_size_policy", manifest);
    assert!(matches!(policy.evaluate(ctx(1), &submit(11, &[])).unwrap().0, Decision::Deny(_)));
}

#[test]
fn payload_size_policy_with_a_bad_config_is_rejected_at_load() {
    let manifest = Manifest::parse("[config]\nmax_payload_bytes = \"lots\"\n").unwrap();
    let error = loader::load(&runtime(), "p", PluginSource::File, &guest_bytes("payload_size_policy"), manifest)
        .expect_err("a non-numeric limit must not load");
    assert!(error.to_string().contains("max_payload_bytes"), "{error}");
}

#[test]
fn region_policy_grants_the_capability_only_to_agents_in_allowed_regions() {
    let policy = example("region_policy", example_manifest("region_policy"));
    let register =
        |region, caps: &[&str]| policy.evaluate(ctx(1), &PolicyInput::Register(agent(region, caps))).unwrap().0;
    match register(Some("eu-west-1"), &[]) {
        Decision::Modify(Modification::Register(changes)) => {
            assert_eq!(changes.add_capabilities, vec!["region:approved".to_string()])
        }
        other => panic!("expected the capability granted, got {other:?}"),
    }
    match register(Some("us-east-1"), &["region:approved"]) {
        Decision::Modify(Modification::Register(changes)) => {
            assert_eq!(changes.remove_capabilities, vec!["region:approved".to_string()])
        }
        other => panic!("expected the self-declared capability removed, got {other:?}"),
    }
    assert_eq!(register(Some("us-east-1"), &[]), Decision::Allow);
}

#[test]
fn region_policy_makes_sensitive_tasks_require_the_capability() {
    let policy = example("region_policy", example_manifest("region_policy"));
    match policy.evaluate(ctx(1), &submit(10, &[("sensitive", "true")])).unwrap().0 {
        Decision::Modify(Modification::Submit(changes)) => {
            assert_eq!(changes.add_capabilities, vec!["region:approved".to_string()])
        }
        other => panic!("expected a submit modification, got {other:?}"),
    }
    assert_eq!(policy.evaluate(ctx(1), &submit(10, &[])).unwrap().0, Decision::Allow);
}

#[test]
fn region_policy_denies_dispatching_a_sensitive_task_outside_allowed_regions() {
    let policy = example("region_policy", example_manifest("region_policy"));
    let mut sensitive = task("code");
    sensitive.labels = vec![("sensitive".into(), "true".into())];
    let dispatch =
        |region| PolicyInput::Dispatch(DispatchRequest { task: sensitive.clone(), agent: agent(Some(region), &[]) });
    assert!(matches!(policy.evaluate(ctx(1), &dispatch("us-east-1")).unwrap().0, Decision::Deny(_)));
    assert_eq!(policy.evaluate(ctx(1), &dispatch("eu-central-1")).unwrap().0, Decision::Allow);
}

fn observations(heartbeat_age_ms: u64, successes: u32, failures: u32, http: Option<HttpCheck>) -> Observations {
    Observations { heartbeat_age_ms, recent_successes: successes, recent_failures: failures, latency_p50_ms: 300, http }
}

fn http(status: Option<u16>, error: Option<&str>) -> Option<HttpCheck> {
    Some(HttpCheck { status, latency_ms: 12, body_prefix: "ok".into(), error: error.map(str::to_string) })
}

#[test]
fn heartbeat_probe_judges_heartbeat_age_failure_rate_and_the_http_check() {
    let probe = example("heartbeat_probe", example_manifest("heartbeat_probe"));
    assert_eq!(probe.kind, PluginKind::HealthProbe);
    let judge = |observed: Observations| probe.probe(ctx(1), &agent(None, &[]), &observed).unwrap().0;
    assert_eq!(judge(observations(1_000, 20, 0, http(Some(200), None))).status, HealthStatus::Healthy);
    assert_eq!(judge(observations(20_000, 20, 0, None)).status, HealthStatus::Degraded);
    assert_eq!(judge(observations(45_000, 20, 0, None)).status, HealthStatus::Unhealthy);
    assert_eq!(judge(observations(1_000, 4, 6, None)).status, HealthStatus::Unhealthy);
    // Two failures of three: too few samples for "unhealthy" (min_samples = 4), enough for "degraded".
    assert_eq!(judge(observations(1_000, 1, 2, None)).status, HealthStatus::Degraded);
    let refused = judge(observations(1_000, 20, 0, http(None, Some("connection refused"))));
    assert_eq!(refused.status, HealthStatus::Unhealthy);
    assert!(refused.message.contains("connection refused"), "{}", refused.message);
    assert_eq!(judge(observations(1_000, 20, 0, http(Some(503), None))).status, HealthStatus::Unhealthy);
}
