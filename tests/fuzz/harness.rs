//! Time-bounded fuzzing on top of proptest, shared by the fuzz targets of every crate
//! (each includes this file with `#[path = ...] mod harness;`).
//!
//! cargo-fuzz (libFuzzer) needs a nightly compiler, which CI does not have, so the targets
//! are proptest strategies run by [`fuzz_for`]: round after round of fresh random seeds until
//! a wall-clock budget is spent, each round a normal proptest run (a failure is shrunk to a
//! minimal input and reported with the seed that reproduces it).
//!
//! * `AGENTFS_FUZZ_SECS=N`: seconds per target (default [`DEFAULT_SECS`], so that a plain
//!   `cargo test` stays fast). `scripts/fuzz.sh N` sets it.
//! * `AGENTFS_FUZZ_SEED=S`: the base seed (a u64), to replay a reported failure.

#![allow(dead_code)]

use std::cell::Cell;
use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseResult, TestError, TestRng, TestRunner};

/// Seconds each target runs in a plain `cargo test`.
pub const DEFAULT_SECS: f64 = 5.0;

/// Inputs per proptest round; the deadline is also checked before each input, so a round
/// never overshoots by more than one input.
const ROUND: u32 = 256;

/// The time budget of one target: `AGENTFS_FUZZ_SECS`, else [`DEFAULT_SECS`].
pub fn budget() -> Duration {
    let secs = std::env::var("AGENTFS_FUZZ_SECS")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .unwrap_or(DEFAULT_SECS);
    Duration::from_secs_f64(secs)
}

fn base_seed() -> u64 {
    if let Some(s) = std::env::var("AGENTFS_FUZZ_SEED")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
    {
        return s;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    splitmix(now ^ (u64::from(std::process::id()) << 32))
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The ChaCha seed of round `round` of base seed `base`.
fn round_seed(base: u64, round: u64) -> [u8; 32] {
    let mut seed = [0u8; 32];
    let mut x = base ^ round.wrapping_mul(0xa076_1d64_78bd_642f);
    for part in seed.chunks_mut(8) {
        x = splitmix(x);
        part.copy_from_slice(&x.to_le_bytes());
    }
    seed
}

/// What one target did.
#[derive(Clone, Copy, Debug)]
pub struct Report {
    pub inputs: u64,
    pub elapsed: Duration,
}

/// Runs `property` on inputs drawn from `strategy`, with fresh seeds, until [`budget`] is
/// spent; prints `fuzz NAME: N inputs in S s, 0 failures`. Panics on the first failure
/// (a panic inside `property` counts as one), with the minimal input and the seed.
pub fn fuzz_for<S: Strategy>(
    name: &str,
    strategy: S,
    property: impl Fn(S::Value) -> TestCaseResult,
) -> Report {
    fuzz_within(name, budget(), strategy, property)
}

/// [`fuzz_for`] with an explicit budget.
pub fn fuzz_within<S: Strategy>(
    name: &str,
    budget: Duration,
    strategy: S,
    property: impl Fn(S::Value) -> TestCaseResult,
) -> Report {
    let base = base_seed();
    let start = Instant::now();
    let deadline = start + budget;
    let inputs = Cell::new(0u64);
    let mut round = 0u64;
    // At least one round, so that a zero budget still checks the target works.
    loop {
        let config = Config {
            cases: ROUND,
            failure_persistence: None,
            max_shrink_time: 60_000,
            max_global_rejects: u32::MAX,
            ..Config::default()
        };
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &round_seed(base, round));
        let mut runner = TestRunner::new_with_rng(config, rng);
        let outcome = runner.run(&strategy, |value| {
            // Past the deadline the rest of the round is skipped; shrinking (after a
            // failure) still runs every candidate.
            if inputs.get() > 0 && Instant::now() >= deadline {
                return Ok(());
            }
            inputs.set(inputs.get() + 1);
            property(value)
        });
        match outcome {
            Ok(()) => {}
            Err(TestError::Fail(reason, minimal)) => {
                println!(
                    "fuzz {name}: FAILED after {} inputs: {reason}",
                    inputs.get()
                );
                panic!(
                    "fuzz {name}: {reason}\nminimal input: {minimal:#?}\nreplay with \
                     AGENTFS_FUZZ_SEED={base} (round {round})"
                );
            }
            Err(TestError::Abort(reason)) => {
                panic!("fuzz {name}: aborted: {reason} (AGENTFS_FUZZ_SEED={base})")
            }
        }
        round += 1;
        if Instant::now() >= deadline {
            break;
        }
    }
    let report = Report {
        inputs: inputs.get(),
        elapsed: start.elapsed(),
    };
    println!(
        "fuzz {name}: {} inputs in {:.0} s, 0 failures",
        report.inputs,
        report.elapsed.as_secs_f64()
    );
    report
}
