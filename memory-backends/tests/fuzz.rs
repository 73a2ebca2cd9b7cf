//! Fuzz target `search-query`: what `cat "mem/semantic/.search/QUERY"` and `agentfs search`
//! hand to `SearchIndex::search`, on a small RAM index holding facts of two agents.
//! Time-bounded (tests/fuzz/harness.rs); `scripts/fuzz.sh` runs it longer.
//!
//! Properties: never a panic; the answer is hits or `SearchError::Query` (a bad query is the
//! user's mistake and says why), never another error; every hit is one of the asking agent's
//! own facts, with a one-line snippet.

#[path = "../../tests/fuzz/harness.rs"]
mod harness;

use agentfs_memory::search::{SearchError, SearchIndex};
use proptest::prelude::*;
use proptest::sample::select;

const A_FACTS: &[(&str, &str)] = &[
    ("cats", "the cat purred on the mat\nand slept"),
    ("dogs", "a dog barked at the cat"),
    ("notes/plan", "secret plan: ship on Friday, 2026-11-27"),
    ("notes/é", "unicode café naïve 東京 emoji 🦀"),
    ("empty", ""),
];
const B_FACTS: &[(&str, &str)] = &[
    ("cats", "b's private cat notes"),
    ("secret", "secret plan of agent b"),
];

fn index() -> SearchIndex {
    let index = SearchIndex::open(None).expect("a RAM index opens");
    for (agent, facts) in [("a", A_FACTS), ("b", B_FACTS)] {
        for (i, (path, text)) in facts.iter().enumerate() {
            index
                .upsert(agent, path, text.as_bytes(), 1_700_000_000 + i as i64)
                .unwrap();
        }
    }
    index.flush().unwrap();
    assert_eq!(index.num_docs(), (A_FACTS.len() + B_FACTS.len()) as u64);
    index
}

/// Pieces of the query language and near misses.
const TOKENS: &[&str] = &[
    "cat",
    "dog",
    "purred",
    "secret",
    "plan",
    "café",
    "東京",
    "🦀",
    "AND",
    "OR",
    "NOT",
    "and",
    "or",
    "not",
    "+",
    "-",
    "\"",
    "\"cat dog\"",
    "\"dog barked\"~2",
    "(",
    ")",
    "(cat OR dog)",
    "path:",
    "path:notes",
    "content:",
    "content:cat",
    "agent:",
    "agent:b",
    "key:",
    "mtime:",
    "mtime:>5",
    "mtime:[1 TO 5]",
    "mtime:{1 TO *}",
    "mtime:>=1700000000",
    "mtime:abc",
    "path:[a TO z]",
    "[",
    "]",
    "{",
    "}",
    " TO ",
    "*",
    "cat*",
    "c?t",
    "^2",
    "^",
    "^-1",
    "~",
    "~1",
    ":",
    "::",
    "\\",
    "\\\"",
    "/",
    "/ca.*/",
    "path:/no.*/",
    "IN",
    "path: IN [cats dogs]",
    "'",
    " ",
    "  ",
    "\t",
    "\n",
    "\0",
    "\u{feff}",
    "\u{2028}",
    "nofield:x",
    "9e99",
    "-1",
    "0x1",
    "*:*",
    "_exists_",
    "path:*",
    "cat^1e40",
    "NOT NOT",
    "((((",
    "))))",
    "\"\"",
    "''",
];

/// A query: token soup, deep nesting, or arbitrary text.
fn query() -> impl Strategy<Value = String> {
    prop_oneof![
        5 => proptest::collection::vec(select(TOKENS), 0..16).prop_map(|t| t.join(" ")),
        3 => proptest::collection::vec(select(TOKENS), 0..16).prop_map(|t| t.concat()),
        1 => (1usize..128, select(TOKENS))
            .prop_map(|(n, t)| format!("{}{t}{}", "(".repeat(n), ")".repeat(n))),
        1 => (1usize..128).prop_map(|n| "NOT ".repeat(n) + "cat"),
        1 => (1usize..200, select(&["(", "\"", "-", "+", "[", "{", ":", "\\", "*"][..]))
            .prop_map(|(n, t)| t.repeat(n)),
        2 => "\\PC{0,64}",
        2 => any::<String>(),
    ]
}

#[test]
fn fuzz_search_query() {
    let index = index();
    let own: Vec<&str> = A_FACTS.iter().map(|(p, _)| *p).collect();
    harness::fuzz_for("search-query", query(), |q| {
        match index.search("a", &q, 10) {
            Ok(hits) => {
                for hit in &hits {
                    prop_assert!(
                        own.contains(&hit.path.as_str()),
                        "query {:?} found {:?}, which is not agent a's",
                        q,
                        hit.path
                    );
                    prop_assert!(!hit.snippet.contains('\n'), "{:?}", hit.snippet);
                    prop_assert!(hit.score.is_finite(), "{:?}: score {}", q, hit.score);
                }
            }
            Err(SearchError::Query(why)) => {
                prop_assert!(!why.is_empty(), "{:?}: empty reason", q);
            }
            Err(other) => prop_assert!(false, "{:?}: not a query error: {:?}", q, other),
        }
        Ok(())
    });
}

/// A `.search/QUERY` name is at most 255 bytes, but `agentfs search` has no such bound.
#[test]
fn long_and_deep_queries_are_answered() {
    let index = index();
    for q in [
        "(".repeat(255),
        format!("{}cat{}", "(".repeat(2000), ")".repeat(2000)),
        "NOT ".repeat(2000) + "cat",
        "\"".repeat(5000),
        "cat ".repeat(5000),
    ] {
        match index.search("a", &q, 10) {
            Ok(_) | Err(SearchError::Query(_)) => {}
            Err(e) => panic!("{:?}…: {e}", &q[..20]),
        }
    }
}
