//! The gate in front of an agent's mutating calls.

use crate::{AgentState, Signal};
use std::collections::VecDeque;
use std::sync::Mutex;

/// Why a call was not let through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The agent is killed (or was killed while the call waited).
    Killed,
}

/// Work waiting for the gate: runs with `Ok` when let through, `Err` when refused.
pub type Continuation = Box<dyn FnOnce(Result<(), Refused>) + Send>;

/// What a call finds at the gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    Open,
    /// Stopped: the call must park a continuation.
    Closed,
    Killed,
}

/// The effect of a signal: the state change and the parked calls the caller must now run
/// (in order) or fail. The gate never runs them itself, so no lock is held while they run.
pub struct Transition {
    pub from: AgentState,
    pub to: AgentState,
    pub release: Vec<Continuation>,
    pub fail: Vec<Continuation>,
}

struct Inner {
    state: AgentState,
    since: i64,
    parked: VecDeque<Continuation>,
}

/// One agent's gate. Cheap to check: one uncontended mutex.
pub struct Gate {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (state, since) = self.state();
        f.debug_struct("Gate")
            .field("state", &state)
            .field("since", &since)
            .finish_non_exhaustive()
    }
}

impl Gate {
    pub fn new(now: i64) -> Self {
        Gate {
            inner: Mutex::new(Inner {
                state: AgentState::Running,
                since: now,
                parked: VecDeque::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock aborts the daemon, so poisoning cannot be observed;
        // take the data either way.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> (AgentState, i64) {
        let g = self.lock();
        (g.state, g.since)
    }

    pub fn parked(&self) -> usize {
        self.lock().parked.len()
    }

    pub fn check(&self) -> Pass {
        match self.lock().state {
            AgentState::Running => Pass::Open,
            AgentState::Stopped => Pass::Closed,
            AgentState::Killed => Pass::Killed,
        }
    }

    /// Parks `k` if the agent is stopped; otherwise runs it at once (the state may have
    /// changed since [`Gate::check`]), outside the lock.
    pub fn park(&self, k: Continuation) {
        let outcome = {
            let mut g = self.lock();
            match g.state {
                AgentState::Stopped => {
                    g.parked.push_back(k);
                    return;
                }
                AgentState::Running => Ok(()),
                AgentState::Killed => Err(Refused::Killed),
            }
        };
        k(outcome)
    }

    /// Applies `signal` at time `now`.
    pub fn signal(&self, signal: Signal, now: i64) -> Transition {
        let mut g = self.lock();
        let from = g.state;
        let to = match (signal, from) {
            (Signal::Kill | Signal::Policy, _) => AgentState::Killed,
            (Signal::Stop, AgentState::Running) => AgentState::Stopped,
            (Signal::Cont, AgentState::Stopped) => AgentState::Running,
            (Signal::Start, AgentState::Killed) => AgentState::Running,
            // STOP of a stopped or killed agent, CONT of a running or killed one, START of a
            // live one: nothing changes.
            (_, s) => s,
        };
        if to != from {
            g.state = to;
            g.since = now;
        }
        let drained: Vec<Continuation> = if to != AgentState::Stopped {
            g.parked.drain(..).collect()
        } else {
            Vec::new()
        };
        let (release, fail) = if to == AgentState::Running {
            (drained, Vec::new())
        } else {
            (Vec::new(), drained)
        };
        Transition {
            from,
            to,
            release,
            fail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex as StdMutex};

    /// Which continuations ran, in order, and whether they were let through.
    type Log = Arc<StdMutex<Vec<(u32, bool)>>>;

    fn recorder() -> (Log, impl Fn(u32) -> Continuation) {
        let log = Arc::new(StdMutex::new(Vec::new()));
        let l = log.clone();
        let make = move |id: u32| -> Continuation {
            let l = l.clone();
            Box::new(move |r| l.lock().unwrap().push((id, r.is_ok())))
        };
        (log, make)
    }

    #[test]
    fn stop_parks_and_cont_releases_in_order() {
        let gate = Gate::new(0);
        let (log, k) = recorder();
        assert_eq!(gate.check(), Pass::Open);
        gate.signal(Signal::Stop, 1);
        assert_eq!(gate.check(), Pass::Closed);
        for i in 0..5 {
            gate.park(k(i));
        }
        assert!(log.lock().unwrap().is_empty(), "nothing runs while stopped");
        assert_eq!(gate.parked(), 5);
        let t = gate.signal(Signal::Cont, 2);
        assert_eq!((t.from, t.to), (AgentState::Stopped, AgentState::Running));
        assert!(t.fail.is_empty());
        for c in t.release {
            c(Ok(()));
        }
        let got: Vec<u32> = log.lock().unwrap().iter().map(|(i, _)| *i).collect();
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
        assert_eq!(gate.state(), (AgentState::Running, 2));
    }

    #[test]
    fn kill_fails_parked_calls_and_refuses_until_start() {
        let gate = Gate::new(0);
        let (log, k) = recorder();
        gate.signal(Signal::Stop, 1);
        gate.park(k(1));
        let t = gate.signal(Signal::Kill, 2);
        assert!(t.release.is_empty());
        for c in t.fail {
            c(Err(Refused::Killed));
        }
        assert_eq!(*log.lock().unwrap(), vec![(1, false)]);
        assert_eq!(gate.check(), Pass::Killed);
        gate.park(k(2));
        assert_eq!(log.lock().unwrap().last(), Some(&(2, false)));
        // CONT does not revive a killed agent; START does.
        gate.signal(Signal::Cont, 3);
        assert_eq!(gate.check(), Pass::Killed);
        gate.signal(Signal::Start, 4);
        assert_eq!(gate.check(), Pass::Open);
    }

    #[test]
    fn park_after_cont_runs_at_once() {
        let gate = Gate::new(0);
        let (log, k) = recorder();
        gate.park(k(7));
        assert_eq!(*log.lock().unwrap(), vec![(7, true)]);
    }
}
