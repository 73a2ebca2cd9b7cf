//! Control files and the agent gate: signals written to `sys/agents/AGENT/signal`, and the
//! admission of mutating calls (a stopped agent's calls are parked as continuations, never
//! holding a FUSE worker thread).

use crate::agent::Agent;
use crate::caller::Caller;
use crate::error::{Result, VfsError};
use crate::sysfs::Virtual;
use crate::vfs::{now_ns, Vfs};
use agentfs_memory::{AuditEntry, Ino};
use agentfs_signals::{Pass, Refused, Signal};
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

    /// A write to a control file.
    pub(crate) fn write_control(&self, caller: &Caller, v: &Virtual, data: &[u8]) -> Result<u32> {
        let Some(agent) = v.control_of() else {
            return Err(VfsError::NotPermitted("sys/ files are read-only"));
        };
        if caller.agent.is_some() {
            return Err(VfsError::NotPermitted(
                "a bound process cannot write control files",
            ));
        }
        let parsed = std::str::from_utf8(data)
            .ok()
            .and_then(|t| t.parse::<Signal>().ok());
        let result = match parsed {
            Some(signal) => {
                self.deliver(agent, signal);
                Ok(data.len() as u32)
            }
            None => Err(VfsError::Invalid(
                "write STOP, CONT, KILL or START to a signal file",
            )),
        };
        self.queue_audit(AuditEntry {
            time: now_ns(),
            agent: agent.name.to_string(),
            pid: caller.pid,
            uid: caller.uid,
            op: match parsed {
                Some(s) => format!("signal {s}"),
                None => "signal (refused)".to_string(),
            },
            path: format!("sys/agents/{}/signal", agent.name),
            result: result.as_ref().err().map_or(0, |e| e.errno()),
            size: data.len() as u64,
            detail: String::from_utf8_lossy(data)
                .trim()
                .chars()
                .take(64)
                .collect(),
            ..Default::default()
        });
        result
    }

    /// Applies `signal` to `agent`: releases parked calls in arrival order on a thread of
    /// their own (the writer of CONT does not wait for them), or fails them on KILL.
    pub(crate) fn deliver(&self, agent: &Arc<Agent>, signal: Signal) {
        let now = now_ns();
        let t = agent.gate.signal(signal, now);
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
    }
}

fn killed() -> VfsError {
    VfsError::NotPermitted("the agent is killed: an operator must write START")
}
