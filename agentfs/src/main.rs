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

/// mimalloc instead of glibc's malloc: a snapshot of 10,000 files makes ~45,000 small
/// allocations on the request thread (nodes, names, store changes), and with glibc each
/// cost ~200 instructions and most came from memory never touched before (~2,600 page
/// faults per snapshot). With mimalloc: ~95 instructions and ~650 faults, and the first
/// snapshot of a 10,104-node tree took 18-28 ms instead of 44 (docs/checkpoints.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
