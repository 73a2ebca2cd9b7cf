//! Concurrency storm (SPEC §9, issue 8): 8 agents × 10,000 mixed operations at once, while an
//! operator storms them with STOP/CONT and KILL/START and the policy is reloaded (SIGHUP)
//! over and over. On 2 cores. Checked: no deadlock (the watchdog aborts a hung run), every
//! acknowledged write is there afterwards (also after a remount), the flight recorder's chain
//! verifies.
//!
//! A worker whose operation fails because its agent was killed meanwhile (EPERM) waits for
//! the START and goes on; the file that operation touched may hold the old or the new
//! content, and both are accepted for it until a later write settles it.
//! `AGENTFS_STORM_OPS` (default 10,000) sets the operations per agent.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const AGENTS: usize = 8;
/// A policy file, so that each reload re-reads and re-checks something real.
const POLICY: &str = "[builtin]\ndisable = [\"max-file-size\"]\n";

/// What a file may hold: every content a write that failed (agent killed) may have left,
/// plus the last acknowledged one.
#[derive(Default)]
struct Expect {
    acked: Option<Vec<u8>>,
    maybe: Vec<Vec<u8>>,
}

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// Writes a whole file and closes it, checking close(2) (a failed flush is not an ack).
fn write_file(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    f.write_all(data)?;
    close_checked(f)
}

fn append(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = OpenOptions::new().append(true).create(true).open(path)?;
    f.write_all(data)?;
    close_checked(f)
}

fn state(mnt: &Path, agent: &str) -> String {
    fs::read_to_string(mnt.join("sys/agents").join(agent).join("signal"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// One agent's worker: returns what each of its files must hold.
fn worker(
    mnt: PathBuf,
    agent: String,
    ops: u64,
    seed: u64,
    done: Arc<AtomicU64>,
) -> BTreeMap<String, Expect> {
    let sem = mnt.join(&agent).join("mem/semantic");
    let epi = mnt.join(&agent).join("mem/episodic");
    let mut files: BTreeMap<String, Expect> = BTreeMap::new();
    let mut log: Vec<u8> = Vec::new();
    let mut log_maybe = false;
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut i = 0;
    while i < ops {
        let r = next();
        let name = format!("f{}", r % 32);
        let result = match (r >> 8) % 10 {
            // Write a whole fact.
            0..=4 => {
                let data = format!("{agent} op {i} {}\n", next()).into_bytes();
                let res = write_file(&sem.join(&name), &data);
                let e = files.entry(name.clone()).or_default();
                match &res {
                    Ok(()) => {
                        e.acked = Some(data);
                        e.maybe.clear();
                    }
                    Err(_) => {
                        // Cut short: the new content, or the old one, or truncated by O_TRUNC.
                        e.maybe.push(data);
                        e.maybe.push(Vec::new());
                    }
                }
                res
            }
            // Append an experience.
            5..=6 => {
                let line = format!("{agent} event {i}\n").into_bytes();
                let res = append(&epi.join("log"), &line);
                match &res {
                    Ok(()) if !log_maybe => log.extend_from_slice(&line),
                    _ => log_maybe = true,
                }
                res
            }
            // Read back an acknowledged fact.
            7..=8 => match files.get(&name) {
                Some(Expect {
                    acked: Some(want),
                    maybe,
                }) if maybe.is_empty() => match fs::read(sem.join(&name)) {
                    Ok(got) => {
                        assert_eq!(&got, want, "{agent}/{name}: read back after op {i}");
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
                _ => Ok(()),
            },
            // Delete a fact.
            _ => {
                let res = fs::remove_file(sem.join(&name));
                match &res {
                    Ok(()) => {
                        files.remove(&name);
                    }
                    Err(e) if errno(e) == libc::ENOENT => {
                        if files
                            .get(&name)
                            .is_some_and(|e| e.acked.is_some() && e.maybe.is_empty())
                        {
                            panic!("{agent}/{name}: acknowledged file missing at op {i}");
                        }
                    }
                    Err(_) => {
                        // Removed or not: either is fine until a later write.
                        files
                            .entry(name.clone())
                            .or_default()
                            .maybe
                            .push(Vec::new());
                    }
                }
                res.or_else(|e| {
                    if errno(&e) == libc::ENOENT {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
            }
        };
        match result {
            Ok(()) => {}
            // Killed meanwhile: wait for the operator's START, then go on.
            Err(e) if errno(&e) == libc::EPERM => {
                let deadline = Instant::now() + Duration::from_secs(30);
                while state(&mnt, &agent) == "killed" {
                    assert!(Instant::now() < deadline, "{agent}: never restarted");
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            Err(e) => panic!("{agent}: op {i} failed with {}", errno_name(errno(&e))),
        }
        i += 1;
        done.fetch_add(1, Ordering::Relaxed);
    }
    if !log_maybe {
        files.insert(
            "../episodic/log".into(),
            Expect {
                acked: Some(log),
                maybe: Vec::new(),
            },
        );
    }
    files
}

fn check(mnt: &Path, agent: &str, files: &BTreeMap<String, Expect>, when: &str) -> u64 {
    let sem = mnt.join(agent).join("mem/semantic");
    let mut bytes = 0;
    for (name, e) in files {
        let got = fs::read(sem.join(name)).ok();
        let ok = got.as_ref() == e.acked.as_ref()
            || e.maybe
                .iter()
                .any(|m| got.as_deref() == Some(m.as_slice()) || (m.is_empty() && got.is_none()));
        assert!(
            ok,
            "{when}: {agent}/{name} holds {:?}, want {:?} or one of {} unacknowledged versions",
            got.as_ref()
                .map(|g| String::from_utf8_lossy(g).into_owned()),
            e.acked
                .as_ref()
                .map(|g| String::from_utf8_lossy(g).into_owned()),
            e.maybe.len()
        );
        bytes += got.map_or(0, |g| g.len() as u64);
    }
    bytes
}

#[test]
fn storm() {
    let ops: u64 = std::env::var("AGENTFS_STORM_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    // Garbage collection rounds every 200 ms race the storm too.
    let Some(mut m) = Mount::try_new_with(
        common::DEFAULT_TEST_SECS,
        Some(POLICY),
        &["--gc-interval", "200ms"],
    ) else {
        return;
    };
    let names: Vec<String> = (0..AGENTS).map(|i| format!("s{i}")).collect();
    for n in &names {
        m.agent(n);
    }
    let started = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let (mnt, n, done) = (m.mnt.clone(), n.clone(), done.clone());
            std::thread::spawn(move || worker(mnt, n, ops, 0x9E37_79B9 * (i as u64 + 1), done))
        })
        .collect();
    // The operator: signal storms on random agents, and policy reloads.
    let operator = {
        let (mnt, names, stop) = (m.mnt.clone(), names.clone(), stop.clone());
        let daemon = m.daemon_pid().expect("daemon pid");
        std::thread::spawn(move || {
            let mut r: u64 = 12345;
            let (mut signals, mut reloads) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                r = r
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let agent = &names[(r >> 33) as usize % names.len()];
                let sig = mnt.join("sys/agents").join(agent).join("signal");
                let (first, second) = if (r >> 20).is_multiple_of(4) {
                    ("KILL", "START")
                } else {
                    ("STOP", "CONT")
                };
                fs::write(&sig, first).unwrap();
                std::thread::sleep(Duration::from_micros(200 + (r >> 40) % 3000));
                fs::write(&sig, second).unwrap();
                signals += 2;
                if signals.is_multiple_of(40) {
                    // SAFETY: a signal to the daemon this test started.
                    assert_eq!(unsafe { libc::kill(daemon, libc::SIGHUP) }, 0);
                    reloads += 1;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (signals, reloads)
        })
    };
    let expected: Vec<BTreeMap<String, Expect>> = workers
        .into_iter()
        .map(|w| w.join().expect("a worker failed"))
        .collect();
    stop.store(true, Ordering::Relaxed);
    let (signals, reloads) = operator.join().expect("the operator failed");
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(done.load(Ordering::Relaxed), ops * AGENTS as u64);

    let metrics = fs::read_to_string(m.mnt.join("sys/metrics")).expect("read sys/metrics");
    let gc: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("agentfs_gc_") && l.contains("durable"))
        .collect();
    let mut bytes = 0;
    for (n, files) in names.iter().zip(&expected) {
        assert_ne!(state(&m.mnt, n), "killed");
        bytes += check(&m.mnt, n, files, "after the storm");
    }
    m.remount();
    for (n, files) in names.iter().zip(&expected) {
        check(&m.mnt, n, files, "after a remount");
    }
    assert_audit_verifies(&m.data, "after the storm");
    eprintln!(
        "storm: {AGENTS} agents x {ops} ops in {secs:.1} s ({:.0} ops/s), {signals} signals, \
         {reloads} policy reloads, {bytes} bytes verified, chain verified",
        (ops * AGENTS as u64) as f64 / secs
    );
    eprintln!("storm: garbage collection during it: {gc:?}");
    assert!(
        gc.iter()
            .any(|l| l.starts_with("agentfs_gc_rounds_total") && !l.ends_with(" 0")),
        "the collector ran during the storm: {gc:?}"
    );
}
