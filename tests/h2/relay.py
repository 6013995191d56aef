"""A third-party ptth RELAY for ptth-connect (tests/agent_h2.rs): accepts the agent's ptth
offers, answers 101 with ALPN h2 (or http/1.1, or a refusal) and, on h2, sends requests over
the transposed connections with the Python `h2` package.

Usage: relay.py SCENARIO [ARGS...]
Prints the listening port on its first stdout line, then JSON lines: events as they happen
({"event": ...}) and a summary last ({"summary": ...}). Scenarios:

  many N UPLOAD LARGE  accept 2 connections; send N GETs /n/<i> spread over both at once, a
                       POST /echo of UPLOAD bytes and a GET /large (LARGE bytes expected)
  reset                one connection: GET /broken (the upstream breaks off mid-body: the
                       agent must reset that stream), a GET /large the relay itself resets
                       after its first DATA, then GET /after on the same connection
  goaway               one connection: GET /first, then GOAWAY and close; accept the agent's
                       next connection and GET /second on it
  one P                one connection, one GET of PATHS[P]: its status, body and fields
  ws                   one connection: extended CONNECT :protocol websocket to /ws, bytes
                       sent up and echoed back through the upstream's upgraded connection
  http11               answer ALPN http/1.1 and send one HTTP/1.1 GET /h1 on the raw socket
  refuse               answer the first offer 400 "Upgrade: ptth needs an ALPN field", the
                       second a 101 without ALPN
"""

import json
import selectors
import socket
import sys

import h2.config
import h2.connection
import h2.errors
import h2.events

import common


def emit(obj):
    print(json.dumps(obj), flush=True)


def offer(sock):
    """Read the agent's offer; return what it asked for."""
    request, fields, rest = common.read_head(sock)
    if rest:
        common.fail("%d bytes sent before the 101" % len(rest))
    method, target, _ = request.split(" ", 2)
    return {
        "method": method,
        "target": target,
        "upgrade": common.members(fields, "upgrade"),
        "alpn": [common.alpn_decode(m).decode("latin-1") for m in common.members(fields, "alpn")],
    }


class Conn:
    """One transposed HTTP/2 connection, the relay being the h2 client."""

    def __init__(self, sock):
        self.sock = sock
        self.h2 = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.h2.initiate_connection()
        switch = b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: ptth\r\nALPN: h2\r\n\r\n"
        sock.sendall(switch + self.h2.data_to_send())
        self.streams, self.pending, self.headers = {}, {}, {}
        self.goaway = None
        self.closed = False
        self.reset_after_data = set()

    def request(self, method, path, body=None):
        sid = self.h2.get_next_available_stream_id()
        headers = [(":method", method), (":scheme", "http"), (":authority", "app.example"), (":path", path)]
        self.h2.send_headers(sid, headers, end_stream=body is None)
        if body is not None:
            self.pending[sid] = body
        self.streams[sid] = {"path": path, "body": b"", "status": None, "done": False, "reset": None}
        common.flush(self.h2, self.pending)
        return sid

    def finished(self, sid):
        s = self.streams[sid]
        return s["done"] or s["reset"] is not None

    def pump(self):
        """Read once and handle what came; returns False when the agent closed."""
        data = self.sock.recv(65536)
        if not data:
            self.closed = True
            return False
        for event in self.h2.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                self.streams[event.stream_id]["status"] = dict(event.headers)[":status"]
                self.headers[event.stream_id] = dict(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                s = self.streams[event.stream_id]
                s["body"] += event.data
                if event.stream_id in self.reset_after_data:
                    self.reset_after_data.discard(event.stream_id)
                    self.h2.reset_stream(event.stream_id, h2.errors.ErrorCodes.CANCEL)
                    s["reset"] = "ours"
            elif isinstance(event, h2.events.StreamEnded):
                self.streams[event.stream_id]["done"] = True
            elif isinstance(event, h2.events.StreamReset):
                s = self.streams[event.stream_id]
                if s["reset"] is None:
                    s["reset"] = int(event.error_code)
                self.pending.pop(event.stream_id, None)
            elif isinstance(event, h2.events.WindowUpdated):
                common.flush(self.h2, self.pending)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaway = int(event.error_code)
        self.send()
        return True

    def send(self):
        out = self.h2.data_to_send()
        if out:
            self.sock.sendall(out)

    def until(self, done):
        while not done():
            if not self.pump():
                common.fail("agent closed the connection early: %r" % self.streams)

    def body(self, sid):
        return self.streams[sid]["body"].decode("latin-1")

    def close(self):
        """GOAWAY(NO_ERROR), then wait for the agent to close its side."""
        self.h2.close_connection()
        self.send()
        self.sock.shutdown(socket.SHUT_WR)
        while self.sock.recv(65536):
            pass
        self.sock.close()


def accept(lsock):
    sock, _ = lsock.accept()
    sock.settimeout(common.TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def many(lsock, n, upload, large):
    offers, conns = [], []
    for _ in range(2):
        sock = accept(lsock)
        offers.append(offer(sock))
        conns.append(Conn(sock))
    ids = []
    for i in range(n):
        c = conns[i % 2]
        ids.append((c, c.request("GET", "/n/%d" % i), "/n/%d" % i))
    payload = bytes(i % 251 for i in range(upload))
    echo = conns[0].request("POST", "/echo", payload)
    big = conns[1].request("GET", "/large")
    for c in conns:
        c.send()
    sel = selectors.DefaultSelector()
    for c in conns:
        sel.register(c.sock, selectors.EVENT_READ, c)

    def all_done():
        return all(c.finished(s) for c, s, _ in ids) and conns[0].finished(echo) and conns[1].finished(big)

    while not all_done():
        ready = sel.select(common.TIMEOUT)
        if not ready:
            common.fail("timed out waiting for responses")
        for key, _ in ready:
            if not key.data.pump():
                common.fail("agent closed a connection early")
    matched = sum(1 for c, s, path in ids if c.streams[s]["status"] == "200" and c.body(s) == "GET " + path)
    summary = {
        "offers": offers,
        "matched": matched,
        "echo_ok": conns[0].streams[echo]["body"] == payload,
        "large": len(conns[1].streams[big]["body"]) if conns[1].streams[big]["done"] else -1,
    }
    for c in conns:
        c.close()
    emit({"summary": summary})


def reset(lsock):
    sock = accept(lsock)
    offer(sock)
    c = Conn(sock)
    broken = c.request("GET", "/broken")
    big = c.request("GET", "/large")
    c.reset_after_data.add(big)
    c.send()
    c.until(lambda: c.finished(broken) and c.finished(big))
    after = c.request("GET", "/after")
    c.send()
    c.until(lambda: c.finished(after))
    summary = {
        "broken_reset": c.streams[broken]["reset"],
        "broken_done": c.streams[broken]["done"],
        "large_reset": c.streams[big]["reset"],
        "after": c.body(after),
    }
    c.close()
    emit({"summary": summary})


def goaway(lsock):
    sock = accept(lsock)
    offer(sock)
    c = Conn(sock)
    first = c.request("GET", "/first")
    c.send()
    c.until(lambda: c.finished(first))
    c.close()
    emit({"event": "goaway sent"})
    sock = accept(lsock)
    offer(sock)
    d = Conn(sock)
    second = d.request("GET", "/second")
    d.send()
    d.until(lambda: d.finished(second))
    summary = {"first": c.body(first), "second": d.body(second)}
    d.close()
    emit({"summary": summary})


def one(lsock, path):
    """path is the index of the request path in PATHS (arguments are integers)."""
    sock = accept(lsock)
    offer(sock)
    c = Conn(sock)
    sid = c.request("GET", PATHS[path])
    c.send()
    c.until(lambda: c.finished(sid))
    s = c.streams[sid]
    summary = {"status": s["status"], "body": c.body(sid), "headers": c.headers.get(sid, {})}
    c.close()
    emit({"summary": summary})


PATHS = ["/x", "/a/../b?q=1"]


def ws(lsock):
    """Extended CONNECT (RFC 8441) with :protocol websocket: bytes go up and come back."""
    sock = accept(lsock)
    offer(sock)
    c = Conn(sock)
    while c.h2.remote_settings.enable_connect_protocol != 1:
        if not c.pump():
            common.fail("agent closed before its SETTINGS")
    sid = c.h2.get_next_available_stream_id()
    c.h2.send_headers(
        sid,
        [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "http"),
         (":authority", "app.example"), (":path", "/ws"), ("sec-websocket-version", "13")],
    )
    c.streams[sid] = {"path": "/ws", "body": b"", "status": None, "done": False, "reset": None}
    c.send()
    c.until(lambda: c.streams[sid]["status"] is not None)
    status = c.streams[sid]["status"]
    message = b"hello through the tunnel"
    if status == "200":
        c.h2.send_data(sid, message)
        c.send()
        c.until(lambda: len(c.streams[sid]["body"]) >= len(message) or c.finished(sid))
        c.h2.end_stream(sid)
        c.send()
        c.until(lambda: c.finished(sid))
    summary = {"status": status, "headers": c.headers.get(sid, {}), "echo": c.body(sid)}
    c.close()
    emit({"summary": summary})


def http11(lsock):
    sock = accept(lsock)
    o = offer(sock)
    sock.sendall(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: ptth\r\nALPN: http%2F1.1\r\n\r\n"
        b"GET /h1 HTTP/1.1\r\nHost: app.example\r\n\r\n"
    )
    status, fields, rest = common.read_head(sock)
    length = int(fields["content-length"][0])
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    sock.close()
    emit({"summary": {"offer": o, "status": status, "body": rest.decode("latin-1")}})


def refuse(lsock):
    offers = []
    sock = accept(lsock)
    offers.append(offer(sock))
    body = b"Upgrade: ptth needs an ALPN field naming the protocols to run\n"
    sock.sendall(
        b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
        % (len(body), body)
    )
    sock.close()
    sock = accept(lsock)
    offers.append(offer(sock))
    sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: ptth\r\n\r\n")
    sock.close()
    emit({"summary": {"offers": offers}})


def main():
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    lsock.settimeout(common.TIMEOUT)
    print(lsock.getsockname()[1], flush=True)
    scenario, args = sys.argv[1], [int(a) for a in sys.argv[2:]]
    {"many": many, "reset": reset, "goaway": goaway, "one": one, "ws": ws, "http11": http11, "refuse": refuse}[
        scenario
    ](lsock, *args)


main()
