"""A third-party ptth BACKEND: dials the listener with the ptth offer, then serves HTTP/2.

Usage: backend.py PORT TOGETHER LARGE [TARGET [TOKEN]]
  TARGET     the offer's target (default: one origin, http://py.example); TOKEN: a Bearer token
  /together  answered only once TOGETHER of them are open at once (proves multiplexing)
  /echo      the request body back
  /large     LARGE bytes of b"P"
  /reset     a response head and 16 KiB, then RST_STREAM(INTERNAL_ERROR)
  /hold      answered once a line arrives on stdin (tests/relay_h2.rs: the drain)
  /goaway    answered, then GOAWAY(NO_ERROR) with this stream as the last
  other      "PATH from python"
Prints {"switched": true} after the 101, and one JSON summary line on stdout when the listener
ends the connection. An offer that is not switched prints {"refused": STATUS, "body": TEXT}.
"""

import json
import select
import sys

import h2.config
import h2.connection
import h2.errors
import h2.events

import common


def main():
    port, together, large = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    sock = common.connect(port)
    target = sys.argv[4] if len(sys.argv) > 4 else "/.well-known/ptth/http%3A%2F%2Fpy.example/"
    auth = "Authorization: Bearer %s\r\n" % sys.argv[5] if len(sys.argv) > 5 else ""
    sock.sendall(
        (
            "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: upgrade\r\n"
            "Upgrade: ptth\r\nALPN: h2, http%%2F1.1\r\n%s\r\n" % (target, port, auth)
        ).encode()
    )
    status, fields, rest = common.read_head(sock)
    if not status.startswith("HTTP/1.1 101"):
        length = int(fields.get("content-length", ["0"])[0])
        while len(rest) < length:
            chunk = sock.recv(4096)
            if not chunk:
                break
            rest += chunk
        code = int(status.split(" ")[1])
        print(json.dumps({"refused": code, "body": rest.decode("utf-8", "replace")}), flush=True)
        return
    if common.members(fields, "upgrade") != ["ptth"]:
        common.fail("101 Upgrade: %r" % fields.get("upgrade"))
    chosen = [common.alpn_decode(m) for m in common.members(fields, "alpn")]
    if chosen != [b"h2"]:
        common.fail("101 ALPN: %r" % fields.get("alpn"))

    conn = h2.connection.H2Connection(
        config=h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
    )
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    print(json.dumps({"switched": True}), flush=True)

    paths, bodies, waiting, pending, held = {}, {}, [], {}, []
    summary = {"requests": 0, "goaway": None, "preface_in_101_segment": bool(rest)}

    def respond(sid, body):
        conn.send_headers(sid, [(":status", "200"), ("content-length", str(len(body)))])
        pending[sid] = body
        common.flush(conn, pending)

    data = rest
    stdin_open = True
    while True:
        if data:
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    headers = dict(event.headers)
                    paths[event.stream_id] = headers[":path"]
                    bodies[event.stream_id] = b""
                    summary["requests"] += 1
                    if headers[":path"] == "/reset":
                        conn.send_headers(event.stream_id, [(":status", "200")])
                        conn.send_data(event.stream_id, b"r" * 16384)
                        conn.reset_stream(event.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
                elif isinstance(event, h2.events.DataReceived):
                    bodies[event.stream_id] += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    sid = event.stream_id
                    path = paths[sid]
                    if path == "/together":
                        waiting.append(sid)
                        if len(waiting) == together:
                            for w in waiting:
                                respond(w, b"together")
                            waiting.clear()
                    elif path == "/echo":
                        respond(sid, bodies[sid])
                    elif path == "/hold":
                        held.append(sid)
                        print(json.dumps({"held": len(held)}), flush=True)
                    elif path == "/goaway":
                        respond(sid, b"going away")
                        conn.close_connection(error_code=0, last_stream_id=sid)
                    elif path == "/large":
                        respond(sid, b"P" * large)
                    elif path != "/reset":
                        respond(sid, ("%s from python" % path).encode())
                elif isinstance(event, h2.events.WindowUpdated):
                    common.flush(conn, pending)
                elif isinstance(event, h2.events.StreamReset):
                    pending.pop(event.stream_id, None)
                elif isinstance(event, h2.events.ConnectionTerminated):
                    summary["goaway"] = int(event.error_code)
        out = conn.data_to_send()
        if out:
            sock.sendall(out)
        data = b""
        watched = [sock, sys.stdin] if stdin_open else [sock]
        readable, _, _ = select.select(watched, [], [], common.TIMEOUT)
        if not readable:
            common.fail("nothing to read for %d s" % common.TIMEOUT)
        if sys.stdin in readable:
            # At the end of stdin (none was given) only the socket is watched.
            stdin_open = bool(sys.stdin.readline())
            for sid in held:
                respond(sid, b"held, then answered")
            held.clear()
            out = conn.data_to_send()
            if out:
                sock.sendall(out)
        if sock in readable:
            data = sock.recv(65536)
            if not data:
                break
    print(json.dumps(summary), flush=True)


main()
