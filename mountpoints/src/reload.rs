//! Swapping the policy of a running mount. A reload is atomic: calls in flight finish under
//! the rules they started with (each holds its own snapshot), later calls see the new ones.
//! Both outcomes are recorded in the flight record.

use crate::vfs::{now_ns, Vfs};
use agentfs_memory::AuditEntry;
use agentfs_policy::{Engine, PolicyVersion, Ruleset};
use std::sync::Arc;

impl Vfs {
    /// The engine every mutation is decided by.
    pub fn policy(&self) -> &Arc<Engine> {
        &self.policy
    }

    /// Makes `rules` (compiled and tested by the caller) the active policy and records it;
    /// returns the version it replaced.
    pub fn install_policy(&self, rules: Ruleset, pid: u32) -> PolicyVersion {
        let new = rules.version();
        let old = self.policy.install(rules).version();
        self.record_policy_event(pid, 0, new, format!("policy {old} -> {new}"));
        tracing::info!(%old, %new, "policy reloaded");
        old
    }

    /// Records a reload that was refused (the old rules stay): `errors` says why.
    pub fn record_refused_reload(&self, pid: u32, errors: &str) {
        let current = self.policy.version();
        self.record_policy_event(pid, libc::EINVAL, current, errors.to_string());
    }

    fn record_policy_event(&self, pid: u32, result: i32, version: PolicyVersion, detail: String) {
        self.queue_audit(AuditEntry {
            time: now_ns(),
            pid,
            op: "policy-reload".to_string(),
            path: "sys/policy".to_string(),
            result,
            policy: version.0,
            detail,
            ..Default::default()
        });
        if let Err(e) = self.flush_pending_audit() {
            tracing::error!(error = %e, "could not record the policy reload");
        }
    }
}
