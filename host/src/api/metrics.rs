//! `/metrics` in the Prometheus text format: request counters and latency histograms labelled by route template
//! (never by agent or task id, so the series stay bounded), the store's counters as gauges (tasks by status, queue
//! depth by priority, agents by status, claims waiting), and plugin call counters. Open unless
//! `METRICS_TOKEN` is set, then that exact bearer token is required.

use std::collections::BTreeMap;
use std::fmt::Write;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;

use super::ApiState;
use super::errors::{ApiError, ApiResult};

/// A request series: method, route template, status.
type Series = (String, String, u16);

/// Upper bounds of the request-latency histogram buckets, in seconds (`+Inf` is implied).
const LATENCY_BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0];

/// One series' histogram: per-bucket counts (not cumulative; summed on output), total count and seconds.
#[derive(Clone, Debug, Default)]
struct Histogram {
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The series of one route template: a histogram per (method, status) seen on it.
type RouteSeries = Vec<(Method, u16, Histogram)>;

/// Request counters of this server, by (method, route template, status).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Histograms by route template, then by method and status: a request finds its series by borrowing its
    /// route's text, so counting allocates only for a series' first request. The mutex is held to add to one.
    requests: Mutex<crate::FastMap<String, RouteSeries>>,
}

impl Metrics {
    /// Counts a request answered on `route` (a template) with `status` after `seconds` (`access` calls it for every
    /// request to the API's routes).
    pub(super) fn record(&self, method: &Method, route: &str, status: u16, seconds: f64) {
        // A client may send any method name to a route (405): only the standard ones get their own series.
        let method = match *method {
            Method::GET
            | Method::POST
            | Method::PUT
            | Method::PATCH
            | Method::DELETE
            | Method::HEAD
            | Method::OPTIONS => method.clone(),
            _ => Method::from_bytes(b"OTHER").expect("a token"),
        };
        let mut requests = self.requests.lock();
        if !requests.contains_key(route) {
            requests.insert(route.to_string(), Vec::new());
        }
        let series = requests.get_mut(route).expect("inserted above");
        let index = match series.iter().position(|(m, s, _)| *m == method && *s == status) {
            Some(index) => index,
            None => {
                series.push((method, status, Histogram::default()));
                series.len() - 1
            }
        };
        let entry = &mut series[index].2;
        entry.count += 1;
        entry.sum += seconds;
        if let Some(bucket) = LATENCY_BUCKETS.iter().position(|bound| seconds <= *bound) {
            entry.buckets[bucket] += 1;
        }
    }
}

/// `GET /metrics`.
#[utoipa::path(get, path = "/metrics", tag = "operations", security((), ("metrics_token" = [])),
    responses(
        (status = 200, description = "Prometheus text format: requests by route template and status with latency histograms, tasks by status, queue depth by priority, agents by status, plugin calls, failures and latency, claims waiting", content_type = "text/plain"),
        (status = 401, description = "`METRICS_TOKEN` is set and the bearer token is not it", body = super::openapi::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn metrics_get(State(state): State<ApiState>, headers: HeaderMap) -> ApiResult<Response> {
    if let Some(expected) = &state.metrics_token {
        let given =
            headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(expected.as_str()) {
            return Err(ApiError::unauthorized("/metrics needs the METRICS_TOKEN bearer token"));
        }
    }
    let mut out = String::new();
    let requests: BTreeMap<Series, Histogram> = state
        .metrics
        .requests
        .lock()
        .iter()
        .flat_map(|(route, series)| {
            series.iter().map(|(method, status, h)| ((method.to_string(), route.clone(), *status), h.clone()))
        })
        .collect();
    write_requests(&mut out, &requests);
    let stats = state.coordinator.counters().await?;
    let by_type = most_numerous(&stats.tasks_by_type, TASK_TYPE_SERIES);
    let gauges: [(&str, &str, &str, &BTreeMap<String, u64>); 5] = [
        ("aragora_cp_tasks", "Tasks by status.", "status", &stats.tasks_by_status),
        ("aragora_cp_queue_depth", "Pending tasks by priority.", "priority", &stats.pending_by_priority),
        ("aragora_cp_agents", "Agents by status.", "status", &stats.agents_by_status),
        ("aragora_cp_agents_by_health", "Agents by last probe verdict.", "health", &stats.agents_by_health),
        (
            "aragora_cp_tasks_by_type",
            "Tasks by type: the most numerous types, the rest as `other`.",
            "task_type",
            &by_type,
        ),
    ];
    for (name, help, label, values) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (key, value) in values {
            let _ = writeln!(out, "{name}{{{label}=\"{}\"}} {value}", escape(key));
        }
    }
    let scalars = [
        ("aragora_cp_claims_waiting", "Blocked claims waiting for work.", stats.waiting_claims),
        ("aragora_cp_agents_available", "Agents that may take work now.", stats.available_agents),
        ("aragora_cp_open_breakers", "Agents whose circuit breaker is open.", stats.open_breakers),
        ("aragora_cp_live_signatures", "Distinct capability sets with pending work.", stats.live_signatures),
    ];
    for (name, help, value) in scalars {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
    }
    write_plugins(&mut out, &state.coordinator.plugin_list());
    let mut response = out.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    Ok(response)
}

fn write_requests(out: &mut String, requests: &BTreeMap<Series, Histogram>) {
    let name = "aragora_cp_http_request_duration_seconds";
    let _ = writeln!(out, "# HELP {name} Time to answer, by method, route template and status.");
    let _ = writeln!(out, "# TYPE {name} histogram");
    for ((method, route, status), histogram) in requests {
        let labels = format!("method=\"{method}\",route=\"{}\",status=\"{status}\"", escape(route));
        let mut cumulative = 0;
        for (bound, count) in LATENCY_BUCKETS.iter().zip(histogram.buckets) {
            cumulative += count;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", histogram.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", histogram.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", histogram.count);
    }
    let total = "aragora_cp_http_requests_total";
    let _ = writeln!(out, "# HELP {total} HTTP requests by method, route template and status.");
    let _ = writeln!(out, "# TYPE {total} counter");
    for ((method, route, status), histogram) in requests {
        let route = escape(route);
        let _ =
            writeln!(out, "{total}{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {}", histogram.count);
    }
}

/// Plugin call counters by plugin name and kind, over every version loaded since the server started.
fn write_plugins(out: &mut String, plugins: &[crate::plugins::registry::PluginInfo]) {
    let series = [
        ("aragora_cp_plugin_calls_total", "counter", "Plugin calls made."),
        ("aragora_cp_plugin_failures_total", "counter", "Plugin calls that produced no answer."),
        ("aragora_cp_plugin_fallbacks_total", "counter", "Times a fallback answered instead of the plugin."),
        ("aragora_cp_plugin_latency_mean_seconds", "gauge", "Mean plugin call latency."),
        ("aragora_cp_plugin_latency_max_seconds", "gauge", "Slowest plugin call."),
    ];
    for (index, (name, kind, help)) in series.into_iter().enumerate() {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for plugin in plugins {
            // The active version names the kind; the counters cover every version since start (swaps add to them).
            let Some(active) = &plugin.active else { continue };
            let stats = &plugin.totals;
            let value = match index {
                0 => stats.calls as f64,
                1 => stats.failures as f64,
                2 => stats.fallbacks as f64,
                3 => stats.latency_us_mean / 1e6,
                _ => stats.latency_us_max / 1e6,
            };
            let _ = writeln!(out, "{name}{{plugin=\"{}\",kind=\"{}\"}} {value}", escape(&plugin.name), active.kind);
        }
    }
}

/// Task types given a series of their own; clients name task types, and an open endpoint must not grow with them.
const TASK_TYPE_SERIES: usize = 50;

/// The `keep` largest counts by key (ties by key), and the sum of the rest as `other`.
fn most_numerous(counts: &BTreeMap<String, u64>, keep: usize) -> BTreeMap<String, u64> {
    if counts.len() <= keep {
        return counts.clone();
    }
    let mut ranked: Vec<(&String, &u64)> = counts.iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
    let mut kept: BTreeMap<String, u64> = ranked[..keep].iter().map(|(k, v)| ((*k).clone(), **v)).collect();
    *kept.entry("other".to_string()).or_default() += ranked[keep..].iter().map(|(_, v)| **v).sum::<u64>();
    kept
}

fn escape(label: &str) -> String {
    label.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::most_numerous;

    #[test]
    fn task_types_beyond_the_most_numerous_are_summed_as_other() {
        let counts: BTreeMap<String, u64> = (0..100u64).map(|i| (format!("type-{i:03}"), i)).collect();
        let kept = most_numerous(&counts, 3);
        assert_eq!(kept.len(), 4);
        assert_eq!((kept["type-099"], kept["type-098"], kept["type-097"]), (99, 98, 97));
        assert_eq!(kept["other"], (0..97).sum::<u64>());
        let few: BTreeMap<String, u64> = [("a".to_string(), 1)].into();
        assert_eq!(most_numerous(&few, 3), few);
    }
}
