#!/usr/bin/env bash
# One command for the whole benchmark: installs what is missing, builds, runs, prints the table.
#   bash bench/run.sh                  # direct, nginx, ptth (h1 pool, h2 x1, h2 x2), rathole, bore; 3 rounds of 5 s runs
#   ROUNDS=5 PATHS="direct nginx ptth" bash bench/run.sh
# Installs: wrk and nginx-light (Debian, needs root), bore-cli 0.6.0 and rathole 0.5.0
# (crates.io, into $BENCH_ROOT/cargo; the first build takes a few minutes). A peer that fails
# to install is skipped with a message. All traffic stays on 127.0.0.1.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
export BENCH_ROOT="${BENCH_ROOT:-/tmp/ptth-bench}"
mkdir -p "$BENCH_ROOT/logs"
say() { printf '[bench] %s\n' "$*" >&2; }

need=()
command -v wrk >/dev/null || need+=(wrk)
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null || need+=(nginx-light)
if [ ${#need[@]} -gt 0 ]; then
  say "apt-get install ${need[*]}"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -q >"$BENCH_ROOT/logs/apt.log" 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" \
      >>"$BENCH_ROOT/logs/apt.log" 2>&1 || say "apt-get failed: see $BENCH_ROOT/logs/apt.log"
  else
    say "not root: install ${need[*]} yourself"
  fi
fi
command -v wrk >/dev/null || { say "wrk is required"; exit 1; }

PATHS="${PATHS:-direct nginx ptth ptth-h2x1 ptth-h2x2 rathole bore}"
export CARGO_TARGET_DIR_PEERS="$BENCH_ROOT/cargo-target"
if [[ " $PATHS " == *" bore "* ]] && [ ! -x "$BENCH_ROOT/cargo/bin/bore" ]; then
  say "cargo install bore-cli 0.6.0"
  CARGO_TARGET_DIR="$CARGO_TARGET_DIR_PEERS" cargo install -q --root "$BENCH_ROOT/cargo" --locked \
    --version 0.6.0 bore-cli >"$BENCH_ROOT/logs/bore.log" 2>&1 || say "bore install failed (skipped)"
fi
if [[ " $PATHS " == *" rathole "* ]] && [ ! -x "$BENCH_ROOT/cargo/bin/rathole" ]; then
  # rathole's lock file no longer builds with current rustc, so no --locked.
  say "cargo install rathole 0.5.0 (plain TCP transport only)"
  CARGO_TARGET_DIR="$CARGO_TARGET_DIR_PEERS" cargo install -q --root "$BENCH_ROOT/cargo" \
    --version 0.5.0 --no-default-features --features server,client rathole \
    >"$BENCH_ROOT/logs/rathole.log" 2>&1 || say "rathole install failed (skipped)"
fi

say "building ptth and the upstream (release)"
(cd "$REPO" && cargo build --release --quiet --bins --example bench-upstream)
export PATHS
exec python3 "$HERE/bench.py"
