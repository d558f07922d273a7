// Calls survive the server (issue 13): a video call through the web client outlives a
// SIGTERM and restart of the daemon. Both pages show the call again within the reconnect
// grace, video is decoded again on both sides, and nobody is signed out. A relayed call needs
// an ICE restart (the relay's allocations died with the old process); a direct call's media
// must not stop at all. Each test prints the media gap it measured.

import assert from "node:assert/strict";
import { test } from "node:test";
import { eventually, launchBrowser, newPerson, personItem, registerUser, startDaemon, uniqueName } from "./harness.mjs";

const PASSWORD = "correct horse battery";

async function person(browser, daemon, displayName) {
  const username = uniqueName(displayName.toLowerCase());
  await registerUser(daemon, username, PASSWORD, displayName);
  const tab = await newPerson(browser, daemon);
  await tab.page.getByLabel("Username").fill(username);
  await tab.page.getByLabel("Password", { exact: true }).fill(PASSWORD);
  await tab.page.getByRole("button", { name: "Sign in" }).click();
  await tab.page.getByRole("button", { name: "Sign out" }).waitFor();
  return tab;
}

/** Video frames decoded by every peer connection the page made (a restart may replace one). */
async function framesDecoded(page) {
  return page.evaluate(async () => {
    let total = 0;
    for (const pc of window.__probe.pcs) {
      if (pc.connectionState === "closed") continue;
      const stats = [...(await pc.getStats()).values()];
      total += stats.find((stat) => stat.type === "inbound-rtp" && stat.kind === "video")?.framesDecoded ?? 0;
    }
    return total;
  });
}

async function mediaFlowing(page, what) {
  const start = await framesDecoded(page);
  await eventually(`${what}: video frames arriving`, async () => (await framesDecoded(page)) > start + 10, 30_000);
}

/**
 * Samples framesDecoded of the page's live connection every 50 ms inside the page and keeps
 * the longest stretch without a new frame since `watchGap` started: the media gap.
 */
async function watchGap(page) {
  await page.evaluate(() => {
    const seen = new Map();
    const state = (window.__gap = { lastProgress: performance.now(), longest: 0 });
    window.setInterval(async () => {
      let progressed = false;
      for (const pc of window.__probe.pcs) {
        if (pc.connectionState === "closed") continue;
        const stats = [...(await pc.getStats()).values()];
        const frames = stats.find((stat) => stat.type === "inbound-rtp" && stat.kind === "video")?.framesDecoded ?? 0;
        if (frames > (seen.get(pc) ?? 0)) progressed = true;
        seen.set(pc, frames);
      }
      const now = performance.now();
      if (progressed) {
        state.longest = Math.max(state.longest, now - state.lastProgress);
        state.lastProgress = now;
      }
    }, 50);
  });
}

async function longestGap(page) {
  return page.evaluate(() => Math.round(Math.max(window.__gap.longest, performance.now() - window.__gap.lastProgress)));
}

async function selectedRoute(page) {
  return page.evaluate(async () => {
    const pc = window.__probe.pcs.filter((candidate) => candidate.connectionState === "connected").at(-1);
    if (!pc) return null;
    const stats = [...(await pc.getStats()).values()];
    const pair = stats.find((stat) => stat.type === "candidate-pair" && stat.nominated && stat.state === "succeeded");
    const local = stats.find((stat) => stat.id === pair?.localCandidateId);
    return local?.candidateType ?? null;
  });
}

async function survivesRestart(policy) {
  const daemon = await startDaemon({ webrtc: { ice_transport_policy: policy } });
  const browser = await launchBrowser();
  try {
    const caller = await person(browser, daemon, "Rae");
    const callee = await person(browser, daemon, "Sol");
    const tokens = await Promise.all([caller, callee].map((tab) => tab.page.evaluate(() => localStorage.getItem("parley.token"))));
    const button = personItem(caller.page, "Sol").getByRole("button", { name: "Video call" });
    await eventually("Sol online", () => button.isEnabled());
    await button.click();
    await callee.page.getByRole("dialog").getByRole("button", { name: "Accept", exact: true }).click();
    for (const [tab, name] of [[caller, "caller"], [callee, "callee"]]) await mediaFlowing(tab.page, `${name} before the restart`);
    const route = await selectedRoute(caller.page);
    assert.equal(route === "relay", policy === "relay", `the ${policy} call's path is ${route}`);

    for (const tab of [caller, callee]) await watchGap(tab.page);
    const stoppedAt = Date.now();
    await daemon.halt();
    const haltMs = Date.now() - stoppedAt;
    // While it is away both pages say so, keep the call screen, and are still signed in.
    for (const tab of [caller, callee]) {
      await tab.page.getByText("Reconnecting to server…").waitFor();
      assert.ok(await tab.page.getByRole("button", { name: "Hang up" }).isVisible());
    }
    const framesWhileDown = await Promise.all([caller, callee].map((tab) => framesDecoded(tab.page)));
    await new Promise((resolveWait) => setTimeout(resolveWait, 1000));
    const framesAfterDown = await Promise.all([caller, callee].map((tab) => framesDecoded(tab.page)));
    await daemon.resume();
    const resumedAt = Date.now();

    for (const tab of [caller, callee]) {
      // Back within the grace (15 s by default), in the same call, not signed out.
      await tab.page.getByText("Reconnected").waitFor({ timeout: 15_000 });
      await tab.page.getByRole("button", { name: "Hang up" }).waitFor();
      await tab.page.getByRole("button", { name: "Sign out" }).waitFor();
    }
    for (const [tab, name] of [[caller, "caller"], [callee, "callee"]]) await mediaFlowing(tab.page, `${name} after the restart`);
    const gaps = [await longestGap(caller.page), await longestGap(callee.page)];
    const back = Date.now() - resumedAt;
    console.log(
      `${policy} call across SIGTERM + restart: exit took ${haltMs} ms, server away ${resumedAt - stoppedAt} ms, ` +
        `media gap caller ${gaps[0]} ms, callee ${gaps[1]} ms; frames while the server was down ` +
        `caller +${framesAfterDown[0] - framesWhileDown[0]}, callee +${framesAfterDown[1] - framesWhileDown[1]}; ` +
        `video on both sides ${back} ms after the start`,
    );
    if (policy === "all") {
      // A direct path does not depend on the server: media never stopped.
      assert.ok(framesAfterDown[0] > framesWhileDown[0] + 10 && framesAfterDown[1] > framesWhileDown[1] + 10, "video kept flowing while the server was down");
      assert.ok(gaps.every((gap) => gap < 1000), `direct media paused ${gaps} ms`);
    }
    const after = await Promise.all([caller, callee].map((tab) => tab.page.evaluate(() => localStorage.getItem("parley.token"))));
    assert.deepEqual(after, tokens, "nobody was signed out");

    await caller.page.getByRole("button", { name: "Hang up" }).click();
    for (const tab of [caller, callee]) {
      await tab.page.getByRole("list", { name: "People" }).waitFor();
      await tab.page.getByRole("tab", { name: /History/ }).click();
      const entries = tab.page.getByRole("list", { name: "Call history" }).getByRole("listitem");
      await entries.first().waitFor();
      assert.equal(await entries.count(), 1, "one call in the history");
      assert.match(await entries.first().innerText(), /Answered/);
    }
    for (const tab of [caller, callee]) await tab.context.close();
  } catch (error) {
    console.log(daemon.logs().slice(-4000));
    throw error;
  } finally {
    await browser.close();
    await daemon.stop();
  }
}

test("a relay-only video call survives SIGTERM and a restart of the daemon", { timeout: 180_000 }, () => survivesRestart("relay"));

test("a direct video call survives SIGTERM and a restart without its media stopping", { timeout: 180_000 }, () => survivesRestart("all"));
