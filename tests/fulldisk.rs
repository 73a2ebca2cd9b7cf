//! A full data-dir filesystem (SPEC §9, issue 8): the data dir on a small tmpfs made by the
//! test. Writes fail with ENOSPC (not EIO, not a hang), nothing durable is damaged, reads keep
//! working, deletes still work, and once space is freed writes work again.

mod common;

use common::*;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A size-limited tmpfs, detached on drop (after the agentfs mount on top of it is gone).
struct SmallFs(PathBuf);

impl SmallFs {
    fn new(at: &Path, size_mib: u64) -> SmallFs {
        fs::create_dir_all(at).unwrap();
        let opts = cstr(format!("size={size_mib}m"));
        let r = unsafe {
            libc::mount(
                cstr("tmpfs").as_ptr(),
                cstr(at).as_ptr(),
                cstr("tmpfs").as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        assert_eq!(
            r,
            0,
            "mount tmpfs on {}: {}",
            at.display(),
            std::io::Error::last_os_error()
        );
        SmallFs(at.to_path_buf())
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        unsafe { libc::umount2(cstr(&self.0).as_ptr(), libc::MNT_DETACH) };
    }
}

/// Writes `data` to a new file in 1 MiB writes and closes it; the first errno, if any, and at
/// which step.
fn write_file(path: &Path, data: &[u8]) -> Result<(), (i32, &'static str)> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| (e.raw_os_error().unwrap_or(0), "open"))?;
    for piece in data.chunks(1 << 20) {
        f.write_all(piece)
            .map_err(|e| (e.raw_os_error().unwrap_or(0), "write"))?;
    }
    f.sync_all()
        .map_err(|e| (e.raw_os_error().unwrap_or(0), "fsync"))?;
    drop(f);
    Ok(())
}

#[test]
fn a_full_data_dir_gives_enospc_and_recovers() {
    if !can_mount() {
        return;
    }
    let _wd = Watchdog::new(240);
    let root = fresh_dir("fulldisk");
    let small = SmallFs::new(&root.join("fs"), 64);
    // Room the operator can free later: 12 MiB of ballast beside the data dir.
    let ballast = small.0.join("ballast");
    fs::write(&ballast, vec![1u8; 12 << 20]).unwrap();
    let mut m = Mount::unmounted(root.join("mnt"), small.0.join("data"), None);
    m.mount();
    m.agent("a");
    let sem = m.mem("a", "semantic");

    // Fill: distinct content (no dedup) in 4 MiB files until the data dir is full.
    let mut kept = Vec::new();
    let mut failure = None;
    for i in 0..64u64 {
        let data = pattern(i + 1, 4 << 20);
        let path = sem.join(format!("f{i:02}"));
        match write_file(&path, &data) {
            Ok(()) => kept.push((path, data)),
            Err(e) => {
                failure = Some((i, e, path));
                break;
            }
        }
    }
    let (i, (errno, step), failed) = failure.expect("64 x 4 MiB never filled a 64 MiB tmpfs");
    assert_eq!(
        errno,
        libc::ENOSPC,
        "file {i}: {step} failed with {} (want ENOSPC)",
        errno_name(errno)
    );
    assert!(kept.len() >= 4, "only {} files fit in 64 MiB", kept.len());
    // The refused file holds no bytes that were never committed: absent, or no longer than
    // what a later read returns.
    if let Ok(md) = fs::metadata(&failed) {
        let read = fs::read(&failed).expect("read the refused file");
        assert_eq!(md.len() as usize, read.len());
    }
    // Reads still work and everything acknowledged is intact.
    for (path, data) in &kept {
        assert_same_bytes(&path.display().to_string(), &fs::read(path).unwrap(), data);
    }
    // More writes keep failing cleanly, fast (no hang: the watchdog would fire).
    let more = write_file(&sem.join("more"), &pattern(99, 1 << 20));
    assert_eq!(more.map_err(|e| e.0), Err(libc::ENOSPC));
    // Deleting and renaming still work on a full disk (they must not need new space: the
    // store keeps a reserve for them).
    let _ = fs::remove_file(&failed);
    let _ = fs::remove_file(sem.join("more"));
    let (gone, _) = kept.pop().unwrap();
    fs::remove_file(&gone).expect("rm on a full data dir");
    let (last, data) = kept.pop().unwrap();
    let renamed = sem.join("renamed");
    fs::rename(&last, &renamed).expect("mv on a full data dir");
    kept.push((renamed, data));

    // The operator frees space on that filesystem: writes work again.
    fs::remove_file(&ballast).unwrap();
    let again = pattern(1000, 4 << 20);
    write_file(&sem.join("again"), &again).expect("write after space was freed");
    kept.push((sem.join("again"), again));
    m.unmount();
    // Remount on the full filesystem: everything acknowledged is there.
    m.mount();
    for (path, data) in &kept {
        assert_same_bytes(&path.display().to_string(), &fs::read(path).unwrap(), data);
    }
    drop(m);
    drop(small);
}
