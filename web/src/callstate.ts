// The client's call rules as plain functions: no DOM, no socket, no clock. What a
// person is told when a call ends, what counts as missed (the server's rule, so the
// live notice, the badge and the history agree), how history rows read, and the
// tab title. Unit-tested in tests/e2e/client-logic.test.mjs.

import type { CallEnded, HistoryEntry, Media, User } from "./types";

export function displayName(user: Pick<User, "displayName" | "username"> | undefined | null): string {
  return user?.displayName || user?.username || "Someone";
}

export function formatDuration(totalSecs: number): string {
  const secs = Math.max(0, Math.floor(totalSecs));
  const hours = Math.floor(secs / 3600);
  const minutes = Math.floor((secs % 3600) / 60);
  const seconds = secs % 60;
  const mm = String(minutes).padStart(2, "0");
  const ss = String(seconds).padStart(2, "0");
  return hours > 0 ? `${hours}:${mm}:${ss}` : `${mm}:${ss}`;
}

/**
 * The server's rule (protocol: HistoryEntry.missed): a call is missed for its callee
 * when it ended as `missed` or `busy`. A call the caller cancelled is not missed.
 */
export function isMissed(direction: "incoming" | "outgoing", status: string | null | undefined): boolean {
  return direction === "incoming" && (status === "missed" || status === "busy");
}

export interface EndedView {
  role: "caller" | "callee";
  /** The other party's name. */
  name: string;
  /** The call had been answered. */
  wasActive: boolean;
  /** This user's action ended it. */
  byMe: boolean;
}

export interface Notice {
  text: string;
  kind: "error" | "info";
  /** Offer "Call back" next to the text. */
  callBack: boolean;
  /** The ending counts as a missed call for this user (it shows in the badge). */
  missed: boolean;
}

/** What the person sees when a call ends, whoever ended it. An empty text shows nothing. */
export function endedNotice(event: Pick<CallEnded, "status" | "reason" | "durationSecs" | "message">, view: EndedView): Notice {
  const { name, role, wasActive, byMe } = view;
  const missed = isMissed(role === "callee" ? "incoming" : "outgoing", event.status);
  const notice = (text: string, kind: "error" | "info", callBack = false): Notice => ({ text, kind, callBack, missed });
  if (event.reason === "connection_lost") {
    return notice(wasActive ? `Connection lost. The call with ${name} ended.` : `The call with ${name} ended: connection lost.`, "error", true);
  }
  if (event.reason === "server_shutdown" || event.reason === "server_restart") {
    return notice("The server restarted and the call ended. Call again in a moment.", "error", true);
  }
  if (byMe) return notice(wasActive ? `Call with ${name} ended after ${formatDuration(event.durationSecs)}.` : "", "info");
  switch (event.status) {
    case "declined":
      return notice(`${name} declined the call${event.message ? `: “${event.message}”` : "."}`, "error", true);
    case "missed":
      return role === "caller" ? notice(`No answer from ${name}.`, "error", true) : notice(`Missed call from ${name}.`, "info", true);
    case "cancelled":
      return notice(role === "callee" ? `${name} cancelled the call.` : "", "info", role === "callee");
    case "busy":
      return notice(`${name} is busy in another call.`, "error", true);
    default:
      return notice(wasActive ? `${name} hung up after ${formatDuration(event.durationSecs)}.` : "", "info");
  }
}

/** The outcome word of a history row, from this user's side. */
export function describeEntry(entry: Pick<HistoryEntry, "direction" | "status" | "reason">): string {
  const outgoing = entry.direction === "outgoing";
  switch (entry.status) {
    case "completed":
      return "Answered";
    case "declined":
      return "Declined";
    case "cancelled":
      return outgoing ? "Cancelled" : "Cancelled by caller";
    case "missed":
      if (outgoing) return entry.reason === "offline" ? "Offline" : "No answer";
      return "Missed";
    case "busy":
      return outgoing ? "Busy" : "Missed (you were busy)";
    default:
      return entry.status;
  }
}

/** The tab title: who is calling, else the unseen missed count, else the name. */
export function titleText(unseen: number, ringing: string | null): string {
  if (ringing) return `${ringing} is calling – Parley`;
  return unseen > 0 ? `(${unseen}) Parley` : "Parley";
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

/** Why a call could not start, in words. */
export function initiateError(code: string, name: string, message: string): string {
  const text = ERROR_TEXT[code];
  return text ? text(name) : `The call could not start: ${message}`;
}

/** The accessible name of a call button: it carries the person. */
export function callButtonName(media: Media, name: string): string {
  return `${media === "video" ? "Video" : "Audio"} call ${name}`;
}

export type ServerLink = "connected" | "reconnecting";

/**
 * Presence as the page may show it: while this client is disconnected nobody's
 * status is known, and nobody can be called.
 */
export function shownPresence(status: "online" | "busy" | "offline", link: ServerLink): "online" | "busy" | "offline" | "unknown" {
  return link === "connected" ? status : "unknown";
}

/** What the call screen's status line says (empty when the video says it all). */
export function phaseText(view: {
  phase: "starting" | "outgoing" | "incoming" | "active" | "ended";
  media: Media;
  peerCameraOn: boolean;
  name: string;
}): string {
  if (view.phase === "starting") return view.media === "video" ? "Starting camera…" : "Starting microphone…";
  if (view.phase === "outgoing") return `Calling ${view.name}… Ringing`;
  if (view.phase !== "active" || view.peerCameraOn) return "";
  return view.media === "audio" ? "Audio call" : `${view.name} turned the camera off`;
}
