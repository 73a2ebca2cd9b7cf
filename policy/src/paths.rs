//! Path rules: `allow` grants rights on globs, `deny`, `read_only` and `append_only` forbid
//! them. All globs of all rules are one `GlobSet`; each rule also keeps a minimal DFA of its
//! globs, which tells whether a directory rename changes the rule's verdict for anything
//! below the directory.

use std::cell::RefCell;

use globset::{Candidate, GlobBuilder, GlobSet, GlobSetBuilder};
use regex_automata::dfa::{dense, Automaton, StartKind};
use regex_automata::util::primitives::StateID;
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input};

/// A set of rights, one bit each.
pub(crate) type Rights = u16;

pub(crate) const CREATE: Rights = 1 << 0;
/// Write anywhere but at the end of file.
pub(crate) const OVERWRITE: Rights = 1 << 1;
/// Write at or past the end of file.
pub(crate) const APPEND: Rights = 1 << 2;
/// Change the size (truncate, O_TRUNC).
pub(crate) const TRUNCATE: Rights = 1 << 3;
/// chmod, chown.
pub(crate) const CHMOD: Rights = 1 << 4;
/// Set times only (touch), or a truncate to the same size.
pub(crate) const TOUCH: Rights = 1 << 5;
/// Set or remove an xattr.
pub(crate) const XATTR: Rights = 1 << 6;
/// Remove a name (unlink, rmdir, rename away).
pub(crate) const DELETE: Rights = 1 << 7;

/// What the `write` op of a rule covers.
pub(crate) const WRITE: Rights = OVERWRITE | APPEND | TRUNCATE | CHMOD | TOUCH | XATTR;
pub(crate) const ALL: Rights = CREATE | WRITE | DELETE;
/// What `append_only` forbids: everything but creating, appending and touching.
pub(crate) const NOT_APPEND: Rights = OVERWRITE | TRUNCATE | CHMOD | XATTR | DELETE;

/// Human name of the first right in `r`, for messages.
pub(crate) fn right_name(r: Rights) -> &'static str {
    const NAMES: [(Rights, &str); 8] = [
        (CREATE, "create"),
        (OVERWRITE, "overwrite"),
        (APPEND, "append"),
        (TRUNCATE, "truncate"),
        (CHMOD, "chmod/chown"),
        (TOUCH, "set times"),
        (XATTR, "set xattr"),
        (DELETE, "delete"),
    ];
    NAMES
        .iter()
        .find(|(bit, _)| r & bit != 0)
        .map_or("change", |(_, n)| n)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    Grant(Rights),
    Forbid(Rights),
}

pub(crate) struct PathRule {
    /// Index into `Ruleset::rules`.
    pub rule: usize,
    pub effect: Effect,
    /// Anchored, minimal DFA matching the rule's globs.
    dfa: dense::DFA<Vec<u32>>,
    start: StateID,
}

/// Builds a glob the way every path rule reads it: `*` and `?` never match `/`, `**` matches
/// any number of components, `\` escapes.
pub(crate) fn glob(pattern: &str) -> Result<globset::Glob, String> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| e.kind().to_string())
}

/// Refuses globs that cannot match a canonical agent-relative path.
pub(crate) fn check_glob_shape(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() {
        return Err("empty path glob".into());
    }
    if pattern.starts_with('/') {
        return Err(format!(
            "path globs are relative to the agent's root: write {:?}, not {pattern:?}",
            pattern.trim_start_matches('/')
        ));
    }
    if pattern.split('/').any(|c| c == "." || c == "..") {
        return Err(format!(
            "path glob {pattern:?} has a `.` or `..` component; paths are canonical"
        ));
    }
    if pattern.ends_with('/') {
        return Err(format!(
            "path glob {pattern:?} ends with `/`: use {:?} for what is below it",
            format!("{pattern}**")
        ));
    }
    Ok(())
}

pub(crate) struct PathRulesBuilder {
    set: GlobSetBuilder,
    glob_rule: Vec<u32>,
    rules: Vec<PathRule>,
}

impl Default for PathRulesBuilder {
    fn default() -> Self {
        PathRulesBuilder {
            set: GlobSetBuilder::new(),
            glob_rule: Vec::new(),
            rules: Vec::new(),
        }
    }
}

impl PathRulesBuilder {
    /// Adds a rule with its already-validated globs.
    pub fn add(
        &mut self,
        rule: usize,
        effect: Effect,
        globs: &[globset::Glob],
    ) -> Result<(), String> {
        let alternation: Vec<String> = globs.iter().map(|g| format!("(?:{})", g.regex())).collect();
        let dfa = dense::Builder::new()
            .configure(
                dense::Config::new()
                    .start_kind(StartKind::Anchored)
                    .minimize(true)
                    .dfa_size_limit(Some(8 << 20))
                    .determinize_size_limit(Some(8 << 20)),
            )
            .syntax(syntax::Config::new().utf8(false).dot_matches_new_line(true))
            .build(&alternation.join("|"))
            .map_err(|e| format!("the globs are too complex to compile: {e}"))?;
        let start = dfa
            .start_state_forward(&Input::new(&b""[..]).anchored(Anchored::Yes))
            .map_err(|e| e.to_string())?;
        let index = self.rules.len();
        for g in globs {
            self.set.add(g.clone());
            self.glob_rule.push(index as u32);
        }
        self.rules.push(PathRule {
            rule,
            effect,
            dfa,
            start,
        });
        Ok(())
    }

    pub fn build(self) -> Result<PathRules, String> {
        let set = self.set.build().map_err(|e| e.to_string())?;
        Ok(PathRules {
            set,
            glob_rule: self.glob_rule,
            rules: self.rules,
        })
    }
}

pub(crate) struct PathRules {
    set: GlobSet,
    glob_rule: Vec<u32>,
    pub rules: Vec<PathRule>,
}

thread_local! {
    static SCRATCH: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

impl PathRules {
    /// Calls `f` with the index (into `self.rules`) of every rule with a glob matching
    /// `path`; a rule with several matching globs comes once per glob.
    pub fn for_each_match(&self, path: &[u8], mut f: impl FnMut(usize, &PathRule)) {
        if self.rules.is_empty() {
            return;
        }
        let candidate = Candidate::from_bytes(path);
        SCRATCH.with(|scratch| {
            // Re-entrancy would only happen if `f` matched paths itself; it never does, but
            // fall back to a fresh buffer rather than panic.
            let mut fresh = Vec::new();
            let mut guard = scratch.try_borrow_mut();
            let buf = match guard.as_deref_mut() {
                Ok(buf) => buf,
                Err(_) => &mut fresh,
            };
            self.set.matches_candidate_into(&candidate, buf);
            for &g in buf.iter() {
                let i = self.glob_rule[g] as usize;
                f(i, &self.rules[i]);
            }
        });
    }

    /// The DFA state of rule `i` after reading `dir` followed by `/`: what the rule says
    /// about everything below `dir`. `None` when nothing below `dir` can match.
    pub fn state_below(&self, i: usize, dir: &[u8]) -> Option<StateID> {
        let r = &self.rules[i];
        let mut s = r.start;
        for &b in dir.iter().chain(std::iter::once(&b'/')) {
            s = r.dfa.next_state(s, b);
            if r.dfa.is_dead_state(s) {
                return None;
            }
        }
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(pats: &[&str]) -> PathRules {
        let mut b = PathRulesBuilder::default();
        for (i, p) in pats.iter().enumerate() {
            b.add(i, Effect::Forbid(ALL), &[glob(p).unwrap()]).unwrap();
        }
        b.build().unwrap()
    }

    fn matching(r: &PathRules, path: &[u8]) -> Vec<usize> {
        let mut v = Vec::new();
        r.for_each_match(path, |i, _| v.push(i));
        v.sort();
        v.dedup();
        v
    }

    #[test]
    fn glob_semantics() {
        let r = rules(&["mem/episodic/**", "**/*.pem", "mem/*/x", "state/*"]);
        assert_eq!(matching(&r, b"mem/episodic/log"), [0]);
        assert_eq!(matching(&r, b"mem/episodic/a/b/c"), [0]);
        assert_eq!(matching(&r, b"mem/episodic"), Vec::<usize>::new());
        // `**` and `*` match names with newlines and non-UTF-8 bytes.
        assert_eq!(matching(&r, b"mem/episodic/a\nb"), [0]);
        assert_eq!(matching(&r, b"mem/episodic/\xff\xfe"), [0]);
        assert_eq!(matching(&r, b"k.pem"), [1]);
        assert_eq!(matching(&r, b"mem/semantic/a/k.pem"), [1]);
        assert_eq!(matching(&r, b"mem/semantic/x"), [2]);
        // `*` does not cross `/`.
        assert_eq!(matching(&r, b"mem/semantic/a/x"), Vec::<usize>::new());
        assert_eq!(matching(&r, b"state/cp"), [3]);
        assert_eq!(matching(&r, b"state/cp/x"), Vec::<usize>::new());
    }

    #[test]
    fn state_below_tells_whether_a_directory_rename_changes_a_verdict() {
        let r = rules(&["mem/episodic/**", "**/*.pem", "**/secrets/*.pem"]);
        // Nothing below mem/semantic/a matches rule 0.
        assert_eq!(r.state_below(0, b"mem/semantic/a"), None);
        assert!(r.state_below(0, b"mem/episodic/a").is_some());
        // **/*.pem says the same about everything below a and b.
        assert_eq!(
            r.state_below(1, b"mem/semantic/a"),
            r.state_below(1, b"mem/semantic/b")
        );
        assert!(r.state_below(1, b"mem/semantic/a").is_some());
        // Renaming a `secrets` directory changes rule 2's verdict below it.
        assert_ne!(
            r.state_below(2, b"mem/semantic/secrets"),
            r.state_below(2, b"mem/semantic/other")
        );
    }

    #[test]
    fn bad_globs() {
        assert!(check_glob_shape("/mem/**").is_err());
        assert!(check_glob_shape("mem/../x").is_err());
        assert!(check_glob_shape("mem/").is_err());
        assert!(check_glob_shape("").is_err());
        assert!(check_glob_shape("mem/**").is_ok());
        assert!(glob("mem/[a").is_err());
    }
}
