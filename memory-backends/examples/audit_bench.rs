//! Flight-recorder figures for `docs/benchmarks.md`.
//!
//! `cargo run --release -p agentfs-memory --example audit_bench [DIR] [ENTRIES]`
//!
//! DIR (default: the system temp dir) should be on the disk the data dir will live on;
//! ENTRIES defaults to 1,000,000. Prints:
//!
//! 1. the chain's own cost per entry (canonical encoding + BLAKE3), what a commit adds under
//!    the journal lock;
//! 2. entries/s sustained through a `SqliteStore` with durable group commit: writer threads
//!    commit entries (one per commit, or 64 per commit as the core's queued entries ride), each
//!    thread makes its commits durable (`sync`: journal `fdatasync` shared by concurrent
//!    callers, then the head file) every 1,000 commits; the clock stops when every entry is
//!    durable and in SQLite;
//! 3. `Disk` commits of one entry each from 8 threads (fsync group commit, head file pinned);
//! 4. `audit verify` speed over the resulting table (entries/s).

use agentfs_memory::audit::{canonical_body, link_hash};
use agentfs_memory::*;
use std::sync::Arc;
use std::time::Instant;

fn entry(i: u64) -> AuditEntry {
    AuditEntry {
        time: 1_700_000_000_000_000_000 + i as i64,
        agent: "agent-7".into(),
        pid: 4242,
        uid: 1000,
        op: "write".into(),
        path: format!("agent-7/mem/episodic/log-{}", i % 1000),
        size: 4096,
        offset: i * 4096,
        data_hash: Some(*blake3::hash(&i.to_le_bytes()).as_bytes()),
        decision: "allow".into(),
        rule: "own-mem".into(),
        policy: [7; 32],
        ..AuditEntry::default()
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let base = args
        .next()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let entries: u64 = args.next().map_or(Ok(1_000_000), |s| s.parse())?;

    // 1. The chain alone.
    let sample: Vec<AuditEntry> = (0..1000).map(entry).collect();
    let n = 1_000_000u64;
    let t = Instant::now();
    let mut prev = [0u8; 32];
    for i in 0..n {
        let body = canonical_body(&sample[(i % 1000) as usize]);
        prev = link_hash(&prev, i + 1, &body);
    }
    let el = t.elapsed();
    let body_len = canonical_body(&sample[0]).len();
    println!(
        "chain only: {:.0} ns/entry (canonical encoding of {body_len} bytes + BLAKE3), {:.2} M entries/s [{:02x}]",
        el.as_nanos() as f64 / n as f64,
        n as f64 / el.as_secs_f64() / 1e6,
        prev[0]
    );
    let t = Instant::now();
    for i in 0..n {
        let body = canonical_body(&sample[(i % 1000) as usize]);
        std::hint::black_box(&body);
    }
    println!(
        "  of which outside the journal lock (encoding): {:.0} ns/entry",
        t.elapsed().as_nanos() as f64 / n as f64
    );

    // 2. Sustained, durable group commit.
    let mut last_dir = None;
    for (threads, per_commit) in [(1usize, 1u64), (2, 1), (2, 64)] {
        let tmp = tempfile::TempDir::new_in(&base)?;
        let store = Arc::new(SqliteStore::open(
            tmp.path(),
            StoreOptions { create: true },
        )?);
        let per_thread = entries / threads as u64;
        let t = Instant::now();
        std::thread::scope(|s| {
            for th in 0..threads as u64 {
                let store = &store;
                s.spawn(move || {
                    let mut i = 0;
                    let mut until_sync = 1000;
                    while i < per_thread {
                        let mut batch = Batch::new();
                        for _ in 0..per_commit.min(per_thread - i) {
                            batch.push(Change::Audit(Box::new(entry(th * per_thread + i))));
                            i += 1;
                        }
                        store.commit(batch, Durability::Process).expect("commit");
                        until_sync -= 1;
                        if until_sync == 0 {
                            until_sync = 1000;
                            store.sync().expect("sync");
                        }
                    }
                    store.sync().expect("sync");
                });
            }
        });
        let acked = t.elapsed();
        store.wait_applied()?;
        let all = t.elapsed();
        let total = per_thread * threads as u64;
        println!(
            "durable group commit, {threads} thread(s), {per_commit} entr{} per commit: \
             {:.0} entries/s acknowledged durable, {:.0} entries/s until all are in SQLite \
             ({total} entries, {:.2} s)",
            if per_commit == 1 { "y" } else { "ies" },
            total as f64 / acked.as_secs_f64(),
            total as f64 / all.as_secs_f64(),
            all.as_secs_f64()
        );
        drop(store);
        if let Some(old) = last_dir.replace(tmp) {
            drop(old);
        }
    }

    // 2b. Where the ceiling is: the commit path alone (applier paused), then the applier alone
    // copying that backlog into SQLite. The backlog is bounded (16 MiB of records), hence the
    // smaller count.
    {
        let tmp = tempfile::TempDir::new_in(&base)?;
        let store = SqliteStore::open(tmp.path(), StoreOptions { create: true })?;
        store.set_applier_paused(true);
        let total = 64 * 1000u64;
        let t = Instant::now();
        for c in 0..1000u64 {
            let mut batch = Batch::new();
            for i in 0..64 {
                batch.push(Change::Audit(Box::new(entry(c * 64 + i))));
            }
            store.commit(batch, Durability::Process)?;
        }
        store.sync()?;
        let committed = t.elapsed();
        let t = Instant::now();
        store.set_applier_paused(false);
        store.wait_applied()?;
        let applied = t.elapsed();
        println!(
            "commit path alone (1 thread, 64 per commit, chain + journal append + sync): \
             {:.0} entries/s; applier alone (SQLite inserts): {:.0} entries/s",
            total as f64 / committed.as_secs_f64(),
            total as f64 / applied.as_secs_f64()
        );
    }

    // 3. Disk commits (fsync each, shared between concurrent callers).
    {
        let tmp = tempfile::TempDir::new_in(&base)?;
        let store = Arc::new(SqliteStore::open(
            tmp.path(),
            StoreOptions { create: true },
        )?);
        let per_thread = 2000u64;
        let t = Instant::now();
        std::thread::scope(|s| {
            for th in 0..8u64 {
                let store = &store;
                s.spawn(move || {
                    for i in 0..per_thread {
                        let mut batch = Batch::new();
                        batch.push(Change::Audit(Box::new(entry(th * per_thread + i))));
                        store.commit(batch, Durability::Disk).expect("commit");
                    }
                });
            }
        });
        let el = t.elapsed();
        println!(
            "Disk commits, 8 threads, 1 entry each: {:.0} entries/s ({} entries, {:.2} s)",
            (8 * per_thread) as f64 / el.as_secs_f64(),
            8 * per_thread,
            el.as_secs_f64()
        );
    }

    // 4. Verify the last sustained run's table (2 threads x 64 per commit).
    if let Some(tmp) = last_dir {
        let log = AuditLog::open(tmp.path())?;
        let t = Instant::now();
        let report = log.verify(&mut |_, _| {})?;
        let el = t.elapsed();
        assert!(report.problem.is_none(), "{:?}", report.problem);
        println!(
            "verify: {} entries in {:.2} s, {:.0} entries/s",
            report.entries,
            el.as_secs_f64(),
            report.entries as f64 / el.as_secs_f64()
        );
        let db = std::fs::metadata(tmp.path().join("agentfs.db"))?.len()
            + std::fs::metadata(tmp.path().join("agentfs.db-wal")).map_or(0, |m| m.len());
        println!(
            "database size: {:.1} MiB, {:.0} bytes per entry (these entries: {}-byte paths)",
            db as f64 / (1 << 20) as f64,
            db as f64 / report.entries as f64,
            entry(1).path.len()
        );
    }
    Ok(())
}
