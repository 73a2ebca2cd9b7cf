//! Calls that add, remove or move names: agent registration, create/mkdir/mknod/symlink,
//! link, unlink/rmdir, rename. Each runs under the namespace mutex, builds the store batch
//! first, commits it through the [`Txn`], and only then changes the in-memory tree, so a
//! failed commit (full disk) leaves memory and store as they were.

use crate::caller::Caller;
use crate::error::{Result, VfsError};
use crate::mutate::Txn;
use crate::names::{check_agent_name, check_name};
use crate::node::{Class, Node};
use crate::vfs::{is_structural, now_ns, Vfs, ROOT_INO};
use agentfs_memory::{Batch, Change, Durability, FileKind, Ino, InodeRecord};
use parking_lot::RwLock;
use std::sync::Arc;

/// `RENAME_NOREPLACE` and `RENAME_EXCHANGE` from `<linux/fs.h>`.
const RENAME_NOREPLACE: u32 = 1;
const RENAME_EXCHANGE: u32 = 2;

impl Vfs {
    #[allow(clippy::too_many_arguments)]
    fn new_record(
        &self,
        caller: &Caller,
        ino: Ino,
        kind: FileKind,
        mode: u32,
        rdev: u32,
        parent: &InodeRecord,
        target: &[u8],
    ) -> InodeRecord {
        let now = now_ns();
        let mut perm = (mode & 0o7777) as u16;
        let mut gid = caller.gid;
        // BSD group semantics in a setgid directory, as ext4 does.
        if parent.perm & 0o2000 != 0 {
            gid = parent.gid;
            if kind == FileKind::Dir {
                perm |= 0o2000;
            }
        }
        InodeRecord {
            ino,
            kind,
            perm,
            uid: caller.uid,
            gid,
            nlink: if kind == FileKind::Dir { 2 } else { 1 },
            size: if kind == FileKind::Symlink {
                target.len() as u64
            } else {
                0
            },
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            rdev,
            symlink_target: target.to_vec(),
        }
    }

    /// `mkdir MNT/NAME`: an agent and its fixed layout, in one transaction.
    pub(crate) fn register_agent(
        &self,
        caller: &Caller,
        txn: &mut Txn,
        name: &[u8],
        mode: u32,
    ) -> Result<InodeRecord> {
        check_agent_name(name)?;
        let _ns = self.ns.lock();
        let root = self.node(ROOT_INO)?;
        let mut root_w = root.write();
        if root_w.dir().and_then(|d| d.get(name)).is_some() {
            return Err(VfsError::Exists);
        }
        let agent_name: Arc<str> = Arc::from(String::from_utf8_lossy(name).as_ref());
        let layout: [(&[u8], &[u8], u32); 7] = [
            (b"", name, mode & 0o7777),
            (name, b"mem", 0o755),
            (b"mem", b"working", 0o755),
            (b"mem", b"episodic", 0o755),
            (b"mem", b"semantic", 0o755),
            (name, b"state", 0o755),
            (name, b"policy", 0o555),
        ];
        let mut batch = Batch::new();
        let mut made: Vec<(Ino, Node)> = Vec::new();
        let mut ino_of: Vec<(&[u8], Ino, Class)> = vec![(b"", ROOT_INO, Class::Root)];
        for (parent_name, child_name, perm) in layout {
            let Some(&(_, parent_ino, parent_class)) =
                ino_of.iter().find(|(n, _, _)| *n == parent_name)
            else {
                return Err(VfsError::Invalid("agent layout"));
            };
            let ino = self.alloc_ino();
            let class = parent_class.of_child(child_name);
            let rec = self.new_record(caller, ino, FileKind::Dir, perm, 0, &root_w.attr, &[]);
            batch.push(Change::PutInode(rec.clone()));
            batch.push(Change::PutDirent {
                parent: parent_ino,
                name: child_name.to_vec(),
                ino,
            });
            let mut node = Node::new(rec, class, Some(agent_name.clone()), parent_ino, child_name);
            node.structural = is_structural(class, parent_class);
            made.push((ino, node));
            ino_of.push((child_name, ino, class));
        }
        // Link counts and entries among the new directories.
        let index: Vec<Ino> = made.iter().map(|(i, _)| *i).collect();
        for k in 0..made.len() {
            let (ino, _) = made[k];
            let parent = made[k].1.parent;
            let name = made[k].1.name.clone();
            if let Some(pos) = index.iter().position(|i| *i == parent) {
                let parent_node = &mut made[pos].1;
                parent_node.attr.nlink += 1;
                if let Some(d) = parent_node.dir_mut() {
                    d.insert_shared(name, ino, FileKind::Dir);
                }
            }
        }
        // Re-put the records with final link counts.
        batch.changes.retain(|c| !matches!(c, Change::PutInode(_)));
        for (_, node) in &made {
            batch.push(Change::PutInode(node.attr.clone()));
        }
        let now = now_ns();
        let mut root_attr = root_w.attr.clone();
        root_attr.nlink += 1;
        root_attr.mtime = now;
        root_attr.ctime = now;
        batch.push(Change::PutInode(root_attr.clone()));
        batch.push(Change::SetMeta {
            key: "next_ino".into(),
            value: self
                .next_ino
                .load(std::sync::atomic::Ordering::Relaxed)
                .to_string(),
        });
        txn.commit(self, Class::AgentRoot, batch, Durability::Process)?;

        let agent_ino = made[0].0;
        let attr = made[0].1.attr.clone();
        {
            let mut nodes = self.nodes.write();
            for (ino, node) in made {
                nodes.insert(ino, Arc::new(RwLock::new(node)));
            }
        }
        root_w.attr = root_attr;
        if let Some(d) = root_w.dir_mut() {
            d.insert(name.to_vec(), agent_ino, FileKind::Dir);
        }
        drop(root_w);
        self.add_agent(agent_name, agent_ino, now);
        tracing::info!(agent = %String::from_utf8_lossy(name), "agent registered");
        Ok(attr)
    }

    /// Creates a file, directory, symlink or special file named `name` in `parent`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn create_node(
        &self,
        caller: &Caller,
        txn: &mut Txn,
        parent: Ino,
        name: &[u8],
        kind: FileKind,
        mode: u32,
        rdev: u32,
        symlink_target: &[u8],
    ) -> Result<InodeRecord> {
        check_name(name)?;
        if kind == FileKind::Symlink && symlink_target.len() > 4095 {
            return Err(VfsError::NameTooLong);
        }
        let _ns = self.ns.lock();
        let dir = self.node(parent)?;
        let mut dir_w = dir.write();
        let entries = dir_w.dir().ok_or(VfsError::NotDir)?;
        if entries.get(name).is_some() {
            return Err(VfsError::Exists);
        }
        if dir_w.attr.nlink == 0 {
            return Err(VfsError::NotFound);
        }
        let class = dir_w.class.of_child(name);
        let ino = self.alloc_ino();
        let rec = self.new_record(caller, ino, kind, mode, rdev, &dir_w.attr, symlink_target);
        let now = rec.ctime;
        let mut dir_attr = dir_w.attr.clone();
        dir_attr.mtime = now;
        dir_attr.ctime = now;
        if kind == FileKind::Dir {
            dir_attr.nlink += 1;
        }
        let mut batch = Batch::new();
        batch.push(Change::PutInode(rec.clone()));
        batch.push(Change::PutDirent {
            parent,
            name: name.to_vec(),
            ino,
        });
        batch.push(Change::PutInode(dir_attr.clone()));
        if !class.is_volatile() {
            batch.push(Change::SetMeta {
                key: "next_ino".into(),
                value: (ino + 1).to_string(),
            });
        }
        txn.commit(self, class, batch, Durability::Process)?;

        let node = Node::new(rec.clone(), class, dir_w.agent.clone(), parent, name);
        // One copy of the name for the node and its entry.
        let shared_name = node.name.clone();
        self.nodes.write().insert(ino, Arc::new(RwLock::new(node)));
        dir_w.attr = dir_attr;
        if let Some(d) = dir_w.dir_mut() {
            d.insert_shared(shared_name, ino, kind);
        }
        if let (Some(agent), Some(ci)) = (dir_w.agent.as_deref(), class.memory_index()) {
            if let Some(a) = self.agent(agent) {
                a.add_files(ci, 1);
                a.add_bytes(ci, rec.size as i64);
            }
        }
        Ok(rec)
    }

    pub(crate) fn do_link(
        &self,
        txn: &mut Txn,
        ino: Ino,
        new_parent: Ino,
        new_name: &[u8],
    ) -> Result<InodeRecord> {
        check_name(new_name)?;
        let _ns = self.ns.lock();
        let dir = self.node(new_parent)?;
        let node = self.node(ino)?;
        let mut dir_w = dir.write();
        let entries = dir_w.dir().ok_or(VfsError::NotDir)?;
        if entries.get(new_name).is_some() {
            return Err(VfsError::Exists);
        }
        let mut n = node.write();
        if n.is_dir() {
            return Err(VfsError::NotPermitted("hard links to directories"));
        }
        if n.attr.nlink == 0 {
            return Err(VfsError::NotFound);
        }
        let now = now_ns();
        let mut attr = n.attr.clone();
        attr.nlink += 1;
        attr.ctime = now;
        let mut dir_attr = dir_w.attr.clone();
        dir_attr.mtime = now;
        dir_attr.ctime = now;
        let mut batch = Batch::new();
        batch.push(Change::PutInode(attr.clone()));
        batch.push(Change::PutDirent {
            parent: new_parent,
            name: new_name.to_vec(),
            ino,
        });
        batch.push(Change::PutInode(dir_attr.clone()));
        txn.commit(self, n.class, batch, Durability::Process)?;
        n.attr = attr.clone();
        dir_w.attr = dir_attr;
        let kind = n.attr.kind;
        if let Some(d) = dir_w.dir_mut() {
            d.insert(new_name.to_vec(), ino, kind);
        }
        Ok(attr)
    }

    /// unlink (`want_dir == false`) or rmdir (`want_dir == true`).
    pub(crate) fn remove_entry(
        &self,
        txn: &mut Txn,
        parent: Ino,
        name: &[u8],
        want_dir: bool,
    ) -> Result<()> {
        let _ns = self.ns.lock();
        let dir = self.node(parent)?;
        let mut dir_w = dir.write();
        let child_ino = dir_w
            .dir()
            .ok_or(VfsError::NotDir)?
            .get(name)
            .ok_or(VfsError::NotFound)?;
        let child = self.node(child_ino)?;
        let mut c = child.write();
        match (want_dir, c.is_dir()) {
            (true, false) => return Err(VfsError::NotDir),
            (false, true) => return Err(VfsError::IsDir),
            (true, true) => {
                if !c.dir().is_some_and(|d| d.is_empty()) {
                    return Err(VfsError::NotEmpty);
                }
            }
            (false, false) => {}
        }
        let now = now_ns();
        let mut dir_attr = dir_w.attr.clone();
        dir_attr.mtime = now;
        dir_attr.ctime = now;
        let mut attr = c.attr.clone();
        attr.ctime = now;
        if want_dir {
            dir_attr.nlink = dir_attr.nlink.saturating_sub(1);
            attr.nlink = 0;
        } else {
            attr.nlink = attr.nlink.saturating_sub(1);
        }
        let gone = attr.nlink == 0 && c.open_count == 0;
        let mut batch = Batch::new();
        batch.push(Change::DeleteDirent {
            parent,
            name: name.to_vec(),
        });
        batch.push(Change::PutInode(dir_attr.clone()));
        if gone {
            batch.push(Change::DeleteInode(child_ino));
        } else {
            // Unlinked while open: kept (nlink 0) until the last close; a crash before that
            // leaves an orphan that the next mount deletes.
            batch.push(Change::PutInode(attr.clone()));
        }
        txn.commit(self, c.class, batch, Durability::Process)?;
        dir_w.attr = dir_attr;
        if let Some(d) = dir_w.dir_mut() {
            d.remove(name);
        }
        c.attr = attr;
        let renamed = !gone && (c.parent, &c.name[..]) == (parent, name);
        drop(c);
        drop(dir_w);
        if gone {
            self.forget_node(child_ino);
        }
        if renamed {
            // The node recorded the name just removed, and the file lives on under another:
            // record that one, so paths (and the policy's decisions) follow a real name.
            // Still under `ns`: no other name can come or go meanwhile.
            if let Some((dir, other, _)) = self.names_in_class(child_ino).into_iter().next() {
                if let Ok(node) = self.node(child_ino) {
                    let mut n = node.write();
                    n.parent = dir;
                    n.name = other.into();
                }
            }
        }
        Ok(())
    }

    /// Drops a node whose last name and last handle are gone, from memory and the store.
    pub(crate) fn destroy_node(&self, ino: Ino) -> Result<()> {
        let class = match self.node(ino) {
            Ok(n) => n.read().class,
            Err(_) => return Ok(()),
        };
        let mut batch = Batch::new();
        batch.push(Change::DeleteInode(ino));
        self.store_for(class).commit(batch, Durability::Process)?;
        self.forget_node(ino);
        Ok(())
    }

    /// Removes a dead node from the table and from its agent's counters.
    pub(crate) fn forget_node(&self, ino: Ino) {
        let removed = self.nodes.write().remove(&ino);
        if let Some(node) = removed {
            let n = node.read();
            if let (Some(agent), Some(ci)) = (n.agent.as_deref(), n.class.memory_index()) {
                if let Some(a) = self.agent(agent) {
                    a.add_files(ci, -1);
                    a.add_bytes(ci, -(n.attr.size as i64));
                }
            }
        }
    }

    pub(crate) fn do_rename(
        &self,
        txn: &mut Txn,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: u32,
    ) -> Result<()> {
        check_name(new_name)?;
        if flags & RENAME_EXCHANGE != 0 {
            return Err(VfsError::Invalid("RENAME_EXCHANGE is not supported"));
        }
        if flags & !RENAME_NOREPLACE != 0 {
            return Err(VfsError::Invalid("unknown rename flags"));
        }
        let _ns = self.ns.lock();
        let src_dir = self.node(parent)?;
        let dst_dir = self.node(new_parent)?;
        let moving_ino = src_dir
            .read()
            .dir()
            .ok_or(VfsError::NotDir)?
            .get(name)
            .ok_or(VfsError::NotFound)?;
        let victim_ino = dst_dir.read().dir().ok_or(VfsError::NotDir)?.get(new_name);
        if victim_ino == Some(moving_ino) {
            return Ok(());
        }
        if victim_ino.is_some() && flags & RENAME_NOREPLACE != 0 {
            return Err(VfsError::Exists);
        }
        let moving = self.node(moving_ino)?;
        let moving_is_dir = moving.read().is_dir();
        if moving_is_dir && parent != new_parent {
            // A directory cannot move into its own subtree.
            let mut cur = new_parent;
            for _ in 0..4096 {
                if cur == moving_ino {
                    return Err(VfsError::Invalid("cannot move a directory into itself"));
                }
                if cur == ROOT_INO {
                    break;
                }
                cur = self.node(cur)?.read().parent;
            }
        }
        let victim = match victim_ino {
            Some(v) => Some(self.node(v)?),
            None => None,
        };
        let victim_is_dir = victim.as_ref().is_some_and(|v| v.read().is_dir());
        if let Some(v) = &victim {
            let v = v.read();
            match (moving_is_dir, v.is_dir()) {
                (true, false) => return Err(VfsError::NotDir),
                (false, true) => return Err(VfsError::IsDir),
                (true, true) if !v.dir().is_some_and(|d| d.is_empty()) => {
                    return Err(VfsError::NotEmpty)
                }
                _ => {}
            }
        }

        // Parents before children; two parents in inode order.
        let same_dir = parent == new_parent;
        let (mut first, mut second) = if same_dir || parent < new_parent {
            (src_dir.write(), (!same_dir).then(|| dst_dir.write()))
        } else {
            let d = dst_dir.write();
            (src_dir.write(), Some(d))
        };
        let mut m = moving.write();
        let mut v = victim.as_ref().map(|v| v.write());

        let now = now_ns();
        let mut src_attr = first.attr.clone();
        src_attr.mtime = now;
        src_attr.ctime = now;
        let mut dst_attr = second.as_ref().map(|d| {
            let mut a = d.attr.clone();
            a.mtime = now;
            a.ctime = now;
            a
        });
        let mut moving_attr = m.attr.clone();
        moving_attr.ctime = now;
        let mut victim_attr = v.as_ref().map(|v| v.attr.clone());
        let mut victim_gone = false;
        if let (Some(va), Some(vn)) = (victim_attr.as_mut(), v.as_ref()) {
            va.ctime = now;
            if vn.is_dir() {
                va.nlink = 0;
            } else {
                va.nlink = va.nlink.saturating_sub(1);
            }
            victim_gone = va.nlink == 0 && vn.open_count == 0;
        }
        if moving_is_dir && !same_dir {
            src_attr.nlink = src_attr.nlink.saturating_sub(1);
            let target = dst_attr.as_mut().unwrap_or(&mut src_attr);
            if !victim_is_dir {
                target.nlink += 1;
            }
        } else if moving_is_dir && victim_attr.as_ref().is_some() {
            // Same directory, replacing an empty directory: one subdirectory fewer.
            src_attr.nlink = src_attr.nlink.saturating_sub(1);
        }

        let mut batch = Batch::new();
        batch.push(Change::PutDirent {
            parent: new_parent,
            name: new_name.to_vec(),
            ino: moving_ino,
        });
        batch.push(Change::DeleteDirent {
            parent,
            name: name.to_vec(),
        });
        batch.push(Change::PutInode(src_attr.clone()));
        if let Some(a) = &dst_attr {
            batch.push(Change::PutInode(a.clone()));
        }
        batch.push(Change::PutInode(moving_attr.clone()));
        if let (Some(vi), Some(va)) = (victim_ino, &victim_attr) {
            if victim_gone {
                batch.push(Change::DeleteInode(vi));
            } else {
                batch.push(Change::PutInode(va.clone()));
            }
        }
        txn.commit(self, m.class, batch, Durability::Process)?;

        // Insert the new name before removing the old one: a concurrent lookup of either name
        // never finds nothing where something was.
        let kind = m.attr.kind;
        // One copy of the new name for the entry and the node.
        let shared_name: Arc<[u8]> = new_name.into();
        let target = match second.as_mut() {
            Some(d) => d,
            None => &mut first,
        };
        if let Some(e) = target.dir_mut() {
            e.insert_shared(shared_name.clone(), moving_ino, kind);
        }
        if let Some(e) = first.dir_mut() {
            e.remove(name);
        }
        first.attr = src_attr;
        if let (Some(d), Some(a)) = (second.as_mut(), dst_attr) {
            d.attr = a;
        }
        m.attr = moving_attr;
        m.parent = new_parent;
        m.name = shared_name;
        if let (Some(vn), Some(va)) = (v.as_mut(), victim_attr) {
            vn.attr = va;
        }
        drop(v);
        drop(m);
        drop(second);
        drop(first);
        if victim_gone {
            if let Some(vi) = victim_ino {
                self.forget_node(vi);
            }
        }
        Ok(())
    }
}
