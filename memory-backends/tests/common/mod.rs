//! Helpers shared by the integration tests.
#![allow(dead_code)]

use agentfs_memory::*;
use std::path::Path;

pub fn inode(ino: Ino, kind: FileKind) -> InodeRecord {
    InodeRecord {
        ino,
        kind,
        perm: 0o644,
        uid: 1000,
        gid: 1000,
        nlink: 1,
        size: 0,
        atime: 1_700_000_000_000_000_000,
        mtime: 1_700_000_000_000_000_001,
        ctime: -5,
        crtime: 0,
        rdev: 0,
        symlink_target: Vec::new(),
    }
}

pub fn audit(op: &str) -> AuditEntry {
    AuditEntry {
        time: 42,
        agent: "claude".into(),
        pid: 7,
        uid: 1000,
        op: op.into(),
        path: "/w/a.txt".into(),
        result: 0,
        size: 5,
        ..Default::default()
    }
}

pub fn open_sqlite(dir: &Path) -> SqliteStore {
    SqliteStore::open(dir, StoreOptions { create: true }).expect("open store")
}

/// Field-by-field equality (LoadedState has no PartialEq).
pub fn assert_same(a: &LoadedState, b: &LoadedState) {
    assert_eq!(a.inodes, b.inodes, "inodes differ");
    assert_eq!(a.dirents, b.dirents, "dirents differ");
    assert_eq!(a.chunks, b.chunks, "chunks differ");
    assert_eq!(a.pieces, b.pieces, "pieces differ");
    assert_eq!(a.xattrs, b.xattrs, "xattrs differ");
    assert_eq!(a.meta, b.meta, "meta differ");
}

pub fn is_empty(s: &LoadedState) -> bool {
    s.inodes.is_empty()
        && s.dirents.is_empty()
        && s.chunks.is_empty()
        && s.pieces.is_empty()
        && s.xattrs.is_empty()
        && s.meta.is_empty()
}

/// Reads a whole chunk back.
pub fn read_all(store: &dyn Store, id: &ChunkId) -> Vec<u8> {
    let mut buf = vec![0u8; CHUNK_SIZE];
    let n = store.read_at(id, 0, &mut buf).expect("read chunk");
    buf.truncate(n);
    buf
}
