//! Core tests without a mount: the tree rules, POSIX behaviour of the memory classes, and a
//! model-based test of random operation sequences against a plain in-memory model, including
//! reloads from the durable store.

use crate::node::{Body, Slot};
use crate::{Caller, FileKind, Ino, KillSuidgid, SetAttr, Vfs, VfsError, ROOT_INO};
use agentfs_memory::InodeRecord;
use agentfs_memory::{RamStore, Store, CHUNK_SIZE};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

struct Fixture {
    durable: Arc<RamStore>,
    vfs: Arc<Vfs>,
    policy: Arc<agentfs_policy::Engine>,
}

fn op() -> Caller {
    Caller::kernel()
}

impl Fixture {
    /// Under the built-in policy.
    fn new() -> Self {
        Self::with_engine(agentfs_policy::Engine::builtin())
    }

    /// Under the built-in policy and a policy file holding `toml`.
    fn with_policy(toml: &str) -> Self {
        let engine =
            agentfs_policy::Engine::load(vec![agentfs_policy::Source::new("p.toml", toml)])
                .expect("policy");
        Self::with_engine(engine)
    }

    fn with_engine(engine: agentfs_policy::Engine) -> Self {
        let durable = Arc::new(RamStore::new());
        let policy = Arc::new(engine);
        let vfs = Self::load(durable.clone(), &policy);
        Fixture {
            durable,
            vfs,
            policy,
        }
    }

    fn load(durable: Arc<dyn Store>, policy: &Arc<agentfs_policy::Engine>) -> Arc<Vfs> {
        Vfs::with_stores(
            Path::new("/nonexistent"),
            durable,
            Arc::new(RamStore::new()),
            policy.clone(),
        )
        .expect("load")
    }

    /// Simulates a daemon restart: the durable store stays, RAM is gone.
    fn restart(&mut self) {
        self.vfs.shutdown().expect("shutdown");
        self.vfs = Self::load(self.durable.clone(), &self.policy);
    }

    fn ino(&self, path: &str) -> Result<Ino, VfsError> {
        let mut ino = ROOT_INO;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            ino = self.vfs.lookup(&op(), ino, part.as_bytes())?.ino;
        }
        Ok(ino)
    }

    fn agent(&self, name: &str) {
        self.vfs
            .mkdir(&op(), ROOT_INO, name.as_bytes(), 0o755)
            .expect("register agent");
    }

    fn write_file(&self, dir: &str, name: &str, data: &[u8]) -> Ino {
        let parent = self.ino(dir).expect("dir");
        let (attr, _) = self
            .vfs
            .create(&op(), parent, name.as_bytes(), 0o644, libc::O_WRONLY)
            .expect("create");
        self.vfs
            .write(&op(), attr.ino, 0, data, false)
            .expect("write");
        self.vfs.release(attr.ino, 0).expect("close");
        attr.ino
    }

    fn read_all(&self, ino: Ino) -> Vec<u8> {
        let size = self.vfs.getattr(&op(), ino).expect("getattr").size;
        self.vfs
            .read(&op(), ino, 0, 0, size as u32 + 10)
            .expect("read")
    }
}

#[test]
fn agent_layout_is_created_and_fixed() {
    let f = Fixture::new();
    f.agent("a");
    for p in [
        "a/mem/working",
        "a/mem/episodic",
        "a/mem/semantic",
        "a/state",
        "a/policy",
    ] {
        let ino = f.ino(p).unwrap_or_else(|e| panic!("{p}: {e}"));
        assert_eq!(f.vfs.getattr(&op(), ino).unwrap().kind, FileKind::Dir);
    }
    let a = f.ino("a").unwrap();
    let mem = f.ino("a/mem").unwrap();
    fn err<T>(r: Result<T, VfsError>) -> Option<i32> {
        r.err().map(|e| e.errno())
    }
    assert_eq!(
        err(f.vfs.mkdir(&op(), a, b"extra", 0o755)),
        Some(libc::EPERM)
    );
    assert_eq!(err(f.vfs.rmdir(&op(), mem, b"working")), Some(libc::EPERM));
    assert_eq!(
        err(f.vfs.rename(&op(), a, b"mem", a, b"mem2", 0)),
        Some(libc::EPERM)
    );
    let policy = f.ino("a/policy").unwrap();
    assert_eq!(
        err(f.vfs.mknod(&op(), policy, b"x", FileKind::File, 0o644, 0)),
        Some(libc::EROFS)
    );
    let state = f.ino("a/state").unwrap();
    assert_eq!(
        err(f.vfs.mknod(&op(), state, b"cp", FileKind::File, 0o644, 0)),
        Some(libc::EROFS)
    );
    assert_eq!(
        err(f
            .vfs
            .mknod(&op(), ROOT_INO, b"file", FileKind::File, 0o644, 0)),
        Some(libc::EPERM)
    );
}

#[test]
fn agent_names_are_checked() {
    let f = Fixture::new();
    let err = |name: &[u8]| {
        f.vfs
            .mkdir(&op(), ROOT_INO, name, 0o755)
            .err()
            .map(|e| e.errno())
    };
    assert_eq!(err(b"sys"), Some(libc::EEXIST));
    assert_eq!(err(b".hidden"), Some(libc::EINVAL));
    assert_eq!(err(b"sp ace"), Some(libc::EINVAL));
    assert_eq!(err(&[b'a'; 256]), Some(libc::ENAMETOOLONG));
    assert_eq!(err(b"ok-1"), None);
    assert_eq!(err(b"ok-1"), Some(libc::EEXIST));
}

#[test]
fn sys_tree_lists_agents_and_refuses_writes() {
    let f = Fixture::new();
    f.agent("a");
    f.agent("b");
    let agents = f.ino("sys/agents").unwrap();
    let mut names = Vec::new();
    f.vfs
        .readdir(&op(), agents, 0, &mut |e| {
            names.push(String::from_utf8_lossy(&e.name).into_owned());
            false
        })
        .unwrap();
    assert_eq!(names, vec![".", "..", "a", "b"]);
    let status = f.ino("sys/agents/b/status").unwrap();
    let opened = f.vfs.open_file(&op(), status, libc::O_RDONLY).unwrap();
    let text = f.vfs.read(&op(), status, opened.fh, 0, 65536).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&text).unwrap();
    assert_eq!(json["agent"], "b");
    assert_eq!(json["state"], "running");
    assert_eq!(
        f.vfs
            .open_file(&op(), status, libc::O_WRONLY)
            .err()
            .map(|e| e.errno()),
        Some(libc::EPERM)
    );
    let sys = f.ino("sys").unwrap();
    assert_eq!(
        f.vfs
            .mkdir(&op(), sys, b"x", 0o755)
            .err()
            .map(|e| e.errno()),
        Some(libc::EPERM)
    );
}

#[test]
fn durable_classes_survive_restart_and_working_does_not() {
    let mut f = Fixture::new();
    f.agent("a");
    let big: Vec<u8> = (0..(CHUNK_SIZE * 3 + 17))
        .map(|i| (i % 251) as u8)
        .collect();
    f.write_file("a/mem/semantic", "big", &big);
    f.write_file("a/mem/episodic", "log", b"one\n");
    f.write_file("a/mem/working", "scratch", b"tmp");
    let before = f.ino("a/mem/semantic/big").unwrap();
    f.restart();
    let after = f.ino("a/mem/semantic/big").unwrap();
    assert_eq!(before, after, "inode numbers are stable across restarts");
    assert_eq!(f.read_all(after), big);
    assert_eq!(f.read_all(f.ino("a/mem/episodic/log").unwrap()), b"one\n");
    assert!(matches!(
        f.ino("a/mem/working/scratch"),
        Err(VfsError::NotFound)
    ));
    let status = f.vfs.agent_status("a").unwrap();
    assert_eq!(status["bytes"]["semantic"], big.len() as u64);
    assert_eq!(status["bytes"]["working"], 0);
}

/// Under the built-in policy, rewriting history is a violation: EACCES, and the agent is
/// killed.
#[test]
fn rewriting_episodic_memory_violates_the_builtin_policy() {
    let f = Fixture::new();
    f.agent("a");
    let ino = f.write_file("a/mem/episodic", "log", b"one\n");
    let err = f
        .vfs
        .write(&op(), ino, 0, b"X", false)
        .expect_err("overwrite");
    assert_eq!(err.errno(), libc::EACCES, "{err}");
    assert_eq!(f.vfs.agent_status("a").unwrap()["state"], "killed");
    assert_eq!(f.read_all(ino), b"one\n");
}

/// Without the policy's rule, the tree's own rule still keeps episodic memory append-only.
#[test]
fn episodic_is_append_only() {
    let f = Fixture::with_policy("[builtin]\ndisable = [\"episodic-append-only\"]\n");
    f.agent("a");
    let ino = f.write_file("a/mem/episodic", "log", b"one\n");
    let dir = f.ino("a/mem/episodic").unwrap();
    let errno = |r: Result<(), VfsError>| r.err().map(|e| e.errno());
    assert_eq!(
        errno(f.vfs.write(&op(), ino, 0, b"X", false).map(|_| ())),
        Some(libc::EPERM)
    );
    assert_eq!(
        errno(f.vfs.write(&op(), ino, 4, b"two\n", false).map(|_| ())),
        None
    );
    assert_eq!(
        errno(f.vfs.write(&op(), ino, 0, b"three\n", true).map(|_| ())),
        None
    );
    let trunc = SetAttr {
        size: Some(0),
        ..Default::default()
    };
    assert_eq!(
        errno(f.vfs.setattr(&op(), ino, trunc).map(|_| ())),
        Some(libc::EPERM)
    );
    let chmod = SetAttr {
        mode: Some(0o600),
        ..Default::default()
    };
    assert_eq!(
        errno(f.vfs.setattr(&op(), ino, chmod).map(|_| ())),
        Some(libc::EPERM)
    );
    assert_eq!(errno(f.vfs.unlink(&op(), dir, b"log")), Some(libc::EPERM));
    assert_eq!(
        errno(f.vfs.rename(&op(), dir, b"log", dir, b"log2", 0)),
        Some(libc::EPERM)
    );
    assert_eq!(f.read_all(ino), b"one\ntwo\nthree\n");
}

#[test]
fn rename_across_classes_is_exdev_and_within_replaces() {
    let f = Fixture::new();
    f.agent("a");
    f.agent("b");
    f.write_file("a/mem/semantic", "x", b"1");
    f.write_file("a/mem/semantic", "y", b"2");
    let sem = f.ino("a/mem/semantic").unwrap();
    let work = f.ino("a/mem/working").unwrap();
    let other = f.ino("b/mem/semantic").unwrap();
    let errno = |r: Result<(), VfsError>| r.err().map(|e| e.errno());
    assert_eq!(
        errno(f.vfs.rename(&op(), sem, b"x", work, b"x", 0)),
        Some(libc::EXDEV)
    );
    assert_eq!(
        errno(f.vfs.rename(&op(), sem, b"x", other, b"x", 0)),
        Some(libc::EXDEV)
    );
    assert_eq!(
        errno(f.vfs.rename(&op(), sem, b"x", sem, b"y", 1)),
        Some(libc::EEXIST),
        "RENAME_NOREPLACE"
    );
    assert_eq!(errno(f.vfs.rename(&op(), sem, b"x", sem, b"y", 0)), None);
    assert_eq!(f.read_all(f.ino("a/mem/semantic/y").unwrap()), b"1");
    assert!(f.ino("a/mem/semantic/x").is_err());
}

#[test]
fn unlinked_open_file_keeps_working_until_close() {
    let mut f = Fixture::new();
    f.agent("a");
    let ino = f.write_file("a/mem/semantic", "f", b"data");
    let dir = f.ino("a/mem/semantic").unwrap();
    f.vfs.open_file(&op(), ino, libc::O_RDWR).unwrap();
    f.vfs.unlink(&op(), dir, b"f").unwrap();
    f.vfs.write(&op(), ino, 4, b"more", false).unwrap();
    assert_eq!(f.read_all(ino), b"datamore");
    assert_eq!(f.vfs.getattr(&op(), ino).unwrap().nlink, 0);
    f.vfs.release(ino, 0).unwrap();
    assert!(f.vfs.getattr(&op(), ino).is_err());
    f.restart();
    assert!(f.ino("a/mem/semantic/f").is_err());
}

/// Writes and truncates the kernel marks as unprivileged clear set-user-ID, and set-group-ID
/// with group-exec (Linux's should_remove_suid); the change survives a restart.
#[test]
fn kill_suidgid_clears_setuid_and_exec_setgid() {
    let mut f = Fixture::new();
    f.agent("a");
    let ino = f.write_file("a/mem/semantic", "tool", b"#!");
    let perm = |f: &Fixture| f.vfs.getattr(&op(), ino).unwrap().perm;
    let chmod = |f: &Fixture, mode| {
        let set = SetAttr {
            mode: Some(mode),
            ..Default::default()
        };
        f.vfs.setattr(&op(), ino, set).unwrap();
    };
    chmod(&f, 0o6755);
    f.vfs
        .write_killing(&op(), ino, 0, b"x", false, false)
        .unwrap();
    assert_eq!(perm(&f), 0o6755, "a write without the flag keeps them");
    f.vfs
        .write_killing(&op(), ino, 0, b"x", false, true)
        .unwrap();
    assert_eq!(perm(&f), 0o0755);
    chmod(&f, 0o6745);
    f.vfs
        .write_killing(&op(), ino, 0, b"x", false, true)
        .unwrap();
    assert_eq!(perm(&f), 0o2745, "setgid without group-exec stays");
    chmod(&f, 0o6755);
    let truncate = |kill| SetAttr {
        size: Some(1),
        kill_suidgid: kill,
        ..Default::default()
    };
    // The daemon (pid 0) has CAP_FSETID.
    f.vfs
        .setattr(&op(), ino, truncate(KillSuidgid::UnlessCapFsetid))
        .unwrap();
    assert_eq!(perm(&f), 0o6755);
    f.vfs
        .setattr(&op(), ino, truncate(KillSuidgid::Yes))
        .unwrap();
    assert_eq!(perm(&f), 0o0755);
    chmod(&f, 0o6755);
    f.vfs.open_file(&op(), ino, libc::O_WRONLY).unwrap();
    f.vfs
        .write_killing(&op(), ino, 0, b"y", false, true)
        .unwrap();
    f.vfs.release(ino, 0).unwrap();
    f.restart();
    let ino = f.ino("a/mem/semantic/tool").unwrap();
    assert_eq!(f.vfs.getattr(&op(), ino).unwrap().perm, 0o0755);
}

#[test]
fn holes_read_as_zeros_and_truncate_drops_content() {
    let f = Fixture::new();
    f.agent("a");
    let ino = f.write_file("a/mem/semantic", "sparse", b"");
    let far = (CHUNK_SIZE * 5 + 3) as u64;
    f.vfs.write(&op(), ino, far, b"end", false).unwrap();
    let data = f.read_all(ino);
    assert_eq!(data.len() as u64, far + 3);
    assert!(data[..far as usize].iter().all(|b| *b == 0));
    let shrink = SetAttr {
        size: Some(2),
        ..Default::default()
    };
    f.vfs.setattr(&op(), ino, shrink).unwrap();
    let grow = SetAttr {
        size: Some(far + 3),
        ..Default::default()
    };
    f.vfs.setattr(&op(), ino, grow).unwrap();
    assert!(f.read_all(ino).iter().all(|b| *b == 0));
}

#[test]
fn directories_count_links_and_refuse_removal_when_full() {
    let f = Fixture::new();
    f.agent("a");
    let sem = f.ino("a/mem/semantic").unwrap();
    let d = f.vfs.mkdir(&op(), sem, b"d", 0o755).unwrap();
    f.vfs.mkdir(&op(), d.ino, b"sub", 0o755).unwrap();
    assert_eq!(f.vfs.getattr(&op(), d.ino).unwrap().nlink, 3);
    assert_eq!(
        f.vfs.rmdir(&op(), sem, b"d").err().map(|e| e.errno()),
        Some(libc::ENOTEMPTY)
    );
    assert_eq!(
        f.vfs
            .rename(&op(), sem, b"d", d.ino, b"inside", 0)
            .err()
            .map(|e| e.errno()),
        Some(libc::EINVAL)
    );
    f.vfs.rmdir(&op(), d.ino, b"sub").unwrap();
    assert_eq!(f.vfs.getattr(&op(), d.ino).unwrap().nlink, 2);
    f.vfs.rmdir(&op(), sem, b"d").unwrap();
}

#[test]
fn hard_links_share_content_and_count() {
    let mut f = Fixture::new();
    f.agent("a");
    let ino = f.write_file("a/mem/semantic", "f", b"shared");
    let sem = f.ino("a/mem/semantic").unwrap();
    let attr = f.vfs.link(&op(), ino, sem, b"g").unwrap();
    assert_eq!(attr.nlink, 2);
    f.vfs.unlink(&op(), sem, b"f").unwrap();
    f.restart();
    let g = f.ino("a/mem/semantic/g").unwrap();
    assert_eq!(g, ino);
    assert_eq!(f.vfs.getattr(&op(), g).unwrap().nlink, 1);
    assert_eq!(f.read_all(g), b"shared");
}

#[test]
fn xattrs_round_trip_and_respect_flags() {
    let mut f = Fixture::new();
    f.agent("a");
    let ino = f.write_file("a/mem/semantic", "f", b"");
    f.vfs.setxattr(&op(), ino, b"user.k", b"v", 0).unwrap();
    assert_eq!(
        f.vfs
            .setxattr(&op(), ino, b"user.k", b"v", 1)
            .err()
            .map(|e| e.errno()),
        Some(libc::EEXIST)
    );
    assert_eq!(
        f.vfs
            .setxattr(&op(), ino, b"system.posix_acl_access", b"v", 0)
            .err()
            .map(|e| e.errno()),
        Some(libc::EOPNOTSUPP)
    );
    f.restart();
    let ino = f.ino("a/mem/semantic/f").unwrap();
    assert_eq!(f.vfs.getxattr(&op(), ino, b"user.k").unwrap(), b"v");
    assert_eq!(f.vfs.listxattr(&op(), ino).unwrap(), b"user.k\0");
    f.vfs.removexattr(&op(), ino, b"user.k").unwrap();
    assert_eq!(
        f.vfs
            .getxattr(&op(), ino, b"user.k")
            .err()
            .map(|e| e.errno()),
        Some(libc::ENODATA)
    );
}

#[test]
fn bound_agent_cannot_reach_another_agents_tree() {
    let f = Fixture::new();
    f.agent("a");
    f.agent("b");
    let b_sem = f.ino("b/mem/semantic").unwrap();
    let mallory = Caller {
        agent: Some(Arc::from("a")),
        ..Caller::kernel()
    };
    assert_eq!(
        f.vfs.lookup(&mallory, b_sem, b"x").err().map(|e| e.errno()),
        Some(libc::EACCES)
    );
    assert_eq!(
        f.vfs
            .mknod(&mallory, b_sem, b"x", FileKind::File, 0o644, 0)
            .err()
            .map(|e| e.errno()),
        Some(libc::EACCES)
    );
}

// ----- model-based test ---------------------------------------------------------------------

#[derive(Debug, Clone)]
enum ModelOp {
    Create(u8),
    Write(u8, u32, Vec<u8>),
    /// A write at the end of the file: after a commit, the slot grows by a stored piece.
    Append(u8, Vec<u8>),
    Truncate(u8, u32),
    Unlink(u8),
    Rename(u8, u8),
    Restart,
    /// `mkdir state/sN`: a checkpoint, which must keep the files as they were.
    Snapshot,
}

fn model_op() -> impl Strategy<Value = ModelOp> {
    let name = 0u8..6;
    // Offsets around chunk boundaries matter most.
    let offset = prop_oneof![
        0u32..4096,
        (CHUNK_SIZE as u32 - 64)..(CHUNK_SIZE as u32 + 64),
        0u32..(3 * CHUNK_SIZE as u32),
    ];
    prop_oneof![
        name.clone().prop_map(ModelOp::Create),
        (
            name.clone(),
            offset.clone(),
            proptest::collection::vec(any::<u8>(), 0..3000)
        )
            .prop_map(|(n, o, d)| ModelOp::Write(n, o, d)),
        (name.clone(), proptest::collection::vec(any::<u8>(), 1..400))
            .prop_map(|(n, d)| ModelOp::Append(n, d)),
        (name.clone(), proptest::collection::vec(any::<u8>(), 1..400))
            .prop_map(|(n, d)| ModelOp::Append(n, d)),
        (name.clone(), offset).prop_map(|(n, s)| ModelOp::Truncate(n, s)),
        name.clone().prop_map(ModelOp::Unlink),
        (name.clone(), name).prop_map(|(a, b)| ModelOp::Rename(a, b)),
        Just(ModelOp::Restart),
        Just(ModelOp::Snapshot),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random create/write/truncate/unlink/rename/restart sequences on semantic memory behave
    /// like a map of byte vectors, and survive restarts. Checkpoints taken among them keep
    /// the map as it was, and come back from a restart with every attribute as it was.
    #[test]
    fn semantic_memory_behaves_like_a_map(ops in proptest::collection::vec(model_op(), 1..40)) {
        let mut f = Fixture::new();
        f.agent("m");
        let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut checkpoints: Vec<(String, BTreeMap<String, Vec<u8>>)> = Vec::new();
        let dir = || "m/mem/semantic";
        for op_ in ops {
            let sem = f.ino(dir()).unwrap();
            match op_ {
                ModelOp::Create(n) => {
                    let name = format!("f{n}");
                    let r = f.vfs.mknod(&op(), sem, name.as_bytes(), FileKind::File, 0o644, 0);
                    match model.entry(name) {
                        std::collections::btree_map::Entry::Occupied(_) => {
                            prop_assert_eq!(r.err().map(|e| e.errno()), Some(libc::EEXIST));
                        }
                        std::collections::btree_map::Entry::Vacant(slot) => {
                            prop_assert!(r.is_ok());
                            slot.insert(Vec::new());
                        }
                    }
                }
                ModelOp::Write(n, off, data) => {
                    let name = format!("f{n}");
                    let Some(content) = model.get_mut(&name) else { continue };
                    let ino = f.ino(&format!("{}/{name}", dir())).unwrap();
                    f.vfs.open_file(&op(), ino, libc::O_RDWR).unwrap();
                    f.vfs.write(&op(), ino, off as u64, &data, false).unwrap();
                    f.vfs.release(ino, 0).unwrap();
                    let end = off as usize + data.len();
                    if !data.is_empty() {
                        if content.len() < end { content.resize(end, 0); }
                        content[off as usize..end].copy_from_slice(&data);
                    }
                }
                ModelOp::Append(n, data) => {
                    let name = format!("f{n}");
                    let Some(content) = model.get_mut(&name) else { continue };
                    let ino = f.ino(&format!("{}/{name}", dir())).unwrap();
                    f.vfs.open_file(&op(), ino, libc::O_WRONLY | libc::O_APPEND).unwrap();
                    f.vfs.write(&op(), ino, 0, &data, true).unwrap();
                    f.vfs.release(ino, 0).unwrap();
                    content.extend_from_slice(&data);
                }
                ModelOp::Truncate(n, size) => {
                    let name = format!("f{n}");
                    let Some(content) = model.get_mut(&name) else { continue };
                    let ino = f.ino(&format!("{}/{name}", dir())).unwrap();
                    let set = SetAttr { size: Some(size as u64), ..Default::default() };
                    f.vfs.setattr(&op(), ino, set).unwrap();
                    content.resize(size as usize, 0);
                }
                ModelOp::Unlink(n) => {
                    let name = format!("f{n}");
                    let r = f.vfs.unlink(&op(), sem, name.as_bytes());
                    prop_assert_eq!(r.is_ok(), model.remove(&name).is_some());
                }
                ModelOp::Rename(a, b) => {
                    let (from, to) = (format!("f{a}"), format!("f{b}"));
                    let r = f.vfs.rename(&op(), sem, from.as_bytes(), sem, to.as_bytes(), 0);
                    match model.remove(&from) {
                        Some(c) => { prop_assert!(r.is_ok()); model.insert(to, c); }
                        None => prop_assert_eq!(r.err().map(|e| e.errno()), Some(libc::ENOENT)),
                    }
                }
                ModelOp::Restart => {
                    let before: Vec<_> = checkpoints
                        .iter()
                        .map(|(name, _)| f.full_tree(&format!("m/state/{name}")))
                        .collect();
                    f.restart();
                    for ((name, _), before) in checkpoints.iter().zip(before) {
                        prop_assert_eq!(f.full_tree(&format!("m/state/{name}")), before);
                    }
                }
                ModelOp::Snapshot => {
                    let name = format!("s{}", checkpoints.len());
                    f.snapshot("m", &name).unwrap();
                    checkpoints.push((name, model.clone()));
                }
            }
            for (name, kept) in &checkpoints {
                let files: Vec<String> = f.tree(&format!("m/state/{name}/semantic")).into_keys().collect();
                prop_assert_eq!(files, kept.keys().cloned().collect::<Vec<_>>());
                for (file, content) in kept {
                    let ino = f.ino(&format!("m/state/{name}/semantic/{file}")).unwrap();
                    prop_assert_eq!(&f.read_all(ino), content, "{}/{}", name, file);
                }
            }
            // The tree holds exactly the model's files with the model's bytes.
            let mut names = Vec::new();
            f.vfs.readdir(&op(), sem, 0, &mut |e| { names.push(String::from_utf8_lossy(&e.name).into_owned()); false }).unwrap();
            names.retain(|n| n != "." && n != "..");
            names.sort();
            prop_assert_eq!(&names, &model.keys().cloned().collect::<Vec<_>>());
            for (name, content) in &model {
                let ino = f.ino(&format!("{}/{name}", dir())).unwrap();
                prop_assert_eq!(&f.read_all(ino), content, "{}", name);
            }
        }
    }
}

#[test]
fn fallocate_grows_with_zeros_and_refuses_punching() {
    let f = Fixture::new();
    f.agent("a");
    let ino = f.write_file("a/mem/semantic", "f", b"abc");
    f.vfs.fallocate(&op(), ino, 0, 10, 0).unwrap();
    assert_eq!(f.read_all(ino), b"abc\0\0\0\0\0\0\0");
    f.vfs.fallocate(&op(), ino, 0, 2, 0).unwrap();
    assert_eq!(f.vfs.getattr(&op(), ino).unwrap().size, 10, "never shrinks");
    f.vfs
        .fallocate(&op(), ino, 0, 100, libc::FALLOC_FL_KEEP_SIZE)
        .unwrap();
    assert_eq!(f.vfs.getattr(&op(), ino).unwrap().size, 10);
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    assert_eq!(
        f.vfs
            .fallocate(&op(), ino, 0, 2, punch)
            .err()
            .map(|e| e.errno()),
        Some(libc::EOPNOTSUPP)
    );
}

#[test]
fn reading_past_a_short_dirty_buffer_gives_zeros() {
    let f = Fixture::new();
    f.agent("a");
    let ino = f.write_file("a/mem/semantic", "f", b"");
    f.vfs.open_file(&op(), ino, libc::O_RDWR).unwrap();
    // Chunk 0 holds 10 bytes in RAM; the file is grown well past it without touching it.
    f.vfs.write(&op(), ino, 0, &[7u8; 10], false).unwrap();
    f.vfs
        .write(&op(), ino, CHUNK_SIZE as u64 + 5, b"z", false)
        .unwrap();
    let tail = f.vfs.read(&op(), ino, 0, 98304, 4096).unwrap();
    assert_eq!(tail, vec![0u8; 4096]);
    f.vfs.release(ino, 0).unwrap();
}

#[test]
fn readdirplus_pages_through_a_large_directory_exactly_once() {
    let f = Fixture::new();
    f.agent("a");
    let sem = f.ino("a/mem/semantic").unwrap();
    for i in 0..200 {
        f.vfs
            .mknod(
                &op(),
                sem,
                format!("f{i}").as_bytes(),
                FileKind::File,
                0o644,
                0,
            )
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut offset = 0;
    loop {
        let mut page = Vec::new();
        f.vfs
            .readdirplus(&op(), sem, offset, &mut |e, attr| {
                if page.len() == 70 {
                    return true;
                }
                assert_eq!(e.ino, attr.ino);
                page.push((e.offset, String::from_utf8_lossy(&e.name).into_owned()));
                false
            })
            .unwrap();
        let Some(&(last, _)) = page.last() else { break };
        offset = last;
        seen.extend(page.into_iter().map(|(_, n)| n));
    }
    let mut expected: Vec<String> = (0..200).map(|i| format!("f{i}")).collect();
    expected.extend([".".to_string(), "..".to_string()]);
    expected.sort();
    seen.sort();
    assert_eq!(seen, expected);
}

/// A large write is scanned in pieces on all cores: a secret straddling any piece boundary,
/// or completed by the bytes already around the write, is still caught, and nothing of the
/// refused write is applied; a large clean append to an append-only log is still an append.
#[test]
fn large_writes_are_scanned_in_pieces_exactly() {
    const KEY: &[u8] = b"AKIAIOSFODNN7EXAMPLE";
    let len = 1usize << 20;
    for at in [
        0,
        (128 << 10) - 7,
        (256 << 10) - 1,
        (512 << 10) - 10,
        len - KEY.len(),
    ] {
        let f = Fixture::new();
        f.agent("a");
        let ino = f.write_file("a/mem/semantic", "big", b"");
        let mut data = vec![b'.'; len];
        data[at..at + KEY.len()].copy_from_slice(KEY);
        let err = f
            .vfs
            .write(&op(), ino, 0, &data, false)
            .expect_err("secret");
        assert_eq!(err.errno(), libc::EACCES, "secret at {at}");
        assert!(
            err.to_string().contains("aws-access-key-id"),
            "at {at}: {err}"
        );
        assert_eq!(
            f.vfs.getattr(&op(), ino).unwrap().size,
            0,
            "at {at}: applied"
        );
    }
    // Completed by bytes already in the file, just before a large write.
    let f = Fixture::new();
    f.agent("a");
    let ino = f.write_file("a/mem/semantic", "big", b"xx AKIAIOSFOD");
    let mut data = vec![b'.'; len];
    data[..7].copy_from_slice(b"NN7EXAM");
    data[7..10].copy_from_slice(b"PLE");
    let err = f
        .vfs
        .write(&op(), ino, 13, &data, false)
        .expect_err("joined");
    assert_eq!(err.errno(), libc::EACCES);
    assert!(err.to_string().contains("aws-access-key-id"), "{err}");
    assert_eq!(f.read_all(ino), b"xx AKIAIOSFOD");
    // Completed by bytes already in the file, just after a large overwrite.
    let f = Fixture::new();
    f.agent("a");
    let mut old = vec![b'.'; len + 100];
    old[len..len + 10].copy_from_slice(b"NN7EXAMPLE");
    let ino = f.write_file("a/mem/semantic", "big", &old);
    let mut data = vec![b'-'; len];
    data[len - 10..].copy_from_slice(b"AKIAIOSFOD");
    let err = f
        .vfs
        .write(&op(), ino, 0, &data, false)
        .expect_err("joined after");
    assert_eq!(err.errno(), libc::EACCES);
    assert!(err.to_string().contains("aws-access-key-id"), "{err}");
    assert_eq!(f.read_all(ino), old);
    // Between file bytes on both sides the pieces are cut a window from each end (the seam
    // pieces) and every 128 KiB after that: a secret across any of those cuts is caught.
    let w = agentfs_policy::Ruleset::builtin().window();
    let (offset, before_and_after) = (1000usize, 1000usize);
    for at in [
        w - 7,
        w + (128 << 10) - 9,
        len - w - 11,
        len - w - (128 << 10) - 3,
    ] {
        let f = Fixture::new();
        f.agent("a");
        let old = vec![b'.'; offset + len + before_and_after];
        let ino = f.write_file("a/mem/semantic", "big", &old);
        let mut data = vec![b'-'; len];
        data[at..at + KEY.len()].copy_from_slice(KEY);
        let err = f
            .vfs
            .write(&op(), ino, offset as u64, &data, false)
            .expect_err("secret across a cut");
        assert_eq!(err.errno(), libc::EACCES, "secret at {at}");
        assert!(
            err.to_string().contains("aws-access-key-id"),
            "at {at}: {err}"
        );
        assert_eq!(f.read_all(ino), old, "at {at}: applied");
    }
    // A large write just past the end of an episodic log (a short hole) is still an append
    // to the policy: the core's own rule refuses it (EPERM), not the append-only rule.
    let f = Fixture::new();
    f.agent("a");
    let ino = f.write_file("a/mem/episodic", "log", b"start\n");
    let err = f
        .vfs
        .write(&op(), ino, 106, &vec![b'-'; len], false)
        .expect_err("past the end");
    assert_eq!(err.errno(), libc::EPERM, "{err}");
    assert_eq!(f.read_all(ino), b"start\n");
    // A 1 MiB append to an episodic log is allowed.
    let f = Fixture::new();
    f.agent("a");
    let ino = f.write_file("a/mem/episodic", "log", b"start\n");
    let data = vec![b'-'; len];
    f.vfs.write(&op(), ino, 6, &data, false).expect("append");
    assert_eq!(f.vfs.getattr(&op(), ino).unwrap().size, 6 + len as u64);
}

/// A write's flight-record entry carries the BLAKE3 of its bytes however they were hashed:
/// beside the scan of a large write (aligned or not), alone for a small one or one no policy
/// scans, and after the policy refused it.
#[test]
fn write_entries_carry_the_hash_of_their_bytes() {
    let f = Fixture::new();
    f.agent("a");
    let big: Vec<u8> = (0..(1usize << 20) + 4321)
        .map(|i| b'a' + (i * 7 % 23) as u8)
        .collect();
    let mut secret = big.clone();
    secret[300_000..300_022].copy_from_slice(b" AKIAIOSFODNN7EXAMPLE ");
    let ino = f.write_file("a/mem/semantic", "big", b"");
    let writes: [(u64, &[u8]); 4] = [(0, &big), (1000, &big), (5, b"small"), (0, &secret)];
    for (offset, data) in writes {
        let r = f.vfs.write(&op(), ino, offset, data, false);
        assert_eq!(r.is_ok(), data != &secret[..], "write at {offset}");
    }
    f.vfs.flush_pending_audit().expect("flush");
    let hashes: Vec<[u8; 32]> = f
        .durable
        .audit_after(0, Some("a"), 1000)
        .expect("audit")
        .into_iter()
        .filter(|r| r.entry.op == "write")
        .map(|r| r.entry.data_hash.expect("a write's entry has its hash"))
        .collect();
    // `write_file` wrote nothing first.
    let want: Vec<[u8; 32]> = std::iter::once(&b""[..])
        .chain(writes.iter().map(|(_, d)| *d))
        .map(|d| *blake3::hash(d).as_bytes())
        .collect();
    assert_eq!(hashes, want);
}

// ----- policy views (sys/policy/, AGENT/policy/) --------------------------------------------

const TEAM_POLICY: &str = "# team rules\n[[deny]]\nname = \"a-no-scripts\"\nagents = [\"a\"]\n\
paths = [\"**/*.sh\"]\nops = [\"create\"]\n\n[[deny]]\nname = \"b-no-logs\"\nagents = [\"b\"]\n\
paths = [\"**/*.log\"]\nops = [\"create\"]\n";

fn ruleset(files: &[(&str, &str)]) -> agentfs_policy::Ruleset {
    let sources = files
        .iter()
        .map(|(name, text)| agentfs_policy::Source::new(*name, *text))
        .collect();
    agentfs_policy::Ruleset::compile(sources).expect("policy compiles")
}

impl Fixture {
    fn names(&self, dir: &str) -> Vec<String> {
        let ino = self.ino(dir).expect("dir");
        let mut names = Vec::new();
        self.vfs
            .readdir(&op(), ino, 0, &mut |e| {
                names.push(String::from_utf8_lossy(&e.name).into_owned());
                false
            })
            .expect("readdir");
        names
    }

    /// The content of a generated file, as `cat` reads it (open, read until EOF, close).
    fn cat(&self, path: &str) -> String {
        let ino = self.ino(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let opened = self
            .vfs
            .open_file(&op(), ino, libc::O_RDONLY)
            .expect("open");
        assert!(
            opened.direct_io,
            "{path}: generated files are read with direct I/O"
        );
        let mut out = Vec::new();
        loop {
            let got = self
                .vfs
                .read(&op(), ino, opened.fh, out.len() as u64, 7)
                .expect("read");
            if got.is_empty() {
                break;
            }
            out.extend_from_slice(&got);
        }
        self.vfs.release(ino, opened.fh).expect("close");
        String::from_utf8(out).expect("UTF-8")
    }
}

#[test]
fn sys_policy_shows_each_source_and_the_version() {
    let f = Fixture::new();
    assert_eq!(
        f.names("sys/policy"),
        vec![".", "..", "00-builtin.toml", "version"]
    );
    assert_eq!(
        f.cat("sys/policy/00-builtin.toml"),
        agentfs_policy::BUILTIN_TOML
    );
    let version = f.vfs.policy().version().to_string();
    assert_eq!(f.cat("sys/policy/version"), format!("{version}\n"));

    // Two files with the same basename: the load-order prefix keeps the names apart.
    let rules = ruleset(&[
        ("/etc/agentfs/team.toml", TEAM_POLICY),
        ("/srv/other/team.toml", "# second\n"),
    ]);
    let new_version = rules.version();
    f.vfs.install_policy(rules, 1);
    assert_eq!(
        f.names("sys/policy"),
        vec![
            ".",
            "..",
            "00-builtin.toml",
            "01-team.toml",
            "02-team.toml",
            "version"
        ]
    );
    assert_eq!(f.cat("sys/policy/01-team.toml"), TEAM_POLICY);
    assert_eq!(f.cat("sys/policy/02-team.toml"), "# second\n");
    assert_eq!(f.cat("sys/policy/version"), format!("{new_version}\n"));
    assert_ne!(new_version.to_string(), version);

    // A file that disables the built-in policy: no 00-builtin.toml any more, and an inode
    // of the old listing no longer names anything.
    let builtin_ino = f.ino("sys/policy/00-builtin.toml").unwrap();
    let second_ino = f.ino("sys/policy/02-team.toml").unwrap();
    let only = "[builtin]\nenabled = false\n[[allow]]\nname = \"mem\"\npaths = [\"mem/**\"]\n";
    f.vfs.install_policy(ruleset(&[("only.toml", only)]), 1);
    assert_eq!(
        f.names("sys/policy"),
        vec![".", "..", "01-only.toml", "version"]
    );
    assert_eq!(f.cat("sys/policy/01-only.toml"), only);
    for ino in [builtin_ino, second_ino] {
        assert_eq!(
            f.vfs.getattr(&op(), ino).err().map(|e| e.errno()),
            Some(libc::ENOENT)
        );
    }
}

#[test]
fn agent_policy_shows_the_rules_in_force_for_that_agent() {
    let f = Fixture::new();
    f.agent("a");
    f.agent("b");
    f.vfs
        .install_policy(ruleset(&[("team.toml", TEAM_POLICY)]), 1);
    assert_eq!(f.names("a/policy"), vec![".", "..", "rules", "version"]);
    let a = f.cat("a/policy/rules");
    assert!(a.contains("a-no-scripts"), "{a}");
    assert!(!a.contains("b-no-logs"), "{a}");
    assert!(
        a.contains("own-memory"),
        "the built-in rules apply too: {a}"
    );
    let b = f.cat("b/policy/rules");
    assert!(
        b.contains("b-no-logs") && !b.contains("a-no-scripts"),
        "{b}"
    );
    let version = f.vfs.policy().version();
    assert_eq!(f.cat("a/policy/version"), format!("{version}\n"));
    assert!(a.contains(&version.to_string()), "{a}");
    // `..` is the agent's root; the files are read-only regular files.
    let rules = f.ino("a/policy/rules").unwrap();
    let attr = f.vfs.getattr(&op(), rules).unwrap();
    assert_eq!((attr.kind, attr.perm), (FileKind::File, 0o444));
    assert_eq!(
        f.vfs
            .lookup(&op(), f.ino("a/policy").unwrap(), b"nope")
            .err()
            .map(|e| e.errno()),
        Some(libc::ENOENT)
    );
    // Survives a restart (nothing of it is stored).
    let mut f = f;
    f.restart();
    assert_eq!(f.names("a/policy"), vec![".", "..", "rules", "version"]);
    // Another agent's view is not readable by a bound process.
    let mallory = Caller {
        agent: Some(Arc::from("b")),
        ..Caller::kernel()
    };
    let rules = f.ino("a/policy/rules").unwrap();
    assert_eq!(
        f.vfs
            .open_file(&mallory, rules, libc::O_RDONLY)
            .err()
            .map(|e| e.errno()),
        Some(libc::EACCES)
    );
}

#[test]
fn policy_views_refuse_every_change_for_everyone() {
    let f = Fixture::new();
    f.agent("a");
    f.vfs
        .install_policy(ruleset(&[("team.toml", TEAM_POLICY)]), 1);
    let sem = f.ino("a/mem/semantic").unwrap();
    let file = f.write_file("a/mem/semantic", "x", b"data");
    let cases = [
        ("a/policy", "rules", libc::EROFS),
        ("a/policy", "version", libc::EROFS),
        ("sys/policy", "00-builtin.toml", libc::EPERM),
        ("sys/policy", "01-team.toml", libc::EPERM),
        ("sys/policy", "version", libc::EPERM),
    ];
    for (dir, name, want) in cases {
        let path = format!("{dir}/{name}");
        let d = f.ino(dir).unwrap();
        let ino = f.ino(&path).unwrap();
        let n = name.as_bytes();
        let chmod = SetAttr {
            mode: Some(0o666),
            ..SetAttr::default()
        };
        let chown = SetAttr {
            uid: Some(1000),
            ..SetAttr::default()
        };
        let truncate = SetAttr {
            size: Some(0),
            ..SetAttr::default()
        };
        let got: Vec<(&str, Option<i32>)> = vec![
            (
                "open O_WRONLY",
                f.vfs.open_file(&op(), ino, libc::O_WRONLY).err(),
            ),
            (
                "open O_RDWR",
                f.vfs.open_file(&op(), ino, libc::O_RDWR).err(),
            ),
            ("write", f.vfs.write(&op(), ino, 0, b"x", false).err()),
            (
                "create",
                f.vfs.create(&op(), d, b"new", 0o644, libc::O_WRONLY).err(),
            ),
            (
                "create over",
                f.vfs.mknod(&op(), d, n, FileKind::File, 0o644, 0).err(),
            ),
            ("mkdir", f.vfs.mkdir(&op(), d, b"dir", 0o755).err()),
            ("symlink", f.vfs.symlink(&op(), d, b"l", b"x").err()),
            ("unlink", f.vfs.unlink(&op(), d, n).err()),
            ("rename out", f.vfs.rename(&op(), d, n, sem, b"y", 0).err()),
            ("rename in", f.vfs.rename(&op(), sem, b"x", d, n, 0).err()),
            ("link out", f.vfs.link(&op(), ino, sem, b"z").err()),
            ("link in", f.vfs.link(&op(), file, d, b"z").err()),
            ("chmod", f.vfs.setattr(&op(), ino, chmod).err()),
            ("chown", f.vfs.setattr(&op(), ino, chown).err()),
            ("truncate", f.vfs.setattr(&op(), ino, truncate).err()),
            ("fallocate", f.vfs.fallocate(&op(), ino, 0, 10, 0).err()),
            (
                "setxattr",
                f.vfs.setxattr(&op(), ino, b"user.k", b"v", 0).err(),
            ),
            (
                "removexattr",
                f.vfs.removexattr(&op(), ino, b"user.k").err(),
            ),
        ]
        .into_iter()
        .map(|(what, e)| (what, e.map(|e| e.errno())))
        .collect();
        for (what, errno) in got {
            assert_eq!(errno, Some(want), "{what} {path}");
        }
        assert!(f.ino(&path).is_ok(), "{path} vanished");
    }
    // The directories themselves.
    let a = f.ino("a").unwrap();
    assert_eq!(
        f.vfs.rmdir(&op(), a, b"policy").err().map(|e| e.errno()),
        Some(libc::EROFS)
    );
    let pol = f.ino("a/policy").unwrap();
    let chmod = SetAttr {
        mode: Some(0o777),
        ..SetAttr::default()
    };
    assert_eq!(
        f.vfs.setattr(&op(), pol, chmod).err().map(|e| e.errno()),
        Some(libc::EROFS)
    );
    assert_eq!(f.read_all(file), b"data");
}

// ----- checkpoints --------------------------------------------------------------------------

impl Fixture {
    /// Every node below `path`: relative path → (kind, content or symlink target, perm).
    fn tree(&self, path: &str) -> BTreeMap<String, (FileKind, Vec<u8>, u16)> {
        let mut out = BTreeMap::new();
        let mut queue = vec![(self.ino(path).expect("tree root"), String::new())];
        while let Some((dir, prefix)) = queue.pop() {
            let mut entries = Vec::new();
            self.vfs
                .readdir(&op(), dir, 0, &mut |e| {
                    entries.push(e);
                    false
                })
                .expect("readdir");
            for e in entries {
                if e.name == b"." || e.name == b".." {
                    continue;
                }
                let rel = format!("{prefix}{}", String::from_utf8_lossy(&e.name));
                let attr = self.vfs.getattr(&op(), e.ino).expect("getattr");
                let body = match attr.kind {
                    FileKind::File => self.read_all(e.ino),
                    FileKind::Symlink => self.vfs.readlink(&op(), e.ino).expect("readlink"),
                    _ => Vec::new(),
                };
                if attr.kind == FileKind::Dir {
                    queue.push((e.ino, format!("{rel}/")));
                }
                out.insert(rel, (attr.kind, body, attr.perm));
            }
        }
        out
    }

    fn snapshot(&self, agent: &str, name: &str) -> Result<(), VfsError> {
        let state = self.ino(&format!("{agent}/state")).expect("state");
        self.vfs
            .mkdir(&op(), state, name.as_bytes(), 0o755)
            .map(|_| ())
    }

    fn rollback(&self, agent: &str, name: &str) -> Result<u32, VfsError> {
        let ctl = self
            .ino(&format!("sys/agents/{agent}/rollback"))
            .expect("rollback file");
        self.vfs
            .write(&op(), ctl, 0, format!("{name}\n").as_bytes(), false)
    }

    fn populate(&self) {
        self.write_file("a/mem/working", "w", b"scratch");
        self.write_file("a/mem/episodic", "log", b"day 1\n");
        self.write_file("a/mem/semantic", "fact", &vec![7u8; CHUNK_SIZE + 5]);
        let sem = self.ino("a/mem/semantic").unwrap();
        let d = self.vfs.mkdir(&op(), sem, b"dir", 0o750).unwrap().ino;
        self.write_file("a/mem/semantic/dir", "inner", b"inner");
        self.vfs.symlink(&op(), d, b"ln", b"../fact").unwrap();
        let fact = self.ino("a/mem/semantic/fact").unwrap();
        self.vfs.link(&op(), fact, d, b"hard").unwrap();
        self.vfs.setxattr(&op(), fact, b"user.k", b"v", 0).unwrap();
    }
}

fn errno<T>(r: Result<T, VfsError>) -> Option<i32> {
    r.err().map(|e| e.errno())
}

#[test]
fn snapshot_copies_mem_as_a_read_only_tree() {
    let f = Fixture::new();
    f.agent("a");
    f.populate();
    let before = f.tree("a/mem");
    f.snapshot("a", "c1").unwrap();
    assert_eq!(f.tree("a/state/c1"), before);
    // The copy shares chunks and keeps hard links as links.
    let hard = f.ino("a/state/c1/semantic/dir/hard").unwrap();
    assert_eq!(hard, f.ino("a/state/c1/semantic/fact").unwrap());
    assert_eq!(f.vfs.getattr(&op(), hard).unwrap().nlink, 2);
    assert_eq!(
        f.vfs.getxattr(&op(), hard, b"user.k").unwrap(),
        b"v".to_vec()
    );
    let c1 = f.ino("a/state/c1").unwrap();
    assert_eq!(f.vfs.getattr(&op(), c1).unwrap().perm, 0o555);

    // Read-only inside, for everyone.
    let sem = f.ino("a/state/c1/semantic").unwrap();
    let fact = f.ino("a/state/c1/semantic/fact").unwrap();
    let live = f.ino("a/mem/semantic").unwrap();
    assert_eq!(
        errno(f.vfs.write(&op(), fact, 0, b"x", false)),
        Some(libc::EROFS)
    );
    assert_eq!(
        errno(f.vfs.mknod(&op(), sem, b"n", FileKind::File, 0o644, 0)),
        Some(libc::EROFS)
    );
    assert_eq!(
        errno(f.vfs.mkdir(&op(), sem, b"n", 0o755)),
        Some(libc::EROFS)
    );
    assert_eq!(errno(f.vfs.unlink(&op(), sem, b"fact")), Some(libc::EROFS));
    assert_eq!(
        errno(f.vfs.setattr(
            &op(),
            fact,
            SetAttr {
                mode: Some(0o777),
                ..SetAttr::default()
            }
        )),
        Some(libc::EROFS)
    );
    assert_eq!(
        errno(f.vfs.rename(&op(), live, b"fact", sem, b"moved", 0)),
        Some(libc::EROFS)
    );
    assert_eq!(
        errno(f.vfs.setxattr(&op(), fact, b"user.x", b"1", 0)),
        Some(libc::EROFS)
    );
    // Names.
    assert_eq!(errno(f.snapshot("a", "c1")), Some(libc::EEXIST));
    assert_eq!(errno(f.snapshot("a", ".hidden")), Some(libc::EINVAL));
    assert_eq!(
        errno(f.snapshot("a", &"n".repeat(256))),
        Some(libc::ENAMETOOLONG)
    );
    // A bound process may snapshot its own agent but never delete a checkpoint.
    let agent = Caller {
        agent: Some(Arc::from("a")),
        ..Caller::kernel()
    };
    let state = f.ino("a/state").unwrap();
    f.vfs.mkdir(&agent, state, b"mine", 0o755).unwrap();
    assert_eq!(
        errno(f.vfs.rmdir(&agent, state, b"mine")),
        Some(libc::EPERM)
    );
    f.vfs.rmdir(&op(), state, b"mine").unwrap();
    assert_eq!(errno(f.ino("a/state/mine")), Some(libc::ENOENT));
}

/// A node with all it has: its record (inode number, links, owner, size, all four times),
/// content or symlink target, and xattrs as `name=value`.
type FullNode = (InodeRecord, Vec<u8>, Vec<Vec<u8>>);

impl Fixture {
    /// Every node below `path` with all it has, by relative path.
    fn full_tree(&self, path: &str) -> BTreeMap<String, FullNode> {
        self.tree(path)
            .into_keys()
            .map(|rel| {
                let ino = self.ino(&format!("{path}/{rel}")).expect("node");
                let rec = self.vfs.getattr(&op(), ino).expect("getattr").rec;
                let body = match rec.kind {
                    FileKind::File => self.read_all(ino),
                    FileKind::Symlink => self.vfs.readlink(&op(), ino).expect("readlink"),
                    _ => Vec::new(),
                };
                let names = self.vfs.listxattr(&op(), ino).expect("listxattr");
                let xattrs = names
                    .split(|b| *b == 0)
                    .filter(|n| !n.is_empty())
                    .map(|n| {
                        [
                            n,
                            b"=",
                            &self.vfs.getxattr(&op(), ino, n).expect("getxattr"),
                        ]
                        .concat()
                    })
                    .collect();
                (rel, (rec, body, xattrs))
            })
            .collect()
    }
}

/// A checkpoint's nodes of the durable classes are copied by the store from the rows it holds
/// (`Change::CopyNodes`), except files written since their last commit, which are written
/// out: either way, after a restart the checkpoint is exactly what it was, down to inode
/// numbers, times, links and xattrs. The tree has nested directories, a hard link across
/// them, a symlink, xattrs, an episodic log stored in pieces, a file open with unsaved
/// writes and one truncated but not yet closed.
#[test]
fn a_checkpoint_is_the_same_after_a_restart() {
    let mut f = Fixture::new();
    f.agent("a");
    f.populate();
    let log = f.ino("a/mem/episodic/log").unwrap();
    for day in 2..5 {
        f.vfs
            .open_file(&op(), log, libc::O_WRONLY | libc::O_APPEND)
            .unwrap();
        f.vfs
            .write(&op(), log, 0, format!("day {day}\n").as_bytes(), true)
            .unwrap();
        f.vfs.release(log, 0).unwrap();
    }
    let deep = f.ino("a/mem/semantic/dir").unwrap();
    let deeper = f.vfs.mkdir(&op(), deep, b"deeper", 0o700).unwrap().ino;
    let kept = f.write_file("a/mem/semantic/dir/deeper", "kept", b"kept bytes");
    f.vfs.setxattr(&op(), deeper, b"user.dir", b"1", 0).unwrap();
    let sem = f.ino("a/mem/semantic").unwrap();
    let (open, _) = f
        .vfs
        .create(&op(), sem, b"open", 0o600, libc::O_WRONLY)
        .unwrap();
    f.vfs.write(&op(), open.ino, 0, b"unsaved", false).unwrap();
    f.vfs.open_file(&op(), kept, libc::O_WRONLY).unwrap();
    f.vfs
        .setattr(
            &op(),
            kept,
            SetAttr {
                size: Some(4),
                ..SetAttr::default()
            },
        )
        .unwrap();

    f.snapshot("a", "c").unwrap();
    let before = f.full_tree("a/state/c");
    assert_eq!(before["semantic/open"].1, b"unsaved");
    assert_eq!(before["semantic/dir/deeper/kept"].1, b"kept");
    assert_eq!(before["episodic/log"].1, b"day 1\nday 2\nday 3\nday 4\n");
    assert_eq!(
        before["semantic/fact"].0.ino,
        before["semantic/dir/hard"].0.ino
    );
    f.vfs.release(open.ino, 0).unwrap();
    f.vfs.release(kept, 0).unwrap();
    f.restart();
    assert_eq!(f.full_tree("a/state/c"), before);
}

#[test]
fn snapshot_holds_buffered_content_and_survives_restart() {
    let mut f = Fixture::new();
    f.agent("a");
    let sem = f.ino("a/mem/semantic").unwrap();
    let (attr, _) = f
        .vfs
        .create(&op(), sem, b"open", 0o644, libc::O_WRONLY)
        .unwrap();
    f.vfs
        .write(&op(), attr.ino, 0, b"not yet closed", false)
        .unwrap();
    f.write_file("a/mem/working", "w", b"working bytes");
    f.snapshot("a", "c").unwrap();
    f.vfs.write(&op(), attr.ino, 0, b"NOT", false).unwrap();
    f.vfs.release(attr.ino, 0).unwrap();
    let ck = f.ino("a/state/c/semantic/open").unwrap();
    assert_eq!(f.read_all(ck), b"not yet closed");
    f.restart();
    assert_eq!(errno(f.ino("a/mem/working/w")), Some(libc::ENOENT));
    let w = f.ino("a/state/c/working/w").unwrap();
    assert_eq!(f.read_all(w), b"working bytes");
    // Rollback after a restart brings working memory back into RAM.
    f.rollback("a", "c").unwrap();
    let w = f.ino("a/mem/working/w").unwrap();
    assert_eq!(f.read_all(w), b"working bytes");
    let open = f.ino("a/mem/semantic/open").unwrap();
    assert_eq!(f.read_all(open), b"not yet closed");
}

/// A copy shares the file's chunk map (copy-on-write, `node::Slots`): a write, truncate
/// or extension of either side after a snapshot or a rollback never shows in the other.
#[test]
fn chunk_maps_shared_with_checkpoints_are_copied_on_write() {
    let mut f = Fixture::new();
    f.agent("a");
    let original: Vec<u8> = (0..3 * CHUNK_SIZE + 10).map(|i| (i % 251) as u8).collect();
    let live = f.write_file("a/mem/semantic", "f", &original);
    f.snapshot("a", "c").unwrap();
    let copy = f.ino("a/state/c/semantic/f").unwrap();
    let slots_of = |f: &Fixture, ino: Ino| -> *const Slot {
        match &f.vfs.node(ino).unwrap().read().body {
            Body::File(file) => file.slots.values().next().unwrap() as *const Slot,
            _ => panic!("not a file"),
        }
    };
    // One map for both: the copy made none of its own.
    assert_eq!(slots_of(&f, live), slots_of(&f, copy));

    // Overwrite inside the second chunk, then cut the file inside the third.
    f.vfs.open_file(&op(), live, libc::O_RDWR).unwrap();
    f.vfs
        .write(&op(), live, CHUNK_SIZE as u64 + 7, b"CHANGED", false)
        .unwrap();
    f.vfs
        .setattr(
            &op(),
            live,
            SetAttr {
                size: Some(2 * CHUNK_SIZE as u64 + 3),
                ..SetAttr::default()
            },
        )
        .unwrap();
    f.vfs.release(live, 0).unwrap();
    let mut changed = original[..2 * CHUNK_SIZE + 3].to_vec();
    changed[CHUNK_SIZE + 7..CHUNK_SIZE + 14].copy_from_slice(b"CHANGED");
    assert_eq!(f.read_all(live), changed);
    assert_eq!(f.read_all(copy), original);
    assert_ne!(slots_of(&f, live), slots_of(&f, copy));

    // A rollback shares the checkpoint's map with the restored file; writing that file
    // leaves the checkpoint as it was.
    f.rollback("a", "c").unwrap();
    let restored = f.ino("a/mem/semantic/f").unwrap();
    assert_eq!(f.read_all(restored), original);
    f.vfs.open_file(&op(), restored, libc::O_RDWR).unwrap();
    f.vfs.write(&op(), restored, 0, b"AGAIN", false).unwrap();
    f.vfs.release(restored, 0).unwrap();
    assert_eq!(&f.read_all(restored)[..5], b"AGAIN");
    assert_eq!(f.read_all(copy), original);

    f.restart();
    let copy = f.ino("a/state/c/semantic/f").unwrap();
    assert_eq!(f.read_all(copy), original);
    let restored = f.ino("a/mem/semantic/f").unwrap();
    assert_eq!(&f.read_all(restored)[..5], b"AGAIN");
    assert_eq!(&f.read_all(restored)[5..], &original[5..]);
}

#[test]
fn rollback_restores_mem_exactly() {
    let mut f = Fixture::new();
    f.agent("a");
    f.populate();
    let before = f.tree("a/mem");
    let status = |f: &Fixture| f.vfs.agent_status("a").unwrap();
    let counts = (status(&f)["bytes"].clone(), status(&f)["files"].clone());
    f.snapshot("a", "good").unwrap();

    // Deletes, renames, new dirs, symlinks, overwrites, appends, working memory.
    let sem = f.ino("a/mem/semantic").unwrap();
    let dir = f.ino("a/mem/semantic/dir").unwrap();
    f.vfs.unlink(&op(), dir, b"inner").unwrap();
    f.vfs
        .rename(&op(), sem, b"fact", sem, b"renamed", 0)
        .unwrap();
    let nd = f.vfs.mkdir(&op(), sem, b"newdir", 0o755).unwrap().ino;
    f.vfs.symlink(&op(), nd, b"s", b"/etc/passwd").unwrap();
    f.write_file("a/mem/semantic/newdir", "big", &vec![1u8; 3 * CHUNK_SIZE]);
    let log = f.ino("a/mem/episodic/log").unwrap();
    f.vfs.write(&op(), log, 0, b"day 2\n", true).unwrap();
    let w = f.ino("a/mem/working/w").unwrap();
    f.vfs.write(&op(), w, 0, b"SCRATCH", false).unwrap();
    assert_ne!(f.tree("a/mem"), before);

    // An open handle on a file the rollback replaces.
    let renamed = f.ino("a/mem/semantic/renamed").unwrap();
    f.vfs.open_file(&op(), renamed, libc::O_RDWR).unwrap();

    f.rollback("a", "good").unwrap();
    assert_eq!(f.tree("a/mem"), before);
    // (The open file counts until its last close, as after an unlink.)
    // The old handle writes into its orphaned node, never into the restored tree.
    f.vfs.write(&op(), renamed, 0, b"late", false).unwrap();
    f.vfs.release(renamed, 0).unwrap();
    assert_eq!(f.tree("a/mem"), before);
    assert_eq!(
        (status(&f)["bytes"].clone(), status(&f)["files"].clone()),
        counts
    );
    // The checkpoint is still there, unchanged, and the rollback survives a restart.
    assert_eq!(f.tree("a/state/good"), before);
    f.restart();
    let mut durable_before = before.clone();
    durable_before.retain(|k, _| !k.starts_with("working/"));
    let mut now = f.tree("a/mem");
    now.retain(|k, _| !k.starts_with("working/"));
    assert_eq!(now, durable_before);

    // Errors: unknown name, bad name; nothing changes.
    assert_eq!(errno(f.rollback("a", "nope")), Some(libc::ENOENT));
    assert_eq!(errno(f.rollback("a", ".x")), Some(libc::EINVAL));
    assert_eq!(errno(f.rollback("a", "a/b")), Some(libc::EINVAL));
}

/// A tree of some 1,000 nodes in several directories (copied whole, renumbered), with
/// xattrs, symlinks, a hard link and working memory (which crosses stores both ways): the
/// checkpoint holds exactly the tree, and a rollback after deletes and overwrites restores
/// it exactly, also after a restart.
#[test]
fn many_files_snapshot_and_roll_back_exactly() {
    let mut f = Fixture::new();
    f.agent("a");
    f.populate();
    let sem = f.ino("a/mem/semantic").unwrap();
    for d in 0..6 {
        let dir = f
            .vfs
            .mkdir(&op(), sem, format!("d{d}").as_bytes(), 0o755)
            .unwrap()
            .ino;
        for i in 0..120 {
            let body = format!("file {d}/{i}\n").repeat(i % 7 + 1);
            let ino = f.write_file(
                &format!("a/mem/semantic/d{d}"),
                &format!("f{i}"),
                body.as_bytes(),
            );
            if i % 50 == 0 {
                f.vfs
                    .setxattr(&op(), ino, b"user.n", body.as_bytes(), 0)
                    .unwrap();
            }
        }
        f.vfs.symlink(&op(), dir, b"up", b"..").unwrap();
    }
    for i in 0..300 {
        f.write_file(
            "a/mem/working",
            &format!("w{i}"),
            format!("scratch {i}").as_bytes(),
        );
    }
    let before = f.tree("a/mem");
    f.snapshot("a", "many").unwrap();
    assert_eq!(f.tree("a/state/many"), before);

    let d0 = f.ino("a/mem/semantic/d0").unwrap();
    for i in 0..60 {
        f.vfs.unlink(&op(), d0, format!("f{i}").as_bytes()).unwrap();
    }
    let f7 = f.ino("a/mem/semantic/d1/f7").unwrap();
    f.vfs.write(&op(), f7, 0, b"CHANGED", false).unwrap();
    let w0 = f.ino("a/mem/working/w0").unwrap();
    f.vfs.write(&op(), w0, 0, b"overwritten", false).unwrap();
    assert_ne!(f.tree("a/mem"), before);

    f.rollback("a", "many").unwrap();
    assert_eq!(f.tree("a/mem"), before);
    assert_eq!(f.tree("a/state/many"), before);
    f.restart();
    let mut durable_before = before;
    durable_before.retain(|k, _| !k.starts_with("working/"));
    let mut now = f.tree("a/mem");
    now.retain(|k, _| !k.starts_with("working/"));
    assert_eq!(now, durable_before);
}

#[test]
fn a_bound_process_cannot_roll_back() {
    let f = Fixture::new();
    f.agent("a");
    f.snapshot("a", "c").unwrap();
    let ctl = f.ino("sys/agents/a/rollback").unwrap();
    let agent = Caller {
        agent: Some(Arc::from("a")),
        ..Caller::kernel()
    };
    assert_eq!(
        errno(f.vfs.write(&agent, ctl, 0, b"c", false)),
        Some(libc::EPERM)
    );
}

/// `sys/metrics` through the core: listed in `sys/`, generated at open, counting ops,
/// errors, the policy decision that killed the agent and its POLICY signal; bound agents
/// may not read it.
#[test]
fn sys_metrics_counts_ops_decisions_and_signals() {
    let f = Fixture::new();
    f.agent("a");
    let ino = f.write_file("a/mem/episodic", "log", b"one\n");
    assert!(f.vfs.write(&op(), ino, 0, b"X", false).is_err());
    let metrics = f.ino("sys/metrics").expect("sys/metrics");
    let opened = f.vfs.open_file(&op(), metrics, libc::O_RDONLY).unwrap();
    let text =
        String::from_utf8(f.vfs.read(&op(), metrics, opened.fh, 0, 1 << 20).unwrap()).unwrap();
    f.vfs.release(metrics, opened.fh).unwrap();
    for want in [
        "agentfs_ops_total{agent=\"a\",op=\"create\",result=\"ok\"} 1\n",
        "agentfs_ops_total{agent=\"a\",op=\"write\",result=\"ok\"} 1\n",
        "agentfs_ops_total{agent=\"a\",op=\"write\",result=\"error\"} 1\n",
        "agentfs_signals_total{agent=\"a\",signal=\"POLICY\"} 1\n",
        "agentfs_agent_state{agent=\"a\",state=\"killed\"} 1\n",
        "agentfs_files{agent=\"a\",class=\"episodic\"} 1\n",
        "action=\"kill\"} 1\n",
        "agentfs_op_latency_seconds_count{op=\"write\"} 2\n",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
    let bound = Caller {
        agent: Some("a".into()),
        ..op()
    };
    assert_eq!(
        f.vfs
            .open_file(&bound, metrics, libc::O_RDONLY)
            .map(|_| ())
            .unwrap_err()
            .errno(),
        libc::EACCES
    );
}

/// Counts the bytes handed to `put_chunk`: what commits write to the store's packs.
struct CountingStore {
    inner: RamStore,
    put_bytes: std::sync::atomic::AtomicU64,
}

impl Store for CountingStore {
    fn put_hashed(
        &self,
        id: agentfs_memory::ChunkId,
        data: &[u8],
    ) -> Result<agentfs_memory::ChunkId, agentfs_memory::StoreError> {
        self.put_bytes
            .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        self.inner.put_hashed(id, data)
    }
    fn read_at(
        &self,
        id: &agentfs_memory::ChunkId,
        offset: usize,
        buf: &mut [u8],
    ) -> Result<usize, agentfs_memory::StoreError> {
        self.inner.read_at(id, offset, buf)
    }
    fn commit(
        &self,
        batch: agentfs_memory::Batch,
        durability: agentfs_memory::Durability,
    ) -> Result<(), agentfs_memory::StoreError> {
        self.inner.commit(batch, durability)
    }
    fn sync(&self) -> Result<(), agentfs_memory::StoreError> {
        self.inner.sync()
    }
    fn load(&self) -> Result<agentfs_memory::LoadedState, agentfs_memory::StoreError> {
        self.inner.load()
    }
    fn chunk_bytes(&self) -> u64 {
        self.inner.chunk_bytes()
    }
}

/// An episodic log written one short line per open/append/close, across a chunk boundary,
/// stores each byte a few times (its slot grows by pieces), not the whole tail chunk per
/// line; what it stores reads back exactly, also after a restart, from a checkpoint and
/// after a rollback.
#[test]
fn appended_lines_are_stored_as_pieces_not_whole_tail_chunks() {
    let durable = Arc::new(CountingStore {
        inner: RamStore::new(),
        put_bytes: Default::default(),
    });
    let policy = Arc::new(agentfs_policy::Engine::builtin());
    let load = || Fixture::load(durable.clone(), &policy);
    let mut vfs = load();
    vfs.mkdir(&op(), ROOT_INO, b"a", 0o755).expect("agent");
    let lookup = |vfs: &Vfs, path: &str| {
        path.split('/').fold(ROOT_INO, |ino, part| {
            vfs.lookup(&op(), ino, part.as_bytes()).expect(path).ino
        })
    };
    let dir = lookup(&vfs, "a/mem/episodic");
    let (attr, _) = vfs
        .create(&op(), dir, b"log", 0o644, libc::O_WRONLY)
        .expect("create");
    vfs.release(attr.ino, 0).expect("close");
    let ino = attr.ino;
    let mut expected = Vec::new();
    let lines = 8_000;
    for i in 0..lines {
        let line = format!("step {i:05}: did a thing\n");
        vfs.open_file(&op(), ino, libc::O_WRONLY | libc::O_APPEND)
            .expect("open");
        vfs.write(&op(), ino, 0, line.as_bytes(), true)
            .expect("append");
        vfs.release(ino, 0).expect("close");
        expected.extend_from_slice(line.as_bytes());
        if i == lines / 2 {
            vfs.mkdir(&op(), lookup(&vfs, "a/state"), b"half", 0o755)
                .expect("checkpoint");
        }
    }
    assert!(
        expected.len() > CHUNK_SIZE,
        "the log must cross a chunk boundary"
    );
    let read = |vfs: &Vfs, ino: Ino| {
        let size = vfs.getattr(&op(), ino).expect("getattr").size;
        vfs.read(&op(), ino, 0, 0, size as u32 + 10).expect("read")
    };
    assert_eq!(read(&vfs, ino), expected);

    // Whole tail chunks per close would store ~lines/2 times the log; pieces store each
    // byte about log2(lines per chunk) times, plus each full chunk once more.
    let stored = durable.put_bytes.load(std::sync::atomic::Ordering::Relaxed);
    let amplification = stored as f64 / expected.len() as f64;
    eprintln!(
        "{stored} bytes stored for a {}-byte log: {amplification:.1}x",
        expected.len()
    );
    assert!(
        amplification < 24.0,
        "{stored} bytes stored for a {}-byte log: {amplification:.1}x",
        expected.len()
    );
    let state = durable.load().expect("load");
    assert!(!state.pieces.is_empty(), "the tail slot is held in pieces");
    assert!(state
        .pieces
        .iter()
        .all(|(_, _, p)| (2..=agentfs_memory::MAX_PIECES).contains(&p.len())));

    vfs.shutdown().expect("shutdown");
    vfs = load();
    let ino = lookup(&vfs, "a/mem/episodic/log");
    assert_eq!(read(&vfs, ino), expected, "after a restart");
    let half_len = (lines / 2 + 1) * "step 00000: did a thing\n".len();
    let half = lookup(&vfs, "a/state/half/episodic/log");
    assert_eq!(read(&vfs, half), expected[..half_len], "the checkpoint");
    let rollback = lookup(&vfs, "sys/agents/a/rollback");
    vfs.open_file(&op(), rollback, libc::O_WRONLY)
        .expect("open rollback");
    vfs.write(&op(), rollback, 0, b"half\n", false)
        .expect("rollback");
    vfs.release(rollback, 0).expect("close rollback");
    let ino = lookup(&vfs, "a/mem/episodic/log");
    assert_eq!(read(&vfs, ino), expected[..half_len], "after the rollback");
}

/// A slot held in pieces that is then overwritten in the middle, cut inside a piece and
/// grown again reads back like a plain file, before and after a restart.
#[test]
fn a_slot_in_pieces_takes_overwrites_and_truncates() {
    let mut f = Fixture::new();
    f.agent("a");
    let ino = f.write_file("a/mem/semantic", "f", &[b'a'; 1000]);
    let mut model = vec![b'a'; 1000];
    let append = |f: &Fixture, ino: Ino, data: &[u8]| {
        f.vfs.open_file(&op(), ino, libc::O_WRONLY).unwrap();
        f.vfs.write(&op(), ino, 0, data, true).unwrap();
        f.vfs.release(ino, 0).unwrap();
    };
    for b in [b'b', b'c', b'd'] {
        append(&f, ino, &[b; 300]);
        model.extend_from_slice(&[b; 300]);
    }
    assert!(
        !f.durable.load().unwrap().pieces.is_empty(),
        "the appends made pieces"
    );
    // Overwrite across the boundary of two pieces.
    f.vfs.open_file(&op(), ino, libc::O_WRONLY).unwrap();
    f.vfs.write(&op(), ino, 1250, &[b'x'; 100], false).unwrap();
    f.vfs.release(ino, 0).unwrap();
    model[1250..1350].fill(b'x');
    assert_eq!(f.read_all(ino), model);
    append(&f, ino, &[b'e'; 50]);
    model.extend_from_slice(&[b'e'; 50]);
    let cut = SetAttr {
        size: Some(1700),
        ..Default::default()
    };
    f.vfs.setattr(&op(), ino, cut).unwrap();
    model.truncate(1700);
    append(&f, ino, &[b'f'; 20]);
    model.extend_from_slice(&[b'f'; 20]);
    let ranges_match = |f: &Fixture, ino: Ino, model: &[u8]| {
        // Reads that start inside a piece, end inside another, or span several.
        for off in (0..model.len()).step_by(37) {
            let got = f.vfs.read(&op(), ino, 0, off as u64, 301).unwrap();
            assert_eq!(
                got,
                model[off..(off + 301).min(model.len())],
                "read at {off}"
            );
        }
    };
    assert_eq!(f.read_all(ino), model);
    ranges_match(&f, ino, &model);
    f.restart();
    let ino = f.ino("a/mem/semantic/f").unwrap();
    assert_eq!(f.read_all(ino), model, "after a restart");
    ranges_match(&f, ino, &model);
}

#[test]
fn pieces_kept_halve_towards_the_end() {
    use agentfs_memory::{ChunkId, Piece};
    let piece = |len: u32| Piece {
        id: ChunkId([len as u8; 32]),
        len,
    };
    let keep = crate::ops::data::pieces_to_keep;
    // A new piece swallows every trailing piece no longer than what follows it.
    assert_eq!(keep(&[piece(1000), piece(100)], 10), 2);
    assert_eq!(keep(&[piece(1000), piece(100)], 100), 1);
    assert_eq!(keep(&[piece(1000), piece(100)], 900), 0);
    assert_eq!(keep(&[piece(4), piece(2), piece(1)], 1), 0);
    // A full chunk is stored whole.
    assert_eq!(keep(&[piece(CHUNK_SIZE as u32 - 10)], 10), 0);
    // Appending one byte at a time never holds more than log2(CHUNK_SIZE) + 1 pieces.
    let mut pieces: Vec<Piece> = Vec::new();
    let mut most = 0;
    for _ in 0..CHUNK_SIZE - 1 {
        let k = keep(&pieces, 1);
        let merged: u32 = pieces[k..].iter().map(|p| p.len).sum::<u32>() + 1;
        pieces.truncate(k);
        pieces.push(piece(merged));
        most = most.max(pieces.len());
    }
    assert!(most <= 18, "{most} pieces");
}
