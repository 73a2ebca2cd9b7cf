//! Policy decisions for agentfs.
//!
//! Every mutation in the filesystem core passes through one choke point that asks a
//! [`PolicyHook`] before anything changes. This crate holds the request/decision vocabulary;
//! the policy language itself (globs, content rules, limits) plugs in behind the same trait.

use std::fmt;

/// What a mutating call wants to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Create,
    Mkdir,
    Mknod,
    Symlink,
    Link,
    Write,
    Truncate,
    SetAttr,
    Rename,
    Unlink,
    Rmdir,
    SetXattr,
    RemoveXattr,
    RegisterAgent,
}

impl Op {
    /// Lower-case name used in audit records and status counters.
    pub fn name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Mkdir => "mkdir",
            Op::Mknod => "mknod",
            Op::Symlink => "symlink",
            Op::Link => "link",
            Op::Write => "write",
            Op::Truncate => "truncate",
            Op::SetAttr => "setattr",
            Op::Rename => "rename",
            Op::Unlink => "unlink",
            Op::Rmdir => "rmdir",
            Op::SetXattr => "setxattr",
            Op::RemoveXattr => "removexattr",
            Op::RegisterAgent => "register",
        }
    }

    /// Every op, for counters indexed by op.
    pub const ALL: [Op; 14] = [
        Op::Create,
        Op::Mkdir,
        Op::Mknod,
        Op::Symlink,
        Op::Link,
        Op::Write,
        Op::Truncate,
        Op::SetAttr,
        Op::Rename,
        Op::Unlink,
        Op::Rmdir,
        Op::SetXattr,
        Op::RemoveXattr,
        Op::RegisterAgent,
    ];

    /// Position in [`Op::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One mutation as the policy sees it. Paths are relative to the agent's root
/// (e.g. `mem/semantic/notes.txt`).
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub agent: &'a str,
    pub op: Op,
    pub path: &'a str,
    /// Second path of a rename or link.
    pub target: Option<&'a str>,
    /// Bytes about to be written, when the op writes content.
    pub data: Option<&'a [u8]>,
    pub uid: u32,
    pub pid: u32,
}

/// The answer to a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Refuse the call (EACCES) and record it.
    Deny {
        rule: String,
    },
    /// Refuse the call, raise SIGPOLICY and kill the agent.
    Kill {
        rule: String,
    },
}

/// Something that decides on mutations. Must be cheap: it runs on every write.
pub trait PolicyHook: Send + Sync {
    fn check(&self, request: &Request<'_>) -> Decision;
}

/// Allows everything. The placeholder hook until the policy language lands; the choke point
/// already calls it, so plugging in the real engine cannot miss a mutation.
#[derive(Clone, Copy, Debug, Default)]
pub struct AllowAll;

impl PolicyHook for AllowAll {
    fn check(&self, _request: &Request<'_>) -> Decision {
        Decision::Allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_index_matches_position_in_all() {
        for (i, op) in Op::ALL.iter().enumerate() {
            assert_eq!(op.index(), i, "{op}");
        }
    }

    #[test]
    fn allow_all_allows() {
        let req = Request {
            agent: "a",
            op: Op::Write,
            path: "mem/semantic/x",
            target: None,
            data: Some(b"hi"),
            uid: 0,
            pid: 1,
        };
        assert_eq!(AllowAll.check(&req), Decision::Allow);
    }
}
