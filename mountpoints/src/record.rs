//! Flight-recorder entries that do not come from a mutation: daemon-wide events (mount,
//! unmount) and the periodic flush of queued entries, so that entries of calls that committed
//! nothing themselves (working memory, refused calls) reach the store, and `sys/audit` and
//! `agentfs audit tail`, within a fraction of a second.

use crate::caller::Caller;
use crate::error::Result;
use crate::vfs::{now_ns, Vfs};
use agentfs_memory::{AuditEntry, Ino};

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

    /// Queues the entry of a read(2) that returned `size` bytes at `offset` (only with
    /// `--audit-reads`). Queued like a working-memory change: it reaches the store with the
    /// next commit or within the periodic flush, never making the read wait on the disk.
    pub(crate) fn record_read(&self, caller: &Caller, ino: Ino, offset: u64, size: u64) {
        let path = self.path_bytes_of(ino);
        let agent = path
            .split(|b| *b == b'/')
            .next()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .unwrap_or_default();
        self.queue_audit(AuditEntry {
            time: now_ns(),
            agent,
            pid: caller.pid,
            uid: caller.uid,
            op: "read".to_string(),
            path: String::from_utf8_lossy(&path).into_owned(),
            offset,
            size,
            ..AuditEntry::default()
        });
    }
}
