//! Checkpoint verbs (SPEC §7): `agentfs snapshot`, `rollback`, `diff`. Thin conveniences over
//! the mount: `mkdir MNT/AGENT/state/NAME`, `echo NAME > MNT/sys/agents/AGENT/rollback`, and a
//! walk of two trees (docs/checkpoints.md).

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;

use crate::cli::agents::{agent_dir, MountSel};
use crate::cli::{progress, style};
use crate::error::{reason, CliError};

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// The agent
    pub agent: String,
    /// The checkpoint's name (a file name not starting with `.`)
    pub name: String,
    /// Print {"agent":…,"checkpoint":…,"path":…,"ms":…} instead of a sentence
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub mount: MountSel,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The agent
    pub agent: String,
    /// The checkpoint mem/ becomes
    pub name: String,
    /// Print {"agent":…,"checkpoint":…,"ms":…} instead of a sentence
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub mount: MountSel,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The agent
    pub agent: String,
    /// The old side: checkpoint NAME
    pub name: String,
    /// The new side: checkpoint NAME2 [default: the live mem/]
    pub name2: Option<String>,
    /// JSON lines ({"status":"M","path":"semantic/x"}) instead of `M<TAB>path`
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub mount: MountSel,
}

fn checkpoint_error(agent: &str, name: &str, path: &Path, err: &std::io::Error) -> CliError {
    let why = match err.raw_os_error() {
        Some(libc::EEXIST) => format!("checkpoint `{name}` of {agent} exists already"),
        Some(libc::ENOENT) => format!(
            "no checkpoint `{name}` of {agent} (list them with: ls {})",
            path.parent().unwrap_or(path).display()
        ),
        Some(libc::EINVAL) => {
            format!("`{name}` is not a valid checkpoint name (a file name not starting with `.`)")
        }
        _ => format!("{}: {}", path.display(), reason(err)),
    };
    CliError::Reported(why)
}

/// `agentfs snapshot AGENT NAME`: `mkdir MNT/AGENT/state/NAME`.
pub fn snapshot(args: SnapshotArgs) -> Result<(), CliError> {
    let mnt = args.mount.resolve()?;
    agent_dir(&mnt, &args.agent)?;
    let path = mnt.join(&args.agent).join("state").join(&args.name);
    let started = Instant::now();
    std::fs::create_dir(&path).map_err(|e| checkpoint_error(&args.agent, &args.name, &path, &e))?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    if args.json {
        let obj = serde_json::json!({
            "agent": args.agent,
            "checkpoint": args.name,
            "path": path.display().to_string(),
            "ms": ms,
        });
        println!("{obj}");
    } else {
        println!(
            "{}: checkpoint {} taken in {ms:.1} ms ({})",
            args.agent,
            args.name,
            path.display()
        );
    }
    Ok(())
}

/// `agentfs rollback AGENT NAME`: writes NAME to `sys/agents/AGENT/rollback`.
pub fn rollback(args: RollbackArgs) -> Result<(), CliError> {
    let mnt = args.mount.resolve()?;
    let dir = agent_dir(&mnt, &args.agent)?;
    let ckpt = mnt.join(&args.agent).join("state").join(&args.name);
    let started = Instant::now();
    // One write does the whole rollback, so there is no progress to count: a spinner shows
    // that a big one is still at work.
    let spinner = progress::spinner(
        progress::wanted(args.json),
        &format!("rolling {} back to {}", args.agent, args.name),
    );
    let written = std::fs::write(dir.join("rollback"), format!("{}\n", args.name));
    spinner.finish_and_clear();
    written.map_err(|e| checkpoint_error(&args.agent, &args.name, &ckpt, &e))?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    if args.json {
        let obj = serde_json::json!({
            "agent": args.agent,
            "checkpoint": args.name,
            "ms": ms,
        });
        println!("{obj}");
    } else {
        println!(
            "{}: mem/ rolled back to {} in {ms:.1} ms",
            args.agent, args.name
        );
    }
    Ok(())
}

/// What `diff` compares of one node.
#[derive(Debug)]
struct Seen {
    kind: u32,
    size: u64,
    mtime: (i64, i64),
    perm: u32,
    target: Option<PathBuf>,
    path: PathBuf,
}

/// Every node below `root`, by path relative to it.
fn walk(root: &Path) -> Result<BTreeMap<String, Seen>, CliError> {
    let mut out = BTreeMap::new();
    let mut queue = vec![(root.to_path_buf(), String::new())];
    let io = |p: &Path, e: std::io::Error| {
        CliError::Reported(format!("{}: {}", p.display(), reason(&e)))
    };
    while let Some((dir, prefix)) = queue.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| io(&dir, e))? {
            let entry = entry.map_err(|e| io(&dir, e))?;
            let path = entry.path();
            let md = std::fs::symlink_metadata(&path).map_err(|e| io(&path, e))?;
            let rel = format!("{prefix}{}", entry.file_name().to_string_lossy());
            let target = md
                .file_type()
                .is_symlink()
                .then(|| std::fs::read_link(&path))
                .transpose()
                .map_err(|e| io(&path, e))?;
            if md.is_dir() {
                queue.push((path.clone(), format!("{rel}/")));
            }
            out.insert(
                rel,
                Seen {
                    kind: md.mode() & libc::S_IFMT,
                    size: md.size(),
                    mtime: (md.mtime(), md.mtime_nsec()),
                    perm: md.mode() & 0o7777,
                    target,
                    path,
                },
            );
        }
    }
    Ok(out)
}

/// Byte comparison of two files of the same size, in 1 MiB blocks.
fn same_bytes(a: &Path, b: &Path) -> std::io::Result<bool> {
    let (mut fa, mut fb) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = read_full(&mut fa, &mut ba)?;
        let m = read_full(&mut fb, &mut bb)?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// The `git diff --name-status` letter for a path present on both sides, if it changed.
fn change(old: &Seen, new: &Seen) -> Result<Option<char>, CliError> {
    if old.kind != new.kind {
        return Ok(Some('T'));
    }
    if old.perm != new.perm || old.target != new.target || old.size != new.size {
        return Ok(Some('M'));
    }
    if old.kind == libc::S_IFREG && old.mtime != new.mtime {
        // Same size, touched since: the bytes decide (like rsync's quick check, an equal
        // size and mtime count as unchanged without reading).
        let same = same_bytes(&old.path, &new.path)
            .map_err(|e| CliError::Reported(format!("{}: {}", new.path.display(), reason(&e))))?;
        return Ok((!same).then_some('M'));
    }
    Ok(None)
}

/// `agentfs diff AGENT NAME [NAME2]`: paths added (A), deleted (D), modified (M) or changed
/// type (T) from checkpoint NAME to NAME2 or to the live `mem/`.
pub fn diff(args: DiffArgs) -> Result<(), CliError> {
    let mnt = args.mount.resolve()?;
    agent_dir(&mnt, &args.agent)?;
    let agent = mnt.join(&args.agent);
    let old_root = agent.join("state").join(&args.name);
    let new_root = match &args.name2 {
        Some(n) => agent.join("state").join(n),
        None => agent.join("mem"),
    };
    for (root, name) in [
        (&old_root, Some(&args.name)),
        (&new_root, args.name2.as_ref()),
    ] {
        if let (false, Some(name)) = (root.is_dir(), name) {
            return Err(CliError::Reported(format!(
                "no checkpoint `{name}` of {} (list them with: ls {})",
                args.agent,
                agent.join("state").display()
            )));
        }
    }
    let old = walk(&old_root)?;
    let new = walk(&new_root)?;
    let mut out: Vec<(char, &str)> = Vec::new();
    for (path, o) in &old {
        match new.get(path) {
            None => out.push(('D', path)),
            Some(n) => {
                if let Some(c) = change(o, n)? {
                    out.push((c, path));
                }
            }
        }
    }
    for path in new.keys() {
        if !old.contains_key(path) {
            out.push(('A', path));
        }
    }
    out.sort_by(|a, b| a.1.cmp(b.1));
    let painter = style::Painter::for_stream(style::Stream::Stdout);
    for (status, path) in out {
        if args.json {
            println!(
                "{}",
                serde_json::json!({ "status": status.to_string(), "path": path })
            );
        } else {
            let letter = painter.paint(style::diff_status(status), &status.to_string());
            println!("{letter}\t{path}");
        }
    }
    Ok(())
}
