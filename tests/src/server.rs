//! A real API server for end-to-end tests: the coordinator on the memory store with the built-in plugins, served
//! by `aragora_cp::api::serve` on 127.0.0.1 port 0, an HTTP client, and tokens signed with the test secret.

use std::sync::Arc;
use std::time::Duration;

use aragora_cp::api::{self, ApiState, Authenticator, Permission};
use aragora_cp::config::Config;
use aragora_cp::coordinator::ControlPlaneCoordinator;
use aragora_cp::store::{MemoryStore, RedisStore, Store, SystemClock};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The HS256 secret test servers verify with (≥ 32 bytes).
pub const TEST_SECRET: &[u8] = b"aragora-cp-test-secret-0123456789abcdef";

/// A running server; [`stop`](Self::stop) it at the end of a test to join its tasks.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The coordinator behind the API.
    pub coordinator: Arc<ControlPlaneCoordinator>,
    /// Issues tokens the server accepts.
    pub auth: Arc<Authenticator>,
    /// A client with no default headers.
    pub client: reqwest::Client,
    draining: tokio_util::sync::CancellationToken,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    /// Starts a server with the default configuration (no plugins directory: the built-ins only).
    pub async fn start() -> TestServer {
        TestServer::start_with(Config::default()).await
    }

    /// Starts a server with `config`.
    pub async fn start_with(config: Config) -> TestServer {
        let auth = Authenticator::hs256(TEST_SECRET, None, None).expect("test secret is long enough");
        TestServer::start_with_auth(config, auth).await
    }

    /// Starts a server with `config` that verifies tokens with `auth` (public-key tests; [`token`](Self::token)
    /// then cannot sign).
    pub async fn start_with_auth(config: Config, auth: Authenticator) -> TestServer {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new(config.store_config(), Arc::new(SystemClock::default())));
        TestServer::start_on(config, store, auth).await
    }

    /// Starts a server with `config` on the shared test Redis under `prefix` (servers on one prefix make a fleet).
    pub async fn start_on_redis(config: Config, prefix: &str) -> TestServer {
        let url = crate::redis_server::shared_server().url();
        let store: Arc<dyn Store> =
            Arc::new(RedisStore::connect(&url, prefix, config.store_config()).await.expect("redis"));
        TestServer::start_with_store(config, store).await
    }

    /// Starts a server with `config` over `store` (several servers on one Redis make a fleet).
    pub async fn start_with_store(config: Config, store: Arc<dyn Store>) -> TestServer {
        let auth = Authenticator::hs256(TEST_SECRET, None, None).expect("test secret is long enough");
        TestServer::start_on(config, store, auth).await
    }

    async fn start_on(config: Config, store: Arc<dyn Store>, auth: Authenticator) -> TestServer {
        let auth = Arc::new(auth);
        let coordinator =
            ControlPlaneCoordinator::with_parts(config, store, crate::registry()).await.expect("coordinator starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let base = format!("http://{}", listener.local_addr().expect("local address"));
        let (shutdown, signal) = oneshot::channel::<()>();
        let state = ApiState::new(coordinator.clone(), auth.clone());
        let draining = state.draining.clone();
        let handle = tokio::spawn(api::serve(listener, state, async move {
            let _ = signal.await;
        }));
        let client = reqwest::Client::builder().timeout(Duration::from_secs(90)).build().expect("http client");
        TestServer { base, coordinator, auth, client, draining, shutdown: Some(shutdown), handle: Some(handle) }
    }

    /// `base` + `path` (a root path such as `/livez`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The URL of `path` under the current API prefix.
    pub fn api(&self, path: &str) -> String {
        format!("{}{}{path}", self.base, api::PREFIXES[0])
    }

    /// A token for `sub` with `permissions`, valid for an hour.
    pub fn token(&self, sub: &str, permissions: &[Permission]) -> String {
        self.auth.issue(sub, permissions, Duration::from_secs(3600)).expect("the test server signs HS256")
    }

    /// `method` on `path` under the API prefix with `token` and an optional JSON body: the status and the JSON
    /// answer (null when the body is not JSON).
    pub async fn call(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        let mut request = self.client.request(method, self.api(path)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status();
        (status, response.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// An admin token (`sub = admin`).
    pub fn admin(&self) -> String {
        self.token("admin", &[Permission::Admin])
    }

    /// What `serve` does first on SIGTERM: `/readyz` starts failing and SSE streams end.
    pub fn begin_drain(&self) {
        self.draining.cancel();
    }

    /// Puts `agents` in blocking claims (one after another, each waiting before the next), then submits `task`
    /// (JSON): its strategy chooses among the waiting claims. Answers the task's id and the agents whose claim
    /// received it (exactly one when routing works).
    pub async fn route_to_waiting(
        &self,
        token: &str,
        agents: &[&str],
        task: &serde_json::Value,
    ) -> (String, Vec<String>) {
        let mut claims = Vec::new();
        for (waiting, agent) in agents.iter().enumerate() {
            let request = self
                .client
                .post(self.api("/tasks/claim"))
                .bearer_auth(token)
                .json(&serde_json::json!({"agent_id": agent, "block_ms": 10_000}))
                .send();
            let claim = tokio::spawn(async move { request.await.unwrap().json::<serde_json::Value>().await.unwrap() });
            claims.push((agent.to_string(), claim));
            let coordinator = self.coordinator.clone();
            let blocked = async {
                while coordinator.counters().await.unwrap().waiting_claims as usize != waiting + 1 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            };
            tokio::time::timeout(Duration::from_secs(10), blocked).await.expect("the claim blocks");
        }
        let response = self.client.post(self.api("/tasks")).bearer_auth(token).json(task).send().await.unwrap();
        assert_eq!(response.status(), 201);
        let task_id = response.json::<serde_json::Value>().await.unwrap()["task_id"].as_str().unwrap().to_string();
        let mut receivers = Vec::new();
        for (agent, claim) in claims {
            if claim.await.unwrap()["task"]["task_id"] == task_id.as_str() {
                receivers.push(agent);
            }
        }
        (task_id, receivers)
    }

    /// `PUT /plugins/{name_and_query}` with a bare component (`application/wasm`) as the admin: the status and the
    /// JSON answer (null when there is none).
    pub async fn put_component(&self, name_and_query: &str, component: Vec<u8>) -> (u16, serde_json::Value) {
        let response = self
            .client
            .put(self.api(&format!("/plugins/{name_and_query}")))
            .bearer_auth(self.admin())
            .header("content-type", "application/wasm")
            .body(component)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Stops accepting, waits for the server and the coordinator's background tasks.
    pub async fn stop(mut self) {
        self.begin_drain();
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.expect("server task").expect("server ran");
        }
        self.coordinator.shutdown().await;
    }
}

/// Reads an SSE response until `needle` appears; returns everything read so far.
pub async fn read_until(response: &mut reqwest::Response, seen: &mut String, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.contains(needle) {
        let chunk = tokio::time::timeout_at(deadline, response.chunk())
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} within 10 s; got {seen}"))
            .expect("stream read")
            .expect("stream still open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    seen.clone()
}
