//! agentfs file-system benchmark (harness = false).
//!
//! `cargo bench -p agentfs --bench fsbench` (or `scripts/bench.sh`). Needs root (it mounts).
//!
//! In one run it measures three targets with the same workload:
//! * `tmpfs`              — a fresh tmpfs, the yardstick;
//! * `agentfs disk`       — agentfs with its data dir on the normal disk (target/tmp);
//! * `agentfs tmpfs-data` — agentfs with its data dir on a tmpfs, which takes the disk out
//!   and leaves the cost of FUSE + the engine;
//! * `FUSE floor`         — a minimal in-memory FUSE file system mounted with agentfs's
//!   settings (floorfs.rs): what the kernel and the round trips cost, with no engine at all.
//!   Create, stat and readdir only (it keeps no data); it also counts the requests per
//!   created file.
//!
//! The workload runs in `MNT/bench/mem/<class>` (class `semantic` unless
//! `AGENTFS_BENCH_CLASS` says otherwise). Figures are printed per target and as ratios to
//! tmpfs, next to the project's targets with PASS/MISS. Informational: never fails on a miss.
//! `AGENTFS_BENCH_QUICK=1` shrinks every size for a smoke run. `AGENTFS_BENCH_ONLY=floor` runs
//! only the floor and agentfs with its data dir on tmpfs; `AGENTFS_BENCH_ONLY=create` compares
//! the create rate of `$AGENTFS_BIN_BASELINE` with the binary under test.

#[path = "../common/mod.rs"]
mod common;
mod floorfs;

use common::*;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

struct Sizes {
    seq_mib: usize,
    small_files: usize,
    grow_files: usize,
    band: usize,
    stat_passes: usize,
}

#[derive(Default, Clone)]
struct Figures {
    seq_write_mibs: f64,
    seq_read_mibs: f64,
    create_fps: f64,
    stat_ps: f64,
    readdir_cold_ms: f64,
    readdir_warm_ms: f64,
    grow_bands: Vec<f64>,
    unlink_fps: f64,
    rss_kib: Option<u64>,
    notes: Vec<String>,
    /// The floor only: requests per created file, total and by opcode.
    requests_per_create: Option<(f64, String)>,
}

fn main() {
    if unsafe { libc::geteuid() } != 0 || !Path::new("/dev/fuse").exists() {
        println!("fsbench: SKIPPED — needs root and /dev/fuse (it mounts agentfs and a tmpfs)");
        return;
    }
    let _wd = Watchdog::new(3600);
    match std::env::var("AGENTFS_BENCH_ONLY").as_deref() {
        Ok("audit-reads") => return report_audit_reads_cost(),
        Ok("recorder") => return report_recorder_cost(),
        Ok("policy") => return report_policy_cost(),
        Ok("create") => return report_baseline_create(),
        _ => {}
    }
    let quick = std::env::var("AGENTFS_BENCH_QUICK").is_ok_and(|v| v != "0" && !v.is_empty());
    let sizes = if quick {
        Sizes {
            seq_mib: 32,
            small_files: 1000,
            grow_files: 20_000,
            band: 5_000,
            stat_passes: 3,
        }
    } else {
        Sizes {
            seq_mib: 256,
            small_files: 5000,
            grow_files: 100_000,
            band: 10_000,
            stat_passes: 5,
        }
    };
    let class = std::env::var("AGENTFS_BENCH_CLASS").unwrap_or_else(|_| "semantic".into());

    println!("fsbench: agentfs binary {}", bin().to_string_lossy());
    println!(
        "fsbench: workload in MNT/bench/mem/{class}; seq {} MiB in 1 MiB blocks; {} small files \
         of 4 KiB; growth to {} entries{}",
        sizes.seq_mib,
        sizes.small_files,
        sizes.grow_files,
        if quick { " (QUICK mode)" } else { "" }
    );
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "fsbench: {cpus} CPUs, kernel {}, load average at start {}",
        kernel(),
        loadavg()
    );
    if std::env::var("AGENTFS_BENCH_ONLY").as_deref() == Ok("floor") {
        // Without the growth part (minutes on agentfs, and not compared with the floor).
        let sizes = Sizes {
            grow_files: 0,
            ..sizes
        };
        let fl = bench_floor(&sizes);
        let td = bench_agentfs_tmpfs_data(&class, &sizes);
        report_floor(&sizes, &fl, &td, None);
        println!("fsbench: load average at the end {}", loadavg());
        return;
    }

    // 1. tmpfs yardstick.
    let tmp_root = fresh_dir("bench-tmpfs");
    let tmpfs_dir = tmp_root.join("fs");
    mount_tmpfs(&tmpfs_dir);
    let t = run_workload("tmpfs", &tmpfs_dir, &sizes, None, false, None);
    umount(&tmpfs_dir);
    let _ = fs::remove_dir_all(&tmp_root);

    // 2. agentfs, data dir on the normal disk.
    let disk_root =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("fsbench-{}", std::process::id()));
    fs::create_dir_all(&disk_root).unwrap();
    println!(
        "fsbench: disk data dir {} is on a {} file system",
        disk_root.display(),
        fs_name(&disk_root)
    );
    let d = bench_agentfs(
        "agentfs disk",
        disk_root.join("mnt"),
        disk_root.join("data"),
        &class,
        &sizes,
    );
    let _ = fs::remove_dir_all(&disk_root);

    // 3. agentfs, data dir on a tmpfs.
    let td = bench_agentfs_tmpfs_data(&class, &sizes);

    // 4. The same as 3 with an empty policy: what the default policy costs.
    let np_root = fresh_dir("bench-nopolicy");
    mount_tmpfs(&np_root.join("data-fs"));
    let policy = np_root.join("allow-all.toml");
    fs::write(&policy, ALLOW_ALL_POLICY).unwrap();
    let np = bench_agentfs_with(
        "agentfs tmpfs-data, empty policy",
        np_root.join("mnt"),
        np_root.join("data-fs/data"),
        &class,
        &sizes,
        &["--policy", policy.to_str().unwrap()],
    );
    umount(&np_root.join("data-fs"));
    let _ = fs::remove_dir_all(&np_root);

    // 5. The FUSE floor.
    let fl = bench_floor(&sizes);

    report(&sizes, &t, &d, &td);
    report_floor(&sizes, &fl, &td, Some((&t, &d)));
    let pair = |with: f64, without: f64| [Burst::of_rate(with), Burst::of_rate(without)];
    report_policy_overhead(&[
        (
            "seq write MiB/s",
            "MiB",
            &[pair(td.seq_write_mibs, np.seq_write_mibs)],
        ),
        (
            "create+4KiB+close files/s",
            "file",
            &[pair(td.create_fps, np.create_fps)],
        ),
    ]);
    report_audit_reads_cost();
    println!(
        "fsbench: load average at the end {} (figures from a busy machine are low)",
        loadavg()
    );
}

/// Runs `work` on a fresh mount (made by `mount` from a fresh root dir) whose data dir is on
/// its own tmpfs, with agent `bench` registered; unmounts and removes everything after.
/// Creates `files` files `fNNNNNN` in `dir`, each written with `content` and closed; files/s.
fn create_rate(dir: &Path, files: usize, content: &[u8]) -> f64 {
    let t0 = Instant::now();
    for i in 0..files {
        let mut fh = File::create(dir.join(format!("f{i:06}"))).unwrap();
        fh.write_all(content).unwrap();
    }
    files as f64 / t0.elapsed().as_secs_f64()
}

fn on_tmpfs_data<T>(
    tag: &str,
    mount: impl FnOnce(&Path) -> Mount,
    work: impl FnOnce(&Mount) -> T,
) -> T {
    let root = fresh_dir(tag);
    mount_tmpfs(&root.join("data-fs"));
    let mut m = mount(&root);
    m.mount();
    m.agent("bench");
    let out = work(&m);
    drop(m);
    umount(&root.join("data-fs"));
    let _ = fs::remove_dir_all(&root);
    out
}

/// 4 KiB preads of a 16 MiB file (direct I/O: every one reaches the daemon), data dir on a
/// tmpfs, without and with `--audit-reads`, interleaved three times; best of each.
fn report_audit_reads_cost() {
    const FILE_MIB: usize = 16;
    const READS: usize = 40_000;
    let rate = |args: &[&str]| -> f64 {
        let mount = |root: &Path| {
            Mount::unmounted(root.join("mnt"), root.join("data-fs/data"), None).with_args(args)
        };
        on_tmpfs_data("bench-auditreads", mount, |m| {
            let path = m.mem("bench", "semantic").join("big");
            fs::write(&path, vec![7u8; FILE_MIB << 20]).unwrap();
            let file = File::open(&path).unwrap();
            let mut buf = [0u8; 4096];
            let blocks = (FILE_MIB << 20) / 4096;
            let t0 = Instant::now();
            for i in 0..READS {
                let at = ((i * 7919) % blocks) * 4096;
                std::os::unix::fs::FileExt::read_exact_at(&file, &mut buf, at as u64).unwrap();
            }
            READS as f64 / t0.elapsed().as_secs_f64()
        })
    };
    let (mut off, mut on) = (0f64, 0f64);
    for _ in 0..3 {
        off = off.max(rate(&[]));
        on = on.max(rate(&["--audit-reads"]));
    }
    println!("\n=== --audit-reads cost (4 KiB random preads, data dir on tmpfs, best of 3)");
    println!(
        "reads/s  off {off:>10.0}  on {on:>10.0}  cost {:>5.1}%  (informational)",
        (off / on - 1.0) * 100.0
    );
}

/// create + 4 KiB + close of `files` files by binary `a`, then by `b`, five times over, each
/// on a fresh mount with its data dir on a tmpfs: the files/s of each run, `a`'s and `b`'s.
fn interleaved_create_rates(
    tag: &str,
    a: &std::ffi::OsStr,
    b: &std::ffi::OsStr,
    files: usize,
) -> (Vec<f64>, Vec<f64>) {
    let rate = |binary: &std::ffi::OsStr| -> f64 {
        let mount = |root: &Path| {
            Mount::unmounted(root.join("mnt"), root.join("data-fs/data"), None)
                .with_binary(binary.to_os_string())
        };
        on_tmpfs_data(tag, mount, |m| {
            create_rate(&m.mem("bench", "semantic"), files, &[b'x'; 4096])
        })
    };
    (0..5).map(|_| (rate(a), rate(b))).unzip()
}

fn best_of(rates: &[f64]) -> f64 {
    rates.iter().copied().fold(0f64, f64::max)
}

/// Creates of 4 KiB files (create, write, close) by the recording daemon and by a build
/// whose recorder is compiled out (`$AGENTFS_BIN_NO_RECORDER`, built with `--features
/// bench-no-recorder`; scripts/bench-recorder.sh builds both), data dir on a tmpfs,
/// interleaved five times; best of each.
fn report_recorder_cost() {
    let Some(without) = std::env::var_os("AGENTFS_BIN_NO_RECORDER") else {
        println!("fsbench recorder: set AGENTFS_BIN_NO_RECORDER (see scripts/bench-recorder.sh)");
        return;
    };
    let (with, off) = interleaved_create_rates("bench-recorder", &bin(), &without, 5_000);
    let (with, off) = (best_of(&with), best_of(&off));
    let cost = (off / with - 1.0) * 100.0;
    println!("\n=== flight recorder cost (create+4KiB+close, data dir on tmpfs, best of 5)");
    println!(
        "files/s  recorder {with:>9.0}  compiled out {off:>9.0}  cost {cost:>5.1}%  target ≤ 15%  {}",
        if cost <= 15.0 { "PASS" } else { "MISS" }
    );
}

/// What the default policy costs through the mount, without the rest of the bench: sequential
/// write (1 GiB in 1 MiB blocks) and create + 4 KiB + close (20,000 files). Two daemons run
/// at once, each with its data dir on a tmpfs: one with the default policy, one with the
/// allow-all one. The workload alternates between them in short bursts (32 MiB, 500 files;
/// in the order AB, BA, AB, …), so load that drifts within seconds falls on both alike. The
/// verdict is on the median of the bursts' overheads. Each burst also reads its daemon's CPU
/// time, which this VM's scheduling blurs much less than the wall clock.
fn report_policy_cost() {
    const SEQ_MIB: usize = 1024;
    const BURST_MIB: usize = 32;
    const FILES: usize = 20_000;
    const BURST_FILES: usize = 500;
    let dir = fresh_dir("bench-policy-file");
    let allow_all = dir.join("allow-all.toml");
    fs::write(&allow_all, ALLOW_ALL_POLICY).unwrap();
    let allow_all = allow_all.to_string_lossy().into_owned();
    let mount = |args: Vec<String>| {
        move |root: &Path| {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Mount::unmounted(root.join("mnt"), root.join("data-fs/data"), None).with_args(&args)
        }
    };
    let empty_args = vec!["--policy".to_string(), allow_all];
    let (seq, create) = on_tmpfs_data("bench-policy-default", mount(Vec::new()), |d| {
        on_tmpfs_data("bench-policy-empty", mount(empty_args), |e| {
            let dirs = [d.mem("bench", "semantic"), e.mem("bench", "semantic")];
            let pids = [d, e].map(|m| m.daemon_pid().expect("the daemon's pid"));
            // Every MiB unique, as an agent's writes are: a block written twice would be
            // stored once (chunks are content-addressed) on both sides.
            let seq_of = |name: &str, data: fn(u64, usize) -> Vec<u8>| {
                let mut files = dirs.clone().map(|d| File::create(d.join(name)).unwrap());
                // The round the bytes were made for: both sides of a round write them.
                let mut made = (usize::MAX, Vec::new());
                alternate(SEQ_MIB / BURST_MIB, |side, round| {
                    if made.0 != round {
                        made = (round, data(round as u64, BURST_MIB << 20));
                    }
                    Burst::time(pids[side], BURST_MIB, || {
                        for block in made.1.chunks(1 << 20) {
                            files[side].write_all(block).unwrap();
                        }
                    })
                })
            };
            let seq = [seq_of("text", agent_text), seq_of("random", pattern)];
            let create = alternate(FILES / BURST_FILES, |side, round| {
                let burst = dirs[side].join(format!("burst{round:03}"));
                fs::create_dir(&burst).unwrap();
                Burst::time(pids[side], BURST_FILES, || {
                    create_rate(&burst, BURST_FILES, &[b'x'; 4096]);
                })
            });
            (seq, create)
        })
    });
    let _ = fs::remove_dir_all(&dir);
    println!(
        "\n=== policy overhead in alternating bursts: default policy and allow-all mounted at \
         once ({} bursts of {BURST_MIB} MiB of each data and {} of {BURST_FILES} files each), \
         load {}",
        seq[0].len(),
        create.len(),
        loadavg()
    );
    report_policy_overhead(&[
        ("seq write, agent text MiB/s", "MiB", &seq[0]),
        ("seq write, random MiB/s", "MiB", &seq[1]),
        ("create+4KiB+close files/s", "file", &create),
    ]);
}

/// `len` bytes of what agents write (log lines, notes, JSON, code), numbered from
/// `seed * 10^9` so that no two calls give the same chunk; no secrets.
fn agent_text(seed: u64, len: usize) -> Vec<u8> {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(len + 256);
    let mut i = seed * 1_000_000_000;
    while out.len() < len {
        let (a, b) = (i % 997, i % 89);
        let _ = match i % 5 {
            0 => writeln!(out, "2026-11-28T12:{:02}:{:02}Z step={i} tool=search status=ok duration_ms={a} tokens={b}", b % 60, a % 60),
            1 => writeln!(out, "- [ ] follow up on item {i}: summarise the thread and file the action items for the team"),
            2 => writeln!(out, "{{\"id\": {i}, \"name\": \"widget-{a}\", \"tags\": [\"blue\", \"small\"], \"price\": {b}.{a}}}"),
            3 => writeln!(out, "The agent compared run {i} with run {a}; latency moved from {b} ms to {a} ms, so it kept the cache."),
            _ => writeln!(out, "fn step_{i}(input: &Input) -> Result<Output, Error> {{ let parsed = parse(input)?; check(parsed, {a}) }}"),
        };
        i += 1;
    }
    let mut bytes = out.into_bytes();
    bytes.truncate(len);
    bytes
}

/// One burst of work on one mount: units (MiB, files) per second of wall clock, and the
/// daemon's CPU time per unit.
#[derive(Clone, Copy, Default)]
struct Burst {
    rate: f64,
    cpu_us_per_unit: f64,
}

impl Burst {
    /// A rate measured without the daemon's CPU time.
    fn of_rate(rate: f64) -> Burst {
        Burst {
            rate,
            cpu_us_per_unit: 0.0,
        }
    }

    fn time(daemon: i32, units: usize, work: impl FnOnce()) -> Burst {
        let cpu0 = daemon_cpu_ns(daemon);
        let t0 = Instant::now();
        work();
        let wall = t0.elapsed().as_secs_f64();
        let cpu = daemon_cpu_ns(daemon).saturating_sub(cpu0);
        Burst {
            rate: units as f64 / wall,
            cpu_us_per_unit: cpu as f64 / 1e3 / units as f64,
        }
    }
}

/// Runs `rounds` bursts on each of two mounts (side 0 = default policy, 1 = allow-all), in
/// the order AB, BA, AB, …; `burst(side, round)` times itself. The bursts of each round as
/// pairs [default, allow-all].
fn alternate(rounds: usize, mut burst: impl FnMut(usize, usize) -> Burst) -> Vec<[Burst; 2]> {
    (0..rounds)
        .map(|round| {
            let mut pair = [Burst::default(); 2];
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for side in order {
                pair[side] = burst(side, round);
            }
            pair
        })
        .collect()
}

/// No built-in rules, no content rules: every call is allowed by one glob.
const ALLOW_ALL_POLICY: &str =
    "[builtin]\nenabled = false\n\n[[allow]]\nname = \"all\"\npaths = [\"**\"]\n";

fn bench_agentfs_tmpfs_data(class: &str, s: &Sizes) -> Figures {
    let root = fresh_dir("bench-tmpfsdata");
    mount_tmpfs(&root.join("data-fs"));
    let td = bench_agentfs(
        "agentfs tmpfs-data",
        root.join("mnt"),
        root.join("data-fs/data"),
        class,
        s,
    );
    umount(&root.join("data-fs"));
    let _ = fs::remove_dir_all(&root);
    td
}

/// The workload's create, stat and readdir parts on the FUSE floor, mounted with agentfs's
/// default mount options and capabilities.
fn bench_floor(s: &Sizes) -> Figures {
    let root = fresh_dir("bench-floor");
    let mnt = root.join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let floor = floorfs::mount(&mnt, false).expect("mount the FUSE floor");
    let f = run_workload("FUSE floor", &mnt, s, None, false, Some(&floor.counts));
    drop(floor);
    let _ = fs::remove_dir_all(&root);
    f
}

/// Requests per create on the floor with `FUSE_HANDLE_KILLPRIV_V2` (agentfs does not ask for
/// it): what the capability would save.
fn floor_requests_with_killpriv(files: usize) -> (f64, String) {
    let root = fresh_dir("bench-floor-killpriv");
    let mnt = root.join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let floor = floorfs::mount(&mnt, true).expect("mount the FUSE floor");
    let before = floor.counts.snapshot();
    create_rate(&mnt, files, &[b'x'; 4096]);
    let out = per_file(&before, &floor.counts.snapshot(), files);
    drop(floor);
    let _ = fs::remove_dir_all(&root);
    out
}

/// Requests between two snapshots divided by `files`: the total and "OP n.nn" by opcode.
fn per_file(before: &[u64], after: &[u64], files: usize) -> (f64, String) {
    let diff: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    let total = diff.iter().sum::<u64>() as f64 / files as f64;
    let by_op = floorfs::OPS
        .iter()
        .zip(&diff)
        .filter(|(_, n)| **n > 0)
        .map(|(op, n)| format!("{op} {:.2}", *n as f64 / files as f64))
        .collect::<Vec<_>>()
        .join(", ");
    (total, by_op)
}

/// create + 4 KiB + close of 5,000 files by `$AGENTFS_BIN_BASELINE` and by the binary under
/// test, data dir on a tmpfs, interleaved five times; best of each.
fn report_baseline_create() {
    let Some(baseline) = std::env::var_os("AGENTFS_BIN_BASELINE") else {
        println!("fsbench create: set AGENTFS_BIN_BASELINE to the agentfs binary to compare with");
        return;
    };
    let files = std::env::var("AGENTFS_BENCH_FILES").map_or(5_000, |v| v.parse().unwrap());
    println!("fsbench create: load average at start {}", loadavg());
    let (base, this) = interleaved_create_rates("bench-create", &baseline, &bin(), files);
    let show = |v: &[f64]| {
        v.iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!("\n=== create+4KiB+close ({files} files, data dir on tmpfs, interleaved, best of 5)");
    println!(
        "baseline {:>7.0} files/s  ({})",
        best_of(&base),
        show(&base)
    );
    println!(
        "this     {:>7.0} files/s  ({})",
        best_of(&this),
        show(&this)
    );
    println!("fsbench create: load average at the end {}", loadavg());
}

fn bench_agentfs(name: &str, mnt: PathBuf, data: PathBuf, class: &str, s: &Sizes) -> Figures {
    bench_agentfs_with(name, mnt, data, class, s, &[])
}

fn bench_agentfs_with(
    name: &str,
    mnt: PathBuf,
    data: PathBuf,
    class: &str,
    s: &Sizes,
    args: &[&str],
) -> Figures {
    let mut m = Mount::unmounted(mnt, data, None).with_args(args);
    m.mount();
    m.agent("bench");
    let dir = m.mem("bench", class);
    // Working memory does not survive a remount: there, "cold" only drops the kernel caches.
    let remount = class != "working";
    run_workload(name, &dir, s, Some(&mut m), remount, None)
    // `m` unmounts on drop.
}

fn daemon_rss(m: Option<&Mount>) -> Option<u64> {
    let pid = m?.daemon_pid()?;
    let st = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    st.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Sequential write (1 MiB blocks, fsync) and cold sequential read of one file.
fn seq_workload(
    f: &mut Figures,
    name: &str,
    dir: &Path,
    s: &Sizes,
    m: Option<&mut Mount>,
    remount_for_cold: bool,
) {
    // Sequential write, 1 MiB blocks, fsync at the end.
    let block = pattern(42, 1 << 20);
    let seq = dir.join("seq.bin");
    let t0 = Instant::now();
    let mut file = File::create(&seq).unwrap();
    for i in 0..s.seq_mib {
        let mut b = block.clone();
        b[..8].copy_from_slice(&(i as u64).to_le_bytes());
        file.write_all(&b).unwrap();
    }
    file.sync_all().unwrap();
    drop(file);
    f.seq_write_mibs = s.seq_mib as f64 / t0.elapsed().as_secs_f64();
    println!("  seq write  {:>10.0} MiB/s", f.seq_write_mibs);

    // Cold sequential read: for agentfs a remount (drops the daemon's own caches), for all
    // targets a drop of the kernel's page, dentry and inode caches.
    if let Some(m) = m.filter(|_| remount_for_cold) {
        m.remount();
    }
    drop_caches();
    let t0 = Instant::now();
    let mut file = File::open(&seq).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0usize;
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n;
    }
    f.seq_read_mibs = s.seq_mib as f64 / t0.elapsed().as_secs_f64();
    assert_eq!(total, s.seq_mib << 20, "{name}: read back size");
    println!("  cold read  {:>10.0} MiB/s", f.seq_read_mibs);
    fs::remove_file(&seq).unwrap();
}

/// The workload in `dir`. On the floor (`floor` gives its request counts) only the parts
/// that need no data: create, stat, readdir + lstat, unlink.
fn run_workload(
    name: &str,
    dir: &Path,
    s: &Sizes,
    mut m: Option<&mut Mount>,
    remount_for_cold: bool,
    floor: Option<&floorfs::Counts>,
) -> Figures {
    println!("\n== {name} ({})", dir.display());
    let mut f = Figures::default();
    if floor.is_none() {
        seq_workload(&mut f, name, dir, s, m.as_deref_mut(), remount_for_cold);
    }

    // 4 KiB create + write + close.
    let small = dir.join("small");
    fs::create_dir(&small).unwrap();
    let four_k = pattern(7, 4096);
    let before = floor.map(|c| c.snapshot());
    f.create_fps = create_rate(&small, s.small_files, &four_k);
    println!("  create     {:>10.0} files/s", f.create_fps);
    if let (Some(c), Some(before)) = (floor, before) {
        let (n, by_op) = per_file(&before, &c.snapshot(), s.small_files);
        println!("  requests per created file: {n:.2} ({by_op})");
        f.requests_per_create = Some((n, by_op));
    }

    // stat, several passes.
    let paths: Vec<PathBuf> = (0..s.small_files)
        .map(|i| small.join(format!("f{i:06}")))
        .collect();
    let t0 = Instant::now();
    for _ in 0..s.stat_passes {
        for p in &paths {
            let md = fs::metadata(p).unwrap();
            assert_eq!(md.len(), 4096);
        }
    }
    f.stat_ps = (s.stat_passes * s.small_files) as f64 / t0.elapsed().as_secs_f64();
    println!("  stat       {:>10.0} stats/s", f.stat_ps);

    // readdir + lstat of every entry: cold (caches dropped before each run; median of 3) and warm.
    let mut cold_runs = Vec::new();
    for _ in 0..3 {
        drop_caches();
        cold_runs.push(readdir_lstat(&small, s.small_files));
    }
    cold_runs.sort_by(f64::total_cmp);
    f.readdir_cold_ms = cold_runs[1];
    let mut warm_runs: Vec<f64> = (0..3)
        .map(|_| readdir_lstat(&small, s.small_files))
        .collect();
    warm_runs.sort_by(f64::total_cmp);
    f.readdir_warm_ms = warm_runs[1];
    println!(
        "  readdir+lstat {} entries: cold {:.1} ms, warm {:.1} ms",
        s.small_files, f.readdir_cold_ms, f.readdir_warm_ms
    );

    // Create rate as one directory grows (not on the floor: the create figure says enough;
    // `AGENTFS_BENCH_ONLY=floor` leaves it out for agentfs too).
    let grow = dir.join("grow");
    let growth = floor.is_none() && s.grow_files > 0;
    if growth {
        fs::create_dir(&grow).unwrap();
        let mut band_start = Instant::now();
        for i in 0..s.grow_files {
            let mut fh = File::create(grow.join(format!("g{i:07}"))).unwrap();
            fh.write_all(&four_k).unwrap();
            drop(fh);
            if (i + 1) % s.band == 0 {
                f.grow_bands
                    .push(s.band as f64 / band_start.elapsed().as_secs_f64());
                band_start = Instant::now();
            }
        }
        println!(
            "  growth     {} files/s per {}-entry band",
            f.grow_bands
                .iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(" "),
            s.band
        );
    }

    // Unlink rate.
    let t0 = Instant::now();
    for p in &paths {
        fs::remove_file(p).unwrap();
    }
    f.unlink_fps = s.small_files as f64 / t0.elapsed().as_secs_f64();
    println!("  unlink     {:>10.0} files/s", f.unlink_fps);
    if growth {
        let t0 = Instant::now();
        fs::remove_dir_all(&grow).unwrap();
        let rm = t0.elapsed().as_secs_f64();
        f.notes.push(format!(
            "rm -r of the {}-entry dir: {:.2} s ({:.0} files/s)",
            s.grow_files,
            rm,
            s.grow_files as f64 / rm
        ));
        println!("  {}", f.notes.last().unwrap());
    }
    fs::remove_dir(&small).unwrap();

    f.rss_kib = daemon_rss(m.as_deref());
    if let Some(r) = f.rss_kib {
        println!("  daemon peak RSS (VmHWM) {} MiB", r / 1024);
    }
    f
}

fn readdir_lstat(dir: &Path, want: usize) -> f64 {
    let t0 = Instant::now();
    let mut n = 0;
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let md = fs::symlink_metadata(e.path()).unwrap();
        std::hint::black_box(md.len());
        n += 1;
    }
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(n, want, "readdir of {} listed {n} entries", dir.display());
    ms
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

enum Goal {
    /// agentfs ≥ factor × tmpfs
    Ratio(f64),
    /// agentfs ≥ absolute
    AtLeast(f64),
    /// agentfs ≤ absolute
    AtMost(f64),
    None,
}

/// The default policy (built-in rules, 16 secret patterns scanned around every write) against
/// an empty one, both with the data dir on a tmpfs: `(default, empty)` rates per run, in
/// pairs. Target: at most 10% slower, judged on the median of the pairs' overheads.
/// One line per measure (name, unit of the CPU figure, pairs [default, allow-all]).
fn report_policy_overhead(measures: &[(&str, &str, &[[Burst; 2]])]) {
    println!("\n=== policy overhead (data dir on tmpfs; default policy vs empty policy)");
    // The median and middle half of the pairs' overheads, in %.
    let spread = |mut overheads: Vec<f64>| {
        overheads.sort_by(f64::total_cmp);
        let at = |q: usize| overheads[overheads.len() * q / 4];
        (at(2), at(1), at(3))
    };
    let line = |name: &str, unit: &str, pairs: &[[Burst; 2]]| {
        let (median, low, high) = spread(
            pairs
                .iter()
                .map(|[w, wo]| (wo.rate / w.rate - 1.0) * 100.0)
                .collect(),
        );
        let best = |side: usize| pairs.iter().map(|p| p[side].rate).fold(0f64, f64::max);
        let (with, without) = (best(0), best(1));
        let judge = if median <= 10.0 { "PASS" } else { "MISS" };
        println!(
            "{name:<28} best: default {with:>10.1}  empty {without:>10.1} ({:+.1}%)  median of {} pairs {median:>5.1}% (middle half {low:.1} to {high:.1})  target ≤ 10%  {judge}",
            (without / with - 1.0) * 100.0,
            pairs.len(),
        );
        if pairs.iter().flatten().any(|b| b.cpu_us_per_unit == 0.0) {
            return;
        }
        let (cpu, cpu_low, cpu_high) = spread(
            pairs
                .iter()
                .map(|[w, wo]| (w.cpu_us_per_unit / wo.cpu_us_per_unit - 1.0) * 100.0)
                .collect(),
        );
        let median_cpu = |side: usize| {
            let mut v: Vec<f64> = pairs.iter().map(|p| p[side].cpu_us_per_unit).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!(
            "{:<28} daemon CPU µs per {unit}: default {:>8.1}  empty {:>8.1}  median of pairs {cpu:+.1}% (middle half {cpu_low:+.1} to {cpu_high:+.1})",
            "",
            median_cpu(0),
            median_cpu(1),
        );
    };
    for (name, unit, pairs) in measures {
        line(name, unit, pairs);
    }
}

fn report(s: &Sizes, t: &Figures, d: &Figures, td: &Figures) {
    println!("\n=== fsbench summary (ratio = agentfs / tmpfs; for readdir ms lower is better)");
    println!(
        "{:<34} {:>10} {:>13} {:>7} {:>13} {:>7}  {:<22} {:<6} {:<6}",
        "metric",
        "tmpfs",
        "agentfs-disk",
        "ratio",
        "agentfs-tmpd",
        "ratio",
        "target",
        "disk",
        "tmpd"
    );
    let line = |name: &str, tv: f64, dv: f64, tdv: f64, goal: Goal, unit_goal: String| {
        let judge = |v: f64| -> &'static str {
            let ok = match goal {
                Goal::Ratio(k) => v >= k * tv,
                Goal::AtLeast(x) => v >= x,
                Goal::AtMost(x) => v <= x,
                Goal::None => return "-",
            };
            if ok {
                "PASS"
            } else {
                "MISS"
            }
        };
        println!(
            "{:<34} {:>10.1} {:>13.1} {:>6.2}x {:>13.1} {:>6.2}x  {:<22} {:<6} {:<6}",
            name,
            tv,
            dv,
            dv / tv,
            tdv,
            tdv / tv,
            unit_goal,
            judge(dv),
            judge(tdv)
        );
    };
    line(
        &format!("seq write {} MiB+fsync MiB/s", s.seq_mib),
        t.seq_write_mibs,
        d.seq_write_mibs,
        td.seq_write_mibs,
        Goal::Ratio(0.4),
        "≥ 0.4× tmpfs".into(),
    );
    line(
        "cold seq read MiB/s",
        t.seq_read_mibs,
        d.seq_read_mibs,
        td.seq_read_mibs,
        Goal::Ratio(0.25),
        "≥ 0.25× tmpfs".into(),
    );
    line(
        &format!("create+4KiB+close ({}) files/s", s.small_files),
        t.create_fps,
        d.create_fps,
        td.create_fps,
        Goal::AtLeast(10_000.0),
        "≥ 10,000 files/s".into(),
    );
    line(
        "stat /s",
        t.stat_ps,
        d.stat_ps,
        td.stat_ps,
        Goal::AtLeast(50_000.0),
        "≥ 50,000/s".into(),
    );
    line(
        &format!("readdir+lstat {} cold ms", s.small_files),
        t.readdir_cold_ms,
        d.readdir_cold_ms,
        td.readdir_cold_ms,
        Goal::AtMost(40.0),
        "≤ 40 ms".into(),
    );
    line(
        &format!("readdir+lstat {} warm ms", s.small_files),
        t.readdir_warm_ms,
        d.readdir_warm_ms,
        td.readdir_warm_ms,
        Goal::AtMost(40.0),
        "≤ 40 ms".into(),
    );
    line(
        &format!("unlink ({}) files/s", s.small_files),
        t.unlink_fps,
        d.unlink_fps,
        td.unlink_fps,
        Goal::None,
        "(none)".into(),
    );
    // "No slowdown": the median of the last three bands against the median of the first
    // three (a median, so one band disturbed by other load does not decide).
    let median3 = |v: &[f64]| -> f64 {
        let mut w = v.to_vec();
        w.sort_by(f64::total_cmp);
        w.get(w.len() / 2).copied().unwrap_or(0.0)
    };
    let slow = |f: &Figures| -> f64 {
        let n = f.grow_bands.len();
        let k = n.min(3);
        median3(&f.grow_bands[n - k..]) / median3(&f.grow_bands[..k])
    };
    println!(
        "{:<34} {:>10.2} {:>13.2} {:>7} {:>13.2} {:>7}  {:<22} {:<6} {:<6}",
        format!("growth to {}: last/first bands", s.grow_files),
        slow(t),
        slow(d),
        "",
        slow(td),
        "",
        "≥ 0.8 (no slowdown)",
        if slow(d) >= 0.8 { "PASS" } else { "MISS" },
        if slow(td) >= 0.8 { "PASS" } else { "MISS" },
    );
    let min_band = |f: &Figures| f.grow_bands.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "{:<34} {:>10.0} {:>13.0} {:>7} {:>13.0} {:>7}  {:<22} {:<6} {:<6}",
        "growth: slowest band files/s",
        min_band(t),
        min_band(d),
        "",
        min_band(td),
        "",
        "≥ 10,000 files/s",
        if min_band(d) >= 10_000.0 {
            "PASS"
        } else {
            "MISS"
        },
        if min_band(td) >= 10_000.0 {
            "PASS"
        } else {
            "MISS"
        },
    );
    let rss = |f: &Figures| {
        f.rss_kib
            .map_or("?".to_string(), |k| format!("{} MiB", k / 1024))
    };
    println!(
        "{:<34} {:>10} {:>13} {:>7} {:>13} {:>7}  {:<22}",
        "daemon peak RSS (VmHWM)",
        "-",
        rss(d),
        "",
        rss(td),
        "",
        "(reported)"
    );
    for (name, f) in [("tmpfs", t), ("agentfs-disk", d), ("agentfs-tmpd", td)] {
        println!(
            "growth bands {name}: {}",
            f.grow_bands
                .iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    println!("(informational: the benchmark never fails on a MISS)");
}

/// The floor against agentfs (data dir on tmpfs; on disk too and tmpfs in a full run): how
/// much of each figure is the transport. For rates the ratio is agentfs / floor (1.0 = all
/// transport), for readdir ms floor / agentfs, so that 1.0 means "at the floor" in both.
fn report_floor(s: &Sizes, fl: &Figures, td: &Figures, full: Option<(&Figures, &Figures)>) {
    println!(
        "\n=== FUSE floor (a minimal in-memory FUSE fs mounted like agentfs; share = how close \
         agentfs is to it, 1.00 = at the floor)"
    );
    println!(
        "{:<34} {:>10} {:>10} {:>13} {:>7} {:>13} {:>7}",
        "metric", "tmpfs", "floor", "agentfs-tmpd", "share", "agentfs-disk", "share"
    );
    let line = |name: &str, pick: fn(&Figures) -> f64, lower_is_better: bool| {
        let share = |v: f64| {
            if lower_is_better {
                pick(fl) / v
            } else {
                v / pick(fl)
            }
        };
        let (tmpfs, disk) = match full {
            Some((t, d)) => (
                format!("{:.1}", pick(t)),
                format!("{:>13.1} {:>6.2}x", pick(d), share(pick(d))),
            ),
            None => ("-".into(), format!("{:>13} {:>7}", "-", "")),
        };
        println!(
            "{:<34} {:>10} {:>10.1} {:>13.1} {:>6.2}x {}",
            name,
            tmpfs,
            pick(fl),
            pick(td),
            share(pick(td)),
            disk
        );
    };
    line(
        &format!("create+4KiB+close ({}) files/s", s.small_files),
        |f| f.create_fps,
        false,
    );
    line("stat /s", |f| f.stat_ps, false);
    line(
        &format!("readdir+lstat {} cold ms", s.small_files),
        |f| f.readdir_cold_ms,
        true,
    );
    line(
        &format!("readdir+lstat {} warm ms", s.small_files),
        |f| f.readdir_warm_ms,
        true,
    );
    line(
        &format!("unlink ({}) files/s", s.small_files),
        |f| f.unlink_fps,
        false,
    );
    if let Some((n, by_op)) = &fl.requests_per_create {
        println!("floor requests per create+4KiB+close: {n:.2} ({by_op})");
        let (n, by_op) = floor_requests_with_killpriv(s.small_files);
        println!("  with FUSE_HANDLE_KILLPRIV_V2:        {n:.2} ({by_op})");
    }
}

// ---------------------------------------------------------------------------------------------
// System helpers
// ---------------------------------------------------------------------------------------------

fn mount_tmpfs(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    let (src, target, fstype) = (cstr("tmpfs"), cstr(dir), cstr("tmpfs"));
    let opts = cstr("size=8g,mode=0755");
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            opts.as_ptr().cast(),
        )
    };
    assert_eq!(
        r,
        0,
        "mount tmpfs on {}: {}",
        dir.display(),
        std::io::Error::last_os_error()
    );
}

fn umount(dir: &Path) {
    let c = cstr(dir);
    if unsafe { libc::umount2(c.as_ptr(), 0) } != 0 {
        let _ = detach(dir);
    }
}

fn drop_caches() {
    unsafe { libc::sync() };
    if let Err(e) = fs::write("/proc/sys/vm/drop_caches", "3") {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| println!("fsbench: cannot drop caches ({e}); cold figures are warm"));
    }
}

fn kernel() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

fn fs_name(p: &Path) -> String {
    let c = cstr(p);
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return "?".into();
    }
    match st.f_type as i64 {
        0x0102_1994 => "tmpfs (disk figures will not show disk cost)".into(),
        0xEF53 => "ext2/3/4".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683E => "btrfs".into(),
        0x794C_7630 => "overlayfs".into(),
        other => format!("type {other:#x}"),
    }
}
