//! Shared fixture for the mount, POSIX, crash and CLI tests (and the benchmark).
//!
//! * [`Mount`] mounts agentfs through the real binary on a fresh temp mountpoint with its own
//!   data dir (siblings, never inside each other) and unmounts on drop (`agentfs unmount`,
//!   falling back to SIGKILL + lazy unmount so a broken daemon never leaves a mount behind).
//! * A per-test watchdog aborts the whole test process with a message if a test runs longer
//!   than its budget (a hung FUSE call would otherwise hang CI forever). Before exiting it kills
//!   every daemon this process started and detaches their mounts, which also fails any call
//!   still blocked in the kernel.
//! * [`with_timeout`] runs one risky call on a helper thread and fails the test if it does not
//!   return in time.
//! * [`as_user`] runs a few raw syscalls in a forked child under another uid/gid and returns
//!   the errno they got (0 on success), for permission tests.
//!
//! Tests that mount need root and `/dev/fuse`; without them they print `SKIP: …` and pass.
#![allow(dead_code)]

use std::ffi::{CString, OsStr};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

/// The binary cargo built for this test target.
pub const BIN: &str = env!("CARGO_BIN_EXE_agentfs");

/// The policy POSIX tests and conformance tools run under: the built-in policy without its
/// file-size limit and its ban on special files, which they exercise on purpose, and without
/// its append-only rule for `mem/episodic`, so that the tree's own rule (EPERM, errno rows
/// e12–e14) is what they see.
pub const POSIX_POLICY: &str =
    "[builtin]\ndisable = [\"max-file-size\", \"no-special-files\", \"episodic-append-only\"]\n";

/// The binary under test: `$AGENTFS_BIN` if set (e.g. a release build:
/// `AGENTFS_BIN=target/release/agentfs cargo test -p agentfs`), else [`BIN`].
pub fn bin() -> std::ffi::OsString {
    std::env::var_os("AGENTFS_BIN").unwrap_or_else(|| BIN.into())
}

/// Default per-test budget; `AGENTFS_TEST_TIMEOUT=<secs>` overrides it (a test may ask for more).
pub const DEFAULT_TEST_SECS: u64 = 180;

/// How long a single CLI command (mount, unmount) may take before the fixture gives up.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(60);

/// Mounts and data dirs created by this process, for the watchdog's last-resort cleanup.
static LIVE: Mutex<Vec<(PathBuf, PathBuf)>> = Mutex::new(Vec::new());
static COUNTER: AtomicU64 = AtomicU64::new(0);

// ---------------------------------------------------------------------------------------------
// Environment checks
// ---------------------------------------------------------------------------------------------

/// True when this process can mount FUSE file systems (root and `/dev/fuse`). Otherwise prints
/// a skip line naming the test, so a skipped run is visible in the output.
pub fn can_mount() -> bool {
    let root = unsafe { libc::geteuid() } == 0;
    let fuse = Path::new("/dev/fuse").exists();
    if root && fuse {
        return true;
    }
    let name = thread::current().name().unwrap_or("?").to_string();
    eprintln!("SKIP {name}: mount tests need root and /dev/fuse (root: {root}, /dev/fuse: {fuse})");
    false
}

// ---------------------------------------------------------------------------------------------
// Watchdog
// ---------------------------------------------------------------------------------------------

/// Aborts the process (after cleaning up its mounts) if dropped later than `secs` after creation.
pub struct Watchdog {
    done: Option<mpsc::Sender<()>>,
}

impl Watchdog {
    pub fn new(secs: u64) -> Watchdog {
        let secs = std::env::var("AGENTFS_TEST_TIMEOUT")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .map_or(secs, |env| env.max(secs));
        let name = thread::current().name().unwrap_or("?").to_string();
        let (tx, rx) = mpsc::channel::<()>();
        thread::Builder::new()
            .name(format!("watchdog-{name}"))
            .spawn(move || {
                if let Err(mpsc::RecvTimeoutError::Timeout) =
                    rx.recv_timeout(Duration::from_secs(secs))
                {
                    eprintln!(
                        "\nWATCHDOG: test `{name}` still running after {secs} s: a FUSE call \
                         probably hangs. Killing this process's agentfs daemons, detaching their \
                         mounts and aborting the test binary."
                    );
                    emergency_cleanup();
                    std::process::exit(70);
                }
            })
            .expect("spawn watchdog");
        Watchdog { done: Some(tx) }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(tx) = self.done.take() {
            let _ = tx.send(());
        }
    }
}

fn emergency_cleanup() {
    let live = match LIVE.lock() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    };
    for (mnt, data) in live {
        if let Some(pid) = read_pid(&data) {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = detach(&mnt);
        eprintln!("WATCHDOG: cleaned {}", mnt.display());
    }
}

/// Runs `f` on a helper thread; panics with `what` if it has not returned within `limit`.
/// (The helper thread is leaked if it hangs; the Mount's Drop then kills the daemon, which
/// fails the blocked call.)
pub fn with_timeout<T: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(_) => panic!("{what}: no answer within {limit:?} (hung FUSE call?)"),
    }
}

// ---------------------------------------------------------------------------------------------
// Processes, mounts
// ---------------------------------------------------------------------------------------------

/// Runs a command with a deadline; kills it on timeout. Captures stdout/stderr.
pub fn run_with_timeout(cmd: &mut Command, limit: Duration) -> io::Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Read the pipes on threads so a chatty child cannot block on a full pipe.
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = io::Read::read_to_end(&mut out, &mut v);
        v
    });
    let t_err = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = io::Read::read_to_end(&mut err, &mut v);
        v
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{cmd:?} did not finish within {limit:?}"),
            ));
        }
        thread::sleep(Duration::from_millis(5));
    };
    // A daemonizing child may leave its stdout/stderr inherited by the daemon: do not wait for
    // EOF forever once the direct child exited.
    let stdout = join_with_deadline(t_out, Duration::from_secs(2));
    let stderr = join_with_deadline(t_err, Duration::from_secs(2));
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

fn join_with_deadline(h: thread::JoinHandle<Vec<u8>>, limit: Duration) -> Vec<u8> {
    let deadline = Instant::now() + limit;
    while !h.is_finished() {
        if Instant::now() >= deadline {
            return b"<output still held open by a background process>".to_vec();
        }
        thread::sleep(Duration::from_millis(5));
    }
    h.join().unwrap_or_default()
}

/// `agentfs ARGS…` with a deadline.
pub fn agentfs(args: &[&OsStr]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args);
    run_with_timeout(&mut cmd, CMD_TIMEOUT).unwrap_or_else(|e| panic!("agentfs {args:?}: {e}"))
}

/// True if `path` is a mount point in this mount namespace.
pub fn is_mounted(path: &Path) -> bool {
    let want = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    info.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|mp| Path::new(&unescape_mountinfo(mp)) == want)
    })
}

/// The fs type of the mount at `path` (e.g. "fuse.agentfs", "fuse"), if mounted.
pub fn mount_fstype(path: &Path) -> Option<String> {
    let want = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().rev().find_map(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        let mp = fields.get(4)?;
        if Path::new(&unescape_mountinfo(mp)) != want {
            return None;
        }
        let sep = fields.iter().position(|f| *f == "-")?;
        fields.get(sep + 1).map(|s| s.to_string())
    })
}

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `umount2(path, MNT_DETACH)`: the way to clear a stale FUSE mount after a daemon died.
pub fn detach(path: &Path) -> io::Result<()> {
    let c = cstr(path);
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads `DATA/agentfs.pid`.
pub fn read_pid(data: &Path) -> Option<i32> {
    fs::read_to_string(data.join("agentfs.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// True while `pid` exists and one of its threads has not finished (the daemon is not our
/// child, so nobody here reaps it; a zombie has finished everything it will ever do). The
/// main thread of a threaded process shows as a zombie as soon as it exits itself, while the
/// other threads may still be exiting and holding its files (the store lock), so every
/// thread is looked at, as `agentfs unmount` does.
pub fn pid_alive(pid: i32) -> bool {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|task| {
        let Ok(stat) = fs::read_to_string(task.path().join("stat")) else {
            return false;
        };
        match stat.rfind(')') {
            Some(i) => !matches!(stat[i + 1..].trim_start().chars().next(), Some('Z' | 'X')),
            None => true,
        }
    })
}

/// Polls `cond` until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

pub fn cstr(p: impl AsRef<OsStr>) -> CString {
    CString::new(p.as_ref().as_bytes()).expect("path with NUL")
}

/// A fresh, unique directory under the system temp dir (not removed automatically).
pub fn fresh_dir(tag: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let p = std::env::temp_dir().join(format!("agentfs-{tag}-{}-{n}-{nanos}", std::process::id()));
    fs::create_dir_all(&p).expect("create temp dir");
    p
}

// ---------------------------------------------------------------------------------------------
// The Mount fixture
// ---------------------------------------------------------------------------------------------

pub struct Mount {
    /// The mountpoint.
    pub mnt: PathBuf,
    /// The data dir (database, pid file, log).
    pub data: PathBuf,
    /// Parent of `mnt` and `data` (removed on drop when everything unmounted cleanly).
    root: Option<PathBuf>,
    /// Extra arguments passed to every `agentfs mount`.
    extra: Vec<String>,
    /// The `agentfs` binary that mounts, when not [`bin`] (benchmarks compare builds).
    binary: Option<std::ffi::OsString>,
    mounted: bool,
    _watchdog: Option<Watchdog>,
}

impl Mount {
    /// Skips (returns None, after printing why) when not root; otherwise mounts a fresh tree
    /// with the default test budget.
    pub fn try_new() -> Option<Mount> {
        Self::try_new_with_budget(DEFAULT_TEST_SECS)
    }

    /// Like [`Mount::try_new`] with a per-test time budget in seconds.
    pub fn try_new_with_budget(secs: u64) -> Option<Mount> {
        if !can_mount() {
            return None;
        }
        let wd = Watchdog::new(secs);
        let root = fresh_dir("test");
        let mut m = Mount::unmounted(root.join("mnt"), root.join("data"), Some(root));
        m._watchdog = Some(wd);
        m.mount();
        Some(m)
    }

    /// Like [`Mount::try_new`], with extra `agentfs mount` arguments.
    pub fn try_new_with_args(args: &[&str]) -> Option<Mount> {
        Self::try_new_with(DEFAULT_TEST_SECS, None, args)
    }

    /// Like [`Mount::try_new`], mounted with `--policy` of a file holding `policy`.
    pub fn try_new_with_policy(policy: &str) -> Option<Mount> {
        Self::try_new_with(DEFAULT_TEST_SECS, Some(policy), &[])
    }

    /// The general form: a budget in seconds, an optional policy (the text of a `--policy`
    /// file) and extra `agentfs mount` arguments.
    pub fn try_new_with(secs: u64, policy: Option<&str>, args: &[&str]) -> Option<Mount> {
        if !can_mount() {
            return None;
        }
        let wd = Watchdog::new(secs);
        let root = fresh_dir("test");
        let mut m = Mount::unmounted(root.join("mnt"), root.join("data"), Some(root.clone()))
            .with_args(args);
        if let Some(policy) = policy {
            let file = root.join("policy.toml");
            fs::write(&file, policy).expect("write the policy file");
            m = m.with_args(&["--policy", file.to_str().expect("UTF-8 temp path")]);
        }
        m._watchdog = Some(wd);
        m.mount();
        Some(m)
    }

    /// A fixture for the given paths, not mounted yet, without a watchdog (the caller owns
    /// the budget). Creates `mnt` (and not `data`: the binary must create a missing data dir).
    pub fn unmounted(mnt: PathBuf, data: PathBuf, root: Option<PathBuf>) -> Mount {
        fs::create_dir_all(&mnt).expect("create mountpoint");
        Mount {
            mnt,
            data,
            root,
            extra: Vec::new(),
            binary: None,
            mounted: false,
            _watchdog: None,
        }
    }

    /// Adds arguments to every later `agentfs mount` of this fixture.
    pub fn with_args(mut self, args: &[&str]) -> Mount {
        self.extra.extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// Mounts with `binary` instead of [`bin`].
    pub fn with_binary(mut self, binary: impl Into<std::ffi::OsString>) -> Mount {
        self.binary = Some(binary.into());
        self
    }

    /// The `agentfs mount MNT --data-dir DATA …` command line.
    pub fn mount_command(&self) -> Command {
        let mut cmd = Command::new(self.binary.clone().unwrap_or_else(bin));
        cmd.arg("mount")
            .arg(&self.mnt)
            .arg("--data-dir")
            .arg(&self.data)
            .args(&self.extra);
        cmd
    }

    /// Runs `agentfs mount` and panics (with its stderr) unless it exits 0 with the tree ready.
    pub fn mount(&mut self) {
        let out = run_with_timeout(&mut self.mount_command(), CMD_TIMEOUT)
            .unwrap_or_else(|e| panic!("agentfs mount {}: {e}", self.mnt.display()));
        assert!(
            out.status.success(),
            "agentfs mount {} failed ({}): {}",
            self.mnt.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        self.mounted = true;
        register(&self.mnt, &self.data);
        assert!(
            is_mounted(&self.mnt),
            "agentfs mount returned 0 but {} is not in /proc/self/mountinfo",
            self.mnt.display()
        );
    }

    /// `agentfs unmount MNT`; panics unless it exits 0, the mount is gone and the daemon exited.
    pub fn unmount(&mut self) {
        let pid = self.daemon_pid();
        let out = agentfs(&["unmount".as_ref(), self.mnt.as_os_str()]);
        assert!(
            out.status.success(),
            "agentfs unmount {} failed ({}): {}",
            self.mnt.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        self.mounted = false;
        assert!(
            !is_mounted(&self.mnt),
            "agentfs unmount returned 0 but {} is still mounted",
            self.mnt.display()
        );
        if let Some(pid) = pid {
            assert!(
                !pid_alive(pid),
                "agentfs unmount returned 0 but daemon {pid} is still running"
            );
        }
        unregister(&self.mnt);
    }

    /// Clean unmount followed by a fresh mount on the same data dir.
    pub fn remount(&mut self) {
        if self.mounted {
            self.unmount();
        }
        self.mount();
    }

    /// Registers an agent (`mkdir MNT/NAME`) and returns its path.
    pub fn agent(&self, name: &str) -> PathBuf {
        let p = self.mnt.join(name);
        fs::create_dir(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        p
    }

    /// `MNT/AGENT/mem/CLASS`.
    pub fn mem(&self, agent: &str, class: &str) -> PathBuf {
        self.mnt.join(agent).join("mem").join(class)
    }

    /// The daemon's pid from `DATA/agentfs.pid`.
    pub fn daemon_pid(&self) -> Option<i32> {
        read_pid(&self.data)
    }

    /// SIGKILLs the daemon and waits until it is gone. The mount is left stale.
    pub fn kill9_keep_stale(&mut self) {
        let pid = self
            .daemon_pid()
            .unwrap_or_else(|| panic!("no pid in {}/agentfs.pid", self.data.display()));
        assert!(pid_alive(pid), "daemon {pid} is not running");
        assert_eq!(
            unsafe { libc::kill(pid, libc::SIGKILL) },
            0,
            "kill -9 {pid}"
        );
        assert!(
            wait_until(Duration::from_secs(20), || !pid_alive(pid)),
            "daemon {pid} still alive 20 s after SIGKILL"
        );
        self.mounted = false;
    }

    /// SIGKILLs the daemon, waits until it is gone and clears the stale mount (`umount -l`).
    pub fn kill9(&mut self) {
        self.kill9_keep_stale();
        if is_mounted(&self.mnt) {
            detach(&self.mnt)
                .unwrap_or_else(|e| panic!("umount -l {} after kill -9: {e}", self.mnt.display()));
        }
        unregister(&self.mnt);
    }

    pub fn is_mounted(&self) -> bool {
        is_mounted(&self.mnt)
    }

    /// Forget the fixture's belief that it is mounted (e.g. after an external `umount`).
    pub fn mark_unmounted(&mut self) {
        self.mounted = false;
        unregister(&self.mnt);
    }

    pub fn mark_mounted(&mut self) {
        self.mounted = true;
        register(&self.mnt, &self.data);
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let mut clean = true;
        if self.mounted || is_mounted(&self.mnt) {
            let pid = self.daemon_pid();
            let ok = run_with_timeout(
                Command::new(bin()).arg("unmount").arg(&self.mnt),
                Duration::from_secs(30),
            )
            .map(|o| o.status.success())
            .unwrap_or(false);
            if !ok || is_mounted(&self.mnt) {
                clean = false;
                eprintln!(
                    "fixture: `agentfs unmount {}` failed; killing the daemon and detaching",
                    self.mnt.display()
                );
                if let Some(pid) = pid {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                let _ = detach(&self.mnt);
            }
            if let Some(pid) = pid {
                if !wait_until(Duration::from_secs(10), || !pid_alive(pid)) {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        unregister(&self.mnt);
        if let Some(root) = &self.root {
            if !is_mounted(&self.mnt) {
                // Keep the data dir of a failed test for inspection (its log explains a lot).
                if clean && !thread::panicking() {
                    let _ = fs::remove_dir_all(root);
                } else {
                    eprintln!("fixture: kept {} for inspection", root.display());
                }
            }
        }
    }
}

fn register(mnt: &Path, data: &Path) {
    let mut g = LIVE.lock().unwrap_or_else(|p| p.into_inner());
    if !g.iter().any(|(m, _)| m == mnt) {
        g.push((mnt.to_path_buf(), data.to_path_buf()));
    }
}

fn unregister(mnt: &Path) {
    let mut g = LIVE.lock().unwrap_or_else(|p| p.into_inner());
    g.retain(|(m, _)| m != mnt);
}

// ---------------------------------------------------------------------------------------------
// Syscall helpers
// ---------------------------------------------------------------------------------------------

/// The errno of a failed `io::Result`, or a panic naming `what` if it succeeded.
#[track_caller]
pub fn errno_of<T: std::fmt::Debug>(what: &str, r: io::Result<T>) -> i32 {
    match r {
        Ok(v) => panic!("{what}: expected an error, got Ok({v:?})"),
        Err(e) => e
            .raw_os_error()
            .unwrap_or_else(|| panic!("{what}: error without errno: {e}")),
    }
}

/// Asserts that `r` failed with `want`, naming both errnos on mismatch.
#[track_caller]
pub fn assert_errno<T: std::fmt::Debug>(what: &str, r: io::Result<T>, want: i32) {
    let got = errno_of(what, r);
    assert_eq!(
        got,
        want,
        "{what}: got errno {} ({}), want {} ({})",
        got,
        errno_name(got),
        want,
        errno_name(want)
    );
}

/// Result of a raw libc call returning -1 on error.
pub fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub fn check_ssize(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

pub fn errno_name(e: i32) -> &'static str {
    match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EACCES => "EACCES",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENOTCONN => "ENOTCONN",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::EBUSY => "EBUSY",
        libc::ENODEV => "ENODEV",
        libc::ELOOP => "ELOOP",
        _ => "?",
    }
}

/// Runs `f` in a forked child after dropping to `uid`/`gid` (no supplementary groups) and
/// returns what `f` returned: by convention 0 for success or an errno. `f` runs after fork()
/// in a multi-threaded process, so it must only make raw syscalls on data prepared before the
/// call (no allocation, no locks, no std I/O). Returns 255 if the credential switch failed.
pub fn as_user(uid: u32, gid: u32, f: impl FnOnce() -> i32) -> i32 {
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
    if pid == 0 {
        unsafe {
            // Raw syscalls: they only change this (single) thread's credentials and take no
            // glibc locks.
            if libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) != 0
                || libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0
                || libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0
            {
                libc::_exit(255);
            }
            let code = f();
            libc::_exit(code.clamp(0, 254));
        }
    }
    let mut status = 0;
    loop {
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        let e = io::Error::last_os_error();
        assert_eq!(e.raw_os_error(), Some(libc::EINTR), "waitpid: {e}");
    }
    assert!(
        libc::WIFEXITED(status),
        "child as uid {uid} died abnormally (status {status:#x})"
    );
    libc::WEXITSTATUS(status)
}

/// errno of the last failed libc call, for use inside [`as_user`] closures (no allocation).
pub fn last_errno() -> i32 {
    unsafe { *libc::__errno_location() }
}

/// Deterministic pseudo-random bytes (xorshift), so files differ in content and a mix-up of
/// two files or offsets is caught.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Compares two byte strings and reports the first differing offset instead of dumping both.
#[track_caller]
pub fn assert_same_bytes(what: &str, got: &[u8], want: &[u8]) {
    if got == want {
        return;
    }
    let first = got
        .iter()
        .zip(want.iter())
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    panic!(
        "{what}: content differs: got {} bytes, want {} bytes, first difference at offset {first}",
        got.len(),
        want.len()
    );
}

/// The state letter of process `pid` (`R`, `S`, `T`, `Z` …) from `/proc/PID/stat`; `None`
/// once it is gone.
pub fn proc_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// The 1, 5 and 15 minute load averages, for benchmark reports.
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// `agentfs audit verify --data-dir DATA` must pass (it works while mounted too).
pub fn assert_audit_verifies(data: &Path, when: &str) {
    let out = agentfs(&[
        "audit".as_ref(),
        "verify".as_ref(),
        "--data-dir".as_ref(),
        data.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{when}: audit verify failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// close(2) with its result: `drop(File)` ignores a failed close, which is how a write the
/// daemon never committed (it died during the flush) would pass for acknowledged.
pub fn close_checked(f: fs::File) -> io::Result<()> {
    use std::os::fd::IntoRawFd;
    // SAFETY: the descriptor is owned (taken from the File) and closed exactly once.
    if unsafe { libc::close(f.into_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// CPU time (ns) of every live thread of `pid` (`/proc/PID/task/*/schedstat`).
pub fn daemon_cpu_ns(pid: i32) -> u64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}
