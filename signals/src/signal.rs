//! What may be written to `sys/agents/AGENT/signal`.

use std::fmt;
use std::str::FromStr;
use thiserror::Error;

/// A signal an operator sends to an agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// Pause: mutating calls wait, reads go on.
    Stop,
    /// Resume a stopped agent: waiting calls proceed in arrival order.
    Cont,
    /// Non-maskable: waiting and later mutating calls fail until START.
    Kill,
    /// Revive a killed agent.
    Start,
    /// Raised by the kernel itself on a policy violation; acts as KILL. Never parsed from
    /// a control-file write.
    Policy,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::Stop => "STOP",
            Signal::Cont => "CONT",
            Signal::Kill => "KILL",
            Signal::Start => "START",
            Signal::Policy => "POLICY",
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("not a signal: write STOP, CONT, KILL or START (optionally SIG-prefixed)")]
pub struct ParseSignalError;

impl FromStr for Signal {
    type Err = ParseSignalError;

    /// Case-insensitive, optional `SIG` prefix, one optional trailing newline — so that
    /// `echo STOP > signal` and `printf sigcont > signal` both work. Anything else is refused.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let line = text
            .strip_suffix('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
            .unwrap_or(text);
        let upper = line.to_ascii_uppercase();
        let word = upper.strip_prefix("SIG").unwrap_or(&upper);
        match word {
            "STOP" => Ok(Signal::Stop),
            "CONT" => Ok(Signal::Cont),
            "KILL" => Ok(Signal::Kill),
            "START" => Ok(Signal::Start),
            _ => Err(ParseSignalError),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_shells_write() {
        for (text, want) in [
            ("STOP\n", Signal::Stop),
            ("stop", Signal::Stop),
            ("SIGCONT\n", Signal::Cont),
            ("sigkill\r\n", Signal::Kill),
            ("Start", Signal::Start),
        ] {
            assert_eq!(text.parse::<Signal>(), Ok(want), "{text:?}");
        }
    }

    #[test]
    fn refuses_everything_else() {
        for text in [
            "",
            "\n",
            "STOP STOP",
            " STOP",
            "STOP\n\n",
            "SIG",
            "SIGSIGSTOP",
            "HUP",
            "POLICY",
            "STOP\0",
        ] {
            assert_eq!(text.parse::<Signal>(), Err(ParseSignalError), "{text:?}");
        }
    }
}
