//! Limits (file size, quota, file count, write rate) and file-type rules.

use std::sync::Arc;

use crate::call::PolicyVersion;

/// Memory classes, by the path's second component.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    Working = 0,
    Episodic = 1,
    Semantic = 2,
}

impl Class {
    pub fn of(path: &[u8]) -> Option<Class> {
        let rest = path.strip_prefix(b"mem/")?;
        let name = rest.split(|b| *b == b'/').next()?;
        match name {
            b"working" => Some(Class::Working),
            b"episodic" => Some(Class::Episodic),
            b"semantic" => Some(Class::Semantic),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Class::Working => "working",
            Class::Episodic => "episodic",
            Class::Semantic => "semantic",
        }
    }
}

#[derive(Clone, Debug, Default)]
pub(crate) struct LimitRule {
    /// Index into `Ruleset::rules`.
    pub rule: usize,
    pub max_file_size: Option<u64>,
    pub max_files: Option<u64>,
    /// Per class: working, episodic, semantic.
    pub quota: [Option<u64>; 3],
    pub ops_per_sec: Option<u64>,
    pub bytes_per_sec: Option<u64>,
}

impl LimitRule {
    pub fn has_rate(&self) -> bool {
        self.ops_per_sec.is_some() || self.bytes_per_sec.is_some()
    }
}

/// What a `[[file_types]]` rule forbids, one bit each.
pub(crate) type TypeBits = u8;
pub(crate) const T_SYMLINK: TypeBits = 1;
pub(crate) const T_HARDLINK: TypeBits = 2;
pub(crate) const T_SPECIAL: TypeBits = 4;
pub(crate) const T_XATTR: TypeBits = 8;
pub(crate) const T_EXEC: TypeBits = 16;

pub(crate) struct TypesRule {
    pub rule: usize,
    pub forbid: TypeBits,
}

/// One token bucket pair of one rate rule.
#[derive(Clone, Debug)]
pub(crate) struct Bucket {
    pub name: Arc<str>,
    /// Index into `Ruleset::limits`.
    pub limit: usize,
    pub ops: f64,
    pub bytes: f64,
    pub last_ns: u64,
}

/// The write-rate state of one agent: a token bucket per rate rule that applies to it. The
/// core keeps one per agent (behind the agent's lock) and passes it to
/// [`crate::Ruleset::decide_rated`] with a monotonic clock in nanoseconds. Buckets hold one
/// second of each rate (the burst) and refill continuously. After a reload, a rule that
/// keeps its name keeps its tokens.
#[derive(Clone, Debug, Default)]
pub struct RateState {
    pub(crate) version: Option<PolicyVersion>,
    pub(crate) buckets: Vec<Bucket>,
}

impl RateState {
    pub fn new() -> RateState {
        RateState::default()
    }
}

/// Refills `b` to time `now_ns` for the rates of `l`.
pub(crate) fn refill(b: &mut Bucket, l: &LimitRule, now_ns: u64) {
    let dt = now_ns.saturating_sub(b.last_ns) as f64 / 1e9;
    b.last_ns = b.last_ns.max(now_ns);
    if let Some(r) = l.ops_per_sec {
        b.ops = (b.ops + dt * r as f64).min(r as f64);
    }
    if let Some(r) = l.bytes_per_sec {
        b.bytes = (b.bytes + dt * r as f64).min(r as f64);
    }
}

/// Whether `b` admits a call of one op and `bytes` bytes. A call larger than a whole
/// second's bytes is admitted when the bucket is full (it then goes into debt), so no single
/// write is refused forever.
pub(crate) fn admits(b: &Bucket, l: &LimitRule, bytes: u64) -> Result<(), String> {
    if let Some(r) = l.ops_per_sec {
        if b.ops < 1.0 {
            return Err(format!("more than {r} write ops per second"));
        }
    }
    if let Some(r) = l.bytes_per_sec {
        let need = (bytes as f64).min(r as f64);
        if b.bytes < need {
            return Err(format!("more than {r} bytes written per second"));
        }
    }
    Ok(())
}

pub(crate) fn charge(b: &mut Bucket, l: &LimitRule, bytes: u64) {
    if l.ops_per_sec.is_some() {
        b.ops -= 1.0;
    }
    if l.bytes_per_sec.is_some() {
        b.bytes -= bytes as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!(Class::of(b"mem/working/x"), Some(Class::Working));
        assert_eq!(Class::of(b"mem/episodic"), Some(Class::Episodic));
        assert_eq!(Class::of(b"mem/semantic/a/b"), Some(Class::Semantic));
        assert_eq!(Class::of(b"mem/other/x"), None);
        assert_eq!(Class::of(b"state/x"), None);
    }

    #[test]
    fn bucket_refills_and_admits_one_big_write_when_full() {
        let l = LimitRule {
            ops_per_sec: Some(2),
            bytes_per_sec: Some(100),
            ..LimitRule::default()
        };
        let mut b = Bucket {
            name: Arc::from("r"),
            limit: 0,
            ops: 2.0,
            bytes: 100.0,
            last_ns: 0,
        };
        assert!(admits(&b, &l, 1000).is_ok());
        charge(&mut b, &l, 1000);
        assert!(admits(&b, &l, 1).is_err());
        // 9 s later the 900-byte debt is repaid, but nothing more is available yet.
        refill(&mut b, &l, 9_000_000_000);
        assert!(admits(&b, &l, 1).is_err());
        refill(&mut b, &l, 10_000_000_000);
        assert!(admits(&b, &l, 100).is_ok());
        // The clock going backwards refills nothing.
        refill(&mut b, &l, 5);
        assert_eq!(b.last_ns, 10_000_000_000);
    }
}
