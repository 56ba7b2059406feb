//! Fuzz-style: random and malformed bodies posted to every POST endpoint of a real server. The oracle: no 5xx,
//! ever; every task the server acknowledged (201) is retrievable; the store holds exactly the acknowledged tasks
//! (nothing created twice, nothing created by a refused request); `in_flight` equals the leases held. Seeds are
//! fixed, so a failure reproduces.

use std::collections::BTreeSet;

use aragora_cp_tests::server::TestServer;
use reqwest::StatusCode;
use serde_json::{Map, Value, json};

/// xorshift64*: small, deterministic, good enough to pick shapes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

const KEYS: &[&str] = &[
    "task_type",
    "payload",
    "required_capabilities",
    "priority",
    "timeout_seconds",
    "max_retries",
    "metadata",
    "strategy",
    "idempotency_key",
    "agent_id",
    "capabilities",
    "block_ms",
    "max_tasks",
    "lease_id",
    "result",
    "error",
    "requeue",
    "kind",
    "status",
    "session_id",
    "exclude",
    "dry_run",
    "tasks",
    "current_task_ids",
    "progress",
    "model",
    "provider",
    "max_concurrent_tasks",
    "health_url",
    "unknown_field",
];

fn random_value(rng: &mut Rng, depth: u32) -> Value {
    match rng.below(if depth > 2 { 6 } else { 9 }) {
        0 => Value::Null,
        1 => json!(rng.below(2) == 0),
        2 => json!(rng.next() as i64),
        3 => json!(-1),
        4 => json!(rng.pick(&["", "code", "urgent", "LOW", "ready", "draining", "task", "agent", "a b", "\u{0}"])),
        5 => json!("x".repeat(rng.below(300) as usize)),
        6 => Value::Array((0..rng.below(4)).map(|_| random_value(rng, depth + 1)).collect()),
        _ => Value::Object(
            (0..rng.below(5)).map(|_| (rng.pick(KEYS).to_string(), random_value(rng, depth + 1))).collect(),
        ),
    }
}

/// A plausible body with some fields of the wrong type or value, or a random JSON value.
fn random_body(rng: &mut Rng) -> Value {
    if rng.below(4) == 0 {
        return random_value(rng, 0);
    }
    let mut body = Map::new();
    for _ in 0..rng.below(6) + 1 {
        body.insert(rng.pick(KEYS).to_string(), random_value(rng, 1));
    }
    // Claims must not block the fuzz for seconds.
    body.insert("block_ms".into(), json!(0));
    Value::Object(body)
}

fn random_text(rng: &mut Rng, valid: &Value) -> Vec<u8> {
    let text = valid.to_string();
    match rng.below(5) {
        0 => text.as_bytes()[..text.len() / 2].to_vec(),
        1 => vec![0xff, 0xfe, b'{', 0x80],
        2 => b"{\"task_type\": \"x\",}".to_vec(),
        3 => Vec::new(),
        _ => text.into_bytes(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_and_malformed_bodies_never_cause_a_5xx_nor_lose_or_duplicate_a_task() {
    let server = TestServer::start().await;
    let token = server.admin();
    let base = server.api("");
    let client = &server.client;
    // A registered agent and a real task, so some random requests reach deep into the engine.
    client
        .post(format!("{base}/agents"))
        .bearer_auth(&token)
        .json(&json!({"agent_id": "fuzz-agent", "capabilities": ["code"], "max_concurrent_tasks": 4}))
        .send()
        .await
        .unwrap();
    let seeded: Value = client
        .post(format!("{base}/tasks"))
        .bearer_auth(&token)
        .json(&json!({"task_type": "code", "required_capabilities": ["code"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut acknowledged: BTreeSet<String> = BTreeSet::from([seeded["task_id"].as_str().unwrap().to_string()]);
    let real_task = seeded["task_id"].as_str().unwrap().to_string();

    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut requests = 0;
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..600 {
        let task = if rng.below(2) == 0 { real_task.clone() } else { "task_0123456789abcdef0123456789abcdef".into() };
        let agent = rng.pick(&["fuzz-agent", "nobody", "a:b.c-d"]);
        let path = match rng.below(15) {
            0 => "/agents".to_string(),
            1 => "/agents/select".to_string(),
            2 => format!("/agents/{agent}/heartbeat"),
            3 => format!("/agents/{agent}/pause"),
            4 => format!("/agents/{agent}/resume"),
            5 | 6 => "/tasks".to_string(),
            7 => "/tasks/batch".to_string(),
            8 => "/tasks/claim".to_string(),
            9 => format!("/tasks/{task}/start"),
            10 => format!("/tasks/{task}/progress"),
            11 => format!("/tasks/{task}/complete"),
            12 => format!("/tasks/{task}/fail"),
            13 => format!("/tasks/{task}/cancel"),
            _ => format!("/tasks/{task}/retry"),
        };
        let body = if path == "/tasks" && rng.below(2) == 0 {
            // A valid submit with a few random extras and a key from a small set: replays and reused keys happen.
            let mut valid = json!({"task_type": "code", "required_capabilities": ["code"],
                                   "idempotency_key": format!("key-{}", rng.below(8))});
            if rng.below(3) == 0 {
                valid[rng.pick(KEYS)] = random_value(&mut rng, 1);
            }
            valid
        } else {
            random_body(&mut rng)
        };
        let mut request = client.post(format!("{base}{path}")).bearer_auth(&token);
        request = match rng.below(4) {
            0 => request.header("content-type", "application/json").body(random_text(&mut rng, &body)),
            1 => request
                .header("content-type", rng.pick(&["text/plain", "application/xml", "application/json"]))
                .body(body.to_string()),
            _ => request.json(&body),
        };
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        assert!(!status.is_server_error(), "POST {path} {body} → {status} {answer}");
        requests += 1;
        if status.is_success() {
            accepted += 1;
        } else {
            refused += 1;
        }
        if status == StatusCode::CREATED && path == "/tasks" {
            acknowledged.insert(answer["task_id"].as_str().expect("a 201 names its task").to_string());
        }
        if status == StatusCode::CREATED && path == "/tasks/batch" {
            for id in answer["task_ids"].as_array().expect("a 201 lists its tasks") {
                acknowledged.insert(id.as_str().unwrap().to_string());
            }
        }
    }
    assert_eq!(requests, 600);
    eprintln!("{accepted} accepted, {refused} refused, {} tasks acknowledged", acknowledged.len());
    // The fuzz must reach the engine, not only bounce off validation.
    assert!(accepted >= 20 && refused >= 100, "{accepted} accepted, {refused} refused");
    assert!(acknowledged.len() >= 5, "some submits got through: {}", acknowledged.len());

    for task_id in &acknowledged {
        let response = client.get(format!("{base}/tasks/{task_id}")).bearer_auth(&token).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "acknowledged task {task_id} is retrievable");
    }
    let stats: Value =
        client.get(format!("{base}/stats")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    let stored: u64 = stats["scheduler"]["by_status"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(stored, acknowledged.len() as u64, "exactly the acknowledged tasks exist: {stats}");
    let agent: Value =
        client.get(format!("{base}/agents/fuzz-agent")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    if agent["agent_id"] == "fuzz-agent" {
        let held = agent["current_task_ids"].as_array().unwrap().len() as u64;
        assert_eq!(agent["in_flight"].as_u64().unwrap(), held, "in_flight equals the leases held");
    }
    server.stop().await;
}
