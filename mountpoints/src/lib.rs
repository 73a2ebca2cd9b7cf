//! The agentfs filesystem core.
//!
//! A pure core (no FUSE types): the live tree of inodes, the memory classes, the control tree
//! under `sys/`, and one choke point every mutation passes through (guard → policy → apply →
//! record). The optional `fuse` module is the thin adapter that maps kernel requests onto the
//! public methods of [`Vfs`] and errors onto errno.
//!
//! ```no_run
//! use agentfs_vfs::{Caller, Vfs};
//! let vfs = Vfs::open(std::path::Path::new("/var/lib/agentfs")).unwrap();
//! let op = Caller::kernel();
//! let agent = vfs.mkdir(&op, agentfs_vfs::ROOT_INO, b"a", 0o755).unwrap();
//! assert_eq!(vfs.agent_names(), vec!["a".to_string()]);
//! # let _ = agent;
//! ```

mod agent;
mod auditfs;
mod caller;
mod control;
mod enforce;
mod error;
mod gc;
mod metrics;
mod mutate;
mod names;
mod node;
mod ops;
mod outbox;
mod periodic;
mod policyview;
mod record;
mod reload;
mod semantic;
mod space;
mod sysfs;
mod vfs;

#[cfg(feature = "fuse")]
pub mod fuse;

pub use agentfs_memory::search::{Hit, SearchError};
pub use agentfs_memory::{FileKind, Ino, InodeRecord, StoreError};
pub use caller::Caller;
pub use control::{Admission, Parked, Waiting};
pub use error::{Refusal, Result, VfsError};
pub use gc::{start_collector, GcRound, GC_HOLD_FILE};
pub use mutate::{KillSuidgid, SetAttr, TimeSet};
pub use names::NAME_MAX;
pub use ops::checkpoint::thread_minor_faults;
pub use periodic::Periodic;
pub use vfs::{now_ns, Attr, DirEntry, FsStats, Invalidator, Opened, Vfs, ROOT_INO};

use mutate::{Mutation, Outcome};

pub(crate) fn errno_hint(e: &VfsError) -> i32 {
    e.errno()
}

impl Vfs {
    /// The attributes a mutation left, with the allocation read from the live node.
    fn attr_of(&self, caller: &Caller, outcome: Outcome) -> Result<Attr> {
        match outcome {
            Outcome::Attr(rec) => Ok(self
                .getattr(caller, rec.ino)
                .unwrap_or_else(|_| Attr::dense(rec))),
            _ => Err(VfsError::Invalid("unexpected outcome")),
        }
    }
}

/// The mutating calls. Each is one [`Mutation`] through the choke point.
impl Vfs {
    /// Creates a regular or special file (`kind` from the mode's file type bits).
    pub fn mknod(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
        kind: FileKind,
        mode: u32,
        rdev: u32,
    ) -> Result<Attr> {
        if kind == FileKind::Dir || kind == FileKind::Symlink {
            return Err(VfsError::Invalid("mknod of a directory or symlink"));
        }
        self.attr_of(
            caller,
            self.mutate(
                caller,
                Mutation::Create {
                    parent,
                    name,
                    kind,
                    mode,
                    rdev,
                },
            )?,
        )
    }

    /// `open(O_CREAT)` of a new regular file: creates it and opens a handle.
    pub fn create(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
        mode: u32,
        flags: i32,
    ) -> Result<(Attr, Opened)> {
        let attr = self.mknod(caller, parent, name, FileKind::File, mode, 0)?;
        let opened = self.open_file(caller, attr.ino, flags)?;
        Ok((attr, opened))
    }

    /// `mkdir`; at the mount root it registers an agent.
    pub fn mkdir(&self, caller: &Caller, parent: Ino, name: &[u8], mode: u32) -> Result<Attr> {
        self.attr_of(
            caller,
            self.mutate(caller, Mutation::Mkdir { parent, name, mode })?,
        )
    }

    pub fn symlink(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
        target: &[u8],
    ) -> Result<Attr> {
        self.attr_of(
            caller,
            self.mutate(
                caller,
                Mutation::Symlink {
                    parent,
                    name,
                    target,
                },
            )?,
        )
    }

    pub fn link(
        &self,
        caller: &Caller,
        ino: Ino,
        new_parent: Ino,
        new_name: &[u8],
    ) -> Result<Attr> {
        self.attr_of(
            caller,
            self.mutate(
                caller,
                Mutation::Link {
                    ino,
                    new_parent,
                    new_name,
                },
            )?,
        )
    }

    pub fn unlink(&self, caller: &Caller, parent: Ino, name: &[u8]) -> Result<()> {
        self.mutate(caller, Mutation::Unlink { parent, name })
            .map(|_| ())
    }

    pub fn rmdir(&self, caller: &Caller, parent: Ino, name: &[u8]) -> Result<()> {
        self.mutate(caller, Mutation::Rmdir { parent, name })
            .map(|_| ())
    }

    pub fn rename(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: u32,
    ) -> Result<()> {
        self.mutate(
            caller,
            Mutation::Rename {
                parent,
                name,
                new_parent,
                new_name,
                flags,
            },
        )
        .map(|_| ())
    }

    /// Writes `data` at `offset` (at the end of the file when `append`). Returns bytes written.
    pub fn write(
        &self,
        caller: &Caller,
        ino: Ino,
        offset: u64,
        data: &[u8],
        append: bool,
    ) -> Result<u32> {
        self.write_killing(caller, ino, offset, data, append, false)
    }

    /// [`Vfs::write`] that also clears set-user-ID and set-group-ID when `kill_suidgid` (the
    /// kernel asks so when the writer lacks `CAP_FSETID`; see [`KillSuidgid`]).
    pub fn write_killing(
        &self,
        caller: &Caller,
        ino: Ino,
        offset: u64,
        data: &[u8],
        append: bool,
        kill_suidgid: bool,
    ) -> Result<u32> {
        if let Some(v) = sysfs::Virtual::of(self, ino) {
            // A file of `AGENT/policy/` is refused by the choke point (EROFS), below.
            if v.agent_view().is_none() {
                return self.write_control(caller, &v, data);
            }
        }
        match self.mutate(
            caller,
            Mutation::Write {
                ino,
                offset,
                data,
                append,
                kill_suidgid,
            },
        )? {
            Outcome::Written(n) => Ok(n),
            _ => Err(VfsError::Invalid("unexpected outcome")),
        }
    }

    pub fn setattr(&self, caller: &Caller, ino: Ino, mut set: SetAttr) -> Result<Attr> {
        if let Some(v) = sysfs::Virtual::of(self, ino) {
            // `echo X > signal` opens with O_TRUNC: truncating a control file is a no-op.
            let only_truncate =
                set.size == Some(0) && set.mode.is_none() && set.uid.is_none() && set.gid.is_none();
            if v.control_of().is_some() && only_truncate {
                return self.getattr(caller, ino);
            }
        }
        if set.kill_suidgid == KillSuidgid::UnlessCapFsetid {
            // Reading the caller's capabilities costs a /proc read: only for a file with a bit
            // to clear (a bit set between this look and the change is left, as by a race).
            let to_clear = self
                .getattr(caller, ino)
                .is_ok_and(|a| a.kind == FileKind::File && mutate::has_suidgid(a.perm));
            set.kill_suidgid = if to_clear && !caller.has_cap_fsetid() {
                KillSuidgid::Yes
            } else {
                KillSuidgid::No
            };
        }
        self.attr_of(caller, self.mutate(caller, Mutation::SetAttr { ino, set })?)
    }

    /// posix_fallocate: mode 0 grows the file to `offset + len` (the new range reads as
    /// zeros); `FALLOC_FL_KEEP_SIZE` has nothing to reserve in a content-addressed store and
    /// succeeds; other modes (punch hole, collapse, zero range) are not supported.
    pub fn fallocate(
        &self,
        caller: &Caller,
        ino: Ino,
        offset: u64,
        len: u64,
        mode: i32,
    ) -> Result<()> {
        let end = offset.checked_add(len).ok_or(VfsError::FileTooBig)?;
        match mode {
            0 => {
                let size = self.getattr(caller, ino)?.size;
                if end > size {
                    self.setattr(
                        caller,
                        ino,
                        SetAttr {
                            size: Some(end),
                            ..SetAttr::default()
                        },
                    )?;
                }
                Ok(())
            }
            libc::FALLOC_FL_KEEP_SIZE => {
                self.getattr(caller, ino)?;
                Ok(())
            }
            _ => Err(VfsError::NotSupported("this fallocate mode")),
        }
    }

    pub fn setxattr(
        &self,
        caller: &Caller,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        flags: i32,
    ) -> Result<()> {
        self.mutate(
            caller,
            Mutation::SetXattr {
                ino,
                name,
                value,
                flags,
            },
        )
        .map(|_| ())
    }

    pub fn removexattr(&self, caller: &Caller, ino: Ino, name: &[u8]) -> Result<()> {
        self.mutate(caller, Mutation::RemoveXattr { ino, name })
            .map(|_| ())
    }
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
