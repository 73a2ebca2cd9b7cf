//! Where any of a few literals starts in a haystack, ignoring ASCII case, with AVX2: a
//! "slim Teddy" (the SIMD literal search of Hyperscan and aho-corasick) whose nibble masks
//! take both cases of a letter, so the haystack is searched as it is instead of through a
//! folded copy.
//!
//! # How it works
//!
//! The literals are put in at most eight buckets, each with an anchor: [`MASKS`] of its
//! bytes, its first ones or further in (see [`Literal`]). For each byte of an anchor, two
//! 16-entry tables map a byte's low and high nibble to the set of buckets (one bit each)
//! with an anchor that may hold that nibble there. A block of 32 haystack positions is
//! looked up in all tables at once (`vpshufb`); a position whose `AND` over the masks is
//! not empty is a candidate, and the literals of the buckets left in it whose anchor is
//! there are compared where they would start. A letter sets its bucket in the high-nibble
//! rows of both cases; both cases share their low nibble, so a byte passes one mask
//! exactly when it is one of the bytes (or their other case) of that bucket's anchors at
//! that offset, up to mixing nibbles of different anchors in a bucket. Candidates never
//! miss a literal; the comparison removes the false ones.
//!
//! # Why not `aho_corasick::packed`
//!
//! Its Teddy matches bytes exactly. Searching it for ASCII-case-blind literals needs a
//! folded copy of the haystack (a second pass that writes as many bytes as it reads) or
//! all case variants of every literal (2^n of them, which overflow its 64 literals).
//! Past 32 literals it also switches to "fat" Teddy, 16 bytes per step instead of 32.
//! This one searches 32 positions per step on the haystack itself, and puts literals in
//! buckets by how often their bytes occur in ordinary text (see [`assign`]).

use std::ops::ControlFlow;

/// Bytes of each literal the masks look at; a shorter literal leaves its bucket open at
/// the offsets it does not reach.
const MASKS: usize = 3;
// A candidate's anchor is read as four bytes at most.
const _: () = assert!(MASKS <= 4);

/// Buckets: bits of a byte.
const BUCKETS: usize = 8;

/// Positions per step of the search.
const STEP: usize = 32;

/// How often each byte occurs in ordinary text, per 10,000 bytes (at least 1): a mix of
/// English prose in Markdown and Rust source, this repository's own at the time of
/// writing. Only used to put literals that rarely match by accident together (see
/// [`assign`]); a different mix changes how fast the search is, never what it finds.
#[rustfmt::skip]
const TEXT_BYTE_FREQUENCY: [u16; 256] = [
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 205, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    2229, 11, 42, 10, 1, 3, 22, 13, 141, 141, 23, 5, 141, 51, 140, 78,
    48, 33, 24, 17, 19, 16, 16, 10, 13, 11, 96, 51, 10, 35, 20, 3,
    1, 28, 12, 17, 10, 31, 10, 7, 4, 19, 1, 6, 12, 15, 21, 17,
    12, 2, 16, 33, 24, 7, 11, 4, 3, 3, 1, 12, 4, 12, 1, 70,
    124, 419, 79, 206, 230, 755, 154, 97, 196, 359, 4, 62, 257, 152, 404, 375,
    139, 10, 371, 419, 535, 156, 43, 78, 28, 78, 9, 23, 60, 23, 2, 1,
    10, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 2, 5, 4, 1, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 15, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
];

/// A literal and the offset of the [`MASKS`] bytes the masks look for (its anchor): not
/// always its first ones, since `https://hooks.slack.com/…` starts like every URL and
/// `-----begin ` like every Markdown rule, while `ks.` and `-be` are rare.
#[derive(Clone, Debug, PartialEq)]
struct Literal {
    bytes: Vec<u8>,
    anchor: usize,
    /// Its anchor bytes as a word, and which bytes of the word count ([`le_prefix`]).
    anchor_word: u64,
    anchor_mask: u64,
    /// Its first eight bytes as a word, and which count: most candidates whose anchor
    /// matches differ from the literal within them (`github.com` against `github_pat_`).
    head_word: u64,
    head_mask: u64,
}

impl Literal {
    fn new(bytes: Vec<u8>, anchor: usize) -> Literal {
        let (anchor_word, anchor_mask) = le_prefix(anchor_of(&bytes, anchor));
        let (head_word, head_mask) = le_prefix(&bytes);
        Literal {
            anchor_word,
            anchor_mask,
            head_word,
            head_mask,
            bytes,
            anchor,
        }
    }

    /// Whether the literal is at `start` of `haystack`, ASCII case ignored.
    #[inline]
    fn is_at(&self, haystack: &[u8], start: usize) -> bool {
        let Some(here) = haystack.get(start..start + self.bytes.len()) else {
            return false;
        };
        match haystack[start..].first_chunk::<8>() {
            Some(eight) => {
                (fold_u64(u64::from_le_bytes(*eight)) ^ self.head_word) & self.head_mask == 0
                    && (self.bytes.len() <= 8 || here[8..].eq_ignore_ascii_case(&self.bytes[8..]))
            }
            None => here.eq_ignore_ascii_case(&self.bytes),
        }
    }

    /// How much more often than [`Nibbles::chance`] says its anchor occurs: text has runs
    /// of one byte (`----`, `====`, `0000`) far more often than independent bytes would
    /// give, so each pair of equal neighbours in the anchor counts as one byte.
    fn run_factor(&self) -> f64 {
        anchor_of(&self.bytes, self.anchor)
            .windows(2)
            .filter(|w| w[0].eq_ignore_ascii_case(&w[1]))
            .map(|w| f64::from(TEXT_TOTAL) / f64::from(byte_frequency(w[0])))
            .product()
    }

    /// The byte the masks look for at mask `k`; `None` past the end of a literal shorter
    /// than [`MASKS`].
    fn at(&self, k: usize) -> Option<u8> {
        self.bytes.get(self.anchor + k).copied()
    }
}

/// The [`MASKS`] bytes of `bytes` from `anchor` (fewer at its end).
fn anchor_of(bytes: &[u8], anchor: usize) -> &[u8] {
    &bytes[anchor.min(bytes.len())..(anchor + MASKS).min(bytes.len())]
}

/// The first eight bytes of `bytes` (fewer: zeros after them) as a little-endian word, and
/// the mask of the bytes that count.
fn le_prefix(bytes: &[u8]) -> (u64, u64) {
    let n = bytes.len().min(8);
    let mut word = [0u8; 8];
    word[..n].copy_from_slice(&bytes[..n]);
    let mask = match n {
        0 => 0,
        n => u64::MAX >> (64 - 8 * n),
    };
    (u64::from_le_bytes(word), mask)
}

/// The last bytes of a haystack (fewer than four) as a word: rare, kept out of line.
#[cold]
fn tail_word(rest: &[u8]) -> u64 {
    le_prefix(rest).0
}

/// The low and high nibbles (as bit sets) each mask lets through for one bucket.
#[derive(Clone, Copy, Default, PartialEq, Debug)]
struct Nibbles([(u16, u16); MASKS]);

impl Nibbles {
    fn add(&mut self, literal: &Literal) {
        for (k, (lo, hi)) in self.0.iter_mut().enumerate() {
            match literal.at(k) {
                Some(b) => {
                    for v in [b.to_ascii_lowercase(), b.to_ascii_uppercase()] {
                        *lo |= 1 << (v & 0xf);
                        *hi |= 1 << (v >> 4);
                    }
                }
                None => (*lo, *hi) = (u16::MAX, u16::MAX),
            }
        }
    }

    /// The chance that a position of ordinary text passes, taking its bytes as independent
    /// with [`TEXT_BYTE_FREQUENCY`].
    fn chance(&self) -> f64 {
        self.0
            .iter()
            .map(|&(lo, hi)| {
                let mut passing = 0u32;
                for h in Bits(hi) {
                    for l in Bits(lo) {
                        passing += u32::from(TEXT_BYTE_FREQUENCY[h << 4 | l]);
                    }
                }
                f64::from(passing) / f64::from(TEXT_TOTAL)
            })
            .product()
    }
}

/// How often `b` occurs in ordinary text, either case.
fn byte_frequency(b: u8) -> u32 {
    let (lower, upper) = (b.to_ascii_lowercase(), b.to_ascii_uppercase());
    let f = |c: u8| u32::from(TEXT_BYTE_FREQUENCY[usize::from(c)]);
    if lower == upper {
        f(b)
    } else {
        f(lower) + f(upper)
    }
}

/// `x`'s eight bytes with A–Z mapped to a–z (SWAR: no byte carries into the next).
#[inline]
fn fold_u64(x: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let low7 = x & (0x7f * ONES);
    let from_a = low7 + (0x80 - u64::from(b'A')) * ONES;
    let past_z = low7 + (0x80 - u64::from(b'Z') - 1) * ONES;
    let upper = from_a & !past_z & !x & (0x80 * ONES);
    x | (upper >> 2)
}

/// The sum of [`TEXT_BYTE_FREQUENCY`].
const TEXT_TOTAL: u32 = {
    let mut sum = 0;
    let mut i = 0;
    while i < 256 {
        sum += TEXT_BYTE_FREQUENCY[i] as u32;
        i += 1;
    }
    sum
};

/// The set bits of a `u16`, lowest first.
struct Bits(u16);

impl Iterator for Bits {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        if self.0 == 0 {
            return None;
        }
        let b = self.0.trailing_zeros() as usize;
        self.0 &= self.0 - 1;
        Some(b)
    }
}

/// The search: literals (ASCII lower case) in buckets, and the nibble tables of all
/// buckets: `lo[k][n]` holds the bit of every bucket whose mask `k` lets low nibble `n`
/// through, `hi[k][n]` the same for high nibbles.
pub(crate) struct Caseless {
    buckets: Vec<Vec<Literal>>,
    /// Whether every literal byte is ASCII.
    ascii: bool,
    lo: [[u8; 16]; MASKS],
    hi: [[u8; 16]; MASKS],
}

impl Caseless {
    /// The search for `literals` (non-empty, folded to ASCII lower case), or `None` when
    /// this CPU has no AVX2 or there are too many literals to search well in eight
    /// buckets.
    pub(crate) fn new(literals: &[&[u8]]) -> Option<Caseless> {
        if !Self::available() || literals.is_empty() || literals.len() > MAX_LITERALS {
            return None;
        }
        let buckets = assign(literals);
        let (mut lo, mut hi) = ([[0u8; 16]; MASKS], [[0u8; 16]; MASKS]);
        for (b, bucket) in buckets.iter().enumerate() {
            for (k, &(l, h)) in bucket.nibbles.0.iter().enumerate() {
                for n in Bits(l) {
                    lo[k][n] |= 1 << b;
                }
                for n in Bits(h) {
                    hi[k][n] |= 1 << b;
                }
            }
        }
        // A literal shorter than the masks lets any byte through past its end, 0x80 and
        // up too, so it needs the masked lookup.
        let ascii = literals.iter().all(|l| l.is_ascii() && l.len() >= MASKS);
        Some(Caseless {
            buckets: buckets.into_iter().map(|b| b.literals).collect(),
            ascii,
            lo,
            hi,
        })
    }

    fn available() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx2")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// Calls `found` with every position of `haystack` where one of the literals starts
    /// (ASCII case ignored), until it breaks (then `Break`). Positions come in the order
    /// their anchors are found, so they may go back by up to the longest anchor offset, and
    /// one may come twice.
    pub(crate) fn for_each_start(
        &self,
        haystack: &[u8],
        found: &mut dyn FnMut(usize) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `new` returned `self` only on a CPU with AVX2.
        unsafe {
            avx2::for_each_start(self, haystack, found)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (haystack, found);
            unreachable!("Caseless::new returns None without AVX2")
        }
    }

    /// Reports each literal of the buckets in `bits` whose anchor is at `at`.
    #[inline]
    fn confirm(
        &self,
        haystack: &[u8],
        at: usize,
        mut bits: u8,
        found: &mut dyn FnMut(usize) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        // The bytes at `at`, folded: a literal's anchor must be there exactly, which most
        // candidates (bytes that only mix the nibbles of a bucket's literals) are not.
        let rest = haystack.get(at..).unwrap_or_default();
        let word = match rest.first_chunk::<4>() {
            // Four bytes at once: a copy of a length known only at run time is a memcpy call.
            Some(four) => u64::from(u32::from_le_bytes(*four)),
            None => tail_word(rest),
        };
        let word = fold_u64(word);
        while bits != 0 {
            let b = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            for l in &self.buckets[b] {
                if (word ^ l.anchor_word) & l.anchor_mask != 0 {
                    continue;
                }
                if let Some(start) = at.checked_sub(l.anchor) {
                    if l.is_at(haystack, start) {
                        found(start)?;
                    }
                }
            }
        }
        ControlFlow::Continue(())
    }

    /// The buckets whose masks the [`MASKS`] bytes of `window` pass.
    fn pass(&self, window: &[u8]) -> u8 {
        (0..MASKS).fold(0xff, |acc, k| {
            let b = usize::from(window[k]);
            acc & self.lo[k][b & 0xf] & self.hi[k][b >> 4]
        })
    }

    /// The same search one position at a time, from `from` (the haystack's last bytes,
    /// and tests).
    fn scalar_from(
        &self,
        haystack: &[u8],
        from: usize,
        found: &mut dyn FnMut(usize) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        let mut window = [0u8; MASKS];
        for at in from..haystack.len() {
            let end = (at + MASKS).min(haystack.len());
            window.fill(0);
            window[..end - at].copy_from_slice(&haystack[at..end]);
            let bits = self.pass(&window);
            if bits != 0 {
                self.confirm(haystack, at, bits, found)?;
            }
        }
        ControlFlow::Continue(())
    }
}

/// More literals than this are searched by aho-corasick: eight buckets of them would flag
/// too much ordinary text.
const MAX_LITERALS: usize = 48;

/// The buckets for `literals`, each with its anchor. Longest first, each literal goes to
/// the bucket and anchor that raise the bucket's [`Bucket::cost`] least; then single
/// literals move (to another bucket or anchor) while a move lowers the sum of the
/// buckets' costs. Empty buckets are dropped.
fn assign(literals: &[&[u8]]) -> Vec<Bucket> {
    let mut order: Vec<Vec<u8>> = literals.iter().map(|l| l.to_vec()).collect();
    order.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    let mut buckets: Vec<Bucket> = vec![Bucket::default(); BUCKETS];
    for bytes in order {
        let (to, anchor, _) = best_place(&buckets, &bytes);
        buckets[to].push(Literal::new(bytes, anchor));
    }
    // Each accepted move lowers the total by at least 0.1 %, so this ends; the pass cap
    // bounds the policy's compile time whatever happens.
    for _ in 0..MAX_PASSES {
        let mut moved = false;
        for from in 0..BUCKETS {
            let mut i = 0;
            while i < buckets[from].literals.len() {
                let total: f64 = buckets.iter().map(|b| b.cost).sum();
                let lit = buckets[from].remove(i);
                let (to, anchor, rise) = best_place(&buckets, &lit.bytes);
                let after: f64 = buckets.iter().map(|b| b.cost).sum::<f64>() + rise;
                if after < total * 0.999 {
                    moved = true;
                    buckets[to].push(Literal::new(lit.bytes, anchor));
                    if to == from {
                        // Re-anchored in place: now the last of its bucket.
                        continue;
                    }
                } else {
                    buckets[from].insert(i, lit);
                    i += 1;
                }
            }
        }
        if !moved {
            break;
        }
    }
    buckets.retain(|b| !b.literals.is_empty());
    buckets
}

/// Passes of single moves in [`assign`] at most.
const MAX_PASSES: usize = 8;

/// A bucket being filled, with its masks and cost kept up to date.
#[derive(Clone, Default)]
struct Bucket {
    literals: Vec<Literal>,
    nibbles: Nibbles,
    /// The largest [`Literal::run_factor`] of its literals (1 when none).
    runs: f64,
    cost: f64,
}

impl Bucket {
    /// What a bucket costs the search: the chance that a position of ordinary text passes
    /// its masks, raised for anchors with runs (see [`Literal::run_factor`]).
    fn cost(nibbles: &Nibbles, runs: f64) -> f64 {
        nibbles.chance() * runs
    }

    fn push(&mut self, lit: Literal) {
        self.nibbles.add(&lit);
        self.runs = self.runs.max(lit.run_factor()).max(1.0);
        self.cost = Bucket::cost(&self.nibbles, self.runs);
        self.literals.push(lit);
    }

    fn remove(&mut self, i: usize) -> Literal {
        let mut literals = std::mem::take(&mut self.literals);
        let lit = literals.remove(i);
        self.rebuild(literals);
        lit
    }

    fn insert(&mut self, i: usize, lit: Literal) {
        let mut literals = std::mem::take(&mut self.literals);
        literals.insert(i, lit);
        self.rebuild(literals);
    }

    fn rebuild(&mut self, literals: Vec<Literal>) {
        *self = Bucket::default();
        for l in literals {
            self.push(l);
        }
    }
}

/// The bucket and anchor for `bytes` that raise that bucket's cost least (fewer literals
/// first on a tie), and by how much.
fn best_place(buckets: &[Bucket], bytes: &[u8]) -> (usize, usize, f64) {
    let placings: Vec<(Literal, f64)> = (0..=bytes.len().saturating_sub(MASKS))
        .map(|anchor| {
            let lit = Literal::new(bytes.to_vec(), anchor);
            let runs = lit.run_factor();
            (lit, runs)
        })
        .collect();
    let mut best = (f64::INFINITY, usize::MAX, 0, 0);
    for (b, bucket) in buckets.iter().enumerate() {
        for (lit, lit_runs) in &placings {
            let anchor = lit.anchor;
            let mut nibbles = bucket.nibbles;
            nibbles.add(lit);
            let runs = bucket.runs.max(*lit_runs).max(1.0);
            let rise = Bucket::cost(&nibbles, runs) - bucket.cost;
            let place = (rise, bucket.literals.len(), b, anchor);
            if place.0 < best.0 || (place.0 == best.0 && place.1 < best.1) {
                best = place;
            }
        }
    }
    (best.2, best.3, best.0)
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Caseless, MASKS, STEP};
    use std::arch::x86_64::*;
    use std::ops::ControlFlow;

    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn for_each_start(
        c: &Caseless,
        haystack: &[u8],
        found: &mut dyn FnMut(usize) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        // A step reads `STEP + MASKS - 1` bytes from its first position.
        let last = haystack.len().saturating_sub(STEP + MASKS - 1);
        let mut at = 0;
        while at + STEP + MASKS - 1 <= haystack.len() {
            let next = match c.ascii {
                // SAFETY: the CPU has AVX2, and `at <= last`.
                true => unsafe { next_hits::<true>(c, haystack, at, last) },
                // SAFETY: as above.
                false => unsafe { next_hits::<false>(c, haystack, at, last) },
            };
            let Some((block, mut set, hits)) = next else {
                at = (last / STEP + 1) * STEP;
                break;
            };
            while set != 0 {
                let j = set.trailing_zeros() as usize;
                set &= set - 1;
                c.confirm(haystack, block + j, hits[j], found)?;
            }
            at = block + STEP;
        }
        c.scalar_from(haystack, at, found)
    }

    /// The first block at or after `at` (in steps of [`STEP`], up to `last`) with a
    /// position passing some bucket's masks: its start, which of its positions pass (as
    /// bits) and the buckets each passes. No calls in the loop, so the tables stay in registers.
    ///
    /// With `ASCII` (every literal byte below 0x80, no literal shorter than the masks), a byte's low nibble is looked up as
    /// the byte itself: `vpshufb` gives 0 for bytes from 0x80 up, which no literal holds.
    /// Not inlined, so that the tables stay in registers for the whole loop.
    ///
    /// # Safety
    /// The CPU must have AVX2; `last + STEP + MASKS - 1 <= haystack.len()`.
    #[target_feature(enable = "avx2")]
    #[inline(never)]
    unsafe fn next_hits<const ASCII: bool>(
        c: &Caseless,
        haystack: &[u8],
        mut at: usize,
        last: usize,
    ) -> Option<(usize, u32, [u8; STEP])> {
        let table = |t: &[u8; 16]| {
            // SAFETY: `t` is 16 readable bytes; the load is unaligned.
            let half = unsafe { _mm_loadu_si128(t.as_ptr().cast()) };
            _mm256_broadcastsi128_si256(half)
        };
        let lo: [__m256i; MASKS] = std::array::from_fn(|k| table(&c.lo[k]));
        let hi: [__m256i; MASKS] = std::array::from_fn(|k| table(&c.hi[k]));
        let nibble = _mm256_set1_epi8(0x0f);
        let zero = _mm256_setzero_si256();
        while at <= last {
            let mut hits = _mm256_set1_epi8(-1);
            for k in 0..MASKS {
                // SAFETY: `at + k + STEP <= last + MASKS - 1 + STEP <= haystack.len()`.
                let v = unsafe { _mm256_loadu_si256(haystack.as_ptr().add(at + k).cast()) };
                let low = if ASCII {
                    v
                } else {
                    _mm256_and_si256(v, nibble)
                };
                let high = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble);
                let m = _mm256_and_si256(
                    _mm256_shuffle_epi8(lo[k], low),
                    _mm256_shuffle_epi8(hi[k], high),
                );
                hits = _mm256_and_si256(hits, m);
            }
            if _mm256_testz_si256(hits, hits) == 0 {
                let mut out = [0u8; STEP];
                // SAFETY: `out` is `STEP` = 32 writable bytes.
                unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), hits) };
                let set = !(_mm256_movemask_epi8(_mm256_cmpeq_epi8(hits, zero)) as u32);
                return Some((at, set, out));
            }
            at += STEP;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every position where a literal starts, ASCII case ignored, by the obvious loop.
    fn naive(literals: &[&[u8]], hay: &[u8]) -> Vec<usize> {
        (0..hay.len())
            .filter(|&at| {
                literals.iter().any(|l| {
                    hay.len() - at >= l.len() && hay[at..at + l.len()].eq_ignore_ascii_case(l)
                })
            })
            .collect()
    }

    fn starts(c: &Caseless, hay: &[u8]) -> Vec<usize> {
        let mut out = Vec::new();
        let _ = c.for_each_start(hay, &mut |at| {
            out.push(at);
            ControlFlow::Continue(())
        });
        out.sort_unstable();
        out.dedup();
        out
    }

    const BUILTIN: &[&str] = &[
        "a3t",
        "sk-",
        "abia",
        "acca",
        "aiza",
        "akia",
        "asia",
        "gho_",
        "ghp_",
        "ghr_",
        "ghs_",
        "ghu_",
        "npm_",
        "xoxa-",
        "xoxb-",
        "xoxe-",
        "xoxo-",
        "xoxp-",
        "xoxr-",
        "xoxs-",
        "apikey",
        "glpat-",
        "passwd",
        "passwo",
        "secret",
        "access_",
        "accesst",
        "api_key",
        "auth_to",
        "authtok",
        "rk_live_",
        "sk_live_",
        "-----begin ",
        "github_pat_",
        "https://hooks.slack.com/services/t",
    ];

    #[test]
    fn finds_every_start_at_every_offset_and_case() {
        let lits: Vec<&[u8]> = BUILTIN.iter().map(|l| l.as_bytes()).collect();
        let Some(c) = Caseless::new(&lits) else {
            return; // no AVX2 here: the prefilter uses aho-corasick instead
        };
        for l in BUILTIN {
            for case in [l.to_string(), l.to_ascii_uppercase()] {
                for at in 0..80 {
                    for tail in [0, 1, 5, 40] {
                        let mut hay = vec![b'x'; at];
                        hay.extend_from_slice(case.as_bytes());
                        hay.extend(std::iter::repeat_n(b'.', tail));
                        assert_eq!(starts(&c, &hay), naive(&lits, &hay), "{case} at {at}");
                    }
                }
            }
        }
    }

    #[test]
    fn folds_every_byte_in_every_lane() {
        for b in 0..=255u8 {
            for lane in 0..8 {
                let mut word = [b'Q', 0xff, b'z', b'@', b'[', b'A', 0x80, b'Z'];
                word[lane] = b;
                let want = u64::from_le_bytes(word.map(|c| c.to_ascii_lowercase()));
                assert_eq!(
                    fold_u64(u64::from_le_bytes(word)),
                    want,
                    "{b:#x} in lane {lane}"
                );
            }
        }
    }

    #[test]
    fn stops_when_told() {
        let c = match Caseless::new(&[b"abc"]) {
            Some(c) => c,
            None => return,
        };
        let hay = b"abc abc abc abc".repeat(10);
        let mut seen = 0;
        let _ = c.for_each_start(&hay, &mut |_| {
            seen += 1;
            if seen == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        assert_eq!(seen, 3);
    }

    #[test]
    fn buckets_hold_every_literal_once() {
        let lits: Vec<&[u8]> = BUILTIN.iter().map(|l| l.as_bytes()).collect();
        let buckets = assign(&lits);
        assert!(buckets.len() <= BUCKETS);
        let mut all: Vec<&[u8]> = buckets
            .iter()
            .flat_map(|b| &b.literals)
            .map(|l| &l.bytes[..])
            .collect();
        all.sort_unstable();
        let mut want = lits.clone();
        want.sort_unstable();
        assert_eq!(all, want);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// Random literals over a small alphabet (so they occur, overlap and share
        /// buckets), in random haystacks of random case: exactly the naive starts.
        #[test]
        fn same_starts_as_the_naive_search(
            lits in prop::collection::vec(prop::collection::vec(prop::sample::select(b"abcAB-_xy\xc3\x80".to_vec()), 1..7), 1..40),
            hay in prop::collection::vec(prop::sample::select(b"abcABC-_xyXY\xc3\x80\xe0 ".to_vec()), 0..300),
        ) {
            let folded: Vec<Vec<u8>> = lits.iter().map(|l| l.to_ascii_lowercase()).collect();
            let refs: Vec<&[u8]> = folded.iter().map(Vec::as_slice).collect();
            if let Some(c) = Caseless::new(&refs) {
                prop_assert_eq!(starts(&c, &hay), naive(&refs, &hay));
                let mut scalar = Vec::new();
                let _ = c.scalar_from(&hay, 0, &mut |at| { scalar.push(at); ControlFlow::Continue(()) });
                scalar.sort_unstable();
                scalar.dedup();
                prop_assert_eq!(scalar, naive(&refs, &hay));
            }
        }
    }
}
