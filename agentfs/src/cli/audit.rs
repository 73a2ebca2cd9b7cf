//! `agentfs audit verify` and `agentfs audit tail`: the flight recorder, read from the data
//! dir's database (read-only; works while a daemon has the dir mounted, and offline).
//! See docs/audit.md.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agentfs_memory::audit::{hex, verify_run};
use agentfs_memory::{AuditLog, AuditRecord, ChainHead, StoreError, VerifyReport};
use clap::{Args, Subcommand};

use crate::cli::{progress, style};
use crate::datadir;
use crate::error::CliError;

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: AuditCommand,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the whole hash chain and the pinned head; on damage name the first bad entry and
    /// what happened to it (altered, dropped, reordered, inserted, truncated); exit 0 only
    /// when the whole chain holds
    Verify(VerifyArgs),
    /// Print the last entries (a table on a terminal, JSON lines otherwise or with --json);
    /// -f keeps printing new ones
    Tail(TailArgs),
    /// Write entries 1..=SEQ to FILE as JSON lines with their hashes (verifiable elsewhere
    /// with `agentfs audit verify --file FILE`); checks the chain while writing
    Export(ExportArgs),
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The last entry to export
    #[arg(long, value_name = "SEQ")]
    pub until: u64,
    /// Where to write (must not exist; `-` for stdout)
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Data dir (default: $AGENTFS_DATA_DIR, $XDG_DATA_HOME/agentfs, ~/.local/share/agentfs)
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Print {"file":…,"first_seq":1,"last_seq":…,"last_hash":…} on stdout instead of a
    /// sentence on stderr (not with FILE `-`)
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Verify an export file (from `agentfs audit export`) instead of a data dir
    #[arg(long, value_name = "FILE", conflicts_with = "data_dir")]
    pub file: Option<PathBuf>,
    /// Data dir (default: $AGENTFS_DATA_DIR, $XDG_DATA_HOME/agentfs, ~/.local/share/agentfs)
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Print the report as one JSON object ({"ok":…,"entries":…,"problem":…}), also when the
    /// chain is broken (the exit status is the same)
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TailArgs {
    /// Keep running and print entries as they are recorded
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only this agent's entries
    #[arg(long, value_name = "AGENT")]
    pub agent: Option<String>,
    /// JSON lines (the default when stdout is not a terminal)
    #[arg(long)]
    pub json: bool,
    /// How many of the last entries to print first
    #[arg(short = 'n', long, value_name = "N", default_value_t = 20)]
    pub lines: u64,
    /// Data dir (default: $AGENTFS_DATA_DIR, $XDG_DATA_HOME/agentfs, ~/.local/share/agentfs)
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

pub fn run(args: AuditArgs) -> Result<(), CliError> {
    match args.command {
        AuditCommand::Verify(v) => verify(v),
        AuditCommand::Tail(t) => tail(t),
        AuditCommand::Export(e) => export(e),
    }
}

fn open(flag: Option<&Path>) -> Result<(PathBuf, AuditLog), CliError> {
    let dir = datadir::resolve_from_env(flag)?;
    let log = AuditLog::open(&dir).map_err(|e| store_error(&dir, e))?;
    Ok((dir, log))
}

fn store_error(dir: &Path, e: StoreError) -> CliError {
    CliError::Open {
        data_dir: dir.to_path_buf(),
        msg: e.to_string(),
    }
}

fn verify(args: VerifyArgs) -> Result<(), CliError> {
    if let Some(file) = &args.file {
        return verify_export(file, args.json);
    }
    let (dir, log) = open(args.data_dir.as_deref())?;
    let started = Instant::now();
    let bar = progress::counter(progress::wanted(args.json), "verifying", "entries", 0);
    let report = log
        .verify(&mut |done, total| {
            bar.set_length(total.max(1));
            bar.set_position(done);
        })
        .map_err(|e| store_error(&dir, e));
    bar.finish_and_clear();
    let report = report?;
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        println!("{}", verify_json(&report, seconds));
    }
    match report.problem {
        Some(p) => Err(CliError::Reported(format!(
            "audit chain broken at entry {} ({}): {}",
            p.seq,
            p.kind.as_str(),
            p.detail
        ))),
        None if args.json => Ok(()),
        None => {
            let head = match report.head {
                Some(h) => format!(
                    "pinned head: entry {} ({}…){}",
                    h.seq,
                    &hex(&h.hash)[..16],
                    if report.unpinned > 0 {
                        format!(
                            "; {} newer entries not yet pinned (since the last durable commit)",
                            report.unpinned
                        )
                    } else {
                        String::new()
                    }
                ),
                None => "no entries, no head".to_string(),
            };
            let head = if report.in_journal > 0 {
                format!(
                    "{head}; the last {} entries are still in the journal (the store was not \
                     closed cleanly; the next mount applies them)",
                    report.in_journal
                )
            } else {
                head
            };
            let ok = style::Painter::for_stream(style::Stream::Stdout).paint(style::GOOD, "ok");
            println!(
                "audit chain {ok}: {} entries, last {} ({}…); {head}; {seconds:.2} s",
                report.entries,
                report.last.seq,
                &hex(&report.last.hash)[..16],
            );
            Ok(())
        }
    }
}

/// `audit verify --json`: the whole report, field names stable (docs/operations.md).
fn verify_json(report: &VerifyReport, seconds: f64) -> serde_json::Value {
    let head = |h: &ChainHead| serde_json::json!({ "seq": h.seq, "hash": hex(&h.hash) });
    serde_json::json!({
        "ok": report.problem.is_none(),
        "entries": report.entries,
        "last": head(&report.last),
        "head": report.head.as_ref().map(head),
        "unpinned": report.unpinned,
        "in_journal": report.in_journal,
        "problem": report.problem.as_ref().map(|p| serde_json::json!({
            "kind": p.kind.as_str(),
            "seq": p.seq,
            "detail": p.detail,
        })),
        "seconds": seconds,
    })
}

/// Checks an export file on its own: JSON lines, one chain (see `verify_run`).
fn verify_export(file: &Path, json: bool) -> Result<(), CliError> {
    let io = |e: std::io::Error| CliError::Reported(format!("{}: {e}", file.display()));
    let reader = std::io::BufReader::new(std::fs::File::open(file).map_err(io)?);
    let mut lines = std::io::BufRead::lines(reader).enumerate();
    let mut read_error = None;
    let records = std::iter::from_fn(|| {
        let (i, line) = lines.next()?;
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                read_error = Some(e);
                return None;
            }
        };
        Some(AuditRecord::from_json(&line).map_err(|e| (0, format!("line {}: {e}", i + 1))))
    });
    let outcome = verify_run(records);
    if let Some(e) = read_error {
        return Err(io(e));
    }
    if json {
        let obj = match &outcome {
            Ok(Some((first, head))) => serde_json::json!({
                "ok": true,
                "file": file.display().to_string(),
                "first_seq": first,
                "last_seq": head.seq,
                "last_hash": hex(&head.hash),
                "problem": null,
            }),
            Ok(None) => serde_json::json!({
                "ok": false,
                "file": file.display().to_string(),
                "problem": { "kind": "empty", "seq": 0, "detail": "no entries" },
            }),
            Err((seq, what)) => serde_json::json!({
                "ok": false,
                "file": file.display().to_string(),
                "problem": { "kind": "broken", "seq": seq, "detail": what },
            }),
        };
        println!("{obj}");
    }
    match outcome {
        Ok(Some(_)) if json => Ok(()),
        Ok(Some((first, head))) => {
            println!(
                "export ok: entries {first}..={} chained, last hash {}{}",
                head.seq,
                hex(&head.hash),
                if first > 1 {
                    " (starts after entry 1: compare its prev_hash with the entry before it)"
                } else {
                    ""
                }
            );
            Ok(())
        }
        Ok(None) => Err(CliError::Reported(format!(
            "{}: no entries",
            file.display()
        ))),
        Err((0, what)) => Err(CliError::Reported(format!("{}: {what}", file.display()))),
        Err((seq, what)) => Err(CliError::Reported(format!(
            "{}: chain broken at entry {seq}: {what}",
            file.display()
        ))),
    }
}

fn export(args: ExportArgs) -> Result<(), CliError> {
    let to_stdout = args.file.as_os_str() == "-";
    if to_stdout && args.json {
        return Err(CliError::Reported(
            "--json needs a FILE: with `-` the export itself is on stdout".into(),
        ));
    }
    let (dir, log) = open(args.data_dir.as_deref())?;
    let last = log.last_seq().map_err(|e| store_error(&dir, e))?;
    if args.until == 0 || args.until > last {
        return Err(CliError::Reported(format!(
            "--until {}: the log holds entries 1..={last}",
            args.until
        )));
    }
    let io = |e: std::io::Error| CliError::Reported(format!("{}: {e}", args.file.display()));
    // Written beside FILE and renamed into place once complete and checked: a FILE that
    // exists is always a whole export.
    let partial = args.file.with_extension("partial");
    let mut out: Box<dyn Write> = if to_stdout {
        Box::new(std::io::stdout().lock())
    } else {
        if args.file.exists() {
            return Err(io(std::io::Error::from(std::io::ErrorKind::AlreadyExists)));
        }
        Box::new(std::io::BufWriter::new(
            std::fs::File::create_new(&partial).map_err(io)?,
        ))
    };
    // Entries are checked by the same code as `audit verify --file` (`verify_run`) as they
    // stream past on their way into the export, so the two can never disagree.
    let until = args.until;
    // With FILE `-` stdout is the export, and stderr may be the same terminal: no bar then.
    let bar = progress::counter(
        progress::wanted(args.json) && !to_stdout,
        "exporting",
        "entries",
        until,
    );
    let mut after = 0;
    let mut page = std::collections::VecDeque::new();
    let mut read_error = None;
    let mut write_error = None;
    let records = std::iter::from_fn(|| {
        if page.is_empty() && after < until {
            match log.after(after, None, PAGE) {
                Ok(batch) => page.extend(batch.into_iter().filter(|r| r.seq <= until)),
                Err(e) => {
                    read_error = Some(e);
                    return None;
                }
            }
        }
        let rec = page.pop_front()?;
        after = rec.seq;
        bar.set_position(after);
        if write_error.is_none() {
            if let Err(e) = writeln!(out, "{}", rec.to_json()) {
                write_error = Some(e);
            }
        }
        Some(Ok(rec))
    });
    let checked = agentfs_memory::audit::verify_run(records);
    bar.finish_and_clear();
    let fail = |msg: String| {
        let _ = std::fs::remove_file(&partial);
        CliError::Reported(msg)
    };
    if let Some(e) = read_error {
        return Err(fail(store_error(&dir, e).to_string()));
    }
    if let Some(e) = write_error {
        return Err(fail(format!("{}: {e}", args.file.display())));
    }
    let head = match checked {
        Ok(Some((_, head))) => head,
        Ok(None) => agentfs_memory::ChainHead::default(),
        Err((seq, why)) => {
            return Err(fail(format!(
            "audit chain broken at entry {seq} ({why}): not exported (run `agentfs audit verify`)"
        )))
        }
    };
    out.flush().map_err(io)?;
    drop(out);
    if head.seq != args.until {
        let _ = std::fs::remove_file(&partial);
        return Err(CliError::Reported(format!(
            "the log ended at entry {} before entry {}",
            head.seq, args.until
        )));
    }
    if !to_stdout {
        std::fs::File::open(&partial)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        std::fs::rename(&partial, &args.file).map_err(io)?;
        if args.json {
            let obj = serde_json::json!({
                "file": args.file.display().to_string(),
                "first_seq": 1,
                "last_seq": head.seq,
                "last_hash": hex(&head.hash),
            });
            println!("{obj}");
        } else {
            eprintln!(
                "exported entries 1..={} to {} (last hash {})",
                head.seq,
                args.file.display(),
                hex(&head.hash)
            );
        }
    }
    Ok(())
}

/// Page size when reading entries.
const PAGE: usize = 4096;

fn tail(args: TailArgs) -> Result<(), CliError> {
    let (dir, log) = open(args.data_dir.as_deref())?;
    let table = !args.json && std::io::stdout().is_terminal();
    let agent = args.agent.as_deref();
    let out = std::io::stdout();
    let mut out = out.lock();
    let painter = if table {
        style::Painter::for_stream(style::Stream::Stdout)
    } else {
        style::Painter::plain()
    };
    if table {
        let header = format!(
            "{:>8}  {:<23}  {:<12}  {:>7}  {:<10}  {:>6}  {:<8}  PATH",
            "SEQ", "TIME (UTC)", "AGENT", "PID", "OP", "RESULT", "DECISION"
        );
        let _ = writeln!(out, "{}", painter.paint(style::HEADER, &header));
    }
    // The last N: walk back from the end in pages until N are found (or the start).
    let last = log.last_seq().map_err(|e| store_error(&dir, e))?;
    let mut after =
        start_of_last(&log, last, agent, args.lines).map_err(|e| store_error(&dir, e))?;
    loop {
        let batch = log
            .after(after, agent, PAGE)
            .map_err(|e| store_error(&dir, e))?;
        for rec in &batch {
            let line = if table {
                row(rec, painter)
            } else {
                rec.to_json()
            };
            if writeln!(out, "{line}").is_err() {
                return Ok(()); // stdout closed (`| head`): done
            }
            after = rec.seq;
        }
        if batch.len() == PAGE {
            continue;
        }
        if !args.follow {
            return Ok(());
        }
        if out.flush().is_err() {
            return Ok(());
        }
        // Entries show up in the database a few milliseconds after they are recorded.
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The seq after which the last `n` entries (of `agent`, when given) start.
fn start_of_last(
    log: &AuditLog,
    last: u64,
    agent: Option<&str>,
    n: u64,
) -> Result<u64, StoreError> {
    if n == 0 {
        return Ok(last);
    }
    if agent.is_none() {
        return Ok(last.saturating_sub(n));
    }
    // Walk back in windows until n of the agent's entries lie after the start.
    let mut window = n.saturating_mul(4).max(1024);
    loop {
        let from = last.saturating_sub(window);
        let found = log.after(from, agent, usize::MAX)?;
        if found.len() as u64 >= n || from == 0 {
            let skip = found.len().saturating_sub(n as usize);
            return Ok(match skip.checked_sub(1) {
                Some(i) => found[i].seq,
                None => from,
            });
        }
        window = window.saturating_mul(4);
    }
}

/// One entry as a table row; a failed call and a refusing decision in red.
fn row(rec: &AuditRecord, painter: style::Painter) -> String {
    let e = &rec.entry;
    let secs = e.time.div_euclid(1_000_000_000);
    let millis = e.time.rem_euclid(1_000_000_000) / 1_000_000;
    let (y, mo, d, h, mi, s) = civil(secs);
    let time = format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{millis:03}");
    let mut path = e.path.clone();
    if !e.target.is_empty() {
        path.push_str(" -> ");
        path.push_str(&e.target);
    }
    if e.size > 0 || e.offset > 0 {
        path.push_str(&format!(" [{}@{}]", e.size, e.offset));
    }
    if !e.detail.is_empty() {
        path.push_str(&format!(" ({})", e.detail));
    }
    let result = format!("{:>6}", e.result);
    let result = if e.result == 0 {
        result
    } else {
        painter.paint(style::BAD, &result)
    };
    let decision = if e.decision.is_empty() {
        "-"
    } else {
        &e.decision
    };
    let refused = matches!(decision, "deny" | "kill");
    let decision = format!("{decision:<8}");
    let decision = if refused {
        painter.paint(style::BAD, &decision)
    } else {
        decision
    };
    format!(
        "{:>8}  {time:<23}  {:<12}  {:>7}  {:<10}  {result}  {decision}  {path}",
        rec.seq, e.agent, e.pid, e.op,
    )
}

/// Seconds since the epoch to UTC (year, month, day, hour, minute, second).
fn civil(secs: i64) -> (i64, u32, u32, u32, u32, u32) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's days-from-civil inverse.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
        (rem % 60) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil(1_700_000_000), (2023, 11, 14, 22, 13, 20));
        assert_eq!(civil(951_782_400), (2000, 2, 29, 0, 0, 0));
    }
}
