//! The OpenAPI document: served at `{prefix}/openapi.json` without a token, identical to the committed
//! `docs/openapi.json`, and describing exactly the operations the server answers.
//! `UPDATE_OPENAPI=1 cargo test -p aragora-cp-tests --test all openapi` rewrites the committed file.

use aragora_cp::api::PREFIXES;
use aragora_cp::api::openapi::document_json;
use aragora_cp_tests::server::TestServer;
use reqwest::StatusCode;
use serde_json::Value;

fn committed_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json")
}

#[test]
fn the_committed_document_matches_the_code() {
    let generated = document_json();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(committed_path(), generated).expect("write docs/openapi.json");
    }
    let committed = std::fs::read_to_string(committed_path()).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi.json differs from the code's document: run \
         `UPDATE_OPENAPI=1 cargo test -p aragora-cp-tests --test all openapi` and commit the file"
    );
}

#[test]
fn every_operation_describes_its_refusals_and_permissions() {
    let document: Value = serde_json::from_str(document_json()).unwrap();
    assert_eq!(document["openapi"].as_str().map(|v| &v[..3]), Some("3.1"));
    let mut operations = 0;
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            operations += 1;
            let responses = operation["responses"].as_object().unwrap();
            assert!(responses.keys().any(|s| s.starts_with('2')), "{method} {path}: no success response");
            assert!(responses.contains_key("500"), "{method} {path}: no 500");
            let open = ["/livez", "/readyz", "/metrics"].contains(&path.as_str()) || path.ends_with("/openapi.json");
            if !open {
                for status in ["401", "403", "503"] {
                    assert!(responses.contains_key(status), "{method} {path}: no {status}");
                }
                let roles = &operation["security"][0]["bearer"];
                assert!(
                    roles
                        .as_array()
                        .is_some_and(|r| r.iter().all(|p| p.as_str().unwrap().starts_with("controlplane:"))),
                    "{method} {path}: the required permission is not described: {operation}"
                );
            }
            for (status, response) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    let content = &response["content"];
                    assert!(
                        content.get("application/problem+json").is_some() || path == "/readyz",
                        "{method} {path} {status}: errors are problem+json"
                    );
                }
            }
        }
    }
    assert!(operations >= 30, "only {operations} operations described");
}

/// Every documented operation is routed (under both prefixes): asking without a token gets 401, 200 or 503
/// (open routes), never 404 or 405.
#[tokio::test]
async fn every_documented_operation_is_served_under_both_prefixes() {
    let server = TestServer::start().await;
    let response = server.client.get(server.api("/openapi.json")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), document_json());
    let document: Value = serde_json::from_str(document_json()).unwrap();
    for (path, item) in document["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{task_id}", "task_0123456789abcdef0123456789abcdef")
            .replace("{agent_id}", "some-agent")
            .replace("{name}", "least_loaded");
        let variants: Vec<String> = match concrete.strip_prefix(PREFIXES[0]) {
            Some(rest) => PREFIXES.iter().map(|prefix| format!("{prefix}{rest}")).collect(),
            None => vec![concrete.clone()],
        };
        for url in variants {
            for method in item.as_object().unwrap().keys() {
                let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                let status = server.client.request(method.clone(), server.url(&url)).send().await.unwrap().status();
                assert!(
                    status != StatusCode::NOT_FOUND && status != StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {url} is documented but answered {status}"
                );
            }
        }
    }
    server.stop().await;
}
