#!/usr/bin/env python3
"""The NAT test's public client (stdlib only). Each check prints one line and exits non-zero
on failure.

client.py get URL EXPECTED_BODY
client.py echo URL BYTES        POST BYTES random bytes, expect them back byte for byte
client.py stream URL            expect 5 ticks, the first well before the last (streamed)
client.py unreachable HOST PORT expect the TCP connect to fail within the timeout
"""
import hashlib
import os
import socket
import sys
import time
import urllib.parse
import http.client

TIMEOUT = 10


def conn(url):
    u = urllib.parse.urlsplit(url)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=TIMEOUT), u.path or "/"


def get(url, expected):
    c, path = conn(url)
    c.request("GET", path)
    r = c.getresponse()
    body = r.read().decode()
    if r.status != 200 or body != expected:
        sys.exit(f"GET {url}: status {r.status}, body {body!r}, expected {expected!r}")
    print(f"GET {url}: 200 {body!r}")


def echo(url, size):
    data = os.urandom(size)
    c, path = conn(url)
    c.request("POST", path, body=data, headers={"Content-Type": "application/octet-stream"})
    r = c.getresponse()
    back = r.read()
    if r.status != 200 or back != data:
        sys.exit(f"POST {url}: status {r.status}, {len(back)} bytes back of {size}, equal={back == data}")
    print(f"POST {url}: {size} bytes echoed byte for byte (sha256 {hashlib.sha256(data).hexdigest()[:16]})")


def stream(url):
    c, path = conn(url)
    start = time.monotonic()
    c.request("GET", path)
    r = c.getresponse()
    first = b""
    while not first.endswith(b"\n"):
        piece = r.read1(64)  # decoded bytes as they arrive
        if not piece:
            break
        first += piece
    t_first = time.monotonic() - start
    rest = r.read()
    t_all = time.monotonic() - start
    lines = (first + rest).decode().splitlines()
    if r.status != 200 or lines != [f"tick {i}" for i in range(5)]:
        sys.exit(f"stream {url}: status {r.status}, lines {lines!r}")
    # The upstream spaces the ticks 0.3 s apart: a streamed response shows the first tick long
    # before the last; a buffered one shows them all at once.
    if not t_first < t_all - 0.6:
        sys.exit(f"stream {url}: first tick at {t_first:.2f}s, all at {t_all:.2f}s: not streamed")
    print(f"stream {url}: first tick after {t_first:.2f}s, last after {t_all:.2f}s (streamed)")


def unreachable(host, port):
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect((host, int(port)))
    except OSError as e:
        print(f"direct connect to {host}:{port} failed as it must: {e or type(e).__name__}")
        return
    sys.exit(f"direct connect to {host}:{port} SUCCEEDED: the home host is reachable, the NAT is not real")


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    {"get": get, "echo": lambda u, n: echo(u, int(n)), "stream": stream, "unreachable": unreachable}[cmd](*args)
