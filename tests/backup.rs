//! `agentfs backup`: a copy of a data dir taken while the daemon writes it, and one taken
//! offline after a `kill -9`, must each verify (`agentfs audit verify`) and mount with the
//! content that was there (docs/operations.md#backup).

mod common;

use common::*;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

fn backup(data: &Path, dest: &Path) -> std::process::Output {
    agentfs(&[
        "backup".as_ref(),
        "--json".as_ref(),
        "--data-dir".as_ref(),
        data.as_os_str(),
        dest.as_os_str(),
    ])
}

fn summary(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "agentfs backup failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 1, "one JSON object expected: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Every regular file below `root`, by relative path, with its bytes.
fn files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let md = fs::symlink_metadata(&path).unwrap();
            if md.is_dir() {
                stack.push(path);
            } else if md.is_file() {
                let rel = path.strip_prefix(root).unwrap().display().to_string();
                let bytes = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                out.insert(rel, bytes);
            }
        }
    }
    out
}

/// A second mount of `data` (the backup) at a fresh mountpoint.
fn mount_copy(data: PathBuf) -> Mount {
    let root = fresh_dir("backup-copy");
    let mut m = Mount::unmounted(root.join("mnt"), data, Some(root));
    m.mount();
    m
}

#[test]
fn backup_while_mounted_and_written_mounts_and_verifies() {
    let Some(m) = Mount::try_new() else { return };
    m.agent("a");
    let sem = m.mem("a", "semantic");
    // Several chunks (128 KiB each), small facts, a log and a checkpoint.
    fs::write(sem.join("big"), pattern(7, 3 * 128 * 1024 + 11)).unwrap();
    for i in 0..20 {
        fs::write(sem.join(format!("fact{i}")), format!("fact number {i}\n")).unwrap();
    }
    fs::write(m.mem("a", "episodic").join("log"), "step 1\n").unwrap();
    fs::create_dir(m.mnt.join("a/state/before")).unwrap();
    let before = files(&m.mnt.join("a"));

    // Keep writing (and fsyncing, which moves the audit head) while the backup runs.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = Arc::clone(&stop);
        let dir = sem.join("during");
        fs::create_dir(&dir).unwrap();
        thread::spawn(move || {
            let mut written = BTreeMap::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && i < 5000 {
                let bytes = pattern(i, 1000 + (i as usize * 997) % 200_000);
                let path = dir.join(format!("w{i}"));
                let f = fs::File::create(&path).unwrap();
                std::io::Write::write_all(&mut &f, &bytes).unwrap();
                if i.is_multiple_of(3) {
                    f.sync_all().unwrap();
                }
                close_checked(f).unwrap();
                written.insert(format!("w{i}"), bytes);
                i += 1;
            }
            written
        })
    };
    thread::sleep(std::time::Duration::from_millis(300));
    let dest = fresh_dir("backup-dest").join("copy");
    let out = backup(&m.data, &dest);
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().expect("writer thread");
    let s = summary(&out);
    assert_eq!(s["mode"], "online", "{s}");
    assert!(s["audit"]["entries"].as_u64().unwrap() > 20, "{s}");
    assert!(s["packs"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(s["journal_files"], 0, "{s}");
    assert!(
        !written.is_empty(),
        "the writer wrote nothing during the backup"
    );
    assert!(
        !dest.with_file_name("copy.partial").exists(),
        "staging dir left behind"
    );
    let mut names: Vec<String> = fs::read_dir(&dest)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["agentfs.db", "audit.head", "packs"],
        "{}",
        dest.display()
    );
    // The original is untouched and still serves.
    fs::write(sem.join("after"), "after the backup\n").unwrap();
    assert_audit_verifies(&m.data, "original after the backup");

    assert_audit_verifies(&dest, "the backup, before mounting it");
    let copy = mount_copy(dest.clone());
    let restored = files(&copy.mnt.join("a"));
    for (path, bytes) in &before {
        match restored.get(path) {
            Some(got) => assert_same_bytes(path, got, bytes),
            None => panic!("{path} is missing from the backup"),
        }
    }
    // Files written during the backup: absent, or created but not yet written (the cut fell
    // between the create and the close), or whole. Never torn, never unreadable.
    let mut whole = 0;
    for (name, bytes) in &written {
        if let Some(got) = restored.get(&format!("mem/semantic/during/{name}")) {
            if !got.is_empty() {
                assert_same_bytes(name, got, bytes);
                whole += 1;
            }
        }
    }
    assert!(
        !restored.contains_key("mem/semantic/after"),
        "a file written after the backup is in it"
    );
    eprintln!(
        "backup: {} of {} files written during the backup are in it",
        whole,
        written.len()
    );
    drop(copy);
    assert_audit_verifies(&dest, "the backup, after mounting and unmounting it");
    if let Some(root) = dest.parent() {
        let _ = fs::remove_dir_all(root);
    }
}

/// Whether nobody holds `DATA/agentfs.lock` (a shared lock can be had at once).
fn lock_free(data: &Path) -> bool {
    let Ok(f) = fs::File::open(data.join("agentfs.lock")) else {
        return true;
    };
    // SAFETY: flock on a descriptor `f` keeps open; the lock goes with `f`.
    unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            libc::LOCK_SH | libc::LOCK_NB,
        ) == 0
    }
}

#[test]
fn backup_offline_after_kill9_carries_the_journal() {
    let Some(mut m) = Mount::try_new() else {
        return;
    };
    m.agent("a");
    let sem = m.mem("a", "semantic");
    for i in 0..10 {
        fs::write(sem.join(format!("x{i}")), pattern(i, 50_000)).unwrap();
    }
    let before = files(&m.mnt.join("a/mem"));
    m.kill9();
    // The daemon's last threads may still be exiting (and holding the store's lock) after
    // its main thread is a zombie: wait until the store is free, so the backup is offline.
    assert!(
        wait_until(std::time::Duration::from_secs(20), || lock_free(&m.data)),
        "the store's lock is still held 20 s after kill -9"
    );
    let dest = fresh_dir("backup-offline").join("copy");
    let s = summary(&backup(&m.data, &dest));
    assert_eq!(s["mode"], "offline", "{s}");
    // After a kill -9 the journal was not cleaned away: it must come along.
    assert!(s["journal_files"].as_u64().unwrap() >= 1, "{s}");
    assert_audit_verifies(&dest, "offline backup");
    let copy = mount_copy(dest.clone());
    assert_eq!(files(&copy.mnt.join("a/mem")), before);
    drop(copy);

    // A second backup into the same DEST is refused, and so is a dir without a store.
    let out = backup(&m.data, &dest);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exists already"), "{err}");
    let empty = fresh_dir("backup-empty");
    let out = backup(&empty, &empty.join("copy"));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("holds no agentfs store"), "{err}");
    assert!(!empty.join("copy").exists() && !empty.join("copy.partial").exists());
    // The original mounts again (the backup held its lock only while copying).
    m.mount();
    assert_eq!(files(&m.mnt.join("a/mem")), before);
    for dir in [dest.parent().map(Path::to_path_buf), Some(empty)]
        .into_iter()
        .flatten()
    {
        let _ = fs::remove_dir_all(dir);
    }
}
