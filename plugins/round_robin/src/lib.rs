//! Built-in strategy `round_robin`: the candidate longest since its last assignment, one never assigned first;
//! ties go to the lowest index. Assignment times come from the host, so the plugin needs no state of its own.

wit_bindgen::generate!({ world: "strategy", path: "../../wit" });

use aragora::control_plane::types::{CallContext, Candidate, CandidateDetails, TaskInfo};
use exports::aragora::control_plane::selector::Guest;
use std::cmp::Reverse;

struct RoundRobin;

impl Guest for RoundRobin {
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
            // `Option`'s own order puts `None` below every `Some`, the opposite of what we need, hence the flag.
            // `min_by_key` on the reversed key keeps the first of equals, which gives the lowest index on a tie.
            .min_by_key(|(_, c)| Reverse((c.since_assigned_ms.is_none(), c.since_assigned_ms.unwrap_or(0))))
            .map(|(index, _)| index as u32)
            .ok_or_else(|| "no candidates".to_string())
    }
}

export!(RoundRobin);
