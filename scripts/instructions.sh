#!/usr/bin/env bash
# Instructions per operation of idemstore and dashmap, counted by valgrind's callgrind in
# examples/instructions.rs: exact and repeatable, where wall time on a shared machine is not.
# Use it to compare two versions of the engine (run it on each) for changes too small to time.
#
#   scripts/instructions.sh                  # every workload
#   scripts/instructions.sh replay unique    # some of them (replay, unique, claim_complete)
#
# Installs valgrind if missing (apt-get; sudo when not root). Prints, per workload and
# structure, the instructions callgrind counted inside its `run_*` function divided by the
# operations run.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v valgrind >/dev/null; then
    SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
    $SUDO apt-get install -y valgrind >/dev/null
fi
cargo build --release --example instructions
bin=target/release/examples/instructions
ops=100000
workloads=("$@")
[ ${#workloads[@]} -eq 0 ] && workloads=(replay unique claim_complete)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
printf '%-16s %-10s %12s\n' workload structure instr/op
for w in "${workloads[@]}"; do
    for s in idemstore dashmap; do
        fn="instructions::run_${s}_${w}"
        if ! grep -q "fn run_${s}_${w}(" examples/instructions.rs; then
            continue
        fi
        valgrind --tool=callgrind --callgrind-out-file="$out/cg" --toggle-collect="$fn" \
            "$bin" "$w" >/dev/null 2>"$out/log"
        total=$(grep -E '^summary:' "$out/cg" | awk '{print $2}')
        awk -v w="$w" -v s="$s" -v t="$total" -v n="$ops" \
            'BEGIN { printf "%-16s %-10s %12.1f\n", w, s, t / n }'
    done
done
