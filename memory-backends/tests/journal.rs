//! The SqliteStore's write-ahead journal: kill -9 mid-stream, torn tails, replay, a failing
//! applier, a full disk.

mod common;

use agentfs_memory::*;
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Env var that turns `journal_crash_child` into the child half of the crash tests.
const CHILD_DIR_VAR: &str = "AGENTFS_JOURNAL_CRASH_DIR";
/// With the child's dir: "self" (SIGKILL itself after the last commit) or "wait".
const CHILD_MODE_VAR: &str = "AGENTFS_JOURNAL_CRASH_MODE";
/// Commits the child makes.
const COMMITS: u64 = 1000;

/// Commit `i` of the crash child: a new file with one chunk, its directory entry and an audit
/// entry.
fn file_commit(store: &dyn Store, i: u64) -> Batch {
    let id = store.put_chunk(&chunk_bytes(i)).unwrap();
    let mut rec = inode(100 + i, FileKind::File);
    rec.size = chunk_bytes(i).len() as u64;
    Batch {
        changes: vec![
            Change::PutInode(rec),
            Change::PutDirent {
                parent: 1,
                name: format!("f{i}").into_bytes(),
                ino: 100 + i,
            },
            Change::SetChunks {
                ino: 100 + i,
                chunks: vec![(0, Some(id))],
            },
            Change::Audit(Box::new(audit("create"))),
        ],
    }
}

fn chunk_bytes(i: u64) -> Vec<u8> {
    format!("contents of file {i} ")
        .repeat(1 + (i % 50) as usize)
        .into_bytes()
}

/// Child half of the crash tests: commits `COMMITS` files with `Process`, printing `ACK i` after
/// each commit returns. A no-op when run as an ordinary test.
#[test]
fn journal_crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR_VAR) else {
        return;
    };
    let mode = std::env::var(CHILD_MODE_VAR).unwrap_or_default();
    let store = open_sqlite(Path::new(&dir));
    let mut out = std::io::stdout().lock();
    for i in 0..COMMITS {
        store
            .commit(file_commit(&store, i), Durability::Process)
            .unwrap();
        writeln!(out, "ACK {i}").unwrap();
        out.flush().unwrap();
    }
    if mode == "self" {
        // SAFETY: plain syscalls on our own pid.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Runs the child; with `kill_after`, SIGKILLs it once it acknowledged that commit. Returns the
/// highest acknowledged commit.
fn run_child(dir: &Path, mode: &str, kill_after: Option<u64>) -> Option<u64> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "journal_crash_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_VAR, dir)
        .env(CHILD_MODE_VAR, mode)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut last = None;
    let mut killed = false;
    for line in stdout.lines().map_while(Result::ok) {
        if let Some(i) = line
            .strip_prefix("ACK ")
            .and_then(|n| n.parse::<u64>().ok())
        {
            last = Some(i);
            if !killed && kill_after.is_some_and(|k| i >= k) {
                child.kill().unwrap(); // SIGKILL, while the child goes on committing
                killed = true;
            }
            if i + 1 == COMMITS && mode != "self" && !killed {
                child.kill().unwrap();
                killed = true;
            }
        }
    }
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child must die of SIGKILL: {status}");
    last
}

/// The reopened store holds exactly files 0..k for some k > `acked`: a prefix of the commits
/// that includes every acknowledged one.
fn assert_prefix(dir: &Path, acked: u64) -> u64 {
    let store = open_sqlite(dir);
    let state = store.load().unwrap();
    let k = state.dirents.len() as u64;
    assert!(
        k > acked,
        "commit {acked} was acknowledged but only {k} survived"
    );
    let reference = RamStore::new();
    for i in 0..k {
        reference
            .commit(file_commit(&reference, i), Durability::Process)
            .unwrap();
    }
    assert_same(&state, &reference.load().unwrap());
    for i in 0..k {
        assert_eq!(
            read_all(&store, &ChunkId::of(&chunk_bytes(i))),
            chunk_bytes(i)
        );
    }
    assert_eq!(store.audit_count().unwrap(), k);
    assert!(store.verify_chunks().unwrap().is_empty());
    k
}

#[test]
fn kill_9_mid_stream_keeps_a_prefix_with_every_acknowledged_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let acked = run_child(tmp.path(), "wait", Some(300)).expect("the child acknowledged commits");
    let k = assert_prefix(tmp.path(), acked);
    // A second crash on top of the replayed store, then a clean reopen.
    let store = open_sqlite(tmp.path());
    assert_eq!(store.load().unwrap().dirents.len() as u64, k);
}

#[test]
fn kill_9_right_after_the_last_commit_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let acked = run_child(tmp.path(), "self", None);
    assert_eq!(acked, Some(COMMITS - 1));
    assert_eq!(assert_prefix(tmp.path(), COMMITS - 1), COMMITS);
}

fn meta(i: u32) -> Batch {
    Batch {
        changes: vec![
            Change::SetMeta {
                key: format!("k{i:03}"),
                value: format!("value {i}"),
            },
            Change::Audit(Box::new(audit("setmeta"))),
        ],
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// Commits metas `0..n` that reach only the journal (a simulated crash: the applier is paused,
/// and a paused store applies nothing when dropped either). Returns the segment holding them.
fn unapplied_metas(dir: &Path, n: u32) -> PathBuf {
    let store = open_sqlite(dir);
    store.set_applier_paused(true);
    for i in 0..n {
        store.commit(meta(i), Durability::Process).unwrap();
    }
    assert_eq!(store.applied_lag(), u64::from(n));
    drop(store);
    let segs = segments(dir);
    assert_eq!(segs.len(), 1, "{segs:?}");
    segs.into_iter().next().unwrap()
}

fn meta_keys(store: &SqliteStore) -> Vec<String> {
    store
        .load()
        .unwrap()
        .meta
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

fn keys(range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|i| format!("k{i:03}")).collect()
}

#[test]
fn a_cut_last_record_is_dropped_and_only_it() {
    let tmp = tempfile::tempdir().unwrap();
    let seg = unapplied_metas(tmp.path(), 5);
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let store = open_sqlite(tmp.path());
    assert_eq!(meta_keys(&store), keys(0..4));
    assert_eq!(store.audit_count().unwrap(), 4);
    // The store goes on normally after the repair.
    store.commit(meta(7), Durability::Disk).unwrap();
    drop(store);
    let store = open_sqlite(tmp.path());
    let mut expected = keys(0..4);
    expected.push("k007".into());
    assert_eq!(meta_keys(&store), expected);
}

#[test]
fn garbage_after_the_last_record_is_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let seg = unapplied_metas(tmp.path(), 5);
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&[0xa5; 1000]).unwrap();
    drop(f);
    let store = open_sqlite(tmp.path());
    assert_eq!(meta_keys(&store), keys(0..5));
    assert_eq!(store.audit_count().unwrap(), 5);
}

#[test]
fn a_damaged_record_in_the_middle_drops_it_and_everything_after() {
    // Without fsync, a power loss may keep later pages of the journal and lose earlier ones:
    // what follows a bad record was never durable and must not be replayed past the gap.
    let tmp = tempfile::tempdir().unwrap();
    let seg = unapplied_metas(tmp.path(), 5);
    let mut bytes = std::fs::read(&seg).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&seg, bytes).unwrap();
    let store = open_sqlite(tmp.path());
    let keys_now = meta_keys(&store);
    assert!(keys_now.len() < 5);
    assert_eq!(keys_now, keys(0..keys_now.len() as u32), "a prefix");
}

#[test]
fn replay_is_idempotent() {
    let tmp = tempfile::tempdir().unwrap();
    let seg = unapplied_metas(tmp.path(), 50);
    let saved = std::fs::read(&seg).unwrap();
    let store = open_sqlite(tmp.path());
    assert_eq!(meta_keys(&store), keys(0..50));
    assert_eq!(store.audit_count().unwrap(), 50);
    drop(store);
    // A crash after the replay but before the old segment was deleted: it is read again.
    std::fs::write(&seg, &saved).unwrap();
    let store = open_sqlite(tmp.path());
    assert_eq!(meta_keys(&store), keys(0..50));
    assert_eq!(
        store.audit_count().unwrap(),
        50,
        "audit rows are not duplicated"
    );
    // And commits go on with fresh sequence numbers: a third open replays nothing twice.
    store.commit(meta(60), Durability::Process).unwrap();
    drop(store);
    std::fs::write(&seg, &saved).unwrap();
    let store = open_sqlite(tmp.path());
    assert_eq!(store.audit_count().unwrap(), 51);
}

#[test]
fn unapplied_chunk_rows_are_replayed_and_packs_resume_past_them() {
    let tmp = tempfile::tempdir().unwrap();
    let data = vec![7u8; 5000];
    let id = {
        let store = open_sqlite(tmp.path());
        store.set_applier_paused(true);
        let id = store.put_chunk(&data).unwrap();
        store
            .commit(
                Batch {
                    changes: vec![Change::SetChunks {
                        ino: 2,
                        chunks: vec![(0, Some(id))],
                    }],
                },
                Durability::Disk,
            )
            .unwrap();
        id
    };
    let store = open_sqlite(tmp.path());
    assert_eq!(store.load().unwrap().chunks, vec![(2, 0, id)]);
    assert_eq!(read_all(&store, &id), data);
    assert_eq!(store.chunk_bytes(), 5000);
    // A new chunk lands after the replayed one, not on top of it.
    let other = store.put_chunk(&[1u8; 100]).unwrap();
    assert_eq!(read_all(&store, &id), data);
    assert_eq!(read_all(&store, &other), vec![1u8; 100]);
}

#[test]
fn a_failing_applier_is_reported_then_refuses_commits_then_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_sqlite(tmp.path());
    store.commit(meta(0), Durability::Process).unwrap();
    store.wait_applied().unwrap();
    // Another program holds SQLite's write lock: the applier's transactions fail with BUSY.
    let other = rusqlite::Connection::open(tmp.path().join("agentfs.db")).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    store.commit(meta(1), Durability::Disk).unwrap();
    let err = store.wait_applied().unwrap_err();
    assert!(err.to_string().contains("agentfs.db"), "{err}");
    assert!(store.applier_error().is_some());
    assert_eq!(store.applied_lag(), 1);
    // Within the grace period commits are still accepted (they are in the journal)...
    store.commit(meta(2), Durability::Process).unwrap();
    // ...after it they are refused with the applier's error.
    std::thread::sleep(Duration::from_millis(1100));
    let refused = store.commit(meta(3), Durability::Process).unwrap_err();
    assert!(
        refused.to_string().contains("applying the journal"),
        "{refused}"
    );
    drop(other); // rolls back, releasing the lock
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.wait_applied().is_err() {
        assert!(Instant::now() < deadline, "the applier never recovered");
    }
    assert_eq!(store.applier_error(), None);
    assert_eq!(store.applied_lag(), 0);
    store.commit(meta(4), Durability::Process).unwrap();
    let mut expected = keys(0..3);
    expected.push("k004".into());
    assert_eq!(meta_keys(&store), expected);
    drop(store);
    assert_eq!(meta_keys(&open_sqlite(tmp.path())), expected);
}

/// A tmpfs of a few hundred KiB, unmounted on drop.
struct SmallFs {
    path: PathBuf,
}

impl SmallFs {
    fn mount(path: PathBuf, size: &str) -> Option<SmallFs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        std::fs::create_dir_all(&path).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallFs { path })
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn journal_bytes(dir: &Path) -> u64 {
    segments(dir)
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum()
}

#[test]
fn a_full_disk_is_no_space_and_leaves_nothing_half_appended() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(fs) = SmallFs::mount(tmp.path().join("mnt"), "1M") else {
        eprintln!("skipped: needs root and tmpfs");
        return;
    };
    let dir = fs.path.join("data");
    let filler = fs.path.join("filler");
    std::fs::write(&filler, vec![0u8; 256 << 10]).unwrap();
    let store = open_sqlite(&dir);
    let xattr = |i: u32| Batch {
        changes: vec![Change::SetXattr {
            ino: 2,
            name: format!("user.{i}").into_bytes(),
            value: vec![i as u8; 20_000],
        }],
    };
    let mut acked = 0u32;
    let err = loop {
        let before = journal_bytes(&dir);
        match store.commit(xattr(acked), Durability::Process) {
            Ok(()) => acked += 1,
            Err(e) => {
                assert_eq!(
                    journal_bytes(&dir),
                    before,
                    "a refused commit left bytes behind"
                );
                break e;
            }
        }
        assert!(acked < 1000, "the disk never filled up");
    };
    assert!(err.is_no_space(), "{err}");
    eprintln!(
        "after {acked} commits: {err}; applier: {:?}",
        store.applier_error()
    );
    assert!(acked > 3, "only {acked} commits fit");
    // Space comes back: the store carries on, and nothing acknowledged was lost. The disk
    // grows as well as the filler going: how much of the journal the applier had copied into
    // the database before the disk filled depends on timing, and all of it needs room there.
    std::fs::remove_file(&filler).unwrap();
    let grown = Command::new("mount")
        .args(["-o", "remount,size=16M"])
        .arg(&fs.path)
        .status()
        .unwrap();
    assert!(grown.success(), "could not grow the test's tmpfs");
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = store.wait_applied() {
        assert!(
            Instant::now() < deadline,
            "the applier never recovered: {e}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    store.commit(xattr(acked), Durability::Disk).unwrap();
    drop(store);
    let store = open_sqlite(&dir);
    let xattrs = store.load().unwrap().xattrs;
    assert_eq!(xattrs.len() as u32, acked + 1);
    drop(store);
    drop(fs);
}
