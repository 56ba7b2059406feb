//! Test plugin `spin_forever`: a strategy whose `select` never returns for tasks of type `misbehave`, for the host's
//! fuel and deadline checks. Other tasks get index 0, so the plugin passes the host's load-time trial call.

wit_bindgen::generate!({ world: "strategy", path: "../../../wit" });

use aragora::control_plane::types::{CallContext, Candidate, CandidateDetails, TaskInfo};
use exports::aragora::control_plane::selector::Guest;
use std::hint::black_box;

struct SpinForever;

impl Guest for SpinForever {
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
        let mut turns: u64 = 0;
        loop {
            // `black_box` hides the counter from the optimiser, which could otherwise drop a side-effect-free loop.
            turns = black_box(turns.wrapping_add(1));
        }
    }
}

export!(SpinForever);
