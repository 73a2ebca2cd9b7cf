//! Agent run states, the signals that move between them, and the gate that parks an agent's
//! mutating calls while it is stopped.
//!
//! The gate never holds a thread: a call that must wait hands over a continuation, which runs
//! when the agent is continued (in arrival order) or fails when it is killed.

mod gate;
mod procs;
mod signal;

pub use gate::{Continuation, Gate, Pass, Refused, Transition};
pub use procs::{proc_info, BindError, Bindings, ProcInfo, CACHE_TTL};
pub use signal::{ParseSignalError, Signal};

use serde::Serialize;
use std::fmt;

/// Where an agent is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentState {
    Running,
    Stopped,
    Killed,
}

impl AgentState {
    pub fn name(self) -> &'static str {
        match self {
            AgentState::Running => "running",
            AgentState::Stopped => "stopped",
            AgentState::Killed => "killed",
        }
    }
}

impl fmt::Display for AgentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_lowercase() {
        assert_eq!(
            serde_json::to_string(&AgentState::Stopped).ok().as_deref(),
            Some("\"stopped\"")
        );
    }
}
