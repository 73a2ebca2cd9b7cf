//! What the core asks ([`Call`]) and what it gets back ([`Verdict`]).

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use crate::{Decision, Op, Request};

/// The kind of a file system object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl FileKind {
    /// FIFOs, sockets and device nodes.
    pub fn is_special(self) -> bool {
        matches!(
            self,
            FileKind::Fifo | FileKind::Socket | FileKind::CharDevice | FileKind::BlockDevice
        )
    }

    /// Name used in policy files (`kind = "fifo"`).
    pub fn name(self) -> &'static str {
        match self {
            FileKind::File => "file",
            FileKind::Dir => "dir",
            FileKind::Symlink => "symlink",
            FileKind::Fifo => "fifo",
            FileKind::Socket => "socket",
            FileKind::CharDevice => "char",
            FileKind::BlockDevice => "block",
        }
    }
}

/// What a rule does when it matches. Ordered by strictness: `Audit < Deny < Kill`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// Allow and record (a dry run).
    Audit,
    /// Refuse the call (EACCES) and record it.
    Deny,
    /// Refuse the call, raise SIGPOLICY, kill the agent.
    Kill,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Audit => "audit",
            Action::Deny => "deny",
            Action::Kill => "kill",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// BLAKE3 of the policy sources (the built-in policy and every file, in order). Recorded with
/// every decision so the flight recorder says which rules decided.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PolicyVersion(pub [u8; 32]);

impl PolicyVersion {
    /// Lower-case hex, 64 digits.
    pub fn to_hex(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for PolicyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for PolicyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PolicyVersion({self})")
    }
}

/// A file's size before and after the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SizeChange {
    pub before: u64,
    pub after: u64,
}

/// How much an agent holds: bytes in the memory class of the call's path, and its file count
/// (every node under `mem/`: files, directories, symlinks).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Usage {
    pub class_bytes: u64,
    pub files: u64,
}

/// The agent's usage before and after the call. A limit refuses a call only when the call
/// grows the usage past it, so an agent over its quota (after a reload) can still delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsageChange {
    pub before: Usage,
    pub after: Usage,
}

/// The bytes a file will hold after a write or truncate, around the changed range.
///
/// Contract (the window guarantee, see docs/policy.md): `bytes` holds the file's content
/// after the call from offset `at`, and covers at least
/// `[changed.start - w, changed.end + w)` clamped to `[0, file_size)`, where
/// `w = Ruleset::window()`. `changed` is every offset whose byte changed: a write's range,
/// including a zero-filled hole between the old end of file and the write; for a truncate
/// that grows the file `[old_size, new_size)`; for one that shrinks it the empty range
/// `[new_size, new_size)`. If `bytes` is short, the call is refused (rule `content-window`,
/// action deny): the guarantee never silently weakens.
#[derive(Clone, Debug)]
pub struct Content<'a> {
    pub bytes: &'a [u8],
    pub at: u64,
    pub changed: Range<u64>,
    pub file_size: u64,
}

/// One mutating call, as the policy sees it. Build it with [`Call::new`] and set what the op
/// needs (see docs/policy.md, "What the core passes"):
///
/// | op | fields |
/// |---|---|
/// | create, mknod, mkdir | `kind`, `mode` |
/// | symlink | `data` (the target) |
/// | link | `target`, `kind` |
/// | rename | `target`, `kind` (directory renames are checked for everything below), `replaces` |
/// | write | `content` (the window), `size`, `usage`; `data` only without `content` |
/// | truncate | `content` (window around the cut), `size`, `usage`, `mode`/`chown` if also set |
/// | setattr | `mode` (chmod), `chown`, `kind` |
/// | setxattr | `xattr_name`, `data` (the value) |
/// | removexattr | `xattr_name` |
#[derive(Clone, Debug)]
pub struct Call<'a> {
    pub agent: &'a str,
    pub op: Op,
    /// Canonical path relative to the agent's root (`mem/semantic/x`), raw bytes, from the
    /// daemon's own inode table. For `register` it is empty.
    pub path: &'a [u8],
    /// Destination of a rename or link, relative to the agent's root.
    pub target: Option<&'a [u8]>,
    /// Kind of the object created (create, mknod, mkdir, symlink) or changed or moved.
    pub kind: Option<FileKind>,
    /// Mode of a created object, or the new mode of a chmod.
    pub mode: Option<u32>,
    /// A setattr that changes the owner or group.
    pub chown: bool,
    /// A rename that replaces an existing destination (or exchanges two names).
    pub replaces: bool,
    /// The symlink target (symlink), the xattr value (setxattr), or the written bytes of a
    /// write when no `content` window is given (then scanning is not exact across writes).
    pub data: Option<&'a [u8]>,
    /// Name of the xattr (setxattr, removexattr).
    pub xattr_name: Option<&'a [u8]>,
    /// The file after a write or truncate, around the changed range.
    pub content: Option<Content<'a>>,
    /// The file's size before and after a write or truncate.
    pub size: Option<SizeChange>,
    /// The agent's usage before and after the call.
    pub usage: Option<UsageChange>,
    pub uid: u32,
    pub pid: u32,
}

impl<'a> Call<'a> {
    /// A call with nothing but its agent, op and path.
    pub fn new(agent: &'a str, op: Op, path: &'a [u8]) -> Call<'a> {
        Call {
            agent,
            op,
            path,
            target: None,
            kind: None,
            mode: None,
            chown: false,
            replaces: false,
            data: None,
            xattr_name: None,
            content: None,
            size: None,
            usage: None,
            uid: 0,
            pid: 0,
        }
    }

    /// The call a legacy [`Request`] describes: paths as bytes, the kind implied by the op.
    /// It has no sizes, usage or window: a write is not known to be an append, and its
    /// bytes are scanned alone.
    pub fn from_request(r: &Request<'a>) -> Call<'a> {
        let kind = match r.op {
            Op::Create => Some(FileKind::File),
            Op::Mkdir | Op::RegisterAgent => Some(FileKind::Dir),
            Op::Symlink => Some(FileKind::Symlink),
            _ => None,
        };
        Call {
            target: r.target.map(str::as_bytes),
            kind,
            data: r.data,
            uid: r.uid,
            pid: r.pid,
            ..Call::new(r.agent, r.op, r.path.as_bytes())
        }
    }
}

/// A rule that matched a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The rule's name (unique among the loaded rules), or a reserved name: `default-deny`,
    /// `content-window`, `invalid-call`.
    pub rule: Arc<str>,
    pub action: Action,
    /// One sentence: what the call did that the rule forbids.
    pub reason: String,
}

/// The full answer to a [`Call`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// `Allow`, or the strictest matching rule (`kill` over `deny`; among equals the smallest
    /// name, so rule order never changes the answer).
    pub decision: Decision,
    /// Why the call was refused (the deciding rule's finding), for `Deny` and `Kill`.
    pub reason: Option<String>,
    /// The `allow` rule that granted the call's path right, if any (smallest name).
    pub allowed_by: Option<Arc<str>>,
    /// Every matching `audit` rule (sorted by name): allowed, to be recorded.
    pub audited: Vec<Finding>,
    /// The policy version that decided.
    pub version: PolicyVersion,
}

impl Verdict {
    /// A verdict carrying only a decision (from a [`crate::PolicyHook`] without the language).
    pub fn from_decision(decision: Decision) -> Verdict {
        Verdict {
            decision,
            reason: None,
            allowed_by: None,
            audited: Vec::new(),
            version: PolicyVersion::default(),
        }
    }

    pub fn is_allowed(&self) -> bool {
        self.decision == Decision::Allow
    }

    /// The deciding rule of a refusal.
    pub fn refused_by(&self) -> Option<&str> {
        match &self.decision {
            Decision::Allow => None,
            Decision::Deny { rule } | Decision::Kill { rule } => Some(rule),
        }
    }

    /// `allow`, `audit` (allowed with audit findings), `deny` or `kill`.
    pub fn outcome(&self) -> &'static str {
        match &self.decision {
            Decision::Allow if self.audited.is_empty() => "allow",
            Decision::Allow => "audit",
            Decision::Deny { .. } => "deny",
            Decision::Kill { .. } => "kill",
        }
    }
}
