//! The virtual control tree under `MNT/sys/`: generated on the fly, never stored.
//!
//! ```text
//! sys/
//! ├── agents/AGENT/status   JSON, one object
//! ├── agents/AGENT/signal   write STOP | CONT | KILL | START; read: the state
//! ├── agents/AGENT/pids     write a pid to bind it (and its descendants); read: live bound pids
//! ├── agents/AGENT/audit    this agent's flight record, JSON lines (grows; see auditfs.rs)
//! ├── audit                 the whole flight record, JSON lines (grows)
//! ├── metrics               counters and latency histograms, Prometheus text (metrics.rs)
//! ├── agents/AGENT/rollback write a checkpoint name: mem/ becomes that checkpoint
//! ├── agents/AGENT/index    JSON: the search index's state; write `rebuild` to rebuild it
//! ├── agents/AGENT/episodes every write to the episodic logs with its time, JSON lines
//! ├── agents/AGENT/prune    write a time (ns since the epoch): delete logs last written before
//! └── policy/               the loaded policy sources and `version` (policyview.rs)
//! ```

use crate::agent::Agent;
use crate::caller::Caller;
use crate::error::{Result, VfsError};
use crate::policyview::{self, AgentView};
use crate::vfs::{DirEntry, Vfs, ROOT_INO};
use agentfs_memory::{FileKind, Ino, InodeRecord};
use std::sync::Arc;

pub const SYS_INO: Ino = 2;
pub const SYS_AGENTS_INO: Ino = 3;
pub const SYS_POLICY_INO: Ino = 4;
pub const SYS_AUDIT_INO: Ino = 5;
pub const SYS_METRICS_INO: Ino = 6;
/// Per-agent virtual inodes: `VIRTUAL_BASE + index * 16 + k`, far above any stored inode.
const VIRTUAL_BASE: Ino = 1 << 48;
const PER_AGENT: Ino = 16;
const AGENT_DIR: Ino = 0;
const AGENT_STATUS: Ino = 1;
const AGENT_SIGNAL: Ino = 2;
const AGENT_PIDS: Ino = 3;
const AGENT_ROLLBACK: Ino = 4;
/// `AGENT/policy/rules` and `AGENT/policy/version` (k = 8.. is the policy views' share).
const AGENT_RULES: Ino = 8;
const AGENT_POLICY_VERSION: Ino = 9;
/// `sys/policy/version`, then source `i` (0: built-in) at `SYS_POLICY_FILES + 1 + i`.
const SYS_POLICY_FILES: Ino = VIRTUAL_BASE - (1 << 20);
const AGENT_AUDIT: Ino = 5;
/// `AGENT/mem/semantic/.search/`.
const AGENT_SEARCH_DIR: Ino = 6;
const AGENT_INDEX: Ino = 7;
const AGENT_EPISODES: Ino = 10;
const AGENT_PRUNE: Ino = 11;

/// A node of the control tree.
pub(crate) enum Virtual {
    Sys,
    Agents,
    Policy,
    AgentDir(Arc<Agent>),
    Status(Arc<Agent>),
    Signal(Arc<Agent>),
    Pids(Arc<Agent>),
    Rollback(Arc<Agent>),
    /// `sys/agents/AGENT/index`: the search index's state; `rebuild` rebuilds it.
    Index(Arc<Agent>),
    /// `sys/agents/AGENT/episodes`: the episodic timeline, JSON lines.
    Episodes(Arc<Agent>),
    /// `sys/agents/AGENT/prune`: write a time to delete the logs last written before it.
    Prune(Arc<Agent>),
    /// `sys/policy/NN-NAME`: policy source `i` (0: the built-in policy), and `version`.
    PolicySource(usize),
    PolicyVersion,
    /// A file of `AGENT/policy/`.
    AgentPolicy(Arc<Agent>, AgentView),
    /// `sys/audit`.
    Audit,
    /// `sys/agents/AGENT/audit`.
    AgentAudit(Arc<Agent>),
    /// `sys/metrics`: Prometheus text, taken at open.
    Metrics,
    /// `AGENT/mem/semantic/.search/`: lookup-only, lists nothing.
    SearchDir(Arc<Agent>),
    /// `AGENT/mem/semantic/.search/QUERY`: the ranked hits, taken at open.
    SearchQuery(Arc<Agent>, Arc<str>, Ino),
}

impl Virtual {
    pub(crate) fn of(vfs: &Vfs, ino: Ino) -> Option<Virtual> {
        match ino {
            SYS_INO => Some(Virtual::Sys),
            SYS_AGENTS_INO => Some(Virtual::Agents),
            SYS_POLICY_INO => Some(Virtual::Policy),
            SYS_POLICY_FILES => Some(Virtual::PolicyVersion),
            i if (SYS_POLICY_FILES..VIRTUAL_BASE).contains(&i) => {
                let index = (i - SYS_POLICY_FILES - 1) as usize;
                policyview::has_source(&vfs.policy.current(), index)
                    .then_some(Virtual::PolicySource(index))
            }
            SYS_AUDIT_INO => Some(Virtual::Audit),
            SYS_METRICS_INO => Some(Virtual::Metrics),
            i if i >= crate::semantic::QUERY_INO_BASE => {
                let (index, query) = vfs.query_inodes.get(i)?;
                Some(Virtual::SearchQuery(vfs.agent_by_index(index)?, query, i))
            }
            i if i >= VIRTUAL_BASE => {
                let rel = i - VIRTUAL_BASE;
                let agent = vfs.agent_by_index(rel / PER_AGENT)?;
                match rel % PER_AGENT {
                    AGENT_DIR => Some(Virtual::AgentDir(agent)),
                    AGENT_STATUS => Some(Virtual::Status(agent)),
                    AGENT_SIGNAL => Some(Virtual::Signal(agent)),
                    AGENT_PIDS => Some(Virtual::Pids(agent)),
                    AGENT_ROLLBACK => Some(Virtual::Rollback(agent)),
                    AGENT_RULES => Some(Virtual::AgentPolicy(agent, AgentView::Rules)),
                    AGENT_POLICY_VERSION => Some(Virtual::AgentPolicy(agent, AgentView::Version)),
                    AGENT_AUDIT => Some(Virtual::AgentAudit(agent)),
                    AGENT_SEARCH_DIR => Some(Virtual::SearchDir(agent)),
                    AGENT_INDEX => Some(Virtual::Index(agent)),
                    AGENT_EPISODES => Some(Virtual::Episodes(agent)),
                    AGENT_PRUNE => Some(Virtual::Prune(agent)),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    pub(crate) fn ino(&self) -> Ino {
        match self {
            Virtual::Sys => SYS_INO,
            Virtual::Agents => SYS_AGENTS_INO,
            Virtual::Policy => SYS_POLICY_INO,
            Virtual::AgentDir(a) => VIRTUAL_BASE + a.index * PER_AGENT + AGENT_DIR,
            Virtual::Status(a) => VIRTUAL_BASE + a.index * PER_AGENT + AGENT_STATUS,
            Virtual::Signal(a) => VIRTUAL_BASE + a.index * PER_AGENT + AGENT_SIGNAL,
            Virtual::Pids(a) => VIRTUAL_BASE + a.index * PER_AGENT + AGENT_PIDS,
            Virtual::Rollback(a) => VIRTUAL_BASE + a.index * PER_AGENT + AGENT_ROLLBACK,
            Virtual::Index(a) => VIRTUAL_BASE + a.index * PER_AGENT + AGENT_INDEX,
            Virtual::Episodes(a) => VIRTUAL_BASE + a.index * PER_AGENT + AGENT_EPISODES,
            Virtual::Prune(a) => VIRTUAL_BASE + a.index * PER_AGENT + AGENT_PRUNE,
            Virtual::PolicySource(i) => SYS_POLICY_FILES + 1 + *i as Ino,
            Virtual::PolicyVersion => SYS_POLICY_FILES,
            Virtual::AgentPolicy(a, v) => {
                let k = match v {
                    AgentView::Rules => AGENT_RULES,
                    AgentView::Version => AGENT_POLICY_VERSION,
                };
                VIRTUAL_BASE + a.index * PER_AGENT + k
            }
            Virtual::Audit => SYS_AUDIT_INO,
            Virtual::Metrics => SYS_METRICS_INO,
            Virtual::AgentAudit(a) => VIRTUAL_BASE + a.index * PER_AGENT + AGENT_AUDIT,
            Virtual::SearchDir(a) => search_dir_ino(a),
            Virtual::SearchQuery(_, _, ino) => *ino,
        }
    }

    fn parent(&self, vfs: &Vfs) -> Ino {
        match self {
            Virtual::Sys => ROOT_INO,
            Virtual::Agents | Virtual::Policy | Virtual::Audit | Virtual::Metrics => SYS_INO,
            Virtual::AgentDir(_) => SYS_AGENTS_INO,
            Virtual::Status(a)
            | Virtual::Signal(a)
            | Virtual::Pids(a)
            | Virtual::AgentAudit(a)
            | Virtual::Index(a)
            | Virtual::Episodes(a)
            | Virtual::Prune(a)
            | Virtual::Rollback(a) => VIRTUAL_BASE + a.index * PER_AGENT + AGENT_DIR,
            Virtual::PolicySource(_) | Virtual::PolicyVersion => SYS_POLICY_INO,
            Virtual::AgentPolicy(a, _) => vfs.policy_dir_of(a).unwrap_or(a.root),
            Virtual::SearchDir(a) => vfs.semantic_dir_of(a).unwrap_or(a.root),
            Virtual::SearchQuery(a, _, _) => search_dir_ino(a),
        }
    }

    fn kind(&self) -> FileKind {
        match self {
            Virtual::Status(_) | Virtual::Signal(_) | Virtual::Pids(_) | Virtual::Rollback(_) => {
                FileKind::File
            }
            Virtual::Sys
            | Virtual::Agents
            | Virtual::Policy
            | Virtual::AgentDir(_)
            | Virtual::SearchDir(_) => FileKind::Dir,
            _ => FileKind::File,
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
                Virtual::Signal(_)
                | Virtual::Pids(_)
                | Virtual::Rollback(_)
                | Virtual::Index(_)
                | Virtual::Prune(_) => 0o644,
                _ => 0o444,
            },
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
                (b"metrics".to_vec(), Virtual::Metrics),
            ],
            Virtual::Agents => vfs
                .agents_by_index
                .read()
                .iter()
                .map(|a| (a.name.as_bytes().to_vec(), Virtual::AgentDir(a.clone())))
                .collect(),
            Virtual::AgentDir(a) => vec![
                (b"episodes".to_vec(), Virtual::Episodes(a.clone())),
                (b"index".to_vec(), Virtual::Index(a.clone())),
                (b"prune".to_vec(), Virtual::Prune(a.clone())),
                (b"pids".to_vec(), Virtual::Pids(a.clone())),
                (b"rollback".to_vec(), Virtual::Rollback(a.clone())),
                (b"signal".to_vec(), Virtual::Signal(a.clone())),
                (b"status".to_vec(), Virtual::Status(a.clone())),
                (b"audit".to_vec(), Virtual::AgentAudit(a.clone())),
            ],
            Virtual::Policy => policyview::sys_policy_children(&vfs.policy.current()),
            _ => Vec::new(),
        }
    }

    pub(crate) fn lookup(&self, vfs: &Vfs, name: &[u8]) -> Result<Virtual> {
        if self.kind() != FileKind::Dir {
            return Err(VfsError::NotDir);
        }
        if let Virtual::SearchDir(a) = self {
            // Any UTF-8 name is a query; no name is no query.
            let query = std::str::from_utf8(name).map_err(|_| VfsError::NotFound)?;
            if query.is_empty() {
                return Err(VfsError::NotFound);
            }
            let query: Arc<str> = Arc::from(query);
            let ino = vfs.query_inodes.intern(a.index, &query);
            return Ok(Virtual::SearchQuery(a.clone(), query, ino));
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
            (b"..".to_vec(), self.parent(vfs), FileKind::Dir),
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
            (Some(_), Virtual::Metrics) => Err(VfsError::AccessDenied("every agent's metrics")),
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

    /// The agent this node belongs to (`sys/agents/AGENT/…`).
    pub(crate) fn owner(&self) -> Option<&Arc<Agent>> {
        match self {
            Virtual::AgentDir(a)
            | Virtual::Status(a)
            | Virtual::Signal(a)
            | Virtual::Pids(a)
            | Virtual::AgentPolicy(a, _)
            | Virtual::AgentAudit(a)
            | Virtual::SearchDir(a)
            | Virtual::SearchQuery(a, _, _)
            | Virtual::Index(a)
            | Virtual::Episodes(a)
            | Virtual::Prune(a)
            | Virtual::Rollback(a) => Some(a),
            _ => None,
        }
    }

    /// The agent whose control file this is, if it is a writable one.
    pub(crate) fn control_of(&self) -> Option<&Arc<Agent>> {
        match self {
            Virtual::Signal(a)
            | Virtual::Pids(a)
            | Virtual::Rollback(a)
            | Virtual::Index(a)
            | Virtual::Prune(a) => Some(a),
            _ => None,
        }
    }

    /// For a file of `AGENT/policy/`: its agent and name (writes to it are EROFS, not EPERM).
    pub(crate) fn agent_view(&self) -> Option<(&Arc<Agent>, &'static [u8])> {
        match self {
            Virtual::AgentPolicy(a, v) => Some((a, v.name())),
            _ => None,
        }
    }

    /// The bytes of a generated file, taken at open.
    pub(crate) fn content(&self, vfs: &Vfs) -> Result<Vec<u8>> {
        match self {
            // Read live (`read_live`), not from a snapshot.
            Virtual::Audit | Virtual::AgentAudit(_) => Ok(Vec::new()),
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
                status["index"] = vfs.index_status(&a.name);
                let mut out =
                    serde_json::to_vec_pretty(&status).map_err(|_| VfsError::Invalid("status"))?;
                out.push(b'\n');
                Ok(out)
            }
            Virtual::Signal(a) => Ok(format!("{}\n", a.gate.state().0).into_bytes()),
            Virtual::Episodes(a) => vfs.episodes_file(a),
            // The last prune, `LOGS BEFORE_NS AT_NS`, or nothing.
            Virtual::Prune(a) => Ok(a
                .last_prune
                .lock()
                .map(|(logs, before, at)| format!("{logs} {before} {at}\n").into_bytes())
                .unwrap_or_default()),
            Virtual::Index(a) => {
                let mut out = serde_json::to_vec(&vfs.index_status(&a.name))
                    .map_err(|_| VfsError::Invalid("index"))?;
                out.push(b'\n');
                Ok(out)
            }
            // The last rollback, `NAME TIME_NS`, or nothing.
            Virtual::Rollback(a) => Ok(a
                .last_rollback
                .lock()
                .as_ref()
                .map(|(name, at)| format!("{name} {at}\n").into_bytes())
                .unwrap_or_default()),
            Virtual::PolicySource(i) => policyview::source_text(&vfs.policy.current(), *i)
                .map(|t| t.as_bytes().to_vec())
                .ok_or(VfsError::NotFound),
            Virtual::PolicyVersion => Ok(policyview::version_line(&vfs.policy.current())),
            Virtual::AgentPolicy(a, v) => Ok(v.content(&vfs.policy.current(), a)),
            Virtual::SearchQuery(a, q, _) => vfs.search_file(&a.name, q),
            Virtual::Metrics => Ok(vfs.metrics_text().into_bytes()),
            _ => Err(VfsError::IsDir),
        }
    }
}

fn search_dir_ino(a: &Agent) -> Ino {
    VIRTUAL_BASE + a.index * PER_AGENT + AGENT_SEARCH_DIR
}
