//! Store throughput figures for `docs/storage.md`.
//!
//! `cargo run --release -p agentfs-memory --example store_bench [DIR]`
//!
//! DIR (default: the system temp dir) should be on the disk the data dir will live on. Reads are
//! measured right after the writes, so they come from the page cache, like most FUSE reads of
//! recently written files.

use agentfs_memory::*;
use std::sync::Arc;
use std::time::Instant;

const TOTAL: usize = 256 << 20;
const CHUNKS: usize = TOTAL / CHUNK_SIZE;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let base = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let data = make_chunks();

    baselines(&data);
    println!("== RamStore");
    bench(Arc::new(RamStore::new()), &data)?;

    let tmp = tempfile::TempDir::new_in(&base)?;
    println!("== SqliteStore in {}", tmp.path().display());
    let store = Arc::new(SqliteStore::open(
        tmp.path(),
        StoreOptions { create: true },
    )?);
    bench(store.clone(), &data)?;
    disk_commits(&store)?;
    journal_figures(&store)?;
    drop(store);
    replay(&base)?;
    Ok(())
}

/// `CHUNKS` distinct pseudo-random chunks (incompressible, so nothing is unrealistically cheap).
fn make_chunks() -> Vec<Vec<u8>> {
    (0..CHUNKS)
        .map(|i| {
            let mut buf = vec![0u8; CHUNK_SIZE];
            blake3::Hasher::new()
                .update(&(i as u64).to_le_bytes())
                .finalize_xof()
                .fill(&mut buf);
            buf
        })
        .collect()
}

/// What a put costs at least: hashing, and copying into memory the process has not touched yet.
fn baselines(data: &[Vec<u8>]) {
    let t = Instant::now();
    let mut x = 0u8;
    for chunk in data {
        x ^= blake3::hash(chunk).as_bytes()[0];
    }
    println!(
        "baseline BLAKE3, 1 thread:         {:7.0} MiB/s  ({x})",
        mib_s(TOTAL, t.elapsed().as_secs_f64())
    );
    let t = Instant::now();
    let copies: Vec<Arc<[u8]>> = data.iter().map(|c| Arc::from(c.as_slice())).collect();
    println!(
        "baseline copy to fresh memory:     {:7.0} MiB/s",
        mib_s(TOTAL, t.elapsed().as_secs_f64())
    );
    drop(copies);
}

fn mib_s(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / (1 << 20) as f64 / secs
}

fn bench(store: Arc<dyn Store>, data: &[Vec<u8>]) -> Result<(), StoreError> {
    // 1 thread, then 4 threads writing disjoint halves of a second data set.
    let t = Instant::now();
    let mut ids = Vec::with_capacity(data.len());
    for chunk in data {
        ids.push(store.put_chunk(chunk)?);
    }
    let put = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let batch = Batch {
        changes: vec![Change::SetChunks {
            ino: 2,
            chunks: ids
                .iter()
                .enumerate()
                .map(|(i, id)| (i as u64, Some(*id)))
                .collect(),
        }],
    };
    store.commit(batch, Durability::Disk)?;
    let commit = t.elapsed().as_secs_f64();
    println!(
        "put_chunk 256 MiB, 1 thread:       {:7.0} MiB/s",
        mib_s(TOTAL, put)
    );
    println!(
        "  + one Disk commit naming them:   {:7.0} ms  (puts + commit: {:.0} MiB/s)",
        commit * 1e3,
        mib_s(TOTAL, put + commit)
    );

    let threads = 4;
    let shifted: Vec<Vec<u8>> = data
        .iter()
        .map(|c| {
            let mut c = c.clone();
            c[0] ^= 0xff;
            c
        })
        .collect();
    let shifted = Arc::new(shifted);
    let t = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|k| {
            let store = Arc::clone(&store);
            let shifted = Arc::clone(&shifted);
            std::thread::spawn(move || -> Result<(), StoreError> {
                for chunk in shifted.iter().skip(k).step_by(threads) {
                    store.put_chunk(chunk)?;
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join()
            .map_err(|_| StoreError::Corrupt("bench thread panicked".into()))??;
    }
    let put = t.elapsed().as_secs_f64();
    let t = Instant::now();
    store.commit(Batch::new(), Durability::Disk)?;
    let commit = t.elapsed().as_secs_f64();
    println!(
        "put_chunk 256 MiB, {threads} threads:      {:7.0} MiB/s  (puts + Disk commit: {:.0} MiB/s)",
        mib_s(TOTAL, put),
        mib_s(TOTAL, put + commit)
    );

    let mut buf = vec![0u8; CHUNK_SIZE];
    let t = Instant::now();
    for id in &ids {
        store.read_at(id, 0, &mut buf)?;
    }
    println!(
        "read_at 256 MiB, 128 KiB reads:    {:7.0} MiB/s",
        mib_s(TOTAL, t.elapsed().as_secs_f64())
    );
    let mut small = [0u8; 4096];
    let t = Instant::now();
    let reads = 200_000;
    for i in 0..reads {
        store.read_at(&ids[i % ids.len()], (i * 4096) % CHUNK_SIZE, &mut small)?;
    }
    println!(
        "read_at 4 KiB reads:               {:7.0} k reads/s",
        reads as f64 / t.elapsed().as_secs_f64() / 1e3
    );

    let n = 20_000u64;
    let t = Instant::now();
    for i in 0..n {
        store.commit(
            three_changes(i, ids[i as usize % ids.len()]),
            Durability::Process,
        )?;
    }
    println!(
        "commit 3-change batch, Process:    {:7.0} commits/s",
        n as f64 / t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What a small write does: new attributes, one chunk slot, one audit entry.
fn three_changes(i: u64, id: ChunkId) -> Batch {
    Batch {
        changes: vec![
            Change::PutInode(InodeRecord {
                ino: 100 + i % 1000,
                kind: FileKind::File,
                perm: 0o644,
                uid: 1000,
                gid: 1000,
                nlink: 1,
                size: i,
                atime: i as i64,
                mtime: i as i64,
                ctime: i as i64,
                crtime: 0,
                rdev: 0,
                symlink_target: Vec::new(),
            }),
            Change::SetChunks {
                ino: 100 + i % 1000,
                chunks: vec![(i % 8, Some(id))],
            },
            Change::Audit(Box::new(AuditEntry {
                time: i as i64,
                agent: "bench".into(),
                pid: 1,
                uid: 1000,
                op: "write".into(),
                path: format!("/w/f{}", i % 1000),
                result: 0,
                size: 4096,
                ..Default::default()
            })),
        ],
    }
}

/// How the journal and its applier keep up: a long run of small commits from 1 and 4 threads,
/// then the time the applier needs to catch up.
fn journal_figures(store: &Arc<SqliteStore>) -> Result<(), StoreError> {
    let id = store.put_chunk(b"y")?;
    store.wait_applied()?;
    let n = 200_000u64;
    let t = Instant::now();
    for i in 0..n {
        store.commit(three_changes(i, id), Durability::Process)?;
    }
    let commits = t.elapsed().as_secs_f64();
    let lag = store.applied_lag();
    store.wait_applied()?;
    let total = t.elapsed().as_secs_f64();
    println!(
        "{n} Process commits, 1 thread:  {:7.0} commits/s (lag at the end {lag}, all in SQLite \
         after {:.0} ms: {:.0} applied/s)",
        n as f64 / commits,
        total * 1e3,
        n as f64 / total
    );

    let threads = 4u64;
    let t = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|k| {
            let store = Arc::clone(store);
            std::thread::spawn(move || -> Result<(), StoreError> {
                for i in 0..n / threads {
                    store.commit(three_changes(k * n + i, id), Durability::Process)?;
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join()
            .map_err(|_| StoreError::Corrupt("bench thread panicked".into()))??;
    }
    let commits = t.elapsed().as_secs_f64();
    store.wait_applied()?;
    let total = t.elapsed().as_secs_f64();
    println!(
        "{n} Process commits, {threads} threads: {:7.0} commits/s (all in SQLite after {:.0} ms)",
        n as f64 / commits,
        total * 1e3
    );
    Ok(())
}

/// Reopen after a crash that left 100,000 records unapplied: the replay speed.
fn replay(base: &std::path::Path) -> Result<(), StoreError> {
    let tmp = tempfile::TempDir::new_in(base)?;
    let n = 100_000u64;
    {
        let store = SqliteStore::open(tmp.path(), StoreOptions { create: true })?;
        let id = store.put_chunk(b"z")?;
        // Paused: nothing reaches SQLite, not even at drop, as if the daemon had been killed.
        store.set_applier_paused(true);
        for i in 0..n {
            store.commit(three_changes(i, id), Durability::Process)?;
        }
        store.sync()?;
    }
    let journal: u64 = std::fs::read_dir(tmp.path().join("journal"))?
        .map(|e| e.and_then(|e| e.metadata()).map(|m| m.len()).unwrap_or(0))
        .sum();
    let t = Instant::now();
    let store = SqliteStore::open(tmp.path(), StoreOptions::default())?;
    let open = t.elapsed().as_secs_f64();
    let audit = store.audit_count()?;
    assert_eq!(audit, n, "every record replayed");
    println!(
        "reopen with {n} unapplied records ({:.1} MiB of journal): {:.0} ms ({:.0} records/s)",
        journal as f64 / (1 << 20) as f64,
        open * 1e3,
        n as f64 / open
    );
    Ok(())
}

/// Durable commits are bounded by fsync latency; measured separately with fewer rounds.
fn disk_commits(store: &SqliteStore) -> Result<(), StoreError> {
    let id = store.put_chunk(b"x")?;
    let n = 300u64;
    let t = Instant::now();
    for i in 0..n {
        store.commit(three_changes(i, id), Durability::Disk)?;
    }
    println!(
        "commit 3-change batch, Disk:       {:7.0} commits/s",
        n as f64 / t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    for _ in 0..n {
        store.sync()?;
    }
    println!(
        "sync() with nothing new:           {:7.0} /s",
        n as f64 / t.elapsed().as_secs_f64()
    );
    Ok(())
}
