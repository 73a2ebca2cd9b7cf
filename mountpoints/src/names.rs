//! Name rules: what may be a file name, and what may be an agent name.

use crate::error::{Result, VfsError};

/// Longest file name, as on ext4 (NAME_MAX).
pub const NAME_MAX: usize = 255;

/// The name reserved for the control tree at the mount root.
pub const SYS: &[u8] = b"sys";

/// Checks a single path component handed to a create-like call.
pub fn check_name(name: &[u8]) -> Result<()> {
    if name.len() > NAME_MAX {
        return Err(VfsError::NameTooLong);
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(VfsError::Invalid("not a valid file name"));
    }
    Ok(())
}

/// Agent names become path components, span fields and JSON keys, so they are kept to
/// `[A-Za-z0-9._-]`, must not start with `.` and must not be `sys`.
pub fn check_agent_name(name: &[u8]) -> Result<()> {
    check_name(name)?;
    if name == SYS {
        return Err(VfsError::Exists);
    }
    if name[0] == b'.' {
        return Err(VfsError::Invalid("agent names must not start with '.'"));
    }
    if !name
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(VfsError::Invalid(
            "agent names may only use letters, digits, '.', '_' and '-'",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_names() {
        assert!(check_agent_name(b"planner-1.v2_x").is_ok());
        assert!(matches!(check_agent_name(b"sys"), Err(VfsError::Exists)));
        assert!(matches!(check_agent_name(b".a"), Err(VfsError::Invalid(_))));
        assert!(matches!(
            check_agent_name(b"a b"),
            Err(VfsError::Invalid(_))
        ));
        assert!(matches!(
            check_agent_name(b"a\n"),
            Err(VfsError::Invalid(_))
        ));
        assert!(matches!(
            check_agent_name(&[b'a'; 256]),
            Err(VfsError::NameTooLong)
        ));
        assert!(check_agent_name(&[b'a'; 255]).is_ok());
    }

    #[test]
    fn file_names() {
        assert!(check_name(b"x y\tz").is_ok());
        assert!(check_name(b"..").is_err());
        assert!(check_name(b"a/b").is_err());
        assert!(check_name(b"").is_err());
    }
}
