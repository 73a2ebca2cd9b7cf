//! Flight-recorder entries that do not come from a mutation: daemon-wide events (mount,
//! unmount) and the periodic flush of queued entries, so that entries of calls that committed
//! nothing themselves (working memory, refused calls) reach the store, and `sys/audit` and
//! `agentfs audit tail`, within a fraction of a second.

use crate::error::Result;
use crate::vfs::{now_ns, Vfs};
use agentfs_memory::AuditEntry;

impl Vfs {
    /// Commits the queued audit entries now (a no-op when none are queued).
    pub fn flush_audit(&self) -> Result<()> {
        self.flush_pending_audit()
    }

    /// Records a daemon-wide event (`op` such as `mount` or `unmount`, with a free-form
    /// `detail`) as the daemon's own entry (no agent, no path), and commits it with every
    /// queued entry.
    pub fn record_event(&self, op: &str, detail: &str) -> Result<()> {
        // SAFETY: getuid has no preconditions and cannot fail.
        let uid = unsafe { libc::getuid() };
        self.queue_audit(AuditEntry {
            time: now_ns(),
            pid: std::process::id(),
            uid,
            op: op.to_string(),
            detail: detail.to_string(),
            ..AuditEntry::default()
        });
        self.flush_pending_audit()
    }
}
