//! Policy decisions for agentfs.
//!
//! Every mutation in the filesystem core passes through one choke point that asks a
//! [`PolicyHook`] before anything changes. This crate holds that vocabulary ([`Op`],
//! [`Request`], [`Decision`]) and the policy language behind it: TOML files compiled once
//! into a [`Ruleset`] (one glob set, a few multi-pattern regexes, limits), held by an [`Engine`] that
//! swaps rulesets atomically on reload. The crate is pure: no I/O, no clock; the caller
//! passes file texts ([`Source`]), the bytes around a write ([`Content`]) and the time.
//!
//! The core's per-call sequence, all under one version of the rules:
//!
//! ```no_run
//! # use agentfs_policy::*;
//! # let engine = Engine::builtin();
//! # let mut rate = RateState::default();
//! let rules = engine.current(); // one Arc<Ruleset> for the whole call
//! let w = rules.window(); // bytes of context each side of a write
//! // ... read the file bytes [start - w, end + w) as they will be after the write ...
//! let call = Call::new("a", Op::Write, b"mem/semantic/notes.txt");
//! let verdict = rules.decide_rated(&call, &mut rate, 0);
//! # let _ = (w, verdict);
//! ```
//!
//! See docs/policy.md for the language.

use std::fmt;

mod builtin;
mod call;
mod caseless;
mod compile;
mod decide;
mod diag;
mod engine;
mod limits;
mod load;
mod parse;
mod paths;
mod prefilter;
mod render;
mod scan;
mod selftest;

#[cfg(test)]
mod tests;

pub use builtin::{default_policy_toml, BUILTIN_NAME, BUILTIN_SECRETS, BUILTIN_TOML};
pub use call::{
    Action, Call, Content, FileKind, Finding, PolicyVersion, SizeChange, Usage, UsageChange,
    Verdict,
};
pub use compile::Ruleset;
pub use diag::{Diagnostic, PolicyError, Source};
pub use engine::Engine;
pub use limits::RateState;
pub use render::Summary;
pub use scan::{LOOK_AROUND, MAX_MATCH_LEN_CAP};

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

    /// The op named `name` (as [`Op::name`] spells it).
    pub fn from_name(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.name() == name)
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

    /// The full decision on a [`Call`] (raw-byte paths, sizes, the content window): which rule
    /// refused it, which `audit` rules matched, the policy version. The default answers from
    /// [`PolicyHook::check`] (paths converted lossily); [`Engine`] and [`Ruleset`] decide
    /// natively.
    fn decide(&self, call: &Call<'_>) -> Verdict {
        let path = String::from_utf8_lossy(call.path);
        let target = call.target.map(String::from_utf8_lossy);
        let request = Request {
            agent: call.agent,
            op: call.op,
            path: &path,
            target: target.as_deref(),
            data: call.data,
            uid: call.uid,
            pid: call.pid,
        };
        Verdict::from_decision(self.check(&request))
    }

    /// Bytes of file content the core must pass on each side of a changed range (see
    /// [`Content`]); 0 when no content rule needs any.
    fn window(&self) -> usize {
        0
    }
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
mod vocabulary_tests {
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
