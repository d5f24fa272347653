#!/usr/bin/env bash
# Runs examples/loadgen.rs for idemstore and each peer with the same arguments, one after the
# other, saves each run's JSON in target/perf/<engine>.json, prints a table, and draws the bars
# with scripts/plot.py.
#
#   scripts/perf-table.sh                                  # loadgen's defaults (~30 s+ per run)
#   scripts/perf-table.sh --rate max                       # closed loop: capacity and CPU/claim
#   scripts/perf-table.sh --live 1000000 --seconds 5 --rate max
#   PEERS="dashmap scc" OUT=target/perf/perf.png scripts/perf-table.sh --rate max
#
# Every argument goes to loadgen as is (see `cargo run --release --example loadgen -- --help`).
# PEERS: the peers to run after idemstore (default "dashmap scc moka"; moka needs ~350 B and
# about 5 µs of CPU per key, so give it time and memory at 20 M keys; "none" runs the harness
# with no structure at all, the latency floor of the machine).
# OUT: the PNG (default docs/perf.png). Needs python3 with matplotlib for the PNG; without it
# the JSON and the table are still written.
set -euo pipefail
cd "$(dirname "$0")/.."

PEERS=${PEERS:-dashmap scc moka}
OUT=${OUT:-docs/perf.png}
DIR=target/perf
mkdir -p "$DIR"

cargo build --release --example loadgen
BIN=target/release/examples/loadgen

files=()
status=0
for engine in idemstore $PEERS; do
  file="$DIR/$engine.json"
  peer=()
  [[ $engine == idemstore ]] || peer=(--peer "$engine")
  echo "== $engine: loadgen ${peer[*]} $*" >&2
  # loadgen exits 1 when it saw violations; keep its JSON and go on.
  if ! "$BIN" "${peer[@]}" "$@" --json >"$file.tmp"; then
    echo "perf-table: loadgen for $engine failed or reported violations (see $file)" >&2
    status=1
  fi
  mv "$file.tmp" "$file"
  files+=("$file")
done

python3 - "${files[@]}" <<'PY'
import json, sys

def t(ns):
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("us", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g}{unit}"
    return f"{ns:.0f}ns"

def b(x):
    # Bytes per entry; none for `--peer none`, which holds no entries.
    return "-" if x is None else f"{x:.1f}"

print(f"\n{'engine':<10} {'claims/s':>10} {'CPU ns':>7} {'p50':>8} {'p99':>8} {'p99.9':>8} "
      f"{'max':>8} {'RSS B/e':>8} {'+sweeper':>8} {'violations':>10}")
for path in sys.argv[1:]:
    with open(path) as f:
        lines = [l for l in f.read().splitlines() if l.startswith("{")]
    if not lines:
        print(f"{path}: no result")
        continue
    r = json.loads(lines[-1])
    lat = r["latency_ns"]
    cpu = r.get("cpu_ns_per_claim")
    mark = "" if r.get("sustained", True) else "*"
    print(f"{r['engine']:<10} {r['claims_per_s'] / 1e6:>8.3f}M{mark:1} "
          f"{'-' if cpu is None else round(cpu)!s:>7} {t(lat['p50']):>8} {t(lat['p99']):>8} "
          f"{t(lat['p999']):>8} {t(lat['max']):>8} {b(r['rss_bytes_per_entry']):>8} "
          f"{b(r['sweeper_bytes_per_entry']):>8} {r['violations']:>10}")
print("(* the offered rate was not sustained; CPU ns per claim is given in a closed loop only)")
PY

if python3 -c 'import matplotlib' 2>/dev/null; then
  mkdir -p "$(dirname "$OUT")"
  python3 scripts/plot.py -o "$OUT" "${files[@]}"
else
  echo "perf-table: matplotlib is missing (python3 -m pip install matplotlib); no PNG drawn" >&2
fi
exit "$status"
