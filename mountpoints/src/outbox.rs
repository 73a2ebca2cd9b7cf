//! The search outbox: an index update is never lost to a crash (SPEC §6).
//!
//! The Tantivy index is updated after the store commit that changed semantic memory, by
//! another thread, and commits on its own schedule. To close the gap, every store batch that
//! changes an agent's `mem/semantic/` also writes a marker, meta key `search-outbox/AGENT`, in
//! the same transaction ([`Outbox::mark`]). The marker is cleared (a compare-and-delete, so a
//! newer marker survives) only once every marked update of that agent is committed to the
//! index. A marker found at mount therefore means "this agent's index may lag its store": the
//! agent's index is rebuilt from the store in the background.
//!
//! The marker is per agent, not per update: one meta row per agent, rewritten by each
//! change, so the outbox never grows, and recovery is "reindex the agents that had updates in
//! flight". The value is a generation number; `pending` counts the marked updates not yet
//! committed to the index. A wrong guess of which generation is durable (two commits finishing
//! out of order) only leaves the marker in place: a needless reindex at the next mount, never
//! a lost update.

use agentfs_memory::search::SearchIndex;
use agentfs_memory::{Batch, Change, Durability, Store};
use parking_lot::Mutex;
#[cfg(test)]
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Meta keys of the outbox: `search-outbox/AGENT`.
pub(crate) const OUTBOX_PREFIX: &str = "search-outbox/";

fn key(agent: &str) -> String {
    format!("{OUTBOX_PREFIX}{agent}")
}

/// Index progress of one agent, for `status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct IndexProgress {
    /// Updates committed to the store but not yet to the index.
    pub pending: u64,
    /// `(files indexed, files to index)` while a rebuild runs.
    pub rebuild: Option<(u64, u64)>,
}

#[derive(Default)]
struct AgentOutbox {
    /// Marked updates not yet committed to the index (or cancelled).
    pending: u64,
    /// The generation most recently committed to the store: what a clear compares against.
    durable: Option<String>,
    rebuild: Option<(u64, u64)>,
}

pub(crate) struct Outbox {
    store: Arc<dyn Store>,
    next: AtomicU64,
    agents: Mutex<HashMap<Arc<str>, AgentOutbox>>,
}

/// One marked update on its way to the index. [`Ticket::committed`] once the store batch
/// holding its marker committed, [`Ticket::cancel`] if that batch failed, then
/// [`Ticket::send`] after the index updates it covers. A ticket dropped otherwise keeps the
/// agent's marker for this run (the next mount reindexes the agent): safe, never lossy.
pub(crate) struct Ticket {
    outbox: Arc<Outbox>,
    agent: Arc<str>,
    generation: String,
}

impl Outbox {
    pub(crate) fn new(store: Arc<dyn Store>) -> Arc<Outbox> {
        // Generations only need to differ from any left in the store by an earlier run.
        let start = crate::vfs::now_ns().max(1) as u64;
        Arc::new(Outbox {
            store,
            next: AtomicU64::new(start),
            agents: Mutex::new(HashMap::new()),
        })
    }

    /// Agents whose markers the store holds (`meta` as loaded): their index may lag.
    pub(crate) fn adopt(&self, meta: &[(String, String)]) -> Vec<Arc<str>> {
        let mut agents = self.agents.lock();
        let mut found = Vec::new();
        for (k, v) in meta {
            if let Some(agent) = k.strip_prefix(OUTBOX_PREFIX) {
                let agent: Arc<str> = agent.into();
                let a = agents.entry(agent.clone()).or_default();
                a.durable = Some(v.clone());
                found.push(agent);
            }
        }
        found
    }

    /// Adds `agent`'s marker to `batch`, which must be committed to the durable store.
    pub(crate) fn mark(self: &Arc<Self>, batch: &mut Batch, agent: &Arc<str>) -> Ticket {
        let generation = self.next.fetch_add(1, Ordering::Relaxed).to_string();
        self.agents.lock().entry(agent.clone()).or_default().pending += 1;
        batch.push(Change::SetMeta {
            key: key(agent),
            value: generation.clone(),
        });
        Ticket {
            outbox: self.clone(),
            agent: agent.clone(),
            generation,
        }
    }

    /// A ticket for work on an agent whose marker is already durable (recovery at mount).
    pub(crate) fn resume(self: &Arc<Self>, agent: &Arc<str>) -> Option<Ticket> {
        let mut agents = self.agents.lock();
        let a = agents.get_mut(agent)?;
        let generation = a.durable.clone()?;
        a.pending += 1;
        Some(Ticket {
            outbox: self.clone(),
            agent: agent.clone(),
            generation,
        })
    }

    fn finish(&self, agent: &Arc<str>) {
        let clear = {
            let mut agents = self.agents.lock();
            let Some(a) = agents.get_mut(agent) else {
                return;
            };
            a.pending = a.pending.saturating_sub(1);
            if a.pending > 0 {
                return;
            }
            a.durable.take()
        };
        let Some(value) = clear else { return };
        let mut batch = Batch::new();
        batch.push(Change::DeleteMetaIf {
            key: key(agent),
            value,
        });
        if let Err(e) = self.store.commit(batch, Durability::Process) {
            // The marker stays: the next mount reindexes this agent. Nothing is lost.
            tracing::warn!(agent = %agent, error = %e, "search outbox: marker not cleared");
        }
    }

    pub(crate) fn set_rebuild(&self, agent: &Arc<str>, progress: Option<(u64, u64)>) {
        self.agents.lock().entry(agent.clone()).or_default().rebuild = progress;
    }

    pub(crate) fn rebuilding(&self, agent: &str) -> bool {
        self.agents
            .lock()
            .get(agent)
            .is_some_and(|a| a.rebuild.is_some())
    }

    /// Index progress of one agent.
    pub(crate) fn progress_of(&self, agent: &str) -> IndexProgress {
        self.agents
            .lock()
            .get(agent)
            .map(|a| IndexProgress {
                pending: a.pending,
                rebuild: a.rebuild,
            })
            .unwrap_or_default()
    }

    /// Index progress of every agent with work in flight.
    #[cfg(test)]
    pub(crate) fn progress(&self) -> BTreeMap<Arc<str>, IndexProgress> {
        self.agents
            .lock()
            .iter()
            .map(|(name, a)| {
                (
                    name.clone(),
                    IndexProgress {
                        pending: a.pending,
                        rebuild: a.rebuild,
                    },
                )
            })
            .collect()
    }
}

impl Ticket {
    /// The store batch holding the marker committed: this generation is now the durable one.
    pub(crate) fn committed(&self) {
        if let Some(a) = self.outbox.agents.lock().get_mut(&self.agent) {
            a.durable = Some(self.generation.clone());
        }
    }

    /// The store batch failed: no marker was written and no update follows.
    pub(crate) fn cancel(self) {
        self.outbox.finish(&self.agent);
    }

    /// Call after sending this update's index ops: the marker is cleared once they are
    /// committed to the index.
    pub(crate) fn send(self, index: &SearchIndex) {
        let agent = self.agent.clone();
        let Ticket { outbox, .. } = self;
        let done = Box::new(move || outbox.finish(&agent));
        if let Err(e) = index.after_commit(done) {
            tracing::warn!(error = %e, "search outbox: the indexer is gone; the marker stays");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentfs_memory::RamStore;

    fn markers(store: &RamStore) -> Vec<(String, String)> {
        store
            .load()
            .unwrap()
            .meta
            .into_iter()
            .filter(|(k, _)| k.starts_with(OUTBOX_PREFIX))
            .collect()
    }

    fn commit(store: &RamStore, batch: Batch) {
        store.commit(batch, Durability::Process).unwrap();
    }

    #[test]
    fn marker_is_cleared_only_when_every_update_is_indexed() {
        let store = Arc::new(RamStore::new());
        let outbox = Outbox::new(store.clone());
        let index = SearchIndex::open(None).unwrap();
        let agent: Arc<str> = "a".into();

        let mut b1 = Batch::new();
        let t1 = outbox.mark(&mut b1, &agent);
        commit(&store, b1);
        t1.committed();
        let mut b2 = Batch::new();
        let t2 = outbox.mark(&mut b2, &agent);
        commit(&store, b2);
        t2.committed();
        assert_eq!(markers(&store).len(), 1);

        t1.send(&index);
        index.flush().unwrap();
        assert_eq!(markers(&store).len(), 1, "t2 is still in flight");
        assert_eq!(outbox.progress()[&agent].pending, 1);

        t2.send(&index);
        index.flush().unwrap();
        assert!(markers(&store).is_empty());
        assert_eq!(outbox.progress()[&agent].pending, 0);
    }

    #[test]
    fn a_newer_marker_survives_a_stale_clear() {
        let store = Arc::new(RamStore::new());
        let outbox = Outbox::new(store.clone());
        let agent: Arc<str> = "a".into();
        let mut b1 = Batch::new();
        let t1 = outbox.mark(&mut b1, &agent);
        commit(&store, b1);
        t1.committed();
        // A second update's marker commits, but this outbox believes t1's is the durable one
        // (the out-of-order case): the clear must not erase the newer marker.
        let mut b2 = Batch::new();
        let t2 = outbox.mark(&mut b2, &agent);
        commit(&store, b2);
        t2.cancel();
        t1.cancel();
        assert_eq!(markers(&store).len(), 1);
    }

    #[test]
    fn adopted_markers_clear_after_recovery() {
        let store = Arc::new(RamStore::new());
        let mut b = Batch::new();
        b.push(Change::SetMeta {
            key: "search-outbox/x".into(),
            value: "17".into(),
        });
        commit(&store, b);
        let outbox = Outbox::new(store.clone());
        let found = outbox.adopt(&store.load().unwrap().meta);
        assert_eq!(found, vec![Arc::<str>::from("x")]);
        let index = SearchIndex::open(None).unwrap();
        outbox.resume(&found[0]).unwrap().send(&index);
        index.flush().unwrap();
        assert!(markers(&store).is_empty());
    }
}
