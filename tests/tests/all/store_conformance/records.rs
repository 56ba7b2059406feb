//! Counters, events, listings, deadlines, retention, plugin records and violations.

use super::*;
use aragora_cp::model::{AuditDetails, DECISIONS_PER_TASK};
use aragora_cp::store::Due;

pub(super) async fn counters_match_the_tasks_and_agents_after_a_mixed_sequence(h: Harness) {
    h.register_with(AgentRegistration {
        provider: "anthropic".into(),
        max_concurrent_tasks: 8,
        ..registration("alpha", &["code", "debate"])
    })
    .await;
    h.register_with(AgentRegistration { provider: "openai".into(), ..registration("beta", &["code"]) }).await;
    h.register("gamma", &["audit"]).await;
    h.store.set_paused("gamma", true).await.expect("pause");
    h.store.register_waiter(waiter("tok", "beta", &["code"]), BLOCK).await.expect("waiter");

    // (type, priority, required, timeout_seconds, max_retries)
    let plan: [(&str, Priority, &[&str], u32, u32); 10] = [
        ("code", Priority::Critical, &["code"], 5, 0),
        ("code", Priority::High, &["code"], 300, 1),
        ("debate", Priority::Normal, &["debate"], 300, 1),
        ("debate", Priority::Normal, &["code", "debate"], 300, 1),
        ("misc", Priority::Low, &[], 300, 1),
        ("misc", Priority::Low, &[], 300, 1),
        ("misc", Priority::Normal, &[], 300, 1),
        ("audit", Priority::High, &["audit"], 300, 1),
        ("audit", Priority::Critical, &["audit"], 300, 1),
        ("code", Priority::Normal, &["code"], 300, 1),
    ];
    let mut ids = Vec::new();
    for (task_type, priority, required, timeout, retries) in plan {
        let submit = SubmitRequest {
            timeout_seconds: Some(timeout),
            max_retries: Some(retries),
            ..request_for(task_type, priority, required)
        };
        ids.push(h.submit(submit).await);
    }
    let claimed = h.claim_with("alpha", caps(&["code", "debate"]), 4).await;
    let claimed_ids: Vec<_> = claimed.iter().map(|t| t.task_id.clone()).collect();
    assert_eq!(claimed_ids, ids[..4].to_vec(), "critical, high, then the two oldest normal tasks");
    h.store.start(&ids[0], &lease(&claimed[0])).await.expect("start");
    h.complete(&claimed[1], json!({})).await;
    h.store.fail(&ids[3], &lease(&claimed[3]), &fail("x", false)).await.expect("fail");
    h.store.cancel(&ids[4]).await.expect("cancel pending");
    h.store.fail(&ids[2], &lease(&claimed[2]), &fail("again", true)).await.expect("requeue");
    assert_eq!(h.claim("beta").await.map(|t| t.task_id), Some(ids[6].clone()));
    h.advance(h.config.heartbeat_timeout_ms + 1_000).await;
    h.heartbeat("alpha").await;
    h.heartbeat("gamma").await;
    assert_eq!(h.store.sweep_timeouts(100).await.expect("sweep").count, 1, "ids[0], 5 s, no retry");
    assert_eq!(h.store.sweep_offline(100).await.expect("sweep").count, 1, "beta went silent");
    let more = h.claim_with("alpha", caps(&["code", "debate"]), 2).await;
    assert_eq!(more.len(), 2);
    h.store.start(&more[0].task_id, &lease(&more[0])).await.expect("start");

    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    let mut pending_by_priority: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_type: BTreeMap<String, u64> = BTreeMap::new();
    let mut pending_signatures = HashSet::new();
    for id in &ids {
        let task = h.task(id).await;
        *by_status.entry(task.status.as_str().into()).or_default() += 1;
        *by_type.entry(task.task_type.clone()).or_default() += 1;
        if task.status == TaskStatus::Pending {
            *pending_by_priority.entry(task.priority.as_str().into()).or_default() += 1;
            pending_signatures.insert(task.required_capabilities.clone());
        }
    }
    assert_eq!(by_status.len(), 7, "the sequence reached every status: {by_status:?}");
    let stats = h.stats().await;
    assert_eq!(nonzero(&stats.tasks_by_status), by_status);
    assert_eq!(nonzero(&stats.pending_by_priority), pending_by_priority);
    assert_eq!(nonzero(&stats.tasks_by_type), by_type);
    assert_eq!(stats.live_signatures, pending_signatures.len() as u64);
    for status in TaskStatus::ALL {
        let filter = TaskFilter { status: Some(status), limit: 1_000, ..TaskFilter::default() };
        let listed = h.store.list_tasks(&filter).await.expect("list").tasks.len() as u64;
        assert_eq!(listed, by_status.get(status.as_str()).copied().unwrap_or(0), "{status:?}");
    }

    let agents = h.store.list_agents(&AgentFilter::default()).await.expect("agents");
    assert_eq!(stats.total_agents, agents.len() as u64);
    let mut by_agent_status: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_capability: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_provider: BTreeMap<String, u64> = BTreeMap::new();
    let mut available = 0;
    for agent in &agents {
        *by_agent_status.entry(agent.status.as_str().into()).or_default() += 1;
        *by_provider.entry(agent.provider.clone()).or_default() += 1;
        for capability in agent.capabilities.as_slice() {
            *by_capability.entry(capability.clone()).or_default() += 1;
        }
        if !agent.paused && agent.status == AgentStatus::Ready && agent.in_flight < agent.max_concurrent_tasks {
            available += 1;
        }
    }
    assert_eq!(h.agent("beta").await.status, AgentStatus::Offline);
    assert_eq!(nonzero(&stats.agents_by_status), by_agent_status);
    assert_eq!(nonzero(&stats.agents_by_capability), by_capability);
    assert_eq!(nonzero(&stats.agents_by_provider), by_provider);
    assert_eq!(stats.available_agents, available);
    assert_eq!(stats.waiting_claims, 0, "an offline agent's waiter is gone");
    let in_flight: u32 = agents.iter().map(|a| a.in_flight).sum();
    let leased = by_status.get("claimed").copied().unwrap_or(0) + by_status.get("running").copied().unwrap_or(0);
    assert_eq!(u64::from(in_flight), leased, "every lease is held by one agent");
}

pub(super) async fn every_transition_emits_its_event_to_subscribers_and_the_log(h: Harness) {
    use EventKind::*;
    let mut rx = h.store.subscribe();
    let mut seen = Vec::new();
    let step =
        |rx: &mut broadcast::Receiver<Arc<EventRecord>>, seen: &mut Vec<Event>, expected: &[EventKind], what: &str| {
            let events = received(rx);
            assert_eq!(kinds(&events), expected, "{what}: {events:#?}");
            seen.extend(events.iter().cloned());
            events
        };
    h.register_with(AgentRegistration { session_id: Some("s1".into()), ..registration("agent", &[]) }).await;
    step(&mut rx, &mut seen, &[AgentRegistered], "register");
    let secret = json!({"secret": "p4yl0ad-must-not-leak"});
    let task_id =
        h.submit(SubmitRequest { payload: Some(secret.into()), max_retries: Some(1), ..request("events") }).await;
    let submitted = step(&mut rx, &mut seen, &[TaskSubmitted], "submit");
    assert_eq!(of_kind(&submitted, TaskSubmitted).task_id.as_deref(), Some(task_id.as_str()));
    let held = h.claim("agent").await.expect("claim");
    let claimed = step(&mut rx, &mut seen, &[TaskClaimed], "claim");
    assert_eq!(of_kind(&claimed, TaskClaimed).agent_id.as_deref(), Some("agent"));
    assert_eq!(of_kind(&claimed, TaskClaimed).task_id.as_deref(), Some(task_id.as_str()));
    h.store.start(&task_id, &lease(&held)).await.expect("start");
    step(&mut rx, &mut seen, &[TaskStarted], "start");
    h.store.progress(&task_id, &lease(&held), json!({"pct": 1})).await.expect("progress");
    step(&mut rx, &mut seen, &[TaskProgress], "progress");
    h.store.fail(&task_id, &lease(&held), &fail("once", true)).await.expect("fail");
    step(&mut rx, &mut seen, &[TaskRetried], "fail with requeue");
    let held = h.claim("agent").await.expect("claim");
    step(&mut rx, &mut seen, &[TaskClaimed], "claim");
    h.store.release(&task_id, held.lease_id.as_deref().expect("lease")).await.expect("release");
    step(&mut rx, &mut seen, &[TaskReleased], "release");
    let held = h.claim("agent").await.expect("claim");
    step(&mut rx, &mut seen, &[TaskClaimed], "claim");
    h.store
        .complete(&task_id, &lease(&held), json!({"secret": "r3sult-must-not-leak"}).into())
        .await
        .expect("complete");
    step(&mut rx, &mut seen, &[TaskCompleted], "complete");
    let second = h.submit(with_retries("events", 0)).await;
    step(&mut rx, &mut seen, &[TaskSubmitted], "submit");
    h.store.cancel(&second).await.expect("cancel");
    step(&mut rx, &mut seen, &[TaskCancelled], "cancel");
    h.store.retry(&second).await.expect("retry");
    step(&mut rx, &mut seen, &[TaskRetried], "manual retry");
    let held = h.claim("agent").await.expect("claim");
    step(&mut rx, &mut seen, &[TaskClaimed], "claim");
    h.store.fail(&second, &lease(&held), &fail("fatal", false)).await.expect("fail");
    step(&mut rx, &mut seen, &[TaskFailed], "fail");
    h.store.retry(&second).await.expect("retry");
    step(&mut rx, &mut seen, &[TaskRetried], "manual retry");
    h.claim("agent").await.expect("claim");
    step(&mut rx, &mut seen, &[TaskClaimed], "claim");
    h.store.cancel(&second).await.expect("cancel");
    step(&mut rx, &mut seen, &[TaskCancelled], "cancel with a lease");

    let timed = h.submit(SubmitRequest { timeout_seconds: Some(1), max_retries: Some(0), ..request("events") }).await;
    step(&mut rx, &mut seen, &[TaskSubmitted], "submit");
    h.claim("agent").await.expect("claim");
    step(&mut rx, &mut seen, &[TaskClaimed], "claim");
    h.advance(1_000).await;
    h.store.sweep_timeouts(10).await.expect("sweep");
    let timeout = step(&mut rx, &mut seen, &[TaskTimeout], "timeout with no retry left");
    assert_eq!(of_kind(&timeout, TaskTimeout).task_id.as_deref(), Some(timed.as_str()));
    h.store.set_paused("agent", true).await.expect("pause");
    let paused = step(&mut rx, &mut seen, &[], "pause");
    assert!(paused.iter().any(|e| e.kind == AgentStatusChanged), "pausing changes the agent's status: {paused:?}");
    h.store.set_paused("agent", false).await.expect("resume");
    seen.extend(received(&mut rx));
    h.register_with(AgentRegistration { session_id: Some("s2".into()), ..registration("agent", &[]) }).await;
    step(&mut rx, &mut seen, &[AgentRestarted], "register with a new session");
    h.advance(h.config.heartbeat_timeout_ms).await;
    h.store.sweep_offline(10).await.expect("sweep");
    let offline = step(&mut rx, &mut seen, &[AgentOffline], "offline");
    assert_eq!(of_kind(&offline, AgentOffline).agent_id.as_deref(), Some("agent"));
    let status_changes: Vec<_> = offline.iter().filter(|e| e.kind == AgentStatusChanged).collect();
    assert_eq!(status_changes.len(), 1, "offline is a status change");
    h.store.unregister("agent").await.expect("unregister");
    step(&mut rx, &mut seen, &[AgentUnregistered], "unregister");

    let log = all_events(&h).await;
    assert_eq!(seen, log, "the subscriber saw exactly the logged events, in order");
    let mut rx_all = h.store.subscribe();
    assert!(received(&mut rx_all).is_empty(), "a subscription starts now");
    let logged = serde_json::to_string(&log).expect("serialise");
    assert!(!logged.contains("must-not-leak"), "events never carry payloads or results");
    for event in &log {
        assert_eq!(event.server_id, "conformance");
        assert!(looks_like_rfc3339(&event.time), "RFC 3339 time: {}", event.time);
        event_order(&event.id);
    }
    // Resume after any event: the rest of the log, in order.
    let middle = &log[log.len() / 2];
    let rest = h.store.events_after(Some(&middle.id), 1_000).await.expect("events_after").expect("kept");
    assert_eq!(rest, log[log.len() / 2 + 1..].to_vec());
    let two = h.store.events_after(Some(&middle.id), 2).await.expect("events_after").expect("kept");
    assert_eq!(two, log[log.len() / 2 + 1..log.len() / 2 + 3].to_vec(), "at most limit");
    let last = &log[log.len() - 1];
    assert_eq!(h.store.events_after(Some(&last.id), 10).await.expect("events_after"), Some(vec![]));
    assert_eq!(h.store.events_after(Some("1-0"), 10).await.expect("events_after"), None, "not in the buffer");
}

pub(super) async fn a_transition_that_changes_nothing_emits_no_event(h: Harness) {
    h.register("worker", &[]).await;
    let keyed_request = || SubmitRequest { idempotency_key: Some("k".into()), ..request("quiet") };
    h.submit(keyed_request()).await;
    let cancelled = h.submit(request("quiet")).await;
    h.store.cancel(&cancelled).await.expect("cancel");
    let held = h.claim("worker").await.expect("claims the keyed task");
    let done = held.task_id.clone();
    h.complete(&held, json!({})).await;
    let mut rx = h.store.subscribe();
    let logged = all_events(&h).await.len();

    assert!(
        h.store.submit(new_task("tester", keyed_request()), 64).await.map(|c| c.submitted).expect("replay").replayed
    );
    h.store.cancel(&cancelled).await.expect("cancel again");
    h.store.release(&done, "00000000000000000000000000000000").await.expect("release of an ended lease");
    assert_eq!(h.store.sweep_timeouts(100).await.expect("sweep").count, 0);
    assert_eq!(h.store.sweep_offline(100).await.expect("sweep").count, 0);
    h.store.peek(&caps(&[]), 10).await.expect("peek");
    h.store.complete(&done, &lease(&held), json!({}).into()).await.expect("repeat");
    assert!(h.store.complete(&done, &lease(&held), json!({"other": 1}).into()).await.is_err());
    assert!(h.store.retry(&done).await.is_err());
    assert!(h.store.cancel(&done).await.is_err());
    h.store.set_paused("worker", false).await.expect("resume an agent that is not paused");
    h.store.withdraw_waiter("no-such-token").await.expect("withdraw");
    assert!(h.claim("worker").await.is_none(), "nothing pending");
    assert!(received(&mut rx).is_empty(), "no-op transitions emit nothing");
    assert_eq!(all_events(&h).await.len(), logged, "and log nothing");
}

pub(super) async fn next_deadline_is_the_earliest_lease_heartbeat_or_backoff_deadline(h: Harness) {
    assert_eq!(h.store.next_deadline().await.expect("next_deadline"), None, "an empty store has none");
    let timeout = h.config.heartbeat_timeout_ms;
    h.register("worker", &[]).await;
    assert_eq!(h.store.next_deadline().await.expect("next_deadline"), Some(T0_MS + timeout));
    h.submit(SubmitRequest { timeout_seconds: Some(10), ..request("deadline") }).await;
    h.advance(1_000).await;
    let held = h.claim("worker").await.expect("claim");
    assert_eq!(h.store.next_deadline().await.expect("next_deadline"), Some(T0_MS + 1_000 + 10_000), "the lease");
    h.complete(&held, json!({})).await;
    assert_eq!(
        h.store.next_deadline().await.expect("next_deadline"),
        Some(T0_MS + 1_000 + timeout),
        "the heartbeat expiry, renewed by the claim"
    );
}

pub(super) async fn list_tasks_pages_newest_first_and_filters(h: Harness) {
    h.register("worker", &[]).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(h.submit(request(if i % 2 == 0 { "even" } else { "odd" })).await);
    }
    let held = h.claim("worker").await.expect("claim");
    assert_eq!(held.task_id, ids[0]);
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = h.store.list_tasks(&TaskFilter { limit: 2, cursor, ..TaskFilter::default() }).await.expect("list");
        assert!(page.tasks.len() <= 2);
        seen.extend(page.tasks.into_iter().map(|t| t.task_id));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, ids.iter().rev().cloned().collect::<Vec<_>>(), "newest first, every task once");
    let list = |filter: TaskFilter| {
        let store = h.store.clone();
        async move {
            store.list_tasks(&filter).await.expect("list").tasks.into_iter().map(|t| t.task_id).collect::<Vec<_>>()
        }
    };
    let pending = list(TaskFilter { status: Some(TaskStatus::Pending), limit: 10, ..TaskFilter::default() }).await;
    assert_eq!(pending, vec![ids[4].clone(), ids[3].clone(), ids[2].clone(), ids[1].clone()]);
    let even = list(TaskFilter { task_type: Some("even".into()), limit: 10, ..TaskFilter::default() }).await;
    assert_eq!(even, vec![ids[4].clone(), ids[2].clone(), ids[0].clone()]);
    let mine = list(TaskFilter { agent_id: Some("worker".into()), limit: 10, ..TaskFilter::default() }).await;
    assert_eq!(mine, vec![ids[0].clone()]);
}

pub(super) async fn list_agents_filters_by_capability_and_availability(h: Harness) {
    h.register("coder", &["code"]).await;
    h.register("auditor", &["audit", "code"]).await;
    h.register("idle", &["debate"]).await;
    h.store.set_paused("idle", true).await.expect("pause");
    let ids = |agents: Vec<aragora_cp::model::Agent>| agents.into_iter().map(|a| a.agent_id).collect::<Vec<_>>();
    let all = h.store.list_agents(&AgentFilter::default()).await.expect("list");
    assert_eq!(ids(all), vec!["auditor", "coder", "idle"], "by id");
    let code = AgentFilter { capability: Some("code".into()), ..AgentFilter::default() };
    assert_eq!(ids(h.store.list_agents(&code).await.expect("list")), vec!["auditor", "coder"]);
    let available = AgentFilter { available: Some(true), ..AgentFilter::default() };
    assert_eq!(ids(h.store.list_agents(&available).await.expect("list")), vec!["auditor", "coder"]);
    let unavailable = AgentFilter { available: Some(false), ..AgentFilter::default() };
    assert_eq!(ids(h.store.list_agents(&unavailable).await.expect("list")), vec!["idle"]);
}

/// Agents come back by id, whatever order they registered in (routing's candidate list and the events a health read
/// emits follow this order).
pub(super) async fn agents_and_their_health_are_listed_by_id(h: Harness) {
    let registered = ["m", "c", "q", "a", "x", "k", "e", "z", "g", "b", "t", "h"];
    for id in registered {
        h.register(&format!("agent-{id}"), &["code"]).await;
    }
    let mut expected: Vec<String> = registered.iter().map(|id| format!("agent-{id}")).collect();
    expected.sort();
    let listed: Vec<String> =
        h.store.list_agents(&AgentFilter::default()).await.expect("list").into_iter().map(|a| a.agent_id).collect();
    assert_eq!(listed, expected, "agents by id");
    let health: Vec<String> = h.store.all_health().await.expect("health").into_iter().map(|a| a.agent_id).collect();
    assert_eq!(health, expected, "every agent's health, by id");
}

pub(super) async fn operations_on_unknown_tasks_and_agents_are_not_found(h: Harness) {
    let ghost = TaskId::generate();
    let not_found =
        |result: Result<(), StoreError>| matches!(result, Err(StoreError::TaskNotFound(ref id)) if *id == ghost);
    assert_eq!(h.store.get_task(&ghost).await.expect("get"), None);
    assert!(not_found(h.store.complete(&ghost, &Fence::Unfenced, json!({}).into()).await.map(|_| ())));
    assert!(not_found(h.store.fail(&ghost, &Fence::Unfenced, &fail("x", true)).await.map(|_| ())));
    assert!(not_found(h.store.start(&ghost, &Fence::Unfenced).await.map(|_| ())));
    assert!(not_found(h.store.progress(&ghost, &Fence::Unfenced, json!({})).await.map(|_| ())));
    assert!(not_found(h.store.cancel(&ghost).await.map(|_| ())));
    assert!(not_found(h.store.retry(&ghost).await.map(|_| ())));
    assert!(not_found(h.store.release(&ghost, "lease").await.map(|_| ())));
    assert_eq!(h.store.get_agent("ghost").await.expect("get"), None);
    let agent_not_found =
        |result: Result<(), StoreError>| matches!(result, Err(StoreError::AgentNotFound(ref a)) if a == "ghost");
    assert!(agent_not_found(h.store.claim(&claim_request("ghost", &[], None)).await.map(|_| ())));
    assert!(agent_not_found(h.store.heartbeat("ghost", &HeartbeatRequest::default()).await.map(|_| ())));
    assert!(agent_not_found(h.store.set_paused("ghost", true).await.map(|_| ())));
    assert!(agent_not_found(h.store.unregister("ghost").await.map(|_| ())));
    h.register("real", &[]).await;
    let task = h.submit(request("x")).await;
    assert!(agent_not_found(h.store.claim_if(&task, &claim_request("ghost", &[], None)).await.map(|_| ())));
    assert_eq!(h.status(&task).await, TaskStatus::Pending);
}

pub(super) async fn housekeeping_removes_old_terminal_tasks_and_long_offline_agents_and_keeps_the_rest(h: Harness) {
    h.register("a", &[]).await;
    h.register("gone", &[]).await;
    let done = h.submit(request("done")).await;
    let open = h.submit(request("open")).await;
    let held = h.claim("a").await.unwrap();
    assert_eq!(held.task_id, done);
    h.complete(&held, json!({})).await;
    assert_eq!(h.store.housekeeping(60_000, 60_000, 100).await.unwrap(), 0, "nothing is old yet");
    // "gone" falls silent and goes offline; "a" keeps heartbeating.
    h.advance(31_000).await;
    h.heartbeat("a").await;
    h.store.sweep_offline(100).await.unwrap();
    h.advance(30_000).await;
    h.heartbeat("a").await;
    let removed = h.store.housekeeping(60_000, 60_000, 100).await.unwrap();
    assert_eq!(removed, 2, "the finished task and the long-offline agent");
    assert!(h.store.get_task(&done).await.unwrap().is_none());
    assert_eq!(h.status(&open).await, TaskStatus::Pending, "live work is never removed");
    assert!(h.store.get_agent("gone").await.unwrap().is_none());
    assert!(h.store.get_agent("a").await.unwrap().is_some());
    let stats = h.stats().await;
    assert_eq!(stats.tasks_by_status.get("completed").copied().unwrap_or(0), 0);
    assert_eq!(stats.tasks_by_status.get("pending").copied(), Some(1));
}

/// An agent that said it is going offline (its own heartbeat, not the sweep) is still watched for silence; removed
/// for retention before its expiry, it leaves nothing the next sweep would trip on.
pub(super) async fn an_agent_offline_by_its_own_word_and_removed_for_retention_leaves_the_sweep_sound(h: Harness) {
    h.register("leaving", &[]).await;
    h.register("staying", &[]).await;
    let offline = HeartbeatRequest { status: Some(AgentStatus::Offline), ..HeartbeatRequest::default() };
    h.heartbeat_with("leaving", &offline).await;
    h.advance(1_000).await;
    h.heartbeat("staying").await;
    assert_eq!(h.store.housekeeping(60_000, 500, 100).await.unwrap(), 1, "offline past the agents' retention");
    assert!(h.store.get_agent("leaving").await.unwrap().is_none());
    h.advance(h.config.heartbeat_timeout_ms + 1).await;
    assert_eq!(h.store.sweep_offline(100).await.expect("the sweep answers").count, 1, "only the silent agent left");
    assert_eq!(h.agent("staying").await.status, AgentStatus::Offline);
    assert!(h.store.next_deadline().await.expect("next_deadline").is_none(), "nobody is watched any more");
    h.register("leaving", &[]).await;
    assert_eq!(h.agent("leaving").await.status, AgentStatus::Ready, "the store still serves");
}

/// More agents due than one call removes: each call takes the longest silent first, ties by id, so every store removes
/// the same agents in the same calls and reports them in the same order.
pub(super) async fn a_bounded_housekeeping_removes_the_longest_offline_agents_first(h: Harness) {
    // Silent since: "a" and "c" registration (a tie), "e" 5 s later, "b" 10 s, "d" 20 s. Neither id order nor its
    // reverse is the order of their silences.
    let agents = ["d", "b", "e", "a", "c"];
    for id in agents {
        h.register(id, &[]).await;
    }
    for (after_ms, beating) in [(5_000, &["e", "b", "d"][..]), (5_000, &["b", "d"]), (10_000, &["d"])] {
        h.advance(after_ms).await;
        for id in beating {
            h.heartbeat(id).await;
        }
    }
    h.advance(h.config.heartbeat_timeout_ms + 1_000).await;
    h.store.sweep_offline(100).await.unwrap();
    for id in agents {
        assert_eq!(h.agent(id).await.status, AgentStatus::Offline, "{id} fell silent");
    }
    h.advance(60_000).await;
    let mut left: Vec<&str> = agents.to_vec();
    for gone in ["a", "c", "e", "b", "d"] {
        assert_eq!(h.store.housekeeping(60_000, 60_000, 1).await.unwrap(), 1);
        left.retain(|id| *id != gone);
        for id in agents {
            let kept = h.store.get_agent(id).await.unwrap().is_some();
            assert_eq!(kept, left.contains(&id), "after {gone} went, {id} is kept: {kept}");
        }
    }
}

pub(super) async fn plugin_changes_keep_versions_bytes_history_and_emit_events(h: Harness) {
    use aragora_cp::model::EventKind;
    use aragora_cp::model::{PluginAction, PluginChange, StoreError};
    let change = |action, by: &str| PluginChange { name: "fleet".into(), action, by: by.into() };
    let bytes: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let upload =
        PluginAction::Upload { bytes: bytes.clone(), sha256: "ab12".into(), manifest: Some("order = 5".into()) };
    assert!(matches!(
        h.store.change_plugin(change(PluginAction::Delete, "x")).await,
        Err(StoreError::PluginNotFound(_))
    ));
    let mut rx = h.store.subscribe();
    let record = h.store.change_plugin(change(upload, "alice")).await.expect("upload");
    assert_eq!((record.version, record.enabled, record.size), (1, true, Some(70_000)));
    assert_eq!((record.sha256.as_deref(), record.manifest.as_deref()), (Some("ab12"), Some("order = 5")));
    assert_eq!(h.store.plugin_component("fleet").await.expect("read"), Some(("ab12".to_string(), bytes)));
    let record = h.store.change_plugin(change(PluginAction::Disable, "bob")).await.expect("disable");
    assert_eq!((record.version, record.enabled), (2, false));
    let record = h.store.change_plugin(change(PluginAction::Delete, "carol")).await.expect("delete");
    assert_eq!((record.version, record.sha256.clone(), record.enabled), (3, None, false));
    assert_eq!(h.store.plugin_component("fleet").await.expect("read"), None);
    let history: Vec<(u64, &str, &str)> =
        record.history.iter().map(|e| (e.version, e.action.as_str(), e.by.as_str())).collect();
    assert_eq!(history, [(3, "deleted", "carol"), (2, "disabled", "bob"), (1, "uploaded", "alice")]);
    assert_eq!(record.history[1].sha256.as_deref(), Some("ab12"), "the disable happened while ab12 was current");
    let kinds: Vec<EventKind> = received(&mut rx).iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventKind::PluginUploaded, EventKind::PluginDisabled, EventKind::PluginDeleted]);
    assert_eq!(h.store.plugin_record("fleet").await.expect("record"), Some(record.clone()));
    assert_eq!(h.store.plugin_record("never-uploaded").await.expect("record"), None);
    let records = h.store.plugin_records().await.expect("records");
    assert_eq!(records, [record]);
}

pub(super) async fn a_candidate_is_staged_promoted_or_rolled_back_in_one_step(h: Harness) {
    use aragora_cp::model::{PluginAction, PluginChange, RolloutMode, StoreError};
    let change = |action, by: &str| PluginChange { name: "ruled".into(), action, by: by.into() };
    let stage = |bytes: &[u8], sha: &str, mode| PluginAction::Stage {
        bytes: bytes.to_vec(),
        sha256: sha.into(),
        manifest: Some("kind = \"strategy\"".into()),
        mode,
    };
    let refused = |result: Result<_, StoreError>| match result {
        Err(StoreError::Conflict { code, .. }) => code,
        other => panic!("expected a conflict, got {other:?}"),
    };
    let upload = PluginAction::Upload { bytes: vec![1; 10], sha256: "old".into(), manifest: None };
    h.store.change_plugin(change(upload, "alice")).await.expect("upload");
    let promote = |sha: Option<&str>| PluginAction::Promote { sha256: sha.map(str::to_string) };
    assert_eq!(refused(h.store.change_plugin(change(promote(None), "bob")).await), "no_candidate");
    let mut rx = h.store.subscribe();
    let record = h.store.change_plugin(change(stage(&[2; 20], "new", RolloutMode::Shadow), "bob")).await.unwrap();
    let candidate = record.candidate.clone().expect("staged");
    assert_eq!((candidate.mode, candidate.sha256.as_str(), candidate.size), (RolloutMode::Shadow, "new", 20));
    assert_eq!(record.sha256.as_deref(), Some("old"), "the active upload is untouched");
    assert_eq!(h.store.plugin_candidate_component("ruled").await.unwrap(), Some(("new".into(), vec![2; 20])));
    assert_eq!(record.history[0].detail.as_deref(), Some("shadow"));
    assert_eq!(refused(h.store.change_plugin(change(promote(Some("other")), "bob")).await), "candidate_changed");
    let record = h.store.change_plugin(change(promote(Some("new")), "carol")).await.expect("promote");
    assert_eq!((record.sha256.as_deref(), record.size, record.candidate.as_ref()), (Some("new"), Some(20), None));
    assert_eq!(record.manifest.as_deref(), Some("kind = \"strategy\""), "the candidate's manifest came along");
    assert_eq!(h.store.plugin_component("ruled").await.unwrap(), Some(("new".into(), vec![2; 20])));
    assert_eq!(h.store.plugin_candidate_component("ruled").await.unwrap(), None);
    // A canary, then an automatic rollback that names it, with its reason.
    let canary = stage(&[3; 5], "canary", RolloutMode::Canary { percent: 10 });
    let record = h.store.change_plugin(change(canary, "dave")).await.unwrap();
    assert_eq!(record.candidate.map(|c| c.mode), Some(RolloutMode::Canary { percent: 10 }));
    assert_eq!(
        h.store.plugin_record("ruled").await.unwrap().unwrap().history[0].detail.as_deref(),
        Some("canary 10 %")
    );
    let rollback = PluginAction::Rollback { sha256: Some("canary".into()), reason: Some("it failed".into()) };
    let record = h.store.change_plugin(change(rollback, "canary-guard")).await.expect("rollback");
    assert_eq!((record.candidate, record.sha256.as_deref()), (None, Some("new")));
    assert_eq!(
        (record.history[0].action.as_str(), record.history[0].detail.as_deref()),
        ("rolled_back", Some("it failed"))
    );
    assert_eq!(h.store.plugin_candidate_component("ruled").await.unwrap(), None);
    let kinds: Vec<EventKind> = received(&mut rx).iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [EventKind::PluginStaged, EventKind::PluginPromoted, EventKind::PluginStaged, EventKind::PluginRolledBack]
    );
}

pub(super) async fn decisions_are_kept_in_order_by_task_and_trimmed_by_age(h: Harness) {
    use aragora_cp::model::{DecisionAnswer, DecisionRecord, DecisionRole, DecisionStage};
    let decision = |task: &str, n: u32| DecisionRecord {
        id: String::new(),
        at_ms: T0_MS,
        server_id: "s".into(),
        stage: DecisionStage::Route,
        task_id: Some(task.to_string()),
        agent_id: None,
        plugin: "least_loaded".into(),
        version: "v".into(),
        source: "builtin".into(),
        role: DecisionRole::Active,
        input: None,
        answer: DecisionAnswer { index: Some(n), ..DecisionAnswer::default() },
        answered_by: "plugin".into(),
        fuel: u64::from(n),
        duration_us: 1,
    };
    let hour = 3_600_000;
    let written = vec![decision("t1", 0), decision("t2", 1), decision("t1", 2)];
    let given = h.store.append_decisions(written.clone(), 1_000, hour).await.expect("append");
    assert_eq!(given.len(), written.len(), "one id per record");
    let first: Vec<DecisionRecord> =
        written.into_iter().zip(&given).map(|(record, id)| DecisionRecord { id: id.clone(), ..record }).collect();
    let ids: Vec<&str> = given.iter().map(String::as_str).collect();
    let keys: Vec<(u64, u64)> = ids.iter().map(|id| aragora_cp::model::decision_id_key(id)).collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "ids ascend: {ids:?}");
    let of_t1 = h.store.task_decisions("t1").await.unwrap();
    assert_eq!(of_t1.iter().map(|d| d.fuel).collect::<Vec<_>>(), [0, 2]);
    assert_eq!(of_t1[0], first[0], "read back as written, id included");
    assert_eq!(h.store.task_decisions("nobody").await.unwrap(), []);
    assert_eq!(h.store.decisions(None, None, 10).await.unwrap(), first);
    assert_eq!(h.store.decisions(Some(ids[0]), None, 10).await.unwrap(), first[1..]);
    assert_eq!(h.store.decisions(None, None, 2).await.unwrap(), first[..2]);
    h.advance(60_000).await;
    let later_id = h.store.append_decisions(vec![decision("t2", 3)], 1_000, hour).await.unwrap();
    let later = vec![DecisionRecord { id: later_id[0].clone(), ..decision("t2", 3) }];
    assert!(aragora_cp::model::decision_id_key(&later[0].id) > keys[2]);
    assert_eq!(h.store.decisions(None, Some(T0_MS + 30_000), 10).await.unwrap(), later);
    assert_eq!(h.store.task_decisions("t2").await.unwrap().len(), 2);
    // A task keeps its newest decisions.
    let many: Vec<DecisionRecord> = (0..(DECISIONS_PER_TASK as u32 + 5)).map(|n| decision("busy", n)).collect();
    h.store.append_decisions(many, 10_000, hour).await.unwrap();
    let busy = h.store.task_decisions("busy").await.unwrap();
    assert_eq!(busy.len(), DECISIONS_PER_TASK);
    assert_eq!(busy[0].fuel, 5, "the oldest five went");
    // Retention removes what was appended before the cut.
    h.store.trim_decisions(T0_MS + 30_000, 100_000).await.unwrap();
    let kept = h.store.decisions(None, None, 1_000).await.unwrap();
    assert_eq!(kept.len(), 1 + DECISIONS_PER_TASK + 5, "the first three went");
    assert_eq!(kept[0], later[0]);
}

pub(super) async fn violations_get_fleet_ids_events_and_are_listed_newest_first(h: Harness) {
    use aragora_cp::model::EventKind;
    use aragora_cp::model::NewViolation;
    let task = TaskId::generate();
    let deny = NewViolation {
        policy: "payload_size_policy".into(),
        stage: "submit",
        decision: "deny",
        reason: "too big".into(),
        task_id: Some(task.to_string()),
        agent_id: None,
    };
    let warn = NewViolation {
        stage: "register",
        decision: "warn",
        task_id: None,
        agent_id: Some("a-1".into()),
        ..deny.clone()
    };
    let mut rx = h.store.subscribe();
    let recorded = h.store.record_violations(vec![deny, warn]).await.expect("record");
    assert_eq!(recorded.len(), 2);
    assert_ne!(recorded[0].id, recorded[1].id);
    assert!(recorded.iter().all(|v| v.id.starts_with("viol_") && !v.time.is_empty()));
    let events = received(&mut rx);
    assert_eq!(
        events.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [EventKind::PolicyViolation, EventKind::PolicyViolation]
    );
    assert_eq!(events[0].task_id.as_deref(), Some(task.as_str()));
    assert_eq!(events[1].agent_id.as_deref(), Some("a-1"));
    assert_eq!(events[0].data["violation_id"], recorded[0].id.as_str());
    let newest = h.store.violations(1).await.expect("list");
    assert_eq!(newest, [recorded[1].clone()]);
    let all = h.store.violations(10).await.expect("list");
    assert_eq!(all, [recorded[1].clone(), recorded[0].clone()]);
    assert_eq!((all[1].stage.as_str(), all[1].task_id.as_deref()), ("submit", Some(task.as_str())));
}

pub(super) async fn a_reviewer_changes_a_violations_status_and_note_in_place(h: Harness) {
    use aragora_cp::model::{NewViolation, ViolationStatus, ViolationUpdate};
    let new = |reason: &str| NewViolation {
        policy: "region_policy".into(),
        stage: "dispatch",
        decision: "deny",
        reason: reason.into(),
        task_id: None,
        agent_id: Some("a-1".into()),
    };
    let recorded = h.store.record_violations(vec![new("first"), new("second")]).await.expect("record");
    assert!(recorded.iter().all(|v| v.status == ViolationStatus::Open && v.updated_at.is_none()), "{recorded:?}");
    let update = ViolationUpdate {
        status: ViolationStatus::Resolved,
        note: Some("the region list was out of date".into()),
        by: "ops@example".into(),
    };
    let updated = h.store.update_violation(&recorded[0].id, update).await.expect("update").expect("found");
    assert_eq!(
        (updated.status, updated.note.as_deref(), updated.updated_by.as_deref()),
        (ViolationStatus::Resolved, Some("the region list was out of date"), Some("ops@example"))
    );
    assert!(updated.updated_at.is_some());
    assert_eq!(
        (updated.id.as_str(), updated.reason.as_str(), updated.time.as_str()),
        (recorded[0].id.as_str(), "first", recorded[0].time.as_str()),
        "the record itself is unchanged"
    );
    let all = h.store.violations(10).await.expect("list");
    assert_eq!(all, [recorded[1].clone(), updated.clone()], "changed in place, the order kept");
    // Reopened without a note: the note goes.
    let reopen = ViolationUpdate { status: ViolationStatus::Open, note: None, by: "ops@example".into() };
    let reopened = h.store.update_violation(&recorded[0].id, reopen).await.expect("update").expect("found");
    assert_eq!((reopened.status, reopened.note), (ViolationStatus::Open, None));
    let missing = ViolationUpdate { status: ViolationStatus::Resolved, note: None, by: "x".into() };
    assert_eq!(h.store.update_violation("viol_999999", missing).await.expect("update"), None);
}

pub(super) async fn schedules_are_kept_listed_due_and_advanced_by_compare_and_set(h: Harness) {
    let record = |id: &str, next: Option<u64>| ScheduleRecord {
        id: id.to_string(),
        definition: format!("{{\"of\": \"{id}\"}}"),
        next_run_ms: next,
        last_run_ms: None,
        last_task_id: None,
        last_error: None,
        runs: 0,
        skipped: 0,
    };
    let now = h.store.now_ms();
    h.store.put_schedule(record("sched_b", Some(now + 5_000)), true).await.expect("put");
    h.store.put_schedule(record("sched_a", Some(now + 1_000)), true).await.expect("put");
    h.store.put_schedule(record("sched_paused", None), true).await.expect("put");
    let ids = |records: Vec<ScheduleRecord>| records.into_iter().map(|r| r.id).collect::<Vec<_>>();
    let store = &h.store;
    let due = |limit| async move {
        let Due { items, next_in_ms } = store.due_schedules(limit).await.expect("due");
        (ids(items), next_in_ms)
    };
    assert_eq!(ids(h.store.schedules().await.expect("list")), ["sched_a", "sched_b", "sched_paused"]);
    assert_eq!(due(10).await, (vec![], Some(1_000)), "nothing due; the next tick in a second");
    h.advance(6_000).await;
    assert_eq!(due(10).await, (vec!["sched_a".into(), "sched_b".into()], None), "most overdue first");
    assert_eq!(due(1).await, (vec!["sched_a".into()], Some(0)), "one more is due already");
    h.store.put_schedule(record("sched_c", Some(now + 60_000)), true).await.expect("put");
    assert_eq!(due(2).await, (vec!["sched_a".into(), "sched_b".into()], Some(54_000)), "every due one, then a later");
    assert!(h.store.delete_schedule("sched_c").await.expect("delete"));

    // Two servers fire sched_a's tick: the first compare-and-set moves it, the second finds it moved.
    let fired = ScheduleAdvance {
        id: "sched_a".into(),
        from_ms: now + 1_000,
        next_ms: Some(now + 11_000),
        fired: Some((now + 1_000, Some("task_1".into()))),
        runs: 1,
        skipped: 2,
        error: None,
    };
    assert!(h.store.advance_schedule(fired.clone()).await.expect("advance"));
    assert!(!h.store.advance_schedule(fired).await.expect("advance again"), "already moved");
    let a = h.store.schedule("sched_a").await.expect("read").expect("exists");
    assert_eq!(
        (a.next_run_ms, a.last_run_ms, a.last_task_id.as_deref(), a.runs, a.skipped),
        (Some(now + 11_000), Some(now + 1_000), Some("task_1"), 1, 2)
    );
    // A refused tick records why; the next success clears it.
    let refused = ScheduleAdvance {
        id: "sched_a".into(),
        from_ms: now + 11_000,
        next_ms: Some(now + 21_000),
        fired: Some((now + 11_000, None)),
        runs: 0,
        skipped: 1,
        error: Some("policy said no".into()),
    };
    assert!(h.store.advance_schedule(refused).await.expect("advance"));
    let a = h.store.schedule("sched_a").await.expect("read").expect("exists");
    assert_eq!((a.last_task_id, a.last_error.as_deref(), a.skipped), (None, Some("policy said no"), 3));

    // A new definition keeps the firing record, and the next tick unless asked to replace it.
    let changed = ScheduleRecord { definition: "{\"of\": \"changed\"}".into(), ..record("sched_a", Some(1)) };
    let kept = h.store.put_schedule(changed.clone(), false).await.expect("put");
    assert_eq!(
        (kept.definition.as_str(), kept.next_run_ms, kept.runs),
        ("{\"of\": \"changed\"}", Some(now + 21_000), 1)
    );
    let paused = h.store.put_schedule(ScheduleRecord { next_run_ms: None, ..changed }, true).await.expect("put");
    assert_eq!(paused.next_run_ms, None);
    assert_eq!(due(10).await, (vec!["sched_b".into()], None), "a paused schedule is never due");

    assert!(h.store.delete_schedule("sched_b").await.expect("delete"));
    assert!(!h.store.delete_schedule("sched_b").await.expect("delete again"));
    assert_eq!(h.store.schedule("sched_b").await.expect("read"), None);
    assert_eq!(due(10).await, (vec![], None));
    let missing = ScheduleAdvance {
        id: "sched_b".into(),
        from_ms: now + 5_000,
        next_ms: None,
        fired: None,
        runs: 0,
        skipped: 0,
        error: None,
    };
    assert!(!h.store.advance_schedule(missing).await.expect("advance"), "a deleted schedule does not come back");
    assert_eq!(h.store.schedule("sched_b").await.expect("read"), None);
}

pub(super) async fn audit_entries_append_by_compare_and_set_and_retention_leaves_a_signed_checkpoint(h: Harness) {
    use aragora_cp::coordinator::audit::{trim_expired, verify};
    let entry = |actor: &str| NewAuditEntry {
        time_ms: h.store.now_ms(),
        actor: actor.into(),
        action: "POST /tasks".into(),
        resource: String::new(),
        request_id: "r".into(),
        outcome: "success".into(),
        details: AuditDetails { code: None, status: 201 },
    };
    let chain = |from: &AuditHead, new: Vec<NewAuditEntry>| AuditEntry::chain_after(from, new).0;
    let genesis = h.store.audit_head().await.expect("head");
    assert_eq!(genesis, AuditHead { seq: 0, hash: GENESIS_HASH.into() });
    let first = chain(&genesis, vec![entry("a"), entry("b"), entry("c")]);
    assert_eq!(h.store.append_audit(0, first.clone()).await.expect("append"), None);
    let moved = h.store.append_audit(0, first.clone()).await.expect("append again");
    let head = AuditHead { seq: 3, hash: first[2].hash.clone() };
    assert_eq!(moved, Some(head.clone()), "the end moved: refused, with where it ends now");
    h.advance(7_200_000).await;
    assert_eq!(h.store.audit_head().await.expect("head"), head);
    let second = chain(&head, vec![entry("d"), entry("e")]);
    assert_eq!(h.store.append_audit(3, second.clone()).await.expect("append"), None);
    let seqs = |entries: Vec<AuditEntry>| entries.into_iter().map(|e| e.seq).collect::<Vec<_>>();
    assert_eq!(seqs(h.store.audit_entries(1, 5).await.expect("read")), [1, 2, 3, 4, 5]);
    assert_eq!(h.store.audit_entries(2, 2).await.expect("read"), [first[1].clone()]);

    // Retention of one hour removes the three old entries; a checkpoint signed with the key takes their place.
    let key = b"audit-key";
    let removed = trim_expired(h.store.as_ref(), Duration::from_secs(3600), key).await.expect("trim");
    assert_eq!(removed, 3);
    assert_eq!(seqs(h.store.audit_entries(1, 5).await.expect("read")), [4, 5]);
    let checkpoint = h.store.audit_checkpoint().await.expect("checkpoint").expect("kept");
    assert_eq!((checkpoint.seq, checkpoint.hash.as_str()), (3, first[2].hash.as_str()));
    assert_eq!(h.store.audit_head().await.expect("head").seq, 5, "the end does not move");
    assert_eq!(trim_expired(h.store.as_ref(), Duration::from_secs(3600), key).await.expect("again"), 0);
    assert!(!h.store.trim_audit(checkpoint.clone()).await.expect("trim"), "already as far");

    let valid = verify(h.store.as_ref(), Some(key)).await.expect("verify");
    assert_eq!((valid.checked, valid.first_break.clone()), (2, None), "{valid:?}");
    for wrong in [Some(&b"another key"[..]), None] {
        let refused = verify(h.store.as_ref(), wrong).await.expect("verify");
        assert_eq!(refused.first_break.map(|b| b.reason), Some("checkpoint_signature".to_string()));
    }
    // The chain goes on from the end, over the checkpoint.
    let third = chain(&h.store.audit_head().await.expect("head"), vec![entry("f")]);
    assert_eq!(h.store.append_audit(5, third).await.expect("append"), None);
    assert_eq!(verify(h.store.as_ref(), Some(key)).await.expect("verify").checked, 3);
}

pub(super) async fn notification_deliveries_are_made_by_compare_and_set_leased_once_and_retried_or_dead_lettered(
    h: Harness,
) {
    use aragora_cp::model::{
        AttemptResult, Channel, ChannelFilter, ChannelKind, Delivery, DeliveryMessage, DeliveryStatus,
    };
    let channel = |id: &str| Channel {
        id: id.to_string(),
        name: id.to_string(),
        kind: ChannelKind::Webhook,
        url: "https://hooks.example.com/x".into(),
        secret: Some("0123456789abcdef".into()),
        filter: ChannelFilter::default(),
        max_attempts: 2,
        backoff_ms: 100,
        enabled: true,
        created_at: "2026-01-01T00:00:00.000Z".into(),
    };
    // Events before the first channel are not its business: the cursor starts at the newest event.
    h.register("before", &["x"]).await;
    let newest =
        h.store.events_after(None, 10_000).await.expect("log").expect("kept").last().expect("an event").id.clone();
    h.store.put_channel(&channel("chn_a")).await.expect("put");
    h.store.put_channel(&channel("chn_b")).await.expect("put");
    assert_eq!(h.store.notification_cursor().await.expect("cursor").as_deref(), Some(newest.as_str()));
    let ids: Vec<String> = h.store.channels().await.expect("list").into_iter().map(|c| c.id).collect();
    assert_eq!(ids, ["chn_a", "chn_b"]);

    // Two servers race to turn the same stretch of the log into deliveries: one wins, the other adds nothing.
    h.register("after", &["x"]).await;
    let events = h.store.events_after(Some(&newest), 100).await.expect("log").expect("kept");
    let to = events.last().expect("the registration").id.clone();
    let message = DeliveryMessage { event: events[0].clone(), task: None };
    let made = vec![Delivery::new(&events[0].id, "chn_a", &message), Delivery::new(&events[0].id, "chn_b", &message)];
    assert!(h.store.enqueue_deliveries(Some(&newest), &to, made.clone()).await.expect("enqueue"));
    assert!(!h.store.enqueue_deliveries(Some(&newest), &to, made).await.expect("enqueue again"), "the cursor moved");
    assert_eq!(h.store.deliveries(None, 10).await.expect("list").len(), 2);

    // Each delivery is leased to one claimant; a lease that runs out lets another take it, and the first one's
    // late answer is refused. Every claim also tells when the next delivery left comes due (a lease's end counts).
    let claim = || async { h.store.claim_deliveries(10, 1_000).await.expect("claim") };
    let Due { items: first, next_in_ms } = claim().await;
    assert_eq!((first.len(), next_in_ms), (2, Some(1_000)));
    assert!(first.iter().all(|d| d.status == DeliveryStatus::Sending && d.attempts == 1));
    h.advance(400).await;
    let leased = claim().await;
    assert!(leased.items.is_empty(), "both are leased");
    assert_eq!(leased.next_in_ms, Some(600), "the leases end in 600 ms");
    h.advance(601).await;
    let again = claim().await.items;
    assert_eq!(again.len(), 2, "the leases ran out");
    let (a, b) = if again[0].channel_id == "chn_a" { (&again[0], &again[1]) } else { (&again[1], &again[0]) };
    assert_eq!(a.attempts, 2);
    assert!(!h.store.finish_delivery(&a.id, 1, AttemptResult::Sent { status: 200 }).await.expect("late"));
    assert!(h.store.finish_delivery(&a.id, 2, AttemptResult::Sent { status: 204 }).await.expect("finish"));
    let failed = |retry_in_ms| AttemptResult::Failed { error: "HTTP 500".into(), status: Some(500), retry_in_ms };
    assert!(h.store.finish_delivery(&b.id, 2, failed(Some(500))).await.expect("retry later"));
    let pending = h.store.delivery(&b.id).await.expect("read").expect("exists");
    assert_eq!((pending.status, pending.last_status), (DeliveryStatus::Pending, Some(500)));
    assert_eq!(claim().await, Due { items: vec![], next_in_ms: Some(500) }, "not due yet");
    h.advance(500).await;
    let Due { items: third, next_in_ms } = claim().await;
    assert_eq!((third.len(), third[0].attempts, next_in_ms), (1, 3, Some(1_000)));
    assert!(h.store.finish_delivery(&b.id, 3, failed(None)).await.expect("dead"));
    let dead = h.store.deliveries(Some(DeliveryStatus::Dead), 10).await.expect("dead letters");
    assert_eq!(dead.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), [b.id.as_str()]);
    assert_eq!(dead[0].last_error.as_deref(), Some("HTTP 500"));
    let sent = h.store.deliveries(Some(DeliveryStatus::Sent), 10).await.expect("sent");
    assert_eq!((sent.len(), sent[0].last_status, sent[0].delivered_ms.is_some()), (1, Some(204), true));

    // A dead letter goes back to pending, due now, with a fresh round of attempts; the attempt number goes on, so a
    // stale report of an earlier attempt is still refused. Anything else is not retried.
    assert!(matches!(h.store.retry_delivery(&a.id).await, Err(StoreError::Conflict { code: "not_a_dead_letter", .. })));
    assert_eq!(h.store.retry_delivery("1-0:chn_nope").await.expect("missing"), None);
    let retried = h.store.retry_delivery(&b.id).await.expect("retry").expect("exists");
    assert_eq!((retried.status, retried.attempts, retried.attempts_this_round()), (DeliveryStatus::Pending, 3, 0));
    let fourth = claim().await.items;
    assert_eq!((fourth[0].attempts, fourth[0].attempts_this_round()), (4, 1));
    assert!(!h.store.finish_delivery(&b.id, 3, AttemptResult::Sent { status: 200 }).await.expect("stale"));

    h.store.put_channel(&channel("chn_c")).await.expect("put");
    let figures = h.store.notification_figures().await.expect("figures");
    let b_figures = &figures["chn_b"];
    assert_eq!((b_figures.enqueued, b_figures.sent, b_figures.failed, b_figures.dead), (1, 0, 2, 1));
    assert_eq!((figures["chn_a"].sent, figures["chn_a"].failed), (1, 0));
    assert_eq!(figures["chn_c"], Default::default(), "a channel without deliveries has zero counters");
    // A deleted channel's counters go, and its last delivery's end does not bring them back.
    assert!(h.store.delete_channel("chn_b").await.expect("delete"));
    assert!(!h.store.delete_channel("chn_b").await.expect("delete again"));
    assert!(h.store.finish_delivery(&b.id, 4, failed(None)).await.expect("dead again"));
    let figures = h.store.notification_figures().await.expect("figures");
    assert_eq!(figures.keys().collect::<Vec<_>>(), ["chn_a", "chn_c"]);
    assert_eq!(claim().await, Due::default(), "nothing is queued, so nothing comes due");
}
