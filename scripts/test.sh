#!/usr/bin/env bash
# The whole test suite, as the README says:
#   1. `cargo test --workspace`: unit and property tests of every crate, and the real-mount
#      tests in tests/ (they need root and /dev/fuse, and print SKIP without them);
#   2. the loom model checks of the RamStore's chunk-lifetime protocol
#      (memory-backends/tests/loom_ram.rs, which needs the crate's `loom` feature);
#   3. scripts/conformance.sh: fsx and pjdfstest through a real mount of the binary that
#      step 1 built (needs root and /dev/fuse; skipped with a note without them).
# Every step always runs, so one run shows every failure; the exit status is non-zero if
# either failed. Extra arguments go to `cargo test`, e.g. `scripts/test.sh --release`.
set -uo pipefail
cd "$(dirname "$0")/.."

profile=debug
for arg in "$@"; do
  if [[ "$arg" == "--release" ]]; then profile=release; fi
done

status=0
cargo test --workspace --no-fail-fast "$@" || status=1
cargo test -p agentfs-memory --features loom --test loom_ram "$@" || status=1

if [[ -x scripts/conformance.sh ]]; then
  if [[ "$(id -u)" != 0 || ! -c /dev/fuse ]]; then
    echo "SKIP scripts/conformance.sh: fsx and pjdfstest need root and /dev/fuse"
  else
    bin="${CARGO_TARGET_DIR:-$PWD/target}/$profile/agentfs"
    if [[ -x "$bin" ]]; then
      export AGENTFS_BIN="$bin"
    fi
    scripts/conformance.sh || status=1
  fi
fi

if [[ "$status" != 0 ]]; then
  echo "scripts/test.sh: FAILED (see above)"
fi
exit "$status"
