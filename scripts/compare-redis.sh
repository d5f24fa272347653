#!/usr/bin/env bash
# Redis beside idemstore on the same key count: what `SET key v NX EX 86400` (the usual Redis
# idempotency-key recipe) costs, pipelined and not, against `examples/loadgen.rs` in a closed loop.
#
#   scripts/compare-redis.sh                                   # 1 M keys
#   scripts/compare-redis.sh --keys 10000000 --requests 20000000 --seconds 20
#
# Options (or the environment variables in brackets):
#   --keys N       keyspace of redis-benchmark's -r and loadgen's --live   [KEYS, 1000000]
#   --requests N   pipelined requests (-P 32); the unpipelined run (-P 1) makes a tenth of them
#                                                                          [REQUESTS, 2 x keys]
#   --clients N    redis-benchmark connections (-c)                         [CLIENTS, 4]
#   --seconds S    loadgen's measured seconds                               [SECONDS_MEASURED, 10]
#   --port P       first loopback port to try for the Redis server          [PORT, 6399]
#
# What it does: installs redis-server and redis-tools if missing (apt-get; sudo when not root),
# starts its own redis-server on a free loopback port (no persistence, in the foreground of a
# background job, stopped on exit), waits for PING, runs redis-benchmark with the custom
# command, reads INFO memory and DBSIZE for bytes per key, runs loadgen, and prints both.
#
# Read the ratio with its caveats: Redis answers over loopback TCP from one event-loop thread,
# and redis-benchmark shares the machine's cores with it; loadgen claims in-process from
# --threads threads (default: all cores). Redis keys here never expire during the run (real
# 24 h EX on the wall clock: the keyspace just fills), while loadgen runs at steady state with
# keys expiring as fast as they arrive. Redis `used_memory` is its allocator's count of live
# bytes (keys, values, the expires dict); loadgen's figure is resident memory per live entry.
set -euo pipefail
cd "$(dirname "$0")/.."

KEYS=${KEYS:-1000000}
REQUESTS=${REQUESTS:-}
CLIENTS=${CLIENTS:-4}
SECONDS_MEASURED=${SECONDS_MEASURED:-10}
PORT=${PORT:-6399}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --keys) KEYS=$2; shift 2 ;;
    --requests) REQUESTS=$2; shift 2 ;;
    --clients) CLIENTS=$2; shift 2 ;;
    --seconds) SECONDS_MEASURED=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "compare-redis: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
done
REQUESTS=${REQUESTS:-$((2 * KEYS))}
UNPIPELINED=$((REQUESTS / 10))

say() { printf '\n== %s\n' "$*" >&2; }

# --- Redis, installed if missing ---------------------------------------------------------------
if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null \
  || ! command -v redis-cli >/dev/null; then
  say "installing redis-server and redis-tools"
  SUDO=()
  if [[ $(id -u) -ne 0 ]]; then SUDO=(sudo); fi
  export DEBIAN_FRONTEND=noninteractive
  if ! "${SUDO[@]}" apt-get install -y redis-server redis-tools >/dev/null; then
    "${SUDO[@]}" apt-get update >/dev/null
    "${SUDO[@]}" apt-get install -y redis-server redis-tools >/dev/null
  fi
fi

# --- Our own server on a free loopback port ----------------------------------------------------
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for _ in $(seq 1 100); do
  port_busy "$PORT" || break
  PORT=$((PORT + 1))
done
if port_busy "$PORT"; then
  echo "compare-redis: no free port found" >&2
  exit 1
fi

say "starting redis-server on 127.0.0.1:$PORT"
WORK=$(mktemp -d)
REDIS_PID=
cleanup() {
  if [[ -n $REDIS_PID ]] && kill -0 "$REDIS_PID" 2>/dev/null; then
    kill "$REDIS_PID" 2>/dev/null || true
    wait "$REDIS_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
  --dir "$WORK" --logfile "$WORK/redis.log" &
REDIS_PID=$!

for _ in $(seq 1 100); do
  if [[ $(redis-cli -p "$PORT" ping 2>/dev/null || true) == PONG ]]; then break; fi
  if ! kill -0 "$REDIS_PID" 2>/dev/null; then
    echo "compare-redis: redis-server exited:" >&2
    cat "$WORK/redis.log" >&2 || true
    exit 1
  fi
  sleep 0.1
done
[[ $(redis-cli -p "$PORT" ping) == PONG ]]
REDIS_VERSION=$(redis-server --version | grep -oE 'v=[0-9.]+' | cut -d= -f2)

# redis-benchmark -q prints "<command>: <n> requests per second, p50=<x> msec".
bench() {
  local pipeline=$1 n=$2 out
  out=$(redis-benchmark -p "$PORT" -n "$n" -r "$KEYS" -P "$pipeline" -c "$CLIENTS" -q \
    SET key:__rand_int__ v NX EX 86400 | tr '\r' '\n' | grep 'requests per second' | tail -1)
  echo "$out" >&2
  echo "$out" | grep -oE '[0-9.]+ requests per second' | cut -d' ' -f1
}

say "redis-benchmark: $REQUESTS x SET key:__rand_int__ v NX EX 86400, keyspace $KEYS, -P 32, -c $CLIENTS"
used_before=$(redis-cli -p "$PORT" info memory | tr -d '\r' | grep '^used_memory:' | cut -d: -f2)
REDIS_P32=$(bench 32 "$REQUESTS")
used_after=$(redis-cli -p "$PORT" info memory | tr -d '\r' | grep '^used_memory:' | cut -d: -f2)
DBSIZE=$(redis-cli -p "$PORT" dbsize | tr -d '\r')
REDIS_RSS=$(redis-cli -p "$PORT" info memory | tr -d '\r' | grep '^used_memory_rss:' | cut -d: -f2)
REDIS_BPK=$(awk -v a="$used_after" -v b="$used_before" -v k="$DBSIZE" \
  'BEGIN { if (k > 0) printf "%.1f", (a - b) / k; else print "nan" }')

say "redis-benchmark: the same, unpipelined (-P 1), $UNPIPELINED requests"
REDIS_P1=$(bench 1 "$UNPIPELINED")

kill "$REDIS_PID" 2>/dev/null || true
wait "$REDIS_PID" 2>/dev/null || true
REDIS_PID=

# --- loadgen on the same key count ------------------------------------------------------------
say "loadgen: --live $KEYS --rate max --seconds $SECONDS_MEASURED --json"
cargo build --release --example loadgen >&2
LOADGEN_JSON=$(cargo run -q --release --example loadgen -- \
  --live "$KEYS" --rate max --seconds "$SECONDS_MEASURED" --json)
echo "$LOADGEN_JSON" >&2
read -r LG_RATE LG_BPE LG_THREADS < <(python3 -c '
import json, sys
j = json.loads(sys.argv[1])
print(j["claims_per_s"], j["rss_bytes_per_entry"], j["threads"])' "$LOADGEN_JSON")

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "nan" }'; }
mps() { awk -v a="$1" 'BEGIN { printf "%.3f", a / 1e6 }'; }

echo
echo "Keys: $KEYS. Redis $REDIS_VERSION (1 server thread, loopback, $CLIENTS clients); idemstore loadgen ($LG_THREADS threads, in-process, closed loop, 10% retries)."
printf '%-52s %14s %12s\n' "" "ops/s (M)" "bytes/key"
printf '%-52s %14s %12s\n' "redis SET NX EX 86400, pipelined -P 32" "$(mps "$REDIS_P32")" "$REDIS_BPK"
printf '%-52s %14s %12s\n' "redis SET NX EX 86400, unpipelined -P 1" "$(mps "$REDIS_P1")" ""
printf '%-52s %14s %12s\n' "idemstore claim + complete (loadgen, --rate max)" "$(mps "$LG_RATE")" \
  "$(awk -v a="$LG_BPE" 'BEGIN { printf "%.1f", a }')"
echo
echo "idemstore / redis pipelined:   $(ratio "$LG_RATE" "$REDIS_P32")x ops/s, $(ratio "$LG_BPE" "$REDIS_BPK")x bytes/key"
echo "idemstore / redis unpipelined: $(ratio "$LG_RATE" "$REDIS_P1")x ops/s"
echo "(redis bytes/key: INFO used_memory growth / DBSIZE = $DBSIZE keys; used_memory_rss at the end $REDIS_RSS bytes."
echo " idemstore bytes/key: resident memory growth / live entries.)"
