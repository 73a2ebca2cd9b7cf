//! The flight recorder through the real binary: `agentfs audit verify` on a chain written by a
//! real mount (clean, while mounted, and after each kind of tampering), `agentfs audit tail`,
//! and the virtual files `sys/audit` and `sys/agents/AGENT/audit`.

mod common;

use agentfs_memory::audit::entry_hash;
use agentfs_memory::{AuditEntry, AuditLog};
use common::*;
use rusqlite::{params, Connection};
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Some real work through the mount: creates, appends, renames, unlinks, mkdir, symlink,
/// truncate, chmod.
fn work(m: &Mount, agent: &str, n: usize) {
    m.agent(agent);
    let w = m.mem(agent, "working");
    let s = m.mem(agent, "semantic");
    for i in 0..n {
        fs::write(w.join(format!("f{i}")), format!("hello {i}\n")).unwrap();
        fs::write(s.join(format!("fact{i}")), format!("fact {i}\n")).unwrap();
    }
    fs::rename(w.join("f0"), w.join("renamed")).unwrap();
    fs::remove_file(w.join("f1")).unwrap();
    fs::create_dir(w.join("d")).unwrap();
    std::os::unix::fs::symlink("renamed", w.join("link")).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(s.join("fact2"))
        .unwrap()
        .set_len(2)
        .unwrap();
    fs::set_permissions(s.join("fact3"), fs::Permissions::from_mode(0o600)).unwrap();
}

fn verify(data: &Path) -> std::process::Output {
    agentfs(&[
        "audit".as_ref(),
        "verify".as_ref(),
        "--data-dir".as_ref(),
        data.as_os_str(),
    ])
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_verifies(data: &Path) -> String {
    let out = verify(data);
    assert!(
        out.status.success(),
        "audit verify failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs verify on a tampered copy and checks it names `seq` and `kind`.
fn assert_broken(data: &Path, seq: u64, kind: &str) {
    let out = verify(data);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "verify should fail: {err}");
    let want = format!("entry {seq} ({kind})");
    assert!(err.contains(&want), "want {want:?} in: {err}");
    // Checked: the tampered copy is not needed for inspection.
    let _ = fs::remove_dir_all(data);
}

/// A copy of a (cleanly closed) data dir, to tamper with.
fn copy_of(data: &Path, tag: &str) -> PathBuf {
    let dst = fresh_dir(tag);
    let status = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", data.display()))
        .arg(&dst)
        .status()
        .unwrap();
    assert!(status.success());
    // The lock file names the old daemon's pid; no one holds it.
    dst
}

/// Reads lines of `stdout` on a helper thread until one contains `needle`; false when none
/// did within `limit` (the caller then kills the child, which ends the helper).
fn line_appears(stdout: std::process::ChildStdout, needle: &str, limit: Duration) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    let needle = needle.to_string();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if line.contains(&needle) {
                let _ = tx.send(());
                return;
            }
        }
    });
    rx.recv_timeout(limit).is_ok()
}

fn db(dir: &Path) -> Connection {
    Connection::open(dir.join("agentfs.db")).unwrap()
}

fn count(dir: &Path) -> u64 {
    AuditLog::open(dir).unwrap().last_seq().unwrap()
}

#[test]
fn verify_passes_mounted_and_offline_and_names_each_tampering() {
    let Some(mut m) = Mount::try_new() else {
        return;
    };
    work(&m, "a", 10);
    // While mounted: the database is shared with the daemon (WAL readers).
    assert_verifies(&m.data);
    m.unmount();
    let text = assert_verifies(&m.data);
    assert!(text.contains("audit chain ok"), "{text}");
    let n = count(&m.data);
    assert!(n >= 30, "only {n} entries for the work done");

    // Alter one byte of an entry's path.
    let d = copy_of(&m.data, "audit-alter");
    let k = n / 2;
    let changed = db(&d)
        .execute(
            "UPDATE audit SET path = char(unicode(path) + 1) || substr(path, 2) WHERE seq = ?1",
            [k as i64],
        )
        .unwrap();
    assert_eq!(changed, 1);
    assert_broken(&d, k, "altered");

    // Delete one row.
    let d = copy_of(&m.data, "audit-drop");
    db(&d)
        .execute("DELETE FROM audit WHERE seq = ?1", [k as i64])
        .unwrap();
    assert_broken(&d, k, "dropped");

    // Swap two rows.
    let d = copy_of(&m.data, "audit-swap");
    db(&d)
        .execute_batch(&format!(
            "UPDATE audit SET seq = -1 WHERE seq = {k}; \
             UPDATE audit SET seq = {k} WHERE seq = {}; \
             UPDATE audit SET seq = {} WHERE seq = -1;",
            k + 3,
            k + 3
        ))
        .unwrap();
    assert_broken(&d, k, "reordered");

    // Insert a forged row, properly chained to the one before it, renumbering the rest.
    let d = copy_of(&m.data, "audit-insert");
    let prev = AuditLog::open(&d).unwrap().after(k - 1, None, 1).unwrap()[0].hash;
    let forged = AuditEntry {
        time: 1,
        agent: "a".into(),
        op: "unlink".into(),
        path: "a/mem/semantic/alibi".into(),
        ..AuditEntry::default()
    };
    let hash = entry_hash(&prev, k, &forged);
    let c = db(&d);
    c.execute_batch(&format!(
        "UPDATE audit SET seq = -seq WHERE seq >= {k}; \
         UPDATE audit SET seq = 1 - seq WHERE seq < 0;"
    ))
    .unwrap();
    c.execute(
        "INSERT INTO audit(seq, time, agent, pid, uid, op, path, result, size, prev_hash, hash) \
         VALUES (?1, ?2, ?3, 0, 0, ?4, ?5, 0, 0, ?6, ?7)",
        params![
            k as i64,
            forged.time,
            forged.agent,
            forged.op,
            forged.path,
            &prev[..],
            &hash[..]
        ],
    )
    .unwrap();
    drop(c);
    assert_broken(&d, k, "inserted");

    // Truncate the last 10 rows.
    let d = copy_of(&m.data, "audit-truncate");
    db(&d)
        .execute("DELETE FROM audit WHERE seq > ?1", [(n - 10) as i64])
        .unwrap();
    // The daemon refuses to mount it rather than pin the cut chain.
    let cut_mnt = fresh_dir("audit-cut-mnt");
    let mut cut = Mount::unmounted(cut_mnt.clone(), d.clone(), None);
    let out = run_with_timeout(&mut cut.mount_command(), CMD_TIMEOUT).unwrap();
    if is_mounted(&cut.mnt) {
        cut.mark_mounted();
    }
    assert!(
        !out.status.success(),
        "mounting a truncated chain must fail"
    );
    assert!(stderr(&out).contains("audit.head"), "{}", stderr(&out));
    drop(cut);
    let _ = fs::remove_dir_all(&cut_mnt);
    assert_broken(&d, n - 9, "truncated");

    // The original still verifies, and a remount continues its chain.
    m.mount();
    fs::write(m.mem("a", "working").join("after"), b"x").unwrap();
    m.unmount();
    assert_verifies(&m.data);
    assert!(count(&m.data) > n);
}

#[test]
fn tail_prints_json_lines_and_follows() {
    let Some(mut m) = Mount::try_new() else {
        return;
    };
    work(&m, "a", 4);
    work(&m, "b", 4);
    // Not a terminal: JSON lines. Entries reach the database a few milliseconds after the
    // calls returned: wait for the last one (b's chmod of fact3).
    let tail_all = || {
        agentfs(&[
            "audit".as_ref(),
            "tail".as_ref(),
            "-n".as_ref(),
            "1000".as_ref(),
            "--data-dir".as_ref(),
            m.data.as_os_str(),
        ])
    };
    let last_op = |out: &std::process::Output| {
        String::from_utf8_lossy(&out.stdout).lines().any(|l| {
            l.contains("\"path\":\"b/mem/semantic/fact3\"")
                && !l.contains("\"op\":\"create\"")
                && !l.contains("\"op\":\"write\"")
        })
    };
    assert!(
        wait_until(Duration::from_secs(5), || last_op(&tail_all())),
        "{}",
        String::from_utf8_lossy(&tail_all().stdout)
    );
    let out = tail_all();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(lines.len() >= 20, "{text}");
    let mut prev = 0;
    for v in &lines {
        let seq = v["seq"].as_u64().unwrap();
        assert!(seq > prev);
        prev = seq;
        assert_eq!(v["hash"].as_str().unwrap().len(), 64);
    }
    assert!(lines
        .iter()
        .any(|v| v["op"] == "rename" && v["path"] == "a/mem/working/f0"));
    // --agent filters, -n limits.
    let out = agentfs(&[
        "audit".as_ref(),
        "tail".as_ref(),
        "--agent".as_ref(),
        "b".as_ref(),
        "-n".as_ref(),
        "3".as_ref(),
        "--data-dir".as_ref(),
        m.data.as_os_str(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    let agents: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["agent"].to_string())
        .collect();
    assert_eq!(agents, vec!["\"b\""; 3], "{text}");

    // -f: a new entry shows up while it runs.
    let mut child = Command::new(bin())
        .args([
            "audit",
            "tail",
            "-f",
            "-n",
            "0",
            "--agent",
            "a",
            "--data-dir",
        ])
        .arg(&m.data)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    fs::write(m.mem("a", "working").join("followed"), b"x").unwrap();
    let got = line_appears(stdout, "a/mem/working/followed", Duration::from_secs(20));
    let _ = child.kill();
    let _ = child.wait();
    assert!(got, "audit tail -f did not show the new entry");
    m.unmount();
}

fn read_all(p: &Path) -> String {
    let mut s = String::new();
    fs::File::open(p)
        .unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
        .read_to_string(&mut s)
        .unwrap();
    s
}

#[test]
fn sys_audit_files_are_json_lines_that_grow() {
    let Some(mut m) = Mount::try_new() else {
        return;
    };
    work(&m, "a", 4);
    work(&m, "b", 4);
    let all_path = m.mnt.join("sys/audit");
    let a_path = m.mnt.join("sys/agents/a/audit");
    // Entries reach the database a few milliseconds after the call returned.
    assert!(wait_until(Duration::from_secs(5), || read_all(&a_path)
        .contains("a/mem/semantic/fact3")));
    let all = read_all(&all_path);
    let parsed: Vec<serde_json::Value> = all
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(parsed.iter().any(|v| v["agent"] == "a"));
    assert!(parsed.iter().any(|v| v["agent"] == "b"));
    let a = read_all(&a_path);
    assert!(!a.is_empty());
    for l in a.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["agent"], "a", "{l}");
    }
    // Its size is the length of its content, and grows with new entries (what tail -f needs).
    let before = fs::metadata(&a_path).unwrap().len();
    assert_eq!(before, a.len() as u64);
    fs::write(m.mem("a", "working").join("grow"), b"x").unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || fs::metadata(&a_path)
            .map(|md| md.len() > before)
            .unwrap_or(false)),
        "sys/agents/a/audit did not grow"
    );
    // tail -f sees the new entry.
    let mut child = Command::new("tail")
        .arg("-f")
        .arg("-n")
        .arg("1")
        .arg(&a_path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    fs::write(m.mem("a", "working").join("tailed"), b"x").unwrap();
    let got = line_appears(stdout, "a/mem/working/tailed", Duration::from_secs(20));
    let _ = child.kill();
    let _ = child.wait();
    assert!(got, "tail -f sys/agents/a/audit missed the entry");
    m.unmount();
}

#[test]
fn kill9_during_a_write_storm_leaves_a_chain_that_verifies() {
    let Some(mut m) = Mount::try_new_with_budget(300) else {
        return;
    };
    m.agent("a");
    let dir = m.mem("a", "semantic");
    let synced = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (s2, p2, d2) = (synced.clone(), progress.clone(), dir.clone());
    let writer = std::thread::spawn(move || {
        // Runs until the daemon dies under it.
        for i in 0u64.. {
            let name = format!("s{i:05}");
            let r = fs::File::create(d2.join(&name)).and_then(|mut f| {
                use std::io::Write;
                f.write_all(&pattern(i, 1 + (i as usize * 7919) % 20_000))?;
                f.sync_all()
            });
            if r.is_err() {
                return;
            }
            s2.lock().unwrap().push(format!("a/mem/semantic/{name}"));
            p2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    assert!(
        wait_until(Duration::from_secs(120), || progress
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 200
            || writer.is_finished()),
        "the writer made no progress"
    );
    assert!(!writer.is_finished(), "the writer stopped before the kill");
    m.kill9_keep_stale();
    assert!(wait_until(Duration::from_secs(30), || writer.is_finished()));
    writer.join().unwrap();
    detach(&m.mnt).unwrap();
    m.mark_unmounted();
    // The chain verifies before the remount (offline), and after it.
    assert_verifies(&m.data);
    m.mount();
    assert_verifies(&m.data);
    m.unmount();
    assert_verifies(&m.data);
    // Every file whose fsync returned is described by an entry.
    let recs = AuditLog::open(&m.data)
        .unwrap()
        .after(0, Some("a"), usize::MAX)
        .unwrap();
    let created: std::collections::HashSet<&str> = recs
        .iter()
        .filter(|r| r.entry.op == "create")
        .map(|r| r.entry.path.as_str())
        .collect();
    let synced = synced.lock().unwrap();
    assert!(synced.len() >= 200);
    for p in synced.iter() {
        assert!(
            created.contains(p.as_str()),
            "no create entry for fsync'd {p}"
        );
    }
}

/// `agentfs audit export --until SEQ FILE` writes a verifiable prefix of the chain; `verify
/// --file` checks it without the database and names a tampered entry.
#[test]
fn export_writes_a_prefix_that_verifies_elsewhere() {
    let Some(mut m) = Mount::try_new() else {
        return;
    };
    work(&m, "a", 5);
    m.unmount();
    let n = count(&m.data);
    let until = n - 3;
    let dir = fresh_dir("audit-export");
    let file = dir.join("audit.jsonl");
    let export = |until: u64, file: &Path| {
        agentfs(&[
            "audit".as_ref(),
            "export".as_ref(),
            "--until".as_ref(),
            until.to_string().as_ref(),
            file.as_os_str(),
            "--data-dir".as_ref(),
            m.data.as_os_str(),
        ])
    };
    let verify_file = |file: &Path| {
        agentfs(&[
            "audit".as_ref(),
            "verify".as_ref(),
            "--file".as_ref(),
            file.as_os_str(),
        ])
    };
    let out = export(until, &file);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len() as u64, until);
    // The lines are the database's entries, as `sys/audit` and `tail` print them.
    let log = AuditLog::open(&m.data).unwrap();
    let stored = log.after(0, None, until as usize).unwrap();
    for (line, rec) in lines.iter().zip(&stored) {
        assert_eq!(*line, rec.to_json());
    }
    let out = verify_file(&file);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains(&format!("entries 1..={until}")), "{said}");

    // An existing file is never overwritten; SEQ must exist.
    assert_eq!(export(until, &file).status.code(), Some(1));
    let out = export(n + 1, &dir.join("too-far.jsonl"));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("1..={n}")),
        "{}",
        stderr(&out)
    );
    assert!(!dir.join("too-far.jsonl").exists());

    // Tamper with one entry's path in the export: verify names it.
    let k = until / 2;
    let tampered: String = lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            if i as u64 + 1 == k {
                l.replacen("\"path\":\"a", "\"path\":\"b", 1)
            } else {
                l.to_string()
            }
        })
        .map(|l| l + "\n")
        .collect();
    assert_ne!(tampered, text);
    let bad = dir.join("tampered.jsonl");
    fs::write(&bad, tampered).unwrap();
    let out = verify_file(&bad);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("entry {k}")),
        "{}",
        stderr(&out)
    );
    // A dropped line breaks the chain at the entry after it.
    let dropped: String = lines
        .iter()
        .enumerate()
        .filter(|(i, _)| *i as u64 + 1 != k)
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    fs::write(&bad, dropped).unwrap();
    let out = verify_file(&bad);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("entry {}", k + 1)),
        "{}",
        stderr(&out)
    );

    // A database altered behind agentfs's back is not exported: the same check as verify.
    {
        let db = rusqlite::Connection::open(m.data.join("agentfs.db")).unwrap();
        db.execute(
            "UPDATE audit SET path = 'forged' WHERE seq = ?1",
            [k as i64],
        )
        .unwrap();
    }
    let refused = dir.join("from-altered-db.jsonl");
    let out = export(until, &refused);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("audit chain broken at entry {k}")),
        "{}",
        stderr(&out)
    );
    assert!(!refused.exists() && !refused.with_extension("partial").exists());
}

/// Reads are recorded only with `--audit-reads`: one `read` entry per read(2), with the
/// offset and the bytes returned.
#[test]
fn reads_are_recorded_only_with_audit_reads() {
    let entries_of = |m: &Mount, op: &str| -> Vec<serde_json::Value> {
        read_all(&m.mnt.join("sys/audit"))
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["op"] == op)
            .collect()
    };
    let Some(plain) = Mount::try_new() else {
        return;
    };
    plain.agent("a");
    let f = plain.mem("a", "semantic").join("fact");
    fs::write(&f, b"0123456789").unwrap();
    assert_eq!(fs::read(&f).unwrap(), b"0123456789");
    assert!(wait_until(Duration::from_secs(5), || entries_of(
        &plain, "write"
    )
    .len()
        == 1));
    assert!(entries_of(&plain, "read").is_empty());
    drop(plain);

    let Some(m) = Mount::try_new_with_args(&["--audit-reads"]) else {
        return;
    };
    m.agent("a");
    let f = m.mem("a", "semantic").join("fact");
    fs::write(&f, b"0123456789").unwrap();
    let mut file = fs::File::open(&f).unwrap();
    let mut buf = [0u8; 4];
    use std::os::unix::fs::FileExt;
    assert_eq!(file.read_at(&mut buf, 3).unwrap(), 4);
    let mut rest = Vec::new();
    file.read_to_end(&mut rest).unwrap();
    let mut reads = Vec::new();
    wait_until(Duration::from_secs(5), || {
        reads = entries_of(&m, "read");
        reads.len() >= 2
    });
    assert!(
        reads.iter().any(|r| r["path"] == "a/mem/semantic/fact"
            && r["offset"] == 3
            && r["size"] == 4
            && r["agent"] == "a"),
        "{reads:?}"
    );
    assert!(
        reads.iter().any(|r| r["offset"] == 0 && r["size"] == 10),
        "{reads:?}"
    );
    drop(m);
}
