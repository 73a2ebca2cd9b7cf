//! `agentfs episodes AGENT [FILE] [--since WHEN] [--json]`: an agent's experience in the order
//! it was written, each append with its time; `agentfs episodes prune AGENT --before WHEN`:
//! delete the logs last written before WHEN (SPEC §6).
//!
//! Thin over the mount: the timeline is `sys/agents/AGENT/episodes` (JSON lines: time, path,
//! offset, length of each write), the bytes are read from `AGENT/mem/episodic/PATH` at those
//! offsets, and a prune is a write to the operator-only control file `sys/agents/AGENT/prune`.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};

use crate::cli::agents::{agent_dir, MountSel};
use crate::error::{reason, CliError};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct EpisodesArgs {
    #[command(subcommand)]
    pub command: Option<EpisodesCommand>,
    #[command(flatten)]
    pub list: ListArgs,
}

#[derive(Debug, Subcommand)]
pub enum EpisodesCommand {
    /// Delete the agent's episodic logs whose last write is older than WHEN (recorded in the
    /// flight recorder; agents themselves can never delete a log)
    Prune(PruneArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// The agent
    #[arg(required = true)]
    pub agent: Option<String>,
    /// Only this log (a path below mem/episodic, or a directory of logs)
    pub file: Option<String>,
    /// Only writes at or after WHEN: a duration ago (`10m`, `2h`, `3days`), a time
    /// (`2026-11-27T10:00:00Z`, `2026-11-27 10:00:00` in UTC) or `@SECONDS` since the epoch
    #[arg(long, value_name = "WHEN", value_parser = parse_when)]
    pub since: Option<i64>,
    /// JSON lines ({"time_ns":…,"time":"…","path":"log","offset":0,"len":6,"text":"…"})
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub mount: MountSel,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// The agent
    pub agent: String,
    /// Delete logs last written before WHEN (same forms as --since)
    #[arg(long, value_name = "WHEN", value_parser = parse_when)]
    pub before: i64,
    /// Print {"agent":…,"before":…,"before_ns":…,"pruned":N} instead of a sentence
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub mount: MountSel,
}

/// WHEN as nanoseconds since the epoch.
pub fn parse_when(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let at = if let Some(secs) = s.strip_prefix('@') {
        let secs: u64 = secs
            .parse()
            .map_err(|_| format!("`{s}`: @ must be followed by whole seconds since the epoch"))?;
        UNIX_EPOCH + Duration::from_secs(secs)
    } else if let Ok(ago) = humantime::parse_duration(s) {
        SystemTime::now()
            .checked_sub(ago)
            .ok_or_else(|| format!("`{s}` ago is before the epoch"))?
    } else {
        humantime::parse_rfc3339_weak(s).map_err(|_| {
            format!(
                "`{s}` is neither a duration (10m, 2h) nor a time (2026-11-27T10:00:00Z, @SECONDS)"
            )
        })?
    };
    let ns = at
        .duration_since(UNIX_EPOCH)
        .map_err(|_| format!("`{s}` is before the epoch"))?
        .as_nanos();
    i64::try_from(ns).map_err(|_| format!("`{s}` is too far in the future"))
}

pub fn run(args: EpisodesArgs) -> Result<(), CliError> {
    match args.command {
        Some(EpisodesCommand::Prune(p)) => prune(p),
        None => list(args.list),
    }
}

/// One line of `sys/agents/AGENT/episodes`.
#[derive(Debug, serde::Deserialize)]
struct Episode {
    time_ns: i64,
    path: String,
    offset: u64,
    len: u64,
    #[serde(default)]
    untimed: bool,
}

fn list(args: ListArgs) -> Result<(), CliError> {
    let agent = args.agent.unwrap_or_default();
    let mnt = args.mount.resolve()?;
    let sys = agent_dir(&mnt, &agent)?;
    let timeline = sys.join("episodes");
    let text = std::fs::read_to_string(&timeline)
        .map_err(|e| CliError::Reported(format!("{}: {}", timeline.display(), reason(&e))))?;
    let logs = mnt.join(&agent).join("mem/episodic");
    let mut files: HashMap<String, File> = HashMap::new();
    let file = args.file.as_deref().map(|f| f.trim_matches('/'));
    for line in text.lines() {
        let e: Episode = serde_json::from_str(line).map_err(|err| {
            CliError::Reported(format!(
                "{}: unreadable line ({err}): {line}",
                timeline.display()
            ))
        })?;
        if let Some(f) = file {
            if !(e.path == f || e.path.starts_with(&format!("{f}/"))) {
                continue;
            }
        }
        if args.since.is_some_and(|since| e.time_ns < since) {
            continue;
        }
        let bytes = read_range(&mut files, &logs, &e)?;
        let text = String::from_utf8_lossy(&bytes);
        let when = time_text(e.time_ns);
        if args.json {
            let obj = serde_json::json!({
                "time_ns": e.time_ns,
                "time": when,
                "path": e.path,
                "offset": e.offset,
                "len": e.len,
                "untimed": e.untimed,
                "text": text,
            });
            println!("{obj}");
        } else {
            let body = text.strip_suffix('\n').unwrap_or(&text);
            let mark = if e.untimed { " (untimed)" } else { "" };
            println!("{when}  {}{mark}  {}", e.path, body.replace('\n', "\n    "));
        }
    }
    Ok(())
}

/// The bytes of one episode, read from the log through the mount.
fn read_range(
    files: &mut HashMap<String, File>,
    logs: &Path,
    e: &Episode,
) -> Result<Vec<u8>, CliError> {
    let path: PathBuf = logs.join(&e.path);
    if !files.contains_key(&e.path) {
        let f = File::open(&path)
            .map_err(|err| CliError::Reported(format!("{}: {}", path.display(), reason(&err))))?;
        files.insert(e.path.clone(), f);
    }
    let Some(f) = files.get(&e.path) else {
        return Ok(Vec::new());
    };
    let mut buf = vec![0u8; e.len as usize];
    let mut got = 0;
    while got < buf.len() {
        match f.read_at(&mut buf[got..], e.offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => {
                return Err(CliError::Reported(format!(
                    "{}: {}",
                    path.display(),
                    reason(&err)
                )))
            }
        }
    }
    buf.truncate(got);
    Ok(buf)
}

fn time_text(ns: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64);
    humantime::format_rfc3339_micros(at).to_string()
}

fn prune(args: PruneArgs) -> Result<(), CliError> {
    let mnt = args.mount.resolve()?;
    let sys = agent_dir(&mnt, &args.agent)?;
    let ctl = sys.join("prune");
    std::fs::write(&ctl, format!("{}\n", args.before)).map_err(|err| {
        let why = match err.raw_os_error() {
            Some(libc::EPERM) => "refused: only an operator (an unbound process) may prune".into(),
            _ => reason(&err),
        };
        CliError::Reported(format!("{}: {why}", ctl.display()))
    })?;
    let last = std::fs::read_to_string(&ctl).unwrap_or_default();
    let logs = last.split_whitespace().next().unwrap_or("0");
    if args.json {
        let obj = serde_json::json!({
            "agent": args.agent,
            "before": time_text(args.before),
            "before_ns": args.before,
            "pruned": logs.parse::<u64>().unwrap_or(0),
        });
        println!("{obj}");
    } else {
        println!(
            "pruned {logs} log(s) of {} last written before {}",
            args.agent,
            time_text(args.before)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn when_forms() {
        assert_eq!(parse_when("@0"), Ok(0));
        assert_eq!(parse_when("@1700000000"), Ok(1_700_000_000_000_000_000));
        assert_eq!(
            parse_when("2023-11-14T22:13:20Z"),
            Ok(1_700_000_000_000_000_000)
        );
        assert_eq!(
            parse_when("2023-11-14 22:13:20"),
            Ok(1_700_000_000_000_000_000)
        );
        let now = parse_when("0s").unwrap();
        let hour_ago = parse_when("1h").unwrap();
        let diff = now - hour_ago;
        assert!(
            (3_599_000_000_000..=3_601_000_000_000).contains(&diff),
            "{diff}"
        );
        for bad in [
            "",
            "soon",
            "@x",
            "@-1",
            "10 parsecs",
            "2023-13-45T00:00:00Z",
        ] {
            assert!(parse_when(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
