//! The one place that decides whether the CLI colours its output, and the few styles it uses.
//!
//! Colours only when the stream is a terminal, `NO_COLOR` is unset or empty
//! (<https://no-color.org>) and `TERM` is not `dumb`: piped output, files, `--json` and
//! scripts always get plain text, byte for byte the same as before colours existed.

use std::ffi::OsStr;
use std::io::IsTerminal;

use anstyle::{AnsiColor, Style};

/// Which standard stream a piece of text goes to (each is a terminal or not on its own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Whether text for a stream may carry colours, from the facts alone (testable without a
/// terminal): it must be a terminal, `NO_COLOR` must be unset or empty, and `TERM` not `dumb`.
pub fn decide(is_terminal: bool, no_color: Option<&OsStr>, term: Option<&OsStr>) -> bool {
    let no_color_set = no_color.is_some_and(|v| !v.is_empty());
    let dumb = term.is_some_and(|t| t == "dumb");
    is_terminal && !no_color_set && !dumb
}

/// Paints text with a style when colours are on, and leaves it alone otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Painter {
    on: bool,
}

impl Painter {
    /// The painter for `stream` in this process's environment.
    pub fn for_stream(stream: Stream) -> Painter {
        let tty = match stream {
            Stream::Stdout => std::io::stdout().is_terminal(),
            Stream::Stderr => std::io::stderr().is_terminal(),
        };
        let no_color = std::env::var_os("NO_COLOR");
        let term = std::env::var_os("TERM");
        Painter {
            on: decide(tty, no_color.as_deref(), term.as_deref()),
        }
    }

    /// A painter that never colours (for `--json` and other machine-read output).
    pub fn plain() -> Painter {
        Painter { on: false }
    }

    /// `text` wrapped in `style`'s escapes, or `text` as is. Pad before painting, so that
    /// table columns line up whether or not escapes are added.
    pub fn paint(self, style: Style, text: &str) -> String {
        if !self.on || style == Style::new() {
            return text.to_string();
        }
        format!("{}{text}{}", style.render(), style.render_reset())
    }
}

pub const GOOD: Style = AnsiColor::Green.on_default();
pub const WARN: Style = AnsiColor::Yellow.on_default();
pub const BAD: Style = AnsiColor::Red.on_default();
pub const ERROR: Style = AnsiColor::Red.on_default().bold();
pub const HEADER: Style = Style::new().bold();

/// An agent's state as `ps` and `signal` show it: running green, stopped yellow, killed red.
pub fn agent_state(state: &str) -> Style {
    match state {
        "running" => GOOD,
        "stopped" => WARN,
        "killed" => BAD,
        _ => Style::new(),
    }
}

/// A `diff` status letter: added green, deleted red, modified yellow, type changed cyan.
pub fn diff_status(status: char) -> Style {
    match status {
        'A' => GOOD,
        'D' => BAD,
        'M' => WARN,
        'T' => AnsiColor::Cyan.on_default(),
        _ => Style::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(s: &str) -> Option<&OsStr> {
        Some(OsStr::new(s))
    }

    #[test]
    fn colours_only_on_a_terminal() {
        assert!(decide(true, None, os("xterm-256color")));
        assert!(decide(true, None, None));
        assert!(!decide(false, None, os("xterm-256color")));
    }

    #[test]
    fn no_color_set_to_anything_turns_colours_off() {
        assert!(!decide(true, os("1"), os("xterm")));
        assert!(!decide(true, os("0"), os("xterm")));
        // no-color.org: "present and not an empty string".
        assert!(decide(true, os(""), os("xterm")));
    }

    #[test]
    fn a_dumb_terminal_gets_no_colours() {
        assert!(!decide(true, None, os("dumb")));
    }

    #[test]
    fn painting_adds_escapes_only_when_on() {
        let off = Painter { on: false };
        assert_eq!(off.paint(BAD, "killed"), "killed");
        assert_eq!(Painter::plain().paint(ERROR, "agentfs:"), "agentfs:");
        let on = Painter { on: true };
        let painted = on.paint(BAD, "killed");
        assert_ne!(painted, "killed");
        assert!(painted.starts_with("\x1b["), "{painted:?}");
        assert!(painted.contains("killed") && painted.ends_with("\x1b[0m"));
        // No style, no escapes.
        assert_eq!(on.paint(agent_state("?"), "?"), "?");
    }

    #[test]
    fn states_and_diff_letters_have_distinct_styles() {
        assert_eq!(agent_state("running"), GOOD);
        assert_eq!(agent_state("stopped"), WARN);
        assert_eq!(agent_state("killed"), BAD);
        assert_eq!(diff_status('A'), GOOD);
        assert_eq!(diff_status('D'), BAD);
        assert_eq!(diff_status('M'), WARN);
        assert_ne!(diff_status('T'), Style::new());
        assert_eq!(diff_status('?'), Style::new());
    }
}
