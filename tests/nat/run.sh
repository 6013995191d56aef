#!/usr/bin/env bash
# End-to-end proof that a host behind a real NAT serves HTTP through the relay.
#
#   tests/nat/run.sh [BIN_DIR]      BIN_DIR holds ptth-serve and ptth-connect (default target/debug)
#
# Five network namespaces, joined by veth pairs, all addresses from documentation/benchmark
# ranges that exist only inside them:
#
#   public 203.0.113.10 ─┐
#   relay 198.51.100.10 ─┼─ wan (the "internet" router) ── 192.0.2.2 router 198.18.0.1 ── home 198.18.0.10
#                        │                                  (masquerades outbound, drops every
#                        └ routes 198.18.0.0/24 to router    inbound connection attempt)
#
# Steps: the home upstream is unreachable from public; the agent in home dials the relay and
# parks; GET, a 10 MB POST echo and a streamed response pass from public through the relay;
# the relay is killed and restarted and the agent heals by itself.
# Exit: 0 passed, 1 failed, 77 skipped (not root, or no `ip netns` / nftables).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
BIN="$(cd "${1:-$ROOT/target/debug}" && pwd)"

UPSTREAM_PORT=3000
RELAY_PORT=8080
RELAY_IP=198.51.100.10
HOME_IP=198.18.0.10
ROUTER_WAN_IP=192.0.2.2
NAME=demo
TOKEN="nat-test-$RANDOM$RANDOM"
HEAL_DEADLINE_S=30     # the agent's reconnect back-off must bring it back well within this
PARK_DEADLINE_S=${PARK_DEADLINE_S:-15}

skip() { echo "nat: SKIPPED: $*"; exit 77; }
step() { printf '\nnat: == %s\n' "$*"; }
fail() { echo "nat: FAILED: $*"; exit 1; }

[ "$(id -u)" = 0 ] || skip "needs root to create network namespaces (uid $(id -u))"
command -v ip >/dev/null || skip "iproute2 'ip' not installed"
command -v nft >/dev/null || skip "nftables 'nft' not installed"
command -v python3 >/dev/null || skip "python3 not installed (upstream and client are stdlib scripts)"
for b in ptth-serve ptth-connect; do [ -x "$BIN/$b" ] || fail "$BIN/$b missing: build first (cargo build)"; done

P="ptth$$"
NS=("$P-wan" "$P-pub" "$P-relay" "$P-router" "$P-home")
PIDS=()
WORK="$(mktemp -d)"
# `ip netns exec` may fork, so the PID of `ip ... &` is not always the program's: every
# process this script starts lives in one of its own namespaces, and is found there.
ns_pids() { ip netns pids "$1" 2>/dev/null; }
cleanup() {
  set +e
  for ns in "${NS[@]}"; do ns_pids "$ns" | xargs -r kill 2>/dev/null; done
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
  for ns in "${NS[@]}"; do ns_pids "$ns" | xargs -r kill -KILL 2>/dev/null; done
  for ns in "${NS[@]}"; do ip netns del "$ns" 2>/dev/null; done
  if [ "${KEEP_LOGS:-0}" != 1 ]; then rm -rf "$WORK"; else echo "nat: logs kept in $WORK"; fi
}
trap cleanup EXIT
trap 'fail "interrupted"' INT TERM

in_ns() { local ns="$1"; shift; ip netns exec "$ns" "$@"; }
link() { # link NS_A IF_A ADDR_A NS_B IF_B ADDR_B
  ip -n "$1" link add "$2" type veth peer name "$5" netns "$4"
  ip -n "$1" addr add "$3" dev "$2"; ip -n "$1" link set "$2" up
  ip -n "$4" addr add "$6" dev "$5"; ip -n "$4" link set "$5" up
}

step "building the network"
for ns in "${NS[@]}"; do
  ip netns add "$ns" || skip "cannot create network namespaces here"
  ip -n "$ns" link set lo up
done
link "$P-wan" wan-pub 203.0.113.1/24   "$P-pub" pub-wan 203.0.113.10/24
link "$P-wan" wan-rly 198.51.100.1/24  "$P-relay" rly-wan $RELAY_IP/24
link "$P-wan" wan-rtr 192.0.2.1/24     "$P-router" rtr-wan $ROUTER_WAN_IP/24
link "$P-router" rtr-lan 198.18.0.1/24 "$P-home" home-lan $HOME_IP/24
in_ns "$P-wan" sysctl -qw net.ipv4.ip_forward=1
in_ns "$P-router" sysctl -qw net.ipv4.ip_forward=1
# The wan router even knows the way to the home network, so what stops a direct connection
# is the home router's firewall and NAT, not a missing route.
ip -n "$P-wan" route add 198.18.0.0/24 via $ROUTER_WAN_IP
ip -n "$P-pub" route add default via 203.0.113.1
ip -n "$P-relay" route add default via 198.51.100.1
ip -n "$P-router" route add default via 192.0.2.1
ip -n "$P-home" route add default via 198.18.0.1
in_ns "$P-router" nft -f - <<EOF || skip "nftables rules cannot be loaded here"
table ip nat {
  chain post { type nat hook postrouting priority 100; oifname "rtr-wan" masquerade; }
}
table ip filter {
  chain forward {
    type filter hook forward priority 0; policy drop;
    ct state established,related accept
    iifname "rtr-lan" oifname "rtr-wan" accept
  }
  chain input {
    type filter hook input priority 0; policy drop;
    ct state established,related accept
    iifname "lo" accept
    iifname "rtr-lan" accept
  }
}
EOF
echo "nat: public 203.0.113.10 | relay $RELAY_IP | router $ROUTER_WAN_IP (NAT) | home $HOME_IP"

step "1. the home upstream serves inside home, and cannot be reached from public"
in_ns "$P-home" python3 "$HERE/upstream.py" 0.0.0.0 $UPSTREAM_PORT >"$WORK/upstream.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
  in_ns "$P-home" python3 "$HERE/client.py" get "http://127.0.0.1:$UPSTREAM_PORT/hello" "Hello, world!" >/dev/null 2>&1 && break
  sleep 0.1
done
in_ns "$P-home" python3 "$HERE/client.py" get "http://127.0.0.1:$UPSTREAM_PORT/hello" "Hello, world!"
in_ns "$P-pub" python3 "$HERE/client.py" unreachable $HOME_IP $UPSTREAM_PORT
in_ns "$P-pub" python3 "$HERE/client.py" unreachable $ROUTER_WAN_IP $UPSTREAM_PORT

start_relay() {
  in_ns "$P-relay" "$BIN/ptth-serve" --listen "$RELAY_IP:$RELAY_PORT" --tokens "$WORK/tokens" \
    >>"$WORK/relay.log" 2>&1 &
  RELAY_PID=$!
  PIDS+=("$RELAY_PID")
}
wait_served() { # wait_served DEADLINE_S: poll the public URL until the agent answers
  local deadline=$((SECONDS + $1))
  while [ $SECONDS -lt $deadline ]; do
    if in_ns "$P-pub" python3 "$HERE/client.py" get "$PUBLIC/hello" "Hello, world!" >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.1
  done
  return 1
}

step "2. the relay starts in relay; the agent in home dials out and parks"
printf '%s %s\n' "$NAME" "$TOKEN" >"$WORK/tokens"
start_relay
PUBLIC="http://$RELAY_IP:$RELAY_PORT/$NAME"
in_ns "$P-home" env PTTH_TOKEN="$TOKEN" RUST_LOG=info "$BIN/ptth-connect" \
  "http://$RELAY_IP:$RELAY_PORT/$NAME" --to "http://127.0.0.1:$UPSTREAM_PORT" >"$WORK/agent.log" 2>&1 &
AGENT_PID=$!
PIDS+=("$AGENT_PID")
wait_served $PARK_DEADLINE_S || { tail -n 20 "$WORK/relay.log" "$WORK/agent.log"; fail "the agent never became reachable through the relay"; }
echo "nat: agent parked and reachable at $PUBLIC/"

step "3. public requests reach the home upstream through the relay"
in_ns "$P-pub" python3 "$HERE/client.py" get "$PUBLIC/hello" "Hello, world!"
in_ns "$P-pub" python3 "$HERE/client.py" echo "$PUBLIC/echo" 10000000
in_ns "$P-pub" python3 "$HERE/client.py" stream "$PUBLIC/stream"

step "4. the relay is killed and restarted; the agent heals by itself"
relay_pids=$(ns_pids "$P-relay" | tr '\n' ' ')
[ -n "$relay_pids" ] || fail "no relay process found in the relay namespace"
kill -KILL $relay_pids
wait "$RELAY_PID" 2>/dev/null || true
[ -z "$(ns_pids "$P-relay")" ] || fail "the relay is still running after SIGKILL"
if in_ns "$P-pub" python3 "$HERE/client.py" get "$PUBLIC/hello" "Hello, world!" >/dev/null 2>&1; then
  fail "the public URL still answers with the relay killed"
fi
echo "nat: relay (pid $relay_pids) killed; the public URL no longer answers"
start_relay
echo "nat: relay restarted"
t0=$(date +%s.%N)
wait_served $HEAL_DEADLINE_S || { tail -n 20 "$WORK/relay.log" "$WORK/agent.log"; fail "the agent did not come back within ${HEAL_DEADLINE_S}s"; }
[ -n "$(ns_pids "$P-home" | xargs -r ps -o comm= -p | grep ptth-connect)" ] || fail "the agent process died"
echo "nat: healed within $(python3 -c "import sys; print(f\"{float(sys.argv[2]) - float(sys.argv[1]):.2f}\")" "$t0" "$(date +%s.%N)")s without touching the agent"
in_ns "$P-pub" python3 "$HERE/client.py" get "$PUBLIC/hello" "Hello, world!"

echo
echo "nat: PASSED"
