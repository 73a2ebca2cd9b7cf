#!/usr/bin/env bash
# Runs the agentfs benchmark (tests/bench/fsbench.rs) with a release build and keeps its
# output in target/fsbench-<date>.txt.
#
# Usage: scripts/bench.sh [--quick]
#   --quick   smaller sizes (32 MiB, 1,000 files, growth to 20,000) for a smoke run
# Env: AGENTFS_BENCH_CLASS=working|semantic|episodic (default semantic) picks the memory class
#      the workload runs in; AGENTFS_BIN=path benchmarks another agentfs binary.
# Needs root and /dev/fuse: it mounts agentfs (data dir on disk, then on a tmpfs) and a tmpfs.
# Informational: prints PASS/MISS against the targets, never fails on a MISS.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
case "${1:-}" in
    --quick) export AGENTFS_BENCH_QUICK=1 ;;
    "") ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { echo "bench.sh: must run as root (it mounts file systems)" >&2; exit 2; }
mkdir -p target
OUT="target/fsbench-$(date +%Y%m%d-%H%M%S).txt"
# `cargo bench` builds the benchmark and the agentfs binary it drives with the release
# (bench) profile.
cargo bench -p agentfs --bench fsbench 2>&1 | tee "$OUT"
echo "bench.sh: output saved to $OUT"
