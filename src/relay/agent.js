// ptth browser agent: serve HTTP from a page, over the relay's long-poll transport
// (spec-notes/long-poll.md). Served by ptth-serve at /.ptth/agent.js; no build step, no
// dependencies.
//
//   const h = ptth.serve("https://relay.example", "demo", async (request) => new Response("hi"),
//                        { token: "secret" });
//   h.url      // the public URL: https://relay.example/demo/
//
// The handler's `request.url` is the URL the public client asked for (under h.url).
//   h.close()  // stop polling
//
// Each poll is a POST that the relay holds until a public request arrives; its body is that
// request in HTTP/1.1 syntax. The handler's Response goes back in reply POSTs: a browser cannot
// stream a request body over HTTP/1.1, so the response body is sent one part per chunk the
// handler's stream yields (PTTH-More: ?1 on every part but the last), and a streamed response
// reaches the public client chunk by chunk.
(function (global) {
  "use strict";
  const enc = new TextEncoder();
  const dec = new TextDecoder();

  function concat(a, b) {
    const out = new Uint8Array(a.length + b.length);
    out.set(a, 0);
    out.set(b, a.length);
    return out;
  }

  function indexOf(buf, seq, from) {
    outer: for (let i = from || 0; i + seq.length <= buf.length; i++) {
      for (let j = 0; j < seq.length; j++) if (buf[i + j] !== seq[j]) continue outer;
      return i;
    }
    return -1;
  }

  const CRLF = enc.encode("\r\n");
  const CRLFCRLF = enc.encode("\r\n\r\n");

  // Reads the poll's body as a byte source: more() waits for the next chunk.
  function source(body) {
    const reader = body.getReader();
    const s = {
      buf: new Uint8Array(0),
      async more() {
        const { value, done } = await reader.read();
        if (done) throw new Error("ptth: the request ended early");
        s.buf = concat(s.buf, value);
      },
      async until(seq) {
        let i;
        while ((i = indexOf(s.buf, seq)) < 0) await s.more();
        const head = s.buf.slice(0, i);
        s.buf = s.buf.slice(i + seq.length);
        return head;
      },
      async take(n) {
        while (s.buf.length < n) await s.more();
        const out = s.buf.slice(0, n);
        s.buf = s.buf.slice(n);
        return out;
      },
    };
    return s;
  }

  // The public request, from the poll's body: request line, fields, body (length or chunked).
  async function readRequest(body, base) {
    const src = source(body);
    const lines = dec.decode(await src.until(CRLFCRLF)).split("\r\n");
    const [method, target] = lines[0].split(" ");
    const headers = new Headers();
    let length = 0;
    let chunked = false;
    for (const line of lines.slice(1)) {
      const colon = line.indexOf(":");
      if (colon <= 0) continue;
      const name = line.slice(0, colon).trim().toLowerCase();
      const value = line.slice(colon + 1).trim();
      if (name === "content-length") length = parseInt(value, 10) || 0;
      else if (name === "transfer-encoding") chunked = /chunked/i.test(value);
      else {
        try { headers.append(name, value); } catch (_) { /* a field fetch forbids */ }
      }
    }
    let data = new Uint8Array(0);
    if (chunked) {
      for (;;) {
        const size = parseInt(dec.decode(await src.until(CRLF)).split(";")[0], 16);
        if (!size) {
          while ((await src.until(CRLF)).length > 0) { /* trailers */ }
          break;
        }
        data = concat(data, await src.take(size));
        await src.until(CRLF);
      }
    } else if (length > 0) {
      data = await src.take(length);
    }
    const init = { method, headers };
    if (method !== "GET" && method !== "HEAD") init.body = data;
    return new Request(base + target.replace(/^\//, ""), init);
  }

  function serve(relayUrl, name, handler, options) {
    options = options || {};
    const relay = relayUrl.replace(/\/+$/, "");
    const endpoint = relay + "/" + name;
    const publicUrl = endpoint + "/";
    const polls = options.polls || 2;
    const auth = options.token ? { authorization: "Bearer " + options.token } : {};
    let closed = false;
    const aborter = new AbortController();

    function post(kind, extra, body) {
      const headers = Object.assign({ "ptth-long-poll": kind }, auth, extra || {});
      return fetch(endpoint, { method: "POST", headers, body, signal: aborter.signal });
    }

    async function reply(id, part, more) {
      const extra = { "ptth-exchange": id, "content-type": "message/http" };
      if (more) extra["ptth-more"] = "?1";
      const res = await post("reply", extra, part);
      if (res.status !== 204) throw new Error("ptth: reply refused: " + res.status);
    }

    async function answer(res, id) {
      let head = "HTTP/1.1 " + res.status + " " + (res.statusText || "") + "\r\n";
      res.headers.forEach((value, key) => {
        if (key !== "content-length" && key !== "transfer-encoding" && key !== "connection") {
          head += key + ": " + value + "\r\n";
        }
      });
      head += "transfer-encoding: chunked\r\n\r\n";
      let part = enc.encode(head);
      if (res.body) {
        const reader = res.body.getReader();
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          if (!value || value.length === 0) continue;
          const chunk = concat(enc.encode(value.length.toString(16) + "\r\n"), concat(value, CRLF));
          await reply(id, concat(part, chunk), true);
          part = new Uint8Array(0);
        }
      }
      await reply(id, concat(part, enc.encode("0\r\n\r\n")), false);
    }

    async function exchange(res) {
      const id = res.headers.get("ptth-exchange");
      let response;
      try {
        const request = await readRequest(res.body, publicUrl);
        response = await handler(request);
      } catch (e) {
        response = new Response("ptth browser agent: " + e + "\n", { status: 500 });
      }
      await answer(response, id);
    }

    async function loop() {
      let backoff = 250;
      while (!closed) {
        try {
          const res = await post("poll");
          if (res.status === 204) { backoff = 250; continue; }
          if (res.status === 200) {
            backoff = 250;
            exchange(res).catch((e) => console.warn("ptth:", e));
            continue;
          }
          const text = await res.text();
          console.warn("ptth: poll refused:", res.status, text);
          if (res.status === 401 || res.status === 403 || res.status === 400) {
            closed = true;
            break;
          }
        } catch (e) {
          if (closed) break;
          console.warn("ptth: poll failed:", e);
        }
        await new Promise((r) => setTimeout(r, backoff));
        backoff = Math.min(backoff * 2, 30000);
      }
    }

    for (let i = 0; i < polls; i++) loop();
    return {
      url: publicUrl,
      close() {
        closed = true;
        aborter.abort();
      },
    };
  }

  global.ptth = { serve };
})(typeof window !== "undefined" ? window : globalThis);
