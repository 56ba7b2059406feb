//! Schedules on real servers: a one-second interval schedule on three servers sharing one Redis fires exactly once
//! per tick for 30 ticks; the catch-up policies after an outage (a store clock moved past several ticks); pause,
//! resume, change and delete over both verbs the clients use; refusals that name the field.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aragora_cp::api::Permission;
use aragora_cp::config::Config;
use aragora_cp::store::{ManualClock, MemoryStore, Store};
use aragora_cp_tests::redis_server::unique_prefix;
use aragora_cp_tests::server::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn create(server: &TestServer, body: Value) -> Value {
    let (status, schedule) = server.call(&server.admin(), Method::POST, "/schedules", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{schedule}");
    schedule
}

async fn schedule(server: &TestServer, id: &str) -> Value {
    let (status, schedule) = server.call(&server.admin(), Method::GET, &format!("/schedules/{id}"), None).await;
    assert_eq!(status, StatusCode::OK, "{schedule}");
    schedule
}

/// The tasks of `task_type`, with the tick each was made for (ms), oldest tick first.
async fn ticks_of(server: &TestServer, task_type: &str) -> Vec<(u64, Value)> {
    let path = format!("/tasks?task_type={task_type}&limit=1000");
    let (_, page) = server.call(&server.admin(), Method::GET, &path, None).await;
    let mut ticks: Vec<(u64, Value)> = page["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|task| {
            let tick = task["metadata"]["schedule_tick"].as_str().expect("a scheduled task names its tick");
            let ms = chrono::DateTime::parse_from_rfc3339(tick).unwrap().timestamp_millis() as u64;
            (ms, task.clone())
        })
        .collect();
    ticks.sort_by_key(|(tick, _)| *tick);
    ticks
}

/// Waits until the schedule has fired `runs` ticks (or panics after `limit`).
async fn until_runs(server: &TestServer, id: &str, runs: u64, limit: Duration) -> Value {
    let started = Instant::now();
    loop {
        let current = schedule(server, id).await;
        if current["runs"].as_u64().unwrap() >= runs {
            return current;
        }
        assert!(started.elapsed() < limit, "{runs} runs not reached in {limit:?}: {current}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_one_second_schedule_on_three_servers_sharing_redis_fires_exactly_once_per_tick_for_30_ticks() {
    let prefix = unique_prefix("schedules");
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(TestServer::start_on_redis(Config::default(), &prefix).await);
    }
    let body = json!({"name": "heartbeat report", "interval_seconds": 1, "catch_up": "all",
                      "task": {"task_type": "tick-report", "payload": {"report": "fleet"}}});
    let created = create(&servers[0], body).await;
    let id = created["schedule_id"].as_str().unwrap().to_string();
    // Every server sees the same schedule.
    for server in &servers[1..] {
        assert_eq!(schedule(server, &id).await["name"], "heartbeat report");
    }
    let fired = until_runs(&servers[1], &id, 30, Duration::from_secs(60)).await;
    // Stop it where it is, then count: each tick exactly one task, no tick missing between the first and the last.
    servers[2].call(&servers[2].admin(), Method::POST, &format!("/schedules/{id}/pause"), None).await;
    let runs = schedule(&servers[0], &id).await["runs"].as_u64().unwrap();
    let ticks = ticks_of(&servers[0], "tick-report").await;
    let times: Vec<u64> = ticks.iter().map(|(tick, _)| *tick).collect();
    assert!(times.len() >= 30, "{} tasks: {fired}", times.len());
    assert_eq!(times.len() as u64, runs, "one task per fired tick: {times:?}");
    for pair in times.windows(2) {
        assert_eq!(pair[1] - pair[0], 1_000, "consecutive ticks, none twice, none skipped: {times:?}");
    }
    assert!(ticks.iter().all(|(_, task)| task["metadata"]["schedule_id"] == id.as_str()));
    assert_eq!(ticks[0].1["payload"], json!({"report": "fleet"}));
    for server in servers {
        server.stop().await;
    }
}

/// A memory-store server whose clock moves only when told.
async fn server_with_clock() -> (TestServer, ManualClock) {
    let config = Config::default();
    let clock = ManualClock::new(1_800_000_000_000);
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new(config.store_config(), Arc::new(clock.clone())));
    (TestServer::start_with_store(config, store).await, clock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_the_catch_up_policy_fires_all_one_or_none_of_the_missed_ticks() {
    let (server, clock) = server_with_clock().await;
    let mut ids = Vec::new();
    for policy in ["all", "one", "none"] {
        let body = json!({"name": policy, "interval_seconds": 10, "catch_up": policy, "task": {"task_type": policy}});
        ids.push(create(&server, body).await["schedule_id"].as_str().unwrap().to_string());
    }
    // Nothing is due until the clock reaches the first tick (10 s after creation).
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(schedule(&server, &ids[0]).await["runs"], 0);
    // One tick due: every policy fires it.
    clock.advance(10_000);
    for id in &ids {
        until_runs(&server, id, 1, Duration::from_secs(10)).await;
    }
    // The store comes back 35 s later: ticks at +20, +30 and +40 s are due at once.
    clock.advance(35_000);
    let all = until_runs(&server, &ids[0], 4, Duration::from_secs(10)).await;
    let one = until_runs(&server, &ids[1], 2, Duration::from_secs(10)).await;
    let started = Instant::now();
    let none = loop {
        let current = schedule(&server, &ids[2]).await;
        if current["skipped"].as_u64() == Some(3) || started.elapsed() > Duration::from_secs(10) {
            break current;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((all["runs"].as_u64(), all["skipped"].as_u64()), (Some(4), Some(0)), "{all}");
    assert_eq!((one["runs"].as_u64(), one["skipped"].as_u64()), (Some(2), Some(2)), "{one}");
    assert_eq!((none["runs"].as_u64(), none["skipped"].as_u64()), (Some(1), Some(3)), "{none}");
    let tick = |offset_s: u64| 1_800_000_000_000 + offset_s * 1000;
    let times = |ticks: Vec<(u64, Value)>| ticks.into_iter().map(|(t, _)| t).collect::<Vec<_>>();
    assert_eq!(times(ticks_of(&server, "all").await), [tick(10), tick(20), tick(30), tick(40)]);
    assert_eq!(times(ticks_of(&server, "one").await), [tick(10), tick(40)], "the latest missed tick");
    assert_eq!(times(ticks_of(&server, "none").await), [tick(10)]);
    for id in &ids {
        let next = schedule(&server, id).await["next_run_at"].as_str().unwrap().to_string();
        assert_eq!(next, "2027-01-15T08:00:50.000Z", "every policy resumes at the next future tick");
    }
    server.stop().await;
}

#[tokio::test]
async fn schedules_are_paused_resumed_changed_and_deleted_by_their_creator_or_an_admin() {
    let (server, clock) = server_with_clock().await;
    let admin = server.admin();
    let owner = server.token("ops", &[Permission::Tasks, Permission::Read]);
    let body = json!({"name": "nightly", "cron": "0 2 * * *", "timezone": "Europe/Paris",
                      "task": {"task_type": "backup", "priority": "low"}});
    let (status, created) = server.call(&owner, Method::POST, "/schedules", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["schedule_id"].as_str().unwrap();
    assert!(id.starts_with("sched_") && id.len() == 38, "{id}");
    // 2027-01-15T08:00:00Z; 02:00 in Paris (UTC+1) is 01:00Z the next day.
    assert_eq!(created["next_run_at"], "2027-01-16T01:00:00.000Z", "{created}");
    assert_eq!((created["catch_up"].as_str(), created["created_by"].as_str()), (Some("one"), Some("ops")));

    let path = format!("/schedules/{id}");
    let (status, paused) = server.call(&owner, Method::POST, &format!("{path}/pause"), None).await;
    assert_eq!(
        (status, paused["paused"].clone(), paused["next_run_at"].clone()),
        (StatusCode::OK, json!(true), Value::Null)
    );
    clock.advance(2 * 24 * 3600 * 1000);
    // Longer than the schedule loop sleeps when nothing ticks, so it looks at least once meanwhile.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(schedule(&server, id).await["runs"], 0, "a paused schedule fires nothing");
    let (_, resumed) = server.call(&owner, Method::POST, &format!("{path}/resume"), None).await;
    assert_eq!(resumed["next_run_at"], "2027-01-18T01:00:00.000Z", "from its next future tick: {resumed}");

    // aragora-sdk's update_schedule sends PUT with the fields to change; PATCH does the same.
    let (status, renamed) = server.call(&owner, Method::PUT, &path, Some(json!({"name": "nightly backup"}))).await;
    assert_eq!(
        (status, renamed["name"].as_str(), renamed["cron"].as_str()),
        (StatusCode::OK, Some("nightly backup"), Some("0 2 * * *"))
    );
    let (_, every) = server.call(&owner, Method::PATCH, &path, Some(json!({"interval_seconds": 3600}))).await;
    assert_eq!((every["cron"].clone(), every["interval_seconds"].as_u64()), (Value::Null, Some(3600)), "{every}");

    let stranger = server.token("someone", &[Permission::Tasks, Permission::Read]);
    let (status, _) = server.call(&stranger, Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, listed) = server.call(&stranger, Method::GET, "/schedules", None).await;
    assert_eq!((status, listed["total"].as_u64()), (StatusCode::OK, Some(1)));
    let (status, deleted) = server.call(&admin, Method::DELETE, &path, None).await;
    assert_eq!((status, deleted["deleted"].clone()), (StatusCode::OK, json!(true)));
    let (status, gone) = server.call(&admin, Method::GET, &path, None).await;
    assert_eq!((status, gone["code"].as_str()), (StatusCode::NOT_FOUND, Some("schedule_not_found")));
    server.stop().await;
}

#[tokio::test]
async fn bad_schedules_are_refused_naming_the_field() {
    let server = TestServer::start().await;
    let task = json!({"task_type": "t"});
    let refusals = [
        (json!({"name": "x", "task": task}), "cron"),
        (json!({"name": "x", "cron": "* * * * *", "interval_seconds": 5, "task": task}), "cron"),
        (json!({"name": "x", "cron": "every day", "task": task}), "cron"),
        (json!({"name": "x", "cron": "0 9 * * *", "timezone": "Mars/Olympus", "task": task}), "timezone"),
        (json!({"name": "x", "interval_seconds": 0, "task": task}), "interval_seconds"),
        (json!({"name": "", "interval_seconds": 5, "task": task}), "name"),
        (json!({"name": "x", "interval_seconds": 5, "task": {"task_type": ""}}), "task.task_type"),
        (
            json!({"name": "x", "interval_seconds": 5, "task": {"task_type": "t", "idempotency_key": "k"}}),
            "task.idempotency_key",
        ),
        (json!({"name": "x", "interval_seconds": 5, "task": task, "catch_up": "some"}), "catch_up"),
    ];
    for (body, field) in refusals {
        let (status, problem) = server.call(&server.admin(), Method::POST, "/schedules", Some(body.clone())).await;
        assert_eq!((status, problem["field"].as_str()), (StatusCode::BAD_REQUEST, Some(field)), "{body}: {problem}");
    }
    let (status, listed) = server.call(&server.admin(), Method::GET, "/schedules", None).await;
    assert_eq!((status, listed["total"].as_u64()), (StatusCode::OK, Some(0)));
    let (status, _) =
        server.call(&server.admin(), Method::PATCH, "/schedules/sched_nope", Some(json!({"name": "y"}))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    server.stop().await;
}
