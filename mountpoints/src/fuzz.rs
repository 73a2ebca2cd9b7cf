//! Fuzz targets of the core's small parsers: the control words written to
//! `sys/agents/AGENT/{pids,rollback,index}` and the name and path rules. Time-bounded
//! (tests/fuzz/harness.rs); `scripts/fuzz.sh` runs them longer. Every refusal must be an
//! error whose errno (`VfsError::errno`) says what is wrong: EINVAL, or ENAMETOOLONG for a
//! name over NAME_MAX.

#[path = "../../tests/fuzz/harness.rs"]
mod harness;

use crate::control::{control_word, parse_pids};
use crate::names::{check_agent_name, check_name, NAME_MAX};
use crate::ops::checkpoint::check_checkpoint_name;
use crate::semantic::{is_search_dir_path, semantic_rel};
use proptest::prelude::*;
use proptest::sample::select;

/// Bytes that matter to these parsers, and a few that do not.
const PIECES: &[&[u8]] = &[
    b"",
    b"1",
    b"42",
    b"4294967295",
    b"4294967296",
    b"99999999999999999999",
    b"0",
    b"007",
    b"+1",
    b"-1",
    b"0x10",
    b"1e3",
    b" ",
    b"\t",
    b"\n",
    b"\r",
    b"\r\n",
    b"\x0b",
    b"\x0c",
    b"\xc2\xa0",
    b"\xe3\x80\x80",
    b"\xff",
    b"\0",
    b"/",
    b".",
    b"..",
    b"a",
    b"Z9",
    b"_-.",
    b"sys",
    b"rebuild",
    b"REBUILD",
    b"before-refactor",
    b"mem",
    b"mem/",
    b"semantic/",
    b"mem/semantic/",
    b"mem/semantic/.search",
    b".search",
    b"\xc3\xa9",
    b"\xf0\x9f\xa6\x80",
];

/// Control-file writes and names: concatenated pieces, long runs, arbitrary bytes.
fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => proptest::collection::vec(select(PIECES), 0..8).prop_map(|p| p.concat()),
        1 => (select(PIECES), 200usize..300).prop_map(|(p, n)| {
            let unit = if p.is_empty() { &b"a"[..] } else { p };
            unit.iter().copied().cycle().take(n).collect()
        }),
        1 => (250usize..260).prop_map(|n| vec![b'a'; n]),
        3 => proptest::collection::vec(any::<u8>(), 0..40),
    ]
}

fn is_einval(e: &crate::VfsError) -> bool {
    e.errno() == libc::EINVAL
}

/// The pids file's documented syntax: one or more decimal pids separated by ASCII white
/// space (space, tab, newline, carriage return, form feed), each fitting a u32.
fn documented_pids(data: &[u8]) -> Option<Vec<u32>> {
    let words: Vec<&[u8]> = data
        .split(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c'))
        .filter(|w| !w.is_empty())
        .collect();
    if words.is_empty() {
        return None;
    }
    words
        .iter()
        .map(|w| {
            if !w.iter().all(u8::is_ascii_digit) {
                return None;
            }
            // Leading zeros are fine; the value must fit.
            w.iter().try_fold(0u32, |n, d| {
                n.checked_mul(10)?.checked_add(u32::from(d - b'0'))
            })
        })
        .collect()
}

#[test]
fn fuzz_pids() {
    harness::fuzz_for("pids", bytes(), |data| {
        match (parse_pids(&data), documented_pids(&data)) {
            (Ok(got), Some(want)) => prop_assert_eq!(got, want),
            (Err(e), None) => prop_assert!(is_einval(&e), "{:?}: {:?}", data, e),
            (got, want) => prop_assert!(
                false,
                "{:?}: parsed {:?}, documented {:?}",
                String::from_utf8_lossy(&data),
                got,
                want
            ),
        }
        Ok(())
    });
}

/// Found by the `pids` fuzz target: `+42` was taken as pid 42 (`str::parse` accepts a
/// sign), though a pids file takes decimal pids.
#[test]
fn pids_are_digits_only() {
    assert_eq!(parse_pids(b"42\n").unwrap(), [42]);
    assert_eq!(
        parse_pids(b" 1\t007 4294967295\r\n").unwrap(),
        [1, 7, u32::MAX]
    );
    for bad in [
        &b"+42"[..],
        b"-1",
        b"1 +2",
        b"4294967296",
        b"",
        b" \n",
        b"0x10",
        b"\xff",
    ] {
        let e = parse_pids(bad).unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL, "{bad:?}");
    }
}

/// What `control_word` must do: drop one trailing `\n`, then one trailing `\r`.
fn documented_word(data: &[u8]) -> &[u8] {
    let d = data.strip_suffix(b"\n").unwrap_or(data);
    d.strip_suffix(b"\r").unwrap_or(d)
}

#[test]
fn fuzz_index_word() {
    harness::fuzz_for("index", bytes(), |data| {
        let word = control_word(&data);
        prop_assert_eq!(word, documented_word(&data));
        // The index file takes exactly `rebuild` (as `echo rebuild` writes it).
        let accepted = word == b"rebuild";
        let documented = [&b"rebuild"[..], b"rebuild\n", b"rebuild\r\n", b"rebuild\r"]
            .contains(&data.as_slice());
        prop_assert_eq!(accepted, documented, "{:?}", data);
        Ok(())
    });
}

#[test]
fn fuzz_rollback_name() {
    harness::fuzz_for("rollback", bytes(), |data| {
        let name = control_word(&data);
        let good = !name.is_empty()
            && name.len() <= NAME_MAX
            && !name.contains(&b'/')
            && !name.contains(&0)
            && name[0] != b'.';
        match check_checkpoint_name(name) {
            Ok(()) => prop_assert!(good, "accepted {:?}", name),
            Err(e) => {
                prop_assert!(!good, "refused {:?}: {}", name, e);
                let want = if name.len() > NAME_MAX {
                    libc::ENAMETOOLONG
                } else {
                    libc::EINVAL
                };
                prop_assert_eq!(e.errno(), want, "{:?}: {}", name, e);
            }
        }
        Ok(())
    });
}

#[test]
fn fuzz_names() {
    harness::fuzz_for("names", bytes(), |name| {
        let file_ok = !name.is_empty()
            && name.len() <= NAME_MAX
            && !name.contains(&b'/')
            && !name.contains(&0)
            && name != b"."
            && name != b"..";
        match check_name(&name) {
            Ok(()) => prop_assert!(file_ok, "accepted file name {:?}", name),
            Err(e) => {
                prop_assert!(!file_ok, "refused file name {:?}: {}", name, e);
                let want = if name.len() > NAME_MAX {
                    libc::ENAMETOOLONG
                } else {
                    libc::EINVAL
                };
                prop_assert_eq!(e.errno(), want, "{:?}: {}", name, e);
            }
        }
        let agent_ok = file_ok
            && name[0] != b'.'
            && name != b"sys"
            && name
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        match check_agent_name(&name) {
            Ok(()) => prop_assert!(agent_ok, "accepted agent name {:?}", name),
            Err(e) => {
                prop_assert!(!agent_ok, "refused agent name {:?}: {}", name, e);
                let want = if name.len() > NAME_MAX {
                    libc::ENAMETOOLONG
                } else if name == b"sys" {
                    // `sys` exists at the mount root.
                    libc::EEXIST
                } else {
                    libc::EINVAL
                };
                prop_assert_eq!(e.errno(), want, "{:?}: {}", name, e);
            }
        }
        Ok(())
    });
}

const COMPONENTS: &[&[u8]] = &[
    b"a",
    b"scout",
    b"mem",
    b"semantic",
    b".search",
    b"x",
    b"",
    b"..",
    b"\xc3\xa9",
    b"\xff",
    b"sys",
    b"notes.md",
    b"mem/semantic",
];

/// Mount-relative paths: `AGENT/mem/semantic/...` and near misses.
fn mount_path() -> impl Strategy<Value = Vec<u8>> {
    let component = prop_oneof![
        4 => select(COMPONENTS).prop_map(<[u8]>::to_vec),
        1 => proptest::collection::vec(any::<u8>(), 0..6),
    ];
    prop_oneof![
        4 => proptest::collection::vec(component, 0..6).prop_map(|c| c.join(&b'/')),
        1 => bytes(),
    ]
}

#[test]
fn fuzz_semantic_paths() {
    harness::fuzz_for("semantic-paths", mount_path(), |path| {
        let parts: Vec<&[u8]> = path.split(|b| *b == b'/').collect();
        match semantic_rel(&path) {
            Some((agent, rel)) => {
                prop_assert!(!agent.contains('/') && !rel.is_empty());
                prop_assert_eq!(
                    format!("{agent}/mem/semantic/{rel}").into_bytes(),
                    path.clone()
                );
            }
            None => {
                // Only a non-UTF-8 path, or one not of the shape AGENT/mem/semantic/REL
                // with a non-empty REL, has no semantic relative path.
                let shaped = parts.len() >= 4
                    && parts[1] == b"mem"
                    && parts[2] == b"semantic"
                    && parts[3..].iter().map(|p| p.len() + 1).sum::<usize>() > 1;
                prop_assert!(
                    !shaped || std::str::from_utf8(&path).is_err(),
                    "{:?} has no semantic path",
                    String::from_utf8_lossy(&path)
                );
            }
        }
        let search_dir = parts.len() == 4
            && parts[1] == b"mem"
            && parts[2] == b"semantic"
            && parts[3] == b".search";
        prop_assert_eq!(is_search_dir_path(&path), search_dir, "{:?}", path);
        Ok(())
    });
}
