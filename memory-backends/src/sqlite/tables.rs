//! Row-level reads and writes: one function per [`Change`] kind on the way in, one query per
//! table on the way out. All statements are cached (`prepare_cached`), so a commit parses no SQL.

use super::errors;
use super::journal::Link;
use super::packs::Loc;
use super::schema::{APPLIED_SEQ_KEY, SYNC_SEQ_KEY};
use crate::audit::ChainHead;
use crate::checks::{check_meta_key, is_reserved_meta, missing_chunk};
use crate::{
    AppendRecord, AuditEntry, Change, ChunkId, FileKind, Ino, InodeRecord, LoadedState, Piece,
    StoreError,
};
use rusqlite::{params, CachedStatement, Connection, OptionalExtension};
use std::collections::HashSet;
use std::path::Path;

/// Records where a chunk's bytes are.
pub(super) fn insert_blob(conn: &Connection, id: &ChunkId, loc: Loc) -> rusqlite::Result<()> {
    conn.prepare_cached(
        r#"INSERT OR IGNORE INTO blobs(hash, pack, "offset", len) VALUES (?1, ?2, ?3, ?4)"#,
    )?
    .execute(params![&id.0[..], loc.pack, loc.offset as i64, loc.len])?;
    Ok(())
}

/// Applies one change inside the caller's transaction. `holds` says whether the store has the
/// bytes of a chunk; naming one it does not is refused, so no committed chunk map can point at
/// nothing.
pub(super) fn apply(
    conn: &Connection,
    change: &Change,
    holds: &dyn Fn(&ChunkId) -> bool,
    db: &Path,
) -> Result<(), StoreError> {
    let sql = |e| errors::sql(e, db);
    match change {
        Change::PutInode(r) => {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO inodes(ino, kind, perm, uid, gid, nlink, size, atime, \
                 mtime, ctime, crtime, rdev, symlink_target) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    r.ino as i64,
                    r.kind.code(),
                    r.perm,
                    r.uid,
                    r.gid,
                    r.nlink,
                    r.size as i64,
                    r.atime,
                    r.mtime,
                    r.ctime,
                    r.crtime,
                    r.rdev,
                    &r.symlink_target,
                ])
            })
            .map_err(sql)?;
        }
        Change::DeleteInode(ino) => {
            for stmt in [
                "DELETE FROM inodes WHERE ino = ?1",
                "DELETE FROM chunks WHERE ino = ?1",
                "DELETE FROM xattrs WHERE ino = ?1",
                "DELETE FROM appends WHERE ino = ?1",
            ] {
                conn.prepare_cached(stmt)
                    .and_then(|mut s| s.execute([*ino as i64]))
                    .map_err(sql)?;
            }
        }
        Change::PutDirent { parent, name, ino } => {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO dirents(parent, name, ino) VALUES (?1, ?2, ?3)",
            )
            .and_then(|mut s| s.execute(params![*parent as i64, name, *ino as i64]))
            .map_err(sql)?;
        }
        Change::DeleteDirent { parent, name } => {
            conn.prepare_cached("DELETE FROM dirents WHERE parent = ?1 AND name = ?2")
                .and_then(|mut s| s.execute(params![*parent as i64, name]))
                .map_err(sql)?;
        }
        Change::SetChunks { ino, chunks } => {
            for (idx, slot) in chunks {
                match slot {
                    Some(id) => {
                        if !holds(id) {
                            return Err(missing_chunk(id));
                        }
                        conn.prepare_cached(
                            "INSERT OR REPLACE INTO chunks(ino, idx, hash) VALUES (?1, ?2, ?3)",
                        )
                        .and_then(|mut s| s.execute(params![*ino as i64, *idx as i64, &id.0[..]]))
                        .map_err(sql)?;
                    }
                    None => {
                        conn.prepare_cached("DELETE FROM chunks WHERE ino = ?1 AND idx = ?2")
                            .and_then(|mut s| s.execute(params![*ino as i64, *idx as i64]))
                            .map_err(sql)?;
                    }
                }
            }
        }
        Change::SetPieces { ino, idx, pieces } => {
            if let Some(p) = pieces.iter().find(|p| !holds(&p.id)) {
                return Err(missing_chunk(&p.id));
            }
            conn.prepare_cached(
                "INSERT OR REPLACE INTO chunks(ino, idx, hash) VALUES (?1, ?2, ?3)",
            )
            .and_then(|mut s| {
                s.execute(params![*ino as i64, *idx as i64, Piece::encode_all(pieces)])
            })
            .map_err(sql)?;
        }
        Change::TruncateChunks { ino, from_index } => {
            // `idx >= from` on the stored i64 is right for every index below 2^63.
            conn.prepare_cached("DELETE FROM chunks WHERE ino = ?1 AND idx >= ?2")
                .and_then(|mut s| s.execute(params![*ino as i64, *from_index as i64]))
                .map_err(sql)?;
        }
        Change::SetXattr { ino, name, value } => {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO xattrs(ino, name, value) VALUES (?1, ?2, ?3)",
            )
            .and_then(|mut s| s.execute(params![*ino as i64, name, value]))
            .map_err(sql)?;
        }
        Change::RemoveXattr { ino, name } => {
            conn.prepare_cached("DELETE FROM xattrs WHERE ino = ?1 AND name = ?2")
                .and_then(|mut s| s.execute(params![*ino as i64, name]))
                .map_err(sql)?;
        }
        Change::SetMeta { key, value } => {
            check_meta_key(key)?;
            conn.prepare_cached("INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)")
                .and_then(|mut s| s.execute(params![key, value]))
                .map_err(sql)?;
        }
        Change::Append(a) => {
            conn.prepare_cached(
                r#"INSERT OR REPLACE INTO appends(ino, "offset", len, time) VALUES (?1, ?2, ?3, ?4)"#,
            )
            .and_then(|mut s| {
                s.execute(params![
                    a.ino as i64,
                    a.offset as i64,
                    a.len as i64,
                    a.time
                ])
            })
            .map_err(sql)?;
        }
        Change::DeleteMetaIf { key, value } => {
            check_meta_key(key)?;
            conn.prepare_cached("DELETE FROM meta WHERE key = ?1 AND value = ?2")
                .and_then(|mut s| s.execute(params![key, value]))
                .map_err(sql)?;
        }
        Change::CopyNodes(pairs) => copy_nodes(conn, pairs).map_err(sql)?,
        Change::Encoded(e) => {
            for change in e.decode()? {
                apply(conn, &change, holds, db)?;
            }
        }
        Change::DropChunks(ids) => {
            for id in ids {
                conn.prepare_cached("DELETE FROM blobs WHERE hash = ?1")
                    .and_then(|mut s| s.execute([&id.0[..]]))
                    .map_err(sql)?;
            }
        }
        Change::MoveChunks(moves) => {
            for m in moves {
                conn.prepare_cached(
                    r#"INSERT OR REPLACE INTO blobs(hash, pack, "offset", len) VALUES (?1, ?2, ?3, ?4)"#,
                )
                .and_then(|mut s| {
                    s.execute(params![&m.id.0[..], m.pack, m.offset as i64, m.len])
                })
                .map_err(sql)?;
            }
        }
        Change::Audit(_) => {
            // Audit rows need their place in the chain: `insert_audit`, called by the applier.
            return Err(StoreError::Io(std::io::Error::other(
                "an audit entry reached the row code without its chain link",
            )));
        }
    }
    Ok(())
}

/// [`Change::CopyNodes`]: the pairs go into a temporary table, then one `INSERT … SELECT`
/// per table copies the rows of every source at once (a snapshot of 10,000 files is four
/// statements, not 30,000).
fn copy_nodes(conn: &Connection, pairs: &[(Ino, Ino)]) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS copy_map(src INTEGER PRIMARY KEY, dst INTEGER NOT NULL);
         DELETE FROM temp.copy_map;",
    )?;
    {
        let mut insert =
            conn.prepare_cached("INSERT INTO temp.copy_map(src, dst) VALUES (?1, ?2)")?;
        for (src, dst) in pairs {
            insert.execute(params![*src as i64, *dst as i64])?;
        }
    }
    for stmt in [
        "INSERT OR REPLACE INTO inodes(ino, kind, perm, uid, gid, nlink, size, atime, mtime, \
         ctime, crtime, rdev, symlink_target) \
         SELECT m.dst, i.kind, i.perm, i.uid, i.gid, i.nlink, i.size, i.atime, i.mtime, \
         i.ctime, i.crtime, i.rdev, i.symlink_target \
         FROM temp.copy_map m JOIN inodes i ON i.ino = m.src",
        "INSERT OR REPLACE INTO chunks(ino, idx, hash) \
         SELECT m.dst, c.idx, c.hash FROM temp.copy_map m JOIN chunks c ON c.ino = m.src",
        "INSERT OR REPLACE INTO xattrs(ino, name, value) \
         SELECT m.dst, x.name, x.value FROM temp.copy_map m JOIN xattrs x ON x.ino = m.src",
        "INSERT OR REPLACE INTO dirents(parent, name, ino) \
         SELECT p.dst, d.name, c.dst FROM temp.copy_map p \
         JOIN dirents d ON d.parent = p.src JOIN temp.copy_map c ON c.src = d.ino",
        "DELETE FROM temp.copy_map",
    ] {
        conn.prepare_cached(stmt)?.execute([])?;
    }
    Ok(())
}

/// The statement [`insert_audit`] runs; prepared once per applier transaction.
pub(super) fn audit_insert_stmt(conn: &Connection) -> rusqlite::Result<CachedStatement<'_>> {
    conn.prepare_cached(
        "INSERT INTO audit(seq, time, agent, pid, uid, op, path, result, size, target, \
         \"offset\", data_hash, decision, rule, policy, detail, prev_hash, hash) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
    )
}

/// Appends audit row `link.seq` with its chain hashes, with a statement from
/// [`audit_insert_stmt`].
pub(super) fn insert_audit(
    stmt: &mut CachedStatement<'_>,
    link: &Link,
    a: &AuditEntry,
) -> rusqlite::Result<()> {
    stmt.execute(params![
        link.seq as i64,
        a.time,
        a.agent,
        a.pid,
        a.uid,
        a.op,
        a.path,
        a.result,
        a.size as i64,
        a.target,
        a.offset as i64,
        a.data_hash.as_ref().map(|h| &h[..]),
        a.decision,
        a.rule,
        (a.policy != [0; 32]).then_some(&a.policy[..]),
        a.detail,
        &link.prev[..],
        &link.hash[..],
    ])?;
    Ok(())
}

/// The last audit row's seq and hash (the empty chain's head when there is none). A row
/// without a hash (a database migrated from before the chain, mid-migration) is `Corrupt`.
pub(super) fn audit_last(conn: &Connection, db: &Path) -> Result<ChainHead, StoreError> {
    let row: Option<(i64, Option<Vec<u8>>)> = conn
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(|e| errors::sql(e, db))?;
    match row {
        None => Ok(ChainHead::default()),
        Some((seq, Some(hash))) if hash.len() == 32 => {
            let mut h = [0u8; 32];
            h.copy_from_slice(&hash);
            Ok(ChainHead {
                seq: seq as u64,
                hash: h,
            })
        }
        Some((seq, _)) => Err(StoreError::Corrupt(format!(
            "{}: audit row {seq} has no valid chain hash",
            db.display()
        ))),
    }
}

/// The stored hash of audit row `seq`, if there is such a row.
pub(super) fn audit_hash_at(
    conn: &Connection,
    seq: u64,
    db: &Path,
) -> Result<Option<Vec<u8>>, StoreError> {
    conn.query_row("SELECT hash FROM audit WHERE seq = ?1", [seq as i64], |r| {
        r.get::<_, Option<Vec<u8>>>(0)
    })
    .optional()
    .map(Option::flatten)
    .map_err(|e| errors::sql(e, db))
}

/// Changes a row so that the transaction is never empty: SQLite skips the commit (and so the
/// WAL fsync) of a transaction that dirtied no page, and even rewrites a row with identical
/// content without dirtying it. A durable commit needs that fsync to cover earlier commits.
pub(super) fn bump_sync_seq(conn: &Connection) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO meta(key, value) VALUES (?1, '1') \
         ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1",
    )?
    .execute([SYNC_SEQ_KEY])?;
    Ok(())
}

/// Records that the journal is applied up to record `seq`.
pub(super) fn set_applied_seq(conn: &Connection, seq: u64) -> rusqlite::Result<()> {
    conn.prepare_cached("INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)")?
        .execute(params![APPLIED_SEQ_KEY, seq.to_string()])?;
    Ok(())
}

/// The last journal record applied (0 for a database no record was applied to yet).
pub(super) fn applied_seq(conn: &Connection, db: &Path) -> Result<u64, StoreError> {
    let value: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = ?1",
            [APPLIED_SEQ_KEY],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| errors::sql(e, db))?;
    match value {
        None => Ok(0),
        Some(v) => v.parse().map_err(|_| {
            StoreError::Corrupt(format!(
                "{}: {APPLIED_SEQ_KEY} is {v:?}, not a number",
                db.display()
            ))
        }),
    }
}

/// Number of rows in `audit`.
pub(super) fn audit_count(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row("SELECT count(*) FROM audit", [], |r| r.get::<_, i64>(0))
        .map(|n| n as u64)
}

/// Every chunk some committed chunk map names (live files and checkpoints alike): what the
/// garbage collector must never free, whatever its caller says.
pub(super) fn chunk_refs(conn: &Connection, db: &Path) -> Result<HashSet<ChunkId>, StoreError> {
    let sql = |e| errors::sql(e, db);
    let mut stmt = conn
        .prepare("SELECT DISTINCT hash FROM chunks")
        .map_err(sql)?;
    let rows = stmt
        .query_map([], |r| r.get::<_, Vec<u8>>(0))
        .map_err(sql)?;
    let mut out = HashSet::new();
    for row in rows {
        match slot_row(row.map_err(sql)?, db)? {
            SlotRow::Whole(id) => {
                out.insert(id);
            }
            SlotRow::Pieces(pieces) => out.extend(pieces.iter().map(|p| p.id)),
        }
    }
    Ok(out)
}

/// What a `chunks.hash` value names.
enum SlotRow {
    Whole(ChunkId),
    Pieces(Vec<Piece>),
}

/// Decodes a `chunks.hash` value: 32 bytes are one chunk id, 36·k bytes k pieces.
fn slot_row(bytes: Vec<u8>, db: &Path) -> Result<SlotRow, StoreError> {
    if bytes.len() == 32 {
        return chunk_id(bytes, "chunks", db).map(SlotRow::Whole);
    }
    Piece::decode_all(&bytes)
        .map(SlotRow::Pieces)
        .ok_or_else(|| {
            StoreError::Corrupt(format!(
                "{}: a chunks.hash value of {} bytes is neither a chunk id nor pieces",
                db.display(),
                bytes.len()
            ))
        })
}

/// Every `blobs` row.
pub(super) fn load_blobs(conn: &Connection, db: &Path) -> Result<Vec<(ChunkId, Loc)>, StoreError> {
    let sql = |e| errors::sql(e, db);
    let mut stmt = conn
        .prepare(r#"SELECT hash, pack, "offset", len FROM blobs"#)
        .map_err(sql)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })
        .map_err(sql)?;
    let mut out = Vec::new();
    for row in rows {
        let (hash, pack, offset, len) = row.map_err(sql)?;
        let loc = Loc {
            pack: narrow(pack, "blobs.pack", db)?,
            offset: narrow(offset, "blobs.offset", db)?,
            len: narrow(len, "blobs.len", db)?,
        };
        out.push((chunk_id(hash, "blobs", db)?, loc));
    }
    Ok(out)
}

/// Every table the core needs at mount, ordered by primary key.
pub(super) fn load(conn: &Connection, db: &Path) -> Result<LoadedState, StoreError> {
    let mut state = LoadedState {
        inodes: load_inodes(conn, db)?,
        ..LoadedState::default()
    };
    let sql = |e| errors::sql(e, db);

    let mut stmt = conn
        .prepare_cached("SELECT parent, name, ino FROM dirents ORDER BY parent, name")
        .map_err(sql)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get(1)?,
                r.get::<_, i64>(2)? as u64,
            ))
        })
        .map_err(sql)?;
    for row in rows {
        state.dirents.push(row.map_err(sql)?);
    }

    let mut stmt = conn
        .prepare_cached("SELECT ino, idx, hash FROM chunks ORDER BY ino, idx")
        .map_err(sql)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get::<_, i64>(1)? as u64,
                r.get(2)?,
            ))
        })
        .map_err(sql)?;
    for row in rows {
        let (ino, idx, hash) = row.map_err(sql)?;
        match slot_row(hash, db)? {
            SlotRow::Whole(id) => state.chunks.push((ino, idx, id)),
            SlotRow::Pieces(pieces) => state.pieces.push((ino, idx, pieces)),
        }
    }

    let mut stmt = conn
        .prepare_cached("SELECT ino, name, value FROM xattrs ORDER BY ino, name")
        .map_err(sql)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?))
        })
        .map_err(sql)?;
    for row in rows {
        state.xattrs.push(row.map_err(sql)?);
    }

    let mut stmt = conn
        .prepare_cached("SELECT key, value FROM meta ORDER BY key")
        .map_err(sql)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .map_err(sql)?;
    for row in rows {
        let (k, v) = row.map_err(sql)?;
        if !is_reserved_meta(&k) {
            state.meta.push((k, v));
        }
    }

    // Keys are stored as the i64 with the same bits, so a u64 key of 2^63 or more sorts first
    // in SQL. Restore u64 order (a no-op pass over already sorted input in practice).
    state.inodes.sort_by_key(|r| r.ino);
    state.dirents.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    state.chunks.sort_by_key(|c| (c.0, c.1));
    state.xattrs.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    Ok(state)
}

fn load_inodes(conn: &Connection, db: &Path) -> Result<Vec<InodeRecord>, StoreError> {
    let sql = |e| errors::sql(e, db);
    let mut stmt = conn
        .prepare_cached(
            "SELECT ino, kind, perm, uid, gid, nlink, size, atime, mtime, ctime, crtime, rdev, \
             symlink_target FROM inodes ORDER BY ino",
        )
        .map_err(sql)?;
    let rows = stmt
        .query_map([], |r| {
            let mut ints = [0i64; 12];
            for (i, v) in ints.iter_mut().enumerate() {
                *v = r.get(i)?;
            }
            Ok((ints, r.get::<_, Vec<u8>>(12)?))
        })
        .map_err(sql)?;
    let mut out = Vec::new();
    for row in rows {
        let ([ino, kind, perm, uid, gid, nlink, size, atime, mtime, ctime, crtime, rdev], target) =
            row.map_err(sql)?;
        let kind = u8::try_from(kind)
            .ok()
            .and_then(FileKind::from_code)
            .ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "{}: inode {ino} has unknown kind {kind}",
                    db.display()
                ))
            })?;
        out.push(InodeRecord {
            ino: ino as u64,
            kind,
            perm: narrow(perm, "inodes.perm", db)?,
            uid: narrow(uid, "inodes.uid", db)?,
            gid: narrow(gid, "inodes.gid", db)?,
            nlink: narrow(nlink, "inodes.nlink", db)?,
            size: size as u64,
            atime,
            mtime,
            ctime,
            crtime,
            rdev: narrow(rdev, "inodes.rdev", db)?,
            symlink_target: target,
        });
    }
    Ok(out)
}

/// A stored integer that must fit a narrower type.
fn narrow<T: TryFrom<i64>>(v: i64, column: &str, db: &Path) -> Result<T, StoreError> {
    T::try_from(v).map_err(|_| {
        StoreError::Corrupt(format!("{}: {column} = {v} is out of range", db.display()))
    })
}

/// A stored hash, which must be 32 bytes.
fn chunk_id(hash: Vec<u8>, table: &str, db: &Path) -> Result<ChunkId, StoreError> {
    <[u8; 32]>::try_from(hash.as_slice())
        .map(ChunkId)
        .map_err(|_| {
            StoreError::Corrupt(format!(
                "{}: a {table} row has a {}-byte hash, not 32",
                db.display(),
                hash.len()
            ))
        })
}

/// The `appends` rows of one file, in offset order.
pub(super) fn appends(
    conn: &Connection,
    db: &Path,
    ino: Ino,
) -> Result<Vec<AppendRecord>, StoreError> {
    let sql = |e| errors::sql(e, db);
    let mut stmt = conn
        .prepare_cached(
            r#"SELECT "offset", len, time FROM appends WHERE ino = ?1 ORDER BY "offset""#,
        )
        .map_err(sql)?;
    let rows = stmt
        .query_map([ino as i64], |r| {
            Ok(AppendRecord {
                ino,
                offset: r.get::<_, i64>(0)? as u64,
                len: r.get::<_, i64>(1)? as u64,
                time: r.get(2)?,
            })
        })
        .map_err(sql)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(sql)
}
