//! Append-only pack files holding chunk bytes (`packs/pack-000001.dat`, ...).
//!
//! Writers reserve a byte range in the current pack under a short mutex and then `pwrite`
//! outside it, so many FUSE threads write chunks at once and the mutex only guards an integer.
//! Readers `pread` from a cached descriptor per pack, which is safe from any number of threads.
//!
//! A pack starts with a 16-byte magic header; chunks follow back to back with no framing: the
//! `blobs` table in SQLite is the only index. Bytes that no committed `blobs` row points at
//! (a crash between the write and the commit, or a write whose commit failed) are dead space;
//! they are harmless and a later GC can reclaim them by rewriting packs.

use super::errors;
use crate::StoreError;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Packs roll over once they reach this size, keeping files a manageable size for copying and
/// for a future compaction that rewrites one pack at a time.
pub(super) const PACK_LIMIT: u64 = 1 << 30;

/// First bytes of every pack file.
const MAGIC: &[u8; 16] = b"agentfs-pack-v1\n";

/// Where a chunk's bytes are. Serialized into journal records (field order is part of the
/// journal format: append only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Loc {
    pub pack: u32,
    pub offset: u64,
    pub len: u32,
}

/// The pack being appended to.
struct Current {
    pack: u32,
    file: Arc<File>,
    /// Next free offset; every byte before it is reserved by some writer.
    end: u64,
}

/// The pack files of one store.
pub(super) struct Packs {
    dir: PathBuf,
    limit: u64,
    current: Mutex<Current>,
    /// Open descriptors by pack number, for reads (and the current pack's writes).
    files: RwLock<HashMap<u32, Arc<File>>>,
    /// Packs written since their last `fdatasync`. A pack is added only after its write has
    /// completed, so a sync that takes the set always covers every finished write in it.
    dirty: Mutex<BTreeSet<u32>>,
    /// Serialises `sync`: without it, a sync that finds `dirty` empty because another sync took
    /// the set could return before that other sync's `fdatasync` has finished.
    sync_lock: Mutex<()>,
    /// A pack file was created since the directory was last synced.
    dir_dirty: AtomicBool,
    /// Writes reserved in each pack whose chunk is not in the store's index yet (see
    /// [`Written`]): a pack is deleted only when it has none.
    inflight: Mutex<HashMap<u32, usize>>,
    /// The filesystem refused to punch a hole once (`EOPNOTSUPP`): dead chunks then stay on
    /// the disk until their whole pack is dead and deleted.
    no_punch: AtomicBool,
}

/// A chunk just written to a pack, counted as in flight until dropped.
pub(super) struct Written<'a> {
    packs: &'a Packs,
    pub loc: Loc,
}

impl Drop for Written<'_> {
    fn drop(&mut self) {
        let mut inflight = self.packs.inflight.lock();
        if let Some(c) = inflight.get_mut(&self.loc.pack) {
            *c -= 1;
            if *c == 0 {
                inflight.remove(&self.loc.pack);
            }
        }
    }
}

/// Name of pack `n`.
fn pack_name(n: u32) -> String {
    format!("pack-{n:06}.dat")
}

/// Pack number from a file name, if it is one.
fn parse_pack_name(name: &str) -> Option<u32> {
    name.strip_prefix("pack-")?
        .strip_suffix(".dat")?
        .parse()
        .ok()
}

impl Packs {
    /// Opens the packs in `dir` (creating it if needed) for appending.
    ///
    /// `referenced_end` gives, per pack, the end of the last byte a committed `blobs` row uses.
    /// Appending resumes after both that and the file's length: after a power loss a pack can
    /// be shorter than the rows that point into it, and new chunks must never be written where
    /// an old row points, or that row would silently read someone else's bytes.
    pub(super) fn open(
        dir: PathBuf,
        limit: u64,
        referenced_end: &HashMap<u32, u64>,
    ) -> Result<Packs, StoreError> {
        fs::create_dir_all(&dir).map_err(|e| errors::io(e, &dir))?;
        let mut on_disk = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| errors::io(e, &dir))? {
            let entry = entry.map_err(|e| errors::io(e, &dir))?;
            if let Some(n) = entry.file_name().to_str().and_then(parse_pack_name) {
                on_disk.push(n);
            }
        }
        let last_on_disk = on_disk.iter().copied().max();
        let last_referenced = referenced_end.keys().copied().max();

        let mut files = HashMap::new();
        let mut dir_dirty = false;
        // Resume the newest pack if it exists and has room; else start the next number (never
        // reuse the number of a pack that rows point into but whose file is gone).
        let resumable = match last_on_disk {
            Some(n) if last_referenced.is_none_or(|r| r <= n) => {
                let path = dir.join(pack_name(n));
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(|e| errors::io(e, &path))?;
                let len = file.metadata().map_err(|e| errors::io(e, &path))?.len();
                if len < MAGIC.len() as u64 {
                    // Created but the header never made it (crash during creation).
                    file.write_all_at(MAGIC, 0)
                        .map_err(|e| errors::io(e, &path))?;
                } else {
                    check_magic(&file, &path)?;
                }
                let end = len
                    .max(MAGIC.len() as u64)
                    .max(referenced_end.get(&n).copied().unwrap_or(0));
                Some((n, Arc::new(file), end))
            }
            _ => None,
        };
        let current = match resumable {
            Some((n, file, end)) if end < limit => {
                files.insert(n, Arc::clone(&file));
                Current { pack: n, file, end }
            }
            _ => {
                let n = last_on_disk
                    .max(last_referenced)
                    .map_or(1, |n| n.saturating_add(1));
                let file = create_pack(&dir, n)?;
                dir_dirty = true;
                files.insert(n, Arc::clone(&file));
                Current {
                    pack: n,
                    file,
                    end: MAGIC.len() as u64,
                }
            }
        };
        Ok(Packs {
            dir,
            limit,
            current: Mutex::new(current),
            files: RwLock::new(files),
            dirty: Mutex::new(BTreeSet::new()),
            sync_lock: Mutex::new(()),
            dir_dirty: AtomicBool::new(dir_dirty),
            no_punch: AtomicBool::new(false),
            inflight: Mutex::new(HashMap::new()),
        })
    }

    /// Path of pack `n`.
    pub(super) fn path(&self, n: u32) -> PathBuf {
        self.dir.join(pack_name(n))
    }

    /// Appends `data` to the current pack and returns where it went. The pack counts the
    /// write as in flight until the returned [`Written`] is dropped: drop it only once the
    /// chunk is in the index, so that the garbage collector never deletes a pack a chunk is
    /// about to be indexed in.
    pub(super) fn write(&self, data: &[u8]) -> Result<Written<'_>, StoreError> {
        let len = data.len() as u64;
        let (pack, file, offset) = {
            let mut cur = self.current.lock();
            if cur.end + len > self.limit && cur.end > MAGIC.len() as u64 {
                self.roll(&mut cur)?;
            }
            let offset = cur.end;
            cur.end += len;
            *self.inflight.lock().entry(cur.pack).or_insert(0) += 1;
            (cur.pack, Arc::clone(&cur.file), offset)
        };
        let len = u32::try_from(data.len())
            .map_err(|_| StoreError::Corrupt(format!("chunk of {} bytes", data.len())))?;
        let written = Written {
            packs: self,
            loc: Loc { pack, offset, len },
        };
        // The range is ours alone: write it without holding the mutex.
        file.write_all_at(data, offset)
            .map_err(|e| errors::io(e, &self.path(pack)))?;
        self.dirty.lock().insert(pack);
        Ok(written)
    }

    /// Whether a chunk written to pack `n` may still be on its way into the index. Call it
    /// under the index's lock, after reading which packs the index uses.
    pub(super) fn has_inflight(&self, n: u32) -> bool {
        self.inflight.lock().get(&n).is_some_and(|c| *c > 0)
    }

    /// Starts the next pack. Writers still holding the old pack's `Arc<File>` finish normally.
    fn roll(&self, cur: &mut Current) -> Result<(), StoreError> {
        let n = cur.pack.checked_add(1).ok_or_else(|| {
            StoreError::NoSpace(format!("{}: pack numbers exhausted", self.dir.display()))
        })?;
        let file = create_pack(&self.dir, n)?;
        self.dir_dirty.store(true, Ordering::Release);
        self.files.write().insert(n, Arc::clone(&file));
        *cur = Current {
            pack: n,
            file,
            end: MAGIC.len() as u64,
        };
        Ok(())
    }

    /// Copies `buf.len()` bytes starting `skip` bytes into the chunk at `loc`.
    /// The caller has clamped the range to the chunk.
    pub(super) fn read(&self, loc: Loc, skip: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        let file = self.reader(loc.pack)?;
        file.read_exact_at(buf, loc.offset + skip).map_err(|e| {
            let path = self.path(loc.pack);
            if e.kind() == io::ErrorKind::UnexpectedEof {
                StoreError::Corrupt(format!(
                    "{}: chunk at offset {} ({} bytes) is cut short; the pack lost its tail",
                    path.display(),
                    loc.offset,
                    loc.len
                ))
            } else {
                errors::io(e, &path)
            }
        })
    }

    /// The cached descriptor of pack `n`, opening it read-only on first use.
    fn reader(&self, n: u32) -> Result<Arc<File>, StoreError> {
        if let Some(f) = self.files.read().get(&n) {
            return Ok(Arc::clone(f));
        }
        let path = self.path(n);
        let file = match File::open(&path) {
            Ok(f) => Arc::new(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::Corrupt(format!(
                    "{}: pack file is missing but chunks point into it",
                    path.display()
                )))
            }
            Err(e) => return Err(errors::io(e, &path)),
        };
        Ok(Arc::clone(self.files.write().entry(n).or_insert(file)))
    }

    /// `fdatasync`s every pack written since the last sync, and the directory if a pack was
    /// created, so that every chunk whose `write` returned before this call is on the disk.
    pub(super) fn sync(&self) -> Result<(), StoreError> {
        let _serial = self.sync_lock.lock();
        let dirty = std::mem::take(&mut *self.dirty.lock());
        for (i, &n) in dirty.iter().enumerate() {
            let synced = self
                .reader(n)
                .and_then(|f| f.sync_data().map_err(|e| errors::io(e, &self.path(n))));
            if let Err(e) = synced {
                // Whatever was not synced stays dirty for the next attempt.
                self.dirty.lock().extend(dirty.iter().skip(i).copied());
                return Err(e);
            }
        }
        if self.dir_dirty.swap(false, Ordering::AcqRel) {
            if let Err(e) = sync_dir(&self.dir) {
                self.dir_dirty.store(true, Ordering::Release);
                return Err(e);
            }
        }
        Ok(())
    }

    /// The size at which packs roll over.
    pub(super) fn limit(&self) -> u64 {
        self.limit
    }

    /// The pack being appended to.
    pub(super) fn current(&self) -> u32 {
        self.current.lock().pack
    }

    /// Pack numbers present in the pack directory.
    pub(super) fn on_disk(&self) -> Result<Vec<u32>, StoreError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(|e| errors::io(e, &self.dir))? {
            let entry = entry.map_err(|e| errors::io(e, &self.dir))?;
            if let Some(n) = entry.file_name().to_str().and_then(parse_pack_name) {
                out.push(n);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Gives the bytes of a dead chunk back to the filesystem (`fallocate` punching a hole; the
    /// file keeps its length and every other byte). Only for a chunk whose `blobs` row is gone
    /// for good: reading it afterwards gives zeros. Returns the bytes punched (0 when the
    /// filesystem cannot punch holes).
    pub(super) fn punch(&self, loc: Loc) -> Result<u64, StoreError> {
        if self.no_punch.load(Ordering::Relaxed) || loc.len == 0 {
            return Ok(0);
        }
        let file = match self.reader(loc.pack) {
            Ok(f) => f,
            // The pack is gone already (deleted whole): nothing to give back.
            Err(StoreError::Corrupt(_)) => return Ok(0),
            Err(e) => return Err(e),
        };
        let Ok(offset) = libc::off_t::try_from(loc.offset) else {
            return Ok(0);
        };
        let len = libc::off_t::from(loc.len);
        // SAFETY: plain syscall on a descriptor we own; no memory is passed.
        let rc = unsafe {
            libc::fallocate(
                std::os::fd::AsRawFd::as_raw_fd(&*file),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            )
        };
        if rc == 0 {
            return Ok(u64::from(loc.len));
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EOPNOTSUPP) {
            self.no_punch.store(true, Ordering::Relaxed);
            tracing::info!(
                dir = %self.dir.display(),
                "this filesystem cannot punch holes: dead chunks are reclaimed only when a \
                 whole pack is dead"
            );
            return Ok(0);
        }
        Err(errors::io(err, &self.path(loc.pack)))
    }

    /// Deletes pack `n`, which no chunk in the index points into any more, unless it is the
    /// pack being appended to. Returns the bytes it held on the disk.
    pub(super) fn delete(&self, n: u32) -> Result<u64, StoreError> {
        if self.current() == n {
            return Ok(0);
        }
        let path = self.path(n);
        let held = fs::metadata(&path).map_or(0, |m| {
            std::os::unix::fs::MetadataExt::blocks(&m).saturating_mul(512)
        });
        self.files.write().remove(&n);
        self.dirty.lock().remove(&n);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(errors::io(e, &path)),
        }
        sync_dir(&self.dir)?;
        Ok(held)
    }

    /// Whether pack `n` holds at least `end` bytes (used at open to warn about lost tails).
    pub(super) fn covers(&self, n: u32, end: u64) -> bool {
        self.reader(n)
            .ok()
            .and_then(|f| f.metadata().ok())
            .is_some_and(|m| m.len() >= end)
    }
}

/// Creates pack `n` with its header.
fn create_pack(dir: &Path, n: u32) -> Result<Arc<File>, StoreError> {
    let path = dir.join(pack_name(n));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| errors::io(e, &path))?;
    file.write_all_at(MAGIC, 0)
        .map_err(|e| errors::io(e, &path))?;
    Ok(Arc::new(file))
}

/// Refuses a file that is not a pack.
fn check_magic(file: &File, path: &Path) -> Result<(), StoreError> {
    let mut head = [0u8; 16];
    file.read_exact_at(&mut head, 0)
        .map_err(|e| errors::io(e, path))?;
    if &head != MAGIC {
        return Err(StoreError::Corrupt(format!(
            "{}: not an agentfs pack file (bad header)",
            path.display()
        )));
    }
    Ok(())
}

/// `fsync`s a directory so that files created in it survive a power loss.
pub(super) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| errors::io(e, dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(pack_name(7), "pack-000007.dat");
        assert_eq!(parse_pack_name("pack-000007.dat"), Some(7));
        assert_eq!(parse_pack_name("pack-x.dat"), None);
        assert_eq!(parse_pack_name("other"), None);
    }

    #[test]
    fn rolls_at_the_limit_and_reads_back() {
        let tmp = tempfile::tempdir().unwrap();
        let packs = Packs::open(tmp.path().join("packs"), 64, &HashMap::new()).unwrap();
        let a = packs.write(&[1u8; 40]).unwrap().loc;
        let b = packs.write(&[2u8; 40]).unwrap().loc;
        assert_eq!(a.pack, 1);
        assert_eq!(b.pack, 2, "the second chunk does not fit in 64 bytes");
        let mut buf = [0u8; 40];
        packs.read(b, 0, &mut buf).unwrap();
        assert_eq!(buf, [2u8; 40]);
        packs.sync().unwrap();
    }

    #[test]
    fn resumes_after_rows_that_point_past_the_end() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("packs");
        let packs = Packs::open(dir.clone(), PACK_LIMIT, &HashMap::new()).unwrap();
        packs.write(&[1u8; 10]).unwrap();
        drop(packs);
        // A row claims bytes up to 1000 that the file lost.
        let packs = Packs::open(dir, PACK_LIMIT, &HashMap::from([(1, 1000)])).unwrap();
        let loc = packs.write(&[3u8; 10]).unwrap().loc;
        assert_eq!((loc.pack, loc.offset), (1, 1000));
        assert!(!packs.covers(1, 2000));
    }

    #[test]
    fn refuses_a_foreign_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("packs");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(pack_name(1)), b"this is not a pack file at all").unwrap();
        let err = Packs::open(dir, PACK_LIMIT, &HashMap::new()).err().unwrap();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    }
}
