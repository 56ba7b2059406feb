//! `/metrics` in the Prometheus text format: request counters and latency sums labelled by route template (never
//! by agent or task id, so the series stay bounded), and the coordinator's counters as gauges. Open unless
//! `METRICS_TOKEN` is set, then that exact bearer token is required.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde_json::Value;

use super::ApiState;
use super::errors::{ApiError, ApiResult};

/// A request series: method, route template, status.
type Series = (String, String, u16);

/// Request counters of this server, by (method, route template, status).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Count and total seconds per series; a mutex held only to add two numbers.
    requests: Mutex<BTreeMap<Series, (u64, f64)>>,
}

impl Metrics {
    fn record(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let mut requests = self.requests.lock();
        let entry = requests.entry((method.to_string(), route.to_string(), status)).or_default();
        entry.0 += 1;
        entry.1 += seconds;
    }
}

/// Middleware counting every routed request under its route template.
pub async fn track(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string());
    let response = next.run(request).await;
    if let Some(route) = route {
        state.metrics.record(&method, &route, response.status().as_u16(), started.elapsed().as_secs_f64());
    }
    response
}

/// `GET /metrics`.
pub async fn metrics_get(State(state): State<ApiState>, headers: HeaderMap) -> ApiResult<Response> {
    if let Some(expected) = &state.metrics_token {
        let given =
            headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(expected.as_str()) {
            return Err(ApiError::unauthorized("/metrics needs the METRICS_TOKEN bearer token"));
        }
    }
    let mut out = String::new();
    let _ = writeln!(out, "# HELP aragora_cp_http_requests_total HTTP requests by route template and status.");
    let _ = writeln!(out, "# TYPE aragora_cp_http_requests_total counter");
    let requests = state.metrics.requests.lock().clone();
    for ((method, route, status), (count, _)) in &requests {
        let _ = writeln!(
            out,
            "aragora_cp_http_requests_total{{method=\"{method}\",route=\"{}\",status=\"{status}\"}} {count}",
            escape(route)
        );
    }
    let _ = writeln!(out, "# HELP aragora_cp_http_request_duration_seconds_sum Time spent answering, by route.");
    let _ = writeln!(out, "# TYPE aragora_cp_http_request_duration_seconds_sum counter");
    for ((method, route, status), (_, seconds)) in &requests {
        let _ = writeln!(
            out,
            "aragora_cp_http_request_duration_seconds_sum{{method=\"{method}\",route=\"{}\",status=\"{status}\"}} {seconds}",
            escape(route)
        );
    }
    let stats = state.coordinator.get_stats().await?;
    let sections = [("registry", &stats.registry), ("scheduler", &stats.scheduler), ("health", &stats.health)];
    for (section, values) in sections {
        let Value::Object(values) = values else { continue };
        for (key, value) in values {
            let name = format!("aragora_cp_{section}_{key}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            match value {
                Value::Number(n) => {
                    let _ = writeln!(out, "{name} {n}");
                }
                Value::Object(breakdown) => {
                    for (label, n) in breakdown {
                        let _ = writeln!(out, "{name}{{key=\"{}\"}} {n}", escape(label));
                    }
                }
                _ => {}
            }
        }
    }
    let mut response = out.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    Ok(response)
}

fn escape(label: &str) -> String {
    label.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
