//! Choosing the store at start-up (DESIGN §6): `REDIS_URL` unset → the Redis at `localhost:6379` if one answers,
//! else the memory store with a loud warning (or an exit with `ARAGORA_REQUIRE_REDIS=1`); `memory://` → memory;
//! an explicit `redis://`, `rediss://` or `redis+cluster://` URL never falls back: it is retried for
//! `REDIS_CONNECT_TIMEOUT`, then the process exits naming `REDIS_URL`. A fleet whose servers silently split
//! between Redis and private memory stores would hand the same work out twice, which is why an explicit URL never
//! degrades.

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;

use super::{MemoryStore, RedisStore, Store, StoreConfig, SystemClock};

/// Where `REDIS_URL` unset looks first.
pub const DEFAULT_REDIS_URL: &str = "redis://localhost:6379";

/// The start-up settings that choose the store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// `REDIS_URL` (`None` when unset or empty).
    pub redis_url: Option<String>,
    /// `ARAGORA_REQUIRE_REDIS`: never fall back to memory.
    pub require_redis: bool,
    /// `REDIS_CONNECT_TIMEOUT`: how long an explicit URL is retried.
    pub connect_timeout: Duration,
    /// `CONTROL_PLANE_PREFIX`: the start of every Redis key.
    pub prefix: String,
}

/// Which store was opened (the dev token and `serve`'s banner depend on it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// The embedded memory store.
    Memory,
    /// Redis, standalone or cluster.
    Redis,
}

/// Opens the store `options` choose.
pub async fn open(options: &StoreOptions, config: StoreConfig) -> anyhow::Result<(Arc<dyn Store>, StoreKind)> {
    if options.prefix.is_empty() || options.prefix.contains(['{', '}']) {
        bail!("CONTROL_PLANE_PREFIX: must be non-empty and free of braces (got {:?})", options.prefix);
    }
    let memory = |config| -> (Arc<dyn Store>, StoreKind) {
        (Arc::new(MemoryStore::new(config, Arc::new(SystemClock::default()))), StoreKind::Memory)
    };
    match options.redis_url.as_deref().map(str::trim).filter(|u| !u.is_empty()) {
        Some("memory://" | "memory") => {
            if options.require_redis {
                bail!("ARAGORA_REQUIRE_REDIS=1 contradicts REDIS_URL=memory://");
            }
            tracing::info!("REDIS_URL=memory://: the embedded memory store (state lives and dies with this process)");
            Ok(memory(config))
        }
        Some(url) if ["redis://", "rediss://", "redis+cluster://"].iter().any(|s| url.starts_with(s)) => {
            let store = connect_with_retries(url, options, config).await?;
            Ok((store, StoreKind::Redis))
        }
        Some(url) => {
            bail!("REDIS_URL: {:?} is not a redis://, rediss://, redis+cluster:// or memory:// URL", redact(url))
        }
        None => match tokio::time::timeout(
            Duration::from_secs(2),
            RedisStore::connect(DEFAULT_REDIS_URL, &options.prefix, config.clone()),
        )
        .await
        {
            Ok(Ok(store)) => {
                tracing::info!("REDIS_URL unset: using the Redis answering at {DEFAULT_REDIS_URL}");
                warn_on_eviction(&store).await;
                Ok((Arc::new(store), StoreKind::Redis))
            }
            _ if options.require_redis => bail!(
                "ARAGORA_REQUIRE_REDIS=1: REDIS_URL is unset and no Redis answers at {DEFAULT_REDIS_URL}; set REDIS_URL"
            ),
            _ => {
                tracing::warn!(
                    "REDIS_URL unset and no Redis at {DEFAULT_REDIS_URL}: running on the IN-MEMORY store. State is \
                     lost when this process exits and is not shared with other servers. Set REDIS_URL for a fleet, \
                     REDIS_URL=memory:// to silence this warning, or ARAGORA_REQUIRE_REDIS=1 to refuse to start."
                );
                Ok(memory(config))
            }
        },
    }
}

/// Retries an explicit URL until `connect_timeout`, then gives up naming `REDIS_URL`.
async fn connect_with_retries(
    url: &str,
    options: &StoreOptions,
    config: StoreConfig,
) -> anyhow::Result<Arc<dyn Store>> {
    let shown = redact(url);
    let deadline = tokio::time::Instant::now() + options.connect_timeout;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let bound = remaining.clamp(Duration::from_millis(100), Duration::from_secs(5));
        let outcome = tokio::time::timeout(bound, RedisStore::connect(url, &options.prefix, config.clone())).await;
        let error = match outcome {
            Ok(Ok(store)) => {
                tracing::info!(url = %shown, attempt, "connected to Redis");
                warn_on_eviction(&store).await;
                return Ok(Arc::new(store));
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {} s", bound.as_secs_f64()),
        };
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "REDIS_URL: cannot reach {shown} within REDIS_CONNECT_TIMEOUT ({} s): {error}",
                options.connect_timeout.as_secs_f64()
            );
        }
        tracing::warn!(url = %shown, attempt, %error, "Redis not reachable yet; retrying until REDIS_CONNECT_TIMEOUT");
        tokio::time::sleep(Duration::from_secs(1).min(remaining)).await;
    }
}

/// Eviction would silently drop tasks and leases: say so loudly (DESIGN §6 asks for `noeviction`).
async fn warn_on_eviction(store: &RedisStore) {
    match store.maxmemory_policy().await {
        Ok(policy) if policy == "noeviction" => {}
        Ok(policy) => tracing::warn!(
            %policy,
            "Redis maxmemory-policy is not noeviction: under memory pressure Redis may evict tasks, leases and \
             agents; set `maxmemory-policy noeviction`"
        ),
        Err(error) => tracing::warn!(%error, "could not read Redis maxmemory-policy (CONFIG GET refused?)"),
    }
}

/// The URL with any password replaced, for logs and errors.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(redact("redis://:s3cret@db:6379/0"), "redis://:***@db:6379/0");
        assert_eq!(redact("redis://db:6379"), "redis://db:6379");
    }

    #[tokio::test]
    async fn bad_urls_and_prefixes_are_refused_naming_the_variable() {
        let options = |url: &str, prefix: &str| StoreOptions {
            redis_url: Some(url.into()),
            require_redis: false,
            connect_timeout: Duration::from_millis(200),
            prefix: prefix.into(),
        };
        let error = open(&options("http://x", "p:"), StoreConfig::default()).await.err().unwrap();
        assert!(error.to_string().starts_with("REDIS_URL"), "{error}");
        let error = open(&options("memory://", "a{b}"), StoreConfig::default()).await.err().unwrap();
        assert!(error.to_string().starts_with("CONTROL_PLANE_PREFIX"), "{error}");
        // Nothing listens on port 1: an explicit URL is retried, then refused naming REDIS_URL.
        let error = open(&options("redis://127.0.0.1:1", "p:"), StoreConfig::default()).await.err().unwrap();
        assert!(error.to_string().starts_with("REDIS_URL: cannot reach"), "{error}");
        let (_, kind) = open(&options("memory://", "p:"), StoreConfig::default()).await.unwrap();
        assert_eq!(kind, StoreKind::Memory);
    }
}
