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

impl AuditRecord {
    /// Parses one line written by [`AuditRecord::to_json`] (an `agentfs audit export` file).
    pub fn from_json(line: &str) -> Result<AuditRecord, String> {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("not a JSON object: {e}"))?;
        let text = |k: &str| -> Result<String, String> {
            v.get(k)
                .and_then(|x| x.as_str())
                .map(str::to_string)
                .ok_or_else(|| format!("no string field `{k}`"))
        };
        let num = |k: &str| -> Result<u64, String> {
            v.get(k)
                .and_then(|x| x.as_u64())
                .ok_or_else(|| format!("no unsigned field `{k}`"))
        };
        let hash = |k: &str| -> Result<Option<[u8; 32]>, String> {
            match v.get(k) {
                Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(h)) => parse_hash(h)
                    .map(Some)
                    .ok_or_else(|| format!("`{k}` is not 64 hex digits")),
                _ => Err(format!("no hash field `{k}`")),
            }
        };
        let required = |k: &str| hash(k)?.ok_or_else(|| format!("`{k}` is null"));
        let small = |k: &str| -> Result<u32, String> {
            u32::try_from(num(k)?).map_err(|_| format!("`{k}` is out of range"))
        };
        let result = v
            .get("result")
            .and_then(|x| x.as_i64())
            .and_then(|r| i32::try_from(r).ok())
            .ok_or("no integer field `result`")?;
        Ok(AuditRecord {
            seq: num("seq")?,
            entry: AuditEntry {
                time: v
                    .get("time")
                    .and_then(|x| x.as_i64())
                    .ok_or("no integer field `time`")?,
                agent: text("agent")?,
                pid: small("pid")?,
                uid: small("uid")?,
                op: text("op")?,
                path: text("path")?,
                result,
                size: num("size")?,
                target: text("target")?,
                offset: num("offset")?,
                data_hash: hash("data_hash")?,
                decision: text("decision")?,
                rule: text("rule")?,
                policy: hash("policy")?.unwrap_or([0; 32]),
                detail: text("detail")?,
            },
            prev_hash: required("prev_hash")?,
            hash: required("hash")?,
        })
    }
}

/// Checks a run of exported records as a chain: consecutive seqs, each record's hash what its
/// fields give, each `prev_hash` the hash before it. A run starting at seq 1 must start from
/// [`GENESIS`]; a later start is anchored on its first `prev_hash`, which the caller compares
/// with the entry it follows. Returns the last record's head, or the seq and what is wrong.
pub fn verify_run<I>(records: I) -> Result<Option<(u64, ChainHead)>, (u64, String)>
where
    I: IntoIterator<Item = Result<AuditRecord, (u64, String)>>,
{
    let mut first = None;
    let mut head: Option<ChainHead> = None;
    for rec in records {
        let rec = rec?;
        match head {
            None => {
                if rec.seq == 0 {
                    return Err((0, "seq 0 does not exist (the chain starts at 1)".into()));
                }
                if rec.seq == 1 && rec.prev_hash != GENESIS {
                    return Err((
                        1,
                        "the first entry does not start from the genesis hash".into(),
                    ));
                }
                first = Some(rec.seq);
            }
            Some(h) => {
                if rec.seq != h.seq + 1 {
                    return Err((
                        rec.seq,
                        format!("follows entry {}: entries missing or out of order", h.seq),
                    ));
                }
                if rec.prev_hash != h.hash {
                    return Err((rec.seq, "prev_hash is not the previous entry's hash".into()));
                }
            }
        }
        if !rec.self_valid() {
            return Err((
                rec.seq,
                "altered: the hash does not match the fields".into(),
            ));
        }
        head = Some(ChainHead {
            seq: rec.seq,
            hash: rec.hash,
        });
    }
    Ok(first.zip(head))
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

    fn chain(n: u64) -> Vec<AuditRecord> {
        let mut head = ChainHead::default();
        (0..n)
            .map(|i| {
                let mut e = entry();
                e.offset = i;
                let prev = head.hash;
                let (seq, hash) = head.advance(&canonical_body(&e));
                AuditRecord {
                    seq,
                    entry: e,
                    prev_hash: prev,
                    hash,
                }
            })
            .collect()
    }

    fn run(recs: &[AuditRecord]) -> Result<Option<(u64, ChainHead)>, (u64, String)> {
        verify_run(
            recs.iter()
                .map(|r| AuditRecord::from_json(&r.to_json()).map_err(|e| (r.seq, e))),
        )
    }

    #[test]
    fn json_lines_round_trip_and_verify() {
        let recs = chain(5);
        for r in &recs {
            assert_eq!(&AuditRecord::from_json(&r.to_json()).unwrap(), r);
        }
        let (first, head) = run(&recs).unwrap().unwrap();
        assert_eq!((first, head.seq, head.hash), (1, 5, recs[4].hash));
        assert_eq!(
            run(&recs[2..]).unwrap().unwrap().0,
            3,
            "a later start is anchored"
        );
        assert_eq!(run(&[]).unwrap(), None);
    }

    #[test]
    fn verify_run_names_the_bad_entry() {
        let recs = chain(5);
        let mut altered = recs.clone();
        altered[2].entry.path.push('x');
        assert_eq!(run(&altered).unwrap_err().0, 3);
        let mut dropped = recs.clone();
        dropped.remove(3);
        assert_eq!(run(&dropped).unwrap_err().0, 5);
        let mut swapped = recs.clone();
        swapped.swap(1, 2);
        assert_eq!(run(&swapped).unwrap_err().0, 3);
        let mut forged = recs.clone();
        forged[1].prev_hash = [7; 32];
        forged[1].hash = entry_hash(&forged[1].prev_hash, 2, &forged[1].entry);
        assert_eq!(run(&forged).unwrap_err().0, 2);
        assert!(AuditRecord::from_json("{\"seq\":1}").is_err());
        assert!(AuditRecord::from_json("not json").is_err());
    }
}
