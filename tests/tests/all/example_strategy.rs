//! The example strategy `cheapest_within_latency`, the component built from `plugins/`, with the manifest shipped
//! beside its crate: its choices on hand-made candidate sets, then the same plugin loaded from a plugins folder by
//! a real server and asked through the REST API.

use aragora_cp::config::Config;
use aragora_cp::plugins::bindings::{Candidate, CandidateDetails, TaskInfo};
use aragora_cp::plugins::{CallError, Manifest, PluginKind, PluginSource, PluginVersion, loader};
use aragora_cp_tests::server::TestServer;
use aragora_cp_tests::{candidate, ctx, example_manifest, guest_bytes, runtime, task};
use serde_json::{Value, json};

const NAME: &str = "cheapest_within_latency";

fn strategy(manifest: Manifest) -> PluginVersion {
    loader::load(&runtime(), NAME, PluginSource::File, &guest_bytes(NAME), manifest).expect("the example loads")
}

/// One agent of a candidate set: its declared labels and its record (completed tasks, observed average latency).
struct Agent {
    cost: Option<&'static str>,
    declared_latency: Option<&'static str>,
    completed: u64,
    observed_latency: u32,
    in_flight: u32,
}

/// A priced agent that declares its latency and has no record yet.
fn declared(cost: &'static str, latency: &'static str) -> Agent {
    Agent { cost: Some(cost), declared_latency: Some(latency), completed: 0, observed_latency: 0, in_flight: 0 }
}

fn set(agents: &[Agent]) -> (Vec<Candidate>, Vec<CandidateDetails>) {
    agents
        .iter()
        .enumerate()
        .map(|(i, agent)| {
            let mut c = candidate(agent.in_flight, agent.completed, None);
            c.avg_latency_ms = agent.observed_latency;
            let mut labels = Vec::new();
            if let Some(cost) = agent.cost {
                labels.push(("cost".to_string(), cost.to_string()));
            }
            if let Some(latency) = agent.declared_latency {
                labels.push(("latency_ms".to_string(), latency.to_string()));
            }
            let details =
                CandidateDetails { agent_id: format!("agent-{i}"), model: "m".into(), provider: "p".into(), labels };
            (c, details)
        })
        .unzip()
}

fn bounded(max_latency_ms: &str) -> TaskInfo {
    let mut task = task("code");
    task.labels = vec![("max_latency_ms".into(), max_latency_ms.into())];
    task
}

/// The index chosen and the plugin's log for the call.
fn choose(plugin: &PluginVersion, task: &TaskInfo, agents: &[Agent]) -> (usize, String) {
    let (candidates, details) = set(agents);
    let (index, report) = plugin.select_reporting(ctx(1), task, &candidates, &details).expect("the plugin answers");
    (index, report.log)
}

#[test]
fn cheapest_within_latency_picks_the_cheapest_agent_that_meets_the_default_bound() {
    let plugin = strategy(example_manifest(NAME));
    assert_eq!(plugin.kind, PluginKind::Strategy);
    // The cheapest (agent-1) is too slow for the default 2000 ms; agent-2 is the cheapest of the rest.
    let agents = [declared("5", "300"), declared("1", "3000"), declared("2", "800"), declared("3", "100")];
    let (index, log) = choose(&plugin, &task("code"), &agents);
    assert_eq!(index, 2);
    assert!(log.is_empty(), "a normal choice logs nothing: {log}");
}

#[test]
fn cheapest_within_latency_reads_the_bound_from_the_task_metadata() {
    let plugin = strategy(example_manifest(NAME));
    let agents = [declared("5", "300"), declared("1", "3000"), declared("2", "800"), declared("3", "100")];
    assert_eq!(choose(&plugin, &bounded("500"), &agents).0, 3, "only agents 0 and 3 meet 500 ms; 3 is cheaper");
    assert_eq!(choose(&plugin, &bounded("5000"), &agents).0, 1, "everyone meets 5 s; agent-1 is the cheapest");
    assert_eq!(choose(&plugin, &bounded("800"), &agents).0, 2, "the bound is inclusive");
}

#[test]
fn cheapest_within_latency_trusts_observed_latency_over_the_declared_one() {
    let plugin = strategy(example_manifest(NAME));
    // agent-0 claims 100 ms and is cheapest, but has completed tasks averaging 4 s; agent-1 claims 3 s and has
    // shown 400 ms.
    let agents = [
        Agent { completed: 12, observed_latency: 4_000, ..declared("1", "100") },
        Agent { completed: 5, observed_latency: 400, ..declared("4", "3000") },
        declared("9", "200"),
    ];
    assert_eq!(choose(&plugin, &task("code"), &agents).0, 1);
}

#[test]
fn cheapest_within_latency_breaks_cost_ties_by_load_and_ranks_unpriced_agents_last() {
    let plugin = strategy(example_manifest(NAME));
    let tie = [Agent { in_flight: 2, ..declared("1", "100") }, Agent { in_flight: 1, ..declared("1", "900") }];
    assert_eq!(choose(&plugin, &task("code"), &tie).0, 1, "same cost: fewer in flight wins");

    let unpriced = [Agent { cost: None, ..declared("0", "100") }, declared("50", "1500")];
    assert_eq!(choose(&plugin, &task("code"), &unpriced).0, 1, "an agent with no cost ranks after priced ones");
}

#[test]
fn cheapest_within_latency_ignores_an_unreadable_agent_label_and_says_so() {
    let plugin = strategy(example_manifest(NAME));
    let agents = [declared("cheap", "100"), declared("3", "200")];
    let (index, log) = choose(&plugin, &task("code"), &agents);
    assert_eq!(index, 1, "\"cheap\" is no cost: agent-0 ranks as unpriced");
    assert!(log.contains("agent-0") && log.contains("\"cheap\""), "{log}");
}

#[test]
fn cheapest_within_latency_falls_back_to_the_fastest_agent_when_none_meets_the_bound() {
    let plugin = strategy(example_manifest(NAME));
    let agents = [
        declared("1", "4000"),
        Agent { completed: 3, observed_latency: 2_500, ..declared("9", "50") },
        declared("2", "3000"),
        Agent { cost: Some("0"), declared_latency: None, completed: 0, observed_latency: 0, in_flight: 0 },
    ];
    let (index, log) = choose(&plugin, &bounded("1000"), &agents);
    assert_eq!(index, 1, "nobody meets 1000 ms; agent-1 is the fastest known (observed 2500 ms)");
    assert!(log.contains("no agent within 1000 ms") && log.contains("agent-1"), "{log}");
}

#[test]
fn cheapest_within_latency_falls_back_to_the_least_loaded_when_no_latency_is_known() {
    let plugin = strategy(example_manifest(NAME));
    let unknown = |cost, in_flight| Agent {
        cost: Some(cost),
        declared_latency: None,
        completed: 0,
        observed_latency: 0,
        in_flight,
    };
    let (index, log) = choose(&plugin, &task("code"), &[unknown("1", 3), unknown("2", 0), unknown("3", 1)]);
    assert_eq!(index, 1);
    assert!(log.contains("least loaded"), "{log}");
}

#[test]
fn cheapest_within_latency_refuses_an_unreadable_task_bound() {
    let plugin = strategy(example_manifest(NAME));
    let (candidates, details) = set(&[declared("1", "100"), declared("2", "100")]);
    match plugin.select(ctx(1), &bounded("fast"), &candidates, &details) {
        Err(CallError::Guest(message)) => {
            assert!(message.contains("max_latency_ms") && message.contains("fast"), "{message}")
        }
        other => panic!("expected the plugin to decline, got {other:?}"),
    }
}

#[test]
fn cheapest_within_latency_without_labels_in_its_manifest_declines_and_says_what_to_add() {
    // Without `labels` the host passes no details, so there are no costs to compare: the call fails (and the host
    // falls back to least_loaded) instead of answering at random.
    let plugin = strategy(Manifest::parse("kind = \"strategy\"\n").unwrap());
    let (candidates, details) = set(&[declared("1", "100"), declared("2", "100")]);
    match plugin.select(ctx(1), &task("code"), &candidates, &details) {
        Err(CallError::Guest(message)) => assert!(message.contains("labels"), "{message}"),
        other => panic!("expected the plugin to decline, got {other:?}"),
    }
}

#[test]
fn cheapest_within_latency_takes_its_default_bound_from_the_config_and_refuses_unknown_keys() {
    let manifest = |config: &str| {
        Manifest::parse(&format!("labels = [\"cost\", \"latency_ms\", \"max_latency_ms\"]\n[config]\n{config}\n"))
            .unwrap()
    };
    let strict = strategy(manifest("default_max_latency_ms = 150"));
    let agents = [declared("1", "300"), declared("2", "100")];
    assert_eq!(choose(&strict, &task("code"), &agents).0, 1);

    let typo = loader::load(&runtime(), NAME, PluginSource::File, &guest_bytes(NAME), manifest("max_latency = 5"));
    let error = typo.expect_err("a misspelt key must not load");
    assert!(error.to_string().contains("max_latency"), "{error}");
    let negative =
        loader::load(&runtime(), NAME, PluginSource::File, &guest_bytes(NAME), manifest("default_max_latency_ms = -1"));
    assert!(negative.expect_err("a negative bound must not load").to_string().contains("default_max_latency_ms"));
}

/// Registers `agent_id` over HTTP with a cost and a declared latency as JSON numbers, as a real agent would.
async fn register(server: &TestServer, token: &str, agent_id: &str, cost: f64, latency_ms: u64) {
    let body = json!({
        "agent_id": agent_id,
        "capabilities": ["code"],
        "metadata": {"cost": cost, "latency_ms": latency_ms},
    });
    let response = server.client.post(server.api("/agents")).bearer_auth(token).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cheapest_within_latency_from_a_plugins_folder_selects_and_routes_through_the_rest_api() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(format!("{NAME}.wasm")), guest_bytes(NAME)).unwrap();
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../plugins/{NAME}/{NAME}.toml"));
    std::fs::copy(manifest, dir.path().join(format!("{NAME}.toml"))).unwrap();
    let server =
        TestServer::start_with(Config { plugins_dir: Some(dir.path().to_path_buf()), ..Config::default() }).await;
    let token = server.admin();

    register(&server, &token, "premium", 10.0, 150).await;
    register(&server, &token, "budget", 0.5, 5_000).await;
    register(&server, &token, "standard", 2.0, 900).await;

    // The default bound (2000 ms): the budget agent is too slow, standard is the cheapest of the rest.
    let select = json!({"capabilities": ["code"], "strategy": NAME, "dry_run": true});
    let response = server.client.post(server.api("/agents/select")).bearer_auth(&token).json(&select).send();
    let selection: Value = response.await.unwrap().json().await.unwrap();
    assert_eq!(selection["agent_id"], "standard", "{selection}");
    assert_eq!(selection["answered_by"], "plugin", "{selection}");

    // A task that needs 200 ms, routed to whichever blocked claim the strategy picks.
    let task = json!({
        "task_type": "code",
        "required_capabilities": ["code"],
        "strategy": NAME,
        "metadata": {"max_latency_ms": 200},
    });
    let (_, receivers) = server.route_to_waiting(&token, &["budget", "standard", "premium"], &task).await;
    assert_eq!(receivers, ["premium"], "only premium declares a latency within 200 ms");

    // Both answers came from the plugin itself, not from a fallback.
    let response = server.client.get(server.api(&format!("/plugins/{NAME}"))).bearer_auth(&token).send();
    let info: Value = response.await.unwrap().json().await.unwrap();
    let active = &info["active"];
    assert_eq!(active["source"], "file", "{info}");
    assert_eq!((active["failures"].as_u64(), active["fallbacks"].as_u64()), (Some(0), Some(0)), "{info}");
    assert!(active["calls"].as_u64().unwrap() >= 2, "{info}");
    server.stop().await;
}
