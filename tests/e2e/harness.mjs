// Shared by the end-to-end tests: starts the real `parley` daemon with a
// temporary config and data directory on free 127.0.0.1 ports, and launches
// Debian's Chromium (never a downloaded browser) with fake camera and microphone.
//
// Tools the tests need: the daemon binary (`cargo build -p parleyd`, or
// PARLEY_BIN), /usr/bin/chromium (Debian package `chromium`, or CHROMIUM_BIN)
// and `npm ci` in tests/e2e for playwright-core. A missing tool fails loudly.

import { execFileSync, spawn } from "node:child_process";
import { after, before } from "node:test";
import { createSocket } from "node:dgram";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
export const repoRoot = resolve(here, "../..");

export function daemonBinary() {
  const path = process.env.PARLEY_BIN ?? join(repoRoot, "target/debug/parley");
  if (!existsSync(path)) {
    throw new Error(`the parley binary is missing at ${path}: run \`cargo build -p parleyd\` first, or set PARLEY_BIN`);
  }
  return path;
}

export function chromiumBinary() {
  const path = process.env.CHROMIUM_BIN ?? "/usr/bin/chromium";
  if (!existsSync(path)) {
    throw new Error(`Chromium is missing at ${path}: install Debian's package (apt-get install -y chromium), or set CHROMIUM_BIN`);
  }
  return path;
}

/** A TCP port that is free now (the daemon binds it a moment later). */
export async function freeTcpPort() {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolvePort(port));
    });
  });
}

async function udpPortFree(port) {
  return new Promise((resolveFree) => {
    const socket = createSocket("udp4");
    socket.once("error", () => resolveFree(false));
    socket.bind(port, "127.0.0.1", () => socket.close(() => resolveFree(true)));
  });
}

/** A port free for both TCP and UDP (TURN listens on both). */
async function freeTurnPort() {
  for (let attempt = 0; attempt < 20; attempt++) {
    const port = await freeTcpPort();
    if (await udpPortFree(port)) return port;
  }
  throw new Error("no port free for both TCP and UDP on 127.0.0.1");
}

function toml(value) {
  if (typeof value === "string") return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map(toml).join(", ")}]`;
  return String(value);
}

/** How the daemon's log shows a listener that could not bind (EADDRINUSE's text from Rust's std). */
const ADDRESS_IN_USE = "(os error 98)";

/**
 * Starts the daemon. `config` is merged over the test defaults, section by
 * section, e.g. `{ calls: { ring_timeout_secs: 3 } }`. The free ports are only
 * free when picked: if something binds one before the daemon does, it exits on
 * EADDRINUSE and starts again on new ports, three times in all.
 */
export async function startDaemon(config = {}) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await startDaemonOnce(config);
    } catch (error) {
      if (attempt >= 3 || !String(error.message).includes(ADDRESS_IN_USE)) throw error;
    }
  }
}

async function startDaemonOnce(config) {
  const binary = daemonBinary();
  const dir = await mkdtemp(join(tmpdir(), "parley-e2e-"));
  const httpPort = await freeTcpPort();
  const turnPort = await freeTurnPort();
  // A private slice of the relay port range, so parallel runs do not collide.
  const relayLow = 40000 + Math.floor(Math.random() * 90) * 100;
  const sections = {
    http: { listen: `127.0.0.1:${httpPort}` },
    storage: { data_dir: join(dir, "data") },
    turn: {
      listen: `127.0.0.1:${turnPort}`,
      relay_ports: `${relayLow}-${relayLow + 99}`,
      // The browsers are on loopback too; the relay refuses loopback peers unless allowed.
      allowed_peer_ranges: ["127.0.0.0/8"],
    },
    webrtc: { ice_transport_policy: "relay" },
    // Registrations count against this per address, and every test user registers from 127.0.0.1.
    auth: { login_attempts_per_minute: 1000 },
    log: { level: "info" },
  };
  for (const [section, values] of Object.entries(config)) {
    sections[section] = { ...(sections[section] ?? {}), ...values };
  }
  const text = Object.entries(sections)
    .map(([section, values]) => `[${section}]\n${Object.entries(values).map(([key, value]) => `${key} = ${toml(value)}`).join("\n")}\n`)
    .join("\n");
  const configPath = join(dir, "parley.toml");
  await writeFile(configPath, text);

  const output = [];
  let child;
  let exited = null;
  let exit;
  const launch = () => {
    exited = null;
    child = spawn(binary, ["serve"], {
      env: { ...process.env, PARLEY_CONFIG: configPath, RUST_BACKTRACE: "1" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    child.stdout.on("data", (chunk) => output.push(chunk.toString()));
    child.stderr.on("data", (chunk) => output.push(chunk.toString()));
    exit = new Promise((resolveExit) =>
      child.on("exit", (code, signal) => {
        exited = { code, signal };
        resolveExit(exited);
      }),
    );
  };
  launch();

  const url = `http://127.0.0.1:${httpPort}`;
  const halt = async () => {
    if (!exited) {
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 5000);
      await exit;
      clearTimeout(timer);
    }
  };
  const daemon = {
    url,
    httpPort,
    turnPort,
    dir,
    configPath,
    logs: () => output.join(""),
    /** Stops the process (SIGTERM), keeping its data, so a test can see clients without a server. */
    halt,
    /** Starts it again on the same ports and data after `halt`. */
    async resume() {
      launch();
      await waitReady();
    },
    async stop() {
      await halt();
      await rm(dir, { recursive: true, force: true });
    },
  };

  const waitReady = async () => {
    const deadline = Date.now() + 30_000;
    for (;;) {
      if (exited) {
        await rm(dir, { recursive: true, force: true });
        throw new Error(`the daemon exited during start-up (${JSON.stringify(exited)}):\n${daemon.logs()}`);
      }
      try {
        const response = await fetch(`${url}/readyz`);
        if (response.ok) break;
      } catch {
        // Not listening yet.
      }
      if (Date.now() > deadline) {
        await daemon.stop();
        throw new Error(`the daemon was not ready within 30 s:\n${daemon.logs()}`);
      }
      await new Promise((resolveWait) => setTimeout(resolveWait, 100));
    }
  };
  await waitReady();
  if (process.env.PARLEY_E2E_CLIENT) {
    // Working on the client: serve that build in front of the daemon (devproxy.mjs).
    const { startClientProxy } = await import("./devproxy.mjs");
    const proxy = await startClientProxy(process.env.PARLEY_E2E_CLIENT, httpPort);
    daemon.url = `http://127.0.0.1:${proxy.port}`;
    const stop = daemon.stop;
    daemon.stop = async () => {
      await proxy.close();
      await stop();
    };
  }
  return daemon;
}

/**
 * Chromium flags from shared/testing-webrtc.md. `loopback: false` leaves out loopback ICE
 * candidates; `hostResolverRules` replaces the loopback-only name resolution.
 */
export function chromiumArgs({
  fakeMedia = true,
  grantMedia = true,
  loopback = true,
  hostResolverRules = "MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1",
} = {}) {
  return [
    ...(fakeMedia ? ["--use-fake-device-for-media-stream"] : []),
    ...(grantMedia ? ["--use-fake-ui-for-media-stream"] : []),
    ...(loopback ? ["--allow-loopback-in-peer-connection"] : []),
    // No background look-ups of outside hosts; by default only loopback resolves.
    `--host-resolver-rules=${hostResolverRules}`,
    "--disable-background-networking",
    "--no-first-run",
    "--no-default-browser-check",
  ];
}

/**
 * Launches Debian's Chromium headless; `HOME` is a temp dir (crash reports go there), removed
 * on close. `options` are chromiumArgs' plus: `extraArgs`, appended; `trustCa`, a PEM file of a
 * CA that Chromium trusts through an NSS database in that HOME (the system store is never
 * touched); `executablePath`, instead of Chromium itself (e.g. a script that enters a network
 * namespace and execs it).
 */
export async function launchBrowser({ extraArgs = [], trustCa, executablePath = chromiumBinary(), ...options } = {}) {
  const home = await mkdtemp(join(tmpdir(), "parley-chromium-"));
  if (trustCa) {
    const nssdb = join(home, ".pki/nssdb");
    await mkdir(nssdb, { recursive: true });
    execFileSync("/usr/bin/certutil", ["-N", "-d", `sql:${nssdb}`, "--empty-password"]);
    execFileSync("/usr/bin/certutil", ["-A", "-t", "C,,", "-n", "parley-test-ca", "-i", trustCa, "-d", `sql:${nssdb}`]);
  }
  const browser = await chromium.launch({
    executablePath,
    headless: true,
    args: [...chromiumArgs(options), ...extraArgs],
    env: { ...process.env, HOME: home },
    timeout: 30_000,
  });
  const close = browser.close.bind(browser);
  browser.close = async () => {
    await close();
    await rm(home, { recursive: true, force: true });
  };
  return browser;
}

/**
 * The page's live peer connection from getStats() (null before the first one): its states, the
 * selected pair's two ends (`local`, `remote`; `localCandidateType`, `relayProtocol` and `url`
 * repeat the local end's), what arrived, and for failure messages every candidate gathered and
 * offered and how each pair's checks went. Needs `instrumentation()` on the page.
 */
export async function callStats(page) {
  return page.evaluate(async () => {
    const pc = window.__probe.pcs.filter((candidate) => candidate.connectionState !== "closed").at(-1);
    if (!pc) return null;
    const report = await pc.getStats();
    const stats = [...report.values()];
    const transport = stats.find((stat) => stat.type === "transport" && stat.selectedCandidatePairId);
    const pair = transport && report.get(transport.selectedCandidatePairId);
    const pick = (candidate) =>
      candidate && {
        candidateType: candidate.candidateType,
        protocol: candidate.protocol,
        relayProtocol: candidate.relayProtocol,
        address: candidate.address,
        port: candidate.port,
        relatedAddress: candidate.relatedAddress,
        url: candidate.url,
      };
    const local = pick(pair && report.get(pair.localCandidateId));
    const audio = stats.find((stat) => stat.type === "inbound-rtp" && stat.kind === "audio");
    const video = stats.find((stat) => stat.type === "inbound-rtp" && stat.kind === "video");
    const candidates = (type) =>
      stats.filter((stat) => stat.type === type).map((c) => `${c.candidateType}${c.relayProtocol ? `/${c.relayProtocol}` : ""} ${c.protocol} ${c.address}:${c.port}${c.url ? ` ${c.url}` : ""}`);
    return {
      origin: location.origin,
      connectionState: pc.connectionState,
      iceConnectionState: pc.iceConnectionState,
      gathered: candidates("local-candidate"),
      offered: candidates("remote-candidate"),
      pairs: stats.filter((stat) => stat.type === "candidate-pair").map((p) => `${report.get(p.localCandidateId)?.candidateType}->${report.get(p.remoteCandidateId)?.candidateType} ${p.state} sent ${p.requestsSent ?? 0}/recv ${p.responsesReceived ?? 0}`),
      local,
      remote: pick(pair && report.get(pair.remoteCandidateId)),
      localCandidateType: local?.candidateType,
      relayProtocol: local?.relayProtocol,
      url: local?.url,
      audioBytes: audio?.bytesReceived ?? 0,
      audioEnergy: audio?.totalAudioEnergy ?? 0,
      videoBytes: video?.bytesReceived ?? 0,
      videoFrames: video?.framesDecoded ?? 0,
    };
  });
}

/**
 * Instruments a page before the client loads: records peer connections,
 * captured streams, ring-tone oscillators and notifications, so tests can
 * assert on what the browser really did without hooks in the client.
 */
export function instrumentation({ hidden = false, notifications } = {}) {
  // A hidden tab gets notifications by default (the old tests' set-up); `notifications:
  // "default"` starts with the question not yet asked, as for a new user.
  const permission = notifications ?? (hidden ? "granted" : null);
  return `(() => {
    const probe = (window.__probe = { pcs: [], streams: [], displays: [], oscillators: 0, notifications: [], permissionRequests: 0, hidden: ${hidden}, badges: [] });
    const NativePC = window.RTCPeerConnection;
    window.RTCPeerConnection = class extends NativePC {
      constructor(...args) { super(...args); probe.pcs.push(this); }
    };
    if (navigator.mediaDevices && navigator.mediaDevices.getUserMedia) {
      const gum = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
      navigator.mediaDevices.getUserMedia = async (constraints) => {
        const stream = await gum(constraints);
        probe.streams.push(stream);
        return stream;
      };
    }
    if (navigator.mediaDevices && navigator.mediaDevices.getDisplayMedia) {
      const gdm = navigator.mediaDevices.getDisplayMedia.bind(navigator.mediaDevices);
      navigator.mediaDevices.getDisplayMedia = async (constraints) => {
        const stream = await gdm(constraints);
        probe.displays.push(stream);
        return stream;
      };
    }
    // The Badging API exists only for installed apps on some platforms: record calls to it either way.
    navigator.setAppBadge = (count) => { probe.badges.push(count ?? 0); return Promise.resolve(); };
    navigator.clearAppBadge = () => { probe.badges.push(0); return Promise.resolve(); };
    const createOscillator = AudioContext.prototype.createOscillator;
    AudioContext.prototype.createOscillator = function () { probe.oscillators++; return createOscillator.call(this); };
    // Visibility the test controls (setHidden): headless pages are always visible.
    Object.defineProperty(Document.prototype, "hidden", { get: () => probe.hidden });
    Object.defineProperty(Document.prototype, "visibilityState", { get: () => (probe.hidden ? "hidden" : "visible") });
    if (${JSON.stringify(permission)} !== null) {
      let permission = ${JSON.stringify(permission)};
      window.Notification = class {
        static get permission() { return permission; }
        static requestPermission() { probe.permissionRequests++; permission = "granted"; return Promise.resolve(permission); }
        constructor(title, options) { probe.notifications.push({ title, body: options && options.body, closed: false }); this.index = probe.notifications.length - 1; }
        close() { probe.notifications[this.index].closed = true; }
      };
    }
  })();`;
}

/** Hides or shows the tab as far as the page can tell (visibilitychange included). */
export async function setHidden(page, hidden) {
  await page.evaluate((value) => {
    window.__probe.hidden = value;
    document.dispatchEvent(new Event("visibilitychange"));
  }, hidden);
}

/** A browser context for one person, instrumented, with its console kept for failure reports. */
export async function newPerson(browser, daemon, { hidden = false, notifications, viewport, colorScheme } = {}) {
  const context = await browser.newContext({ viewport: viewport ?? { width: 1000, height: 760 }, colorScheme: colorScheme ?? "light" });
  await context.addInitScript(instrumentation({ hidden, notifications }));
  const page = await context.newPage();
  const consoleLines = [];
  page.on("console", (message) => consoleLines.push(`[${message.type()}] ${message.text()}`));
  page.on("pageerror", (error) => consoleLines.push(`[pageerror] ${error.message}`));
  await page.goto(daemon.url);
  return { context, page, console: consoleLines };
}

let counter = 0;

/** A unique username per test run (the daemon is shared by a file's tests). */
export function uniqueName(base) {
  counter += 1;
  return `${base}${counter}${Math.random().toString(36).slice(2, 6)}`;
}

/** Creates an account over the HTTP API (fast set-up for tests not about sign-up). */
export async function registerUser(daemon, username, password, displayName) {
  const response = await fetch(`${daemon.url}/api/v1/auth/register`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ username, password, displayName }),
  });
  if (response.status !== 201) {
    throw new Error(`registering ${username} answered ${response.status}: ${await response.text()}`);
  }
  return response.json();
}

/** Signs in through the UI and waits for the directory. */
export async function signIn(page, username, password) {
  await page.getByLabel("Username").fill(username);
  await page.getByLabel("Password", { exact: true }).fill(password);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("button", { name: "Sign out" }).waitFor();
  // An empty list has no size, so wait for it to exist rather than to be visible.
  await page.getByRole("list", { name: "People" }).waitFor({ state: "attached" });
  // Signed in means this device is registered with the server too (its `session` arrived):
  // until then a call placed from here, or over HTTP for this user, is DEVICE_REQUIRED.
  await page.getByText("Connecting to server…").waitFor({ state: "hidden" });
}

/** The list item for a person in the directory. */
export function personItem(page, displayName) {
  return page
    .getByRole("list", { name: "People" })
    .getByRole("listitem")
    .filter({ has: page.getByText(displayName, { exact: true }) });
}

/** Resolves when `check` returns truthy, polling; fails with `what` after `ms`. */
export async function eventually(what, check, ms = 15_000) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last) return last;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what} (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
    await new Promise((resolveWait) => setTimeout(resolveWait, 150));
  }
}

/**
 * The usual test file's fixture: one daemon and one browser for the file (started in
 * `before`, stopped in `after`, with every tab it opened), and `person(displayName)`, which
 * registers a new user and returns a signed-in tab. Read `scene.daemon` after `before` ran.
 */
export function scene(config = {}) {
  const state = { daemon: undefined, browser: undefined, tabs: [] };
  before(async () => {
    state.daemon = await startDaemon(config);
    state.browser = await launchBrowser();
  });
  after(async () => {
    for (const tab of state.tabs) await tab.context.close().catch(() => {});
    await state.browser?.close();
    await state.daemon?.stop();
  });
  return {
    get daemon() {
      return state.daemon;
    },
    get browser() {
      return state.browser;
    },
    /** `options` as for newPerson (hidden, notifications, viewport, colorScheme). */
    async person(displayName, options = {}) {
      const username = uniqueName(displayName.replace(/\W/g, "").toLowerCase());
      await registerUser(state.daemon, username, "correct horse battery", displayName);
      const tab = await newPerson(state.browser, state.daemon, options);
      state.tabs.push(tab);
      tab.username = username;
      await signIn(tab.page, username, "correct horse battery");
      return tab;
    },
  };
}

let axeSource;

/**
 * Runs axe-core on the page as it is now and returns the serious and critical
 * violations, each as "rule: target (summary)". The script is evaluated through
 * the DevTools protocol, so the page's CSP (no inline script) does not block it.
 */
export async function axeViolations(page, { include } = {}) {
  axeSource ??= await readFile(join(here, "node_modules/axe-core/axe.min.js"), "utf8");
  if (!(await page.evaluate(() => typeof window.axe !== "undefined"))) await page.evaluate(axeSource);
  const results = await page.evaluate(
    (context) => window.axe.run(context ?? document, { resultTypes: ["violations"] }),
    include ?? null,
  );
  return results.violations
    .filter((violation) => violation.impact === "serious" || violation.impact === "critical")
    .flatMap((violation) =>
      violation.nodes.map((node) => `${violation.id}: ${node.target.join(" ")} (${node.failureSummary?.split("\n").slice(1).join(" ").trim()})`),
    );
}
