//! Garbage collection of chunks, the core's half: which chunk ids the live tree holds, and the
//! background thread that runs a round every so often.
//!
//! The stores decide what is garbage ([`agentfs_memory::Store::collect_garbage`]): a chunk no
//! committed chunk map names, that no node holds and that nothing was handed out for two
//! rounds. The core's part is the second condition: every [`Slot::Clean`] of every node,
//! including files unlinked while open and `state/` checkpoints, because an open file's
//! sealed slots are not committed until it is closed. Reads copy bytes under the node's lock,
//! so no reader ever holds an id the walk cannot see.

use crate::error::Result;
use crate::node::{Body, Slot};
use crate::periodic::Periodic;
use crate::vfs::Vfs;
use agentfs_memory::{ChunkId, GcReport};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// A file in the data dir naming a live process (its pid) holds collection off: rounds are
/// skipped while it exists. `agentfs backup` writes it while it copies a mounted store, so no
/// chunk its copy of the database names can be punched out before its pack copy reads it.
pub const GC_HOLD_FILE: &str = "gc.hold";

/// Whether a live process holds collection off in `data_dir` (a stale hold is ignored).
fn held(data_dir: &std::path::Path) -> bool {
    let Ok(text) = std::fs::read_to_string(data_dir.join(GC_HOLD_FILE)) else {
        return false;
    };
    text.trim()
        .parse::<u32>()
        .is_ok_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
}

/// Totals since the mount, per store (`sys/metrics`).
#[derive(Debug, Default)]
pub(crate) struct GcTotals {
    pub rounds: AtomicU64,
    pub failures: AtomicU64,
    pub freed_chunks: AtomicU64,
    pub freed_bytes: AtomicU64,
    pub reclaimed_bytes: AtomicU64,
    pub suspects: AtomicU64,
}

impl GcTotals {
    fn add(&self, r: &GcReport) {
        self.rounds.fetch_add(1, Ordering::Relaxed);
        self.freed_chunks
            .fetch_add(r.freed_chunks, Ordering::Relaxed);
        self.freed_bytes.fetch_add(r.freed_bytes, Ordering::Relaxed);
        self.reclaimed_bytes
            .fetch_add(r.reclaimed_bytes, Ordering::Relaxed);
        self.suspects.store(r.suspects, Ordering::Relaxed);
    }
}

/// What one round did, per store.
#[derive(Debug, Default, Clone, Copy)]
pub struct GcRound {
    pub durable: GcReport,
    pub working: GcReport,
}

impl Vfs {
    /// The chunk ids the tree holds: `(durable store's, working memory's)`.
    fn held_chunks(&self) -> (HashSet<ChunkId>, HashSet<ChunkId>) {
        let nodes: Vec<_> = self.nodes.read().values().cloned().collect();
        let (mut durable, mut working) = (HashSet::new(), HashSet::new());
        for node in nodes {
            let n = node.read();
            let Body::File(file) = &n.body else { continue };
            let set = if n.class.is_volatile() {
                &mut working
            } else {
                &mut durable
            };
            for slot in file.slots.values() {
                match slot {
                    Slot::Clean(id) => {
                        set.insert(*id);
                    }
                    Slot::Pieces(pieces) => set.extend(pieces.iter().map(|p| p.id)),
                    Slot::Dirty(_) => {}
                }
            }
            // A dirty slot's stored prefix is what it seals back to when unchanged.
            for prefix in file.pending().iter().flat_map(|p| p.stored_prefix.values()) {
                set.extend(prefix.pieces.iter().map(|p| p.id));
            }
        }
        (durable, working)
    }

    /// Runs one round of garbage collection on both stores. What is freed is recorded in
    /// the flight recorder (`op: gc`); a round that frees nothing records nothing.
    pub fn collect_garbage(&self) -> Result<GcRound> {
        if held(&self.data_dir) {
            tracing::debug!("garbage collection held off by {GC_HOLD_FILE}");
            return Ok(GcRound::default());
        }
        let (durable_ids, working_ids) = self.held_chunks();
        let result = (|| {
            let durable = self.durable.collect_garbage(&durable_ids)?;
            let working = self.volatile.collect_garbage(&working_ids)?;
            Ok::<_, agentfs_memory::StoreError>(GcRound { durable, working })
        })();
        let round = match result {
            Ok(r) => r,
            Err(e) => {
                self.metrics.gc[0].failures.fetch_add(1, Ordering::Relaxed);
                return Err(e.into());
            }
        };
        self.metrics.gc[0].add(&round.durable);
        self.metrics.gc[1].add(&round.working);
        if round.durable.freed_chunks + round.working.freed_chunks > 0 {
            let detail = format!(
                "freed {} chunks ({} bytes) from the durable store, {} chunks ({} bytes) from \
                 working memory; {} bytes given back to the disk",
                round.durable.freed_chunks,
                round.durable.freed_bytes,
                round.working.freed_chunks,
                round.working.freed_bytes,
                round.durable.reclaimed_bytes,
            );
            self.record_event("gc", &detail)?;
        }
        Ok(round)
    }
}

/// Runs a round every `interval` on a thread of its own (stopped and joined by
/// [`Periodic::stop`] or on drop). The thread holds only a weak reference, so it never keeps a
/// dropped core alive.
pub fn start_collector(vfs: &Arc<Vfs>, interval: Duration) -> std::io::Result<Periodic> {
    let weak: Weak<Vfs> = Arc::downgrade(vfs);
    Periodic::start("agentfs-gc", interval, move || {
        let Some(vfs) = weak.upgrade() else { return };
        match vfs.collect_garbage() {
            Ok(r) => tracing::debug!(?r, "garbage collection round"),
            Err(e) => tracing::warn!(error = %e, "garbage collection round failed"),
        }
    })
}
