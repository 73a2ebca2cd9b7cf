//! `agentfs search AGENT QUERY [--limit N] [--json]` (SPEC §6): a thin convenience over the
//! mount. It reads `MNT/AGENT/mem/semantic/.search/QUERY`, so it gives exactly what an agent
//! reading that file gets, and needs no access to the daemon's index.

use std::path::Path;

use clap::Args;

use crate::cli::agents::{agent_dir, MountSel};
use crate::cli::progress;
use crate::error::{reason, CliError};

#[derive(Debug, Args)]
pub struct SearchArgs {
    /// The agent whose semantic memory is searched (only its facts are ever found)
    pub agent: String,
    /// Tantivy query syntax: words, "phrases", AND/OR/NOT, path:WORD
    pub query: String,
    /// At most N hits (the best first)
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// JSON lines ({"score":1.2,"path":"notes/x","snippet":"…"}) instead of
    /// `score<TAB>path<TAB>snippet`
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub mount: MountSel,
}

pub fn run(args: SearchArgs) -> Result<(), CliError> {
    let mnt = args.mount.resolve()?;
    agent_dir(&mnt, &args.agent)?;
    let text = query_file(&mnt, &args.agent, &args.query)?;
    if let Some(why) = text.strip_prefix("error:") {
        return Err(CliError::Reported(format!("bad query: {}", why.trim())));
    }
    let limit = args.limit.unwrap_or(usize::MAX);
    for line in text.lines().take(limit) {
        if args.json {
            let mut cols = line.splitn(3, '\t');
            let (score, path, snippet) = (cols.next(), cols.next(), cols.next());
            let score: f64 = score.and_then(|s| s.parse().ok()).unwrap_or(0.0);
            let obj = serde_json::json!({
                "score": score,
                "path": path.unwrap_or(""),
                "snippet": snippet.unwrap_or(""),
            });
            println!("{obj}");
        } else {
            println!("{line}");
        }
    }
    Ok(())
}

fn query_file(mnt: &Path, agent: &str, query: &str) -> Result<String, CliError> {
    // A query is one file name: it cannot hold `/` (nor be empty).
    if query.is_empty() || query.contains('/') || query.len() > 255 {
        return Err(CliError::Reported(
            "a query must be 1–255 bytes without `/` (it is read as a file name)".into(),
        ));
    }
    let file = mnt.join(agent).join("mem/semantic/.search").join(query);
    std::fs::read_to_string(&file)
        .map_err(|e| CliError::Reported(format!("{}: {}", file.display(), reason(&e))))
}

#[derive(Debug, Args)]
pub struct ReindexArgs {
    /// Only this agent [default: every agent]
    pub agent: Option<String>,
    /// Start the rebuild and return; do not wait for it to finish
    #[arg(long)]
    pub no_wait: bool,
    /// JSON lines, one per agent: {"agent":…,"waited":…,"index":{…}} with the index's final
    /// status (`sys/agents/AGENT/index`)
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub mount: MountSel,
}

/// `agentfs reindex [AGENT]`: writes `rebuild` to each agent's `sys/agents/A/index` and waits
/// until every index reads `ready`, with progress on a terminal.
pub fn reindex(args: ReindexArgs) -> Result<(), CliError> {
    let mnt = args.mount.resolve()?;
    let agents: Vec<String> = match &args.agent {
        Some(a) => {
            agent_dir(&mnt, a)?;
            vec![a.clone()]
        }
        None => {
            let dir = mnt.join("sys/agents");
            let mut names: Vec<String> = std::fs::read_dir(&dir)
                .map_err(|e| CliError::Reported(format!("{}: {}", dir.display(), reason(&e))))?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }
    };
    for agent in &agents {
        let ctl = mnt.join("sys/agents").join(agent).join("index");
        match std::fs::write(&ctl, "rebuild\n") {
            Ok(()) => {}
            // One is running already: wait for that one.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => {
                let why = match e.raw_os_error() {
                    Some(libc::EPERM) => {
                        "refused: only an operator (an unbound process) may reindex".into()
                    }
                    _ => reason(&e),
                };
                return Err(CliError::Reported(format!("{}: {why}", ctl.display())));
            }
        }
    }
    let show = progress::wanted(args.json);
    for agent in &agents {
        let ctl = mnt.join("sys/agents").join(agent).join("index");
        let mut bar = None;
        let status = loop {
            let status = index_status(&ctl)?;
            if args.no_wait || status["state"] == "ready" {
                break status;
            }
            let done = status["rebuild"]["done"].as_u64().unwrap_or(0);
            let total = status["rebuild"]["total"].as_u64().unwrap_or(0);
            let bar = bar.get_or_insert_with(|| {
                progress::counter(show, &format!("reindexing {agent}"), "files", total)
            });
            bar.set_length(total.max(1));
            bar.set_position(done);
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        if args.json {
            let obj = serde_json::json!({
                "agent": agent,
                "waited": !args.no_wait,
                "index": status,
            });
            println!("{obj}");
        } else if !args.no_wait {
            eprintln!("agentfs: {agent}: search index rebuilt");
        }
    }
    Ok(())
}

/// The JSON status of one agent's index control file.
fn index_status(ctl: &Path) -> Result<serde_json::Value, CliError> {
    let text = std::fs::read_to_string(ctl)
        .map_err(|e| CliError::Reported(format!("{}: {}", ctl.display(), reason(&e))))?;
    serde_json::from_str(&text)
        .map_err(|e| CliError::Reported(format!("{}: not JSON ({e})", ctl.display())))
}
