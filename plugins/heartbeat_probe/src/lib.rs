//! Health probe `heartbeat_probe`: judges an agent from the host's observations alone (heartbeat age, recent
//! failure rate, median latency and the HTTP check); the message names every threshold that was crossed.

wit_bindgen::generate!({ world: "health-probe", path: "../../wit" });

use aragora::control_plane::types::{AgentInfo, CallContext, HealthStatus, HttpCheck, Observations, ProbeResult};
use exports::aragora::control_plane::prober::Guest;
use serde_json::Value;
use std::cell::Cell;

#[derive(Clone, Copy)]
struct Config {
    max_heartbeat_age_ms: u64,
    degraded_heartbeat_age_ms: u64,
    max_failure_rate: f64,
    degraded_failure_rate: f64,
    /// Below this many recent tasks the failure rate is too noisy to call an agent unhealthy.
    min_samples: u32,
    /// 0 turns the latency check off.
    slow_p50_ms: u32,
}

const DEFAULT_CONFIG: Config = Config {
    max_heartbeat_age_ms: 30_000,
    degraded_heartbeat_age_ms: 15_000,
    max_failure_rate: 0.5,
    degraded_failure_rate: 0.2,
    min_samples: 4,
    slow_p50_ms: 0,
};

thread_local! {
    // Set by `init`, which the host calls once per instance before `probe`; configuration, not state between calls.
    static CONFIG: Cell<Config> = const { Cell::new(DEFAULT_CONFIG) };
}

struct HeartbeatProbe;

impl Guest for HeartbeatProbe {
    fn init(config: String) -> Result<(), String> {
        CONFIG.set(parse_config(&config)?);
        Ok(())
    }

    fn probe(_ctx: CallContext, _agent: AgentInfo, observed: Observations) -> ProbeResult {
        CONFIG.get().judge(&observed)
    }
}

impl Config {
    fn judge(&self, o: &Observations) -> ProbeResult {
        let mut unhealthy = Vec::new();
        let mut degraded = Vec::new();

        let age = o.heartbeat_age_ms;
        if age > self.max_heartbeat_age_ms {
            unhealthy.push(format!("heartbeat {age} ms ago, over the {} ms limit", self.max_heartbeat_age_ms));
        } else if age > self.degraded_heartbeat_age_ms {
            degraded.push(format!("heartbeat {age} ms ago, over {} ms", self.degraded_heartbeat_age_ms));
        }

        if let Some(http) = &o.http {
            match (&http.error, http.status) {
                (Some(error), _) => unhealthy.push(format!("http check failed: {error}")),
                (None, None) => unhealthy.push("http check got no response".to_string()),
                (None, Some(status)) if status >= 500 => {
                    unhealthy.push(format!("http check returned {status}"));
                }
                (None, Some(status)) if status >= 400 => {
                    degraded.push(format!("http check returned {status}"));
                }
                (None, Some(_)) => {}
            }
        }

        let failures = o.recent_failures;
        // Summed in u64: two u32 counts can overflow a u32.
        let samples = u64::from(o.recent_successes) + u64::from(failures);
        if samples > 0 {
            let rate = f64::from(failures) / samples as f64;
            if samples >= u64::from(self.min_samples) && rate > self.max_failure_rate {
                unhealthy.push(format!(
                    "{failures}/{samples} recent tasks failed (rate {rate:.2}, over the {} limit)",
                    self.max_failure_rate
                ));
            } else if rate > self.degraded_failure_rate {
                degraded.push(format!(
                    "{failures}/{samples} recent tasks failed (rate {rate:.2}, over {})",
                    self.degraded_failure_rate
                ));
            }
        }

        let p50 = o.latency_p50_ms;
        if self.slow_p50_ms != 0 && p50 > self.slow_p50_ms {
            degraded.push(format!("median latency {p50} ms, over {} ms", self.slow_p50_ms));
        }

        if !unhealthy.is_empty() {
            ProbeResult { status: HealthStatus::Unhealthy, message: unhealthy.join("; ") }
        } else if !degraded.is_empty() {
            ProbeResult { status: HealthStatus::Degraded, message: degraded.join("; ") }
        } else {
            ProbeResult { status: HealthStatus::Healthy, message: summary(o, samples) }
        }
    }
}

/// What a healthy agent looks like, for example "heartbeat 1200 ms ago, 0/12 recent failures, http 200".
fn summary(o: &Observations, samples: u64) -> String {
    let mut message =
        format!("heartbeat {} ms ago, {}/{samples} recent failures", o.heartbeat_age_ms, o.recent_failures);
    if o.latency_p50_ms > 0 {
        message.push_str(&format!(", p50 {} ms", o.latency_p50_ms));
    }
    if let Some(HttpCheck { status: Some(status), .. }) = &o.http {
        message.push_str(&format!(", http {status}"));
    }
    message
}

/// Parses the `[config]` table over the defaults. Unknown keys are refused so that a misspelt one is not silently
/// replaced by its default, and swapped thresholds are refused because they would make a level unreachable.
fn parse_config(config: &str) -> Result<Config, String> {
    let value: Value = serde_json::from_str(config).map_err(|e| format!("config is not valid JSON: {e}"))?;
    let Value::Object(table) = value else {
        return Err("config must be a table".to_string());
    };
    let mut c = DEFAULT_CONFIG;
    for (key, value) in &table {
        match key.as_str() {
            "max_heartbeat_age_ms" => c.max_heartbeat_age_ms = integer(key, value)?,
            "degraded_heartbeat_age_ms" => c.degraded_heartbeat_age_ms = integer(key, value)?,
            "max_failure_rate" => c.max_failure_rate = rate(key, value)?,
            "degraded_failure_rate" => c.degraded_failure_rate = rate(key, value)?,
            "min_samples" => c.min_samples = small_integer(key, value)?,
            "slow_p50_ms" => c.slow_p50_ms = small_integer(key, value)?,
            other => return Err(format!("unknown config key `{other}`")),
        }
    }
    if c.degraded_heartbeat_age_ms > c.max_heartbeat_age_ms {
        return Err(format!(
            "config key `degraded_heartbeat_age_ms` ({}) is over `max_heartbeat_age_ms` ({})",
            c.degraded_heartbeat_age_ms, c.max_heartbeat_age_ms
        ));
    }
    if c.degraded_failure_rate > c.max_failure_rate {
        return Err(format!(
            "config key `degraded_failure_rate` ({}) is over `max_failure_rate` ({})",
            c.degraded_failure_rate, c.max_failure_rate
        ));
    }
    Ok(c)
}

fn integer(key: &str, value: &Value) -> Result<u64, String> {
    value.as_u64().ok_or_else(|| format!("config key `{key}` must be a non-negative integer, got {value}"))
}

fn small_integer(key: &str, value: &Value) -> Result<u32, String> {
    u32::try_from(integer(key, value)?)
        .map_err(|_| format!("config key `{key}` must be at most {}, got {value}", u32::MAX))
}

fn rate(key: &str, value: &Value) -> Result<f64, String> {
    // `as_f64` also takes integers, so a TOML `max_failure_rate = 1` is accepted.
    match value.as_f64() {
        Some(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err(format!("config key `{key}` must be a number from 0 to 1, got {value}")),
    }
}

export!(HeartbeatProbe);
