//! The RamStore's chunk-lifetime protocol under every interleaving loom reaches: a writer that
//! got an id from `put_chunk` can always commit a chunk map naming it, whatever a commit that
//! drops the chunk's last reference or a garbage-collection round does meanwhile
//! (`ram.rs`, "When chunk bytes are freed").
//!
//! ```sh
//! cargo test -p agentfs-memory --features loom --test loom_ram
//! ```
#![cfg(feature = "loom")]

use agentfs_memory::*;
use loom::sync::Arc;
use loom::thread;
use std::collections::HashSet;

const BYTES: &[u8] = b"a line both writers store";

fn set(ino: Ino, id: Option<ChunkId>) -> Batch {
    Batch {
        changes: vec![Change::SetChunks {
            ino,
            chunks: vec![(0, id)],
        }],
    }
}

/// Another writer, on a thread of its own: puts `BYTES` and commits them as file 2's.
fn put_and_commit(store: &Arc<RamStore>) -> thread::JoinHandle<Result<(), StoreError>> {
    let store = store.clone();
    thread::spawn(move || {
        let id = store.put_chunk(BYTES).unwrap();
        store.commit(set(2, Some(id)), Durability::Process)
    })
}

fn readable(store: &RamStore, id: &ChunkId) -> bool {
    let mut buf = [0u8; 64];
    store.read_at(id, 0, &mut buf).is_ok()
}

/// File 1 holds the chunk; one thread puts the same bytes for file 2 and commits, the other
/// drops file 1's reference (the last one) at the same time.
#[test]
fn a_put_survives_a_commit_dropping_the_last_reference() {
    loom::model(|| {
        let store = Arc::new(RamStore::new());
        let id = store.put_chunk(BYTES).unwrap();
        store.commit(set(1, Some(id)), Durability::Process).unwrap();

        let writer = put_and_commit(&store);
        store.commit(set(1, None), Durability::Process).unwrap();
        writer
            .join()
            .unwrap()
            .expect("the writer's chunk was freed between its put and its commit");
        assert!(readable(&store, &id));
        assert_eq!(store.chunk_bytes(), BYTES.len() as u64);
    });
}

/// A chunk put long ago and never committed is about to be collected (a suspect, quiet for
/// two rounds); a writer puts the same bytes and commits while a round runs.
#[test]
fn a_put_survives_a_collection_round() {
    loom::model(|| {
        let store = Arc::new(RamStore::new());
        let id = store.put_chunk(BYTES).unwrap();
        let none = HashSet::new();
        store.collect_garbage(&none).unwrap();
        store.collect_garbage(&none).unwrap();
        assert!(
            readable(&store, &id),
            "two rounds make it a quiet suspect, not freed yet"
        );

        let writer = put_and_commit(&store);
        store.collect_garbage(&none).unwrap();
        writer
            .join()
            .unwrap()
            .expect("the writer's chunk was collected between its put and its commit");
        store.collect_garbage(&none).unwrap();
        store.collect_garbage(&none).unwrap();
        assert!(
            readable(&store, &id),
            "a committed chunk is never collected"
        );
    });
}

/// A growing slot commits its kept piece again while another writer puts the same bytes for
/// another file and the slot then drops the piece (the claim a kept piece must not take).
#[test]
fn kept_pieces_leave_other_writers_claims_alone() {
    loom::model(|| {
        let store = Arc::new(RamStore::new());
        let line = store.put_chunk(BYTES).unwrap();
        store
            .commit(set(1, Some(line)), Durability::Process)
            .unwrap();

        let writer = put_and_commit(&store);
        let more = store.put_chunk(b"more").unwrap();
        let grow = Batch {
            changes: vec![Change::SetPieces {
                ino: 1,
                idx: 0,
                pieces: vec![
                    Piece {
                        id: line,
                        len: BYTES.len() as u32,
                    },
                    Piece { id: more, len: 4 },
                ],
            }],
        };
        store.commit(grow, Durability::Process).unwrap();
        store.commit(set(1, None), Durability::Process).unwrap();
        writer
            .join()
            .unwrap()
            .expect("the writer's chunk was freed between its put and its commit");
        assert!(readable(&store, &line));
    });
}
