//! Example strategy `cheapest_within_latency`: among the agents whose latency meets the task's bound, the one with
//! the lowest declared cost; when none meets it, the fastest known one; when no latency is known at all, the least
//! loaded. Costs, declared latencies and the bound are metadata labels, so the manifest must list them.

wit_bindgen::generate!({ world: "strategy", path: "../../wit" });

use aragora::control_plane::types::{CallContext, Candidate, CandidateDetails, Labels, TaskInfo};
use exports::aragora::control_plane::selector::Guest;
use serde_json::{Map, Value};
use std::cell::RefCell;
use std::cmp::Ordering;

struct Config {
    /// Agent label holding the agent's cost (any non-negative number; only the order matters).
    cost_label: String,
    /// Agent label holding the latency the agent declares, used until it has completed a task.
    latency_label: String,
    /// Task label holding the task's latency bound in milliseconds.
    bound_label: String,
    /// The bound for tasks that do not set one.
    default_max_latency_ms: f64,
}

thread_local! {
    // Set by `init`, which the host calls once per instance before `select`.
    static CONFIG: RefCell<Option<Config>> = const { RefCell::new(None) };
}

/// One candidate as this strategy judges it.
struct View<'a> {
    agent_id: &'a str,
    /// `None` when the agent declares no usable cost: such agents rank after every priced one.
    cost: Option<f64>,
    /// `None` when the agent has neither completed a task nor declared a latency: it cannot be shown to meet
    /// the bound, so it never qualifies.
    latency_ms: Option<f64>,
    in_flight: u32,
    completed: u64,
}

struct CheapestWithinLatency;

impl Guest for CheapestWithinLatency {
    fn init(config: String) -> Result<(), String> {
        CONFIG.set(Some(parse_config(&config)?));
        Ok(())
    }

    fn select(
        _ctx: CallContext,
        task: TaskInfo,
        candidates: Vec<Candidate>,
        details: Vec<CandidateDetails>,
    ) -> Result<u32, String> {
        CONFIG.with_borrow(|config| match config {
            Some(config) => config.select(&task, &candidates, &details).map(|index| index as u32),
            None => Err("cheapest_within_latency was not initialised".to_string()),
        })
    }
}

impl Config {
    fn select(&self, task: &TaskInfo, candidates: &[Candidate], details: &[CandidateDetails]) -> Result<usize, String> {
        if candidates.is_empty() {
            return Err("no candidates".to_string());
        }
        // The host passes details only when the manifest lists labels; without them there is no cost to compare,
        // and answering anyway would hide the misconfiguration behind plausible choices.
        if details.len() != candidates.len() {
            return Err(format!(
                "cheapest_within_latency needs candidate details: list the labels \"{}\", \"{}\" and \"{}\" in its \
                 manifest",
                self.cost_label, self.latency_label, self.bound_label
            ));
        }
        let bound = self.bound(task)?;
        let views: Vec<View> = candidates.iter().zip(details).map(|(c, d)| self.view(c, d)).collect();

        let within =
            views.iter().enumerate().filter(|(_, v)| v.latency_ms.is_some_and(|latency| latency <= bound)).min_by(
                |(_, a), (_, b)| {
                    known_first(a.cost, b.cost)
                        .then(a.in_flight.cmp(&b.in_flight))
                        .then(known_first(a.latency_ms, b.latency_ms))
                },
            );
        if let Some((index, _)) = within {
            return Ok(index);
        }

        // Nobody meets the bound: the task should at least get the best latency on offer, cost second.
        let fastest = views.iter().enumerate().filter(|(_, v)| v.latency_ms.is_some()).min_by(|(_, a), (_, b)| {
            known_first(a.latency_ms, b.latency_ms)
                .then(known_first(a.cost, b.cost))
                .then(a.in_flight.cmp(&b.in_flight))
        });
        if let Some((index, view)) = fastest {
            println!(
                "task {}: no agent within {bound} ms; chose the fastest, {} at {} ms",
                task.id,
                view.agent_id,
                view.latency_ms.unwrap_or_default()
            );
            return Ok(index);
        }

        // Nothing is known about latency: behave like the default strategy rather than guess.
        let Some((index, view)) = views.iter().enumerate().min_by_key(|(_, v)| (v.in_flight, v.completed)) else {
            return Err("no candidates".to_string());
        };
        println!("task {}: no agent has a known latency; chose the least loaded, {}", task.id, view.agent_id);
        Ok(index)
    }

    /// The task's bound: its label when set, else the configured default. A bound that is set but unreadable is
    /// an error rather than a silent default, so the submitter's mistake shows in the plugin's failure count.
    fn bound(&self, task: &TaskInfo) -> Result<f64, String> {
        match label(&task.labels, &self.bound_label) {
            None => Ok(self.default_max_latency_ms),
            Some(text) => non_negative(text).ok_or_else(|| {
                format!(
                    "task {}: metadata \"{}\" = {text:?} must be a non-negative number of milliseconds",
                    task.id, self.bound_label
                )
            }),
        }
    }

    fn view<'a>(&self, candidate: &Candidate, details: &'a CandidateDetails) -> View<'a> {
        let agent_id = details.agent_id.as_str();
        // A bad label on one agent must not stop routing for everyone: the agent is judged without it.
        let read = |key: &str| {
            let text = label(&details.labels, key)?;
            let value = non_negative(text);
            if value.is_none() {
                println!("agent {agent_id}: metadata \"{key}\" = {text:?} is not a non-negative number; ignored");
            }
            value
        };
        // Observed beats declared: an agent's own claim about its speed counts only until it has a record.
        let observed = (candidate.completed > 0 && candidate.avg_latency_ms > 0).then_some(candidate.avg_latency_ms);
        let latency_ms = match observed {
            Some(observed) => Some(f64::from(observed)),
            None => read(&self.latency_label),
        };
        View {
            agent_id,
            cost: read(&self.cost_label),
            latency_ms,
            in_flight: candidate.in_flight,
            completed: candidate.completed,
        }
    }
}

/// Ascending, with unknown values (no label, unreadable label, no record) after every known one.
fn known_first(a: Option<f64>, b: Option<f64>) -> Ordering {
    match (a, b) {
        (Some(a), Some(b)) => a.total_cmp(&b),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

/// A finite, non-negative number (metadata numbers arrive as their JSON text, strings as themselves).
fn non_negative(text: &str) -> Option<f64> {
    text.trim().parse::<f64>().ok().filter(|value| value.is_finite() && *value >= 0.0)
}

fn label<'a>(labels: &'a Labels, key: &str) -> Option<&'a str> {
    labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Parses the `[config]` table; every key has a default, unknown keys are refused so a misspelt one is not
/// silently ignored.
fn parse_config(config: &str) -> Result<Config, String> {
    let value: Value = serde_json::from_str(config).map_err(|e| format!("config is not valid JSON: {e}"))?;
    let Value::Object(mut table) = value else {
        return Err("config must be a table".to_string());
    };
    let cost_label = take_string(&mut table, "cost_label", "cost")?;
    let latency_label = take_string(&mut table, "latency_label", "latency_ms")?;
    let bound_label = take_string(&mut table, "bound_label", "max_latency_ms")?;
    let default_max_latency_ms = match table.remove("default_max_latency_ms") {
        None => 2_000.0,
        Some(Value::Number(n)) if n.as_f64().is_some_and(|v| v.is_finite() && v > 0.0) => {
            n.as_f64().unwrap_or_default()
        }
        Some(other) => {
            return Err(format!("config key `default_max_latency_ms` must be a positive number, got {other}"));
        }
    };
    if let Some(key) = table.keys().next() {
        return Err(format!("unknown config key `{key}`"));
    }
    Ok(Config { cost_label, latency_label, bound_label, default_max_latency_ms })
}

fn take_string(table: &mut Map<String, Value>, key: &str, default: &str) -> Result<String, String> {
    match table.remove(key) {
        None => Ok(default.to_string()),
        Some(Value::String(value)) if !value.is_empty() => Ok(value),
        Some(other) => Err(format!("config key `{key}` must be a non-empty string, got {other}")),
    }
}

export!(CheapestWithinLatency);
