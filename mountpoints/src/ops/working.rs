//! Dropping an agent's working memory (KILL). Working memory lives in RAM only; a killed
//! agent loses it, like a process loses its heap. Durable memory and checkpoints stay.

use crate::agent::Agent;
use crate::error::{Result, VfsError};
use crate::vfs::{now_ns, Vfs};
use agentfs_memory::{Batch, Change, Durability, Ino};

impl Vfs {
    /// Removes everything under `AGENT/mem/working`. Files still open keep their content until
    /// their last close (as after an unlink); everything else is freed at once. Returns how
    /// many nodes were removed.
    pub(crate) fn drop_working_memory(&self, agent: &Agent) -> Result<usize> {
        let _ns = self.ns.lock();
        let working = self.child_ino(agent.root, b"mem")?;
        let working = self.child_ino(working, b"working")?;
        // Every node below, parents before children.
        let mut doomed: Vec<(Ino, Ino, Vec<u8>)> = Vec::new();
        let mut dirs = vec![working];
        while let Some(dir) = dirs.pop() {
            let node = self.node(dir)?;
            let n = node.read();
            for (name, ino) in n.dir().map(|d| d.names()).into_iter().flatten() {
                doomed.push((dir, ino, name.to_vec()));
                let is_dir = self.node(ino).is_ok_and(|c| c.read().is_dir());
                if is_dir {
                    dirs.push(ino);
                }
            }
        }
        if doomed.is_empty() {
            return Ok(0);
        }
        let mut batch = Batch::new();
        let mut kept_open = Vec::new();
        for (parent, ino, name) in &doomed {
            batch.push(Change::DeleteDirent {
                parent: *parent,
                name: name.clone(),
            });
            let open = self.node(*ino).is_ok_and(|c| c.read().open_count > 0);
            if open {
                kept_open.push(*ino);
            } else {
                batch.push(Change::DeleteInode(*ino));
            }
        }
        let dir_node = self.node(working)?;
        let mut dir_attr = dir_node.read().attr.clone();
        let now = now_ns();
        dir_attr.mtime = now;
        dir_attr.ctime = now;
        dir_attr.nlink = 2;
        batch.push(Change::PutInode(dir_attr.clone()));
        self.volatile.commit(batch, Durability::Process)?;
        {
            let mut d = dir_node.write();
            d.attr = dir_attr;
            if let Some(entries) = d.dir_mut() {
                for (parent, _, name) in &doomed {
                    if *parent == working {
                        entries.remove(name);
                    }
                }
            }
        }
        for (_, ino, _) in &doomed {
            if kept_open.contains(ino) {
                if let Ok(node) = self.node(*ino) {
                    node.write().attr.nlink = 0;
                }
            } else {
                self.forget_node(*ino);
            }
        }
        tracing::info!(agent = %agent.name, nodes = doomed.len(), "working memory dropped");
        Ok(doomed.len())
    }

    pub(crate) fn child_ino(&self, dir: Ino, name: &[u8]) -> Result<Ino> {
        let node = self.node(dir)?;
        let n = node.read();
        n.dir()
            .ok_or(VfsError::NotDir)?
            .get(name)
            .ok_or(VfsError::NotFound)
    }
}
