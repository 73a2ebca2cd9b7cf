//! Semantic-memory search through a real mount (SPEC §6, issue 6): facts written with plain
//! file I/O are found by reading `mem/semantic/.search/QUERY`.

mod common;

use common::*;
use std::fs;
use std::path::Path;
use std::time::Duration;

/// The lines of `.search/QUERY` of `sem` (an agent's `mem/semantic`).
fn search(sem: &Path, query: &str) -> Vec<String> {
    let text = fs::read_to_string(sem.join(".search").join(query))
        .unwrap_or_else(|e| panic!("read .search/{query}: {e}"));
    text.lines().map(str::to_owned).collect()
}

/// The paths of the hits of `query`, sorted.
fn found(sem: &Path, query: &str) -> Vec<String> {
    let mut paths: Vec<String> = search(sem, query)
        .iter()
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            assert_eq!(cols.len(), 3, "not score<TAB>path<TAB>snippet: {l:?}");
            cols[0].parse::<f32>().expect("score is a number");
            cols[1].to_owned()
        })
        .collect();
    paths.sort();
    paths
}

/// Polls until `query` finds exactly `want` (the 1 s target, with slack for a loaded machine).
fn eventually(sem: &Path, query: &str, want: &[&str]) {
    let ok = wait_until(Duration::from_secs(5), || found(sem, query) == want);
    assert!(
        ok,
        "{query:?}: found {:?}, want {want:?}",
        found(sem, query)
    );
}

#[test]
fn facts_are_found_through_dot_search() {
    let Some(m) = Mount::try_new() else { return };
    m.agent("a");
    let sem = m.mem("a", "semantic");
    fs::write(
        sem.join("cats"),
        "The cat sat on the mat.\nIt purred loudly.",
    )
    .unwrap();
    fs::write(sem.join("dogs"), "The dog barked at the cat.").unwrap();
    fs::create_dir(sem.join("notes")).unwrap();
    fs::write(sem.join("notes/fish"), "A fish swims in the pond.").unwrap();

    eventually(&sem, "purred", &["cats"]);
    eventually(&sem, "cat", &["cats", "dogs"]);
    eventually(&sem, "\"dog barked\"", &["dogs"]);
    eventually(&sem, "cat -dog", &["cats"]);
    eventually(&sem, "fish OR purred", &["cats", "notes/fish"]);
    eventually(&sem, "path:notes", &["notes/fish"]);
    let line = &search(&sem, "purred")[0];
    assert!(
        line.contains("mat. It purred loudly"),
        "snippet on one line: {line:?}"
    );
    assert!(line.contains("purred"));

    // Lookup-only: listing shows nothing, no query is no file.
    assert_eq!(fs::read_dir(sem.join(".search")).unwrap().count(), 0);
    assert!(fs::metadata(sem.join(".search")).unwrap().is_dir());
    // A query file is read-only.
    let w = fs::OpenOptions::new()
        .write(true)
        .open(sem.join(".search/cat"));
    assert!(w.is_err(), "a query file opened for writing");
}

#[test]
fn bad_query_reads_as_an_error_line() {
    let Some(m) = Mount::try_new() else { return };
    m.agent("a");
    let sem = m.mem("a", "semantic");
    let lines = search(&sem, "nofield:x");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("error:"), "{lines:?}");
    assert!(lines[0].contains("nofield"), "says why: {lines:?}");
}

#[test]
fn an_agent_finds_only_its_own_facts() {
    let Some(m) = Mount::try_new() else { return };
    m.agent("a");
    m.agent("b");
    let (sa, sb) = (m.mem("a", "semantic"), m.mem("b", "semantic"));
    fs::write(sa.join("plan"), "the secret zanzibar plan").unwrap();
    fs::write(sb.join("plan"), "an ordinary plan").unwrap();
    eventually(&sa, "zanzibar", &["plan"]);
    eventually(&sb, "plan", &["plan"]);
    assert!(found(&sb, "zanzibar").is_empty());
    assert!(search(&sb, "plan").iter().all(|l| !l.contains("zanzibar")));
}

#[test]
fn rename_and_delete_update_the_index() {
    let Some(m) = Mount::try_new() else { return };
    m.agent("a");
    let sem = m.mem("a", "semantic");
    fs::write(sem.join("old"), "a wandering albatross").unwrap();
    eventually(&sem, "albatross", &["old"]);
    fs::rename(sem.join("old"), sem.join("new")).unwrap();
    eventually(&sem, "albatross", &["new"]);
    fs::write(sem.join("new"), "now about a pelican").unwrap();
    eventually(&sem, "pelican", &["new"]);
    eventually(&sem, "albatross", &[]);
    fs::remove_file(sem.join("new")).unwrap();
    eventually(&sem, "pelican", &[]);

    fs::create_dir(sem.join("d")).unwrap();
    fs::write(sem.join("d/x"), "heron in a directory").unwrap();
    eventually(&sem, "heron", &["d/x"]);
    fs::rename(sem.join("d"), sem.join("e")).unwrap();
    eventually(&sem, "heron", &["e/x"]);
}

#[test]
fn binary_files_are_not_indexed() {
    let Some(m) = Mount::try_new() else { return };
    m.agent("a");
    let sem = m.mem("a", "semantic");
    fs::write(sem.join("bin"), [b'o', b'w', b'l', b' ', 0xff, 0xfe]).unwrap();
    fs::write(sem.join("txt"), "owl").unwrap();
    eventually(&sem, "owl", &["txt"]);
}

#[test]
fn facts_survive_remount_and_a_lost_index_is_rebuilt() {
    let Some(mut m) = Mount::try_new() else {
        return;
    };
    m.agent("a");
    let sem = m.mem("a", "semantic");
    fs::write(sem.join("f"), "a durable narwhal").unwrap();
    eventually(&sem, "narwhal", &["f"]);
    m.remount();
    eventually(&sem, "narwhal", &["f"]);
    m.unmount();
    fs::remove_dir_all(m.data.join("search-index")).unwrap();
    m.mount();
    eventually(&sem, "narwhal", &["f"]);
}

#[test]
fn cli_search_prints_the_same_hits() {
    let Some(m) = Mount::try_new() else { return };
    m.agent("a");
    let sem = m.mem("a", "semantic");
    fs::write(sem.join("f"), "an ibex on a cliff").unwrap();
    eventually(&sem, "ibex", &["f"]);
    let mnt = m.mnt.as_os_str();
    let out = agentfs(&[
        "search".as_ref(),
        "-m".as_ref(),
        mnt,
        "a".as_ref(),
        "ibex".as_ref(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().collect::<Vec<_>>(), search(&sem, "ibex"));
    let out = agentfs(&[
        "search".as_ref(),
        "-m".as_ref(),
        mnt,
        "a".as_ref(),
        "ibex".as_ref(),
        "--json".as_ref(),
    ]);
    let hit: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(hit["path"], "f");
    let out = agentfs(&[
        "search".as_ref(),
        "-m".as_ref(),
        mnt,
        "a".as_ref(),
        "x:y".as_ref(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad query"));
}

#[test]
fn truncate_and_rollback_reindex() {
    let Some(m) = Mount::try_new() else { return };
    m.agent("a");
    let sem = m.mem("a", "semantic");
    fs::write(sem.join("f"), "a kestrel hovers").unwrap();
    eventually(&sem, "kestrel", &["f"]);
    fs::create_dir(m.mnt.join("a/state/s1")).unwrap();
    fs::write(sem.join("f"), "a falcon dives").unwrap();
    eventually(&sem, "falcon", &["f"]);
    fs::write(m.mnt.join("sys/agents/a/rollback"), "s1").unwrap();
    eventually(&sem, "kestrel", &["f"]);
    eventually(&sem, "falcon", &[]);
    // truncate(2) without an open commits new content too.
    fs::OpenOptions::new()
        .write(true)
        .open(sem.join("f"))
        .unwrap()
        .set_len(2)
        .unwrap();
    eventually(&sem, "kestrel", &[]);
}

#[test]
fn the_index_follows_a_rollback_of_whole_directories() {
    let Some(m) = Mount::try_new() else { return };
    m.agent("a");
    let sem = m.mem("a", "semantic");
    fs::write(sem.join("keep"), "an otter swims").unwrap();
    fs::create_dir_all(sem.join("dir/sub")).unwrap();
    fs::write(sem.join("dir/sub/inner"), "a heron waits").unwrap();
    eventually(&sem, "heron", &["dir/sub/inner"]);
    fs::create_dir(m.mnt.join("a/state/s1")).unwrap();
    fs::remove_dir_all(sem.join("dir")).unwrap();
    fs::create_dir(sem.join("dir2")).unwrap();
    fs::write(sem.join("dir2/new"), "a badger digs").unwrap();
    eventually(&sem, "heron", &[]);
    eventually(&sem, "badger", &["dir2/new"]);
    fs::write(m.mnt.join("sys/agents/a/rollback"), "s1").unwrap();
    eventually(&sem, "heron", &["dir/sub/inner"]);
    eventually(&sem, "badger", &[]);
    eventually(&sem, "otter", &["keep"]);
    // Results can show before the outbox counts the last update done (it failed under
    // load when asserted at once), so the index must become ready, not be ready.
    let settled = wait_until(Duration::from_secs(10), || {
        index_status(&m)["state"] == "ready"
    });
    assert!(settled, "index status: {}", index_status(&m));
}

/// The `index` object of agent `a`'s status.
fn index_status(m: &Mount) -> serde_json::Value {
    let text = fs::read_to_string(m.mnt.join("sys/agents/a/index")).expect("read index");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("index is not JSON ({e}): {text}"))
}

fn wait_index_ready(m: &Mount) {
    let ok = wait_until(Duration::from_secs(20), || {
        index_status(m)["state"] == "ready"
    });
    assert!(ok, "index never ready: {}", index_status(m));
}

#[test]
fn updates_in_flight_at_kill9_are_caught_up_after_remount() {
    let Some(mut m) = Mount::try_new() else {
        return;
    };
    m.agent("a");
    let sem = m.mem("a", "semantic");
    fs::write(sem.join("old"), "an old walrus").unwrap();
    fs::write(sem.join("gone"), "a doomed dodo").unwrap();
    eventually(&sem, "walrus", &["old"]);
    // A burst of closes, a delete and a rename, then kill -9 at once: the indexer batches for
    // 100 ms, so the last of these are committed to the store but not yet to the index.
    for i in 0..50 {
        fs::write(sem.join(format!("f{i}")), format!("fact number{i} okapi")).unwrap();
    }
    fs::remove_file(sem.join("gone")).unwrap();
    fs::rename(sem.join("old"), sem.join("renamed")).unwrap();
    m.kill9();
    m.mount();
    wait_index_ready(&m);
    for i in [0, 25, 49] {
        eventually(&sem, &format!("number{i}"), &[&format!("f{i}")]);
    }
    assert_eq!(found(&sem, "okapi").len(), 50);
    eventually(&sem, "dodo", &[]);
    eventually(&sem, "walrus", &["renamed"]);
}

#[test]
fn status_shows_the_index_and_rebuild_is_on_request() {
    let Some(m) = Mount::try_new() else { return };
    m.agent("a");
    let sem = m.mem("a", "semantic");
    fs::write(sem.join("t"), "text about a quokka").unwrap();
    fs::write(sem.join("bin"), [0xffu8, 0xfe, 0x00, 0x80]).unwrap();
    eventually(&sem, "quokka", &["t"]);
    wait_index_ready(&m);
    let st = index_status(&m);
    assert_eq!(st["skipped_binary"], serde_json::json!(["bin"]), "{st}");
    let status: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(m.mnt.join("sys/agents/a/status")).unwrap())
            .unwrap();
    assert_eq!(status["index"]["state"], "ready", "{status}");

    let ctl = m.mnt.join("sys/agents/a/index");
    assert_errno(
        "write junk to index",
        fs::write(&ctl, "please"),
        libc::EINVAL,
    );
    fs::write(&ctl, "rebuild\n").unwrap();
    wait_index_ready(&m);
    eventually(&sem, "quokka", &["t"]);
    // The request is recorded.
    let audit = fs::read_to_string(m.mnt.join("sys/agents/a/audit")).unwrap();
    assert!(audit.contains("\"reindex\""), "{audit}");
}

#[test]
fn the_search_directory_name_cannot_be_taken() {
    let Some(m) = Mount::try_new() else { return };
    m.agent("a");
    let sem = m.mem("a", "semantic");
    fs::write(sem.join("x"), "x").unwrap();
    assert!(fs::write(sem.join(".search"), "hidden").is_err());
    assert_errno(
        "mkdir .search",
        fs::create_dir(sem.join(".search")),
        libc::EEXIST,
    );
    // The kernel sees a directory there: a file cannot replace it (EISDIR), and a directory
    // is refused by the core (EEXIST).
    assert_errno(
        "rename a file onto .search",
        fs::rename(sem.join("x"), sem.join(".search")),
        libc::EISDIR,
    );
    fs::create_dir(sem.join("d")).unwrap();
    assert_errno(
        "rename a directory onto .search",
        fs::rename(sem.join("d"), sem.join(".search")),
        libc::EEXIST,
    );
    assert_eq!(fs::read(sem.join("x")).unwrap(), b"x");
    // Elsewhere the name is an ordinary one.
    fs::create_dir(sem.join("sub")).unwrap();
    fs::write(sem.join("sub/.search"), "fine").unwrap();
    assert_eq!(fs::read(sem.join("sub/.search")).unwrap(), b"fine");
}

#[test]
fn boolean_not_through_the_mount() {
    let Some(m) = Mount::try_new() else { return };
    m.agent("a");
    let sem = m.mem("a", "semantic");
    fs::write(sem.join("cats"), "the cat").unwrap();
    fs::write(sem.join("both"), "the cat and the dog").unwrap();
    eventually(&sem, "cat", &["both", "cats"]);
    eventually(&sem, "cat AND NOT dog", &["cats"]);
    eventually(&sem, "NOT dog", &["cats"]);
}

#[test]
fn a_thousand_facts_each_found_by_its_word() {
    let Some(m) = Mount::try_new() else { return };
    m.agent("a");
    let sem = m.mem("a", "semantic");
    fs::create_dir(sem.join("facts")).unwrap();
    let word = |i: usize| format!("zq{i:04}x");
    for i in 0..1000 {
        fs::write(
            sem.join(format!("facts/{i}")),
            format!("fact {i} says {} and something common", word(i)),
        )
        .unwrap();
    }
    eventually(&sem, &word(999), &["facts/999"]);
    for i in 0..1000 {
        assert_eq!(
            found(&sem, &word(i)),
            [format!("facts/{i}")],
            "fact {i} by its word"
        );
    }
}

#[test]
fn queries_work_after_the_kernel_forgets_their_inodes() {
    let Some(m) = Mount::try_new() else { return };
    m.agent("a");
    let sem = m.mem("a", "semantic");
    fs::write(sem.join("f"), "a lonely aardvark").unwrap();
    eventually(&sem, "aardvark", &["f"]);
    for i in 0..300 {
        assert!(search(&sem, &format!("nothing{i}")).is_empty());
    }
    // Make the kernel drop its cached dentries and inodes: it sends FUSE forgets, and the
    // daemon drops the query inodes it no longer needs.
    fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
    eventually(&sem, "aardvark", &["f"]);
    assert!(search(&sem, "nothing7").is_empty());
    fs::write(sem.join("g"), "another aardvark").unwrap();
    eventually(&sem, "aardvark", &["f", "g"]);
}
