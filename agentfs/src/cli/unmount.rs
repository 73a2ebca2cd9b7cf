//! `agentfs unmount MNT`: unmount, then wait until the daemon has flushed and exited.
//!
//! The daemon's fsname is `agentfs:<data dir>`, so the mount table tells us the data dir and
//! from there the daemon's pid file. Unmounting ends the daemon's FUSE session; it then flushes
//! everything to disk and exits, which is what we wait for.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;

use crate::checks;
use crate::datadir;
use crate::error::CliError;
use crate::mountinfo;
use crate::sys;

/// How long the daemon may take to flush and exit after the unmount.
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
/// After this long, say what we are waiting for.
const PATIENCE: Duration = Duration::from_secs(3);

#[derive(Debug, Args)]
pub struct UnmountArgs {
    /// Where agentfs is mounted
    #[arg(value_name = "MNT")]
    pub mountpoint: PathBuf,
}

pub fn run(args: UnmountArgs) -> Result<(), CliError> {
    let path = match checks::absolute(&args.mountpoint) {
        Ok(path) => path,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CliError::NotMounted(args.mountpoint))
        }
        Err(err) => {
            return Err(CliError::MountpointIo {
                path: args.mountpoint,
                err,
            })
        }
    };
    let mounts = mountinfo::read().map_err(|err| CliError::Os {
        what: "read /proc/self/mountinfo",
        err,
    })?;
    let Some(entry) = mountinfo::find(&mounts, &path) else {
        return Err(CliError::NotMounted(path));
    };
    if !entry.is_agentfs() {
        return Err(CliError::NotAgentfs {
            what: format!("a {} mount", entry.describe()),
            path,
        });
    }
    let data_dir = entry.data_dir();

    if !checks::daemon_alive(entry, &path) {
        sys::unmount_lazy(&path).map_err(|err| CliError::Unmount {
            path: path.clone(),
            err,
        })?;
        eprintln!(
            "agentfs: {} was a dead mount (its daemon had stopped); detached it",
            path.display()
        );
        return Ok(());
    }

    // Read the pid before unmounting: a daemon removes its pid file as it exits.
    let pid = data_dir.as_deref().and_then(datadir::holder_pid);
    match sys::unmount(&path) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Err(CliError::Busy(path)),
        Err(err) => return Err(CliError::Unmount { path, err }),
    }
    match data_dir {
        Some(data_dir) => wait_for_daemon(&path, &data_dir, pid),
        None => Ok(()),
    }
}

/// True once the daemon has flushed everything to disk and exited. Its pid is the sign when we
/// know it (a process that has exited, or is a zombie, has also released its store lock);
/// otherwise the store lock, which the daemon releases after its final flush.
fn daemon_done(data_dir: &Path, pid: Option<u32>) -> bool {
    match pid {
        Some(pid) => !sys::process_running(pid),
        None => datadir::store_in_use(data_dir) != Some(true),
    }
}

fn wait_for_daemon(path: &Path, data_dir: &Path, pid: Option<u32>) -> Result<(), CliError> {
    let start = Instant::now();
    let mut told = false;
    while !daemon_done(data_dir, pid) {
        let waited = start.elapsed();
        if waited >= EXIT_TIMEOUT {
            return Err(CliError::DaemonLingers {
                path: path.to_path_buf(),
                pid,
                secs: EXIT_TIMEOUT.as_secs(),
                log: datadir::log_file(data_dir),
            });
        }
        if !told && waited >= PATIENCE && std::io::stderr().is_terminal() {
            eprintln!(
                "agentfs: waiting for the daemon to flush {} to disk…",
                data_dir.display()
            );
            told = true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_that_is_not_mounted() {
        let dir = tempfile::tempdir().unwrap();
        let err = run(UnmountArgs {
            mountpoint: dir.path().to_path_buf(),
        })
        .unwrap_err();
        assert!(matches!(err, CliError::NotMounted(_)), "{err}");
        assert!(err.to_string().ends_with("is not mounted"));
    }

    #[test]
    fn a_missing_path_is_not_mounted() {
        let err = run(UnmountArgs {
            mountpoint: PathBuf::from("/no/such/agentfs/mount"),
        })
        .unwrap_err();
        assert!(matches!(err, CliError::NotMounted(_)), "{err}");
    }

    #[test]
    fn another_filesystem_is_left_alone() {
        let err = run(UnmountArgs {
            mountpoint: PathBuf::from("/"),
        })
        .unwrap_err();
        assert!(matches!(err, CliError::NotAgentfs { .. }), "{err}");
    }

    #[test]
    fn waiting_ends_when_the_pid_is_gone_or_the_store_free() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(daemon_done(dir.path(), Some(pid)));
        assert!(!daemon_done(dir.path(), Some(std::process::id())));
        // No pid: the store lock decides (no lock file at all counts as free).
        assert!(daemon_done(dir.path(), None));
        let lock = std::fs::File::create(dir.path().join(datadir::LOCK_FILE)).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&lock);
        assert_eq!(unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) }, 0);
        assert!(!daemon_done(dir.path(), None));
        drop(lock);
        assert!(daemon_done(dir.path(), None));
        wait_for_daemon(Path::new("/m"), dir.path(), Some(pid)).unwrap();
    }
}
