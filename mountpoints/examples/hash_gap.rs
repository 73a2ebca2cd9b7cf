//! Does hashing 1 MiB on all cores pay off when the cores idle between requests?
//!
//! ```sh
//! cargo run --release -p agentfs-vfs --example hash_gap
//! ```
//!
//! A 1 MiB FUSE write reaches the daemon after the kernel's round trip, so the thread pool
//! has been idle for a few hundred µs when it is handed the write's hashing. This times
//! BLAKE3 of 1 MiB on one thread, with `update_rayon` (handed to the pool from outside it,
//! as a FUSE thread does) and with half of it spawned while the calling thread hashes the
//! other half, each after an idle gap of 0, 300 and 1,000 µs. On a VM whose idle vCPUs halt,
//! waking the pool can cost as much as the work it saves (docs/benchmarks.md).

use std::time::{Duration, Instant};

const RUNS: usize = 300;

fn main() {
    let data = vec![b'x'; 1 << 20];
    println!("BLAKE3 of 1 MiB, {RUNS} runs each: median and best µs");
    for gap in [0u64, 300, 1000] {
        for way in ["one thread", "update_rayon", "half spawned"] {
            let mut times: Vec<Duration> = (0..RUNS)
                .map(|_| {
                    std::thread::sleep(Duration::from_micros(gap));
                    let t0 = Instant::now();
                    match way {
                        "one thread" => {
                            std::hint::black_box(blake3::hash(&data));
                        }
                        "update_rayon" => {
                            std::hint::black_box(
                                blake3::Hasher::new().update_rayon(&data).finalize(),
                            );
                        }
                        _ => {
                            let (a, b) = data.split_at(data.len() / 2);
                            let mut hb = None;
                            let ha = rayon::in_place_scope(|s| {
                                s.spawn(|_| hb = Some(blake3::hash(b)));
                                blake3::hash(a)
                            });
                            std::hint::black_box((ha, hb));
                        }
                    }
                    t0.elapsed()
                })
                .collect();
            times.sort_unstable();
            println!(
                "idle gap {gap:>5} µs  {way:<13} median {:>5} best {:>5}",
                times[RUNS / 2].as_micros(),
                times[0].as_micros()
            );
        }
    }
}
