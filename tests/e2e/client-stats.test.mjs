// Unit tests of web/src/stats.ts (the call quality summary: `getStats()` entries in, the
// spec's `call:stats` report out; the history's wording of `quality`) and of the connection
// test's rules in web/src/netprobe.ts. Compiled with the client's own esbuild, no browser.

import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { pathToFileURL } from "node:url";
import { repoRoot } from "./harness.mjs";

let stats;
let probe;
let dir;

before(async () => {
  const require = createRequire(join(repoRoot, "web/package.json"));
  const { build } = require("esbuild");
  dir = await mkdtemp(join(tmpdir(), "parley-stats-"));
  const outfile = join(dir, "stats.mjs");
  await build({ entryPoints: [join(repoRoot, "web/src/stats.ts")], bundle: true, format: "esm", platform: "neutral", outfile, logLevel: "warning" });
  stats = await import(pathToFileURL(outfile).href);
  const probeFile = join(dir, "netprobe.mjs");
  await build({ entryPoints: [join(repoRoot, "web/src/netprobe.ts")], bundle: true, format: "esm", platform: "neutral", outfile: probeFile, logLevel: "warning" });
  probe = await import(pathToFileURL(probeFile).href);
});

after(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

const context = { iceState: "connected", networkType: null };

/**
 * A Chromium-shaped report of a relayed call at time `at` (ms), with running totals taken
 * from `totals`: two local candidates (host, and a relay over `protocol`), the peer's relay
 * candidate, and one audio and one video stream each way.
 */
function relayedReport(at, totals, { protocol = "tcp", rtt = 0.042 } = {}) {
  const entries = [
    { id: "T1", type: "transport", selectedCandidatePairId: "CP1" },
    { id: "CP1", type: "candidate-pair", localCandidateId: "L2", remoteCandidateId: "R1", state: "succeeded", nominated: true, currentRoundTripTime: rtt },
    { id: "CP0", type: "candidate-pair", localCandidateId: "L1", remoteCandidateId: "R1", state: "failed" },
    { id: "L1", type: "local-candidate", candidateType: "host", networkType: "ethernet" },
    { id: "L2", type: "local-candidate", candidateType: "relay", relayProtocol: protocol, networkType: "ethernet" },
    { id: "R1", type: "remote-candidate", candidateType: "relay" },
    {
      id: "IA", type: "inbound-rtp", kind: "audio", jitter: 0.012, packetsReceived: totals.audioIn, packetsLost: totals.lostIn,
      bytesReceived: totals.audioIn * 100, totalSamplesReceived: totals.samples, concealedSamples: totals.concealed,
    },
    { id: "IV", type: "inbound-rtp", kind: "video", jitter: 0.03, packetsReceived: totals.videoIn, packetsLost: 0, bytesReceived: totals.videoIn * 1000, freezeCount: 2, frameWidth: 640, frameHeight: 480 },
    { id: "OA", type: "outbound-rtp", kind: "audio", packetsSent: totals.sent, bytesSent: totals.sent * 100 },
    { id: "RIA", type: "remote-inbound-rtp", kind: "audio", packetsLost: totals.lostOut, roundTripTime: 0.05 },
  ];
  return new Map(entries.map((entry) => [entry.id, { timestamp: at, ...entry }]));
}

test("a relayed call reports the selected pair's candidate types, the relay protocol and the RTT in ms", () => {
  const { report } = stats.summariseStats(relayedReport(1000, { audioIn: 500, videoIn: 300, lostIn: 0, sent: 500, lostOut: 0, samples: 48000, concealed: 0 }), null, context);
  assert.equal(report.path, "relay");
  assert.equal(report.localCandidate, "relay");
  assert.equal(report.remoteCandidate, "relay");
  assert.equal(report.relayProtocol, "tcp");
  assert.equal(report.rttMs, 42, "the pair's current round trip, not the RTCP one");
  assert.equal(report.jitterMs, 12, "audio jitter first: it is what people hear");
  assert.deepEqual([report.videoWidth, report.videoHeight, report.videoFreezes], [640, 480, 2]);
  assert.equal(report.networkType, "ethernet");
  assert.deepEqual(report.localCandidateTypes, ["host", "relay"]);
  assert.deepEqual(report.remoteCandidateTypes, ["relay"]);
  assert.deepEqual(report.relayProtocols, ["tcp"]);
  assert.equal(report.iceState, "connected");
  assert.equal(stats.complete(report), true);
});

test("loss, bitrates and concealment are over the interval since the previous report", () => {
  const first = stats.summariseStats(
    relayedReport(10_000, { audioIn: 500, videoIn: 0, lostIn: 0, sent: 500, lostOut: 0, samples: 480_000, concealed: 0 }),
    null,
    context,
  );
  assert.equal(first.report.lossInPct, 0);
  assert.equal(first.report.bitrateInKbps, null, "no interval yet, no rate");
  // Ten seconds later: 460 packets arrived and 40 were lost (8 %); the peer lost 25 of our 500 (5 %).
  const second = stats.summariseStats(
    relayedReport(20_000, { audioIn: 960, videoIn: 0, lostIn: 40, sent: 1000, lostOut: 25, samples: 960_000, concealed: 48_000 }),
    first.counters,
    context,
  );
  assert.equal(second.report.lossInPct, 8);
  assert.equal(second.report.lossOutPct, 5);
  assert.equal(second.report.audioConcealedPct, 10);
  // 460 packets × 100 bytes × 8 bits in 10 s = 36.8 kbit/s; 500 × 100 × 8 / 10 s = 40 kbit/s out.
  assert.equal(second.report.bitrateInKbps, 36.8);
  assert.equal(second.report.bitrateOutKbps, 40);
});

test("an interval in which no packet moved (media stalled) reports the whole connection's loss", () => {
  const totals = { audioIn: 900, videoIn: 0, lostIn: 100, sent: 1000, lostOut: 20, samples: 1, concealed: 0 };
  const first = stats.summariseStats(relayedReport(10_000, totals), null, context);
  const stalled = stats.summariseStats(relayedReport(20_000, totals), first.counters, { ...context, iceState: "failed" });
  assert.equal(stalled.report.lossInPct, 10);
  assert.equal(stalled.report.lossOutPct, 2);
  assert.equal(stalled.report.bitrateInKbps, 0, "nothing arrived in those 10 s");
  assert.equal(stats.complete(stalled.report), true, "so a failure report can still be sent");
});

test("a new peer connection (after a resume) counts from zero instead of reporting negative deltas", () => {
  const before = stats.summariseStats(relayedReport(10_000, { audioIn: 5000, videoIn: 0, lostIn: 100, sent: 5000, lostOut: 0, samples: 1, concealed: 0 }), null, context);
  const fresh = stats.summariseStats(relayedReport(20_000, { audioIn: 90, videoIn: 0, lostIn: 10, sent: 100, lostOut: 0, samples: 1, concealed: 0 }), before.counters, context);
  assert.equal(fresh.report.lossInPct, 10);
  assert.equal(fresh.report.bitrateInKbps, null);
});

test("a direct path over host candidates has no relay protocol; UDP and TLS relays are told apart", () => {
  const direct = new Map([
    ["T", { id: "T", type: "transport", selectedCandidatePairId: "P" }],
    ["P", { id: "P", type: "candidate-pair", localCandidateId: "L", remoteCandidateId: "R", currentRoundTripTime: 0.001 }],
    ["L", { id: "L", type: "local-candidate", candidateType: "host", networkType: "unknown" }],
    ["R", { id: "R", type: "remote-candidate", candidateType: "prflx" }],
    ["O", { id: "O", type: "outbound-rtp", packetsSent: 10, bytesSent: 1000 }],
  ]);
  const { report } = stats.summariseStats(direct, null, { iceState: "completed", networkType: "wifi" });
  assert.equal(report.path, "direct");
  assert.equal(report.relayProtocol, null);
  assert.equal(report.rttMs, 1);
  assert.equal(report.networkType, "wifi", "the browser's own network type when the candidate says unknown");
  assert.equal(report.jitterMs, 0, "media flowing with no jitter measured yet");
  for (const protocol of ["udp", "tls"]) {
    const { report: relayed } = stats.summariseStats(relayedReport(1000, { audioIn: 1, videoIn: 1, lostIn: 0, sent: 1, lostOut: 0, samples: 1, concealed: 0 }, { protocol }), null, context);
    assert.equal(relayed.relayProtocol, protocol);
  }
});

test("a connection that never chose a pair is incomplete but still says what ICE saw", () => {
  const failed = new Map([
    ["L", { id: "L", type: "local-candidate", candidateType: "host" }],
    ["R1", { id: "R1", type: "remote-candidate", candidateType: "srflx" }],
    ["R2", { id: "R2", type: "remote-candidate", candidateType: "host" }],
  ]);
  const { report } = stats.summariseStats(failed, null, { iceState: "failed", networkType: null });
  assert.equal(report.path, null);
  assert.equal(report.rttMs, null);
  assert.equal(stats.complete(report), false, "the server requires path, RTT, jitter and loss");
  assert.equal(report.iceState, "failed");
  assert.deepEqual(report.localCandidateTypes, ["host"], "no relay candidate: the clue for a blocked network");
  assert.deepEqual(report.remoteCandidateTypes, ["host", "srflx"]);
  assert.deepEqual(report.relayProtocols, []);

  // ICE failed: the report goes without the pair's fields, for the admin's diagnosis.
  const payload = stats.payloadFor(report);
  assert.notEqual(payload, null, "a failed connection is reported");
  for (const field of ["path", "localCandidate", "remoteCandidate", "relayProtocol", "rttMs", "jitterMs", "lossInPct", "lossOutPct"]) {
    assert.equal(field in payload, false, `${field} is left out`);
  }
  assert.equal(payload.iceState, "failed");
  assert.deepEqual(payload.localCandidateTypes, ["host"]);
  assert.deepEqual(payload.remoteCandidateTypes, ["host", "srflx"]);
  assert.deepEqual(payload.relayProtocols, []);
  assert.equal(report.path, null, "the summary itself is not changed");

  // Still checking: nothing to say yet; the next sample (or the failure) will.
  const { report: checking } = stats.summariseStats(failed, null, { iceState: "checking", networkType: null });
  assert.equal(stats.payloadFor(checking), null);
});

test("a complete report is sent whole; a selected pair without figures is not sent", () => {
  const { report } = stats.summariseStats(relayedReport(1000, { audioIn: 10, videoIn: 0, lostIn: 0, sent: 10, lostOut: 0, samples: 1, concealed: 0 }), null, context);
  assert.equal(stats.payloadFor(report), report);
  const { report: failedAfterConnecting } = stats.summariseStats(relayedReport(1000, { audioIn: 10, videoIn: 0, lostIn: 0, sent: 10, lostOut: 0, samples: 1, concealed: 0 }), null, { iceState: "failed", networkType: null });
  assert.equal(stats.payloadFor(failedAfterConnecting).path, "relay", "ICE failed after a pair was selected: the full report, path included");
  const noRtt = { ...report, iceState: "failed", rttMs: null };
  assert.equal(stats.payloadFor(noRtt), null, "with a path, the server requires the figures");
});

test("values stay within the spec's bounds", () => {
  const wild = relayedReport(1000, { audioIn: 1, videoIn: 0, lostIn: 0, sent: 1, lostOut: 0, samples: 1, concealed: 0 }, { rtt: 120 });
  wild.get("L2").networkType = "a-network-type-name-far-longer-than-thirty-two";
  const { report } = stats.summariseStats(wild, null, context);
  assert.equal(report.rttMs, 60_000);
  assert.ok(report.networkType.length <= 32);
  const ahead = stats.summariseStats(relayedReport(2000, { audioIn: 1, videoIn: 0, lostIn: 50, sent: 1, lostOut: 9, samples: 1, concealed: 0 }), null, context);
  assert.ok(ahead.report.lossInPct <= 100 && ahead.report.lossOutPct <= 100);
});

test("the history says the verdict, the path in words and the round trip", () => {
  const good = { path: "relay", relayProtocol: "tls", rttMs: 42.4, lossPct: 0, jitterMs: 3, verdict: "good" };
  assert.equal(stats.describeQuality(good), "Good connection, relayed over TLS, 42 ms round trip");
  assert.equal(stats.describeQuality({ ...good, path: "direct", relayProtocol: null, rttMs: 1 }), "Good connection, direct, 1 ms round trip");
  assert.equal(stats.describeQuality({ ...good, relayProtocol: null }), "Good connection, relayed, 42 ms round trip");
  const lossy = { path: "direct", relayProtocol: null, rttMs: 120, lossPct: 8, jitterMs: 20, verdict: "poor" };
  assert.equal(stats.describeQuality(lossy), "Poor connection: 8% loss, direct, 120 ms round trip");
  const slow = { path: "relay", relayProtocol: "udp", rttMs: 450, lossPct: 0.5, jitterMs: 10, verdict: "fair" };
  assert.equal(stats.describeQuality(slow), "Fair connection: 450 ms delay, relayed over UDP, 450 ms round trip");
  assert.equal(stats.describeQuality({ ...slow, rttMs: 40, jitterMs: 50 }), "Fair connection: 50 ms jitter, relayed over UDP, 40 ms round trip");
  assert.equal(stats.describeQuality({ ...lossy, lossPct: 2.5, rttMs: 10, jitterMs: 0 }), "Poor connection: 2.5% loss, direct, 10 ms round trip");
  assert.equal(stats.describeQuality(null), "", "no report, nothing to say");
});

const works = (rttMs) => ({ ok: true, rttMs, error: null });
const fails = (error = "no relay candidate: the relay could not be reached") => ({ ok: false, rttMs: null, error });
const allMedia = { microphone: true, camera: true };

test("connection test: all working, or UDP blocked, says whether calls work and over what", () => {
  assert.equal(probe.verdict({ udp: works(3), tcp: works(4), tls: works(5) }, allMedia), "Calls will work.");
  assert.equal(
    probe.verdict({ udp: fails(), tcp: works(4), tls: fails(probe.NOT_OFFERED) }, allMedia),
    "Calls will work. Your network blocks UDP, so calls will use the relay over TCP.",
  );
  assert.equal(
    probe.verdict({ udp: fails(), tcp: fails(), tls: works(9) }, allMedia),
    "Calls will work. Your network blocks UDP and TCP, so calls will use the relay over TLS.",
  );
});

test("connection test: nothing gets through; a transport the server lacks is not called blocked", () => {
  assert.equal(
    probe.verdict({ udp: fails(), tcp: fails(), tls: fails(probe.NOT_OFFERED) }, allMedia),
    "Calls will not work from this network: it blocks the relay over UDP and TCP. Ask your administrator to turn on the relay over TLS, which gets through most networks.",
  );
  assert.match(probe.verdict({ udp: fails(), tcp: fails(), tls: fails() }, allMedia), /blocks the relay over UDP, TCP and TLS\. Try another network/);
});

test("connection test: a missing microphone or camera is said after the network verdict", () => {
  const ok = { udp: works(3), tcp: works(4), tls: works(5) };
  assert.equal(probe.verdict(ok, { microphone: true, camera: false }), "Calls will work. Your camera could not be opened: audio calls still work.");
  assert.match(probe.verdict(ok, { microphone: false, camera: true }), /microphone could not be opened, so others would not hear you/);
  assert.match(probe.verdict(ok, { microphone: false, camera: false }), /microphone and camera could not be opened/);
});

test("connection test: each probe gets only its transport's relay URL, with the credentials", () => {
  const servers = [
    { urls: ["stun:parley.test:3478"] },
    {
      urls: ["turn:parley.test:3478?transport=udp", "turn:parley.test:3478?transport=tcp", "turns:parley.test:443?transport=tcp"],
      username: "1700000000:7",
      credential: "secret",
    },
  ];
  assert.deepEqual(probe.relayFor(servers, "udp"), { urls: ["turn:parley.test:3478?transport=udp"], username: "1700000000:7", credential: "secret" });
  assert.deepEqual(probe.relayFor(servers, "tcp").urls, ["turn:parley.test:3478?transport=tcp"]);
  assert.deepEqual(probe.relayFor(servers, "tls").urls, ["turns:parley.test:443?transport=tcp"]);
  assert.deepEqual(probe.relayFor([{ urls: "turn:h:3478", username: "u", credential: "c" }], "udp").urls, ["turn:h:3478"], "no transport means UDP");
  assert.equal(probe.relayFor(servers.slice(0, 1), "udp"), null, "a STUN server has no relay");
  assert.equal(probe.relayFor([servers[1]].map((s) => ({ ...s, urls: s.urls.slice(0, 2) })), "tls"), null);
});

// ---------------------------------------------------------------- the reporter's timing

/** A peer connection that only answers getStats(), with a connected relay path. */
function fakeConnection() {
  const entries = [...relayedReport(1000, { audioIn: 10, videoIn: 0, lostIn: 0, sent: 10, lostOut: 0, samples: 1, concealed: 0 }).values()];
  return {
    iceConnectionState: "connected",
    connectionState: "connected",
    getStats: async () => ({ forEach: (visit) => entries.forEach((entry) => visit(entry)) }),
  };
}

/** Lets the reporter's awaited getStats() settle. */
const settle = () => new Promise((resolve) => setImmediate(resolve));

test("the reporter sends every 10 s while active, keeps 5 s between reports, and sends one final report", async (t) => {
  t.mock.timers.enable({ apis: ["setInterval", "setTimeout", "Date"], now: 1_000_000 });
  globalThis.window ??= globalThis;
  globalThis.navigator ??= {};
  const sent = [];
  const reporter = new stats.StatsReporter(() => "call-1", (event, payload) => sent.push({ event, at: Date.now(), payload }));
  const pc = fakeConnection();
  reporter.watch(pc);
  t.mock.timers.tick(9_999);
  await settle();
  assert.equal(sent.length, 0, "nothing before the first 10 s");
  t.mock.timers.tick(1);
  await settle();
  assert.equal(sent.length, 1);
  assert.equal(sent[0].event, "call:stats");
  assert.equal(sent[0].payload.callId, "call-1");
  assert.equal(sent[0].payload.path, "relay");

  // ICE fails 2 s after that report: the failure report waits until 5 s have passed.
  t.mock.timers.tick(2_000);
  pc.iceConnectionState = "failed";
  reporter.failed(pc);
  t.mock.timers.tick(2_999);
  await settle();
  assert.equal(sent.length, 1, "not within 5 s of the previous report");
  t.mock.timers.tick(1);
  await settle();
  assert.equal(sent.length, 2);
  assert.equal(sent[1].payload.iceState, "failed");

  // The call ends a moment later: the final report goes at once, whatever the interval.
  t.mock.timers.tick(1_000);
  pc.iceConnectionState = "connected";
  await reporter.finish(pc);
  assert.equal(sent.length, 3, "the final report is the one allowed after the end");
  t.mock.timers.tick(60_000);
  await settle();
  assert.equal(sent.length, 3, "nothing after the final report");
  await reporter.finish(pc);
  assert.equal(sent.length, 3, "one final report only");
});

test("the reporter sends a failure report without a path when ICE failed before any pair was selected", async (t) => {
  t.mock.timers.enable({ apis: ["setInterval", "setTimeout", "Date"], now: 2_000_000 });
  globalThis.window ??= globalThis;
  globalThis.navigator ??= {};
  const sent = [];
  const reporter = new stats.StatsReporter(() => "call-2", (event, payload) => sent.push({ event, payload }));
  const entries = [
    { id: "L", type: "local-candidate", candidateType: "host" },
    { id: "R", type: "remote-candidate", candidateType: "srflx" },
  ];
  const pc = {
    iceConnectionState: "checking",
    connectionState: "connecting",
    getStats: async () => ({ forEach: (visit) => entries.forEach((entry) => visit(entry)) }),
  };
  reporter.watch(pc);
  t.mock.timers.tick(10_000);
  await settle();
  assert.equal(sent.length, 0, "while ICE is still checking there is nothing to report");
  pc.iceConnectionState = "failed";
  reporter.failed(pc);
  t.mock.timers.tick(0);
  await settle();
  assert.equal(sent.length, 1);
  const { event, payload } = sent[0];
  assert.equal(event, "call:stats");
  assert.deepEqual(payload, {
    callId: "call-2",
    bitrateInKbps: null,
    bitrateOutKbps: null,
    audioConcealedPct: null,
    videoFreezes: null,
    videoWidth: null,
    videoHeight: null,
    networkType: null,
    iceState: "failed",
    localCandidateTypes: ["host"],
    remoteCandidateTypes: ["srflx"],
    relayProtocols: [],
  });
  reporter.stop();
});
