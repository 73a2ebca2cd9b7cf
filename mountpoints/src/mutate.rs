//! The mutation choke point.
//!
//! Every call that changes anything enters through [`Vfs::mutate`]: it locates the target
//! (agent, memory class, path), applies the fixed rules of the tree (`guard`), asks the policy
//! hook, runs the operation, and records an audit entry. An operation can only reach the store
//! through [`Txn::commit`], which puts the audit entry into the same transaction as the change.

use crate::caller::Caller;
use crate::enforce::{policy_kind, Asker};
use crate::error::{Result, VfsError};
use crate::node::Class;
use crate::outbox::Ticket;
use crate::sysfs;
use crate::vfs::{now_ns, Vfs, ROOT_INO};
use agentfs_memory::{AuditEntry, Batch, Durability, FileKind, Ino, InodeRecord};
use agentfs_policy::{Call, FileKind as PolicyKind, Op};
use std::sync::Arc;

/// Attribute changes of a setattr call.
#[derive(Debug, Default, Clone, Copy)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
    /// Whether a regular file loses set-user-ID and set-group-ID ([`drop_suidgid`]); an
    /// explicit `mode` is applied after.
    pub kill_suidgid: KillSuidgid,
}

/// When a change clears set-user-ID and set-group-ID: on chown of a non-directory always,
/// on truncate and write when the caller lacks `CAP_FSETID` (Linux's rule). The kernel marks
/// such a direct-I/O write itself; for truncate and chown it also sends the cleared mode
/// (agentfs does not ask for `FUSE_HANDLE_KILLPRIV_V2`), and the core applies the rule on
/// its own too, so the result does not depend on the kernel asking.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum KillSuidgid {
    #[default]
    No,
    Yes,
    /// Yes unless the caller has `CAP_FSETID` (the core looks only when there is a bit to
    /// clear): for a truncate, whose kernel flag (`FATTR_KILL_SUIDGID`) fuser 0.18 does not
    /// pass on.
    UnlessCapFsetid,
}

/// The permission bits after a write, truncate or chown that drops privileges, as Linux's
/// `should_remove_suid`: set-user-ID always goes, set-group-ID only with group-exec (without
/// it, the bit marks mandatory locking and stays).
pub(crate) fn drop_suidgid(perm: u16) -> u16 {
    let mut perm = perm & !0o4000;
    if perm & 0o010 != 0 {
        perm &= !0o2000;
    }
    perm
}

/// Whether [`drop_suidgid`] changes `perm`.
pub(crate) fn has_suidgid(perm: u16) -> bool {
    drop_suidgid(perm) != perm
}

/// A timestamp to set: a given time or "now".
#[derive(Debug, Clone, Copy)]
pub enum TimeSet {
    At(i64),
    Now,
}

/// Everything that can change the tree.
#[derive(Debug)]
pub(crate) enum Mutation<'a> {
    /// Regular files and special files (FIFO, socket, devices).
    Create {
        parent: Ino,
        name: &'a [u8],
        kind: FileKind,
        mode: u32,
        rdev: u32,
    },
    Mkdir {
        parent: Ino,
        name: &'a [u8],
        mode: u32,
    },
    Symlink {
        parent: Ino,
        name: &'a [u8],
        target: &'a [u8],
    },
    Link {
        ino: Ino,
        new_parent: Ino,
        new_name: &'a [u8],
    },
    Unlink {
        parent: Ino,
        name: &'a [u8],
    },
    Rmdir {
        parent: Ino,
        name: &'a [u8],
    },
    Rename {
        parent: Ino,
        name: &'a [u8],
        new_parent: Ino,
        new_name: &'a [u8],
        flags: u32,
    },
    Write {
        ino: Ino,
        offset: u64,
        data: &'a [u8],
        append: bool,
        /// Clear set-user-ID and set-group-ID (the kernel's `FUSE_WRITE_KILL_SUIDGID`).
        kill_suidgid: bool,
    },
    SetAttr {
        ino: Ino,
        set: SetAttr,
    },
    SetXattr {
        ino: Ino,
        name: &'a [u8],
        value: &'a [u8],
        flags: i32,
    },
    RemoveXattr {
        ino: Ino,
        name: &'a [u8],
    },
}

impl Mutation<'_> {
    pub(crate) fn op(&self) -> Op {
        match self {
            Mutation::Create { kind, .. } if *kind == FileKind::File => Op::Create,
            Mutation::Create { .. } => Op::Mknod,
            Mutation::Mkdir { parent, .. } if *parent == ROOT_INO => Op::RegisterAgent,
            Mutation::Mkdir { .. } => Op::Mkdir,
            Mutation::Symlink { .. } => Op::Symlink,
            Mutation::Link { .. } => Op::Link,
            Mutation::Unlink { .. } => Op::Unlink,
            Mutation::Rmdir { .. } => Op::Rmdir,
            Mutation::Rename { .. } => Op::Rename,
            Mutation::Write { .. } => Op::Write,
            Mutation::SetAttr { set, .. } if set.size.is_some() => Op::Truncate,
            Mutation::SetAttr { .. } => Op::SetAttr,
            Mutation::SetXattr { .. } => Op::SetXattr,
            Mutation::RemoveXattr { .. } => Op::RemoveXattr,
        }
    }
}

/// What a mutation returns.
#[derive(Debug)]
pub(crate) enum Outcome {
    Attr(InodeRecord),
    Written(u32),
    Done,
}

/// Where a mutation lands.
#[derive(Debug)]
pub(crate) struct Located {
    pub agent: Option<Arc<str>>,
    /// Class of the object being created or changed.
    pub class: Class,
    /// Class of the directory a name is created in or removed from, if any.
    pub parent_class: Option<Class>,
    /// Is the object itself (not its parent) a fixed directory?
    pub structural: bool,
    /// Path from the mount root, e.g. `a/mem/semantic/x`, raw bytes.
    pub path: Vec<u8>,
    /// Kind of the existing object the call names, if it exists.
    pub kind: Option<FileKind>,
    /// Destination of a rename or link.
    pub dest: Option<Dest>,
}

impl Located {
    /// The path relative to the agent's root (`mem/semantic/x`), as the policy sees it.
    fn within_agent(path: &[u8]) -> Vec<u8> {
        match path.iter().position(|b| *b == b'/') {
            Some(i) => path[i + 1..].to_vec(),
            None => Vec::new(),
        }
    }
}

/// The new name of a rename or link.
#[derive(Debug)]
pub(crate) struct Dest {
    pub path: Vec<u8>,
    /// An object already has the new name (a rename replaces it).
    pub exists: bool,
    pub class: Class,
    pub parent_class: Class,
    pub agent: Option<Arc<str>>,
    pub structural: bool,
}

/// One audit entry on its way into the store with the change it describes.
pub(crate) struct Txn {
    pub(crate) entry: AuditEntry,
    committed: bool,
    /// How to ask the policy; `None` for calls outside every agent's tree.
    pub(crate) asker: Option<Asker>,
    /// The agent whose search-outbox marker the durable commit must carry (a change the
    /// semantic index has to follow), and the marker once committed (outbox.rs).
    outbox_for: Option<Arc<str>>,
    ticket: Option<Ticket>,
}

impl Txn {
    /// A change the daemon makes for an operator outside the choke point (a prune): recorded
    /// like any other, decided by no policy.
    pub(crate) fn operator(entry: AuditEntry) -> Txn {
        Txn {
            entry,
            committed: false,
            asker: None,
            outbox_for: None,
            ticket: None,
        }
    }

    /// Commits `batch` and this call's audit entry atomically: durable changes and the entry
    /// in one durable transaction; RAM changes into the RAM store with the entry queued for the
    /// next durable commit (working memory is recorded too, just not with the same fsync).
    pub(crate) fn commit(
        &mut self,
        vfs: &Vfs,
        class: Class,
        mut batch: Batch,
        durability: Durability,
    ) -> Result<()> {
        let entry = RECORDING.then(|| self.entry.clone());
        let ticket = match &self.outbox_for {
            Some(agent) if !class.is_volatile() => Some(vfs.outbox.mark(&mut batch, agent)),
            _ => None,
        };
        if let Err(e) = vfs.commit_batch(class, batch, durability, entry) {
            if let Some(t) = ticket {
                t.cancel();
            }
            return Err(e);
        }
        if let Some(t) = ticket {
            t.committed();
            self.outbox_for = None;
            self.ticket = Some(t);
        }
        self.committed = true;
        Ok(())
    }

    pub(crate) fn set_size(&mut self, size: u64) {
        self.entry.size = size;
    }
}

/// `mkdir AGENT/state/NAME` (snapshot) or `rmdir AGENT/state/NAME` (delete a checkpoint).
fn is_checkpoint_op(m: &Mutation<'_>, at: &Located) -> bool {
    matches!(m, Mutation::Mkdir { .. } | Mutation::Rmdir { .. })
        && at.parent_class == Some(Class::State)
}

/// The agent's cut lock, held for the whole of one mutation.
#[allow(dead_code)] // the guards are held for their Drop, never read
enum CutGuard<'a> {
    Shared(parking_lot::RwLockReadGuard<'a, ()>),
    Exclusive(parking_lot::RwLockWriteGuard<'a, ()>),
}

/// False only in the bench-only build (`--features bench-no-recorder`) that measures what
/// the flight recorder costs: never ship it.
pub(crate) const RECORDING: bool = !cfg!(feature = "bench-no-recorder");

/// BLAKE3 of a write's bytes for its audit entry; large writes are hashed on all cores.
pub(crate) fn hash_of(data: &[u8]) -> [u8; 32] {
    if data.len() >= 128 << 10 {
        *blake3::Hasher::new()
            .update_rayon(data)
            .finalize()
            .as_bytes()
    } else {
        *blake3::hash(data).as_bytes()
    }
}

/// Entries beyond this many are written in a transaction of their own instead of waiting for
/// the next commit, so a long-running writer cannot grow the queue without bound.
const MAX_PENDING_AUDIT: usize = 4096;

impl Vfs {
    pub(crate) fn queue_audit(&self, entry: AuditEntry) {
        if !RECORDING {
            return;
        }
        let full = {
            let mut q = self.pending_audit.lock();
            q.push_back(entry);
            q.len() >= MAX_PENDING_AUDIT
        };
        if full {
            if let Err(e) = self.flush_pending_audit() {
                tracing::error!(error = %e, "could not write queued audit entries");
            }
        }
    }

    /// The choke point: guard → policy → apply → record.
    pub(crate) fn mutate(&self, caller: &Caller, m: Mutation<'_>) -> Result<Outcome> {
        let op = m.op();
        let started = std::time::Instant::now();
        let located = self.locate(&m)?;
        let agent = located.agent.as_deref().and_then(|a| self.agent(a));
        let span = tracing::debug_span!(
            "mutate",
            agent = located.agent.as_deref().unwrap_or("-"),
            op = op.name(),
            path = %String::from_utf8_lossy(&located.path)
        );
        let _enter = span.enter();
        // A write's hash is left to `write_data`, which computes it beside the content scan
        // and the chunk hashes; the fallback after `apply` covers a write that never got there.
        let written = match &m {
            Mutation::Write { data, .. } if RECORDING => Some(*data),
            _ => None,
        };
        let (offset, size, data_hash) = match &m {
            Mutation::Write { offset, data, .. } => (*offset, data.len() as u64, None),
            Mutation::SetAttr { set, .. } => (0, set.size.unwrap_or(0), None),
            Mutation::Symlink { target, .. } => (0, 0, Some(*blake3::hash(target).as_bytes())),
            Mutation::SetXattr { value, .. } => (0, 0, Some(*blake3::hash(value).as_bytes())),
            _ => (0, 0, None),
        };
        let asker = located.agent.as_ref().map(|name| Asker {
            rules: self.policy.current(),
            agent_name: name.clone(),
            agent: agent.clone(),
            path: Located::within_agent(&located.path),
            target: located
                .dest
                .as_ref()
                .map(|d| Located::within_agent(&d.path)),
            uid: caller.uid,
            pid: caller.pid,
            aliases: match &m {
                Mutation::Write { ino, .. }
                | Mutation::SetAttr { ino, .. }
                | Mutation::SetXattr { ino, .. }
                | Mutation::RemoveXattr { ino, .. } => self.other_names(*ino),
                _ => Vec::new(),
            },
        });
        let mut txn = Txn {
            entry: AuditEntry {
                time: now_ns(),
                agent: located.agent.as_deref().unwrap_or("").to_string(),
                pid: caller.pid,
                uid: caller.uid,
                op: op.name().to_string(),
                path: String::from_utf8_lossy(&located.path).into_owned(),
                target: located
                    .dest
                    .as_ref()
                    .map(|d| String::from_utf8_lossy(&d.path).into_owned())
                    .unwrap_or_default(),
                offset,
                size,
                data_hash,
                ..Default::default()
            },
            committed: false,
            asker,
            outbox_for: None,
            ticket: None,
        };
        let checkpoint_op = is_checkpoint_op(&m, &located);
        if checkpoint_op {
            txn.entry.op = match m {
                Mutation::Mkdir { .. } => "snapshot",
                _ => "checkpoint-delete",
            }
            .to_string();
        }
        // The consistent cut: shared for every change of the agent's tree, exclusive for a
        // snapshot, so a checkpoint never sees a call half-applied (docs/checkpoints.md).
        let _cut = agent.as_ref().map(|a| {
            if checkpoint_op {
                CutGuard::Exclusive(a.cut.write())
            } else {
                CutGuard::Shared(a.cut.read())
            }
        });
        // Usage limits: check and change the agent's usage as one step. Taken right after the
        // cut (lock order: agent cut → agent limits → ns → nodes); per agent, and only when a quota or
        // file-count rule applies to it.
        let _limits = match (&agent, &txn.asker) {
            (Some(a), Some(asker)) if asker.rules.has_usage_limits(&a.name) => {
                Some(a.limits.lock())
            }
            _ => None,
        };
        // An operator may snapshot a killed agent (forensics); its own processes are gone.
        let killed = !(checkpoint_op && caller.agent.is_none())
            && agent
                .as_ref()
                .is_some_and(|a| a.gate.check() == agentfs_signals::Pass::Killed);
        let result = if killed {
            Err(VfsError::NotPermitted(
                "the agent is killed: an operator must write START",
            ))
        } else {
            self.guard(caller, &m, &located)
                .and_then(|()| self.ask_policy(&mut txn, &m, op, &located))
                .and_then(|()| self.guard_episodic(&m, &located))
                .and_then(|()| self.check_headroom(&m, &located))
                .and_then(|()| {
                    // `apply` consumes the mutation; keep what the index needs to know.
                    let event = crate::semantic::NsEvent::of(&m);
                    if event.is_some() && located.class == Class::Semantic {
                        txn.outbox_for = located.agent.clone();
                    }
                    let r = self.apply(caller, &mut txn, m, &located);
                    if let (Ok(_), Some(event)) = (&r, event) {
                        self.index_namespace(event, &located, txn.ticket.take());
                    }
                    r
                })
        };
        if let (Some(data), None) = (written, &txn.entry.data_hash) {
            txn.entry.data_hash = Some(hash_of(data));
        }
        if let (Some(agent), Err(VfsError::Refused(r))) = (&agent, &result) {
            if r.killed {
                // SIGPOLICY acts as KILL: bound processes get SIGKILL and working memory goes
                // too. Done here, with no node lock held (the decision ran under the file's
                // lock).
                self.signal_processes(
                    agent,
                    agentfs_signals::Signal::Policy,
                    agentfs_signals::AgentState::Killed,
                );
                if let Err(e) = self.drop_working_memory(agent) {
                    tracing::error!(error = %e, "could not drop the working memory of a killed agent");
                }
            }
        }
        if let Some(agent) = &agent {
            agent.count_op(op, result.is_ok());
        }
        self.metrics.observe(op, started.elapsed());
        match &result {
            Ok(_) => {
                if !txn.committed {
                    self.queue_audit(txn.entry);
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "refused");
                txn.entry.result = crate::errno_hint(e);
                // Whatever refused it, a name that matches a content rule is not recorded.
                let rules = self.policy.current();
                for field in [
                    &mut txn.entry.agent,
                    &mut txn.entry.path,
                    &mut txn.entry.target,
                ] {
                    *field = crate::enforce::redact(&rules, field);
                }
                self.queue_audit(txn.entry);
            }
        }
        result
    }

    fn apply(
        &self,
        caller: &Caller,
        txn: &mut Txn,
        m: Mutation<'_>,
        located: &Located,
    ) -> Result<Outcome> {
        match m {
            Mutation::Mkdir { parent, name, mode } if parent == ROOT_INO => self
                .register_agent(caller, txn, name, mode)
                .map(Outcome::Attr),
            Mutation::Mkdir { parent, name, .. } if located.parent_class == Some(Class::State) => {
                self.snapshot(caller, txn, parent, name).map(Outcome::Attr)
            }
            Mutation::Rmdir { parent, name } if located.parent_class == Some(Class::State) => self
                .delete_checkpoint(txn, parent, name)
                .map(|()| Outcome::Done),
            Mutation::Create {
                parent,
                name,
                kind,
                mode,
                rdev,
            } => self
                .create_node(caller, txn, parent, name, kind, mode, rdev, &[])
                .map(Outcome::Attr),
            Mutation::Mkdir { parent, name, mode } => self
                .create_node(caller, txn, parent, name, FileKind::Dir, mode, 0, &[])
                .map(Outcome::Attr),
            Mutation::Symlink {
                parent,
                name,
                target,
            } => self
                .create_node(
                    caller,
                    txn,
                    parent,
                    name,
                    FileKind::Symlink,
                    0o777,
                    0,
                    target,
                )
                .map(Outcome::Attr),
            Mutation::Link {
                ino,
                new_parent,
                new_name,
            } => self
                .do_link(txn, ino, new_parent, new_name)
                .map(Outcome::Attr),
            Mutation::Unlink { parent, name } => self
                .remove_entry(txn, parent, name, false)
                .map(|()| Outcome::Done),
            Mutation::Rmdir { parent, name } => self
                .remove_entry(txn, parent, name, true)
                .map(|()| Outcome::Done),
            Mutation::Rename {
                parent,
                name,
                new_parent,
                new_name,
                flags,
            } => self
                .do_rename(txn, parent, name, new_parent, new_name, flags)
                .map(|()| Outcome::Done),
            Mutation::Write {
                ino,
                offset,
                data,
                append,
                kill_suidgid,
            } => self
                .write_data(txn, ino, offset, data, append, kill_suidgid, located.class)
                .map(Outcome::Written),
            Mutation::SetAttr { ino, set } => self.set_attr(txn, ino, set).map(Outcome::Attr),
            Mutation::SetXattr {
                ino,
                name,
                value,
                flags,
            } => self
                .set_xattr(txn, ino, name, Some(value), flags)
                .map(|()| Outcome::Done),
            Mutation::RemoveXattr { ino, name } => self
                .set_xattr(txn, ino, name, None, 0)
                .map(|()| Outcome::Done),
        }
    }

    /// The names of a hard-linked file other than the one its node records, relative to the
    /// agent's root. Files with one name cost nothing.
    fn other_names(&self, ino: Ino) -> Vec<Vec<u8>> {
        let Ok(node) = self.node(ino) else {
            return Vec::new();
        };
        let (nlink, kind, primary) = {
            let n = node.read();
            (n.attr.nlink, n.attr.kind, (n.parent, n.name.clone()))
        };
        if nlink <= 1 || kind == FileKind::Dir {
            return Vec::new();
        }
        self.names_in_class(ino)
            .into_iter()
            .filter(|(dir, name, _)| (*dir, &name[..]) != (primary.0, &primary.1[..]))
            .map(|(_, _, path)| path)
            .collect()
    }

    /// Every entry naming `ino` in its memory class (links never leave it): directory, name
    /// and path relative to the agent's root. Walks the class one directory lock at a time:
    /// call it with no node lock held.
    pub(crate) fn names_in_class(&self, ino: Ino) -> Vec<(Ino, Vec<u8>, Vec<u8>)> {
        let Ok(node) = self.node(ino) else {
            return Vec::new();
        };
        let (class, agent) = {
            let n = node.read();
            (n.class, n.agent.clone())
        };
        let Some(class_name) = class
            .memory_index()
            .map(|i| crate::agent::CLASS_NAMES[i].as_bytes())
        else {
            return Vec::new();
        };
        let Some(agent) = agent.as_deref().and_then(|a| self.agent(a)) else {
            return Vec::new();
        };
        let Ok(root) = self
            .child_ino(agent.root, b"mem")
            .and_then(|m| self.child_ino(m, class_name))
        else {
            return Vec::new();
        };
        let mut found = Vec::new();
        let mut dirs: Vec<(Ino, Vec<u8>)> = vec![(root, [&b"mem/"[..], class_name].concat())];
        while let Some((dir, path)) = dirs.pop() {
            let Ok(d) = self.node(dir) else { continue };
            let entries: Vec<(Vec<u8>, Ino)> = d
                .read()
                .dir()
                .map(|e| e.names().map(|(n, i)| (n.to_vec(), i)).collect())
                .unwrap_or_default();
            for (name, child_ino) in entries {
                let child_path = [&path[..], b"/", &name].concat();
                if child_ino == ino {
                    found.push((dir, name, child_path));
                } else if self.node(child_ino).is_ok_and(|c| c.read().is_dir()) {
                    dirs.push((child_ino, child_path));
                }
            }
        }
        found
    }

    /// Mount-relative path of a node, e.g. `a/mem/semantic/x`, as raw bytes: what the policy
    /// matches (non-UTF-8 names stay distinct). Takes one node lock at a time.
    pub(crate) fn path_bytes_of(&self, ino: Ino) -> Vec<u8> {
        let mut parts: Vec<Vec<u8>> = Vec::new();
        let mut cur = ino;
        for _ in 0..4096 {
            if cur == ROOT_INO {
                break;
            }
            let Ok(node) = self.node(cur) else {
                break;
            };
            let (parent, name) = {
                let n = node.read();
                (n.parent, n.name.to_vec())
            };
            parts.push(name);
            cur = parent;
        }
        parts.reverse();
        parts.join(&b'/')
    }

    fn locate_child(&self, parent: Ino, name: &[u8]) -> Result<Located> {
        if let Some(v) = sysfs::Virtual::of(self, parent) {
            return Err(match v.agent_view() {
                Some(_) => VfsError::ReadOnly("policy/ is read-only"),
                None => VfsError::NotPermitted("sys/ is read-only"),
            });
        }
        let (parent_class, agent, structural, kind) = {
            let node = self.node(parent)?;
            let p = node.read();
            let child = p
                .dir()
                .and_then(|d| d.get(name))
                .and_then(|child| self.node(child).ok())
                .map(|c| {
                    let c = c.read();
                    (c.structural, c.attr.kind)
                });
            (
                p.class,
                p.agent.clone(),
                child.is_some_and(|c| c.0),
                child.map(|c| c.1),
            )
        };
        let agent = if parent == ROOT_INO {
            Some(Arc::from(String::from_utf8_lossy(name).as_ref()))
        } else {
            agent
        };
        let mut path = self.path_bytes_of(parent);
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(name);
        Ok(Located {
            agent,
            class: parent_class.of_child(name),
            parent_class: Some(parent_class),
            structural,
            path,
            kind,
            dest: None,
        })
    }

    fn locate_dest(&self, parent: Ino, name: &[u8]) -> Result<Dest> {
        let at = self.locate_child(parent, name)?;
        Ok(Dest {
            path: at.path,
            exists: at.kind.is_some(),
            class: at.class,
            parent_class: at.parent_class.unwrap_or(at.class),
            agent: at.agent,
            structural: at.structural,
        })
    }

    fn locate_ino(&self, ino: Ino) -> Result<Located> {
        if let Some(v) = sysfs::Virtual::of(self, ino) {
            // A file of `AGENT/policy/` is located like a stored one of class Policy, so the
            // guard refuses it (EROFS) and the refusal is recorded for its agent.
            let (agent, name) = v
                .agent_view()
                .ok_or(VfsError::NotPermitted("sys/ is read-only"))?;
            let mut path = agent.name.as_bytes().to_vec();
            path.extend_from_slice(b"/policy/");
            path.extend_from_slice(name);
            return Ok(Located {
                agent: Some(agent.name.clone()),
                class: Class::Policy,
                parent_class: Some(Class::Policy),
                structural: false,
                path,
                kind: Some(FileKind::File),
                dest: None,
            });
        }
        let (class, agent, structural, kind) = {
            let node = self.node(ino)?;
            let n = node.read();
            (n.class, n.agent.clone(), n.structural, n.attr.kind)
        };
        Ok(Located {
            agent,
            class,
            parent_class: None,
            structural,
            path: self.path_bytes_of(ino),
            kind: Some(kind),
            dest: None,
        })
    }

    fn locate(&self, m: &Mutation<'_>) -> Result<Located> {
        match *m {
            Mutation::Create { parent, name, .. }
            | Mutation::Mkdir { parent, name, .. }
            | Mutation::Symlink { parent, name, .. }
            | Mutation::Unlink { parent, name }
            | Mutation::Rmdir { parent, name } => self.locate_child(parent, name),
            Mutation::Rename {
                parent,
                name,
                new_parent,
                new_name,
                ..
            } => {
                let mut src = self.locate_child(parent, name)?;
                src.dest = Some(self.locate_dest(new_parent, new_name)?);
                Ok(src)
            }
            Mutation::Link {
                ino,
                new_parent,
                new_name,
            } => {
                let mut src = self.locate_ino(ino)?;
                src.dest = Some(self.locate_dest(new_parent, new_name)?);
                Ok(src)
            }
            Mutation::Write { ino, .. }
            | Mutation::SetAttr { ino, .. }
            | Mutation::SetXattr { ino, .. }
            | Mutation::RemoveXattr { ino, .. } => self.locate_ino(ino),
        }
    }

    /// The fixed rules of the tree, checked before the policy is asked.
    fn guard(&self, caller: &Caller, m: &Mutation<'_>, at: &Located) -> Result<()> {
        if let (Some(mine), Some(target)) = (&caller.agent, &at.agent) {
            if mine != target {
                return Err(VfsError::AccessDenied("another agent's tree"));
            }
        }
        let touches = |c: Class| {
            at.class == c
                || at.parent_class == Some(c)
                || at.dest.as_ref().is_some_and(|d| d.class == c)
        };
        if touches(Class::Policy) {
            return Err(VfsError::ReadOnly("policy/ is read-only"));
        }
        let namespace_change = matches!(
            m,
            Mutation::Create { .. }
                | Mutation::Mkdir { .. }
                | Mutation::Symlink { .. }
                | Mutation::Link { .. }
                | Mutation::Unlink { .. }
                | Mutation::Rmdir { .. }
                | Mutation::Rename { .. }
        );
        if namespace_change {
            let dest_parent = at.dest.as_ref().map(|d| d.parent_class);
            for parent_class in [at.parent_class, dest_parent].into_iter().flatten() {
                match parent_class {
                    Class::Root if !matches!(m, Mutation::Mkdir { .. }) => {
                        return Err(VfsError::NotPermitted(
                            "only agent directories live at the mount root",
                        ));
                    }
                    Class::AgentRoot | Class::MemDir => {
                        return Err(VfsError::NotPermitted(
                            "the layout of an agent directory is fixed",
                        ))
                    }
                    _ => {}
                }
            }
            let removes_name = matches!(
                m,
                Mutation::Unlink { .. } | Mutation::Rmdir { .. } | Mutation::Rename { .. }
            );
            let new_name = match m {
                Mutation::Rename { .. } | Mutation::Link { .. } => {
                    at.dest.as_ref().map(|d| &d.path)
                }
                Mutation::Create { .. } | Mutation::Mkdir { .. } | Mutation::Symlink { .. } => {
                    Some(&at.path)
                }
                _ => None,
            };
            if new_name.is_some_and(|p| crate::semantic::is_search_dir_path(p)) {
                // The name of the lookup-only search directory: a real file there would be
                // hidden by it.
                return Err(VfsError::Exists);
            }
            let replaces_name = matches!(m, Mutation::Rename { .. });
            if (removes_name && at.structural)
                || (replaces_name && at.dest.as_ref().is_some_and(|d| d.structural))
            {
                return Err(VfsError::NotPermitted(
                    "the layout of an agent directory is fixed",
                ));
            }
        }
        if is_checkpoint_op(m, at) {
            if matches!(m, Mutation::Rmdir { .. }) && caller.agent.is_some() {
                return Err(VfsError::NotPermitted(
                    "only an operator may delete a checkpoint",
                ));
            }
        } else if touches(Class::State) || touches(Class::Checkpoint) {
            // After the layout rules: `rmdir a/state` stays EPERM (row e31).
            return Err(VfsError::ReadOnly(
                "checkpoints are read-only: mkdir state/NAME takes one, rmdir deletes it",
            ));
        }
        if let Some(dest) = &at.dest {
            if dest.class != at.class || dest.agent != at.agent {
                return Err(VfsError::CrossDevice);
            }
        }
        Ok(())
    }

    /// Episodic memory is append-only for everyone, whatever the policy says. Checked after
    /// the policy, so that a policy's append-only rule on these paths (the built-in
    /// `episodic-append-only`) answers first: a violation, not just EPERM.
    /// ENOSPC for a call that adds data or names to a durable class while the data dir's
    /// filesystem is down to its reserve (space.rs). Removing, renaming and shrinking pass.
    fn check_headroom(&self, m: &Mutation<'_>, at: &Located) -> Result<()> {
        if at.class.is_volatile() {
            return Ok(());
        }
        let need = match m {
            Mutation::Write { data, .. } => data.len() as u64,
            Mutation::Create { .. }
            | Mutation::Mkdir { .. }
            | Mutation::Symlink { .. }
            | Mutation::Link { .. } => crate::space::NAME_COST,
            Mutation::SetXattr { value, .. } => crate::space::NAME_COST + value.len() as u64,
            Mutation::Unlink { .. }
            | Mutation::Rmdir { .. }
            | Mutation::Rename { .. }
            | Mutation::SetAttr { .. }
            | Mutation::RemoveXattr { .. } => return Ok(()),
        };
        self.headroom.check(need)
    }

    fn guard_episodic(&self, m: &Mutation<'_>, at: &Located) -> Result<()> {
        if at.class != Class::Episodic {
            return Ok(());
        }
        match m {
            Mutation::Unlink { .. }
            | Mutation::Rmdir { .. }
            | Mutation::Rename { .. }
            | Mutation::Link { .. } => Err(VfsError::NotPermitted("mem/episodic is append-only")),
            Mutation::SetAttr { set, .. }
                if set.mode.is_some() || set.uid.is_some() || set.gid.is_some() =>
            {
                Err(VfsError::NotPermitted("mem/episodic is append-only"))
            }
            _ => Ok(()),
        }
    }

    /// Decides every call that is not a write or a truncate (those are decided under the
    /// file's lock, on its content: `enforce.rs`).
    fn ask_policy(&self, txn: &mut Txn, m: &Mutation<'_>, op: Op, at: &Located) -> Result<()> {
        let Some(asker) = &txn.asker else {
            return Ok(());
        };
        let kind = at.kind.map(policy_kind);
        let class_index = at.class.memory_index();
        let call = match *m {
            Mutation::Write { .. } => return Ok(()),
            Mutation::SetAttr { set, .. } if set.size.is_some() => return Ok(()),
            Mutation::Create { kind, mode, .. } => Call {
                kind: Some(policy_kind(kind)),
                mode: Some(mode),
                usage: Some(asker.usage(class_index, 0, 1)),
                ..asker.call(op)
            },
            Mutation::Mkdir { mode, .. } => Call {
                kind: Some(PolicyKind::Dir),
                mode: Some(mode),
                usage: Some(asker.usage(class_index, 0, 1)),
                ..asker.call(op)
            },
            Mutation::Symlink { target, .. } => Call {
                kind: Some(PolicyKind::Symlink),
                data: Some(target),
                usage: Some(asker.usage(class_index, 0, 1)),
                ..asker.call(op)
            },
            Mutation::Link { .. } => Call {
                kind,
                usage: Some(asker.usage(class_index, 0, 1)),
                ..asker.call(op)
            },
            Mutation::Rename { flags, .. } => Call {
                kind,
                replaces: at.dest.as_ref().is_some_and(|d| d.exists)
                    || flags & libc::RENAME_EXCHANGE != 0,
                ..asker.call(op)
            },
            Mutation::Unlink { .. } | Mutation::Rmdir { .. } => Call {
                kind,
                ..asker.call(op)
            },
            Mutation::SetAttr { set, .. } => Call {
                kind,
                mode: set.mode,
                chown: set.uid.is_some() || set.gid.is_some(),
                ..asker.call(op)
            },
            Mutation::SetXattr { name, value, .. } => Call {
                kind,
                xattr_name: Some(name),
                data: Some(value),
                ..asker.call(op)
            },
            Mutation::RemoveXattr { name, .. } => Call {
                kind,
                xattr_name: Some(name),
                ..asker.call(op)
            },
        };
        self.enforce(asker, &mut txn.entry, &call, true)
    }
}
