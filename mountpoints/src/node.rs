//! In-memory inodes: the live tree every read is served from.
//!
//! The store holds the durable copy; this is the authoritative view while mounted. A node is
//! changed only after the store accepted the change (namespace ops), or — for file content —
//! in memory first and committed at close/fsync, like a page cache.

use agentfs_memory::{ChunkId, FileKind, Ino, InodeRecord, Piece};

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// Which part of the tree a node lives in. Decides the store (RAM or durable) and the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    /// The mount root.
    Root,
    /// `AGENT/`.
    AgentRoot,
    /// `AGENT/mem/`.
    MemDir,
    /// `AGENT/mem/working/` and below: RAM only.
    Working,
    /// `AGENT/mem/episodic/` and below: durable, append-only.
    Episodic,
    /// `AGENT/mem/semantic/` and below: durable.
    Semantic,
    /// `AGENT/state/`: checkpoints.
    State,
    /// `AGENT/state/NAME/` and below: a checkpoint, read-only, in the durable store.
    Checkpoint,
    /// `AGENT/policy/`: read-only.
    Policy,
}

impl Class {
    /// True for the classes whose content is kept in RAM only.
    pub fn is_volatile(self) -> bool {
        self == Class::Working
    }

    /// Index into per-agent byte counters, for the three memory classes.
    pub fn memory_index(self) -> Option<usize> {
        match self {
            Class::Working => Some(0),
            Class::Episodic => Some(1),
            Class::Semantic => Some(2),
            _ => None,
        }
    }

    /// The class of a child named `name` created or found under a node of class `self`.
    pub fn of_child(self, name: &[u8]) -> Class {
        match self {
            Class::Root => Class::AgentRoot,
            Class::AgentRoot => match name {
                b"mem" => Class::MemDir,
                b"state" => Class::State,
                b"policy" => Class::Policy,
                // No other name exists here; a new one would be part of the fixed layout.
                _ => Class::AgentRoot,
            },
            Class::MemDir => match name {
                b"working" => Class::Working,
                b"episodic" => Class::Episodic,
                b"semantic" => Class::Semantic,
                _ => Class::MemDir,
            },
            Class::State => Class::Checkpoint,
            other => other,
        }
    }
}

/// A file's content: chunk slots by index. A missing slot is a hole and reads as zeros.
#[derive(Debug, Default)]
pub struct FileData {
    pub slots: Slots,
    /// Content or size changed since the last commit.
    pub dirty: bool,
    /// Number of [`Slot::Dirty`] slots (their bytes are in RAM only).
    pub dirty_slots: usize,
    /// What changed since the last commit. Boxed, and none at all for a file at rest (most
    /// of them): every file node was ~90 bytes larger with it inline, in the live tree and in
    /// every checkpoint copy.
    pending: Option<Box<Pending>>,
}

/// A file's changes since its last commit ([`FileData::pending`]).
#[derive(Debug, Default)]
pub struct Pending {
    /// Slot indexes changed since the last commit.
    pub unsynced: BTreeSet<u64>,
    /// Lowest chunk index dropped by a truncate since the last commit.
    pub truncated_from: Option<u64>,
    /// Writes to an episodic log since the last commit, with their times: committed with the
    /// content ([`agentfs_memory::Change::Append`]).
    pub appends: Vec<agentfs_memory::AppendRecord>,
    /// For a dirty slot loaded from the store, the stored pieces its first bytes still are,
    /// so that sealing it stores only what was added after them (see [`StoredPrefix`]).
    pub stored_prefix: HashMap<u64, StoredPrefix>,
}

impl FileData {
    /// The changes since the last commit, if any were made.
    pub fn pending(&self) -> Option<&Pending> {
        self.pending.as_deref()
    }

    /// The changes since the last commit, to add to.
    pub fn pending_mut(&mut self) -> &mut Pending {
        self.pending.get_or_insert_with(Box::default)
    }

    /// Forgets the stored prefix of slot `idx`, returning it.
    pub fn take_stored_prefix(&mut self, idx: u64) -> Option<StoredPrefix> {
        self.pending.as_mut()?.stored_prefix.remove(&idx)
    }

    /// After a commit: nothing is unsynced any more. The stored prefixes of dirty slots stay
    /// (they describe RAM buffers, not commits); with none, the box is freed.
    pub fn settle(&mut self) {
        if let Some(p) = &mut self.pending {
            p.unsynced.clear();
            p.truncated_from = None;
            p.appends.clear();
            if p.stored_prefix.is_empty() {
                self.pending = None;
            }
        }
        self.dirty = false;
    }
}

/// A file's chunk map, shared copy-on-write between a file and its copies in checkpoints.
///
/// A snapshot of 10,000 files used to build a new map per file (a ~540-byte B-tree leaf for
/// a one-chunk file, fresh memory each time); a copy now takes a reference to the source's
/// map when every slot is stored (`Clean` or `Pieces`, which are immutable and addressed by
/// hash). The first change of a shared map — a write to the live file after a snapshot, or
/// to a file a rollback restored — clones it ([`Arc::make_mut`]), so neither side ever sees
/// the other's changes. Reads go through [`Deref`](std::ops::Deref) to the map; the few
/// mutating methods the write path uses are here, so it reads as before. No map at all (no
/// allocation) for a file without chunks.
#[derive(Debug, Default, Clone)]
pub struct Slots(Option<Arc<BTreeMap<u64, Slot>>>);

/// What an empty [`Slots`] reads as.
static NO_SLOTS: BTreeMap<u64, Slot> = BTreeMap::new();

impl std::ops::Deref for Slots {
    type Target = BTreeMap<u64, Slot>;

    fn deref(&self) -> &Self::Target {
        self.0.as_deref().unwrap_or(&NO_SLOTS)
    }
}

impl<'a> IntoIterator for &'a Slots {
    type Item = (&'a u64, &'a Slot);
    type IntoIter = std::collections::btree_map::Iter<'a, u64, Slot>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl From<BTreeMap<u64, Slot>> for Slots {
    fn from(map: BTreeMap<u64, Slot>) -> Self {
        Slots((!map.is_empty()).then(|| Arc::new(map)))
    }
}

impl Slots {
    /// The map, for a change: cloned first if a copy shares it.
    fn map_mut(&mut self) -> &mut BTreeMap<u64, Slot> {
        Arc::make_mut(self.0.get_or_insert_with(Default::default))
    }

    pub fn insert(&mut self, idx: u64, slot: Slot) -> Option<Slot> {
        self.map_mut().insert(idx, slot)
    }

    /// Removes slot `idx`; a map shared with a copy is cloned only if it holds `idx`.
    pub fn remove(&mut self, idx: &u64) -> Option<Slot> {
        if !self.contains_key(idx) {
            return None;
        }
        self.map_mut().remove(idx)
    }

    /// Slot `idx` for a change; a map shared with a copy is cloned only if it holds `idx`.
    pub fn get_mut(&mut self, idx: &u64) -> Option<&mut Slot> {
        if !self.contains_key(idx) {
            return None;
        }
        self.map_mut().get_mut(idx)
    }
}

/// The stored form of the first `len` bytes of a dirty slot, unchanged since it was loaded.
/// A file that grows by small appends (an episodic log) would otherwise store its whole tail
/// chunk again at every close: up to 128 KiB per appended line.
#[derive(Debug, Clone)]
pub struct StoredPrefix {
    pub pieces: Vec<Piece>,
    pub len: usize,
}

/// One chunk of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    /// Stored, immutable, addressed by hash.
    Clean(ChunkId),
    /// Stored as pieces read back to back (two or more): a chunk that grew by appends
    /// ([`agentfs_memory::Change::SetPieces`]).
    Pieces(Arc<[Piece]>),
    /// Being written: the chunk's bytes so far (shorter than a chunk: the rest reads as zeros).
    Dirty(Vec<u8>),
}

/// Directory entries with readdir cookies that stay valid while entries come and go.
#[derive(Debug)]
pub struct DirEntries {
    /// name → (inode, its kind, readdir cookie). The kind is kept here so readdir never has
    /// to lock the children. A name is stored once for both maps, and shared with the
    /// copies of this directory in checkpoints (names never change in place).
    by_name: HashMap<Arc<[u8]>, (Ino, FileKind, u64)>,
    by_cookie: BTreeMap<u64, Arc<[u8]>>,
    next_cookie: u64,
}

/// A child of a directory copied by [`DirEntries::copy_renumbered`]: its name, its inode
/// and the inode its copy is to have.
pub type Renumbered = (Arc<[u8]>, Ino, Ino);

/// Cookies 1 and 2 are `.` and `..`.
pub const FIRST_COOKIE: u64 = 3;

impl Default for DirEntries {
    fn default() -> Self {
        DirEntries {
            by_name: HashMap::new(),
            by_cookie: BTreeMap::new(),
            next_cookie: FIRST_COOKIE,
        }
    }
}

impl DirEntries {
    pub fn get(&self, name: &[u8]) -> Option<Ino> {
        self.by_name.get(name).map(|(ino, _, _)| *ino)
    }

    /// Adds or replaces `name`. A replaced entry keeps its cookie, so a reader iterating the
    /// directory sees it once.
    pub fn insert(&mut self, name: Vec<u8>, ino: Ino, kind: FileKind) {
        self.insert_shared(name.into(), ino, kind)
    }

    /// [`Self::insert`] of a name shared with another directory (a copy's).
    pub fn insert_shared(&mut self, name: Arc<[u8]>, ino: Ino, kind: FileKind) {
        match self.by_name.entry(name) {
            Entry::Occupied(mut e) => {
                let entry = e.get_mut();
                entry.0 = ino;
                entry.1 = kind;
            }
            Entry::Vacant(e) => {
                let cookie = self.next_cookie;
                self.next_cookie += 1;
                self.by_cookie.insert(cookie, e.key().clone());
                e.insert((ino, kind, cookie));
            }
        }
    }

    pub fn remove(&mut self, name: &[u8]) -> Option<Ino> {
        let (ino, _, cookie) = self.by_name.remove(name)?;
        self.by_cookie.remove(&cookie);
        Some(ino)
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Entries with a cookie greater than `after`, in cookie order.
    pub fn after(&self, after: u64) -> impl Iterator<Item = (u64, &[u8], Ino, FileKind)> + '_ {
        self.by_cookie
            .range(after.saturating_add(1)..)
            .filter_map(|(cookie, name)| {
                self.by_name
                    .get(name)
                    .map(|(ino, kind, _)| (*cookie, &name[..], *ino, *kind))
            })
    }

    pub fn names(&self) -> impl Iterator<Item = (&[u8], Ino)> + '_ {
        self.by_name.iter().map(|(n, (ino, _, _))| (&n[..], *ino))
    }

    /// A copy of these entries for a copy of this directory (a checkpoint's), each child
    /// renumbered: the new entry of a child with inode `src` names inode `first + i`, where
    /// `i` is its place in the returned list of `(name, src, new inode)`. Cloned as it is —
    /// the hash table and the cookie order — instead of inserted name by name, which hashed
    /// every name again (~560 instructions an entry); the copy lists in the same order.
    pub fn copy_renumbered(&self, first: Ino) -> (DirEntries, Vec<Renumbered>) {
        let mut by_name = self.by_name.clone();
        let mut children = Vec::with_capacity(by_name.len());
        for (new, (name, (ino, _, _))) in (first..).zip(by_name.iter_mut()) {
            children.push((name.clone(), *ino, new));
            *ino = new;
        }
        let copy = DirEntries {
            by_name,
            by_cookie: self.by_cookie.clone(),
            next_cookie: self.next_cookie,
        };
        (copy, children)
    }

    /// The entries with their names shared, not copied: `(name, inode)`.
    pub fn shared_names(&self) -> impl Iterator<Item = (Arc<[u8]>, Ino)> + '_ {
        self.by_name
            .iter()
            .map(|(n, (ino, _, _))| (n.clone(), *ino))
    }
}

#[derive(Debug)]
pub enum Body {
    /// Boxed: inline, its 80 bytes made every node that large, and most nodes are files.
    Dir(Box<DirEntries>),
    File(FileData),
    /// Symlinks and special files: everything is in the attributes.
    Other,
}

#[derive(Debug)]
pub struct Node {
    pub attr: InodeRecord,
    pub class: Class,
    pub agent: Option<Arc<str>>,
    /// Fixed directories (`AGENT/`, `mem/`, `mem/working`, …) that cannot be renamed or removed.
    pub structural: bool,
    /// Directory holding the entry this node was created or last renamed under.
    pub parent: Ino,
    /// That entry's name. For hard-linked files, one of the names. Shared with the entry
    /// (names never change in place), so a checkpoint's copy allocates none.
    pub name: Arc<[u8]>,
    pub body: Body,
    /// Open file handles; an unlinked node lives until this reaches 0.
    pub open_count: u32,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Node {
    pub fn new(
        attr: InodeRecord,
        class: Class,
        agent: Option<Arc<str>>,
        parent: Ino,
        name: impl Into<Arc<[u8]>>,
    ) -> Self {
        let body = match attr.kind {
            FileKind::Dir => Body::Dir(Box::default()),
            FileKind::File => Body::File(FileData::default()),
            _ => Body::Other,
        };
        Node {
            attr,
            class,
            agent,
            structural: false,
            parent,
            name: name.into(),
            body,
            open_count: 0,
            xattrs: BTreeMap::new(),
        }
    }

    pub fn dir(&self) -> Option<&DirEntries> {
        match &self.body {
            Body::Dir(d) => Some(d),
            _ => None,
        }
    }

    pub fn dir_mut(&mut self) -> Option<&mut DirEntries> {
        match &mut self.body {
            Body::Dir(d) => Some(d),
            _ => None,
        }
    }

    pub fn is_dir(&self) -> bool {
        self.attr.kind == FileKind::Dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_survive_removal_of_other_entries() {
        let mut d = DirEntries::default();
        for i in 0..10u64 {
            d.insert(format!("f{i}").into_bytes(), 100 + i, FileKind::File);
        }
        let first: Vec<_> = d
            .after(0)
            .take(5)
            .map(|(c, n, _, _)| (c, n.to_vec()))
            .collect();
        let resume = first.last().map(|(c, _)| *c).unwrap_or(0);
        d.remove(b"f2");
        d.remove(b"f7");
        d.insert(b"new".to_vec(), 200, FileKind::File);
        let rest: Vec<Vec<u8>> = d.after(resume).map(|(_, n, _, _)| n.to_vec()).collect();
        assert_eq!(
            rest,
            vec![
                b"f5".to_vec(),
                b"f6".to_vec(),
                b"f8".to_vec(),
                b"f9".to_vec(),
                b"new".to_vec()
            ]
        );
    }

    #[test]
    fn a_copy_lists_the_same_names_in_the_same_order_renumbered() {
        let mut d = DirEntries::default();
        for i in 0..20u64 {
            d.insert(format!("f{i}").into_bytes(), 100 + i, FileKind::File);
        }
        d.remove(b"f3");
        let (copy, children) = d.copy_renumbered(1000);
        assert_eq!(children.len(), 19);
        let new_of: BTreeMap<Ino, Ino> = children.iter().map(|(_, s, n)| (*s, *n)).collect();
        let numbers: BTreeSet<Ino> = new_of.values().copied().collect();
        assert_eq!(numbers, (1000..1019).collect());
        let orig: Vec<_> = d
            .after(0)
            .map(|(c, n, i, k)| (c, n.to_vec(), i, k))
            .collect();
        let copied: Vec<_> = copy
            .after(0)
            .map(|(c, n, i, k)| (c, n.to_vec(), i, k))
            .collect();
        assert_eq!(orig.len(), copied.len());
        for ((c1, n1, i1, k1), (c2, n2, i2, k2)) in orig.iter().zip(&copied) {
            assert_eq!((c1, n1, k1), (c2, n2, k2));
            assert_eq!(new_of[i1], *i2);
        }
        // Both go on independently, new cookies after the old ones.
        let mut copy = copy;
        copy.insert(b"late".to_vec(), 5, FileKind::File);
        assert_eq!(d.get(b"late"), None);
        assert_eq!(copy.after(0).last().map(|(c, ..)| c), Some(d.next_cookie));
    }

    #[test]
    fn shared_slots_are_copied_on_write() {
        let id = |b: u8| Slot::Clean(ChunkId([b; 32]));
        let mut live = Slots::default();
        assert!(live.is_empty());
        assert_eq!(live.remove(&0), None);
        live.insert(0, id(1));
        live.insert(1, id(2));
        let copy = live.clone();
        live.insert(1, id(3));
        live.remove(&0);
        assert_eq!(copy.get(&0), Some(&id(1)));
        assert_eq!(copy.get(&1), Some(&id(2)));
        assert_eq!(live.get(&0), None);
        assert_eq!(live.get(&1), Some(&id(3)));
        let mut other = copy.clone();
        if let Some(slot) = other.get_mut(&1) {
            *slot = Slot::Dirty(vec![9]);
        }
        assert_eq!(other.get_mut(&7), None);
        assert_eq!(copy.get(&1), Some(&id(2)));
        assert_eq!(Slots::from(BTreeMap::new()).len(), 0);
    }

    #[test]
    fn replace_keeps_cookie() {
        let mut d = DirEntries::default();
        d.insert(b"a".to_vec(), 1, FileKind::File);
        d.insert(b"b".to_vec(), 2, FileKind::File);
        d.insert(b"a".to_vec(), 3, FileKind::File);
        let all: Vec<_> = d.after(0).map(|(_, n, i, _)| (n.to_vec(), i)).collect();
        assert_eq!(all, vec![(b"a".to_vec(), 3), (b"b".to_vec(), 2)]);
        assert_eq!(d.len(), 2);
    }
}
