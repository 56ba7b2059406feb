//! Matching and order: capability subsets, narrowing, strict priority and FIFO, aging, signatures and the claim's cost.

use super::*;

pub(super) async fn claims_take_strict_priority_then_submit_order_within_a_priority(h: Harness) {
    use Priority::*;
    h.register("worker", &["code", "debate"]).await;
    // Spread over several signatures: order holds across them, not only within one.
    let plan: [(Priority, &[&str]); 8] = [
        (Low, &[]),
        (Normal, &["code"]),
        (Critical, &["debate"]),
        (High, &[]),
        (Low, &["code", "debate"]),
        (Critical, &[]),
        (Normal, &["debate"]),
        (High, &["code"]),
    ];
    let mut submitted = Vec::new();
    for (priority, required) in plan {
        submitted.push((priority, h.submit(request_for("order", priority, required)).await));
    }
    let mut expected = submitted.clone();
    expected.sort_by_key(|(priority, _)| *priority); // stable: submit order within a priority
    let expected: Vec<TaskId> = expected.into_iter().map(|(_, id)| id).collect();

    let peeked = h.store.peek(&caps(&["code", "debate"]), 8).await.expect("peek");
    assert_eq!(peeked.iter().map(|t| t.task_id.clone()).collect::<Vec<_>>(), expected, "peek shows claim order");
    assert!(peeked.iter().all(|t| t.status == TaskStatus::Pending), "peek takes nothing");
    assert_eq!(h.drain("worker").await, expected);
}

pub(super) async fn with_priority_aging_old_low_priority_work_rises_above_newer_higher_priority_work(h: Harness) {
    use Priority::*;
    // Without aging: strict priority, however old the low-priority task is.
    h.register("worker", &[]).await;
    let old_low = h.submit(request_for("aging", Low, &[])).await;
    h.advance(3_600_000).await;
    let new_high = h.submit(request_for("aging", High, &[])).await;
    assert_eq!(h.drain("worker").await, vec![new_high, old_low]);

    // With aging (score = enqueue_ms + priority·aging_ms): a level per period.
    let h = h.reopen(|c| c.priority_aging_ms = Some(1_000)).await;
    h.register("worker", &[]).await;
    let old_low = h.submit(request_for("aging", Low, &[])).await; // 0 + 3,000
    h.advance(2_500).await;
    let high = h.submit(request_for("aging", High, &[])).await; // 2,500 + 1,000
    let normal = h.submit(request_for("aging", Normal, &[])).await; // 2,500 + 2,000
    let critical = h.submit(request_for("aging", Critical, &[])).await; // 2,500 + 0
    let critical_later = h.submit(request_for("aging", Critical, &[])).await; // same score: FIFO by sequence
    let new_low = h.submit(request_for("aging", Low, &[])).await; // 2,500 + 3,000
    assert_eq!(h.drain("worker").await, vec![critical, critical_later, old_low, high, normal, new_low]);

    // Exactly one period older at one level lower ties, and the tie goes to the older task.
    let h = h.reopen(|c| c.priority_aging_ms = Some(1_000)).await;
    h.register("worker", &[]).await;
    let low = h.submit(request_for("aging", Low, &[])).await; // 0 + 3,000
    h.advance(1_000).await;
    let normal = h.submit(request_for("aging", Normal, &[])).await; // 1,000 + 2,000
    assert_eq!(h.drain("worker").await, vec![low, normal]);

    // A requeued task keeps its aged place.
    let h = h.reopen(|c| c.priority_aging_ms = Some(1_000)).await;
    h.register("worker", &[]).await;
    let first = h.submit(request_for("aging", Low, &[])).await;
    let task = h.claim("worker").await.expect("claims the only task");
    assert_eq!(task.task_id, first);
    h.advance(5_000).await;
    let newer = h.submit(request_for("aging", Normal, &[])).await; // 5,000 + 2,000 > 3,000
    h.store.fail(&first, &lease(&task), &fail("flaky", true)).await.expect("fail");
    assert_eq!(h.drain("worker").await, vec![first, newer]);
}

pub(super) async fn an_agent_missing_one_required_capability_gets_nothing(h: Harness) {
    h.register("coder", &["code"]).await;
    h.register("debater", &["debate", "judge"]).await;
    h.register("both", &["code", "debate", "extra"]).await;
    let task = h.submit(request_for("pair", Priority::Normal, &["debate", "code"])).await;
    assert!(h.claim("coder").await.is_none(), "holds code, lacks debate");
    assert!(h.claim("debater").await.is_none(), "holds debate, lacks code");
    assert_eq!(h.status(&task).await, TaskStatus::Pending);
    assert!(h.store.peek(&caps(&["code"]), 10).await.expect("peek").is_empty());
    assert_eq!(h.claim("both").await.map(|t| t.task_id), Some(task), "a superset matches");
}

pub(super) async fn a_task_requiring_no_capabilities_matches_any_agent(h: Harness) {
    h.register("bare", &[]).await;
    h.register("rich", &["code", "audit"]).await;
    let open_a = h.submit(request("open")).await;
    let open_b = h.submit(request("open")).await;
    let coded = h.submit(request_for("coded", Priority::Critical, &["code"])).await;
    assert_eq!(h.claim("bare").await.map(|t| t.task_id), Some(open_a), "skips the critical task it cannot take");
    assert_eq!(h.claim("rich").await.map(|t| t.task_id), Some(coded));
    assert_eq!(h.claim("rich").await.map(|t| t.task_id), Some(open_b));
    // Required capabilities are normalised like the agent's: trimmed, lower-cased.
    let shouted = h.submit(request_for("shouted", Priority::Normal, &["  AUDIT "])).await;
    assert!(h.claim("bare").await.is_none());
    assert_eq!(h.claim("rich").await.map(|t| t.task_id), Some(shouted));
}

pub(super) async fn a_claims_capabilities_narrow_what_it_matches(h: Harness) {
    h.register("multi", &["code", "debate"]).await;
    let debate = h.submit(request_for("narrow", Priority::Critical, &["debate"])).await;
    let code = h.submit(request_for("narrow", Priority::Normal, &["code"])).await;
    let granted = h.claim_with("multi", caps(&["code"]), 5).await;
    assert_eq!(granted.iter().map(|t| t.task_id.clone()).collect::<Vec<_>>(), vec![code], "only code work");
    assert!(h.claim_with("multi", caps(&[]), 5).await.is_empty(), "narrowed to nothing: only open tasks");
    assert_eq!(h.status(&debate).await, TaskStatus::Pending);
    assert_eq!(h.claim("multi").await.map(|t| t.task_id), Some(debate));
}

pub(super) async fn a_task_addressed_to_an_agent_is_claimed_by_that_agent_alone(h: Harness) {
    h.register("Coder-1", &["code"]).await;
    h.register("coder-2", &["code"]).await;
    let addressed = h.submit(request_for("direct", Priority::High, &["code", "agent:coder-1"])).await;
    let open = h.submit(request_for("direct", Priority::Normal, &["code"])).await;
    // Another agent skips it (it takes the open task behind it); a narrowed claim still holds the address.
    assert_eq!(h.claim("coder-2").await.map(|t| t.task_id), Some(open.clone()));
    assert!(h.claim("coder-2").await.is_none(), "coder-2 cannot take coder-1's task");
    let other = ClaimRequest { agent_id: "coder-2".into(), capabilities: None, max_tasks: 1, session_id: None };
    assert!(h.store.claim_if(&addressed, &other).await.expect("claim_if").is_none());
    // Peeking by the task's exact signature finds it, and nothing else; a wider or narrower one does not.
    let exact = h.store.peek_signature(&caps(&["agent:coder-1", "code"]), 5).await.expect("peek");
    assert_eq!(exact.iter().map(|t| t.task_id.clone()).collect::<Vec<_>>(), vec![addressed.clone()]);
    assert!(h.store.peek_signature(&caps(&["code"]), 5).await.expect("peek").is_empty(), "the open task is taken");
    let granted = h.claim_with("Coder-1", caps(&["code"]), 5).await;
    assert_eq!(granted.iter().map(|t| t.task_id.clone()).collect::<Vec<_>>(), vec![addressed], "ids match lower-cased");
    // An event no transition makes is appended in order with the rest.
    let before = h.store.events_after(None, 10_000).await.expect("events").expect("in the log").len();
    h.store.record_event(EventKind::RoundCompleted, Some(&open), json!({"round": 1})).await.expect("record");
    let events = h.store.events_after(None, 10_000).await.expect("events").expect("in the log");
    let last = events.last().expect("an event");
    assert_eq!((events.len(), last.kind), (before + 1, EventKind::RoundCompleted));
    assert_eq!(last.task_id.as_deref(), Some(open.as_str()));
    assert_eq!(last.data["round"], 1);
}

pub(super) async fn a_submit_creating_a_signature_past_max_signatures_is_refused(h: Harness) {
    let h = h.reopen(|c| c.max_signatures = 2).await;
    h.submit(request_for("sig", Priority::Normal, &["a"])).await;
    h.submit(request_for("sig", Priority::Normal, &["b"])).await;
    let third =
        h.store.submit(new_task("tester", request_for("sig", Priority::Normal, &["c"])), 64).await.map(|c| c.submitted);
    assert!(matches!(third, Err(StoreError::TooManySignatures(2))), "{third:?}");
    let empty = h.store.submit(new_task("tester", request("sig")), 64).await.map(|c| c.submitted);
    assert!(matches!(empty, Err(StoreError::TooManySignatures(_))), "the empty set is a signature too: {empty:?}");
    h.submit(request_for("sig", Priority::High, &["a"])).await; // an existing signature is fine
    let batch =
        vec![new_task("tester", request_for("sig", Priority::Normal, &["a"])), new_task("tester", request("sig"))];
    let first_of_batch = batch[0].task_id.clone();
    assert!(matches!(
        h.store.submit_batch(batch, 64).await.map(|c| c.into_iter().map(|c| c.submitted).collect::<Vec<_>>()),
        Err(StoreError::TooManySignatures(_))
    ));
    assert!(h.store.get_task(&first_of_batch).await.expect("get").is_none(), "all or nothing");
    let stats = h.stats().await;
    assert_eq!((stats.live_signatures, stats.tasks_by_status.get("pending")), (2, Some(&3)));
    // When a signature has no pending work left, it is no longer live.
    h.register("b-worker", &["b"]).await;
    h.claim("b-worker").await.expect("claims the b task");
    assert_eq!(h.stats().await.live_signatures, 1);
    h.submit(request_for("sig", Priority::Normal, &["c"])).await;
}

pub(super) async fn submits_past_max_pending_tasks_are_refused_and_change_nothing(h: Harness) {
    let h = h.reopen(|c| c.max_pending_tasks = 3).await;
    let keyed = |key: &str| SubmitRequest { idempotency_key: Some(key.into()), ..request("bounded") };
    let first = h.submit(keyed("first")).await;
    h.submit(request("bounded")).await;
    let third = h.store.submit(new_task("tester", request("bounded")), 64).await.map(|c| c.submitted);
    assert!(third.is_ok(), "two pending, a third fits: {third:?}");
    let fourth = h.store.submit(new_task("tester", request("bounded")), 64).await.map(|c| c.submitted);
    assert!(matches!(fourth, Err(StoreError::TooManyPending(3))), "{fourth:?}");
    // A replay adds nothing, so it is answered even at the limit.
    let replayed = h.store.submit(new_task("tester", keyed("first")), 64).await.expect("a replay is answered");
    assert_eq!((replayed.submitted.task_id, replayed.submitted.replayed), (first, true));
    let batch = vec![new_task("tester", request("bounded")), new_task("tester", request("bounded"))];
    let first_of_batch = batch[0].task_id.clone();
    let batch = h.store.submit_batch(batch, 64).await.map(|c| c.len());
    assert!(matches!(batch, Err(StoreError::TooManyPending(3))), "{batch:?}");
    assert!(h.store.get_task(&first_of_batch).await.expect("get").is_none(), "all or nothing");
    // Work taken makes room again.
    h.register("drainer", &[]).await;
    h.claim("drainer").await.expect("claims one");
    h.submit(request("bounded")).await;
    assert_eq!(h.stats().await.tasks_by_status.get("pending"), Some(&3));
}

pub(super) async fn claim_cost_is_flat_in_the_backlog(h: Harness) {
    async fn examined_with_backlog(h: &Harness, backlog: usize) -> u64 {
        const SIGNATURES: [&[&str]; 4] = [&[], &["code"], &["code", "debate"], &["audit"]];
        let templates: Vec<_> = SIGNATURES
            .iter()
            .enumerate()
            .map(|(i, required)| new_task("bulk", request_for("bulk", Priority::ALL[i], required)))
            .collect();
        let mut submitted = 0;
        while submitted < backlog {
            let chunk = (backlog - submitted).min(10_000);
            let batch = (submitted..submitted + chunk)
                .map(|i| {
                    let mut task = templates[i % templates.len()].clone();
                    task.task_id = TaskId::generate();
                    task
                })
                .collect();
            h.store
                .submit_batch(batch, 64)
                .await
                .map(|c| c.into_iter().map(|c| c.submitted).collect::<Vec<_>>())
                .expect("batch");
            submitted += chunk;
        }
        h.register("prober", &["code", "debate"]).await;
        h.claim("prober").await.expect("work to claim");
        let stats = h.stats().await;
        assert_eq!(stats.tasks_by_status.get("pending"), Some(&(backlog as u64 - 1)));
        stats.last_claim_examined
    }
    let small = examined_with_backlog(&h, 1_000).await;
    let large = examined_with_backlog(&h.reopen(|_| {}).await, 100_000).await;
    assert_eq!(small, large, "entries examined by a claim do not grow with the backlog");
    assert!((1..=3).contains(&small), "at most one head per covered signature, got {small}");
}

pub(super) async fn peek_and_claim_if_let_a_dispatch_policy_skip_a_task_that_keeps_its_place(h: Harness) {
    h.register("worker", &["code"]).await;
    let denied = h.submit(request_for("dispatch", Priority::High, &["code"])).await;
    let allowed = h.submit(request("dispatch")).await;
    let foreign = h.submit(request_for("dispatch", Priority::Critical, &["debate"])).await;
    let peeked = h.store.peek(&caps(&["code"]), 8).await.expect("peek");
    assert_eq!(peeked.iter().map(|t| t.task_id.clone()).collect::<Vec<_>>(), vec![denied.clone(), allowed.clone()]);
    assert_eq!(h.store.peek(&caps(&["code"]), 1).await.expect("peek").len(), 1, "limit");
    let request = claim_request("worker", &["code"], None);
    let granted = h.store.claim_if(&allowed, &request).await.expect("claim_if").expect("granted");
    assert_eq!((granted.task_id.clone(), granted.status), (allowed.clone(), TaskStatus::Claimed));
    assert_eq!(h.store.claim_if(&allowed, &request).await.expect("claim_if"), None, "no longer pending");
    assert_eq!(h.store.claim_if(&foreign, &request).await.expect("claim_if"), None, "capabilities still apply");
    h.store.set_paused("worker", true).await.expect("pause");
    assert_eq!(h.store.claim_if(&denied, &request).await.expect("claim_if"), None, "eligibility still applies");
    h.store.set_paused("worker", false).await.expect("resume");
    assert_eq!(h.claim("worker").await.map(|t| t.task_id), Some(denied), "the skipped task kept its place");
    assert_eq!(h.status(&foreign).await, TaskStatus::Pending);
}

pub(super) async fn prioritizing_a_pending_task_moves_it_to_its_submit_order_place_in_the_new_level(h: Harness) {
    use Priority::*;
    h.register("worker", &[]).await;
    let high_1 = h.submit(request_for("p", High, &[])).await;
    let normal_1 = h.submit(request_for("p", Normal, &[])).await;
    let normal_2 = h.submit(request_for("p", Normal, &["code"])).await;
    let high_2 = h.submit(request_for("p", High, &[])).await;
    let mut rx = h.store.subscribe();
    // normal_2 was submitted between the two high tasks: it lands between them, in another signature too.
    let moved = h.store.prioritize(&normal_2, High).await.expect("prioritize");
    assert_eq!((moved.priority, moved.status), (High, TaskStatus::Pending));
    let event = of_kind(&received(&mut rx), EventKind::TaskPrioritized).clone();
    assert_eq!(event.task_id.as_deref(), Some(normal_2.to_string().as_str()));
    assert_eq!(event.data, json!({"from": "normal", "to": "high"}));
    let stats = h.stats().await;
    assert_eq!((stats.pending_by_priority.get("high"), stats.pending_by_priority.get("normal")), (Some(&3), Some(&1)));
    // The same priority again changes nothing and emits nothing.
    assert_eq!(h.store.prioritize(&normal_2, High).await.expect("again").priority, High);
    assert!(received(&mut rx).is_empty(), "no change, no event");
    h.register("coder", &["code"]).await;
    assert_eq!(h.drain("coder").await, vec![high_1.clone(), normal_2.clone(), high_2.clone(), normal_1.clone()]);

    // Only pending work moves; unknown tasks are not found.
    let done = h.task(&normal_1).await;
    assert_eq!(conflict_code(h.store.prioritize(&done.task_id, Low).await), "invalid_transition");
    let missing = TaskId::parse("task_id", "task_00000000000000000000000000000000").unwrap();
    assert!(matches!(h.store.prioritize(&missing, Low).await, Err(StoreError::TaskNotFound(_))));

    // With aging the task keeps its age: an old low task raised to normal passes a newer normal one.
    let h = h.reopen(|c| c.priority_aging_ms = Some(1_000)).await;
    h.register("worker", &[]).await;
    let old_low = h.submit(request_for("aging", Low, &[])).await; // 0 + 3,000
    h.advance(500).await;
    let normal = h.submit(request_for("aging", Normal, &[])).await; // 500 + 2,000
    h.store.prioritize(&old_low, Normal).await.expect("prioritize"); // 0 + 2,000
    assert_eq!(h.drain("worker").await, vec![old_low, normal]);
}

pub(super) async fn queue_figures_count_ready_work_per_signature_the_oldest_wait_and_claim_waits(h: Harness) {
    let empty = h.store.queue_figures().await.expect("figures");
    assert_eq!((empty.ready_by_signature.len(), empty.delayed, empty.oldest_waiting_since_ms), (0, 0, None));
    assert!(empty.claim_waits_ms.is_empty());
    h.register("worker", &["code", "gpu"]).await;
    let first = h.submit(request_for("q", Priority::Normal, &["code"])).await;
    h.advance(1_000).await;
    h.submit(request_for("q", Priority::Normal, &["code"])).await;
    h.submit(request_for("q", Priority::Normal, &["gpu", "code"])).await;
    h.advance(500).await;
    let figures = h.store.queue_figures().await.expect("figures");
    assert_eq!(
        figures.ready_by_signature,
        vec![(vec!["code".to_string()], 2), (vec!["code".to_string(), "gpu".to_string()], 1)]
    );
    assert_eq!(figures.now_ms - figures.oldest_waiting_since_ms.expect("something waits"), 1_500);

    // The first task is granted after 1.5 s in pending; the wait is recorded and the oldest is now 0.5 s old.
    let held = h.claim("worker").await.expect("claimable");
    assert_eq!(held.task_id, first);
    let figures = h.store.queue_figures().await.expect("figures");
    assert_eq!(figures.claim_waits_ms, vec![1_500]);
    assert_eq!(figures.now_ms - figures.oldest_waiting_since_ms.expect("two wait"), 500);
    // A failure that requeues with backoff waits again, delayed, counted from the requeue.
    h.advance(200).await;
    h.store.fail(&first, &lease(&held), &fail("again", true)).await.expect("fail");
    let figures = h.store.queue_figures().await.expect("figures");
    let delayed = u64::from(h.task(&first).await.available_at.is_some());
    assert_eq!(figures.delayed, delayed);
    // Drain: every grant adds its wait, newest first.
    h.advance(60_000).await;
    h.store.promote_due(10).await.expect("promote");
    assert_eq!(h.drain("worker").await.len(), 3);
    let figures = h.store.queue_figures().await.expect("figures");
    assert_eq!(figures.claim_waits_ms.len(), 4);
    assert_eq!(figures.claim_waits_ms.last(), Some(&1_500), "the oldest grant last");
    assert_eq!((figures.ready_by_signature.len(), figures.delayed, figures.oldest_waiting_since_ms), (0, 0, None));
}
