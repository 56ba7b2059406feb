//! The dashboard in a real headless Chromium (Debian's, driven by playwright-core; see `aragora_cp_tests::browser`):
//! each test starts a server, hands the scenario in `tests/fixtures/browser/dashboard.mjs` its address and tokens,
//! and the scenario drives the fleet over REST while checking what the page shows without a reload.
//! `DASHBOARD_SCREENSHOTS=DIR` keeps the pages as PNG files (how docs/dashboard/ was made).

use aragora_cp::api::Permission;
use aragora_cp::config::Config;
use aragora_cp_tests::redis_server::unique_prefix;
use aragora_cp_tests::server::TestServer;
use aragora_cp_tests::{browser, guest};

/// Runs `scenario` against a fresh server on the memory store.
async fn scenario(name: &str) -> String {
    scenario_on(TestServer::start().await, name).await
}

/// Runs `scenario` against `server`.
async fn scenario_on(server: TestServer, name: &str) -> String {
    let mut env = vec![
        ("BASE_URL", server.base.clone()),
        ("ADMIN_TOKEN", server.admin()),
        ("READ_TOKEN", server.token("dashboard-viewer", &[Permission::Read])),
        ("PLUGIN_WASM", guest("highest_index").display().to_string()),
    ];
    if let Ok(dir) = std::env::var("DASHBOARD_SCREENSHOTS") {
        env.push(("SCREENSHOTS", dir));
    }
    let output = browser::run("dashboard.mjs", name, &env).await;
    server.stop().await;
    output
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_and_agents_appear_as_they_register() {
    scenario("fleet").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_goes_pending_claimed_completed_live() {
    scenario("task").await;
}

/// The same on the Redis store, whose events reach the page through the store's stream reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_goes_pending_claimed_completed_live_on_redis() {
    let prefix = unique_prefix("dashboard");
    scenario_on(TestServer::start_on_redis(Config::default(), &prefix).await, "task").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploaded_plugin_is_listed_active_and_a_bad_one_refused() {
    scenario("plugins").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_is_shown_and_promoted_and_a_tasks_decisions_are_listed() {
    scenario("rollout").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_token_is_refused_on_pause() {
    scenario("readonly").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_page_follows_the_fleet() {
    scenario("live").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_agents_and_a_hundred_thousand_pending_tasks() {
    let report = scenario("scale").await;
    println!("{report}");
}

/// The page is served from the binary with headers that keep the token its own: no inline code may run, no other
/// origin may frame it or receive data from it.
#[tokio::test]
async fn the_page_is_embedded_and_locked_down() {
    let server = TestServer::start().await;
    for (path, content_type) in
        [("/dashboard", "text/html"), ("/dashboard/app.js", "text/javascript"), ("/dashboard/app.css", "text/css")]
    {
        let response = server.client.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers();
        assert!(headers["content-type"].to_str().unwrap().starts_with(content_type), "{path}");
        assert_eq!(
            headers["content-security-policy"],
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
             form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
        );
        assert_eq!(headers["x-content-type-options"], "nosniff");
        // The SVG namespace is a name, not an address the page loads.
        let body = response.text().await.unwrap().replace("http://www.w3.org/2000/svg", "");
        assert!(!body.contains("http://") && !body.contains("https://"), "{path} refers to another origin");
    }
    let redirect = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let response = redirect.get(server.url("/dashboard/")).send().await.unwrap();
    assert_eq!(response.status(), 308);
    assert_eq!(response.headers()["location"], "../dashboard");
    server.stop().await;
}
