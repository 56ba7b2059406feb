//! A model test of the task state machine (DESIGN §4): random sequences of operations — submit, claim by one of
//! three agents, start, complete and fail (with the current lease, a stale one, the holder's or another agent's id,
//! or no fence), cancel, manual retry, heartbeats (with and without a task list), moving the clock, both sweeps and
//! re-registration (with and without a new session) — run against a store and against a small model of the rules.
//! After every step: each task's status, retries, attempt, lease and holder equal the model's; at most one lease
//! is valid per task and exactly one agent lists a leased task; each agent's `in_flight` and `current_task_ids`
//! equal the leased tasks assigned to it; agent status follows liveness and capacity; terminal tasks never change
//! except by a manual retry; and `stats()` counters equal the counts of `get_task` over all tasks and of
//! `list_agents` over the agents.
//!
//! Run against the memory store, the Redis store and the Redis store on a cluster. The default is 64 cases of up to
//! 40 operations (`PROPTEST_CASES` overrides the case count).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use aragora_cp::model::{AgentStatus, HeartbeatRequest, Priority, Task, TaskId, TaskStatus};
use aragora_cp::model::{FailRequest, Fence, RevokeReason, StoreError};
use aragora_cp_tests::store_harness::{
    Harness, MemoryBackend, RedisBackend, RedisClusterBackend, StoreBackend, T0_MS, caps, new_task, nonzero,
    registration, request_for,
};
use proptest::prelude::*;
use serde_json::json;

/// The agents: ids and capabilities (one narrow, one wide, one with none).
const AGENTS: [(&str, &[&str]); 3] = [("a0", &["x"]), ("a1", &["x", "y"]), ("a2", &[])];
/// Task signatures the generator picks from.
const SIGNATURES: [&[&str]; 4] = [&[], &["x"], &["y"], &["x", "y"]];
const MAX_OPS: usize = 40;

#[derive(Clone, Copy, Debug)]
enum FenceChoice {
    /// The latest lease granted for the task (valid while the task is leased).
    Current,
    /// A lease from an earlier grant (or one never granted).
    Stale,
    /// No fence at all (existing clients).
    Unfenced,
    /// An agent id.
    Agent(usize),
}

#[derive(Clone, Copy, Debug)]
enum Listing {
    /// A heartbeat with no body.
    Absent,
    /// `current_task_ids` = what the agent holds.
    Held,
    /// `current_task_ids` = [] (leases older than the heartbeat interval are released).
    Empty,
}

#[derive(Clone, Debug)]
enum Op {
    Submit { priority: usize, signature: usize, max_retries: u32, timeout_s: u32 },
    Claim { agent: usize },
    Start { task: usize, fence: FenceChoice },
    Complete { task: usize, fence: FenceChoice, result: u8 },
    Fail { task: usize, fence: FenceChoice, requeue: bool, error: u8 },
    Cancel { task: usize },
    Retry { task: usize },
    Heartbeat { agent: usize, listing: Listing },
    Advance { ms: u64 },
    SweepTimeouts,
    SweepOffline,
    Reregister { agent: usize, new_session: bool },
}

fn fence_choice() -> impl Strategy<Value = FenceChoice> {
    prop_oneof![
        4 => Just(FenceChoice::Current),
        2 => Just(FenceChoice::Stale),
        2 => Just(FenceChoice::Unfenced),
        2 => (0..AGENTS.len()).prop_map(FenceChoice::Agent),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..4usize, 0..SIGNATURES.len(), 0..3u32, prop::sample::select(vec![2u32, 10, 60]))
            .prop_map(|(priority, signature, max_retries, timeout_s)| Op::Submit { priority, signature, max_retries, timeout_s }),
        5 => (0..AGENTS.len()).prop_map(|agent| Op::Claim { agent }),
        2 => (any::<usize>(), fence_choice()).prop_map(|(task, fence)| Op::Start { task, fence }),
        4 => (any::<usize>(), fence_choice(), 0..2u8).prop_map(|(task, fence, result)| Op::Complete { task, fence, result }),
        3 => (any::<usize>(), fence_choice(), any::<bool>(), 0..2u8)
            .prop_map(|(task, fence, requeue, error)| Op::Fail { task, fence, requeue, error }),
        1 => any::<usize>().prop_map(|task| Op::Cancel { task }),
        1 => any::<usize>().prop_map(|task| Op::Retry { task }),
        2 => (0..AGENTS.len(), prop_oneof![Just(Listing::Absent), Just(Listing::Held), Just(Listing::Empty)])
            .prop_map(|(agent, listing)| Op::Heartbeat { agent, listing }),
        2 => prop::sample::select(vec![1_000u64, 5_000, 10_000, 31_000]).prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::SweepTimeouts),
        1 => Just(Op::SweepOffline),
        1 => (0..AGENTS.len(), any::<bool>()).prop_map(|(agent, new_session)| Op::Reregister { agent, new_session }),
    ]
}

// ---------------------------------------------------------------------------------------------------------------
// The model

#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    Completed(u8),
    Failed(u8),
    /// Failed by agent loss with retries exhausted (a store-written message no client repeats).
    Lost,
}

#[derive(Clone, Debug)]
struct ModelTask {
    id: TaskId,
    seq: usize,
    priority: Priority,
    signature: usize,
    max_retries: u32,
    timeout_ms: u64,
    status: TaskStatus,
    retries: u32,
    attempt: u32,
    /// The last agent granted the task (never cleared, like `assigned_agent`).
    holder: Option<usize>,
    /// The valid lease, while leased.
    lease: Option<String>,
    /// Every lease ever granted, oldest first.
    leases: Vec<String>,
    claimed_at: u64,
    outcome: Option<Outcome>,
    outcome_lease: Option<String>,
    /// The lease and error of the last failure that requeued the task (a repeat of it answers 200).
    requeued_by: Option<(String, u8)>,
}

#[derive(Clone, Debug, Default)]
struct ModelAgent {
    offline: bool,
    expiry: u64,
    /// Revocations not yet reported by a heartbeat.
    revoked: Vec<(TaskId, RevokeReason)>,
    sessions: u32,
}

struct Model {
    now: u64,
    heartbeat_timeout: u64,
    heartbeat_interval: u64,
    tasks: Vec<ModelTask>,
    agents: Vec<ModelAgent>,
}

impl Model {
    fn touch(&mut self, agent: usize) {
        self.agents[agent].offline = false;
        self.agents[agent].expiry = self.now + self.heartbeat_timeout;
    }

    fn held_by(&self, agent: usize) -> Vec<usize> {
        (0..self.tasks.len())
            .filter(|&i| self.tasks[i].status.is_leased() && self.tasks[i].holder == Some(agent))
            .collect()
    }

    /// Ends the current lease; a revocation is reported to the holder.
    fn end_lease(&mut self, task: usize, revoked: Option<RevokeReason>) {
        let t = &mut self.tasks[task];
        t.lease = None;
        if let (Some(reason), Some(holder)) = (revoked, t.holder) {
            self.agents[holder].revoked.push((t.id.clone(), reason));
        }
    }

    /// Agent loss for one lease: requeue counting a retry, or fail for good.
    fn lose(&mut self, task: usize) {
        self.end_lease(task, Some(RevokeReason::Reassigned));
        let t = &mut self.tasks[task];
        if t.retries < t.max_retries {
            t.retries += 1;
            t.status = TaskStatus::Pending;
        } else {
            t.status = TaskStatus::Failed;
            t.outcome = Some(Outcome::Lost);
        }
    }

    /// The best pending task the agent can take: strict priority, then submit order.
    fn best_for(&self, agent: usize) -> Option<usize> {
        let agent_caps = caps(AGENTS[agent].1);
        (0..self.tasks.len())
            .filter(|&i| self.tasks[i].status == TaskStatus::Pending)
            .filter(|&i| caps(SIGNATURES[self.tasks[i].signature]).is_subset_of(&agent_caps))
            .min_by_key(|&i| (self.tasks[i].priority, self.tasks[i].seq))
    }

    fn fence(&self, task: usize, choice: FenceChoice) -> Fence {
        let t = &self.tasks[task];
        let never = || Fence::Lease("00000000000000000000000000000000".into());
        match choice {
            FenceChoice::Current => t.leases.last().map(|l| Fence::Lease(l.clone())).unwrap_or_else(never),
            FenceChoice::Stale if t.leases.len() >= 2 => Fence::Lease(t.leases[t.leases.len() - 2].clone()),
            FenceChoice::Stale => never(),
            FenceChoice::Unfenced => Fence::Unfenced,
            FenceChoice::Agent(a) => Fence::Agent(AGENTS[a].0.into()),
        }
    }

    /// Whether the fence holds the task's current lease.
    fn fence_holds(&self, task: usize, fence: &Fence) -> bool {
        let t = &self.tasks[task];
        t.status.is_leased()
            && match fence {
                Fence::Lease(lease) => t.lease.as_deref() == Some(lease.as_str()),
                Fence::Agent(agent) => t.holder.map(|h| AGENTS[h].0) == Some(agent.as_str()),
                Fence::Unfenced => true,
            }
    }

    /// Whether an outcome repeats the stored one from the same holder (answered with the stored task).
    fn is_repeat(&self, task: usize, fence: &Fence, outcome: &Outcome) -> bool {
        let t = &self.tasks[task];
        let same_holder = match fence {
            Fence::Lease(lease) => t.outcome_lease.as_deref() == Some(lease.as_str()),
            Fence::Agent(agent) => t.holder.map(|h| AGENTS[h].0) == Some(agent.as_str()),
            Fence::Unfenced => true,
        };
        matches!(t.status, TaskStatus::Completed | TaskStatus::Failed)
            && same_holder
            && t.outcome.as_ref() == Some(outcome)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The run

fn run(backend: Arc<dyn StoreBackend>, ops: &[Op]) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let h = Harness::open(backend).await;
        let mut model = Model {
            now: T0_MS,
            heartbeat_timeout: h.config.heartbeat_timeout_ms,
            heartbeat_interval: h.config.heartbeat_interval_ms,
            tasks: Vec::new(),
            agents: vec![ModelAgent::default(); AGENTS.len()],
        };
        for (agent, (id, capabilities)) in AGENTS.iter().enumerate() {
            h.register(id, capabilities).await;
            model.touch(agent);
        }
        for (step, op) in ops.iter().enumerate() {
            let before = snapshot(&h, &model).await;
            let retried = apply(&h, &mut model, op).await;
            check(&h, &model, &before, retried, step, op).await;
        }
    });
}

/// Applies one operation to the store and the model; returns the task a manual retry restarted, if any.
async fn apply(h: &Harness, m: &mut Model, op: &Op) -> Option<usize> {
    let pick = |task: usize, m: &Model| (!m.tasks.is_empty()).then(|| task % m.tasks.len());
    match *op {
        Op::Submit { priority, signature, max_retries, timeout_s } => {
            let mut request = request_for("model", Priority::ALL[priority], SIGNATURES[signature]);
            request.max_retries = Some(max_retries);
            request.timeout_seconds = Some(timeout_s);
            let submitted = h.store.submit(new_task("model", request), 64).await.map(|c| c.submitted).expect("submit");
            m.tasks.push(ModelTask {
                id: submitted.task_id,
                seq: m.tasks.len(),
                priority: Priority::ALL[priority],
                signature,
                max_retries,
                timeout_ms: u64::from(timeout_s) * 1_000,
                status: TaskStatus::Pending,
                retries: 0,
                attempt: 0,
                holder: None,
                lease: None,
                leases: Vec::new(),
                claimed_at: 0,
                outcome: None,
                outcome_lease: None,
                requeued_by: None,
            });
        }
        Op::Claim { agent } => {
            let granted = h.claim(AGENTS[agent].0).await;
            m.touch(agent);
            let expected = m.best_for(agent);
            assert_eq!(
                granted.as_ref().map(|t| t.task_id.clone()),
                expected.map(|i| m.tasks[i].id.clone()),
                "claim by {} takes the best task it can",
                AGENTS[agent].0
            );
            if let (Some(task), Some(i)) = (granted, expected) {
                let lease = task.lease_id.clone().expect("a grant carries a lease");
                assert!(!m.tasks.iter().flat_map(|t| &t.leases).any(|l| *l == lease), "a fresh lease");
                let t = &mut m.tasks[i];
                t.status = TaskStatus::Claimed;
                t.attempt += 1;
                t.holder = Some(agent);
                t.lease = Some(lease.clone());
                t.leases.push(lease);
                t.requeued_by = None;
                t.claimed_at = m.now;
            }
        }
        Op::Start { task, fence } => {
            let i = pick(task, m)?; // no task yet: nothing to do
            let fence = m.fence(i, fence);
            let result = h.store.start(&m.tasks[i].id, &fence).await;
            if m.fence_holds(i, &fence) {
                assert_eq!(result.expect("start with a valid fence").status, TaskStatus::Running);
                m.tasks[i].status = TaskStatus::Running;
            } else {
                expect_conflict(result, "start without the lease");
            }
        }
        Op::Complete { task, fence, result: value } => {
            let i = pick(task, m)?; // no task yet: nothing to do
            let fence = m.fence(i, fence);
            let result = h.store.complete(&m.tasks[i].id, &fence, json!({"r": value}).into()).await;
            if m.is_repeat(i, &fence, &Outcome::Completed(value)) {
                assert_eq!(result.expect("a repeated completion").status, TaskStatus::Completed);
            } else if m.fence_holds(i, &fence) {
                assert_eq!(result.expect("complete with a valid fence").status, TaskStatus::Completed);
                let t = &mut m.tasks[i];
                t.outcome_lease = t.lease.clone();
                t.outcome = Some(Outcome::Completed(value));
                t.status = TaskStatus::Completed;
                m.end_lease(i, None);
            } else {
                expect_conflict(result, "complete without the lease");
            }
        }
        Op::Fail { task, fence, requeue, error } => {
            let i = pick(task, m)?; // no task yet: nothing to do
            let fence = m.fence(i, fence);
            let failure = FailRequest { error: format!("boom-{error}"), requeue, kind: Default::default() };
            let result = h.store.fail(&m.tasks[i].id, &fence, &failure).await;
            let requeued_by = m.tasks[i].requeued_by.clone();
            if let (Fence::Lease(lease), Some((requeued_lease, requeued_error))) = (&fence, &requeued_by)
                && lease == requeued_lease
            {
                if *requeued_error == error {
                    assert_eq!(result.expect("a repeat of the failure that requeued").status, m.tasks[i].status);
                } else {
                    expect_conflict(result, "another outcome on a lease that already failed");
                }
            } else if m.is_repeat(i, &fence, &Outcome::Failed(error)) {
                assert_eq!(result.expect("a repeated failure").status, TaskStatus::Failed);
            } else if m.fence_holds(i, &fence) {
                let t = &mut m.tasks[i];
                if requeue && t.retries < t.max_retries {
                    t.retries += 1;
                    t.status = TaskStatus::Pending;
                    t.requeued_by = t.lease.clone().map(|lease| (lease, error));
                } else {
                    t.outcome_lease = t.lease.clone();
                    t.outcome = Some(Outcome::Failed(error));
                    t.status = TaskStatus::Failed;
                }
                let expected = t.status;
                m.end_lease(i, None);
                assert_eq!(result.expect("fail with a valid fence").status, expected);
            } else {
                expect_conflict(result, "fail without the lease");
            }
        }
        Op::Cancel { task } => {
            let i = pick(task, m)?; // no task yet: nothing to do
            let result = h.store.cancel(&m.tasks[i].id).await;
            match m.tasks[i].status {
                TaskStatus::Pending | TaskStatus::Cancelled => {}
                TaskStatus::Claimed | TaskStatus::Running => m.end_lease(i, Some(RevokeReason::Cancelled)),
                _ => {
                    expect_conflict(result, "cancel of a finished task");
                    return None;
                }
            }
            assert_eq!(result.expect("cancel").status, TaskStatus::Cancelled);
            m.tasks[i].status = TaskStatus::Cancelled;
        }
        Op::Retry { task } => {
            let i = pick(task, m)?; // no task yet: nothing to do
            let result = h.store.retry(&m.tasks[i].id).await;
            if matches!(m.tasks[i].status, TaskStatus::Failed | TaskStatus::Timeout | TaskStatus::Cancelled) {
                let task = result.expect("retry");
                assert_eq!((task.status, task.retries), (TaskStatus::Pending, 0));
                let t = &mut m.tasks[i];
                t.status = TaskStatus::Pending;
                t.retries = 0;
                t.outcome = None;
                t.outcome_lease = None;
                return Some(i);
            }
            expect_conflict(result, "retry of a task that is not failed, timed out or cancelled");
        }
        Op::Heartbeat { agent, listing } => {
            let held = m.held_by(agent);
            let current_task_ids = match listing {
                Listing::Absent => None,
                Listing::Held => Some(held.iter().map(|&i| m.tasks[i].id.clone()).collect()),
                Listing::Empty => Some(Vec::new()),
            };
            let beat = HeartbeatRequest { current_task_ids, ..HeartbeatRequest::default() };
            let outcome = h.heartbeat_with(AGENTS[agent].0, &beat).await;
            m.touch(agent);
            for i in held {
                match listing {
                    Listing::Absent => {}
                    Listing::Held => m.tasks[i].status = TaskStatus::Running,
                    Listing::Empty if m.now - m.tasks[i].claimed_at >= m.heartbeat_interval => {
                        m.end_lease(i, Some(RevokeReason::Reassigned));
                        m.tasks[i].status = TaskStatus::Pending;
                    }
                    Listing::Empty => {}
                }
            }
            let mut reported: Vec<_> = outcome.revoked.into_iter().map(|r| (r.task_id, r.reason)).collect();
            let mut expected = std::mem::take(&mut m.agents[agent].revoked);
            reported.sort_by(|a, b| a.0.cmp(&b.0));
            expected.sort_by(|a, b| a.0.cmp(&b.0));
            assert_eq!(reported, expected, "revocations reported to {}", AGENTS[agent].0);
        }
        Op::Advance { ms } => {
            h.advance(ms).await;
            m.now += ms;
        }
        Op::SweepTimeouts => {
            let swept = h.store.sweep_timeouts(1_000).await.expect("sweep_timeouts");
            let due: Vec<usize> = (0..m.tasks.len())
                .filter(|&i| m.tasks[i].status.is_leased() && m.tasks[i].claimed_at + m.tasks[i].timeout_ms <= m.now)
                .collect();
            assert_eq!(swept.count, due.len(), "attempts past their timeout");
            let mut requeued = Vec::new();
            for i in due {
                m.end_lease(i, Some(RevokeReason::Timeout));
                let t = &mut m.tasks[i];
                if t.retries < t.max_retries {
                    t.retries += 1;
                    t.status = TaskStatus::Pending;
                    requeued.push(t.id.clone());
                } else {
                    t.status = TaskStatus::Timeout;
                }
            }
            let mut answered = swept.requeued.clone();
            answered.sort();
            requeued.sort();
            assert_eq!(answered, requeued, "the sweep answers the tasks it made pending again");
        }
        Op::SweepOffline => {
            let swept = h.store.sweep_offline(1_000).await.expect("sweep_offline");
            let silent: Vec<usize> =
                (0..AGENTS.len()).filter(|&a| !m.agents[a].offline && m.agents[a].expiry <= m.now).collect();
            assert_eq!(swept.count, silent.len(), "agents silent past the heartbeat timeout");
            for agent in silent {
                m.agents[agent].offline = true;
                for i in m.held_by(agent) {
                    m.lose(i);
                }
            }
        }
        Op::Reregister { agent, new_session } => {
            let (id, capabilities) = AGENTS[agent];
            let session_id = new_session.then(|| {
                m.agents[agent].sessions += 1;
                format!("{id}-session-{}", m.agents[agent].sessions)
            });
            let registered =
                h.store.register(aragora_cp::model::AgentRegistration { session_id, ..registration(id, capabilities) });
            let registered = registered.await.expect("register");
            assert_eq!(registered.restarted, new_session, "a new session restarts the agent");
            if new_session {
                for i in m.held_by(agent) {
                    m.lose(i);
                }
            }
            m.touch(agent);
        }
    }
    None
}

fn expect_conflict<T: std::fmt::Debug>(result: Result<T, StoreError>, what: &str) {
    assert!(matches!(result, Err(StoreError::Conflict { .. })), "{what}: expected a 409, got {result:?}");
}

/// The store's tasks, in model order.
async fn snapshot(h: &Harness, m: &Model) -> Vec<Task> {
    let mut tasks = Vec::with_capacity(m.tasks.len());
    for t in &m.tasks {
        tasks.push(h.task(&t.id).await);
    }
    tasks
}

async fn check(h: &Harness, m: &Model, before: &[Task], retried: Option<usize>, step: usize, op: &Op) {
    let at = format!("after step {step} ({op:?})");
    let tasks = snapshot(h, m).await;
    for (i, (task, t)) in tasks.iter().zip(&m.tasks).enumerate() {
        assert_eq!(task.status, t.status, "task {i} status {at}");
        assert_eq!((task.retries, task.attempt), (t.retries, t.attempt), "task {i} retries and attempt {at}");
        assert_eq!(task.lease_id, t.lease, "task {i}: the one valid lease {at}");
        assert_eq!(task.lease_id.is_some(), task.status.is_leased(), "task {i}: a lease iff leased {at}");
        assert_eq!(task.assigned_agent.as_deref(), t.holder.map(|a| AGENTS[a].0), "task {i} holder {at}");
        if let Some(previous) = before.get(i)
            && previous.status.is_terminal()
            && retried != Some(i)
        {
            assert_eq!(task, previous, "task {i} is terminal and changes only by a manual retry {at}");
        }
    }

    let mut holders: HashMap<TaskId, usize> = HashMap::new();
    for (a, (id, _)) in AGENTS.iter().enumerate() {
        let agent = h.agent(id).await;
        let mut leased: Vec<TaskId> = tasks
            .iter()
            .filter(|t| t.status.is_leased() && t.assigned_agent.as_deref() == Some(*id))
            .map(|t| t.task_id.clone())
            .collect();
        leased.sort();
        let mut modelled: Vec<TaskId> = m.held_by(a).into_iter().map(|i| m.tasks[i].id.clone()).collect();
        modelled.sort();
        assert_eq!(leased, modelled, "{id}'s leased tasks {at}");
        assert_eq!(agent.in_flight as usize, leased.len(), "{id}'s in_flight {at}");
        let mut listed = agent.current_task_ids.clone();
        listed.sort();
        assert_eq!(listed, leased, "{id}'s current_task_ids {at}");
        for task_id in listed {
            if let Some(other) = holders.insert(task_id.clone(), a) {
                panic!("{task_id} is held by {} and {id} {at}", AGENTS[other].0);
            }
        }
        let expected_status = if m.agents[a].offline {
            AgentStatus::Offline
        } else if agent.in_flight >= agent.max_concurrent_tasks {
            AgentStatus::Busy
        } else {
            AgentStatus::Ready
        };
        assert_eq!(agent.status, expected_status, "{id}'s status {at}");
    }

    let stats = h.stats().await;
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    let mut pending_by_priority: BTreeMap<String, u64> = BTreeMap::new();
    for task in &tasks {
        *by_status.entry(task.status.as_str().into()).or_default() += 1;
        if task.status == TaskStatus::Pending {
            *pending_by_priority.entry(task.priority.as_str().into()).or_default() += 1;
        }
    }
    assert_eq!(nonzero(&stats.tasks_by_status), by_status, "tasks_by_status {at}");
    assert_eq!(nonzero(&stats.pending_by_priority), pending_by_priority, "pending_by_priority {at}");

    // Agent counters (kept incrementally by the Redis scripts) equal a count over the agents.
    let agents = h.store.list_agents(&aragora_cp::model::AgentFilter::default()).await.expect("list agents");
    let mut by_agent_status: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_capability: BTreeMap<String, u64> = BTreeMap::new();
    for agent in &agents {
        *by_agent_status.entry(agent.status.as_str().into()).or_default() += 1;
        for capability in agent.capabilities.as_slice() {
            *by_capability.entry(capability.clone()).or_default() += 1;
        }
    }
    let available = agents
        .iter()
        .filter(|a| !a.paused && a.status == AgentStatus::Ready && a.in_flight < a.max_concurrent_tasks)
        .count() as u64;
    assert_eq!(stats.total_agents, agents.len() as u64, "total_agents {at}");
    assert_eq!(nonzero(&stats.agents_by_status), by_agent_status, "agents_by_status {at}");
    assert_eq!(nonzero(&stats.agents_by_capability), by_capability, "agents_by_capability {at}");
    assert_eq!(stats.available_agents, available, "available_agents {at}");
}

/// 64 cases unless `PROPTEST_CASES` says otherwise.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(64);
    ProptestConfig { cases, ..ProptestConfig::default() }
}

macro_rules! model_test {
    ($name:ident, $backend:expr) => {
        proptest! {
            #![proptest_config(config())]
            #[test]
            fn $name(ops in prop::collection::vec(op(), 1..=MAX_OPS)) {
                run(Arc::new($backend), &ops);
            }
        }
    };
}

model_test!(the_memory_store_follows_the_task_state_machine_model, MemoryBackend);
model_test!(the_redis_store_follows_the_task_state_machine_model, RedisBackend);
model_test!(the_redis_cluster_store_follows_the_task_state_machine_model, RedisClusterBackend);
