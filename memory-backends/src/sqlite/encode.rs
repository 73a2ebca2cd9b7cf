//! A hand-written postcard encoder for the changes a snapshot is made of.
//!
//! A snapshot of 10,000 files is a batch of ~30,000 changes; through serde, postcard pushes
//! each byte of every chunk id separately and spent ~1,500 instructions per file. The hot
//! variants (`PutInode`, `PutDirent`, `SetChunks`, `SetXattr`, `SetPieces`) are written here
//! with the same bytes (postcard 1.0: varints, zigzag for signed integers, a length before
//! each sequence, the variant index before an enum's fields; see `batch_encoding_is_stable`
//! and `hand_encoding_is_postcard` in journal.rs); every other change goes through postcard.

use crate::{Batch, Change, ChunkId, InodeRecord, Piece};

/// Variant indexes of [`Change`] (its declaration order).
const PUT_INODE: u32 = 0;
const PUT_DIRENT: u32 = 2;
const SET_CHUNKS: u32 = 4;
const SET_XATTR: u32 = 6;
const SET_PIECES: u32 = 14;

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

/// Appends the postcard encoding of `batch` to `buf`.
pub(super) fn batch(batch: &Batch, mut buf: Vec<u8>) -> postcard::Result<Vec<u8>> {
    varint(&mut buf, batch.changes.len() as u64);
    for change in &batch.changes {
        match change {
            Change::PutInode(r) => {
                varint(&mut buf, PUT_INODE.into());
                inode(&mut buf, r);
            }
            Change::PutDirent { parent, name, ino } => {
                varint(&mut buf, PUT_DIRENT.into());
                varint(&mut buf, *parent);
                bytes(&mut buf, name);
                varint(&mut buf, *ino);
            }
            Change::SetChunks { ino, chunks } => {
                varint(&mut buf, SET_CHUNKS.into());
                varint(&mut buf, *ino);
                varint(&mut buf, chunks.len() as u64);
                for (idx, id) in chunks {
                    varint(&mut buf, *idx);
                    match id {
                        Some(id) => {
                            buf.push(1);
                            chunk_id(&mut buf, id);
                        }
                        None => buf.push(0),
                    }
                }
            }
            Change::SetXattr { ino, name, value } => {
                varint(&mut buf, SET_XATTR.into());
                varint(&mut buf, *ino);
                bytes(&mut buf, name);
                bytes(&mut buf, value);
            }
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
            other => buf = postcard::to_extend(other, buf)?,
        }
    }
    Ok(buf)
}

/// Bytes to reserve for the encoding of `batch`: a guess from its length (a change of a
/// snapshot takes ~20-50 bytes), so a big batch is not copied as its buffer grows.
pub(super) fn size_hint(batch: &Batch) -> usize {
    batch.changes.len() * 48
}
