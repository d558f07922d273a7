// Issue 16: every call tells how it went. Real calls through the web client; each party's
// client sends `call:stats`, and afterwards both parties' history says the path (relayed
// over which protocol, or direct) and the round trip, in the API and on screen.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { eventually, personItem, scene } from "./harness.mjs";

/** The selected candidate pair of the page's live peer connection, as getStats() tells it. */
async function selectedPath(page) {
  return page.evaluate(async () => {
    const pc = window.__probe.pcs.filter((candidate) => candidate.connectionState === "connected").at(-1);
    if (!pc) return null;
    const report = await pc.getStats();
    const transport = [...report.values()].find((stat) => stat.type === "transport" && stat.selectedCandidatePairId);
    const pair = transport && report.get(transport.selectedCandidatePairId);
    const local = pair && report.get(pair.localCandidateId);
    const remote = pair && report.get(pair.remoteCandidateId);
    return local ? { local: local.candidateType, remote: remote?.candidateType, relayProtocol: local.relayProtocol ?? null } : null;
  });
}

async function token(daemon, username) {
  const response = await fetch(`${daemon.url}/api/v1/auth/login`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ username, password: "correct horse battery" }),
  });
  assert.equal(response.status, 200, await response.clone().text());
  return (await response.json()).token;
}

/** The newest history entry of `username` over the API once its quality has landed. */
async function latestQuality(daemon, tab) {
  const bearer = await token(daemon, tab.username);
  try {
    return await eventually(`${tab.username}'s quality in GET /api/v1/calls`, async () => {
      const response = await fetch(`${daemon.url}/api/v1/calls?limit=1`, { headers: { Authorization: `Bearer ${bearer}` } });
      const { items } = await response.json();
      return items[0]?.quality ?? null;
    });
  } catch (error) {
    error.message += `\nbrowser console:\n${tab.console.join("\n")}`;
    throw error;
  }
}

/** The quality line of the newest row in the visible History panel. */
async function visibleQuality(page) {
  await page.getByRole("tab", { name: /History/ }).click();
  const row = page.getByRole("list", { name: "Call history" }).getByRole("listitem").first();
  const line = row.locator(".quality");
  await line.waitFor({ timeout: 15_000 });
  return line.innerText();
}

/** Alice calls Bob, Bob accepts; both are connected. */
async function connectedCall(fixture, media) {
  const alice = await fixture.person("Alice");
  const bob = await fixture.person("Bob");
  const button = personItem(alice.page, "Bob").getByRole("button", { name: media === "video" ? "Video call" : "Audio call" });
  await eventually("Bob to be online for Alice", () => button.isEnabled());
  await button.click();
  const dialog = bob.page.getByRole("dialog");
  await dialog.waitFor();
  await dialog.getByRole("button", { name: "Accept", exact: true }).click();
  for (const side of [alice, bob]) await eventually("a connected peer connection", () => selectedPath(side.page));
  return { alice, bob };
}

describe("a relay-only call", () => {
  const fixture = scene(); // the harness's daemon: webrtc.ice_transport_policy = "relay"

  test("ends with both parties' history showing the relay, the protocol getStats reported, and an RTT", async () => {
    const { alice, bob } = await connectedCall(fixture, "video");
    const seen = {};
    for (const side of [alice, bob]) {
      seen[side.username] = await eventually("relayed media", async () => {
        const path = await selectedPath(side.page);
        return path?.local === "relay" && path.relayProtocol ? path : null;
      });
      await side.page.getByText("Connected via relay").waitFor();
    }
    await new Promise((resolve) => setTimeout(resolve, 1500));
    await bob.page.getByRole("button", { name: "Hang up" }).click();
    await alice.page.getByText(/Bob hung up after/).waitFor();

    for (const side of [alice, bob]) {
      const quality = await latestQuality(fixture.daemon, side);
      const expected = seen[side.username].relayProtocol;
      assert.equal(quality.path, "relay", JSON.stringify(quality));
      assert.equal(quality.relayProtocol, expected, "the protocol of the local relay candidate getStats() reported");
      assert.equal(typeof quality.rttMs, "number");
      assert.ok(quality.rttMs >= 0 && quality.rttMs < 1000, `a loopback round trip, not ${quality.rttMs}`);
      assert.ok(["good", "fair", "poor"].includes(quality.verdict));
      const text = await visibleQuality(side.page);
      assert.match(text, new RegExp(`relayed over ${expected.toUpperCase()}, \\d+ ms round trip`), text);
      assert.match(text, /^(Good|Fair|Poor) connection/, "the verdict in words, not only a colour");
    }
  });
});

describe("a direct call", () => {
  const fixture = scene({ webrtc: { ice_transport_policy: "all" } });

  test("over loopback host candidates shows path direct", async () => {
    const { alice, bob } = await connectedCall(fixture, "audio");
    for (const side of [alice, bob]) {
      const path = await eventually("a direct path", async () => {
        const current = await selectedPath(side.page);
        return current && current.local !== "relay" && current.remote !== "relay" ? current : null;
      });
      assert.equal(path.relayProtocol, null);
    }
    await alice.page.getByRole("button", { name: "Hang up" }).click();
    await bob.page.getByText(/Alice hung up after|Call with Alice ended/).waitFor();
    for (const side of [alice, bob]) {
      const quality = await latestQuality(fixture.daemon, side);
      assert.equal(quality.path, "direct", JSON.stringify(quality));
      assert.equal(quality.relayProtocol, null);
      assert.equal(typeof quality.rttMs, "number");
      assert.match(await visibleQuality(side.page), /^(Good|Fair|Poor) connection.*, direct, \d+ ms round trip$/);
    }
  });
});
