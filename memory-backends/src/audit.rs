//! The flight recorder's hash chain: the canonical encoding of an entry, the chain hash, the
//! stored record and its JSON line, and the chain head pinned outside the database.
//!
//! `docs/storage.md` ("The audit chain") specifies the encoding byte for byte, so that anyone
//! can re-verify an exported log without this code.

use crate::AuditEntry;
use std::fmt::Write as _;

/// `prev_hash` of the first entry (seq 1).
pub const GENESIS: [u8; 32] = [0; 32];

/// One stored flight-recorder entry: the entry, its place in the chain and its hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    pub seq: u64,
    pub entry: AuditEntry,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The canonical encoding of `entry` without its sequence number (see [`canonical`]). The
/// store computes it outside its journal lock and adds the sequence number under it.
pub fn canonical_body(entry: &AuditEntry) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        96 + entry.agent.len()
            + entry.op.len()
            + entry.path.len()
            + entry.target.len()
            + entry.decision.len()
            + entry.rule.len()
            + entry.detail.len(),
    );
    out.extend_from_slice(&entry.time.to_le_bytes());
    put_str(&mut out, &entry.agent);
    out.extend_from_slice(&entry.pid.to_le_bytes());
    out.extend_from_slice(&entry.uid.to_le_bytes());
    put_str(&mut out, &entry.op);
    put_str(&mut out, &entry.path);
    out.extend_from_slice(&entry.result.to_le_bytes());
    out.extend_from_slice(&entry.size.to_le_bytes());
    put_str(&mut out, &entry.target);
    out.extend_from_slice(&entry.offset.to_le_bytes());
    match &entry.data_hash {
        Some(h) => {
            out.push(1);
            out.extend_from_slice(h);
        }
        None => out.push(0),
    }
    put_str(&mut out, &entry.decision);
    put_str(&mut out, &entry.rule);
    out.extend_from_slice(&entry.policy);
    put_str(&mut out, &entry.detail);
    out
}

/// The canonical encoding of entry `seq`: `seq` (u64 LE) followed by [`canonical_body`].
pub fn canonical(seq: u64, entry: &AuditEntry) -> Vec<u8> {
    let mut out = seq.to_le_bytes().to_vec();
    out.extend_from_slice(&canonical_body(entry));
    out
}

/// `BLAKE3(prev_hash || seq LE || body)`, the body being [`canonical_body`].
pub fn link_hash(prev: &[u8; 32], seq: u64, body: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(prev);
    h.update(&seq.to_le_bytes());
    h.update(body);
    *h.finalize().as_bytes()
}

/// The hash entry `seq` must have after `prev`.
pub fn entry_hash(prev: &[u8; 32], seq: u64, entry: &AuditEntry) -> [u8; 32] {
    link_hash(prev, seq, &canonical_body(entry))
}

/// Where the chain ends: the last entry's seq and hash (`seq` 0 and [`GENESIS`] when empty).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainHead {
    pub seq: u64,
    pub hash: [u8; 32],
}

impl Default for ChainHead {
    fn default() -> Self {
        ChainHead {
            seq: 0,
            hash: GENESIS,
        }
    }
}

impl ChainHead {
    /// Extends the chain by one entry whose body is `body`; returns the new entry's seq and hash.
    pub fn advance(&mut self, body: &[u8]) -> (u64, [u8; 32]) {
        let seq = self.seq + 1;
        let hash = link_hash(&self.hash, seq, body);
        *self = ChainHead { seq, hash };
        (seq, hash)
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Parses 64 hex digits.
pub fn parse_hash(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

impl AuditRecord {
    /// True when `hash` is what `prev_hash`, `seq` and the entry give.
    pub fn self_valid(&self) -> bool {
        entry_hash(&self.prev_hash, self.seq, &self.entry) == self.hash
    }

    /// The record as one JSON object (no newline). Field order is fixed; hashes are hex;
    /// `data_hash` and `policy` are `null` when absent (`policy` all zero).
    pub fn to_json(&self) -> String {
        let e = &self.entry;
        let opt = |h: Option<&[u8; 32]>| match h {
            Some(h) => format!("\"{}\"", hex(h)),
            None => "null".to_string(),
        };
        let s = |v: &str| serde_json::Value::String(v.to_string()).to_string();
        format!(
            "{{\"seq\":{},\"time\":{},\"agent\":{},\"pid\":{},\"uid\":{},\"op\":{},\"path\":{},\
             \"target\":{},\"offset\":{},\"size\":{},\"result\":{},\"data_hash\":{},\
             \"decision\":{},\"rule\":{},\"policy\":{},\"detail\":{},\"prev_hash\":\"{}\",\
             \"hash\":\"{}\"}}",
            self.seq,
            e.time,
            s(&e.agent),
            e.pid,
            e.uid,
            s(&e.op),
            s(&e.path),
            s(&e.target),
            e.offset,
            e.size,
            e.result,
            opt(e.data_hash.as_ref()),
            s(&e.decision),
            s(&e.rule),
            opt((e.policy != [0; 32]).then_some(&e.policy)),
            s(&e.detail),
            hex(&self.prev_hash),
            hex(&self.hash),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> AuditEntry {
        AuditEntry {
            time: 1_700_000_000_000_000_000,
            agent: "a".into(),
            pid: 42,
            uid: 1000,
            op: "write".into(),
            path: "a/mem/episodic/log".into(),
            result: 0,
            size: 5,
            target: String::new(),
            offset: 10,
            data_hash: Some([0xab; 32]),
            decision: "allow".into(),
            rule: "r1".into(),
            policy: [0; 32],
            detail: String::new(),
        }
    }

    /// Pins the canonical encoding: `docs/storage.md` documents exactly these bytes.
    #[test]
    fn canonical_encoding_is_pinned() {
        let bytes = canonical(7, &entry());
        let mut expected = Vec::new();
        expected.extend_from_slice(&7u64.to_le_bytes());
        expected.extend_from_slice(&1_700_000_000_000_000_000i64.to_le_bytes());
        expected.extend_from_slice(&[1, 0, 0, 0, b'a']);
        expected.extend_from_slice(&42u32.to_le_bytes());
        expected.extend_from_slice(&1000u32.to_le_bytes());
        expected.extend_from_slice(&[5, 0, 0, 0]);
        expected.extend_from_slice(b"write");
        expected.extend_from_slice(&[18, 0, 0, 0]);
        expected.extend_from_slice(b"a/mem/episodic/log");
        expected.extend_from_slice(&0i32.to_le_bytes());
        expected.extend_from_slice(&5u64.to_le_bytes());
        expected.extend_from_slice(&[0, 0, 0, 0]);
        expected.extend_from_slice(&10u64.to_le_bytes());
        expected.push(1);
        expected.extend_from_slice(&[0xab; 32]);
        expected.extend_from_slice(&[5, 0, 0, 0]);
        expected.extend_from_slice(b"allow");
        expected.extend_from_slice(&[2, 0, 0, 0]);
        expected.extend_from_slice(b"r1");
        expected.extend_from_slice(&[0; 32]);
        expected.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(bytes, expected);
        let mut h = blake3::Hasher::new();
        h.update(&GENESIS);
        h.update(&bytes);
        assert_eq!(entry_hash(&GENESIS, 7, &entry()), *h.finalize().as_bytes());
    }

    #[test]
    fn every_field_changes_the_hash() {
        let base = entry_hash(&GENESIS, 1, &entry());
        let mut variants = Vec::new();
        let e = entry();
        variants.push(AuditEntry {
            time: 1,
            ..e.clone()
        });
        variants.push(AuditEntry {
            agent: "b".into(),
            ..e.clone()
        });
        variants.push(AuditEntry {
            pid: 1,
            ..e.clone()
        });
        variants.push(AuditEntry {
            uid: 1,
            ..e.clone()
        });
        variants.push(AuditEntry {
            op: "x".into(),
            ..e.clone()
        });
        variants.push(AuditEntry {
            path: "p".into(),
            ..e.clone()
        });
        variants.push(AuditEntry {
            result: 13,
            ..e.clone()
        });
        variants.push(AuditEntry {
            size: 1,
            ..e.clone()
        });
        variants.push(AuditEntry {
            target: "t".into(),
            ..e.clone()
        });
        variants.push(AuditEntry {
            offset: 1,
            ..e.clone()
        });
        variants.push(AuditEntry {
            data_hash: None,
            ..e.clone()
        });
        variants.push(AuditEntry {
            decision: "deny".into(),
            ..e.clone()
        });
        variants.push(AuditEntry {
            rule: "r2".into(),
            ..e.clone()
        });
        variants.push(AuditEntry {
            policy: [1; 32],
            ..e.clone()
        });
        variants.push(AuditEntry {
            detail: "d".into(),
            ..e.clone()
        });
        for v in &variants {
            assert_ne!(entry_hash(&GENESIS, 1, v), base, "{v:?}");
        }
        assert_ne!(entry_hash(&GENESIS, 2, &e), base);
        assert_ne!(entry_hash(&[1; 32], 1, &e), base);
        // Length prefixes keep field boundaries: moving a byte between fields changes it.
        let a = AuditEntry {
            op: "ab".into(),
            path: "c".into(),
            ..e.clone()
        };
        let b = AuditEntry {
            op: "a".into(),
            path: "bc".into(),
            ..e
        };
        assert_ne!(entry_hash(&GENESIS, 1, &a), entry_hash(&GENESIS, 1, &b));
    }

    #[test]
    fn json_line_is_valid_json() {
        let mut head = ChainHead::default();
        let e = AuditEntry {
            path: "a/\"q\"\n".into(),
            ..entry()
        };
        let (seq, hash) = head.advance(&canonical_body(&e));
        let rec = AuditRecord {
            seq,
            entry: e,
            prev_hash: GENESIS,
            hash,
        };
        assert!(rec.self_valid());
        let v: serde_json::Value = serde_json::from_str(&rec.to_json()).unwrap();
        assert_eq!(v["seq"], 1);
        assert_eq!(v["path"], "a/\"q\"\n");
        assert_eq!(v["policy"], serde_json::Value::Null);
        assert_eq!(v["hash"], hex(&hash));
        assert_eq!(
            parse_hash(v["data_hash"].as_str().unwrap()),
            Some([0xab; 32])
        );
    }
}
