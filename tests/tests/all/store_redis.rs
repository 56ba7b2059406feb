//! What only the Redis store has to show, beyond the conformance suite: it answers `Unavailable` (never panics) when
//! Redis goes away, several stores on one prefix (several servers) share state, events and clock, every key of a
//! deployment carries the one hash tag, and the start-up probes (`ping`, `maxmemory_policy`, `describe`) work on a
//! server and on a cluster.

use std::time::Duration;

use aragora_cp::model::StoreError;
use aragora_cp::model::{AgentRegistration, EventKind, Priority};
use aragora_cp::store::{ClaimRequest, RedisStore, Store, StoreConfig, Waiter};
use aragora_cp_tests::redis_server::{RedisServer, shared_cluster, shared_server, unique_prefix};
use aragora_cp_tests::store_harness::{T0_MS, caps, new_task, registration, request, request_for, test_config};

#[tokio::test]
async fn a_store_whose_redis_went_away_answers_unavailable() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url(), &unique_prefix("gone"), test_config()).await.expect("connect");
    store.register(registration("a", &[])).await.expect("register while Redis is up");
    drop(server);
    let submit = store.submit(new_task("tester", request("t")), 64).await.map(|c| c.submitted);
    assert!(matches!(submit, Err(StoreError::Unavailable(_))), "{submit:?}");
    let claim = ClaimRequest { agent_id: "a".into(), capabilities: Some(caps(&[])), max_tasks: 1, session_id: None };
    assert!(matches!(store.claim(&claim).await, Err(StoreError::Unavailable(_))));
    assert!(matches!(store.stats().await, Err(StoreError::Unavailable(_))));
    assert!(matches!(store.ping().await, Err(StoreError::Unavailable(_))));
}

#[tokio::test]
async fn stores_on_one_prefix_share_tasks_events_and_the_clock() {
    let prefix = unique_prefix("shared");
    let url = shared_server().url();
    let one = RedisStore::connect(&url, &prefix, test_config()).await.expect("connect");
    let two = RedisStore::connect(&url, &prefix, test_config()).await.expect("connect");
    one.pin_test_clock(T0_MS).await.expect("pin");
    let mut events = two.subscribe();
    let submitted = one.submit(new_task("tester", request("shared")), 64).await.expect("submit").submitted;
    let event = tokio::time::timeout(Duration::from_secs(5), events.recv()).await.expect("in time").expect("event");
    let event = event.to_event();
    assert_eq!((event.kind, event.task_id.as_deref()), (EventKind::TaskSubmitted, Some(submitted.task_id.as_str())));
    two.register(registration("b", &[])).await.expect("register");
    assert_eq!(two.now_ms(), T0_MS, "the test clock lives in Redis, shared by every store of the prefix");
    let claim = ClaimRequest { agent_id: "b".into(), capabilities: Some(caps(&[])), max_tasks: 1, session_id: None };
    let granted = two.claim(&claim).await.expect("claim");
    assert_eq!(granted.iter().map(|t| t.task_id.clone()).collect::<Vec<_>>(), vec![submitted.task_id.clone()]);
    assert!(one.claim(&claim).await.expect("claim").is_empty(), "claimed exactly once across stores");
}

/// A server writing events in the form older builds read (`REDIS_EVENT_FORMAT=fields`, a rolling upgrade) and one
/// writing the compact form share a prefix: each reads the other's events, live and in a replay, as the same events.
#[tokio::test]
async fn stores_writing_either_form_of_event_read_each_others_events() {
    let prefix = unique_prefix("forms");
    let url = shared_server().url();
    let fields =
        RedisStore::connect(&url, &prefix, StoreConfig { event_fields: true, ..test_config() }).await.expect("connect");
    let compact = RedisStore::connect(&url, &prefix, test_config()).await.expect("connect");
    assert!(fields.describe().contains("REDIS_EVENT_FORMAT=fields"), "{}", fields.describe());
    assert!(!compact.describe().contains("REDIS_EVENT_FORMAT"), "{}", compact.describe());
    let (mut to_fields, mut to_compact) = (fields.subscribe(), compact.subscribe());
    let first = fields.submit(new_task("tester", request("by-fields")), 64).await.expect("submit").submitted.task_id;
    let second = compact.submit(new_task("tester", request("by-compact")), 64).await.expect("submit").submitted.task_id;

    let mut seen = Vec::new();
    for events in [&mut to_fields, &mut to_compact] {
        let mut read = Vec::new();
        for _ in 0..2 {
            let event = tokio::time::timeout(Duration::from_secs(5), events.recv()).await.expect("in time");
            read.push(event.expect("event").to_event());
        }
        seen.push(read);
    }
    assert_eq!(seen[0], seen[1], "both read the same events");
    let tasks: Vec<Option<&str>> = seen[0].iter().map(|e| e.task_id.as_deref()).collect();
    assert_eq!(tasks, [Some(first.as_str()), Some(second.as_str())]);
    let kinds: Vec<(EventKind, &serde_json::Value)> = seen[0].iter().map(|e| (e.kind, &e.data["task_type"])).collect();
    assert_eq!(
        kinds,
        [(EventKind::TaskSubmitted, &"by-fields".into()), (EventKind::TaskSubmitted, &"by-compact".into())]
    );
    for store in [&fields, &compact] {
        let replayed = store.events_after(None, 10).await.expect("read").expect("kept");
        assert_eq!(replayed, seen[0], "a replay reads both forms too");
    }

    // The two entries are in the two forms.
    let mut redis = redis::Client::open(url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(format!("{prefix}{{main}}:events"))
        .arg("-")
        .arg("+")
        .query_async(&mut redis)
        .await
        .unwrap();
    let names: Vec<Vec<&str>> =
        entries.iter().map(|(_, fields)| fields.iter().step_by(2).map(String::as_str).collect()).collect();
    assert_eq!(names, [vec!["n", "type", "time", "server", "task", "agent", "data"], vec!["e"]]);

    // The server's id is a part of every compact event: the separator in it would shift the parts after it.
    let refused = RedisStore::connect(&url, &prefix, StoreConfig { server_id: "a|b".into(), ..test_config() }).await;
    assert!(
        matches!(&refused, Err(StoreError::Unavailable(m)) if m.contains("may not contain '|'")),
        "{:?}",
        refused.err()
    );
}

#[tokio::test]
async fn every_key_of_a_deployment_carries_the_one_hash_tag() {
    let prefix = unique_prefix("layout");
    let server = shared_server();
    let store = RedisStore::connect(&server.url(), &prefix, test_config()).await.expect("connect");
    store.register(registration("a", &["code"])).await.expect("register");
    store.submit(new_task("tester", request("t")), 64).await.map(|c| c.submitted).expect("submit");
    let claim =
        ClaimRequest { agent_id: "a".into(), capabilities: Some(caps(&["code"])), max_tasks: 1, session_id: None };
    store.claim(&claim).await.expect("claim");
    let client = redis::Client::open(server.url()).expect("client");
    let mut connection = client.get_multiplexed_async_connection().await.expect("connect");
    let keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut connection).await.expect("KEYS (test only)");
    assert!(keys.len() >= 10, "{keys:?}");
    let tagged = format!("{prefix}{{main}}:");
    for key in &keys {
        assert!(key.starts_with(&tagged), "{key} lies outside the hash tag");
    }
}

#[tokio::test]
async fn ping_describe_and_maxmemory_policy_work_on_a_server_and_a_cluster() {
    let server = shared_server();
    let store = RedisStore::connect(&server.url(), "probe:", test_config()).await.expect("connect");
    store.ping().await.expect("ping");
    let described = store.describe();
    assert!(described.starts_with(&format!("redis at 127.0.0.1:{}, prefix probe:, ", server.port)), "{described}");
    assert_eq!(store.maxmemory_policy().await.expect("policy"), "noeviction");

    let cluster = shared_cluster();
    let url = format!(
        "redis+cluster://{}",
        cluster.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect::<Vec<_>>().join(",")
    );
    let store = RedisStore::connect(&url, "probe:", test_config()).await.expect("connect to the cluster");
    store.ping().await.expect("ping");
    assert!(store.describe().starts_with("redis cluster at "), "{}", store.describe());
    assert_eq!(store.maxmemory_policy().await.expect("policy"), "noeviction");
}

#[tokio::test]
async fn with_appendfsync_always_an_acknowledged_submit_survives_a_redis_restart() {
    let mut server = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let store = RedisStore::connect(&server.url(), &unique_prefix("durable"), test_config()).await.expect("connect");
    store.register(registration("a", &[])).await.expect("register");
    let submitted =
        store.submit(new_task("tester", request("durable")), 64).await.map(|c| c.submitted).expect("acknowledged");
    server.restart();
    // The first calls may meet the broken connection (503, outcome unknown) while the store reconnects.
    let mut task = None;
    for _ in 0..50 {
        match store.get_task(&submitted.task_id).await {
            Ok(found) => {
                task = found;
                break;
            }
            Err(StoreError::Unavailable(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!(task.map(|t| t.task_id), Some(submitted.task_id.clone()), "the acknowledged task survived");
    // Scripts are loaded again by SHA on first use, and the event reader follows the stream again.
    let mut events = store.subscribe();
    let claim = ClaimRequest { agent_id: "a".into(), capabilities: Some(caps(&[])), max_tasks: 1, session_id: None };
    let granted = store.claim(&claim).await.expect("claim after the restart");
    assert_eq!(granted.into_iter().map(|t| t.task_id).collect::<Vec<_>>(), vec![submitted.task_id.clone()]);
    let claimed = loop {
        let event =
            tokio::time::timeout(Duration::from_secs(10), events.recv()).await.expect("in time").expect("event");
        let event = event.to_event();
        if event.kind == EventKind::TaskClaimed {
            break event;
        }
    };
    assert_eq!(claimed.task_id.as_deref(), Some(submitted.task_id.as_str()));
}

/// `REDIS_WAIT_REPLICAS`: a write is acknowledged once a replica holds it; with the replica gone, the write is
/// answered as unavailable (its outcome unknown) rather than as done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_wait_for_replicas_and_say_so_when_none_confirms() {
    let primary = RedisServer::start();
    let replica_of = primary.port.to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &replica_of]);
    let linked = aragora_cp_tests::wait_until(Duration::from_secs(10), || {
        primary.command("INFO replication").is_ok_and(|info| info.contains("connected_slaves:1"))
            && replica.command("INFO replication").is_ok_and(|info| info.contains("master_link_status:up"))
    });
    assert!(linked.is_some(), "the replica never synchronised");
    let config = StoreConfig { wait_replicas: 1, ..test_config() };
    let prefix = unique_prefix("replicas");
    let store = RedisStore::connect(&primary.url(), &prefix, config).await.expect("connect");
    let submitted = store
        .submit(new_task("alice", request("replicated")), 64)
        .await
        .map(|c| c.submitted)
        .expect("a replica confirms the write");
    let key = format!("{prefix}{{main}}:task:{}", submitted.task_id);
    assert!(replica.command(&format!("EXISTS {key}")).unwrap().contains(":1"), "the replica holds the task");

    drop(replica);
    let refused = store.submit(new_task("alice", request("unconfirmed")), 64).await.map(|c| c.submitted);
    match refused {
        Err(StoreError::Unavailable(message)) => assert!(message.contains("REDIS_WAIT_REPLICAS"), "{message}"),
        other => panic!("expected an unconfirmed write to be unavailable, got {other:?}"),
    }
}

/// On a standalone Redis 7 the scripts are one function library, loaded at connect; a Redis that lost it (a restart
/// without persistence, a failover to a replica that never had it) gets it back on the first call that misses it,
/// and the call succeeds. A cluster keeps EVALSHA.
#[tokio::test]
async fn the_function_library_is_loaded_at_connect_and_again_when_redis_lost_it() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url(), &unique_prefix("functions"), test_config()).await.expect("connect");
    assert!(store.describe().contains("function library aragora_cp_"), "{}", store.describe());
    let client = redis::Client::open(server.url()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let libraries = |redis: &mut redis::aio::MultiplexedConnection| {
        let mut redis = redis.clone();
        async move {
            let listed: redis::Value = redis::cmd("FUNCTION").arg("LIST").query_async(&mut redis).await.unwrap();
            format!("{listed:?}").matches("aragora_cp_").count()
        }
    };
    assert!(libraries(&mut redis).await > 0, "the library is in Redis");
    let _: () = redis::cmd("FUNCTION").arg("FLUSH").query_async(&mut redis).await.unwrap();
    assert_eq!(libraries(&mut redis).await, 0);
    let submitted = store.submit(new_task("tester", request("after-flush")), 64).await.expect("a call after the loss");
    assert!(store.get_task(&submitted.submitted.task_id).await.expect("read").is_some());
    assert!(libraries(&mut redis).await > 0, "loaded again");

    let nodes: Vec<String> = shared_cluster().nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
    let url = format!("redis+cluster://{}", nodes.join(","));
    let cluster = RedisStore::connect(&url, &unique_prefix("functions"), test_config()).await.expect("connect");
    assert!(cluster.describe().contains("EVALSHA"), "{}", cluster.describe());
}

/// A replay page passes over an entry this build cannot decode (a newer server's event type, in a rolling upgrade)
/// and is still full: callers take a short page for the end of the stream. The page used to fail whole, and every
/// client resuming from before the entry failed with it until the cap trimmed it.
#[tokio::test]
async fn a_replay_page_passes_over_an_entry_it_cannot_decode_and_is_still_full() {
    let prefix = unique_prefix("unreadable");
    let store = RedisStore::connect(&shared_server().url(), &prefix, test_config()).await.expect("connect");
    let submit = |name: &'static str| {
        let store = &store;
        async move { store.submit(new_task("tester", request(name)), 64).await.expect("submit").submitted.task_id }
    };
    let tasks = [submit("t0").await, submit("t1").await];
    let mut redis =
        redis::Client::open(shared_server().url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let n: u64 = redis::cmd("INCR").arg(format!("{prefix}{{main}}:event-count")).query_async(&mut redis).await.unwrap();
    let _: String = redis::cmd("XADD")
        .arg(format!("{prefix}{{main}}:events"))
        .arg("*")
        .arg("n")
        .arg(n)
        .arg("type")
        .arg("task_teleported")
        .query_async(&mut redis)
        .await
        .unwrap();
    let later = [submit("t2").await, submit("t3").await];

    let all = store.events_after(None, 10).await.expect("read").expect("kept");
    let first = all.iter().find(|e| e.task_id.as_deref() == Some(tasks[0].as_str())).expect("t0's event").id.clone();
    let page = store.events_after(Some(&first), 2).await.expect("a page, not an error").expect("kept");
    let ids: Vec<Option<&str>> = page.iter().map(|e| e.task_id.as_deref()).collect();
    assert_eq!(ids, [Some(tasks[1].as_str()), Some(later[0].as_str())], "{page:?}");
}

/// An offer reads the rule's answer kept at the end of an agent's numbers (its gate: `R` ready with one slot, `A`
/// allowed otherwise, `-` refused), and judges numbers without one (written by a build before the gate, in a rolling
/// upgrade) by the rule's own fields: the same claims are offered either way, with the same tasks in flight.
#[tokio::test]
async fn an_offer_judges_numbers_without_a_gate_by_the_rules_fields() {
    let prefix = unique_prefix("gate");
    let store = RedisStore::connect(&shared_server().url(), &prefix, test_config()).await.expect("connect");
    store.register(registration("ready", &["code"])).await.expect("register");
    let wide = AgentRegistration { max_concurrent_tasks: 2, ..registration("wide", &["code"]) };
    store.register(wide).await.expect("register");
    store.register(registration("paused", &["code"])).await.expect("register");
    // One task held by the two-slot agent: still below capacity, and its numbers end with a last-assigned time.
    store.submit(new_task("tester", request_for("held", Priority::Normal, &["code"])), 64).await.expect("submit");
    let claim = ClaimRequest { agent_id: "wide".into(), capabilities: None, max_tasks: 1, session_id: None };
    assert_eq!(store.claim(&claim).await.expect("claim").len(), 1);
    for agent in ["ready", "wide", "paused"] {
        let waiter =
            Waiter { token: format!("tok-{agent}").into(), agent_id: agent.into(), capabilities: caps(&["code"]) };
        store.register_waiter(waiter, Duration::from_secs(600)).await.expect("waiter");
    }
    store.set_paused("paused", true).await.expect("pause");
    let task = new_task("tester", request_for("t", Priority::Normal, &["code"]));
    let task_id = store.submit(task, 64).await.expect("submit").submitted.task_id;
    let offered = async |store: &RedisStore| {
        let offer = store.offer(&task_id, 10, None).await.expect("offer").expect("claims wait");
        offer.waiting.iter().map(|c| (c.token.to_string(), c.numbers.in_flight)).collect::<Vec<_>>()
    };
    let expected = [("tok-ready".to_string(), 0), ("tok-wide".to_string(), 1)];
    assert_eq!(offered(&store).await, expected);

    let mut redis =
        redis::Client::open(shared_server().url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let key = format!("{prefix}{{main}}:agent-numbers");
    for (agent, gate) in [("ready", "R"), ("wide", "A"), ("paused", "-")] {
        let text: String = redis::cmd("HGET").arg(&key).arg(agent).query_async(&mut redis).await.unwrap();
        let (numbers, kept) = text.rsplit_once('|').expect("fields");
        assert_eq!((kept, numbers.split('|').count()), (gate, 11), "{agent}: {text}");
        let _: () = redis::cmd("HSET").arg(&key).arg(agent).arg(numbers).query_async(&mut redis).await.unwrap();
    }
    assert_eq!(offered(&store).await, expected, "the same answer from the fields");
}
