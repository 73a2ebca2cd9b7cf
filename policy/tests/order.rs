//! Rule order never matters, and neither does how rules are spread over files: shuffling
//! the rules and splitting them over several `--policy` files gives the same verdict for
//! every call. Any matching deny wins over any allow.

use agentfs_policy::*;
use proptest::prelude::*;

/// Rules that overlap on purpose: grants and forbids on the same paths, several content
/// rules matching the same bytes, limits of different strictness, agent scopes.
const RULES: &[&str] = &[
    "[[allow]]\nname = \"shared\"\npaths = [\"shared/**\"]\n",
    "[[allow]]\nname = \"shared-create\"\npaths = [\"shared/*\"]\nops = [\"create\"]\n",
    "[[allow]]\nname = \"bob-tmp\"\nagents = [\"bob\"]\npaths = [\"tmp/**\"]\n",
    "[[deny]]\nname = \"no-sh\"\npaths = [\"**/*.sh\"]\nops = [\"create\", \"write\"]\naction = \"deny\"\n",
    "[[deny]]\nname = \"no-sh-kill\"\nagents = [\"bob\"]\npaths = [\"**/*.sh\"]\n",
    "[[read_only]]\nname = \"docs\"\npaths = [\"shared/docs/**\", \"mem/semantic/docs/**\"]\n",
    "[[read_only]]\nname = \"docs-audit\"\npaths = [\"shared/docs/**\"]\naction = \"audit\"\n",
    "[[append_only]]\nname = \"journal\"\npaths = [\"mem/semantic/journal/**\"]\naction = \"deny\"\n",
    "[[content]]\nname = \"zebra\"\nregex = 'ZEBRA[0-9]{2}'\naction = \"deny\"\n",
    "[[content]]\nname = \"zebra-kill\"\nregex = 'ZEBRA9[0-9]'\n",
    "[[content]]\nname = \"zebra-audit\"\nregex = 'ZEBRA'\naction = \"audit\"\n",
    "[[limit]]\nname = \"size-100\"\nmax_file_size = 100\naction = \"deny\"\n",
    "[[limit]]\nname = \"size-50-audit\"\nmax_file_size = 50\naction = \"audit\"\n",
    "[[limit]]\nname = \"files\"\nagents = [\"alice\"]\nmax_files = 3\n",
    "[[file_types]]\nname = \"no-links\"\nforbid = [\"symlink\", \"hardlink\"]\naction = \"deny\"\n",
    "[[file_types]]\nname = \"no-exec\"\nagents = [\"bob\"]\nforbid = [\"exec\"]\n",
    "[identity]\n1001 = \"alice\"\n",
    "[default]\naction = \"deny\"\n",
];

fn write<'a>(agent: &'a str, path: &'a str, data: &'a [u8]) -> Call<'a> {
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
        ..Call::new(agent, Op::Write, path.as_bytes())
    }
}

fn calls() -> Vec<Call<'static>> {
    let c = |agent: &'static str, op: Op, path: &'static str| Call::new(agent, op, path.as_bytes());
    let mut v = Vec::new();
    for agent in ["alice", "bob", "carol"] {
        v.extend([
            write(agent, "shared/a", b"hello"),
            write(agent, "shared/run.sh", b"ls"),
            write(agent, "shared/docs/x", b"hello"),
            write(agent, "mem/semantic/docs/x", b"hello"),
            write(agent, "mem/semantic/x", b"a ZEBRA12 b"),
            write(agent, "mem/semantic/x", b"a ZEBRA91 b"),
            write(agent, "mem/semantic/x", b"a ZEBRA b"),
            write(agent, "mem/semantic/x", &[b'a'; 60]),
            write(agent, "mem/semantic/x", &[b'a'; 120]),
            write(agent, "tmp/x", b"t"),
            write(agent, "mem/semantic/journal/day", b"overwrite?"),
            c(agent, Op::Create, "shared/new"),
            c(agent, Op::Create, "shared/sub/new"),
            c(agent, Op::Create, "shared/x.sh"),
            c(agent, Op::Create, "elsewhere"),
            c(agent, Op::Unlink, "shared/docs/x"),
            c(agent, Op::Unlink, "mem/semantic/journal/day"),
            Call {
                target: Some(b"shared/b"),
                kind: Some(FileKind::File),
                ..c(agent, Op::Rename, "shared/a")
            },
            Call {
                target: Some(b"mem/semantic/y"),
                kind: Some(FileKind::Dir),
                ..c(agent, Op::Rename, "mem/semantic/docs")
            },
            Call {
                target: Some(b"shared/l"),
                ..c(agent, Op::Link, "shared/a")
            },
            Call {
                data: Some(b"ZEBRA55"),
                ..c(agent, Op::Symlink, "mem/working/l")
            },
            Call {
                mode: Some(0o755),
                kind: Some(FileKind::File),
                ..c(agent, Op::SetAttr, "mem/working/f")
            },
            Call {
                usage: Some(UsageChange {
                    before: Usage::default(),
                    after: Usage {
                        class_bytes: 0,
                        files: 4,
                    },
                }),
                ..c(agent, Op::Create, "mem/working/g")
            },
            c(agent, Op::Mkdir, "mem/working/ZEBRA42"),
        ]);
    }
    v
}

/// What a verdict says, without the version (which hashes the file texts).
fn essence(v: &Verdict) -> (Decision, Option<String>, Option<String>, Vec<String>) {
    (
        v.decision.clone(),
        v.reason.clone(),
        v.allowed_by.as_deref().map(str::to_string),
        v.audited
            .iter()
            .map(|f| format!("{}: {}", f.rule, f.reason))
            .collect(),
    )
}

fn compile(order: &[usize], files: usize) -> Ruleset {
    let mut texts = vec![String::new(); files];
    for (k, &i) in order.iter().enumerate() {
        texts[k % files].push_str(RULES[i]);
        texts[k % files].push('\n');
    }
    let sources = texts
        .into_iter()
        .enumerate()
        .map(|(i, t)| Source::new(format!("p{i}.toml"), t))
        .collect();
    Ruleset::compile(sources).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn rule_order_and_file_split_never_change_a_verdict(
        order in Just((0..RULES.len()).collect::<Vec<_>>()).prop_shuffle(),
        files in 1usize..4,
    ) {
        let base = compile(&(0..RULES.len()).collect::<Vec<_>>(), 1);
        let shuffled = compile(&order, files);
        for call in calls() {
            prop_assert_eq!(essence(&base.decide(&call)), essence(&shuffled.decide(&call)), "{:?}", call);
        }
    }
}

#[test]
fn any_matching_deny_wins_over_any_allow() {
    let r = compile(&(0..RULES.len()).collect::<Vec<_>>(), 1);
    // Granted by `shared`, forbidden by `docs`: the forbid wins, kill over the audit rule.
    let v = r.decide(&write("alice", "shared/docs/x", b"hi"));
    assert_eq!(
        v.decision,
        Decision::Kill {
            rule: "docs".into()
        }
    );
    // Kill beats deny: `zebra-kill` over `zebra`; the audit rule is still listed.
    let v = r.decide(&write("alice", "mem/semantic/x", b"ZEBRA91"));
    assert_eq!(
        v.decision,
        Decision::Kill {
            rule: "zebra-kill".into()
        }
    );
    assert_eq!(&*v.audited[0].rule, "zebra-audit");
    // Among equally strict rules the smallest name decides.
    let v = r.decide(&write("bob", "shared/run.sh", b"ls"));
    assert_eq!(
        v.decision,
        Decision::Kill {
            rule: "no-sh-kill".into()
        }
    );
    let v = r.decide(&write("alice", "shared/run.sh", b"ls"));
    assert_eq!(
        v.decision,
        Decision::Deny {
            rule: "no-sh".into()
        }
    );
}
