// Parley's web client: sign-in, the directory with presence, calls and history.
// It speaks only the public protocol (shared/spec/protocol.md, version 1).

import { io, type Socket } from "socket.io-client";
import { Api, ApiError } from "./api";
import { CallSession, MediaError, openMedia, type DevicePreference } from "./call";
import { clear, formatDuration, formatTime, h } from "./dom";
import { icon } from "./icons";
import { startTone, stopTone } from "./ring";
import { sameId, type Ack, type Call, type CallEnded, type DirectoryUser, type HistoryEntry, type Id, type Media, type Presence, type Session, type User } from "./types";
import "./styles.css";

const TOKEN_KEY = "parley.token";
const USER_KEY = "parley.user";
const DEVICES_KEY = "parley.devices";
// sessionStorage: it survives a reload (so the server resumes the call on this
// device) but is not shared between tabs, which would otherwise fight over one device.
const DEVICE_ID_KEY = "parley.deviceId";
const HISTORY_PAGE = 20;
const ACK_TIMEOUT_MS = 10_000;

const api = new Api();
const root = document.getElementById("app") as HTMLElement;

let me: User | null = null;
let socket: Socket | null = null;
let session: Session | null = null;
let serverReachable = true;
/** Keyed by String(id): ids may be numbers on the wire but are strings in the DOM. */
const people = new Map<string, DirectoryUser>();
let tab: "people" | "history" = "people";
let unseen = 0;
let history: HistoryEntry[] = [];
let nextCursor: string | null = null;
let historyLoaded = false;
let historyLoading = false;
let call: CallSession | null = null;
/** True between clicking a call button and the server's reply to call:initiate. */
let initiating = false;
let earlyAccept: Call | null = null;
let callTimer: number | undefined;
let notification: Notification | null = null;

// ---------------------------------------------------------------- storage

function loadDevices(): DevicePreference {
  try {
    const saved = JSON.parse(localStorage.getItem(DEVICES_KEY) ?? "{}") as Partial<DevicePreference>;
    return { audioInput: saved.audioInput ?? "", videoInput: saved.videoInput ?? "" };
  } catch {
    return { audioInput: "", videoInput: "" };
  }
}

function deviceId(): string {
  let id = sessionStorage.getItem(DEVICE_ID_KEY);
  if (!id) {
    id = crypto.randomUUID();
    sessionStorage.setItem(DEVICE_ID_KEY, id);
  }
  return id;
}

function displayName(user: User | undefined | null): string {
  return user?.displayName || user?.username || "Someone";
}

// ---------------------------------------------------------------- notices

let noticeTimer: number | undefined;

function notify(text: string, kind: "error" | "info" = "error"): void {
  const box = document.getElementById("notice");
  if (!box) return;
  clear(box);
  window.clearTimeout(noticeTimer);
  if (!text) return;
  box.append(
    h(
      "div",
      { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" },
      h("span", null, text),
      h("button", { class: "ghost", "aria-label": "Dismiss", onclick: () => notify("") }, "×"),
    ),
  );
  // Information fades; errors stay until dismissed or replaced.
  if (kind === "info") noticeTimer = window.setTimeout(() => notify(""), 8000);
}

// ---------------------------------------------------------------- sign in

function renderLogin(message = ""): void {
  document.title = "Parley";
  clear(root);
  const username = h("input", { id: "username", name: "username", autocomplete: "username", required: true, autocapitalize: "none", spellcheck: "false" });
  const password = h("input", { id: "password", name: "password", type: "password", autocomplete: "current-password", required: true });
  const display = h("input", { id: "display-name", name: "displayName", autocomplete: "name" });
  const error = h("p", { class: "form-error", role: "alert" }, message);
  const signIn = h("button", { type: "submit", class: "primary" }, "Sign in");
  const create = h("button", { type: "button" }, "Create account");

  const submit = async (mode: "login" | "register") => {
    if (!username.value.trim() || !password.value) {
      error.textContent = "Enter a username and a password.";
      (username.value.trim() ? password : username).focus();
      return;
    }
    signIn.disabled = create.disabled = true;
    error.textContent = "";
    try {
      const reply =
        mode === "login"
          ? await api.login(username.value.trim(), password.value)
          : await api.register(username.value.trim(), password.value, display.value.trim() || undefined);
      localStorage.setItem(TOKEN_KEY, reply.token);
      localStorage.setItem(USER_KEY, JSON.stringify(reply.user));
      api.token = reply.token;
      me = reply.user;
      startApp();
    } catch (caught) {
      const code = caught instanceof ApiError ? caught.code : "";
      error.textContent =
        code === "UNAUTHORIZED"
          ? "Wrong username or password."
          : code === "FORBIDDEN" && mode === "register"
            ? "Registration is closed on this server. Ask an administrator for an account."
            : code === "USERNAME_TAKEN"
              ? "That username is taken. Choose another one."
              : code === "RATE_LIMITED"
                ? "Too many attempts. Wait a minute and try again."
                : caught instanceof Error
                  ? caught.message
                  : "Sign-in failed.";
      signIn.disabled = create.disabled = false;
    }
  };

  const form = h(
    "form",
    {
      class: "login",
      onsubmit: (event: Event) => {
        event.preventDefault();
        void submit("login");
      },
    },
    h("h1", null, icon("logo"), "Parley"),
    h("label", { for: "username" }, "Username"),
    username,
    h("label", { for: "password" }, "Password"),
    password,
    h("details", null, h("summary", null, "New here?"),
      h("label", { for: "display-name" }, "Display name (optional)"),
      display,
      h("p", { class: "hint" }, "Fill in a username and password above, then choose Create account."),
    ),
    error,
    h("div", { class: "row" }, signIn, create),
  );
  create.addEventListener("click", () => void submit("register"));
  root.append(h("main", { class: "login-page" }, form));
  username.focus();
}

// ---------------------------------------------------------------- the app shell

function startApp(): void {
  renderShell();
  connectSocket();
}

function signOutLocally(message = ""): void {
  endCallLocally();
  window.clearTimeout(iceRefreshTimer);
  socket?.removeAllListeners();
  socket?.disconnect();
  socket = null;
  session = null;
  api.token = null;
  me = null;
  people.clear();
  history = [];
  historyLoaded = false;
  nextCursor = null;
  unseen = 0;
  tab = "people";
  localStorage.removeItem(TOKEN_KEY);
  localStorage.removeItem(USER_KEY);
  renderLogin(message);
}

async function signOut(): Promise<void> {
  try {
    await api.logout();
  } catch {
    // The token is dropped here either way; a failed logout only means the server forgets it later.
  }
  signOutLocally();
}

function renderShell(): void {
  clear(root);
  const devicesButton = h("button", { class: "ghost", "aria-label": "Devices", title: "Camera and microphone", onclick: () => void openDeviceSettings() }, icon("settings"), h("span", { class: "label" }, "Devices"));
  root.append(
    h(
      "header",
      { class: "topbar" },
      h("span", { class: "brand" }, icon("logo"), "Parley"),
      h("span", { class: "me", id: "me" }, displayName(me)),
      h("span", { class: "server-state", id: "server-state", role: "status" }),
      devicesButton,
      h("button", { class: "ghost", onclick: () => void signOut() }, "Sign out"),
    ),
    h("div", { id: "notice" }),
    h("main", { id: "screen" }),
  );
  renderScreen();
}

function renderServerState(): void {
  const el = document.getElementById("server-state");
  if (el) el.textContent = serverReachable ? "" : "Reconnecting to server…";
}

/** Chooses between the home screen and the call screen. */
function renderScreen(): void {
  const screen = document.getElementById("screen");
  if (!screen) return;
  const inCallScreen = call !== null && (call.phase === "outgoing" || call.phase === "active");
  const showing = screen.dataset.view;
  if (inCallScreen) {
    if (showing !== `call:${call!.id}`) {
      clear(screen);
      screen.dataset.view = `call:${call!.id}`;
      screen.append(buildCallScreen(call!));
      // Keyboard users land on the one control that always matters.
      queueMicrotask(() => document.getElementById("hangup")?.focus());
    }
    updateCallScreen();
  } else if (showing !== "home") {
    clear(screen);
    screen.dataset.view = "home";
    screen.append(buildHome());
    renderPeople();
    renderHistory();
  }
}

// ---------------------------------------------------------------- home: people and history

function buildHome(): HTMLElement {
  const peopleTab = h("button", { class: "tab", id: "tab-people", "aria-controls": "panel-people", onclick: () => selectTab("people") }, icon("people"), "People");
  const historyTab = h(
    "button",
    { class: "tab", id: "tab-history", "aria-controls": "panel-history", onclick: () => selectTab("history") },
    icon("history"),
    "History",
    h("span", { class: "badge", id: "missed-badge", hidden: true }),
  );
  const home = h(
    "div",
    { class: "home" },
    h("nav", { class: "tabs", "aria-label": "Sections" }, peopleTab, historyTab),
    h(
      "section",
      { id: "panel-people", class: "panel", "aria-labelledby": "tab-people" },
      h("ul", { class: "people", id: "people", "aria-label": "People" }),
      h("p", { class: "empty", id: "people-empty", hidden: true }, "No one else has an account yet."),
    ),
    h(
      "section",
      { id: "panel-history", class: "panel", "aria-labelledby": "tab-history" },
      h("ul", { class: "history", id: "history", "aria-label": "Call history" }),
      h("p", { class: "empty", id: "history-empty", hidden: true }, "No calls yet."),
      h("button", { id: "load-more", hidden: true, onclick: () => void loadHistory(true) }, "Load more"),
    ),
  );
  queueMicrotask(() => applyTab());
  return home;
}

function applyTab(): void {
  const peoplePanel = document.getElementById("panel-people");
  const historyPanel = document.getElementById("panel-history");
  if (!peoplePanel || !historyPanel) return;
  peoplePanel.hidden = tab !== "people";
  historyPanel.hidden = tab !== "history";
  document.getElementById("tab-people")?.setAttribute("aria-pressed", String(tab === "people"));
  document.getElementById("tab-history")?.setAttribute("aria-pressed", String(tab === "history"));
}

function selectTab(next: "people" | "history"): void {
  tab = next;
  applyTab();
  if (next === "history") {
    void loadHistory(false);
    void markMissedSeen();
  }
}

const STATUS_TEXT: Record<Presence, string> = { online: "Online", busy: "In a call", offline: "Offline" };

function renderPeople(): void {
  const list = document.getElementById("people");
  if (!list) return;
  const others = [...people.values()]
    .filter((person) => !sameId(person.id, me?.id))
    .sort((a, b) => displayName(a).localeCompare(displayName(b)));
  // Rebuild only when the set of people changes; presence updates patch in place
  // so keyboard focus stays on the button the user is on.
  const ids = others.map((person) => person.id).join(",");
  if (list.dataset.ids !== ids) {
    clear(list);
    list.dataset.ids = ids;
    for (const person of others) {
      const startCall = (media: Media) => () => void placeCall(person.id, media);
      list.append(
        h(
          "li",
          { class: "person", "data-user-id": person.id },
          h("span", { class: "avatar", "aria-hidden": "true" }, displayName(person).slice(0, 1).toUpperCase()),
          h(
            "span",
            { class: "who" },
            h("span", { class: "name" }, displayName(person)),
            h("span", { class: "status" }),
          ),
          h("button", { class: "call-button", "data-media": "audio", "aria-label": "Audio call", title: `Audio call ${displayName(person)}`, onclick: startCall("audio") }, icon("phone")),
          h("button", { class: "call-button", "data-media": "video", "aria-label": "Video call", title: `Video call ${displayName(person)}`, onclick: startCall("video") }, icon("video")),
        ),
      );
    }
  }
  for (const item of list.querySelectorAll<HTMLLIElement>("li.person")) {
    const person = people.get(item.dataset.userId ?? "");
    if (!person) continue;
    item.dataset.status = person.status;
    const status = item.querySelector(".status");
    if (status) status.textContent = STATUS_TEXT[person.status] ?? person.status;
    for (const button of item.querySelectorAll<HTMLButtonElement>("button.call-button")) {
      button.disabled = person.status === "offline";
    }
  }
  const empty = document.getElementById("people-empty");
  if (empty) empty.hidden = others.length > 0;
}

async function loadPeople(): Promise<void> {
  try {
    const { users } = await api.users();
    people.clear();
    for (const user of users) people.set(String(user.id), user);
    renderPeople();
  } catch (error) {
    if (error instanceof ApiError && error.status !== 401) notify(`Could not load people: ${error.message}`);
  }
}

function describeEntry(entry: HistoryEntry): string {
  const outgoing = entry.direction === "outgoing";
  switch (entry.status) {
    case "completed":
      return "Answered";
    case "declined":
      return "Declined";
    case "cancelled":
      return outgoing ? "Cancelled" : "Missed (cancelled)";
    case "missed":
      if (outgoing) return entry.reason === "offline" ? "Offline" : "No answer";
      return "Missed";
    case "busy":
      return outgoing ? "Busy" : "Missed (you were busy)";
    default:
      return entry.status;
  }
}

function renderHistory(): void {
  const list = document.getElementById("history");
  if (!list) return;
  clear(list);
  for (const entry of history) {
    const outgoing = entry.direction === "outgoing";
    const media = entry.media === "video" ? "Video" : "Audio";
    const label = `${outgoing ? "Outgoing" : "Incoming"} ${media.toLowerCase()} call`;
    list.append(
      h(
        "li",
        {
          class: `entry${entry.missed ? " missed" : ""}${entry.missed && !entry.seen ? " unseen" : ""}`,
          "data-call-id": entry.id,
          "data-status": entry.status,
          "data-direction": entry.direction,
          "data-duration": entry.durationSecs,
        },
        h("span", { class: "direction", title: label }, icon(outgoing ? "outgoing" : "incoming"), h("span", { class: "sr" }, label)),
        h(
          "span",
          { class: "who" },
          h("span", { class: "name" }, displayName(entry.peer)),
          h(
            "span",
            { class: "meta" },
            h("span", { class: "media" }, icon(entry.media === "video" ? "video" : "phone"), media),
            " · ",
            h("span", { class: "outcome" }, describeEntry(entry)),
            entry.status === "completed" ? h("span", { class: "duration" }, ` · ${formatDuration(entry.durationSecs)}`) : null,
            entry.message ? h("span", { class: "message" }, ` · “${entry.message}”`) : null,
          ),
        ),
        h("time", { datetime: entry.createdAt }, formatTime(entry.createdAt)),
        h("button", { class: "ghost delete", "aria-label": `Delete call with ${displayName(entry.peer)}`, title: "Delete", onclick: () => void deleteEntry(entry.id) }, icon("trash")),
      ),
    );
  }
  const empty = document.getElementById("history-empty");
  if (empty) empty.hidden = !historyLoaded || history.length > 0;
  const more = document.getElementById("load-more");
  if (more) more.hidden = nextCursor === null;
}

async function loadHistory(more: boolean): Promise<void> {
  if (historyLoading || (more && !nextCursor)) return;
  historyLoading = true;
  try {
    const page = await api.history(more ? nextCursor : null, HISTORY_PAGE);
    history = more ? [...history, ...page.items.filter((item) => !history.some((old) => sameId(old.id, item.id)))] : page.items;
    nextCursor = page.nextCursor;
    historyLoaded = true;
    renderHistory();
  } catch (error) {
    if (error instanceof ApiError && error.status !== 401) notify(`Could not load the call history: ${error.message}`);
  } finally {
    historyLoading = false;
  }
}

async function deleteEntry(id: Id): Promise<void> {
  try {
    await api.deleteEntry(id);
    history = history.filter((entry) => !sameId(entry.id, id));
    renderHistory();
    document.getElementById("tab-history")?.focus();
  } catch (error) {
    if (error instanceof ApiError && error.status !== 401) notify(`Could not delete the entry: ${error.message}`);
  }
}

function renderBadge(): void {
  const badge = document.getElementById("missed-badge");
  if (!badge) return;
  badge.hidden = unseen === 0;
  clear(badge);
  if (unseen > 0) badge.append(String(unseen), h("span", { class: "sr" }, ` missed call${unseen === 1 ? "" : "s"}`));
}

async function refreshMissed(): Promise<void> {
  try {
    unseen = (await api.missedCount()).unseen;
    renderBadge();
    if (unseen > 0 && tab === "history" && !document.hidden && document.getElementById("panel-history")) {
      await markMissedSeen();
    }
  } catch {
    // The badge is a convenience; the history itself still shows every missed call.
  }
}

async function markMissedSeen(): Promise<void> {
  if (unseen === 0) return;
  try {
    await api.markMissedSeen();
    unseen = 0;
    renderBadge();
    history = history.map((entry) => ({ ...entry, seen: true }));
  } catch {
    // Try again the next time the history is opened.
  }
}

/** After a call ends: the history and the missed badge changed on the server. */
function afterCallChanged(): void {
  if (tab === "history" || historyLoaded) void loadHistory(false);
  void refreshMissed();
}

// ---------------------------------------------------------------- socket

function emitWithAck<T>(event: string, payload: Record<string, unknown>): Promise<Ack<T>> {
  const current = socket;
  if (!current?.connected) {
    return Promise.resolve({ ok: false, error: { code: "DISCONNECTED", message: "Not connected to the server." } });
  }
  return current
    .timeout(ACK_TIMEOUT_MS)
    .emitWithAck(event, payload)
    .catch(() => ({ ok: false as const, error: { code: "TIMEOUT", message: "The server did not answer in time." } }));
}

function send(event: string, payload: Record<string, unknown>): void {
  socket?.emit(event, payload);
}

function connectSocket(): void {
  const token = api.token;
  if (!token) return;
  const sock = io({ auth: { token, deviceId: deviceId() } });
  socket = sock;

  sock.on("connect_error", (error: Error & { data?: { code?: string } }) => {
    // The spec puts the code in `data.code`; the message carries the same word.
    if (error.data?.code === "UNAUTHORIZED" || error.message === "UNAUTHORIZED") {
      signOutLocally("Your session has ended. Sign in again.");
      return;
    }
    serverReachable = false;
    renderServerState();
  });
  sock.on("connect", () => {
    serverReachable = true;
    renderServerState();
  });
  sock.on("disconnect", (reason) => {
    serverReachable = false;
    renderServerState();
    if (reason === "io server disconnect") {
      // The server closed us on purpose: the token was revoked (sign-out elsewhere) or expired.
      api
        .me()
        .then(() => sock.connect())
        .catch(() => {
          if (socket === sock) signOutLocally("Your session has ended. Sign in again.");
        });
    }
  });
  sock.on("session", (data: Session) => handleSession(data));
  sock.on("presence:update", ({ changes }: { changes: { userId: Id; status: Presence }[] }) => {
    let unknown = false;
    for (const change of changes ?? []) {
      const person = people.get(String(change.userId));
      if (person) person.status = change.status;
      else unknown = true;
    }
    if (unknown) void loadPeople();
    else renderPeople();
  });
  sock.on("call:incoming", ({ call: incoming }: { call: Call }) => handleIncoming(incoming));
  sock.on("call:accepted", ({ call: accepted }: { call: Call }) => handleAccepted(accepted));
  sock.on("call:answered-elsewhere", ({ callId }: { callId: Id }) => {
    if (call?.is(callId) && call.phase === "incoming") {
      endCallLocally();
      notify("You answered this call on another device.", "info");
    }
  });
  sock.on("call:ended", (event: CallEnded) => {
    if (call?.is(event.callId)) finishCall(event);
    else if (event.callId) afterCallChanged();
  });
  sock.on("call:peer-reconnecting", ({ callId }: { callId: Id }) => {
    if (call?.is(callId)) call.handlePeerReconnecting();
  });
  sock.on("call:peer-resumed", ({ callId }: { callId: Id }) => {
    if (call?.is(callId)) call.handlePeerResumed();
  });
  sock.on("signal:offer", ({ callId, sdp }: { callId: Id; sdp: string }) => {
    if (call?.is(callId) && typeof sdp === "string") call.handleDescription("offer", sdp);
  });
  sock.on("signal:answer", ({ callId, sdp }: { callId: Id; sdp: string }) => {
    if (call?.is(callId) && typeof sdp === "string") call.handleDescription("answer", sdp);
  });
  sock.on("signal:ice", ({ callId, candidate }: { callId: Id; candidate: RTCIceCandidateInit | null }) => {
    if (call?.is(callId)) call.handleCandidate(candidate);
  });
  sock.on("media:state", ({ callId, audio, video }: { callId: Id; audio: boolean; video: boolean }) => {
    if (call?.is(callId)) call.handlePeerMedia(audio !== false, video === true);
  });
  sock.on("call:error", (error: { event: string; code: string; message: string }) => {
    // Signaling is sent without replies; a late candidate after the call ended is not worth a notice.
    console.warn("parley: server refused", error.event, error.code, error.message);
  });
}

let iceRefreshTimer: number | undefined;

/** TURN credentials last `ttlSecs`; fetch new ones at half-life so long calls can still restart ICE. */
function scheduleIceRefresh(ttlSecs: number): void {
  window.clearTimeout(iceRefreshTimer);
  const delay = Math.max(60, ttlSecs / 2) * 1000;
  iceRefreshTimer = window.setTimeout(async () => {
    try {
      const fresh = await api.iceServers();
      if (session) {
        session.iceServers = fresh.iceServers;
        session.iceTransportPolicy = fresh.iceTransportPolicy;
      }
      call?.updateIceServers();
      scheduleIceRefresh(fresh.ttlSecs);
    } catch {
      scheduleIceRefresh(120); // Try again soon; the current credentials may still be valid.
    }
  }, delay);
}

function handleSession(data: Session): void {
  session = data;
  scheduleIceRefresh(data.ttlSecs);
  me = data.user;
  localStorage.setItem(USER_KEY, JSON.stringify(data.user));
  const meLabel = document.getElementById("me");
  if (meLabel) meLabel.textContent = displayName(me);
  void loadPeople();
  void refreshMissed();
  if (historyLoaded || tab === "history") void loadHistory(false);

  const live = data.activeCall;
  if (call && (!live || !call.is(live.id))) {
    // Our call ended while this device was away from the server.
    const peer = displayName(call.peer);
    endCallLocally();
    notify(`The call with ${peer} ended while you were disconnected.`);
    afterCallChanged();
  }
  if (!live) return;
  if (call && call.is(live.id)) {
    // The socket came back within the grace period: the server re-bound the call to us.
    if (live.state === "active" && call.phase === "active") call.handlePeerResumed();
    return;
  }
  if (live.state === "active") void resumeCall(live);
  else if (live.state === "ringing" && sameId(live.callee.id, data.user.id)) handleIncoming(live);
}

// ---------------------------------------------------------------- calls

function callEnvironment() {
  return {
    me: me as User,
    ice: () => ({
      iceServers: session?.iceServers ?? [],
      iceTransportPolicy: session?.iceTransportPolicy ?? ("all" as RTCIceTransportPolicy),
    }),
    send,
    changed: () => renderScreen(),
  };
}

const ERROR_TEXT: Record<string, (name: string) => string> = {
  RECIPIENT_BUSY: (name) => `${name} is busy in another call. Try again later.`,
  RECIPIENT_OFFLINE: (name) => `${name} is offline. They will see your missed call.`,
  CALLER_BUSY: () => "You are already in a call.",
  USER_NOT_FOUND: () => "That person no longer has an account.",
  SELF_CALL: () => "You cannot call yourself.",
  RATE_LIMITED: () => "Too many calls in a short time. Wait a moment and try again.",
  DISCONNECTED: () => "You are not connected to the server. Wait for the connection to come back.",
  TIMEOUT: () => "The server did not answer. Try again.",
};

async function placeCall(userId: Id, media: Media): Promise<void> {
  if (call || initiating) {
    notify("You are already in a call.");
    return;
  }
  const person = people.get(String(userId));
  const name = displayName(person);
  initiating = true;
  earlyAccept = null;
  notify("");
  let stream: MediaStream;
  try {
    stream = await openMedia(media === "video", loadDevices());
  } catch (error) {
    initiating = false;
    notify(error instanceof MediaError ? error.message : "Could not start your camera or microphone.");
    return;
  }
  const reply = await emitWithAck<{ call: Call }>("call:initiate", { to: userId, media });
  initiating = false;
  if (!reply.ok) {
    for (const track of stream.getTracks()) track.stop();
    const text = ERROR_TEXT[reply.error.code];
    notify(text ? text(name) : `The call could not start: ${reply.error.message}`);
    if (reply.error.code === "RECIPIENT_OFFLINE" || reply.error.code === "RECIPIENT_BUSY") afterCallChanged();
    return;
  }
  call = new CallSession(reply.call, callEnvironment(), "outgoing");
  call.attachLocal(stream);
  startTone("outgoing");
  renderScreen();
  // TypeScript cannot see that the call:accepted handler may have set this during the awaits.
  const early = earlyAccept as Call | null;
  earlyAccept = null;
  if (early && call.is(early.id)) handleAccepted(early);
}

function handleAccepted(accepted: Call): void {
  if (!call) {
    if (initiating) earlyAccept = accepted;
    return;
  }
  if (!call.is(accepted.id) || call.role !== "caller" || call.phase !== "outgoing") return;
  stopTone();
  call.call = accepted;
  if (accepted.answeredAt) call.answeredAt = Date.parse(accepted.answeredAt);
  call.startPeerConnection();
  startCallTimer();
  renderScreen();
}

function handleIncoming(incoming: Call): void {
  if (call) return; // Already busy here; the server tells the caller.
  call = new CallSession(incoming, callEnvironment(), "incoming");
  showIncomingDialog(call);
  startTone("incoming");
  const name = displayName(call.peer);
  document.title = `${name} is calling – Parley`;
  if (document.hidden && "Notification" in window && Notification.permission === "granted") {
    try {
      notification = new Notification(`${name} is calling`, {
        body: incoming.media === "video" ? "Video call" : "Audio call",
        tag: `parley-call-${incoming.id}`,
        requireInteraction: true,
      });
      notification.onclick = () => {
        window.focus();
        notification?.close();
      };
    } catch {
      // Some platforms only allow notifications from a service worker; the dialog and ring remain.
    }
  }
}

function showIncomingDialog(incoming: CallSession): void {
  const name = displayName(incoming.peer);
  const isVideo = incoming.media === "video";
  const accept = h("button", { class: "accept", onclick: () => void acceptCall() }, icon(isVideo ? "video" : "phone"), "Accept");
  const decline = h("button", { class: "danger", onclick: () => void declineCall() }, icon("hangup"), "Decline");
  const dialog = h(
    "dialog",
    { class: "incoming", id: "incoming", "aria-labelledby": "incoming-title", "aria-describedby": "incoming-kind" },
    h("div", { class: "avatar big", "aria-hidden": "true" }, name.slice(0, 1).toUpperCase()),
    h("h2", { id: "incoming-title" }, `${name} is calling`),
    h("p", { id: "incoming-kind" }, isVideo ? "Incoming video call" : "Incoming audio call"),
    h("div", { class: "row" }, decline, accept),
    buildQuickReply(),
  );
  // Escape must not silently dismiss a ringing call: the caller would keep ringing.
  dialog.addEventListener("cancel", (event) => event.preventDefault());
  document.body.append(dialog);
  dialog.showModal();
  accept.focus();
}

/**
 * Decline with a short message the caller sees (the spec's optional `message`).
 * No control here may have "Accept" or "Decline" in its name: outside tests find
 * those two buttons by name.
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
  notification?.close();
  notification = null;
  document.title = "Parley";
}

async function acceptCall(): Promise<void> {
  const current = call;
  if (!current || current.phase !== "incoming") return;
  for (const button of document.querySelectorAll<HTMLButtonElement>("#incoming button")) button.disabled = true;
  stopTone();
  let stream: MediaStream;
  try {
    stream = await openMedia(current.media === "video", loadDevices());
  } catch (error) {
    const text = error instanceof MediaError ? error.message : "Could not start your camera or microphone.";
    // Decline rather than leave the caller ringing for a call we cannot take.
    await emitWithAck("call:decline", { callId: current.id, message: "Could not start camera or microphone" });
    endCallLocally();
    notify(text);
    return;
  }
  if (call !== current) {
    for (const track of stream.getTracks()) track.stop();
    return;
  }
  const reply = await emitWithAck<{ call: Call }>("call:accept", { callId: current.id });
  if (call !== current) {
    for (const track of stream.getTracks()) track.stop();
    return;
  }
  if (!reply.ok) {
    for (const track of stream.getTracks()) track.stop();
    endCallLocally();
    notify(reply.error.code === "INVALID_STATE" || reply.error.code === "CALL_NOT_FOUND" ? `The call from ${displayName(current.peer)} has already ended.` : `Could not answer: ${reply.error.message}`);
    afterCallChanged();
    return;
  }
  closeIncomingDialog();
  current.call = reply.call;
  if (reply.call.answeredAt) current.answeredAt = Date.parse(reply.call.answeredAt);
  current.attachLocal(stream);
  current.startPeerConnection();
  startCallTimer();
  renderScreen();
}

async function declineCall(message = ""): Promise<void> {
  const current = call;
  if (!current) return;
  stopTone();
  const payload: Record<string, unknown> = { callId: current.id };
  if (message) payload.message = message.slice(0, 140);
  const reply = await emitWithAck<{ call: Call }>("call:decline", payload);
  if (call === current) endCallLocally();
  if (!reply.ok && reply.error.code !== "INVALID_STATE" && reply.error.code !== "CALL_NOT_FOUND") {
    notify(`Could not decline: ${reply.error.message}`);
  }
  afterCallChanged();
}

async function hangUp(): Promise<void> {
  const current = call;
  if (!current) return;
  const reply = await emitWithAck<{ call: Call }>("call:end", { callId: current.id });
  if (call !== current) return; // call:ended already arrived and cleaned up.
  if (reply.ok) {
    const ended = reply.call;
    finishCall({
      callId: ended.id,
      status: ended.status ?? "completed",
      reason: ended.reason ?? "hangup",
      endedBy: me?.id ?? null,
      durationSecs: ended.durationSecs,
    });
  } else {
    // The server no longer knows the call (it ended meanwhile): clean up here too.
    endCallLocally();
    afterCallChanged();
  }
}

async function resumeCall(live: Call): Promise<void> {
  const current = new CallSession(live, callEnvironment(), "active");
  call = current;
  renderScreen();
  try {
    const stream = await openMedia(live.media === "video", loadDevices());
    if (call !== current) {
      for (const track of stream.getTracks()) track.stop();
      return;
    }
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

/** The call ended (by anyone): release devices and tell the user why. */
function finishCall(event: CallEnded): void {
  const current = call;
  if (!current || !current.is(event.callId)) return;
  const name = displayName(current.peer);
  const byMe = sameId(event.endedBy, me?.id);
  const wasActive = current.phase === "active";
  endCallLocally();
  let text = "";
  let kind: "error" | "info" = "info";
  if (event.reason === "connection_lost") {
    text = wasActive ? `Connection lost. The call with ${name} ended.` : `The call with ${name} ended: connection lost.`;
    kind = "error";
  } else if (event.reason === "server_shutdown" || event.reason === "server_restart") {
    text = "The server restarted and the call ended. Call again in a moment.";
    kind = "error";
  } else if (byMe) {
    text = wasActive ? `Call with ${name} ended after ${formatDuration(event.durationSecs)}.` : "";
  } else if (event.status === "declined") {
    text = `${name} declined the call${event.message ? `: “${event.message}”` : "."}`;
    kind = "error";
  } else if (event.status === "missed" || event.reason === "no_answer") {
    text = current.role === "caller" ? `No answer from ${name}.` : `Missed call from ${name}.`;
    kind = current.role === "caller" ? "error" : "info";
  } else if (event.status === "cancelled") {
    text = `Missed call from ${name}.`;
  } else if (event.status === "busy") {
    text = `${name} is busy in another call.`;
    kind = "error";
  } else if (wasActive) {
    text = `${name} hung up after ${formatDuration(event.durationSecs)}.`;
  }
  if (text) notify(text, kind);
  afterCallChanged();
}

/** Releases the call's devices and UI without telling the server (it already knows). */
function endCallLocally(): void {
  stopTone();
  closeIncomingDialog();
  if (callTimer !== undefined) window.clearInterval(callTimer);
  callTimer = undefined;
  const current = call;
  call = null;
  current?.dispose();
  for (const video of document.querySelectorAll<HTMLVideoElement>("#screen video")) video.srcObject = null;
  renderScreen();
}

function startCallTimer(): void {
  if (callTimer !== undefined) window.clearInterval(callTimer);
  callTimer = window.setInterval(updateTimer, 1000);
  updateTimer();
}

function updateTimer(): void {
  const timer = document.getElementById("call-timer");
  if (!timer || !call || call.answeredAt === null || call.phase !== "active") return;
  timer.textContent = formatDuration((Date.now() - call.answeredAt) / 1000);
}

// ---------------------------------------------------------------- the call screen

function buildCallScreen(current: CallSession): HTMLElement {
  const name = displayName(current.peer);
  const remote = h("video", { id: "remote-video", class: "remote", "aria-label": "Remote video", autoplay: true, playsinline: true });
  const local = h("video", { id: "local-video", class: "local", "aria-label": "Local video", autoplay: true, playsinline: true, muted: true });
  // The attribute alone does not mute a video element created from script.
  local.muted = true;
  return h(
    "section",
    { class: "call", "aria-label": `Call with ${name}` },
    h(
      "div",
      { class: "stage" },
      remote,
      h(
        "div",
        { class: "placeholder", id: "remote-placeholder" },
        h("div", { class: "avatar big", "aria-hidden": "true" }, name.slice(0, 1).toUpperCase()),
        h("h2", null, name),
        h("p", { id: "call-phase", role: "status" }),
      ),
      local,
    ),
    h(
      "div",
      { class: "call-bar" },
      h("span", { class: "peer-name" }, name),
      h("span", { class: "timer", id: "call-timer", role: "timer", "aria-label": "Call duration" }),
      h("span", { class: "link", id: "call-link", role: "status" }),
      h("span", { class: "peer-state", id: "peer-state", "aria-live": "polite" }),
    ),
    h(
      "div",
      { class: "controls" },
      h("button", { id: "mute", onclick: () => call?.toggleMic() }),
      h("button", { id: "camera", onclick: () => void toggleCamera() }),
      h("button", { id: "hangup", class: "danger", onclick: () => void hangUp() }, icon("hangup"), h("span", { id: "hangup-label" })),
    ),
  );
}

async function toggleCamera(): Promise<void> {
  const current = call;
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

const LINK_TEXT = { connecting: "Connecting…", connected: "Connected", poor: "Poor connection", reconnecting: "Reconnecting…" };

function updateCallScreen(): void {
  const current = call;
  if (!current) return;
  const name = displayName(current.peer);
  const remote = document.getElementById("remote-video") as HTMLVideoElement | null;
  const local = document.getElementById("local-video") as HTMLVideoElement | null;
  const placeholder = document.getElementById("remote-placeholder");
  const phase = document.getElementById("call-phase");
  const link = document.getElementById("call-link");
  const peerState = document.getElementById("peer-state");
  const mute = document.getElementById("mute") as HTMLButtonElement | null;
  const camera = document.getElementById("camera") as HTMLButtonElement | null;
  const hangupLabel = document.getElementById("hangup-label");
  const active = current.phase === "active";

  if (remote && remote.srcObject !== current.remote) remote.srcObject = current.remote;
  if (remote && remote.dataset.tracks !== String(current.remote.getTracks().length)) {
    remote.dataset.tracks = String(current.remote.getTracks().length);
    // New tracks on the same stream do not always restart playback.
    void remote.play().catch(() => {});
  }
  if (local && local.srcObject !== current.local) local.srcObject = current.local;
  const remoteVideoLive = current.remote.getVideoTracks().some((track) => !track.muted && track.readyState === "live");
  const showRemoteVideo = active && current.peerCameraOn && remoteVideoLive;
  remote?.classList.toggle("off", !showRemoteVideo);
  if (placeholder) placeholder.hidden = showRemoteVideo;
  if (local) local.hidden = !current.cameraOn;

  if (phase) {
    phase.textContent =
      current.phase === "outgoing"
        ? `Calling ${name}… Ringing`
        : active && current.media === "audio" && !current.peerCameraOn
            ? "Audio call"
            : active && !current.peerCameraOn
              ? `${name} turned the camera off`
              : "";
  }
  if (link) {
    link.hidden = !active;
    link.dataset.link = current.link;
    link.dataset.route = current.route ?? "";
    link.textContent =
      (current.peerReconnecting ? LINK_TEXT.reconnecting : LINK_TEXT[current.link]) +
      (current.link === "connected" || current.link === "poor" ? (current.route === "relay" ? " via relay" : current.route ? " directly" : "") : "");
  }
  if (peerState) {
    const parts = [];
    if (active && current.peerReconnecting) parts.push(`${name} is reconnecting…`);
    if (active && !current.peerMicOn) parts.push(`${name} is muted`);
    if (active && !current.peerCameraOn && current.media === "video") parts.push(`${name}'s camera is off`);
    peerState.textContent = parts.join(" · ");
  }
  if (mute) {
    mute.hidden = !active;
    clear(mute);
    mute.append(icon(current.micOn ? "mic" : "mic-off"), current.micOn ? "Mute" : "Unmute");
    mute.setAttribute("aria-pressed", String(!current.micOn));
  }
  if (camera) {
    camera.hidden = !active;
    clear(camera);
    camera.append(icon(current.cameraOn ? "video" : "video-off"), current.cameraOn ? "Camera off" : "Camera on");
  }
  if (hangupLabel) hangupLabel.textContent = current.phase === "outgoing" ? "Cancel" : "Hang up";
  updateTimer();
}

// ---------------------------------------------------------------- device settings

async function openDeviceSettings(): Promise<void> {
  const preference = loadDevices();
  let devices: MediaDeviceInfo[] = [];
  try {
    devices = (await navigator.mediaDevices?.enumerateDevices()) ?? [];
  } catch {
    // Listed as "Default" only.
  }
  const select = (kind: MediaDeviceKind, label: string, current: string) => {
    const options = devices.filter((device) => device.kind === kind);
    return h(
      "select",
      { id: `select-${kind}`, "aria-label": label },
      h("option", { value: "" }, "System default"),
      ...options.map((device, index) =>
        h("option", { value: device.deviceId, selected: device.deviceId === current }, device.label || `${label} ${index + 1}`),
      ),
    );
  };
  const microphone = select("audioinput", "Microphone", preference.audioInput);
  const camera = select("videoinput", "Camera", preference.videoInput);
  const close = h("button", { class: "primary", type: "submit" }, "Done");
  const dialog = h(
    "dialog",
    { class: "settings", "aria-labelledby": "settings-title" },
    h(
      "form",
      { method: "dialog" },
      h("h2", { id: "settings-title" }, "Devices"),
      h("label", { for: "select-audioinput" }, "Microphone"),
      microphone,
      h("label", { for: "select-videoinput" }, "Camera"),
      camera,
      devices.some((device) => device.label)
        ? null
        : h("p", { class: "hint" }, "Device names appear after you allow camera and microphone access (start a call once)."),
      h("div", { class: "row" }, close),
    ),
  );
  dialog.addEventListener("close", () => {
    const next = { audioInput: microphone.value, videoInput: camera.value };
    localStorage.setItem(DEVICES_KEY, JSON.stringify(next));
    if (call?.phase === "active") {
      if (next.audioInput !== preference.audioInput && next.audioInput) void call.switchDevice("audio", next).catch(() => notify("Could not switch the microphone."));
      if (next.videoInput !== preference.videoInput && next.videoInput) void call.switchDevice("video", next).catch(() => notify("Could not switch the camera."));
    }
    dialog.remove();
  });
  document.body.append(dialog);
  dialog.showModal();
}

// ---------------------------------------------------------------- start

api.onUnauthorized = () => signOutLocally("Your session has ended. Sign in again.");

document.addEventListener("visibilitychange", () => {
  if (!document.hidden && tab === "history" && unseen > 0 && document.getElementById("panel-history")) {
    void markMissedSeen();
  }
});

// Ask for notification permission on the first click, as browsers require a gesture.
document.addEventListener(
  "click",
  () => {
    if (api.token && "Notification" in window && Notification.permission === "default") {
      void Notification.requestPermission().catch(() => {});
    }
  },
  { once: true },
);

const savedToken = localStorage.getItem(TOKEN_KEY);
if (savedToken) {
  api.token = savedToken;
  try {
    me = JSON.parse(localStorage.getItem(USER_KEY) ?? "null") as User | null;
  } catch {
    me = null;
  }
  startApp();
} else {
  renderLogin();
}
