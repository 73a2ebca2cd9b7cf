//! The checks `agentfs mount` makes before it starts a daemon, so that the obvious mistakes get
//! one clear line instead of a failed mount(2).

use std::io;
use std::path::{Component, Path, PathBuf};

use crate::datadir;
use crate::error::CliError;
use crate::mountinfo::{self, MountEntry};
use crate::sys;

/// How many dead mounts stacked on one directory we are willing to peel off.
const MAX_STALE_LAYERS: usize = 8;

pub fn is_enotconn(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOTCONN)
}

/// The absolute, symlink-free path of `p`. When that path is a mount point it is found
/// without touching the mounted filesystem: its parent is resolved and the name appended, and
/// the mount table confirms it. A dead FUSE mount cannot be stat'ed (ENOTCONN) and a hung one
/// would hang the stat.
pub fn absolute(p: &Path) -> io::Result<PathBuf> {
    let abs = std::path::absolute(p)?;
    if let (Some(parent), Some(Component::Normal(name))) =
        (abs.parent(), abs.components().next_back())
    {
        if let Ok(parent) = parent.canonicalize() {
            let lexical = parent.join(name);
            let mounts = mountinfo::read()?;
            if mountinfo::find(&mounts, &lexical).is_some() {
                return Ok(lexical);
            }
        }
    }
    p.canonicalize()
}

/// Whether the daemon behind the agentfs mount `entry` (at `path`) is still there. Asked of
/// the store lock in its data dir, which needs no answer from the mount itself (a hung
/// daemon cannot hang us); without a data dir, a dead mount is one that answers ENOTCONN.
pub fn daemon_alive(entry: &MountEntry, path: &Path) -> bool {
    if let Some(in_use) = entry.data_dir().and_then(|d| datadir::store_in_use(&d)) {
        return in_use;
    }
    !matches!(std::fs::metadata(path), Err(e) if is_enotconn(&e))
}

/// Checks that `p` can be mounted on: it exists, is a directory, is empty and is not already
/// mounted. A dead agentfs mount there (its daemon was killed) is detached first and
/// reported through `notice`. Returns the absolute path.
pub fn mountpoint(p: &Path, notice: &dyn Fn(&str)) -> Result<PathBuf, CliError> {
    let path = match absolute(p) {
        Ok(path) => path,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(CliError::MountpointMissing(p.to_path_buf()))
        }
        Err(err) => {
            return Err(CliError::MountpointIo {
                path: p.to_path_buf(),
                err,
            })
        }
    };
    for _ in 0..MAX_STALE_LAYERS {
        let mounts = mountinfo::read().map_err(|err| CliError::Os {
            what: "read /proc/self/mountinfo",
            err,
        })?;
        let Some(entry) = mountinfo::find(&mounts, &path) else {
            break;
        };
        if entry.is_agentfs() && !daemon_alive(entry, &path) {
            sys::unmount_lazy(&path).map_err(|err| CliError::Unmount {
                path: path.clone(),
                err,
            })?;
            notice(&format!(
                "cleaned up a dead agentfs mount at {} (its daemon had stopped)",
                path.display()
            ));
            continue;
        }
        let mut what = entry.describe();
        if let Some(pid) = entry.data_dir().and_then(|d| datadir::holder_pid(&d)) {
            what.push_str(&format!(", daemon pid {pid}"));
        }
        return Err(CliError::AlreadyMounted { path, what });
    }
    let meta = std::fs::metadata(&path).map_err(|err| match err.kind() {
        io::ErrorKind::NotFound => CliError::MountpointMissing(path.clone()),
        _ => CliError::MountpointIo {
            path: path.clone(),
            err,
        },
    })?;
    if !meta.is_dir() {
        return Err(CliError::MountpointNotDir(path));
    }
    let mut entries = std::fs::read_dir(&path).map_err(|err| CliError::MountpointIo {
        path: path.clone(),
        err,
    })?;
    if entries.next().is_some() {
        return Err(CliError::MountpointNotEmpty(path));
    }
    Ok(path)
}

/// Where `p` would be once created: its deepest existing ancestor resolved, the rest appended.
fn resolve_maybe_missing(p: &Path) -> PathBuf {
    let mut missing = Vec::new();
    let mut cur = p;
    loop {
        if let Ok(real) = cur.canonicalize() {
            let mut out = real;
            for name in missing.iter().rev() {
                out.push(name);
            }
            return out;
        }
        match (cur.parent(), cur.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name.to_os_string());
                cur = parent;
            }
            _ => return p.to_path_buf(),
        }
    }
}

/// Picks the data dir (flag, then environment), refuses one inside the mountpoint, creates it
/// and returns its absolute path.
pub fn data_dir(flag: Option<&Path>, mountpoint: &Path) -> Result<PathBuf, CliError> {
    let dir = datadir::resolve_from_env(flag)?;
    let abs = std::path::absolute(&dir).map_err(|err| CliError::DataDirCreate {
        path: dir.clone(),
        err,
    })?;
    let inside = |d: &Path| d.starts_with(mountpoint);
    if inside(&resolve_maybe_missing(&abs)) {
        return Err(CliError::DataDirInsideMount {
            data_dir: abs,
            mountpoint: mountpoint.to_path_buf(),
        });
    }
    std::fs::create_dir_all(&abs).map_err(|err| CliError::DataDirCreate {
        path: abs.clone(),
        err,
    })?;
    let real = abs.canonicalize().map_err(|err| CliError::DataDirCreate {
        path: abs.clone(),
        err,
    })?;
    if !real.is_dir() {
        return Err(CliError::DataDirCreate {
            path: abs,
            err: io::Error::from_raw_os_error(libc::ENOTDIR),
        });
    }
    if inside(&real) {
        return Err(CliError::DataDirInsideMount {
            data_dir: real,
            mountpoint: mountpoint.to_path_buf(),
        });
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quiet(_: &str) {}

    #[test]
    fn missing_mountpoint() {
        let dir = tempfile::tempdir().unwrap();
        let err = mountpoint(&dir.path().join("nope"), &quiet).unwrap_err();
        assert!(matches!(err, CliError::MountpointMissing(_)), "{err}");
        assert!(err.to_string().contains("does not exist"));
    }

    #[test]
    fn mountpoint_must_be_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let err = mountpoint(&file, &quiet).unwrap_err();
        assert!(matches!(err, CliError::MountpointNotDir(_)), "{err}");
    }

    #[test]
    fn mountpoint_must_be_empty() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        let err = mountpoint(dir.path(), &quiet).unwrap_err();
        assert!(matches!(err, CliError::MountpointNotEmpty(_)), "{err}");
    }

    #[test]
    fn empty_directory_is_accepted_and_made_absolute() {
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("m");
        std::fs::create_dir(&mnt).unwrap();
        let got = mountpoint(&mnt.join("../m/."), &quiet).unwrap();
        assert_eq!(got, mnt.canonicalize().unwrap());
    }

    #[test]
    fn an_existing_mount_is_refused() {
        // "/" is always mounted (and never empty, but the mount check comes first).
        let err = mountpoint(Path::new("/"), &quiet).unwrap_err();
        assert!(matches!(err, CliError::AlreadyMounted { .. }), "{err}");
    }

    #[test]
    fn data_dir_inside_mountpoint_is_refused_before_creating_it() {
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().canonicalize().unwrap().join("m");
        std::fs::create_dir(&mnt).unwrap();
        for d in [mnt.join("data"), mnt.clone(), mnt.join("a/b")] {
            let err = data_dir(Some(&d), &mnt).unwrap_err();
            assert!(matches!(err, CliError::DataDirInsideMount { .. }), "{err}");
        }
        assert_eq!(std::fs::read_dir(&mnt).unwrap().count(), 0);
    }

    #[test]
    fn data_dir_is_created_and_absolute() {
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().canonicalize().unwrap().join("m");
        std::fs::create_dir(&mnt).unwrap();
        let want = dir.path().join("x/y/data");
        let got = data_dir(Some(&want), &mnt).unwrap();
        assert!(got.is_absolute() && got.is_dir());
        assert_eq!(got, want.canonicalize().unwrap());
    }

    #[test]
    fn data_dir_that_cannot_be_created() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let err = data_dir(Some(&file.join("data")), Path::new("/nonexistent-mnt")).unwrap_err();
        assert!(matches!(err, CliError::DataDirCreate { .. }), "{err}");
        assert!(err.to_string().starts_with("cannot create the data dir"));
        let err = data_dir(Some(&file), Path::new("/nonexistent-mnt")).unwrap_err();
        assert!(matches!(err, CliError::DataDirCreate { .. }), "{err}");
    }

    #[test]
    fn absolute_finds_mount_points_by_name() {
        assert_eq!(
            absolute(Path::new("/proc")).unwrap(),
            PathBuf::from("/proc")
        );
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/proc", dir.path().join("link")).unwrap();
        assert_eq!(
            absolute(&dir.path().join("link")).unwrap(),
            PathBuf::from("/proc")
        );
        assert!(absolute(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn resolve_maybe_missing_keeps_the_missing_tail() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().canonicalize().unwrap();
        assert_eq!(
            resolve_maybe_missing(&dir.path().join("a/b")),
            real.join("a/b")
        );
    }
}
