//! Rule policies: an Aragora-style rule set installed with `POST /policies` runs as the built-in `rules_policy`
//! component and decides exactly as the same rules written by hand as a code plugin (`hand_written_rules`), over
//! 1,000 generated dispatches; on a live server it is listed with the code policies, enforced on claims, and bad
//! rule sets are refused with the field named.

use aragora_cp::api::Permission;
use aragora_cp::plugins::bindings::{AgentInfo, Decision, DispatchRequest, PolicyInput};
use aragora_cp::plugins::rules::{RULES_PLUGIN, RuleSet, rules_component};
use aragora_cp::plugins::{Manifest, PluginSource, PluginVersion, loader};
use aragora_cp_tests::server::TestServer;
use aragora_cp_tests::{ctx, guest_bytes, install_example, runtime, task};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The rule set `hand_written_rules` hard-codes, in Aragora's shape.
fn block_list_and_region_allow_list() -> Value {
    json!({
        "name": "eu-only",
        "description": "EU agents only, two agents barred",
        "agent_blocklist": ["agent-3", "agent-7"],
        "region_constraint": {"allowed_regions": ["eu-west-1", "eu-central-1"]},
        "enforcement_level": "hard",
    })
}

/// The rule set as `POST /policies` installs it: the embedded component with the manifest the server writes.
fn rule_policy(rules: Value) -> PluginVersion {
    let rules: RuleSet = serde_json::from_value(rules).expect("rule set parses");
    let manifest = Manifest::parse(&rules.validated().expect("valid").manifest().expect("manifest")).expect("parses");
    loader::load(&runtime(), RULES_PLUGIN, PluginSource::Upload, rules_component(), manifest).expect("rules load")
}

/// A small deterministic generator (xorshift64*), so a failing case can be replayed.
struct Cases(u64);

impl Cases {
    fn next(&mut self, below: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % below
    }
}

fn verdict(decision: &Decision) -> &'static str {
    match decision {
        Decision::Allow => "allow",
        Decision::Deny(_) => "deny",
        Decision::Warn(_) => "warn",
        Decision::Modify(_) => "modify",
    }
}

#[test]
fn a_rule_set_decides_1000_generated_dispatches_exactly_as_the_same_rules_written_as_code() {
    let rules = rule_policy(block_list_and_region_allow_list());
    let code = loader::load(
        &runtime(),
        "hand_written_rules",
        PluginSource::File,
        &guest_bytes("hand_written_rules"),
        Manifest { labels: vec!["region".into()], ..Manifest::default() },
    )
    .expect("code policy loads");
    let regions = [Some("eu-west-1"), Some("eu-central-1"), Some("us-east-1"), Some("ap-south-1"), Some(""), None];
    let task_types = ["code", "debate", "summary"];
    let mut cases = Cases(0x5eed_1234_abcd_0001);
    let mut tally = std::collections::BTreeMap::new();
    for case in 0..1_000 {
        let agent_id = format!("agent-{}", cases.next(10));
        let region = regions[cases.next(regions.len())];
        let mut labels = Vec::new();
        if let Some(region) = region {
            labels.push(("region".to_string(), region.to_string()));
        }
        if cases.next(2) == 0 {
            labels.push(("team".to_string(), "ignored".to_string()));
        }
        let mut task = task(task_types[cases.next(task_types.len())]);
        if cases.next(3) == 0 {
            task.labels.push(("workspace_id".into(), format!("ws-{}", cases.next(3))));
        }
        let agent = AgentInfo {
            agent_id: agent_id.clone(),
            model: "m".into(),
            provider: "p".into(),
            capabilities: vec![],
            labels,
        };
        let input = PolicyInput::Dispatch(DispatchRequest { task, agent });
        let (by_rules, _) = rules.evaluate(ctx(case), &input).expect("rules answer");
        let (by_code, _) = code.evaluate(ctx(case), &input).expect("code answers");
        assert_eq!(verdict(&by_rules), verdict(&by_code), "case {case}: {agent_id} in {region:?}: {by_rules:?}");
        *tally.entry(verdict(&by_rules)).or_insert(0) += 1;
    }
    // The generated cases exercise both answers, not one.
    assert!(tally["allow"] > 100 && tally["deny"] > 100, "{tally:?}");
}

#[test]
fn rule_sets_cover_only_their_tasks_warn_when_told_and_check_data_residency() {
    let covering = rule_policy(json!({
        "name": "code-only",
        "task_types": ["code"],
        "agent_allowlist": ["trusted"],
        "region_constraint": {"blocked_regions": ["cn-north-1"], "require_data_residency": true},
    }));
    let dispatch = |task_type: &str, agent: &str, region: &str, data_region: Option<&str>| {
        let mut task = task(task_type);
        if let Some(data_region) = data_region {
            task.labels.push(("data_region".into(), data_region.into()));
        }
        let agent = AgentInfo {
            agent_id: agent.into(),
            model: String::new(),
            provider: String::new(),
            capabilities: vec![],
            labels: vec![("region".into(), region.into())],
        };
        let input = PolicyInput::Dispatch(DispatchRequest { task, agent });
        verdict(&covering.evaluate(ctx(1), &input).unwrap().0)
    };
    assert_eq!(dispatch("debate", "anyone", "cn-north-1", None), "allow", "not a covered task type");
    assert_eq!(dispatch("code", "anyone", "eu-west-1", None), "deny", "not on the allow list");
    assert_eq!(dispatch("code", "trusted", "cn-north-1", None), "deny", "blocked region");
    assert_eq!(dispatch("code", "trusted", "eu-west-1", Some("us-east-1")), "deny", "data must stay in us-east-1");
    assert_eq!(dispatch("code", "trusted", "us-east-1", Some("us-east-1")), "allow");

    let warning = rule_policy(json!({"name": "soft", "agent_blocklist": ["x"], "enforcement_level": "warn"}));
    let input = PolicyInput::Dispatch(DispatchRequest {
        task: task("code"),
        agent: AgentInfo {
            agent_id: "x".into(),
            model: String::new(),
            provider: String::new(),
            capabilities: vec![],
            labels: vec![],
        },
    });
    assert!(matches!(warning.evaluate(ctx(1), &input).unwrap().0, Decision::Warn(_)));
}

#[tokio::test]
async fn post_policies_installs_a_rule_set_that_is_listed_with_code_policies_and_enforced_on_claims() {
    let server = TestServer::start().await;
    let admin = server.admin();
    install_example(&server.coordinator, "payload_size_policy");
    let (status, created) =
        server.call(&admin, reqwest::Method::POST, "/policies", Some(block_list_and_region_allow_list())).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!((created["name"].as_str(), created["type"].as_str()), (Some("eu-only"), Some("rules")), "{created}");
    assert_eq!(created["config"]["agent_blocklist"], json!(["agent-3", "agent-7"]));

    let (_, listed) = server.call(&admin, reqwest::Method::GET, "/policies", None).await;
    let kinds: Vec<(&str, &str)> = listed["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["type"].as_str().unwrap()))
        .collect();
    assert_eq!(kinds, [("payload_size_policy", "code"), ("eu-only", "rules")], "in evaluation order: {listed}");
    let (_, plugin) = server.call(&admin, reqwest::Method::GET, "/plugins/eu-only", None).await;
    assert_eq!((plugin["status"].as_str(), plugin["fleet"]["version"].as_u64()), (Some("active"), Some(1)), "{plugin}");

    // Enforced where work is handed out: the barred agent and the agent outside the EU get nothing.
    for (agent, region) in [("agent-3", "eu-west-1"), ("agent-1", "us-east-1"), ("agent-2", "eu-central-1")] {
        let body = json!({"agent_id": agent, "capabilities": ["work"], "metadata": {"region": region}});
        assert!(server.call(&admin, reqwest::Method::POST, "/agents", Some(body)).await.0.is_success());
    }
    let task = json!({"task_type": "t", "required_capabilities": ["work"]});
    let (_, submitted) = server.call(&admin, reqwest::Method::POST, "/tasks", Some(task)).await;
    for refused in ["agent-3", "agent-1"] {
        let claim = json!({"agent_id": refused, "block_ms": 0});
        let (_, answer) = server.call(&admin, reqwest::Method::POST, "/tasks/claim", Some(claim)).await;
        assert_eq!(answer["task"], Value::Null, "{refused}: {answer}");
    }
    let claim = json!({"agent_id": "agent-2", "block_ms": 0});
    let (_, answer) = server.call(&admin, reqwest::Method::POST, "/tasks/claim", Some(claim)).await;
    assert_eq!(answer["task"]["task_id"], submitted["task_id"], "{answer}");
    let (_, violations) = server.call(&admin, reqwest::Method::GET, "/policies/violations", None).await;
    let by_rules = violations["violations"].as_array().unwrap().iter().filter(|v| v["policy"] == "eu-only").count();
    assert_eq!(by_rules, 2, "one violation per refused dispatch: {violations}");
    server.stop().await;
}

#[tokio::test]
async fn bad_rule_sets_are_refused_with_the_field_named_and_nothing_is_installed() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let refusals = [
        (json!({"name": "x", "sla": {"max_execution_seconds": 10}}), StatusCode::BAD_REQUEST, "sla"),
        (json!({"name": "x", "enforcement_level": "strict"}), StatusCode::BAD_REQUEST, "enforcement_level"),
        (json!({"name": "has space"}), StatusCode::BAD_REQUEST, "name"),
        (json!({"name": "x", "agent_blocklist": "agent-1"}), StatusCode::BAD_REQUEST, "agent_blocklist"),
        (
            json!({"name": "x", "region_constraint": {"allowed": ["eu"]}}),
            StatusCode::BAD_REQUEST,
            "region_constraint.allowed",
        ),
        (json!({"name": "x", "metadata": {"note": null}}), StatusCode::BAD_REQUEST, "metadata"),
        (json!({"name": "least_loaded"}), StatusCode::CONFLICT, ""),
    ];
    for (body, status, field) in refusals {
        let (got, problem) = server.call(&admin, reqwest::Method::POST, "/policies", Some(body.clone())).await;
        assert_eq!(got, status, "{body}: {problem}");
        if !field.is_empty() {
            assert_eq!(problem["field"], field, "{body}: {problem}");
        }
    }
    let (_, listed) = server.call(&admin, reqwest::Method::GET, "/policies", None).await;
    assert_eq!(listed["total"], 0, "{listed}");

    // A second rule set of the same name is refused; a read token installs nothing.
    let first = json!({"name": "once", "agent_blocklist": ["a"]});
    assert_eq!(
        server.call(&admin, reqwest::Method::POST, "/policies", Some(first.clone())).await.0,
        StatusCode::CREATED
    );
    let (status, problem) = server.call(&admin, reqwest::Method::POST, "/policies", Some(first.clone())).await;
    assert_eq!((status, problem["code"].as_str()), (StatusCode::CONFLICT, Some("policy_exists")));
    let reader = server.token("reader", &[Permission::Read]);
    let other = json!({"name": "other"});
    assert_eq!(server.call(&reader, reqwest::Method::POST, "/policies", Some(other)).await.0, StatusCode::FORBIDDEN);
    assert_eq!(server.call(&reader, reqwest::Method::GET, "/policies", None).await.0, StatusCode::OK);
    server.stop().await;
}
