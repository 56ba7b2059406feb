//! A store-agnostic harness for the store conformance suite (`tests/tests/all/store_conformance.rs`) and the model
//! test (`store_model.rs`): a [`StoreBackend`] opens a fresh, empty store with a given configuration and hands back
//! the store with a [`TestClock`] that moves the store's time.
//!
//! Adding a backend takes a `StoreBackend` impl here and one line in each test file. Each `open` gives an isolated
//! store (Redis: a fresh key prefix per open on one shared server, so tests run in parallel), and its `TestClock`
//! moves the time the store's transitions read (the memory store reads a [`ManualClock`]; Redis scripts read `TIME`
//! unless the test-only clock in Redis pins it, which [`RedisBackend`] does at [`T0_MS`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use aragora_cp::model::{
    Agent, AgentStatus, CapabilitySet, HeartbeatRequest, NewTask, Priority, SubmitRequest, Task, TaskId, TaskStatus,
};
use aragora_cp::model::{AgentRegistration, Fence, FleetStats, HeartbeatOutcome, StoreError};
use aragora_cp::store::{ClaimRequest, ManualClock, MemoryStore, RedisStore, Store, StoreConfig};
use serde_json::Map;

/// A boxed future, so backends and clocks stay object-safe without an extra dependency.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Store time a test starts at (ms since the epoch): a fixed, realistic date.
pub const T0_MS: u64 = 1_700_000_000_000;

/// Moves a store's time forward, as the store's transitions see it.
pub trait TestClock: Send + Sync {
    /// Advances the store's time by `ms`.
    fn advance(&self, ms: u64) -> BoxFuture<'_, ()>;
}

impl TestClock for ManualClock {
    fn advance(&self, ms: u64) -> BoxFuture<'_, ()> {
        ManualClock::advance(self, ms);
        Box::pin(std::future::ready(()))
    }
}

/// A store under test and the handle that moves its time.
pub struct Opened {
    /// The store, fresh and empty.
    pub store: Arc<dyn Store>,
    /// Its clock.
    pub clock: Arc<dyn TestClock>,
}

/// A kind of store the conformance suite runs against.
pub trait StoreBackend: Send + Sync + 'static {
    /// A short name for messages ("memory", "redis").
    fn name(&self) -> &'static str;

    /// A fresh, empty, isolated store with `config`, its time at [`T0_MS`] or later.
    fn open(&self, config: StoreConfig) -> BoxFuture<'_, anyhow::Result<Opened>>;
}

/// The in-memory store on a [`ManualClock`] starting at [`T0_MS`].
#[derive(Clone, Copy, Debug, Default)]
pub struct MemoryBackend;

impl StoreBackend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn open(&self, config: StoreConfig) -> BoxFuture<'_, anyhow::Result<Opened>> {
        let clock = ManualClock::new(T0_MS);
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new(config, Arc::new(clock.clone())));
        Box::pin(std::future::ready(Ok(Opened { store, clock: Arc::new(clock) })))
    }
}

/// The Redis store on the test binary's shared `redis-server`, a fresh key prefix per store, its clock pinned at
/// [`T0_MS`] through the store's test-only clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct RedisBackend;

impl StoreBackend for RedisBackend {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn open(&self, config: StoreConfig) -> BoxFuture<'_, anyhow::Result<Opened>> {
        Box::pin(async move {
            let url = crate::redis_server::shared_server().url();
            let store = RedisStore::connect(&url, &crate::redis_server::unique_prefix("conformance"), config).await?;
            opened_redis(store).await
        })
    }
}

/// The Redis store on the test binary's shared 3-master Redis Cluster, otherwise as [`RedisBackend`].
#[derive(Clone, Copy, Debug, Default)]
pub struct RedisClusterBackend;

impl StoreBackend for RedisClusterBackend {
    fn name(&self) -> &'static str {
        "redis cluster"
    }

    fn open(&self, config: StoreConfig) -> BoxFuture<'_, anyhow::Result<Opened>> {
        Box::pin(async move {
            let nodes = crate::redis_server::shared_cluster().urls();
            let prefix = crate::redis_server::unique_prefix("conformance");
            let store = RedisStore::connect_cluster(&nodes, &prefix, config).await?;
            opened_redis(store).await
        })
    }
}

async fn opened_redis(store: RedisStore) -> anyhow::Result<Opened> {
    let store = Arc::new(store);
    store.pin_test_clock(T0_MS).await?;
    Ok(Opened { store: store.clone(), clock: Arc::new(RedisTestClock(store)) })
}

/// Moves a Redis store's pinned test clock.
struct RedisTestClock(Arc<RedisStore>);

impl TestClock for RedisTestClock {
    fn advance(&self, ms: u64) -> BoxFuture<'_, ()> {
        Box::pin(async move { self.0.advance_test_clock(ms).await.expect("advance the Redis test clock") })
    }
}

/// The configuration tests start from: the defaults of DESIGN §8 (heartbeat timeout 30 s, interval 10 s,
/// 4,096 signatures, strict priority, no backoff, 24 h idempotency), with a recognisable server id.
pub fn test_config() -> StoreConfig {
    StoreConfig { server_id: "conformance".into(), ..StoreConfig::default() }
}

/// One store under test, with helpers for the common steps. Helpers panic on unexpected errors (with the step
/// named); tests that expect an error call the store directly.
#[derive(Clone)]
pub struct Harness {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Moves the store's time.
    pub clock: Arc<dyn TestClock>,
    /// The configuration it was opened with.
    pub config: StoreConfig,
    backend: Arc<dyn StoreBackend>,
}

impl Harness {
    /// A fresh store of `backend` with [`test_config`].
    pub async fn open(backend: Arc<dyn StoreBackend>) -> Harness {
        Harness::open_with(backend, test_config()).await
    }

    /// A fresh store of `backend` with `config`.
    pub async fn open_with(backend: Arc<dyn StoreBackend>, config: StoreConfig) -> Harness {
        let opened = backend
            .open(config.clone())
            .await
            .unwrap_or_else(|e| panic!("opening a {} store failed: {e:#}", backend.name()));
        Harness { store: opened.store, clock: opened.clock, config, backend }
    }

    /// A fresh store of the same backend with [`test_config`] changed by `change`.
    pub async fn reopen(&self, change: impl FnOnce(&mut StoreConfig)) -> Harness {
        let mut config = test_config();
        change(&mut config);
        Harness::open_with(self.backend.clone(), config).await
    }

    /// The backend's name.
    pub fn backend(&self) -> &'static str {
        self.backend.name()
    }

    /// Moves the store's time forward by `ms`.
    pub async fn advance(&self, ms: u64) {
        self.clock.advance(ms).await;
    }

    /// Registers (or re-registers, keeping its session) a ready agent with these capabilities.
    pub async fn register(&self, agent_id: &str, capabilities: &[&str]) -> Agent {
        self.register_with(registration(agent_id, capabilities)).await
    }

    /// Registers with a full registration.
    pub async fn register_with(&self, registration: AgentRegistration) -> Agent {
        let id = registration.agent_id.clone();
        self.store.register(registration).await.unwrap_or_else(|e| panic!("register {id}: {e}")).agent
    }

    /// A heartbeat with no body.
    pub async fn heartbeat(&self, agent_id: &str) -> HeartbeatOutcome {
        self.heartbeat_with(agent_id, &HeartbeatRequest::default()).await
    }

    /// A heartbeat with a body.
    pub async fn heartbeat_with(&self, agent_id: &str, heartbeat: &HeartbeatRequest) -> HeartbeatOutcome {
        self.store.heartbeat(agent_id, heartbeat).await.unwrap_or_else(|e| panic!("heartbeat of {agent_id}: {e}"))
    }

    /// Submits a validated request as `tester`; panics on refusal.
    pub async fn submit(&self, request: SubmitRequest) -> TaskId {
        self.submit_as("tester", request).await
    }

    /// Submits a validated request as `submitted_by`; panics on refusal.
    pub async fn submit_as(&self, submitted_by: &str, request: SubmitRequest) -> TaskId {
        let task = new_task(submitted_by, request);
        let committed = self.store.submit(task, 64).await.unwrap_or_else(|e| panic!("submit: {e}"));
        assert!(!committed.submitted.replayed, "a fresh submit is not a replay");
        committed.submitted.task_id
    }

    /// One claim with the agent's registered capabilities: the granted task, if any.
    pub async fn claim(&self, agent_id: &str) -> Option<Task> {
        let capabilities = self.agent(agent_id).await.capabilities;
        self.claim_with(agent_id, capabilities, 1).await.pop()
    }

    /// A claim with explicit capabilities (already narrowed) and batch size.
    pub async fn claim_with(&self, agent_id: &str, capabilities: CapabilitySet, max_tasks: usize) -> Vec<Task> {
        let request =
            ClaimRequest { agent_id: agent_id.into(), capabilities: Some(capabilities), max_tasks, session_id: None };
        self.store.claim(&request).await.unwrap_or_else(|e| panic!("claim by {agent_id}: {e}"))
    }

    /// Claims everything the agent can take, one at a time: the task ids in the order granted.
    pub async fn drain(&self, agent_id: &str) -> Vec<TaskId> {
        let mut order = Vec::new();
        while let Some(task) = self.claim(agent_id).await {
            order.push(task.task_id);
        }
        order
    }

    /// A task that must exist.
    pub async fn task(&self, task_id: &TaskId) -> Task {
        self.store.get_task(task_id).await.expect("get_task").unwrap_or_else(|| panic!("task {task_id} is missing"))
    }

    /// A task's status.
    pub async fn status(&self, task_id: &TaskId) -> TaskStatus {
        self.task(task_id).await.status
    }

    /// An agent that must exist.
    pub async fn agent(&self, agent_id: &str) -> Agent {
        self.store.get_agent(agent_id).await.expect("get_agent").unwrap_or_else(|| panic!("agent {agent_id} missing"))
    }

    /// Completes through the task's current lease.
    pub async fn complete(&self, task: &Task, result: serde_json::Value) -> Task {
        self.store
            .complete(&task.task_id, &lease(task), result.into())
            .await
            .unwrap_or_else(|e| panic!("complete {}: {e}", task.task_id))
    }

    /// The tokens of the waiting claims the store offers for a pending task, in its order, at most `limit`.
    pub async fn offered(&self, task_id: &TaskId, limit: usize) -> Vec<String> {
        let offer = self.store.offer(task_id, limit, None).await.expect("offer");
        offer.map(|offer| offer.waiting.into_iter().map(|claim| claim.token.to_string()).collect()).unwrap_or_default()
    }

    /// The counters.
    pub async fn stats(&self) -> FleetStats {
        self.store.stats().await.expect("stats")
    }
}

/// A registration of a ready agent with no session (an existing client), one slot, no metadata.
pub fn registration(agent_id: &str, capabilities: &[&str]) -> AgentRegistration {
    AgentRegistration {
        agent_id: agent_id.into(),
        capabilities: caps(capabilities),
        model: "model-x".into(),
        provider: "provider-y".into(),
        metadata: Map::new(),
        max_concurrent_tasks: 1,
        health_url: None,
        status: AgentStatus::Ready,
        session_id: None,
    }
}

/// A capability set (normalised like the API does).
pub fn caps(capabilities: &[&str]) -> CapabilitySet {
    let raw: Vec<String> = capabilities.iter().map(|c| c.to_string()).collect();
    CapabilitySet::parse("capabilities", &raw, 64).expect("valid capabilities")
}

/// A submit request of `task_type` with the defaults; change fields with struct update syntax.
pub fn request(task_type: &str) -> SubmitRequest {
    SubmitRequest { task_type: task_type.into(), ..SubmitRequest::default() }
}

/// A submit request of `task_type` with a priority and required capabilities.
pub fn request_for(task_type: &str, priority: Priority, required: &[&str]) -> SubmitRequest {
    SubmitRequest {
        task_type: task_type.into(),
        priority: Some(priority),
        required_capabilities: required.iter().map(|c| c.to_string()).collect(),
        ..SubmitRequest::default()
    }
}

/// Validates a request the way the API does (default timeout 300 s, 3 retries).
pub fn new_task(submitted_by: &str, request: SubmitRequest) -> NewTask {
    request.validate(submitted_by, 300, 3).expect("a valid submit request")
}

/// The fence of the task's current lease.
pub fn lease(task: &Task) -> Fence {
    Fence::Lease(task.lease_id.clone().unwrap_or_else(|| panic!("task {} holds no lease", task.task_id)))
}

/// The 409 code of a conflict, or a panic naming what came instead.
pub fn conflict_code<T: std::fmt::Debug>(result: Result<T, StoreError>) -> &'static str {
    match result {
        Err(StoreError::Conflict { code, .. }) => code,
        other => panic!("expected a 409 conflict, got {other:?}"),
    }
}

/// A counter map without its zero entries (stores may or may not keep them).
pub fn nonzero(map: &std::collections::BTreeMap<String, u64>) -> std::collections::BTreeMap<String, u64> {
    map.iter().filter(|(_, n)| **n > 0).map(|(k, n)| (k.clone(), *n)).collect()
}
