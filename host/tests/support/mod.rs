//! What the host's end-to-end tests share: a real server (the coordinator on the memory store with the built-in
//! plugins, served by `aragora_cp::api::serve` on 127.0.0.1 port 0) and an admin token it accepts.

use std::sync::Arc;
use std::time::Duration;

use aragora_cp::api::{self, ApiState, Authenticator, Permission};
use aragora_cp::config::Config;
use aragora_cp::coordinator::ControlPlaneCoordinator;
use aragora_cp::plugins::{PluginRegistry, PluginRuntime, RuntimeOptions};
use aragora_cp::store::{MemoryStore, Store, SystemClock};

const SECRET: &[u8] = b"client-test-secret-0123456789abcdef0123";

/// A running server; send on `shutdown` to stop it.
pub(crate) struct Server {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// An admin token.
    pub token: String,
    /// Stops the server.
    pub shutdown: tokio::sync::oneshot::Sender<()>,
}

/// Starts a server with the default configuration.
pub(crate) async fn server() -> Server {
    let config = Config::default();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new(config.store_config(), Arc::new(SystemClock::default())));
    server_on(config, store).await
}

/// Starts a server on `store`.
pub(crate) async fn server_on(config: Config, store: Arc<dyn Store>) -> Server {
    let plugins = Arc::new(PluginRegistry::new(PluginRuntime::new(RuntimeOptions::default()).unwrap(), "t").unwrap());
    let coordinator = ControlPlaneCoordinator::with_parts(config, store, plugins).await.unwrap();
    let auth = Arc::new(Authenticator::hs256(SECRET, None, None).unwrap());
    let token = auth.issue("admin", &[Permission::Admin], Duration::from_secs(600)).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (shutdown, signal) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(api::serve(listener, ApiState::new(coordinator, auth), async move {
        let _ = signal.await;
    }));
    Server { base, token, shutdown }
}
