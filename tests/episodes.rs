//! Episodic memory as a timeline through a real mount (SPEC §6, issue 6): every append is kept
//! with its time, `agentfs episodes` replays them in order, old logs go only by the operator's
//! `agentfs episodes prune`, and concurrent appenders never interleave inside one write.

mod common;

use common::*;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

fn append(path: &Path, data: &[u8]) {
    let mut f = OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {} for append: {e}", path.display()));
    f.write_all(data).unwrap();
}

/// The lines of `sys/agents/AGENT/episodes`, parsed.
fn timeline(m: &Mount, agent: &str) -> Vec<serde_json::Value> {
    let text = fs::read_to_string(m.mnt.join("sys/agents").join(agent).join("episodes")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn cli(m: &Mount, args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(bin());
    cmd.args(args).arg("--mount").arg(&m.mnt);
    run_with_timeout(&mut cmd, CMD_TIMEOUT).expect("run agentfs")
}

fn stdout_ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "agentfs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn appends_are_kept_with_their_times_and_replayed_in_order() {
    let Some(mut m) = Mount::try_new() else {
        return;
    };
    m.agent("a");
    let epi = m.mem("a", "episodic");
    append(&epi.join("log"), b"first\n");
    std::thread::sleep(Duration::from_millis(1100));
    fs::create_dir(epi.join("tools")).unwrap();
    append(&epi.join("tools/shell"), b"ran ls\n");
    append(&epi.join("log"), b"second\nline two\n");

    let t = timeline(&m, "a");
    assert_eq!(t.len(), 3, "{t:?}");
    let paths: Vec<&str> = t.iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["log", "tools/shell", "log"]);
    assert_eq!(t[0]["offset"], 0);
    assert_eq!(t[2]["offset"], 6);
    assert_eq!(t[2]["len"], 16);
    let times: Vec<i64> = t.iter().map(|e| e["time_ns"].as_i64().unwrap()).collect();
    assert!(times[0] + 1_000_000_000 <= times[1], "{times:?}");
    assert!(times[1] <= times[2], "{times:?}");

    // The CLI: the same writes with their bytes.
    let json = stdout_ok(&cli(&m, &["episodes", "a", "--json"]));
    let texts: Vec<String> = json
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(texts, ["first\n", "ran ls\n", "second\nline two\n"]);
    let human = stdout_ok(&cli(&m, &["episodes", "a", "log"]));
    assert_eq!(human.lines().count(), 3, "{human}");
    assert!(
        human.contains("  log  first") && human.contains("    line two"),
        "{human}"
    );
    // --since: only what was written after the first second.
    let since = format!("@{}", times[0] / 1_000_000_000 + 1);
    let later = stdout_ok(&cli(&m, &["episodes", "a", "--since", &since, "--json"]));
    assert_eq!(later.lines().count(), 2, "{later}");
    assert!(!later.contains("first"), "{later}");
    let bad = cli(&m, &["episodes", "a", "--since", "whenever"]);
    assert_eq!(
        bad.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    // The times are in the store: the same after a remount, and after kill -9.
    m.remount();
    assert_eq!(timeline(&m, "a"), t);
    append(&epi.join("log"), b"third\n");
    m.kill9();
    m.mount();
    let after = timeline(&m, "a");
    assert_eq!(after.len(), 4, "{after:?}");
    assert_eq!(&after[..3], &t[..]);
}

#[test]
fn only_the_operator_prunes_old_logs_and_it_is_recorded() {
    let Some(m) = Mount::try_new() else { return };
    m.agent("a");
    let epi = m.mem("a", "episodic");
    append(&epi.join("old"), b"long ago\n");
    std::thread::sleep(Duration::from_millis(1100));
    let cut = timeline(&m, "a")[0]["time_ns"].as_i64().unwrap() / 1_000_000_000 + 1;
    append(&epi.join("new"), b"just now\n");
    // Nobody deletes a log through the mount: the tree refuses (EPERM) and the built-in
    // policy's episodic-append-only rule refuses first (EACCES, a violation).
    let e = errno_of("unlink a log", fs::remove_file(epi.join("old")));
    assert!(
        e == libc::EPERM || e == libc::EACCES,
        "unlink a log: {}",
        errno_name(e)
    );
    assert_eq!(fs::read(epi.join("old")).unwrap(), b"long ago\n");

    let ctl = m.mnt.join("sys/agents/a/prune");
    assert_errno(
        "prune with junk",
        fs::write(&ctl, "yesterday"),
        libc::EINVAL,
    );
    let out = stdout_ok(&cli(
        &m,
        &["episodes", "prune", "a", "--before", &format!("@{cut}")],
    ));
    assert!(out.contains("pruned 1 log"), "{out}");
    assert!(!epi.join("old").exists());
    assert_eq!(fs::read(epi.join("new")).unwrap(), b"just now\n");
    let t = timeline(&m, "a");
    assert_eq!(t.len(), 1, "{t:?}");
    let audit = fs::read_to_string(m.mnt.join("sys/agents/a/audit")).unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"prune\"") && l.contains("a/mem/episodic/old")),
        "{audit}"
    );
    assert!(audit.contains("episodes-prune"), "{audit}");
}

#[test]
fn concurrent_appenders_never_interleave_within_a_write() {
    let Some(m) = Mount::try_new() else { return };
    m.agent("a");
    let log = m.mem("a", "episodic").join("shared");
    const WRITERS: u8 = 4;
    const RECORDS: usize = 40;
    const RECORD: usize = 64 * 1024;
    let threads: Vec<_> = (0..WRITERS)
        .map(|w| {
            let log = log.clone();
            std::thread::spawn(move || {
                let f = OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(&log)
                    .unwrap();
                for r in 0..RECORDS {
                    let mut rec = vec![b'a' + w; RECORD];
                    rec[..8].copy_from_slice(format!("{w}:{r:06}").as_bytes());
                    (&f).write_all(&rec).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let f = fs::File::open(&log).unwrap();
    let size = f.metadata().unwrap().len() as usize;
    assert_eq!(size, WRITERS as usize * RECORDS * RECORD);
    let mut seen = std::collections::BTreeSet::new();
    let mut buf = vec![0u8; RECORD];
    for i in 0..size / RECORD {
        f.read_exact_at(&mut buf, (i * RECORD) as u64).unwrap();
        let w = buf[0] - b'0';
        let fill = b'a' + w;
        assert!(
            buf[8..].iter().all(|b| *b == fill),
            "record {i} is mixed: starts {:?}",
            String::from_utf8_lossy(&buf[..8])
        );
        assert!(seen.insert(buf[..8].to_vec()), "record {i} twice");
    }
    // Each write(2) is one timed append.
    assert_eq!(timeline(&m, "a").len(), WRITERS as usize * RECORDS);
}

/// Total length of the pack files: every chunk byte the store has written (the collector only
/// punches holes, which keep a pack's length).
fn pack_bytes(data: &Path) -> u64 {
    fs::read_dir(data.join("packs"))
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// A log written one line per open/append/close stores each line a few times, not its whole
/// tail chunk at every close (docs/storage.md, "Pieces"), and reads back exactly after a
/// remount and after kill -9.
#[test]
fn a_log_grown_line_by_line_does_not_rewrite_its_tail_chunk() {
    let Some(mut m) = Mount::try_new() else {
        return;
    };
    m.agent("a");
    let log = m.mem("a", "episodic").join("steps.log");
    let before = pack_bytes(&m.data);
    let mut expected = Vec::new();
    for i in 0..3_000 {
        let line = format!("step {i:05}: observed, decided, acted\n");
        append(&log, line.as_bytes());
        expected.extend_from_slice(line.as_bytes());
    }
    assert_eq!(fs::read(&log).unwrap(), expected);
    let written = pack_bytes(&m.data) - before;
    eprintln!(
        "{written} pack bytes written for a {}-byte log",
        expected.len()
    );
    // Whole tail chunks would write ~1,500 times the log (about 170 MB); pieces write a few
    // times it.
    assert!(
        written < 20 * expected.len() as u64,
        "{written} pack bytes written for a {}-byte log",
        expected.len()
    );
    m.remount();
    assert_eq!(fs::read(&log).unwrap(), expected, "after a remount");
    append(&log, b"one more\n");
    expected.extend_from_slice(b"one more\n");
    m.kill9();
    m.remount();
    assert_eq!(fs::read(&log).unwrap(), expected, "after kill -9");
}
