//! Headroom on the data dir's filesystem (SPEC §9, full disk).
//!
//! Calls that add data or names to the durable classes are refused with ENOSPC while the
//! filesystem holding the data dir has less than a reserve free, before anything is buffered.
//! The reserve is what deletes, renames, truncates and the store's own bookkeeping (journal
//! records, the SQLite WAL, the applier) need to keep working on a full disk — so an operator
//! can always `rm` and the daemon never fails halfway through a commit — like the blocks ext4
//! reserves for root. Working memory (RAM) is not affected.

use crate::error::{Result, VfsError};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Smallest and largest reserve; in between, 2% of the filesystem.
const MIN_RESERVE: u64 = 4 << 20;
const MAX_RESERVE: u64 = 256 << 20;

/// Bytes a new name costs the store, about (an inode row, a dirent row, a journal record).
pub(crate) const NAME_COST: u64 = 4096;

/// A measurement is reused for this long...
const FRESH: Duration = Duration::from_millis(100);
/// ...and only while more than this is left above the reserve: near full, every call measures.
const SLACK: u64 = 64 << 20;

pub(crate) struct Headroom {
    dir: CString,
    /// When `budget` was measured, in ns since `epoch`.
    measured_at: AtomicU64,
    /// Bytes above the reserve at the last measurement, minus what was granted since.
    budget: AtomicU64,
    epoch: Instant,
}

impl Headroom {
    pub(crate) fn new(data_dir: &Path) -> Headroom {
        Headroom {
            dir: CString::new(data_dir.as_os_str().as_bytes())
                .unwrap_or_else(|_| CString::from(c"/")),
            measured_at: AtomicU64::new(0),
            budget: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// `(free bytes for unprivileged use, reserve)`, or `None` when statvfs fails.
    fn measure(&self) -> Option<(u64, u64)> {
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: a valid C string and a zeroed out-parameter of the right type.
        if unsafe { libc::statvfs(self.dir.as_ptr(), &mut st) } != 0 {
            return None;
        }
        let unit = st.f_frsize.max(1) as u64;
        let total = st.f_blocks as u64 * unit;
        let free = st.f_bavail as u64 * unit;
        Some((free, (total / 50).clamp(MIN_RESERVE, MAX_RESERVE)))
    }

    /// Refuses with ENOSPC when adding `need` bytes would eat into the reserve. A statvfs
    /// costs about 5 µs here, a lot next to a small FUSE write, so a measurement is reused
    /// for [`FRESH`] with every grant subtracted from it, while far from full ([`SLACK`]);
    /// near full, every call measures.
    pub(crate) fn check(&self, need: u64) -> Result<()> {
        let now = self.epoch.elapsed().as_nanos() as u64;
        let at = self.measured_at.load(Ordering::Acquire);
        if at != 0 && now.saturating_sub(at) < FRESH.as_nanos() as u64 {
            let mut left = self.budget.load(Ordering::Acquire);
            while left >= need.saturating_add(SLACK) {
                match self.budget.compare_exchange_weak(
                    left,
                    left - need,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return Ok(()),
                    Err(actual) => left = actual,
                }
            }
        }
        // Cannot tell: let the store answer.
        let Some((free, reserve)) = self.measure() else {
            return Ok(());
        };
        let budget = free.saturating_sub(reserve);
        let granted = budget >= need;
        self.budget.store(
            if granted { budget - need } else { budget },
            Ordering::Release,
        );
        self.measured_at.store(now.max(1), Ordering::Release);
        if granted {
            Ok(())
        } else {
            Err(VfsError::NoSpace)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_within_the_free_space_and_refuses_beyond_it() {
        let dir = std::env::temp_dir();
        let h = Headroom::new(&dir);
        let (free, reserve) = h.measure().expect("statvfs of the temp dir");
        h.check(1).unwrap();
        // More than there is: refused, and refused again (not granted from a stale budget).
        let too_much = free.saturating_sub(reserve) + (1 << 30);
        assert!(matches!(h.check(too_much), Err(VfsError::NoSpace)));
        assert!(matches!(h.check(too_much), Err(VfsError::NoSpace)));
        h.check(4096).unwrap();
    }

    #[test]
    fn grants_are_subtracted_from_a_reused_measurement() {
        let h = Headroom::new(&std::env::temp_dir());
        let (free, reserve) = h.measure().unwrap();
        let budget = free.saturating_sub(reserve);
        if budget < 4 * SLACK {
            return; // too little free space here to tell reuse from a new measurement
        }
        // Take all but a little of the budget in pieces within FRESH: the next big ask must
        // measure (or be refused), never be granted twice from the same bytes.
        let piece = budget / 4;
        for _ in 0..3 {
            h.check(piece).unwrap();
        }
        let left = h.budget.load(Ordering::Acquire);
        // Other processes change the file system's free space meanwhile (CI failed on a
        // 110 KB difference), so allow drift well below a piece: bytes granted twice would
        // leave about a whole piece more.
        assert!(
            left <= budget - 3 * piece + piece / 2,
            "{left} of {budget} left after 3 x {piece}"
        );
    }
}
