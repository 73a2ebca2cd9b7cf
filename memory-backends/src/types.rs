//! Plain records exchanged between the filesystem core and a [`crate::Store`].
//!
//! # Serde and the journal
//!
//! [`Batch`] and everything in it derive `Serialize`/`Deserialize`: the [`crate::SqliteStore`]
//! writes each committed batch to its write-ahead journal with postcard, which encodes struct
//! fields and enum variants **by position**, not by name. A journal written before an upgrade
//! is replayed by the new code after a crash, so: add enum variants and struct fields only at
//! the end, never reorder or remove them, and do not change a field's type. The test
//! `sqlite::journal::tests::batch_encoding_is_stable` pins the bytes of a sample batch and fails
//! when one of these rules is broken.

use crate::Encoded;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Inode number. Stable across restarts: allocated once, stored, never reused while in use.
pub type Ino = u64;

/// BLAKE3 hash of a chunk's bytes: the chunk's address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChunkId(pub [u8; 32]);

/// Hashes the first 8 bytes only: they are already uniformly distributed (BLAKE3), and the
/// map's keyed hasher still decides the buckets, so content cannot aim at one. Hashing all
/// 32 bytes (plus a length) with SipHash cost ~270 instructions per lookup, and a snapshot
/// looks every chunk up twice.
impl std::hash::Hash for ChunkId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut head = [0u8; 8];
        head.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(head));
    }
}

impl ChunkId {
    /// The id `data` would be stored under.
    pub fn of(data: &[u8]) -> Self {
        ChunkId(*blake3::hash(data).as_bytes())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// What an inode is. The variant order is part of the journal format: append only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl FileKind {
    /// Stable small integer used in the database.
    pub fn code(self) -> u8 {
        match self {
            FileKind::File => 1,
            FileKind::Dir => 2,
            FileKind::Symlink => 3,
            FileKind::Fifo => 4,
            FileKind::Socket => 5,
            FileKind::CharDevice => 6,
            FileKind::BlockDevice => 7,
        }
    }

    /// Inverse of [`FileKind::code`].
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => FileKind::File,
            2 => FileKind::Dir,
            3 => FileKind::Symlink,
            4 => FileKind::Fifo,
            5 => FileKind::Socket,
            6 => FileKind::CharDevice,
            7 => FileKind::BlockDevice,
            _ => return None,
        })
    }
}

/// Nanoseconds since the Unix epoch.
pub type TimeNs = i64;

/// An inode's attributes as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InodeRecord {
    pub ino: Ino,
    pub kind: FileKind,
    /// Permission bits including setuid/setgid/sticky (`mode & 0o7777`).
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub atime: TimeNs,
    pub mtime: TimeNs,
    pub ctime: TimeNs,
    pub crtime: TimeNs,
    pub rdev: u32,
    /// Target of a symlink; empty for everything else.
    pub symlink_target: Vec<u8>,
}

/// One flight-recorder entry, as the core hands it to the store. The store assigns its
/// sequence number and chains its hash when it commits it (see docs/storage.md).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub time: TimeNs,
    pub agent: String,
    pub pid: u32,
    pub uid: u32,
    pub op: String,
    /// Mount-relative path (`a/mem/semantic/x`); empty for daemon-wide events.
    pub path: String,
    /// 0 on success, else the errno the caller got.
    pub result: i32,
    /// Bytes written, or the new size of a truncate.
    pub size: u64,
    /// Second path: the new name of a rename or link; empty otherwise.
    pub target: String,
    /// Offset of a write (0 otherwise).
    pub offset: u64,
    /// BLAKE3 of the bytes a write wrote (or of a symlink target or xattr value).
    pub data_hash: Option<[u8; 32]>,
    /// The policy's outcome: `allow`, `audit`, `deny`, `kill`; empty when the policy was not
    /// asked (the call failed before, or it is not an agent's call).
    pub decision: String,
    /// The rule that decided: the refusing rule, or the granting allow rule followed by any
    /// audit rules, comma-separated.
    pub rule: String,
    /// BLAKE3 of the policy version that decided (all zero when not asked).
    pub policy: [u8; 32],
    /// Free-form detail: why a call was refused, a signal's name, …
    pub detail: String,
}

/// One change to the stored state. A [`Batch`] of these is applied atomically.
///
/// The variant order is part of the journal format (see the module docs): append only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// Insert or replace an inode's attributes.
    PutInode(InodeRecord),
    /// Remove an inode together with its chunk map and xattrs.
    DeleteInode(Ino),
    /// Insert or replace the directory entry `parent/name`.
    PutDirent {
        parent: Ino,
        name: Vec<u8>,
        ino: Ino,
    },
    /// Remove the directory entry `parent/name`.
    DeleteDirent {
        parent: Ino,
        name: Vec<u8>,
    },
    /// Set chunk slots of a file: `(chunk index, chunk)`; `None` makes the slot a hole.
    SetChunks {
        ino: Ino,
        chunks: Vec<(u64, Option<ChunkId>)>,
    },
    /// Drop every chunk slot with index `>= from_index` (truncate).
    TruncateChunks {
        ino: Ino,
        from_index: u64,
    },
    SetXattr {
        ino: Ino,
        name: Vec<u8>,
        value: Vec<u8>,
    },
    RemoveXattr {
        ino: Ino,
        name: Vec<u8>,
    },
    /// Small key/value settings (e.g. the next inode number).
    SetMeta {
        key: String,
        value: String,
    },
    /// Append one flight-recorder entry. Boxed: an entry is ~270 bytes, and every change of a
    /// batch is as large as the largest variant, so unboxed it made each of the ~30,000
    /// changes of a 10,000-file snapshot ~280 bytes instead of ~100 (8 MB of fresh memory
    /// per snapshot instead of 3). Serialized the same (serde's `Box<T>` is transparent).
    Audit(Box<AuditEntry>),
    /// Remove meta `key` if (and only if) it still holds `value`: a compare-and-delete, so
    /// clearing a marker never erases a newer one written since (the search outbox).
    DeleteMetaIf {
        key: String,
        value: String,
    },
    /// One append to an episodic log: `len` bytes at `offset` of file `ino`, written at `time`
    /// (kept so an agent's experience can be replayed in order; `agentfs episodes`).
    Append(AppendRecord),
    /// Forget where these chunks' bytes are (their `blobs` rows): written only by the durable
    /// store's own garbage collector, in the journal record that frees them. A batch from the
    /// core naming it is refused.
    DropChunks(Vec<ChunkId>),
    /// Where these chunks' bytes are now: written only by the durable store's pack
    /// compaction, which copies the live chunks of a mostly dead pack into the current one
    /// before deleting it. A batch from the core naming it is refused.
    MoveChunks(Vec<ChunkMove>),
    /// Set chunk slot `idx` of a file to its `pieces` read back to back (at least two, at
    /// most [`MAX_PIECES`], together at most a chunk). A file that grows by small appends
    /// stores only what each commit added instead of rewriting its whole tail chunk (see
    /// docs/storage.md, "Pieces"). A later `SetChunks` of the slot replaces them.
    SetPieces {
        ino: Ino,
        idx: u64,
        pieces: Vec<Piece>,
    },
    /// Copies of nodes the store holds, each under a fresh inode number: for every
    /// `(src, dst)`, `src`'s inode record (as `dst`), chunk map and xattrs, and every directory
    /// entry `src/name → child` whose `child` is copied too, as `dst/name → child's dst`.
    /// Nothing else of `src` (not its `appends`). A checkpoint is made of these: the journal
    /// names each copied node in a few bytes instead of repeating the record, entry and chunk
    /// map the store already holds (docs/checkpoints.md). Each `src` and each `dst` appears
    /// once, and no `dst` is in use.
    CopyNodes(Vec<(Ino, Ino)>),
    /// Changes already in their journal encoding (see [`Encoded`]): in memory only. The
    /// journal holds the changes themselves, so serde never writes or reads this variant.
    #[serde(skip)]
    Encoded(Encoded),
}

/// Most pieces one chunk slot may hold ([`Change::SetPieces`]).
pub const MAX_PIECES: usize = 24;

/// One stored part of a chunk slot held in pieces: the chunk `id` of `len` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Piece {
    pub id: ChunkId,
    pub len: u32,
}

impl Piece {
    /// Bytes of one piece in the `chunks.hash` column: the id, then `len` as u32 LE.
    pub const ENCODED_LEN: usize = 36;

    /// The `chunks.hash` value of a slot held in `pieces`. A whole chunk is its 32-byte id,
    /// so the two never share a length (36·k for k ≥ 2 is never 32).
    pub fn encode_all(pieces: &[Piece]) -> Vec<u8> {
        let mut out = Vec::with_capacity(pieces.len() * Self::ENCODED_LEN);
        for p in pieces {
            out.extend_from_slice(&p.id.0);
            out.extend_from_slice(&p.len.to_le_bytes());
        }
        out
    }

    /// The pieces a `chunks.hash` value of 36·k bytes (k ≥ 2) names; `None` for any other
    /// length.
    pub fn decode_all(bytes: &[u8]) -> Option<Vec<Piece>> {
        if bytes.len() < 2 * Self::ENCODED_LEN || !bytes.len().is_multiple_of(Self::ENCODED_LEN) {
            return None;
        }
        let pieces = bytes
            .chunks_exact(Self::ENCODED_LEN)
            .map(|b| {
                let mut id = [0u8; 32];
                id.copy_from_slice(&b[..32]);
                let mut len = [0u8; 4];
                len.copy_from_slice(&b[32..]);
                Piece {
                    id: ChunkId(id),
                    len: u32::from_le_bytes(len),
                }
            })
            .collect();
        Some(pieces)
    }
}

/// A chunk's new place in the pack files ([`Change::MoveChunks`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkMove {
    pub id: ChunkId,
    pub pack: u32,
    pub offset: u64,
    pub len: u32,
}

/// When a range of an episodic log was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendRecord {
    pub ino: Ino,
    pub offset: u64,
    pub len: u64,
    pub time: TimeNs,
}

/// Changes applied all-or-nothing by [`crate::Store::commit`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub changes: Vec<Change>,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty batch with room for `n` changes (a snapshot knows its size up front).
    pub fn with_capacity(n: usize) -> Self {
        Self {
            changes: Vec::with_capacity(n),
        }
    }

    pub fn push(&mut self, change: Change) {
        self.changes.push(change);
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// The run of encoded changes at the end of the batch, started if the last change is not
    /// one: changes written into it keep their place in the batch's order.
    pub fn encoded(&mut self) -> &mut Encoded {
        if !matches!(self.changes.last(), Some(Change::Encoded(_))) {
            self.changes.push(Change::Encoded(Encoded::default()));
        }
        match self.changes.last_mut() {
            Some(Change::Encoded(e)) => e,
            _ => unreachable!("an encoded run was just pushed"),
        }
    }
}

/// What one garbage-collection round did ([`crate::Store::collect_garbage`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Chunks freed by this round.
    pub freed_chunks: u64,
    /// Their bytes.
    pub freed_bytes: u64,
    /// Chunks nothing referenced this round: freed by the next one if still unreferenced.
    pub suspects: u64,
    /// Bytes given back to the filesystem holding the store (holes punched, packs deleted).
    pub reclaimed_bytes: u64,
    /// Pack files deleted because nothing in them was referenced any more.
    pub packs_deleted: u64,
    /// Bytes of live chunks copied out of mostly dead packs so those could be deleted.
    pub moved_bytes: u64,
}

/// Everything a store holds, as loaded at mount.
#[derive(Clone, Debug, Default)]
pub struct LoadedState {
    pub inodes: Vec<InodeRecord>,
    pub dirents: Vec<(Ino, Vec<u8>, Ino)>,
    /// `(ino, chunk index, chunk)` for every slot held as one chunk.
    pub chunks: Vec<(Ino, u64, ChunkId)>,
    /// `(ino, chunk index, pieces)` for every slot held in pieces ([`Change::SetPieces`]).
    pub pieces: Vec<(Ino, u64, Vec<Piece>)>,
    pub xattrs: Vec<(Ino, Vec<u8>, Vec<u8>)>,
    pub meta: Vec<(String, String)>,
}
