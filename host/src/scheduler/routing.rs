//! Routing new work to waiting agents through strategy plugins (DESIGN §4): after a submit commits, the task's
//! strategy chooses among the blocked claims that could take it, and the store's `assign` hands it over only if
//! the task is still pending, the waiter token unused and the agent still eligible; on failure the next choice is
//! tried once, then the task is left to be pulled. `select_agent` exposes the same choice directly.

use chrono::DateTime;
use serde::Serialize;

use super::policies::task_info;
use super::{EngineError, Scheduler};
use crate::model::{Agent, AgentStatus, CapabilitySet, Priority, TaskId};
use crate::plugins::bindings::{CallContext, Candidate, CandidateDetails};
use crate::plugins::{Answerer, Selection};
use crate::store::{AgentFilter, AgentHealth, BreakerState, HealthState, Waiter};

/// Milliseconds since an RFC 3339 time, or `None` when absent or unreadable.
fn age_ms(time: Option<&str>, now_ms: u64) -> Option<u64> {
    let parsed = DateTime::parse_from_rfc3339(time?).ok()?;
    Some(now_ms.saturating_sub(parsed.timestamp_millis().max(0) as u64))
}

/// An agent as a strategy sees it: its health from the store, and in the details only the metadata keys the
/// strategy's manifest lists.
pub fn candidate_of(
    agent: &Agent,
    health: HealthState,
    label_keys: &[String],
    now_ms: u64,
) -> (Candidate, CandidateDetails) {
    let candidate = Candidate {
        in_flight: agent.in_flight,
        max_concurrent: agent.max_concurrent_tasks,
        completed: agent.tasks_completed,
        failed: agent.tasks_failed,
        avg_latency_ms: agent.avg_latency_ms.round().clamp(0.0, u32::MAX as f64) as u32,
        heartbeat_age_ms: age_ms(Some(&agent.last_heartbeat), now_ms).unwrap_or(0),
        since_assigned_ms: age_ms(agent.last_assigned_at.as_deref(), now_ms),
        health: health.into(),
    };
    let details = CandidateDetails {
        agent_id: agent.agent_id.clone(),
        model: agent.model.clone(),
        provider: agent.provider.clone(),
        labels: label_keys
            .iter()
            .filter_map(|k| {
                agent
                    .metadata
                    .get(k)
                    .map(|v| (k.clone(), v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())))
            })
            .collect(),
    };
    (candidate, details)
}

/// Whether an agent may be routed or selected (DESIGN §4: eligible to claim, alive, not busy by capacity):
/// not paused, ready or starting, below capacity, not unhealthy, breaker not open.
fn routable_now(agent: &Agent, health: Option<&AgentHealth>) -> bool {
    !agent.paused
        && matches!(agent.status, AgentStatus::Ready | AgentStatus::Starting)
        && agent.in_flight < agent.max_concurrent_tasks
        && health.is_none_or(|h| h.status != HealthState::Unhealthy && h.breaker != BreakerState::Open)
}

/// A seed derived from the task id: the same task gets the same `random` choice on every server.
fn seed_of(task_id: &str) -> u64 {
    task_id.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

/// The answer of `select_agent`.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct AgentSelection {
    /// The chosen agent.
    pub agent_id: String,
    /// The strategy asked.
    pub strategy: String,
    /// Who answered (the plugin, or a fallback).
    pub answered_by: Answerer,
    /// Agents considered.
    pub candidates: usize,
}

impl Scheduler {
    /// The agent's health if it may be routed or selected now, `None` if it may not.
    async fn routable(&self, agent: &Agent) -> Result<Option<HealthState>, EngineError> {
        let health = self.store.agent_health(&agent.agent_id).await?;
        Ok(routable_now(agent, health.as_ref()).then(|| health.map(|h| h.status).unwrap_or_default()))
    }

    /// Offers a newly pending task to the blocked claims that could take it.
    pub(super) async fn route(&self, task_id: &TaskId) {
        if let Err(error) = self.try_route(task_id).await {
            tracing::debug!(%task_id, %error, "routing skipped; the task waits to be claimed");
        }
    }

    async fn try_route(&self, task_id: &TaskId) -> Result<(), EngineError> {
        let Some(task) = self.store.get_task(task_id).await? else { return Ok(()) };
        let limit = self.config.max_strategy_candidates;
        let waiters = self.store.waiters_for(&task.required_capabilities, limit).await?;
        if waiters.is_empty() {
            return Ok(());
        }
        let mut pool: Vec<(Waiter, Agent, HealthState)> = Vec::with_capacity(waiters.len());
        let now = self.store.now_ms();
        // One read for every waiting agent and its health (one round trip on Redis, not two per waiter).
        let ids: Vec<String> = waiters.iter().map(|w| w.agent_id.clone()).collect();
        let candidates: std::collections::HashMap<String, (Agent, Option<AgentHealth>)> = self
            .store
            .agents_with_health(&ids)
            .await?
            .into_iter()
            .map(|(agent, health)| (agent.agent_id.clone(), (agent, health)))
            .collect();
        for waiter in waiters {
            let Some((agent, health)) = candidates.get(&waiter.agent_id).cloned() else { continue };
            if !routable_now(&agent, health.as_ref()) {
                continue;
            }
            let health = health.map(|h| h.status).unwrap_or_default();
            // Dispatch policies decide who may take what, for routed work as for claimed work.
            let denials = super::policies::on_dispatch(&self.plugins, &task, &agent, now);
            if !denials.is_empty() {
                self.record(denials).await;
                continue;
            }
            pool.push((waiter, agent, health));
        }
        let strategy = task.strategy.clone().unwrap_or_else(|| self.config.default_strategy.clone());
        for _ in 0..2 {
            if pool.is_empty() {
                break;
            }
            let agents: Vec<(&Agent, HealthState)> = pool.iter().map(|(_, agent, health)| (agent, *health)).collect();
            let selection = self.choose(
                &strategy,
                task_id,
                task.priority,
                &task.task_type,
                &task.required_capabilities,
                &task.metadata,
                &agents,
            )?;
            let (waiter, _, _) = pool.remove(selection.index);
            if self.store.assign(task_id, &waiter.token).await?.is_some() {
                self.wake(&waiter.token);
                return Ok(());
            }
        }
        Ok(())
    }

    /// Runs `strategy` over `agents` (never empty).
    #[allow(clippy::too_many_arguments)]
    fn choose(
        &self,
        strategy: &str,
        task_id: &TaskId,
        priority: Priority,
        task_type: &str,
        required: &CapabilitySet,
        metadata: &serde_json::Map<String, serde_json::Value>,
        agents: &[(&Agent, HealthState)],
    ) -> Result<Selection, EngineError> {
        let plugin = self.plugins.strategy(strategy).map_err(|_| EngineError::UnknownStrategy(strategy.to_string()))?;
        let now = self.store.now_ms();
        let info = task_info(&plugin, task_id.as_str(), task_type, priority, required, metadata);
        let wants_details = plugin.wants_details();
        let labels = &plugin.manifest.labels;
        let (candidates, details): (Vec<Candidate>, Vec<CandidateDetails>) =
            agents.iter().map(|(agent, health)| candidate_of(agent, *health, labels, now)).unzip();
        let details = if wants_details { details } else { Vec::new() };
        let ctx = CallContext { now_ms: now, seed: seed_of(task_id.as_str()) };
        self.plugins
            .select(strategy, ctx, &info, &candidates, &details)
            .map_err(|_| EngineError::UnknownStrategy(strategy.to_string()))
    }

    /// The guide's `select_agent`: which available agent holding `capabilities` (minus `exclude`) the strategy
    /// would choose now. `None` when no agent qualifies. Unless `dry_run`, the choice counts as an assignment
    /// (`last_assigned_at`, in store time), so `round_robin` rotates across calls and servers.
    pub async fn select_agent(
        &self,
        capabilities: &CapabilitySet,
        strategy: Option<&str>,
        exclude: &[String],
        dry_run: bool,
    ) -> Result<Option<AgentSelection>, EngineError> {
        let strategy = strategy.unwrap_or(&self.config.default_strategy).to_string();
        let mut agents: Vec<(Agent, HealthState)> = Vec::new();
        for agent in self.store.list_agents(&AgentFilter::default()).await? {
            if agents.len() >= self.config.max_strategy_candidates {
                break;
            }
            if !capabilities.is_subset_of(&agent.capabilities) || exclude.contains(&agent.agent_id) {
                continue;
            }
            if let Some(health) = self.routable(&agent).await? {
                agents.push((agent, health));
            }
        }
        if agents.is_empty() {
            self.plugins.strategy(&strategy).map_err(|_| EngineError::UnknownStrategy(strategy.clone()))?;
            return Ok(None);
        }
        let refs: Vec<(&Agent, HealthState)> = agents.iter().map(|(agent, health)| (agent, *health)).collect();
        let selection_id = TaskId::generate();
        let selection = self.choose(
            &strategy,
            &selection_id,
            Priority::Normal,
            "select_agent",
            capabilities,
            &serde_json::Map::new(),
            &refs,
        )?;
        let chosen = &agents[selection.index].0.agent_id;
        if !dry_run {
            self.store.mark_assigned(chosen).await?;
        }
        Ok(Some(AgentSelection {
            agent_id: chosen.clone(),
            strategy,
            answered_by: selection.answered_by,
            candidates: agents.len(),
        }))
    }
}
