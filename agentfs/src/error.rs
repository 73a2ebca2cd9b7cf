//! The errors the command line reports: each one prints as a single sentence after `agentfs: `
//! and ends the command with exit code 1.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// An I/O error as a short lowercase phrase ("permission denied"), without the
/// "(os error N)" suffix that `std` appends.
pub fn reason(e: &io::Error) -> String {
    let text = e.to_string();
    let text = match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => &text[..i],
        _ => &text[..],
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::from("unknown error"),
    }
}

#[derive(Debug, Error)]
pub enum CliError {
    #[error("mountpoint {} does not exist (create it with: mkdir -p {})", .0.display(), .0.display())]
    MountpointMissing(PathBuf),

    #[error("mountpoint {} is not a directory", .0.display())]
    MountpointNotDir(PathBuf),

    #[error("mountpoint {} is not empty (agentfs mounts only on an empty directory)", .0.display())]
    MountpointNotEmpty(PathBuf),

    #[error("{} is already mounted ({what}); unmount it first", .path.display())]
    AlreadyMounted { path: PathBuf, what: String },

    #[error("cannot use mountpoint {}: {}", .path.display(), reason(.err))]
    MountpointIo { path: PathBuf, err: io::Error },

    #[error("the data dir {} is inside the mountpoint {}; choose a data dir outside it", .data_dir.display(), .mountpoint.display())]
    DataDirInsideMount {
        data_dir: PathBuf,
        mountpoint: PathBuf,
    },

    #[error("cannot find a data dir: set --data-dir, AGENTFS_DATA_DIR, XDG_DATA_HOME or HOME")]
    NoDataDir,

    #[error("cannot create the data dir {}: {}", .path.display(), reason(.err))]
    DataDirCreate { path: PathBuf, err: io::Error },

    #[error("the database {} is in use by another agentfs daemon ({})", .db.display(), match .pid { Some(p) => format!("pid {p}"), None => String::from("pid unknown") })]
    Locked { db: PathBuf, pid: Option<u32> },

    #[error("cannot open the store in {}: {msg}", .data_dir.display())]
    Open { data_dir: PathBuf, msg: String },

    #[error("cannot mount {}: {}", .path.display(), reason(.err))]
    Mount { path: PathBuf, err: io::Error },

    #[error("{} is not mounted", .0.display())]
    NotMounted(PathBuf),

    #[error("{} is not an agentfs mount (it is {what})", .path.display())]
    NotAgentfs { path: PathBuf, what: String },

    #[error("{} is busy: a process is using it (try lsof/fuser)", .0.display())]
    Busy(PathBuf),

    #[error("cannot unmount {}: {}", .path.display(), reason(.err))]
    Unmount { path: PathBuf, err: io::Error },

    #[error("{} is unmounted but its daemon{} is still flushing after {secs} s; see {}", .path.display(), match .pid { Some(p) => format!(" (pid {p})"), None => String::new() }, .log.display())]
    DaemonLingers {
        path: PathBuf,
        pid: Option<u32>,
        secs: u64,
        log: PathBuf,
    },

    /// The background daemon's own one-line error, passed on as it is.
    #[error("{0}")]
    Reported(String),

    /// Already reported (logged, and passed to the process that started the daemon).
    #[error("see the log")]
    ReportedElsewhere,

    #[error("cannot start the agentfs daemon: {}", reason(.0))]
    Spawn(io::Error),

    #[error("the agentfs daemon {how} before the mount was ready; see {}", .log.display())]
    DaemonDied { how: String, log: PathBuf },

    #[error("cannot open the log file {}: {}", .path.display(), reason(.err))]
    LogFile { path: PathBuf, err: io::Error },

    #[error("invalid {what} {value:?} (use error, warn, info, debug, trace or directives such as agentfs_vfs=debug,info)")]
    LogLevel { what: &'static str, value: String },

    #[error("invalid --ready-fd {0}: not an open file descriptor")]
    ReadyFd(i32),

    #[error("cannot write the pid file {}: {}", .path.display(), reason(.err))]
    PidFile { path: PathBuf, err: io::Error },

    #[error("cannot {what}: {}", reason(.err))]
    Os { what: &'static str, err: io::Error },

    #[error("the FUSE session failed: {}", reason(.0))]
    Session(io::Error),

    #[error("flushing the store at shutdown failed: {0}")]
    Shutdown(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_strips_os_error_suffix_and_lowercases() {
        let e = io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(reason(&e), "permission denied");
        let e = io::Error::other("Custom thing (not os)");
        assert_eq!(reason(&e), "custom thing (not os)");
    }

    #[test]
    fn locked_message_names_the_pid() {
        let e = CliError::Locked {
            db: PathBuf::from("/d/agentfs.db"),
            pid: Some(42),
        };
        assert_eq!(
            e.to_string(),
            "the database /d/agentfs.db is in use by another agentfs daemon (pid 42)"
        );
    }
}
