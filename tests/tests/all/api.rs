//! The REST API end to end: a real server on 127.0.0.1 port 0 (`aragora_cp::api::serve`), spoken to over HTTP.
//! Covers the guide's walk-through under both prefixes, the error format and its statuses, and authentication.

use std::time::{SystemTime, UNIX_EPOCH};

use aragora_cp::api::{PREFIXES, Permission};
use aragora_cp_tests::server::{TEST_SECRET, TestServer, read_until};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Sends `body` (JSON) with `token`, returning status, headers and the JSON body (`null` when empty).
async fn call(
    server: &TestServer,
    method: reqwest::Method,
    url: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let mut request = server.client.request(method, url).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request sent");
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body read");
    let value = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).expect("JSON body") };
    (status, headers, value)
}

async fn post(server: &TestServer, url: &str, token: &str, body: Value) -> (StatusCode, Value) {
    let (status, _, value) = call(server, reqwest::Method::POST, url, token, Some(body)).await;
    (status, value)
}

async fn get(server: &TestServer, url: &str, token: &str) -> (StatusCode, Value) {
    let (status, _, value) = call(server, reqwest::Method::GET, url, token, None).await;
    (status, value)
}

/// Asserts a problem+json refusal with `status`, naming `field` when given; returns its body.
fn assert_problem(status: StatusCode, headers: &reqwest::header::HeaderMap, body: &Value, expected: StatusCode) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(headers.get("content-type").unwrap(), "application/problem+json", "{body}");
    assert_eq!(body["status"], expected.as_u16(), "{body}");
    assert_eq!(body["error"], body["detail"], "{body}");
    for member in ["type", "title", "code"] {
        assert!(body[member].is_string(), "{member} missing in {body}");
    }
}

async fn register(server: &TestServer, base: &str, token: &str, agent_id: &str, session: Option<&str>) -> Value {
    let mut body = json!({"agent_id": agent_id, "capabilities": ["code"], "model": "m", "provider": "p"});
    if let Some(session) = session {
        body["session_id"] = json!(session);
    }
    let (status, agent) = post(server, &format!("{base}/agents"), token, body).await;
    assert_eq!(status, StatusCode::CREATED, "{agent}");
    agent
}

async fn submit(server: &TestServer, base: &str, token: &str) -> String {
    let body = json!({"task_type": "code", "payload": {"q": 1}, "required_capabilities": ["code"]});
    let (status, answer) = post(server, &format!("{base}/tasks"), token, body).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    answer["task_id"].as_str().expect("task_id").to_string()
}

async fn claim(server: &TestServer, base: &str, token: &str, agent_id: &str) -> Value {
    let body = json!({"agent_id": agent_id, "block_ms": 0});
    let (status, answer) = post(server, &format!("{base}/tasks/claim"), token, body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer
}

#[tokio::test]
async fn the_guide_walk_through_works_under_both_prefixes() {
    let server = TestServer::start().await;
    let admin = server.admin();
    for (n, prefix) in PREFIXES.iter().enumerate() {
        let base = server.url(prefix);
        let agent_id = format!("agent-{n}");
        let agent = register(&server, &base, &admin, &agent_id, None).await;
        assert!(agent["session_id"].is_string(), "{agent}");
        let task_id = submit(&server, &base, &admin).await;
        let claimed = claim(&server, &base, &admin, &agent_id).await;
        assert_eq!(claimed["task"]["task_id"], task_id.as_str(), "{claimed}");
        assert_eq!(claimed["tasks"].as_array().unwrap().len(), 1);
        let lease = claimed["task"]["lease_id"].as_str().expect("lease").to_string();
        let (status, done) = post(
            &server,
            &format!("{base}/tasks/{task_id}/complete"),
            &admin,
            json!({"lease_id": lease, "result": {"answer": 42}}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{done}");
        let (status, task) = get(&server, &format!("{base}/tasks/{task_id}?wait=1"), &admin).await;
        assert_eq!(status, StatusCode::OK, "{task}");
        assert_eq!(task["status"], "completed");
        assert_eq!(task["result"], json!({"answer": 42}));
        let (status, beat) = post(&server, &format!("{base}/agents/{agent_id}/heartbeat"), &admin, json!({})).await;
        assert_eq!(status, StatusCode::OK, "{beat}");
        assert!(beat["revoked"].is_array() && beat["heartbeat_interval"].is_number(), "{beat}");
        for path in ["/health", "/stats", "/plugins", "/agents", "/tasks?status=completed", "/policies/violations"] {
            let (status, body) = get(&server, &format!("{base}{path}"), &admin).await;
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn complete_and_heartbeat_with_no_body_and_no_content_type_work() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let base = server.api("");
    register(&server, &base, &admin, "bodiless", None).await;
    let task_id = submit(&server, &base, &admin).await;
    claim(&server, &base, &admin, "bodiless").await;
    for path in ["/agents/bodiless/heartbeat".to_string(), format!("/tasks/{task_id}/complete")] {
        let response = server.client.post(server.api(&path)).bearer_auth(&admin).send().await.expect("sent");
        assert_eq!(response.status(), StatusCode::OK, "{path}: {}", response.text().await.unwrap());
    }
    let (_, task) = get(&server, &server.api(&format!("/tasks/{task_id}")), &admin).await;
    assert_eq!(task["status"], "completed", "{task}");
    assert_eq!(task["unfenced"], true, "{task}");
    server.stop().await;
}

#[tokio::test]
async fn an_idempotent_replay_answers_200_with_the_first_task() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let send = || {
        server
            .client
            .post(server.api("/tasks"))
            .bearer_auth(&admin)
            .header("Idempotency-Key", "key-1")
            .json(&json!({"task_type": "code"}))
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    let replay = send().await.unwrap();
    assert_eq!(replay.status(), StatusCode::OK);
    assert_eq!(replay.headers().get("idempotent-replayed").unwrap(), "true");
    let replay: Value = replay.json().await.unwrap();
    assert_eq!(first["task_id"], replay["task_id"]);
    server.stop().await;
}

#[tokio::test]
async fn client_mistakes_are_problems_naming_the_field() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let post_json = |path: &str, body: Value| {
        let url = server.api(path);
        let admin = admin.clone();
        let client = server.client.clone();
        async move {
            let response = client.post(url).bearer_auth(admin).json(&body).send().await.unwrap();
            let (status, headers) = (response.status(), response.headers().clone());
            (status, headers, response.json::<Value>().await.unwrap())
        }
    };
    let (status, headers, body) = post_json("/tasks", json!({"payload": {}})).await;
    assert_problem(status, &headers, &body, StatusCode::BAD_REQUEST);
    assert_eq!(body["field"], "task_type", "{body}");
    let (status, headers, body) = post_json("/tasks", json!({"task_type": "x", "priority": "asap"})).await;
    assert_problem(status, &headers, &body, StatusCode::BAD_REQUEST);
    assert_eq!(body["field"], "priority", "{body}");
    let (status, headers, body) = post_json("/tasks", json!({"task_type": "x", "colour": "red"})).await;
    assert_problem(status, &headers, &body, StatusCode::BAD_REQUEST);
    assert_eq!(body["field"], "colour", "{body}");
    let (status, headers, body) = post_json("/tasks", json!({"task_type": "x", "timeout_seconds": 0})).await;
    assert_problem(status, &headers, &body, StatusCode::BAD_REQUEST);
    assert_eq!(body["field"], "timeout_seconds", "{body}");

    let (status, headers, body) =
        call(&server, reqwest::Method::GET, &server.api("/tasks?status=finished"), &admin, None).await;
    assert_problem(status, &headers, &body, StatusCode::BAD_REQUEST);
    assert_eq!(body["field"], "status", "{body}");
    let missing = format!("/tasks/task_{}", "0".repeat(32));
    for path in [missing.as_str(), "/tasks/nonsense", "/agents/nobody", "/health/nobody", "/plugins/nothing"] {
        let (status, headers, body) = call(&server, reqwest::Method::GET, &server.api(path), &admin, None).await;
        assert_problem(status, &headers, &body, StatusCode::NOT_FOUND);
    }

    let response = server
        .client
        .post(server.api("/tasks"))
        .bearer_auth(&admin)
        .header("content-type", "text/plain")
        .body("task_type=code")
        .send()
        .await
        .unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    assert_problem(status, &headers, &response.json().await.unwrap(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let response = server
        .client
        .post(server.api("/tasks"))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body("{\"task_type\": ")
        .send()
        .await
        .unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    assert_problem(status, &headers, &response.json().await.unwrap(), StatusCode::BAD_REQUEST);

    let (status, headers, body) = call(&server, reqwest::Method::DELETE, &server.api("/tasks"), &admin, None).await;
    assert_problem(status, &headers, &body, StatusCode::METHOD_NOT_ALLOWED);

    let huge = json!({"task_type": "x", "payload": {"blob": "x".repeat(3 * 1024 * 1024)}});
    let (status, headers, body) = post_json("/tasks", huge).await;
    assert_problem(status, &headers, &body, StatusCode::PAYLOAD_TOO_LARGE);

    // A component over PLUGIN_MAX_COMPONENT_MIB (32) is refused by the handler; a body past what even a base64
    // upload of that size needs (about 43 MiB), by the framework while it buffers the body: the same shape.
    for mib in [33, 44] {
        let response = server
            .client
            .put(server.api("/plugins/oversized"))
            .bearer_auth(&admin)
            .header("content-type", "application/wasm")
            .body(vec![0u8; mib * 1024 * 1024])
            .send()
            .await
            .unwrap();
        let (status, headers) = (response.status(), response.headers().clone());
        assert_problem(status, &headers, &response.json().await.unwrap(), StatusCode::PAYLOAD_TOO_LARGE);
    }
    server.stop().await;
}

#[tokio::test]
async fn a_report_on_a_revoked_lease_is_409_lease_lost() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let base = server.api("");
    register(&server, &base, &admin, "restarter", Some("session-1")).await;
    let task_id = submit(&server, &base, &admin).await;
    let claimed = claim(&server, &base, &admin, "restarter").await;
    let lease = claimed["task"]["lease_id"].as_str().unwrap().to_string();
    register(&server, &base, &admin, "restarter", Some("session-2")).await;
    let (status, headers, body) = call(
        &server,
        reqwest::Method::POST,
        &server.api(&format!("/tasks/{task_id}/complete")),
        &admin,
        Some(json!({"lease_id": lease})),
    )
    .await;
    assert_problem(status, &headers, &body, StatusCode::CONFLICT);
    assert_eq!(body["code"], "lease_lost", "{body}");
    server.stop().await;
}

/// An agent whose lease was revoked and whose task another agent now holds completes late, asking for its next
/// task in the same call: the answer is the stale lease's 409, not a 403 for "acting for" the task's new holder
/// (found by the chaos test: a complete retried after a cut connection, once the task had moved on).
#[tokio::test]
async fn a_late_complete_with_claim_next_after_the_task_moved_on_is_409_lease_lost() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let base = server.api("");
    register(&server, &base, &admin, "late", Some("session-1")).await;
    register(&server, &base, &admin, "other", Some("session-1")).await;
    let task_id = submit(&server, &base, &admin).await;
    let claimed = claim(&server, &base, &admin, "late").await;
    let lease = claimed["task"]["lease_id"].as_str().unwrap().to_string();
    // A new session revokes the old one's lease and requeues the task; the other agent takes it.
    register(&server, &base, &admin, "late", Some("session-2")).await;
    let taken = claim(&server, &base, &admin, "other").await;
    assert_eq!(taken["task"]["task_id"], task_id.as_str(), "{taken}");
    let late = server.token("agent:late", &[Permission::Agents, Permission::Tasks]);
    for token in [&late, &admin] {
        let (status, headers, body) = call(
            &server,
            reqwest::Method::POST,
            &server.api(&format!("/tasks/{task_id}/complete")),
            token,
            Some(json!({"lease_id": lease, "result": {}, "claim_next": {"block_ms": 0}})),
        )
        .await;
        assert_problem(status, &headers, &body, StatusCode::CONFLICT);
        assert_eq!(body["code"], "lease_lost", "{body}");
    }
    let task: Value = server
        .client
        .get(server.api(&format!("/tasks/{task_id}")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!((&task["status"], &task["assigned_agent"]), (&json!("claimed"), &json!("other")), "{task}");
    server.stop().await;
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let server = TestServer::start().await;
    for url in [server.url("/livez"), server.api("/stats"), server.url("/nowhere")] {
        let response = server.client.get(&url).send().await.unwrap();
        assert!(response.headers().get("x-request-id").is_some(), "{url}");
    }
    let response = server.client.get(server.url("/livez")).header("x-request-id", "mine-1").send().await.unwrap();
    assert_eq!(response.headers().get("x-request-id").unwrap(), "mine-1");
    server.stop().await;
}

/// Sends `body` as it is (JSON text, not re-encoded), returning the status and the answer's text.
async fn send_text(
    server: &TestServer,
    method: reqwest::Method,
    url: &str,
    token: &str,
    body: &str,
) -> (StatusCode, String) {
    let mut request = server.client.request(method, url).bearer_auth(token);
    if !body.is_empty() {
        request = request.header("content-type", "application/json").body(body.to_string());
    }
    let response = request.send().await.expect("request sent");
    (response.status(), response.text().await.expect("body read"))
}

#[tokio::test]
async fn a_payload_and_a_result_are_answered_as_they_were_sent() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let base = server.api("");
    register(&server, &base, &admin, "worker", None).await;
    let payload = r#"{"zeta": 1,  "alpha": [true, {"b": null, "a": "é"}]}"#;
    let submit = format!(r#"{{"task_type": "code", "payload": {payload}}}"#);
    let (status, answer) = send_text(&server, reqwest::Method::POST, &server.api("/tasks"), &admin, &submit).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let task_id = serde_json::from_str::<Value>(&answer).unwrap()["task_id"].as_str().unwrap().to_string();
    // What a parsed value could not hold is refused as it was: a number out of range, a lone surrogate.
    for bad in
        [r#"{"task_type": "code", "payload": {"n": 1e400}}"#, r#"{"task_type": "code", "payload": {"s": "\ud800"}}"#]
    {
        let (status, answer) = send_text(&server, reqwest::Method::POST, &server.api("/tasks"), &admin, bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert!(answer.contains("payload"), "{answer}");
    }
    let claimed = claim(&server, &base, &admin, "worker").await;
    assert_eq!(claimed["task"]["task_id"], task_id.as_str(), "{claimed}");
    let result = r#"{"verdict": "ok",  "notes": []}"#;
    let complete_url = server.api(&format!("/tasks/{task_id}/complete"));
    let with_result = format!(r#"{{"agent_id": "worker", "result": {result}}}"#);
    // The report, the same report again (accepted), another result (a conflict).
    let other = r#"{"agent_id": "worker", "result": {"verdict": "no"}}"#;
    for (body, expected) in
        [(&with_result[..], StatusCode::OK), (&with_result, StatusCode::OK), (other, StatusCode::CONFLICT)]
    {
        let (status, answer) = send_text(&server, reqwest::Method::POST, &complete_url, &admin, body).await;
        assert_eq!(status, expected, "{answer}");
    }
    let task_url = server.api(&format!("/tasks/{task_id}"));
    let (status, text) = send_text(&server, reqwest::Method::GET, &task_url, &admin, "").await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(text.contains(&format!(r#""payload":{payload}"#)), "{text}");
    assert!(text.contains(&format!(r#""result":{result}"#)), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn an_audited_call_is_recorded_under_the_request_id_its_answer_carries() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let task = json!({"task_type": "code", "required_capabilities": ["code"]});
    let mut answered = Vec::new();
    for given in [None, Some("mine-2")] {
        let mut request = server.client.post(server.api("/tasks")).bearer_auth(&admin).json(&task);
        if let Some(given) = given {
            request = request.header("x-request-id", given);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let id = response.headers().get("x-request-id").unwrap().to_str().unwrap().to_string();
        match given {
            Some(given) => assert_eq!(id, given),
            // A fresh id: sixteen hex digits.
            None => assert!(id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}"),
        }
        answered.push(id);
    }
    let (status, page) = get(&server, &server.api("/audit"), &admin).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let mut recorded: Vec<String> =
        page["entries"].as_array().unwrap().iter().map(|e| e["request_id"].as_str().unwrap().to_string()).collect();
    recorded.reverse();
    assert_eq!(recorded, answered, "{page}");
    server.stop().await;
}

#[tokio::test]
async fn a_method_a_route_does_not_take_is_counted_under_the_route_template() {
    let server = TestServer::start().await;
    let response = server.client.patch(server.api("/tasks/claim")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    let text = server.client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let series =
        "aragora_cp_http_requests_total{method=\"PATCH\",route=\"/api/v1/control-plane/tasks/claim\",status=\"405\"} 1";
    assert!(text.contains(series), "{text}");
    // Routes outside the API (probes, the metrics themselves) are not counted.
    assert!(!text.contains("route=\"/livez\"") && !text.contains("route=\"/metrics\""), "{text}");
    // Nor is a 405 audited: nothing was called.
    let admin = server.admin();
    let (status, _, _) = call(&server, reqwest::Method::POST, &server.api("/audit"), &admin, Some(json!({}))).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, page) = get(&server, &server.api("/audit"), &admin).await;
    assert_eq!((status, &page["total"]), (StatusCode::OK, &json!(0)), "{page}");
    server.stop().await;
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn sign(algorithm: jsonwebtoken::Algorithm, claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(algorithm),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(TEST_SECRET),
    )
    .unwrap()
}

#[tokio::test]
async fn requests_without_a_valid_token_are_401_with_a_challenge() {
    let server = TestServer::start().await;
    let stats = server.api("/stats");
    let response = server.client.get(&stats).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.headers().get("www-authenticate").unwrap().to_str().unwrap().starts_with("Bearer"));

    let all = json!(["controlplane:admin"]);
    let expired = sign(jsonwebtoken::Algorithm::HS256, &json!({"sub": "x", "exp": now() - 3600, "permissions": all}));
    let wrong_algorithm =
        sign(jsonwebtoken::Algorithm::HS384, &json!({"sub": "x", "exp": now() + 3600, "permissions": all}));
    let no_exp = sign(jsonwebtoken::Algorithm::HS256, &json!({"sub": "x", "permissions": all}));
    let encode = |v: Value| {
        use std::fmt::Write;
        // base64url without padding, by hand: the tests need no base64 crate for one forged token.
        let bytes = v.to_string().into_bytes();
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                let _ = write!(out, "{}", alphabet[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    };
    let none = format!(
        "{}.{}.",
        encode(json!({"alg": "none", "typ": "JWT"})),
        encode(json!({"sub": "x", "exp": now() + 3600, "permissions": all}))
    );
    for token in [expired, wrong_algorithm, no_exp, none, "garbage".to_string()] {
        let response = server.client.get(&stats).bearer_auth(&token).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{token}");
        assert!(response.headers().get("www-authenticate").is_some());
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "unauthorized", "{body}");
    }
    let scoped =
        sign(jsonwebtoken::Algorithm::HS256, &json!({"sub": "x", "exp": now() - 30, "scope": "controlplane:read"}));
    let response = server.client.get(&stats).bearer_auth(&scoped).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "expired within the leeway, scope as a string");
    for open in ["/livez", "/readyz"] {
        assert_eq!(server.client.get(server.url(open)).send().await.unwrap().status(), StatusCode::OK);
    }
    server.stop().await;
}

#[tokio::test]
async fn permissions_and_agent_tokens_bound_what_a_caller_may_do() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let base = server.api("");
    let reader = server.token("reader", &[Permission::Read]);
    let (status, body) = post(&server, &server.api("/tasks"), &reader, json!({"task_type": "code"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(get(&server, &server.api("/stats"), &reader).await.0, StatusCode::OK);

    let agent_a = server.token("agent:a", &[Permission::Agents, Permission::Tasks, Permission::Read]);
    register(&server, &base, &agent_a, "a", None).await;
    register(&server, &base, &admin, "b", None).await;
    let (status, body) = post(&server, &server.api("/agents"), &agent_a, json!({"agent_id": "b"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = post(&server, &server.api("/agents/b/heartbeat"), &agent_a, json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = post(&server, &server.api("/tasks/claim"), &agent_a, json!({"agent_id": "b"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = post(&server, &server.api("/tasks/claim"), &admin, json!({"block_ms": 0})).await;
    assert_eq!((status, body["field"].as_str()), (StatusCode::BAD_REQUEST, Some("agent_id")), "{body}");
    let (status, body) = post(&server, &server.api("/tasks/claim"), &agent_a, json!({"block_ms": 0})).await;
    assert_eq!(status, StatusCode::OK, "an agent token claims as its agent by default: {body}");

    // b holds a task: a may neither read nor complete it; the submitter may cancel it, another submitter not.
    let submitter = server.token("svc-1", &[Permission::Tasks, Permission::Read]);
    let task_id = submit(&server, &base, &submitter).await;
    claim(&server, &base, &admin, "b").await;
    let (status, body) = get(&server, &server.api(&format!("/tasks/{task_id}")), &agent_a).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) =
        post(&server, &server.api(&format!("/tasks/{task_id}/complete")), &agent_a, json!({"agent_id": "b"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = post(&server, &server.api(&format!("/tasks/{task_id}/complete")), &agent_a, json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "a's agent fence does not hold b's task: {body}");
    let other = server.token("svc-2", &[Permission::Tasks]);
    let (status, body) = post(&server, &server.api(&format!("/tasks/{task_id}/cancel")), &other, json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = post(&server, &server.api(&format!("/tasks/{task_id}/cancel")), &submitter, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "cancelled");
    server.stop().await;
}

/// A client that resumes far behind (more events since its id than one replay page holds, as after a long
/// disconnection on a busy fleet) still receives every event, in order: the replay goes on page by page. It used
/// to stop after the first page and go live, silently skipping the rest (found by the chaos test).
#[tokio::test]
async fn a_resume_further_behind_than_one_replay_page_misses_nothing() {
    const TASKS: usize = aragora_cp::api::events::MAX_REPLAY + 2_500;
    let config = aragora_cp::config::Config { event_buffer: TASKS * 2, ..Default::default() };
    let server = TestServer::start_with(config).await;
    let admin = server.admin();
    let base = server.api("");
    let submitted = server.api("/events?types=task_submitted");
    let mut stream = server.client.get(&submitted).bearer_auth(&admin).send().await.unwrap();
    let first = submit(&server, &base, &admin).await;
    let (_, resume_id) = count_events_until(&mut stream, &first, 1).await;
    let mut last = String::new();
    for batch in 0..TASKS.div_ceil(1000) {
        let count = (TASKS - batch * 1000).min(1000);
        let tasks: Vec<Value> = (0..count).map(|_| json!({"task_type": "behind"})).collect();
        let (status, body) = post(&server, &server.api("/tasks/batch"), &admin, json!({"tasks": tasks})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        last = body["task_ids"].as_array().unwrap().last().unwrap().as_str().unwrap().to_string();
    }
    // Once the live stream carried the last event, a new connection's live feed starts after all of them: only
    // the replay can deliver them.
    assert_eq!(count_events_until(&mut stream, &last, TASKS).await.0, TASKS);
    drop(stream);

    let mut resumed =
        server.client.get(&submitted).bearer_auth(&admin).header("Last-Event-ID", &resume_id).send().await.unwrap();
    let (received, _) = count_events_until(&mut resumed, &last, TASKS).await;
    assert_eq!(received, TASKS, "every event after the resume point, once");
    server.stop().await;
}

/// A client may resume from a point this server's event reader has not reached yet: on a shared store the replay
/// reads the store's buffer directly, while the reader that feeds the live stream may be reconnecting. Once the
/// reader catches up, the events before the resume point must not come again on the live stream (they did: the
/// stream skipped only the ids its own replay held, and the chaos test's lease oracle saw grants twice).
#[tokio::test]
async fn a_resume_ahead_of_a_lagging_event_reader_gets_no_event_twice() {
    // The test refuses new connections on its Redis for a while.
    let OnOwnRedis { server, admin, base, submitted, mut control, stream, first_id: resume_id, _redis, .. } =
        OnOwnRedis::start("lagging").await;
    drop(stream);

    let away = ReaderAway::hold(&mut control).await;
    let missed = [submit(&server, &base, &admin).await, submit(&server, &base, &admin).await];
    away.assert_still_away(&mut control).await;

    // Replayed from the store while the reader is away; then a new connection resumes after the last of them.
    let replayed = server.client.get(&submitted).bearer_auth(&admin).header("Last-Event-ID", &resume_id);
    let mut replayed = replayed.send().await.unwrap();
    let (count, ahead_id) = count_events_until(&mut replayed, &missed[1], 2).await;
    assert_eq!(count, 2, "the replay holds the two events the reader missed");
    drop(replayed);
    let mut resumed =
        server.client.get(&submitted).bearer_auth(&admin).header("Last-Event-ID", &ahead_id).send().await.unwrap();

    // The reader comes back and fans out what it missed; the resumed stream must go on with the next event only.
    away.let_back(&mut control).await;
    let next = submit(&server, &base, &admin).await;
    let mut seen = String::new();
    let seen = read_until(&mut resumed, &mut seen, &next).await;
    for task in &missed {
        assert!(!seen.contains(task.as_str()), "{task} came again after the resume point: {seen}");
    }
    server.stop().await;
}

/// A Redis event reader kept away from the stream until the entries it had not read were trimmed (what the stream's
/// cap does to a reader that falls too far behind) must not let an SSE stream go on as if nothing was missed: the
/// reader counts the gap, the event pump ends every stream, and the client, resuming from its last id, is told
/// `reset`. The stream used to go on silently with the oldest entry kept.
#[tokio::test]
async fn a_stream_whose_redis_event_reader_fell_behind_the_cap_ends_so_the_client_resumes() {
    let OnOwnRedis { server, admin, base, submitted, prefix, mut control, mut stream, first_id: resume_id, _redis } =
        OnOwnRedis::start("trimmed").await;

    let away = ReaderAway::hold(&mut control).await;
    let unread = [submit(&server, &base, &admin).await, submit(&server, &base, &admin).await];
    let kept = submit(&server, &base, &admin).await;
    // Exactly what the cap would leave of the stream here: its newest entry.
    let _: i64 = redis::cmd("XTRIM")
        .arg(format!("{prefix}{{main}}:events"))
        .arg("MAXLEN")
        .arg(1)
        .query_async(&mut control)
        .await
        .unwrap();
    away.assert_still_away(&mut control).await;
    away.let_back(&mut control).await;

    let (ended, text) = read_to_the_end(&mut stream, 20).await;
    assert!(ended, "the stream went on past the trimmed events: {text}");
    for task in unread.iter().chain([&kept]) {
        assert!(!text.contains(task.as_str()), "{task} went out on a stream that missed events before it: {text}");
    }
    // What the client does next, for completeness: its last id is gone with the trimmed entries.
    let request = server.client.get(&submitted).bearer_auth(&admin).header("Last-Event-ID", &resume_id);
    let mut resumed = request.send().await.unwrap();
    let mut text = String::new();
    read_until(&mut resumed, &mut text, "event: reset").await;
    server.stop().await;
}

/// The Redis event reader judges gaps by the events' numbers, not by what it can decode: an entry it cannot read (a
/// newer server's event type, in a rolling upgrade) keeps the numbering and ends no stream, while numbers going
/// back (a Redis that lost the events it had sent: a restart that kept less, a failover to a replica behind) end
/// every stream as a gap does.
#[tokio::test]
async fn the_redis_event_reader_counts_a_gap_by_the_numbers_not_by_what_it_can_read() {
    let OnOwnRedis { server, admin, base, prefix, mut control, mut stream, _redis, .. } =
        OnOwnRedis::start("numbers").await;
    let (events, count) = (format!("{prefix}{{main}}:events"), format!("{prefix}{{main}}:event-count"));

    let n: u64 = redis::cmd("INCR").arg(&count).query_async(&mut control).await.unwrap();
    let _: String = redis::cmd("XADD")
        .arg(&events)
        .arg("*")
        .arg("n")
        .arg(n)
        .arg("type")
        .arg("task_teleported")
        .arg("data")
        .arg("{}")
        .query_async(&mut control)
        .await
        .unwrap();
    let after_unreadable = submit(&server, &base, &admin).await;
    count_events_until(&mut stream, &after_unreadable, 1).await;

    // Redis lost the events it had sent and numbers again from before them. (The stream is kept: a new one could
    // start within the millisecond of the last id read, below it, and the reader would not see its first entry.)
    let _: () = redis::cmd("SET").arg(&count).arg(1).query_async(&mut control).await.unwrap();
    let renumbered = submit(&server, &base, &admin).await;
    let (ended, text) = read_to_the_end(&mut stream, 20).await;
    assert!(ended, "the stream went on past the events Redis lost: {text}");
    assert!(!text.contains(renumbered.as_str()), "an event from past the gap went out: {text}");
    server.stop().await;
}

/// A reader that starts on an empty stream whose counter is not zero (the stream deleted by hand, or lost while the
/// counter was kept) numbers on from the counter: the first event it reads is no gap, and no stream ends for it.
#[tokio::test]
async fn a_redis_event_reader_starting_on_an_empty_stream_numbers_on_from_the_counter() {
    use aragora_cp::store::{RedisStore, Store};
    use aragora_cp_tests::redis_server::{RedisServer, unique_prefix};
    let redis = RedisServer::start();
    let prefix = unique_prefix("empty-start");
    let mut control = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: () =
        redis::cmd("SET").arg(format!("{prefix}{{main}}:event-count")).arg(41).query_async(&mut control).await.unwrap();
    let config = aragora_cp::config::Config::default();
    let store: std::sync::Arc<dyn Store> =
        std::sync::Arc::new(RedisStore::connect(&redis.url(), &prefix, config.store_config()).await.expect("redis"));
    let server = TestServer::start_with_store(config, store).await;
    let (admin, base) = (server.admin(), server.api(""));
    let mut stream =
        server.client.get(server.api("/events?types=task_submitted")).bearer_auth(&admin).send().await.unwrap();

    let first = submit(&server, &base, &admin).await;
    count_events_until(&mut stream, &first, 1).await;
    let second = submit(&server, &base, &admin).await;
    count_events_until(&mut stream, &second, 1).await;
    server.stop().await;
}

/// A server on a Redis of its own (the tests that use it refuse connections on it, trim its stream or renumber its
/// events), a connection to that Redis, and a stream of `task_submitted` events that carried one task's.
struct OnOwnRedis {
    server: TestServer,
    admin: String,
    base: String,
    /// The stream's URL.
    submitted: String,
    /// The store's keys start with it.
    prefix: String,
    control: redis::aio::MultiplexedConnection,
    stream: reqwest::Response,
    /// The id of the one event the stream carried.
    first_id: String,
    /// Kept for the test's length (the test stops the server before it ends).
    _redis: aragora_cp_tests::redis_server::RedisServer,
}

impl OnOwnRedis {
    async fn start(name: &str) -> OnOwnRedis {
        use aragora_cp::store::{RedisStore, Store};
        use aragora_cp_tests::redis_server::{RedisServer, unique_prefix};
        let redis = RedisServer::start();
        let config = aragora_cp::config::Config::default();
        let prefix = unique_prefix(name);
        let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(
            RedisStore::connect(&redis.url(), &prefix, config.store_config()).await.expect("redis"),
        );
        let server = TestServer::start_with_store(config, store).await;
        let (admin, base, submitted) = (server.admin(), server.api(""), server.api("/events?types=task_submitted"));
        let control = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
        let mut stream = server.client.get(&submitted).bearer_auth(&admin).send().await.unwrap();
        let first = submit(&server, &base, &admin).await;
        let (_, first_id) = count_events_until(&mut stream, &first, 1).await;
        OnOwnRedis { server, admin, base, submitted, prefix, control, stream, first_id, _redis: redis }
    }
}

/// Reads an SSE response until the server ends it (`true`) or `secs` pass (`false`); what came meanwhile.
async fn read_to_the_end(response: &mut reqwest::Response, secs: u64) -> (bool, String) {
    let mut text = String::new();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(secs), async {
        while let Some(chunk) = response.chunk().await.expect("stream read") {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    (ended.is_ok(), text)
}

/// The event reader of a Redis store held away from its stream: its connection killed, and no new connection let
/// in (`maxclients` at the count of the others). The server's command connection stays open, so submits and
/// replays go on.
struct ReaderAway {
    limit: String,
    reader_id: String,
}

impl ReaderAway {
    async fn hold(control: &mut redis::aio::MultiplexedConnection) -> ReaderAway {
        let (_, limit): (String, String) =
            redis::cmd("CONFIG").arg("GET").arg("maxclients").query_async(control).await.unwrap();
        let clients: String = redis::cmd("INFO").arg("clients").query_async(control).await.unwrap();
        let connected: usize = clients
            .lines()
            .find_map(|line| line.strip_prefix("connected_clients:"))
            .and_then(|n| n.trim().parse().ok())
            .expect("connected_clients");
        let _: () =
            redis::cmd("CONFIG").arg("SET").arg("maxclients").arg(connected - 1).query_async(control).await.unwrap();
        let list: String = redis::cmd("CLIENT").arg("LIST").query_async(control).await.unwrap();
        let reader = list.lines().find(|line| line.contains("cmd=xread")).expect("the event reader's connection");
        let reader_id = reader.split(' ').find_map(|field| field.strip_prefix("id=")).unwrap().to_string();
        let _: () = redis::cmd("CLIENT").arg("KILL").arg("ID").arg(&reader_id).query_async(control).await.unwrap();
        ReaderAway { limit, reader_id }
    }

    /// The test means nothing if the reader came back meanwhile.
    async fn assert_still_away(&self, control: &mut redis::aio::MultiplexedConnection) {
        let list: String = redis::cmd("CLIENT").arg("LIST").query_async(control).await.unwrap();
        assert!(!list.contains("cmd=xread"), "the reader must stay away for the test to mean anything: {list}");
    }

    /// Lets connections in again and waits until the reader reads the stream on a new one.
    async fn let_back(self, control: &mut redis::aio::MultiplexedConnection) {
        let _: () =
            redis::cmd("CONFIG").arg("SET").arg("maxclients").arg(&self.limit).query_async(control).await.unwrap();
        let back = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let list: String = redis::cmd("CLIENT").arg("LIST").query_async(control).await.unwrap();
            if list.lines().any(|line| line.contains("cmd=xread") && !line.contains(&format!("id={} ", self.reader_id)))
            {
                return;
            }
            assert!(tokio::time::Instant::now() < back, "the event reader reconnects: {list}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

/// When this server's event pump falls behind the store (more events at once than its channel holds), the live
/// stream has missed events it cannot name: the connection ends, so the client resumes from its last id and the
/// store's buffer says what it missed (here, a `reset`: the buffer is as small as the channel). It used to go on
/// silently past the gap (caught every time). That no event from past the gap goes out first is asserted too, but a
/// build that sent one would fail only now and then: which branch of the stream's `select!` runs first is random.
#[tokio::test]
async fn a_stream_whose_event_pump_fell_behind_ends_so_the_client_resumes() {
    let config = aragora_cp::config::Config { event_buffer: 16, ..Default::default() };
    // A current-thread runtime (this test's): the pump cannot run while one batch's events go out.
    let server = TestServer::start_with(config).await;
    let admin = server.admin();
    let base = server.api("");
    let submitted = server.api("/events?types=task_submitted");
    let mut stream = server.client.get(&submitted).bearer_auth(&admin).send().await.unwrap();
    let first = submit(&server, &base, &admin).await;
    let (_, resume_id) = count_events_until(&mut stream, &first, 1).await;
    let tasks: Vec<Value> = (0..200).map(|_| json!({"task_type": "flood"})).collect();
    let (status, body) = post(&server, &server.api("/tasks/batch"), &admin, json!({"tasks": tasks})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (ended, text) = read_to_the_end(&mut stream, 10).await;
    assert!(ended, "the stream went on past the gap: {text}");
    assert!(!text.contains("id: "), "an event from past the gap went out before the stream ended: {text}");
    // Nothing went out after the first event: the client resumes from it, and the store no longer holds it.
    let request = server.client.get(&submitted).bearer_auth(&admin).header("Last-Event-ID", &resume_id);
    let mut resumed = request.send().await.unwrap();
    let mut text = String::new();
    read_until(&mut resumed, &mut text, "event: reset").await;
    server.stop().await;
}

/// Reads SSE messages until one mentions `needle`; returns how many were read and the last id. Fails on a
/// `reset`, or when `expected` messages do not arrive within 30 s.
async fn count_events_until(response: &mut reqwest::Response, needle: &str, expected: usize) -> (usize, String) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let (mut received, mut buffer) = (0usize, String::new());
    loop {
        let chunk = match tokio::time::timeout_at(deadline, response.chunk()).await {
            Ok(chunk) => chunk.expect("stream read").expect("stream still open"),
            Err(_) => panic!("{received} of {expected} events, then nothing until the deadline"),
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            assert!(!block.contains("event: reset"), "a reset after {received} events: {block}");
            if let Some(id) = block.lines().find_map(|line| line.strip_prefix("id: ")) {
                received += 1;
                if block.contains(needle) {
                    return (received, id.to_string());
                }
            }
        }
    }
}

#[tokio::test]
async fn events_stream_with_ids_filters_by_type_and_resumes_after_an_id() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let base = server.api("");
    let mut filtered =
        server.client.get(server.api("/events?types=task_submitted")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(filtered.status(), StatusCode::OK);
    assert!(filtered.headers().get("content-type").unwrap().to_str().unwrap().starts_with("text/event-stream"));
    register(&server, &base, &admin, "watched", None).await;
    let first = submit(&server, &base, &admin).await;
    let mut text = String::new();
    let seen = read_until(&mut filtered, &mut text, &first).await;
    assert!(seen.contains("event: task_submitted"), "{seen}");
    assert!(!seen.contains("agent_registered"), "the filter lets only task_submitted through: {seen}");
    let id = seen
        .lines()
        .find_map(|line| line.strip_prefix("id: ").or_else(|| line.strip_prefix("id:")))
        .expect("an id line")
        .trim()
        .to_string();
    drop(filtered);

    // Resume after the first submit: the second one is replayed from the store's buffer.
    let second = submit(&server, &base, &admin).await;
    let mut resumed =
        server.client.get(server.api("/events")).bearer_auth(&admin).header("Last-Event-ID", &id).send().await.unwrap();
    let mut text = String::new();
    let seen = read_until(&mut resumed, &mut text, &second).await;
    assert!(!seen.contains(&first), "nothing before the resume point is replayed: {seen}");
    drop(resumed);

    // An id the store no longer holds, or never issued (a typo, another store's clock, the future): a reset, then
    // every live event.
    for unknown in ["1-0", "99999999999999-0"] {
        let request = server.client.get(server.api("/events")).bearer_auth(&admin).header("Last-Event-ID", unknown);
        let mut stream = request.send().await.unwrap();
        let mut text = String::new();
        read_until(&mut stream, &mut text, "event: reset").await;
        let next = submit(&server, &base, &admin).await;
        read_until(&mut stream, &mut text, &next).await;
    }

    let response = server.client.get(server.api("/events?types=nonsense")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    server.stop().await;
}

#[tokio::test]
async fn metrics_are_open_prometheus_text_labelled_by_route_template() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let base = server.api("");
    register(&server, &base, &admin, "counted", None).await;
    let task_id = submit(&server, &base, &admin).await;
    assert_eq!(get(&server, &server.api(&format!("/tasks/{task_id}")), &admin).await.0, StatusCode::OK);
    let response = server.client.get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get("content-type").unwrap().to_str().unwrap().starts_with("text/plain"));
    let text = response.text().await.unwrap();
    assert!(
        text.contains(
            "aragora_cp_http_requests_total{method=\"GET\",route=\"/api/v1/control-plane/tasks/{task_id}\",status=\"200\"} 1"
        ),
        "{text}"
    );
    assert!(!text.contains(&task_id), "no task ids in labels: {text}");
    let histogram = "aragora_cp_http_request_duration_seconds_bucket{method=\"GET\",\
                     route=\"/api/v1/control-plane/tasks/{task_id}\",status=\"200\",le=\"+Inf\"} 1";
    assert!(text.contains(histogram), "{text}");
    for line in [
        "aragora_cp_agents{status=\"ready\"} 1",
        "aragora_cp_tasks{status=\"pending\"} 1",
        "aragora_cp_queue_depth{priority=\"normal\"} 1",
        "aragora_cp_claims_waiting 0",
        "aragora_cp_plugin_calls_total{plugin=\"least_loaded\",kind=\"strategy\"}",
    ] {
        assert!(text.contains(line), "{line} missing in {text}");
    }
    server.stop().await;
}

#[tokio::test]
async fn complete_with_claim_next_hands_over_the_next_task() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let base = server.api("");
    register(&server, &base, &admin, "worker", None).await;
    let first = submit(&server, &base, &admin).await;
    let second = submit(&server, &base, &admin).await;
    let claimed = claim(&server, &base, &admin, "worker").await;
    assert_eq!(claimed["task"]["task_id"], first.as_str());
    let body = json!({"lease_id": claimed["task"]["lease_id"], "result": {}, "claim_next": {"block_ms": 0}});
    let (status, answer) = post(&server, &server.api(&format!("/tasks/{first}/complete")), &admin, body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["completed"], true);
    assert_eq!(answer["task"]["status"], "completed");
    assert_eq!(answer["next"]["task_id"], second.as_str(), "{answer}");
    let body = json!({"claim_next": {"block_ms": 60_001}});
    let (status, answer) = post(&server, &server.api(&format!("/tasks/{second}/complete")), &admin, body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["field"], "claim_next.block_ms");
    server.stop().await;
}

#[tokio::test]
async fn dot_and_dot_dot_are_not_agent_ids() {
    let server = TestServer::start().await;
    let admin = server.admin();
    for id in [".", ".."] {
        let body = json!({"agent_id": id, "capabilities": ["code"]});
        let (status, headers, problem) =
            call(&server, reqwest::Method::POST, &server.api("/agents"), &admin, Some(body)).await;
        assert_problem(status, &headers, &problem, StatusCode::BAD_REQUEST);
        assert_eq!(problem["field"], "agent_id", "{problem}");
    }
    let (status, _) =
        post(&server, &server.api("/agents"), &admin, json!({"agent_id": "a.b", "capabilities": ["code"]})).await;
    assert_eq!(status, StatusCode::CREATED, "dots inside an id stay allowed");
    server.stop().await;
}

#[tokio::test]
async fn metrics_series_stay_bounded_whatever_task_types_and_methods_clients_send() {
    let server = TestServer::start().await;
    let admin = server.admin();
    for batch in 0..4 {
        let tasks: Vec<Value> = (0..250).map(|i| json!({"task_type": format!("type-{batch}-{i}")})).collect();
        let (status, body) = post(&server, &server.api("/tasks/batch"), &admin, json!({"tasks": tasks})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    for method in ["FOO", "BAR", "BAZ"] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let _ = server.client.request(method, server.api("/tasks")).bearer_auth(&admin).send().await.unwrap();
    }
    let text = server.client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let by_type = text.lines().filter(|l| l.starts_with("aragora_cp_tasks_by_type{")).count();
    assert_eq!(by_type, 51, "the 50 most numerous types and `other`");
    assert!(text.contains("aragora_cp_tasks_by_type{task_type=\"other\"} 950"), "{text}");
    assert!(!text.contains("method=\"FOO\""), "a made-up method gets no series of its own");
    server.stop().await;
}

#[tokio::test]
async fn an_operator_can_require_every_report_to_be_fenced() {
    let config = aragora_cp::config::Config { allow_unfenced_reports: false, ..Default::default() };
    let server = TestServer::start_with(config).await;
    let admin = server.admin();
    let base = server.api("");
    register(&server, &base, &admin, "fenced", None).await;
    let task_id = submit(&server, &base, &admin).await;
    let claimed = claim(&server, &base, &admin, "fenced").await;
    let complete = server.api(&format!("/tasks/{task_id}/complete"));
    let (status, headers, body) = call(&server, reqwest::Method::POST, &complete, &admin, Some(json!({}))).await;
    assert_problem(status, &headers, &body, StatusCode::BAD_REQUEST);
    assert_eq!((body["code"].as_str(), body["field"].as_str()), (Some("fence_required"), Some("lease_id")));
    let lease = claimed["task"]["lease_id"].clone();
    let (status, body) = post(&server, &complete, &admin, json!({"lease_id": lease, "result": {"ok": true}})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    server.stop().await;
}

#[tokio::test]
async fn claims_past_the_waiting_caps_are_429_with_retry_after() {
    let config = aragora_cp::config::Config { max_waiting_claims_per_agent: 2, ..Default::default() };
    let server = TestServer::start_with(config).await;
    let admin = server.admin();
    let base = server.api("");
    let agent = json!({"agent_id": "eager", "capabilities": ["code"], "max_concurrent_tasks": 4});
    assert_eq!(post(&server, &server.api("/agents"), &admin, agent).await.0, StatusCode::CREATED);
    let claim_url = server.api("/tasks/claim");
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let (client, url, token) = (server.client.clone(), claim_url.clone(), admin.clone());
            tokio::spawn(async move {
                let body = json!({"agent_id": "eager", "block_ms": 3000});
                client.post(url).bearer_auth(token).json(&body).send().await.unwrap().json::<Value>().await.unwrap()
            })
        })
        .collect();
    let started = std::time::Instant::now();
    loop {
        let (_, stats) = get(&server, &server.api("/stats"), &admin).await;
        if stats["scheduler"]["waiting_claims"] == 2 {
            break;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "the two claims never waited: {stats}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let body = json!({"agent_id": "eager", "block_ms": 3000});
    let (status, headers, problem) = call(&server, reqwest::Method::POST, &claim_url, &admin, Some(body)).await;
    assert_problem(status, &headers, &problem, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(problem["code"], "too_many_waiting_claims", "{problem}");
    assert_eq!(headers.get("retry-after").unwrap(), "1");

    // Once the waits end, the agent claims as before.
    submit(&server, &base, &admin).await;
    for handle in waiting {
        handle.await.unwrap();
    }
    let task_id = submit(&server, &base, &admin).await;
    let claimed = claim(&server, &base, &admin, "eager").await;
    assert_eq!(claimed["task"]["task_id"], task_id.as_str(), "{claimed}");
    server.stop().await;
}

#[tokio::test]
async fn submits_past_max_pending_tasks_are_429_with_retry_after() {
    let config = aragora_cp::config::Config { max_pending_tasks: 1, ..Default::default() };
    let server = TestServer::start_with(config).await;
    let admin = server.admin();
    submit(&server, &server.api(""), &admin).await;
    let body = json!({"task_type": "overflow"});
    let (status, headers, problem) =
        call(&server, reqwest::Method::POST, &server.api("/tasks"), &admin, Some(body)).await;
    assert_problem(status, &headers, &problem, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(problem["code"], "too_many_pending_tasks", "{problem}");
    assert_eq!(headers.get("retry-after").unwrap(), "1");
    server.stop().await;
}

#[tokio::test]
async fn agents_are_listed_a_page_at_a_time_by_id() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let base = server.api("");
    for i in (0..5).rev() {
        register(&server, &base, &admin, &format!("pager-{i}"), None).await;
    }
    let mut seen = Vec::new();
    let mut url = server.api("/agents?limit=2");
    loop {
        let (status, page) = get(&server, &url, &admin).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(page["total"], 5, "total counts every match: {page}");
        seen.extend(page["agents"].as_array().unwrap().iter().map(|a| a["agent_id"].as_str().unwrap().to_string()));
        match page["next_cursor"].as_str() {
            Some(cursor) => url = server.api(&format!("/agents?limit=2&cursor={cursor}")),
            None => break,
        }
    }
    assert_eq!(seen, (0..5).map(|i| format!("pager-{i}")).collect::<Vec<_>>(), "each agent once, by id");
    let (status, problem) = get(&server, &server.api("/agents?limit=0"), &admin).await;
    assert_eq!((status, problem["field"].as_str()), (StatusCode::BAD_REQUEST, Some("limit")), "{problem}");
    server.stop().await;
}

#[tokio::test]
async fn fleet_health_is_paged_by_agent_id_with_the_status_over_all() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let base = server.api("");
    for i in 0..3 {
        register(&server, &base, &admin, &format!("well-{i}"), None).await;
    }
    let (status, first) = get(&server, &server.api("/health?limit=2"), &admin).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["total"], 3, "{first}");
    assert_eq!(first["agents"].as_object().unwrap().keys().collect::<Vec<_>>(), ["well-0", "well-1"]);
    let cursor = first["next_cursor"].as_str().expect("more follow");
    let (_, second) = get(&server, &server.api(&format!("/health?limit=2&cursor={cursor}")), &admin).await;
    assert_eq!(second["agents"].as_object().unwrap().keys().collect::<Vec<_>>(), ["well-2"]);
    assert!(second.get("next_cursor").is_none(), "the last page: {second}");
    assert_eq!(first["status"], second["status"], "the fleet's status does not depend on the page");
    server.stop().await;
}
