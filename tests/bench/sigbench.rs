//! agentfs signals benchmark (harness = false): `cargo bench -p agentfs --bench sigbench`.
//! Needs root (it mounts). Informational: prints figures against the targets, never fails.
//!
//! * STOP latency: from the return of `write("STOP")` to the bound process being in state T
//!   (`/proc/PID/stat`), p50/p99 over 200 rounds;
//! * CONT latency: from the call of `write("CONT")` to a parked write returning;
//! * identity lookup cost: small-file create rate by an operator with no process bound, and
//!   with processes bound (every request then resolves its pid), same mount, same run.

#[path = "../common/mod.rs"]
mod common;

use common::*;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const ROUNDS: usize = 200;

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

    // 3. Identity lookup on the create path.
    let dir = m.mem("b", "semantic");
    let n = 3000;
    let unbound = create_rate(&dir.join("unbound"), n);
    let mut sleepers: Vec<Child> = (0..4)
        .map(|_| Command::new("sleep").arg("600").spawn().unwrap())
        .collect();
    for s in &sleepers {
        fs::write(m.mnt.join("sys/agents/a/pids"), format!("{}", s.id())).unwrap();
    }
    let bound = create_rate(&dir.join("bound"), n);
    let unbound2 = create_rate(&dir.join("unbound2"), n);
    for s in &mut sleepers {
        let _ = s.kill();
        let _ = s.wait();
    }

    println!("\n=== sigbench ({ROUNDS} rounds)");
    report("STOP -> bound process in state T", &mut stop, 10.0);
    report("CONT -> parked write returns", &mut cont, 10.0);
    // Bindings are never removed while the mount lives, so "no process bound" is measured
    // before; its two runs bracket the machine's drift.
    let base = unbound.max(unbound2);
    let overhead = (base / bound - 1.0) * 100.0;
    println!(
        "{:<36} no binding {unbound:>8.0} files/s, with 4 bound processes {bound:>8.0} files/s  overhead {overhead:>5.1}%  target ≤ 5%  {}",
        "identity lookup (create+4KiB+close)",
        if overhead <= 5.0 { "PASS" } else { "MISS" }
    );
    println!("sigbench: load average at the end {}", loadavg());
}

fn create_rate(dir: &std::path::Path, n: usize) -> f64 {
    fs::create_dir_all(dir).unwrap();
    let data = vec![7u8; 4096];
    let t0 = Instant::now();
    for i in 0..n {
        let mut f = fs::File::create(dir.join(format!("f{i}"))).unwrap();
        f.write_all(&data).unwrap();
    }
    n as f64 / t0.elapsed().as_secs_f64()
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
