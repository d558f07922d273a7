// The parts of a matrix scenario that do not depend on its topology: a test CA and a server
// certificate for the test host name, the daemon inside the server namespace, Chromium inside a
// client namespace trusting that CA through its own NSS database, and a video call A → B through
// the bundled web client with the route and the media read from getStats().
//
// Tools: root, iproute2, nftables, openssl, certutil (libnss3-tools), /usr/bin/chromium (or
// CHROMIUM_BIN), the daemon (`cargo build -p parleyd`, or PARLEY_BIN), and `npm ci` here and in
// tests/e2e (whose harness.mjs lends the sign-in and directory helpers).

import assert from "node:assert/strict";
import { chmod, mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { callStats, chromiumBinary, daemonBinary, eventually, instrumentation, launchBrowser as launchHarnessBrowser, personItem, signIn } from "../e2e/harness.mjs";
import { run } from "./topology.mjs";

/** The host name people (and ICE URLs) use; each browser maps it to the address it should reach. */
export const HOST = "parley.test";
const PASSWORD = "correct horse battery";

/**
 * A test CA and a certificate for HOST (and the given IPs) signed by it, in `dir`.
 * Returns the file paths.
 */
export async function makePki(dir, ips) {
  const ca = { cert: join(dir, "ca.crt"), key: join(dir, "ca.key") };
  const server = { cert: join(dir, "server.crt"), key: join(dir, "server.key"), csr: join(dir, "server.csr") };
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
  await run("openssl", ["req", "-x509", ...ec, "-keyout", ca.key, "-out", ca.cert, "-days", "2",
    "-subj", "/CN=Parley netns matrix test CA",
    "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
  await run("openssl", ["req", ...ec, "-keyout", server.key, "-out", server.csr, "-subj", `/CN=${HOST}`]);
  const extensions = join(dir, "server.ext");
  await writeFile(extensions, [
    "basicConstraints=CA:FALSE",
    "keyUsage=critical,digitalSignature",
    "extendedKeyUsage=serverAuth",
    `subjectAltName=DNS:${HOST},${ips.map((ip) => `IP:${ip}`).join(",")}`,
  ].join("\n") + "\n");
  await run("openssl", ["x509", "-req", "-in", server.csr, "-CA", ca.cert, "-CAkey", ca.key, "-CAcreateserial",
    "-out", server.cert, "-days", "2", "-extfile", extensions]);
  return { ca, server };
}

function toml(value) {
  if (typeof value === "string") return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map(toml).join(", ")}]`;
  return String(value);
}

/**
 * Starts `parley serve` in the server namespace with TLS from the test CA and `config`
 * merged over these defaults section by section; waits for /readyz from inside the namespace.
 * `reach` is the address the readiness probe connects to.
 */
export async function startDaemon(net, { dir, pki, reach, config }) {
  const sections = {
    http: { public_url: `https://${HOST}` },
    tls: { enabled: true, cert: pki.server.cert, key: pki.server.key, self_signed: false },
    storage: { data_dir: join(dir, "data") },
    turn: { relay_ports: "50000-50199" },
    // The topology decides the path, not the policy.
    webrtc: { ice_transport_policy: "all" },
    log: { level: "info" },
  };
  for (const [section, values] of Object.entries(config)) sections[section] = { ...(sections[section] ?? {}), ...values };
  const text = Object.entries(sections)
    .map(([section, values]) => `[${section}]\n${Object.entries(values).map(([k, v]) => `${k} = ${toml(v)}`).join("\n")}\n`)
    .join("\n");
  const configPath = join(dir, "parley.toml");
  await writeFile(configPath, text);

  const output = [];
  const child = net.spawn("server", daemonBinary(), ["serve"], {
    // Only this config: a PARLEY_* variable of the test's own environment (PARLEY_BIN) is no key.
    env: { ...Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.startsWith("PARLEY_"))), PARLEY_CONFIG: configPath, RUST_BACKTRACE: "1" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  child.stdout.on("data", (chunk) => output.push(chunk.toString()));
  child.stderr.on("data", (chunk) => output.push(chunk.toString()));
  const logs = () => output.join("");
  let exited = null;
  child.on("exit", (code, signal) => (exited = { code, signal }));

  // The probe runs inside the server namespace: nothing of the test reaches the host's network.
  const probe = `
    const https = require("node:https");
    const request = https.get({ host: ${JSON.stringify(reach)}, port: 443, path: "/readyz", servername: ${JSON.stringify(HOST)},
      ca: require("node:fs").readFileSync(${JSON.stringify(pki.ca.cert)}), timeout: 2000 }, (response) => {
      process.exit(response.statusCode === 200 ? 0 : 1);
    });
    request.on("error", () => process.exit(1));
    request.on("timeout", () => process.exit(1));`;
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (exited) throw new Error(`the daemon exited during start-up (${JSON.stringify(exited)}):\n${logs()}`);
    const ready = await net.exec("server", process.execPath, ["-e", probe], { timeout: 5000 }).then(() => true, () => false);
    if (ready) break;
    if (Date.now() > deadline) throw new Error(`the daemon was not ready within 30 s:\n${logs()}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  return { configPath, logs, child };
}

/**
 * Launches Chromium inside the client namespace `role`. `hostAddress` is where HOST resolves
 * for this browser (IPv6 without brackets). The browser's HOME holds an NSS database that
 * trusts the test CA and nothing else of ours: the system store is never touched.
 */
export async function launchBrowser(net, role, { dir, pki, hostAddress }) {
  // Playwright starts this script; `ip netns exec` replaces itself with Chromium, so the
  // DevTools pipe Playwright opened is Chromium's own.
  const wrapper = join(dir, `chromium-${role}.sh`);
  await writeFile(wrapper, `#!/bin/sh\nexec ip netns exec ${net.ns(role)} ${chromiumBinary()} "$@"\n`);
  await chmod(wrapper, 0o755);

  const target = hostAddress.includes(":") ? `[${hostAddress}]` : hostAddress;
  return launchHarnessBrowser({
    executablePath: wrapper,
    trustCa: pki.ca.cert,
    // Only the scenario's addresses take part in ICE.
    loopback: false,
    // HOST goes where the scenario says; no other name resolves (no look-ups of outside hosts).
    // IP literals pass through these rules too (TURN over TCP/TLS to an IP does): exclude the
    // server's address, or such a connection fails with ICE error 701.
    hostResolverRules: `MAP ${HOST} ${target} , MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE ${hostAddress}`,
  });
}

/** A tab on https://HOST/ for `displayName`, registered over the HTTP API and signed in. */
export async function person(browser, displayName) {
  const context = await browser.newContext({ viewport: { width: 1000, height: 760 } });
  await context.addInitScript(instrumentation());
  const page = await context.newPage();
  const consoleLines = [];
  page.on("console", (message) => consoleLines.push(`[${message.type()}] ${message.text()}`));
  page.on("pageerror", (error) => consoleLines.push(`[pageerror] ${error.message}`));
  // The browser starts while its namespace's last addresses settle; one network change is expected.
  for (let attempt = 1; ; attempt++) {
    try {
      await page.goto(`https://${HOST}/`, { timeout: 20_000 });
      break;
    } catch (error) {
      if (attempt >= 3 || !/ERR_NETWORK_CHANGED/.test(error.message)) throw error;
      await new Promise((r) => setTimeout(r, 500));
    }
  }
  const username = displayName.toLowerCase();
  // Registered from the page itself, so over the same network path (and TLS) as the client.
  const status = await page.evaluate(async ({ username, password, displayName }) => {
    const response = await fetch("/api/v1/auth/register", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ username, password, displayName }),
    });
    return `${response.status} ${response.status === 201 ? "" : await response.text()}`;
  }, { username, password: PASSWORD, displayName });
  assert.match(status, /^201 /, `registering ${username}`);
  await signIn(page, username, PASSWORD);
  return { context, page, console: consoleLines };
}

/**
 * Alice places a video call to Bob through the web client, Bob accepts; resolves when media has
 * flowed both ways and kept flowing for 3 s, with both sides' stats at that point.
 */
export async function videoCall(alice, bob) {
  const button = personItem(alice.page, "Bob").getByRole("button", { name: "Video call" });
  await eventually("Bob to be online for Alice", () => button.isEnabled());
  await button.click();
  const dialog = bob.page.getByRole("dialog");
  await dialog.waitFor({ timeout: 15_000 });
  await dialog.getByRole("button", { name: "Accept", exact: true }).click();

  const started = Date.now();
  let first;
  try {
    first = await eventually("media both ways", async () => {
      const both = [await callStats(alice.page), await callStats(bob.page)];
      return both.every((s) => s && s.connectionState === "connected" && s.audioBytes > 0 && s.videoFrames > 0) ? both : null;
    }, 30_000);
  } catch (error) {
    const now = [await callStats(alice.page).catch(() => null), await callStats(bob.page).catch(() => null)];
    error.message += `\nAlice: ${JSON.stringify(now[0])}\nBob: ${JSON.stringify(now[1])}`;
    throw error;
  }
  const connectSecs = (Date.now() - started) / 1000;
  await new Promise((r) => setTimeout(r, 3000));
  const [a, b] = [await callStats(alice.page), await callStats(bob.page)];
  for (const [who, now, before] of [["Alice", a, first[0]], ["Bob", b, first[1]]]) {
    assert.equal(now.connectionState, "connected", `${who} still connected`);
    assert.ok(now.audioBytes > before.audioBytes, `${who} keeps receiving audio: ${JSON.stringify(now)}`);
    assert.ok(now.videoFrames > before.videoFrames + 10, `${who} keeps decoding video: ${JSON.stringify(now)}`);
  }
  return { alice: a, bob: b, connectSecs };
}

/**
 * Runs one scenario: `build(net)` makes the topology and returns
 * `{ daemon: { reach, config }, alice: { hostAddress }, bob: { hostAddress } }`; then the
 * daemon starts, both browsers sign in and call, and `check(result)` asserts on the route.
 * Everything is torn down afterwards, whatever failed.
 */
export async function scenario(net, { certIps, build, check }) {
  const dir = await mkdtemp(join(tmpdir(), "parley-netns-"));
  net.dirs.push(dir);
  const browsers = [];
  let daemon;
  try {
    const pki = await makePki(dir, certIps);
    const plan = await build(net);
    daemon = await startDaemon(net, { dir, pki, ...plan.daemon });
    const aliceBrowser = await launchBrowser(net, "alice", { dir, pki, ...plan.alice });
    browsers.push(aliceBrowser);
    const bobBrowser = await launchBrowser(net, "bob", { dir, pki, ...plan.bob });
    browsers.push(bobBrowser);
    const alice = await person(aliceBrowser, "Alice");
    const bob = await person(bobBrowser, "Bob");
    let result;
    try {
      result = await videoCall(alice, bob);
      await check(result);
    } catch (error) {
      error.message += `\n--- Alice's console:\n${alice.console.slice(-20).join("\n")}\n--- Bob's console:\n${bob.console.slice(-20).join("\n")}\n--- daemon:\n${daemon.logs().slice(-4000)}`;
      throw error;
    }
    return result;
  } finally {
    for (const browser of browsers) await browser.close().catch(() => {});
    await net.teardown();
  }
}
