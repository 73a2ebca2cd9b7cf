#!/bin/bash
# Snapshot cost through the mount, for comparing builds (needs root and /dev/fuse).
#
#   tests/bench/snapshots.sh BINARY [BINARY...]
#
# For each build in turn (alternated, ROUNDS times, default 3): mounts a fresh daemon, writes
# 10,000 files of 8 KiB into 100 directories of a/mem/semantic, then takes three snapshots
# two seconds apart (so the store's applier is idle) and prints the daemon's own account of
# each (total ms, copy + commit ms, page faults of the request thread where the build logs
# them) and its RSS.
set -euo pipefail
ROUNDS=${ROUNDS:-3}
for round in $(seq "$ROUNDS"); do
  for bin in "$@"; do
    mnt=$(mktemp -d /tmp/agentfs-snapbench.XXXX)
    data=$(mktemp -d /tmp/agentfs-snapbench-data.XXXX)
    "$bin" mount "$mnt" --data-dir "$data"
    mkdir "$mnt/a"
    pid=$(cat "$data/agentfs.pid")
    python3 - "$mnt/a/mem/semantic" <<'PY'
import os, sys
root = sys.argv[1]
for i in range(10000):
    d = f"{root}/d{i % 100:03}"
    if i < 100:
        os.mkdir(d)
    with open(f"{d}/f{i:05}", "wb") as f:
        f.write(os.urandom(8192))
PY
    sleep 2
    for n in 1 2 3; do mkdir "$mnt/a/state/c$n"; sleep 2; done
    line="round $round $(basename "$bin"):"
    while read -r entry; do
      field() { grep -o " $1=[0-9.]*" <<<"$entry" | cut -d= -f2 || true; }
      line="$line $(printf '%.1f ms (%.1f+%.1f' "$(field ms)" "$(field copy_ms)" "$(field commit_ms)")"
      faults=$(field faults)
      line="$line${faults:+, $faults faults})"
    done < <(grep "snapshot taken" "$data/agentfs.log")
    echo "$line; RSS $(awk '/VmRSS/ {print $2, $3}' "/proc/$pid/status")"
    "$bin" unmount "$mnt" >/dev/null 2>&1 || umount "$mnt"
    sleep 1
    rm -rf "$data" "$mnt"
  done
done
