//! A hand-written postcard encoder for the changes a snapshot is made of, and [`Encoded`]:
//! such changes written straight into their journal bytes.
//!
//! A snapshot of 10,000 files was a batch of ~30,000 changes; through serde, postcard pushes
//! each byte of every chunk id separately and spent ~1,500 instructions per file. The hot
//! variants (`PutInode`, `PutDirent`, `SetChunks`, `SetXattr`, `SetPieces`, `CopyNodes`)
//! are written here with the same bytes (postcard 1.0: varints, zigzag for signed
//! integers, a length before each sequence, the variant index before an enum's fields; see
//! `batch_encoding_is_stable` and `hand_encoding_is_postcard` in sqlite/journal.rs); every
//! other change goes through postcard.

use crate::{Batch, Change, ChunkId, InodeRecord, Piece, StoreError};
use std::borrow::Cow;
use std::io;

/// Variant indexes of [`Change`] (its declaration order).
const PUT_INODE: u32 = 0;
const PUT_DIRENT: u32 = 2;
const SET_CHUNKS: u32 = 4;
const SET_XATTR: u32 = 6;
const SET_PIECES: u32 = 14;
const COPY_NODES: u32 = 15;

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push(v as u8 | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn zigzag(buf: &mut Vec<u8>, v: i64) {
    varint(buf, ((v << 1) ^ (v >> 63)) as u64);
}

fn bytes(buf: &mut Vec<u8>, b: &[u8]) {
    varint(buf, b.len() as u64);
    buf.extend_from_slice(b);
}

fn chunk_id(buf: &mut Vec<u8>, id: &ChunkId) {
    buf.extend_from_slice(&id.0);
}

fn inode(buf: &mut Vec<u8>, r: &InodeRecord) {
    varint(buf, r.ino);
    varint(buf, r.kind as u64);
    varint(buf, u64::from(r.perm));
    varint(buf, u64::from(r.uid));
    varint(buf, u64::from(r.gid));
    varint(buf, u64::from(r.nlink));
    varint(buf, r.size);
    zigzag(buf, r.atime);
    zigzag(buf, r.mtime);
    zigzag(buf, r.ctime);
    zigzag(buf, r.crtime);
    varint(buf, u64::from(r.rdev));
    bytes(buf, &r.symlink_target);
}

fn pieces(buf: &mut Vec<u8>, p: &[Piece]) {
    varint(buf, p.len() as u64);
    for piece in p {
        chunk_id(buf, &piece.id);
        varint(buf, u64::from(piece.len));
    }
}

fn put_inode(buf: &mut Vec<u8>, r: &InodeRecord) {
    varint(buf, PUT_INODE.into());
    inode(buf, r);
}

fn put_dirent(buf: &mut Vec<u8>, parent: u64, name: &[u8], ino: u64) {
    varint(buf, PUT_DIRENT.into());
    varint(buf, parent);
    bytes(buf, name);
    varint(buf, ino);
}

/// `SetChunks`, with `chunks` giving exactly `len` slots.
fn set_chunks(
    buf: &mut Vec<u8>,
    ino: u64,
    len: usize,
    chunks: impl Iterator<Item = (u64, Option<ChunkId>)>,
    mut seen: impl FnMut(ChunkId),
) {
    varint(buf, SET_CHUNKS.into());
    varint(buf, ino);
    varint(buf, len as u64);
    let mut written = 0;
    for (idx, id) in chunks {
        written += 1;
        varint(buf, idx);
        match id {
            Some(id) => {
                buf.push(1);
                chunk_id(buf, &id);
                seen(id);
            }
            None => buf.push(0),
        }
    }
    debug_assert_eq!(written, len, "SetChunks announced {len} slots");
}

fn set_xattr(buf: &mut Vec<u8>, ino: u64, name: &[u8], value: &[u8]) {
    varint(buf, SET_XATTR.into());
    varint(buf, ino);
    bytes(buf, name);
    bytes(buf, value);
}

/// The postcard encoding of `batch` after `buf`, in parts: the bytes of each encoded run
/// where they are (borrowed from the batch), and owned bytes before, between and after them.
/// The first part is always `buf` extended, the last always owned. Written with one
/// `pwritev`, a snapshot's megabyte of changes is never copied into a second buffer.
pub(crate) fn batch_parts(batch: &Batch, mut buf: Vec<u8>) -> postcard::Result<Vec<Cow<'_, [u8]>>> {
    let mut parts = Vec::new();
    let count: u64 = batch
        .changes
        .iter()
        .map(|c| match c {
            Change::Encoded(e) => e.count,
            _ => 1,
        })
        .sum();
    varint(&mut buf, count);
    for change in &batch.changes {
        match change {
            Change::PutInode(r) => put_inode(&mut buf, r),
            Change::PutDirent { parent, name, ino } => put_dirent(&mut buf, *parent, name, *ino),
            Change::SetChunks { ino, chunks } => {
                set_chunks(&mut buf, *ino, chunks.len(), chunks.iter().copied(), |_| ())
            }
            Change::SetXattr { ino, name, value } => set_xattr(&mut buf, *ino, name, value),
            Change::SetPieces {
                ino,
                idx,
                pieces: p,
            } => {
                varint(&mut buf, SET_PIECES.into());
                varint(&mut buf, *ino);
                varint(&mut buf, *idx);
                pieces(&mut buf, p);
            }
            Change::CopyNodes(pairs) => {
                varint(&mut buf, COPY_NODES.into());
                varint(&mut buf, pairs.len() as u64);
                for (src, dst) in pairs {
                    varint(&mut buf, *src);
                    varint(&mut buf, *dst);
                }
            }
            Change::Encoded(e) => {
                parts.push(Cow::Owned(std::mem::take(&mut buf)));
                parts.push(Cow::Borrowed(&e.bytes[..]));
            }
            other => buf = postcard::to_extend(other, buf)?,
        }
    }
    parts.push(Cow::Owned(buf));
    Ok(parts)
}

/// Bytes to reserve for the owned parts of the encoding of `batch`: a guess from its length
/// (a change of a snapshot takes ~20-50 bytes), so a big batch is not copied as its buffer
/// grows. Encoded runs are not copied, so they need no room.
pub(crate) fn size_hint(batch: &Batch) -> usize {
    batch
        .changes
        .iter()
        .map(|c| match c {
            Change::Encoded(_) => 0,
            // Two inode numbers of up to 5 bytes each (below 2^35) per copy.
            Change::CopyNodes(pairs) => 8 + 10 * pairs.len(),
            _ => 48,
        })
        .sum()
}

/// A run of `PutInode`, `PutDirent`, `SetChunks` and `SetXattr` changes held as their journal
/// bytes instead of as [`Change`]s: what a checkpoint's copy of thousands of nodes is made of
/// ([`Batch::encoded`] gives one to write into).
///
/// Built this way, a copied file costs its ~100 journal bytes and no 96-byte `Change`s, name
/// copies or chunk lists (about 400 bytes of fresh memory per file, and the instructions to
/// fill and then encode them). The journal writes the bytes as they are; the store's applier
/// and [`crate::RamStore`] read them back with [`Encoded::decode`]. Journal replay never sees
/// the difference: the bytes are those of the same changes encoded one by one.
///
/// ```
/// use agentfs_memory::{Batch, Change, FileKind, InodeRecord};
///
/// let rec = InodeRecord { ino: 7, kind: FileKind::File, perm: 0o644, uid: 0, gid: 0, nlink: 1,
///     size: 0, atime: 0, mtime: 0, ctime: 0, crtime: 0, rdev: 0, symlink_target: Vec::new() };
/// let mut batch = Batch::new();
/// batch.encoded().put_inode(&rec);
/// batch.encoded().put_dirent(1, b"notes", 7);
/// let Change::Encoded(run) = &batch.changes[0] else { unreachable!() };
/// assert_eq!(run.decode().unwrap(), vec![
///     Change::PutInode(rec),
///     Change::PutDirent { parent: 1, name: b"notes".to_vec(), ino: 7 },
/// ]);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Encoded {
    bytes: Vec<u8>,
    /// How many changes `bytes` holds.
    count: u64,
    /// Every chunk the changes name, for the store's checks before it accepts the batch.
    chunks: Vec<ChunkId>,
}

impl Encoded {
    pub fn put_inode(&mut self, record: &InodeRecord) {
        put_inode(&mut self.bytes, record);
        self.count += 1;
    }

    pub fn put_dirent(&mut self, parent: u64, name: &[u8], ino: u64) {
        put_dirent(&mut self.bytes, parent, name, ino);
        self.count += 1;
    }

    /// `SetChunks` of file `ino`: `(chunk index, chunk)`, `None` for a hole.
    pub fn set_chunks<I>(&mut self, ino: u64, chunks: I)
    where
        I: IntoIterator<Item = (u64, Option<ChunkId>)>,
        I::IntoIter: ExactSizeIterator,
    {
        let chunks = chunks.into_iter();
        let seen = &mut self.chunks;
        set_chunks(&mut self.bytes, ino, chunks.len(), chunks, |id| {
            seen.push(id)
        });
        self.count += 1;
    }

    pub fn set_xattr(&mut self, ino: u64, name: &[u8], value: &[u8]) {
        set_xattr(&mut self.bytes, ino, name, value);
        self.count += 1;
    }

    /// Room for `bytes` more bytes of changes naming `chunks` more chunks.
    pub fn reserve(&mut self, bytes: usize, chunks: usize) {
        self.bytes.reserve(bytes);
        self.chunks.reserve(chunks);
    }

    /// How many changes this holds.
    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The chunks the changes name.
    pub(crate) fn chunks(&self) -> &[ChunkId] {
        &self.chunks
    }

    /// The changes, read back from their bytes.
    pub fn decode(&self) -> Result<Vec<Change>, StoreError> {
        let mut out = Vec::with_capacity(self.count as usize);
        let mut rest = &self.bytes[..];
        for _ in 0..self.count {
            let (change, tail) = postcard::take_from_bytes::<Change>(rest).map_err(|e| {
                StoreError::Io(io::Error::other(format!(
                    "could not read back encoded changes: {e}"
                )))
            })?;
            out.push(change);
            rest = tail;
        }
        Ok(out)
    }
}
