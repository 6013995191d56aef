#!/usr/bin/env python3
"""The NAT test's upstream: a tiny HTTP/1.1 origin (stdlib only) that lives in the `home`
namespace, behind the NAT.

GET /hello   -> "Hello, world!"
POST /echo   -> the request body, byte for byte (Content-Length framed)
GET /stream  -> 5 chunks "tick N\n", STREAM_GAP seconds apart (chunked)
"""
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STREAM_GAP = 0.3
COPY_CHUNK = 64 * 1024


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.endswith("/hello"):
            body = b"Hello, world!"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path.endswith("/stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(5):
                chunk = f"tick {i}\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
                time.sleep(STREAM_GAP)
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_error(404)

    def do_POST(self):
        if not self.path.endswith("/echo"):
            self.send_error(404)
            return
        left = int(self.headers.get("Content-Length") or 0)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(left))
        self.end_headers()
        while left > 0:
            data = self.rfile.read(min(COPY_CHUNK, left))
            if not data:
                break
            self.wfile.write(data)
            left -= len(data)


if __name__ == "__main__":
    host, port = sys.argv[1], int(sys.argv[2])
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer((host, port), Handler).serve_forever()
