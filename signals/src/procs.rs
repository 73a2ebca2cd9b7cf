//! Which processes act for which agent, and delivering real signals to them.
//!
//! A process is bound to an agent when its pid was written to `sys/agents/AGENT/pids` (or it
//! was started by `agentfs run`), and so is every descendant it spawns, for as long as it
//! lives. Requests carry the calling thread's id; [`Bindings::agent_of`] answers for it from a
//! short-lived cache, walking the process's ancestry in `/proc` on a miss.
//!
//! Pid reuse: a binding remembers the process's serial (pidfs inode number), so a new process that happens to
//! get a dead bound process's pid is not bound. Cached answers live [`CACHE_TTL`]: the kernel
//! hands out pids in increasing order up to `pid_max` before reusing one, so a pid cannot
//! come back within that time in practice, and a descendant of a bound process cannot pass as
//! an unbound process that had the same pid earlier.

use std::collections::HashMap;
use std::io;
use std::os::fd::FromRawFd;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use thiserror::Error;

/// How long a resolved pid → agent answer is trusted.
pub const CACHE_TTL: Duration = Duration::from_secs(1);

/// Ancestry walks stop after this many generations (a loop guard; real trees are shallow).
const MAX_DEPTH: usize = 4096;

/// A process as `/proc` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcInfo {
    /// The process (thread group) id.
    pub tgid: u32,
    pub ppid: u32,
    /// A number naming this process for the whole boot, never given to a later process
    /// that reuses its pid: see [`process_serial`].
    pub serial: u64,
}

/// Reads a process's ids from `/proc/PID/status` (a thread id works too: its thread group
/// is reported).
///
/// Never `/proc/PID/stat`: reading it blocks while PID is inside execve(2), and a process
/// in execve may itself be waiting on this daemon (closing its close-on-exec files on the
/// mount, or loading a binary from it), which would deadlock the FUSE worker, and every
/// later scan of `/proc`.
pub fn proc_info(pid: u32) -> io::Result<ProcInfo> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> io::Result<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| malformed(pid, name))
    };
    let tgid = field("Tgid:")?;
    let ppid = field("PPid:")?;
    let serial = process_serial(tgid)?;
    Ok(ProcInfo { tgid, ppid, serial })
}

/// The pidfs inode number of process `tgid`: unique per process for the whole boot
/// (Linux >= 6.9), and read without touching the process's own locks. On older kernels,
/// where every pidfd shares one inode, the start time from `/proc/PID/stat` stands in.
pub fn process_serial(tgid: u32) -> io::Result<u64> {
    if !pidfs_numbers_are_unique() {
        return start_time(tgid);
    }
    pidfd_inode(tgid)
}

fn pidfd_inode(tgid: u32) -> io::Result<u64> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, tgid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by pidfd_open and is owned here alone.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    Ok(std::fs::File::from(fd).metadata()?.ino())
}

fn pidfs_numbers_are_unique() -> bool {
    static UNIQUE: OnceLock<bool> = OnceLock::new();
    *UNIQUE.get_or_init(|| {
        let me = pidfd_inode(std::process::id());
        let parent = pidfd_inode(std::os::unix::process::parent_id());
        matches!((me, parent), (Ok(a), Ok(b)) if a != b)
    })
}

/// Field 22 of `/proc/PID/stat` (clock ticks after boot); only for kernels without pidfs.
fn start_time(pid: u32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces or parentheses:
    // fields after it are counted from the last ')'; field 3 (state) comes first.
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().nth(19))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| malformed(pid, "starttime"))
}

fn malformed(pid: u32, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("/proc/{pid}: no {what}"),
    )
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BindError {
    /// No such process (or it died).
    #[error("no such process: {0}")]
    NoProcess(u32),
    /// The process is already bound to another agent.
    #[error("process {pid} is bound to agent {agent}")]
    BoundElsewhere { pid: u32, agent: String },
    /// Binding the daemon itself, pid 1 or 0 would capture the whole system.
    #[error("process {0} cannot be bound")]
    Refused(u32),
}

#[derive(Clone, Debug)]
struct Bound {
    agent: Arc<str>,
    serial: u64,
}

#[derive(Clone, Debug)]
struct Cached {
    agent: Option<Arc<str>>,
    at: Instant,
}

/// The pid → agent bindings of a mount.
#[derive(Debug, Default)]
pub struct Bindings {
    /// Explicitly bound processes, by thread group id.
    bound: RwLock<HashMap<u32, Bound>>,
    /// Resolved answers for request pids (thread ids), each valid for [`CACHE_TTL`].
    cache: RwLock<HashMap<u32, Cached>>,
}

impl Bindings {
    pub fn new() -> Self {
        Self::default()
    }

    /// True when no process is bound: every request is an operator's, nothing to look up.
    pub fn is_empty(&self) -> bool {
        self.bound.read().map(|b| b.is_empty()).unwrap_or(true)
    }

    /// Binds process `pid` (and its future descendants) to `agent`.
    pub fn bind(&self, pid: u32, agent: &Arc<str>) -> Result<(), BindError> {
        if pid <= 1 || pid == std::process::id() {
            return Err(BindError::Refused(pid));
        }
        let info = proc_info(pid).map_err(|_| BindError::NoProcess(pid))?;
        if info.tgid != pid {
            // A thread id: bind its process.
            return self.bind(info.tgid, agent);
        }
        if let Some(other) = self.agent_of_uncached(pid) {
            if &other != agent {
                return Err(BindError::BoundElsewhere {
                    pid,
                    agent: other.to_string(),
                });
            }
        }
        if let Ok(mut b) = self.bound.write() {
            b.insert(
                pid,
                Bound {
                    agent: agent.clone(),
                    serial: info.serial,
                },
            );
        }
        // Answers cached before this binding may now be wrong (descendants of `pid`).
        if let Ok(mut c) = self.cache.write() {
            c.clear();
        }
        Ok(())
    }

    /// The agent the calling thread `pid` acts for, if any.
    pub fn agent_of(&self, pid: u32) -> Option<Arc<str>> {
        if self.is_empty() {
            return None;
        }
        let now = Instant::now();
        if let Ok(c) = self.cache.read() {
            if let Some(hit) = c.get(&pid).filter(|h| now.duration_since(h.at) < CACHE_TTL) {
                return hit.agent.clone();
            }
        }
        let resolved = self.resolve(pid);
        let agent = resolved.as_ref().map(|(a, _)| a.clone());
        if let Some((agent, info)) = resolved {
            // Remember the descendant itself, so that it stays bound when its bound ancestor
            // exits and it is re-parented.
            if let Ok(mut b) = self.bound.write() {
                b.entry(info.tgid).or_insert(Bound {
                    agent,
                    serial: info.serial,
                });
            }
        }
        if let Ok(mut c) = self.cache.write() {
            if c.len() > 65_536 {
                c.retain(|_, h| now.duration_since(h.at) < CACHE_TTL);
            }
            c.insert(
                pid,
                Cached {
                    agent: agent.clone(),
                    at: now,
                },
            );
        }
        agent
    }

    fn agent_of_uncached(&self, pid: u32) -> Option<Arc<str>> {
        self.resolve(pid).map(|(agent, _)| agent)
    }

    /// Walks `pid`'s ancestry in `/proc` to the first bound process: its agent, and `pid`'s
    /// own process. A process that cannot be read (it just exited) is nobody's.
    fn resolve(&self, pid: u32) -> Option<(Arc<str>, ProcInfo)> {
        let bound = self.bound.read().ok()?;
        let first = proc_info(pid).ok()?;
        let mut info = first;
        for _ in 0..MAX_DEPTH {
            if let Some(b) = bound.get(&info.tgid) {
                if b.serial == info.serial {
                    return Some((b.agent.clone(), first));
                }
            }
            if info.ppid <= 1 {
                return None;
            }
            info = proc_info(info.ppid).ok()?;
        }
        None
    }

    /// Live processes acting for `agent`: the bound ones and all their descendants, sorted.
    pub fn pids_of(&self, agent: &str) -> Vec<u32> {
        // Scanning every process costs: never when no process is bound at all.
        if self.is_empty() {
            return Vec::new();
        }
        let mut out: Vec<u32> = all_pids()
            .into_iter()
            .filter(|pid| self.agent_of_uncached(*pid).as_deref() == Some(agent))
            .collect();
        out.sort_unstable();
        out
    }

    /// Drops the records of processes that have exited.
    pub fn prune(&self) {
        if let Ok(mut b) = self.bound.write() {
            b.retain(|pid, bound| proc_info(*pid).is_ok_and(|i| i.serial == bound.serial));
        }
    }

    /// Sends `sig` to every live process acting for `agent`; returns how many got it.
    pub fn signal(&self, agent: &str, sig: i32) -> usize {
        let mut sent = 0;
        for pid in self.pids_of(agent) {
            // SAFETY: kill(2) has no memory effects; a process that exited in between gets
            // ESRCH, which is ignored.
            if unsafe { libc::kill(pid as libc::pid_t, sig) } == 0 {
                sent += 1;
            }
        }
        sent
    }
}

impl Bindings {
    /// Sends `sig` to one process (which exited in between: ignored).
    pub fn signal_pid(&self, pid: u32, sig: i32) {
        // SAFETY: kill(2) has no memory effects.
        unsafe {
            libc::kill(pid as libc::pid_t, sig);
        }
    }
}

/// Every process id in `/proc`.
fn all_pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn reads_this_process() {
        let me = proc_info(std::process::id()).unwrap();
        assert_eq!(me.tgid, std::process::id());
        assert!(me.ppid > 0);
        assert!(me.serial > 0);
        assert_eq!(me.serial, proc_info(std::process::id()).unwrap().serial);
        assert_ne!(me.serial, proc_info(me.ppid).unwrap().serial);
    }

    #[test]
    fn binds_a_process_and_its_descendants_not_others() {
        // sh -c 'sleep 30 & wait': the sleep is a child of the bound shell.
        let mut sh = Command::new("sh")
            .arg("-c")
            .arg("sleep 30 & echo $!; wait")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(sh.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        let child: u32 = line.trim().parse().unwrap();
        let b = Bindings::new();
        let a: Arc<str> = Arc::from("a");
        assert_eq!(b.agent_of(child), None);
        b.bind(sh.id(), &a).unwrap();
        assert_eq!(b.agent_of(child).as_deref(), Some("a"));
        assert_eq!(b.agent_of(sh.id()).as_deref(), Some("a"));
        assert_eq!(b.agent_of(std::process::id()), None);
        assert_eq!(b.pids_of("a"), {
            let mut v = vec![sh.id(), child];
            v.sort_unstable();
            v
        });
        let other: Arc<str> = Arc::from("b");
        assert!(matches!(
            b.bind(child, &other),
            Err(BindError::BoundElsewhere { .. })
        ));
        assert_eq!(b.signal("a", libc::SIGKILL), 2);
        sh.wait().unwrap();
        assert_eq!(
            b.bind(999_999_999, &a),
            Err(BindError::NoProcess(999_999_999))
        );
        assert_eq!(b.bind(1, &a), Err(BindError::Refused(1)));
    }
}
