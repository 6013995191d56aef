"""Shared by the third-party HTTP/2 peers of tests/h2_ptth.rs (the `h2` package from PyPI).

Both peers speak the ptth handshake (draft-kazuho-ptth-ptth) by hand over a plain socket and
then hand the socket to an `h2.connection.H2Connection`. Everything is bounded: a socket
timeout ends a stuck peer, and the Rust test kills the process if it overruns its deadline.
"""

import socket
import sys

import h2.exceptions

TIMEOUT = 30
MAX_HEAD = 16 * 1024


def fail(msg):
    sys.stderr.write("h2 peer: " + msg + "\n")
    sys.exit(1)


def read_head(sock):
    """Read one HTTP/1.1 head; return (start line, {lower name: [values]}, bytes after it)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        if len(buf) > MAX_HEAD:
            fail("head too large")
        chunk = sock.recv(4096)
        if not chunk:
            fail("peer closed during the handshake: %r" % buf)
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields.setdefault(name.strip().lower(), []).append(value.strip())
    return lines[0], fields, rest


def members(fields, name):
    out = []
    for value in fields.get(name, []):
        out.extend(m.strip() for m in value.split(",") if m.strip())
    return out


def alpn_decode(member):
    """RFC 7639: a protocol-id is a token with percent-encoded octets."""
    out = bytearray()
    i = 0
    while i < len(member):
        if member[i] == "%":
            out.append(int(member[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(ord(member[i]))
            i += 1
    return bytes(out)


def connect(port):
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def flush(conn, pending):
    """Send what `pending` (stream id -> bytes) holds as far as flow control allows; end each
    stream whose body is all sent. What the windows do not take yet stays in `pending`."""
    for sid in list(pending):
        body = pending[sid]
        try:
            conn.local_flow_control_window(sid)
        except h2.exceptions.StreamClosedError:
            # Reset by the peer in the same read as the window update that got us here.
            del pending[sid]
            continue
        while body:
            window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
            if window <= 0:
                break
            conn.send_data(sid, body[:window])
            body = body[window:]
        if body:
            pending[sid] = body
        else:
            conn.end_stream(sid)
            del pending[sid]
