//! Turning SQLite and I/O failures into [`StoreError`]s that say which file is at fault.

use crate::StoreError;
use rusqlite::ErrorCode;
use std::io;
use std::path::Path;

/// Maps a SQLite error on the database at `db`: a full disk becomes `NoSpace`, a damaged file
/// `Corrupt`, both naming the file; anything else stays a plain `Sqlite` error.
pub(super) fn sql(e: rusqlite::Error, db: &Path) -> StoreError {
    match sqlite_code(&e) {
        Some(ErrorCode::DiskFull) => StoreError::NoSpace(format!("{}: {e}", db.display())),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
            StoreError::Corrupt(format!("{}: {e}", db.display()))
        }
        _ => StoreError::Sqlite(e),
    }
}

/// Like [`sql`], for errors while opening: there `SQLITE_BUSY`/`SQLITE_LOCKED` mean another
/// process (one that did not take our lock file, e.g. a `sqlite3` shell) holds the database.
pub(super) fn sql_at_open(e: rusqlite::Error, db: &Path) -> StoreError {
    match sqlite_code(&e) {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            StoreError::Locked(db.display().to_string())
        }
        _ => sql(e, db),
    }
}

/// Maps an I/O error on `path`: out of space (or quota) becomes `NoSpace` naming the file.
pub(super) fn io(e: io::Error, path: &Path) -> StoreError {
    match e.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT) => {
            StoreError::NoSpace(format!("{}: {e}", path.display()))
        }
        _ => StoreError::Io(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    }
}

fn sqlite_code(e: &rusqlite::Error) -> Option<ErrorCode> {
    match e {
        rusqlite::Error::SqliteFailure(f, _) => Some(f.code),
        _ => None,
    }
}
