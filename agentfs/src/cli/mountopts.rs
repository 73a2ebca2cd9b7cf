//! Mount options in the `-o a,b=c` form of mount(8) and /etc/fstab: what `agentfs mount -o`
//! and the `mount.fuse.agentfs` helper accept, and how they map onto `agentfs mount`'s flags.
//!
//! | option | means |
//! |---|---|
//! | `data_dir=D`, `policy=FILE` (repeatable), `audit_reads`, `threads=N`, `log_level=L` | the flags of the same name |
//! | `ro` / `rw` | read-only mount (every write fails with EROFS) / read-write; the last one wins |
//! | `allow_other`, `default_permissions`, `nosuid`, `nodev` | accepted: agentfs always mounts with them |
//! | `defaults`, `auto`, `noauto`, `user`, `users`, `nouser`, `owner`, `group`, `user=NAME`, `_netdev`, `nofail`, `comment=…`, `x-…`, `exec`, `async`, `atime`, `relatime` | accepted and ignored: they are for mount(8), systemd or the kernel's defaults |
//!
//! Anything else is an error (with the helper's `-s`, a warning). A value holding commas is
//! written in double quotes: `log_level="agentfs_vfs=debug,info"`.

use std::path::PathBuf;

/// One understood option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountOpt {
    /// `ro` (true) or `rw` (false).
    ReadOnly(bool),
    DataDir(PathBuf),
    Policy(PathBuf),
    AuditReads,
    Threads(u16),
    LogLevel(String),
    /// An option agentfs always applies (`allow_other`, …): nothing to do.
    Always(String),
    /// An option meant for mount(8), systemd or another layer: nothing to do.
    Ignored(String),
}

/// Options that agentfs applies to every mount anyway.
const ALWAYS: &[&str] = &["allow_other", "default_permissions", "nosuid", "nodev"];

/// Options for mount(8), fstab, systemd, or kernel defaults that FUSE already has.
const IGNORED: &[&str] = &[
    "defaults", "auto", "noauto", "user", "users", "nouser", "owner", "group", "_netdev", "nofail",
    "exec", "async", "atime", "relatime",
];

/// Option names with a `=` value that are ignored (prefix match for `x-`).
const IGNORED_KEYS: &[&str] = &["comment", "user"];

/// What an error message lists as the options agentfs knows.
pub const KNOWN: &str = "ro, rw, allow_other, default_permissions, data_dir=D, policy=FILE, \
audit_reads, threads=N, log_level=L";

/// Splits a comma-separated list, keeping commas inside double quotes; quotes are removed.
fn split(list: &str) -> Result<Vec<String>, String> {
    let mut items = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in list.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => items.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    if quoted {
        return Err(format!("unbalanced double quote in mount options {list:?}"));
    }
    items.push(cur);
    Ok(items.into_iter().filter(|s| !s.is_empty()).collect())
}

/// Parses one `-o` argument. With `sloppy` (mount's `-s`), unknown options are returned in
/// the second list instead of failing.
pub fn parse(list: &str, sloppy: bool) -> Result<(Vec<MountOpt>, Vec<String>), String> {
    let mut opts = Vec::new();
    let mut unknown = Vec::new();
    for item in split(list)? {
        match parse_one(&item) {
            Ok(Some(opt)) => opts.push(opt),
            Ok(None) if sloppy => unknown.push(item),
            Ok(None) => {
                return Err(format!(
                    "unknown mount option {item:?} (agentfs knows {KNOWN}; see docs/operations.md)"
                ))
            }
            Err(e) => return Err(e),
        }
    }
    Ok((opts, unknown))
}

/// The clap value parser of `agentfs mount -o`: unknown options are usage errors.
pub fn parse_strict(list: &str) -> Result<Vec<MountOpt>, String> {
    parse(list, false).map(|(opts, _)| opts)
}

/// Ok(None): not an option agentfs knows.
fn parse_one(item: &str) -> Result<Option<MountOpt>, String> {
    let (key, value) = match item.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (item, None),
    };
    let need = |v: Option<&str>| -> Result<String, String> {
        match v {
            Some(v) if !v.is_empty() => Ok(v.to_string()),
            _ => Err(format!("mount option {key} needs a value: {key}=…")),
        }
    };
    let flag = |opt: MountOpt| -> Result<Option<MountOpt>, String> {
        match value {
            None => Ok(Some(opt)),
            Some(_) => Err(format!("mount option {key} takes no value (got {item:?})")),
        }
    };
    match key {
        "ro" => flag(MountOpt::ReadOnly(true)),
        "rw" => flag(MountOpt::ReadOnly(false)),
        "audit_reads" => flag(MountOpt::AuditReads),
        "data_dir" => Ok(Some(MountOpt::DataDir(PathBuf::from(need(value)?)))),
        "policy" => Ok(Some(MountOpt::Policy(PathBuf::from(need(value)?)))),
        "threads" => {
            let v = need(value)?;
            match v.parse::<u16>() {
                Ok(n) if (1..=256).contains(&n) => Ok(Some(MountOpt::Threads(n))),
                _ => Err(format!(
                    "mount option threads={v}: want a number from 1 to 256"
                )),
            }
        }
        "log_level" => {
            let v = need(value)?;
            crate::daemon::log_filter(&v)
                .map_err(|e| format!("mount option log_level={v}: {e}"))?;
            Ok(Some(MountOpt::LogLevel(v)))
        }
        "suid" | "dev" => Err(format!(
            "mount option {item} is not supported: agentfs always mounts nosuid,nodev"
        )),
        k if ALWAYS.contains(&k) => flag(MountOpt::Always(k.to_string())),
        k if IGNORED.contains(&k) && value.is_none() => Ok(Some(MountOpt::Ignored(item.into()))),
        k if k.starts_with("x-") || (IGNORED_KEYS.contains(&k) && value.is_some()) => {
            Ok(Some(MountOpt::Ignored(item.to_string())))
        }
        _ => Ok(None),
    }
}

/// The flags an option list amounts to, applied over what was given on the command line.
/// Options win over flags for single values (`data_dir`, `threads`, `log_level`); `policy`
/// adds a file; `ro` and `audit_reads` switch on (`rw` switches `ro` off again).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    pub data_dir: Option<PathBuf>,
    pub policies: Vec<PathBuf>,
    pub audit_reads: bool,
    pub threads: Option<u16>,
    pub log_level: Option<String>,
    pub read_only: Option<bool>,
}

pub fn fold(opts: &[MountOpt]) -> Applied {
    let mut a = Applied::default();
    for opt in opts {
        match opt {
            MountOpt::ReadOnly(ro) => a.read_only = Some(*ro),
            MountOpt::DataDir(d) => a.data_dir = Some(d.clone()),
            MountOpt::Policy(p) => a.policies.push(p.clone()),
            MountOpt::AuditReads => a.audit_reads = true,
            MountOpt::Threads(n) => a.threads = Some(*n),
            MountOpt::LogLevel(l) => a.log_level = Some(l.clone()),
            MountOpt::Always(_) | MountOpt::Ignored(_) => {}
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(list: &str) -> Vec<MountOpt> {
        parse_strict(list).unwrap_or_else(|e| panic!("{list}: {e}"))
    }

    #[test]
    fn every_mapped_option() {
        let opts = ok(
            "data_dir=/var/lib/agentfs,policy=/etc/a.toml,policy=b.toml,audit_reads,\
                       threads=8,log_level=debug,ro",
        );
        assert_eq!(
            fold(&opts),
            Applied {
                data_dir: Some(PathBuf::from("/var/lib/agentfs")),
                policies: vec![PathBuf::from("/etc/a.toml"), PathBuf::from("b.toml")],
                audit_reads: true,
                threads: Some(8),
                log_level: Some(String::from("debug")),
                read_only: Some(true),
            }
        );
    }

    #[test]
    fn last_of_ro_and_rw_wins() {
        assert_eq!(fold(&ok("ro,rw")).read_only, Some(false));
        assert_eq!(fold(&ok("rw,ro")).read_only, Some(true));
        assert_eq!(fold(&ok("allow_other")).read_only, None);
    }

    #[test]
    fn fstab_and_systemd_options_are_ignored() {
        let opts = ok(
            "defaults,noauto,user,users,_netdev,nofail,x-systemd.automount,\
                       x-systemd.requires=network.target,comment=foo,user=alice,exec,relatime",
        );
        assert!(
            opts.iter().all(|o| matches!(o, MountOpt::Ignored(_))),
            "{opts:?}"
        );
        assert_eq!(fold(&opts), Applied::default());
    }

    #[test]
    fn always_on_options_are_accepted() {
        let opts = ok("allow_other,default_permissions,nosuid,nodev");
        assert!(
            opts.iter().all(|o| matches!(o, MountOpt::Always(_))),
            "{opts:?}"
        );
    }

    #[test]
    fn empty_items_and_an_empty_list_are_fine() {
        assert_eq!(ok(""), vec![]);
        assert_eq!(ok("ro,,"), vec![MountOpt::ReadOnly(true)]);
    }

    #[test]
    fn quoted_values_keep_their_commas() {
        assert_eq!(
            ok("log_level=\"agentfs_vfs=debug,info\",ro"),
            vec![
                MountOpt::LogLevel(String::from("agentfs_vfs=debug,info")),
                MountOpt::ReadOnly(true)
            ]
        );
        assert_eq!(
            ok("data_dir=\"/srv/a,b\""),
            vec![MountOpt::DataDir(PathBuf::from("/srv/a,b"))]
        );
    }

    #[test]
    fn bad_options_are_clear_errors() {
        for (list, want) in [
            ("frobnicate", "unknown mount option \"frobnicate\""),
            ("noexec", "unknown mount option \"noexec\""),
            ("data_dir", "data_dir needs a value"),
            ("data_dir=", "data_dir needs a value"),
            ("threads=0", "threads=0: want a number from 1 to 256"),
            ("threads=x", "threads=x"),
            ("threads=300", "threads=300"),
            ("log_level=info,[[[", "unknown mount option \"[[[\""),
            ("log_level=\"info,[[[\"", "log_level=info,[[["),
            ("ro=1", "ro takes no value"),
            ("allow_other=1", "allow_other takes no value"),
            ("suid", "always mounts nosuid,nodev"),
            ("data_dir=\"/x", "unbalanced double quote"),
        ] {
            let err = parse_strict(list).expect_err(list);
            assert!(err.contains(want), "{list}: {err}");
        }
    }

    #[test]
    fn sloppy_collects_unknown_options() {
        let (opts, unknown) = parse("ro,noexec,frob=1", true).unwrap();
        assert_eq!(opts, vec![MountOpt::ReadOnly(true)]);
        assert_eq!(unknown, vec!["noexec", "frob=1"]);
        // Malformed known options stay errors.
        assert!(parse("threads=0", true).is_err());
    }
}
