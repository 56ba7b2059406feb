//! Test plugin `trap`: a strategy whose `select` traps at once for tasks of type `misbehave`, for the host's handling
//! of a crashed call. Other tasks get index 0, so the plugin passes the host's load-time trial call.

wit_bindgen::generate!({ world: "strategy", path: "../../../wit" });

use aragora::control_plane::types::{CallContext, Candidate, CandidateDetails, TaskInfo};
use exports::aragora::control_plane::selector::Guest;

struct Trap;

impl Guest for Trap {
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn select(
        _ctx: CallContext,
        task: TaskInfo,
        _candidates: Vec<Candidate>,
        _details: Vec<CandidateDetails>,
    ) -> Result<u32, String> {
        if task.task_type != "misbehave" {
            return Ok(0);
        }
        // The raw `unreachable` instruction rather than a panic: the trap comes without a panic message on stderr,
        // so a test sees the trap alone.
        core::arch::wasm32::unreachable()
    }
}

export!(Trap);
