//! Test plugin `bad_init`: a strategy whose `init` always fails, so the host must reject the plugin version.

wit_bindgen::generate!({ world: "strategy", path: "../../../wit" });

use aragora::control_plane::types::{CallContext, Candidate, CandidateDetails, TaskInfo};
use exports::aragora::control_plane::selector::Guest;

struct BadInit;

impl Guest for BadInit {
    fn init(_config: String) -> Result<(), String> {
        Err("bad_init refuses to start".to_string())
    }

    fn select(
        _ctx: CallContext,
        _task: TaskInfo,
        _candidates: Vec<Candidate>,
        _details: Vec<CandidateDetails>,
    ) -> Result<u32, String> {
        // Never reached by a correct host: a failed init rejects the version.
        Ok(0)
    }
}

export!(BadInit);
