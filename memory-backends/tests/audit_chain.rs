//! The flight recorder's hash chain in the durable store: numbering, hashes, the head file,
//! migrations from older schemas, replay after a crash, and what `AuditLog::verify` reports for
//! each kind of tampering.

mod common;

use agentfs_memory::audit::{entry_hash, GENESIS};
use agentfs_memory::*;
use common::*;
use rusqlite::{params, Connection};
use std::path::Path;

fn entry(i: u64) -> AuditEntry {
    AuditEntry {
        time: 1_700_000_000_000_000_000 + i as i64,
        agent: if i & 1 == 0 { "a".into() } else { "b".into() },
        pid: 100 + i as u32,
        uid: 1000,
        op: "write".into(),
        path: format!("a/mem/working/f{i}"),
        size: i,
        data_hash: (i % 3 < 1).then_some([i as u8; 32]),
        ..Default::default()
    }
}

/// `n` entries, a few per commit, some commits with other changes too.
fn fill(store: &SqliteStore, from: u64, n: u64) {
    let mut i = from;
    while i < from + n {
        let mut batch = Batch::new();
        if i % 5 < 1 {
            batch.push(Change::SetMeta {
                key: format!("k{i}"),
                value: "v".into(),
            });
        }
        for _ in 0..(1 + i % 3).min(from + n - i) {
            batch.push(Change::Audit(Box::new(entry(i))));
            i += 1;
        }
        store.commit(batch, Durability::Process).unwrap();
    }
}

fn verify(dir: &Path) -> VerifyReport {
    AuditLog::open(dir).unwrap().verify(&mut |_, _| {}).unwrap()
}

fn db(dir: &Path) -> Connection {
    Connection::open(dir.join("agentfs.db")).unwrap()
}

#[test]
fn entries_are_numbered_and_chained_across_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let store = open_sqlite(tmp.path());
        fill(&store, 1, 100);
    }
    {
        let store = open_sqlite(tmp.path());
        fill(&store, 101, 50);
        store.wait_applied().unwrap();
        let got = store.audit_after(140, Some("a"), 3).unwrap();
        assert_eq!(
            got.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![142, 144, 146]
        );
    }
    let log = AuditLog::open(tmp.path()).unwrap();
    let all = log.after(0, None, usize::MAX).unwrap();
    assert_eq!(all.len(), 150);
    let mut prev = GENESIS;
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1);
        assert_eq!(r.entry, entry(r.seq));
        assert_eq!(r.prev_hash, prev);
        assert_eq!(r.hash, entry_hash(&prev, r.seq, &r.entry));
        prev = r.hash;
    }
    let report = verify(tmp.path());
    assert_eq!(report.problem, None);
    assert_eq!(report.entries, 150);
    // A clean close pins the whole chain.
    assert_eq!(
        report.head,
        Some(ChainHead {
            seq: 150,
            hash: prev
        })
    );
    assert_eq!(report.unpinned, 0);
}

#[test]
fn a_durable_commit_pins_the_head() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_sqlite(tmp.path());
    fill(&store, 1, 10);
    assert_eq!(read_audit_head(tmp.path()).unwrap().unwrap().seq, 0);
    store.sync().unwrap();
    assert_eq!(read_audit_head(tmp.path()).unwrap().unwrap().seq, 10);
    // Verify while the store is open: SQLite may lag the head; verify waits for it.
    let report = verify(tmp.path());
    assert_eq!(report.problem, None, "{report:?}");
    assert_eq!(report.entries, 10);
}

#[test]
fn a_replayed_journal_continues_the_same_chain() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let store = open_sqlite(tmp.path());
        fill(&store, 1, 20);
        store.wait_applied().unwrap();
        store.set_applier_paused(true);
        fill(&store, 21, 30);
        store.sync().unwrap();
        // Dropped paused: a simulated crash, the last 30 entries only in the journal.
    }
    let store = open_sqlite(tmp.path());
    fill(&store, 51, 5);
    drop(store);
    let report = verify(tmp.path());
    assert_eq!(report.problem, None, "{report:?}");
    assert_eq!(report.entries, 55);
}

/// The tables as schema version 1 created them.
const V1_DDL: &str = r#"
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE inodes(ino INTEGER PRIMARY KEY, kind INTEGER NOT NULL, perm INTEGER NOT NULL,
    uid INTEGER NOT NULL, gid INTEGER NOT NULL, nlink INTEGER NOT NULL, size INTEGER NOT NULL,
    atime INTEGER NOT NULL, mtime INTEGER NOT NULL, ctime INTEGER NOT NULL,
    crtime INTEGER NOT NULL, rdev INTEGER NOT NULL, symlink_target BLOB NOT NULL);
CREATE TABLE dirents(parent INTEGER NOT NULL, name BLOB NOT NULL, ino INTEGER NOT NULL,
    PRIMARY KEY(parent, name)) WITHOUT ROWID;
CREATE TABLE chunks(ino INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL,
    PRIMARY KEY(ino, idx)) WITHOUT ROWID;
CREATE TABLE xattrs(ino INTEGER NOT NULL, name BLOB NOT NULL, value BLOB NOT NULL,
    PRIMARY KEY(ino, name)) WITHOUT ROWID;
CREATE TABLE blobs(hash BLOB PRIMARY KEY, pack INTEGER NOT NULL, "offset" INTEGER NOT NULL,
    len INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE audit(seq INTEGER PRIMARY KEY, time INTEGER NOT NULL, agent TEXT NOT NULL,
    pid INTEGER NOT NULL, uid INTEGER NOT NULL, op TEXT NOT NULL, path TEXT NOT NULL,
    result INTEGER NOT NULL, size INTEGER NOT NULL);
INSERT INTO meta(key, value) VALUES('schema_version', '1');
INSERT INTO meta(key, value) VALUES('next_ino', '17');
"#;

#[test]
fn a_version_1_database_opens_and_migrates() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let c = db(tmp.path());
        c.execute_batch(V1_DDL).unwrap();
        for i in 1..=5i64 {
            c.execute(
                "INSERT INTO audit(time, agent, pid, uid, op, path, result, size) \
                 VALUES (?1, 'old', 1, 0, 'create', ?2, 0, ?1)",
                params![i, format!("old/mem/working/{i}")],
            )
            .unwrap();
        }
    }
    {
        let store = open_sqlite(tmp.path());
        let state = store.load().unwrap();
        assert!(state.meta.contains(&("next_ino".into(), "17".into())));
        fill(&store, 6, 3);
    }
    let version: String = db(tmp.path())
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(version, "4");
    // Version 4's table exists after the migration.
    let appends: i64 = db(tmp.path())
        .query_row("SELECT count(*) FROM appends", [], |r| r.get(0))
        .unwrap();
    assert_eq!(appends, 0);
    let report = verify(tmp.path());
    assert_eq!(report.problem, None, "{report:?}");
    assert_eq!(report.entries, 8);
    let old = AuditLog::open(tmp.path())
        .unwrap()
        .after(0, None, 1)
        .unwrap();
    assert_eq!(old[0].entry.path, "old/mem/working/1");
    assert_eq!(old[0].entry.target, "");
    assert_eq!(old[0].prev_hash, GENESIS);
}

#[test]
fn a_version_2_database_opens_and_migrates() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let store = open_sqlite(tmp.path());
        fill(&store, 1, 4);
    }
    // Make it look like version 2: no chain columns, no head file.
    {
        let c = db(tmp.path());
        c.execute_batch(
            "ALTER TABLE audit DROP COLUMN prev_hash; ALTER TABLE audit DROP COLUMN hash; \
             UPDATE meta SET value = '2' WHERE key = 'schema_version';",
        )
        .unwrap();
        std::fs::remove_file(tmp.path().join(AUDIT_HEAD_FILE)).unwrap();
    }
    assert!(
        AuditLog::open(tmp.path()).is_err(),
        "v2 has no chain to read"
    );
    drop(open_sqlite(tmp.path()));
    let report = verify(tmp.path());
    assert_eq!(report.problem, None, "{report:?}");
    assert_eq!(report.entries, 4);
}

/// A store of 30 entries, closed cleanly.
fn thirty() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_sqlite(tmp.path());
    fill(&store, 1, 30);
    drop(store);
    tmp
}

fn problem(dir: &Path) -> Problem {
    verify(dir).problem.expect("verify finds the damage")
}

#[test]
fn verify_names_an_altered_entry() {
    let tmp = thirty();
    db(tmp.path())
        .execute(
            "UPDATE audit SET path = 'a/mem/working/g12' WHERE seq = 12",
            [],
        )
        .unwrap();
    let p = problem(tmp.path());
    assert_eq!((p.kind, p.seq), (ProblemKind::Altered, 12), "{p}");
}

#[test]
fn verify_names_an_altered_and_rehashed_entry() {
    let tmp = thirty();
    let c = db(tmp.path());
    let (prev, mut e) = {
        let log = AuditLog::open(tmp.path()).unwrap();
        let r = log.after(11, None, 1).unwrap().remove(0);
        (r.prev_hash, r.entry)
    };
    e.size = 999;
    let hash = entry_hash(&prev, 12, &e);
    c.execute(
        "UPDATE audit SET size = 999, hash = ?1 WHERE seq = 12",
        [&hash[..]],
    )
    .unwrap();
    let p = problem(tmp.path());
    assert_eq!((p.kind, p.seq), (ProblemKind::Altered, 12), "{p}");
}

#[test]
fn verify_names_a_dropped_entry() {
    let tmp = thirty();
    db(tmp.path())
        .execute("DELETE FROM audit WHERE seq = 7", [])
        .unwrap();
    let p = problem(tmp.path());
    assert_eq!((p.kind, p.seq), (ProblemKind::Dropped, 7), "{p}");
}

#[test]
fn verify_names_reordered_entries() {
    let tmp = thirty();
    db(tmp.path())
        .execute_batch(
            "UPDATE audit SET seq = -1 WHERE seq = 9; \
             UPDATE audit SET seq = 9 WHERE seq = 10; \
             UPDATE audit SET seq = 10 WHERE seq = -1;",
        )
        .unwrap();
    let p = problem(tmp.path());
    assert_eq!((p.kind, p.seq), (ProblemKind::Reordered, 9), "{p}");
}

#[test]
fn verify_names_an_inserted_entry() {
    let tmp = thirty();
    // A forger who knows the format: renumbers the rest and chains the forged row properly.
    let c = db(tmp.path());
    let prev = AuditLog::open(tmp.path())
        .unwrap()
        .after(14, None, 1)
        .unwrap()[0]
        .hash;
    let forged = AuditEntry {
        op: "unlink".into(),
        path: "a/mem/working/alibi".into(),
        ..entry(15)
    };
    let hash = entry_hash(&prev, 16, &forged);
    c.execute_batch(
        "UPDATE audit SET seq = -seq WHERE seq > 15; UPDATE audit SET seq = 1 - seq WHERE seq < 0;",
    )
    .unwrap();
    c.execute(
        "INSERT INTO audit(seq, time, agent, pid, uid, op, path, result, size, prev_hash, hash) \
         VALUES (16, ?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?8, ?9)",
        params![
            forged.time,
            forged.agent,
            forged.pid,
            forged.uid,
            forged.op,
            forged.path,
            forged.size as i64,
            &prev[..],
            &hash[..]
        ],
    )
    .unwrap();
    let p = problem(tmp.path());
    assert_eq!((p.kind, p.seq), (ProblemKind::Inserted, 16), "{p}");
}

#[test]
fn verify_and_open_catch_a_truncated_tail() {
    let tmp = thirty();
    db(tmp.path())
        .execute("DELETE FROM audit WHERE seq > 20", [])
        .unwrap();
    let p = problem(tmp.path());
    assert_eq!((p.kind, p.seq), (ProblemKind::Truncated, 21), "{p}");
    let err = SqliteStore::open(tmp.path(), StoreOptions { create: false })
        .expect_err("open refuses a cut-off chain");
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    assert!(err.to_string().contains("cut off"), "{err}");
}

#[test]
fn a_missing_head_is_reported() {
    let tmp = thirty();
    std::fs::remove_file(tmp.path().join(AUDIT_HEAD_FILE)).unwrap();
    let p = problem(tmp.path());
    assert_eq!(p.kind, ProblemKind::HeadMissing, "{p}");
    assert!(SqliteStore::open(tmp.path(), StoreOptions { create: false }).is_err());
}

#[test]
fn verify_reads_the_unapplied_journal_of_a_crashed_store() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let store = open_sqlite(tmp.path());
        fill(&store, 1, 10);
        store.wait_applied().unwrap();
        store.set_applier_paused(true);
        fill(&store, 11, 15);
        store.sync().unwrap();
        // Dropped paused: a crash with 15 entries pinned but only in the journal.
    }
    assert_eq!(read_audit_head(tmp.path()).unwrap().unwrap().seq, 25);
    let report = verify(tmp.path());
    assert_eq!(report.problem, None, "{report:?}");
    assert_eq!((report.entries, report.in_journal), (25, 15));
    // Without the journal, the table really is cut short.
    let journal = tmp.path().join("journal");
    let saved = tmp.path().join("journal.saved");
    std::fs::rename(&journal, &saved).unwrap();
    let p = problem(tmp.path());
    assert_eq!((p.kind, p.seq), (ProblemKind::Truncated, 11), "{p}");
    std::fs::rename(&saved, &journal).unwrap();
    // The replay at open applies them, and the chain is the same.
    drop(open_sqlite(tmp.path()));
    let report = verify(tmp.path());
    assert_eq!(report.problem, None, "{report:?}");
    assert_eq!((report.entries, report.in_journal), (25, 0));
}

#[test]
fn verify_names_a_dropped_first_entry() {
    let tmp = thirty();
    db(tmp.path())
        .execute("DELETE FROM audit WHERE seq = 1", [])
        .unwrap();
    let p = problem(tmp.path());
    assert_eq!((p.kind, p.seq), (ProblemKind::Dropped, 1), "{p}");
}

#[test]
fn verify_names_adjacent_swapped_entries() {
    let tmp = thirty();
    db(tmp.path())
        .execute_batch(
            "UPDATE audit SET seq = -1 WHERE seq = 20; \
             UPDATE audit SET seq = 20 WHERE seq = 21; \
             UPDATE audit SET seq = 21 WHERE seq = -1;",
        )
        .unwrap();
    let p = problem(tmp.path());
    assert_eq!((p.kind, p.seq), (ProblemKind::Reordered, 20), "{p}");
}

#[test]
fn verify_names_entries_dropped_with_the_rest_renumbered() {
    let tmp = thirty();
    db(tmp.path())
        .execute_batch(
            "DELETE FROM audit WHERE seq IN (5, 6); UPDATE audit SET seq = seq - 2 WHERE seq > 6;",
        )
        .unwrap();
    let p = problem(tmp.path());
    assert_eq!((p.kind, p.seq), (ProblemKind::Dropped, 5), "{p}");
    assert!(p.detail.contains("5 to 6"), "{p}");
}

#[test]
fn verify_names_a_rewritten_chain() {
    // Everything from entry 10 on re-hashed consistently (the algorithm has no key): only the
    // pinned head shows it.
    let tmp = thirty();
    let log = AuditLog::open(tmp.path()).unwrap();
    let recs = log.after(0, None, usize::MAX).unwrap();
    drop(log);
    let c = db(tmp.path());
    let mut prev = recs[8].hash;
    for r in &recs[9..] {
        let mut e = r.entry.clone();
        if r.seq == 10 {
            e.path = "a/mem/working/innocent".into();
        }
        let hash = entry_hash(&prev, r.seq, &e);
        c.execute(
            "UPDATE audit SET path = ?1, prev_hash = ?2, hash = ?3 WHERE seq = ?4",
            params![e.path, &prev[..], &hash[..], r.seq as i64],
        )
        .unwrap();
        prev = hash;
    }
    let p = problem(tmp.path());
    assert_eq!((p.kind, p.seq), (ProblemKind::Altered, 30), "{p}");
    assert!(p.detail.contains("rewritten"), "{p}");
}
