//! Test plugin `lowest_latency`: a well-behaved custom strategy that picks the candidate with the lowest average
//! latency; ties go to the lowest index.

wit_bindgen::generate!({ world: "strategy", path: "../../../wit" });

use aragora::control_plane::types::{CallContext, Candidate, CandidateDetails, TaskInfo};
use exports::aragora::control_plane::selector::Guest;

struct LowestLatency;

impl Guest for LowestLatency {
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
            // `min_by_key` keeps the first of equal keys, which gives the lowest index on a tie.
            .min_by_key(|(_, c)| c.avg_latency_ms)
            .map(|(index, _)| index as u32)
            .ok_or_else(|| "no candidates".to_string())
    }
}

export!(LowestLatency);
