//! The few raw system calls the CLI needs, each wrapped so the rest of the code stays safe.

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// `umount2(path, 0)`: fails with EBUSY while something uses the mount.
pub fn unmount(path: &Path) -> io::Result<()> {
    umount2(path, 0)
}

/// `umount2(path, MNT_DETACH)`: detaches now, frees the mount when its last user is gone.
pub fn unmount_lazy(path: &Path) -> io::Result<()> {
    umount2(path, libc::MNT_DETACH)
}

fn umount2(path: &Path, flags: libc::c_int) -> io::Result<()> {
    let c = cpath(path)?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let rc = unsafe { libc::umount2(c.as_ptr(), flags) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Takes an exclusive `flock` on `file` without waiting: `Ok(false)` when another process
/// holds a lock on it. The lock goes when `file` is closed.
pub fn try_lock_exclusive(file: &std::fs::File) -> io::Result<bool> {
    let fd = std::os::fd::AsRawFd::as_raw_fd(file);
    // SAFETY: flock on a descriptor that `file` keeps open for the duration of the call.
    if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// True while process `pid` exists and one of its threads has not finished. A zombie has
/// finished: it only waits for its parent to collect its status. But the main thread of a
/// threaded process shows as a zombie as soon as it exits itself, while the other threads
/// may still be exiting and holding the process's files (the daemon's store lock): the
/// process runs until every thread is a zombie or gone.
pub fn process_running(pid: u32) -> bool {
    let Ok(pid_t) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid_t <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid_t, 0) };
    if rc != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        return false;
    }
    // It exists (rc == 0, or EPERM: someone else's process).
    match std::fs::read_dir(format!("/proc/{pid}/task")) {
        Ok(tasks) => tasks.flatten().any(|task| {
            std::fs::read_to_string(task.path().join("stat"))
                .is_ok_and(|stat| !matches!(stat_state(&stat), Some('Z' | 'X')))
        }),
        Err(e) => e.kind() != io::ErrorKind::NotFound,
    }
}

/// The state letter of a `/proc/PID/stat` line ("1234 (name) S 1 …"); the name may hold
/// spaces and parentheses, so look after the last `)`.
fn stat_state(stat: &str) -> Option<char> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.trim_start().chars().next()
}

/// A pipe whose both ends are close-on-exec: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Takes ownership of an inherited descriptor number after checking that it is open, and
/// marks it close-on-exec so it does not leak further.
pub fn adopt_fd(fd: RawFd) -> Option<OwnedFd> {
    if fd <= 2 {
        return None;
    }
    // SAFETY: F_GETFD on any number is harmless; -1 means it is not open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return None;
    }
    // SAFETY: as above; setting FD_CLOEXEC on an open descriptor.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    // SAFETY: the descriptor is open and was handed to this process to own (--ready-fd).
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The signals the daemon turns into an orderly shutdown (TERM, INT) or a reload (HUP).
pub const HANDLED_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// A set of signals, blocked in the calling thread (and every thread it starts later) by
/// [`SignalSet::block`] so that only [`SignalSet::wait`] receives them.
#[derive(Clone, Copy)]
pub struct SignalSet(libc::sigset_t);

// SAFETY: sigset_t is plain data.
unsafe impl Send for SignalSet {}

impl SignalSet {
    pub fn new(signals: &[libc::c_int]) -> SignalSet {
        // SAFETY: an all-zero sigset_t is valid storage; sigemptyset then initialises it.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is valid storage; the signal numbers are valid constants.
        unsafe {
            libc::sigemptyset(&mut set);
            for &s in signals {
                libc::sigaddset(&mut set, s);
            }
        }
        SignalSet(set)
    }

    /// Blocks the set in the calling thread. Threads started afterwards inherit the mask,
    /// so call this before any thread exists.
    pub fn block(&self) -> io::Result<()> {
        // SAFETY: valid set pointer; a null old-set pointer is allowed.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &self.0, std::ptr::null_mut()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(rc))
        }
    }

    /// Waits for one of the (blocked) signals of the set and returns its number.
    pub fn wait(&self) -> io::Result<libc::c_int> {
        let mut sig: libc::c_int = 0;
        // SAFETY: valid set and out pointer.
        let rc = unsafe { libc::sigwait(&self.0, &mut sig) };
        if rc == 0 {
            Ok(sig)
        } else {
            Err(io::Error::from_raw_os_error(rc))
        }
    }
}

pub fn signal_name(sig: libc::c_int) -> &'static str {
    match sig {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        _ => "signal",
    }
}

/// Starts a new session for the calling process (used between fork and exec).
pub fn setsid() -> io::Result<()> {
    // SAFETY: setsid has no memory-safety preconditions and is async-signal-safe.
    if unsafe { libc::setsid() } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Clears close-on-exec on `fd` so an exec'd child inherits it (used between fork and exec).
pub fn inherit_fd(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor number is async-signal-safe and has no memory effects.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_state_handles_odd_names() {
        assert_eq!(stat_state("12 (agentfs) S 1 12"), Some('S'));
        assert_eq!(stat_state("12 (a) b) Z 1 12"), Some('Z'));
        assert_eq!(stat_state("garbage"), None);
    }

    #[test]
    fn our_own_process_is_running() {
        assert!(process_running(std::process::id()));
        assert!(!process_running(0x7fff_fff0));
    }

    #[test]
    fn a_reaped_child_is_gone_and_a_zombie_counts_as_finished() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Until waited for, it turns into a zombie once it exits.
        for _ in 0..200 {
            if !process_running(pid) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!process_running(pid));
        child.wait().unwrap();
        assert!(!process_running(pid));
    }

    #[test]
    fn adopt_fd_refuses_closed_and_standard_descriptors() {
        assert!(adopt_fd(1).is_none());
        assert!(adopt_fd(987_654).is_none());
        let (r, _w) = pipe().unwrap();
        let raw = std::os::fd::IntoRawFd::into_raw_fd(r);
        assert!(adopt_fd(raw).is_some());
    }

    #[test]
    fn unmount_of_a_plain_directory_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        assert!(unmount(dir.path()).is_err());
    }
}
