//! The daemon: `agentfs mount MNT --foreground` (also what a background `agentfs mount` runs).
//!
//! Order matters:
//! 1. block SIGTERM/SIGINT/SIGHUP before any thread exists, so only our signal thread gets them;
//! 2. check the mountpoint and the data dir, open the store (which locks it), write the pid file;
//! 3. mount (the FUSE handshake is done when that returns) and start the signal thread;
//! 4. tell whoever started us that the tree is ready, serve until unmounted (by us on a
//!    signal, by `agentfs unmount`, or by a plain `umount MNT`);
//! 5. flush everything to disk, remove the pid file.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agentfs_memory::StoreError;
use agentfs_policy::Engine;
use agentfs_vfs::fuse::{self, MountOptions};
use agentfs_vfs::{Periodic, Vfs, VfsError};
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

use crate::checks;
use crate::cli::mount::{MountArgs, READY};
use crate::datadir::{self, PidFile};
use crate::error::CliError;
use crate::mountinfo::FSNAME_PREFIX;
use crate::sys::{self, SignalSet, HANDLED_SIGNALS};

/// The pipe back to the `agentfs mount` that started us, if one did.
struct ReadyPipe(Option<File>);

impl ReadyPipe {
    fn ready(&mut self) {
        if let Some(mut f) = self.0.take() {
            if let Err(e) = f.write_all(&[READY]) {
                warn!("cannot report readiness to the starting process: {e}");
            }
        }
    }

    fn fail(&mut self, msg: &str) {
        if let Some(mut f) = self.0.take() {
            let _ = f.write_all(msg.as_bytes());
        }
    }
}

/// Runs the daemon in the calling process until the filesystem is unmounted.
pub fn run(args: &MountArgs) -> Result<(), CliError> {
    // Before the store, the index and the FUSE threads allocate anything large.
    let malloc_tuned = crate::malloc::tune();
    let mut pipe = match args.ready_fd {
        Some(fd) => ReadyPipe(Some(File::from(
            sys::adopt_fd(fd).ok_or(CliError::ReadyFd(fd))?,
        ))),
        None => ReadyPipe(None),
    };
    let daemonized = pipe.0.is_some();
    match serve(args, &mut pipe, malloc_tuned) {
        // Started by `agentfs mount`: that process prints the error; the log gets it with a
        // timestamp.
        Err(e) if daemonized => {
            error!("{e}");
            pipe.fail(&e.to_string());
            Err(CliError::ReportedElsewhere)
        }
        res => res,
    }
}

/// The tracing filter: RUST_LOG when set, else `level`.
pub fn log_filter(level: &str) -> Result<EnvFilter, tracing_subscriber::filter::ParseError> {
    EnvFilter::builder().parse(level)
}

/// fuser's own mount bookkeeping logs a misleading "Unmounting MNT" and "Failed to umount
/// filesystem: Invalid argument" when the filesystem was unmounted from outside (the normal
/// way: `agentfs unmount`, `umount`); the daemon logs its own mount lifecycle instead.
const QUIET_FUSER: &str = "fuser::session=error,fuser::mnt=error";

fn init_tracing(level: &str) -> Result<(), CliError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => log_filter(&v).map_err(|_| CliError::LogLevel {
            what: "RUST_LOG",
            value: v,
        })?,
        _ => {
            let bad = || CliError::LogLevel {
                what: "--log-level",
                value: level.to_string(),
            };
            if level.contains("fuser") {
                log_filter(level).map_err(|_| bad())?
            } else {
                log_filter(&format!("{level},{QUIET_FUSER}")).map_err(|_| bad())?
            }
        }
    };
    // Fails only if a subscriber is already installed, which is harmless.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
    Ok(())
}

fn serve(args: &MountArgs, pipe: &mut ReadyPipe, malloc_tuned: bool) -> Result<(), CliError> {
    let signals = SignalSet::new(&HANDLED_SIGNALS);
    signals.block().map_err(|err| CliError::Os {
        what: "block signals",
        err,
    })?;
    init_tracing(&args.log_level)?;
    set_process_name();
    stop_on_panic();

    let notice = |msg: &str| warn!("{msg}");
    let mnt = checks::mountpoint(&args.mountpoint, &notice)?;
    let data_dir = checks::data_dir(args.data_dir.as_deref(), &mnt)?;
    info!(
        "agentfs {} starting (pid {}): mountpoint {}, data dir {}",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        mnt.display(),
        data_dir.display()
    );
    if !malloc_tuned {
        info!("malloc's mmap threshold left as it was (set in the environment, or not glibc)");
    }

    let rules = crate::cli::policy::load(&args.policies)?;
    info!(
        "policy {}: built-in{}",
        rules.version(),
        args.policies
            .iter()
            .map(|p| format!(" + {}", p.display()))
            .collect::<String>()
    );
    let engine = Arc::new(Engine::new(rules));
    let vfs = Vfs::open_with_policy(&data_dir, engine).map_err(|e| open_error(e, &data_dir))?;
    vfs.set_audit_reads(args.audit_reads);
    let pid_file = PidFile::write(&data_dir)?;

    let mut opts = MountOptions {
        fsname: format!("{FSNAME_PREFIX}{}", data_dir.display()),
        read_only: args.read_only,
        ..MountOptions::default()
    };
    if let Some(n) = args.threads {
        opts.threads = usize::from(n);
    }
    let mut session = match fuse::mount(vfs.clone(), &mnt, &opts) {
        Ok(s) => s,
        Err(err) => {
            if let Err(e) = vfs.shutdown() {
                error!("flushing the store after the failed mount: {e}");
            }
            return Err(CliError::Mount { path: mnt, err });
        }
    };
    if let Err(e) = vfs.record_event("mount", &mnt.display().to_string()) {
        error!("could not record the mount in the flight recorder: {e}");
    }
    let flusher = start_audit_flusher(vfs.clone()).map_err(|err| CliError::Os {
        what: "start the audit flush thread",
        err,
    })?;
    let collector = if args.gc_interval.is_zero() {
        None
    } else {
        Some(
            agentfs_vfs::start_collector(&vfs, args.gc_interval).map_err(|err| CliError::Os {
                what: "start the garbage collection thread",
                err,
            })?,
        )
    };
    // Without it the daemon still serves, with a slowly growing RSS: not worth failing for.
    let trimmer = crate::malloc::start_trimmer().unwrap_or_else(|e| {
        error!("cannot start the memory trim thread: {e}");
        None
    });
    let unmounter = session.unmount_callable();
    let signal_mnt = mnt.clone();
    let reloader = Reloader {
        vfs: Arc::downgrade(&vfs),
        files: args.policies.clone(),
        status: datadir::reload_status_file(&data_dir),
    };
    std::thread::Builder::new()
        .name(String::from("agentfs-signals"))
        .spawn(move || signal_loop(signals, unmounter, signal_mnt, reloader))
        .map_err(|err| CliError::Os {
            what: "start the signal thread",
            err,
        })?;

    info!(
        "mounted {}{} with {} FUSE threads",
        mnt.display(),
        if opts.read_only { " read-only" } else { "" },
        opts.threads
    );
    pipe.ready();

    let served = session.run();
    match &served {
        Ok(()) => info!("{} unmounted; flushing the store", mnt.display()),
        Err(e) => error!("the FUSE session failed: {e}; flushing the store"),
    }
    if let Some(c) = collector {
        c.stop();
    }
    if let Some(t) = trimmer {
        t.stop();
    }
    flusher.stop();
    if let Err(e) = vfs.record_event("unmount", &mnt.display().to_string()) {
        error!("could not record the unmount in the flight recorder: {e}");
    }
    vfs.shutdown()
        .map_err(|e| CliError::Shutdown(e.to_string()))?;
    drop(pid_file);
    served.map_err(CliError::Session)?;
    info!("stopped cleanly");
    Ok(())
}

/// Commits queued audit entries (of calls that committed nothing themselves, e.g. in working
/// memory) every [`AUDIT_FLUSH`], so that readers of the flight recorder see them promptly.
fn start_audit_flusher(vfs: Arc<Vfs>) -> std::io::Result<Periodic> {
    Periodic::start("agentfs-audit", AUDIT_FLUSH, move || {
        if let Err(e) = vfs.flush_audit() {
            error!("could not commit queued audit entries: {e}");
        }
    })
}

const AUDIT_FLUSH: Duration = Duration::from_millis(100);

/// A panic is a bug in the daemon, and its in-memory state can no longer be trusted: stop
/// the whole process at once, exactly as `kill -9` would, instead of losing one FUSE worker
/// thread after another while the rest carry on. What was closed or fsync'd is in the store
/// (which is crash-safe); the mount answers ENOTCONN until the next `agentfs mount` or
/// `agentfs unmount` detaches it.
fn stop_on_panic() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        error!("BUG: the daemon panicked{at}: {msg}; stopping at once (closed and fsync'd data is safe)");
        default_hook(info);
        std::process::abort();
    }));
}

fn open_error(e: VfsError, data_dir: &Path) -> CliError {
    match e {
        VfsError::Store(StoreError::Locked(_)) => CliError::Locked {
            db: data_dir.join(datadir::DB_FILE),
            pid: datadir::holder_pid(data_dir),
        },
        other => CliError::Open {
            data_dir: data_dir.to_path_buf(),
            msg: other.to_string(),
        },
    }
}

/// Waits for SIGTERM/SIGINT (unmount, which ends `Session::run`) and SIGHUP (reload).
fn signal_loop(
    signals: SignalSet,
    mut unmounter: fuser::SessionUnmounter,
    mnt: PathBuf,
    reloader: Reloader,
) {
    let mut stopping = false;
    loop {
        let sig = match signals.wait() {
            Ok(sig) => sig,
            Err(e) => {
                error!("waiting for signals failed: {e}; signals are now ignored");
                return;
            }
        };
        let name = sys::signal_name(sig);
        if sig == libc::SIGHUP {
            info!("{name} received: reloading the policy");
            reloader.reload();
            continue;
        }
        if stopping {
            info!(
                "{name} received again: already unmounting {}",
                mnt.display()
            );
            continue;
        }
        stopping = true;
        info!("{name} received: unmounting {}", mnt.display());
        match unmounter.unmount() {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                warn!(
                    "{} is busy; detaching it now, the daemon stops once its last user is gone",
                    mnt.display()
                );
                if let Err(e) = sys::unmount_lazy(&mnt) {
                    error!("cannot detach {}: {e}", mnt.display());
                }
            }
            Err(e) => error!("cannot unmount {}: {e}", mnt.display()),
        }
    }
}

/// Re-reads the policy files given at mount (SIGHUP, `agentfs policy reload`).
struct Reloader {
    /// Weak: the store must close (and its applier drain) when `serve` drops the core,
    /// though the signal thread lives on until the process exits.
    vfs: std::sync::Weak<Vfs>,
    files: Vec<PathBuf>,
    /// Where the outcome of each attempt is written for `agentfs policy reload` to read.
    status: PathBuf,
}

impl Reloader {
    fn reload(&self) {
        let Some(vfs) = self.vfs.upgrade() else {
            return;
        };
        let pid = std::process::id();
        let outcome = match crate::cli::policy::compile(&self.files) {
            Ok(Ok(rules)) => {
                let new = rules.version();
                let old = vfs.install_policy(rules, pid);
                serde_json::json!({ "ok": true, "old": old.to_hex(), "version": new.to_hex() })
            }
            Ok(Err(lines)) => {
                let errors = lines.join("\n");
                error!("policy reload refused, the old rules stay:\n{errors}");
                vfs.record_refused_reload(pid, &errors);
                serde_json::json!({ "ok": false, "version": vfs.policy().version().to_hex(), "errors": lines })
            }
            Err(e) => {
                let msg = e.to_string();
                error!("policy reload refused, the old rules stay: {msg}");
                vfs.record_refused_reload(pid, &msg);
                serde_json::json!({ "ok": false, "version": vfs.policy().version().to_hex(), "errors": [msg] })
            }
        };
        let attempt = serde_json::json!({ "at_ns": agentfs_vfs::now_ns(), "outcome": outcome });
        if let Err(e) = datadir::write_atomically(&self.status, attempt.to_string().as_bytes()) {
            error!("cannot write {}: {e}", self.status.display());
        }
    }
}

/// Re-executed through /proc/self/exe, our name would be "exe" in ps/top; call it agentfs.
fn set_process_name() {
    const NAME: &[u8] = b"agentfs\0";
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, NAME.as_ptr() as libc::c_ulong, 0, 0, 0);
    }
}
