// A real call between two browser contexts through the daemon's own TURN relay
// (webrtc.ice_transport_policy = "relay"), driven only through the web client.

import assert from "node:assert/strict";
import { test } from "node:test";
import { callStats, eventually, personItem, scene } from "./harness.mjs";

const fixture = scene();
const person = (displayName) => fixture.person(displayName);

/** The remote <video> has frames and its playback position advances. */
async function remoteVideoMoving(page) {
  const video = page.getByLabel("Remote video");
  await eventually("remote video frames", () => video.evaluate((element) => element.videoWidth > 0 && !element.paused));
  const first = await video.evaluate((element) => element.currentTime);
  await eventually("remote video to advance", () => video.evaluate((element, start) => element.currentTime > start + 0.3, first));
}

/** Every camera and microphone track the page ever opened has been stopped. */
async function allTracksStopped(page) {
  return page.evaluate(() =>
    window.__probe.streams.every((stream) => stream.getTracks().every((track) => track.readyState === "ended")),
  );
}

async function firstHistoryEntry(page) {
  await page.getByRole("tab", { name: /History/ }).click();
  const list = page.getByRole("list", { name: "Call history" });
  await list.getByRole("listitem").first().waitFor();
  return list.getByRole("listitem").first();
}

test("a video call connects through the relay with moving video and audio both ways", async () => {
  const alice = await person("Alice");
  const bob = await person("Bob");

  const videoCall = personItem(alice.page, "Bob").getByRole("button", { name: "Video call" });
  await eventually("Bob to be online for Alice", () => videoCall.isEnabled());
  await videoCall.click();
  await alice.page.getByText("Calling Bob… Ringing").waitFor();

  const dialog = bob.page.getByRole("dialog");
  await dialog.waitFor();
  assert.match(await dialog.innerText(), /Alice is calling/);
  assert.match(await dialog.innerText(), /video call/i);
  await eventually("the ring tone", () => bob.page.evaluate(() => window.__probe.oscillators > 0));
  await dialog.getByRole("button", { name: "Accept", exact: true }).click();
  await dialog.waitFor({ state: "detached" });

  await remoteVideoMoving(alice.page);
  await remoteVideoMoving(bob.page);
  for (const side of [alice, bob]) {
    const stats = await eventually("relayed media on both sides", async () => {
      const current = await callStats(side.page);
      return current && current.localCandidateType === "relay" && current.audioBytes > 0 && current.videoFrames > 0 ? current : null;
    });
    assert.equal(stats.localCandidateType, "relay");
    await eventually("received audio energy", async () => (await callStats(side.page)).audioEnergy > 0);
    await side.page.getByText("Connected via relay").waitFor();
  }

  // The timer runs.
  const timer = alice.page.getByRole("timer");
  const firstTick = await timer.innerText();
  assert.match(firstTick, /^\d\d:\d\d$/);
  await eventually("the timer to tick", async () => (await timer.innerText()) !== firstTick, 3000);

  // Mute reaches the other side, and the microphone track really goes silent.
  const mute = alice.page.getByRole("button", { name: "Mute", exact: true });
  await mute.click();
  await eventually("Mute pressed", async () => (await mute.getAttribute("aria-pressed")) === "true");
  await bob.page.getByText("Alice is muted").waitFor();
  assert.equal(
    await alice.page.evaluate(() => window.__probe.streams.flatMap((s) => s.getAudioTracks()).some((t) => t.readyState === "live" && t.enabled)),
    false,
  );
  await mute.click();
  await bob.page.getByText("Alice is muted").waitFor({ state: "detached" });

  // Camera off releases the camera and reaches the other side; camera on brings video back.
  const camera = alice.page.getByRole("button", { name: "Camera", exact: true });
  assert.equal(await camera.getAttribute("aria-pressed"), "true");
  await camera.click();
  await bob.page.getByText("Alice's camera is off").first().waitFor();
  await eventually("Alice's camera released", () =>
    alice.page.evaluate(() => window.__probe.streams.flatMap((s) => s.getVideoTracks()).every((t) => t.readyState === "ended")),
  );
  const framesBefore = (await callStats(bob.page)).videoFrames;
  assert.equal(await camera.getAttribute("aria-pressed"), "false");
  await camera.click();
  await eventually("Camera pressed", async () => (await camera.getAttribute("aria-pressed")) === "true");
  await eventually("Alice's video back at Bob", async () => (await callStats(bob.page)).videoFrames > framesBefore + 10);
  await remoteVideoMoving(bob.page);

  // Let the call last a measurable time, then Bob hangs up.
  await new Promise((resolve) => setTimeout(resolve, 1200));
  await bob.page.getByRole("button", { name: "Hang up" }).click();
  await alice.page.getByText(/Bob hung up after/).waitFor();
  await alice.page.getByRole("list", { name: "People" }).waitFor();
  await bob.page.getByRole("list", { name: "People" }).waitFor();

  for (const [side, peer] of [[alice, "Bob"], [bob, "Alice"]]) {
    const entry = await firstHistoryEntry(side.page);
    const text = await entry.innerText();
    assert.match(text, new RegExp(peer));
    assert.match(text, /Video/);
    assert.match(text, /Answered/);
    assert.match(text, /\d\d:\d\d/); // the duration
    assert.ok(Number(await entry.getAttribute("data-duration")) >= 1, text);
    await eventually("camera and microphone released", () => allTracksStopped(side.page));
    assert.equal(await side.page.evaluate(() => window.__probe.pcs.every((pc) => pc.connectionState === "closed")), true);
  }
});

test("an audio call upgrades to video when one side turns the camera on", async () => {
  const carol = await person("Carol");
  const dave = await person("Dave");

  const audioCall = personItem(carol.page, "Dave").getByRole("button", { name: "Audio call" });
  await eventually("Dave online", () => audioCall.isEnabled());
  await audioCall.click();
  const dialog = dave.page.getByRole("dialog");
  await dialog.waitFor();
  assert.match(await dialog.innerText(), /audio call/i);
  await dialog.getByRole("button", { name: "Accept", exact: true }).click();

  for (const side of [carol, dave]) {
    await eventually("audio through the relay", async () => {
      const stats = await callStats(side.page);
      return stats && stats.localCandidateType === "relay" && stats.audioBytes > 0;
    });
    // An audio call opens no camera.
    assert.equal(await side.page.evaluate(() => window.__probe.streams.flatMap((s) => s.getVideoTracks()).length), 0);
  }
  const carolCamera = carol.page.getByRole("button", { name: "Camera", exact: true });
  await carolCamera.click();
  await eventually("Carol's camera on", async () => (await carolCamera.getAttribute("aria-pressed")) === "true");
  await remoteVideoMoving(dave.page);

  // The other side can turn its camera on too.
  await dave.page.getByRole("button", { name: "Camera", exact: true }).click();
  await remoteVideoMoving(carol.page);

  // Switching the microphone mid-call: the new device goes out on the same connection.
  await carol.page.getByRole("button", { name: "Devices" }).click();
  const microphone = carol.page.getByRole("combobox", { name: "Microphone" });
  await microphone.waitFor();
  const options = await microphone.locator("option").allTextContents();
  const other = options.find((label) => /Fake Audio Input 1/.test(label));
  assert.ok(other, `fake microphones listed: ${options.join(", ")}`);
  await microphone.selectOption({ label: other });
  await carol.page.getByRole("button", { name: "Done" }).click();
  await eventually("the new microphone in use", () =>
    carol.page.evaluate(async () => {
      const pc = window.__probe.pcs.at(-1);
      const sender = pc.getSenders().find((s) => s.track && s.track.kind === "audio");
      return sender && /Fake Audio Input 1/.test(sender.track.label) && sender.track.readyState === "live";
    }),
  );
  const before = (await callStats(dave.page)).audioBytes;
  await eventually("audio still arriving", async () => (await callStats(dave.page)).audioBytes > before + 2000);

  await carol.page.getByRole("button", { name: "Hang up" }).click();
  await dave.page.getByRole("list", { name: "People" }).waitFor();
  for (const side of [carol, dave]) await eventually("devices released", () => allTracksStopped(side.page));
});
