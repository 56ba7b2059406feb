//! Idempotent submit: replays, reused keys, scope and lifetime, batches.

use super::*;

pub(super) async fn an_idempotent_submit_replays_the_first_task_and_creates_no_second(h: Harness) {
    let first = h
        .store
        .submit(new_task("alice", keyed("k-1", json!({"n": 1}))), 64)
        .await
        .map(|c| c.submitted)
        .expect("submit");
    assert!(!first.replayed);
    let mut rx = h.store.subscribe();
    let again = h
        .store
        .submit(new_task("alice", keyed("k-1", json!({"n": 1}))), 64)
        .await
        .map(|c| c.submitted)
        .expect("replay");
    assert_eq!((again.task_id.clone(), again.replayed), (first.task_id.clone(), true));
    assert!(received(&mut rx).is_empty(), "a replay emits nothing");
    assert_eq!(h.stats().await.tasks_by_status.get("pending"), Some(&1));
    let page = h.store.list_tasks(&TaskFilter { limit: 100, ..TaskFilter::default() }).await.expect("list");
    assert_eq!(page.tasks.len(), 1, "no second task");
    // Still a replay once the first task has run.
    h.register("worker", &[]).await;
    let task = h.claim("worker").await.expect("claimable");
    h.complete(&task, json!({})).await;
    let later = h
        .store
        .submit(new_task("alice", keyed("k-1", json!({"n": 1}))), 64)
        .await
        .map(|c| c.submitted)
        .expect("replay");
    assert_eq!((later.task_id, later.replayed), (first.task_id.clone(), true));
    assert_eq!(h.status(&first.task_id).await, TaskStatus::Completed);
}

pub(super) async fn an_idempotency_key_reused_with_a_different_body_is_refused(h: Harness) {
    let first = h
        .store
        .submit(new_task("alice", keyed("k-1", json!({"n": 1}))), 64)
        .await
        .map(|c| c.submitted)
        .expect("submit");
    let reused = h.store.submit(new_task("alice", keyed("k-1", json!({"n": 2}))), 64).await.map(|c| c.submitted);
    assert_eq!(conflict_code(reused), "idempotency_key_reused");
    let other_priority = SubmitRequest { priority: Some(Priority::High), ..keyed("k-1", json!({"n": 1})) };
    assert_eq!(
        conflict_code(h.store.submit(new_task("alice", other_priority), 64).await.map(|c| c.submitted)),
        "idempotency_key_reused"
    );
    let page = h.store.list_tasks(&TaskFilter { limit: 100, ..TaskFilter::default() }).await.expect("list");
    assert_eq!(page.tasks.iter().map(|t| t.task_id.clone()).collect::<Vec<_>>(), vec![first.task_id]);
}

pub(super) async fn idempotency_keys_are_scoped_by_submitter(h: Harness) {
    let alice =
        h.store.submit(new_task("alice", keyed("shared", json!({}))), 64).await.map(|c| c.submitted).expect("submit");
    let bob =
        h.store.submit(new_task("bob", keyed("shared", json!({}))), 64).await.map(|c| c.submitted).expect("submit");
    assert!(!bob.replayed);
    assert_ne!(alice.task_id, bob.task_id);
    assert_eq!(h.task(&bob.task_id).await.submitted_by, "bob");
    let bob_other =
        h.store.submit(new_task("bob", keyed("shared", json!({"different": true}))), 64).await.map(|c| c.submitted);
    assert_eq!(conflict_code(bob_other), "idempotency_key_reused");
}

pub(super) async fn an_idempotency_key_is_forgotten_after_its_ttl(h: Harness) {
    let ttl = h.config.idempotency_ttl_ms;
    let first =
        h.store.submit(new_task("alice", keyed("k", json!({}))), 64).await.map(|c| c.submitted).expect("submit");
    h.advance(ttl - 1).await;
    assert!(
        h.store
            .submit(new_task("alice", keyed("k", json!({}))), 64)
            .await
            .map(|c| c.submitted)
            .expect("replay")
            .replayed
    );
    h.advance(1).await;
    let fresh = h
        .store
        .submit(new_task("alice", keyed("k", json!({"other": 1}))), 64)
        .await
        .map(|c| c.submitted)
        .expect("submit");
    assert!(!fresh.replayed);
    assert_ne!(fresh.task_id, first.task_id);
}

pub(super) async fn a_batch_submit_is_all_or_nothing(h: Harness) {
    h.store.submit(new_task("alice", keyed("taken", json!({"n": 1}))), 64).await.map(|c| c.submitted).expect("submit");
    let batch = vec![
        new_task("alice", request("batch")),
        new_task("alice", keyed("taken", json!({"n": 2}))),
        new_task("alice", request("batch")),
    ];
    let ids: Vec<TaskId> = batch.iter().map(|t| t.task_id.clone()).collect();
    assert_eq!(
        conflict_code(
            h.store.submit_batch(batch, 64).await.map(|c| c.into_iter().map(|c| c.submitted).collect::<Vec<_>>())
        ),
        "idempotency_key_reused"
    );
    for id in &ids {
        assert!(h.store.get_task(id).await.expect("get").is_none(), "nothing of a refused batch exists");
    }
    let batch = vec![
        new_task("alice", request("batch")),
        new_task("alice", keyed("taken", json!({"n": 1}))),
        new_task("alice", request_for("batch", Priority::High, &["code"])),
    ];
    let submitted = h
        .store
        .submit_batch(batch, 64)
        .await
        .map(|c| c.into_iter().map(|c| c.submitted).collect::<Vec<_>>())
        .expect("batch");
    assert_eq!(submitted.iter().map(|s| s.replayed).collect::<Vec<_>>(), vec![false, true, false]);
    assert_eq!(h.stats().await.tasks_by_status.get("pending"), Some(&3));
    h.register("worker", &["code"]).await;
    assert_eq!(h.claim("worker").await.map(|t| t.task_id), Some(submitted[2].task_id.clone()));
}

pub(super) async fn a_key_repeated_within_one_batch_is_a_replay_or_a_conflict(h: Harness) {
    let batch = vec![
        new_task("alice", keyed("twice", json!({"n": 1}))),
        new_task("alice", keyed("twice", json!({"n": 1}))),
        new_task("bob", keyed("twice", json!({"n": 1}))),
    ];
    let submitted = h
        .store
        .submit_batch(batch, 64)
        .await
        .map(|c| c.into_iter().map(|c| c.submitted).collect::<Vec<_>>())
        .expect("batch");
    assert_eq!(submitted.iter().map(|s| s.replayed).collect::<Vec<_>>(), vec![false, true, false]);
    assert_eq!(submitted[1].task_id, submitted[0].task_id, "the repeat answers the first task of the batch");
    assert_ne!(submitted[2].task_id, submitted[0].task_id, "another submitter's key is another key");
    assert_eq!(h.stats().await.tasks_by_status.get("pending"), Some(&2), "no second task for the repeated key");
    let replay = h
        .store
        .submit(new_task("alice", keyed("twice", json!({"n": 1}))), 64)
        .await
        .map(|c| c.submitted)
        .expect("replay");
    assert_eq!((replay.task_id, replay.replayed), (submitted[0].task_id.clone(), true));

    let conflicting =
        vec![new_task("alice", keyed("clash", json!({"n": 1}))), new_task("alice", keyed("clash", json!({"n": 2})))];
    let first = conflicting[0].task_id.clone();
    assert_eq!(
        conflict_code(
            h.store.submit_batch(conflicting, 64).await.map(|c| c.into_iter().map(|c| c.submitted).collect::<Vec<_>>())
        ),
        "idempotency_key_reused"
    );
    assert!(h.store.get_task(&first).await.expect("get").is_none(), "all or nothing");
}
