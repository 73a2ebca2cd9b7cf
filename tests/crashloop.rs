//! Crash loop (SPEC §9, issue 8): mount, run a mixed workload of several agents, `kill -9` the
//! daemon at a random moment, remount, check, repeat.
//!
//! Each agent has one worker thread doing one operation at a time, so a model kept here
//! (outside the mount) knows exactly what the agent's `mem/semantic` and `mem/episodic` hold
//! after every acknowledged operation; the one operation in flight when the daemon died may
//! or may not have taken effect, so after the remount the tree must equal one of the model's
//! candidates for it (before, after, or a step in between for operations with several steps).
//! Checked after every crash: the trees and checkpoints, that no refused (policy-violating)
//! bytes are anywhere, that the flight recorder's chain verifies, and that the semantic index
//! agrees with the store once caught up (every live fact found at its path, facts gone not
//! found).
//!
//! `AGENTFS_CRASH_CYCLES` (default 20) and `AGENTFS_CRASH_SEED` (default: from the clock,
//! printed) drive it; `scripts/crashloop.sh N` runs N cycles with a release build.

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Paths below `AGENT/mem` (`semantic/f3`, `episodic/log`) → content.
type Tree = BTreeMap<String, Vec<u8>>;

/// What an agent holds: its files and its checkpoints.
#[derive(Clone, Debug, Default, PartialEq)]
struct State {
    tree: Tree,
    checkpoints: BTreeMap<String, Tree>,
}

/// A policy-violating secret: writes holding it must be refused and never stored.
const SECRET: &str = "AKIAIOSFODNN7EXAMPLE";

/// Small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// One agent's model and its worker's outcome.
struct Agent {
    name: String,
    state: State,
    /// States the tree may be in if the daemon died during the last operation.
    in_flight: Vec<State>,
    /// Tokens ever written to semantic memory (each fact starts with its own).
    tokens: BTreeSet<String>,
    counter: u64,
    /// An error that was not caused by the crash: a failure of the test.
    unexpected: Option<String>,
    /// The last operations, for a failure message.
    history: Vec<String>,
}

impl Agent {
    fn note(&mut self, what: String) {
        if self.history.len() >= 12 {
            self.history.remove(0);
        }
        self.history.push(what);
    }
}

fn token(agent: &str, n: u64) -> String {
    format!("tk{agent}{n}x")
}

fn fact(tok: &str, rng: &mut Rng) -> Vec<u8> {
    let filler = rng.below(2000) as usize + 16;
    let mut v = format!("{tok} ").into_bytes();
    v.extend(
        pattern(rng.next(), filler)
            .iter()
            .map(|b| b"abcdefgh ij"[*b as usize % 11]),
    );
    v.push(b'\n');
    v
}

/// The error of a call, as an errno.
fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// One operation of the workload: applies it through the mount and returns the states the tree
/// passes through (the last one is the result). `Err` carries the errno and the states the
/// tree may be in if it failed.
fn step(mnt: &Path, a: &mut Agent, rng: &mut Rng, cycle: u64) -> Result<State, (i32, Vec<State>)> {
    let root = mnt.join(&a.name);
    let mem = root.join("mem");
    let before = a.state.clone();
    let mut after = before.clone();
    let sem_files: Vec<String> = before
        .tree
        .keys()
        .filter(|p| p.starts_with("semantic/"))
        .cloned()
        .collect();
    let fail = |e: std::io::Error, states: Vec<State>| (errno(&e), states);
    match rng.below(100) {
        // A new fact: create, write, close (the file may exist empty if that is cut short).
        0..=29 if sem_files.len() < 40 => {
            a.counter += 1;
            let tok = token(&a.name, a.counter);
            a.tokens.insert(tok.clone());
            let path = format!("semantic/f{}", a.counter);
            a.note(format!("create {path}"));
            let data = fact(&tok, rng);
            after.tree.insert(path.clone(), data.clone());
            let mut empty = before.clone();
            empty.tree.insert(path.clone(), Vec::new());
            let cands = vec![before.clone(), empty, after.clone()];
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(mem.join(&path))
                .map_err(|e| fail(e, cands.clone()))?;
            f.write_all(&data).map_err(|e| fail(e, cands.clone()))?;
            f.sync_all().map_err(|e| fail(e, cands.clone()))?;
            close_checked(f).map_err(|e| fail(e, cands.clone()))?;
        }
        // An experience: one append to an episodic log.
        30..=49 => {
            let log = format!("episodic/log{}", rng.below(3));
            let line = format!("cycle {cycle} event {} {}\n", a.counter, rng.next());
            a.note(format!("append {} bytes to {log}", line.len()));
            // A new log may be left created but empty.
            let mut cands = vec![before.clone()];
            if !before.tree.contains_key(&log) {
                let mut empty = before.clone();
                empty.tree.insert(log.clone(), Vec::new());
                cands.push(empty);
            }
            after
                .tree
                .entry(log.clone())
                .or_default()
                .extend_from_slice(line.as_bytes());
            cands.push(after.clone());
            let mut f = OpenOptions::new()
                .append(true)
                .create(true)
                .open(mem.join(&log))
                .map_err(|e| fail(e, cands.clone()))?;
            f.write_all(line.as_bytes())
                .map_err(|e| fail(e, cands.clone()))?;
            close_checked(f).map_err(|e| fail(e, cands.clone()))?;
        }
        // Rename a fact (atomic).
        50..=59 if !sem_files.is_empty() => {
            let from = &sem_files[rng.below(sem_files.len() as u64) as usize];
            a.counter += 1;
            let to = format!("semantic/r{}", a.counter);
            a.note(format!("rename {from} {to}"));
            let data = after.tree.remove(from).unwrap_or_default();
            after.tree.insert(to.clone(), data);
            fs::rename(mem.join(from), mem.join(&to))
                .map_err(|e| fail(e, vec![before.clone(), after.clone()]))?;
        }
        // Truncate a fact (atomic; keeps its token).
        60..=67 if !sem_files.is_empty() => {
            let path = &sem_files[rng.below(sem_files.len() as u64) as usize];
            let data = after.tree.get_mut(path).expect("modelled file");
            let keep = (data.len() as u64 / 2).max(16).min(data.len() as u64);
            let what = format!("truncate {path} {keep}");
            data.truncate(keep as usize);
            a.note(what);
            let f = OpenOptions::new()
                .write(true)
                .open(mem.join(path))
                .map_err(|e| fail(e, vec![before.clone(), after.clone()]))?;
            f.set_len(keep)
                .map_err(|e| fail(e, vec![before.clone(), after.clone()]))?;
            close_checked(f).map_err(|e| fail(e, vec![before.clone(), after.clone()]))?;
        }
        // Delete a fact.
        68..=75 if !sem_files.is_empty() => {
            let path = &sem_files[rng.below(sem_files.len() as u64) as usize];
            after.tree.remove(path);
            a.note(format!("rm {path}"));
            fs::remove_file(mem.join(path))
                .map_err(|e| fail(e, vec![before.clone(), after.clone()]))?;
        }
        // Checkpoint.
        76..=83 if before.checkpoints.len() < 6 => {
            a.counter += 1;
            let name = format!("c{}", a.counter);
            after.checkpoints.insert(name.clone(), before.tree.clone());
            a.note(format!("snapshot {name}"));
            fs::create_dir(root.join("state").join(&name))
                .map_err(|e| fail(e, vec![before.clone(), after.clone()]))?;
        }
        // Roll back to a checkpoint (atomic: all or nothing).
        84..=89 if !before.checkpoints.is_empty() => {
            let names: Vec<&String> = before.checkpoints.keys().collect();
            let name = names[rng.below(names.len() as u64) as usize].clone();
            after.tree = before.checkpoints[&name].clone();
            a.note(format!("rollback {name}"));
            fs::write(
                mnt.join("sys/agents").join(&a.name).join("rollback"),
                format!("{name}\n"),
            )
            .map_err(|e| fail(e, vec![before.clone(), after.clone()]))?;
        }
        // A policy violation: refused (EACCES, the agent is killed), then revived.
        90..=93 => {
            let rel = format!("semantic/leak{}", a.counter);
            let path = mem.join(&rel);
            // The create is allowed and may stay (empty); the write of the secret is refused.
            let mut created = before.clone();
            created.tree.entry(rel.clone()).or_default();
            let cands = vec![before.clone(), created.clone()];
            a.note(format!("violation {rel}"));
            match fs::write(&path, format!("key {SECRET}\n")) {
                Err(e) if errno(&e) == libc::EACCES => {}
                Err(e) => return Err(fail(e, cands)),
                Ok(()) => return Err((0, cands)),
            }
            fs::write(
                mnt.join("sys/agents").join(&a.name).join("signal"),
                "START\n",
            )
            .map_err(|e| fail(e, cands.clone()))?;
            match fs::read(&path) {
                Ok(data) => {
                    assert!(
                        !String::from_utf8_lossy(&data).contains(SECRET),
                        "refused bytes readable in {rel}"
                    );
                    after.tree.insert(rel, data);
                }
                // Absent, if the mount is still there: after the kill the fixture detaches
                // it, and every path then resolves in the empty directory below (ENOENT).
                Err(e) if errno(&e) == libc::ENOENT && mnt.join("sys").exists() => {}
                Err(e) => return Err(fail(e, cands)),
            }
        }
        // STOP then CONT: no change to the tree.
        _ => {
            let sig = mnt.join("sys/agents").join(&a.name).join("signal");
            a.note("STOP+CONT".into());
            fs::write(&sig, "STOP\n").map_err(|e| fail(e, vec![before.clone()]))?;
            fs::write(&sig, "CONT\n").map_err(|e| fail(e, vec![before.clone()]))?;
        }
    }
    Ok(after)
}

/// Reads an agent's semantic and episodic files and its checkpoints from the mount.
fn read_state(mnt: &Path, agent: &str) -> State {
    let mut state = State::default();
    let mem = mnt.join(agent).join("mem");
    read_tree(&mem, &["semantic", "episodic"], &mut state.tree);
    let state_dir = mnt.join(agent).join("state");
    for e in fs::read_dir(&state_dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let mut tree = Tree::new();
        read_tree(&e.path(), &["semantic", "episodic"], &mut tree);
        state.checkpoints.insert(name, tree);
    }
    state
}

fn read_tree(base: &Path, classes: &[&str], out: &mut Tree) {
    let mut stack: Vec<(PathBuf, String)> = classes
        .iter()
        .map(|c| (base.join(c), c.to_string()))
        .collect();
    while let Some((dir, rel)) = stack.pop() {
        for e in fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = format!("{rel}/{name}");
            if e.file_type().unwrap().is_dir() {
                stack.push((e.path(), path));
            } else {
                out.insert(path, fs::read(e.path()).unwrap());
            }
        }
    }
}

/// Where two states first differ, for the failure message.
fn first_difference(want_state: &State, got_state: &State) -> String {
    let (want, got) = (&want_state.tree, &got_state.tree);
    if want == got {
        let names = |s: &State| s.checkpoints.keys().cloned().collect::<Vec<_>>().join(",");
        return format!(
            "checkpoints [{}], want [{}]",
            names(got_state),
            names(want_state)
        );
    }
    for (p, w) in want {
        match got.get(p) {
            None => return format!("{p} missing"),
            Some(g) if g != w => {
                return format!("{p}: {} bytes, want {} bytes", g.len(), w.len());
            }
            _ => {}
        }
    }
    match got.keys().find(|p| !want.contains_key(*p)) {
        Some(p) => format!("{p} should not exist"),
        None => "checkpoints differ".into(),
    }
}

fn index_ready(mnt: &Path, agent: &str) -> bool {
    fs::read_to_string(mnt.join("sys/agents").join(agent).join("index"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|v| v["state"] == "ready")
}

fn search_paths(mnt: &Path, agent: &str, query: &str) -> Vec<String> {
    let file = mnt.join(agent).join("mem/semantic/.search").join(query);
    fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("read {}: {e}", file.display()))
        .lines()
        .filter_map(|l| l.split('\t').nth(1).map(str::to_owned))
        .collect()
}

#[test]
fn crash_loop() {
    let cycles: u64 = std::env::var("AGENTFS_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    // Garbage collection rounds every 100 ms, so kills land in the middle of them too.
    let Some(mut m) = Mount::try_new_with(60 + cycles * 20, None, &["--gc-interval", "100ms"])
    else {
        return;
    };
    let seed: u64 = std::env::var("AGENTFS_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    eprintln!("crash_loop: {cycles} cycles, AGENTFS_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let names = ["alpha", "beta", "gamma"];
    let mut agents: Vec<Agent> = names
        .iter()
        .map(|n| {
            m.agent(n);
            Agent {
                name: n.to_string(),
                state: State::default(),
                in_flight: Vec::new(),
                tokens: BTreeSet::new(),
                counter: 0,
                unexpected: None,
                history: Vec::new(),
            }
        })
        .collect();
    let mut ops_total = 0u64;
    let mut bytes_verified = 0u64;
    for cycle in 1..=cycles {
        // A crash may have come between a refusal (KILL) and the START after it, or inside
        // a STOP/CONT pair: every agent starts the cycle running.
        for a in &agents {
            let sig = m.mnt.join("sys/agents").join(&a.name).join("signal");
            fs::write(&sig, "START\n").unwrap();
            fs::write(&sig, "CONT\n").unwrap();
        }
        let killing = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let shared: Vec<Arc<Mutex<Agent>>> =
            agents.drain(..).map(|a| Arc::new(Mutex::new(a))).collect();
        let workers: Vec<_> = shared
            .iter()
            .map(|a| {
                let (a, killing, ops, mnt) =
                    (a.clone(), killing.clone(), ops.clone(), m.mnt.clone());
                let mut rng = Rng(rng.next() | 1);
                std::thread::spawn(move || {
                    let mut a = a.lock().unwrap();
                    a.in_flight.clear();
                    loop {
                        match step(&mnt, &mut a, &mut rng, cycle) {
                            Ok(next) => {
                                a.state = next;
                                ops.fetch_add(1, Ordering::Relaxed);
                            }
                            Err((e, cands)) => {
                                a.note(format!("  -> {} (in flight at the crash)", errno_name(e)));
                                if killing.load(Ordering::SeqCst) {
                                    a.in_flight = cands;
                                } else {
                                    a.unexpected = Some(format!(
                                        "an operation failed with {} before the crash",
                                        errno_name(e)
                                    ));
                                }
                                return;
                            }
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(100 + rng.below(500)));
        killing.store(true, Ordering::SeqCst);
        m.kill9();
        for w in workers {
            w.join().expect("worker panicked");
        }
        agents = shared
            .into_iter()
            .map(|a| match Arc::try_unwrap(a) {
                Ok(mutex) => mutex.into_inner().unwrap(),
                Err(_) => panic!("a worker still holds its agent"),
            })
            .collect();
        ops_total += ops.load(Ordering::Relaxed);
        m.mount();

        for a in &mut agents {
            if let Some(why) = &a.unexpected {
                panic!("cycle {cycle}, agent {}: {why} (seed {seed})", a.name);
            }
            let got = read_state(&m.mnt, &a.name);
            a.note(format!("-- kill -9, remount (cycle {cycle})"));
            let mut candidates = a.in_flight.clone();
            candidates.push(a.state.clone());
            match candidates.iter().find(|c| **c == got) {
                Some(c) => a.state = c.clone(),
                None => panic!(
                    "cycle {cycle}, agent {}: the tree after kill -9 is none of the {} \
                     acceptable states; against each: {} (seed {seed}); last operations:\n{}",
                    a.name,
                    candidates.len(),
                    candidates
                        .iter()
                        .map(|c| first_difference(c, &got))
                        .collect::<Vec<_>>()
                        .join("; "),
                    a.history.join("\n"),
                ),
            }
            bytes_verified += got.tree.values().map(|v| v.len() as u64).sum::<u64>();
            for (path, data) in &got.tree {
                assert!(
                    !String::from_utf8_lossy(data).contains(SECRET),
                    "cycle {cycle}: refused bytes stored in {}/{path}",
                    a.name
                );
            }
        }
        // The flight recorder's chain holds (verify works while mounted).
        assert_audit_verifies(&m.data, &format!("cycle {cycle}"));
        // The index agrees with the store once caught up.
        for a in &agents {
            assert!(
                wait_until(Duration::from_secs(30), || index_ready(&m.mnt, &a.name)),
                "cycle {cycle}: index of {} never ready",
                a.name
            );
            let mut live = BTreeSet::new();
            for (path, data) in a
                .state
                .tree
                .iter()
                .filter(|(p, _)| p.starts_with("semantic/"))
            {
                let text = String::from_utf8_lossy(data);
                let Some(tok) = text.split(' ').next().filter(|t| t.starts_with("tk")) else {
                    continue; // an empty leftover of a refused write
                };
                let tok = tok.to_owned();
                let rel = path.trim_start_matches("semantic/").to_owned();
                let hits = search_paths(&m.mnt, &a.name, &tok);
                assert!(
                    hits.contains(&rel),
                    "cycle {cycle}: {}: {tok} not found at {rel} (hits {hits:?}; seed {seed})",
                    a.name
                );
                live.insert(tok);
            }
            for tok in a.tokens.difference(&live).take(10) {
                let hits = search_paths(&m.mnt, &a.name, tok);
                assert!(
                    hits.is_empty(),
                    "cycle {cycle}: {}: the gone fact {tok} is still found at {hits:?} (seed {seed})",
                    a.name
                );
            }
        }
    }
    eprintln!(
        "crash_loop: {cycles} cycles survived, {ops_total} operations, {} bytes verified \
         (seed {seed})",
        bytes_verified
    );
}
