//! The oracles of a fleet run. [`EventLog`] follows one server's `GET /events` (resuming with `Last-Event-ID`
//! if the stream breaks); [`check_leases`] replays the task events of every server, in stream order, through a
//! per-task lease automaton: a grant (`task_claimed`) is legal only while the task is pending, and a task becomes
//! pending again only through a revoke or requeue event (`task_released`, `task_retried`, `task_timeout`), so no
//! two valid leases coexist and every re-claim follows a revoke. [`check_outcome`] ties the events to what the
//! servers acknowledged over HTTP: every acknowledged task completed exactly once, by one lease, at the attempt
//! the events counted. Every event must come once: a repeated id is a broken rule of its own.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aragora_cp::model::{Event, EventKind};
use parking_lot::Mutex;
use reqwest::StatusCode;

use crate::harness::{API, Completion, Run};

/// The event types the oracle follows.
const TYPES: &str = "task_submitted,task_claimed,task_started,task_completed,task_failed,task_retried,\
                     task_timeout,task_cancelled,task_released,agent_offline,agent_restarted";

/// Events read from one server, in the order it sent them.
#[derive(Default)]
pub(crate) struct EventLog {
    /// The events.
    pub events: Mutex<Vec<Event>>,
    /// `reset` events (the server could not deliver everything: the oracle would be blind).
    pub resets: AtomicUsize,
    /// `task_completed` events so far.
    pub completed: AtomicUsize,
    /// Times the stream broke and was resumed.
    pub reconnects: AtomicUsize,
}

impl EventLog {
    /// Follows `GET /events` on `server` until aborted; returns once the first connection is open, so every event
    /// after that point is seen.
    pub(crate) async fn follow(run: Arc<Run>, server: usize) -> (Arc<EventLog>, tokio::task::JoinHandle<()>) {
        let log = Arc::new(EventLog::default());
        let (opened, is_open) = tokio::sync::oneshot::channel();
        let handle = tokio::spawn(read_events(run, server, log.clone(), opened));
        tokio::time::timeout(Duration::from_secs(30), is_open).await.expect("the event stream opens").ok();
        (log, handle)
    }

    /// The events so far.
    pub(crate) fn snapshot(&self) -> Vec<Event> {
        self.events.lock().clone()
    }
}

async fn read_events(run: Arc<Run>, server: usize, log: Arc<EventLog>, opened: tokio::sync::oneshot::Sender<()>) {
    let token = run.admin();
    let mut opened = Some(opened);
    let mut last_id: Option<String> = None;
    // The stream lives as long as the run: no overall timeout on this client.
    let client = reqwest::Client::new();
    loop {
        let mut request = client.get(format!("{}{API}/events?types={TYPES}", run.bases[server])).bearer_auth(&token);
        if let Some(id) = &last_id {
            request = request.header("Last-Event-ID", id);
        }
        let mut response = match request.send().await {
            Ok(response) if response.status() == StatusCode::OK => response,
            _ => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if let Some(opened) = opened.take() {
            let _ = opened.send(());
        }
        let mut buffer = String::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let (mut kind, mut data) = (None, String::new());
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event:") {
                        kind = Some(value.trim().to_string());
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.strip_prefix(' ').unwrap_or(value));
                    }
                }
                match kind.as_deref() {
                    None => {}
                    Some("reset") => {
                        eprintln!("event stream of server {server}: reset {data}");
                        log.resets.fetch_add(1, Ordering::SeqCst);
                    }
                    Some(_) => {
                        let event: Event = serde_json::from_str(&data).unwrap_or_else(|e| panic!("event {data}: {e}"));
                        last_id = Some(event.id.clone());
                        if event.kind == EventKind::TaskCompleted {
                            log.completed.fetch_add(1, Ordering::SeqCst);
                        }
                        log.events.lock().push(event);
                    }
                }
            }
        }
        log.reconnects.fetch_add(1, Ordering::SeqCst);
        eprintln!("event stream of server {server}: broke after {last_id:?}; resuming");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Where a task stands in the lease automaton.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lease {
    /// Submitted, no valid lease.
    Pending,
    /// One valid lease (the attempt).
    Held(u64),
    /// Its attempt timed out; a requeue or a final `timeout` follows.
    TimedOut,
    /// Terminal.
    Completed,
    Failed,
    Cancelled,
}

/// One task's history as the events tell it.
#[derive(Debug)]
pub(crate) struct History {
    state: Lease,
    /// Grants (`task_claimed`).
    pub grants: u64,
    /// `task_completed` events.
    pub completions: u64,
    /// Revoke and requeue events.
    pub revokes: u64,
}

/// The replay of a run's events.
pub(crate) struct LeaseReport {
    /// Per task.
    pub tasks: HashMap<String, History>,
    /// Every broken rule, in stream order.
    pub violations: Vec<String>,
    /// Servers that emitted the events (the reader's server must carry everyone's).
    pub servers: HashSet<String>,
    /// Events per type.
    pub counts: BTreeMap<String, usize>,
}

/// Replays task events in stream order through the lease automaton.
pub(crate) fn check_leases(events: &[Event]) -> LeaseReport {
    let mut report =
        LeaseReport { tasks: HashMap::new(), violations: Vec::new(), servers: HashSet::new(), counts: BTreeMap::new() };
    let mut ids = HashSet::new();
    for event in events {
        if !ids.insert(event.id.as_str()) {
            let task = event.task_id.as_deref().unwrap_or("-");
            report.violations.push(format!("{task}: event {} ({}) delivered twice", event.id, event.kind.as_str()));
            continue;
        }
        report.servers.insert(event.server_id.clone());
        *report.counts.entry(event.kind.as_str().to_string()).or_default() += 1;
        let Some(task) = &event.task_id else { continue };
        let violations = &mut report.violations;
        let mut broken = |why: &str, state: Lease| {
            violations.push(format!("{task}: {} ({}) {why} (state {state:?})", event.kind.as_str(), event.id));
        };
        if event.kind == EventKind::TaskSubmitted {
            if report.tasks.contains_key(task) {
                broken("submitted twice", Lease::Pending);
            }
            report.tasks.insert(task.clone(), History { state: Lease::Pending, grants: 0, completions: 0, revokes: 0 });
            continue;
        }
        let Some(history) = report.tasks.get_mut(task) else {
            broken("before its task_submitted", Lease::Pending);
            continue;
        };
        let state = history.state;
        match event.kind {
            EventKind::TaskClaimed => {
                let attempt = event.data["attempt"].as_u64().unwrap_or(0);
                match state {
                    Lease::Pending => {}
                    Lease::Held(_) => broken("granted while another lease was valid", state),
                    _ => broken("granted while not pending", state),
                }
                if attempt != history.grants + 1 {
                    broken(&format!("attempt {attempt} after {} grants", history.grants), state);
                }
                history.grants += 1;
                history.state = Lease::Held(attempt);
            }
            EventKind::TaskStarted | EventKind::TaskProgress if !matches!(state, Lease::Held(_)) => {
                broken("with no valid lease", state);
            }
            EventKind::TaskReleased => {
                if !matches!(state, Lease::Held(_)) {
                    broken("released with no valid lease", state);
                }
                history.revokes += 1;
                history.state = Lease::Pending;
            }
            EventKind::TaskTimeout => {
                if !matches!(state, Lease::Held(_)) {
                    broken("timed out with no valid lease", state);
                }
                history.revokes += 1;
                history.state = Lease::TimedOut;
            }
            EventKind::TaskRetried => {
                // From a lease (agent lost, fail with requeue) or after a timeout; a manual retry (terminal →
                // pending) is not part of these runs.
                if !matches!(state, Lease::Held(_) | Lease::TimedOut) {
                    broken("requeued with no lease to revoke", state);
                }
                history.revokes += 1;
                history.state = Lease::Pending;
            }
            EventKind::TaskCompleted => {
                history.completions += 1;
                if !matches!(state, Lease::Held(_)) {
                    broken("completed with no valid lease", state);
                }
                history.state = Lease::Completed;
            }
            EventKind::TaskFailed => history.state = Lease::Failed,
            EventKind::TaskCancelled => history.state = Lease::Cancelled,
            _ => {}
        }
    }
    report
}

/// Ties the events to the HTTP ledger: every acknowledged task completed, exactly one `task_completed` each, one
/// lease per task among the accepted completions, and that completion's attempt equal to the grants the events
/// counted. Returns the broken rules (empty when all hold).
pub(crate) fn check_outcome(
    report: &LeaseReport,
    acknowledged: &HashSet<String>,
    completions: &[Completion],
) -> Vec<String> {
    let mut broken = Vec::new();
    let mut by_task: HashMap<&str, Vec<&Completion>> = HashMap::new();
    for completion in completions {
        by_task.entry(&completion.task_id).or_default().push(completion);
    }
    for task in acknowledged {
        let Some(history) = report.tasks.get(task) else {
            broken.push(format!("{task}: acknowledged, but no event of it was seen"));
            continue;
        };
        if history.state != Lease::Completed || history.completions != 1 {
            broken
                .push(format!("{task}: ends {:?} after {} task_completed events", history.state, history.completions));
        }
        let accepted = by_task.remove(task.as_str()).unwrap_or_default();
        let leases: HashSet<&str> = accepted.iter().map(|c| c.lease_id.as_str()).collect();
        if leases.len() != 1 {
            broken.push(format!("{task}: completions accepted under {} leases: {accepted:?}", leases.len()));
        }
        if accepted.iter().filter(|c| !c.retried).count() > 1 {
            broken.push(format!("{task}: completed twice without a retry: {accepted:?}"));
        }
        if let Some(first) = accepted.first()
            && first.attempt != history.grants
        {
            broken.push(format!("{task}: completed at attempt {} but granted {} times", first.attempt, history.grants));
        }
    }
    for (task, accepted) in by_task {
        broken.push(format!("{task}: completed ({accepted:?}) but never acknowledged"));
    }
    broken
}

/// The first few entries of a list of broken rules, for a panic message.
pub(crate) fn first(broken: &[String], count: usize) -> String {
    let shown: Vec<&str> = broken.iter().take(count).map(String::as_str).collect();
    format!("{} broken rule(s); the first:\n{}", broken.len(), shown.join("\n"))
}

/// The oracle can fail: crafted histories that break each rule are caught, a legal one is not.
#[test]
fn the_lease_oracle_catches_overlapping_leases_and_unrevoked_reclaims() {
    let event = |n: usize, kind: EventKind, task: &str, attempt: u64| Event {
        id: format!("{n}-0"),
        kind,
        time: String::new(),
        server_id: format!("server-{}", n % 3),
        task_id: Some(task.to_string()),
        agent_id: None,
        data: serde_json::json!({"attempt": attempt}),
    };
    use EventKind::{TaskClaimed, TaskCompleted, TaskReleased, TaskRetried, TaskSubmitted, TaskTimeout};
    let legal = [
        event(1, TaskSubmitted, "a", 0),
        event(2, TaskClaimed, "a", 1),
        event(3, TaskReleased, "a", 0),
        event(4, TaskClaimed, "a", 2),
        event(5, TaskTimeout, "a", 0),
        event(6, TaskRetried, "a", 0),
        event(7, TaskClaimed, "a", 3),
        event(8, TaskCompleted, "a", 0),
    ];
    let report = check_leases(&legal);
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    assert_eq!(report.servers.len(), 3);
    let completion = |lease: &str, attempt: u64| Completion {
        task_id: "a".into(),
        lease_id: lease.into(),
        attempt,
        agent: "x".into(),
        retried: false,
    };
    let acknowledged: HashSet<String> = ["a".to_string()].into();
    assert!(check_outcome(&report, &acknowledged, &[completion("l3", 3)]).is_empty());
    assert_eq!(check_outcome(&report, &acknowledged, &[completion("l3", 3), completion("l2", 2)]).len(), 2);
    assert_eq!(check_outcome(&report, &acknowledged, &[completion("l3", 2)]).len(), 1);

    let overlapping = [event(1, TaskSubmitted, "b", 0), event(2, TaskClaimed, "b", 1), event(3, TaskClaimed, "b", 2)];
    assert_eq!(check_leases(&overlapping).violations.len(), 1);
    let twice = [
        event(1, TaskSubmitted, "c", 0),
        event(2, TaskClaimed, "c", 1),
        event(3, TaskCompleted, "c", 0),
        event(4, TaskClaimed, "c", 2),
        event(5, TaskCompleted, "c", 0),
    ];
    assert_eq!(check_leases(&twice).violations.len(), 1, "{:?}", check_leases(&twice).violations);
    let skipped_attempt = [event(1, TaskSubmitted, "d", 0), event(2, TaskClaimed, "d", 2)];
    assert_eq!(check_leases(&skipped_attempt).violations.len(), 1);
    // A stream that repeats an event (as a resume once did) is caught as such, not only by what it breaks.
    let repeated = [event(1, TaskSubmitted, "e", 0), event(2, TaskClaimed, "e", 1), event(2, TaskClaimed, "e", 1)];
    let violations = check_leases(&repeated).violations;
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(violations[0].contains("delivered twice"), "{violations:?}");
}
