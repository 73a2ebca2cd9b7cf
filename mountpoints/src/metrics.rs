//! `sys/metrics`: the daemon's counters in the Prometheus text exposition format (0.0.4),
//! generated at open like `status` (docs/operations.md#metrics lists every metric).
//!
//! Everything here is counted without a lock shared by agents: per-op latency histograms
//! are arrays of `AtomicU64` (one per bucket), per-agent counters live in the agent. The
//! choke point calls [`Histogram::record`] once per mutation; rendering only reads.

use crate::agent::{Agent, CLASS_NAMES};
use crate::vfs::Vfs;
use agentfs_policy::{Decision, Op, Verdict};
use agentfs_signals::{AgentState, Signal};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Upper bounds of the latency buckets, in nanoseconds: 10 µs to 1 s, then `+Inf`.
pub(crate) const BOUNDS_NS: [u64; 16] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
];

/// A latency histogram: one counter per bucket (not cumulative; summed when rendered) and
/// the sum of all observations. Recording is two relaxed atomic adds.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    buckets: [AtomicU64; BOUNDS_NS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    pub(crate) fn record(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        // First bound >= ns: bucket `le` counts observations <= its bound.
        let i = BOUNDS_NS.partition_point(|b| *b < ns);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Cumulative bucket counts (the last is `+Inf`, also the count) and the sum in ns.
    fn snapshot(&self) -> ([u64; BOUNDS_NS.len() + 1], u64) {
        let mut out = [0u64; BOUNDS_NS.len() + 1];
        let mut total = 0u64;
        for (o, b) in out.iter_mut().zip(&self.buckets) {
            total += b.load(Ordering::Relaxed);
            *o = total;
        }
        (out, self.sum_ns.load(Ordering::Relaxed))
    }
}

/// The daemon-wide metrics: the choke point's latency per op kind.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    latency: [Histogram; Op::ALL.len()],
    /// Garbage collection totals: the durable store's, then working memory's.
    pub(crate) gc: [crate::gc::GcTotals; 2],
}

impl Metrics {
    /// Records one mutation of kind `op` that spent `elapsed` in the choke point.
    pub(crate) fn observe(&self, op: Op, elapsed: Duration) {
        self.latency[op.index()].record(elapsed);
    }
}

/// Signals as counted, in this order.
const SIGNALS: [Signal; 5] = [
    Signal::Stop,
    Signal::Cont,
    Signal::Kill,
    Signal::Start,
    Signal::Policy,
];

/// Policy actions as counted, in this order (`Verdict::outcome`).
const ACTIONS: [&str; 4] = ["allow", "audit", "deny", "kill"];

/// Rule label of an allowed call no `allow` rule granted by name.
const NO_RULE: &str = "none";

/// An agent's counters that only the metrics show.
#[derive(Debug, Default)]
pub struct AgentMetrics {
    errors_by_op: [AtomicU64; Op::ALL.len()],
    signals: [AtomicU64; SIGNALS.len()],
    /// Policy decisions per rule, then per action (`ACTIONS`). Rules are few and fixed per
    /// policy version: after the first decision by a rule, counting takes the read lock only.
    decisions: RwLock<HashMap<Arc<str>, [AtomicU64; ACTIONS.len()]>>,
}

impl AgentMetrics {
    pub(crate) fn count_error(&self, op: Op) {
        self.errors_by_op[op.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_signal(&self, signal: Signal) {
        if let Some(i) = SIGNALS.iter().position(|s| *s == signal) {
            self.signals[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts the decision of one call: the refusing rule for `deny`/`kill`, every matching
    /// audit rule for `audit`, the granting rule (or `none`) for `allow`.
    pub(crate) fn count_decision(&self, v: &Verdict) {
        match &v.decision {
            Decision::Deny { rule } => self.count_rule(rule, 2),
            Decision::Kill { rule } => self.count_rule(rule, 3),
            Decision::Allow if v.audited.is_empty() => {
                self.count_rule(v.allowed_by.as_deref().unwrap_or(NO_RULE), 0)
            }
            Decision::Allow => {
                for f in &v.audited {
                    self.count_rule(&f.rule, 1);
                }
            }
        }
    }

    fn count_rule(&self, rule: &str, action: usize) {
        if let Some(c) = self.decisions.read().get(rule) {
            c[action].fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.decisions.write().entry(Arc::from(rule)).or_default()[action]
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// Escapes a label value: backslash, double quote and newline.
pub(crate) fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The text being built: families (HELP and TYPE once) and their samples.
struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        // HELP text escapes backslash and newline (the exposition format's rule).
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape_label(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

/// Nanoseconds as seconds, the way the exposition format writes floats.
fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// What one agent's part of the text is made of, read once per render.
pub(crate) struct AgentSample<'a> {
    pub agent: &'a Agent,
    pub index_pending: u64,
}

/// A garbage-collection counter: name, help, and which total it shows.
type GcCounter = (
    &'static str,
    &'static str,
    fn(&crate::gc::GcTotals) -> &std::sync::atomic::AtomicU64,
);

/// Renders the whole exposition: `agents` in registration order, `metrics` the daemon's.
pub(crate) fn render(metrics: &Metrics, agents: &[AgentSample<'_>]) -> String {
    let mut t = Text(String::with_capacity(16 << 10));

    t.family(
        "agentfs_ops_total",
        "counter",
        "Mutating calls through the choke point, by agent, op kind and result.",
    );
    for s in agents {
        let a = s.agent;
        for op in Op::ALL {
            let ok = a.op_count(op);
            let err = a.metrics.errors_by_op[op.index()].load(Ordering::Relaxed);
            for (result, v) in [("ok", ok), ("error", err)] {
                t.sample(
                    "agentfs_ops_total",
                    &[("agent", &*a.name), ("op", op.name()), ("result", result)],
                    v,
                );
            }
        }
    }

    t.family(
        "agentfs_op_latency_seconds",
        "histogram",
        "Time a mutating call spent in the choke point (guard, policy, apply, record), by op kind.",
    );
    for op in Op::ALL {
        let (cumulative, sum_ns) = metrics.latency[op.index()].snapshot();
        for (bound, n) in BOUNDS_NS.iter().zip(&cumulative) {
            let le = seconds(*bound).to_string();
            t.sample(
                "agentfs_op_latency_seconds_bucket",
                &[("op", op.name()), ("le", &le)],
                n,
            );
        }
        let count = cumulative[BOUNDS_NS.len()];
        t.sample(
            "agentfs_op_latency_seconds_bucket",
            &[("op", op.name()), ("le", "+Inf")],
            count,
        );
        t.sample(
            "agentfs_op_latency_seconds_sum",
            &[("op", op.name())],
            seconds(sum_ns),
        );
        t.sample(
            "agentfs_op_latency_seconds_count",
            &[("op", op.name())],
            count,
        );
    }

    t.family(
        "agentfs_policy_decisions_total",
        "counter",
        "Policy decisions, one per decided call, by agent, rule and action (allow, audit, deny, kill).",
    );
    for s in agents {
        let a = s.agent;
        let decisions = a.metrics.decisions.read();
        let mut rules: Vec<_> = decisions.iter().collect();
        rules.sort_by(|x, y| x.0.cmp(y.0));
        for (rule, counts) in rules {
            for (action, c) in ACTIONS.iter().zip(counts) {
                let v = c.load(Ordering::Relaxed);
                if v > 0 {
                    t.sample(
                        "agentfs_policy_decisions_total",
                        &[("agent", &*a.name), ("rule", &**rule), ("action", *action)],
                        v,
                    );
                }
            }
        }
    }

    t.family(
        "agentfs_signals_total",
        "counter",
        "Signals delivered to an agent (POLICY: raised by a policy violation).",
    );
    for s in agents {
        let a = s.agent;
        for (sig, c) in SIGNALS.iter().zip(&a.metrics.signals) {
            t.sample(
                "agentfs_signals_total",
                &[("agent", &*a.name), ("signal", sig.name())],
                c.load(Ordering::Relaxed),
            );
        }
    }

    for (name, help, f) in [
        (
            "agentfs_bytes",
            "Bytes an agent holds, by memory class.",
            Agent::class_bytes as fn(&Agent, usize) -> i64,
        ),
        (
            "agentfs_files",
            "Files an agent holds, by memory class.",
            Agent::class_files as fn(&Agent, usize) -> i64,
        ),
    ] {
        t.family(name, "gauge", help);
        for s in agents {
            for (i, class) in CLASS_NAMES.iter().enumerate() {
                t.sample(
                    name,
                    &[("agent", &*s.agent.name), ("class", *class)],
                    f(s.agent, i),
                );
            }
        }
    }

    t.family(
        "agentfs_index_pending",
        "gauge",
        "Updates of an agent's semantic memory the search index has not applied yet (index lag).",
    );
    for s in agents {
        t.sample(
            "agentfs_index_pending",
            &[("agent", &*s.agent.name)],
            s.index_pending,
        );
    }

    t.family(
        "agentfs_parked_calls",
        "gauge",
        "Mutating calls waiting at a stopped agent's gate.",
    );
    for s in agents {
        t.sample(
            "agentfs_parked_calls",
            &[("agent", &*s.agent.name)],
            s.agent.gate.parked(),
        );
    }

    let gc: [GcCounter; 5] = [
        (
            "agentfs_gc_rounds_total",
            "Garbage collection rounds run.",
            |g| &g.rounds,
        ),
        (
            "agentfs_gc_failures_total",
            "Garbage collection rounds that failed.",
            |g| &g.failures,
        ),
        (
            "agentfs_gc_freed_chunks_total",
            "Chunks freed by the garbage collector.",
            |g| &g.freed_chunks,
        ),
        (
            "agentfs_gc_freed_bytes_total",
            "Bytes of chunks freed by the garbage collector.",
            |g| &g.freed_bytes,
        ),
        (
            "agentfs_gc_reclaimed_bytes_total",
            "Bytes given back to the disk (durable) or to the allocator (working).",
            |g| &g.reclaimed_bytes,
        ),
    ];
    for (name, help, f) in gc {
        t.family(name, "counter", help);
        for (store, totals) in ["durable", "working"].iter().zip(&metrics.gc) {
            t.sample(name, &[("store", store)], f(totals).load(Ordering::Relaxed));
        }
    }
    t.family(
        "agentfs_gc_suspect_chunks",
        "gauge",
        "Chunks the last round found unreferenced: freed by the next round if still so.",
    );
    for (store, totals) in ["durable", "working"].iter().zip(&metrics.gc) {
        t.sample(
            "agentfs_gc_suspect_chunks",
            &[("store", store)],
            totals.suspects.load(Ordering::Relaxed),
        );
    }

    t.family(
        "agentfs_agent_state",
        "gauge",
        "1 for the agent's current run state, 0 for the others.",
    );
    for s in agents {
        let (now, _) = s.agent.gate.state();
        for state in [AgentState::Running, AgentState::Stopped, AgentState::Killed] {
            t.sample(
                "agentfs_agent_state",
                &[("agent", &*s.agent.name), ("state", state.name())],
                u8::from(state == now),
            );
        }
    }
    t.0
}

impl Vfs {
    /// The bytes of `sys/metrics`.
    pub(crate) fn metrics_text(&self) -> String {
        let agents: Vec<Arc<Agent>> = self.agents_by_index.read().clone();
        let samples: Vec<AgentSample<'_>> = agents
            .iter()
            .map(|a| AgentSample {
                agent: a,
                index_pending: self.outbox.progress_of(&a.name).pending,
            })
            .collect();
        render(&self.metrics, &samples)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentfs_policy::{Action, Finding, PolicyVersion};

    fn agent(name: &str) -> Agent {
        Agent::new(Arc::from(name), 0, 100, 0)
    }

    fn verdict(decision: Decision, audited: &[&str]) -> Verdict {
        Verdict {
            decision,
            reason: None,
            allowed_by: Some(Arc::from("own-mem")),
            audited: audited
                .iter()
                .map(|r| Finding {
                    rule: Arc::from(*r),
                    action: Action::Audit,
                    reason: String::new(),
                })
                .collect(),
            version: PolicyVersion([0; 32]),
        }
    }

    /// Every non-comment line is `name{labels} value` or `name value`; returns them parsed.
    /// A parsed sample: name, labels, value.
    type Parsed = (String, Vec<(String, String)>, f64);

    fn parse(text: &str) -> Vec<Parsed> {
        let mut out = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let mut chars = line.chars().peekable();
            let name: String =
                std::iter::from_fn(|| chars.next_if(|c| *c != '{' && *c != ' ')).collect();
            let mut labels = Vec::new();
            if chars.next_if_eq(&'{').is_some() {
                loop {
                    let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
                    assert_eq!(chars.next(), Some('='), "{line}");
                    assert_eq!(chars.next(), Some('"'), "{line}");
                    let mut val = String::new();
                    loop {
                        match chars.next().expect(line) {
                            '"' => break,
                            '\\' => match chars.next().expect(line) {
                                'n' => val.push('\n'),
                                c => val.push(c),
                            },
                            c => val.push(c),
                        }
                    }
                    labels.push((key, val));
                    match chars.next() {
                        Some(',') => continue,
                        Some('}') => break,
                        other => panic!("{other:?} in {line}"),
                    }
                }
            }
            assert_eq!(chars.next(), Some(' '), "{line}");
            let rest: String = chars.collect();
            let value: f64 = rest.parse().unwrap_or_else(|_| panic!("{line}"));
            out.push((name, labels, value));
        }
        out
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("plain"), "plain");
        assert_eq!(escape_label(r"a\b"), r"a\\b");
        assert_eq!(escape_label("say \"hi\""), r#"say \"hi\""#);
        assert_eq!(escape_label("two\nlines"), r"two\nlines");
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_le_is_inclusive() {
        let h = Histogram::default();
        h.record(Duration::from_nanos(10_000)); // exactly the first bound
        h.record(Duration::from_micros(30));
        h.record(Duration::from_secs(5)); // beyond every bound: +Inf only
        let (c, sum) = h.snapshot();
        assert_eq!(c[0], 1);
        assert_eq!(c[1], 1);
        assert_eq!(c[2], 2);
        assert_eq!(c[BOUNDS_NS.len() - 1], 2);
        assert_eq!(c[BOUNDS_NS.len()], 3);
        assert_eq!(sum, 10_000 + 30_000 + 5_000_000_000);
    }

    #[test]
    fn render_is_well_formed_and_counts_what_happened() {
        let metrics = Metrics::default();
        metrics.observe(Op::Write, Duration::from_micros(40));
        let a = agent("we\"ird\\name\n");
        a.count_op(Op::Write, true);
        a.count_op(Op::Write, true);
        a.count_op(Op::Write, false);
        a.metrics.count_signal(Signal::Stop);
        a.metrics.count_signal(Signal::Policy);
        a.metrics.count_decision(&verdict(Decision::Allow, &[]));
        a.metrics
            .count_decision(&verdict(Decision::Allow, &["watch"]));
        a.metrics.count_decision(&verdict(
            Decision::Kill {
                rule: "no-secrets".into(),
            },
            &[],
        ));
        a.add_bytes(2, 42);
        let text = render(
            &metrics,
            &[AgentSample {
                agent: &a,
                index_pending: 3,
            }],
        );
        // Every family has HELP and TYPE before its samples.
        let mut declared = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.push(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                let name = &line[..line.find(['{', ' ']).unwrap()];
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .filter(|f| declared.iter().any(|d| d == f))
                    .unwrap_or(name);
                assert!(declared.iter().any(|d| d == family), "{line}");
                assert!(text.contains(&format!("# HELP {family} ")), "{family}");
            }
        }
        let samples = parse(&text);
        let get = |name: &str, want: &[(&str, &str)]| -> f64 {
            samples
                .iter()
                .find(|(n, labels, _)| {
                    n == name
                        && want
                            .iter()
                            .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
                })
                .unwrap_or_else(|| panic!("no {name} {want:?}"))
                .2
        };
        let who = "we\"ird\\name\n";
        assert!(text.contains(r#"agent="we\"ird\\name\n""#));
        let w = [("agent", who), ("op", "write")];
        assert_eq!(
            get("agentfs_ops_total", &[w[0], w[1], ("result", "ok")]),
            2.0
        );
        assert_eq!(
            get("agentfs_ops_total", &[w[0], w[1], ("result", "error")]),
            1.0
        );
        assert_eq!(
            get(
                "agentfs_op_latency_seconds_bucket",
                &[("op", "write"), ("le", "0.00005")]
            ),
            1.0
        );
        assert_eq!(
            get(
                "agentfs_op_latency_seconds_bucket",
                &[("op", "write"), ("le", "0.000025")]
            ),
            0.0
        );
        assert_eq!(
            get("agentfs_op_latency_seconds_count", &[("op", "write")]),
            1.0
        );
        assert_eq!(
            get("agentfs_op_latency_seconds_sum", &[("op", "write")]),
            0.00004
        );
        let d = |rule: &str, action: &str| {
            get(
                "agentfs_policy_decisions_total",
                &[("agent", who), ("rule", rule), ("action", action)],
            )
        };
        assert_eq!(d("own-mem", "allow"), 1.0);
        assert_eq!(d("watch", "audit"), 1.0);
        assert_eq!(d("no-secrets", "kill"), 1.0);
        assert_eq!(
            get(
                "agentfs_signals_total",
                &[("agent", who), ("signal", "POLICY")]
            ),
            1.0
        );
        assert_eq!(
            get(
                "agentfs_signals_total",
                &[("agent", who), ("signal", "CONT")]
            ),
            0.0
        );
        assert_eq!(
            get("agentfs_bytes", &[("agent", who), ("class", "semantic")]),
            42.0
        );
        assert_eq!(get("agentfs_index_pending", &[("agent", who)]), 3.0);
        assert_eq!(get("agentfs_parked_calls", &[("agent", who)]), 0.0);
        assert_eq!(
            get(
                "agentfs_agent_state",
                &[("agent", who), ("state", "running")]
            ),
            1.0
        );
        assert_eq!(
            get(
                "agentfs_agent_state",
                &[("agent", who), ("state", "killed")]
            ),
            0.0
        );
    }

    /// The hot-path cost: two clock reads and one record, per mutation.
    /// `cargo test -p agentfs-vfs --lib metrics::tests::record_cost -- --nocapture`
    #[test]
    fn record_cost() {
        let m = Metrics::default();
        let n = 1_000_000u32;
        let t = std::time::Instant::now();
        for i in 0..n {
            m.observe(Op::Write, Duration::from_nanos(u64::from(i % 4096) * 997));
        }
        let record = t.elapsed() / n;
        let t = std::time::Instant::now();
        for _ in 0..n {
            let start = std::time::Instant::now();
            m.observe(Op::Write, std::hint::black_box(start).elapsed());
        }
        let timed = t.elapsed() / n;
        eprintln!("histogram record: {record:?} per call; with its two Instant reads: {timed:?}");
        assert!(timed < Duration::from_micros(20), "{timed:?}");
    }
}
