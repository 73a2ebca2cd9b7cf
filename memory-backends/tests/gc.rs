//! Garbage collection of unreferenced chunks (`Store::collect_garbage`), on both stores.

mod common;

use agentfs_memory::*;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn file_with(store: &dyn Store, ino: Ino, id: ChunkId) {
    let mut batch = Batch::new();
    batch.push(Change::PutInode(common::inode(ino, FileKind::File)));
    batch.push(Change::SetChunks {
        ino,
        chunks: vec![(0, Some(id))],
    });
    store.commit(batch, Durability::Process).unwrap();
}

fn rounds(store: &dyn Store, live: &HashSet<ChunkId>, n: usize) -> GcReport {
    let mut total = GcReport::default();
    for _ in 0..n {
        let r = store.collect_garbage(live).unwrap();
        total.freed_chunks += r.freed_chunks;
        total.freed_bytes += r.freed_bytes;
        total.reclaimed_bytes += r.reclaimed_bytes;
        total.packs_deleted += r.packs_deleted;
        total.suspects = r.suspects;
    }
    total
}

fn readable(store: &dyn Store, id: &ChunkId) -> bool {
    let mut buf = [0u8; 16];
    store.read_at(id, 0, &mut buf).is_ok()
}

/// What both stores must do: free only what nothing references, and only after two rounds.
fn frees_only_the_unreferenced(store: &dyn Store) {
    let kept = store.put_chunk(&[1u8; 5000]).unwrap();
    file_with(store, 2, kept);
    let dropped = store.put_chunk(&[2u8; 7000]).unwrap();
    file_with(store, 3, dropped);
    let held = store.put_chunk(&[3u8; 3000]).unwrap(); // an open file's uncommitted slot
    let abandoned = store.put_chunk(&[4u8; 1000]).unwrap(); // put, never committed
    let mut batch = Batch::new();
    batch.push(Change::DeleteInode(3));
    store.commit(batch, Durability::Process).unwrap();

    let live: HashSet<ChunkId> = [held].into();
    // The first rounds only suspect: nothing is freed before two rounds have seen it idle.
    let first = rounds(store, &live, 1);
    assert_eq!(first.freed_chunks, 0, "{first:?}");
    assert!(readable(store, &abandoned));
    let later = rounds(store, &live, 3);
    assert!(!readable(store, &abandoned), "an abandoned chunk is freed");
    assert!(
        !readable(store, &dropped),
        "a deleted file's chunk is freed"
    );
    assert!(readable(store, &kept), "a referenced chunk stays");
    assert!(readable(store, &held), "a chunk the caller holds stays");
    assert!(later.freed_chunks >= 1, "{later:?}");
    assert_eq!(store.chunk_bytes(), 5000 + 3000);
    let _ = later;

    // A commit naming a freed chunk is refused; putting the bytes again brings it back.
    let mut batch = Batch::new();
    batch.push(Change::SetChunks {
        ino: 2,
        chunks: vec![(1, Some(abandoned))],
    });
    assert!(matches!(
        store.commit(batch, Durability::Process),
        Err(StoreError::MissingChunk(_))
    ));
    assert_eq!(store.put_chunk(&[4u8; 1000]).unwrap(), abandoned);
    file_with(store, 4, abandoned);
    rounds(store, &HashSet::new(), 4);

    // An id fresh from `put_chunk` that nothing holds yet (a writer between its put and its
    // commit) survives two rounds.
    let in_transit = store.put_chunk(&[5u8; 500]).unwrap();
    rounds(store, &HashSet::new(), 2);
    file_with(store, 5, in_transit);
    // And so does one deduplicated against a chunk the collector already suspects.
    let mut batch = Batch::new();
    batch.push(Change::DeleteInode(5));
    store.commit(batch, Durability::Process).unwrap();
    rounds(store, &HashSet::new(), 1);
    assert_eq!(store.put_chunk(&[5u8; 500]).unwrap(), in_transit);
    rounds(store, &HashSet::new(), 2);
    file_with(store, 6, in_transit);

    let mut buf = [0u8; 1000];
    assert_eq!(store.read_at(&abandoned, 0, &mut buf).unwrap(), 1000);
    assert_eq!(buf, [4u8; 1000]);
}

#[test]
fn ram_store_frees_only_the_unreferenced() {
    frees_only_the_unreferenced(&RamStore::new());
}

#[test]
fn sqlite_store_frees_only_the_unreferenced_and_remembers_it() {
    let tmp = tempfile::tempdir().unwrap();
    let store = common::open_sqlite(tmp.path());
    frees_only_the_unreferenced(&store);
    assert!(store.verify_chunks().unwrap().is_empty());
    drop(store);
    let store = common::open_sqlite(tmp.path());
    assert_eq!(
        store.chunk_bytes(),
        5000 + 1000 + 500,
        "after a reopen only the referenced chunks are indexed (the held one was never committed)"
    );
    assert!(store.verify_chunks().unwrap().is_empty());
}

#[test]
fn the_drop_record_is_replayed_after_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let store = common::open_sqlite(tmp.path());
    let kept = store.put_chunk(&[1u8; 100]).unwrap();
    file_with(&store, 2, kept);
    let garbage = store.put_chunk(&[2u8; 100]).unwrap();
    file_with(&store, 3, garbage);
    let mut batch = Batch::new();
    batch.push(Change::DeleteInode(3));
    store.commit(batch, Durability::Process).unwrap();
    // Let SQLite have the rows, then stop the applier: the collector's record stays in the
    // journal only, and the drop below is a crash.
    store.wait_applied().unwrap();
    rounds(&store, &HashSet::new(), 1);
    store.set_applier_paused(true);
    // The round needs the applier for its SQLite read; a paused one never answers, so the
    // second round runs on a second store handle after the "crash" instead.
    drop(store);
    let store = common::open_sqlite(tmp.path());
    let r = rounds(&store, &HashSet::new(), 3);
    assert_eq!(r.freed_chunks, 1, "{r:?}");
    store.set_applier_paused(true);
    drop(store); // crash with the drop record unapplied
    let store = common::open_sqlite(tmp.path());
    assert!(readable(&store, &kept));
    assert!(
        !readable(&store, &garbage),
        "the replayed record deleted the blob row"
    );
    assert_eq!(store.chunk_bytes(), 100);
}

#[test]
fn freed_bytes_go_back_to_the_filesystem() {
    let tmp = tempfile::tempdir().unwrap();
    let store = common::open_sqlite(tmp.path());
    let blocks = || -> u64 {
        std::fs::read_dir(tmp.path().join("packs"))
            .unwrap()
            .map(|e| std::os::unix::fs::MetadataExt::blocks(&e.unwrap().metadata().unwrap()))
            .sum::<u64>()
            * 512
    };
    let mut ids = Vec::new();
    for i in 0..64u32 {
        let mut data = vec![0u8; CHUNK_SIZE];
        data[..4].copy_from_slice(&i.to_le_bytes());
        data[4..].fill(7);
        ids.push(store.put_chunk(&data).unwrap());
    }
    store.sync().unwrap();
    let before = blocks();
    assert!(before >= 64 * CHUNK_SIZE as u64, "{before}");
    let r = rounds(&store, &HashSet::new(), 3);
    assert_eq!(r.freed_chunks, 64);
    assert!(
        r.reclaimed_bytes >= 64 * CHUNK_SIZE as u64,
        "holes punched (ext4 and tmpfs can): {r:?}"
    );
    let after = blocks();
    assert!(
        after + 60 * CHUNK_SIZE as u64 <= before,
        "the pack gave its blocks back: {before} -> {after}"
    );
}

/// Writers that put and commit chunks (many of the same bytes, so dedup hands out chunks the
/// collector is looking at) race a collector that runs round after round; every committed
/// file must read back whole, now and after a reopen.
#[test]
fn concurrent_writers_never_lose_a_committed_chunk() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(common::open_sqlite(tmp.path()));
    let stop = Arc::new(AtomicBool::new(false));
    let collector = {
        let store = Arc::clone(&store);
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut freed = 0;
            while !stop.load(Ordering::Relaxed) {
                freed += store.collect_garbage(&HashSet::new()).unwrap().freed_chunks;
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            freed
        })
    };
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let mut last = Vec::new();
                for i in 0..400u64 {
                    let ino = 100 + w * 10 + i % 10;
                    // Half the writes share 16 contents with every writer (dedup hands out chunks
                    // the collector may be judging); the other half are unique and become
                    // garbage when the slot is rewritten.
                    let mut content = vec![((w + i) % 16) as u8; 4096];
                    if i % 2 == 0 {
                        content[..16].copy_from_slice(&[w.to_le_bytes(), i.to_le_bytes()].concat());
                    }
                    let id = store.put_chunk(&content).unwrap();
                    file_with(store.as_ref(), ino, id);
                    last.push((ino, content));
                }
                last
            })
        })
        .collect();
    let mut expect = std::collections::HashMap::new();
    for w in writers {
        for (ino, content) in w.join().unwrap() {
            expect.insert(ino, content);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let freed = collector.join().unwrap();
    let check = |store: &dyn Store| {
        let state = store.load().unwrap();
        for (ino, _, id) in state.chunks {
            let mut buf = [0u8; 4096];
            assert_eq!(store.read_at(&id, 0, &mut buf).unwrap(), 4096, "ino {ino}");
            assert_eq!(buf[..], expect[&ino][..], "ino {ino}");
        }
    };
    check(store.as_ref());
    let store = Arc::into_inner(store).unwrap();
    drop(store);
    let store = common::open_sqlite(tmp.path());
    check(&store);
    // Every rewritten unique content became garbage; that some was freed while the writers
    // ran shows the collector really raced them.
    assert!(freed > 0, "freed {freed}");
}

/// Commits file 9 with its slot 0 in two pieces; returns the pieces.
fn file_in_pieces(store: &dyn Store) -> Vec<Piece> {
    let pieces = vec![
        Piece {
            id: store.put_chunk(&[7u8; 3000]).unwrap(),
            len: 3000,
        },
        Piece {
            id: store.put_chunk(&[8u8; 200]).unwrap(),
            len: 200,
        },
    ];
    let mut batch = Batch::new();
    batch.push(Change::PutInode(common::inode(9, FileKind::File)));
    batch.push(Change::SetPieces {
        ino: 9,
        idx: 0,
        pieces: pieces.clone(),
    });
    store.commit(batch, Durability::Process).unwrap();
    pieces
}

/// A slot in pieces keeps every piece's chunk alive; replacing it by a whole chunk lets them
/// go.
fn pieces_are_references(store: &dyn Store, pieces: &[Piece]) {
    let none = HashSet::new();
    rounds(store, &none, 4);
    assert_eq!(store.load().unwrap().pieces, vec![(9, 0, pieces.to_vec())]);
    assert!(pieces.iter().all(|p| readable(store, &p.id)));
    let whole = store.put_chunk(&[9u8; 3200]).unwrap();
    file_with(store, 9, whole);
    rounds(store, &none, 4);
    assert!(readable(store, &whole));
    assert!(
        pieces.iter().all(|p| !readable(store, &p.id)),
        "the pieces are freed"
    );
    assert!(store.load().unwrap().pieces.is_empty());
}

#[test]
fn ram_store_counts_pieces_as_references() {
    let store = RamStore::new();
    let pieces = file_in_pieces(&store);
    pieces_are_references(&store, &pieces);
}

#[test]
fn sqlite_store_counts_pieces_as_references_across_a_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let store = common::open_sqlite(tmp.path());
    let pieces = file_in_pieces(&store);
    rounds(&store, &HashSet::new(), 4);
    drop(store);
    let store = common::open_sqlite(tmp.path());
    pieces_are_references(&store, &pieces);
    assert!(store.verify_chunks().unwrap().is_empty());
}

#[test]
fn malformed_pieces_are_refused_by_both_stores() {
    let tmp = tempfile::tempdir().unwrap();
    let sqlite = common::open_sqlite(tmp.path());
    for store in [&RamStore::new() as &dyn Store, &sqlite] {
        let a = store.put_chunk(b"abc").unwrap();
        let unknown = ChunkId([3; 32]);
        let bad = [
            vec![Piece { id: a, len: 3 }],
            vec![Piece { id: a, len: 3 }, Piece { id: a, len: 0 }],
            vec![Piece { id: a, len: 3 }; MAX_PIECES + 1],
            vec![
                Piece {
                    id: a,
                    len: CHUNK_SIZE as u32,
                },
                Piece { id: a, len: 3 },
            ],
        ];
        for pieces in bad {
            let batch = Batch {
                changes: vec![Change::SetPieces {
                    ino: 1,
                    idx: 0,
                    pieces: pieces.clone(),
                }],
            };
            let err = store.commit(batch, Durability::Process).unwrap_err();
            assert!(matches!(err, StoreError::Io(_)), "{pieces:?}: {err:?}");
        }
        let batch = Batch {
            changes: vec![Change::SetPieces {
                ino: 1,
                idx: 0,
                pieces: vec![
                    Piece { id: a, len: 3 },
                    Piece {
                        id: unknown,
                        len: 3,
                    },
                ],
            }],
        };
        let err = store.commit(batch, Durability::Process).unwrap_err();
        assert!(matches!(err, StoreError::MissingChunk(_)), "{err:?}");
        assert!(store.load().unwrap().pieces.is_empty());
    }
}
