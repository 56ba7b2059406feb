//! Test policy `hand_written_rules`: the rule set "agents `agent-3` and `agent-7` are blocked; only regions
//! `eu-west-1` and `eu-central-1` may take work" written by hand, as a policy team would without rule sets. The
//! tests check that `rules_policy` configured with the same rules decides every case alike.

wit_bindgen::generate!({ world: "policy", path: "../../../wit" });

use aragora::control_plane::types::{CallContext, Decision, PolicyInput};
use exports::aragora::control_plane::evaluator::Guest;

const BLOCKED_AGENTS: [&str; 2] = ["agent-3", "agent-7"];
const ALLOWED_REGIONS: [&str; 2] = ["eu-west-1", "eu-central-1"];

struct HandWrittenRules;

impl Guest for HandWrittenRules {
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn evaluate(_ctx: CallContext, input: PolicyInput) -> Decision {
        let PolicyInput::Dispatch(request) = input else { return Decision::Allow };
        let agent = &request.agent;
        if BLOCKED_AGENTS.contains(&agent.agent_id.as_str()) {
            return Decision::Deny(format!("{} is blocked", agent.agent_id));
        }
        let region = agent.labels.iter().find(|(key, _)| key == "region").map(|(_, value)| value.as_str());
        match region {
            Some(region) if ALLOWED_REGIONS.contains(&region) => Decision::Allow,
            _ => Decision::Deny(format!("{} is outside the allowed regions", agent.agent_id)),
        }
    }
}

export!(HandWrittenRules);
