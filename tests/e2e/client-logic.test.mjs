// Unit tests of the web client's rules that live outside the DOM (web/src/callstate.ts):
// compiled with the client's own esbuild, no browser needed.

import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { pathToFileURL } from "node:url";
import { repoRoot } from "./harness.mjs";

let logic;
let dir;

before(async () => {
  // esbuild is the web client's own build dependency (web/node_modules).
  const require = createRequire(join(repoRoot, "web/package.json"));
  const { build } = require("esbuild");
  dir = await mkdtemp(join(tmpdir(), "parley-logic-"));
  const outfile = join(dir, "callstate.mjs");
  await build({ entryPoints: [join(repoRoot, "web/src/callstate.ts")], bundle: true, format: "esm", platform: "neutral", outfile, logLevel: "warning" });
  logic = await import(pathToFileURL(outfile).href);
});

after(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

const view = (overrides = {}) => ({ role: "callee", name: "Ann", wasActive: false, byMe: false, ...overrides });
const ended = (status, reason, extra = {}) => ({ status, reason, durationSecs: 0, message: null, ...extra });

test("missed follows the server's rule: incoming and missed or busy, never cancelled (issue 15)", () => {
  assert.equal(logic.isMissed("incoming", "missed"), true);
  assert.equal(logic.isMissed("incoming", "busy"), true);
  assert.equal(logic.isMissed("incoming", "cancelled"), false);
  assert.equal(logic.isMissed("incoming", "declined"), false);
  assert.equal(logic.isMissed("outgoing", "missed"), false);
});

test("a call cancelled while ringing is told as cancelled, with Call back, and is not missed (issue 15)", () => {
  const notice = logic.endedNotice(ended("cancelled", "cancelled"), view());
  assert.deepEqual(notice, { text: "Ann cancelled the call.", kind: "info", callBack: true, missed: false });
  assert.equal(logic.endedNotice(ended("cancelled", "cancelled"), view({ role: "caller", byMe: true })).text, "");
});

test("no answer and missed calls offer Call back; the callee's counts as missed", () => {
  const caller = logic.endedNotice(ended("missed", "no_answer"), view({ role: "caller", name: "Bill" }));
  assert.deepEqual(caller, { text: "No answer from Bill.", kind: "error", callBack: true, missed: false });
  const callee = logic.endedNotice(ended("missed", "no_answer"), view());
  assert.deepEqual(callee, { text: "Missed call from Ann.", kind: "info", callBack: true, missed: true });
});

test("hang-ups, declines with a message, lost connections and restarts read as a person would say them", () => {
  assert.equal(logic.endedNotice(ended("completed", "hangup", { durationSecs: 65 }), view({ wasActive: true })).text, "Ann hung up after 01:05.");
  assert.equal(logic.endedNotice(ended("completed", "hangup", { durationSecs: 3725 }), view({ wasActive: true, byMe: true })).text, "Call with Ann ended after 1:02:05.");
  assert.equal(logic.endedNotice(ended("declined", "declined", { message: "In a meeting" }), view({ role: "caller" })).text, "Ann declined the call: “In a meeting”");
  assert.equal(logic.endedNotice(ended("completed", "connection_lost"), view({ wasActive: true })).text, "Connection lost. The call with Ann ended.");
  assert.match(logic.endedNotice(ended("missed", "server_restart"), view()).text, /server restarted/);
});

test("history rows: outcome words from each side", () => {
  assert.equal(logic.describeEntry({ direction: "incoming", status: "cancelled", reason: "cancelled" }), "Cancelled by caller");
  assert.equal(logic.describeEntry({ direction: "outgoing", status: "missed", reason: "offline" }), "Offline");
  assert.equal(logic.describeEntry({ direction: "outgoing", status: "missed", reason: "no_answer" }), "No answer");
  assert.equal(logic.describeEntry({ direction: "incoming", status: "busy", reason: "busy" }), "Missed (you were busy)");
});

test("the title carries who is calling, else the unseen missed count (issue 15)", () => {
  assert.equal(logic.titleText(0, null), "Parley");
  assert.equal(logic.titleText(2, null), "(2) Parley");
  assert.equal(logic.titleText(2, "Bob"), "Bob is calling – Parley");
});

test("call buttons are named with the person; presence is unknown while disconnected (issue 15)", () => {
  assert.equal(logic.callButtonName("video", "Bob Builder"), "Video call Bob Builder");
  assert.equal(logic.callButtonName("audio", "Bob Builder"), "Audio call Bob Builder");
  assert.equal(logic.shownPresence("online", "connected"), "online");
  assert.equal(logic.shownPresence("online", "reconnecting"), "unknown");
});

test("the caller sees Starting camera… before the server hears of the call", () => {
  const base = { media: "video", peerCameraOn: true, name: "Bob" };
  assert.equal(logic.phaseText({ ...base, phase: "starting" }), "Starting camera…");
  assert.equal(logic.phaseText({ ...base, media: "audio", phase: "starting" }), "Starting microphone…");
  assert.equal(logic.phaseText({ ...base, phase: "outgoing" }), "Calling Bob… Ringing");
  assert.equal(logic.phaseText({ ...base, phase: "active", peerCameraOn: false }), "Bob turned the camera off");
});

test("errors when a call cannot start name the person", () => {
  assert.equal(logic.initiateError("RECIPIENT_BUSY", "Bo", ""), "Bo is busy in another call. Try again later.");
  assert.equal(logic.initiateError("WHATEVER", "Bo", "boom"), "The call could not start: boom");
});
