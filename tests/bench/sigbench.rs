//! agentfs signals benchmark (harness = false): `cargo bench -p agentfs --bench sigbench`.
//! Needs root (it mounts). Informational: prints figures against the targets, never fails.
//!
//! * STOP latency: from the return of `write("STOP")` to the bound process being in state T
//!   (`/proc/PID/stat`), p50/p99 over 200 rounds;
//! * CONT latency: from the call of `write("CONT")` to a parked write returning;
//! * identity lookup cost: small-file create rate by an operator on a mount with no process
//!   bound and on one with 4 processes bound (every request then resolves its pid), same
//!   binary, in alternating batches; the median of the paired ratios.

#[path = "../common/mod.rs"]
mod common;

use common::*;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const ROUNDS: usize = 200;
/// Paired batches of the identity-lookup comparison, and files per batch.
const IDENTITY_PAIRS: usize = 16;
const IDENTITY_BATCH: usize = 500;

fn main() {
    if unsafe { libc::geteuid() } != 0 || !std::path::Path::new("/dev/fuse").exists() {
        println!("sigbench: SKIPPED — needs root and /dev/fuse");
        return;
    }
    let _wd = Watchdog::new(1800);
    let root = fresh_dir("sigbench");
    let mut m = Mount::unmounted(root.join("mnt"), root.join("data"), None);
    m.mount();
    m.agent("a");
    m.agent("b");
    println!(
        "sigbench: {} CPUs, load average at start {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg()
    );

    let signal = m.mnt.join("sys/agents/a/signal");
    let send = |s: &str| fs::write(&signal, s).expect("signal");

    // 1. STOP -> state T of a bound busy process.
    let mut busy: Child = Command::new("sh")
        .arg("-c")
        .arg("while :; do :; done")
        .spawn()
        .unwrap();
    fs::write(m.mnt.join("sys/agents/a/pids"), format!("{}", busy.id())).unwrap();
    let mut stop = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        send("STOP");
        let t0 = Instant::now();
        while proc_state(busy.id()) != Some('T') {
            std::hint::spin_loop();
        }
        stop.push(t0.elapsed());
        send("CONT");
        while proc_state(busy.id()) == Some('T') {
            std::hint::spin_loop();
        }
    }
    let _ = busy.kill();
    let _ = busy.wait();

    // 2. CONT -> a parked write returns.
    let file = m.mem("a", "working").join("parked");
    fs::write(&file, b"").unwrap();
    let status = m.mnt.join("sys/agents/a/status");
    let parked = || {
        fs::read_to_string(&status)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["parked_calls"].as_u64())
            .unwrap_or(0)
    };
    let mut cont = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        send("STOP");
        let (tx, rx) = mpsc::channel();
        let path = file.clone();
        let writer = std::thread::spawn(move || {
            let mut f = OpenOptions::new().append(true).open(path).unwrap();
            f.write_all(b"x").unwrap();
            let _ = tx.send(Instant::now());
        });
        while parked() == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
        // From just before the write of CONT: the parked write may return before it does.
        let t0 = Instant::now();
        send("CONT");
        let done = rx.recv().unwrap();
        cont.push(done.saturating_duration_since(t0));
        writer.join().unwrap();
    }

    // 3. Identity lookup on the create path. Bindings last as long as the mount, so the
    // comparison is between two mounts of the same binary, one with processes bound and one
    // without, measured in alternating batches (ABBA order) so that the machine's drift
    // lands on both sides; the figure is the median of the paired ratios.
    let mut plain = Mount::unmounted(root.join("mnt2"), root.join("data2"), None);
    plain.mount();
    plain.agent("b");
    let mut sleepers: Vec<Child> = (0..4)
        .map(|_| Command::new("sleep").arg("600").spawn().unwrap())
        .collect();
    for s in &sleepers {
        fs::write(m.mnt.join("sys/agents/a/pids"), format!("{}", s.id())).unwrap();
    }
    let (with_dir, without_dir) = (m.mem("b", "semantic"), plain.mem("b", "semantic"));
    let daemon = |m: &Mount| m.daemon_pid().expect("the daemon writes its pid file");
    let (bound_daemon, plain_daemon) = (daemon(&m), daemon(&plain));
    let mut pairs = Vec::with_capacity(IDENTITY_PAIRS);
    for round in 0..IDENTITY_PAIRS {
        let with = || {
            create_batch(
                &with_dir.join(format!("r{round}")),
                IDENTITY_BATCH,
                bound_daemon,
            )
        };
        let without = || {
            create_batch(
                &without_dir.join(format!("r{round}")),
                IDENTITY_BATCH,
                plain_daemon,
            )
        };
        let (bound, unbound) = if round % 2 == 0 {
            let u = without();
            (with(), u)
        } else {
            let b = with();
            (b, without())
        };
        pairs.push((unbound, bound));
    }
    for s in &mut sleepers {
        let _ = s.kill();
        let _ = s.wait();
    }
    plain.unmount();

    println!("\n=== sigbench ({ROUNDS} rounds)");
    report("STOP -> bound process in state T", &mut stop, 10.0);
    report("CONT -> parked write returns", &mut cont, 10.0);
    // Wall time per file, and the daemon's CPU time per file: the second is far less
    // sensitive to what else the machine runs.
    let wall = |b: &Batch| b.wall_us_per_file;
    let cpu = |b: &Batch| b.daemon_cpu_us_per_file;
    println!(
        "identity lookup (create+4KiB+close), medians of {IDENTITY_PAIRS} alternating batches of {IDENTITY_BATCH} files:"
    );
    for (name, f) in [
        ("wall time", &wall as &dyn Fn(&Batch) -> f64),
        ("daemon CPU", &cpu),
    ] {
        let overheads = sorted(pairs.iter().map(|(u, b)| (f(b) / f(u) - 1.0) * 100.0));
        let overhead = median(&overheads);
        println!(
            "  {name:<11} no binding {:>6.1} us/file, 4 bound processes {:>6.1} us/file  overhead {overhead:>5.1}% (pairs {:.1}% to {:.1}%)  target ≤ 5%  {}",
            median(&sorted(pairs.iter().map(|(u, _)| f(u)))),
            median(&sorted(pairs.iter().map(|(_, b)| f(b)))),
            overheads[0],
            overheads[overheads.len() - 1],
            if overhead <= 5.0 { "PASS" } else { "MISS" }
        );
    }
    println!("sigbench: load average at the end {}", loadavg());
}

fn sorted(values: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    v
}

fn median(sorted: &[f64]) -> f64 {
    sorted[sorted.len() / 2]
}

/// One batch of the identity comparison.
struct Batch {
    wall_us_per_file: f64,
    daemon_cpu_us_per_file: f64,
}

/// Creates `n` files of 4 KiB in `dir` (create, write, close each).
fn create_batch(dir: &std::path::Path, n: usize, daemon: i32) -> Batch {
    fs::create_dir_all(dir).unwrap();
    let data = vec![7u8; 4096];
    let cpu0 = daemon_cpu_ns(daemon);
    let t0 = Instant::now();
    for i in 0..n {
        let mut f = fs::File::create(dir.join(format!("f{i}"))).unwrap();
        f.write_all(&data).unwrap();
    }
    let wall = t0.elapsed();
    let cpu = daemon_cpu_ns(daemon).saturating_sub(cpu0);
    Batch {
        wall_us_per_file: wall.as_secs_f64() * 1e6 / n as f64,
        daemon_cpu_us_per_file: cpu as f64 / 1e3 / n as f64,
    }
}

fn report(name: &str, samples: &mut [Duration], target_ms: f64) {
    samples.sort();
    let pick = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    let p50 = pick(0.50).as_secs_f64() * 1e3;
    let p99 = pick(0.99).as_secs_f64() * 1e3;
    let max = samples[samples.len() - 1].as_secs_f64() * 1e3;
    println!(
        "{name:<36} p50 {p50:>7.3} ms  p99 {p99:>7.3} ms  max {max:>7.3} ms  target p99 ≤ {target_ms} ms  {}",
        if p99 <= target_ms { "PASS" } else { "MISS" }
    );
}
