// For working on the web client without rebuilding the daemon: set
// PARLEY_E2E_CLIENT=<a web/dist directory> and the tests' daemon URL points at
// this proxy, which serves that client's files (with the daemon's own security
// headers) and passes everything else, WebSockets included, to the daemon.
// CI never sets it: the tests then load the client embedded in the binary.

import { readFile } from "node:fs/promises";
import { createServer, request } from "node:http";
import { connect } from "node:net";
import { join, normalize } from "node:path";

const TYPES = { html: "text/html; charset=utf-8", js: "text/javascript; charset=utf-8", css: "text/css; charset=utf-8", svg: "image/svg+xml", png: "image/png", webmanifest: "application/manifest+json", json: "application/json" };

export async function startClientProxy(dist, backendPort) {
  const server = createServer(async (req, res) => {
    const path = new URL(req.url, "http://x").pathname;
    if (req.method === "GET" && !path.startsWith("/api/") && !path.startsWith("/socket.io/") && !["/healthz", "/readyz", "/metrics"].includes(path)) {
      const name = normalize(path === "/" || !path.includes(".") ? "index.html" : path.slice(1));
      try {
        const body = await readFile(join(dist, name));
        const headers = await daemonHeaders(backendPort);
        res.writeHead(200, { ...headers, "content-type": TYPES[name.split(".").pop()] ?? "application/octet-stream", "cache-control": "no-store" });
        res.end(body);
        return;
      } catch {
        // Not a client file: ask the daemon.
      }
    }
    const upstream = request({ host: "127.0.0.1", port: backendPort, path: req.url, method: req.method, headers: req.headers }, (reply) => {
      res.writeHead(reply.statusCode, reply.headers);
      reply.pipe(res);
    });
    upstream.on("error", () => {
      res.writeHead(502);
      res.end();
    });
    req.pipe(upstream);
  });
  server.on("upgrade", (req, socket, head) => {
    const upstream = connect(backendPort, "127.0.0.1", () => {
      upstream.write(`${req.method} ${req.url} HTTP/1.1\r\n${Object.entries(req.headers).map(([k, v]) => `${k}: ${v}`).join("\r\n")}\r\n\r\n`);
      upstream.write(head);
      upstream.pipe(socket);
      socket.pipe(upstream);
    });
    upstream.on("error", () => socket.destroy());
    socket.on("error", () => upstream.destroy());
  });
  await new Promise((resolveListen) => server.listen(0, "127.0.0.1", resolveListen));
  return { port: server.address().port, close: () => new Promise((done) => { server.closeAllConnections(); server.close(done); }) };
}

let cached;
async function daemonHeaders(port) {
  if (cached) return cached;
  const headers = await new Promise((resolveHeaders, reject) => {
    const req = request({ host: "127.0.0.1", port, path: "/", method: "HEAD" }, (reply) => resolveHeaders(reply.headers));
    req.on("error", reject);
    req.end();
  });
  cached = {};
  for (const name of ["content-security-policy", "permissions-policy", "x-content-type-options", "referrer-policy", "x-frame-options", "cross-origin-opener-policy"]) {
    if (headers[name]) cached[name] = headers[name];
  }
  return cached;
}
