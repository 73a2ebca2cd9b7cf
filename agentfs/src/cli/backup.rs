//! `agentfs backup [--data-dir D] DEST`: a consistent copy of a data dir, also while a daemon
//! has it mounted and writing (docs/operations.md#backup).
//!
//! While mounted (another process holds the store's lock):
//! 1. read `audit.head` first (the daemon only ever moves it forwards);
//! 2. copy `agentfs.db` with SQLite's online backup API: one read transaction, so the copy is
//!    the database as of the applier's last transaction, a consistent cut of the journal;
//!    repeated until that cut holds every entry the head names (the applier trails the head
//!    by milliseconds), so the copy's chain verifies against the copied head;
//! 3. copy each pack file up to the last byte a `blobs` row of the copy points at (packs only
//!    grow, and a chunk's bytes are written before the row that names it is committed).
//!
//! The journal is not copied: its records not yet applied are newer than the cut.
//! Offline, the lock is taken for the duration (no daemon can start meanwhile) and the
//! journal and whole packs are copied as well, since after a crash the journal may hold
//! commits the database does not.
//!
//! Everything is written into `DEST.partial`, fsynced, renamed to DEST, and then checked with
//! the same code as `agentfs audit verify`.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agentfs_memory::audit::hex;
use agentfs_memory::{read_audit_head, AuditLog, ChainHead, AUDIT_HEAD_FILE};
use clap::Args;
use rusqlite::{Connection, OpenFlags};

use crate::cli::{progress, style};
use crate::datadir;
use crate::error::{reason, CliError};

const PACKS_DIR: &str = "packs";
const JOURNAL_DIR: &str = "journal";
/// How long to wait for the applier to catch up with the head read before the copy.
const CATCH_UP: Duration = Duration::from_secs(30);

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The directory to create with the copy (must not exist; its parent must)
    #[arg(value_name = "DEST")]
    pub dest: PathBuf,
    /// Data dir to copy (default: $AGENTFS_DATA_DIR, $XDG_DATA_HOME/agentfs,
    /// ~/.local/share/agentfs)
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Print one JSON object describing the copy instead of a sentence
    #[arg(long)]
    pub json: bool,
}

/// What a backup copied, as `--json` prints it.
#[derive(Debug, serde::Serialize)]
struct Summary {
    data_dir: String,
    dest: String,
    /// `online` (a daemon held the data dir) or `offline`.
    mode: &'static str,
    /// The last journal record the copied database holds (`store.applied_seq`).
    applied_seq: u64,
    db_bytes: u64,
    packs: u64,
    pack_bytes: u64,
    /// Journal segments copied (offline only).
    journal_files: u64,
    audit: AuditSummary,
    seconds: f64,
}

#[derive(Debug, serde::Serialize)]
struct AuditSummary {
    entries: u64,
    last_seq: u64,
    last_hash: String,
    /// The copied head file's seq (`null` for a store without entries).
    head_seq: Option<u64>,
}

/// `DIR/gc.hold` with our pid, removed on drop: the daemon skips garbage collection rounds
/// while it names a live process.
struct GcHold(PathBuf);

impl GcHold {
    fn take(dir: &Path) -> Result<GcHold, CliError> {
        let path = dir.join(agentfs_vfs::GC_HOLD_FILE);
        std::fs::write(&path, format!("{}\n", std::process::id()))
            .map_err(|e| io_err(&path, &e))?;
        Ok(GcHold(path))
    }
}

impl Drop for GcHold {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn io_err(path: &Path, err: &std::io::Error) -> CliError {
    CliError::Reported(format!("{}: {}", path.display(), reason(err)))
}

fn sql_err(path: &Path, err: rusqlite::Error) -> CliError {
    CliError::Reported(format!("{}: {err}", path.display()))
}

pub fn run(args: BackupArgs) -> Result<(), CliError> {
    let started = Instant::now();
    let src = datadir::resolve_from_env(args.data_dir.as_deref())?;
    if !src.join(datadir::DB_FILE).is_file() {
        return Err(CliError::Reported(format!(
            "{} holds no agentfs store (no {})",
            src.display(),
            datadir::DB_FILE
        )));
    }
    let dest = std::path::absolute(&args.dest).map_err(|e| io_err(&args.dest, &e))?;
    if dest.symlink_metadata().is_ok() {
        return Err(CliError::Reported(format!(
            "{} exists already; a backup goes into a new directory",
            dest.display()
        )));
    }
    let staging = partial_dir(&dest);
    if staging.symlink_metadata().is_ok() {
        return Err(CliError::Reported(format!(
            "{} exists (an interrupted backup?); remove it first",
            staging.display()
        )));
    }
    let show = progress::wanted(args.json);
    // A daemon that stops (or dies) during an online copy leaves the lock free at the end:
    // the copy may then lack commits only its journal holds, so it is taken again offline.
    let mut copied = None;
    for _ in 0..3 {
        std::fs::create_dir(&staging).map_err(|e| io_err(&staging, &e))?;
        let result = copy_into(&src, &staging, show);
        match result {
            Ok(Some(c)) => {
                copied = Some(c);
                break;
            }
            Ok(None) => {
                std::fs::remove_dir_all(&staging).map_err(|e| io_err(&staging, &e))?;
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(e);
            }
        }
    }
    let Some(copied) = copied else {
        return Err(CliError::Reported(format!(
            "the daemon of {} kept starting and stopping during the backup; try again",
            src.display()
        )));
    };
    std::fs::rename(&staging, &dest).map_err(|e| io_err(&dest, &e))?;
    if let Some(parent) = dest.parent() {
        sync_dir(parent)?;
    }
    let audit = verify(&dest, show)?;
    remove_empty_wal(&dest);
    let summary = Summary {
        data_dir: std::path::absolute(&src)
            .unwrap_or(src)
            .display()
            .to_string(),
        dest: dest.display().to_string(),
        mode: if copied.online { "online" } else { "offline" },
        applied_seq: copied.applied_seq,
        db_bytes: copied.db_bytes,
        packs: copied.packs,
        pack_bytes: copied.pack_bytes,
        journal_files: copied.journal_files,
        audit,
        seconds: started.elapsed().as_secs_f64(),
    };
    if args.json {
        let text = serde_json::to_string(&summary)
            .map_err(|e| CliError::Reported(format!("cannot encode the summary: {e}")))?;
        println!("{text}");
    } else {
        print_summary(&summary);
    }
    Ok(())
}

fn print_summary(s: &Summary) {
    let ok = style::Painter::for_stream(style::Stream::Stdout).paint(style::GOOD, "ok");
    println!(
        "backed up {} to {} ({}): database {} (journal record {}), {} pack file(s) {}{}; \
         audit chain {ok}: {} entries, last {}; {:.2} s",
        s.data_dir,
        s.dest,
        s.mode,
        human_bytes(s.db_bytes),
        s.applied_seq,
        s.packs,
        human_bytes(s.pack_bytes),
        if s.journal_files > 0 {
            format!(", {} journal segment(s)", s.journal_files)
        } else {
            String::new()
        },
        s.audit.entries,
        s.audit.last_seq,
        s.seconds
    );
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = "B";
    for u in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// `DEST.partial`, beside DEST.
fn partial_dir(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    dest.with_file_name(name)
}

struct Copied {
    online: bool,
    applied_seq: u64,
    db_bytes: u64,
    packs: u64,
    pack_bytes: u64,
    journal_files: u64,
}

/// Copies the store of `src` into the (empty) directory `to`; `None` when the daemon went
/// away during an online copy (the caller starts again).
fn copy_into(src: &Path, to: &Path, show: bool) -> Result<Option<Copied>, CliError> {
    // Offline, hold the store's lock so no daemon opens (and changes) it while we copy.
    let lock_path = src.join(datadir::LOCK_FILE);
    let lock = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|e| io_err(&lock_path, &e))?;
    let online = !crate::sys::try_lock_exclusive(&lock).map_err(|e| io_err(&lock_path, &e))?;
    // While we copy, the daemon's garbage collector must not punch out chunks our copy of
    // the database names (a file deleted meanwhile frees its chunks two rounds later).
    let _hold = if online {
        Some(GcHold::take(src)?)
    } else {
        None
    };

    // The head before the database: the daemon moves it only forwards, so a later cut of the
    // database holds at least the entries it names. Read once, copied as read, parsed from
    // the copy (a second read could see a newer head).
    let head_path = src.join(AUDIT_HEAD_FILE);
    match std::fs::read(&head_path) {
        Ok(bytes) => write_synced(&to.join(AUDIT_HEAD_FILE), &bytes)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&head_path, &e)),
    }
    let head = read_audit_head(to).map_err(|e| CliError::Reported(e.to_string()))?;
    let db = to.join(datadir::DB_FILE);
    let spinner = progress::spinner(show, "copying the database");
    let deadline = Instant::now() + CATCH_UP;
    loop {
        backup_db(&src.join(datadir::DB_FILE), &db)?;
        let last = audit_last_seq(&db)?;
        // Offline the journal comes along, and it holds whatever the table lacks.
        let caught_up = !online || head.is_none_or(|h: ChainHead| last >= h.seq);
        if caught_up {
            break;
        }
        if daemon_gone(&lock, &lock_path)? {
            spinner.finish_and_clear();
            return Ok(None);
        }
        if Instant::now() > deadline {
            spinner.finish_and_clear();
            return Err(CliError::Reported(format!(
                "the database of {} stayed behind its audit head (entry {} of {}) for {} s; \
                 is the daemon stuck? see {}",
                src.display(),
                last,
                head.map_or(0, |h| h.seq),
                CATCH_UP.as_secs(),
                datadir::log_file(src).display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    spinner.finish_and_clear();
    let db_bytes = file_len(&db)?;
    let applied_seq = applied_seq(&db)?;

    let packs_to = to.join(PACKS_DIR);
    std::fs::create_dir(&packs_to).map_err(|e| io_err(&packs_to, &e))?;
    let wanted = if online {
        referenced_pack_ends(&db)?
    } else {
        whole_files(&src.join(PACKS_DIR))?
    };
    let total: u64 = wanted.iter().map(|(_, len)| len).sum();
    let bar = progress::bytes(show, "copying packs", total);
    for (name, len) in &wanted {
        copy_prefix(
            &src.join(PACKS_DIR).join(name),
            &packs_to.join(name),
            *len,
            &bar,
        )?;
    }
    bar.finish_and_clear();
    sync_dir(&packs_to)?;

    let mut journal_files = 0;
    if !online {
        let journal_from = src.join(JOURNAL_DIR);
        let segments = whole_files(&journal_from)?;
        if !segments.is_empty() {
            let journal_to = to.join(JOURNAL_DIR);
            std::fs::create_dir(&journal_to).map_err(|e| io_err(&journal_to, &e))?;
            let hidden = progress::bytes(false, "", 0);
            for (name, len) in &segments {
                copy_prefix(
                    &journal_from.join(name),
                    &journal_to.join(name),
                    *len,
                    &hidden,
                )?;
            }
            sync_dir(&journal_to)?;
            journal_files = segments.len() as u64;
        }
    }
    sync_dir(to)?;
    if online && daemon_gone(&lock, &lock_path)? {
        return Ok(None);
    }
    drop(lock);
    Ok(Some(Copied {
        online,
        applied_seq,
        db_bytes,
        packs: wanted.len() as u64,
        pack_bytes: total,
        journal_files,
    }))
}

/// Whether the daemon that held the store's lock has let go of it since (a clean stop, or
/// its last thread gone after a crash). Takes the lock if so; it goes with `lock`.
fn daemon_gone(lock: &File, path: &Path) -> Result<bool, CliError> {
    crate::sys::try_lock_exclusive(lock).map_err(|e| io_err(path, &e))
}

/// SQLite's online backup of `from` into a new database `to`: all pages in one step, so in
/// one read transaction of the source (a consistent snapshot; WAL keeps the daemon writing).
fn backup_db(from: &Path, to: &Path) -> Result<(), CliError> {
    if to.exists() {
        std::fs::remove_file(to).map_err(|e| io_err(to, &e))?;
    }
    let source = Connection::open_with_flags(
        from,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| sql_err(from, e))?;
    source
        .busy_timeout(Duration::from_secs(2))
        .map_err(|e| sql_err(from, e))?;
    let mut dest = Connection::open(to).map_err(|e| sql_err(to, e))?;
    {
        use rusqlite::backup::{Backup, StepResult};
        let backup = Backup::new(&source, &mut dest).map_err(|e| sql_err(to, e))?;
        // -1: every page in one step, so in one read transaction. (Steps of N pages would
        // each see the source as it is then, and restart whenever the daemon commits.)
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match backup.step(-1).map_err(|e| sql_err(from, e))? {
                StepResult::Done => break,
                // A transient lock (a checkpoint of the daemon's): try again shortly.
                _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    return Err(CliError::Reported(format!(
                        "{}: stayed locked for 30 s; try again",
                        from.display()
                    )))
                }
            }
        }
    }
    // A copy of a WAL database is in WAL mode: fold the WAL into the file before syncing it.
    dest.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .map_err(|e| sql_err(to, e))?;
    drop(dest);
    File::open(to)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_err(to, &e))
}

fn open_copy(db: &Path) -> Result<Connection, CliError> {
    // Our own new file: read-write, so SQLite may make the WAL index it wants beside it.
    Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_WRITE).map_err(|e| sql_err(db, e))
}

fn audit_last_seq(db: &Path) -> Result<u64, CliError> {
    let conn = open_copy(db)?;
    conn.query_row("SELECT coalesce(max(seq), 0) FROM audit", [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|v| v as u64)
    .map_err(|e| sql_err(db, e))
}

fn applied_seq(db: &Path) -> Result<u64, CliError> {
    let conn = open_copy(db)?;
    let text: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'store.applied_seq'",
            [],
            |r| r.get(0),
        )
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })
        .map_err(|e| sql_err(db, e))?;
    Ok(text.and_then(|t| t.trim().parse().ok()).unwrap_or(0))
}

/// Each pack the copied database points into, with the end of the last byte it uses.
fn referenced_pack_ends(db: &Path) -> Result<Vec<(String, u64)>, CliError> {
    let conn = open_copy(db)?;
    let mut stmt = conn
        .prepare("SELECT pack, max(\"offset\" + len) FROM blobs GROUP BY pack ORDER BY pack")
        .map_err(|e| sql_err(db, e))?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
        .map_err(|e| sql_err(db, e))?;
    let mut out = Vec::new();
    for row in rows {
        let (pack, end) = row.map_err(|e| sql_err(db, e))?;
        out.push((format!("pack-{pack:06}.dat"), end.max(0) as u64));
    }
    Ok(out)
}

/// Every regular file directly in `dir` with its length, by name (none if `dir` is missing).
fn whole_files(dir: &Path) -> Result<Vec<(String, u64)>, CliError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir, &e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_err(dir, &e))?;
        let md = entry.metadata().map_err(|e| io_err(&entry.path(), &e))?;
        if md.is_file() {
            out.push((entry.file_name().to_string_lossy().into_owned(), md.len()));
        }
    }
    out.sort();
    Ok(out)
}

/// Copies the first `len` bytes of `from` into the new file `to` and fsyncs it.
fn copy_prefix(
    from: &Path,
    to: &Path,
    len: u64,
    bar: &indicatif::ProgressBar,
) -> Result<(), CliError> {
    let src = File::open(from).map_err(|e| io_err(from, &e))?;
    let have = src.metadata().map_err(|e| io_err(from, &e))?.len();
    if have < len {
        return Err(CliError::Reported(format!(
            "{}: {have} bytes, but the database names chunks up to byte {len} (a pack cut \
             short: run `agentfs audit verify` and check the store)",
            from.display()
        )));
    }
    let mut out = File::create_new(to).map_err(|e| io_err(to, &e))?;
    let mut reader = src.take(len);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).map_err(|e| io_err(from, &e))?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).map_err(|e| io_err(to, &e))?;
        bar.inc(n as u64);
    }
    out.sync_all().map_err(|e| io_err(to, &e))
}

fn file_len(path: &Path) -> Result<u64, CliError> {
    Ok(std::fs::metadata(path).map_err(|e| io_err(path, &e))?.len())
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    let mut f = File::create_new(path).map_err(|e| io_err(path, &e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| io_err(path, &e))
}

fn sync_dir(dir: &Path) -> Result<(), CliError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_err(dir, &e))
}

/// The read-only check of the copy leaves an empty WAL and its index beside the database
/// (a reader may not remove them); with no connection open they carry nothing.
fn remove_empty_wal(dest: &Path) {
    let wal = dest.join(format!("{}-wal", datadir::DB_FILE));
    if std::fs::metadata(&wal).is_ok_and(|m| m.len() == 0) {
        let _ = std::fs::remove_file(&wal);
        let _ = std::fs::remove_file(dest.join(format!("{}-shm", datadir::DB_FILE)));
    }
}

/// Checks the copy's audit chain against its head, as `agentfs audit verify` would.
fn verify(dest: &Path, show: bool) -> Result<AuditSummary, CliError> {
    let log = AuditLog::open(dest).map_err(|e| CliError::Open {
        data_dir: dest.to_path_buf(),
        msg: e.to_string(),
    })?;
    let bar = progress::counter(show, "verifying the copy", "entries", 0);
    let report = log
        .verify(&mut |done, total| {
            bar.set_length(total.max(1));
            bar.set_position(done);
        })
        .map_err(|e| CliError::Open {
            data_dir: dest.to_path_buf(),
            msg: e.to_string(),
        })?;
    bar.finish_and_clear();
    if let Some(p) = report.problem {
        return Err(CliError::Reported(format!(
            "the copy in {} does not verify: audit chain broken at entry {} ({}): {}",
            dest.display(),
            p.seq,
            p.kind.as_str(),
            p.detail
        )));
    }
    Ok(AuditSummary {
        entries: report.entries,
        last_seq: report.last.seq,
        last_hash: hex(&report.last.hash),
        head_seq: report.head.map(|h| h.seq),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_dir_is_a_sibling() {
        assert_eq!(
            partial_dir(Path::new("/b/agentfs-1")),
            PathBuf::from("/b/agentfs-1.partial")
        );
    }

    #[test]
    fn human_bytes_picks_a_unit() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
    }

    #[test]
    fn copy_prefix_copies_exactly_len_and_refuses_a_short_source() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("from");
        std::fs::write(&from, b"0123456789").unwrap();
        let hidden = progress::bytes(false, "", 0);
        copy_prefix(&from, &dir.path().join("to"), 4, &hidden).unwrap();
        assert_eq!(std::fs::read(dir.path().join("to")).unwrap(), b"0123");
        let err = copy_prefix(&from, &dir.path().join("to2"), 11, &hidden).unwrap_err();
        assert!(err.to_string().contains("cut"), "{err}");
    }
}
