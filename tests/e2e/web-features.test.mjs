// Issue 15, "Missing": screen sharing, picture in picture and full screen, a choice
// before the camera opens, calls back, notifications, the title count and the
// warning before closing a call.

import assert from "node:assert/strict";
import { test } from "node:test";
import { eventually, personItem, scene, setHidden } from "./harness.mjs";

const fixture = scene({ calls: { ring_timeout_secs: 3 } });
const person = (displayName, options) => fixture.person(displayName, options);

async function call(from, toName, media = "Video call") {
  const button = personItem(from.page, toName).getByRole("button", { name: media });
  await eventually(`${toName} online`, () => button.isEnabled());
  await button.click();
}

/** Size of the video the page receives from the other side (the last inbound video). */
async function inboundVideo(page) {
  return page.evaluate(async () => {
    const pc = window.__probe.pcs.filter((candidate) => candidate.connectionState === "connected").at(-1);
    if (!pc) return null;
    const stats = [...(await pc.getStats()).values()].filter((stat) => stat.type === "inbound-rtp" && stat.kind === "video");
    const video = stats.sort((a, b) => (b.framesDecoded ?? 0) - (a.framesDecoded ?? 0))[0];
    return video ? { width: video.frameWidth ?? 0, height: video.frameHeight ?? 0, frames: video.framesDecoded ?? 0 } : null;
  });
}

/** The tracks the page's live peer connection sends. */
async function sentKinds(page) {
  return page.evaluate(() => {
    const pc = window.__probe.pcs.filter((candidate) => candidate.connectionState !== "closed").at(-1);
    return pc ? pc.getSenders().filter((sender) => sender.track && sender.track.readyState === "live").map((sender) => sender.track.kind).sort() : [];
  });
}

async function history(page) {
  await page.getByRole("tab", { name: /History/ }).click();
  return page.getByRole("list", { name: "Call history" }).getByRole("listitem");
}

test("screen sharing: the other side's video becomes the screen, and Stop sharing brings the camera back", async () => {
  const alice = await person("Alice");
  const bob = await person("Bob");
  await call(alice, "Bob");
  await bob.page.getByRole("dialog").getByRole("button", { name: "Accept", exact: true }).click();
  const camera = await eventually("Alice's camera at Bob", async () => {
    const video = await inboundVideo(bob.page);
    return video && video.frames > 5 && video.width > 0 ? video : null;
  });
  await alice.page.getByRole("button", { name: "Share screen" }).click();
  // Either it shares, or the page says why not (e.g. the daemon's Permissions-Policy forbids display-capture).
  const sharing = alice.page.getByText("You are sharing your screen");
  await sharing.or(alice.page.getByRole("alert")).first().waitFor();
  assert.deepEqual(await alice.page.getByRole("alert").allInnerTexts(), []);
  await sharing.waitFor();
  await alice.page.getByRole("button", { name: "Stop sharing" }).waitFor();
  assert.equal(await alice.page.evaluate(() => window.__probe.displays.length), 1);
  const screen = await eventually("the screen's size at Bob", async () => {
    const video = await inboundVideo(bob.page);
    return video && (video.width !== camera.width || video.height !== camera.height) ? video : null;
  });
  // Bob sees it full size: the remote video element plays the shared screen's dimensions.
  await eventually("Bob's remote video shows the screen", () =>
    bob.page.getByLabel("Remote video").evaluate((element, size) => element.videoWidth === size.width && element.videoHeight === size.height, screen),
  );
  await alice.page.getByRole("button", { name: "Stop sharing" }).click();
  await alice.page.getByText("You are sharing your screen").waitFor({ state: "detached" });
  assert.equal(await alice.page.evaluate(() => window.__probe.displays[0].getVideoTracks()[0].readyState), "ended");
  // The camera's picture again: its aspect ratio, at most its size (on a busy machine WebRTC
  // scales the outgoing video down for CPU, keeping the aspect ratio; seen under stress-ng).
  await eventually("the camera back at Bob", async () => {
    const video = await inboundVideo(bob.page);
    if (!video || !video.height) return false;
    const sameShape = Math.abs(video.width / video.height - camera.width / camera.height) < 0.02;
    const notTheScreen = video.width !== screen.width || video.height !== screen.height;
    return sameShape && notTheScreen && video.width <= camera.width;
  });

  // Picture in picture and full screen for the remote video.
  await bob.page.getByRole("button", { name: "Full screen" }).click();
  await eventually("full screen", () => bob.page.evaluate(() => document.fullscreenElement?.id === "call-view"));
  // The button follows the `fullscreenchange` event, which the browser fires a frame after
  // `document.fullscreenElement` is set: wait for it rather than read it in that frame.
  await eventually("the Full screen button pressed", async () =>
    (await bob.page.getByRole("button", { name: "Full screen" }).getAttribute("aria-pressed")) === "true",
  );
  await bob.page.getByRole("button", { name: "Full screen" }).click();
  await eventually("full screen left", () => bob.page.evaluate(() => document.fullscreenElement === null));
  await bob.page.getByRole("button", { name: "Picture in picture" }).click();
  await eventually("picture in picture", () => bob.page.evaluate(() => document.pictureInPictureElement?.id === "remote-video"));
  await bob.page.getByRole("button", { name: "Picture in picture" }).click();
  await eventually("picture in picture left", () => bob.page.evaluate(() => document.pictureInPictureElement === null));
  await alice.page.getByRole("button", { name: "Hang up" }).click();
  await bob.page.getByRole("list", { name: "People" }).waitFor();
});

test("Accept without video: a self-preview while ringing, then audio only; the camera can follow", async () => {
  const carol = await person("Carol");
  const dave = await person("Dave");
  await call(carol, "Dave");
  const dialog = dave.page.getByRole("dialog");
  await dialog.waitFor();
  await eventually("the self-preview playing", () => dialog.getByLabel("Your camera preview").evaluate((video) => video.videoWidth > 0));
  await dialog.getByRole("button", { name: "Accept without video" }).click();
  await dave.page.getByRole("button", { name: "Hang up" }).waitFor();
  await carol.page.getByText("Connected via relay").waitFor();
  // Dave sends no video track, and the preview's camera was released.
  await eventually("Dave sending audio only", async () => JSON.stringify(await sentKinds(dave.page)) === '["audio"]');
  assert.equal(
    await dave.page.evaluate(() => window.__probe.streams.flatMap((s) => s.getVideoTracks()).every((t) => t.readyState === "ended")),
    true,
  );
  assert.equal(await dave.page.getByRole("button", { name: "Camera" }).getAttribute("aria-pressed"), "false");
  await carol.page.getByText("Dave's camera is off").waitFor();
  // Turned on later, the camera reaches Carol.
  await dave.page.getByRole("button", { name: "Camera" }).click();
  await eventually("Dave's video at Carol", async () => ((await inboundVideo(carol.page))?.frames ?? 0) > 5);
  await carol.page.getByRole("button", { name: "Hang up" }).click();
  await dave.page.getByRole("list", { name: "People" }).waitFor();
});

test("the caller sees Starting camera… at once, before the camera is open", async () => {
  const erin = await person("Erin");
  await person("Finn");
  // A slow camera: getUserMedia answers after 1.5 s.
  await erin.page.evaluate(() => {
    const open = navigator.mediaDevices.getUserMedia;
    navigator.mediaDevices.getUserMedia = (constraints) => new Promise((resolve) => setTimeout(resolve, 1500)).then(() => open(constraints));
  });
  await call(erin, "Finn");
  // Shown by the click itself, well before the slow camera answers.
  await erin.page.getByText("Starting camera…").waitFor({ timeout: 1200 });
  assert.equal(await erin.page.getByText("Calling Finn… Ringing").count(), 0);
  await erin.page.getByText("Calling Finn… Ringing").waitFor();
  await erin.page.getByRole("button", { name: "Cancel" }).click();
  await erin.page.getByRole("list", { name: "People" }).waitFor();
});

test("Call back from the No answer and Missed call notices rings the other person again; the title and the app badge count missed calls", async () => {
  const gus = await person("Gus");
  const hana = await person("Hana", { hidden: true });
  await call(gus, "Hana", "Audio call");
  await hana.page.getByRole("dialog").waitFor();
  // ring_timeout_secs = 3: nobody answers.
  const noAnswer = gus.page.getByRole("alert").filter({ hasText: "No answer from Hana." });
  await noAnswer.waitFor({ timeout: 10_000 });
  await hana.page.getByText("Missed call from Gus.").waitFor();
  // Hana's tab is in the background: a notification, the count in the title and on the app badge.
  await eventually("a missed-call notification", () =>
    hana.page.evaluate(() => window.__probe.notifications.some((n) => n.title === "Missed call from Gus")),
  );
  await eventually("the title count", async () => (await hana.page.title()) === "(1) Parley");
  const badges = await hana.page.evaluate(() => window.__probe.badges);
  assert.equal(badges.at(-1), 1, JSON.stringify(badges));

  await noAnswer.getByRole("button", { name: "Call back" }).click();
  await hana.page.getByRole("dialog").waitFor();
  await gus.page.getByRole("button", { name: "Cancel" }).click();
  await hana.page.getByRole("dialog").waitFor({ state: "detached" });

  // From Hana's side: her Missed call notice's Call back rings Gus.
  await call(gus, "Hana", "Audio call");
  await hana.page.getByText("Missed call from Gus.").waitFor({ timeout: 10_000 });
  await hana.page.getByRole("button", { name: "Call back" }).click();
  await gus.page.getByRole("dialog").getByText("Hana is calling").waitFor();
  await gus.page.getByRole("dialog").getByRole("button", { name: "Decline" }).click();
  await hana.page.getByText("Gus declined the call.").waitFor();

  // Seen in the foreground, the count goes.
  await setHidden(hana.page, false);
  await history(hana.page);
  await eventually("the title without a count", async () => (await hana.page.title()) === "Parley");
  await eventually("the app badge cleared", async () => (await hana.page.evaluate(() => window.__probe.badges)).at(-1) === 0);
});

test("history: Call back on a row, a Missed filter, and delete with Undo", async () => {
  const ivy = await person("Ivy");
  const jay = await person("Jay");
  // One missed call for Jay (no answer), one answered.
  await call(ivy, "Jay", "Audio call");
  await jay.page.getByText("Missed call from Ivy.").waitFor({ timeout: 10_000 });
  await call(ivy, "Jay", "Audio call");
  await jay.page.getByRole("dialog").getByRole("button", { name: "Accept", exact: true }).click();
  await ivy.page.getByRole("button", { name: "Hang up" }).click();
  await jay.page.getByRole("list", { name: "People" }).waitFor();

  const rows = await history(jay.page);
  await eventually("two rows", async () => (await rows.count()) === 2);
  await jay.page.getByRole("button", { name: "Missed", exact: true }).click();
  await eventually("only the missed row", async () => (await rows.count()) === 1);
  assert.match(await rows.first().innerText(), /Missed/);
  assert.equal(await jay.page.getByRole("button", { name: "Missed", exact: true }).getAttribute("aria-pressed"), "true");
  await jay.page.getByRole("button", { name: "All calls" }).click();
  await eventually("both rows again", async () => (await rows.count()) === 2);

  // Delete, then Undo: the row comes back and stays after a reload.
  await rows.first().getByRole("button", { name: "Delete call with Ivy" }).click();
  await eventually("the row hidden", async () => (await rows.count()) === 1);
  await jay.page.getByRole("button", { name: "Undo" }).click();
  await eventually("the row back", async () => (await rows.count()) === 2);
  await new Promise((resolve) => setTimeout(resolve, 6500)); // past the undo time
  await jay.page.reload();
  await history(jay.page);
  await eventually("both rows after a reload", async () => (await rows.count()) === 2);

  // Call back from a row rings Ivy.
  await rows.first().getByRole("button", { name: "Call back Ivy" }).click();
  await ivy.page.getByRole("dialog").getByText("Jay is calling").waitFor();
  await jay.page.getByRole("button", { name: "Cancel" }).click();
  await ivy.page.getByRole("dialog").waitFor({ state: "detached" });
});

test("closing the tab during a call asks first", async () => {
  const kai = await person("Kai");
  const lea = await person("Lea");
  await call(kai, "Lea", "Audio call");
  await lea.page.getByRole("dialog").getByRole("button", { name: "Accept", exact: true }).click();
  await kai.page.getByText("Connected via relay").waitFor();
  const dialogType = new Promise((resolve) =>
    kai.page.once("dialog", async (dialog) => {
      resolve(dialog.type());
      await dialog.dismiss(); // stay
    }),
  );
  await kai.page.close({ runBeforeUnload: true });
  assert.equal(await dialogType, "beforeunload");
  // Stayed: the call goes on.
  assert.equal(await kai.page.isClosed(), false);
  await kai.page.getByRole("button", { name: "Hang up" }).click();
  await lea.page.getByRole("list", { name: "People" }).waitFor();
});

test("a call on a phone-sized screen: every control fits, nothing scrolls sideways", async () => {
  const max = await person("Max");
  const nia = await person("Nia", { viewport: { width: 375, height: 740 } });
  await call(max, "Nia");
  await nia.page.getByRole("dialog").getByRole("button", { name: "Accept", exact: true }).click();
  await nia.page.getByText("Connected via relay").waitFor();
  assert.equal(await nia.page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth), true);
  for (const name of ["Mute", "Camera", "Share screen", "Picture in picture", "Full screen", "Hang up"]) {
    const control = nia.page.getByRole("button", { name, exact: true });
    if (!(await control.count())) continue; // picture in picture and full screen only where the browser offers them
    const box = await control.boundingBox();
    assert.ok(box && box.x >= 0 && box.x + box.width <= 375 && box.width >= 40 && box.height >= 40, `${name}: ${JSON.stringify(box)}`);
    assert.equal(await control.evaluate((button) => button.scrollWidth <= button.clientWidth + 1), true, `${name} overflows its button`);
  }
  await nia.page.getByRole("button", { name: "Hang up" }).click();
  await max.page.getByRole("list", { name: "People" }).waitFor();
});
