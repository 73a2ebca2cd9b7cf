//! The command line surface of `agentfs` (SPEC §1): help, usage errors, and where the data
//! dir defaults to when `--data-dir` is not given.

mod common;

use common::*;
use std::fs;
use std::path::Path;
use std::process::Command;

fn run(cmd: &mut Command) -> std::process::Output {
    run_with_timeout(cmd, CMD_TIMEOUT).expect("run agentfs")
}

#[test]
fn help_lists_the_commands() {
    let out = run(Command::new(bin()).arg("--help"));
    assert!(out.status.success(), "agentfs --help: {}", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    for word in ["mount", "unmount"] {
        assert!(
            text.contains(word),
            "--help does not mention `{word}`:\n{text}"
        );
    }
    let out = run(Command::new(bin()).args(["mount", "--help"]));
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for word in ["--data-dir", "--foreground"] {
        assert!(
            text.contains(word),
            "mount --help does not mention {word}:\n{text}"
        );
    }
    let out = run(Command::new(bin()).arg("--version"));
    assert!(out.status.success(), "agentfs --version: {}", out.status);
}

#[test]
fn usage_errors_exit_2_without_touching_anything() {
    for args in [
        &["no-such-command"][..],
        &["mount"][..],
        &["mount", "/tmp", "--no-such-flag"][..],
        &["unmount"][..],
    ] {
        let out = run(Command::new(bin()).args(args));
        assert_eq!(
            out.status.code(),
            Some(2),
            "agentfs {args:?}: want usage error (exit 2), got {} — stderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !out.stderr.is_empty(),
            "agentfs {args:?}: no message on stderr"
        );
    }
}

/// Mounts at a fresh mountpoint with `--data-dir` omitted and the given environment, and
/// checks that the daemon's pid file landed in `expect_data`.
fn mount_with_env(env: &[(&str, &Path)], remove: &[&str], expect_data: &Path) {
    let _wd = Watchdog::new(DEFAULT_TEST_SECS);
    let root = fresh_dir("cli-env");
    let mnt = root.join("mnt");
    fs::create_dir(&mnt).unwrap();
    let mut cmd = Command::new(bin());
    cmd.arg("mount").arg(&mnt);
    for k in remove {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run(&mut cmd);
    let mounted = is_mounted(&mnt);
    let pid_there = expect_data.join("agentfs.pid").is_file();
    if mounted {
        let u = run(Command::new(bin()).arg("unmount").arg(&mnt));
        if !u.status.success() {
            let _ = detach(&mnt);
        }
    }
    assert!(
        out.status.success(),
        "mount without --data-dir ({env:?}): {} — {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(mounted, "mount returned 0 but nothing is mounted");
    assert!(
        pid_there,
        "no agentfs.pid in the expected data dir {}",
        expect_data.display()
    );
    let _ = fs::remove_dir_all(&root);
}

#[test]
fn data_dir_defaults_to_agentfs_data_dir_env() {
    if !can_mount() {
        return;
    }
    let d = fresh_dir("cli-envdir");
    let data = d.join("from-env");
    mount_with_env(&[("AGENTFS_DATA_DIR", &data)], &[], &data);
    let _ = fs::remove_dir_all(&d);
}

#[test]
fn data_dir_falls_back_to_xdg_data_home() {
    if !can_mount() {
        return;
    }
    let d = fresh_dir("cli-xdg");
    mount_with_env(
        &[("XDG_DATA_HOME", &d)],
        &["AGENTFS_DATA_DIR"],
        &d.join("agentfs"),
    );
    let _ = fs::remove_dir_all(&d);
}

#[test]
fn data_dir_falls_back_to_home_local_share() {
    if !can_mount() {
        return;
    }
    let d = fresh_dir("cli-home");
    mount_with_env(
        &[("HOME", &d)],
        &["AGENTFS_DATA_DIR", "XDG_DATA_HOME"],
        &d.join(".local/share/agentfs"),
    );
    let _ = fs::remove_dir_all(&d);
}

/// The systemd units under contrib/systemd/ pass `systemd-analyze verify` (skipped where it
/// is not installed). The units name /usr/local/bin/agentfs, which need not exist here: the
/// copies checked point at the binary under test instead.
#[test]
fn contrib_systemd_units_verify() {
    let analyze = Path::new("/usr/bin/systemd-analyze");
    if !analyze.exists() {
        eprintln!(
            "SKIP contrib_systemd_units_verify: no {}",
            analyze.display()
        );
        return;
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/systemd");
    let dir = fresh_dir("cli-units");
    let bin_path = std::path::absolute(bin()).expect("absolute binary path");
    let mut units = Vec::new();
    for name in ["agentfs@.service", "agents.mount"] {
        let text = fs::read_to_string(src.join(name))
            .unwrap_or_else(|e| panic!("read contrib/systemd/{name}: {e}"));
        assert!(
            name.ends_with(".mount") || text.contains("/usr/local/bin/agentfs "),
            "{name} no longer names /usr/local/bin/agentfs: update this test and the docs"
        );
        let text = text.replace("/usr/local/bin/agentfs", &bin_path.to_string_lossy());
        fs::write(dir.join(name), text).expect("write the unit copy");
        // A template is verified through one of its instances.
        units.push(dir.join(name.replace("@.", "@agents.")));
    }
    let out = run(Command::new(analyze)
        .args(["verify", "--man=no"])
        .args(&units)
        .current_dir(&dir));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("agentfs") || l.contains("agents.mount"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
    let _ = fs::remove_dir_all(&dir);
}

/// Every verb of `agentfs --help`, for the completion and man page checks.
const VERBS: &[&str] = &[
    "mount",
    "unmount",
    "policy",
    "signal",
    "ps",
    "run",
    "audit",
    "snapshot",
    "rollback",
    "diff",
    "search",
    "completions",
    "man",
];

#[test]
fn completions_for_every_shell() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = run(Command::new(bin()).args(["completions", shell]));
        assert!(out.status.success(), "completions {shell}: {}", out.status);
        let script = String::from_utf8_lossy(&out.stdout);
        for verb in ["mount", "audit"] {
            assert!(
                script.contains(verb),
                "{shell} completion lacks {verb}:\n{script}"
            );
        }
    }
    let out = run(Command::new(bin()).args(["completions", "bash"]));
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(script.contains("complete -F _agentfs"), "{script}");
    // An unknown shell is a usage error.
    let out = run(Command::new(bin()).args(["completions", "tcsh"]));
    assert_eq!(out.status.code(), Some(2));
}

/// The first roff request of a page, after the two-line apostrophe preamble roff writes.
fn first_request(page: &str) -> &str {
    page.lines()
        .find(|l| !l.starts_with(".ie ") && !l.starts_with(".el "))
        .unwrap_or_default()
}

#[test]
fn man_page_on_stdout_and_in_a_directory() {
    let out = run(Command::new(bin()).arg("man"));
    assert!(out.status.success(), "agentfs man: {}", out.status);
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(first_request(&page).starts_with(".TH agentfs 1"), "{page}");
    for verb in VERBS {
        assert!(page.contains(verb), "agentfs.1 does not name {verb}");
    }

    let dir = fresh_dir("cli-man").join("man1");
    let out = run(Command::new(bin()).arg("man").arg("--out").arg(&dir));
    assert!(
        out.status.success(),
        "agentfs man --out: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut pages = vec![
        String::from("agentfs.1"),
        String::from("mount.fuse.agentfs.8"),
    ];
    pages.extend(VERBS.iter().map(|v| format!("agentfs-{v}.1")));
    pages.push(String::from("agentfs-audit-tail.1"));
    for name in &pages {
        let text = fs::read_to_string(dir.join(name))
            .unwrap_or_else(|e| panic!("man --out did not write {name}: {e}"));
        assert!(first_request(&text).starts_with(".TH"), "{name}: {text}");
    }
    let listed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(listed.lines().count(), fs::read_dir(&dir).unwrap().count());
    if let Some(parent) = dir.parent() {
        let _ = fs::remove_dir_all(parent);
    }
}
