//! [`RamStore`]: working memory. Chunks and metadata live in RAM and vanish with the daemon.
//!
//! Chunk bytes sit in [`SHARDS`] hash maps, each behind its own `RwLock`, so reads of
//! different chunks never contend and writers of different chunks rarely do. Metadata lives in
//! ordered maps behind one mutex that only `commit` and `load` take.
//!
//! # When chunk bytes are freed
//!
//! Each chunk has a reference count computed from the chunk maps (how many file slots name it).
//! When a commit drops the last reference, the bytes are freed at the end of that commit. A
//! chunk that was put but has not yet been referenced by a commit is *unclaimed*: it is never
//! freed, because the writer that put it may be about to commit a `SetChunks` naming it (a
//! `put_chunk` that deduplicates against a chunk some commit is releasing must not lose it).
//! Each `put_chunk` adds one claim-to-be and each new reference in a commit settles one. A
//! slot committed again with a chunk it already named (such as the pieces a growing slot
//! keeps) is not a new reference: nobody put that chunk for this commit. A new slot naming a
//! chunk nobody put for it would still settle a claim; only a same-store checkpoint copy does
//! that, and the core makes those in the durable store, which has no claims. A chunk put but
//! never referenced (a write superseded before it was committed, or the same bytes put twice
//! for one slot) lingers until the garbage collector
//! ([`Store::collect_garbage`]) finds nothing references it for two rounds.

use crate::audit::{canonical_body, AuditRecord, ChainHead};
use crate::checks::{check_batch, check_chunk_len, is_reserved_meta, missing_chunk};
use crate::sync::{AtomicU32, AtomicU64, Mutex, Ordering, RwLock};
use crate::{
    AppendRecord, Batch, Change, ChunkId, Durability, GcReport, Ino, InodeRecord, LoadedState,
    Piece, Store, StoreError,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// Number of chunk-map shards; a power of two so the shard is a mask of the hash's first byte.
const SHARDS: usize = 64;

/// One chunk held in RAM.
struct RamChunk {
    data: Arc<[u8]>,
    /// `put_chunk` calls not yet settled by a committed reference (see the module docs).
    unclaimed: AtomicU32,
    /// The garbage-collection round in which `put_chunk` last returned this chunk.
    stamp: AtomicU64,
}

/// The committed metadata tables, ordered like the SQLite primary keys so `load` matches.
#[derive(Default)]
struct Tables {
    inodes: BTreeMap<Ino, InodeRecord>,
    dirents: BTreeMap<(Ino, Vec<u8>), Ino>,
    chunks: BTreeMap<(Ino, u64), RamSlot>,
    xattrs: BTreeMap<(Ino, Vec<u8>), Vec<u8>>,
    meta: BTreeMap<String, String>,
    /// How many chunk-map slots name each chunk; absent means zero.
    refs: HashMap<ChunkId, u64>,
    /// Audit entries committed, chained like the durable store's (tests use a RamStore as the
    /// durable store; as working memory it never receives entries).
    audit: Vec<AuditRecord>,
    chain: ChainHead,
    /// `(ino, offset)` → the append.
    appends: BTreeMap<(Ino, u64), AppendRecord>,
}

/// What a committed chunk-map slot names.
#[derive(Clone)]
enum RamSlot {
    Whole(ChunkId),
    Pieces(Vec<Piece>),
}

impl RamSlot {
    fn ids(&self) -> Vec<ChunkId> {
        match self {
            RamSlot::Whole(id) => vec![*id],
            RamSlot::Pieces(pieces) => pieces.iter().map(|p| p.id).collect(),
        }
    }
}

/// Store that keeps everything in RAM. See the module docs for when chunk bytes are freed.
pub struct RamStore {
    shards: Box<[RwLock<HashMap<ChunkId, RamChunk>>]>,
    tables: Mutex<Tables>,
    bytes: AtomicU64,
    /// The current garbage-collection round.
    round: AtomicU64,
    /// Chunks the last round found unreferenced (held while a round runs).
    suspects: Mutex<HashSet<ChunkId>>,
}

impl Default for RamStore {
    fn default() -> Self {
        Self::new()
    }
}

impl RamStore {
    /// An empty store.
    pub fn new() -> Self {
        RamStore {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            tables: Mutex::new(Tables::default()),
            bytes: AtomicU64::new(0),
            round: AtomicU64::new(0),
            suspects: Mutex::new(HashSet::new()),
        }
    }

    /// Number of audit entries committed.
    pub fn audit_count(&self) -> u64 {
        self.tables.lock().audit.len() as u64
    }

    /// Number of distinct chunks held.
    pub fn chunk_count(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }

    fn shard(&self, id: &ChunkId) -> &RwLock<HashMap<ChunkId, RamChunk>> {
        &self.shards[usize::from(id.0[0]) & (SHARDS - 1)]
    }

    fn holds(&self, id: &ChunkId) -> bool {
        self.shard(id).read().contains_key(id)
    }

    /// Settles one pending claim of `id` (a commit now references it).
    fn settle_claim(&self, id: &ChunkId) {
        if let Some(chunk) = self.shard(id).read().get(id) {
            let _ = chunk
                .unclaimed
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        }
    }

    /// Frees `id` if nothing references it and no writer may still claim it. Called with the
    /// tables locked, so `refs` cannot change underneath.
    fn free_if_unused(&self, tables: &Tables, id: &ChunkId) {
        if tables.refs.contains_key(id) {
            return;
        }
        let mut shard = self.shard(id).write();
        let unused = shard
            .get(id)
            .is_some_and(|c| c.unclaimed.load(Ordering::Acquire) == 0);
        if unused {
            if let Some(chunk) = shard.remove(id) {
                self.bytes
                    .fetch_sub(chunk.data.len() as u64, Ordering::Relaxed);
            }
        }
    }
}

impl Tables {
    fn add_ref(&mut self, id: ChunkId) {
        *self.refs.entry(id).or_insert(0) += 1;
    }

    /// Whether the committed slot `idx` of `ino` names chunk `id` already.
    fn slot_names(&self, ino: Ino, idx: u64, id: &ChunkId) -> bool {
        self.chunks
            .get(&(ino, idx))
            .is_some_and(|slot| slot.ids().contains(id))
    }

    /// Drops the references of a slot that is gone or replaced.
    fn drop_refs(&mut self, slot: &RamSlot, released: &mut Vec<ChunkId>) {
        for id in slot.ids() {
            self.drop_ref(id, released);
        }
    }

    /// Drops one reference; records the chunk in `released` when it was the last.
    fn drop_ref(&mut self, id: ChunkId, released: &mut Vec<ChunkId>) {
        if let Some(n) = self.refs.get_mut(&id) {
            *n -= 1;
            if *n == 0 {
                self.refs.remove(&id);
                released.push(id);
            }
        }
    }

    /// [`Change::CopyNodes`], as the durable store's `INSERT … SELECT`s do it.
    fn copy_nodes(&mut self, pairs: &[(Ino, Ino)], released: &mut Vec<ChunkId>) {
        let dst_of: HashMap<Ino, Ino> = pairs.iter().copied().collect();
        for &(src, dst) in pairs {
            if let Some(rec) = self.inodes.get(&src) {
                let rec = InodeRecord {
                    ino: dst,
                    ..rec.clone()
                };
                self.inodes.insert(dst, rec);
            }
            let slots: Vec<(u64, RamSlot)> = self
                .chunks
                .range((src, 0)..=(src, u64::MAX))
                .map(|((_, idx), slot)| (*idx, slot.clone()))
                .collect();
            for (idx, slot) in slots {
                for id in slot.ids() {
                    self.add_ref(id);
                }
                if let Some(old) = self.chunks.insert((dst, idx), slot) {
                    self.drop_refs(&old, released);
                }
            }
            let xattrs: Vec<(Vec<u8>, Vec<u8>)> = self
                .xattrs
                .range((src, Vec::new())..)
                .take_while(|((ino, _), _)| *ino == src)
                .map(|((_, name), value)| (name.clone(), value.clone()))
                .collect();
            for (name, value) in xattrs {
                self.xattrs.insert((dst, name), value);
            }
            let entries: Vec<(Vec<u8>, Ino)> = self
                .dirents
                .range((src, Vec::new())..)
                .take_while(|((parent, _), _)| *parent == src)
                .filter_map(|((_, name), child)| Some((name.clone(), *dst_of.get(child)?)))
                .collect();
            for (name, child) in entries {
                self.dirents.insert((dst, name), child);
            }
        }
    }

    /// Applies one change that has already been validated; cannot fail.
    fn apply(&mut self, change: Change, released: &mut Vec<ChunkId>, claimed: &mut Vec<ChunkId>) {
        match change {
            Change::PutInode(rec) => {
                self.inodes.insert(rec.ino, rec);
            }
            Change::DeleteInode(ino) => {
                self.inodes.remove(&ino);
                self.appends.retain(|(i, _), _| *i != ino);
                let slots: Vec<(Ino, u64)> = self
                    .chunks
                    .range((ino, 0)..=(ino, u64::MAX))
                    .map(|(k, _)| *k)
                    .collect();
                for key in slots {
                    if let Some(old) = self.chunks.remove(&key) {
                        self.drop_refs(&old, released);
                    }
                }
                let names: Vec<(Ino, Vec<u8>)> = self
                    .xattrs
                    .range((ino, Vec::new())..)
                    .take_while(|((i, _), _)| *i == ino)
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in names {
                    self.xattrs.remove(&key);
                }
            }
            Change::PutDirent { parent, name, ino } => {
                self.dirents.insert((parent, name), ino);
            }
            Change::DeleteDirent { parent, name } => {
                self.dirents.remove(&(parent, name));
            }
            Change::SetChunks { ino, chunks } => {
                for (idx, slot) in chunks {
                    // Add the new reference before dropping the old one so rewriting a slot
                    // with the chunk it already holds never frees that chunk.
                    let old = match slot {
                        Some(id) => {
                            self.add_ref(id);
                            if !self.slot_names(ino, idx, &id) {
                                claimed.push(id);
                            }
                            self.chunks.insert((ino, idx), RamSlot::Whole(id))
                        }
                        None => self.chunks.remove(&(ino, idx)),
                    };
                    if let Some(old) = old {
                        self.drop_refs(&old, released);
                    }
                }
            }
            Change::SetPieces { ino, idx, pieces } => {
                for p in &pieces {
                    self.add_ref(p.id);
                    // The pieces a slot keeps from its last commit were not put for this
                    // one: settling a claim for them would take another writer's.
                    if !self.slot_names(ino, idx, &p.id) {
                        claimed.push(p.id);
                    }
                }
                if let Some(old) = self.chunks.insert((ino, idx), RamSlot::Pieces(pieces)) {
                    self.drop_refs(&old, released);
                }
            }
            Change::TruncateChunks { ino, from_index } => {
                let slots: Vec<(Ino, u64)> = self
                    .chunks
                    .range((ino, from_index)..=(ino, u64::MAX))
                    .map(|(k, _)| *k)
                    .collect();
                for key in slots {
                    if let Some(old) = self.chunks.remove(&key) {
                        self.drop_refs(&old, released);
                    }
                }
            }
            Change::SetXattr { ino, name, value } => {
                self.xattrs.insert((ino, name), value);
            }
            Change::RemoveXattr { ino, name } => {
                self.xattrs.remove(&(ino, name));
            }
            Change::SetMeta { key, value } => {
                self.meta.insert(key, value);
            }
            Change::Append(a) => {
                self.appends.insert((a.ino, a.offset), a);
            }
            Change::DeleteMetaIf { key, value } => {
                if self.meta.get(&key) == Some(&value) {
                    self.meta.remove(&key);
                }
            }
            // Refused by `check_batch`: only the durable store's collector writes it.
            Change::DropChunks(_) | Change::MoveChunks(_) => {}
            Change::CopyNodes(pairs) => self.copy_nodes(&pairs, released),
            // Decoded by `commit` before anything is applied.
            Change::Encoded(_) => {}
            Change::Audit(entry) => {
                let prev_hash = self.chain.hash;
                let (seq, hash) = self.chain.advance(&canonical_body(&entry));
                self.audit.push(AuditRecord {
                    seq,
                    entry: *entry,
                    prev_hash,
                    hash,
                });
            }
        }
    }
}

impl Store for RamStore {
    fn put_hashed(&self, id: ChunkId, data: &[u8]) -> Result<ChunkId, StoreError> {
        check_chunk_len(data.len())?;
        debug_assert_eq!(id, ChunkId::of(data), "put_hashed with another chunk's id");
        let round = self.round.load(Ordering::Acquire);
        if let Some(chunk) = self.shard(&id).read().get(&id) {
            chunk.unclaimed.fetch_add(1, Ordering::AcqRel);
            chunk.stamp.store(round, Ordering::Release);
            return Ok(id);
        }
        let mut shard = self.shard(&id).write();
        match shard.get(&id) {
            // Another thread stored the same bytes between our read and write lock.
            Some(chunk) => {
                chunk.unclaimed.fetch_add(1, Ordering::AcqRel);
                chunk.stamp.store(round, Ordering::Release);
            }
            None => {
                shard.insert(
                    id,
                    RamChunk {
                        data: Arc::from(data),
                        unclaimed: AtomicU32::new(1),
                        stamp: AtomicU64::new(round),
                    },
                );
                self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        Ok(id)
    }

    fn read_at(&self, id: &ChunkId, offset: usize, buf: &mut [u8]) -> Result<usize, StoreError> {
        // Clone the Arc and copy outside the lock so a big copy never blocks a writer.
        let data = match self.shard(id).read().get(id) {
            Some(chunk) => Arc::clone(&chunk.data),
            None => return Err(missing_chunk(id)),
        };
        let Some(rest) = data.get(offset..) else {
            return Ok(0);
        };
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        Ok(n)
    }

    fn commit(&self, batch: Batch, _durability: Durability) -> Result<(), StoreError> {
        let mut tables = self.tables.lock();
        // Validate everything first: applying to the in-memory maps cannot be undone, so a
        // batch that would fail must be refused before anything changes. No chunk can be freed
        // between this check and the apply because only commits free, under `tables`.
        check_batch(&batch, |id| self.holds(id))?;
        let changes = decoded(batch.changes)?;
        let mut released = Vec::new();
        let mut claimed = Vec::new();
        for change in changes {
            tables.apply(change, &mut released, &mut claimed);
        }
        for id in &claimed {
            self.settle_claim(id);
        }
        // Free at the end, not as references drop: a batch may move a chunk from one slot to
        // another, dropping its count to zero only for a moment.
        for id in &released {
            self.free_if_unused(&tables, id);
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn load(&self) -> Result<LoadedState, StoreError> {
        let t = self.tables.lock();
        Ok(LoadedState {
            inodes: t.inodes.values().cloned().collect(),
            dirents: t
                .dirents
                .iter()
                .map(|((p, n), i)| (*p, n.clone(), *i))
                .collect(),
            chunks: t
                .chunks
                .iter()
                .filter_map(|((i, x), s)| match s {
                    RamSlot::Whole(id) => Some((*i, *x, *id)),
                    RamSlot::Pieces(_) => None,
                })
                .collect(),
            pieces: t
                .chunks
                .iter()
                .filter_map(|((i, x), s)| match s {
                    RamSlot::Pieces(p) => Some((*i, *x, p.clone())),
                    RamSlot::Whole(_) => None,
                })
                .collect(),
            xattrs: t
                .xattrs
                .iter()
                .map(|((i, n), v)| (*i, n.clone(), v.clone()))
                .collect(),
            meta: t
                .meta
                .iter()
                .filter(|(k, _)| !is_reserved_meta(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }

    fn chunk_bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Frees chunks that were put but that no commit references, by the rule of
    /// [`Store::collect_garbage`] (committed references free their chunks at once, at the
    /// commit that drops the last one). Runs under the tables lock, so no commit can add a
    /// reference meanwhile, and takes each shard's write lock, so no `put_chunk` can hand out
    /// a chunk while it is being freed.
    fn collect_garbage(&self, live: &HashSet<ChunkId>) -> Result<GcReport, StoreError> {
        let mut suspects = self.suspects.lock();
        let round = self.round.load(Ordering::Acquire);
        let tables = self.tables.lock();
        let mut next = HashSet::new();
        let mut report = GcReport::default();
        for shard in self.shards.iter() {
            shard.write().retain(|id, chunk| {
                if tables.refs.contains_key(id) || live.contains(id) {
                    return true;
                }
                let quiet = chunk.stamp.load(Ordering::Acquire).saturating_add(2) <= round;
                if quiet && suspects.contains(id) {
                    report.freed_chunks += 1;
                    report.freed_bytes += chunk.data.len() as u64;
                    return false;
                }
                next.insert(*id);
                true
            });
        }
        drop(tables);
        self.bytes.fetch_sub(report.freed_bytes, Ordering::Relaxed);
        // RAM given back is the bytes freed (no file to punch).
        report.reclaimed_bytes = report.freed_bytes;
        report.suspects = next.len() as u64;
        *suspects = next;
        self.round.fetch_add(1, Ordering::AcqRel);
        Ok(report)
    }

    fn appends(&self, ino: Ino) -> Result<Vec<AppendRecord>, StoreError> {
        let t = self.tables.lock();
        Ok(t.appends
            .range((ino, 0)..=(ino, u64::MAX))
            .map(|(_, a)| *a)
            .collect())
    }

    fn audit_after(
        &self,
        after: u64,
        agent: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let t = self.tables.lock();
        // Entries are numbered from 1 without gaps: entry `seq` is at index `seq - 1`.
        let start = (after.min(t.audit.len() as u64)) as usize;
        Ok(t.audit[start..]
            .iter()
            .filter(|r| agent.is_none_or(|a| r.entry.agent == a))
            .take(limit)
            .cloned()
            .collect())
    }
}

/// `changes` with every run of encoded changes read back into the changes it holds.
fn decoded(changes: Vec<Change>) -> Result<Vec<Change>, StoreError> {
    if !changes.iter().any(|c| matches!(c, Change::Encoded(_))) {
        return Ok(changes);
    }
    let mut out = Vec::with_capacity(changes.len());
    for change in changes {
        match change {
            Change::Encoded(e) => out.extend(e.decode()?),
            other => out.push(other),
        }
    }
    Ok(out)
}
