//! Claims: an agent takes the best pending work it may take, or waits for work routed to it (DESIGN §4).
//!
//! A waiting claim is a single-use token the store registers in the same step that found nothing to take, and a
//! slot here that routing wakes: with the task itself when this server assigned it, or with "look" when another
//! server did (the task is then taken from the token's withdrawal, decision 0004) or when the agent may take work
//! again. Every way out of a wait — woken, timed out, the claim's future dropped — ends with the token withdrawn or
//! its task delivered, never both and never neither: the slot is removed under the same lock a wake is sent under,
//! so exactly one of the two sides sees it.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{Claim, ClaimOutcome, EngineError, MAX_BLOCK, Scheduler, policies};
use crate::FastMap;
use crate::model::{Completion, Fence, StoreError, Task, TaskId};
use crate::store::{ClaimAnswer, ClaimRequest, WaitSpec, Waiter, Withdrawn};

/// How long a waiter token outlives its claim's block in the store. The claim measures its block on this host from
/// before the registration, so the token must not die before the claim stops waiting; a token that outlives its
/// claim is harmless (the claim withdraws it), unless the server died holding the claim — then this grace is how
/// long work can still be routed to a claim nobody waits on.
const WAITER_GRACE: Duration = Duration::from_millis(500);

/// What wakes a waiting claim.
pub(super) enum Wake {
    /// This server assigned it a task.
    Assigned(Box<Task>),
    /// Look again: another server assigned it a task (take it from the withdrawal), or its agent may take work
    /// again, or events were missed.
    Look,
}

/// The claims of this server waiting for routed work, by token, with an index by agent.
#[derive(Default)]
pub(super) struct Waiting {
    slots: Mutex<Slots>,
}

/// A slot's token is the one the store registers (`WaitSpec`), and its agent id one shared by both indexes: every
/// claim opens a slot, even one that then finds work (the store step that finds none registers the wait).
#[derive(Default)]
struct Slots {
    by_token: FastMap<Arc<str>, (Arc<str>, oneshot::Sender<Wake>)>,
    by_agent: FastMap<Arc<str>, Vec<Arc<str>>>,
    /// Refused claims waiting for their agent to become eligible again.
    refused: FastMap<String, Vec<oneshot::Sender<()>>>,
}

impl Waiting {
    /// Opens a slot for `token`: what wakes it arrives on the receiver.
    fn open(&self, token: &Arc<str>, agent_id: &str) -> oneshot::Receiver<Wake> {
        let (sender, receiver) = oneshot::channel();
        let mut slots = self.slots.lock();
        let agent: Arc<str> = match slots.by_agent.get_key_value(agent_id) {
            Some((agent, _)) => agent.clone(),
            None => agent_id.into(),
        };
        slots.by_token.insert(token.clone(), (agent.clone(), sender));
        slots.by_agent.entry(agent).or_default().push(token.clone());
        receiver
    }

    /// Why another claim of `agent_id` may not wait now, if it may not: `total` claims wait on this server at
    /// most, `per_agent` of one agent.
    fn no_room(&self, agent_id: &str, total: usize, per_agent: usize) -> Option<String> {
        let slots = self.slots.lock();
        if slots.by_token.len() >= total {
            return Some(format!("{total} claims already wait on this server (MAX_WAITING_CLAIMS)"));
        }
        let own = slots.by_agent.get(agent_id).map_or(0, Vec::len);
        (own >= per_agent)
            .then(|| format!("agent {agent_id} already has {own} claims waiting (MAX_WAITING_CLAIMS_PER_AGENT)"))
    }

    /// Closes the slot of `token` if it is still open (no wake was sent): answers whether it was.
    fn close(&self, token: &str) -> bool {
        let mut slots = self.slots.lock();
        let Some((agent, _)) = slots.by_token.remove(token) else { return false };
        forget(&mut slots, &agent, token);
        true
    }

    /// Wakes the claim waiting on `token`; answers the wake back when none waits there (so an assigned task can
    /// be released). The send happens under the lock [`close`](Self::close) takes, so a claim that finds its slot
    /// gone knows the wake is already in its receiver.
    pub(super) fn wake(&self, token: &str, wake: Wake) -> Result<(), Wake> {
        let mut slots = self.slots.lock();
        let Some((agent, sender)) = slots.by_token.remove(token) else { return Err(wake) };
        forget(&mut slots, &agent, token);
        sender.send(wake)
    }

    /// Every claim of `agent_id` looks again (it may take work again), refused ones included.
    pub(super) fn wake_agent(&self, agent_id: &str) {
        let mut slots = self.slots.lock();
        for token in slots.by_agent.remove(agent_id).unwrap_or_default() {
            if let Some((_, sender)) = slots.by_token.remove(&*token) {
                let _ = sender.send(Wake::Look);
            }
        }
        for refused in slots.refused.remove(agent_id).unwrap_or_default() {
            let _ = refused.send(());
        }
    }

    /// The claims of the agent at `address` (`agent:<id>`, lower-cased) look again: a task addressed to it was
    /// submitted, and no waiting claim is offered one (waits do not hold their agent's address).
    pub(super) fn wake_address(&self, address: &str) {
        let agents: Vec<Arc<str>> = {
            let slots = self.slots.lock();
            slots.by_agent.keys().filter(|agent| crate::model::address_of(agent) == address).cloned().collect()
        };
        for agent in agents {
            self.wake_agent(&agent);
        }
    }

    /// Every claim looks again (events were missed).
    pub(super) fn wake_all(&self) {
        let agents: Vec<String> = {
            let slots = self.slots.lock();
            slots.by_agent.keys().map(|agent| agent.to_string()).chain(slots.refused.keys().cloned()).collect()
        };
        for agent in agents {
            self.wake_agent(&agent);
        }
    }

    /// A signal for a refused claim of `agent_id`: fires when the agent may take work again.
    fn watch_refused(&self, agent_id: &str) -> oneshot::Receiver<()> {
        let (sender, receiver) = oneshot::channel();
        let mut slots = self.slots.lock();
        let watchers = slots.refused.entry(agent_id.to_string()).or_default();
        watchers.retain(|w| !w.is_closed());
        watchers.push(sender);
        receiver
    }
}

fn forget(slots: &mut Slots, agent: &str, token: &str) {
    if let Some(tokens) = slots.by_agent.get_mut(agent) {
        tokens.retain(|t| &**t != token);
        if tokens.is_empty() {
            slots.by_agent.remove(agent);
        }
    }
}

/// A claim's wait in progress. If the claim's future is dropped (client gone) before the wait ended, the guard
/// withdraws the token in the background and releases a task assigned through it meanwhile, so nothing is
/// stranded (decision 0004).
struct PendingWait<'a> {
    scheduler: &'a Scheduler,
    token: Arc<str>,
    receiver: oneshot::Receiver<Wake>,
    armed: bool,
}

/// How a wait ended.
enum Woken {
    /// With a task.
    Task(Box<Task>),
    /// The token is withdrawn and nothing came: look again.
    Look,
    /// The block is over.
    TimedOut,
}

impl Drop for PendingWait<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let store = self.scheduler.store.clone();
        let router = self.scheduler.me.clone();
        let token = std::mem::take(&mut self.token);
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
        if self.scheduler.waiting.close(&token) {
            handle.spawn(async move {
                if let Ok(Withdrawn::Assigned(task)) = store.withdraw_waiter(&token).await {
                    release_undelivered(store.as_ref(), router, &task).await;
                }
            });
        } else if let Ok(Wake::Assigned(task)) = self.receiver.try_recv() {
            handle.spawn(async move { release_undelivered(store.as_ref(), router, &task).await });
        }
    }
}

/// Releases a grant nobody received (no retry counted) and routes it again.
async fn release_undelivered(store: &dyn crate::store::Store, router: std::sync::Weak<Scheduler>, task: &Task) {
    let Some(lease) = &task.lease_id else { return };
    if let Ok(true) = store.release(&task.task_id, lease).await
        && let Some(scheduler) = router.upgrade()
    {
        scheduler.route_requeued(vec![task.task_id.clone()]);
    }
}

impl Scheduler {
    /// Takes work for an agent: at once if some is pending, else after waiting up to `block` for a routed task. A
    /// refused agent (paused, draining, breaker open…) waits its block too, so it cannot spin on the endpoint, and
    /// looks again as soon as it may take work.
    pub async fn claim(&self, claim: &Claim) -> Result<ClaimOutcome, EngineError> {
        let deadline = Instant::now() + claim.block.min(MAX_BLOCK);
        let request = claim_request(claim);
        if !self.plugins.policies().is_empty() {
            return self.claim_through_policies(&request, deadline).await;
        }
        self.claim_until(&request, deadline, None).await
    }

    /// Completes a task and takes the agent's next one (BullMQ's worker pattern): the completion and the claim
    /// are one store step, which also registers the claim's wait when nothing is pending.
    pub async fn complete_and_claim(
        &self,
        task_id: &TaskId,
        fence: &Fence,
        completion: Completion,
        next: &Claim,
    ) -> Result<(Task, ClaimOutcome), EngineError> {
        let deadline = Instant::now() + next.block.min(MAX_BLOCK);
        let request = claim_request(next);
        if !self.plugins.policies().is_empty() {
            // Dispatch policies must see every grant, which the store's combined step cannot run.
            let done = self.complete(task_id, fence, completion).await?;
            return Ok((done, self.claim_through_policies(&request, deadline).await?));
        }
        let mut done = None;
        let outcome = self.claim_until(&request, deadline, Some((task_id, fence, completion, &mut done))).await?;
        let done = done.ok_or_else(|| StoreError::Unavailable("the completion was not made".into()))?;
        Ok((done, outcome))
    }

    /// The claim loop: one store step that grants or registers the wait (completing `first` in it, when given),
    /// then the wait; again after a "look again" until the deadline.
    async fn claim_until(
        &self,
        request: &ClaimRequest,
        deadline: Instant,
        mut first: Option<(&TaskId, &Fence, Completion, &mut Option<Task>)>,
    ) -> Result<ClaimOutcome, EngineError> {
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let no_room = if remaining.is_zero() { None } else { self.no_room_to_wait(&request.agent_id) };
            let mut wait = (!remaining.is_zero() && no_room.is_none()).then(|| self.open_wait(&request.agent_id));
            let spec = wait.as_ref().map(|w| WaitSpec { token: w.token.clone(), lifetime: remaining + WAITER_GRACE });
            let answer = match first.take() {
                None => self.store.claim_or_wait(request, spec).await,
                Some((task_id, fence, completion, done)) => {
                    match self.store.complete_and_claim(task_id, fence, completion, request, spec).await {
                        Ok((completed, answer)) => {
                            *done = Some(completed);
                            Ok(answer)
                        }
                        Err(error) => Err(error),
                    }
                }
            };
            let answer: ClaimAnswer = answer.map_err(|error| registration_hint(error, &request.agent_id))?;
            self.route_requeued(answer.promoted);
            if !answer.waiting
                && let Some(wait) = wait.as_mut()
            {
                // Nothing was registered: the slot goes without a withdrawal.
                self.waiting.close(&wait.token);
                wait.armed = false;
            }
            if !answer.tasks.is_empty() {
                return Ok(ClaimOutcome { tasks: answer.tasks, reason: None });
            }
            if let Some(refusal) = answer.refusal {
                if self.wait_while_refused(&request.agent_id, deadline).await {
                    continue;
                }
                return Ok(ClaimOutcome { tasks: Vec::new(), reason: Some(refusal.as_str().into()) });
            }
            if let Some(why) = no_room {
                return Err(EngineError::TooManyWaiting(why));
            }
            let Some(wait) = wait.filter(|_| answer.waiting) else {
                return Ok(ClaimOutcome::default());
            };
            match self.wait_for_work(wait, &request.agent_id, deadline).await? {
                Woken::Task(task) => return Ok(ClaimOutcome { tasks: vec![*task], reason: None }),
                Woken::Look if Instant::now() < deadline => continue,
                Woken::Look | Woken::TimedOut => return Ok(ClaimOutcome::default()),
            }
        }
    }

    fn no_room_to_wait(&self, agent_id: &str) -> Option<String> {
        self.waiting.no_room(agent_id, self.config.max_waiting_claims, self.config.max_waiting_claims_per_agent)
    }

    fn open_wait(&self, agent_id: &str) -> PendingWait<'_> {
        let token = waiter_token(rand::random());
        let receiver = self.waiting.open(&token, agent_id);
        PendingWait { scheduler: self, token, receiver, armed: true }
    }

    /// Waits for a wake or the deadline, keeping the agent alive meanwhile (DESIGN §4; not a heartbeat, which
    /// would consume the revocation notices meant for the agent's own next heartbeat).
    async fn wait_for_work(
        &self,
        mut wait: PendingWait<'_>,
        agent_id: &str,
        deadline: Instant,
    ) -> Result<Woken, EngineError> {
        let keepalive = self.config.heartbeat_interval.max(Duration::from_millis(100));
        let woken = loop {
            tokio::select! {
                woken = &mut wait.receiver => break woken.ok(),
                _ = tokio::time::sleep_until(deadline) => break None,
                _ = tokio::time::sleep(keepalive) => {
                    let _ = self.store.keep_alive(agent_id).await;
                }
            }
        };
        let woken = match woken {
            Some(wake) => Some(wake),
            // Timed out: either the slot is still open (no wake will come) or a wake is already in the receiver.
            None if self.waiting.close(&wait.token) => None,
            None => wait.receiver.try_recv().ok(),
        };
        wait.armed = false;
        match woken {
            Some(Wake::Assigned(task)) => Ok(Woken::Task(task)),
            Some(Wake::Look) | None => match self.store.withdraw_waiter(&wait.token).await? {
                Withdrawn::Assigned(task) => Ok(Woken::Task(task)),
                Withdrawn::Unused if woken.is_some() => Ok(Woken::Look),
                Withdrawn::Unused => Ok(Woken::TimedOut),
            },
        }
    }

    /// A refused claim's wait: keeps the agent alive until the deadline, or answers `true` as soon as the agent
    /// may take work again (an event said so).
    async fn wait_while_refused(&self, agent_id: &str, deadline: Instant) -> bool {
        let mut eligible_again = self.waiting.watch_refused(agent_id);
        let keepalive = self.config.heartbeat_interval.max(Duration::from_millis(100));
        loop {
            tokio::select! {
                signal = &mut eligible_again => return signal.is_ok() && Instant::now() < deadline,
                _ = tokio::time::sleep_until(deadline) => return false,
                _ = tokio::time::sleep(keepalive) => {
                    let _ = self.store.keep_alive(agent_id).await;
                }
            }
        }
    }

    /// The claim path with dispatch policies: the store offers the next pending tasks (peek), the policies judge
    /// them for this agent, and the first allowed one is claimed; with none, the claim registers its waiter and
    /// looks once more (work that arrived in between saw no waiter), then waits.
    async fn claim_through_policies(
        &self,
        request: &ClaimRequest,
        deadline: Instant,
    ) -> Result<ClaimOutcome, EngineError> {
        loop {
            // The claim's first store step brings an offline or starting agent back and says whether it may work.
            let answer = self
                .store
                .claim_or_wait(&ClaimRequest { max_tasks: 0, ..request.clone() }, None)
                .await
                .map_err(|error| registration_hint(error, &request.agent_id))?;
            self.route_requeued(answer.promoted);
            if let Some(refusal) = answer.refusal {
                if self.wait_while_refused(&request.agent_id, deadline).await {
                    continue;
                }
                return Ok(ClaimOutcome { tasks: Vec::new(), reason: Some(refusal.as_str().into()) });
            }
            let tasks = self.claim_allowed(request).await?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            if !tasks.is_empty() || remaining.is_zero() {
                return Ok(ClaimOutcome { tasks, reason: None });
            }
            if let Some(why) = self.no_room_to_wait(&request.agent_id) {
                return Err(EngineError::TooManyWaiting(why));
            }
            let mut wait = self.open_wait(&request.agent_id);
            let agent = self.store.get_agent(&request.agent_id).await?;
            let registered = agent.map(|a| a.capabilities).unwrap_or_default();
            let capabilities = match &request.capabilities {
                None => registered,
                Some(narrowed) => narrowed.narrowed_to(&registered),
            };
            let waiter = Waiter { token: wait.token.clone(), agent_id: request.agent_id.clone(), capabilities };
            self.store.register_waiter(waiter, remaining + WAITER_GRACE).await?;
            let tasks = self.claim_allowed(request).await?;
            if !tasks.is_empty() {
                wait.armed = false;
                self.waiting.close(&wait.token);
                let mut tasks = tasks;
                if let Withdrawn::Assigned(extra) = self.store.withdraw_waiter(&wait.token).await? {
                    if tasks.len() < request.max_tasks {
                        tasks.push(*extra);
                    } else {
                        release_undelivered(self.store.as_ref(), self.me.clone(), &extra).await;
                    }
                }
                return Ok(ClaimOutcome { tasks, reason: None });
            }
            match self.wait_for_work(wait, &request.agent_id, deadline).await? {
                Woken::Task(task) => return Ok(ClaimOutcome { tasks: vec![*task], reason: None }),
                Woken::Look if Instant::now() < deadline => continue,
                Woken::Look | Woken::TimedOut => return Ok(ClaimOutcome::default()),
            }
        }
    }

    /// One look through the dispatch policies: the first pending tasks the agent may take, claimed.
    async fn claim_allowed(&self, request: &ClaimRequest) -> Result<Vec<Task>, EngineError> {
        let Some(agent) = self.store.get_agent(&request.agent_id).await? else {
            return Err(StoreError::AgentNotFound(request.agent_id.clone()).into());
        };
        let capabilities = match &request.capabilities {
            None => agent.capabilities.clone(),
            Some(narrowed) => narrowed.narrowed_to(&agent.capabilities),
        }
        .with_address_of(&request.agent_id);
        let mut granted = Vec::new();
        for task in self.store.peek(&capabilities, self.config.dispatch_scan).await? {
            if granted.len() >= request.max_tasks {
                break;
            }
            let denials = policies::on_dispatch(&self.plugins, &task, &agent, self.store.now_ms());
            if !denials.is_empty() {
                self.record(denials).await;
                continue;
            }
            if let Some(task) = self.store.claim_if(&task.task_id, request).await? {
                granted.push(task);
            }
        }
        Ok(granted)
    }
}

/// A waiter token: 128 random bits as 32 lower-case hex digits (servers of a fleet share tokens through Redis, so
/// the form stays the one every build writes).
fn waiter_token(bits: u128) -> Arc<str> {
    std::str::from_utf8(&crate::model::hex_digits(bits)).expect("hex digits are ASCII").into()
}

/// The store request of a claim.
fn claim_request(claim: &Claim) -> ClaimRequest {
    ClaimRequest {
        agent_id: claim.agent_id.clone(),
        capabilities: claim.capabilities.clone(),
        max_tasks: claim.max_tasks.max(1),
        session_id: claim.session_id.clone(),
    }
}

/// A claim by an unknown agent is told to register first.
fn registration_hint(error: StoreError, agent_id: &str) -> StoreError {
    match error {
        StoreError::AgentNotFound(_) => {
            StoreError::AgentNotFound(format!("{agent_id} (register with POST /agents before claiming)"))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::waiter_token;

    #[test]
    fn a_waiter_token_is_32_lower_case_hex_digits_of_its_bits() {
        for bits in [0, 1, 0xabc, u128::MAX, 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210] {
            assert_eq!(&*waiter_token(bits), format!("{bits:032x}"));
        }
    }
}
