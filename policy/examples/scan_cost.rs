//! The built-in content rules' scan over whole buffers, one kind of data at a time: what a
//! large write costs the policy. Prints GB/s (median and best); run it under
//! `valgrind --tool=callgrind` for instructions per byte (compare two repeat counts so that
//! the start-up cancels).
//!
//! ```sh
//! cargo run --release -p agentfs-policy --example scan_cost [KIND] [MIB] [REPEATS]
//! ```
//!
//! KIND: `x` (the byte `x`, what the mount bench writes), `text` (notes, code, logs, JSON,
//! as in the `decide` bench), `near` (the same with one line in four a near miss:
//! `AKIAEXAMPLE`, `ghp_XXXX`, …),
//! `random` (uniform bytes), or `file:PATH` (that file, repeated). Default: all but `file:`.

use agentfs_policy::{Call, Content, Op, Ruleset};
use std::hint::black_box;
use std::time::{Duration, Instant};

#[path = "../benches/common/mod.rs"]
mod common;

fn data(kind: &str, len: usize) -> Vec<u8> {
    let seed: Vec<u8> = match kind {
        "x" => vec![b'x'; len],
        "text" => common::text(len, false),
        "near" => common::text(len, true),
        "random" => {
            // xorshift64*: reproducible, no dependency.
            let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
            (0..len)
                .map(|_| {
                    s ^= s >> 12;
                    s ^= s << 25;
                    s ^= s >> 27;
                    (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
                })
                .collect()
        }
        other => match other.strip_prefix("file:") {
            Some(path) => std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}")),
            None => panic!("unknown kind {other}: x, text, near, random or file:PATH"),
        },
    };
    seed.iter().copied().cycle().take(len).collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let kinds: Vec<String> = match args.first() {
        Some(k) => vec![k.clone()],
        None => ["x", "text", "near", "random"].map(String::from).to_vec(),
    };
    let mib: usize = args.get(1).map_or(1, |a| a.parse().expect("MIB: a number"));
    let repeats: usize = args
        .get(2)
        .map_or(200, |a| a.parse().expect("REPEATS: a number"));
    let rules = Ruleset::builtin();
    for kind in kinds {
        let buf = data(&kind, mib << 20);
        let call = Call {
            content: Some(Content {
                bytes: &buf,
                at: 0,
                changed: 0..buf.len() as u64,
                file_size: buf.len() as u64,
            }),
            ..Call::new("a", Op::Write, b"mem/semantic/big.txt")
        };
        let verdict = rules.decide(&call);
        let mut times: Vec<Duration> = (0..repeats)
            .map(|_| {
                let t = Instant::now();
                black_box(rules.decide(black_box(&call)));
                t.elapsed()
            })
            .collect();
        times.sort_unstable();
        let gbs = |d: Duration| buf.len() as f64 / d.as_secs_f64() / 1e9;
        println!(
            "{kind:<10} {mib} MiB x {repeats}: median {:.2} GB/s, best {:.2} GB/s, allowed: {}",
            times.get(times.len() / 2).map_or(0.0, |&d| gbs(d)),
            times.first().map_or(0.0, |&d| gbs(d)),
            verdict.is_allowed()
        );
    }
}
