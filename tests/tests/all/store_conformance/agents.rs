//! Agents: eligibility (the one rule), status and capacity, sessions, keep-alive, breakers and health verdicts.

use super::*;

pub(super) async fn a_registration_with_a_new_session_revokes_the_old_sessions_leases(h: Harness) {
    let with_session =
        |session: &str| AgentRegistration { session_id: Some(session.into()), ..registration("phoenix", &[]) };
    assert_eq!(h.register_with(with_session("session-1")).await.session_id, "session-1");
    let task_id = h.submit(with_retries("session", 3)).await;
    let held = h.store.claim(&claim_request("phoenix", &[], Some("session-1"))).await.expect("claim").pop();
    let held = held.expect("claimable");
    let mut rx = h.store.subscribe();

    // Re-registering without a session (an existing client) or with the live one keeps the leases.
    let same = h.store.register(registration("phoenix", &[])).await.expect("register");
    assert!(!same.restarted && !same.created);
    let same = h.store.register(with_session("session-1")).await.expect("register");
    assert!(!same.restarted);
    assert_eq!(h.status(&task_id).await, TaskStatus::Claimed);

    let restarted = h.store.register(with_session("session-2")).await.expect("register");
    assert!(restarted.restarted && !restarted.created);
    assert_eq!((restarted.agent.session_id.as_str(), restarted.agent.in_flight), ("session-2", 0));
    let task = h.task(&task_id).await;
    assert_eq!((task.status, task.retries), (TaskStatus::Pending, 1), "agent loss counts a retry");
    assert_eq!(task.last_error.map(|e| e.code), Some("agent_lost".into()));
    assert!(received(&mut rx).iter().any(|e| e.kind == EventKind::AgentRestarted));
    assert_eq!(conflict_code(h.store.complete(&task_id, &lease(&held), json!({}).into()).await), "lease_lost");

    let stale = h.store.claim(&claim_request("phoenix", &[], Some("session-1"))).await;
    assert_eq!(conflict_code(stale), "session_replaced");
    let stale_beat = HeartbeatRequest { session_id: Some("session-1".into()), ..HeartbeatRequest::default() };
    assert_eq!(conflict_code(h.store.heartbeat("phoenix", &stale_beat).await), "session_replaced");
    assert_eq!(h.status(&task_id).await, TaskStatus::Pending, "the refused claim took nothing");
    let fresh = h.store.claim(&claim_request("phoenix", &[], Some("session-2"))).await.expect("claim");
    assert_eq!(fresh.into_iter().map(|t| t.task_id).collect::<Vec<_>>(), vec![task_id]);
}

pub(super) async fn paused_draining_and_failed_agents_get_nothing_until_they_are_eligible_again(h: Harness) {
    h.register("worker", &[]).await;
    let first = h.submit(request("eligibility")).await;
    let paused = h.store.set_paused("worker", true).await.expect("pause");
    assert!(paused.paused);
    assert!(h.claim("worker").await.is_none(), "paused");
    assert_eq!(h.status(&first).await, TaskStatus::Pending);
    assert!(!h.store.set_paused("worker", false).await.expect("resume").paused);
    let held = h.claim("worker").await.expect("resumed");
    assert_eq!(held.task_id, first);

    let second = h.submit(request("eligibility")).await;
    let draining = HeartbeatRequest { status: Some(AgentStatus::Draining), ..HeartbeatRequest::default() };
    assert_eq!(h.heartbeat_with("worker", &draining).await.status, AgentStatus::Draining);
    assert!(h.claim("worker").await.is_none(), "draining: no new tasks");
    assert_eq!(h.agent("worker").await.status, AgentStatus::Draining, "a refused claim leaves it draining");
    assert_eq!(h.complete(&held, json!({})).await.status, TaskStatus::Completed, "current ones continue");
    let ready = HeartbeatRequest { status: Some(AgentStatus::Ready), ..HeartbeatRequest::default() };
    h.heartbeat_with("worker", &ready).await;
    let held = h.claim("worker").await.expect("ready again");
    assert_eq!(held.task_id, second);
    h.complete(&held, json!({})).await;

    let third = h.submit(request("eligibility")).await;
    let failed = HeartbeatRequest { status: Some(AgentStatus::Failed), ..HeartbeatRequest::default() };
    h.heartbeat_with("worker", &failed).await;
    assert!(h.claim("worker").await.is_none(), "failed (fatal report)");
    h.register("worker", &[]).await;
    assert_eq!(h.claim("worker").await.map(|t| t.task_id), Some(third), "re-registering clears failed");
}

pub(super) async fn capacity_and_the_starting_or_offline_status_do_not_refuse_a_claim(h: Harness) {
    h.register("one-slot", &[]).await;
    for _ in 0..3 {
        h.submit(request("capacity")).await;
    }
    h.claim("one-slot").await.expect("first");
    assert_eq!(h.agent("one-slot").await.status, AgentStatus::Busy);
    h.claim("one-slot").await.expect("an agent asking for work is the judge of its capacity");
    assert_eq!(h.agent("one-slot").await.in_flight, 2);

    h.register_with(AgentRegistration { status: AgentStatus::Starting, ..registration("starter", &[]) }).await;
    assert_eq!(h.agent("starter").await.status, AgentStatus::Starting);
    h.claim("starter").await.expect("a starting agent may claim");
    assert_ne!(h.agent("starter").await.status, AgentStatus::Starting, "a claim makes it ready");

    h.register("sleeper", &[]).await;
    h.advance(h.config.heartbeat_timeout_ms + 1_000).await;
    h.store.sweep_offline(100).await.expect("sweep");
    assert_eq!(h.agent("sleeper").await.status, AgentStatus::Offline);
    h.submit(request("capacity")).await;
    h.claim("sleeper").await.expect("an offline agent that claims is alive again");
    assert_ne!(h.agent("sleeper").await.status, AgentStatus::Offline);
}

pub(super) async fn an_agents_status_and_in_flight_follow_its_leases(h: Harness) {
    h.register_with(AgentRegistration { max_concurrent_tasks: 2, ..registration("pair", &[]) }).await;
    let a = h.submit(request("load")).await;
    let b = h.submit(request("load")).await;
    let first = h.claim("pair").await.expect("a");
    let agent = h.agent("pair").await;
    assert_eq!((agent.status, agent.in_flight, agent.current_task_ids.clone()), (AgentStatus::Ready, 1, vec![a]));
    let second = h.claim("pair").await.expect("b");
    let agent = h.agent("pair").await;
    assert_eq!((agent.status, agent.in_flight), (AgentStatus::Busy, 2), "busy at capacity");
    assert!(agent.current_task_ids.contains(&b));
    assert_eq!(h.stats().await.available_agents, 0);
    h.complete(&first, json!({})).await;
    let agent = h.agent("pair").await;
    assert_eq!((agent.status, agent.in_flight, agent.current_task_ids.clone()), (AgentStatus::Ready, 1, vec![b]));
    assert_eq!(agent.tasks_completed, 1);
    assert_eq!(h.stats().await.available_agents, 1);
    h.store.fail(&second.task_id, &lease(&second), &fail("x", false)).await.expect("fail");
    let agent = h.agent("pair").await;
    assert_eq!((agent.status, agent.in_flight), (AgentStatus::Ready, 0));
}

/// An agent may say it is busy with nothing held (work outside the control plane): it is offered last and counts as
/// unavailable until its next sign of life, when capacity decides again (the Redis store's counters and offers read
/// capacity from the status, so the status must not stay busy on its own).
pub(super) async fn an_agent_that_reports_itself_busy_is_ready_again_at_its_next_sign_of_life(h: Harness) {
    h.register("reporter", &["code"]).await;
    h.register("other", &["code"]).await;
    let busy = HeartbeatRequest { status: Some(AgentStatus::Busy), ..HeartbeatRequest::default() };
    assert_eq!(h.heartbeat_with("reporter", &busy).await.status, AgentStatus::Busy);
    assert_eq!(h.stats().await.available_agents, 1, "only the other one");

    h.store.register_waiter(waiter("tok-reporter", "reporter", &["code"]), BLOCK).await.expect("waiter");
    h.store.register_waiter(waiter("tok-other", "other", &["code"]), BLOCK).await.expect("waiter");
    let task_id = h.submit(request_for("routed", Priority::Normal, &["code"])).await;
    let offer = h.store.offer(&task_id, 10, None).await.expect("offer").expect("claims wait");
    let reporter = offer.waiting.iter().find(|c| &*c.token == "tok-reporter").expect("offered");
    assert_eq!(reporter.numbers.in_flight, 0, "its load is its leases, whatever it says");

    h.store.keep_alive("reporter").await.expect("keep alive");
    assert_eq!(h.agent("reporter").await.status, AgentStatus::Ready, "capacity decides again");
    assert_eq!(h.stats().await.available_agents, 2);

    h.heartbeat_with("reporter", &busy).await;
    let held = h.claim("reporter").await.expect("a claim is a sign of life and takes the task");
    assert_eq!(held.task_id, task_id);
    let agent = h.agent("reporter").await;
    assert_eq!((agent.status, agent.in_flight), (AgentStatus::Busy, 1), "busy because full now");
    h.complete(&held, json!({})).await;
    assert_eq!(h.agent("reporter").await.status, AgentStatus::Ready);
    assert_eq!(h.stats().await.available_agents, 2);
}

/// Claims one task for `agent` and fails it with kind `agent`.
pub(super) async fn fail_one_as_agent(h: &Harness, agent: &str) {
    let task = h.claim(agent).await.expect("a task to fail");
    h.store.fail(&task.task_id, &lease(&task), &agent_failure("model crashed")).await.unwrap();
}

pub(super) async fn agent_failures_over_two_tasks_open_the_breaker_and_a_half_open_trial_closes_it(h: Harness) {
    let h = h
        .reopen(|c| {
            c.breaker_threshold = 3;
            c.breaker_cooldown_ms = 10_000;
        })
        .await;
    h.register("flaky", &[]).await;
    for n in 0..6 {
        h.submit(request(&format!("t{n}"))).await;
    }
    // Three agent failures over three tasks: the breaker opens.
    for _ in 0..3 {
        fail_one_as_agent(&h, "flaky").await;
    }
    let health = h.store.agent_health("flaky").await.unwrap().unwrap();
    assert_eq!(health.breaker, aragora_cp::model::BreakerState::Open);
    assert!(health.breaker_opened_at.is_some(), "{health:?}");
    assert_eq!((health.breaker_failures, health.breaker_trial.as_deref()), (3, None), "{health:?}");
    assert!(h.claim("flaky").await.is_none(), "an open breaker gets no work");
    assert!(h.stats().await.open_breakers >= 1);
    // After the cooldown: half-open, exactly one trial lease.
    h.advance(10_001).await;
    let trial = h.claim_with("flaky", caps(&[]), 3).await;
    assert_eq!(trial.len(), 1, "half-open lets one trial lease through");
    assert!(h.claim("flaky").await.is_none(), "no second lease while the trial runs");
    let health = h.store.agent_health("flaky").await.unwrap().unwrap();
    assert_eq!(health.breaker, aragora_cp::model::BreakerState::HalfOpen);
    assert_eq!(health.breaker_trial.as_deref(), Some(trial[0].task_id.as_str()), "the trial is named");
    h.complete(&trial[0], json!({"ok": true})).await;
    let health = h.store.agent_health("flaky").await.unwrap().unwrap();
    assert_eq!(health.breaker, aragora_cp::model::BreakerState::Closed);
    assert_eq!(
        (health.breaker_opened_at.as_deref(), health.breaker_failures, health.breaker_trial.as_deref()),
        (None, 0, None),
        "a closed breaker keeps nothing of its open past"
    );
    assert!(h.claim("flaky").await.is_some(), "a closed breaker lets work flow again");
}

pub(super) async fn task_kind_failures_never_open_a_breaker(h: Harness) {
    let h = h.reopen(|c| c.breaker_threshold = 2).await;
    h.register("a", &[]).await;
    for n in 0..4 {
        h.submit(SubmitRequest { max_retries: Some(0), ..request(&format!("poison{n}")) }).await;
    }
    for _ in 0..4 {
        let task = h.claim("a").await.unwrap();
        let failure = FailRequest { error: "bad input".into(), requeue: true, kind: FailKind::Task };
        h.store.fail(&task.task_id, &lease(&task), &failure).await.unwrap();
    }
    let health = h.store.agent_health("a").await.unwrap().unwrap();
    assert_eq!(health.breaker, aragora_cp::model::BreakerState::Closed);
}

pub(super) async fn a_failed_half_open_trial_opens_the_breaker_again(h: Harness) {
    let h = h
        .reopen(|c| {
            c.breaker_threshold = 2;
            c.breaker_cooldown_ms = 1_000;
        })
        .await;
    h.register("flaky", &[]).await;
    for n in 0..4 {
        h.submit(request(&format!("t{n}"))).await;
    }
    fail_one_as_agent(&h, "flaky").await;
    fail_one_as_agent(&h, "flaky").await;
    assert!(h.claim("flaky").await.is_none());
    h.advance(1_001).await;
    fail_one_as_agent(&h, "flaky").await;
    let health = h.store.agent_health("flaky").await.unwrap().unwrap();
    assert_eq!(health.breaker, aragora_cp::model::BreakerState::Open, "a failed trial reopens the breaker");
    assert!(h.claim("flaky").await.is_none());
}

pub(super) async fn an_unhealthy_verdict_fails_the_agent_until_a_healthy_one(h: Harness) {
    use aragora_cp::model::{HealthState, HealthVerdict};
    h.register("a", &[]).await;
    h.submit(request("t")).await;
    let verdict = |status, message: &str| HealthVerdict { status, message: message.into(), latency_ms: Some(12.0) };
    let recorded = h.store.record_health("a", verdict(HealthState::Unhealthy, "http 503")).await.unwrap();
    assert_eq!((recorded.status, recorded.consecutive_failures), (HealthState::Unhealthy, 1));
    assert_eq!(h.agent("a").await.status, AgentStatus::Failed);
    assert!(h.claim("a").await.is_none(), "an unhealthy agent gets no work");
    h.store.record_health("a", verdict(HealthState::Healthy, "http 200")).await.unwrap();
    assert_eq!(h.agent("a").await.status, AgentStatus::Ready);
    assert!(h.claim("a").await.is_some());
    let health = h.store.agent_health("a").await.unwrap().unwrap();
    assert_eq!((health.status, health.consecutive_failures), (HealthState::Healthy, 0));
}

pub(super) async fn failures_of_a_single_task_never_open_a_breaker(h: Harness) {
    let h = h.reopen(|c| c.breaker_threshold = 2).await;
    h.register("a", &[]).await;
    h.submit(SubmitRequest { max_retries: Some(5), ..request("one") }).await;
    for _ in 0..4 {
        let task = h.claim("a").await.expect("the requeued task comes back");
        let failure = FailRequest { error: "crash".into(), requeue: true, kind: FailKind::Agent };
        h.store.fail(&task.task_id, &lease(&task), &failure).await.unwrap();
    }
    let health = h.store.agent_health("a").await.unwrap().unwrap();
    assert_eq!(health.breaker, aragora_cp::model::BreakerState::Closed, "two distinct tasks are needed");
}

pub(super) async fn keep_alive_keeps_the_agent_alive_without_consuming_revocations(h: Harness) {
    h.register("a", &[]).await;
    let id = h.submit(request("t")).await;
    h.claim("a").await.unwrap();
    h.store.cancel(&id).await.unwrap();
    h.advance(25_000).await;
    h.store.keep_alive("a").await.unwrap();
    h.advance(25_000).await;
    h.store.sweep_offline(100).await.unwrap();
    assert_ne!(h.agent("a").await.status, AgentStatus::Offline, "kept alive");
    let beat = h.heartbeat("a").await;
    assert_eq!(beat.revoked, vec![Revoked { task_id: id, reason: RevokeReason::Cancelled }]);
}

/// "May this agent take work?" is one rule (`model::Standing`): every store's claims and availability answer what
/// the rule says of the agent's state, for every state the transitions can reach. This pins the Redis scripts'
/// mirror (`refusal_of` in lib.lua) to the model.
pub(super) async fn every_store_judges_eligibility_by_the_model_rule(h: Harness) {
    let h = h
        .reopen(|c| {
            c.breaker_threshold = 2;
            c.breaker_cooldown_ms = 10_000;
        })
        .await;
    async fn judge(h: &Harness, agent: &str, expected: Option<Refusal>, what: &str) {
        let record = h.agent(agent).await;
        let health = h.store.agent_health(agent).await.expect("health").expect("registered");
        let standing = Standing {
            paused: record.paused,
            status: record.status,
            health: health.status,
            breaker: health.breaker,
            trial_in_flight: expected == Some(Refusal::BreakerTrialInFlight),
        };
        assert_eq!(standing.refusal(), expected, "{what}: the model rule");
        let available = h
            .store
            .list_agents(&AgentFilter { available: Some(true), ..AgentFilter::default() })
            .await
            .expect("list")
            .iter()
            .any(|a| a.agent_id == agent);
        assert_eq!(
            available,
            standing.available(record.in_flight, record.max_concurrent_tasks),
            "{what}: availability"
        );
        let answer = h.store.claim_or_wait(&claim_request(agent, &[], None), None).await.expect("claim");
        assert_eq!(answer.refusal, expected, "{what}: the store's claim");
        for task in answer.tasks {
            h.complete(&task, json!({})).await;
        }
    }
    h.register("agent", &[]).await;
    judge(&h, "agent", None, "ready").await;
    h.store.set_paused("agent", true).await.expect("pause");
    judge(&h, "agent", Some(Refusal::Paused), "paused").await;
    let unhealthy = HealthVerdict { status: HealthState::Unhealthy, message: "down".into(), latency_ms: None };
    h.store.record_health("agent", unhealthy.clone()).await.expect("verdict");
    judge(&h, "agent", Some(Refusal::Paused), "paused and unhealthy: paused first").await;
    h.store.set_paused("agent", false).await.expect("resume");
    judge(&h, "agent", Some(Refusal::Unhealthy), "unhealthy (and failed by it)").await;
    let healthy = HealthVerdict { status: HealthState::Healthy, message: "up".into(), latency_ms: None };
    h.store.record_health("agent", healthy).await.expect("verdict");
    judge(&h, "agent", None, "healthy again").await;
    for (status, refusal) in [(AgentStatus::Draining, Refusal::Draining), (AgentStatus::Failed, Refusal::Failed)] {
        h.heartbeat_with("agent", &HeartbeatRequest { status: Some(status), ..HeartbeatRequest::default() }).await;
        judge(&h, "agent", Some(refusal), status.as_str()).await;
    }
    h.heartbeat_with("agent", &HeartbeatRequest { status: Some(AgentStatus::Ready), ..HeartbeatRequest::default() })
        .await;
    judge(&h, "agent", None, "ready again").await;
    // An agent failing on two tasks opens its breaker; past the cooldown it is half-open, and the one trial lease
    // out refuses more work until its outcome.
    for _ in 0..2 {
        h.submit(request("breaker")).await;
        fail_one_as_agent(&h, "agent").await;
    }
    judge(&h, "agent", Some(Refusal::BreakerOpen), "breaker open").await;
    h.advance(10_000).await;
    let trial = h.submit(request("trial")).await;
    let held = h.claim("agent").await.expect("the half-open trial");
    assert_eq!(held.task_id, trial);
    h.submit(request("after-trial")).await;
    judge(&h, "agent", Some(Refusal::BreakerTrialInFlight), "half-open, trial out").await;
    h.complete(&held, json!({})).await;
    judge(&h, "agent", None, "the trial closed the breaker").await;
}
