use thiserror::Error;

/// Why a store operation failed. The filesystem core maps these to errno.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The disk (or the quota of the filesystem holding the data dir) is full.
    #[error("no space left for the store: {0}")]
    NoSpace(String),
    /// Another daemon holds the database.
    #[error("the database {0} is in use by another agentfs daemon")]
    Locked(String),
    /// The stored data is not what it should be (bad hash, missing chunk, bad row).
    #[error("store corrupt: {0}")]
    Corrupt(String),
    /// A chunk was asked for that the store does not hold.
    #[error("chunk {0} not found")]
    MissingChunk(String),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl StoreError {
    /// True when retrying after freeing space could succeed.
    pub fn is_no_space(&self) -> bool {
        match self {
            StoreError::NoSpace(_) => true,
            StoreError::Io(e) => e.raw_os_error() == Some(libc::ENOSPC),
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                e.code == rusqlite::ErrorCode::DiskFull
            }
            _ => false,
        }
    }
}
