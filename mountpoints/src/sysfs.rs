//! The virtual control tree under `MNT/sys/`: generated on the fly, never stored.
//!
//! ```text
//! sys/
//! ├── agents/AGENT/status   JSON, one object
//! ├── agents/AGENT/audit    this agent's flight record, JSON lines (grows; see auditfs.rs)
//! ├── audit                 the whole flight record, JSON lines (grows)
//! └── policy/               the loaded policy files (filled by the policy engine)
//! ```

use crate::agent::Agent;
use crate::caller::Caller;
use crate::error::{Result, VfsError};
use crate::vfs::{DirEntry, Vfs, ROOT_INO};
use agentfs_memory::{FileKind, Ino, InodeRecord};
use std::sync::Arc;

pub const SYS_INO: Ino = 2;
pub const SYS_AGENTS_INO: Ino = 3;
pub const SYS_POLICY_INO: Ino = 4;
pub const SYS_AUDIT_INO: Ino = 5;
/// Per-agent virtual inodes: `VIRTUAL_BASE + index * 16 + k`, far above any stored inode.
const VIRTUAL_BASE: Ino = 1 << 48;
const PER_AGENT: Ino = 16;
const AGENT_DIR: Ino = 0;
const AGENT_STATUS: Ino = 1;
const AGENT_AUDIT: Ino = 2;

/// A node of the control tree.
pub(crate) enum Virtual {
    Sys,
    Agents,
    Policy,
    AgentDir(Arc<Agent>),
    Status(Arc<Agent>),
    /// `sys/audit`.
    Audit,
    /// `sys/agents/AGENT/audit`.
    AgentAudit(Arc<Agent>),
}

impl Virtual {
    pub(crate) fn of(vfs: &Vfs, ino: Ino) -> Option<Virtual> {
        match ino {
            SYS_INO => Some(Virtual::Sys),
            SYS_AGENTS_INO => Some(Virtual::Agents),
            SYS_POLICY_INO => Some(Virtual::Policy),
            SYS_AUDIT_INO => Some(Virtual::Audit),
            i if i >= VIRTUAL_BASE => {
                let rel = i - VIRTUAL_BASE;
                let agent = vfs.agent_by_index(rel / PER_AGENT)?;
                match rel % PER_AGENT {
                    AGENT_DIR => Some(Virtual::AgentDir(agent)),
                    AGENT_STATUS => Some(Virtual::Status(agent)),
                    AGENT_AUDIT => Some(Virtual::AgentAudit(agent)),
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
            Virtual::Audit => SYS_AUDIT_INO,
            Virtual::AgentAudit(a) => VIRTUAL_BASE + a.index * PER_AGENT + AGENT_AUDIT,
        }
    }

    fn parent(&self) -> Ino {
        match self {
            Virtual::Sys => ROOT_INO,
            Virtual::Agents | Virtual::Policy | Virtual::Audit => SYS_INO,
            Virtual::AgentDir(_) => SYS_AGENTS_INO,
            Virtual::Status(a) | Virtual::AgentAudit(a) => {
                VIRTUAL_BASE + a.index * PER_AGENT + AGENT_DIR
            }
        }
    }

    fn kind(&self) -> FileKind {
        match self {
            Virtual::Status(_) | Virtual::Audit | Virtual::AgentAudit(_) => FileKind::File,
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
            perm: if dir { 0o555 } else { 0o444 },
            uid: 0,
            gid: 0,
            nlink,
            // Generated files have no size known in advance; like /proc they report 0 and
            // are read with direct I/O until EOF. The audit files report their current
            // length, which grows (what `tail -f` watches).
            size: self.audit_agent().map_or(0, |agent| {
                vfs.audit_views
                    .len(vfs.durable.as_ref(), agent)
                    .unwrap_or(0)
            }),
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
                (b"audit".to_vec(), Virtual::Audit),
            ],
            Virtual::Agents => vfs
                .agents_by_index
                .read()
                .iter()
                .map(|a| (a.name.as_bytes().to_vec(), Virtual::AgentDir(a.clone())))
                .collect(),
            Virtual::AgentDir(a) => vec![
                (b"status".to_vec(), Virtual::Status(a.clone())),
                (b"audit".to_vec(), Virtual::AgentAudit(a.clone())),
            ],
            Virtual::Policy | Virtual::Status(_) | Virtual::Audit | Virtual::AgentAudit(_) => {
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

    /// For an audit file, whose entries it shows: `Some(None)` for all, `Some(Some(agent))`.
    fn audit_agent(&self) -> Option<Option<&str>> {
        match self {
            Virtual::Audit => Some(None),
            Virtual::AgentAudit(a) => Some(Some(&a.name)),
            _ => None,
        }
    }

    /// Who may open it: a bound agent reads its own audit file, not the whole record nor
    /// another agent's.
    pub(crate) fn may_open(&self, caller: &Caller) -> Result<()> {
        match (&caller.agent, self) {
            (Some(_), Virtual::Audit) => Err(VfsError::AccessDenied("the whole flight record")),
            (Some(mine), Virtual::AgentAudit(a)) if **mine != *a.name => {
                Err(VfsError::AccessDenied("another agent's flight record"))
            }
            _ => Ok(()),
        }
    }

    /// Reads of a file that is not a snapshot (the audit files): `None` for the others.
    pub(crate) fn read_live(
        &self,
        vfs: &Vfs,
        offset: u64,
        size: u32,
        out: &mut Vec<u8>,
    ) -> Option<Result<()>> {
        let agent = self.audit_agent()?;
        Some(
            vfs.audit_views
                .read(vfs.durable.as_ref(), agent, offset, size, out),
        )
    }

    /// The bytes of a generated file, taken at open.
    pub(crate) fn content(&self, _vfs: &Vfs) -> Result<Vec<u8>> {
        match self {
            // Read live (`read_live`), not from a snapshot.
            Virtual::Audit | Virtual::AgentAudit(_) => Ok(Vec::new()),
            Virtual::Status(a) => {
                let mut out = serde_json::to_vec_pretty(&a.status_json())
                    .map_err(|_| VfsError::Invalid("status"))?;
                out.push(b'\n');
                Ok(out)
            }
            _ => Err(VfsError::IsDir),
        }
    }
}
