//! Semantic memory's full-text index, fed from the core (SPEC §6).
//!
//! The core tells the index about every change that a search could see: a file committed
//! under `AGENT/mem/semantic/` (close, fsync), and names removed or moved there (unlink,
//! rmdir, rename through the choke point). The index itself lives in
//! `agentfs_memory::search`; this module only turns core events into its calls.
//!
//! Durable: each change's store batch carries a search-outbox marker (outbox.rs), cleared once
//! the index has committed the update, so a crash in between is caught up at the next mount.

use crate::agent::Agent;
use crate::error::{Result, VfsError};
use crate::mutate::{Located, Mutation};
use crate::node::{Body, Class};
use crate::outbox::Ticket;
use crate::sysfs::Virtual;
use crate::vfs::Vfs;
use agentfs_memory::search::{Hit, SearchError, SearchIndex};
use agentfs_memory::{FileKind, Ino};
use parking_lot::Mutex;
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;

/// Query files `.search/QUERY` get inodes from here up, one per distinct (agent, query).
pub(crate) const QUERY_INO_BASE: Ino = 1 << 56;
/// Most hits a `.search/QUERY` file lists.
pub(crate) const QUERY_FILE_HITS: usize = 100;
/// The name of the lookup-only search directory in `AGENT/mem/semantic/`.
pub(crate) const SEARCH_NAME: &[u8] = b".search";

/// Inodes of query files. A query names a file the kernel caches by inode, so the same query
/// keeps its inode while the kernel holds it; once the kernel forgets it (FUSE `forget`: its
/// lookup count is back to zero) the entry goes, so the table holds only the queries the
/// kernel still caches, not every query ever asked.
#[derive(Default)]
pub(crate) struct QueryInodes {
    inner: Mutex<QueryTable>,
}

#[derive(Default)]
struct QueryTable {
    by_query: HashMap<(u64, Arc<str>), Ino>,
    /// The query of each inode and how many lookups of it the kernel was answered.
    by_ino: HashMap<Ino, ((u64, Arc<str>), u64)>,
    /// Next inode to hand out, above [`QUERY_INO_BASE`]; never reused within a run.
    next: Ino,
}

impl QueryInodes {
    /// The inode of `query` of the agent with `agent_index`, for a lookup reply (counted).
    pub(crate) fn intern(&self, agent_index: u64, query: &Arc<str>) -> Ino {
        let mut t = self.inner.lock();
        let key = (agent_index, query.clone());
        if let Some(ino) = t.by_query.get(&key).copied() {
            if let Some((_, lookups)) = t.by_ino.get_mut(&ino) {
                *lookups += 1;
            }
            return ino;
        }
        let ino = QUERY_INO_BASE + t.next;
        t.next += 1;
        t.by_query.insert(key.clone(), ino);
        t.by_ino.insert(ino, (key, 1));
        ino
    }

    pub(crate) fn get(&self, ino: Ino) -> Option<(u64, Arc<str>)> {
        self.inner.lock().by_ino.get(&ino).map(|(k, _)| k.clone())
    }

    /// The kernel dropped `nlookup` references to `ino`.
    pub(crate) fn forget(&self, ino: Ino, nlookup: u64) {
        let mut t = self.inner.lock();
        let Some((key, lookups)) = t.by_ino.get_mut(&ino) else {
            return;
        };
        *lookups = lookups.saturating_sub(nlookup);
        if *lookups == 0 {
            let key = key.clone();
            t.by_ino.remove(&ino);
            t.by_query.remove(&key);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().by_ino.len()
    }
}

/// A background rebuild waits for the indexer after this many files (memory bound).
const REBUILD_PACE: u64 = 4096;

/// Files larger than this are not indexed: they are not "facts", and reading one whole into
/// memory on every close would stall the daemon.
pub(crate) const MAX_INDEXED_BYTES: u64 = 8 * 1024 * 1024;

/// `AGENT/mem/semantic/REL` → `(AGENT, REL)`; `None` for any other path, for the semantic
/// directory itself, and for names that are not UTF-8 (the index holds text paths).
pub(crate) fn semantic_rel(path: &[u8]) -> Option<(String, String)> {
    let path = std::str::from_utf8(path).ok()?;
    let (agent, rest) = path.split_once('/')?;
    let rel = rest.strip_prefix("mem/semantic/")?;
    (!rel.is_empty()).then(|| (agent.to_owned(), rel.to_owned()))
}

/// Is `path` (mount-relative) an agent's `mem/semantic/.search`?
pub(crate) fn is_search_dir_path(path: &[u8]) -> bool {
    let Some(slash) = path.iter().position(|b| *b == b'/') else {
        return false;
    };
    path[slash + 1..] == *b"mem/semantic/.search"
}

/// Opens the index in `dir`; a corrupt one is removed and created afresh. The flag says the
/// index is empty and must be rebuilt from the store (also when it was simply missing).
pub(crate) fn open_index(dir: &std::path::Path) -> Result<(SearchIndex, bool)> {
    let index = match SearchIndex::open(Some(dir)) {
        Ok(index) => index,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "search index unusable: rebuilding it");
            if let Err(e) = std::fs::remove_dir_all(dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the old index");
            }
            SearchIndex::open(Some(dir)).map_err(|e| VfsError::Search(e.to_string()))?
        }
    };
    let rebuild = index.num_docs() == 0;
    Ok((index, rebuild))
}

/// A namespace change the index must follow. Taken from the mutation before `apply`
/// consumes it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum NsEvent {
    /// Unlink or rmdir: the name's documents go.
    Remove,
    /// The name's documents move to the rename's destination.
    Rename,
    /// truncate(2) committed new content without a close.
    Content(Ino),
}

impl NsEvent {
    pub(crate) fn of(m: &Mutation<'_>) -> Option<NsEvent> {
        match m {
            Mutation::Unlink { .. } | Mutation::Rmdir { .. } => Some(NsEvent::Remove),
            Mutation::Rename { .. } => Some(NsEvent::Rename),
            Mutation::SetAttr { ino, set } if set.size.is_some() => Some(NsEvent::Content(*ino)),
            _ => None,
        }
    }
}

impl Vfs {
    /// After a file's content was committed: (re)index it if it is semantic memory, then let
    /// the outbox clear its marker once the index has it.
    pub(crate) fn index_committed(&self, ino: Ino, ticket: Option<Ticket>) {
        // A failure keeps the marker (the ticket is dropped): the next mount catches up.
        if self.index_file(ino) {
            if let Some(t) = ticket {
                t.send(&self.search);
            }
        }
    }

    /// Sends `ino`'s committed content to the index. False if that failed: the update is lost
    /// for this run.
    fn index_file(&self, ino: Ino) -> bool {
        let Ok(node) = self.node(ino) else {
            return true;
        };
        let (content, mtime) = {
            let n = node.read();
            // An unlinked file's path is gone: its index entry went with the unlink.
            if n.class != Class::Semantic || !matches!(n.body, Body::File(_)) || n.attr.nlink == 0 {
                return true;
            }
            if n.attr.size > MAX_INDEXED_BYTES {
                tracing::debug!(ino, size = n.attr.size, "too large to index");
                return true;
            }
            let mut buf = vec![0u8; n.attr.size as usize];
            if let Err(e) = self.fill_from_node(&n, 0, &mut buf) {
                tracing::error!(ino, error = %e, "cannot read a semantic file to index it");
                return false;
            }
            (buf, n.attr.mtime)
        };
        // After the node lock is gone: the path walk takes its ancestors' locks.
        let Some((agent, rel)) = semantic_rel(&self.path_bytes_of(ino)) else {
            return true;
        };
        match self.search.upsert(&agent, &rel, &content, mtime) {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(agent, path = rel, error = %e, "search index update lost");
                false
            }
        }
    }

    /// After a rollback: drops the removed entries of `mem/semantic` (`(path of the
    /// directory, name, is a directory)`) and indexes the copied files. False if an update
    /// failed.
    pub(crate) fn index_rollback(
        &self,
        removed: &[(Vec<u8>, Vec<u8>, bool)],
        copied: &[Ino],
    ) -> bool {
        let mut ok = true;
        for (dir, name, is_dir) in removed {
            let mut path = dir.clone();
            path.push(b'/');
            path.extend_from_slice(name);
            let Some((agent, rel)) = semantic_rel(&path) else {
                continue;
            };
            let result = if *is_dir {
                self.search.delete(&agent, &rel)
            } else {
                self.search.delete_file(&agent, &rel)
            };
            if let Err(e) = result {
                tracing::error!(agent, path = rel, error = %e, "search index update lost");
                ok = false;
            }
        }
        // On all cores: reading the restored files back is most of a rollback's time after
        // its commit, and it still runs on the request's thread (the rollback returns once
        // the index has every update queued, in order before any later write of the agent).
        ok & copied
            .par_iter()
            .map(|ino| self.index_file(*ino))
            .reduce(|| true, |a, b| a && b)
    }

    /// After a namespace change succeeded: drop or move what the index holds.
    pub(crate) fn index_namespace(&self, event: NsEvent, at: &Located, ticket: Option<Ticket>) {
        if at.class != Class::Semantic {
            return;
        }
        if let NsEvent::Content(ino) = event {
            return self.index_committed(ino, ticket);
        }
        let Some((agent, rel)) = semantic_rel(&at.path) else {
            if let Some(t) = ticket {
                t.send(&self.search);
            }
            return;
        };
        // Only a directory's events need the indexer to look for documents (and commit
        // first); a file's is one key. An rmdir'd directory was empty: nothing to drop.
        let dir = at.kind == Some(FileKind::Dir);
        let result = match (event, dir) {
            (NsEvent::Remove, true) => Ok(()),
            (NsEvent::Remove, false) => self.search.delete_file(&agent, &rel),
            (NsEvent::Content(_), _) => return,
            (NsEvent::Rename, _) => match at.dest.as_ref().and_then(|d| semantic_rel(&d.path)) {
                Some((_, to)) if dir => self.search.rename(&agent, &rel, &to),
                Some((_, to)) => self.search.rename_file(&agent, &rel, &to),
                None if dir => self.search.delete(&agent, &rel),
                None => self.search.delete_file(&agent, &rel),
            },
        };
        match result {
            Ok(()) => {
                if let Some(t) = ticket {
                    t.send(&self.search);
                }
            }
            Err(e) => tracing::error!(agent, path = rel, error = %e, "search index update lost"),
        }
    }

    /// Brings the index up to date after mount, on a background thread (the mount serves
    /// meanwhile; `status` shows progress): every agent if the index was missing or corrupt
    /// (`all`), else the agents whose outbox markers say updates were in flight at a crash.
    pub(crate) fn start_index_recovery(&self, all: bool) {
        let agents: Vec<Arc<Agent>> = if all {
            self.agents_by_index.read().clone()
        } else {
            let lagging = std::mem::take(&mut *self.index_recovery.lock());
            let (live, gone): (Vec<_>, Vec<_>) = lagging
                .into_iter()
                .partition(|name| self.agent(name).is_some());
            // An agent that no longer exists has nothing to index: drop its marker.
            for name in gone {
                if let Some(t) = self.outbox.resume(&name) {
                    t.cancel();
                }
            }
            live.iter().filter_map(|name| self.agent(name)).collect()
        };
        if agents.is_empty() {
            return;
        }
        // Mark every agent first (one batch): a crash during the rebuild resumes it.
        let tickets = if all {
            match self.mark_for_rebuild(&agents) {
                Ok(tickets) => tickets,
                Err(e) => {
                    tracing::error!(error = %e, "search index rebuild not started");
                    return;
                }
            }
        } else {
            agents.iter().map(|a| self.outbox.resume(&a.name)).collect()
        };
        self.spawn_reindex(agents.into_iter().zip(tickets).collect());
    }

    /// `sys/agents/AGENT/index` ← `rebuild` (`agentfs reindex`): rebuild one agent's index
    /// from the store in the background. EBUSY while one is running.
    pub(crate) fn request_reindex(&self, agent: &Arc<Agent>) -> Result<()> {
        if self.outbox.rebuilding(&agent.name) {
            return Err(VfsError::Busy("a rebuild of this agent's index is running"));
        }
        let ticket = self
            .mark_for_rebuild(std::slice::from_ref(agent))?
            .pop()
            .flatten();
        self.spawn_reindex(vec![(agent.clone(), ticket)]);
        Ok(())
    }

    fn spawn_reindex(&self, work: Vec<(Arc<Agent>, Option<Ticket>)>) {
        // Shown as rebuilding from now on, not from when the thread gets to the agent.
        for (agent, _) in &work {
            self.outbox.set_rebuild(&agent.name, Some((0, 0)));
        }
        let vfs = self.me.clone();
        let spawned = std::thread::Builder::new()
            .name("agentfs-reindex".into())
            .spawn(move || {
                for (agent, ticket) in work {
                    let Some(vfs) = vfs.upgrade() else { return };
                    vfs.reindex_agent(&agent, ticket, true);
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the search index rebuild");
        }
    }

    /// The `index` object of an agent's status: `ready`, `rebuilding` (with progress) or
    /// `catching-up` (updates committed to the store, not yet to the index), and the files
    /// not indexed because they are not text.
    pub(crate) fn index_status(&self, agent: &str) -> serde_json::Value {
        let progress = self.outbox.progress_of(agent);
        let state = match (&progress.rebuild, progress.pending) {
            (Some(_), _) => "rebuilding",
            (None, 0) => "ready",
            (None, _) => "catching-up",
        };
        let skipped: Vec<String> = self
            .search
            .skipped()
            .into_iter()
            .filter(|(a, _)| a == agent)
            .map(|(_, p)| p)
            .collect();
        serde_json::json!({
            "state": state,
            "pending": progress.pending,
            "rebuild": progress.rebuild.map(|(done, total)| serde_json::json!({
                "done": done,
                "total": total,
            })),
            "skipped_binary": skipped,
        })
    }

    /// One durable batch marking every agent of `agents` (outbox.rs).
    fn mark_for_rebuild(&self, agents: &[Arc<Agent>]) -> Result<Vec<Option<Ticket>>> {
        let mut batch = agentfs_memory::Batch::new();
        let tickets: Vec<Ticket> = agents
            .iter()
            .map(|a| self.outbox.mark(&mut batch, &a.name))
            .collect();
        if let Err(e) = self
            .durable
            .commit(batch, agentfs_memory::Durability::Process)
        {
            for t in tickets {
                t.cancel();
            }
            return Err(e.into());
        }
        Ok(tickets
            .into_iter()
            .map(|t| {
                t.committed();
                Some(t)
            })
            .collect())
    }

    /// Index `agent`'s semantic memory afresh from the store (a rollback replaced it, the
    /// index was lost, an operator asked). Reports progress to `status` as it goes.
    ///
    /// `paced` (a background rebuild) waits for the indexer every [`REBUILD_PACE`] files, so
    /// the texts waiting for it stay bounded whatever the agent's size; a rollback, which
    /// runs on the caller's thread, does not wait.
    pub(crate) fn reindex_agent(&self, agent: &Agent, ticket: Option<Ticket>, paced: bool) {
        let started = std::time::Instant::now();
        let files = self.semantic_files(agent);
        let total = files.len() as u64;
        self.outbox.set_rebuild(&agent.name, Some((0, total)));
        if let Err(e) = self.search.delete(&agent.name, "") {
            tracing::error!(agent = %agent.name, error = %e, "search index reset lost");
            self.outbox.set_rebuild(&agent.name, None);
            return;
        }
        let mut all_sent = true;
        for (done, ino) in files.into_iter().enumerate() {
            all_sent &= self.index_file(ino);
            let done = done as u64 + 1;
            if done.is_multiple_of(256) || done == total {
                self.outbox.set_rebuild(&agent.name, Some((done, total)));
            }
            if done.is_multiple_of(10_000) {
                tracing::info!(agent = %agent.name, done, total, "rebuilding the search index");
            }
            if paced && done.is_multiple_of(REBUILD_PACE) {
                if let Err(e) = self.search.flush() {
                    tracing::error!(agent = %agent.name, error = %e, "search index rebuild stopped");
                    break;
                }
            }
        }
        if let (true, Some(t)) = (all_sent, ticket) {
            t.send(&self.search);
        }
        self.outbox.set_rebuild(&agent.name, None);
        tracing::info!(
            agent = %agent.name,
            files = total,
            ms = started.elapsed().as_millis() as u64,
            "search index rebuilt"
        );
    }

    /// Every regular file under `agent`'s `mem/semantic`, depth first.
    fn semantic_files(&self, agent: &Agent) -> Vec<Ino> {
        let mut files = Vec::new();
        let mut stack: Vec<Ino> = self.semantic_dir_of(agent).into_iter().collect();
        while let Some(dir) = stack.pop() {
            let children: Vec<(Ino, FileKind)> = match self.node(dir) {
                Ok(node) => match node.read().dir() {
                    Some(d) => d.after(0).map(|(_, _, ino, kind)| (ino, kind)).collect(),
                    None => Vec::new(),
                },
                Err(_) => Vec::new(),
            };
            for (ino, kind) in children {
                match kind {
                    FileKind::Dir => stack.push(ino),
                    FileKind::File => files.push(ino),
                    _ => {}
                }
            }
        }
        files
    }

    /// The best `limit` hits of `query` among `agent`'s semantic memory.
    pub fn search(
        &self,
        agent: &str,
        query: &str,
        limit: usize,
    ) -> std::result::Result<Vec<Hit>, SearchError> {
        self.search.search(agent, query, limit)
    }

    /// `.search/QUERY` as read: `score<TAB>path<TAB>snippet` lines, best first, or one
    /// `error: …` line for a query that does not parse (so that `cat` shows why).
    pub(crate) fn search_file(&self, agent: &str, query: &str) -> Result<Vec<u8>> {
        match self.search.search(agent, query, QUERY_FILE_HITS) {
            Ok(hits) => Ok(hits
                .iter()
                .map(|h| format!("{:.4}\t{}\t{}\n", h.score, h.path, h.snippet))
                .collect::<String>()
                .into_bytes()),
            Err(SearchError::Query(why)) => Ok(format!("error: {}\n", one_line(&why)).into_bytes()),
            Err(e) => Err(VfsError::Search(e.to_string())),
        }
    }

    /// `AGENT/mem/semantic`, if the agent has one.
    pub(crate) fn semantic_dir_of(&self, agent: &Agent) -> Option<Ino> {
        let mem = {
            let root = self.node(agent.root).ok()?;
            let r = root.read();
            r.dir()?.get(b"mem")?
        };
        let node = self.node(mem).ok()?;
        let m = node.read();
        m.dir()?.get(b"semantic")
    }

    /// Lookup of `.search` in a directory: the search directory if `dir` is an agent's
    /// `mem/semantic` itself.
    pub(crate) fn lookup_search_dir(&self, agent: Option<&str>, dir: Ino) -> Option<Ino> {
        let agent = self.agent(agent?)?;
        (self.semantic_dir_of(&agent)? == dir).then(|| Virtual::SearchDir(agent).ino())
    }

    /// FUSE `forget`: the kernel dropped `nlookup` references to `ino`. Only query files keep
    /// per-inode state that can go; every other inode lives as long as its file.
    pub fn forget(&self, ino: Ino, nlookup: u64) {
        if ino >= QUERY_INO_BASE {
            self.query_inodes.forget(ino, nlookup);
        }
    }

    /// Wait until every update sent so far is searchable (tests, `agentfs search`).
    pub fn flush_search(&self) -> std::result::Result<(), SearchError> {
        self.search.flush()
    }
}

fn one_line(s: &str) -> String {
    s.split(char::is_whitespace)
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_inodes_live_while_the_kernel_holds_them() {
        let t = QueryInodes::default();
        let cat: Arc<str> = "cat".into();
        let dog: Arc<str> = "dog".into();
        let a = t.intern(0, &cat);
        assert_eq!(t.intern(0, &cat), a, "same query, same inode");
        let b = t.intern(0, &dog);
        assert_ne!(a, b);
        assert_ne!(
            t.intern(1, &cat),
            a,
            "another agent's query is another file"
        );
        assert_eq!(t.len(), 3);
        // Two lookups of "cat": one forget of one reference keeps it.
        t.forget(a, 1);
        assert_eq!(t.get(a), Some((0, cat.clone())));
        t.forget(a, 1);
        assert_eq!(t.get(a), None);
        assert_eq!(t.len(), 2);
        // Asked again: a new inode, never one still in use.
        let a2 = t.intern(0, &cat);
        assert!(a2 != a && a2 != b);
        t.forget(b, 5);
        t.forget(b, 1);
        assert_eq!(t.get(b), None);
    }
}
