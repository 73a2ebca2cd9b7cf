//! Reading the flight recorder from `agentfs.db` without owning the store: [`AuditLog`] opens
//! the database read-only (SQLite WAL lets it read while a daemon writes), lists entries and
//! verifies the hash chain against the head file.

use super::errors;
use super::head;
use super::lock::LOCK_FILE as LOCK_FILE_NAME;
use super::schema::{SCHEMA_VERSION, VERSION_KEY};
use super::DB_FILE;
use crate::audit::{entry_hash, link_hash, AuditRecord, ChainHead, GENESIS};
use crate::{AuditEntry, StoreError};
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The columns of an entry, in the order [`entry_of`] reads them.
pub(super) const ENTRY_COLUMNS: &str = "seq, time, agent, pid, uid, op, path, result, size, \
     target, \"offset\", data_hash, decision, rule, policy, detail";
const RECORD_COLUMNS: &str = "seq, time, agent, pid, uid, op, path, result, size, target, \
     \"offset\", data_hash, decision, rule, policy, detail, prev_hash, hash";

/// How far from its place verify looks for where a misplaced entry belongs.
const ORIGIN_WINDOW: u64 = 4096;
/// How long verify waits for a running daemon's applier to bring SQLite up to the head file.
const CATCH_UP: Duration = Duration::from_secs(5);

fn hash32(v: Option<Vec<u8>>, col: usize) -> rusqlite::Result<Option<[u8; 32]>> {
    match v {
        None => Ok(None),
        Some(b) => <[u8; 32]>::try_from(b.as_slice()).map(Some).map_err(|_| {
            rusqlite::Error::FromSqlConversionFailure(
                col,
                rusqlite::types::Type::Blob,
                format!("a {}-byte hash, not 32", b.len()).into(),
            )
        }),
    }
}

fn narrow<T: TryFrom<i64>>(v: i64, col: usize) -> rusqlite::Result<T> {
    T::try_from(v).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(col, v))
}

/// Reads `seq` and the entry from a row selected with [`ENTRY_COLUMNS`] first.
pub(super) fn entry_of(r: &Row<'_>) -> rusqlite::Result<(u64, AuditEntry)> {
    let seq = r.get::<_, i64>(0)? as u64;
    let entry = AuditEntry {
        time: r.get(1)?,
        agent: r.get(2)?,
        pid: narrow(r.get(3)?, 3)?,
        uid: narrow(r.get(4)?, 4)?,
        op: r.get(5)?,
        path: r.get(6)?,
        result: narrow(r.get(7)?, 7)?,
        size: r.get::<_, i64>(8)? as u64,
        target: r.get(9)?,
        offset: r.get::<_, i64>(10)? as u64,
        data_hash: hash32(r.get(11)?, 11)?,
        decision: r.get(12)?,
        rule: r.get(13)?,
        policy: hash32(r.get(14)?, 14)?.unwrap_or([0; 32]),
        detail: r.get(15)?,
    };
    Ok((seq, entry))
}

/// A row selected with [`RECORD_COLUMNS`]. A missing or malformed hash is an error.
fn record_of(r: &Row<'_>) -> rusqlite::Result<AuditRecord> {
    let (seq, entry) = entry_of(r)?;
    let missing = |col: usize| {
        rusqlite::Error::FromSqlConversionFailure(
            col,
            rusqlite::types::Type::Null,
            "no chain hash".into(),
        )
    };
    Ok(AuditRecord {
        seq,
        entry,
        prev_hash: hash32(r.get(16)?, 16)?.ok_or_else(|| missing(16))?,
        hash: hash32(r.get(17)?, 17)?.ok_or_else(|| missing(17))?,
    })
}

/// The stored hash of a row selected with [`RECORD_COLUMNS`] if the row links to `prev` and
/// its content gives that hash; `None` if not, or if anything does not read back (the slow
/// path then tells what is wrong). Encodes into `body` from borrowed values: no allocation.
fn fast_check(r: &Row<'_>, seq: u64, prev: &[u8; 32], body: &mut Vec<u8>) -> Option<[u8; 32]> {
    use rusqlite::types::ValueRef;
    let blob32 = |i: usize| -> Option<Option<&[u8]>> {
        match r.get_ref(i).ok()? {
            ValueRef::Null => Some(None),
            ValueRef::Blob(b) if b.len() == 32 => Some(Some(b)),
            _ => None,
        }
    };
    let int = |i: usize| match r.get_ref(i).ok()? {
        ValueRef::Integer(v) => Some(v),
        _ => None,
    };
    let text = |i: usize| match r.get_ref(i).ok()? {
        ValueRef::Text(t) => Some(t),
        _ => None,
    };
    let put = |body: &mut Vec<u8>, t: &[u8]| {
        body.extend_from_slice(&(t.len() as u32).to_le_bytes());
        body.extend_from_slice(t);
    };
    if blob32(16)?? != &prev[..] {
        return None;
    }
    let stored = blob32(17)??;
    body.clear();
    body.extend_from_slice(&int(1)?.to_le_bytes());
    put(body, text(2)?);
    body.extend_from_slice(&u32::try_from(int(3)?).ok()?.to_le_bytes());
    body.extend_from_slice(&u32::try_from(int(4)?).ok()?.to_le_bytes());
    put(body, text(5)?);
    put(body, text(6)?);
    body.extend_from_slice(&i32::try_from(int(7)?).ok()?.to_le_bytes());
    body.extend_from_slice(&int(8)?.to_le_bytes());
    put(body, text(9)?);
    body.extend_from_slice(&int(10)?.to_le_bytes());
    match blob32(11)? {
        Some(h) => {
            body.push(1);
            body.extend_from_slice(h);
        }
        None => body.push(0),
    }
    put(body, text(12)?);
    put(body, text(13)?);
    body.extend_from_slice(blob32(14)?.unwrap_or(&[0; 32]));
    put(body, text(15)?);
    let hash = link_hash(prev, seq, body);
    (hash[..] == *stored).then_some(hash)
}

/// What kind of damage `verify` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    /// An entry's content, or its hashes, were changed.
    Altered,
    /// Entries are missing from the middle (or the start).
    Dropped,
    /// An entry sits at another entry's place.
    Reordered,
    /// An entry that was never recorded sits in the chain.
    Inserted,
    /// Entries are missing at the end (the table ends before the pinned head).
    Truncated,
    /// The head file is missing although the table holds entries.
    HeadMissing,
}

impl ProblemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemKind::Altered => "altered",
            ProblemKind::Dropped => "dropped",
            ProblemKind::Reordered => "reordered",
            ProblemKind::Inserted => "inserted",
            ProblemKind::Truncated => "truncated",
            ProblemKind::HeadMissing => "head-missing",
        }
    }
}

/// The first problem in a chain: its kind, the first bad seq, and a sentence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub kind: ProblemKind,
    pub seq: u64,
    pub detail: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.detail)
    }
}

/// What `verify` found.
#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    /// Entries checked and found good (a prefix of the chain).
    pub entries: u64,
    /// The last good entry.
    pub last: ChainHead,
    /// The head file's content.
    pub head: Option<ChainHead>,
    /// Good entries after the pinned head (committed since the last durable point; a cut of
    /// these alone would not be detected).
    pub unpinned: u64,
    /// Entries (included in `entries`) that are only in the journal: the store was not closed
    /// cleanly and the next open applies them to the table.
    pub in_journal: u64,
    pub problem: Option<Problem>,
}

/// A read-only view of a data dir's flight recorder.
pub struct AuditLog {
    dir: PathBuf,
    db: PathBuf,
    conn: Connection,
}

impl AuditLog {
    /// Opens `DIR/agentfs.db` read-only. Fails if there is no store there, or if its schema
    /// predates the audit chain (version 3: mount it once with this agentfs to migrate).
    pub fn open(dir: &Path) -> Result<AuditLog, StoreError> {
        let db = dir.join(DB_FILE);
        if !db.exists() {
            return Err(StoreError::Io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "{} does not exist: {} holds no agentfs store",
                    db.display(),
                    dir.display()
                ),
            )));
        }
        let conn = Connection::open_with_flags(
            &db,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| errors::sql_at_open(e, &db))?;
        // Readers may wait a little for a checkpoint of the daemon's; never forever.
        conn.busy_timeout(Duration::from_secs(2))
            .map_err(|e| errors::sql_at_open(e, &db))?;
        let version: Option<String> = conn
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                [VERSION_KEY],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| errors::sql_at_open(e, &db))?;
        match version.as_deref().map(str::trim).map(str::parse::<u32>) {
            Some(Ok(SCHEMA_VERSION)) => {}
            Some(Ok(v)) if v < SCHEMA_VERSION => {
                return Err(StoreError::Corrupt(format!(
                    "{}: schema version {v} has no audit chain yet (version {SCHEMA_VERSION} \
                     adds it); mount the data dir once with this agentfs to migrate it",
                    db.display()
                )))
            }
            other => {
                return Err(StoreError::Corrupt(format!(
                    "{}: schema version {other:?} is not one this agentfs reads \
                     ({SCHEMA_VERSION})",
                    db.display()
                )))
            }
        }
        Ok(AuditLog {
            dir: dir.to_path_buf(),
            db,
            conn,
        })
    }

    fn sql(&self, e: rusqlite::Error) -> StoreError {
        errors::sql(e, &self.db)
    }

    /// The head file (`None` if there is none).
    pub fn head_file(&self) -> Result<Option<ChainHead>, StoreError> {
        head::read(&self.dir)
    }

    /// The highest seq in the table (0 when empty).
    pub fn last_seq(&self) -> Result<u64, StoreError> {
        self.conn
            .query_row("SELECT coalesce(max(seq), 0) FROM audit", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|v| v as u64)
            .map_err(|e| self.sql(e))
    }

    /// Up to `limit` entries with seq above `after`, in order; only `agent`'s when given.
    pub fn after(
        &self,
        after: u64,
        agent: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let mut out = Vec::new();
        let map = |rows: rusqlite::Rows<'_>| -> Result<Vec<AuditRecord>, StoreError> {
            let mut rows = rows;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(|e| self.sql(e))? {
                out.push(record_of(row).map_err(|e| self.corrupt_row(row, e))?);
            }
            Ok(out)
        };
        let limit = limit.min(i64::MAX as usize) as i64;
        if let Some(agent) = agent {
            let mut stmt = self
                .conn
                .prepare_cached(&format!(
                    "SELECT {RECORD_COLUMNS} FROM audit WHERE seq > ?1 AND agent = ?2 \
                     ORDER BY seq LIMIT ?3"
                ))
                .map_err(|e| self.sql(e))?;
            out.extend(map(stmt
                .query(rusqlite::params![after as i64, agent, limit])
                .map_err(|e| self.sql(e))?)?);
        } else {
            let mut stmt = self
                .conn
                .prepare_cached(&format!(
                    "SELECT {RECORD_COLUMNS} FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2"
                ))
                .map_err(|e| self.sql(e))?;
            out.extend(map(stmt
                .query(rusqlite::params![after as i64, limit])
                .map_err(|e| self.sql(e))?)?);
        }
        Ok(out)
    }

    fn corrupt_row(&self, row: &Row<'_>, e: rusqlite::Error) -> StoreError {
        let seq = row.get::<_, i64>(0).unwrap_or(-1);
        StoreError::Corrupt(format!("{}: audit row {seq}: {e}", self.db.display()))
    }

    /// Walks the whole chain and checks it against the head file. `progress(done, total)` is
    /// called every few thousand entries. Stops at the first problem; see `docs/storage.md`
    /// for how its kind is told.
    pub fn verify(&self, progress: &mut dyn FnMut(u64, u64)) -> Result<VerifyReport, StoreError> {
        // The head first: a daemon may extend the table meanwhile, never shorten it.
        let head = self.head_file()?;
        let mut report = VerifyReport {
            head,
            ..VerifyReport::default()
        };
        let total = self.last_seq()?;
        let started = Instant::now();
        loop {
            if let Some(problem) = self.walk_from(&mut report, total, progress)? {
                report.problem = Some(problem);
                return Ok(report);
            }
            match head {
                Some(h) if h.seq > report.last.seq => {
                    // A running daemon pins the head before its applier has copied the rows
                    // into SQLite: wait for them a little.
                    let running = self.daemon_running();
                    if running && started.elapsed() < CATCH_UP {
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                    // After an unclean shutdown the rest is in the journal, replayed at the
                    // next open: check it there.
                    if !running {
                        if let Some(problem) = self.walk_journal(&mut report)? {
                            report.problem = Some(problem);
                            return Ok(report);
                        }
                        if report.last.seq >= h.seq {
                            report.unpinned = report.last.seq - h.seq;
                            return Ok(report);
                        }
                    }
                    report.problem = Some(Problem {
                        kind: ProblemKind::Truncated,
                        seq: report.last.seq + 1,
                        detail: if h.seq == report.last.seq + 1 {
                            format!(
                                "the tail was truncated: entry {} is missing (the pinned head \
                                 is entry {})",
                                h.seq, h.seq
                            )
                        } else {
                            format!(
                                "the tail was truncated: entries {} to {} are missing (the \
                                 pinned head is entry {})",
                                report.last.seq + 1,
                                h.seq,
                                h.seq
                            )
                        },
                    });
                }
                Some(h) => report.unpinned = report.last.seq - h.seq,
                None if report.last.seq > 0 => {
                    report.problem = Some(Problem {
                        kind: ProblemKind::HeadMissing,
                        seq: 0,
                        detail: format!(
                            "{} is missing although the table holds {} entries: a cut-off tail \
                             or a rewritten chain could not be detected",
                            self.dir.join(head::HEAD_FILE).display(),
                            report.last.seq
                        ),
                    })
                }
                None => {}
            }
            return Ok(report);
        }
    }

    /// Whether a daemon has the data dir: `/proc/locks` lists a `flock` on its lock file
    /// (read, not probed: taking the lock even briefly could make a daemon starting at that
    /// moment fail). Without `/proc/locks`, whether the pid in the lock file is alive.
    fn daemon_running(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        let path = self.dir.join(LOCK_FILE_NAME);
        let Ok(meta) = std::fs::metadata(&path) else {
            return false;
        };
        if let Ok(locks) = std::fs::read_to_string("/proc/locks") {
            let ino = format!(":{}", meta.ino());
            return locks.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.get(1) == Some(&"FLOCK")
                    && f.get(5).is_some_and(|dev_ino| dev_ino.ends_with(&ino))
            });
        }
        match std::fs::read_to_string(&path).map(|t| t.trim().parse::<i32>()) {
            // SAFETY: kill with signal 0 only checks that the process exists.
            Ok(Ok(pid)) if pid > 0 => unsafe { libc::kill(pid, 0) == 0 },
            _ => false,
        }
    }

    /// Extends `report` with the audit entries of journal records SQLite has not applied yet
    /// (an unclean shutdown), chaining them as the replay will. They are entries the store
    /// acknowledged; only their numbering and chaining is done at replay, so what is checked
    /// is that they continue the table and reach the head.
    fn walk_journal(&self, report: &mut VerifyReport) -> Result<Option<Problem>, StoreError> {
        let applied: u64 = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                [super::schema::APPLIED_SEQ_KEY],
                |r| r.get::<_, String>(0),
            )
            .optional()
            .map_err(|e| self.sql(e))?
            .map_or(Ok(0), |v| v.trim().parse())
            .map_err(|_| {
                StoreError::Corrupt(format!(
                    "{}: store.applied_seq is not a number",
                    self.db.display()
                ))
            })?;
        let mut chain = report.last;
        let mut in_journal = 0u64;
        super::journal::Journal::scan(&self.dir.join(super::JOURNAL_DIR), applied, &mut |group| {
            for r in group {
                for c in &r.batch.changes {
                    if let crate::Change::Audit(e) = c {
                        chain.advance(&crate::audit::canonical_body(e));
                        in_journal += 1;
                    }
                }
            }
            Ok(())
        })?;
        if in_journal == 0 {
            return Ok(None);
        }
        if let Some(h) = report.head {
            if (report.last.seq + 1..=chain.seq).contains(&h.seq) {
                // The head falls inside the journal's entries: recompute up to it.
                let mut at = report.last;
                let mut hash_at_head = None;
                super::journal::Journal::scan(
                    &self.dir.join(super::JOURNAL_DIR),
                    applied,
                    &mut |group| {
                        for r in group {
                            for c in &r.batch.changes {
                                if let crate::Change::Audit(e) = c {
                                    at.advance(&crate::audit::canonical_body(e));
                                    if at.seq == h.seq {
                                        hash_at_head = Some(at.hash);
                                    }
                                }
                            }
                        }
                        Ok(())
                    },
                )?;
                if hash_at_head != Some(h.hash) {
                    return Ok(Some(Problem {
                        kind: ProblemKind::Altered,
                        seq: h.seq,
                        detail: format!(
                            "entry {} (in the journal, not yet applied) does not match the \
                             pinned head: the chain was rewritten",
                            h.seq
                        ),
                    }));
                }
            }
        }
        report.entries += in_journal;
        report.last = chain;
        report.in_journal = in_journal;
        Ok(None)
    }

    /// Checks every row after `report.last`, extending it; returns the first problem.
    fn walk_from(
        &self,
        report: &mut VerifyReport,
        total: u64,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Option<Problem>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {RECORD_COLUMNS} FROM audit WHERE seq > ?1 ORDER BY seq"
            ))
            .map_err(|e| self.sql(e))?;
        let mut rows = stmt
            .query([report.last.seq as i64])
            .map_err(|e| self.sql(e))?;
        let mut body = Vec::with_capacity(512);
        while let Some(row) = rows.next().map_err(|e| self.sql(e))? {
            let expected = report.last.seq + 1;
            let seq = row.get::<_, i64>(0).map_err(|e| self.sql(e))? as u64;
            if seq != expected {
                let count = seq.saturating_sub(expected);
                return Ok(Some(Problem {
                    kind: ProblemKind::Dropped,
                    seq: expected,
                    detail: if count == 1 {
                        format!(
                            "entry {expected} was dropped (the table goes from {} to {seq})",
                            expected - 1
                        )
                    } else {
                        format!(
                            "entries {expected} to {} were dropped (the table goes from {} to {seq})",
                            seq - 1,
                            expected - 1
                        )
                    },
                }));
            }
            let prev = report.last.hash;
            // Fast path: encode straight from the row's borrowed values, no allocation.
            let hash = match fast_check(row, seq, &prev, &mut body) {
                Some(hash) => hash,
                None => {
                    let rec = match record_of(row) {
                        Ok(r) => r,
                        Err(e) => {
                            return Ok(Some(Problem {
                                kind: ProblemKind::Altered,
                                seq,
                                detail: format!(
                                    "entry {seq} was altered: it does not read back ({e})"
                                ),
                            }))
                        }
                    };
                    if rec.prev_hash != prev || !rec.self_valid() {
                        return self.classify(&rec, prev).map(Some);
                    }
                    rec.hash
                }
            };
            if let Some(h) = report.head {
                if h.seq == seq && h.hash != hash {
                    return Ok(Some(Problem {
                        kind: ProblemKind::Altered,
                        seq,
                        detail: format!(
                            "entry {seq} does not match the pinned head: the chain was rewritten \
                             up to it"
                        ),
                    }));
                }
            }
            report.last = ChainHead { seq, hash };
            report.entries += 1;
            if seq & 8191 == 0 {
                progress(seq, total.max(seq));
            }
        }
        progress(report.last.seq, total.max(report.last.seq));
        Ok(None)
    }

    /// Tells what happened at `rec`, the first entry that does not verify (`prev` being the
    /// hash of the last good one).
    fn classify(&self, rec: &AuditRecord, prev: [u8; 32]) -> Result<Problem, StoreError> {
        let s = rec.seq;
        let problem = |kind, seq, detail: String| Problem { kind, seq, detail };
        let next_links_to_prev = self.row_at(s + 1)?.is_some_and(|n| n.prev_hash == prev);
        let links = rec.prev_hash == prev;
        if links {
            // In place and chained, but its content does not give its hash.
            return Ok(if next_links_to_prev {
                problem(
                    ProblemKind::Inserted,
                    s,
                    format!(
                        "entry {s} was inserted: the entry after it chains to entry {}",
                        s - 1
                    ),
                )
            } else {
                problem(
                    ProblemKind::Altered,
                    s,
                    format!("entry {s} was altered: its content does not match its hash"),
                )
            });
        }
        Ok(match self.origin(rec)? {
            None if next_links_to_prev => problem(
                ProblemKind::Inserted,
                s,
                format!(
                    "entry {s} was inserted: the entry after it chains to entry {}",
                    s - 1
                ),
            ),
            None => problem(
                ProblemKind::Altered,
                s,
                format!(
                    "entry {s} was altered: neither its content nor its link matches the chain"
                ),
            ),
            Some(o) if o == s => {
                if next_links_to_prev {
                    problem(
                        ProblemKind::Inserted,
                        s,
                        format!(
                            "entry {s} was inserted: the entry after it chains to entry {}",
                            s - 1
                        ),
                    )
                } else {
                    // Consistent in itself, so the entry before it changed (and was re-hashed).
                    problem(
                        ProblemKind::Altered,
                        s - 1,
                        format!(
                            "entry {} was altered (and re-hashed): entry {s} no longer chains to it",
                            s - 1
                        ),
                    )
                }
            }
            Some(o) if o < s => problem(
                ProblemKind::Inserted,
                o,
                format!(
                    "{} inserted at entry {o}: the entry now numbered {s} was recorded as {o}",
                    if s - o == 1 {
                        "an entry was".to_string()
                    } else {
                        format!("{} entries were", s - o)
                    }
                ),
            ),
            Some(o) => {
                if self.some_row_links_to(&prev)? {
                    problem(
                        ProblemKind::Reordered,
                        s,
                        format!("entry {s} is out of order: it holds the entry recorded as {o}"),
                    )
                } else {
                    problem(
                        ProblemKind::Dropped,
                        s,
                        format!(
                            "entries {s} to {} were dropped (and the rest renumbered)",
                            o - 1
                        ),
                    )
                }
            }
        })
    }

    /// The seq under which `rec` was recorded: the one that, with its content and its stored
    /// link, gives its stored hash.
    fn origin(&self, rec: &AuditRecord) -> Result<Option<u64>, StoreError> {
        let valid = |o: u64| o > 0 && entry_hash(&rec.prev_hash, o, &rec.entry) == rec.hash;
        if rec.prev_hash == GENESIS && valid(1) {
            return Ok(Some(1));
        }
        let linked: Option<i64> = self
            .conn
            .query_row(
                "SELECT seq FROM audit WHERE hash = ?1 LIMIT 1",
                [&rec.prev_hash[..]],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.sql(e))?;
        if let Some(k) = linked {
            if valid(k as u64 + 1) {
                return Ok(Some(k as u64 + 1));
            }
        }
        let lo = rec.seq.saturating_sub(ORIGIN_WINDOW).max(1);
        Ok((lo..=rec.seq.saturating_add(ORIGIN_WINDOW)).find(|&o| valid(o)))
    }

    fn row_at(&self, seq: u64) -> Result<Option<AuditRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {RECORD_COLUMNS} FROM audit WHERE seq = ?1"
            ))
            .map_err(|e| self.sql(e))?;
        let mut rows = stmt.query([seq as i64]).map_err(|e| self.sql(e))?;
        match rows.next().map_err(|e| self.sql(e))? {
            Some(row) => Ok(record_of(row).ok()),
            None => Ok(None),
        }
    }

    fn some_row_links_to(&self, hash: &[u8; 32]) -> Result<bool, StoreError> {
        self.conn
            .query_row(
                "SELECT count(*) FROM audit WHERE prev_hash = ?1",
                [&hash[..]],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n > 0)
            .map_err(|e| self.sql(e))
    }
}
