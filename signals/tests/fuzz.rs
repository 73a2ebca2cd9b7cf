//! Fuzz target `signal`: what an operator may write to `sys/agents/AGENT/signal`
//! (`FromStr for Signal`). Time-bounded (tests/fuzz/harness.rs); `scripts/fuzz.sh` runs it
//! longer. The core answers every refusal with EINVAL (`write_signal` maps the parse error to
//! `VfsError::Invalid`).

#[path = "../../tests/fuzz/harness.rs"]
mod harness;

use agentfs_signals::{ParseSignalError, Signal};
use proptest::prelude::*;

const WORDS: [(&str, Signal); 4] = [
    ("stop", Signal::Stop),
    ("cont", Signal::Cont),
    ("kill", Signal::Kill),
    ("start", Signal::Start),
];

/// The documented accepted set, spelled out: (`sig`)WORD, one optional `\n` or `\r\n`, any
/// ASCII case. Returns the signal the (lower-cased) text names, if it is in the set.
fn documented(text: &str) -> Option<Signal> {
    let lower = text.to_ascii_lowercase();
    for (word, signal) in WORDS {
        for prefix in ["", "sig"] {
            for suffix in ["", "\n", "\r\n"] {
                if lower == format!("{prefix}{word}{suffix}") {
                    return Some(signal);
                }
            }
        }
    }
    None
}

/// Each character of `s` in a random ASCII case.
fn random_case(s: &'static str) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<bool>(), s.len()).prop_map(move |up| {
        s.chars()
            .zip(up)
            .map(|(c, u)| if u { c.to_ascii_uppercase() } else { c })
            .collect()
    })
}

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        random_case("stop"),
        random_case("cont"),
        random_case("kill"),
        random_case("start"),
        random_case("policy"),
        random_case("hup"),
        random_case("term"),
        random_case("sto"),
        random_case("stopp"),
        Just(String::new()),
        "[a-zA-Z]{1,6}",
    ]
}

fn affix() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just(String::new()),
        1 => Just("\n".to_string()),
        1 => Just("\r\n".to_string()),
        1 => Just("\r".to_string()),
        1 => Just("\n\n".to_string()),
        1 => Just(" ".to_string()),
        1 => Just("\t".to_string()),
        1 => Just("\0".to_string()),
        1 => Just("\u{feff}".to_string()),
        1 => Just("\u{17f}".to_string()), // LATIN SMALL LETTER LONG S: uppercases to 'S'
        1 => "\\PC{0,3}",
    ]
}

/// Near misses around the valid words, and arbitrary text.
fn signal_text() -> impl Strategy<Value = String> {
    let shaped = (
        affix(),
        prop_oneof![
            Just(String::new()),
            random_case("sig"),
            random_case("sigsig")
        ],
        word(),
        affix(),
    )
        .prop_map(|(a, sig, w, b)| format!("{a}{sig}{w}{b}"));
    prop_oneof![
        6 => shaped,
        2 => any::<String>(),
        1 => proptest::collection::vec(any::<u8>(), 0..12)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

#[test]
fn fuzz_signal() {
    harness::fuzz_for("signal", signal_text(), |text| {
        let parsed = text.parse::<Signal>();
        match (documented(&text), parsed) {
            (Some(want), Ok(got)) => prop_assert_eq!(want, got, "{:?}", text),
            (None, Err(e)) => {
                prop_assert_eq!(&e, &ParseSignalError);
                prop_assert!(e.to_string().contains("STOP, CONT, KILL or START"));
            }
            (want, got) => {
                prop_assert!(false, "{:?}: documented {:?}, parsed {:?}", text, want, got)
            }
        }
        Ok(())
    });
}

#[test]
fn every_documented_spelling_is_accepted() {
    for (word, signal) in WORDS {
        for prefix in ["", "SIG", "sig", "Sig"] {
            for suffix in ["", "\n", "\r\n"] {
                for w in [word.to_string(), word.to_ascii_uppercase()] {
                    let text = format!("{prefix}{w}{suffix}");
                    assert_eq!(text.parse::<Signal>(), Ok(signal), "{text:?}");
                }
            }
        }
    }
}
