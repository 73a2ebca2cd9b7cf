//! The FUSE adapter: kernel requests in, [`Vfs`] calls out, errors to errno. Nothing else
//! lives here: every decision is the core's.

use crate::{Admission, Attr, Caller, FileKind, KillSuidgid, SetAttr, TimeSet, Vfs, VfsError};
use fuser::{
    AccessFlags, BsdFileFlags, Config, Errno, FileAttr, FileHandle, FileType, Filesystem,
    FopenFlags, Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, MountOption,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
    Session, SessionACL, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long the kernel may cache names and attributes. Every change goes through this mount,
/// so the kernel's cache stays right; changes the daemon makes on its own will invalidate.
pub const TTL: Duration = Duration::from_secs(1);

/// Largest write the kernel sends in one request.
const MAX_WRITE: u32 = 1 << 20;

thread_local! {
    /// One read buffer per FUSE worker thread, reused for every read.
    static READ_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Mount settings.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// FUSE worker threads.
    pub threads: usize,
    /// Let every user reach the mount (agents may run under their own uids).
    pub allow_other: bool,
    /// Let the kernel check permissions from the mode bits, as on ext4.
    pub default_permissions: bool,
    pub read_only: bool,
    /// Source shown in /proc/mounts.
    pub fsname: String,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            threads: 4,
            allow_other: true,
            default_permissions: true,
            read_only: false,
            fsname: "agentfs".to_string(),
        }
    }
}

/// The FUSE filesystem: a thin shell around the core.
#[derive(Debug)]
pub struct AgentFs {
    vfs: Arc<Vfs>,
}

impl AgentFs {
    pub fn new(vfs: Arc<Vfs>) -> Self {
        AgentFs { vfs }
    }
}

/// Mounts and completes the FUSE handshake: when this returns Ok the tree is ready.
pub fn mount(
    vfs: Arc<Vfs>,
    mountpoint: &Path,
    opts: &MountOptions,
) -> std::io::Result<Session<AgentFs>> {
    let session = Session::new(AgentFs::new(vfs.clone()), mountpoint, &session_config(opts))?;
    // A rollback replaces names the kernel may have cached (TTL): it drops them through this.
    let notifier = session.notifier();
    vfs.set_invalidator(Arc::new(move |ino, name: &[u8]| {
        let result = if name.is_empty() {
            notifier.inval_inode(INodeNo(ino), 0, 0)
        } else {
            notifier.inval_entry(INodeNo(ino), OsStr::from_bytes(name))
        };
        // ENOENT: the kernel had nothing cached, which is fine.
        if let Err(e) = result {
            if e.raw_os_error() != Some(libc::ENOENT) {
                tracing::debug!(ino, error = %e, "cache invalidation failed");
            }
        }
    }));
    Ok(session)
}

/// The fuser session settings agentfs mounts with (also the bench's FUSE floor's, so that
/// it is mounted the same way).
pub fn session_config(opts: &MountOptions) -> Config {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(opts.fsname.clone()),
        MountOption::Subtype("agentfs".to_string()),
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    if opts.default_permissions {
        config.mount_options.push(MountOption::DefaultPermissions);
    }
    if opts.read_only {
        config.mount_options.push(MountOption::RO);
    }
    config.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = true;
    config
}

/// What agentfs asks of the kernel at `init` (also the bench's FUSE floor).
pub fn negotiate(config: &mut KernelConfig) {
    if let Err(nearest) = config.set_max_write(MAX_WRITE) {
        let _ = config.set_max_write(nearest);
    }
    let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
    let _ = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS);
}

/// The one place core errors become errno.
trait ToErrno {
    fn to_errno(&self) -> Errno;
}

impl ToErrno for VfsError {
    fn to_errno(&self) -> Errno {
        Errno::from_i32(self.errno())
    }
}

fn time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

fn ns_of(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i64,
        Err(e) => -(e.duration().as_nanos() as i64),
    }
}

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
    }
}

fn kind_of_mode(mode: u32) -> Option<FileKind> {
    Some(match mode & libc::S_IFMT {
        libc::S_IFREG | 0 => FileKind::File,
        libc::S_IFIFO => FileKind::Fifo,
        libc::S_IFSOCK => FileKind::Socket,
        libc::S_IFCHR => FileKind::CharDevice,
        libc::S_IFBLK => FileKind::BlockDevice,
        libc::S_IFDIR => FileKind::Dir,
        libc::S_IFLNK => FileKind::Symlink,
        _ => return None,
    })
}

fn fuse_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: time(a.atime),
        mtime: time(a.mtime),
        ctime: time(a.ctime),
        crtime: time(a.crtime),
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: 4096,
        flags: 0,
    }
}

fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(ns_of(t)),
    }
}

impl AgentFs {
    fn caller(&self, req: &Request) -> Caller {
        self.vfs.caller(req.uid(), req.gid(), req.pid())
    }

    /// Runs a mutating call now, parks it while its agent is stopped (no thread waits), or
    /// refuses it; `op` gets the admission and replies.
    fn gated(
        &self,
        req: &Request,
        ino: u64,
        op: impl FnOnce(&Vfs, &Caller, crate::Result<()>) + Send + 'static,
    ) {
        let caller = self.caller(req);
        match self.vfs.admission(&caller, ino) {
            Admission::Proceed => op(&self.vfs, &caller, Ok(())),
            Admission::Refuse(e) => op(&self.vfs, &caller, Err(e)),
            Admission::Park(at) => {
                let vfs = self.vfs.clone();
                self.vfs
                    .park(at, Box::new(move |admitted| op(&vfs, &caller, admitted)));
            }
        }
    }

    fn opened(reply: ReplyOpen, result: crate::Result<crate::Opened>) {
        match result {
            Ok(o) => {
                let flags = if o.direct_io {
                    FopenFlags::FOPEN_DIRECT_IO
                } else {
                    FopenFlags::empty()
                };
                reply.opened(FileHandle(o.fh), flags)
            }
            Err(e) => reply.error(e.to_errno()),
        }
    }
}

fn reply_entry(reply: ReplyEntry, result: crate::Result<Attr>) {
    match result {
        Ok(attr) => reply.entry(&TTL, &fuse_attr(&attr), Generation(0)),
        Err(e) => reply.error(e.to_errno()),
    }
}

fn reply_empty(reply: ReplyEmpty, result: crate::Result<()>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e.to_errno()),
    }
}

fn reply_attr(reply: ReplyAttr, result: crate::Result<Attr>) {
    match result {
        Ok(a) => reply.attr(&TTL, &fuse_attr(&a)),
        Err(e) => reply.error(e.to_errno()),
    }
}

fn reply_written(reply: ReplyWrite, result: crate::Result<u32>) {
    match result {
        Ok(n) => reply.written(n),
        Err(e) => reply.error(e.to_errno()),
    }
}

impl Filesystem for AgentFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        negotiate(config);
        Ok(())
    }

    fn destroy(&mut self) {
        if let Err(e) = self.vfs.shutdown() {
            tracing::error!(error = %e, "flushing at unmount failed");
        }
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let result = self
            .vfs
            .lookup(&self.caller(req), parent.0, name.as_bytes());
        reply_entry(reply, result)
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.vfs.getattr(&self.caller(req), ino.0) {
            Ok(a) => reply.attr(&TTL, &fuse_attr(&a)),
            Err(e) => reply.error(e.to_errno()),
        }
    }

    fn setattr(
        &self,
        req: &Request,
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
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // The kernel's rule for FATTR_KILL_SUIDGID, which fuser 0.18 does not pass on.
        let kill_suidgid = if uid.is_some() || gid.is_some() {
            KillSuidgid::Yes
        } else if size.is_some() {
            KillSuidgid::UnlessCapFsetid
        } else {
            KillSuidgid::No
        };
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
            kill_suidgid,
        };
        self.gated(req, ino.0, move |vfs, caller, admitted| {
            reply_attr(
                reply,
                admitted.and_then(|()| vfs.setattr(caller, ino.0, set)),
            )
        })
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.vfs.readlink(&self.caller(req), ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(e.to_errno()),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let Some(kind) = kind_of_mode(mode) else {
            return reply.error(Errno::EINVAL);
        };
        let name = name.as_bytes().to_vec();
        self.gated(req, parent.0, move |vfs, caller, admitted| {
            let result =
                admitted.and_then(|()| vfs.mknod(caller, parent.0, &name, kind, mode, rdev));
            reply_entry(reply, result)
        })
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
        let name = name.as_bytes().to_vec();
        self.gated(req, parent.0, move |vfs, caller, admitted| {
            reply_entry(
                reply,
                admitted.and_then(|()| vfs.mkdir(caller, parent.0, &name, mode)),
            )
        })
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.as_bytes().to_vec();
        self.gated(req, parent.0, move |vfs, caller, admitted| {
            reply_empty(
                reply,
                admitted.and_then(|()| vfs.unlink(caller, parent.0, &name)),
            )
        })
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.as_bytes().to_vec();
        self.gated(req, parent.0, move |vfs, caller, admitted| {
            reply_empty(
                reply,
                admitted.and_then(|()| vfs.rmdir(caller, parent.0, &name)),
            )
        })
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let name = link_name.as_bytes().to_vec();
        let target = target.as_os_str().as_bytes().to_vec();
        self.gated(req, parent.0, move |vfs, caller, admitted| {
            let result = admitted.and_then(|()| vfs.symlink(caller, parent.0, &name, &target));
            reply_entry(reply, result)
        })
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let name = name.as_bytes().to_vec();
        let newname = newname.as_bytes().to_vec();
        self.gated(req, parent.0, move |vfs, caller, admitted| {
            let result = admitted.and_then(|()| {
                vfs.rename(caller, parent.0, &name, newparent.0, &newname, flags.bits())
            });
            reply_empty(reply, result)
        })
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let newname = newname.as_bytes().to_vec();
        self.gated(req, ino.0, move |vfs, caller, admitted| {
            let result = admitted.and_then(|()| vfs.link(caller, ino.0, newparent.0, &newname));
            reply_entry(reply, result)
        })
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.vfs.forget(ino.0, nlookup);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        Self::opened(reply, self.vfs.open_file(&self.caller(req), ino.0, flags.0))
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        READ_BUFFER.with_borrow_mut(|buf| {
            match self
                .vfs
                .read_into(&self.caller(req), ino.0, fh.0, offset, size, buf)
            {
                Ok(()) => reply.data(buf),
                Err(e) => reply.error(e.to_errno()),
            }
        })
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let append = flags.0 & libc::O_APPEND != 0;
        let kill = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        let caller = self.caller(req);
        match self.vfs.admission(&caller, ino.0) {
            // The common case writes straight from the request buffer.
            Admission::Proceed => {
                let written = self
                    .vfs
                    .write_killing(&caller, ino.0, offset, data, append, kill);
                reply_written(reply, written)
            }
            Admission::Refuse(e) => reply.error(e.to_errno()),
            Admission::Park(at) => {
                let data = data.to_vec();
                let vfs = self.vfs.clone();
                self.vfs.park(
                    at,
                    Box::new(move |admitted| {
                        let result = admitted.and_then(|()| {
                            vfs.write_killing(&caller, ino.0, offset, &data, append, kill)
                        });
                        reply_written(reply, result)
                    }),
                );
            }
        }
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let result = self.vfs.flush(ino.0);
        reply_empty(reply, result)
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let result = self.vfs.release(ino.0, fh.0);
        reply_empty(reply, result)
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let result = self.vfs.fsync(ino.0);
        reply_empty(reply, result)
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.vfs.opendir(&self.caller(req), ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e.to_errno()),
        }
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let result = self
            .vfs
            .readdir(&self.caller(req), ino.0, offset, &mut |e| {
                reply.add(
                    INodeNo(e.ino),
                    e.offset,
                    file_type(e.kind),
                    OsStr::from_bytes(&e.name),
                )
            });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e.to_errno()),
        }
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let result = self
            .vfs
            .readdirplus(&self.caller(req), ino.0, offset, &mut |e, attr| {
                reply.add(
                    INodeNo(e.ino),
                    e.offset,
                    OsStr::from_bytes(&e.name),
                    &TTL,
                    &fuse_attr(attr),
                    Generation(0),
                )
            });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e.to_errno()),
        }
    }

    fn fsyncdir(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let result = self.vfs.fsyncdir(&self.caller(req), ino.0);
        reply_empty(reply, result)
    }

    fn statfs(&self, req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.vfs.statfs(&self.caller(req));
        reply.statfs(
            s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.bsize,
        )
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let name = name.as_bytes().to_vec();
        let value = value.to_vec();
        self.gated(req, ino.0, move |vfs, caller, admitted| {
            let result = admitted.and_then(|()| vfs.setxattr(caller, ino.0, &name, &value, flags));
            reply_empty(reply, result)
        })
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.vfs.getxattr(&self.caller(req), ino.0, name.as_bytes()) {
            Ok(value) => xattr_reply(reply, size, &value),
            Err(e) => reply.error(e.to_errno()),
        }
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.vfs.listxattr(&self.caller(req), ino.0) {
            Ok(names) => xattr_reply(reply, size, &names),
            Err(e) => reply.error(e.to_errno()),
        }
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.as_bytes().to_vec();
        self.gated(req, ino.0, move |vfs, caller, admitted| {
            reply_empty(
                reply,
                admitted.and_then(|()| vfs.removexattr(caller, ino.0, &name)),
            )
        })
    }

    /// Programs ask nearly every file they open whether it is a terminal (`isatty`, ioctl
    /// TCGETS, e.g. Python's `open`); fuser's default answer logs a warning each time, which
    /// filled the log by 13 MB a minute under load. Answered like a regular file: ENOTTY.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(VfsError::NoIoctl.to_errno());
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.gated(req, ino.0, move |vfs, caller, admitted| {
            let result = admitted.and_then(|()| vfs.fallocate(caller, ino.0, offset, length, mode));
            reply_empty(reply, result)
        })
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // Only asked without `default_permissions`; the mode bits are the kernel's to check.
        reply.ok()
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let name = name.as_bytes().to_vec();
        self.gated(req, parent.0, move |vfs, caller, admitted| {
            match admitted.and_then(|()| vfs.create(caller, parent.0, &name, mode, flags)) {
                Ok((attr, opened)) => {
                    let fopen = if opened.direct_io {
                        FopenFlags::FOPEN_DIRECT_IO
                    } else {
                        FopenFlags::empty()
                    };
                    reply.created(
                        &TTL,
                        &fuse_attr(&attr),
                        Generation(0),
                        FileHandle(opened.fh),
                        fopen,
                    )
                }
                Err(e) => reply.error(e.to_errno()),
            }
        })
    }
}

fn xattr_reply(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}
