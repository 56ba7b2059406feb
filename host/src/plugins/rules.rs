//! Rule policies: Aragora's declarative control-plane policy (`POST /policies`: agent allow and block lists,
//! region allow and block lists, data residency, the task types, capabilities and workspaces it covers) turned into
//! an ordinary policy plugin, the built-in `rules_policy` component with the rule set as its `[config]`. So a rule
//! policy loads, hot-swaps, reports and is shared across a fleet exactly as a policy written in code.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::builtin;
use crate::model::{ValidationError, is_plugin_name, normalize_capability, sha256_hex};

/// The built-in component that runs rule sets.
pub const RULES_PLUGIN: &str = "rules_policy";

/// The task and agent metadata keys a rule set reads: the agent's region, the task's data region and workspace.
pub const RULE_LABELS: [&str; 3] = ["region", "data_region", "workspace_id"];

/// Largest `priority` magnitude: it becomes the plugin's evaluation order.
const MAX_PRIORITY: i64 = 1_000_000;

/// An Aragora-style rule set, as `POST /policies` takes it.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleSet {
    /// The policy's name, also its plugin's: 1 to 64 letters, digits, `_`, `.` or `-`.
    pub name: String,
    /// What it is for.
    #[serde(default)]
    pub description: String,
    /// Aragora's scope label (`global`, `task_type`, …): informational; the lists below decide what it covers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Task types it covers (empty: all).
    #[serde(default)]
    pub task_types: Vec<String>,
    /// It covers tasks requiring any of these capabilities (empty: all).
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Workspaces (the task's `workspace_id` metadata) it covers (empty: all; a task without one is covered).
    #[serde(default)]
    pub workspaces: Vec<String>,
    /// Only these agents may take covered tasks (empty: any).
    #[serde(default)]
    pub agent_allowlist: Vec<String>,
    /// These agents may never take covered tasks (checked first).
    #[serde(default)]
    pub agent_blocklist: Vec<String>,
    /// Where covered tasks may run, by the agent's `region` metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region_constraint: Option<RegionConstraint>,
    /// SLA limits: not enforced by rule sets yet, so only `null` is accepted.
    #[serde(default, skip_serializing)]
    #[schema(value_type = Option<Object>)]
    pub sla: Option<Value>,
    /// `hard` (default) or `soft`: a broken rule denies; `warn`: it lets the task through and records a violation.
    #[serde(default = "hard")]
    pub enforcement_level: String,
    /// A disabled rule set is installed but allows everything.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Higher is evaluated first (the plugin's order is `100 - priority`).
    #[serde(default)]
    pub priority: i64,
    /// Free-form notes kept with the rule set.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
}

/// Where covered tasks may run.
#[derive(Clone, Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegionConstraint {
    /// Agents must be in one of these regions (empty: any).
    #[serde(default)]
    pub allowed_regions: Vec<String>,
    /// Agents in these regions may not take covered tasks.
    #[serde(default)]
    pub blocked_regions: Vec<String>,
    /// A task with `data_region` metadata must run in that region.
    #[serde(default)]
    pub require_data_residency: bool,
    /// Aragora's field, read by nothing there either; kept as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_cross_region: Option<bool>,
}

fn hard() -> String {
    "hard".to_string()
}

fn yes() -> bool {
    true
}

impl RuleSet {
    /// Checks the rule set, lower-casing capabilities as the rest of the API does; a valid one has a manifest.
    pub fn validated(mut self) -> Result<RuleSet, ValidationError> {
        if !is_plugin_name(&self.name) {
            return Err(ValidationError::new("name", "must be 1 to 64 letters, digits, '_', '.' or '-'"));
        }
        if !matches!(self.enforcement_level.as_str(), "hard" | "soft" | "warn") {
            return Err(ValidationError::new("enforcement_level", "must be hard, soft or warn"));
        }
        if self.sla.as_ref().is_some_and(|sla| !sla.is_null()) {
            return Err(ValidationError::new(
                "sla",
                "SLA limits are not enforced by rule sets yet; leave `sla` out (task timeouts bound execution)",
            ));
        }
        if self.priority.abs() > MAX_PRIORITY {
            return Err(ValidationError::new("priority", format!("must be within ±{MAX_PRIORITY}")));
        }
        self.capabilities =
            self.capabilities.iter().map(|raw| normalize_capability("capabilities", raw)).collect::<Result<_, _>>()?;
        self.manifest()?; // metadata a manifest cannot hold (a null) is refused here, naming `metadata`
        Ok(self)
    }

    /// The manifest that installs this rule set as a policy plugin: the rules as `[config]`, the labels they read,
    /// and `on_error = "deny"` (a rule set that cannot answer must not let work through).
    pub fn manifest(&self) -> Result<String, ValidationError> {
        let mut config = serde_json::to_value(self).map_err(|e| ValidationError::new("body", e.to_string()))?;
        if let Some(fields) = config.as_object_mut() {
            fields.remove("priority");
        }
        let config = toml::Value::try_from(config)
            .map_err(|e| ValidationError::new("metadata", format!("cannot be kept in a manifest: {e}")))?;
        let mut manifest = toml::Table::new();
        manifest.insert("kind".into(), "policy".into());
        manifest.insert("order".into(), (100 - self.priority).into());
        manifest.insert("on_error".into(), "deny".into());
        manifest.insert("labels".into(), RULE_LABELS.iter().map(|l| toml::Value::from(*l)).collect::<Vec<_>>().into());
        manifest.insert("config".into(), config);
        toml::to_string(&manifest).map_err(|e| ValidationError::new("body", e.to_string()))
    }
}

/// The rules component's bytes (embedded in the binary).
pub fn rules_component() -> &'static [u8] {
    builtin::builtin_policy_bytes(RULES_PLUGIN).expect("the build embeds rules_policy")
}

/// Whether a policy version with this sha256 runs a rule set (its `config` is then the rule set).
pub fn is_rule_policy(sha256: &str) -> bool {
    static RULES_SHA: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    RULES_SHA.get_or_init(|| sha256_hex(rules_component())) == sha256
}
