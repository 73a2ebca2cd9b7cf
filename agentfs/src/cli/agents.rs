//! Verbs that govern agents through the mounted control files (SPEC §1): `agentfs signal`,
//! `agentfs ps`, `agentfs run`. Each is a thin convenience over plain file I/O under
//! `MNT/sys/agents/AGENT/`, so everything here can also be done with `echo` and `cat`.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Args;

use crate::cli::style;
use crate::error::{reason, CliError};
use crate::mountinfo;

/// Which mount a verb talks to.
#[derive(Debug, Args)]
pub struct MountSel {
    /// The agentfs mountpoint [default: $AGENTFS_MOUNT, else /agents if it is an agentfs
    /// mount, else the only agentfs mount]
    #[arg(long = "mount", short = 'm', value_name = "MNT")]
    pub mount: Option<PathBuf>,
}

impl MountSel {
    /// The mountpoint: given, from `$AGENTFS_MOUNT`, or the single agentfs mount in
    /// `/proc/self/mountinfo`.
    pub fn resolve(&self) -> Result<PathBuf, CliError> {
        if let Some(m) = self
            .mount
            .clone()
            .or_else(|| std::env::var_os("AGENTFS_MOUNT").map(PathBuf::from))
        {
            return Ok(m);
        }
        let mounts = mountinfo::read().map_err(|err| CliError::Os {
            what: "read /proc/self/mountinfo",
            err,
        })?;
        let ours: Vec<_> = mounts.iter().filter(|m| m.is_agentfs()).collect();
        if ours.iter().any(|m| m.mount_point == Path::new("/agents")) {
            return Ok(PathBuf::from("/agents"));
        }
        match ours.as_slice() {
            [one] => Ok(one.mount_point.clone()),
            [] => Err(CliError::Reported(
                "no agentfs mount found; mount one with `agentfs mount MNT` or say which with --mount"
                    .into(),
            )),
            many => Err(CliError::Reported(format!(
                "{} agentfs mounts ({}); say which with --mount MNT or $AGENTFS_MOUNT",
                many.len(),
                many.iter()
                    .map(|m| m.mount_point.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }
}

pub(crate) fn agent_dir(mnt: &Path, agent: &str) -> Result<PathBuf, CliError> {
    let dir = mnt.join("sys/agents").join(agent);
    if !dir.is_dir() {
        return Err(CliError::Reported(format!(
            "no agent `{agent}` under {} (register it with mkdir {})",
            mnt.display(),
            mnt.join(agent).display()
        )));
    }
    Ok(dir)
}

fn write_control(file: &Path, text: &str) -> Result<(), CliError> {
    std::fs::write(file, text).map_err(|err| {
        let why = match err.raw_os_error() {
            Some(libc::EINVAL) => "refused (not a valid value)".to_string(),
            Some(libc::ESRCH) => "no such process".to_string(),
            _ => reason(&err),
        };
        CliError::Reported(format!("{}: {why}", file.display()))
    })
}

#[derive(Debug, Args)]
pub struct SignalArgs {
    /// The agent
    pub agent: String,
    /// STOP, CONT, KILL or START (case-insensitive, SIG prefix allowed)
    pub signal: String,
    /// Print {"agent":…,"signal":…,"state":…} instead of `AGENT: STATE`
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub mount: MountSel,
}

/// `agentfs signal AGENT SIG`: writes SIG to `sys/agents/AGENT/signal` and prints the state.
pub fn signal(args: SignalArgs) -> Result<(), CliError> {
    let mnt = args.mount.resolve()?;
    let dir = agent_dir(&mnt, &args.agent)?;
    write_control(&dir.join("signal"), &format!("{}\n", args.signal))?;
    let state = std::fs::read_to_string(dir.join("signal")).unwrap_or_default();
    // The file reads `killed (rule …)` after a violation: the state is its first word.
    let state = state.trim();
    if args.json {
        let word = state.split_whitespace().next().unwrap_or("");
        let obj = serde_json::json!({
            "agent": args.agent,
            "signal": signal_name(&args.signal),
            "state": word,
            "detail": state,
        });
        println!("{obj}");
    } else {
        let painter = style::Painter::for_stream(style::Stream::Stdout);
        let word = state.split_whitespace().next().unwrap_or("");
        let rest = &state[word.len()..];
        println!(
            "{}: {}{rest}",
            args.agent,
            painter.paint(style::agent_state(word), word)
        );
    }
    Ok(())
}

/// The signal as the control file takes it: upper case, without a `SIG` prefix.
fn signal_name(given: &str) -> String {
    let upper = given.trim().to_ascii_uppercase();
    upper.strip_prefix("SIG").unwrap_or(&upper).to_string()
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// JSON lines (one status object per agent) instead of a table
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub mount: MountSel,
}

/// `agentfs ps`: one line per agent from its `status` file.
pub fn ps(args: PsArgs) -> Result<(), CliError> {
    let mnt = args.mount.resolve()?;
    let agents_dir = mnt.join("sys/agents");
    let mut names: Vec<String> = std::fs::read_dir(&agents_dir)
        .map_err(|err| CliError::Reported(format!("{}: {}", agents_dir.display(), reason(&err))))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    let table = !args.json;
    let painter = if table {
        style::Painter::for_stream(style::Stream::Stdout)
    } else {
        style::Painter::plain()
    };
    if table {
        let header = format!(
            "{:<20} {:<8} {:>6} {:>12} {:>8} {:>10}  LAST VIOLATION",
            "AGENT", "STATE", "PIDS", "BYTES", "FILES", "ERRORS"
        );
        println!("{}", painter.paint(style::HEADER, &header));
    }
    for name in names {
        let text = std::fs::read_to_string(agents_dir.join(&name).join("status"))
            .map_err(|err| CliError::Reported(format!("status of {name}: {}", reason(&err))))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| CliError::Reported(format!("status of {name}: {e}")))?;
        if !table {
            println!("{v}");
            continue;
        }
        let sum = |key: &str| -> u64 {
            v[key]
                .as_object()
                .map(|o| o.values().filter_map(|x| x.as_u64()).sum())
                .unwrap_or(0)
        };
        let violation = match v["last_violation"]["rule"].as_str() {
            Some(rule) => format!(
                "{rule} ({}) {}",
                v["last_violation"]["action"].as_str().unwrap_or("?"),
                v["last_violation"]["path"].as_str().unwrap_or("")
            ),
            None => "-".into(),
        };
        let state = v["state"].as_str().unwrap_or("?");
        // Padded first, then painted: escapes must not count towards the column width.
        let state_cell = painter.paint(style::agent_state(state), &format!("{state:<8}"));
        println!(
            "{:<20} {} {:>6} {:>12} {:>8} {:>10}  {}",
            name,
            state_cell,
            v["pids"].as_array().map_or(0, |a| a.len()),
            sum("bytes"),
            sum("files"),
            v["ops"]["errors"].as_u64().unwrap_or(0),
            violation
        );
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The agent CMD acts as
    #[arg(long, short = 'a')]
    pub agent: String,
    #[command(flatten)]
    pub mount: MountSel,
    /// The command and its arguments
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// `agentfs run --agent A -- CMD…`: binds itself to A (so CMD and everything it spawns act
/// as A), becomes the subreaper of CMD's tree (an orphaned descendant stays below it, so it
/// stays bound), runs CMD and exits with its status once every descendant is gone.
pub fn run(args: RunArgs) -> Result<(), CliError> {
    let mnt = args.mount.resolve()?;
    let dir = agent_dir(&mnt, &args.agent)?;
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) only changes how this process's orphaned
    // descendants are re-parented.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(CliError::Os {
            what: "become a subreaper",
            err: std::io::Error::last_os_error(),
        });
    }
    write_control(&dir.join("pids"), &format!("{}\n", std::process::id()))?;
    let (program, rest) = args
        .command
        .split_first()
        .ok_or_else(|| CliError::Reported("no command given".into()))?;
    let mut child = Command::new(program)
        .args(rest)
        .env("AGENTFS_AGENT", &args.agent)
        .env("AGENTFS_MOUNT", &mnt)
        .spawn()
        .map_err(|err| CliError::Reported(format!("cannot run {program}: {}", reason(&err))))?;
    let status = child.wait().map_err(|err| CliError::Os {
        what: "wait for the command",
        err,
    })?;
    // Reap orphaned descendants until none is left.
    loop {
        let mut st = 0;
        // SAFETY: waitpid with a valid out pointer.
        let r = unsafe { libc::waitpid(-1, &mut st, 0) };
        if r < 0 {
            break;
        }
    }
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    std::process::exit(code);
}
