// Calls that do not connect, and what the web client tells each person:
// decline, cancel, no answer, busy, offline, permission denied. Plus the
// missed-call badge, the background notification and history deletion.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { eventually, launchBrowser, newPerson, personItem, registerUser, signIn, startDaemon, uniqueName } from "./harness.mjs";

let daemon;
let browser;
let deniedBrowser;
let cameralessBrowser;
const tabs = [];

before(async () => {
  daemon = await startDaemon({ calls: { ring_timeout_secs: 3, reconnect_grace_secs: 2 } });
  browser = await launchBrowser();
});

after(async () => {
  for (const tab of tabs) await tab.context.close().catch(() => {});
  await browser?.close();
  await deniedBrowser?.close();
  await cameralessBrowser?.close();
  await daemon?.stop();
});

async function person(displayName, options = {}) {
  const username = uniqueName(displayName.toLowerCase());
  await registerUser(daemon, username, "correct horse battery", displayName);
  const tab = await newPerson(options.browser ?? browser, daemon, options);
  tabs.push(tab);
  tab.username = username;
  await signIn(tab.page, username, "correct horse battery");
  return tab;
}

async function call(from, toName, media = "Video call") {
  const button = personItem(from.page, toName).getByRole("button", { name: media });
  await eventually(`${toName} online`, () => button.isEnabled());
  await button.click();
}

async function backHome(page) {
  await page.getByRole("list", { name: "People" }).waitFor();
}

async function devicesReleased(page) {
  await eventually("camera and microphone released", () =>
    page.evaluate(() => window.__probe.streams.every((s) => s.getTracks().every((t) => t.readyState === "ended"))),
  );
}

test("declining: the caller is told, nobody keeps a device; a background tab gets a notification", async () => {
  const alice = await person("Alice");
  const bob = await person("Bob", { hidden: true });
  await call(alice, "Bob");
  const dialog = bob.page.getByRole("dialog");
  await dialog.waitFor();
  // Bob's tab is in the background: he also gets a system notification.
  const notifications = await eventually("a notification", async () => {
    const list = await bob.page.evaluate(() => window.__probe.notifications);
    return list.length > 0 ? list : null;
  });
  assert.equal(notifications[0].title, "Alice is calling");
  assert.equal(notifications[0].body, "Video call");
  await dialog.getByRole("button", { name: "Decline" }).click();
  await alice.page.getByText("Bob declined the call.").waitFor();
  await backHome(alice.page);
  await dialog.waitFor({ state: "detached" });
  assert.equal(await bob.page.evaluate(() => window.__probe.notifications[0].closed), true);
  await devicesReleased(alice.page);
});

test("declining with a message: the caller reads it, and it stays in the history", async () => {
  const alice = await person("Ari");
  const bob = await person("Bex");
  await call(alice, "Bex", "Audio call");
  const dialog = bob.page.getByRole("dialog");
  await dialog.getByText("Reply with a message").click();
  await dialog.getByLabel("Message").fill("In a meeting, call you at 3");
  await dialog.getByRole("button", { name: "Send" }).click();
  await alice.page.getByText("Bex declined the call: “In a meeting, call you at 3”").waitFor();
  await dialog.waitFor({ state: "detached" });
  await alice.page.getByRole("tab", { name: /History/ }).click();
  const entry = alice.page.getByRole("list", { name: "Call history" }).getByRole("listitem").first();
  await entry.waitFor();
  assert.match(await entry.innerText(), /Declined[\s\S]*In a meeting, call you at 3/);
});

test("cancelling: the callee's ringing stops and is told who cancelled (not a missed call: the server's rule)", async () => {
  const alice = await person("Ann");
  const bob = await person("Ben");
  await call(alice, "Ben", "Audio call");
  await bob.page.getByRole("dialog").waitFor();
  await alice.page.getByRole("button", { name: "Cancel" }).click();
  await bob.page.getByRole("dialog").waitFor({ state: "detached" });
  await bob.page.getByText("Ann cancelled the call.").waitFor();
  await backHome(alice.page);
  await devicesReleased(alice.page);
  await alice.page.getByRole("tab", { name: /History/ }).click();
  const entry = alice.page.getByRole("list", { name: "Call history" }).getByRole("listitem").first();
  await entry.waitFor();
  assert.match(await entry.innerText(), /Cancelled/);
});

test("no answer: the caller is told, the callee gets a missed call badge that clears when viewed", async () => {
  const alice = await person("Amy");
  const bob = await person("Bill");
  await call(alice, "Bill");
  await bob.page.getByRole("dialog").waitFor();
  // ring_timeout_secs = 3 in this daemon.
  await alice.page.getByText("No answer from Bill.").waitFor({ timeout: 10_000 });
  await bob.page.getByRole("dialog").waitFor({ state: "detached" });
  await bob.page.getByText("Missed call from Amy.").waitFor();

  // The badge is part of the History button's accessible name.
  await bob.page.getByRole("tab", { name: /^History 1 missed call$/ }).waitFor();
  await bob.page.getByRole("tab", { name: /History/ }).click();
  const entry = bob.page.getByRole("list", { name: "Call history" }).getByRole("listitem").first();
  await entry.waitFor();
  assert.match(await entry.innerText(), /Missed/);
  assert.match((await entry.getAttribute("class")) ?? "", /missed/);
  await bob.page.getByRole("tab", { name: /^History$/ }).waitFor();
  const unseen = await bob.page.evaluate(async () => {
    const response = await fetch("/api/v1/calls/missed/count", { headers: { Authorization: `Bearer ${localStorage.getItem("parley.token")}` } });
    return (await response.json()).unseen;
  });
  assert.equal(unseen, 0);

  // Deleting the entry removes it from Bill's history only.
  await entry.getByRole("button", { name: /Delete/ }).click();
  await eventually("the entry to go", async () => (await bob.page.getByRole("list", { name: "Call history" }).getByRole("listitem").count()) === 0);
  // The server forgets it once the few seconds to undo have passed.
  await bob.page.getByRole("button", { name: "Undo" }).waitFor({ state: "detached", timeout: 10_000 });
  await bob.page.reload();
  await bob.page.getByRole("tab", { name: /History/ }).click();
  await bob.page.getByText("No calls yet.").waitFor();
  await alice.page.getByRole("tab", { name: /History/ }).click();
  const aliceEntry = alice.page.getByRole("list", { name: "Call history" }).getByRole("listitem").first();
  assert.match(await aliceEntry.innerText(), /No answer/);
});

test("busy: a third person calling someone in a call is told they are busy", async () => {
  const alice = await person("Ada");
  const bob = await person("Bo");
  const carol = await person("Cy");
  await call(alice, "Bo", "Audio call");
  // Keyboard: the dialog opens on its title (issue 15: a stray Enter must not answer); Tab reaches Accept.
  await bob.page.getByRole("dialog").waitFor();
  await bob.page.getByRole("dialog").getByRole("button", { name: "Accept", exact: true }).focus();
  await bob.page.keyboard.press("Enter");
  await bob.page.getByRole("button", { name: "Hang up" }).waitFor();
  await eventually("Bo shown busy", async () => /In a call/.test(await personItem(carol.page, "Bo").innerText()));
  await call(carol, "Bo");
  await carol.page.getByText("Bo is busy in another call. Try again later.").waitFor();
  await devicesReleased(carol.page);
  // The call in progress is not disturbed.
  assert.equal(await bob.page.getByRole("dialog").count(), 0);
  await alice.page.getByRole("button", { name: "Hang up" }).click();
  await backHome(bob.page);
});

test("offline: call buttons are disabled until the person signs in", async () => {
  const alice = await person("Abe");
  const username = uniqueName("dan");
  await registerUser(daemon, username, "correct horse battery", "Dan");
  await alice.page.reload();
  const item = personItem(alice.page, "Dan");
  await item.waitFor();
  assert.match(await item.innerText(), /Offline/);
  assert.equal(await item.getByRole("button", { name: "Audio call" }).isDisabled(), true);
  assert.equal(await item.getByRole("button", { name: "Video call" }).isDisabled(), true);

  const dan = await newPerson(browser, daemon);
  tabs.push(dan);
  await signIn(dan.page, username, "correct horse battery");
  await eventually("Dan online", () => item.getByRole("button", { name: "Video call" }).isEnabled());
  assert.match(await item.innerText(), /Online/);
  await dan.page.getByRole("button", { name: "Sign out" }).click();
  await eventually("Dan offline again", () => item.getByRole("button", { name: "Video call" }).isDisabled());
});

test("permission denied: the caller is told and no call starts", async () => {
  deniedBrowser = await launchBrowser({ grantMedia: false });
  const alice = await person("Ava", { browser: deniedBrowser });
  const bob = await person("Bea");
  await call(alice, "Bea");
  await alice.page.getByText(/permission was denied/).waitFor();
  assert.equal(await bob.page.getByRole("dialog").count(), 0);
  await backHome(alice.page);
});

test("no camera: the caller is told what is missing", async () => {
  // Without the fake-device flag this machine has no camera and no microphone.
  cameralessBrowser = await launchBrowser({ fakeMedia: false });
  const alice = await person("Aya", { browser: cameralessBrowser });
  const bob = await person("Bree");
  await call(alice, "Bree");
  await alice.page.getByText(/No camera or microphone was found/).waitFor();
  assert.equal(await bob.page.getByRole("dialog").count(), 0);
});

test("connection lost: when the other side vanishes for good, the call ends with a clear message", async () => {
  const alice = await person("Al");
  const bob = await person("Bud");
  await call(alice, "Bud", "Audio call");
  await bob.page.getByRole("dialog").getByRole("button", { name: "Accept", exact: true }).click();
  await alice.page.getByText("Connected via relay").waitFor();
  // Bob's browser tab disappears (crash, lost network); reconnect_grace_secs = 2 here.
  await bob.context.close();
  await alice.page.getByText(/Bud is reconnecting|Reconnecting/).first().waitFor();
  await alice.page.getByText("Connection lost. The call with Bud ended.").waitFor({ timeout: 15_000 });
  await backHome(alice.page);
  await devicesReleased(alice.page);
});
