//! Unit tests of the whole crate: the built-in policy and table-driven decisions per rule
//! kind. The language's error messages and the proptests are in `policy/tests/`.

use crate::*;

fn rules(text: &str) -> Ruleset {
    match Ruleset::compile(vec![Source::new("p.toml", text)]) {
        Ok(r) => r,
        Err(e) => panic!("policy does not compile:\n{e}"),
    }
}

/// A write of `data` appended to an empty file, with the exact window.
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

fn outcome(v: &Verdict) -> String {
    match v.refused_by() {
        Some(rule) => format!("{} {rule}", v.outcome()),
        None if !v.audited.is_empty() => format!("audit {}", v.audited[0].rule),
        None => "allow".to_string(),
    }
}

#[test]
fn builtin_policy_compiles_and_its_cases_pass() {
    let r = Ruleset::builtin();
    assert_eq!(r.tests_run, 9);
    assert!(
        r.max_match_len() > 100 && r.max_match_len() < 1024,
        "{}",
        r.max_match_len()
    );
    assert_eq!(r.window(), r.max_match_len() + 2 * LOOK_AROUND);
    assert!(!r.zero_fill_can_match());
    for (name, _) in BUILTIN_SECRETS {
        assert!(r.rule_names().any(|n| n == *name), "{name} missing");
    }
    let content_rules = r
        .rules
        .iter()
        .filter(|m| m.kind == crate::compile::RuleKind::Content)
        .count();
    assert_eq!(content_rules, BUILTIN_SECRETS.len());
}

#[test]
fn default_policy_file_checks_standalone() {
    let text = default_policy_toml();
    let r = rules(&text);
    assert!(!r.builtin.enabled);
    assert_eq!(r.tests_run, 9);
    assert_eq!(r.rules.len(), Ruleset::builtin().rules.len());
}

#[test]
fn builtin_secrets_catch_samples_and_spare_clean_text() {
    let r = Ruleset::builtin();
    let samples: &[(&str, &str)] = &[
        ("aws-access-key-id", "id AKIAIOSFODNN7EXAMPLE here"),
        (
            "aws-secret-access-key",
            "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        ),
        ("pem-private-key", "-----BEGIN RSA PRIVATE KEY-----\nMIIE"),
        ("pem-private-key", "-----BEGIN OPENSSH PRIVATE KEY-----"),
        ("pem-private-key", "-----BEGIN PRIVATE KEY-----"),
        ("pem-private-key", "-----BEGIN PGP PRIVATE KEY BLOCK-----"),
        ("github-token", "token ghp_0123456789abcdefghijABCDEFGHIJ012345"),
        (
            "github-fine-grained-token",
            "github_pat_11ABCDEFG0123456789abc_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456",
        ),
        ("gitlab-token", "glpat-abcdefghij0123456789"),
        ("slack-token", "xoxb-123456789012-abcdefghijklmnop"),
        (
            "slack-webhook-url",
            "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
        ),
        ("google-api-key", "AIzaSyA-1234567890abcdefghijklmnopqrstu"),
        ("stripe-secret-key", "sk_live_0123456789abcdefghijklmn"),
        (
            "openai-api-key",
            "sk-proj-abcdefghijklmnopqrstT3BlbkFJabcdefghijklmnopqrst",
        ),
        (
            "anthropic-api-key",
            "sk-ant-api03-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ),
        ("npm-token", "npm_abcdefghijklmnopqrstuvwxyz0123456789"),
        ("generic-password-assignment", "password = \"hunter2hunter2\""),
        ("generic-password-assignment", "DB_PASSWORD=s3cr3tpass"),
        ("generic-secret-assignment", "client_secret: 'abcdefgh12345678'"),
        ("generic-api-key-assignment", "API_KEY=abcdef0123456789"),
    ];
    for (rule, text) in samples {
        let v = r.decide(&write("a", b"mem/semantic/x", text.as_bytes()));
        assert_eq!(v.refused_by(), Some(*rule), "{text:?}: {v:?}");
    }
    let clean = [
        "The quick brown fox jumps over the lazy dog.",
        "password = os.environ[\"DB_PASSWORD\"]",
        "password: $DB_PASSWORD",
        "secret = {{ vault.secret }}",
        "api_key=<your key here>",
        "Use AKIA followed by sixteen characters.",
        "-----BEGIN PUBLIC KEY-----",
        "-----BEGIN CERTIFICATE-----",
        "fn password_hash(password: &str) -> String",
        "let secret = derive(&seed);",
        "ghp_short",
    ];
    for text in clean {
        let v = r.decide(&write("a", b"mem/semantic/x", text.as_bytes()));
        assert!(v.is_allowed(), "{text:?}: {v:?}");
    }
}

/// One policy with every rule kind, and a table of calls against it.
const ALL_KINDS: &str = r#"
[builtin]
enabled = false

[default]
action = "deny"

[identity]
1001 = "alice"
1002 = "bob"

[[allow]]
name = "mem"
paths = ["mem/**"]

[[allow]]
name = "inbox-create-only"
paths = ["inbox/*"]
ops = ["create"]

[[deny]]
name = "no-scripts"
paths = ["**/*.sh"]
ops = ["create"]

[[deny]]
name = "bob-no-delete"
agents = ["bob"]
paths = ["mem/**"]
ops = ["delete"]
action = "kill"

[[read_only]]
name = "facts-frozen"
paths = ["mem/semantic/facts/**"]

[[append_only]]
name = "logs"
paths = ["mem/episodic/**"]
action = "deny"

[[content]]
name = "codeword"
regex = 'ZEBRA-[0-9]{4}'

[[content]]
name = "only-names"
regex = 'forbidden-name'
in = ["name"]
action = "deny"

[[content]]
name = "dry-run"
regex = 'maybe-bad'
action = "audit"

[[limit]]
name = "sizes"
max_file_size = 100
max_files = 10
quota = { working = 1000 }
action = "deny"

[[file_types]]
name = "plain-files"
forbid = ["symlink", "hardlink", "special", "xattr", "exec"]
"#;

#[test]
fn decisions_per_rule_kind() {
    let r = rules(ALL_KINDS);
    let w =
        |path: &'static str, data: &'static str| write("alice", path.as_bytes(), data.as_bytes());
    let c = |op: Op, path: &'static str| Call::new("alice", op, path.as_bytes());
    let overwrite = Call {
        size: Some(SizeChange {
            before: 10,
            after: 10,
        }),
        content: Some(Content {
            bytes: b"0123456789",
            at: 0,
            changed: 2..4,
            file_size: 10,
        }),
        ..c(Op::Write, "mem/episodic/log")
    };
    let append = Call {
        size: Some(SizeChange {
            before: 10,
            after: 12,
        }),
        content: Some(Content {
            bytes: b"0123456789ab",
            at: 0,
            changed: 10..12,
            file_size: 12,
        }),
        ..c(Op::Write, "mem/episodic/log")
    };
    let usage = |files: u64, bytes: u64| {
        Some(UsageChange {
            before: Usage {
                class_bytes: 0,
                files: 0,
            },
            after: Usage {
                class_bytes: bytes,
                files,
            },
        })
    };
    let table: Vec<(&str, Call<'_>, &str)> = vec![
        // path rules: grants, default deny, forbids
        ("write in mem", w("mem/semantic/a", "hello"), "allow"),
        ("create in mem", c(Op::Create, "mem/working/a"), "allow"),
        ("create outside mem", c(Op::Create, "elsewhere/a"), "deny default-deny"),
        ("create in inbox", c(Op::Create, "inbox/a"), "allow"),
        ("write in inbox", w("inbox/a", "x"), "deny default-deny"),
        ("delete in inbox", c(Op::Unlink, "inbox/a"), "deny default-deny"),
        ("create a script", c(Op::Create, "mem/working/run.sh"), "kill no-scripts"),
        ("write a script", w("mem/working/run.sh", "ls"), "allow"),
        ("alice deletes", c(Op::Unlink, "mem/working/a"), "allow"),
        (
            "bob deletes",
            Call::new("bob", Op::Unlink, b"mem/working/a"),
            "kill bob-no-delete",
        ),
        ("write a fact", w("mem/semantic/facts/x", "hi"), "kill facts-frozen"),
        ("delete a fact", c(Op::Unlink, "mem/semantic/facts/x"), "kill facts-frozen"),
        ("touch a fact", c(Op::SetAttr, "mem/semantic/facts/x"), "kill facts-frozen"),
        ("append to a log", append, "allow"),
        ("overwrite a log", overwrite, "deny logs"),
        ("delete a log", c(Op::Unlink, "mem/episodic/log"), "deny logs"),
        ("touch a log", c(Op::SetAttr, "mem/episodic/log"), "allow"),
        (
            "chmod a log",
            Call {
                mode: Some(0o600),
                ..c(Op::SetAttr, "mem/episodic/log")
            },
            "deny logs",
        ),
        (
            "O_TRUNC a log",
            Call {
                size: Some(SizeChange {
                    before: 10,
                    after: 0,
                }),
                ..c(Op::Truncate, "mem/episodic/log")
            },
            "deny logs",
        ),
        (
            "O_TRUNC a new log",
            Call {
                size: Some(SizeChange {
                    before: 0,
                    after: 0,
                }),
                ..c(Op::Truncate, "mem/episodic/new")
            },
            "allow",
        ),
        ("create a log", c(Op::Create, "mem/episodic/new"), "allow"),
        ("register", c(Op::RegisterAgent, ""), "allow"),
        // content rules
        ("codeword in content", w("mem/semantic/a", "the ZEBRA-1234 plan"), "kill codeword"),
        (
            "codeword in a name",
            c(Op::Create, "mem/working/ZEBRA-1234"),
            "kill codeword",
        ),
        (
            "codeword in a symlink",
            Call {
                data: Some(b"../ZEBRA-9999"),
                ..c(Op::Symlink, "mem/working/l")
            },
            // the symlink type rule is also hit; both kill, `codeword` < `plain-files`
            "kill codeword",
        ),
        (
            "name-only rule in content",
            w("mem/semantic/a", "forbidden-name"),
            "allow",
        ),
        (
            "name-only rule in a name",
            c(Op::Mkdir, "mem/semantic/forbidden-name"),
            "deny only-names",
        ),
        ("audit rule", w("mem/semantic/a", "maybe-bad"), "audit dry-run"),
        // limits
        (
            "file too big",
            w("mem/semantic/big", "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789x"),
            "deny sizes",
        ),
        (
            "too many files",
            Call {
                usage: usage(11, 0),
                ..c(Op::Create, "mem/working/f")
            },
            "deny sizes",
        ),
        (
            "quota of working memory",
            Call {
                usage: usage(1, 1001),
                ..w("mem/working/f", "x")
            },
            "deny sizes",
        ),
        (
            "semantic has no quota",
            Call {
                usage: usage(1, 1001),
                ..w("mem/semantic/f", "x")
            },
            "allow",
        ),
        (
            "shrinking while over quota",
            Call {
                usage: Some(UsageChange {
                    before: Usage {
                        class_bytes: 5000,
                        files: 20,
                    },
                    after: Usage {
                        class_bytes: 4000,
                        files: 19,
                    },
                }),
                ..c(Op::Unlink, "mem/working/f")
            },
            "allow",
        ),
        // file types
        (
            "symlink",
            Call {
                data: Some(b"a"),
                ..c(Op::Symlink, "mem/working/l")
            },
            "kill plain-files",
        ),
        (
            "hard link",
            Call {
                target: Some(b"mem/working/b"),
                ..c(Op::Link, "mem/working/a")
            },
            "kill plain-files",
        ),
        (
            "fifo",
            Call {
                kind: Some(FileKind::Fifo),
                ..c(Op::Mknod, "mem/working/p")
            },
            "kill plain-files",
        ),
        ("xattr", c(Op::SetXattr, "mem/working/a"), "kill plain-files"),
        (
            "chmod +x",
            Call {
                mode: Some(0o755),
                kind: Some(FileKind::File),
                ..c(Op::SetAttr, "mem/working/a")
            },
            "kill plain-files",
        ),
        (
            "chmod +x a directory",
            Call {
                mode: Some(0o755),
                kind: Some(FileKind::Dir),
                ..c(Op::SetAttr, "mem/working/d")
            },
            "allow",
        ),
        (
            "create executable",
            Call {
                mode: Some(0o700),
                ..c(Op::Create, "mem/working/x")
            },
            "kill plain-files",
        ),
        (
            "mkdir 0755",
            Call {
                mode: Some(0o755),
                ..c(Op::Mkdir, "mem/working/d")
            },
            "allow",
        ),
        // rename and link keep rights
        (
            "rename within mem",
            Call {
                target: Some(b"mem/semantic/b"),
                kind: Some(FileKind::File),
                ..c(Op::Rename, "mem/semantic/a")
            },
            "allow",
        ),
        (
            "rename a fact out",
            Call {
                target: Some(b"mem/semantic/free"),
                kind: Some(FileKind::File),
                ..c(Op::Rename, "mem/semantic/facts/x")
            },
            "kill facts-frozen",
        ),
        (
            "rename onto a fact",
            Call {
                target: Some(b"mem/semantic/facts/x"),
                kind: Some(FileKind::File),
                replaces: true,
                ..c(Op::Rename, "mem/semantic/a")
            },
            "kill facts-frozen",
        ),
        (
            "rename into inbox changes rights",
            Call {
                target: Some(b"inbox/a"),
                kind: Some(FileKind::File),
                ..c(Op::Rename, "mem/semantic/a")
            },
            "deny default-deny",
        ),
        (
            "rename the facts directory",
            Call {
                target: Some(b"mem/semantic/old-facts"),
                kind: Some(FileKind::Dir),
                ..c(Op::Rename, "mem/semantic/facts")
            },
            "kill facts-frozen",
        ),
        (
            "rename an ordinary directory",
            Call {
                target: Some(b"mem/semantic/e"),
                kind: Some(FileKind::Dir),
                ..c(Op::Rename, "mem/semantic/d")
            },
            "allow",
        ),
        (
            "rename a directory into facts",
            Call {
                target: Some(b"mem/semantic/facts/d"),
                kind: Some(FileKind::Dir),
                ..c(Op::Rename, "mem/semantic/d")
            },
            "kill facts-frozen",
        ),
        (
            "rename without a target",
            c(Op::Rename, "mem/semantic/a"),
            "deny invalid-call",
        ),
    ];
    let mut failures = Vec::new();
    for (what, call, want) in &table {
        let v = r.decide(call);
        let got = outcome(&v);
        if got != *want {
            failures.push(format!("{what}: want {want}, got {got} ({:?})", v.reason));
        }
        assert_eq!(v.version, r.version());
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    assert_eq!(r.agent_for_uid(1001), Some("alice"));
    assert_eq!(r.agent_for_uid(1002), Some("bob"));
    assert_eq!(r.agent_for_uid(1003), None);
}

#[test]
fn agents_scope_rules() {
    let r = rules(
        r#"
[[content]]
name = "alice-codeword"
agents = ["alice"]
regex = 'ZEBRA'
"#,
    );
    assert_eq!(
        r.decide(&write("alice", b"mem/semantic/a", b"ZEBRA"))
            .refused_by(),
        Some("alice-codeword")
    );
    assert!(r
        .decide(&write("bob", b"mem/semantic/a", b"ZEBRA"))
        .is_allowed());
}

#[test]
fn allow_verdict_names_the_grant_and_the_version() {
    let r = Ruleset::builtin();
    let v = r.decide(&write("a", b"mem/semantic/a", b"hi"));
    assert!(v.is_allowed());
    assert_eq!(v.allowed_by.as_deref(), Some("own-memory"));
    assert_eq!(v.version, r.version());
    assert!(v.audited.is_empty());
}

#[test]
fn non_utf8_paths_match_on_bytes() {
    let r = rules(
        "[builtin]\nenabled = false\n[[allow]]\nname = \"mem\"\npaths = [\"mem/**\"]\n\
         [[read_only]]\nname = \"ro\"\npaths = [\"mem/ro/**\"]\n",
    );
    // Two names that are the same after lossy UTF-8 conversion are not confused.
    let a = Call::new("a", Op::Create, b"mem/ro/\xff");
    let b = Call::new("a", Op::Create, b"mem/\xff/x");
    assert_eq!(r.decide(&a).refused_by(), Some("ro"));
    assert!(r.decide(&b).is_allowed());
    let c = Call::new("a", Op::Create, b"mem\xff/x");
    assert_eq!(r.decide(&c).refused_by(), Some("default-deny"));
}

#[test]
fn short_window_is_refused_not_silently_scanned() {
    let r = Ruleset::builtin();
    let file = vec![b'x'; 10_000];
    // A write of 10 bytes at 5000 with only the written bytes passed.
    let call = Call {
        content: Some(Content {
            bytes: &file[5000..5010],
            at: 5000,
            changed: 5000..5010,
            file_size: 10_000,
        }),
        size: Some(SizeChange {
            before: 10_000,
            after: 10_000,
        }),
        ..Call::new("a", Op::Write, b"mem/semantic/a")
    };
    let v = r.decide(&call);
    assert_eq!(
        v.decision,
        Decision::Deny {
            rule: "content-window".into()
        }
    );
    assert_eq!(
        &*r.scan_content("a", b"mem/semantic/a", call.content.as_ref().unwrap())[0].rule,
        "content-window"
    );
    // With the window it passes.
    let w = r.window();
    let call = Call {
        content: Some(Content {
            bytes: &file[5000 - w..5010 + w],
            at: (5000 - w) as u64,
            changed: 5000..5010,
            file_size: 10_000,
        }),
        ..call
    };
    assert!(r.decide(&call).is_allowed());
    assert!(r
        .scan_content("a", b"mem/semantic/a", call.content.as_ref().unwrap())
        .is_empty());
}

#[test]
fn rate_limits_take_tokens_and_refill() {
    let r = rules(
        r#"
[[limit]]
name = "rate"
write_ops_per_sec = 3
write_bytes_per_sec = 1000
action = "deny"
"#,
    );
    let mut state = RateState::new();
    let call = write("a", b"mem/working/a", b"0123456789");
    for _ in 0..3 {
        assert!(r.decide_rated(&call, &mut state, 0).is_allowed());
    }
    let v = r.decide_rated(&call, &mut state, 0);
    assert_eq!(v.refused_by(), Some("rate"), "{v:?}");
    // A third of a second later one op is back.
    assert!(r.decide_rated(&call, &mut state, 340_000_000).is_allowed());
    assert!(!r.decide_rated(&call, &mut state, 340_000_000).is_allowed());
    // Bytes: a big write drains the byte bucket.
    let mut state = RateState::new();
    let big = vec![b'a'; 1500];
    let call = write("a", b"mem/working/a", &big);
    assert!(r.decide_rated(&call, &mut state, 0).is_allowed());
    let v = r.decide_rated(&write("a", b"mem/working/a", b"x"), &mut state, 0);
    assert_eq!(v.refused_by(), Some("rate"));
    // A reload that keeps the rule keeps the debt.
    let r2 = rules(
        r#"
[[limit]]
name = "rate"
write_ops_per_sec = 3
write_bytes_per_sec = 1000
action = "deny"

[[allow]]
name = "extra"
paths = ["x/**"]
"#,
    );
    let v = r2.decide_rated(&write("a", b"mem/working/a", b"x"), &mut state, 0);
    assert_eq!(v.refused_by(), Some("rate"));
}

#[test]
fn legacy_hook_still_works() {
    let engine = Engine::builtin();
    let req = Request {
        agent: "a",
        op: Op::Write,
        path: "mem/semantic/x",
        target: None,
        data: Some(b"AKIAIOSFODNN7EXAMPLE"),
        uid: 0,
        pid: 1,
    };
    assert_eq!(
        engine.check(&req),
        Decision::Kill {
            rule: "aws-access-key-id".into()
        }
    );
    let ok = Request {
        data: Some(b"hello"),
        ..req
    };
    assert_eq!(engine.check(&ok), Decision::Allow);
    // AllowAll answers the full API through the default method.
    let v = AllowAll.decide(&Call::new("a", Op::Unlink, b"x"));
    assert!(v.is_allowed());
    assert_eq!(AllowAll.window(), 0);
}

#[test]
fn reload_swaps_atomically_and_keeps_old_rules_on_error() {
    let engine = Engine::builtin();
    let old = engine.current();
    let err = engine
        .reload(vec![Source::new("bad.toml", "[[allow]]\nname = 1\n")])
        .unwrap_err();
    assert!(err.to_string().starts_with("bad.toml:2:8: "), "{err}");
    assert_eq!(engine.version(), old.version());
    let new = engine
        .reload(vec![Source::new(
            "p.toml",
            "[[content]]\nname = \"z\"\nregex = 'ZEBRA'\n",
        )])
        .unwrap();
    assert_ne!(new.version(), old.version());
    assert_eq!(engine.version(), new.version());
    // A decision that took the old snapshot still decides under it.
    assert!(old
        .decide(&write("a", b"mem/semantic/a", b"ZEBRA"))
        .is_allowed());
    assert_eq!(
        engine
            .current()
            .decide(&write("a", b"mem/semantic/a", b"ZEBRA"))
            .refused_by(),
        Some("z")
    );
}

#[test]
fn render_for_lists_the_agents_rules() {
    let r = rules(ALL_KINDS);
    let alice = r.render_for("alice");
    assert!(alice.contains("name = \"facts-frozen\""), "{alice}");
    assert!(!alice.contains("bob-no-delete"), "{alice}");
    assert!(alice.contains("1001 = \"alice\""), "{alice}");
    let bob = r.render_for("bob");
    assert!(bob.contains("bob-no-delete"), "{bob}");
    // What is rendered is itself valid policy text for each rule.
    assert!(alice.contains("[[content]]"), "{alice}");
    let s = r.summary();
    assert_eq!(s.files, 1);
    assert_eq!(s.builtin, "disabled");
    assert!(
        s.to_string()
            .contains("2 allow, 2 deny, 1 read_only, 1 append_only"),
        "{s}"
    );
}

#[test]
fn sources_and_builtin_use_are_reported() {
    let r = Ruleset::builtin();
    assert!(r.builtin_enabled());
    assert!(r.sources().is_empty());
    let r = rules("[builtin]\nenabled = false\n[[allow]]\nname = \"mem\"\npaths = [\"mem/**\"]\n");
    assert!(!r.builtin_enabled());
    assert_eq!(r.sources().len(), 1);
    assert!(r.sources()[0]
        .text
        .starts_with("[builtin]\nenabled = false\n"));
}

#[test]
fn holds_forbidden_finds_any_content_rule_match() {
    let rules = Ruleset::builtin();
    assert!(rules.holds_forbidden(b"id-AKIAIOSFODNN7EXAMPLE.txt"));
    assert!(!rules.holds_forbidden(b"notes.txt"));
}
