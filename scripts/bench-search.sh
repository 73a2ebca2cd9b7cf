#!/usr/bin/env bash
# Runs the semantic-memory search benchmark (tests/bench/searchbench.rs) with a release build
# and keeps its output in target/searchbench-<date>.txt.
#
# Usage: scripts/bench-search.sh [--quick]
#   --quick   10,000 facts instead of 100,000, for a smoke run
# Env: AGENTFS_BIN=path benchmarks another agentfs binary.
# Needs root and /dev/fuse: it mounts agentfs (data dir under the temp dir) and writes a copy of
# the facts to /dev/shm for the grep yardstick.
# Informational: prints PASS/MISS against the targets, never fails on a MISS.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
case "${1:-}" in
    --quick) export AGENTFS_BENCH_QUICK=1 ;;
    "") ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-search.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { echo "bench-search.sh: must run as root (it mounts)" >&2; exit 2; }
mkdir -p target
OUT="target/searchbench-$(date +%Y%m%d-%H%M%S).txt"
# `cargo bench` builds the benchmark and the agentfs binary it drives with the release
# (bench) profile.
cargo bench -p agentfs --bench searchbench 2>&1 | tee "$OUT"
echo "bench-search.sh: output saved to $OUT"
