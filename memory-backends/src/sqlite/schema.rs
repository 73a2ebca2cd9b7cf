//! The database schema, its version check and the connection settings.
//!
//! `docs/storage.md` explains each table. Integers the core keeps as `u64` (inode numbers,
//! chunk indexes, sizes) are stored as the `i64` with the same bits, SQLite having no unsigned
//! type; values below 2^63 (all real ones) therefore keep their order.

use super::errors;
use crate::audit::ChainHead;
use crate::{AuditEntry, StoreError};
use rusqlite::{Connection, OptionalExtension};
use std::path::Path;
use std::time::Duration;

/// Version written by this code. Bump it (and add a migration) on any schema change.
pub(super) const SCHEMA_VERSION: u32 = 4;

/// Meta key holding the schema version.
pub(super) const VERSION_KEY: &str = "schema_version";

/// Meta key a durable transaction bumps so that it always writes (see `tables::bump_sync_seq`).
pub(super) const SYNC_SEQ_KEY: &str = "store.sync_seq";

/// Meta key holding the sequence number of the last journal record applied to the database.
pub(super) const APPLIED_SEQ_KEY: &str = "store.applied_seq";

const DDL: &str = r#"
CREATE TABLE IF NOT EXISTS meta(
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS inodes(
    ino INTEGER PRIMARY KEY,
    kind INTEGER NOT NULL,
    perm INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    nlink INTEGER NOT NULL,
    size INTEGER NOT NULL,
    atime INTEGER NOT NULL,
    mtime INTEGER NOT NULL,
    ctime INTEGER NOT NULL,
    crtime INTEGER NOT NULL,
    rdev INTEGER NOT NULL,
    symlink_target BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS dirents(
    parent INTEGER NOT NULL,
    name BLOB NOT NULL,
    ino INTEGER NOT NULL,
    PRIMARY KEY(parent, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chunks(
    ino INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY(ino, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS xattrs(
    ino INTEGER NOT NULL,
    name BLOB NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY(ino, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blobs(
    hash BLOB PRIMARY KEY,
    pack INTEGER NOT NULL,
    "offset" INTEGER NOT NULL,
    len INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit(
    seq INTEGER PRIMARY KEY,
    time INTEGER NOT NULL,
    agent TEXT NOT NULL,
    pid INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    op TEXT NOT NULL,
    path TEXT NOT NULL,
    result INTEGER NOT NULL,
    size INTEGER NOT NULL,
    target TEXT NOT NULL DEFAULT '',
    "offset" INTEGER NOT NULL DEFAULT 0,
    data_hash BLOB,
    decision TEXT NOT NULL DEFAULT '',
    rule TEXT NOT NULL DEFAULT '',
    policy BLOB,
    detail TEXT NOT NULL DEFAULT '',
    prev_hash BLOB,
    hash BLOB
);
"#;

/// The `appends` table (version 4): created with the rest, and by the 3 → 4 migration.
const APPENDS_DDL: &str = r#"
CREATE TABLE IF NOT EXISTS appends(
    ino INTEGER NOT NULL,
    "offset" INTEGER NOT NULL,
    len INTEGER NOT NULL,
    time INTEGER NOT NULL,
    PRIMARY KEY(ino, "offset")
) WITHOUT ROWID;
"#;

/// Version 4 keeps the time of every append to an episodic log (`appends`).
const MIGRATE_3_TO_4_END: &str = "UPDATE meta SET value = '4' WHERE key = 'schema_version';";

/// Version 2 added the policy decision and the fields the flight recorder needs to the
/// audit table; older rows get empty values.
const MIGRATE_1_TO_2: &str = r#"
BEGIN IMMEDIATE;
ALTER TABLE audit ADD COLUMN target TEXT NOT NULL DEFAULT '';
ALTER TABLE audit ADD COLUMN "offset" INTEGER NOT NULL DEFAULT 0;
ALTER TABLE audit ADD COLUMN data_hash BLOB;
ALTER TABLE audit ADD COLUMN decision TEXT NOT NULL DEFAULT '';
ALTER TABLE audit ADD COLUMN rule TEXT NOT NULL DEFAULT '';
ALTER TABLE audit ADD COLUMN policy BLOB;
ALTER TABLE audit ADD COLUMN detail TEXT NOT NULL DEFAULT '';
UPDATE meta SET value = '2' WHERE key = 'schema_version';
COMMIT;
"#;

/// Version 3 chains the audit rows: `prev_hash` and `hash` (see `crate::audit`). Existing
/// rows are chained in seq order by [`migrate_2_to_3`].
const ADD_CHAIN_COLUMNS: &str = r#"
ALTER TABLE audit ADD COLUMN prev_hash BLOB;
ALTER TABLE audit ADD COLUMN hash BLOB;
"#;

/// Connection settings; see `docs/storage.md`.
pub(super) fn configure(conn: &Connection, db: &Path) -> Result<(), StoreError> {
    let err = |e| errors::sql_at_open(e, db);
    // A second writer must fail at once, never wait: our flock already serialises daemons, so
    // a busy database means something else is in it.
    conn.busy_timeout(Duration::ZERO).map_err(err)?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Io(std::io::Error::other(format!(
            "{}: SQLite kept journal_mode={mode}; agentfs needs WAL (does this filesystem \
             support shared memory maps?)",
            db.display()
        ))));
    }
    // NORMAL: a commit writes the WAL without fsync; it survives kill -9 (the page cache
    // outlives the process) and the database stays consistent on power loss. Disk-durable
    // commits switch to FULL for one transaction.
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(err)?;
    conn.pragma_update(None, "foreign_keys", "OFF")
        .map_err(err)?;
    // Temporary tables (a snapshot's copy map, `tables::copy_nodes`) in RAM: never a temp
    // file outside the data dir.
    conn.pragma_update(None, "temp_store", "MEMORY")
        .map_err(err)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

/// Creates the tables in an empty database (when `create`) or checks the version of an
/// existing one.
pub(super) fn init_or_check(conn: &Connection, db: &Path, create: bool) -> Result<(), StoreError> {
    let has_meta: bool = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_err(|e| errors::sql_at_open(e, db))?
        > 0;
    if !has_meta {
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(|e| errors::sql_at_open(e, db))?;
        if tables > 0 {
            return Err(StoreError::Corrupt(format!(
                "{}: an SQLite database, but not an agentfs one (no meta table)",
                db.display()
            )));
        }
        if !create {
            return Err(StoreError::Corrupt(format!(
                "{}: the database is empty (an interrupted create?); open with create to \
                 initialise it",
                db.display()
            )));
        }
        let batch = format!(
            "BEGIN IMMEDIATE; {DDL} {APPENDS_DDL} INSERT INTO meta(key, value) VALUES('{VERSION_KEY}', \
             '{SCHEMA_VERSION}'); COMMIT;"
        );
        return conn
            .execute_batch(&batch)
            .map_err(|e| errors::sql_at_open(e, db));
    }
    let version: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = ?1",
            [VERSION_KEY],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| errors::sql_at_open(e, db))?;
    let Some(version) = version else {
        return Err(StoreError::Corrupt(format!(
            "{}: meta has no {VERSION_KEY}",
            db.display()
        )));
    };
    match version.trim().parse::<u32>() {
        Ok(v) if v == SCHEMA_VERSION => Ok(()),
        Ok(v) if v > SCHEMA_VERSION => Err(StoreError::Corrupt(format!(
            "{}: schema version {v} is newer than this agentfs understands \
             ({SCHEMA_VERSION}); run a newer agentfs",
            db.display()
        ))),
        Ok(1) => {
            conn.execute_batch(MIGRATE_1_TO_2)
                .map_err(|e| errors::sql_at_open(e, db))?;
            migrate_2_to_3(conn, db)?;
            migrate_3_to_4(conn, db)
        }
        Ok(2) => {
            migrate_2_to_3(conn, db)?;
            migrate_3_to_4(conn, db)
        }
        Ok(3) => migrate_3_to_4(conn, db),
        Ok(v) => Err(StoreError::Corrupt(format!(
            "{}: schema version {v} is older than {SCHEMA_VERSION} and no migration exists",
            db.display()
        ))),
        Err(_) => Err(StoreError::Corrupt(format!(
            "{}: {VERSION_KEY} is {version:?}, not a number",
            db.display()
        ))),
    }
}

fn migrate_3_to_4(conn: &Connection, db: &Path) -> Result<(), StoreError> {
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE; {APPENDS_DDL} {MIGRATE_3_TO_4_END} COMMIT;"
    ))
    .map_err(|e| errors::sql_at_open(e, db))
}

/// Adds the chain columns and chains every existing row, in seq order, in one transaction. The
/// head file is written (durably) before the version is bumped, so a crash in between re-runs
/// the migration, which computes the same chain again.
fn migrate_2_to_3(conn: &Connection, db: &Path) -> Result<(), StoreError> {
    let sql = |e| errors::sql_at_open(e, db);
    conn.execute_batch("BEGIN IMMEDIATE").map_err(sql)?;
    let result = (|| {
        conn.execute_batch(ADD_CHAIN_COLUMNS).map_err(sql)?;
        let mut head = ChainHead::default();
        {
            let mut read = conn
                .prepare(&format!(
                    "SELECT {} FROM audit ORDER BY seq",
                    super::auditlog::ENTRY_COLUMNS
                ))
                .map_err(sql)?;
            let mut update = conn
                .prepare("UPDATE audit SET prev_hash = ?1, hash = ?2 WHERE seq = ?3")
                .map_err(sql)?;
            let mut rows = read.query([]).map_err(sql)?;
            while let Some(row) = rows.next().map_err(sql)? {
                let (seq, entry): (u64, AuditEntry) =
                    super::auditlog::entry_of(row).map_err(sql)?;
                let prev = head.hash;
                let hash = crate::audit::entry_hash(&prev, seq, &entry);
                head = ChainHead { seq, hash };
                update
                    .execute(rusqlite::params![&prev[..], &hash[..], seq as i64])
                    .map_err(sql)?;
            }
        }
        let dir = db.parent().unwrap_or(Path::new("."));
        super::head::write(dir, head, true)?;
        conn.execute("UPDATE meta SET value = '3' WHERE key = ?1", [VERSION_KEY])
            .map_err(sql)?;
        conn.execute_batch("COMMIT").map_err(sql)
    })();
    if result.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    result
}
