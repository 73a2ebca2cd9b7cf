#!/usr/bin/env bash
# Runs an agentfs benchmark with a release build and keeps its output in
# target/<bench>-<date>.txt.
#
# Usage: scripts/bench.sh [--bench NAME] [--quick]
#   --bench NAME  which benchmark of tests/bench/ (default fsbench; searchbench, ckptbench, …)
#   --quick       smaller sizes for a smoke run (fsbench: 32 MiB, 1,000 files, growth to 20,000)
# Env: AGENTFS_BENCH_CLASS=working|semantic|episodic (default semantic) picks the memory class
#      fsbench's workload runs in; AGENTFS_BIN=path benchmarks another agentfs binary.
# Needs root and /dev/fuse: the benchmarks mount agentfs (and tmpfs yardsticks).
# Informational: prints PASS/MISS against the targets, never fails on a MISS.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BENCH=fsbench
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) export AGENTFS_BENCH_QUICK=1 ;;
        --bench) BENCH="${2:?--bench needs a name}"; shift ;;
        -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
[ "$(id -u)" = 0 ] || { echo "bench.sh: must run as root (it mounts file systems)" >&2; exit 2; }
mkdir -p target
OUT="target/$BENCH-$(date +%Y%m%d-%H%M%S).txt"
# `cargo bench` builds the benchmark and the agentfs binary it drives with the release
# (bench) profile.
cargo bench -p agentfs --bench "$BENCH" 2>&1 | tee "$OUT"
echo "bench.sh: output saved to $OUT"
