//! What a ruleset holds, for people: the summary `agentfs policy check` prints and the
//! effective rules of one agent (shown in `AGENT/policy/`).

use std::fmt;
use std::fmt::Write as _;

use crate::call::PolicyVersion;
use crate::compile::{RuleKind, Ruleset};

/// Counts of a ruleset, for `agentfs policy check`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub files: usize,
    /// `enabled`, `enabled without secrets`, `enabled without a, b` or `disabled`.
    pub builtin: String,
    /// (table name, count), e.g. ("allow", 2), for every kind with rules.
    pub rules: Vec<(&'static str, usize)>,
    pub max_match_len: usize,
    pub window: usize,
    pub identities: usize,
    pub tests_run: usize,
    pub version: PolicyVersion,
    /// Things that are valid but probably not meant.
    pub warnings: Vec<String>,
}

impl Ruleset {
    pub fn summary(&self) -> Summary {
        let kinds = [
            RuleKind::Allow,
            RuleKind::Deny,
            RuleKind::ReadOnly,
            RuleKind::AppendOnly,
            RuleKind::Content,
            RuleKind::Limit,
            RuleKind::FileTypes,
        ];
        let rules = kinds
            .iter()
            .map(|k| {
                (
                    k.table(),
                    self.rules.iter().filter(|r| r.kind == *k).count(),
                )
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        let b = &self.builtin;
        let builtin = if !b.enabled {
            "disabled".to_string()
        } else {
            let mut off = Vec::new();
            if !b.secrets {
                off.push("secrets".to_string());
            }
            off.extend(b.disabled.iter().cloned());
            if off.is_empty() {
                "enabled".to_string()
            } else {
                format!("enabled without {}", off.join(", "))
            }
        };
        let mut warnings = Vec::new();
        if !self.rules.iter().any(|r| r.kind == RuleKind::Allow) {
            warnings.push(
                "no allow rule: every create, write and delete will be refused (default deny)"
                    .to_string(),
            );
        }
        Summary {
            files: self.sources.len(),
            builtin,
            rules,
            max_match_len: self.max_match_len(),
            window: self.window(),
            identities: self.identity.len(),
            tests_run: self.tests_run,
            version: self.version,
            warnings,
        }
    }

    /// The rules in force for `agent`, rendered for people (the `AGENT/policy/` view).
    pub fn render_for(&self, agent: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# Rules in force for agent `{agent}`");
        let _ = writeln!(out, "# policy version {}", self.version);
        // The built-in rules in force are listed below like any other, so the text is a
        // whole policy: loaded alone, it decides every call of `agent` as this one does.
        let _ = writeln!(out, "\n[builtin]\nenabled = false");
        let _ = writeln!(
            out,
            "\n[default]  # a path right no allow rule grants is refused\naction = {}",
            toml_string(self.default_action.name())
        );
        for r in self.rules.iter().filter(|r| r.agents.applies(agent)) {
            let _ = writeln!(out);
            let _ = writeln!(out, "[[{}]]  # {}:{}", r.kind.table(), r.file, r.line);
            let _ = writeln!(out, "name = {}", toml_string(&r.name));
            if r.kind != RuleKind::Allow {
                let _ = writeln!(out, "action = {}", toml_string(r.action.name()));
            }
            for part in split_top(&r.detail) {
                let _ = writeln!(out, "{part}");
            }
        }
        let uids: Vec<u32> = {
            let mut v: Vec<u32> = self
                .identity
                .iter()
                .filter(|(_, a)| &***a == agent)
                .map(|(u, _)| *u)
                .collect();
            v.sort();
            v
        };
        if !uids.is_empty() {
            let _ = writeln!(out, "\n[identity]");
            for u in uids {
                let _ = writeln!(out, "{u} = {}", toml_string(agent));
            }
        }
        out
    }
}

/// `s` as a TOML basic string: what the policy file said, so that the rendered rules are
/// policy text that loads again (Rust's `{:?}` writes `\u{1}` and `\0`, which TOML refuses).
pub(crate) fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Splits `a = [x, y], b = 1` at the top-level commas.
fn split_top(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start, mut quoted, mut escaped) = (0i32, 0, false, false);
    for (i, c) in s.char_indices() {
        if quoted {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => quoted = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => quoted = true,
            '[' | '{' => depth += 1,
            ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    if !s[start..].trim().is_empty() {
        parts.push(s[start..].trim());
    }
    parts
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let files = match self.files {
            1 => "1 file".to_string(),
            n => format!("{n} files"),
        };
        writeln!(f, "policy ok: {files}, built-in policy {}", self.builtin)?;
        let rules: Vec<String> = self.rules.iter().map(|(k, n)| format!("{n} {k}")).collect();
        let rules = if rules.is_empty() {
            "none".to_string()
        } else {
            rules.join(", ")
        };
        writeln!(f, "  rules:    {rules}")?;
        if self.window > 0 {
            writeln!(
                f,
                "  content:  longest match {} bytes, scan window {} bytes each side of a write",
                self.max_match_len, self.window
            )?;
        } else {
            writeln!(f, "  content:  no rule looks at file content")?;
        }
        writeln!(
            f,
            "  identity: {} uid{} mapped; tests: {} passed",
            self.identities,
            if self.identities == 1 { "" } else { "s" },
            self.tests_run
        )?;
        write!(f, "  version:  blake3:{}", self.version)?;
        for w in &self.warnings {
            write!(f, "\nwarning: {w}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_string_escapes_what_toml_needs() {
        assert_eq!(toml_string(r"(?-u:\b)a"), r#""(?-u:\\b)a""#);
        assert_eq!(
            toml_string("a\"b\n\u{1}\0\u{85}é"),
            r#""a\"b\n\u0001\u0000\u0085é""#
        );
    }

    /// Found by the `policy-roundtrip` fuzz target: the rendered rules had a `max_len = N`
    /// key and Rust-escaped strings (`\u{1}`), so they did not load again.
    #[test]
    fn rendered_rules_load_again_and_decide_the_same() {
        use crate::{Call, Content, Op, Source};
        let text = "[[allow]]\nname = \"odd\"\npaths = [\"mem/a\\u0001b\", \"x/\\\\*\"]\n\
                    [[content]]\nname = \"c\"\nregex = '\\x01{1,3}zebra'\n";
        let original = Ruleset::compile(vec![Source::new("p.toml", text)]).unwrap();
        let rendered = original.render_for("a");
        let again = Ruleset::compile(vec![Source::new("r.toml", rendered.as_str())])
            .unwrap_or_else(|e| panic!("{e}\n{rendered}"));
        for (path, data) in [
            (&b"mem/a\x01b"[..], &b"hi"[..]),
            (b"x/*", b"hi"),
            (b"x/y", b"hi"),
            (b"mem/x", b"\x01zebra"),
        ] {
            let call = Call {
                content: Some(Content {
                    bytes: data,
                    at: 0,
                    changed: 0..data.len() as u64,
                    file_size: data.len() as u64,
                }),
                ..Call::new("a", Op::Write, path)
            };
            assert_eq!(
                original.decide(&call).decision,
                again.decide(&call).decision,
                "{path:?}\n{rendered}"
            );
        }
    }

    /// Found by the `policy-mutated` fuzz target, whose oracle looked for `[default]` in
    /// the text and found it inside a regex: the rendered rules now state their default
    /// action (and that the built-in rules are inlined) themselves.
    #[test]
    fn rendered_rules_carry_the_default_action() {
        use crate::{Call, Op, Source};
        let in_a_regex =
            "[[content]]\nname = \"c\"\nregex = '''x[^\n[default]\naction = \"audit\"\n]'''\n";
        for (text, want) in [
            ("[default]\naction = \"audit\"\n", "audit"),
            (in_a_regex, "kill"),
        ] {
            let original = Ruleset::compile(vec![Source::new("p.toml", text)]).unwrap();
            let rendered = original.render_for("a");
            assert!(
                rendered.contains(&format!("[default]  # a path right no allow rule grants is refused\naction = \"{want}\"")),
                "{rendered}"
            );
            let again = Ruleset::compile(vec![Source::new("r.toml", rendered.as_str())])
                .unwrap_or_else(|e| panic!("{e}\n{rendered}"));
            let call = Call::new("a", Op::Create, b"shared/run.sh");
            assert_eq!(
                original.decide(&call).decision,
                again.decide(&call).decision,
                "{rendered}"
            );
        }
    }

    #[test]
    fn split_top_respects_brackets_and_quotes() {
        assert_eq!(
            split_top(r#"paths = ["a,b", "c"], ops = ["x"]"#),
            vec![r#"paths = ["a,b", "c"]"#, r#"ops = ["x"]"#]
        );
        assert_eq!(
            split_top(r#"regex = "a\",{", in = ["name"]"#),
            vec![r#"regex = "a\",{""#, r#"in = ["name"]"#]
        );
    }
}
