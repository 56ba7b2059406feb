//! What a plugin author meets over the API: uploads carry their manifest (multipart, like `curl -F`), an upload that
//! would silently drop the active version's settings is refused, `GET /plugins` shows the manifest's settings and
//! what the plugin printed, and the call counters of `/metrics` survive a swap.

use aragora_cp_tests::guest_bytes;
use aragora_cp_tests::server::{TestServer, read_until};
use serde_json::Value;

const REGION_MANIFEST: &str = include_str!("../../../plugins/region_policy/region_policy.toml");

async fn upload_multipart(server: &TestServer, name: &str, component: Vec<u8>, manifest: Option<&str>) -> (u16, Value) {
    let mut form = reqwest::multipart::Form::new()
        .part("component", reqwest::multipart::Part::bytes(component).file_name(format!("{name}.wasm")));
    if let Some(manifest) = manifest {
        form = form.text("manifest", manifest.to_string());
    }
    let response = server
        .client
        .put(server.api(&format!("/plugins/{name}")))
        .bearer_auth(server.admin())
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn plugin(server: &TestServer, name: &str) -> Value {
    let url = server.api(&format!("/plugins/{name}"));
    server.client.get(url).bearer_auth(server.admin()).send().await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multipart_upload_carries_its_manifest_and_a_bare_one_may_not_drop_it() {
    let server = TestServer::start().await;
    let (status, uploaded) =
        upload_multipart(&server, "region_policy", guest_bytes("region_policy"), Some(REGION_MANIFEST)).await;
    assert_eq!(status, 200, "{uploaded}");
    let active = &uploaded["active"];
    assert_eq!(active["labels"], serde_json::json!(["region", "sensitive"]), "{active}");
    assert_eq!((active["order"].as_i64(), active["on_error"].as_str()), (Some(20), Some("deny")));
    assert_eq!(active["config"]["capability"], "region:approved");
    assert_eq!((active["needs_details"].as_bool(), active["needs_payload"].as_bool()), (Some(false), Some(false)));

    // The doc's raw form, without a manifest, over a version that has one: refused, naming what would vanish.
    let (status, problem) = server.put_component("region_policy", guest_bytes("region_policy")).await;
    assert_eq!((status, problem["code"].as_str()), (400, Some("manifest_required")), "{problem}");
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("labels") && detail.contains("region"), "{detail}");
    assert_eq!(plugin(&server, "region_policy").await["active"]["labels"][0], "region", "nothing changed");

    // An explicitly empty manifest drops them (the region policy itself refuses to run without its config) …
    let (status, problem) = upload_multipart(&server, "region_policy", guest_bytes("region_policy"), Some("")).await;
    assert_eq!((status, problem["code"].as_str()), (400, Some("plugin_rejected")), "{problem}");
    let size_manifest = "kind = \"policy\"\norder = 10\n[config]\nmax_payload_bytes = 1000\n";
    let size_policy = || guest_bytes("payload_size_policy");
    assert_eq!(upload_multipart(&server, "size_policy", size_policy(), Some(size_manifest)).await.0, 200);
    assert_eq!(server.put_component("size_policy", size_policy()).await.0, 400);
    let (status, dropped) = upload_multipart(&server, "size_policy", size_policy(), Some("")).await;
    assert_eq!((status, dropped["active"]["order"].as_i64()), (200, Some(100)), "{dropped}");
    // … and a plugin without settings takes a bare upload.
    let (status, bare) = server.put_component("my_strategy", guest_bytes("lowest_latency")).await;
    assert_eq!(status, 200, "{bare}");
    server.stop().await;
}

/// `component` with a custom section of `extra` bytes appended: still a valid component (runtimes skip custom
/// sections), as large as a test needs.
fn padded(mut component: Vec<u8>, extra: usize) -> Vec<u8> {
    fn leb128(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"padding";
    let mut section = Vec::new();
    leb128(name.len(), &mut section);
    section.extend_from_slice(name);
    section.resize(section.len() + extra, 0);
    component.push(0);
    leb128(section.len(), &mut component);
    component.extend_from_slice(&section);
    component
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multipart_upload_larger_than_the_frameworks_default_limit_is_taken() {
    // axum's own limit is 2 MiB; the server's is `PLUGIN_MAX_COMPONENT_MIB` (32 by default).
    let server = TestServer::start().await;
    let component = padded(guest_bytes("lowest_latency"), 3 * 1024 * 1024);
    let (status, uploaded) = upload_multipart(&server, "big_strategy", component.clone(), None).await;
    assert_eq!(status, 200, "{uploaded}");
    assert_eq!(plugin(&server, "big_strategy").await["active"]["size"].as_u64(), Some(component.len() as u64));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_plugin_prints_is_shown_with_it_and_its_call_counter_survives_a_swap() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let (status, _) = server.put_component("chatty", guest_bytes("chatty")).await;
    assert_eq!(status, 200);
    for agent in ["c-1", "c-2"] {
        let body = serde_json::json!({"agent_id": agent, "capabilities": ["chat"]});
        server.client.post(server.api("/agents")).bearer_auth(&admin).json(&body).send().await.unwrap();
    }
    // Routing calls a strategy only for work that arrives while agents wait in claims.
    let claim = |agent: &'static str| {
        let (client, url, token) = (server.client.clone(), server.api("/tasks/claim"), admin.clone());
        tokio::spawn(async move {
            let body = serde_json::json!({"agent_id": agent, "block_ms": 5000});
            client.post(url).bearer_auth(token).json(&body).send().await.unwrap().json::<Value>().await.unwrap()
        })
    };
    let waiting = [claim("c-1"), claim("c-2")];
    let started = std::time::Instant::now();
    while server.coordinator.get_stats().await.unwrap().scheduler["waiting_claims"] != 2 {
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "claims never waited");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let task = serde_json::json!({"task_type": "chat", "required_capabilities": ["chat"], "strategy": "chatty"});
    server.client.post(server.api("/tasks")).bearer_auth(&admin).json(&task).send().await.unwrap();
    let chatty = loop {
        let chatty = plugin(&server, "chatty").await;
        if chatty["totals"]["calls"].as_u64() >= Some(1) || started.elapsed() > std::time::Duration::from_secs(10) {
            break chatty;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    let log: Vec<&str> = chatty["active"]["log"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(log.iter().any(|line| line.contains("chatty: picking candidate 0")), "{log:?}");
    let calls_before = chatty["totals"]["calls"].as_u64().unwrap();
    assert!(calls_before >= 1, "the routing call (validation's trial calls are not counted): {chatty}");

    // A new version of the same name: its own counters start at zero, the name's (and /metrics') do not.
    let (status, swapped) =
        server.put_component("chatty", guest_bytes("chatty").into_iter().chain([0]).collect()).await;
    assert_eq!(status, 400, "a component with a stray byte is rejected: {swapped}");
    let (status, swapped) = server.put_component("chatty", guest_bytes("lowest_latency")).await;
    assert_eq!(status, 200, "{swapped}");
    assert_eq!(swapped["active"]["calls"], 0, "a new version's own counters start at zero: {swapped}");
    assert_eq!(swapped["totals"]["calls"].as_u64(), Some(calls_before), "the name's counter kept its calls: {swapped}");
    let metrics = server.client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("aragora_cp_plugin_calls_total{plugin=\"chatty\""))
        .unwrap_or_else(|| panic!("no chatty counter:\n{metrics}"));
    let counted: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(counted as u64, calls_before, "{line}");
    for claim in waiting {
        claim.abort();
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_a_builtin_must_be_asked_for() {
    let server = TestServer::start().await;
    for name in ["least_loaded", "heartbeat_probe"] {
        let (status, body) = server.put_component(name, guest_bytes("highest_index")).await;
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["code"], "builtin_override", "{body}");
        assert_eq!(plugin(&server, name).await["active"]["source"], "builtin", "the built-in still serves");
    }
    let (status, body) = server.put_component("least_loaded?override_builtin=true", guest_bytes("highest_index")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        plugin(&server, "least_loaded").await["active"]["source"],
        "upload",
        "asked for, the upload replaces it"
    );
    server.stop().await;
}

/// An upload's `plugin_loaded` event reaches the event stream. Its id is not the store's (plugin events are not
/// resumable): a stream must pass it, whatever store events it passed before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_is_announced_on_the_event_stream() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let url = server.api("/events?types=plugin_loaded,task_submitted");
    let mut stream = server.client.get(&url).bearer_auth(&admin).send().await.unwrap();
    let task = Some(serde_json::json!({"task_type": "t"}));
    assert_eq!(server.call(&admin, reqwest::Method::POST, "/tasks", task).await.0, 201);
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, "event: task_submitted").await;
    let (status, _) = server.put_component("announced", guest_bytes("lowest_latency")).await;
    assert_eq!(status, 200);
    let seen = read_until(&mut stream, &mut seen, "\"announced\"").await;
    assert!(seen.contains("event: plugin_loaded"), "{seen}");
    server.stop().await;
}
