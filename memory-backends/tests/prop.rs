//! Random batches applied to a RamStore and a SqliteStore load identically, including which
//! batches are refused; and the SqliteStore loads the same again after reopening.

mod common;

use agentfs_memory::*;
use common::*;
use proptest::prelude::*;

/// Chunk contents both stores hold; index `POOL.len()` stands for a chunk neither holds.
const POOL: [&[u8]; 4] = [b"alpha", b"beta", b"", b"delta delta"];

fn chunk_id(i: usize) -> ChunkId {
    ChunkId::of(POOL.get(i).copied().unwrap_or(b"not in the pool"))
}

fn name() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec![b"a".to_vec(), b"b".to_vec(), b"\xffz".to_vec()])
}

fn ino() -> impl Strategy<Value = Ino> {
    prop_oneof![4 => 1u64..5, 1 => Just(u64::MAX)]
}

fn record() -> impl Strategy<Value = InodeRecord> {
    (
        ino(),
        1u8..=7,
        any::<u16>(),
        any::<u32>(),
        any::<u64>(),
        any::<i64>(),
        any::<Vec<u8>>(),
    )
        .prop_map(|(ino, kind, perm, uid, size, time, target)| InodeRecord {
            ino,
            kind: FileKind::from_code(kind).unwrap_or(FileKind::File),
            perm,
            uid,
            gid: uid ^ 1,
            nlink: uid % 5,
            size,
            atime: time,
            mtime: time / 2,
            ctime: -time / 3,
            crtime: 0,
            rdev: uid,
            symlink_target: target,
        })
}

fn change() -> impl Strategy<Value = Change> {
    // The unknown chunk is drawn rarely so most batches succeed.
    let slot = prop_oneof![
        15 => (0usize..POOL.len()).prop_map(|i| Some(chunk_id(i))),
        5 => Just(None),
        1 => Just(Some(chunk_id(POOL.len()))),
    ];
    prop_oneof![
        record().prop_map(Change::PutInode),
        ino().prop_map(Change::DeleteInode),
        (ino(), name(), ino()).prop_map(|(parent, name, ino)| Change::PutDirent {
            parent,
            name,
            ino
        }),
        (ino(), name()).prop_map(|(parent, name)| Change::DeleteDirent { parent, name }),
        (ino(), prop::collection::vec((0u64..6, slot), 0..4))
            .prop_map(|(ino, chunks)| Change::SetChunks { ino, chunks }),
        (ino(), 0u64..6).prop_map(|(ino, from_index)| Change::TruncateChunks { ino, from_index }),
        (ino(), name(), any::<Vec<u8>>()).prop_map(|(ino, name, value)| Change::SetXattr {
            ino,
            name,
            value
        }),
        (ino(), name()).prop_map(|(ino, name)| Change::RemoveXattr { ino, name }),
        (
            prop::sample::select(vec!["next_ino", "agents", "store.nope", "schema_version"]),
            "[a-z]{0,4}"
        )
            .prop_map(|(k, value)| Change::SetMeta {
                key: k.to_string(),
                value
            }),
        "[a-z]{1,6}".prop_map(|op| Change::Audit(Box::new(audit(&op)))),
        // The collector's own change: refused from a caller by both stores.
        (0usize..POOL.len()).prop_map(|i| Change::DropChunks(vec![chunk_id(i)])),
        // Copies of some of the inodes under numbers no other change uses, each source and
        // copy once (what a snapshot writes); a later copy may land on an earlier one's.
        (
            prop::sample::subsequence(vec![1u64, 2, 3, 4, u64::MAX], 0..=5),
            0u64..3
        )
            .prop_map(|(sources, shift)| Change::CopyNodes(
                (100 + shift..)
                    .zip(sources)
                    .map(|(copy, source)| (source, copy))
                    .collect()
            )),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn ram_and_sqlite_agree(
        batches in prop::collection::vec(
            (prop::collection::vec(change(), 0..8), any::<bool>(), 0usize..4), 1..8)
    ) {
        let ram = RamStore::new();
        let tmp = tempfile::tempdir().unwrap();
        let sql = open_sqlite(tmp.path());
        for (changes, disk, gc_rounds) in batches {
            // Like the core, put the bytes of every chunk a batch names before committing it:
            // a RamStore frees a chunk once nothing references it.
            for c in &changes {
                if let Change::SetChunks { chunks, .. } = c {
                    for (i, data) in POOL.iter().enumerate() {
                        if chunks.iter().any(|(_, id)| *id == Some(chunk_id(i))) {
                            ram.put_chunk(data).unwrap();
                            sql.put_chunk(data).unwrap();
                        }
                    }
                }
            }
            let durability = if disk { Durability::Disk } else { Durability::Process };
            let batch = Batch { changes };
            let r = ram.commit(batch.clone(), durability);
            let s = sql.commit(batch, durability);
            prop_assert_eq!(r.is_ok(), s.is_ok(), "ram: {:?}, sqlite: {:?}", r, s);
            // Garbage collection between batches never takes a chunk a chunk map names.
            let none = std::collections::HashSet::new();
            for _ in 0..gc_rounds {
                ram.collect_garbage(&none).unwrap();
                sql.collect_garbage(&none).unwrap();
            }
            let (r, s) = (ram.load().unwrap(), sql.load().unwrap());
            assert_same(&r, &s);
            for (_, _, id) in &s.chunks {
                prop_assert_eq!(ChunkId::of(&read_all(&sql, id)), *id);
                prop_assert_eq!(ChunkId::of(&read_all(&ram, id)), *id);
            }
        }
        let expected = sql.load().unwrap();
        drop(sql);
        let reopened = open_sqlite(tmp.path());
        assert_same(&reopened.load().unwrap(), &expected);
        for (_, _, id) in &expected.chunks {
            let bytes = read_all(&reopened, id);
            prop_assert_eq!(ChunkId::of(&bytes), *id);
        }
    }
}
