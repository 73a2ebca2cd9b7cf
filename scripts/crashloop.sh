#!/usr/bin/env bash
# The crash loop (tests/crashloop.rs) for long runs: mount, a mixed workload of three agents
# (creates, appends, renames, truncates, deletes, checkpoints, rollbacks, policy violations,
# STOP/CONT), kill -9 at a random moment, remount, verify; N times. Release build.
#
# Usage: scripts/crashloop.sh [N] [SEED]     (N defaults to 100; SEED repeats a run's choices)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "crashloop.sh: must run as root (it mounts)" >&2; exit 2; }
export AGENTFS_CRASH_CYCLES="${1:-100}"
if [ -n "${2:-}" ]; then export AGENTFS_CRASH_SEED="$2"; fi
cargo test --release -p agentfs --test crashloop -- --nocapture
