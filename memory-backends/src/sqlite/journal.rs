//! The write-ahead journal in front of SQLite (`journal/journal-000001.log`, ...).
//!
//! Every commit is encoded as one *record* and appended to the current segment with a single
//! `pwritev`; the background applier (`applier.rs`) copies records into SQLite later. A record is
//! acknowledged once its `pwrite` returned (it is then in the kernel's page cache, which outlives
//! a `kill -9`), and made durable by `fdatasync` of the segment (`Disk` commits and `sync`).
//!
//! # Format
//!
//! A segment starts with a 32-byte header: the magic `"agentfs-jrnl-v2\n"` and a random 16-byte
//! salt. Records follow back to back, each framed as
//!
//! ```text
//! len: u32 LE | seq: u64 LE | sum: 8 bytes | payload: len bytes
//! ```
//!
//! `sum` is the first 8 bytes of BLAKE3 keyed with `BLAKE3(salt)` over `len`, `seq` and the
//! payload. The payload is the postcard encoding of the [`Batch`] followed by the postcard
//! encoding of the blob rows (`ChunkId` -> pack location) of the chunks first committed by this
//! record. Sequence numbers increase by one from record to record, across segments.
//!
//! The key makes a record impossible to forge from inside a payload: an agent controls the bytes
//! of xattr values and file names, and a crash can leave part of a record behind (see
//! `append`), but without the salt (which never leaves the data dir) no bytes it chooses can
//! pass for a record.
//!
//! # Recovery
//!
//! `Journal::open` reads every segment in order and hands each valid record whose `seq` is above
//! the one SQLite has applied (`store.applied_seq`) to the caller. It stops reading a segment at
//! the first record that is cut short or fails its checksum: such a record was never
//! acknowledged (a crash mid-`write`), or was written without fsync before a power loss, in
//! which case everything after it was unacknowledged-durable too. Sequence numbers must then
//! continue without a gap; a gap (records lost from the middle, which only media damage can
//! cause, since a segment is fsynced before the next one is started) is refused as `Corrupt`.
//! Once the records are in SQLite and SQLite is synced, the old segments are deleted and a new
//! segment is started, so a torn tail is dropped with its file.

use super::errors;
use super::packs::{sync_dir, Loc};
use crate::audit::ChainHead;
use crate::encoding as encode;
use crate::{Batch, ChunkId, StoreError};
use parking_lot::{Mutex, MutexGuard};
use std::borrow::Cow;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// A segment is closed and a new one started once it holds this many bytes. Bounds how much
/// journal a reopen reads and how much disk already-applied records keep until their segment
/// is deleted. A rotation costs two fsyncs (the old segment, the directory) under the journal
/// lock plus a `synchronous=FULL` SQLite commit in the applier: at 100,000 commits/s
/// (~15 MB/s of records) about one rotation a second.
pub(super) const SEGMENT_LIMIT: u64 = 16 << 20;

/// Largest payload a record may have; a larger batch is refused at commit. Well below SQLite's
/// 1 GB limit on one value, so nothing a record holds can fail to apply for being too big, and a
/// corrupt length field cannot make recovery allocate gigabytes.
pub(super) const MAX_RECORD: usize = 256 << 20;

/// First bytes of every segment.
const MAGIC: &[u8; 16] = b"agentfs-jrnl-v2\n";
/// Magic plus salt.
const SEGMENT_HEADER: u64 = 32;
/// `len`, `seq` and `sum` in front of each payload.
pub(super) const FRAME_HEADER: usize = 20;
/// Records replayed per SQLite transaction at open.
const REPLAY_GROUP: usize = 8192;

/// The place of one audit entry in the hash chain (see `crate::audit`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Link {
    pub seq: u64,
    pub prev: [u8; 32],
    pub hash: [u8; 32],
}

/// One committed batch, as queued for the applier and as read back at recovery.
pub(super) struct Record {
    pub seq: u64,
    pub batch: Batch,
    /// One per `Change::Audit` of the batch, in order: assigned under the journal lock at
    /// append. Empty for records read back at recovery (the replay recomputes them, in the same
    /// order from the same chain state, so they come out identical).
    pub links: Vec<Link>,
    /// Blob rows of the chunks this record is the first to commit.
    pub blobs: Vec<(ChunkId, Loc)>,
    /// Size of the record in the journal, for the applier's backlog accounting.
    pub bytes: usize,
}

/// The segment being appended to. Held locked for the whole of a commit's append, so records
/// are written (and queued for the applier) in sequence order.
pub(super) struct Active {
    no: u32,
    file: Arc<File>,
    key: [u8; 32],
    /// Where the next record goes.
    end: u64,
    /// Sequence number of the segment's first record (equal to `next_seq` while it has none).
    first_seq: u64,
    /// Sequence number the next record gets.
    next_seq: u64,
    /// The audit chain as of the last record appended: seq and hash of its last entry.
    /// Advanced under this lock only, so entries are numbered and chained in journal order.
    pub(super) chain: ChainHead,
}

impl Active {
    /// Sequence number of the last record appended (0 before the first one ever).
    pub(super) fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }
}

/// A segment no longer appended to, deleted once SQLite holds all of it durably.
struct Closed {
    no: u32,
    last_seq: u64,
}

/// How far background writeback of the current segment has been started.
#[derive(Default)]
struct Kicked {
    no: u32,
    offset: u64,
}

/// The journal of one store.
pub(super) struct Journal {
    dir: PathBuf,
    limit: u64,
    active: Mutex<Active>,
    closed: Mutex<Vec<Closed>>,
    /// Every record up to this one is on the disk.
    durable_seq: AtomicU64,
    /// Serialises `sync` so that one that finds nothing to do really has nothing to do.
    sync_lock: Mutex<()>,
    kicked: Mutex<Kicked>,
    /// An `fdatasync` of a segment failed. The kernel may have dropped the dirty pages it could
    /// not write (and marked them clean), so a later successful sync would prove nothing:
    /// durability is refused from then on until the store is reopened (the reopen replays what
    /// the disk really holds).
    sync_failed: AtomicBool,
}

/// What `Journal::open` found.
pub(super) struct Recovery {
    pub journal: Journal,
    /// Records replayed into SQLite.
    pub replayed: u64,
    /// Segments read (and deleted) at open.
    pub segments: usize,
}

/// Name of segment `n`.
fn segment_name(n: u32) -> String {
    format!("journal-{n:06}.log")
}

/// Segment number from a file name, if it is one.
fn parse_segment_name(name: &str) -> Option<u32> {
    name.strip_prefix("journal-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

/// A record being put together: the frame header and the encoded batch, in parts that are
/// written with one `pwritev` (the batch's encoded runs are borrowed, not copied). The first
/// part starts with the header.
pub(super) struct NewRecord<'a> {
    parts: Vec<Cow<'a, [u8]>>,
}

impl NewRecord<'_> {
    fn len(&self) -> usize {
        self.parts.iter().map(|p| p.len()).sum()
    }

    /// The whole record as one buffer.
    #[cfg(test)]
    pub(super) fn concat(&self) -> Vec<u8> {
        self.parts.concat()
    }
}

/// Starts a record: room for the frame header, then the encoded batch. Done before the journal
/// lock is taken; [`Journal::append`] adds the blob rows under it.
pub(super) fn start_record(batch: &Batch) -> Result<NewRecord<'_>, StoreError> {
    let mut buf = Vec::with_capacity(FRAME_HEADER + encode::size_hint(batch));
    buf.resize(FRAME_HEADER, 0);
    let parts = encode::batch_parts(batch, buf).map_err(encode_error)?;
    Ok(NewRecord { parts })
}

/// Writes all of `parts` at `offset`, with `pwritev` (again after a short write).
fn write_all_parts_at(file: &File, parts: &[Cow<'_, [u8]>], mut offset: u64) -> io::Result<()> {
    let mut slices: Vec<io::IoSlice<'_>> = parts
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| io::IoSlice::new(p))
        .collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let count = rest.len().min(1024) as libc::c_int;
        // SAFETY: `IoSlice` is ABI-compatible with `iovec` on Unix, and `rest` holds `count`
        // or more of them, each pointing into a live buffer of `parts`.
        let n = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                rest.as_ptr().cast::<libc::iovec>(),
                count,
                offset as libc::off_t,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        offset += n as u64;
        io::IoSlice::advance_slices(&mut rest, n as usize);
    }
    Ok(())
}

fn encode_error(e: postcard::Error) -> StoreError {
    StoreError::Io(io::Error::other(format!(
        "could not encode a journal record: {e}"
    )))
}

/// The checksum of a frame: keyed BLAKE3 of `len`, `seq` and the payload, truncated.
/// The payload may come in parts (a record being written, [`NewRecord`]).
fn checksum<'a>(
    key: &[u8; 32],
    len_seq: &[u8],
    payload: impl IntoIterator<Item = &'a [u8]>,
) -> [u8; 8] {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(len_seq);
    for part in payload {
        h.update(part);
    }
    let mut out = [0u8; 8];
    out.copy_from_slice(&h.finalize().as_bytes()[..8]);
    out
}

fn key_of(salt: &[u8]) -> [u8; 32] {
    *blake3::hash(salt).as_bytes()
}

/// 16 unpredictable bytes (`getrandom`), or a hash of the time and pid should that fail.
fn new_salt(n: u32) -> [u8; 16] {
    let mut salt = [0u8; 16];
    // SAFETY: the pointer and length describe `salt`, which outlives the call.
    let got = unsafe { libc::getrandom(salt.as_mut_ptr().cast(), salt.len(), 0) };
    if got != salt.len() as isize {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let mut h = blake3::Hasher::new();
        h.update(&now.to_le_bytes());
        h.update(&std::process::id().to_le_bytes());
        h.update(&n.to_le_bytes());
        salt.copy_from_slice(&h.finalize().as_bytes()[..16]);
    }
    salt
}

/// Creates segment `n` with its header and makes its directory entry durable.
fn create_segment(dir: &Path, n: u32) -> Result<(Arc<File>, [u8; 32]), StoreError> {
    let path = dir.join(segment_name(n));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| errors::io(e, &path))?;
    let salt = new_salt(n);
    let mut header = [0u8; SEGMENT_HEADER as usize];
    header[..16].copy_from_slice(MAGIC);
    header[16..].copy_from_slice(&salt);
    if let Err(e) = file.write_all_at(&header, 0) {
        let _ = fs::remove_file(&path);
        return Err(errors::io(e, &path));
    }
    sync_dir(dir)?;
    Ok((Arc::new(file), key_of(&salt)))
}

impl Journal {
    /// Opens the journal in `dir` (creating the directory if needed), replays it and starts a
    /// fresh segment.
    ///
    /// `applied_seq` is the last record SQLite holds. Every valid record after it is passed, in
    /// order and in groups, to `apply`; then, if any segment was found, `make_durable` must make
    /// SQLite's state durable, after which the old segments are deleted.
    pub(super) fn open(
        dir: PathBuf,
        limit: u64,
        applied_seq: u64,
        apply: &mut dyn FnMut(&[Record]) -> Result<(), StoreError>,
        make_durable: &mut dyn FnMut() -> Result<(), StoreError>,
    ) -> Result<Recovery, StoreError> {
        if !dir.is_dir() {
            fs::create_dir_all(&dir).map_err(|e| errors::io(e, &dir))?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        let mut found = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| errors::io(e, &dir))? {
            let entry = entry.map_err(|e| errors::io(e, &dir))?;
            if let Some(n) = entry.file_name().to_str().and_then(parse_segment_name) {
                found.push(n);
            }
        }
        found.sort_unstable();

        let mut replay = Replay {
            expected: applied_seq + 1,
            group: Vec::new(),
            replayed: 0,
            apply,
        };
        for (i, &n) in found.iter().enumerate() {
            let path = dir.join(segment_name(n));
            replay.segment(&path, i + 1 == found.len())?;
        }
        replay.flush()?;
        let next_seq = replay.expected;
        let replayed = replay.replayed;

        // Everything the segments hold is now in SQLite; once that is on the disk the segments
        // (torn tails included) can go. Without segments there is nothing to make durable: a
        // clean close made SQLite durable before deleting them, and a new store has no data.
        if !found.is_empty() {
            make_durable()?;
            for &n in &found {
                let path = dir.join(segment_name(n));
                fs::remove_file(&path).map_err(|e| errors::io(e, &path))?;
            }
        }
        let no = found.last().map_or(1, |n| n.saturating_add(1));
        let (file, key) = create_segment(&dir, no)?;
        Ok(Recovery {
            journal: Journal {
                dir,
                limit,
                active: Mutex::new(Active {
                    no,
                    file,
                    key,
                    end: SEGMENT_HEADER,
                    first_seq: next_seq,
                    next_seq,
                    chain: ChainHead::default(),
                }),
                closed: Mutex::new(Vec::new()),
                durable_seq: AtomicU64::new(next_seq - 1),
                sync_lock: Mutex::new(()),
                kicked: Mutex::new(Kicked::default()),
                sync_failed: AtomicBool::new(false),
            },
            replayed,
            segments: found.len(),
        })
    }

    fn path(&self, n: u32) -> PathBuf {
        self.dir.join(segment_name(n))
    }

    /// Reads, without changing anything, the valid records after `applied_seq` that a
    /// reopen would replay (what an unclean shutdown left unapplied), in order, in groups.
    /// For readers of a data dir that do not own it (`audit verify`).
    pub(super) fn scan(
        dir: &Path,
        applied_seq: u64,
        apply: &mut dyn FnMut(&[Record]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(errors::io(e, dir)),
        };
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| errors::io(e, dir))?;
            if let Some(n) = entry.file_name().to_str().and_then(parse_segment_name) {
                found.push(n);
            }
        }
        found.sort_unstable();
        let mut replay = Replay {
            expected: applied_seq + 1,
            group: Vec::new(),
            replayed: 0,
            apply,
        };
        for (i, &n) in found.iter().enumerate() {
            replay.segment(&dir.join(segment_name(n)), i + 1 == found.len())?;
        }
        replay.flush()
    }

    /// Locks the journal for one append. Hold it while taking the pending blob rows and
    /// queueing the record, so that records reach the applier in sequence order and no record
    /// can name a chunk whose blob row is in a later record.
    pub(super) fn lock(&self) -> MutexGuard<'_, Active> {
        self.active.lock()
    }

    /// Completes the record in `frame` (from [`start_record`]) with `blobs`, and appends it with
    /// one `pwritev`. Returns its sequence number. On failure nothing is left behind: the file is
    /// cut back to where the record started (and should that fail too, the partial record is
    /// overwritten by the next one and fails its checksum at recovery).
    pub(super) fn append(
        &self,
        active: &mut Active,
        mut frame: NewRecord<'_>,
        blobs: &[(ChunkId, Loc)],
    ) -> Result<(u64, usize), StoreError> {
        if let Some(Cow::Owned(last)) = frame.parts.last_mut() {
            *last = postcard::to_extend(blobs, std::mem::take(last)).map_err(encode_error)?;
        }
        let frame_len = frame.len();
        let payload_len = frame_len - FRAME_HEADER;
        if payload_len > MAX_RECORD {
            return Err(StoreError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a batch of {payload_len} encoded bytes is larger than the journal's \
                     record limit ({MAX_RECORD})"
                ),
            )));
        }
        if active.end >= self.limit && active.next_seq > active.first_seq {
            self.rotate(active)?;
        }
        let seq = active.next_seq;
        let mut len_seq = [0u8; 12];
        len_seq[..4].copy_from_slice(&(payload_len as u32).to_le_bytes());
        len_seq[4..].copy_from_slice(&seq.to_le_bytes());
        let payload = frame.parts.iter().enumerate().map(|(i, part)| {
            let part: &[u8] = part;
            if i == 0 {
                &part[FRAME_HEADER..]
            } else {
                part
            }
        });
        let sum = checksum(&active.key, &len_seq, payload);
        let Some(Cow::Owned(head)) = frame.parts.first_mut() else {
            unreachable!("a frame starts with its owned header");
        };
        head[..12].copy_from_slice(&len_seq);
        head[12..20].copy_from_slice(&sum);
        if let Err(e) = write_all_parts_at(&active.file, &frame.parts, active.end) {
            let path = self.path(active.no);
            if let Err(t) = active.file.set_len(active.end) {
                tracing::warn!(
                    path = %path.display(),
                    error = %t,
                    "could not cut a failed journal append back; the next record overwrites it"
                );
            }
            return Err(errors::io(e, &path));
        }
        active.end += frame_len as u64;
        active.next_seq += 1;
        Ok((seq, frame_len))
    }

    /// Closes the current segment and starts the next. The old one is fsynced first, so no
    /// record of the new segment can reach the disk while one of the old is missing: a gap in
    /// the sequence at recovery therefore means damage, never a crash.
    fn rotate(&self, active: &mut Active) -> Result<(), StoreError> {
        let old = active.no;
        let no = old.checked_add(1).ok_or_else(|| {
            StoreError::NoSpace(format!(
                "{}: journal segment numbers exhausted",
                self.dir.display()
            ))
        })?;
        self.fdatasync(&active.file, old)?;
        let (file, key) = create_segment(&self.dir, no)?;
        let last = active.last_seq();
        self.durable_seq.fetch_max(last, Ordering::AcqRel);
        self.closed.lock().push(Closed {
            no: old,
            last_seq: last,
        });
        *active = Active {
            no,
            file,
            key,
            end: SEGMENT_HEADER,
            first_seq: active.next_seq,
            next_seq: active.next_seq,
            chain: active.chain,
        };
        Ok(())
    }

    fn fdatasync(&self, file: &File, no: u32) -> Result<(), StoreError> {
        if self.sync_failed.load(Ordering::Acquire) {
            return Err(self.sync_failed_error());
        }
        file.sync_data().map_err(|e| {
            self.sync_failed.store(true, Ordering::Release);
            tracing::error!(
                path = %self.path(no).display(),
                error = %e,
                "fdatasync of the journal failed; durable commits are refused until reopen"
            );
            errors::io(e, &self.path(no))
        })
    }

    fn sync_failed_error(&self) -> StoreError {
        StoreError::Io(io::Error::other(format!(
            "{}: an earlier fdatasync of the journal failed, so what is on the disk is \
             unknown; reopen the store",
            self.dir.display()
        )))
    }

    /// Makes every record appended so far durable: one `fdatasync` of the current segment
    /// (closed segments were synced when they were closed). Free when nothing new was appended.
    /// Returns the audit chain head as of the last record now durable.
    pub(super) fn sync(&self) -> Result<ChainHead, StoreError> {
        let _serial = self.sync_lock.lock();
        let (target, file, no, chain) = {
            let a = self.active.lock();
            (a.last_seq(), Arc::clone(&a.file), a.no, a.chain)
        };
        if self.durable_seq.load(Ordering::Acquire) >= target {
            return Ok(chain);
        }
        self.fdatasync(&file, no)?;
        self.durable_seq.fetch_max(target, Ordering::AcqRel);
        Ok(chain)
    }

    /// True when a closed segment would be entirely applied once records up to `seq` are.
    pub(super) fn closes_segment(&self, seq: u64) -> bool {
        self.closed
            .lock()
            .first()
            .is_some_and(|c| c.last_seq <= seq)
    }

    /// Deletes the closed segments whose records are all applied (up to `applied_seq`) in an
    /// SQLite state already on the disk.
    pub(super) fn delete_applied(&self, applied_seq: u64) {
        let done: Vec<u32> = {
            let mut closed = self.closed.lock();
            let n = closed
                .iter()
                .take_while(|c| c.last_seq <= applied_seq)
                .count();
            closed.drain(..n).map(|c| c.no).collect()
        };
        if done.is_empty() {
            return;
        }
        for n in done {
            let path = self.path(n);
            if let Err(e) = fs::remove_file(&path) {
                // Harmless: recovery skips records SQLite already has.
                tracing::warn!(path = %path.display(), error = %e, "could not delete an applied journal segment");
            }
        }
        if let Err(e) = sync_dir(&self.dir) {
            tracing::warn!(error = %e, "could not sync the journal dir after deleting segments");
        }
    }

    /// Starts writeback of what was appended to the current segment since the last call
    /// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, which does not wait for it). Called by the
    /// applier after each transaction, off the commit path, so that little is dirty when a
    /// rotation, a `Disk` commit or `sync` has to `fdatasync` the segment under load: their
    /// wait stays short instead of growing with the segment.
    pub(super) fn kick_writeback(&self) {
        let (file, no, end) = {
            let a = self.active.lock();
            (Arc::clone(&a.file), a.no, a.end)
        };
        let mut kicked = self.kicked.lock();
        if kicked.no != no {
            *kicked = Kicked {
                no,
                offset: SEGMENT_HEADER,
            };
        }
        if end <= kicked.offset {
            return;
        }
        // SAFETY: `file` is an open descriptor for the duration of the call; the range is
        // plain integers.
        let rc = unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                kicked.offset as libc::off64_t,
                (end - kicked.offset) as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        if rc == 0 {
            kicked.offset = end;
        }
    }

    /// At a clean close, with every record applied and SQLite durable: deletes every segment,
    /// the current one included, so the next open has nothing to read.
    pub(super) fn delete_all(&self) {
        let active = self.active.lock();
        let mut closed = self.closed.lock();
        for n in closed.drain(..).map(|c| c.no).chain([active.no]) {
            let path = self.path(n);
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "could not delete a journal segment");
            }
        }
        if let Err(e) = sync_dir(&self.dir) {
            tracing::warn!(error = %e, "could not sync the journal dir after deleting segments");
        }
    }

    /// Number of segment files (closed ones plus the current one).
    #[cfg(test)]
    pub(super) fn segment_count(&self) -> usize {
        self.closed.lock().len() + 1
    }
}

/// State of a replay at open.
struct Replay<'a> {
    /// Sequence number the next record to apply must have.
    expected: u64,
    group: Vec<Record>,
    replayed: u64,
    apply: &'a mut dyn FnMut(&[Record]) -> Result<(), StoreError>,
}

/// How reading one frame ended.
enum Frame {
    Record {
        seq: u64,
        payload: Vec<u8>,
        len: usize,
    },
    /// Clean end of the segment.
    End,
    /// Cut short or bad checksum: stop reading this segment here.
    Torn(&'static str),
}

impl Replay<'_> {
    fn segment(&mut self, path: &Path, last: bool) -> Result<(), StoreError> {
        let file = File::open(path).map_err(|e| errors::io(e, path))?;
        let size = file.metadata().map_err(|e| errors::io(e, path))?.len();
        let mut r = BufReader::with_capacity(1 << 20, file);
        let mut header = [0u8; SEGMENT_HEADER as usize];
        match read_full(&mut r, &mut header).map_err(|e| errors::io(e, path))? {
            n if n < header.len() => {
                // Created, but the header never made it: a crash during rotation or open.
                tracing::info!(path = %path.display(), "journal segment without a header: ignored");
                return Ok(());
            }
            _ => {}
        }
        if &header[..16] != MAGIC {
            return Err(StoreError::Corrupt(format!(
                "{}: not an agentfs journal segment (bad header)",
                path.display()
            )));
        }
        let key = key_of(&header[16..]);
        let mut offset = SEGMENT_HEADER;
        loop {
            let frame = read_frame(&mut r, &key).map_err(|e| errors::io(e, path))?;
            match frame {
                Frame::End => return Ok(()),
                Frame::Torn(why) => {
                    let lost = size - offset;
                    if last {
                        tracing::warn!(
                            path = %path.display(),
                            offset,
                            bytes = lost,
                            why,
                            "journal ends with a torn record (a crash mid-write, or unsynced \
                             data lost with the power): dropping it and what follows"
                        );
                    } else {
                        tracing::warn!(
                            path = %path.display(),
                            offset,
                            bytes = lost,
                            why,
                            "journal segment is damaged; the next segment must continue the \
                             sequence"
                        );
                    }
                    return Ok(());
                }
                Frame::Record { seq, payload, len } => {
                    offset += len as u64;
                    if seq < self.expected {
                        continue; // already in SQLite
                    }
                    if seq > self.expected {
                        return Err(StoreError::Corrupt(format!(
                            "{}: journal record {seq} follows record {}: records {} to {} are \
                             missing (an earlier segment is damaged or was deleted)",
                            path.display(),
                            self.expected - 1,
                            self.expected,
                            seq - 1
                        )));
                    }
                    let (batch, blobs) = decode(&payload).map_err(|e| {
                        StoreError::Corrupt(format!(
                            "{}: journal record {seq} at offset {} has a valid checksum but \
                             does not decode ({e}); was it written by another agentfs version?",
                            path.display(),
                            offset - len as u64
                        ))
                    })?;
                    self.group.push(Record {
                        seq,
                        batch,
                        links: Vec::new(),
                        blobs,
                        bytes: len,
                    });
                    self.expected += 1;
                    if self.group.len() >= REPLAY_GROUP {
                        self.flush()?;
                    }
                }
            }
        }
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        if !self.group.is_empty() {
            (self.apply)(&self.group)?;
            self.replayed += self.group.len() as u64;
            self.group.clear();
        }
        Ok(())
    }
}

/// Decodes a record's payload.
fn decode(payload: &[u8]) -> Result<(Batch, Vec<(ChunkId, Loc)>), postcard::Error> {
    let (batch, rest) = postcard::take_from_bytes::<Batch>(payload)?;
    let (blobs, rest) = postcard::take_from_bytes::<Vec<(ChunkId, Loc)>>(rest)?;
    if !rest.is_empty() {
        return Err(postcard::Error::DeserializeBadEncoding);
    }
    Ok((batch, blobs))
}

fn read_frame(r: &mut impl Read, key: &[u8; 32]) -> io::Result<Frame> {
    let mut head = [0u8; FRAME_HEADER];
    let n = read_full(r, &mut head)?;
    if n == 0 {
        return Ok(Frame::End);
    }
    if n < FRAME_HEADER {
        return Ok(Frame::Torn("frame header cut short"));
    }
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if len > MAX_RECORD {
        return Ok(Frame::Torn("length out of range"));
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&head[4..12]);
    let seq = u64::from_le_bytes(seq);
    let mut payload = vec![0u8; len];
    if read_full(r, &mut payload)? < len {
        return Ok(Frame::Torn("payload cut short"));
    }
    if checksum(key, &head[..12], [&payload[..]]) != head[12..20] {
        return Ok(Frame::Torn("checksum mismatch"));
    }
    Ok(Frame::Record {
        seq,
        payload,
        len: FRAME_HEADER + len,
    })
}

/// Reads until `buf` is full or the end of the file; returns how many bytes were read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AuditEntry, Change, FileKind, InodeRecord, Piece};

    fn sample() -> Batch {
        Batch {
            changes: vec![
                Change::PutInode(InodeRecord {
                    ino: 5,
                    kind: FileKind::Symlink,
                    perm: 0o755,
                    uid: 1000,
                    gid: 100,
                    nlink: 1,
                    size: 300,
                    atime: -1,
                    mtime: 2,
                    ctime: 3,
                    crtime: 4,
                    rdev: 0,
                    symlink_target: b"t".to_vec(),
                }),
                Change::DeleteInode(6),
                Change::PutDirent {
                    parent: 1,
                    name: b"n".to_vec(),
                    ino: 5,
                },
                Change::DeleteDirent {
                    parent: 1,
                    name: b"o".to_vec(),
                },
                Change::SetChunks {
                    ino: 5,
                    chunks: vec![(0, Some(ChunkId([7; 32]))), (1, None)],
                },
                Change::TruncateChunks {
                    ino: 5,
                    from_index: 2,
                },
                Change::SetXattr {
                    ino: 5,
                    name: b"x".to_vec(),
                    value: b"v".to_vec(),
                },
                Change::RemoveXattr {
                    ino: 5,
                    name: b"y".to_vec(),
                },
                Change::SetMeta {
                    key: "k".into(),
                    value: "v".into(),
                },
                Change::Audit(Box::new(AuditEntry {
                    time: 9,
                    agent: "a".into(),
                    pid: 1,
                    uid: 2,
                    op: "o".into(),
                    path: "/p".into(),
                    result: -2,
                    size: 3,
                    ..Default::default()
                })),
            ],
        }
    }

    /// The hand-written encoder of the hot changes (`encoding.rs`) writes exactly what postcard
    /// writes, for edge values of every field (multi-byte varints, negative times, long names,
    /// holes, pieces) and every kind.
    #[test]
    fn hand_encoding_is_postcard() {
        let kinds = [
            FileKind::File,
            FileKind::Dir,
            FileKind::Symlink,
            FileKind::Fifo,
            FileKind::Socket,
            FileKind::CharDevice,
            FileKind::BlockDevice,
        ];
        let ints = [
            0u64,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u32::MAX as u64,
            u64::MAX,
        ];
        let times = [0i64, -1, 1, 63, -64, 64, i64::MIN, i64::MAX];
        let mut changes = Vec::new();
        for (i, &n) in ints.iter().enumerate() {
            let t = times[i % times.len()];
            let name = vec![b'a' + (i as u8); (n % 300) as usize];
            changes.push(Change::PutInode(InodeRecord {
                ino: n,
                kind: kinds[i % kinds.len()],
                perm: n as u16,
                uid: n as u32,
                gid: (n >> 3) as u32,
                nlink: (n >> 7) as u32,
                size: n.rotate_left(13),
                atime: t,
                mtime: t.wrapping_neg(),
                ctime: t / 3,
                crtime: i as i64,
                rdev: n as u32,
                symlink_target: name.clone(),
            }));
            changes.push(Change::PutDirent {
                parent: n,
                name: name.clone(),
                ino: n ^ 5,
            });
            changes.push(Change::SetChunks {
                ino: n,
                chunks: (0..i as u64)
                    .map(|k| {
                        (
                            k.wrapping_mul(n),
                            (k % 3 != 1).then_some(ChunkId([k as u8; 32])),
                        )
                    })
                    .collect(),
            });
            changes.push(Change::SetXattr {
                ino: n,
                name: name.clone(),
                value: vec![7; i * 40],
            });
            changes.push(Change::SetPieces {
                ino: n,
                idx: n / 2,
                pieces: (0..i)
                    .map(|k| Piece {
                        id: ChunkId([k as u8 ^ 0x5a; 32]),
                        len: (n as u32).wrapping_add(k as u32),
                    })
                    .collect(),
            });
        }
        changes.push(Change::CopyNodes(
            ints.iter().map(|&n| (n, n.wrapping_mul(3))).collect(),
        ));
        changes.push(Change::CopyNodes(Vec::new()));
        changes.extend(sample().changes);
        for batch in [
            Batch::default(),
            sample(),
            Batch {
                changes: changes.clone(),
            },
        ] {
            let mut expected = vec![0u8; FRAME_HEADER];
            expected = postcard::to_extend(&batch, expected).unwrap();
            assert_eq!(start_record(&batch).unwrap().concat(), expected);
            // The same changes with the hot ones written into encoded runs: the same record.
            let runs = in_encoded_runs(&batch);
            assert_eq!(start_record(&runs).unwrap().concat(), expected);
        }
    }

    /// `batch` with its `PutInode`, `PutDirent`, `SetChunks` and `SetXattr` changes written
    /// into encoded runs (`Batch::encoded`), the others left as they are, in the same order.
    /// Each run reads back as the changes written into it.
    fn in_encoded_runs(batch: &Batch) -> Batch {
        let mut out = Batch::new();
        let mut hot = Vec::new();
        for change in &batch.changes {
            match change {
                Change::PutInode(r) => out.encoded().put_inode(r),
                Change::PutDirent { parent, name, ino } => {
                    out.encoded().put_dirent(*parent, name, *ino)
                }
                Change::SetChunks { ino, chunks } => {
                    out.encoded().set_chunks(*ino, chunks.iter().copied())
                }
                Change::SetXattr { ino, name, value } => out.encoded().set_xattr(*ino, name, value),
                other => {
                    out.push(other.clone());
                    continue;
                }
            }
            hot.push(change.clone());
        }
        let decoded: Vec<Change> = out
            .changes
            .iter()
            .filter_map(|c| match c {
                Change::Encoded(run) => Some(run.decode().unwrap()),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(decoded, hot);
        out
    }

    /// The journal format is postcard of the types in `types.rs`, which follows their field and
    /// variant order. These bytes are what this version writes; a journal left by it after a
    /// crash must still replay after an upgrade. If this test fails, a type changed in a way
    /// that breaks old journals: add variants and fields only at the end.
    #[test]
    fn batch_encoding_is_stable() {
        let buf = start_record(&sample()).unwrap().concat();
        let hex: String = buf[FRAME_HEADER..]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let expected = concat!(
            "0a", // 10 changes
            // PutInode (variant 0): ino, kind (Symlink = 2), perm, uid, gid, nlink, size as
            // varints; times zigzag (-1 -> 01, 2 -> 04, ...); rdev; target (length, bytes).
            "00",
            "05",
            "02",
            "ed03",
            "e807",
            "64",
            "01",
            "ac02",
            "01",
            "04",
            "06",
            "08",
            "00",
            "0174",
            "0106",       // DeleteInode(6)
            "0201016e05", // PutDirent { parent: 1, name: "n", ino: 5 }
            "0301016f",   // DeleteDirent { parent: 1, name: "o" }
            // SetChunks { ino: 5, chunks: [(0, Some([7; 32])), (1, None)] }
            "04050200",
            "01",
            "0707070707070707070707070707070707070707070707070707070707070707",
            "0100",
            "050502",       // TruncateChunks { ino: 5, from_index: 2 }
            "060501780176", // SetXattr { ino: 5, name: "x", value: "v" }
            "07050179",     // RemoveXattr { ino: 5, name: "y" }
            "08016b0176",   // SetMeta { key: "k", value: "v" }
            // Audit: time 9 (zigzag 12), agent "a", pid 1, uid 2, op "o", path "/p",
            // result -2 (zigzag 03), size 3; then (format v2) target "", offset 0,
            // data_hash None, decision "", rule "", policy [0; 32], detail "".
            "09",
            "12",
            "0161",
            "01",
            "02",
            "016f",
            "022f70",
            "03",
            "03",
            "00",
            "00",
            "00",
            "00",
            "00",
            "0000000000000000000000000000000000000000000000000000000000000000",
            "00",
        );
        assert_eq!(hex, expected);
        // Variants added later keep their place at the end: DropChunks is variant 12.
        let drop = start_record(&Batch {
            changes: vec![Change::DropChunks(vec![ChunkId([7; 32])])],
        })
        .unwrap()
        .concat();
        assert_eq!(drop[FRAME_HEADER..FRAME_HEADER + 3], [1, 12, 1]);
        // SetPieces is variant 14: ino, idx, then each piece's id and length (varint).
        let pieces = start_record(&Batch {
            changes: vec![Change::SetPieces {
                ino: 5,
                idx: 2,
                pieces: vec![Piece {
                    id: ChunkId([7; 32]),
                    len: 300,
                }],
            }],
        })
        .unwrap()
        .concat();
        let mut expected = vec![1, 14, 5, 2, 1];
        expected.extend([7; 32]);
        expected.extend([0xac, 0x02]);
        assert_eq!(pieces[FRAME_HEADER..], expected[..]);
        let blob = (
            ChunkId([9; 32]),
            Loc {
                pack: 1,
                offset: 16,
                len: 5,
            },
        );
        let mut buf = postcard::to_extend(&[blob][..], buf).unwrap();
        let payload = buf.split_off(FRAME_HEADER);
        assert_eq!(decode(&payload).unwrap(), (sample(), vec![blob]));
        assert!(decode(&payload[..payload.len() - 1]).is_err());
    }

    fn open(dir: &Path, limit: u64, applied: u64, out: &mut Vec<Record>) -> Recovery {
        Journal::open(
            dir.to_path_buf(),
            limit,
            applied,
            &mut |g: &[Record]| {
                out.extend(g.iter().map(|r| Record {
                    seq: r.seq,
                    batch: r.batch.clone(),
                    links: r.links.clone(),
                    blobs: r.blobs.clone(),
                    bytes: r.bytes,
                }));
                Ok(())
            },
            &mut || Ok(()),
        )
        .unwrap()
    }

    fn append(j: &Journal, batch: &Batch, blobs: &[(ChunkId, Loc)]) -> u64 {
        let mut a = j.lock();
        j.append(&mut a, start_record(batch).unwrap(), blobs)
            .unwrap()
            .0
    }

    fn meta(i: u64) -> Batch {
        Batch {
            changes: vec![Change::SetMeta {
                key: format!("k{i}"),
                value: "x".repeat(i as usize % 50),
            }],
        }
    }

    #[test]
    fn records_round_trip_across_rotation_and_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("journal");
        let blob = (
            ChunkId([1; 32]),
            Loc {
                pack: 3,
                offset: 1 << 40,
                len: 131072,
            },
        );
        let rec = open(&dir, 1024, 0, &mut Vec::new());
        for i in 1..=100 {
            let blobs = if i % 10 == 0 { vec![blob] } else { vec![] };
            assert_eq!(append(&rec.journal, &meta(i), &blobs), i);
        }
        assert!(
            rec.journal.segment_count() > 3,
            "small segments rolled over"
        );
        drop(rec);
        // SQLite has the first 40.
        let mut out = Vec::new();
        let rec = open(&dir, 1024, 40, &mut out);
        assert_eq!(rec.replayed, 60);
        let seqs: Vec<u64> = out.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (41..=100).collect::<Vec<_>>());
        for r in &out {
            assert_eq!(r.batch, meta(r.seq));
            assert_eq!(r.blobs.len(), usize::from(r.seq % 10 == 0));
        }
        assert_eq!(out[9].blobs, vec![blob]);
        // Old segments are gone and numbering goes on.
        assert_eq!(append(&rec.journal, &meta(101), &[]), 101);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
    }

    #[test]
    fn a_torn_tail_drops_exactly_the_torn_record() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("journal");
        let rec = open(&dir, SEGMENT_LIMIT, 0, &mut Vec::new());
        for i in 1..=5 {
            append(&rec.journal, &meta(i), &[]);
        }
        let path = rec.journal.path(rec.journal.lock().no);
        drop(rec);
        let len = fs::metadata(&path).unwrap().len();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 3).unwrap();
        let mut out = Vec::new();
        let rec = open(&dir, SEGMENT_LIMIT, 0, &mut out);
        assert_eq!(out.len(), 4);
        // The next record reuses the torn one's number: it was never acknowledged.
        assert_eq!(append(&rec.journal, &meta(9), &[]), 5);
    }

    #[test]
    fn a_gap_in_the_sequence_is_corrupt() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("journal");
        let rec = open(&dir, 200, 0, &mut Vec::new());
        for i in 1..=20 {
            append(&rec.journal, &meta(i), &[]);
        }
        drop(rec);
        let mut names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        assert!(names.len() >= 3);
        // Damage a middle segment: flip a byte in its first record.
        let victim = &names[1];
        let mut bytes = fs::read(victim).unwrap();
        bytes[SEGMENT_HEADER as usize + FRAME_HEADER] ^= 1;
        fs::write(victim, bytes).unwrap();
        let err = Journal::open(dir, 200, 0, &mut |_| Ok(()), &mut || Ok(()))
            .err()
            .unwrap();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn a_forged_record_inside_a_payload_is_not_a_record() {
        // A partial record left behind by a failed append, whose payload (agent-controlled
        // bytes) contains something shaped like a frame, must not replay.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("journal");
        let rec = open(&dir, SEGMENT_LIMIT, 0, &mut Vec::new());
        append(&rec.journal, &meta(1), &[]);
        let path = rec.journal.path(rec.journal.lock().no);
        let end = rec.journal.lock().end;
        drop(rec);
        // A forger without the salt: an unkeyed checksum.
        let payload = start_record(&meta(2)).unwrap().concat()[FRAME_HEADER..].to_vec();
        let mut frame = Vec::new();
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&2u64.to_le_bytes());
        let sum = checksum(&[0; 32], &frame[..12], [&payload[..]]);
        frame.extend_from_slice(&sum);
        frame.extend_from_slice(&payload);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&frame, end).unwrap();
        let mut out = Vec::new();
        open(&dir, SEGMENT_LIMIT, 0, &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(segment_name(7), "journal-000007.log");
        assert_eq!(parse_segment_name("journal-000007.log"), Some(7));
        assert_eq!(parse_segment_name("journal-x.log"), None);
    }
}
