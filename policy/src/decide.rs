//! Deciding one call: every rule kind adds its findings, then the strictest wins.
//!
//! Semantics: default deny (a path right needs an `allow` rule), any matching forbid wins
//! over any allow, rule order never matters (the deciding rule among equally strict ones is
//! the one with the smallest name).

use std::sync::Arc;

use crate::call::{Action, Call, Content, FileKind, Finding, SizeChange, Verdict};
use crate::compile::{RuleKind, Ruleset};
use crate::diag::show;
use crate::limits::{
    self, Bucket, Class, RateState, T_EXEC, T_HARDLINK, T_SPECIAL, T_SYMLINK, T_XATTR,
};
use crate::paths::{self, right_name, Effect, Rights};
use crate::scan::{self, Scopes};
use crate::{Decision, Op};

impl Ruleset {
    /// Decides `call` against these rules. Pure and allocation-free when the call is
    /// allowed with no audit finding.
    pub fn decide(&self, call: &Call<'_>) -> Verdict {
        let mut found: Vec<Finding> = Vec::new();
        let allowed_by = self.check_paths(call, &mut found);
        self.check_types(call, &mut found);
        self.check_limits(call, &mut found);
        self.check_content(call, &mut found);
        self.verdict(found, allowed_by)
    }

    /// [`Ruleset::decide`], then the write-rate limits: a call that is allowed takes one op
    /// and its written bytes from each of the agent's rate buckets in `rate`. `now_ns` is a
    /// monotonic clock in nanoseconds. A refused call takes nothing.
    pub fn decide_rated(&self, call: &Call<'_>, rate: &mut RateState, now_ns: u64) -> Verdict {
        self.rate(call, self.decide(call), rate, now_ns)
    }

    /// The write-rate limits applied to `v`, the verdict [`Ruleset::decide`] gave for
    /// `call`: what [`Ruleset::decide_rated`] does after deciding. For a change decided in
    /// pieces, `call` is the whole change (its `changed` range is what is charged).
    pub fn rate(&self, call: &Call<'_>, v: Verdict, rate: &mut RateState, now_ns: u64) -> Verdict {
        if !v.is_allowed() || !self.has_rates {
            return v;
        }
        self.sync_buckets(call.agent, rate, now_ns);
        let bytes = written_bytes(call);
        let mut found = Vec::new();
        for b in rate.buckets.iter_mut() {
            let l = &self.limits[b.limit];
            limits::refill(b, l, now_ns);
            if let Err(why) = limits::admits(b, l, bytes) {
                let meta = &self.rules[l.rule];
                found.push(Finding {
                    rule: meta.name.clone(),
                    action: meta.action,
                    reason: format!("{} wrote {why}", call.agent),
                });
            }
        }
        if found.iter().any(|f| f.action != Action::Audit) {
            found.extend(v.audited);
            return self.verdict(found, v.allowed_by);
        }
        for b in rate.buckets.iter_mut() {
            limits::charge(b, &self.limits[b.limit], bytes);
        }
        let mut v = v;
        if !found.is_empty() {
            v.audited.extend(found);
            v.audited
                .sort_by(|a, b| (&a.rule, &a.reason).cmp(&(&b.rule, &b.reason)));
            v.audited.dedup_by(|a, b| a.rule == b.rule);
        }
        v
    }

    fn sync_buckets(&self, agent: &str, rate: &mut RateState, now_ns: u64) {
        if rate.version == Some(self.version) {
            return;
        }
        let old = std::mem::take(&mut rate.buckets);
        for (i, l) in self.limits.iter().enumerate() {
            let meta = &self.rules[l.rule];
            if !l.has_rate() || !meta.agents.applies(agent) {
                continue;
            }
            let cap_ops = l.ops_per_sec.unwrap_or(0) as f64;
            let cap_bytes = l.bytes_per_sec.unwrap_or(0) as f64;
            let bucket = match old.iter().find(|b| b.name == meta.name) {
                Some(b) => Bucket {
                    name: meta.name.clone(),
                    limit: i,
                    ops: b.ops.min(cap_ops),
                    bytes: b.bytes.min(cap_bytes),
                    last_ns: b.last_ns,
                },
                None => Bucket {
                    name: meta.name.clone(),
                    limit: i,
                    ops: cap_ops,
                    bytes: cap_bytes,
                    last_ns: now_ns,
                },
            };
            rate.buckets.push(bucket);
        }
        rate.version = Some(self.version);
    }

    /// The strictest finding decides; audit findings are listed.
    pub(crate) fn verdict(&self, mut found: Vec<Finding>, allowed_by: Option<Arc<str>>) -> Verdict {
        if found.is_empty() {
            return Verdict {
                decision: Decision::Allow,
                reason: None,
                allowed_by,
                audited: found,
                version: self.version,
            };
        }
        found.sort_by(|a, b| (&a.rule, a.action, &a.reason).cmp(&(&b.rule, b.action, &b.reason)));
        found.dedup_by(|a, b| a.rule == b.rule && a.action == b.action);
        let decisive = found
            .iter()
            .filter(|f| f.action != Action::Audit)
            .max_by(|a, b| a.action.cmp(&b.action).then_with(|| b.rule.cmp(&a.rule)))
            .cloned();
        let audited: Vec<Finding> = found
            .into_iter()
            .filter(|f| f.action == Action::Audit)
            .collect();
        let (decision, reason) = match decisive {
            None => (Decision::Allow, None),
            Some(f) => {
                let rule = f.rule.to_string();
                let d = match f.action {
                    Action::Kill => Decision::Kill { rule },
                    _ => Decision::Deny { rule },
                };
                (d, Some(f.reason))
            }
        };
        Verdict {
            decision,
            reason,
            allowed_by,
            audited,
            version: self.version,
        }
    }

    fn finding(&self, rule: usize, reason: String) -> Finding {
        let meta = &self.rules[rule];
        Finding {
            rule: meta.name.clone(),
            action: meta.action,
            reason,
        }
    }

    fn default_deny(&self, reason: String) -> Finding {
        Finding {
            rule: self.default_rule.clone(),
            action: self.default_action,
            reason,
        }
    }

    // ---- path rules -------------------------------------------------------------------

    /// Checks the path rights the call needs; returns the granting rule of the first one.
    fn check_paths(&self, call: &Call<'_>, found: &mut Vec<Finding>) -> Option<Arc<str>> {
        let (first, second) = match call.op {
            Op::RegisterAgent => return None,
            Op::Create | Op::Mknod | Op::Mkdir | Op::Symlink => ((call.path, paths::CREATE), None),
            Op::Unlink | Op::Rmdir => ((call.path, paths::DELETE), None),
            Op::Write => {
                let append = match (&call.content, call.size) {
                    (Some(c), Some(s)) => c.changed.start >= s.before,
                    _ => false,
                };
                let r = if append {
                    paths::APPEND
                } else {
                    paths::OVERWRITE
                };
                ((call.path, r), None)
            }
            Op::Truncate => {
                let noop = call.size.is_some_and(|s| s.before == s.after);
                let mut r = if noop { paths::TOUCH } else { paths::TRUNCATE };
                if call.mode.is_some() || call.chown {
                    r |= paths::CHMOD;
                }
                ((call.path, r), None)
            }
            Op::SetAttr => {
                let r = if call.mode.is_some() || call.chown {
                    paths::CHMOD
                } else {
                    paths::TOUCH
                };
                ((call.path, r), None)
            }
            Op::SetXattr | Op::RemoveXattr => ((call.path, paths::XATTR), None),
            Op::Link | Op::Rename => {
                let Some(target) = call.target else {
                    found.push(Finding {
                        rule: self.invalid_rule.clone(),
                        action: Action::Deny,
                        reason: format!("{} without a target path", call.op),
                    });
                    return None;
                };
                self.check_move(call, target, found);
                if call.op == Op::Link {
                    ((target, paths::CREATE), None)
                } else {
                    let dst = if call.replaces {
                        paths::CREATE | paths::DELETE
                    } else {
                        paths::CREATE
                    };
                    ((call.path, paths::DELETE), Some((target, dst)))
                }
            }
        };
        let allowed_by = self.check_right(call, first.0, first.1, found);
        if let Some((p, r)) = second {
            self.check_right(call, p, r, found);
        }
        allowed_by
    }

    /// Adds a finding for every forbid rule on `path` covering `want`, and a default-deny
    /// finding if no grant covers it. Returns the granting rule (smallest name).
    fn check_right(
        &self,
        call: &Call<'_>,
        path: &[u8],
        want: Rights,
        found: &mut Vec<Finding>,
    ) -> Option<Arc<str>> {
        let mut granted: Rights = 0;
        let mut best: Option<&Arc<str>> = None;
        self.paths.for_each_match(path, |_, r| {
            let meta = &self.rules[r.rule];
            if !meta.agents.applies(call.agent) {
                return;
            }
            match r.effect {
                Effect::Grant(g) => {
                    granted |= g;
                    if g & want == want && best.is_none_or(|b| meta.name < *b) {
                        best = Some(&meta.name);
                    }
                }
                Effect::Forbid(f) if f & want != 0 => {
                    let what = right_name(f & want);
                    let reason = match meta.kind {
                        RuleKind::ReadOnly => format!("{} is read-only ({what})", show(path)),
                        RuleKind::AppendOnly => {
                            format!("{} is append-only ({what})", show(path))
                        }
                        _ => format!("{what} of {} is denied", show(path)),
                    };
                    found.push(self.finding(r.rule, reason));
                }
                Effect::Forbid(_) => {}
            }
        });
        let missing = want & !granted;
        if missing != 0 {
            found.push(self.default_deny(format!(
                "no allow rule grants {} on {}",
                right_name(missing),
                show(path)
            )));
        }
        best.cloned()
    }

    /// The rights `agent` has on `path`: granted minus forbidden.
    fn rights_at(&self, agent: &str, path: &[u8]) -> Rights {
        let (mut granted, mut forbidden) = (0, 0);
        self.paths.for_each_match(path, |_, r| {
            if self.rules[r.rule].agents.applies(agent) {
                match r.effect {
                    Effect::Grant(g) => granted |= g,
                    Effect::Forbid(f) => forbidden |= f,
                }
            }
        });
        granted & !forbidden
    }

    /// Rename and link never change the rights on an existing object (like Landlock's
    /// REFER): a file's rules would otherwise not follow every name it has. For a
    /// directory, that holds for everything below it too.
    fn check_move(&self, call: &Call<'_>, target: &[u8], found: &mut Vec<Finding>) {
        let (src, dst) = (call.path, target);
        let verb = if call.op == Op::Link {
            "linking"
        } else {
            "renaming"
        };
        let from = self.rights_at(call.agent, src);
        let to = self.rights_at(call.agent, dst);
        if from != to {
            let reason = format!(
                "{verb} {} to {} would change its rights ({} → {})",
                show(src),
                show(dst),
                rights_text(from),
                rights_text(to)
            );
            found.push(self.blame_move(call.agent, src, dst, reason));
        }
        let maybe_dir =
            call.op == Op::Rename && !matches!(call.kind, Some(k) if k != FileKind::Dir);
        if !maybe_dir {
            return;
        }
        for (i, r) in self.paths.rules.iter().enumerate() {
            let meta = &self.rules[r.rule];
            if !meta.agents.applies(call.agent) {
                continue;
            }
            if self.paths.state_below(i, src) != self.paths.state_below(i, dst) {
                let reason = format!(
                    "renaming directory {} to {} would change what rule `{}` says about the \
                     paths below it",
                    show(src),
                    show(dst),
                    meta.name
                );
                found.push(match r.effect {
                    Effect::Forbid(_) => self.finding(r.rule, reason),
                    Effect::Grant(_) => self.default_deny(reason),
                });
            }
        }
    }

    /// The forbid rule (smallest name) matching exactly one of `src` and `dst`, else the
    /// default deny.
    fn blame_move(&self, agent: &str, src: &[u8], dst: &[u8], reason: String) -> Finding {
        let mut at_src = Vec::new();
        let mut at_dst = Vec::new();
        self.paths.for_each_match(src, |i, _| at_src.push(i));
        self.paths.for_each_match(dst, |i, _| at_dst.push(i));
        let culprit = self
            .paths
            .rules
            .iter()
            .enumerate()
            .filter(|(i, r)| {
                matches!(r.effect, Effect::Forbid(_))
                    && self.rules[r.rule].agents.applies(agent)
                    && at_src.contains(i) != at_dst.contains(i)
            })
            .map(|(_, r)| r.rule)
            .min_by(|a, b| self.rules[*a].name.cmp(&self.rules[*b].name));
        match culprit {
            Some(rule) => self.finding(rule, reason),
            None => self.default_deny(reason),
        }
    }

    // ---- file types -------------------------------------------------------------------

    fn check_types(&self, call: &Call<'_>, found: &mut Vec<Finding>) {
        if self.types.is_empty() {
            return;
        }
        let exec_bits = |m: Option<u32>| m.is_some_and(|m| m & 0o111 != 0);
        let not_dir = !matches!(call.kind, Some(FileKind::Dir | FileKind::Symlink));
        let mut asked = 0;
        match call.op {
            Op::Symlink => asked |= T_SYMLINK,
            Op::Link => asked |= T_HARDLINK,
            Op::Mknod => asked |= T_SPECIAL,
            Op::Create if call.kind.is_some_and(FileKind::is_special) => asked |= T_SPECIAL,
            Op::SetXattr => asked |= T_XATTR,
            _ => {}
        }
        let exec = match call.op {
            Op::Create => {
                not_dir && exec_bits(call.mode) && !call.kind.is_some_and(FileKind::is_special)
            }
            Op::SetAttr | Op::Truncate => not_dir && exec_bits(call.mode),
            _ => false,
        };
        if exec {
            asked |= T_EXEC;
        }
        if asked == 0 {
            return;
        }
        for t in &self.types {
            let hit = t.forbid & asked;
            if hit == 0 || !self.rules[t.rule].agents.applies(call.agent) {
                continue;
            }
            let what = match hit {
                _ if hit & T_SPECIAL != 0 => "creating a special file (FIFO, socket, device)",
                _ if hit & T_SYMLINK != 0 => "creating a symlink",
                _ if hit & T_HARDLINK != 0 => "creating a hard link",
                _ if hit & T_XATTR != 0 => "setting an xattr",
                _ => "making a file executable",
            };
            found.push(self.finding(t.rule, format!("{what} ({}) is forbidden", show(call.path))));
        }
    }

    // ---- limits -----------------------------------------------------------------------

    fn check_limits(&self, call: &Call<'_>, found: &mut Vec<Finding>) {
        if self.limits.is_empty() {
            return;
        }
        let size = match call.op {
            Op::Write | Op::Truncate => call.size.or_else(|| {
                call.content.as_ref().map(|c| SizeChange {
                    before: 0,
                    after: c.file_size,
                })
            }),
            _ => None,
        };
        let class_path = match call.op {
            Op::Link | Op::Rename => call.target.unwrap_or(call.path),
            _ => call.path,
        };
        let class = Class::of(class_path);
        for l in &self.limits {
            if !self.rules[l.rule].agents.applies(call.agent) {
                continue;
            }
            if let (Some(max), Some(s)) = (l.max_file_size, size) {
                if s.after > max && s.after > s.before {
                    found.push(self.finding(
                        l.rule,
                        format!(
                            "{} would be {} bytes, over max_file_size {max}",
                            show(call.path),
                            s.after
                        ),
                    ));
                }
            }
            let Some(u) = call.usage else { continue };
            if let (Some(max), Some(class)) = (class.and_then(|c| l.quota[c as usize]), class) {
                let (b, a) = (u.before.class_bytes, u.after.class_bytes);
                if a > max && a > b {
                    found.push(self.finding(
                        l.rule,
                        format!(
                            "{} would hold {a} bytes in {} memory, over its quota {max}",
                            call.agent,
                            class.name()
                        ),
                    ));
                }
            }
            if let Some(max) = l.max_files {
                let (b, a) = (u.before.files, u.after.files);
                if a > max && a > b {
                    found.push(self.finding(
                        l.rule,
                        format!("{} would have {a} files, over max_files {max}", call.agent),
                    ));
                }
            }
        }
    }

    // ---- content ----------------------------------------------------------------------

    /// The content rules (of `agent`) matching the part of a file a change can affect: the
    /// scan [`Ruleset::decide`] runs for a write or truncate, on its own (for example for
    /// bytes that arrive by another path than `write`). Empty when nothing matches; a
    /// `content-window` finding (action deny) when `content` does not cover the window.
    pub fn scan_content(&self, agent: &str, path: &[u8], content: &Content<'_>) -> Vec<Finding> {
        let call = Call {
            content: Some(content.clone()),
            ..Call::new(agent, Op::Write, path)
        };
        let mut found = Vec::new();
        self.check_content(&call, &mut found);
        found
    }

    fn check_content(&self, call: &Call<'_>, found: &mut Vec<Finding>) {
        if self.content.rules.is_empty() {
            return;
        }
        let last = |p: &'_ [u8]| -> Vec<u8> {
            p.rsplit(|b| *b == b'/').next().unwrap_or_default().to_vec()
        };
        match call.op {
            Op::Write | Op::Truncate => match &call.content {
                Some(c) => match self.content.scan_window(c) {
                    Ok(hits) => self.content_hits(call, scan::IN_CONTENT, hits, found),
                    Err(inc) => found.push(Finding {
                        rule: self.window_rule.clone(),
                        action: Action::Deny,
                        reason: format!(
                            "the core passed bytes [{}, {}) of {}, but the content rules need \
                             [{}, {})",
                            inc.have.0,
                            inc.have.1,
                            show(call.path),
                            inc.need.0,
                            inc.need.1
                        ),
                    }),
                },
                None => {
                    if let (Op::Write, Some(d)) = (call.op, call.data) {
                        let hits = self.content.scan_value(scan::IN_CONTENT, d);
                        self.content_hits(call, scan::IN_CONTENT, hits, found);
                    }
                }
            },
            Op::Create | Op::Mknod | Op::Mkdir => self.scan_name(call, &last(call.path), found),
            Op::Symlink => {
                self.scan_name(call, &last(call.path), found);
                if let Some(d) = call.data {
                    let hits = self.content.scan_value(scan::IN_SYMLINK, d);
                    self.content_hits(call, scan::IN_SYMLINK, hits, found);
                }
            }
            Op::Link | Op::Rename => {
                let p = call.target.unwrap_or(call.path);
                self.scan_name(call, &last(p), found);
            }
            Op::SetXattr => {
                for v in [call.xattr_name, call.data].into_iter().flatten() {
                    let hits = self.content.scan_value(scan::IN_XATTR, v);
                    self.content_hits(call, scan::IN_XATTR, hits, found);
                }
            }
            Op::RegisterAgent => self.scan_name(call, call.agent.as_bytes(), found),
            Op::Unlink | Op::Rmdir | Op::SetAttr | Op::RemoveXattr => {}
        }
    }

    /// Whether a quota or `max_files` limit applies to `agent`: the core then decides that
    /// agent's calls one at a time, so that concurrent calls cannot each pass a limit only
    /// one of them fits.
    pub fn has_usage_limits(&self, agent: &str) -> bool {
        self.limits.iter().any(|l| {
            (l.max_files.is_some() || l.quota.iter().any(Option::is_some))
                && self.rules[l.rule].agents.applies(agent)
        })
    }

    /// Whether `bytes` hold a match of any content rule, whatever its scope and agents. The
    /// core redacts such bytes (a refused file name) from what it records and logs.
    pub fn holds_forbidden(&self, bytes: &[u8]) -> bool {
        !self.content.scan_value(scan::IN_ALL, bytes).is_empty()
    }

    fn scan_name(&self, call: &Call<'_>, name: &[u8], found: &mut Vec<Finding>) {
        let hits = self.content.scan_value(scan::IN_NAME, name);
        self.content_hits(call, scan::IN_NAME, hits, found);
    }

    /// Findings for content hits that apply to the agent. The reason never quotes the
    /// matched bytes: they are what must not leak.
    fn content_hits(
        &self,
        call: &Call<'_>,
        scope: Scopes,
        hits: Vec<usize>,
        found: &mut Vec<Finding>,
    ) {
        for i in hits {
            let rule = self.content.rules[i].rule;
            if self.rules[rule].agents.applies(call.agent) {
                let what = scan::scope_name(scope);
                let reason = if scope == scan::IN_NAME {
                    format!("{what} in a {} call matches a forbidden pattern", call.op)
                } else {
                    format!("{what} of {} matches a forbidden pattern", show(call.path))
                };
                found.push(self.finding(rule, reason));
            }
        }
    }
}

/// Bytes a call writes, for the bytes/s rate.
fn written_bytes(call: &Call<'_>) -> u64 {
    if call.op != Op::Write {
        return 0;
    }
    match (call.data, &call.content) {
        (Some(d), _) => d.len() as u64,
        (None, Some(c)) => c.changed.end.saturating_sub(c.changed.start),
        (None, None) => 0,
    }
}

fn rights_text(r: Rights) -> String {
    if r == 0 {
        return "none".into();
    }
    let mut v = Vec::new();
    if r & paths::CREATE != 0 {
        v.push("create");
    }
    if r & paths::WRITE == paths::WRITE {
        v.push("write");
    } else if r & paths::WRITE != 0 {
        if r & paths::APPEND != 0 {
            v.push("append");
        }
        if r & paths::OVERWRITE != 0 {
            v.push("overwrite");
        }
        if r & paths::TOUCH != 0 {
            v.push("set times");
        }
    }
    if r & paths::DELETE != 0 {
        v.push("delete");
    }
    v.join(", ")
}
