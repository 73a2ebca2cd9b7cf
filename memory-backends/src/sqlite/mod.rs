//! [`SqliteStore`]: the durable store. Metadata in one SQLite database (WAL) fed through a
//! write-ahead journal, chunk bytes in append-only pack files beside it. `docs/storage.md` gives
//! the layout and the reasoning.
//!
//! * `lock`: one daemon per data dir (`flock`).
//! * `schema`: tables, version check, connection settings.
//! * `packs`: the pack files (parallel `pwrite`/`pread`).
//! * `journal`: the write-ahead journal: one record per commit, replay at open.
//! * `applier`: the thread that copies journal records into SQLite.
//! * `tables`: rows in and out, one function per change kind.
//! * `errors`: SQLite/I/O errors to [`StoreError`].

mod applier;
mod auditlog;
mod errors;
mod head;
mod journal;
mod lock;
mod packs;
mod schema;
mod tables;

use crate::audit::{canonical_body, AuditRecord, ChainHead};
use crate::checks::{check_batch, check_chunk_len, missing_chunk};
use crate::Change;
use crate::{
    AppendRecord, Batch, ChunkId, Durability, GcReport, Ino, LoadedState, Store, StoreError,
};
use applier::Applier;
use head::HeadPin;
use journal::{Journal, Link, Record, SEGMENT_LIMIT};

pub use auditlog::{AuditLog, Problem, ProblemKind, VerifyReport};
pub use head::{read as read_audit_head, HEAD_FILE as AUDIT_HEAD_FILE};
use lock::DirLock;
use packs::{Loc, Packs, PACK_LIMIT};
use parking_lot::{Mutex, RwLock};
use rusqlite::{Connection, OpenFlags};
use std::collections::hash_map::{self, HashMap};
use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Most bytes of live chunks one collection round copies out of mostly dead packs.
const COMPACT_PER_ROUND: u64 = 256 << 20;

/// Name of the database inside the data dir.
const DB_FILE: &str = "agentfs.db";
/// Name of the pack directory inside the data dir.
const PACKS_DIR: &str = "packs";
/// Name of the journal directory inside the data dir.
const JOURNAL_DIR: &str = "journal";

/// How to open a data dir.
#[derive(Clone, Debug, Default)]
pub struct StoreOptions {
    /// Create the data dir, the database and the pack directory if they are missing. Without
    /// it a missing dir or database is an error, so a typo in a path cannot silently start an
    /// empty filesystem.
    pub create: bool,
}

/// Sizes tests shrink to exercise rolling over.
#[derive(Clone, Copy, Debug)]
struct Limits {
    pack: u64,
    segment: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            pack: PACK_LIMIT,
            segment: SEGMENT_LIMIT,
        }
    }
}

/// Where one chunk is, and when it was last handed out.
struct Entry {
    loc: Loc,
    /// The garbage-collection round during which `put_chunk` last returned this chunk or a
    /// commit last named it (see [`SqliteStore::collect_garbage`]).
    stamp: AtomicU64,
}

impl Entry {
    fn new(loc: Loc, round: u64) -> Entry {
        Entry {
            loc,
            stamp: AtomicU64::new(round),
        }
    }

    /// Records that the chunk was handed out in `round`.
    fn touch(&self, round: u64) {
        self.stamp.store(round, Ordering::Release);
    }
}

/// The chunk index: every chunk whose bytes are in a pack, committed or not.
#[derive(Default)]
struct Index {
    locs: HashMap<ChunkId, Entry>,
    /// Chunks written to a pack whose blob row is not committed yet. The next commit puts them
    /// in its own journal record, so any chunk map it commits has its blob rows with it (or in
    /// an earlier record). Pushed under the same lock as `locs`, so a chunk visible in `locs` is
    /// either committed or in `pending` (or being appended by the commit that holds the journal
    /// lock, which puts it back here if the append fails).
    pending: Vec<(ChunkId, Loc)>,
}

/// Durable store in a data dir. Internally synchronised; share it with `Arc`.
pub struct SqliteStore {
    db_path: PathBuf,
    /// Stopped (after applying everything queued) and joined first when the store is dropped:
    /// declared first so it is dropped before the connection and the lock.
    applier: Applier,
    journal: Arc<Journal>,
    /// The single connection: the applier writes through it, `load` and `audit_count` read.
    conn: Arc<Mutex<Connection>>,
    index: RwLock<Index>,
    packs: Packs,
    /// Sum of `len` over `index.locs`.
    chunk_bytes: AtomicU64,
    /// The current garbage-collection round; chunks handed out are stamped with it.
    round: AtomicU64,
    /// Chunks the last round found unreferenced; held while a round runs (one at a time).
    suspects: Mutex<HashSet<ChunkId>>,
    /// Writes `audit.head`.
    pin: Arc<HeadPin>,
    /// Read-only connection for `audit_after` (opened at first use), so that readers of the
    /// flight recorder never wait on the applier's connection.
    reader: Mutex<Option<AuditLog>>,
    dir: PathBuf,
    /// Last field, so it is released only after the connection has closed.
    _lock: DirLock,
}

impl SqliteStore {
    /// Opens (or with `opts.create`, creates) the store in `dir`, replaying the journal of an
    /// unclean shutdown into the database first.
    ///
    /// Fails with [`StoreError::Locked`] at once if another daemon has the dir, with
    /// [`StoreError::Corrupt`] naming the file if the database or the journal is damaged or
    /// from a newer agentfs, and with an `Io` `NotFound` error if the dir or database is
    /// missing and `opts.create` is false.
    pub fn open(dir: &Path, opts: StoreOptions) -> Result<SqliteStore, StoreError> {
        Self::open_with(dir, opts, Limits::default())
    }

    fn open_with(
        dir: &Path,
        opts: StoreOptions,
        limits: Limits,
    ) -> Result<SqliteStore, StoreError> {
        let db_path = dir.join(DB_FILE);
        if !dir.is_dir() {
            if !opts.create {
                return Err(not_found(format!(
                    "data dir {} does not exist (create it, or open with create)",
                    dir.display()
                )));
            }
            std::fs::create_dir_all(dir).map_err(|e| errors::io(e, dir))?;
        }
        let existed = db_path.exists();
        if !existed && !opts.create {
            return Err(not_found(format!(
                "{} does not exist: {} holds no agentfs store",
                db_path.display(),
                dir.display()
            )));
        }
        let lock = lock::lock_dir(dir, &db_path)?;

        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if opts.create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let conn = Connection::open_with_flags(&db_path, flags)
            .map_err(|e| errors::sql_at_open(e, &db_path))?;
        schema::configure(&conn, &db_path)?;
        schema::init_or_check(&conn, &db_path, opts.create)?;

        // Replay the journal before reading `blobs`: replayed records add blob rows, and the
        // packs must resume past every byte any row points at.
        let started = Instant::now();
        let applied = tables::applied_seq(&conn, &db_path)?;
        // The chain as SQLite holds it; the replay extends it record by record.
        let mut chain = tables::audit_last(&conn, &db_path)?;
        let cell = std::cell::RefCell::new(conn);
        let recovery = Journal::open(
            dir.join(JOURNAL_DIR),
            limits.segment,
            applied,
            &mut |group: &[Record]| {
                applier::apply_group(
                    &mut cell.borrow_mut(),
                    group,
                    &db_path,
                    false,
                    Some(&mut chain),
                )
            },
            &mut || applier::durable_checkpoint(&mut cell.borrow_mut(), &db_path),
        )?;
        let conn = cell.into_inner();
        check_head(dir, &conn, &db_path, chain)?;
        // Everything in SQLite is durable now (a replay ended with a durable checkpoint; a
        // clean close made it durable): pin it.
        head::write(dir, chain, true)?;
        recovery.journal.lock().chain = chain;
        if recovery.replayed > 0 {
            tracing::info!(
                records = recovery.replayed,
                segments = recovery.segments,
                ms = started.elapsed().as_millis() as u64,
                "replayed the journal of an unclean shutdown"
            );
        }
        let journal = Arc::new(recovery.journal);
        let applied = tables::applied_seq(&conn, &db_path)?;

        let blobs = tables::load_blobs(&conn, &db_path)?;
        let mut referenced_end: HashMap<u32, u64> = HashMap::new();
        let mut locs = HashMap::with_capacity(blobs.len());
        let mut bytes = 0u64;
        for (id, loc) in blobs {
            let end = referenced_end.entry(loc.pack).or_insert(0);
            *end = (*end).max(loc.offset + u64::from(loc.len));
            bytes += u64::from(loc.len);
            locs.insert(id, Entry::new(loc, 0));
        }
        let packs = Packs::open(dir.join(PACKS_DIR), limits.pack, &referenced_end)?;
        if !existed {
            // Make the new database, pack and journal dir entries themselves durable.
            packs::sync_dir(dir)?;
        }
        // Rows pointing past the end of their pack lost their bytes (a power loss after
        // Process-durable commits). Reads of those chunks fail with Corrupt; the rest is fine,
        // so mount anyway and say so.
        for (&pack, &end) in &referenced_end {
            if !packs.covers(pack, end) {
                tracing::warn!(
                    pack = %packs.path(pack).display(),
                    needed = end,
                    "pack is shorter than its index: some chunks lost their bytes"
                );
            }
        }
        let conn = Arc::new(Mutex::new(conn));
        let pin = Arc::new(HeadPin::new(dir, chain.seq));
        let applier = Applier::start(
            Arc::clone(&conn),
            Arc::clone(&journal),
            db_path.clone(),
            applied,
            Arc::clone(&pin),
            chain,
        )?;
        Ok(SqliteStore {
            db_path,
            applier,
            journal,
            conn,
            index: RwLock::new(Index {
                locs,
                pending: Vec::new(),
            }),
            packs,
            chunk_bytes: AtomicU64::new(bytes),
            round: AtomicU64::new(0),
            suspects: Mutex::new(HashSet::new()),
            pin,
            reader: Mutex::new(None),
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    /// Number of audit rows committed. Waits for the applier first (see
    /// [`SqliteStore::wait_applied`]).
    pub fn audit_count(&self) -> Result<u64, StoreError> {
        self.wait_applied()?;
        tables::audit_count(&self.conn.lock()).map_err(|e| errors::sql(e, &self.db_path))
    }

    /// Blocks until every commit acknowledged before the call is in the SQLite database (not
    /// only in the journal), so that a reader of `agentfs.db` sees it. Commits never need this;
    /// tools and tests that read the database do. Fails with the applier's error if SQLite
    /// refuses the records meanwhile, rather than waiting forever.
    pub fn wait_applied(&self) -> Result<(), StoreError> {
        self.applier.wait_applied()
    }

    /// Number of acknowledged commits not yet applied to the SQLite database (they are in the
    /// journal). Normally a few milliseconds' worth.
    pub fn applied_lag(&self) -> u64 {
        self.applier.lag()
    }

    /// Why the last attempt at applying the journal to SQLite failed, while it is failing
    /// (e.g. `SQLITE_FULL`). `None` when the applier is healthy. After it has failed for a
    /// second, commits are refused with this error until it recovers.
    pub fn applier_error(&self) -> Option<String> {
        self.applier.error()
    }

    /// Test and benchmark hook: while paused, the applier copies nothing into SQLite, not even
    /// when the store is dropped, so dropping a paused store leaves every commit since the pause
    /// to the journal replay of the next open (a simulated crash). Commits block once
    /// 16 MiB of records are waiting.
    #[doc(hidden)]
    pub fn set_applier_paused(&self, paused: bool) {
        self.applier.set_paused(paused);
    }

    /// Re-hashes every stored chunk and returns the ids whose bytes are missing or do not
    /// match (an `fsck`; reads the whole store).
    pub fn verify_chunks(&self) -> Result<Vec<ChunkId>, StoreError> {
        let all: Vec<(ChunkId, Loc)> = self
            .index
            .read()
            .locs
            .iter()
            .map(|(k, v)| (*k, v.loc))
            .collect();
        let mut bad = Vec::new();
        let mut buf = Vec::new();
        for (id, loc) in all {
            buf.resize(loc.len as usize, 0);
            let ok = match self.packs.read(loc, 0, &mut buf) {
                Ok(()) => ChunkId::of(&buf) == id,
                Err(StoreError::Corrupt(_)) => false,
                Err(e) => return Err(e),
            };
            if !ok {
                bad.push(id);
            }
        }
        bad.sort();
        Ok(bad)
    }
}

/// Marks chunk `id` as handed out in `round`, if `index` holds it.
fn stamp_in(index: &Index, round: u64, id: &ChunkId) -> bool {
    match index.locs.get(id) {
        Some(e) => {
            e.touch(round);
            true
        }
        None => false,
    }
}

impl SqliteStore {
    /// Marks chunk `id` as handed out in this round, if the store holds it.
    fn stamp(&self, id: &ChunkId) -> bool {
        stamp_in(&self.index.read(), self.round.load(Ordering::Acquire), id)
    }

    /// Every chunk a committed chunk map names, read through a connection of its own so the
    /// applier is never held up by the scan.
    fn committed_refs(&self) -> Result<HashSet<ChunkId>, StoreError> {
        self.wait_applied()?;
        let conn = Connection::open_with_flags(
            &self.db_path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| errors::sql_at_open(e, &self.db_path))?;
        tables::chunk_refs(&conn, &self.db_path)
    }

    /// Appends a record of the store's own (`DropChunks`, `MoveChunks`: no audit entry, no
    /// blob rows) and queues it for the applier. The caller holds the journal lock.
    fn append_own(&self, active: &mut journal::Active, change: Change) -> Result<(), StoreError> {
        let batch = Batch {
            changes: vec![change],
        };
        let frame = journal::start_record(&batch)?;
        let (seq, bytes) = self.journal.append(active, frame, &[])?;
        self.applier.push(Record {
            seq,
            batch,
            links: Vec::new(),
            blobs: Vec::new(),
            bytes,
        });
        Ok(())
    }

    /// Removes the chunks to free from the index and journals their blob rows' deletion, in
    /// one step under the journal lock: no commit can name one of them after this (its check
    /// under the same lock fails), and none named one before (it would be referenced).
    fn drop_chunks(
        &self,
        live: &HashSet<ChunkId>,
        committed: &HashSet<ChunkId>,
        suspects: &mut HashSet<ChunkId>,
    ) -> Result<Vec<Loc>, StoreError> {
        let round = self.round.load(Ordering::Acquire);
        self.applier.admit()?;
        let mut active = self.journal.lock();
        let mut index = self.index.write();
        let mut doomed = Vec::new();
        let mut next = HashSet::new();
        for (id, e) in &index.locs {
            if live.contains(id) || committed.contains(id) {
                continue;
            }
            // Handed out in neither this round nor the previous one, and already unreferenced
            // at the previous round.
            let quiet = e.stamp.load(Ordering::Acquire).saturating_add(2) <= round;
            if quiet && suspects.contains(id) {
                doomed.push(*id);
            } else {
                next.insert(*id);
            }
        }
        *suspects = next;
        if doomed.is_empty() {
            return Ok(Vec::new());
        }
        self.append_own(&mut active, Change::DropChunks(doomed.clone()))?;
        let doomed: HashSet<ChunkId> = doomed.into_iter().collect();
        // A chunk put but never committed has its blob row pending: it must not reach SQLite
        // now that its bytes are about to be punched out.
        index.pending.retain(|(id, _)| !doomed.contains(id));
        let mut freed = Vec::with_capacity(doomed.len());
        for id in &doomed {
            if let Some(e) = index.locs.remove(id) {
                self.chunk_bytes
                    .fetch_sub(u64::from(e.loc.len), Ordering::Relaxed);
                freed.push(e.loc);
            }
        }
        Ok(freed)
    }

    /// Copies the live chunks of mostly dead packs (indexed bytes under an eighth of the pack
    /// size; at most [`COMPACT_PER_ROUND`] bytes a round, emptiest first) into the current
    /// pack and points the index and the `blobs` rows at the copies, so that
    /// [`SqliteStore::delete_dead_packs`] can delete those packs once the record is durable.
    /// Without it a pack with a few long-lived chunks would stay forever (sparse, but a file
    /// and a descriptor each). Returns the bytes moved.
    fn compact_packs(&self) -> Result<u64, StoreError> {
        let current = self.packs.current();
        let threshold = self.packs.limit() / 8;
        let mut by_pack: HashMap<u32, Vec<(ChunkId, Loc)>> = HashMap::new();
        for (id, e) in &self.index.read().locs {
            if e.loc.pack < current {
                by_pack.entry(e.loc.pack).or_default().push((*id, e.loc));
            }
        }
        let mut candidates: Vec<(u64, Vec<(ChunkId, Loc)>)> = by_pack
            .into_values()
            .map(|chunks| (chunks.iter().map(|(_, l)| u64::from(l.len)).sum(), chunks))
            .filter(|(live, _)| *live < threshold)
            .collect();
        candidates.sort_by_key(|(live, _)| *live);
        let mut moved_bytes = 0;
        for (live, chunks) in candidates {
            if moved_bytes + live > COMPACT_PER_ROUND {
                break;
            }
            let mut copies = Vec::with_capacity(chunks.len());
            let mut buf = Vec::new();
            for (id, old) in chunks {
                buf.resize(old.len as usize, 0);
                self.packs.read(old, 0, &mut buf)?;
                if ChunkId::of(&buf) != id {
                    // Damaged bytes are not copied as if they were good: the pack stays.
                    tracing::warn!(pack = old.pack, offset = old.offset, "chunk fails its hash");
                    continue;
                }
                let written = self.packs.write(&buf)?;
                copies.push((id, old, written));
            }
            self.applier.admit()?;
            let mut active = self.journal.lock();
            let mut index = self.index.write();
            let mut moves = Vec::new();
            for (id, old, w) in &copies {
                let committed = !index.pending.iter().any(|(p, _)| p == id);
                if committed && index.locs.get(id).is_some_and(|e| e.loc == *old) {
                    moves.push(crate::ChunkMove {
                        id: *id,
                        pack: w.loc.pack,
                        offset: w.loc.offset,
                        len: w.loc.len,
                    });
                }
            }
            if !moves.is_empty() {
                // Journal first: should the append fail, the index still matches SQLite.
                self.append_own(&mut active, Change::MoveChunks(moves))?;
            }
            for (id, old, w) in &copies {
                if let Some(e) = index.locs.get_mut(id).filter(|e| e.loc == *old) {
                    e.loc = w.loc;
                    // A chunk never committed moves in its pending row instead.
                    if let Some(p) = index.pending.iter_mut().find(|(p, _)| p == id) {
                        p.1 = w.loc;
                    }
                }
            }
            drop(index);
            drop(active);
            moved_bytes += live;
        }
        if moved_bytes > 0 {
            // The new places must be durable before any old pack goes.
            self.sync()?;
        }
        Ok(moved_bytes)
    }

    /// Deletes every pack (but the current one) that no indexed chunk points into.
    fn delete_dead_packs(&self) -> Result<(u64, u64), StoreError> {
        let current = self.packs.current();
        let on_disk = self.packs.on_disk()?;
        let dead: Vec<u32> = {
            let index = self.index.read();
            let used: HashSet<u32> = index.locs.values().map(|e| e.loc.pack).collect();
            // Checked under the index lock: a chunk still on its way into the index keeps
            // its pack (its insert needs the write side of this lock).
            on_disk
                .into_iter()
                .filter(|n| *n < current && !used.contains(n) && !self.packs.has_inflight(*n))
                .collect()
        };
        let mut bytes = 0;
        for &n in &dead {
            bytes += self.packs.delete(n)?;
        }
        Ok((dead.len() as u64, bytes))
    }
}

/// The first chunk a `SetChunks` or `SetPieces` of `batch` names that `locs` lacks.
fn first_missing(batch: &Batch, locs: &HashMap<ChunkId, Entry>) -> Option<ChunkId> {
    batch.changes.iter().find_map(|c| match c {
        Change::SetChunks { chunks, .. } => chunks
            .iter()
            .filter_map(|(_, id)| *id)
            .find(|id| !locs.contains_key(id)),
        Change::SetPieces { pieces, .. } => pieces
            .iter()
            .map(|p| p.id)
            .find(|id| !locs.contains_key(id)),
        Change::Encoded(e) => e.chunks().iter().copied().find(|id| !locs.contains_key(id)),
        _ => None,
    })
}

impl Store for SqliteStore {
    fn put_hashed(&self, id: ChunkId, data: &[u8]) -> Result<ChunkId, StoreError> {
        check_chunk_len(data.len())?;
        debug_assert_eq!(id, ChunkId::of(data), "put_hashed with another chunk's id");
        if self.stamp(&id) {
            return Ok(id);
        }
        // Two threads may write the same new chunk at once; the loser's bytes become dead
        // space in the pack, which is cheaper than holding a lock across the write.
        let written = self.packs.write(data)?;
        let loc = written.loc;
        let mut guard = self.index.write();
        let index = &mut *guard;
        match index.locs.entry(id) {
            hash_map::Entry::Vacant(slot) => {
                slot.insert(Entry::new(loc, self.round.load(Ordering::Acquire)));
                index.pending.push((id, loc));
                self.chunk_bytes
                    .fetch_add(u64::from(loc.len), Ordering::Relaxed);
            }
            hash_map::Entry::Occupied(e) => e.get().touch(self.round.load(Ordering::Acquire)),
        }
        drop(guard);
        drop(written);
        Ok(id)
    }

    fn read_at(&self, id: &ChunkId, offset: usize, buf: &mut [u8]) -> Result<usize, StoreError> {
        let lookup = || self.index.read().locs.get(id).map(|e| e.loc);
        let mut loc = lookup().ok_or_else(|| missing_chunk(id))?;
        loop {
            let len = loc.len as usize;
            if offset >= len || buf.is_empty() {
                return Ok(0);
            }
            let n = (len - offset).min(buf.len());
            match self.packs.read(loc, offset as u64, &mut buf[..n]) {
                Ok(()) => return Ok(n),
                // Compaction moved the chunk and deleted its old pack between our lookup and
                // the read: read it where it is now.
                Err(e @ StoreError::Corrupt(_)) => match lookup() {
                    Some(moved) if moved != loc => loc = moved,
                    _ => return Err(e),
                },
                Err(e) => return Err(e),
            }
        }
    }

    /// Validates the batch, appends it (with the pending blob rows) to the journal as one
    /// record, queues it for the applier and returns: a `write` of a few hundred bytes, no
    /// SQLite. `Disk` then syncs the packs and the journal.
    fn commit(&self, batch: Batch, durability: Durability) -> Result<(), StoreError> {
        // Stamping the chunks keeps the garbage collector off them for a whole round, and the
        // check is repeated under the journal lock (which the collector holds while it removes
        // chunks), so no record can name a chunk without its blob row.
        {
            // One read lock for the whole batch, not one per chunk (a snapshot names
            // thousands).
            let index = self.index.read();
            let round = self.round.load(Ordering::Acquire);
            check_batch(&batch, |id| stamp_in(&index, round, id))?;
        }
        if !batch.is_empty() || !self.index.read().pending.is_empty() {
            self.applier.admit()?;
            let frame = journal::start_record(&batch)?;
            // The canonical encoding of each audit entry, outside the lock; under it only the
            // seq is added and the chain hashed (one BLAKE3 of ~100 bytes per entry).
            let bodies: Vec<Vec<u8>> = batch
                .changes
                .iter()
                .filter_map(|c| match c {
                    Change::Audit(a) => Some(canonical_body(a)),
                    _ => None,
                })
                .collect();
            let mut active = self.journal.lock();
            let mut index = self.index.write();
            if let Some(gone) = first_missing(&batch, &index.locs) {
                return Err(missing_chunk(&gone));
            }
            let pending = std::mem::take(&mut index.pending);
            drop(index);
            if batch.is_empty() && pending.is_empty() {
                // Another commit took the pending rows meanwhile: nothing to append.
            } else {
                let mut chain = active.chain;
                let links: Vec<Link> = bodies
                    .iter()
                    .map(|body| {
                        let prev = chain.hash;
                        let (seq, hash) = chain.advance(body);
                        Link { seq, prev, hash }
                    })
                    .collect();
                match self.journal.append(&mut active, frame, &pending) {
                    Ok((seq, bytes)) => {
                        active.chain = chain;
                        self.applier.push(Record {
                            seq,
                            batch,
                            links,
                            blobs: pending,
                            bytes,
                        })
                    }
                    Err(e) => {
                        // Nothing was appended: keep the rows for the next commit. Done under
                        // the journal lock, so no later record can miss them.
                        self.index.write().pending.extend(pending);
                        return Err(e);
                    }
                }
            }
        }
        if durability == Durability::Disk {
            self.sync()?;
        }
        Ok(())
    }

    /// Makes every earlier commit durable: `fdatasync` of each pack written since the last
    /// sync (and of the pack directory if a pack was created), then of the journal segment
    /// (earlier segments were synced when they were closed). Once the journal record of a
    /// commit is on the disk, so is the commit: a reopen replays it.
    fn sync(&self) -> Result<(), StoreError> {
        self.packs.sync()?;
        let head = self.journal.sync()?;
        // Every entry up to `head` is on the disk (in the journal): pin it. The head file is
        // not fsynced here: after a power loss it may be older, never newer, than the chain.
        self.pin.advance(head, false)
    }

    /// Waits for the applier first, so an append acknowledged before the call is listed.
    fn appends(&self, ino: Ino) -> Result<Vec<AppendRecord>, StoreError> {
        self.wait_applied()?;
        tables::appends(&self.conn.lock(), &self.db_path, ino)
    }

    fn audit_after(
        &self,
        after: u64,
        agent: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let mut reader = self.reader.lock();
        if reader.is_none() {
            *reader = Some(AuditLog::open(&self.dir)?);
        }
        match reader.as_ref() {
            Some(log) => log.after(after, agent, limit),
            None => Ok(Vec::new()),
        }
    }

    /// Everything committed so far. Waits for the applier (a few milliseconds at most, normally)
    /// and reads the database; the core calls it once, at mount.
    fn load(&self) -> Result<LoadedState, StoreError> {
        self.wait_applied()?;
        tables::load(&self.conn.lock(), &self.db_path)
    }

    fn chunk_bytes(&self) -> u64 {
        self.chunk_bytes.load(Ordering::Relaxed)
    }

    /// Frees what nothing references (see [`Store::collect_garbage`]): the committed chunk
    /// maps are read from SQLite (after the applier caught up), the chunks to free leave the
    /// index and their blob rows are deleted by one journal record, which is made durable
    /// before their bytes are punched out of the packs (else a crash could bring back a row
    /// pointing at zeros). Packs left with no chunk are deleted.
    fn collect_garbage(&self, live: &HashSet<ChunkId>) -> Result<GcReport, StoreError> {
        let mut suspects = self.suspects.lock();
        let committed = self.committed_refs()?;
        let freed = self.drop_chunks(live, &committed, &mut suspects)?;
        self.round.fetch_add(1, Ordering::AcqRel);
        let mut report = GcReport {
            freed_chunks: freed.len() as u64,
            freed_bytes: freed.iter().map(|l| u64::from(l.len)).sum(),
            suspects: suspects.len() as u64,
            ..GcReport::default()
        };
        if !freed.is_empty() {
            self.sync()?;
            for loc in &freed {
                report.reclaimed_bytes += self.packs.punch(*loc)?;
            }
        }
        report.moved_bytes = self.compact_packs()?;
        let (packs, bytes) = self.delete_dead_packs()?;
        report.packs_deleted = packs;
        report.reclaimed_bytes += bytes;
        Ok(report)
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("db", &self.db_path)
            .field("applied_lag", &self.applied_lag())
            .finish_non_exhaustive()
    }
}

impl Drop for SqliteStore {
    /// A clean close pins the whole chain durably (the applier, dropped next, then copies the
    /// journal into SQLite).
    fn drop(&mut self) {
        if self.applier.is_paused() {
            return; // a test's simulated crash
        }
        let pinned = self
            .packs
            .sync()
            .and_then(|()| self.journal.sync())
            .and_then(|head| self.pin.advance(head, true));
        if let Err(e) = pinned {
            tracing::warn!(error = %e, "could not pin the audit chain head at close");
        }
    }
}

/// Refuses to open a store whose audit table ends before, or differs at, the pinned head: its
/// tail was cut off or its chain rewritten while no daemon ran. Opening would pin the damaged
/// chain and erase the evidence.
fn check_head(dir: &Path, conn: &Connection, db: &Path, last: ChainHead) -> Result<(), StoreError> {
    let refuse = |what: String| {
        StoreError::Corrupt(format!(
            "{}: {what}; run `agentfs audit verify --data-dir {}` (the store stays closed so \
             the evidence is kept)",
            dir.join(head::HEAD_FILE).display(),
            dir.display()
        ))
    };
    match head::read(dir)? {
        None if last.seq > 0 => Err(refuse(format!(
            "the audit chain head is missing although the audit table holds {} entries",
            last.seq
        ))),
        None => Ok(()),
        Some(h) if h.seq > last.seq => Err(refuse(format!(
            "the audit table ends at entry {} but the pinned head is entry {}: its tail was \
             cut off",
            last.seq, h.seq
        ))),
        Some(h) if h.seq == 0 => Ok(()),
        Some(h) => match tables::audit_hash_at(conn, h.seq, db)? {
            Some(hash) if hash[..] == h.hash[..] => Ok(()),
            _ => Err(refuse(format!(
                "audit entry {} does not match the pinned head: the chain was rewritten",
                h.seq
            ))),
        },
    }
}

fn not_found(msg: String) -> StoreError {
    StoreError::Io(io::Error::new(io::ErrorKind::NotFound, msg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Change;

    fn tiny_packs() -> Limits {
        Limits {
            pack: 3 * 1024,
            ..Limits::default()
        }
    }

    #[test]
    fn chunks_survive_pack_rolls_and_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = StoreOptions { create: true };
        let mut ids = Vec::new();
        {
            let store = SqliteStore::open_with(tmp.path(), opts.clone(), tiny_packs()).unwrap();
            let mut batch = Batch::new();
            for i in 0..10u8 {
                let id = store.put_chunk(&[i; 1000]).unwrap();
                batch.push(Change::SetChunks {
                    ino: 2,
                    chunks: vec![(u64::from(i), Some(id))],
                });
                ids.push(id);
            }
            store.commit(batch, Durability::Disk).unwrap();
        }
        let packs = std::fs::read_dir(tmp.path().join(PACKS_DIR))
            .unwrap()
            .count();
        assert!(
            packs >= 4,
            "10 chunks of 1000 bytes in 3 KiB packs: got {packs} packs"
        );
        let store = SqliteStore::open_with(tmp.path(), opts, tiny_packs()).unwrap();
        for (i, id) in ids.iter().enumerate() {
            let mut buf = [0u8; 1000];
            assert_eq!(store.read_at(id, 0, &mut buf).unwrap(), 1000);
            assert_eq!(buf, [i as u8; 1000]);
        }
        assert!(store.verify_chunks().unwrap().is_empty());
        assert_eq!(store.chunk_bytes(), 10_000);
    }

    #[test]
    fn a_pack_left_without_live_chunks_is_deleted() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = StoreOptions { create: true };
        let store = SqliteStore::open_with(tmp.path(), opts.clone(), tiny_packs()).unwrap();
        // Packs 1 and 2 fill with garbage; the kept chunk lands in a later one.
        for i in 0..8u8 {
            store.put_chunk(&[i; 1000]).unwrap();
        }
        let kept = store.put_chunk(&[9u8; 1000]).unwrap();
        set_first_chunk(&store, 2, kept);
        let packs = || {
            std::fs::read_dir(tmp.path().join(PACKS_DIR))
                .unwrap()
                .count()
        };
        assert!(packs() >= 3, "{}", packs());
        let mut deleted = 0;
        for _ in 0..3 {
            deleted += store
                .collect_garbage(&HashSet::new())
                .unwrap()
                .packs_deleted;
        }
        assert!(deleted >= 2, "deleted {deleted}");
        assert_eq!(
            packs() as u64,
            1 + u64::from(store.packs.current() != kept_pack(&store, &kept))
        );
        let mut buf = [0u8; 1000];
        assert_eq!(store.read_at(&kept, 0, &mut buf).unwrap(), 1000);
        drop(store);
        let store = SqliteStore::open_with(tmp.path(), opts, tiny_packs()).unwrap();
        assert_eq!(store.read_at(&kept, 0, &mut buf).unwrap(), 1000);
        assert_eq!(buf, [9u8; 1000]);
        assert!(store.verify_chunks().unwrap().is_empty());
    }

    #[test]
    fn a_mostly_dead_pack_is_compacted_away() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = StoreOptions { create: true };
        let store = SqliteStore::open_with(tmp.path(), opts.clone(), tiny_packs()).unwrap();
        // Pack 1: a small live chunk (under an eighth of the 3 KiB limit) and garbage.
        let kept = store.put_chunk(&[7u8; 300]).unwrap();
        set_first_chunk(&store, 2, kept);
        for i in 0..6u8 {
            store.put_chunk(&[i; 1000]).unwrap();
        }
        assert_eq!(kept_pack(&store, &kept), 1);
        let mut moved = 0;
        for _ in 0..3 {
            moved += store.collect_garbage(&HashSet::new()).unwrap().moved_bytes;
        }
        assert_eq!(moved, 300);
        assert_ne!(kept_pack(&store, &kept), 1);
        assert!(!tmp.path().join(PACKS_DIR).join("pack-000001.dat").exists());
        let mut buf = [0u8; 300];
        assert_eq!(store.read_at(&kept, 0, &mut buf).unwrap(), 300);
        assert_eq!(buf, [7u8; 300]);
        // The move is in SQLite (and in the journal until then): a crash right now keeps it.
        store.set_applier_paused(true);
        drop(store);
        let store = SqliteStore::open_with(tmp.path(), opts, tiny_packs()).unwrap();
        assert_eq!(store.read_at(&kept, 0, &mut buf).unwrap(), 300);
        assert_eq!(buf, [7u8; 300]);
        assert!(store.verify_chunks().unwrap().is_empty());
    }

    /// Writers, a reader and a collector that compacts tiny packs all race; every read sees
    /// the right bytes and every committed chunk survives a reopen.
    #[test]
    fn compaction_races_writers_and_readers() {
        use std::sync::atomic::AtomicBool;
        let tmp = tempfile::tempdir().unwrap();
        let opts = StoreOptions { create: true };
        let store =
            Arc::new(SqliteStore::open_with(tmp.path(), opts.clone(), tiny_packs()).unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let latest: Arc<Mutex<HashMap<u64, ChunkId>>> = Arc::default();
        let collector = {
            let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut moved = 0;
                while !stop.load(Ordering::Relaxed) {
                    moved += store.collect_garbage(&HashSet::new()).unwrap().moved_bytes;
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                moved
            })
        };
        let reader = {
            let (store, stop, latest) =
                (Arc::clone(&store), Arc::clone(&stop), Arc::clone(&latest));
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let ids: Vec<ChunkId> = latest.lock().values().copied().collect();
                    for id in ids {
                        let mut buf = [0u8; 100];
                        // A chunk a file just dropped may be gone (MissingChunk); what is read
                        // is always right.
                        if let Ok(n) = store.read_at(&id, 0, &mut buf) {
                            assert_eq!(ChunkId::of(&buf[..n]), id);
                            reads += 1;
                        }
                    }
                }
                reads
            })
        };
        let writers: Vec<_> = (0..3u64)
            .map(|w| {
                let (store, latest) = (Arc::clone(&store), Arc::clone(&latest));
                std::thread::spawn(move || {
                    for i in 0..600u64 {
                        // Mostly rewrites of 4 files (their chunks die at once), and now and
                        // then a file written once: a survivor in an otherwise dead pack.
                        let ino = if i % 40 == 0 {
                            1000 + w * 100 + i / 40
                        } else {
                            10 + w * 4 + i % 4
                        };
                        let mut data = [0u8; 100];
                        data[..8].copy_from_slice(&(w * 1_000_000 + i).to_le_bytes());
                        let id = store.put_chunk(&data).unwrap();
                        set_first_chunk(&store, ino, id);
                        latest.lock().insert(ino, id);
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        stop.store(true, Ordering::Relaxed);
        let moved = collector.join().unwrap();
        assert!(reader.join().unwrap() > 0);
        assert!(moved > 0, "the collector compacted something");
        let want = latest.lock().clone();
        let store = Arc::into_inner(store).unwrap();
        drop(store);
        let store = SqliteStore::open_with(tmp.path(), opts, tiny_packs()).unwrap();
        let state = store.load().unwrap();
        assert_eq!(state.chunks.len(), want.len());
        for (ino, _, id) in state.chunks {
            assert_eq!(want[&ino], id);
            let mut buf = [0u8; 100];
            assert_eq!(store.read_at(&id, 0, &mut buf).unwrap(), 100);
            assert_eq!(ChunkId::of(&buf), id);
        }
    }

    /// Commits `id` as chunk 0 of file `ino`.
    fn set_first_chunk(store: &SqliteStore, ino: Ino, id: ChunkId) {
        let mut batch = Batch::new();
        batch.push(Change::SetChunks {
            ino,
            chunks: vec![(0, Some(id))],
        });
        store.commit(batch, Durability::Process).unwrap();
    }

    fn kept_pack(store: &SqliteStore, id: &ChunkId) -> u32 {
        store.index.read().locs[id].loc.pack
    }

    fn xattr(i: u32) -> Batch {
        Batch {
            changes: vec![
                Change::SetXattr {
                    ino: 2,
                    name: format!("user.{i:04}").into_bytes(),
                    value: vec![i as u8; 100],
                },
                Change::Audit(Box::new(crate::AuditEntry {
                    time: 1,
                    agent: "a".into(),
                    pid: 1,
                    uid: 1,
                    op: "setxattr".into(),
                    path: "/f".into(),
                    result: 0,
                    size: 100,
                    ..Default::default()
                })),
            ],
        }
    }

    fn segment_files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir.join(JOURNAL_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn journal_segments_roll_over_and_applied_ones_are_deleted() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = StoreOptions { create: true };
        let limits = Limits {
            segment: 4096,
            ..Limits::default()
        };
        let store = SqliteStore::open_with(tmp.path(), opts.clone(), limits).unwrap();
        for i in 0..300 {
            store.commit(xattr(i), Durability::Process).unwrap();
        }
        store.wait_applied().unwrap();
        // The applier made SQLite durable and deleted every closed segment: only the current
        // one is left, and its number shows how many there were.
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        let files = loop {
            let files = segment_files(tmp.path());
            if files.len() == 1 || Instant::now() > deadline {
                break files;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert_eq!(files.len(), 1, "{files:?}");
        assert!(files[0].as_str() > "journal-000008.log", "{files:?}");

        // Records spread over several segments, none applied: the reopen replays them all.
        store.set_applier_paused(true);
        for i in 300..600 {
            store.commit(xattr(i), Durability::Process).unwrap();
        }
        drop(store);
        assert!(segment_files(tmp.path()).len() > 5);
        let store = SqliteStore::open_with(tmp.path(), opts.clone(), limits).unwrap();
        assert_eq!(
            segment_files(tmp.path()).len(),
            1,
            "replayed segments are deleted"
        );
        assert_eq!(store.load().unwrap().xattrs.len(), 600);
        assert_eq!(store.audit_count().unwrap(), 600);
        drop(store);
        // A clean close leaves an empty journal.
        assert!(segment_files(tmp.path()).is_empty());
        let store = SqliteStore::open_with(tmp.path(), opts, limits).unwrap();
        assert_eq!(store.load().unwrap().xattrs.len(), 600);
    }
}
