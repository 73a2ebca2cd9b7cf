//! SqliteStore specifics: reopening, exclusive ownership, damaged files, kill -9.

mod common;

use agentfs_memory::*;
use common::*;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

/// Env var that turns `crash_child` into the child half of the crash test.
const CRASH_DIR_VAR: &str = "AGENTFS_MEMORY_CRASH_DIR";

/// The state the crash child commits, and the parent expects after reopening.
fn crash_batch(store: &dyn Store) -> (Batch, Vec<(ChunkId, Vec<u8>)>) {
    let mut chunks = Vec::new();
    let mut slots = Vec::new();
    for i in 0..4u8 {
        let data = vec![i; CHUNK_SIZE - usize::from(i)];
        let id = store.put_chunk(&data).unwrap();
        slots.push((u64::from(i), Some(id)));
        chunks.push((id, data));
    }
    let mut file = inode(2, FileKind::File);
    file.size = 4 * CHUNK_SIZE as u64;
    let batch = Batch {
        changes: vec![
            Change::PutInode(inode(1, FileKind::Dir)),
            Change::PutInode(file),
            Change::PutDirent {
                parent: 1,
                name: b"data.bin".to_vec(),
                ino: 2,
            },
            Change::SetChunks {
                ino: 2,
                chunks: slots,
            },
            Change::SetMeta {
                key: "next_ino".into(),
                value: "3".into(),
            },
            Change::Audit(Box::new(audit("close"))),
        ],
    };
    (batch, chunks)
}

/// Child half of `kill_9_after_a_process_commit_loses_nothing`: commits, says READY, waits to
/// be killed. A no-op when run as an ordinary test.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CRASH_DIR_VAR) else {
        return;
    };
    let store = open_sqlite(Path::new(&dir));
    let (batch, _) = crash_batch(&store);
    store.commit(batch, Durability::Process).unwrap();
    // A chunk written but never committed: dead bytes in the pack after the crash.
    store.put_chunk(b"orphan").unwrap();
    println!("READY");
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

#[test]
fn kill_9_after_a_process_commit_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CRASH_DIR_VAR, tmp.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let ready = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|line| line.contains("READY"));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(ready, "the child never committed");

    let store = open_sqlite(tmp.path());
    let reference = RamStore::new();
    let (batch, chunks) = crash_batch(&reference);
    reference.commit(batch, Durability::Process).unwrap();
    assert_same(&store.load().unwrap(), &reference.load().unwrap());
    for (id, data) in &chunks {
        assert_eq!(&read_all(&store, id), data);
    }
    assert!(store.verify_chunks().unwrap().is_empty());
    assert_eq!(store.audit_count().unwrap(), 1);
    // The orphan was never committed, so its blob row does not exist.
    assert!(store
        .read_at(&ChunkId::of(b"orphan"), 0, &mut [0u8; 8])
        .is_err());
}

#[test]
fn reopening_sees_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let (expected, chunks) = {
        let store = open_sqlite(tmp.path());
        let (batch, chunks) = crash_batch(&store);
        store.commit(batch, Durability::Disk).unwrap();
        let mut more = Batch::new();
        more.push(Change::PutInode(inode(u64::MAX - 1, FileKind::Fifo)));
        more.push(Change::SetXattr {
            ino: 2,
            name: b"user.k".to_vec(),
            value: b"v".to_vec(),
        });
        store.commit(more, Durability::Process).unwrap();
        (store.load().unwrap(), chunks)
    };
    let store = open_sqlite(tmp.path());
    let loaded = store.load().unwrap();
    assert_same(&loaded, &expected);
    let inos: Vec<Ino> = loaded.inodes.iter().map(|r| r.ino).collect();
    assert_eq!(
        inos,
        vec![1, 2, u64::MAX - 1],
        "inode numbers are stable and in u64 order"
    );
    for (id, data) in &chunks {
        assert_eq!(&read_all(&store, id), data);
    }
    let expected_bytes: u64 = chunks.iter().map(|(_, d)| d.len() as u64).sum();
    assert_eq!(store.chunk_bytes(), expected_bytes);
    // Dedup holds across reopen: the same bytes add nothing.
    store.put_chunk(&chunks[0].1).unwrap();
    assert_eq!(store.chunk_bytes(), expected_bytes);
    // The schema version is the store's business, not part of the loaded meta.
    assert_eq!(loaded.meta, vec![("next_ino".to_string(), "3".to_string())]);
}

#[test]
fn a_second_open_fails_while_the_first_is_alive() {
    let tmp = tempfile::tempdir().unwrap();
    let first = open_sqlite(tmp.path());
    let err = SqliteStore::open(tmp.path(), StoreOptions { create: true }).unwrap_err();
    match &err {
        StoreError::Locked(msg) => {
            assert!(msg.contains("agentfs.db"), "{msg}");
            assert!(
                msg.contains(&std::process::id().to_string()),
                "names the holder: {msg}"
            );
        }
        other => panic!("expected Locked, got {other}"),
    }
    drop(first);
    open_sqlite(tmp.path());
}

#[test]
fn missing_dir_or_database_without_create_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let err = SqliteStore::open(&missing, StoreOptions::default()).unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert!(!missing.exists(), "nothing is created without create");

    let err = SqliteStore::open(tmp.path(), StoreOptions::default()).unwrap_err();
    assert!(err.to_string().contains("agentfs.db"), "{err}");
}

#[test]
fn a_garbage_database_is_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("agentfs.db"), vec![0x5au8; 8192]).unwrap();
    let err = SqliteStore::open(tmp.path(), StoreOptions { create: true }).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    assert!(err.to_string().contains("agentfs.db"), "{err}");
}

#[test]
fn a_foreign_sqlite_database_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let conn = rusqlite::Connection::open(tmp.path().join("agentfs.db")).unwrap();
    conn.execute_batch("CREATE TABLE other(x)").unwrap();
    drop(conn);
    let err = SqliteStore::open(tmp.path(), StoreOptions { create: true }).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
}

#[test]
fn a_newer_schema_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    drop(open_sqlite(tmp.path()));
    let conn = rusqlite::Connection::open(tmp.path().join("agentfs.db")).unwrap();
    conn.execute(
        "UPDATE meta SET value = '99' WHERE key = 'schema_version'",
        [],
    )
    .unwrap();
    drop(conn);
    let err = SqliteStore::open(tmp.path(), StoreOptions::default()).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    assert!(err.to_string().contains("newer"), "{err}");
}

#[test]
fn a_pack_that_lost_its_tail_fails_reads_not_open() {
    let tmp = tempfile::tempdir().unwrap();
    let id = {
        let store = open_sqlite(tmp.path());
        let id = store.put_chunk(&[9u8; 4096]).unwrap();
        let batch = Batch {
            changes: vec![Change::SetChunks {
                ino: 2,
                chunks: vec![(0, Some(id))],
            }],
        };
        store.commit(batch, Durability::Process).unwrap();
        id
    };
    let pack = tmp.path().join("packs").join("pack-000001.dat");
    let len = std::fs::metadata(&pack).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&pack)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let store = open_sqlite(tmp.path());
    assert_eq!(store.load().unwrap().chunks.len(), 1);
    let err = store.read_at(&id, 0, &mut [0u8; 4096]).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    assert_eq!(store.verify_chunks().unwrap(), vec![id]);
    // New chunks never land on the bytes the old row still points at.
    let other = store.put_chunk(&[1u8; 4096]).unwrap();
    assert_eq!(read_all(&store, &other), vec![1u8; 4096]);
}

#[test]
fn blob_rows_of_a_failed_commit_go_in_with_the_next_one() {
    let tmp = tempfile::tempdir().unwrap();
    let id = {
        let store = open_sqlite(tmp.path());
        let id = store.put_chunk(b"kept").unwrap();
        let bad = Batch {
            changes: vec![
                Change::SetChunks {
                    ino: 2,
                    chunks: vec![(0, Some(id))],
                },
                Change::SetMeta {
                    key: "store.x".into(),
                    value: String::new(),
                },
            ],
        };
        assert!(store.commit(bad, Durability::Process).is_err());
        let good = Batch {
            changes: vec![Change::SetChunks {
                ino: 2,
                chunks: vec![(0, Some(id))],
            }],
        };
        store.commit(good, Durability::Process).unwrap();
        id
    };
    let store = open_sqlite(tmp.path());
    assert_eq!(read_all(&store, &id), b"kept");
}

#[test]
fn a_database_held_by_another_program_is_locked_not_a_hang() {
    let tmp = tempfile::tempdir().unwrap();
    drop(open_sqlite(tmp.path()));
    // Something that ignores our lock file (a sqlite3 shell, say) holds the database.
    let other = rusqlite::Connection::open(tmp.path().join("agentfs.db")).unwrap();
    other
        .execute_batch(
            "PRAGMA locking_mode=EXCLUSIVE; BEGIN EXCLUSIVE; UPDATE meta SET value = value;",
        )
        .unwrap();
    let started = std::time::Instant::now();
    let err = SqliteStore::open(tmp.path(), StoreOptions::default()).unwrap_err();
    assert!(matches!(err, StoreError::Locked(_)), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    drop(other);
    open_sqlite(tmp.path());
}

#[test]
fn appends_and_outbox_markers_persist_and_go_with_their_inode() {
    let tmp = tempfile::tempdir().unwrap();
    let append = |offset, time| {
        Change::Append(AppendRecord {
            ino: 2,
            offset,
            len: 5,
            time,
        })
    };
    {
        let store = SqliteStore::open(tmp.path(), StoreOptions { create: true }).unwrap();
        let batch = Batch {
            changes: vec![
                Change::PutInode(inode(2, FileKind::File)),
                append(0, 100),
                append(5, 200),
                Change::SetMeta {
                    key: "search-outbox/a".into(),
                    value: "7".into(),
                },
            ],
        };
        store.commit(batch, Durability::Process).unwrap();
        // A compare-and-delete with a stale value leaves the marker.
        let mut stale = Batch::new();
        stale.push(Change::DeleteMetaIf {
            key: "search-outbox/a".into(),
            value: "6".into(),
        });
        store.commit(stale, Durability::Process).unwrap();
    }
    let store = SqliteStore::open(tmp.path(), StoreOptions { create: false }).unwrap();
    let got = store.appends(2).unwrap();
    assert_eq!(
        got.iter().map(|a| (a.offset, a.time)).collect::<Vec<_>>(),
        [(0, 100), (5, 200)]
    );
    let marker = ("search-outbox/a".to_string(), "7".to_string());
    assert!(store.load().unwrap().meta.contains(&marker));
    let mut clear = Batch::new();
    clear.push(Change::DeleteMetaIf {
        key: marker.0.clone(),
        value: marker.1.clone(),
    });
    clear.push(Change::DeleteInode(2));
    store.commit(clear, Durability::Process).unwrap();
    assert!(store.appends(2).unwrap().is_empty());
    assert!(!store.load().unwrap().meta.contains(&marker));
}
