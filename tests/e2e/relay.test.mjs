// A relayed call between two real Chromium peers through the daemon's embedded
// TURN server, over UDP and over TCP, without the web client: two pages on the
// daemon's own http://127.0.0.1 origin, SDP passed by the test, credentials
// from GET /api/v1/ice-servers after registering a user over HTTP. Fake camera
// and microphone; iceTransportPolicy "relay", so only the relay can carry media.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { launchBrowser, registerUser, startDaemon, uniqueName } from "./harness.mjs";

let daemon;
let browser;
let iceReply;

before(async () => {
  daemon = await startDaemon();
  browser = await launchBrowser();
  const { token } = await registerUser(daemon, uniqueName("relay"), "correct horse battery", "Relay");
  const response = await fetch(`${daemon.url}/api/v1/ice-servers`, { headers: { Authorization: `Bearer ${token}` } });
  assert.equal(response.status, 200, await response.clone().text());
  iceReply = await response.json();
});

after(async () => {
  await browser?.close();
  await daemon?.stop();
});

/** The daemon's TURN entry, narrowed to one transport's URL. */
function turnServer(transport) {
  const entry = iceReply.iceServers.find((server) => server.username);
  assert.ok(entry, `no TURN entry with credentials in ${JSON.stringify(iceReply)}`);
  const urls = entry.urls.filter((url) => url.startsWith("turn:") && url.endsWith(`?transport=${transport}`));
  assert.equal(urls.length, 1, `one turn: URL for ${transport} in ${JSON.stringify(entry.urls)}`);
  return { urls, username: entry.username, credential: entry.credential };
}

async function metric(name) {
  const text = await (await fetch(`${daemon.url}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${name} `));
  assert.ok(line, `metric ${name} missing`);
  return Number(line.split(" ")[1]);
}

/** A page on the daemon's origin with a peer connection sending fake audio and video. */
async function peer(iceServer) {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${daemon.url}/healthz`);
  await page.evaluate(async (server) => {
    const pc = new RTCPeerConnection({ iceServers: [server], iceTransportPolicy: "relay" });
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 320, height: 240 } });
    for (const track of stream.getTracks()) pc.addTrack(track, stream);
    window.__pc = pc;
  }, iceServer);
  return { context, page };
}

/** Sets a description, makes the local one, and waits for ICE gathering (no trickle). */
async function describe(page, remote) {
  return page.evaluate(async (remoteDescription) => {
    const pc = window.__pc;
    if (remoteDescription) await pc.setRemoteDescription(remoteDescription);
    await pc.setLocalDescription(remoteDescription ? await pc.createAnswer() : await pc.createOffer());
    await new Promise((resolve, reject) => {
      if (pc.iceGatheringState === "complete") return resolve();
      const timer = setTimeout(() => reject(new Error("ICE gathering did not complete in 15 s")), 15000);
      pc.addEventListener("icegatheringstatechange", () => {
        if (pc.iceGatheringState === "complete") { clearTimeout(timer); resolve(); }
      });
    });
    const { type, sdp } = pc.localDescription;
    return { type, sdp };
  }, remote ?? null);
}

async function stats(page) {
  return page.evaluate(async () => {
    const pc = window.__pc;
    const report = await pc.getStats();
    const all = [...report.values()];
    const transport = all.find((s) => s.type === "transport" && s.selectedCandidatePairId);
    const pair = transport && report.get(transport.selectedCandidatePairId);
    const local = pair && report.get(pair.localCandidateId);
    const remote = pair && report.get(pair.remoteCandidateId);
    const audio = all.find((s) => s.type === "inbound-rtp" && s.kind === "audio");
    const video = all.find((s) => s.type === "inbound-rtp" && s.kind === "video");
    return {
      connectionState: pc.connectionState,
      localType: local?.candidateType,
      remoteType: remote?.candidateType,
      relayProtocol: local?.relayProtocol,
      audioBytes: audio?.bytesReceived ?? 0,
      videoBytes: video?.bytesReceived ?? 0,
      framesDecoded: video?.framesDecoded ?? 0,
    };
  });
}

async function relayedCall(transport) {
  const server = turnServer(transport);
  const relayedBefore = await metric("parley_turn_relayed_packets_to_peers_total");
  const alice = await peer(server);
  const bob = await peer(server);
  try {
    const offer = await describe(alice.page);
    assert.match(offer.sdp, /typ relay/, "Alice gathered relay candidates");
    const answer = await describe(bob.page, offer);
    await alice.page.evaluate((description) => window.__pc.setRemoteDescription(description), answer);

    // Connected, then media both ways for a few seconds.
    const deadline = Date.now() + 20000;
    let last;
    for (;;) {
      last = [await stats(alice.page), await stats(bob.page)];
      const flowing = last.every((s) => s.connectionState === "connected" && s.audioBytes > 0 && s.framesDecoded > 0);
      if (flowing) break;
      assert.ok(Date.now() < deadline, `no media both ways within 20 s over ${transport}: ${JSON.stringify(last)}`);
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
    await new Promise((resolve) => setTimeout(resolve, 3000));
    const final = [await stats(alice.page), await stats(bob.page)];
    for (const [who, s, before] of [["Alice", final[0], last[0]], ["Bob", final[1], last[1]]]) {
      assert.equal(s.localType, "relay", `${who} uses a relay candidate: ${JSON.stringify(s)}`);
      assert.equal(s.relayProtocol, transport, `${who} reaches the relay over ${transport}: ${JSON.stringify(s)}`);
      assert.ok(s.audioBytes > before.audioBytes, `${who} keeps receiving audio: ${JSON.stringify(s)}`);
      assert.ok(s.framesDecoded > before.framesDecoded + 10, `${who} keeps decoding video: ${JSON.stringify(s)}`);
    }
    const relayedAfter = await metric("parley_turn_relayed_packets_to_peers_total");
    assert.ok(relayedAfter - relayedBefore > 200, `the daemon relayed ${relayedAfter - relayedBefore} packets`);
  } finally {
    await alice.context.close();
    await bob.context.close();
  }
}

test("relayed call over TURN/UDP carries audio and video both ways", async () => {
  await relayedCall("udp");
});

test("relayed call over TURN/TCP carries audio and video both ways", async () => {
  await relayedCall("tcp");
});
