//! The policy file as written: TOML deserialized into spanned, typed tables. Unknown keys are
//! errors (`deny_unknown_fields`); every value keeps its byte span for messages.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

use crate::call::Action;
use crate::diag::{Errors, Source};

pub(crate) type Str = Spanned<String>;
pub(crate) type List<T> = Spanned<Vec<Spanned<T>>>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFile {
    #[serde(default)]
    pub builtin: Option<RawBuiltin>,
    #[serde(default)]
    pub default: Option<RawDefault>,
    /// uid → agent.
    #[serde(default)]
    pub identity: BTreeMap<Str, Str>,
    #[serde(default)]
    pub allow: Vec<Spanned<RawAllow>>,
    #[serde(default)]
    pub deny: Vec<Spanned<RawDeny>>,
    #[serde(default)]
    pub read_only: Vec<Spanned<RawPathRule>>,
    #[serde(default)]
    pub append_only: Vec<Spanned<RawPathRule>>,
    #[serde(default)]
    pub content: Vec<Spanned<RawContent>>,
    #[serde(default)]
    pub limit: Vec<Spanned<RawLimit>>,
    #[serde(default)]
    pub file_types: Vec<Spanned<RawFileTypes>>,
    #[serde(default)]
    pub test: Vec<Spanned<RawTest>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBuiltin {
    /// `false`: the built-in policy is not loaded at all.
    pub enabled: Option<Spanned<bool>>,
    /// `false`: none of the built-in secret patterns.
    pub secrets: Option<Spanned<bool>>,
    /// Built-in rules to leave out, by name.
    #[serde(default)]
    pub disable: Vec<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDefault {
    /// Action of the default deny (a path right no `allow` rule grants).
    pub action: Spanned<Action>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAllow {
    pub name: Str,
    pub agents: Option<List<String>>,
    pub paths: List<String>,
    pub ops: Option<List<PathOp>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDeny {
    pub name: Str,
    pub agents: Option<List<String>>,
    pub action: Option<Spanned<Action>>,
    pub paths: List<String>,
    pub ops: Option<List<PathOp>>,
}

/// `[[read_only]]` and `[[append_only]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPathRule {
    pub name: Str,
    pub agents: Option<List<String>>,
    pub action: Option<Spanned<Action>>,
    pub paths: List<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawContent {
    pub name: Str,
    pub agents: Option<List<String>>,
    pub action: Option<Spanned<Action>>,
    pub regex: Str,
    #[serde(rename = "in")]
    pub scope: Option<List<Scope>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimit {
    pub name: Str,
    pub agents: Option<List<String>>,
    pub action: Option<Spanned<Action>>,
    pub max_file_size: Option<Spanned<ByteSize>>,
    pub max_files: Option<Spanned<u64>>,
    pub quota: Option<Spanned<RawQuota>>,
    pub write_ops_per_sec: Option<Spanned<u64>>,
    pub write_bytes_per_sec: Option<Spanned<ByteSize>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawQuota {
    pub working: Option<Spanned<ByteSize>>,
    pub episodic: Option<Spanned<ByteSize>>,
    pub semantic: Option<Spanned<ByteSize>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFileTypes {
    pub name: Str,
    pub agents: Option<List<String>>,
    pub action: Option<Spanned<Action>>,
    pub forbid: List<TypeKind>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTest {
    pub name: Option<Str>,
    pub agent: Str,
    pub op: Str,
    pub path: Str,
    pub target: Option<Str>,
    pub content: Option<String>,
    pub xattr: Option<String>,
    pub kind: Option<Spanned<KindName>>,
    pub mode: Option<u32>,
    #[serde(default)]
    pub chown: bool,
    #[serde(default)]
    pub replaces: bool,
    pub offset: Option<u64>,
    pub size_before: Option<u64>,
    pub size: Option<u64>,
    pub class_bytes: Option<u64>,
    pub files: Option<u64>,
    pub expect: Spanned<Expect>,
    pub rule: Option<Str>,
}

impl<'de> Deserialize<'de> for Action {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "kill" => Ok(Action::Kill),
            "deny" => Ok(Action::Deny),
            "audit" => Ok(Action::Audit),
            other => Err(de::Error::custom(format!(
                "unknown action `{other}`: use \"kill\", \"deny\" or \"audit\""
            ))),
        }
    }
}

/// The path rights a rule names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum PathOp {
    Create,
    Write,
    Delete,
}

/// Where a content rule looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Scope {
    Content,
    Name,
    Symlink,
    Xattr,
}

/// What a `[[file_types]]` rule forbids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum TypeKind {
    Symlink,
    Hardlink,
    Special,
    Xattr,
    Exec,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum KindName {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    Char,
    Block,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Expect {
    Allow,
    Audit,
    Deny,
    Kill,
}

impl Expect {
    pub fn name(self) -> &'static str {
        match self {
            Expect::Allow => "allow",
            Expect::Audit => "audit",
            Expect::Deny => "deny",
            Expect::Kill => "kill",
        }
    }
}

/// A byte count: an integer, or a string with a unit (`"10 MiB"`, `"1GB"`, `"512 KiB"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte count: an integer or a string such as \"10 MiB\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a byte count cannot be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_size(v).map(ByteSize).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '_')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: String = num.chars().filter(|c| *c != '_').collect();
    let bad = || {
        format!(
            "invalid byte count {text:?}: use an integer with an optional unit \
             (B, KiB, MiB, GiB, TiB, KB, MB, GB, TB), e.g. \"10 MiB\""
        )
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "TiB" | "T" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("byte count {text:?} is too large"))
}

/// Parses one file; a syntax error or unknown key becomes one diagnostic.
pub(crate) fn parse(source: &Source, errors: &mut Errors) -> Option<RawFile> {
    match toml::from_str::<RawFile>(&source.text) {
        Ok(raw) => Some(raw),
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let mut message = tidy(e.message());
            // `[limit]` where `[[limit]]` is meant: say so.
            let at = &source.text[span.start.min(source.text.len())..];
            if message.contains("expected a sequence")
                && at.starts_with('[')
                && !at.starts_with("[[")
            {
                let table = at[1..].split(']').next().unwrap_or("").trim();
                message = format!(
                    "[{table}] must be written [[{table}]]: each rule is its own table in an array"
                );
            }
            errors.at(source, span, message);
            None
        }
    }
}

/// toml's messages end with a newline and sometimes span lines; keep one line.
fn tidy(message: &str) -> String {
    let one: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    one.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10 MiB"), Ok(10 << 20));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("1_000"), Ok(1000));
        assert_eq!(parse_size("7"), Ok(7));
        assert!(parse_size("ten").is_err());
        assert!(parse_size("10 parsecs").is_err());
        assert!(parse_size("99999999999 TiB").is_err());
    }
}
