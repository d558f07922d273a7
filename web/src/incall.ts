// One call on screen: placing it ("Starting camera…", then ringing), the incoming
// dialog (Accept, Accept without video, Decline, a message, a self-preview),
// accepting, hanging up, resuming after a reload, and the call screen with its
// controls (mute, camera, screen sharing, picture in picture, full screen).
// The media itself is call.ts's; the wire is protocol.ts's.

import { app, loadDevices, notify, renderScreen } from "./app";
import { notifyIncoming, notifyMissed, stopRingingNotification, updateTitle } from "./alerts";
import { CallSession, MediaError, openMedia } from "./call";
import { displayName, endedNotice, formatDuration, initiateError, phaseText } from "./callstate";
import { startCall } from "./directory";
import { h } from "./dom";
import { afterCallChanged } from "./history";
import { icon, type IconName } from "./icons";
import { startTone, stopTone } from "./ring";
import { sameId, type Ack, type Call, type CallEnded, type Id, type Media, type User } from "./types";

let callTimer: number | undefined;
/** call:accepted that overtook the reply to call:initiate. */
let earlyAccept: Call | null = null;
/** The incoming dialog's camera preview (video calls), handed to the call on Accept. */
let preview: MediaStream | null = null;

function request<T>(event: string, payload: Record<string, unknown>): Promise<Ack<T>> {
  return app.conn
    ? app.conn.request<T>(event, payload)
    : Promise.resolve({ ok: false, error: { code: "DISCONNECTED", message: "Not connected to the server." } });
}

function environment() {
  return {
    me: app.me as User,
    ice: () => ({
      iceServers: app.session?.iceServers ?? [],
      iceTransportPolicy: app.session?.iceTransportPolicy ?? ("all" as RTCIceTransportPolicy),
    }),
    send: (event: string, payload: Record<string, unknown>) => app.conn?.send(event, payload),
    changed: () => renderScreen(),
  };
}

function stopStream(stream: MediaStream | null): void {
  for (const track of stream?.getTracks() ?? []) track.stop();
}

// ---------------------------------------------------------------- placing a call

export async function placeCall(userId: Id, media: Media): Promise<void> {
  if (app.call) {
    notify("You are already in a call.");
    return;
  }
  const person = app.people.get(String(userId));
  const name = displayName(person);
  const me = app.me as User;
  const callee: User = person ?? { id: userId, username: name, displayName: name };
  earlyAccept = null;
  notify("");
  // The call screen shows at once ("Starting camera…"); the server hears of the call once the camera is open.
  const provisional: Call = {
    id: "", caller: me, callee, media, state: "ringing", status: null, reason: null,
    createdAt: new Date().toISOString(), answeredAt: null, endedAt: null, durationSecs: 0,
  };
  const current = new CallSession(provisional, environment(), "starting");
  app.call = current;
  app.lastCall = { peer: userId, media };
  renderScreen();
  let stream: MediaStream;
  try {
    stream = await openMedia(media === "video", loadDevices());
  } catch (error) {
    if (app.call === current) endCallLocally();
    notify(error instanceof MediaError ? error.message : "Could not start your camera or microphone.");
    return;
  }
  if (app.call !== current) return stopStream(stream); // cancelled while the camera opened
  current.attachLocal(stream);
  const reply = await request<{ call: Call }>("call:initiate", { to: userId, media });
  if (app.call !== current) {
    // Cancelled while the server was answering: cancel there too.
    if (reply.ok) void request("call:end", { callId: reply.call.id });
    return;
  }
  if (!reply.ok) {
    endCallLocally();
    notify(initiateError(reply.error.code, name, reply.error.message));
    if (reply.error.code === "RECIPIENT_OFFLINE" || reply.error.code === "RECIPIENT_BUSY") afterCallChanged();
    return;
  }
  current.call = reply.call;
  current.phase = "outgoing";
  startTone("outgoing");
  renderScreen();
  const early = earlyAccept as Call | null;
  earlyAccept = null;
  if (early && current.is(early.id)) handleAccepted(early);
}

export function handleAccepted(accepted: Call): void {
  const call = app.call;
  if (call && call.phase === "starting") {
    earlyAccept = accepted;
    return;
  }
  if (!call || !call.is(accepted.id) || call.role !== "caller" || call.phase !== "outgoing") return;
  stopTone();
  call.call = accepted;
  if (accepted.answeredAt) call.answeredAt = Date.parse(accepted.answeredAt);
  call.startPeerConnection();
  startCallTimer();
  renderScreen();
}

// ---------------------------------------------------------------- incoming

export function handleIncoming(incoming: Call): void {
  if (app.call) return; // Already busy here; the server tells the caller.
  const call = new CallSession(incoming, environment(), "incoming");
  app.call = call;
  showIncomingDialog(call);
  startTone("incoming");
  notifyIncoming(incoming, displayName(call.peer));
}

export function handleAnsweredElsewhere(callId: Id): void {
  if (app.call?.is(callId) && app.call.phase === "incoming") {
    endCallLocally();
    notify("You answered this call on another device.", "info");
  }
}

function showIncomingDialog(incoming: CallSession): void {
  const name = displayName(incoming.peer);
  const isVideo = incoming.media === "video";
  const title = h("h2", { id: "incoming-title", tabindex: "-1" }, `${name} is calling`);
  const self = isVideo ? h("video", { class: "preview", "aria-label": "Your camera preview", autoplay: true, playsinline: true, muted: true }) : null;
  const dialog = h(
    "dialog",
    { class: "incoming", id: "incoming", "aria-labelledby": "incoming-title", "aria-describedby": "incoming-kind" },
    h("div", { class: "avatar big", "aria-hidden": "true" }, name.slice(0, 1).toUpperCase()),
    title,
    h("p", { id: "incoming-kind" }, isVideo ? "Incoming video call" : "Incoming audio call"),
    self,
    h(
      "div",
      { class: "row answers" },
      h("button", { class: "danger", onclick: () => void declineCall() }, icon("hangup"), "Decline"),
      isVideo ? h("button", { class: "accept-audio", onclick: () => void acceptCall(false) }, icon("phone"), "Accept without video") : null,
      h("button", { class: "accept", onclick: () => void acceptCall(isVideo) }, icon(isVideo ? "video" : "phone"), "Accept"),
    ),
    buildQuickReply(),
  );
  // Escape must not silently dismiss a ringing call: the caller would keep ringing.
  dialog.addEventListener("cancel", (event) => event.preventDefault());
  document.body.append(dialog);
  dialog.showModal();
  // Focus on the title, not on Accept: a stray Space or Enter must not answer.
  title.focus();
  if (self) {
    self.muted = true;
    void navigator.mediaDevices
      ?.getUserMedia({ video: cameraConstraints() })
      .then((stream) => {
        if (app.call !== incoming || incoming.phase !== "incoming") return stopStream(stream);
        preview = stream;
        self.srcObject = stream;
      })
      .catch(() => {
        self.remove(); // No preview; Accept still tries and explains a failure.
      });
  }
}

function cameraConstraints(): MediaTrackConstraints {
  const devices = loadDevices();
  return { ...(devices.videoInput ? { deviceId: { ideal: devices.videoInput } } : {}), width: { ideal: 640 }, height: { ideal: 480 } };
}

/**
 * Decline with a short message the caller sees (the spec's optional `message`).
 * No control here may be named "Accept" or "Decline" exactly, or start with "Decline":
 * outside tests find those buttons by name.
 */
function buildQuickReply(): HTMLElement {
  const message = h("input", { id: "reply-message", maxlength: 140, list: "reply-suggestions", autocomplete: "off" });
  const suggestions = h(
    "datalist",
    { id: "reply-suggestions" },
    ...["In a meeting, I'll call you back", "Can't talk now, call you later", "On my way"].map((text) => h("option", { value: text })),
  );
  const form = h(
    "form",
    {
      class: "quick-reply",
      onsubmit: (event: Event) => {
        event.preventDefault();
        void declineCall(message.value.trim());
      },
    },
    h("label", { for: "reply-message" }, "Message"),
    h("div", { class: "reply-row" }, message, suggestions, h("button", { type: "submit" }, "Send")),
  );
  return h("details", { class: "reply" }, h("summary", null, "Reply with a message"), form);
}

function closeIncomingDialog(): void {
  const dialog = document.getElementById("incoming") as HTMLDialogElement | null;
  dialog?.close();
  dialog?.remove();
  stopRingingNotification();
}

/** Accept; `withVideo` false answers a video call with the microphone only (camera can follow). */
async function acceptCall(withVideo: boolean): Promise<void> {
  const current = app.call;
  if (!current || current.phase !== "incoming") return;
  for (const button of document.querySelectorAll<HTMLButtonElement>("#incoming button")) button.disabled = true;
  stopTone();
  const previewStream = preview;
  preview = null;
  let stream: MediaStream;
  try {
    if (withVideo && previewStream?.getVideoTracks()[0]?.readyState === "live") {
      // The preview's camera is already open: add the microphone to it.
      const mic = await openMedia(false, loadDevices());
      stream = new MediaStream([...mic.getAudioTracks(), ...previewStream.getVideoTracks()]);
    } else {
      stopStream(previewStream);
      stream = await openMedia(withVideo, loadDevices());
    }
  } catch (error) {
    stopStream(previewStream);
    const text = error instanceof MediaError ? error.message : "Could not start your camera or microphone.";
    // Decline rather than leave the caller ringing for a call we cannot take.
    await request("call:decline", { callId: current.id, message: "Could not start camera or microphone" });
    endCallLocally();
    notify(text);
    return;
  }
  if (app.call !== current) return stopStream(stream);
  const reply = await request<{ call: Call }>("call:accept", { callId: current.id });
  if (app.call !== current) return stopStream(stream);
  if (!reply.ok) {
    stopStream(stream);
    endCallLocally();
    notify(reply.error.code === "INVALID_STATE" || reply.error.code === "CALL_NOT_FOUND" ? `The call from ${displayName(current.peer)} has already ended.` : `Could not answer: ${reply.error.message}`);
    afterCallChanged();
    return;
  }
  closeIncomingDialog();
  current.call = reply.call;
  if (reply.call.answeredAt) current.answeredAt = Date.parse(reply.call.answeredAt);
  current.attachLocal(stream);
  app.lastCall = { peer: current.peer.id, media: current.media };
  current.startPeerConnection();
  startCallTimer();
  renderScreen();
}

async function declineCall(message = ""): Promise<void> {
  const current = app.call;
  if (!current) return;
  stopTone();
  const payload: Record<string, unknown> = { callId: current.id };
  if (message) payload.message = message.slice(0, 140);
  const reply = await request<{ call: Call }>("call:decline", payload);
  if (app.call === current) endCallLocally();
  if (!reply.ok && reply.error.code !== "INVALID_STATE" && reply.error.code !== "CALL_NOT_FOUND") {
    notify(`Could not decline: ${reply.error.message}`);
  }
  afterCallChanged();
}

// ---------------------------------------------------------------- ending

export async function hangUp(): Promise<void> {
  const current = app.call;
  if (!current) return;
  if (current.phase === "starting") {
    endCallLocally(); // The server never heard of it; placeCall cleans up when the camera opens.
    return;
  }
  const reply = await request<{ call: Call }>("call:end", { callId: current.id });
  if (app.call !== current) return; // call:ended already arrived and cleaned up.
  if (reply.ok) {
    const ended = reply.call;
    finishCall({ callId: ended.id, status: ended.status ?? "completed", reason: ended.reason ?? "hangup", endedBy: app.me?.id ?? null, durationSecs: ended.durationSecs });
  } else {
    // The server no longer knows the call (it ended meanwhile): clean up here too.
    endCallLocally();
    afterCallChanged();
  }
}

export function handleEnded(event: CallEnded): void {
  if (app.call?.is(event.callId)) finishCall(event);
  else if (event.callId) afterCallChanged();
}

/** The call ended (by anyone): release devices and tell the person why, with Call back where it helps. */
function finishCall(event: CallEnded): void {
  const current = app.call;
  if (!current || !current.is(event.callId)) return;
  const name = displayName(current.peer);
  const wasActive = current.phase === "active";
  endCallLocally();
  const notice = endedNotice(event, { role: current.role, name, wasActive, byMe: sameId(event.endedBy, app.me?.id) });
  const peer = current.peer.id;
  const media = current.call.media;
  if (notice.text) notify(notice.text, notice.kind, notice.callBack ? { label: "Call back", run: () => startCall(peer, media) } : undefined);
  if (notice.missed) notifyMissed(current.call, name);
  afterCallChanged();
}

/** Releases the call's devices and UI without telling the server (it already knows). */
export function endCallLocally(): void {
  stopTone();
  stopStream(preview);
  preview = null;
  closeIncomingDialog();
  if (callTimer !== undefined) window.clearInterval(callTimer);
  callTimer = undefined;
  const current = app.call;
  app.call = null;
  current?.dispose();
  if (document.fullscreenElement) void document.exitFullscreen().catch(() => {});
  if (document.pictureInPictureElement) void document.exitPictureInPicture().catch(() => {});
  for (const video of document.querySelectorAll<HTMLVideoElement>("#screen video")) video.srcObject = null;
  renderScreen();
  updateTitle();
}

// ---------------------------------------------------------------- resuming

/** The server's session after a (re)connect: resume, finish or ring the live call. */
export function resumeFromSession(live: Call | null, me: User): void {
  const call = app.call;
  if (call && call.phase !== "starting" && (!live || !call.is(live.id))) {
    // Our call ended while this device was away from the server.
    const peer = displayName(call.peer);
    endCallLocally();
    notify(`The call with ${peer} ended while you were disconnected.`, "error", { label: "Call back", run: () => startCall(call.peer.id, call.call.media) });
    afterCallChanged();
  }
  if (!live) return;
  if (app.call && app.call.is(live.id)) {
    // The socket came back within the grace period (our network, or a server restart): the
    // server re-bound the call to us; the media path never depended on it.
    if (live.state === "active" && app.call.phase === "active") app.call.resumeAfterServerGap();
    return;
  }
  if (app.call) return;
  if (live.state === "active") void resumeCall(live);
  else if (live.state === "ringing" && sameId(live.callee.id, me.id)) handleIncoming(live);
}

async function resumeCall(live: Call): Promise<void> {
  const current = new CallSession(live, environment(), "active");
  app.call = current;
  app.lastCall = { peer: current.peer.id, media: live.media };
  renderScreen();
  try {
    const stream = await openMedia(live.media === "video", loadDevices());
    if (app.call !== current) return stopStream(stream);
    current.attachLocal(stream);
  } catch (error) {
    notify(error instanceof MediaError ? error.message : "Could not start your camera or microphone.");
    await hangUp();
    return;
  }
  current.startPeerConnection();
  startCallTimer();
  renderScreen();
}

function startCallTimer(): void {
  if (callTimer !== undefined) window.clearInterval(callTimer);
  callTimer = window.setInterval(updateTimer, 1000);
  updateTimer();
}

function updateTimer(): void {
  const timer = document.getElementById("call-timer");
  const call = app.call;
  if (!timer || !call || call.answeredAt === null || call.phase !== "active") return;
  setText(timer, formatDuration((Date.now() - call.answeredAt) / 1000));
}

/** Changes text only when it differs: live regions announce every change, even to the same words. */
function setText(element: Element | null, text: string): void {
  if (element && element.textContent !== text) element.textContent = text;
}

// ---------------------------------------------------------------- the call screen

function control(id: string, iconName: IconName, label: string, onclick: () => void, pressed?: boolean): HTMLButtonElement {
  const button = h("button", { id, type: "button", onclick }, icon(iconName), h("span", { class: "label" }, label));
  if (pressed !== undefined) button.setAttribute("aria-pressed", String(pressed));
  return button;
}

export function buildCallScreen(current: CallSession): HTMLElement {
  const name = displayName(current.peer);
  const remote = h("video", { id: "remote-video", class: "remote", "aria-label": "Remote video", autoplay: true, playsinline: true });
  const local = h("video", { id: "local-video", class: "local", "aria-label": "Local video", autoplay: true, playsinline: true, muted: true });
  // The attribute alone does not mute a video element created from script.
  local.muted = true;
  remote.addEventListener("enterpictureinpicture", () => renderScreen());
  remote.addEventListener("leavepictureinpicture", () => renderScreen());
  const controls = h(
    "div",
    { class: "controls" },
    control("mute", "mic", "Mute", () => app.call?.toggleMic(), false),
    control("camera", "video", "Camera", () => void toggleCamera(), false),
    control("share", "share", "Share screen", () => void toggleSharing()),
    "pictureInPictureEnabled" in document && document.pictureInPictureEnabled
      ? control("pip", "pip", "Picture in picture", () => void togglePictureInPicture(), false)
      : null,
    document.fullscreenEnabled ? control("fullscreen", "fullscreen", "Full screen", () => void toggleFullscreen(), false) : null,
    h("button", { id: "hangup", type: "button", class: "danger", onclick: () => void hangUp() }, icon("hangup"), h("span", { id: "hangup-label" })),
  );
  const section = h(
    "section",
    { class: "call", id: "call-view", "aria-label": `Call with ${name}` },
    h(
      "div",
      { class: "stage", id: "stage" },
      remote,
      h(
        "div",
        { class: "placeholder", id: "remote-placeholder" },
        h("div", { class: "avatar big", "aria-hidden": "true" }, name.slice(0, 1).toUpperCase()),
        h("h2", null, name),
        h("p", { id: "call-phase", role: "status" }),
      ),
      local,
      h("p", { class: "sharing", id: "sharing-state", role: "status" }),
    ),
    h(
      "div",
      { class: "call-bar" },
      h("span", { class: "peer-name" }, name),
      h("span", { class: "timer", id: "call-timer", role: "timer", "aria-label": "Call duration" }),
      h("span", { class: "link", id: "call-link", role: "status" }),
      h("span", { class: "peer-state", id: "peer-state", "aria-live": "polite" }),
    ),
    controls,
  );
  return section;
}

async function toggleCamera(): Promise<void> {
  const current = app.call;
  if (!current) return;
  const button = document.getElementById("camera") as HTMLButtonElement | null;
  if (button) button.disabled = true;
  try {
    await current.toggleCamera(loadDevices());
  } catch (error) {
    notify(error instanceof MediaError ? error.message : "Could not turn the camera on.");
  } finally {
    if (button) button.disabled = false;
    renderScreen();
  }
}

async function toggleSharing(): Promise<void> {
  const current = app.call;
  if (!current) return;
  try {
    if (current.sharing) await current.stopSharing();
    else await current.startSharing();
  } catch (error) {
    notify(error instanceof MediaError ? error.message : "Could not share the screen.");
  }
}

async function togglePictureInPicture(): Promise<void> {
  const remote = document.getElementById("remote-video") as HTMLVideoElement | null;
  try {
    if (document.pictureInPictureElement) await document.exitPictureInPicture();
    else await remote?.requestPictureInPicture();
  } catch {
    notify("Picture in picture is not available for this call right now.");
  }
  renderScreen();
}

async function toggleFullscreen(): Promise<void> {
  try {
    if (document.fullscreenElement) await document.exitFullscreen();
    // The whole call view, controls included, so they stay reachable.
    else await document.getElementById("call-view")?.requestFullscreen();
  } catch {
    notify("Full screen is not available here.");
  }
}

const LINK_TEXT = { connecting: "Connecting…", connected: "Connected", poor: "Poor connection", reconnecting: "Reconnecting…" };

/** Sets a toggle's pressed state and swaps its icon, touching the DOM only on a change. */
function setToggle(button: HTMLElement | null, pressed: boolean, iconName?: IconName): void {
  if (!button || button.getAttribute("aria-pressed") === String(pressed)) return;
  button.setAttribute("aria-pressed", String(pressed));
  if (iconName) button.querySelector("svg")?.replaceWith(icon(iconName));
}

/** Brings the call screen up to date in place: nothing is rebuilt, unchanged text is not rewritten. */
export function updateCallScreen(): void {
  const current = app.call;
  if (!current) return;
  const name = displayName(current.peer);
  const remote = document.getElementById("remote-video") as HTMLVideoElement | null;
  const local = document.getElementById("local-video") as HTMLVideoElement | null;
  const placeholder = document.getElementById("remote-placeholder");
  const active = current.phase === "active";

  if (remote && remote.srcObject !== current.remote) remote.srcObject = current.remote;
  if (remote && remote.dataset.tracks !== String(current.remote.getTracks().length)) {
    remote.dataset.tracks = String(current.remote.getTracks().length);
    // New tracks on the same stream do not always restart playback.
    void remote.play().catch(() => {});
  }
  if (remote) applySpeaker(remote);
  if (local && local.srcObject !== current.local) local.srcObject = current.local;
  const remoteVideoLive = current.remote.getVideoTracks().some((track) => !track.muted && track.readyState === "live");
  const showRemoteVideo = active && current.peerCameraOn && remoteVideoLive;
  remote?.classList.toggle("off", !showRemoteVideo);
  if (placeholder) placeholder.hidden = showRemoteVideo;
  if (local) local.hidden = !current.cameraOn;

  setText(document.getElementById("call-phase"), phaseText({ phase: current.phase, media: current.media, peerCameraOn: current.peerCameraOn, name }));
  const link = document.getElementById("call-link");
  if (link) {
    link.hidden = !active;
    link.dataset.link = current.link;
    link.dataset.route = current.route ?? "";
    setText(
      link,
      (current.peerReconnecting ? LINK_TEXT.reconnecting : LINK_TEXT[current.link]) +
        (current.link === "connected" || current.link === "poor" ? (current.route === "relay" ? " via relay" : current.route ? " directly" : "") : ""),
    );
  }
  const parts = [];
  if (active && current.peerReconnecting) parts.push(`${name} is reconnecting…`);
  if (active && !current.peerMicOn) parts.push(`${name} is muted`);
  if (active && !current.peerCameraOn && current.media === "video") parts.push(`${name}'s camera is off`);
  setText(document.getElementById("peer-state"), parts.join(" · "));
  setText(document.getElementById("sharing-state"), current.sharing ? "You are sharing your screen" : "");

  for (const id of ["mute", "camera", "share", "pip", "fullscreen"]) {
    const button = document.getElementById(id);
    if (button) button.hidden = !active;
  }
  setToggle(document.getElementById("mute"), !current.micOn, current.micOn ? "mic" : "mic-off");
  setToggle(document.getElementById("camera"), current.cameraOn, current.cameraOn ? "video" : "video-off");
  const share = document.getElementById("share");
  if (share && share.dataset.sharing !== String(current.sharing)) {
    share.dataset.sharing = String(current.sharing);
    setText(share.querySelector(".label"), current.sharing ? "Stop sharing" : "Share screen");
  }
  setToggle(document.getElementById("pip"), Boolean(document.pictureInPictureElement));
  setToggle(document.getElementById("fullscreen"), Boolean(document.fullscreenElement));
  setText(document.getElementById("hangup-label"), current.phase === "active" ? "Hang up" : "Cancel");
  updateTimer();
}

/** Plays the call on the chosen speaker where the browser can choose (setSinkId). */
function applySpeaker(remote: HTMLVideoElement): void {
  const media = remote as HTMLVideoElement & { sinkId?: string; setSinkId?: (id: string) => Promise<void> };
  const wanted = loadDevices().audioOutput;
  if (!media.setSinkId || media.sinkId === wanted || media.dataset.sink === wanted) return;
  media.dataset.sink = wanted;
  void media.setSinkId(wanted).catch(() => {
    delete media.dataset.sink;
  });
}

