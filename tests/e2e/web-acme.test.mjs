// A certificate from a real ACME server, as a browser sees it (issue 12): the daemon gets one
// from Debian's pebble by TLS-ALPN-01 on its HTTPS port, a real Chromium that trusts pebble's
// root (an NSS database in its own $HOME) loads the web client over HTTPS with no certificate
// error, and a call between two of its tabs is relayed over `turns:` on that same HTTPS port:
// the relay's UDP and TCP listeners are off, the ICE policy is "relay", so TURN over TLS on the
// shared port is the only way media can flow (getStats() shows relayProtocol "tls").
//
// Tools: pebble and pebble-challtestsrv (Debian package `pebble`), openssl, certutil
// (`libnss3-tools`), the daemon binary and /usr/bin/chromium. A missing tool fails loudly.
// Everything started is killed and the temporary directory removed in `after`, also on failure.

import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import https from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { callStats, daemonBinary, eventually, freeTcpPort, instrumentation, launchBrowser, personItem, signIn, uniqueName } from "./harness.mjs";

const NAME = "parley.test";

for (const tool of ["/usr/bin/pebble", "/usr/bin/pebble-challtestsrv", "/usr/bin/openssl", "/usr/bin/certutil"]) {
  if (!existsSync(tool)) {
    throw new Error(`${tool} is missing: apt-get install pebble openssl libnss3-tools`);
  }
}

const children = [];
let dir;
let browser;
let daemon;
let pebbleRoot;
const logs = { daemon: [], pebble: [] };

function start(binary, args, env, into) {
  const child = spawn(binary, args, { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  child.stdout.on("data", (chunk) => into.push(chunk.toString()));
  child.stderr.on("data", (chunk) => into.push(chunk.toString()));
  children.push(child);
  return child;
}

/** GET over HTTPS trusting only `ca` (PEM). */
function httpsRequest({ port, host = "127.0.0.1", servername, path, ca, method = "GET", body }) {
  return new Promise((resolveGet, reject) => {
    const request = https.request(
      { host, port, path, method, ca, servername, headers: body ? { "content-type": "application/json" } : {} },
      (response) => {
        let text = "";
        response.on("data", (chunk) => (text += chunk));
        response.on("end", () => resolveGet({ status: response.statusCode, text }));
      },
    );
    request.on("error", reject);
    if (body) request.write(JSON.stringify(body));
    request.end();
  });
}

/** A CA and a 127.0.0.1 leaf signed by it, for pebble's own directory HTTPS. */
function directoryPki() {
  const openssl = (args) => execFileSync("/usr/bin/openssl", args, { cwd: dir, stdio: "pipe" });
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
  openssl(["req", "-x509", ...ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=Parley e2e ACME directory CA"]);
  openssl(["req", ...ec, "-keyout", "key.pem", "-out", "leaf.csr", "-subj", "/CN=127.0.0.1"]);
  return writeFile(join(dir, "leaf.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").then(() =>
    openssl(["x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "cert.pem", "-days", "2", "-extfile", "leaf.ext"]),
  );
}

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "parley-e2e-acme-"));
  await directoryPki();
  const [httpPort, turnPort, directoryPort, managementPort, dnsPort, dnsManagementPort] = await Promise.all(
    Array.from({ length: 6 }, freeTcpPort),
  );
  await writeFile(
    join(dir, "pebble.json"),
    JSON.stringify({
      pebble: {
        listenAddress: `127.0.0.1:${directoryPort}`,
        managementListenAddress: `127.0.0.1:${managementPort}`,
        certificate: join(dir, "cert.pem"),
        privateKey: join(dir, "key.pem"),
        httpPort: await freeTcpPort(),
        tlsPort: httpPort,
        ocspResponderURL: "",
        externalAccountBindingRequired: false,
      },
    }),
  );
  start(
    "/usr/bin/pebble-challtestsrv",
    ["-dns01", `127.0.0.1:${dnsPort}`, "-http01", "", "-https01", "", "-tlsalpn01", "", "-management", `127.0.0.1:${dnsManagementPort}`, "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""],
    {},
    logs.pebble,
  );
  start(
    "/usr/bin/pebble",
    ["-config", join(dir, "pebble.json"), "-dnsserver", `127.0.0.1:${dnsPort}`, "-strict=false"],
    { PEBBLE_VA_NOSLEEP: "1", PEBBLE_WFE_NONCEREJECT: "0" },
    logs.pebble,
  );
  await eventually("pebble's directory", () => logs.pebble.join("").includes("ACME directory available"), 20_000);
  const ca = await readFile(join(dir, "ca.pem"), "utf8");

  const relayLow = 40000 + Math.floor(Math.random() * 90) * 100;
  const config = [
    "[http]",
    `listen = "127.0.0.1:${httpPort}"`,
    `public_url = "https://${NAME}:${httpPort}"`,
    "[tls]",
    "enabled = true",
    "acme = true",
    `acme_directory = "https://127.0.0.1:${directoryPort}/dir"`,
    `acme_ca_roots = "${join(dir, "ca.pem")}"`,
    "[storage]",
    `data_dir = "${join(dir, "data")}"`,
    "[turn]",
    // Only TURN over TLS on the HTTPS port: no UDP, no TCP, no separate TLS listener.
    `listen = "127.0.0.1:${turnPort}"`,
    "udp = false",
    "tcp = false",
    'tls_listen = ""',
    "on_https_port = true",
    `public_host = "${NAME}"`,
    'relay_address = "127.0.0.1"',
    `relay_ports = "${relayLow}-${relayLow + 99}"`,
    'allowed_peer_ranges = ["127.0.0.0/8"]',
    "[webrtc]",
    'ice_transport_policy = "relay"',
    "[auth]",
    "login_attempts_per_minute = 1000",
    "[log]",
    'level = "info"',
  ].join("\n");
  await writeFile(join(dir, "parley.toml"), config + "\n");
  const child = start(daemonBinary(), ["serve"], { PARLEY_CONFIG: join(dir, "parley.toml") }, logs.daemon);
  daemon = { httpPort, url: `https://${NAME}:${httpPort}` };
  await eventually(
    "the daemon to get a certificate from pebble",
    () => {
      if (child.exitCode !== null) throw new Error(`the daemon exited:\n${logs.daemon.join("")}`);
      return logs.daemon.join("").includes("acme: certificate for parley.test issued");
    },
    60_000,
  ).catch((error) => {
    throw new Error(`${error.message}\n${logs.daemon.join("")}\n${logs.pebble.join("")}`);
  });
  const root = await httpsRequest({ port: managementPort, path: "/roots/0", ca });
  assert.equal(root.status, 200, root.text);
  pebbleRoot = root.text;
  await writeFile(join(dir, "pebble-root.pem"), pebbleRoot);

  // Chromium trusts pebble's root through the NSS database of its own $HOME.
  browser = await launchBrowser({
    trustCa: join(dir, "pebble-root.pem"),
    hostResolverRules: `MAP ${NAME} 127.0.0.1 , MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1`,
  });
});

after(async () => {
  await browser?.close().catch(() => {});
  for (const child of children.reverse()) {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM");
      await new Promise((resolveExit) => {
        const timer = setTimeout(() => child.kill("SIGKILL"), 5000);
        child.on("exit", () => {
          clearTimeout(timer);
          resolveExit();
        });
      });
    }
  }
  if (dir) await rm(dir, { recursive: true, force: true });
});

async function register(displayName) {
  const username = uniqueName(displayName.toLowerCase());
  const reply = await httpsRequest({
    port: daemon.httpPort,
    servername: NAME,
    path: "/api/v1/auth/register",
    method: "POST",
    ca: pebbleRoot,
    body: { username, password: "correct horse battery", displayName },
  });
  assert.equal(reply.status, 201, reply.text);
  return username;
}

async function person(displayName) {
  const username = await register(displayName);
  const context = await browser.newContext({ viewport: { width: 1000, height: 760 } });
  await context.addInitScript(instrumentation());
  const page = await context.newPage();
  const response = await page.goto(daemon.url);
  assert.ok(response.ok(), `the web client loads over HTTPS: ${response.status()}`);
  await signIn(page, username, "correct horse battery");
  return { context, page };
}

test("Chromium trusts the ACME certificate: the web client loads over HTTPS with no certificate error", async () => {
  const context = await browser.newContext();
  try {
    const page = await context.newPage();
    // A certificate error makes goto throw (net::ERR_CERT_...): there is no page to click through.
    const response = await page.goto(daemon.url);
    assert.equal(response.status(), 200);
    const security = await response.securityDetails();
    assert.match(security.issuer ?? "", /Pebble Intermediate CA/, JSON.stringify(security));
    assert.equal(security.subjectName, NAME, JSON.stringify(security));
    await page.getByLabel("Username").waitFor();
  } finally {
    await context.close();
  }
});

test("a call is relayed over turns: on the shared HTTPS port", async () => {
  const alice = await person("Alice");
  const bob = await person("Bob");
  try {
    const videoCall = personItem(alice.page, "Bob").getByRole("button", { name: "Video call" });
    await eventually("Bob to be online for Alice", () => videoCall.isEnabled());
    await videoCall.click();
    const dialog = bob.page.getByRole("dialog");
    await dialog.waitFor();
    await dialog.getByRole("button", { name: "Accept", exact: true }).click();
    await dialog.waitFor({ state: "detached" });

    for (const side of [alice, bob]) {
      const stats = await eventually(
        "media relayed over TLS",
        async () => {
          const current = await callStats(side.page);
          return current && current.localCandidateType === "relay" && current.audioBytes > 0 && current.videoFrames > 0 ? current : null;
        },
        30_000,
      ).catch(async (error) => {
        throw new Error(`${error.message}\n${JSON.stringify(await callStats(side.page))}\n${logs.daemon.join("")}`);
      });
      assert.equal(stats.localCandidateType, "relay");
      assert.equal(stats.relayProtocol, "tls", JSON.stringify(stats));
      // Chromium names the ICE server the candidate came from: the shared HTTPS port.
      assert.equal(stats.url, `turns:${NAME}:${daemon.httpPort}?transport=tcp`, JSON.stringify(stats));
    }
  } finally {
    await alice.context.close();
    await bob.context.close();
  }
});
