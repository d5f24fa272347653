#!/usr/bin/env bash
# Runs the loom models of tests/loom.rs, and the library's own (the rebuild hand-off in
# src/table.rs), against the real engine (src/sync.rs swaps every atomic, lock and Arc for
# loom's under --cfg idemstore_loom).
#
#   scripts/loom.sh                         # preemption bound 2 (well under a second)
#   LOOM_MAX_PREEMPTIONS=100 scripts/loom.sh  # effectively unbounded (a few seconds)
#   scripts/loom.sh expiry_races_replay     # one model; extra args go to cargo test
#
# A separate target dir keeps the loom build from invalidating the normal one.
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS="${RUSTFLAGS:-} --cfg idemstore_loom"
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-2}"
exec cargo test --release --lib --test loom --target-dir target/loom "$@"
