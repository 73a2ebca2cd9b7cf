//! The mount(8) helper: the `agentfs` binary started under the name `mount.fuse.agentfs` (or
//! `mount.agentfs`), e.g. through a symlink in /sbin, so that
//! `mount -t fuse.agentfs agentfs /agents -o data_dir=/var/lib/agentfs` and fstab lines work.
//!
//! mount(8) runs `/sbin/mount.fuse.agentfs SOURCE DIR [-sfnv] [-N NS] [-o OPTS] [-t TYPE]`.
//! SOURCE is any word (conventionally `agentfs`) and is not used; OPTS are translated by
//! [`crate::cli::mountopts`] into an ordinary `agentfs mount DIR …`, which returns once the
//! tree is ready and leaves the daemon running. Exit status as mount(8)'s: 0 mounted, 1 wrong
//! invocation (bad arguments or options), 32 the mount failed.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;

use crate::cli::mount::{self, MountArgs, MountOptList};
use crate::cli::mountopts;
use crate::error::CliError;

/// The names under which the binary acts as the mount helper.
pub const HELPER_NAMES: [&str; 2] = ["mount.fuse.agentfs", "mount.agentfs"];

/// mount(8)'s exit status for an incorrect invocation.
pub const EXIT_USAGE: u8 = 1;
/// mount(8)'s exit status for a failed mount.
pub const EXIT_MOUNT_FAILED: u8 = 32;

/// True when `arg0` (a path or a name) names the mount helper.
pub fn is_helper_name(arg0: &OsStr) -> bool {
    Path::new(arg0)
        .file_name()
        .is_some_and(|n| HELPER_NAMES.iter().any(|h| n == OsStr::new(h)))
}

#[derive(Debug, Parser)]
#[command(
    name = "mount.fuse.agentfs",
    about = "mount(8) helper of agentfs: mount -t fuse.agentfs agentfs DIR -o data_dir=D,…",
    after_help = "Options (-o): ro, rw, allow_other, default_permissions, data_dir=D, \
policy=FILE, audit_reads, threads=N, log_level=L; fstab-only options (defaults, noauto, \
nofail, _netdev, user, x-*, …) are ignored. See docs/operations.md."
)]
struct HelperArgs {
    /// The mount source: any word, conventionally `agentfs` (not used)
    #[arg(value_name = "SOURCE")]
    source: OsString,
    /// The directory to mount on
    #[arg(value_name = "DIR")]
    mountpoint: PathBuf,
    /// Mount options, comma-separated (repeatable)
    #[arg(short = 'o', value_name = "OPTS")]
    options: Vec<String>,
    /// Sloppy: warn about unknown options instead of failing
    #[arg(short = 's')]
    sloppy: bool,
    /// Fake: check everything, print what would run with -v, but do not mount
    #[arg(short = 'f')]
    fake: bool,
    /// Do not write /etc/mtab (agentfs never does)
    #[arg(short = 'n')]
    no_mtab: bool,
    /// Verbose: say what is mounted and how
    #[arg(short = 'v')]
    verbose: bool,
    /// Mount in another mount namespace (not supported)
    #[arg(short = 'N', value_name = "NS")]
    namespace: Option<String>,
    /// The file system type mount(8) was asked for: fuse.agentfs or agentfs
    #[arg(short = 't', value_name = "TYPE")]
    fstype: Option<String>,
}

/// The helper's command line, for its man page (mount.fuse.agentfs.8).
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    HelperArgs::command()
}

/// Some(exit status) when this process was started as the mount helper.
pub fn dispatch() -> Option<ExitCode> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let name = argv.first().filter(|a| is_helper_name(a))?;
    let name = Path::new(name).file_name().map_or_else(
        || String::from("mount.fuse.agentfs"),
        |n| n.to_string_lossy().into_owned(),
    );
    Some(ExitCode::from(main(&name, argv)))
}

fn main(name: &str, argv: Vec<OsString>) -> u8 {
    let h = match HelperArgs::try_parse_from(argv) {
        Ok(h) => h,
        Err(e) => {
            let _ = e.print();
            return if e.exit_code() == 0 { 0 } else { EXIT_USAGE };
        }
    };
    let (args, unknown) = match translate(&h) {
        Ok(t) => t,
        Err(msg) => {
            eprintln!("{name}: {msg}");
            return EXIT_USAGE;
        }
    };
    for opt in &unknown {
        eprintln!("{name}: ignoring unknown mount option {opt:?} (-s)");
    }
    if h.verbose {
        eprintln!("{name}: {}", equivalent_command(&args));
    }
    if h.fake {
        return 0;
    }
    match mount::run(args) {
        Ok(()) => 0,
        Err(CliError::ReportedElsewhere) => EXIT_MOUNT_FAILED,
        Err(e) => {
            eprintln!("{name}: {e}");
            EXIT_MOUNT_FAILED
        }
    }
}

/// The `agentfs mount` arguments the helper's command line amounts to, and the unknown
/// options that `-s` let through.
fn translate(h: &HelperArgs) -> Result<(MountArgs, Vec<String>), String> {
    if let Some(t) = &h.fstype {
        if t != "fuse.agentfs" && t != "agentfs" {
            return Err(format!("this helper mounts type fuse.agentfs, not {t:?}"));
        }
    }
    if let Some(ns) = &h.namespace {
        return Err(format!(
            "-N {ns}: mounting in another mount namespace is not supported"
        ));
    }
    let mut lists = Vec::new();
    let mut unknown = Vec::new();
    for list in &h.options {
        let (opts, rest) = mountopts::parse(list, h.sloppy)?;
        lists.push(MountOptList(opts));
        unknown.extend(rest);
    }
    let mut args = MountArgs {
        mountpoint: h.mountpoint.clone(),
        data_dir: None,
        policies: Vec::new(),
        audit_reads: false,
        foreground: false,
        threads: None,
        log_level: String::from("info"),
        read_only: false,
        options: lists,
        ready_fd: None,
        gc_interval: super::mount::parse_interval(super::mount::DEFAULT_GC_INTERVAL)
            .unwrap_or(std::time::Duration::from_secs(30)),
    };
    args.apply_options();
    Ok((args, unknown))
}

/// `agentfs mount …` with the same effect, for `-v`.
fn equivalent_command(args: &MountArgs) -> String {
    let mut out = format!("agentfs mount {}", quote(&args.mountpoint));
    if let Some(d) = &args.data_dir {
        out.push_str(&format!(" --data-dir {}", quote(d)));
    }
    for p in &args.policies {
        out.push_str(&format!(" --policy {}", quote(p)));
    }
    if args.audit_reads {
        out.push_str(" --audit-reads");
    }
    if let Some(n) = args.threads {
        out.push_str(&format!(" --threads {n}"));
    }
    if args.log_level != "info" {
        out.push_str(&format!(" --log-level '{}'", args.log_level));
    }
    if args.read_only {
        out.push_str(" --read-only");
    }
    out
}

fn quote(p: &Path) -> String {
    let s = p.to_string_lossy();
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:@".contains(c))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn helper(args: &[&str]) -> Result<HelperArgs, clap::Error> {
        HelperArgs::try_parse_from(
            std::iter::once("mount.fuse.agentfs").chain(args.iter().copied()),
        )
    }

    fn translated(args: &[&str]) -> Result<(MountArgs, Vec<String>), String> {
        let h = helper(args).map_err(|e| e.to_string())?;
        translate(&h)
    }

    #[test]
    fn helper_names() {
        assert!(is_helper_name(OsStr::new("/sbin/mount.fuse.agentfs")));
        assert!(is_helper_name(OsStr::new("mount.agentfs")));
        assert!(!is_helper_name(OsStr::new("/usr/bin/agentfs")));
        assert!(!is_helper_name(OsStr::new("mount.fuse")));
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        HelperArgs::command().debug_assert();
    }

    #[test]
    fn mount_8_command_line() {
        let (a, unknown) = translated(&[
            "agentfs",
            "/agents",
            "-n",
            "-o",
            "rw,data_dir=/var/lib/agentfs,allow_other,ro,policy=/etc/agentfs/p.toml",
            "-t",
            "fuse.agentfs",
        ])
        .unwrap();
        assert!(unknown.is_empty());
        assert_eq!(a.mountpoint, PathBuf::from("/agents"));
        assert_eq!(a.data_dir, Some(PathBuf::from("/var/lib/agentfs")));
        assert_eq!(a.policies, vec![PathBuf::from("/etc/agentfs/p.toml")]);
        assert!(a.read_only && !a.foreground && a.options.is_empty());
        assert_eq!(
            equivalent_command(&a),
            "agentfs mount /agents --data-dir /var/lib/agentfs --policy /etc/agentfs/p.toml \
             --read-only"
        );
    }

    #[test]
    fn options_may_come_first_and_flags_combine() {
        let h = helper(&["-sfnv", "-o", "ro", "agentfs", "/m"]).unwrap();
        assert!(h.sloppy && h.fake && h.no_mtab && h.verbose);
        assert_eq!(h.mountpoint, PathBuf::from("/m"));
    }

    #[test]
    fn sloppy_lets_unknown_options_through() {
        let (a, unknown) = translated(&["agentfs", "/m", "-s", "-o", "noexec,ro"]).unwrap();
        assert!(a.read_only);
        assert_eq!(unknown, vec!["noexec"]);
        let err = translated(&["agentfs", "/m", "-o", "noexec,ro"]).unwrap_err();
        assert!(err.contains("unknown mount option \"noexec\""), "{err}");
    }

    #[test]
    fn wrong_type_and_namespace_are_refused() {
        let err = translated(&["agentfs", "/m", "-t", "fuse.sshfs"]).unwrap_err();
        assert!(err.contains("fuse.sshfs"), "{err}");
        let err = translated(&["agentfs", "/m", "-N", "/proc/1/ns/mnt"]).unwrap_err();
        assert!(err.contains("not supported"), "{err}");
        assert!(translated(&["agentfs", "/m", "-t", "agentfs"]).is_ok());
    }

    #[test]
    fn missing_arguments_are_usage_errors() {
        assert!(helper(&["agentfs"]).is_err());
        assert!(helper(&[]).is_err());
        assert!(helper(&["agentfs", "/m", "extra"]).is_err());
    }

    #[test]
    fn quoting_for_verbose_output() {
        assert_eq!(quote(Path::new("/a/b-c")), "/a/b-c");
        assert_eq!(quote(Path::new("/a b")), "'/a b'");
        assert_eq!(quote(Path::new("/it's")), "'/it'\\''s'");
    }
}
