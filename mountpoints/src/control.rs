//! Control files and the agent gate: signals written to `sys/agents/AGENT/signal`, and the
//! admission of mutating calls (a stopped agent's calls are parked as continuations, never
//! holding a FUSE worker thread).

use crate::agent::Agent;
use crate::caller::Caller;
use crate::error::{Result, VfsError};
use crate::sysfs::Virtual;
use crate::vfs::{now_ns, Vfs};
use agentfs_memory::{AuditEntry, Ino};
use agentfs_signals::{AgentState, BindError, Pass, Refused, Signal};
use std::sync::Arc;

/// An agent whose gate is closed, to park a call on.
pub struct Parked(Arc<Agent>);

/// Whether a mutating call on an inode may run now.
pub enum Admission {
    Proceed,
    /// The agent is stopped: hand the call to [`Vfs::park`].
    Park(Parked),
    Refuse(VfsError),
}

/// A call waiting at a gate: runs with `Ok` when the agent continues, `Err(EPERM)` if it is
/// killed first.
pub type Waiting = Box<dyn FnOnce(Result<()>) + Send>;

impl Vfs {
    fn agent_of(&self, ino: Ino) -> Option<Arc<Agent>> {
        let name = self.node(ino).ok()?.read().agent.clone()?;
        self.agent(&name)
    }

    /// Decides whether a mutating call on `ino` (the object, or the directory a name is
    /// created in or removed from) runs now, waits, or is refused.
    pub fn admission(&self, _caller: &Caller, ino: Ino) -> Admission {
        let Some(agent) = self.agent_of(ino) else {
            return Admission::Proceed;
        };
        // `mkdir`/`rmdir` in `state/` (the only changes it takes) do not change `mem/`: an
        // operator may snapshot a stopped agent to inspect it, or a killed one for forensics.
        if self
            .node(ino)
            .is_ok_and(|n| n.read().class == crate::node::Class::State)
        {
            return Admission::Proceed;
        }
        match agent.gate.check() {
            Pass::Open => Admission::Proceed,
            Pass::Closed => Admission::Park(Parked(agent)),
            Pass::Killed => Admission::Refuse(killed()),
        }
    }

    /// Parks `call` until the agent continues (or runs it at once if that already happened).
    pub fn park(&self, at: Parked, call: Waiting) {
        at.0.gate.park(Box::new(move |r| {
            call(r.map_err(|Refused::Killed| killed()))
        }));
    }

    /// A write to a control file. Only operators (unbound processes) may write them; every
    /// attempt, accepted or refused, is recorded.
    pub(crate) fn write_control(&self, caller: &Caller, v: &Virtual, data: &[u8]) -> Result<u32> {
        let Some(agent) = v.control_of() else {
            return Err(VfsError::NotPermitted("sys/ files are read-only"));
        };
        let (file, op) = match v {
            Virtual::Pids(_) => ("pids", "bind"),
            Virtual::Rollback(_) => ("rollback", "rollback"),
            Virtual::Index(_) => ("index", "reindex"),
            Virtual::Prune(_) => ("prune", "episodes-prune"),
            _ => ("signal", "signal"),
        };
        let result = if caller.agent.is_some() {
            Err(VfsError::NotPermitted(
                "a bound process cannot write control files",
            ))
        } else {
            match v {
                Virtual::Pids(_) => self.write_pids(agent, data),
                Virtual::Rollback(_) => {
                    // A successful rollback records itself in its own store batch.
                    match self.rollback(caller, agent, control_word(data)) {
                        Ok(_) => return Ok(data.len() as u32),
                        Err(e) => Err(e),
                    }
                }
                Virtual::Prune(_) => self.write_prune(caller, agent, data),
                Virtual::Index(_) => match control_word(data) {
                    b"rebuild" => self.request_reindex(agent),
                    _ => Err(VfsError::Invalid("write rebuild to an index file")),
                },
                _ => self.write_signal(agent, data),
            }
        };
        self.queue_audit(AuditEntry {
            time: now_ns(),
            agent: agent.name.to_string(),
            pid: caller.pid,
            uid: caller.uid,
            op: op.to_string(),
            path: format!("sys/agents/{}/{file}", agent.name),
            result: result.as_ref().err().map_or(0, |e| e.errno()),
            size: data.len() as u64,
            detail: String::from_utf8_lossy(data)
                .trim()
                .chars()
                .take(64)
                .collect(),
            ..Default::default()
        });
        result.map(|()| data.len() as u32)
    }

    /// `echo NS > prune`: delete the agent's logs last written before NS.
    fn write_prune(&self, caller: &Caller, agent: &Arc<Agent>, data: &[u8]) -> Result<()> {
        let before = std::str::from_utf8(control_word(data))
            .ok()
            .and_then(|t| t.trim().parse::<i64>().ok())
            .filter(|t| *t >= 0)
            .ok_or(VfsError::Invalid(
                "write a time in nanoseconds since the epoch to a prune file",
            ))?;
        let logs = self.prune_episodes(caller, agent, before)?;
        *agent.last_prune.lock() = Some((logs, before, now_ns()));
        Ok(())
    }

    fn write_signal(&self, agent: &Arc<Agent>, data: &[u8]) -> Result<()> {
        let signal = std::str::from_utf8(data)
            .ok()
            .and_then(|t| t.parse::<Signal>().ok())
            .ok_or(VfsError::Invalid(
                "write STOP, CONT, KILL or START to a signal file",
            ))?;
        self.deliver(agent, signal);
        if signal == Signal::Kill {
            self.drop_working_memory(agent)?;
        }
        Ok(())
    }

    /// `echo PID > pids`: one or more decimal pids, whitespace-separated. All are checked
    /// before any is bound, so a bad one binds nothing.
    fn write_pids(&self, agent: &Arc<Agent>, data: &[u8]) -> Result<()> {
        let pids = parse_pids(data)?;
        for pid in &pids {
            if agentfs_signals::proc_info(*pid).is_err() {
                return Err(VfsError::NoProcess);
            }
        }
        for pid in pids {
            self.bindings.bind(pid, &agent.name).map_err(|e| match e {
                BindError::NoProcess(_) => VfsError::NoProcess,
                BindError::BoundElsewhere { .. } => {
                    VfsError::Busy("the process is bound to another agent")
                }
                BindError::Refused(_) => VfsError::NotPermitted("this process cannot be bound"),
            })?;
            // A process bound to a stopped or killed agent joins its state at once.
            match agent.gate.state().0 {
                AgentState::Stopped => self.bindings.signal_pid(pid, libc::SIGSTOP),
                AgentState::Killed => self.bindings.signal_pid(pid, libc::SIGKILL),
                AgentState::Running => {}
            }
            tracing::info!(agent = %agent.name, pid, "process bound");
        }
        Ok(())
    }

    /// Applies `signal` to `agent`: releases parked calls in arrival order on a thread of
    /// their own (the writer of CONT does not wait for them), or fails them on KILL.
    pub(crate) fn deliver(&self, agent: &Arc<Agent>, signal: Signal) {
        let to = self.deliver_gate(agent, signal);
        self.signal_processes(agent, signal, to);
    }

    /// The real POSIX signal `signal` means for the agent's bound processes, now that its
    /// gate is in state `to`. Call it with no node lock held (it reads /proc).
    pub(crate) fn signal_processes(&self, agent: &Agent, signal: Signal, to: AgentState) {
        let posix = match (signal, to) {
            (Signal::Stop, AgentState::Stopped) => Some(libc::SIGSTOP),
            (Signal::Cont, AgentState::Running) => Some(libc::SIGCONT),
            (Signal::Kill | Signal::Policy, AgentState::Killed) => Some(libc::SIGKILL),
            _ => None,
        };
        if let Some(sig) = posix {
            let sent = self.bindings.signal(&agent.name, sig);
            tracing::debug!(agent = %agent.name, sig, processes = sent, "posix signal sent");
        }
    }

    /// The gate's part of a signal: the state change, and parked calls released or failed.
    /// Returns the new state.
    pub(crate) fn deliver_gate(&self, agent: &Arc<Agent>, signal: Signal) -> AgentState {
        let now = now_ns();
        let t = agent.gate.signal(signal, now);
        agent.metrics.count_signal(signal);
        *agent.last_signal.lock() = Some((signal.name().to_string(), now));
        tracing::info!(agent = %agent.name, %signal, from = %t.from, to = %t.to, released = t.release.len(), failed = t.fail.len(), "signal");
        for call in t.fail {
            call(Err(Refused::Killed));
        }
        if !t.release.is_empty() {
            let release = t.release;
            let spawned = std::thread::Builder::new()
                .name(format!("cont-{}", agent.name))
                .spawn(move || {
                    for call in release {
                        call(Ok(()));
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "could not start a thread to resume parked calls");
            }
        }
        t.to
    }
}

/// What may be written to a `pids` file: one or more decimal pids, separated by ASCII
/// whitespace. Anything else is EINVAL.
pub(crate) fn parse_pids(data: &[u8]) -> Result<Vec<u32>> {
    let text = std::str::from_utf8(data).map_err(|_| VfsError::Invalid("pids: not text"))?;
    let pids: Vec<u32> = text
        .split_ascii_whitespace()
        // Digits only: `str::parse` would also take a sign (`+42`).
        .map(|w| {
            w.parse::<u32>()
                .ok()
                .filter(|_| w.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect::<Option<_>>()
        .ok_or(VfsError::Invalid("write a decimal pid to a pids file"))?;
    if pids.is_empty() {
        return Err(VfsError::Invalid("write a decimal pid to a pids file"));
    }
    Ok(pids)
}

/// The text written to a control file, without one trailing newline (`echo NAME > file`).
pub(crate) fn control_word(data: &[u8]) -> &[u8] {
    let data = data.strip_suffix(b"\n").unwrap_or(data);
    data.strip_suffix(b"\r").unwrap_or(data)
}

fn killed() -> VfsError {
    VfsError::NotPermitted("the agent is killed: an operator must write START")
}
