//! The examples under `examples/` and the shell blocks of README.md, run against real mounts
//! (issue 9, items 4 and 5).
//!
//! * `examples/python_agent.py` and `examples/shell_agent.sh` run unbound (they roll back with
//!   `sys/agents/A/rollback`) and bound through `agentfs run` (the rollback write is EPERM, so
//!   they restore from the checkpoint tree); each must exit 0 and leave its facts, its
//!   checkpoint and its episodic log behind.
//! * `examples/operator.sh` pauses an agent, sees a bound process frozen and an operator's
//!   write parked, resumes it and finds both writes landed.
//! * Every ```sh block of README.md is run or checked: the tour line by line in one shell,
//!   with `/tmp/agents` replaced by a fresh mountpoint, `agentfs` by the binary under test and
//!   the data dir in a temp dir. Lines marked `# fails: MESSAGE` must fail with MESSAGE on
//!   stderr; every other line must succeed, and the outputs the comments promise are checked.
//!   The install and build blocks are checked against the tree rather than run (they build).

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const EXAMPLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The repository root (this package lives in `agentfs/`).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn example(name: &str) -> PathBuf {
    repo().join("examples").join(name)
}

fn python3() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("python3"))
        .find(|p| p.is_file())
        .expect("the Python example needs python3 on PATH (.ci/run installs it)")
}

fn show(out: &Output) -> String {
    format!(
        "exit {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd` with the test's environment for examples; panics unless it exits 0.
fn run_ok(what: &str, cmd: &mut Command) -> String {
    let out = run_with_timeout(cmd, EXAMPLE_TIMEOUT).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{what} failed: {}", show(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `agentfs run --agent AGENT --mount MNT -- ARGS…`.
fn bound(m: &Mount, agent: &str, args: &[&std::ffi::OsStr]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.args(["run", "--agent", agent, "--mount"])
        .arg(&m.mnt)
        .arg("--")
        .args(args);
    cmd
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// The checkpoints of `agent` whose names start with `prefix`.
fn checkpoints(m: &Mount, agent: &str, prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(m.mnt.join(agent).join("state"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------------
// The examples
// ---------------------------------------------------------------------------------------------

fn check_python_end_state(m: &Mount, agent: &str, how: &str, stdout: &str) {
    assert!(stdout.contains("all facts are back"), "{stdout}");
    assert!(
        stdout.contains(how),
        "want a rollback with {how}:\n{stdout}"
    );
    let sem = m.mem(agent, "semantic");
    assert_eq!(
        read(&sem.join("capital-france")),
        "The capital of France is Paris.\n"
    );
    assert_eq!(
        read(&sem.join("boiling-point")),
        "Water boils at 100 degrees Celsius at sea level.\n"
    );
    assert_eq!(
        read(&sem.join("speed-of-light")),
        "Light travels at about 299792 kilometres per second.\n"
    );
    let ck = checkpoints(m, agent, "py-before-cleanup-");
    assert_eq!(ck.len(), 1, "one checkpoint: {ck:?}");
    let log = read(&m.mem(agent, "episodic").join("log"));
    assert!(
        log.contains("python-agent: learned capital-france"),
        "{log}"
    );
    assert!(
        log.contains("python-agent: rolled back to py-before-cleanup-"),
        "{log}"
    );
    // Search finds the restored fact (the example waited for it already).
    let hits = read(&sem.join(".search").join("boiling Celsius"));
    assert!(hits.contains("\tboiling-point\t"), "{hits}");
}

#[test]
fn python_agent_unbound_rolls_back_through_the_control_file() {
    let Some(m) = Mount::try_new() else {
        return;
    };
    m.agent("pyagent");
    let out = run_ok(
        "python_agent.py (unbound)",
        Command::new(python3())
            .arg(example("python_agent.py"))
            .arg(&m.mnt)
            .arg("pyagent"),
    );
    check_python_end_state(&m, "pyagent", "sys/agents/pyagent/rollback", &out);
    // A real rollback: the log is the checkpoint's (the lines written after it are gone)
    // plus the line recording the rollback.
    let log = read(&m.mem("pyagent", "episodic").join("log"));
    assert!(!log.contains("cleanup: rewrote"), "{log}");
    let last = read(&m.mnt.join("sys/agents/pyagent/rollback"));
    assert!(last.starts_with("py-before-cleanup-"), "{last}");
}

#[test]
fn python_agent_bound_restores_from_its_checkpoint() {
    let Some(m) = Mount::try_new() else {
        return;
    };
    m.agent("pybound");
    let py = python3();
    let script = example("python_agent.py");
    let out = run_ok(
        "agentfs run -- python_agent.py (bound)",
        &mut bound(
            &m,
            "pybound",
            &[
                py.as_os_str(),
                script.as_os_str(),
                m.mnt.as_os_str(),
                "pybound".as_ref(),
            ],
        ),
    );
    check_python_end_state(&m, "pybound", "a copy of state/py-before-cleanup-", &out);
    // No rollback happened: the refused attempt is on record, and the log kept every line.
    let log = read(&m.mem("pybound", "episodic").join("log"));
    assert!(log.contains("cleanup: rewrote"), "{log}");
    assert_eq!(read(&m.mnt.join("sys/agents/pybound/rollback")), "");
    let audit = read(&m.mnt.join("sys/agents/pybound/audit"));
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"op\":\"rollback\"") && l.contains("\"result\":1,")),
        "no refused (EPERM) rollback in the audit:\n{audit}"
    );
}

fn check_shell_end_state(m: &Mount, agent: &str, how: &str, stdout: &str) {
    assert!(stdout.contains("all facts are back"), "{stdout}");
    assert!(
        stdout.contains(how),
        "want a rollback with {how}:\n{stdout}"
    );
    let sem = m.mem(agent, "semantic");
    assert_eq!(
        read(&sem.join("everest")),
        "Mount Everest is 8849 metres high.\n"
    );
    assert_eq!(
        read(&sem.join("nile")),
        "The Nile flows into the Mediterranean Sea.\n"
    );
    assert_eq!(read(&sem.join("octopus")), "Octopuses have three hearts.\n");
    assert_eq!(checkpoints(m, agent, "sh-before-cleanup-").len(), 1);
    let log = read(&m.mem(agent, "episodic").join("log"));
    assert!(
        log.contains("shell-agent: rolled back to sh-before-cleanup-"),
        "{log}"
    );
}

#[test]
fn shell_agent_unbound_and_bound() {
    let Some(m) = Mount::try_new() else {
        return;
    };
    m.agent("shagent");
    m.agent("shbound");
    let script = example("shell_agent.sh");
    let out = run_ok(
        "shell_agent.sh (unbound)",
        Command::new("sh").arg(&script).arg(&m.mnt).arg("shagent"),
    );
    check_shell_end_state(&m, "shagent", "sys/agents/shagent/rollback", &out);
    let log = read(&m.mem("shagent", "episodic").join("log"));
    assert!(!log.contains("cleanup: rewrote"), "rolled back: {log}");

    let out = run_ok(
        "agentfs run -- shell_agent.sh (bound)",
        &mut bound(
            &m,
            "shbound",
            &[
                "sh".as_ref(),
                script.as_os_str(),
                m.mnt.as_os_str(),
                "shbound".as_ref(),
            ],
        ),
    );
    check_shell_end_state(&m, "shbound", "a copy of state/sh-before-cleanup-", &out);
    let log = read(&m.mem("shbound", "episodic").join("log"));
    assert!(
        log.contains("cleanup: rewrote"),
        "no rollback when bound: {log}"
    );
}

#[test]
fn operator_pauses_inspects_and_resumes() {
    let Some(m) = Mount::try_new() else {
        return;
    };
    m.agent("worker");
    fs::write(m.mem("worker", "episodic").join("log"), "started\n").unwrap();
    let out = run_ok(
        "operator.sh",
        Command::new("sh")
            .arg(example("operator.sh"))
            .arg(&m.mnt)
            .arg("worker")
            .env("AGENTFS", bin()),
    );
    assert!(out.contains("1. worker is stopped"), "{out}");
    assert!(out.contains("3. waiting: "), "{out}");
    assert_eq!(
        read(&m.mnt.join("sys/agents/worker/signal")).trim(),
        "running"
    );
    let log = read(&m.mem("worker", "episodic").join("log"));
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 3, "{log}");
    assert_eq!(lines[0], "started");
    // After CONT the two waiting appends may land in either order.
    for who in ["agent", "operator"] {
        let want = format!(": written by the {who} while stopped");
        assert!(
            lines[1..]
                .iter()
                .any(|l| l.starts_with("operator-demo ") && l.ends_with(&want)),
            "no line written by the {who}:\n{log}"
        );
    }
    // The waiting write came from a process bound to the agent. (The records reach
    // sys/audit a few milliseconds after their commits: the store's applier.)
    let complete = |audit: &str| {
        ["STOP", "CONT"].iter().all(|sig| {
            audit
                .lines()
                .any(|l| l.contains("\"op\":\"signal\"") && l.contains(sig))
        })
    };
    wait_until(Duration::from_secs(10), || {
        complete(&read(&m.mnt.join("sys/agents/worker/audit")))
    });
    let audit = read(&m.mnt.join("sys/agents/worker/audit"));
    let bind = audit
        .lines()
        .filter(|l| l.contains("\"op\":\"bind\""))
        .count();
    assert!(bind >= 1, "no bind record:\n{audit}");
    for sig in ["STOP", "CONT"] {
        assert!(
            audit
                .lines()
                .any(|l| l.contains("\"op\":\"signal\"") && l.contains(sig)),
            "no {sig} record:\n{audit}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// README.md
// ---------------------------------------------------------------------------------------------

/// The ```sh blocks of README.md, in order.
fn readme_blocks() -> Vec<String> {
    let text = read(&repo().join("README.md"));
    let mut blocks = Vec::new();
    let mut cur: Option<String> = None;
    for line in text.lines() {
        match &mut cur {
            None if line.trim_end() == "```sh" => cur = Some(String::new()),
            None => {}
            Some(_) if line.trim_end() == "```" => blocks.push(cur.take().unwrap()),
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
        }
    }
    assert!(cur.is_none(), "README.md: unterminated ```sh block");
    blocks
}

/// `CODE  # COMMENT` split at the first ` #` (none of the README's commands has one inside).
fn split_comment(line: &str) -> (&str, &str) {
    match line.find(" #") {
        Some(i) => (line[..i].trim_end(), line[i + 2..].trim()),
        None => (line.trim_end(), ""),
    }
}

/// The error a `# fails: MESSAGE (…)` comment promises, e.g. `Permission denied`.
fn expected_failure(comment: &str) -> Option<&str> {
    let rest = comment.strip_prefix("fails:")?.trim_start();
    let end = rest.find(['(', ':', ';']).unwrap_or(rest.len());
    let msg = rest[..end].trim();
    assert!(!msg.is_empty(), "`# fails:` without a message: {comment}");
    Some(msg)
}

/// Which kind of README block this is: the three that are checked rather than run, or the
/// tour (the block whose first line mounts `/tmp/agents`).
#[derive(Debug, PartialEq)]
enum Block {
    Install,
    BuildAndMount,
    TestSuite,
    Tour,
}

fn classify(block: &str) -> Block {
    let first = split_comment(block.lines().next().unwrap_or("")).0;
    if first.starts_with("cargo install ") {
        Block::Install
    } else if first.starts_with("cargo build --release && ") {
        Block::BuildAndMount
    } else if first == "scripts/test.sh" {
        Block::TestSuite
    } else if first.ends_with("agentfs mount /tmp/agents") {
        Block::Tour
    } else {
        panic!(
            "README.md has a ```sh block this test does not know how to run:\n{block}\n\
             teach tests/examples.rs about it"
        )
    }
}

#[test]
fn readme_blocks_are_all_known() {
    // Shell commands only in ```sh blocks, so none escapes this test under another tag
    // (other languages are fine; an untagged block must say what it is, e.g. ```text).
    let text = read(&repo().join("README.md"));
    let mut open = false;
    for (n, line) in text.lines().enumerate() {
        if let Some(tag) = line.trim_end().strip_prefix("```") {
            if !open {
                assert!(
                    !["", "bash", "shell", "console", "zsh", "shell-session"].contains(&tag),
                    "README.md line {}: a code block tagged {tag:?}; shell blocks are ```sh \
                     (run by this test), other text ```text",
                    n + 1
                );
            }
            open = !open;
        }
    }
    let kinds: Vec<Block> = readme_blocks().iter().map(|b| classify(b)).collect();
    assert_eq!(
        kinds,
        [
            Block::Install,
            Block::BuildAndMount,
            Block::TestSuite,
            Block::Tour
        ],
        "README.md's ```sh blocks changed: update tests/examples.rs"
    );
}

/// The install and test blocks name things that exist: the package and binary `cargo
/// install --path agentfs` installs, and `scripts/test.sh` (which CI runs too).
#[test]
fn readme_install_and_test_blocks_name_what_exists() {
    let blocks = readme_blocks();
    let install = blocks
        .iter()
        .find(|b| classify(b) == Block::Install)
        .unwrap();
    let (code, _) = split_comment(install.lines().next().unwrap());
    assert_eq!(code, "cargo install --path agentfs");
    let manifest = read(&repo().join("agentfs/Cargo.toml"));
    assert!(
        manifest.contains("[[bin]]\nname = \"agentfs\""),
        "agentfs/Cargo.toml has no binary named agentfs"
    );
    assert!(
        read(&repo().join("Cargo.toml")).contains("\"agentfs\""),
        "the workspace does not list the agentfs package (./target/release/agentfs)"
    );

    let test = repo().join("scripts/test.sh");
    let mode = std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&test).unwrap().permissions());
    assert!(mode & 0o111 != 0, "scripts/test.sh is not executable");
    assert!(
        read(&repo().join(".ci/run")).contains("scripts/test.sh"),
        ".ci/run does not run scripts/test.sh"
    );
}

/// Unmounts whatever a README block left mounted, however the test ends.
struct Cleanup {
    fixture: Mount,
}

impl Cleanup {
    fn new(tag: &str) -> (Cleanup, PathBuf) {
        let root = fresh_dir(tag);
        let fixture = Mount::unmounted(root.join("mnt"), root.join("data"), Some(root.clone()));
        (Cleanup { fixture }, root)
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // Mount's Drop unmounts if anything is mounted at its mountpoint (agentfs unmount,
        // else SIGKILL of the daemon and a lazy unmount) and removes the temp dirs.
        if !self.fixture.is_mounted() {
            self.fixture.mark_unmounted();
        }
    }
}

/// A shell with the README's world: `agentfs` is the binary under test (a function, so the
/// lines run unchanged apart from the mountpoint), the data dir and mountpoint are the
/// test's own.
fn readme_shell(shell: &str, mnt: &Path, data: &Path, script: &str) -> Output {
    let prelude = format!(
        "agentfs() {{ '{}' \"$@\"; }}\n",
        bin().to_str().expect("UTF-8 binary path")
    );
    let mut cmd = Command::new(shell);
    cmd.arg("-e")
        .arg("-c")
        .arg(format!("{prelude}{script}"))
        .env("AGENTFS_DATA_DIR", data)
        .env("AGENTFS_MOUNT", mnt)
        .env("NO_COLOR", "1");
    run_with_timeout(&mut cmd, Duration::from_secs(120)).expect("run the README block")
}

/// "The two commands": the build is not repeated (this binary is the build); the rest of the
/// line runs with `./target/release/agentfs` standing for the binary under test.
#[test]
fn readme_build_and_mount_block_mounts() {
    if !can_mount() {
        return;
    }
    let _wd = Watchdog::new(DEFAULT_TEST_SECS);
    let block = readme_blocks()
        .into_iter()
        .find(|b| classify(b) == Block::BuildAndMount)
        .unwrap();
    assert_eq!(block.lines().count(), 1, "{block}");
    let rest = block
        .trim_end()
        .strip_prefix("cargo build --release && ")
        .unwrap();
    assert!(
        rest.contains("./target/release/agentfs mount /tmp/agents"),
        "{block}"
    );
    let (mut guard, root) = Cleanup::new("readme-build");
    let mnt = root.join("mnt");
    fs::remove_dir(&mnt).unwrap(); // the block's `mkdir -p` makes it
    let data = root.join("data");
    let line = rest
        .replace("./target/release/agentfs", bin().to_str().unwrap())
        .replace("/tmp/agents", mnt.to_str().unwrap());
    guard.fixture.mark_mounted();
    let out = readme_shell("sh", &mnt, &data, &line);
    let mounted = is_mounted(&mnt);
    if !mounted {
        guard.fixture.mark_unmounted();
    }
    assert!(out.status.success(), "{line}: {}", show(&out));
    assert!(mounted, "{line} exited 0 but nothing is mounted");
    assert!(
        data.join("agentfs.db").is_file(),
        "the store is not in AGENTFS_DATA_DIR"
    );
    guard.fixture.unmount();
}

/// Outputs the tour's comments promise, by the command that prints them: (command,
/// expected substring of its stdout).
const TOUR_OUTPUTS: &[(&str, &str)] = &[
    ("ls /tmp/agents/a", "mem\npolicy\nstate\n"),
    ("ls /tmp/agents/a/mem", "episodic\nsemantic\nworking\n"),
    (
        "echo hi > /tmp/agents/a/mem/semantic/x && cat /tmp/agents/a/mem/semantic/x",
        "hi\n",
    ),
    ("cat /tmp/agents/sys/agents/a/status", "\"state\""),
    ("ls /tmp/agents/sys/policy", "00-builtin.toml\nversion\n"),
    ("cat /tmp/agents/a/policy/rules", "[[allow]]"),
    ("cat /tmp/agents/sys/agents/a/signal", "killed\n"),
    ("cat /tmp/agents/a/mem/semantic/.search/hi", "\tx\thi\n"),
    (
        "rm /tmp/agents/a/mem/semantic/x; agentfs diff a good",
        "D\tsemantic/x\n",
    ),
    ("agentfs ps", "a "),
    ("tail -n 3 /tmp/agents/sys/agents/a/audit", "{\"seq\":"),
    ("agentfs audit tail -n 5", "\"op\":\"unmount\""),
    ("agentfs audit verify", "audit chain ok"),
];

/// The tour in bash, the shell whose messages the `# fails:` comments quote: every line
/// succeeds or fails as marked, failures say what the comment says, outputs are as promised.
#[test]
fn readme_tour_runs_as_documented() {
    run_tour("bash", true);
}

/// The tour in `sh -e` (dash on Debian): the same lines succeed and fail. The messages are
/// not compared: dash's `echo` reports every failed write as "I/O error", whatever the errno.
#[test]
fn readme_tour_runs_in_posix_sh() {
    run_tour("sh", false);
}

fn run_tour(shell: &str, check_messages: bool) {
    if !can_mount() {
        return;
    }
    let _wd = Watchdog::new(DEFAULT_TEST_SECS);
    let tour = readme_blocks()
        .into_iter()
        .find(|b| classify(b) == Block::Tour)
        .unwrap();
    let (mut guard, root) = Cleanup::new("readme-tour");
    let mnt = root.join("mnt");
    fs::remove_dir(&mnt).unwrap(); // the tour's `mkdir -p` makes it
    let data = root.join("data");
    let mnt_s = mnt.to_str().unwrap();

    // One shell for the whole tour (so it runs as a user would type it), each line announced
    // on stdout and stderr so its output and errors can be told apart.
    let lines: Vec<&str> = tour.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut script = String::new();
    for (i, line) in lines.iter().enumerate() {
        let (code, comment) = split_comment(line);
        let code = code.replace("/tmp/agents", mnt_s);
        script.push_str(&format!("echo '@@line {i}'; echo '@@line {i}' >&2\n"));
        if code.contains("/.search/") {
            // A fact is searchable within a second of its close (SPEC §6; tests/search.rs
            // holds the daemon to that). Someone typing the tour is slower than that; this
            // shell is not, so it waits for the agent's index to catch up first.
            script.push_str(&format!(
                "for _ in $(seq 100); do grep -q '\"state\":\"ready\"' {mnt_s}/sys/agents/a/index && break; sleep 0.1; done\n"
            ));
        }
        match expected_failure(comment) {
            None => script.push_str(&format!("{code}\n")),
            Some(_) => script.push_str(&format!(
                "if {code}; then echo '@@unexpected success' >&2; exit 97; fi\n"
            )),
        }
    }
    script.push_str("echo '@@end'\n");
    guard.fixture.mark_mounted();
    let out = readme_shell(shell, &mnt, &data, &script);
    if !is_mounted(&mnt) {
        guard.fixture.mark_unmounted();
    }
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let by_line = |text: &str| -> Vec<String> {
        let mut v = vec![String::new(); lines.len()];
        let mut cur = None;
        for l in text.lines() {
            if let Some(n) = l.strip_prefix("@@line ") {
                cur = n.parse::<usize>().ok();
            } else if let Some(i) = cur {
                v[i].push_str(l);
                v[i].push('\n');
            }
        }
        v
    };
    let outs = by_line(&stdout);
    let errs = by_line(&stderr);
    if !out.status.success() || !stdout.contains("@@end") {
        let last = stdout
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("@@line "))
            .and_then(|n| n.parse::<usize>().ok());
        let which = last.map_or("?".to_string(), |i| lines[i].to_string());
        panic!(
            "the README tour ({shell}) stopped at `{which}` ({}):\n{}",
            out.status,
            last.map_or(stderr.clone(), |i| errs[i].clone())
        );
    }

    for (i, line) in lines.iter().enumerate() {
        let (code, comment) = split_comment(line);
        if let Some(msg) = expected_failure(comment).filter(|_| check_messages) {
            assert!(
                errs[i].contains(msg),
                "README line `{code}` is marked `fails: {msg}` but said: {}",
                errs[i]
            );
        }
    }
    for (cmd, want) in TOUR_OUTPUTS {
        let Some(i) = lines.iter().position(|l| split_comment(l).0 == *cmd) else {
            panic!("the README tour no longer has the line `{cmd}`: update TOUR_OUTPUTS");
        };
        assert!(
            outs[i].contains(want),
            "README line `{cmd}` printed {:?}, want it to contain {want:?}",
            outs[i]
        );
    }
    assert!(
        !is_mounted(&mnt),
        "the tour's `agentfs unmount` left {mnt_s} mounted"
    );

    // "Mount again and semantic/x and episodic/log are still there; working/notes is not."
    guard.fixture.mount();
    let a = mnt.join("a/mem");
    assert_eq!(read(&a.join("semantic/x")), "hi\n");
    assert_eq!(read(&a.join("episodic/log")), "step 1\n");
    assert!(!a.join("working/notes").exists(), "working/notes survived");
    guard.fixture.unmount();
}
