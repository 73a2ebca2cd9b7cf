//! Checkpoints through a real mount (SPEC §7, issue 7): `mkdir state/NAME` is a consistent
//! cut while the agent writes, rollback restores byte-identical content, checkpoints survive
//! remount, a `kill -9` during a rollback leaves the old or the new state, the CLI verbs.
//! Errno rows (e09, e38–e41) are tested in tests/mount.rs.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Every node below `root`: relative path → (type letter, content / symlink target, mode).
fn tree(root: &Path) -> BTreeMap<String, (char, Vec<u8>, u32)> {
    let mut out = BTreeMap::new();
    let mut queue = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = queue.pop() {
        for e in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let e = e.unwrap();
            let p = e.path();
            let md = fs::symlink_metadata(&p).unwrap();
            let rel = format!("{prefix}{}", e.file_name().to_string_lossy());
            let (kind, body) = if md.is_dir() {
                queue.push((p.clone(), format!("{rel}/")));
                ('d', Vec::new())
            } else if md.file_type().is_symlink() {
                (
                    'l',
                    fs::read_link(&p)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                )
            } else {
                ('f', fs::read(&p).unwrap())
            };
            out.insert(rel, (kind, body, md.mode() & 0o7777));
        }
    }
    out
}

fn durable_only(
    mut t: BTreeMap<String, (char, Vec<u8>, u32)>,
) -> BTreeMap<String, (char, Vec<u8>, u32)> {
    t.retain(|k, _| !k.starts_with("working/"));
    t
}

fn snapshot(m: &Mount, agent: &str, name: &str) {
    let p = m.mnt.join(agent).join("state").join(name);
    fs::create_dir(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
}

fn rollback(m: &Mount, agent: &str, name: &str) -> std::io::Result<()> {
    fs::write(
        m.mnt.join("sys/agents").join(agent).join("rollback"),
        format!("{name}\n"),
    )
}

fn populate(m: &Mount) {
    let sem = m.mem("a", "semantic");
    fs::write(m.mem("a", "working").join("scratch"), pattern(1, 10_000)).unwrap();
    fs::write(m.mem("a", "episodic").join("log"), b"day 1\n").unwrap();
    fs::write(sem.join("big"), pattern(2, 3 * 131_072 + 17)).unwrap();
    fs::create_dir_all(sem.join("d/e")).unwrap();
    fs::write(sem.join("d/e/deep"), pattern(3, 5)).unwrap();
    symlink("../big", sem.join("d/ln")).unwrap();
    fs::hard_link(sem.join("big"), sem.join("d/hard")).unwrap();
    fs::write(sem.join("x"), b"x").unwrap();
}

#[test]
fn snapshot_while_a_writer_appends_is_a_consistent_prefix() {
    let Some(m) = Mount::try_new() else { return };
    m.agent("a");
    let first = m.mem("a", "episodic").join("first");
    let second = m.mem("a", "semantic").join("second");
    fs::write(&first, b"").unwrap();
    fs::write(&second, b"").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, first, second) = (stop.clone(), first.clone(), second.clone());
        std::thread::spawn(move || {
            let mut a = OpenOptions::new().append(true).open(&first).unwrap();
            let mut b = OpenOptions::new().append(true).open(&second).unwrap();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Each record is one write; `second` is written after `first`.
                let rec = format!("record {i:08}\n");
                a.write_all(rec.as_bytes()).unwrap();
                b.write_all(rec.as_bytes()).unwrap();
                i += 1;
            }
            i
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    for k in 0..8 {
        snapshot(&m, "a", &format!("c{k}"));
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().unwrap();
    let full = fs::read(&first).unwrap();
    assert_eq!(full.len() as u64, written * 16);
    let mut last = 0;
    for k in 0..8 {
        let ck = m.mnt.join(format!("a/state/c{k}"));
        let a = fs::read(ck.join("episodic/first")).unwrap();
        let b = fs::read(ck.join("semantic/second")).unwrap();
        assert_eq!(a.len() % 16, 0, "c{k}: a torn record");
        assert_same_bytes(&format!("c{k} first"), &a, &full[..a.len()]);
        assert_same_bytes(&format!("c{k} second"), &b, &full[..b.len()]);
        // The cut: `second` lags `first` by at most the record being written between them.
        assert!(
            a.len() == b.len() || a.len() == b.len() + 16,
            "c{k}: first {} bytes, second {} bytes",
            a.len(),
            b.len()
        );
        assert!(a.len() >= last, "checkpoints go forward");
        last = a.len();
    }
    assert!(
        last > 0,
        "the writer wrote nothing before the last snapshot"
    );
}

#[test]
fn rollback_restores_byte_identical_content() {
    let Some(m) = Mount::try_new() else { return };
    m.agent("a");
    populate(&m);
    let mem = m.mnt.join("a/mem");
    let before = tree(&mem);
    snapshot(&m, "a", "good");
    assert_eq!(tree(&m.mnt.join("a/state/good")), before);
    let st = fs::metadata(m.mnt.join("a/state/good")).unwrap();
    assert!(st.mtime() > 0 && st.mode() & 0o777 == 0o555);
    // A hard-linked file stays one file with two names in the checkpoint.
    let good = m.mnt.join("a/state/good/semantic");
    let (big, hard) = (
        fs::metadata(good.join("big")).unwrap(),
        fs::metadata(good.join("d/hard")).unwrap(),
    );
    assert_eq!((big.ino(), big.nlink()), (hard.ino(), 2));

    let sem = m.mem("a", "semantic");
    fs::remove_file(sem.join("d/e/deep")).unwrap();
    fs::rename(sem.join("x"), sem.join("y")).unwrap();
    fs::create_dir(sem.join("new")).unwrap();
    symlink("/etc/passwd", sem.join("new/s")).unwrap();
    fs::write(sem.join("big"), b"overwritten").unwrap();
    OpenOptions::new()
        .append(true)
        .open(m.mem("a", "episodic").join("log"))
        .unwrap()
        .write_all(b"day 2\n")
        .unwrap();
    fs::write(m.mem("a", "working").join("scratch"), b"changed").unwrap();
    fs::set_permissions(
        sem.join("d"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    // Stat the new names so the kernel caches them: the rollback must drop them.
    assert!(sem.join("y").exists() && sem.join("new/s").symlink_metadata().is_ok());
    assert_ne!(tree(&mem), before);

    // An open handle on a file the rollback replaces.
    let mut old = OpenOptions::new()
        .read(true)
        .write(true)
        .open(sem.join("y"))
        .unwrap();

    rollback(&m, "a", "good").unwrap();
    // At once, not after the kernel's 1 s cache time: names are invalidated.
    assert!(
        !sem.join("y").exists(),
        "y still visible right after the rollback"
    );
    assert_eq!(fs::read(sem.join("x")).unwrap(), b"x");
    assert_eq!(tree(&mem), before);

    // The old handle reads and writes its orphaned file, never the restored tree.
    let mut got = String::new();
    old.read_to_string(&mut got).unwrap();
    assert_eq!(got, "x");
    old.seek(SeekFrom::Start(0)).unwrap();
    old.write_all(b"LATE").unwrap();
    drop(old);
    assert_eq!(tree(&mem), before);
    assert_eq!(
        fs::read_to_string(m.mnt.join("sys/agents/a/rollback"))
            .unwrap()
            .split(' ')
            .next(),
        Some("good")
    );

    // Checkpoints and the rolled-back state survive a remount (working memory does not).
    let mut m = m;
    m.remount();
    assert_eq!(durable_only(tree(&mem)), durable_only(before.clone()));
    assert_eq!(tree(&m.mnt.join("a/state/good")), before);

    // The flight record has the snapshot and the rollback (the remount applied the journal).
    let db = rusqlite::Connection::open_with_flags(
        m.data.join("agentfs.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let count = |op: &str| -> i64 {
        db.query_row(
            "SELECT count(*) FROM audit WHERE agent = 'a' AND op = ?1 AND result = 0",
            [op],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(count("snapshot"), 1);
    assert_eq!(count("rollback"), 1);
    drop(db);

    rollback(&m, "a", "good").unwrap();
    assert_eq!(tree(&mem), before);
}

/// The xattr `name` of `p`, if set.
fn xattr_of(p: &Path, name: &str) -> Option<Vec<u8>> {
    let (c, k) = (cstr(p), cstr(name));
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings and a buffer of the length given.
    let n = unsafe { libc::getxattr(c.as_ptr(), k.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (n >= 0).then(|| {
        buf.truncate(n as usize);
        buf
    })
}

/// Every node below `root` with what `stat` tells of it: relative path → (inode number,
/// mode, links, owner, size, mtime and ctime in ns, content or target, the xattr `user.k`).
type Stats = BTreeMap<
    String,
    (
        u64,
        u32,
        u64,
        (u32, u32),
        u64,
        (i64, i64),
        Vec<u8>,
        Option<Vec<u8>>,
    ),
>;

fn stats(root: &Path) -> Stats {
    tree(root)
        .into_iter()
        .map(|(rel, (_, body, _))| {
            let p = root.join(&rel);
            let md = fs::symlink_metadata(&p).unwrap();
            let times = (
                md.mtime() * 1_000_000_000 + md.mtime_nsec(),
                md.ctime() * 1_000_000_000 + md.ctime_nsec(),
            );
            let xattr = if md.file_type().is_symlink() {
                None
            } else {
                xattr_of(&p, "user.k")
            };
            let owner = (md.uid(), md.gid());
            let entry = (
                md.ino(),
                md.mode(),
                md.nlink(),
                owner,
                md.size(),
                times,
                body,
                xattr,
            );
            (rel, entry)
        })
        .collect()
}

/// A checkpoint is the same after `kill -9` and a new mount, down to inode numbers, links and
/// times: the store copies the rows of the nodes it holds (`CopyNodes`) when it applies or
/// replays the snapshot's record, and the record writes out what it does not hold yet (a file
/// open with unsaved writes, working memory).
#[test]
fn a_checkpoint_is_the_same_after_kill9() {
    let Some(mut m) = Mount::try_new() else {
        return;
    };
    m.agent("a");
    populate(&m);
    let sem = m.mem("a", "semantic");
    fs::write(sem.join("d/e/attrs"), b"with an xattr").unwrap();
    let (c, k, v) = (cstr(sem.join("d/e/attrs")), cstr("user.k"), b"value");
    // SAFETY: valid C strings and a value of the length given.
    let set = unsafe { libc::setxattr(c.as_ptr(), k.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
    assert_eq!(set, 0, "{}", std::io::Error::last_os_error());
    let mut open = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(sem.join("open"))
        .unwrap();
    open.write_all(b"written, not closed").unwrap();
    snapshot(&m, "a", "c");
    drop(open);
    let ck = m.mnt.join("a/state/c");
    let before = stats(&ck);
    assert_eq!(before["semantic/open"].6, b"written, not closed");
    assert_eq!(before["semantic/d/e/attrs"].7.as_deref(), Some(&v[..]));
    assert_eq!(before["semantic/big"].0, before["semantic/d/hard"].0);
    assert_eq!(before["semantic/big"].2, 2);
    m.kill9();
    m.mount();
    assert_eq!(stats(&ck), before);
}

#[test]
fn rollback_replaces_only_what_changed() {
    let Some(m) = Mount::try_new() else { return };
    m.agent("a");
    let sem = m.mem("a", "semantic");
    fs::create_dir_all(sem.join("dir/sub")).unwrap();
    fs::write(sem.join("keep"), b"kept").unwrap();
    fs::write(sem.join("change"), b"before").unwrap();
    fs::write(sem.join("dir/sub/inner"), pattern(4, 200_000)).unwrap();
    fs::create_dir(sem.join("was_dir")).unwrap();
    fs::write(sem.join("was_dir/f"), b"f").unwrap();
    fs::write(sem.join("was_file"), b"file").unwrap();
    fs::write(sem.join("h1"), b"linked").unwrap();
    fs::hard_link(sem.join("h1"), sem.join("dir/h2")).unwrap();
    let before = tree(&m.mnt.join("a/mem"));
    let ino = |p: &str| fs::symlink_metadata(sem.join(p)).unwrap().ino();
    let (keep, dir, inner) = (ino("keep"), ino("dir"), ino("dir/sub/inner"));
    let change_mtime = fs::metadata(sem.join("change")).unwrap().mtime_nsec();
    snapshot(&m, "a", "c");

    fs::write(sem.join("change"), b"after!").unwrap();
    fs::set_permissions(
        sem.join("dir"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let (c, k) = (cstr(sem.join("dir")), cstr("user.note"));
    // SAFETY: valid C strings and value.
    check(unsafe { libc::setxattr(c.as_ptr(), k.as_ptr(), b"x".as_ptr().cast(), 1, 0) }).unwrap();
    fs::remove_dir_all(sem.join("was_dir")).unwrap();
    fs::write(sem.join("was_dir"), b"now a file").unwrap();
    fs::remove_file(sem.join("was_file")).unwrap();
    fs::create_dir(sem.join("was_file")).unwrap();
    fs::write(sem.join("h1"), b"relinked").unwrap();
    fs::write(sem.join("dir/sub/extra"), b"extra").unwrap();
    let mut open_keep = fs::File::open(sem.join("keep")).unwrap();

    rollback(&m, "a", "c").unwrap();
    assert_eq!(tree(&m.mnt.join("a/mem")), before);
    // What did not change keeps its inode; what changed is a new one.
    assert_eq!(ino("keep"), keep);
    assert_eq!(ino("dir"), dir);
    assert_eq!(ino("dir/sub/inner"), inner);
    assert_ne!(ino("change"), 0);
    assert_eq!(fs::read(sem.join("change")).unwrap(), b"before");
    assert_eq!(
        fs::metadata(sem.join("change")).unwrap().mtime_nsec(),
        change_mtime
    );
    // A kept directory takes the checkpoint's mode and xattrs back.
    let md = fs::metadata(sem.join("dir")).unwrap();
    assert_eq!(md.mode() & 0o777, 0o755);
    assert_eq!(xattr_of(&sem.join("dir"), "user.note"), None);
    assert!(!sem.join("dir/sub/extra").exists());
    // Hard links stay one inode.
    assert_eq!(ino("h1"), ino("dir/h2"));
    assert_eq!(fs::metadata(sem.join("h1")).unwrap().nlink(), 2);
    assert_eq!(fs::read(sem.join("dir/h2")).unwrap(), b"linked");
    // A handle on a kept file goes on reading it.
    let mut got = String::new();
    open_keep.read_to_string(&mut got).unwrap();
    assert_eq!(got, "kept");
    // The audit entry says what was kept (it reaches sys/audit a few milliseconds after the
    // commit: the store's applier).
    let rollback_entry = || {
        fs::read_to_string(m.mnt.join("sys/agents/a/audit"))
            .unwrap()
            .lines()
            .rev()
            .find(|l| l.contains("\"op\":\"rollback\""))
            .map(str::to_string)
    };
    assert!(wait_until(Duration::from_secs(10), || rollback_entry().is_some()));
    let entry = rollback_entry().expect("the rollback's audit entry");
    assert!(entry.contains(" kept,"), "{entry}");
    // And once more from the restored state: nothing to do, everything kept.
    let all = ino("change");
    rollback(&m, "a", "c").unwrap();
    assert_eq!(ino("change"), all);
    assert_eq!(tree(&m.mnt.join("a/mem")), before);
}

#[test]
fn checkpoint_count_does_not_grow_the_store_with_bytes() {
    let Some(m) = Mount::try_new() else { return };
    m.agent("a");
    let sem = m.mem("a", "semantic");
    for i in 0..20 {
        fs::write(sem.join(format!("f{i}")), pattern(i, 1 << 20)).unwrap();
    }
    let packs = |m: &Mount| -> u64 {
        fs::read_dir(m.data.join("packs"))
            .map(|d| {
                d.filter_map(|e| e.ok()?.metadata().ok())
                    .map(|md| md.len())
                    .sum()
            })
            .unwrap_or(0)
    };
    let before = packs(&m);
    for k in 0..5 {
        snapshot(&m, "a", &format!("c{k}"));
    }
    assert_eq!(
        packs(&m),
        before,
        "a checkpoint of durable memory wrote chunk bytes"
    );
}

#[test]
fn kill9_during_a_rollback_leaves_old_or_new_state() {
    let Some(mut m) = Mount::try_new_with_budget(300) else {
        return;
    };
    m.agent("a");
    let sem = m.mem("a", "semantic");
    let n = 1500;
    for i in 0..n {
        fs::write(sem.join(format!("a{i}")), format!("A {i}")).unwrap();
    }
    snapshot(&m, "a", "A");
    let tree_a = tree(&sem);
    for i in 0..n {
        fs::remove_file(sem.join(format!("a{i}"))).unwrap();
        fs::write(sem.join(format!("b{i}")), format!("B {i}")).unwrap();
    }
    snapshot(&m, "a", "B");
    let tree_b = tree(&sem);
    let mut live_is_b = true;
    let mut seen_change = false;
    for (round, delay) in [0u64, 10, 20, 40, 60, 90, 130, 200, 300]
        .into_iter()
        .enumerate()
    {
        let target = if live_is_b { "A" } else { "B" };
        let ctl = m.mnt.join("sys/agents/a/rollback");
        let t = std::thread::spawn(move || fs::write(ctl, format!("{target}\n")).is_ok());
        std::thread::sleep(Duration::from_millis(delay));
        m.kill9();
        let _ = t.join();
        m.mount();
        let now = tree(&sem);
        eprintln!(
            "round {round}: rolled back to {target}, killed after {} ms: {}",
            delay,
            if now == tree_a {
                "A"
            } else if now == tree_b {
                "B"
            } else {
                "a mix"
            }
        );
        if now == tree_a {
            seen_change |= live_is_b;
            live_is_b = false;
        } else if now == tree_b {
            seen_change |= !live_is_b;
            live_is_b = true;
        } else {
            panic!(
                "round {round}: a mix after kill -9 during a rollback ({} entries)",
                now.len()
            );
        }
        assert_eq!(tree(&m.mnt.join("a/state/A/semantic")), tree_a);
    }
    // A last rollback that completes, so the loop tested at least one real switch.
    if !seen_change {
        rollback(&m, "a", if live_is_b { "A" } else { "B" }).unwrap();
    }
    m.remount();
    let now = tree(&sem);
    assert!(now == tree_a || now == tree_b);
}

#[test]
fn cli_snapshot_rollback_diff() {
    let Some(m) = Mount::try_new() else { return };
    m.agent("a");
    populate(&m);
    let mnt = m.mnt.as_os_str();
    let run = |args: &[&str]| {
        let mut all: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
        all.push("--mount".as_ref());
        all.push(mnt);
        agentfs(&all)
    };
    let out = run(&["snapshot", "a", "one"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(m.mnt.join("a/state/one/semantic/big").is_file());
    let out = run(&["snapshot", "a", "one"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("exists already"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = run(&["diff", "a", "one"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");

    let sem = m.mem("a", "semantic");
    fs::remove_file(sem.join("x")).unwrap();
    fs::write(sem.join("added"), b"new").unwrap();
    fs::write(sem.join("d/e/deep"), pattern(4, 5)).unwrap(); // same size, new bytes
    fs::remove_file(sem.join("d/ln")).unwrap();
    fs::create_dir(sem.join("d/ln")).unwrap(); // symlink → directory
    let out = run(&["diff", "a", "one"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "A\tsemantic/added\nM\tsemantic/d/e/deep\nT\tsemantic/d/ln\nD\tsemantic/x\n"
    );
    let out = run(&["diff", "a", "one", "--json"]);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert!(lines
        .iter()
        .any(|v| v["status"] == "A" && v["path"] == "semantic/added"));

    let out = run(&["snapshot", "a", "two"]);
    assert!(out.status.success());
    let out = run(&["diff", "a", "one", "two"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 4);

    let out = run(&["rollback", "a", "one"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["diff", "a", "one"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    let out = run(&["rollback", "a", "nope"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no checkpoint `nope`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["diff", "a", "nope"]);
    assert!(!out.status.success());
}

/// A rollback of a STOPped agent with a parked call (which holds its directory's lock in the
/// kernel) returns at once; the parked call runs after CONT against the restored tree.
#[test]
fn rollback_of_a_stopped_agent_with_parked_calls() {
    let Some(m) = Mount::try_new() else { return };
    m.agent("a");
    let sem = m.mem("a", "semantic");
    fs::write(sem.join("f"), b"v1").unwrap();
    snapshot(&m, "a", "c");
    fs::write(sem.join("f"), b"v2").unwrap();
    let signal = m.mnt.join("sys/agents/a/signal");
    fs::write(&signal, "STOP").unwrap();
    // A snapshot of a stopped agent is not parked.
    snapshot(&m, "a", "while-stopped");
    let (tx, rx) = std::sync::mpsc::channel();
    let g = sem.join("g");
    std::thread::spawn(move || {
        let _ = tx.send(fs::write(g, b"parked"));
    });
    std::thread::sleep(Duration::from_millis(200));
    assert!(rx.try_recv().is_err(), "the create was not parked");
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let ctl = m.mnt.join("sys/agents/a/rollback");
    std::thread::spawn(move || {
        let _ = done_tx.send(fs::write(ctl, "c\n"));
    });
    done_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("rollback of a stopped agent hung")
        .expect("rollback of a stopped agent");
    fs::write(&signal, "CONT").unwrap();
    rx.recv_timeout(Duration::from_secs(10))
        .expect("parked create never ran")
        .expect("parked create failed");
    // A stopped agent's names are left to the kernel's 1 s cache time (docs/checkpoints.md).
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(fs::read(sem.join("f")).unwrap(), b"v1");
    assert_eq!(fs::read(sem.join("g")).unwrap(), b"parked");
    assert_eq!(
        fs::read(m.mnt.join("a/state/while-stopped/semantic/f")).unwrap(),
        b"v2"
    );
}

/// Recovery of a killed agent: KILL, rollback, START.
#[test]
fn kill_rollback_start_recovers_an_agent() {
    let Some(m) = Mount::try_new() else { return };
    m.agent("a");
    let sem = m.mem("a", "semantic");
    fs::write(sem.join("f"), b"good").unwrap();
    fs::write(m.mem("a", "working").join("w"), b"scratch").unwrap();
    snapshot(&m, "a", "good");
    fs::write(sem.join("f"), b"bad").unwrap();
    let signal = m.mnt.join("sys/agents/a/signal");
    fs::write(&signal, "KILL").unwrap();
    assert!(
        !m.mem("a", "working").join("w").exists(),
        "KILL keeps working memory"
    );
    assert_errno(
        "write while killed",
        fs::write(sem.join("f"), b"x"),
        libc::EPERM,
    );
    rollback(&m, "a", "good").unwrap();
    fs::write(&signal, "START").unwrap();
    assert_eq!(fs::read(sem.join("f")).unwrap(), b"good");
    assert_eq!(
        fs::read(m.mem("a", "working").join("w")).unwrap(),
        b"scratch"
    );
    fs::write(sem.join("f"), b"alive again").unwrap();
}
