//! What one checkpoint costs the core, without FUSE: time and fresh memory per snapshot.
//!
//! ```sh
//! cargo run --release -p agentfs-vfs --example snapshot_cost [FILES] [SNAPSHOTS]
//! ```
//!
//! Opens a core over a durable store in a temporary directory, writes FILES (default 10,000)
//! files of 8 KiB into `a/mem/semantic` (100 directories, as `ckptbench` lays them out), lets
//! the store's applier catch up, then takes SNAPSHOTS (default 5) checkpoints one after the
//! other. For each it prints the wall time and the minor page faults of the calling thread
//! (fresh memory the kernel had to clear), so a change to the copy can be judged by both
//! without the mount's round trips and the noise of a second process.

use agentfs_vfs::{thread_minor_faults, Caller, Vfs, ROOT_INO};
use std::time::{Duration, Instant};

fn main() {
    let mut args = std::env::args().skip(1);
    let files: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let snapshots: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let dir = tempfile::tempdir().expect("temporary directory");
    let vfs = Vfs::open(dir.path()).expect("open the core");
    let op = Caller::kernel();
    vfs.mkdir(&op, ROOT_INO, b"a", 0o755)
        .expect("register agent a");
    let lookup = |parent, name: &[u8]| vfs.lookup(&op, parent, name).expect("lookup").ino;
    let agent = lookup(ROOT_INO, b"a");
    let semantic = lookup(lookup(agent, b"mem"), b"semantic");
    let state = lookup(agent, b"state");
    let data = vec![b'x'; 8192];
    let mut dirs = Vec::new();
    for i in 0..files {
        if i < 100 {
            let name = format!("d{i:03}");
            dirs.push(
                vfs.mkdir(&op, semantic, name.as_bytes(), 0o755)
                    .expect("mkdir")
                    .ino,
            );
        }
        let name = format!("f{i:05}");
        let (attr, opened) = vfs
            .create(
                &op,
                dirs[i % dirs.len()],
                name.as_bytes(),
                0o644,
                libc::O_WRONLY,
            )
            .expect("create");
        vfs.write(&op, attr.ino, 0, &data, false).expect("write");
        vfs.release(attr.ino, opened.fh).expect("release");
    }
    // The applier copies the journal into SQLite on the other core: let it finish, as
    // ckptbench does, so it does not share the CPU with the snapshots.
    std::thread::sleep(Duration::from_secs(2));
    println!("{files} files; per snapshot: ms, minor faults of this thread");
    let mut times = Vec::new();
    for n in 0..snapshots {
        let faults = thread_minor_faults();
        let started = Instant::now();
        vfs.mkdir(&op, state, format!("c{n}").as_bytes(), 0o755)
            .expect("snapshot");
        let ms = started.elapsed().as_secs_f64() * 1e3;
        println!(
            "c{n}: {ms:.1} ms, {} faults",
            thread_minor_faults() - faults
        );
        times.push(ms);
        std::thread::sleep(Duration::from_millis(1500));
    }
    times.sort_by(f64::total_cmp);
    println!("median {:.1} ms", times[times.len() / 2]);
    vfs.shutdown().expect("shutdown");
}
