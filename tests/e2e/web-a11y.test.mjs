// Issue 15: accessibility on every screen in light and dark mode (axe-core, no
// serious or critical violation), names that carry the person, toggles, a tablist,
// the Devices dialog's checks, and an installable app.

import assert from "node:assert/strict";
import { test } from "node:test";
import { axeViolations, eventually, newPerson, personItem, scene } from "./harness.mjs";

const fixture = scene();

async function clean(page, screen) {
  const violations = await axeViolations(page);
  assert.deepEqual(violations, [], `${screen}: ${violations.join("\n")}`);
}

for (const colorScheme of ["light", "dark"]) {
  test(`every screen passes axe in ${colorScheme} mode`, async () => {
    const signInTab = await newPerson(fixture.browser, fixture.daemon, { colorScheme });
    await signInTab.page.getByRole("button", { name: "Sign in" }).waitFor();
    await clean(signInTab.page, "sign-in");
    await signInTab.context.close();

    // Names unique to this run of the loop: the daemon is shared by the file.
    const [a, b] = colorScheme === "light" ? ["Alice Ames", "Bob Builder"] : ["Ada Dark", "Ben Night"];
    const alice = await fixture.person(a, { colorScheme, notifications: "default" });
    const bob = await fixture.person(b, { colorScheme });
    await alice.page.getByRole("button", { name: "Turn on notifications" }).waitFor();
    const button = personItem(alice.page, b).getByRole("button", { name: `Video call ${b}` });
    await eventually("Bob online", () => button.isEnabled());
    await clean(alice.page, "home with the notification prompt");
    await alice.page.getByRole("button", { name: "Not now" }).click();

    await alice.page.getByRole("tab", { name: "History" }).click();
    await clean(alice.page, "history (empty)");
    await alice.page.getByRole("tab", { name: "People" }).click();

    await alice.page.getByRole("button", { name: "Devices" }).click();
    await alice.page.getByRole("dialog", { name: "Devices" }).waitFor();
    await clean(alice.page, "devices dialog");
    await alice.page.keyboard.press("Escape");

    await button.click();
    await alice.page.getByText(`Calling ${b}… Ringing`).waitFor();
    await clean(alice.page, "outgoing call");
    const dialog = bob.page.getByRole("dialog");
    await dialog.waitFor();
    await clean(bob.page, "incoming call dialog");
    await dialog.getByRole("button", { name: "Accept", exact: true }).click();
    await alice.page.getByText("Connected via relay").waitFor();
    await clean(alice.page, "call screen");
    await alice.page.getByRole("button", { name: "Sign out" }).click();
    await alice.page.getByRole("dialog", { name: "Sign out and end the call?" }).waitFor();
    await clean(alice.page, "sign out during a call");
    await alice.page.getByRole("button", { name: "Stay in the call" }).click();
    await alice.page.getByRole("button", { name: "Hang up" }).click();
    await bob.page.getByRole("list", { name: "People" }).waitFor();
    await bob.page.getByRole("tab", { name: /History/ }).click();
    await bob.page.getByRole("list", { name: "Call history" }).getByRole("listitem").first().waitFor();
    await clean(bob.page, "history with a call");
  });
}

test("names carry the person; Mute and Camera are toggles; Home and History are a tablist; every signed-in screen has an h1", async () => {
  const cat = await fixture.person("Cat Cole");
  const dan = await fixture.person("Dan Dare");
  assert.equal(await cat.page.getByRole("heading", { level: 1 }).count(), 1);
  const item = personItem(cat.page, "Dan Dare");
  await item.getByRole("button", { name: "Video call Dan Dare", exact: true }).waitFor();
  await item.getByRole("button", { name: "Audio call Dan Dare", exact: true }).waitFor();

  const tablist = cat.page.getByRole("tablist", { name: "Sections" });
  const people = tablist.getByRole("tab", { name: "People" });
  const historyTab = tablist.getByRole("tab", { name: "History" });
  assert.equal(await people.getAttribute("aria-selected"), "true");
  await people.focus();
  await cat.page.keyboard.press("ArrowRight");
  assert.equal(await historyTab.getAttribute("aria-selected"), "true");
  assert.equal(await cat.page.evaluate(() => document.activeElement?.id), "tab-history");
  await cat.page.getByRole("tabpanel", { name: "History" }).waitFor();
  await cat.page.keyboard.press("ArrowLeft");
  await cat.page.getByRole("tabpanel", { name: "People" }).waitFor();

  await eventually("Dan online", () => item.getByRole("button", { name: "Audio call Dan Dare" }).isEnabled());
  await item.getByRole("button", { name: "Audio call Dan Dare" }).click();
  await dan.page.getByRole("dialog").getByRole("button", { name: "Accept", exact: true }).click();
  await cat.page.getByText("Connected via relay").waitFor();
  assert.equal(await cat.page.getByRole("heading", { level: 1 }).count(), 1);
  const mute = cat.page.getByRole("button", { name: "Mute", exact: true });
  assert.equal(await mute.getAttribute("aria-pressed"), "false");
  await mute.click();
  await dan.page.getByText("Cat Cole is muted").waitFor();
  // The label stays; the state is aria-pressed.
  assert.equal(await cat.page.getByRole("button", { name: "Mute", exact: true }).getAttribute("aria-pressed"), "true");
  const camera = cat.page.getByRole("button", { name: "Camera", exact: true });
  assert.equal(await camera.getAttribute("aria-pressed"), "false");
  await camera.click();
  await eventually("camera on", async () => (await camera.getAttribute("aria-pressed")) === "true");
  await cat.page.getByRole("button", { name: "Hang up" }).click();
  await dan.page.getByRole("list", { name: "People" }).waitFor();
});

test("the Devices dialog: camera preview, microphone meter, speaker choice; Esc changes nothing", async () => {
  const eve = await fixture.person("Eve");
  await eve.page.getByRole("button", { name: "Devices" }).click();
  const dialog = eve.page.getByRole("dialog", { name: "Devices" });
  await dialog.waitFor();
  await eventually("the camera preview playing", () => dialog.getByLabel("Camera preview").evaluate((video) => video.videoWidth > 0 && !video.paused));
  // The fake microphone plays a beep: the meter moves.
  await eventually("the microphone meter moving", () => dialog.getByRole("meter", { name: "Microphone level" }).evaluate((meter) => meter.value > 0.01));
  if (await eve.page.evaluate(() => "setSinkId" in HTMLMediaElement.prototype)) {
    await dialog.getByRole("combobox", { name: "Speaker" }).waitFor();
  }
  const microphone = dialog.getByRole("combobox", { name: "Microphone" });
  const labels = await microphone.locator("option").allTextContents();
  const other = labels.find((label) => /Fake Audio Input 1/.test(label));
  assert.ok(other, labels.join(", "));
  await microphone.selectOption({ label: other });
  await eve.page.keyboard.press("Escape");
  await dialog.waitFor({ state: "detached" });
  assert.equal(await eve.page.evaluate(() => localStorage.getItem("parley.devices")), null);
  // Every device the check opened is closed again.
  await eventually("the check's devices released", () =>
    eve.page.evaluate(() => window.__probe.streams.every((s) => s.getTracks().every((t) => t.readyState === "ended"))),
  );
  // Done saves.
  await eve.page.getByRole("button", { name: "Devices" }).click();
  await microphone.selectOption({ label: other });
  await dialog.getByRole("button", { name: "Done" }).click();
  // Saved by the click itself: read at once, before the dialog's close event has run.
  assert.match(await eve.page.evaluate(() => localStorage.getItem("parley.devices")), /audioInput/);
  await dialog.waitFor({ state: "detached" });
});

test("installable: a manifest with icons, and no service worker that could serve a stale client", async () => {
  const tab = await newPerson(fixture.browser, fixture.daemon);
  const href = await tab.page.locator('link[rel="manifest"]').getAttribute("href");
  assert.match(href, /^\/assets\/manifest-[0-9A-Z]+\.webmanifest$/);
  const response = await fetch(`${fixture.daemon.url}${href}`);
  assert.equal(response.status, 200);
  assert.match(response.headers.get("content-type"), /application\/manifest\+json/);
  const manifest = await response.json();
  assert.equal(manifest.name, "Parley");
  assert.equal(manifest.start_url, "/");
  assert.equal(manifest.display, "standalone");
  for (const size of ["192x192", "512x512"]) {
    const icon = manifest.icons.find((candidate) => candidate.sizes === size && candidate.type === "image/png");
    assert.ok(icon, `a ${size} PNG icon`);
    const image = await fetch(`${fixture.daemon.url}${icon.src}`);
    assert.equal(image.headers.get("content-type"), "image/png");
    const bytes = Buffer.from(await image.arrayBuffer());
    // PNG signature, then the IHDR width and height.
    assert.equal(bytes.subarray(1, 4).toString(), "PNG");
    assert.equal(`${bytes.readUInt32BE(16)}x${bytes.readUInt32BE(20)}`, size);
  }
  // The browser reads the same manifest without errors.
  const session = await tab.context.newCDPSession(tab.page);
  const { errors, url } = await session.send("Page.getAppManifest");
  assert.match(url, /manifest-/);
  assert.deepEqual(errors, []);
  assert.equal(await tab.page.evaluate(async () => (await navigator.serviceWorker.getRegistrations()).length), 0);
  await tab.context.close();
});
