//! Routing work to waiting claims through strategy plugins (DESIGN §4). When a task becomes pending (submitted,
//! requeued, released, due after its backoff), the store makes an offer in the same step: the claims waiting for
//! such work, the longest-waiting first, at most the strategy's `max_candidates`, each with the numbers a strategy
//! reads. The strategy chooses among the agents below capacity; the store's `assign` then hands the task to the
//! first of the choice, the rest of the offer and — failing those, when no dispatch policy must judge the agent —
//! any claim still waiting for it. So routing costs the same whatever the size of the fleet, never reads or clones
//! an agent record, and never leaves work pending while a claim that may take it waits.
//!
//! `select_agent` exposes the strategy's choice directly.

use std::collections::HashSet;
use std::sync::Arc;

use serde::Serialize;

use super::claims::Wake;
use super::policies::{on_dispatch, task_view};
use super::{EngineError, Scheduler};
use crate::config::Config;
use crate::model::{
    AgentFilter, CandidateNumbers, CapabilitySet, DecisionRole, DecisionStage, NewTask, Priority, Standing, TaskId,
    TaskStatus,
};
use crate::plugins::bindings::{CallContext, Candidate, CandidateDetails, TaskInfo};
use crate::plugins::convert::{self, TaskView};
use crate::plugins::registry::SelectionCall;
use crate::plugins::{Answerer, PluginVersion};
use crate::store::{Offer, WaitingClaim};

/// A task as routing carries it: its strategy and what that strategy sees of it (never the payload).
pub(super) struct Route {
    task_id: TaskId,
    strategy: Arc<PluginVersion>,
    /// Whether `strategy` is the name's active version or its canary.
    role: DecisionRole,
    info: TaskInfo,
}

impl Route {
    /// The route of a task about to be committed.
    pub(super) fn new(task: &NewTask, strategy: &Arc<PluginVersion>, role: DecisionRole) -> Route {
        let view = TaskView {
            id: &task.task_id,
            task_type: &task.task_type,
            priority: task.priority,
            required: &task.required_capabilities,
            metadata: &task.metadata,
        };
        Route::of(view, strategy, role)
    }

    fn of(view: TaskView<'_>, strategy: &Arc<PluginVersion>, role: DecisionRole) -> Route {
        Route {
            task_id: view.id.clone(),
            strategy: strategy.clone(),
            role,
            info: convert::task_info(view, &strategy.manifest.labels),
        }
    }

    /// How many waiting claims to offer the strategy: its manifest's `max_candidates`, capped by
    /// `MAX_STRATEGY_CANDIDATES` (which is also the default).
    pub(super) fn offer_limit(&self, config: &Config) -> usize {
        let cap = config.max_strategy_candidates.max(1);
        self.strategy.manifest.max_candidates.unwrap_or(cap).clamp(1, cap)
    }
}

/// How a routing ended.
enum Routed {
    /// The task went through this waiting claim's token.
    Through(Arc<str>),
    /// No claim could take it (not the offer's, nor any other waiting): the offer is spent.
    NoClaim,
    /// The task was not placed, but the offer may still serve another task: the task was no longer pending (a
    /// claim took it first, or it was cancelled; the memory store tells), or dispatch policies denied it every
    /// waiting claim.
    Passed,
}

/// How many of `claims` are of agents below capacity: the strategy is asked only when two or more are.
fn below_capacity<'a>(claims: impl IntoIterator<Item = &'a WaitingClaim>) -> usize {
    claims.into_iter().filter(|c| c.numbers.in_flight < c.numbers.max_concurrent).count()
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
    /// Routes tasks from their offers after the caller's answer: one task after another, so a claim one of them
    /// took is not offered to the next (a batch shares one offer per signature).
    pub(super) fn spawn_routes(&self, routes: Vec<(Route, Arc<Offer>)>) {
        let Some(me) = self.me.upgrade() else { return };
        self.routes.spawn(async move {
            let mut taken: HashSet<Arc<str>> = HashSet::new();
            // An offer whose claims are all gone (assign found none, not even another waiting claim, for a task
            // still pending) is spent.
            let mut spent: HashSet<usize> = HashSet::new();
            for (route, offer) in routes {
                let identity = Arc::as_ptr(&offer) as usize;
                if spent.contains(&identity) {
                    continue;
                }
                match me.route(&route, &offer, &taken).await {
                    Ok(Routed::Through(token)) => {
                        taken.insert(token);
                    }
                    Ok(Routed::NoClaim) => {
                        spent.insert(identity);
                    }
                    Ok(Routed::Passed) => {}
                    Err(error) => tracing::debug!(task_id = %route.task_id, %error, "routing skipped"),
                }
            }
        });
    }

    /// Routes a task that is pending again (requeued, released, due), from a fresh offer.
    pub(super) async fn route_pending(&self, task_id: &TaskId) {
        let routed = async {
            let Some(task) = self.store.get_task(task_id).await? else { return Ok(()) };
            if task.status != TaskStatus::Pending {
                return Ok(());
            }
            // A strategy removed since the task was submitted: the default one routes it.
            let name = task.strategy.as_deref().unwrap_or(&self.config.default_strategy);
            let (strategy, role) = match self.plugins.strategy_for(name, task_id.as_str()) {
                Ok(chosen) => chosen,
                Err(_) => self
                    .plugins
                    .strategy_for(&self.config.default_strategy, task_id.as_str())
                    .map_err(|_| EngineError::UnknownStrategy(self.config.default_strategy.clone()))?,
            };
            let route = Route::of(task_view(&task), &strategy, role);
            if let Some(offer) = self.store.offer(task_id, route.offer_limit(&self.config), None).await? {
                self.route(&route, &offer, &HashSet::new()).await?;
            }
            Ok::<(), EngineError>(())
        };
        if let Err(error) = routed.await {
            tracing::debug!(%task_id, %error, "routing skipped; the task waits to be claimed");
        }
    }

    /// Hands the task to one of the offer's claims (not those in `taken`, nor those the store knows are gone):
    /// the strategy's choice among the agents below capacity first.
    async fn route(&self, route: &Route, offer: &Offer, taken: &HashSet<Arc<str>>) -> Result<Routed, EngineError> {
        let has_dispatch_policies = !self.plugins.policies().is_empty();
        let mut offer = std::borrow::Cow::Borrowed(offer);
        loop {
            let mut claims: Vec<&WaitingClaim> = offer.waiting.iter().filter(|c| !taken.contains(&*c.token)).collect();
            // Under load most tasks are taken by a claim arriving between the submit and its routing, and the
            // offer's first claims by the routings before this one: the strategy chooses among what is left.
            if !self.store.still_offered(&route.task_id, &mut claims) {
                return Ok(Routed::Passed);
            }
            // Those routings left the offer made at the submit fewer than two claims the strategy could choose
            // between, where it had more: a fresh offer, once (should routings keep taking them, `assign` falls back
            // to any waiting claim). Fresh offers and later pages are owned, so no page is judged twice.
            let left = below_capacity(claims.iter().copied());
            if matches!(offer, std::borrow::Cow::Borrowed(_))
                && left < 2
                && left < below_capacity(&offer.waiting)
                && let Some(fresh) = self.store.offer(&route.task_id, route.offer_limit(&self.config), None).await?
            {
                offer = std::borrow::Cow::Owned(fresh);
                continue;
            }
            // Agents at capacity come last in an offer, so its furthest place in the waiting order is the cursor.
            let last_seq = offer.waiting.iter().map(|c| c.seq).max();
            if has_dispatch_policies {
                claims = self.allowed_by_policies(&route.task_id, claims).await?;
            }
            let tokens = self.in_preference_order(route, offer.now_ms, &claims).await?;
            // Without dispatch policies any waiting claim may take it, so the store looks past the offer too.
            if let Some(assigned) = self.store.assign(&route.task_id, &tokens, !has_dispatch_policies).await? {
                if let Err(Wake::Assigned(_)) =
                    self.waiting.wake(&assigned.token, Wake::Assigned(Box::new(assigned.task)))
                {
                    // Not a claim of this server (its server wakes it from the event), or one that stopped
                    // waiting this instant (it takes the task from its token's withdrawal).
                }
                return Ok(Routed::Through(assigned.token));
            }
            // With dispatch policies, the claims past this offer are judged a page at a time.
            let next = match (has_dispatch_policies, last_seq) {
                (true, Some(after)) => {
                    self.store.offer(&route.task_id, route.offer_limit(&self.config), Some(after)).await?
                }
                _ => None,
            };
            match next {
                Some(next) => offer = std::borrow::Cow::Owned(next),
                // A claim took the task after the check above: the offer's claims may still serve the next task.
                None if !self.store.still_offered(&route.task_id, &mut Vec::new()) => return Ok(Routed::Passed),
                // Dispatch policies judge each task: denying this one says nothing of the next.
                None if has_dispatch_policies => return Ok(Routed::Passed),
                None => return Ok(Routed::NoClaim),
            }
        }
    }

    /// The offer's tokens in the order to try them: the strategy's choice among the claims of agents below capacity,
    /// the rest of those, then the agents at capacity (a claim may take work at capacity; routing prefers not).
    async fn in_preference_order<'a>(
        &self,
        route: &Route,
        now_ms: u64,
        claims: &[&'a WaitingClaim],
    ) -> Result<Vec<&'a str>, EngineError> {
        let below: Vec<&WaitingClaim> =
            claims.iter().copied().filter(|c| c.numbers.in_flight < c.numbers.max_concurrent).collect();
        let mut order: Vec<&str> = Vec::with_capacity(claims.len());
        if below.len() >= 2 {
            let chosen = self.choose(route, now_ms, &below).await?;
            order.push(&below[chosen].token);
        }
        for claim in below.iter().chain(claims.iter().filter(|c| c.numbers.in_flight >= c.numbers.max_concurrent)) {
            if !order.contains(&&*claim.token) {
                order.push(&claim.token);
            }
        }
        Ok(order)
    }

    /// Runs the route's strategy over `claims` (at least two): the index it chose.
    async fn choose(&self, route: &Route, now_ms: u64, claims: &[&WaitingClaim]) -> Result<usize, EngineError> {
        let candidates: Vec<Candidate> = claims.iter().map(|c| convert::candidate(&c.numbers, now_ms)).collect();
        let details = if route.strategy.wants_details() {
            let ids: Vec<String> = claims.iter().map(|c| c.agent_id.to_string()).collect();
            let agents = self.store.agents_with_health(&ids).await?;
            let labels = &route.strategy.manifest.labels;
            ids.iter()
                .map(|id| match agents.iter().find(|(agent, _)| &agent.agent_id == id) {
                    Some((agent, _)) => convert::candidate_details(agent, labels),
                    None => CandidateDetails {
                        agent_id: id.clone(),
                        model: String::new(),
                        provider: String::new(),
                        labels: Vec::new(),
                    },
                })
                .collect()
        } else {
            Vec::new()
        };
        let ctx = CallContext { now_ms, seed: seed_of(route.task_id.as_str()) };
        let agent_ids: Vec<&str> = claims.iter().map(|c| &*c.agent_id).collect();
        let call = SelectionCall {
            stage: DecisionStage::Route,
            ctx,
            task: &route.info,
            agent_ids: &agent_ids,
            candidates: &candidates,
            details: &details,
        };
        Ok(self.plugins.choose(&route.strategy, route.role, call).index)
    }

    /// The claims whose agents the dispatch policies allow to take the task (denials are recorded).
    async fn allowed_by_policies<'a>(
        &self,
        task_id: &TaskId,
        claims: Vec<&'a WaitingClaim>,
    ) -> Result<Vec<&'a WaitingClaim>, EngineError> {
        let Some(task) = self.store.get_task(task_id).await? else { return Ok(Vec::new()) };
        let ids: Vec<String> = claims.iter().map(|c| c.agent_id.to_string()).collect();
        let agents = self.store.agents_with_health(&ids).await?;
        let now = self.store.now_ms();
        let mut allowed = Vec::with_capacity(claims.len());
        for claim in claims {
            let Some((agent, _)) = agents.iter().find(|(agent, _)| agent.agent_id == *claim.agent_id) else {
                continue;
            };
            let denials = on_dispatch(&self.plugins, &task, agent, now);
            if denials.is_empty() {
                allowed.push(claim);
            } else {
                self.record(denials).await;
            }
        }
        Ok(allowed)
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
        let name = strategy.unwrap_or(&self.config.default_strategy).to_string();
        let selection_id = TaskId::generate();
        let (plugin, role) = self
            .plugins
            .strategy_for(&name, selection_id.as_str())
            .map_err(|_| EngineError::UnknownStrategy(name.clone()))?;
        let health: std::collections::HashMap<String, crate::model::AgentHealth> =
            self.store.all_health().await?.into_iter().map(|h| (h.agent_id.clone(), h)).collect();
        let now = self.store.now_ms();
        let mut chosen_from: Vec<(String, CandidateNumbers)> = Vec::new();
        let mut agents = Vec::new();
        for agent in self.store.list_agents(&AgentFilter::default()).await? {
            if chosen_from.len() >= self.config.max_strategy_candidates {
                break;
            }
            if !capabilities.is_subset_of(&agent.capabilities) || exclude.contains(&agent.agent_id) {
                continue;
            }
            let health = health.get(&agent.agent_id);
            let standing = Standing {
                paused: agent.paused,
                status: agent.status,
                health: health.map(|h| h.status).unwrap_or_default(),
                breaker: health.map(|h| h.breaker).unwrap_or_default(),
                trial_in_flight: false,
            };
            if standing.refusal().is_some() || agent.in_flight >= agent.max_concurrent_tasks {
                continue;
            }
            let numbers = CandidateNumbers {
                in_flight: agent.in_flight,
                max_concurrent: agent.max_concurrent_tasks,
                completed: agent.tasks_completed,
                failed: agent.tasks_failed,
                avg_latency_ms: agent.avg_latency_ms,
                last_heartbeat_ms: now.saturating_sub(convert::age_ms(&agent.last_heartbeat, now)),
                last_assigned_ms: agent
                    .last_assigned_at
                    .as_deref()
                    .map(|at| now.saturating_sub(convert::age_ms(at, now))),
                health: standing.health,
            };
            chosen_from.push((agent.agent_id.clone(), numbers));
            agents.push(agent);
        }
        if chosen_from.is_empty() {
            return Ok(None);
        }
        let empty = serde_json::Map::new();
        let view = TaskView {
            id: &selection_id,
            task_type: "select_agent",
            priority: Priority::Normal,
            required: capabilities,
            metadata: &empty,
        };
        let info = convert::task_info(view, &plugin.manifest.labels);
        let candidates: Vec<Candidate> = chosen_from.iter().map(|(_, n)| convert::candidate(n, now)).collect();
        let details: Vec<CandidateDetails> = if plugin.wants_details() {
            agents.iter().map(|agent| convert::candidate_details(agent, &plugin.manifest.labels)).collect()
        } else {
            Vec::new()
        };
        let ctx = CallContext { now_ms: now, seed: seed_of(selection_id.as_str()) };
        let agent_ids: Vec<&str> = chosen_from.iter().map(|(id, _)| id.as_str()).collect();
        let call = SelectionCall {
            stage: DecisionStage::Select,
            ctx,
            task: &info,
            agent_ids: &agent_ids,
            candidates: &candidates,
            details: &details,
        };
        let selection = self.plugins.choose(&plugin, role, call);
        let chosen = &chosen_from[selection.index].0;
        if !dry_run {
            self.store.mark_assigned(chosen).await?;
        }
        Ok(Some(AgentSelection {
            agent_id: chosen.clone(),
            strategy: name,
            answered_by: selection.answered_by,
            candidates: chosen_from.len(),
        }))
    }
}
