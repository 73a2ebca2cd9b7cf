//! Who is making a call. Built once per request by the adapter and passed to every core call.

use std::sync::Arc;

/// The agent of a caller whose process cannot be identified: no agent has this name (agent
/// names are never empty), so it matches no tree.
pub const UNIDENTIFIED: &str = "";

#[derive(Clone, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    /// The agent this process is bound to; `None` for an operator (unbound process).
    pub agent: Option<Arc<str>>,
}

impl Caller {
    /// Whether the calling process has `CAP_FSETID` in its effective set (then a truncate
    /// keeps set-user-ID and set-group-ID), from `/proc/PID/status`. A process that is gone
    /// has not; the daemon itself (pid 0) has.
    pub fn has_cap_fsetid(&self) -> bool {
        const CAP_FSETID: u32 = 4;
        if self.pid == 0 {
            return true;
        }
        let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", self.pid)) else {
            return false;
        };
        status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .is_some_and(|caps| caps & (1 << CAP_FSETID) != 0)
    }

    /// The daemon itself (mount-time work, shutdown flushes).
    pub fn kernel() -> Self {
        Caller {
            uid: 0,
            gid: 0,
            pid: 0,
            agent: None,
        }
    }
}
