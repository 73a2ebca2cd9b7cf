//! A literal prefilter for content rules: most secrets begin (`AKIA`, `ghp_`, `-----BEGIN`)
//! or end (`.corp.example.com`) with one of a few literals, so a scan first looks for those
//! literals (with [`Caseless`], a SIMD search, or an Aho-Corasick automaton) and runs the
//! regexes only around what it finds.
//!
//! # Why nothing is missed
//!
//! For each rule we take a set of literals such that every match of the rule starts with
//! one of them (prefix set) or ends with one of them (suffix set), computed on the rule's
//! ASCII-case-folded form, and search the ASCII-case-folded haystack. Folding maps A–Z to
//! a–z and leaves every other byte (and every position) as it is, so a match `[ms, me)`
//! of the rule in the haystack is, folded, a match of the folded rule, which starts (ends)
//! with a folded literal: the automaton finds that literal at `ms` (ending at `me`).
//! [`Caseless`] compares the haystack's bytes with the literals' ignoring ASCII case,
//! which is the same test without the folded copy. The
//! scan enumerates every position where some literal starts and searches the regexes over
//! `[p - L, p + L)`, `L` being the longest match of any prefiltered rule, clipped to the
//! scanned range: a match with a prefix literal at `p` lies in `[p, p + L)`, one with a
//! suffix literal starting at `p` (of length at most `L`) in `[p + len - L, p + len)`.
//! The regexes search these sub-ranges of the real haystack, so look-around sees the real
//! neighbours: they find exactly the matches a search of the whole range finds.
//!
//! The argument needs only that every match of the rule *contains* the literal: a match
//! `[ms, me)` holding a literal at `p` has `ms <= p` and `p + len <= me <= ms + L`, so it
//! lies in `[p - L, p + L)`. Hence a literal containing another one (`sk-proj-` holds
//! `sk-`, `aws_secret_k` holds `secret`) adds nothing: wherever it occurs, the shorter one
//! occurs inside it, and [`Prefilter::new`] drops it.

use aho_corasick::{packed, AhoCorasick, MatchKind};
use regex_syntax::hir::literal::{ExtractKind, Extractor, Seq};
use regex_syntax::hir::{Class, ClassBytes, ClassBytesRange, ClassUnicode, ClassUnicodeRange};
use regex_syntax::hir::{Hir, HirKind};
use std::cell::RefCell;
use std::collections::HashMap;
use std::ops::{ControlFlow, Range};

use crate::caseless::Caseless;

/// Literals shorter than this would be found everywhere (`ap`, `ke`): such a rule is not
/// prefiltered.
const MIN_LITERAL_LEN: usize = 3;

/// At most this many literals in the automaton, so that it searches with Teddy (SIMD),
/// several GB/s; families of similar ones are merged until so few remain (see [`combine`]).
const MAX_LITERALS: usize = 64;

/// Literals sharing this many leading (trailing, for suffixes) bytes form a family that
/// [`combine`] may merge; at least [`MIN_LITERAL_LEN`], so merged literals stay usable.
const FAMILY_KEY: usize = 4;

/// At most this many distinct folded literals per rule: longer literals are cut until so
/// few remain. Few literals in all keep the automaton on its fastest (Teddy) search.
const MAX_LITERALS_PER_RULE: usize = 8;

/// The literals every match of a rule starts with, or ends with (`from_end`), folded to
/// lowercase ASCII.
pub(crate) struct Anchors {
    literals: Vec<Vec<u8>>,
    from_end: bool,
}

/// The anchor literals of `hir`; `None` when neither its prefixes nor its suffixes make a
/// finite set of long enough literals.
pub(crate) fn anchor_literals(hir: &Hir) -> Option<Anchors> {
    let folded = fold_hir(hir);
    let usable = |seq: Seq, from_end: bool| -> Option<Anchors> {
        let lits: Vec<&[u8]> = seq.literals()?.iter().map(|l| l.as_bytes()).collect();
        let literals = shrink(&lits, from_end, MAX_LITERALS_PER_RULE)?;
        Some(Anchors { literals, from_end })
    };
    let prefix = usable(
        Extractor::new().kind(ExtractKind::Prefix).extract(&folded),
        false,
    );
    let suffix = usable(
        Extractor::new().kind(ExtractKind::Suffix).extract(&folded),
        true,
    );
    // Fewer literals, then longer ones: fewer false candidates.
    let score = |a: &Anchors| {
        let shortest = a.literals.iter().map(Vec::len).min().unwrap_or(0);
        (a.literals.len(), usize::MAX - shortest)
    };
    match (prefix, suffix) {
        (Some(p), Some(s)) => Some(if score(&s) < score(&p) { s } else { p }),
        (p, s) => p.or(s),
    }
}

/// The literals of all rules for one automaton. While there are more than [`MAX_LITERALS`],
/// the largest family of literals sharing their first (for suffixes: last)
/// [`FAMILY_KEY`] bytes is replaced by its longest common prefix (suffix): `acme1_`,
/// `acme2_`… become `acme`, and `.corp1.example.com`, `.corp2.example.com`… become
/// `.example.com`, while unrelated literals keep their full length.
pub(crate) fn combine(rules: &[Anchors]) -> Vec<Vec<u8>> {
    let mut lits: Vec<(bool, Vec<u8>)> = rules
        .iter()
        .flat_map(|a| a.literals.iter().map(move |l| (a.from_end, l.clone())))
        .collect();
    lits.sort();
    lits.dedup();
    while lits.len() > MAX_LITERALS {
        let mut families: HashMap<(bool, Vec<u8>), Vec<usize>> = HashMap::new();
        for (i, (from_end, l)) in lits.iter().enumerate() {
            let key = cut(l, FAMILY_KEY, *from_end);
            families.entry((*from_end, key)).or_default().push(i);
        }
        let Some((&(from_end, _), members)) = families
            .iter()
            .filter(|(_, m)| m.len() > 1)
            .max_by_key(|(k, m)| (m.len(), &k.1))
        else {
            break;
        };
        let common = common_part(members.iter().map(|&i| lits[i].1.as_slice()), from_end);
        let members: Vec<usize> = members.clone();
        for i in members {
            lits[i].1 = common.clone();
        }
        lits.sort();
        lits.dedup();
    }
    let mut out: Vec<Vec<u8>> = lits.into_iter().map(|(_, l)| l).collect();
    out.sort();
    out.dedup();
    out
}

/// `literals` without those containing another one (see the module docs), deduplicated.
fn minimal(literals: &[Vec<u8>]) -> Vec<&[u8]> {
    let mut lits: Vec<&[u8]> = literals.iter().map(Vec::as_slice).collect();
    lits.sort_unstable();
    lits.dedup();
    // Shortest first: a literal can only contain one no longer than itself.
    lits.sort_by_key(|l| l.len());
    let mut kept: Vec<&[u8]> = Vec::new();
    for l in lits {
        if !kept.iter().any(|k| contains(l, k)) {
            kept.push(l);
        }
    }
    kept
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// `literals` ordered so that Teddy buckets alike ones together. Teddy flags a position
/// when its first bytes fit the nibble masks of some bucket, the union of its literals'
/// masks; a bucket of `acca`, `acme`, `access_` flags little more than one literal would,
/// while one of `acme`, `ghp_`, `xoxb-` flags much prose. aho-corasick puts literal `i`
/// in bucket `B - 1 - i % B` (`B` = 16 above 32 literals, else 8), so runs of the sorted
/// literals are spread to ids that share a bucket. Any order finds the same literals;
/// this one took the bench's 100-rule literals from 1.3–2.2 to 3.6–4.2 GB/s on clean text.
fn teddy_order(mut literals: Vec<&[u8]>) -> Vec<&[u8]> {
    literals.sort_unstable();
    let buckets = if literals.len() > 32 { 16 } else { 8 };
    let run = literals.len().div_ceil(buckets);
    let mut slots: Vec<Option<&[u8]>> = vec![None; run * buckets];
    for (k, l) in literals.into_iter().enumerate() {
        let (bucket, nth) = (k / run, k % run);
        slots[nth * buckets + buckets - 1 - bucket] = Some(l);
    }
    slots.into_iter().flatten().collect()
}

/// The longest common prefix of `lits` (suffix when `from_end`).
fn common_part<'a>(mut lits: impl Iterator<Item = &'a [u8]>, from_end: bool) -> Vec<u8> {
    let Some(first) = lits.next() else {
        return Vec::new();
    };
    let mut len = first.len();
    for l in lits {
        let same = if from_end {
            first
                .iter()
                .rev()
                .zip(l.iter().rev())
                .take_while(|(a, b)| a == b)
                .count()
        } else {
            first.iter().zip(l).take_while(|(a, b)| a == b).count()
        };
        len = len.min(same);
    }
    cut(first, len, from_end)
}

/// `l` cut to `k` bytes: its first `k`, or its last `k` when `from_end`.
fn cut(l: &[u8], k: usize, from_end: bool) -> Vec<u8> {
    match (l.len() > k, from_end) {
        (false, _) => l.to_vec(),
        (true, false) => l[..k].to_vec(),
        (true, true) => l[l.len() - k..].to_vec(),
    }
}

/// The literals cut to the longest length at which at most `max` distinct ones remain (a
/// prefix of a prefix is still one; `from_end`: suffixes, cut from the front); `None` if
/// that takes literals shorter than [`MIN_LITERAL_LEN`].
fn shrink(lits: &[&[u8]], from_end: bool, max: usize) -> Option<Vec<Vec<u8>>> {
    let longest = lits.iter().map(|l| l.len()).max()?;
    if lits.iter().any(|l| l.len() < MIN_LITERAL_LEN) {
        return None;
    }
    (MIN_LITERAL_LEN..=longest).rev().find_map(|k| {
        let mut out: Vec<Vec<u8>> = lits.iter().map(|l| cut(l, k, from_end)).collect();
        out.sort();
        out.dedup();
        (out.len() <= max).then_some(out)
    })
}

/// `hir` with every ASCII upper-case letter it can match replaced by its lower-case form.
fn fold_hir(hir: &Hir) -> Hir {
    match hir.kind() {
        HirKind::Empty => Hir::empty(),
        HirKind::Literal(lit) => Hir::literal(lit.0.to_ascii_lowercase()),
        HirKind::Class(Class::Bytes(c)) => Hir::class(Class::Bytes(fold_bytes(c))),
        HirKind::Class(Class::Unicode(c)) => Hir::class(Class::Unicode(fold_unicode(c))),
        HirKind::Look(look) => Hir::look(*look),
        HirKind::Repetition(rep) => {
            let mut rep = rep.clone();
            rep.sub = Box::new(fold_hir(&rep.sub));
            Hir::repetition(rep)
        }
        HirKind::Capture(cap) => fold_hir(&cap.sub),
        HirKind::Concat(subs) => Hir::concat(subs.iter().map(fold_hir).collect()),
        HirKind::Alternation(subs) => Hir::alternation(subs.iter().map(fold_hir).collect()),
    }
}

fn fold_bytes(c: &ClassBytes) -> ClassBytes {
    let upper = ClassBytes::new([ClassBytesRange::new(b'A', b'Z')]);
    let mut caps = c.clone();
    caps.intersect(&upper);
    let mut out = c.clone();
    out.difference(&upper);
    out.union(&ClassBytes::new(caps.iter().map(|r| {
        ClassBytesRange::new(r.start().to_ascii_lowercase(), r.end().to_ascii_lowercase())
    })));
    out
}

fn fold_unicode(c: &ClassUnicode) -> ClassUnicode {
    let upper = ClassUnicode::new([ClassUnicodeRange::new('A', 'Z')]);
    let mut caps = c.clone();
    caps.intersect(&upper);
    let mut out = c.clone();
    out.difference(&upper);
    out.union(&ClassUnicode::new(caps.iter().map(|r| {
        ClassUnicodeRange::new(r.start().to_ascii_lowercase(), r.end().to_ascii_lowercase())
    })));
    out
}

/// Below this many bytes a range is searched with [`Prefilter::whole`].
const SHORT_RANGE: usize = 48;

/// The automata over the anchor literals of every prefiltered rule.
pub(crate) struct Prefilter {
    /// The search of ranges of at least [`SHORT_RANGE`] bytes.
    long: LongSearch,
    /// The same literals for ranges shorter than [`SHORT_RANGE`] (names, symlink targets),
    /// where Teddy would fall back to Rabin-Karp.
    whole: Finder,
    /// Longest match of any prefiltered rule.
    max_len: usize,
    #[cfg(test)]
    literals: usize,
}

/// How ranges of at least [`SHORT_RANGE`] bytes are searched.
enum LongSearch {
    /// On the haystack itself, ASCII case ignored (AVX2).
    Caseless(Caseless),
    /// Teddy over the literals in [`teddy_order`], on a folded copy of the range.
    Folded(Finder),
}

/// Teddy when the CPU has it and the literals are at most 64, else a general automaton.
/// Not through [`AhoCorasick`], which would give Teddy the literals in its own order.
enum Finder {
    Packed(packed::Searcher),
    General(AhoCorasick),
}

impl Finder {
    fn new(literals: &[&[u8]]) -> Result<Finder, String> {
        let packed = packed::Config::new()
            .match_kind(packed::MatchKind::LeftmostFirst)
            .builder()
            .extend(literals)
            .build();
        if let Some(p) = packed {
            return Ok(Finder::Packed(p));
        }
        Finder::general(literals)
    }

    fn general(literals: &[&[u8]]) -> Result<Finder, String> {
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostFirst)
            .build(literals)
            .map_err(|e| format!("the content rules' literals do not compile: {e}"))?;
        Ok(Finder::General(automaton))
    }

    /// Where the leftmost literal at or after `from` starts.
    fn find_from(&self, haystack: &[u8], from: usize) -> Option<usize> {
        if from >= haystack.len() {
            return None;
        }
        let span = aho_corasick::Span::from(from..haystack.len());
        match self {
            Finder::Packed(p) => p.find_in(haystack, span).map(|m| m.start()),
            Finder::General(a) => a
                .find(aho_corasick::Input::new(haystack).span(span))
                .map(|m| m.start()),
        }
    }
}

thread_local! {
    /// The folded copy of the scanned range, reused across scans.
    static FOLDED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Appends `src` folded to ASCII lower case to `dst`. One pass, not a copy and then a fold in
/// place: that took a third of the scan's instructions (3.2 → 2.2 per byte of random data,
/// 3.5 → 2.5 on code).
fn fold_into(dst: &mut Vec<u8>, src: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { fold_avx2(dst, src) };
    }
    fold(dst, src)
}

/// [`fold`] compiled for AVX2: 32 bytes per step instead of the baseline's 16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn fold_avx2(dst: &mut Vec<u8>, src: &[u8]) {
    fold(dst, src)
}

#[inline(always)]
fn fold(dst: &mut Vec<u8>, src: &[u8]) {
    dst.extend(src.iter().map(u8::to_ascii_lowercase));
}

impl Prefilter {
    pub(crate) fn new(literals: &[Vec<u8>], max_len: usize) -> Result<Prefilter, String> {
        let kept = minimal(literals);
        #[cfg(test)]
        let count = kept.len();
        let whole = Finder::general(&kept)?;
        let long = match Caseless::new(&kept) {
            Some(c) => LongSearch::Caseless(c),
            None => LongSearch::Folded(Finder::new(&teddy_order(kept))?),
        };
        Ok(Prefilter {
            long,
            whole,
            max_len,
            #[cfg(test)]
            literals: count,
        })
    }

    /// Literals in the automata.
    #[cfg(test)]
    pub(crate) fn literal_count(&self) -> usize {
        self.literals
    }

    /// Whether long ranges are searched by [`Caseless`] (else by Teddy on a folded copy).
    #[cfg(test)]
    pub(crate) fn is_caseless(&self) -> bool {
        matches!(self.long, LongSearch::Caseless(_))
    }

    /// The sub-ranges of `range` (of `haystack`) the prefiltered rules' regexes must
    /// search, in order (each may overlap the one before by a few bytes); `None` when they
    /// would cover more than half of it (text full of near misses), where one search of
    /// the whole range costs less.
    pub(crate) fn regions(
        &self,
        haystack: &[u8],
        range: Range<usize>,
    ) -> Option<Vec<Range<usize>>> {
        let budget = range.len() / 2;
        let mut out: Vec<Range<usize>> = Vec::new();
        // Bytes in `out`; the region still growing is `open`.
        let mut covered = 0;
        let mut open: Option<Range<usize>> = None;
        // Every position where some literal starts, not only non-overlapping ones.
        let mut on_start = |start: usize| {
            let p = range.start + start;
            let here =
                p.saturating_sub(self.max_len).max(range.start)..(p + self.max_len).min(range.end);
            let grown = match open.take() {
                // `Caseless` may report a start up to its longest anchor offset before
                // the last one: grow the region back too.
                Some(r) if here.start <= r.end => r.start.min(here.start)..here.end.max(r.end),
                Some(r) => {
                    covered += r.len();
                    out.push(r);
                    here
                }
                None => here,
            };
            if covered + grown.len() > budget {
                return ControlFlow::Break(());
            }
            open = Some(grown);
            ControlFlow::Continue(())
        };
        // `Break`: over the budget.
        let searched = match &self.long {
            LongSearch::Caseless(c) if range.len() >= SHORT_RANGE => {
                c.for_each_start(&haystack[range.clone()], &mut on_start)
            }
            long => FOLDED.with(|buf| {
                let mut folded = buf.borrow_mut();
                folded.clear();
                fold_into(&mut folded, &haystack[range.clone()]);
                let finder = match long {
                    LongSearch::Folded(teddy) if folded.len() >= SHORT_RANGE => teddy,
                    _ => &self.whole,
                };
                let mut from = 0;
                while let Some(start) = finder.find_from(&folded, from) {
                    on_start(start)?;
                    from = start + 1;
                }
                ControlFlow::Continue(())
            }),
        };
        if searched.is_break() {
            return None;
        }
        out.extend(open);
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lits(re: &str) -> Option<Vec<String>> {
        let hir = regex_syntax::ParserBuilder::new()
            .utf8(false)
            .build()
            .parse(re)
            .unwrap();
        anchor_literals(&hir).map(|a| {
            a.literals
                .into_iter()
                .map(|l| String::from_utf8_lossy(&l).into_owned())
                .collect()
        })
    }

    #[test]
    fn anchors_are_folded_prefixes_or_suffixes() {
        assert_eq!(lits(r"(?-u:\b)ghp_[A-Za-z0-9]{36}").unwrap(), vec!["ghp_"]);
        // Case-insensitive: one folded literal, not 32 case variants.
        assert_eq!(lits(r"(?i-u)passw(?:or)?d=[^ ]{6,20}").unwrap().len(), 2);
        // No usable prefix: the suffix.
        assert_eq!(
            lits(r"[a-z0-9-]{1,40}\.corp9\.example\.com").unwrap(),
            vec![".corp9.example.com"]
        );
        // Neither: not prefiltered.
        assert_eq!(lits(r"[a-z]{3}[0-9]{3}"), None);
        assert_eq!(lits(r"ab[0-9]{3}"), None, "too short a literal");
    }

    #[test]
    fn regions_cover_every_literal_start_and_merge() {
        let p = Prefilter::new(&[b"abc".to_vec(), b"bcd".to_vec()], 5).unwrap();
        let hay = b"xxABCDxxxxxxxxxxxxxxxxxxxxxabc";
        let hay = [&hay[..], &[b'x'; 40][..]].concat();
        // "ABC" at 2 and "BCD" at 3 (overlapping) merge; "abc" at 27 is its own.
        assert_eq!(p.regions(&hay, 0..hay.len()), Some(vec![0..8, 22..32]));
        // Candidates over more than half the range: search it all instead.
        assert_eq!(p.regions(&hay, 0..30), None);
    }

    #[test]
    fn fold_maps_exactly_a_to_z_at_every_length() {
        let src: Vec<u8> = (0..=255u8).cycle().take(700).collect();
        for len in [0, 1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 256, 700] {
            let mut out = b"kept".to_vec();
            fold_into(&mut out, &src[..len]);
            let want: Vec<u8> = b"kept"
                .iter()
                .chain(&src[..len])
                .map(|b| if b.is_ascii_uppercase() { b + 32 } else { *b })
                .collect();
            assert_eq!(out, want, "length {len}");
        }
    }

    #[test]
    fn literals_holding_another_are_dropped() {
        let all: Vec<Vec<u8>> = [
            "sk-proj-",
            "sk-",
            "aws_secret_k",
            "secret",
            ".secret.example",
        ]
        .iter()
        .map(|l| l.as_bytes().to_vec())
        .collect();
        let mut kept = minimal(&all);
        kept.sort_unstable();
        assert_eq!(kept, vec![&b"secret"[..], &b"sk-"[..]]);
    }

    #[test]
    fn teddy_order_keeps_every_literal() {
        let lits: Vec<Vec<u8>> = (0..45).map(|i| format!("lit{i}").into_bytes()).collect();
        let refs: Vec<&[u8]> = lits.iter().map(Vec::as_slice).collect();
        let mut ordered = teddy_order(refs.clone());
        ordered.sort_unstable();
        let mut want = refs;
        want.sort_unstable();
        assert_eq!(ordered, want);
    }

    #[test]
    fn regions_of_several_literals_in_order() {
        let p = Prefilter::new(&[b"abc".to_vec(), b"wxyz".to_vec()], 4).unwrap();
        let mut hay = vec![b'.'; 80];
        for (at, lit) in [
            (10, &b"WXYZ"[..]),
            (30, b"abc"),
            (33, b"wxyz"),
            (60, b"abc"),
        ] {
            hay[at..at + lit.len()].copy_from_slice(lit);
        }
        assert_eq!(
            p.regions(&hay, 0..hay.len()),
            Some(vec![6..14, 26..37, 56..64])
        );
    }
}
