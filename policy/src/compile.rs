//! From parsed files to a [`Ruleset`]: validate every rule, compile all globs into one
//! `GlobSet` and all content regexes into one multi-pattern regex, then run the files'
//! `[[test]]` cases against the result.

use std::collections::HashMap;
use std::sync::Arc;

use crate::builtin::{BUILTIN_NAME, BUILTIN_TOML};
use crate::call::{Action, PolicyVersion};
use crate::diag::{Errors, PolicyError, Source};
use crate::limits::{LimitRule, TypesRule};
use crate::load::{builtin_use, Compiler};
use crate::parse::{self, RawFile};
use crate::paths::PathRules;
use crate::scan::{self, ContentRules};

/// Names no rule may take: they name decisions that are not rules.
pub(crate) const RESERVED: [&str; 3] = ["default-deny", "content-window", "invalid-call"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RuleKind {
    Allow,
    Deny,
    ReadOnly,
    AppendOnly,
    Content,
    Limit,
    FileTypes,
}

impl RuleKind {
    pub fn table(self) -> &'static str {
        match self {
            RuleKind::Allow => "allow",
            RuleKind::Deny => "deny",
            RuleKind::ReadOnly => "read_only",
            RuleKind::AppendOnly => "append_only",
            RuleKind::Content => "content",
            RuleKind::Limit => "limit",
            RuleKind::FileTypes => "file_types",
        }
    }
}

/// Which agents a rule applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Agents {
    All,
    /// Sorted.
    Only(Box<[Arc<str>]>),
}

impl Agents {
    #[inline]
    pub fn applies(&self, agent: &str) -> bool {
        match self {
            Agents::All => true,
            Agents::Only(list) => list.binary_search_by(|a| (**a).cmp(agent)).is_ok(),
        }
    }
}

/// One rule, whatever its kind.
#[derive(Clone, Debug)]
pub(crate) struct RuleMeta {
    pub name: Arc<str>,
    pub kind: RuleKind,
    pub action: Action,
    pub agents: Agents,
    pub file: Arc<str>,
    pub line: usize,
    /// The rule's body rendered for `AGENT/policy/` (`paths = [...]`, `regex = '...'`).
    pub detail: String,
}

/// How the built-in policy is used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BuiltinUse {
    pub enabled: bool,
    pub secrets: bool,
    pub disabled: Vec<String>,
}

/// A compiled, tested policy: the built-in rules (unless disabled) and every file's rules.
/// Immutable; [`crate::Engine`] swaps whole rulesets.
pub struct Ruleset {
    pub(crate) sources: Vec<Source>,
    pub(crate) rules: Vec<RuleMeta>,
    pub(crate) paths: PathRules,
    pub(crate) content: ContentRules,
    pub(crate) limits: Vec<LimitRule>,
    pub(crate) types: Vec<TypesRule>,
    pub(crate) identity: HashMap<u32, Arc<str>>,
    pub(crate) default_action: Action,
    pub(crate) default_rule: Arc<str>,
    pub(crate) window_rule: Arc<str>,
    pub(crate) invalid_rule: Arc<str>,
    pub(crate) builtin: BuiltinUse,
    pub(crate) version: PolicyVersion,
    pub(crate) tests_run: usize,
    pub(crate) has_rates: bool,
}

impl std::fmt::Debug for Ruleset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ruleset")
            .field("version", &self.version)
            .field("rules", &self.rules.len())
            .field("files", &self.sources.len())
            .finish()
    }
}

impl Ruleset {
    /// Parses, compiles and tests the policy made of the built-in policy and `sources` (in
    /// any order: the result does not depend on it, except for the version hash). Every
    /// error found is returned, each pointing at its file, line and column.
    pub fn compile(sources: Vec<Source>) -> Result<Ruleset, PolicyError> {
        let builtin_source = Source::new(BUILTIN_NAME, BUILTIN_TOML);
        let mut errors = Errors::default();
        let builtin_raw = parse::parse(&builtin_source, &mut errors)
            .expect("the built-in policy parses (tested)");
        let mut files: Vec<Option<RawFile>> = sources
            .iter()
            .map(|s| parse::parse(s, &mut errors))
            .collect();

        let usage = builtin_use(&builtin_raw, &sources, &mut files, &mut errors);
        let mut c = Compiler::default();
        if usage.enabled {
            c.add_file(&builtin_source, 0, builtin_raw, true, &usage);
        }
        for (i, (source, raw)) in sources.iter().zip(files).enumerate() {
            if let Some(raw) = raw {
                c.add_file(source, i + 1, raw, false, &usage);
            }
        }
        let all_sources: Vec<&Source> = std::iter::once(&builtin_source)
            .chain(sources.iter())
            .collect();
        let built = c.finish(&all_sources, &mut errors);
        errors.list.extend(c.errors.list);
        let Some((paths, content)) = built else {
            sort_diagnostics(&mut errors.list, &sources);
            return Err(PolicyError {
                diagnostics: errors.list,
            });
        };
        if !errors.is_empty() {
            sort_diagnostics(&mut errors.list, &sources);
            return Err(PolicyError {
                diagnostics: errors.list,
            });
        }

        let version = version_of(&sources);
        let has_rates = c.limits.iter().any(LimitRule::has_rate);
        let mut ruleset = Ruleset {
            sources,
            rules: c.rules,
            paths,
            content,
            limits: c.limits,
            types: c.types,
            identity: c
                .identity
                .into_iter()
                .map(|(uid, (agent, _))| (uid, agent))
                .collect(),
            default_action: c.default_action.unwrap_or(Action::Kill),
            default_rule: Arc::from("default-deny"),
            window_rule: scan::window_rule(),
            invalid_rule: Arc::from("invalid-call"),
            builtin: usage,
            version,
            tests_run: 0,
            has_rates,
        };

        // The built-in cases describe the built-in policy alone: they run when no file is
        // given (each file's cases run against the whole policy).
        let builtin_alone = ruleset.sources.is_empty();
        let mut test_errors = Errors::default();
        let mut run = 0;
        let owned_builtin = Source::new(BUILTIN_NAME, BUILTIN_TOML);
        for (file, tests) in c.tests {
            if file == 0 && !builtin_alone {
                continue;
            }
            let source = if file == 0 {
                &owned_builtin
            } else {
                &ruleset.sources[file - 1]
            };
            for (k, t) in tests.iter().enumerate() {
                run += 1;
                if let Err((span, msg)) = crate::selftest::run(&ruleset, t, k + 1) {
                    test_errors.at(source, span, msg);
                }
            }
        }
        test_errors.into_result()?;
        ruleset.tests_run = run;
        Ok(ruleset)
    }

    /// The built-in policy alone (what applies with no `--policy`).
    pub fn builtin() -> Ruleset {
        Ruleset::compile(Vec::new()).expect("the built-in policy compiles (tested)")
    }

    /// BLAKE3 of the sources: the built-in policy, then each file's bytes, in order.
    pub fn version(&self) -> PolicyVersion {
        self.version
    }

    /// The policy files as given (for `sys/policy/`).
    pub fn sources(&self) -> &[Source] {
        &self.sources
    }

    /// Whether the built-in policy is part of this ruleset (no file said
    /// `[builtin] enabled = false`).
    pub fn builtin_enabled(&self) -> bool {
        self.builtin.enabled
    }

    /// The agent a uid is mapped to by an `[identity]` table.
    pub fn agent_for_uid(&self, uid: u32) -> Option<&str> {
        self.identity.get(&uid).map(|a| &**a)
    }

    /// The longest match any content rule that looks at file content can have, in bytes.
    pub fn max_match_len(&self) -> usize {
        self.content.max_len
    }

    /// Bytes of the file the core passes on each side of a changed range:
    /// `max_match_len() + 2 * LOOK_AROUND`, or 0 when no rule looks at file content.
    pub fn window(&self) -> usize {
        self.content.window()
    }

    /// Whether some content rule can match inside a run of zero bytes. When false (the
    /// built-in policy), zero bytes added by a truncate or a hole can only form a match
    /// together with the bytes at the old end of file, so the core may pass such a zero
    /// fill as the changed range `[old_size, old_size + 1)` instead of all of it.
    pub fn zero_fill_can_match(&self) -> bool {
        self.content.zero_fill_matches
    }

    /// Names of all rules, for tests and listings.
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| &*r.name)
    }
}

/// Files in the order given (the built-in policy first), each from top to bottom.
fn sort_diagnostics(list: &mut [crate::diag::Diagnostic], sources: &[Source]) {
    let rank = |file: &str| {
        if file == BUILTIN_NAME {
            0
        } else {
            sources
                .iter()
                .position(|s| s.name == file)
                .map_or(usize::MAX, |i| i + 1)
        }
    };
    list.sort_by_key(|d| (rank(&d.file), d.line, d.col));
}

fn version_of(sources: &[Source]) -> PolicyVersion {
    let mut h = blake3::Hasher::new();
    h.update(b"agentfs-policy/1\0");
    for text in std::iter::once(BUILTIN_TOML).chain(sources.iter().map(|s| s.text.as_str())) {
        h.update(&(text.len() as u64).to_le_bytes());
        h.update(text.as_bytes());
    }
    PolicyVersion(*h.finalize().as_bytes())
}
