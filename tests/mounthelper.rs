//! The mount(8) helper (`agentfs` started as `mount.fuse.agentfs`) and the `-o` options of
//! `agentfs mount`: `ro` refuses every write with EROFS, fstab-only options are ignored,
//! unknown ones are errors; `mount -t fuse.agentfs` and an fstab line go through the helper.

mod common;

use common::*;
use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn run(cmd: &mut Command) -> Output {
    run_with_timeout(cmd, CMD_TIMEOUT).expect("run a command")
}

fn text(out: &Output) -> String {
    format!(
        "status {}; stdout: {}; stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `DIR/mount.fuse.agentfs`, a symlink to the binary under test.
fn helper_in(dir: &Path) -> PathBuf {
    fs::create_dir_all(dir).expect("create the helper dir");
    let link = dir.join("mount.fuse.agentfs");
    symlink(
        std::path::absolute(bin()).expect("absolute binary path"),
        &link,
    )
    .expect("symlink the helper");
    link
}

/// Mounts read-write once to create agent `a` with a fact, and unmounts.
fn populate(m: &mut Mount) {
    m.mount();
    fs::create_dir(m.mnt.join("a")).expect("mkdir agent a");
    fs::write(m.mnt.join("a/mem/semantic/fact"), b"hello\n").expect("write a fact");
    m.unmount();
}

fn errno_of(r: std::io::Result<()>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

/// The mount options of MNT in /proc/self/mountinfo (the per-mount field).
fn mount_flags(mnt: &Path) -> String {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = mnt.to_string_lossy().replace(' ', "\\040");
    info.lines()
        .find(|l| l.split(' ').nth(4) == Some(want.as_str()))
        .and_then(|l| l.split(' ').nth(5).map(str::to_string))
        .unwrap_or_default()
}

/// Every kind of write on a read-only mount fails with EROFS; reads work.
fn assert_read_only(mnt: &Path) {
    let m = mnt.to_path_buf();
    with_timeout("read-only checks", CMD_TIMEOUT, move || {
        assert_eq!(
            fs::read(m.join("a/mem/semantic/fact")).expect("read a fact"),
            b"hello\n"
        );
        assert!(fs::read_to_string(m.join("sys/agents/a/status"))
            .expect("read the status")
            .contains("state"));
        let erofs = Some(libc::EROFS);
        assert_eq!(
            errno_of(fs::write(m.join("a/mem/semantic/new"), b"x")),
            erofs,
            "create"
        );
        let append = fs::OpenOptions::new()
            .append(true)
            .open(m.join("a/mem/semantic/fact"))
            .map(|_| ());
        assert_eq!(errno_of(append), erofs, "open for append");
        assert_eq!(errno_of(fs::create_dir(m.join("b"))), erofs, "mkdir agent");
        assert_eq!(
            errno_of(fs::remove_file(m.join("a/mem/semantic/fact"))),
            erofs,
            "unlink"
        );
        let signal = fs::OpenOptions::new()
            .write(true)
            .open(m.join("sys/agents/a/signal"))
            .and_then(|mut f| f.write_all(b"STOP\n"));
        assert_eq!(errno_of(signal), erofs, "control file");
    });
    let flags = mount_flags(mnt);
    assert!(
        flags.split(',').any(|f| f == "ro"),
        "not ro in mountinfo: {flags}"
    );
}

#[test]
fn helper_mounts_read_only_and_ignores_fstab_options() {
    if !can_mount() {
        return;
    }
    let _wd = Watchdog::new(DEFAULT_TEST_SECS);
    let root = fresh_dir("test-helper");
    let mut m = Mount::unmounted(root.join("mnt"), root.join("data"), None);
    populate(&mut m);

    let helper = helper_in(&root.join("bin"));
    let opts = format!(
        "rw,data_dir={},ro,allow_other,default_permissions,noauto,nofail,_netdev,\
         x-systemd.automount,defaults",
        m.data.display()
    );
    let out = run(Command::new(&helper)
        .arg("agentfs")
        .arg(&m.mnt)
        .arg("-n")
        .args(["-o", &opts])
        .args(["-t", "fuse.agentfs"]));
    if is_mounted(&m.mnt) {
        m.mark_mounted();
    }
    assert!(out.status.success(), "helper: {}", text(&out));
    assert!(
        is_mounted(&m.mnt),
        "the helper returned 0 but nothing is mounted"
    );
    assert_read_only(&m.mnt);
    m.unmount();
    drop(m);
    let _ = fs::remove_dir_all(&root);
}

#[test]
fn agentfs_mount_o_ro_and_read_only_flag() {
    if !can_mount() {
        return;
    }
    let _wd = Watchdog::new(DEFAULT_TEST_SECS);
    let root = fresh_dir("test-mount-o");
    let mut m = Mount::unmounted(root.join("mnt"), root.join("data"), None);
    populate(&mut m);
    for args in [&["-o", "allow_other,ro"][..], &["--read-only"][..]] {
        let mut ro = Mount::unmounted(m.mnt.clone(), m.data.clone(), None).with_args(args);
        ro.mount();
        assert_read_only(&ro.mnt);
        ro.unmount();
    }
    // `-o rw` after `--read-only`: the option wins, the mount is writable again.
    let mut rw = Mount::unmounted(m.mnt.clone(), m.data.clone(), None).with_args(&[
        "--read-only",
        "-o",
        "rw",
    ]);
    rw.mount();
    fs::write(rw.mnt.join("a/mem/semantic/new"), b"x").expect("write on a rw mount");
    rw.unmount();
    drop((m, rw));
    let _ = fs::remove_dir_all(&root);
}

#[test]
fn helper_usage_errors_and_failures_use_mount_exit_codes() {
    let root = fresh_dir("test-helper-errors");
    let helper = helper_in(&root.join("bin"));
    let mnt = root.join("mnt");
    fs::create_dir(&mnt).expect("mkdir mnt");
    let data = root.join("data");

    // An unknown option: usage (1), a clear message, nothing created.
    let out = run(Command::new(&helper)
        .arg("agentfs")
        .arg(&mnt)
        .args(["-o", &format!("data_dir={},frobnicate", data.display())]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("mount.fuse.agentfs: unknown mount option \"frobnicate\""),
        "{err}"
    );
    assert!(!data.exists(), "the data dir was created despite the error");

    // Missing arguments: usage (1).
    let out = run(Command::new(&helper).arg("agentfs"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    // -s: the unknown option is only a warning; -f: nothing is mounted; -v: says what.
    let out = run(Command::new(&helper)
        .arg("agentfs")
        .arg(&mnt)
        .args(["-sfv", "-o"])
        .arg(format!("noexec,ro,data_dir={}", data.display())));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ignoring unknown mount option \"noexec\""),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "agentfs mount {} --data-dir {} --read-only",
            mnt.display(),
            data.display()
        )),
        "{err}"
    );
    assert!(!is_mounted(&mnt));

    // A mount that fails: 32, with agentfs's own message.
    let out = run(Command::new(&helper)
        .arg("agentfs")
        .arg(root.join("missing"))
        .args(["-o", &format!("data_dir={}", data.display())]));
    assert_eq!(out.status.code(), Some(32), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not exist"), "{err}");

    // `agentfs mount -o` refuses an unknown option as a usage error (2).
    let out = run(Command::new(bin())
        .arg("mount")
        .arg(&mnt)
        .args(["-o", "frobnicate"]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let _ = fs::remove_dir_all(&root);
}

/// Removes the /sbin helper link this test made, even when the test fails.
struct SbinLink(PathBuf);

impl Drop for SbinLink {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// `mount -t fuse.agentfs …` and a line in an fstab (through `mount --fstab FILE MNT`) both
/// reach the helper. mount(8) looks for it only in /sbin: the test links it there for its own
/// duration, and is skipped if a helper is installed there already.
#[test]
fn mount_8_and_an_fstab_line_use_the_helper() {
    if !can_mount() {
        return;
    }
    let sbin = Path::new("/sbin/mount.fuse.agentfs");
    if fs::symlink_metadata(sbin).is_ok() || !Path::new("/usr/bin/mount").exists() {
        eprintln!("SKIP: /sbin/mount.fuse.agentfs exists already, or no mount(8)");
        return;
    }
    let _wd = Watchdog::new(DEFAULT_TEST_SECS);
    let root = fresh_dir("test-mount8");
    let mut m = Mount::unmounted(root.join("mnt"), root.join("data"), None);
    populate(&mut m);
    if symlink(
        std::path::absolute(bin()).expect("absolute binary path"),
        sbin,
    )
    .is_err()
    {
        eprintln!("SKIP: cannot link {}", sbin.display());
        return;
    }
    let _link = SbinLink(sbin.to_path_buf());

    let out = run(Command::new("mount")
        .args(["-t", "fuse.agentfs", "agentfs"])
        .arg(&m.mnt)
        .args(["-o", &format!("data_dir={},ro", m.data.display())]));
    if is_mounted(&m.mnt) {
        m.mark_mounted();
    }
    assert!(
        out.status.success(),
        "mount -t fuse.agentfs: {}",
        text(&out)
    );
    assert_read_only(&m.mnt);
    m.unmount();

    let fstab = root.join("fstab");
    fs::write(
        &fstab,
        format!(
            "# test fstab\nagentfs {} fuse.agentfs data_dir={},allow_other,noauto,nofail,_netdev 0 0\n",
            m.mnt.display(),
            m.data.display()
        ),
    )
    .expect("write the fstab");
    let out = run(Command::new("mount").arg("--fstab").arg(&fstab).arg(&m.mnt));
    if is_mounted(&m.mnt) {
        m.mark_mounted();
    }
    assert!(out.status.success(), "mount from fstab: {}", text(&out));
    let fact = m.mnt.join("a/mem/semantic/fact");
    let read = with_timeout("read through the fstab mount", CMD_TIMEOUT, move || {
        fs::read(fact)
    });
    assert_eq!(read.expect("read a fact"), b"hello\n");
    fs::write(m.mnt.join("a/mem/semantic/more"), b"rw\n").expect("write (rw mount)");
    // Plain umount(8) works too; the daemon flushes and exits on its own.
    let pid = read_pid(&m.data);
    let out = run(Command::new("umount").arg(&m.mnt));
    assert!(out.status.success(), "umount: {}", text(&out));
    m.mark_unmounted();
    if let Some(pid) = pid {
        assert!(
            wait_until(CMD_TIMEOUT, || !pid_alive(pid)),
            "the daemon did not exit after umount"
        );
    }
    drop(m);
    let _ = fs::remove_dir_all(&root);
}

/// What systemd would run for `agentfs@.service`, without systemd: its ExecStartPre,
/// ExecStart, ExecReload and ExecStop lines with %f, %i and the binary path filled in for a
/// temp mountpoint, and the Type=forking contract: once ExecStart returns, PIDFile names the
/// running daemon; ExecStop returns only after that daemon has exited.
#[test]
fn systemd_service_commands_follow_the_forking_contract() {
    if !can_mount() {
        return;
    }
    let _wd = Watchdog::new(DEFAULT_TEST_SECS);
    let unit = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/systemd/agentfs@.service"),
    )
    .expect("read contrib/systemd/agentfs@.service");
    let root = fresh_dir("test-unit");
    let mnt = root.join("mnt");
    let state = root.join("state");
    let bin_path = std::path::absolute(bin()).expect("absolute binary path");
    let fill = |s: &str| {
        s.replace("/usr/local/bin/agentfs", &bin_path.to_string_lossy())
            .replace("/var/lib/agentfs/%i", &state.to_string_lossy())
            .replace("%f", &mnt.to_string_lossy())
            .replace("$AGENTFS_MOUNT_FLAGS", "")
    };
    let key = |k: &str| -> String {
        let line = unit
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("agentfs@.service has no {k}="));
        fill(line)
    };
    assert_eq!(key("Type"), "forking");
    let exec = |k: &str| {
        let line = key(k);
        let words: Vec<&str> = line.split_whitespace().collect();
        let out = run(Command::new(words[0]).args(&words[1..]));
        assert!(out.status.success(), "{k}={line}: {}", text(&out));
    };
    // StateDirectory= would create the state dir; agentfs creates a missing data dir itself.
    exec("ExecStartPre");
    exec("ExecStart");
    let mut m = Mount::unmounted(mnt.clone(), state.clone(), None);
    m.mark_mounted();
    let pid_file = PathBuf::from(key("PIDFile"));
    let pid: i32 = fs::read_to_string(&pid_file)
        .unwrap_or_else(|e| panic!("no PIDFile {} after ExecStart: {e}", pid_file.display()))
        .trim()
        .parse()
        .expect("a pid in the PIDFile");
    assert!(pid_alive(pid), "PIDFile names {pid}, which is not running");
    assert_eq!(Some(pid), m.daemon_pid());
    fs::create_dir(mnt.join("a")).expect("mkdir agent a");
    fs::write(mnt.join("a/mem/semantic/fact"), b"kept\n").expect("write a fact");
    exec("ExecReload");
    exec("ExecStop");
    m.mark_unmounted();
    assert!(
        !pid_alive(pid),
        "the daemon still runs after ExecStop returned"
    );
    assert!(!is_mounted(&mnt), "still mounted after ExecStop");
    // What was written is in the store: mount again and read it back.
    m.mount();
    assert_eq!(
        fs::read(mnt.join("a/mem/semantic/fact")).expect("read the fact"),
        b"kept\n"
    );
    m.unmount();
    drop(m);
    let _ = fs::remove_dir_all(&root);
}
