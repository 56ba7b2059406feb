//! Test plugin `chatty`: a strategy that writes one line to stdout and one to stderr on every `select`, then
//! picks the first candidate; the host turns both streams into the plugin's log.

wit_bindgen::generate!({ world: "strategy", path: "../../../wit" });

use aragora::control_plane::types::{CallContext, Candidate, CandidateDetails, TaskInfo};
use exports::aragora::control_plane::selector::Guest;

struct Chatty;

impl Guest for Chatty {
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn select(
        _ctx: CallContext,
        task: TaskInfo,
        candidates: Vec<Candidate>,
        _details: Vec<CandidateDetails>,
    ) -> Result<u32, String> {
        println!("chatty: task {} has {} candidates", task.id, candidates.len());
        eprintln!("chatty: picking candidate 0");
        Ok(0)
    }
}

export!(Chatty);
