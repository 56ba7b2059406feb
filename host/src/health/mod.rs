//! Health monitoring: every `PROBE_INTERVAL` each live agent is judged by the active health-probe plugins from
//! what the host observed (heartbeat age, outcomes since the last round, latency, the HTTP check of its
//! `health_url`), within `PROBE_TIMEOUT`, at most `PROBE_CONCURRENCY` at once. The verdict goes to the store,
//! which keeps health and the circuit breakers (so every server sees them) and refuses work to unhealthy agents
//! and open breakers. The built-in `heartbeat_probe` is active unless overridden or disabled; with no probe at all,
//! health is liveness alone.
//!
//! With several servers on one store, each agent is probed by one of them: every round a server records itself
//! as alive in the store and takes the agents whose rendezvous hash over the live servers names it, so a fleet of
//! N servers probes each agent once per round and a dead server's agents move to the others within a round or two.

pub mod http_check;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::model::{Agent, AgentStatus};
use crate::model::{AgentFilter, HealthState, HealthVerdict};
use crate::plugins::bindings::{CallContext, Observations};
use crate::plugins::convert;
use crate::plugins::{PluginRegistry, PluginVersion};
use crate::store::Store;

/// How probing runs (DESIGN §8).
#[derive(Clone, Debug)]
pub struct ProbeSettings {
    /// Time between rounds (`PROBE_INTERVAL`, 30 s).
    pub interval: Duration,
    /// Time one agent's probing may take, HTTP check included (`PROBE_TIMEOUT`, 10 s).
    pub timeout: Duration,
    /// Agents probed at once (`PROBE_CONCURRENCY`, 32).
    pub concurrency: usize,
    /// Hosts whose loopback addresses the HTTP check may reach (`PROBE_ALLOWED_HOSTS`).
    pub allowed_hosts: Vec<String>,
    /// Whom an `https` check trusts: Mozilla's roots and `PROBE_CA_FILE`'s certificates.
    pub trust: http_check::ProbeTrust,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        ProbeSettings {
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
            concurrency: 32,
            allowed_hosts: Vec::new(),
            trust: http_check::ProbeTrust::public(),
        }
    }
}

/// The health monitor; shared as `Arc<HealthMonitor>`.
pub struct HealthMonitor {
    server_id: String,
    store: Arc<dyn Store>,
    plugins: Arc<PluginRegistry>,
    settings: ProbeSettings,
    /// Per agent, (completed, failed) at the previous round: "recent" outcomes are the difference.
    last_counts: Mutex<HashMap<String, (u64, u64)>>,
}

/// The server that probes `agent_id`: the one with the highest hash of (server, agent). Stable (FNV-1a, not the
/// process-seeded std hasher, so every server computes the same owner) and minimal in movement: when a server
/// joins or leaves, only the agents it wins or held change hands.
pub fn rendezvous_owner<'a>(agent_id: &str, servers: &'a [String]) -> Option<&'a str> {
    let score = |server: &str| {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in server.bytes().chain([0xff]).chain(agent_id.bytes()) {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        // FNV's low bits mix poorly on similar inputs; a final avalanche (splitmix64) spreads them.
        hash ^= hash >> 30;
        hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        hash ^= hash >> 27;
        hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
        hash ^ (hash >> 31)
    };
    servers.iter().max_by_key(|server| (score(server), server.as_str())).map(String::as_str)
}

/// Severity for combining several probes: the worst verdict wins; `unknown` says least.
fn severity(state: HealthState) -> u8 {
    match state {
        HealthState::Unknown => 0,
        HealthState::Healthy => 1,
        HealthState::Degraded => 2,
        HealthState::Unhealthy => 3,
    }
}

impl HealthMonitor {
    /// A monitor probing the agents of `store` with the probe plugins of `plugins`.
    pub fn new(
        server_id: String,
        store: Arc<dyn Store>,
        plugins: Arc<PluginRegistry>,
        settings: ProbeSettings,
    ) -> Self {
        HealthMonitor { server_id, store, plugins, settings, last_counts: Mutex::new(HashMap::new()) }
    }

    /// Probes every live agent this server owns once; returns how many verdicts were recorded.
    pub async fn probe_round(self: &Arc<Self>) -> usize {
        // Presence is recorded even with no probe loaded, so other servers count this one consistently.
        let alive_for = (self.settings.interval * 3).as_millis() as u64;
        let servers = match self.store.server_alive(&self.server_id, alive_for).await {
            Ok(servers) => servers,
            Err(_) => return 0,
        };
        let probes = self.plugins.probes();
        if probes.is_empty() {
            return 0;
        }
        let Ok(agents) = self.store.list_agents(&AgentFilter::default()).await else { return 0 };
        let agents: Vec<Agent> = agents
            .into_iter()
            .filter(|a| rendezvous_owner(&a.agent_id, &servers).is_none_or(|owner| owner == self.server_id))
            .collect();
        let semaphore = Arc::new(tokio::sync::Semaphore::new(self.settings.concurrency.max(1)));
        let mut rounds = Vec::new();
        for agent in agents.into_iter().filter(|a| a.status != AgentStatus::Offline) {
            let monitor = self.clone();
            let probes = probes.clone();
            let semaphore = semaphore.clone();
            rounds.push(tokio::spawn(async move {
                let _permit = semaphore.acquire_owned().await.ok()?;
                // Jitter spreads a round's HTTP checks instead of firing them all at once.
                tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 50)).await;
                let verdict = tokio::time::timeout(monitor.settings.timeout, monitor.judge(&agent, &probes))
                    .await
                    .unwrap_or_else(|_| HealthVerdict {
                        status: HealthState::Unknown,
                        message: format!("probing took longer than {:?}", monitor.settings.timeout),
                        latency_ms: None,
                    });
                monitor.store.record_health(&agent.agent_id, verdict).await.ok()
            }));
        }
        let mut recorded = 0;
        for round in rounds {
            if let Ok(Some(_)) = round.await {
                recorded += 1;
            }
        }
        recorded
    }

    /// Observes one agent and asks every probe; the worst verdict wins.
    async fn judge(&self, agent: &Agent, probes: &[Arc<PluginVersion>]) -> HealthVerdict {
        let now = self.store.now_ms();
        let (successes, failures) = {
            let mut last = self.last_counts.lock();
            let previous = last.insert(agent.agent_id.clone(), (agent.tasks_completed, agent.tasks_failed));
            let (completed, failed) = previous.unwrap_or((agent.tasks_completed, agent.tasks_failed));
            (agent.tasks_completed.saturating_sub(completed), agent.tasks_failed.saturating_sub(failed))
        };
        let http = match &agent.health_url {
            // Half the probing budget: a blackholed URL must leave time for the probes to judge the failure.
            Some(url) => {
                let settings = &self.settings;
                Some(http_check::check(url, &settings.allowed_hosts, &settings.trust, settings.timeout / 2).await)
            }
            None => None,
        };
        let latency_ms = http.as_ref().and_then(|h| h.error.is_none().then_some(f64::from(h.latency_ms)));
        let heartbeat_age_ms = convert::age_ms(&agent.last_heartbeat, now);
        let observed = Observations {
            heartbeat_age_ms,
            recent_successes: successes.min(u64::from(u32::MAX)) as u32,
            recent_failures: failures.min(u64::from(u32::MAX)) as u32,
            latency_p50_ms: agent.avg_latency_ms.round().clamp(0.0, f64::from(u32::MAX)) as u32,
            http,
        };
        let mut worst: Option<HealthVerdict> = None;
        for probe in probes {
            let (probe, plugins, agent) = (probe.clone(), self.plugins.clone(), agent.clone());
            let observed = observed.clone();
            let ctx = CallContext { now_ms: now, seed: rand::random() };
            // Probes may take up to their deadline (1 s by default): off the async workers. The registry runs
            // the name's canary instead when it takes this agent, and records the decision.
            let answer = tokio::task::spawn_blocking(move || {
                plugins.probe(&probe, ctx, &agent, &observed).map(|r| (probe.name.clone(), r))
            })
            .await;
            let verdict = match answer {
                Ok(Ok((name, result))) => HealthVerdict {
                    status: result.status.into(),
                    message: format!("{name}: {}", result.message),
                    latency_ms,
                },
                Ok(Err(error)) => HealthVerdict {
                    status: HealthState::Unknown,
                    message: format!("probe failed: {error}"),
                    latency_ms,
                },
                Err(_) => HealthVerdict { status: HealthState::Unknown, message: "probe panicked".into(), latency_ms },
            };
            if worst.as_ref().is_none_or(|w| severity(verdict.status) > severity(w.status)) {
                worst = Some(verdict);
            }
        }
        worst.unwrap_or(HealthVerdict { status: HealthState::Unknown, message: "no probe".into(), latency_ms })
    }

    /// Probes every `PROBE_INTERVAL` until `shutdown` fires.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.settings.interval) => {}
            }
            self.probe_round().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::rendezvous_owner;

    #[test]
    fn rendezvous_spreads_agents_and_moves_only_a_leaving_servers_share() {
        let three: Vec<String> = ["cp-a", "cp-b", "cp-c"].map(String::from).to_vec();
        let agents: Vec<String> = (0..3000).map(|n| format!("agent-{n}")).collect();
        let owners: Vec<&str> = agents.iter().map(|a| rendezvous_owner(a, &three).unwrap()).collect();
        for server in &three {
            let share = owners.iter().filter(|o| **o == server.as_str()).count();
            assert!((800..1200).contains(&share), "{server} owns {share} of 3000");
        }
        let two: Vec<String> = three[..2].to_vec();
        for (agent, before) in agents.iter().zip(&owners) {
            let after = rendezvous_owner(agent, &two).unwrap();
            if *before != "cp-c" {
                assert_eq!(after, *before, "{agent} moved although its server stayed");
            }
        }
        assert_eq!(rendezvous_owner("x", &[]), None);
    }
}
