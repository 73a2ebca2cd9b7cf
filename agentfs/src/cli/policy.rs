//! `agentfs policy check FILE…`: parse, compile and run the `[[test]]` cases of policy files,
//! as `agentfs mount --policy` and a reload would; `agentfs policy default`: print the
//! built-in policy as a file to start from. See docs/policy.md.

use std::path::{Path, PathBuf};

use agentfs_policy::{default_policy_toml, Diagnostic, Ruleset, Source};
use clap::{Args, Subcommand};

use crate::datadir;
use crate::error::{reason, CliError};
use crate::mountinfo;

#[derive(Debug, Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    pub command: PolicyCommand,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate policy files together (with the built-in policy) and run their [[test]]
    /// cases; print each error as FILE:LINE:COL: message and exit 1, or a summary and exit 0
    Check(CheckArgs),
    /// Print the built-in default policy as TOML, to start a policy file from
    Default,
    /// Make the daemon of a mount re-read its --policy files (as SIGHUP does) and report
    /// the outcome: a bad file is refused with its errors and the old rules stay
    Reload(ReloadArgs),
}

#[derive(Debug, Args)]
pub struct ReloadArgs {
    /// The mountpoint of the daemon to reload
    #[arg(value_name = "MNT")]
    pub mountpoint: PathBuf,
    /// Print the daemon's outcome as one JSON object ({"ok":…,"version":…,"old":…,
    /// "errors":[…]}) on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Policy files, combined as several --policy options are
    #[arg(value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
    /// Print one JSON object on stdout: the summary ({"ok":true,"rules":{…},…}) or the
    /// errors ({"ok":false,"errors":[{"file","line","col","message"}]})
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: PolicyArgs) -> Result<(), CliError> {
    match args.command {
        PolicyCommand::Check(c) if c.json => {
            let outcome = compile_diagnostics(&c.files)?;
            println!("{}", check_json(&outcome));
            match outcome {
                Ok(_) => Ok(()),
                Err(_) => Err(CliError::ReportedElsewhere),
            }
        }
        PolicyCommand::Check(c) => match check(&c.files)? {
            Ok(summary) => {
                println!("{summary}");
                Ok(())
            }
            Err(lines) => {
                for line in &lines {
                    eprintln!("{line}");
                }
                Err(CliError::ReportedElsewhere)
            }
        },
        PolicyCommand::Default => {
            print!("{}", default_policy_toml());
            Ok(())
        }
        PolicyCommand::Reload(r) => reload(&r.mountpoint, r.json),
    }
}

/// `policy check --json`: the summary's counts, or every error with its position.
fn check_json(outcome: &Result<Ruleset, Vec<Diagnostic>>) -> serde_json::Value {
    match outcome {
        Ok(rules) => {
            let s = rules.summary();
            let counts: serde_json::Map<String, serde_json::Value> = s
                .rules
                .iter()
                .map(|(kind, n)| (kind.to_string(), serde_json::json!(n)))
                .collect();
            serde_json::json!({
                "ok": true,
                "files": s.files,
                "builtin": s.builtin,
                "rules": counts,
                "max_match_len": s.max_match_len,
                "window": s.window,
                "identities": s.identities,
                "tests_passed": s.tests_run,
                "version": format!("blake3:{}", s.version),
                "warnings": s.warnings,
            })
        }
        Err(diagnostics) => serde_json::json!({
            "ok": false,
            "errors": diagnostics.iter().map(|d| serde_json::json!({
                "file": d.file,
                "line": d.line,
                "col": d.col,
                "message": d.message,
            })).collect::<Vec<_>>(),
        }),
    }
}

/// Sends SIGHUP to the daemon serving `mnt` and waits for the outcome it writes to its
/// data dir.
fn reload(mnt: &Path, json: bool) -> Result<(), CliError> {
    let path = std::fs::canonicalize(mnt)
        .map_err(|err| CliError::Reported(format!("{}: {}", mnt.display(), reason(&err))))?;
    let mounts = mountinfo::read().map_err(|err| CliError::Os {
        what: "read /proc/self/mountinfo",
        err,
    })?;
    let data_dir = mountinfo::find(&mounts, &path)
        .filter(|e| e.is_agentfs())
        .and_then(|e| e.data_dir())
        .ok_or_else(|| CliError::Reported(format!("{} is not an agentfs mount", path.display())))?;
    let pid = datadir::holder_pid(&data_dir).ok_or_else(|| {
        CliError::Reported(format!(
            "no daemon holds {} (is the mount stale?)",
            data_dir.display()
        ))
    })?;
    let status = datadir::reload_status_file(&data_dir);
    let before = std::fs::read(&status).ok();
    // SAFETY: kill(2) with a pid we read and a valid signal number has no memory effects.
    if unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) } != 0 {
        let err = std::io::Error::last_os_error();
        return Err(CliError::Reported(format!(
            "cannot signal the daemon (pid {pid}): {}",
            reason(&err)
        )));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let now = std::fs::read(&status).ok();
        if now.is_some() && now != before {
            return report_reload(&now.unwrap_or_default(), json);
        }
        if std::time::Instant::now() > deadline {
            return Err(CliError::Reported(format!(
                "the daemon (pid {pid}) did not report a reload within 30 s; see {}",
                datadir::log_file(&data_dir).display()
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn report_reload(status: &[u8], json: bool) -> Result<(), CliError> {
    let v: serde_json::Value = serde_json::from_slice(status)
        .map_err(|e| CliError::Reported(format!("unreadable reload status: {e}")))?;
    let outcome = &v["outcome"];
    let ok = outcome["ok"].as_bool() == Some(true);
    if json {
        println!("{outcome}");
        return if ok {
            Ok(())
        } else {
            Err(CliError::ReportedElsewhere)
        };
    }
    if ok {
        println!(
            "policy reloaded: {} (was {})",
            outcome["version"].as_str().unwrap_or("?"),
            outcome["old"].as_str().unwrap_or("?")
        );
        return Ok(());
    }
    eprintln!("policy reload refused; the old rules stay in force:");
    for line in outcome["errors"].as_array().into_iter().flatten() {
        eprintln!("{}", line.as_str().unwrap_or("?"));
    }
    Err(CliError::ReportedElsewhere)
}

/// The summary of a good policy, or its errors as `FILE:LINE:COL: message` lines. A file
/// that cannot be read is a `CliError`.
fn check(files: &[PathBuf]) -> Result<Result<String, Vec<String>>, CliError> {
    Ok(compile(files)?.map(|rules| rules.summary().to_string()))
}

/// Reads and compiles policy files with the built-in policy (running their `[[test]]`
/// cases), exactly as a mount and a reload do: the ruleset, or every error as a
/// `FILE:LINE:COL: message` line. A file that cannot be read is a `CliError`.
pub fn compile(files: &[PathBuf]) -> Result<Result<Ruleset, Vec<String>>, CliError> {
    Ok(compile_diagnostics(files)?.map_err(|ds| ds.iter().map(|d| d.to_string()).collect()))
}

/// [`compile`] with the errors as diagnostics (file, line, column, message).
fn compile_diagnostics(files: &[PathBuf]) -> Result<Result<Ruleset, Vec<Diagnostic>>, CliError> {
    let mut sources = Vec::new();
    let mut errors = Vec::new();
    for path in files {
        let bytes = std::fs::read(path).map_err(|err| {
            CliError::Reported(format!("cannot read {}: {}", path.display(), reason(&err)))
        })?;
        match String::from_utf8(bytes) {
            Ok(text) => sources.push(Source::new(path.display().to_string(), text)),
            Err(e) => errors.push(not_utf8(path, e.as_bytes(), e.utf8_error().valid_up_to())),
        }
    }
    if !errors.is_empty() {
        return Ok(Err(errors));
    }
    Ok(Ruleset::compile(sources).map_err(|e| e.diagnostics))
}

/// [`compile`] for a mount: errors become one `CliError` listing them all.
pub fn load(files: &[PathBuf]) -> Result<Ruleset, CliError> {
    compile(files)?.map_err(|lines| {
        CliError::Reported(format!("the policy is refused:\n{}", lines.join("\n")))
    })
}

fn not_utf8(path: &Path, bytes: &[u8], valid: usize) -> Diagnostic {
    let before = &bytes[..valid];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let start = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let col = String::from_utf8_lossy(&before[start..]).chars().count() + 1;
    Diagnostic {
        file: path.display().to_string(),
        line,
        col,
        message: "the file is not UTF-8 text (a policy file is TOML, which is UTF-8)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn write(dir: &Path, name: &str, text: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn parses_check_and_default() {
        let cli = Cli::try_parse_from(["agentfs", "policy", "check", "a.toml", "b.toml"]).unwrap();
        let Command::Policy(PolicyArgs {
            command: PolicyCommand::Check(c),
        }) = cli.command
        else {
            panic!("not policy check")
        };
        assert_eq!(c.files, [PathBuf::from("a.toml"), PathBuf::from("b.toml")]);
        let cli = Cli::try_parse_from(["agentfs", "policy", "default"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Policy(PolicyArgs {
                command: PolicyCommand::Default
            })
        ));
        for bad in [
            &["policy"][..],
            &["policy", "check"],
            &["policy", "lint", "x"],
        ] {
            let err = Cli::try_parse_from(std::iter::once("agentfs").chain(bad.iter().copied()))
                .expect_err("usage error");
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn check_reports_errors_with_positions_and_summarises_good_files() {
        let dir = tempfile::tempdir().unwrap();
        let good = write(
            dir.path(),
            "good.toml",
            b"[[read_only]]\nname = \"facts\"\npaths = [\"mem/semantic/facts/**\"]\n",
        );
        let summary = check(std::slice::from_ref(&good)).unwrap().unwrap();
        assert!(
            summary.starts_with("policy ok: 1 file, built-in policy enabled"),
            "{summary}"
        );
        assert!(summary.contains("1 read_only"), "{summary}");
        assert!(summary.contains("version:  blake3:"), "{summary}");

        let bad = write(
            dir.path(),
            "bad.toml",
            b"[[content]]\nname = \"url\"\nregex = 'https://x/.*'\n",
        );
        let lines = check(&[good, bad.clone()]).unwrap().unwrap_err();
        assert_eq!(lines.len(), 1);
        let want = format!(
            "{}:3:9: content rule `url`: the regex has no maximum",
            bad.display()
        );
        assert!(lines[0].starts_with(&want), "{lines:?}");

        let latin1 = write(dir.path(), "latin1.toml", b"# ok\n# caf\xe9\n");
        let lines = check(std::slice::from_ref(&latin1)).unwrap().unwrap_err();
        assert_eq!(
            lines,
            [format!(
                "{}:2:6: the file is not UTF-8 text (a policy file is TOML, which is UTF-8)",
                latin1.display()
            )]
        );

        let missing = dir.path().join("missing.toml");
        let err = check(&[missing]).unwrap_err();
        assert!(
            err.to_string().contains("no such file or directory"),
            "{err}"
        );
    }

    #[test]
    fn the_default_policy_checks() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "default.toml", default_policy_toml().as_bytes());
        let summary = check(&[p]).unwrap().unwrap();
        assert!(summary.contains("built-in policy disabled"), "{summary}");
        assert!(summary.contains("tests: 9 passed"), "{summary}");
    }
}
