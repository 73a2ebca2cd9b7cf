//! [`SqliteStore`]: the durable store. Metadata in one SQLite database (WAL), chunk bytes in
//! append-only pack files beside it. `docs/storage.md` gives the layout and the reasoning.
//!
//! * `lock`: one daemon per data dir (`flock`).
//! * `schema`: tables, version check, connection settings.
//! * `packs`: the pack files (parallel `pwrite`/`pread`).
//! * `tables`: rows in and out, one function per change kind.
//! * `errors`: SQLite/I/O errors to [`StoreError`].

mod errors;
mod lock;
mod packs;
mod schema;
mod tables;

use crate::checks::{check_chunk_len, missing_chunk};
use crate::{Batch, ChunkId, Durability, LoadedState, Store, StoreError};
use lock::DirLock;
use packs::{Loc, Packs, PACK_LIMIT};
use parking_lot::{Mutex, RwLock};
use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use std::collections::hash_map::{Entry, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Name of the database inside the data dir.
const DB_FILE: &str = "agentfs.db";
/// Name of the pack directory inside the data dir.
const PACKS_DIR: &str = "packs";

/// How to open a data dir.
#[derive(Clone, Debug, Default)]
pub struct StoreOptions {
    /// Create the data dir, the database and the pack directory if they are missing. Without
    /// it a missing dir or database is an error, so a typo in a path cannot silently start an
    /// empty filesystem.
    pub create: bool,
}

/// The chunk index: every chunk whose bytes are in a pack, committed or not.
#[derive(Default)]
struct Index {
    locs: HashMap<ChunkId, Loc>,
    /// Chunks written to a pack whose `blobs` row is not committed yet. The next commit inserts
    /// them in its own transaction, so any chunk map it commits has its blob rows with it.
    /// Pushed under the same lock as `locs`, so a chunk visible in `locs` is either committed
    /// or in `pending` (or being committed by the commit that holds the writer connection).
    pending: Vec<(ChunkId, Loc)>,
}

/// Durable store in a data dir. Internally synchronised; share it with `Arc`.
pub struct SqliteStore {
    db_path: PathBuf,
    /// The single writer connection (also used by `load`, which runs at mount).
    conn: Mutex<Connection>,
    index: RwLock<Index>,
    packs: Packs,
    /// Sum of `len` over `index.locs`.
    chunk_bytes: AtomicU64,
    /// Last field, so it is released only after the connection has closed.
    _lock: DirLock,
}

impl SqliteStore {
    /// Opens (or with `opts.create`, creates) the store in `dir`.
    ///
    /// Fails with [`StoreError::Locked`] at once if another daemon has the dir, with
    /// [`StoreError::Corrupt`] naming the file if the database is damaged or from a newer
    /// agentfs, and with an `Io` `NotFound` error if the dir or database is missing and
    /// `opts.create` is false.
    pub fn open(dir: &Path, opts: StoreOptions) -> Result<SqliteStore, StoreError> {
        Self::open_with_pack_limit(dir, opts, PACK_LIMIT)
    }

    /// [`SqliteStore::open`] with a different pack size (tests use tiny packs to exercise
    /// rolling over).
    fn open_with_pack_limit(
        dir: &Path,
        opts: StoreOptions,
        pack_limit: u64,
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

        let blobs = tables::load_blobs(&conn, &db_path)?;
        let mut referenced_end: HashMap<u32, u64> = HashMap::new();
        let mut locs = HashMap::with_capacity(blobs.len());
        let mut bytes = 0u64;
        for (id, loc) in blobs {
            let end = referenced_end.entry(loc.pack).or_insert(0);
            *end = (*end).max(loc.offset + u64::from(loc.len));
            bytes += u64::from(loc.len);
            locs.insert(id, loc);
        }
        let packs = Packs::open(dir.join(PACKS_DIR), pack_limit, &referenced_end)?;
        if !existed {
            // Make the new database and pack dir entries themselves durable.
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
        Ok(SqliteStore {
            db_path,
            conn: Mutex::new(conn),
            index: RwLock::new(Index {
                locs,
                pending: Vec::new(),
            }),
            packs,
            chunk_bytes: AtomicU64::new(bytes),
            _lock: lock,
        })
    }

    /// Number of audit rows committed.
    pub fn audit_count(&self) -> Result<u64, StoreError> {
        tables::audit_count(&self.conn.lock()).map_err(|e| errors::sql(e, &self.db_path))
    }

    /// Re-hashes every stored chunk and returns the ids whose bytes are missing or do not
    /// match (an `fsck`; reads the whole store).
    pub fn verify_chunks(&self) -> Result<Vec<ChunkId>, StoreError> {
        let all: Vec<(ChunkId, Loc)> = self
            .index
            .read()
            .locs
            .iter()
            .map(|(k, v)| (*k, *v))
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

    /// Commits with the writer connection held; `pending` blob rows go in the same
    /// transaction.
    fn commit_locked(
        &self,
        conn: &mut Connection,
        batch: &Batch,
        pending: &[(ChunkId, Loc)],
        durability: Durability,
    ) -> Result<(), StoreError> {
        let sql = |e| errors::sql(e, &self.db_path);
        if durability == Durability::Disk {
            // Chunk bytes first: once the commit below is on disk, every row in it must find
            // its bytes on disk too.
            self.packs.sync()?;
            conn.pragma_update(None, "synchronous", "FULL")
                .map_err(sql)?;
        }
        let result = (|| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql)?;
            for (id, loc) in pending {
                tables::insert_blob(&tx, id, *loc).map_err(sql)?;
            }
            let holds = |id: &ChunkId| self.index.read().locs.contains_key(id);
            for change in &batch.changes {
                tables::apply(&tx, change, &holds, &self.db_path)?;
            }
            if durability == Durability::Disk {
                tables::bump_sync_seq(&tx).map_err(sql)?;
            }
            tx.commit().map_err(sql)
            // On any error `tx` is dropped here, which rolls back.
        })();
        if durability == Durability::Disk {
            if let Err(e) = conn.pragma_update(None, "synchronous", "NORMAL") {
                tracing::warn!(error = %e, "could not set synchronous back to NORMAL");
            }
        }
        result
    }
}

impl Store for SqliteStore {
    fn put_chunk(&self, data: &[u8]) -> Result<ChunkId, StoreError> {
        check_chunk_len(data.len())?;
        let id = ChunkId::of(data);
        if self.index.read().locs.contains_key(&id) {
            return Ok(id);
        }
        // Two threads may write the same new chunk at once; the loser's bytes become dead
        // space in the pack, which is cheaper than holding a lock across the write.
        let loc = self.packs.write(data)?;
        let mut guard = self.index.write();
        let index = &mut *guard;
        if let Entry::Vacant(slot) = index.locs.entry(id) {
            slot.insert(loc);
            index.pending.push((id, loc));
            self.chunk_bytes
                .fetch_add(u64::from(loc.len), Ordering::Relaxed);
        }
        Ok(id)
    }

    fn read_at(&self, id: &ChunkId, offset: usize, buf: &mut [u8]) -> Result<usize, StoreError> {
        let loc = self
            .index
            .read()
            .locs
            .get(id)
            .copied()
            .ok_or_else(|| missing_chunk(id))?;
        let len = loc.len as usize;
        if offset >= len || buf.is_empty() {
            return Ok(0);
        }
        let n = (len - offset).min(buf.len());
        self.packs.read(loc, offset as u64, &mut buf[..n])?;
        Ok(n)
    }

    fn commit(&self, batch: Batch, durability: Durability) -> Result<(), StoreError> {
        let mut conn = self.conn.lock();
        let pending = std::mem::take(&mut self.index.write().pending);
        if batch.is_empty() && pending.is_empty() && durability == Durability::Process {
            return Ok(());
        }
        let result = self.commit_locked(&mut conn, &batch, &pending, durability);
        if result.is_err() {
            // The rows were rolled back with the transaction: keep them for the next commit.
            // Done before the writer lock is released, so no other commit can miss them.
            self.index.write().pending.extend(pending);
        }
        result
    }

    /// Makes every earlier commit durable: `fdatasync` of the packs, then a transaction under
    /// `synchronous=FULL` that is guaranteed to write (it bumps `store.sync_seq`). In WAL mode a
    /// FULL commit fsyncs the WAL file after appending its frames, and fsync covers the whole
    /// file, so every earlier NORMAL commit still in the WAL reaches the disk too; commits
    /// already checkpointed into the main database were fsynced by that checkpoint (SQLite
    /// syncs the WAL before and the database after every checkpoint, even under NORMAL).
    /// A bare `synchronous=FULL` commit of an empty transaction would not work: SQLite writes
    /// and syncs nothing for a transaction that dirtied no page.
    fn sync(&self) -> Result<(), StoreError> {
        self.commit(Batch::new(), Durability::Disk)
    }

    fn load(&self) -> Result<LoadedState, StoreError> {
        tables::load(&self.conn.lock(), &self.db_path)
    }

    fn chunk_bytes(&self) -> u64 {
        self.chunk_bytes.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("db", &self.db_path)
            .finish_non_exhaustive()
    }
}

fn not_found(msg: String) -> StoreError {
    StoreError::Io(io::Error::new(io::ErrorKind::NotFound, msg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Change;

    #[test]
    fn chunks_survive_pack_rolls_and_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = StoreOptions { create: true };
        let mut ids = Vec::new();
        {
            let store =
                SqliteStore::open_with_pack_limit(tmp.path(), opts.clone(), 3 * 1024).unwrap();
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
        let store = SqliteStore::open_with_pack_limit(tmp.path(), opts, 3 * 1024).unwrap();
        for (i, id) in ids.iter().enumerate() {
            let mut buf = [0u8; 1000];
            assert_eq!(store.read_at(id, 0, &mut buf).unwrap(), 1000);
            assert_eq!(buf, [i as u8; 1000]);
        }
        assert!(store.verify_chunks().unwrap().is_empty());
        assert_eq!(store.chunk_bytes(), 10_000);
    }
}
