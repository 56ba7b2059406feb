//! Health probing in a fleet: servers sharing one Redis divide the agents among themselves by rendezvous hash
//! over the live servers, so each agent is probed once per round, and a server that stops is covered by the
//! others once its presence expires.

use std::sync::Arc;
use std::time::Duration;

use aragora_cp::config::Config;
use aragora_cp::health::ProbeSettings;
use aragora_cp::plugins::Manifest;
use aragora_cp::store::{RedisStore, Store};
use aragora_cp_tests::guest_bytes;
use aragora_cp_tests::redis_server::{shared_server, unique_prefix};
use aragora_cp_tests::server::TestServer;
use serde_json::json;

async fn server(prefix: &str) -> TestServer {
    // Presence lives three probe intervals: 300 ms here, so a stopped server is forgotten quickly.
    let config = Config {
        probes: ProbeSettings { interval: Duration::from_millis(100), ..ProbeSettings::default() },
        ..Config::default()
    };
    let store: Arc<dyn Store> =
        Arc::new(RedisStore::connect(&shared_server().url(), prefix, config.store_config()).await.expect("redis"));
    let server = TestServer::start_with_store(config, store).await;
    server
        .coordinator
        .install_local_plugin("heartbeat_probe", &guest_bytes("heartbeat_probe"), Manifest::default())
        .expect("the example probe loads");
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_probe_each_agent_once_and_one_covers_for_the_other_when_it_stops() {
    let prefix = unique_prefix("fleet-health");
    let (one, two) = (server(&prefix).await, server(&prefix).await);
    let admin = one.admin();
    for n in 0..24 {
        let agent = json!({"agent_id": format!("agent-{n}"), "capabilities": ["code"], "model": "m", "provider": "p"});
        let response = one.client.post(one.api("/agents")).bearer_auth(&admin).json(&agent).send().await.unwrap();
        assert_eq!(response.status(), 201);
    }
    // The first rounds make both servers known to each other; from then on they split the agents.
    one.coordinator.probe_now().await;
    two.coordinator.probe_now().await;
    let (by_one, by_two) = (one.coordinator.probe_now().await, two.coordinator.probe_now().await);
    assert_eq!(by_one + by_two, 24, "each agent probed exactly once per round ({by_one} + {by_two})");
    assert!(by_one > 0 && by_two > 0, "both servers take a share ({by_one} + {by_two})");

    two.stop().await;
    // The stopped server's presence lapses after its time to live; from then on the remaining server's rounds
    // cover every agent. Poll rounds (each is real work) rather than sleep a guess.
    let stopped = std::time::Instant::now();
    loop {
        let probed = one.coordinator.probe_now().await;
        if probed == 24 {
            break;
        }
        assert!(stopped.elapsed() < Duration::from_secs(10), "the remaining server still probes only {probed} agents");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    one.stop().await;
}
