//! Policy `payload_size_policy`: denies a submitted task whose JSON payload is over `max_payload_bytes`
//! (default 65536); registrations and dispatches always pass. Only the size is needed, never the payload itself.

wit_bindgen::generate!({ world: "policy", path: "../../wit" });

use aragora::control_plane::types::{CallContext, Decision, PolicyInput};
use exports::aragora::control_plane::evaluator::Guest;
use serde_json::Value;
use std::cell::Cell;

const DEFAULT_MAX_PAYLOAD_BYTES: u64 = 65536;

thread_local! {
    // Set by `init`, which the host calls once per instance before `evaluate`. An instance may serve many calls,
    // but the limit is the same for all of them, so this is configuration rather than state between calls.
    static MAX_PAYLOAD_BYTES: Cell<u64> = const { Cell::new(DEFAULT_MAX_PAYLOAD_BYTES) };
}

struct PayloadSizePolicy;

impl Guest for PayloadSizePolicy {
    fn init(config: String) -> Result<(), String> {
        MAX_PAYLOAD_BYTES.set(parse_config(&config)?);
        Ok(())
    }

    fn evaluate(_ctx: CallContext, input: PolicyInput) -> Decision {
        let PolicyInput::Submit(request) = input else {
            return Decision::Allow;
        };
        let max = MAX_PAYLOAD_BYTES.get();
        if u64::from(request.payload_bytes) > max {
            Decision::Deny(format!("payload is {} bytes, over the {max}-byte limit", request.payload_bytes))
        } else {
            Decision::Allow
        }
    }
}

/// Reads `max_payload_bytes` from the `[config]` table. Unknown keys are refused: a misspelt key would otherwise
/// leave the default limit in force without anyone noticing.
fn parse_config(config: &str) -> Result<u64, String> {
    let value: Value = serde_json::from_str(config).map_err(|e| format!("config is not valid JSON: {e}"))?;
    let Value::Object(table) = value else {
        return Err("config must be a table".to_string());
    };
    let mut max = DEFAULT_MAX_PAYLOAD_BYTES;
    for (key, value) in &table {
        match key.as_str() {
            "max_payload_bytes" => {
                max = value.as_u64().ok_or_else(|| {
                    format!("config key `max_payload_bytes` must be a non-negative integer, got {value}")
                })?;
            }
            other => return Err(format!("unknown config key `{other}`")),
        }
    }
    Ok(max)
}

export!(PayloadSizePolicy);
