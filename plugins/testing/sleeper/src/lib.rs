//! Test plugin `sleeper`: a strategy that sleeps an hour before answering. In the host's sandbox time does not
//! pass inside a call (clock subscriptions are ready at once), so the call must return at once instead of holding
//! its caller where neither fuel nor the deadline could stop it.

wit_bindgen::generate!({ world: "strategy", path: "../../../wit" });

use aragora::control_plane::types::{CallContext, Candidate, CandidateDetails, TaskInfo};
use exports::aragora::control_plane::selector::Guest;

struct Sleeper;

impl Guest for Sleeper {
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn select(
        _ctx: CallContext,
        _task: TaskInfo,
        candidates: Vec<Candidate>,
        _details: Vec<CandidateDetails>,
    ) -> Result<u32, String> {
        std::thread::sleep(std::time::Duration::from_secs(3600));
        Ok(candidates.len().saturating_sub(1) as u32)
    }
}

export!(Sleeper);
