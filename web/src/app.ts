// The session and the page's frame: shared state (one object), storage, the
// notice line, the top bar, which screen shows (home or the call), the server
// link state and signing out. Screens live in their own files; main.ts wires.

import { Api, ApiError } from "./api";
import type { CallSession, DevicePreference } from "./call";
import { displayName, type ServerLink } from "./callstate";
import { clear, h } from "./dom";
import { icon } from "./icons";
import type { Connection } from "./protocol";
import type { DirectoryUser, Id, Media, Session, User } from "./types";

const TOKEN_KEY = "parley.token";
const USER_KEY = "parley.user";
const DEVICES_KEY = "parley.devices";
// sessionStorage: it survives a reload (so the server resumes the call on this
// device) but is not shared between tabs, which would otherwise fight over one device.
const DEVICE_ID_KEY = "parley.deviceId";

export const api = new Api();

/** Everything the screens share. Each file owns the parts it names in web/README.md. */
export const app = {
  me: null as User | null,
  conn: null as Connection | null,
  session: null as Session | null,
  /** The socket's state; presence and call buttons are only live while connected. */
  link: "reconnecting" as ServerLink,
  /** Keyed by String(id): ids may be numbers on the wire but are strings in the DOM. */
  people: new Map<string, DirectoryUser>(),
  tab: "people" as "people" | "history",
  /** Unseen missed calls (the server's count). */
  unseen: 0,
  call: null as CallSession | null,
  /** Where focus goes when the call screen closes: the button that started the call. */
  lastCall: null as { peer: Id; media: Media } | null,
};

/** Screens register here (main.ts), so this file does not import them. */
export const views = {
  home: (): HTMLElement => h("div"),
  call: (_call: CallSession): HTMLElement => h("div"),
  /** Refreshes the call screen in place. */
  updateCall: (): void => {},
  /** The home screen was (re)built: fill its lists. */
  homeShown: (): void => {},
  /** Ends the call on the server before signing out. */
  endCall: async (): Promise<void> => {},
  openDevices: (): void => {},
  signedIn: (): void => {},
  signedOut: (): void => {},
};

export const root = document.getElementById("app") as HTMLElement;

// ---------------------------------------------------------------- storage

export function savedToken(): string | null {
  return localStorage.getItem(TOKEN_KEY);
}

export function savedUser(): User | null {
  try {
    return JSON.parse(localStorage.getItem(USER_KEY) ?? "null") as User | null;
  } catch {
    return null;
  }
}

export function saveSession(token: string, user: User): void {
  localStorage.setItem(TOKEN_KEY, token);
  saveUser(user);
}

export function saveUser(user: User): void {
  localStorage.setItem(USER_KEY, JSON.stringify(user));
}

export function loadDevices(): DevicePreference {
  try {
    const saved = JSON.parse(localStorage.getItem(DEVICES_KEY) ?? "{}") as Partial<DevicePreference>;
    return { audioInput: saved.audioInput ?? "", videoInput: saved.videoInput ?? "", audioOutput: saved.audioOutput ?? "" };
  } catch {
    return { audioInput: "", videoInput: "", audioOutput: "" };
  }
}

export function saveDevices(devices: DevicePreference): void {
  localStorage.setItem(DEVICES_KEY, JSON.stringify(devices));
}

export function deviceId(): string {
  let id = sessionStorage.getItem(DEVICE_ID_KEY);
  if (!id) {
    id = crypto.randomUUID();
    sessionStorage.setItem(DEVICE_ID_KEY, id);
  }
  return id;
}

// ---------------------------------------------------------------- notices

let noticeTimer: number | undefined;

export interface NoticeAction {
  label: string;
  run: () => void;
}

/**
 * One line of news above the screen. Errors stay until dismissed or replaced;
 * information fades. `topic` lets a later event take back what it said
 * (the connection notice goes when the connection comes back).
 */
export function notify(text: string, kind: "error" | "info" = "error", action?: NoticeAction, topic = ""): void {
  const box = document.getElementById("notice");
  if (!box) return;
  clear(box);
  window.clearTimeout(noticeTimer);
  if (!text) return;
  box.append(
    h(
      "div",
      { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status", "data-topic": topic },
      h("span", null, text),
      action
        ? h("button", {
            class: "notice-action",
            onclick: () => {
              notify("");
              action.run();
            },
          }, action.label)
        : null,
      h("button", { class: "ghost", "aria-label": "Dismiss", onclick: () => notify("") }, "×"),
    ),
  );
  if (kind === "info") noticeTimer = window.setTimeout(() => notify(""), action ? 15000 : 8000);
}

/** Clears the notice if it is about `topic`. */
export function retract(topic: string): void {
  const current = document.querySelector<HTMLElement>("#notice .notice");
  if (current && current.dataset.topic === topic) notify("");
}

// ---------------------------------------------------------------- dialogs

/** A modal yes/no question; resolves true for yes. Esc means no. */
export function confirmDialog(title: string, text: string, yes: string, no: string): Promise<boolean> {
  return new Promise((resolve) => {
    let answer = false;
    const stay = h("button", { type: "button", onclick: () => dialog.close() }, no);
    const go = h("button", { type: "button", class: "danger", onclick: () => ((answer = true), dialog.close()) }, yes);
    const dialog = h(
      "dialog",
      { class: "confirm", "aria-labelledby": "confirm-title", "aria-describedby": "confirm-text" },
      h("h2", { id: "confirm-title" }, title),
      h("p", { id: "confirm-text" }, text),
      h("div", { class: "row" }, stay, go),
    );
    dialog.addEventListener("close", () => {
      dialog.remove();
      resolve(answer);
    });
    document.body.append(dialog);
    dialog.showModal();
    stay.focus();
  });
}

// ---------------------------------------------------------------- the shell

export function renderShell(): void {
  clear(root);
  root.append(
    h(
      "header",
      { class: "topbar" },
      h("h1", { class: "brand" }, icon("logo"), "Parley"),
      h("span", { class: "me", id: "me" }, displayName(app.me)),
      h("span", { class: "server-state", id: "server-state", role: "status" }),
      h("button", { class: "ghost", "aria-label": "Devices", title: "Camera, microphone and speaker", onclick: () => views.openDevices() }, icon("settings"), h("span", { class: "label" }, "Devices")),
      h("button", { class: "ghost", id: "sign-out", onclick: () => void signOut() }, "Sign out"),
    ),
    h("div", { id: "prompt" }),
    h("div", { id: "notice" }),
    h("main", { id: "screen" }),
  );
  renderLink();
  renderScreen();
}

export function setMe(user: User): void {
  app.me = user;
  const label = document.getElementById("me");
  if (label) label.textContent = displayName(user);
}

/** The server link changed: the top bar says it, and a notice says what it means. */
export function setLink(link: ServerLink): void {
  if (app.link === link) return;
  app.link = link;
  renderLink();
  if (link === "reconnecting") {
    notify("You are not connected to the server. Calls work again as soon as it is back.", "error", undefined, "connection");
  } else if (everConnected) {
    retract("connection");
    notify("Reconnected", "info", undefined, "connection");
  }
  if (link === "connected") everConnected = true;
}

/** Whether this sign-in was ever connected: the first connection is no "reconnected". */
let everConnected = false;

function renderLink(): void {
  const state = document.getElementById("server-state");
  // Before the first connection of this sign-in nothing was lost yet: "Connecting".
  if (state) state.textContent = app.link === "connected" ? "" : everConnected ? "Reconnecting to server…" : "Connecting to server…";
  document.body.dataset.link = app.link;
}

/** Chooses between the home screen and the call screen. */
export function renderScreen(): void {
  const screen = document.getElementById("screen");
  if (!screen) return;
  const call = app.call;
  const inCallScreen = call !== null && (call.phase === "starting" || call.phase === "outgoing" || call.phase === "active");
  const showing = screen.dataset.view;
  if (inCallScreen) {
    const key = `call:${call.key}`;
    if (showing !== key) {
      clear(screen);
      screen.dataset.view = key;
      screen.append(views.call(call));
      // Keyboard users land on the one control that always matters.
      queueMicrotask(() => document.getElementById("hangup")?.focus());
    }
    views.updateCall();
  } else if (showing !== "home") {
    const wasCall = showing?.startsWith("call:") ?? false;
    clear(screen);
    screen.dataset.view = "home";
    screen.append(views.home());
    views.homeShown();
    if (wasCall) returnFocus();
  }
}

/** After the call screen closes, focus goes back where the call started, never to <body>. */
function returnFocus(): void {
  const last = app.lastCall;
  const target =
    (last && document.querySelector<HTMLElement>(`li.person[data-user-id="${CSS.escape(String(last.peer))}"] button[data-media="${last.media}"]:not(:disabled)`)) ||
    document.querySelector<HTMLElement>('[role="tab"][aria-selected="true"]');
  target?.focus();
}

// ---------------------------------------------------------------- signing out

export function signOutLocally(message = ""): void {
  views.signedOut();
  app.conn?.close();
  app.conn = null;
  app.session = null;
  api.token = null;
  app.me = null;
  app.people.clear();
  app.unseen = 0;
  app.tab = "people";
  app.link = "reconnecting";
  everConnected = false;
  localStorage.removeItem(TOKEN_KEY);
  localStorage.removeItem(USER_KEY);
  renderLoginScreen(message);
}

/** Set by signin.ts (which needs this file); avoids an import cycle at load. */
export let renderLoginScreen: (message?: string) => void = () => {};
export function setLoginScreen(render: (message?: string) => void): void {
  renderLoginScreen = render;
}

export async function signOut(): Promise<void> {
  if (app.call && app.call.phase !== "ended") {
    const name = displayName(app.call.peer);
    const sure = await confirmDialog(
      "Sign out and end the call?",
      `Signing out ends your call with ${name}.`,
      "End call and sign out",
      "Stay in the call",
    );
    if (!sure) return;
    // End it on the server first, so the other side is told at once rather than after the grace.
    await views.endCall();
  }
  try {
    await api.logout();
  } catch (error) {
    // The token is dropped here either way; a failed logout only means the server forgets it later.
    if (!(error instanceof ApiError)) throw error;
  }
  signOutLocally();
}
