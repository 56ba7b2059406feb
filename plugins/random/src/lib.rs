//! Built-in strategy `random`: a uniform choice among the candidates, drawn from the call's seed alone, so the
//! same seed and candidate count always give the same index.

wit_bindgen::generate!({ world: "strategy", path: "../../wit" });

use aragora::control_plane::types::{CallContext, Candidate, CandidateDetails, TaskInfo};
use exports::aragora::control_plane::selector::Guest;

struct Random;

impl Guest for Random {
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn select(
        ctx: CallContext,
        _task: TaskInfo,
        candidates: Vec<Candidate>,
        _details: Vec<CandidateDetails>,
    ) -> Result<u32, String> {
        let count = u32::try_from(candidates.len()).map_err(|_| "too many candidates".to_string())?;
        if count == 0 {
            return Err("no candidates".to_string());
        }
        Ok(below(&mut SplitMix64(ctx.seed), count))
    }
}

/// SplitMix64 (Steele, Lea and Flood): one 64-bit add and a mix per draw. Its outputs are well spread even for
/// neighbouring seeds, which matters because hosts may hand out seeds that differ by one.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// A uniform draw in `0..bound` by Lemire's multiply-and-reject: a plain `% bound` would favour low indices.
fn below(rng: &mut SplitMix64, bound: u32) -> u32 {
    let bound = u64::from(bound);
    let mut product = u128::from(rng.next()) * u128::from(bound);
    // Rejecting the low halves under 2^64 mod bound removes the bias. A draw is rejected with probability below
    // bound/2^64, so the loop almost never runs, and the modulo is paid only on the rare path.
    if (product as u64) < bound {
        let threshold = bound.wrapping_neg() % bound;
        while (product as u64) < threshold {
            product = u128::from(rng.next()) * u128::from(bound);
        }
    }
    (product >> 64) as u32
}

export!(Random);
