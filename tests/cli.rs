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
    "backup",
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

/// `agentfs ARGS… --mount MNT` (or without `--mount` when `mount` is None), piped.
fn verb(mount: Option<&Path>, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(bin());
    cmd.args(args);
    if let Some(m) = mount {
        cmd.arg("--mount").arg(m);
    }
    run(&mut cmd)
}

/// The one JSON object a `--json` verb printed on stdout; no progress on stderr.
fn one_object(what: &str, out: &std::process::Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{what}: want one JSON line, got:\n{text}");
    assert!(
        !out.stderr.contains(&b'\r'),
        "{what}: progress on a pipe: {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"))
}

#[test]
fn json_on_every_verb_that_prints_data() {
    let Some(m) = Mount::try_new() else { return };
    m.agent("a");
    let mnt = Some(m.mnt.as_path());
    fs::write(m.mem("a", "semantic").join("x"), "hello json\n").unwrap();

    let out = verb(mnt, &["signal", "a", "sigstop", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v = one_object("signal", &out);
    assert_eq!(v["agent"], "a");
    assert_eq!(v["signal"], "STOP");
    assert_eq!(v["state"], "stopped");
    let v = one_object("signal", &verb(mnt, &["signal", "a", "CONT", "--json"]));
    assert_eq!(v["state"], "running");

    let v = one_object("snapshot", &verb(mnt, &["snapshot", "a", "c1", "--json"]));
    assert_eq!(v["checkpoint"], "c1");
    assert!(v["ms"].as_f64().is_some(), "{v}");
    assert!(v["path"].as_str().unwrap().ends_with("a/state/c1"), "{v}");
    fs::remove_file(m.mem("a", "semantic").join("x")).unwrap();
    let v = one_object("diff", &verb(mnt, &["diff", "a", "c1", "--json"]));
    assert_eq!(v, serde_json::json!({"status": "D", "path": "semantic/x"}));
    let out = verb(mnt, &["rollback", "a", "c1", "--json"]);
    let v = one_object("rollback", &out);
    assert_eq!(v["agent"], "a");
    assert_eq!(v["checkpoint"], "c1");
    assert!(m.mem("a", "semantic").join("x").exists());

    let out = verb(mnt, &["reindex", "a", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v = one_object("reindex", &out);
    assert_eq!(v["agent"], "a");
    assert_eq!(v["waited"], true);
    assert_eq!(v["index"]["state"], "ready", "{v}");

    let out = verb(mnt, &["episodes", "prune", "a", "--before", "@0", "--json"]);
    let v = one_object("episodes prune", &out);
    assert_eq!(v["pruned"], 0);
    assert_eq!(v["before_ns"], 0);

    // The flight recorder, beside the running daemon.
    let data = m.data.to_str().unwrap();
    let out = verb(None, &["audit", "verify", "--data-dir", data, "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v = one_object("audit verify", &out);
    assert_eq!(v["ok"], true);
    assert!(v["entries"].as_u64().unwrap() > 3, "{v}");
    assert_eq!(v["problem"], serde_json::Value::Null);
    let until = v["last"]["seq"].as_u64().unwrap().to_string();
    let export = fresh_dir("cli-export").join("audit.jsonl");
    let export_s = export.to_str().unwrap();
    let out = verb(
        None,
        &[
            "audit",
            "export",
            "--until",
            &until,
            export_s,
            "--data-dir",
            data,
            "--json",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let v = one_object("audit export", &out);
    assert_eq!(v["last_seq"].to_string(), until);
    let out = verb(None, &["audit", "verify", "--file", export_s, "--json"]);
    let v = one_object("audit verify --file", &out);
    assert_eq!(
        (v["ok"].clone(), v["first_seq"].clone()),
        (true.into(), 1.into())
    );
    // A broken export: the object says what and where, and the status is still 1.
    let text = fs::read_to_string(&export).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.remove(1);
    fs::write(&export, lines.join("\n") + "\n").unwrap();
    let out = verb(None, &["audit", "verify", "--file", export_s, "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v = one_object("audit verify --file (broken)", &out);
    assert_eq!(v["ok"], false);
    assert!(v["problem"]["seq"].as_u64().is_some(), "{v}");
    let out = verb(
        None,
        &[
            "audit",
            "export",
            "--until",
            "1",
            "-",
            "--data-dir",
            data,
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "--json with - must be refused");
    if let Some(dir) = export.parent() {
        let _ = fs::remove_dir_all(dir);
    }
}

#[test]
fn policy_check_json() {
    let dir = fresh_dir("cli-policy-json");
    let good = dir.join("good.toml");
    fs::write(
        &good,
        "[[read_only]]\nname = \"facts\"\npaths = [\"mem/semantic/facts/**\"]\n",
    )
    .unwrap();
    let out = verb(None, &["policy", "check", good.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v = one_object("policy check", &out);
    assert_eq!(v["ok"], true);
    assert_eq!(v["rules"]["read_only"], 1, "{v}");
    assert!(v["version"].as_str().unwrap().starts_with("blake3:"), "{v}");
    let bad = dir.join("bad.toml");
    fs::write(
        &bad,
        "[[content]]\nname = \"url\"\nregex = 'https://x/.*'\n",
    )
    .unwrap();
    let out = verb(None, &["policy", "check", bad.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v = one_object("policy check (bad)", &out);
    assert_eq!(v["ok"], false);
    let e = &v["errors"][0];
    assert_eq!(
        (e["line"].as_u64(), e["col"].as_u64()),
        (Some(3), Some(9)),
        "{v}"
    );
    assert!(e["file"].as_str().unwrap().ends_with("bad.toml"), "{v}");
    assert!(e["message"].as_str().unwrap().contains("no maximum"), "{v}");
    let _ = fs::remove_dir_all(&dir);
}

/// Runs `sh -c CMD` on a pseudo-terminal (util-linux `script`) and returns what it printed
/// there (stdout and stderr together); None when `script` is not installed.
fn on_a_terminal(cmd: &str, no_color: bool) -> Option<String> {
    let script = Path::new("/usr/bin/script");
    if !script.exists() {
        eprintln!(
            "SKIP: no {} to run commands on a terminal",
            script.display()
        );
        return None;
    }
    let mut c = Command::new(script);
    c.args(["-q", "-e", "-c", cmd, "/dev/null"])
        .env("TERM", "xterm");
    if no_color {
        c.env("NO_COLOR", "1");
    } else {
        c.env_remove("NO_COLOR");
    }
    let out = run(&mut c);
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn colours_on_a_terminal_only_and_never_with_no_color() {
    let Some(m) = Mount::try_new() else { return };
    m.agent("run1");
    m.agent("stop1");
    fs::write(m.mnt.join("sys/agents/stop1/signal"), "STOP\n").unwrap();
    let bin = bin();
    let ps = format!("{} ps --mount {}", bin.to_string_lossy(), m.mnt.display());
    let Some(tty) = on_a_terminal(&ps, false) else {
        return;
    };
    // running green (32), stopped yellow (33), each padded inside the escapes.
    assert!(tty.contains("\x1b[32mrunning "), "{tty:?}");
    assert!(tty.contains("\x1b[33mstopped "), "{tty:?}");
    let plain = on_a_terminal(&ps, true).unwrap();
    assert!(!plain.contains('\x1b'), "NO_COLOR ignored: {plain:?}");
    assert!(
        plain.contains("running") && plain.contains("stopped"),
        "{plain:?}"
    );
    let piped = verb(Some(&m.mnt), &["ps"]);
    assert!(!piped.stdout.contains(&0x1b), "colours on a pipe");

    // The error prefix, on stderr.
    let err = format!(
        "{} signal nobody STOP --mount {}",
        bin.to_string_lossy(),
        m.mnt.display()
    );
    let tty = on_a_terminal(&err, false).unwrap();
    assert!(
        tty.contains("\x1b[") && tty.contains("agentfs:\x1b[0m no agent `nobody`"),
        "{tty:?}"
    );
    let plain = on_a_terminal(&err, true).unwrap();
    assert!(plain.starts_with("agentfs: no agent `nobody`"), "{plain:?}");
    fs::write(m.mnt.join("sys/agents/stop1/signal"), "CONT\n").unwrap();
}
