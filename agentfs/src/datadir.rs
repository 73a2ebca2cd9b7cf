//! Where the daemon keeps its store, pid file and log.
//!
//! `--data-dir D`, else `$AGENTFS_DATA_DIR`, else `$XDG_DATA_HOME/agentfs`, else
//! `~/.local/share/agentfs`. Empty variables count as unset, and a relative `XDG_DATA_HOME`
//! is ignored, as the XDG base directory specification says.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::error::CliError;

/// The store database inside the data dir.
pub const DB_FILE: &str = "agentfs.db";
/// The running daemon's pid (removed when it exits cleanly).
pub const PID_FILE: &str = "agentfs.pid";
/// Where a daemonized `agentfs mount` writes its log.
pub const LOG_FILE: &str = "agentfs.log";
/// The store's lock file (flock): held by the running daemon, which writes its pid in it.
pub const LOCK_FILE: &str = "agentfs.lock";

/// Picks the data dir from the flag and the environment (`env` looks a variable up).
/// The result may be relative (when the flag or a variable is); callers make it absolute.
pub fn resolve(
    flag: Option<&Path>,
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<PathBuf, CliError> {
    if let Some(dir) = flag {
        return Ok(dir.to_path_buf());
    }
    let set = |name: &str| env(name).filter(|v| !v.is_empty());
    if let Some(dir) = set("AGENTFS_DATA_DIR") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(xdg) = set("XDG_DATA_HOME").map(PathBuf::from) {
        if xdg.is_absolute() {
            return Ok(xdg.join("agentfs"));
        }
    }
    if let Some(home) = set("HOME") {
        return Ok(PathBuf::from(home).join(".local/share/agentfs"));
    }
    Err(CliError::NoDataDir)
}

/// [`resolve`] against the real process environment.
pub fn resolve_from_env(flag: Option<&Path>) -> Result<PathBuf, CliError> {
    resolve(flag, |name| std::env::var_os(name))
}

/// The outcome of the last policy reload, written by the daemon (JSON).
pub const RELOAD_STATUS_FILE: &str = "policy-reload.json";

pub fn reload_status_file(data_dir: &Path) -> PathBuf {
    data_dir.join(RELOAD_STATUS_FILE)
}

/// Replaces `path` with `bytes` so that a reader sees the old or the new content, never a mix.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

pub fn pid_file(data_dir: &Path) -> PathBuf {
    data_dir.join(PID_FILE)
}

pub fn log_file(data_dir: &Path) -> PathBuf {
    data_dir.join(LOG_FILE)
}

/// Reads the pid a daemon wrote into `data_dir`, if there is a sensible one.
pub fn read_pid(data_dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(pid_file(data_dir)).ok()?;
    parse_pid(&text)
}

/// The pid of the daemon holding the store in `data_dir`: the lock file names it as soon as
/// the store is open, the pid file a moment later.
pub fn holder_pid(data_dir: &Path) -> Option<u32> {
    std::fs::read_to_string(data_dir.join(LOCK_FILE))
        .ok()
        .and_then(|t| parse_pid(&t))
        .or_else(|| read_pid(data_dir))
}

/// Whether a daemon holds the store in `data_dir` right now: the store keeps an exclusive
/// `flock` on `agentfs.lock` for as long as it is open, and the kernel drops it when the
/// daemon dies, `kill -9` included. `None` when that cannot be told (no lock file, no access).
pub fn store_in_use(data_dir: &Path) -> Option<bool> {
    let file = std::fs::File::open(data_dir.join(LOCK_FILE)).ok()?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    // SAFETY: flock on a descriptor we own; the lock (if we get it) goes with `file` on drop.
    let rc = unsafe { libc::flock(fd, libc::LOCK_SH | libc::LOCK_NB) };
    if rc == 0 {
        return Some(false);
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EWOULDBLOCK) => Some(true),
        _ => None,
    }
}

pub fn parse_pid(text: &str) -> Option<u32> {
    let pid: u32 = text.trim().parse().ok()?;
    (pid > 0 && pid <= i32::MAX as u32).then_some(pid)
}

/// The pid file of a running daemon: written once the store is open (so it never overwrites
/// the file of a daemon that holds the store), removed on drop if it still names us.
pub struct PidFile {
    path: PathBuf,
    pid: u32,
}

impl PidFile {
    pub fn write(data_dir: &Path) -> Result<PidFile, CliError> {
        let path = pid_file(data_dir);
        let pid = std::process::id();
        let tmp = data_dir.join(format!(".{PID_FILE}.{pid}"));
        let res =
            std::fs::write(&tmp, format!("{pid}\n")).and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(err) = res {
            let _ = std::fs::remove_file(&tmp);
            return Err(CliError::PidFile { path, err });
        }
        Ok(PidFile { path, pid })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let ours = std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|t| parse_pid(&t))
            == Some(self.pid);
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!("cannot remove {}: {e}", self.path.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn flag_wins_over_everything() {
        let got = resolve(
            Some(Path::new("/flag")),
            env(&[("AGENTFS_DATA_DIR", "/env"), ("HOME", "/home/u")]),
        );
        assert_eq!(got.unwrap(), PathBuf::from("/flag"));
    }

    #[test]
    fn agentfs_data_dir_then_xdg_then_home() {
        let all = [
            ("AGENTFS_DATA_DIR", "/env"),
            ("XDG_DATA_HOME", "/xdg"),
            ("HOME", "/home/u"),
        ];
        assert_eq!(resolve(None, env(&all)).unwrap(), PathBuf::from("/env"));
        assert_eq!(
            resolve(None, env(&all[1..])).unwrap(),
            PathBuf::from("/xdg/agentfs")
        );
        assert_eq!(
            resolve(None, env(&all[2..])).unwrap(),
            PathBuf::from("/home/u/.local/share/agentfs")
        );
    }

    #[test]
    fn empty_and_relative_variables_are_skipped() {
        let vars = [
            ("AGENTFS_DATA_DIR", ""),
            ("XDG_DATA_HOME", "relative/dir"),
            ("HOME", "/home/u"),
        ];
        assert_eq!(
            resolve(None, env(&vars)).unwrap(),
            PathBuf::from("/home/u/.local/share/agentfs")
        );
    }

    #[test]
    fn nothing_set_is_a_clear_error() {
        let err = resolve(None, env(&[])).unwrap_err();
        assert!(matches!(err, CliError::NoDataDir));
    }

    #[test]
    fn pid_parsing() {
        assert_eq!(parse_pid("123\n"), Some(123));
        assert_eq!(parse_pid("0"), None);
        assert_eq!(parse_pid("-5"), None);
        assert_eq!(parse_pid("abc"), None);
        assert_eq!(parse_pid("99999999999"), None);
    }

    #[test]
    fn holder_pid_prefers_the_lock_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(holder_pid(dir.path()), None);
        std::fs::write(pid_file(dir.path()), "7\n").unwrap();
        assert_eq!(holder_pid(dir.path()), Some(7));
        std::fs::write(dir.path().join(LOCK_FILE), "9").unwrap();
        assert_eq!(holder_pid(dir.path()), Some(9));
    }

    #[test]
    fn store_in_use_follows_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(store_in_use(dir.path()), None);
        let lock = std::fs::File::create(dir.path().join(LOCK_FILE)).unwrap();
        assert_eq!(store_in_use(dir.path()), Some(false));
        let fd = std::os::fd::AsRawFd::as_raw_fd(&lock);
        assert_eq!(unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) }, 0);
        assert_eq!(store_in_use(dir.path()), Some(true));
        drop(lock);
        assert_eq!(store_in_use(dir.path()), Some(false));
    }

    #[test]
    fn pid_file_is_written_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let pf = PidFile::write(dir.path()).unwrap();
        assert_eq!(read_pid(dir.path()), Some(std::process::id()));
        drop(pf);
        assert!(!pid_file(dir.path()).exists());
    }

    #[test]
    fn pid_file_of_another_daemon_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let pf = PidFile::write(dir.path()).unwrap();
        std::fs::write(pid_file(dir.path()), "1\n").unwrap();
        drop(pf);
        assert_eq!(read_pid(dir.path()), Some(1));
    }
}
