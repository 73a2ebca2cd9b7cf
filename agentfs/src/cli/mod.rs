//! The command line: one module per verb.

use clap::{Parser, Subcommand};

use crate::error::CliError;

pub mod agents;
pub mod audit;
pub mod backup;
pub mod checkpoints;
pub mod completions;
pub mod episodes;
pub mod metrics;
pub mod mount;
pub mod mounthelper;
pub mod mountopts;
pub mod policy;
pub mod progress;
pub mod search;
pub mod style;
pub mod unmount;

const ABOUT: &str = "agentfs: a safety-first filesystem for autonomous AI agents";

const LONG_ABOUT: &str = "\
agentfs: a safety-first filesystem for autonomous AI agents.

One daemon mounts the Agent VFS as a real directory tree. Agents use plain file I/O
(any language, any shell tool); operators govern them with plain file I/O too.
`mkdir MNT/AGENT` registers an agent with working (RAM), episodic (append-only) and
semantic memory under MNT/AGENT/mem/; MNT/sys/ shows the agents' status.";

const AFTER_HELP: &str = "\
Examples:
  agentfs mount /tmp/agents              mount, return once the tree is ready
  mkdir /tmp/agents/a                    register agent \"a\"
  echo hi > /tmp/agents/a/mem/semantic/x
  cat /tmp/agents/sys/agents/a/status
  agentfs audit verify                   check the flight recorder's hash chain
  agentfs audit tail -f --agent a        follow agent a's recorded operations
  agentfs unmount /tmp/agents            flush, stop the daemon, unmount

Data dir: --data-dir, else $AGENTFS_DATA_DIR, else $XDG_DATA_HOME/agentfs,
else ~/.local/share/agentfs. Logging: RUST_LOG or --log-level.
Errors are one line on stderr, exit status 1; usage errors exit with 2.";

#[derive(Debug, Parser)]
#[command(
    name = "agentfs",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = AFTER_HELP,
    propagate_version = true,
    subcommand_required = true,
    arg_required_else_help = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount the Agent VFS at MNT; returns once the tree is ready, leaving the daemon running
    Mount(mount::MountArgs),
    /// Flush everything to disk, stop the daemon and unmount MNT
    #[command(alias = "umount")]
    Unmount(unmount::UnmountArgs),
    /// Check policy files (errors as FILE:LINE:COL), print the built-in default policy, or
    /// reload the policy of a mount
    Policy(policy::PolicyArgs),
    /// Send STOP, CONT, KILL or START to an agent (writes sys/agents/AGENT/signal)
    Signal(agents::SignalArgs),
    /// List agents: state, bound processes, bytes, files, errors, last violation
    Ps(agents::PsArgs),
    /// Run a command bound to an agent: it and everything it spawns act as the agent
    Run(agents::RunArgs),
    /// The flight recorder: verify its hash chain, or tail its entries
    Audit(audit::AuditArgs),
    /// Checkpoint an agent's mem/ (mkdir MNT/AGENT/state/NAME)
    Snapshot(checkpoints::SnapshotArgs),
    /// Make an agent's mem/ exactly checkpoint NAME (writes sys/agents/AGENT/rollback)
    Rollback(checkpoints::RollbackArgs),
    /// Paths added, deleted, modified since checkpoint NAME (or between NAME and NAME2)
    Diff(checkpoints::DiffArgs),
    /// Search an agent's semantic memory (reads MNT/AGENT/mem/semantic/.search/QUERY)
    Search(search::SearchArgs),
    /// An agent's episodic logs as a timeline (each write with its time), or prune old logs
    Episodes(episodes::EpisodesArgs),
    /// Rebuild the search index of one agent, or of all, from the store
    Reindex(search::ReindexArgs),
    /// Print the shell completion script for SHELL (bash, zsh, fish, elvish, powershell)
    Completions(completions::CompletionsArgs),
    /// Print the agentfs(1) man page, or write every page into a directory with --out DIR
    Man(completions::ManArgs),
    /// Print MNT/sys/metrics: counters and latency histograms in Prometheus text format
    Metrics(metrics::MetricsArgs),
    /// Copy a data dir into DEST consistently, even while it is mounted (SQLite online
    /// backup of the database, then the pack files and the audit head)
    Backup(backup::BackupArgs),
}

impl Cli {
    pub fn run(self) -> Result<(), CliError> {
        match self.command {
            Command::Mount(args) => mount::run(args),
            Command::Unmount(args) => unmount::run(args),
            Command::Policy(args) => policy::run(args),
            Command::Signal(args) => agents::signal(args),
            Command::Ps(args) => agents::ps(args),
            Command::Run(args) => agents::run(args),
            Command::Audit(args) => audit::run(args),
            Command::Snapshot(args) => checkpoints::snapshot(args),
            Command::Rollback(args) => checkpoints::rollback(args),
            Command::Diff(args) => checkpoints::diff(args),
            Command::Search(args) => search::run(args),
            Command::Episodes(args) => episodes::run(args),
            Command::Reindex(args) => search::reindex(args),
            Command::Completions(args) => completions::completions(args),
            Command::Man(args) => completions::man(args),
            Command::Metrics(args) => metrics::run(args),
            Command::Backup(args) => backup::run(args),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use std::path::PathBuf;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("agentfs").chain(args.iter().copied()))
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn mount_defaults() {
        let cli = parse(&["mount", "/tmp/agents"]).unwrap();
        let Command::Mount(m) = cli.command else {
            panic!("not mount")
        };
        assert_eq!(m.mountpoint, PathBuf::from("/tmp/agents"));
        assert_eq!(m.data_dir, None);
        assert!(!m.foreground);
        assert_eq!(m.threads, None);
        assert_eq!(m.log_level, "info");
        assert_eq!(m.ready_fd, None);
    }

    #[test]
    fn mount_with_every_option() {
        let cli = parse(&[
            "mount",
            "/m",
            "--data-dir",
            "/d",
            "--foreground",
            "--threads",
            "8",
            "--log-level",
            "agentfs=debug,info",
        ])
        .unwrap();
        let Command::Mount(m) = cli.command else {
            panic!("not mount")
        };
        assert_eq!(m.data_dir, Some(PathBuf::from("/d")));
        assert!(m.foreground);
        assert_eq!(m.threads, Some(8));
        assert_eq!(m.log_level, "agentfs=debug,info");
    }

    #[test]
    fn usage_errors_exit_with_2() {
        for bad in [
            &["mount"][..],
            &["mount", "/m", "--threads", "0"],
            &["mount", "/m", "--threads", "100000"],
            &["mount", "/m", "--threads", "many"],
            &["mount", "/m", "--log-level", "info,[[["],
            &["mount", "/m", "--ready-fd", "5"],
            &["mount", "/m", "extra"],
            &["unmount"],
            &["frobnicate"],
            &["audit"],
            &["audit", "tail", "-n", "x"],
            &["audit", "verify", "extra"],
        ] {
            let err = parse(bad).expect_err(&format!("{bad:?} should be refused"));
            assert_eq!(err.exit_code(), 2, "{bad:?}: {err}");
        }
    }

    #[test]
    fn ready_fd_is_accepted_with_foreground_and_hidden() {
        let cli = parse(&["mount", "/m", "--foreground", "--ready-fd", "5"]).unwrap();
        let Command::Mount(m) = cli.command else {
            panic!("not mount")
        };
        assert_eq!(m.ready_fd, Some(5));
        let help = Cli::command()
            .find_subcommand_mut("mount")
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(!help.contains("ready-fd"), "{help}");
        assert!(help.contains("--data-dir"), "{help}");
    }

    #[test]
    fn audit_tail_options() {
        let cli = parse(&["audit", "tail", "-f", "--agent", "a", "--json", "-n", "5"]).unwrap();
        let Command::Audit(audit::AuditArgs {
            command: audit::AuditCommand::Tail(t),
        }) = cli.command
        else {
            panic!("not audit tail")
        };
        assert!(t.follow && t.json);
        assert_eq!(t.agent.as_deref(), Some("a"));
        assert_eq!(t.lines, 5);
        let cli = parse(&["audit", "verify", "--data-dir", "/d"]).unwrap();
        let Command::Audit(audit::AuditArgs {
            command: audit::AuditCommand::Verify(v),
        }) = cli.command
        else {
            panic!("not audit verify")
        };
        assert_eq!(v.data_dir, Some(PathBuf::from("/d")));
    }

    #[test]
    fn umount_is_an_alias() {
        let cli = parse(&["umount", "/m"]).unwrap();
        assert!(matches!(cli.command, Command::Unmount(_)));
    }

    #[test]
    fn help_and_version_exit_0() {
        assert_eq!(parse(&["--help"]).unwrap_err().exit_code(), 0);
        assert_eq!(parse(&["--version"]).unwrap_err().exit_code(), 0);
        assert_eq!(parse(&["mount", "--help"]).unwrap_err().exit_code(), 0);
    }
}
