//! Episodic memory as a timeline (SPEC §6): every write to an agent's `mem/episodic/` log is
//! kept with its time ([`agentfs_memory::Change::Append`]), listed by `sys/agents/A/episodes`
//! for `agentfs episodes`, and old logs are removed only by the operator's prune
//! (`agentfs episodes prune`, through `sys/agents/A/prune`), never by a call on the tree.

use crate::agent::Agent;
use crate::caller::Caller;
use crate::error::{Result, VfsError};
use crate::mutate::Txn;
use crate::node::Body;
use crate::vfs::{now_ns, Vfs};
use agentfs_memory::{AuditEntry, FileKind, Ino, TimeNs};
use std::sync::Arc;

/// One write to a log, as `sys/agents/A/episodes` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Episode {
    pub time: TimeNs,
    /// Relative to `mem/episodic`.
    pub path: String,
    pub offset: u64,
    pub len: u64,
    /// No time was recorded for these bytes (written before agentfs kept times, or restored
    /// by a rollback): `time` is the file's creation time.
    pub untimed: bool,
}

/// A log file of `mem/episodic`: where its name is, and its path below `mem/episodic`.
struct LogFile {
    parent: Ino,
    name: Vec<u8>,
    ino: Ino,
    path: String,
}

impl Vfs {
    /// `AGENT/mem/episodic`, if the agent has one.
    fn episodic_dir_of(&self, agent: &Agent) -> Option<Ino> {
        let mem = self.child_ino(agent.root, b"mem").ok()?;
        self.child_ino(mem, b"episodic").ok()
    }

    /// Every regular file under `agent`'s `mem/episodic`.
    fn log_files(&self, agent: &Agent) -> Vec<LogFile> {
        let mut out = Vec::new();
        let mut stack: Vec<(Ino, String)> = self
            .episodic_dir_of(agent)
            .map(|d| (d, String::new()))
            .into_iter()
            .collect();
        while let Some((dir, prefix)) = stack.pop() {
            let children: Vec<(Vec<u8>, Ino, FileKind)> = match self.node(dir) {
                Ok(node) => match node.read().dir() {
                    Some(d) => d
                        .after(0)
                        .map(|(_, name, ino, kind)| (name.to_vec(), ino, kind))
                        .collect(),
                    None => Vec::new(),
                },
                Err(_) => Vec::new(),
            };
            for (name, ino, kind) in children {
                let path = format!("{prefix}{}", String::from_utf8_lossy(&name));
                match kind {
                    FileKind::Dir => stack.push((ino, format!("{path}/"))),
                    FileKind::File => out.push(LogFile {
                        parent: dir,
                        name,
                        ino,
                        path,
                    }),
                    _ => {}
                }
            }
        }
        out
    }

    /// The writes of one log, committed and not yet committed, in offset order. Bytes no
    /// record covers (older than the records) are one untimed episode.
    fn episodes_of(&self, log: &LogFile) -> Result<Vec<Episode>> {
        let (crtime, size, pending) = {
            let node = self.node(log.ino)?;
            let n = node.read();
            let pending = match &n.body {
                Body::File(f) => f.pending().map(|p| p.appends.clone()).unwrap_or_default(),
                _ => Vec::new(),
            };
            (n.attr.crtime, n.attr.size, pending)
        };
        let mut records = self.durable.appends(log.ino)?;
        records.extend(pending);
        records.sort_by_key(|a| a.offset);
        let episode = |time, offset, len, untimed| Episode {
            time,
            path: log.path.clone(),
            offset,
            len,
            untimed,
        };
        let mut out = Vec::with_capacity(records.len() + 1);
        let first = records.first().map_or(size, |a| a.offset);
        if first > 0 {
            out.push(episode(crtime, 0, first, true));
        }
        out.extend(
            records
                .iter()
                .map(|a| episode(a.time, a.offset, a.len, false)),
        );
        Ok(out)
    }

    /// Every write to `agent`'s episodic logs, oldest first.
    pub fn episodes(&self, agent: &Agent) -> Result<Vec<Episode>> {
        let mut all = Vec::new();
        for log in self.log_files(agent) {
            all.extend(self.episodes_of(&log)?);
        }
        all.sort_by(|a, b| (a.time, &a.path, a.offset).cmp(&(b.time, &b.path, b.offset)));
        Ok(all)
    }

    /// `sys/agents/A/episodes`: one JSON object per write, oldest first.
    pub(crate) fn episodes_file(&self, agent: &Agent) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        for e in self.episodes(agent)? {
            let line = serde_json::json!({
                "time_ns": e.time,
                "path": e.path,
                "offset": e.offset,
                "len": e.len,
                "untimed": e.untimed,
            });
            out.extend_from_slice(line.to_string().as_bytes());
            out.push(b'\n');
        }
        Ok(out)
    }

    /// Deletes every log of `agent` whose last write is older than `before` (ns since the
    /// epoch); returns how many. Each deletion is recorded (`prune`). Only operators get here
    /// (control files refuse bound processes).
    pub(crate) fn prune_episodes(
        &self,
        caller: &Caller,
        agent: &Arc<Agent>,
        before: TimeNs,
    ) -> Result<usize> {
        let mut pruned = Vec::new();
        {
            // A consistent cut: a checkpoint sees a log entirely or not at all.
            let _cut = agent.cut.read();
            for log in self.log_files(agent) {
                let episodes = self.episodes_of(&log)?;
                let last = episodes.iter().map(|e| e.time).max();
                let mtime = self.node(log.ino)?.read().attr.mtime;
                if last.unwrap_or(mtime).max(mtime) >= before {
                    continue;
                }
                let mut txn = Txn::operator(AuditEntry {
                    time: now_ns(),
                    agent: agent.name.to_string(),
                    pid: caller.pid,
                    uid: caller.uid,
                    op: "prune".to_string(),
                    path: format!("{}/mem/episodic/{}", agent.name, log.path),
                    detail: format!("last write before {before}"),
                    ..Default::default()
                });
                match self.remove_entry(&mut txn, log.parent, &log.name, false) {
                    Ok(()) => pruned.push((log.parent, log.name)),
                    // Gone meanwhile (another prune): nothing to do.
                    Err(VfsError::NotFound) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let count = pruned.len();
        // After the locks: the kernel may hold these names for its TTL.
        self.invalidate(agent, pruned);
        tracing::info!(agent = %agent.name, logs = count, before, "episodic logs pruned");
        Ok(count)
    }
}
