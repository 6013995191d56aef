"""A third-party ptth REVERSE PROXY: accepts the backend's ptth offer, answers 101 with
ALPN: h2 and its HTTP/2 connection preface in the same segment, then sends requests.

Usage: proxy.py TOGETHER UPLOAD LARGE
Prints the listening port on its first stdout line, then one JSON summary line:
  together: /together responses (all TOGETHER are sent at once on the one connection)
  echo_ok: whether POST /echo with UPLOAD bytes came back whole
  large: bytes of GET /large
  reset: the error code of the /reset stream's RST_STREAM (only that stream)
  after: the body of a GET sent after the reset
Ends with GOAWAY (NO_ERROR) and a close.
"""

import json
import socket
import sys

import h2.config
import h2.connection
import h2.events

import common


def main():
    together, upload, large = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    lsock.settimeout(common.TIMEOUT)
    print(lsock.getsockname()[1], flush=True)
    sock, _ = lsock.accept()
    sock.settimeout(common.TIMEOUT)
    request, fields, rest = common.read_head(sock)
    if not request.startswith("GET ") or rest:
        common.fail("bad offer: %s, %d early bytes" % (request, len(rest)))
    if [m.lower() for m in common.members(fields, "upgrade")] != ["ptth"]:
        common.fail("offer Upgrade: %r" % fields.get("upgrade"))
    offered = [common.alpn_decode(m) for m in common.members(fields, "alpn")]
    if b"h2" not in offered:
        common.fail("offer ALPN: %r" % fields.get("alpn"))

    conn = h2.connection.H2Connection(
        config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    )
    conn.initiate_connection()
    switch = b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: ptth\r\nALPN: h2\r\n\r\n"
    sock.sendall(switch + conn.data_to_send())

    def request(method, path, body=None):
        sid = conn.get_next_available_stream_id()
        headers = [(":method", method), (":scheme", "http"), (":authority", "py.example"), (":path", path)]
        conn.send_headers(sid, headers, end_stream=body is None)
        if body is not None:
            pending[sid] = body
        streams[sid] = {"path": path, "body": b"", "status": None, "done": False, "reset": None}
        return sid

    streams, pending = {}, {}
    payload = bytes(i % 251 for i in range(upload))
    phase = "first"
    together_ids = [request("GET", "/together") for _ in range(together)]
    echo_id = request("POST", "/echo", payload)
    large_id = request("GET", "/large")
    reset_id = request("GET", "/reset")
    after_id = None
    common.flush(conn, pending)
    sock.sendall(conn.data_to_send())

    def finished(ids):
        return all(streams[i]["done"] or streams[i]["reset"] is not None for i in ids)

    while True:
        data = sock.recv(65536)
        if not data:
            common.fail("backend closed before the exchanges were done")
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                streams[event.stream_id]["status"] = dict(event.headers)[":status"]
            elif isinstance(event, h2.events.DataReceived):
                streams[event.stream_id]["body"] += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                streams[event.stream_id]["done"] = True
            elif isinstance(event, h2.events.StreamReset):
                streams[event.stream_id]["reset"] = int(event.error_code)
                pending.pop(event.stream_id, None)
            elif isinstance(event, h2.events.WindowUpdated):
                common.flush(conn, pending)
            elif isinstance(event, h2.events.ConnectionTerminated):
                common.fail("backend sent GOAWAY: %r" % event)
        if phase == "first" and finished(streams):
            after_id = request("GET", "/after")
            phase = "after"
        elif phase == "after" and finished([after_id]):
            break
        sock.sendall(conn.data_to_send())

    summary = {
        "together": sum(
            1 for i in together_ids if streams[i]["done"] and streams[i]["body"] == b"together"
        ),
        "echo_ok": streams[echo_id]["done"] and streams[echo_id]["body"] == payload,
        "large": len(streams[large_id]["body"]) if streams[large_id]["done"] else -1,
        "reset": streams[reset_id]["reset"],
        "after": streams[after_id]["body"].decode("latin-1"),
    }
    conn.close_connection()
    sock.sendall(conn.data_to_send())
    sock.shutdown(socket.SHUT_WR)
    # Wait for the backend to close its side after the GOAWAY.
    while sock.recv(65536):
        pass
    print(json.dumps(summary), flush=True)


main()
