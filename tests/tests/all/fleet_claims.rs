//! Blocked claims across servers: a claim blocked on one server is woken when a matching task is submitted to
//! another (the submitting server routes it to the claim's waiter through the store; the claim's server learns
//! of it from the store's event stream). The bound below only tells "woken" from "timed out at block_ms".

use std::time::{Duration, Instant};

use aragora_cp::config::Config;

use aragora_cp_tests::redis_server::unique_prefix;
use aragora_cp_tests::server::TestServer;
use serde_json::{Value, json};

async fn server(prefix: &str) -> TestServer {
    TestServer::start_on_redis(Config::default(), prefix).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_claim_blocked_on_one_server_is_woken_by_a_submit_to_another() {
    let prefix = unique_prefix("fleet-claims");
    let (one, two) = (server(&prefix).await, server(&prefix).await);
    let admin = one.admin();
    let agent = json!({"agent_id": "waiting-agent", "capabilities": ["code"], "model": "m", "provider": "p"});
    assert_eq!(
        one.client.post(one.api("/agents")).bearer_auth(&admin).json(&agent).send().await.unwrap().status(),
        201
    );

    for round in 0..3 {
        let claim = {
            let (client, url, token) = (one.client.clone(), one.api("/tasks/claim"), admin.clone());
            tokio::spawn(async move {
                let body = json!({"agent_id": "waiting-agent", "block_ms": 20_000});
                let started = Instant::now();
                let answer: Value =
                    client.post(url).bearer_auth(token).json(&body).send().await.unwrap().json().await.unwrap();
                (answer, started.elapsed())
            })
        };
        // The task must come after the claim blocked: wait until the store holds its waiter (seen from the server
        // that will route the task).
        let blocked = Instant::now();
        while two.coordinator.counters().await.unwrap().waiting_claims == 0 {
            assert!(blocked.elapsed() < Duration::from_secs(10), "round {round}: the claim never blocked");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let task = json!({"task_type": "code", "required_capabilities": ["code"], "payload": {"round": round}});
        let submitted: Value = two
            .client
            .post(two.api("/tasks"))
            .bearer_auth(&admin)
            .json(&task)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let (answer, waited) = claim.await.unwrap();
        assert_eq!(answer["task"]["task_id"], submitted["task_id"], "round {round}: {answer}");
        assert!(waited < Duration::from_secs(10), "round {round}: the claim was not woken (waited {waited:?})");
        let lease = answer["task"]["lease_id"].as_str().unwrap();
        let done = json!({"lease_id": lease, "result": {}});
        let url = one.api(&format!("/tasks/{}/complete", submitted["task_id"].as_str().unwrap()));
        assert_eq!(one.client.post(url).bearer_auth(&admin).json(&done).send().await.unwrap().status(), 200);
    }
    one.stop().await;
    two.stop().await;
}
