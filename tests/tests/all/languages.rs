//! Plugins written in Python (componentize-py) and JavaScript (componentize-js), built from `plugins/python/` and
//! `plugins/js/` with the real tools, installed by the test set-up (`aragora_cp_tests::languages`): hot-loaded
//! into a running server and asked over REST, uploaded to a fleet on Redis, and held by the same sandbox as Rust
//! plugins (fuel, memory, no files, no network, no HTTP import).

use std::time::Duration;

use aragora_cp::config::Config;
use aragora_cp::plugins::{CallError, LoadError, Manifest, PluginSource, PluginVersion, loader};
use aragora_cp_tests::languages::{Language, component, component_from, component_with, manifest};
use aragora_cp_tests::redis_server::unique_prefix;
use aragora_cp_tests::server::TestServer;
use aragora_cp_tests::{candidate, ctx, runtime, task, write_by_rename};
use base64::Engine as _;
use serde_json::{Value, json};

/// A server watching an empty plugins folder, then the plugin copied in while it runs; answers once it is active.
async fn hot_loaded(name: &str, bytes: &[u8], manifest_text: &str) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let server =
        TestServer::start_with(Config { plugins_dir: Some(dir.path().to_path_buf()), ..Config::default() }).await;
    std::fs::write(dir.path().join(format!("{name}.toml")), manifest_text).unwrap();
    // By rename, as a deployment would: the watcher must not read half of an 18 MiB file.
    write_by_rename(dir.path(), &format!("{name}.wasm"), bytes);
    let token = server.admin();
    let active = async {
        loop {
            let response = server.client.get(server.api(&format!("/plugins/{name}"))).bearer_auth(&token).send();
            let response = response.await.unwrap();
            if response.status() == 200 {
                let info: Value = response.json().await.unwrap();
                assert!(info["last_rejection"].is_null(), "{info}");
                if info["active"]["source"] == "file" {
                    return info;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    // Compiling an interpreter's component takes seconds alone, and far longer beside other tests on two cores.
    let info = tokio::time::timeout(Duration::from_secs(180), active).await.expect("the plugin hot-loads");
    assert_eq!(info["status"], "active", "{info}");
    (server, dir)
}

/// The example's own manifest, with room for a shared machine's pauses: these tests check what the plugin decides,
/// not how fast. The example's 20 ms is a wall-clock deadline, and on a 2-core machine busy compiling other tests'
/// 18 MiB components, a thread can wait longer than that for a core (a policy then denies, a strategy falls back).
fn manifest_text(language: Language, name: &str) -> String {
    let folder = aragora_cp_tests::languages::project(language, name);
    let text = std::fs::read_to_string(folder.join(format!("{name}.toml"))).unwrap();
    assert!(text.contains("\ndeadline_ms = 20\n"), "the example's deadline changed; update this test:\n{text}");
    text.replace("\ndeadline_ms = 20\n", "\ndeadline_ms = 2000\n")
}

async fn register(server: &TestServer, token: &str, agent_id: &str, cost: &str) {
    let body = json!({"agent_id": agent_id, "capabilities": ["code"], "metadata": {"cost": cost}});
    let response = server.client.post(server.api("/agents")).bearer_auth(token).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
}

/// The `cheapest` example in `language`, hot-loaded: a dry-run selection and a routed task both go to the agent
/// with the lowest `cost`, answered by the plugin itself, and the task's decisions say so.
async fn cheapest_routes_over_rest(language: Language, name: &str) {
    let bytes = component(language, name, "strategy");
    let (server, _dir) = hot_loaded(name, &bytes, &manifest_text(language, name)).await;
    let token = server.admin();
    for (agent, cost) in [("premium", "10"), ("budget", "0.5"), ("unpriced", "n/a"), ("standard", "2")] {
        register(&server, &token, agent, cost).await;
    }

    let select = json!({"capabilities": ["code"], "strategy": name, "dry_run": true});
    let response = server.client.post(server.api("/agents/select")).bearer_auth(&token).json(&select).send();
    let selection: Value = response.await.unwrap().json().await.unwrap();
    assert_eq!(
        (&selection["agent_id"], &selection["answered_by"]),
        (&json!("budget"), &json!("plugin")),
        "{selection}"
    );

    // A task routed to whichever waiting claim the strategy picks.
    let agents = ["premium", "budget", "unpriced", "standard"];
    let submitted = json!({"task_type": "code", "required_capabilities": ["code"], "strategy": name});
    let (task_id, receivers) = server.route_to_waiting(&token, &agents, &submitted).await;
    assert_eq!(receivers, ["budget"]);

    let response = server.client.get(server.api(&format!("/tasks/{task_id}/decisions"))).bearer_auth(&token).send();
    let decisions: Value = response.await.unwrap().json().await.unwrap();
    let route = decisions["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["stage"] == "route")
        .unwrap_or_else(|| panic!("a route decision: {decisions}"));
    assert_eq!((&route["plugin"], &route["answered_by"]), (&json!(name), &json!("plugin")), "{route}");

    let response = server.client.get(server.api(&format!("/plugins/{name}"))).bearer_auth(&token).send();
    let info: Value = response.await.unwrap().json().await.unwrap();
    let active = &info["active"];
    assert_eq!((active["failures"].as_u64(), active["fallbacks"].as_u64()), (Some(0), Some(0)), "{info}");
    assert!(active["calls"].as_u64().unwrap() >= 2, "{info}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_strategy_built_from_source_hot_loads_and_routes_over_rest() {
    cheapest_routes_over_rest(Language::Python, "cheapest_py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_javascript_strategy_built_from_source_hot_loads_and_routes_over_rest() {
    cheapest_routes_over_rest(Language::Js, "cheapest_js").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_policy_built_from_source_hot_loads_and_decides_submits_over_rest() {
    let name = "payload_guard_py";
    let bytes = component(Language::Python, name, "policy");
    let (server, _dir) = hot_loaded(name, &bytes, &manifest_text(Language::Python, name)).await;
    let token = server.admin();
    let submit = |body: Value| server.client.post(server.api("/tasks")).bearer_auth(&token).json(&body).send();

    // Over the configured 1024 bytes: denied, with the plugin's reason.
    let response = submit(json!({"task_type": "code", "payload": {"text": "x".repeat(2000)}})).await.unwrap();
    let status = response.status();
    let denied: Value = response.json().await.unwrap();
    assert_eq!(status, 403, "{denied}");
    assert!(denied.to_string().contains("is over the 1024 allowed"), "{denied}");

    // Sensitive work gets the capability that keeps it in approved places.
    let response = submit(json!({"task_type": "sensitive", "payload": {"text": "small"}})).await.unwrap();
    assert_eq!(response.status(), 201);
    let task_id = response.json::<Value>().await.unwrap()["task_id"].as_str().unwrap().to_string();
    let response = server.client.get(server.api(&format!("/tasks/{task_id}"))).bearer_auth(&token).send();
    let stored: Value = response.await.unwrap().json().await.unwrap();
    let required = stored["required_capabilities"].as_array().unwrap();
    assert!(required.contains(&json!("region:approved")), "{stored}");

    // Anything else is allowed as it is.
    let response = submit(json!({"task_type": "code", "payload": {"text": "small"}})).await.unwrap();
    assert_eq!(response.status(), 201);

    let response = server.client.get(server.api(&format!("/plugins/{name}"))).bearer_auth(&token).send();
    let info: Value = response.await.unwrap().json().await.unwrap();
    assert_eq!(info["active"]["failures"], 0, "{info}");
    assert!(info["active"]["calls"].as_u64().unwrap() >= 3, "{info}");
    server.stop().await;
}

/// A misbehaving plugin loaded with the limits an interpreted plugin's manifest asks for.
fn misbehaving(language: Language, name: &str) -> PluginVersion {
    let manifest = Manifest::parse("[limits]\nmemory_mib = 64\nfuel = 20000000\ndeadline_ms = 2000\n").unwrap();
    loader::load(&runtime(), name, PluginSource::File, &component(language, name, "strategy"), manifest)
        .expect("the fixture loads: it misbehaves only for some task types")
}

fn candidates() -> Vec<aragora_cp::plugins::bindings::Candidate> {
    vec![candidate(2, 0, None), candidate(0, 0, None), candidate(1, 0, None)]
}

/// After a failed call the version answers the next ordinary one, on a fresh instance.
fn still_serves(plugin: &PluginVersion) {
    let (index, report) = plugin.select_reporting(ctx(1), &task("code"), &candidates(), &[]).expect("serves again");
    assert_eq!(index, 0);
    assert!(report.fresh_instance, "the failed instance must not be reused");
}

#[test]
fn interpreted_endless_loops_run_out_of_fuel() {
    for (language, name) in [(Language::Python, "misbehave_py"), (Language::Js, "misbehave_js")] {
        let plugin = misbehaving(language, name);
        let outcome = plugin.select(ctx(1), &task("loop"), &candidates(), &[]);
        assert_eq!(outcome, Err(CallError::OutOfFuel { fuel: 20_000_000 }), "{name}");
        still_serves(&plugin);
    }
}

#[test]
fn interpreted_memory_bombs_hit_the_memory_cap() {
    let manifest = Manifest::parse("[limits]\nmemory_mib = 64\nfuel = 100000000\ndeadline_ms = 4000\n").unwrap();
    for (language, name) in [(Language::Python, "misbehave_py"), (Language::Js, "misbehave_js")] {
        let bytes = component(language, name, "strategy");
        let plugin = loader::load(&runtime(), name, PluginSource::File, &bytes, manifest.clone()).unwrap();
        let outcome = plugin.select(ctx(1), &task("memory"), &candidates(), &[]);
        assert_eq!(outcome, Err(CallError::Memory { limit_bytes: 64 * 1024 * 1024 }), "{name}");
        still_serves(&plugin);
    }
}

#[test]
fn python_sees_no_environment() {
    // The test process has plenty of variables (PATH, HOME, CARGO_*): none may show.
    assert!(std::env::vars().count() > 3);
    let plugin = misbehaving(Language::Python, "misbehave_py");
    let outcome = plugin.select(ctx(1), &task("environment"), &candidates(), &[]);
    assert_eq!(outcome, Err(CallError::Guest("0 variables, 0 arguments".into())));
}

#[test]
fn python_finds_no_file_to_read() {
    let plugin = misbehaving(Language::Python, "misbehave_py");
    let outcome = plugin.select(ctx(1), &task("file"), &candidates(), &[]);
    assert_eq!(outcome, Err(CallError::Guest("FileNotFoundError".into())));
    still_serves(&plugin);
}

/// Run on a tokio worker with a deadline short enough that the call stays on that thread, as routing's calls do:
/// a socket call that entered tokio there would panic instead of being refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_cannot_open_a_tcp_or_udp_socket() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    receiver.set_nonblocking(true).unwrap();
    let manifest = Manifest::parse("[limits]\nmemory_mib = 64\nfuel = 20000000\ndeadline_ms = 8\n").unwrap();
    let bytes = component(Language::Python, "misbehave_py", "strategy");
    let plugin = loader::load(&runtime(), "misbehave_py", PluginSource::File, &bytes, manifest).unwrap();
    assert!(plugin.limits.deadline <= aragora_cp::plugins::instance::INLINE_CALL_LIMIT);
    for (kind, port) in [("tcp", listener.local_addr().unwrap().port()), ("udp", receiver.local_addr().unwrap().port())]
    {
        let mut connect = task(kind);
        connect.labels = vec![("port".into(), port.to_string())];
        let outcome = plugin.select(ctx(1), &connect, &candidates(), &[]);
        assert_eq!(outcome, Err(CallError::Guest("PermissionError".into())), "{kind}");
    }
    assert!(listener.accept().is_err(), "no connection may reach the listener");
    assert!(receiver.recv(&mut [0; 16]).is_err(), "no datagram may reach the socket");
    still_serves(&plugin);
}

#[test]
fn interpreted_components_importing_an_interface_outside_the_allowlist_are_rejected_naming_it() {
    // The world of the Rust fixture `forbidden_import`: a strategy that also imports `wasi:keyvalue/store`.
    let wit = aragora_cp_tests::languages::repository().join("plugins/testing/forbidden_import/wit");
    for (language, name) in [(Language::Python, "forbidden_import_py"), (Language::Js, "forbidden_import_js")] {
        let bytes = component_from(language, name, &wit, "strategy-with-store", language.default_options());
        let error = loader::load(&runtime(), name, PluginSource::File, &bytes, Manifest::default())
            .expect_err("must be rejected");
        match &error {
            LoadError::ForbiddenImport(interface) => {
                assert!(interface.starts_with("wasi:keyvalue/"), "{name}: {interface}")
            }
            other => panic!("{name}: expected a forbidden import, got {other:?}"),
        }
    }
}

#[test]
fn a_javascript_component_importing_http_is_rejected_naming_the_interface() {
    // componentize-js's defaults keep HTTP (fetch): the server refuses such a component at load.
    let bytes = component_with(Language::Js, "cheapest_js", "strategy", &[]);
    let error =
        loader::load(&runtime(), "cheapest_js", PluginSource::File, &bytes, manifest(Language::Js, "cheapest_js"))
            .expect_err("must be rejected");
    match &error {
        LoadError::ForbiddenImport(interface) => assert!(interface.starts_with("wasi:http/"), "{interface}"),
        other => panic!("expected a forbidden import, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_python_plugin_uploaded_to_one_server_of_a_redis_fleet_decides_on_another() {
    let name = "cheapest_py";
    let bytes = component(Language::Python, name, "strategy");
    assert!(bytes.len() > 8 * 1024 * 1024, "an interpreted component is larger than the old 8 MiB cap");
    let prefix = unique_prefix("python-upload");
    let mut servers = Vec::new();
    for _ in 0..2 {
        servers.push(TestServer::start_on_redis(Config::default(), &prefix).await);
    }
    let (first, second) = (&servers[0], &servers[1]);
    let token = first.admin();
    // JSON with the component in base64: the largest body an upload can take.
    let upload = json!({"component": base64::engine::general_purpose::STANDARD.encode(&bytes),
                        "manifest": manifest_text(Language::Python, name)});
    let response = first.client.put(first.api(&format!("/plugins/{name}"))).bearer_auth(&token).json(&upload).send();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());

    for (agent, cost) in [("premium", "10"), ("budget", "0.5")] {
        register(first, &token, agent, cost).await;
    }
    let select = json!({"capabilities": ["code"], "strategy": name, "dry_run": true});
    let chosen = async {
        loop {
            let response = second.client.post(second.api("/agents/select")).bearer_auth(&token).json(&select).send();
            let response = response.await.unwrap();
            if response.status() == 200 {
                return response.json::<Value>().await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let selection = tokio::time::timeout(Duration::from_secs(180), chosen).await.expect("the other server loads it");
    assert_eq!(
        (&selection["agent_id"], &selection["answered_by"]),
        (&json!("budget"), &json!("plugin")),
        "{selection}"
    );
    for server in servers {
        server.stop().await;
    }
}
