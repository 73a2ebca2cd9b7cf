//! `agentfs mount MNT`: check, then either serve in the foreground or start a background daemon
//! and return once its mount is ready (like sshfs).
//!
//! The background daemon is not made with fork() (unsafe once threads exist): the current
//! executable is started again as `agentfs mount MNT --data-dir D --foreground --ready-fd N`
//! in a new session, with its output appended to `D/agentfs.log`. It reports through the pipe
//! on fd N: one zero byte once the tree is mounted, or its one-line error before it exits.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use clap::Args;

use crate::checks;
use crate::cli::mountopts::{self, MountOpt};
use crate::daemon;
use crate::datadir;
use crate::error::CliError;
use crate::sys;

/// The byte a daemon writes to its ready pipe once the mount is ready; an error message is
/// text and never starts with it.
pub const READY: u8 = 0;

#[derive(Debug, Args)]
pub struct MountArgs {
    /// Directory to mount on: it must exist and be empty
    #[arg(value_name = "MNT")]
    pub mountpoint: PathBuf,

    /// Where the store, the pid file and the log live [default: $AGENTFS_DATA_DIR, else
    /// $XDG_DATA_HOME/agentfs, else ~/.local/share/agentfs]
    #[arg(long, value_name = "D")]
    pub data_dir: Option<PathBuf>,

    /// Policy file (repeatable), combined with the built-in policy; checked (with its
    /// [[test]] cases) before the mount. SIGHUP or `agentfs policy reload` re-reads them
    #[arg(long = "policy", value_name = "FILE")]
    pub policies: Vec<PathBuf>,

    /// Record every read(2) of an agent's file in the flight recorder too (off by default:
    /// see docs/audit.md for what it costs)
    #[arg(long)]
    pub audit_reads: bool,

    /// Stay in the foreground, log to stderr, unmount on Ctrl-C or SIGTERM
    #[arg(short, long)]
    pub foreground: bool,

    /// FUSE worker threads [default: the filesystem's default]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: Option<u16>,

    /// Log filter used when RUST_LOG is not set: error, warn, info, debug, trace, or
    /// per-module directives such as agentfs_vfs=debug,info
    #[arg(long, value_name = "L", default_value = "info", value_parser = parse_log_level)]
    pub log_level: String,

    /// Mount the tree read-only: every write, control files included, fails with EROFS
    #[arg(long)]
    pub read_only: bool,

    /// How often the garbage collector looks for chunks nothing references (a chunk is
    /// freed at the second round that finds it so); `0s` turns it off
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_GC_INTERVAL, value_parser = parse_interval)]
    pub gc_interval: std::time::Duration,

    /// Mount options as in fstab, comma-separated, repeatable: ro, rw, allow_other,
    /// default_permissions, data_dir=D, policy=FILE, audit_reads, threads=N, log_level=L
    /// (they win over the flags); fstab-only ones (defaults, noauto, nofail, _netdev, x-*,
    /// …) are ignored
    #[arg(short = 'o', value_name = "OPTS", value_parser = parse_options)]
    pub options: Vec<MountOptList>,

    /// (internal) the pipe a daemon started by `agentfs mount` reports readiness on
    #[arg(long, value_name = "FD", hide = true, requires = "foreground")]
    pub ready_fd: Option<i32>,
}

/// The options of one `-o` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptList(pub Vec<MountOpt>);

fn parse_options(s: &str) -> Result<MountOptList, String> {
    mountopts::parse_strict(s).map(MountOptList)
}

impl MountArgs {
    /// Folds the `-o` options into the flags: an option wins over a flag for a single value
    /// (`data_dir`, `threads`, `log_level`, `ro`/`rw`); `policy` adds a file.
    pub fn apply_options(&mut self) {
        let all: Vec<MountOpt> = self.options.drain(..).flat_map(|l| l.0).collect();
        let a = mountopts::fold(&all);
        if a.data_dir.is_some() {
            self.data_dir = a.data_dir;
        }
        self.policies.extend(a.policies);
        self.audit_reads |= a.audit_reads;
        if a.threads.is_some() {
            self.threads = a.threads;
        }
        if let Some(level) = a.log_level {
            self.log_level = level;
        }
        if let Some(ro) = a.read_only {
            self.read_only = ro;
        }
    }
}

fn parse_log_level(s: &str) -> Result<String, String> {
    daemon::log_filter(s)
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
}

pub fn run(mut args: MountArgs) -> Result<(), CliError> {
    args.apply_options();
    if args.foreground {
        return daemon::run(&args);
    }
    let notice = |msg: &str| eprintln!("agentfs: {msg}");
    let mnt = checks::mountpoint(&args.mountpoint, &notice)?;
    let data_dir = checks::data_dir(args.data_dir.as_deref(), &mnt)?;
    // The daemon runs in `/`: give it absolute policy paths, and refuse a bad policy here,
    // with every error on the terminal, before anything starts.
    let mut args = args;
    args.policies = absolute_paths(&args.policies)?;
    crate::cli::policy::load(&args.policies)?;
    start_daemon(&args, &mnt, &data_dir)
}

fn absolute_paths(paths: &[PathBuf]) -> Result<Vec<PathBuf>, CliError> {
    paths
        .iter()
        .map(|p| {
            std::path::absolute(p).map_err(|err| CliError::Os {
                what: "resolve a policy path",
                err,
            })
        })
        .collect()
}

/// The arguments the background daemon gets (everything absolute: it runs in `/`).
fn daemon_args(args: &MountArgs, mnt: &Path, data_dir: &Path, ready_fd: i32) -> Vec<OsString> {
    let mut out: Vec<OsString> = vec![
        "mount".into(),
        mnt.into(),
        "--data-dir".into(),
        data_dir.into(),
        "--foreground".into(),
        "--ready-fd".into(),
        ready_fd.to_string().into(),
        "--log-level".into(),
        args.log_level.clone().into(),
    ];
    if let Some(n) = args.threads {
        out.push("--threads".into());
        out.push(n.to_string().into());
    }
    for p in &args.policies {
        out.push("--policy".into());
        out.push(p.into());
    }
    if args.audit_reads {
        out.push("--audit-reads".into());
    }
    if args.read_only {
        out.push("--read-only".into());
    }
    out.push("--gc-interval".into());
    out.push(
        humantime::format_duration(args.gc_interval)
            .to_string()
            .into(),
    );
    out
}

/// `--gc-interval` when not given (also for the mount helper).
pub const DEFAULT_GC_INTERVAL: &str = "30s";

/// A duration such as `30s`, `500ms` or `2m`.
pub fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration like 30s: {e}"))
}

/// The daemon's argv[0]: ours, unless we run as the mount helper (the daemon must not).
fn daemon_arg0() -> OsString {
    match std::env::args_os().next() {
        Some(a) if !crate::cli::mounthelper::is_helper_name(&a) => a,
        _ => OsString::from("agentfs"),
    }
}

fn start_daemon(args: &MountArgs, mnt: &Path, data_dir: &Path) -> Result<(), CliError> {
    let log_path = datadir::log_file(data_dir);
    let log_err = |err| CliError::LogFile {
        path: log_path.clone(),
        err,
    };
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(log_err)?;
    let log2 = log.try_clone().map_err(log_err)?;
    let (ready_r, ready_w) = sys::pipe().map_err(|err| CliError::Os {
        what: "create a pipe",
        err,
    })?;
    let ready_fd = ready_w.as_raw_fd();

    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0(daemon_arg0())
        .args(daemon_args(args, mnt, data_dir, ready_fd))
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    // SAFETY: the closure runs in the child between fork and exec and only makes two
    // async-signal-safe system calls (setsid, fcntl); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            sys::setsid()?;
            sys::inherit_fd(ready_fd)
        });
    }
    let mut child = cmd.spawn().map_err(CliError::Spawn)?;
    // Our copy of the write end must go, or the read below would never see the end of it.
    drop(ready_w);
    drop(cmd);

    let mut pipe = File::from(ready_r);
    let mut report = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if report.is_empty() && buf[0] == READY {
                    return Ok(());
                }
                report.extend_from_slice(&buf[..n]);
                if report.len() > 64 * 1024 {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => {
                return Err(CliError::Os {
                    what: "read from the daemon",
                    err,
                })
            }
        }
    }
    let message = String::from_utf8_lossy(&report).trim().to_string();
    if !message.is_empty() {
        return Err(CliError::Reported(message));
    }
    // The daemon closed the pipe without a word: it died. Say how.
    let how = match child.wait() {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(sig)) => format!("was killed by signal {sig}"),
            (None, None) => String::from("stopped"),
        },
        Err(e) => format!("vanished ({})", crate::error::reason(&e)),
    };
    Err(CliError::DaemonDied { how, log: log_path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_gets_absolute_paths_and_the_ready_fd() {
        let args = MountArgs {
            mountpoint: PathBuf::from("rel"),
            data_dir: None,
            foreground: false,
            threads: Some(3),
            log_level: String::from("debug"),
            ready_fd: None,
            policies: vec![PathBuf::from("/etc/p.toml")],
            audit_reads: true,
            read_only: true,
            options: vec![],
            gc_interval: std::time::Duration::from_millis(1500),
        };
        let got = daemon_args(&args, Path::new("/abs/m"), Path::new("/abs/d"), 7);
        let got: Vec<&str> = got.iter().map(|s| s.to_str().unwrap()).collect();
        assert_eq!(
            got,
            [
                "mount",
                "/abs/m",
                "--data-dir",
                "/abs/d",
                "--foreground",
                "--ready-fd",
                "7",
                "--log-level",
                "debug",
                "--threads",
                "3",
                "--policy",
                "/etc/p.toml",
                "--audit-reads",
                "--read-only",
                "--gc-interval",
                "1s 500ms"
            ]
        );
    }

    #[test]
    fn options_win_over_flags() {
        let mut args = MountArgs {
            mountpoint: PathBuf::from("/m"),
            data_dir: Some(PathBuf::from("/flag")),
            foreground: false,
            threads: Some(2),
            log_level: String::from("info"),
            ready_fd: None,
            policies: vec![PathBuf::from("/a.toml")],
            audit_reads: false,
            read_only: true,
            gc_interval: std::time::Duration::from_secs(30),
            options: vec![
                parse_options("data_dir=/opt,threads=9,policy=/b.toml").unwrap(),
                parse_options("rw,audit_reads,log_level=debug,noauto").unwrap(),
            ],
        };
        args.apply_options();
        assert_eq!(args.data_dir, Some(PathBuf::from("/opt")));
        assert_eq!(args.threads, Some(9));
        assert_eq!(
            args.policies,
            [PathBuf::from("/a.toml"), PathBuf::from("/b.toml")]
        );
        assert!(args.audit_reads && !args.read_only && args.options.is_empty());
        assert_eq!(args.log_level, "debug");
    }

    #[test]
    fn log_level_is_validated() {
        assert!(parse_log_level("info").is_ok());
        assert!(parse_log_level("agentfs_vfs=trace,warn").is_ok());
        assert!(parse_log_level("info,[[[").is_err());
    }
}
