//! Semantic-memory search benchmark (issue 6, "Benchmark"; harness = false). Needs root (it
//! mounts).
//!
//! `cargo bench -p agentfs --bench searchbench` (or `scripts/bench-search.sh`). In one run:
//!
//! 1. writes 100,000 generated facts of ~1 KiB (words of a fixed vocabulary plus one unique
//!    word per fact, `uqNNNNNNx`) into `MNT/bench/mem/semantic/dNNN/` through a real mount and
//!    measures the write, the time from the last close until the last fact is found, until
//!    `sys/agents/bench/index` reads `ready`, and until a random sample of facts is each found;
//! 2. query latency p50/p99 of `.search/QUERY` read through the mount (unique words, phrases,
//!    boolean queries, common words) and of `SearchIndex::search` on an index of the same facts
//!    built with the library in a temp dir;
//! 3. `grep -rl WORD` over the same files through the mount and over a copy on tmpfs
//!    (`/dev/shm`), for a sample of unique words, and the ratio grep / search;
//! 4. the bytes of `DATA/search-index` per fact, and the rate of a rebuild from the store.
//!
//! Figures are printed with PASS/MISS against the targets (p50 ≤ 2 ms through the
//! mount, ≥ 100× faster than grep over 100k facts); it never fails on a MISS.
//! `AGENTFS_BENCH_QUICK=1`: 10,000 facts. `AGENTFS_BENCH_GREPS=N`: N grep runs instead of 20.
//! `AGENTFS_BENCH_ONLY=library-memory`: only the library's memory when every upsert is queued
//! at once (as a rebuild from the store does) against a bounded backlog.

#[path = "../common/mod.rs"]
mod common;

use agentfs_memory::search::SearchIndex;
use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The agent whose `mem/semantic` holds the facts.
const AGENT: &str = "bench";
/// Facts are spread over this many directories.
const DIRS: usize = 100;
/// Approximate size of one fact, in bytes.
const FACT_BYTES: usize = 1024;
/// Most hits a `.search` file lists (docs/search.md); the library is asked for as many.
const LIMIT: usize = 100;

/// The fixed vocabulary the facts are made of (lower-case, so a token is the word itself).
const VOCAB: [&str; 128] = [
    "agent", "memory", "file", "token", "model", "prompt", "answer", "question", "search", "index",
    "vector", "store", "cache", "plan", "task", "goal", "step", "tool", "call", "result", "error",
    "retry", "budget", "limit", "policy", "rule", "check", "write", "read", "open", "close",
    "commit", "branch", "merge", "test", "build", "deploy", "server", "client", "request", "reply",
    "queue", "worker", "thread", "lock", "mutex", "channel", "signal", "stop", "start", "resume",
    "pause", "timer", "clock", "date", "month", "year", "city", "river", "mountain", "forest",
    "garden", "kitchen", "window", "door", "table", "chair", "paper", "letter", "number", "lamp",
    "graph", "node", "edge", "path", "route", "map", "weather", "rain", "snow", "wind", "cloud",
    "storm", "summer", "winter", "spring", "autumn", "coffee", "tea", "bread", "apple", "orange",
    "lemon", "sugar", "salt", "pepper", "butter", "green", "blue", "red", "yellow", "purple",
    "silver", "golden", "quiet", "loud", "fast", "slow", "early", "late", "small", "large",
    "bright", "dark", "warm", "cold", "fresh", "old", "new", "first", "last", "next", "other",
    "every", "never", "harbor", "bridge", "candle",
];

/// splitmix64: a small deterministic generator, so every run writes the same facts.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// One generated fact.
struct Fact {
    text: String,
    /// The vocabulary word just before the unique word (for phrase queries).
    before: &'static str,
    /// The words after the unique word, in order (for "word in this fact" queries).
    tail: Vec<&'static str>,
}

fn unique(i: usize) -> String {
    format!("uq{i:06}x")
}

/// Path of fact `i`, relative to `mem/semantic`.
fn rel_path(i: usize) -> String {
    format!("d{:03}/f{i:06}", i % DIRS)
}

fn fact(i: usize) -> Fact {
    let mut rng = Rng::new(i as u64 + 1);
    let at = 10 + rng.below(60);
    let mut text = String::with_capacity(FACT_BYTES + 32);
    let (mut before, mut tail) = ("", Vec::new());
    let mut n = 0;
    while text.len() < FACT_BYTES - 12 {
        if n == at {
            text.push_str(&unique(i));
        } else {
            let w = VOCAB[rng.below(VOCAB.len())];
            if n + 1 == at {
                before = w;
            } else if n > at {
                tail.push(w);
            }
            text.push_str(w);
        }
        n += 1;
        text.push(if n % 12 == 0 { '\n' } else { ' ' });
    }
    text.push('\n');
    Fact { text, before, tail }
}

/// What a query must return.
enum Expect {
    /// Exactly these paths (sorted).
    Exactly(Vec<String>),
    /// At least one hit.
    Some,
}

struct Query {
    text: String,
    expect: Expect,
}

/// A set of queries of one kind.
struct Kind {
    name: &'static str,
    queries: Vec<Query>,
}

fn query_kinds(n: usize, rng: &mut Rng, unique_count: usize) -> Vec<Kind> {
    let mut pick = || rng.below(n);
    let one = |i: usize| Expect::Exactly(vec![rel_path(i)]);
    let mut kinds = Vec::new();
    let mut q = |name, count: usize, make: &mut dyn FnMut(usize, usize) -> Query| {
        let queries = (0..count).map(|_| make(pick(), pick())).collect();
        kinds.push(Kind { name, queries });
    };
    q("unique word", unique_count, &mut |i, _| Query {
        text: unique(i),
        expect: one(i),
    });
    q("phrase \"w uq…x\"", 200, &mut |i, _| Query {
        text: format!("\"{} {}\"", fact(i).before, unique(i)),
        expect: one(i),
    });
    q("uqA OR uqB", 200, &mut |i, j| {
        let mut paths = vec![rel_path(i), rel_path(j)];
        paths.sort();
        paths.dedup();
        Query {
            text: format!("{} OR {}", unique(i), unique(j)),
            expect: Expect::Exactly(paths),
        }
    });
    q("uqA AND w", 200, &mut |i, j| {
        let f = fact(i);
        Query {
            text: format!("{} AND {}", unique(i), f.tail[j % f.tail.len()]),
            expect: one(i),
        }
    });
    q("uqA AND NOT w", 200, &mut |i, j| {
        let f = fact(i);
        Query {
            text: format!("{} AND NOT {}", unique(i), f.tail[j % f.tail.len()]),
            expect: Expect::Exactly(vec![]),
        }
    });
    q("common phrase \"w w\"", 100, &mut |i, j| {
        let f = fact(i);
        let k = j % (f.tail.len() - 1);
        Query {
            text: format!("\"{} {}\"", f.tail[k], f.tail[k + 1]),
            expect: Expect::Some,
        }
    });
    q("common word", 100, &mut |_, j| Query {
        text: VOCAB[j % VOCAB.len()].to_owned(),
        expect: Expect::Some,
    });
    kinds
}

/// Whether `paths` (the hits' paths, best first) is what `expect` asks for.
fn matches(expect: &Expect, mut paths: Vec<String>) -> bool {
    match expect {
        Expect::Exactly(want) => {
            paths.sort();
            &paths == want
        }
        Expect::Some => !paths.is_empty(),
    }
}

/// The paths of a `.search` file's hits, or None if it is not `score\tpath\tsnippet` lines.
fn hit_paths(out: &[u8]) -> Option<Vec<String>> {
    let text = std::str::from_utf8(out).ok()?;
    text.lines()
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            (cols.len() == 3 && cols[0].parse::<f32>().is_ok()).then(|| cols[1].to_owned())
        })
        .collect()
}

/// Percentile `p` (0–1) of `v` (sorted here), nearest rank.
fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn dir_bytes(p: &Path) -> u64 {
    let mut total = 0;
    let mut queue = vec![p.to_path_buf()];
    while let Some(d) = queue.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(md) = e.metadata() else {
                continue;
            };
            if md.is_dir() {
                queue.push(e.path());
            } else {
                total += md.len();
            }
        }
    }
    total
}

/// The `index` object of the agent (`sys/agents/bench/index`).
fn index_status(mnt: &Path) -> serde_json::Value {
    let p = mnt.join("sys/agents").join(AGENT).join("index");
    match fs::read_to_string(&p) {
        Ok(t) => serde_json::from_str(&t).unwrap_or(serde_json::Value::Null),
        Err(_) => serde_json::Value::Null,
    }
}

/// Polls until the index reads `ready`; the time it took, or None after `limit`.
fn wait_ready(mnt: &Path, start: Instant, limit: Duration) -> Option<Duration> {
    loop {
        if index_status(mnt)["state"] == "ready" {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// True if `.search/uq(i)x` finds fact `i` (and only it).
fn found_in_mount(sem: &Path, i: usize) -> bool {
    fs::read(sem.join(".search").join(unique(i)))
        .ok()
        .and_then(|o| hit_paths(&o))
        .is_some_and(|p| p == [rel_path(i)])
}

/// `grep -rl WORD DIR` for each of `words`: the times in ms, and how many answers were wrong.
fn grep_times(dir: &Path, words: &[usize]) -> (Vec<f64>, usize) {
    let mut times = Vec::new();
    let mut wrong = 0;
    for &i in words {
        let t = Instant::now();
        let out = Command::new("grep")
            .env("LC_ALL", "C")
            .arg("-rl")
            .arg(unique(i))
            .arg(dir)
            .output()
            .expect("run grep");
        times.push(ms(t.elapsed()));
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().collect();
        if lines.len() != 1 || !lines[0].ends_with(&rel_path(i)) {
            wrong += 1;
        }
    }
    (times, wrong)
}

fn vm_hwm_kib(pid: i32) -> Option<u64> {
    vm_kib(pid, "VmHWM:")
}

/// A `/proc/PID/status` memory line (`VmHWM:`, `VmRSS:`, `RssFile:` …), in KiB.
fn vm_kib(pid: i32, key: &str) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// CPU ticks (user + system) of each live thread of `pid`, summed by thread name, and of the
/// whole process (which includes threads that have exited).
fn cpu_ticks(pid: i32) -> (std::collections::BTreeMap<String, u64>, u64) {
    let ticks = |stat: &str| -> Option<(String, u64)> {
        let open = stat.find('(')?;
        let close = stat.rfind(')')?;
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let t = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        Some((stat[open + 1..close].to_owned(), t))
    };
    let mut by_name = std::collections::BTreeMap::new();
    let tasks = fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten();
    for e in tasks.flatten() {
        if let Some((name, t)) = fs::read_to_string(e.path().join("stat"))
            .ok()
            .and_then(|s| ticks(&s))
        {
            *by_name.entry(name).or_insert(0) += t;
        }
    }
    let total = fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| ticks(&s))
        .map_or(0, |(_, t)| t);
    (by_name, total)
}

/// Where the daemon's CPU went between two [`cpu_ticks`] snapshots, as one line.
fn cpu_report(
    before: &(std::collections::BTreeMap<String, u64>, u64),
    after: &(std::collections::BTreeMap<String, u64>, u64),
) -> String {
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut by: Vec<(String, u64)> = after
        .0
        .iter()
        .map(|(n, t)| (n.clone(), t - before.0.get(n).copied().unwrap_or(0).min(*t)))
        .filter(|(_, t)| *t > 0)
        .collect();
    by.sort_by_key(|b| std::cmp::Reverse(b.1));
    let listed: u64 = by.iter().map(|(_, t)| t).sum();
    let total = after.1.saturating_sub(before.1);
    let mut line = format!("{:.1} s CPU in all:", total as f64 / hz);
    for (name, t) in by.iter().take(8) {
        line += &format!(" {name} {:.1} s,", *t as f64 / hz);
    }
    line += &format!(
        " exited threads {:.1} s",
        total.saturating_sub(listed) as f64 / hz
    );
    line
}

/// The daemon's memory now, one line: resident (anonymous / file-backed) and peak.
fn mem_line(pid: i32) -> String {
    let mib = |k| vm_kib(pid, k).map_or("?".to_owned(), |v| format!("{} MiB", v / 1024));
    format!(
        "RSS {} (anon {}, file {}), peak {}",
        mib("VmRSS:"),
        mib("RssAnon:"),
        mib("RssFile:"),
        mib("VmHWM:")
    )
}

/// `.search/uq…x` of each of `ids` through the mount: p50 and p99 in ms.
fn mount_unique_pass(sem: &Path, ids: &[usize]) -> (f64, f64) {
    let mut times: Vec<f64> = ids
        .iter()
        .map(|&i| {
            let t = Instant::now();
            let _ = fs::read(sem.join(".search").join(unique(i)));
            ms(t.elapsed())
        })
        .collect();
    (pct(&mut times, 0.5), pct(&mut times, 0.99))
}

/// p50/p99 (ms) and wrong answers of one kind of query.
struct Lat {
    name: &'static str,
    p50: f64,
    p99: f64,
    wrong: usize,
    count: usize,
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "MISS"
    }
}

/// Runs `f` while a thread samples this process's `RssAnon`; returns `f`'s result, the
/// growth of `RssAnon` at its highest over the value before, in MiB, and the time taken.
fn peak_anon_growth<T>(f: impl FnOnce() -> T) -> (T, u64, Duration) {
    let me = std::process::id() as i32;
    let base = vm_kib(me, "RssAnon:").unwrap_or(0);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(vm_kib(me, "RssAnon:").unwrap_or(0));
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };
    let t = Instant::now();
    let out = f();
    let took = t.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap_or(0);
    (out, peak.saturating_sub(base) / 1024, took)
}

/// `AGENTFS_BENCH_ONLY=library-memory`: how much memory indexing `n` facts with the library
/// takes when every upsert is queued at once (what a rebuild from the store does) against a
/// `flush` every 5,000 upserts (a bounded backlog). No mount.
fn library_memory(n: usize) {
    println!(
        "searchbench: library memory, {n} facts; load average {}",
        loadavg()
    );
    for (label, every) in [
        ("flush every 5,000", 5_000),
        ("one flush at the end", usize::MAX),
    ] {
        let dir = std::env::temp_dir().join(format!(
            "agentfs-searchbench-mem-{}-{every}",
            std::process::id()
        ));
        let idx = SearchIndex::open(Some(&dir)).expect("open the library index");
        let ((), grew, took) = peak_anon_growth(|| {
            for i in 0..n {
                idx.upsert(AGENT, &rel_path(i), fact(i).text.as_bytes(), 1)
                    .unwrap();
                if (i + 1) % every == 0 {
                    idx.flush().unwrap();
                }
            }
            idx.flush().unwrap();
        });
        idx.shutdown();
        drop(idx);
        let _ = fs::remove_dir_all(&dir);
        println!(
            "searchbench: library {label:<22} {:.1} s, {:.0} facts/s, RssAnon peak +{grew} MiB",
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64()
        );
    }
}

fn main() {
    if unsafe { libc::geteuid() } != 0 || !Path::new("/dev/fuse").exists() {
        println!("searchbench: SKIPPED — needs root and /dev/fuse (it mounts agentfs)");
        return;
    }
    let _wd = Watchdog::new(3600);
    let quick = std::env::var("AGENTFS_BENCH_QUICK").is_ok_and(|v| v != "0" && !v.is_empty());
    let n: usize = if quick { 10_000 } else { 100_000 };
    if std::env::var("AGENTFS_BENCH_ONLY").as_deref() == Ok("library-memory") {
        return library_memory(n);
    }
    // `AGENTFS_BENCH_GREPS=N`: fewer grep runs (each reads every fact).
    let greps = std::env::var("AGENTFS_BENCH_GREPS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(20)
        .max(1);
    let sample = 1_000.min(n);
    let unique_queries = 2_000;
    let avg_bytes = (0..100).map(|i| fact(i).text.len()).sum::<usize>() / 100;
    println!(
        "searchbench: {n} facts of ~{avg_bytes} bytes in MNT/{AGENT}/mem/semantic (over {DIRS} \
         directories){}; binary {}",
        if quick { " (QUICK mode)" } else { "" },
        bin().to_string_lossy()
    );
    println!(
        "searchbench: {} CPUs, load average at start {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg()
    );

    // ---- 1. Write the facts through the mount; how soon is everything searchable? -------
    let root = fresh_dir("searchbench");
    let mut m = Mount::unmounted(root.join("mnt"), root.join("data"), Some(root.clone()));
    m.mount();
    m.agent(AGENT);
    let sem = m.mem(AGENT, "semantic");
    for d in 0..DIRS {
        fs::create_dir(sem.join(format!("d{d:03}"))).unwrap();
    }
    let daemon = m.daemon_pid().expect("daemon pid");
    let cpu_before = cpu_ticks(daemon);
    let write_start = Instant::now();
    for i in 0..n {
        fs::write(sem.join(rel_path(i)), fact(i).text).unwrap();
        if (i + 1) % (n / 10) == 0 {
            let st = index_status(&m.mnt);
            println!(
                "searchbench:   {:>6} written, {:>6.1} s, index {} pending {}",
                i + 1,
                write_start.elapsed().as_secs_f64(),
                st["state"],
                st["pending"]
            );
        }
    }
    let write_time = write_start.elapsed();
    let last_close = Instant::now();
    let last_found = loop {
        if found_in_mount(&sem, n - 1) {
            break Some(last_close.elapsed());
        }
        if last_close.elapsed() > Duration::from_secs(600) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let ready = wait_ready(&m.mnt, last_close, Duration::from_secs(600));
    let ready_at = write_start.elapsed();
    let cpu_write = cpu_report(&cpu_before, &cpu_ticks(daemon));
    // A random sample, each must be found now that the index says ready.
    let mut rng = Rng::new(42);
    let ids: Vec<usize> = (0..sample).map(|_| rng.below(n)).collect();
    let mut missing: Vec<usize> = ids
        .iter()
        .copied()
        .filter(|&i| !found_in_mount(&sem, i))
        .collect();
    let missing_at_ready = missing.len();
    while !missing.is_empty() && last_close.elapsed() < Duration::from_secs(600) {
        std::thread::sleep(Duration::from_millis(20));
        missing.retain(|&i| !found_in_mount(&sem, i));
    }
    let all_found = last_close.elapsed();
    let fmt_opt =
        |d: Option<Duration>| d.map_or("never (600 s)".to_owned(), |d| format!("{:.0} ms", ms(d)));
    println!(
        "searchbench: wrote {n} facts in {:.1} s ({:.0} facts/s); after the last close: last \
         fact found {}, index ready {}, sample of {sample} checked at {:.0} ms ({} not found \
         when the index said ready, {} never)",
        write_time.as_secs_f64(),
        n as f64 / write_time.as_secs_f64(),
        fmt_opt(last_found),
        fmt_opt(ready),
        ms(all_found),
        missing_at_ready,
        missing.len()
    );
    println!("searchbench: daemon during the writes and the catch-up: {cpu_write}");
    println!(
        "searchbench: daemon memory after the writes: {}",
        mem_line(daemon)
    );
    std::thread::sleep(Duration::from_millis(500));
    let index_dir = m.data.join("search-index");
    let index_bytes = dir_bytes(&index_dir);

    // ---- 2. Query latency through the mount. ---------------------------------------------
    let kinds = query_kinds(n, &mut Rng::new(7), unique_queries);
    let mut mount_lat = Vec::new();
    for kind in &kinds {
        let mut times = Vec::with_capacity(kind.queries.len());
        let mut wrong = 0;
        for q in &kind.queries {
            let t = Instant::now();
            let out = fs::read(sem.join(".search").join(&q.text));
            times.push(ms(t.elapsed()));
            let ok = out
                .ok()
                .and_then(|o| hit_paths(&o))
                .is_some_and(|p| matches(&q.expect, p));
            wrong += usize::from(!ok);
        }
        let count = times.len();
        mount_lat.push(Lat {
            name: kind.name,
            p50: pct(&mut times, 0.5),
            p99: pct(&mut times, 0.99),
            wrong,
            count,
        });
    }
    // The same through `cat` (a process per query, as a shell script would do).
    let mut rng = Rng::new(99);
    let mut cat_times = Vec::new();
    for _ in 0..200 {
        let i = rng.below(n);
        let t = Instant::now();
        let out = Command::new("cat")
            .arg(sem.join(".search").join(unique(i)))
            .output()
            .expect("run cat");
        cat_times.push(ms(t.elapsed()));
        assert!(out.status.success(), "cat .search/{}", unique(i));
    }
    let cat_p50 = pct(&mut cat_times, 0.5);
    for l in &mount_lat {
        println!(
            "searchbench: mount   {:<22} p50 {:>7.3} ms  p99 {:>7.3} ms  ({} queries, {} wrong)",
            l.name, l.p50, l.p99, l.count, l.wrong
        );
    }
    println!("searchbench: mount   `cat .search/uq…x`      p50 {cat_p50:>7.3} ms (200 processes)");

    // ---- 3. grep through the mount. -------------------------------------------------------
    let mut rng = Rng::new(2024);
    let grep_words: Vec<usize> = (0..greps).map(|_| rng.below(n)).collect();
    println!(
        "searchbench: daemon memory after the queries: {}",
        mem_line(daemon)
    );
    let (mut grep_mnt, grep_mnt_wrong) = grep_times(&sem, &grep_words);
    println!(
        "searchbench: daemon memory after grep through the mount: {}",
        mem_line(daemon)
    );
    // The unique-word queries again, now that the daemon has been idle (no merges running).
    let again: Vec<usize> = (0..unique_queries).map(|_| rng.below(n)).collect();
    let (again_p50, again_p99) = mount_unique_pass(&sem, &again);
    println!(
        "searchbench: mount   unique word, 2nd pass   p50 {again_p50:>7.3} ms  p99 {again_p99:>7.3} ms"
    );
    let grep_mnt_p50 = pct(&mut grep_mnt, 0.5);
    println!(
        "searchbench: grep -rl through the mount: p50 {grep_mnt_p50:.0} ms (min {:.0}, max \
         {:.0}; {greps} words, {grep_mnt_wrong} wrong)",
        grep_mnt[0],
        grep_mnt[grep_mnt.len() - 1]
    );

    // ---- 4. Rebuild from the store. -------------------------------------------------------
    let cpu_before = cpu_ticks(daemon);
    let t = Instant::now();
    fs::write(
        m.mnt.join("sys/agents").join(AGENT).join("index"),
        "rebuild\n",
    )
    .unwrap();
    let rebuilt = wait_ready(&m.mnt, t, Duration::from_secs(900));
    let cpu_rebuild = cpu_report(&cpu_before, &cpu_ticks(daemon));
    let rebuild_missing = (0..100)
        .map(|_| rng.below(n))
        .filter(|&i| !found_in_mount(&sem, i))
        .count();
    std::thread::sleep(Duration::from_millis(500));
    let index_bytes_rebuilt = dir_bytes(&index_dir);
    println!(
        "searchbench: rebuild from the store: {} ({} of 100 random facts not found right after)",
        fmt_opt(rebuilt),
        rebuild_missing
    );
    println!("searchbench: daemon during the rebuild: {cpu_rebuild}");
    println!(
        "searchbench: daemon memory after the rebuild: {}",
        mem_line(daemon)
    );
    let rss = vm_hwm_kib(daemon);
    m.unmount();

    // ---- 5. grep over the same files on tmpfs. --------------------------------------------
    let shm = PathBuf::from("/dev/shm").join(format!("searchbench-{}", std::process::id()));
    for d in 0..DIRS {
        fs::create_dir_all(shm.join(format!("d{d:03}"))).unwrap();
    }
    for i in 0..n {
        fs::write(shm.join(rel_path(i)), fact(i).text).unwrap();
    }
    let (mut grep_shm, grep_shm_wrong) = grep_times(&shm, &grep_words);
    let _ = fs::remove_dir_all(&shm);
    let grep_shm_p50 = pct(&mut grep_shm, 0.5);
    println!(
        "searchbench: grep -rl on tmpfs: p50 {grep_shm_p50:.0} ms (min {:.0}, max {:.0}; \
         {grep_shm_wrong} wrong)",
        grep_shm[0],
        grep_shm[grep_shm.len() - 1]
    );

    // ---- 6. The library: the same facts, the same queries. --------------------------------
    let lib_dir = fresh_dir("searchbench-lib");
    let idx = SearchIndex::open(Some(&lib_dir)).expect("open the library index");
    let t = Instant::now();
    for i in 0..n {
        idx.upsert(AGENT, &rel_path(i), fact(i).text.as_bytes(), 1_700_000_000)
            .unwrap();
    }
    idx.flush().unwrap();
    let lib_index_time = t.elapsed();
    let mut lib_lat = Vec::new();
    for kind in &kinds {
        let mut times = Vec::with_capacity(kind.queries.len());
        let mut wrong = 0;
        for q in &kind.queries {
            let t = Instant::now();
            let hits = idx.search(AGENT, &q.text, LIMIT);
            times.push(ms(t.elapsed()));
            let ok =
                hits.is_ok_and(|h| matches(&q.expect, h.into_iter().map(|h| h.path).collect()));
            wrong += usize::from(!ok);
        }
        let count = times.len();
        lib_lat.push(Lat {
            name: kind.name,
            p50: pct(&mut times, 0.5),
            p99: pct(&mut times, 0.99),
            wrong,
            count,
        });
    }
    // The unique-word queries again after 10 s idle (the writer's merges have had time).
    std::thread::sleep(Duration::from_secs(10));
    let mut times: Vec<f64> = again
        .iter()
        .map(|&i| {
            let t = Instant::now();
            let _ = idx.search(AGENT, &unique(i), LIMIT);
            ms(t.elapsed())
        })
        .collect();
    let (lib_again_p50, lib_again_p99) = (pct(&mut times, 0.5), pct(&mut times, 0.99));
    idx.shutdown();
    drop(idx);
    let lib_bytes = dir_bytes(&lib_dir);
    let _ = fs::remove_dir_all(&lib_dir);
    for l in &lib_lat {
        println!(
            "searchbench: library {:<22} p50 {:>7.3} ms  p99 {:>7.3} ms  ({} queries, {} wrong)",
            l.name, l.p50, l.p99, l.count, l.wrong
        );
    }

    // ---- Summary. -------------------------------------------------------------------------
    let secs = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64());
    let uq = &mount_lat[0];
    println!();
    println!("searchbench: load average at the end {}", loadavg());
    println!("| figure | value | target |");
    println!("|---|---:|---|");
    println!(
        "| write {n} facts through the mount | {:.1} s ({:.0} facts/s) | |",
        write_time.as_secs_f64(),
        n as f64 / write_time.as_secs_f64()
    );
    println!(
        "| last close → last fact found | {} | ≤ 1 s {} |",
        fmt_opt(last_found),
        verdict(last_found.is_some_and(|d| d <= Duration::from_secs(1)))
    );
    println!(
        "| last close → index `ready` | {} | ≤ 1 s {} |",
        fmt_opt(ready),
        verdict(ready.is_some_and(|d| d <= Duration::from_secs(1)))
    );
    println!(
        "| last close → {sample} random facts each found | {:.0} ms ({missing_at_ready} missing at `ready`, {} never) | |",
        ms(all_found),
        missing.len()
    );
    println!(
        "| indexing rate, end to end (first write → `ready`) | {:.0} facts/s | |",
        n as f64 / ready_at.as_secs_f64()
    );
    println!(
        "| indexing rate, rebuild from the store | {:.0} facts/s ({}) | |",
        n as f64 / secs(rebuilt),
        fmt_opt(rebuilt)
    );
    println!(
        "| indexing rate, library (`upsert` ×{n} + `flush`) | {:.0} facts/s ({:.1} s) | |",
        n as f64 / lib_index_time.as_secs_f64(),
        lib_index_time.as_secs_f64()
    );
    for (mo, li) in mount_lat.iter().zip(&lib_lat) {
        let target = if mo.name == "unique word" {
            format!("p50 ≤ 2 ms {}", verdict(mo.p50 <= 2.0))
        } else {
            String::new()
        };
        println!(
            "| {} ({} q): mount p50 / p99 | {:.3} / {:.3} ms (library {:.3} / {:.3} ms){} | {target} |",
            mo.name,
            mo.count,
            mo.p50,
            mo.p99,
            li.p50,
            li.p99,
            if mo.wrong + li.wrong > 0 {
                format!("; WRONG answers: mount {}, library {}", mo.wrong, li.wrong)
            } else {
                String::new()
            }
        );
    }
    println!(
        "| unique word, 2nd pass after idle: mount p50 / p99 | {again_p50:.3} / {again_p99:.3} ms \
         (library {lib_again_p50:.3} / {lib_again_p99:.3} ms) | |"
    );
    println!("| `cat .search/uq…x` (process per query) p50 | {cat_p50:.3} ms | |");
    println!(
        "| `grep -rl` through the mount, p50 of {greps} | {grep_mnt_p50:.0} ms{} | |",
        if grep_mnt_wrong > 0 {
            format!(" ({grep_mnt_wrong} wrong)")
        } else {
            String::new()
        }
    );
    println!(
        "| `grep -rl` on tmpfs, p50 of {greps} | {grep_shm_p50:.0} ms{} | |",
        if grep_shm_wrong > 0 {
            format!(" ({grep_shm_wrong} wrong)")
        } else {
            String::new()
        }
    );
    let r_mnt = grep_mnt_p50 / uq.p50;
    let r_shm = grep_shm_p50 / uq.p50;
    println!(
        "| grep (mount) / `.search` (mount), p50 | {r_mnt:.0}× | ≥ 100× {} |",
        verdict(r_mnt >= 100.0)
    );
    println!(
        "| grep (tmpfs) / `.search` (mount), p50 | {r_shm:.0}× | ≥ 100× {} |",
        verdict(r_shm >= 100.0)
    );
    println!(
        "| index on disk per fact (`DATA/search-index`) | {:.0} bytes ({:.1} MiB) | (reported) |",
        index_bytes as f64 / n as f64,
        index_bytes as f64 / 1048576.0
    );
    println!(
        "| the same after the rebuild | {:.0} bytes ({:.1} MiB) | |",
        index_bytes_rebuilt as f64 / n as f64,
        index_bytes_rebuilt as f64 / 1048576.0
    );
    println!(
        "| library index per fact | {:.0} bytes ({:.1} MiB) | |",
        lib_bytes as f64 / n as f64,
        lib_bytes as f64 / 1048576.0
    );
    if let Some(kib) = rss {
        println!(
            "| daemon peak RSS (VmHWM) | {} MiB | (reported) |",
            kib / 1024
        );
    }
}
