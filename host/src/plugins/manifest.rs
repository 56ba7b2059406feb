//! `NAME.toml`, the optional manifest beside `NAME.wasm`: the kind it must be, evaluation order, error handling,
//! which metadata keys become labels, call limits and the plugin's own `[config]`.
//!
//! ```toml
//! kind = "policy"            # strategy | policy | health-probe; checked against the component
//! order = 10                 # policies run in ascending order, then by name
//! on_error = "deny"          # policies: deny (fail closed, the default) or allow
//! labels = ["region"]        # metadata keys passed to the plugin as labels
//! needs_payload = false      # submit policies: also pass the payload (≤ 64 KiB)
//! needs_details = false      # strategies: also pass candidate-details (ids, models, providers, labels)
//! max_candidates = 8         # strategies: choose among at most this many waiting agents, longest-waiting first
//!
//! [limits]                   # each capped by the server maxima
//! fuel = 1000000
//! deadline_ms = 5
//! memory_mib = 16
//! table_elements = 10000
//!
//! [config]                   # passed to the plugin's init as JSON
//! max_payload_bytes = 65536
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::PluginKind;
use super::runtime::CallLimits;

/// What a policy does when it cannot answer (trap, timeout, bad answer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Fail closed: treat the failure as a deny.
    #[default]
    Deny,
    /// Fail open: treat the failure as an allow (and count it).
    Allow,
}

/// Per-plugin overrides of the call limits.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestLimits {
    /// Fuel per call.
    pub fuel: Option<u64>,
    /// Deadline per call in milliseconds (decimals allowed).
    pub deadline_ms: Option<f64>,
    /// Linear memory cap in MiB.
    pub memory_mib: Option<u64>,
    /// Table cap in elements.
    pub table_elements: Option<u64>,
}

/// A parsed manifest. Every field is optional; an absent manifest equals an empty one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The kind the component must be.
    pub kind: Option<PluginKind>,
    /// Evaluation order among policies (ascending; default 100).
    pub order: Option<i64>,
    /// Policy failure handling.
    #[serde(default)]
    pub on_error: OnError,
    /// Metadata keys passed as labels, in this order.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Submit policies: pass the payload too.
    #[serde(default)]
    pub needs_payload: bool,
    /// Strategies: pass `candidate-details` too (implied by `labels`).
    #[serde(default)]
    pub needs_details: bool,
    /// Strategies: how many waiting agents to choose among at most, the longest-waiting first (default and cap:
    /// the server's `MAX_STRATEGY_CANDIDATES`). The built-ins ask for 8: routing costs the same with 10 or 1,000
    /// agents waiting.
    pub max_candidates: Option<usize>,
    /// Call limit overrides.
    #[serde(default)]
    pub limits: ManifestLimits,
    /// The plugin's own configuration, passed to `init` as JSON.
    #[serde(default)]
    pub config: toml::Table,
}

/// Largest `deadline_ms` a manifest may write (the server maxima cap it further); keeps the conversion to a
/// `Duration` in range.
const MAX_DEADLINE_MS: f64 = 3_600_000.0;

/// Order of policies without one in their manifest.
pub const DEFAULT_ORDER: i64 = 100;

impl Manifest {
    /// Parses manifest text; errors name the offending key and line.
    pub fn parse(text: &str) -> Result<Manifest, String> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| e.to_string().trim().to_string())?;
        if let Some(ms) = manifest.limits.deadline_ms
            && !(ms.is_finite() && ms > 0.0 && ms <= MAX_DEADLINE_MS)
        {
            return Err(format!(
                "limits.deadline_ms must be a positive number of milliseconds up to one hour, got {ms}"
            ));
        }
        if manifest.max_candidates == Some(0) {
            return Err("max_candidates must be at least 1".to_string());
        }
        for label in &manifest.labels {
            if label.is_empty() || label.len() > 64 {
                return Err(format!("labels: {label:?} must be 1 to 64 characters"));
            }
        }
        Ok(manifest)
    }

    /// The `[config]` table as the JSON text passed to `init`.
    pub fn config_json(&self) -> String {
        serde_json::to_string(&self.config).expect("a TOML table is always valid JSON")
    }

    /// Evaluation order among policies.
    pub fn order(&self) -> i64 {
        self.order.unwrap_or(DEFAULT_ORDER)
    }

    /// The call limits: the defaults overridden by this manifest, each capped by `maxima`.
    pub fn limits(&self, defaults: CallLimits, maxima: CallLimits) -> CallLimits {
        let overrides = &self.limits;
        CallLimits {
            fuel: overrides.fuel.unwrap_or(defaults.fuel),
            deadline: overrides.deadline_ms.map(|ms| Duration::from_secs_f64(ms / 1000.0)).unwrap_or(defaults.deadline),
            memory_bytes: overrides
                .memory_mib
                .map(|mib| usize::try_from(mib.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX))
                .unwrap_or(defaults.memory_bytes),
            table_elements: overrides
                .table_elements
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
                .unwrap_or(defaults.table_elements),
        }
        .capped_by(maxima)
    }
}
