//! Errors of the filesystem core. The FUSE adapter maps each variant to one errno in a single
//! exhaustive match (`fuse::errno`), so adding a variant forces a decision there.

use agentfs_memory::StoreError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum VfsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    /// No file of the tree takes an ioctl (it is not a terminal or a device).
    #[error("inappropriate ioctl for device")]
    NoIoctl,
    /// Another agent's tree, or a policy refusal.
    #[error("access denied: {0}")]
    AccessDenied(&'static str),
    /// The operation is never allowed on this object (structural dirs, append-only logs, sys/).
    #[error("operation not permitted: {0}")]
    NotPermitted(&'static str),
    /// `policy/` trees are read-only for everyone.
    #[error("read-only: {0}")]
    ReadOnly(&'static str),
    /// Rename or link across memory classes or agents.
    #[error("cross-class rename or link")]
    CrossDevice,
    #[error("name too long (over 255 bytes)")]
    NameTooLong,
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    #[error("file too large")]
    FileTooBig,
    #[error("bad file handle")]
    BadHandle,
    #[error("no such extended attribute")]
    NoXattr,
    #[error("buffer too small")]
    Range,
    #[error("not supported: {0}")]
    NotSupported(&'static str),
    #[error("no space left on the data dir's filesystem")]
    NoSpace,
    #[error("{0}")]
    Store(StoreError),
    /// A pid written to a `pids` file names no live process.
    #[error("no such process")]
    NoProcess,
    /// The object is in use by something else (a process bound to another agent).
    #[error("busy: {0}")]
    Busy(&'static str),
    /// Refused by a policy rule (action `deny` or `kill`).
    #[error("{0}")]
    Refused(Box<Refusal>),
    /// The semantic-memory index failed (not a bad query: that is an answer, not an error).
    #[error("search index: {0}")]
    Search(String),
}

/// A call the policy refused: which rule, why, and whether the agent was killed for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub rule: String,
    pub reason: String,
    pub killed: bool,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let action = if self.killed { "kill" } else { "deny" };
        write!(f, "refused by policy rule `{}` ({action})", self.rule)?;
        if !self.reason.is_empty() {
            write!(f, ": {}", self.reason)?;
        }
        Ok(())
    }
}

impl From<StoreError> for VfsError {
    fn from(e: StoreError) -> Self {
        if e.is_no_space() {
            VfsError::NoSpace
        } else {
            VfsError::Store(e)
        }
    }
}

pub type Result<T> = std::result::Result<T, VfsError>;

impl VfsError {
    /// The errno a caller gets. The single mapping from core errors to errno: exhaustive, so
    /// a new variant cannot be added without deciding its errno here.
    pub fn errno(&self) -> i32 {
        match self {
            VfsError::NotFound => libc::ENOENT,
            VfsError::Exists => libc::EEXIST,
            VfsError::NotDir => libc::ENOTDIR,
            VfsError::IsDir => libc::EISDIR,
            VfsError::NotEmpty => libc::ENOTEMPTY,
            VfsError::NoIoctl => libc::ENOTTY,
            VfsError::AccessDenied(_) => libc::EACCES,
            VfsError::NotPermitted(_) => libc::EPERM,
            VfsError::ReadOnly(_) => libc::EROFS,
            VfsError::CrossDevice => libc::EXDEV,
            VfsError::NameTooLong => libc::ENAMETOOLONG,
            VfsError::Invalid(_) => libc::EINVAL,
            VfsError::FileTooBig => libc::EFBIG,
            VfsError::BadHandle => libc::EBADF,
            VfsError::NoXattr => libc::ENODATA,
            VfsError::Range => libc::ERANGE,
            VfsError::NotSupported(_) => libc::EOPNOTSUPP,
            VfsError::NoSpace => libc::ENOSPC,
            VfsError::Store(_) => libc::EIO,
            VfsError::Refused(_) => libc::EACCES,
            VfsError::NoProcess => libc::ESRCH,
            VfsError::Busy(_) => libc::EBUSY,
            VfsError::Search(_) => libc::EIO,
        }
    }
}
