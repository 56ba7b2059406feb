//! Test plugin `highest_index`: a well-behaved strategy that always picks the last candidate, which makes a hot
//! swap visible against the built-ins (they favour low indices on ties).

wit_bindgen::generate!({ world: "strategy", path: "../../../wit" });

use aragora::control_plane::types::{CallContext, Candidate, CandidateDetails, TaskInfo};
use exports::aragora::control_plane::selector::Guest;

struct HighestIndex;

impl Guest for HighestIndex {
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn select(
        _ctx: CallContext,
        task: TaskInfo,
        candidates: Vec<Candidate>,
        _details: Vec<CandidateDetails>,
    ) -> Result<u32, String> {
        if task.task_type == "misbehave" {
            // One past the end: the host must treat it as a failed call.
            return Ok(candidates.len() as u32);
        }
        candidates.len().checked_sub(1).map(|index| index as u32).ok_or_else(|| "no candidates".to_string())
    }
}

export!(HighestIndex);
