#!/usr/bin/env bash
# Conformance run: mounts agentfs on a temp dir and runs
#   (a) fsx (crates.io `fsx`) for N ops (default 20,000) on a file in mem/semantic and one in
#       mem/working;
#   (b) pjdfstest (crates.io `pjdfstest`) in mem/semantic (mem/working as the "secondary file
#       system", so the EXDEV cases run too), comparing its failures with
#       tests/pjdfstest-accepted.txt: any failure not listed there fails this script.
# With --baseline it also runs pjdfstest on a tmpfs, which must show 0 failures.
#
# Usage: scripts/conformance.sh [--baseline] [--release] [--ops N] [--keep]
#   --baseline  also run pjdfstest on a tmpfs (the yardstick: 0 failures expected)
#   --release   build and test the release binary (default: debug, like `cargo test`)
#   --ops N     fsx operations per file (default 20000; FSX_SEED sets the seed)
#   --keep      keep the work dir (logs, fsx artifacts) even on success
# Env: AGENTFS_BIN=path skips the build and tests that binary.
# Needs root (pjdfstest switches users; the mount is allow_other) and /dev/fuse.
# Prints one summary line per tool; exits 0 only if everything passed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ACCEPTED="$ROOT/tests/pjdfstest-accepted.txt"
OPS=20000
SEED="${FSX_SEED:-20240917}"
BASELINE=0
PROFILE=debug
KEEP=0

while [ $# -gt 0 ]; do
    case "$1" in
        --baseline) BASELINE=1 ;;
        --release) PROFILE=release ;;
        --ops) OPS="$2"; shift ;;
        --keep) KEEP=1 ;;
        -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "conformance.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

die() { echo "conformance.sh: $*" >&2; exit 2; }

[ "$(id -u)" = 0 ] || die "must run as root (pjdfstest switches users; mounting needs root)"
[ -e /dev/fuse ] || die "/dev/fuse is missing"

find_tool() {
    if command -v "$1" >/dev/null 2>&1; then command -v "$1"
    elif [ -x "$HOME/.cargo/bin/$1" ]; then echo "$HOME/.cargo/bin/$1"
    else die "$1 not found: install it with 'cargo install --locked fsx pjdfstest'"
    fi
}
FSX="$(find_tool fsx)"
PJD="$(find_tool pjdfstest)"

# pjdfstest's two unprivileged users: nobody and daemon, each with its primary group.
for u in nobody daemon; do id "$u" >/dev/null 2>&1 || die "user $u is missing (pjdfstest needs it)"; done
NOBODY_GROUP="$(id -gn nobody)"
DAEMON_GROUP="$(id -gn daemon)"

if [ -n "${AGENTFS_BIN:-}" ]; then
    BIN="$AGENTFS_BIN"
else
    if [ "$PROFILE" = release ]; then
        (cd "$ROOT" && cargo build --release -p agentfs --bin agentfs)
    else
        (cd "$ROOT" && cargo build -p agentfs --bin agentfs)
    fi
    BIN="$ROOT/target/$PROFILE/agentfs"
fi
[ -x "$BIN" ] || die "agentfs binary not found at $BIN"

# Short paths on purpose: pjdfstest binds UNIX sockets deep inside the tree, and sun_path
# holds only 108 bytes (a long prefix turns its socket cases into ENAMETOOLONG failures).
WORK="$(mktemp -d /tmp/afs-conf.XXXXXX)"
chmod 0755 "$WORK" # pjdfstest's users (nobody, daemon) must reach the mountpoint
MNT="$WORK/m"
DATA="$WORK/data"
mkdir -p "$MNT" "$WORK/artifacts"
FAILED=0
TMPFS_MOUNTS=()

cleanup() {
    set +e
    if mountpoint -q "$MNT"; then
        timeout 60 "$BIN" unmount "$MNT" >/dev/null 2>&1 || umount -l "$MNT"
    fi
    for t in "${TMPFS_MOUNTS[@]}"; do
        mountpoint -q "$t" && umount "$t"
    done
    if [ "$KEEP" = 1 ] || [ "$FAILED" != 0 ]; then
        echo "conformance.sh: logs and artifacts kept in $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

SUMMARY=()
summary() { SUMMARY+=("$1"); }

# POSIX tools create FIFOs, sockets and device nodes and grow files past 1 GiB on purpose:
# run them under the built-in policy minus those two rules (the secret patterns stay on).
POLICY="$DATA.policy.toml"
printf '[builtin]\ndisable = ["max-file-size", "no-special-files"]\n' > "$POLICY"

echo "== agentfs conformance: $BIN"
echo "   fsx: $FSX ($("$FSX" --version 2>/dev/null || echo '?')), pjdfstest: $PJD"
"$BIN" mount "$MNT" --data-dir "$DATA" --policy "$POLICY"
mkdir "$MNT/c"
SEM="$MNT/c/mem/semantic"
WRK="$MNT/c/mem/working"

# ------------------------------------------------------------------------------------------
# (a) fsx
# ------------------------------------------------------------------------------------------
# Every operation agentfs implements: pread/pwrite, truncate, close/reopen, fsync,
# fdatasync, posix_fallocate, sendfile, copy_file_range, fadvise. Not enabled: punch_hole
# (FALLOC_FL_PUNCH_HOLE is EOPNOTSUPP, see docs/SEMANTICS.md) and fsx's mmap operations
# (mapread, mapwrite, invalidate: fsx maps MAP_SHARED, which the kernel refuses with ENODEV
# on agent files, opened with direct I/O so that no cached page can hold bytes the policy
# refused; see docs/policy.md, "The page cache").
cat > "$WORK/fsx.toml" <<'EOF'
flen = 262144
[opsize]
max = 65536
min = 0
align = 1
[weights]
close_open = 2
read = 10
write = 10
mapread = 0
mapwrite = 0
invalidate = 0
truncate = 3
fsync = 1
fdatasync = 1
posix_fallocate = 1
punch_hole = 0
sendfile = 1
posix_fadvise = 1
copy_file_range = 1
EOF

run_fsx() {
    local class="$1" dir="$2" log="$WORK/fsx-$1.log" start end
    mkdir -p "$WORK/artifacts/$class"
    start=$(date +%s)
    if timeout 1800 "$FSX" -f "$WORK/fsx.toml" -N "$OPS" -S "$SEED" -P "$WORK/artifacts/$class" \
        "$dir/fsx-$class.bin" >"$log" 2>&1 && grep -q "All operations completed A-OK" "$log"; then
        end=$(date +%s)
        summary "fsx mem/$class: PASS ($OPS ops, seed $SEED, $((end - start)) s)"
    else
        FAILED=1
        echo "---- fsx mem/$class failed; last lines of $log:"
        tail -n 40 "$log"
        summary "fsx mem/$class: FAIL ($OPS ops, seed $SEED; log $log)"
    fi
}
# After each tool: if the daemon died under it, say so (with the log's panic/error lines),
# clear the stale mount and mount again so the next tool still runs.
check_alive() {
    local after="$1"
    if stat "$MNT/sys" >/dev/null 2>&1; then return; fi
    FAILED=1
    echo "---- the agentfs daemon died during $after; from $DATA/agentfs.log:"
    grep -E "panicked|ERROR" -A1 "$DATA/agentfs.log" | head -n 20 | sed 's/^/    /'
    summary "agentfs daemon during $after: DIED (see $DATA/agentfs.log)"
    umount -l "$MNT" 2>/dev/null || true
    "$BIN" mount "$MNT" --data-dir "$DATA" --policy "$POLICY"
    [ -d "$MNT/c" ] || mkdir "$MNT/c"
}

run_fsx semantic "$SEM"
check_alive "fsx mem/semantic"
run_fsx working "$WRK"
check_alive "fsx mem/working"

# ------------------------------------------------------------------------------------------
# (b) pjdfstest
# ------------------------------------------------------------------------------------------
cat > "$WORK/pjdfstest.toml" <<EOF
[features]
posix_fallocate = {}
utimensat = {}
utime_now = {}
rename_ctime = {}

[settings]
# Longer than the coarsest timestamp tick here (tmpfs uses the jiffy clock), so the
# "timestamps changed" cases mean the same on tmpfs and on agentfs.
naptime = 0.02
allow_remount = false

[dummy_auth]
entries = [
  ["nobody", "$NOBODY_GROUP"],
  ["daemon", "$DAEMON_GROUP"],
]
EOF

# Accepted failures: "test::name   # reason" per line; every entry needs a reason.
declare -A ACCEPT=()
if [ -f "$ACCEPTED" ]; then
    while IFS= read -r line || [ -n "$line" ]; do
        case "$line" in ''|'#'*) continue ;; esac
        name="${line%%[[:space:]#]*}"
        case "$line" in
            *'#'*) reason="${line#*#}" ;;
            *) reason="" ;;
        esac
        [ -n "${reason// /}" ] || die "$ACCEPTED: entry '$name' has no reason ('name  # why')"
        ACCEPT["$name"]=1
    done < "$ACCEPTED"
fi

# Runs pjdfstest in $2 (secondary fs $3) and compares with the accepted list ($4 = 1) or
# with "no failures at all" ($4 = 0).
run_pjdfstest() {
    local label="$1" dir="$2" second="$3" use_accepted="$4"
    local log="$WORK/pjdfstest-${label//\//-}.log" rc=0
    NO_COLOR=1 CLICOLOR=0 timeout 1800 "$PJD" -c "$WORK/pjdfstest.toml" -p "$dir" -s "$second" \
        >"$log.raw" 2>&1 || rc=$?
    # Strip colours in case the runner ignores NO_COLOR.
    sed 's/\x1b\[[0-9;]*m//g' "$log.raw" > "$log"
    local line passed failed skipped total
    line="$(grep -E '^Summary: ' "$log" | tail -n1 || true)"
    if [ -z "$line" ]; then
        FAILED=1
        echo "---- pjdfstest $label did not finish (exit $rc); last lines of $log:"
        tail -n 40 "$log"
        summary "pjdfstest $label: FAIL (no summary; exit $rc; log $log)"
        return
    fi
    passed="$(sed -E 's/.* ([0-9]+) passed.*/\1/' <<<"$line")"
    skipped="$(sed -E 's/.* ([0-9]+) skipped.*/\1/' <<<"$line")"
    total="$(sed -E 's/.* ([0-9]+) total.*/\1/' <<<"$line")"
    mapfile -t fails < <(grep -E '[[:space:]]FAILED[[:space:]]*$' "$log" | awk '{print $1}' | sort -u)
    failed="${#fails[@]}"
    local accepted=0 unexpected=() f
    for f in "${fails[@]}"; do
        if [ "$use_accepted" = 1 ] && [ -n "${ACCEPT[$f]:-}" ]; then
            accepted=$((accepted + 1))
        else
            unexpected+=("$f")
        fi
    done
    if [ "$use_accepted" = 1 ]; then
        local stale=() a
        for a in "${!ACCEPT[@]}"; do
            printf '%s\n' "${fails[@]}" | grep -qxF "$a" || stale+=("$a")
        done
        if [ "${#stale[@]}" -gt 0 ]; then
            echo "note: accepted failures that now pass (remove them from $ACCEPTED): ${stale[*]}"
        fi
    fi
    if [ "${#unexpected[@]}" -gt 0 ]; then
        FAILED=1
        echo "---- pjdfstest $label: failures not in the accepted list:"
        for f in "${unexpected[@]}"; do
            # The failure's message is on the lines after its name.
            grep -A3 -E "^$f[[:space:]]+FAILED" "$log" | sed 's/^/    /'
        done
        summary "pjdfstest $label: FAIL — $passed passed, $failed failed ($accepted accepted, ${#unexpected[@]} unexpected), $skipped skipped of $total"
    else
        summary "pjdfstest $label: PASS — $passed passed, $failed failed ($accepted accepted, 0 unexpected), $skipped skipped of $total"
    fi
}

run_pjdfstest "mem/semantic" "$SEM" "$WRK" 1
check_alive "pjdfstest"

# The mount must still unmount cleanly after all that.
if timeout 120 "$BIN" unmount "$MNT"; then
    summary "agentfs unmount after the runs: PASS"
else
    FAILED=1
    summary "agentfs unmount after the runs: FAIL"
fi

if [ "$BASELINE" = 1 ]; then
    T1="$WORK/t1"; T2="$WORK/t2"
    mkdir -p "$T1" "$T2"
    mount -t tmpfs -o mode=0755 tmpfs "$T1"; TMPFS_MOUNTS+=("$T1")
    mount -t tmpfs -o mode=0755 tmpfs "$T2"; TMPFS_MOUNTS+=("$T2")
    run_pjdfstest "tmpfs-baseline" "$T1" "$T2" 0
fi

echo
echo "== conformance summary"
for s in "${SUMMARY[@]}"; do echo "$s"; done
if [ "$FAILED" != 0 ]; then
    echo "RESULT: FAIL"
    exit 1
fi
echo "RESULT: PASS"
