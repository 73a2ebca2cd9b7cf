//! POSIX behaviour under `MNT/AGENT/mem/*`, through the real mount, using only std and libc.
//!
//! Most checks run in both the durable (`semantic`) and the RAM (`working`) class; the
//! append-only `episodic` class has its own tests. Errno-table rows of docs/SEMANTICS.md are
//! the tests named `eNN_…` (rows e01–e09 live in tests/mount.rs).

mod common;

use common::*;
use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{symlink, FileExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const CLASSES: [&str; 2] = ["semantic", "working"];

/// A mount with agent `a`; returns (mount, [semantic dir, working dir]).
fn setup() -> Option<(Mount, Vec<(String, PathBuf)>)> {
    let m = Mount::try_new_with_policy(common::POSIX_POLICY)?;
    m.agent("a");
    let dirs = CLASSES
        .iter()
        .map(|c| (c.to_string(), m.mem("a", c)))
        .collect();
    Some((m, dirs))
}

/// This process's umask, read without changing it (umask(2) would race other test threads).
fn umask() -> u32 {
    let s = fs::read_to_string("/proc/self/status").unwrap();
    let line = s
        .lines()
        .find(|l| l.starts_with("Umask:"))
        .expect("Umask in /proc/self/status");
    u32::from_str_radix(line["Umask:".len()..].trim(), 8).unwrap()
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn open_raw(p: &Path, flags: i32, mode: u32) -> std::io::Result<i32> {
    let c = cstr(p);
    check(unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, mode) })
}

fn close_raw(fd: i32) {
    assert_eq!(
        unsafe { libc::close(fd) },
        0,
        "close: {}",
        std::io::Error::last_os_error()
    );
}

fn utimens(p: &Path, atime: libc::timespec, mtime: libc::timespec) -> std::io::Result<i32> {
    let c = cstr(p);
    let ts = [atime, mtime];
    check(unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

fn ts(sec: i64, nsec: i64) -> libc::timespec {
    libc::timespec {
        tv_sec: sec as libc::time_t,
        tv_nsec: nsec as _,
    }
}

fn setxattr(p: &Path, name: &str, val: &[u8], flags: i32) -> std::io::Result<i32> {
    let (c, n) = (cstr(p), cstr(name));
    check(unsafe {
        libc::setxattr(
            c.as_ptr(),
            n.as_ptr(),
            val.as_ptr().cast(),
            val.len(),
            flags,
        )
    })
}

fn getxattr(p: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    let (c, n) = (cstr(p), cstr(name));
    let mut buf = vec![0u8; 65536];
    let r = unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    let len = check_ssize(r)?;
    buf.truncate(len);
    Ok(buf)
}

fn listxattr(p: &Path) -> std::io::Result<Vec<String>> {
    let c = cstr(p);
    let mut buf = vec![0u8; 65536];
    let r = unsafe { libc::listxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    let len = check_ssize(r)?;
    Ok(buf[..len]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Create / open / read / write
// ---------------------------------------------------------------------------------------------

#[test]
fn create_write_read_roundtrip() {
    let Some((_m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        let data = pattern(11, 200_000);
        let p = d.join("f");
        let mut f = File::create(&p).unwrap_or_else(|e| panic!("{class}: create: {e}"));
        for chunk in data.chunks(7777) {
            f.write_all(chunk).unwrap();
        }
        drop(f);
        assert_same_bytes(class, &fs::read(&p).unwrap(), &data);
        assert_eq!(fs::metadata(&p).unwrap().len(), 200_000, "{class}: size");
        // Reads at and past EOF.
        let f = File::open(&p).unwrap();
        let mut buf = [0u8; 10];
        assert_eq!(
            f.read_at(&mut buf, 200_000).unwrap(),
            0,
            "{class}: read at EOF"
        );
        assert_eq!(
            f.read_at(&mut buf, 10_000_000).unwrap(),
            0,
            "{class}: read past EOF"
        );
        assert_eq!(
            f.read_at(&mut buf, 199_995).unwrap(),
            5,
            "{class}: short read at tail"
        );
        assert_eq!(&buf[..5], &data[199_995..]);
    }
}

#[test]
fn empty_file_and_zero_length_writes() {
    let Some((_m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        let p = d.join("empty");
        let mut f = File::create(&p).unwrap();
        assert_eq!(f.write(b"").unwrap(), 0);
        drop(f);
        assert_eq!(fs::metadata(&p).unwrap().len(), 0, "{class}");
        assert!(fs::read(&p).unwrap().is_empty(), "{class}");
    }
}

#[test]
fn large_file_roundtrip_8mib() {
    let Some((_m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        let data = pattern(12, 8 << 20);
        let p = d.join("large");
        let mut f = File::create(&p).unwrap();
        for chunk in data.chunks(1 << 20) {
            f.write_all(chunk).unwrap();
        }
        f.sync_all().unwrap();
        drop(f);
        assert_same_bytes(class, &fs::read(&p).unwrap(), &data);
        // Random-access reads of odd sizes.
        let f = File::open(&p).unwrap();
        for (off, len) in [
            (0usize, 1usize),
            (4095, 2),
            (1 << 20, 131_071),
            ((8 << 20) - 3, 3),
        ] {
            let mut buf = vec![0u8; len];
            f.read_exact_at(&mut buf, off as u64).unwrap();
            assert_eq!(buf, data[off..off + len], "{class}: read {len} at {off}");
        }
    }
}

#[test]
fn open_append_writes_at_end() {
    let Some((m, mut dirs)) = setup() else { return };
    dirs.push(("episodic".into(), m.mem("a", "episodic")));
    for (class, d) in &dirs {
        let p = d.join("log");
        fs::write(&p, b"one\n").unwrap();
        let mut a = OpenOptions::new().append(true).open(&p).unwrap();
        let mut b = OpenOptions::new().append(true).open(&p).unwrap();
        a.write_all(b"two\n").unwrap();
        b.write_all(b"three\n").unwrap();
        a.write_all(b"four\n").unwrap();
        drop((a, b));
        assert_eq!(fs::read(&p).unwrap(), b"one\ntwo\nthree\nfour\n", "{class}");
    }
}

#[test]
fn open_trunc_empties_file() {
    let Some((_m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        let p = d.join("t");
        fs::write(&p, pattern(1, 50_000)).unwrap();
        let mut f = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().len(),
            0,
            "{class}: size after O_TRUNC"
        );
        f.write_all(b"new").unwrap();
        drop(f);
        assert_eq!(fs::read(&p).unwrap(), b"new", "{class}");
    }
}

#[test]
fn write_at_offsets_holes_read_as_zeros() {
    let Some((_m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        let p = d.join("holes");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        f.write_all_at(b"tail", (1 << 20) + 5).unwrap();
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(b"mid", 300_000).unwrap();
        drop(f);
        let got = fs::read(&p).unwrap();
        let mut want = vec![0u8; (1 << 20) + 9];
        want[..4].copy_from_slice(b"head");
        want[300_000..300_003].copy_from_slice(b"mid");
        want[(1 << 20) + 5..].copy_from_slice(b"tail");
        assert_same_bytes(class, &got, &want);
        // Overwrite inside existing data.
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.write_all_at(b"XYZ", 2).unwrap();
        drop(f);
        want[2..5].copy_from_slice(b"XYZ");
        assert_same_bytes(class, &fs::read(&p).unwrap(), &want);
    }
}

#[test]
fn seek_and_write_past_end_extends_with_zeros() {
    let Some((_m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        let p = d.join("seek");
        let mut f = File::create(&p).unwrap();
        f.write_all(b"abc").unwrap();
        f.seek(SeekFrom::Start(10)).unwrap();
        f.write_all(b"z").unwrap();
        drop(f);
        assert_eq!(fs::read(&p).unwrap(), b"abc\0\0\0\0\0\0\0z", "{class}");
    }
}

#[test]
fn truncate_shrink_then_extend_reads_zeros() {
    let Some((_m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        let p = d.join("tr");
        let data = pattern(3, 100_000);
        fs::write(&p, &data).unwrap();
        // truncate(2) by path
        let c = cstr(&p);
        check(unsafe { libc::truncate(c.as_ptr(), 10_000) }).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().len(), 10_000, "{class}: shrink");
        // ftruncate(2) extends: the old bytes beyond 10,000 must not come back.
        let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        f.set_len(100_000).unwrap();
        assert_eq!(
            f.metadata().unwrap().len(),
            100_000,
            "{class}: fstat after extend"
        );
        drop(f);
        let got = fs::read(&p).unwrap();
        let mut want = data[..10_000].to_vec();
        want.resize(100_000, 0);
        assert_same_bytes(&format!("{class}: shrink+extend"), &got, &want);
        // Truncate to an unaligned size inside a block, then extend by a write past the end.
        let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        f.set_len(4097).unwrap();
        f.write_all_at(b"!", 9000).unwrap();
        drop(f);
        let got = fs::read(&p).unwrap();
        let mut want = data[..4097].to_vec();
        want.resize(9000, 0);
        want.push(b'!');
        assert_same_bytes(&format!("{class}: unaligned truncate"), &got, &want);
        // Truncate to zero.
        File::create(&p).unwrap().set_len(0).unwrap();
        assert_eq!(fs::read(&p).unwrap().len(), 0);
    }
}

#[test]
fn read_in_extended_region_of_unflushed_chunk_reads_zeros() {
    // Regression (found by fsx): a file whose first chunk holds unflushed data shorter than
    // the file (extended by ftruncate or a write further on) is read inside that chunk past
    // the buffered bytes. Must read zeros — and must not take the daemon down.
    let Some((_m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        let p = d.join("ext");
        let f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        f.write_all_at(&pattern(8, 1000), 0).unwrap();
        f.set_len(1 << 20).unwrap();
        let mut buf = vec![0xAAu8; 8192];
        f.read_exact_at(&mut buf, 100_000)
            .unwrap_or_else(|e| panic!("{class}: pread in the extended part of chunk 0: {e}"));
        assert!(
            buf.iter().all(|b| *b == 0),
            "{class}: extended region not zero"
        );
        // Same with the extension made by a write in a later chunk.
        let g = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(d.join("ext2"))
            .unwrap();
        g.write_all_at(b"head", 0).unwrap();
        g.write_all_at(b"far", 300_000).unwrap();
        let mut buf = vec![0xAAu8; 4096];
        g.read_exact_at(&mut buf, 65_536)
            .unwrap_or_else(|e| panic!("{class}: pread between two writes: {e}"));
        assert!(buf.iter().all(|b| *b == 0), "{class}: gap not zero");
        let whole = fs::read(&p).unwrap();
        assert_eq!(whole.len(), 1 << 20, "{class}");
        assert_same_bytes(class, &whole[..1000], &pattern(8, 1000));
        assert!(
            whole[1000..].iter().all(|b| *b == 0),
            "{class}: tail not zero"
        );
    }
}

#[test]
fn e30_punch_hole_is_eopnotsupp_fallocate_works() {
    let Some((_m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        let p = d.join("falloc");
        fs::write(&p, pattern(2, 10_000)).unwrap();
        let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        use std::os::fd::AsRawFd;
        let fd = f.as_raw_fd();
        // posix_fallocate / plain fallocate extend the file with zeros.
        let r = unsafe { libc::posix_fallocate(fd, 0, 50_000) };
        assert_eq!(r, 0, "{class}: posix_fallocate: {}", errno_name(r));
        assert_eq!(
            f.metadata().unwrap().len(),
            50_000,
            "{class}: size after fallocate"
        );
        let got = fs::read(&p).unwrap();
        assert_same_bytes(class, &got[..10_000], &pattern(2, 10_000));
        assert!(
            got[10_000..].iter().all(|b| *b == 0),
            "{class}: fallocated range not zero"
        );
        // Hole punching is not supported.
        let r = check(unsafe {
            libc::fallocate(
                fd,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                0,
                4096,
            )
        });
        assert_errno(
            &format!("{class}: FALLOC_FL_PUNCH_HOLE"),
            r,
            libc::EOPNOTSUPP,
        );
        assert_same_bytes(class, &fs::read(&p).unwrap()[..10_000], &pattern(2, 10_000));
    }
}

#[test]
fn e16_open_excl_existing_is_eexist() {
    let Some((_m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        let p = d.join("x");
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
            .unwrap();
        assert_errno(
            &format!("{class}: O_CREAT|O_EXCL on existing"),
            OpenOptions::new().write(true).create_new(true).open(&p),
            libc::EEXIST,
        );
        // O_EXCL also refuses a dangling symlink (it does not follow).
        symlink("nowhere", d.join("dangling")).unwrap();
        assert_errno(
            &format!("{class}: O_EXCL on a dangling symlink"),
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(d.join("dangling")),
            libc::EEXIST,
        );
    }
}

#[test]
fn e17_open_missing_is_enoent() {
    let Some((_m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        assert_errno(
            &format!("{class}: open missing"),
            File::open(d.join("nope")),
            libc::ENOENT,
        );
        assert_errno(
            &format!("{class}: create in missing dir"),
            File::create(d.join("nodir/f")),
            libc::ENOENT,
        );
        assert_errno(
            &format!("{class}: unlink missing"),
            fs::remove_file(d.join("nope")),
            libc::ENOENT,
        );
    }
}

#[test]
fn e19_file_used_as_directory_is_enotdir() {
    let Some((_m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        fs::write(d.join("file"), b"x").unwrap();
        assert_errno(
            &format!("{class}: rmdir file"),
            fs::remove_dir(d.join("file")),
            libc::ENOTDIR,
        );
        assert_errno(
            &format!("{class}: open file/x"),
            File::open(d.join("file/x")),
            libc::ENOTDIR,
        );
        assert_errno(
            &format!("{class}: mkdir file/x"),
            fs::create_dir(d.join("file/x")),
            libc::ENOTDIR,
        );
    }
}

#[test]
fn e20_directory_used_as_file_is_eisdir() {
    let Some((_m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        fs::create_dir(d.join("dir")).unwrap();
        assert_errno(
            &format!("{class}: unlink dir"),
            fs::remove_file(d.join("dir")),
            libc::EISDIR,
        );
        assert_errno(
            &format!("{class}: open dir O_WRONLY"),
            OpenOptions::new().write(true).open(d.join("dir")),
            libc::EISDIR,
        );
        fs::write(d.join("f"), b"x").unwrap();
        assert_errno(
            &format!("{class}: rename file over dir"),
            fs::rename(d.join("f"), d.join("dir")),
            libc::EISDIR,
        );
    }
}

#[test]
fn e21_name_over_255_bytes_is_enametoolong() {
    let Some((_m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        let long = "n".repeat(256);
        assert_errno(
            &format!("{class}: create 256-byte name"),
            File::create(d.join(&long)),
            libc::ENAMETOOLONG,
        );
        assert_errno(
            &format!("{class}: mkdir 256-byte name"),
            fs::create_dir(d.join(&long)),
            libc::ENAMETOOLONG,
        );
        fs::write(d.join("short"), b"x").unwrap();
        assert_errno(
            &format!("{class}: rename to 256-byte name"),
            fs::rename(d.join("short"), d.join(&long)),
            libc::ENAMETOOLONG,
        );
        let ok = "n".repeat(255);
        fs::write(d.join(&ok), b"255").unwrap();
        assert_eq!(
            fs::read(d.join(&ok)).unwrap(),
            b"255",
            "{class}: 255-byte name"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Rename, unlink, link
// ---------------------------------------------------------------------------------------------

#[test]
fn rename_file_within_and_across_dirs() {
    let Some((_m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        fs::create_dir_all(d.join("x/y")).unwrap();
        fs::write(d.join("f"), b"content").unwrap();
        let ino = fs::metadata(d.join("f")).unwrap().ino();
        fs::rename(d.join("f"), d.join("g")).unwrap();
        assert!(!d.join("f").exists(), "{class}: old name still there");
        fs::rename(d.join("g"), d.join("x/y/h")).unwrap();
        assert_eq!(fs::read(d.join("x/y/h")).unwrap(), b"content", "{class}");
        assert_eq!(
            fs::metadata(d.join("x/y/h")).unwrap().ino(),
            ino,
            "{class}: rename changed the inode"
        );
        // Same-name rename is a no-op.
        fs::rename(d.join("x/y/h"), d.join("x/y/h")).unwrap();
        assert_eq!(fs::read(d.join("x/y/h")).unwrap(), b"content");
    }
}

#[test]
fn rename_over_existing_file_replaces_it() {
    let Some((_m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        fs::write(d.join("src"), b"new content").unwrap();
        fs::write(d.join("dst"), b"old content").unwrap();
        let held = File::open(d.join("dst")).unwrap();
        fs::rename(d.join("src"), d.join("dst")).unwrap();
        assert_eq!(fs::read(d.join("dst")).unwrap(), b"new content", "{class}");
        assert!(!d.join("src").exists(), "{class}");
        // The replaced file lives on for whoever holds it open.
        let mut s = Vec::new();
        (&held).read_to_end(&mut s).unwrap();
        assert_eq!(s, b"old content", "{class}: open fd of the replaced file");
        assert_eq!(
            held.metadata().unwrap().nlink(),
            0,
            "{class}: replaced file nlink"
        );
        let names: Vec<_> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names.len(),
            1,
            "{class}: listing after rename-over: {names:?}"
        );
    }
}

#[test]
fn rename_directory_with_contents() {
    let Some((_m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        fs::create_dir_all(d.join("p/q")).unwrap();
        fs::write(d.join("p/q/f"), b"deep").unwrap();
        fs::create_dir(d.join("other")).unwrap();
        fs::rename(d.join("p"), d.join("other/p2")).unwrap();
        assert_eq!(
            fs::read(d.join("other/p2/q/f")).unwrap(),
            b"deep",
            "{class}"
        );
        assert!(!d.join("p").exists());
        // Rename a dir over an empty dir replaces it.
        fs::create_dir(d.join("empty")).unwrap();
        fs::rename(d.join("other/p2"), d.join("empty")).unwrap();
        assert_eq!(fs::read(d.join("empty/q/f")).unwrap(), b"deep", "{class}");
        // nlink of parents follows the moves.
        assert_eq!(
            fs::metadata(d.join("other")).unwrap().nlink(),
            2,
            "{class}: other nlink"
        );
    }
}

#[test]
fn e27_rename_dir_over_non_empty_dir_is_enotempty() {
    let Some((_m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        fs::create_dir(d.join("a")).unwrap();
        fs::create_dir(d.join("b")).unwrap();
        fs::write(d.join("b/f"), b"x").unwrap();
        // POSIX allows EEXIST too; ext4 (and so agentfs) answers ENOTEMPTY.
        assert_errno(
            &format!("{class}: rename dir over non-empty dir"),
            fs::rename(d.join("a"), d.join("b")),
            libc::ENOTEMPTY,
        );
        assert_eq!(fs::read(d.join("b/f")).unwrap(), b"x", "{class}");
    }
}

#[test]
fn e28_rename_dir_into_itself_is_einval() {
    let Some((_m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        fs::create_dir_all(d.join("a/b")).unwrap();
        assert_errno(
            &format!("{class}: rename a -> a/b/c"),
            fs::rename(d.join("a"), d.join("a/b/c")),
            libc::EINVAL,
        );
    }
}

#[test]
fn e10_rename_across_classes_is_exdev() {
    let Some((m, _)) = setup() else { return };
    let (sem, work, epi) = (
        m.mem("a", "semantic"),
        m.mem("a", "working"),
        m.mem("a", "episodic"),
    );
    fs::write(sem.join("f"), b"s").unwrap();
    fs::write(work.join("w"), b"w").unwrap();
    assert_errno(
        "rename semantic -> working",
        fs::rename(sem.join("f"), work.join("f")),
        libc::EXDEV,
    );
    assert_errno(
        "rename working -> semantic",
        fs::rename(work.join("w"), sem.join("w")),
        libc::EXDEV,
    );
    assert_errno(
        "rename semantic -> episodic",
        fs::rename(sem.join("f"), epi.join("f")),
        libc::EXDEV,
    );
    fs::create_dir(sem.join("d")).unwrap();
    assert_errno(
        "rename dir semantic -> working",
        fs::rename(sem.join("d"), work.join("d")),
        libc::EXDEV,
    );
    // Nothing moved.
    assert_eq!(fs::read(sem.join("f")).unwrap(), b"s");
    assert_eq!(fs::read(work.join("w")).unwrap(), b"w");
    assert!(!work.join("f").exists() && !epi.join("f").exists());
    // `mv` falls back to copy + unlink on EXDEV, so tools still work.
    let out = run_with_timeout(
        std::process::Command::new("mv")
            .arg(sem.join("f"))
            .arg(work.join("moved")),
        CMD_TIMEOUT,
    )
    .unwrap();
    assert!(
        out.status.success(),
        "mv across classes: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read(work.join("moved")).unwrap(), b"s");
}

#[test]
fn e11_link_across_classes_is_exdev() {
    let Some((m, _)) = setup() else { return };
    let (sem, work) = (m.mem("a", "semantic"), m.mem("a", "working"));
    fs::write(sem.join("f"), b"s").unwrap();
    assert_errno(
        "link semantic -> working",
        fs::hard_link(sem.join("f"), work.join("f")),
        libc::EXDEV,
    );
    assert_eq!(fs::metadata(sem.join("f")).unwrap().nlink(), 1);
}

#[test]
fn e29_rename_across_agents_is_exdev() {
    // Not specified by the brief beyond "across classes": another agent's tree is another
    // class instance, so the expectation is EXDEV like any cross-class move.
    let Some((m, _)) = setup() else { return };
    m.agent("b");
    fs::write(m.mem("a", "semantic").join("f"), b"a's").unwrap();
    assert_errno(
        "rename a/mem/semantic/f -> b/mem/semantic/f",
        fs::rename(
            m.mem("a", "semantic").join("f"),
            m.mem("b", "semantic").join("f"),
        ),
        libc::EXDEV,
    );
}

#[test]
fn unlink_while_open_keeps_fd_working() {
    let Some((_m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        let p = d.join("tmp");
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        f.write_all(b"before").unwrap();
        fs::remove_file(&p).unwrap();
        assert!(!p.exists(), "{class}: name still there after unlink");
        assert_eq!(
            f.metadata().unwrap().nlink(),
            0,
            "{class}: fstat nlink after unlink"
        );
        f.write_all(b"+after").unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        let mut s = Vec::new();
        f.read_to_end(&mut s).unwrap();
        assert_eq!(s, b"before+after", "{class}: fd after unlink");
        f.set_len(3).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 3);
        // The name is free for an unrelated new file.
        fs::write(&p, b"fresh").unwrap();
        let mut s = Vec::new();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_to_end(&mut s).unwrap();
        assert_eq!(s, b"bef", "{class}: old fd sees the new file?");
        drop(f);
        assert_eq!(fs::read(&p).unwrap(), b"fresh", "{class}");
        let n = fs::read_dir(d).unwrap().count();
        assert_eq!(n, 1, "{class}: unlinked file still listed after close");
    }
}

#[test]
fn hard_links_share_content_and_count() {
    let Some((_m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        fs::create_dir(d.join("sub")).unwrap();
        fs::write(d.join("f"), b"shared").unwrap();
        fs::hard_link(d.join("f"), d.join("g")).unwrap();
        fs::hard_link(d.join("f"), d.join("sub/h")).unwrap();
        let (mf, mh) = (
            fs::metadata(d.join("f")).unwrap(),
            fs::metadata(d.join("sub/h")).unwrap(),
        );
        assert_eq!(mf.nlink(), 3, "{class}: nlink after 2 links");
        assert_eq!(mf.ino(), mh.ino(), "{class}: links have different inodes");
        OpenOptions::new()
            .append(true)
            .open(d.join("g"))
            .unwrap()
            .write_all(b"!")
            .unwrap();
        assert_eq!(
            fs::read(d.join("sub/h")).unwrap(),
            b"shared!",
            "{class}: write via link"
        );
        fs::remove_file(d.join("f")).unwrap();
        assert_eq!(
            fs::metadata(d.join("g")).unwrap().nlink(),
            2,
            "{class}: nlink after unlink"
        );
        fs::rename(d.join("g"), d.join("sub/h")).unwrap(); // rename onto a link of itself: no-op
        assert!(
            d.join("g").exists(),
            "{class}: rename between two links of one inode must do nothing"
        );
        fs::remove_file(d.join("g")).unwrap();
        assert_eq!(fs::metadata(d.join("sub/h")).unwrap().nlink(), 1);
        assert_eq!(fs::read(d.join("sub/h")).unwrap(), b"shared!");
    }
}

#[test]
fn e23_link_to_directory_is_eperm() {
    let Some((_m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        fs::create_dir(d.join("dir")).unwrap();
        assert_errno(
            &format!("{class}: link dir"),
            fs::hard_link(d.join("dir"), d.join("l")),
            libc::EPERM,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Directories
// ---------------------------------------------------------------------------------------------

#[test]
fn mkdir_rmdir_and_dir_nlink() {
    let Some((_m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        let base = d.join("base");
        fs::create_dir(&base).unwrap();
        assert_eq!(
            fs::metadata(&base).unwrap().nlink(),
            2,
            "{class}: new dir nlink"
        );
        fs::create_dir(base.join("s1")).unwrap();
        fs::create_dir(base.join("s2")).unwrap();
        fs::write(base.join("f"), b"").unwrap();
        assert_eq!(
            fs::metadata(&base).unwrap().nlink(),
            4,
            "{class}: nlink with 2 subdirs"
        );
        fs::remove_dir(base.join("s1")).unwrap();
        assert_eq!(
            fs::metadata(&base).unwrap().nlink(),
            3,
            "{class}: nlink after rmdir"
        );
        assert!(!base.join("s1").exists());
        fs::remove_dir_all(&base).unwrap();
        assert!(!base.exists(), "{class}: remove_dir_all");
    }
}

#[test]
fn e15_rmdir_non_empty_is_enotempty() {
    let Some((_m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        fs::create_dir(d.join("full")).unwrap();
        fs::write(d.join("full/f"), b"x").unwrap();
        assert_errno(
            &format!("{class}: rmdir non-empty"),
            fs::remove_dir(d.join("full")),
            libc::ENOTEMPTY,
        );
        fs::remove_file(d.join("full/f")).unwrap();
        fs::remove_dir(d.join("full")).unwrap();
    }
}

#[test]
fn e18_mkdir_existing_is_eexist() {
    let Some((_m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        fs::create_dir(d.join("d")).unwrap();
        assert_errno(
            &format!("{class}: mkdir existing dir"),
            fs::create_dir(d.join("d")),
            libc::EEXIST,
        );
        fs::write(d.join("f"), b"").unwrap();
        assert_errno(
            &format!("{class}: mkdir over file"),
            fs::create_dir(d.join("f")),
            libc::EEXIST,
        );
        assert_errno(
            &format!("{class}: symlink over file"),
            symlink("x", d.join("f")),
            libc::EEXIST,
        );
    }
}

fn create_many(dir: &Path, n: usize) {
    for i in 0..n {
        let p = dir.join(format!("entry-{i:06}"));
        File::create(&p).unwrap_or_else(|e| panic!("create {} (#{i}): {e}", p.display()));
    }
}

fn assert_listing_exact(what: &str, dir: &Path, n: usize) {
    let mut seen = HashSet::with_capacity(n);
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap_or_else(|e| panic!("{what}: readdir: {e}"));
        let name = e.file_name().into_string().unwrap();
        assert!(seen.insert(name.clone()), "{what}: {name} listed twice");
    }
    assert_eq!(
        seen.len(),
        n,
        "{what}: listed {} of {n} entries",
        seen.len()
    );
    for i in 0..n {
        let name = format!("entry-{i:06}");
        assert!(
            seen.contains(&name),
            "{what}: {name} missing from the listing"
        );
    }
}

#[test]
fn readdir_5000_entries() {
    let Some((_m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        let big = d.join("big");
        fs::create_dir(&big).unwrap();
        create_many(&big, 5000);
        assert_listing_exact(class, &big, 5000);
        // Types in the listing (d_type) are right, as `ls --color` and `find` rely on them.
        fs::create_dir(big.join("zz-dir")).unwrap();
        symlink("entry-000000", big.join("zz-link")).unwrap();
        for e in fs::read_dir(&big).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            match e.file_name().to_str().unwrap() {
                "zz-dir" => assert!(t.is_dir(), "{class}: d_type of dir"),
                "zz-link" => assert!(t.is_symlink(), "{class}: d_type of symlink"),
                _ => assert!(t.is_file(), "{class}: d_type of file"),
            }
        }
    }
}

#[test]
fn readdir_100000_entries() {
    let Some(m) = Mount::try_new_with_budget(900) else {
        return;
    };
    m.agent("a");
    let big = m.mem("a", "semantic").join("huge");
    fs::create_dir(&big).unwrap();
    // Empty files made with mknod(2): one FUSE request each (creat + close costs three), from
    // 4 threads, so the test measures listing rather than creating.
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let big = big.clone();
            std::thread::spawn(move || {
                for i in (t..100_000).step_by(4) {
                    let p = big.join(format!("entry-{i:06}"));
                    let c = cstr(&p);
                    check(unsafe { libc::mknod(c.as_ptr(), libc::S_IFREG | 0o644, 0) })
                        .unwrap_or_else(|e| panic!("mknod {}: {e}", p.display()));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("creator thread");
    }
    assert_listing_exact("semantic/huge", &big, 100_000);
    assert_eq!(fs::metadata(&big).unwrap().nlink(), 2);
}

#[test]
fn readdir_while_unlinking_returns_each_entry_once() {
    // The `rm -rf` pattern: read a batch, unlink it, read on. Stable offsets mean no entry is
    // skipped or repeated while earlier entries disappear.
    let Some((_m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        let dir = d.join("rmrf");
        fs::create_dir(&dir).unwrap();
        create_many(&dir, 3000);
        let c = cstr(&dir);
        let dp = unsafe { libc::opendir(c.as_ptr()) };
        assert!(!dp.is_null(), "{class}: opendir");
        let mut seen = HashSet::new();
        let mut dots = 0;
        loop {
            let ent = unsafe { libc::readdir(dp) };
            if ent.is_null() {
                break;
            }
            let name = unsafe { std::ffi::CStr::from_ptr((*ent).d_name.as_ptr()) }
                .to_string_lossy()
                .into_owned();
            if name == "." || name == ".." {
                dots += 1;
                continue;
            }
            assert!(seen.insert(name.clone()), "{class}: {name} returned twice");
            fs::remove_file(dir.join(&name))
                .unwrap_or_else(|e| panic!("{class}: unlink {name}: {e}"));
        }
        unsafe { libc::closedir(dp) };
        assert_eq!(dots, 2, "{class}: '.' and '..' must each be listed once");
        assert_eq!(
            seen.len(),
            3000,
            "{class}: entries returned while unlinking"
        );
        fs::remove_dir(&dir).unwrap_or_else(|e| panic!("{class}: rmdir after rm: {e}"));
    }
}

fn readdir_names(dp: *mut libc::DIR, n: usize) -> Vec<String> {
    let mut v = Vec::with_capacity(n.min(100_000));
    while v.len() < n {
        let ent = unsafe { libc::readdir(dp) };
        if ent.is_null() {
            break;
        }
        let name = unsafe { std::ffi::CStr::from_ptr((*ent).d_name.as_ptr()) };
        v.push(name.to_string_lossy().into_owned());
    }
    v
}

#[test]
fn readdir_seekdir_resumes_at_the_same_entry() {
    // telldir/seekdir hand the directory offset (d_off) back to the filesystem: offsets must be
    // stable cookies, also when entries are created meanwhile (as NFS exports and `find`
    // with many open dirs rely on).
    let Some((_m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        let dir = d.join("seek");
        fs::create_dir(&dir).unwrap();
        create_many(&dir, 3000);
        let c = cstr(&dir);
        let dp = unsafe { libc::opendir(c.as_ptr()) };
        assert!(!dp.is_null(), "{class}: opendir");
        let first = readdir_names(dp, 1000);
        assert_eq!(first.len(), 1000, "{class}");
        let pos = unsafe { libc::telldir(dp) };
        let a = readdir_names(dp, 700);
        // New entries after the position was taken must not shift the old ones.
        for i in 0..50 {
            File::create(dir.join(format!("late-{i}"))).unwrap();
        }
        unsafe { libc::seekdir(dp, pos) };
        let b = readdir_names(dp, 700);
        assert_eq!(a.len(), 700, "{class}");
        // Entries created meanwhile may or may not show up, but every old entry comes back in
        // the same order and none is skipped or repeated.
        let b_old: Vec<&String> = b.iter().filter(|n| !n.starts_with("late-")).collect();
        let a_ref: Vec<&String> = a.iter().take(b_old.len()).collect();
        assert_eq!(
            b_old, a_ref,
            "{class}: seekdir(telldir()) did not resume at the same entry"
        );
        assert!(
            b_old.len() >= 650,
            "{class}: only {} old entries after seekdir",
            b_old.len()
        );
        // rewinddir starts over: everything, once.
        unsafe { libc::rewinddir(dp) };
        let all = readdir_names(dp, usize::MAX);
        let set: HashSet<&String> = all.iter().collect();
        assert_eq!(set.len(), all.len(), "{class}: duplicates after rewinddir");
        assert_eq!(
            all.len(),
            3000 + 50 + 2,
            "{class}: entries after rewinddir (with . and ..)"
        );
        assert!(
            first.iter().all(|n| set.contains(n)),
            "{class}: rewinddir lost entries"
        );
        unsafe { libc::closedir(dp) };
    }
}

// ---------------------------------------------------------------------------------------------
// Metadata
// ---------------------------------------------------------------------------------------------

#[test]
fn stat_reports_size_type_owner_blocks() {
    let Some((_m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        let p = d.join("f");
        fs::write(&p, pattern(5, 100_000)).unwrap();
        let md = fs::metadata(&p).unwrap();
        assert!(md.is_file(), "{class}");
        assert_eq!(md.len(), 100_000, "{class}: st_size");
        assert_eq!(md.nlink(), 1, "{class}: st_nlink");
        assert_eq!(
            (md.uid(), md.gid()),
            (0, 0),
            "{class}: owner of a file created by root"
        );
        assert!(
            md.blocks() * 512 >= 100_000,
            "{class}: st_blocks {} too small for du",
            md.blocks()
        );
        assert!(md.blksize() > 0, "{class}: st_blksize");
        assert_eq!(
            md.mode() & 0o777,
            0o666 & !umask(),
            "{class}: mode of creat(0666) under the umask"
        );
        // Different files have different inode numbers; stat and fstat agree.
        fs::write(d.join("g"), b"").unwrap();
        assert_ne!(
            md.ino(),
            fs::metadata(d.join("g")).unwrap().ino(),
            "{class}: ino reuse"
        );
        assert_eq!(
            File::open(&p).unwrap().metadata().unwrap().ino(),
            md.ino(),
            "{class}"
        );
    }
}

#[test]
fn times_follow_writes_chmod_and_utimens() {
    let Some((_m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        let p = d.join("t");
        let before = now_secs();
        fs::write(&p, b"x").unwrap();
        let md = fs::metadata(&p).unwrap();
        for (n, t) in [
            ("atime", md.atime()),
            ("mtime", md.mtime()),
            ("ctime", md.ctime()),
        ] {
            assert!(
                (before - 2..=now_secs() + 2).contains(&t),
                "{class}: new file {n} {t} not ~now {before}"
            );
        }
        // utimens sets exact values, nanoseconds included.
        utimens(
            &p,
            ts(1_000_000_000, 123_456_789),
            ts(1_100_000_000, 987_654_321),
        )
        .unwrap();
        let md = fs::metadata(&p).unwrap();
        assert_eq!(
            (md.atime(), md.atime_nsec()),
            (1_000_000_000, 123_456_789),
            "{class}: atime"
        );
        assert_eq!(
            (md.mtime(), md.mtime_nsec()),
            (1_100_000_000, 987_654_321),
            "{class}: mtime"
        );
        assert!(
            md.ctime() >= before - 2,
            "{class}: utimens must update ctime"
        );
        // UTIME_OMIT leaves a field, UTIME_NOW sets it to now.
        utimens(&p, ts(0, libc::UTIME_NOW), ts(0, libc::UTIME_OMIT)).unwrap();
        let md = fs::metadata(&p).unwrap();
        assert_eq!(
            md.mtime(),
            1_100_000_000,
            "{class}: UTIME_OMIT changed mtime"
        );
        assert!(
            md.atime() >= before - 2,
            "{class}: UTIME_NOW atime {}",
            md.atime()
        );
        // A write moves mtime and ctime to now.
        utimens(&p, ts(1_000_000_000, 0), ts(1_000_000_000, 0)).unwrap();
        OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"y")
            .unwrap();
        let md = fs::metadata(&p).unwrap();
        assert!(
            md.mtime() >= before - 2,
            "{class}: write did not update mtime ({})",
            md.mtime()
        );
        // chmod moves ctime.
        let c0 = md.ctime();
        utimens(&p, ts(1_000_000_000, 0), ts(1_000_000_000, 0)).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        let md = fs::metadata(&p).unwrap();
        assert!(md.ctime() >= c0, "{class}: chmod ctime went backwards");
        assert!(
            md.ctime() >= before - 2,
            "{class}: chmod did not set ctime to now"
        );
        // Creating and removing an entry update the parent's mtime.
        let parent = d.join("parent");
        fs::create_dir(&parent).unwrap();
        utimens(&parent, ts(1_000_000_000, 0), ts(1_000_000_000, 0)).unwrap();
        fs::write(parent.join("child"), b"").unwrap();
        assert!(
            fs::metadata(&parent).unwrap().mtime() >= before - 2,
            "{class}: parent mtime after create"
        );
        utimens(&parent, ts(1_000_000_000, 0), ts(1_000_000_000, 0)).unwrap();
        fs::remove_file(parent.join("child")).unwrap();
        assert!(
            fs::metadata(&parent).unwrap().mtime() >= before - 2,
            "{class}: parent mtime after unlink"
        );
    }
}

#[test]
fn chmod_and_chown_as_root() {
    let Some((_m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        let p = d.join("f");
        fs::write(&p, b"x").unwrap();
        for mode in [0o600, 0o751, 0o4755, 0o000, 0o644] {
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(
                fs::metadata(&p).unwrap().mode() & 0o7777,
                mode,
                "{class}: chmod {mode:o}"
            );
        }
        fs::create_dir(d.join("sticky")).unwrap();
        fs::set_permissions(d.join("sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
        assert_eq!(
            fs::metadata(d.join("sticky")).unwrap().mode() & 0o7777,
            0o1777,
            "{class}: sticky dir"
        );
        std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
        let md = fs::metadata(&p).unwrap();
        assert_eq!((md.uid(), md.gid()), (65534, 65534), "{class}: chown");
        std::os::unix::fs::chown(&p, None, Some(1)).unwrap();
        let md = fs::metadata(&p).unwrap();
        assert_eq!((md.uid(), md.gid()), (65534, 1), "{class}: chgrp only");
        // fchmod on an open fd.
        let f = File::open(&p).unwrap();
        f.set_permissions(fs::Permissions::from_mode(0o640))
            .unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().mode() & 0o7777,
            0o640,
            "{class}: fchmod"
        );
    }
}

#[test]
fn symlinks_and_readlink() {
    let Some((_m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        fs::create_dir(d.join("dir")).unwrap();
        fs::write(d.join("dir/target"), b"via link").unwrap();
        symlink("dir/target", d.join("rel")).unwrap();
        symlink(d.join("dir/target"), d.join("abs")).unwrap();
        symlink("does/not/exist", d.join("dangling")).unwrap();
        let long = "x/".repeat(1000) + "end";
        symlink(&long, d.join("long")).unwrap();
        assert_eq!(
            fs::read_link(d.join("rel")).unwrap(),
            Path::new("dir/target"),
            "{class}"
        );
        assert_eq!(
            fs::read_link(d.join("long")).unwrap(),
            Path::new(&long),
            "{class}: 2 KB target"
        );
        assert_eq!(
            fs::read(d.join("rel")).unwrap(),
            b"via link",
            "{class}: follow relative"
        );
        assert_eq!(
            fs::read(d.join("abs")).unwrap(),
            b"via link",
            "{class}: follow absolute"
        );
        let lm = fs::symlink_metadata(d.join("rel")).unwrap();
        assert!(lm.file_type().is_symlink(), "{class}: lstat type");
        assert_eq!(
            lm.len(),
            "dir/target".len() as u64,
            "{class}: symlink st_size = target length"
        );
        assert!(
            fs::metadata(d.join("rel")).unwrap().is_file(),
            "{class}: stat follows"
        );
        assert_errno(
            &format!("{class}: open dangling"),
            File::open(d.join("dangling")),
            libc::ENOENT,
        );
        // unlink removes the link, not the target.
        fs::remove_file(d.join("rel")).unwrap();
        assert!(d.join("dir/target").exists(), "{class}");
        // A symlink loop is ELOOP (resolved by the kernel, but lookups must behave).
        symlink("loop2", d.join("loop1")).unwrap();
        symlink("loop1", d.join("loop2")).unwrap();
        assert_errno(
            &format!("{class}: symlink loop"),
            File::open(d.join("loop1")),
            libc::ELOOP,
        );
    }
}

#[test]
fn e24_readlink_of_non_symlink_is_einval() {
    let Some((_m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        fs::write(d.join("f"), b"").unwrap();
        assert_errno(
            &format!("{class}: readlink file"),
            fs::read_link(d.join("f")),
            libc::EINVAL,
        );
    }
}

#[test]
fn fsync_fdatasync_and_dir_fsync() {
    let Some((_m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        let mut f = File::create(d.join("f")).unwrap();
        f.write_all(&pattern(9, 300_000)).unwrap();
        f.sync_data()
            .unwrap_or_else(|e| panic!("{class}: fdatasync: {e}"));
        f.write_all(b"more").unwrap();
        f.sync_all()
            .unwrap_or_else(|e| panic!("{class}: fsync: {e}"));
        let dir = File::open(d).unwrap();
        dir.sync_all()
            .unwrap_or_else(|e| panic!("{class}: fsync(dir): {e}"));
        let c = cstr(d.join("f"));
        let fd =
            check(unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) }).unwrap();
        check(unsafe { libc::fsync(fd) })
            .unwrap_or_else(|e| panic!("{class}: fsync(O_RDONLY fd): {e}"));
        close_raw(fd);
        check(unsafe { libc::syncfs(dir_fd(&dir)) })
            .unwrap_or_else(|e| panic!("{class}: syncfs: {e}"));
    }
}

fn dir_fd(f: &File) -> i32 {
    use std::os::fd::AsRawFd;
    f.as_raw_fd()
}

#[test]
fn statfs_is_sane() {
    let Some((m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        let c = cstr(d);
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        check(unsafe { libc::statvfs(c.as_ptr(), &mut st) }).unwrap();
        assert!(st.f_bsize > 0, "{class}: f_bsize");
        assert!(st.f_frsize > 0, "{class}: f_frsize");
        assert!(
            st.f_blocks >= st.f_bfree && st.f_bfree >= st.f_bavail,
            "{class}: block counts {st:?}",
            st = (st.f_blocks, st.f_bfree, st.f_bavail)
        );
        assert!(
            st.f_blocks > 0,
            "{class}: f_blocks 0 makes df show nothing and some tools refuse to write"
        );
        assert_eq!(st.f_namemax, 255, "{class}: f_namemax");
    }
    let c = cstr(&m.mnt);
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    check(unsafe { libc::statfs(c.as_ptr(), &mut st) }).unwrap();
    assert_eq!(
        st.f_type as i64, 0x6573_5546,
        "statfs f_type of MNT is not FUSE_SUPER_MAGIC"
    );
}

#[test]
fn xattrs_in_user_namespace() {
    let Some((_m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        let p = d.join("f");
        fs::write(&p, b"x").unwrap();
        setxattr(&p, "user.k1", b"value one", 0)
            .unwrap_or_else(|e| panic!("{class}: setxattr: {e}"));
        setxattr(&p, "user.k2", &[0u8, 1, 2, 255], 0).unwrap();
        setxattr(&p, "user.empty", b"", 0).unwrap();
        assert_eq!(getxattr(&p, "user.k1").unwrap(), b"value one", "{class}");
        assert_eq!(
            getxattr(&p, "user.k2").unwrap(),
            [0u8, 1, 2, 255],
            "{class}: binary value"
        );
        assert_eq!(
            getxattr(&p, "user.empty").unwrap(),
            b"",
            "{class}: empty value"
        );
        let mut l = listxattr(&p).unwrap();
        l.sort();
        assert_eq!(
            l,
            ["user.empty", "user.k1", "user.k2"],
            "{class}: listxattr"
        );
        // Size probe and ERANGE.
        let (c, n) = (cstr(&p), cstr("user.k1"));
        let size = unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
        assert_eq!(size, 9, "{class}: getxattr size probe");
        let mut small = [0u8; 2];
        let r = unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), small.as_mut_ptr().cast(), 2) };
        assert_errno(
            &format!("{class}: getxattr small buffer"),
            check_ssize(r),
            libc::ERANGE,
        );
        // Flags.
        assert_errno(
            &format!("{class}: XATTR_CREATE existing"),
            setxattr(&p, "user.k1", b"v", libc::XATTR_CREATE),
            libc::EEXIST,
        );
        assert_errno(
            &format!("{class}: XATTR_REPLACE missing"),
            setxattr(&p, "user.nope", b"v", libc::XATTR_REPLACE),
            libc::ENODATA,
        );
        setxattr(&p, "user.k1", b"replaced", libc::XATTR_REPLACE).unwrap();
        assert_eq!(getxattr(&p, "user.k1").unwrap(), b"replaced", "{class}");
        // Remove.
        let n2 = cstr("user.k2");
        check(unsafe { libc::removexattr(c.as_ptr(), n2.as_ptr()) }).unwrap();
        assert_errno(
            &format!("{class}: getxattr removed"),
            getxattr(&p, "user.k2"),
            libc::ENODATA,
        );
        // xattrs on directories too.
        setxattr(d, "user.dirattr", b"d", 0)
            .unwrap_or_else(|e| panic!("{class}: setxattr on dir: {e}"));
        assert_eq!(getxattr(d, "user.dirattr").unwrap(), b"d");
    }
}

#[test]
fn e22_getxattr_missing_is_enodata() {
    let Some((_m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        fs::write(d.join("f"), b"").unwrap();
        assert_errno(
            &format!("{class}: getxattr missing"),
            getxattr(&d.join("f"), "user.missing"),
            libc::ENODATA,
        );
        let (c, n) = (cstr(d.join("f")), cstr("user.missing"));
        assert_errno(
            &format!("{class}: removexattr missing"),
            check(unsafe { libc::removexattr(c.as_ptr(), n.as_ptr()) }),
            libc::ENODATA,
        );
    }
}

#[test]
fn xattrs_and_metadata_survive_remount() {
    let Some((mut m, _)) = setup() else { return };
    let p = m.mem("a", "semantic").join("f");
    fs::write(&p, b"x").unwrap();
    setxattr(&p, "user.keep", b"kept", 0).unwrap();
    std::os::unix::fs::chown(&p, Some(65534), Some(1)).unwrap();
    utimens(&p, ts(1_200_000_000, 5), ts(1_300_000_000, 7)).unwrap();
    fs::hard_link(&p, m.mem("a", "semantic").join("g")).unwrap();
    m.remount();
    assert_eq!(getxattr(&p, "user.keep").unwrap(), b"kept");
    let md = fs::metadata(&p).unwrap();
    assert_eq!((md.uid(), md.gid()), (65534, 1), "owner after remount");
    assert_eq!(
        (md.mtime(), md.mtime_nsec()),
        (1_300_000_000, 7),
        "mtime after remount"
    );
    assert_eq!(
        (md.atime(), md.atime_nsec()),
        (1_200_000_000, 5),
        "atime after remount"
    );
    assert_eq!(md.nlink(), 2, "nlink after remount");
}

#[test]
fn copy_and_shell_tools_work() {
    let Some((_m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        let data = pattern(21, 1_000_003);
        fs::write(d.join("src"), &data).unwrap();
        fs::copy(d.join("src"), d.join("dst")).unwrap_or_else(|e| panic!("{class}: fs::copy: {e}"));
        assert_same_bytes(class, &fs::read(d.join("dst")).unwrap(), &data);
        let script = format!(
            "set -e; cd {}; mkdir -p t/u; printf abc > t/u/f; cp -a t t2; \
             test \"$(cat t2/u/f)\" = abc; ls -la t2 > /dev/null; find t2 -type f | wc -l; \
             tar cf - t | (mkdir t3 && cd t3 && tar xf -); rm -rf t t2 t3",
            d.display()
        );
        let out = run_with_timeout(
            std::process::Command::new("sh").arg("-c").arg(&script),
            CMD_TIMEOUT,
        )
        .unwrap();
        assert!(
            out.status.success(),
            "{class}: shell tools: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1", "{class}");
    }
}

// ---------------------------------------------------------------------------------------------
// Episodic: append-only for everyone
// ---------------------------------------------------------------------------------------------

#[test]
fn episodic_create_and_append_work() {
    let Some((m, _)) = setup() else { return };
    let e = m.mem("a", "episodic");
    fs::create_dir(e.join("2024")).unwrap();
    let p = e.join("2024/log");
    // Plain create + write from offset 0 of a new file is an append.
    fs::write(&p, b"a\n").unwrap();
    OpenOptions::new()
        .append(true)
        .open(&p)
        .unwrap()
        .write_all(b"b\n")
        .unwrap();
    // A write exactly at the current size (no O_APPEND) is an append too.
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all_at(b"c\n", 4).unwrap();
    drop(f);
    assert_eq!(fs::read(&p).unwrap(), b"a\nb\nc\n");
    fs::write(e.join("other"), b"x").unwrap();
    assert_eq!(fs::read_dir(&e).unwrap().count(), 2);
}

#[test]
fn e12_episodic_overwrite_is_eperm() {
    let Some((m, _)) = setup() else { return };
    let p = m.mem("a", "episodic").join("log");
    fs::write(&p, b"0123456789").unwrap();
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    assert_errno(
        "episodic pwrite at 0 of 10",
        f.write_at(b"X", 0),
        libc::EPERM,
    );
    assert_errno(
        "episodic pwrite at 5 of 10",
        f.write_at(b"XXXXXXXXXX", 5),
        libc::EPERM,
    );
    assert_errno(
        "episodic pwrite past end (hole)",
        f.write_at(b"X", 20),
        libc::EPERM,
    );
    drop(f);
    assert_eq!(
        fs::read(&p).unwrap(),
        b"0123456789",
        "episodic content changed by a refused write"
    );
    assert_eq!(fs::metadata(&p).unwrap().len(), 10);
}

#[test]
fn e13_episodic_truncate_is_eperm() {
    let Some((m, _)) = setup() else { return };
    let p = m.mem("a", "episodic").join("log");
    fs::write(&p, b"history").unwrap();
    let c = cstr(&p);
    assert_errno(
        "episodic truncate(2)",
        check(unsafe { libc::truncate(c.as_ptr(), 3) }),
        libc::EPERM,
    );
    let f = OpenOptions::new().append(true).open(&p).unwrap();
    assert_errno("episodic ftruncate(2)", f.set_len(0), libc::EPERM);
    assert_errno("episodic ftruncate(2) extend", f.set_len(100), libc::EPERM);
    drop(f);
    assert_errno(
        "episodic open O_TRUNC",
        OpenOptions::new().write(true).truncate(true).open(&p),
        libc::EPERM,
    );
    assert_errno(
        "episodic creat() over existing",
        File::create(&p),
        libc::EPERM,
    );
    assert_eq!(
        fs::read(&p).unwrap(),
        b"history",
        "episodic content changed"
    );
}

#[test]
fn e14_episodic_rename_unlink_chmod_are_eperm() {
    let Some((m, _)) = setup() else { return };
    let e = m.mem("a", "episodic");
    let p = e.join("log");
    fs::write(&p, b"history").unwrap();
    assert_errno(
        "episodic rename",
        fs::rename(&p, e.join("renamed")),
        libc::EPERM,
    );
    fs::write(e.join("other"), b"o").unwrap();
    assert_errno(
        "episodic rename over",
        fs::rename(e.join("other"), &p),
        libc::EPERM,
    );
    assert_errno("episodic unlink", fs::remove_file(&p), libc::EPERM);
    assert_errno(
        "episodic chmod",
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)),
        libc::EPERM,
    );
    assert_eq!(fs::read(&p).unwrap(), b"history");
    assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o644);
}

#[test]
fn episodic_concurrent_appends_are_atomic() {
    let Some((m, _)) = setup() else { return };
    let p = Arc::new(m.mem("a", "episodic").join("shared.log"));
    File::create(&*p).unwrap();
    const REC: usize = 512;
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let p = p.clone();
            std::thread::spawn(move || {
                let mut f = OpenOptions::new().append(true).open(&*p).unwrap();
                for i in 0..100u8 {
                    let mut rec = vec![b'a' + t; REC];
                    rec[0] = b'0' + t;
                    rec[1] = i;
                    rec[REC - 1] = b'\n';
                    f.write_all(&rec).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let data = fs::read(&*p).unwrap();
    assert_eq!(data.len(), 8 * 100 * REC, "total size of 800 appends");
    let mut next = [0u8; 8];
    for (k, rec) in data.chunks(REC).enumerate() {
        let t = rec[0].wrapping_sub(b'0');
        assert!(
            t < 8,
            "record {k}: torn or interleaved (first byte {})",
            rec[0]
        );
        assert!(
            rec[2..REC - 1].iter().all(|b| *b == b'a' + t),
            "record {k}: interleaved bytes"
        );
        assert_eq!(
            rec[1], next[t as usize],
            "record {k}: thread {t} records out of order"
        );
        next[t as usize] += 1;
    }
}

// ---------------------------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------------------------

#[test]
fn concurrent_writers_on_different_files() {
    let Some((_m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        let d = Arc::new(d.clone());
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let d = d.clone();
                std::thread::spawn(move || {
                    for i in 0..40u64 {
                        let data = pattern(t * 1000 + i, 20_000 + (i as usize * 997) % 50_000);
                        let p = d.join(format!("t{t}-{i}"));
                        let mut f = File::create(&p).unwrap();
                        for c in data.chunks(4096) {
                            f.write_all(c).unwrap();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("writer thread panicked");
        }
        for t in 0..8u64 {
            for i in 0..40u64 {
                let want = pattern(t * 1000 + i, 20_000 + (i as usize * 997) % 50_000);
                let got = fs::read(d.join(format!("t{t}-{i}"))).unwrap();
                assert_same_bytes(&format!("{class}: t{t}-{i}"), &got, &want);
            }
        }
        assert_eq!(fs::read_dir(&*d).unwrap().count(), 320, "{class}");
    }
}

#[test]
fn concurrent_reader_sees_consistent_file_while_other_dir_is_busy() {
    // A file read 200 times while another thread keeps creating files in a sibling dir always
    // reads back whole and correct, and the creator makes progress meanwhile.
    let Some((m, _)) = setup() else { return };
    let sem = m.mem("a", "semantic");
    let data = pattern(4, 64 * 1024);
    fs::write(sem.join("hot"), &data).unwrap();
    fs::create_dir(sem.join("busy")).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (s2, busy) = (stop.clone(), sem.join("busy"));
    let writer = std::thread::spawn(move || {
        let mut i = 0u64;
        while !s2.load(std::sync::atomic::Ordering::Relaxed) {
            fs::write(busy.join(format!("f{i}")), b"0123456789").unwrap();
            i += 1;
        }
        i
    });
    for _ in 0..200 {
        let got = fs::read(sem.join("hot")).unwrap();
        assert_same_bytes("hot file during creates", &got, &data);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let n = writer.join().unwrap();
    assert!(n > 0, "the writer made no progress");
}

// ---------------------------------------------------------------------------------------------
// Permissions as another uid (allow_other + default_permissions)
// ---------------------------------------------------------------------------------------------

const NOBODY: u32 = 65534;
const DAEMON: u32 = 1;

fn user_open(uid: u32, p: &Path, flags: i32) -> i32 {
    let c = cstr(p);
    as_user(uid, uid, || unsafe {
        let fd = libc::open(c.as_ptr(), flags, 0o644);
        if fd < 0 {
            last_errno()
        } else {
            libc::close(fd);
            0
        }
    })
}

#[test]
fn e25_write_without_permission_is_eacces() {
    let Some((_m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        let f = d.join("rootfile");
        fs::write(&f, b"root's").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        // The class dirs must be reachable by other uids for any of this to matter.
        assert_eq!(
            user_open(NOBODY, &f, libc::O_RDONLY),
            0,
            "{class}: nobody reads a 0644 file"
        );
        let r = user_open(NOBODY, &f, libc::O_WRONLY);
        assert_eq!(
            r,
            libc::EACCES,
            "{class}: nobody writes a 0644 root file: got {}",
            errno_name(r)
        );
        fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
        let r = user_open(NOBODY, &f, libc::O_RDONLY);
        assert_eq!(
            r,
            libc::EACCES,
            "{class}: nobody reads a 0600 root file: got {}",
            errno_name(r)
        );
        // Creating in a root-owned 0755 dir.
        fs::create_dir(d.join("closed")).unwrap();
        fs::set_permissions(d.join("closed"), fs::Permissions::from_mode(0o755)).unwrap();
        let r = user_open(
            NOBODY,
            &d.join("closed/new"),
            libc::O_CREAT | libc::O_WRONLY,
        );
        assert_eq!(
            r,
            libc::EACCES,
            "{class}: nobody creates in a 0755 root dir: got {}",
            errno_name(r)
        );
        assert!(!d.join("closed/new").exists(), "{class}");
        // Searching a 0700 dir.
        fs::set_permissions(d.join("closed"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(d.join("closed/inside"), b"x").unwrap();
        let r = user_open(NOBODY, &d.join("closed/inside"), libc::O_RDONLY);
        assert_eq!(
            r,
            libc::EACCES,
            "{class}: nobody traverses a 0700 dir: got {}",
            errno_name(r)
        );
    }
}

#[test]
fn other_uid_creates_and_owns_files() {
    let Some((_m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        let open = d.join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let f = open.join("mine");
        assert_eq!(
            user_open(NOBODY, &f, libc::O_CREAT | libc::O_WRONLY),
            0,
            "{class}: nobody creates in 0777 dir"
        );
        let md = fs::metadata(&f).unwrap();
        assert_eq!(
            (md.uid(), md.gid()),
            (NOBODY, NOBODY),
            "{class}: owner of nobody's file"
        );
        // The owner may chmod; the owner may not chown to someone else.
        let c = cstr(&f);
        let r = as_user(NOBODY, NOBODY, || unsafe {
            if libc::chmod(c.as_ptr(), 0o600) != 0 {
                last_errno()
            } else {
                0
            }
        });
        assert_eq!(r, 0, "{class}: owner chmod: {}", errno_name(r));
        assert_eq!(fs::metadata(&f).unwrap().mode() & 0o777, 0o600);
        let r = as_user(NOBODY, NOBODY, || unsafe {
            if libc::chown(c.as_ptr(), DAEMON, DAEMON) != 0 {
                last_errno()
            } else {
                0
            }
        });
        assert_eq!(
            r,
            libc::EPERM,
            "{class}: non-root chown to another uid: got {}",
            errno_name(r)
        );
        // A mkdir by nobody is owned by nobody too.
        let sub = cstr(open.join("sub"));
        let r = as_user(NOBODY, NOBODY, || unsafe {
            if libc::mkdir(sub.as_ptr(), 0o755) != 0 {
                last_errno()
            } else {
                0
            }
        });
        assert_eq!(r, 0, "{class}: nobody mkdir: {}", errno_name(r));
        assert_eq!(fs::metadata(open.join("sub")).unwrap().uid(), NOBODY);
    }
}

/// As `uid`: opens `p` for writing and writes one byte at offset 0, or truncates it to 1 byte.
fn user_write_or_truncate(uid: u32, p: &Path, truncate: bool) -> i32 {
    let c = cstr(p);
    as_user(uid, uid, || unsafe {
        if truncate {
            return if libc::truncate(c.as_ptr(), 1) != 0 {
                last_errno()
            } else {
                0
            };
        }
        let fd = libc::open(c.as_ptr(), libc::O_WRONLY);
        if fd < 0 {
            return last_errno();
        }
        let r = libc::pwrite(fd, b"y".as_ptr().cast(), 1, 0);
        libc::close(fd);
        if r != 1 {
            last_errno()
        } else {
            0
        }
    })
}

/// Linux's rule (should_remove_suid): a write or truncate by a caller without CAP_FSETID
/// clears set-user-ID, and set-group-ID when group-exec is set; root keeps both; chown
/// clears them whoever does it.
#[test]
fn write_and_truncate_clear_suid_sgid_unless_privileged() {
    let Some((_m, dirs)) = setup() else { return };
    let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o7777;
    for (class, d) in &dirs {
        for truncate in [false, true] {
            let what = if truncate { "truncate" } else { "write" };
            for (start, after_user) in [(0o6755, 0o0755), (0o6745, 0o2745), (0o4700, 0o0700)] {
                let f = d.join(format!("suid-{what}-{start:o}"));
                fs::write(&f, b"xx").unwrap();
                std::os::unix::fs::chown(&f, Some(NOBODY), Some(NOBODY)).unwrap();
                fs::set_permissions(&f, fs::Permissions::from_mode(start)).unwrap();
                assert_eq!(mode(&f), start, "{class}: chmod {start:o}");
                let r = user_write_or_truncate(NOBODY, &f, truncate);
                assert_eq!(r, 0, "{class}: {what} by the owner: {}", errno_name(r));
                assert_eq!(
                    mode(&f),
                    after_user,
                    "{class}: {what} by uid {NOBODY} of a {start:o} file"
                );
                // Root (CAP_FSETID) keeps the bits.
                fs::set_permissions(&f, fs::Permissions::from_mode(start)).unwrap();
                if truncate {
                    OpenOptions::new()
                        .write(true)
                        .open(&f)
                        .unwrap()
                        .set_len(1)
                        .unwrap();
                } else {
                    OpenOptions::new()
                        .write(true)
                        .open(&f)
                        .unwrap()
                        .write_all_at(b"z", 0)
                        .unwrap();
                }
                assert_eq!(
                    mode(&f),
                    start,
                    "{class}: {what} by root of a {start:o} file"
                );
            }
        }
        // chown clears them, also done by root.
        let f = d.join("suid-chown");
        fs::write(&f, b"x").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o6755)).unwrap();
        std::os::unix::fs::chown(&f, Some(NOBODY), Some(NOBODY)).unwrap();
        assert_eq!(mode(&f), 0o0755, "{class}: chown by root of a 6755 file");
    }
}

#[test]
fn e26_chmod_by_non_owner_is_eperm() {
    let Some((_m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        let f = d.join("rootfile");
        fs::write(&f, b"x").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o666)).unwrap();
        let c = cstr(&f);
        let r = as_user(NOBODY, NOBODY, || unsafe {
            if libc::chmod(c.as_ptr(), 0o777) != 0 {
                last_errno()
            } else {
                0
            }
        });
        assert_eq!(
            r,
            libc::EPERM,
            "{class}: chmod by non-owner: got {}",
            errno_name(r)
        );
        let r = as_user(NOBODY, NOBODY, || {
            let t = [ts(1, 0), ts(1, 0)];
            unsafe {
                if libc::utimensat(libc::AT_FDCWD, c.as_ptr(), t.as_ptr(), 0) != 0 {
                    last_errno()
                } else {
                    0
                }
            }
        });
        assert_eq!(
            r,
            libc::EPERM,
            "{class}: utimens to explicit times by non-owner: got {}",
            errno_name(r)
        );
        assert_eq!(fs::metadata(&f).unwrap().mode() & 0o777, 0o666);
    }
}

#[test]
fn sticky_dir_protects_other_users_files() {
    let Some((_m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        let s = d.join("sticky");
        fs::create_dir(&s).unwrap();
        fs::set_permissions(&s, fs::Permissions::from_mode(0o1777)).unwrap();
        let f = s.join("nobodys");
        assert_eq!(
            user_open(NOBODY, &f, libc::O_CREAT | libc::O_WRONLY),
            0,
            "{class}"
        );
        let c = cstr(&f);
        let r = as_user(DAEMON, DAEMON, || unsafe {
            if libc::unlink(c.as_ptr()) != 0 {
                last_errno()
            } else {
                0
            }
        });
        assert_eq!(
            r,
            libc::EPERM,
            "{class}: unlink another user's file in a sticky dir: got {}",
            errno_name(r)
        );
        assert!(f.exists(), "{class}");
        let r = as_user(NOBODY, NOBODY, || unsafe {
            if libc::unlink(c.as_ptr()) != 0 {
                last_errno()
            } else {
                0
            }
        });
        assert_eq!(
            r,
            0,
            "{class}: owner unlinks own file in sticky dir: {}",
            errno_name(r)
        );
    }
}

#[test]
fn open_flags_read_write_modes() {
    let Some((_m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        let p = d.join("modes");
        fs::write(&p, b"abc").unwrap();
        // O_RDONLY fd cannot write, O_WRONLY fd cannot read (EBADF from the kernel).
        let fd = open_raw(&p, libc::O_RDONLY, 0).unwrap();
        let r = unsafe { libc::write(fd, b"x".as_ptr().cast(), 1) };
        assert_errno(
            &format!("{class}: write on O_RDONLY"),
            check_ssize(r),
            libc::EBADF,
        );
        close_raw(fd);
        let fd = open_raw(&p, libc::O_WRONLY, 0).unwrap();
        let mut b = [0u8; 1];
        let r = unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) };
        assert_errno(
            &format!("{class}: read on O_WRONLY"),
            check_ssize(r),
            libc::EBADF,
        );
        close_raw(fd);
        // O_CREAT with mode 0400 still gives the creator a writable fd.
        let fd = open_raw(&d.join("ro"), libc::O_CREAT | libc::O_RDWR, 0o400).unwrap();
        let r = unsafe { libc::write(fd, b"ok".as_ptr().cast(), 2) };
        assert_eq!(r, 2, "{class}: write to fd of a freshly created 0400 file");
        close_raw(fd);
        assert_eq!(
            fs::metadata(d.join("ro")).unwrap().mode() & 0o777,
            0o400,
            "{class}"
        );
        assert_eq!(fs::read(d.join("ro")).unwrap(), b"ok");
    }
}

#[test]
fn mount_root_answers_promptly() {
    let Some(m) = Mount::try_new() else { return };
    let mnt = m.mnt.clone();
    let r = with_timeout("stat MNT", Duration::from_secs(10), move || {
        fs::metadata(mnt).is_ok()
    });
    assert!(r, "stat of the mount root failed");
}

// ---------------------------------------------------------------------------------------------
// The errno table in docs/SEMANTICS.md and its tests stay in step (no mount needed)
// ---------------------------------------------------------------------------------------------

/// Every row `eNN` of the errno table has a test `fn eNN_…` (in tests/mount.rs or here) whose
/// body checks the row's errno, and every `eNN_` test has a row.
#[test]
fn errno_table_rows_are_all_tested() {
    let doc = include_str!("../docs/SEMANTICS.md");
    let sources = [include_str!("mount.rs"), include_str!("posix.rs")];
    let mut rows = Vec::new();
    for line in doc.lines() {
        let line = line.replace("\\|", "/"); // `\|` is a pipe inside a cell
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | id | operation | situation | errno | why |
        if cells.len() < 6 || !cells[1].starts_with('e') || cells[1].len() != 3 {
            continue;
        }
        let id = cells[1];
        if !id[1..].chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let errno = cells[4]
            .trim_matches('`')
            .split(|c: char| !c.is_ascii_alphanumeric())
            .find(|w| w.starts_with('E'))
            .unwrap_or_else(|| panic!("row {id}: no errno in {:?}", cells[4]))
            .to_string();
        rows.push((id.to_string(), errno));
    }
    assert!(
        rows.len() >= 30,
        "errno table not found or too short: {rows:?}"
    );
    for (id, errno) in &rows {
        let needle = format!("fn {id}_");
        let body = sources
            .iter()
            .find_map(|src| {
                let start = src.find(&needle)?;
                let rest = &src[start..];
                Some(&rest[..rest.find("\n}\n").unwrap_or(rest.len())])
            })
            .unwrap_or_else(|| panic!("errno row {id} has no test `fn {id}_…`"));
        assert!(
            body.contains(&format!("libc::{errno}")),
            "test for row {id} never checks libc::{errno}"
        );
    }
    for src in sources {
        for (i, _) in src.match_indices("fn e") {
            let id = &src[i + 3..i + 6];
            if src[i + 6..].starts_with('_') && id[1..].chars().all(|c| c.is_ascii_digit()) {
                assert!(
                    rows.iter().any(|(r, _)| r == id),
                    "test fn {id}_… has no row in docs/SEMANTICS.md"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Edges: odd names, far offsets, big xattrs and link targets, parallel writes to one file
// ---------------------------------------------------------------------------------------------

#[test]
fn names_may_hold_any_byte_but_slash_and_nul() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let Some((_m, dirs)) = setup() else { return };
    let names: [&[u8]; 8] = [
        b"with space",
        b"new\nline",
        b"tab\there",
        b"\xff\xfe not utf-8",
        b"...",
        b"-rf",
        "ünïcødé ✓".as_bytes(),
        b".hidden",
    ];
    for (class, d) in &dirs {
        for (i, n) in names.iter().enumerate() {
            let p = d.join(OsStr::from_bytes(n));
            fs::write(&p, [i as u8]).unwrap_or_else(|e| panic!("{class}: create {n:?}: {e}"));
        }
        let mut listed: Vec<Vec<u8>> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().as_bytes().to_vec())
            .collect();
        listed.sort();
        let mut want: Vec<Vec<u8>> = names.iter().map(|n| n.to_vec()).collect();
        want.sort();
        assert_eq!(listed, want, "{class}: listing of odd names");
        for (i, n) in names.iter().enumerate() {
            assert_eq!(
                fs::read(d.join(OsStr::from_bytes(n))).unwrap(),
                [i as u8],
                "{class}: {n:?}"
            );
        }
    }
}

#[test]
fn sparse_file_with_far_offsets() {
    let Some((_m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        let p = d.join("sparse");
        let f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        let far = 5u64 << 30; // 5 GiB
        f.write_all_at(b"far away", far).unwrap();
        assert_eq!(f.metadata().unwrap().len(), far + 8, "{class}: size");
        let mut buf = vec![0xAAu8; 1 << 16];
        f.read_exact_at(&mut buf, 4 << 30).unwrap();
        assert!(
            buf.iter().all(|b| *b == 0),
            "{class}: hole at 4 GiB not zero"
        );
        let mut tail = [0u8; 8];
        f.read_exact_at(&mut tail, far).unwrap();
        assert_eq!(&tail, b"far away", "{class}");
        // A huge ftruncate is a size change, not an allocation.
        f.set_len(1 << 40).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 1 << 40, "{class}: 1 TiB size");
        f.read_exact_at(&mut buf, (1 << 40) - (1 << 16)).unwrap();
        assert!(
            buf.iter().all(|b| *b == 0),
            "{class}: end of 1 TiB file not zero"
        );
        assert!(
            f.metadata().unwrap().blocks() < 1 << 20,
            "{class}: a sparse 1 TiB file claims {} blocks",
            f.metadata().unwrap().blocks()
        );
        f.set_len(0).unwrap();
    }
}

#[test]
fn big_xattr_values_and_long_symlink_targets() {
    let Some((_m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        let p = d.join("f");
        fs::write(&p, b"").unwrap();
        let v = pattern(31, 60_000);
        setxattr(&p, "user.big", &v, 0).unwrap_or_else(|e| panic!("{class}: 60 KB xattr: {e}"));
        assert_same_bytes(class, &getxattr(&p, "user.big").unwrap(), &v);
        let long = "d/".repeat(2047) + "x"; // 4095 bytes, PATH_MAX - 1
        symlink(&long, d.join("l")).unwrap_or_else(|e| panic!("{class}: 4095-byte symlink: {e}"));
        assert_eq!(
            fs::read_link(d.join("l")).unwrap(),
            Path::new(&long),
            "{class}"
        );
    }
}

#[test]
fn parallel_pwrites_to_one_file_land_in_place() {
    let Some((_m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        let p = Arc::new(d.join("shared"));
        File::create(&*p).unwrap();
        // 8 threads each own every 8th 10,000-byte slot (slots straddle chunk boundaries).
        const SLOT: u64 = 10_000;
        const SLOTS: u64 = 160;
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let p = p.clone();
                std::thread::spawn(move || {
                    let f = OpenOptions::new().write(true).open(&*p).unwrap();
                    for s in (t..SLOTS).step_by(8) {
                        f.write_all_at(&pattern(s, SLOT as usize), s * SLOT)
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("writer");
        }
        let got = fs::read(&*p).unwrap();
        assert_eq!(got.len() as u64, SLOT * SLOTS, "{class}: size");
        for s in 0..SLOTS {
            let r = (s * SLOT) as usize..((s + 1) * SLOT) as usize;
            assert_same_bytes(
                &format!("{class}: slot {s}"),
                &got[r],
                &pattern(s, SLOT as usize),
            );
        }
    }
}

#[test]
fn pwrite_on_o_append_fd_appends() {
    // Linux: with O_APPEND, pwrite ignores the offset and appends.
    let Some((_m, dirs)) = setup() else { return };
    for (class, d) in &dirs {
        let p = d.join("ap");
        fs::write(&p, b"0123").unwrap();
        let f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all_at(b"AB", 0).unwrap();
        drop(f);
        assert_eq!(fs::read(&p).unwrap(), b"0123AB", "{class}");
    }
}

#[test]
fn e31_fixed_directories_cannot_be_removed_or_renamed() {
    let Some((m, _)) = setup() else { return };
    let a = m.mnt.join("a");
    for d in [
        "mem",
        "mem/working",
        "mem/episodic",
        "mem/semantic",
        "state",
    ] {
        assert_errno(
            &format!("rmdir a/{d}"),
            fs::remove_dir(a.join(d)),
            libc::EPERM,
        );
        assert_errno(
            &format!("rename a/{d}"),
            fs::rename(a.join(d), a.join(format!("{d}-moved"))),
            libc::EPERM,
        );
        assert!(a.join(d).is_dir(), "a/{d} is gone");
    }
    // Renaming over a fixed directory from inside a class is refused too.
    let sem = m.mem("a", "semantic");
    fs::create_dir(sem.join("empty")).unwrap();
    assert_errno(
        "rename over a/mem/working",
        fs::rename(sem.join("empty"), a.join("mem/working")),
        libc::EPERM,
    );
}

#[test]
fn e32_rmdir_of_an_agent_is_eperm() {
    let Some((m, _)) = setup() else { return };
    assert_errno("rmdir MNT/a", fs::remove_dir(m.mnt.join("a")), libc::EPERM);
    assert_errno(
        "rename MNT/a",
        fs::rename(m.mnt.join("a"), m.mnt.join("b")),
        libc::EPERM,
    );
    assert!(m.mnt.join("a/mem/semantic").is_dir());
}

#[test]
fn e33_rmdir_in_episodic_is_eperm_mkdir_works() {
    let Some((m, _)) = setup() else { return };
    let e = m.mem("a", "episodic");
    fs::create_dir(e.join("2026")).unwrap();
    assert_errno(
        "rmdir empty episodic dir",
        fs::remove_dir(e.join("2026")),
        libc::EPERM,
    );
    assert!(e.join("2026").is_dir());
    // touch (utimensat) of an episodic file is allowed: it changes no content.
    let log = e.join("2026/log");
    fs::write(&log, b"x").unwrap();
    let st = std::process::Command::new("touch")
        .arg("-d")
        .arg("2001-01-01")
        .arg(&log)
        .status()
        .unwrap();
    assert!(st.success(), "touch of an episodic file");
    assert_eq!(fs::read(&log).unwrap(), b"x");
}

#[test]
fn e34_xattrs_outside_known_namespaces_are_eopnotsupp() {
    let Some((m, _)) = setup() else { return };
    let p = m.mem("a", "semantic").join("f");
    fs::write(&p, b"").unwrap();
    for name in ["foo.bar", "system.agentfs"] {
        assert_errno(
            &format!("setxattr {name}"),
            setxattr(&p, name, b"v", 0),
            libc::EOPNOTSUPP,
        );
    }
    // As root, trusted. and security. are stored.
    for name in ["trusted.t", "security.s"] {
        setxattr(&p, name, b"v", 0).unwrap_or_else(|e| panic!("setxattr {name}: {e}"));
        assert_eq!(getxattr(&p, name).unwrap(), b"v");
    }
}

#[test]
fn e35_policy_refusals_are_eacces_and_apply_nothing() {
    let Some((m, _)) = setup() else { return };
    let p = m.mem("a", "semantic").join("notes");
    fs::write(&p, b"key: ").unwrap();
    let mut f = OpenOptions::new().append(true).open(&p).unwrap();
    let err = f
        .write_all(b"AKIAIOSFODNN7EXAMPLE")
        .expect_err("a secret must be refused");
    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");
    drop(f);
    assert_eq!(
        fs::read(&p).unwrap(),
        b"key: ",
        "nothing of the write applied"
    );
    let signal = m.mnt.join("sys/agents/a/signal");
    assert_eq!(fs::read_to_string(&signal).unwrap().trim(), "killed");
}

#[test]
fn e36_a_killed_agent_gets_eperm_until_start() {
    let Some((m, _)) = setup() else { return };
    let dir = m.mem("a", "working");
    let signal = m.mnt.join("sys/agents/a/signal");
    fs::write(&signal, b"KILL\n").unwrap();
    assert_errno(
        "create in a killed agent",
        File::create(dir.join("x")).map(drop),
        libc::EPERM,
    );
    assert_errno(
        "mkdir in a killed agent",
        fs::create_dir(dir.join("d")),
        libc::EPERM,
    );
    fs::write(&signal, b"START\n").unwrap();
    assert_eq!(fs::read_to_string(&signal).unwrap().trim(), "running");
    fs::write(dir.join("x"), b"back").unwrap();
    assert_eq!(fs::read(dir.join("x")).unwrap(), b"back");
}

/// SPEC §3: a uid mapped to an agent by the policy's `[identity]` acts as that agent: it
/// works in its own tree, gets EACCES in another agent's, and cannot write control files.
#[test]
fn a_uid_mapped_by_the_policy_is_bound_to_its_agent() {
    let policy = format!("{POSIX_POLICY}\n[identity]\n54321 = \"a\"\n");
    let Some(m) = Mount::try_new_with_policy(&policy) else {
        return;
    };
    m.agent("a");
    m.agent("b");
    for agent in ["a", "b"] {
        let dir = m.mem(agent, "working");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        fs::write(dir.join("theirs"), b"x").unwrap();
    }
    let as_uid = |script: &str| {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .uid(54321)
            .gid(54321)
            .output()
            .unwrap()
    };
    let own = m.mem("a", "working").join("mine");
    let out = as_uid(&format!("echo hi > '{}'", own.display()));
    assert!(out.status.success(), "own tree: {out:?}");
    assert_eq!(fs::read(&own).unwrap(), b"hi\n");
    let other = m.mem("b", "working");
    let out = as_uid(&format!("echo hi > '{}/mine'", other.display()));
    assert!(
        !out.status.success(),
        "another agent's tree must be refused"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );
    let out = as_uid(&format!("cat '{}/theirs'", other.display()));
    assert!(
        !out.status.success(),
        "reading another agent's file: {out:?}"
    );
    assert!(!other.join("mine").exists());
}

#[test]
fn e37_binding_a_dead_pid_is_esrch() {
    let Some((m, _)) = setup() else { return };
    let pids = m.mnt.join("sys/agents/a/pids");
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    assert_errno(
        "dead pid",
        fs::write(&pids, format!("{pid}\n")),
        libc::ESRCH,
    );
    assert_errno("not a pid", fs::write(&pids, "me\n"), libc::EINVAL);
}

/// `isatty` on a file of the tree (Python's `open` asks every time) says no with ENOTTY, as
/// on any regular file, and leaves no warning in the daemon's log.
#[test]
fn ioctl_answers_enotty_quietly() {
    let Some((m, dirs)) = setup() else { return };
    for (class, dir) in &dirs {
        let path = dir.join("tty?");
        let file = File::create(&path).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        // SAFETY: isatty only reads the descriptor's state.
        let tty = unsafe { libc::isatty(fd) };
        let errno = std::io::Error::last_os_error().raw_os_error();
        assert_eq!((tty, errno), (0, Some(libc::ENOTTY)), "{class}");
    }
    let log = fs::read_to_string(m.data.join("agentfs.log")).unwrap_or_default();
    assert!(!log.contains("[Not Implemented] ioctl"), "{log}");
}
