//! Semantic memory's full-text index, fed from the core (SPEC §6).
//!
//! The core tells the index about every change that a search could see: a file committed
//! under `AGENT/mem/semantic/` (close, fsync), and names removed or moved there (unlink,
//! rmdir, rename through the choke point). The index itself lives in
//! `agentfs_memory::search`; this module only turns core events into its calls.
//!
//! Not yet durable: the update is sent after the store commit, not written to an outbox in the
//! same transaction, so a crash between the two loses the update until a rebuild.

use crate::agent::Agent;
use crate::error::{Result, VfsError};
use crate::mutate::{Located, Mutation};
use crate::node::{Body, Class};
use crate::sysfs::Virtual;
use crate::vfs::Vfs;
use agentfs_memory::search::{Hit, SearchError, SearchIndex};
use agentfs_memory::{FileKind, Ino};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// Query files `.search/QUERY` get inodes from here up, one per distinct (agent, query).
pub(crate) const QUERY_INO_BASE: Ino = 1 << 56;
/// Most hits a `.search/QUERY` file lists.
pub(crate) const QUERY_FILE_HITS: usize = 100;
/// The name of the lookup-only search directory in `AGENT/mem/semantic/`.
pub(crate) const SEARCH_NAME: &[u8] = b".search";

/// Inodes of query files. A query names a file the kernel caches by inode, so the same query
/// must keep its inode. Grows with distinct queries (a few dozen bytes each); TODO: forget
/// entries the kernel has forgotten (FUSE `forget`).
#[derive(Default)]
pub(crate) struct QueryInodes {
    inner: Mutex<QueryTable>,
}

#[derive(Default)]
struct QueryTable {
    by_query: HashMap<(u64, Arc<str>), Ino>,
    by_ino: HashMap<Ino, (u64, Arc<str>)>,
}

impl QueryInodes {
    pub(crate) fn intern(&self, agent_index: u64, query: &Arc<str>) -> Ino {
        let mut t = self.inner.lock();
        if let Some(ino) = t.by_query.get(&(agent_index, query.clone())) {
            return *ino;
        }
        let ino = QUERY_INO_BASE + t.by_ino.len() as Ino;
        t.by_query.insert((agent_index, query.clone()), ino);
        t.by_ino.insert(ino, (agent_index, query.clone()));
        ino
    }

    pub(crate) fn get(&self, ino: Ino) -> Option<(u64, Arc<str>)> {
        self.inner.lock().by_ino.get(&ino).cloned()
    }
}

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
    /// After a file's content was committed: (re)index it if it is semantic memory.
    pub(crate) fn index_committed(&self, ino: Ino) {
        let Ok(node) = self.node(ino) else { return };
        let (content, mtime) = {
            let n = node.read();
            // An unlinked file's path is gone: its index entry went with the unlink.
            if n.class != Class::Semantic || !matches!(n.body, Body::File(_)) || n.attr.nlink == 0 {
                return;
            }
            if n.attr.size > MAX_INDEXED_BYTES {
                tracing::debug!(ino, size = n.attr.size, "too large to index");
                return;
            }
            let mut buf = vec![0u8; n.attr.size as usize];
            if let Err(e) = self.fill_from_node(&n, 0, &mut buf) {
                tracing::error!(ino, error = %e, "cannot read a semantic file to index it");
                return;
            }
            (buf, n.attr.mtime)
        };
        // After the node lock is gone: the path walk takes its ancestors' locks.
        let Some((agent, rel)) = semantic_rel(&self.path_bytes_of(ino)) else {
            return;
        };
        if let Err(e) = self.search.upsert(&agent, &rel, &content, mtime) {
            tracing::error!(agent, path = rel, error = %e, "search index update lost");
        }
    }

    /// After a namespace change succeeded: drop or move what the index holds.
    pub(crate) fn index_namespace(&self, event: NsEvent, at: &Located) {
        if at.class != Class::Semantic {
            return;
        }
        if let NsEvent::Content(ino) = event {
            return self.index_committed(ino);
        }
        let Some((agent, rel)) = semantic_rel(&at.path) else {
            return;
        };
        let result = match event {
            NsEvent::Remove => self.search.delete(&agent, &rel),
            NsEvent::Content(_) => return,
            NsEvent::Rename => match at.dest.as_ref().and_then(|d| semantic_rel(&d.path)) {
                Some((_, to)) => self.search.rename(&agent, &rel, &to),
                None => self.search.delete(&agent, &rel),
            },
        };
        if let Err(e) = result {
            tracing::error!(agent, path = rel, error = %e, "search index update lost");
        }
    }

    /// Index every agent's semantic memory from the live tree (the index was lost). Reads
    /// every fact once; the indexer commits in the background.
    pub(crate) fn reindex_all(&self) {
        let agents: Vec<Arc<Agent>> = self.agents_by_index.read().clone();
        tracing::info!(agents = agents.len(), "rebuilding the search index");
        for agent in agents {
            self.reindex_agent(&agent);
        }
    }

    /// Index `agent`'s semantic memory afresh (after a rollback replaced it).
    pub(crate) fn reindex_agent(&self, agent: &Agent) {
        if let Err(e) = self.search.delete(&agent.name, "") {
            tracing::error!(agent = %agent.name, error = %e, "search index reset lost");
            return;
        }
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
                    FileKind::File => self.index_committed(ino),
                    _ => {}
                }
            }
        }
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
