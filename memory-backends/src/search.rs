//! Full-text index of semantic memory (SPEC §6): every committed file under an agent's
//! `mem/semantic/` is one Tantivy document.
//!
//! Design:
//! * The index is derived data: it lives in its own directory under the data dir (never under
//!   the mountpoint) and can be rebuilt from the store.
//! * One indexer thread owns the single [`IndexWriter`] (Tantivy allows only one). Callers send
//!   it [`Op`]s over a channel and never block on indexing; it applies whatever has queued up and
//!   commits once per batch, so a burst of writes costs one commit, not one per file.
//! * After every commit the indexer reloads the shared [`IndexReader`] itself (manual reload
//!   policy), so a committed update is searchable as soon as the batch commits: with
//!   [`BATCH_WINDOW`] of 100 ms that is well within the 1 s the spec allows.
//! * Every search is ANDed with an exact match on the agent: an agent only ever finds its own
//!   facts, whatever the query text says (`agent:` is not a field the query parser knows).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tantivy::collector::TopDocs;
use tantivy::directory::MmapDirectory;
use tantivy::query::{BooleanQuery, Occur, Query, QueryParser, TermQuery};
use tantivy::query_grammar::{UserInputAst, UserInputLeaf};
use tantivy::schema::{
    Field, IndexRecordOption, Schema, Value, FAST, INDEXED, STORED, STRING, TEXT,
};
use tantivy::snippet::SnippetGenerator;
use tantivy::{doc, Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

/// How long the indexer keeps collecting ops after the first one before it commits. Short
/// enough for the 1 s searchability target, long enough to batch a burst of writes.
pub const BATCH_WINDOW: Duration = Duration::from_millis(100);
/// Most ops applied in one commit, so a flood still becomes visible in bounded time.
const MAX_BATCH: usize = 10_000;
/// Memory of the single indexing thread (Tantivy's minimum is 15 MB).
const WRITER_MEMORY: usize = 32 * 1024 * 1024;
/// Longest snippet, in characters.
const SNIPPET_CHARS: usize = 160;
/// Every this many commits the indexer prunes the directory's mmap cache (see
/// [`Indexer::prune_mmap_cache`]).
const PRUNE_MMAP_CACHE_EVERY: u64 = 64;

/// Why the index could not do something.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// The query text is not valid Tantivy query syntax. The string says why, for the user.
    #[error("query does not parse: {0}")]
    Query(String),
    /// Tantivy failed (I/O, corrupt index, …).
    #[error("search index: {0}")]
    Index(#[from] tantivy::TantivyError),
    /// The index directory could not be opened.
    #[error("search index directory: {0}")]
    Directory(String),
    /// The indexer thread is gone (it panicked or the index was shut down).
    #[error("search indexer is not running")]
    Closed,
}

/// One search result.
#[derive(Clone, Debug, PartialEq)]
pub struct Hit {
    pub score: f32,
    /// Relative to the agent's `mem/semantic`, e.g. `notes/cats`.
    pub path: String,
    /// One line of the content around the matched words.
    pub snippet: String,
}

/// What [`SearchIndex::upsert`] did with a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Indexed {
    /// Queued for indexing.
    Queued,
    /// Not UTF-8 text: not indexed (and any older text version removed from the index).
    SkippedBinary,
}

/// Work for the indexer thread.
enum Op {
    /// Index the file's latest content, taken from [`Pending`] when the op is applied (none
    /// there: a later op already took it, or dropped it).
    Upsert {
        agent: String,
        path: String,
        /// Which queued text this is: one queued after a later delete or rename of the same
        /// file has a newer generation, and is that op's to apply, not this one's.
        generation: u64,
    },
    /// Index this content (a pending update flushed ahead of a rename of its file).
    Put {
        agent: String,
        path: String,
        text: String,
        mtime: i64,
    },
    /// One file's document, or with `subtree` everything at or under `path`.
    Delete {
        agent: String,
        path: String,
        subtree: bool,
    },
    /// One file's document, or with `subtree` a directory's.
    Rename {
        agent: String,
        from: String,
        to: String,
        subtree: bool,
    },
    /// Reply once everything sent before this is committed and searchable.
    Flush(Sender<()>),
    /// Run once everything sent before this is committed (the outbox clears its marker).
    AfterCommit(AfterCommit),
}

/// Work to run on the indexer thread once the updates sent before it are committed.
pub type AfterCommit = Box<dyn FnOnce() + Send>;

/// The latest content of each file whose [`Op::Upsert`] is queued, by document key.
///
/// Updates of one file coalesce: while its upsert waits in the queue, a newer version just
/// replaces the text here, so a file rewritten a thousand times while the indexer is behind
/// costs one queue entry and one text, and the memory held is bounded by the number of
/// distinct files waiting, not by the number of writes. An op that removes or moves a file
/// takes its pending text out first (under the same lock as its send), so a queued upsert
/// never applies content across a later delete or rename.
type Pending = Arc<Mutex<PendingTexts>>;

#[derive(Default)]
struct PendingTexts {
    /// Document key → (text, mtime, generation of the queued upsert that will take it).
    texts: HashMap<String, (String, i64, u64)>,
    next_generation: u64,
}

#[derive(Clone, Copy)]
struct Fields {
    /// `agent\0path`: the unique id of a document, for deletes.
    key: Field,
    agent: Field,
    path: Field,
    content: Field,
    mtime: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let key = b.add_text_field("key", STRING);
    let agent = b.add_text_field("agent", STRING | STORED);
    // Tokenized so that `path:notes` finds everything under `notes/`.
    let path = b.add_text_field("path", TEXT | STORED);
    let content = b.add_text_field("content", TEXT | STORED);
    let mtime = b.add_i64_field("mtime", INDEXED | STORED | FAST);
    (
        b.build(),
        Fields {
            key,
            agent,
            path,
            content,
            mtime,
        },
    )
}

fn key(agent: &str, path: &str) -> String {
    format!("{agent}\0{path}")
}

/// The full-text index of every agent's semantic memory.
pub struct SearchIndex {
    index: Index,
    reader: IndexReader,
    fields: Fields,
    tx: Mutex<Option<Sender<Op>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Files skipped because they are not text, `(agent, path)`: reported by `status`.
    skipped: Arc<Mutex<BTreeSet<(String, String)>>>,
    pending: Pending,
}

impl SearchIndex {
    /// Open (or create) the index in `dir`; `None` keeps it in memory (RAM stores, tests).
    pub fn open(dir: Option<&Path>) -> Result<SearchIndex, SearchError> {
        let (schema, fields) = schema();
        let mut mmap_dir = None;
        let index = match dir {
            None => Index::create_in_ram(schema),
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| SearchError::Directory(format!("{}: {e}", dir.display())))?;
                let mmap = MmapDirectory::open(dir)
                    .map_err(|e| SearchError::Directory(format!("{}: {e}", dir.display())))?;
                // A handle on the same directory (it is shared, not copied) for the pruning.
                mmap_dir = Some(mmap.clone());
                Index::open_or_create(mmap, schema)?
            }
        };
        let writer: IndexWriter = index.writer_with_num_threads(1, WRITER_MEMORY)?;
        // Manual: the indexer reloads after each commit, so visibility does not depend on a
        // file watcher's timing.
        let reader: IndexReader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        let (tx, rx) = mpsc::channel();
        let pending = Pending::default();
        let worker = Indexer {
            writer,
            reader: Clone::clone(&reader),
            fields,
            uncommitted: HashMap::new(),
            reset: BTreeSet::new(),
            pending: pending.clone(),
            mmap_dir,
            commits: 0,
        };
        let thread = std::thread::Builder::new()
            .name("agentfs-indexer".into())
            .spawn(move || worker.run(rx))
            .map_err(|e| SearchError::Directory(format!("cannot start indexer: {e}")))?;
        Ok(SearchIndex {
            index,
            reader,
            fields,
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            skipped: Arc::default(),
            pending,
        })
    }

    fn send(&self, op: Op) -> Result<(), SearchError> {
        match &*self.tx.lock() {
            Some(tx) => tx.send(op).map_err(|_| SearchError::Closed),
            None => Err(SearchError::Closed),
        }
    }

    /// Index (or re-index) a file's content. Non-UTF-8 content is not indexed.
    pub fn upsert(
        &self,
        agent: &str,
        path: &str,
        content: &[u8],
        mtime: i64,
    ) -> Result<Indexed, SearchError> {
        let (agent, path) = (agent.to_owned(), path.to_owned());
        let mut pending = self.pending.lock();
        match std::str::from_utf8(content) {
            Ok(text) => {
                self.skipped.lock().remove(&(agent.clone(), path.clone()));
                let k = key(&agent, &path);
                if let Some(waiting) = pending.texts.get_mut(&k) {
                    // Its upsert is still queued: it will take this newer text.
                    waiting.0 = text.to_owned();
                    waiting.1 = mtime;
                } else {
                    pending.next_generation += 1;
                    let generation = pending.next_generation;
                    pending
                        .texts
                        .insert(k, (text.to_owned(), mtime, generation));
                    self.send(Op::Upsert {
                        agent,
                        path,
                        generation,
                    })?;
                }
                Ok(Indexed::Queued)
            }
            Err(_) => {
                tracing::debug!(agent, path, "not UTF-8: not indexed");
                self.skipped.lock().insert((agent.clone(), path.clone()));
                pending.texts.remove(&key(&agent, &path));
                // A binary file that replaced a text one must not keep its old hits.
                self.send(Op::Delete {
                    agent,
                    path,
                    subtree: false,
                })?;
                Ok(Indexed::SkippedBinary)
            }
        }
    }

    /// Remove everything at or under `path` (a directory; `""`: all of the agent's facts)
    /// from the index. A non-empty `path` makes the indexer commit first (it has to find the
    /// documents): use [`SearchIndex::delete_file`] for one file.
    pub fn delete(&self, agent: &str, path: &str) -> Result<(), SearchError> {
        self.forget_skipped(agent, path);
        let mut pending = self.pending.lock();
        let prefix = format!("{agent}\0");
        pending
            .texts
            .retain(|k, _| !k.strip_prefix(&prefix).is_some_and(|p| under(p, path)));
        self.send(Op::Delete {
            agent: agent.to_owned(),
            path: path.to_owned(),
            subtree: true,
        })
    }

    /// Remove one file's document (cheap: no commit of its own).
    pub fn delete_file(&self, agent: &str, path: &str) -> Result<(), SearchError> {
        self.forget_skipped(agent, path);
        let mut pending = self.pending.lock();
        pending.texts.remove(&key(agent, path));
        self.send(Op::Delete {
            agent: agent.to_owned(),
            path: path.to_owned(),
            subtree: false,
        })
    }

    fn forget_skipped(&self, agent: &str, path: &str) {
        self.skipped
            .lock()
            .retain(|(a, p)| !(a == agent && under(p, path)));
    }

    /// Move a directory's files from `from` to `to` within one agent (the indexer commits
    /// first, to find them).
    pub fn rename(&self, agent: &str, from: &str, to: &str) -> Result<(), SearchError> {
        self.move_skipped(agent, from, to);
        let mut pending = self.pending.lock();
        self.settle_for_rename(&mut pending, agent, from, to, true)?;
        self.send(Op::Rename {
            agent: agent.to_owned(),
            from: from.to_owned(),
            to: to.to_owned(),
            subtree: true,
        })
    }

    /// Move one file's document (cheap: no commit of its own).
    pub fn rename_file(&self, agent: &str, from: &str, to: &str) -> Result<(), SearchError> {
        self.move_skipped(agent, from, to);
        let mut pending = self.pending.lock();
        self.settle_for_rename(&mut pending, agent, from, to, false)?;
        self.send(Op::Rename {
            agent: agent.to_owned(),
            from: from.to_owned(),
            to: to.to_owned(),
            subtree: false,
        })
    }

    /// Before a rename is queued: the pending texts of what moves are sent ahead of it (the
    /// rename moves documents), and those of what it replaces are dropped.
    fn settle_for_rename(
        &self,
        pending: &mut PendingTexts,
        agent: &str,
        from: &str,
        to: &str,
        subtree: bool,
    ) -> Result<(), SearchError> {
        let prefix = format!("{agent}\0");
        let matching = |p: &PendingTexts, base: &str| -> Vec<String> {
            p.texts
                .keys()
                .filter(|k| {
                    k.strip_prefix(&prefix).is_some_and(|rel| {
                        if subtree {
                            under(rel, base)
                        } else {
                            rel == base
                        }
                    })
                })
                .cloned()
                .collect()
        };
        for k in matching(pending, from) {
            if let Some((text, mtime, _)) = pending.texts.remove(&k) {
                let path = k[prefix.len()..].to_owned();
                self.send(Op::Put {
                    agent: agent.to_owned(),
                    path,
                    text,
                    mtime,
                })?;
            }
        }
        for k in matching(pending, to) {
            pending.texts.remove(&k);
        }
        Ok(())
    }

    fn move_skipped(&self, agent: &str, from: &str, to: &str) {
        let mut skipped = self.skipped.lock();
        let moved: Vec<_> = skipped
            .iter()
            .filter(|(a, p)| a == agent && under(p, from))
            .cloned()
            .collect();
        for (a, p) in moved {
            skipped.remove(&(a.clone(), p.clone()));
            skipped.insert((a, format!("{to}{}", &p[from.len()..])));
        }
    }

    /// Block until everything sent so far is committed and searchable.
    pub fn flush(&self) -> Result<(), SearchError> {
        let (tx, rx) = mpsc::channel();
        self.send(Op::Flush(tx))?;
        rx.recv().map_err(|_| SearchError::Closed)
    }

    /// Runs `done` on the indexer thread once every update sent before it is committed to the
    /// index on disk (not only searchable). If the indexer is gone, `done` never runs.
    pub fn after_commit(&self, done: AfterCommit) -> Result<(), SearchError> {
        self.send(Op::AfterCommit(done))
    }

    /// Files not indexed because they are not text, as `(agent, path)`.
    pub fn skipped(&self) -> Vec<(String, String)> {
        self.skipped.lock().iter().cloned().collect()
    }

    /// Number of indexed files of all agents (committed ones only).
    pub fn num_docs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// The best `limit` hits for `query` among `agent`'s facts only.
    pub fn search(&self, agent: &str, query: &str, limit: usize) -> Result<Vec<Hit>, SearchError> {
        let f = self.fields;
        let mut parser = QueryParser::for_index(&self.index, vec![f.content, f.path]);
        // "cat dog" means both words, as in a web search engine; OR must be said.
        parser.set_conjunction_by_default();
        let ast = tantivy::query_grammar::parse_query(query)
            .map_err(|_| SearchError::Query(format!("syntax error in {query:?}")))?;
        let user = parser
            .build_query_from_user_input_ast(lift_negations(ast, true))
            .map_err(|e| SearchError::Query(e.to_string()))?;
        let only_agent = TermQuery::new(
            Term::from_field_text(f.agent, agent),
            IndexRecordOption::Basic,
        );
        let restricted = BooleanQuery::new(vec![
            (Occur::Must, user.box_clone()),
            (Occur::Must, Box::new(only_agent) as Box<dyn Query>),
        ]);
        let searcher = self.reader.searcher();
        let top = searcher
            .search(
                &restricted,
                &TopDocs::with_limit(limit.max(1)).order_by_score(),
            )
            .map_err(|e| query_fault(e, query))?;
        let mut snippets = SnippetGenerator::create(&searcher, &*user, f.content)
            .map_err(|e| query_fault(e, query))?;
        snippets.set_max_num_chars(SNIPPET_CHARS);
        let mut hits = Vec::with_capacity(top.len());
        for (score, addr) in top {
            let doc: TantivyDocument = searcher.doc(addr)?;
            let text = |field| doc.get_first(field).and_then(|v| v.as_str()).unwrap_or("");
            let content = text(f.content);
            let mut snippet = snippets.snippet(content).fragment().to_owned();
            if snippet.is_empty() {
                // Matched on the path only: show the start of the content.
                snippet = content.chars().take(SNIPPET_CHARS).collect();
            }
            hits.push(Hit {
                score,
                path: text(f.path).to_owned(),
                snippet: one_line(&snippet),
            });
        }
        Ok(hits)
    }

    /// Stop the indexer after it has committed everything queued.
    pub fn shutdown(&self) {
        drop(self.tx.lock().take());
        if let Some(t) = self.thread.lock().take() {
            if t.join().is_err() {
                tracing::error!("search indexer panicked");
            }
        }
    }
}

impl Drop for SearchIndex {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// An error of running a parsed query. Our schema is fixed, so a schema error, an unknown
/// field or an invalid argument is the query's fault (`path:*` asks whether a field exists,
/// which only a fast field can answer; `nofield:*` names no field): a query error, not an
/// index failure (which the mount answers EIO).
fn query_fault(e: tantivy::TantivyError, query: &str) -> SearchError {
    match e {
        tantivy::TantivyError::SchemaError(why) | tantivy::TantivyError::InvalidArgument(why) => {
            SearchError::Query(format!("{why} (in {query:?})"))
        }
        tantivy::TantivyError::FieldNotFound(field) => {
            SearchError::Query(format!("there is no field `{field}` (in {query:?})"))
        }
        e => SearchError::Index(e),
    }
}

/// Tantivy parses `cat AND NOT dog` as `+cat +(-dog)`: a required clause with only negative
/// parts, which matches nothing. Such a clause's negations are lifted into its parent, which
/// is how `cat -dog` is parsed. A query with only negative parts (`NOT dog`) means "every fact
/// but those": at the top, `*` is added as its positive part.
fn lift_negations(ast: UserInputAst, top: bool) -> UserInputAst {
    let negative_only = |items: &[(Option<Occur>, UserInputAst)]| {
        !items.is_empty() && items.iter().all(|(o, _)| *o == Some(Occur::MustNot))
    };
    match ast {
        UserInputAst::Clause(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (occur, sub) in items {
                match lift_negations(sub, false) {
                    UserInputAst::Clause(inner)
                        if occur != Some(Occur::MustNot) && negative_only(&inner) =>
                    {
                        out.extend(inner)
                    }
                    sub => out.push((occur, sub)),
                }
            }
            if top && negative_only(&out) {
                out.push((
                    Some(Occur::Must),
                    UserInputAst::Leaf(Box::new(UserInputLeaf::All)),
                ));
            }
            UserInputAst::Clause(out)
        }
        UserInputAst::Boost(inner, boost) => {
            UserInputAst::Boost(Box::new(lift_negations(*inner, false)), boost)
        }
        leaf => leaf,
    }
}

/// `p` is `dir` or below it; everything is below `""`.
fn under(p: &str, dir: &str) -> bool {
    dir.is_empty() || p == dir || (p.starts_with(dir) && p.as_bytes().get(dir.len()) == Some(&b'/'))
}

/// Tabs and line breaks become spaces: one hit is one line of `score\tpath\tsnippet`.
fn one_line(s: &str) -> String {
    s.split(|c: char| c.is_whitespace())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

struct Indexer {
    writer: IndexWriter,
    reader: IndexReader,
    fields: Fields,
    /// Documents added (`Some`) or deleted (`None`) since the last commit, by key: what a
    /// file rename must see that the committed reader does not yet.
    uncommitted: HashMap<String, Option<(String, i64)>>,
    /// Agents whose documents were all deleted since the last commit: the committed reader's
    /// copies of theirs no longer count.
    reset: BTreeSet<String>,
    pending: Pending,
    /// The index's directory when it is on disk, for [`Indexer::prune_mmap_cache`].
    mmap_dir: Option<MmapDirectory>,
    /// Commits so far.
    commits: u64,
}

impl Indexer {
    fn run(mut self, rx: Receiver<Op>) {
        // Each turn: wait for one op, collect more for up to BATCH_WINDOW, apply, commit.
        while let Ok(first) = rx.recv() {
            let deadline = Instant::now() + BATCH_WINDOW;
            let mut waiters = Vec::new();
            let mut after = Vec::new();
            let mut pending = vec![first];
            let mut closed = false;
            while pending.len() < MAX_BATCH {
                // A flush ends the batch early: someone is waiting for it.
                if matches!(pending.last(), Some(Op::Flush(_))) {
                    break;
                }
                match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(op) => pending.push(op),
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            for op in pending {
                match op {
                    Op::Flush(w) => waiters.push(w),
                    Op::AfterCommit(done) => after.push(done),
                    op => {
                        if let Err(e) = self.apply(op) {
                            tracing::error!(error = %e, "search index update failed");
                        }
                    }
                }
            }
            if self.commit() {
                for done in after {
                    done();
                }
            }
            for w in waiters {
                let _ = w.send(());
            }
            if closed {
                break;
            }
        }
        self.commit();
    }

    /// Commits and reloads; false when the commit failed (the updates are not durable).
    fn commit(&mut self) -> bool {
        self.uncommitted.clear();
        self.reset.clear();
        if let Err(e) = self.writer.commit() {
            tracing::error!(error = %e, "search index commit failed");
            return false;
        }
        if let Err(e) = self.reader.reload() {
            tracing::error!(error = %e, "search index reload failed");
        }
        self.commits += 1;
        if self.commits.is_multiple_of(PRUNE_MMAP_CACHE_EVERY) {
            self.prune_mmap_cache();
        }
        true
    }

    /// Tantivy's `MmapDirectory` keeps a map from the path of every file it ever opened to a
    /// weak reference to its mapping, and drops the entries whose mapping is gone only when
    /// asked for its cache statistics. Every commit and merge makes new segment files, so
    /// without this the map grows for as long as the daemon runs (~0.2 MiB a minute in the
    /// soak). Asking for the statistics prunes it.
    fn prune_mmap_cache(&self) {
        if let Some(dir) = &self.mmap_dir {
            let _ = dir.get_cache_info();
        }
    }

    fn apply(&mut self, op: Op) -> tantivy::Result<()> {
        let f = self.fields;
        match op {
            Op::Upsert {
                agent,
                path,
                generation,
            } => {
                let latest = {
                    let mut pending = self.pending.lock();
                    let k = key(&agent, &path);
                    match pending.texts.get(&k) {
                        Some((_, _, g)) if *g == generation => pending.texts.remove(&k),
                        _ => None,
                    }
                };
                if let Some((text, mtime, _)) = latest {
                    self.put(agent, path, text, mtime)?;
                }
            }
            Op::Put {
                agent,
                path,
                text,
                mtime,
            } => self.put(agent, path, text, mtime)?,
            Op::Delete {
                agent,
                path,
                subtree: false,
            } => self.remove(&agent, &path),
            Op::Delete {
                agent,
                path,
                subtree: true,
            } if path.is_empty() => {
                // A reset (reindex, rollback): one delete by the agent term, no commit; later
                // lookups in this batch ignore the agent's committed documents.
                self.writer
                    .delete_term(Term::from_field_text(f.agent, &agent));
                let prefix = format!("{agent}\0");
                self.uncommitted.retain(|k, _| !k.starts_with(&prefix));
                self.reset.insert(agent);
            }
            Op::Delete { agent, path, .. } => {
                for p in self.paths_under(&agent, &path)? {
                    self.remove(&agent, &p);
                }
            }
            Op::Rename {
                agent,
                from,
                to,
                subtree,
            } => {
                if from == to {
                    return Ok(());
                }
                // A rename replaces its destination, even when the source has no document
                // (a binary file moved over a text one).
                self.remove(&agent, &to);
                let moving = if subtree {
                    self.paths_under(&agent, &from)?
                } else {
                    vec![from.clone()]
                };
                for p in moving {
                    let Some((content, mtime)) = self.current(&agent, &p)? else {
                        continue;
                    };
                    let new_path = format!("{to}{}", &p[from.len()..]);
                    self.remove(&agent, &p);
                    self.put(agent.clone(), new_path, content, mtime)?;
                }
            }
            Op::Flush(_) | Op::AfterCommit(_) => {}
        }
        Ok(())
    }

    fn put(
        &mut self,
        agent: String,
        path: String,
        text: String,
        mtime: i64,
    ) -> tantivy::Result<()> {
        let f = self.fields;
        let k = key(&agent, &path);
        self.writer.delete_term(Term::from_field_text(f.key, &k));
        self.uncommitted
            .insert(k.clone(), Some((text.clone(), mtime)));
        self.writer.add_document(doc!(
            f.key => k,
            f.agent => agent,
            f.path => path,
            f.content => text,
            f.mtime => mtime,
        ))?;
        Ok(())
    }

    fn remove(&mut self, agent: &str, path: &str) {
        let k = key(agent, path);
        self.writer
            .delete_term(Term::from_field_text(self.fields.key, &k));
        self.uncommitted.insert(k, None);
    }

    /// A document's content and mtime as of the ops applied so far.
    fn current(&self, agent: &str, path: &str) -> tantivy::Result<Option<(String, i64)>> {
        match self.uncommitted.get(&key(agent, path)) {
            Some(doc) => Ok(doc.clone()),
            None if self.reset.contains(agent) => Ok(None),
            None => self.stored(agent, path),
        }
    }

    /// Paths of `agent`'s documents at or under `path`. Commits first, so that documents
    /// added earlier in this batch are seen (directory renames and deletes are rare).
    fn paths_under(&mut self, agent: &str, path: &str) -> tantivy::Result<Vec<String>> {
        self.writer.commit()?;
        self.uncommitted.clear();
        self.reset.clear();
        self.reader.reload()?;
        let f = self.fields;
        let searcher = self.reader.searcher();
        let q = TermQuery::new(
            Term::from_field_text(f.agent, agent),
            IndexRecordOption::Basic,
        );
        let n = searcher.num_docs() as usize;
        let mut out = Vec::new();
        for (_, addr) in searcher.search(&q, &TopDocs::with_limit(n.max(1)).order_by_score())? {
            let doc: TantivyDocument = searcher.doc(addr)?;
            if let Some(p) = doc.get_first(f.path).and_then(|v| v.as_str()) {
                if under(p, path) {
                    out.push(p.to_owned());
                }
            }
        }
        Ok(out)
    }

    /// Content and mtime of one committed document.
    fn stored(&self, agent: &str, path: &str) -> tantivy::Result<Option<(String, i64)>> {
        let f = self.fields;
        let searcher = self.reader.searcher();
        let q = TermQuery::new(
            Term::from_field_text(f.key, &key(agent, path)),
            IndexRecordOption::Basic,
        );
        let Some((_, addr)) = searcher
            .search(&q, &TopDocs::with_limit(1).order_by_score())?
            .pop()
        else {
            return Ok(None);
        };
        let doc: TantivyDocument = searcher.doc(addr)?;
        let content = doc
            .get_first(f.content)
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_owned();
        let mtime = doc.get_first(f.mtime).and_then(|v| v.as_i64()).unwrap_or(0);
        Ok(Some((content, mtime)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx() -> SearchIndex {
        SearchIndex::open(None).unwrap()
    }

    /// The paths of `hits`, sorted.
    fn paths(hits: &[Hit]) -> Vec<String> {
        let mut p: Vec<String> = hits.iter().map(|h| h.path.clone()).collect();
        p.sort();
        p
    }

    #[test]
    fn finds_words_phrases_and_booleans() {
        let i = idx();
        i.upsert("a", "cats", b"The cat sat on the mat.\nIt purred.", 1)
            .unwrap();
        i.upsert("a", "dogs", b"The dog barked at the cat.", 2)
            .unwrap();
        i.upsert("a", "notes/fish", b"A fish swims.", 3).unwrap();
        i.flush().unwrap();
        assert_eq!(paths(&i.search("a", "purred", 10).unwrap()), ["cats"]);
        assert_eq!(paths(&i.search("a", "cat", 10).unwrap()), ["cats", "dogs"]);
        assert_eq!(
            paths(&i.search("a", "\"dog barked\"", 10).unwrap()),
            ["dogs"]
        );
        assert!(i.search("a", "\"barked dog\"", 10).unwrap().is_empty());
        assert_eq!(paths(&i.search("a", "cat -dog", 10).unwrap()), ["cats"]);
        assert_eq!(
            paths(&i.search("a", "fish OR purred", 10).unwrap()).len(),
            2
        );
        assert_eq!(
            paths(&i.search("a", "path:notes", 10).unwrap()),
            ["notes/fish"]
        );
        assert_eq!(i.search("a", "cat", 1).unwrap().len(), 1);
        assert_eq!(
            paths(&i.search("a", "cat AND NOT dog", 10).unwrap()),
            ["cats"]
        );
        assert_eq!(paths(&i.search("a", "cat NOT dog", 10).unwrap()), ["cats"]);
        assert_eq!(
            paths(&i.search("a", "(cat OR fish) AND NOT dog", 10).unwrap()),
            ["cats", "notes/fish"]
        );
        assert_eq!(
            paths(&i.search("a", "NOT cat", 10).unwrap()),
            ["notes/fish"]
        );
    }

    #[test]
    fn snippet_is_one_line_with_the_match() {
        let i = idx();
        i.upsert("a", "f", b"first line\nsecond\tline with zebra\nthird", 1)
            .unwrap();
        i.flush().unwrap();
        let hits = i.search("a", "zebra", 10).unwrap();
        assert_eq!(hits.len(), 1);
        assert!(hits[0].snippet.contains("zebra"), "{:?}", hits[0]);
        assert!(!hits[0].snippet.contains(['\n', '\t']));
        assert!(hits[0].score > 0.0);
    }

    #[test]
    fn an_agent_finds_only_its_own_facts() {
        let i = idx();
        i.upsert("a", "f", b"secret plan", 1).unwrap();
        i.upsert("b", "f", b"other plan", 1).unwrap();
        i.flush().unwrap();
        assert_eq!(i.search("a", "plan", 10).unwrap()[0].snippet, "secret plan");
        assert!(i.search("b", "secret", 10).unwrap().is_empty());
        // Naming the agent field cannot widen the search: it is ANDed with the real agent.
        assert!(i.search("b", "agent:a", 10).unwrap().is_empty());
        assert!(i
            .search("b", "secret OR plan", 10)
            .unwrap()
            .iter()
            .all(|h| h.snippet != "secret plan"));
    }

    #[test]
    fn update_delete_and_rename() {
        let i = idx();
        i.upsert("a", "f", b"old words", 1).unwrap();
        i.upsert("a", "f", b"new words", 2).unwrap();
        i.upsert("a", "d/x", b"inside dir", 1).unwrap();
        i.flush().unwrap();
        assert!(i.search("a", "old", 10).unwrap().is_empty());
        assert_eq!(paths(&i.search("a", "new", 10).unwrap()), ["f"]);
        i.rename("a", "f", "g").unwrap();
        i.rename("a", "d", "e").unwrap();
        i.flush().unwrap();
        assert_eq!(paths(&i.search("a", "new", 10).unwrap()), ["g"]);
        assert_eq!(paths(&i.search("a", "inside", 10).unwrap()), ["e/x"]);
        i.delete("a", "g").unwrap();
        i.delete("a", "e").unwrap();
        i.flush().unwrap();
        assert!(i.search("a", "new OR inside", 10).unwrap().is_empty());
        assert_eq!(i.num_docs(), 0);
    }

    #[test]
    fn rename_of_an_unindexed_file_replaces_the_destination() {
        let i = idx();
        i.upsert("a", "dst", b"stale words", 1).unwrap();
        i.upsert("a", "bin", &[0xff], 1).unwrap();
        i.rename("a", "bin", "dst").unwrap();
        i.rename("a", "same", "same").unwrap();
        i.flush().unwrap();
        assert!(i.search("a", "stale", 10).unwrap().is_empty());
    }

    #[test]
    fn file_ops_in_one_batch_see_each_other_without_a_commit() {
        let i = idx();
        // All before one flush: they land in one indexer batch.
        i.upsert("a", "x", b"a quick ibis", 1).unwrap();
        i.rename_file("a", "x", "y").unwrap();
        i.upsert("a", "z", b"a slow sloth", 2).unwrap();
        i.delete_file("a", "z").unwrap();
        i.rename_file("a", "z", "w").unwrap();
        i.flush().unwrap();
        assert_eq!(paths(&i.search("a", "ibis", 10).unwrap()), ["y"]);
        assert!(i.search("a", "sloth", 10).unwrap().is_empty());
        // And against committed documents.
        i.rename_file("a", "y", "v").unwrap();
        i.flush().unwrap();
        assert_eq!(paths(&i.search("a", "ibis", 10).unwrap()), ["v"]);
    }

    #[test]
    fn queued_updates_of_a_file_coalesce_without_crossing_deletes_and_renames() {
        let i = idx();
        for n in 0..1000 {
            i.upsert("a", "x", format!("version{n} of x").as_bytes(), n)
                .unwrap();
        }
        // Only one text per file waits, whatever the number of writes.
        assert!(i.pending.lock().texts.len() <= 1);
        i.upsert("a", "d", b"doomed dodo", 1).unwrap();
        i.delete_file("a", "d").unwrap();
        i.upsert("a", "d", b"reborn dodo", 2).unwrap();
        i.upsert("a", "m", b"moving moose", 1).unwrap();
        i.rename_file("a", "m", "n").unwrap();
        i.upsert("a", "m", b"second moose", 2).unwrap();
        i.upsert("a", "t", b"target tapir", 1).unwrap();
        i.upsert("a", "s", b"source skunk", 1).unwrap();
        i.rename_file("a", "s", "t").unwrap();
        i.flush().unwrap();
        assert_eq!(paths(&i.search("a", "version999", 10).unwrap()), ["x"]);
        assert!(i.search("a", "version998", 10).unwrap().is_empty());
        assert_eq!(paths(&i.search("a", "reborn", 10).unwrap()), ["d"]);
        assert!(i.search("a", "doomed", 10).unwrap().is_empty());
        assert_eq!(paths(&i.search("a", "moving", 10).unwrap()), ["n"]);
        assert_eq!(paths(&i.search("a", "second", 10).unwrap()), ["m"]);
        assert_eq!(paths(&i.search("a", "skunk", 10).unwrap()), ["t"]);
        assert!(i.search("a", "tapir", 10).unwrap().is_empty());
        // A reset (reindex) in the same batch as a rename of an old document: the old
        // document is gone, not resurrected under the new name.
        i.delete("a", "").unwrap();
        i.rename_file("a", "x", "y").unwrap();
        i.upsert("a", "z", b"fresh zebra", 3).unwrap();
        i.flush().unwrap();
        assert!(i.search("a", "version999", 10).unwrap().is_empty());
        assert_eq!(paths(&i.search("a", "zebra", 10).unwrap()), ["z"]);
    }

    #[test]
    fn bad_query_is_a_clear_error() {
        let i = idx();
        match i.search("a", "nofield:x", 10) {
            Err(SearchError::Query(why)) => assert!(why.contains("nofield"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    /// Found by the `search-query` fuzz target: `path:*` and `catpath:*` failed at search
    /// time with a schema error or an unknown field, which the mount answered EIO.
    #[test]
    fn a_query_the_schema_cannot_answer_is_a_query_error() {
        let i = idx();
        i.upsert("a", "cats", b"the cat", 1).unwrap();
        i.flush().unwrap();
        for (q, why_contains) in [
            ("path:*", "fast field"),
            ("(path:*)", "fast field"),
            ("content:* AND cat", "fast field"),
            ("catpath:*", "no field `catpath`"),
        ] {
            match i.search("a", q, 10) {
                Err(SearchError::Query(why)) => assert!(why.contains(why_contains), "{why}"),
                other => panic!("{q}: {other:?}"),
            }
        }
    }

    /// Found by the `search-query` fuzz target: an excluded phrase tripped a debug
    /// assertion inside tantivy (its `Exclude` seeks a phrase scorer backwards), so debug
    /// builds panicked on `NOT "a b"`; tantivy is built without debug assertions (the
    /// workspace Cargo.toml), as in release, where the answer is right.
    #[test]
    fn excluded_phrases_are_answered() {
        let i = idx();
        i.upsert("a", "cats", b"The cat sat on the mat. It purred.", 1)
            .unwrap();
        i.upsert("a", "dogs", b"The dog barked at the cat.", 2)
            .unwrap();
        i.flush().unwrap();
        assert_eq!(
            paths(&i.search("a", "NOT \"cat dog\"", 10).unwrap()),
            ["cats", "dogs"]
        );
        assert_eq!(
            paths(&i.search("a", "cat -\"dog barked\"", 10).unwrap()),
            ["cats"]
        );
        assert_eq!(
            paths(&i.search("a", "cat -\"it purred\"", 10).unwrap()),
            ["dogs"]
        );
        assert_eq!(
            paths(&i.search("a", "cat AND NOT \"cat sat\"", 10).unwrap()),
            ["dogs"]
        );
    }

    #[test]
    fn binary_content_is_skipped_and_reported() {
        let i = idx();
        i.upsert("a", "t", b"text zebra", 1).unwrap();
        i.flush().unwrap();
        assert_eq!(
            i.upsert("a", "t", &[0xff, 0xfe, 0], 2).unwrap(),
            Indexed::SkippedBinary
        );
        i.flush().unwrap();
        assert!(i.search("a", "zebra", 10).unwrap().is_empty());
        assert_eq!(i.skipped(), [("a".to_owned(), "t".to_owned())]);
    }

    #[test]
    fn searchable_within_a_second_without_flush() {
        let i = idx();
        let start = Instant::now();
        i.upsert("a", "f", b"quokka", 1).unwrap();
        while i.search("a", "quokka", 1).unwrap().is_empty() {
            assert!(
                start.elapsed() < Duration::from_secs(1),
                "not searchable after 1 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn survives_reopen_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        {
            let i = SearchIndex::open(Some(dir.path())).unwrap();
            i.upsert("a", "f", b"persistent fact", 1).unwrap();
        } // drop commits what is queued
        let i = SearchIndex::open(Some(dir.path())).unwrap();
        assert_eq!(paths(&i.search("a", "persistent", 10).unwrap()), ["f"]);
    }
}
