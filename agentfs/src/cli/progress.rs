//! Progress bars and spinners for long work (reindex, audit verify and export, rollback,
//! backup), drawn with indicatif on stderr only when stderr is a terminal and the output is
//! not `--json`. Everywhere else they are hidden: logs, pipes and scripts see no `\r` lines.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Whether progress may be drawn: stderr is a terminal and the caller prints human output.
pub fn wanted(json: bool) -> bool {
    !json && std::io::stderr().is_terminal()
}

fn target(show: bool) -> ProgressDrawTarget {
    if show {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    }
}

/// A bar counting `unit`s (e.g. "entries", "files") up to `total`, prefixed by `what`.
pub fn counter(show: bool, what: &str, unit: &str, total: u64) -> ProgressBar {
    let template =
        format!("{{prefix}} [{{bar:30}}] {{pos}}/{{len}} {unit} ({{percent}}%, {{eta}} left)");
    let style = ProgressStyle::with_template(&template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    // A total not known yet (0) would draw as 100% done: show an empty bar until it is.
    let bar = ProgressBar::with_draw_target(Some(total.max(1)), target(show)).with_style(style);
    bar.set_prefix(what.to_string());
    bar
}

/// A bar counting bytes up to `total`.
pub fn bytes(show: bool, what: &str, total: u64) -> ProgressBar {
    let style = ProgressStyle::with_template(
        "{prefix} [{bar:30}] {bytes}/{total_bytes} ({binary_bytes_per_sec}, {eta} left)",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    let bar = ProgressBar::with_draw_target(Some(total), target(show)).with_style(style);
    bar.set_prefix(what.to_string());
    bar
}

/// A spinner with a message, ticking on its own, for waits whose progress cannot be seen
/// (a rollback is one write to a control file).
pub fn spinner(show: bool, message: &str) -> ProgressBar {
    let style = ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let bar = ProgressBar::with_draw_target(None, target(show)).with_style(style);
    bar.set_message(message.to_string());
    if show {
        bar.enable_steady_tick(Duration::from_millis(100));
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_bars_count_but_never_draw() {
        let bar = counter(false, "verifying", "entries", 10);
        bar.inc(4);
        assert_eq!(bar.position(), 4);
        assert!(bar.is_hidden());
        assert!(bytes(false, "packs", 1 << 20).is_hidden());
        assert!(spinner(false, "rolling back").is_hidden());
    }

    #[test]
    fn json_output_never_gets_progress() {
        assert!(!wanted(true));
    }
}
