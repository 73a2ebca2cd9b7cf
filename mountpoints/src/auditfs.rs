//! The flight recorder as files: `sys/audit` (every entry) and `sys/agents/AGENT/audit` (one
//! agent's), JSON lines (see `AuditRecord::to_json`).
//!
//! These files are not snapshots taken at open like the other `sys/` files: they grow while
//! open, and report their current length as their size, so `tail -f` sees new entries. Each
//! file keeps a small index (an [`AuditView`]): how many bytes the entries rendered so far take,
//! and a mark every [`MARK_EVERY`] bytes of where an entry starts, so that a read at any offset
//! renders only the entries from the mark before it, and a `stat` only renders entries recorded
//! since the last one. Bytes are never held; the store is read again.

use crate::error::{Result, VfsError};
use agentfs_memory::Store;
use parking_lot::Mutex;
use std::collections::HashMap;

/// Distance in bytes between two marks of a view's index.
const MARK_EVERY: u64 = 64 * 1024;
/// Entries fetched from the store at a time.
const PAGE: usize = 1024;

/// The index of one audit file.
#[derive(Debug)]
struct AuditView {
    /// Last seq rendered into `len`.
    after: u64,
    /// Bytes of JSON lines of every entry up to `after`.
    len: u64,
    /// `(offset, seq)`: the entries after `seq` start at byte `offset`. Ascending; the first
    /// is `(0, 0)`.
    marks: Vec<(u64, u64)>,
}

impl Default for AuditView {
    fn default() -> Self {
        AuditView {
            after: 0,
            len: 0,
            marks: vec![(0, 0)],
        }
    }
}

/// Every audit file's view, keyed by agent (`None`: `sys/audit`).
#[derive(Debug, Default)]
pub(crate) struct AuditViews {
    views: Mutex<HashMap<Option<String>, AuditView>>,
}

fn line(rec: &agentfs_memory::AuditRecord) -> String {
    let mut s = rec.to_json();
    s.push('\n');
    s
}

fn store_err(e: agentfs_memory::StoreError) -> VfsError {
    VfsError::Store(e)
}

impl AuditViews {
    /// Brings `view` up to the store's latest entries.
    fn refresh(view: &mut AuditView, store: &dyn Store, agent: Option<&str>) -> Result<()> {
        loop {
            let recs = store
                .audit_after(view.after, agent, PAGE)
                .map_err(store_err)?;
            for rec in &recs {
                let last_mark = view.marks.last().map_or(0, |m| m.0);
                if view.len - last_mark >= MARK_EVERY {
                    view.marks.push((view.len, view.after));
                }
                view.len += line(rec).len() as u64;
                view.after = rec.seq;
            }
            if recs.len() < PAGE {
                return Ok(());
            }
        }
    }

    /// The current length of the file.
    pub(crate) fn len(&self, store: &dyn Store, agent: Option<&str>) -> Result<u64> {
        let mut views = self.views.lock();
        let view = views.entry(agent.map(str::to_string)).or_default();
        Self::refresh(view, store, agent)?;
        Ok(view.len)
    }

    /// Up to `size` bytes of the file from `offset` (fewer at its end).
    pub(crate) fn read(
        &self,
        store: &dyn Store,
        agent: Option<&str>,
        offset: u64,
        size: u32,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let (mut pos, mut after, end) = {
            let mut views = self.views.lock();
            let view = views.entry(agent.map(str::to_string)).or_default();
            Self::refresh(view, store, agent)?;
            let i = view
                .marks
                .partition_point(|m| m.0 <= offset)
                .saturating_sub(1);
            let (pos, after) = view.marks.get(i).copied().unwrap_or((0, 0));
            (
                pos,
                after,
                view.len.min(offset.saturating_add(u64::from(size))),
            )
        };
        // Render from the mark, keeping only [offset, end).
        while pos < end {
            let recs = store.audit_after(after, agent, PAGE).map_err(store_err)?;
            if recs.is_empty() {
                break;
            }
            for rec in &recs {
                let l = line(rec);
                let next = pos + l.len() as u64;
                if next > offset {
                    let from = offset.saturating_sub(pos) as usize;
                    let to = (end.min(next) - pos) as usize;
                    if from < to {
                        out.extend_from_slice(&l.as_bytes()[from..to]);
                    }
                }
                pos = next;
                after = rec.seq;
                if pos >= end {
                    break;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::{Caller, Vfs, VfsError, ROOT_INO};
    use agentfs_memory::{RamStore, Store};
    use std::path::Path;
    use std::sync::Arc;

    fn vfs() -> Arc<Vfs> {
        let d: Arc<dyn Store> = Arc::new(RamStore::new());
        Vfs::with_stores(
            Path::new("/nonexistent"),
            d,
            Arc::new(RamStore::new()),
            Arc::new(agentfs_policy::Engine::builtin()),
        )
        .unwrap()
    }

    fn ino(vfs: &Vfs, path: &str) -> u64 {
        let mut ino = ROOT_INO;
        for part in path.split('/') {
            ino = vfs
                .lookup(&Caller::kernel(), ino, part.as_bytes())
                .unwrap()
                .ino;
        }
        ino
    }

    /// Reads the whole file in `chunk`-byte reads, as `cat` would.
    fn read_all(vfs: &Vfs, caller: &Caller, ino: u64, chunk: u32) -> Result<Vec<u8>, VfsError> {
        let fh = vfs.open_file(caller, ino, libc::O_RDONLY)?.fh;
        let mut out = Vec::new();
        loop {
            let got = vfs.read(caller, ino, fh, out.len() as u64, chunk)?;
            if got.is_empty() {
                return Ok(out);
            }
            out.extend_from_slice(&got);
        }
    }

    fn bound(agent: &str) -> Caller {
        Caller {
            agent: Some(agent.into()),
            ..Caller::kernel()
        }
    }

    #[test]
    fn audit_files_grow_read_consistently_and_filter_by_agent() {
        let vfs = vfs();
        let op = Caller::kernel();
        for agent in ["a", "b"] {
            vfs.mkdir(&op, ROOT_INO, agent.as_bytes(), 0o755).unwrap();
        }
        let semantic_a = ino(&vfs, "a/mem/semantic");
        // Enough entries for several index marks (each line is ~500 bytes).
        for i in 0..600 {
            vfs.mkdir(&op, semantic_a, format!("d{i}").as_bytes(), 0o755)
                .unwrap();
        }
        vfs.flush_audit().unwrap();
        let all = ino(&vfs, "sys/audit");
        let whole = read_all(&vfs, &op, all, 1 << 20).unwrap();
        assert!(whole.len() as u64 > 3 * super::MARK_EVERY);
        assert_eq!(vfs.getattr(&op, all).unwrap().size, whole.len() as u64);
        // Small, unaligned reads give the same bytes (marks are used for the offsets).
        assert_eq!(read_all(&vfs, &op, all, 4093).unwrap(), whole);
        let text = String::from_utf8(whole.clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 602);
        for (i, v) in lines.iter().enumerate() {
            assert_eq!(v["seq"], i as u64 + 1);
        }
        // It grows.
        vfs.mkdir(&op, semantic_a, b"later", 0o755).unwrap();
        vfs.flush_audit().unwrap();
        let grown = vfs.getattr(&op, all).unwrap().size;
        assert!(grown > whole.len() as u64);
        let tail = vfs.read(&op, all, 0, whole.len() as u64, 1 << 20).unwrap();
        assert!(String::from_utf8(tail)
            .unwrap()
            .contains("a/mem/semantic/later"));

        // One agent's file: only its entries; b has just its registration.
        let b = ino(&vfs, "sys/agents/b/audit");
        let text = String::from_utf8(read_all(&vfs, &op, b, 1000).unwrap()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("\"agent\":\"b\""));
        // A bound agent reads its own, not another's nor the whole record.
        assert!(read_all(&vfs, &bound("b"), b, 1000).is_ok());
        let a = ino(&vfs, "sys/agents/a/audit");
        assert!(matches!(
            read_all(&vfs, &bound("b"), a, 1000),
            Err(VfsError::AccessDenied(_))
        ));
        assert!(matches!(
            read_all(&vfs, &bound("b"), all, 1000),
            Err(VfsError::AccessDenied(_))
        ));
    }
}
