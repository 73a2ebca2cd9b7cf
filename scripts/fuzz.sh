#!/usr/bin/env bash
# Runs every fuzz target for SECONDS of wall time each (default 60) and prints how many
# inputs each one tried. The targets are proptest strategies run by a time-bounded loop
# (tests/fuzz/harness.rs; cargo-fuzz would need a nightly compiler). A plain `cargo test`
# runs each of them for 5 s. See docs/reliability.md, "Fuzzing".
#
#   scripts/fuzz.sh [SECONDS] [CARGO TEST ARGS…]     e.g. scripts/fuzz.sh 600 -j1
#
# The targets of one crate run at the same time (one test binary, a thread each), so the
# whole run takes about 4 × SECONDS plus the build. Exit status non-zero if any target
# found a failure; its panic message has the minimal input and an AGENTFS_FUZZ_SEED to
# replay it with.
set -uo pipefail
cd "$(dirname "$0")/.."

secs="${1:-60}"
if [[ $# -gt 0 ]]; then shift; fi
if ! [[ "$secs" =~ ^[0-9]+([.][0-9]+)?$ ]]; then
  echo "usage: scripts/fuzz.sh [SECONDS] [CARGO TEST ARGS…]" >&2
  exit 2
fi
export AGENTFS_FUZZ_SECS="$secs"

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
start=$(date +%s)

# crate, test target selection, number of targets (threads), extra cargo test args.
run() {
  local crate="$1" target="$2" threads="$3"
  shift 3
  echo "== $crate ($target): fuzz targets for ${secs} s each"
  # shellcheck disable=SC2086
  cargo test "$@" -p "$crate" $target -- --nocapture --test-threads="$threads" fuzz_ \
    2>&1 | tee -a "$log"
  if [[ "${PIPESTATUS[0]}" != 0 ]]; then status=1; fi
}

run agentfs-policy "--test fuzz" 3 "$@"
run agentfs-signals "--test fuzz" 1 "$@"
run agentfs-memory "--test fuzz" 1 "$@"
run agentfs-vfs "--lib" 5 "$@"

echo
echo "== fuzz summary (${secs} s per target, $(( $(date +%s) - start )) s in all)"
# (libtest may print `test NAME ... ` in front of a target's line.)
grep -oE 'fuzz [a-z-]+: .*' "$log" | sort
if [[ "$status" != 0 ]]; then
  echo "scripts/fuzz.sh: FAILED (see above)"
fi
exit "$status"
