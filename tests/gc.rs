//! Garbage collection through a real mount (issue 7 item 5): space held only by a deleted
//! checkpoint goes back to the disk, nothing still referenced (by a checkpoint, or by an open
//! file's unclosed writes) is ever freed, and working memory's abandoned chunks are freed too.

mod common;

use common::*;
use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

/// Rounds every 100 ms, so a chunk is freed within a fraction of a second.
const FAST_GC: &[&str] = &["--gc-interval", "100ms"];

/// Bytes that compress to nothing and deduplicate with nothing: chunk `i` of stream `seed`.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Bytes the pack files hold on the disk (allocated blocks, so punched holes do not count).
fn pack_bytes(data: &Path) -> u64 {
    fs::read_dir(data.join("packs"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

fn metric(m: &Mount, name: &str, store: &str) -> u64 {
    let text = fs::read_to_string(m.mnt.join("sys/metrics")).unwrap();
    let prefix = format!("{name}{{store=\"{store}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{prefix} not in sys/metrics"))
}

const MIB: usize = 1 << 20;

/// A mount collecting every 100 ms, with agent `a`.
fn mounted() -> Option<Mount> {
    let m = Mount::try_new_with_args(FAST_GC)?;
    m.agent("a");
    Some(m)
}

#[test]
fn deleting_the_last_checkpoint_of_deleted_data_gives_the_space_back() {
    let Some(m) = mounted() else {
        return;
    };
    let file = m.mem("a", "semantic").join("big.bin");
    let body = noise(1, 32 * MIB);
    fs::write(&file, &body).unwrap();
    fs::create_dir(m.mnt.join("a").join("state/cp")).unwrap();
    fs::remove_file(&file).unwrap();
    let held = pack_bytes(&m.data);
    assert!(held >= 32 * MIB as u64, "packs hold {held} bytes");

    // The checkpoint still names every chunk: many rounds later nothing is gone.
    let rounds = metric(&m, "agentfs_gc_rounds_total", "durable");
    assert!(wait_until(Duration::from_secs(20), || {
        metric(&m, "agentfs_gc_rounds_total", "durable") >= rounds + 5
    }));
    // (A few partial chunks superseded while the file was written may go; no more.)
    let early = metric(&m, "agentfs_gc_freed_bytes_total", "durable");
    assert!(
        early < MIB as u64,
        "freed {early} bytes while the checkpoint lives"
    );
    let saved = m.mnt.join("a").join("state/cp/semantic/big.bin");
    assert!(
        fs::read(&saved).unwrap() == body,
        "the checkpoint reads back whole"
    );

    fs::remove_dir(m.mnt.join("a").join("state/cp")).unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || pack_bytes(&m.data)
            + 30 * MIB as u64
            <= held),
        "the packs still hold {} of {held} bytes",
        pack_bytes(&m.data)
    );
    // The round's totals and its audit entry follow the punching by a moment.
    assert!(wait_until(Duration::from_secs(10), || {
        metric(&m, "agentfs_gc_freed_bytes_total", "durable") >= 32 * MIB as u64
    }));
    assert!(
        wait_until(Duration::from_secs(10), || {
            let audit = fs::read_to_string(m.mnt.join("sys/audit")).unwrap();
            audit.lines().any(|l| l.contains("\"op\":\"gc\""))
        }),
        "the round that freed the chunks is in the flight recorder"
    );
}

#[test]
fn an_open_files_unclosed_writes_outlive_many_rounds() {
    let Some(mut m) = mounted() else {
        return;
    };
    let path = m.mem("a", "semantic").join("open.bin");
    let body = noise(2, 4 * MIB);
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .unwrap();
    // Whole chunks are sealed into the store at once but committed only at close: only the
    // collector's walk of the tree knows they are in use.
    f.write_all(&body).unwrap();
    let rounds = metric(&m, "agentfs_gc_rounds_total", "durable");
    assert!(wait_until(Duration::from_secs(20), || {
        metric(&m, "agentfs_gc_rounds_total", "durable") >= rounds + 5
    }));
    drop(f);
    assert!(fs::read(&path).unwrap() == body);
    m.remount();
    assert!(
        fs::read(&path).unwrap() == body,
        "the file reads back whole after a remount"
    );
}

#[test]
fn working_memory_frees_chunks_overwritten_before_close() {
    let Some(m) = mounted() else {
        return;
    };
    let path = m.mem("a", "working").join("scratch.bin");
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .unwrap();
    // Each pass seals 16 whole chunks that the next pass replaces before any commit.
    for pass in 0..4u64 {
        f.seek(SeekFrom::Start(0)).unwrap();
        f.write_all(&noise(10 + pass, 2 * MIB)).unwrap();
    }
    drop(f);
    assert!(
        wait_until(Duration::from_secs(20), || metric(
            &m,
            "agentfs_gc_freed_chunks_total",
            "working"
        ) >= 3 * 16),
        "freed {} chunks of working memory",
        metric(&m, "agentfs_gc_freed_chunks_total", "working")
    );
    assert!(fs::read(&path).unwrap() == noise(13, 2 * MIB));
}

#[test]
fn a_hold_file_keeps_the_collector_off() {
    let Some(m) = mounted() else {
        return;
    };
    let hold = m.data.join("gc.hold");
    fs::write(&hold, format!("{}\n", std::process::id())).unwrap();
    let file = m.mem("a", "semantic").join("doomed.bin");
    fs::write(&file, noise(7, 4 * MIB)).unwrap();
    fs::remove_file(&file).unwrap();
    // Ten rounds' worth of time: none may free anything while the hold names a live process.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(metric(&m, "agentfs_gc_freed_bytes_total", "durable"), 0);
    fs::remove_file(&hold).unwrap();
    assert!(wait_until(Duration::from_secs(20), || {
        metric(&m, "agentfs_gc_freed_bytes_total", "durable") >= 4 * MIB as u64
    }));
}
