//! Behaviour both stores must share: every change kind through commit + load, dedup, reads
//! past the end, refused batches leave nothing behind.

mod common;

use agentfs_memory::*;
use common::*;

/// Runs `check` against a fresh RamStore and a fresh SqliteStore.
fn for_both(check: impl Fn(&dyn Store)) {
    check(&RamStore::new());
    let tmp = tempfile::tempdir().unwrap();
    check(&open_sqlite(tmp.path()));
}

#[test]
fn every_change_kind_round_trips() {
    for_both(|store| {
        let a = store.put_chunk(b"first chunk").unwrap();
        let b = store.put_chunk(b"second chunk").unwrap();
        let mut dir = inode(1, FileKind::Dir);
        dir.perm = 0o1755;
        let mut file = inode(2, FileKind::File);
        file.size = 3 * CHUNK_SIZE as u64;
        let mut link = inode(3, FileKind::Symlink);
        link.symlink_target = b"../target\xff".to_vec();
        let mut dev = inode(4, FileKind::CharDevice);
        dev.rdev = 0x0501;
        let gone = inode(5, FileKind::File);

        let mut batch = Batch::new();
        for rec in [&dir, &file, &link, &dev, &gone] {
            batch.push(Change::PutInode(rec.clone()));
        }
        batch.push(Change::PutDirent {
            parent: 1,
            name: b"file".to_vec(),
            ino: 2,
        });
        batch.push(Change::PutDirent {
            parent: 1,
            name: b"link".to_vec(),
            ino: 3,
        });
        batch.push(Change::PutDirent {
            parent: 1,
            name: b"old".to_vec(),
            ino: 5,
        });
        batch.push(Change::PutDirent {
            parent: 1,
            name: b"\x80raw".to_vec(),
            ino: 4,
        });
        batch.push(Change::SetChunks {
            ino: 2,
            chunks: vec![(0, Some(a)), (1, Some(b)), (2, Some(a)), (5, Some(b))],
        });
        batch.push(Change::SetChunks {
            ino: 5,
            chunks: vec![(0, Some(b))],
        });
        batch.push(Change::SetXattr {
            ino: 2,
            name: b"user.a".to_vec(),
            value: b"1".to_vec(),
        });
        batch.push(Change::SetXattr {
            ino: 2,
            name: b"user.b".to_vec(),
            value: vec![],
        });
        batch.push(Change::SetXattr {
            ino: 5,
            name: b"user.x".to_vec(),
            value: b"x".to_vec(),
        });
        batch.push(Change::SetMeta {
            key: "next_ino".into(),
            value: "6".into(),
        });
        batch.push(Change::Audit(Box::new(audit("create"))));
        store.commit(batch, Durability::Process).unwrap();

        // Second batch: every removal kind.
        let mut batch = Batch::new();
        batch.push(Change::DeleteDirent {
            parent: 1,
            name: b"old".to_vec(),
        });
        batch.push(Change::DeleteInode(5));
        batch.push(Change::SetChunks {
            ino: 2,
            chunks: vec![(1, None)],
        });
        batch.push(Change::TruncateChunks {
            ino: 2,
            from_index: 3,
        });
        batch.push(Change::RemoveXattr {
            ino: 2,
            name: b"user.b".to_vec(),
        });
        batch.push(Change::SetMeta {
            key: "next_ino".into(),
            value: "7".into(),
        });
        batch.push(Change::SetMeta {
            key: "agents".into(),
            value: "{}".into(),
        });
        batch.push(Change::Audit(Box::new(audit("unlink"))));
        store.commit(batch, Durability::Disk).unwrap();
        store.sync().unwrap();

        let s = store.load().unwrap();
        assert_eq!(
            s.inodes,
            vec![dir.clone(), file.clone(), link.clone(), dev.clone()]
        );
        assert_eq!(
            s.dirents,
            vec![
                (1, b"file".to_vec(), 2),
                (1, b"link".to_vec(), 3),
                (1, b"\x80raw".to_vec(), 4),
            ]
        );
        assert_eq!(s.chunks, vec![(2, 0, a), (2, 2, a)]);
        assert_eq!(s.xattrs, vec![(2, b"user.a".to_vec(), b"1".to_vec())]);
        assert_eq!(
            s.meta,
            vec![
                ("agents".into(), "{}".into()),
                ("next_ino".into(), "7".into())
            ]
        );
        assert_eq!(read_all(store, &a), b"first chunk");
    });
}

#[test]
fn same_bytes_are_stored_once() {
    for_both(|store| {
        let data = vec![7u8; CHUNK_SIZE];
        let a = store.put_chunk(&data).unwrap();
        let b = store.put_chunk(&data).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, ChunkId::of(&data));
        assert_eq!(store.chunk_bytes(), CHUNK_SIZE as u64);
        store.put_chunk(b"other").unwrap();
        assert_eq!(store.chunk_bytes(), CHUNK_SIZE as u64 + 5);
    });
}

#[test]
fn reads_clamp_to_the_chunk() {
    for_both(|store| {
        let id = store.put_chunk(b"0123456789").unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(store.read_at(&id, 0, &mut buf).unwrap(), 4);
        assert_eq!(&buf, b"0123");
        assert_eq!(store.read_at(&id, 8, &mut buf).unwrap(), 2);
        assert_eq!(&buf[..2], b"89");
        assert_eq!(store.read_at(&id, 10, &mut buf).unwrap(), 0);
        assert_eq!(store.read_at(&id, 1 << 40, &mut buf).unwrap(), 0);
        assert_eq!(store.read_at(&id, 3, &mut []).unwrap(), 0);
        let empty = store.put_chunk(b"").unwrap();
        assert_eq!(store.read_at(&empty, 0, &mut buf).unwrap(), 0);
        let unknown = ChunkId::of(b"never stored");
        assert!(matches!(
            store.read_at(&unknown, 0, &mut buf),
            Err(StoreError::MissingChunk(_))
        ));
    });
}

#[test]
fn a_refused_batch_applies_nothing() {
    for_both(|store| {
        let a = store.put_chunk(b"a").unwrap();
        let mut base = Batch::new();
        base.push(Change::PutInode(inode(1, FileKind::Dir)));
        base.push(Change::SetMeta {
            key: "k".into(),
            value: "v".into(),
        });
        store.commit(base, Durability::Process).unwrap();
        let before = store.load().unwrap();

        // Fails on its last change, after inserts, deletes and chunk maps were applied.
        let mut bad = Batch::new();
        bad.push(Change::PutInode(inode(2, FileKind::File)));
        bad.push(Change::DeleteInode(1));
        bad.push(Change::SetMeta {
            key: "k".into(),
            value: "changed".into(),
        });
        bad.push(Change::SetChunks {
            ino: 2,
            chunks: vec![(0, Some(a))],
        });
        bad.push(Change::PutDirent {
            parent: 1,
            name: b"x".to_vec(),
            ino: 2,
        });
        bad.push(Change::Audit(Box::new(audit("write"))));
        bad.push(Change::SetChunks {
            ino: 2,
            chunks: vec![(1, Some(ChunkId::of(b"never stored")))],
        });
        for durability in [Durability::Process, Durability::Disk] {
            let err = store.commit(bad.clone(), durability).unwrap_err();
            assert!(matches!(err, StoreError::MissingChunk(_)), "{err}");
            assert_same(&store.load().unwrap(), &before);
        }

        // A reserved meta key is refused the same way.
        let mut bad = Batch::new();
        bad.push(Change::PutInode(inode(3, FileKind::File)));
        bad.push(Change::SetMeta {
            key: "schema_version".into(),
            value: "99".into(),
        });
        assert!(store.commit(bad, Durability::Process).is_err());
        assert_same(&store.load().unwrap(), &before);

        // The store still works afterwards, and the chunk is still there.
        let mut ok = Batch::new();
        ok.push(Change::SetChunks {
            ino: 1,
            chunks: vec![(0, Some(a))],
        });
        store.commit(ok, Durability::Process).unwrap();
        assert_eq!(store.load().unwrap().chunks, vec![(1, 0, a)]);
        assert_eq!(read_all(store, &a), b"a");
    });
}

#[test]
fn oversized_chunks_are_refused() {
    for_both(|store| {
        let err = store.put_chunk(&vec![0u8; CHUNK_SIZE + 1]).unwrap_err();
        assert!(
            matches!(err, StoreError::Io(ref e) if e.kind() == std::io::ErrorKind::InvalidInput)
        );
        assert_eq!(store.chunk_bytes(), 0);
    });
}

#[test]
fn empty_commits_and_sync_succeed() {
    for_both(|store| {
        store.commit(Batch::new(), Durability::Process).unwrap();
        store.commit(Batch::new(), Durability::Disk).unwrap();
        store.sync().unwrap();
        assert!(is_empty(&store.load().unwrap()));
    });
}

#[test]
fn a_chunk_moved_between_slots_in_one_batch_survives() {
    for_both(|store| {
        let a = store.put_chunk(b"moving").unwrap();
        let mut b = Batch::new();
        b.push(Change::SetChunks {
            ino: 2,
            chunks: vec![(0, Some(a))],
        });
        store.commit(b, Durability::Process).unwrap();
        let mut b = Batch::new();
        b.push(Change::DeleteInode(2));
        b.push(Change::SetChunks {
            ino: 3,
            chunks: vec![(0, Some(a))],
        });
        store.commit(b, Durability::Process).unwrap();
        assert_eq!(store.load().unwrap().chunks, vec![(3, 0, a)]);
        assert_eq!(read_all(store, &a), b"moving");
    });
}

/// The changes of `encoded_changes_apply_as_their_changes`, written plain or into encoded
/// runs (with a plain `SetMeta` between two runs, so order across runs counts).
fn copy_batch(a: ChunkId, b: ChunkId, encoded: bool) -> Batch {
    let mut dir = inode(10, FileKind::Dir);
    dir.perm = 0o555;
    let mut file = inode(11, FileKind::File);
    file.size = CHUNK_SIZE as u64 + 2;
    let mut batch = Batch::new();
    if encoded {
        let run = batch.encoded();
        run.put_inode(&dir);
        run.put_dirent(1, b"copy\xff", 10);
        run.put_inode(&file);
        run.set_chunks(11, [(0, Some(a)), (1, Some(b)), (4, None)]);
        run.set_xattr(11, b"user.k", b"v");
        batch.push(Change::SetMeta {
            key: "m".into(),
            value: "1".into(),
        });
        batch.encoded().put_dirent(10, b"f", 11);
    } else {
        batch.push(Change::PutInode(dir));
        batch.push(Change::PutDirent {
            parent: 1,
            name: b"copy\xff".to_vec(),
            ino: 10,
        });
        batch.push(Change::PutInode(file));
        batch.push(Change::SetChunks {
            ino: 11,
            chunks: vec![(0, Some(a)), (1, Some(b)), (4, None)],
        });
        batch.push(Change::SetXattr {
            ino: 11,
            name: b"user.k".to_vec(),
            value: b"v".to_vec(),
        });
        batch.push(Change::SetMeta {
            key: "m".into(),
            value: "1".into(),
        });
        batch.push(Change::PutDirent {
            parent: 10,
            name: b"f".to_vec(),
            ino: 11,
        });
    }
    batch
}

/// A batch holding encoded runs (`Batch::encoded`, what a checkpoint's copy is written as)
/// leaves exactly the state of the same changes committed plain, in both stores and, for the
/// durable one, after a reopen replays it from the journal; a run naming a chunk the store does
/// not hold is refused whole.
#[test]
fn encoded_changes_apply_as_their_changes() {
    let plain = in_ram(|a, b| vec![copy_batch(a, b, false)]);
    for_both(|store| {
        let (a, b) = first_and_second(store);
        store
            .commit(copy_batch(a, b, true), Durability::Process)
            .unwrap();
        assert_same(&store.load().unwrap(), &plain);

        let mut bad = Batch::new();
        bad.encoded().put_inode(&inode(20, FileKind::File));
        bad.encoded()
            .set_chunks(20, [(0, Some(a)), (1, Some(ChunkId::of(b"never stored")))]);
        let err = store.commit(bad, Durability::Process).unwrap_err();
        assert!(matches!(err, StoreError::MissingChunk(_)), "{err}");
        assert_same(&store.load().unwrap(), &plain);
    });
    // The record as it was written, its runs' bytes among the others.
    assert_same(&replayed(|a, b| vec![copy_batch(a, b, true)]), &plain);
}

/// Puts the two chunks the copy tests name, `(a, b)`.
fn first_and_second(store: &dyn Store) -> (ChunkId, ChunkId) {
    (
        store.put_chunk(b"first").unwrap(),
        store.put_chunk(b"second").unwrap(),
    )
}

/// What a RamStore holds after committing `batches` (given the two chunks).
fn in_ram(batches: impl Fn(ChunkId, ChunkId) -> Vec<Batch>) -> LoadedState {
    let store = RamStore::new();
    let (a, b) = first_and_second(&store);
    for batch in batches(a, b) {
        store.commit(batch, Durability::Process).unwrap();
    }
    store.load().unwrap()
}

/// What a SqliteStore loads after `batches` went only to its journal (the applier paused, as
/// after a crash; the last one committed `Disk`) and a reopen replayed them.
fn replayed(batches: impl Fn(ChunkId, ChunkId) -> Vec<Batch>) -> LoadedState {
    let tmp = tempfile::tempdir().unwrap();
    {
        let store = open_sqlite(tmp.path());
        let (a, b) = first_and_second(&store);
        store.set_applier_paused(true);
        let batches = batches(a, b);
        let last = batches.len().saturating_sub(1);
        for (i, batch) in batches.into_iter().enumerate() {
            let durability = if i == last {
                Durability::Disk
            } else {
                Durability::Process
            };
            store.commit(batch, durability).unwrap();
        }
    }
    // Bound first: the store closes before its directory is removed.
    let state = open_sqlite(tmp.path()).load().unwrap();
    state
}

/// A small tree for `copied_nodes_are_their_sources_renumbered`: directory 10 under the root
/// (an xattr), file 11 in it under three names (two in 10, one in subdirectory 13; a whole
/// chunk, a slot in pieces, an xattr, an append), symlink 12, and file 14, which the copy
/// leaves out.
fn source_tree(a: ChunkId, b: ChunkId) -> Batch {
    let mut batch = Batch::new();
    let mut dir = inode(10, FileKind::Dir);
    dir.perm = 0o750;
    let mut file = inode(11, FileKind::File);
    file.size = CHUNK_SIZE as u64 + 7;
    file.nlink = 3;
    let mut link = inode(12, FileKind::Symlink);
    link.symlink_target = b"../f\xff".to_vec();
    for rec in [
        dir,
        file,
        link,
        inode(13, FileKind::Dir),
        inode(14, FileKind::File),
    ] {
        batch.push(Change::PutInode(rec));
    }
    for (parent, name, ino) in [
        (1, &b"src"[..], 10),
        (10, b"f", 11),
        (10, b"g", 11),
        (10, b"ln", 12),
        (10, b"sub", 13),
        (13, b"h", 11),
        (10, b"left out", 14),
    ] {
        batch.push(Change::PutDirent {
            parent,
            name: name.to_vec(),
            ino,
        });
    }
    batch.push(Change::SetChunks {
        ino: 11,
        chunks: vec![(0, Some(a))],
    });
    batch.push(Change::SetPieces {
        ino: 11,
        idx: 1,
        pieces: vec![Piece { id: a, len: 3 }, Piece { id: b, len: 4 }],
    });
    batch.push(Change::SetChunks {
        ino: 14,
        chunks: vec![(0, Some(b))],
    });
    for (ino, name) in [(10, &b"user.d"[..]), (11, b"user.k")] {
        batch.push(Change::SetXattr {
            ino,
            name: name.to_vec(),
            value: b"v".to_vec(),
        });
    }
    batch.push(Change::Append(AppendRecord {
        ino: 11,
        offset: CHUNK_SIZE as u64,
        len: 7,
        time: 5,
    }));
    batch
}

/// The copy of 10 (and 11–13) as 100–103 under the root, change by change.
fn copy_written_out(a: ChunkId, b: ChunkId) -> Batch {
    let mut batch = Batch::new();
    for change in source_tree(a, b).changes {
        let renumbered = |ino: Ino| (10..=13).contains(&ino).then_some(ino + 90);
        let copy = match change {
            Change::PutInode(mut r) => renumbered(r.ino).map(|ino| {
                r.ino = ino;
                Change::PutInode(r)
            }),
            Change::PutDirent { parent, name, ino } => renumbered(parent)
                .zip(renumbered(ino))
                .map(|(parent, ino)| Change::PutDirent { parent, name, ino }),
            Change::SetChunks { ino, chunks } => {
                renumbered(ino).map(|ino| Change::SetChunks { ino, chunks })
            }
            Change::SetPieces { ino, idx, pieces } => {
                renumbered(ino).map(|ino| Change::SetPieces { ino, idx, pieces })
            }
            Change::SetXattr { ino, name, value } => {
                renumbered(ino).map(|ino| Change::SetXattr { ino, name, value })
            }
            _ => None,
        };
        batch.changes.extend(copy);
    }
    batch.push(Change::PutDirent {
        parent: 1,
        name: b"copy".to_vec(),
        ino: 100,
    });
    batch
}

fn copy_by_reference() -> Batch {
    let mut batch = Batch::new();
    batch.push(Change::CopyNodes(vec![
        (10, 100),
        (11, 101),
        (12, 102),
        (13, 103),
    ]));
    batch.push(Change::PutDirent {
        parent: 1,
        name: b"copy".to_vec(),
        ino: 100,
    });
    batch
}

/// `CopyNodes` (what a checkpoint is made of) leaves the state the copies written out change
/// by change leave: records, chunk maps (pieces too), xattrs and the entries among copied
/// nodes (a hard link stays one inode), not the entry of a node left out nor the appends. In
/// both stores, and in the durable one after a reopen replays it from the journal. The
/// copies hold their chunks: deleting the sources frees nothing they name.
#[test]
fn copied_nodes_are_their_sources_renumbered() {
    let written_out = in_ram(|a, b| vec![source_tree(a, b), copy_written_out(a, b)]);
    assert!(written_out.dirents.len() > 7, "the copy has entries");
    for_both(|store| {
        let (a, b) = first_and_second(store);
        store
            .commit(source_tree(a, b), Durability::Process)
            .unwrap();
        store
            .commit(copy_by_reference(), Durability::Process)
            .unwrap();
        assert_same(&store.load().unwrap(), &written_out);
        assert_eq!(store.appends(11).unwrap().len(), 1);
        assert!(store.appends(101).unwrap().is_empty());

        let mut drop_sources = Batch::new();
        drop_sources.push(Change::DeleteDirent {
            parent: 1,
            name: b"src".to_vec(),
        });
        for ino in 10..=14 {
            drop_sources.push(Change::DeleteInode(ino));
        }
        store.commit(drop_sources, Durability::Process).unwrap();
        for _ in 0..3 {
            store.collect_garbage(&Default::default()).unwrap();
        }
        assert_eq!(read_all(store, &a), b"first");
        assert_eq!(read_all(store, &b), b"second");
    });
    let replayed = replayed(|a, b| vec![source_tree(a, b), copy_by_reference()]);
    assert_same(&replayed, &written_out);
}
