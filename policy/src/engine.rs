//! The active ruleset, swapped atomically on reload.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::call::{Call, PolicyVersion, Verdict};
use crate::compile::Ruleset;
use crate::diag::{PolicyError, Source};
use crate::{Decision, PolicyHook, Request};

/// Holds the active [`Ruleset`]. A decision takes a snapshot ([`Engine::current`]) and runs
/// entirely under it; a reload compiles and tests the new files first, and swaps only if
/// they pass, so a bad file leaves the old rules in force. Readers never wait for a reload.
pub struct Engine {
    current: ArcSwap<Ruleset>,
}

impl Engine {
    pub fn new(rules: Ruleset) -> Engine {
        Engine {
            current: ArcSwap::from_pointee(rules),
        }
    }

    /// The built-in policy alone.
    pub fn builtin() -> Engine {
        Engine::new(Ruleset::builtin())
    }

    /// Compiles and tests `sources` and makes them active.
    pub fn load(sources: Vec<Source>) -> Result<Engine, PolicyError> {
        Ok(Engine::new(Ruleset::compile(sources)?))
    }

    /// The active rules. Hold the `Arc` for the whole call: the window size, the decision
    /// and the rate buckets then all come from one version.
    pub fn current(&self) -> Arc<Ruleset> {
        self.current.load_full()
    }

    /// The active version.
    pub fn version(&self) -> PolicyVersion {
        self.current.load().version()
    }

    /// Compiles and tests `sources`; on success makes them active and returns them, on
    /// error keeps the old rules and returns every error.
    pub fn reload(&self, sources: Vec<Source>) -> Result<Arc<Ruleset>, PolicyError> {
        let rules = Arc::new(Ruleset::compile(sources)?);
        self.current.store(rules.clone());
        Ok(rules)
    }

    /// Makes an already compiled ruleset active; returns the one it replaces.
    pub fn install(&self, rules: Ruleset) -> Arc<Ruleset> {
        self.current.swap(Arc::new(rules))
    }
}

impl Default for Engine {
    fn default() -> Engine {
        Engine::builtin()
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("current", &*self.current.load())
            .finish()
    }
}

impl PolicyHook for Ruleset {
    fn check(&self, request: &Request<'_>) -> Decision {
        self.decide(&Call::from_request(request)).decision
    }

    fn decide(&self, call: &Call<'_>) -> Verdict {
        Ruleset::decide(self, call)
    }

    fn window(&self) -> usize {
        Ruleset::window(self)
    }
}

impl PolicyHook for Engine {
    fn check(&self, request: &Request<'_>) -> Decision {
        self.current.load().check(request)
    }

    fn decide(&self, call: &Call<'_>) -> Verdict {
        self.current.load().decide(call)
    }

    fn window(&self) -> usize {
        self.current.load().window()
    }
}
