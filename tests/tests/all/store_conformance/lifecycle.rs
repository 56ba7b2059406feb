//! A task's way through: fencing and leases, start and progress, completion (single, batch, with the next claim), cancel.

use super::*;

pub(super) async fn cancelling_a_pending_task_ends_it_at_once_and_it_is_never_claimed(h: Harness) {
    h.register("worker", &[]).await;
    let doomed = h.submit(request("doomed")).await;
    let kept = h.submit(request("kept")).await;
    let cancelled = h.store.cancel(&doomed).await.expect("cancel");
    assert_eq!(cancelled.status, TaskStatus::Cancelled);
    assert!(cancelled.completed_at.is_some());
    assert_eq!(h.drain("worker").await, vec![kept]);
    assert_eq!(h.status(&doomed).await, TaskStatus::Cancelled);
    assert!(h.store.peek(&caps(&[]), 10).await.expect("peek").is_empty());
}

pub(super) async fn cancelling_a_running_task_revokes_its_lease(h: Harness) {
    h.register("worker", &[]).await;
    let task_id = h.submit(request("long")).await;
    let held = h.claim("worker").await.expect("claimable");
    h.store.start(&task_id, &lease(&held)).await.expect("start");
    let cancelled = h.store.cancel(&task_id).await.expect("cancel");
    assert_eq!((cancelled.status, cancelled.lease_id.clone()), (TaskStatus::Cancelled, None));
    let agent = h.agent("worker").await;
    assert_eq!((agent.in_flight, agent.current_task_ids.len()), (0, 0));
    assert_eq!(conflict_code(h.store.complete(&task_id, &lease(&held), json!({}).into()).await), "task_cancelled");
    assert_eq!(conflict_code(h.store.fail(&task_id, &lease(&held), &fail("x", true)).await), "task_cancelled");
    assert_eq!(conflict_code(h.store.start(&task_id, &lease(&held)).await), "task_cancelled");
    let progress = h.store.progress(&task_id, &lease(&held), json!({"pct": 50})).await;
    assert_eq!(conflict_code(progress), "task_cancelled");
    let beat = h.heartbeat("worker").await;
    assert_eq!(beat.revoked, vec![Revoked { task_id: task_id.clone(), reason: RevokeReason::Cancelled }]);
    // A claimed (not yet started) task is cancelled the same way.
    let claimed_id = h.submit(request("short")).await;
    let claimed = h.claim("worker").await.expect("claimable");
    h.store.cancel(&claimed_id).await.expect("cancel");
    assert_eq!(
        conflict_code(h.store.complete(&claimed_id, &lease(&claimed), json!({}).into()).await),
        "task_cancelled"
    );
    assert_eq!(h.status(&task_id).await, TaskStatus::Cancelled);
}

pub(super) async fn cancelling_a_cancelled_task_is_ok_but_a_finished_task_cannot_be_cancelled(h: Harness) {
    h.register("worker", &[]).await;
    let cancelled = h.submit(request("twice")).await;
    h.store.cancel(&cancelled).await.expect("cancel");
    assert_eq!(h.store.cancel(&cancelled).await.expect("cancel again").status, TaskStatus::Cancelled);

    let completed = h.submit(request("done")).await;
    let task = h.claim("worker").await.expect("claimable");
    h.complete(&task, json!({"ok": true})).await;
    let failed = h.submit(with_retries("failed", 0)).await;
    let task = h.claim("worker").await.expect("claimable");
    h.store.fail(&failed, &lease(&task), &fail("x", true)).await.expect("fail");
    let timed_out = h.submit(SubmitRequest { timeout_seconds: Some(1), max_retries: Some(0), ..request("t") }).await;
    h.claim("worker").await.expect("claimable");
    h.advance(1_000).await;
    assert_eq!(h.store.sweep_timeouts(10).await.expect("sweep").count, 1);
    for (task_id, status) in
        [(completed, TaskStatus::Completed), (failed, TaskStatus::Failed), (timed_out, TaskStatus::Timeout)]
    {
        assert_eq!(h.status(&task_id).await, status);
        assert_eq!(conflict_code(h.store.cancel(&task_id).await), "invalid_transition", "{status:?}");
        assert_eq!(h.status(&task_id).await, status, "a refused cancel changes nothing");
    }
}

pub(super) async fn a_completion_on_the_current_lease_is_idempotent_and_a_different_outcome_conflicts(h: Harness) {
    h.register("worker", &[]).await;
    let task_id = h.submit(request("fenced")).await;
    let held = h.claim("worker").await.expect("claimable");
    let mut rx = h.store.subscribe();
    let done = h.store.complete(&task_id, &lease(&held), json!({"answer": 42}).into()).await.expect("complete");
    assert_eq!(
        (done.status, done.result.clone(), done.unfenced),
        (TaskStatus::Completed, Some(json!({"answer": 42}).into()), false)
    );
    assert!(done.completed_at.is_some());
    let again =
        h.store.complete(&task_id, &lease(&held), json!({"answer": 42}).into()).await.expect("same outcome again");
    assert_eq!(again, done, "the stored outcome");
    let other = h.store.complete(&task_id, &lease(&held), json!({"answer": 43}).into()).await;
    assert_eq!(conflict_code(other), "outcome_conflict");
    assert_eq!(conflict_code(h.store.fail(&task_id, &lease(&held), &fail("late", true)).await), "outcome_conflict");
    assert_eq!(h.task(&task_id).await, done, "conflicts change nothing");
    assert_eq!(kinds_for(&received(&mut rx), &task_id), vec![EventKind::TaskCompleted], "one completion");
    // The same holds for a terminal failure.
    let failing = h.submit(with_retries("fenced", 0)).await;
    let held = h.claim("worker").await.expect("claimable");
    let failed = h.store.fail(&failing, &lease(&held), &fail("broken", false)).await.expect("fail");
    assert_eq!(h.store.fail(&failing, &lease(&held), &fail("broken", false)).await.expect("repeat"), failed);
    assert_eq!(conflict_code(h.store.fail(&failing, &lease(&held), &fail("other", false)).await), "outcome_conflict");
    assert_eq!(conflict_code(h.store.complete(&failing, &lease(&held), json!({}).into()).await), "outcome_conflict");
}

pub(super) async fn a_stale_lease_from_an_earlier_attempt_is_refused(h: Harness) {
    h.register("first", &[]).await;
    h.register("second", &[]).await;
    let task_id = h.submit(with_retries("twice", 3)).await;
    let one = h.claim("first").await.expect("claimable");
    h.store.fail(&task_id, &lease(&one), &fail("flaky", true)).await.expect("fail");
    // The same lease already failed the task (DESIGN §4: same lease, different outcome).
    assert_eq!(conflict_code(h.store.complete(&task_id, &lease(&one), json!({}).into()).await), "outcome_conflict");
    let two = h.claim("second").await.expect("claimable again");
    assert_ne!(one.lease_id, two.lease_id);
    assert_eq!(conflict_code(h.store.complete(&task_id, &lease(&one), json!({}).into()).await), "lease_lost");
    assert_eq!(conflict_code(h.store.start(&task_id, &lease(&one)).await), "lease_lost");
    assert_eq!(conflict_code(h.store.fail(&task_id, &lease(&one), &fail("x", false)).await), "lease_lost");
    assert_eq!(h.status(&task_id).await, TaskStatus::Claimed, "the stale calls changed nothing");
    let unknown = Fence::Lease("0123456789abcdef0123456789abcdef".into());
    assert_eq!(conflict_code(h.store.complete(&task_id, &unknown, json!({}).into()).await), "lease_lost");
    h.complete(&two, json!({"by": "second"})).await;
    assert_eq!(
        conflict_code(h.store.complete(&task_id, &lease(&one), json!({"by": "second"}).into()).await),
        "lease_lost"
    );
    assert_eq!(h.task(&task_id).await.result, Some(json!({"by": "second"}).into()));
}

pub(super) async fn an_agent_fence_works_for_the_holder_only(h: Harness) {
    h.register("holder", &[]).await;
    h.register("other", &[]).await;
    let task_id = h.submit(request("agent-fenced")).await;
    h.claim("holder").await.expect("claimable");
    let other = Fence::Agent("other".into());
    let holder = Fence::Agent("holder".into());
    assert_eq!(conflict_code(h.store.start(&task_id, &other).await), "lease_lost");
    assert_eq!(conflict_code(h.store.complete(&task_id, &other, json!({}).into()).await), "lease_lost");
    assert_eq!(h.store.start(&task_id, &holder).await.expect("start").status, TaskStatus::Running);
    let done = h.store.complete(&task_id, &holder, json!({"v": 1}).into()).await.expect("complete");
    assert_eq!((done.status, done.unfenced), (TaskStatus::Completed, false));
    assert_eq!(h.store.complete(&task_id, &holder, json!({"v": 1}).into()).await.expect("repeat"), done);
    assert_eq!(conflict_code(h.store.complete(&task_id, &holder, json!({"v": 2}).into()).await), "outcome_conflict");
    assert_eq!(conflict_code(h.store.complete(&task_id, &other, json!({"v": 1}).into()).await), "lease_lost");
}

pub(super) async fn an_unfenced_completion_applies_to_the_current_attempt_and_is_recorded(h: Harness) {
    h.register("worker", &[]).await;
    let pending = h.submit(request("unfenced")).await;
    assert_eq!(conflict_code(h.store.complete(&pending, &Fence::Unfenced, json!({}).into()).await), "lease_lost");
    assert_eq!(h.status(&pending).await, TaskStatus::Pending, "nothing to complete before a grant");
    let held = h.claim("worker").await.expect("claimable");
    let done = h.store.complete(&pending, &Fence::Unfenced, json!({"legacy": true}).into()).await.expect("complete");
    assert_eq!((done.status, done.unfenced), (TaskStatus::Completed, true));
    assert_eq!(done.result, Some(json!({"legacy": true}).into()));
    assert_eq!(h.agent("worker").await.in_flight, 0, "the holder's lease ended");
    let again = h.store.complete(&pending, &Fence::Unfenced, json!({"legacy": true}).into()).await.expect("repeat");
    assert_eq!(again, done, "an unfenced repeat answers the stored outcome");
    let other = h.store.complete(&pending, &Fence::Unfenced, json!({"legacy": false}).into()).await;
    assert_eq!(conflict_code(other), "outcome_conflict");
    assert_eq!(
        conflict_code(h.store.complete(&pending, &lease(&held), json!({"x": 1}).into()).await),
        "outcome_conflict"
    );
    // An unfenced failure applies too.
    let other = h.submit(with_retries("unfenced", 1)).await;
    h.claim("worker").await.expect("claimable");
    let requeued = h.store.fail(&other, &Fence::Unfenced, &fail("legacy", true)).await.expect("fail");
    assert_eq!((requeued.status, requeued.retries), (TaskStatus::Pending, 1));
}

pub(super) async fn every_grant_gets_a_fresh_128_bit_lease_and_the_next_attempt_number(h: Harness) {
    h.register("worker", &[]).await;
    let task_id = h.submit(with_retries("attempts", 5)).await;
    let mut leases = HashSet::new();
    for attempt in 1..=4u32 {
        let task = h.claim("worker").await.expect("claimable");
        assert_eq!(task.attempt, attempt);
        let lease_id = task.lease_id.clone().expect("a lease");
        assert_eq!(lease_id.len(), 32, "128 bits as hex: {lease_id}");
        assert!(lease_id.bytes().all(|b| b.is_ascii_hexdigit()), "{lease_id}");
        assert!(leases.insert(lease_id), "a fresh lease per grant");
        assert_eq!(task.assigned_agent.as_deref(), Some("worker"));
        assert!(task.claimed_at.is_some());
        // Alternate the ways an attempt ends without ending the task.
        if attempt % 2 == 1 {
            h.store.fail(&task_id, &lease(&task), &fail("again", true)).await.expect("fail");
        } else {
            h.store.release(&task_id, task.lease_id.as_deref().expect("lease")).await.expect("release");
        }
    }
    assert_eq!(h.task(&task_id).await.retries, 2, "releases count no retry");
}

pub(super) async fn start_progress_and_a_listing_heartbeat_move_a_claimed_task_to_running(h: Harness) {
    h.register_with(AgentRegistration { max_concurrent_tasks: 4, ..registration("worker", &[]) }).await;
    let started = h.submit(request("start")).await;
    let reported = h.submit(request("progress")).await;
    let listed = h.submit(request("listed")).await;
    let held: Vec<_> = h.claim_with("worker", caps(&[]), 3).await;
    assert_eq!(held.len(), 3);
    let mut rx = h.store.subscribe();

    let running = h.store.start(&started, &lease(&held[0])).await.expect("start");
    assert_eq!(running.status, TaskStatus::Running);
    assert!(running.started_at.is_some());
    assert_eq!(h.store.start(&started, &lease(&held[0])).await.expect("start again").status, TaskStatus::Running);

    let progressed = h.store.progress(&reported, &lease(&held[1]), json!({"pct": 50})).await.expect("progress");
    assert_eq!((progressed.status, progressed.progress.clone()), (TaskStatus::Running, Some(json!({"pct": 50}))));
    let progressed = h.store.progress(&reported, &lease(&held[1]), json!({"pct": 80})).await.expect("progress");
    assert_eq!(progressed.progress, Some(json!({"pct": 80})));

    let beat = HeartbeatRequest { current_task_ids: Some(vec![listed.clone()]), ..HeartbeatRequest::default() };
    h.heartbeat_with("worker", &beat).await;
    assert_eq!(h.status(&listed).await, TaskStatus::Running, "a heartbeat listing the task starts it");
    assert_eq!(h.status(&started).await, TaskStatus::Running);
    assert_eq!(h.status(&reported).await, TaskStatus::Running, "young leases are not released");

    let events = received(&mut rx);
    assert_eq!(kinds_for(&events, &started), vec![EventKind::TaskStarted], "started once");
    assert_eq!(
        kinds_for(&events, &reported),
        vec![EventKind::TaskStarted, EventKind::TaskProgress, EventKind::TaskProgress]
    );
    assert_eq!(kinds_for(&events, &listed), vec![EventKind::TaskStarted]);
    assert_eq!(h.complete(&held[0], json!({})).await.status, TaskStatus::Completed, "running completes");
}

pub(super) async fn complete_and_claim_finishes_one_task_and_grants_the_next_in_one_step(h: Harness) {
    h.register("a", &[]).await;
    let first = h.submit(request("first")).await;
    let second = h.submit(request("second")).await;
    let held = h.claim("a").await.unwrap();
    assert_eq!(held.task_id, first);
    let next = ClaimRequest { agent_id: "a".into(), capabilities: Some(caps(&[])), max_tasks: 1, session_id: None };
    let (done, claimed) =
        h.store.complete_and_claim(&first, &lease(&held), json!({"ok": 1}).into(), &next, None).await.unwrap();
    assert_eq!(done.status, TaskStatus::Completed);
    let claimed = claimed.tasks;
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].task_id, second);
    assert_eq!(h.task(&second).await.assigned_agent.as_deref(), Some("a"));
    // Nothing left: the claim part registers the claim's wait in the same step; the completion still counts.
    let wait = WaitSpec { token: "tok-next".into(), lifetime: BLOCK };
    let (_, nothing) =
        h.store.complete_and_claim(&second, &lease(&claimed[0]), json!({}).into(), &next, Some(wait)).await.unwrap();
    assert!(nothing.tasks.is_empty() && nothing.waiting, "{nothing:?}");
    assert_eq!(h.agent("a").await.in_flight, 0);
    let third = h.submit(request("third")).await;
    assert_eq!(h.offered(&third, 10).await, vec!["tok-next"], "the wait was registered");
    assert_eq!(h.store.withdraw_waiter("tok-next").await.unwrap(), Withdrawn::Unused);
    // A stale lease fails the whole step: no completion, no claim.
    let stale = h.store.complete_and_claim(&first, &lease(&held), json!({"other": true}).into(), &next, None).await;
    assert!(stale.is_err());
    assert_eq!(h.status(&third).await, TaskStatus::Pending);
}

pub(super) async fn complete_batch_answers_each_outcome_on_its_own(h: Harness) {
    h.register("a", &[]).await;
    for n in 0..2 {
        h.submit(request(&format!("t{n}"))).await;
    }
    let tasks = h.claim_with("a", caps(&[]), 2).await;
    assert_eq!(tasks.len(), 2);
    let outcomes = vec![
        (tasks[0].task_id.clone(), lease(&tasks[0]), json!({"n": 0}).into()),
        (tasks[1].task_id.clone(), Fence::Lease("ffffffffffffffffffffffffffffffff".into()), json!({"n": 1}).into()),
    ];
    let results = h.store.complete_batch(outcomes).await.unwrap();
    assert_eq!(results[0].as_ref().unwrap().status, TaskStatus::Completed);
    assert_eq!(conflict_code(results[1].clone()), "lease_lost");
    assert_eq!(h.status(&tasks[1].task_id).await, TaskStatus::Claimed, "the conflict left the other task alone");
}
