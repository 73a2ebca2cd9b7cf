//! The background thread that copies journal records into SQLite.
//!
//! Commits queue their records here (in sequence order, under the journal lock) and return. The
//! applier wakes when the queue becomes non-empty, waits [`APPLY_DELAY`] to gather more (less
//! when [`GROUP_TRIGGER`] records are waiting or someone waits for it), and applies everything
//! queued, up to [`MAX_GROUP`] records, in one SQLite transaction that also records the last
//! sequence number applied (`store.applied_seq`). So SQLite always holds a prefix of the journal
//! and a recovery knows where to resume.
//!
//! # Failures
//!
//! If SQLite fails (disk full, I/O error, a tool holding a write lock), the transaction rolls
//! back, the records stay queued (and in the journal) and the applier retries with a backoff
//! from 10 ms up to 1 s. [`SqliteStore::applier_error`](super::SqliteStore::applier_error) shows
//! the error meanwhile. Commits go on being accepted for [`FAIL_GRACE`]; once the applier has
//! failed without a success for that long, commits are refused with its error (a full disk
//! becomes `NoSpace` at the next commit, not a silent backlog), until it succeeds again.
//! Independently, when [`MAX_QUEUED_BYTES`] of records wait, commits block until the applier
//! catches up: this bounds both the memory of the queue and the replay time after a crash.

use super::errors;
use super::head::HeadPin;
use super::journal::{Journal, Link, Record};
use super::tables;
use crate::audit::{canonical_body, ChainHead};
use crate::{Change, StoreError};
use parking_lot::{Condvar, Mutex};
use rusqlite::{Connection, TransactionBehavior};
use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the applier lets records gather before applying them. Short enough that SQLite
/// (which read-only tools like `audit tail` look at) lags by milliseconds; long enough that one
/// transaction carries hundreds of commits under load.
const APPLY_DELAY: Duration = Duration::from_millis(5);
/// This many queued records wake the applier before `APPLY_DELAY`.
const GROUP_TRIGGER: usize = 1024;
/// Most records in one SQLite transaction.
const MAX_GROUP: usize = 4096;
/// Commits block while this many bytes of records wait to be applied. This bounds the replay
/// after a crash (about 120,000 small records, under two seconds at the measured replay speed)
/// and the queue's memory (the decoded batches take two to three times their encoded size).
pub(super) const MAX_QUEUED_BYTES: usize = 16 << 20;
/// How long the applier may fail before commits are refused.
const FAIL_GRACE: Duration = Duration::from_secs(1);
/// Attempts at applying what is left when the store is dropped; the rest is replayed at open.
const FINAL_ATTEMPTS: u32 = 3;

struct Queue {
    records: VecDeque<Record>,
    /// When the queue last became non-empty.
    since: Option<Instant>,
    /// Someone waits for the applier: apply without waiting for `APPLY_DELAY`.
    urgent: bool,
    stop: bool,
}

/// What the applier last did.
#[derive(Default)]
struct Status {
    /// The error of the last attempt, if it failed.
    error: Option<ErrorCopy>,
    /// When the current run of failures began.
    failing_since: Option<Instant>,
    /// Failed attempts since the store was opened.
    failures: u64,
}

/// A `StoreError` kept for handing out again (`StoreError` is not `Clone`).
#[derive(Clone)]
struct ErrorCopy {
    no_space: bool,
    corrupt: bool,
    message: String,
}

impl ErrorCopy {
    fn of(e: &StoreError, db: &Path) -> Self {
        ErrorCopy {
            no_space: e.is_no_space(),
            corrupt: matches!(e, StoreError::Corrupt(_)),
            message: format!("applying the journal to {}: {e}", db.display()),
        }
    }

    fn to_error(&self) -> StoreError {
        if self.no_space {
            StoreError::NoSpace(self.message.clone())
        } else if self.corrupt {
            StoreError::Corrupt(self.message.clone())
        } else {
            StoreError::Io(io::Error::other(self.message.clone()))
        }
    }
}

/// State shared by the store's threads and the applier thread.
struct Shared {
    queue: Mutex<Queue>,
    /// The applier waits on it for work.
    queue_cv: Condvar,
    status: Mutex<Status>,
    /// Waiters (`wait_applied`, blocked commits) wait on it for progress or failure.
    status_cv: Condvar,
    /// Bytes of journal records queued and not yet applied.
    queued_bytes: AtomicUsize,
    /// Last sequence number queued.
    appended: AtomicU64,
    /// Last sequence number in SQLite.
    applied: AtomicU64,
    /// Fast check for commits: the last attempt failed.
    failing: AtomicBool,
    /// Test and benchmark hook: apply nothing while set.
    paused: AtomicBool,
}

/// What the applier thread works with.
struct Ctx {
    shared: Arc<Shared>,
    conn: Arc<Mutex<Connection>>,
    journal: Arc<Journal>,
    db: PathBuf,
    pin: Arc<HeadPin>,
    /// The audit chain as of the last record applied.
    chain: Mutex<ChainHead>,
}

/// Handle on the applier thread; dropping it applies what is queued and joins the thread.
pub(super) struct Applier {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Applier {
    /// Starts the thread. `applied` is the last record SQLite holds (all appended ones, since
    /// the journal was just replayed).
    pub(super) fn start(
        conn: Arc<Mutex<Connection>>,
        journal: Arc<Journal>,
        db: PathBuf,
        applied: u64,
        pin: Arc<HeadPin>,
        chain: ChainHead,
    ) -> Result<Applier, StoreError> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                records: VecDeque::new(),
                since: None,
                urgent: false,
                stop: false,
            }),
            queue_cv: Condvar::new(),
            status: Mutex::new(Status::default()),
            status_cv: Condvar::new(),
            queued_bytes: AtomicUsize::new(0),
            appended: AtomicU64::new(applied),
            applied: AtomicU64::new(applied),
            failing: AtomicBool::new(false),
            paused: AtomicBool::new(false),
        });
        let ctx = Ctx {
            shared: Arc::clone(&shared),
            conn,
            journal,
            db,
            pin,
            chain: Mutex::new(chain),
        };
        let thread = std::thread::Builder::new()
            .name("agentfs-applier".into())
            .spawn(move || ctx.run())
            .map_err(StoreError::Io)?;
        Ok(Applier {
            shared,
            thread: Some(thread),
        })
    }

    /// Called by a commit before it appends: refuses it with the applier's error once the
    /// applier has been failing for [`FAIL_GRACE`], and blocks it while the backlog is full.
    pub(super) fn admit(&self) -> Result<(), StoreError> {
        let s = &*self.shared;
        if !s.failing.load(Ordering::Acquire)
            && s.queued_bytes.load(Ordering::Acquire) < MAX_QUEUED_BYTES
        {
            return Ok(());
        }
        let mut st = s.status.lock();
        loop {
            if let (Some(err), Some(since)) = (&st.error, st.failing_since) {
                if since.elapsed() >= FAIL_GRACE {
                    return Err(err.to_error());
                }
            }
            if s.queued_bytes.load(Ordering::Acquire) < MAX_QUEUED_BYTES {
                return Ok(());
            }
            self.hurry();
            s.status_cv.wait_for(&mut st, Duration::from_millis(100));
        }
    }

    /// Queues an appended record. Called under the journal lock, so records queue in order.
    pub(super) fn push(&self, record: Record) {
        let s = &*self.shared;
        s.appended.store(record.seq, Ordering::Release);
        s.queued_bytes.fetch_add(record.bytes, Ordering::AcqRel);
        let mut q = s.queue.lock();
        let was_empty = q.records.is_empty();
        if was_empty {
            q.since = Some(Instant::now());
        }
        q.records.push_back(record);
        let wake = was_empty || q.records.len() == GROUP_TRIGGER;
        drop(q);
        if wake {
            s.queue_cv.notify_one();
        }
    }

    /// Tells the applier to apply now rather than after `APPLY_DELAY`.
    fn hurry(&self) {
        self.shared.queue.lock().urgent = true;
        self.shared.queue_cv.notify_one();
    }

    /// Blocks until every record queued before the call is in SQLite. Fails with the applier's
    /// error if an attempt fails meanwhile (so it never hangs on a broken database), and at
    /// once while the applier is paused.
    pub(super) fn wait_applied(&self) -> Result<(), StoreError> {
        let s = &*self.shared;
        let target = s.appended.load(Ordering::Acquire);
        if s.applied.load(Ordering::Acquire) >= target {
            return Ok(());
        }
        if s.paused.load(Ordering::Acquire) {
            return Err(StoreError::Io(io::Error::other(
                "the journal applier is paused; records wait unapplied",
            )));
        }
        let mut st = s.status.lock();
        let failures = st.failures;
        self.hurry();
        loop {
            if s.applied.load(Ordering::Acquire) >= target {
                return Ok(());
            }
            if st.failures > failures {
                if let Some(err) = &st.error {
                    return Err(err.to_error());
                }
            }
            s.status_cv.wait_for(&mut st, Duration::from_millis(100));
        }
    }

    /// Records appended but not yet in SQLite.
    pub(super) fn lag(&self) -> u64 {
        let s = &*self.shared;
        s.appended
            .load(Ordering::Acquire)
            .saturating_sub(s.applied.load(Ordering::Acquire))
    }

    /// The last attempt's error, while the applier is failing.
    pub(super) fn error(&self) -> Option<String> {
        self.shared
            .status
            .lock()
            .error
            .as_ref()
            .map(|e| e.message.clone())
    }

    pub(super) fn is_paused(&self) -> bool {
        self.shared.paused.load(Ordering::Acquire)
    }

    pub(super) fn set_paused(&self, paused: bool) {
        self.shared.paused.store(paused, Ordering::Release);
        self.shared.queue_cv.notify_one();
    }
}

impl Drop for Applier {
    fn drop(&mut self) {
        self.shared.queue.lock().stop = true;
        self.shared.queue_cv.notify_one();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("the journal applier panicked; the journal is replayed at open");
            }
        }
    }
}

impl Ctx {
    fn run(self) {
        // Records taken from the queue and not applied yet (kept across failed attempts).
        let mut group: Vec<Record> = Vec::new();
        let mut retry_at: Option<Instant> = None;
        loop {
            let stop = {
                let mut q = self.shared.queue.lock();
                loop {
                    if q.stop {
                        break;
                    }
                    let has_work = !group.is_empty() || !q.records.is_empty();
                    if has_work && !self.shared.paused.load(Ordering::Acquire) {
                        let due = match retry_at {
                            Some(t) => t,
                            None if q.urgent || q.records.len() >= GROUP_TRIGGER => Instant::now(),
                            None => q.since.unwrap_or_else(Instant::now) + APPLY_DELAY,
                        };
                        if Instant::now() >= due {
                            break;
                        }
                        self.shared.queue_cv.wait_until(&mut q, due);
                    } else {
                        self.shared.queue_cv.wait(&mut q);
                    }
                }
                q.urgent = false;
                take(&mut q, &mut group);
                q.stop
            };
            if stop {
                return self.finish(group);
            }
            match self.apply(&group) {
                Ok(()) => {
                    group.clear();
                    retry_at = None;
                }
                Err(backoff) => retry_at = Some(Instant::now() + backoff),
            }
        }
    }

    /// At drop: applies everything left, with a few attempts; what still fails stays in the
    /// journal for the next open. While paused, applies nothing (a test's simulated crash).
    fn finish(&self, mut group: Vec<Record>) {
        if self.shared.paused.load(Ordering::Acquire) {
            return;
        }
        let mut attempts = 0;
        loop {
            take(&mut self.shared.queue.lock(), &mut group);
            if group.is_empty() {
                // Everything is in SQLite: make it durable and empty the journal, so the next
                // open reads nothing. Should that fail, the next open replays (skipping what
                // SQLite has) and deletes the segments itself.
                match durable_checkpoint(&mut self.conn.lock(), &self.db) {
                    Ok(()) => self.journal.delete_all(),
                    Err(e) => tracing::warn!(error = %e, "could not make SQLite durable at close"),
                }
                return;
            }
            match self.apply(&group) {
                Ok(()) => group.clear(),
                Err(backoff) => {
                    attempts += 1;
                    if attempts >= FINAL_ATTEMPTS {
                        let left = group.len() + self.shared.queue.lock().records.len();
                        tracing::error!(
                            records = left,
                            "could not apply the journal to SQLite before closing; it is \
                             replayed at the next open"
                        );
                        return;
                    }
                    std::thread::sleep(backoff.min(Duration::from_millis(200)));
                }
            }
        }
    }

    /// One attempt at `group`. On failure returns how long to wait before the next.
    fn apply(&self, group: &[Record]) -> Result<(), Duration> {
        let Some(last) = group.last().map(|r| r.seq) else {
            return Ok(());
        };
        // When this transaction completes a closed segment, make it durable so the segment
        // can be deleted after it.
        let durable = self.journal.closes_segment(last);
        let result = apply_group(&mut self.conn.lock(), group, &self.db, durable, None);
        let s = &*self.shared;
        match result {
            Ok(()) => {
                let bytes: usize = group.iter().map(|r| r.bytes).sum();
                s.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
                {
                    let mut st = s.status.lock();
                    s.applied.store(last, Ordering::Release);
                    if st.error.take().is_some() {
                        tracing::info!("the journal applier recovered");
                    }
                    st.failing_since = None;
                    s.failing.store(false, Ordering::Release);
                }
                s.status_cv.notify_all();
                let head = {
                    let mut chain = self.chain.lock();
                    if let Some(l) = group.iter().rev().find_map(|r| r.links.last()) {
                        *chain = ChainHead {
                            seq: l.seq,
                            hash: l.hash,
                        };
                    }
                    *chain
                };
                if durable {
                    self.journal.delete_applied(last);
                    // SQLite holds every row up to `head` durably: pin it (best effort; the
                    // next sync or close pins it again).
                    if let Err(e) = self.pin.advance(head, false) {
                        tracing::warn!(error = %e, "could not write the audit chain head");
                    }
                }
                self.journal.kick_writeback();
                Ok(())
            }
            Err(e) => {
                let mut st = s.status.lock();
                if st.error.is_none() {
                    tracing::error!(error = %e, "applying the journal to SQLite failed; retrying");
                }
                st.error = Some(ErrorCopy::of(&e, &self.db));
                st.failing_since.get_or_insert_with(Instant::now);
                st.failures += 1;
                s.failing.store(true, Ordering::Release);
                let streak = st
                    .failing_since
                    .map_or(0, |t| t.elapsed().as_millis() as u64);
                drop(st);
                s.status_cv.notify_all();
                Err(Duration::from_millis((10 + streak / 2).min(1000)))
            }
        }
    }
}

/// Moves up to `MAX_GROUP` records (counting those already in `group`) from the queue.
fn take(q: &mut Queue, group: &mut Vec<Record>) {
    let n = MAX_GROUP.saturating_sub(group.len()).min(q.records.len());
    group.extend(q.records.drain(..n));
    q.since = if q.records.is_empty() {
        None
    } else {
        Some(Instant::now())
    };
}

/// Applies `records` in one transaction that also sets `store.applied_seq` to the last one.
/// With `durable`, the transaction runs under `synchronous=FULL`: in WAL mode that fsyncs the
/// WAL at commit, making it and every earlier transaction durable. Shared with the replay at
/// open.
///
/// Audit entries are inserted with the chain links their record carries; records read back at
/// recovery carry none, and get them from `chain` (the head of what SQLite holds), which is
/// advanced past them.
pub(super) fn apply_group(
    conn: &mut Connection,
    records: &[Record],
    db: &Path,
    durable: bool,
    mut chain: Option<&mut ChainHead>,
) -> Result<(), StoreError> {
    let Some(last) = records.last().map(|r| r.seq) else {
        return Ok(());
    };
    let sql = |e| errors::sql(e, db);
    if durable {
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql)?;
    }
    let result = (|| {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        // Every batch was validated before it was appended: chunks it names were in the index.
        let holds = |_: &_| true;
        let mut insert_audit = tables::audit_insert_stmt(&tx).map_err(sql)?;
        for r in records {
            for (id, loc) in &r.blobs {
                tables::insert_blob(&tx, id, *loc).map_err(sql)?;
            }
            let mut links = r.links.iter();
            for change in &r.batch.changes {
                let Change::Audit(entry) = change else {
                    tables::apply(&tx, change, &holds, db)?;
                    continue;
                };
                let link = match (links.next(), chain.as_deref_mut()) {
                    (Some(link), _) => *link,
                    (None, Some(head)) => {
                        let prev = head.hash;
                        let (seq, hash) = head.advance(&canonical_body(entry));
                        Link { seq, prev, hash }
                    }
                    (None, None) => {
                        return Err(StoreError::Io(io::Error::other(format!(
                            "journal record {} reached the applier without its audit links",
                            r.seq
                        ))))
                    }
                };
                tables::insert_audit(&mut insert_audit, &link, entry).map_err(sql)?;
            }
        }
        drop(insert_audit);
        tables::set_applied_seq(&tx, last).map_err(sql)?;
        tx.commit().map_err(sql)
        // On any error `tx` is dropped here, which rolls back.
    })();
    if durable {
        if let Err(e) = conn.pragma_update(None, "synchronous", "NORMAL") {
            tracing::warn!(error = %e, "could not set synchronous back to NORMAL");
        }
    }
    result
}

/// Makes the database's current state durable: a transaction under `synchronous=FULL` that is
/// guaranteed to write (it bumps `store.sync_seq`; SQLite writes and syncs nothing for a
/// transaction that dirtied no page). In WAL mode a FULL commit fsyncs the WAL, and fsync
/// covers the whole file, so every earlier transaction still in the WAL is durable after it;
/// those already checkpointed into the database were synced by that checkpoint.
pub(super) fn durable_checkpoint(conn: &mut Connection, db: &Path) -> Result<(), StoreError> {
    let sql = |e| errors::sql(e, db);
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(sql)?;
    let result = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .and_then(|tx| {
            tables::bump_sync_seq(&tx)?;
            tx.commit()
        })
        .map_err(sql);
    if let Err(e) = conn.pragma_update(None, "synchronous", "NORMAL") {
        tracing::warn!(error = %e, "could not set synchronous back to NORMAL");
    }
    result
}
