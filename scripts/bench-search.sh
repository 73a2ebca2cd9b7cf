#!/usr/bin/env bash
# Runs the semantic-memory search benchmark (tests/bench/searchbench.rs) with a release build
# and keeps its output in target/searchbench-<date>.txt: scripts/bench.sh --bench searchbench.
#
# Usage: scripts/bench-search.sh [--quick]
#   --quick   10,000 facts instead of 100,000, for a smoke run
# Env: AGENTFS_BIN=path benchmarks another agentfs binary.
# Needs root and /dev/fuse: it mounts agentfs (data dir under the temp dir) and writes a copy of
# the facts to /dev/shm for the grep yardstick.
# Informational: prints PASS/MISS against the targets, never fails on a MISS.
set -euo pipefail
case "${1:-}" in
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
esac
exec "$(dirname "${BASH_SOURCE[0]}")/bench.sh" --bench searchbench "$@"
