#!/usr/bin/env bash
# The cost of a forwarded request in a fleet against a local one (BENCHMARKS.md, "A fleet:
# a forwarded request against a local one"). One run measures both:
#   redis-server, relay A (holds the name: its agent is parked there), relay B (forwards to A),
#   one ptth-connect agent, bench/upstream.rs; wrk GET /NAME/hello at A (local) and at B
#   (forwarded), ROUNDS times alternating, each DURATION long.
# CPU per request is the relays' user+system time (from /proc/PID/stat) over the requests of
# the run: A alone for the local path, A and B for the forward.
#   bash bench/fleet.sh                  # 3 rounds of 5 s at 16 connections
#   ROUNDS=5 DURATION=10s CONNS=32 bash bench/fleet.sh
# Installs wrk and redis-server from Debian when missing (as root). All on 127.0.0.1.
set -euo pipefail
BENCH_NAME=fleet-bench
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ROOT="$BENCH_ROOT/fleet"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-5s}"
CONNS="${CONNS:-16}"
mkdir -p "$ROOT"

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v redis-server >/dev/null || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { say "install ${need[*]} first"; exit 1; }
  apt-get update -q >"$ROOT/apt.log" 2>&1 || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" \
    >>"$ROOT/apt.log" 2>&1
fi

say "building ptth and the upstream (release)"
(cd "$REPO" && cargo build --release --quiet --bins --example bench-upstream)
BIN="$REPO/target/release"

REDIS=16479 UP=18180 A=18181 B=18182 PA=18191 PB=18192 NAME=bench
redis-server --port "$REDIS" --bind 127.0.0.1 --save "" --appendonly no >"$ROOT/redis.log" 2>&1 &
PIDS+=($!); pid_redis=$!
"$BIN/examples/bench-upstream" "127.0.0.1:$UP" >"$ROOT/upstream.log" 2>&1 &
PIDS+=($!)
wait_port "$REDIS"; wait_port "$UP"
relay() { # public port, peer port
  "$BIN/ptth-serve" --listen "127.0.0.1:$1" --registry "redis://127.0.0.1:$REDIS" \
    --advertise "http://127.0.0.1:$2" >"$ROOT/relay-$1.out" 2>"$ROOT/relay-$1.log" &
  PIDS+=($!)
}
relay "$A" "$PA"; pid_a=$!
relay "$B" "$PB"; pid_b=$!
wait_port "$A"; wait_port "$B"
"$BIN/ptth-connect" "http://127.0.0.1:$A/$NAME" --to "http://127.0.0.1:$UP" \
  --connections "$CONNS" --max-connections "$CONNS" >"$ROOT/agent.log" 2>&1 &
PIDS+=($!)
wait_answer "http://127.0.0.1:$B/$NAME/hello" 10 || true

# One wrk run at port $1: prints "requests cpu_us_a cpu_us_b cpu_us_redis".
run() {
  local a0 b0 r0 a1 b1 r1 out reqs
  a0=$(ticks "$pid_a"); b0=$(ticks "$pid_b"); r0=$(ticks "$pid_redis")
  out=$(wrk -t1 -c"$CONNS" -d"$DURATION" "http://127.0.0.1:$1/$NAME/hello")
  a1=$(ticks "$pid_a"); b1=$(ticks "$pid_b"); r1=$(ticks "$pid_redis")
  echo "$out" >>"$ROOT/wrk.log"
  if echo "$out" | grep -q "Non-2xx"; then say "errors in the run at $1:"; echo "$out" >&2; exit 1; fi
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  echo "$reqs $(( (a1 - a0) * 1000000 / HZ )) $(( (b1 - b0) * 1000000 / HZ ))" \
    "$(( (r1 - r0) * 1000000 / HZ ))"
}

wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$B/$NAME/hello" >/dev/null # warm up (peer connections)
say "rounds: $ROUNDS x ($DURATION local at A, $DURATION forwarded via B), $CONNS connections"
printf '%-6s %-10s %8s %14s %10s %10s %12s\n' round path "req/s" "relays µs/req" "A µs/req" \
  "B µs/req" "redis µs/req"
secs=${DURATION%s}
row() { # round, path, requests, cpu A, cpu B, cpu redis (µs)
  printf '%-6s %-10s %8d %14.1f %10.1f %10.1f %12.1f\n' "$1" "$2" $(($3 / secs)) \
    "$(echo "($4 + $5) / $3" | bc -l)" "$(echo "$4 / $3" | bc -l)" "$(echo "$5 / $3" | bc -l)" \
    "$(echo "$6 / $3" | bc -l)"
}
for r in $(seq "$ROUNDS"); do
  read -r n ca cb cr < <(run "$A")
  row "$r" local "$n" "$ca" "$cb" "$cr"
  read -r n ca cb cr < <(run "$B")
  row "$r" forwarded "$n" "$ca" "$cb" "$cr"
done
curl -s "http://127.0.0.1:$B/$NAME/hello" -o /dev/null
say "logs in $ROOT"
