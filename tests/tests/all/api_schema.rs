//! The API against its own document: schemathesis (from PyPI) generates requests for every operation of
//! `docs/openapi.json` — valid and invalid ones, from the schemas — and sends them to a real server on the memory
//! store and on Redis. No answer may be a 5xx, and every answer must match the document's schema for its status.
//! This is the short run CI makes (a few examples per operation); docs/BENCHMARKS.md ("The API against its
//! document") gives the command of the longer one.

use std::path::Path;
use std::sync::Arc;

use aragora_cp::config::Config;
use aragora_cp::store::{RedisStore, Store};
use aragora_cp_tests::python_sdk::schemathesis;
use aragora_cp_tests::redis_server::{shared_server, unique_prefix};
use aragora_cp_tests::server::TestServer;

async fn generated_requests_against(server: TestServer) {
    let document = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    let mut command = schemathesis();
    command
        .arg("run")
        .arg(&document)
        .args(["--url", &server.base])
        .args(["--header", &format!("Authorization: Bearer {}", server.admin())])
        .args(["--checks", "not_a_server_error,response_schema_conformance"])
        .args(["--phases", "coverage,fuzzing", "--max-examples", "3", "--request-timeout", "5"])
        .args(["--seed", "20261203", "--no-color"]);
    let output = tokio::task::spawn_blocking(move || command.output().expect("schemathesis runs")).await.unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(report.contains("passed"), "no test case ran:\n{report}");
    server.stop().await;
}

/// A synchronous deliberation waits for a worker that never comes here: capped below the client's 5 s timeout,
/// it answers its documented 408 instead.
fn config() -> Config {
    Config { deliberation_max_wait: std::time::Duration::from_secs(2), ..Config::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_requests_get_no_server_error_and_match_the_document_on_memory() {
    generated_requests_against(TestServer::start_with(config()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_requests_get_no_server_error_and_match_the_document_on_redis() {
    let config = config();
    let store: Arc<dyn Store> = Arc::new(
        RedisStore::connect(&shared_server().url(), &unique_prefix("api-schema"), config.store_config())
            .await
            .expect("redis"),
    );
    generated_requests_against(TestServer::start_with_store(config, store).await).await;
}
