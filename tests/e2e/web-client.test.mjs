// The web client outside calls: accounts, presence, how it is served, size,
// load time, and a phone-sized screen.

import assert from "node:assert/strict";
import { request } from "node:http";
import { after, before, test } from "node:test";
import { eventually, launchBrowser, newPerson, personItem, registerUser, signIn, startDaemon, uniqueName } from "./harness.mjs";

let daemon;
let browser;
const tabs = [];

before(async () => {
  daemon = await startDaemon();
  browser = await launchBrowser();
});

after(async () => {
  for (const tab of tabs) await tab.context.close().catch(() => {});
  await browser?.close();
  await daemon?.stop();
});

async function tab(options) {
  const opened = await newPerson(browser, daemon, options);
  tabs.push(opened);
  return opened;
}

/** A raw GET (fetch would decompress and hide the transfer size). */
function rawGet(url, headers = {}) {
  return new Promise((resolveGet, reject) => {
    const req = request(url, { headers }, (response) => {
      const chunks = [];
      response.on("data", (chunk) => chunks.push(chunk));
      response.on("end", () => resolveGet({ status: response.statusCode, headers: response.headers, body: Buffer.concat(chunks) }));
    });
    req.on("error", reject);
    req.end();
  });
}

test("create an account, stay signed in across a reload, sign out and in again", async () => {
  const { page } = await tab();
  const username = uniqueName("erin");
  await page.getByLabel("Username").fill(username);
  await page.getByLabel("Password", { exact: true }).fill("correct horse battery");
  await page.getByRole("button", { name: "Create account" }).click();
  await page.getByRole("button", { name: "Sign out" }).waitFor();

  await page.reload();
  await page.getByRole("button", { name: "Sign out" }).waitFor();
  assert.equal(await page.getByRole("button", { name: "Sign in" }).count(), 0);
  const token = await page.evaluate(() => localStorage.getItem("parley.token"));

  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByRole("button", { name: "Sign in" }).waitFor();
  assert.equal(await page.evaluate(() => localStorage.getItem("parley.token")), null);
  // The server revoked the token too.
  const me = await fetch(`${daemon.url}/api/v1/me`, { headers: { Authorization: `Bearer ${token}` } });
  assert.equal(me.status, 401);

  await page.getByLabel("Username").fill(username);
  await page.getByLabel("Password", { exact: true }).fill("wrong password");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByText("Wrong username or password.").waitFor();

  await page.getByRole("button", { name: "Create account" }).click();
  await page.getByText("That username is taken. Choose another one.").waitFor();

  await signIn(page, username, "correct horse battery");
});

test("the directory shows live presence, keyboard operable", async () => {
  const frank = uniqueName("frank");
  const grace = uniqueName("grace");
  await registerUser(daemon, frank, "correct horse battery", "Frank");
  await registerUser(daemon, grace, "correct horse battery", "Grace");
  const { page } = await tab();
  // Keyboard only: type into the fields and press Enter.
  await page.getByLabel("Username").focus();
  await page.keyboard.type(frank);
  await page.keyboard.press("Tab");
  await page.keyboard.type("correct horse battery");
  await page.keyboard.press("Enter");
  await page.getByRole("button", { name: "Sign out" }).waitFor();

  const item = personItem(page, "Grace");
  await item.waitFor();
  assert.match(await item.innerText(), /Offline/);
  const other = await tab();
  await signIn(other.page, grace, "correct horse battery");
  await eventually("Grace online", async () => /Online/.test(await item.innerText()));
  // The buttons are reachable by Tab and named for assistive technology.
  const button = item.getByRole("button", { name: "Audio call" });
  assert.equal(await button.isEnabled(), true);
  await button.focus();
  assert.equal(await page.evaluate(() => document.activeElement?.getAttribute("aria-label")), "Audio call Grace");
  await other.page.getByRole("button", { name: "Sign out" }).click();
  await eventually("Grace offline", async () => /Offline/.test(await item.innerText()));
});

test("served locked down, small, fast and self-contained", async () => {
  const index = await rawGet(`${daemon.url}/`, { "accept-encoding": "gzip" });
  assert.equal(index.status, 200);
  const csp = index.headers["content-security-policy"];
  assert.match(csp, /default-src 'none'/);
  assert.match(csp, /script-src 'self'(;|$)/);
  assert.match(csp, /frame-ancestors 'none'/);
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
  assert.equal(index.headers["x-content-type-options"], "nosniff");
  assert.equal(index.headers["referrer-policy"], "no-referrer");
  assert.equal(index.headers["x-frame-options"], "DENY");
  assert.equal(index.headers["cache-control"], "no-cache");
  assert.equal(index.headers["content-encoding"], "gzip");

  // Every script and stylesheet is a hashed same-origin file cached for a year.
  const { gunzipSync } = await import("node:zlib");
  const html = gunzipSync(index.body).toString();
  const assets = [...html.matchAll(/(?:src|href)="(\/assets\/[^"]+)"/g)].map((match) => match[1]);
  assert.ok(assets.length >= 2, html);
  let gzipped = index.body.length;
  for (const asset of assets) {
    const response = await rawGet(`${daemon.url}${asset}`, { "accept-encoding": "gzip" });
    assert.equal(response.status, 200, asset);
    assert.equal(response.headers["cache-control"], "public, max-age=31536000, immutable", asset);
    gzipped += response.body.length;
  }
  // Issue 15's budget: under 60 KiB gzipped, framework-free.
  assert.ok(gzipped < 60 * 1024, `the client is ${gzipped} bytes gzipped`);
  console.log(`web client: ${(gzipped / 1024).toFixed(1)} KiB gzipped over the wire`);

  // The SPA fallback serves the client at any non-API path; API paths stay JSON.
  const deep = await rawGet(`${daemon.url}/people/someone`);
  assert.equal(deep.status, 200);
  assert.match(deep.headers["content-type"], /text\/html/);
  const api = await rawGet(`${daemon.url}/api/v1/no-such-thing`);
  assert.equal(api.status, 404);
  assert.equal(JSON.parse(api.body.toString()).error.code, "NOT_FOUND");

  // In the browser: nothing is fetched from another origin, nothing violates the CSP, and it loads fast.
  const context = await browser.newContext();
  const page = await context.newPage();
  const foreign = [];
  const violations = [];
  page.on("request", (req) => {
    if (!req.url().startsWith(daemon.url) && !req.url().startsWith("data:")) foreign.push(req.url());
  });
  page.on("console", (message) => {
    if (/Content Security Policy|Refused to/i.test(message.text())) violations.push(message.text());
  });
  const started = Date.now();
  await page.goto(daemon.url);
  await page.getByRole("button", { name: "Sign in" }).waitFor();
  const firstLoadMs = Date.now() - started;
  // The module script runs before DOMContentLoaded, so the sign-in form exists by then.
  const timing = await page.evaluate(() => {
    const navigation = performance.getEntriesByType("navigation")[0];
    return { ready: navigation.domContentLoadedEventEnd, load: navigation.loadEventEnd };
  });
  console.log(
    `web client: first load: sign-in form after ${timing.ready.toFixed(0)} ms (load event ${timing.load.toFixed(0)} ms, ${firstLoadMs} ms as Playwright saw it)`,
  );
  assert.ok(timing.ready < 1000, `the first load took ${timing.ready} ms`);

  const username = uniqueName("hana");
  await registerUser(daemon, username, "correct horse battery", "Hana");
  await signIn(page, username, "correct horse battery");
  await page.getByRole("tab", { name: /History/ }).click();
  await page.getByRole("list", { name: "Call history" }).waitFor({ state: "attached" });
  assert.deepEqual(foreign, []);
  assert.deepEqual(violations, []);
  await context.close();
});

test("usable on a phone-sized screen", async () => {
  const ivan = uniqueName("ivan");
  await registerUser(daemon, ivan, "correct horse battery", "Ivan");
  const { page } = await tab({ viewport: { width: 375, height: 740 } });
  const fits = () => page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth);
  assert.equal(await fits(), true, "the sign-in form overflows sideways");
  await signIn(page, ivan, "correct horse battery");
  assert.equal(await fits(), true, "the directory overflows sideways");
  const controlsFit = async (when) => {
    for (const [role, name] of [["button", "Sign out"], ["button", "Devices"], ["tab", "People"]]) {
      const box = await page.getByRole(role, { name }).boundingBox();
      assert.ok(box && box.x >= 0 && box.x + box.width <= 375 && box.height >= 40, `${when}: ${name}: ${JSON.stringify(box)}`);
    }
  };
  await controlsFit("signed in");
  // While the server is away the top bar says so, and still fits.
  await daemon.halt();
  try {
    await page.getByText("Reconnecting to server…").waitFor();
    assert.equal(await fits(), true, "the reconnecting state overflows sideways");
    await controlsFit("reconnecting");
  } finally {
    await daemon.resume();
  }
  await page.getByText("Reconnecting to server…").waitFor({ state: "detached", timeout: 20_000 });
});

test("history pages with Load more", async () => {
  const jo = uniqueName("jo");
  const kai = uniqueName("kai");
  const { token } = await registerUser(daemon, jo, "correct horse battery", "Jo");
  await registerUser(daemon, kai, "correct horse battery", "Kai");
  const { page } = await tab();
  await signIn(page, jo, "correct horse battery");
  // Calls to someone offline are refused but still logged: 23 of them make two pages of 20.
  // (Initiating over HTTP needs Jo's connected device: the signed-in page.)
  for (let attempt = 0; attempt < 23; attempt++) {
    const response = await fetch(`${daemon.url}/api/v1/calls`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
      body: JSON.stringify({ to: kai, media: attempt % 2 ? "audio" : "video" }),
    });
    const body = await response.json();
    assert.equal(body.error?.code, "RECIPIENT_OFFLINE", JSON.stringify(body));
  }
  await page.getByRole("tab", { name: /History/ }).click();
  const entries = page.getByRole("list", { name: "Call history" }).getByRole("listitem");
  await eventually("the first page", async () => (await entries.count()) === 20);
  assert.match(await entries.first().innerText(), /Kai[\s\S]*Offline/);
  await page.getByRole("button", { name: "Load more" }).click();
  await eventually("the second page", async () => (await entries.count()) === 23);
  await page.getByRole("button", { name: "Load more" }).waitFor({ state: "hidden" });
});
