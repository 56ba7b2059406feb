//! Test plugin `file_reader`: a strategy that reads a file. The component imports `wasi:filesystem`, which the
//! host links with no directory preopened: the read must fail, and the call with it.

wit_bindgen::generate!({ world: "strategy", path: "../../../wit" });

use aragora::control_plane::types::{CallContext, Candidate, CandidateDetails, TaskInfo};
use exports::aragora::control_plane::selector::Guest;

struct FileReader;

impl Guest for FileReader {
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn select(
        _ctx: CallContext,
        _task: TaskInfo,
        candidates: Vec<Candidate>,
        _details: Vec<CandidateDetails>,
    ) -> Result<u32, String> {
        let passwd = std::fs::read("/etc/passwd").map_err(|e| format!("cannot read /etc/passwd: {e}"))?;
        // Using what was read keeps the read, and so the import, in the component.
        Ok((passwd.len() % candidates.len().max(1)) as u32)
    }
}

export!(FileReader);
