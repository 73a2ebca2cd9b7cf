//! File content: writes into per-file chunk buffers, truncation, and committing a file's
//! buffered state to its store (at close, fsync, truncate and shutdown).
//!
//! A write changes memory only, like a page cache: readers of the mount see it at once, and
//! the chunks reach the store when the file is closed or synced. Full chunks are sealed
//! (hashed and stored) as soon as a write completes them, so a long sequential write keeps at
//! most one partial chunk per file in RAM.

use crate::error::{Result, VfsError};
use crate::mutate::{drop_suidgid, hash_of, Txn, RECORDING};
use crate::node::{Body, Class, FileData, Node, Slot, StoredPrefix};
use crate::vfs::{now_ns, Vfs};
use agentfs_memory::{
    AppendRecord, AuditEntry, Batch, Change, ChunkId, Durability, Ino, Piece, Store, CHUNK_SIZE,
    MAX_PIECES,
};
use rayon::prelude::*;
use std::ops::Range;

/// Writes past 1 TiB get EFBIG.
pub const MAX_FILE_SIZE: u64 = 1 << 40;

/// A file with more chunks buffered in RAM than this has all of them sealed, bounding its
/// RAM use (32 MiB) under random writes.
const MAX_DIRTY_CHUNKS: usize = 256;

const CHUNK: u64 = CHUNK_SIZE as u64;

impl Vfs {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn write_data(
        &self,
        txn: &mut Txn,
        ino: Ino,
        offset: u64,
        data: &[u8],
        append: bool,
        kill_suidgid: bool,
        class: Class,
    ) -> Result<u32> {
        if data.is_empty() {
            // POSIX: a zero-length write changes nothing, wherever it points.
            return Ok(0);
        }
        let node = self.node(ino)?;
        let store = self.store_for(class).clone();
        let mut n = node.write();
        let old_size = n.attr.size;
        let offset = if append { old_size } else { offset };
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|e| *e <= MAX_FILE_SIZE)
            .ok_or(VfsError::FileTooBig)?;
        txn.entry.offset = offset;
        let hashing = WriteHashing {
            data,
            offset,
            whole: whole_chunks(offset, data),
            audit: RECORDING && txn.entry.data_hash.is_none(),
        };
        let hashed = match &txn.asker {
            // Decided under the write lock on the bytes the file will hold: no reader sees
            // the file between the decision and the change.
            Some(asker) => {
                self.decide_write(asker, &mut txn.entry, &n, class.memory_index(), &hashing)?
            }
            None => None,
        };
        // Pieces that tile the write hash every whole chunk once; were one missed, its
        // bytes would be dropped below, so check rather than trust.
        debug_assert!(hashed
            .as_ref()
            .is_none_or(|h| h.chunks.len() == hashing.whole.len()));
        let hashed = match hashed {
            Some(h) if h.chunks.len() == hashing.whole.len() => h,
            _ => hashing.all(),
        };
        let whole = hashing.whole;
        if hashed.audit.is_some() {
            txn.entry.data_hash = hashed.audit;
        }
        // After the policy: its append-only rule (a violation) answers first; this fixed
        // rule holds whatever the policy says.
        let episodic = n.class == Class::Episodic;
        if episodic && offset != old_size {
            return Err(VfsError::NotPermitted(
                "mem/episodic is append-only: writes go at the end",
            ));
        }
        let Body::File(file) = &mut n.body else {
            return Err(VfsError::IsDir);
        };
        // Chunks the write covers whole go straight to the store (no copy in RAM), stored in
        // parallel: a 1 MiB write is eight independent chunks.
        let put = |((idx, piece), id): (&(u64, &[u8]), &ChunkId)| {
            (*idx, store.put_hashed(*id, piece).ok())
        };
        let stored: Vec<(u64, Option<ChunkId>)> = if whole.len() > 1 {
            whole.par_iter().zip(&hashed.chunks).map(put).collect()
        } else {
            whole.iter().zip(&hashed.chunks).map(put).collect()
        };
        let mut pos = offset;
        let mut src = 0usize;
        while pos < end {
            let idx = pos / CHUNK;
            let in_chunk = (pos % CHUNK) as usize;
            let take = ((CHUNK - pos % CHUNK).min(end - pos)) as usize;
            let piece = &data[src..src + take];
            file.pending_mut().unsynced.insert(idx);
            pos += take as u64;
            src += take;
            if let Some((_, Some(id))) = stored.iter().find(|(i, _)| *i == idx) {
                set_slot(file, idx, Slot::Clean(*id));
                continue;
            }
            let buf = dirty_slot(file, idx, store.as_ref(), in_chunk)?;
            if buf.len() == in_chunk {
                buf.extend_from_slice(piece);
            } else {
                if buf.len() < in_chunk + take {
                    buf.resize(in_chunk + take, 0);
                }
                buf[in_chunk..in_chunk + take].copy_from_slice(piece);
            }
        }
        file.dirty = true;
        // Seal chunks this write completed; a failure (full disk) leaves them dirty and is
        // reported by the commit at close.
        let first = offset / CHUNK;
        let last_complete = end / CHUNK;
        for idx in first..last_complete {
            let full =
                matches!(file.slots.get(&idx), Some(Slot::Dirty(b)) if b.len() == CHUNK_SIZE);
            if full {
                let _ = seal_one(file, idx, store.as_ref());
            }
        }
        if file.dirty_slots > MAX_DIRTY_CHUNKS {
            let _ = seal_all(file, store.as_ref());
        }
        let now = now_ns();
        if episodic {
            file.pending_mut().appends.push(AppendRecord {
                ino,
                offset,
                len: data.len() as u64,
                time: now,
            });
        }
        n.attr.size = old_size.max(end);
        n.attr.mtime = now;
        n.attr.ctime = now;
        if kill_suidgid {
            // Committed with the data at close, like the size.
            n.attr.perm = drop_suidgid(n.attr.perm);
        }
        let grown = n.attr.size - old_size;
        if grown > 0 {
            self.count_bytes(&n, grown as i64);
        }
        Ok(data.len() as u32)
    }

    pub(crate) fn count_bytes(&self, n: &Node, delta: i64) {
        if let (Some(agent), Some(ci)) = (n.agent.as_deref(), n.class.memory_index()) {
            if let Some(a) = self.agent(agent) {
                a.add_bytes(ci, delta);
            }
        }
    }

    /// Cuts or extends a file held under its write lock. Content past the new end is gone;
    /// growing adds a hole.
    pub(crate) fn truncate_locked(&self, n: &mut Node, new_size: u64) -> Result<()> {
        if new_size > MAX_FILE_SIZE {
            return Err(VfsError::FileTooBig);
        }
        let old_size = n.attr.size;
        let store = self.store_for(n.class).clone();
        let Body::File(file) = &mut n.body else {
            return Err(VfsError::IsDir);
        };
        if new_size < old_size {
            let keep = new_size.div_ceil(CHUNK);
            let dropped: Vec<u64> = file.slots.range(keep..).map(|(k, _)| *k).collect();
            for idx in dropped {
                remove_slot(file, idx);
            }
            let pending = file.pending_mut();
            pending.unsynced.retain(|idx| *idx < keep);
            pending.truncated_from = Some(pending.truncated_from.map_or(keep, |t| t.min(keep)));
            let cut = (new_size % CHUNK) as usize;
            if cut != 0 {
                let idx = new_size / CHUNK;
                if file.slots.contains_key(&idx) {
                    let buf = dirty_slot(file, idx, store.as_ref(), cut)?;
                    buf.truncate(cut);
                    file.pending_mut().unsynced.insert(idx);
                }
            }
        }
        file.dirty = true;
        n.attr.size = new_size;
        self.count_bytes(n, new_size as i64 - old_size as i64);
        Ok(())
    }

    /// Commits a file's buffered content and attributes (close, fsync, shutdown).
    pub(crate) fn commit_file(&self, ino: Ino, durability: Durability) -> Result<()> {
        let Ok(node) = self.node(ino) else {
            return Ok(());
        };
        let mut n = node.write();
        let needs = matches!(&n.body, Body::File(f) if f.dirty);
        if !needs {
            return Ok(());
        }
        let class = n.class;
        let mut batch = self.file_batch(&mut n)?;
        let ticket = match (&n.agent, class) {
            (Some(agent), Class::Semantic) => Some(self.outbox.mark(&mut batch, agent)),
            _ => None,
        };
        if let Err(e) = self.commit_batch(class, batch, durability, None) {
            if let Some(t) = ticket {
                t.cancel();
            }
            return Err(e);
        }
        mark_synced(&mut n);
        drop(n);
        if let Some(t) = ticket {
            t.committed();
            self.index_committed(ino, Some(t));
        }
        Ok(())
    }

    /// Seals a file's dirty chunks and describes its state as a batch. The caller commits it
    /// and then calls [`mark_synced`].
    pub(crate) fn file_batch(&self, n: &mut Node) -> Result<Batch> {
        let ino = n.attr.ino;
        let store = self.store_for(n.class).clone();
        let mut batch = Batch::new();
        if let Body::File(file) = &mut n.body {
            seal_all(file, store.as_ref())?;
            if let Some(pending) = file.pending() {
                if let Some(from) = pending.truncated_from {
                    batch.push(Change::TruncateChunks {
                        ino,
                        from_index: from,
                    });
                }
                if !pending.unsynced.is_empty() {
                    let slots = pending
                        .unsynced
                        .iter()
                        .map(|idx| (*idx, file.slots.get(idx)));
                    push_slots(&mut batch, ino, slots);
                }
                batch
                    .changes
                    .extend(pending.appends.iter().copied().map(Change::Append));
            }
        }
        batch.push(Change::PutInode(n.attr.clone()));
        Ok(batch)
    }

    /// Commits `batch` to the store of `class`, with the queued audit entries and `entry`
    /// riding along in the same transaction when the store is the durable one.
    pub(crate) fn commit_batch(
        &self,
        class: Class,
        mut batch: Batch,
        durability: Durability,
        entry: Option<AuditEntry>,
    ) -> Result<()> {
        if class.is_volatile() {
            self.volatile.commit(batch, durability)?;
            if let Some(entry) = entry {
                self.queue_audit(entry);
            }
            return Ok(());
        }
        let pending: Vec<AuditEntry> = self.pending_audit.lock().drain(..).collect();
        batch
            .changes
            .extend(pending.iter().cloned().map(|e| Change::Audit(Box::new(e))));
        if let Some(entry) = entry {
            batch.push(Change::Audit(Box::new(entry)));
        }
        if let Err(e) = self.durable.commit(batch, durability) {
            // Not recorded: put the queued entries back in front.
            let mut q = self.pending_audit.lock();
            for entry in pending.into_iter().rev() {
                q.push_front(entry);
            }
            return Err(e.into());
        }
        Ok(())
    }
}

/// After a successful commit of [`Vfs::file_batch`].
pub(crate) fn mark_synced(n: &mut Node) {
    if let Body::File(file) = &mut n.body {
        file.settle();
    }
}

/// The `(chunk index, bytes)` of every chunk a write of `data` at `offset` covers entirely.
fn whole_chunks(offset: u64, data: &[u8]) -> Vec<(u64, &[u8])> {
    let first = offset.div_ceil(CHUNK);
    let end = offset + data.len() as u64;
    (first..end / CHUNK)
        .map(|idx| {
            let start = (idx * CHUNK - offset) as usize;
            (idx, &data[start..start + CHUNK_SIZE])
        })
        .collect()
}

/// What a write hashes before it is applied: its bytes for the audit entry (when `audit`)
/// and each chunk it covers whole, for the store. A large write does it beside its content
/// scan ([`Vfs::decide_write`]); otherwise [`WriteHashing::all`] does it on its own.
pub(crate) struct WriteHashing<'a> {
    data: &'a [u8],
    /// Where `data` goes in the file.
    offset: u64,
    /// The chunks `data` covers whole ([`whole_chunks`]).
    whole: Vec<(u64, &'a [u8])>,
    audit: bool,
}

/// The hashes of a [`WriteHashing`].
pub(crate) struct WriteHashes {
    pub audit: Option<[u8; 32]>,
    /// The id of each whole chunk, in the order of [`WriteHashing::whole`].
    pub chunks: Vec<ChunkId>,
}

impl<'a> WriteHashing<'a> {
    /// The written bytes.
    pub(crate) fn data(&self) -> &'a [u8] {
        self.data
    }

    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    /// The audit hash, on all cores for a large write; `None` when not asked for.
    pub(crate) fn audit_hash(&self) -> Option<[u8; 32]> {
        self.audit.then(|| hash_of(self.data))
    }

    /// The ids of the whole chunks that start in `range` (file offsets), in order. Ranges
    /// that tile the write hash each chunk once.
    pub(crate) fn chunks_starting_in(&self, range: Range<u64>) -> Vec<ChunkId> {
        self.whole
            .iter()
            .filter(|(idx, _)| range.contains(&(idx * CHUNK)))
            .map(|(_, chunk)| ChunkId::of(chunk))
            .collect()
    }

    /// Every hash, on all cores when there is enough to share.
    pub(crate) fn all(&self) -> WriteHashes {
        let chunk_ids = || -> Vec<ChunkId> {
            if self.whole.len() > 1 {
                self.whole.par_iter().map(|(_, c)| ChunkId::of(c)).collect()
            } else {
                self.whole.iter().map(|(_, c)| ChunkId::of(c)).collect()
            }
        };
        let (audit, chunks) = match (self.audit, self.whole.is_empty()) {
            (false, _) => (None, chunk_ids()),
            (true, true) => (self.audit_hash(), Vec::new()),
            (true, false) => rayon::join(|| self.audit_hash(), chunk_ids),
        };
        WriteHashes { audit, chunks }
    }
}

/// Puts `slot` at `idx`, keeping the count of dirty slots right.
fn set_slot(file: &mut FileData, idx: u64, slot: Slot) {
    file.take_stored_prefix(idx);
    let now_dirty = matches!(slot, Slot::Dirty(_));
    let was_dirty = matches!(file.slots.insert(idx, slot), Some(Slot::Dirty(_)));
    file.dirty_slots = file.dirty_slots + usize::from(now_dirty) - usize::from(was_dirty);
}

fn remove_slot(file: &mut FileData, idx: u64) {
    file.take_stored_prefix(idx);
    if let Some(Slot::Dirty(_)) = file.slots.remove(&idx) {
        file.dirty_slots -= 1;
    }
}

/// The slot `idx` as a writable buffer, loading its stored bytes first. The caller is about
/// to change the buffer from byte `changes_from` on: a stored prefix reaching past that is
/// forgotten.
fn dirty_slot<'a>(
    file: &'a mut FileData,
    idx: u64,
    store: &dyn Store,
    changes_from: usize,
) -> Result<&'a mut Vec<u8>> {
    let loaded = match file.slots.get(&idx) {
        Some(Slot::Dirty(_)) => None,
        Some(stored @ (Slot::Clean(_) | Slot::Pieces(_))) => {
            let mut buf = vec![0u8; CHUNK_SIZE];
            let n = read_stored(store, stored, 0, &mut buf)?;
            buf.truncate(n);
            let pieces = match stored {
                Slot::Clean(id) => vec![Piece {
                    id: *id,
                    len: n as u32,
                }],
                Slot::Pieces(p) => p.to_vec(),
                Slot::Dirty(_) => Vec::new(),
            };
            Some((buf, Some(StoredPrefix { pieces, len: n })))
        }
        None => Some((Vec::new(), None)),
    };
    if let Some((buf, prefix)) = loaded {
        set_slot(file, idx, Slot::Dirty(buf));
        if let Some(prefix) = prefix.filter(|p| p.len > 0) {
            file.pending_mut().stored_prefix.insert(idx, prefix);
        }
    }
    if file
        .pending()
        .and_then(|p| p.stored_prefix.get(&idx))
        .is_some_and(|p| changes_from < p.len)
    {
        file.take_stored_prefix(idx);
    }
    match file.slots.get_mut(&idx) {
        Some(Slot::Dirty(buf)) => Ok(buf),
        _ => Err(VfsError::Invalid("chunk slot")),
    }
}

/// Reads the stored slot `slot` (`Clean` or `Pieces`) from byte `offset` into `dst`; returns
/// how many bytes it holds there (the rest of `dst` is past its end).
pub(crate) fn read_stored(
    store: &dyn Store,
    slot: &Slot,
    offset: usize,
    dst: &mut [u8],
) -> Result<usize> {
    match slot {
        Slot::Clean(id) => Ok(store.read_at(id, offset, dst)?),
        Slot::Pieces(pieces) => {
            let mut filled = 0;
            let mut start = 0usize;
            for p in pieces.iter() {
                let end = start + p.len as usize;
                let at = offset + filled;
                if filled < dst.len() && at < end {
                    let want = (end - at).min(dst.len() - filled);
                    let got = store.read_at(&p.id, at - start, &mut dst[filled..filled + want])?;
                    if got < want {
                        // The next piece's bytes would land in the wrong place.
                        return Err(agentfs_memory::StoreError::Corrupt(format!(
                            "chunk {:?} holds fewer bytes than its piece of a slot says",
                            p.id
                        ))
                        .into());
                    }
                    filled += got;
                }
                start = end;
            }
            Ok(filled)
        }
        Slot::Dirty(_) => Err(VfsError::Invalid("a dirty slot is not stored")),
    }
}

/// Adds to `batch` the changes that commit `slots` of file `ino`: `SetChunks` for whole
/// chunks and holes (`None`, or a dirty slot, which sealing has just emptied), one
/// `SetPieces` per slot held in pieces.
pub(crate) fn push_slots<'a>(
    batch: &mut Batch,
    ino: Ino,
    slots: impl Iterator<Item = (u64, Option<&'a Slot>)>,
) {
    let mut chunks = Vec::with_capacity(slots.size_hint().0);
    for (idx, slot) in slots {
        match slot {
            Some(Slot::Clean(id)) => chunks.push((idx, Some(*id))),
            Some(Slot::Pieces(pieces)) => batch.push(Change::SetPieces {
                ino,
                idx,
                pieces: pieces.to_vec(),
            }),
            Some(Slot::Dirty(_)) | None => chunks.push((idx, None)),
        }
    }
    if !chunks.is_empty() {
        batch.push(Change::SetChunks { ino, chunks });
    }
}

/// How many of a slot's stored pieces to keep when `added` bytes follow them: the trailing
/// pieces no longer than what is stored after them are merged into the new piece, so piece
/// lengths at least double from the end backwards (like a binary counter). A slot then has
/// at most about log2(CHUNK_SIZE) pieces, and each byte is stored again at most that many
/// times, instead of once per append. A full chunk is always stored whole (0: keep none).
pub(crate) fn pieces_to_keep(stored: &[Piece], added: usize) -> usize {
    let stored_len: usize = stored.iter().map(|p| p.len as usize).sum();
    if added == 0 || stored_len + added >= CHUNK_SIZE {
        return 0;
    }
    let mut keep = stored.len();
    let mut tail = added;
    while keep > 0 && stored[keep - 1].len as usize <= tail {
        tail += stored[keep - 1].len as usize;
        keep -= 1;
    }
    if keep + 1 > MAX_PIECES {
        0
    } else {
        keep
    }
}

/// Stores the dirty slot `idx` and replaces it by its stored form: the slot's pieces when it
/// only grew since it was loaded, else one chunk.
fn seal_one(file: &mut FileData, idx: u64, store: &dyn Store) -> Result<()> {
    let prefix = file.take_stored_prefix(idx);
    let sealed = match file.slots.get(&idx) {
        Some(Slot::Dirty(buf)) if buf.is_empty() => {
            // An empty buffer is a hole.
            remove_slot(file, idx);
            file.pending_mut().unsynced.insert(idx);
            return Ok(());
        }
        Some(Slot::Dirty(buf)) => match prefix.filter(|p| p.len <= buf.len()) {
            Some(p) if p.len == buf.len() => stored_slot(p.pieces),
            Some(p) => {
                let keep = pieces_to_keep(&p.pieces, buf.len() - p.len);
                if keep == 0 {
                    Slot::Clean(store.put_chunk(buf)?)
                } else {
                    let from: usize = p.pieces[..keep].iter().map(|q| q.len as usize).sum();
                    let tail = &buf[from..];
                    let mut pieces = p.pieces[..keep].to_vec();
                    pieces.push(Piece {
                        id: store.put_chunk(tail)?,
                        len: tail.len() as u32,
                    });
                    stored_slot(pieces)
                }
            }
            None => Slot::Clean(store.put_chunk(buf)?),
        },
        _ => return Ok(()),
    };
    set_slot(file, idx, sealed);
    Ok(())
}

/// A stored slot of `pieces`: one piece is a plain chunk.
fn stored_slot(pieces: Vec<Piece>) -> Slot {
    match pieces.as_slice() {
        [one] => Slot::Clean(one.id),
        _ => Slot::Pieces(pieces.into()),
    }
}

fn seal_all(file: &mut FileData, store: &dyn Store) -> Result<()> {
    if file.dirty_slots == 0 {
        return Ok(());
    }
    let dirty: Vec<u64> = file
        .slots
        .iter()
        .filter(|(_, s)| matches!(s, Slot::Dirty(_)))
        .map(|(k, _)| *k)
        .collect();
    for idx in dirty {
        seal_one(file, idx, store)?;
    }
    Ok(())
}
