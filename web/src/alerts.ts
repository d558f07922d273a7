// Everything that reaches a person outside the page: system notifications (asked
// for after sign-in, with why), the unseen missed count in the tab title and the
// app badge, and the warning before closing the tab during a call.

import { app } from "./app";
import { displayName, titleText } from "./callstate";
import { clear, h } from "./dom";
import type { Call } from "./types";

const ASKED_KEY = "parley.notificationsAsked";

let ringing: Notification | null = null;

function supported(): boolean {
  return "Notification" in window;
}

/**
 * Browsers only ask on a click, so after sign-in the page says why in one sentence
 * and asks when the person agrees (a click listener set at load would be used up
 * by the "Sign in" click itself).
 */
export function offerNotifications(): void {
  const box = document.getElementById("prompt");
  if (!box || !supported() || Notification.permission !== "default" || localStorage.getItem(ASKED_KEY)) return;
  const done = () => {
    localStorage.setItem(ASKED_KEY, "1");
    clear(box);
  };
  box.append(
    h(
      "div",
      { class: "prompt", role: "region", "aria-label": "Notifications" },
      h("span", null, "Get a notification when someone calls while Parley is in the background."),
      h("button", {
        class: "primary",
        onclick: () => {
          done();
          void Notification.requestPermission().catch(() => {});
        },
      }, "Turn on notifications"),
      h("button", { class: "ghost", onclick: done }, "Not now"),
    ),
  );
}

function show(title: string, options: NotificationOptions): Notification | null {
  if (!supported() || Notification.permission !== "granted") return null;
  try {
    const notification = new Notification(title, options);
    notification.onclick = () => {
      window.focus();
      notification.close();
    };
    return notification;
  } catch {
    // Some platforms only allow notifications from a service worker; the page still shows it all.
    return null;
  }
}

export function notifyIncoming(call: Call, name: string): void {
  updateTitle();
  if (!document.hidden) return;
  ringing = show(`${name} is calling`, {
    body: call.media === "video" ? "Video call" : "Audio call",
    tag: `parley-call-${call.id}`,
    requireInteraction: true,
  });
}

export function stopRingingNotification(): void {
  ringing?.close();
  ringing = null;
  updateTitle();
}

/** A call was missed while the tab was in the background. */
export function notifyMissed(call: { id: Call["id"]; media: Call["media"] }, name: string): void {
  if (!document.hidden) return;
  show(`Missed call from ${name}`, { body: call.media === "video" ? "Video call" : "Audio call", tag: `parley-missed-${call.id}` });
}

export function updateTitle(): void {
  const call = app.call;
  document.title = titleText(app.unseen, call && call.phase === "incoming" ? displayName(call.peer) : null);
}

/** The unseen missed count changed: badge on the History tab, the title, the app badge. */
export function showUnseen(): void {
  const badge = document.getElementById("missed-badge");
  if (badge) {
    badge.hidden = app.unseen === 0;
    clear(badge);
    if (app.unseen > 0) badge.append(String(app.unseen), h("span", { class: "sr" }, ` missed call${app.unseen === 1 ? "" : "s"}`));
  }
  updateTitle();
  const nav = navigator as Navigator & { setAppBadge?: (n?: number) => Promise<void>; clearAppBadge?: () => Promise<void> };
  if (app.unseen > 0) void nav.setAppBadge?.(app.unseen).catch(() => {});
  else void nav.clearAppBadge?.().catch(() => {});
}

/** Closing or reloading the tab during a call: the browser asks first. */
export function guardUnload(): void {
  window.addEventListener("beforeunload", (event) => {
    const call = app.call;
    if (!call || call.phase === "ended" || call.phase === "incoming") return;
    event.preventDefault();
    event.returnValue = "";
  });
}
