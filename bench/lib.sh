# What the bench scripts share (cmp.sh, callgrind.sh, fleet.sh): sourced, after the script sets
# BENCH_NAME (its name in messages). Everything stays on 127.0.0.1.
#
#   REPO, BENCH_ROOT  the checkout, and the runs' scratch directory (default /tmp/ptth-bench)
#   PIDS              the processes the script started: `PIDS+=($!)`; killed (by PID) on exit
#   say MSG           MSG on stderr, as `[BENCH_NAME] MSG`
#   wait_port PORT    until 127.0.0.1:PORT accepts a connection, at most 10 s; else exit 1
#   wait_answer URL [SECONDS]
#                     until URL answers 200, at most SECONDS (default 60: valgrind starts
#                     slowly); returns 1 after that
#   ticks PID         PID's utime+stime so far, in clock ticks (HZ of them a second)
#   stop_all          kill every process in PIDS and wait for each (at most 10 s), so that
#                     their ports are free for the next run

BENCH_NAME=${BENCH_NAME:-bench}
# The checkout (bench/..) and the scratch directory of the runs.
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH_ROOT="${BENCH_ROOT:-/tmp/ptth-bench}"
HZ=$(getconf CLK_TCK)
PIDS=()

say() { printf '[%s] %s\n' "$BENCH_NAME" "$*" >&2; }

stop_all() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && timeout 10 tail --pid="$p" -f /dev/null 2>/dev/null || true; done
  PIDS=()
}
trap stop_all EXIT

wait_port() {
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  say "nothing listens on port $1"
  exit 1
}

wait_answer() {
  local tries=$(( ${2:-60} * 10 ))
  for _ in $(seq 1 "$tries"); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$1" 2>/dev/null)" = 200 ] && return 0
    sleep 0.1
  done
  say "no answer from $1"
  return 1
}

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
