//! Storage for agentfs.
//!
//! Two halves, both behind the [`Store`] trait:
//!
//! * **chunks**: file content cut into [`CHUNK_SIZE`] pieces, each stored once and addressed by
//!   its BLAKE3 hash ([`ChunkId`]). A small change to a big file rewrites one chunk, and a
//!   checkpoint only has to copy chunk ids, never bytes.
//! * **metadata**: inodes, directory entries, chunk maps, xattrs, agents and audit entries,
//!   applied as one atomic [`Batch`] per mutation.
//!
//! [`RamStore`] keeps both in memory (working memory: gone when the daemon stops).
//! [`SqliteStore`] keeps metadata in one SQLite database (WAL) and chunk bytes in append-only
//! pack files beside it (see `docs/storage.md` for why the bytes are not SQLite blobs).

pub mod audit;
mod checks;
mod encoding;
mod error;
mod ram;
pub mod search;
mod sqlite;
mod sync;
mod types;

pub use audit::{AuditRecord, ChainHead};
pub use encoding::Encoded;
pub use error::StoreError;
pub use ram::RamStore;
pub use sqlite::{
    read_audit_head, AuditLog, Problem, ProblemKind, SqliteStore, StoreOptions, VerifyReport,
    AUDIT_HEAD_FILE,
};
pub use types::*;

use std::collections::HashSet;

/// Size of one content chunk. Files are cut at multiples of this offset; the last chunk of a
/// file may be shorter. Chosen so that one FUSE write of up to 128 KiB touches at most two chunks
/// and a 1 GiB file needs 8,192 chunk-map rows.
pub const CHUNK_SIZE: usize = 128 * 1024;

/// How durable a commit must be before [`Store::commit`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Survives the daemon being killed (`kill -9`): the data is in the kernel's page cache.
    /// What `close()` needs.
    Process,
    /// Survives a power loss: data and metadata are on the disk. What `fsync()` needs.
    Disk,
}

/// A storage backend. Implementations are internally synchronised: every method takes `&self`
/// and may be called from many FUSE worker threads at once.
pub trait Store: Send + Sync {
    /// Stores `data` (at most [`CHUNK_SIZE`] bytes) if no chunk with the same hash exists yet,
    /// and returns its id. The chunk is not referenced by anything until a committed
    /// [`Change::SetChunks`] or [`Change::SetPieces`] names it; an unreferenced chunk may be
    /// reclaimed later.
    fn put_chunk(&self, data: &[u8]) -> Result<ChunkId, StoreError> {
        self.put_hashed(ChunkId::of(data), data)
    }

    /// [`Store::put_chunk`] for a caller that has already hashed `data` (`id` is
    /// `ChunkId::of(data)`), e.g. on all cores beside other work. A wrong `id` would make
    /// the chunk readable under another chunk's address: only pass what `ChunkId::of` gave.
    fn put_hashed(&self, id: ChunkId, data: &[u8]) -> Result<ChunkId, StoreError>;

    /// Copies bytes of chunk `id` starting at `offset` into `buf`; returns how many were copied
    /// (fewer than `buf.len()` when the chunk ends first, 0 at or past its end).
    fn read_at(&self, id: &ChunkId, offset: usize, buf: &mut [u8]) -> Result<usize, StoreError>;

    /// Applies every change in `batch` atomically (all or none), durable as `durability` asks.
    fn commit(&self, batch: Batch, durability: Durability) -> Result<(), StoreError>;

    /// Makes everything committed so far durable on disk (fsync).
    fn sync(&self) -> Result<(), StoreError>;

    /// Everything committed so far, to rebuild the in-memory tree at mount.
    fn load(&self) -> Result<LoadedState, StoreError>;

    /// Bytes of chunk data held (for `statfs` and `status`).
    fn chunk_bytes(&self) -> u64;

    /// Up to `limit` flight-recorder entries with seq above `after`, in seq order (only
    /// `agent`'s when given). A store that keeps no entries returns none. Entries a commit
    /// acknowledged may show up a few milliseconds later (the durable store's applier).
    fn audit_after(
        &self,
        _after: u64,
        _agent: Option<&str>,
        _limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        Ok(Vec::new())
    }

    /// The appends recorded for file `ino` ([`Change::Append`]), in offset order. Like
    /// [`Store::audit_after`], a store that keeps none returns none.
    fn appends(&self, _ino: Ino) -> Result<Vec<AppendRecord>, StoreError> {
        Ok(Vec::new())
    }

    /// One round of garbage collection: frees the chunks that nothing references.
    ///
    /// `live` holds every chunk id the caller keeps outside committed chunk maps (an open
    /// file's sealed but uncommitted slots; passing every id it holds is fine). A chunk is freed
    /// when, at two consecutive rounds, no committed chunk map names it and it is not in
    /// `live`, and no `put_chunk` returned it and no commit named it since the round before
    /// the previous one. So an id obtained from `put_chunk` stays valid for at least one full
    /// round even before any node holds it, and a reader that copied an id out of a file just
    /// before the file dropped it can still read it for a round. Rounds are serialised; the
    /// caller spaces them (seconds, not microseconds) so that those windows mean something.
    /// `docs/storage.md#garbage-collection` has the whole argument.
    fn collect_garbage(&self, _live: &HashSet<ChunkId>) -> Result<GcReport, StoreError> {
        Ok(GcReport::default())
    }
}
