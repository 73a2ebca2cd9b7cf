//! The policy language as a user meets it: errors that point at file:line:column, unknown
//! keys refused, unbounded regexes refused by name, `[[test]]` cases, and how several files
//! combine.

use agentfs_policy::*;

fn compile(files: &[(&str, &str)]) -> Result<Ruleset, PolicyError> {
    Ruleset::compile(files.iter().map(|(n, t)| Source::new(*n, *t)).collect())
}

/// The diagnostics of a policy that must not compile, as `FILE:LINE:COL: message` lines.
fn errors(files: &[(&str, &str)]) -> Vec<String> {
    match compile(files) {
        Ok(_) => panic!("the policy compiled"),
        Err(e) => e.diagnostics.iter().map(|d| d.to_string()).collect(),
    }
}

fn one_error(text: &str) -> String {
    let e = errors(&[("p.toml", text)]);
    assert_eq!(e.len(), 1, "{e:#?}");
    e.into_iter().next().unwrap()
}

fn write<'a>(agent: &'a str, path: &'a [u8], data: &'a [u8]) -> Call<'a> {
    Call {
        data: Some(data),
        content: Some(Content {
            bytes: data,
            at: 0,
            changed: 0..data.len() as u64,
            file_size: data.len() as u64,
        }),
        size: Some(SizeChange {
            before: 0,
            after: data.len() as u64,
        }),
        ..Call::new(agent, Op::Write, path)
    }
}

#[test]
fn syntax_errors_point_at_line_and_column() {
    assert_eq!(
        one_error("[[allow]]\nname = \"a\"\npaths = [\"mem/**\"\n"),
        "p.toml:3:18: unclosed array, expected `]`"
    );
    let e = one_error("[[allow]]\nname = a\n");
    assert!(e.starts_with("p.toml:2:8: "), "{e}");
}

#[test]
fn unknown_keys_are_refused_everywhere() {
    let cases = [
        ("frobnicate = 1\n", "p.toml:1:1: unknown field `frobnicate`"),
        (
            "[[allow]]\nname = \"a\"\npaths = [\"mem/**\"]\naction = \"kill\"\n",
            "p.toml:4:1: unknown field `action`",
        ),
        (
            "[[content]]\nname = \"a\"\nregex = 'x'\nregexp = 'y'\n",
            "p.toml:4:1: unknown field `regexp`",
        ),
        (
            "[[limit]]\nname = \"a\"\nquota = { working = 1, scratch = 2 }\n",
            "p.toml:3:24: unknown field `scratch`",
        ),
        ("[builtin]\nsecret = false\n", "p.toml:2:1: unknown field `secret`"),
        (
            "[[test]]\nagent = \"a\"\nop = \"write\"\npath = \"x\"\nexpect = \"allow\"\ncontents = \"x\"\n",
            "p.toml:6:1: unknown field `contents`",
        ),
    ];
    for (text, want) in cases {
        let e = one_error(text);
        assert!(e.starts_with(want), "{text:?}:\n got {e}\nwant {want}");
    }
}

#[test]
fn bad_values_are_named() {
    let e = one_error("[[deny]]\nname = \"a\"\npaths = [\"x\"]\naction = \"kil\"\n");
    assert_eq!(
        e,
        "p.toml:4:10: unknown action `kil`: use \"kill\", \"deny\" or \"audit\""
    );
    let e = one_error("[[deny]]\nname = \"a\"\npaths = [\"x\"]\nops = [\"rename\"]\n");
    assert!(e.starts_with("p.toml:4:8: unknown variant `rename`"), "{e}");
    let e = one_error("[[limit]]\nname = \"a\"\nmax_file_size = \"10 parsecs\"\n");
    assert!(e.starts_with("p.toml:3:17: invalid byte count"), "{e}");
    let e = one_error("[limit]\nname = \"a\"\n");
    assert_eq!(
        e,
        "p.toml:1:1: [limit] must be written [[limit]]: each rule is its own table in an array"
    );
}

#[test]
fn unbounded_regex_is_refused_naming_the_rule() {
    let e =
        one_error("[[content]]\nname = \"internal-url\"\nregex = 'https://corp\\.example/.*'\n");
    assert!(
        e.starts_with(
            "p.toml:3:9: content rule `internal-url`: the regex has no maximum match length"
        ),
        "{e}"
    );
    assert!(e.contains("`.{0,200}` instead of `.*`"), "{e}");
    let e = one_error("[[content]]\nname = \"e\"\nregex = 'a*'\n");
    assert!(
        e.contains("content rule `e`: the regex matches the empty string"),
        "{e}"
    );
    let e = one_error("[[content]]\nname = \"huge\"\nregex = '[a-z]{1,70000}'\n");
    assert!(
        e.contains("content rule `huge`") && e.contains("64 KiB"),
        "{e}"
    );
    // A syntax error inside a literal string points at the character.
    let e = one_error("[[content]]\nname = \"p\"\nregex = 'ab(cd'\n");
    assert_eq!(
        e,
        "p.toml:3:12: content rule `p`: invalid regex at character 3: unclosed group"
    );
}

#[test]
fn rule_errors_are_all_reported_in_file_order() {
    let text = "\
[[deny]]
name = \"d\"
paths = [\"/abs/**\", \"mem/[x\"]

[[content]]
name = \"greedy\"
regex = 'secret=.+'

[[allow]]
name = \"d\"
paths = [\"mem/**\"]
ops = []

[[limit]]
name = \"nothing\"

[[file_types]]
name = \"none\"
forbid = []
";
    let e = errors(&[("p.toml", text)]);
    let want = [
        "p.toml:3:10: rule `d`: path globs are relative to the agent's root",
        "p.toml:3:21: rule `d`: unclosed character class",
        "p.toml:7:9: content rule `greedy`: the regex has no maximum match length",
        "p.toml:10:8: rule name `d` is already used at p.toml:2",
        "p.toml:12:7: ops = [] names no right",
        "p.toml:15:8: limit rule `nothing` sets no limit",
        "p.toml:19:10: file_types rule `none` forbids nothing",
    ];
    assert_eq!(e.len(), want.len(), "{e:#?}");
    for (got, want) in e.iter().zip(want) {
        assert!(got.starts_with(want), "\n got {got}\nwant {want}");
    }
}

#[test]
fn names_agents_identity_and_builtin_are_validated() {
    let e = one_error("[[allow]]\nname = \"own-memory\"\npaths = [\"x\"]\n");
    assert!(
        e.starts_with("p.toml:2:8: rule name `own-memory` is already used by the built-in policy"),
        "{e}"
    );
    assert!(e.contains("[builtin] disable = [\"own-memory\"]"), "{e}");
    let e = one_error("[[allow]]\nname = \"default-deny\"\npaths = [\"x\"]\n");
    assert!(e.contains("is reserved"), "{e}");
    let e = one_error("[[allow]]\nname = \"has space\"\npaths = [\"x\"]\n");
    assert!(e.starts_with("p.toml:2:8: rule name \"has space\""), "{e}");
    let e = one_error("[[allow]]\nname = \"a\"\nagents = []\npaths = [\"x\"]\n");
    assert!(
        e.starts_with("p.toml:3:10: rule `a`: agents = [] applies to no agent"),
        "{e}"
    );
    let e = one_error("[[allow]]\nname = \"a\"\nagents = [\"x/y\"]\npaths = [\"x\"]\n");
    assert!(
        e.starts_with("p.toml:3:11: \"x/y\" is not a valid agent name"),
        "{e}"
    );
    let e = one_error("[identity]\nroot = \"a\"\n");
    assert!(
        e.starts_with("p.toml:2:1: [identity] keys are numeric uids"),
        "{e}"
    );
    let e = one_error("[builtin]\ndisable = [\"no-such-rule\"]\n");
    assert!(
        e.starts_with("p.toml:2:12: there is no built-in rule named `no-such-rule`"),
        "{e}"
    );
    // The same uid mapped twice across files.
    let e = errors(&[
        ("a.toml", "[identity]\n1001 = \"alice\"\n"),
        ("b.toml", "[identity]\n1001 = \"bob\"\n"),
    ]);
    assert_eq!(
        e,
        ["b.toml:2:1: uid 1001 is already mapped to agent `alice` at a.toml:2"]
    );
    // The same mapping twice is fine.
    compile(&[
        ("a.toml", "[identity]\n1001 = \"alice\"\n"),
        ("b.toml", "[identity]\n1001 = \"alice\"\n"),
    ])
    .unwrap();
}

#[test]
fn test_cases_run_before_activation() {
    let ok = "\
[[content]]
name = \"codeword\"
regex = 'ZEBRA-[0-9]{4}'

[[test]]
name = \"codeword kills\"
agent = \"a\"
op = \"write\"
path = \"mem/semantic/x\"
content = \"see ZEBRA-1234\"
expect = \"kill\"
rule = \"codeword\"

[[test]]
agent = \"a\"
op = \"symlink\"
path = \"mem/semantic/l\"
content = \"ZEBRA-0000\"
expect = \"kill\"
";
    let r = compile(&[("p.toml", ok)]).unwrap();
    assert_eq!(r.summary().tests_run, 2);

    let failing = ok.replace(
        "expect = \"kill\"\nrule = \"codeword\"",
        "expect = \"allow\"",
    );
    let e = errors(&[("p.toml", &failing)]);
    assert_eq!(
        e,
        ["p.toml:5:1: test \"codeword kills\" failed: expected allow, got kill by rule `codeword`: the file content of mem/semantic/x matches a forbidden pattern"]
    );
    let wrong_rule = ok.replace("rule = \"codeword\"", "rule = \"other\"");
    let e = errors(&[("p.toml", &wrong_rule)]);
    assert!(e[0].starts_with("p.toml:5:1: test \"codeword kills\" failed: expected kill by rule `other`, got kill by rule `codeword`"), "{e:?}");
    let unnamed = ok.replace("content = \"ZEBRA-0000\"", "content = \"zebra\"");
    let e = errors(&[("p.toml", &unnamed)]);
    assert_eq!(
        e,
        ["p.toml:14:1: test #2 failed: expected kill, got allow by rule `own-memory`"]
    );
    let bad_op = ok.replace("op = \"symlink\"", "op = \"ln\"");
    let e = errors(&[("p.toml", &bad_op)]);
    assert!(
        e[0].starts_with("p.toml:16:6: test #2: unknown op `ln` (ops: create, mkdir"),
        "{e:?}"
    );
}

#[test]
fn test_cases_see_every_file() {
    // A case in one file is decided by the whole policy: here a rule from another file.
    let a = "[[test]]\nagent = \"a\"\nop = \"create\"\npath = \"mem/working/run.sh\"\nexpect = \"deny\"\nrule = \"no-scripts\"\n";
    let b = "[[deny]]\nname = \"no-scripts\"\npaths = [\"**/*.sh\"]\nops = [\"create\"]\naction = \"deny\"\n";
    compile(&[("a.toml", a), ("b.toml", b)]).unwrap();
    let e = errors(&[("a.toml", a)]);
    assert!(
        e[0].starts_with(
            "a.toml:1:1: test #1 failed: expected deny by rule `no-scripts`, got allow"
        ),
        "{e:?}"
    );
}

#[test]
fn files_combine_deny_wins_and_limits_take_the_strictest() {
    let grant = "[[allow]]\nname = \"shared\"\npaths = [\"shared/**\"]\n";
    let forbid =
        "[[read_only]]\nname = \"shared-ro\"\npaths = [\"shared/docs/**\"]\naction = \"deny\"\n";
    let big = "[[limit]]\nname = \"big\"\nmax_file_size = \"1 MiB\"\n";
    let small = "[[limit]]\nname = \"small\"\nmax_file_size = 100\naction = \"deny\"\n";
    let r = compile(&[
        ("a.toml", grant),
        ("b.toml", forbid),
        ("c.toml", big),
        ("d.toml", small),
    ])
    .unwrap();
    assert!(r.decide(&write("x", b"shared/a", b"hi")).is_allowed());
    assert_eq!(
        r.decide(&write("x", b"shared/docs/a", b"hi")).decision,
        Decision::Deny {
            rule: "shared-ro".into()
        }
    );
    let data = vec![b'a'; 200];
    assert_eq!(
        r.decide(&write("x", b"mem/working/a", &data)).refused_by(),
        Some("small")
    );
    // Kill beats deny whatever the names.
    let kill_small = small.replace("action = \"deny\"\n", "");
    let r = compile(&[("a.toml", &kill_small), ("b.toml", big)]).unwrap();
    let data = vec![b'a'; 2 << 20];
    let v = r.decide(&write("x", b"mem/working/a", &data));
    assert_eq!(v.decision, Decision::Kill { rule: "big".into() });
}

#[test]
fn default_action_is_the_strictest_stated() {
    let audit = "[default]\naction = \"audit\"\n";
    let deny = "[default]\naction = \"deny\"\n";
    let outside = Call::new("a", Op::Create, b"outside");
    let r = compile(&[("a.toml", audit)]).unwrap();
    let v = r.decide(&outside);
    assert!(v.is_allowed());
    assert_eq!(&*v.audited[0].rule, "default-deny");
    let r = compile(&[("a.toml", audit), ("b.toml", deny)]).unwrap();
    assert_eq!(
        r.decide(&outside).decision,
        Decision::Deny {
            rule: "default-deny".into()
        }
    );
    let r = compile(&[]).unwrap();
    assert_eq!(
        r.decide(&outside).decision,
        Decision::Kill {
            rule: "default-deny".into()
        }
    );
}

#[test]
fn builtin_parts_can_be_left_out() {
    let key = b"AKIAIOSFODNN7EXAMPLE";
    let r = compile(&[("a.toml", "[builtin]\nsecrets = false\n")]).unwrap();
    assert!(r.decide(&write("a", b"mem/semantic/x", key)).is_allowed());
    assert_eq!(r.window(), 0);
    assert_eq!(r.summary().builtin, "enabled without secrets");
    let r = compile(&[("a.toml", "[builtin]\ndisable = [\"aws-access-key-id\"]\n")]).unwrap();
    assert!(r.decide(&write("a", b"mem/semantic/x", key)).is_allowed());
    assert_eq!(
        r.decide(&write(
            "a",
            b"mem/semantic/x",
            b"-----BEGIN EC PRIVATE KEY-----"
        ))
        .refused_by(),
        Some("pem-private-key")
    );
    // Replacing a built-in rule under its own name.
    let r = compile(&[(
        "a.toml",
        "[builtin]\ndisable = [\"max-file-size\"]\n[[limit]]\nname = \"max-file-size\"\nmax_file_size = 10\n",
    )])
    .unwrap();
    assert_eq!(
        r.decide(&write("a", b"mem/semantic/x", b"01234567890"))
            .refused_by(),
        Some("max-file-size")
    );
    let r = compile(&[("a.toml", "[builtin]\nenabled = false\n")]).unwrap();
    assert_eq!(r.rule_names().count(), 0);
    let s = r.summary();
    assert_eq!(s.builtin, "disabled");
    assert!(s.warnings[0].contains("no allow rule"), "{s}");
}

#[test]
fn version_is_blake3_of_the_sources() {
    let a = compile(&[("a.toml", "[default]\naction = \"deny\"\n")]).unwrap();
    let b = compile(&[("other-name.toml", "[default]\naction = \"deny\"\n")]).unwrap();
    let c = compile(&[("a.toml", "[default]\naction = \"deny\" \n")]).unwrap();
    assert_eq!(a.version(), b.version());
    assert_ne!(a.version(), c.version());
    assert_ne!(a.version(), Ruleset::builtin().version());
    assert_eq!(a.version().to_hex().len(), 64);
}
