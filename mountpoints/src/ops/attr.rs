//! Attribute changes: chmod, chown, truncate, utimens, xattrs. They change one node under its
//! own lock and commit at once (a truncate without an open handle has no close to wait for).

use crate::error::{Result, VfsError};
use crate::mutate::{drop_suidgid, KillSuidgid, SetAttr, TimeSet, Txn};
use crate::node::{Body, Class};
use crate::ops::data::mark_synced;
use crate::vfs::{now_ns, Vfs};
use agentfs_memory::{Batch, Change, Durability, FileKind, Ino, InodeRecord};

const XATTR_CREATE: i32 = 1;
const XATTR_REPLACE: i32 = 2;
/// Largest xattr value, as on ext4 with a 4 KiB block... generously: Linux's XATTR_SIZE_MAX.
const XATTR_VALUE_MAX: usize = 64 * 1024;
const XATTR_NAME_MAX: usize = 255;

impl Vfs {
    pub(crate) fn set_attr(&self, txn: &mut Txn, ino: Ino, set: SetAttr) -> Result<InodeRecord> {
        let node = self.node(ino)?;
        let mut n = node.write();
        let now = now_ns();
        if let Some(size) = set.size {
            match n.attr.kind {
                FileKind::File => {}
                FileKind::Dir => return Err(VfsError::IsDir),
                _ => return Err(VfsError::Invalid("only regular files can be truncated")),
            }
            txn.set_size(size);
            if let Some(asker) = &txn.asker {
                let chown = set.uid.is_some() || set.gid.is_some();
                let class_index = n.class.memory_index();
                self.decide_truncate(
                    asker,
                    &mut txn.entry,
                    &n,
                    size,
                    set.mode,
                    chown,
                    class_index,
                )?;
            }
            // After the policy, as for writes (ops/data.rs).
            if n.class == Class::Episodic && size != n.attr.size {
                return Err(VfsError::NotPermitted(
                    "mem/episodic is append-only: no truncation",
                ));
            }
            self.truncate_locked(&mut n, size)?;
            n.attr.mtime = now;
        }
        if let Some(uid) = set.uid {
            n.attr.uid = uid;
        }
        if let Some(gid) = set.gid {
            n.attr.gid = gid;
        }
        if set.kill_suidgid == KillSuidgid::Yes && n.attr.kind == FileKind::File {
            n.attr.perm = drop_suidgid(n.attr.perm);
        }
        if let Some(mode) = set.mode {
            n.attr.perm = (mode & 0o7777) as u16;
        }
        let resolve = |t: TimeSet| match t {
            TimeSet::Now => now,
            TimeSet::At(ns) => ns,
        };
        if let Some(t) = set.atime {
            n.attr.atime = resolve(t);
        }
        if let Some(t) = set.mtime {
            n.attr.mtime = resolve(t);
        }
        n.attr.ctime = now;
        let class = n.class;
        let batch = if matches!(n.body, Body::File(_)) {
            self.file_batch(&mut n)?
        } else {
            let mut b = Batch::new();
            b.push(Change::PutInode(n.attr.clone()));
            b
        };
        txn.commit(self, class, batch, Durability::Process)?;
        mark_synced(&mut n);
        Ok(n.attr.clone())
    }

    /// Sets (`value` is `Some`) or removes an extended attribute.
    pub(crate) fn set_xattr(
        &self,
        txn: &mut Txn,
        ino: Ino,
        name: &[u8],
        value: Option<&[u8]>,
        flags: i32,
    ) -> Result<()> {
        if name.is_empty() || name.len() > XATTR_NAME_MAX {
            return Err(VfsError::Range);
        }
        let supported = [&b"user."[..], b"trusted.", b"security."]
            .iter()
            .any(|p| name.starts_with(p));
        if !supported {
            return Err(VfsError::NotSupported(
                "only user., trusted. and security. xattrs are stored",
            ));
        }
        if value.is_some_and(|v| v.len() > XATTR_VALUE_MAX) {
            return Err(VfsError::Range);
        }
        let node = self.node(ino)?;
        let mut n = node.write();
        let exists = n.xattrs.contains_key(name);
        let mut batch = Batch::new();
        match value {
            Some(v) => {
                if flags & XATTR_CREATE != 0 && exists {
                    return Err(VfsError::Exists);
                }
                if flags & XATTR_REPLACE != 0 && !exists {
                    return Err(VfsError::NoXattr);
                }
                batch.push(Change::SetXattr {
                    ino,
                    name: name.to_vec(),
                    value: v.to_vec(),
                });
            }
            None => {
                if !exists {
                    return Err(VfsError::NoXattr);
                }
                batch.push(Change::RemoveXattr {
                    ino,
                    name: name.to_vec(),
                });
            }
        }
        let mut attr = n.attr.clone();
        attr.ctime = now_ns();
        batch.push(Change::PutInode(attr.clone()));
        txn.commit(self, n.class, batch, Durability::Process)?;
        match value {
            Some(v) => {
                n.xattrs.insert(name.to_vec(), v.to_vec());
            }
            None => {
                n.xattrs.remove(name);
            }
        }
        n.attr = attr;
        Ok(())
    }
}
