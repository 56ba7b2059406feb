//! Waiting claims and routing: offers, assignment through a token, withdrawal, release of undelivered grants.

use super::*;

pub(super) async fn a_waiter_token_routes_a_task_to_its_agent_once(h: Harness) {
    h.register("waiting", &["code"]).await;
    h.register("later", &["code", "debate"]).await;
    h.store.register_waiter(waiter("tok-1", "waiting", &["code"]), BLOCK).await.expect("register waiter");
    h.store.register_waiter(waiter("tok-2", "later", &["code", "debate"]), BLOCK).await.expect("register waiter");
    assert_eq!(h.stats().await.waiting_claims, 2);
    let debate = h.submit(request_for("routed", Priority::Normal, &["debate"])).await;
    assert_eq!(h.offered(&debate, 10).await, vec!["tok-2"], "only the claims covering the task");
    h.store.cancel(&debate).await.expect("cancel");
    assert!(h.offered(&debate, 10).await.is_empty(), "no offer for a task that is not pending");

    let task_id = h.submit(request_for("routed", Priority::Normal, &["code"])).await;
    assert_eq!(h.offered(&task_id, 10).await, vec!["tok-1", "tok-2"], "oldest first");
    assert_eq!(h.offered(&task_id, 1).await, vec!["tok-1"], "limit");
    let mut rx = h.store.subscribe();
    let granted =
        h.store.assign(&task_id, &["tok-1"], false).await.map(|a| a.map(|a| a.task)).expect("assign").expect("granted");
    assert_eq!(
        (granted.status, granted.assigned_agent.as_deref(), granted.attempt),
        (TaskStatus::Claimed, Some("waiting"), 1)
    );
    assert!(granted.lease_id.is_some());
    assert_eq!(kinds_for(&received(&mut rx), &task_id), vec![EventKind::TaskClaimed]);
    let agent = h.agent("waiting").await;
    assert_eq!(agent.in_flight, 1);
    assert!(agent.last_assigned_at.is_some(), "a grant writes last_assigned_at");

    let second = h.submit(request_for("routed", Priority::Normal, &["code"])).await;
    assert_eq!(
        h.store.assign(&second, &["tok-1"], false).await.map(|a| a.map(|a| a.task)).expect("assign"),
        None,
        "the token was used"
    );
    assert_eq!(h.status(&second).await, TaskStatus::Pending);
    match h.store.withdraw_waiter("tok-1").await.expect("withdraw") {
        Withdrawn::Assigned(task) => assert_eq!((task.task_id, task.lease_id), (task_id, granted.lease_id.clone())),
        Withdrawn::Unused => panic!("the token was consumed by assign"),
    }
    assert_eq!(h.store.withdraw_waiter("tok-1").await.expect("withdraw"), Withdrawn::Unused, "answered once");
    assert_eq!(h.store.withdraw_waiter("tok-2").await.expect("withdraw"), Withdrawn::Unused);
    assert_eq!(
        h.store.assign(&second, &["tok-2"], false).await.map(|a| a.map(|a| a.task)).expect("assign"),
        None,
        "a withdrawn token is dead"
    );
    assert_eq!(h.store.withdraw_waiter("never-registered").await.expect("withdraw"), Withdrawn::Unused);
    assert_eq!(h.stats().await.waiting_claims, 0);
    assert_eq!(h.status(&second).await, TaskStatus::Pending);
}

/// A server killed while a claim blocks never withdraws the claim's token: once the block is over nobody waits on
/// it, so it is neither listed nor assigned (a task routed through it would reach no one).
pub(super) async fn a_waiter_token_dies_when_its_claims_block_ends(h: Harness) {
    h.register("waiting", &["code"]).await;
    let block = Duration::from_secs(5);
    h.store.register_waiter(waiter("tok-old", "waiting", &["code"]), block).await.expect("waiter");
    h.advance(4_999).await;
    let task_id = h.submit(request_for("routed", Priority::Normal, &["code"])).await;
    assert_eq!(h.offered(&task_id, 10).await, vec!["tok-old"], "live during its block");
    h.advance(1).await;
    assert!(h.offered(&task_id, 10).await.is_empty(), "dead once it ended");
    assert_eq!(
        h.store.assign(&task_id, &["tok-old"], false).await.map(|a| a.map(|a| a.task)).expect("assign"),
        None,
        "an expired token is not assigned"
    );
    assert_eq!(h.status(&task_id).await, TaskStatus::Pending);
    assert_eq!(h.store.withdraw_waiter("tok-old").await.expect("withdraw"), Withdrawn::Unused);
    h.store.register_waiter(waiter("tok-new", "waiting", &["code"]), block).await.expect("waiter");
    let granted = h
        .store
        .assign(&task_id, &["tok-new"], false)
        .await
        .map(|a| a.map(|a| a.task))
        .expect("assign")
        .expect("a live token still routes");
    assert_eq!(granted.assigned_agent.as_deref(), Some("waiting"));
    assert_eq!(h.stats().await.waiting_claims, 0);
}

pub(super) async fn assign_refuses_a_task_no_longer_pending_or_an_agent_no_longer_eligible(h: Harness) {
    h.register("router", &["code"]).await;
    h.register("puller", &["code"]).await;
    let pulled = h.submit(request("assign")).await;
    let needs_debate = h.submit(request_for("assign", Priority::Normal, &["debate"])).await;
    let open = h.submit(request("assign")).await;
    assert_eq!(h.claim("puller").await.map(|t| t.task_id), Some(pulled.clone()));
    h.store.register_waiter(waiter("tok", "router", &["code"]), BLOCK).await.expect("waiter");
    assert_eq!(
        h.store.assign(&pulled, &["tok"], false).await.map(|a| a.map(|a| a.task)).expect("assign"),
        None,
        "taken by a pull first"
    );
    assert_eq!(
        h.store.assign(&needs_debate, &["tok"], false).await.map(|a| a.map(|a| a.task)).expect("assign"),
        None,
        "the waiter lacks debate"
    );
    h.store.set_paused("router", true).await.expect("pause");
    assert_eq!(
        h.store.assign(&open, &["tok"], false).await.map(|a| a.map(|a| a.task)).expect("assign"),
        None,
        "a paused agent is not eligible"
    );
    h.store.set_paused("router", false).await.expect("resume");
    let granted = h
        .store
        .assign(&open, &["tok"], false)
        .await
        .map(|a| a.map(|a| a.task))
        .expect("assign")
        .expect("the token survived the refusals");
    assert_eq!(granted.assigned_agent.as_deref(), Some("router"));
    assert_eq!(h.status(&needs_debate).await, TaskStatus::Pending);
    let unknown = h.store.register_waiter(waiter("tok-x", "nobody", &[]), BLOCK).await;
    assert!(matches!(unknown, Err(StoreError::AgentNotFound(_))), "{unknown:?}");
}

pub(super) async fn releasing_an_undelivered_grant_puts_the_task_back_at_its_place_without_counting_a_retry(
    h: Harness,
) {
    h.register("worker", &[]).await;
    let a = h.submit(with_retries("release", 0)).await;
    let b = h.submit(request("release")).await;
    let held = h.claim("worker").await.expect("claimable");
    assert_eq!(held.task_id, a);
    let lease_id = held.lease_id.clone().expect("lease");
    let mut rx = h.store.subscribe();
    h.store.release(&a, "ffffffffffffffffffffffffffffffff").await.expect("a wrong lease is a no-op");
    assert_eq!(h.status(&a).await, TaskStatus::Claimed);
    h.store.release(&a, &lease_id).await.expect("release");
    let task = h.task(&a).await;
    assert_eq!((task.status, task.retries, task.lease_id.clone()), (TaskStatus::Pending, 0, None));
    assert_eq!(h.agent("worker").await.in_flight, 0);
    let events = received(&mut rx);
    let released: Vec<_> = events.iter().filter(|e| e.kind == EventKind::TaskReleased).collect();
    assert_eq!(released.len(), 1);
    assert_eq!(released[0].data["reason"], "undelivered");
    h.store.release(&a, &lease_id).await.expect("a second release is a no-op");
    assert!(kinds(&received(&mut rx)).is_empty());
    assert_eq!(conflict_code(h.store.complete(&a, &lease(&held), json!({}).into()).await), "lease_lost");
    // Back at its place, and with max_retries 0 it still has its attempt.
    assert_eq!(h.drain("worker").await, vec![a.clone(), b]);
    assert_eq!(h.task(&a).await.attempt, 2);
}

pub(super) async fn a_heartbeat_omitting_an_older_lease_releases_it_but_keeps_a_younger_one(h: Harness) {
    let interval = h.config.heartbeat_interval_ms;
    h.register_with(AgentRegistration { max_concurrent_tasks: 2, ..registration("worker", &[]) }).await;
    let old = h.submit(request("old")).await;
    let young = h.submit(request("young")).await;
    assert_eq!(h.claim("worker").await.map(|t| t.task_id), Some(old.clone()));
    h.advance(interval).await;
    assert_eq!(h.claim("worker").await.map(|t| t.task_id), Some(young.clone()));
    let beat = HeartbeatRequest { current_task_ids: Some(vec![]), ..HeartbeatRequest::default() };
    let outcome = h.heartbeat_with("worker", &beat).await;
    assert_eq!(outcome.revoked, vec![Revoked { task_id: old.clone(), reason: RevokeReason::Reassigned }]);
    let task = h.task(&old).await;
    assert_eq!((task.status, task.retries), (TaskStatus::Pending, 0), "released without a retry");
    assert_eq!(h.status(&young).await, TaskStatus::Claimed, "the agent may not know of a young grant yet");
    let agent = h.agent("worker").await;
    assert_eq!((agent.in_flight, agent.current_task_ids.clone()), (1, vec![young]));
    // A heartbeat with no task list releases nothing.
    h.advance(interval).await;
    assert!(h.heartbeat("worker").await.revoked.is_empty());
    assert_eq!(h.agent("worker").await.in_flight, 1);
}

pub(super) async fn a_withdrawn_token_whose_task_was_cancelled_since_returns_nothing(h: Harness) {
    h.register("a", &[]).await;
    let id = h.submit(request("t")).await;
    let waiter = Waiter { token: "tok-cancel".into(), agent_id: "a".into(), capabilities: caps(&[]) };
    h.store.register_waiter(waiter, BLOCK).await.unwrap();
    assert!(h.store.assign(&id, &["tok-cancel"], false).await.map(|a| a.map(|a| a.task)).unwrap().is_some());
    h.store.cancel(&id).await.unwrap();
    assert_eq!(h.store.withdraw_waiter("tok-cancel").await.unwrap(), Withdrawn::Unused);
}

pub(super) async fn a_new_session_drops_the_old_sessions_waiters(h: Harness) {
    h.register_with(AgentRegistration { session_id: Some("s1".into()), ..registration("a", &[]) }).await;
    let waiter = Waiter { token: "tok-old".into(), agent_id: "a".into(), capabilities: caps(&[]) };
    h.store.register_waiter(waiter, BLOCK).await.unwrap();
    h.register_with(AgentRegistration { session_id: Some("s2".into()), ..registration("a", &[]) }).await;
    let id = h.submit(request("t")).await;
    assert!(
        h.store.assign(&id, &["tok-old"], false).await.map(|a| a.map(|a| a.task)).unwrap().is_none(),
        "the old session's claim gets nothing"
    );
    assert_eq!(h.status(&id).await, TaskStatus::Pending);
}

/// A claim that finds nothing registers its waiting claim in the same step: no submit can fall between the look
/// and the registration, and the offer of the next task names it.
pub(super) async fn a_claim_that_finds_nothing_registers_its_wait_in_the_same_step(h: Harness) {
    h.register("waiting", &["code"]).await;
    let wait = WaitSpec { token: "tok-claim".into(), lifetime: BLOCK };
    let answer = h.store.claim_or_wait(&claim_request("waiting", &["code"], None), Some(wait)).await.expect("claim");
    assert!(answer.tasks.is_empty() && answer.waiting && answer.refusal.is_none(), "{answer:?}");
    assert_eq!(h.stats().await.waiting_claims, 1);
    let task_id = h.submit(request_for("routed", Priority::Normal, &["code"])).await;
    assert_eq!(h.offered(&task_id, 10).await, vec!["tok-claim"]);
    let assigned = h.store.assign(&task_id, &["tok-claim"], false).await.expect("assign");
    let assigned = assigned.expect("the claim takes it");
    assert_eq!((&*assigned.token, assigned.task.assigned_agent.as_deref()), ("tok-claim", Some("waiting")));
    match h.store.withdraw_waiter("tok-claim").await.expect("withdraw") {
        Withdrawn::Assigned(task) => assert_eq!(task.lease_id, assigned.task.lease_id),
        Withdrawn::Unused => panic!("the token was consumed"),
    }

    // With work pending, the same call takes it and registers nothing.
    let pending = h.submit(request_for("pulled", Priority::Normal, &["code"])).await;
    h.register("puller", &["code"]).await;
    let wait = WaitSpec { token: "tok-unused".into(), lifetime: BLOCK };
    let answer = h.store.claim_or_wait(&claim_request("puller", &["code"], None), Some(wait)).await.expect("claim");
    assert_eq!(answer.tasks.iter().map(|t| t.task_id.clone()).collect::<Vec<_>>(), vec![pending]);
    assert!(!answer.waiting);
    assert_eq!(h.stats().await.waiting_claims, 0);
}

/// The offer routing starts from: the longest-waiting claims first, agents at capacity after the others, and
/// claims of agents the rule refuses (paused, here) left out.
pub(super) async fn an_offer_lists_the_longest_waiting_first_agents_at_capacity_last_and_no_refused_agent(h: Harness) {
    for agent in ["full", "first", "paused", "second"] {
        h.register(agent, &["code"]).await;
    }
    h.submit(request_for("load", Priority::Normal, &["code"])).await;
    assert!(h.claim("full").await.is_some(), "one slot, now taken");
    for (token, agent) in
        [("tok-full", "full"), ("tok-first", "first"), ("tok-paused", "paused"), ("tok-second", "second")]
    {
        h.store.register_waiter(waiter(token, agent, &["code"]), BLOCK).await.expect("waiter");
    }
    h.store.set_paused("paused", true).await.expect("pause");
    let task_id = h.submit(request_for("routed", Priority::Normal, &["code"])).await;
    assert_eq!(h.offered(&task_id, 10).await, vec!["tok-first", "tok-second", "tok-full"]);
    assert_eq!(h.offered(&task_id, 2).await, vec!["tok-first", "tok-second"], "the limit keeps the best");
    let offer = h.store.offer(&task_id, 10, None).await.expect("offer").expect("claims wait");
    let full = offer.waiting.iter().find(|c| &*c.token == "tok-full").expect("offered");
    assert_eq!((&*full.agent_id, full.numbers.in_flight, full.numbers.max_concurrent), ("full", 1, 1));
    assert!(full.numbers.last_assigned_ms.is_some(), "its grant is a number, not a timestamp to parse");
    // A cursor in the waiting order: after the first claim's place come the paused agent's (skipped) and the second.
    let after = offer.waiting[0].seq;
    let rest = h.store.offer(&task_id, 10, Some(after)).await.expect("offer").expect("claims wait");
    assert_eq!(rest.waiting.iter().map(|c| &*c.token).collect::<Vec<_>>(), vec!["tok-second"]);
}

/// Work the strategy's choices cannot take goes to any claim still waiting for it, not to the next claim to
/// arrive; without that fallback (dispatch policies judge agents), it stays pending.
pub(super) async fn assign_falls_back_to_any_waiting_claim_when_the_choices_cannot_take_the_task(h: Harness) {
    h.register("chosen", &["code"]).await;
    h.register("other", &["code"]).await;
    h.store.register_waiter(waiter("tok-chosen", "chosen", &["code"]), BLOCK).await.expect("waiter");
    h.store.register_waiter(waiter("tok-other", "other", &["code"]), BLOCK).await.expect("waiter");
    let task_id = h.submit(request_for("routed", Priority::Normal, &["code"])).await;
    // The choice's claim ended between the offer and the assignment.
    assert_eq!(h.store.withdraw_waiter("tok-chosen").await.expect("withdraw"), Withdrawn::Unused);
    let choices = ["tok-chosen"];
    assert_eq!(h.store.assign(&task_id, &choices, false).await.expect("assign"), None, "no fallback asked");
    let assigned = h.store.assign(&task_id, &choices, true).await.expect("assign").expect("a waiting claim took it");
    assert_eq!((&*assigned.token, assigned.task.assigned_agent.as_deref()), ("tok-other", Some("other")));
    let next = h.submit(request_for("routed", Priority::Normal, &["code"])).await;
    assert_eq!(h.store.assign(&next, &[], true).await.expect("assign"), None, "nobody waits any more");
    assert_eq!(h.status(&next).await, TaskStatus::Pending);
}

/// Backed-off work becomes claimable in a claim or in `promote_due`; either answers what it made claimable and did
/// not take, so the caller can route it to other waiting claims.
pub(super) async fn work_made_claimable_after_its_backoff_is_answered_for_routing(h: Harness) {
    let h = h
        .reopen(|c| {
            c.retry_backoff_base_ms = 1_000;
            c.retry_backoff_max_ms = 1_000;
        })
        .await;
    h.register("coder", &["code"]).await;
    h.register("debater", &["debate"]).await;
    let code = h.submit(SubmitRequest { max_retries: Some(3), ..request_for("c", Priority::Normal, &["code"]) }).await;
    let debate =
        h.submit(SubmitRequest { max_retries: Some(3), ..request_for("d", Priority::Normal, &["debate"]) }).await;
    for (agent, task_id) in [("coder", &code), ("debater", &debate)] {
        let held = h.claim(agent).await.expect("claimable");
        let failed = h.store.fail(task_id, &lease(&held), &fail("flaky", true)).await.expect("fail");
        assert!(failed.available_at.is_some(), "backing off");
    }
    h.advance(1_000).await;
    // The coder's claim makes both due: it takes its own and answers the debate task for routing.
    let answer = h.store.claim_or_wait(&claim_request("coder", &["code"], None), None).await.expect("claim");
    assert_eq!(answer.tasks.iter().map(|t| t.task_id.clone()).collect::<Vec<_>>(), vec![code]);
    assert_eq!(answer.promoted, vec![debate.clone()]);
    assert!(h.store.promote_due(100).await.expect("promote").is_empty(), "nothing left to promote");

    let held = h.claim("debater").await.expect("claimable");
    h.store.fail(&debate, &lease(&held), &fail("flaky", true)).await.expect("fail");
    h.advance(1_000).await;
    assert_eq!(h.store.promote_due(100).await.expect("promote"), vec![debate.clone()]);
    assert_eq!(h.claim("debater").await.map(|t| t.task_id), Some(debate));
}

/// `still_offered`, asked by routing before its strategy: a store may keep the whole offer (it cannot tell without a
/// round trip), but none drops a claim that can still take the task or calls a pending task gone. The memory store
/// tells exactly: a claim consumed by another routing or past its deadline is dropped, and a task a claim took first
/// is gone.
pub(super) async fn an_offer_rechecked_before_routing_never_loses_a_claim_that_can_still_take_the_task(h: Harness) {
    let exact = h.backend() == "memory";
    for agent in ["first", "second", "brief", "puller"] {
        h.register(agent, &["code"]).await;
    }
    h.store.register_waiter(waiter("tok-1", "first", &["code"]), BLOCK).await.expect("register waiter");
    h.store.register_waiter(waiter("tok-2", "second", &["code"]), BLOCK).await.expect("register waiter");
    let brief = Duration::from_secs(1);
    h.store.register_waiter(waiter("tok-3", "brief", &["code"]), brief).await.expect("register waiter");
    let task_id = h.submit(request_for("routed", Priority::Normal, &["code"])).await;
    let offer = h.store.offer(&task_id, 10, None).await.expect("offer").expect("three claims wait");
    fn tokens<'a>(claims: &[&'a aragora_cp::store::WaitingClaim]) -> Vec<&'a str> {
        claims.iter().map(|claim| &*claim.token).collect()
    }
    let mut claims: Vec<_> = offer.waiting.iter().collect();
    assert!(h.store.still_offered(&task_id, &mut claims), "the task is pending");
    assert_eq!(tokens(&claims), ["tok-1", "tok-2", "tok-3"], "every claim still waits");

    // Another task's routing consumes the first claim, and the third one's block ends.
    let other = h.submit(request_for("routed", Priority::Normal, &["code"])).await;
    let through = h.store.assign(&other, &["tok-1"], false).await.expect("assign").expect("granted");
    assert_eq!(&*through.token, "tok-1");
    h.advance(2_000).await;
    let mut claims: Vec<_> = offer.waiting.iter().collect();
    assert!(h.store.still_offered(&task_id, &mut claims), "the task is still pending");
    let kept = tokens(&claims);
    assert!(kept.contains(&"tok-2"), "a live claim is kept: {kept:?}");
    if exact {
        assert_eq!(kept, ["tok-2"], "the consumed claim and the one past its deadline are dropped");
    }

    // A claim arriving before the routing takes the task itself.
    let pulled = h.claim("puller").await.expect("the pending task");
    assert_eq!(pulled.task_id, task_id);
    let mut claims: Vec<_> = offer.waiting.iter().collect();
    let still = h.store.still_offered(&task_id, &mut claims);
    if exact {
        assert!(!still, "a task no longer pending is gone");
    }
    assert_eq!(
        h.store.assign(&task_id, &tokens(&claims), true).await.expect("assign").map(|a| a.token),
        None,
        "whatever the hint said, assign hands it to no one"
    );
    assert_eq!(h.store.withdraw_waiter("tok-2").await.expect("withdraw"), Withdrawn::Unused, "tok-2 kept waiting");
}

/// What an offer tells a strategy about an agent is the agent as it is now: its completions and their latency, its
/// failures, its last grant, its capacity, and the rule's verdict after a pause, a health verdict and an open
/// breaker, each seen by the next offer (the Redis store answers offers from one summary per agent that every change
/// to the agent writes again, docs/REDIS.md).
pub(super) async fn an_offers_numbers_follow_every_change_to_the_agent(h: Harness) {
    use aragora_cp::model::{HealthState, HealthVerdict};
    let h = h
        .reopen(|c| {
            c.breaker_threshold = 2;
            c.breaker_cooldown_ms = 600_000;
        })
        .await;
    h.register("worker", &["code"]).await;
    let routed = |name| request_for(name, Priority::Normal, &["code"]);
    h.submit(routed("one")).await;
    let held = h.claim("worker").await.expect("one");
    h.advance(40).await;
    h.complete(&held, json!({})).await;
    h.submit(routed("two")).await;
    let held = h.claim("worker").await.expect("two");
    h.store.fail(&held.task_id, &lease(&held), &fail("x", false)).await.expect("fail");

    h.store.register_waiter(waiter("tok", "worker", &["code"]), BLOCK).await.expect("waiter");
    let task_id = h.submit(routed("routed")).await;
    let numbers = |h: &Harness, task_id: &TaskId| {
        let (h, task_id) = (h.clone(), task_id.clone());
        async move {
            let offer = h.store.offer(&task_id, 10, None).await.expect("offer").expect("a claim waits");
            offer.waiting.first().expect("the worker is offered").numbers
        }
    };
    let seen = numbers(&h, &task_id).await;
    let agent = h.agent("worker").await;
    assert_eq!((seen.completed, seen.failed, seen.in_flight, seen.max_concurrent), (1, 1, 0, 1));
    assert_eq!((seen.completed, seen.failed), (agent.tasks_completed, agent.tasks_failed));
    assert_eq!((seen.avg_latency_ms, agent.avg_latency_ms), (40.0, 40.0), "claimed to completed");
    let granted = chrono::DateTime::parse_from_rfc3339(agent.last_assigned_at.as_deref().expect("granted twice"));
    assert_eq!(seen.last_assigned_ms, Some(granted.expect("a timestamp").timestamp_millis() as u64));
    assert_eq!(seen.health, HealthState::Unknown);

    h.register_with(AgentRegistration { max_concurrent_tasks: 3, ..registration("worker", &["code"]) }).await;
    assert_eq!(numbers(&h, &task_id).await.max_concurrent, 3, "registered again with more room");

    h.store.set_paused("worker", true).await.expect("pause");
    assert!(h.offered(&task_id, 10).await.is_empty(), "a paused agent is refused");
    h.store.set_paused("worker", false).await.expect("resume");
    assert_eq!(h.offered(&task_id, 10).await, vec!["tok"]);

    let verdict = |status| HealthVerdict { status, message: "probe".into(), latency_ms: None };
    h.store.record_health("worker", verdict(HealthState::Unhealthy)).await.expect("verdict");
    assert!(h.offered(&task_id, 10).await.is_empty(), "an unhealthy agent is refused");
    h.store.record_health("worker", verdict(HealthState::Healthy)).await.expect("verdict");
    assert_eq!(numbers(&h, &task_id).await.health, HealthState::Healthy);

    // Two failures blamed on the agent, over two tasks, open its breaker.
    agents::fail_one_as_agent(&h, "worker").await;
    h.submit(routed("three")).await;
    agents::fail_one_as_agent(&h, "worker").await;
    let task_id = h.submit(routed("four")).await;
    assert!(h.offered(&task_id, 10).await.is_empty(), "an open breaker refuses the agent");
    assert_eq!(h.agent("worker").await.tasks_failed, 3);
}
