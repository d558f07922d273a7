// The connection test's workings, apart from its screen (conntest.ts): the two HTTP calls it
// makes (short-lived relay credentials; sending the result to the administrator), the relay
// probe over one transport, and the verdict in plain words (pure, unit-tested). No DOM.

import type { IceServer } from "./types";

export type Transport = "udp" | "tcp" | "tls";
export const TRANSPORTS: readonly Transport[] = ["udp", "tcp", "tls"];

export interface ProbeResult {
  ok: boolean;
  rttMs: number | null;
  /** Why it failed, in words; null when it worked. */
  error: string | null;
}

export type Results = Record<Transport, ProbeResult>;

export interface MediaCheck {
  microphone: boolean;
  camera: boolean;
}

/** What the server offers (`/api/v1/connection-test/ice-servers`). */
export interface TestIce {
  iceServers: IceServer[];
  iceTransportPolicy: RTCIceTransportPolicy;
  ttlSecs: number;
}

/** Said when the server lists no relay URL for a transport (TURN over TLS is optional). */
export const NOT_OFFERED = "this server offers no relay over this transport";

/**
 * How long one transport may take to connect. The three run one after the other: each end
 * of a probe takes a relay allocation per network interface, and the relay's per-user quota
 * (`turn.max_allocations_per_user`, 10 by default) would refuse some if all ran at once.
 * A transport that is blocked outright fails as soon as gathering ends without a candidate.
 */
export const PROBE_TIMEOUT_MS = 6_000;
const PINGS = 5;

// ---------------------------------------------------------------- HTTP

/** An HTTP failure, worded for the person (the screen shows `message`). */
export class TestError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

async function call<T>(method: string, path: string, token: string | null, body?: unknown): Promise<T> {
  const headers: Record<string, string> = {};
  if (token) headers["Authorization"] = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response: Response;
  try {
    response = await fetch(`/api/v1${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    throw new TestError(0, "Cannot reach the server. Check your connection.");
  }
  let data: unknown = null;
  try {
    data = await response.json();
  } catch {
    // An empty body or a proxy's error page: the status says enough.
  }
  if (!response.ok) {
    const message = (data as { error?: { message?: string } } | null)?.error?.message;
    throw new TestError(
      response.status,
      response.status === 429 ? "Too many tests from this address. Wait a minute and try again." : (message ?? `The server answered ${response.status}.`),
    );
  }
  return data as T;
}

/** Relay credentials for the test; works signed out (the token, when there is one, is sent). */
export function testIceServers(token: string | null): Promise<TestIce> {
  return call("GET", "/connection-test/ice-servers", token);
}

/** The result, for the administrator's log (`POST /api/v1/diagnostics`). */
export function sendDiagnostics(token: string | null, summary: string, results: Results, media: MediaCheck): Promise<unknown> {
  return call("POST", "/diagnostics", token, {
    kind: "connection-test",
    summary: summary.slice(0, 500),
    results,
    media,
    userAgent: navigator.userAgent.slice(0, 300),
  });
}

// ---------------------------------------------------------------- the probes

/**
 * The relay entry narrowed to `transport`'s URLs: `turn:…?transport=udp|tcp` or `turns:` for
 * TLS. Null when the server lists none.
 */
export function relayFor(servers: IceServer[], transport: Transport): IceServer | null {
  for (const server of servers) {
    if (!server.username || !server.credential) continue;
    const urls = (Array.isArray(server.urls) ? server.urls : [server.urls]).filter((url) => {
      if (transport === "tls") return url.startsWith("turns:");
      if (!url.startsWith("turn:")) return false;
      const match = /[?&]transport=(\w+)/i.exec(url);
      // A turn: URL without ?transport= means UDP (RFC 7065).
      return (match?.[1]?.toLowerCase() ?? "udp") === transport;
    });
    if (urls.length > 0) return { urls, username: server.username, credential: server.credential };
  }
  return null;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? 0;
}

/**
 * Connects two peer connections in this page to each other through the relay over one
 * transport only (`iceTransportPolicy: "relay"`), opens a data channel, and times a few
 * round trips on it. Everything it opens is closed before it resolves.
 */
export async function probeRelay(server: IceServer | null, timeoutMs = PROBE_TIMEOUT_MS): Promise<ProbeResult> {
  if (!server) return { ok: false, rttMs: null, error: NOT_OFFERED };
  const config: RTCConfiguration = { iceServers: [server], iceTransportPolicy: "relay" };
  const a = new RTCPeerConnection(config);
  const b = new RTCPeerConnection(config);
  let relayCandidates = 0;
  let timer: number | undefined;
  try {
    let gatheredNothing: () => void = () => {};
    const nothing = new Promise<never>((_, reject) => {
      gatheredNothing = () => reject(new Error("no relay candidate: the relay could not be reached"));
    });
    nothing.catch(() => {});
    a.onicecandidate = ({ candidate }) => {
      // The end of gathering: without a single relay candidate, waiting longer cannot help.
      if (!candidate) {
        if (relayCandidates === 0) gatheredNothing();
        return;
      }
      relayCandidates++;
      void b.addIceCandidate(candidate).catch(() => {});
    };
    b.onicecandidate = ({ candidate }) => {
      if (candidate) void a.addIceCandidate(candidate).catch(() => {});
    };
    const channel = a.createDataChannel("parley-connection-test");
    const echoed = new Promise<void>((resolve) => {
      b.ondatachannel = ({ channel: incoming }) => {
        incoming.onmessage = ({ data }) => incoming.send(data);
        resolve();
      };
    });
    const open = new Promise<void>((resolve, reject) => {
      channel.onopen = () => resolve();
      channel.onerror = () => reject(new Error("the data channel failed"));
    });
    open.catch(() => {}); // an error after the race is decided must not surface as unhandled
    const timeout = new Promise<never>((_, reject) => {
      timer = window.setTimeout(
        () => reject(new Error(relayCandidates === 0 ? "no relay candidate: the relay could not be reached" : "no connection through the relay in time")),
        timeoutMs,
      );
    });
    await a.setLocalDescription();
    await b.setRemoteDescription(a.localDescription as RTCSessionDescription);
    await b.setLocalDescription();
    await a.setRemoteDescription(b.localDescription as RTCSessionDescription);
    await Promise.race([Promise.all([open, echoed]), timeout, nothing]);

    const times: number[] = [];
    for (let i = 0; i < PINGS; i++) {
      const sent = performance.now();
      const back = new Promise<void>((resolve) => {
        channel.onmessage = ({ data }) => {
          if (data === String(i)) resolve();
        };
      });
      channel.send(String(i));
      await Promise.race([back, timeout]);
      times.push(performance.now() - sent);
    }
    return { ok: true, rttMs: Math.round(median(times)), error: null };
  } catch (error) {
    return { ok: false, rttMs: null, error: error instanceof Error ? error.message : String(error) };
  } finally {
    window.clearTimeout(timer);
    a.close();
    b.close();
  }
}

/** Each transport in turn (see `PROBE_TIMEOUT_MS`), with a moment between for the relay to free allocations. */
export async function probeAll(servers: IceServer[]): Promise<Results> {
  const results = {} as Results;
  for (const transport of TRANSPORTS) {
    const server = relayFor(servers, transport);
    results[transport] = await probeRelay(server);
    if (server) await new Promise((resolve) => window.setTimeout(resolve, 250));
  }
  return results;
}

/** Opens and at once releases the microphone and the camera, each on its own. */
export async function checkMedia(): Promise<MediaCheck> {
  const works = async (constraints: MediaStreamConstraints) => {
    if (!navigator.mediaDevices?.getUserMedia) return false;
    try {
      const stream = await navigator.mediaDevices.getUserMedia(constraints);
      const live = stream.getTracks().some((track) => track.readyState === "live");
      for (const track of stream.getTracks()) track.stop();
      return live;
    } catch {
      return false;
    }
  };
  return { microphone: await works({ audio: true }), camera: await works({ video: true }) };
}

// ---------------------------------------------------------------- the verdict

const NAMES: Record<Transport, string> = { udp: "UDP", tcp: "TCP", tls: "TLS" };

function list(names: string[]): string {
  return names.length <= 1 ? (names[0] ?? "") : `${names.slice(0, -1).join(", ")} and ${names.at(-1)}`;
}

/**
 * What the results mean for calls, in plain words. Calls prefer UDP, then TCP, then TLS,
 * so the first transport that worked is the one calls will use; the ones before it that
 * failed are what the network blocks (a transport the server does not offer is not blocked).
 */
export function verdict(results: Results, media: MediaCheck): string {
  const working = TRANSPORTS.find((transport) => results[transport].ok);
  const offered = TRANSPORTS.filter((transport) => results[transport].error !== NOT_OFFERED);
  const parts: string[] = [];
  if (!working) {
    const blocked = offered.map((transport) => NAMES[transport]);
    parts.push(
      offered.length === 0
        ? "Calls will not work: this server offers no relay to test."
        : `Calls will not work from this network: it blocks the relay over ${list(blocked)}.`,
    );
    if (!offered.includes("tls")) parts.push("Ask your administrator to turn on the relay over TLS, which gets through most networks.");
    else parts.push("Try another network, or ask your administrator.");
  } else {
    const blocked = TRANSPORTS.slice(0, TRANSPORTS.indexOf(working)).filter((transport) => offered.includes(transport));
    parts.push(
      blocked.length === 0
        ? "Calls will work."
        : `Calls will work. Your network blocks ${list(blocked.map((transport) => NAMES[transport]))}, so calls will use the relay over ${NAMES[working]}.`,
    );
  }
  if (!media.microphone && !media.camera) parts.push("Your microphone and camera could not be opened: allow them in the browser's site settings, or connect them.");
  else if (!media.microphone) parts.push("Your microphone could not be opened, so others would not hear you.");
  else if (!media.camera) parts.push("Your camera could not be opened: audio calls still work.");
  return parts.join(" ");
}
