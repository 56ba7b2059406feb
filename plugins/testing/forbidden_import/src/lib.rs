//! Test plugin `forbidden_import`: a strategy that reads a key-value store, so the component imports
//! `wasi:keyvalue`, which is outside the sandbox's allowlist: the host must refuse it at load, naming the interface.

wit_bindgen::generate!({ world: "strategy-with-store", path: "wit", generate_all });

use aragora::control_plane::types::{CallContext, Candidate, CandidateDetails, TaskInfo};
use exports::aragora::control_plane::selector::Guest;

struct ForbiddenImport;

impl Guest for ForbiddenImport {
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn select(
        _ctx: CallContext,
        _task: TaskInfo,
        candidates: Vec<Candidate>,
        _details: Vec<CandidateDetails>,
    ) -> Result<u32, String> {
        let answer = wasi::keyvalue::store::get("choice");
        Ok(answer % candidates.len().max(1) as u32)
    }
}

export!(ForbiddenImport);
