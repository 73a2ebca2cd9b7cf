//! Durability across `kill -9` of the daemon (SPEC §9): after close() or fsync() returned 0,
//! the data survives a SIGKILL of the daemon, the stale mount being cleared and a remount.

mod common;

use common::*;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::IntoRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Writes `data` to a new file in chunks and closes it with a checked close(2)
/// (`File`'s Drop ignores errors from close, which is where FUSE reports a failed flush).
fn write_and_close(p: &Path, data: &[u8], fsync: bool) -> std::io::Result<()> {
    let mut f = File::create(p)?;
    for c in data.chunks(64 * 1024 + 3) {
        f.write_all(c)?;
    }
    if fsync {
        f.sync_all()?;
    }
    let fd = f.into_raw_fd();
    check(unsafe { libc::close(fd) }).map(|_| ())
}

fn append_and_close(p: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = OpenOptions::new().append(true).create(true).open(p)?;
    f.write_all(data)?;
    let fd = f.into_raw_fd();
    check(unsafe { libc::close(fd) }).map(|_| ())
}

const SIZES: [usize; 7] = [0, 1, 4095, 4096, 65_537, (1 << 20) + 7, 5 << 20];

fn files_for(dir: &Path, seed: u64) -> Vec<(PathBuf, Vec<u8>)> {
    SIZES
        .iter()
        .enumerate()
        .map(|(i, &n)| (dir.join(format!("f{i}-{n}")), pattern(seed + i as u64, n)))
        .collect()
}

fn verify(what: &str, files: &[(PathBuf, Vec<u8>)]) {
    for (p, want) in files {
        let got = fs::read(p).unwrap_or_else(|e| panic!("{what}: read {}: {e}", p.display()));
        assert_same_bytes(&format!("{what}: {}", p.display()), &got, want);
    }
}

#[test]
fn fsync_then_kill9_keeps_data() {
    let Some(mut m) = Mount::try_new() else {
        return;
    };
    m.agent("a");
    let mut all = Vec::new();
    for (class, seed) in [("semantic", 100), ("episodic", 200)] {
        let files = files_for(&m.mem("a", class), seed);
        for (p, d) in &files {
            // fsync, then keep the fd open across the kill: fsync alone must be enough.
            let mut f = File::create(p).unwrap();
            f.write_all(d).unwrap();
            f.sync_all()
                .unwrap_or_else(|e| panic!("fsync {}: {e}", p.display()));
            std::mem::forget(f);
        }
        all.extend(files);
    }
    // An in-place overwrite of a durable file, then fdatasync.
    let sem = m.mem("a", "semantic");
    let (p, mut d) = all[5].clone();
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all_at(b"OVERWRITTEN", 1000).unwrap();
    f.sync_data().unwrap();
    d[1000..1011].copy_from_slice(b"OVERWRITTEN");
    all[5].1 = d;
    // A rename and an unlink made durable by fsync of the directory.
    write_and_close(&sem.join("old-name"), b"renamed", true).unwrap();
    write_and_close(&sem.join("doomed"), b"unlinked", true).unwrap();
    fs::rename(sem.join("old-name"), sem.join("new-name")).unwrap();
    fs::remove_file(sem.join("doomed")).unwrap();
    File::open(&sem).unwrap().sync_all().unwrap();
    // A shrink made durable by fsync.
    let (tp, td) = all[6].clone();
    let f = OpenOptions::new().write(true).open(&tp).unwrap();
    f.set_len(12345).unwrap();
    f.sync_all().unwrap();
    all[6].1 = td[..12345].to_vec();

    m.kill9();
    m.mount();

    verify("after fsync + kill -9", &all);
    assert_eq!(fs::read(sem.join("new-name")).unwrap(), b"renamed");
    assert!(!sem.join("old-name").exists(), "rename undone by the crash");
    assert!(!sem.join("doomed").exists(), "unlink undone by the crash");
}

#[test]
fn close_then_kill9_keeps_data() {
    let Some(mut m) = Mount::try_new() else {
        return;
    };
    m.agent("a");
    let mut all = Vec::new();
    for (class, seed) in [("semantic", 300), ("episodic", 400)] {
        let dir = m.mem("a", class).join("sub");
        fs::create_dir(&dir).unwrap();
        let files = files_for(&dir, seed);
        for (p, d) in &files {
            write_and_close(p, d, false).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        }
        all.extend(files);
    }
    // Kill immediately: close() returning is the promise.
    m.kill9();
    m.mount();
    verify("after close + kill -9", &all);
    // Nothing extra appeared either.
    let n = fs::read_dir(m.mem("a", "semantic").join("sub"))
        .unwrap()
        .count();
    assert_eq!(n, SIZES.len(), "semantic/sub entries after crash");
}

#[test]
fn episodic_appends_survive_kill9() {
    let Some(mut m) = Mount::try_new() else {
        return;
    };
    m.agent("a");
    let log = m.mem("a", "episodic").join("log");
    let mut want = Vec::new();
    for i in 0..200u64 {
        let rec = format!("{i:05} {}\n", "x".repeat((i as usize * 37) % 500));
        append_and_close(&log, rec.as_bytes()).unwrap();
        want.extend_from_slice(rec.as_bytes());
    }
    m.kill9();
    m.mount();
    assert_same_bytes(
        "episodic log after kill -9",
        &fs::read(&log).unwrap(),
        &want,
    );
    // And the log keeps growing after recovery.
    append_and_close(&log, b"after\n").unwrap();
    want.extend_from_slice(b"after\n");
    assert_same_bytes("episodic log after append", &fs::read(&log).unwrap(), &want);
}

#[test]
fn working_memory_is_gone_after_kill9() {
    let Some(mut m) = Mount::try_new() else {
        return;
    };
    m.agent("a");
    write_and_close(&m.mem("a", "working").join("w"), b"scratch", true).unwrap();
    m.kill9();
    m.mount();
    assert!(
        m.mem("a", "working").is_dir(),
        "working dir missing after crash"
    );
    assert_eq!(
        fs::read_dir(m.mem("a", "working")).unwrap().count(),
        0,
        "working memory survived kill -9"
    );
}

/// What the writer thread managed to close successfully in one cycle.
#[derive(Default)]
struct Closed {
    files: Vec<(PathBuf, Vec<u8>)>,
    log: Option<PathBuf>,
    log_records: Vec<Vec<u8>>,
}

fn record(cycle: u64, i: u64) -> Vec<u8> {
    let mut r = format!("cycle {cycle} record {i} ").into_bytes();
    r.extend(pattern(
        cycle * 1_000_000 + i,
        100 + (i as usize * 131) % 3000,
    ));
    r.push(b'\n');
    r
}

#[test]
fn kill9_cycles_with_writer_midstream() {
    let Some(mut m) = Mount::try_new_with_budget(600) else {
        return;
    };
    m.agent("a");
    let mut closed_all: Vec<Closed> = Vec::new();
    for cycle in 0..5u64 {
        let sem = m.mem("a", "semantic").join(format!("cycle{cycle}"));
        fs::create_dir(&sem).unwrap();
        let log = m.mem("a", "episodic").join(format!("log{cycle}"));
        let closed = Arc::new(Mutex::new(Closed {
            log: Some(log.clone()),
            ..Default::default()
        }));
        let progress = Arc::new(AtomicUsize::new(0));
        let (c2, p2) = (closed.clone(), progress.clone());
        let writer = std::thread::spawn(move || {
            // Runs until the daemon dies under it (the first error ends the stream).
            for i in 0u64.. {
                let size = 1 + ((i as usize * 7919) % (400 * 1024));
                let data = pattern(cycle * 10_000 + i, size);
                let p = sem.join(format!("f{i:05}"));
                if write_and_close(&p, &data, i % 5 == 0).is_err() {
                    return;
                }
                c2.lock().unwrap().files.push((p, data));
                let rec = record(cycle, i);
                if append_and_close(&log, &rec).is_err() {
                    return;
                }
                c2.lock().unwrap().log_records.push(rec);
                p2.fetch_add(1, Ordering::SeqCst);
            }
        });
        // Kill once the writer is well into its stream (not at a fixed time).
        let target = 15 + 10 * cycle as usize;
        assert!(
            wait_until(Duration::from_secs(120), || {
                progress.load(Ordering::SeqCst) >= target || writer.is_finished()
            }),
            "cycle {cycle}: writer made no progress to {target} files in 120 s"
        );
        assert!(
            !writer.is_finished(),
            "cycle {cycle}: writer stopped on its own after {} files (I/O error before the kill)",
            progress.load(Ordering::SeqCst)
        );
        m.kill9_keep_stale();
        // The writer's in-flight call must fail promptly now that the daemon is gone.
        assert!(
            wait_until(Duration::from_secs(30), || writer.is_finished()),
            "cycle {cycle}: writer still blocked 30 s after the daemon died"
        );
        writer.join().expect("writer thread panicked");
        detach(&m.mnt).expect("umount -l after kill -9");
        m.mark_unmounted();
        m.mount();

        let c = Arc::try_unwrap(closed)
            .ok()
            .expect("writer gone")
            .into_inner()
            .unwrap();
        closed_all.push(c);
        // Every file of every cycle so far whose close() returned is intact.
        for (k, c) in closed_all.iter().enumerate() {
            verify(&format!("cycle {cycle}, files of cycle {k}"), &c.files);
            let log = c.log.as_ref().unwrap();
            let got = fs::read(log).unwrap_or_else(|e| panic!("read {}: {e}", log.display()));
            let want: Vec<u8> = c.log_records.concat();
            assert!(
                got.len() >= want.len(),
                "cycle {cycle}: log{k} lost closed appends: {} bytes, want at least {}",
                got.len(),
                want.len()
            );
            assert_same_bytes(
                &format!("cycle {cycle}: log{k} closed prefix"),
                &got[..want.len()],
                &want,
            );
            // Anything beyond is the in-flight append: a prefix of the next record, no garbage.
            let tail = &got[want.len()..];
            let next = record(k as u64, c.log_records.len() as u64);
            assert!(
                tail.len() <= next.len() && tail == &next[..tail.len()],
                "cycle {cycle}: log{k} has {} bytes after the closed records that are not the \
                 in-flight append",
                tail.len()
            );
        }
        assert_eq!(
            fs::read_dir(m.mem("a", "working")).unwrap().count(),
            0,
            "working memory after crash"
        );
    }
    // A final clean remount sees the same state.
    m.remount();
    for c in &closed_all {
        verify("after final clean remount", &c.files);
    }
}

#[test]
fn atomic_save_by_rename_is_never_torn_by_kill9() {
    // The editor/git pattern: write a temp file, close it, rename it over the target. After a
    // crash the target holds one complete version (the last one, since rename returned before
    // the kill) — never an empty or partial file.
    let Some(mut m) = Mount::try_new() else {
        return;
    };
    m.agent("a");
    let sem = m.mem("a", "semantic");
    let target = sem.join("config.json");
    let versions: Vec<Vec<u8>> = (0..30)
        .map(|v| pattern(500 + v, 3000 + v as usize * 1000))
        .collect();
    for v in &versions {
        let tmp = sem.join(".config.json.tmp");
        write_and_close(&tmp, v, false).unwrap();
        fs::rename(&tmp, &target).unwrap();
    }
    m.kill9();
    m.mount();
    let got = fs::read(&target).expect("target missing after crash");
    assert!(
        versions.contains(&got),
        "after kill -9 the target is not any complete version ({} bytes)",
        got.len()
    );
    assert_same_bytes("target after crash", &got, versions.last().unwrap());
    assert!(
        !sem.join(".config.json.tmp").exists(),
        "temp name resurrected"
    );
}

#[test]
fn orphans_open_at_kill9_are_reclaimed() {
    // A file unlinked while open lives until close; if the daemon dies first, the remount must
    // not resurrect it nor keep counting its bytes.
    let Some(mut m) = Mount::try_new() else {
        return;
    };
    m.agent("a");
    let sem = m.mem("a", "semantic");
    let p = sem.join("orphan");
    let mut f = File::create(&p).unwrap();
    f.write_all(&pattern(9, 2 << 20)).unwrap();
    f.sync_all().unwrap();
    fs::remove_file(&p).unwrap();
    std::mem::forget(f); // still open when the daemon dies
    m.kill9();
    m.mount();
    assert_eq!(fs::read_dir(&sem).unwrap().count(), 0, "orphan resurrected");
    let status = fs::read_to_string(m.mnt.join("sys/agents/a/status")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    let bytes = v["bytes"]["semantic"].as_u64().unwrap_or(u64::MAX);
    assert!(
        bytes < 1 << 20,
        "semantic bytes still count the reclaimed orphan after remount: {bytes}"
    );
}
