//! The deliberation orchestrator: every server's duty of running orchestrated deliberations (DESIGN §10,
//! decision 0020).
//!
//! A session is a `deliberation` task requiring `deliberation.orchestrate`, which only the servers' orchestrator
//! agents claim (`control-plane.<server id>`, registered while there are sessions to run). The lease makes one
//! server the session's driver, and when that server dies its heartbeats stop, the lease is lost like any agent's
//! and another server claims the session. The driver keeps nothing the store does not also hold: every round task
//! has an idempotency key (`deliberation:<request>:<round>:<slot>:<try>`), so whoever drives next finds each
//! round where it stands; only events may repeat after a takeover.
//!
//! A round has one task per participant, addressed to it (`agent:<id>`, see `model::address_of`) and chosen by
//! the session's strategy with the other participants excluded. A participant that fails its task, loses it, or
//! goes away before claiming it is replaced by another agent the same way; its contribution is whoever answered.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::ControlPlaneCoordinator;
use crate::model::{
    Agent, AgentFilter, AgentStatus, CapabilitySet, Contribution, DecisionRule, EventKind, FailKind, FailRequest,
    Fence, HeartbeatRequest, JUDGE_TASK_TYPE, ORCHESTRATE_CAPABILITY, PROPOSE_TASK_TYPE, Priority, REVISE_TASK_TYPE,
    RegisterRequest, SESSION_TIMEOUT_ERROR, SessionPlan, StoreError, SubmitRequest, Submitted, Task, TaskId,
    TaskStatus, address_of, decide_by_vote, millis_of, request_id_of,
};
use crate::scheduler::EngineError;
use crate::store::ClaimRequest;

/// How often a driver looks at its sessions.
const TICK: Duration = Duration::from_millis(200);

/// How often a server without sessions looks for some (a session started on another server, or left by a dead
/// one).
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Tries per slot and round before the session gives up on it.
const MAX_TRIES: u32 = 8;

/// Sessions one server drives at once.
const MAX_SESSIONS: usize = 256;

/// The orchestrator agent of a server.
pub fn orchestrator_id(server_id: &str) -> String {
    let id: String =
        server_id.chars().map(|c| if c.is_ascii_alphanumeric() || "._:-".contains(c) { c } else { '-' }).collect();
    format!("{}{id}", crate::model::ORCHESTRATOR_PREFIX)
}

impl ControlPlaneCoordinator {
    /// Starts an orchestrated deliberation: refuses at once (409 `not_enough_agents`) when fewer agents than it
    /// needs are registered and able to work, submits its session task, says `deliberation_started` and wakes this
    /// server's orchestrator (any server's may drive it).
    pub async fn start_deliberation(
        &self,
        request: SubmitRequest,
        plan: &SessionPlan,
        submitted_by: &str,
    ) -> Result<Submitted, EngineError> {
        if let Some(name) = &plan.strategy {
            self.plugins.strategy(name).map_err(|_| EngineError::UnknownStrategy(name.clone()))?;
        }
        let agents = self.store.list_agents(&AgentFilter::default()).await?;
        let able = |required: &[String]| {
            let required = CapabilitySet::from_normalized(required.to_vec());
            agents.iter().filter(|a| required.is_subset_of(&a.capabilities) && can_take_part(a)).count()
        };
        let (needed, found) = (plan.agents as usize, able(&plan.capabilities));
        if found < needed {
            return Err(StoreError::conflict(
                "not_enough_agents",
                format!("{needed} distinct agents with {:?} are needed; {found} can work now", plan.capabilities),
            )
            .into());
        }
        if plan.decide == DecisionRule::Judge && able(&plan.judge_capabilities) == 0 {
            return Err(StoreError::conflict(
                "not_enough_agents",
                format!("decide judge needs an agent with {:?}; none can work now", plan.judge_capabilities),
            )
            .into());
        }
        let submitted = self.scheduler.submit(request, submitted_by).await?;
        let facts = json!({
            "request_id": request_id_of(&submitted.task_id), "agents": plan.agents, "rounds": plan.rounds,
            "decide": plan.decide.as_str(),
        });
        if let Err(error) =
            self.store.record_event(EventKind::DeliberationStarted, Some(&submitted.task_id), facts).await
        {
            tracing::warn!(%error, "deliberation_started not recorded");
        }
        self.deliberation_wake.notify_one();
        Ok(submitted)
    }
}

/// Runs this server's orchestrator until `shutdown`; `wake` makes it look for sessions at once.
pub(super) async fn run(coordinator: Weak<ControlPlaneCoordinator>, wake: Arc<Notify>, shutdown: CancellationToken) {
    let mut orchestrator = Orchestrator::default();
    loop {
        let woken = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = wake.notified() => true,
            _ = tokio::time::sleep(TICK) => false,
        };
        let Some(coordinator) = coordinator.upgrade() else { return };
        if let Err(error) = orchestrator.tick(&coordinator, woken).await {
            tracing::warn!(%error, "deliberation orchestrator: will try again");
        }
    }
    // Leaving hands the sessions over at once instead of after the heartbeat timeout.
    if let (Some(coordinator), Some(agent_id)) = (coordinator.upgrade(), orchestrator.registered.as_deref()) {
        let _ = coordinator.unregister_agent(agent_id).await;
    }
}

#[derive(Default)]
struct Orchestrator {
    /// The agent id once registered.
    registered: Option<String>,
    last_beat: Option<Instant>,
    last_look: Option<Instant>,
    sessions: HashMap<TaskId, Session>,
}

impl Orchestrator {
    async fn tick(&mut self, cp: &ControlPlaneCoordinator, woken: bool) -> Result<(), EngineError> {
        let orchestrate = CapabilitySet::from_normalized(vec![ORCHESTRATE_CAPABILITY.to_string()]);
        let agent_id = match &self.registered {
            Some(agent_id) => agent_id.clone(),
            None => {
                if !woken && self.last_look.is_some_and(|at| at.elapsed() < LOOK_EVERY) {
                    return Ok(());
                }
                self.last_look = Some(Instant::now());
                if !woken && cp.store.peek_signature(&orchestrate, 1).await?.is_empty() {
                    return Ok(());
                }
                let agent_id = orchestrator_id(&cp.config.server_id);
                cp.register_agent(RegisterRequest {
                    agent_id: agent_id.clone(),
                    capabilities: vec![ORCHESTRATE_CAPABILITY.to_string()],
                    model: "orchestrator".into(),
                    provider: "aragora-cp".into(),
                    metadata: [("server_id".to_string(), json!(cp.config.server_id))].into_iter().collect(),
                    max_concurrent_tasks: Some(MAX_SESSIONS as u32),
                    health_url: None,
                    status: None,
                    session_id: None,
                })
                .await?;
                self.registered = Some(agent_id.clone());
                self.last_beat = Some(Instant::now());
                agent_id
            }
        };
        if self.last_beat.is_none_or(|at| at.elapsed() >= cp.config.heartbeat_interval / 2) {
            match cp.heartbeat(&agent_id, HeartbeatRequest::default()).await {
                Ok(_) => self.last_beat = Some(Instant::now()),
                Err(EngineError::Store(StoreError::AgentNotFound(_))) => {
                    // Removed by an operator: its leases went with it.
                    self.registered = None;
                    self.sessions.clear();
                    return Ok(());
                }
                Err(error) => return Err(error),
            }
        }
        // Sessions are claimed one by one from their own signature: a claim narrowed to `orchestrate` would also
        // take the tasks anyone may take (no required capabilities).
        let room = MAX_SESSIONS.saturating_sub(self.sessions.len());
        let request = ClaimRequest {
            agent_id: agent_id.clone(),
            capabilities: Some(orchestrate.clone()),
            max_tasks: 1,
            session_id: None,
        };
        let waiting_sessions = cp.store.peek_signature(&orchestrate, room.min(16)).await?;
        let idle = self.sessions.is_empty() && waiting_sessions.is_empty();
        for waiting in waiting_sessions {
            let Some(task) = cp.store.claim_if(&waiting.task_id, &request).await? else { continue };
            match Session::adopt(&task) {
                Ok(session) => {
                    self.sessions.insert(task.task_id.clone(), session);
                }
                Err(why) => {
                    let failure = FailRequest { error: why, requeue: false, kind: FailKind::Task };
                    let fence = Fence::Lease(task.lease_id.clone().unwrap_or_default());
                    let _ = cp.fail_task(&task.task_id, &fence, &failure).await;
                }
            }
        }
        let mut ended = Vec::new();
        for (task_id, session) in &mut self.sessions {
            match session.advance(cp).await {
                Ok(false) => {}
                Ok(true) => ended.push(task_id.clone()),
                Err(error) if lease_lost(&error) => ended.push(task_id.clone()),
                Err(error) => tracing::warn!(%error, request_id = %session.request_id, "deliberation: will try again"),
            }
        }
        for task_id in ended {
            self.sessions.remove(&task_id);
        }
        if idle {
            // Nothing to drive: the orchestrator leaves the fleet's agent list until the next session.
            cp.unregister_agent(&agent_id).await?;
            self.registered = None;
        }
        Ok(())
    }
}

/// A fenced write refused: another server drives the session now, or it ended.
fn lease_lost(error: &EngineError) -> bool {
    matches!(error, EngineError::Store(StoreError::Conflict { .. } | StoreError::TaskNotFound(_)))
}

/// One participant's place in the current round (or the judge's).
#[derive(Default)]
struct Slot {
    /// The try whose task is `task` (or is to be made).
    tries: u32,
    task: Option<TaskId>,
    agent: Option<String>,
    /// Agents that failed or left this slot in this round.
    left: Vec<String>,
    answer: Option<Contribution>,
    /// Whether the store was asked what earlier drivers made.
    looked: bool,
}

/// A session this server drives.
struct Session {
    task_id: TaskId,
    lease: String,
    request_id: String,
    submitted_by: String,
    priority: Priority,
    plan: SessionPlan,
    context: Value,
    created_ms: u64,
    /// 1-based; past `plan.rounds` the judge's turn.
    round: u32,
    slots: Vec<Slot>,
    finished_rounds: Vec<Vec<Contribution>>,
    warned: bool,
}

/// What a round does: the first proposes, the others up to `plan.rounds` revise, then a judge may decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Propose,
    Revise,
    Judge,
}

impl Phase {
    fn of(round: u32, rounds: u32) -> Phase {
        match round {
            1 => Phase::Propose,
            r if r <= rounds => Phase::Revise,
            _ => Phase::Judge,
        }
    }

    /// As round payloads and transcripts name it.
    fn name(self) -> &'static str {
        match self {
            Phase::Propose => "propose",
            Phase::Revise => "revise",
            Phase::Judge => "judge",
        }
    }

    fn task_type(self) -> &'static str {
        match self {
            Phase::Propose => PROPOSE_TASK_TYPE,
            Phase::Revise => REVISE_TASK_TYPE,
            Phase::Judge => JUDGE_TASK_TYPE,
        }
    }
}

/// Why a session ends without a decision.
struct Failure(String);

impl Session {
    fn adopt(task: &Task) -> Result<Session, String> {
        let mut payload = task.payload.to_value();
        let plan: SessionPlan = serde_json::from_value(payload["plan"].take())
            .map_err(|error| format!("not an orchestrated deliberation: {error}"))?;
        let created_ms = millis_of(&task.created_at).ok_or_else(|| format!("bad created_at {:?}", task.created_at))?;
        let slots = (0..plan.agents).map(|_| Slot::default()).collect();
        Ok(Session {
            task_id: task.task_id.clone(),
            lease: task.lease_id.clone().unwrap_or_default(),
            request_id: request_id_of(&task.task_id),
            submitted_by: task.submitted_by.clone(),
            priority: task.priority,
            context: payload["context"].take(),
            plan,
            created_ms,
            round: 1,
            slots,
            finished_rounds: Vec::new(),
            warned: false,
        })
    }

    fn fence(&self) -> Fence {
        Fence::Lease(self.lease.clone())
    }

    fn judging(&self) -> bool {
        self.phase() == Phase::Judge
    }

    /// One look: deadlines, then the current round's slots, then the next round or the decision. True once the
    /// session ended (or is no longer this server's).
    async fn advance(&mut self, cp: &ControlPlaneCoordinator) -> Result<bool, EngineError> {
        let session = cp.get_task(&self.task_id).await?;
        if session.status.is_terminal() || session.lease_id.as_deref() != Some(self.lease.as_str()) {
            if session.status.is_terminal() {
                self.withdraw(cp).await;
            }
            return Ok(true);
        }
        let elapsed = cp.now_ms().saturating_sub(self.created_ms);
        let limit = u64::from(self.plan.timeout_seconds) * 1000;
        let facts =
            json!({"request_id": self.request_id, "elapsed_ms": elapsed, "timeout_seconds": self.plan.timeout_seconds});
        if !self.warned && elapsed * 5 >= limit * 4 {
            self.warned = true;
            self.event(cp, EventKind::SlaWarning, facts.clone()).await;
        }
        if elapsed >= limit {
            self.event(cp, EventKind::SlaViolated, facts).await;
            let why = format!("{SESSION_TIMEOUT_ERROR}: no decision within {} s", self.plan.timeout_seconds);
            self.fail(cp, why).await?;
            return Ok(true);
        }
        loop {
            for index in 0..self.slots.len() {
                if let Err(Failure(why)) = self.step(cp, index).await? {
                    self.fail(cp, why).await?;
                    return Ok(true);
                }
            }
            if self.slots.iter().any(|slot| slot.answer.is_none()) {
                return Ok(false);
            }
            let answers: Vec<Contribution> = self.slots.iter_mut().filter_map(|slot| slot.answer.take()).collect();
            if self.judging() {
                self.decide(cp, answers.into_iter().next()).await?;
                return Ok(true);
            }
            // Events carry ids and small facts, never results: the answers are read from the session.
            let agents: Vec<&str> = answers.iter().map(|a| a.agent_id.as_str()).collect();
            let round = json!({"request_id": self.request_id, "round": self.round, "agents": agents});
            self.finished_rounds.push(answers);
            self.event(cp, EventKind::RoundCompleted, round).await;
            self.round += 1;
            let progress = json!({"phase": self.phase().name(), "round": self.round, "rounds": self.transcript(None)});
            cp.report_progress(&self.task_id, &self.fence(), progress).await?;
            if self.judging() && self.plan.decide != DecisionRule::Judge {
                self.decide(cp, None).await?;
                return Ok(true);
            }
            let slots = if self.judging() { 1 } else { self.plan.agents };
            self.slots = (0..slots).map(|_| Slot::default()).collect();
        }
    }

    fn phase(&self) -> Phase {
        Phase::of(self.round, self.plan.rounds)
    }

    fn key(&self, index: usize, tries: u32) -> String {
        format!("deliberation:{}:{}:{index}:{tries}", self.request_id, self.round)
    }

    /// Moves one slot on: finds what an earlier driver made, reads its task, replaces a participant that left,
    /// or makes the slot's task.
    async fn step(&mut self, cp: &ControlPlaneCoordinator, index: usize) -> Result<Result<(), Failure>, EngineError> {
        if self.slots[index].answer.is_some() {
            return Ok(Ok(()));
        }
        if !self.slots[index].looked {
            while let Some((task_id, _)) =
                cp.store.idempotent_task(&self.submitted_by, &self.key(index, self.slots[index].tries)).await?
            {
                let slot = &mut self.slots[index];
                slot.task = Some(task_id);
                if !self.read_slot(cp, index).await? {
                    break;
                }
            }
            self.slots[index].looked = true;
        } else if self.slots[index].task.is_some() {
            self.read_slot(cp, index).await?;
        }
        let slot = &self.slots[index];
        if slot.answer.is_some() || slot.task.is_some() {
            return Ok(Ok(()));
        }
        if slot.tries >= MAX_TRIES {
            return Ok(Err(Failure(format!(
                "round {} slot {index}: no answer after {MAX_TRIES} tries ({})",
                self.round,
                slot.left.join(", ")
            ))));
        }
        self.make_task(cp, index).await
    }

    /// Reads the slot's task: its answer, or the participant left (the slot's next try is due). True when the
    /// participant left.
    async fn read_slot(&mut self, cp: &ControlPlaneCoordinator, index: usize) -> Result<bool, EngineError> {
        let Some(task_id) = self.slots[index].task.clone() else { return Ok(false) };
        let task = cp.get_task(&task_id).await?;
        let pinned = pinned_agent(&task);
        let left = match task.status {
            TaskStatus::Completed => {
                self.slots[index].answer = Some(Contribution::of(index as u32, &task));
                false
            }
            TaskStatus::Failed | TaskStatus::Timeout | TaskStatus::Cancelled => true,
            TaskStatus::Claimed | TaskStatus::Running => false,
            TaskStatus::Pending => {
                // Back in the queue after a lost lease, its participant gone, or never claimed in a round's time:
                // taken back (unless someone took it meanwhile) and given to another.
                let waited = cp.now_ms().saturating_sub(millis_of(&task.created_at).unwrap_or(0)) / 1000;
                let gone = task.attempt > 0
                    || waited >= u64::from(self.plan.round_timeout_seconds)
                    || match self.slots[index].agent.clone().or(pinned.clone()) {
                        Some(agent) => participant_gone(cp, &agent).await?,
                        None => false,
                    };
                gone && cp.cancel_task(&task_id).await.is_ok()
            }
        };
        let slot = &mut self.slots[index];
        // The exact id when known: the address is lower-cased, and exclusions compare ids.
        slot.agent = task.assigned_agent.clone().or(slot.agent.take()).or(pinned);
        if left {
            slot.left.extend(slot.agent.take());
            slot.task = None;
            slot.tries += 1;
        }
        Ok(left)
    }

    /// Chooses the slot's participant and submits its task; waits (next tick) while no agent can take it.
    async fn make_task(
        &mut self,
        cp: &ControlPlaneCoordinator,
        index: usize,
    ) -> Result<Result<(), Failure>, EngineError> {
        let judging = self.judging();
        let participant = if judging {
            None
        } else {
            match self.choose(cp, index).await? {
                Some(agent) => Some(agent),
                None => return Ok(Ok(())),
            }
        };
        let mut required = if judging { self.plan.judge_capabilities.clone() } else { self.plan.capabilities.clone() };
        required.extend(participant.as_deref().map(address_of));
        let tries = self.slots[index].tries;
        let request = SubmitRequest {
            task_type: self.phase().task_type().to_string(),
            payload: Some(self.round_payload(index).into()),
            required_capabilities: required,
            priority: Some(self.priority),
            timeout_seconds: Some(self.plan.round_timeout_seconds),
            // An addressed task retried would wait for the same participant: the slot's next try goes to another.
            max_retries: if judging { None } else { Some(0) },
            metadata: Some(
                [
                    ("deliberation".to_string(), json!(self.request_id)),
                    ("round".to_string(), json!(self.round)),
                    ("slot".to_string(), json!(index)),
                    ("try".to_string(), json!(tries)),
                ]
                .into_iter()
                .collect(),
            ),
            strategy: if judging { self.plan.strategy.clone() } else { None },
            idempotency_key: Some(self.key(index, tries)),
        };
        match cp.submit_task(request, &self.submitted_by).await {
            Ok(submitted) => {
                let slot = &mut self.slots[index];
                slot.task = Some(submitted.task_id);
                slot.agent = participant;
                Ok(Ok(()))
            }
            // Another driver made this try with another participant: read what it made.
            Err(EngineError::Store(StoreError::Conflict { .. })) => {
                self.slots[index].looked = false;
                Ok(Ok(()))
            }
            Err(EngineError::Denied(denied)) => Ok(Err(Failure(format!("a round task was refused: {denied}")))),
            Err(error) => Err(error),
        }
    }

    /// The slot's participant: its agent of the round before when it can still answer, else the strategy's
    /// choice among the agents that are not in another slot and did not leave this one.
    async fn choose(&self, cp: &ControlPlaneCoordinator, index: usize) -> Result<Option<String>, EngineError> {
        let mut exclude: Vec<String> = self.slots[index].left.clone();
        for (other, slot) in self.slots.iter().enumerate() {
            if other != index {
                exclude.extend(slot.agent.clone());
                exclude.extend(slot.answer.as_ref().map(|a| a.agent_id.clone()));
            }
        }
        if let Some(before) = self.finished_rounds.last().and_then(|round| round.get(index))
            && !exclude.contains(&before.agent_id)
            && !participant_gone(cp, &before.agent_id).await?
        {
            return Ok(Some(before.agent_id.clone()));
        }
        let capabilities = CapabilitySet::from_normalized(self.plan.capabilities.clone());
        let chosen = cp.select_agent(&capabilities, self.plan.strategy.as_deref(), &exclude, false).await?;
        Ok(chosen.map(|selection| selection.agent_id))
    }

    /// What a round task asks: the question, and in revise and judge rounds the positions of the round before
    /// (the participant's own apart).
    fn round_payload(&self, index: usize) -> Value {
        let mut payload = json!({
            "request_id": self.request_id,
            "question": self.plan.content,
            "content": self.plan.content,
            "decision_type": self.plan.decision_type,
            "phase": self.phase().name(),
            "round": self.round,
            "rounds": self.plan.rounds,
            "slot": index,
            "context": self.context,
        });
        if let Some(before) = self.finished_rounds.last() {
            let position = |c: &Contribution| json!({"slot": c.slot, "agent_id": c.agent_id, "answer": c.answer, "reasoning": c.reasoning});
            if self.judging() {
                payload["positions"] = before.iter().map(position).collect();
            } else {
                payload["own_position"] = before.get(index).map(position).unwrap_or(Value::Null);
                payload["positions"] = before.iter().filter(|c| c.slot as usize != index).map(position).collect();
            }
        }
        payload
    }

    /// The rounds so far, with the judge's decision last when there is one.
    fn transcript(&self, judge: Option<&Contribution>) -> Value {
        let mut rounds: Vec<Value> = self
            .finished_rounds
            .iter()
            .enumerate()
            .map(|(i, contributions)| {
                let round = i as u32 + 1;
                json!({"round": round, "phase": Phase::of(round, self.plan.rounds).name(), "contributions": contributions})
            })
            .collect();
        if let Some(judge) = judge {
            rounds.push(json!({"round": rounds.len() + 1, "phase": Phase::Judge.name(), "contributions": [judge]}));
        }
        Value::Array(rounds)
    }

    /// Completes the session with its decision: the vote of the last round, or the judge's answer.
    async fn decide(&mut self, cp: &ControlPlaneCoordinator, judge: Option<Contribution>) -> Result<(), EngineError> {
        let last = self.finished_rounds.last().cloned().unwrap_or_default();
        let verdict = decide_by_vote(self.plan.decide, &last);
        let mut participants: Vec<&str> = self.finished_rounds.iter().flatten().map(|c| c.agent_id.as_str()).collect();
        participants.sort_unstable();
        participants.dedup();
        let votes: Vec<Value> = verdict.votes.iter().map(|(answer, n)| json!({"answer": answer, "count": n})).collect();
        let (answer, confidence, consensus, reasoning) = match &judge {
            Some(judge) => {
                let task_id = TaskId::parse("task_id", &judge.task_id).map_err(EngineError::from)?;
                let task = cp.get_task(&task_id).await?;
                let said = task.result.as_ref().and_then(|r| r.to_value()["consensus_reached"].as_bool());
                let reasoning =
                    judge.reasoning.clone().unwrap_or_else(|| format!("decided by judge {}", judge.agent_id));
                (judge.answer.clone(), judge.confidence.unwrap_or(verdict.confidence), said.unwrap_or(true), reasoning)
            }
            None => {
                let top = verdict.votes.iter().map(|(_, n)| *n).max().unwrap_or(0);
                let reasoning = format!(
                    "{top} of {} participants gave this answer after {} round(s) ({})",
                    last.len(),
                    self.plan.rounds,
                    self.plan.decide.as_str()
                );
                (verdict.answer.clone(), verdict.confidence, verdict.consensus_reached, reasoning)
            }
        };
        let result = json!({
            "answer": answer,
            "confidence": confidence,
            "consensus_reached": consensus,
            "reasoning": reasoning,
            "decided_by": self.plan.decide.as_str(),
            "participants": participants,
            "votes": votes,
            "agent_contributions": last,
            "rounds": self.transcript(judge.as_ref()),
        });
        cp.complete_task(&self.task_id, &self.fence(), result).await?;
        if consensus {
            let facts = json!({"request_id": self.request_id, "confidence": confidence, "decided_by": self.plan.decide.as_str()});
            self.event(cp, EventKind::ConsensusReached, facts).await;
        }
        Ok(())
    }

    /// Ends the session without a decision, its round tasks withdrawn.
    async fn fail(&mut self, cp: &ControlPlaneCoordinator, why: String) -> Result<(), EngineError> {
        self.withdraw(cp).await;
        let failure = FailRequest { error: why.clone(), requeue: false, kind: FailKind::Task };
        cp.fail_task(&self.task_id, &self.fence(), &failure).await?;
        let facts = json!({"request_id": self.request_id, "round": self.round, "reason": why});
        self.event(cp, EventKind::DeliberationFailed, facts).await;
        Ok(())
    }

    /// Cancels the current round's open tasks: nobody will read their answers.
    async fn withdraw(&mut self, cp: &ControlPlaneCoordinator) {
        for slot in &mut self.slots {
            if slot.answer.is_none()
                && let Some(task_id) = slot.task.take()
            {
                let _ = cp.cancel_task(&task_id).await;
            }
        }
    }

    /// Events are facts about the session; one that cannot be written is logged, not retried.
    async fn event(&self, cp: &ControlPlaneCoordinator, kind: EventKind, data: Value) {
        if let Err(error) = cp.store.record_event(kind, Some(&self.task_id), data).await {
            tracing::warn!(%error, kind = kind.as_str(), request_id = %self.request_id, "deliberation event not recorded");
        }
    }
}

/// The agent a round task is addressed to.
fn pinned_agent(task: &Task) -> Option<String> {
    task.required_capabilities
        .as_slice()
        .iter()
        .find_map(|c| c.strip_prefix(crate::model::ADDRESS_PREFIX))
        .map(str::to_string)
}

/// Whether an agent can take part in a session now: registered, not paused, and neither offline, failed nor
/// draining (busy agents can: a session may wait for them).
fn can_take_part(agent: &Agent) -> bool {
    !agent.paused && !matches!(agent.status, AgentStatus::Offline | AgentStatus::Failed | AgentStatus::Draining)
}

/// Whether a participant can no longer answer: unregistered, or no longer able to take part.
async fn participant_gone(cp: &ControlPlaneCoordinator, agent_id: &str) -> Result<bool, EngineError> {
    Ok(cp.store.get_agent(agent_id).await?.is_none_or(|agent| !can_take_part(&agent)))
}
