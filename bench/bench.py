#!/usr/bin/env python3
"""ptth benchmark: the relay path against a direct connection, nginx and the peers, on loopback.

Run it through bench/run.sh (which installs wrk/nginx/peers and builds the binaries). Every
path fronts the same upstream (bench/upstream.rs) and is measured by the same wrk runs; the
order of the paths rotates every round, each ratio is taken against `direct` *within* its
round, and the tables show medians over the rounds.

Paths: direct, nginx, ptth (the 2009 protocol, the agent's elastic HTTP/1.1 pool), ptth-h2x1
and ptth-h2x2 (`--protocol ptth`: HTTP/2 inside, one and two reversed connections), rathole,
bore.

Knobs (environment): ROUNDS (3), DURATION (5 s per wrk run), WARMUP (1 s), PATHS
("direct nginx ptth ptth-h2x1 ptth-h2x2 rathole bore"), IDLE_COUNTS ("1000 10000"; "" skips the
parked-memory test), H2_IDLE_COUNTS ("1000"; "" skips the HTTP/2 one, run when an h2 path is
in PATHS), H2_IDLE_HOLDER ("stub", or "agents": one ptth-connect per connection),
BENCH_ROOT (/tmp/ptth-bench), PTTH_BIN (target/release).
"""
import http.client
import json
import os
import random
import resource
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
HOST = "127.0.0.1"


def env(name, default):
    return os.environ.get(name, default)


ROUNDS = int(env("ROUNDS", "3"))
DURATION = int(env("DURATION", "5"))
WARMUP = int(env("WARMUP", "1"))
PATHS = env("PATHS", "direct nginx ptth ptth-h2x1 ptth-h2x2 rathole bore").split()
IDLE_COUNTS = [int(n) for n in env("IDLE_COUNTS", "1000 10000").split()]
H2_IDLE_COUNTS = [int(n) for n in env("H2_IDLE_COUNTS", "1000").split()]
H2_IDLE_HOLDER = env("H2_IDLE_HOLDER", "stub")
ROOT = env("BENCH_ROOT", "/tmp/ptth-bench")
PTTH_BIN = env("PTTH_BIN", os.path.join(REPO, "target/release"))
UPSTREAM_BIN = env("UPSTREAM_BIN", os.path.join(REPO, "target/release/examples/bench-upstream"))
PEER_BIN = os.path.join(ROOT, "cargo/bin")
RUN = os.path.join(ROOT, "run")
RESULTS = os.path.join(ROOT, "results")

UPSTREAM_PORT, NGINX_PORT, PTTH_PORT = 19080, 19081, 19085
RATHOLE_CTRL, RATHOLE_PORT, BORE_PORT = 19090, 19083, 19082
BORE_CTRL = 7835  # fixed by bore 0.6
NAME = "bench"
SECRET = "bench-secret-%d" % random.randrange(1 << 30)
HELLO = b"Hello, world!"
BIG_LEN = 65536
ECHO_BYTES = 10_000_000
CONNECT_TIMEOUT = 20.0
WRK_TIMEOUT = "5s"

# (key, path, connections, extra wrk args)
LOADS = [
    ("hello_c1", "/hello", 1, []),
    ("hello_c64", "/hello", 64, []),
    ("close_c64", "/hello", 64, ["-H", "Connection: close"]),
    ("big_c8", "/64k", 8, []),
    ("echo_c1", "/echo", 1, ["-s", os.path.join(HERE, "post10mb.lua")]),
]

PROCS = []


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class Proc:
    """A child process started and stopped by PID, with its log in RUN/logs."""

    def __init__(self, name, cmd, extra_env=None):
        os.makedirs(os.path.join(RUN, "logs"), exist_ok=True)
        self.name = name
        self.log_path = os.path.join(RUN, "logs", f"{name}.log")
        e = dict(os.environ, RUST_LOG="warn")
        e.update(extra_env or {})
        self.p = subprocess.Popen(cmd, stdout=open(self.log_path, "w"), stderr=subprocess.STDOUT,
                                  env=e, start_new_session=True, preexec_fn=raise_nofile)
        PROCS.append(self)

    def alive(self):
        return self.p.poll() is None

    def stop(self):
        if self.alive():
            os.killpg(self.p.pid, signal.SIGTERM)
            try:
                self.p.wait(3)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()
        if self in PROCS:
            PROCS.remove(self)

    def tail(self, n=10):
        try:
            with open(self.log_path) as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""


def raise_nofile():
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def stop_all():
    for p in list(reversed(PROCS)):
        p.stop()


def pids_of(proc):
    """The process and its descendants (nginx has workers)."""
    out = [proc.p.pid]
    try:
        kids = subprocess.run(["pgrep", "-P", str(proc.p.pid)], capture_output=True, text=True).stdout
        out += [int(k) for k in kids.split()]
    except OSError:
        pass
    return out


def status_kib(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kib(procs, field="VmRSS"):
    return sum(status_kib(pid, field) for p in procs for pid in pids_of(p))


def cpu_s(procs):
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in procs:
        for pid in pids_of(p):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
            except OSError:
                pass
    return total / tick


def wait_port(port, timeout, proc):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if not proc.alive():
            return False
        try:
            c = http.client.HTTPConnection(HOST, port, timeout=0.5)
            c.connect()
            c.close()
            return True
        except OSError:
            time.sleep(0.01)
    return False


class Target:
    def __init__(self, port, prefix=""):
        self.port, self.prefix = port, prefix

    def url(self, path):
        return f"http://{HOST}:{self.port}{self.prefix}{path}"

    def request(self, method, path, body=None, timeout=5.0):
        c = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            c.request(method, self.prefix + path, body=body)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()


def wait_hello(target, timeout, procs):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            st, body = target.request("GET", "/hello", timeout=0.5)
            if st == 200 and body == HELLO:
                return time.monotonic() - t0
        except (OSError, http.client.HTTPException):
            pass
        if any(not p.alive() for p in procs):
            return None
        time.sleep(0.001)
    return None


def checks(target):
    out = []
    st, body = target.request("GET", "/64k")
    out.append("64k:ok" if st == 200 and len(body) == BIG_LEN else f"64k:FAIL({st},{len(body)})")
    payload = random.randbytes(100_000)
    st, body = target.request("POST", "/echo", body=payload)
    out.append("echo:ok" if st == 200 and body == payload else f"echo:FAIL({st},{len(body)})")
    return out


def wrk(target, path, conns, duration, extra):
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--timeout", WRK_TIMEOUT]
    if "-s" not in extra:
        cmd += ["-s", os.path.join(HERE, "report.lua")]
    cmd += extra + [target.url(path)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    except subprocess.TimeoutExpired:
        return {"error": "wrk timed out"}
    for line in out.stdout.splitlines():
        if line.startswith("BENCHJSON "):
            r = json.loads(line[len("BENCHJSON "):])
            secs = r["duration_us"] / 1e6
            r["rps"] = r["requests"] / secs if secs else 0.0
            r["mbps"] = r["bytes_moved"] / secs / 1e6 if secs else 0.0
            r["errors"] = sum(r[k] for k in ("err_connect", "err_read", "err_write", "err_status", "err_timeout"))
            return r
    return {"error": f"wrk rc={out.returncode}: {(out.stderr or out.stdout)[-300:]}"}


# ---------------------------------------------------------------------------------------------
# paths: each returns (relay procs, agent-starting function or None, target)

def path_direct():
    return [], None, Target(UPSTREAM_PORT)


def path_nginx():
    d = os.path.join(RUN, "nginx")
    os.makedirs(d, exist_ok=True)
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""daemon off;
worker_processes auto;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_buffer_size 1m;
    client_max_body_size 0;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream up {{ server {HOST}:{UPSTREAM_PORT}; keepalive 128; keepalive_requests 1000000; }}
    server {{
        listen {HOST}:{NGINX_PORT};
        location / {{
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffers 8 16k;
            proxy_request_buffering off;
            proxy_max_temp_file_size 0;
        }}
    }}
}}
""")
    nginx = "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else "nginx"
    relay = Proc("nginx", [nginx, "-p", d, "-e", f"{d}/error.log", "-c", conf])
    return [(relay, NGINX_PORT)], None, Target(NGINX_PORT)


def ptth_relay_cmd():
    return [os.path.join(PTTH_BIN, "ptth-serve"), "--listen", f"{HOST}:{PTTH_PORT}"]


def ptth_agent_cmd(extra=()):
    return [os.path.join(PTTH_BIN, "ptth-connect"), f"http://{HOST}:{PTTH_PORT}/{NAME}",
            "--to", f"http://{HOST}:{UPSTREAM_PORT}", *extra]


def path_ptth():
    relay = Proc("ptth-serve", ptth_relay_cmd())
    return [(relay, PTTH_PORT)], lambda: Proc("ptth-connect", ptth_agent_cmd()), Target(PTTH_PORT, f"/{NAME}")


# The agent of the HTTP/2 paths: `--protocol ptth` (the relay chooses `h2`), N reversed
# connections, and as many upstream connections as the HTTP/1.1 pool's default most
# connections (64), so that neither agent caps the c64 load below the other.
H2_AGENT_ARGS = ["--protocol", "ptth", "--upstream-connections", "64"]


def path_ptth_h2(connections):
    def path():
        relay = Proc("ptth-serve", ptth_relay_cmd())
        extra = H2_AGENT_ARGS + ["--h2-connections", str(connections)]
        return [(relay, PTTH_PORT)], lambda: Proc("ptth-connect", ptth_agent_cmd(extra)), Target(PTTH_PORT, f"/{NAME}")
    return path


def path_rathole():
    d = os.path.join(RUN, "rathole")
    os.makedirs(d, exist_ok=True)
    server, client = os.path.join(d, "server.toml"), os.path.join(d, "client.toml")
    with open(server, "w") as f:
        f.write(f'[server]\nbind_addr = "{HOST}:{RATHOLE_CTRL}"\ndefault_token = "{SECRET}"\n'
                f'[server.services.{NAME}]\nbind_addr = "{HOST}:{RATHOLE_PORT}"\n')
    with open(client, "w") as f:
        f.write(f'[client]\nremote_addr = "{HOST}:{RATHOLE_CTRL}"\ndefault_token = "{SECRET}"\n'
                f'[client.services.{NAME}]\nlocal_addr = "{HOST}:{UPSTREAM_PORT}"\n')
    bin_ = os.path.join(PEER_BIN, "rathole")
    relay = Proc("rathole-server", [bin_, "-s", server])
    return [(relay, RATHOLE_CTRL)], lambda: Proc("rathole-client", [bin_, "-c", client]), Target(RATHOLE_PORT)


def path_bore():
    bin_ = os.path.join(PEER_BIN, "bore")
    relay = Proc("bore-server", [bin_, "server", "--bind-addr", HOST, "--secret", SECRET,
                                 "--min-port", str(BORE_PORT), "--max-port", str(BORE_PORT)])
    agent = lambda: Proc("bore-local", [bin_, "local", str(UPSTREAM_PORT), "--local-host", HOST, "--to", HOST,  # noqa: E731
                                        "--port", str(BORE_PORT), "--secret", SECRET])
    return [(relay, BORE_CTRL)], agent, Target(BORE_PORT)


PATH_FNS = {"direct": path_direct, "nginx": path_nginx, "ptth": path_ptth,
            "ptth-h2x1": path_ptth_h2(1), "ptth-h2x2": path_ptth_h2(2),
            "rathole": path_rathole, "bore": path_bore}
PEER_NEEDS = {"rathole": os.path.join(PEER_BIN, "rathole"), "bore": os.path.join(PEER_BIN, "bore")}


def session(name):
    res = {"path": name}
    relays, agent = [], None
    try:
        relay_spec, start_agent, target = PATH_FNS[name]()
        relays = [p for p, _ in relay_spec]
        for p, port in relay_spec:
            if not wait_port(port, 15, p):
                raise RuntimeError(f"{p.name} did not listen on {port}: {p.tail()}")
        if start_agent:
            t0 = time.monotonic()
            agent = start_agent()
            secs = wait_hello(target, CONNECT_TIMEOUT, relays + [agent])
            if secs is None:
                raise RuntimeError(f"no 200 /hello through {name}: {agent.tail()}")
            res["connect_ms"] = (time.monotonic() - t0) * 1000
        agents = [agent] if agent else []
        res["checks"] = checks(target)
        if WARMUP:
            wrk(target, "/hello", 64, WARMUP, [])
        for key, path, conns, extra in LOADS:
            c0, a0 = cpu_s(relays), cpu_s(agents)
            r = wrk(target, path, conns, DURATION, extra)
            r["relay_cpu_s"], r["agent_cpu_s"] = cpu_s(relays) - c0, cpu_s(agents) - a0
            r["tunnel_cpu_s"] = r["relay_cpu_s"] + r["agent_cpu_s"]
            res[key] = r
            if "error" in r:
                log(f"  {name:9s} {key:10s} ERROR {r['error']}")
            else:
                log(f"  {name:9s} {key:10s} {r['rps']:9.0f} req/s  p50 {r['p50_us']:>6d}us  "
                    f"p99 {r['p99_us']:>6d}us  {r['mbps']:8.1f} MB/s  err {r['errors']}")
        res["relay_hwm_kib"] = rss_kib(relays, "VmHWM") if relays else None
        res["agent_hwm_kib"] = rss_kib(agents, "VmHWM") if agents else None
        for p in relays + agents:
            if not p.alive():
                res.setdefault("notes", []).append(f"{p.name} died")
    except Exception as e:  # noqa: BLE001
        res["error"] = str(e)[-500:]
        log(f"  {name}: ERROR {res['error']}")
    finally:
        if agent:
            agent.stop()
        for p in reversed(relays):
            p.stop()
    return res


def established(port):
    out = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True).stdout
    return len(out.splitlines())


class H1Agent:
    """One agent holding N parked HTTP/1.1 connections (`PTTH_IDLE_AGENT_ARGS`)."""

    def __init__(self, n):
        self.proc = Proc("ptth-connect-idle", ptth_agent_cmd(PTTH_IDLE_AGENT_ARGS(n)))

    def alive(self):
        return self.proc.alive()

    def parked(self):
        return established(PTTH_PORT)

    def tail(self):
        return self.proc.tail(3)

    def close(self):
        self.proc.stop()


def parked_memory(n, relay_env=None, h2=False):
    """Relay RSS growth per idle parked connection: one agent holding n HTTP/1.1 connections,
    or with `h2`, n HTTP/2 connections of one name each (`H2_IDLE_HOLDER`: `stub`, one thread
    of this process holding them all, or `agents`, n processes).

    `relay_env` is extra environment for the relay. ptth-serve purges freed pages at once; with
    MIMALLOC_PURGE_DELAY=1000 (mimalloc's own default) it keeps them, which tells memory held by
    the parked connections from memory the allocator would keep after the claim burst."""
    res = {"n": n, "relay_env": " ".join(f"{k}={v}" for k, v in (relay_env or {}).items())}
    if h2:
        res["holder"] = H2_IDLE_HOLDER
    relay = holder = None
    try:
        relay = Proc("ptth-serve-idle", ptth_relay_cmd() + PTTH_IDLE_RELAY_ARGS(n), relay_env)
        if not wait_port(PTTH_PORT, 15, relay):
            raise RuntimeError(f"relay did not listen: {relay.tail()}")
        time.sleep(0.5)
        before = rss_kib([relay])
        t0 = time.monotonic()
        if not h2:
            holder = H1Agent(n)
        else:
            holder = H2Agents(n) if H2_IDLE_HOLDER == "agents" else H2Holder(n)
        deadline = time.monotonic() + 120
        while holder.parked() < n and time.monotonic() < deadline and holder.alive() and relay.alive():
            time.sleep(0.2)
        got = holder.parked()
        res["parked"] = got
        res["all_up_s"] = time.monotonic() - t0
        time.sleep(1.0)
        after = rss_kib([relay])
        res["relay_rss_before_kib"], res["relay_rss_after_kib"] = before, after
        if not h2:
            res["agent_rss_kib"] = rss_kib([holder.proc])
        if got:
            res["kib_per_conn"] = (after - before) / got
        if got < n:
            res["error"] = f"only {got}/{n} connections parked: {holder.tail()} {relay.tail(3)}"
    except Exception as e:  # noqa: BLE001
        res["error"] = str(e)[-400:]
    finally:
        if holder:
            holder.close()
        if relay:
            relay.stop()
    return res


def PTTH_IDLE_RELAY_ARGS(n):
    return os.environ.get("PTTH_IDLE_RELAY_ARGS", "--max-per-name {n} --max-per-ip {n} --max-agents {n}").format(n=n).split()


def PTTH_IDLE_AGENT_ARGS(n):
    return os.environ.get("PTTH_IDLE_AGENT_ARGS", "--connections {n} --max-connections {n}").format(n=n).split()


# ---------------------------------------------------------------------------------------------
# parked HTTP/2 connections: one name per connection, as N agents of one connection each

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS, PING, GOAWAY, WINDOW_UPDATE, ACK = 0x4, 0x6, 0x7, 0x8, 0x1


def h2_frame(kind, flags, payload=b"", stream=0):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


# What ptth-connect's HTTP/2 server (hyper 1) sends after the 101: SETTINGS with
# MAX_CONCURRENT_STREAMS 128, INITIAL_WINDOW_SIZE 1 MiB, MAX_HEADER_LIST_SIZE 16 KiB and
# ENABLE_CONNECT_PROTOCOL 1, then a connection WINDOW_UPDATE to 1 MiB. The relay keeps the same
# state for it whatever the numbers say; `H2_IDLE_HOLDER=agents` checks that against real agents.
AGENT_PREFACE = h2_frame(SETTINGS, 0, b"".join(
    k.to_bytes(2, "big") + v.to_bytes(4, "big") for k, v in [(0x3, 128), (0x4, 1 << 20), (0x6, 16384), (0x8, 1)])) \
    + h2_frame(WINDOW_UPDATE, 0, ((1 << 20) - 65535).to_bytes(4, "big"))


class H2Parked:
    """One idle transposed HTTP/2 connection held by this process: the `ptth` offer for its own
    name, the agent's SETTINGS after the 101, then SETTINGS and PING acknowledged and nothing
    else. Parked once the relay has acknowledged the SETTINGS, which its HTTP/2 client does
    only after the connection was added to the name (relay/claim.rs, `serve_h2`)."""

    def __init__(self, name):
        s = socket.create_connection((HOST, PTTH_PORT), timeout=10)
        s.sendall(f"GET /{name} HTTP/1.1\r\nHost: {HOST}:{PTTH_PORT}\r\nConnection: upgrade\r\n"
                  f"Upgrade: ptth\r\nALPN: h2, http%2F1.1\r\n\r\n".encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise RuntimeError("relay closed before the 101")
            buf += chunk
        head, buf = buf.split(b"\r\n\r\n", 1)
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError("offer refused: " + head.split(b"\r\n")[0].decode(errors="replace"))
        s.sendall(AGENT_PREFACE)
        s.setblocking(False)
        self.sock, self.buf, self.preface, self.acked = s, buf, False, False

    def readable(self):
        """Take what arrived; False once the relay closed or sent GOAWAY."""
        try:
            chunk = self.sock.recv(65536)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        self.buf += chunk
        return self.frames()

    def frames(self):
        if not self.preface:
            if len(self.buf) < len(H2_PREFACE):
                return True
            if not self.buf.startswith(H2_PREFACE):
                raise RuntimeError("the relay sent no HTTP/2 preface")
            self.buf, self.preface = self.buf[len(H2_PREFACE):], True
        while len(self.buf) >= 9:
            n = int.from_bytes(self.buf[:3], "big")
            if len(self.buf) < 9 + n:
                break
            kind, flags, payload = self.buf[3], self.buf[4], self.buf[9:9 + n]
            self.buf = self.buf[9 + n:]
            if kind == SETTINGS and flags & ACK:
                self.acked = True
            elif kind == SETTINGS:
                self.sock.send(h2_frame(SETTINGS, ACK))
            elif kind == PING and not flags & ACK:
                self.sock.send(h2_frame(PING, ACK, payload))
            elif kind == GOAWAY:
                return False
        return True


class H2Holder:
    """N parked HTTP/2 connections, served by one thread until `close`."""

    def __init__(self, n):
        self.conns = [H2Parked(f"{NAME}{i}") for i in range(n)]
        self.closed = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        sel = selectors.DefaultSelector()
        for c in self.conns:
            sel.register(c.sock, selectors.EVENT_READ, c)
            if not c.frames():
                self.closed += 1
        while not self.stop.is_set():
            for key, _ in sel.select(0.2):
                if not key.data.readable():
                    sel.unregister(key.fileobj)
                    self.closed += 1
        sel.close()

    def alive(self):
        return self.thread.is_alive()

    def parked(self):
        return sum(c.acked for c in self.conns) - self.closed

    def tail(self):
        return f"{self.closed} closed by the relay"

    def close(self):
        self.stop.set()
        self.thread.join(5)
        for c in self.conns:
            c.sock.close()


class H2Agents:
    """The same with real agents: N `ptth-connect --protocol ptth --h2-connections 1`, one
    name each (N processes: a check of the stub at a few hundred, not the default)."""

    def __init__(self, n):
        self.procs = [Proc(f"ptth-connect-h2-{i}", [os.path.join(PTTH_BIN, "ptth-connect"),
                                                     f"http://{HOST}:{PTTH_PORT}/{NAME}{i}",
                                                     "--to", f"http://{HOST}:{UPSTREAM_PORT}",
                                                     "--protocol", "ptth", "--h2-connections", "1"])
                      for i in range(n)]

    def alive(self):
        return any(p.alive() for p in self.procs)

    def parked(self):
        return established(PTTH_PORT)

    def tail(self):
        return next((p.tail(3) for p in self.procs if not p.alive()), "")

    def close(self):
        for p in self.procs:
            p.stop()


# ---------------------------------------------------------------------------------------------
# report

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def f(x, spec="{:.0f}"):
    return "—" if x is None else spec.format(x)


def ratio(x):
    if x is None:
        return "—"
    return f"{x:.2f}" if x >= 0.01 else f"{x:.4f}"


def report(rounds, idle, idle_h2, versions):
    names = [n for n in PATHS if any(n in r for r in rounds)]
    lines = ["## Ratios to direct (median over rounds; each ratio taken within its round)", "",
             "| path | req/s c1 | p50 c1 | p99 c1 | req/s c64 | p99 c64 | req/s c64 close | 64 KiB MB/s c8 | 10 MB echo MB/s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    metric = lambda res, key, m: (res.get(key) or {}).get(m)  # noqa: E731
    cols = [("hello_c1", "rps"), ("hello_c1", "p50_us"), ("hello_c1", "p99_us"), ("hello_c64", "rps"),
            ("hello_c64", "p99_us"), ("close_c64", "rps"), ("big_c8", "mbps"), ("echo_c1", "mbps")]
    ratios = {}
    for n in names:
        row = []
        for key, m in cols:
            rs = []
            for r in rounds:
                a, d = r.get(n), r.get("direct")
                if a and d and metric(a, key, m) is not None and metric(d, key, m):
                    rs.append(metric(a, key, m) / metric(d, key, m))
            ratios[(n, key, m)] = med(rs)
            row.append(ratio(med(rs)))
        lines.append(f"| {n} | " + " | ".join(row) + " |")
    lines += ["", "## Absolute figures (median over rounds)", "",
              "| path | req/s c1 | p50 c1 µs | p99 c1 µs | req/s c64 | p50 c64 µs | p99 c64 µs | req/s c64 close | 64 KiB MB/s | echo MB/s | tunnel CPU µs/req (c64) | relay / agent µs/req (c64) | tunnel CPU µs/req (64 KiB c8) | relay peak RSS MiB | agent peak RSS MiB | agent start → first answer ms | errors | checks |",
              "|---|" + "---:|" * 16 + "---|"]
    for n in names:
        rs = [r[n] for r in rounds if n in r]
        g = lambda key, m: med([metric(x, key, m) for x in rs])  # noqa: E731
        def per_req(key, what):
            return med([(x[key][what] * 1e6 / x[key]["requests"])
                        if x.get(key, {}).get("requests") and what in x[key] and n != "direct" else None for x in rs])
        cpu = per_req("hello_c64", "tunnel_cpu_s")
        split = "—" if per_req("hello_c64", "relay_cpu_s") is None else \
            f"{f(per_req('hello_c64', 'relay_cpu_s'), '{:.1f}')} / " \
            f"{f(per_req('hello_c64', 'agent_cpu_s') if any(x.get('agent_hwm_kib') for x in rs) else None, '{:.1f}')}"
        cpu_big = per_req("big_c8", "tunnel_cpu_s")
        errs = sum((x.get(k) or {}).get("errors", 0) or 0 for x in rs for k, *_ in LOADS)
        chk = ",".join(sorted({c for x in rs for c in x.get("checks", [])})) or "; ".join(x.get("error", "") for x in rs)
        hwm = lambda k: med([x.get(k) / 1024 if x.get(k) else None for x in rs])  # noqa: E731
        lines.append(f"| {n} | {f(g('hello_c1', 'rps'))} | {f(g('hello_c1', 'p50_us'))} | {f(g('hello_c1', 'p99_us'))} | "
                     f"{f(g('hello_c64', 'rps'))} | {f(g('hello_c64', 'p50_us'))} | {f(g('hello_c64', 'p99_us'))} | "
                     f"{f(g('close_c64', 'rps'))} | {f(g('big_c8', 'mbps'))} | {f(g('echo_c1', 'mbps'))} | "
                     f"{f(cpu, '{:.1f}')} | {split} | {f(cpu_big, '{:.1f}')} | {f(hwm('relay_hwm_kib'), '{:.1f}')} | {f(hwm('agent_hwm_kib'), '{:.1f}')} | "
                     f"{f(med([x.get('connect_ms') for x in rs]), '{:.1f}')} | {errs} | {chk} |")
    if idle:
        lines += ["", "## Relay memory per idle parked connection (one agent holding N)", "",
                  "The second row of each N runs the relay with `MIMALLOC_PURGE_DELAY=1000` (mimalloc's stock "
                  "delay; ptth-serve otherwise purges freed pages at once): the difference is memory the allocator "
                  "would keep, not memory the connections hold.", "",
                  "| N | relay env | parked | relay RSS before MiB | after MiB | KiB per parked connection | agent RSS MiB | all parked in s |",
                  "|---:|---|---:|---:|---:|---:|---:|---:|"]
        for r in idle:
            lines.append(f"| {r['n']} | {r.get('relay_env') or '—'} | {r.get('parked', '—')} | {f(r.get('relay_rss_before_kib', 0) / 1024, '{:.1f}')} | "
                         f"{f(r.get('relay_rss_after_kib', 0) / 1024, '{:.1f}')} | {f(r.get('kib_per_conn'), '{:.2f}')} | "
                         f"{f(r.get('agent_rss_kib', 0) / 1024, '{:.1f}')} | {f(r.get('all_up_s'), '{:.1f}')} |"
                         + (f" {r['error']}" if r.get("error") else ""))
    if idle_h2:
        lines += ["", "## Relay memory per idle parked HTTP/2 connection (N agents, one connection each)", "",
                  "Each connection claims its own name (`bench0` … `benchN-1`), so the figure includes what a "
                  "name costs; `stub` holders are one thread of bench.py speaking the agent's side of the "
                  "HTTP/2 preface, `agents` are N `ptth-connect --protocol ptth --h2-connections 1`.", "",
                  "| N | holder | relay env | parked | relay RSS before MiB | after MiB | KiB per parked connection | all parked in s |",
                  "|---:|---|---|---:|---:|---:|---:|---:|"]
        for r in idle_h2:
            lines.append(f"| {r['n']} | {r['holder']} | {r.get('relay_env') or '—'} | {r.get('parked', '—')} | "
                         f"{f(r.get('relay_rss_before_kib', 0) / 1024, '{:.1f}')} | "
                         f"{f(r.get('relay_rss_after_kib', 0) / 1024, '{:.1f}')} | {f(r.get('kib_per_conn'), '{:.2f}')} | "
                         f"{f(r.get('all_up_s'), '{:.1f}')} |" + (f" {r['error']}" if r.get("error") else ""))
    # Targets from issue 7, checked against this run.
    t = []
    p = "ptth"
    if p in names:
        conn = med([r[p].get("connect_ms") for r in rounds if p in r])
        per = [r.get("kib_per_conn") for r in idle if not r.get("relay_env")]
        for label, val, ok in [
            ("13-byte GET c1 req/s ratio >= 0.80", ratios.get((p, "hello_c1", "rps")), lambda v: v >= 0.80),
            ("13-byte GET c64 req/s ratio >= 0.45", ratios.get((p, "hello_c64", "rps")), lambda v: v >= 0.45),
            ("64 KiB GET c8 MB/s ratio >= 0.45", ratios.get((p, "big_c8", "mbps")), lambda v: v >= 0.45),
            ("relay KiB per idle parked connection <= 8", max(per) if per and None not in per else None, lambda v: v <= 8),
            ("agent start to first answer <= 10 ms", conn, lambda v: v <= 10),
        ]:
            t.append(f"| {label} | {'—' if val is None else f'{val:.2f}'} | "
                     f"{'—' if val is None else ('met' if ok(val) else 'MISSED')} |")
        lines += ["", "## Targets (issue 7)", "", "| target | this run | |", "|---|---:|---|"] + t
    lines += ["", "## Versions", ""] + [f"- {k}: {v}" for k, v in versions.items()]
    return "\n".join(lines)


def version(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (out.stdout + out.stderr).strip().splitlines()[0]
    except Exception:  # noqa: BLE001
        return "?"


def main():
    signal.signal(signal.SIGTERM, lambda *_: (stop_all(), sys.exit(1)))
    raise_nofile()  # the HTTP/2 parked-memory stub holds N sockets in this process
    os.makedirs(RESULTS, exist_ok=True)
    paths = ["direct"] + [p for p in PATHS if p != "direct"]
    for p, need in PEER_NEEDS.items():
        if p in paths and not os.access(need, os.X_OK):
            log(f"skipping {p}: {need} not installed")
            paths.remove(p)
    versions = {"ptth": version([os.path.join(PTTH_BIN, "ptth-serve"), "--version"]),
                "wrk": version(["wrk", "-v"]),
                "nginx": version(["/usr/sbin/nginx", "-v"]) if "nginx" in paths else "-",
                "kernel": os.uname().release, "cpus": os.cpu_count()}
    for p in ("rathole", "bore"):
        if p in paths:
            versions[p] = version([PEER_NEEDS[p], "--version"])
    upstream = Proc("upstream", [UPSTREAM_BIN, f"{HOST}:{UPSTREAM_PORT}"])
    try:
        if not wait_port(UPSTREAM_PORT, 15, upstream):
            sys.exit(f"upstream did not start: {upstream.tail()}")
        rounds = []
        for rnd in range(ROUNDS):
            order = paths[rnd % len(paths):] + paths[:rnd % len(paths)]
            log(f"round {rnd + 1}/{ROUNDS}: {' '.join(order)}")
            rounds.append({n: session(n) for n in order})
        idle = []
        if "ptth" in paths:
            for n in IDLE_COUNTS:
                for relay_env in (None, {"MIMALLOC_PURGE_DELAY": "1000"}):
                    log(f"parked-connection memory, N={n} {relay_env or ''}")
                    r = parked_memory(n, relay_env)
                    log(f"  {json.dumps(r)}")
                    idle.append(r)
        idle_h2 = []
        if any(p.startswith("ptth-h2") for p in paths):
            for n in H2_IDLE_COUNTS:
                for relay_env in (None, {"MIMALLOC_PURGE_DELAY": "1000"}):
                    log(f"parked HTTP/2 connection memory, N={n} {H2_IDLE_HOLDER} {relay_env or ''}")
                    r = parked_memory(n, relay_env, h2=True)
                    log(f"  {json.dumps(r)}")
                    idle_h2.append(r)
    finally:
        stop_all()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    md = report(rounds, idle, idle_h2, versions)
    with open(os.path.join(RESULTS, f"bench-{stamp}.json"), "w") as fh:
        json.dump({"rounds": rounds, "idle": idle, "idle_h2": idle_h2, "versions": versions}, fh, indent=1)
    with open(os.path.join(RESULTS, f"bench-{stamp}.md"), "w") as fh:
        fh.write(md + "\n")
    print(md)
    print(f"\n(raw results: {RESULTS}/bench-{stamp}.json)", file=sys.stderr)


if __name__ == "__main__":
    main()
