//! Exactly once under concurrency: racing claims, events in log order while transitions race the clock.

use super::*;

pub(super) async fn each_of_1000_tasks_is_claimed_exactly_once_by_8_racing_agents(h: Harness) {
    const TASKS: usize = 1_000;
    const AGENTS: usize = 8;
    let mut submitted = HashSet::new();
    for i in 0..TASKS {
        let required: &[&str] = if i % 2 == 0 { &[] } else { &["code"] };
        submitted.insert(h.submit(request_for("race", Priority::ALL[i % 4], required)).await);
    }
    for a in 0..AGENTS {
        h.register(&format!("racer-{a}"), &["code"]).await;
    }
    let claimers: Vec<_> = (0..AGENTS)
        .map(|a| {
            let h = h.clone();
            tokio::spawn(async move {
                let agent = format!("racer-{a}");
                let mut mine = Vec::new();
                loop {
                    // Batches of 1 to 3: batch claims race too.
                    let granted = h.claim_with(&agent, caps(&["code"]), 1 + a % 3).await;
                    if granted.is_empty() {
                        // No requeues happen here, so an empty claim means the backlog is gone.
                        return mine;
                    }
                    for task in granted {
                        assert_eq!(task.assigned_agent.as_deref(), Some(agent.as_str()));
                        assert_eq!(task.status, TaskStatus::Claimed);
                        h.complete(&task, json!({"by": agent})).await;
                        mine.push(task.task_id);
                    }
                }
            })
        })
        .collect();
    let mut claimed_by: HashMap<TaskId, String> = HashMap::new();
    let mut total = 0;
    for (a, claimer) in claimers.into_iter().enumerate() {
        for task_id in claimer.await.expect("claimer finished") {
            total += 1;
            if let Some(first) = claimed_by.insert(task_id.clone(), format!("racer-{a}")) {
                panic!("task {task_id} was claimed by {first} and by racer-{a}");
            }
        }
    }
    assert_eq!(total, TASKS, "claims handed out");
    assert_eq!(claimed_by.keys().cloned().collect::<HashSet<_>>(), submitted, "every task claimed, none lost");
    for (task_id, agent) in &claimed_by {
        let task = h.task(task_id).await;
        assert_eq!(task.status, TaskStatus::Completed, "{task_id}");
        assert_eq!(task.attempt, 1, "{task_id} was granted once");
        assert_eq!(task.result, Some(json!({"by": agent}).into()));
        assert_eq!(task.lease_id, None);
    }
    let mut completed_by_agents = 0;
    for a in 0..AGENTS {
        let agent = h.agent(&format!("racer-{a}")).await;
        assert_eq!(agent.in_flight, 0, "{} holds nothing at the end", agent.agent_id);
        assert!(agent.current_task_ids.is_empty());
        completed_by_agents += agent.tasks_completed;
    }
    assert_eq!(completed_by_agents, TASKS as u64);
    let stats = h.stats().await;
    assert_eq!(nonzero(&stats.tasks_by_status), BTreeMap::from([("completed".to_string(), TASKS as u64)]));
    let claims: Vec<_> = all_events(&h).await.into_iter().filter(|e| e.kind == EventKind::TaskClaimed).collect();
    assert_eq!(claims.len(), TASKS, "one task_claimed event per task");
}

pub(super) async fn events_reach_subscribers_in_log_order_with_unique_ids_while_transitions_race_the_clock(h: Harness) {
    const WORKERS: usize = 8;
    const ROUNDS: usize = 60;
    let mut rx = h.store.subscribe();
    for w in 0..WORKERS {
        h.register(&format!("worker-{w}"), &[&format!("lane-{w}")]).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mover = {
        let (h, stop) = (h.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                h.advance(1).await;
                tokio::task::yield_now().await;
            }
        })
    };
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let h = h.clone();
            tokio::spawn(async move {
                let (agent, lane) = (format!("worker-{w}"), format!("lane-{w}"));
                for _ in 0..ROUNDS {
                    h.submit(request_for("lane", Priority::Normal, &[&lane])).await;
                    let task = h.claim(&agent).await.expect("the worker's own lane has its task");
                    h.complete(&task, json!({})).await;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("worker finished");
    }
    stop.store(true, Ordering::SeqCst);
    mover.await.expect("clock mover finished");

    let log = all_events(&h).await;
    let seen = received(&mut rx);
    let ids = |events: &[Event]| events.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
    assert!(log.len() >= WORKERS * ROUNDS * 3, "{} events logged", log.len());
    let unique: HashSet<_> = log.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(unique.len(), log.len(), "event ids are unique");
    for pair in log.windows(2) {
        assert!(
            event_order(&pair[0].id) < event_order(&pair[1].id),
            "event ids increase along the log: {} then {}",
            pair[0].id,
            pair[1].id
        );
    }
    let (seen, log) = (ids(&seen), ids(&log));
    if let Some(at) = (0..seen.len().max(log.len())).find(|&i| seen.get(i) != log.get(i)) {
        let window = |v: &[String]| v[at.saturating_sub(2)..(at + 3).min(v.len())].to_vec();
        panic!(
            "a subscriber sees the events in log order; first difference at {at}: received {:?}, logged {:?}",
            window(&seen),
            window(&log)
        );
    }
}
