//! The read-only policy views: `sys/policy/` (the text of every loaded policy source) and
//! `AGENT/policy/` (the rules in force for that agent, rendered).
//!
//! ```text
//! sys/policy/00-builtin.toml   the built-in policy, when no file disables it
//! sys/policy/01-team.toml      each --policy file, in load order: NN-BASENAME
//! sys/policy/version           BLAKE3 (hex) of the active policy version
//! AGENT/policy/rules           Ruleset::render_for(AGENT)
//! AGENT/policy/version         the same version line
//! ```
//!
//! Everything is generated from the active ruleset when a file is opened (one snapshot per
//! open), so after a reload the listings and the contents follow the new rules. Both views are
//! read-only for everyone: writes are refused by the choke point (`mutate.rs`, `guard`) with
//! EROFS under `AGENT/policy/` and EPERM under `sys/`.

use crate::agent::Agent;
use crate::error::{Result, VfsError};
use crate::names::NAME_MAX;
use crate::sysfs::Virtual;
use crate::vfs::{DirEntry, Vfs};
use agentfs_memory::{FileKind, Ino};
use agentfs_policy::{Ruleset, BUILTIN_TOML};
use std::sync::Arc;

/// Name of the rendered rules of one agent in `AGENT/policy/`.
pub(crate) const RULES_NAME: &[u8] = b"rules";
/// Name of the version file in `sys/policy/` and `AGENT/policy/`.
pub(crate) const VERSION_NAME: &[u8] = b"version";

/// A file of `AGENT/policy/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AgentView {
    Rules,
    Version,
}

impl AgentView {
    pub(crate) const ALL: [AgentView; 2] = [AgentView::Rules, AgentView::Version];

    pub(crate) fn name(self) -> &'static [u8] {
        match self {
            AgentView::Rules => RULES_NAME,
            AgentView::Version => VERSION_NAME,
        }
    }

    pub(crate) fn content(self, rules: &Ruleset, agent: &Agent) -> Vec<u8> {
        match self {
            AgentView::Rules => rules.render_for(&agent.name).into_bytes(),
            AgentView::Version => version_line(rules),
        }
    }
}

pub(crate) fn version_line(rules: &Ruleset) -> Vec<u8> {
    format!("{}\n", rules.version()).into_bytes()
}

/// Does source `index` (0: the built-in policy, then each `--policy` file) exist in `rules`?
pub(crate) fn has_source(rules: &Ruleset, index: usize) -> bool {
    if index == 0 {
        rules.builtin_enabled()
    } else {
        index <= rules.sources().len()
    }
}

/// The text of source `index`, exactly as loaded.
pub(crate) fn source_text(rules: &Ruleset, index: usize) -> Option<&str> {
    if !has_source(rules, index) {
        return None;
    }
    Some(match index {
        0 => BUILTIN_TOML,
        i => &rules.sources()[i - 1].text,
    })
}

/// `NN-BASENAME` of source `index`: the number gives the load order (`ls` sorts by it; at
/// least two digits, more when there are 100 files or more) and makes names unique even when
/// two files share a basename; the built-in policy is `00-builtin.toml`.
pub(crate) fn source_name(rules: &Ruleset, index: usize) -> Option<Vec<u8>> {
    if !has_source(rules, index) {
        return None;
    }
    let width = rules.sources().len().to_string().len().max(2);
    let base = match index {
        0 => "builtin.toml".to_string(),
        i => {
            let name = &rules.sources()[i - 1].name;
            std::path::Path::new(name)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "policy".to_string())
        }
    };
    let mut name = format!("{index:0width$}-{base}").into_bytes();
    if name.len() > NAME_MAX {
        let mut cut = NAME_MAX;
        while cut > 0 && (name[cut] & 0xc0) == 0x80 {
            cut -= 1;
        }
        name.truncate(cut);
    }
    Some(name)
}

/// Source indexes of `rules` in load order.
pub(crate) fn source_indexes(rules: &Ruleset) -> impl Iterator<Item = usize> + '_ {
    (0..=rules.sources().len()).filter(|i| has_source(rules, *i))
}

/// The entries of `sys/policy/`: each source in load order, then `version`.
pub(crate) fn sys_policy_children(rules: &Ruleset) -> Vec<(Vec<u8>, Virtual)> {
    let mut files: Vec<(Vec<u8>, Virtual)> = source_indexes(rules)
        .filter_map(|i| Some((source_name(rules, i)?, Virtual::PolicySource(i))))
        .collect();
    files.push((VERSION_NAME.to_vec(), Virtual::PolicyVersion));
    files
}

/// Hands `fill` the entries after cookie `offset`; cookies are positions (1-based).
pub(crate) fn fill_entries(
    entries: Vec<(Vec<u8>, Ino, FileKind)>,
    offset: u64,
    fill: &mut dyn FnMut(DirEntry) -> bool,
) {
    for (i, (name, ino, kind)) in entries.into_iter().enumerate().skip(offset as usize) {
        if fill(DirEntry {
            ino,
            offset: i as u64 + 1,
            kind,
            name,
        }) {
            break;
        }
    }
}

impl Vfs {
    /// Inode of `AGENT/policy/`.
    pub(crate) fn policy_dir_of(&self, agent: &Agent) -> Option<Ino> {
        let root = self.node(agent.root).ok()?;
        let r = root.read();
        r.dir()?.get(b"policy")
    }

    /// A name in `AGENT/policy/` (the directory of `agent`).
    pub(crate) fn lookup_agent_view(&self, agent: Option<&str>, name: &[u8]) -> Result<Ino> {
        let agent = agent
            .and_then(|a| self.agent(a))
            .ok_or(VfsError::NotFound)?;
        AgentView::ALL
            .into_iter()
            .find(|v| v.name() == name)
            .map(|v| Virtual::AgentPolicy(agent, v).ino())
            .ok_or(VfsError::NotFound)
    }

    /// readdir of `AGENT/policy/` (inode `dir`, parent `parent`).
    pub(crate) fn readdir_agent_view(
        &self,
        dir: Ino,
        parent: Ino,
        agent: Option<&str>,
        offset: u64,
        fill: &mut dyn FnMut(DirEntry) -> bool,
    ) -> Result<()> {
        let mut entries = vec![
            (b".".to_vec(), dir, FileKind::Dir),
            (b"..".to_vec(), parent, FileKind::Dir),
        ];
        if let Some(agent) = agent.and_then(|a| self.agent(a)) {
            entries.extend(AgentView::ALL.into_iter().map(|v| {
                let ino = Virtual::AgentPolicy(agent.clone(), v).ino();
                (v.name().to_vec(), ino, FileKind::File)
            }));
        }
        fill_entries(entries, offset, fill);
        Ok(())
    }
}

/// The agent an `AGENT/policy/` file belongs to, checked against a bound caller.
pub(crate) fn check_reader(caller: &crate::Caller, agent: &Arc<Agent>) -> Result<()> {
    match &caller.agent {
        Some(mine) if **mine != *agent.name => Err(VfsError::AccessDenied("another agent's tree")),
        _ => Ok(()),
    }
}
