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
