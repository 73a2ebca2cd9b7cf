//! Input checks shared by both stores, so that [`crate::RamStore`] and [`crate::SqliteStore`]
//! accept and refuse exactly the same batches.

use crate::{Batch, Change, ChunkId, Piece, StoreError, CHUNK_SIZE, MAX_PIECES};
use std::io;

/// Meta keys the store keeps for itself. They are hidden from [`crate::Store::load`] and a
/// [`crate::Change::SetMeta`] naming one is refused, so the core can never clobber them.
const RESERVED_META: &[&str] = &["schema_version"];

/// Prefix of further store-private meta keys (e.g. `store.sync_seq`).
const RESERVED_META_PREFIX: &str = "store.";

/// True for meta keys that belong to the store, not the filesystem core.
pub(crate) fn is_reserved_meta(key: &str) -> bool {
    RESERVED_META.contains(&key) || key.starts_with(RESERVED_META_PREFIX)
}

/// Refuses a `SetMeta` of a reserved key.
pub(crate) fn check_meta_key(key: &str) -> Result<(), StoreError> {
    if is_reserved_meta(key) {
        return Err(invalid(format!(
            "meta key {key:?} is reserved for the store"
        )));
    }
    Ok(())
}

/// Refuses a batch that cannot be applied, before anything of it is: a `SetChunks` naming a
/// chunk `holds` says the store does not have (`MissingChunk`), or a `SetMeta` of a reserved
/// key. The first offending change (in batch order) decides the error.
pub(crate) fn check_batch(
    batch: &Batch,
    holds: impl Fn(&ChunkId) -> bool,
) -> Result<(), StoreError> {
    for change in &batch.changes {
        match change {
            Change::SetChunks { chunks, .. } => {
                if let Some(id) = chunks
                    .iter()
                    .filter_map(|(_, c)| c.as_ref())
                    .find(|id| !holds(id))
                {
                    return Err(missing_chunk(id));
                }
            }
            Change::SetPieces { pieces, .. } => {
                check_pieces(pieces)?;
                if let Some(p) = pieces.iter().find(|p| !holds(&p.id)) {
                    return Err(missing_chunk(&p.id));
                }
            }
            Change::Encoded(e) => {
                if let Some(id) = e.chunks().iter().find(|id| !holds(id)) {
                    return Err(missing_chunk(id));
                }
            }
            Change::SetMeta { key, .. } | Change::DeleteMetaIf { key, .. } => check_meta_key(key)?,
            Change::DropChunks(_) | Change::MoveChunks(_) => {
                return Err(invalid(
                    "DropChunks and MoveChunks are the store's own changes (its garbage \
                     collector)"
                        .into(),
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Refuses a pieces slot that could not be read back as one chunk: fewer than two pieces
/// (one is a plain chunk), more than [`MAX_PIECES`], an empty piece, or more than a chunk of
/// bytes in all.
fn check_pieces(pieces: &[Piece]) -> Result<(), StoreError> {
    let total: u64 = pieces.iter().map(|p| u64::from(p.len)).sum();
    if pieces.len() < 2
        || pieces.len() > MAX_PIECES
        || pieces.iter().any(|p| p.len == 0)
        || total > CHUNK_SIZE as u64
    {
        return Err(invalid(format!(
            "a slot of {} pieces holding {total} bytes (2 to {MAX_PIECES} non-empty pieces, \
             at most {CHUNK_SIZE} bytes)",
            pieces.len()
        )));
    }
    Ok(())
}

/// Refuses a chunk longer than [`CHUNK_SIZE`]: the chunk map assumes fixed-size slots.
pub(crate) fn check_chunk_len(len: usize) -> Result<(), StoreError> {
    if len > CHUNK_SIZE {
        return Err(invalid(format!(
            "chunk of {len} bytes is larger than CHUNK_SIZE ({CHUNK_SIZE})"
        )));
    }
    Ok(())
}

/// The error for a chunk a batch names but the store does not hold.
pub(crate) fn missing_chunk(id: &ChunkId) -> StoreError {
    StoreError::MissingChunk(hex(id))
}

/// Full lowercase hex of a chunk id (the `Debug` form is shortened).
pub(crate) fn hex(id: &ChunkId) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(64);
    for b in id.0 {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Caller error: bad arguments, not a broken store.
fn invalid(msg: String) -> StoreError {
    StoreError::Io(io::Error::new(io::ErrorKind::InvalidInput, msg))
}
