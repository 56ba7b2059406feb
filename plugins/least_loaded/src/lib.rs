//! Built-in strategy `least_loaded`: the candidate with the fewest tasks in flight; ties go to the one that has
//! completed the fewest tasks, then to the lowest index (the host lists candidates in a stable order).

wit_bindgen::generate!({ world: "strategy", path: "../../wit" });

use aragora::control_plane::types::{CallContext, Candidate, CandidateDetails, TaskInfo};
use exports::aragora::control_plane::selector::Guest;

struct LeastLoaded;

impl Guest for LeastLoaded {
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn select(
        _ctx: CallContext,
        _task: TaskInfo,
        candidates: Vec<Candidate>,
        _details: Vec<CandidateDetails>,
    ) -> Result<u32, String> {
        candidates
            .iter()
            .enumerate()
            // `min_by_key` keeps the first of equal keys, which gives the lowest index on a full tie.
            .min_by_key(|(_, c)| (c.in_flight, c.completed))
            .map(|(index, _)| index as u32)
            .ok_or_else(|| "no candidates".to_string())
    }
}

export!(LeastLoaded);
