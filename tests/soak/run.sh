#!/usr/bin/env bash
# The soak and chaos run (issue 15): thousands of parked agent connections, agents and the relay
# killed under load, a hostile flood beside normal traffic, 1 GiB bodies, and every response of
# every scenario checked against what the upstream sent. Each scenario prints its figures and a
# verdict; the run exits 1 if anything was lost or mixed up.
#
#   bash tests/soak/run.sh [BIN_DIR]                 full run, about 5 minutes (target/release)
#   SOAK=short bash tests/soak/run.sh target/debug    the CI form, about 60 s, smaller counts
#
# BIN_DIR holds ptth-serve, ptth-connect and examples/soak (build with
# `cargo build --release --bins --examples`). Traffic stays on loopback: as root the run makes
# its own network namespace (its own loopback, port range, accept queues and TCP counters, so
# the dial and overflow counts are the run's alone); otherwise it uses the host's 127.0.0.1
# and says which figures it cannot take. It raises its file-descriptor limit (`ulimit -n`) and
# prints the limit it got. Every load loop is bounded in count and time.
#
# Drivers (examples/soak.rs): `soak upstream` signs every body (x-soak-id, -len, -sha256);
# `soak load` checks every response against the pattern of its request id; `soak loris`,
# `soak flood`, `soak big`, `soak wait-parked`.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
MODE="${SOAK:-full}"
BIN="$(cd "${1:-$ROOT/target/$([ "$MODE" = short ] && echo debug || echo release)}" && pwd)"
SOAK_BIN="$BIN/examples/soak"
say() { printf 'soak: %s\n' "$*"; }
for b in "$BIN/ptth-serve" "$BIN/ptth-connect" "$SOAK_BIN"; do
  [ -x "$b" ] || { say "FAILED: $b missing: build first (cargo build --release --bins --examples)"; exit 1; }
done

# ---- the network namespace: the outer run makes it, runs itself inside, and removes it ------
if [ -z "${SOAK_INSIDE:-}" ]; then
  if [ "$(id -u)" = 0 ] && command -v ip >/dev/null && ip netns add "soak$$" 2>/dev/null; then
    NS="soak$$"
    cleanup_ns() {
      ip netns pids "$NS" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
      ip netns del "$NS" 2>/dev/null || true
    }
    trap cleanup_ns EXIT
    ip -n "$NS" link set lo up
    # Per-namespace TCP settings: a port range for 20,000+ loopback connections, and the
    # kernel's accept-queue cap above the relay's own (the relay's listen backlog is what the
    # storm measures).
    ip netns exec "$NS" sysctl -qw net.ipv4.ip_local_port_range="1024 65000"
    ip netns exec "$NS" sysctl -qw net.core.somaxconn=65535
    ip netns exec "$NS" sysctl -qw net.ipv4.tcp_max_syn_backlog=65535
    say "running in network namespace $NS (own loopback and TCP counters)"
    set +e
    ip netns exec "$NS" env SOAK_INSIDE="$NS" bash "$0" "$BIN"
    rc=$?
    set -e
    exit $rc
  fi
  say "not root or no 'ip netns': running on the host's 127.0.0.1 (dial rates and accept-queue overflows are host-wide, so not judged)"
  SOAK_INSIDE=host
fi

# ---- counts ---------------------------------------------------------------------------------
if [ "$MODE" = short ]; then
  NAMES=100 PER_AGENT=10 LOAD_S=5 S3_S=10 S3_EVERY=2 FLOOD_BASE_S=4 LORIS=500 OVERSIZE=100 \
    GARBAGE=100 OFFERS_PER_S=200 OFFER_S=4 BIG_BYTES=$((64 << 20)) DRAIN_S=5 OUTAGE_S=2
else
  NAMES=1000 PER_AGENT=10 LOAD_S=20 S3_S=30 S3_EVERY=3 FLOOD_BASE_S=10 LORIS=5000 OVERSIZE=1000 \
    GARBAGE=1000 OFFERS_PER_S=1000 OFFER_S=10 BIG_BYTES=$((1 << 30)) DRAIN_S=10 OUTAGE_S=4
fi
PARKED=$((NAMES * PER_AGENT))
# Each agent's pool grows while requests are in flight: capped a little above its idle count,
# so that every process of the run stays within its file-descriptor limit (the relay holds one
# per agent connection). The relay's --max-agents has room for every agent at its cap.
PER_AGENT_MAX=$((PER_AGENT + 4))
MAX_AGENTS=$((NAMES * PER_AGENT_MAX + 200))
HEAD_TIMEOUT_S=5          # --head-timeout: slow-loris heads are cut after this
DRAIN_TIMEOUT_S=15        # --drain-timeout of the relay in scenario 4
STORM_BOUND_S=15          # scenario 2: 99% parked again within this after the restart
RSS_BOUND_BIG_MIB=64      # scenario 6: relay and agent RSS may grow at most this over their start
TOKEN="soak-$RANDOM$RANDOM"

if [ "$SOAK_INSIDE" = host ]; then
  P0=$((20000 + $$ % 20000))
else
  P0=8000
fi
UP_ADDR="127.0.0.1:$((P0 + 1))"
AGENT_ADDR="127.0.0.1:$((P0 + 2))"   # the relay listener the agents dial
PUBLIC_ADDR="127.0.0.1:$((P0 + 3))"  # the relay listener the public uses (same server, 2nd port)
ADMIN_ADDR="127.0.0.1:$((P0 + 4))"
PUBLIC="http://$PUBLIC_ADDR"

# ---- limits ---------------------------------------------------------------------------------
WANT_FD=$((PARKED * 3 + LORIS * 2 + 20000))
ulimit -Hn "$WANT_FD" 2>/dev/null || true
ulimit -n "$WANT_FD" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
say "mode $MODE: $NAMES names x $PER_AGENT connections = $PARKED parked; file-descriptor limit raised to $(ulimit -n) (wanted $WANT_FD)"

WORK="$(mktemp -d /tmp/ptth-soak.XXXXXX)"
RESULTS="$WORK/results"
: >"$RESULTS"
PIDS=()
AGENT_PIDS=()
S3_PIDS=()
cleanup() {
  set +e
  for pid in "${PIDS[@]}" "${AGENT_PIDS[@]}" "${S3_PIDS[@]}" ${RELAY_PID:-} ${BIG_AGENT_PID:-}; do
    kill -KILL "$pid" 2>/dev/null
  done
  wait 2>/dev/null
  if [ "${KEEP_LOGS:-0}" = 1 ]; then say "logs kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'say "FAILED: interrupted"; exit 1' INT TERM

rss_kb() { awk '/^VmRSS/ {print $2; f=1} END {if (!f) print 0}' "/proc/$1/status" 2>/dev/null || echo 0; }
cpu_ticks() { # cpu_ticks PID...: user + system CPU ticks of them all, in one read
  (cd /proc && awk '{n += $14 + $15} END {print n + 0}' $(printf '%s/stat ' "$@") 2>/dev/null) || echo 0
}
tcp_counter() { # tcp_counter FILE SECTION FIELD: a named counter from /proc/net/snmp or netstat
  awk -v s="$2" -v f="$3" '$1 == s":" { if (!n) { for (i = 2; i <= NF; i++) h[i] = $i; n = 1 } else for (i = 2; i <= NF; i++) if (h[i] == f) print $i }' "$1"
}
figure() { # figure KEY VALUE: one line of the table
  printf '%s=%s\n' "$1" "$2" >>"$RESULTS"
  printf 'soak:   %-34s %s\n' "$1" "$2"
}
verdict() { # verdict SCENARIO PASS|FAIL [why]
  printf 'verdict.%s=%s\n' "$1" "$2${3:+ ($3)}" >>"$RESULTS"
  say "== $1: $2${3:+ ($3)}"
}
get() { grep -m1 "^$1=" "$2" | cut -d= -f2-; }
load_start() { # load_start OUTFILE ARGS...: soak load in the background; sets LOAD_PID
  local out="$1"; shift
  "$SOAK_BIN" load --base "$PUBLIC" "$@" >"$out" 2>>"$WORK/load.err" &
  LOAD_PID=$!
}
load_end() { # load_end OUTFILE PID: wait for it, show and keep its lines; its status
  local rc=0
  wait "$2" || rc=$?
  sed 's/^/soak:   /' "$1"
  cat "$1" >>"$RESULTS"
  return $rc
}
load() { # load OUTFILE ARGS...: one soak load, to its end
  load_start "$@"
  load_end "$1" "$LOAD_PID"
}
rss_sampler() { # rss_sampler PID OUTFILE: peak RSS (KiB) of PID while the file $WORK/sampling exists
  local peak=0 r
  while [ -e "$WORK/sampling" ] && [ -e "/proc/$1" ]; do
    r=$(rss_kb "$1"); [ "$r" -gt "$peak" ] && peak=$r
    echo "$peak" >"$2"
    sleep 0.2
  done
}

start_relay() {
  "$BIN/ptth-serve" --listen "$AGENT_ADDR" --listen "$PUBLIC_ADDR" --admin "$ADMIN_ADDR" \
    --tokens "$WORK/tokens" --max-agents "$MAX_AGENTS" --max-per-ip "$MAX_AGENTS" \
    --head-timeout "${HEAD_TIMEOUT_S}s" --drain-timeout "${DRAIN_TIMEOUT_S}s" \
    >>"$WORK/relay.log" 2>&1 &
  RELAY_PID=$!
  local i
  for i in $(seq 200); do
    "$SOAK_BIN" wait-parked --admin "$ADMIN_ADDR" --at-least 0 --timeout-s 0 >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  say "FAILED: the relay did not start"; tail -n 20 "$WORK/relay.log"; exit 1
}
start_agent() { # start_agent NAME CONNECTIONS MAX: prints nothing, sets LAST_PID
  PTTH_TOKEN="$TOKEN" RUST_LOG=warn "$BIN/ptth-connect" "http://$AGENT_ADDR/$1" \
    --to "http://$UP_ADDR" --connections "$2" --max-connections "$3" >>"$WORK/agents.log" 2>&1 &
  LAST_PID=$!
}
wait_parked() { # wait_parked COUNT TIMEOUT_S OUTFILE
  set +e
  "$SOAK_BIN" wait-parked --admin "$ADMIN_ADDR" --at-least "$1" --timeout-s "$2" >"$3"
  local rc=$?
  set -e
  return $rc
}

printf '* %s\n' "$TOKEN" >"$WORK/tokens"
"$SOAK_BIN" upstream "$UP_ADDR" --threads 1 >>"$WORK/upstream.log" 2>&1 &
PIDS+=($!)
start_relay
FAILED=0

# ---- 1. scale -------------------------------------------------------------------------------
say "== 1. scale: $NAMES agents (ptth-connect processes) x $PER_AGENT parked connections"
rss0=$(rss_kb "$RELAY_PID")
t0=$(date +%s%N)
for i in $(seq 0 $((NAMES - 1))); do
  start_agent "n$i" "$PER_AGENT" "$PER_AGENT_MAX"
  AGENT_PIDS+=("$LAST_PID")
done
wait_parked "$PARKED" 120 "$WORK/s1.park" || true
t1=$(date +%s%N)
parked=$(get parked "$WORK/s1.park")
rss1=$(rss_kb "$RELAY_PID")
agent_rss=0
for pid in "${AGENT_PIDS[@]}"; do agent_rss=$((agent_rss + $(rss_kb "$pid"))); done
figure s1.parked "$parked of $PARKED"
figure s1.time_to_all_parked_s "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", (b - a) / 1e9}') (starting $NAMES processes included)"
figure s1.relay_rss_mib "$(awk -v r="$rss1" 'BEGIN {printf "%.1f", r / 1024}') (idle $(awk -v r="$rss0" 'BEGIN {printf "%.1f", r / 1024}'))"
figure s1.relay_kib_per_parked "$(awk -v a="$rss0" -v b="$rss1" -v n="$parked" 'BEGIN {printf "%.1f", (b - a) / (n > 0 ? n : 1)}')"
figure s1.agent_rss_mib_each "$(awk -v r="$agent_rss" -v n="$NAMES" 'BEGIN {printf "%.1f", r / n / 1024}')"
figure s1.relay_fds "$(ls /proc/"$RELAY_PID"/fd | wc -l)"
s1_ok=1
[ "$parked" = "$PARKED" ] || s1_ok=0
load "$WORK/s1.load" --label s1 --names n --name-count "$NAMES" --conns 64 --duration-s "$LOAD_S" || s1_ok=0
if [ $s1_ok = 1 ]; then verdict s1 PASS; else verdict s1 FAIL "parked $parked of $PARKED, or load lost requests"; FAILED=1; fi

# ---- 3. agents dying under load --------------------------------------------------------------
say "== 3. agents dying under load: 4 agents on s3, c64 for ${S3_S}s, one SIGKILLed and restarted every ${S3_EVERY}s"
for k in 0 1 2 3; do start_agent s3 16 64; S3_PIDS+=("$LAST_PID"); done
s3_ok=1
wait_parked $((PARKED + 64)) 30 "$WORK/s3.park" || { s3_ok=0; say "the s3 agents did not park: $(get parked "$WORK/s3.park")"; }
# 64 KiB in 8 frames 10 ms apart: each response is in flight for about 70 ms.
load_start "$WORK/s3.load" --label s3 --names s3 --conns 64 --duration-s "$S3_S" --sizes 65536 \
  --frame 8192 --gap-ms 10 --allow 502,503 --allow-cut
S3_LOAD=$LOAD_PID
kills=0
end=$((SECONDS + S3_S - S3_EVERY))
while [ $SECONDS -lt $end ]; do
  sleep "$S3_EVERY"
  k=$((kills % 4))
  kill -KILL "${S3_PIDS[$k]}" 2>/dev/null || true
  wait "${S3_PIDS[$k]}" 2>/dev/null || true
  start_agent s3 16 64
  S3_PIDS[$k]=$LAST_PID
  kills=$((kills + 1))
done
load_end "$WORK/s3.load" "$S3_LOAD" || s3_ok=0
figure s3.agent_kills "$kills"
lost=$(( $(get s3.s502 "$WORK/s3.load") + $(get s3.cut "$WORK/s3.load") ))
figure s3.502_plus_cut "$lost (at most $((kills * 64)): 64 in flight per kill)"
[ "$lost" -le $((kills * 64)) ] || s3_ok=0
if [ $s3_ok = 1 ]; then verdict s3 PASS; else verdict s3 FAIL; FAILED=1; fi

# ---- 5 and 6. hostile flood beside normal traffic, and long bodies during it ---------------
say "== 5. hostile flood: baseline traffic first, then the same beside the flood; 6. long bodies during it"
start_agent big 2 4
BIG_AGENT_PID=$LAST_PID
s6_ok=1
wait_parked $((PARKED + 64 + 2)) 30 "$WORK/s6.park" || { s6_ok=0; say "the big agent did not park: $(get parked "$WORK/s6.park")"; }
load "$WORK/s5a.load" --label s5_baseline --names n --name-count "$NAMES" --conns 16 \
  --duration-s "$FLOOD_BASE_S" || { FAILED=1; }
relay_rss_start=$(rss_kb "$RELAY_PID")
overflow_f0=$(tcp_counter /proc/net/netstat TcpExt ListenOverflows)
big_rss_start=$(rss_kb "$BIG_AGENT_PID")
touch "$WORK/sampling"
rss_sampler "$RELAY_PID" "$WORK/relay.peak" &
SAMPLERS=($!)
rss_sampler "$BIG_AGENT_PID" "$WORK/big.peak" &
SAMPLERS+=($!)
flood_s=$((HEAD_TIMEOUT_S + 8))
"$SOAK_BIN" loris --addr "$PUBLIC_ADDR" --count "$LORIS" --duration-s "$flood_s" \
  --limit-s $((HEAD_TIMEOUT_S * 2)) >"$WORK/loris.out" 2>&1 &
LORIS_PID=$!
"$SOAK_BIN" flood --addrs "$PUBLIC_ADDR,$AGENT_ADDR" --oversize "$OVERSIZE" --garbage "$GARBAGE" \
  --offers-per-s "$OFFERS_PER_S" --duration-s "$OFFER_S" >"$WORK/flood.out" 2>&1 &
FLOOD_PID=$!
"$SOAK_BIN" big --base "$PUBLIC" --name big --bytes "$BIG_BYTES" >"$WORK/big.out" 2>&1 &
BIG_PID=$!
s5_ok=1
load "$WORK/s5b.load" --label s5_flood --names n --name-count "$NAMES" --conns 16 \
  --duration-s "$flood_s" || s5_ok=0
wait $LORIS_PID || s5_ok=0
wait $FLOOD_PID || s5_ok=0
wait $BIG_PID || s6_ok=0
rm -f "$WORK/sampling"
wait "${SAMPLERS[@]}"
for f in loris flood big; do sed 's/^/soak:   /' "$WORK/$f.out"; cat "$WORK/$f.out" >>"$RESULTS"; done
kill -0 "$RELAY_PID" 2>/dev/null || { s5_ok=0; say "the relay died"; }
[ "$SOAK_INSIDE" = host ] || figure s5.listen_overflows "$(( $(tcp_counter /proc/net/netstat TcpExt ListenOverflows) - overflow_f0 ))"
relay_peak=$(cat "$WORK/relay.peak" 2>/dev/null || echo 0)
big_peak=$(cat "$WORK/big.peak" 2>/dev/null || echo 0)
figure s5.p99_ms_without_with "$(get s5_baseline.p99_ms "$WORK/s5a.load") / $(get s5_flood.p99_ms "$WORK/s5b.load")"
figure s5.errors_without_with "$(( $(get s5_baseline.requests "$WORK/s5a.load") - $(get s5_baseline.ok "$WORK/s5a.load") )) / $(( $(get s5_flood.requests "$WORK/s5b.load") - $(get s5_flood.ok "$WORK/s5b.load") ))"
figure s5.relay_rss_mib_start_peak "$((relay_rss_start / 1024)) / $((relay_peak / 1024))"
figure s6.big_agent_rss_mib_start_peak "$((big_rss_start / 1024)) / $((big_peak / 1024))"
if [ $s5_ok = 1 ]; then verdict s5 PASS; else verdict s5 FAIL; FAILED=1; fi
grow_relay=$(( (relay_peak - relay_rss_start) / 1024 ))
grow_agent=$(( (big_peak - big_rss_start) / 1024 ))
# The relay's growth includes the flood's 5,000 loris connections; the bound is the flood's
# per-connection cost (at most 16 KiB each, the head limit) plus the long bodies' bound.
relay_bound=$(( RSS_BOUND_BIG_MIB + (LORIS + OVERSIZE) * 16 / 1024 ))
figure s6.rss_growth_mib_relay_agent "$grow_relay (bound $relay_bound) / $grow_agent (bound $RSS_BOUND_BIG_MIB)"
[ "$grow_relay" -le "$relay_bound" ] || s6_ok=0
[ "$grow_agent" -le "$RSS_BOUND_BIG_MIB" ] || s6_ok=0
if [ $s6_ok = 1 ]; then verdict s6 PASS; else verdict s6 FAIL; FAILED=1; fi

# ---- 2. reconnect storm after SIGKILL -------------------------------------------------------
say "== 2. reconnect storm: the relay is SIGKILLed with $PARKED parked connections, down $((OUTAGE_S + 1)) s, restarted"
kill -KILL "${S3_PIDS[@]}" "$BIG_AGENT_PID" 2>/dev/null || true
wait "${S3_PIDS[@]}" "$BIG_AGENT_PID" 2>/dev/null || true
S3_PIDS=() BIG_AGENT_PID=
all=$PARKED
opens0=$(tcp_counter /proc/net/snmp Tcp ActiveOpens)
kill -KILL "$RELAY_PID"; wait "$RELAY_PID" 2>/dev/null || true
t_kill=$(date +%s%N)
# The first second holds each agent's redial of the connections it just lost (refused at
# once); after it, the backoff's outage probes alone.
sleep 1
opens_burst=$(tcp_counter /proc/net/snmp Tcp ActiveOpens)
t_burst=$(date +%s%N)
sleep "$OUTAGE_S"
opens1=$(tcp_counter /proc/net/snmp Tcp ActiveOpens)
overflow0=$(tcp_counter /proc/net/netstat TcpExt ListenOverflows)
agent_cpu0=$(cpu_ticks "${AGENT_PIDS[@]}")
t_start=$(date +%s%N)
start_relay
relay_cpu0=$(cpu_ticks "$RELAY_PID")
touch "$WORK/sampling"
( peak=0; while [ -e "$WORK/sampling" ]; do
    q=$(ss -Hltn "sport = :${AGENT_ADDR##*:}" | awk '{print $2; exit}'); q=${q:-0}
    [ "$q" -gt "$peak" ] && peak=$q; echo "$peak" >"$WORK/queue.peak"; sleep 0.05
  done ) &
QUEUE_SAMPLER=$!
s2_ok=1
wait_parked $(( all * 99 / 100 )) 60 "$WORK/s2.park99" || s2_ok=0
t99=$(date +%s%N)
wait_parked "$all" 60 "$WORK/s2.park100" || true
t100=$(date +%s%N)
rm -f "$WORK/sampling"; wait "$QUEUE_SAMPLER"
relay_cpu1=$(cpu_ticks "$RELAY_PID")
agent_cpu1=$(cpu_ticks "${AGENT_PIDS[@]}")
opens2=$(tcp_counter /proc/net/snmp Tcp ActiveOpens)
overflow1=$(tcp_counter /proc/net/netstat TcpExt ListenOverflows)
hz=$(getconf CLK_TCK)
storm_s=$(awk -v a="$t_start" -v b="$t100" 'BEGIN {printf "%.2f", (b - a) / 1e9}')
down_s=$(awk -v a="$t_burst" -v b="$t_start" 'BEGIN {printf "%.2f", (b - a) / 1e9}')
t99_s=$(awk -v a="$t_start" -v b="$t99" 'BEGIN {printf "%.2f", (b - a) / 1e9}')
awk -v t="$t99_s" -v b="$STORM_BOUND_S" 'BEGIN {exit !(t <= b)}' || { s2_ok=0; say "99% parked only after ${t99_s}s (bound ${STORM_BOUND_S}s)"; }
figure s2.time_to_99pct_s "$t99_s (bound ${STORM_BOUND_S}s)"
figure s2.parked_each_second "$(get parked_timeline "$WORK/s2.park99")"
figure s2.time_to_100pct_s "$storm_s ($(get parked "$WORK/s2.park100") of $all)"
figure s2.accept_queue_peak "$(cat "$WORK/queue.peak" 2>/dev/null || echo '?') (listen backlog $(ss -Hltn "sport = :${AGENT_ADDR##*:}" 2>/dev/null | awk '{print $3; exit}'))"
figure s2.relay_cpu_during_storm "$(awk -v c=$((relay_cpu1 - relay_cpu0)) -v h="$hz" -v s="$storm_s" 'BEGIN {printf "%.0f%% of a core", 100 * c / h / s}')"
figure s2.agents_cpu_during_storm "$(awk -v c=$((agent_cpu1 - agent_cpu0)) -v h="$hz" -v s="$storm_s" 'BEGIN {printf "%.2f s in all", c / h}')"
if [ "$SOAK_INSIDE" != host ]; then
  burst=$(awk -v o=$((opens_burst - opens0)) -v n="$NAMES" 'BEGIN {printf "%.1f", o / n}')
  down_rate=$(awk -v o=$((opens1 - opens_burst)) -v n="$NAMES" -v s="$down_s" 'BEGIN {printf "%.2f", o / n / s}')
  figure s2.dials_per_agent_first_s "$burst (its $PER_AGENT lost connections redialled, refused)"
  figure s2.dials_per_agent_per_s_down "$down_rate (over the next ${down_s}s; backoff: one probe per 0.5-1 s)"
  awk -v b="$burst" -v n="$PER_AGENT" 'BEGIN {exit !(b <= n + 3)}' || { s2_ok=0; say "an agent redials more than it lost"; }
  figure s2.dials_per_agent_storm "$(awk -v o=$((opens2 - opens1)) -v n="$NAMES" 'BEGIN {printf "%.1f", o / n}') (each agent redials its $PER_AGENT connections)"
  figure s2.listen_overflows "$((overflow1 - overflow0))"
  awk -v r="$down_rate" 'BEGIN {exit !(r <= 2.5)}' || { s2_ok=0; say "an agent dials faster than its backoff"; }
fi
load "$WORK/s2.load" --label s2 --names n --name-count "$NAMES" --conns 64 --duration-s "$LOAD_S" || s2_ok=0
if [ $s2_ok = 1 ]; then verdict s2 PASS; else verdict s2 FAIL; FAILED=1; fi

# ---- 4. relay SIGTERM under load ------------------------------------------------------------
say "== 4. relay restart under load: SIGTERM with slow responses in flight (drain timeout ${DRAIN_TIMEOUT_S}s)"
# Frames of 4 KiB 100 ms apart: responses take 0.4 s, 1.6 s or 3.2 s, so whenever the
# SIGTERM comes, many are in flight at every stage. While the relay is down, connections are
# refused; the restarted relay knows no name until its agent is back (404) and holds none.
load_start "$WORK/s4.load" --label s4 --names n --name-count "$NAMES" --conns 64 \
  --duration-s $((DRAIN_S + 12)) --sizes 16384,65536,131072 --frame 4096 --gap-ms 100 \
  --echo-percent 0 --allow 404,503 --allow-conn-errors
S4_LOAD=$LOAD_PID
sleep 4
s4_ok=1
kill -USR1 "$S4_LOAD"
kill -TERM "$RELAY_PID"
t_term=$(date +%s%N)
wait "$RELAY_PID"; relay_rc=$?
t_exit=$(date +%s%N)
drain=$(awk -v a="$t_term" -v b="$t_exit" 'BEGIN {printf "%.2f", (b - a) / 1e9}')
figure s4.relay_exit "status $relay_rc after ${drain}s (drain timeout ${DRAIN_TIMEOUT_S}s)"
start_relay
wait_parked $(( all * 99 / 100 )) 60 "$WORK/s4.park" || s4_ok=0
figure s4.agents_back_99pct_s "$(awk -v a="$t_exit" -v b="$(date +%s%N)" 'BEGIN {printf "%.2f", (b - a) / 1e9}')"
load_end "$WORK/s4.load" "$S4_LOAD" || s4_ok=0
figure s4.refused_404_503_while_back "$(get s4.conn_err "$WORK/s4.load") / $(grep -o '404:[0-9]*' "$WORK/s4.load" | cut -d: -f2 || echo 0) / $(get s4.s503 "$WORK/s4.load")"
figure s4.in_flight_completed_cut "$(get s4.mark_in_flight "$WORK/s4.load") / $(get s4.mark_completed "$WORK/s4.load") / $(get s4.mark_cut "$WORK/s4.load")"
[ "$(get s4.mark_cut "$WORK/s4.load")" = 0 ] || s4_ok=0
[ "$relay_rc" = 0 ] || s4_ok=0
if [ $s4_ok = 1 ]; then verdict s4 PASS; else verdict s4 FAIL; FAILED=1; fi

# ---- 7. body integrity over every scenario --------------------------------------------------
checked=$(grep -h '\.requests=' "$RESULTS" | cut -d= -f2 | awk '{n += $1} END {print n + 0}')
bad=$(grep -h '\.integrity=' "$RESULTS" | cut -d= -f2 | awk '{n += $1} END {print n + 0}')
figure s7.responses_checked "$checked"
figure s7.mixed_or_truncated_reported_ok "$bad"
if [ "$bad" = 0 ]; then verdict s7 PASS; else verdict s7 FAIL; FAILED=1; grep -h integrity_example "$RESULTS"; fi
kill -0 "$RELAY_PID" 2>/dev/null || { FAILED=1; say "the relay is gone"; }

echo
say "figures, as a Markdown table:"
echo "| figure | value |"
echo "|---|---|"
grep -v '^verdict\.' "$RESULTS" | grep -E '^s[0-9]\.[a-z0-9_]+=' | grep -v '^s[0-9]\.\(requests\|ok\|rps\|p50_ms\|p99_ms\|max_ms\|status_other\|s50[234]\|cut\|conn_err\|timeout\|integrity\|stuck_workers\|verdict\|mark_[a-z_]*\)=' \
  | sed 's/=/ | /; s/^/| /; s/$/ |/'
echo
say "summary ($MODE, $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')):"
grep '^verdict\.' "$RESULTS" | sed 's/^verdict\./soak:   /'
if [ $FAILED = 0 ]; then say PASSED; else say FAILED; exit 1; fi
