// A page reload during a call: the same device comes back within the grace
// period and the call resumes with media flowing again, whichever side reloads.

import assert from "node:assert/strict";
import { test } from "node:test";
import { eventually, personItem, scene } from "./harness.mjs";

const fixture = scene();
const person = (displayName) => fixture.person(displayName);

async function framesDecoded(page) {
  return page.evaluate(async () => {
    const pc = window.__probe.pcs.filter((candidate) => candidate.connectionState === "connected").at(-1);
    if (!pc) return 0;
    const stats = [...(await pc.getStats()).values()];
    return stats.find((stat) => stat.type === "inbound-rtp" && stat.kind === "video")?.framesDecoded ?? 0;
  });
}

async function mediaFlowing(page) {
  const start = await eventually("a connected call with video", async () => (await framesDecoded(page)) || null);
  await eventually("video frames to keep arriving", async () => (await framesDecoded(page)) > start + 10);
  const video = page.getByLabel("Remote video");
  await eventually("the remote video to play", () => video.evaluate((element) => element.videoWidth > 0 && !element.paused));
}

async function connectedCall(caller, calleeName, callee) {
  const button = personItem(caller.page, calleeName).getByRole("button", { name: "Video call" });
  await eventually(`${calleeName} online`, () => button.isEnabled());
  await button.click();
  await callee.page.getByRole("dialog").getByRole("button", { name: "Accept", exact: true }).click();
  await mediaFlowing(caller.page);
  await mediaFlowing(callee.page);
}

for (const reloading of ["callee", "caller"]) {
  test(`the ${reloading} reloads the page during a call and the call resumes`, async () => {
    const caller = await person(reloading === "callee" ? "Kim" : "Lee");
    const callee = await person(reloading === "callee" ? "Max" : "Noa");
    await connectedCall(caller, reloading === "callee" ? "Max" : "Noa", callee);
    const [reloader, other] = reloading === "callee" ? [callee, caller] : [caller, callee];
    await reloader.page.reload();
    // The reloaded page goes straight back into the call, no dialog, no sign-in.
    await reloader.page.getByRole("button", { name: "Hang up" }).waitFor();
    await mediaFlowing(reloader.page);
    await mediaFlowing(other.page);
    await other.page.getByText("Connected via relay").waitFor();

    await other.page.getByRole("button", { name: "Hang up" }).click();
    await reloader.page.getByRole("list", { name: "People" }).waitFor();
    // One call in the history, completed: the reload did not end it.
    await reloader.page.getByRole("tab", { name: /History/ }).click();
    const entries = reloader.page.getByRole("list", { name: "Call history" }).getByRole("listitem");
    await entries.first().waitFor();
    assert.equal(await entries.count(), 1);
    assert.match(await entries.first().innerText(), /Answered/);
  });
}

test("a network drop of the signaling connection: the call recovers when the socket comes back", async () => {
  const caller = await person("Oli");
  const callee = await person("Pat");
  await connectedCall(caller, "Pat", callee);
  // Offline emulation cuts the page's connections to the server (the socket), not the media path.
  await callee.context.setOffline(true);
  await caller.page.getByText("Pat is reconnecting…").waitFor();
  await callee.context.setOffline(false);
  await caller.page.getByText("Pat is reconnecting…").waitFor({ state: "detached", timeout: 20_000 });
  await mediaFlowing(caller.page);
  await mediaFlowing(callee.page);
  await callee.page.getByRole("button", { name: "Hang up" }).click();
  await caller.page.getByRole("list", { name: "People" }).waitFor();
});
