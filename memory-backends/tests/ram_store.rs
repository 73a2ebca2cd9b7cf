//! RamStore specifics: when chunk bytes are freed.

mod common;

use agentfs_memory::*;
use common::*;

fn set(ino: Ino, idx: u64, id: Option<ChunkId>) -> Batch {
    Batch {
        changes: vec![Change::SetChunks {
            ino,
            chunks: vec![(idx, id)],
        }],
    }
}

#[test]
fn the_last_reference_frees_the_bytes() {
    let store = RamStore::new();
    let a = store.put_chunk(&[1u8; 1000]).unwrap();
    store
        .commit(set(2, 0, Some(a)), Durability::Process)
        .unwrap();
    store
        .commit(set(3, 0, Some(a)), Durability::Process)
        .unwrap();
    assert_eq!(store.chunk_bytes(), 1000);

    store.commit(set(2, 0, None), Durability::Process).unwrap();
    assert_eq!(store.chunk_bytes(), 1000, "ino 3 still references it");
    store
        .commit(
            Batch {
                changes: vec![Change::TruncateChunks {
                    ino: 3,
                    from_index: 0,
                }],
            },
            Durability::Process,
        )
        .unwrap();
    assert_eq!(store.chunk_bytes(), 0);
    assert_eq!(store.chunk_count(), 0);
    assert!(matches!(
        store.read_at(&a, 0, &mut [0u8; 4]),
        Err(StoreError::MissingChunk(_))
    ));
}

#[test]
fn delete_inode_frees_its_chunks() {
    let store = RamStore::new();
    let a = store.put_chunk(b"a").unwrap();
    let b = store.put_chunk(b"bb").unwrap();
    let batch = Batch {
        changes: vec![
            Change::PutInode(inode(2, FileKind::File)),
            Change::SetChunks {
                ino: 2,
                chunks: vec![(0, Some(a)), (1, Some(b))],
            },
        ],
    };
    store.commit(batch, Durability::Process).unwrap();
    store
        .commit(
            Batch {
                changes: vec![Change::DeleteInode(2)],
            },
            Durability::Process,
        )
        .unwrap();
    assert_eq!(store.chunk_bytes(), 0);
    assert!(is_empty(&store.load().unwrap()));
}

#[test]
fn a_chunk_put_again_before_its_commit_is_not_freed() {
    // Writer 1 references `a`; writer 2 puts the same bytes (dedup) but has not committed
    // yet when writer 1's slot is dropped. Writer 2's commit must still find the chunk.
    let store = RamStore::new();
    let a = store.put_chunk(b"shared").unwrap();
    store
        .commit(set(2, 0, Some(a)), Durability::Process)
        .unwrap();
    assert_eq!(store.put_chunk(b"shared").unwrap(), a);
    store.commit(set(2, 0, None), Durability::Process).unwrap();
    assert_eq!(store.chunk_bytes(), 6);
    store
        .commit(set(3, 0, Some(a)), Durability::Process)
        .unwrap();
    assert_eq!(read_all(&store, &a), b"shared");
    // Now every put has been settled: dropping the last reference frees it.
    store.commit(set(3, 0, None), Durability::Process).unwrap();
    assert_eq!(store.chunk_bytes(), 0);
}

#[test]
fn unreferenced_puts_linger() {
    let store = RamStore::new();
    store.put_chunk(b"never committed").unwrap();
    store.commit(Batch::new(), Durability::Process).unwrap();
    assert_eq!(store.chunk_bytes(), 15);
}

#[test]
fn audit_entries_are_counted() {
    let store = RamStore::new();
    let batch = Batch {
        changes: vec![
            Change::Audit(Box::new(audit("a"))),
            Change::Audit(Box::new(audit("b"))),
        ],
    };
    store.commit(batch, Durability::Process).unwrap();
    assert_eq!(store.audit_count(), 2);
}

/// A growing slot commits again the pieces it keeps, which nobody put for that commit: they
/// must not settle the claim of another writer who has just put the same bytes, or that
/// writer's chunk is freed before its commit names it.
#[test]
fn kept_pieces_do_not_take_another_writers_claim() {
    let store = RamStore::new();
    let line = store.put_chunk(b"the same line\n").unwrap();
    store
        .commit(set(1, 0, Some(line)), Durability::Process)
        .unwrap();
    // Another writer puts the same bytes for file 2 and has not committed yet.
    assert_eq!(store.put_chunk(b"the same line\n").unwrap(), line);
    // File 1 grows: its slot keeps `line` as a piece and adds one.
    let more = store.put_chunk(b"more").unwrap();
    let pieces = vec![Piece { id: line, len: 14 }, Piece { id: more, len: 4 }];
    let batch = Batch {
        changes: vec![Change::SetPieces {
            ino: 1,
            idx: 0,
            pieces,
        }],
    };
    store.commit(batch, Durability::Process).unwrap();
    // File 1 is rewritten: `line` loses its last committed reference.
    let other = store.put_chunk(b"rewritten").unwrap();
    store
        .commit(set(1, 0, Some(other)), Durability::Process)
        .unwrap();
    // The other writer's commit must still find its chunk.
    store
        .commit(set(2, 0, Some(line)), Durability::Process)
        .expect("the other writer's chunk was freed under it");
    assert_eq!(read_all(&store, &line), b"the same line\n");
}
