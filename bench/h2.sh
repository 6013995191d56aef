#!/usr/bin/env bash
# HTTP/2 inside ptth against the HTTP/1.1 pool, in one run: req/s and CPU per request of the
# relay and the agent (utime+stime from /proc/PID/stat over the wrk run, divided by the requests
# wrk made), through `ptth-serve` and `ptth-connect` on 127.0.0.1.
#
#   bash bench/h2.sh            (DURATION=10 ROUNDS=2 by default)
#
# Three agents, in turn, each round: `h1` (the 2009 protocol, the elastic HTTP/1.1 pool),
# `h2x1` and `h2x2` (`--protocol ptth`, HTTP/2 inside, 1 and 2 connections). Two cells each:
# keep-alive GET 13 B at c64 and GET 64 KiB at c8, wrk -t2. Builds `cargo build --release
# --bins --example bench-upstream` first. Needs wrk (apt-get install wrk) and curl.
set -euo pipefail

TREE=$(cd "$(dirname "$0")/.." && pwd)
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-2}
UP_PORT=${UP_PORT:-18580}
RELAY_PORT=${RELAY_PORT:-18581}
NAME=bench
HZ=$(getconf CLK_TCK)

command -v wrk >/dev/null || { echo "h2.sh: wrk is required (apt-get install wrk)"; exit 1; }
(cd "$TREE" && cargo build --release --quiet --bins --example bench-upstream)
BIN="$TREE/target/release"

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

wait_port() { # port
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "h2.sh: port $1 never opened"; exit 1
}

ticks() { # pid -> utime+stime in clock ticks
  awk '{print $14 + $15}' "/proc/$1/stat"
}

# The agent's arguments for each label.
agent_args() {
  case "$1" in
    h1) echo "" ;;
    h2x1) echo "--protocol ptth --h2-connections 1 --upstream-connections 64" ;;
    h2x2) echo "--protocol ptth --h2-connections 2 --upstream-connections 64" ;;
  esac
}

"$BIN/examples/bench-upstream" "127.0.0.1:$UP_PORT" >/dev/null 2>&1 &
PIDS+=($!)
wait_port "$UP_PORT"

# run LABEL PATH CONC -> prints one result line
run() {
  local label=$1 path=$2 conc=$3
  "$BIN/ptth-serve" --listen "127.0.0.1:$RELAY_PORT" >/dev/null 2>&1 &
  local relay=$!
  PIDS+=("$relay")
  wait_port "$RELAY_PORT"
  # shellcheck disable=SC2046
  "$BIN/ptth-connect" "http://127.0.0.1:$RELAY_PORT/$NAME" --to "http://127.0.0.1:$UP_PORT" \
    --proxy "" $(agent_args "$label") >/dev/null 2>&1 &
  local agent=$!
  PIDS+=("$agent")
  local url="http://127.0.0.1:$RELAY_PORT/$NAME/$path"
  for _ in $(seq 1 200); do
    curl -sf -o /dev/null "$url" && break
    sleep 0.05
  done
  # Warm up (the pools grow to the concurrency, the second h2 connection is up), then measure.
  wrk -t2 -c"$conc" -d2s "$url" >/dev/null 2>&1
  local r0 a0 r1 a1 out reqs rps
  r0=$(ticks "$relay"); a0=$(ticks "$agent")
  out=$(wrk -t2 -c"$conc" -d"${DURATION}s" "$url")
  r1=$(ticks "$relay"); a1=$(ticks "$agent")
  kill "$agent" "$relay" 2>/dev/null || true
  wait "$agent" "$relay" 2>/dev/null || true
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  awk -v l="$label" -v p="$path" -v c="$conc" -v n="$reqs" -v rps="$rps" -v hz="$HZ" \
    -v r="$((r1 - r0))" -v a="$((a1 - a0))" 'BEGIN {
      printf "%-5s %-6s c%-3s %10.0f req/s   relay %6.1f us/req   agent %6.1f us/req   both %6.1f\n",
        l, p, c, rps, r * 1e6 / hz / n, a * 1e6 / hz / n, (r + a) * 1e6 / hz / n }'
}

echo "tree: $TREE ($(git -C "$TREE" rev-parse --short HEAD)$(git -C "$TREE" diff --quiet || echo ' + changes'))"
echo "wrk ${DURATION}s per cell, $ROUNDS rounds; CPU = utime+stime of each process over the run"
for round in $(seq 1 "$ROUNDS"); do
  echo "-- round $round"
  for cell in "hello 64" "64k 8"; do
    set -- $cell
    for label in h1 h2x1 h2x2; do
      run "$label" "$1" "$2"
    done
  done
done
