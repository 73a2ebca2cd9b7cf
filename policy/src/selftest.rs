//! `[[test]]` cases: a call and the decision it must get. They run against the whole
//! compiled policy before it is activated (at check and at every reload).
//!
//! A case describes one call on a file whose other bytes are zeros: `content` is written at
//! `offset` (default: the end of file, `size_before`, default 0), `size` is a truncate's new
//! size. The case passes when the outcome (`allow`, `audit`, `deny`, `kill`) is `expect`,
//! and, if `rule` is given, the deciding rule is `rule` (for `allow`: the granting rule; for
//! `audit`: one of the audit rules).

use std::ops::Range;

use toml::Spanned;

use crate::call::{Call, Content, FileKind, SizeChange, Usage, UsageChange};
use crate::compile::Ruleset;
use crate::parse::{KindName, RawTest};
use crate::Op;

/// The most bytes of zeros a case may need simulated.
const MAX_SIMULATED: u64 = 64 << 20;

type Failure = (Range<usize>, String);

pub(crate) fn run(rules: &Ruleset, case: &Spanned<RawTest>, number: usize) -> Result<(), Failure> {
    let t = case.get_ref();
    let label = match &t.name {
        Some(n) => format!("test {:?}", n.get_ref()),
        None => format!("test #{number}"),
    };
    let at = case.span();
    let op = Op::from_name(t.op.get_ref()).ok_or_else(|| {
        let names: Vec<&str> = Op::ALL.iter().map(|o| o.name()).collect();
        (
            t.op.span(),
            format!(
                "{label}: unknown op `{}` (ops: {})",
                t.op.get_ref(),
                names.join(", ")
            ),
        )
    })?;
    let content = t.content.as_deref().map(str::as_bytes);
    let kind = t.kind.as_ref().map(|k| match k.get_ref() {
        KindName::File => FileKind::File,
        KindName::Dir => FileKind::Dir,
        KindName::Symlink => FileKind::Symlink,
        KindName::Fifo => FileKind::Fifo,
        KindName::Socket => FileKind::Socket,
        KindName::Char => FileKind::CharDevice,
        KindName::Block => FileKind::BlockDevice,
    });
    let kind = kind.or(match op {
        Op::Mkdir | Op::Rmdir | Op::RegisterAgent => Some(FileKind::Dir),
        Op::Symlink => Some(FileKind::Symlink),
        Op::Mknod => Some(FileKind::Fifo),
        _ => Some(FileKind::File),
    });

    let mut call = Call::new(t.agent.get_ref(), op, t.path.get_ref().as_bytes());
    call.target = t.target.as_ref().map(|s| s.get_ref().as_bytes());
    call.kind = kind;
    call.mode = t.mode;
    call.chown = t.chown;
    call.replaces = t.replaces;
    call.xattr_name = t.xattr.as_deref().map(str::as_bytes);
    if matches!(op, Op::Symlink | Op::SetXattr | Op::Write) {
        call.data = content;
    }
    if t.class_bytes.is_some() || t.files.is_some() {
        call.usage = Some(UsageChange {
            before: Usage::default(),
            after: Usage {
                class_bytes: t.class_bytes.unwrap_or(0),
                files: t.files.unwrap_or(0),
            },
        });
    }

    // The file after the call, as zeros plus the written bytes, around the changed range.
    let before = t.size_before.unwrap_or(0);
    let window = rules.window() as u64;
    let simulated: Option<(u64, u64, Range<u64>, Vec<u8>)> = match op {
        Op::Write => {
            let data = content.unwrap_or_default();
            let offset = t.offset.unwrap_or(before);
            let end = offset + data.len() as u64;
            let after = before.max(end);
            let changed = offset.min(before)..end;
            let (lo, hi) = around(&changed, window, after);
            if hi - lo > MAX_SIMULATED {
                return Err((at, format!("{label}: the write is too large to simulate")));
            }
            let mut buf = vec![0u8; (hi - lo) as usize];
            let from = (offset - lo) as usize;
            buf[from..from + data.len()].copy_from_slice(data);
            Some((before, after, changed, buf))
        }
        Op::Truncate => {
            let Some(after) = t.size else {
                return Err((at, format!("{label}: a truncate case needs `size`")));
            };
            let mut changed = if after > before {
                before..after
            } else {
                after..after
            };
            if !rules.zero_fill_can_match() && changed.end > changed.start + 1 {
                changed.end = changed.start + 1;
            }
            let (lo, hi) = around(&changed, window, after);
            if hi - lo > MAX_SIMULATED {
                return Err((
                    at,
                    format!("{label}: the truncate is too large to simulate"),
                ));
            }
            Some((before, after, changed, vec![0u8; (hi - lo) as usize]))
        }
        _ => None,
    };
    let storage;
    if let Some((before, after, changed, buf)) = simulated {
        storage = buf;
        let (lo, _) = around(&changed, window, after);
        call.size = Some(SizeChange { before, after });
        call.content = Some(Content {
            bytes: &storage,
            at: lo,
            changed,
            file_size: after,
        });
    }

    let v = rules.decide(&call);
    let got = v.outcome();
    let expect = t.expect.get_ref().name();
    let rule_ok = match &t.rule {
        None => true,
        Some(r) => {
            let r = r.get_ref().as_str();
            match got {
                "allow" => v.allowed_by.as_deref() == Some(r),
                "audit" => v.audited.iter().any(|f| &*f.rule == r),
                _ => v.refused_by() == Some(r),
            }
        }
    };
    if got == expect && rule_ok {
        return Ok(());
    }
    let wanted = match &t.rule {
        Some(r) => format!("{expect} by rule `{}`", r.get_ref()),
        None => expect.to_string(),
    };
    let actual = match got {
        "allow" => match &v.allowed_by {
            Some(r) => format!("allow by rule `{r}`"),
            None => "allow".to_string(),
        },
        "audit" => {
            let names: Vec<&str> = v.audited.iter().map(|f| &*f.rule).collect();
            format!("audit by rule `{}`", names.join("`, `"))
        }
        _ => format!(
            "{got} by rule `{}`: {}",
            v.refused_by().unwrap_or("?"),
            v.reason.as_deref().unwrap_or("")
        ),
    };
    Err((
        at,
        format!("{label} failed: expected {wanted}, got {actual}"),
    ))
}

/// The offsets `[lo, hi)` the window contract asks for around `changed`.
fn around(changed: &Range<u64>, window: u64, size: u64) -> (u64, u64) {
    let lo = changed.start.saturating_sub(window);
    let hi = changed.end.saturating_add(window).min(size).max(lo);
    (lo, hi)
}
