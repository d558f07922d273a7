// How a call's media went, for the server's call log (spec: "Call quality", `call:stats`).
// `summariseStats` is the rule, pure and unit-tested: `getStats()` entries in, the report out.
// `StatsReporter` is the shell around one call: it samples every 10 s while the call is
// active, once when ICE fails (without a selected pair, too: then the report has no path and
// no figures, only what ICE saw), and once more, the final report, as the call ends.

import type { Id } from "./types";

export type CandidateType = "host" | "srflx" | "prflx" | "relay";
export type RelayProtocol = "udp" | "tcp" | "tls";

/** The `call:stats` payload without `callId`. Required fields are `null` while unknown. */
export interface CallStats {
  path: "direct" | "relay" | null;
  localCandidate: CandidateType | null;
  remoteCandidate: CandidateType | null;
  relayProtocol: RelayProtocol | null;
  rttMs: number | null;
  jitterMs: number | null;
  lossInPct: number | null;
  lossOutPct: number | null;
  bitrateInKbps: number | null;
  bitrateOutKbps: number | null;
  audioConcealedPct: number | null;
  videoFreezes: number | null;
  videoWidth: number | null;
  videoHeight: number | null;
  networkType: string | null;
  // Parley extensions (docs/api.md): what ICE saw, so a failed call can be explained.
  iceState: RTCIceConnectionState | null;
  localCandidateTypes: CandidateType[];
  remoteCandidateTypes: CandidateType[];
  relayProtocols: RelayProtocol[];
}

/** Running totals from one sample, kept to turn the next sample's totals into deltas. */
export interface Counters {
  /** ms, the stats' own clock. */
  at: number;
  packetsReceived: number;
  packetsLostIn: number;
  packetsSent: number;
  packetsLostOut: number;
  bytesReceived: number;
  bytesSent: number;
  audioSamples: number;
  audioConcealed: number;
}

/** One entry of an `RTCStatsReport`, loosely typed: browsers differ in what they fill in. */
export type Stat = { id: string; type: string; timestamp?: number } & Record<string, unknown>;

export interface StatsContext {
  iceState: RTCIceConnectionState | null;
  /** `navigator.connection.type` where the browser exposes it. */
  networkType: string | null;
}

const CANDIDATE_TYPES: readonly CandidateType[] = ["host", "srflx", "prflx", "relay"];
const RELAY_PROTOCOLS: readonly RelayProtocol[] = ["udp", "tcp", "tls"];
/** The spec's bounds (the server refuses longer strings and larger numbers). */
const MAX_NETWORK_TYPE = 32;
const MAX_MS = 60_000;

const num = (value: unknown): number | null => (typeof value === "number" && Number.isFinite(value) ? value : null);
const round1 = (value: number): number => Math.round(value * 10) / 10;
const clamp = (value: number, max: number): number => Math.min(max, Math.max(0, value));
const pct = (part: number, whole: number): number | null => (whole > 0 ? round1(clamp((100 * part) / whole, 100)) : null);

function candidateType(value: unknown): CandidateType | null {
  return CANDIDATE_TYPES.includes(value as CandidateType) ? (value as CandidateType) : null;
}

function relayProtocol(value: unknown): RelayProtocol | null {
  return RELAY_PROTOCOLS.includes(value as RelayProtocol) ? (value as RelayProtocol) : null;
}

/** Distinct values in the spec's order (equal sets read equal in the log). */
function inOrder<T>(all: readonly T[], seen: Set<T>): T[] {
  return all.filter((value) => seen.has(value));
}

/** The candidate pair ICE is using: the transport's, else a nominated succeeded pair (Firefox). */
function selectedPair(stats: ReadonlyMap<string, Stat>): Stat | undefined {
  for (const stat of stats.values()) {
    if (stat.type === "transport" && typeof stat.selectedCandidatePairId === "string") {
      const pair = stats.get(stat.selectedCandidatePairId);
      if (pair) return pair;
    }
  }
  for (const stat of stats.values()) {
    if (stat.type === "candidate-pair" && (stat.selected === true || (stat.nominated === true && stat.state === "succeeded"))) return stat;
  }
  return undefined;
}

/**
 * Summarises one `getStats()` result into the `call:stats` report. Loss, bitrates and audio
 * concealment are over the time since `previous` (the whole connection when it is `null`, or
 * when no packet moved since), so each report says how the last interval went; freezes are
 * counted over the connection.
 */
export function summariseStats(
  stats: ReadonlyMap<string, Stat>,
  previous: Counters | null,
  context: StatsContext,
): { report: CallStats; counters: Counters } {
  const pair = selectedPair(stats);
  const local = pair && typeof pair.localCandidateId === "string" ? stats.get(pair.localCandidateId) : undefined;
  const remote = pair && typeof pair.remoteCandidateId === "string" ? stats.get(pair.remoteCandidateId) : undefined;
  const localCandidate = candidateType(local?.candidateType);
  const remoteCandidate = candidateType(remote?.candidateType);

  const localTypes = new Set<CandidateType>();
  const remoteTypes = new Set<CandidateType>();
  const relayProtocols = new Set<RelayProtocol>();
  const counters: Counters = {
    at: 0,
    packetsReceived: 0,
    packetsLostIn: 0,
    packetsSent: 0,
    packetsLostOut: 0,
    bytesReceived: 0,
    bytesSent: 0,
    audioSamples: 0,
    audioConcealed: 0,
  };
  let audioJitter: number | null = null;
  let videoJitter: number | null = null;
  let remoteRtt: number | null = null;
  let freezes: number | null = null;
  let width: number | null = null;
  let height: number | null = null;

  for (const stat of stats.values()) {
    counters.at = Math.max(counters.at, num(stat.timestamp) ?? 0);
    switch (stat.type) {
      case "local-candidate": {
        const type = candidateType(stat.candidateType);
        if (type) localTypes.add(type);
        const protocol = relayProtocol(stat.relayProtocol);
        if (type === "relay" && protocol) relayProtocols.add(protocol);
        break;
      }
      case "remote-candidate": {
        const type = candidateType(stat.candidateType);
        if (type) remoteTypes.add(type);
        break;
      }
      case "inbound-rtp": {
        counters.packetsReceived += num(stat.packetsReceived) ?? 0;
        // packetsLost can go negative with duplicates; a negative loss is no loss.
        counters.packetsLostIn += Math.max(0, num(stat.packetsLost) ?? 0);
        counters.bytesReceived += num(stat.bytesReceived) ?? 0;
        const jitter = num(stat.jitter);
        if (stat.kind === "audio") {
          counters.audioSamples += num(stat.totalSamplesReceived) ?? 0;
          counters.audioConcealed += num(stat.concealedSamples) ?? 0;
          if (jitter !== null) audioJitter = Math.max(audioJitter ?? 0, jitter);
        } else if (stat.kind === "video") {
          if (jitter !== null) videoJitter = Math.max(videoJitter ?? 0, jitter);
          const count = num(stat.freezeCount);
          if (count !== null) freezes = (freezes ?? 0) + count;
          const w = num(stat.frameWidth);
          const h = num(stat.frameHeight);
          if (w !== null && h !== null && w * h > (width ?? 0) * (height ?? 0)) {
            width = w;
            height = h;
          }
        }
        break;
      }
      case "outbound-rtp":
        counters.packetsSent += num(stat.packetsSent) ?? 0;
        counters.bytesSent += num(stat.bytesSent) ?? 0;
        break;
      case "remote-inbound-rtp": {
        // What the other side told us (RTCP receiver reports) about what we sent.
        counters.packetsLostOut += Math.max(0, num(stat.packetsLost) ?? 0);
        const rtt = num(stat.roundTripTime);
        if (rtt !== null) remoteRtt = Math.max(remoteRtt ?? 0, rtt);
        break;
      }
      default:
        break;
    }
  }

  // A new peer connection (after a resume) starts its totals again: then count from zero.
  const base = previous && counters.packetsReceived >= previous.packetsReceived && counters.packetsSent >= previous.packetsSent ? previous : null;
  const delta = (key: keyof Counters) => Math.max(0, counters[key] - (base ? base[key] : 0));
  // An interval without a packet (media stalled, ICE failing) says nothing about loss: then
  // the whole connection's figures stand in.
  const inInterval = delta("packetsReceived") + delta("packetsLostIn") > 0;
  const outInterval = delta("packetsSent") > 0;
  const receivedIn = inInterval ? delta("packetsReceived") : counters.packetsReceived;
  const lostIn = inInterval ? delta("packetsLostIn") : counters.packetsLostIn;
  const sent = outInterval ? delta("packetsSent") : counters.packetsSent;
  const lostOut = outInterval ? delta("packetsLostOut") : counters.packetsLostOut;
  const seconds = base ? (counters.at - base.at) / 1000 : 0;
  const kbps = (bytes: number) => (seconds > 0 ? round1((bytes * 8) / 1000 / seconds) : null);

  const pairRtt = num(pair?.currentRoundTripTime);
  const rttSeconds = pairRtt ?? remoteRtt;
  const jitterSeconds = audioJitter ?? videoJitter;
  const media = receivedIn + lostIn > 0 || sent > 0;
  const networkType = typeof local?.networkType === "string" && local.networkType !== "unknown" ? local.networkType : context.networkType;

  const report: CallStats = {
    path: pair && (localCandidate || remoteCandidate) ? (localCandidate === "relay" || remoteCandidate === "relay" ? "relay" : "direct") : null,
    localCandidate,
    remoteCandidate,
    relayProtocol: localCandidate === "relay" ? relayProtocol(local?.relayProtocol) : null,
    rttMs: rttSeconds === null ? null : round1(clamp(rttSeconds * 1000, MAX_MS)),
    jitterMs: jitterSeconds === null ? (media ? 0 : null) : round1(clamp(jitterSeconds * 1000, MAX_MS)),
    lossInPct: pct(lostIn, receivedIn + lostIn) ?? (media ? 0 : null),
    lossOutPct: pct(lostOut, sent) ?? (media ? 0 : null),
    bitrateInKbps: kbps(delta("bytesReceived")),
    bitrateOutKbps: kbps(delta("bytesSent")),
    audioConcealedPct: pct(delta("audioConcealed"), delta("audioSamples")),
    videoFreezes: freezes,
    videoWidth: width,
    videoHeight: height,
    networkType: networkType ? networkType.slice(0, MAX_NETWORK_TYPE) : null,
    iceState: context.iceState,
    localCandidateTypes: inOrder(CANDIDATE_TYPES, localTypes),
    remoteCandidateTypes: inOrder(CANDIDATE_TYPES, remoteTypes),
    relayProtocols: inOrder(RELAY_PROTOCOLS, relayProtocols),
  };
  return { report, counters };
}

/**
 * True when the report has what the server requires of a connected call (the path, RTT,
 * jitter and loss): a connection that never chose a candidate pair has no path to report.
 */
export function complete(report: CallStats): boolean {
  return report.path !== null && report.rttMs !== null && report.jitterMs !== null && report.lossInPct !== null && report.lossOutPct !== null;
}

/** The fields that describe a selected candidate pair and what flowed over it. */
const PAIR_FIELDS = ["path", "localCandidate", "remoteCandidate", "relayProtocol", "rttMs", "jitterMs", "lossInPct", "lossOutPct"] as const;

/**
 * What to send for `report`, or `null` when there is nothing the server would accept: a
 * complete report as it is; and when ICE failed before any candidate pair was selected, the
 * report without the pair's fields (docs/api.md: the server then takes `path` and the figures
 * as absent), so that the admin still learns which candidates each side had. Any other
 * incomplete report (still checking, or a pair without RTT yet) waits for the next sample.
 */
export function payloadFor(report: CallStats): Partial<CallStats> | null {
  if (complete(report)) return report;
  if (report.iceState !== "failed" || report.path !== null) return null;
  const pairless: Partial<CallStats> = { ...report };
  for (const field of PAIR_FIELDS) delete pairless[field];
  return pairless;
}

/** The spec: at most one report every 5 s while the call is active. */
export const MIN_INTERVAL_MS = 5_000;
/** How long a hung-up call's connection stays open at most, waiting for its last stats. */
const FINAL_WAIT_MS = 2_000;
/** How often an active call reports, so that a crash loses little. */
export const REPORT_INTERVAL_MS = 10_000;

/** `navigator.connection.type` (Chromium on Android and ChromeOS), or null. */
function browserNetworkType(): string | null {
  const connection = (navigator as Navigator & { connection?: { type?: unknown } }).connection;
  return typeof connection?.type === "string" && connection.type !== "unknown" ? connection.type : null;
}

/** Reports one call's quality to the server; one per call, across its peer connections. */
export class StatsReporter {
  private timer: number | undefined;
  private pc: RTCPeerConnection | null = null;
  private previous: Counters | null = null;
  private lastSent = -Infinity;
  private pendingFailure: number | undefined;
  private done = false;

  constructor(
    private readonly callId: () => Id,
    private readonly send: (event: string, payload: Record<string, unknown>) => void,
  ) {}

  /** Reports on `pc` from now on (a new call, or a new connection after a resume). */
  watch(pc: RTCPeerConnection): void {
    this.pc = pc;
    this.previous = null;
    window.clearInterval(this.timer);
    this.timer = window.setInterval(() => {
      if (this.pc === pc) void this.report(pc, false);
    }, REPORT_INTERVAL_MS);
  }

  /** ICE failed: say so now (or as soon as the 5 s minimum allows). */
  failed(pc: RTCPeerConnection): void {
    if (this.done || this.pendingFailure !== undefined) return;
    const wait = Math.max(0, this.lastSent + MIN_INTERVAL_MS - Date.now());
    this.pendingFailure = window.setTimeout(() => {
      this.pendingFailure = undefined;
      void this.report(pc, false);
    }, wait);
  }

  /**
   * The call ended: one last report. Close `pc` only once this resolves: stats asked for
   * just before `close()` can come back without the candidate pair, and none come after it.
   * Resolves within `FINAL_WAIT_MS` even if the browser never answers.
   */
  finish(pc: RTCPeerConnection | null): Promise<void> {
    this.stop();
    if (this.done || !pc || pc.connectionState === "closed") return Promise.resolve();
    this.done = true;
    return Promise.race([this.report(pc, true), new Promise<void>((resolve) => window.setTimeout(resolve, FINAL_WAIT_MS))]);
  }

  stop(): void {
    window.clearInterval(this.timer);
    window.clearTimeout(this.pendingFailure);
    this.timer = this.pendingFailure = undefined;
  }

  private async report(pc: RTCPeerConnection, final: boolean): Promise<void> {
    if (this.done && !final) return;
    // The final report is the one allowed after the end; others keep to the minimum interval.
    if (!final && Date.now() - this.lastSent < MIN_INTERVAL_MS) return;
    // Read before waiting: the final report's connection is closed by the time stats arrive.
    const iceState = pc.iceConnectionState;
    let raw: RTCStatsReport;
    try {
      raw = await pc.getStats();
    } catch {
      return; // closed meanwhile
    }
    const stats = new Map<string, Stat>();
    raw.forEach((stat: Stat) => stats.set(stat.id, stat));
    const { report, counters } = summariseStats(stats, this.previous, { iceState, networkType: browserNetworkType() });
    if (pc === this.pc) this.previous = counters;
    const payload = payloadFor(report);
    if (payload === null) {
      console.debug("parley: no quality report yet (no candidate pair, RTT or media)", report);
      return;
    }
    if (!final && Date.now() - this.lastSent < MIN_INTERVAL_MS) return;
    this.lastSent = Date.now();
    this.send("call:stats", { callId: this.callId(), ...payload });
  }
}

/** `quality` on `Call` and `HistoryEntry`: the requesting user's side, judged by the server. */
export interface Quality {
  path: "direct" | "relay";
  relayProtocol: RelayProtocol | null;
  rttMs: number;
  lossPct: number;
  jitterMs: number;
  verdict: "good" | "fair" | "poor";
}

/** "relayed over TLS", "relayed", "direct". */
export function describePath(quality: Pick<Quality, "path" | "relayProtocol">): string {
  if (quality.path === "direct") return "direct";
  return quality.relayProtocol ? `relayed over ${quality.relayProtocol.toUpperCase()}` : "relayed";
}

/**
 * What hurt most, in a person's words: the figure furthest towards the server's "poor" limits
 * (5 % loss, 600 ms round trip, 75 ms jitter). The verdict itself is the server's.
 */
function worstFigure(quality: Quality): string {
  const loss = quality.lossPct / 5;
  const rtt = quality.rttMs / 600;
  const jitter = quality.jitterMs / 75;
  if (loss >= rtt && loss >= jitter) return `${formatNumber(quality.lossPct)}% loss`;
  if (rtt >= jitter) return `${Math.round(quality.rttMs)} ms delay`;
  return `${Math.round(quality.jitterMs)} ms jitter`;
}

function formatNumber(value: number): string {
  return value >= 10 || Number.isInteger(value) ? String(Math.round(value)) : value.toFixed(1);
}

/**
 * The history's line about how a call went: "Good connection, relayed over TLS, 42 ms round
 * trip", "Poor connection: 8% loss, direct, 120 ms round trip". Empty without a report.
 */
export function describeQuality(quality: Quality | null | undefined): string {
  if (!quality) return "";
  const verdict =
    quality.verdict === "good" ? "Good connection" : `${quality.verdict === "poor" ? "Poor" : "Fair"} connection: ${worstFigure(quality)}`;
  return `${verdict}, ${describePath(quality)}, ${Math.round(quality.rttMs)} ms round trip`;
}
