#!/usr/bin/env python3
"""Drive the inspector page in a real headless Chromium over the DevTools protocol.

Usage: inspector_cdp.py CHROMIUM INSPECTOR_URL RELAY_ADDR NAME SCREENSHOT

Loads the page, sends a public request through the relay, waits for it to appear in the live
list, clicks it, checks the JSON bodies are pretty-printed, clicks Replay, waits for the replay
to appear, and saves a screenshot; then opens an SSE stream that stays open, sees its row
appear at once marked streaming, releases the stream and sees the row completed. Each
wait is a promise in the page (a MutationObserver on the list) with its own deadline, not a
sleep. Exit 0 when all of it happened, 77 when the `websocket` package (websocket-client) is
missing, 1 otherwise.
"""

import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.request

try:
    import websocket  # websocket-client, from PyPI
except ImportError:
    print("skipped: the Python package websocket-client is not installed")
    sys.exit(77)

# Every wait in the page gives up after this many milliseconds.
WAIT_MS = 15000


class Page:
    def __init__(self, ws_url):
        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.next_id = 0
        # Events that came while waiting for an answer, for wait_event.
        self.events = []

    def call(self, method, **params):
        self.next_id += 1
        mine = self.next_id
        self.ws.send(json.dumps({"id": mine, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == mine:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg["method"])

    def wait_event(self, name):
        """Return once the browser has sent the event `name` (seen before or now)."""
        while name not in self.events:
            msg = json.loads(self.ws.recv())
            if "method" in msg:
                self.events.append(msg["method"])
        self.events.remove(name)

    def eval(self, expr):
        res = self.call("Runtime.evaluate", expression=expr, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expr}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def wait_for(self, condition, what):
        """Resolve once `condition` (a JS expression) is true, watching the DOM for changes."""
        js = f"""new Promise((resolve, reject) => {{
            const ok = () => {{ try {{ return !!({condition}); }} catch (_) {{ return false; }} }};
            if (ok()) return resolve(true);
            const obs = new MutationObserver(() => {{ if (ok()) {{ obs.disconnect(); resolve(true); }} }});
            obs.observe(document, {{subtree: true, childList: true, characterData: true, attributes: true}});
            setTimeout(() => {{ obs.disconnect(); reject(new Error("timed out waiting for {what}")); }}, {WAIT_MS});
        }})"""
        self.eval(js)
        print(f"ok: {what}")

    def click(self, selector):
        """A real mouse click at the middle of the element."""
        box = self.eval(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
            f" return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)


def public_request(relay, name, path, body, extra):
    host, port = relay.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    headers = {"Host": relay, "Content-Type": "application/json", **extra}
    conn.request("POST", f"/{name}{path}", body=body, headers=headers)
    res = conn.getresponse()
    res.read()
    conn.close()
    return res.status


def main():
    chromium, inspector, relay, name, screenshot = sys.argv[1:6]
    profile = tempfile.mkdtemp(prefix="ptth-chromium-")
    proc = subprocess.Popen(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
         f"--user-data-dir={profile}", "--window-size=1280,720", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        port = None
        for line in proc.stderr:
            m = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
            if m:
                port = int(m.group(1))
                break
        if port is None:
            print("chromium exited before it listened for DevTools")
            return 1
        # Chromium's own endpoint, on loopback.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as r:
            targets = json.load(r)
        page_target = next(t for t in targets if t["type"] == "page")
        page = Page(page_target["webSocketDebuggerUrl"])
        page.call("Page.enable")
        page.call("Runtime.enable")
        page.events.clear()
        page.call("Page.navigate", url=inspector)
        # The page's own document, not about:blank's, is the one evaluated from here on.
        page.wait_event("Page.loadEventFired")
        page.wait_for("document.getElementById('state') && document.getElementById('state').textContent === 'live'",
                      "the page is live")

        status = public_request(relay, name, "/webhooks/github?delivery=1",
                                json.dumps({"action": "opened", "number": 42,
                                            "pull_request": {"title": "Add the inspector", "draft": False}}),
                                {"Authorization": "Bearer not-for-the-page", "X-GitHub-Event": "pull_request"})
        assert status == 200, status
        page.wait_for("document.querySelectorAll('#list li').length === 1", "the request appears live")
        page.click("#list li")
        page.wait_for("document.getElementById('replay') !== null", "the detail view opens")
        text = page.eval("document.getElementById('detail').innerText")
        assert "Add the inspector" in text, text
        assert "not-for-the-page" not in text and "[redacted]" in text, text
        # JSON bodies are pretty-printed: the request's, and the upstream's response.
        bodies = page.eval("[...document.querySelectorAll('#detail pre.body')].map(p => p.textContent)")
        assert any('\n  "number": 42,' in b for b in bodies), bodies
        assert any('\n  "ok": true' in b for b in bodies), bodies
        print("ok: JSON bodies are pretty-printed")
        page.click("#replay")
        page.wait_for("document.querySelectorAll('#list li').length === 2 && "
                      "document.querySelector('#list li').innerText.includes('replay')",
                      "the replay appears live")
        # Show the replay's detail in the screenshot.
        page.click("#list li")
        page.wait_for("document.getElementById('detail').innerText.includes('replay of')", "the replay's detail")
        shot = page.call("Page.captureScreenshot", format="png")
        import base64
        with open(screenshot, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        print(f"ok: screenshot in {screenshot}")

        # A stream that stays open is listed at once, marked streaming, and completed in place.
        done = {}
        stream = threading.Thread(
            target=lambda: done.setdefault("status", public_request(relay, name, "/events", "", {})))
        stream.start()
        row = "[...document.querySelectorAll('#list li')].filter(li => li.innerText.includes('/events'))"
        page.wait_for(f"{row}.length === 1 && {row}[0].innerText.includes('streaming')",
                      "an open stream is listed, streaming")
        assert public_request(relay, name, "/release", "", {}) == 200
        stream.join(30)
        assert done.get("status") == 200, done
        page.wait_for(f"{row}.length === 1 && !{row}[0].innerText.includes('streaming')",
                      "the stream's row is complete")
        return 0
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
