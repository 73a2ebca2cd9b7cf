//! Registered agents and their live counters (what `sys/agents/AGENT/status` shows).

use agentfs_memory::{Ino, TimeNs};
use agentfs_policy::{Op, RateState, Usage};
use agentfs_signals::Gate;
use parking_lot::{Mutex, RwLock};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug)]
pub struct Agent {
    pub name: Arc<str>,
    /// Position in registration order; names the agent's virtual inodes under `sys/`.
    pub index: u64,
    /// Inode of `MNT/AGENT`.
    pub root: Ino,
    /// Run state and the calls parked while the agent is stopped.
    pub gate: Gate,
    /// The last signal written, with when it took effect.
    pub last_signal: Mutex<Option<(String, TimeNs)>>,
    /// The last policy violation (a `kill` or `deny` decision), as shown in `status`.
    pub last_violation: Mutex<Option<serde_json::Value>>,
    /// The agent's write-rate token buckets. Per agent, held only for one decision.
    pub rate: Mutex<RateState>,
    /// Held for a whole mutation while a quota or file-count limit applies to the agent, so
    /// that its usage is checked and changed as one step (see `Vfs::mutate`).
    pub limits: Mutex<()>,
    /// The consistent cut: every mutation of the agent's tree holds it shared, a snapshot or
    /// rollback exclusive, so neither ever sees a call half-applied. Per agent: one agent's
    /// checkpoint never stalls another agent.
    pub cut: RwLock<()>,
    /// The last rollback: checkpoint name and when it took effect (read from `rollback`).
    pub last_rollback: Mutex<Option<(String, TimeNs)>>,
    /// The last prune of episodic logs: logs deleted, the time given, when (read from `prune`).
    pub last_prune: Mutex<Option<(usize, TimeNs, TimeNs)>>,
    ops: [AtomicU64; Op::ALL.len()],
    errors: AtomicU64,
    /// Bytes held per memory class: working, episodic, semantic.
    bytes: [AtomicI64; 3],
    files: [AtomicI64; 3],
    /// Counters only `sys/metrics` shows (metrics.rs).
    pub(crate) metrics: crate::metrics::AgentMetrics,
}

pub const CLASS_NAMES: [&str; 3] = ["working", "episodic", "semantic"];

impl Agent {
    pub fn new(name: Arc<str>, index: u64, root: Ino, now: TimeNs) -> Self {
        Agent {
            name,
            index,
            root,
            gate: Gate::new(now),
            last_signal: Mutex::new(None),
            last_violation: Mutex::new(None),
            rate: Mutex::new(RateState::default()),
            limits: Mutex::new(()),
            cut: RwLock::new(()),
            last_rollback: Mutex::new(None),
            last_prune: Mutex::new(None),
            ops: Default::default(),
            errors: AtomicU64::new(0),
            bytes: Default::default(),
            files: Default::default(),
            metrics: Default::default(),
        }
    }

    pub fn count_op(&self, op: Op, ok: bool) {
        if ok {
            self.ops[op.index()].fetch_add(1, Ordering::Relaxed);
        } else {
            self.errors.fetch_add(1, Ordering::Relaxed);
            self.metrics.count_error(op);
        }
    }

    /// Successful calls of kind `op`.
    pub fn op_count(&self, op: Op) -> u64 {
        self.ops[op.index()].load(Ordering::Relaxed)
    }

    /// Bytes held in memory class `class_index` (see [`CLASS_NAMES`]).
    pub fn class_bytes(&self, class_index: usize) -> i64 {
        self.bytes[class_index].load(Ordering::Relaxed).max(0)
    }

    /// Files held in memory class `class_index`.
    pub fn class_files(&self, class_index: usize) -> i64 {
        self.files[class_index].load(Ordering::Relaxed).max(0)
    }

    pub fn add_bytes(&self, class_index: usize, delta: i64) {
        self.bytes[class_index].fetch_add(delta, Ordering::Relaxed);
    }

    pub fn add_files(&self, class_index: usize, delta: i64) {
        self.files[class_index].fetch_add(delta, Ordering::Relaxed);
    }

    /// Bytes the agent holds in memory class `class_index`, and its file count over all
    /// classes, as the policy's limits see them.
    pub fn usage(&self, class_index: Option<usize>) -> Usage {
        let class_bytes = class_index
            .map(|i| self.bytes[i].load(Ordering::Relaxed).max(0) as u64)
            .unwrap_or(0);
        let files = self
            .files
            .iter()
            .map(|f| f.load(Ordering::Relaxed).max(0) as u64)
            .sum();
        Usage { class_bytes, files }
    }

    /// The status document, one JSON object.
    pub fn status_json(&self) -> serde_json::Value {
        let (state, since) = self.gate.state();
        let last_signal = self
            .last_signal
            .lock()
            .as_ref()
            .map(|(sig, at)| serde_json::json!({ "signal": sig, "at_ns": at }));
        let mut ops = serde_json::Map::new();
        for op in Op::ALL {
            ops.insert(
                op.name().to_string(),
                self.ops[op.index()].load(Ordering::Relaxed).into(),
            );
        }
        ops.insert(
            "errors".to_string(),
            self.errors.load(Ordering::Relaxed).into(),
        );
        let mut bytes = serde_json::Map::new();
        let mut files = serde_json::Map::new();
        for (i, class) in CLASS_NAMES.iter().enumerate() {
            bytes.insert(
                class.to_string(),
                self.bytes[i].load(Ordering::Relaxed).max(0).into(),
            );
            files.insert(
                class.to_string(),
                self.files[i].load(Ordering::Relaxed).max(0).into(),
            );
        }
        serde_json::json!({
            "agent": &*self.name,
            "root_ino": self.root,
            "state": state.name(),
            "since_ns": since,
            "bytes": bytes,
            "files": files,
            "ops": ops,
            "pids": [],
            "last_signal": last_signal,
            "parked_calls": self.gate.parked(),
            "last_violation": self.last_violation.lock().clone(),
        })
    }
}
