// One call's media and WebRTC state. The server owns the call lifecycle; this
// class only owns the peer connection, the local devices and what the UI shows.

import { StatsReporter } from "./stats";
import { sameId, type Call, type Id, type IceServer, type Media, type User } from "./types";

/** `starting`: the caller clicked and the camera is opening; the server knows nothing yet. */
export type Phase = "starting" | "outgoing" | "incoming" | "active" | "ended";
export type Link = "connecting" | "connected" | "poor" | "reconnecting";

export interface CallEnvironment {
  me: User;
  /** Read at each new connection: TURN credentials expire and are refreshed. */
  ice(): { iceServers: IceServer[]; iceTransportPolicy: RTCIceTransportPolicy };
  /** Sends a signaling event without waiting for the reply. */
  send(event: string, payload: Record<string, unknown>): void;
  /** Called after any change the UI shows. */
  changed(): void;
}

export interface DevicePreference {
  audioInput: string;
  videoInput: string;
  /** Speaker (setSinkId); "" is the system default. */
  audioOutput: string;
}

/** A getUserMedia failure turned into words for the user. */
export class MediaError extends Error {}

export function describeMediaError(error: unknown, wantVideo: boolean): string {
  const name = error instanceof DOMException ? error.name : "";
  switch (name) {
    case "NotAllowedError":
    case "SecurityError":
      return "Camera or microphone permission was denied. Allow access in your browser's site settings and try again.";
    case "NotFoundError":
    case "OverconstrainedError":
      return wantVideo
        ? "No camera or microphone was found. Connect one, or make an audio call."
        : "No microphone was found. Connect one and try again.";
    case "NotReadableError":
    case "AbortError":
      return "Your camera or microphone is in use by another application.";
    default:
      return window.isSecureContext
        ? "Could not start your camera or microphone."
        : "Calls need a secure (https) connection to use the camera and microphone.";
  }
}

export async function openMedia(wantVideo: boolean, devices: DevicePreference): Promise<MediaStream> {
  if (!navigator.mediaDevices?.getUserMedia) {
    throw new MediaError(describeMediaError(null, wantVideo));
  }
  const audio: MediaTrackConstraints | boolean = devices.audioInput
    ? { deviceId: { ideal: devices.audioInput } }
    : true;
  const video: MediaTrackConstraints | boolean = wantVideo
    ? {
        ...(devices.videoInput ? { deviceId: { ideal: devices.videoInput } } : {}),
        width: { ideal: 640 },
        height: { ideal: 480 },
      }
    : false;
  try {
    return await navigator.mediaDevices.getUserMedia({ audio, video });
  } catch (error) {
    throw new MediaError(describeMediaError(error, wantVideo));
  }
}

let sessions = 0;

/** How long after this page got its call back from the server a `call:peer-resumed` counts as the same server restart. */
const SERVER_GAP_MS = 60_000;

/** The DTLS certificate fingerprint of a description: a new one means a new peer connection. */
function fingerprint(sdp: string): string {
  return /^a=fingerprint:(.+)$/m.exec(sdp)?.[1]?.trim() ?? "";
}

export class CallSession {
  /** Unique per session on this page (a starting call has no server id yet). */
  readonly key = ++sessions;
  readonly role: "caller" | "callee";
  readonly peer: User;
  phase: Phase;
  media: Media;
  local: MediaStream | null = null;
  remote = new MediaStream();
  pc: RTCPeerConnection | null = null;

  micOn = true;
  cameraOn = false;
  /** The outgoing video is the shared screen (the camera, if on, waits underneath). */
  sharing = false;
  private screenTrack: MediaStreamTrack | null = null;
  peerMicOn = true;
  peerCameraOn: boolean;
  link: Link = "connecting";
  route: "direct" | "relay" | null = null;
  /** Set when the other side's device dropped and the server is holding the call for it. */
  peerReconnecting = false;
  answeredAt: number | null = null;
  /** When this page last got the call back after losing the server (see resumeAfterServerGap). */
  private serverGapAt: number | null = null;

  // Perfect negotiation (https://w3c.github.io/webrtc-pc/#perfect-negotiation-example):
  // the callee is the polite peer and yields on glare.
  private makingOffer = false;
  private ignoreOffer = false;
  /** The callee never offers before the caller's first offer: the spec has the caller go first. */
  private awaitingFirstOffer = false;
  private pendingCandidates: RTCIceCandidateInit[] = [];
  /**
   * Signaling messages are applied strictly in arrival order, and not before
   * there is a peer connection: after a reload the caller's new offer can
   * arrive while this page is still opening the camera.
   */
  private queue: Promise<void>;
  private connectionReady: () => void = () => {};
  private statsTimer: number | undefined;
  private disconnectedSince: number | null = null;
  private lastPackets: { received: number; lost: number } | null = null;
  /** Sends `call:stats` for the server's call log (stats.ts). */
  private reporter = new StatsReporter(() => this.id, (event, payload) => this.env.send(event, payload));

  constructor(
    public call: Call,
    private env: CallEnvironment,
    phase: Phase,
  ) {
    this.role = sameId(call.caller.id, env.me.id) ? "caller" : "callee";
    this.peer = this.role === "caller" ? call.callee : call.caller;
    this.phase = phase;
    this.media = call.media;
    this.peerCameraOn = call.media === "video";
    if (call.answeredAt) this.answeredAt = Date.parse(call.answeredAt);
    this.queue = new Promise((resolve) => (this.connectionReady = resolve));
  }

  get id(): Id {
    return this.call.id;
  }

  /** True if a server event with this call id is about this call. */
  is(callId: Id | null | undefined): boolean {
    return sameId(this.call.id, callId);
  }

  /** Takes ownership of the local stream (its tracks are stopped when the call ends). */
  attachLocal(stream: MediaStream): void {
    this.local = stream;
    this.cameraOn = stream.getVideoTracks().length > 0;
    this.micOn = true;
  }

  /** Starts media: called when the call becomes active, and again to rebuild after a resume. */
  startPeerConnection(): void {
    this.closePeerConnection();
    this.phase = "active";
    this.link = "connecting";
    this.route = null;
    this.lastPackets = null;
    this.disconnectedSince = null;
    if (this.answeredAt === null) this.answeredAt = Date.now();
    const pc = new RTCPeerConnection(this.env.ice());
    this.pc = pc;
    this.reporter.watch(pc);
    this.makingOffer = false;
    this.ignoreOffer = false;
    this.pendingCandidates = [];
    this.awaitingFirstOffer = this.role === "callee";

    pc.onnegotiationneeded = async () => {
      if (this.awaitingFirstOffer || pc !== this.pc) return;
      try {
        this.makingOffer = true;
        await pc.setLocalDescription();
        if (pc !== this.pc || !pc.localDescription) return;
        this.env.send("signal:offer", { callId: this.id, sdp: pc.localDescription.sdp });
      } catch (error) {
        console.warn("parley: making an offer failed", error);
      } finally {
        this.makingOffer = false;
      }
    };
    pc.onicecandidate = ({ candidate }) => {
      if (pc !== this.pc) return;
      this.env.send("signal:ice", { callId: this.id, candidate: candidate ? candidate.toJSON() : null });
    };
    pc.ontrack = ({ track }) => {
      if (pc !== this.pc) return;
      for (const old of this.remote.getTracks()) {
        if (old.kind === track.kind && old !== track) this.remote.removeTrack(old);
      }
      if (!this.remote.getTracks().includes(track)) this.remote.addTrack(track);
      track.onunmute = () => this.env.changed();
      this.env.changed();
    };
    pc.onconnectionstatechange = () => this.onConnectionState(pc);

    const stream = this.local ?? new MediaStream();
    for (const track of stream.getTracks()) {
      // While sharing, the screen goes out in the camera's place (also after a resume).
      if (track.kind === "video" && this.screenTrack) continue;
      pc.addTrack(track, stream);
    }
    if (this.screenTrack) pc.addTrack(this.screenTrack, stream);
    // The caller of an audio call still offers a video slot, so that either side
    // can turn its camera on later (the upgrade to video) by filling that slot.
    // The callee adds nothing of its own: the slots come from the caller's offer.
    if (this.role === "caller" && !this.local?.getVideoTracks().length && !this.screenTrack) {
      pc.addTransceiver("video", { direction: "sendrecv" });
    }

    this.statsTimer = window.setInterval(() => void this.sampleStats(), 1000);
    this.connectionReady();
    this.env.changed();
    this.sendMediaState();
  }

  private onConnectionState(pc: RTCPeerConnection): void {
    if (pc !== this.pc) return;
    switch (pc.connectionState) {
      case "connected":
        this.disconnectedSince = null;
        if (this.link !== "poor") this.link = "connected";
        break;
      case "disconnected":
        this.link = "reconnecting";
        this.disconnectedSince = Date.now();
        break;
      case "failed":
        // The path died (network change, relay restart): gather new candidates.
        this.link = "reconnecting";
        this.reporter.failed(pc);
        pc.restartIce();
        break;
      default:
        break;
    }
    this.env.changed();
  }

  handleDescription(type: "offer" | "answer", sdp: string): void {
    this.enqueue(async () => {
      let pc = this.pc;
      if (!pc) return;
      const current = pc.remoteDescription?.sdp;
      if (type === "offer" && current && fingerprint(current) !== fingerprint(sdp)) {
        // A new certificate: the other side started a new connection (a reloaded
        // page), which ours cannot continue. Start afresh and answer on it.
        this.startPeerConnection();
        pc = this.pc;
        if (!pc) return;
      }
      const offerCollision = type === "offer" && (this.makingOffer || pc.signalingState !== "stable");
      this.ignoreOffer = this.role === "caller" && offerCollision;
      if (this.ignoreOffer) return;
      if (type === "answer" && pc.signalingState !== "have-local-offer") return; // a stale answer
      await pc.setRemoteDescription({ type, sdp }); // the polite side rolls back implicitly
      const queued = this.pendingCandidates;
      this.pendingCandidates = [];
      for (const candidate of queued) await this.addCandidate(pc, candidate);
      if (type === "offer") {
        this.awaitingFirstOffer = false;
        await pc.setLocalDescription();
        if (pc === this.pc && pc.localDescription) {
          this.env.send("signal:answer", { callId: this.id, sdp: pc.localDescription.sdp });
        }
      }
    });
  }

  handleCandidate(candidate: RTCIceCandidateInit | null): void {
    this.enqueue(async () => {
      const pc = this.pc;
      if (!pc || !candidate) return;
      // Trickled candidates can overtake the description they belong to.
      if (!pc.remoteDescription) {
        this.pendingCandidates.push(candidate);
        return;
      }
      await this.addCandidate(pc, candidate);
    });
  }

  private async addCandidate(pc: RTCPeerConnection, candidate: RTCIceCandidateInit): Promise<void> {
    try {
      await pc.addIceCandidate(candidate);
    } catch (error) {
      // Candidates of an offer we ignored, or of a connection replaced by a resume, cannot apply.
      if (!this.ignoreOffer) console.debug("parley: dropped an ICE candidate", error);
    }
  }

  private enqueue(task: () => Promise<void>): void {
    this.queue = this.queue.then(task).catch((error) => {
      console.warn("parley: signaling step failed", error);
    });
  }

  /** New TURN credentials: an ICE restart later in a long call needs them. */
  updateIceServers(): void {
    try {
      this.pc?.setConfiguration(this.env.ice());
    } catch (error) {
      console.warn("parley: could not update the ICE servers", error);
    }
  }

  handlePeerMedia(audio: boolean, video: boolean): void {
    this.peerMicOn = audio;
    this.peerCameraOn = video;
    this.env.changed();
  }

  handlePeerReconnecting(): void {
    this.peerReconnecting = true;
    this.link = "reconnecting";
    this.env.changed();
  }

  /**
   * The other device came back. After a server restart (this device lost the
   * server too, moments ago) both pages kept their connections: keep ours, and
   * the caller restarts ICE unless a direct path still works. Otherwise the other
   * device may be a fresh page with a fresh peer connection: the caller starts a
   * new connection and offers again; the callee keeps its own until that offer
   * shows a new connection (`handleDescription`), so a page that kept its
   * connection through a blip of its own is not disturbed.
   */
  handlePeerResumed(): void {
    this.peerReconnecting = false;
    if (this.phase === "active") {
      const serverRestart = this.serverGapAt !== null && Date.now() - this.serverGapAt < SERVER_GAP_MS;
      if (serverRestart) {
        this.serverGapAt = null;
        this.restartIceUnlessDirect();
      } else if (this.role === "caller" || !this.pc) {
        this.startPeerConnection();
      }
    }
    this.env.changed();
  }

  /**
   * This page lost the server and its `session` gave the call back (a server
   * restart, or its own network): media never went through the server, so the
   * peer connection stays. The new `session` brought fresh TURN credentials, and
   * the relay's allocations may have died with the old server process: the caller
   * restarts ICE with them unless a direct path is still working.
   */
  resumeAfterServerGap(): void {
    this.serverGapAt = Date.now();
    if (!this.pc) {
      this.startPeerConnection();
      return;
    }
    this.updateIceServers();
    this.restartIceUnlessDirect();
  }

  private restartIceUnlessDirect(): void {
    this.enqueue(async () => {
      const pc = this.pc;
      if (this.role !== "caller" || !pc) return;
      const connected = pc.iceConnectionState === "connected" || pc.iceConnectionState === "completed";
      if (connected && this.route === "direct") return;
      // An offer sent while the other side was still away got no answer: take it back.
      if (pc.signalingState === "have-local-offer") await pc.setLocalDescription({ type: "rollback" });
      this.link = "reconnecting";
      pc.restartIce();
    });
  }

  toggleMic(): void {
    this.micOn = !this.micOn;
    for (const track of this.local?.getAudioTracks() ?? []) track.enabled = this.micOn;
    this.sendMediaState();
    this.env.changed();
  }

  /**
   * Camera off releases the camera (its light goes out); camera on opens it again.
   * In an audio call this is the upgrade to video.
   */
  async toggleCamera(devices: DevicePreference): Promise<void> {
    if (this.cameraOn) {
      for (const track of this.local?.getVideoTracks() ?? []) {
        track.stop();
        this.local?.removeTrack(track);
      }
      if (!this.sharing) await this.videoSender()?.replaceTrack(null);
      this.cameraOn = false;
    } else {
      const stream = await openMedia(true, devices).catch((error: unknown) => {
        if (error instanceof MediaError) throw error;
        throw new MediaError(describeMediaError(error, true));
      });
      for (const track of stream.getAudioTracks()) track.stop();
      const track = stream.getVideoTracks()[0];
      if (!track) throw new MediaError("No camera was found.");
      if (this.phase === "ended") {
        track.stop();
        return;
      }
      this.local ??= new MediaStream();
      this.local.addTrack(track);
      // A slot created by the caller's offer starts receive-only; sending needs a renegotiation.
      if (!this.sharing) await this.sendVideo(track);
      this.cameraOn = true;
      this.media = "video";
    }
    this.sendMediaState();
    this.env.changed();
  }

  /**
   * Shares the screen in place of the camera: the display track replaces the
   * outgoing video (filling the video slot of an audio call), so the other side's
   * video simply becomes the screen. Ends by `stopSharing` or the browser's own
   * "Stop sharing" bar.
   */
  async startSharing(): Promise<void> {
    if (this.sharing || this.phase !== "active") return;
    if (!navigator.mediaDevices?.getDisplayMedia) throw new MediaError("This browser cannot share the screen.");
    let stream: MediaStream;
    try {
      stream = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
    } catch (error) {
      const name = error instanceof DOMException ? error.name : "";
      if (error instanceof Error && /permissions policy/i.test(error.message)) {
        throw new MediaError("Screen sharing is turned off for this site by the server's Permissions-Policy.");
      }
      if (name === "NotAllowedError" || name === "AbortError") return; // the person chose not to share
      throw new MediaError("Could not share the screen.");
    }
    const track = stream.getVideoTracks()[0];
    if (!track || this.phase !== "active") {
      for (const t of stream.getTracks()) t.stop();
      return;
    }
    track.contentHint = "detail";
    track.addEventListener("ended", () => void this.stopSharing());
    this.screenTrack = track;
    this.sharing = true;
    await this.sendVideo(track);
    this.sendMediaState();
    this.env.changed();
  }

  async stopSharing(): Promise<void> {
    const track = this.screenTrack;
    if (!track) return;
    this.screenTrack = null;
    this.sharing = false;
    track.stop();
    if (this.phase === "active") {
      await this.sendVideo(this.local?.getVideoTracks()[0] ?? null);
      this.sendMediaState();
    }
    this.env.changed();
  }

  /** Puts `track` on the video sender (or clears it), renegotiating only when a slot must start sending. */
  private async sendVideo(track: MediaStreamTrack | null): Promise<void> {
    const sender = this.videoSender();
    if (sender) {
      await sender.replaceTrack(track);
      const transceiver = this.pc?.getTransceivers().find((t) => t.sender === sender);
      if (track && transceiver && transceiver.direction !== "sendrecv") transceiver.direction = "sendrecv";
    } else if (track && this.pc) {
      this.pc.addTrack(track, this.local ?? new MediaStream([track]));
    }
  }

  /** Switches the microphone or camera during a call without renegotiating. */
  async switchDevice(kind: "audio" | "video", devices: DevicePreference): Promise<void> {
    if (!this.local || (kind === "video" && !this.cameraOn)) return;
    const constraints: MediaStreamConstraints =
      kind === "audio"
        ? { audio: { deviceId: { exact: devices.audioInput } } }
        : { video: { deviceId: { exact: devices.videoInput }, width: { ideal: 640 }, height: { ideal: 480 } } };
    const stream = await navigator.mediaDevices.getUserMedia(constraints);
    const track = stream.getTracks()[0];
    if (!track) return;
    const old = kind === "audio" ? this.local.getAudioTracks() : this.local.getVideoTracks();
    for (const oldTrack of old) {
      oldTrack.stop();
      this.local.removeTrack(oldTrack);
    }
    if (kind === "audio") track.enabled = this.micOn;
    this.local.addTrack(track);
    if (kind === "video" && this.sharing) return this.env.changed(); // the screen stays on the sender
    const sender = kind === "video" ? this.videoSender() : this.pc?.getSenders().find((s) => s.track?.kind === "audio");
    await sender?.replaceTrack(track);
    this.env.changed();
  }

  private videoSender(): RTCRtpSender | undefined {
    const pc = this.pc;
    if (!pc) return undefined;
    return pc
      .getTransceivers()
      .find((t) => t.direction !== "stopped" && (t.sender.track?.kind === "video" || t.receiver.track.kind === "video"))?.sender;
  }

  sendMediaState(): void {
    if (this.phase !== "active") return;
    this.env.send("media:state", { callId: this.id, audio: this.micOn, video: this.cameraOn || this.sharing });
  }

  /** Reads the selected candidate pair and loss so the UI can say how the call is doing. */
  private async sampleStats(): Promise<void> {
    const pc = this.pc;
    if (!pc || pc.connectionState === "closed") return;
    if (this.disconnectedSince !== null && Date.now() - this.disconnectedSince > 5000) {
      // "disconnected" often heals by itself; after 5 s, stop waiting and restart ICE.
      this.disconnectedSince = null;
      pc.restartIce();
    }
    let report: RTCStatsReport;
    try {
      report = await pc.getStats();
    } catch {
      return;
    }
    let pairId: string | undefined;
    let received = 0;
    let lost = 0;
    let rtt: number | undefined;
    report.forEach((stat) => {
      if (stat.type === "transport" && stat.selectedCandidatePairId) pairId = stat.selectedCandidatePairId;
      if (stat.type === "inbound-rtp") {
        received += stat.packetsReceived ?? 0;
        lost += Math.max(0, stat.packetsLost ?? 0);
      }
    });
    let route: "direct" | "relay" | null = null;
    if (pairId) {
      const pair = report.get(pairId);
      rtt = pair?.currentRoundTripTime;
      const localCandidate = pair ? report.get(pair.localCandidateId) : undefined;
      const remoteCandidate = pair ? report.get(pair.remoteCandidateId) : undefined;
      if (localCandidate) {
        route =
          localCandidate.candidateType === "relay" || remoteCandidate?.candidateType === "relay"
            ? "relay"
            : "direct";
      }
    }
    let lossRatio = 0;
    if (this.lastPackets) {
      const newReceived = received - this.lastPackets.received;
      const newLost = lost - this.lastPackets.lost;
      if (newReceived + newLost > 0) lossRatio = newLost / (newReceived + newLost);
    }
    this.lastPackets = { received, lost };
    if (pc !== this.pc) return;
    this.route = route;
    if (pc.connectionState === "connected") {
      const poor = lossRatio > 0.08 || (rtt !== undefined && rtt > 0.5);
      this.link = poor ? "poor" : "connected";
    }
    this.env.changed();
  }

  /** `finalReport`: the call ended; the connection closes once its last stats are read. */
  private closePeerConnection(finalReport = false): void {
    if (this.statsTimer !== undefined) window.clearInterval(this.statsTimer);
    this.statsTimer = undefined;
    if (this.pc) {
      const pc = this.pc;
      pc.onnegotiationneeded = null;
      pc.onicecandidate = null;
      pc.ontrack = null;
      pc.onconnectionstatechange = null;
      if (finalReport) void this.reporter.finish(pc).finally(() => pc.close());
      else pc.close();
      this.pc = null;
    }
    for (const track of this.remote.getTracks()) this.remote.removeTrack(track);
  }

  /** Releases everything: the peer connection, the camera and the microphone. */
  dispose(): void {
    this.phase = "ended";
    this.connectionReady(); // lets queued signaling drain (and be dropped)
    this.closePeerConnection(true);
    for (const track of this.local?.getTracks() ?? []) track.stop();
    this.local = null;
    this.screenTrack?.stop();
    this.screenTrack = null;
    this.sharing = false;
  }
}
