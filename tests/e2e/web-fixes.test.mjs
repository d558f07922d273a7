// Issue 15, "Broken": each test here failed against the client before its fix.

import assert from "node:assert/strict";
import { test } from "node:test";
import { eventually, personItem, scene, setHidden } from "./harness.mjs";

const fixture = scene({ calls: { ring_timeout_secs: 4, reconnect_grace_secs: 3 } });
const person = (displayName, options) => fixture.person(displayName, options);

async function call(from, toName, media = "Video call") {
  const button = personItem(from.page, toName).getByRole("button", { name: media });
  await eventually(`${toName} online`, () => button.isEnabled());
  await button.click();
}

async function connected(caller, calleeName, callee, media = "Audio call") {
  await call(caller, calleeName, media);
  await callee.page.getByRole("dialog").getByRole("button", { name: "Accept", exact: true }).click();
  await caller.page.getByText("Connected via relay").waitFor();
  await callee.page.getByText("Connected via relay").waitFor();
}

test("issue 15: a user who signs in during this page load is asked for notification permission, with why", async () => {
  const alice = await person("Alice");
  const bob = await person("Bob", { notifications: "default" });
  // Signed in on this page load, with the permission not yet asked: the client says why and asks on a click.
  await bob.page.getByText(/notification when someone calls/).waitFor();
  await bob.page.getByRole("button", { name: "Turn on notifications" }).click();
  assert.equal(await bob.page.evaluate(() => window.__probe.permissionRequests), 1);
  await bob.page.getByRole("button", { name: "Turn on notifications" }).waitFor({ state: "detached" });
  // Now a call while the tab is in the background shows a notification.
  await setHidden(bob.page, true);
  await call(alice, "Bob");
  const notifications = await eventually("a notification", async () => {
    const list = await bob.page.evaluate(() => window.__probe.notifications);
    return list.length > 0 ? list : null;
  });
  assert.equal(notifications[0].title, "Alice is calling");
  await alice.page.getByRole("button", { name: "Cancel" }).click();
  await bob.page.getByRole("dialog").waitFor({ state: "detached" });
});

test("issue 15: a call the caller cancels while ringing follows the server's rule: not a missed call anywhere", async () => {
  const ann = await person("Ann");
  const ben = await person("Ben");
  await call(ann, "Ben", "Audio call");
  await ben.page.getByRole("dialog").waitFor();
  await ann.page.getByRole("button", { name: "Cancel" }).click();
  await ben.page.getByRole("dialog").waitFor({ state: "detached" });
  await ben.page.getByText("Ann cancelled the call.").waitFor();
  assert.equal(await ben.page.getByText(/Missed call/).count(), 0);
  // The server does not count it (status cancelled): neither the badge nor the history may.
  const history = ben.page.getByRole("tab", { name: /History/ });
  assert.equal(await history.getAttribute("aria-label") ?? (await history.innerText()), "History");
  await history.click();
  const entry = ben.page.getByRole("list", { name: "Call history" }).getByRole("listitem").first();
  await entry.waitFor();
  assert.doesNotMatch(await entry.innerText(), /Missed/);
  assert.doesNotMatch((await entry.getAttribute("class")) ?? "", /missed/);
});

test("issue 15: Sign out during a call asks first, then ends the call for the other side at once", async () => {
  const cleo = await person("Cleo");
  const dan = await person("Dan");
  await connected(cleo, "Dan", dan);
  await cleo.page.getByRole("button", { name: "Sign out" }).click();
  const confirm = cleo.page.getByRole("dialog", { name: "Sign out and end the call?" });
  await confirm.waitFor();
  // Staying keeps the call.
  await confirm.getByRole("button", { name: "Stay in the call" }).click();
  await confirm.waitFor({ state: "detached" });
  await cleo.page.getByRole("button", { name: "Hang up" }).waitFor();
  await cleo.page.getByRole("button", { name: "Sign out" }).click();
  await confirm.getByRole("button", { name: "End call and sign out" }).click();
  await cleo.page.getByRole("button", { name: "Sign in" }).waitFor();
  // Dan is told the call ended by Cleo, not left waiting for the reconnect grace (which
  // would end it as "Connection lost" instead, so this wait can be generous).
  await dan.page.getByText(/Cleo hung up after/).waitFor({ timeout: 10_000 });
  assert.equal(await dan.page.getByText(/Connection lost/).count(), 0);
});

test("issue 15: after hanging up, focus returns to the button that started the call", async () => {
  const eve = await person("Eve");
  const fay = await person("Fay");
  await connected(eve, "Fay", fay);
  await eve.page.getByRole("button", { name: "Hang up" }).click();
  await eve.page.getByRole("list", { name: "People" }).waitFor();
  await eventually("focus on the call button", async () =>
    (await eve.page.evaluate(() => document.activeElement?.getAttribute("aria-label"))) === "Audio call Fay",
  );
});

test("issue 15: the incoming-call dialog does not put focus on Accept: a stray Enter or Space does not answer", async () => {
  const gil = await person("Gil");
  const hal = await person("Hal");
  await call(gil, "Hal", "Audio call");
  const dialog = hal.page.getByRole("dialog");
  await dialog.waitFor();
  assert.notEqual(await hal.page.evaluate(() => document.activeElement?.textContent), "Accept");
  await hal.page.keyboard.press("Enter");
  await hal.page.keyboard.press("Space");
  await new Promise((resolve) => setTimeout(resolve, 500));
  assert.equal(await dialog.isVisible(), true);
  await gil.page.getByText("Calling Hal… Ringing").waitFor();
  await dialog.getByRole("button", { name: "Decline" }).click();
  await gil.page.getByText("Hal declined the call.").waitFor();
});

test("issue 15: the status region and the call controls are not rebuilt every second", async () => {
  const ida = await person("Ida");
  const jon = await person("Jon");
  await connected(ida, "Jon", jon);
  // A change of words (say the link turning "Poor") is news; the same words written again are chatter.
  const mutations = await ida.page.evaluate(async () => {
    const watched = ["call-phase", "call-link", "peer-state", "mute", "camera"].map((id) => document.getElementById(id)).filter(Boolean);
    const before = new Map(watched.map((element) => [element, element.innerHTML]));
    const rewrites = [];
    const observer = new MutationObserver((records) => {
      for (const element of new Set(records.map((record) => watched.find((candidate) => candidate.contains(record.target))))) {
        if (element && element.innerHTML === before.get(element)) rewrites.push(element.id);
        if (element) before.set(element, element.innerHTML);
      }
    });
    for (const element of watched) observer.observe(element, { childList: true, subtree: true, characterData: true });
    await new Promise((resolve) => setTimeout(resolve, 3500));
    observer.disconnect();
    return { watched: watched.length, rewrites };
  });
  assert.equal(mutations.watched, 5);
  assert.deepEqual(mutations.rewrites, [], "parts of the call screen were rebuilt with the same content");
  await ida.page.getByRole("button", { name: "Hang up" }).click();
});

test("issue 15: while the server is away the client says so, greys presence, keeps the session, and clears it all on return", async () => {
  const kim = await person("Kim");
  await person("Lou");
  const item = personItem(kim.page, "Lou");
  await eventually("Lou online", () => item.getByRole("button", { name: "Video call" }).isEnabled());
  await fixture.daemon.halt();
  try {
    await kim.page.getByText("Reconnecting to server…").waitFor();
    // Presence is unknown while disconnected: nobody can be called and nobody shows "Online".
    await eventually("call buttons disabled", () => item.getByRole("button", { name: "Video call" }).isDisabled());
    assert.doesNotMatch(await item.innerText(), /Online/);
    await kim.page.getByText(/not connected to the server/).waitFor();
    // Only UNAUTHORIZED signs out (issue 13): a server that is away is not one.
    await new Promise((resolve) => setTimeout(resolve, 1500));
    assert.equal(await kim.page.getByRole("button", { name: "Sign in" }).count(), 0);
  } finally {
    await fixture.daemon.resume();
  }
  await kim.page.getByText("Reconnecting to server…").waitFor({ state: "detached", timeout: 20_000 });
  await eventually("Lou callable again", () => item.getByRole("button", { name: "Video call" }).isEnabled(), 20_000);
  await eventually("Lou online again", async () => /Online/.test(await item.innerText()), 20_000);
  // The stale connection error went with the disconnection.
  assert.equal(await kim.page.getByText(/not connected to the server/).count(), 0);
});
