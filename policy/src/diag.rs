//! Policy sources and the errors that point into them.

use std::fmt;
use std::ops::Range;

/// One policy file: its name (the path, used in messages) and its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub name: String,
    pub text: String,
}

impl Source {
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Source {
        Source {
            name: name.into(),
            text: text.into(),
        }
    }

    /// 1-based line and column (in characters) of byte `offset`.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        line_col(&self.text, offset)
    }
}

pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

/// One error: `FILE:LINE:COL: message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl Diagnostic {
    pub(crate) fn at(source: &Source, span: Range<usize>, message: impl Into<String>) -> Self {
        let (line, col) = source.line_col(span.start);
        Diagnostic {
            file: source.name.clone(),
            line,
            col,
            message: one_line(message.into()),
        }
    }
}

/// Every error is one line: control characters a file put into a string that a message
/// quotes (a newline in a rule name to disable, in a test's op or path) are shown escaped.
fn one_line(message: String) -> String {
    if !message.chars().any(char::is_control) {
        return message;
    }
    message
        .chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.col, self.message
        )
    }
}

/// A policy that cannot be activated: every error found, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyError {}

/// Collects diagnostics while compiling.
#[derive(Default)]
pub(crate) struct Errors {
    pub list: Vec<Diagnostic>,
}

impl Errors {
    pub fn at(&mut self, source: &Source, span: Range<usize>, message: impl Into<String>) {
        self.list.push(Diagnostic::at(source, span, message));
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn into_result(self) -> Result<(), PolicyError> {
        if self.list.is_empty() {
            Ok(())
        } else {
            Err(PolicyError {
                diagnostics: self.list,
            })
        }
    }
}

/// A path or name for messages: as text when it is UTF-8, escaped otherwise.
pub(crate) fn show(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => bytes.escape_ascii().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one_in_characters() {
        let t = "ab\ncé d\n";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 3), (2, 1));
        // 'd' is after "cé " (é is two bytes).
        let d = t.find('d').unwrap();
        assert_eq!(line_col(t, d), (2, 4));
        assert_eq!(line_col(t, 999), (3, 1));
    }

    /// Found by the `policy-mutated` fuzz target: a newline in a quoted string made a
    /// two-line error.
    #[test]
    fn messages_are_one_line_whatever_the_file_quotes() {
        for text in [
            "[builtin]\ndisable = [\"two\\nlines\"]\n",
            "[[test]]\nagent = \"a\"\nop = \"write\\nx\"\npath = \"mem/x\"\nexpect = \"allow\"\n",
        ] {
            let e = crate::Ruleset::compile(vec![Source::new("p.toml", text)]).unwrap_err();
            assert_eq!(e.diagnostics.len(), 1, "{e}");
            let m = &e.diagnostics[0].message;
            assert!(!m.contains('\n') && m.contains("\\n"), "{m:?}");
        }
    }
}
