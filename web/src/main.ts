// Parley's web client: this file only wires the parts together. Each part is
// one job (web/README.md lists them); the wire protocol lives in protocol.ts.

import { api, app, deviceId, renderScreen, renderShell, savedToken, savedUser, saveUser, setLink, setMe, signOutLocally, views } from "./app";
import { guardUnload, offerNotifications, showUnseen } from "./alerts";
import { applyPresence, loadPeople, onStartCall, renderPeople } from "./directory";
import { openDeviceSettings } from "./devices";
import { openConnectionTest } from "./conntest";
import { buildHome, homeShown } from "./home";
import { flushDeletes, historyLoaded, loadHistory, markMissedSeen, refreshMissed, renderHistory, resetHistory } from "./history";
import {
  buildCallScreen, endCallLocally, handleAccepted, handleAnsweredElsewhere, handleEnded, handleIncoming, hangUp, placeCall, resumeFromSession, updateCallScreen,
} from "./incall";
import { Connection } from "./protocol";
import { renderLogin } from "./signin";
import type { Session } from "./types";
import "./styles.css";

const SESSION_ENDED = "Your session has ended. Sign in again.";

views.home = buildHome;
views.homeShown = homeShown;
views.call = buildCallScreen;
views.updateCall = updateCallScreen;
views.endCall = hangUp;
views.openDevices = () => void openDeviceSettings();
views.signedIn = startApp;
views.signedOut = () => {
  endCallLocally();
  window.clearTimeout(iceRefreshTimer);
  resetHistory();
  showUnseen();
};
onStartCall((userId, media) => void placeCall(userId, media));

function startApp(): void {
  app.link = "reconnecting";
  renderShell();
  offerNotifications();
  connect();
}

/** Presence, call buttons and the call screen follow the server link. */
function linkChanged(link: "connected" | "reconnecting"): void {
  setLink(link);
  renderPeople();
  renderHistory();
}

function connect(): void {
  const token = api.token;
  if (!token) return;
  const conn: Connection = new Connection(token, deviceId(), {
    connected: () => linkChanged("connected"),
    disconnected: () => linkChanged("reconnecting"),
    unauthorized: () => signOutLocally(SESSION_ENDED),
    closedByServer: () => {
      // Revoked (sign-out elsewhere) or expired tokens get a 401 here; anything else is "try again".
      api
        .me()
        .then(() => conn.reconnect())
        .catch((error: unknown) => {
          if (app.conn !== conn) return;
          if (error instanceof Error && "status" in error && (error as { status: number }).status === 401) signOutLocally(SESSION_ENDED);
          else window.setTimeout(() => app.conn === conn && conn.reconnect(), 2000);
        });
    },
    session: handleSession,
    presence: applyPresence,
    incoming: handleIncoming,
    accepted: handleAccepted,
    answeredElsewhere: handleAnsweredElsewhere,
    ended: handleEnded,
    peerReconnecting: (callId) => app.call?.is(callId) && app.call.handlePeerReconnecting(),
    peerResumed: (callId) => app.call?.is(callId) && app.call.handlePeerResumed(),
    offer: (callId, sdp) => app.call?.is(callId) && app.call.handleDescription("offer", sdp),
    answer: (callId, sdp) => app.call?.is(callId) && app.call.handleDescription("answer", sdp),
    ice: (callId, candidate) => app.call?.is(callId) && app.call.handleCandidate(candidate),
    mediaState: (callId, audio, video) => app.call?.is(callId) && app.call.handlePeerMedia(audio, video),
  });
  app.conn = conn;
}

let iceRefreshTimer: number | undefined;

/** TURN credentials last `ttlSecs`; fetch new ones at half-life so long calls can still restart ICE. */
function scheduleIceRefresh(ttlSecs: number): void {
  window.clearTimeout(iceRefreshTimer);
  const delay = Math.max(60, ttlSecs / 2) * 1000;
  iceRefreshTimer = window.setTimeout(async () => {
    try {
      const fresh = await api.iceServers();
      if (app.session) {
        app.session.iceServers = fresh.iceServers;
        app.session.iceTransportPolicy = fresh.iceTransportPolicy;
      }
      app.call?.updateIceServers();
      scheduleIceRefresh(fresh.ttlSecs);
    } catch {
      scheduleIceRefresh(120); // Try again soon; the current credentials may still be valid.
    }
  }, delay);
}

function handleSession(data: Session): void {
  app.session = data;
  scheduleIceRefresh(data.ttlSecs);
  setMe(data.user);
  saveUser(data.user);
  void loadPeople();
  void refreshMissed();
  if (historyLoaded() || app.tab === "history") void loadHistory(false);
  resumeFromSession(data.activeCall, data.user);
}

// ---------------------------------------------------------------- page-wide

api.onUnauthorized = () => signOutLocally(SESSION_ENDED);

document.addEventListener("visibilitychange", () => {
  if (!document.hidden && app.tab === "history" && app.unseen > 0 && document.getElementById("panel-history")) {
    void markMissedSeen();
  }
});
document.addEventListener("fullscreenchange", () => renderScreen());
// A deletion still waiting for its undo time is committed when the page goes away.
window.addEventListener("pagehide", () => flushDeletes());
guardUnload();


const token = savedToken();
if (token) {
  api.token = token;
  app.me = savedUser();
  startApp();
} else {
  renderLogin();
}
// An administrator can send people straight to the connection test: https://host/#test-connection
if (location.hash === "#test-connection") openConnectionTest(api.token);
