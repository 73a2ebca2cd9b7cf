//! Exclusive ownership of a data dir: one daemon at a time, enforced by `flock`.
//!
//! SQLite's own locking would let a second daemon open the database and then fail (or wait) on
//! its first write; the lock file makes the second daemon fail at open instead, with a clear
//! message. `flock` locks belong to the open file description, so the kernel releases this one
//! when the daemon exits for any reason, `kill -9` included: no stale-lock cleanup is needed.

use super::errors;
use crate::StoreError;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// Name of the lock file inside the data dir.
pub(super) const LOCK_FILE: &str = "agentfs.lock";

/// Held for the store's lifetime; dropping it (closing the fd) releases the lock.
pub(super) struct DirLock {
    _file: File,
}

/// Takes the exclusive lock on `dir`, or fails at once with [`StoreError::Locked`] naming
/// `db` (and the holder's pid when it wrote one).
pub(super) fn lock_dir(dir: &Path, db: &Path) -> Result<DirLock, StoreError> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| errors::io(e, &path))?;
    // SAFETY: `file` is an open descriptor for the duration of the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() {
                String::new()
            } else {
                format!(" (pid {holder})")
            };
            return Err(StoreError::Locked(format!("{}{who}", db.display())));
        }
        return Err(errors::io(err, &path));
    }
    // Best effort: the pid only makes the error message of a second daemon more helpful.
    let _ = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| write!(file, "{}", std::process::id()));
    Ok(DirLock { _file: file })
}
