//! Test plugin `memory_hog`: for tasks of type `misbehave`, a strategy whose `select` allocates and writes 1 MiB
//! after 1 MiB until the host's memory cap (or its fuel or deadline) stops it. Other tasks get index 0, so the
//! plugin passes the host's load-time trial call.

wit_bindgen::generate!({ world: "strategy", path: "../../../wit" });

use aragora::control_plane::types::{CallContext, Candidate, CandidateDetails, TaskInfo};
use exports::aragora::control_plane::selector::Guest;
use std::hint::black_box;

const CHUNK: usize = 1 << 20;

struct MemoryHog;

impl Guest for MemoryHog {
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
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut chunk = vec![0u8; CHUNK];
            // Writing every byte makes the pages real even if a host maps fresh memory lazily; `black_box` keeps
            // the optimiser from seeing that nobody reads them back.
            chunk.fill(black_box(0xa5));
            chunks.push(black_box(chunk));
            black_box(&chunks);
        }
    }
}

export!(MemoryHog);
