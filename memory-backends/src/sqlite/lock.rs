//! Exclusive ownership of a data dir: one daemon at a time, enforced by `flock`.
//!
//! SQLite's own locking would let a second daemon open the database and then fail (or wait) on
//! its first write; the lock file makes the second daemon fail at open instead, with a clear
//! message. `flock` locks belong to the open file description, so the kernel releases this one
//! when the daemon exits for any reason, `kill -9` included: no stale-lock cleanup is needed.
//! It is released when the daemon's last thread has exited, which can be a little after its
//! main thread shows as a zombie; a new daemon waits (up to 10 s) for a holder in that state.

use super::errors;
use crate::StoreError;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

/// Name of the lock file inside the data dir.
pub(super) const LOCK_FILE: &str = "agentfs.lock";

/// How long to wait for a lock whose holder is exiting.
const DYING_HOLDER_WAIT: Duration = Duration::from_secs(10);

/// Is `pid` a process that is not exiting: it exists and is neither a zombie nor dead (its
/// main thread's state in `/proc/PID/stat`).
fn running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    match stat.rfind(')') {
        Some(i) => !matches!(stat[i + 1..].trim_start().chars().next(), Some('Z' | 'X')),
        None => true,
    }
}

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
    let started = Instant::now();
    loop {
        // SAFETY: `file` is an open descriptor for the duration of the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            break;
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(errors::io(err, &path));
        }
        let mut holder = String::new();
        let _ = file
            .rewind()
            .and_then(|()| file.read_to_string(&mut holder));
        let holder = holder.trim();
        // A daemon killed a moment ago holds the lock until its last thread has exited, which
        // can be after its main thread is already a zombie: wait for that, never for a live one.
        let dying = holder.parse::<u32>().is_ok_and(|pid| !running(pid));
        if dying && started.elapsed() < DYING_HOLDER_WAIT {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let who = if holder.is_empty() {
            String::new()
        } else {
            format!(" (pid {holder})")
        };
        return Err(StoreError::Locked(format!("{}{who}", db.display())));
    }
    // Best effort: the pid only makes the error message of a second daemon more helpful.
    let _ = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| write!(file, "{}", std::process::id()));
    Ok(DirLock { _file: file })
}
