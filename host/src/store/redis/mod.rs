//! The Redis store: every transition is one Lua script (`scripts/`), run by SHA, that reads time with `TIME`,
//! changes state, updates the counters and appends its events to a capped stream, all or nothing. Works on one
//! server or on a Redis Cluster: every key shares the hash tag `{main}` (`<prefix>{main}:…`), so one deployment
//! lives in one slot (cluster for failover, not for sharding). Key layout, time and durability: docs/REDIS.md.
//!
//! This file turns trait calls into script arguments and replies into the model; `connection.rs` owns the
//! connections, `events.rs` the one stream reader per store, `decode.rs` the reply formats.

mod connection;
mod decode;
mod events;
mod scripts;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use rand::RngExt;
use redis::{Script, Value};
use serde_json::{Value as Json, json};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use self::connection::{Commands, Target, unavailable};
use self::decode::{Reply, text};
use self::scripts::Scripts;
use super::{
    Assigned, ClaimAnswer, ClaimRequest, Committed, Due, Offer, Store, StoreConfig, Swept, WaitSpec, Waiter, Withdrawn,
};
use crate::model::{
    Agent, CapabilitySet, Event, EventKind, FailKind, HeartbeatRequest, NewTask, Priority, Task, TaskId, TaskStatus,
    parse_event_id,
};
use crate::model::{
    AgentFilter, AgentHealth, AgentRegistration, AuditCheckpoint, AuditEntry, AuditHead, Completion, EventRecord,
    FailRequest, Fence, FleetStats, HealthVerdict, HeartbeatOutcome, MAX_SCHEDULES, NewViolation, PluginAction,
    PluginChange, PluginRecord, QueueFigures, Registered, RevokeReason, Revoked, ScheduleAdvance, ScheduleRecord,
    StoreError, StoreResult, Submitted, TaskFilter, TaskPage, Violation, ViolationUpdate,
};
use crate::model::{
    AttemptResult, Channel, ChannelFigures, DEAD_KEPT, Delivery, DeliveryStatus, MAX_CHANNELS, SENT_KEPT,
};
use crate::model::{DECISIONS_PER_TASK, DecisionRecord, RolloutMode};

/// The default key prefix (`CONTROL_PLANE_PREFIX`).
pub const DEFAULT_PREFIX: &str = "aragora:cp:";

/// The URL scheme that names a cluster by its seed nodes: `redis+cluster://host1:port1,host2:port2`.
pub const CLUSTER_SCHEME: &str = "redis+cluster://";

/// Lease ids drawn per claim at most (a claim grants at most this many tasks).
const MAX_GRANTS: usize = 1_000;

/// The store clock as last seen in a reply, so `now_ms` needs no round trip.
struct ClockEstimate {
    store_ms: u64,
    at: Instant,
    /// The test-only clock pins time: it moves only when told.
    pinned: bool,
}

/// The Redis store. Dropping it stops its event reader.
pub struct RedisStore {
    target: Target,
    /// The tagged prefix, `<prefix>{main}:`: KEYS[1] of every script.
    root: String,
    prefix: String,
    commands: Commands,
    scripts: Scripts,
    /// Calls go by `FCALL` to the loaded function library (standalone Redis 7), else by EVALSHA.
    functions: AtomicBool,
    /// ARGV[1..2] of every script ([`config_args`]).
    config_args: Vec<String>,
    /// `REDIS_WAIT_REPLICAS`.
    wait_replicas: u32,
    /// `REDIS_EVENT_FORMAT=fields`: the scripts write events as separate fields.
    event_fields: bool,
    events: broadcast::Sender<Arc<EventRecord>>,
    /// Bumped by the reader at a gap in the event numbers ([`Store::skipped_events`]).
    skipped: tokio::sync::watch::Sender<u64>,
    reader: JoinHandle<()>,
    clock: Mutex<ClockEstimate>,
}

/// How long a write waits for `REDIS_WAIT_REPLICAS` replicas.
const WAIT_REPLICAS_TIMEOUT_MS: u64 = 1000;

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl RedisStore {
    /// Connects to `url`: `redis://host:port[/db]` for one server, or `redis+cluster://host:port,host:port` for a
    /// cluster (see [`RedisStore::connect_cluster`]). `prefix` starts every key (default [`DEFAULT_PREFIX`]).
    pub async fn connect(url: &str, prefix: &str, config: StoreConfig) -> StoreResult<RedisStore> {
        if let Some(nodes) = url.strip_prefix(CLUSTER_SCHEME) {
            let nodes: Vec<String> = nodes
                .trim_end_matches('/')
                .split(',')
                .filter(|n| !n.is_empty())
                .map(|n| format!("redis://{n}"))
                .collect();
            return RedisStore::connect_cluster(&nodes, prefix, config).await;
        }
        let client = redis::Client::open(url).map_err(unavailable)?;
        RedisStore::open(Target::Standalone(client), prefix, config).await
    }

    /// Connects to a Redis Cluster through its seed nodes (`redis://host:port` each).
    pub async fn connect_cluster(nodes: &[String], prefix: &str, config: StoreConfig) -> StoreResult<RedisStore> {
        if nodes.is_empty() {
            return Err(StoreError::Unavailable("redis cluster: no seed nodes".into()));
        }
        RedisStore::open(Target::Cluster(nodes.to_vec()), prefix, config).await
    }

    async fn open(target: Target, prefix: &str, config: StoreConfig) -> StoreResult<RedisStore> {
        // Cluster hashes the first `{…}` of a key: a brace in the prefix would move keys out of the `{main}` slot.
        if prefix.contains(['{', '}']) {
            return Err(StoreError::Unavailable(format!("redis: the key prefix {prefix:?} may not contain braces")));
        }
        // WAIT is keyless: a cluster connection would send it to any node, not the one holding our slot.
        if config.wait_replicas > 0 && matches!(target, Target::Cluster(_)) {
            return Err(StoreError::Unavailable(
                "REDIS_WAIT_REPLICAS is supported with a standalone Redis and its replicas, not a cluster URL".into(),
            ));
        }
        // An event holds the server's id among `|`-separated parts (decision 0030).
        if config.server_id.contains('|') {
            return Err(StoreError::Unavailable(format!(
                "redis: the server id {:?} may not contain '|'",
                config.server_id
            )));
        }
        let commands = target.commands(Duration::from_millis(config.store_timeout_ms.max(1))).await?;
        let reader_connection = target.blocking().await?;
        let root = format!("{prefix}{{main}}:");
        let config_args = config_args(&config);
        let (events, _) = broadcast::channel(config.event_buffer.clamp(16, 65_536));
        let stream = format!("{root}events");
        let start = stream_tail(&mut commands.clone(), &root).await?;
        let skipped = tokio::sync::watch::channel(0).0;
        let reader = tokio::spawn(events::follow(
            target.clone(),
            reader_connection,
            stream,
            start,
            events::Fanout { events: events.clone(), skipped: skipped.clone() },
        ));
        let store = RedisStore {
            target,
            root,
            prefix: prefix.to_string(),
            commands,
            scripts: Scripts::new(),
            functions: AtomicBool::new(false),
            config_args,
            wait_replicas: config.wait_replicas,
            event_fields: config.event_fields,
            events,
            skipped,
            reader,
            clock: Mutex::new(ClockEstimate { store_ms: 0, at: Instant::now(), pinned: false }),
        };
        store.choose_calls().await;
        store.run(&store.scripts.now, Vec::new()).await?;
        Ok(store)
    }

    /// Whether Redis answers (`PING`).
    pub async fn ping(&self) -> StoreResult<()> {
        let _: String = redis::cmd("PING").query_async(&mut self.commands.clone()).await.map_err(unavailable)?;
        Ok(())
    }

    /// Redis's `maxmemory-policy` (anything but `noeviction` may evict control-plane state: warn at start-up).
    pub async fn maxmemory_policy(&self) -> StoreResult<String> {
        let reply: Value = redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async(&mut self.commands.clone())
            .await
            .map_err(unavailable)?;
        find_config_value(&reply, "maxmemory-policy")
            .ok_or_else(|| StoreError::Unavailable("redis: CONFIG GET maxmemory-policy answered nothing".into()))
    }

    /// TEST ONLY (the `test-clock` feature): pins the store clock at `ms`: every script reads it instead of `TIME` until cleared. Tests use it
    /// to move time exactly (a lease due at 10,000 ms must not be due at 9,999), which an offset on a moving `TIME`
    /// cannot promise. The clock lives in Redis (`test:clock`), so every store on the prefix sees the same time.
    #[cfg(feature = "test-clock")]
    pub async fn pin_test_clock(&self, ms: u64) -> StoreResult<()> {
        self.run(&self.scripts.test_clock, vec!["pin".into(), ms.to_string()]).await?.body.map(|_| ())
    }

    /// TEST ONLY (the `test-clock` feature): moves the store clock forward by `ms`: a pinned clock, or else the offset scripts add to `TIME`.
    #[cfg(feature = "test-clock")]
    pub async fn advance_test_clock(&self, ms: u64) -> StoreResult<()> {
        self.run(&self.scripts.test_clock, vec!["advance".into(), ms.to_string()]).await?.body.map(|_| ())
    }

    /// TEST ONLY (the `test-clock` feature): back to `TIME` alone.
    #[cfg(feature = "test-clock")]
    pub async fn clear_test_clock(&self) -> StoreResult<()> {
        self.run(&self.scripts.test_clock, vec!["clear".into(), "0".into()]).await?.body.map(|_| ())
    }

    /// Runs a script with the configuration and `args`; updates the clock estimate and, when the script emitted
    /// events, waits until the reader published them (so subscribers have a transition's events when it returns).
    /// Functions on a standalone Redis 7 (loaded now), EVALSHA otherwise; said once at start.
    async fn choose_calls(&self) {
        if !matches!(self.target, Target::Standalone(_)) {
            tracing::info!("redis: a cluster runs the store's scripts by EVALSHA (each node would need the library)");
            return;
        }
        let info: Result<String, _> = redis::cmd("INFO").arg("server").query_async(&mut self.commands.clone()).await;
        let major = info.ok().and_then(|info| {
            info.lines().find_map(|l| l.strip_prefix("redis_version:")?.split('.').next()?.trim().parse::<u32>().ok())
        });
        if major.is_none_or(|major| major < 7) {
            tracing::warn!(version = ?major, "redis: older than 7, no functions: the store's scripts run by EVALSHA");
            return;
        }
        match self.load_library().await {
            Ok(()) => self.functions.store(true, Ordering::SeqCst),
            Err(error) => tracing::error!(%error, "redis: the function library did not load; scripts run by EVALSHA"),
        }
    }

    /// `FUNCTION LOAD REPLACE` of this build's library (a no-op replacement when it is there already).
    async fn load_library(&self) -> redis::RedisResult<()> {
        let loaded: redis::RedisResult<String> = redis::cmd("FUNCTION")
            .arg("LOAD")
            .arg("REPLACE")
            .arg(&self.scripts.library.text)
            .query_async(&mut self.commands.clone())
            .await;
        loaded.map(|name| tracing::debug!(library = %name, "redis: function library loaded"))
    }

    /// One call of `script`'s body: `FCALL` of its function (loading the library first if this Redis lost it), or
    /// EVALSHA.
    async fn invoke(&self, script: &Script, args: &[String]) -> redis::RedisResult<Value> {
        let function = self.scripts.library.function_of(script).filter(|_| self.functions.load(Ordering::Relaxed));
        let Some(function) = function else {
            let mut invocation = script.prepare_invoke();
            invocation.key(&self.root);
            for arg in self.config_args.iter().chain(args.iter()) {
                invocation.arg(arg.as_bytes());
            }
            return invocation.invoke_async(&mut self.commands.clone()).await;
        };
        let mut call = redis::cmd("FCALL");
        call.arg(function).arg(1).arg(&self.root);
        for arg in self.config_args.iter().chain(args.iter()) {
            call.arg(arg.as_bytes());
        }
        match call.query_async(&mut self.commands.clone()).await {
            Err(error) if error.to_string().contains("Function not found") => {
                tracing::warn!("redis: the function library is gone (a restart or a failover): loading it again");
                self.load_library().await?;
                call.query_async(&mut self.commands.clone()).await
            }
            answered => answered,
        }
    }

    async fn run(&self, script: &Script, args: Vec<String>) -> StoreResult<Reply> {
        let value: Value = self.invoke(script, &args).await.map_err(|error| {
            tracing::error!(%error, "redis store script failed");
            unavailable(error)
        })?;
        let reply = decode::reply(value)?;
        if self.wait_replicas > 0 && self.scripts.is_write(script) {
            self.wait_for_replicas().await?;
        }
        {
            let mut clock = self.clock.lock();
            if reply.pinned || clock.pinned || reply.now >= clock.store_ms + clock.at.elapsed().as_millis() as u64 {
                *clock = ClockEstimate { store_ms: reply.now, at: Instant::now(), pinned: reply.pinned };
            }
        }
        Ok(reply)
    }

    /// Waits until `wait_replicas` replicas hold every write so far (at most a second). A write they did not
    /// confirm is answered as unavailable: it happened on the primary, but a failover could still lose it, so the
    /// client must treat the outcome as unknown (and retry idempotently).
    async fn wait_for_replicas(&self) -> StoreResult<()> {
        let acknowledged: i64 = redis::cmd("WAIT")
            .arg(self.wait_replicas)
            .arg(WAIT_REPLICAS_TIMEOUT_MS)
            .query_async(&mut self.commands.clone())
            .await
            .map_err(unavailable)?;
        if acknowledged < i64::from(self.wait_replicas) {
            return Err(StoreError::Unavailable(format!(
                "redis: a write reached {acknowledged} of the {} replicas REDIS_WAIT_REPLICAS asks for within {} ms",
                self.wait_replicas, WAIT_REPLICAS_TIMEOUT_MS
            )));
        }
        Ok(())
    }

    /// The plugin records of `name`, or of every name when it is empty (one `plugin_read`, no bytes).
    /// One name's upload (or, with `candidate`, its staged candidate): (sha256, bytes), if it has one.
    async fn read_component(&self, name: &str, candidate: bool) -> StoreResult<Option<(String, Vec<u8>)>> {
        use base64::Engine as _;
        let which = if candidate { "candidate" } else { "1" };
        let body = self.call(&self.scripts.plugin_read, vec![name.to_string(), which.into()]).await?;
        let Some(entry) = decode::array(first(&body)?)?.first() else { return Ok(None) };
        let [record, history, bytes] = decode::array(entry)? else {
            return Err(StoreError::Unavailable("redis: malformed plugin record".into()));
        };
        let record = decode::plugin_record(record, history)?;
        let sha256 = if candidate { record.candidate.map(|c| c.sha256) } else { record.sha256 };
        let (Some(sha256), Some(encoded)) = (sha256, text(bytes).filter(|b| !b.is_empty())) else {
            return Ok(None);
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| StoreError::Unavailable(format!("redis: plugin {name} bytes: {e}")))?;
        Ok(Some((sha256, bytes)))
    }

    async fn read_plugins(&self, name: &str) -> StoreResult<Vec<PluginRecord>> {
        let body = self.call(&self.scripts.plugin_read, vec![name.to_string(), "0".into()]).await?;
        decode::array(first(&body)?)?
            .iter()
            .map(|entry| match decode::array(entry)? {
                [record, history, ..] => decode::plugin_record(record, history),
                _ => Err(StoreError::Unavailable("redis: malformed plugin record".into())),
            })
            .collect()
    }

    /// Runs a script and answers its body, or its refusal.
    async fn call(&self, script: &Script, args: Vec<String>) -> StoreResult<Vec<Value>> {
        self.run(script, args).await?.body
    }

    async fn read_schedules(&self, args: Vec<String>) -> StoreResult<Vec<ScheduleRecord>> {
        let body = self.call(&self.scripts.schedule_read, args).await?;
        schedules_in(&body)
    }

    fn lease_ids(count: usize) -> Vec<String> {
        (0..count.min(MAX_GRANTS)).map(|_| crate::model::random_hex_id()).collect()
    }

    fn seed() -> String {
        rand::rng().random_range(1..2_147_483_647u32).to_string()
    }

    /// A claim's arguments (lib.lua `claim_args`): agent, has_caps, caps, max_tasks, session, wait token, wait
    /// lifetime, lease count, lease ids.
    fn claim_args(request: &ClaimRequest, wait: Option<&WaitSpec>) -> Vec<String> {
        let leases = RedisStore::lease_ids(request.max_tasks);
        let mut args = vec![
            request.agent_id.clone(),
            if request.capabilities.is_some() { "1" } else { "0" }.to_string(),
            request.capabilities.as_ref().map(caps).unwrap_or_default(),
            request.max_tasks.to_string(),
            request.session_id.clone().unwrap_or_default(),
            wait.map(|w| w.token.to_string()).unwrap_or_default(),
            wait.map(|w| w.lifetime.as_millis().to_string()).unwrap_or_default(),
            leases.len().to_string(),
        ];
        args.extend(leases);
        args
    }
}

/// Task ids a script answered as a list (requeued, promoted); none when absent.
fn task_ids(list: Option<&Value>) -> StoreResult<Vec<TaskId>> {
    let Some(list) = list else { return Ok(Vec::new()) };
    decode::array(list)?
        .iter()
        .map(|id| {
            let id = text(id).unwrap_or_default();
            TaskId::parse("task_id", &id).map_err(|_| StoreError::Unavailable(format!("redis: task id {id}")))
        })
        .collect()
}

/// A capability set as scripts keep it: comma-joined, sorted.
fn caps(set: &CapabilitySet) -> String {
    set.as_slice().join(",")
}

fn fence_args(fence: &Fence) -> [String; 2] {
    match fence {
        Fence::Lease(lease) => ["lease".into(), lease.clone()],
        Fence::Agent(agent) => ["agent".into(), agent.clone()],
        Fence::Unfenced => ["none".into(), String::new()],
    }
}

/// A completion as the scripts take it: the result JSON, then the reported latency in ms (empty when absent).
fn completion_args(completion: &Completion) -> [String; 2] {
    let reported = completion.latency_ms.filter(|ms| ms.is_finite() && *ms >= 0.0).map(|ms| ms.to_string());
    [json_text(&completion.result), reported.unwrap_or_default()]
}

/// JSON as the scripts store it: a payload or result as its text (as sent; a repeated result is the same text), other
/// values in serde_json's compact form.
fn json_text(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

fn first(body: &[Value]) -> StoreResult<&Value> {
    body.first().ok_or_else(|| StoreError::Unavailable("redis: a script answered nothing".into()))
}

/// The schedules a `schedule_read` answered.
fn schedules_in(body: &[Value]) -> StoreResult<Vec<ScheduleRecord>> {
    decode::array(first(body)?)?.iter().map(decode::schedule).collect()
}

/// The second value of a look for due items (`notify_change claim`, `schedule_read due`): ms until the next one
/// left comes due, '' for none.
fn next_in_ms(body: &[Value]) -> Option<u64> {
    body.get(1).and_then(text).and_then(|ms| ms.parse().ok())
}

/// ARGV[1..2] of every script: the server's id, then the rest of the configuration `config_of` in lib.lua reads,
/// joined by `|` in this order (`ARG_BASE` values in all).
pub(super) fn config_args(config: &StoreConfig) -> Vec<String> {
    let values = [
        config.heartbeat_timeout_ms.to_string(),
        config.heartbeat_interval_ms.to_string(),
        config.max_signatures.to_string(),
        config.priority_aging_ms.map(|ms| ms.to_string()).unwrap_or_default(),
        config.retry_backoff_base_ms.to_string(),
        config.retry_backoff_max_ms.to_string(),
        config.event_buffer.max(1).to_string(),
        config.idempotency_ttl_ms.to_string(),
        config.breaker_threshold.to_string(),
        config.breaker_window_ms.to_string(),
        config.breaker_cooldown_ms.to_string(),
        config.max_pending_tasks.to_string(),
        if config.event_fields { "fields" } else { "compact" }.to_string(),
    ];
    vec![config.server_id.clone(), values.join("|")]
}

/// The stream's last id and event number, where a new reader starts.
async fn stream_tail(commands: &mut Commands, root: &str) -> StoreResult<(u64, u64, u64)> {
    // The counter too, read with the tail in one step: an empty stream (all of it trimmed, or none yet) still
    // says which number comes next.
    let reply: Value = redis::cmd("EVAL")
        .arg("return {redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1), redis.call('GET', KEYS[2])}")
        .arg(2)
        .arg(format!("{root}events"))
        .arg(format!("{root}event-count"))
        .query_async(commands)
        .await
        .map_err(unavailable)?;
    let [tail, count] = decode::array(&reply)? else { return Err(decode::corrupt("the tail is [entries, count]")) };
    let count = decode::text(count).and_then(|n| n.parse().ok()).unwrap_or(0);
    match decode::array(tail)?.first().and_then(decode::event_place) {
        Some(((ms, seq), n)) => Ok((ms, seq, n.unwrap_or(count))),
        None => Ok((0, 0, count)),
    }
}

/// The value after `name` in a CONFIG GET reply (a flat list, a map, or per-node nestings of either).
fn find_config_value(reply: &Value, name: &str) -> Option<String> {
    match reply {
        Value::Array(items) => {
            for pair in items.windows(2) {
                if text(&pair[0]).as_deref() == Some(name) {
                    return text(&pair[1]);
                }
            }
            items.iter().find_map(|item| find_config_value(item, name))
        }
        Value::Map(pairs) => pairs
            .iter()
            .find_map(|(k, v)| if text(k).as_deref() == Some(name) { text(v) } else { find_config_value(v, name) }),
        _ => None,
    }
}

#[async_trait]
impl Store for RedisStore {
    fn describe(&self) -> String {
        let calls = if self.functions.load(Ordering::Relaxed) {
            format!("function library {}", self.scripts.library.name)
        } else {
            "scripts by EVALSHA".to_string()
        };
        let events = if self.event_fields { ", events as separate fields (REDIS_EVENT_FORMAT=fields)" } else { "" };
        format!("{}, prefix {}, {calls}{events}", self.target.describe(), self.prefix)
    }

    fn now_ms(&self) -> u64 {
        let clock = self.clock.lock();
        if clock.pinned { clock.store_ms } else { clock.store_ms + clock.at.elapsed().as_millis() as u64 }
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<EventRecord>> {
        self.events.subscribe()
    }

    fn skipped_events(&self) -> tokio::sync::watch::Receiver<u64> {
        self.skipped.subscribe()
    }

    async fn events_after(&self, after: Option<&str>, limit: usize) -> StoreResult<Option<Vec<Event>>> {
        let from_oldest = after.is_none();
        let mut after = match after {
            None => String::new(),
            // An id that is no stream id was never issued: as memory, "not in the buffer".
            Some(id) if parse_event_id(id).is_none() => return Ok(None),
            Some(id) => id.to_string(),
        };
        let mut events = Vec::new();
        let mut servers = decode::ServerIds::default();
        // An entry this build cannot decode (a newer server's event type, in a rolling upgrade) is passed over, as
        // the reader passes it; the page is then filled from further on, since callers take a short page for the
        // stream's end.
        loop {
            let asked = limit.saturating_sub(events.len()).max(1);
            let body = self.call(&self.scripts.events_after, vec![after, asked.to_string()]).await?;
            if text(first(&body)?).as_deref() != Some("kept") {
                // Trimmed past the page's last entry while filling it: the caller's own id went first. One that
                // asked from the oldest kept starts again there (the first read from the oldest is never "gone").
                if from_oldest {
                    (events, after) = (Vec::new(), String::new());
                    continue;
                }
                return Ok(None);
            }
            let entries = body.get(1).map(decode::array).transpose()?.unwrap_or(&[]);
            for entry in entries {
                match decode::event_record(entry, &mut servers) {
                    Ok(record) => events.push(record.to_event()),
                    // The reader logged it when it passed; callers that read the end of the stream again and again
                    // (notification dispatch) would repeat it.
                    Err(error) => tracing::debug!(%error, "an event the replay cannot read was passed over"),
                }
            }
            match entries.last().and_then(decode::event_place) {
                Some(((ms, seq), _)) if entries.len() >= asked && events.len() < limit => after = format!("{ms}-{seq}"),
                _ => break,
            }
        }
        // A page of none still asks for one entry, to tell whether `after` is kept.
        events.truncate(limit);
        Ok(Some(events))
    }

    async fn register(&self, registration: AgentRegistration) -> StoreResult<Registered> {
        let fresh_session = crate::model::random_hex_id();
        let args = vec![
            registration.agent_id.clone(),
            caps(&registration.capabilities),
            registration.model.clone(),
            registration.provider.clone(),
            json_text(&Json::Object(registration.metadata.clone())),
            registration.max_concurrent_tasks.to_string(),
            registration.status.as_str().to_string(),
            registration.session_id.clone().unwrap_or_default(),
            fresh_session,
            registration.health_url.clone().unwrap_or_default(),
            if registration.health_url.is_some() { "1" } else { "0" }.to_string(),
        ];
        let body = self.call(&self.scripts.register, args).await?;
        let agent = decode::agent(first(&body)?)?;
        let flag = |i: usize| body.get(i).and_then(text).as_deref() == Some("1");
        Ok(Registered { agent, created: flag(1), restarted: flag(2), requeued: task_ids(body.get(3))? })
    }

    async fn heartbeat(&self, agent_id: &str, heartbeat: &HeartbeatRequest) -> StoreResult<HeartbeatOutcome> {
        let mut args = vec![
            agent_id.to_string(),
            heartbeat.session_id.clone().unwrap_or_default(),
            heartbeat.status.map(|s| s.as_str().to_string()).unwrap_or_default(),
            if heartbeat.current_task_ids.is_some() { "1" } else { "0" }.to_string(),
        ];
        args.extend(heartbeat.current_task_ids.iter().flatten().map(|t| t.to_string()));
        let body = self.call(&self.scripts.heartbeat, args).await?;
        let status = serde_json::from_value(Json::String(text(first(&body)?).unwrap_or_default()))
            .map_err(|_| StoreError::Unavailable("redis: agent status".into()))?;
        let mut revoked = Vec::new();
        for entry in body.get(1).map(decode::array).transpose()?.unwrap_or(&[]) {
            let entry = text(entry).unwrap_or_default();
            let Some((task, reason)) = entry.split_once(' ') else { continue };
            let reason = match reason {
                "cancelled" => RevokeReason::Cancelled,
                "timeout" => RevokeReason::Timeout,
                _ => RevokeReason::Reassigned,
            };
            let task_id = TaskId::parse("task_id", task)
                .map_err(|_| StoreError::Unavailable(format!("redis: revoked task id {task}")))?;
            revoked.push(Revoked { task_id, reason });
        }
        Ok(HeartbeatOutcome { status, revoked, requeued: task_ids(body.get(2))? })
    }

    async fn unregister(&self, agent_id: &str) -> StoreResult<Vec<TaskId>> {
        let body = self.call(&self.scripts.unregister, vec![agent_id.to_string()]).await?;
        task_ids(body.first())
    }

    async fn set_paused(&self, agent_id: &str, paused: bool) -> StoreResult<Agent> {
        let body =
            self.call(&self.scripts.set_paused, vec![agent_id.to_string(), u8::from(paused).to_string()]).await?;
        decode::agent(first(&body)?)
    }

    async fn get_agent(&self, agent_id: &str) -> StoreResult<Option<Agent>> {
        if agent_id.is_empty() {
            return Ok(None);
        }
        let body = self.call(&self.scripts.read_agents, vec![agent_id.to_string()]).await?;
        body.first().map(decode::agent).transpose()
    }

    async fn list_agents(&self, filter: &AgentFilter) -> StoreResult<Vec<Agent>> {
        let body = self.call(&self.scripts.read_agents, vec![String::new()]).await?;
        let mut agents = Vec::new();
        for view in decode::array(first(&body)?)? {
            let agent = decode::agent(view)?;
            if filter.capability.as_ref().is_some_and(|c| !agent.capabilities.contains(c)) {
                continue;
            }
            if let Some(want) = filter.available {
                // The rule as the script judged it (`refusal_of`), plus readiness and room: `Standing::available`.
                let refused = decode::array(view)?.get(3).and_then(text).is_some_and(|r| !r.is_empty());
                let available = !refused
                    && agent.status == crate::model::AgentStatus::Ready
                    && agent.in_flight < agent.max_concurrent_tasks;
                if available != want {
                    continue;
                }
            }
            agents.push(agent);
        }
        Ok(agents)
    }

    async fn submit(&self, task: NewTask, offer_limit: usize) -> StoreResult<Committed> {
        let mut committed = self.submit_batch(vec![task], offer_limit).await?;
        committed.pop().ok_or_else(|| StoreError::Unavailable("redis: submit answered nothing".into()))
    }

    async fn submit_batch(&self, tasks: Vec<NewTask>, offer_limit: usize) -> StoreResult<Vec<Committed>> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let mut args = Vec::with_capacity(2 + tasks.len() * 15);
        args.push(offer_limit.to_string());
        args.push(tasks.len().to_string());
        for task in tasks {
            let data = json!({
                "task_type": task.task_type,
                "priority": task.priority,
                "required_capabilities": task.required_capabilities,
            });
            args.extend([
                task.task_id.to_string(),
                task.task_type,
                json_text(&task.payload),
                caps(&task.required_capabilities),
                task.priority.level().to_string(),
                task.timeout_seconds.to_string(),
                task.max_retries.to_string(),
                json_text(&Json::Object(task.metadata)),
                task.strategy.clone().unwrap_or_default(),
                if task.strategy.is_some() { "1" } else { "0" }.to_string(),
                task.idempotency_key.clone().unwrap_or_default(),
                if task.idempotency_key.is_some() { "1" } else { "0" }.to_string(),
                task.submitted_by,
                task.fingerprint,
                json_text(&data),
            ]);
        }
        let reply = self.run(&self.scripts.submit, args).await?;
        let now_ms = reply.now;
        let body = reply.body?;
        let offers: Vec<Arc<Offer>> = body
            .get(1)
            .map(decode::array)
            .transpose()?
            .unwrap_or(&[])
            .iter()
            .map(|claims| Ok(Arc::new(Offer { now_ms, waiting: decode::waiting_claims(claims)? })))
            .collect::<StoreResult<_>>()?;
        decode::array(first(&body)?)?
            .chunks(3)
            .map(|answer| {
                let id = text(&answer[0]).unwrap_or_default();
                let task_id = TaskId::parse("task_id", &id)
                    .map_err(|_| StoreError::Unavailable(format!("redis: submitted task id {id}")))?;
                let replayed = answer.get(1).and_then(text).as_deref() == Some("1");
                let offer_number: usize = answer.get(2).and_then(text).and_then(|n| n.parse().ok()).unwrap_or(0);
                let offer = offer_number.checked_sub(1).and_then(|i| offers.get(i)).cloned();
                Ok(Committed { submitted: Submitted { task_id, replayed }, offer })
            })
            .collect()
    }

    async fn claim_or_wait(&self, request: &ClaimRequest, wait: Option<WaitSpec>) -> StoreResult<ClaimAnswer> {
        let body = self.call(&self.scripts.claim, RedisStore::claim_args(request, wait.as_ref())).await?;
        decode::claim_answer(first(&body)?)
    }

    async fn peek(&self, capabilities: &CapabilitySet, limit: usize) -> StoreResult<Vec<Task>> {
        let body = self.call(&self.scripts.peek, vec![caps(capabilities), limit.to_string()]).await?;
        decode::tasks(first(&body)?)
    }

    async fn peek_signature(&self, signature: &CapabilitySet, limit: usize) -> StoreResult<Vec<Task>> {
        let body = self.call(&self.scripts.peek_signature, vec![caps(signature), limit.to_string()]).await?;
        decode::tasks(first(&body)?)
    }

    async fn claim_if(&self, task_id: &TaskId, request: &ClaimRequest) -> StoreResult<Option<Task>> {
        let args = vec![
            task_id.to_string(),
            request.agent_id.clone(),
            if request.capabilities.is_some() { "1" } else { "0" }.to_string(),
            request.capabilities.as_ref().map(caps).unwrap_or_default(),
            request.session_id.clone().unwrap_or_default(),
            RedisStore::lease_ids(1).remove(0),
        ];
        let body = self.call(&self.scripts.claim_if, args).await?;
        decode::maybe_task(&body, 0)
    }

    async fn register_waiter(&self, waiter: Waiter, lifetime: Duration) -> StoreResult<()> {
        let lifetime = lifetime.as_millis().to_string();
        let args = vec![waiter.token.to_string(), waiter.agent_id, caps(&waiter.capabilities), lifetime];
        self.call(&self.scripts.register_waiter, args).await.map(|_| ())
    }

    async fn withdraw_waiter(&self, token: &str) -> StoreResult<Withdrawn> {
        let body = self.call(&self.scripts.withdraw_waiter, vec![token.to_string()]).await?;
        Ok(match decode::maybe_task(&body, 0)? {
            Some(task) => Withdrawn::Assigned(Box::new(task)),
            None => Withdrawn::Unused,
        })
    }

    async fn offer(&self, task_id: &TaskId, limit: usize, after: Option<u64>) -> StoreResult<Option<Offer>> {
        let args = vec![task_id.to_string(), limit.to_string(), after.unwrap_or(0).to_string()];
        let reply = self.run(&self.scripts.offer, args).await?;
        let now_ms = reply.now;
        let waiting = decode::waiting_claims(first(&reply.body?)?)?;
        Ok((!waiting.is_empty()).then_some(Offer { now_ms, waiting }))
    }

    async fn assign(&self, task_id: &TaskId, tokens: &[&str], any_waiter: bool) -> StoreResult<Option<Assigned>> {
        let mut args = vec![task_id.to_string(), RedisStore::lease_ids(1).remove(0), u8::from(any_waiter).to_string()];
        args.extend(tokens.iter().map(|&token| token.to_owned()));
        let body = self.call(&self.scripts.assign, args).await?;
        let Some(token) = body.first().and_then(decode::shared_text) else { return Ok(None) };
        let task = decode::maybe_task(&body, 1)?
            .ok_or_else(|| StoreError::Unavailable("redis: an assignment answered no task".into()))?;
        Ok(Some(Assigned { token, task }))
    }

    async fn start(&self, task_id: &TaskId, fence: &Fence) -> StoreResult<Task> {
        let [kind, value] = fence_args(fence);
        let body = self.call(&self.scripts.start, vec![task_id.to_string(), kind, value]).await?;
        decode::task(first(&body)?)
    }

    async fn progress(&self, task_id: &TaskId, fence: &Fence, progress: Json) -> StoreResult<Task> {
        let [kind, value] = fence_args(fence);
        let args = vec![task_id.to_string(), kind, value, json_text(&progress)];
        let body = self.call(&self.scripts.progress, args).await?;
        decode::task(first(&body)?)
    }

    async fn complete(&self, task_id: &TaskId, fence: &Fence, completion: Completion) -> StoreResult<Task> {
        let mut results = self.complete_batch(vec![(task_id.clone(), fence.clone(), completion)]).await?;
        results.pop().unwrap_or_else(|| Err(StoreError::Unavailable("redis: complete answered nothing".into())))
    }

    async fn complete_batch(&self, outcomes: Vec<(TaskId, Fence, Completion)>) -> StoreResult<Vec<StoreResult<Task>>> {
        let mut args = vec![outcomes.len().to_string()];
        for (task_id, fence, completion) in &outcomes {
            let [kind, value] = fence_args(fence);
            args.extend([task_id.to_string(), kind, value]);
            args.extend(completion_args(completion));
        }
        let body = self.call(&self.scripts.complete, args).await?;
        decode::array(first(&body)?)?
            .iter()
            .map(|item| {
                let parts = decode::array(item)?;
                let part = |i: usize| parts.get(i).and_then(text).unwrap_or_default();
                if part(0) == "ok" {
                    Ok(parts
                        .get(1)
                        .map(decode::task)
                        .transpose()?
                        .ok_or_else(|| StoreError::Unavailable("redis: a completion answered no task".into())))
                } else {
                    Ok(Err(decode::error(&part(1), &part(2), part(3))))
                }
            })
            .collect()
    }

    async fn complete_and_claim(
        &self,
        task_id: &TaskId,
        fence: &Fence,
        completion: Completion,
        next: &ClaimRequest,
        wait: Option<WaitSpec>,
    ) -> StoreResult<(Task, ClaimAnswer)> {
        let [kind, value] = fence_args(fence);
        let mut args = vec![task_id.to_string(), kind, value];
        args.extend(completion_args(&completion));
        args.extend(RedisStore::claim_args(next, wait.as_ref()));
        let body = self.call(&self.scripts.complete_and_claim, args).await?;
        let done = decode::task(first(&body)?)?;
        let claimed = decode::claim_answer(
            body.get(1).ok_or_else(|| StoreError::Unavailable("redis: complete_and_claim answered no claim".into()))?,
        )?;
        Ok((done, claimed))
    }

    async fn fail(&self, task_id: &TaskId, fence: &Fence, failure: &FailRequest) -> StoreResult<Task> {
        let [kind, value] = fence_args(fence);
        let blame = match failure.kind {
            FailKind::Task => "task",
            FailKind::Agent => "agent",
        };
        let args = vec![
            task_id.to_string(),
            kind,
            value,
            failure.error.clone(),
            u8::from(failure.requeue).to_string(),
            blame.to_string(),
            RedisStore::seed(),
        ];
        let body = self.call(&self.scripts.fail, args).await?;
        decode::task(first(&body)?)
    }

    async fn cancel(&self, task_id: &TaskId) -> StoreResult<Task> {
        let body = self.call(&self.scripts.cancel, vec![task_id.to_string()]).await?;
        decode::task(first(&body)?)
    }

    async fn retry(&self, task_id: &TaskId) -> StoreResult<Task> {
        let body = self.call(&self.scripts.retry, vec![task_id.to_string()]).await?;
        decode::task(first(&body)?)
    }

    async fn prioritize(&self, task_id: &TaskId, priority: Priority) -> StoreResult<Task> {
        let args = vec![task_id.to_string(), priority.level().to_string()];
        let body = self.call(&self.scripts.prioritize, args).await?;
        decode::task(first(&body)?)
    }

    async fn release(&self, task_id: &TaskId, lease_id: &str) -> StoreResult<bool> {
        let body = self.call(&self.scripts.release, vec![task_id.to_string(), lease_id.to_string()]).await?;
        Ok(body.first().and_then(text).as_deref() == Some("1"))
    }

    async fn get_task(&self, task_id: &TaskId) -> StoreResult<Option<Task>> {
        let value: Value = redis::cmd("HGETALL")
            .arg(format!("{}task:{task_id}", self.root))
            .query_async(&mut self.commands.clone())
            .await
            .map_err(unavailable)?;
        if decode::array(&value).map(<[Value]>::is_empty).unwrap_or(true) {
            return Ok(None);
        }
        decode::task(&value).map(Some)
    }

    async fn list_tasks(&self, filter: &TaskFilter) -> StoreResult<TaskPage> {
        let before = match &filter.cursor {
            None => u64::MAX,
            Some(cursor) => cursor
                .parse::<u64>()
                .map_err(|_| StoreError::conflict("invalid_cursor", "cursor is not one this server issued"))?,
        };
        // Sequences stay far below 2^53; a larger cursor means "from the newest".
        let before = before.min(1 << 53);
        let args = vec![
            before.to_string(),
            filter.limit.clamp(1, 1000).to_string(),
            filter.status.map(|s| s.as_str().to_string()).unwrap_or_default(),
            filter.task_type.clone().unwrap_or_default(),
            filter.agent_id.clone().unwrap_or_default(),
        ];
        let body = self.call(&self.scripts.list_tasks, args).await?;
        let tasks = decode::tasks(first(&body)?)?;
        let next_cursor = body.get(1).and_then(text).filter(|c| !c.is_empty());
        Ok(TaskPage { tasks, next_cursor })
    }

    async fn sweep_timeouts(&self, limit: usize) -> StoreResult<Swept> {
        let body = self.call(&self.scripts.sweep_timeouts, vec![limit.to_string(), RedisStore::seed()]).await?;
        Ok(Swept { count: decode::number(first(&body)?)? as usize, requeued: task_ids(body.get(1))? })
    }

    async fn sweep_offline(&self, limit: usize) -> StoreResult<Swept> {
        let body = self.call(&self.scripts.sweep_offline, vec![limit.to_string(), RedisStore::seed()]).await?;
        Ok(Swept { count: decode::number(first(&body)?)? as usize, requeued: task_ids(body.get(1))? })
    }

    async fn promote_due(&self, limit: usize) -> StoreResult<Vec<TaskId>> {
        let body = self.call(&self.scripts.promote_due, vec![limit.to_string()]).await?;
        task_ids(body.first())
    }

    async fn housekeeping(&self, task_retention_ms: u64, agent_retention_ms: u64, limit: usize) -> StoreResult<usize> {
        let args = vec![task_retention_ms.to_string(), agent_retention_ms.to_string(), limit.to_string()];
        let body = self.call(&self.scripts.housekeeping, args).await?;
        Ok(decode::number(first(&body)?)? as usize)
    }

    async fn next_deadline(&self) -> StoreResult<Option<u64>> {
        let body = self.call(&self.scripts.next_deadline, Vec::new()).await?;
        Ok(text(first(&body)?).and_then(|t| t.parse().ok()))
    }

    async fn record_health(&self, agent_id: &str, verdict: HealthVerdict) -> StoreResult<AgentHealth> {
        let args = vec![
            agent_id.to_string(),
            verdict.status.as_str().to_string(),
            verdict.message,
            verdict.latency_ms.map(|l| l.to_string()).unwrap_or_default(),
        ];
        let body = self.call(&self.scripts.record_health, args).await?;
        decode::health(first(&body)?)
    }

    async fn agent_health(&self, agent_id: &str) -> StoreResult<Option<AgentHealth>> {
        if agent_id.is_empty() {
            return Ok(None);
        }
        let body = self.call(&self.scripts.health, vec![agent_id.to_string()]).await?;
        decode::array(first(&body)?)?.first().map(decode::health).transpose()
    }

    async fn agents_with_health(&self, ids: &[String]) -> StoreResult<Vec<(Agent, Option<AgentHealth>)>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let body = self.call(&self.scripts.read_candidates, ids.to_vec()).await?;
        decode::array(first(&body)?)?
            .iter()
            .map(|pair| match decode::array(pair)? {
                [agent, health] => Ok((decode::agent(agent)?, Some(decode::health(health)?))),
                _ => Err(StoreError::Unavailable("redis: malformed candidate".into())),
            })
            .collect()
    }

    async fn all_health(&self) -> StoreResult<Vec<AgentHealth>> {
        let body = self.call(&self.scripts.health, vec![String::new()]).await?;
        decode::array(first(&body)?)?.iter().map(decode::health).collect()
    }

    async fn record_event(&self, kind: EventKind, task_id: Option<&TaskId>, data: Json) -> StoreResult<()> {
        let task = task_id.map(TaskId::to_string).unwrap_or_default();
        let args = vec![kind.as_str().to_string(), task, json_text(&data)];
        self.call(&self.scripts.record_event, args).await.map(|_| ())
    }

    async fn keep_alive(&self, agent_id: &str) -> StoreResult<()> {
        self.call(&self.scripts.keep_alive, vec![agent_id.to_string()]).await.map(|_| ())
    }

    async fn mark_assigned(&self, agent_id: &str) -> StoreResult<()> {
        self.call(&self.scripts.mark_assigned, vec![agent_id.to_string()]).await.map(|_| ())
    }

    async fn idempotent_task(&self, submitted_by: &str, key: &str) -> StoreResult<Option<(TaskId, String)>> {
        let body = self.call(&self.scripts.idempotent_task, vec![submitted_by.to_string(), key.to_string()]).await?;
        let (Some(task), Some(fingerprint)) = (body.first().and_then(text), body.get(1).and_then(text)) else {
            return Ok(None);
        };
        let task_id = TaskId::parse("task_id", &task)
            .map_err(|_| StoreError::Unavailable(format!("redis: idempotent task id {task}")))?;
        Ok(Some((task_id, fingerprint)))
    }

    async fn change_plugin(&self, change: PluginChange) -> StoreResult<PluginRecord> {
        use base64::Engine as _;
        let verb = change.action.as_str().to_string();
        let encode = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        // (sha256, manifest, size, bytes, mode, percent, expected sha256, detail)
        let mut args: [String; 8] = Default::default();
        match change.action {
            PluginAction::Upload { bytes, sha256, manifest } => {
                args[..4].clone_from_slice(&[
                    sha256,
                    manifest.unwrap_or_default(),
                    bytes.len().to_string(),
                    encode(&bytes),
                ]);
            }
            PluginAction::Stage { bytes, sha256, manifest, mode } => {
                let percent = match mode {
                    RolloutMode::Canary { percent } => percent.to_string(),
                    RolloutMode::Shadow => String::new(),
                };
                args = [
                    sha256,
                    manifest.unwrap_or_default(),
                    bytes.len().to_string(),
                    encode(&bytes),
                    mode.name().to_string(),
                    percent,
                    String::new(),
                    mode.describe(),
                ];
            }
            PluginAction::Promote { sha256 } => args[6] = sha256.unwrap_or_default(),
            PluginAction::Rollback { sha256, reason } => {
                args[6] = sha256.unwrap_or_default();
                args[7] = reason.unwrap_or_default();
            }
            PluginAction::Delete | PluginAction::Enable | PluginAction::Disable => {}
        }
        let mut call = vec![change.name, verb, change.by];
        call.extend(args);
        let body = self.call(&self.scripts.plugin_change, call).await?;
        let history =
            body.get(1).ok_or_else(|| StoreError::Unavailable("redis: plugin_change answered no history".into()))?;
        decode::plugin_record(first(&body)?, history)
    }

    async fn server_alive(&self, server_id: &str, ttl_ms: u64) -> StoreResult<Vec<String>> {
        let body = self.call(&self.scripts.server_alive, vec![server_id.to_string(), ttl_ms.to_string()]).await?;
        decode::array(first(&body)?)?
            .iter()
            .map(|v| text(v).ok_or_else(|| StoreError::Unavailable("redis: a server id is not text".into())))
            .collect()
    }

    async fn record_violations(&self, violations: Vec<NewViolation>) -> StoreResult<Vec<Violation>> {
        if violations.is_empty() {
            return Ok(Vec::new());
        }
        let mut args = vec![violations.len().to_string()];
        for v in violations {
            args.extend([
                v.policy,
                v.stage.to_string(),
                v.decision.to_string(),
                v.reason,
                v.task_id.unwrap_or_default(),
                v.agent_id.unwrap_or_default(),
            ]);
        }
        let body = self.call(&self.scripts.record_violations, args).await?;
        decode::violations(first(&body)?)
    }

    async fn violations(&self, limit: usize) -> StoreResult<Vec<Violation>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let body = self.call(&self.scripts.violations, vec![limit.to_string()]).await?;
        decode::violations(first(&body)?)
    }

    async fn update_violation(&self, id: &str, update: ViolationUpdate) -> StoreResult<Option<Violation>> {
        let args = vec![id.to_string(), update.status.as_str().to_string(), update.note.unwrap_or_default(), update.by];
        let body = self.call(&self.scripts.update_violation, args).await?;
        Ok(decode::violations(first(&body)?)?.into_iter().next())
    }

    async fn plugin_records(&self) -> StoreResult<Vec<PluginRecord>> {
        self.read_plugins("").await
    }

    async fn plugin_record(&self, name: &str) -> StoreResult<Option<PluginRecord>> {
        Ok(self.read_plugins(name).await?.pop())
    }

    async fn plugin_component(&self, name: &str) -> StoreResult<Option<(String, Vec<u8>)>> {
        self.read_component(name, false).await
    }

    async fn plugin_candidate_component(&self, name: &str) -> StoreResult<Option<(String, Vec<u8>)>> {
        self.read_component(name, true).await
    }

    async fn append_decisions(
        &self,
        records: Vec<DecisionRecord>,
        keep: usize,
        retention_ms: u64,
    ) -> StoreResult<Vec<String>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let mut args = vec![
            keep.to_string(),
            DECISIONS_PER_TASK.to_string(),
            retention_ms.max(1).to_string(),
            records.len().to_string(),
        ];
        for record in &records {
            args.push(serde_json::to_string(record).expect("a decision serializes"));
            args.push(record.task_id.clone().unwrap_or_default());
        }
        let body = self.call(&self.scripts.decisions_append, args).await?;
        let ids = decode::array(first(&body)?)?;
        Ok(ids.iter().map(|id| text(id).unwrap_or_default()).collect())
    }

    async fn task_decisions(&self, task_id: &str) -> StoreResult<Vec<DecisionRecord>> {
        let body = self.call(&self.scripts.decisions_read, vec!["task".into(), task_id.to_string()]).await?;
        decode::decisions(first(&body)?)
    }

    async fn decisions(
        &self,
        after: Option<&str>,
        since_ms: Option<u64>,
        limit: usize,
    ) -> StoreResult<Vec<DecisionRecord>> {
        let start = match (after, since_ms) {
            (Some(after), _) => format!("({after}"),
            (None, Some(since)) => since.to_string(),
            (None, None) => "-".into(),
        };
        let args = vec!["range".into(), start, limit.clamp(1, 1_000).to_string()];
        let body = self.call(&self.scripts.decisions_read, args).await?;
        decode::decisions(first(&body)?)
    }

    async fn trim_decisions(&self, before_ms: u64, _limit: usize) -> StoreResult<usize> {
        let body = self.call(&self.scripts.decisions_trim, vec![before_ms.to_string()]).await?;
        Ok(body.first().and_then(text).and_then(|t| t.parse().ok()).unwrap_or(0))
    }

    async fn audit_head(&self) -> StoreResult<AuditHead> {
        let body = self.call(&self.scripts.audit_read, vec!["head".into()]).await?;
        Ok(decode::audit_head(&body))
    }

    async fn append_audit(&self, expected_seq: u64, entries: Vec<AuditEntry>) -> StoreResult<Option<AuditHead>> {
        let Some(last) = entries.last() else { return Ok(None) };
        let mut args = vec![expected_seq.to_string(), entries.len().to_string()];
        let end = last.hash.clone();
        for entry in &entries {
            args.push(entry.seq.to_string());
            args.push(serde_json::to_string(entry).expect("an audit entry serializes"));
        }
        args.push(end);
        let body = self.call(&self.scripts.audit_append, args).await?;
        if body.first().and_then(text).as_deref() == Some("1") {
            return Ok(None);
        }
        Ok(Some(decode::audit_head(body.get(1..).unwrap_or_default())))
    }

    async fn audit_entries(&self, from: u64, to: u64) -> StoreResult<Vec<AuditEntry>> {
        let (from, to) = (from.max(1), to.min(from.max(1) + 999));
        if to < from {
            return Ok(Vec::new());
        }
        let args = vec!["range".into(), from.to_string(), to.to_string()];
        let body = self.call(&self.scripts.audit_read, args).await?;
        let entries = decode::array(first(&body)?)?.iter().zip(from..=to).filter_map(|(value, seq)| {
            let json = text(value)?;
            // An entry edited into something unreadable is kept as an entry that cannot check, so verification
            // names it instead of failing the read.
            Some(serde_json::from_str(&json).unwrap_or_else(|_| AuditEntry {
                id: format!("audit_{seq}"),
                seq,
                time: String::new(),
                actor: String::new(),
                action: String::new(),
                resource: String::new(),
                request_id: String::new(),
                outcome: String::new(),
                details: Default::default(),
                prev_hash: String::new(),
                hash: "unreadable".into(),
            }))
        });
        Ok(entries.collect())
    }

    async fn audit_checkpoint(&self) -> StoreResult<Option<AuditCheckpoint>> {
        let body = self.call(&self.scripts.audit_read, vec!["checkpoint".into()]).await?;
        match body.first().and_then(text).filter(|json| !json.is_empty()) {
            None => Ok(None),
            Some(json) => serde_json::from_str(&json)
                .map(Some)
                .map_err(|_| StoreError::Unavailable("redis: the audit checkpoint does not parse".into())),
        }
    }

    async fn trim_audit(&self, checkpoint: AuditCheckpoint) -> StoreResult<bool> {
        let json = serde_json::to_string(&checkpoint).expect("a checkpoint serializes");
        let body = self.call(&self.scripts.audit_trim, vec![checkpoint.seq.to_string(), json]).await?;
        Ok(body.first().and_then(text).as_deref() == Some("1"))
    }

    async fn put_schedule(&self, record: ScheduleRecord, replace_next: bool) -> StoreResult<ScheduleRecord> {
        let args = vec![
            "put".to_string(),
            record.id,
            record.definition,
            record.next_run_ms.map(|n| n.to_string()).unwrap_or_default(),
            if replace_next { "1" } else { "0" }.to_string(),
            MAX_SCHEDULES.to_string(),
        ];
        let body = self.call(&self.scripts.schedule_change, args).await?;
        decode::schedule(first(&body)?)
    }

    async fn schedule(&self, id: &str) -> StoreResult<Option<ScheduleRecord>> {
        Ok(self.read_schedules(vec!["one".into(), id.to_string()]).await?.pop())
    }

    async fn schedules(&self) -> StoreResult<Vec<ScheduleRecord>> {
        self.read_schedules(vec!["all".into()]).await
    }

    async fn delete_schedule(&self, id: &str) -> StoreResult<bool> {
        let body = self.call(&self.scripts.schedule_change, vec!["delete".into(), id.to_string()]).await?;
        Ok(body.first().and_then(text).as_deref() == Some("1"))
    }

    async fn due_schedules(&self, limit: usize) -> StoreResult<Due<ScheduleRecord>> {
        let body = self.call(&self.scripts.schedule_read, vec!["due".into(), limit.to_string()]).await?;
        Ok(Due { items: schedules_in(&body)?, next_in_ms: next_in_ms(&body) })
    }

    async fn advance_schedule(&self, advance: ScheduleAdvance) -> StoreResult<bool> {
        let (last_tick, last_task) = match advance.fired {
            Some((tick, task)) => (tick.to_string(), task.unwrap_or_default()),
            None => (String::new(), String::new()),
        };
        let args = vec![
            "advance".to_string(),
            advance.id,
            advance.from_ms.to_string(),
            advance.next_ms.map(|n| n.to_string()).unwrap_or_default(),
            last_tick,
            last_task,
            advance.error.unwrap_or_default(),
            advance.runs.to_string(),
            advance.skipped.to_string(),
        ];
        let body = self.call(&self.scripts.schedule_change, args).await?;
        Ok(body.first().and_then(text).as_deref() == Some("1"))
    }

    async fn put_channel(&self, channel: &Channel) -> StoreResult<()> {
        let definition = serde_json::to_string(channel).expect("a channel serializes");
        let args = vec!["put_channel".into(), channel.id.clone(), definition, MAX_CHANNELS.to_string()];
        self.call(&self.scripts.notify_change, args).await.map(drop)
    }

    async fn channels(&self) -> StoreResult<Vec<Channel>> {
        let body = self.call(&self.scripts.notify_read, vec!["channels".into()]).await?;
        let stored = decode::array(first(&body)?)?;
        let mut channels: Vec<Channel> =
            stored.iter().filter_map(text).map(|json| Channel::from_stored(&json)).collect::<StoreResult<_>>()?;
        channels.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(channels)
    }

    async fn delete_channel(&self, id: &str) -> StoreResult<bool> {
        let body = self.call(&self.scripts.notify_change, vec!["delete_channel".into(), id.to_string()]).await?;
        Ok(body.first().and_then(text).as_deref() == Some("1"))
    }

    async fn notification_cursor(&self) -> StoreResult<Option<String>> {
        let body = self.call(&self.scripts.notify_read, vec!["cursor".into()]).await?;
        Ok(body.first().and_then(text).filter(|cursor| !cursor.is_empty()))
    }

    async fn enqueue_deliveries(&self, from: Option<&str>, to: &str, deliveries: Vec<Delivery>) -> StoreResult<bool> {
        let mut args = Vec::with_capacity(4 + deliveries.len() * 3);
        args.extend(["enqueue".to_string(), from.unwrap_or_default().to_string(), to.to_string()]);
        args.push(deliveries.len().to_string());
        for delivery in deliveries {
            args.extend([delivery.id, delivery.channel_id, delivery.message]);
        }
        let body = self.call(&self.scripts.notify_change, args).await?;
        Ok(body.first().and_then(text).as_deref() == Some("1"))
    }

    async fn claim_deliveries(&self, limit: usize, lease_ms: u64) -> StoreResult<Due<Delivery>> {
        let args = vec!["claim".into(), limit.to_string(), lease_ms.to_string()];
        let body = self.call(&self.scripts.notify_change, args).await?;
        let items = decode::array(first(&body)?)?.iter().map(decode::delivery).collect::<StoreResult<_>>()?;
        Ok(Due { items, next_in_ms: next_in_ms(&body) })
    }

    async fn finish_delivery(&self, id: &str, attempt: u32, result: AttemptResult) -> StoreResult<bool> {
        let (outcome, status, error, delay) = match result {
            AttemptResult::Sent { status } => ("sent", Some(status), String::new(), 0),
            AttemptResult::Failed { error, status, retry_in_ms: Some(delay) } => ("retry", status, error, delay),
            AttemptResult::Failed { error, status, retry_in_ms: None } => ("dead", status, error, 0),
        };
        let args = vec![
            "finish".into(),
            id.to_string(),
            attempt.to_string(),
            outcome.to_string(),
            status.map(|s| s.to_string()).unwrap_or_default(),
            error,
            delay.to_string(),
            SENT_KEPT.to_string(),
            DEAD_KEPT.to_string(),
        ];
        let body = self.call(&self.scripts.notify_change, args).await?;
        Ok(body.first().and_then(text).as_deref() == Some("1"))
    }

    async fn retry_delivery(&self, id: &str) -> StoreResult<Option<Delivery>> {
        let body = self.call(&self.scripts.notify_change, vec!["retry".into(), id.to_string()]).await?;
        let record = first(&body)?;
        if decode::array(record)?.is_empty() {
            return Ok(None);
        }
        decode::delivery(record).map(Some)
    }

    async fn deliveries(&self, status: Option<DeliveryStatus>, limit: usize) -> StoreResult<Vec<Delivery>> {
        let status = status.map(|s| s.as_str().to_string()).unwrap_or_default();
        let body = self.call(&self.scripts.notify_read, vec!["list".into(), status, limit.max(1).to_string()]).await?;
        decode::array(first(&body)?)?.iter().map(decode::delivery).collect()
    }

    async fn delivery(&self, id: &str) -> StoreResult<Option<Delivery>> {
        let body = self.call(&self.scripts.notify_read, vec!["one".into(), id.to_string()]).await?;
        let record = decode::array(first(&body)?)?.first().cloned().unwrap_or(Value::Nil);
        if decode::array(&record)?.is_empty() {
            return Ok(None);
        }
        decode::delivery(&record).map(Some)
    }

    async fn notification_figures(&self) -> StoreResult<BTreeMap<String, ChannelFigures>> {
        let body = self.call(&self.scripts.notify_read, vec!["figures".into()]).await?;
        let mut figures = BTreeMap::new();
        for pair in decode::array(first(&body)?)?.chunks(2) {
            let [channel, counters] = pair else { continue };
            let counters = decode::hash(counters)?;
            let count = |name: &str| counters.get(name).and_then(|v| v.parse().ok()).unwrap_or(0);
            figures.insert(
                text(channel).unwrap_or_default(),
                ChannelFigures {
                    sent: count("sent"),
                    failed: count("failed"),
                    dead: count("dead"),
                    dropped: count("dropped"),
                    enqueued: count("enqueued"),
                },
            );
        }
        Ok(figures)
    }

    async fn queue_figures(&self) -> StoreResult<QueueFigures> {
        let reply = self.run(&self.scripts.queue_figures, Vec::new()).await?;
        let body = reply.body?;
        // A sorted set's score comes back as a double's text.
        let number = |value: &Value| text(value).and_then(|t| t.parse::<f64>().ok()).map(|n| n.max(0.0) as u64);
        let mut ready_by_signature = Vec::new();
        for pair in decode::array(first(&body)?)?.chunks(2) {
            let signature = pair.first().and_then(text).unwrap_or_default();
            let names = signature.split(',').filter(|name| !name.is_empty()).map(str::to_string).collect();
            ready_by_signature.push((names, pair.get(1).and_then(number).unwrap_or(0)));
        }
        ready_by_signature.sort();
        let waits = body.get(3).map(decode::array).transpose()?.unwrap_or_default();
        Ok(QueueFigures {
            now_ms: reply.now,
            ready_by_signature,
            delayed: body.get(1).and_then(number).unwrap_or(0),
            oldest_waiting_since_ms: body.get(2).and_then(number),
            claim_waits_ms: waits.iter().filter_map(number).collect(),
        })
    }

    /// The smallest script, the clock: it shows Redis answers and the library is loaded, whatever the data.
    async fn check(&self) -> StoreResult<()> {
        self.run(&self.scripts.now, Vec::new()).await.map(drop)
    }

    async fn stats(&self) -> StoreResult<FleetStats> {
        let body = self.call(&self.scripts.stats, Vec::new()).await?;
        let tasks = decode::hash(first(&body)?)?;
        let agents = body.get(1).map(decode::hash).transpose()?.unwrap_or_default();
        let count = |i: usize| body.get(i).and_then(text).and_then(|t| t.parse().ok()).unwrap_or(0u64);
        let mut stats = FleetStats { live_signatures: count(2), waiting_claims: count(3), ..FleetStats::default() };
        for (field, value) in tasks {
            let Ok(value) = value.parse::<i64>() else { continue };
            let value = value.max(0) as u64;
            if let Some(status) = field.strip_prefix("status:") {
                if status.parse::<TaskStatus>().is_ok() {
                    stats.tasks_by_status.insert(status.to_string(), value);
                }
            } else if let Some(priority) = field.strip_prefix("prio:") {
                if priority.parse::<Priority>().is_ok() {
                    stats.pending_by_priority.insert(priority.to_string(), value);
                }
            } else if let Some(task_type) = field.strip_prefix("type:") {
                if value > 0 {
                    stats.tasks_by_type.insert(task_type.to_string(), value);
                }
            } else if field == "examined" {
                stats.last_claim_examined = value;
            }
        }
        for (field, value) in agents {
            let Ok(value) = value.parse::<i64>() else { continue };
            let value = value.max(0) as u64;
            let entry = |map: &mut std::collections::BTreeMap<String, u64>, key: &str| {
                if value > 0 {
                    map.insert(key.to_string(), value);
                }
            };
            if let Some(status) = field.strip_prefix("status:") {
                entry(&mut stats.agents_by_status, status);
            } else if let Some(capability) = field.strip_prefix("cap:") {
                entry(&mut stats.agents_by_capability, capability);
            } else if let Some(provider) = field.strip_prefix("provider:") {
                entry(&mut stats.agents_by_provider, provider);
            } else if let Some(health) = field.strip_prefix("health:") {
                entry(&mut stats.agents_by_health, health);
            } else {
                match &*field {
                    "total" => stats.total_agents = value,
                    "available" => stats.available_agents = value,
                    "open_breakers" => stats.open_breakers = value,
                    _ => {}
                }
            }
        }
        Ok(stats)
    }
}
