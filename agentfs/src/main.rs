//! `agentfs`: the daemon and the command line of the agent filesystem.
//!
//! `agentfs mount MNT` starts a daemon that serves the Agent VFS at MNT; `agentfs unmount MNT`
//! flushes and stops it. See `agentfs --help` and docs/operations.md.

mod checks;
mod cli;
mod daemon;
mod datadir;
mod error;
mod malloc;
mod mountinfo;
mod sys;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::Cli;
use crate::error::CliError;

fn main() -> ExitCode {
    // Started as /sbin/mount.fuse.agentfs by mount(8): the mount helper's own command line.
    if let Some(code) = cli::mounthelper::dispatch() {
        return code;
    }
    // Usage errors print clap's message and exit with status 2.
    let cli = Cli::parse();
    match cli.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::ReportedElsewhere) => ExitCode::FAILURE,
        Err(e) => {
            let painter = cli::style::Painter::for_stream(cli::style::Stream::Stderr);
            eprintln!("{} {e}", painter.paint(cli::style::ERROR, "agentfs:"));
            ExitCode::FAILURE
        }
    }
}
