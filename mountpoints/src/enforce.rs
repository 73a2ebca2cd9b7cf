//! Asking the policy.
//!
//! The choke point builds one policy [`Call`] per mutation from the daemon's own inode table
//! (raw-byte paths relative to the agent's root), decides it under one snapshot of the rules
//! ([`Asker::rules`], taken once per call, so a reload never splits a decision), writes the
//! verdict into the call's audit entry, and turns a refusal into EACCES. A `kill` verdict
//! raises SIGPOLICY: the violation is recorded and the agent goes to KILLED.
//!
//! Namespace and attribute calls are decided before they are applied (`Vfs::ask_policy` in
//! `mutate.rs`). Writes and truncates are decided under the file's write lock, on the bytes
//! the file will hold around the change ([`Vfs::write_window`], [`Vfs::truncate_window`]):
//! nobody can read the file between the decision and the change, and a refused change is
//! never applied.

use crate::agent::Agent;
use crate::error::{Refusal, Result, VfsError};
use crate::node::Node;
use crate::ops::data::{WriteHashes, WriteHashing};
use crate::vfs::{now_ns, Vfs};
use agentfs_memory::{AuditEntry, ChunkId, FileKind as StoreKind};
use agentfs_policy::{
    Call, Content, Decision, FileKind, Op, Ruleset, SizeChange, Usage, UsageChange, Verdict,
};
use agentfs_signals::Signal;
use rayon::prelude::*;
use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;

/// The largest zero fill (a hole, or a truncate that grows a file) passed to the scanner when
/// a content rule can match inside zeros. Beyond it the window is short and the call is
/// refused (rule `content-window`), never scanned less. No built-in rule matches zeros.
pub(crate) const MAX_ZERO_FILL_SCAN: u64 = 16 << 20;

/// Changes larger than this have their content scan split into pieces scanned on all cores.
const PARALLEL_SCAN_MIN: u64 = 256 << 10;
const SCAN_PIECE: u64 = 128 << 10;

/// The bytes a large write leaves in a file: `data` at `offset`, with the file's bytes just
/// before it (`before`, ending at `offset`) and just after it (`after`), each at most a
/// window long.
struct Around<'a> {
    before: &'a [u8],
    data: &'a [u8],
    offset: u64,
    after: &'a [u8],
}

impl Around<'_> {
    fn start(&self) -> u64 {
        self.offset - self.before.len() as u64
    }

    fn end(&self) -> u64 {
        self.offset + self.data.len() as u64
    }

    fn stop(&self) -> u64 {
        self.end() + self.after.len() as u64
    }

    /// The bytes at `range` (within `start()..stop()`): borrowed from `data` when the range
    /// lies inside it, else copied together across the seam.
    fn bytes(&self, range: Range<u64>) -> Cow<'_, [u8]> {
        let (offset, end) = (self.offset, self.end());
        if range.start >= offset && range.end <= end {
            return Cow::Borrowed(
                &self.data[(range.start - offset) as usize..(range.end - offset) as usize],
            );
        }
        let mut out = Vec::with_capacity((range.end - range.start) as usize);
        if range.start < offset {
            let from = (range.start - self.start()) as usize;
            let to = (range.end.min(offset) - self.start()) as usize;
            out.extend_from_slice(&self.before[from..to]);
        }
        let (lo, hi) = (range.start.max(offset), range.end.min(end));
        if lo < hi {
            out.extend_from_slice(&self.data[(lo - offset) as usize..(hi - offset) as usize]);
        }
        if range.end > end {
            let from = (range.start.max(end) - end) as usize;
            out.extend_from_slice(&self.after[from..(range.end - end) as usize]);
        }
        Cow::Owned(out)
    }
}

/// The pieces [`Vfs::decide_in_pieces`] decides `around`'s change in: [`SCAN_PIECE`] bytes
/// each, except a piece one window long at each end that has file bytes beside it. Only
/// those short pieces' windows cross into `before` or `after` and are copied together
/// (a few hundred bytes); every other window lies inside the request's buffer and is
/// borrowed, where a full piece at the seam would copy 128 KiB per write.
fn pieces_of(around: &Around<'_>, window: u64) -> Vec<Range<u64>> {
    let (start, end) = (around.offset, around.end());
    let mut cuts = vec![start];
    let mut at = start;
    if !around.before.is_empty() && window > 0 {
        at = (start + window).min(end);
        cuts.push(at);
    }
    let tail = match around.after.is_empty() || window == 0 {
        true => end,
        false => end.saturating_sub(window).max(at),
    };
    while at < tail {
        at = (at + SCAN_PIECE).min(tail);
        cuts.push(at);
    }
    if tail < end {
        cuts.push(end);
    }
    cuts.windows(2)
        .filter(|c| c[0] < c[1])
        .map(|c| c[0]..c[1])
        .collect()
}

/// Who asks, under which rules: everything a call's decisions share.
pub(crate) struct Asker {
    pub rules: Arc<Ruleset>,
    pub agent_name: Arc<str>,
    /// `None` while the agent is being registered.
    pub agent: Option<Arc<Agent>>,
    /// The object's path relative to the agent's root (`mem/semantic/x`), raw bytes.
    pub path: Vec<u8>,
    /// The new name of a rename or link, relative to the agent's root.
    pub target: Option<Vec<u8>>,
    /// The object's other names when it is a hard-linked file: a change through one name is
    /// decided for every name, so a file's rules follow all its paths.
    pub aliases: Vec<Vec<u8>>,
    pub uid: u32,
    pub pid: u32,
}

impl Asker {
    /// A call with the asker's agent, paths and identity.
    pub fn call(&self, op: Op) -> Call<'_> {
        Call {
            target: self.target.as_deref(),
            uid: self.uid,
            pid: self.pid,
            ..Call::new(&self.agent_name, op, &self.path)
        }
    }

    /// The agent's usage before and after a call that changes its bytes in memory class
    /// `class_index` by `bytes` and its file count by `files`.
    pub fn usage(&self, class_index: Option<usize>, bytes: i64, files: i64) -> UsageChange {
        let before = self
            .agent
            .as_ref()
            .map(|a| a.usage(class_index))
            .unwrap_or_default();
        let after = Usage {
            class_bytes: before.class_bytes.saturating_add_signed(bytes),
            files: before.files.saturating_add_signed(files),
        };
        UsageChange { before, after }
    }
}

/// The policy's name for a kind of node.
pub(crate) fn policy_kind(kind: StoreKind) -> FileKind {
    match kind {
        StoreKind::File => FileKind::File,
        StoreKind::Dir => FileKind::Dir,
        StoreKind::Symlink => FileKind::Symlink,
        StoreKind::Fifo => FileKind::Fifo,
        StoreKind::Socket => FileKind::Socket,
        StoreKind::CharDevice => FileKind::CharDevice,
        StoreKind::BlockDevice => FileKind::BlockDevice,
    }
}

/// Monotonic nanoseconds for the rate buckets (wall-clock jumps must not refill them).
fn monotonic_ns() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as u64
}

impl Vfs {
    /// Decides `call`, records the verdict in `entry`, and answers `Ok` when it is allowed.
    /// The write-rate buckets are charged only by the last decision of a call (`rated`).
    pub(crate) fn enforce(
        &self,
        asker: &Asker,
        entry: &mut AuditEntry,
        call: &Call<'_>,
        rated: bool,
    ) -> Result<()> {
        let verdict = asker.rules.decide(call);
        self.enforce_verdict(asker, entry, call, verdict, rated.then_some(call))
    }

    /// [`Vfs::enforce`] with `verdict` already decided for `call`; `rate_as`, when given, is
    /// the call the write-rate limits charge (the whole change, for one decided in pieces).
    fn enforce_verdict(
        &self,
        asker: &Asker,
        entry: &mut AuditEntry,
        call: &Call<'_>,
        verdict: Verdict,
        rate_as: Option<&Call<'_>>,
    ) -> Result<()> {
        let rated = rate_as.is_some();
        let mut verdict = match (&asker.agent, rate_as) {
            (Some(agent), Some(whole)) => {
                let mut rate = agent.rate.lock();
                asker.rules.rate(whole, verdict, &mut rate, monotonic_ns())
            }
            _ => verdict,
        };
        if verdict.is_allowed() {
            for alias in &asker.aliases {
                let v = asker.rules.decide(&Call {
                    path: alias,
                    ..call.clone()
                });
                if !v.is_allowed() {
                    verdict = v;
                    break;
                }
            }
        }
        record_verdict(entry, &verdict);
        // One count per call: its last decision, or the one that refused it.
        if let (Some(agent), true) = (&asker.agent, rated || !verdict.is_allowed()) {
            agent.metrics.count_decision(&verdict);
        }
        let (rule, killed) = match &verdict.decision {
            Decision::Allow => return Ok(()),
            Decision::Deny { rule } => (rule.clone(), false),
            Decision::Kill { rule } => (rule.clone(), true),
        };
        let mut reason = verdict.reason.clone().unwrap_or_default();
        // A refused name must not be persisted or shown either: it may be the secret.
        for field in [&mut entry.agent, &mut entry.path, &mut entry.target] {
            let redacted = redact(&asker.rules, field);
            if redacted != *field {
                reason = reason.replace(field.as_str(), &redacted);
                *field = redacted;
            }
        }
        let refusal = Refusal {
            rule,
            reason,
            killed: killed && asker.agent.is_some(),
        };
        entry.detail = refusal.reason.clone();
        if let Some(agent) = &asker.agent {
            let path = redact(&asker.rules, &String::from_utf8_lossy(call.path));
            self.note_violation(agent, call, &path, &refusal);
        }
        Err(VfsError::Refused(Box::new(refusal)))
    }

    /// Records a refusal in the agent's status and, for a `kill` rule, raises SIGPOLICY:
    /// an entry of its own in the flight record, then the agent goes to KILLED (waiting
    /// calls fail, later ones get EPERM until START).
    fn note_violation(&self, agent: &Arc<Agent>, call: &Call<'_>, path: &str, refusal: &Refusal) {
        let now = now_ns();
        *agent.last_violation.lock() = Some(serde_json::json!({
            "at_ns": now,
            "rule": refusal.rule,
            "action": if refusal.killed { "kill" } else { "deny" },
            "op": call.op.name(),
            "path": path,
            "reason": refusal.reason,
        }));
        tracing::warn!(agent = %agent.name, rule = %refusal.rule, op = call.op.name(), path, killed = refusal.killed, "policy violation");
        if refusal.killed {
            self.queue_audit(AuditEntry {
                time: now,
                agent: agent.name.to_string(),
                pid: call.pid,
                uid: call.uid,
                op: "signal".to_string(),
                path: format!("sys/agents/{}/signal", agent.name),
                rule: refusal.rule.clone(),
                detail: format!("POLICY: {}", refusal.reason),
                ..Default::default()
            });
            // The gate only: the call holds the file's lock here, and signalling processes
            // reads /proc, which can wait on a process faulting on this mount. `mutate` sends
            // the real SIGKILL once no lock is held.
            self.deliver_gate(agent, Signal::Policy);
        }
    }

    /// The bytes `n` holds in `range` (clamped to its size), appended to `out`; holes read
    /// as zeros. Called with the node's lock held.
    pub(crate) fn read_locked(&self, n: &Node, range: Range<u64>, out: &mut Vec<u8>) -> Result<()> {
        let end = range.end.min(n.attr.size);
        if range.start >= end {
            return Ok(());
        }
        let at = out.len();
        out.resize(at + (end - range.start) as usize, 0);
        self.fill_from_node(n, range.start, &mut out[at..])
    }

    /// Decides the write `hashing` describes (its bytes at its offset) into the file `n`
    /// (locked by the caller) of memory class `class_index`, on the bytes the file will hold
    /// around it.
    ///
    /// A large write is scanned in pieces on all cores, and its `hashing` is done in the same
    /// parallel pass (see [`Vfs::decide_in_pieces`]), which returns the hashes. `Ok(None)`:
    /// the write was decided without that pass, and the caller hashes.
    pub(crate) fn decide_write(
        &self,
        asker: &Asker,
        entry: &mut AuditEntry,
        n: &Node,
        class_index: Option<usize>,
        hashing: &WriteHashing<'_>,
    ) -> Result<Option<WriteHashes>> {
        let (data, offset) = (hashing.data(), hashing.offset());
        let old_size = n.attr.size;
        let end = offset + data.len() as u64;
        let new_size = old_size.max(end);
        let size = SizeChange {
            before: old_size,
            after: new_size,
        };
        let usage = asker.usage(class_index, (new_size - old_size) as i64, 0);
        let base = Call {
            size: Some(size),
            usage: Some(usage),
            ..asker.call(Op::Write)
        };
        let w = asker.rules.window() as u64;
        if w == 0 {
            return self.enforce(asker, entry, &base, true).map(|()| None);
        }
        let hole = offset.saturating_sub(old_size);
        let mut bytes = Vec::new();
        if hole > 2 * w && !asker.rules.zero_fill_can_match() {
            // No rule matches inside zeros: the hole can only join a match with the bytes at
            // the old end of file. Decide that seam first, then the written bytes with the
            // zeros before them.
            let seam = old_size..old_size + 1;
            let lo = old_size.saturating_sub(w);
            self.read_locked(n, lo..old_size, &mut bytes)?;
            bytes.resize(bytes.len() + (1 + w) as usize, 0);
            let call = Call {
                content: Some(Content {
                    bytes: &bytes,
                    at: lo,
                    changed: seam,
                    file_size: new_size,
                }),
                ..base.clone()
            };
            self.enforce(asker, entry, &call, false)?;
            bytes.clear();
            bytes.resize(w as usize, 0);
            bytes.extend_from_slice(data);
            let call = Call {
                content: Some(Content {
                    bytes: &bytes,
                    at: offset - w,
                    changed: offset..end,
                    file_size: new_size,
                }),
                ..base
            };
            return self.enforce(asker, entry, &call, true).map(|()| None);
        }
        let changed = offset.min(old_size)..end;
        let lo = changed.start.saturating_sub(w);
        self.read_locked(n, lo..changed.start, &mut bytes)?;
        if hole == 0 && data.len() as u64 > PARALLEL_SCAN_MIN {
            // A large write: its pieces are scanned straight from the request's buffer; only
            // the two at its ends are stitched to the file's bytes around it.
            let mut after = Vec::new();
            self.read_locked(n, end..end + w, &mut after)?;
            let around = Around {
                before: &bytes,
                data,
                offset,
                after: &after,
            };
            return self
                .decide_in_pieces(asker, entry, &base, &around, new_size, hashing)
                .map(Some);
        }
        if hole > MAX_ZERO_FILL_SCAN {
            // Too long to scan: the short window makes the policy refuse (content-window).
        } else {
            bytes.resize(bytes.len() + hole as usize, 0);
            bytes.extend_from_slice(data);
            self.read_locked(n, end..end + w, &mut bytes)?;
        }
        if changed.end - changed.start > PARALLEL_SCAN_MIN && bytes.len() as u64 >= end - lo {
            // After a hole: the change starts at the old end of file (an append, to the
            // policy), and the zeros and the data follow the old bytes in one buffer.
            let (before, data) = bytes.split_at((changed.start - lo) as usize);
            let around = Around {
                before,
                data,
                offset: changed.start,
                after: &[],
            };
            return self
                .decide_in_pieces(asker, entry, &base, &around, new_size, hashing)
                .map(Some);
        }
        let call = Call {
            content: Some(Content {
                bytes: &bytes,
                at: lo,
                changed,
                file_size: new_size,
            }),
            ..base
        };
        self.enforce(asker, entry, &call, true).map(|()| None)
    }

    /// Decides a large change as pieces of [`SCAN_PIECE`] bytes scanned on all cores, each
    /// with its own window (exact: no match is longer than the window). The verdict of the
    /// piece that decides (the first refused, else the first with an audit finding, else the
    /// first) is recorded and acted on; the rate limits charge the whole change.
    ///
    /// The write's `hashing` runs in the same parallel pass, so the policy adds no trip into
    /// the thread pool of its own: the task scanning a piece first hashes the chunks that
    /// start in it, which brings the piece into that core's cache for the scan; the audit
    /// hash of the whole write runs beside. The hashes are returned when the change is
    /// allowed.
    fn decide_in_pieces(
        &self,
        asker: &Asker,
        entry: &mut AuditEntry,
        base: &Call<'_>,
        around: &Around<'_>,
        file_size: u64,
        hashing: &WriteHashing<'_>,
    ) -> Result<WriteHashes> {
        let w = asker.rules.window() as u64;
        let changed = around.offset..around.end();
        let windows: Vec<(u64, Cow<'_, [u8]>, Range<u64>)> = pieces_of(around, w)
            .into_iter()
            .map(|piece| {
                let lo = piece.start.saturating_sub(w).max(around.start());
                let hi = (piece.end + w).min(around.stop());
                (lo, around.bytes(lo..hi), piece)
            })
            .collect();
        let pieces: Vec<Call<'_>> = windows
            .iter()
            .map(|(lo, bytes, piece)| Call {
                content: Some(Content {
                    bytes,
                    at: *lo,
                    changed: piece.clone(),
                    file_size,
                }),
                ..base.clone()
            })
            .collect();
        let (decided, audit): (Vec<(Verdict, Vec<ChunkId>)>, _) = rayon::join(
            || {
                pieces
                    .par_iter()
                    .zip(&windows)
                    .map(|(call, (_, _, piece))| {
                        let chunks = hashing.chunks_starting_in(piece.clone());
                        (asker.rules.decide(call), chunks)
                    })
                    .collect()
            },
            || hashing.audit_hash(),
        );
        let (mut verdicts, chunks): (Vec<Verdict>, Vec<Vec<ChunkId>>) = decided.into_iter().unzip();
        let deciding = verdicts
            .iter()
            .position(|v| !v.is_allowed())
            .or_else(|| verdicts.iter().position(|v| !v.audited.is_empty()))
            // With no deciding piece, the first one stands for the call: it carries where
            // the change starts, which tells an append from an overwrite.
            .unwrap_or(0);
        let whole = Call {
            content: Some(Content {
                bytes: &[],
                at: changed.start,
                changed: changed.clone(),
                file_size,
            }),
            ..base.clone()
        };
        let verdict = verdicts.swap_remove(deciding);
        self.enforce_verdict(asker, entry, &pieces[deciding], verdict, Some(&whole))?;
        Ok(WriteHashes {
            audit,
            chunks: chunks.into_iter().flatten().collect(),
        })
    }

    /// Decides a truncate of the file `n` (locked by the caller) to `new_size`, with the
    /// mode or owner change of the same setattr, on the bytes the file will hold around the
    /// cut.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn decide_truncate(
        &self,
        asker: &Asker,
        entry: &mut AuditEntry,
        n: &Node,
        new_size: u64,
        mode: Option<u32>,
        chown: bool,
        class_index: Option<usize>,
    ) -> Result<()> {
        let old_size = n.attr.size;
        let size = SizeChange {
            before: old_size,
            after: new_size,
        };
        let usage = asker.usage(class_index, new_size as i64 - old_size as i64, 0);
        let base = Call {
            size: Some(size),
            usage: Some(usage),
            mode,
            chown,
            kind: Some(policy_kind(n.attr.kind)),
            ..asker.call(Op::Truncate)
        };
        let w = asker.rules.window() as u64;
        if w == 0 {
            return self.enforce(asker, entry, &base, true);
        }
        let mut bytes = Vec::new();
        let (changed, zeros) = if new_size <= old_size {
            (new_size..new_size, 0)
        } else if asker.rules.zero_fill_can_match() {
            let fill = new_size - old_size;
            (old_size..new_size, fill.min(MAX_ZERO_FILL_SCAN + 1))
        } else {
            // Zeros can only join a match with the bytes at the old end of file.
            let seam_end = (old_size + 1).min(new_size);
            (old_size..seam_end, (new_size - old_size).min(1 + w))
        };
        let lo = changed.start.saturating_sub(w);
        self.read_locked(n, lo..changed.start.min(old_size), &mut bytes)?;
        if zeros <= MAX_ZERO_FILL_SCAN {
            bytes.resize(bytes.len() + zeros as usize, 0);
        }
        let call = Call {
            content: Some(Content {
                bytes: &bytes,
                at: lo,
                changed,
                file_size: new_size,
            }),
            ..base
        };
        self.enforce(asker, entry, &call, true)
    }
}

/// `path` with every component that holds a match of a content rule replaced by
/// `[redacted BLAKE3-PREFIX]`: what is recorded about a refused name, which may be a secret.
/// The hash prefix still lets an investigator tell two refused names apart.
pub(crate) fn redact(rules: &Ruleset, path: &str) -> String {
    if path.is_empty() || !rules.holds_forbidden(path.as_bytes()) {
        return path.to_string();
    }
    path.split('/')
        .map(|c| {
            if rules.holds_forbidden(c.as_bytes()) {
                let h = blake3::hash(c.as_bytes()).to_hex();
                format!("[redacted {}]", &h[..16])
            } else {
                c.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Writes a verdict into an audit entry: outcome, deciding rule (or granting rule, then the
/// audit rules), and the policy version.
fn record_verdict(entry: &mut AuditEntry, v: &Verdict) {
    entry.decision = v.outcome().to_string();
    entry.policy = v.version.0;
    let mut rules: Vec<&str> = Vec::new();
    match v.refused_by() {
        Some(rule) => rules.push(rule),
        None => rules.extend(v.allowed_by.as_deref()),
    }
    rules.extend(v.audited.iter().map(|f| &*f.rule));
    entry.rule = rules.join(",");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pieces tile the change, and only those at a seam have a window that needs bytes
    /// from outside the request's buffer.
    #[test]
    fn pieces_tile_the_change_and_only_seams_copy() {
        let data = vec![b'x'; 1 << 20];
        let side = vec![b'y'; 235];
        for (before, after) in [(0, 0), (235, 0), (0, 235), (235, 235), (100, 7)] {
            for len in [1, 235, 236, 470, 300 << 10, 1 << 20] {
                let around = Around {
                    before: &side[..before],
                    data: &data[..len],
                    offset: 4096,
                    after: &side[..after],
                };
                let w = 235;
                let pieces = pieces_of(&around, w);
                assert_eq!(pieces.first().map(|p| p.start), Some(4096));
                assert_eq!(pieces.last().map(|p| p.end), Some(4096 + len as u64));
                assert!(pieces.windows(2).all(|p| p[0].end == p[1].start));
                for p in &pieces {
                    assert!(p.end - p.start <= SCAN_PIECE, "{p:?}");
                    let lo = p.start.saturating_sub(w).max(around.start());
                    let hi = (p.end + w).min(around.stop());
                    let copied = matches!(around.bytes(lo..hi), Cow::Owned(_));
                    assert!(
                        !copied || p.end - p.start <= w,
                        "piece {p:?} of {len} bytes (before {before}, after {after}) is copied"
                    );
                }
            }
        }
    }
}
