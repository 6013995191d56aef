#!/usr/bin/env bash
# Build every fuzz target with nightly and run each for a short smoke period.
#
#   fuzz/smoke.sh [SECONDS_PER_TARGET]     (default 10)
#
# Each target runs on fuzz/corpus/<target>/ (git-ignored), topped up with fuzz/seeds/<target> and
# fuzz/regressions/<target>, and uses fuzz/ptth.dict. One fuzzer at a time, in one
# process (no -jobs/-workers: with them libFuzzer forks and logs to fuzz-N.log instead).
# Exits 0 with a printed reason when nightly is unavailable (the step is skipped, not failed).
set -euo pipefail

secs="${1:-10}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz smoke: SKIPPED: no nightly toolchain (cargo +nightly is unavailable)"
    exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz smoke: installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

cargo +nightly fuzz build -O
targets=$(cargo +nightly fuzz list)

for t in $targets; do
    corpus="corpus/$t"
    mkdir -p "$corpus"
    cp -f seeds/"$t"/* "$corpus"/ 2>/dev/null || true
    if [ -d "regressions/$t" ]; then
        cp -f regressions/"$t"/* "$corpus"/ 2>/dev/null || true
    fi
    echo "fuzz smoke: $t for ${secs}s"
    log="$(mktemp)"
    if ! cargo +nightly fuzz run -O "$t" "$corpus" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 \
        -dict=ptth.dict -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log"
        rm -f "$log"
        echo "fuzz smoke: $t FAILED (the input is in fuzz/artifacts/$t/)"
        exit 1
    fi
    grep -E '^(stat::number_of_executed_units|stat::average_exec_per_sec|#[0-9]+[[:space:]]+DONE)' "$log" || true
    rm -f "$log"
done
echo "fuzz smoke: all targets ran clean"
