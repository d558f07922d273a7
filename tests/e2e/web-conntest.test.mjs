// Issue 16: "Test my connection". The web client's test connects two peer connections in the
// page through the daemon's own relay over UDP, TCP and TLS (relay only), and says what that
// means for calls. With Chromium told to send no UDP except through a proxy
// (--webrtc-ip-handling-policy=disable_non_proxied_udp), UDP must fail and TCP carry calls.
// The usual test daemon has no TLS certificate, so TURN over TLS is not offered and the test
// says so; one test gives a daemon a certificate from a test CA that Chromium trusts (an NSS
// database in the browser's $HOME), and TLS works too.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { axeViolations, freeTcpPort, launchBrowser, newPerson, registerUser, signIn, startDaemon, uniqueName } from "./harness.mjs";

let daemon;
let browser;

before(async () => {
  daemon = await startDaemon();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await daemon?.stop();
});

/** The daemon's log records of received diagnostics (`diagnostics: {json}` lines). */
function diagnosticsLogged() {
  return daemon
    .logs()
    .split("\n")
    .map((line) => /diagnostics: (\{.*\})\s*$/.exec(line)?.[1])
    .filter(Boolean)
    .map((json) => JSON.parse(json));
}

/** Opens the test from the link, runs it, and returns the rows and the verdict as shown. */
async function runTest(page) {
  await page.getByRole("link", { name: "Test my connection" }).click();
  const dialog = page.getByRole("dialog", { name: "Test my connection" });
  await dialog.waitFor();
  const started = Date.now();
  await dialog.getByRole("button", { name: "Start the test" }).click();
  await dialog.getByText("Test finished.").waitFor({ timeout: 30_000 });
  const seconds = (Date.now() - started) / 1000;
  const rows = {};
  for (const term of await dialog.locator("dt").all()) {
    rows[await term.innerText()] = await term.locator("xpath=following-sibling::dd[1]").textContent();
  }
  const verdict = await dialog.locator(".test-verdict").innerText();
  return { dialog, rows, verdict, seconds };
}

test("signed out, the test finds the microphone, the camera and the relay over UDP and TCP, and one click logs the result for the admin", async () => {
  const tab = await newPerson(browser, daemon);
  try {
    const { dialog, rows, verdict, seconds } = await runTest(tab.page);
    assert.match(rows["Microphone"], /works/);
    assert.match(rows["Camera"], /works/);
    assert.match(rows["Relay over UDP"], /^Passed: works, \d+ ms round trip$/);
    assert.match(rows["Relay over TCP"], /^Passed: works, \d+ ms round trip$/);
    assert.match(rows["Relay over TLS"], /^Failed: does not work: this server offers no relay over this transport$/);
    assert.equal(verdict, "Calls will work.");
    assert.ok(seconds < 15, `about 10 s, not ${seconds} s`);

    // One click puts the result in the administrator's log.
    await dialog.getByRole("button", { name: "Send to administrator" }).click();
    await dialog.getByText(/^Sent\./).waitFor();
    const [record] = diagnosticsLogged();
    assert.ok(record, `a diagnostics line in the daemon's log:\n${daemon.logs()}`);
    assert.equal(record.kind, "connection-test");
    assert.equal(record.user, null, "sent signed out");
    assert.equal(record.summary, "Calls will work.");
    assert.equal(record.results.udp.ok, true);
    assert.equal(record.results.tcp.ok, true);
    assert.equal(typeof record.results.udp.rttMs, "number");
    assert.equal(record.results.tls.ok, false);
    assert.deepEqual(record.media, { microphone: true, camera: true });
  } finally {
    await tab.context.close();
  }
});

test("with UDP blocked, the test reports UDP failing and says calls will use TCP", async () => {
  const blocked = await launchBrowser({ extraArgs: ["--webrtc-ip-handling-policy=disable_non_proxied_udp"] });
  try {
    const tab = await newPerson(blocked, daemon);
    const { rows, verdict } = await runTest(tab.page);
    assert.match(rows["Relay over UDP"], /^Failed: does not work/);
    assert.match(rows["Relay over TCP"], /^Passed: works, \d+ ms round trip$/);
    assert.equal(verdict, "Calls will work. Your network blocks UDP, so calls will use the relay over TCP.");
  } finally {
    await blocked.close();
  }
});

test("signed in, the test is reachable from home, passes axe in light and dark mode, and a sent result names the user", async () => {
  const username = uniqueName("tester");
  await registerUser(daemon, username, "correct horse battery", "Tess Tester");
  const tab = await newPerson(browser, daemon);
  try {
    await signIn(tab.page, username, "correct horse battery");
    const { dialog, verdict } = await runTest(tab.page);
    assert.equal(verdict, "Calls will work.");
    for (const colorScheme of ["light", "dark"]) {
      await tab.page.emulateMedia({ colorScheme });
      assert.deepEqual(await axeViolations(tab.page), [], `axe on the connection test, ${colorScheme} mode`);
    }
    await dialog.getByRole("button", { name: "Send to administrator" }).click();
    await dialog.getByText(/^Sent\./).waitFor();
    assert.ok(diagnosticsLogged().some((record) => record.user === username), "sent signed in: the log names the user");
    await dialog.getByRole("button", { name: "Close" }).click();
    await dialog.waitFor({ state: "detached" });
    assert.equal(await tab.page.evaluate(() => document.activeElement?.textContent), "Test my connection", "focus returns to the link");
  } finally {
    await tab.context.close();
  }
});

/** A test CA and a certificate for 127.0.0.1 signed by it, in `dir`. */
function makeCertificates(dir) {
  const openssl = (args) => execFileSync("/usr/bin/openssl", args, { cwd: dir, stdio: "pipe" });
  openssl(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=Parley test CA"]);
  openssl(["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem", "-out", "leaf.csr", "-subj", "/CN=127.0.0.1"]);
  openssl(["x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "cert.pem", "-days", "2", "-extfile", "leaf.ext"]);
}

test("with a trusted certificate on the TURN-over-TLS listener, the relay over TLS works too", async () => {
  for (const tool of ["/usr/bin/openssl", "/usr/bin/certutil"]) {
    assert.ok(existsSync(tool), `${tool} is needed (Debian packages openssl and libnss3-tools)`);
  }
  const dir = await mkdtemp(join(tmpdir(), "parley-conntest-tls-"));
  let tlsDaemon;
  let trusting;
  try {
    await writeFile(join(dir, "leaf.ext"), "subjectAltName = IP:127.0.0.1\nextendedKeyUsage = serverAuth\n");
    makeCertificates(dir);
    tlsDaemon = await startDaemon({
      turn: { tls_listen: `127.0.0.1:${await freeTcpPort()}`, tls_cert: join(dir, "cert.pem"), tls_key: join(dir, "key.pem") },
    });
    trusting = await launchBrowser({ trustCa: join(dir, "ca.pem") });
    const tab = await newPerson(trusting, tlsDaemon);
    const { rows, verdict } = await runTest(tab.page);
    assert.match(rows["Relay over UDP"], /^Passed: works/);
    assert.match(rows["Relay over TCP"], /^Passed: works/);
    assert.match(rows["Relay over TLS"], /^Passed: works, \d+ ms round trip$/, `TLS: ${rows["Relay over TLS"]}`);
    assert.equal(verdict, "Calls will work.");
  } finally {
    await trusting?.close();
    await tlsDaemon?.stop();
    await rm(dir, { recursive: true, force: true });
  }
});
