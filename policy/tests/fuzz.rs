//! Fuzz targets of the policy language: `Ruleset::compile`, what `agentfs policy check`, a
//! mount and a reload run on policy files. Time-bounded (tests/fuzz/harness.rs):
//!
//! * `policy-text`: arbitrary text and TOML token soup;
//! * `policy-mutated`: structure-aware: policies assembled from every table and key with
//!   right and wrong values (globs, regexes, sizes, names, nesting), and byte-level
//!   mutations of the valid policies of docs/policy.md and the built-in policy;
//! * `policy-roundtrip`: valid policies; the rules rendered for an agent
//!   (`Ruleset::render_for`, the `AGENT/policy/rules` view) load again and decide every call
//!   of that agent the same way.
//!
//! Properties: never a panic; a refused policy gets at least one diagnostic, each one line,
//! `p.toml:LINE:COL: message` with LINE and COL inside the file.

#[path = "../../tests/fuzz/harness.rs"]
mod harness;

use agentfs_policy::*;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseResult;

const FILE: &str = "p.toml";

// ---------------------------------------------------------------------------------------
// Checking a compile result.

/// The properties every outcome must have. Returns the ruleset when it compiled.
fn check_compile(text: &str) -> Result<Option<Ruleset>, TestCaseError> {
    match Ruleset::compile(vec![Source::new(FILE, text)]) {
        Ok(rules) => {
            // What `agentfs policy check` prints and the tree shows must not panic either.
            let _ = rules.summary().to_string();
            for agent in ["a", "scout"] {
                let _ = rules.render_for(agent);
            }
            Ok(Some(rules))
        }
        Err(e) => {
            check_diagnostics(text, &e)?;
            Ok(None)
        }
    }
}

fn check_diagnostics(text: &str, e: &PolicyError) -> TestCaseResult {
    prop_assert!(!e.diagnostics.is_empty(), "an error without a diagnostic");
    let lines: Vec<&str> = text.split('\n').collect();
    for d in &e.diagnostics {
        prop_assert_eq!(&d.file, FILE, "diagnostic in another file: {}", d);
        prop_assert!(
            d.line >= 1 && d.line <= lines.len(),
            "line {} outside the file ({} lines): {}",
            d.line,
            lines.len(),
            d
        );
        let width = lines[d.line - 1].chars().count();
        prop_assert!(
            d.col >= 1 && d.col <= width + 1,
            "column {} outside line {} ({} characters): {}",
            d.col,
            d.line,
            width,
            d
        );
        prop_assert!(!d.message.trim().is_empty(), "empty message: {:?}", d);
        prop_assert!(
            !d.message.contains(['\n', '\r']),
            "a message must be one line: {:?}",
            d.message
        );
        let shown = d.to_string();
        let prefix = format!("{FILE}:{}:{}: ", d.line, d.col);
        prop_assert!(shown.starts_with(&prefix), "{}", shown);
    }
    prop_assert!(!e.to_string().is_empty());
    Ok(())
}

// ---------------------------------------------------------------------------------------
// TOML values and tables, rendered to text.

#[derive(Clone, Debug)]
enum Val {
    /// A string and how to quote it: 0 basic, 1 literal, 2 multi-line basic, 3 multi-line
    /// literal, 4 unquoted (usually a syntax error).
    Str(String, u8),
    Int(i64),
    Bool(bool),
    Float(f64),
    Arr(Vec<Val>),
    Inline(Vec<(String, Val)>),
}

fn basic_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn render_val(v: &Val, out: &mut String) {
    match v {
        Val::Str(s, style) => match style {
            1 if !s.contains(['\'', '\n', '\r']) => {
                out.push('\'');
                out.push_str(s);
                out.push('\'');
            }
            2 => {
                out.push_str("\"\"\"");
                out.push_str(&basic_escape(s));
                out.push_str("\"\"\"");
            }
            3 if !s.contains("'''") => {
                out.push_str("'''");
                out.push_str(s);
                out.push_str("'''");
            }
            4 => out.push_str(s),
            _ => {
                out.push('"');
                out.push_str(&basic_escape(s));
                out.push('"');
            }
        },
        Val::Int(i) => out.push_str(&i.to_string()),
        Val::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Val::Float(f) => out.push_str(&format!("{f:?}")),
        Val::Arr(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                render_val(item, out);
            }
            out.push(']');
        }
        Val::Inline(entries) => {
            out.push_str("{ ");
            for (i, (k, item)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&key_text(k));
                out.push_str(" = ");
                render_val(item, out);
            }
            out.push_str(" }");
        }
    }
}

/// A key as TOML: bare when it can be, quoted otherwise.
fn key_text(k: &str) -> String {
    if !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        k.to_string()
    } else {
        format!("\"{}\"", basic_escape(k))
    }
}

#[derive(Clone, Debug)]
struct Section {
    header: String,
    entries: Vec<(String, Val)>,
}

fn render_file(sections: &[Section]) -> String {
    let mut out = String::new();
    for s in sections {
        if !s.header.is_empty() {
            out.push_str(&s.header);
            out.push('\n');
        }
        for (k, v) in &s.entries {
            out.push_str(&key_text(k));
            out.push_str(" = ");
            render_val(v, &mut out);
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

// ---------------------------------------------------------------------------------------
// Pools of right and wrong values.

const NAMES: &[&str] = &[
    "a",
    "r1",
    "no-scripts",
    "x.y:z_w",
    "facts-are-final",
    "own-memory",
    "default-deny",
    "",
    "bad name",
    "a\nb",
    "é",
    "a/b",
];
const GOOD_NAMES: &[&str] = &["a", "r1", "no-scripts", "x.y:z_w", "facts", "r-2", "Q"];
const GLOBS: &[&str] = &[
    "mem/**",
    "mem",
    "shared/**",
    "**/*.sh",
    "mem/semantic/facts/**",
    "state/*",
    "{mem,shared}/**",
    "mem/[a-z]*",
    "mem/\\*",
    "mem/**/x?",
    "mem/é/**",
    "mem/a\u{1}b",
    "mem/a\u{85}b",
    "/abs/**",
    "a/../b",
    "./a",
    "a/",
    "",
    "[",
    "{a",
    "a\\",
    "**",
    "*",
    "[z-a]",
    "{a,{b,c}}",
];
const GOOD_GLOBS: &[&str] = &[
    "mem/**",
    "mem",
    "shared/**",
    "**/*.sh",
    "mem/semantic/facts/**",
    "mem/episodic/**",
    "state/*",
    "{mem,shared}/**",
    "mem/[a-z]*",
    "mem/\\*",
    "mem/**/x?",
    "mem/é/**",
    "mem/a\u{1}b",
    "mem/tab\tand\"quote'",
    "mem/a\u{85}b\u{200b}",
    "**",
    "*",
];
const REGEXES: &[&str] = &[
    "AKIA[A-Z0-9]{16}",
    "(?-u:\\b)[0-9]{3}-[0-9]{2}-[0-9]{4}(?-u:\\b)",
    "secret",
    "(?i)zebra",
    "x{1,10}",
    "\\x00\\x01",
    "(?-u:\\xFF)",
    "a*",
    ".+",
    "(",
    "[",
    "",
    "a?",
    "x{1,100000}",
    "\\p{Greek}{1,3}",
    "(?<n>a)b",
    "\\",
    "a{2,1}",
    "(?z)",
    "[[:alpha:]]{1,3}",
    "\\bword\\b",
    "a|",
    "(?-u)\\w{2}",
    "é{1,2}",
    "\u{1}x",
    "x{4294967295}",
    "((((a))))",
];
const GOOD_REGEXES: &[&str] = &[
    "AKIA[A-Z0-9]{16}",
    "(?-u:\\b)[0-9]{3}-[0-9]{2}-[0-9]{4}(?-u:\\b)",
    "secret",
    "(?i)zebra",
    "x{1,10}",
    "\\x00\\x01",
    "(?-u:\\xFF)",
    "é{1,2}",
    "\u{1}x",
    "it's \"quoted\"",
    "tab\there",
    "a\u{85}b",
];
const AGENTS: &[&str] = &[
    "a", "b", "scout", "sys", "", ".", "..", "x/y", "a b", "a\nb", "-", "é",
];
const GOOD_AGENTS: &[&str] = &["a", "b", "scout"];
const OPS: &[&str] = &["create", "write", "delete", "read", "", "CREATE"];
const SCOPES: &[&str] = &["content", "name", "symlink", "xattr", "body"];
const TYPES: &[&str] = &["symlink", "hardlink", "special", "xattr", "exec", "dir"];
const ACTIONS: &[&str] = &["kill", "deny", "audit", "kil", "", "Kill"];
const GOOD_ACTIONS: &[&str] = &["kill", "deny", "audit"];
const SIZES: &[&str] = &[
    "10 MiB",
    "1GB",
    "512 KiB",
    "1_000",
    "7",
    "ten",
    "99999999999 TiB",
    "",
    "-1",
    "1 parsec",
    " 3 B ",
];
const TEST_OPS: &[&str] = &[
    "create",
    "mkdir",
    "mknod",
    "symlink",
    "link",
    "write",
    "truncate",
    "setattr",
    "rename",
    "unlink",
    "rmdir",
    "setxattr",
    "removexattr",
    "register",
    "bogus",
    "write\nmore",
];
const KINDS: &[&str] = &[
    "file", "dir", "symlink", "fifo", "socket", "char", "block", "x",
];
const EXPECTS: &[&str] = &["allow", "audit", "deny", "kill", "maybe"];
const PATHS: &[&str] = &[
    "mem/a",
    "mem/semantic/facts/x",
    "shared/run.sh",
    "state/c1",
    "mem/episodic/log",
    "x",
    "",
    "mem/é",
];
const CONTENTS: &[&str] = &[
    "hello",
    "AKIAIOSFODNN7EXAMPLE",
    "zebra",
    "123-45-6789",
    "secret",
    "",
];

/// A string from `pool` most of the time, otherwise arbitrary text; any quoting style.
fn str_from(pool: &'static [&'static str]) -> BoxedStrategy<Val> {
    (
        prop_oneof![
            10 => select(pool).prop_map(String::from),
            1 => "\\PC{0,16}",
            1 => any::<String>(),
        ],
        prop_oneof![8 => Just(0u8), 2 => Just(1u8), 1 => Just(2u8), 1 => Just(3u8), 1 => Just(4u8)],
    )
        .prop_map(|(s, q)| Val::Str(s, q))
        .boxed()
}

/// A valid string from `pool`, quoted in a way that keeps it intact.
fn good_str(pool: &'static [&'static str]) -> BoxedStrategy<Val> {
    (select(pool), prop_oneof![3 => Just(0u8), 1 => Just(2u8)])
        .prop_map(|(s, q)| Val::Str(s.to_string(), q))
        .boxed()
}

fn list_of(item: BoxedStrategy<Val>) -> BoxedStrategy<Val> {
    prop_oneof![
        10 => proptest::collection::vec(item.clone(), 1..4).prop_map(Val::Arr),
        1 => Just(Val::Arr(Vec::new())),
        1 => item,
        1 => any_val(),
    ]
    .boxed()
}

fn good_list(item: BoxedStrategy<Val>) -> BoxedStrategy<Val> {
    proptest::collection::vec(item, 1..4)
        .prop_map(Val::Arr)
        .boxed()
}

/// Any TOML value, nested.
fn any_val() -> BoxedStrategy<Val> {
    let leaf = prop_oneof![
        ("\\PC{0,12}", 0u8..5).prop_map(|(s, q)| Val::Str(s, q)),
        any::<i64>().prop_map(Val::Int),
        prop_oneof![Just(0i64), Just(1), Just(-1), Just(i64::MAX)].prop_map(Val::Int),
        any::<bool>().prop_map(Val::Bool),
        prop_oneof![
            Just(0.5f64),
            Just(f64::INFINITY),
            Just(f64::NAN),
            Just(-0.0)
        ]
        .prop_map(Val::Float),
    ];
    leaf.prop_recursive(3, 12, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Val::Arr),
            proptest::collection::vec(("[a-z_]{1,8}", inner), 0..3).prop_map(Val::Inline),
        ]
    })
    .boxed()
}

fn size_val() -> BoxedStrategy<Val> {
    prop_oneof![
        3 => str_from(SIZES),
        2 => prop_oneof![Just(0i64), Just(1), Just(100), Just(1 << 30), Just(-5), Just(i64::MAX)]
            .prop_map(Val::Int),
        1 => any_val(),
    ]
    .boxed()
}

fn count_val() -> BoxedStrategy<Val> {
    prop_oneof![
        4 => prop_oneof![Just(0i64), Just(1), Just(10_000), Just(-1), Just(i64::MAX)].prop_map(Val::Int),
        1 => any_val(),
    ]
    .boxed()
}

type Entry = Option<(String, Val)>;

/// `key = value` with probability `p`.
fn entry(key: &'static str, p: f64, v: BoxedStrategy<Val>) -> BoxedStrategy<Entry> {
    let kv = v.prop_map(move |v| (key.to_string(), v));
    if p >= 1.0 {
        kv.prop_map(Some).boxed()
    } else {
        proptest::option::weighted(p, kv).boxed()
    }
}

/// A key no table knows, now and then.
fn junk_entry() -> BoxedStrategy<Entry> {
    proptest::option::weighted(
        0.05,
        (
            prop_oneof![
                select(
                    &[
                        "frobnicate",
                        "Name",
                        "path",
                        "op",
                        "action",
                        "agent",
                        "max_len"
                    ][..]
                )
                .prop_map(String::from),
                "\\PC{0,8}",
            ],
            any_val(),
        ),
    )
    .boxed()
}

/// `[[TABLE]]`, or now and then a wrong spelling of it.
fn header(table: &'static str, array: bool) -> BoxedStrategy<String> {
    let right = if array {
        format!("[[{table}]]")
    } else {
        format!("[{table}]")
    };
    prop_oneof![
        30 => Just(right),
        1 => Just(if array { format!("[{table}]") } else { format!("[[{table}]]") }),
        1 => Just(format!("[[{table}]")),
        1 => Just(format!("[[ {table} ]]")),
        1 => Just(format!("[[{table}.x]]")),
        1 => Just(format!("[[{}]]", table.to_uppercase())),
        1 => Just(String::new()),
    ]
    .boxed()
}

fn section(
    header: BoxedStrategy<String>,
    entries: Vec<BoxedStrategy<Entry>>,
) -> BoxedStrategy<Section> {
    let mut entries = entries;
    entries.push(junk_entry());
    (header, entries, any::<prop::sample::Index>(), any::<bool>())
        .prop_map(|(header, e, dup, do_dup)| {
            let mut entries: Vec<(String, Val)> = e.into_iter().flatten().collect();
            // A key given twice is a TOML error; try it now and then.
            if do_dup && !entries.is_empty() && dup.index(16) == 0 {
                let e = entries[dup.index(entries.len())].clone();
                entries.push(e);
            }
            Section { header, entries }
        })
        .boxed()
}

/// One table of any kind, with right and wrong keys and values.
fn any_section() -> BoxedStrategy<Section> {
    let name = || entry("name", 0.95, str_from(NAMES));
    let agents = || entry("agents", 0.3, list_of(str_from(AGENTS)));
    let action = || entry("action", 0.4, str_from(ACTIONS));
    let paths = || entry("paths", 0.95, list_of(str_from(GLOBS)));
    prop_oneof![
        1 => section(
            header("allow", true),
            vec![name(), agents(), paths(), entry("ops", 0.4, list_of(str_from(OPS)))]
        ),
        1 => section(
            header("deny", true),
            vec![name(), agents(), action(), paths(), entry("ops", 0.4, list_of(str_from(OPS)))]
        ),
        1 => section(header("read_only", true), vec![name(), agents(), action(), paths()]),
        1 => section(header("append_only", true), vec![name(), agents(), action(), paths()]),
        2 => section(
            header("content", true),
            vec![
                name(),
                agents(),
                action(),
                entry("regex", 0.95, str_from(REGEXES)),
                entry("in", 0.4, list_of(str_from(SCOPES))),
            ]
        ),
        1 => section(
            header("limit", true),
            vec![
                name(),
                agents(),
                action(),
                entry("max_file_size", 0.5, size_val()),
                entry("max_files", 0.3, count_val()),
                entry(
                    "quota",
                    0.3,
                    prop_oneof![
                        4 => proptest::collection::vec(
                            (select(&["working", "episodic", "semantic", "other"][..]).prop_map(String::from), size_val()),
                            0..4,
                        )
                        .prop_map(Val::Inline),
                        1 => any_val(),
                    ]
                    .boxed()
                ),
                entry("write_ops_per_sec", 0.3, count_val()),
                entry("write_bytes_per_sec", 0.3, size_val()),
            ]
        ),
        1 => section(
            header("file_types", true),
            vec![name(), agents(), action(), entry("forbid", 0.95, list_of(str_from(TYPES)))]
        ),
        1 => section(
            header("test", true),
            vec![
                entry("name", 0.5, str_from(NAMES)),
                entry("agent", 0.95, str_from(AGENTS)),
                entry("op", 0.95, str_from(TEST_OPS)),
                entry("path", 0.95, str_from(PATHS)),
                entry("target", 0.2, str_from(PATHS)),
                entry("content", 0.3, str_from(CONTENTS)),
                entry("xattr", 0.1, str_from(&["user.x", ""])),
                entry("kind", 0.2, str_from(KINDS)),
                entry("mode", 0.1, count_val()),
                entry("chown", 0.1, any::<bool>().prop_map(Val::Bool).boxed()),
                entry("replaces", 0.1, any::<bool>().prop_map(Val::Bool).boxed()),
                entry("offset", 0.1, count_val()),
                entry("size_before", 0.1, count_val()),
                entry("size", 0.1, count_val()),
                entry("class_bytes", 0.1, count_val()),
                entry("files", 0.1, count_val()),
                entry("expect", 0.95, str_from(EXPECTS)),
                entry("rule", 0.4, str_from(NAMES)),
            ]
        ),
        1 => section(
            header("builtin", false),
            vec![
                entry("enabled", 0.3, any::<bool>().prop_map(Val::Bool).boxed()),
                entry("secrets", 0.5, any::<bool>().prop_map(Val::Bool).boxed()),
                entry(
                    "disable",
                    0.5,
                    list_of(str_from(&["max-file-size", "own-memory", "github-token", "nope", "", "two\nlines"]))
                ),
            ]
        ),
        1 => section(header("default", false), vec![entry("action", 0.9, str_from(ACTIONS))]),
        1 => section(
            header("identity", false),
            vec![
                entry("1001", 0.8, str_from(AGENTS)),
                entry("1002", 0.5, str_from(AGENTS)),
                entry("01001", 0.2, str_from(AGENTS)),
                entry("root", 0.1, str_from(AGENTS)),
                entry("-1", 0.1, str_from(AGENTS)),
            ]
        ),
    ]
    .boxed()
}

fn assembled_policy() -> BoxedStrategy<String> {
    proptest::collection::vec(any_section(), 0..7)
        .prop_map(|s| render_file(&s))
        .boxed()
}

// ---------------------------------------------------------------------------------------
// Byte-level mutations of valid policies.

/// The example of docs/policy.md ("An example").
const DOC_EXAMPLE: &str = r#"# Agents may also use a shared scratch area.
[[allow]]
name = "shared-scratch"
paths = ["shared/**"]

# Nobody rewrites the facts once filed.
[[read_only]]
name = "facts-are-final"
paths = ["mem/semantic/facts/**"]

# No shell scripts, but only refuse (no kill) while we learn.
[[deny]]
name = "no-scripts"
paths = ["**/*.sh", "**/*.bash"]
ops = ["create"]
action = "deny"

# Our own secrets, in file content and names.
[[content]]
name = "internal-hostname"
regex = '(?-u:\b)[a-z0-9-]{1,40}\.corp\.example\.com'

# Try a rule out before enforcing it.
[[content]]
name = "maybe-ssn"
regex = '(?-u:\b)[0-9]{3}-[0-9]{2}-[0-9]{4}(?-u:\b)'
action = "audit"

[[limit]]
name = "small-agents"
agents = ["scout", "intern"]
max_file_size = "10 MiB"
max_files = 10_000
quota = { working = "256 MiB", episodic = "1 GiB", semantic = "1 GiB" }
write_ops_per_sec = 2000
write_bytes_per_sec = "50 MiB"
action = "deny"

[[file_types]]
name = "plain-files-only"
forbid = ["symlink", "hardlink", "exec"]

[identity]
1001 = "scout"

[[test]]
name = "a secret host name in a note is caught"
agent = "scout"
op = "write"
path = "mem/semantic/notes.md"
content = "deploy to db1.corp.example.com"
expect = "kill"
rule = "internal-hostname"
"#;

/// Snippets spliced into text: TOML syntax, policy words, awkward characters.
const SNIPPETS: &[&str] = &[
    "[",
    "]",
    "[[",
    "]]",
    "=",
    "\"",
    "'",
    "'''",
    "\"\"\"",
    "\n",
    " ",
    "{",
    "}",
    ",",
    "#",
    "\\",
    "\\u",
    "\\U0010FFFF",
    "\\x41",
    "\\e",
    ".",
    "0",
    "-1",
    "1e9",
    "true",
    "\0",
    "\r",
    "\t",
    "é",
    "\u{feff}",
    "\u{2028}",
    "*",
    "**",
    "?",
    "(",
    ")",
    "{1,3}",
    "+",
    "|",
    "name",
    "paths",
    "regex",
    "agents",
    "action",
    "ops",
    "kill",
    "deny",
    "audit",
    "allow",
    "sys",
    "[[allow]]\nname = \"z\"\npaths = [\"**\"]\n",
    "[builtin]\nenabled = false\n",
    "[[content]]\nname = \"c\"\nregex = 'x{1,3}'\n",
    "[default]\naction = \"audit\"\n",
];

#[derive(Clone, Debug)]
enum Edit {
    Delete(prop::sample::Index, u8),
    Insert(prop::sample::Index, &'static str),
    Duplicate(prop::sample::Index, u8),
    Replace(prop::sample::Index, char),
    SwapLines(prop::sample::Index, prop::sample::Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    let at = any::<prop::sample::Index>;
    prop_oneof![
        1 => (at(), 1u8..16).prop_map(|(a, n)| Edit::Delete(a, n)),
        3 => (at(), select(SNIPPETS)).prop_map(|(a, s)| Edit::Insert(a, s)),
        1 => (at(), 1u8..40).prop_map(|(a, n)| Edit::Duplicate(a, n)),
        1 => (at(), any::<char>()).prop_map(|(a, c)| Edit::Replace(a, c)),
        1 => (at(), at()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
    ]
}

/// The char boundary at or before `i`.
fn floor(text: &str, i: usize) -> usize {
    let mut i = i.min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn apply(text: &mut String, e: &Edit) {
    let len = text.len();
    let pos = |ix: &prop::sample::Index| floor(text, ix.index(len + 1));
    match e {
        Edit::Delete(a, n) => {
            let s = pos(a);
            let end = floor(text, s + usize::from(*n));
            text.replace_range(s..end, "");
        }
        Edit::Insert(a, snippet) => {
            let s = pos(a);
            text.insert_str(s, snippet);
        }
        Edit::Duplicate(a, n) => {
            let s = pos(a);
            let end = floor(text, s + usize::from(*n));
            let copy = text[s..end].to_string();
            text.insert_str(end, &copy);
        }
        Edit::Replace(a, c) => {
            let s = pos(a);
            if let Some(old) = text[s..].chars().next() {
                text.replace_range(s..s + old.len_utf8(), &c.to_string());
            }
        }
        Edit::SwapLines(a, b) => {
            let mut lines: Vec<&str> = text.split('\n').collect();
            let n = lines.len();
            lines.swap(a.index(n), b.index(n));
            *text = lines.join("\n");
        }
    }
}

fn mutated_valid_policy() -> BoxedStrategy<String> {
    let base = prop_oneof![
        Just(DOC_EXAMPLE.to_string()),
        Just(default_policy_toml()),
        Just(format!("[builtin]\nenabled = false\n{}", BUILTIN_TOML)),
    ];
    (base, proptest::collection::vec(edit(), 1..6))
        .prop_map(|(mut text, edits)| {
            for e in &edits {
                apply(&mut text, e);
            }
            text
        })
        .boxed()
}

// ---------------------------------------------------------------------------------------
// Round trip: render for an agent, load again, decide the same.

fn valid_section(i: usize) -> BoxedStrategy<Section> {
    let name = move |kind: &'static str| {
        select(GOOD_NAMES)
            .prop_map(move |n| Some(("name".to_string(), Val::Str(format!("{kind}-{n}-{i}"), 0))))
            .boxed()
    };
    let agents = || entry("agents", 0.3, good_list(good_str(GOOD_AGENTS)));
    let action = || entry("action", 0.5, good_str(GOOD_ACTIONS));
    let paths = || entry("paths", 1.0, good_list(good_str(GOOD_GLOBS)));
    let ops = || {
        entry(
            "ops",
            0.4,
            good_list(good_str(&["create", "write", "delete"])),
        )
    };
    let vsection = |kind: &'static str, entries: Vec<BoxedStrategy<Entry>>| {
        (entries,)
            .prop_map(move |(e,)| Section {
                header: format!("[[{kind}]]"),
                entries: e.into_iter().flatten().collect(),
            })
            .boxed()
    };
    let size = || {
        prop_oneof![
            select(&["10 MiB", "1 KiB", "5", "1 GB"][..]).prop_map(|s| Val::Str(s.to_string(), 0)),
            prop_oneof![Just(1i64), Just(100), Just(4096)].prop_map(Val::Int),
        ]
        .boxed()
    };
    prop_oneof![
        vsection("allow", vec![name("allow"), agents(), paths(), ops()]),
        vsection(
            "deny",
            vec![name("deny"), agents(), action(), paths(), ops()]
        ),
        vsection("read_only", vec![name("ro"), agents(), action(), paths()]),
        vsection("append_only", vec![name("ao"), agents(), action(), paths()]),
        vsection(
            "content",
            vec![
                name("content"),
                agents(),
                action(),
                entry("regex", 1.0, good_str(GOOD_REGEXES)),
                entry(
                    "in",
                    0.4,
                    good_list(good_str(&["content", "name", "symlink", "xattr"]))
                ),
            ]
        ),
        vsection(
            "limit",
            vec![
                name("limit"),
                agents(),
                action(),
                entry("max_file_size", 1.0, size()),
                entry(
                    "max_files",
                    0.3,
                    prop_oneof![Just(1i64), Just(3)].prop_map(Val::Int).boxed()
                ),
                entry(
                    "quota",
                    0.3,
                    size()
                        .prop_map(|s| Val::Inline(vec![("semantic".into(), s)]))
                        .boxed()
                ),
                entry("write_ops_per_sec", 0.2, Just(Val::Int(5)).boxed()),
                entry("write_bytes_per_sec", 0.2, size()),
            ]
        ),
        vsection(
            "file_types",
            vec![
                name("types"),
                agents(),
                action(),
                entry(
                    "forbid",
                    1.0,
                    good_list(good_str(&[
                        "symlink", "hardlink", "special", "xattr", "exec"
                    ]))
                ),
            ]
        ),
    ]
    .boxed()
}

/// Valid policies: every rule kind with values from the valid pools, each rule scoped to
/// all agents or a few; sometimes without the built-in policy or its secrets.
fn valid_policy() -> BoxedStrategy<String> {
    let sections = (1usize..6).prop_flat_map(|n| (0..n).map(valid_section).collect::<Vec<_>>());
    (
        sections,
        prop_oneof![3 => Just(None), 1 => select(GOOD_ACTIONS).prop_map(Some)],
        prop_oneof![
            2 => Just(""),
            1 => Just("[builtin]\nsecrets = false\n"),
            1 => Just("[builtin]\nenabled = false\n"),
            1 => Just("[builtin]\ndisable = [\"own-memory\", \"max-file-size\"]\n"),
        ],
        proptest::option::of(select(GOOD_AGENTS)),
    )
        .prop_map(|(sections, default_action, builtin, uid_agent)| {
            let mut text = builtin.to_string();
            if let Some(a) = default_action {
                text.push_str(&format!("[default]\naction = \"{a}\"\n"));
            }
            if let Some(a) = uid_agent {
                text.push_str(&format!("[identity]\n1001 = \"{a}\"\n"));
            }
            text.push('\n');
            text.push_str(&render_file(&sections));
            text
        })
        .boxed()
}

/// The calls an agent's decisions are compared on.
fn calls_for(agent: &str) -> Vec<Call<'_>> {
    let mut calls = Vec::new();
    let paths: &[&[u8]] = &[
        b"mem/a",
        b"mem/semantic/facts/x",
        b"mem/episodic/log",
        b"shared/run.sh",
        b"state/c1",
        b"mem/\xc3\xa9/x",
        b"mem/a\x01b",
        b"mem/a\xc2\x85b\xe2\x80\x8b",
        b"mem/tab\tand\"quote'",
        b"mem/*",
        b"mem/x",
        b"other",
    ];
    let data: &[&[u8]] = &[
        b"hello",
        b"AKIAIOSFODNN7EXAMPLE",
        b"secret zebra ZEBRA",
        b"123-45-6789",
        b"\x00\x01",
        b"\x01x",
        b"it's \"quoted\" tab\there",
        b"a\xc2\x85b",
        b"\xff",
        &[b'x'; 300],
    ];
    for path in paths {
        for op in [
            Op::Create,
            Op::Mkdir,
            Op::Unlink,
            Op::Rmdir,
            Op::SetAttr,
            Op::Mknod,
        ] {
            let kind = match op {
                Op::Mkdir | Op::Rmdir => FileKind::Dir,
                Op::Mknod => FileKind::Fifo,
                _ => FileKind::File,
            };
            calls.push(Call {
                kind: Some(kind),
                mode: Some(if op == Op::SetAttr { 0o755 } else { 0o644 }),
                ..Call::new(agent, op, path)
            });
        }
        calls.push(Call {
            target: Some(b"mem/moved"),
            kind: Some(FileKind::File),
            ..Call::new(agent, Op::Rename, path)
        });
        calls.push(Call {
            target: Some(path),
            kind: Some(FileKind::Symlink),
            data: Some(b"mem/target"),
            ..Call::new(agent, Op::Symlink, b"mem/link")
        });
        calls.push(Call {
            xattr_name: Some(b"user.x"),
            data: Some(b"AKIAIOSFODNN7EXAMPLE"),
            ..Call::new(agent, Op::SetXattr, path)
        });
        for bytes in data {
            let n = bytes.len() as u64;
            calls.push(Call {
                data: Some(bytes),
                content: Some(Content {
                    bytes,
                    at: 0,
                    changed: 0..n,
                    file_size: n,
                }),
                size: Some(SizeChange {
                    before: 0,
                    after: n,
                }),
                usage: Some(UsageChange {
                    before: Usage {
                        class_bytes: 0,
                        files: 1,
                    },
                    after: Usage {
                        class_bytes: n,
                        files: 2,
                    },
                }),
                ..Call::new(agent, Op::Write, path)
            });
        }
    }
    calls
}

/// What a decision says, without where the rules came from.
fn outcome(v: &Verdict) -> (Decision, Option<String>, Vec<String>) {
    (
        v.decision.clone(),
        v.allowed_by.as_deref().map(String::from),
        v.audited.iter().map(|f| f.rule.to_string()).collect(),
    )
}

fn check_roundtrip(original: &Ruleset) -> TestCaseResult {
    for agent in ["a", "scout"] {
        // The rendered text states its `[builtin]` and `[default]` itself.
        let rendered = original.render_for(agent);
        let text = rendered.as_str();
        let again = match Ruleset::compile(vec![Source::new(FILE, text)]) {
            Ok(r) => r,
            Err(e) => {
                return Err(TestCaseError::fail(format!(
                    "the rules rendered for `{agent}` do not load again:\n{e}\n--- rendered:\n{rendered}"
                )))
            }
        };
        for call in calls_for(agent) {
            let want = outcome(&original.decide(&call));
            let got = outcome(&again.decide(&call));
            prop_assert_eq!(
                &want,
                &got,
                "{} {:?}: decided differently after render + reload\n--- rendered:\n{}",
                call.op,
                String::from_utf8_lossy(call.path),
                rendered
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The targets.

fn token_soup() -> impl Strategy<Value = String> {
    proptest::collection::vec(select(SNIPPETS), 0..40).prop_map(|t| t.concat())
}

#[test]
fn fuzz_policy_text() {
    let text = prop_oneof![
        3 => any::<String>(),
        2 => "\\PC{0,200}",
        3 => token_soup(),
        1 => proptest::collection::vec(any::<u8>(), 0..200)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ];
    let loaded = std::cell::Cell::new(0u64);
    let r = harness::fuzz_for("policy-text", text, |text| {
        if check_compile(&text)?.is_some() {
            loaded.set(loaded.get() + 1);
        }
        Ok(())
    });
    println!(
        "fuzz policy-text: {} of {} inputs loaded",
        loaded.get(),
        r.inputs
    );
}

#[test]
fn fuzz_policy_mutated() {
    let text = prop_oneof![
        3 => assembled_policy(),
        2 => mutated_valid_policy(),
        1 => (assembled_policy(), proptest::collection::vec(edit(), 1..4)).prop_map(|(mut t, edits)| {
            for e in &edits {
                apply(&mut t, e);
            }
            t
        }),
    ];
    let (loaded, round_trips) = (std::cell::Cell::new(0u64), std::cell::Cell::new(0u64));
    let r = harness::fuzz_for("policy-mutated", text, |text| {
        if let Some(rules) = check_compile(&text)? {
            loaded.set(loaded.get() + 1);
            // [[test]] cases are not rendered, but a policy that passed them decides the
            // same without them.
            check_roundtrip(&rules)?;
            round_trips.set(round_trips.get() + 1);
        }
        Ok(())
    });
    println!(
        "fuzz policy-mutated: {} of {} inputs loaded, {} rendered and reloaded",
        loaded.get(),
        r.inputs,
        round_trips.get()
    );
}

#[test]
fn fuzz_policy_roundtrip() {
    let loaded = std::cell::Cell::new(0u64);
    let r = harness::fuzz_for("policy-roundtrip", valid_policy(), |text| {
        if let Some(rules) = check_compile(&text)? {
            check_roundtrip(&rules)?;
            loaded.set(loaded.get() + 1);
        }
        Ok(())
    });
    println!(
        "fuzz policy-roundtrip: {} of {} inputs loaded, rendered and reloaded",
        loaded.get(),
        r.inputs
    );
}

// ---------------------------------------------------------------------------------------
// The harness's own sanity, and regressions found by the targets.

#[test]
fn the_seed_policies_are_valid() {
    for text in [
        DOC_EXAMPLE.to_string(),
        default_policy_toml(),
        format!("[builtin]\nenabled = false\n{BUILTIN_TOML}"),
    ] {
        let rules = Ruleset::compile(vec![Source::new(FILE, text.as_str())])
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        check_roundtrip(&rules).unwrap();
    }
}
