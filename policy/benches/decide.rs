//! Issue 3's policy benchmark: decision latency per call with 10, 100 and 1,000 rules
//! (target: p99 ≤ 5 µs per write at 100 rules), and window-scan throughput with the
//! built-in secret set.
//!
//! ```sh
//! cargo bench -p agentfs-policy --bench decide            # criterion means + the report
//! cargo bench -p agentfs-policy --bench decide -- --quick # shorter criterion runs
//! ```
//!
//! Criterion measures means. After it, the same binary times 100,000 single decisions one
//! by one with `Instant` for p50 / p99 / p99.9, and scans 1 MiB and 64 MiB buffers for
//! GB/s; that report is printed at the end (it is skipped under `cargo test --benches`).
//! Figures and how to read them: docs/benchmarks.md, "Policy decisions".

use std::hint::black_box;
use std::time::{Duration, Instant};

use agentfs_policy::*;
use criterion::{BenchmarkId, Criterion, Throughput};

const RULE_COUNTS: [usize; 3] = [10, 100, 1000];
/// Single decisions timed per call kind and ruleset.
const SAMPLES: usize = 100_000;
/// Distinct calls of each kind, cycled through (different paths and offsets).
const VARIANTS: usize = 64;
const AGENT: &str = "a";

// ---- rulesets --------------------------------------------------------------------------

/// `n` rules on top of the built-in policy (21 rules, 16 of them secrets), of the shapes
/// people write. Per ten rules: two grants (one agent-scoped), three denies (one scoped),
/// two read-only rules and an append-only one, and two content rules: a token with a
/// literal prefix, and a host name (no literal prefix) or a case-insensitive code word.
/// Names are unique; nothing matches the calls below but the built-in `own-memory` grant.
fn policy_text(n: usize) -> String {
    let mut t = String::new();
    for i in 0..n {
        let rule = match i % 10 {
            0 => format!("[[allow]]\nname = \"team-share-{i}\"\npaths = [\"shared/team{i}/**\"]\n"),
            1 => format!(
                "[[deny]]\nname = \"no-build-output-{i}\"\npaths = [\"**/build{i}/*.{{o,so,a}}\", \"**/*.ext{i}\"]\nops = [\"create\"]\n"
            ),
            2 => format!(
                "[[read_only]]\nname = \"facts-final-{i}\"\npaths = [\"mem/semantic/facts/topic{i}/**\"]\n"
            ),
            3 => format!(
                "[[append_only]]\nname = \"run-log-{i}\"\nagents = [\"agent{i}\", \"a\"]\npaths = [\"mem/episodic/run{i}/*.log\", \"mem/working/run{i}/**/*.jsonl\"]\n"
            ),
            4 => format!(
                "[[deny]]\nname = \"scratch-{i}\"\nagents = [\"agent{i}\"]\npaths = [\"mem/working/tmp{i}/**\"]\naction = \"deny\"\n"
            ),
            5 => format!(
                "[[content]]\nname = \"acme-token-{i}\"\nregex = '(?-u:\\b)acme{i}_(?:live|test)_[A-Za-z0-9]{{32}}(?-u:\\b)'\n"
            ),
            6 => format!(
                "[[allow]]\nname = \"reports-{i}\"\nagents = [\"agent{i}\"]\npaths = [\"reports/q[1-4]/r{i}-*.md\"]\nops = [\"create\", \"write\"]\n"
            ),
            7 => format!(
                "[[deny]]\nname = \"vault-{i}\"\npaths = [\"projects/p{i}/secrets/**\", \"**/.vault{i}\"]\naction = \"deny\"\n"
            ),
            8 => format!(
                "[[read_only]]\nname = \"config-{i}\"\npaths = [\"mem/semantic/config/svc{i}.toml\"]\n"
            ),
            _ if i % 20 == 9 => format!(
                "[[content]]\nname = \"internal-host-{i}\"\nregex = '(?-u:\\b)[a-z0-9-]{{1,40}}\\.corp{i}\\.example\\.com'\nin = [\"content\", \"name\"]\n"
            ),
            _ => format!(
                "[[content]]\nname = \"codename-{i}\"\nregex = '(?i-u)(?-u:\\b)project[ _-]?nightjar{i}(?-u:\\b)'\naction = \"audit\"\n"
            ),
        };
        t.push_str(&rule);
        t.push('\n');
    }
    t
}

fn policy(n: usize) -> (Engine, Duration) {
    let text = policy_text(n);
    let t = Instant::now();
    let rules = Ruleset::compile(vec![Source::new("bench.toml", text)]).expect("bench policy");
    let took = t.elapsed();
    assert_eq!(rules.rule_names().count(), n + builtin_rule_count());
    (Engine::new(rules), took)
}

fn builtin_rule_count() -> usize {
    Ruleset::builtin().rule_names().count()
}

mod common;
use common::text;

// ---- calls -----------------------------------------------------------------------------

/// The calls measured, `VARIANTS` of each kind: paths differ, writes land at different
/// offsets of a 1 MiB note.
struct Calls<'a> {
    kinds: Vec<(&'static str, Vec<Call<'a>>)>,
}

fn calls<'a>(w: usize, paths: &'a [Vec<u8>], dsts: &'a [Vec<u8>], file: &'a [u8]) -> Calls<'a> {
    let size = file.len() as u64;
    let create = paths
        .iter()
        .map(|p| Call {
            kind: Some(FileKind::File),
            mode: Some(0o644),
            ..Call::new(AGENT, Op::Create, p)
        })
        .collect();
    let rename = paths
        .iter()
        .zip(dsts)
        .map(|(p, d)| Call {
            target: Some(d.as_slice()),
            kind: Some(FileKind::File),
            ..Call::new(AGENT, Op::Rename, p)
        })
        .collect();
    let rename_dir = (0..VARIANTS)
        .map(|_| Call {
            target: Some(b"mem/semantic/notes-2024".as_slice()),
            kind: Some(FileKind::Dir),
            ..Call::new(AGENT, Op::Rename, b"mem/semantic/notes")
        })
        .collect();
    // A 128-byte append to the end of the note: the window reaches back `w` bytes.
    let append = paths
        .iter()
        .map(|p| {
            let start = size - 128;
            let lo = start.saturating_sub(w as u64);
            Call {
                content: Some(Content {
                    bytes: &file[lo as usize..],
                    at: lo,
                    changed: start..size,
                    file_size: size,
                }),
                size: Some(SizeChange {
                    before: start,
                    after: size,
                }),
                ..Call::new(AGENT, Op::Write, p)
            }
        })
        .collect();
    // A 4 KiB overwrite inside the note: `w` bytes of context on each side.
    let write4k = paths
        .iter()
        .enumerate()
        .map(|(k, p)| {
            let start = 16 * 1024 + k as u64 * 12 * 1024;
            let end = start + 4096;
            let lo = start - w as u64;
            let hi = (end + w as u64).min(size);
            Call {
                content: Some(Content {
                    bytes: &file[lo as usize..hi as usize],
                    at: lo,
                    changed: start..end,
                    file_size: size,
                }),
                size: Some(SizeChange {
                    before: size,
                    after: size,
                }),
                ..Call::new(AGENT, Op::Write, p)
            }
        })
        .collect();
    Calls {
        kinds: vec![
            ("create", create),
            ("rename", rename),
            ("rename-dir", rename_dir),
            ("append-128B", append),
            ("write-4KiB", write4k),
        ],
    }
}

/// What the core does per call: one snapshot of the rules, then the decision.
#[inline]
fn decide_once(engine: &Engine, call: &Call<'_>, rate: &mut RateState, now: u64) -> bool {
    let rules = engine.current();
    rules.decide_rated(call, rate, now).is_allowed()
}

struct Fixture {
    n: usize,
    engine: Engine,
    compile: Duration,
    paths: Vec<Vec<u8>>,
    dsts: Vec<Vec<u8>>,
    file: Vec<u8>,
}

fn fixtures() -> Vec<Fixture> {
    let file = text(1024 * 1024, false);
    let paths: Vec<Vec<u8>> = (0..VARIANTS)
        .map(|k| format!("mem/semantic/notes/{}.md", 1000 + k * 37).into_bytes())
        .collect();
    let dsts: Vec<Vec<u8>> = (0..VARIANTS)
        .map(|k| format!("mem/semantic/archive/2024/{}.md", 1000 + k * 37).into_bytes())
        .collect();
    RULE_COUNTS
        .iter()
        .map(|&n| {
            let (engine, compile) = policy(n);
            Fixture {
                n,
                engine,
                compile,
                paths: paths.clone(),
                dsts: dsts.clone(),
                file: file.clone(),
            }
        })
        .collect()
}

// ---- criterion -------------------------------------------------------------------------

fn bench_decide(c: &mut Criterion, fx: &[Fixture]) {
    let mut group = c.benchmark_group("decide");
    for f in fx {
        let rules = f.engine.current();
        let calls = calls(rules.window(), &f.paths, &f.dsts, &f.file);
        for (name, list) in &calls.kinds {
            for call in list {
                let v = rules.decide(call);
                assert!(v.is_allowed(), "{name} with {} rules: {v:?}", f.n);
            }
            group.bench_with_input(BenchmarkId::new(*name, f.n), list, |b, list| {
                let mut rate = RateState::default();
                let mut k = 0usize;
                b.iter(|| {
                    k = k.wrapping_add(1);
                    let call = &list[k % list.len()];
                    black_box(decide_once(&f.engine, black_box(call), &mut rate, k as u64))
                })
            });
        }
    }
    group.finish();
}

fn whole_buffer_call(buf: &[u8]) -> Call<'_> {
    Call {
        content: Some(Content {
            bytes: buf,
            at: 0,
            changed: 0..buf.len() as u64,
            file_size: buf.len() as u64,
        }),
        ..Call::new(AGENT, Op::Write, b"mem/semantic/big.txt")
    }
}

fn bench_scan(c: &mut Criterion) {
    let r = Ruleset::builtin();
    let mut group = c.benchmark_group("scan");
    for (name, near) in [("clean", false), ("near-miss", true)] {
        let buf = text(1024 * 1024, near);
        let call = whole_buffer_call(&buf);
        assert!(r.decide(&call).is_allowed(), "{name} text must be clean");
        group.throughput(Throughput::Bytes(buf.len() as u64));
        group.bench_with_input(BenchmarkId::new(name, "1MiB"), &call, |b, call| {
            b.iter(|| black_box(r.decide(black_box(call))))
        });
    }
    group.finish();
}

// ---- the custom report: percentiles and GB/s -------------------------------------------

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn us(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e6)
}

fn report_latency(fx: &[Fixture]) {
    // What `Instant::now()` + `elapsed()` costs by itself: included in every sample.
    let mut empty: Vec<Duration> = (0..SAMPLES)
        .map(|_| {
            let t = Instant::now();
            t.elapsed()
        })
        .collect();
    empty.sort_unstable();
    println!();
    println!(
        "decision latency: {SAMPLES} single decisions per row, each timed with Instant \
         (timer alone: p50 {} ns, p99 {} ns), µs",
        empty[SAMPLES / 2].as_nanos(),
        pct(&empty, 0.99).as_nanos()
    );
    println!(
        "{:>6} {:>10} {:>12} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "rules", "compile", "call", "mean", "p50", "p99", "p99.9", "max"
    );
    for f in fx {
        let rules = f.engine.current();
        let calls = calls(rules.window(), &f.paths, &f.dsts, &f.file);
        for (name, list) in &calls.kinds {
            let mut rate = RateState::default();
            for (k, call) in list.iter().cycle().take(5_000).enumerate() {
                black_box(decide_once(&f.engine, call, &mut rate, k as u64));
            }
            let mut samples: Vec<Duration> = list
                .iter()
                .cycle()
                .take(SAMPLES)
                .enumerate()
                .map(|(k, call)| {
                    let t = Instant::now();
                    black_box(decide_once(&f.engine, black_box(call), &mut rate, k as u64));
                    t.elapsed()
                })
                .collect();
            samples.sort_unstable();
            let mean = samples.iter().sum::<Duration>() / SAMPLES as u32;
            println!(
                "{:>6} {:>10} {:>12} {:>8} {:>8} {:>8} {:>8} {:>8}",
                f.n,
                format!("{:.1?}", f.compile),
                name,
                us(mean),
                us(pct(&samples, 0.50)),
                us(pct(&samples, 0.99)),
                us(pct(&samples, 0.999)),
                us(*samples.last().unwrap())
            );
        }
        println!(
            "{:>6} {:>10} window = {} bytes each side, max match length {}",
            f.n,
            "",
            rules.window(),
            rules.max_match_len()
        );
    }
}

/// Scans `buf` whole, repeatedly for at least `budget` (and at least 3 times); returns the
/// median and best GB/s.
fn scan_rate(r: &Ruleset, buf: &[u8], budget: Duration) -> (f64, f64, usize) {
    let call = whole_buffer_call(buf);
    assert!(r.decide(&call).is_allowed());
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 3 || (start.elapsed() < budget && times.len() < 1000) {
        let t = Instant::now();
        black_box(r.decide(black_box(&call)));
        times.push(t.elapsed());
    }
    times.sort_unstable();
    let gbs = |d: Duration| buf.len() as f64 / d.as_secs_f64() / 1e9;
    (gbs(times[times.len() / 2]), gbs(times[0]), times.len())
}

fn report_scan(fx: &[Fixture]) {
    println!();
    println!("window scan: whole buffers through `decide` (content rules + path checks), GB/s");
    println!(
        "{:<24} {:>7} {:>10} {:>8} {:>8} {:>6}",
        "rules", "buffer", "text", "median", "best", "runs"
    );
    let builtin = Ruleset::builtin();
    for (len, label, budget) in [
        (1 << 20, "1 MiB", Duration::from_millis(1500)),
        (64 << 20, "64 MiB", Duration::from_secs(3)),
    ] {
        for (near, kind) in [(false, "clean"), (true, "near-miss")] {
            let buf = text(len, near);
            let (median, best, runs) = scan_rate(&builtin, &buf, budget);
            println!(
                "{:<24} {label:>7} {kind:>10} {median:>8.2} {best:>8.2} {runs:>6}",
                "built-in (16 secrets)"
            );
        }
    }
    // The same scan with the generated policies' content rules added.
    for f in fx {
        let rules = f.engine.current();
        for (near, kind) in [(false, "clean"), (true, "near-miss")] {
            let buf = text(1 << 20, near);
            let (median, best, runs) = scan_rate(&rules, &buf, Duration::from_millis(1500));
            println!(
                "{:<24} {:>7} {kind:>10} {median:>8.2} {best:>8.2} {runs:>6}",
                format!("built-in + {} rules", f.n),
                "1 MiB"
            );
        }
    }
}

fn main() {
    let fx = fixtures();
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    bench_decide(&mut c, &fx);
    bench_scan(&mut c);
    c.final_summary();
    // `cargo bench` passes --bench; `cargo test --benches` does not (then criterion runs
    // each benchmark once as a test, and the long report is skipped).
    if std::env::args().any(|a| a == "--bench") {
        report_latency(&fx);
        report_scan(&fx);
    }
}
