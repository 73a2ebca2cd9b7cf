//! Content rules: regexes that must never appear in a file, a name, a symlink target or an
//! xattr. All of them are one multi-pattern regex; a write is scanned only in the window it
//! can affect, which is exact because every rule has a bounded match length.
//!
//! # Why the window is exact
//!
//! Let `L` be the longest match any rule can have and `K` = [`LOOK_AROUND`] the most bytes
//! a look-around assertion (`\b`, `^`, `$`, ...) inspects on either side of a position (one
//! UTF-8 character). Suppose the file held no match before the call, and the call changed
//! the bytes in `[s, e)` (for a shrinking truncate, `s = e` = the new size). Any match
//! `[ms, me)` in the new file that does not exist in the old one must depend on a changed
//! byte: its bytes or the `K` bytes around it (or the end of file, for `\z`) touch `[s, e)`.
//! So `ms - K < e` and `me + K > s`, and with `me - ms <= L` the whole match lies in
//! `[s - L - K, e + L + K)`. We search exactly that range, with look-around seeing `K` real
//! bytes beyond it, so the core passes `[s - W, e + W)` with `W = L + 2K`
//! ([`crate::Ruleset::window`]). A match anywhere in the range is reported, so the scan
//! finds exactly what a full rescan of the new file finds.

use std::sync::Arc;

use regex_automata::meta::{self, Regex};
use regex_automata::util::syntax;
use regex_automata::{Input, MatchKind, PatternSet};
use regex_syntax::hir::literal::{ExtractKind, Extractor};
use regex_syntax::hir::Hir;

use crate::call::Content;
use crate::prefilter::{self, anchor_literals, Prefilter};

/// Bytes a look-around assertion may inspect on each side of a position: one UTF-8
/// character.
pub const LOOK_AROUND: usize = 4;

/// The longest match a content rule may have. A longer bound would make every small write
/// rescan too much; such a rule is refused at load.
pub const MAX_MATCH_LEN_CAP: usize = 64 * 1024;

/// Where a content rule looks, one bit each.
pub(crate) type Scopes = u8;
pub(crate) const IN_CONTENT: Scopes = 1;
pub(crate) const IN_NAME: Scopes = 2;
pub(crate) const IN_SYMLINK: Scopes = 4;
pub(crate) const IN_XATTR: Scopes = 8;
pub(crate) const IN_ALL: Scopes = IN_CONTENT | IN_NAME | IN_SYMLINK | IN_XATTR;

pub(crate) fn scope_name(s: Scopes) -> &'static str {
    match s {
        IN_CONTENT => "the file content",
        IN_NAME => "a name",
        IN_SYMLINK => "a symlink target",
        _ => "an xattr",
    }
}

/// One content regex, parsed and measured.
pub(crate) struct Pattern {
    pub hir: Hir,
    pub max_len: usize,
}

fn syntax_config() -> syntax::Config {
    // Bytes, not text: patterns may match invalid UTF-8 with (?-u:...), and file content
    // need not be UTF-8. Unicode classes and case folding stay available.
    syntax::Config::new().utf8(false)
}

/// Why a regex was refused: the byte offset in the pattern, when there is one, and one
/// sentence.
#[derive(Debug)]
pub(crate) struct Refused {
    pub offset: Option<usize>,
    pub message: String,
}

impl From<&str> for Refused {
    fn from(message: &str) -> Refused {
        Refused {
            offset: None,
            message: message.to_string(),
        }
    }
}

/// Parses `regex` and computes its maximum match length.
pub(crate) fn measure(regex: &str) -> Result<Pattern, Refused> {
    let hir = regex_syntax::ParserBuilder::new()
        .utf8(false)
        .build()
        .parse(regex)
        .map_err(|e| {
            let (span, kind) = match &e {
                regex_syntax::Error::Parse(e) => (Some(*e.span()), e.kind().to_string()),
                regex_syntax::Error::Translate(e) => (Some(*e.span()), e.kind().to_string()),
                other => (None, other.to_string()),
            };
            Refused {
                offset: span.map(|s| s.start.offset),
                message: match span {
                    Some(s) => format!("invalid regex at character {}: {kind}", s.start.column),
                    None => format!("invalid regex: {kind}"),
                },
            }
        })?;
    let props = hir.properties();
    if props.minimum_len() == Some(0) {
        return Err("the regex matches the empty string, so it would match everywhere".into());
    }
    let Some(max_len) = props.maximum_len() else {
        return Err(
            "the regex has no maximum match length (an unbounded repetition such as `.*`, \
             `+` or `{n,}`), so a write could not be checked by a bounded window; bound it, \
             e.g. `.{0,200}` instead of `.*` and `[a-z]{1,64}` instead of `[a-z]+`"
                .into(),
        );
    };
    if max_len > MAX_MATCH_LEN_CAP {
        return Err(Refused {
            offset: None,
            message: format!(
                "the regex can match up to {max_len} bytes; the limit is {MAX_MATCH_LEN_CAP} \
                 (64 KiB), so bound its repetitions more tightly"
            ),
        });
    }
    Ok(Pattern { hir, max_len })
}

pub(crate) struct ContentRule {
    /// Index into `Ruleset::rules`.
    pub rule: usize,
    pub scopes: Scopes,
    pub max_len: usize,
}

/// Rules scanned together: one multi-pattern regex per group. One regex for every rule
/// would lose the literal prefilter once the rules' prefix literals number in the hundreds
/// (0.1 GB/s instead of 1.5 GB/s on clean text, measured), so rules are packed into groups
/// of at most [`GROUP_LITERALS`] prefix literals; rules with no finite set of prefix
/// literals share one group.
struct Group {
    /// Leftmost-first: the fast "does anything match" question.
    any: Regex,
    /// All matches: which patterns match, asked only after `any` said yes.
    which: Regex,
    /// Pattern id → index into `ContentRules::rules`.
    members: Vec<usize>,
}

/// Prefix literals per group (see [`Group`]).
const GROUP_LITERALS: usize = 256;

impl Group {
    /// Adds the rules of this group that match in `input` to `hits`.
    fn hits(&self, input: &Input<'_>, hits: &mut Hits) {
        if !self.any.is_match(input.clone()) {
            return;
        }
        let mut set = PatternSet::new(self.which.pattern_len());
        self.which.which_overlapping_matches(input, &mut set);
        hits.extend(set.iter().map(|p| self.members[p.as_usize()]));
    }
}

/// Packs rules `of` into groups of at most [`GROUP_LITERALS`] prefix literals; rules with
/// no finite set of prefix literals share one group.
fn pack(hirs: &[Hir], of: &[usize]) -> Vec<Vec<usize>> {
    let mut packs: Vec<(usize, Vec<usize>)> = Vec::new();
    let mut unprefixed: Vec<usize> = Vec::new();
    for &i in of {
        let seq = Extractor::new().kind(ExtractKind::Prefix).extract(&hirs[i]);
        match seq.len() {
            Some(n) if seq.min_literal_len().is_some_and(|m| m > 0) => {
                match packs.iter_mut().find(|p| p.0 + n <= GROUP_LITERALS) {
                    Some(p) => {
                        p.0 += n;
                        p.1.push(i);
                    }
                    None => packs.push((n, vec![i])),
                }
            }
            _ => unprefixed.push(i),
        }
    }
    let mut members: Vec<Vec<usize>> = packs.into_iter().map(|p| p.1).collect();
    if !unprefixed.is_empty() {
        members.push(unprefixed);
    }
    members
}

pub(crate) struct ContentRules {
    pub rules: Vec<ContentRule>,
    /// Rules with no usable anchor literals, searched over the whole range.
    groups: Vec<Group>,
    /// Rules with anchor literals, searched only around them.
    anchored: Vec<Group>,
    prefilter: Option<Prefilter>,
    /// Longest match of a rule that looks at file content.
    pub max_len: usize,
    /// Whether some rule can match inside a run of zero bytes (see
    /// [`crate::Ruleset::zero_fill_can_match`]).
    pub zero_fill_matches: bool,
}

/// What a scan found: indices into `ContentRules::rules`.
pub(crate) type Hits = Vec<usize>;

/// The window bytes did not cover what the contract asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Incomplete {
    pub need: (u64, u64),
    pub have: (u64, u64),
}

impl ContentRules {
    pub fn empty() -> ContentRules {
        ContentRules {
            rules: Vec::new(),
            groups: Vec::new(),
            anchored: Vec::new(),
            prefilter: None,
            max_len: 0,
            zero_fill_matches: false,
        }
    }

    pub fn build(rules: Vec<ContentRule>, hirs: &[Hir]) -> Result<ContentRules, String> {
        if rules.is_empty() {
            return Ok(ContentRules::empty());
        }
        // Rules with anchor literals go behind the prefilter; the others are searched
        // everywhere, packed into groups by their prefix literals.
        let mut anchors = Vec::new();
        let (mut anchored, mut everywhere) = (Vec::new(), Vec::new());
        for (i, hir) in hirs.iter().enumerate() {
            match anchor_literals(hir) {
                Some(a) => {
                    anchors.push(a);
                    anchored.push(i);
                }
                None => everywhere.push(i),
            }
        }
        let prefilter = match anchored.iter().map(|&i| rules[i].max_len).max() {
            Some(longest) => Some(Prefilter::new(&prefilter::combine(&anchors), longest)?),
            None => None,
        };
        let build = |kind: MatchKind, of: &[usize]| {
            let hirs: Vec<&Hir> = of.iter().map(|&i| &hirs[i]).collect();
            Regex::builder()
                .syntax(syntax_config())
                .configure(
                    meta::Config::new()
                        .match_kind(kind)
                        .utf8_empty(false)
                        .nfa_size_limit(Some(256 << 20)),
                )
                .build_many_from_hir(&hirs)
                .map_err(|e| format!("the content rules are too large to compile: {e}"))
        };
        let groups_of = |members: Vec<Vec<usize>>| -> Result<Vec<Group>, String> {
            let mut groups = Vec::new();
            for m in members {
                groups.push(Group {
                    any: build(MatchKind::LeftmostFirst, &m)?,
                    which: build(MatchKind::All, &m)?,
                    members: m,
                });
            }
            Ok(groups)
        };
        // Packed like the others: when candidates are everywhere the anchored groups
        // search the whole range, and then their own prefilters matter.
        let anchored = groups_of(pack(hirs, &anchored))?;
        let groups = groups_of(pack(hirs, &everywhere))?;
        let max_len = rules
            .iter()
            .filter(|r| r.scopes & IN_CONTENT != 0)
            .map(|r| r.max_len)
            .max()
            .unwrap_or(0);
        let mut out = ContentRules {
            rules,
            groups,
            anchored,
            prefilter,
            max_len,
            zero_fill_matches: false,
        };
        out.zero_fill_matches = out.rules.iter().any(|r| r.scopes & IN_CONTENT != 0) && {
            // A run of zeros long enough for any match, searched away from its start (so
            // `\A` cannot help) and up to its end (so `\z` can): exactly the matches a zero
            // fill could create by itself.
            let zeros = vec![0u8; max_len + 2 * LOOK_AROUND];
            let input = Input::new(&zeros[..]).range(LOOK_AROUND..zeros.len());
            out.hits_in(IN_CONTENT, input)
                .into_iter()
                .any(|i| out.rules[i].scopes & IN_CONTENT != 0)
        };
        Ok(out)
    }

    /// Bytes the core passes on each side of a changed range.
    pub fn window(&self) -> usize {
        if self.max_len == 0 {
            0
        } else {
            self.max_len + 2 * LOOK_AROUND
        }
    }

    /// Rules with scope `scope` matching somewhere in `input` (any agent; the caller
    /// filters).
    fn hits_in(&self, scope: Scopes, input: Input<'_>) -> Hits {
        let mut hits = Vec::new();
        for g in &self.groups {
            g.hits(&input, &mut hits);
        }
        if let Some(p) = &self.prefilter {
            let range = input.get_range();
            let regions = p
                .regions(input.haystack(), range.clone())
                .unwrap_or_else(|| vec![range]);
            for region in regions {
                let input = input.clone().range(region);
                for g in &self.anchored {
                    g.hits(&input, &mut hits);
                }
            }
        }
        hits.retain(|&i| self.rules[i].scopes & scope != 0);
        hits.sort_unstable();
        hits.dedup();
        hits
    }

    /// Rules matching anywhere in a whole value (a name, a symlink target, an xattr).
    pub fn scan_value(&self, scope: Scopes, value: &[u8]) -> Hits {
        self.hits_in(scope, Input::new(value))
    }

    /// Rules matching in the part of a file a write can affect (see the module docs).
    pub fn scan_window(&self, c: &Content<'_>) -> Result<Hits, Incomplete> {
        if self.max_len == 0 {
            return Ok(Vec::new());
        }
        let reach = (self.max_len + LOOK_AROUND) as u64;
        let look = LOOK_AROUND as u64;
        let size = c.file_size;
        let have = (c.at, c.at.saturating_add(c.bytes.len() as u64));
        let start = c.changed.start.min(size);
        let end = c.changed.end.clamp(start, size.max(start));
        let lo = start.saturating_sub(reach);
        let hi = end.saturating_add(reach).min(size);
        let need = (lo.saturating_sub(look), hi.saturating_add(look).min(size));
        if c.changed.start > c.changed.end || have.0 > need.0 || have.1 < need.1 {
            return Err(Incomplete { need, have });
        }
        if lo >= hi {
            return Ok(Vec::new());
        }
        let range = (lo - c.at) as usize..(hi - c.at) as usize;
        Ok(self.hits_in(IN_CONTENT, Input::new(c.bytes).range(range)))
    }
}

/// Shared rule name for the window contract failure.
pub(crate) fn window_rule() -> Arc<str> {
    Arc::from("content-window")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_bounded_regexes() {
        assert_eq!(measure("AKIA[A-Z0-9]{16}").unwrap().max_len, 20);
        assert_eq!(measure(r"(?-u:\b)ab(?-u:\b)").unwrap().max_len, 2);
        // Case folding makes `k` match the 3-byte Kelvin sign.
        assert_eq!(measure("(?i)k").unwrap().max_len, 3);
    }

    #[test]
    fn refuses_unbounded_and_empty() {
        let e = measure("secret=.*").err().unwrap().message;
        assert!(e.contains("no maximum match length"), "{e}");
        assert!(e.contains(".{0,200}"), "{e}");
        assert!(measure("a+").is_err());
        assert!(measure("a{3,}").is_err());
        assert!(measure("a*")
            .err()
            .unwrap()
            .message
            .contains("empty string"));
        assert!(measure(r"\b").is_err());
        let e = measure("a{70000}").err().unwrap().message;
        assert!(e.contains("64 KiB"), "{e}");
        let e = measure("a(b").err().unwrap();
        assert!(
            e.message.starts_with("invalid regex at character 2"),
            "{e:?}"
        );
        assert_eq!(e.offset, Some(1));
    }
}

/// The prefiltered scan against a plain search of every rule on its own.
#[cfg(test)]
mod differential {
    use super::*;
    use proptest::prelude::*;

    const PATTERNS: &[&str] = &[
        r"(?-u:\b)(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{16}(?-u:\b)",
        r"(?i-u)aws_?secret_?(?:access_?)?key[\x22']?\s{0,5}(?:=|:|=>|:=)\s{0,5}[\x22']?[A-Za-z0-9/+]{40}",
        r"-----BEGIN (?:[A-Z0-9]{1,20} ){0,3}PRIVATE KEY(?: BLOCK)?-----",
        r"(?-u:\b)gh[pousr]_[A-Za-z0-9]{36}(?-u:\b)",
        r"(?-u:\b)xox[abeoprs]-[0-9A-Za-z]{1,40}-[0-9A-Za-z-]{8,160}",
        r"(?i-u)passw(?:or)?d[\x22']?(?:\s{0,5}(?:=|:|=>|:=)\s{0,5}[\x22'][^\x22'\s$%{<]{1}[^\x22'\s]{5,199}[\x22']|=[^\x22'\s$%{<]{1}[^\x22'\s;,]{5,199})",
        r"(?i-u)(?:api_?key|access_?token|auth_?token)[\x22']?(?:\s{0,5}(?:=|:|=>|:=)\s{0,5}[\x22'][^\x22'\s$%{<]{1}[^\x22'\s]{7,199}[\x22']|=[^\x22'\s$%{<]{1}[^\x22'\s;,]{7,199})",
        r"[a-z0-9-]{1,40}\.corp9\.example\.com",
        r"(?i)project[ _-]?nightjar19",
        r"(?i)kelvin",
        r"abc[0-9]{2}",
        r"bcd[a-z]{1,3}",
        r"[a-z]{3}[0-9]{3}",
        r"(?-u:\b)xyz(?-u:\b)",
        r"z{2,4}y",
        r"\bcat\b",
        // Literals holding `secret` (at offsets 3 and 1), which the prefilter leaves out.
        r"(?i)secret[0-9]{2,4}",
        r"(?i)my_secret_[0-9]{4}",
        r"[a-z]{1,6}\.secret\.example",
    ];

    const FRAGMENTS: &[&str] = &[
        "qbcz_1234",
        "QGAZ_0000x",
        "qgaz_12",
        "AKIAABCDEFGHIJKLMNOP",
        "akiaABCDEFGHIJKLMNOP",
        "xAKIAABCDEFGHIJKLMNOP",
        "AWS_SECRET_ACCESS_KEY = 'abcdefghijABCDEFGHIJ0123456789/+abcdefgh'",
        "-----BEGIN RSA PRIVATE KEY-----",
        "-----BEGIN PUBLIC KEY-----",
        "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
        "ghp_short",
        "xoxb-1234-abcdefgh",
        "PassWord='hunter2x'",
        "password=$HOME",
        "passwd=abcdef;",
        "API_KEY=abcdefgh12",
        "Auth_Token: \"abcdefghij\"",
        "host9.corp9.example.com",
        ".CORP9.example.com",
        "Project-NightJar19",
        "\u{212A}elvin",
        "KELVIN",
        "abc12",
        "ABC12",
        "bcdxy",
        "abcd",
        "qqq123",
        "xyz",
        "axyz",
        "zzzy",
        "zzzzzy",
        "cat",
        "cats",
        "acme7_live_AbC9",
        "ACME12_test_zzzz",
        "acme3_",
        "db.corp17.example.com",
        "x.corp2.EXAMPLE.com",
        "PROJECT nightjar29",
        "project-nightjar3",
        "projectnightjar",
        "corp",
        ".example.com",
        " ",
        "\n",
        "é",
        "the agent filed the notes and summarised the meeting for the storage team; ",
        "fn load(path: &Path) -> Result<Config, Error> { read(path) } // 2024-05-01 ",
        "\u{0}",
        "_",
        "-",
        "=",
        "'",
        "\"",
        "secret42",
        "SeCrEt7",
        "MY_SECRET_1234",
        "my_secret_12",
        "db.secret.example",
        "x.SECRET.example",
    ];

    /// The patterns above, and many similar rules whose literals the automaton must cut.
    fn many_patterns() -> Vec<String> {
        let mut out: Vec<String> = PATTERNS.iter().map(|p| p.to_string()).collect();
        for i in 0..30 {
            out.push(format!(r"(?-u:\b)acme{i}_(?:live|test)_[A-Za-z0-9]{{4}}"));
            out.push(format!(r"[a-z0-9-]{{1,10}}\.corp{i}\.example\.com"));
            out.push(format!(r"(?i-u)project[ _-]?nightjar{i}(?-u:\b)"));
        }
        out
    }

    /// The patterns above, and 56 rules with unrelated literals (`qaaz_`, `qabz_`…): more
    /// than `Caseless` takes, so long ranges are searched by Teddy on a folded copy.
    fn wide_patterns() -> Vec<String> {
        let mut out: Vec<String> = PATTERNS.iter().map(|p| p.to_string()).collect();
        for i in 0..56u8 {
            let (a, b) = (char::from(b'a' + i / 8), char::from(b'a' + i % 8));
            out.push(format!(r"(?i-u)q{a}{b}z_[0-9]{{4}}"));
        }
        out
    }

    type Built = (ContentRules, Vec<Regex>);

    fn rules() -> &'static Built {
        static RULES: std::sync::OnceLock<Built> = std::sync::OnceLock::new();
        RULES.get_or_init(|| build(PATTERNS.iter().map(|p| p.to_string()).collect()))
    }

    /// Rules with short matches only, so that regions are small and the search around
    /// candidates (not the whole-range fallback) is what runs.
    fn short_rules() -> &'static Built {
        static RULES: std::sync::OnceLock<Built> = std::sync::OnceLock::new();
        RULES.get_or_init(|| {
            build(
                many_patterns()
                    .into_iter()
                    .filter(|p| measure(p).unwrap().max_len < 40)
                    .collect(),
            )
        })
    }

    fn wide_rules() -> &'static Built {
        static RULES: std::sync::OnceLock<Built> = std::sync::OnceLock::new();
        RULES.get_or_init(|| build(wide_patterns()))
    }

    fn many_rules() -> &'static Built {
        static RULES: std::sync::OnceLock<Built> = std::sync::OnceLock::new();
        RULES.get_or_init(|| build(many_patterns()))
    }

    fn build(patterns: Vec<String>) -> Built {
        {
            let pats: Vec<Pattern> = patterns.iter().map(|p| measure(p).unwrap()).collect();
            let rules = pats
                .iter()
                .enumerate()
                .map(|(i, p)| ContentRule {
                    rule: i,
                    scopes: IN_ALL,
                    max_len: p.max_len,
                })
                .collect();
            let hirs: Vec<Hir> = pats.iter().map(|p| p.hir.clone()).collect();
            let plain = hirs
                .iter()
                .map(|h| {
                    Regex::builder()
                        .syntax(syntax_config())
                        .configure(meta::Config::new().utf8_empty(false))
                        .build_from_hir(h)
                        .unwrap()
                })
                .collect();
            (ContentRules::build(rules, &hirs).unwrap(), plain)
        }
    }

    fn haystack() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop_oneof![
                3 => prop::sample::select(FRAGMENTS).prop_map(|f| f.as_bytes().to_vec()),
                1 => prop::collection::vec(any::<u8>(), 0..8),
                1 => "[a-zA-Z0-9 ._-]{0,12}".prop_map(String::into_bytes),
            ],
            0..24,
        )
        .prop_map(|parts| parts.concat())
    }

    #[test]
    fn the_built_rules_use_the_prefilter() {
        for (r, _) in [rules(), many_rules(), short_rules(), wide_rules()] {
            assert!(r.prefilter.is_some());
            assert!(!r.anchored.is_empty());
        }
        assert!(
            !rules().0.groups.is_empty(),
            "some rules have no anchor literals"
        );
        // Cut to a few literals each (`acme`, `proj`, `.com`…), not 100 of them.
        let (many, _) = many_rules();
        let n = many.prefilter.as_ref().map_or(0, |p| p.literal_count());
        assert!(n <= 64, "{n} literals");
        // With AVX2 the proptest below covers both ways of searching long ranges.
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            let caseless: Vec<bool> = [rules(), many_rules(), short_rules(), wide_rules()]
                .iter()
                .filter_map(|(r, _)| r.prefilter.as_ref().map(|p| p.is_caseless()))
                .collect();
            assert!(
                caseless.contains(&true) && caseless.contains(&false),
                "{caseless:?}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]
        #[test]
        fn prefiltered_scan_finds_what_each_rule_finds(
            hay in haystack(),
            a in 0usize..400,
            b in 0usize..400,
            set in 0..4u8,
        ) {
            let (r, plain) = match set {
                0 => rules(),
                1 => many_rules(),
                2 => wide_rules(),
                _ => short_rules(),
            };
            let (lo, hi) = (a.min(b).min(hay.len()), a.max(b).min(hay.len()));
            let input = Input::new(&hay[..]).range(lo..hi);
            let got = r.hits_in(IN_ALL, input.clone());
            let want: Vec<usize> = (0..plain.len())
                .filter(|&i| plain[i].is_match(input.clone()))
                .collect();
            prop_assert_eq!(got, want, "{:?} in {}..{}", String::from_utf8_lossy(&hay), lo, hi);
        }
    }
}
