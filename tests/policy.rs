//! The mount-level bypass corpus of issue 3 (SPEC §4, "0% violations"): each test is one
//! way a hostile agent could try to get bytes that a policy rule forbids into a file, a name,
//! a symlink target or an xattr, or to change a protected path, through the real mount.
//!
//! The test process is the hostile agent: an unbound process writing into an agent's tree
//! acts as that agent. Each case uses an agent of its own and checks, where it applies:
//!
//! * the offending call fails with EACCES (EROFS under `policy/`, ENODEV for shared mmap);
//! * a concurrent reader ([`Watch`]), reading the target in a loop while the attack runs,
//!   never observes the violating bytes;
//! * after a remount the stored tree (content, names, symlink targets, xattrs) does not hold
//!   them;
//! * for a `kill` rule, `sys/agents/A/signal` reads `killed` and `status.last_violation`
//!   names the rule; for a `deny` rule the agent keeps running.
//!
//! A case that finds a working bypass is marked `#[ignore = "bypass: …"]` (see the report in
//! the commit that added it) rather than weakened.

mod common;

use common::*;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Secrets and policies
// ---------------------------------------------------------------------------------------------

/// An AWS access key id (the documented example): rule `aws-access-key-id` of the built-in
/// policy, `\b(AKIA|…)[A-Z0-9]{16}\b`.
const KEY: &[u8] = b"AKIAIOSFODNN7EXAMPLE";
const AWS: &str = "aws-access-key-id";
/// Where [`key_line`] puts the key.
const KEY_AT: usize = 5;

/// `key: AKIAIOSFODNN7EXAMPLE\n`: the key with non-word bytes around it.
fn key_line() -> Vec<u8> {
    [b"key: ".as_slice(), KEY, b"\n"].concat()
}

/// Harmless text (no word byte touches the ends): lines of prose.
fn filler(len: usize) -> Vec<u8> {
    let line = b"the quick brown fox jumps over the lazy dog.\n";
    let mut v: Vec<u8> = line.iter().copied().cycle().take(len).collect();
    if let Some(last) = v.last_mut() {
        *last = b'\n';
    }
    v
}

/// A policy adding a read-only and an append-only area under `mem/semantic`.
const AREAS: &str = r#"
[[read_only]]
name = "facts-are-final"
paths = ["mem/semantic/facts/**"]

[[append_only]]
name = "log-append-only"
paths = ["mem/semantic/log/**"]
"#;

/// A policy file that adds nothing to the built-in policy.
const NOTHING: &str = "# the built-in policy only\n";

const FACT: &[u8] = b"the sky is blue\n";
const LOG: &[u8] = b"entry 1\n";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The `--policy` file the fixture mounted with.
fn policy_file(m: &Mount) -> PathBuf {
    m.mnt.parent().expect("mount parent").join("policy.toml")
}

/// A scratch path outside the mount (next to it).
fn outside(m: &Mount, name: &str) -> PathBuf {
    m.mnt.parent().expect("mount parent").join(name)
}

/// Rewrites the policy file and runs `agentfs policy reload MNT`; panics unless it succeeds.
fn reload(m: &Mount, text: &str) {
    fs::write(policy_file(m), text).expect("write the new policy file");
    let out = agentfs(&["policy".as_ref(), "reload".as_ref(), m.mnt.as_os_str()]);
    assert!(
        out.status.success(),
        "agentfs policy reload failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn signal(m: &Mount, agent: &str) -> String {
    let p = m.mnt.join("sys/agents").join(agent).join("signal");
    fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
        .trim()
        .to_string()
}

fn status(m: &Mount, agent: &str) -> serde_json::Value {
    let p = m.mnt.join("sys/agents").join(agent).join("status");
    let text = fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("status is not JSON ({e}): {text}"))
}

/// The agent was killed by `rule`: its signal file reads `killed` and its last violation
/// names the rule.
#[track_caller]
fn assert_killed(m: &Mount, agent: &str, rule: &str) {
    let s = signal(m, agent);
    let v = status(m, agent)["last_violation"].clone();
    assert_eq!(
        s, "killed",
        "{agent}: signal reads {s:?} after a kill-rule violation (last_violation: {v})"
    );
    assert_eq!(v["rule"], rule, "{agent}: last_violation {v}");
    assert_eq!(v["action"], "kill", "{agent}: last_violation {v}");
}

/// The agent was refused by the deny rule `rule` and keeps running.
#[track_caller]
fn assert_denied(m: &Mount, agent: &str, rule: &str) {
    let s = signal(m, agent);
    let v = status(m, agent)["last_violation"].clone();
    assert_eq!(
        s, "running",
        "{agent}: a deny rule must not kill (last_violation: {v})"
    );
    assert_eq!(v["rule"], rule, "{agent}: last_violation {v}");
    assert_eq!(v["action"], "deny", "{agent}: last_violation {v}");
}

/// Registers `agent` and returns its `mem/semantic`.
fn sem(m: &Mount, agent: &str) -> PathBuf {
    m.agent(agent);
    m.mem(agent, "semantic")
}

fn rw(p: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(p)
        .unwrap_or_else(|e| panic!("open {} read-write: {e}", p.display()))
}

#[track_caller]
fn write_ok(f: &File, data: &[u8], at: u64, what: &str) {
    match f.write_at(data, at) {
        Ok(n) => assert_eq!(n, data.len(), "{what}: short write"),
        Err(e) => panic!("{what}: a harmless write was refused: {e}"),
    }
}

#[track_caller]
fn eacces<T: std::fmt::Debug>(what: &str, r: io::Result<T>) {
    assert_errno(what, r, libc::EACCES);
}

/// Reads a file, panicking with its path.
fn read(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// Runs a shell tool with a deadline.
fn tool(prog: &str, args: &[&std::ffi::OsStr]) -> std::process::Output {
    let mut cmd = Command::new(prog);
    cmd.args(args);
    run_with_timeout(&mut cmd, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{prog} {args:?}: {e}"))
}

/// The tool failed, with "Permission denied" on stderr.
#[track_caller]
fn assert_tool_eacces(what: &str, out: &std::process::Output) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{what}: succeeded, want a failure (stderr: {err})"
    );
    assert!(
        err.contains("Permission denied"),
        "{what}: want EACCES (Permission denied), stderr: {err}"
    );
}

/// `agentfs unmount`, retried while the mount is busy: a process another test forks at the
/// wrong moment holds a copy of this test's descriptors until it execs, which makes a
/// prompt unmount fail with EBUSY now and then.
fn unmount(m: &mut Mount) {
    let pid = m.daemon_pid();
    for attempt in 0.. {
        let out = agentfs(&["unmount".as_ref(), m.mnt.as_os_str()]);
        if out.status.success() {
            break;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("busy") && attempt < 100,
            "agentfs unmount {} failed ({}): {err}",
            m.mnt.display(),
            out.status
        );
        thread::sleep(Duration::from_millis(50));
    }
    m.mark_unmounted();
    assert!(!m.is_mounted(), "unmounted, but still in mountinfo");
    if let Some(pid) = pid {
        assert!(
            wait_until(Duration::from_secs(20), || !pid_alive(pid)),
            "daemon {pid} still running after unmount"
        );
    }
}

/// Unmount (see [`unmount`]) and mount again on the same data dir.
fn remount(m: &mut Mount) {
    unmount(m);
    m.mount();
}

/// Every name, file content, symlink target, xattr name and value under `root` (skipping
/// `policy/` at its top: the rendered rules quote custom regexes). Racing changes are skipped.
fn snapshot(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    walk(root, &mut out, 0);
    out
}

/// Walks a tree. The policy views (`AGENT/policy/`, `sys/policy/`, one or two levels down)
/// are skipped: they show the rules' own text, whose patterns and `[[test]]` cases hold
/// secret-like examples by design.
fn walk(dir: &Path, out: &mut Vec<(String, Vec<u8>)>, depth: usize) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let name = e.file_name();
        if depth <= 1 && name == "policy" {
            continue;
        }
        let p = e.path();
        out.push((
            format!("the name {}", p.display()),
            name.as_bytes().to_vec(),
        ));
        xattrs(&p, out);
        let Ok(md) = fs::symlink_metadata(&p) else {
            continue;
        };
        if md.file_type().is_symlink() {
            if let Ok(t) = fs::read_link(&p) {
                let what = format!("the target of {}", p.display());
                out.push((what, t.as_os_str().as_bytes().to_vec()));
            }
        } else if md.is_dir() {
            walk(&p, out, depth + 1);
        } else if md.is_file() {
            if let Ok(b) = fs::read(&p) {
                out.push((format!("the content of {}", p.display()), b));
            }
        }
    }
}

fn xattrs(p: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    let c = cstr(p);
    let mut names = vec![0u8; 64 << 10];
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n <= 0 {
        return;
    }
    names.truncate(n as usize);
    for name in names.split(|b| *b == 0).filter(|s| !s.is_empty()) {
        let cn = CString::new(name).expect("xattr name");
        let mut v = vec![0u8; 64 << 10];
        let r = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        if r >= 0 {
            v.truncate(r as usize);
            out.push((format!("xattr {} of {}", show(name), p.display()), v));
        }
    }
    out.push((format!("the xattr names of {}", p.display()), names));
}

/// Findings of `needles` in an agent's tree.
fn findings(m: &Mount, agent: &str, needles: &[&[u8]]) -> Vec<String> {
    let mut v = Vec::new();
    for (what, bytes) in snapshot(&m.mnt.join(agent)) {
        for n in needles {
            if contains(&bytes, n) {
                v.push(format!("{what} holds {:?}", show(n)));
            }
        }
    }
    v
}

/// Remounts and checks that no agent's stored tree holds any of `needles`.
#[track_caller]
fn assert_clean_after_remount(m: &mut Mount, agents: &[&str], needles: &[&[u8]]) {
    remount(m);
    for a in agents {
        let f = findings(m, a, needles);
        assert!(f.is_empty(), "after remount, agent {a}: {f:?}");
    }
}

/// A reader running in a loop on its own thread while an attack runs. Each pass collects
/// `(what, bytes)` pairs; a pass that shows any needle ends the watch with a finding.
struct Watch {
    what: String,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<(u64, Option<String>)>>,
}

type Look = Box<dyn FnMut() -> Vec<(String, Vec<u8>)> + Send>;

impl Watch {
    /// Starts the reader and returns once its first pass is done.
    fn start(what: &str, needles: &[&[u8]], mut look: Look) -> Watch {
        let needles: Vec<Vec<u8>> = needles.iter().map(|n| n.to_vec()).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let halt = stop.clone();
        let handle = thread::spawn(move || {
            let mut passes = 0u64;
            loop {
                // One full pass always runs after the attack ended.
                let last = halt.load(Ordering::SeqCst);
                for (label, bytes) in look() {
                    if let Some(n) = needles.iter().find(|n| contains(&bytes, n)) {
                        return (passes, Some(format!("{label} held {:?}", show(n))));
                    }
                }
                passes += 1;
                if passes == 1 {
                    let _ = tx.send(());
                }
                if last {
                    return (passes, None);
                }
            }
        });
        let _ = rx.recv_timeout(Duration::from_secs(30));
        Watch {
            what: what.to_string(),
            stop,
            handle: Some(handle),
        }
    }

    /// Reads one file (when it exists).
    fn file(what: &str, path: &Path, needles: &[&[u8]]) -> Watch {
        let p = path.to_path_buf();
        Watch::start(
            what,
            needles,
            Box::new(move || match fs::read(&p) {
                Ok(b) => vec![(format!("the content of {}", p.display()), b)],
                Err(_) => Vec::new(),
            }),
        )
    }

    /// Walks a whole tree: names, contents, symlink targets, xattrs.
    fn tree(what: &str, root: &Path, needles: &[&[u8]]) -> Watch {
        let p = root.to_path_buf();
        Watch::start(what, needles, Box::new(move || snapshot(&p)))
    }

    /// Stops the reader; panics if it ever saw a needle. Returns its number of passes.
    #[track_caller]
    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        let (passes, seen) = self
            .handle
            .take()
            .expect("watch handle")
            .join()
            .expect("reader thread panicked");
        if let Some(seen) = seen {
            panic!(
                "{}: a concurrent reader observed violating bytes: {seen}",
                self.what
            );
        }
        assert!(passes >= 2, "{}: the reader ran {passes} passes", self.what);
        passes
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Mounts with the built-in policy, or skips.
macro_rules! mount {
    () => {
        match Mount::try_new() {
            Some(m) => m,
            None => return,
        }
    };
    ($policy:expr) => {
        match Mount::try_new_with_policy($policy) {
            Some(m) => m,
            None => return,
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Chunk-split secrets
// ---------------------------------------------------------------------------------------------

/// Every split point inside the key: one agent per point (`fwdP`), the first half written
/// first (allowed), then the second half (refused, kill).
#[test]
fn split_key_at_every_point_in_order() {
    let mut m = mount!();
    let line = key_line();
    let mut agents = Vec::new();
    for p in KEY_AT + 1..KEY_AT + KEY.len() {
        let agent = format!("fwd{p}");
        let f = sem(&m, &agent).join("k");
        let file = rw(&f);
        let case = format!("split at {p} in order");
        let w = Watch::file(&case, &f, &[KEY]);
        write_ok(&file, &line[..p], 0, &format!("{case}: first half"));
        eacces(
            &format!("{case}: second half"),
            file.write_at(&line[p..], p as u64),
        );
        w.finish();
        assert_killed(&m, &agent, AWS);
        assert_eq!(read(&f), &line[..p], "{case}: the file after the refusal");
        agents.push(agent);
    }
    let names: Vec<&str> = agents.iter().map(String::as_str).collect();
    assert_clean_after_remount(&mut m, &names, &[KEY]);
}

/// Every split point inside the key, second half first (at the higher offset, after a hole),
/// then the first half at offset 0.
#[test]
fn split_key_at_every_point_reverse_order() {
    let mut m = mount!();
    let line = key_line();
    let mut agents = Vec::new();
    for p in KEY_AT + 1..KEY_AT + KEY.len() {
        let agent = format!("rev{p}");
        let f = sem(&m, &agent).join("k");
        let file = rw(&f);
        let case = format!("split at {p} reversed");
        let w = Watch::file(&case, &f, &[KEY]);
        write_ok(&file, &line[p..], p as u64, &format!("{case}: second half"));
        eacces(&format!("{case}: first half"), file.write_at(&line[..p], 0));
        w.finish();
        assert_killed(&m, &agent, AWS);
        let mut want = vec![0u8; p];
        want.extend_from_slice(&line[p..]);
        assert_eq!(read(&f), want, "{case}: the file after the refusal");
        agents.push(agent);
    }
    let names: Vec<&str> = agents.iter().map(String::as_str).collect();
    assert_clean_after_remount(&mut m, &names, &[KEY]);
}

/// The first half is stored and the mount restarted before the second half arrives: the
/// window must read the neighbours back from the store, at every split point, both orders.
#[test]
fn split_key_across_a_remount() {
    let mut m = mount!();
    let line = key_line();
    let points: Vec<usize> = (KEY_AT + 1..KEY_AT + KEY.len()).collect();
    for &p in &points {
        for (dir, first, at) in [("a", &line[..p], 0), ("b", &line[p..], p)] {
            let f = sem(&m, &format!("rm{dir}{p}")).join("k");
            write_ok(
                &rw(&f),
                first,
                at as u64,
                &format!("remount {dir}{p}: first"),
            );
        }
    }
    remount(&mut m);
    let mut agents = Vec::new();
    for &p in &points {
        for (dir, second, at) in [("a", &line[p..], p), ("b", &line[..p], 0)] {
            let agent = format!("rm{dir}{p}");
            let f = m.mem(&agent, "semantic").join("k");
            eacces(
                &format!("split at {p} ({dir}) across a remount: second write"),
                rw(&f).write_at(second, at as u64),
            );
            assert_killed(&m, &agent, AWS);
            agents.push(agent);
        }
    }
    let names: Vec<&str> = agents.iter().map(String::as_str).collect();
    assert_clean_after_remount(&mut m, &names, &[KEY]);
}

/// A key across the 128 KiB store chunk boundary: in one write, split exactly at the
/// boundary in order, and reversed.
#[test]
fn split_key_across_a_128k_chunk_boundary() {
    let mut m = mount!();
    const CHUNK: usize = 128 << 10;
    let start = CHUNK - 10;
    let mut body = filler(start - 1);
    body.push(b' ');
    body.extend_from_slice(KEY);
    body.push(b'\n');
    let k = start + 10; // == CHUNK
    let cases: [(&str, Vec<(usize, usize)>); 3] = [
        (
            "one write over the boundary",
            vec![(0, start), (start, body.len())],
        ),
        ("split at the boundary", vec![(0, k), (k, body.len())]),
        (
            "split at the boundary, reversed",
            vec![(k, body.len()), (0, k)],
        ),
    ];
    let mut agents = Vec::new();
    for (i, (case, writes)) in cases.iter().enumerate() {
        let agent = format!("chunk{i}");
        let f = sem(&m, &agent).join("big");
        let file = rw(&f);
        let w = Watch::file(case, &f, &[KEY]);
        write_ok(
            &file,
            &body[writes[0].0..writes[0].1],
            writes[0].0 as u64,
            case,
        );
        eacces(
            &format!("{case}: the completing write"),
            file.write_at(&body[writes[1].0..writes[1].1], writes[1].0 as u64),
        );
        w.finish();
        assert_killed(&m, &agent, AWS);
        agents.push(agent);
    }
    let names: Vec<&str> = agents.iter().map(String::as_str).collect();
    assert_clean_after_remount(&mut m, &names, &[KEY]);
}

/// A 4 MiB write (the kernel splits it into 1 MiB requests) holding the key across a request
/// boundary, at its very start and at its very end.
#[test]
fn key_in_a_4mib_write() {
    let mut m = mount!();
    const MIB: usize = 1 << 20;
    let size = 4 * MIB;
    let places = [
        ("across the 1 MiB request boundary", MIB - 7),
        ("at the start", 0),
        ("at the end", size - KEY.len()),
    ];
    let mut agents = Vec::new();
    for (i, (case, at)) in places.iter().enumerate() {
        let mut buf = filler(size);
        if *at > 0 {
            buf[at - 1] = b' ';
        }
        buf[*at..at + KEY.len()].copy_from_slice(KEY);
        if at + KEY.len() < size {
            buf[at + KEY.len()] = b' ';
        }
        let agent = format!("big{i}");
        let f = sem(&m, &agent).join("big");
        let mut file = rw(&f);
        let w = Watch::file(case, &f, &[KEY]);
        let r = check_ssize(unsafe { libc::write(file.as_raw_fd(), buf.as_ptr().cast(), size) });
        match r {
            Err(e) => assert_eq!(
                e.raw_os_error(),
                Some(libc::EACCES),
                "4 MiB write, key {case}: {e}"
            ),
            // The kernel sends a direct-I/O write as 1 MiB requests and reports those before
            // the refused one as a short write; the agent is killed by then.
            Ok(n) => {
                assert!(
                    n < at + KEY.len(),
                    "4 MiB write, key {case}: {n} bytes admitted, the key ends at {}",
                    at + KEY.len()
                );
                assert_errno(
                    &format!("4 MiB write, key {case}: the rest after a short write"),
                    file.write(&buf[n..]),
                    libc::EPERM,
                );
            }
        }
        w.finish();
        drop(file);
        assert_killed(&m, &agent, AWS);
        let len = fs::metadata(&f).expect("stat").len() as usize;
        assert!(
            len < at + KEY.len(),
            "key {case}: {len} bytes were stored, the key ends at {}",
            at + KEY.len()
        );
        agents.push(agent);
    }
    let names: Vec<&str> = agents.iter().map(String::as_str).collect();
    assert_clean_after_remount(&mut m, &names, &[KEY]);
}

/// The file is exactly the key: no neighbours at all (`\b` at both file edges).
#[test]
fn key_is_the_whole_file() {
    let mut m = mount!();
    let f = sem(&m, "whole").join("k");
    let file = rw(&f);
    let w = Watch::file("whole file", &f, &[KEY]);
    eacces("write the key alone at 0", file.write_at(KEY, 0));
    w.finish();
    drop(file);
    assert_killed(&m, "whole", AWS);
    assert_eq!(read(&f), b"", "the file after the refusal");
    assert_clean_after_remount(&mut m, &["whole"], &[KEY]);
}

/// The key at the very end of a file, completed by appending its last byte (`\b` at EOF).
#[test]
fn key_at_end_of_file_completed_by_last_byte() {
    let mut m = mount!();
    let f = sem(&m, "tail").join("k");
    let mut body = filler(1000);
    body.push(b' ');
    body.extend_from_slice(&KEY[..KEY.len() - 1]);
    let file = rw(&f);
    write_ok(&file, &body, 0, "the body without the last byte");
    let w = Watch::file("tail", &f, &[KEY]);
    eacces(
        "append the key's last byte at EOF",
        file.write_at(&KEY[KEY.len() - 1..], body.len() as u64),
    );
    w.finish();
    drop(file);
    assert_killed(&m, "tail", AWS);
    assert_eq!(read(&f), body);
    assert_clean_after_remount(&mut m, &["tail"], &[KEY]);
}

/// `key: AKIA…EXAMPLE9` holds no key (no `\b` after 16 characters); cutting the `9` off with
/// a truncate makes the end of file the boundary that completes it.
#[test]
fn truncate_shrink_completes_key() {
    let mut m = mount!();
    let f = sem(&m, "shrink").join("k");
    let body = [b"key: ".as_slice(), KEY, b"9"].concat();
    let file = rw(&f);
    write_ok(&file, &body, 0, "key followed by a word byte");
    // The violating state is a file that ends with the key.
    let p = f.clone();
    let w = Watch::start(
        "shrink",
        &[KEY],
        Box::new(move || match fs::read(&p) {
            Ok(b) if b.ends_with(KEY) => vec![(format!("{} (ending with)", p.display()), b)],
            _ => Vec::new(),
        }),
    );
    eacces(
        "ftruncate cutting the byte after the key",
        file.set_len(body.len() as u64 - 1),
    );
    w.finish();
    drop(file);
    assert_killed(&m, "shrink", AWS);
    assert_eq!(read(&f), body, "the truncate must not have applied");
    // The stored file may hold KEY followed by '9' (that is no key): look for the key at EOF.
    remount(&mut m);
    let stored = read(&m.mem("shrink", "semantic").join("k"));
    assert_eq!(stored, body, "after remount");
}

/// O_TRUNC reopen, then the key in one write.
#[test]
fn o_trunc_reopen_then_write_key() {
    let mut m = mount!();
    let f = sem(&m, "otrunc").join("k");
    fs::write(&f, filler(5000)).expect("write filler");
    let w = Watch::file("O_TRUNC", &f, &[KEY]);
    let mut file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&f)
        .expect("open O_TRUNC of an ordinary file is allowed");
    eacces("write the key after O_TRUNC", file.write_all(&key_line()));
    w.finish();
    drop(file);
    assert_killed(&m, "otrunc", AWS);
    assert_eq!(read(&f), b"", "O_TRUNC applied, the key did not");
    assert_clean_after_remount(&mut m, &["otrunc"], &[KEY]);
}

/// O_APPEND appends in pieces: the piece that completes the key is refused.
#[test]
fn o_append_in_pieces() {
    let mut m = mount!();
    let f = sem(&m, "append").join("k");
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&f)
        .expect("open O_APPEND");
    let w = Watch::file("O_APPEND", &f, &[KEY]);
    for piece in [b"key: ".as_slice(), b"AKIAIO", b"SFODNN7E", b"XAMPL"] {
        file.write_all(piece).expect("harmless piece");
    }
    eacces("append the last piece", file.write(b"E\n"));
    w.finish();
    drop(file);
    assert_killed(&m, "append", AWS);
    assert_eq!(read(&f), &key_line()[..KEY_AT + KEY.len() - 1]);
    assert_clean_after_remount(&mut m, &["append"], &[KEY]);
}

/// One byte per write, front to back: exactly the key's last byte is refused.
#[test]
fn one_byte_writes_forward() {
    let mut m = mount!();
    let f = sem(&m, "bytes").join("k");
    let file = rw(&f);
    let line = key_line();
    let w = Watch::file("1-byte forward", &f, &[KEY]);
    let mut refused = None;
    for (i, b) in line.iter().enumerate() {
        if let Err(e) = file.write_at(&[*b], i as u64) {
            assert_eq!(e.raw_os_error(), Some(libc::EACCES), "byte {i}: {e}");
            refused = Some(i);
            break;
        }
    }
    w.finish();
    drop(file);
    assert_eq!(
        refused,
        Some(KEY_AT + KEY.len() - 1),
        "the byte completing the key must be the one refused"
    );
    assert_killed(&m, "bytes", AWS);
    assert_clean_after_remount(&mut m, &["bytes"], &[KEY]);
}

/// One byte per write, back to front (each at a lower offset, the first after a hole):
/// exactly the key's first byte is refused (a hole byte before it is a `\b`).
#[test]
fn one_byte_writes_backward() {
    let mut m = mount!();
    let f = sem(&m, "back").join("k");
    let file = rw(&f);
    let line = key_line();
    let w = Watch::file("1-byte backward", &f, &[KEY]);
    let mut refused = None;
    for i in (0..line.len()).rev() {
        if let Err(e) = file.write_at(&line[i..=i], i as u64) {
            assert_eq!(e.raw_os_error(), Some(libc::EACCES), "byte {i}: {e}");
            refused = Some(i);
            break;
        }
    }
    w.finish();
    drop(file);
    assert_eq!(refused, Some(KEY_AT), "the byte completing the key");
    assert_killed(&m, "back", AWS);
    assert_clean_after_remount(&mut m, &["back"], &[KEY]);
}

/// writev with the key spread over three iovecs.
#[test]
fn writev_split_key() {
    let mut m = mount!();
    let f = sem(&m, "wv").join("k");
    let file = rw(&f);
    let parts: [&[u8]; 4] = [b"key: AKIA", b"IOSFOD", b"NN7EXAMPLE", b"\n"];
    let iov: Vec<libc::iovec> = parts
        .iter()
        .map(|p| libc::iovec {
            iov_base: p.as_ptr() as *mut libc::c_void,
            iov_len: p.len(),
        })
        .collect();
    let w = Watch::file("writev", &f, &[KEY]);
    let r = check_ssize(unsafe { libc::writev(file.as_raw_fd(), iov.as_ptr(), iov.len() as i32) });
    eacces("writev", r);
    w.finish();
    drop(file);
    assert_killed(&m, "wv", AWS);
    assert_clean_after_remount(&mut m, &["wv"], &[KEY]);
}

/// pwrite of the key 64 MiB past the end of a small file (a hole bigger than any window).
#[test]
fn pwrite_key_far_past_eof() {
    let mut m = mount!();
    let f = sem(&m, "hole").join("k");
    let file = rw(&f);
    write_ok(&file, b"notes\n", 0, "small file");
    let w = Watch::file("hole", &f, &[KEY]);
    eacces("pwrite at 64 MiB", file.write_at(&key_line(), 64 << 20));
    w.finish();
    drop(file);
    assert_killed(&m, "hole", AWS);
    assert_eq!(
        fs::metadata(&f).expect("stat").len(),
        6,
        "the size after the refusal"
    );
    assert_clean_after_remount(&mut m, &["hole"], &[KEY]);
}

/// `password=x` at the end of a file is no secret (the value needs 6 bytes), but zeros
/// count as value bytes for `generic-password-assignment`: a hole left by a write far past
/// EOF completes it. (Arguably harmless bytes, but a match by the rule's own definition, and
/// exactly the seam docs/policy.md says the core checks.)
#[test]
fn hole_zero_fill_completes_password() {
    let mut m = mount!();
    let f = sem(&m, "zeros").join("k");
    let file = rw(&f);
    write_ok(&file, b"password=x", 0, "an incomplete assignment");
    eacces("pwrite 64 MiB past EOF", file.write_at(b"hello", 64 << 20));
    drop(file);
    assert_killed(&m, "zeros", "generic-password-assignment");
    assert_eq!(fs::metadata(&f).expect("stat").len(), 10);
    remount(&mut m);
    assert_eq!(read(&m.mem("zeros", "semantic").join("k")), b"password=x");
}

/// The same seam completed by growing the file with `truncate -s` (a zero fill).
#[test]
fn truncate_zero_fill_completes_password() {
    let mut m = mount!();
    let f = sem(&m, "tzeros").join("k");
    fs::write(&f, b"password=x").expect("an incomplete assignment");
    let out = tool("truncate", &["-s".as_ref(), "1M".as_ref(), f.as_os_str()]);
    assert_tool_eacces("truncate -s 1M", &out);
    assert_killed(&m, "tzeros", "generic-password-assignment");
    remount(&mut m);
    assert_eq!(read(&m.mem("tzeros", "semantic").join("k")), b"password=x");
}

/// `dd conv=notrunc` writes 4 bytes into the middle of a large file, completing the key with
/// the bytes already around them.
#[test]
fn dd_notrunc_completes_key_in_the_middle() {
    let mut m = mount!();
    let f = sem(&m, "dd").join("k");
    let mut body = filler(200_000);
    body.extend_from_slice(b" id: ");
    let key_at = body.len();
    let mut gapped = KEY.to_vec();
    gapped[8..12].copy_from_slice(b"....");
    body.extend_from_slice(&gapped);
    body.extend_from_slice(b" end\n");
    body.extend_from_slice(&filler(200_000));
    fs::write(&f, &body).expect("the file with a gap in the key");
    let patch = outside(&m, "patch");
    fs::write(&patch, &KEY[8..12]).expect("patch file");
    let w = Watch::file("dd", &f, &[KEY]);
    let seek = format!("seek={}", key_at + 8);
    let of = [b"of=".as_slice(), f.as_os_str().as_bytes()].concat();
    let iff = [b"if=".as_slice(), patch.as_os_str().as_bytes()].concat();
    let out = tool(
        "dd",
        &[
            std::ffi::OsStr::from_bytes(&iff),
            std::ffi::OsStr::from_bytes(&of),
            "bs=4".as_ref(),
            "count=1".as_ref(),
            seek.as_ref(),
            "oflag=seek_bytes".as_ref(),
            "conv=notrunc".as_ref(),
        ],
    );
    assert_tool_eacces("dd conv=notrunc into the gap", &out);
    w.finish();
    assert_killed(&m, "dd", AWS);
    assert_same_bytes("the file after dd", &read(&f), &body);
    assert_clean_after_remount(&mut m, &["dd"], &[KEY]);
}

// ---------------------------------------------------------------------------------------------
// Copies: cp --reflink, copy_file_range
// ---------------------------------------------------------------------------------------------

/// `cp --reflink=always` of a file holding the key from outside the mount.
#[test]
fn cp_reflink_always_from_outside() {
    let mut m = mount!();
    let dir = sem(&m, "clone");
    let src = outside(&m, "with-key.txt");
    fs::write(&src, [filler(3000), key_line()].concat()).expect("source");
    let dst = dir.join("copy");
    let w = Watch::tree("cp --reflink=always", &dir, &[KEY]);
    let out = tool(
        "cp",
        &[
            "--reflink=always".as_ref(),
            src.as_os_str(),
            dst.as_os_str(),
        ],
    );
    w.finish();
    assert!(
        !out.status.success(),
        "cp --reflink=always of a key into the mount succeeded"
    );
    // Cloning across file systems fails before the daemon sees a write; if a write came, it
    // was a violation and must have killed the agent.
    let st = signal(&m, "clone");
    assert!(st == "running" || st == "killed", "signal {st}");
    if st == "killed" {
        assert_killed(&m, "clone", AWS);
    }
    assert_clean_after_remount(&mut m, &["clone"], &[KEY]);
}

/// `cp --reflink=auto` falls back to copying: the write holding the key is refused.
#[test]
fn cp_reflink_auto_from_outside() {
    let mut m = mount!();
    let dir = sem(&m, "cpauto");
    let src = outside(&m, "with-key.txt");
    fs::write(&src, [filler(300_000), key_line(), filler(3000)].concat()).expect("source");
    let dst = dir.join("copy");
    let w = Watch::tree("cp --reflink=auto", &dir, &[KEY]);
    let out = tool(
        "cp",
        &["--reflink=auto".as_ref(), src.as_os_str(), dst.as_os_str()],
    );
    w.finish();
    assert_tool_eacces("cp --reflink=auto", &out);
    assert_killed(&m, "cpauto", AWS);
    assert_clean_after_remount(&mut m, &["cpauto"], &[KEY]);
}

const CODEWORD_POLICY: &str = r#"
[[content]]
name = "codeword"
regex = 'TOPSECRET-[0-9]{4}'
"#;
const CODEWORD: &[u8] = b"TOPSECRET-1234";

/// A file written before a reload added a content rule holds the pattern legitimately (a
/// reload does not rescan); copying it inside the mount is a new write of those bytes and
/// must be refused: `cp --reflink=always`, `cp --reflink=auto` and a raw copy_file_range.
#[test]
fn copy_inside_the_mount_of_content_stored_before_a_rule() {
    let mut m = mount!(NOTHING);
    let body = [filler(1000), b"codeword TOPSECRET-1234\n".to_vec()].concat();
    let agents = ["refl-always", "refl-auto", "cfr"];
    for a in agents {
        fs::write(sem(&m, a).join("src"), &body).expect("source before the rule");
    }
    reload(&m, CODEWORD_POLICY);
    let dst_has_codeword = |m: &Mount, a: &str, name: &str| {
        fs::read(m.mem(a, "semantic").join(name)).is_ok_and(|b| contains(&b, CODEWORD))
    };
    // cp --reflink=always
    let dir = m.mem("refl-always", "semantic");
    let w = Watch::file("reflink=always", &dir.join("dst"), &[CODEWORD]);
    let out = tool(
        "cp",
        &[
            "--reflink=always".as_ref(),
            dir.join("src").as_os_str(),
            dir.join("dst").as_os_str(),
        ],
    );
    w.finish();
    assert!(
        !out.status.success(),
        "cp --reflink=always inside the mount succeeded"
    );
    let st = signal(&m, "refl-always");
    if st == "killed" {
        assert_killed(&m, "refl-always", "codeword");
    }
    // cp --reflink=auto
    let dir = m.mem("refl-auto", "semantic");
    let w = Watch::file("reflink=auto", &dir.join("dst"), &[CODEWORD]);
    let out = tool(
        "cp",
        &[
            "--reflink=auto".as_ref(),
            dir.join("src").as_os_str(),
            dir.join("dst").as_os_str(),
        ],
    );
    w.finish();
    assert_tool_eacces("cp --reflink=auto inside the mount", &out);
    assert_killed(&m, "refl-auto", "codeword");
    // copy_file_range(2)
    let dir = m.mem("cfr", "semantic");
    let src = File::open(dir.join("src")).expect("open src");
    let dst = rw(&dir.join("dst"));
    let w = Watch::file("copy_file_range", &dir.join("dst"), &[CODEWORD]);
    let mut total = 0usize;
    let result = loop {
        let r = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                std::ptr::null_mut(),
                dst.as_raw_fd(),
                std::ptr::null_mut(),
                body.len() - total,
                0,
            )
        };
        match check_ssize(r) {
            Ok(0) => break Ok(total),
            Ok(n) => total += n,
            Err(e) => break Err(e),
        }
    };
    w.finish();
    eacces("copy_file_range of the codeword", result);
    drop((src, dst));
    assert_killed(&m, "cfr", "codeword");
    remount(&mut m);
    for a in agents {
        assert!(
            !dst_has_codeword(&m, a, "dst"),
            "{a}: dst holds the codeword after remount"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// mmap
// ---------------------------------------------------------------------------------------------

fn mmap(file: &File, len: usize, prot: i32, flags: i32) -> io::Result<*mut libc::c_void> {
    let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, file.as_raw_fd(), 0) };
    if p == libc::MAP_FAILED {
        Err(io::Error::last_os_error())
    } else {
        Ok(p)
    }
}

/// A shared writable mapping would change the file without a write call: refused (ENODEV).
#[test]
fn mmap_shared_writable_is_refused() {
    let mut m = mount!();
    let f = sem(&m, "mmap").join("k");
    let body = filler(8192);
    let file = rw(&f);
    write_ok(&file, &body, 0, "body");
    let r = mmap(
        &file,
        8192,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_SHARED,
    );
    if let Ok(p) = r {
        // Do not leave it unchecked: show what it would have done.
        unsafe {
            std::ptr::copy_nonoverlapping(KEY.as_ptr(), (p as *mut u8).add(100), KEY.len());
            libc::msync(p, 8192, libc::MS_SYNC);
            libc::munmap(p, 8192);
        }
    }
    drop(file);
    assert_errno("mmap MAP_SHARED PROT_WRITE", r, libc::ENODEV);
    assert_clean_after_remount(&mut m, &["mmap"], &[KEY]);
}

/// A shared read-only mapping of a file opened read-write, then mprotect(PROT_WRITE).
#[test]
fn mmap_shared_readonly_then_mprotect_write() {
    let mut m = mount!();
    let f = sem(&m, "mprot").join("k");
    let mut body = filler(8192);
    body[99] = b' ';
    body[120] = b' ';
    let file = rw(&f);
    write_ok(&file, &body, 0, "body");
    let w = Watch::file("mprotect", &f, &[KEY]);
    match mmap(&file, 8192, libc::PROT_READ, libc::MAP_SHARED) {
        Err(e) => assert_eq!(
            e.raw_os_error(),
            Some(libc::ENODEV),
            "mmap MAP_SHARED PROT_READ of a read-write fd: {e}"
        ),
        Ok(p) => unsafe {
            if libc::mprotect(p, 8192, libc::PROT_READ | libc::PROT_WRITE) == 0 {
                std::ptr::copy_nonoverlapping(KEY.as_ptr(), (p as *mut u8).add(100), KEY.len());
                libc::msync(p, 8192, libc::MS_SYNC);
            }
            libc::munmap(p, 8192);
        },
    }
    drop(file);
    w.finish();
    assert_same_bytes("the file after the mapping", &read(&f), &body);
    assert_clean_after_remount(&mut m, &["mprot"], &[KEY]);
}

/// A private writable mapping is allowed, but its writes never reach the file (nor the
/// daemon: the agent is not even refused).
#[test]
fn mmap_private_write_stays_private() {
    let mut m = mount!();
    let f = sem(&m, "private").join("k");
    let mut body = filler(8192);
    body[99] = b' ';
    body[120] = b' ';
    let file = rw(&f);
    write_ok(&file, &body, 0, "body");
    let w = Watch::file("MAP_PRIVATE", &f, &[KEY]);
    let p = mmap(
        &file,
        8192,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE,
    )
    .expect("mmap MAP_PRIVATE of an agent file");
    unsafe {
        std::ptr::copy_nonoverlapping(KEY.as_ptr(), (p as *mut u8).add(100), KEY.len());
        let seen = std::slice::from_raw_parts(p as *const u8, 8192);
        assert!(contains(seen, KEY), "the private mapping holds the write");
        libc::msync(p, 8192, libc::MS_SYNC);
        libc::munmap(p, 8192);
    }
    drop(file);
    w.finish();
    assert_same_bytes("the file after a private mapping", &read(&f), &body);
    assert_eq!(signal(&m, "private"), "running");
    assert_clean_after_remount(&mut m, &["private"], &[KEY]);
}

// ---------------------------------------------------------------------------------------------
// xattrs, names, symlink targets
// ---------------------------------------------------------------------------------------------

fn setxattr(p: &Path, name: &[u8], value: &[u8]) -> io::Result<i32> {
    let c = cstr(p);
    let n = CString::new(name).expect("xattr name");
    check(unsafe {
        libc::setxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
}

#[test]
fn xattr_value_holds_key() {
    let mut m = mount!();
    let dir = sem(&m, "xval");
    let f = dir.join("k");
    fs::write(&f, b"hello\n").expect("file");
    setxattr(&f, b"user.note", b"harmless").expect("a harmless xattr is allowed");
    let w = Watch::tree("xattr value", &dir, &[KEY]);
    eacces(
        "setxattr user.note = key",
        setxattr(&f, b"user.note", &key_line()),
    );
    w.finish();
    assert_killed(&m, "xval", AWS);
    let dir2 = sem(&m, "xval-dir");
    eacces(
        "setxattr on a directory",
        setxattr(&dir2, b"user.d", &key_line()),
    );
    assert_killed(&m, "xval-dir", AWS);
    // The agent's root and its mem/ are the agent's too.
    for (agent, sub) in [("xval-root", ""), ("xval-mem", "mem")] {
        m.agent(agent);
        let target = m.mnt.join(agent).join(sub);
        let r = setxattr(&target, b"user.d", &key_line());
        let e = errno_of(&format!("setxattr the key on {}", target.display()), r);
        assert_eq!(e, libc::EACCES, "{agent}: errno {}", errno_name(e));
        assert_eq!(signal(&m, agent), "killed", "{agent}");
    }
    assert_clean_after_remount(
        &mut m,
        &["xval", "xval-dir", "xval-root", "xval-mem"],
        &[KEY],
    );
}

#[test]
fn xattr_name_holds_key() {
    let mut m = mount!();
    let dir = sem(&m, "xname");
    let f = dir.join("k");
    fs::write(&f, b"hello\n").expect("file");
    let w = Watch::tree("xattr name", &dir, &[KEY]);
    eacces(
        "setxattr user.AKIA…",
        setxattr(&f, &[b"user.".as_slice(), KEY].concat(), b"v"),
    );
    w.finish();
    assert_killed(&m, "xname", AWS);
    assert_clean_after_remount(&mut m, &["xname"], &[KEY]);
}

fn key_name() -> PathBuf {
    PathBuf::from(format!("id-{}.txt", show(KEY)))
}

#[test]
fn key_in_a_created_file_name() {
    let mut m = mount!();
    let dir = sem(&m, "fname");
    let w = Watch::tree("file name", &dir, &[KEY]);
    eacces("create id-KEY.txt", File::create(dir.join(key_name())));
    w.finish();
    assert_killed(&m, "fname", AWS);
    assert_clean_after_remount(&mut m, &["fname"], &[KEY]);
}

#[test]
fn key_in_a_name_by_rename() {
    let mut m = mount!();
    let dir = sem(&m, "rname");
    fs::write(dir.join("plain"), b"hello\n").expect("file");
    let w = Watch::tree("rename to a key name", &dir, &[KEY]);
    eacces(
        "rename plain -> id-KEY.txt",
        fs::rename(dir.join("plain"), dir.join(key_name())),
    );
    w.finish();
    assert_killed(&m, "rname", AWS);
    assert!(
        dir.join("plain").exists(),
        "the refused rename moved the file"
    );
    assert_clean_after_remount(&mut m, &["rname"], &[KEY]);
}

#[test]
fn key_in_a_name_by_hard_link() {
    let mut m = mount!();
    let dir = sem(&m, "lname");
    fs::write(dir.join("plain"), b"hello\n").expect("file");
    let w = Watch::tree("link to a key name", &dir, &[KEY]);
    eacces(
        "link plain -> id-KEY.txt",
        fs::hard_link(dir.join("plain"), dir.join(key_name())),
    );
    w.finish();
    assert_killed(&m, "lname", AWS);
    assert_clean_after_remount(&mut m, &["lname"], &[KEY]);
}

#[test]
fn key_in_a_directory_name() {
    let mut m = mount!();
    let dir = sem(&m, "dname");
    let w = Watch::tree("directory name", &dir, &[KEY]);
    eacces("mkdir KEY", fs::create_dir(dir.join(show(KEY))));
    w.finish();
    assert_killed(&m, "dname", AWS);
    assert_clean_after_remount(&mut m, &["dname"], &[KEY]);
}

#[test]
fn key_in_a_symlink_target() {
    let mut m = mount!();
    let dir = sem(&m, "starget");
    let w = Watch::tree("symlink target", &dir, &[KEY]);
    eacces(
        "symlink -> ../AKIA…",
        std::os::unix::fs::symlink(format!("../{}", show(KEY)), dir.join("l")),
    );
    w.finish();
    assert_killed(&m, "starget", AWS);
    assert_clean_after_remount(&mut m, &["starget"], &[KEY]);
}

#[test]
fn key_in_a_symlink_name() {
    let mut m = mount!();
    let dir = sem(&m, "sname");
    let w = Watch::tree("symlink name", &dir, &[KEY]);
    eacces(
        "symlink named id-KEY.txt",
        std::os::unix::fs::symlink("plain", dir.join(key_name())),
    );
    w.finish();
    assert_killed(&m, "sname", AWS);
    assert_clean_after_remount(&mut m, &["sname"], &[KEY]);
}

// ---------------------------------------------------------------------------------------------
// Read-only and append-only paths
// ---------------------------------------------------------------------------------------------

/// Mounts with no extra rule, creates `facts/f` and `log/l` in `mem/semantic` of each agent,
/// then reloads [`AREAS`] (the rules make the files impossible to create afterwards).
fn areas(agents: &[&str]) -> Option<Mount> {
    let m = Mount::try_new_with_policy(NOTHING)?;
    for a in agents {
        let s = sem(&m, a);
        fs::create_dir(s.join("facts")).expect("mkdir facts");
        fs::create_dir(s.join("log")).expect("mkdir log");
        fs::write(s.join("facts/f"), FACT).expect("write facts/f");
        fs::write(s.join("log/l"), LOG).expect("write log/l");
        fs::write(s.join("free"), b"OVERWRITTEN\n").expect("write free");
    }
    reload(&m, AREAS);
    Some(m)
}

/// After remount, `facts/f` and `log/l` of `agent` hold what they held (plus `log_more`).
#[track_caller]
fn assert_areas_intact(m: &Mount, agent: &str, log_more: &[u8]) {
    let s = m.mem(agent, "semantic");
    assert_eq!(read(&s.join("facts/f")), FACT, "{agent}: facts/f");
    assert_eq!(
        read(&s.join("log/l")),
        [LOG, log_more].concat(),
        "{agent}: log/l"
    );
}

#[test]
fn rename_onto_a_read_only_file() {
    let Some(mut m) = areas(&["ro-onto"]) else {
        return;
    };
    let s = m.mem("ro-onto", "semantic");
    let w = Watch::file("rename onto", &s.join("facts/f"), &[b"OVERWRITTEN"]);
    eacces(
        "rename free -> facts/f",
        fs::rename(s.join("free"), s.join("facts/f")),
    );
    w.finish();
    assert_killed(&m, "ro-onto", "facts-are-final");
    remount(&mut m);
    assert_areas_intact(&m, "ro-onto", b"");
}

#[test]
fn rename_a_read_only_file_away() {
    let Some(mut m) = areas(&["ro-away"]) else {
        return;
    };
    let s = m.mem("ro-away", "semantic");
    eacces(
        "rename facts/f -> mine",
        fs::rename(s.join("facts/f"), s.join("mine")),
    );
    assert_killed(&m, "ro-away", "facts-are-final");
    remount(&mut m);
    assert!(!s.join("mine").exists(), "the refused rename happened");
    assert_areas_intact(&m, "ro-away", b"");
}

#[test]
fn rename_the_directory_of_a_read_only_file() {
    let Some(mut m) = areas(&["ro-dir"]) else {
        return;
    };
    let s = m.mem("ro-dir", "semantic");
    eacces(
        "rename facts -> facts2",
        fs::rename(s.join("facts"), s.join("facts2")),
    );
    assert_killed(&m, "ro-dir", "facts-are-final");
    remount(&mut m);
    assert!(!s.join("facts2").exists(), "the refused rename happened");
    assert_areas_intact(&m, "ro-dir", b"");
}

#[test]
fn hard_link_a_read_only_file_to_a_writable_name() {
    let Some(mut m) = areas(&["ro-link"]) else {
        return;
    };
    let s = m.mem("ro-link", "semantic");
    eacces(
        "link facts/f -> alias",
        fs::hard_link(s.join("facts/f"), s.join("alias")),
    );
    assert_killed(&m, "ro-link", "facts-are-final");
    remount(&mut m);
    assert!(!s.join("alias").exists(), "the refused link exists");
    assert_areas_intact(&m, "ro-link", b"");
}

#[test]
fn hard_link_a_writable_file_into_read_only() {
    let Some(mut m) = areas(&["ro-linkin"]) else {
        return;
    };
    let s = m.mem("ro-linkin", "semantic");
    eacces(
        "link free -> facts/new",
        fs::hard_link(s.join("free"), s.join("facts/new")),
    );
    assert_killed(&m, "ro-linkin", "facts-are-final");
    remount(&mut m);
    assert!(!s.join("facts/new").exists(), "the refused link exists");
    assert_areas_intact(&m, "ro-linkin", b"");
}

/// Linking a writable file into the append-only area would let the old name rewrite the
/// "log" in place.
#[test]
fn hard_link_a_writable_file_into_append_only() {
    let Some(mut m) = areas(&["ao-linkin"]) else {
        return;
    };
    let s = m.mem("ao-linkin", "semantic");
    eacces(
        "link free -> log/new",
        fs::hard_link(s.join("free"), s.join("log/new")),
    );
    assert_killed(&m, "ao-linkin", "log-append-only");
    remount(&mut m);
    assert!(!s.join("log/new").exists(), "the refused link exists");
}

#[test]
fn hard_link_an_append_only_file_out() {
    let Some(mut m) = areas(&["ao-linkout"]) else {
        return;
    };
    let s = m.mem("ao-linkout", "semantic");
    let w = Watch::file("log via alias", &s.join("log/l"), &[b"REWRITTEN"]);
    let r = fs::hard_link(s.join("log/l"), s.join("alias"));
    if r.is_ok() {
        let _ = rw(&s.join("alias")).write_at(b"REWRITTEN", 0);
    }
    w.finish();
    eacces("link log/l -> alias", r);
    assert_killed(&m, "ao-linkout", "log-append-only");
    remount(&mut m);
    assert_areas_intact(&m, "ao-linkout", b"");
}

/// A symlink is only a name: creating one that points at a read-only file is allowed, but a
/// write through it is a write to the read-only file.
#[test]
fn write_through_a_symlink_into_read_only() {
    let Some(mut m) = areas(&["ro-sym"]) else {
        return;
    };
    let s = m.mem("ro-sym", "semantic");
    std::os::unix::fs::symlink("facts/f", s.join("s")).expect("symlink s -> facts/f");
    let w = Watch::file("write via symlink", &s.join("facts/f"), &[b"OVERWRITTEN"]);
    let r = OpenOptions::new()
        .write(true)
        .open(s.join("s"))
        .and_then(|f| f.write_at(b"OVERWRITTEN\n", 0));
    w.finish();
    eacces("open s for writing and write", r);
    assert_killed(&m, "ro-sym", "facts-are-final");
    remount(&mut m);
    assert_areas_intact(&m, "ro-sym", b"");
}

#[test]
fn overwrite_through_a_symlink_into_append_only() {
    let Some(mut m) = areas(&["ao-sym"]) else {
        return;
    };
    let s = m.mem("ao-sym", "semantic");
    std::os::unix::fs::symlink("log/l", s.join("s")).expect("symlink s -> log/l");
    // Appending through the symlink is what append-only allows.
    OpenOptions::new()
        .append(true)
        .open(s.join("s"))
        .and_then(|mut f| f.write_all(b"entry 2\n"))
        .expect("append through the symlink");
    let w = Watch::file("overwrite via symlink", &s.join("log/l"), &[b"REWRITTEN"]);
    let r = OpenOptions::new()
        .write(true)
        .open(s.join("s"))
        .and_then(|f| f.write_at(b"REWRITTEN", 0));
    w.finish();
    eacces("overwrite log/l at 0 through s", r);
    assert_killed(&m, "ao-sym", "log-append-only");
    remount(&mut m);
    assert_areas_intact(&m, "ao-sym", b"entry 2\n");
}

#[test]
fn o_trunc_of_read_only_and_append_only_files() {
    let Some(mut m) = areas(&["trunc-ro", "trunc-ao"]) else {
        return;
    };
    let ro = m.mem("trunc-ro", "semantic").join("facts/f");
    eacces(
        "open facts/f O_TRUNC",
        OpenOptions::new().write(true).truncate(true).open(&ro),
    );
    assert_killed(&m, "trunc-ro", "facts-are-final");
    let ao = m.mem("trunc-ao", "semantic").join("log/l");
    eacces(
        "open log/l O_TRUNC",
        OpenOptions::new().write(true).truncate(true).open(&ao),
    );
    assert_killed(&m, "trunc-ao", "log-append-only");
    remount(&mut m);
    assert_areas_intact(&m, "trunc-ro", b"");
    assert_areas_intact(&m, "trunc-ao", b"");
}

/// Shrinking an append-only file and growing it back would rewrite its end.
#[test]
fn shrink_an_append_only_file() {
    let Some(mut m) = areas(&["ao-shrink"]) else {
        return;
    };
    let l = m.mem("ao-shrink", "semantic").join("log/l");
    let file = OpenOptions::new().write(true).open(&l).expect("open log/l");
    eacces("ftruncate log/l to 2", file.set_len(2));
    drop(file);
    assert_killed(&m, "ao-shrink", "log-append-only");
    remount(&mut m);
    assert_areas_intact(&m, "ao-shrink", b"");
}

/// `dd conv=notrunc` into the middle of an append-only file.
#[test]
fn dd_notrunc_into_an_append_only_file() {
    let Some(mut m) = areas(&["ao-dd"]) else {
        return;
    };
    let l = m.mem("ao-dd", "semantic").join("log/l");
    let patch = outside(&m, "patch");
    fs::write(&patch, b"XX").expect("patch");
    let of = [b"of=".as_slice(), l.as_os_str().as_bytes()].concat();
    let iff = [b"if=".as_slice(), patch.as_os_str().as_bytes()].concat();
    let out = tool(
        "dd",
        &[
            std::ffi::OsStr::from_bytes(&iff),
            std::ffi::OsStr::from_bytes(&of),
            "bs=2".as_ref(),
            "seek=1".as_ref(),
            "conv=notrunc".as_ref(),
        ],
    );
    assert_tool_eacces("dd into log/l", &out);
    assert_killed(&m, "ao-dd", "log-append-only");
    remount(&mut m);
    assert_areas_intact(&m, "ao-dd", b"");
}

/// `cp --reflink=auto` over a read-only file (cp opens it O_TRUNC).
#[test]
fn cp_over_a_read_only_file() {
    let Some(mut m) = areas(&["ro-cp"]) else {
        return;
    };
    let s = m.mem("ro-cp", "semantic");
    let out = tool(
        "cp",
        &[
            "--reflink=auto".as_ref(),
            s.join("free").as_os_str(),
            s.join("facts/f").as_os_str(),
        ],
    );
    assert_tool_eacces("cp free facts/f", &out);
    assert_killed(&m, "ro-cp", "facts-are-final");
    remount(&mut m);
    assert_areas_intact(&m, "ro-cp", b"");
}

/// A descriptor opened for writing before a reload made the file read-only: the write is
/// decided when it happens, under the new rules.
#[test]
fn fd_opened_before_a_reload_cannot_write_read_only() {
    let Some(mut m) = Mount::try_new_with_policy(NOTHING) else {
        return;
    };
    let s = sem(&m, "ro-fd");
    fs::create_dir(s.join("facts")).expect("mkdir facts");
    fs::write(s.join("facts/f"), FACT).expect("write facts/f");
    let file = OpenOptions::new()
        .write(true)
        .open(s.join("facts/f"))
        .expect("open before the rule");
    reload(&m, AREAS);
    eacces(
        "write through an fd opened before the reload",
        file.write_at(b"OVERWRITTEN\n", 0),
    );
    // The kill above makes every later call of the agent EPERM.
    assert_errno("ftruncate through it", file.set_len(0), libc::EPERM);
    drop(file);
    assert_killed(&m, "ro-fd", "facts-are-final");
    remount(&mut m);
    assert_eq!(read(&s.join("facts/f")), FACT);
}

#[test]
fn unlink_and_recreate_a_read_only_file() {
    let Some(mut m) = areas(&["ro-unlink"]) else {
        return;
    };
    let s = m.mem("ro-unlink", "semantic");
    eacces("unlink facts/f", fs::remove_file(s.join("facts/f")));
    assert_killed(&m, "ro-unlink", "facts-are-final");
    remount(&mut m);
    assert_areas_intact(&m, "ro-unlink", b"");
}

// ---------------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------------

const ONE_MIB_FILES: &str = r#"
[[limit]]
name = "one-mib"
max_file_size = "1 MiB"
"#;

#[test]
fn truncate_grows_past_max_file_size() {
    let mut m = mount!(ONE_MIB_FILES);
    let f = sem(&m, "grow").join("k");
    fs::write(&f, b"0123456789").expect("file");
    let out = tool("truncate", &["-s".as_ref(), "1M".as_ref(), f.as_os_str()]);
    assert!(
        out.status.success(),
        "truncate -s 1M (the limit itself): {out:?}"
    );
    let out = tool("truncate", &["-s".as_ref(), "2M".as_ref(), f.as_os_str()]);
    assert_tool_eacces("truncate -s 2M", &out);
    assert_killed(&m, "grow", "one-mib");
    remount(&mut m);
    let len = fs::metadata(m.mem("grow", "semantic").join("k"))
        .expect("stat")
        .len();
    assert_eq!(len, 1 << 20, "the size after remount");
}

#[test]
fn fallocate_grows_past_max_file_size() {
    let mut m = mount!(ONE_MIB_FILES);
    let f = sem(&m, "falloc").join("k");
    let file = rw(&f);
    write_ok(&file, b"0123456789", 0, "file");
    let r = check(unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, 2 << 20) });
    eacces("fallocate 2 MiB", r);
    drop(file);
    assert_killed(&m, "falloc", "one-mib");
    remount(&mut m);
    let len = fs::metadata(m.mem("falloc", "semantic").join("k"))
        .expect("stat")
        .len();
    assert_eq!(len, 10, "the size after remount");
}

#[test]
fn pwrite_past_max_file_size() {
    let mut m = mount!(ONE_MIB_FILES);
    let f = sem(&m, "far").join("k");
    let file = rw(&f);
    write_ok(&file, b"x", (1 << 20) - 1, "the last byte allowed");
    eacces("pwrite 1 byte at 1 MiB", file.write_at(b"y", 1 << 20));
    drop(file);
    assert_killed(&m, "far", "one-mib");
    remount(&mut m);
    let len = fs::metadata(m.mem("far", "semantic").join("k"))
        .expect("stat")
        .len();
    assert_eq!(len, 1 << 20, "the size after remount");
}

#[test]
fn quota_exhausted_by_many_small_files() {
    let mut m = mount!(
        r#"
[[limit]]
name = "tiny-quota"
quota = { semantic = "64 KiB" }
action = "deny"
"#
    );
    let dir = sem(&m, "quota");
    let chunk = filler(1024);
    let (mut ok, mut refused) = (0, 0);
    for i in 0..100 {
        match fs::write(dir.join(format!("f{i}")), &chunk) {
            Ok(()) => ok += 1,
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EACCES), "file {i}: {e}");
                refused += 1;
            }
        }
    }
    assert!(ok <= 64, "{ok} KiB stored under a 64 KiB quota");
    assert!(ok > 0 && refused > 0, "ok {ok}, refused {refused}");
    assert_denied(&m, "quota", "tiny-quota");
    remount(&mut m);
    let total: u64 = fs::read_dir(m.mem("quota", "semantic"))
        .expect("readdir")
        .map(|e| e.expect("entry").metadata().expect("stat").len())
        .sum();
    assert!(total <= 64 << 10, "{total} bytes stored after remount");
}

#[test]
fn max_files_exhausted() {
    let mut m = mount!(
        r#"
[[limit]]
name = "few-files"
max_files = 20
action = "deny"
"#
    );
    let dir = sem(&m, "files");
    let (mut ok, mut refused) = (0, 0);
    for i in 0..60 {
        match File::create(dir.join(format!("f{i}"))) {
            Ok(_) => ok += 1,
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EACCES), "file {i}: {e}");
                refused += 1;
            }
        }
    }
    assert!(ok > 0 && refused > 0, "ok {ok}, refused {refused}");
    assert_denied(&m, "files", "few-files");
    remount(&mut m);
    let n = fs::read_dir(m.mem("files", "semantic"))
        .expect("readdir")
        .count();
    assert!(n <= 20, "{n} files stored under max_files = 20");
}

#[test]
fn write_ops_burst() {
    let mut m = mount!(
        r#"
[[limit]]
name = "slow-ops"
write_ops_per_sec = 20
action = "deny"
"#
    );
    let f = sem(&m, "burst").join("k");
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&f)
        .expect("create");
    let t0 = Instant::now();
    let (mut ok, mut refused) = (0u64, 0u64);
    for i in 0..300 {
        match file.write(b"x") {
            Ok(n) => {
                assert_eq!(n, 1, "write {i}");
                ok += 1
            }
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EACCES), "write {i}: {e}");
                refused += 1;
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let allowed = 20.0 + 20.0 * secs + 1.0;
    assert!(
        (ok as f64) <= allowed,
        "{ok} writes admitted in {secs:.3} s at 20 ops/s (burst 20)"
    );
    assert!(refused > 0, "no write refused");
    assert_denied(&m, "burst", "slow-ops");
    drop(file);
    remount(&mut m);
    let len = fs::metadata(m.mem("burst", "semantic").join("k"))
        .expect("stat")
        .len();
    assert_eq!(len, ok, "the stored bytes are the admitted writes");
}

#[test]
fn write_bytes_burst() {
    let mut m = mount!(
        r#"
[[limit]]
name = "slow-bytes"
write_bytes_per_sec = "64 KiB"
action = "deny"
"#
    );
    let f = sem(&m, "bburst").join("k");
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&f)
        .expect("create");
    let buf = filler(4096);
    let t0 = Instant::now();
    let (mut ok, mut refused) = (0u64, 0u64);
    for i in 0..100 {
        match file.write(&buf) {
            Ok(n) => {
                assert_eq!(n, buf.len(), "write {i}: short");
                ok += 1
            }
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EACCES), "write {i}: {e}");
                refused += 1;
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let allowed = (65536.0 + 65536.0 * secs) / 4096.0 + 1.0;
    assert!(
        (ok as f64) <= allowed,
        "{ok} 4 KiB writes admitted in {secs:.3} s at 64 KiB/s"
    );
    assert!(refused > 0, "no write refused");
    assert_denied(&m, "bburst", "slow-bytes");
    drop(file);
    remount(&mut m);
    let len = fs::metadata(m.mem("bburst", "semantic").join("k"))
        .expect("stat")
        .len();
    assert_eq!(len, ok * 4096, "the stored bytes are the admitted writes");
}

/// A write over 256 KiB is decided in pieces on all cores; the byte rate must still be
/// charged for all of it, not for the piece that stood for the call (it once was: a 1 MiB
/// write cost 128 KiB of the budget).
#[test]
fn a_large_write_is_charged_in_full_against_the_byte_rate() {
    let m = mount!(
        r#"
[[limit]]
name = "slow-bytes"
write_bytes_per_sec = "256 KiB"
action = "deny"
"#
    );
    let f = sem(&m, "bigrate").join("k");
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&f)
        .expect("create");
    // A full bucket admits one write of any size, which then owes up to 768 KiB: about three
    // seconds before the next byte may be written. (The kernel may split the 1 MiB in two
    // requests when the buffer is not page-aligned; the second is then already refused.)
    let big = filler(1 << 20);
    let n = file.write(&big).expect("the first write");
    assert!(n >= 768 << 10, "the first request wrote only {n} bytes");
    let e = file
        .write(&filler(4096))
        .expect_err("a write right after 1 MiB at 256 KiB/s must be refused");
    assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
    assert_denied(&m, "bigrate", "slow-bytes");
}

// ---------------------------------------------------------------------------------------------
// Writes racing a reload
// ---------------------------------------------------------------------------------------------

struct Attempt {
    line: Vec<u8>,
    start: Instant,
    end: Instant,
    errno: i32,
}

/// Two writers append lines holding `CODEWORD-NNNN` while a reload adds a content rule
/// against it (action `action`). Every write that started after `agentfs policy reload`
/// returned must be refused; each file must hold exactly the admitted lines, in order, and a
/// reader must never see a line that ends up refused.
fn writes_racing_a_reload(action: &str) {
    let Some(mut m) = Mount::try_new_with_policy(NOTHING) else {
        return;
    };
    let agent = format!("race-{action}");
    let dir = sem(&m, &agent);
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    for w in 0..2 {
        let path = dir.join(format!("w{w}"));
        File::create(&path).expect("create");
        let stop2 = stop.clone();
        let p2 = path.clone();
        writers.push(thread::spawn(move || {
            let mut file = OpenOptions::new().append(true).open(&p2).expect("open");
            let mut v = Vec::new();
            let mut seq = 0u64;
            while !stop2.load(Ordering::SeqCst) {
                let line = format!("w{w} {seq:07} CODEWORD-{:04}\n", seq % 10_000).into_bytes();
                let start = Instant::now();
                let r = file.write(&line);
                let end = Instant::now();
                let errno = match r {
                    Ok(n) => {
                        assert_eq!(n, line.len(), "short append");
                        0
                    }
                    Err(e) => e.raw_os_error().unwrap_or(-1),
                };
                v.push(Attempt {
                    line,
                    start,
                    end,
                    errno,
                });
                seq += 1;
                if errno == libc::EPERM {
                    // Killed: later calls are refused until START; stop hammering.
                    thread::sleep(Duration::from_millis(5));
                }
            }
            v
        }));
        // The file only grows by whole admitted lines: each observation extends the last.
        let stop3 = stop.clone();
        readers.push(thread::spawn(move || {
            let mut last: Vec<u8> = Vec::new();
            let mut passes = 0u64;
            loop {
                let done = stop3.load(Ordering::SeqCst);
                if let Ok(b) = fs::read(&path) {
                    if !b.starts_with(&last) {
                        return Err(format!(
                            "a reader saw {} bytes, then {} bytes that do not extend them",
                            last.len(),
                            b.len()
                        ));
                    }
                    last = b;
                }
                passes += 1;
                if done {
                    return Ok((passes, last));
                }
            }
        }));
    }
    thread::sleep(Duration::from_millis(300));
    let reload_start = Instant::now();
    reload(
        &m,
        &format!("[[content]]\nname = \"codeword\"\nregex = 'CODEWORD-[0-9]{{4}}'\naction = \"{action}\"\n"),
    );
    let reloaded = Instant::now();
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let attempts: Vec<Vec<Attempt>> = writers
        .into_iter()
        .map(|h| h.join().expect("writer"))
        .collect();
    let seen: Vec<(u64, Vec<u8>)> = readers
        .into_iter()
        .map(|h| h.join().expect("reader").unwrap_or_else(|e| panic!("{e}")))
        .collect();
    for (w, v) in attempts.iter().enumerate() {
        let before = v.iter().filter(|a| a.end < reload_start).count();
        let after: Vec<&Attempt> = v.iter().filter(|a| a.start > reloaded).collect();
        assert!(before > 0, "writer {w}: no write before the reload");
        assert!(!after.is_empty(), "writer {w}: no write after the reload");
        for a in v.iter().filter(|a| a.end < reload_start) {
            assert_eq!(
                a.errno, 0,
                "writer {w}: a write before the reload was refused"
            );
        }
        for a in &after {
            let want: &[i32] = if action == "kill" {
                &[libc::EACCES, libc::EPERM]
            } else {
                &[libc::EACCES]
            };
            assert!(
                want.contains(&a.errno),
                "writer {w}: {:?}, started {:?} after the reload returned, got errno {} ({})",
                show(&a.line),
                a.start - reloaded,
                a.errno,
                errno_name(a.errno)
            );
        }
        let admitted: Vec<u8> = v
            .iter()
            .filter(|a| a.errno == 0)
            .flat_map(|a| a.line.iter().copied())
            .collect();
        let (passes, last) = &seen[w];
        assert!(*passes >= 2, "reader {w} ran {passes} passes");
        assert_same_bytes(&format!("reader {w}'s last view"), last, &admitted);
        assert_same_bytes(
            &format!("w{w} before remount"),
            &read(&dir.join(format!("w{w}"))),
            &admitted,
        );
    }
    if action == "kill" {
        assert_killed(&m, &agent, "codeword");
    } else {
        assert_denied(&m, &agent, "codeword");
    }
    remount(&mut m);
    for (w, v) in attempts.iter().enumerate() {
        let admitted: Vec<u8> = v
            .iter()
            .filter(|a| a.errno == 0)
            .flat_map(|a| a.line.iter().copied())
            .collect();
        assert_same_bytes(
            &format!("w{w} after remount"),
            &read(&m.mem(&agent, "semantic").join(format!("w{w}"))),
            &admitted,
        );
    }
}

#[test]
fn writes_racing_a_reload_deny() {
    writes_racing_a_reload("deny");
}

#[test]
fn writes_racing_a_reload_kill() {
    writes_racing_a_reload("kill");
}

// ---------------------------------------------------------------------------------------------
// policy/ is read-only; KILLED and START
// ---------------------------------------------------------------------------------------------

/// `AGENT/policy/` is read-only for everyone, root included: no create, mkdir, symlink,
/// link or rename into it, no chmod of it, and no write, truncate, chmod, rename or unlink of
/// anything it shows.
#[test]
fn policy_tree_refuses_chmod_rename_unlink_write() {
    let mut m = mount!();
    let a = m.agent("pol");
    let pol = a.join("policy");
    let mine = m.mem("pol", "semantic").join("mine");
    fs::write(&mine, b"mine\n").expect("own file");
    let erofs = |what: &str, r: io::Result<()>| assert_errno(what, r, libc::EROFS);
    erofs("create in policy/", File::create(pol.join("new")).map(drop));
    erofs("mkdir in policy/", fs::create_dir(pol.join("d")));
    erofs(
        "symlink in policy/",
        std::os::unix::fs::symlink("x", pol.join("l")),
    );
    erofs("link into policy/", fs::hard_link(&mine, pol.join("l2")));
    assert!(
        fs::rename(&mine, pol.join("moved")).is_err(),
        "rename of a mem/ file into policy/ succeeded"
    );
    erofs(
        "chmod policy/",
        fs::set_permissions(&pol, fs::Permissions::from_mode(0o777)),
    );
    erofs(
        "setxattr on policy/",
        setxattr(&pol, b"user.x", b"y").map(drop),
    );
    assert!(fs::remove_dir(&pol).is_err(), "rmdir policy/ succeeded");
    assert!(
        fs::rename(&pol, a.join("policy2")).is_err(),
        "rename policy/ succeeded"
    );
    // Whatever policy/ shows (the rendered rules, once shown) is read-only too.
    let files: Vec<PathBuf> = fs::read_dir(&pol)
        .expect("read policy/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_file())
        .collect();
    let before: Vec<Vec<u8>> = files.iter().map(|p| read(p)).collect();
    for p in &files {
        let n = p.display();
        erofs(
            &format!("open {n} for writing"),
            OpenOptions::new().write(true).open(p).map(drop),
        );
        erofs(
            &format!("truncate {n}"),
            check(unsafe { libc::truncate(cstr(p).as_ptr(), 0) }).map(drop),
        );
        erofs(
            &format!("chmod {n}"),
            fs::set_permissions(p, fs::Permissions::from_mode(0o777)),
        );
        erofs(
            &format!("rename {n} inside policy/"),
            fs::rename(p, pol.join("renamed")),
        );
        erofs(&format!("unlink {n}"), fs::remove_file(p));
        assert!(
            fs::rename(p, m.mem("pol", "semantic").join("stolen")).is_err(),
            "rename {n} into mem/ succeeded"
        );
        assert!(
            fs::rename(&mine, p).is_err(),
            "rename a file of mem/ onto {n} succeeded"
        );
    }
    let names = |m: &Mount| -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(m.mnt.join("pol/policy"))
            .expect("read policy/")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let listed = names(&m);
    let after: Vec<Vec<u8>> = files.iter().map(|p| read(p)).collect();
    assert_eq!(before, after, "policy/ changed");
    remount(&mut m);
    assert_eq!(names(&m), listed, "policy/ listing across a remount");
    for bad in ["new", "d", "l", "l2", "moved", "renamed"] {
        assert!(!listed.contains(&bad.to_string()), "policy/ holds {bad}");
    }
    let again: Vec<Vec<u8>> = files.iter().map(|p| read(p)).collect();
    assert_eq!(before, again, "policy/ changed across a remount");
    assert_eq!(read(&m.mem("pol", "semantic").join("mine")), b"mine\n");
}

/// After a kill, nothing more is accepted from the agent, not even through a descriptor it
/// already holds and not a harmless write; START revives it.
#[test]
fn killed_agent_is_refused_until_start() {
    let mut m = mount!();
    let f = sem(&m, "revive").join("k");
    let file = rw(&f);
    eacces("write the key", file.write_at(&key_line(), 0));
    assert_killed(&m, "revive", AWS);
    assert_errno(
        "a harmless write through the open fd after the kill",
        file.write_at(b"hello\n", 0),
        libc::EPERM,
    );
    assert_errno(
        "create after the kill",
        File::create(m.mem("revive", "semantic").join("other")),
        libc::EPERM,
    );
    fs::write(m.mnt.join("sys/agents/revive/signal"), b"START").expect("write START");
    assert_eq!(signal(&m, "revive"), "running", "after START");
    write_ok(&file, b"hello\n", 0, "a harmless write after START");
    eacces("the key again after START", file.write_at(&key_line(), 6));
    assert_killed(&m, "revive", AWS);
    drop(file);
    remount(&mut m);
    assert_eq!(read(&m.mem("revive", "semantic").join("k")), b"hello\n");
    let f = findings(&m, "revive", &[KEY]);
    assert!(f.is_empty(), "{f:?}");
}

/// Every file under `dir` that holds `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read data dir").flatten() {
            let p = e.path();
            let md = fs::symlink_metadata(&p).expect("stat");
            if md.is_dir() {
                stack.push(p);
            } else if md.is_file() {
                let mut b = Vec::new();
                File::open(&p)
                    .and_then(|mut f| f.read_to_end(&mut b))
                    .expect("read");
                if contains(&b, needle) {
                    hits.push(p.display().to_string());
                }
            }
        }
    }
    hits
}

type Attack = Box<dyn Fn(&Path) -> io::Result<()>>;

/// Runs each attack in `mem/semantic` of its own agent (each must be refused, killing it),
/// then unmounts and looks for the key in every file of the data dir: the store, the flight
/// record (SQLite and journal) and the daemon's log.
fn refused_and_not_in_the_data_dir(cases: Vec<(&str, Attack)>) {
    let mut m = mount!();
    for (agent, attack) in &cases {
        let dir = sem(&m, agent);
        eacces(agent, attack(&dir));
        assert_killed(&m, agent, AWS);
    }
    unmount(&mut m);
    let hits = files_holding(&m.data, KEY);
    m.mount();
    assert!(hits.is_empty(), "the key is in the data dir: {hits:?}");
}

/// A refused symlink target or xattr value is not persisted (the record keeps a hash).
#[test]
fn refused_targets_and_xattrs_never_reach_the_data_dir() {
    refused_and_not_in_the_data_dir(vec![
        (
            "dt-symlink",
            Box::new(|d: &Path| std::os::unix::fs::symlink(show(KEY), d.join("l"))),
        ),
        (
            "dt-xattr",
            Box::new(|d: &Path| setxattr(d, b"user.k", &key_line()).map(drop)),
        ),
    ]);
}

/// A refused file or directory name is not persisted either. SPEC §4: no violating byte
/// sequence is ever persisted. Today the flight record (agentfs.db, journal/) and the
/// daemon's log (`policy violation … path=mem/semantic/id-AKIA….txt`) keep the refused path
/// verbatim. (If recording the attempted path is meant to be the exception, the spec should
/// say so; redacting the matched bytes or recording a hash would keep the guarantee.)
#[test]
fn refused_names_never_reach_the_data_dir() {
    refused_and_not_in_the_data_dir(vec![
        (
            "dn-create",
            Box::new(|d: &Path| File::create(d.join(key_name())).map(drop)),
        ),
        (
            "dn-mkdir",
            Box::new(|d: &Path| fs::create_dir(d.join(show(KEY)))),
        ),
    ]);
}

/// Read is never a mutation: a reader of the data dir must not find the key either (the
/// store holds chunks as written; a refused write must not have reached it).
#[test]
fn refused_bytes_never_reach_the_data_dir() {
    let mut m = mount!();
    let f = sem(&m, "disk").join("k");
    let file = rw(&f);
    let big = filler(300_000);
    write_ok(&file, &big, 0, "filler");
    let mut tail = b" ".to_vec();
    tail.extend_from_slice(KEY);
    tail.push(b'\n');
    tail.extend_from_slice(&filler(200_000));
    eacces(
        "write the key after 300 KB",
        file.write_at(&tail, big.len() as u64),
    );
    assert_killed(&m, "disk", AWS);
    drop(file);
    unmount(&mut m);
    let hits = files_holding(&m.data, KEY);
    assert!(hits.is_empty(), "the key is in the data dir: {hits:?}");
    m.mount();
    assert_eq!(read(&m.mem("disk", "semantic").join("k")), big);
}

// ---------------------------------------------------------------------------------------------
// More ways around: other classes, orphans, the mount root, races, parked calls, long rules
// ---------------------------------------------------------------------------------------------

/// The split key in `mem/working` (both orders) and in the append-only `mem/episodic` (in
/// order: appends are all it takes).
#[test]
fn split_key_in_working_and_episodic() {
    let mut m = mount!();
    let line = key_line();
    let p = KEY_AT + 9;
    for (agent, class, reverse) in [
        ("work-fwd", "working", false),
        ("work-rev", "working", true),
        ("epi-fwd", "episodic", false),
    ] {
        m.agent(agent);
        let f = m.mem(agent, class).join("k");
        let file = rw(&f);
        let w = Watch::file(agent, &f, &[KEY]);
        let (first, second) = if reverse {
            ((&line[p..], p), (&line[..p], 0))
        } else {
            ((&line[..p], 0), (&line[p..], p))
        };
        write_ok(&file, first.0, first.1 as u64, &format!("{agent}: first"));
        eacces(
            &format!("{agent}: completing write"),
            file.write_at(second.0, second.1 as u64),
        );
        w.finish();
        drop(file);
        assert_killed(&m, agent, AWS);
    }
    assert_clean_after_remount(&mut m, &["work-fwd", "work-rev", "epi-fwd"], &[KEY]);
}

/// Overwriting the start of an episodic log is a violation of the built-in rule
/// `episodic-append-only` (action kill): EACCES and KILLED, like any other rule.
#[test]
fn overwrite_an_episodic_log() {
    let mut m = mount!();
    m.agent("epi");
    let f = m.mem("epi", "episodic").join("log");
    let file = rw(&f);
    write_ok(&file, b"entry 1\n", 0, "append to a new log");
    let w = Watch::file("episodic overwrite", &f, &[b"XXXX"]);
    eacces("pwrite at 0 into the log", file.write_at(b"XXXX", 0));
    w.finish();
    drop(file);
    assert_killed(&m, "epi", "episodic-append-only");
    remount(&mut m);
    assert_eq!(read(&m.mem("epi", "episodic").join("log")), b"entry 1\n");
}

/// An unlinked file is still readable through a descriptor: completing the key in it must
/// be refused like anywhere else.
#[test]
fn key_completed_in_an_unlinked_file() {
    let mut m = mount!();
    let f = sem(&m, "orphan").join("k");
    let file = rw(&f);
    let line = key_line();
    let p = KEY_AT + 8;
    write_ok(&file, &line[..p], 0, "first half");
    let reader = File::open(&f).expect("reader fd");
    fs::remove_file(&f).expect("unlink");
    let w = Watch::start(
        "orphan",
        &[KEY],
        Box::new(move || {
            let mut b = vec![0u8; 4096];
            match reader.read_at(&mut b, 0) {
                Ok(n) => {
                    b.truncate(n);
                    vec![("the unlinked file".to_string(), b)]
                }
                Err(_) => Vec::new(),
            }
        }),
    );
    let r = file.write_at(&line[p..], p as u64);
    w.finish();
    eacces("second half into the unlinked file", r);
    drop(file);
    assert_killed(&m, "orphan", AWS);
    assert_clean_after_remount(&mut m, &["orphan"], &[KEY]);
}

/// An agent's name is a name: registering `MNT/AKIA…` is refused (no agent exists yet, so
/// there is nobody to kill).
#[test]
fn agent_named_by_a_key() {
    let mut m = mount!();
    eacces(
        "mkdir MNT/KEY (register an agent)",
        fs::create_dir(m.mnt.join(show(KEY))),
    );
    let w = Watch::tree("agent names", &m.mnt, &[KEY]);
    m.agent("plain");
    let r = fs::rename(m.mnt.join("plain"), m.mnt.join(show(KEY)));
    w.finish();
    assert!(r.is_err(), "renaming an agent to a key name succeeded");
    remount(&mut m);
    let names: Vec<Vec<u8>> = fs::read_dir(&m.mnt)
        .expect("readdir MNT")
        .map(|e| e.expect("entry").file_name().as_bytes().to_vec())
        .collect();
    assert!(
        !names.iter().any(|n| contains(n, KEY)),
        "the mount root holds a key name: {:?}",
        names.iter().map(|n| show(n)).collect::<Vec<_>>()
    );
    assert!(
        !m.mnt.join("sys/agents").join(show(KEY)).exists(),
        "sys/agents lists an agent named by a key"
    );
}

/// The mount root holds agents only; nothing there may carry a key either.
#[test]
fn key_at_the_mount_root() {
    let mut m = mount!();
    let w = Watch::tree("mount root", &m.mnt, &[KEY]);
    if let Ok(f) = File::create(m.mnt.join("loose")) {
        eacces(
            "write the key into a file at the mount root",
            f.write_at(&key_line(), 0),
        );
    }
    assert!(
        std::os::unix::fs::symlink(show(KEY), m.mnt.join("l")).is_err(),
        "a symlink to a key at the mount root"
    );
    assert!(
        File::create(m.mnt.join(key_name())).is_err(),
        "a file named by a key at the mount root"
    );
    w.finish();
    remount(&mut m);
    let mut found = Vec::new();
    for e in fs::read_dir(&m.mnt).expect("readdir").flatten() {
        let p = e.path();
        if e.file_name() == "sys" {
            continue;
        }
        if contains(e.file_name().as_bytes(), KEY)
            || fs::read(&p).is_ok_and(|b| contains(&b, KEY))
            || fs::read_link(&p).is_ok_and(|t| contains(t.as_os_str().as_bytes(), KEY))
        {
            found.push(p.display().to_string());
        }
    }
    assert!(found.is_empty(), "the mount root holds the key: {found:?}");
}

/// A checkpoint's name (`mkdir state/NAME`) is a name.
#[test]
fn checkpoint_named_by_a_key() {
    let mut m = mount!();
    m.agent("ckpt");
    let state = m.mnt.join("ckpt/state");
    let w = Watch::tree("checkpoint", &state, &[KEY]);
    let r = fs::create_dir(state.join(show(KEY)));
    w.finish();
    // Checkpoints are not available yet (every change in state/ is EPERM); once they are,
    // this name must be refused by the policy (EACCES, killed).
    let e = errno_of("mkdir state/KEY", r);
    assert!(
        e == libc::EACCES || e == libc::EPERM,
        "mkdir state/KEY: errno {}",
        errno_name(e)
    );
    if e == libc::EACCES {
        assert_killed(&m, "ckpt", AWS);
    }
    assert_clean_after_remount(&mut m, &["ckpt"], &[KEY]);
}

/// A name with bytes that are not UTF-8 around the key (rules match raw bytes; `\xff` is
/// not a word byte, so the key's boundaries hold).
#[test]
fn key_in_a_non_utf8_name() {
    let mut m = mount!();
    let dir = sem(&m, "raw");
    let name = [b"\xff".as_slice(), KEY, b"\xfe"].concat();
    let w = Watch::tree("non-UTF-8 name", &dir, &[KEY]);
    eacces(
        "create \\xffKEY\\xfe",
        File::create(dir.join(std::ffi::OsStr::from_bytes(&name))),
    );
    w.finish();
    assert_killed(&m, "raw", AWS);
    assert_clean_after_remount(&mut m, &["raw"], &[KEY]);
}

/// xattrs outside `user.`: `trusted.` on a symlink (root may set those).
#[test]
fn key_in_a_trusted_xattr_of_a_symlink() {
    let mut m = mount!();
    let dir = sem(&m, "trusted");
    std::os::unix::fs::symlink("target", dir.join("l")).expect("symlink");
    let c = cstr(dir.join("l"));
    let name = CString::new("trusted.note").expect("name");
    let value = key_line();
    let w = Watch::tree("trusted xattr", &dir, &[KEY]);
    let r = check(unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    });
    w.finish();
    let e = errno_of("lsetxattr trusted.note = key on a symlink", r);
    if e == libc::EACCES {
        assert_killed(&m, "trusted", AWS);
    }
    assert_clean_after_remount(&mut m, &["trusted"], &[KEY]);
}

/// Two threads write the two halves at the same moment, 20 times: exactly one of each pair
/// is admitted, whichever comes second is refused, and the key is never whole.
#[test]
fn concurrent_halves_race() {
    let mut m = mount!();
    let line = key_line();
    let p = KEY_AT + 10;
    let mut agents = Vec::new();
    for i in 0..20 {
        let agent = format!("pair{i}");
        let f = sem(&m, &agent).join("k");
        let a = Arc::new(rw(&f));
        let b = a.clone();
        let w = Watch::file(&agent, &f, &[KEY]);
        let go = Arc::new(std::sync::Barrier::new(2));
        let go2 = go.clone();
        let first = line[..p].to_vec();
        let second = line[p..].to_vec();
        let t = thread::spawn(move || {
            go2.wait();
            b.write_at(&second, p as u64).map_err(|e| e.raw_os_error())
        });
        go.wait();
        let r1 = a.write_at(&first, 0).map_err(|e| e.raw_os_error());
        let r2 = t.join().expect("writer");
        w.finish();
        let refused = [&r1, &r2]
            .iter()
            .filter(|r| **r == &Err(Some(libc::EACCES)))
            .count();
        let admitted = [&r1, &r2].iter().filter(|r| r.is_ok()).count();
        assert!(
            refused == 1 && admitted == 1,
            "{agent}: first half {r1:?}, second half {r2:?}"
        );
        assert_killed(&m, &agent, AWS);
        agents.push(agent);
    }
    let names: Vec<&str> = agents.iter().map(String::as_str).collect();
    assert_clean_after_remount(&mut m, &names, &[KEY]);
}

/// A write parked while its agent is STOPped, then released after a reload added a rule
/// against it: it is decided when it runs, by the new rules.
#[test]
fn parked_write_is_decided_by_the_rules_at_release() {
    let Some(mut m) = Mount::try_new_with_policy(NOTHING) else {
        return;
    };
    let f = sem(&m, "parked").join("k");
    File::create(&f).expect("create");
    let sig = m.mnt.join("sys/agents/parked/signal");
    fs::write(&sig, b"STOP").expect("STOP");
    assert_eq!(signal(&m, "parked"), "stopped");
    let f2 = f.clone();
    let t = thread::spawn(move || {
        OpenOptions::new()
            .append(true)
            .open(&f2)
            .and_then(|mut file| file.write(b"codeword TOPSECRET-1234\n"))
    });
    thread::sleep(Duration::from_millis(300));
    assert!(
        !t.is_finished(),
        "the write of a stopped agent did not wait"
    );
    reload(
        &m,
        "[[content]]\nname = \"codeword\"\nregex = 'TOPSECRET-[0-9]{4}'\naction = \"deny\"\n",
    );
    fs::write(&sig, b"CONT").expect("CONT");
    let r = with_timeout("the parked write", Duration::from_secs(30), move || {
        t.join().expect("writer")
    });
    eacces("the parked write released after the reload", r);
    assert_denied(&m, "parked", "codeword");
    remount(&mut m);
    assert_eq!(read(&f), b"", "the parked write was stored");
}

const LONG: &str = r#"
[[content]]
name = "long-span"
regex = 'BEGIN-[a-z]{0,60000}-END'
"#;

/// A custom rule whose matches span up to 60 KB: pieces written far apart (in order, in
/// reverse after a hole, ends first then the middle) are still caught, which needs a scan
/// window of the rule's full length; a span one letter too long is no match and is stored.
#[test]
fn long_pattern_completed_far_from_its_start() {
    let mut m = mount!(LONG);
    let letters = |n: usize| vec![b'a'; n];
    type Plan = Vec<(usize, Vec<u8>)>;
    let cases: [(&str, Plan); 3] = [
        (
            "in order",
            vec![
                (0, [b"BEGIN-".as_slice(), &letters(30_000)].concat()),
                (30_006, letters(29_000)),
                (59_006, b"-END".to_vec()),
            ],
        ),
        (
            "reversed",
            vec![
                (59_006, b"-END".to_vec()),
                (6, letters(59_000)),
                (0, b"BEGIN-".to_vec()),
            ],
        ),
        (
            "ends first",
            vec![
                (0, b"BEGIN-".to_vec()),
                (59_006, b"-END".to_vec()),
                (6, letters(59_000)),
            ],
        ),
    ];
    let whole = [b"BEGIN-".as_slice(), &letters(59_000), b"-END"].concat();
    let mut agents = Vec::new();
    for (i, (case, plan)) in cases.iter().enumerate() {
        let agent = format!("long{i}");
        let f = sem(&m, &agent).join("k");
        let file = rw(&f);
        let w = Watch::file(case, &f, &[&whole]);
        let (last, rest) = plan.split_last().expect("plan");
        for (at, data) in rest {
            write_ok(&file, data, *at as u64, &format!("{case}: piece at {at}"));
        }
        eacces(
            &format!("{case}: the completing piece at {}", last.0),
            file.write_at(&last.1, last.0 as u64),
        );
        w.finish();
        drop(file);
        assert_killed(&m, &agent, "long-span");
        agents.push(agent);
    }
    // Control: 60,001 letters between the ends is no match.
    let f = sem(&m, "long-ok").join("k");
    let over = [b"BEGIN-".as_slice(), &letters(60_001), b"-END\n"].concat();
    fs::write(&f, &over).expect("a span longer than the rule's bound is not a match");
    let names: Vec<&str> = agents.iter().map(String::as_str).collect();
    assert_clean_after_remount(&mut m, &names, &[&whole]);
    assert_eq!(read(&m.mem("long-ok", "semantic").join("k")), over);
}

/// renameat2(RENAME_EXCHANGE) of a writable file with a read-only one.
#[test]
fn rename_exchange_with_a_read_only_file() {
    let Some(mut m) = areas(&["ro-xchg"]) else {
        return;
    };
    let s = m.mem("ro-xchg", "semantic");
    let (a, b) = (cstr(s.join("free")), cstr(s.join("facts/f")));
    let r = check(unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        ) as libc::c_int
    });
    eacces("RENAME_EXCHANGE free <-> facts/f", r);
    assert_killed(&m, "ro-xchg", "facts-are-final");
    remount(&mut m);
    assert_areas_intact(&m, "ro-xchg", b"");
    assert_eq!(read(&s.join("free")), b"OVERWRITTEN\n");
}

/// A quota is bytes held: growing a sparse file by truncate or by a write after a hole counts.
#[test]
fn quota_exceeded_by_truncate_and_hole() {
    let mut m = mount!(
        r#"
[[limit]]
name = "mib-quota"
quota = { semantic = "1 MiB" }
action = "deny"
"#
    );
    let f = sem(&m, "qgrow").join("k");
    fs::write(&f, b"0123456789").expect("file");
    let out = tool("truncate", &["-s".as_ref(), "2M".as_ref(), f.as_os_str()]);
    assert_tool_eacces("truncate -s 2M under a 1 MiB quota", &out);
    let file = rw(&f);
    eacces("pwrite at 2 MiB", file.write_at(b"x", 2 << 20));
    drop(file);
    assert_denied(&m, "qgrow", "mib-quota");
    remount(&mut m);
    let len = fs::metadata(m.mem("qgrow", "semantic").join("k"))
        .expect("stat")
        .len();
    assert_eq!(len, 10, "the size after remount");
}

/// Bytes in xattrs are bytes the agent holds: 100 xattrs of 4 KiB under a 64 KiB quota.
#[test]
#[ignore = "known limit (docs/policy.md): xattr values are metadata, not counted in the byte quota (each is capped at 64 KiB)"]
fn quota_exhausted_by_xattrs() {
    let mut m = mount!(
        r#"
[[limit]]
name = "tiny-quota"
quota = { semantic = "64 KiB" }
action = "deny"
"#
    );
    let f = sem(&m, "xquota").join("k");
    fs::write(&f, b"x").expect("file");
    let value = filler(4096);
    let (mut ok, mut refused) = (0u64, 0u64);
    for i in 0..100 {
        match setxattr(&f, format!("user.n{i}").as_bytes(), &value) {
            Ok(_) => ok += 1,
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EACCES), "xattr {i}: {e}");
                refused += 1;
            }
        }
    }
    assert!(
        ok * 4096 <= 64 << 10,
        "{ok} xattrs of 4 KiB admitted under a 64 KiB quota ({refused} refused)"
    );
    assert_denied(&m, "xquota", "tiny-quota");
    remount(&mut m);
}

/// The first half is written before a reload adds a rule, the second after: the match is new
/// (the stored half alone is none), so the reload's rule must catch it.
#[test]
fn split_codeword_across_a_reload() {
    let Some(mut m) = Mount::try_new_with_policy(NOTHING) else {
        return;
    };
    let f = sem(&m, "across").join("k");
    let file = rw(&f);
    write_ok(&file, b"codeword TOPSEC", 0, "first half, before the rule");
    reload(&m, CODEWORD_POLICY);
    let w = Watch::file("across a reload", &f, &[CODEWORD]);
    eacces(
        "second half, after the rule",
        file.write_at(b"RET-1234\n", 15),
    );
    w.finish();
    drop(file);
    assert_killed(&m, "across", "codeword");
    remount(&mut m);
    assert_eq!(
        read(&m.mem("across", "semantic").join("k")),
        b"codeword TOPSEC"
    );
}

/// chmod and utimens of a read-only file are writes.
#[test]
fn chmod_and_touch_a_read_only_file() {
    let Some(mut m) = areas(&["ro-chmod", "ro-touch"]) else {
        return;
    };
    let f = m.mem("ro-chmod", "semantic").join("facts/f");
    eacces(
        "chmod facts/f",
        fs::set_permissions(&f, fs::Permissions::from_mode(0o600)),
    );
    assert_killed(&m, "ro-chmod", "facts-are-final");
    let f = m.mem("ro-touch", "semantic").join("facts/f");
    let c = cstr(&f);
    eacces(
        "utimensat facts/f",
        check(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), std::ptr::null(), 0) }),
    );
    assert_killed(&m, "ro-touch", "facts-are-final");
    remount(&mut m);
    assert_areas_intact(&m, "ro-chmod", b"");
}

/// Hard links made while no rule protected a file; then a reload makes one of its names
/// read-only or append-only. The rules must follow every name the file has (docs/policy.md,
/// "Rename and link never change rights"), whichever name was first and whichever name the
/// write comes through. Each case: (agent, protected name, which name was created first,
/// the name the write goes through, unlink the free name first?).
fn links_made_before_a_reload(cases: &[(&str, &str, &str, &str, bool)], remount_first: bool) {
    let Some(mut m) = Mount::try_new_with_policy(NOTHING) else {
        return;
    };
    for &(agent, protected, first, _, _) in cases {
        let s = sem(&m, agent);
        fs::create_dir(s.join("facts")).expect("mkdir facts");
        fs::create_dir(s.join("log")).expect("mkdir log");
        let (a, b) = if first == "protected" {
            (protected, "alias")
        } else {
            ("alias", protected)
        };
        fs::write(s.join(a), FACT).expect("write the file");
        fs::hard_link(s.join(a), s.join(b)).expect("link before the rule");
    }
    reload(&m, AREAS);
    if remount_first {
        remount(&mut m);
    }
    let mut failures = Vec::new();
    for &(agent, protected, first, via, unlink_alias) in cases {
        let s = m.mem(agent, "semantic");
        let case = format!(
            "{agent}: {protected} + alias ({first} name first){}, write through {via}{}",
            if remount_first { ", remounted" } else { "" },
            if unlink_alias {
                " after unlinking alias"
            } else {
                ""
            }
        );
        let rule = if protected.starts_with("facts") {
            "facts-are-final"
        } else {
            "log-append-only"
        };
        if unlink_alias {
            fs::remove_file(s.join("alias")).expect("unlink alias (a free name)");
        }
        let w = Watch::file(&case, &s.join(protected), &[b"REWRITTEN"]);
        let r = OpenOptions::new()
            .write(true)
            .open(s.join(via))
            .and_then(|f| f.write_at(b"REWRITTEN", 0));
        let seen = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.finish()));
        match r {
            Ok(n) => failures.push(format!("{case}: a write of {n} bytes at 0 was allowed")),
            Err(e) if e.raw_os_error() == Some(libc::EACCES) => {
                if signal(&m, agent) != "killed" {
                    failures.push(format!("{case}: refused but not killed"));
                } else if status(&m, agent)["last_violation"]["rule"] != rule {
                    failures.push(format!("{case}: refused by another rule than {rule}"));
                }
            }
            Err(e) => failures.push(format!("{case}: {e}")),
        }
        if seen.is_err() {
            failures.push(format!("{case}: a reader saw the rewrite"));
        }
    }
    remount(&mut m);
    for &(agent, protected, ..) in cases {
        let got = read(&m.mem(agent, "semantic").join(protected));
        if got != FACT {
            failures.push(format!(
                "{agent}: after remount {protected} holds {:?}",
                show(&got)
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The protected name came first: writes through either name are refused.
#[test]
fn link_made_before_a_reload_protected_name_first() {
    links_made_before_a_reload(
        &[
            ("pre-ro-a", "facts/f", "protected", "alias", false),
            ("pre-ro-b", "facts/f", "protected", "facts/f", false),
            ("pre-ao-a", "log/l", "protected", "alias", false),
            ("pre-ao-b", "log/l", "protected", "log/l", false),
        ],
        false,
    );
}

/// The same after a remount (the daemon rebuilds its inode table, and with it the name each
/// file is decided by).
#[test]
fn link_made_before_a_reload_protected_name_first_then_remount() {
    links_made_before_a_reload(
        &[
            ("pre-rm-a", "facts/f", "protected", "alias", false),
            ("pre-rm-b", "facts/f", "protected", "facts/f", false),
            ("pre-rm-c", "log/l", "protected", "alias", false),
            ("pre-rm-d", "log/l", "protected", "log/l", false),
        ],
        true,
    );
}

/// The free name came first: the core decides a write by the file's first name, so the
/// read-only / append-only name it gained by a link before the reload is not protected —
/// not even when the write goes through the protected name itself, nor after the free name
/// is unlinked.
#[test]
fn link_made_before_a_reload_free_name_first() {
    links_made_before_a_reload(
        &[
            ("pre-ro-c", "facts/f", "free", "alias", false),
            ("pre-ro-d", "facts/f", "free", "facts/f", false),
            ("pre-ro-e", "facts/f", "free", "facts/f", true),
            ("pre-ao-c", "log/l", "free", "alias", false),
            ("pre-ao-d", "log/l", "free", "log/l", false),
            ("pre-ao-e", "log/l", "free", "log/l", true),
        ],
        false,
    );
}

/// Returns how many of `n` calls, run at the same moment on `n` threads, succeeded; each
/// failure must be EACCES.
fn at_once(n: usize, call: impl Fn(usize) -> io::Result<()> + Send + Sync + 'static) -> usize {
    let call = Arc::new(call);
    let go = Arc::new(std::sync::Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (call, go) = (call.clone(), go.clone());
            thread::spawn(move || {
                go.wait();
                call(i)
            })
        })
        .collect();
    let mut ok = 0;
    for (i, h) in handles.into_iter().enumerate() {
        match h.join().expect("thread") {
            Ok(()) => ok += 1,
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EACCES), "call {i}: {e}"),
        }
    }
    ok
}

/// Writes to different files decided at the same moment: the quota must hold for their sum
/// (each 16 KiB write into its own file, 8 at once, under a 64 KiB quota: at most 4 fit).
#[test]
fn quota_raced_by_parallel_writes_to_different_files() {
    let mut m = mount!(
        r#"
[[limit]]
name = "tiny-quota"
quota = { semantic = "64 KiB" }
action = "deny"
"#
    );
    // The same writes one after the other: how many fit.
    let dir = sem(&m, "qseq");
    let room = (0..8)
        .take_while(|i| {
            rw(&dir.join(format!("f{i}")))
                .write_at(&filler(16 << 10), 0)
                .is_ok()
        })
        .count();
    assert_eq!(
        room, 4,
        "16 KiB writes admitted one by one under a 64 KiB quota"
    );
    let mut worst = 0;
    let mut agents = Vec::new();
    for round in 0..10 {
        let agent = format!("qrace{round}");
        let dir = sem(&m, &agent);
        let files: Vec<File> = (0..8).map(|i| rw(&dir.join(format!("f{i}")))).collect();
        let files = Arc::new(files);
        let data = Arc::new(filler(16 << 10));
        let ok = at_once(8, move |i| files[i].write_at(&data, 0).map(drop));
        worst = worst.max(ok);
        agents.push(agent);
    }
    assert!(
        worst <= 4,
        "{worst} writes of 16 KiB admitted at once under a 64 KiB quota"
    );
    remount(&mut m);
    for a in &agents {
        let total: u64 = fs::read_dir(m.mem(a, "semantic"))
            .expect("readdir")
            .map(|e| e.expect("entry").metadata().expect("stat").len())
            .sum();
        assert!(
            total <= 64 << 10,
            "{a}: {total} bytes stored under a 64 KiB quota"
        );
    }
}

/// Creates in different directories decided at the same moment: max_files holds for their
/// sum.
#[test]
fn max_files_raced_by_parallel_creates() {
    let mut m = mount!(
        r#"
[[limit]]
name = "few-files"
max_files = 12
action = "deny"
"#
    );
    let dirs = |dir: &Path| {
        for i in 0..8 {
            fs::create_dir(dir.join(format!("d{i}"))).expect("mkdir");
        }
    };
    // The same creates one after the other: how many fit.
    let dir = sem(&m, "fseq");
    dirs(&dir);
    let room = (0..8)
        .take_while(|i| File::create(dir.join(format!("d{i}/f"))).is_ok())
        .count();
    let mut worst = 0;
    let mut agents = Vec::new();
    for round in 0..10 {
        let agent = format!("frace{round}");
        let dir = sem(&m, &agent);
        dirs(&dir);
        let ok = at_once(8, move |i| {
            File::create(dir.join(format!("d{i}/f"))).map(drop)
        });
        worst = worst.max(ok);
        agents.push(agent);
    }
    assert!(
        worst <= room,
        "{worst} creates admitted at once, {room} one after the other"
    );
    remount(&mut m);
    for a in &agents {
        let mut n = 0;
        for e in fs::read_dir(m.mem(a, "semantic"))
            .expect("readdir")
            .flatten()
        {
            n += 1 + fs::read_dir(e.path()).map(|d| d.count()).unwrap_or(0);
        }
        assert!(n <= 12, "{a}: {n} nodes stored under max_files = 12");
    }
}

/// A reload with a bad file (a syntax error, or a `[[test]]` case that fails) is refused and
/// the old rules stay: the codeword is still refused afterwards.
#[test]
fn a_refused_reload_keeps_the_old_rules() {
    let Some(mut m) = Mount::try_new_with_policy(CODEWORD_POLICY) else {
        return;
    };
    let f = sem(&m, "badreload").join("k");
    let bad = [
        "[[content]\nname = \"broken\"\n".to_string(),
        "[[test]]\nname = \"fails\"\nagent = \"a\"\nop = \"write\"\npath = \"mem/semantic/x\"\ncontent = \"hello\"\nexpect = \"kill\"\n".to_string(),
    ];
    for text in &bad {
        fs::write(policy_file(&m), text).expect("write a bad policy file");
        let out = agentfs(&["policy".as_ref(), "reload".as_ref(), m.mnt.as_os_str()]);
        assert!(
            !out.status.success(),
            "a reload of a bad file succeeded: {text:?}"
        );
    }
    // Restore the file, so the remount below mounts with the rules that are in force.
    fs::write(policy_file(&m), CODEWORD_POLICY).expect("restore the policy file");
    let file = rw(&f);
    eacces(
        "the codeword after refused reloads",
        file.write_at(b"codeword TOPSECRET-1234\n", 0),
    );
    drop(file);
    assert_killed(&m, "badreload", "codeword");
    remount(&mut m);
    assert_eq!(read(&m.mem("badreload", "semantic").join("k")), b"");
}
