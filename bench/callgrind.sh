#!/usr/bin/env bash
# Instructions per request in user space, for each half of ptth and of rathole, and for nginx
# as one HTTP-aware hop (the floor of what one hop that parses HTTP costs), counted by
# valgrind's callgrind: exact and repeatable whatever else the machine is doing (a wall-clock
# or CPU-time figure is not, on a shared 2-core machine). Kernel time is not counted: see
# bench/side.sh for the kernel/user split under real load.
#
#   bash bench/callgrind.sh            # both halves of ptth and of rathole, 13-byte GET, c8
#   WHO="ptth-relay" bash bench/callgrind.sh
#   WHO="ptth-relay ptth-agent ptth-h2-relay ptth-h2-agent" GET_PATH=64k bash bench/callgrind.sh
#
# `ptth-h2-relay`/`ptth-h2-agent` are the halves with the agent on `--protocol ptth` (HTTP/2
# inside, `H2_CONNECTIONS` reversed connections, 1 by default); GET_PATH picks the upstream's
# route (`hello`, 13 bytes, or `64k`).
#
# One half at a time runs under callgrind (about 50x slower), the rest natively. Counters are
# zeroed after a warm-up and dumped after a load of LOAD_SECONDS, so start-up and the claim are
# not counted; the request count comes from wrk. Needs: a release build with symbols
# (`cargo build --profile profiling --bins`), bench-upstream (release), wrk, valgrind, and
# rathole at $BENCH_ROOT/cargo/bin (bench/run.sh installs it). Output: one table on stdout,
# the callgrind files and `callgrind_annotate` of each in $OUT.
set -euo pipefail
BENCH_NAME=callgrind
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
OUT="${OUT:-$BENCH_ROOT/callgrind-$(date +%Y%m%d-%H%M%S)}"
PROF="${PROF:-$REPO/target/profiling}"
UPSTREAM="${UPSTREAM:-$REPO/target/release/examples/bench-upstream}"
RATHOLE="${RATHOLE:-$BENCH_ROOT/cargo/bin/rathole}"
WHO="${WHO:-ptth-relay ptth-agent rathole-server rathole-client nginx}"
CONNS="${CONNS:-8}"
GET_PATH="${GET_PATH:-hello}"
H2_CONNECTIONS="${H2_CONNECTIONS:-1}"
WARM_SECONDS="${WARM_SECONDS:-3}"
LOAD_SECONDS="${LOAD_SECONDS:-10}"
H=127.0.0.1
UP=19180 PTTH=19185 RH_CTRL=19190 RH_PORT=19183 NGX=19181
mkdir -p "$OUT"
for tool in wrk valgrind callgrind_control callgrind_annotate; do
  command -v "$tool" >/dev/null || { say "$tool is required"; exit 1; }
done
for bin in "$PROF/ptth-serve" "$PROF/ptth-connect" "$UPSTREAM"; do
  [ -x "$bin" ] || { say "missing $bin (cargo build --profile profiling --bins; cargo build --release --example bench-upstream)"; exit 1; }
done

# start NAME CG CMD...: run CMD (under callgrind if CG=1) in the background, log in $OUT.
start() {
  local name="$1" cg="$2"
  shift 2
  if [ "$cg" = 1 ]; then
    valgrind --tool=callgrind --callgrind-out-file="$OUT/$name.%p.out" "$@" >"$OUT/$name.log" 2>&1 &
  else
    "$@" >"$OUT/$name.log" 2>&1 &
  fi
  LAST=$!
  PIDS+=("$LAST")
}

# measure NAME PID URL: zero PID's counters after a warm-up, load, dump; prints "Ir requests".
measure() {
  local name="$1" pid="$2" url="$3"
  wrk -t1 -c"$CONNS" -d"${WARM_SECONDS}s" "$url" >/dev/null 2>&1 || true
  callgrind_control -z "$pid" >/dev/null
  local reqs
  reqs=$(wrk -t1 -c"$CONNS" -d"${LOAD_SECONDS}s" --timeout 10s "$url" | awk '/requests in/ {print $1}')
  callgrind_control -d "$pid" >/dev/null
  sleep 1
  local f
  f=$(ls -t "$OUT/$name".*.out* | head -1)
  local ir
  ir=$(callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')
  callgrind_annotate --inclusive=no "$f" 2>/dev/null | head -60 >"$OUT/$name.top.txt" || true
  echo "$ir $reqs"
}

printf '| half | instructions per request | requests counted | callgrind file |\n|---|---:|---:|---|\n'
start upstream 0 "$UPSTREAM" "$H:$UP"
wait_answer "http://$H:$UP/hello"
for who in $WHO; do
  case "$who" in
    ptth-relay|ptth-agent|ptth-h2-relay|ptth-h2-agent)
      cg_relay=0 cg_agent=0
      [ "${who##*-}" = relay ] && cg_relay=1 || cg_agent=1
      agent_args=()
      [[ "$who" = ptth-h2-* ]] && agent_args=(--protocol ptth --h2-connections "$H2_CONNECTIONS" --upstream-connections 64)
      start "$who-relay" "$cg_relay" "$PROF/ptth-serve" --listen "$H:$PTTH"
      relay=$LAST
      sleep 1
      start "$who-agent" "$cg_agent" "$PROF/ptth-connect" "http://$H:$PTTH/bench" --to "http://$H:$UP" "${agent_args[@]}"
      agent=$LAST
      url="http://$H:$PTTH/bench/$GET_PATH"
      wait_answer "$url"
      [ "$cg_relay" = 1 ] && pid=$relay || pid=$agent
      [ "$cg_relay" = 1 ] && name="$who-relay" || name="$who-agent"
      ;;
    rathole-server|rathole-client)
      [ -x "$RATHOLE" ] || { say "no rathole at $RATHOLE: skipped"; continue; }
      cat >"$OUT/rs.toml" <<EOF
[server]
bind_addr = "$H:$RH_CTRL"
default_token = "callgrind"
[server.services.bench]
bind_addr = "$H:$RH_PORT"
EOF
      cat >"$OUT/rc.toml" <<EOF
[client]
remote_addr = "$H:$RH_CTRL"
default_token = "callgrind"
[client.services.bench]
local_addr = "$H:$UP"
EOF
      cg_s=0 cg_c=0
      [ "$who" = rathole-server ] && cg_s=1 || cg_c=1
      start "$who-server" "$cg_s" "$RATHOLE" -s "$OUT/rs.toml"
      server=$LAST
      sleep 1
      start "$who-client" "$cg_c" "$RATHOLE" -c "$OUT/rc.toml"
      client=$LAST
      url="http://$H:$RH_PORT/$GET_PATH"
      wait_answer "$url"
      [ "$who" = rathole-server ] && pid=$server || pid=$client
      [ "$who" = rathole-server ] && name="$who-server" || name="$who-client"
      ;;
    nginx)
      NGINX_BIN=/usr/sbin/nginx
      [ -x "$NGINX_BIN" ] || { say "no nginx: skipped"; continue; }
      mkdir -p "$OUT/nginx"
      # One process (no master, one worker), so callgrind follows all of it.
      cat >"$OUT/nginx/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $OUT/nginx/nginx.pid;
error_log $OUT/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $OUT/nginx/body;
    proxy_temp_path $OUT/nginx/proxy;
    fastcgi_temp_path $OUT/nginx/fastcgi;
    uwsgi_temp_path $OUT/nginx/uwsgi;
    scgi_temp_path $OUT/nginx/scgi;
    upstream up { server $H:$UP; keepalive 128; keepalive_requests 1000000; }
    server {
        listen $H:$NGX;
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
      start nginx-hop 1 "$NGINX_BIN" -p "$OUT/nginx" -c "$OUT/nginx/nginx.conf"
      pid=$LAST name=nginx-hop url="http://$H:$NGX/$GET_PATH"
      wait_answer "$url"
      ;;
    *) say "unknown half $who"; continue ;;
  esac
  read -r ir reqs < <(measure "$name" "$pid" "$url")
  per=$(awk -v i="$ir" -v r="$reqs" 'BEGIN { if (r > 0) printf "%.0f", i / r; else print "—" }')
  printf '| %s | %s | %s | %s |\n' "$who" "$per" "$reqs" "$(ls -t "$OUT/$name".*.out* | head -1)"
  # Stop this pair (all but the upstream), by PID.
  for p in "${PIDS[@]:1}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]:1}"; do timeout 20 tail --pid="$p" -f /dev/null 2>/dev/null || true; done
  PIDS=("${PIDS[0]}")
done
say "files in $OUT"
