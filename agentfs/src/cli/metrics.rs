//! `agentfs metrics`: prints `MNT/sys/metrics` (Prometheus text exposition format).

use std::io::Write;

use clap::Args;

use crate::cli::agents::MountSel;
use crate::error::{reason, CliError};

#[derive(Debug, Args)]
pub struct MetricsArgs {
    #[command(flatten)]
    pub mount: MountSel,
}

/// Copies `sys/metrics` to stdout, unchanged.
pub fn run(args: MetricsArgs) -> Result<(), CliError> {
    let file = args.mount.resolve()?.join("sys/metrics");
    let text = std::fs::read(&file)
        .map_err(|err| CliError::Reported(format!("{}: {}", file.display(), reason(&err))))?;
    let mut out = std::io::stdout().lock();
    // A closed pipe (`agentfs metrics | head`) is not an error worth a message.
    match out.write_all(&text).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(CliError::Reported(format!("stdout: {}", reason(&e))))
        }
        _ => Ok(()),
    }
}
