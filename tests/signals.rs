//! Signals, identity and isolation through a real mount (SPEC §3, §5; issue 4): the
//! `signal` and `pids` control files, parked calls that hold no daemon thread, real POSIX
//! signals to bound processes, `agentfs run`, `agentfs signal`, `agentfs ps`.

mod common;

use common::*;
use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn signal_file(m: &Mount, agent: &str) -> PathBuf {
    m.mnt.join("sys/agents").join(agent).join("signal")
}

fn send(m: &Mount, agent: &str, sig: &str) {
    fs::write(signal_file(m, agent), sig).unwrap_or_else(|e| panic!("write {sig:?}: {e}"));
}

fn state(m: &Mount, agent: &str) -> String {
    fs::read_to_string(signal_file(m, agent))
        .unwrap()
        .trim()
        .to_string()
}

fn status(m: &Mount, agent: &str) -> serde_json::Value {
    let text = fs::read_to_string(m.mnt.join("sys/agents").join(agent).join("status")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Appends `data` to `path` on a thread of its own; the receiver gets the result.
fn append_in_background(path: &Path, data: &'static [u8]) -> mpsc::Receiver<std::io::Result<()>> {
    let (tx, rx) = mpsc::channel();
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let r = OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(data));
        let _ = tx.send(r);
    });
    rx
}

/// `sh -c 'sleep 300 & echo $!; wait'`: the shell and its child's pid.
fn shell_with_child() -> (Child, u32) {
    let mut sh = Command::new("sh")
        .arg("-c")
        .arg("sleep 300 & echo $!; wait")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(sh.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    (sh, line.trim().parse().unwrap())
}

#[test]
fn signal_file_accepts_what_shells_write_and_refuses_the_rest() {
    let Some(m) = Mount::try_new() else { return };
    m.agent("a");
    assert_eq!(state(&m, "a"), "running");
    for (text, want) in [
        ("stop\n", "stopped"),
        ("SIGCONT", "running"),
        ("KILL\n", "killed"),
        ("start", "running"),
    ] {
        send(&m, "a", text);
        assert_eq!(state(&m, "a"), want, "after {text:?}");
    }
    // (An empty write never reaches the file system: `fs::write(f, "")` only truncates.)
    let random: String = (0..4096u32)
        .map(|i| char::from(b'A' + (i.wrapping_mul(2_654_435_761) >> 27) as u8 % 26))
        .collect();
    for bad in ["HUP\n", "STOP STOP", "POLICY\n", "stop\n\n", "-1", &random] {
        let err = fs::write(signal_file(&m, "a"), bad).expect_err(bad);
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{bad:?}");
        assert_eq!(state(&m, "a"), "running", "{bad:?} changed the state");
    }
    // The shell's own redirection works too.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("echo STOP > {}", signal_file(&m, "a").display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(state(&m, "a"), "stopped");
}

/// STOP: a write that starts after STOP returned waits (reads go on, other agents and sys/
/// answer) and completes only after CONT; waiting writes proceed in arrival order.
#[test]
fn stop_parks_mutations_and_cont_releases_them_in_order() {
    let Some(m) = Mount::try_new() else { return };
    m.agent("a");
    m.agent("b");
    let log = m.mem("a", "episodic").join("log");
    fs::write(&log, b"start\n").unwrap();
    send(&m, "a", "STOP");
    // The first append parks in the daemon; the next ones wait behind it in the kernel
    // (a write holds the file's inode lock), in the order they started.
    let mut waiting = Vec::new();
    for line in [&b"1\n"[..], b"2\n", b"3\n"] {
        waiting.push(append_in_background(&log, line));
        assert!(
            wait_until(Duration::from_secs(10), || status(&m, "a")["parked_calls"]
                .as_u64()
                .unwrap_or(0)
                >= 1),
            "the write did not park: {}",
            status(&m, "a")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(300));
    for rx in &waiting {
        assert!(rx.try_recv().is_err(), "a write completed while stopped");
    }
    assert_eq!(fs::read(&log).unwrap(), b"start\n", "reads keep working");
    fs::write(m.mem("b", "semantic").join("x"), b"b works").unwrap();
    assert_eq!(state(&m, "a"), "stopped");
    send(&m, "a", "CONT");
    for rx in waiting {
        rx.recv_timeout(Duration::from_secs(20))
            .expect("released")
            .expect("write after CONT");
    }
    assert_eq!(fs::read(&log).unwrap(), b"start\n1\n2\n3\n");
}

/// A thousand waiting calls hold no daemon thread: the rest of the mount stays responsive.
#[test]
fn a_thousand_parked_calls_leave_the_mount_responsive() {
    let Some(m) = Mount::try_new_with_budget(240) else {
        return;
    };
    m.agent("a");
    m.agent("b");
    const N: usize = 1000;
    let dir = m.mem("a", "working");
    let files: Vec<fs::File> = (0..N)
        .map(|i| {
            OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(dir.join(format!("f{i}")))
                .unwrap()
        })
        .collect();
    send(&m, "a", "STOP");
    let (tx, rx) = mpsc::channel();
    let mut threads = Vec::new();
    for (i, mut f) in files.into_iter().enumerate() {
        let tx = tx.clone();
        threads.push(
            std::thread::Builder::new()
                .stack_size(64 << 10)
                .spawn(move || {
                    let r = f.write_all(format!("{i}").as_bytes());
                    let _ = tx.send((i, r.is_ok()));
                })
                .unwrap(),
        );
    }
    assert!(
        wait_until(Duration::from_secs(60), || status(&m, "a")["parked_calls"]
            .as_u64()
            .unwrap_or(0)
            == N as u64),
        "not all {N} writes parked: {}",
        status(&m, "a")["parked_calls"]
    );
    // Everything else answers at once while they wait.
    let t0 = Instant::now();
    for i in 0..50 {
        fs::write(m.mem("b", "working").join(format!("g{i}")), b"x").unwrap();
        assert_eq!(fs::read_dir(m.mem("b", "working")).unwrap().count(), i + 1);
        let _ = status(&m, "b");
        let _ = fs::metadata(dir.join("f0")).unwrap();
    }
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(30),
        "the mount stalled with {N} parked calls: 50 rounds took {took:?}"
    );
    assert!(
        rx.try_recv().is_err(),
        "a parked write completed while stopped"
    );
    send(&m, "a", "CONT");
    let mut done = 0;
    while done < N {
        let (i, ok) = rx.recv_timeout(Duration::from_secs(60)).expect("released");
        assert!(ok, "write {i} failed after CONT");
        done += 1;
    }
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(fs::read(dir.join("f999")).unwrap(), b"999");
}

/// KILL: waiting calls fail with EPERM, working memory is dropped, durable memory stays, every
/// later change is EPERM until START.
#[test]
fn kill_fails_waiting_calls_and_drops_working_memory() {
    let Some(m) = Mount::try_new() else { return };
    m.agent("a");
    fs::create_dir(m.mem("a", "working").join("d")).unwrap();
    fs::write(m.mem("a", "working").join("d/scratch"), b"tmp").unwrap();
    fs::write(m.mem("a", "semantic").join("fact"), b"kept").unwrap();
    let log = m.mem("a", "episodic").join("log");
    fs::write(&log, b"").unwrap();
    send(&m, "a", "STOP");
    let rx = append_in_background(&log, b"never\n");
    assert!(wait_until(Duration::from_secs(10), || status(&m, "a")
        ["parked_calls"]
        == 1));
    send(&m, "a", "KILL");
    let err = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("failed at KILL")
        .expect_err("a waiting write must fail at KILL");
    assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
    assert_eq!(
        fs::read_dir(m.mem("a", "working")).unwrap().count(),
        0,
        "working memory must be dropped"
    );
    assert_eq!(
        fs::read(m.mem("a", "semantic").join("fact")).unwrap(),
        b"kept"
    );
    assert_eq!(fs::read(&log).unwrap(), b"");
    assert_errno(
        "write while killed",
        fs::write(m.mem("a", "semantic").join("new"), b"x"),
        libc::EPERM,
    );
    assert_eq!(status(&m, "a")["state"], "killed");
    send(&m, "a", "START");
    fs::write(m.mem("a", "semantic").join("new"), b"x").unwrap();
}

/// `pids`: binding a process (and its descendants) makes them act as the agent and receive
/// the real SIGSTOP, SIGCONT and SIGKILL.
#[test]
fn bound_processes_get_real_signals() {
    let Some(m) = Mount::try_new() else { return };
    m.agent("a");
    let pids = m.mnt.join("sys/agents/a/pids");
    assert_eq!(fs::read_to_string(&pids).unwrap(), "");
    let (mut sh, child) = shell_with_child();
    fs::write(&pids, format!("{}\n", sh.id())).unwrap();
    let listed = fs::read_to_string(&pids).unwrap();
    let mut want = [sh.id(), child];
    want.sort_unstable();
    let want: String = want.iter().map(|p| format!("{p}\n")).collect();
    assert_eq!(listed, want, "the shell and its child are bound");
    assert_eq!(status(&m, "a")["pids"].as_array().unwrap().len(), 2);
    send(&m, "a", "STOP");
    for pid in [sh.id(), child] {
        assert!(
            wait_until(Duration::from_secs(5), || proc_state(pid) == Some('T')),
            "{pid} not stopped: {:?}",
            proc_state(pid)
        );
    }
    send(&m, "a", "CONT");
    for pid in [sh.id(), child] {
        assert!(
            wait_until(Duration::from_secs(5), || proc_state(pid) != Some('T')),
            "{pid} still stopped"
        );
    }
    send(&m, "a", "KILL");
    let st = sh.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(libc::SIGKILL)
    );
    assert!(wait_until(Duration::from_secs(5), || proc_state(child)
        .is_none()
        || proc_state(child) == Some('Z')));
}

#[test]
fn pids_refuses_dead_pids_and_garbage() {
    let Some(m) = Mount::try_new() else { return };
    m.agent("a");
    let pids = m.mnt.join("sys/agents/a/pids");
    let mut dead = Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    assert_errno(
        "dead pid",
        fs::write(&pids, format!("{dead_pid}\n")),
        libc::ESRCH,
    );
    let random: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for bad in [&b"x\n"[..], b" \n", b"-5", b"12abc", &random] {
        assert_errno(
            &String::from_utf8_lossy(&bad[..bad.len().min(8)]),
            fs::write(&pids, bad),
            libc::EINVAL,
        );
    }
    assert_eq!(fs::read_to_string(&pids).unwrap(), "");
}

/// `agentfs run`: the command and its children act as the agent: their own tree works,
/// another agent's tree is EACCES, control files are EPERM; the exit status is the command's.
#[test]
fn agentfs_run_binds_the_command() {
    let Some(m) = Mount::try_new() else { return };
    m.agent("a");
    m.agent("b");
    fs::write(m.mem("b", "semantic").join("secret-plan"), b"b's").unwrap();
    let script = format!(
        "set -u
         echo mine > {own}/note || exit 10
         if echo theirs > {other}/note 2>/dev/null; then exit 11; fi
         if cat {other}/secret-plan >/dev/null 2>&1; then exit 12; fi
         if echo STOP > {sig} 2>/dev/null; then exit 13; fi
         if cat {bstatus} >/dev/null 2>&1; then exit 14; fi
         sh -c 'echo grandchild > {own}/gc' || exit 15
         if ls {other} >/dev/null 2>&1; then exit 16; fi
         if echo $$ > {pids} 2>/dev/null; then exit 17; fi
         [ \"$AGENTFS_AGENT\" = a ] || exit 18
         [ \"$AGENTFS_MOUNT\" = {mnt} ] || exit 19
         exit 7",
        own = m.mem("a", "semantic").display(),
        other = m.mem("b", "semantic").display(),
        sig = signal_file(&m, "a").display(),
        bstatus = m.mnt.join("sys/agents/b/status").display(),
        pids = m.mnt.join("sys/agents/a/pids").display(),
        mnt = m.mnt.display(),
    );
    let out = Command::new(bin())
        .args(["run", "--agent", "a", "--mount"])
        .arg(&m.mnt)
        .args(["--", "sh", "-c", &script])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(7),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        fs::read(m.mem("a", "semantic").join("note")).unwrap(),
        b"mine\n"
    );
    assert_eq!(
        fs::read(m.mem("a", "semantic").join("gc")).unwrap(),
        b"grandchild\n"
    );
    assert!(!m.mem("b", "semantic").join("note").exists());
    assert_eq!(state(&m, "a"), "running");
}

#[test]
fn agentfs_signal_and_ps() {
    let Some(m) = Mount::try_new() else { return };
    m.agent("a");
    m.agent("b");
    let run = |args: &[&str]| {
        Command::new(bin())
            .args(args)
            .arg("--mount")
            .arg(&m.mnt)
            .output()
            .unwrap()
    };
    let out = run(&["signal", "a", "stop"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "a: stopped");
    let out = run(&["signal", "a", "bogus"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused"),
        "{out:?}"
    );
    let out = run(&["signal", "nobody", "stop"]);
    assert_eq!(out.status.code(), Some(1));
    let out = run(&["ps"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let row = |name: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no row for {name} in:\n{text}"))
            .to_string()
    };
    assert!(row("a").contains("stopped"), "{text}");
    assert!(row("b").contains("running"), "{text}");
    let out = run(&["ps", "--json"]);
    let states: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["state"].to_string())
        .collect();
    assert_eq!(states, ["\"stopped\"", "\"running\""]);
}

/// Processes inside execve(2) talk to the mount (closing their close-on-exec files on it,
/// loading a binary stored in it) while `/proc/PID/stat` blocks for them: looking such a
/// caller up must not wait on it, or the exec and the daemon's worker wait on each other.
#[test]
fn processes_in_execve_do_not_deadlock_identity_lookups() {
    let Some(m) = Mount::try_new_with_policy(
        "[builtin]\nenabled = false\n\n[[allow]]\nname = \"all\"\npaths = [\"**\"]\n",
    ) else {
        return;
    };
    m.agent("a");
    // With a process bound, every request's caller is looked up in /proc.
    let (mut sh, child) = shell_with_child();
    fs::write(m.mnt.join("sys/agents/a/pids"), format!("{}\n", sh.id())).unwrap();
    let tool = m.mem("a", "working").join("tool");
    fs::copy("/bin/true", &tool).unwrap();
    fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // Files this process holds open are closed by every child's execve.
    let _held: Vec<fs::File> = (0..4)
        .map(|i| fs::File::create(m.mem("a", "working").join(format!("held{i}"))).unwrap())
        .collect();
    for _ in 0..20 {
        let out = run_with_timeout(Command::new("/bin/true").stdin(Stdio::null()), CMD_TIMEOUT)
            .expect("spawning a child while files on the mount are open");
        assert!(out.status.success());
    }
    let out = run_with_timeout(
        Command::new(bin())
            .args(["run", "--agent", "a", "--mount"])
            .arg(&m.mnt)
            .arg("--")
            .arg("sh")
            .arg("-c")
            .arg(format!("exec {}", tool.display())),
        CMD_TIMEOUT,
    )
    .expect("a bound process executing a binary stored on the mount");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // SAFETY: kill(2) has no memory effects; the sleep outlives its shell otherwise.
    unsafe { libc::kill(child as libc::pid_t, libc::SIGKILL) };
    sh.kill().unwrap();
    sh.wait().unwrap();
}
