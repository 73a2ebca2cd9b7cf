#!/bin/sh
# What the flight recorder costs: the small-file create rate of the normal release build
# against a build whose recorder is compiled out (cargo feature bench-no-recorder), in the
# same run. Prints the figures; never fails on a miss. Needs root and /dev/fuse.
set -eu
cd "$(dirname "$0")/.."
target=$(realpath -m "${CARGO_TARGET_DIR:-target}")
cargo build --release -p agentfs
cargo build --release -p agentfs --features bench-no-recorder --target-dir "$target/no-recorder"
AGENTFS_BIN="$target/release/agentfs" \
AGENTFS_BIN_NO_RECORDER="$target/no-recorder/release/agentfs" \
AGENTFS_BENCH_ONLY=recorder \
    cargo bench -p agentfs --bench fsbench
