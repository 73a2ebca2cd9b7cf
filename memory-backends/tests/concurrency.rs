//! Many threads writing and reading chunks at once, as FUSE workers do.

mod common;

use agentfs_memory::*;
use common::*;
use std::sync::Arc;

const THREADS: usize = 8;
const PER_THREAD: usize = 64;

/// Chunk `i` of thread `t`; every fourth one is shared by all threads to exercise dedup races.
fn chunk(t: usize, i: usize) -> Vec<u8> {
    let seed = if i & 3 == 0 { i } else { t * 10_000 + i };
    let len = 1 + (seed * 7919) % CHUNK_SIZE;
    (0..len)
        .map(|j| (seed.wrapping_mul(31) ^ j) as u8)
        .collect()
}

fn hammer(store: Arc<dyn Store>) {
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let mut ids = Vec::new();
                for i in 0..PER_THREAD {
                    let data = chunk(t, i);
                    let id = store.put_chunk(&data).unwrap();
                    assert_eq!(id, ChunkId::of(&data));
                    ids.push((id, data));
                    // Read back something written earlier, at an offset.
                    let (old, bytes) = &ids[i / 2];
                    let off = bytes.len() / 3;
                    let mut buf = vec![0u8; 4096];
                    let n = store.read_at(old, off, &mut buf).unwrap();
                    assert_eq!(&buf[..n], &bytes[off..(off + 4096).min(bytes.len())]);
                }
                let batch = Batch {
                    changes: vec![Change::SetChunks {
                        ino: t as u64 + 10,
                        chunks: ids
                            .iter()
                            .enumerate()
                            .map(|(i, (id, _))| (i as u64, Some(*id)))
                            .collect(),
                    }],
                };
                store.commit(batch, Durability::Process).unwrap();
                for (id, bytes) in &ids {
                    assert_eq!(&read_all(&*store, id), bytes);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let mut distinct = std::collections::HashMap::new();
    for t in 0..THREADS {
        for i in 0..PER_THREAD {
            let data = chunk(t, i);
            distinct.insert(ChunkId::of(&data), data.len() as u64);
        }
    }
    assert_eq!(store.chunk_bytes(), distinct.values().sum::<u64>());
    assert_eq!(store.load().unwrap().chunks.len(), THREADS * PER_THREAD);
}

#[test]
fn eight_threads_on_a_ram_store() {
    hammer(Arc::new(RamStore::new()));
}

#[test]
fn eight_threads_on_a_sqlite_store() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(open_sqlite(tmp.path()));
    hammer(store.clone());
    assert!(store.verify_chunks().unwrap().is_empty());
    drop(store);
    // Everything committed by the threads is there after reopening.
    let store = open_sqlite(tmp.path());
    assert_eq!(store.load().unwrap().chunks.len(), THREADS * PER_THREAD);
    assert!(store.verify_chunks().unwrap().is_empty());
}
