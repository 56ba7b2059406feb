//! Test plugin `clock_reader`: a strategy that answers with an error carrying the wall-clock time it read, in ms,
//! so the host's tests can check that guest clocks are frozen at the call's `now-ms`. Index 0 for the trial call.

wit_bindgen::generate!({ world: "strategy", path: "../../../wit" });

use aragora::control_plane::types::{CallContext, Candidate, CandidateDetails, TaskInfo};
use exports::aragora::control_plane::selector::Guest;

struct ClockReader;

impl Guest for ClockReader {
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn select(
        _ctx: CallContext,
        task: TaskInfo,
        _candidates: Vec<Candidate>,
        _details: Vec<CandidateDetails>,
    ) -> Result<u32, String> {
        if task.task_type != "read-clock" {
            return Ok(0);
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_err(|e| e.to_string())?;
        Err(format!("now_ms={}", now.as_millis()))
    }
}

export!(ClockReader);
