//! How the daemon sets up glibc's malloc, so that its resident memory stays flat under load
//! (issue 8's soak; the figures are in docs/reliability.md, "Soak").
//!
//! glibc serves an allocation of at least `M_MMAP_THRESHOLD` (128 KiB by default) with a
//! mapping of its own, unmapped when it is freed. But the threshold is dynamic: each time
//! such a mapping is freed, glibc raises the threshold to its size (up to 32 MiB), and the
//! heap trim threshold to twice that. The daemon frees large buffers early (the store and
//! the search index open; Tantivy's indexing pages and merges; 128 KiB chunk buffers; hash
//! tables that grow), so the threshold was past 16 MiB before the FUSE threads even started
//! (their 16 MiB request buffers sat in malloc's heaps, not in mappings of their own). From
//! then on every large short-lived buffer was carved out of malloc's per-thread heaps, between
//! small long-lived objects, and a heap gives memory back only from its top and only past the
//! (raised) trim threshold: the free space stayed resident. A soak showed it: anonymous RSS
//! grew 2–6 MiB a minute while the live heap (heaptrack) stayed near 80 MiB, and at minute 11
//! `malloc_stats()` counted 82 MiB free inside the heaps against 98 MiB in use.
//!
//! Setting the threshold explicitly turns the adjustment off (glibc's documented behaviour
//! for `mallopt(M_MMAP_THRESHOLD)`), so large buffers keep going to their own mappings and
//! go back to the system when freed, and the trim threshold stays at its 128 KiB default.
//! That halved the RSS and took the free space in the heaps from 82 to ~10 MiB, but the FUSE
//! threads' heaps still gathered free memory between live small objects (~0.5 MiB a minute
//! each), which a heap cannot give back from its top. `malloc_trim(0)` gives back every free
//! page of every heap (glibc ≥ 2.8), so [`start_trimmer`] calls it every [`TRIM_INTERVAL`].

use std::time::Duration;

use agentfs_vfs::Periodic;

/// How often the daemon gives malloc's free pages back to the system.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(10);

/// Allocations this large or larger get their own mapping: glibc's default value, fixed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 128 * 1024;

/// Fixes malloc's mmap threshold (see the module's doc). Call it first thing in the daemon.
/// Returns whether it did: not when the user set the threshold in the environment
/// (`MALLOC_MMAP_THRESHOLD_`, or `glibc.malloc.mmap_threshold` in `GLIBC_TUNABLES`), nor on
/// another C library.
pub fn tune() -> bool {
    let by_user = std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some()
        || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc.mmap_threshold"));
    !by_user && fix_mmap_threshold()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn fix_mmap_threshold() -> bool {
    // SAFETY: mallopt only changes malloc's parameters, under malloc's own lock; any thread
    // may call it at any time.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn fix_mmap_threshold() -> bool {
    false
}

/// Starts the thread that gives free memory back every [`TRIM_INTERVAL`] (none on a C library
/// other than glibc).
pub fn start_trimmer() -> std::io::Result<Option<Periodic>> {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return Ok(None);
    }
    Periodic::start("agentfs-trim", TRIM_INTERVAL, trim).map(Some)
}

/// Gives every whole free page of malloc's heaps back to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim takes each arena's lock in turn; any thread may call it.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_takes_the_threshold() {
        assert!(fix_mmap_threshold());
    }

    #[test]
    fn trimmer_starts_and_stops() {
        let t = start_trimmer().unwrap();
        assert_eq!(
            t.is_some(),
            cfg!(all(target_os = "linux", target_env = "gnu"))
        );
        trim();
        if let Some(t) = t {
            t.stop();
        }
    }
}
