//! The FUSE floor: the least a FUSE file system can do, mounted the way agentfs mounts.
//!
//! An in-memory tree of attributes (a `HashMap` by inode) that discards file data: no store,
//! no policy, no recording. It is mounted in-process with agentfs's own settings — the fuser
//! `Config` of `agentfs_vfs::fuse::session_config`, what `negotiate` asks of the kernel at
//! `init`, the same TTL, and `FOPEN_DIRECT_IO` on open and create — so what a workload costs
//! on it is what the kernel and the FUSE round trips cost on this machine. Every request is counted by
//! opcode, to see how many a workload sends.

use agentfs_vfs::fuse::{negotiate, session_config, MountOptions, TTL};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, ReplyXattr, Request,
    Session, TimeOrNow, WriteFlags,
};
use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// The requests the floor answers, in the order they are printed.
pub const OPS: [&str; 17] = [
    "LOOKUP",
    "GETATTR",
    "SETATTR",
    "MKDIR",
    "CREATE",
    "OPEN",
    "GETXATTR",
    "WRITE",
    "READ",
    "FLUSH",
    "RELEASE",
    "OPENDIR",
    "READDIR",
    "READDIRPLUS",
    "RELEASEDIR",
    "UNLINK",
    "RMDIR",
];

/// Requests received, by opcode (index into [`OPS`]).
#[derive(Default)]
pub struct Counts([AtomicU64; OPS.len()]);

impl Counts {
    fn bump(&self, op: &str) {
        let i = OPS.iter().position(|o| *o == op).expect("listed op");
        self.0[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> [u64; OPS.len()] {
        std::array::from_fn(|i| self.0[i].load(Ordering::Relaxed))
    }
}

struct Node {
    attr: FileAttr,
    parent: u64,
    /// Directories only: name to inode, and the listing in creation order. An entry's
    /// readdir cookie is its inode + 2 ("." is 1, ".." 2), stable while others are removed.
    children: HashMap<OsString, u64>,
    listing: BTreeMap<u64, OsString>,
}

struct Floor {
    nodes: Mutex<HashMap<u64, Node>>,
    next_ino: AtomicU64,
    counts: Arc<Counts>,
    killpriv_v2: bool,
}

/// A mounted floor; unmounts on drop.
pub struct Mounted {
    pub counts: Arc<Counts>,
    _session: fuser::BackgroundSession,
}

/// Mounts a floor on `dir` (which must exist) with agentfs's default mount options. With
/// `killpriv_v2` it also asks for `FUSE_HANDLE_KILLPRIV_V2`.
pub fn mount(dir: &Path, killpriv_v2: bool) -> std::io::Result<Mounted> {
    let counts = Arc::new(Counts::default());
    let now = SystemTime::now();
    let root = Node {
        attr: attr(1, FileType::Directory, 0o755, 0, 0, now),
        parent: 1,
        children: HashMap::new(),
        listing: BTreeMap::new(),
    };
    let fs = Floor {
        nodes: Mutex::new(HashMap::from([(1, root)])),
        next_ino: AtomicU64::new(2),
        counts: counts.clone(),
        killpriv_v2,
    };
    let config = session_config(&MountOptions {
        fsname: "floor".into(),
        ..MountOptions::default()
    });
    let session = Session::new(fs, dir, &config)?.spawn()?;
    Ok(Mounted {
        counts,
        _session: session,
    })
}

fn attr(ino: u64, kind: FileType, perm: u16, uid: u32, gid: u32, now: SystemTime) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: if kind == FileType::Directory { 4096 } else { 0 },
        blocks: 0,
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        kind,
        perm,
        nlink: if kind == FileType::Directory { 2 } else { 1 },
        uid,
        gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

impl Floor {
    /// Adds a child named `name` to `parent`; its attributes, or the errno.
    fn add(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        kind: FileType,
        mode: u32,
    ) -> Result<FileAttr, Errno> {
        let mut nodes = self.nodes.lock().unwrap();
        let dir = nodes.get_mut(&parent.0).ok_or(Errno::ENOENT)?;
        if dir.children.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino.fetch_add(1, Ordering::Relaxed);
        dir.children.insert(name.to_owned(), ino);
        dir.listing.insert(ino, name.to_owned());
        let now = SystemTime::now();
        dir.attr.mtime = now;
        dir.attr.ctime = now;
        let a = attr(ino, kind, (mode & 0o7777) as u16, req.uid(), req.gid(), now);
        let node = Node {
            attr: a,
            parent: parent.0,
            children: HashMap::new(),
            listing: BTreeMap::new(),
        };
        nodes.insert(ino, node);
        Ok(a)
    }

    fn remove(&self, parent: INodeNo, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let mut nodes = self.nodes.lock().unwrap();
        let p = nodes.get(&parent.0).ok_or(Errno::ENOENT)?;
        let ino = *p.children.get(name).ok_or(Errno::ENOENT)?;
        let node = &nodes[&ino];
        match (dir, node.attr.kind == FileType::Directory) {
            (true, false) => return Err(Errno::ENOTDIR),
            (false, true) => return Err(Errno::EISDIR),
            (true, true) if !node.children.is_empty() => return Err(Errno::ENOTEMPTY),
            _ => {}
        }
        nodes.remove(&ino);
        let p = nodes.get_mut(&parent.0).unwrap();
        p.children.remove(name);
        p.listing.remove(&ino);
        p.attr.mtime = SystemTime::now();
        Ok(())
    }

    /// Lists `ino` after cookie `offset`, calling `add(ino, cookie, name, attr)` until it
    /// says the reply is full.
    fn list(
        &self,
        ino: INodeNo,
        offset: u64,
        mut add: impl FnMut(u64, u64, &OsStr, &FileAttr) -> bool,
    ) -> Result<(), Errno> {
        let nodes = self.nodes.lock().unwrap();
        let dir = nodes.get(&ino.0).ok_or(Errno::ENOENT)?;
        let dots = [
            (1, ino.0, OsStr::new(".")),
            (2, dir.parent, OsStr::new("..")),
        ];
        let children = dir
            .listing
            .range(offset.saturating_sub(1)..)
            .map(|(i, n)| (i + 2, *i, n.as_os_str()));
        for (cookie, child, name) in dots.into_iter().chain(children) {
            if cookie > offset && add(child, cookie, name, &nodes[&child].attr) {
                break;
            }
        }
        Ok(())
    }
}

impl Filesystem for Floor {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        negotiate(config);
        if self.killpriv_v2 {
            let _ = config.add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV_V2);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.counts.bump("LOOKUP");
        let nodes = self.nodes.lock().unwrap();
        let child = nodes.get(&parent.0).and_then(|p| p.children.get(name));
        match child {
            Some(ino) => reply.entry(&TTL, &nodes[ino].attr, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.counts.bump("GETATTR");
        match self.nodes.lock().unwrap().get(&ino.0) {
            Some(n) => reply.attr(&TTL, &n.attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.counts.bump("SETATTR");
        let mut nodes = self.nodes.lock().unwrap();
        let Some(n) = nodes.get_mut(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let now = SystemTime::now();
        let at = |t: TimeOrNow| match t {
            TimeOrNow::Now => now,
            TimeOrNow::SpecificTime(t) => t,
        };
        let a = &mut n.attr;
        a.perm = mode.map_or(a.perm, |m| (m & 0o7777) as u16);
        a.uid = uid.unwrap_or(a.uid);
        a.gid = gid.unwrap_or(a.gid);
        a.size = size.unwrap_or(a.size);
        a.atime = atime.map_or(a.atime, at);
        a.mtime = mtime.map_or(a.mtime, at);
        a.ctime = now;
        reply.attr(&TTL, a)
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        self.counts.bump("MKDIR");
        match self.add(req, parent, name, FileType::Directory, mode) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        self.counts.bump("CREATE");
        match self.add(req, parent, name, FileType::RegularFile, mode) {
            Ok(a) => reply.created(
                &TTL,
                &a,
                Generation(0),
                FileHandle(0),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.counts.bump("OPEN");
        reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO)
    }

    /// No extended attributes (the kernel asks for `security.capability` before writes).
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        self.counts.bump("GETXATTR");
        reply.error(Errno::ENODATA)
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.counts.bump("WRITE");
        let mut nodes = self.nodes.lock().unwrap();
        let Some(n) = nodes.get_mut(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        n.attr.size = n.attr.size.max(offset + data.len() as u64);
        n.attr.mtime = SystemTime::now();
        if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
            n.attr.perm &= !0o4000;
        }
        reply.written(data.len() as u32)
    }

    /// Zeros: the floor keeps no data.
    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.counts.bump("READ");
        let len = self
            .nodes
            .lock()
            .unwrap()
            .get(&ino.0)
            .map_or(0, |n| n.attr.size);
        let n = len.saturating_sub(offset).min(u64::from(size));
        reply.data(&vec![0; n as usize])
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lo: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.counts.bump("FLUSH");
        reply.ok()
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.counts.bump("RELEASE");
        reply.ok()
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.counts.bump("OPENDIR");
        reply.opened(FileHandle(0), FopenFlags::empty())
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.counts.bump("READDIR");
        match self.list(ino, offset, |i, next, name, a| {
            reply.add(INodeNo(i), next, a.kind, name)
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        self.counts.bump("READDIRPLUS");
        let result = self.list(ino, offset, |i, next, name, a| {
            reply.add(INodeNo(i), next, name, &TTL, a, Generation(0))
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.counts.bump("RELEASEDIR");
        reply.ok()
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.counts.bump("UNLINK");
        match self.remove(parent, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.counts.bump("RMDIR");
        match self.remove(parent, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}
