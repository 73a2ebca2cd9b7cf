//! Reading parsed files into rules: validate every rule's parts, collect globs, regexes,
//! limits and identities, and report each mistake at its file, line and column.

use std::collections::HashMap;
use std::sync::Arc;

use toml::Spanned;

use crate::builtin::BUILTIN_NAME;
use crate::call::Action;
use crate::compile::{Agents, BuiltinUse, RuleKind, RuleMeta, RESERVED};
use crate::diag::{Errors, Source};
use crate::limits::{
    LimitRule, TypeBits, TypesRule, T_EXEC, T_HARDLINK, T_SPECIAL, T_SYMLINK, T_XATTR,
};
use crate::parse::{List, PathOp, RawFile, RawTest, Scope, Str, TypeKind};
use crate::paths::{self, Effect, PathRules, PathRulesBuilder, Rights};
use crate::render::toml_string;
use crate::scan::{self, ContentRule, ContentRules, Scopes};

/// Combines the files' `[builtin]` tables: any file can leave parts out.
pub(crate) fn builtin_use(
    builtin: &RawFile,
    sources: &[Source],
    files: &mut [Option<RawFile>],
    errors: &mut Errors,
) -> BuiltinUse {
    let names: Vec<&str> = builtin_rule_names(builtin);
    let mut usage = BuiltinUse {
        enabled: true,
        secrets: true,
        disabled: Vec::new(),
    };
    for (source, raw) in sources.iter().zip(files.iter_mut()) {
        let Some(b) = raw.as_mut().and_then(|r| r.builtin.take()) else {
            continue;
        };
        if b.enabled.as_ref().is_some_and(|e| !*e.get_ref()) {
            usage.enabled = false;
        }
        if b.secrets.as_ref().is_some_and(|e| !*e.get_ref()) {
            usage.secrets = false;
        }
        for d in &b.disable {
            if names.contains(&d.get_ref().as_str()) {
                if !usage.disabled.contains(d.get_ref()) {
                    usage.disabled.push(d.get_ref().clone());
                }
            } else {
                errors.at(
                    source,
                    d.span(),
                    format!(
                        "there is no built-in rule named `{}` (built-in rules: {})",
                        d.get_ref(),
                        names.join(", ")
                    ),
                );
            }
        }
    }
    usage.disabled.sort();
    usage
}

fn builtin_rule_names(raw: &RawFile) -> Vec<&str> {
    let mut v: Vec<&str> = Vec::new();
    v.extend(
        raw.allow
            .iter()
            .map(|r| r.get_ref().name.get_ref().as_str()),
    );
    v.extend(raw.deny.iter().map(|r| r.get_ref().name.get_ref().as_str()));
    v.extend(
        raw.read_only
            .iter()
            .map(|r| r.get_ref().name.get_ref().as_str()),
    );
    v.extend(
        raw.append_only
            .iter()
            .map(|r| r.get_ref().name.get_ref().as_str()),
    );
    v.extend(
        raw.content
            .iter()
            .map(|r| r.get_ref().name.get_ref().as_str()),
    );
    v.extend(
        raw.limit
            .iter()
            .map(|r| r.get_ref().name.get_ref().as_str()),
    );
    v.extend(
        raw.file_types
            .iter()
            .map(|r| r.get_ref().name.get_ref().as_str()),
    );
    v
}

#[derive(Default)]
pub(crate) struct Compiler {
    pub(crate) errors: Errors,
    pub(crate) rules: Vec<RuleMeta>,
    pub(crate) names: HashMap<String, NameSeen>,
    pub(crate) paths: Vec<(usize, Effect, Vec<globset::Glob>)>,
    pub(crate) content: Vec<(ContentRule, regex_syntax::hir::Hir)>,
    pub(crate) limits: Vec<LimitRule>,
    pub(crate) types: Vec<TypesRule>,
    pub(crate) identity: HashMap<u32, (Arc<str>, String)>,
    pub(crate) default_action: Option<Action>,
    /// (file index: 0 = built-in, then sources), cases.
    pub(crate) tests: Vec<(usize, Vec<Spanned<RawTest>>)>,
}

/// Where a rule name was first seen: file, line, column, and (file rank, byte offset) to
/// order two sightings.
type NameSeen = (Arc<str>, usize, usize, (usize, usize));

/// The parts every rule has.
struct Header<'a> {
    name: &'a Str,
    agents: &'a Option<List<String>>,
    action: Option<&'a Spanned<Action>>,
}

impl Compiler {
    pub(crate) fn add_file(
        &mut self,
        source: &Source,
        file: usize,
        raw: RawFile,
        builtin: bool,
        usage: &BuiltinUse,
    ) {
        let file_name: Arc<str> = Arc::from(source.name.as_str());
        let keep = |name: &Str, kind: RuleKind| {
            !builtin
                || (!usage.disabled.contains(name.get_ref())
                    && (usage.secrets || kind != RuleKind::Content))
        };

        if let Some(d) = &raw.default {
            let a = *d.action.get_ref();
            self.default_action = Some(self.default_action.map_or(a, |b| b.max(a)));
        }
        for (uid, agent) in &raw.identity {
            self.identity_entry(source, uid, agent);
        }
        for r in &raw.allow {
            let r = r.get_ref();
            if !keep(&r.name, RuleKind::Allow) {
                continue;
            }
            let h = Header {
                name: &r.name,
                agents: &r.agents,
                action: None,
            };
            let rights = self.ops(source, r.ops.as_ref());
            let detail = format!(
                "paths = {}, ops = {}",
                list(&r.paths),
                ops_text(r.ops.as_ref())
            );
            if let Some(i) = self.header(source, &file_name, file, &h, RuleKind::Allow, detail) {
                self.path_rule(source, i, Effect::Grant(rights), &r.paths);
            }
        }
        for r in &raw.deny {
            let r = r.get_ref();
            if !keep(&r.name, RuleKind::Deny) {
                continue;
            }
            let h = Header {
                name: &r.name,
                agents: &r.agents,
                action: r.action.as_ref(),
            };
            let rights = self.ops(source, r.ops.as_ref());
            let detail = format!(
                "paths = {}, ops = {}",
                list(&r.paths),
                ops_text(r.ops.as_ref())
            );
            if let Some(i) = self.header(source, &file_name, file, &h, RuleKind::Deny, detail) {
                self.path_rule(source, i, Effect::Forbid(rights), &r.paths);
            }
        }
        for (rules, kind, rights) in [
            (&raw.read_only, RuleKind::ReadOnly, paths::ALL),
            (&raw.append_only, RuleKind::AppendOnly, paths::NOT_APPEND),
        ] {
            for r in rules {
                let r = r.get_ref();
                if !keep(&r.name, kind) {
                    continue;
                }
                let h = Header {
                    name: &r.name,
                    agents: &r.agents,
                    action: r.action.as_ref(),
                };
                let detail = format!("paths = {}", list(&r.paths));
                if let Some(i) = self.header(source, &file_name, file, &h, kind, detail) {
                    self.path_rule(source, i, Effect::Forbid(rights), &r.paths);
                }
            }
        }
        for r in &raw.content {
            let r = r.get_ref();
            if !keep(&r.name, RuleKind::Content) {
                continue;
            }
            let h = Header {
                name: &r.name,
                agents: &r.agents,
                action: r.action.as_ref(),
            };
            let scopes = self.scopes(source, r.scope.as_ref());
            let measured = scan::measure(r.regex.get_ref());
            let detail = format!(
                "regex = {}, in = {}",
                toml_string(r.regex.get_ref()),
                scopes_text(scopes)
            );
            let Some(i) = self.header(source, &file_name, file, &h, RuleKind::Content, detail)
            else {
                continue;
            };
            match measured {
                Ok(p) => {
                    self.rules[i]
                        .detail
                        .push_str(&format!(", # longest match: {} bytes", p.max_len));
                    self.content.push((
                        ContentRule {
                            rule: i,
                            scopes,
                            max_len: p.max_len,
                        },
                        p.hir,
                    ));
                }
                Err(refused) => {
                    // In a one-line literal string the pattern's bytes are the file's bytes,
                    // so the error can point at the exact character.
                    let span = r.regex.span();
                    let literal = source.text[span.clone()].starts_with('\'')
                        && !source.text[span.clone()].starts_with("\'\'\'");
                    let at = match refused.offset {
                        Some(o) if literal => span.start + 1 + o,
                        _ => span.start,
                    };
                    self.errors.at(
                        source,
                        at..at,
                        format!("content rule `{}`: {}", r.name.get_ref(), refused.message),
                    )
                }
            }
        }
        for r in &raw.limit {
            let r = r.get_ref();
            if !keep(&r.name, RuleKind::Limit) {
                continue;
            }
            let h = Header {
                name: &r.name,
                agents: &r.agents,
                action: r.action.as_ref(),
            };
            let mut l = LimitRule {
                max_file_size: r.max_file_size.as_ref().map(|s| s.get_ref().0),
                max_files: r.max_files.as_ref().map(|s| *s.get_ref()),
                ops_per_sec: r.write_ops_per_sec.as_ref().map(|s| *s.get_ref()),
                bytes_per_sec: r.write_bytes_per_sec.as_ref().map(|s| s.get_ref().0),
                ..LimitRule::default()
            };
            if let Some(q) = &r.quota {
                let q = q.get_ref();
                l.quota = [&q.working, &q.episodic, &q.semantic]
                    .map(|c| c.as_ref().map(|s| s.get_ref().0));
            }
            if let Some(q) = &r.quota {
                if l.quota.iter().all(Option::is_none) {
                    self.errors.at(
                        source,
                        q.span(),
                        format!(
                            "limit rule `{}`: quota names no memory class (working, episodic, semantic)",
                            r.name.get_ref()
                        ),
                    );
                }
            }
            for (v, what) in [
                (
                    &r.write_ops_per_sec
                        .as_ref()
                        .map(|s| (*s.get_ref(), s.span())),
                    "write_ops_per_sec",
                ),
                (
                    &r.write_bytes_per_sec
                        .as_ref()
                        .map(|s| (s.get_ref().0, s.span())),
                    "write_bytes_per_sec",
                ),
            ] {
                if let Some((0, span)) = v {
                    self.errors.at(
                        source,
                        span.clone(),
                        format!(
                            "limit rule `{}`: {what} must be at least 1 (to forbid writes, use a deny rule)",
                            r.name.get_ref()
                        ),
                    );
                }
            }
            let detail = limit_text(&l);
            let nothing = l.max_file_size.is_none()
                && l.max_files.is_none()
                && r.quota.is_none()
                && !l.has_rate();
            if let Some(i) = self.header(source, &file_name, file, &h, RuleKind::Limit, detail) {
                if nothing {
                    self.errors.at(
                        source,
                        r.name.span(),
                        format!(
                            "limit rule `{}` sets no limit (max_file_size, max_files, quota, \
                             write_ops_per_sec, write_bytes_per_sec)",
                            r.name.get_ref()
                        ),
                    );
                }
                l.rule = i;
                self.limits.push(l);
            }
        }
        for r in &raw.file_types {
            let r = r.get_ref();
            if !keep(&r.name, RuleKind::FileTypes) {
                continue;
            }
            let h = Header {
                name: &r.name,
                agents: &r.agents,
                action: r.action.as_ref(),
            };
            let mut forbid: TypeBits = 0;
            for k in r.forbid.get_ref() {
                forbid |= match k.get_ref() {
                    TypeKind::Symlink => T_SYMLINK,
                    TypeKind::Hardlink => T_HARDLINK,
                    TypeKind::Special => T_SPECIAL,
                    TypeKind::Xattr => T_XATTR,
                    TypeKind::Exec => T_EXEC,
                };
            }
            if forbid == 0 {
                self.errors.at(
                    source,
                    r.forbid.span(),
                    format!(
                        "file_types rule `{}` forbids nothing: list some of \"symlink\", \
                         \"hardlink\", \"special\", \"xattr\", \"exec\"",
                        r.name.get_ref()
                    ),
                );
            }
            let detail = format!("forbid = {}", types_text(forbid));
            if let Some(i) = self.header(source, &file_name, file, &h, RuleKind::FileTypes, detail)
            {
                self.types.push(TypesRule { rule: i, forbid });
            }
        }
        if !raw.test.is_empty() {
            self.tests.push((file, raw.test));
        }
    }

    /// Validates the common parts and records the rule; `None` if it cannot be recorded.
    fn header(
        &mut self,
        source: &Source,
        file: &Arc<str>,
        file_rank: usize,
        h: &Header<'_>,
        kind: RuleKind,
        detail: String,
    ) -> Option<usize> {
        let name = h.name.get_ref();
        let (line, _) = source.line_col(h.name.span().start);
        if let Err(msg) = check_name(name) {
            self.errors.at(source, h.name.span(), msg);
            return None;
        }
        // Rules are visited by kind, so the first one seen may come later in the file: the
        // error goes to whichever of the two comes later.
        let here = (file_rank, h.name.span().start);
        if let Some((f, l, c, first)) = self.names.get(name).cloned() {
            if &*f == BUILTIN_NAME {
                self.errors.at(
                    source,
                    h.name.span(),
                    format!(
                        "rule name `{name}` is already used by the built-in policy (leave the \
                         built-in rule out with [builtin] disable = [\"{name}\"] to replace it)"
                    ),
                );
            } else if first < here {
                self.errors.at(
                    source,
                    h.name.span(),
                    format!("rule name `{name}` is already used at {f}:{l}"),
                );
            } else {
                self.errors.list.push(crate::diag::Diagnostic {
                    file: f.to_string(),
                    line: l,
                    col: c,
                    message: format!(
                        "rule name `{name}` is already used at {}:{line}",
                        source.name
                    ),
                });
            }
        } else {
            let (_, col) = source.line_col(h.name.span().start);
            self.names
                .insert(name.clone(), (file.clone(), line, col, here));
        }
        let agents = match h.agents {
            None => Agents::All,
            Some(list) => {
                if list.get_ref().is_empty() {
                    self.errors.at(
                        source,
                        list.span(),
                        format!(
                            "rule `{name}`: agents = [] applies to no agent; leave `agents` out \
                             to apply the rule to all agents"
                        ),
                    );
                }
                let mut v: Vec<Arc<str>> = Vec::new();
                for a in list.get_ref() {
                    if let Err(msg) = check_agent(a.get_ref()) {
                        self.errors.at(source, a.span(), msg);
                    }
                    v.push(Arc::from(a.get_ref().as_str()));
                }
                v.sort();
                v.dedup();
                Agents::Only(v.into_boxed_slice())
            }
        };
        let action = h.action.map_or(Action::Kill, |a| *a.get_ref());
        self.rules.push(RuleMeta {
            name: Arc::from(name.as_str()),
            kind,
            action,
            agents,
            file: file.clone(),
            line,
            detail,
        });
        Some(self.rules.len() - 1)
    }

    fn path_rule(&mut self, source: &Source, rule: usize, effect: Effect, pats: &List<String>) {
        let name = self.rules[rule].name.clone();
        if pats.get_ref().is_empty() {
            self.errors.at(
                source,
                pats.span(),
                format!("rule `{name}`: paths = [] matches nothing"),
            );
            return;
        }
        let mut globs = Vec::new();
        for p in pats.get_ref() {
            match paths::check_glob_shape(p.get_ref()).and_then(|()| paths::glob(p.get_ref())) {
                Ok(g) => globs.push(g),
                Err(msg) => self
                    .errors
                    .at(source, p.span(), format!("rule `{name}`: {msg}")),
            }
        }
        if globs.len() == pats.get_ref().len() {
            self.paths.push((rule, effect, globs));
        }
    }

    fn ops(&mut self, source: &Source, ops: Option<&List<PathOp>>) -> Rights {
        let Some(ops) = ops else {
            return paths::ALL;
        };
        if ops.get_ref().is_empty() {
            self.errors.at(
                source,
                ops.span(),
                "ops = [] names no right: use some of \"create\", \"write\", \"delete\", or leave \
                 `ops` out for all three",
            );
        }
        ops.get_ref()
            .iter()
            .map(|o| match o.get_ref() {
                PathOp::Create => paths::CREATE,
                PathOp::Write => paths::WRITE,
                PathOp::Delete => paths::DELETE,
            })
            .fold(0, |a, b| a | b)
    }

    fn scopes(&mut self, source: &Source, scopes: Option<&List<Scope>>) -> Scopes {
        let Some(list) = scopes else {
            return scan::IN_ALL;
        };
        if list.get_ref().is_empty() {
            self.errors.at(
                source,
                list.span(),
                "in = [] looks nowhere: use some of \"content\", \"name\", \"symlink\", \"xattr\", \
                 or leave `in` out for all four",
            );
        }
        list.get_ref()
            .iter()
            .map(|s| match s.get_ref() {
                Scope::Content => scan::IN_CONTENT,
                Scope::Name => scan::IN_NAME,
                Scope::Symlink => scan::IN_SYMLINK,
                Scope::Xattr => scan::IN_XATTR,
            })
            .fold(0, |a, b| a | b)
    }

    fn identity_entry(&mut self, source: &Source, uid: &Str, agent: &Str) {
        let Ok(n) = uid.get_ref().parse::<u32>() else {
            self.errors.at(
                source,
                uid.span(),
                format!(
                    "[identity] keys are numeric uids (e.g. 1001 = \"alice\"), not {:?}",
                    uid.get_ref()
                ),
            );
            return;
        };
        if let Err(msg) = check_agent(agent.get_ref()) {
            self.errors.at(source, agent.span(), msg);
            return;
        }
        let (line, _) = source.line_col(uid.span().start);
        let here = format!("{}:{line}", source.name);
        match self.identity.get(&n) {
            Some((a, _)) if **a == **agent.get_ref() => {}
            Some((a, at)) => self.errors.at(
                source,
                uid.span(),
                format!("uid {n} is already mapped to agent `{a}` at {at}"),
            ),
            None => {
                self.identity
                    .insert(n, (Arc::from(agent.get_ref().as_str()), here));
            }
        }
    }

    /// Builds the glob set and the content regex; `None` on error (reported).
    pub(crate) fn finish(
        &mut self,
        sources: &[&Source],
        errors: &mut Errors,
    ) -> Option<(PathRules, ContentRules)> {
        let mut b = PathRulesBuilder::default();
        for (rule, effect, globs) in std::mem::take(&mut self.paths) {
            if let Err(msg) = b.add(rule, effect, &globs) {
                let r = &self.rules[rule];
                errors.list.push(crate::diag::Diagnostic {
                    file: r.file.to_string(),
                    line: r.line,
                    col: 1,
                    message: format!("rule `{}`: {msg}", r.name),
                });
            }
        }
        let paths = match b.build() {
            Ok(p) => Some(p),
            Err(msg) => {
                errors.list.push(crate::diag::Diagnostic {
                    file: sources
                        .last()
                        .map_or(BUILTIN_NAME.into(), |s| s.name.clone()),
                    line: 1,
                    col: 1,
                    message: format!("the path globs do not compile together: {msg}"),
                });
                None
            }
        };
        let (rules, hirs): (Vec<ContentRule>, Vec<_>) =
            std::mem::take(&mut self.content).into_iter().unzip();
        let content = match ContentRules::build(rules, &hirs) {
            Ok(c) => Some(c),
            Err(msg) => {
                errors.list.push(crate::diag::Diagnostic {
                    file: sources
                        .last()
                        .map_or(BUILTIN_NAME.into(), |s| s.name.clone()),
                    line: 1,
                    col: 1,
                    message: msg,
                });
                None
            }
        };
        Some((paths?, content?))
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
    if !ok {
        return Err(format!(
            "rule name {name:?} must be 1 to 128 characters of letters, digits, `.`, `_`, `:` \
             and `-`"
        ));
    }
    if RESERVED.contains(&name) {
        return Err(format!(
            "rule name `{name}` is reserved (it names a decision that is not a rule)"
        ));
    }
    Ok(())
}

fn check_agent(agent: &str) -> Result<(), String> {
    if agent.is_empty() || agent.contains(['/', '\0']) || agent == "." || agent == ".." {
        return Err(format!("{agent:?} is not a valid agent name"));
    }
    if agent == "sys" {
        return Err("\"sys\" is reserved and is not an agent".into());
    }
    Ok(())
}

fn list(v: &List<String>) -> String {
    let items: Vec<String> = v
        .get_ref()
        .iter()
        .map(|s| toml_string(s.get_ref()))
        .collect();
    format!("[{}]", items.join(", "))
}

fn ops_text(ops: Option<&List<PathOp>>) -> String {
    let names: Vec<&str> = match ops {
        None => vec!["create", "write", "delete"],
        Some(l) => l
            .get_ref()
            .iter()
            .map(|o| match o.get_ref() {
                PathOp::Create => "create",
                PathOp::Write => "write",
                PathOp::Delete => "delete",
            })
            .collect(),
    };
    let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

fn scopes_text(s: Scopes) -> String {
    let mut v = Vec::new();
    for (bit, name) in [
        (scan::IN_CONTENT, "content"),
        (scan::IN_NAME, "name"),
        (scan::IN_SYMLINK, "symlink"),
        (scan::IN_XATTR, "xattr"),
    ] {
        if s & bit != 0 {
            v.push(format!("{name:?}"));
        }
    }
    format!("[{}]", v.join(", "))
}

fn types_text(t: TypeBits) -> String {
    let mut v = Vec::new();
    for (bit, name) in [
        (T_SYMLINK, "symlink"),
        (T_HARDLINK, "hardlink"),
        (T_SPECIAL, "special"),
        (T_XATTR, "xattr"),
        (T_EXEC, "exec"),
    ] {
        if t & bit != 0 {
            v.push(format!("{name:?}"));
        }
    }
    format!("[{}]", v.join(", "))
}

fn limit_text(l: &LimitRule) -> String {
    let mut v = Vec::new();
    if let Some(n) = l.max_file_size {
        v.push(format!("max_file_size = {n}"));
    }
    if let Some(n) = l.max_files {
        v.push(format!("max_files = {n}"));
    }
    let q: Vec<String> = ["working", "episodic", "semantic"]
        .iter()
        .zip(l.quota)
        .filter_map(|(c, n)| n.map(|n| format!("{c} = {n}")))
        .collect();
    if !q.is_empty() {
        v.push(format!("quota = {{ {} }}", q.join(", ")));
    }
    if let Some(n) = l.ops_per_sec {
        v.push(format!("write_ops_per_sec = {n}"));
    }
    if let Some(n) = l.bytes_per_sec {
        v.push(format!("write_bytes_per_sec = {n}"));
    }
    v.join(", ")
}
