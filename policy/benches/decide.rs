//! Decision latency per write with 10, 100 and 1,000 path rules (target: p99 ≤ 5 µs at 100
//! rules), and window-scan throughput with the built-in secret set on clean text.
//!
//! `cargo bench -p agentfs-policy --bench decide -- --quick` runs it briefly. Besides
//! criterion's means, it prints p50/p99 of single decisions measured one by one.

use std::hint::black_box;
use std::time::{Duration, Instant};

use agentfs_policy::*;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

/// A policy with `n` path rules on top of the built-in one (secrets included): grants,
/// forbids, read-only and append-only globs of the shapes people write, some scoped.
fn policy(n: usize) -> Ruleset {
    let mut t = String::new();
    for i in 0..n {
        let rule = match i % 5 {
            0 => format!("[[allow]]\nname = \"grant-{i}\"\npaths = [\"projects/p{i}/**\"]\n"),
            1 => format!(
                "[[deny]]\nname = \"deny-{i}\"\npaths = [\"**/*.ext{i}\"]\nops = [\"create\"]\n"
            ),
            2 => format!("[[read_only]]\nname = \"ro-{i}\"\npaths = [\"mem/semantic/ro{i}/**\"]\n"),
            3 => format!(
                "[[append_only]]\nname = \"ao-{i}\"\nagents = [\"agent{i}\", \"a\"]\npaths = [\"mem/semantic/log{i}/*.log\"]\n"
            ),
            _ => format!(
                "[[deny]]\nname = \"scoped-{i}\"\nagents = [\"agent{i}\"]\npaths = [\"mem/working/tmp{i}/**\"]\naction = \"deny\"\n"
            ),
        };
        t.push_str(&rule);
    }
    Ruleset::compile(vec![Source::new("bench.toml", t)]).expect("bench policy compiles")
}

/// Clean text: prose and code-like lines, no secrets.
fn clean_text(len: usize) -> Vec<u8> {
    let lines: &[&str] = &[
        "The agent summarised the meeting notes and filed the action items.\n",
        "fn load_config(path: &Path) -> Result<Config, Error> { let text = read(path)?; }\n",
        "2024-05-01T12:00:00Z step=42 status=ok duration_ms=17 user=alice\n",
        "Remember: the key insight was to cache the parsed tokens per session.\n",
        "{\"id\": 1234, \"name\": \"widget\", \"tags\": [\"blue\", \"small\"], \"price\": 9.99}\n",
        "SELECT name, email FROM users WHERE created_at > now() - interval '7 days';\n",
    ];
    let mut out = Vec::with_capacity(len + 128);
    let mut i = 0;
    while out.len() < len {
        out.extend_from_slice(lines[i % lines.len()].as_bytes());
        i += 7;
    }
    out.truncate(len);
    out
}

/// An append of `data.len()` bytes at the end of a file of `file.len()` bytes (the data is
/// already in `file`), with the window the core would pass.
fn append_call<'a>(r: &Ruleset, file: &'a [u8], written: usize) -> Call<'a> {
    let size = file.len() as u64;
    let start = size - written as u64;
    let lo = start.saturating_sub(r.window() as u64);
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
        ..Call::new("a", Op::Write, b"mem/semantic/notes/today.md")
    }
}

fn percentiles(mut f: impl FnMut()) -> (Duration, Duration) {
    for _ in 0..2_000 {
        f();
    }
    let mut samples: Vec<Duration> = (0..20_000)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    samples.sort();
    (
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100],
    )
}

fn decide(c: &mut Criterion) {
    let file = clean_text(64 * 1024);
    let mut group = c.benchmark_group("decide");
    println!();
    println!("decision latency, single calls timed one by one (includes ~20-40 ns of timer):");
    for n in [10, 100, 1000] {
        let t = Instant::now();
        let r = policy(n);
        println!("  {n:>5} path rules  compile     {:>9.2?}", t.elapsed());
        let create = Call::new("a", Op::Create, b"mem/semantic/notes/today.md");
        let write = append_call(&r, &file, 128);
        let write4k = append_call(&r, &file, 4096);
        assert!(r.decide(&create).is_allowed());
        assert!(r.decide(&write).is_allowed());
        for (name, call) in [
            ("path-only", &create),
            ("write-128B", &write),
            ("write-4KiB", &write4k),
        ] {
            group.bench_with_input(BenchmarkId::new(name, n), call, |b, call| {
                b.iter(|| black_box(r.decide(black_box(call))))
            });
            let (p50, p99) = percentiles(|| {
                black_box(r.decide(black_box(call)));
            });
            println!("  {n:>5} path rules  {name:<10}  p50 {p50:>9.2?}  p99 {p99:>9.2?}");
        }
    }
    group.finish();
}

fn scan(c: &mut Criterion) {
    let r = Ruleset::builtin();
    let mut group = c.benchmark_group("scan");
    for len in [64 * 1024, 1024 * 1024] {
        let text = clean_text(len);
        let call = Call {
            content: Some(Content {
                bytes: &text,
                at: 0,
                changed: 0..len as u64,
                file_size: len as u64,
            }),
            ..Call::new("a", Op::Write, b"mem/semantic/big.txt")
        };
        assert!(r.decide(&call).is_allowed());
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(
            BenchmarkId::new("builtin-secrets", len),
            &call,
            |b, call| b.iter(|| black_box(r.decide(black_box(call)))),
        );
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = decide, scan
}
criterion_main!(benches);
