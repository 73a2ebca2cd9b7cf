//! Mount-level tests through the real binary: the tree of SPEC §2, agent-name rules, the
//! `sys/` and `policy/` read-only trees, the memory classes across remounts and the CLI's
//! mount/unmount contract (errors, daemon lifecycle, plain `umount`).
//!
//! Errno-table rows (docs/SEMANTICS.md) tested here are named `eNN_…`.

mod common;

use common::*;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    v.sort();
    v
}

fn status_json(m: &Mount, agent: &str) -> serde_json::Value {
    let p = m.mnt.join("sys/agents").join(agent).join("status");
    let text = fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON ({e}): {text:?}", p.display()))
}

fn json_total(v: &serde_json::Value) -> f64 {
    match v {
        serde_json::Value::Number(n) => n.as_f64().unwrap_or(0.0),
        serde_json::Value::Object(o) => o.values().map(json_total).sum(),
        serde_json::Value::Array(a) => a.iter().map(json_total).sum(),
        _ => 0.0,
    }
}

/// Exit status 1 and exactly one non-empty line on stderr.
#[track_caller]
fn assert_one_line_error(what: &str, out: &std::process::Output) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: want exit 1, got {} (stderr: {err:?})",
        out.status
    );
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: want exactly one line on stderr, got {err:?}"
    );
}

fn write_file(p: &Path, data: &[u8]) {
    fs::write(p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

// ---------------------------------------------------------------------------------------------
// The tree
// ---------------------------------------------------------------------------------------------

#[test]
fn tree_mkdir_registers_agent_with_skeleton() {
    let Some(m) = Mount::try_new() else { return };
    // The tree is ready as soon as `agentfs mount` returned: no polling here on purpose.
    assert!(
        m.mnt.join("sys").is_dir(),
        "MNT/sys missing right after mount"
    );
    let a = m.agent("a");
    assert_eq!(names(&a), ["mem", "policy", "state"]);
    assert_eq!(names(&a.join("mem")), ["episodic", "semantic", "working"]);
    for d in [
        "mem",
        "mem/working",
        "mem/episodic",
        "mem/semantic",
        "state",
        "policy",
    ] {
        let md = fs::metadata(a.join(d)).unwrap_or_else(|e| panic!("stat a/{d}: {e}"));
        assert!(md.is_dir(), "a/{d} is not a directory");
    }
    for class in ["working", "episodic", "semantic"] {
        assert!(
            names(&m.mem("a", class)).is_empty(),
            "a/mem/{class} of a new agent is not empty"
        );
    }
    assert_eq!(names(&m.mnt), ["a", "sys"]);
    assert!(
        m.mnt.join("sys/agents/a").is_dir(),
        "sys/agents/a missing after mkdir MNT/a"
    );
    assert!(m.mnt.join("sys/agents/a/status").is_file());
}

#[test]
fn tree_two_agents_are_independent() {
    let Some(m) = Mount::try_new() else { return };
    m.agent("alpha");
    m.agent("beta-2");
    write_file(&m.mem("alpha", "semantic").join("f"), b"alpha's");
    assert!(
        !m.mem("beta-2", "semantic").join("f").exists(),
        "a file written by alpha appears in beta-2's tree"
    );
    assert_eq!(names(&m.mnt), ["alpha", "beta-2", "sys"]);
    assert_eq!(names(&m.mnt.join("sys/agents")), ["alpha", "beta-2"]);
}

#[test]
fn sys_status_is_json_with_counts() {
    let Some(m) = Mount::try_new() else { return };
    m.agent("a");
    let s = status_json(&m, "a");
    assert_eq!(s["agent"], "a", "status.agent: {s}");
    assert_eq!(s["state"], "running", "status.state: {s}");
    for class in ["working", "episodic", "semantic"] {
        assert!(
            s["bytes"][class].is_u64(),
            "status.bytes.{class} is not a non-negative integer: {s}"
        );
    }
    assert!(
        s["ops"].is_object() || s["ops"].is_u64(),
        "status.ops missing or not counts: {s}"
    );
    let ops_before = json_total(&s["ops"]);

    write_file(&m.mem("a", "semantic").join("s"), &[b's'; 3000]);
    write_file(&m.mem("a", "working").join("w"), &[b'w'; 700]);
    write_file(&m.mem("a", "episodic").join("e"), &[b'e'; 1100]);
    for i in 0..10 {
        write_file(&m.mem("a", "semantic").join(format!("n{i}")), b"x");
    }
    let mut last = serde_json::Value::Null;
    let ok = wait_until(Duration::from_secs(5), || {
        last = status_json(&m, "a");
        last["bytes"]["semantic"].as_u64().unwrap_or(0) >= 3010
            && last["bytes"]["working"].as_u64().unwrap_or(0) >= 700
            && last["bytes"]["episodic"].as_u64().unwrap_or(0) >= 1100
            && json_total(&last["ops"]) >= ops_before + 10.0
    });
    assert!(
        ok,
        "status did not reflect 3010 semantic / 700 working / 1100 episodic bytes and ≥ 10 more \
         ops within 5 s (ops before: {ops_before}): {last}"
    );
}

#[test]
fn e01_mkdir_sys_is_eexist() {
    let Some(m) = Mount::try_new() else { return };
    assert_errno(
        "mkdir MNT/sys",
        fs::create_dir(m.mnt.join("sys")),
        libc::EEXIST,
    );
}

#[test]
fn e02_invalid_agent_names_are_einval() {
    let Some(m) = Mount::try_new() else { return };
    for bad in [
        ".hidden",
        "a b",
        "a*b",
        "a:b",
        "tab\tname",
        "é",
        "new\nline",
    ] {
        assert_errno(
            &format!("mkdir MNT/{bad:?}"),
            fs::create_dir(m.mnt.join(bad)),
            libc::EINVAL,
        );
    }
    assert_eq!(
        names(&m.mnt),
        ["sys"],
        "a refused agent left something behind"
    );
    // The allowed alphabet works.
    m.agent("Planner_1.v2-x");
}

#[test]
fn e03_agent_name_over_255_bytes_is_enametoolong() {
    let Some(m) = Mount::try_new() else { return };
    assert_errno(
        "mkdir MNT/<256 bytes>",
        fs::create_dir(m.mnt.join("a".repeat(256))),
        libc::ENAMETOOLONG,
    );
    m.agent(&"b".repeat(255));
}

#[test]
fn e04_mkdir_existing_agent_is_eexist() {
    let Some(m) = Mount::try_new() else { return };
    m.agent("a");
    assert_errno(
        "mkdir MNT/a twice",
        fs::create_dir(m.mnt.join("a")),
        libc::EEXIST,
    );
}

#[test]
fn e05_regular_files_outside_mem_classes_are_eperm() {
    let Some(m) = Mount::try_new() else { return };
    m.agent("a");
    for p in ["f", "a/f", "a/mem/f"] {
        assert_errno(
            &format!("create MNT/{p}"),
            fs::File::create(m.mnt.join(p)),
            libc::EPERM,
        );
        assert!(!m.mnt.join(p).exists(), "MNT/{p} exists after EPERM");
    }
    for p in ["a/x", "a/mem/x"] {
        assert_errno(
            &format!("mkdir MNT/{p}"),
            fs::create_dir(m.mnt.join(p)),
            libc::EPERM,
        );
        assert_errno(
            &format!("symlink MNT/{p}"),
            std::os::unix::fs::symlink("target", m.mnt.join(p)),
            libc::EPERM,
        );
    }
}

#[test]
fn e06_policy_tree_is_erofs() {
    let Some(m) = Mount::try_new() else { return };
    let a = m.agent("a");
    let pol = a.join("policy");
    assert_errno(
        "create a/policy/f",
        fs::File::create(pol.join("f")),
        libc::EROFS,
    );
    assert_errno(
        "mkdir a/policy/d",
        fs::create_dir(pol.join("d")),
        libc::EROFS,
    );
    assert_errno(
        "symlink a/policy/l",
        std::os::unix::fs::symlink("x", pol.join("l")),
        libc::EROFS,
    );
    // Whatever the policy tree shows is read-only too.
    for e in fs::read_dir(&pol).expect("read a/policy") {
        let p = e.expect("entry").path();
        if p.is_file() {
            fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
            assert_errno(
                &format!("open {} for writing", p.display()),
                fs::OpenOptions::new().write(true).open(&p),
                libc::EROFS,
            );
            assert_errno(
                &format!("unlink {}", p.display()),
                fs::remove_file(&p),
                libc::EROFS,
            );
        }
    }
}

#[test]
fn e07_sys_writes_are_eperm_for_root() {
    let Some(m) = Mount::try_new() else { return };
    m.agent("a");
    let status = m.mnt.join("sys/agents/a/status");
    assert_errno(
        "open sys/agents/a/status O_WRONLY as root",
        fs::OpenOptions::new().write(true).open(&status),
        libc::EPERM,
    );
    assert_errno(
        "create sys/agents/a/new",
        fs::File::create(m.mnt.join("sys/agents/a/new")),
        libc::EPERM,
    );
    assert_errno(
        "create sys/f",
        fs::File::create(m.mnt.join("sys/f")),
        libc::EPERM,
    );
    assert_errno(
        "mkdir sys/d",
        fs::create_dir(m.mnt.join("sys/d")),
        libc::EPERM,
    );
    assert_errno(
        "mkdir sys/agents/b",
        fs::create_dir(m.mnt.join("sys/agents/b")),
        libc::EPERM,
    );
    assert_errno("unlink status", fs::remove_file(&status), libc::EPERM);
    assert_errno(
        "chmod status",
        fs::set_permissions(&status, fs::Permissions::from_mode(0o666)),
        libc::EPERM,
    );
    assert!(status.is_file(), "status vanished");
}

#[test]
fn e08_sys_writes_as_nobody_are_refused_reads_allowed() {
    let Some(m) = Mount::try_new() else { return };
    m.agent("a");
    let status = cstr(m.mnt.join("sys/agents/a/status"));
    let r = as_user(65534, 65534, || unsafe {
        let fd = libc::open(status.as_ptr(), libc::O_WRONLY);
        if fd >= 0 {
            0
        } else {
            last_errno()
        }
    });
    assert!(
        r == libc::EACCES || r == libc::EPERM,
        "open status O_WRONLY as uid 65534: got {} ({}), want EACCES or EPERM",
        r,
        errno_name(r)
    );
    let r = as_user(65534, 65534, || unsafe {
        let fd = libc::open(status.as_ptr(), libc::O_RDONLY);
        if fd < 0 {
            return last_errno();
        }
        let mut buf = [0u8; 64];
        if libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) <= 0 {
            return 200;
        }
        0
    });
    assert_eq!(
        r,
        0,
        "read status as uid 65534: errno {} ({})",
        r,
        errno_name(r)
    );
}

#[test]
fn e09_checkpoints_are_read_only() {
    let Some(m) = Mount::try_new() else { return };
    let a = m.agent("a");
    fs::write(m.mem("a", "semantic").join("f"), b"data").unwrap();
    fs::create_dir(a.join("state/c")).expect("mkdir state/c takes a snapshot");
    let ck = a.join("state/c/semantic");
    assert_eq!(fs::read(ck.join("f")).unwrap(), b"data");
    assert_errno(
        "create a/state/f",
        fs::File::create(a.join("state/f")),
        libc::EROFS,
    );
    assert_errno(
        "symlink in a/state",
        std::os::unix::fs::symlink("x", a.join("state/l")),
        libc::EROFS,
    );
    assert_errno(
        "open state/c/semantic/f for writing",
        fs::OpenOptions::new().write(true).open(ck.join("f")),
        libc::EROFS,
    );
    assert_errno(
        "append to state/c/semantic/f",
        fs::OpenOptions::new().append(true).open(ck.join("f")),
        libc::EROFS,
    );
    assert_errno(
        "create in a checkpoint",
        fs::File::create(ck.join("n")),
        libc::EROFS,
    );
    assert_errno(
        "mkdir in a checkpoint",
        fs::create_dir(ck.join("d")),
        libc::EROFS,
    );
    assert_errno(
        "unlink in a checkpoint",
        fs::remove_file(ck.join("f")),
        libc::EROFS,
    );
    assert_errno(
        "chmod in a checkpoint",
        fs::set_permissions(ck.join("f"), fs::Permissions::from_mode(0o600)),
        libc::EROFS,
    );
    assert_errno(
        "truncate in a checkpoint",
        check(unsafe { libc::truncate(cstr(ck.join("f")).as_ptr(), 0) }),
        libc::EROFS,
    );
    assert_errno(
        "setxattr in a checkpoint",
        check(unsafe {
            libc::setxattr(
                cstr(ck.join("f")).as_ptr(),
                c"user.k".as_ptr(),
                b"v".as_ptr().cast(),
                1,
                0,
            )
        }),
        libc::EROFS,
    );
    assert_errno(
        "rename into a checkpoint",
        fs::rename(m.mem("a", "semantic").join("f"), ck.join("g")),
        libc::EROFS,
    );
    assert_errno(
        "rename out of a checkpoint",
        fs::rename(ck.join("f"), m.mem("a", "semantic").join("g")),
        libc::EROFS,
    );
    assert_errno(
        "rename a checkpoint",
        fs::rename(a.join("state/c"), a.join("state/d")),
        libc::EROFS,
    );
    assert_eq!(fs::read(ck.join("f")).unwrap(), b"data");
    fs::remove_dir(a.join("state/c")).expect("an operator deletes a checkpoint");
    assert!(!a.join("state/c").exists());
}

#[test]
fn e38_a_bound_process_cannot_delete_a_checkpoint() {
    let Some(m) = Mount::try_new() else { return };
    let a = m.agent("a");
    fs::create_dir(a.join("state/c")).unwrap();
    // Bound through `agentfs run`: it may snapshot, never delete.
    let out = Command::new(bin())
        .args(["run", "--agent", "a", "--mount"])
        .arg(&m.mnt)
        .arg("--")
        .arg("sh")
        .arg("-c")
        .arg(format!(
            "mkdir {own} || exit 10; rmdir {c}",
            own = a.join("state/mine").display(),
            c = a.join("state/c").display()
        ))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    let eperm = std::io::Error::from_raw_os_error(libc::EPERM).to_string();
    let eperm = eperm.split(" (os error").next().unwrap_or_default();
    assert!(stderr.contains(eperm), "rmdir: {stderr}");
    assert!(a.join("state/c").is_dir() && a.join("state/mine").is_dir());
}

#[test]
fn e39_checkpoint_names_are_checked() {
    let Some(m) = Mount::try_new() else { return };
    let a = m.agent("a");
    assert_errno(
        "mkdir state/.x",
        fs::create_dir(a.join("state/.x")),
        libc::EINVAL,
    );
    let ctl = m.mnt.join("sys/agents/a/rollback");
    assert_errno("rollback .x", fs::write(&ctl, ".x\n"), libc::EINVAL);
    assert_errno("rollback a/b", fs::write(&ctl, "a/b"), libc::EINVAL);
    assert_errno(
        "mkdir state/NAME over 255 bytes",
        fs::create_dir(a.join("state").join("n".repeat(256))),
        libc::ENAMETOOLONG,
    );
}

#[test]
fn e40_a_checkpoint_name_is_taken_once() {
    let Some(m) = Mount::try_new() else { return };
    let a = m.agent("a");
    fs::create_dir(a.join("state/c")).unwrap();
    assert_errno(
        "mkdir state/c again",
        fs::create_dir(a.join("state/c")),
        libc::EEXIST,
    );
}

#[test]
fn e41_rollback_to_a_missing_checkpoint_is_enoent() {
    let Some(m) = Mount::try_new() else { return };
    m.agent("a");
    fs::write(m.mem("a", "semantic").join("f"), b"kept").unwrap();
    assert_errno(
        "rollback nope",
        fs::write(m.mnt.join("sys/agents/a/rollback"), "nope\n"),
        libc::ENOENT,
    );
    assert_eq!(fs::read(m.mem("a", "semantic").join("f")).unwrap(), b"kept");
}

// ---------------------------------------------------------------------------------------------
// Memory classes across remounts
// ---------------------------------------------------------------------------------------------

#[test]
fn working_is_ram_durable_classes_survive_remount() {
    let Some(mut m) = Mount::try_new() else {
        return;
    };
    m.agent("a");
    let sem = pattern(1, 300_000);
    let epi = pattern(2, 70_000);
    write_file(&m.mem("a", "working").join("w"), b"scratch");
    fs::create_dir(m.mem("a", "working").join("wd")).unwrap();
    write_file(&m.mem("a", "semantic").join("s"), &sem);
    fs::create_dir(m.mem("a", "semantic").join("dir")).unwrap();
    write_file(&m.mem("a", "semantic").join("dir/inner"), b"inner");
    std::os::unix::fs::symlink("dir/inner", m.mem("a", "semantic").join("link")).unwrap();
    fs::set_permissions(
        m.mem("a", "semantic").join("s"),
        fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    write_file(&m.mem("a", "episodic").join("log"), &epi);
    let ino_before = fs::metadata(m.mem("a", "semantic").join("s")).unwrap();

    m.remount();

    assert!(m.mnt.join("a").is_dir(), "agent a is gone after remount");
    assert!(
        m.mnt.join("sys/agents/a/status").is_file(),
        "sys/agents/a gone after remount"
    );
    assert!(m.mem("a", "working").is_dir(), "a/mem/working gone");
    assert!(
        names(&m.mem("a", "working")).is_empty(),
        "working memory survived a remount: {:?}",
        names(&m.mem("a", "working"))
    );
    assert_same_bytes(
        "semantic/s",
        &fs::read(m.mem("a", "semantic").join("s")).unwrap(),
        &sem,
    );
    assert_same_bytes(
        "episodic/log",
        &fs::read(m.mem("a", "episodic").join("log")).unwrap(),
        &epi,
    );
    assert_eq!(
        fs::read(m.mem("a", "semantic").join("link")).unwrap(),
        b"inner",
        "symlink through remount"
    );
    let md = fs::metadata(m.mem("a", "semantic").join("s")).unwrap();
    assert_eq!(
        md.permissions().mode() & 0o7777,
        0o640,
        "mode after remount"
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        md.ino(),
        ino_before.ino(),
        "inode number not stable across remount"
    );
    assert_eq!(md.mtime(), ino_before.mtime(), "mtime changed by remount");
    assert_eq!(
        md.mtime_nsec(),
        ino_before.mtime_nsec(),
        "mtime ns changed by remount"
    );
    assert_eq!(
        names(&m.mem("a", "semantic")),
        ["dir", "link", "s"],
        "semantic listing after remount"
    );
}

// ---------------------------------------------------------------------------------------------
// The CLI's mount/unmount contract
// ---------------------------------------------------------------------------------------------

#[test]
fn unmount_stops_daemon_and_logs_to_data_dir() {
    let Some(mut m) = Mount::try_new() else {
        return;
    };
    let pid = m.daemon_pid().expect("agentfs.pid written by the daemon");
    assert!(pid_alive(pid), "pid {pid} from agentfs.pid is not running");
    assert!(
        m.data.join("agentfs.log").is_file(),
        "no agentfs.log in the data dir of a daemonized mount"
    );
    m.unmount(); // asserts: exit 0, not mounted, daemon gone
    assert!(!pid_alive(pid));
    // Nothing of the store lives under the mountpoint.
    assert!(names(&m.mnt).is_empty(), "files left in the mountpoint dir");
}

#[test]
fn plain_umount_stops_daemon_and_loses_nothing_closed() {
    let Some(mut m) = Mount::try_new() else {
        return;
    };
    m.agent("a");
    let data = pattern(7, 1 << 20);
    write_file(&m.mem("a", "semantic").join("big"), &data);
    write_file(&m.mem("a", "episodic").join("log"), b"line 1\n");
    let pid = m.daemon_pid().expect("pid");
    let c = cstr(&m.mnt);
    check(unsafe { libc::umount2(c.as_ptr(), 0) }).expect("umount2(MNT, 0)");
    m.mark_unmounted();
    assert!(
        wait_until(Duration::from_secs(20), || !pid_alive(pid)),
        "daemon {pid} still running 20 s after umount"
    );
    m.mount();
    assert_same_bytes(
        "semantic/big after umount",
        &fs::read(m.mem("a", "semantic").join("big")).unwrap(),
        &data,
    );
    assert_eq!(
        fs::read(m.mem("a", "episodic").join("log")).unwrap(),
        b"line 1\n"
    );
}

#[test]
fn umount_binary_works_too() {
    let Some(mut m) = Mount::try_new() else {
        return;
    };
    if !Path::new("/usr/bin/umount").exists() && !Path::new("/bin/umount").exists() {
        eprintln!("SKIP umount_binary_works_too: no umount(8)");
        return;
    }
    m.agent("a");
    write_file(&m.mem("a", "semantic").join("f"), b"kept");
    let pid = m.daemon_pid().expect("pid");
    let out = run_with_timeout(Command::new("umount").arg(&m.mnt), CMD_TIMEOUT).unwrap();
    assert!(
        out.status.success(),
        "umount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    m.mark_unmounted();
    assert!(wait_until(Duration::from_secs(20), || !pid_alive(pid)));
    m.mount();
    assert_eq!(fs::read(m.mem("a", "semantic").join("f")).unwrap(), b"kept");
}

#[test]
fn foreground_mount_serves_until_unmount() {
    if !can_mount() {
        return;
    }
    let _wd = Watchdog::new(DEFAULT_TEST_SECS);
    let root = fresh_dir("fg");
    let mut m = Mount::unmounted(root.join("mnt"), root.join("data"), Some(root));
    let mut cmd = m.mount_command();
    cmd.arg("--foreground")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("spawn agentfs mount --foreground");
    let up = wait_until(Duration::from_secs(30), || {
        is_mounted(&m.mnt) || child.try_wait().ok().flatten().is_some()
    });
    if let Ok(Some(st)) = child.try_wait() {
        panic!("agentfs mount --foreground exited early: {st}");
    }
    assert!(up, "--foreground mount did not appear within 30 s");
    m.mark_mounted();
    m.agent("a");
    write_file(&m.mem("a", "semantic").join("f"), b"fg");
    assert!(
        child.try_wait().unwrap().is_none(),
        "foreground daemon exited"
    );
    let out = agentfs(&["unmount".as_ref(), m.mnt.as_os_str()]);
    assert!(
        out.status.success(),
        "unmount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    m.mark_unmounted();
    let mut status = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        }),
        "foreground process still running 20 s after unmount"
    );
    assert!(
        status.unwrap().success(),
        "foreground process exit status {:?}",
        status
    );
    m.mount();
    assert_eq!(fs::read(m.mem("a", "semantic").join("f")).unwrap(), b"fg");
}

#[test]
fn mount_fails_on_missing_mountpoint() {
    if !can_mount() {
        return;
    }
    let root = fresh_dir("missing");
    let mnt = root.join("does-not-exist");
    let out = agentfs(&[
        "mount".as_ref(),
        mnt.as_os_str(),
        "--data-dir".as_ref(),
        root.join("data").as_os_str(),
    ]);
    assert_one_line_error("mount on a missing mountpoint", &out);
    assert!(!is_mounted(&mnt));
    assert!(!mnt.exists(), "mount created the missing mountpoint");
    let _ = fs::remove_dir_all(&root);
}

#[test]
fn mount_fails_on_non_empty_mountpoint() {
    if !can_mount() {
        return;
    }
    let root = fresh_dir("nonempty");
    let mnt = root.join("mnt");
    fs::create_dir(&mnt).unwrap();
    write_file(&mnt.join("precious"), b"do not hide me");
    let out = agentfs(&[
        "mount".as_ref(),
        mnt.as_os_str(),
        "--data-dir".as_ref(),
        root.join("data").as_os_str(),
    ]);
    assert_one_line_error("mount on a non-empty mountpoint", &out);
    assert!(!is_mounted(&mnt), "mounted over a non-empty directory");
    assert_eq!(fs::read(mnt.join("precious")).unwrap(), b"do not hide me");
    let _ = fs::remove_dir_all(&root);
}

#[test]
fn mount_fails_when_already_mounted() {
    let Some(m) = Mount::try_new() else { return };
    m.agent("a");
    let other = fresh_dir("other-data");
    let out = agentfs(&[
        "mount".as_ref(),
        m.mnt.as_os_str(),
        "--data-dir".as_ref(),
        other.join("data").as_os_str(),
    ]);
    assert_one_line_error("mount on an agentfs mountpoint", &out);
    // The first mount is untouched and still serves.
    assert!(m.mnt.join("a/mem/semantic").is_dir(), "first mount broken");
    write_file(&m.mem("a", "semantic").join("still"), b"ok");
    let _ = fs::remove_dir_all(&other);
}

#[test]
fn mount_fails_on_locked_data_dir() {
    let Some(m) = Mount::try_new() else { return };
    let root = fresh_dir("locked");
    let mnt2 = root.join("mnt2");
    fs::create_dir(&mnt2).unwrap();
    let out = agentfs(&[
        "mount".as_ref(),
        mnt2.as_os_str(),
        "--data-dir".as_ref(),
        m.data.as_os_str(),
    ]);
    let leaked = is_mounted(&mnt2);
    if leaked {
        let _ = agentfs(&["unmount".as_ref(), mnt2.as_os_str()]);
        let _ = detach(&mnt2);
    }
    assert_one_line_error("second daemon on the same data dir", &out);
    assert!(!leaked, "a second daemon mounted the locked data dir");
    m.agent("a"); // the first daemon is unaffected
    let _ = fs::remove_dir_all(&root);
}

#[test]
fn mount_refuses_data_dir_inside_mountpoint() {
    if !can_mount() {
        return;
    }
    let _wd = Watchdog::new(DEFAULT_TEST_SECS);
    let root = fresh_dir("inside");
    let mnt = root.join("mnt");
    fs::create_dir(&mnt).unwrap();
    let out = agentfs(&[
        "mount".as_ref(),
        mnt.as_os_str(),
        "--data-dir".as_ref(),
        mnt.join("data").as_os_str(),
    ]);
    let leaked = is_mounted(&mnt);
    if leaked {
        let _ = agentfs(&["unmount".as_ref(), mnt.as_os_str()]);
        let _ = detach(&mnt);
    }
    assert!(!leaked, "mounted with the data dir under the mountpoint");
    assert_one_line_error("data dir under the mountpoint", &out);
    let _ = fs::remove_dir_all(&root);
}

#[test]
fn mount_creates_missing_nested_data_dir() {
    if !can_mount() {
        return;
    }
    let _wd = Watchdog::new(DEFAULT_TEST_SECS);
    let root = fresh_dir("nested");
    let mut m = Mount::unmounted(root.join("mnt"), root.join("x/y/data"), Some(root.clone()));
    m.mount();
    assert!(m.data.is_dir(), "data dir not created");
    m.agent("a");
}

#[test]
fn unmount_of_unmounted_dir_fails_cleanly() {
    if !can_mount() {
        return;
    }
    let root = fresh_dir("notmounted");
    let out = agentfs(&["unmount".as_ref(), root.as_os_str()]);
    assert_ne!(
        out.status.code(),
        Some(0),
        "unmount of a plain dir succeeded"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.lines().filter(|l| !l.trim().is_empty()).count(),
        1,
        "want one line on stderr, got {err:?}"
    );
    let _ = fs::remove_dir_all(&root);
}

#[test]
fn mount_cleans_stale_mount_after_kill9() {
    let Some(mut m) = Mount::try_new() else {
        return;
    };
    m.agent("a");
    write_file(&m.mem("a", "semantic").join("f"), b"before crash");
    m.kill9_keep_stale();
    assert!(m.is_mounted(), "kill -9 unexpectedly removed the mount");
    // A name never looked up before cannot come from the kernel's caches: the lookup has to
    // reach the (dead) daemon.
    let e = fs::metadata(m.mnt.join("never-looked-up"))
        .expect_err("lookup on a dead FUSE mount succeeded");
    assert!(
        matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED)),
        "a stale FUSE mount answers ENOTCONN or ECONNABORTED, got: {e}"
    );
    // No manual `umount -l`: `agentfs mount` must clear the stale mount itself.
    m.mount();
    assert_eq!(
        fs::read(m.mem("a", "semantic").join("f")).unwrap(),
        b"before crash"
    );
}

#[test]
fn pid_file_names_the_serving_daemon() {
    let Some(mut m) = Mount::try_new() else {
        return;
    };
    let pid = m.daemon_pid().expect("pid file");
    let fuse_fds = fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("daemon's fd dir")
        .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .filter(|t| t == Path::new("/dev/fuse"))
        .count();
    assert!(
        fuse_fds >= 1,
        "pid {pid} from agentfs.pid holds no /dev/fuse fd"
    );
    m.remount();
    let pid2 = m.daemon_pid().expect("pid file after remount");
    assert_ne!(pid, pid2, "pid file not rewritten by the new daemon");
}

#[test]
fn works_from_a_shell() {
    let Some(m) = Mount::try_new() else { return };
    m.agent("a");
    let script = format!(
        "set -e; cd {}; echo hi > x; cat x; echo more >> x; wc -c < x",
        m.mem("a", "semantic").display()
    );
    let out = run_with_timeout(Command::new("sh").arg("-c").arg(&script), CMD_TIMEOUT).unwrap();
    assert!(
        out.status.success(),
        "sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n8\n");
    let mut s = String::new();
    fs::File::open(m.mem("a", "semantic").join("x"))
        .unwrap()
        .read_to_string(&mut s)
        .unwrap();
    assert_eq!(s, "hi\nmore\n");
    let mut f = fs::OpenOptions::new()
        .append(true)
        .mode(0o600)
        .open(m.mem("a", "semantic").join("x"))
        .unwrap();
    f.write_all(b"!").unwrap();
}

#[test]
fn status_bytes_follow_truncate_unlink_and_open_orphans() {
    let Some(m) = Mount::try_new() else { return };
    m.agent("a");
    let sem = m.mem("a", "semantic");
    let bytes = |m: &Mount| {
        status_json(m, "a")["bytes"]["semantic"]
            .as_u64()
            .unwrap_or(0)
    };
    let expect = |m: &Mount, what: &str, ok: &dyn Fn(u64) -> bool| {
        let mut last = 0;
        assert!(
            wait_until(Duration::from_secs(5), || {
                last = bytes(m);
                ok(last)
            }),
            "status.bytes.semantic {what}: still {last} after 5 s"
        );
    };
    write_file(&sem.join("f"), &[7u8; 1_000_000]);
    expect(&m, "after a 1,000,000-byte write", &|b| b >= 1_000_000);
    let c = cstr(sem.join("f"));
    check(unsafe { libc::truncate(c.as_ptr(), 1000) }).unwrap();
    expect(&m, "after truncate to 1000", &|b| {
        (1000..100_000).contains(&b)
    });
    // Unlinked but open: still there until the last close.
    let held = fs::File::open(sem.join("f")).unwrap();
    fs::remove_file(sem.join("f")).unwrap();
    drop(held);
    expect(&m, "after unlink + close", &|b| b < 1000);
}

// ----- policy views: sys/policy/ and AGENT/policy/ ----------------------------------------

const VIEW_POLICY: &str = "# team policy\n\
[[deny]]\nname = \"a-no-scripts\"\nagents = [\"a\"]\npaths = [\"**/*.sh\"]\nops = [\"create\"]\n\n\
[[deny]]\nname = \"b-no-logs\"\nagents = [\"b\"]\npaths = [\"**/*.log\"]\nops = [\"create\"]\n";

fn read_text(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn reload(m: &Mount) -> std::process::Output {
    agentfs(&["policy".as_ref(), "reload".as_ref(), m.mnt.as_os_str()])
}

#[test]
fn sys_policy_shows_the_builtin_policy_and_the_version() {
    let Some(m) = Mount::try_new() else { return };
    let dir = m.mnt.join("sys/policy");
    assert_eq!(names(&dir), vec!["00-builtin.toml", "version"]);
    assert_eq!(
        read_text(&dir.join("00-builtin.toml")),
        agentfs_policy::BUILTIN_TOML
    );
    // `cat` of a generated file (size 0 in stat, direct I/O) gives all of it.
    let out = Command::new("cat")
        .arg(dir.join("00-builtin.toml"))
        .output()
        .expect("run cat");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        agentfs_policy::BUILTIN_TOML
    );
    let version = read_text(&dir.join("version"));
    assert_eq!(
        version,
        format!("{}\n", agentfs_policy::Ruleset::builtin().version())
    );
}

#[test]
fn policy_views_show_the_files_and_follow_a_reload() {
    let Some(m) = Mount::try_new_with_policy(VIEW_POLICY) else {
        return;
    };
    let file = m.mnt.parent().expect("root").join("policy.toml");
    m.agent("a");
    m.agent("b");
    let sys = m.mnt.join("sys/policy");
    assert_eq!(
        names(&sys),
        vec!["00-builtin.toml", "01-policy.toml", "version"]
    );
    assert_eq!(read_text(&sys.join("01-policy.toml")), VIEW_POLICY);
    let v1 = read_text(&sys.join("version"));
    assert_eq!(v1.trim().len(), 64, "{v1:?}");

    let a_pol = m.mnt.join("a/policy");
    assert_eq!(names(&a_pol), vec!["rules", "version"]);
    let a = read_text(&a_pol.join("rules"));
    assert!(a.contains("a-no-scripts"), "{a}");
    assert!(!a.contains("b-no-logs"), "{a}");
    let b = read_text(&m.mnt.join("b/policy/rules"));
    assert!(
        b.contains("b-no-logs") && !b.contains("a-no-scripts"),
        "{b}"
    );
    assert_eq!(read_text(&a_pol.join("version")), v1);

    // A changed file, reloaded: the views follow.
    let changed = VIEW_POLICY.replace("a-no-scripts", "a-no-shell");
    fs::write(&file, &changed).expect("rewrite the policy");
    let out = reload(&m);
    assert!(
        out.status.success(),
        "reload: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read_text(&sys.join("01-policy.toml")), changed);
    let v2 = read_text(&sys.join("version"));
    assert_ne!(v2, v1);
    let a = read_text(&a_pol.join("rules"));
    assert!(
        a.contains("a-no-shell") && !a.contains("a-no-scripts"),
        "{a}"
    );
    assert_eq!(read_text(&a_pol.join("version")), v2);

    // A bad file is refused: the views still show the rules in force.
    fs::write(&file, "[[deny]]\nname = \"broken\"\nbogus_key = 1\n").expect("write");
    let out = reload(&m);
    assert!(!out.status.success(), "a bad policy was accepted");
    assert_eq!(read_text(&sys.join("01-policy.toml")), changed);
    assert_eq!(read_text(&sys.join("version")), v2);
    assert!(read_text(&a_pol.join("rules")).contains("a-no-shell"));

    // A file that turns the built-in policy off: 00-builtin.toml goes away.
    let only = "[builtin]\nenabled = false\n[[allow]]\nname = \"mem\"\npaths = [\"mem/**\"]\n";
    fs::write(&file, only).expect("write");
    let out = reload(&m);
    assert!(
        out.status.success(),
        "reload: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(names(&sys), vec!["01-policy.toml", "version"]);
    assert_eq!(read_text(&sys.join("01-policy.toml")), only);
}

#[test]
fn policy_views_refuse_every_change_as_root() {
    let Some(m) = Mount::try_new() else { return };
    m.agent("a");
    let sem = m.mem("a", "semantic");
    fs::write(sem.join("x"), b"data").expect("write a/mem/semantic/x");
    let cases = [
        (m.mnt.join("a/policy"), "rules", libc::EROFS),
        (m.mnt.join("a/policy"), "version", libc::EROFS),
        (m.mnt.join("sys/policy"), "00-builtin.toml", libc::EPERM),
        (m.mnt.join("sys/policy"), "version", libc::EPERM),
    ];
    for (dir, name, want) in cases {
        let p = dir.join(name);
        let what = |op: &str| format!("{op} {}", p.display());
        let before = read_text(&p);
        assert_errno(
            &what("open O_WRONLY"),
            fs::OpenOptions::new().write(true).open(&p),
            want,
        );
        assert_errno(
            &what("open O_RDWR|O_TRUNC"),
            fs::OpenOptions::new()
                .read(true)
                .write(true)
                .truncate(true)
                .open(&p),
            want,
        );
        assert_errno(
            &what("open O_APPEND"),
            fs::OpenOptions::new().append(true).open(&p),
            want,
        );
        assert_errno(
            &what("create a sibling of"),
            fs::File::create(dir.join("new")),
            want,
        );
        assert_errno(&what("mkdir next to"), fs::create_dir(dir.join("d")), want);
        assert_errno(&what("unlink"), fs::remove_file(&p), want);
        assert_errno(
            &what("rename out"),
            fs::rename(&p, dir.join("renamed")),
            want,
        );
        assert_errno(&what("rename onto"), fs::rename(sem.join("x"), &p), want);
        assert_errno(&what("link to"), fs::hard_link(&p, dir.join("l")), want);
        assert_errno(
            &what("chmod"),
            fs::set_permissions(&p, fs::Permissions::from_mode(0o666)),
            want,
        );
        assert_errno(
            &what("chown"),
            std::os::unix::fs::chown(&p, Some(1000), Some(1000)),
            want,
        );
        let c = cstr(&p);
        assert_errno(
            &what("truncate"),
            check(unsafe { libc::truncate(c.as_ptr(), 0) }),
            want,
        );
        let (k, v) = (cstr("user.k"), b"v");
        assert_errno(
            &what("setxattr"),
            check(unsafe { libc::setxattr(c.as_ptr(), k.as_ptr(), v.as_ptr().cast(), v.len(), 0) }),
            want,
        );
        assert_eq!(read_text(&p), before, "{} changed", p.display());
        let meta = fs::metadata(&p).expect("stat");
        assert_eq!(meta.permissions().mode() & 0o7777, 0o444, "{}", p.display());
    }
    assert_eq!(fs::read(sem.join("x")).expect("read x"), b"data");
    assert_errno(
        "rmdir a/policy",
        fs::remove_dir(m.mnt.join("a/policy")),
        libc::EROFS,
    );
    assert_errno(
        "chmod a/policy",
        fs::set_permissions(m.mnt.join("a/policy"), fs::Permissions::from_mode(0o777)),
        libc::EROFS,
    );
}
