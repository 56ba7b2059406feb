//! Policy `region_policy`: grants a capability to agents whose region label is in `allowed_regions` (and takes it
//! from agents that claim it without one), makes sensitive tasks require it, and denies any dispatch that would
//! still send a sensitive task elsewhere.

wit_bindgen::generate!({ world: "policy", path: "../../wit" });

use aragora::control_plane::types::{
    AgentInfo, CallContext, Decision, DispatchRequest, Labels, Modification, PolicyInput, RegisterChanges,
    SubmitChanges, SubmitRequest,
};
use exports::aragora::control_plane::evaluator::Guest;
use serde_json::{Map, Value};
use std::cell::RefCell;

struct Config {
    allowed_regions: Vec<String>,
    sensitive_label: String,
    region_label: String,
    capability: String,
}

thread_local! {
    // Set by `init`, which the host calls once per instance before `evaluate`; `None` only if the host broke that
    // promise, in which case every call denies rather than guess at the regions.
    static CONFIG: RefCell<Option<Config>> = const { RefCell::new(None) };
}

struct RegionPolicy;

impl Guest for RegionPolicy {
    fn init(config: String) -> Result<(), String> {
        let config = parse_config(&config)?;
        CONFIG.set(Some(config));
        Ok(())
    }

    fn evaluate(_ctx: CallContext, input: PolicyInput) -> Decision {
        CONFIG.with_borrow(|config| match config {
            Some(config) => match input {
                PolicyInput::Register(agent) => config.register(&agent),
                PolicyInput::Submit(request) => config.submit(&request),
                PolicyInput::Dispatch(request) => config.dispatch(&request),
            },
            None => Decision::Deny("region_policy was not initialised".to_string()),
        })
    }
}

impl Config {
    fn register(&self, agent: &AgentInfo) -> Decision {
        if self.in_allowed_region(&agent.labels) {
            // Granted even when the agent already declares it: the change is idempotent and keeps the rule simple.
            return Decision::Modify(Modification::Register(RegisterChanges {
                add_capabilities: vec![self.capability.clone()],
                remove_capabilities: Vec::new(),
            }));
        }
        // An agent may not vouch for its own region: the capability is ours to grant.
        if agent.capabilities.contains(&self.capability) {
            return Decision::Modify(Modification::Register(RegisterChanges {
                add_capabilities: Vec::new(),
                remove_capabilities: vec![self.capability.clone()],
            }));
        }
        Decision::Allow
    }

    fn submit(&self, request: &SubmitRequest) -> Decision {
        if !self.is_sensitive(&request.task.labels) {
            return Decision::Allow;
        }
        // Requiring the capability lets the claim index do the routing; `dispatch` below is only a backstop.
        Decision::Modify(Modification::Submit(SubmitChanges {
            priority: None,
            add_capabilities: vec![self.capability.clone()],
            metadata: Vec::new(),
        }))
    }

    fn dispatch(&self, request: &DispatchRequest) -> Decision {
        if !self.is_sensitive(&request.task.labels) || self.in_allowed_region(&request.agent.labels) {
            return Decision::Allow;
        }
        let whereabouts = match label(&request.agent.labels, &self.region_label) {
            Some(region) => format!("is in region {region}"),
            None => format!("has no `{}` label", self.region_label),
        };
        Decision::Deny(format!(
            "sensitive task {} may only go to agents in regions {}; agent {} {whereabouts}",
            request.task.id,
            self.allowed_regions.join(", "),
            request.agent.agent_id,
        ))
    }

    fn in_allowed_region(&self, labels: &Labels) -> bool {
        label(labels, &self.region_label)
            .is_some_and(|region| self.allowed_regions.iter().any(|allowed| allowed == region))
    }

    fn is_sensitive(&self, labels: &Labels) -> bool {
        label(labels, &self.sensitive_label)
            .is_some_and(|value| ["true", "1", "yes"].iter().any(|yes| value.eq_ignore_ascii_case(yes)))
    }
}

/// The first value of `key`. Only labels that the manifest lists reach the plugin, so `region_label` and
/// `sensitive_label` must be among them.
fn label<'a>(labels: &'a Labels, key: &str) -> Option<&'a str> {
    labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Parses the `[config]` table. `allowed_regions` has no default: an empty list would silently strand every
/// sensitive task, so it has to be written out. Unknown keys are refused so that a misspelt one is not ignored.
fn parse_config(config: &str) -> Result<Config, String> {
    let value: Value = serde_json::from_str(config).map_err(|e| format!("config is not valid JSON: {e}"))?;
    let Value::Object(mut table) = value else {
        return Err("config must be a table".to_string());
    };
    let allowed_regions = match table.remove("allowed_regions") {
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                Value::String(region) if !region.is_empty() => Ok(region),
                other => Err(format!("config key `allowed_regions` must list non-empty strings, got {other}")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(other) => {
            return Err(format!("config key `allowed_regions` must be a list of strings, got {other}"));
        }
        None => return Err("config key `allowed_regions` is missing".to_string()),
    };
    let sensitive_label = take_string(&mut table, "sensitive_label", "sensitive")?;
    let region_label = take_string(&mut table, "region_label", "region")?;
    let capability = take_string(&mut table, "capability", "region:approved")?;
    // The host lower-cases capabilities, so a capability with capitals could never be matched.
    if capability != capability.to_lowercase() {
        return Err(format!("config key `capability` must be lower-case, got \"{capability}\""));
    }
    if let Some(key) = table.keys().next() {
        return Err(format!("unknown config key `{key}`"));
    }
    Ok(Config { allowed_regions, sensitive_label, region_label, capability })
}

fn take_string(table: &mut Map<String, Value>, key: &str, default: &str) -> Result<String, String> {
    match table.remove(key) {
        None => Ok(default.to_string()),
        Some(Value::String(value)) if !value.is_empty() => Ok(value),
        Some(other) => Err(format!("config key `{key}` must be a non-empty string, got {other}")),
    }
}

export!(RegionPolicy);
