// Issue 16: "Test my connection". The web client's test connects two peer connections in the
// page through the daemon's own relay over UDP, TCP and TLS (relay only), and says what that
// means for calls. With Chromium told to send no UDP except through a proxy
// (--webrtc-ip-handling-policy=disable_non_proxied_udp), UDP must fail and TCP carry calls.
// The test daemon has no TLS certificate, so TURN over TLS is not offered: the test says so.

import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { chromium } from "playwright-core";
import { axeViolations, chromiumArgs, chromiumBinary, launchBrowser, newPerson, registerUser, signIn, startDaemon, uniqueName } from "./harness.mjs";

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

/** A headless Chromium like the harness's, with `extra` flags (its HOME removed on close). */
async function launchWith(extra) {
  const home = await mkdtemp(join(tmpdir(), "parley-chromium-"));
  const launched = await chromium.launch({
    executablePath: chromiumBinary(),
    headless: true,
    args: [...chromiumArgs(), ...extra],
    env: { ...process.env, HOME: home },
    timeout: 30_000,
  });
  return {
    browser: launched,
    async close() {
      await launched.close();
      await rm(home, { recursive: true, force: true });
    },
  };
}

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
  const blocked = await launchWith(["--webrtc-ip-handling-policy=disable_non_proxied_udp"]);
  try {
    const tab = await newPerson(blocked.browser, daemon);
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
