//! Policy `rules_policy`: Aragora's declarative control-plane policy as a plugin. Its `config` is one rule set
//! (what `POST /policies` takes): which tasks it covers (`task_types`, `capabilities`, `workspaces`; empty lists
//! cover all), which agents may take them (`agent_allowlist`, `agent_blocklist`) and where
//! (`region_constraint`: `allowed_regions`, `blocked_regions`, `require_data_residency`), and how hard it says no
//! (`enforcement_level`: `hard` and `soft` deny, `warn` lets the task through with a violation on record).
//!
//! Only dispatch is judged: a rule about agents needs an agent. Submits and registrations are allowed.

wit_bindgen::generate!({ world: "policy", path: "../../wit" });

use aragora::control_plane::types::{AgentInfo, CallContext, Decision, DispatchRequest, Labels, PolicyInput, TaskInfo};
use exports::aragora::control_plane::evaluator::Guest;
use serde_json::{Map, Value};
use std::cell::RefCell;

/// How a broken rule answers.
#[derive(Clone, Copy, PartialEq)]
enum Enforcement {
    /// Deny (Aragora's `soft` means "deny unless overridden"; no override exists here, so it denies too).
    Deny,
    /// Allow, with a violation on record.
    Warn,
}

struct Rules {
    name: String,
    enabled: bool,
    task_types: Vec<String>,
    capabilities: Vec<String>,
    workspaces: Vec<String>,
    agent_allowlist: Vec<String>,
    agent_blocklist: Vec<String>,
    allowed_regions: Vec<String>,
    blocked_regions: Vec<String>,
    require_data_residency: bool,
    enforcement: Enforcement,
    region_label: String,
    data_region_label: String,
    workspace_label: String,
}

thread_local! {
    // Set by `init`, which the host calls once per instance before `evaluate`; `None` only if the host broke that
    // promise, and then every dispatch is denied rather than guessed at.
    static RULES: RefCell<Option<Rules>> = const { RefCell::new(None) };
}

struct RulesPolicy;

impl Guest for RulesPolicy {
    fn init(config: String) -> Result<(), String> {
        RULES.set(Some(parse(&config)?));
        Ok(())
    }

    fn evaluate(_ctx: CallContext, input: PolicyInput) -> Decision {
        RULES.with_borrow(|rules| match (rules, input) {
            (None, _) => Decision::Deny("rules_policy was not initialised".to_string()),
            (Some(rules), PolicyInput::Dispatch(request)) => rules.dispatch(&request),
            (Some(_), PolicyInput::Submit(_) | PolicyInput::Register(_)) => Decision::Allow,
        })
    }
}

impl Rules {
    fn dispatch(&self, request: &DispatchRequest) -> Decision {
        if !self.enabled || !self.covers(&request.task) {
            return Decision::Allow;
        }
        match self.broken_rule(&request.task, &request.agent) {
            None => Decision::Allow,
            Some(why) => {
                let reason = format!("policy {}: {why}", self.name);
                match self.enforcement {
                    Enforcement::Deny => Decision::Deny(reason),
                    Enforcement::Warn => Decision::Warn(reason),
                }
            }
        }
    }

    /// Whether the rule set speaks about this task: Aragora's `matches`, where a value the task lacks does not
    /// exclude it.
    fn covers(&self, task: &TaskInfo) -> bool {
        let listed = |list: &[String], value: &str| list.is_empty() || list.iter().any(|item| item == value);
        let any_listed = |list: &[String], values: &[String]| {
            list.is_empty() || values.is_empty() || values.iter().any(|value| list.contains(value))
        };
        listed(&self.task_types, &task.task_type)
            && any_listed(&self.capabilities, &task.required_capabilities)
            && label(&task.labels, &self.workspace_label).is_none_or(|workspace| listed(&self.workspaces, workspace))
    }

    /// The first rule the agent breaks for this task, in Aragora's order: block list, allow list, region block
    /// list, region allow list, data residency.
    fn broken_rule(&self, task: &TaskInfo, agent: &AgentInfo) -> Option<String> {
        let id = &agent.agent_id;
        if self.agent_blocklist.contains(id) {
            return Some(format!("agent {id} is on the block list"));
        }
        if !self.agent_allowlist.is_empty() && !self.agent_allowlist.contains(id) {
            return Some(format!("agent {id} is not on the allow list"));
        }
        let region = label(&agent.labels, &self.region_label).unwrap_or("");
        let shown = if region.is_empty() { "no region".to_string() } else { format!("region {region}") };
        if self.blocked_regions.iter().any(|blocked| blocked == region) {
            return Some(format!("agent {id} is in blocked {shown}"));
        }
        if !self.allowed_regions.is_empty() && !self.allowed_regions.iter().any(|allowed| allowed == region) {
            return Some(format!("agent {id} has {shown}, not one of {}", self.allowed_regions.join(", ")));
        }
        if self.require_data_residency
            && let Some(data_region) = label(&task.labels, &self.data_region_label)
            && region != data_region
        {
            return Some(format!("task data must stay in {data_region}; agent {id} has {shown}"));
        }
        None
    }
}

/// The first value of `key` (only labels the manifest lists reach the plugin).
fn label<'a>(labels: &'a Labels, key: &str) -> Option<&'a str> {
    labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Parses the rule set. Unknown keys are refused so that a misspelt rule is not silently ignored.
fn parse(config: &str) -> Result<Rules, String> {
    let value: Value = serde_json::from_str(config).map_err(|e| format!("config is not valid JSON: {e}"))?;
    let Value::Object(mut table) = value else { return Err("config must be a table".to_string()) };
    let mut region = match table.remove("region_constraint") {
        None => Map::new(),
        Some(Value::Object(region)) => region,
        Some(other) => return Err(format!("`region_constraint` must be a table, got {other}")),
    };
    let enforcement = match take_string(&mut table, "enforcement_level", "hard")?.as_str() {
        "hard" | "soft" => Enforcement::Deny,
        "warn" => Enforcement::Warn,
        other => return Err(format!("`enforcement_level` must be hard, soft or warn, got \"{other}\"")),
    };
    let rules = Rules {
        name: take_string(&mut table, "name", "rules")?,
        enabled: take_bool(&mut table, "enabled", true)?,
        task_types: take_list(&mut table, "task_types")?,
        capabilities: take_list(&mut table, "capabilities")?,
        workspaces: take_list(&mut table, "workspaces")?,
        agent_allowlist: take_list(&mut table, "agent_allowlist")?,
        agent_blocklist: take_list(&mut table, "agent_blocklist")?,
        allowed_regions: take_list(&mut region, "allowed_regions")?,
        blocked_regions: take_list(&mut region, "blocked_regions")?,
        require_data_residency: take_bool(&mut region, "require_data_residency", false)?,
        enforcement,
        region_label: take_string(&mut table, "region_label", "region")?,
        data_region_label: take_string(&mut table, "data_region_label", "data_region")?,
        workspace_label: take_string(&mut table, "workspace_label", "workspace_id")?,
    };
    // Aragora's too, but read by nothing there either; and the rule set's own notes.
    region.remove("allow_cross_region");
    for note in ["description", "scope", "metadata"] {
        table.remove(note);
    }
    if let Some(key) = table.keys().next() {
        return Err(format!("unknown config key `{key}`"));
    }
    if let Some(key) = region.keys().next() {
        return Err(format!("unknown config key `region_constraint.{key}`"));
    }
    Ok(rules)
}

fn take_list(table: &mut Map<String, Value>, key: &str) -> Result<Vec<String>, String> {
    match table.remove(key) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                Value::String(text) => Ok(text),
                other => Err(format!("`{key}` must list strings, got {other}")),
            })
            .collect(),
        Some(other) => Err(format!("`{key}` must be a list of strings, got {other}")),
    }
}

fn take_bool(table: &mut Map<String, Value>, key: &str, default: bool) -> Result<bool, String> {
    match table.remove(key) {
        None => Ok(default),
        Some(Value::Bool(value)) => Ok(value),
        Some(other) => Err(format!("`{key}` must be true or false, got {other}")),
    }
}

fn take_string(table: &mut Map<String, Value>, key: &str, default: &str) -> Result<String, String> {
    match table.remove(key) {
        None => Ok(default.to_string()),
        Some(Value::String(value)) if !value.is_empty() => Ok(value),
        Some(other) => Err(format!("`{key}` must be a non-empty string, got {other}")),
    }
}

export!(RulesPolicy);
