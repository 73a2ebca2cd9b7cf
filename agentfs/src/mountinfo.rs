//! Reading `/proc/self/mountinfo` (see proc(5)).
//!
//! A line looks like
//! `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`:
//! mount id, parent id, major:minor, root, mount point, mount options, optional fields ended
//! by `-`, filesystem type, source, super options. Paths have space, tab, newline and
//! backslash escaped as octal (`\040`, `\011`, `\012`, `\134`).

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// One mounted filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
}

/// The prefix of the fsname an agentfs daemon mounts with: `agentfs:<absolute data dir>`.
pub const FSNAME_PREFIX: &str = "agentfs:";

impl MountEntry {
    /// True for a mount made by an agentfs daemon. fuser's direct mount(2) path records the
    /// type as plain `fuse` with our fsname as the source; through `fusermount` it would be
    /// `fuse.agentfs`.
    pub fn is_agentfs(&self) -> bool {
        self.fstype == "fuse.agentfs"
            || (self.fstype == "fuse"
                && (self.source == "agentfs" || self.source.starts_with(FSNAME_PREFIX)))
    }

    /// The data dir recorded in the fsname, when the daemon put one there.
    pub fn data_dir(&self) -> Option<PathBuf> {
        let dir = self.source.strip_prefix(FSNAME_PREFIX)?;
        let dir = Path::new(dir);
        dir.is_absolute().then(|| dir.to_path_buf())
    }

    /// "tmpfs mounted from tmpfs", for messages.
    pub fn describe(&self) -> String {
        if self.is_agentfs() {
            match self.data_dir() {
                Some(d) => format!("agentfs, data dir {}", d.display()),
                None => String::from("agentfs"),
            }
        } else {
            format!("{} from {}", self.fstype, self.source)
        }
    }
}

/// Undoes the octal escapes the kernel applies to paths in mountinfo.
pub fn unescape(field: &str) -> OsString {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && is_octal_escape(&bytes[i + 1..i + 4]) {
            let value = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            if let Ok(b) = u8::try_from(value) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    OsString::from_vec(out)
}

fn is_octal_escape(digits: &[u8]) -> bool {
    digits.len() == 3 && digits.iter().all(|d| (b'0'..=b'7').contains(d))
}

/// Parses one mountinfo line; `None` for a line that does not have the documented shape.
pub fn parse_line(line: &str) -> Option<MountEntry> {
    let mut fields = line.split(' ');
    let _mount_id = fields.next()?;
    let _parent_id = fields.next()?;
    let _dev = fields.next()?;
    let _root = fields.next()?;
    let mount_point = fields.next()?;
    let _options = fields.next()?;
    // Optional fields, up to the "-" separator.
    loop {
        if fields.next()? == "-" {
            break;
        }
    }
    let fstype = fields.next()?;
    let source = fields.next()?;
    if mount_point.is_empty() || fstype.is_empty() {
        return None;
    }
    Some(MountEntry {
        mount_point: PathBuf::from(unescape(mount_point)),
        fstype: unescape(fstype).to_string_lossy().into_owned(),
        source: unescape(source).to_string_lossy().into_owned(),
    })
}

/// Parses a whole mountinfo text, skipping malformed lines.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

/// The current mount table of this process.
pub fn read() -> std::io::Result<Vec<MountEntry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(parse(&text))
}

/// The topmost mount at exactly `path` (later lines are mounted on top of earlier ones).
pub fn find<'a>(mounts: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    mounts.iter().rev().find(|m| m.mount_point == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
35 22 0:30 / /tmp rw,nosuid,nodev shared:14 - tmpfs tmpfs rw,size=1024k
41 35 0:45 / /tmp/my\\040agents rw,nosuid,nodev,relatime - fuse agentfs:/var/lib/agent\\040data rw,user_id=0,group_id=0,default_permissions,allow_other
42 35 0:46 / /tmp/other rw,nosuid,nodev,relatime shared:20 master:3 - fuse.sshfs host:/x rw,user_id=0,group_id=0
43 35 0:47 / /tmp/legacy rw - fuse.agentfs agentfs rw
";

    #[test]
    fn parses_every_line() {
        let m = parse(SAMPLE);
        assert_eq!(m.len(), 5);
        assert_eq!(m[0].mount_point, PathBuf::from("/"));
        assert_eq!(m[0].fstype, "ext4");
        assert_eq!(m[0].source, "/dev/sda1");
        assert_eq!(m[1].fstype, "tmpfs");
    }

    #[test]
    fn octal_escapes_are_decoded() {
        let m = parse(SAMPLE);
        assert_eq!(m[2].mount_point, PathBuf::from("/tmp/my agents"));
        assert_eq!(m[2].source, "agentfs:/var/lib/agent data");
        assert_eq!(unescape(r"a\011b\012c\134d"), OsString::from("a\tb\nc\\d"));
        // Not an escape: left as is.
        assert_eq!(unescape(r"a\9b\04"), OsString::from(r"a\9b\04"));
        assert_eq!(unescape(r"end\"), OsString::from(r"end\"));
    }

    #[test]
    fn non_utf8_names_survive() {
        use std::os::unix::ffi::OsStrExt;
        let got = unescape(r"/tmp/\377x");
        assert_eq!(got.as_bytes(), b"/tmp/\xffx");
    }

    #[test]
    fn optional_fields_are_skipped() {
        let m = parse(SAMPLE);
        assert_eq!(m[3].fstype, "fuse.sshfs");
        assert_eq!(m[3].source, "host:/x");
    }

    #[test]
    fn recognises_agentfs_mounts() {
        let m = parse(SAMPLE);
        assert!(!m[1].is_agentfs());
        assert!(m[2].is_agentfs());
        assert_eq!(m[2].data_dir(), Some(PathBuf::from("/var/lib/agent data")));
        assert!(!m[3].is_agentfs());
        assert!(m[4].is_agentfs());
        assert_eq!(m[4].data_dir(), None);
    }

    #[test]
    fn malformed_lines_are_skipped() {
        assert_eq!(parse_line(""), None);
        assert_eq!(parse_line("1 2 3 / /x rw no-separator here"), None);
        assert_eq!(parse_line("1 2 3 / /x rw -"), None);
    }

    #[test]
    fn find_takes_the_topmost_mount() {
        let text = "\
1 0 0:1 / /m rw - tmpfs first rw
2 1 0:2 / /m rw - fuse agentfs:/d rw
";
        let m = parse(text);
        assert_eq!(find(&m, Path::new("/m")).unwrap().source, "agentfs:/d");
        assert_eq!(find(&m, Path::new("/n")), None);
    }

    #[test]
    fn reads_the_real_table() {
        let m = read().unwrap();
        assert!(find(&m, Path::new("/")).is_some());
    }
}
