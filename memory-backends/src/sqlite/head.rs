//! The chain head file `DIR/audit.head`: the seq and hash of the last audit entry known to be
//! durable, kept outside the database so that cutting rows off the end of the `audit` table
//! (or rewriting the whole chain) is detected.
//!
//! Format (ASCII, three lines):
//!
//! ```text
//! agentfs-audit-head v1
//! seq 1234
//! hash 0123…(64 hex digits)
//! ```
//!
//! Written to `audit.head.tmp` and renamed over `audit.head`, so a reader sees the old or the
//! new head, never a mix.

use super::errors;
use crate::audit::{hex, parse_hash, ChainHead};
use crate::StoreError;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// Name of the head file inside the data dir.
pub const HEAD_FILE: &str = "audit.head";
const TMP_FILE: &str = "audit.head.tmp";
const MAGIC: &str = "agentfs-audit-head v1";

/// Writes `head` atomically. With `durable`, the file and the dir are fsynced as well.
pub(super) fn write(dir: &Path, head: ChainHead, durable: bool) -> Result<(), StoreError> {
    let tmp = dir.join(TMP_FILE);
    let text = format!("{MAGIC}\nseq {}\nhash {}\n", head.seq, hex(&head.hash));
    let mut f = File::create(&tmp).map_err(|e| errors::io(e, &tmp))?;
    f.write_all(text.as_bytes())
        .map_err(|e| errors::io(e, &tmp))?;
    if durable {
        f.sync_data().map_err(|e| errors::io(e, &tmp))?;
    }
    drop(f);
    let path = dir.join(HEAD_FILE);
    fs::rename(&tmp, &path).map_err(|e| errors::io(e, &path))?;
    if durable {
        super::packs::sync_dir(dir)?;
    }
    Ok(())
}

/// Reads the head file of `dir`; `None` when there is none.
pub fn read(dir: &Path) -> Result<Option<ChainHead>, StoreError> {
    let path = dir.join(HEAD_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(errors::io(e, &path)),
    };
    let bad = || {
        StoreError::Corrupt(format!(
            "{}: not an audit chain head (expected \"{MAGIC}\", \"seq N\", \"hash HEX\")",
            path.display()
        ))
    };
    let mut lines = text.lines();
    if lines.next() != Some(MAGIC) {
        return Err(bad());
    }
    let seq = lines
        .next()
        .and_then(|l| l.strip_prefix("seq "))
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(bad)?;
    let hash = lines
        .next()
        .and_then(|l| l.strip_prefix("hash "))
        .and_then(parse_hash)
        .ok_or_else(bad)?;
    Ok(Some(ChainHead { seq, hash }))
}

/// Writes the head file, only ever forwards: concurrent `sync`s and the applier may each learn
/// of a newer durable head in any order.
pub(super) struct HeadPin {
    dir: std::path::PathBuf,
    /// Seq of the head last written.
    written: parking_lot::Mutex<u64>,
}

impl HeadPin {
    pub(super) fn new(dir: &Path, written: u64) -> HeadPin {
        HeadPin {
            dir: dir.to_path_buf(),
            written: parking_lot::Mutex::new(written),
        }
    }

    /// Pins `head` if it is newer than the pinned one (or, with `durable`, at least as new:
    /// a durable write also makes an earlier, non-durable one stick).
    pub(super) fn advance(&self, head: ChainHead, durable: bool) -> Result<(), StoreError> {
        let mut written = self.written.lock();
        if head.seq < *written || (head.seq == *written && !durable) {
            return Ok(());
        }
        write(&self.dir, head, durable)?;
        *written = head.seq;
        Ok(())
    }
}
