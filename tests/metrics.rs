//! `MNT/sys/metrics` through a real mount (issue 9, item 3): the Prometheus text format is
//! well formed, and its counters follow writes, a policy violation, signals and parked calls.

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

/// One sample: metric name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed exposition: samples, and the families declared by `# HELP` and `# TYPE`.
struct Exposition {
    samples: Vec<Sample>,
    help: BTreeSet<String>,
    types: BTreeMap<String, String>,
}

/// Parses the text exposition format strictly: every line is a `# HELP`/`# TYPE` comment or
/// `name{label="value",…} number`; label values unescape `\\`, `\"` and `\n`.
fn parse(text: &str) -> Exposition {
    let mut e = Exposition {
        samples: Vec::new(),
        help: BTreeSet::new(),
        types: BTreeMap::new(),
    };
    assert!(text.ends_with('\n'), "the text ends with a newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect(line);
            assert!(!help.is_empty(), "{line}");
            assert!(e.help.insert(name.to_string()), "HELP twice: {line}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect(line);
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(
                e.types.insert(name.to_string(), kind.to_string()).is_none(),
                "TYPE twice: {line}"
            );
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment: {line}");
        let mut chars = line.chars().peekable();
        let name: String =
            std::iter::from_fn(|| chars.next_if(|c| c.is_ascii_alphanumeric() || *c == '_'))
                .collect();
        assert!(
            !name.is_empty() && !name.starts_with(|c: char| c.is_ascii_digit()),
            "bad metric name: {line}"
        );
        let mut labels = BTreeMap::new();
        if chars.next_if_eq(&'{').is_some() {
            loop {
                let key: String = std::iter::from_fn(|| {
                    chars.next_if(|c| c.is_ascii_alphanumeric() || *c == '_')
                })
                .collect();
                assert!(!key.is_empty(), "bad label name: {line}");
                assert_eq!(chars.next(), Some('='), "{line}");
                assert_eq!(chars.next(), Some('"'), "{line}");
                let mut value = String::new();
                loop {
                    match chars.next().expect(line) {
                        '"' => break,
                        '\\' => match chars.next().expect(line) {
                            'n' => value.push('\n'),
                            c @ ('\\' | '"') => value.push(c),
                            c => panic!("bad escape \\{c}: {line}"),
                        },
                        '\n' => panic!("raw newline in a label: {line}"),
                        c => value.push(c),
                    }
                }
                assert!(labels.insert(key, value).is_none(), "label twice: {line}");
                match chars.next() {
                    Some(',') => continue,
                    Some('}') => break,
                    other => panic!("{other:?} after a label: {line}"),
                }
            }
        }
        assert_eq!(chars.next(), Some(' '), "{line}");
        let number: String = chars.collect();
        let value = match number.as_str() {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            n => n
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("not a number: {line}")),
        };
        e.samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    // Every sample belongs to a family with HELP and TYPE.
    for s in &e.samples {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                s.name
                    .strip_suffix(suffix)
                    .filter(|f| e.types.get(*f).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(&s.name);
        assert!(e.types.contains_key(family), "no TYPE for {}", s.name);
        assert!(e.help.contains(family), "no HELP for {}", s.name);
        if e.types[family] == "counter" {
            assert!(
                family.ends_with("_total"),
                "counter {family} ends in _total"
            );
        }
    }
    e
}

impl Exposition {
    /// The value of the one sample named `name` whose labels include `want`.
    fn get(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        let found: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| {
                s.name == name
                    && want
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        assert_eq!(found.len(), 1, "{name} {want:?}: {found:?}");
        found[0].value
    }

    fn ops(&self, agent: &str, op: &str, result: &str) -> f64 {
        self.get(
            "agentfs_ops_total",
            &[("agent", agent), ("op", op), ("result", result)],
        )
    }

    fn signals(&self, agent: &str, signal: &str) -> f64 {
        self.get(
            "agentfs_signals_total",
            &[("agent", agent), ("signal", signal)],
        )
    }

    fn state(&self, agent: &str) -> String {
        let on: Vec<&str> = ["running", "stopped", "killed"]
            .into_iter()
            .filter(|s| self.get("agentfs_agent_state", &[("agent", agent), ("state", s)]) == 1.0)
            .collect();
        assert_eq!(on.len(), 1, "one state at 1 for {agent}: {on:?}");
        on[0].to_string()
    }
}

fn metrics(m: &Mount) -> Exposition {
    let text = fs::read_to_string(m.mnt.join("sys/metrics")).expect("read sys/metrics");
    parse(&text)
}

fn signal(m: &Mount, agent: &str, sig: &str) {
    fs::write(m.mnt.join("sys/agents").join(agent).join("signal"), sig)
        .unwrap_or_else(|e| panic!("signal {sig} to {agent}: {e}"));
}

#[test]
fn metrics_follow_writes_violations_and_signals() {
    let Some(m) = Mount::try_new() else { return };
    let names: Vec<String> = fs::read_dir(m.mnt.join("sys"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.contains(&"metrics".to_string()), "{names:?}");
    let before = metrics(&m);
    assert!(
        before
            .samples
            .iter()
            .all(|s| !s.labels.contains_key("agent")),
        "no agents yet"
    );

    m.agent("a");
    m.agent("b");
    for i in 0..3 {
        fs::write(
            m.mem("a", "semantic").join(format!("fact{i}")),
            format!("fact number {i}\n"),
        )
        .unwrap();
    }
    fs::write(m.mem("b", "working").join("w1"), b"0123456789").unwrap();
    fs::write(m.mem("b", "working").join("w2"), b"abcdefghij").unwrap();
    fs::write(m.mem("b", "episodic").join("log"), b"started\n").unwrap();

    // A secret in semantic memory: EACCES, SIGPOLICY, the agent is killed; then revived.
    let secret = m.mem("a", "semantic").join("leak");
    assert_errno(
        "write a secret",
        fs::write(&secret, b"key: AKIAIOSFODNN7EXAMPLE\n"),
        libc::EACCES,
    );
    let x = metrics(&m);
    assert_eq!(x.state("a"), "killed");
    signal(&m, "a", "START");

    // STOP b with a write parked at its gate, look, then CONT.
    signal(&m, "b", "STOP");
    let (tx, rx) = mpsc::channel();
    let log = m.mem("b", "episodic").join("log");
    std::thread::spawn(move || {
        let r = OpenOptions::new()
            .append(true)
            .open(&log)
            .and_then(|mut f| f.write_all(b"while stopped\n"));
        let _ = tx.send(r);
    });
    assert!(
        wait_until(Duration::from_secs(10), || metrics(&m)
            .get("agentfs_parked_calls", &[("agent", "b")])
            >= 1.0),
        "the append is parked"
    );
    let stopped = metrics(&m);
    assert_eq!(stopped.state("b"), "stopped");
    assert_eq!(stopped.state("a"), "running");
    assert!(
        rx.try_recv().is_err(),
        "the parked append has not completed"
    );
    signal(&m, "b", "CONT");
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the append resumes after CONT")
        .expect("the append succeeds");

    let x = metrics(&m);
    assert_eq!(x.get("agentfs_parked_calls", &[("agent", "b")]), 0.0);
    assert_eq!(x.state("b"), "running");

    // Ops by agent, kind and result.
    assert!(
        x.ops("a", "create", "ok") >= 4.0,
        "three facts and the leak"
    );
    assert_eq!(x.ops("a", "write", "ok"), 3.0);
    assert_eq!(x.ops("a", "write", "error"), 1.0, "the refused secret");
    assert_eq!(x.ops("b", "write", "ok"), 4.0);
    assert_eq!(x.ops("b", "write", "error"), 0.0);
    assert_eq!(x.ops("b", "unlink", "ok"), 0.0);

    // Policy decisions: the refusal by its rule, the allowed writes.
    assert_eq!(
        x.get(
            "agentfs_policy_decisions_total",
            &[
                ("agent", "a"),
                ("rule", "aws-access-key-id"),
                ("action", "kill")
            ]
        ),
        1.0
    );
    let allowed = |agent: &str| -> f64 {
        x.samples
            .iter()
            .filter(|s| {
                s.name == "agentfs_policy_decisions_total"
                    && s.labels["agent"] == agent
                    && s.labels["action"] == "allow"
            })
            .map(|s| s.value)
            .sum()
    };
    assert!(
        allowed("a") >= 7.0,
        "creates and writes of a: {}",
        allowed("a")
    );
    assert!(
        allowed("b") >= 7.0,
        "creates and writes of b: {}",
        allowed("b")
    );

    // Signals.
    assert_eq!(x.signals("a", "POLICY"), 1.0);
    assert_eq!(x.signals("a", "START"), 1.0);
    assert_eq!(x.signals("a", "STOP"), 0.0);
    assert_eq!(x.signals("b", "STOP"), 1.0);
    assert_eq!(x.signals("b", "CONT"), 1.0);
    assert_eq!(x.signals("b", "KILL"), 0.0);

    // Bytes and files per class.
    let class =
        |name: &str, agent: &str, class: &str| x.get(name, &[("agent", agent), ("class", class)]);
    assert_eq!(class("agentfs_bytes", "b", "working"), 20.0);
    assert_eq!(class("agentfs_files", "b", "working"), 2.0);
    assert_eq!(
        class("agentfs_bytes", "b", "episodic"),
        ("started\n".len() + "while stopped\n".len()) as f64
    );
    assert_eq!(class("agentfs_files", "a", "semantic"), 4.0);
    assert_eq!(
        class("agentfs_bytes", "a", "semantic"),
        3.0 * "fact number 0\n".len() as f64,
        "the refused secret holds no byte"
    );
    assert_eq!(class("agentfs_bytes", "a", "working"), 0.0);

    // The index catches up with a's three facts.
    assert!(
        wait_until(Duration::from_secs(30), || metrics(&m)
            .get("agentfs_index_pending", &[("agent", "a")])
            == 0.0),
        "index lag drains"
    );

    // The latency histogram: cumulative buckets, +Inf equals the count.
    let x = metrics(&m);
    for op in ["write", "create"] {
        let mut buckets: Vec<(f64, f64)> = x
            .samples
            .iter()
            .filter(|s| s.name == "agentfs_op_latency_seconds_bucket" && s.labels["op"] == op)
            .map(|s| {
                let le = &s.labels["le"];
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                (le, s.value)
            })
            .collect();
        assert!(buckets.len() > 2, "{op}: {buckets:?}");
        let sorted = buckets.windows(2).all(|w| w[0].0 < w[1].0);
        assert!(sorted, "le ascending: {buckets:?}");
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "cumulative: {buckets:?}"
        );
        let (last_le, inf) = buckets.pop().unwrap();
        assert!(last_le.is_infinite());
        let count = x.get("agentfs_op_latency_seconds_count", &[("op", op)]);
        assert_eq!(inf, count, "{op}");
        assert!(count >= 7.0, "{op}: {count}");
        assert!(x.get("agentfs_op_latency_seconds_sum", &[("op", op)]) > 0.0);
    }

    // `agentfs metrics --mount MNT` prints the same format.
    let out = Command::new(bin())
        .args(["metrics", "--mount"])
        .arg(&m.mnt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli = parse(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(cli.signals("b", "CONT"), 1.0);
}
