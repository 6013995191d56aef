#!/usr/bin/env bash
# Compare two trees on the ptth path, in one run: CPU per request of the relay and the agent
# (utime+stime from /proc/PID/stat over the wrk run, divided by the requests wrk made) and req/s.
#
#   bash bench/cmp.sh BASE_TREE [CURRENT_TREE]      (CURRENT_TREE defaults to this checkout)
#
# Each tree is built with `cargo build --release --bins --example bench-upstream` (in its own
# target/). One upstream (the current tree's bench-upstream), then for each tree in turn:
# ptth-serve + ptth-connect on 127.0.0.1, wrk keep-alive GET 13 B at c1 and c64 and GET 64 KiB
# at c8 for DURATION seconds each (default 10), ROUNDS times (default 2), alternating the trees
# so that machine drift hits both. At c1 every request wakes each process from sleep, so its
# CPU per request is about three times c64's and shows the user-space work run cold (BENCHMARKS,
# session 27). Needs wrk. Everything stays on 127.0.0.1.
#
# PROFILE_DIR=DIR adds the relay's profile of each tree, after the rounds, on GET 13 B at c64:
# one run under `strace -c -f` (syscalls per request: calls / wrk's requests; strace slows the
# relay, so only the counts mean anything) and one under `perf record -g` (DIR/LABEL.perf.txt:
# the kernel/user split and the top symbols). Needs strace and perf.
set -euo pipefail

BASE=${1:?usage: bench/cmp.sh BASE_TREE [CURRENT_TREE]}
CUR=${2:-$(cd "$(dirname "$0")/.." && pwd)}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-2}
UP_PORT=${UP_PORT:-18480}
RELAY_PORT=${RELAY_PORT:-18481}
NAME=bench
BENCH_NAME=cmp.sh
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

command -v wrk >/dev/null || { say "wrk is required (apt-get install wrk)"; exit 1; }
for t in "$BASE" "$CUR"; do
  (cd "$t" && cargo build --release --quiet --bins --example bench-upstream)
done

"$CUR/target/release/examples/bench-upstream" "127.0.0.1:$UP_PORT" >/dev/null 2>&1 &
PIDS+=($!)
wait_port "$UP_PORT"

# run TREE LABEL PATH CONC [ATTACH] -> prints one result line; ATTACH (strace|perf) profiles
# the relay over the measured run (see PROFILE_DIR above).
run() {
  local tree=$1 label=$2 path=$3 conc=$4 attach=${5:-}
  "$tree/target/release/ptth-serve" --listen "127.0.0.1:$RELAY_PORT" >/dev/null 2>&1 &
  local relay=$!
  PIDS+=("$relay")
  wait_port "$RELAY_PORT"
  "$tree/target/release/ptth-connect" "http://127.0.0.1:$RELAY_PORT/$NAME" \
    --to "http://127.0.0.1:$UP_PORT" >/dev/null 2>&1 &
  local agent=$!
  PIDS+=("$agent")
  local url="http://127.0.0.1:$RELAY_PORT/$NAME/$path"
  # wrk wants at least one connection per thread.
  local threads=$(( conc < 2 ? 1 : 2 ))
  wait_answer "$url" 10 || true
  # Warm up (the agent's pool grows to the concurrency), then measure.
  wrk -t"$threads" -c"$conc" -d2s "$url" >/dev/null 2>&1
  local r0 a0 r1 a1 out
  local prof=""
  case "$attach" in
    strace) strace -c -f -q -o "$PROFILE_DIR/$label.strace" -p "$relay" & prof=$! ;;
    perf) perf record -q -g -o "$PROFILE_DIR/$label.perf.data" -p "$relay" >/dev/null 2>&1 & prof=$! ;;
  esac
  [ -n "$prof" ] && sleep 0.5
  r0=$(ticks "$relay"); a0=$(ticks "$agent")
  out=$(wrk -t"$threads" -c"$conc" -d"${DURATION}s" "$url")
  r1=$(ticks "$relay"); a1=$(ticks "$agent")
  if [ -n "$prof" ]; then
    kill -INT "$prof" 2>/dev/null || true
    wait "$prof" 2>/dev/null || true
  fi
  local reqs rps
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  case "$attach" in
    strace)
      echo "$label relay syscalls per request (strace -c -f, $reqs requests):"
      awk -v n="$reqs" '$1 ~ /^[0-9.]+$/ && NF >= 5 { printf "  %-16s %6.2f\n", $NF, $4 / n }' \
        "$PROFILE_DIR/$label.strace" | sort -k2 -rn | head -8
      ;;
    perf)
      {
        echo "# $label relay, perf record -g, GET 13 B c$conc, $reqs requests"
        perf report -i "$PROFILE_DIR/$label.perf.data" --stdio --no-children --sort dso -g none 2>/dev/null \
          | grep -v '^#' | grep '%' | head -8
        echo
        perf report -i "$PROFILE_DIR/$label.perf.data" --stdio --no-children --sort dso,sym -g none \
          --percent-limit 0.3 2>/dev/null | grep -v '^#' | grep '%' | head -40
      } >"$PROFILE_DIR/$label.perf.txt"
      echo "$label relay profile: $PROFILE_DIR/$label.perf.txt"
      sed -n 2,5p "$PROFILE_DIR/$label.perf.txt"
      ;;
  esac
  kill "$agent" "$relay" 2>/dev/null || true
  wait "$agent" "$relay" 2>/dev/null || true
  awk -v l="$label" -v p="$path" -v c="$conc" -v n="$reqs" -v rps="$rps" -v hz="$HZ" \
    -v r="$((r1 - r0))" -v a="$((a1 - a0))" 'BEGIN {
      printf "%-8s %-6s c%-3s %10.0f req/s   relay %6.1f us/req   agent %6.1f us/req   both %6.1f\n",
        l, p, c, rps, r * 1e6 / hz / n, a * 1e6 / hz / n, (r + a) * 1e6 / hz / n }'
}

echo "base:    $BASE ($(git -C "$BASE" rev-parse --short HEAD))"
echo "current: $CUR ($(git -C "$CUR" rev-parse --short HEAD)$(git -C "$CUR" diff --quiet || echo ' + changes'))"
echo "wrk ${DURATION}s per cell, $ROUNDS rounds; CPU = utime+stime of each process over the run"
for round in $(seq 1 "$ROUNDS"); do
  echo "-- round $round"
  for cell in "hello 1" "hello 64" "64k 8"; do
    set -- $cell
    run "$BASE" base "$1" "$2"
    run "$CUR" current "$1" "$2"
  done
done
if [ -n "${PROFILE_DIR:-}" ]; then
  mkdir -p "$PROFILE_DIR"
  echo "-- relay profiles (GET 13 B c64)"
  for attach in strace perf; do
    run "$BASE" base hello 64 "$attach"
    run "$CUR" current hello 64 "$attach"
  done
fi
