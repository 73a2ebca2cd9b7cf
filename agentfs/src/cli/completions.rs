//! `agentfs completions SHELL` and `agentfs man [--out DIR]`: shell completion scripts
//! (clap_complete) and manual pages (clap_mangen), generated from the same clap definitions
//! as the parser, so they never drift from what the binary accepts.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use crate::cli::Cli;
use crate::error::{reason, CliError};

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for: bash, zsh, fish, elvish or powershell
    #[arg(value_name = "SHELL", value_enum)]
    pub shell: Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write agentfs.1, one page per subcommand (agentfs-mount.1, agentfs-audit-tail.1, …)
    /// and mount.fuse.agentfs.8 into DIR (created if missing) instead of printing agentfs.1
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

fn print(bytes: &[u8]) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        // `agentfs man | head`: the reader has seen enough.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(err) => Err(CliError::Os {
            what: "write to stdout",
            err,
        }),
    }
}

/// The completion script for `shell`.
pub fn script(shell: Shell) -> Vec<u8> {
    let mut cmd = Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, "agentfs", &mut buf);
    buf
}

pub fn completions(args: CompletionsArgs) -> Result<(), CliError> {
    print(&script(args.shell))
}

/// agentfs.1: the top-level page.
pub fn main_page() -> Result<Vec<u8>, std::io::Error> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut buf)?;
    Ok(buf)
}

pub fn man(args: ManArgs) -> Result<(), CliError> {
    let Some(dir) = args.out else {
        let page = main_page().map_err(|err| CliError::Os {
            what: "render the man page",
            err,
        })?;
        return print(&page);
    };
    let fail = |path: &Path, e: std::io::Error| {
        CliError::Reported(format!("cannot write {}: {}", path.display(), reason(&e)))
    };
    std::fs::create_dir_all(&dir).map_err(|e| fail(&dir, e))?;
    // Built, the subcommands carry their display names (agentfs-mount, agentfs-audit-tail):
    // those name the pages.
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    write_pages(&cmd, &dir, &mut written).map_err(|(p, e)| fail(&p, e))?;
    let helper = crate::cli::mounthelper::command();
    let path = dir.join("mount.fuse.agentfs.8");
    let mut buf = Vec::new();
    clap_mangen::Man::new(helper)
        .section("8")
        .render(&mut buf)
        .and_then(|()| std::fs::write(&path, &buf))
        .map_err(|e| fail(&path, e))?;
    written.push(path);
    for p in &written {
        println!("{}", p.display());
    }
    Ok(())
}

/// Writes the page of `cmd`, then those of its visible subcommands, recursively.
fn write_pages(
    cmd: &clap::Command,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<(), (PathBuf, std::io::Error)> {
    let man = clap_mangen::Man::new(cmd.clone());
    let path = dir.join(man.get_filename());
    let mut buf = Vec::new();
    man.render(&mut buf)
        .and_then(|()| std::fs::write(&path, &buf))
        .map_err(|e| (path.clone(), e))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, dir, written)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shell_gets_a_script_naming_the_verbs() {
        for shell in [
            Shell::Bash,
            Shell::Zsh,
            Shell::Fish,
            Shell::Elvish,
            Shell::PowerShell,
        ] {
            let s = String::from_utf8(script(shell)).expect("UTF-8 script");
            for verb in ["mount", "unmount", "audit", "completions"] {
                assert!(s.contains(verb), "{shell}: no {verb}");
            }
        }
    }

    #[test]
    fn man_page_lists_every_subcommand() {
        let page = String::from_utf8(main_page().expect("render")).expect("UTF-8 page");
        // roff's two-line apostrophe preamble (.ie/.el), then the title.
        let first = page
            .lines()
            .find(|l| !l.starts_with(".ie ") && !l.starts_with(".el "))
            .unwrap_or_default();
        assert!(first.starts_with(".TH agentfs 1"), "{page}");
        for sub in Cli::command().get_subcommands() {
            assert!(page.contains(sub.get_name()), "no {}", sub.get_name());
        }
    }
}
