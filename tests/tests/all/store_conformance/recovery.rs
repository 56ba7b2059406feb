//! Retries, backoff, attempt timeouts, agent loss and manual retry: how work comes back.

use super::*;

pub(super) async fn a_failed_task_is_requeued_until_its_retries_are_exhausted_then_ends_failed(h: Harness) {
    h.register("worker", &[]).await;
    let task_id = h.submit(with_retries("flaky", 2)).await;
    let mut rx = h.store.subscribe();
    for attempt in 1..=3u32 {
        let task = h.claim("worker").await.unwrap_or_else(|| panic!("attempt {attempt} is claimable"));
        assert_eq!((task.task_id.clone(), task.attempt), (task_id.clone(), attempt));
        let after = h.store.fail(&task_id, &lease(&task), &fail(&format!("boom {attempt}"), true)).await.expect("fail");
        let error = after.last_error.clone().expect("last_error is set");
        assert_eq!((error.code.as_str(), error.message.clone()), ("task_failed", format!("boom {attempt}")));
        assert_eq!(after.lease_id, None, "the lease ends with the attempt");
        if attempt < 3 {
            assert_eq!((after.status, after.retries), (TaskStatus::Pending, attempt), "requeued, retry counted");
            assert_eq!(after.error, None);
        } else {
            assert_eq!((after.status, after.retries), (TaskStatus::Failed, 2), "retries exhausted");
            assert_eq!(after.error.as_deref(), Some("boom 3"));
            assert!(after.completed_at.is_some());
        }
        assert_eq!(h.task(&task_id).await, after, "fail answers the stored task");
    }
    assert!(h.claim("worker").await.is_none(), "a failed task is not claimable");
    assert_eq!(h.agent("worker").await.in_flight, 0);
    use EventKind::*;
    assert_eq!(
        kinds_for(&received(&mut rx), &task_id),
        vec![TaskClaimed, TaskRetried, TaskClaimed, TaskRetried, TaskClaimed, TaskFailed]
    );
}

pub(super) async fn a_failure_without_requeue_ends_the_task_at_once(h: Harness) {
    h.register("worker", &[]).await;
    let task_id = h.submit(with_retries("poison", 3)).await;
    let task = h.claim("worker").await.expect("claimable");
    let failed = h.store.fail(&task_id, &lease(&task), &fail("bad input", false)).await.expect("fail");
    assert_eq!((failed.status, failed.retries), (TaskStatus::Failed, 0));
    assert_eq!(failed.error.as_deref(), Some("bad input"));
    assert_eq!(failed.last_error.map(|e| e.message), Some("bad input".into()));
    assert!(h.claim("worker").await.is_none());
    // A task with no retries at all ends failed even when a requeue is asked.
    let once = h.submit(with_retries("once", 0)).await;
    let task = h.claim("worker").await.expect("claimable");
    let failed = h.store.fail(&once, &lease(&task), &fail("nope", true)).await.expect("fail");
    assert_eq!((failed.status, failed.retries), (TaskStatus::Failed, 0));
}

pub(super) async fn a_requeued_task_is_claimed_before_tasks_submitted_after_it_at_the_same_priority(h: Harness) {
    h.register("worker", &[]).await;
    let a = h.submit(request("place")).await;
    let b = h.submit(request("place")).await;
    let task = h.claim("worker").await.expect("claims a");
    assert_eq!(task.task_id, a);
    let c = h.submit(request("place")).await;
    h.store
        .fail(&a, &Fence::Agent("worker".into()), &FailRequest { kind: FailKind::Agent, ..fail("flaky", true) })
        .await
        .expect("fail");
    // Strict priority still comes first.
    let urgent = h.submit(request_for("place", Priority::High, &[])).await;
    assert_eq!(h.drain("worker").await, vec![urgent, a, b, c]);
}

pub(super) async fn retry_backoff_keeps_a_requeued_task_unclaimable_until_its_available_at(h: Harness) {
    let h = h
        .reopen(|c| {
            c.retry_backoff_base_ms = 1_000;
            c.retry_backoff_max_ms = 60_000;
        })
        .await;
    h.register("worker", &[]).await;
    let a = h.submit(with_retries("backoff", 5)).await;
    let task = h.claim("worker").await.expect("claimable");
    let failed_at = h.store.now_ms();
    let requeued = h.store.fail(&a, &lease(&task), &fail("flaky", true)).await.expect("fail");
    assert_eq!(requeued.status, TaskStatus::Pending);
    assert!(requeued.available_at.is_some(), "a backed-off task carries available_at");
    let deadline = h.store.next_deadline().await.expect("next_deadline").expect("a deadline");
    assert!(deadline <= failed_at + 1_000, "the sweeper wakes for the backoff");
    let b = h.submit(request("backoff")).await;
    // Backoff 1 (base · 2^0) with jitter: between 0.5 and 1 s.
    h.advance(499).await;
    assert_eq!(h.claim("worker").await.map(|t| t.task_id), Some(b.clone()), "a is still backing off");
    h.advance(501).await;
    let task = h.claim("worker").await.expect("a is due");
    assert_eq!((task.task_id.clone(), task.attempt, task.available_at.clone()), (a.clone(), 2, None));
    // The second backoff doubles: between 1 and 2 s.
    h.store.fail(&a, &lease(&task), &fail("flaky", true)).await.expect("fail");
    h.advance(999).await;
    assert!(h.claim("worker").await.is_none());
    h.advance(1_001).await;
    assert_eq!(h.claim("worker").await.map(|t| (t.task_id, t.attempt)), Some((a, 3)));
}

pub(super) async fn an_attempt_past_its_timeout_is_swept_then_requeued_and_its_old_lease_gets_task_timeout(h: Harness) {
    h.register("slow", &[]).await;
    h.register("next", &[]).await;
    let task_id = h.submit(SubmitRequest { timeout_seconds: Some(10), max_retries: Some(1), ..request("slow") }).await;
    let first = h.claim("slow").await.expect("claimable");
    let mut rx = h.store.subscribe();

    h.advance(9_999).await;
    assert_eq!(h.store.sweep_timeouts(100).await.expect("sweep").count, 0, "not yet due");
    assert_eq!(h.status(&task_id).await, TaskStatus::Claimed);
    h.advance(1).await;
    assert_eq!(h.store.sweep_timeouts(100).await.expect("sweep").count, 1);
    let task = h.task(&task_id).await;
    assert_eq!((task.status, task.retries, task.lease_id.clone()), (TaskStatus::Pending, 1, None));
    assert_eq!(task.last_error.map(|e| e.code), Some("timeout".into()));
    assert_eq!(kinds_for(&received(&mut rx), &task_id), vec![EventKind::TaskTimeout, EventKind::TaskRetried]);
    assert_eq!(conflict_code(h.store.complete(&task_id, &lease(&first), json!({}).into()).await), "task_timeout");
    let beat = h.heartbeat("slow").await;
    assert_eq!(beat.revoked, vec![Revoked { task_id: task_id.clone(), reason: RevokeReason::Timeout }]);
    assert!(h.heartbeat("slow").await.revoked.is_empty(), "a revocation is reported once");
    assert_eq!(h.agent("slow").await.in_flight, 0);

    // The next attempt has its own clock, counted from its claim; with no retries left it ends `timeout`.
    let second = h.claim("next").await.expect("requeued task is claimable");
    assert_eq!((second.task_id.clone(), second.attempt), (task_id.clone(), 2));
    h.advance(9_999).await;
    assert_eq!(h.store.sweep_timeouts(100).await.expect("sweep").count, 0);
    h.advance(1).await;
    assert_eq!(h.store.sweep_timeouts(100).await.expect("sweep").count, 1);
    let task = h.task(&task_id).await;
    assert_eq!((task.status, task.retries, task.lease_id.clone()), (TaskStatus::Timeout, 1, None));
    assert_eq!(task.last_error.map(|e| e.code), Some("timeout".into()));
    assert_eq!(kinds_for(&received(&mut rx), &task_id), vec![EventKind::TaskClaimed, EventKind::TaskTimeout]);
    assert_eq!(conflict_code(h.store.complete(&task_id, &lease(&second), json!({}).into()).await), "task_timeout");
    assert_eq!(conflict_code(h.store.complete(&task_id, &lease(&first), json!({}).into()).await), "task_timeout");
    assert_eq!(h.store.sweep_timeouts(100).await.expect("sweep").count, 0, "a sweep is idempotent");
    assert!(h.claim("next").await.is_none());
}

pub(super) async fn an_agent_that_stops_heartbeating_goes_offline_and_its_task_is_claimable_by_another(h: Harness) {
    let timeout = h.config.heartbeat_timeout_ms;
    h.register("dead", &[]).await;
    h.register("live", &[]).await;
    let task_id = h.submit(with_retries("orphan", 3)).await;
    let held = h.claim("dead").await.expect("claimable");
    let mut rx = h.store.subscribe();

    h.advance(timeout - 1).await;
    h.heartbeat("live").await;
    assert_eq!(h.store.sweep_offline(100).await.expect("sweep").count, 0, "silent for less than the timeout");
    assert_ne!(h.agent("dead").await.status, AgentStatus::Offline);
    h.advance(1_001).await;
    h.heartbeat("live").await;
    assert_eq!(h.store.sweep_offline(100).await.expect("sweep").count, 1, "only the silent agent");

    let dead = h.agent("dead").await;
    assert_eq!((dead.status, dead.in_flight), (AgentStatus::Offline, 0));
    assert!(dead.current_task_ids.is_empty());
    assert_eq!(h.agent("live").await.status, AgentStatus::Ready);
    let task = h.task(&task_id).await;
    assert_eq!((task.status, task.retries, task.lease_id.clone()), (TaskStatus::Pending, 1, None));
    assert_eq!(task.last_error.map(|e| e.code), Some("agent_lost".into()));
    let events = received(&mut rx);
    assert!(events.iter().any(|e| e.kind == EventKind::AgentOffline && e.agent_id.as_deref() == Some("dead")));
    assert_eq!(kinds_for(&events, &task_id), vec![EventKind::TaskRetried]);

    let taken = h.claim("live").await.expect("another agent takes it");
    assert_eq!((taken.task_id.clone(), taken.attempt), (task_id.clone(), 2));
    assert_eq!(
        conflict_code(h.store.complete(&task_id, &lease(&held), json!({"late": true}).into()).await),
        "lease_lost"
    );
    assert_eq!(h.complete(&taken, json!({"on": "time"})).await.result, Some(json!({"on": "time"}).into()));
    // The dead agent comes back: it is alive again and learns what it lost.
    let beat = h.heartbeat("dead").await;
    assert_eq!(beat.revoked, vec![Revoked { task_id, reason: RevokeReason::Reassigned }]);
    assert_ne!(beat.status, AgentStatus::Offline);
    assert_eq!(h.store.sweep_offline(100).await.expect("sweep").count, 0);
}

pub(super) async fn a_lost_agents_task_with_no_retries_left_ends_failed_with_agent_lost(h: Harness) {
    h.register("dead", &[]).await;
    let task_id = h.submit(with_retries("fragile", 0)).await;
    h.claim("dead").await.expect("claimable");
    h.advance(h.config.heartbeat_timeout_ms + 1_000).await;
    assert_eq!(h.store.sweep_offline(100).await.expect("sweep").count, 1);
    let task = h.task(&task_id).await;
    assert_eq!((task.status, task.retries), (TaskStatus::Failed, 0));
    assert_eq!(task.last_error.map(|e| e.code), Some("agent_lost".into()));
}

pub(super) async fn unregistering_an_agent_requeues_its_tasks_counting_a_retry(h: Harness) {
    h.register("leaving", &[]).await;
    h.register("staying", &[]).await;
    let task_id = h.submit(with_retries("handover", 3)).await;
    let held = h.claim("leaving").await.expect("claimable");
    h.store.register_waiter(waiter("tok-leaving", "leaving", &[]), BLOCK).await.expect("waiter");
    let requeued = h.store.unregister("leaving").await.expect("unregister");
    assert_eq!(requeued, vec![task_id.clone()], "the task pending again, for the caller to route");
    assert!(h.store.get_agent("leaving").await.expect("get_agent").is_none());
    let task = h.task(&task_id).await;
    assert_eq!((task.status, task.retries), (TaskStatus::Pending, 1));
    assert_eq!(task.last_error.map(|e| e.code), Some("agent_lost".into()));
    assert!(h.offered(&task_id, 10).await.is_empty(), "its waiters went with it");
    assert_eq!(conflict_code(h.store.complete(&task_id, &lease(&held), json!({}).into()).await), "lease_lost");
    let claim = h.store.claim(&claim_request("leaving", &[], None)).await;
    assert!(matches!(claim, Err(StoreError::AgentNotFound(_))), "{claim:?}");
    assert_eq!(h.claim("staying").await.map(|t| t.task_id), Some(task_id));
    let again = h.store.unregister("leaving").await;
    assert!(matches!(again, Err(StoreError::AgentNotFound(_))), "{again:?}");
}

pub(super) async fn manual_retry_restarts_failed_timed_out_and_cancelled_tasks_with_retries_reset(h: Harness) {
    h.register("worker", &[]).await;
    let failed = h.submit(with_retries("manual", 1)).await;
    for _ in 0..2 {
        let task = h.claim("worker").await.expect("claimable");
        h.store.fail(&failed, &lease(&task), &fail("boom", true)).await.expect("fail");
    }
    let before = h.task(&failed).await;
    assert_eq!((before.status, before.retries), (TaskStatus::Failed, 1));
    let mut rx = h.store.subscribe();
    let retried = h.store.retry(&failed).await.expect("retry");
    assert_eq!((retried.status, retried.retries, retried.manual_retries), (TaskStatus::Pending, 0, 1));
    assert_eq!((retried.error.clone(), retried.result.clone(), retried.completed_at.clone()), (None, None, None));
    assert_eq!(kinds_for(&received(&mut rx), &failed), vec![EventKind::TaskRetried]);
    // The reset gives it its automatic retries back.
    let task = h.claim("worker").await.expect("claimable after retry");
    assert_eq!(task.attempt, 3);
    h.store.fail(&failed, &lease(&task), &fail("boom", true)).await.expect("fail");
    assert_eq!(h.status(&failed).await, TaskStatus::Pending);

    let timed_out = h.submit(SubmitRequest { timeout_seconds: Some(1), max_retries: Some(0), ..request("t") }).await;
    let cancelled = h.submit(request("c")).await;
    h.store.cancel(&cancelled).await.expect("cancel");
    // `failed` is pending again and first in line; take it out of the way.
    h.store.cancel(&failed).await.expect("cancel");
    h.claim("worker").await.expect("claims timed_out");
    h.advance(1_000).await;
    h.store.sweep_timeouts(10).await.expect("sweep");
    assert_eq!(h.status(&timed_out).await, TaskStatus::Timeout);
    for task_id in [&timed_out, &cancelled, &failed] {
        let retried = h.store.retry(task_id).await.expect("retry");
        assert_eq!((retried.status, retried.retries), (TaskStatus::Pending, 0));
    }
    assert_eq!(conflict_code(h.store.retry(&failed).await), "invalid_transition", "pending again");
    let drained: HashSet<_> = h.drain("worker").await.into_iter().collect();
    assert_eq!(drained, HashSet::from([timed_out, cancelled, failed]));
}

pub(super) async fn manual_retry_of_a_task_that_is_not_finished_or_has_completed_is_refused(h: Harness) {
    h.register("worker", &[]).await;
    let pending = h.submit(request("p")).await;
    assert_eq!(conflict_code(h.store.retry(&pending).await), "invalid_transition");
    let held = h.claim("worker").await.expect("claimable");
    assert_eq!(conflict_code(h.store.retry(&pending).await), "invalid_transition", "claimed");
    h.store.start(&pending, &lease(&held)).await.expect("start");
    assert_eq!(conflict_code(h.store.retry(&pending).await), "invalid_transition", "running");
    h.complete(&held, json!({})).await;
    assert_eq!(conflict_code(h.store.retry(&pending).await), "invalid_transition", "completed");
    let task = h.task(&pending).await;
    assert_eq!((task.status, task.manual_retries), (TaskStatus::Completed, 0));
}

pub(super) async fn a_repeated_fail_that_requeued_answers_the_same_task_and_a_different_outcome_conflicts(h: Harness) {
    h.register("a", &[]).await;
    let id = h.submit(request("t")).await;
    let held = h.claim("a").await.unwrap();
    let failure = FailRequest { error: "flaky".into(), requeue: true, kind: FailKind::Task };
    let first = h.store.fail(&id, &lease(&held), &failure).await.unwrap();
    assert_eq!(first.status, TaskStatus::Pending);
    let again = h.store.fail(&id, &lease(&held), &failure).await.expect("same lease, same outcome: 200");
    assert_eq!((again.status, again.retries), (TaskStatus::Pending, 1), "nothing happened twice");
    let other = FailRequest { error: "other".into(), ..failure };
    assert_eq!(conflict_code(h.store.fail(&id, &lease(&held), &other).await), "outcome_conflict");
    assert_eq!(conflict_code(h.store.complete(&id, &lease(&held), json!({}).into()).await), "outcome_conflict");
}
