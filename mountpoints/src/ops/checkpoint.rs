//! Checkpoints (SPEC §7): `mkdir AGENT/state/NAME` copies the agent's `mem/` into a read-only
//! tree, `rmdir` deletes one, writing NAME to `sys/agents/AGENT/rollback` makes `mem/` a copy
//! of it again. See docs/checkpoints.md.
//!
//! A copy is metadata only: inode records, directory entries, xattrs and chunk maps. Chunks
//! are addressed by their BLAKE3 hash, so a copy between two nodes of the durable store names
//! the same chunks and costs O(files), not O(bytes). Working memory lives in the RAM store:
//! its chunks are copied into the durable store at snapshot and back at rollback (O(bytes of
//! working memory), which is meant to be small). Every snapshot, deletion and rollback is one
//! durable store batch carrying its audit entry: after a crash it happened or it did not.

use crate::agent::Agent;
use crate::caller::Caller;
use crate::error::{Result, VfsError};
use crate::mutate::Txn;
use crate::names::check_name;
use crate::node::{Body, Class, FileData, Node, Slot, Slots};
use crate::ops::data::{push_slots, read_stored};
use crate::vfs::{now_ns, InoMap, NodeRef, Vfs};
use agentfs_memory::TimeNs;
use agentfs_memory::CHUNK_SIZE;
use agentfs_memory::{AuditEntry, Batch, Change, Durability, FileKind, Ino, InodeRecord};
use parking_lot::RwLock;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// The memory class directories, named the same under `mem/` and under `state/NAME/`.
const CLASSES: [(&[u8], Class); 3] = [
    (b"working", Class::Working),
    (b"episodic", Class::Episodic),
    (b"semantic", Class::Semantic),
];

/// A checkpoint name: a plain file name (NAME_MAX, no `/`, no NUL), not hidden.
pub(crate) fn check_checkpoint_name(name: &[u8]) -> Result<()> {
    check_name(name)?;
    if name.is_empty() || name.starts_with(b".") || name.contains(&b'/') || name.contains(&0) {
        return Err(VfsError::Invalid(
            "a checkpoint name is a file name that does not start with `.`",
        ));
    }
    Ok(())
}

/// A copy of subtrees being prepared: new nodes and the store changes that create them.
#[derive(Default)]
struct CopyPlan {
    /// New nodes with their (new) inode numbers, made as the table holds them (no one else
    /// can see them until [`Vfs::insert_nodes`]), so inserting them moves pointers only. A
    /// list, not a map: a snapshot of 10,000 files spent ~4 % of its instructions and 256 KiB
    /// of fresh memory on a map only its directories are looked up in.
    made: Vec<(Ino, NodeRef)>,
    /// The directories of `made`, which entries are added to while the copy goes on.
    made_dirs: InoMap<NodeRef>,
    /// Source inode → copy and its kind, so a hard-linked file stays one inode with several
    /// names.
    map: InoMap<(Ino, FileKind)>,
    /// Entries made in directories that already exist (rollback into the live class dirs).
    top: HashMap<Ino, Vec<(Name, Ino, FileKind)>>,
    /// Durable nodes copied as the store holds them: named by `(source, copy)` in one
    /// [`Change::CopyNodes`] instead of their records, entries and chunk maps. Only when
    /// [`CopyPlan::by_reference`] made the plan (a snapshot).
    pairs: Vec<(Ino, Ino)>,
    by_reference: bool,
    durable: Batch,
    volatile: Batch,
}

impl CopyPlan {
    /// A snapshot's plan, with room for about `nodes` copies (so that a big tree does not
    /// spend its time growing the maps), copying durable nodes by reference: a node whose
    /// store rows are exactly what the tree holds is named by a pair, and the store copies its
    /// rows ([`Change::CopyNodes`]). Its journal record is then ~10 bytes a node instead of
    /// ~110, and the request thread encodes no inode record, entry or chunk map for it.
    fn by_reference(nodes: usize) -> Self {
        Self {
            made: Vec::with_capacity(nodes),
            pairs: Vec::with_capacity(nodes),
            by_reference: true,
            ..Self::default()
        }
    }

    /// Whether the copy of `source` (a node of class `dst_class`) can be a pair: both in the
    /// durable store, and nothing of the source that the store does not hold yet (a file
    /// written since its last commit: its size, times and chunks are the tree's only).
    fn pairs_with(&self, source: &Node, dst_class: Class) -> bool {
        self.by_reference
            && !source.class.is_volatile()
            && !dst_class.is_volatile()
            && match &source.body {
                Body::File(f) => !f.dirty && f.dirty_slots == 0 && f.pending().is_none(),
                _ => true,
            }
    }

    fn batch(&mut self, class: Class) -> &mut Batch {
        if class.is_volatile() {
            &mut self.volatile
        } else {
            &mut self.durable
        }
    }

    // The changes that make a copy. The durable store's are written straight into their
    // journal bytes (`Batch::encoded`): no `Change`, name copy or chunk list per node. The RAM
    // store would only decode them again, so it gets `Change`s.

    fn put_inode(&mut self, class: Class, rec: &InodeRecord) {
        if class.is_volatile() {
            self.volatile.push(Change::PutInode(rec.clone()));
        } else {
            self.durable.encoded().put_inode(rec);
        }
    }

    fn put_dirent(&mut self, class: Class, parent: Ino, name: &[u8], ino: Ino) {
        if class.is_volatile() {
            self.volatile.push(Change::PutDirent {
                parent,
                name: name.to_vec(),
                ino,
            });
        } else {
            self.durable.encoded().put_dirent(parent, name, ino);
        }
    }

    fn set_xattrs(&mut self, class: Class, ino: Ino, xattrs: &Xattrs) {
        for (k, v) in xattrs {
            if class.is_volatile() {
                self.volatile.push(Change::SetXattr {
                    ino,
                    name: k.clone(),
                    value: v.clone(),
                });
            } else {
                self.durable.encoded().set_xattr(ino, k, v);
            }
        }
    }

    /// The chunk map of a copy: its slots are stored (`Clean` or `Pieces`, see
    /// [`Vfs::copy_chunks`]).
    fn set_slots(&mut self, class: Class, ino: Ino, slots: &Slots) {
        if slots.is_empty() {
            return;
        }
        let in_pieces = slots.values().any(|s| matches!(s, Slot::Pieces(_)));
        if class.is_volatile() || in_pieces {
            let batch = self.batch(class);
            push_slots(batch, ino, slots.iter().map(|(i, slot)| (*i, Some(slot))));
            return;
        }
        self.durable.encoded().set_chunks(
            ino,
            slots.iter().map(|(i, slot)| match slot {
                Slot::Clean(id) => (*i, Some(*id)),
                // Not in a copy; a hole, as `push_slots` makes it.
                Slot::Dirty(_) | Slot::Pieces(_) => (*i, None),
            }),
        );
    }

    /// The store changes that make `rec` (a copy of node `source`) with its chunk map and
    /// xattrs: a pair when `paired` (see [`CopyPlan::pairs_with`]), else written out. Its
    /// directory entry is the caller's.
    fn put_copy(
        &mut self,
        paired: bool,
        source: Ino,
        class: Class,
        rec: &InodeRecord,
        chunks: &Slots,
        xattrs: &Xattrs,
    ) {
        if paired {
            self.pairs.push((source, rec.ino));
        } else {
            self.put_inode(class, rec);
            self.set_slots(class, rec.ino, chunks);
            self.set_xattrs(class, rec.ino, xattrs);
        }
    }

    fn add_entry(&mut self, dir: Ino, name: Name, ino: Ino, kind: FileKind) {
        if let Some(d) = self.made_dirs.get(&dir) {
            if let Some(d) = d.write().dir_mut() {
                d.insert_shared(name, ino, kind);
                return;
            }
        }
        self.top.entry(dir).or_default().push((name, ino, kind));
    }

    fn add_node(&mut self, ino: Ino, node: Node) {
        let is_dir = node.is_dir();
        let node = Arc::new(RwLock::new(node));
        if is_dir {
            self.made_dirs.insert(ino, node.clone());
        }
        self.made.push((ino, node));
    }
}

type Xattrs = BTreeMap<Vec<u8>, Vec<u8>>;

/// Minor page faults of the calling thread so far: the fresh memory a snapshot had the kernel
/// clear, logged beside its time because on a VM it is a large and varying part of it (and
/// printed by the `snapshot_cost` example).
pub fn thread_minor_faults() -> i64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the rusage it is pointed at; on failure the zeroed value stays.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr());
        usage.assume_init()
    };
    usage.ru_minflt
}

/// A directory entry's name, shared between a directory and its copies.
type Name = Arc<[u8]>;

/// Every node below `dir` (not `dir` itself): `(parent, name, ino)` per entry, parents first.
type Entries = Vec<(Ino, Vec<u8>, Ino)>;

impl Vfs {
    /// The entries of directory `dir` with their names shared (no copy): `(name, inode)`.
    fn shared_entries_of(&self, dir: Ino) -> Result<Vec<(Name, Ino)>> {
        let node = self.node(dir)?;
        let n = node.read();
        Ok(n.dir()
            .map(|d| d.shared_names().collect())
            .unwrap_or_default())
    }

    /// The entries of directory `dir`: `(name, inode)`.
    fn entries_of(&self, dir: Ino) -> Result<Vec<(Vec<u8>, Ino)>> {
        let node = self.node(dir)?;
        let n = node.read();
        Ok(n.dir()
            .map(|d| d.names().map(|(n, i)| (n.to_vec(), i)).collect())
            .unwrap_or_default())
    }

    /// Copies everything below `src_dir` into `dst_dir` (a new node of `plan` or a live
    /// directory), as nodes of `dst_class`. `paired`: `dst_dir` is the copy of `src_dir` by
    /// a pair of `plan`, which copies their entries in the store.
    fn copy_children(
        &self,
        plan: &mut CopyPlan,
        src_dir: Ino,
        dst_dir: Ino,
        dst_class: Class,
        agent: &Arc<str>,
        paired: bool,
    ) -> Result<()> {
        let queue = self
            .shared_entries_of(src_dir)?
            .into_iter()
            .map(|(name, child)| (name, child, dst_dir))
            .collect();
        self.copy_entries(plan, queue, dst_class, agent, paired)
    }

    /// Copies each `(name, source node, destination directory)` and everything below it, as
    /// nodes of `dst_class`. Iterative, so deep trees cannot overflow a stack. `paired`: the
    /// destination directories are copies by pair of the entries' directories.
    fn copy_entries(
        &self,
        plan: &mut CopyPlan,
        queue: Vec<(Name, Ino, Ino)>,
        dst_class: Class,
        agent: &Arc<str>,
        paired: bool,
    ) -> Result<()> {
        // The fourth field: the inode number the copy already has in its directory's copy
        // (made by `DirEntries::copy_renumbered`), or none yet. The last: the destination
        // directory is a copy by pair, so the store copies an entry to a paired node itself.
        let mut queue: Vec<(Name, Ino, Ino, Option<Ino>, bool)> = queue
            .into_iter()
            .map(|(name, child, dst)| (name, child, dst, None, paired))
            .collect();
        while let Some((name, child, dst, numbered, in_paired_dir)) = queue.pop() {
            if let Some(&(copy, kind)) = plan.map.get(&child) {
                // Another name of a hard-linked file already copied. Its directory's copy
                // may already name a number of its own for it: replaced (the cookie stays),
                // that number is never used.
                // (A paired file in a paired directory: the store copies this entry too,
                // and writing it again changes nothing.)
                plan.put_dirent(dst_class, dst, &name, copy);
                plan.add_entry(dst, name, copy, kind);
                continue;
            }
            let node = self.node(child)?;
            let c = node.read();
            let paired = plan.pairs_with(&c, dst_class);
            let ino = numbered.unwrap_or_else(|| self.alloc_ino());
            let mut rec = c.attr.clone();
            rec.ino = ino;
            let mut copy = Node::new(
                rec.clone(),
                dst_class,
                Some(agent.clone()),
                dst,
                name.clone(),
            );
            copy.xattrs = c.xattrs.clone();
            let chunks = match &c.body {
                Body::File(f) => self.copy_chunks(f, c.class, dst_class)?,
                _ => Slots::default(),
            };
            if let Some(d) = c.dir() {
                // The entries cloned whole, renumbered with a block of fresh numbers; each
                // child is then copied under the number its entry already has.
                let first = self.alloc_inos(d.len() as u64);
                let (entries, children) = d.copy_renumbered(first);
                copy.body = Body::Dir(Box::new(entries));
                queue.extend(
                    children
                        .into_iter()
                        .map(|(name, grandchild, new)| (name, grandchild, ino, Some(new), paired)),
                );
            }
            // Only a file with several names can be reached twice.
            let hard_linked = !c.is_dir() && c.attr.nlink > 1;
            drop(c);
            plan.put_copy(paired, child, dst_class, &rec, &chunks, &copy.xattrs);
            if !(paired && in_paired_dir) {
                plan.put_dirent(dst_class, dst, &name, ino);
            }
            if let Body::File(f) = &mut copy.body {
                f.slots = chunks;
            }
            if numbered.is_none() {
                plan.add_entry(dst, name, ino, rec.kind);
            }
            if hard_linked {
                plan.map.insert(child, (ino, rec.kind));
            }
            plan.add_node(ino, copy);
        }
        Ok(())
    }

    /// The chunk map of a copy of `f` (a file of class `src`) in the store of class `dst`:
    /// stored slots only. Within one store the ids are shared: when every slot is stored, the
    /// copy shares the file's map itself (copy-on-write, see [`Slots`]); across stores the
    /// bytes are copied. Buffered (dirty) chunks are stored: a copy holds what readers of the
    /// file see.
    fn copy_chunks(&self, f: &FileData, src: Class, dst: Class) -> Result<Slots> {
        let same_store = src.is_volatile() == dst.is_volatile();
        // Looked at, not taken from `dirty_slots`: a dirty slot in a shared map would be a
        // hole in the stored copy. (The scan is what `push_slots` does after it anyway.)
        if same_store && !f.slots.values().any(|s| matches!(s, Slot::Dirty(_))) {
            return Ok(f.slots.clone());
        }
        let from = self.store_for(src);
        let to = self.store_for(dst);
        let mut out = BTreeMap::new();
        let mut buf = Vec::new();
        for (idx, slot) in f.slots.iter() {
            let copy = match slot {
                Slot::Clean(_) | Slot::Pieces(_) if same_store => slot.clone(),
                Slot::Clean(_) | Slot::Pieces(_) => {
                    buf.resize(CHUNK_SIZE, 0);
                    let n = read_stored(from.as_ref(), slot, 0, &mut buf)?;
                    Slot::Clean(to.put_chunk(&buf[..n])?)
                }
                Slot::Dirty(bytes) if bytes.is_empty() => continue,
                Slot::Dirty(bytes) => Slot::Clean(to.put_chunk(bytes)?),
            };
            out.insert(*idx, copy);
        }
        Ok(out.into())
    }

    /// Every entry below `dir`, parents first.
    fn subtree(&self, dir: Ino) -> Result<Entries> {
        let mut out = Vec::new();
        let mut queue = vec![dir];
        while let Some(d) = queue.pop() {
            for (name, ino) in self.entries_of(d)? {
                if self.node(ino).is_ok_and(|c| c.read().is_dir()) {
                    queue.push(ino);
                }
                out.push((d, name, ino));
            }
        }
        Ok(out)
    }

    /// Store changes removing the nodes of `entries` (each inode once). Nodes with open
    /// handles are kept with no link, like an unlinked open file, and returned.
    fn removal(&self, batch: &mut Batch, entries: &Entries) -> Vec<Ino> {
        let mut seen = HashSet::new();
        let mut kept_open = Vec::new();
        for (parent, name, ino) in entries {
            batch.push(Change::DeleteDirent {
                parent: *parent,
                name: name.clone(),
            });
            if !seen.insert(*ino) {
                continue;
            }
            let open = self.node(*ino).ok().and_then(|node| {
                let n = node.read();
                (n.open_count > 0).then(|| n.attr.clone())
            });
            match open {
                Some(mut attr) => {
                    attr.nlink = 0;
                    batch.push(Change::PutInode(attr));
                    kept_open.push(*ino);
                }
                None => batch.push(Change::DeleteInode(*ino)),
            }
        }
        kept_open
    }

    /// After a removal was committed: drop the nodes from memory (and from their agent's
    /// counters), except open ones, which live on unlinked until their last close.
    fn forget_removed(&self, entries: &Entries, kept_open: &[Ino]) {
        let kept: HashSet<Ino> = kept_open.iter().copied().collect();
        for ino in &kept {
            if let Ok(node) = self.node(*ino) {
                node.write().attr.nlink = 0;
            }
        }
        // One pass under the table's write lock (not one lock per node: a rollback removes
        // thousands), then the counters, with the table released.
        let removed: Vec<crate::vfs::NodeRef> = {
            let mut nodes = self.nodes.write();
            entries
                .iter()
                .filter(|(_, _, ino)| !kept.contains(ino))
                .filter_map(|(_, _, ino)| nodes.remove(ino))
                .collect()
        };
        let mut agent: Option<Arc<Agent>> = None;
        for node in removed {
            let n = node.read();
            let (Some(name), Some(ci)) = (n.agent.as_deref(), n.class.memory_index()) else {
                continue;
            };
            if agent.as_ref().is_none_or(|a| &*a.name != name) {
                agent = self.agent(name);
            }
            if let Some(a) = &agent {
                a.add_files(ci, -1);
                a.add_bytes(ci, -(n.attr.size as i64));
            }
        }
    }

    fn insert_nodes(&self, made: Vec<(Ino, NodeRef)>) {
        let mut nodes = self.nodes.write();
        nodes.reserve(made.len());
        nodes.extend(made);
    }

    /// `mkdir AGENT/state/NAME`: a read-only copy of `mem/`, in one durable batch. Runs under
    /// the agent's exclusive cut lock (taken by the choke point), so no change of the agent
    /// is half-applied, and under the namespace mutex.
    pub(crate) fn snapshot(
        &self,
        caller: &Caller,
        txn: &mut Txn,
        state_dir: Ino,
        name: &[u8],
    ) -> Result<InodeRecord> {
        check_checkpoint_name(name)?;
        let started = std::time::Instant::now();
        let faults_before = thread_minor_faults();
        let _ns = self.ns.lock();
        let state = self.node(state_dir)?;
        let (agent_name, mut state_attr) = {
            let s = state.read();
            if s.dir().ok_or(VfsError::NotDir)?.get(name).is_some() {
                return Err(VfsError::Exists);
            }
            let agent = s
                .agent
                .clone()
                .ok_or(VfsError::Invalid("state/ of no agent"))?;
            (agent, s.attr.clone())
        };
        let agent = self
            .agent(&agent_name)
            .ok_or(VfsError::Invalid("state/ of an unknown agent"))?;
        let mem = self.child_ino(agent.root, b"mem")?;
        let now = now_ns();
        let root = self.alloc_ino();
        let root_rec = InodeRecord {
            ino: root,
            kind: FileKind::Dir,
            perm: 0o555,
            uid: caller.uid,
            gid: caller.gid,
            nlink: 2 + CLASSES.len() as u32,
            size: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            rdev: 0,
            symlink_target: Vec::new(),
        };
        let mut plan = CopyPlan::by_reference(agent.usage(None).files as usize + 8);
        // One copy of the name for the node and its entry in `state/`.
        let root_name: Name = name.into();
        plan.add_node(
            root,
            Node::new(
                root_rec.clone(),
                Class::Checkpoint,
                Some(agent_name.clone()),
                state_dir,
                root_name.clone(),
            ),
        );
        plan.put_inode(Class::Checkpoint, &root_rec);
        plan.put_dirent(Class::Checkpoint, state_dir, name, root);
        for (class_name, _) in CLASSES {
            let src = self.child_ino(mem, class_name)?;
            let (mut rec, xattrs, paired) = {
                let node = self.node(src)?;
                let n = node.read();
                let paired = plan.pairs_with(&n, Class::Checkpoint);
                (n.attr.clone(), n.xattrs.clone(), paired)
            };
            let ino = self.alloc_ino();
            rec.ino = ino;
            let shared_name: Name = class_name.into();
            let mut copy = Node::new(
                rec.clone(),
                Class::Checkpoint,
                Some(agent_name.clone()),
                root,
                shared_name.clone(),
            );
            let no_chunks = Slots::default();
            plan.put_copy(paired, src, Class::Checkpoint, &rec, &no_chunks, &xattrs);
            plan.put_dirent(Class::Checkpoint, root, class_name, ino);
            copy.xattrs = xattrs;
            plan.add_node(ino, copy);
            plan.add_entry(root, shared_name, ino, FileKind::Dir);
            self.copy_children(&mut plan, src, ino, Class::Checkpoint, &agent_name, paired)?;
        }
        if !plan.pairs.is_empty() {
            plan.durable
                .push(Change::CopyNodes(std::mem::take(&mut plan.pairs)));
        }
        state_attr.nlink += 1;
        state_attr.mtime = now;
        state_attr.ctime = now;
        plan.durable.push(Change::PutInode(state_attr.clone()));
        plan.durable.push(Change::SetMeta {
            key: "next_ino".into(),
            value: self
                .next_ino
                .load(std::sync::atomic::Ordering::Relaxed)
                .to_string(),
        });
        let copied = plan.made.len();
        let walked = started.elapsed();
        txn.entry.size = copied as u64;
        txn.entry.detail = format!("{copied} nodes");
        // Like every namespace change: survives `kill -9` once `mkdir` returns; an fsync of
        // `state/` (or `sync`) makes it survive a power loss. `Disk` here would also flush
        // every chunk written since the last sync, making the snapshot cost O(unsynced
        // bytes) instead of O(files).
        txn.commit(
            self,
            Class::Checkpoint,
            std::mem::take(&mut plan.durable),
            Durability::Process,
        )?;

        let committed = started.elapsed();
        self.insert_nodes(plan.made);
        let mut s = state.write();
        s.attr = state_attr;
        if let Some(d) = s.dir_mut() {
            d.insert_shared(root_name, root, FileKind::Dir);
        }
        tracing::info!(
            agent = %agent_name,
            checkpoint = %String::from_utf8_lossy(name),
            nodes = copied,
            ms = started.elapsed().as_secs_f64() * 1e3,
            copy_ms = walked.as_secs_f64() * 1e3,
            commit_ms = (committed - walked).as_secs_f64() * 1e3,
            faults = thread_minor_faults() - faults_before,
            "snapshot taken"
        );
        Ok(root_rec)
    }

    /// `rmdir AGENT/state/NAME` by an operator: the checkpoint and everything in it, in one
    /// durable batch.
    pub(crate) fn delete_checkpoint(
        &self,
        txn: &mut Txn,
        state_dir: Ino,
        name: &[u8],
    ) -> Result<()> {
        let _ns = self.ns.lock();
        let state = self.node(state_dir)?;
        let root = self.child_ino(state_dir, name)?;
        let mut entries = vec![(state_dir, name.to_vec(), root)];
        entries.extend(self.subtree(root)?);
        let mut batch = Batch::new();
        let kept_open = self.removal(&mut batch, &entries);
        let now = now_ns();
        let mut state_attr = state.read().attr.clone();
        state_attr.nlink = state_attr.nlink.saturating_sub(1);
        state_attr.mtime = now;
        state_attr.ctime = now;
        batch.push(Change::PutInode(state_attr.clone()));
        txn.entry.detail = format!("{} nodes", entries.len());
        txn.commit(self, Class::Checkpoint, batch, Durability::Process)?;
        {
            let mut s = state.write();
            s.attr = state_attr;
            if let Some(d) = s.dir_mut() {
                d.remove(name);
            }
        }
        self.forget_removed(&entries, &kept_open);
        tracing::info!(checkpoint = %String::from_utf8_lossy(name), nodes = entries.len(), "checkpoint deleted");
        Ok(())
    }

    /// What a file or symlink is, for deciding whether a rollback may keep the live node:
    /// `None` for directories, hard-linked files and files with unsaved writes (always
    /// replaced or descended into).
    fn sameness_key(&self, ino: Ino) -> Result<Option<SamenessKey>> {
        let node = self.node(ino)?;
        let n = node.read();
        if n.is_dir() || n.attr.nlink != 1 {
            return Ok(None);
        }
        let chunks = match &n.body {
            Body::File(f) => {
                if f.dirty
                    || f.dirty_slots > 0
                    || f.pending().is_some_and(|p| p.truncated_from.is_some())
                {
                    return Ok(None);
                }
                let mut slots = Vec::with_capacity(f.slots.len());
                for (idx, slot) in &f.slots {
                    match slot {
                        Slot::Clean(_) | Slot::Pieces(_) => slots.push((*idx, slot.clone())),
                        Slot::Dirty(_) => return Ok(None),
                    }
                }
                slots
            }
            _ => Vec::new(),
        };
        let a = &n.attr;
        Ok(Some(SamenessKey {
            kind: a.kind,
            perm: a.perm,
            uid: a.uid,
            gid: a.gid,
            size: a.size,
            mtime: a.mtime,
            rdev: a.rdev,
            target: a.symlink_target.clone(),
            xattrs: n.xattrs.clone(),
            chunks,
        }))
    }

    /// Plans the changes that make the live class directory `live` (of `class`) equal to the
    /// checkpoint's `src`: what differs is removed and copied, what is identical is kept
    /// (same inode, nothing invalidated), directories present on both sides are descended
    /// into and take the checkpoint's attributes.
    fn reconcile(
        &self,
        rb: &mut Reconcile,
        src: Ino,
        live: Ino,
        class: Class,
        agent: &Arc<str>,
        now: TimeNs,
    ) -> Result<()> {
        let mut stack = vec![(src, live)];
        while let Some((s, l)) = stack.pop() {
            rb.visited.push(l);
            self.reconcile_dir_attrs(rb, s, l, class, now)?;
            let theirs: HashMap<Vec<u8>, Ino> = self.entries_of(s)?.into_iter().collect();
            let mine = self.entries_of(l)?;
            let mut kept_names = HashSet::new();
            let mut replaced = HashSet::new();
            let mut copies = Vec::new();
            for (name, li) in &mine {
                let keep = match theirs.get(name) {
                    None => false,
                    Some(&si) => {
                        // One node lock at a time.
                        let s_dir = self.node(si)?.read().is_dir();
                        let l_dir = self.node(*li)?.read().is_dir();
                        if s_dir && l_dir {
                            stack.push((si, *li));
                            true
                        } else {
                            let same = match (self.sameness_key(si)?, self.sameness_key(*li)?) {
                                (Some(a), Some(b)) => a == b,
                                _ => false,
                            };
                            if same {
                                rb.kept += 1;
                            } else {
                                replaced.insert(name.clone());
                                copies.push((Name::from(&name[..]), si, l));
                            }
                            same
                        }
                    }
                };
                if keep {
                    kept_names.insert(name.clone());
                } else {
                    rb.remove(self, l, name.clone(), *li, class)?;
                }
            }
            for (name, si) in theirs {
                if kept_names.contains(&name) || replaced.contains(&name) {
                    continue;
                }
                // A new name: the kernel may hold it as a negative entry, or from before a
                // KILL dropped working memory.
                rb.changed.insert(l);
                rb.invalidate.push((l, name.clone()));
                copies.push((name.into(), si, l));
            }
            self.copy_entries(&mut rb.copy, copies, class, agent, false)?;
        }
        Ok(())
    }

    /// The checkpoint directory `src`'s mode, owner, times, link count and xattrs for the
    /// live directory `live`, when they differ.
    fn reconcile_dir_attrs(
        &self,
        rb: &mut Reconcile,
        src: Ino,
        live: Ino,
        class: Class,
        now: TimeNs,
    ) -> Result<()> {
        let (src_attr, src_xattrs) = {
            let node = self.node(src)?;
            let n = node.read();
            (n.attr.clone(), n.xattrs.clone())
        };
        let (old, old_xattrs) = {
            let node = self.node(live)?;
            let n = node.read();
            (n.attr.clone(), n.xattrs.clone())
        };
        let mut attr = old.clone();
        attr.perm = src_attr.perm;
        attr.uid = src_attr.uid;
        attr.gid = src_attr.gid;
        attr.nlink = src_attr.nlink;
        attr.atime = src_attr.atime;
        attr.mtime = src_attr.mtime;
        if attr == old && src_xattrs == old_xattrs {
            return Ok(());
        }
        attr.ctime = now;
        let batch = rb.copy.batch(class);
        batch.push(Change::PutInode(attr.clone()));
        if src_xattrs != old_xattrs {
            for k in old_xattrs.keys() {
                batch.push(Change::RemoveXattr {
                    ino: live,
                    name: k.clone(),
                });
            }
            for (k, v) in &src_xattrs {
                batch.push(Change::SetXattr {
                    ino: live,
                    name: k.clone(),
                    value: v.clone(),
                });
            }
        }
        rb.changed.insert(live);
        rb.attrs.insert(live, (attr, src_xattrs));
        Ok(())
    }

    /// `echo NAME > sys/agents/AGENT/rollback`: `mem/` becomes equal to the checkpoint.
    /// Returns the number of nodes the restored `mem/` holds (copied or kept).
    ///
    /// Durability as for a snapshot: survives `kill -9` when the write returns.
    ///
    /// Under the agent's exclusive cut lock (its changes wait, in flight ones finish first)
    /// and the namespace mutex: the durable classes change in one durable batch with the
    /// audit entry, then working memory in the RAM store, then the live tree, with every
    /// directory that changes write-locked together (parents first) so no lookup or listing
    /// sees a mix. Only what differs from the checkpoint is replaced: the cost and the
    /// kernel's cache invalidation follow the changes, not the size of the tree.
    pub(crate) fn rollback(
        &self,
        caller: &Caller,
        agent: &Arc<Agent>,
        name: &[u8],
    ) -> Result<usize> {
        check_checkpoint_name(name)?;
        let started = std::time::Instant::now();
        let mut invalidate: Vec<(Ino, Vec<u8>)> = Vec::new();
        let (restored, copied, committed, ticket, (index_removed, index_copied)) = {
            let _cut = agent.cut.write();
            let _ns = self.ns.lock();
            let state = self.child_ino(agent.root, b"state")?;
            let checkpoint = self.child_ino(state, name)?;
            let mem = self.child_ino(agent.root, b"mem")?;
            let now = now_ns();
            let mut rb = Reconcile::default();
            for (class_name, class) in CLASSES {
                let src = self.child_ino(checkpoint, class_name)?;
                let live = self.child_ino(mem, class_name)?;
                self.reconcile(&mut rb, src, live, class, &agent.name, now)?;
            }
            // Removals first in each batch: a copy may reuse a removed name.
            let mut durable = Batch::new();
            let mut volatile = Batch::new();
            let kept_open = self.removal(&mut durable, &rb.removed_durable);
            let kept_open_ram = self.removal(&mut volatile, &rb.removed_volatile);
            durable
                .changes
                .extend(std::mem::take(&mut rb.copy.durable.changes));
            volatile
                .changes
                .extend(std::mem::take(&mut rb.copy.volatile.changes));
            durable.push(Change::SetMeta {
                key: "next_ino".into(),
                value: self
                    .next_ino
                    .load(std::sync::atomic::Ordering::Relaxed)
                    .to_string(),
            });
            let made = rb.copy.made.len();
            let removed = rb.removed_durable.len() + rb.removed_volatile.len();
            let restored = made + rb.kept;
            let copied = started.elapsed();
            let entry = AuditEntry {
                time: now,
                agent: agent.name.to_string(),
                pid: caller.pid,
                uid: caller.uid,
                op: "rollback".to_string(),
                path: format!("{}/mem", agent.name),
                target: format!("{}/state/{}", agent.name, String::from_utf8_lossy(name)),
                size: restored as u64,
                detail: format!("{made} nodes copied, {} kept, {removed} removed", rb.kept),
                ..Default::default()
            };
            // The durable classes, the record and the index's outbox marker: one batch, all or
            // nothing after a crash.
            let ticket = self.outbox.mark(&mut durable, &agent.name);
            if let Err(e) =
                self.commit_batch(Class::Semantic, durable, Durability::Process, Some(entry))
            {
                ticket.cancel();
                return Err(e);
            }
            ticket.committed();
            // Working memory is RAM: gone after a crash anyway. Its chunks were put before,
            // so this commit has nothing left to refuse; should it fail, the live tree still
            // holds the chunks (put, never released) and stays right.
            if let Err(e) = self.volatile.commit(volatile, Durability::Process) {
                tracing::error!(agent = %agent.name, error = %e, "rollback: RAM store commit failed");
            }

            let committed = started.elapsed();
            // Counters: the new nodes count now; the removed ones leave through forget_node.
            for (_, n) in &rb.copy.made {
                let n = n.read();
                if let Some(ci) = n.class.memory_index() {
                    agent.add_files(ci, 1);
                    agent.add_bytes(ci, n.attr.size as i64);
                }
            }
            let mut top = std::mem::take(&mut rb.copy.top);
            rb.semantic_copied = rb
                .copy
                .made
                .iter()
                .filter(|(_, n)| {
                    let n = n.read();
                    n.class == Class::Semantic && matches!(n.body, Body::File(_))
                })
                .map(|(ino, _)| *ino)
                .collect();
            self.insert_nodes(std::mem::take(&mut rb.copy.made));
            {
                // Every directory that changes, parents first (the order they were visited
                // in; readers never hold two node locks, so this order cannot deadlock).
                let dirs: Vec<(Ino, crate::vfs::NodeRef)> = rb
                    .visited
                    .iter()
                    .filter(|d| rb.changed.contains(d))
                    .filter_map(|d| self.node(*d).ok().map(|n| (*d, n)))
                    .collect();
                let mut guards: Vec<_> = dirs.iter().map(|(_, n)| n.write()).collect();
                for (g, (ino, _)) in guards.iter_mut().zip(dirs.iter()) {
                    if let Some((attr, xattrs)) = rb.attrs.remove(ino) {
                        g.attr = attr;
                        g.xattrs = xattrs;
                    }
                    if let Some(d) = g.dir_mut() {
                        for n in rb.gone.remove(ino).unwrap_or_default() {
                            d.remove(&n);
                        }
                        for (n, i, k) in top.remove(ino).unwrap_or_default() {
                            d.insert_shared(n, i, k);
                        }
                    }
                    // An empty name: the directory's own attributes and listing.
                    invalidate.push((*ino, Vec::new()));
                }
            }
            let mut removed_all = std::mem::take(&mut rb.removed_durable);
            removed_all.extend(std::mem::take(&mut rb.removed_volatile));
            let mut open_all = kept_open;
            open_all.extend(kept_open_ram);
            self.forget_removed(&removed_all, &open_all);
            *agent.last_rollback.lock() = Some((String::from_utf8_lossy(name).into_owned(), now));
            invalidate.append(&mut rb.invalidate);
            let index_changes = (
                std::mem::take(&mut rb.semantic_removed),
                std::mem::take(&mut rb.semantic_copied),
            );
            (restored, copied, committed, ticket, index_changes)
        };
        // The kernel caches names for 1 s: drop the replaced ones now. After the locks are
        // released: the kernel takes the directory's lock to invalidate, and a call of the
        // agent may hold it while it waits for our cut lock.
        let swapped = started.elapsed();
        let invalidated = invalidate.len();
        self.invalidate(agent, invalidate);
        let kernel = started.elapsed();
        // mem/semantic is now the checkpoint's: the index follows, by the same changes (kept
        // files are indexed already); should any update fail, it is rebuilt whole.
        if self.index_rollback(&index_removed, &index_copied) {
            ticket.send(&self.search);
        } else {
            self.reindex_agent(agent, Some(ticket), false);
        }
        tracing::info!(
            agent = %agent.name,
            checkpoint = %String::from_utf8_lossy(name),
            nodes = restored,
            invalidated,
            ms = started.elapsed().as_secs_f64() * 1e3,
            copy_ms = copied.as_secs_f64() * 1e3,
            commit_ms = (committed - copied).as_secs_f64() * 1e3,
            swap_ms = (swapped - committed).as_secs_f64() * 1e3,
            kernel_ms = (kernel - swapped).as_secs_f64() * 1e3,
            index_ms = (started.elapsed() - kernel).as_secs_f64() * 1e3,
            "rolled back"
        );
        Ok(restored)
    }
}

/// What decides whether a file of the checkpoint and a live file are the same for a
/// rollback: type, mode, owner, size, mtime, device, symlink target, xattrs and chunks.
#[derive(PartialEq, Eq)]
struct SamenessKey {
    kind: FileKind,
    perm: u16,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: TimeNs,
    rdev: u32,
    target: Vec<u8>,
    xattrs: Xattrs,
    chunks: Vec<(u64, Slot)>,
}

/// A rollback being planned: the copies, the removals, and which live directories change.
#[derive(Default)]
struct Reconcile {
    copy: CopyPlan,
    /// Live entries to remove (with everything below them), per store.
    removed_durable: Entries,
    removed_volatile: Entries,
    /// Names to drop from each live directory.
    gone: HashMap<Ino, Vec<Vec<u8>>>,
    /// New attributes and xattrs of live directories.
    attrs: HashMap<Ino, (InodeRecord, Xattrs)>,
    /// Live directories whose entries or attributes change.
    changed: HashSet<Ino>,
    /// Every live directory reconciled, parents before children.
    visited: Vec<Ino>,
    /// Names the kernel must forget.
    invalidate: Vec<(Ino, Vec<u8>)>,
    /// Live nodes kept as they are.
    kept: usize,
    /// Removed entries of `mem/semantic`: (path of the live directory, name, is a directory),
    /// for the search index.
    semantic_removed: Vec<(Vec<u8>, Vec<u8>, bool)>,
    /// Files copied into `mem/semantic`, to index.
    semantic_copied: Vec<Ino>,
}

impl Reconcile {
    /// Plans removing `dir/name` (inode `ino`, with its subtree if a directory).
    fn remove(&mut self, vfs: &Vfs, dir: Ino, name: Vec<u8>, ino: Ino, class: Class) -> Result<()> {
        let mut entries = vec![(dir, name.clone(), ino)];
        let is_dir = vfs.node(ino)?.read().is_dir();
        if is_dir {
            entries.extend(vfs.subtree(ino)?);
        }
        if class.is_volatile() {
            self.removed_volatile.extend(entries);
        } else {
            self.removed_durable.extend(entries);
        }
        if class == Class::Semantic {
            let path = vfs.path_bytes_of(dir);
            self.semantic_removed.push((path, name.clone(), is_dir));
        }
        self.gone.entry(dir).or_default().push(name.clone());
        self.changed.insert(dir);
        self.invalidate.push((dir, name));
        Ok(())
    }
}
