//! The filesystem core: the live tree, loading it from the store, and the read-side calls.
//! Mutations live in `mutate.rs` (the choke point) and `ops/`.
//!
//! Lock order (never take them the other way round):
//! an agent's `cut` (shared by each of its mutations, exclusive for a snapshot or rollback) →
//! an agent's `limits` (only while a quota or file-count rule applies to it) → `ns`
//! (namespace mutex) → `nodes` (table) → node locks, a parent before its children → an
//! agent's `rate` → `pending_audit` → store internals. Calls that do not change the namespace (read, write,
//! getattr, readdir) never take `ns`, so reads of different files never wait on each other.

use crate::agent::Agent;
use crate::caller::Caller;
use crate::error::{Result, VfsError};
use crate::node::{Body, Class, Node, Slot};
use crate::sysfs;
use agentfs_memory::search::SearchIndex;
use agentfs_memory::{
    AuditEntry, Batch, Change, FileKind, Ino, InodeRecord, LoadedState, RamStore, SqliteStore,
    Store, StoreOptions, TimeNs, CHUNK_SIZE,
};
use agentfs_policy::Engine;
use agentfs_signals::Bindings;
use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Inode of the mount root.
pub const ROOT_INO: Ino = 1;
/// First inode number handed to files; lower ones are reserved for the root and `sys/`.
pub const FIRST_FREE_INO: Ino = 16;

pub type NodeRef = Arc<RwLock<Node>>;

/// Hasher for inode numbers: one multiply instead of SipHash (~150 instructions per lookup
/// of the node table). Inode numbers are handed out by the daemon, one after another, so no
/// caller can choose keys that collide; the fold keeps strided numbers apart too.
#[derive(Default, Clone, Copy)]
pub(crate) struct InoHasher(u64);

impl std::hash::Hasher for InoHasher {
    fn finish(&self) -> u64 {
        let h = self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        h ^ (h >> 32)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x100_0000_01B3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

/// A map keyed by inode number.
pub(crate) type InoMap<V> = HashMap<Ino, V, std::hash::BuildHasherDefault<InoHasher>>;

/// Entries readdirplus collects at a time before reading their attributes: the kernel's
/// reply buffer decides how many fit, this only bounds the work done ahead of it.
const READDIRPLUS_BATCH: usize = 64;

/// A snapshot of a virtual file, taken at open so that reads in pieces are consistent.
#[derive(Debug)]
pub(crate) struct VirtualHandle {
    pub data: Vec<u8>,
}

/// Directory of the search index inside the data dir.
pub const SEARCH_DIR: &str = "search-index";

pub struct Vfs {
    pub(crate) data_dir: PathBuf,
    pub(crate) durable: Arc<dyn Store>,
    pub(crate) volatile: Arc<dyn Store>,
    pub(crate) nodes: RwLock<InoMap<NodeRef>>,
    /// Serialises namespace changes (create, link, unlink, rename …). Not taken by reads or
    /// by writes to file content; namespace changes are serialised by the store's single
    /// writer anyway.
    pub(crate) ns: Mutex<()>,
    pub(crate) next_ino: AtomicU64,
    pub(crate) agents: RwLock<BTreeMap<Arc<str>, Arc<Agent>>>,
    pub(crate) agents_by_index: RwLock<Vec<Arc<Agent>>>,
    /// The rules every mutation is decided by; swapped atomically on reload.
    pub(crate) policy: Arc<Engine>,
    /// Which processes act for which agent (`sys/agents/AGENT/pids`, `agentfs run`).
    pub(crate) bindings: Bindings,
    /// Audit entries of calls that committed nothing themselves (writes into the page-cache-like
    /// buffers, refused calls); they ride along with the next store commit.
    pub(crate) pending_audit: Mutex<VecDeque<AuditEntry>>,
    pub(crate) handles: Mutex<HashMap<u64, VirtualHandle>>,
    pub(crate) next_fh: AtomicU64,
    /// When this daemon started: the times of the virtual `sys/` nodes.
    pub(crate) started: TimeNs,
    /// `--audit-reads`: record every read(2) of an agent's file too (off by default).
    pub(crate) audit_reads: std::sync::atomic::AtomicBool,
    /// Indexes of the growing audit files `sys/audit`, `sys/agents/A/audit` (auditfs.rs).
    pub(crate) audit_views: crate::auditfs::AuditViews,
    /// Drops names (or, with an empty name, a directory's attributes) from the kernel's
    /// caches after the daemon changed the tree on its own (rollback). Set by the adapter.
    pub(crate) invalidator: RwLock<Option<Invalidator>>,
    /// Full-text index of every agent's `mem/semantic/` (semantic.rs).
    pub(crate) search: Arc<SearchIndex>,
    /// Inodes of `.search/QUERY` files.
    pub(crate) query_inodes: crate::semantic::QueryInodes,
    /// Markers that make index updates survive a crash (outbox.rs).
    pub(crate) outbox: Arc<crate::outbox::Outbox>,
    /// Agents whose markers were found at mount: their index is caught up in the background.
    pub(crate) index_recovery: Mutex<Vec<Arc<str>>>,
    /// This core itself, for work it hands to its own threads (a background reindex).
    pub(crate) me: std::sync::Weak<Vfs>,
    /// ENOSPC before the data dir's filesystem is full (space.rs).
    pub(crate) headroom: crate::space::Headroom,
    /// Latency histograms of the choke point (metrics.rs, `sys/metrics`).
    pub(crate) metrics: crate::metrics::Metrics,
}

/// `(directory, name)`: forget that entry; `(inode, b"")`: forget the inode's attributes.
pub type Invalidator = Arc<dyn Fn(Ino, &[u8]) + Send + Sync>;

impl std::fmt::Debug for Vfs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vfs")
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

/// Attributes as the adapter needs them: the stored record plus what is derived from the
/// content (the space actually allocated, for `st_blocks` and `du`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub rec: InodeRecord,
    /// 512-byte blocks allocated: stored chunks, not holes.
    pub blocks: u64,
}

impl std::ops::Deref for Attr {
    type Target = InodeRecord;
    fn deref(&self) -> &InodeRecord {
        &self.rec
    }
}

impl Attr {
    /// A record whose content is not in hand: counted as fully allocated.
    pub(crate) fn dense(rec: InodeRecord) -> Self {
        let blocks = if rec.kind == FileKind::File {
            rec.size.div_ceil(512)
        } else {
            0
        };
        Attr { rec, blocks }
    }

    pub(crate) fn of(node: &Node) -> Self {
        let blocks = match &node.body {
            Body::File(f) => node
                .attr
                .size
                .min(f.slots.len() as u64 * CHUNK_SIZE as u64)
                .div_ceil(512),
            _ => 0,
        };
        Attr {
            rec: node.attr.clone(),
            blocks,
        }
    }
}

/// One directory entry for readdir.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub ino: Ino,
    /// Cookie to resume after this entry.
    pub offset: u64,
    pub kind: FileKind,
    pub name: Vec<u8>,
}

/// What `open` tells the adapter.
#[derive(Debug, Clone, Copy)]
pub struct Opened {
    pub fh: u64,
    /// Serve reads and writes without the page cache (virtual files whose size is unknown).
    pub direct_io: bool,
}

/// Filesystem-wide figures for statfs.
#[derive(Debug, Clone, Copy)]
pub struct FsStats {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
}

/// The fixed directories of an agent: `AGENT/`, `mem/`, `state/`, `policy/` and the three
/// memory class directories.
pub(crate) fn is_structural(class: Class, parent_class: Class) -> bool {
    matches!(
        (parent_class, class),
        (Class::Root, Class::AgentRoot)
            | (Class::AgentRoot, _)
            | (
                Class::MemDir,
                Class::Working | Class::Episodic | Class::Semantic
            )
    )
}

pub fn now_ns() -> TimeNs {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as TimeNs,
        Err(_) => 0,
    }
}

impl Vfs {
    /// Opens (creating if needed) the durable store in `data_dir` and loads the tree.
    /// The built-in policy decides.
    pub fn open(data_dir: &Path) -> Result<Arc<Vfs>> {
        Self::open_with_policy(data_dir, Arc::new(Engine::builtin()))
    }

    /// Like [`Vfs::open`], with the rules of `policy`.
    pub fn open_with_policy(data_dir: &Path, policy: Arc<Engine>) -> Result<Arc<Vfs>> {
        std::fs::create_dir_all(data_dir).map_err(|e| VfsError::Store(e.into()))?;
        let durable = SqliteStore::open(data_dir, StoreOptions { create: true })?;
        // Derived data beside the store, never under the mountpoint.
        let (search, rebuild) = crate::semantic::open_index(&data_dir.join(SEARCH_DIR))?;
        let vfs = Self::build(
            data_dir,
            Arc::new(durable),
            Arc::new(RamStore::new()),
            policy,
            Arc::new(search),
        )?;
        vfs.start_index_recovery(rebuild);
        Ok(vfs)
    }

    /// Builds a core over the given stores (tests use two RAM stores).
    pub fn with_stores(
        data_dir: &Path,
        durable: Arc<dyn Store>,
        volatile: Arc<dyn Store>,
        policy: Arc<Engine>,
    ) -> Result<Arc<Vfs>> {
        // RAM stores get a RAM index: nothing of a test run is left on disk.
        let search = SearchIndex::open(None).map_err(|e| VfsError::Search(e.to_string()))?;
        Self::build(data_dir, durable, volatile, policy, Arc::new(search))
    }

    fn build(
        data_dir: &Path,
        durable: Arc<dyn Store>,
        volatile: Arc<dyn Store>,
        policy: Arc<Engine>,
        search: Arc<SearchIndex>,
    ) -> Result<Arc<Vfs>> {
        let loaded = durable.load()?;
        let outbox = crate::outbox::Outbox::new(durable.clone());
        let vfs = Arc::new_cyclic(|me| Vfs {
            data_dir: data_dir.to_path_buf(),
            durable,
            volatile,
            nodes: RwLock::new(InoMap::default()),
            ns: Mutex::new(()),
            next_ino: AtomicU64::new(FIRST_FREE_INO),
            agents: RwLock::new(BTreeMap::new()),
            agents_by_index: RwLock::new(Vec::new()),
            policy,
            bindings: Bindings::new(),
            pending_audit: Mutex::new(VecDeque::new()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            started: now_ns(),
            audit_views: Default::default(),
            audit_reads: Default::default(),
            invalidator: RwLock::new(None),
            search,
            query_inodes: Default::default(),
            outbox,
            index_recovery: Mutex::new(Vec::new()),
            me: me.clone(),
            headroom: crate::space::Headroom::new(data_dir),
            metrics: Default::default(),
        });
        vfs.load(loaded)?;
        Ok(vfs)
    }

    /// Builds the in-memory tree from what the store holds, creating the root on first use and
    /// deleting orphans (inodes no directory names: unlinked while open before a crash).
    fn load(&self, loaded: LoadedState) -> Result<()> {
        let LoadedState {
            inodes,
            dirents,
            chunks,
            pieces,
            xattrs,
            meta,
        } = loaded;
        *self.index_recovery.lock() = self.outbox.adopt(&meta);
        let mut max_ino = FIRST_FREE_INO - 1;
        let mut table: HashMap<Ino, Node> = HashMap::with_capacity(inodes.len() + 1);
        for rec in inodes {
            max_ino = max_ino.max(rec.ino);
            table.insert(
                rec.ino,
                Node::new(rec, Class::Semantic, None, ROOT_INO, Vec::new()),
            );
        }
        for (key, value) in &meta {
            if key == "next_ino" {
                if let Ok(n) = value.parse::<u64>() {
                    max_ino = max_ino.max(n.saturating_sub(1));
                }
            }
        }
        self.next_ino.store(max_ino + 1, Ordering::Relaxed);

        let mut boot = Batch::new();
        if let std::collections::hash_map::Entry::Vacant(slot) = table.entry(ROOT_INO) {
            let now = now_ns();
            let rec = InodeRecord {
                ino: ROOT_INO,
                kind: FileKind::Dir,
                perm: 0o755,
                uid: 0,
                gid: 0,
                nlink: 2,
                size: 0,
                atime: now,
                mtime: now,
                ctime: now,
                crtime: now,
                rdev: 0,
                symlink_target: Vec::new(),
            };
            boot.push(Change::PutInode(rec.clone()));
            slot.insert(Node::new(rec, Class::Root, None, ROOT_INO, Vec::new()));
        }
        for (parent, name, ino) in dirents {
            let Some(child) = table.get_mut(&ino) else {
                tracing::warn!(
                    parent,
                    ino,
                    "directory entry names a missing inode; skipped"
                );
                continue;
            };
            let name: Arc<[u8]> = name.into();
            child.parent = parent;
            child.name = name.clone();
            let kind = child.attr.kind;
            if let Some(dir) = table.get_mut(&parent).and_then(|p| p.dir_mut()) {
                dir.insert_shared(name, ino, kind);
            }
        }
        let whole = chunks
            .into_iter()
            .map(|(ino, idx, id)| (ino, idx, Slot::Clean(id)));
        let in_pieces = pieces
            .into_iter()
            .map(|(ino, idx, p)| (ino, idx, Slot::Pieces(p.into())));
        for (ino, idx, slot) in whole.chain(in_pieces) {
            if let Some(Node {
                body: Body::File(f),
                ..
            }) = table.get_mut(&ino)
            {
                f.slots.insert(idx, slot);
            }
        }
        for (ino, name, value) in xattrs {
            if let Some(node) = table.get_mut(&ino) {
                node.xattrs.insert(name, value);
            }
        }

        // Walk from the root: assign classes, agents and structural flags; what is not
        // reached is an orphan.
        let mut reached: HashMap<Ino, Node> = HashMap::with_capacity(table.len());
        let mut queue = VecDeque::from([(ROOT_INO, Class::Root, None::<Arc<str>>, Class::Root)]);
        while let Some((ino, class, agent, parent_class)) = queue.pop_front() {
            let Some(mut node) = table.remove(&ino) else {
                continue;
            };
            node.class = class;
            node.agent = agent.clone();
            node.structural = is_structural(class, parent_class) && node.is_dir();
            if let Some(dir) = node.dir() {
                for (name, child) in dir.names() {
                    let child_agent = if class == Class::Root {
                        Some(Arc::from(String::from_utf8_lossy(name).as_ref()))
                    } else {
                        agent.clone()
                    };
                    queue.push_back((child, class.of_child(name), child_agent, class));
                }
            }
            reached.insert(ino, node);
        }
        for (ino, _) in table {
            tracing::info!(ino, "deleting orphan inode left by an earlier run");
            boot.push(Change::DeleteInode(ino));
        }
        // Working memory is RAM: a durable store never holds its files, but an earlier version
        // or a crash mid-way must not resurrect them either.
        let working_dirs: Vec<Ino> = reached
            .values()
            .filter(|n| n.class == Class::Working && n.structural)
            .map(|n| n.attr.ino)
            .collect();
        for dir in working_dirs {
            let children: Vec<(Vec<u8>, Ino)> = reached
                .get(&dir)
                .and_then(|n| n.dir())
                .map(|d| d.names().map(|(n, i)| (n.to_vec(), i)).collect())
                .unwrap_or_default();
            for (name, ino) in children {
                boot.push(Change::DeleteDirent {
                    parent: dir,
                    name: name.clone(),
                });
                boot.push(Change::DeleteInode(ino));
                if let Some(d) = reached.get_mut(&dir).and_then(|n| n.dir_mut()) {
                    d.remove(&name);
                }
                reached.remove(&ino);
            }
        }

        // Agents, in a stable order so their sys/ inode numbers are stable for a given tree.
        let mut agent_roots: Vec<(Vec<u8>, Ino)> = reached
            .get(&ROOT_INO)
            .and_then(|n| n.dir())
            .map(|d| d.names().map(|(n, i)| (n.to_vec(), i)).collect())
            .unwrap_or_default();
        agent_roots.sort();
        let now = now_ns();
        for (name, ino) in agent_roots {
            let name: Arc<str> = Arc::from(String::from_utf8_lossy(&name).as_ref());
            self.add_agent(name, ino, now);
        }
        for node in reached.values() {
            if node.attr.kind == FileKind::Dir && node.structural {
                continue;
            }
            if let (Some(agent), Some(ci)) = (node.agent.as_deref(), node.class.memory_index()) {
                if let Some(a) = self.agent(agent) {
                    a.add_bytes(ci, node.attr.size as i64);
                    a.add_files(ci, 1);
                }
            }
        }

        // The control tree is virtual: its entry in the root is never stored.
        if let Some(root) = reached.get_mut(&ROOT_INO).and_then(|n| n.dir_mut()) {
            root.insert(crate::names::SYS.to_vec(), sysfs::SYS_INO, FileKind::Dir);
        }

        let mut nodes = self.nodes.write();
        for (ino, node) in reached {
            nodes.insert(ino, Arc::new(RwLock::new(node)));
        }
        drop(nodes);
        if !boot.is_empty() {
            self.durable
                .commit(boot, agentfs_memory::Durability::Process)?;
        }
        Ok(())
    }

    /// Installs the hook that invalidates the kernel's caches (the FUSE adapter's notifier).
    pub fn set_invalidator(&self, f: Invalidator) {
        *self.invalidator.write() = Some(f);
    }

    /// Runs the invalidations, synchronously, from the request that changed the tree (after
    /// its locks are released). The kernel takes the directory's lock to invalidate a name: a
    /// call parked while the agent is STOPped holds it until CONT, so for a stopped agent
    /// nothing is invalidated and names may stay cached for the TTL (1 s). Never from a
    /// thread of its own: one blocked there at unmount holds the connection's teardown lock
    /// in the kernel, and the unmount (and every mount of the machine) waits for it.
    pub(crate) fn invalidate(&self, agent: &Agent, list: Vec<(Ino, Vec<u8>)>) {
        let Some(f) = self.invalidator.read().clone() else {
            return;
        };
        if agent.gate.state().0 == agentfs_signals::AgentState::Stopped {
            tracing::debug!(agent = %agent.name, names = list.len(), "agent stopped: names left to the kernel's TTL");
            return;
        }
        for (ino, name) in list {
            f(ino, &name);
        }
    }

    pub(crate) fn add_agent(&self, name: Arc<str>, root: Ino, now: TimeNs) -> Arc<Agent> {
        let mut by_index = self.agents_by_index.write();
        let agent = Arc::new(Agent::new(name.clone(), by_index.len() as u64, root, now));
        by_index.push(agent.clone());
        self.agents.write().insert(name, agent.clone());
        agent
    }

    pub(crate) fn agent(&self, name: &str) -> Option<Arc<Agent>> {
        self.agents.read().get(name).cloned()
    }

    pub(crate) fn agent_by_index(&self, index: u64) -> Option<Arc<Agent>> {
        self.agents_by_index.read().get(index as usize).cloned()
    }

    /// Names of registered agents, sorted.
    pub fn agent_names(&self) -> Vec<String> {
        self.agents.read().keys().map(|k| k.to_string()).collect()
    }

    /// The status JSON of one agent.
    pub fn agent_status(&self, name: &str) -> Option<serde_json::Value> {
        self.agent(name).map(|a| {
            let mut status = a.status_json();
            status["index"] = self.index_status(name);
            status
        })
    }

    /// Identifies the caller of a request. Binding processes to agents comes with the signals
    /// work; until then every process is an operator.
    /// Who is calling (SPEC §3): a process bound to an agent (its pid or an ancestor's was
    /// written to `sys/agents/AGENT/pids`), or whose uid the policy's `[identity]` maps to
    /// one, acts as that agent; everyone else is an operator.
    ///
    /// A request from a process the daemon cannot see (pid 0: another pid namespace) cannot
    /// be told apart from a bound one, so while any process is bound it acts as nobody: no
    /// agent's tree, no control file.
    pub fn caller(&self, uid: u32, gid: u32, pid: u32) -> Caller {
        let agent = if pid == 0 && !self.bindings.is_empty() {
            Some(Arc::from(crate::caller::UNIDENTIFIED))
        } else {
            self.bindings
                .agent_of(pid)
                .or_else(|| self.policy.current().agent_for_uid(uid).map(Arc::from))
        };
        Caller {
            uid,
            gid,
            pid,
            agent,
        }
    }

    pub(crate) fn node(&self, ino: Ino) -> Result<NodeRef> {
        self.nodes
            .read()
            .get(&ino)
            .cloned()
            .ok_or(VfsError::NotFound)
    }

    pub(crate) fn store_for(&self, class: Class) -> &Arc<dyn Store> {
        if class.is_volatile() {
            &self.volatile
        } else {
            &self.durable
        }
    }

    pub(crate) fn alloc_ino(&self) -> Ino {
        self.next_ino.fetch_add(1, Ordering::Relaxed)
    }

    /// `n` consecutive inode numbers; returns the first.
    pub(crate) fn alloc_inos(&self, n: u64) -> Ino {
        self.next_ino.fetch_add(n, Ordering::Relaxed)
    }

    // ----- read side -------------------------------------------------------------------

    pub fn lookup(&self, caller: &Caller, parent: Ino, name: &[u8]) -> Result<Attr> {
        if let Some(v) = sysfs::Virtual::of(self, parent) {
            let child = v.lookup(self, name)?;
            return Ok(Attr::dense(child.attr(self)));
        }
        let dir = self.node(parent)?;
        let child_ino = {
            let d = dir.read();
            self.check_visible(caller, &d)?;
            let entries = d.dir().ok_or(VfsError::NotDir)?;
            if name.len() > crate::names::NAME_MAX {
                return Err(VfsError::NameTooLong);
            }
            if d.class == Class::Semantic && name == crate::semantic::SEARCH_NAME {
                let agent = d.agent.clone();
                drop(d);
                match self.lookup_search_dir(agent.as_deref(), parent) {
                    Some(ino) => ino,
                    None => dir
                        .read()
                        .dir()
                        .and_then(|e| e.get(name))
                        .ok_or(VfsError::NotFound)?,
                }
            } else if d.class == Class::Policy {
                // `AGENT/policy/` holds nothing stored: its files are generated views.
                let agent = d.agent.clone();
                drop(d);
                self.lookup_agent_view(agent.as_deref(), name)?
            } else {
                entries.get(name).ok_or(VfsError::NotFound)?
            }
        };
        self.getattr(caller, child_ino)
    }

    pub fn getattr(&self, _caller: &Caller, ino: Ino) -> Result<Attr> {
        if let Some(v) = sysfs::Virtual::of(self, ino) {
            return Ok(Attr::dense(v.attr(self)));
        }
        Ok(Attr::of(&self.node(ino)?.read()))
    }

    /// A bound agent sees only its own tree; operators see everything.
    pub(crate) fn check_visible(&self, caller: &Caller, node: &Node) -> Result<()> {
        match (&caller.agent, &node.agent) {
            (Some(mine), Some(theirs)) if mine != theirs => {
                Err(VfsError::AccessDenied("another agent's tree"))
            }
            _ => Ok(()),
        }
    }

    pub fn readlink(&self, _caller: &Caller, ino: Ino) -> Result<Vec<u8>> {
        let node = self.node(ino)?;
        let n = node.read();
        if n.attr.kind != FileKind::Symlink {
            return Err(VfsError::Invalid("not a symlink"));
        }
        Ok(n.attr.symlink_target.clone())
    }

    pub fn open_file(&self, caller: &Caller, ino: Ino, flags: i32) -> Result<Opened> {
        if let Some(v) = sysfs::Virtual::of(self, ino) {
            if let (Some(mine), Some(owner)) = (&caller.agent, v.owner()) {
                if **mine != *owner.name {
                    return Err(VfsError::AccessDenied("another agent's control files"));
                }
            }
            if let Some((agent, _)) = v.agent_view() {
                crate::policyview::check_reader(caller, agent)?;
                if flags & libc::O_ACCMODE != libc::O_RDONLY {
                    return Err(VfsError::ReadOnly("policy/ is read-only"));
                }
            }
            if flags & libc::O_ACCMODE != libc::O_RDONLY && v.control_of().is_none() {
                return Err(VfsError::NotPermitted("sys/ files are read-only"));
            }
            v.may_open(caller)?;
            let data = v.content(self)?;
            let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
            self.handles.lock().insert(fh, VirtualHandle { data });
            return Ok(Opened {
                fh,
                direct_io: true,
            });
        }
        let node = self.node(ino)?;
        let mut n = node.write();
        self.check_visible(caller, &n)?;
        if n.is_dir() {
            return Err(VfsError::IsDir);
        }
        let writing = flags & libc::O_ACCMODE != libc::O_RDONLY;
        if writing && n.class == Class::Policy {
            return Err(VfsError::ReadOnly("policy/ is read-only"));
        }
        if writing && n.class == Class::Checkpoint {
            return Err(VfsError::ReadOnly("checkpoints are read-only"));
        }
        n.open_count += 1;
        // Agent files bypass the kernel page cache: every read is answered by the daemon,
        // so bytes a policy refuses are never readable from a cached page, and shared
        // writable mmap (which would change a file without a write call) is refused by the
        // kernel. See docs/policy.md, "The page cache".
        Ok(Opened {
            fh: 0,
            direct_io: n.class.memory_index().is_some(),
        })
    }

    pub fn read(
        &self,
        caller: &Caller,
        ino: Ino,
        fh: u64,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.read_into(caller, ino, fh, offset, size, &mut out)?;
        Ok(out)
    }

    /// Like [`Vfs::read`], into a buffer the caller reuses (the adapter keeps one per thread,
    /// sparing an allocation and its page faults on every read).
    pub fn read_into(
        &self,
        caller: &Caller,
        ino: Ino,
        fh: u64,
        offset: u64,
        size: u32,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        out.clear();
        if let Some(r) =
            sysfs::Virtual::of(self, ino).and_then(|v| v.read_live(self, offset, size, out))
        {
            return r;
        }
        if sysfs::Virtual::of(self, ino).is_some() {
            let handles = self.handles.lock();
            let h = handles.get(&fh).ok_or(VfsError::BadHandle)?;
            let start = (offset as usize).min(h.data.len());
            let end = start.saturating_add(size as usize).min(h.data.len());
            out.extend_from_slice(&h.data[start..end]);
            return Ok(());
        }
        let node = self.node(ino)?;
        let n = node.read();
        self.check_visible(caller, &n)?;
        if !matches!(n.body, Body::File(_)) {
            return Err(VfsError::IsDir);
        }
        let file_size = n.attr.size;
        if offset >= file_size {
            return Ok(());
        }
        let end = file_size.min(offset.saturating_add(size as u64));
        out.resize((end - offset) as usize, 0);
        self.fill_from_node(&n, offset, out)?;
        drop(n);
        if self.audit_reads.load(Ordering::Relaxed) {
            self.record_read(caller, ino, offset, out.len() as u64);
        }
        Ok(())
    }

    /// Records reads as well as changes from now on (`agentfs mount --audit-reads`).
    pub fn set_audit_reads(&self, on: bool) {
        self.audit_reads.store(on, Ordering::Relaxed);
    }

    /// Fills `dst` with the bytes of the file `n` from `offset` (which with `dst` must lie
    /// within the file); holes read as zeros.
    pub(crate) fn fill_from_node(&self, n: &Node, offset: u64, dst: &mut [u8]) -> Result<()> {
        let Body::File(file) = &n.body else {
            return Err(VfsError::IsDir);
        };
        let store = self.store_for(n.class);
        let chunk = CHUNK_SIZE as u64;
        let end = offset + dst.len() as u64;
        let mut pos = offset;
        while pos < end {
            let idx = pos / chunk;
            let in_chunk = (pos % chunk) as usize;
            let take = ((chunk - pos % chunk).min(end - pos)) as usize;
            let dst_start = (pos - offset) as usize;
            let dst = &mut dst[dst_start..dst_start + take];
            match file.slots.get(&idx) {
                None => dst.fill(0),
                Some(Slot::Dirty(buf)) => {
                    // The buffer may end before `in_chunk` (a write further on grew the
                    // file): what it does not hold reads as zeros.
                    let held = buf.get(in_chunk..).unwrap_or(&[]);
                    let avail = held.len().min(take);
                    dst[..avail].copy_from_slice(&held[..avail]);
                    dst[avail..].fill(0);
                }
                Some(stored @ (Slot::Clean(_) | Slot::Pieces(_))) => {
                    let got = crate::ops::data::read_stored(store.as_ref(), stored, in_chunk, dst)?;
                    dst[got..].fill(0);
                }
            }
            pos += take as u64;
        }
        Ok(())
    }

    /// Closes handle `fh`. Like [`Vfs::flush`] and [`Vfs::fsync`], it needs no caller: a
    /// close cannot be refused, and the caller may be inside execve(2) (closing its
    /// close-on-exec files), where looking it up in `/proc` could block.
    pub fn release(&self, ino: Ino, fh: u64) -> Result<()> {
        if sysfs::Virtual::of(self, ino).is_some() {
            self.handles.lock().remove(&fh);
            return Ok(());
        }
        let result = self.flush(ino);
        let node = self.node(ino)?;
        let gone = {
            let mut n = node.write();
            n.open_count = n.open_count.saturating_sub(1);
            n.open_count == 0 && n.attr.nlink == 0
        };
        if gone {
            self.destroy_node(ino)?;
        }
        result
    }

    /// Commits a file's buffered content (close). Survives `kill -9` once this returns.
    pub fn flush(&self, ino: Ino) -> Result<()> {
        if sysfs::Virtual::of(self, ino).is_some() {
            return Ok(());
        }
        self.commit_file(ino, agentfs_memory::Durability::Process)
    }

    /// Commits a file's content and makes it durable on disk (fsync).
    pub fn fsync(&self, ino: Ino) -> Result<()> {
        if sysfs::Virtual::of(self, ino).is_some() {
            return Ok(());
        }
        self.commit_file(ino, agentfs_memory::Durability::Disk)?;
        self.flush_pending_audit()?;
        self.durable.sync()?;
        Ok(())
    }

    /// fsync on a directory: everything committed so far reaches the disk.
    pub fn fsyncdir(&self, _caller: &Caller, _ino: Ino) -> Result<()> {
        self.flush_pending_audit()?;
        self.durable.sync()?;
        Ok(())
    }

    pub fn opendir(&self, caller: &Caller, ino: Ino) -> Result<u64> {
        if sysfs::Virtual::of(self, ino).is_some() {
            return Ok(0);
        }
        let node = self.node(ino)?;
        let n = node.read();
        self.check_visible(caller, &n)?;
        if !n.is_dir() {
            return Err(VfsError::NotDir);
        }
        Ok(0)
    }

    /// Entries after cookie `offset` (0 = from the start), including `.` and `..`. `fill`
    /// returns `true` when the reply buffer is full.
    pub fn readdir(
        &self,
        caller: &Caller,
        ino: Ino,
        offset: u64,
        fill: &mut dyn FnMut(DirEntry) -> bool,
    ) -> Result<()> {
        if let Some(v) = sysfs::Virtual::of(self, ino) {
            return v.readdir(self, offset, fill);
        }
        let node = self.node(ino)?;
        let n = node.read();
        self.check_visible(caller, &n)?;
        let dir = n.dir().ok_or(VfsError::NotDir)?;
        if n.class == Class::Policy {
            let (parent, agent) = (n.parent, n.agent.clone());
            drop(n);
            return self.readdir_agent_view(ino, parent, agent.as_deref(), offset, fill);
        }
        if offset < 1
            && fill(DirEntry {
                ino,
                offset: 1,
                kind: FileKind::Dir,
                name: b".".to_vec(),
            })
        {
            return Ok(());
        }
        if offset < 2
            && fill(DirEntry {
                ino: n.parent,
                offset: 2,
                kind: FileKind::Dir,
                name: b"..".to_vec(),
            })
        {
            return Ok(());
        }
        for (cookie, name, child, kind) in dir.after(offset.max(2)) {
            if fill(DirEntry {
                ino: child,
                offset: cookie,
                kind,
                name: name.to_vec(),
            }) {
                break;
            }
        }
        Ok(())
    }

    /// readdir with each entry's attributes (so `ls -l` needs no lookup per entry). Entries
    /// are collected under the directory's lock, attributes read after it is released, so
    /// this never holds two node locks.
    pub fn readdirplus(
        &self,
        caller: &Caller,
        ino: Ino,
        offset: u64,
        fill: &mut dyn FnMut(DirEntry, &Attr) -> bool,
    ) -> Result<()> {
        // In batches, so a large reply buffer is filled completely while a small one does not
        // make us collect entries it cannot take.
        let mut after = offset;
        loop {
            let mut entries = Vec::with_capacity(READDIRPLUS_BATCH);
            self.readdir(caller, ino, after, &mut |e| {
                entries.push(e);
                entries.len() >= READDIRPLUS_BATCH
            })?;
            let exhausted = entries.len() < READDIRPLUS_BATCH;
            for e in entries {
                after = e.offset;
                let attr = match self.getattr(caller, e.ino) {
                    Ok(a) => a,
                    // Removed since the listing was taken: skip it, as if read a moment later.
                    Err(VfsError::NotFound) => continue,
                    Err(err) => return Err(err),
                };
                if fill(e, &attr) {
                    return Ok(());
                }
            }
            if exhausted {
                return Ok(());
            }
        }
    }

    pub fn statfs(&self, _caller: &Caller) -> FsStats {
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        let path = std::ffi::CString::new(self.data_dir.as_os_str().as_encoded_bytes()).ok();
        // SAFETY: statvfs writes into `st`, a properly sized, zeroed struct; the path is a
        // valid NUL-terminated string.
        let ok = path
            .map(|p| unsafe { libc::statvfs(p.as_ptr(), &mut st) } == 0)
            .unwrap_or(false);
        let files = self.nodes.read().len() as u64;
        if ok {
            FsStats {
                blocks: st.f_blocks as u64 * st.f_frsize as u64 / 4096,
                bfree: st.f_bfree as u64 * st.f_frsize as u64 / 4096,
                bavail: st.f_bavail as u64 * st.f_frsize as u64 / 4096,
                files: files + st.f_ffree as u64,
                ffree: st.f_ffree as u64,
                bsize: 4096,
                namelen: crate::names::NAME_MAX as u32,
            }
        } else {
            FsStats {
                blocks: 0,
                bfree: 0,
                bavail: 0,
                files,
                ffree: 0,
                bsize: 4096,
                namelen: crate::names::NAME_MAX as u32,
            }
        }
    }

    pub fn getxattr(&self, caller: &Caller, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        if sysfs::Virtual::of(self, ino).is_some() {
            return Err(VfsError::NoXattr);
        }
        let node = self.node(ino)?;
        let n = node.read();
        self.check_visible(caller, &n)?;
        n.xattrs.get(name).cloned().ok_or(VfsError::NoXattr)
    }

    /// Names of all xattrs, each followed by a NUL, as listxattr(2) returns them.
    pub fn listxattr(&self, caller: &Caller, ino: Ino) -> Result<Vec<u8>> {
        if sysfs::Virtual::of(self, ino).is_some() {
            return Ok(Vec::new());
        }
        let node = self.node(ino)?;
        let n = node.read();
        self.check_visible(caller, &n)?;
        let mut out = Vec::new();
        for name in n.xattrs.keys() {
            out.extend_from_slice(name);
            out.push(0);
        }
        Ok(out)
    }

    /// Commits every file with buffered content and makes the store durable. Called at
    /// unmount; safe to call more than once.
    pub fn shutdown(&self) -> Result<()> {
        let inos: Vec<Ino> = self.nodes.read().keys().copied().collect();
        let mut first_error = None;
        for ino in inos {
            if let Err(e) = self.commit_file(ino, agentfs_memory::Durability::Process) {
                tracing::error!(ino, error = %e, "could not commit file at shutdown");
                first_error.get_or_insert(e);
            }
        }
        self.flush_pending_audit()?;
        self.durable.sync()?;
        // The index is derived data, but committing what is queued spares a rebuild.
        if let Err(e) = self.search.flush() {
            tracing::error!(error = %e, "could not commit the search index at shutdown");
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Writes queued audit entries in a transaction of their own.
    pub(crate) fn flush_pending_audit(&self) -> Result<()> {
        let entries: Vec<AuditEntry> = self.pending_audit.lock().drain(..).collect();
        if entries.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::new();
        batch
            .changes
            .extend(entries.into_iter().map(|e| Change::Audit(Box::new(e))));
        self.durable
            .commit(batch, agentfs_memory::Durability::Process)?;
        Ok(())
    }
}
