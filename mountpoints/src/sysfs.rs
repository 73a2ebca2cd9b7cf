//! The virtual control tree under `MNT/sys/`: generated on the fly, never stored.
//!
//! ```text
//! sys/
//! ├── agents/AGENT/status   JSON, one object
//! ├── agents/AGENT/signal   write STOP | CONT | KILL | START; read: the state
//! ├── agents/AGENT/pids     write a pid to bind it (and its descendants); read: live bound pids
//! └── policy/               the loaded policy files (filled by the policy engine)
//! ```

use crate::agent::Agent;
use crate::error::{Result, VfsError};
use crate::vfs::{DirEntry, Vfs, ROOT_INO};
use agentfs_memory::{FileKind, Ino, InodeRecord};
use std::sync::Arc;

pub const SYS_INO: Ino = 2;
pub const SYS_AGENTS_INO: Ino = 3;
pub const SYS_POLICY_INO: Ino = 4;
/// Per-agent virtual inodes: `VIRTUAL_BASE + index * 16 + k`, far above any stored inode.
const VIRTUAL_BASE: Ino = 1 << 48;
const PER_AGENT: Ino = 16;
const AGENT_DIR: Ino = 0;
const AGENT_STATUS: Ino = 1;
const AGENT_SIGNAL: Ino = 2;
const AGENT_PIDS: Ino = 3;

/// A node of the control tree.
pub(crate) enum Virtual {
    Sys,
    Agents,
    Policy,
    AgentDir(Arc<Agent>),
    Status(Arc<Agent>),
    Signal(Arc<Agent>),
    Pids(Arc<Agent>),
}

impl Virtual {
    pub(crate) fn of(vfs: &Vfs, ino: Ino) -> Option<Virtual> {
        match ino {
            SYS_INO => Some(Virtual::Sys),
            SYS_AGENTS_INO => Some(Virtual::Agents),
            SYS_POLICY_INO => Some(Virtual::Policy),
            i if i >= VIRTUAL_BASE => {
                let rel = i - VIRTUAL_BASE;
                let agent = vfs.agent_by_index(rel / PER_AGENT)?;
                match rel % PER_AGENT {
                    AGENT_DIR => Some(Virtual::AgentDir(agent)),
                    AGENT_STATUS => Some(Virtual::Status(agent)),
                    AGENT_SIGNAL => Some(Virtual::Signal(agent)),
                    AGENT_PIDS => Some(Virtual::Pids(agent)),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    fn ino(&self) -> Ino {
        match self {
            Virtual::Sys => SYS_INO,
            Virtual::Agents => SYS_AGENTS_INO,
            Virtual::Policy => SYS_POLICY_INO,
            Virtual::AgentDir(a) => VIRTUAL_BASE + a.index * PER_AGENT + AGENT_DIR,
            Virtual::Status(a) => VIRTUAL_BASE + a.index * PER_AGENT + AGENT_STATUS,
            Virtual::Signal(a) => VIRTUAL_BASE + a.index * PER_AGENT + AGENT_SIGNAL,
            Virtual::Pids(a) => VIRTUAL_BASE + a.index * PER_AGENT + AGENT_PIDS,
        }
    }

    fn parent(&self) -> Ino {
        match self {
            Virtual::Sys => ROOT_INO,
            Virtual::Agents | Virtual::Policy => SYS_INO,
            Virtual::AgentDir(_) => SYS_AGENTS_INO,
            Virtual::Status(a) | Virtual::Signal(a) | Virtual::Pids(a) => {
                VIRTUAL_BASE + a.index * PER_AGENT + AGENT_DIR
            }
        }
    }

    fn kind(&self) -> FileKind {
        match self {
            Virtual::Status(_) | Virtual::Signal(_) | Virtual::Pids(_) => FileKind::File,
            _ => FileKind::Dir,
        }
    }

    pub(crate) fn attr(&self, vfs: &Vfs) -> InodeRecord {
        let dir = self.kind() == FileKind::Dir;
        let nlink = match self {
            Virtual::Sys => 4,
            Virtual::Agents => 2 + vfs.agents_by_index.read().len() as u32,
            _ if dir => 2,
            _ => 1,
        };
        InodeRecord {
            ino: self.ino(),
            kind: self.kind(),
            perm: match self {
                _ if dir => 0o555,
                // Operators write control files; the kernel's mode check keeps other uids out.
                Virtual::Signal(_) | Virtual::Pids(_) => 0o644,
                _ => 0o444,
            },
            uid: 0,
            gid: 0,
            nlink,
            // Generated files have no size known in advance; like /proc they report 0 and
            // are read with direct I/O until EOF.
            size: 0,
            atime: vfs.started,
            mtime: vfs.started,
            ctime: vfs.started,
            crtime: vfs.started,
            rdev: 0,
            symlink_target: Vec::new(),
        }
    }

    fn children(&self, vfs: &Vfs) -> Vec<(Vec<u8>, Virtual)> {
        match self {
            Virtual::Sys => vec![
                (b"agents".to_vec(), Virtual::Agents),
                (b"policy".to_vec(), Virtual::Policy),
            ],
            Virtual::Agents => vfs
                .agents_by_index
                .read()
                .iter()
                .map(|a| (a.name.as_bytes().to_vec(), Virtual::AgentDir(a.clone())))
                .collect(),
            Virtual::AgentDir(a) => vec![
                (b"pids".to_vec(), Virtual::Pids(a.clone())),
                (b"signal".to_vec(), Virtual::Signal(a.clone())),
                (b"status".to_vec(), Virtual::Status(a.clone())),
            ],
            Virtual::Policy | Virtual::Status(_) | Virtual::Signal(_) | Virtual::Pids(_) => {
                Vec::new()
            }
        }
    }

    pub(crate) fn lookup(&self, vfs: &Vfs, name: &[u8]) -> Result<Virtual> {
        if self.kind() != FileKind::Dir {
            return Err(VfsError::NotDir);
        }
        if let Virtual::Agents = self {
            let name = std::str::from_utf8(name).map_err(|_| VfsError::NotFound)?;
            return vfs
                .agent(name)
                .map(Virtual::AgentDir)
                .ok_or(VfsError::NotFound);
        }
        self.children(vfs)
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .ok_or(VfsError::NotFound)
    }

    pub(crate) fn readdir(
        &self,
        vfs: &Vfs,
        offset: u64,
        fill: &mut dyn FnMut(DirEntry) -> bool,
    ) -> Result<()> {
        if self.kind() != FileKind::Dir {
            return Err(VfsError::NotDir);
        }
        let mut entries = vec![
            (b".".to_vec(), self.ino(), FileKind::Dir),
            (b"..".to_vec(), self.parent(), FileKind::Dir),
        ];
        entries.extend(
            self.children(vfs)
                .into_iter()
                .map(|(name, v)| (name, v.ino(), v.kind())),
        );
        // Offsets are positions; agents are only ever added, at the end, so they are stable.
        for (i, (name, ino, kind)) in entries.into_iter().enumerate().skip(offset as usize) {
            if fill(DirEntry {
                ino,
                offset: i as u64 + 1,
                kind,
                name,
            }) {
                break;
            }
        }
        Ok(())
    }

    /// The agent this node belongs to (`sys/agents/AGENT/…`).
    pub(crate) fn owner(&self) -> Option<&Arc<Agent>> {
        match self {
            Virtual::AgentDir(a) | Virtual::Status(a) | Virtual::Signal(a) | Virtual::Pids(a) => {
                Some(a)
            }
            _ => None,
        }
    }

    /// The agent whose control file this is, if it is a writable one.
    pub(crate) fn control_of(&self) -> Option<&Arc<Agent>> {
        match self {
            Virtual::Signal(a) | Virtual::Pids(a) => Some(a),
            _ => None,
        }
    }

    /// The bytes of a generated file, taken at open.
    pub(crate) fn content(&self, vfs: &Vfs) -> Result<Vec<u8>> {
        match self {
            Virtual::Pids(a) => Ok(vfs
                .bindings
                .pids_of(&a.name)
                .iter()
                .map(|p| format!("{p}\n"))
                .collect::<String>()
                .into_bytes()),
            Virtual::Status(a) => {
                let mut status = a.status_json();
                status["pids"] = vfs.bindings.pids_of(&a.name).into();
                let mut out =
                    serde_json::to_vec_pretty(&status).map_err(|_| VfsError::Invalid("status"))?;
                out.push(b'\n');
                Ok(out)
            }
            Virtual::Signal(a) => Ok(format!("{}\n", a.gate.state().0).into_bytes()),
            _ => Err(VfsError::IsDir),
        }
    }
}
