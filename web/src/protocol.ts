// The realtime half of the protocol (Socket.IO): connecting with the token and
// device id, the events the server sends, and requests with replies. No DOM:
// the page subscribes through `ServerEvents` (main.ts wires them).

import { io, type Socket } from "socket.io-client";
import type { Ack, Call, CallEnded, Id, Presence, Session } from "./types";

const ACK_TIMEOUT_MS = 10_000;

export interface ServerEvents {
  /** Connected (again) and registered: the server's `session` arrived, so this device can
   *  place and receive calls. The Socket.IO `connect` alone comes before the server has
   *  registered the device, and a call placed then is refused with `DEVICE_REQUIRED`. */
  connected(): void;
  /** Lost the server (network, restart); socket.io reconnects by itself. */
  disconnected(): void;
  /** The token is no longer valid: the only reason to sign out. */
  unauthorized(): void;
  /** The server closed this socket on purpose (revoked token, or taken over). */
  closedByServer(): void;
  session(data: Session): void;
  presence(changes: { userId: Id; status: Presence }[]): void;
  incoming(call: Call): void;
  accepted(call: Call): void;
  answeredElsewhere(callId: Id): void;
  ended(event: CallEnded): void;
  peerReconnecting(callId: Id): void;
  peerResumed(callId: Id): void;
  offer(callId: Id, sdp: string): void;
  answer(callId: Id, sdp: string): void;
  ice(callId: Id, candidate: RTCIceCandidateInit | null): void;
  mediaState(callId: Id, audio: boolean, video: boolean): void;
}

export class Connection {
  private socket: Socket;

  constructor(token: string, deviceId: string, events: ServerEvents) {
    const sock = io({ auth: { token, deviceId } });
    this.socket = sock;
    sock.on("connect_error", (error: Error & { data?: { code?: string } }) => {
      // The spec puts the code in `data.code`; the message carries the same word.
      if (error.data?.code === "UNAUTHORIZED" || error.message === "UNAUTHORIZED") events.unauthorized();
      else events.disconnected();
    });
    sock.on("disconnect", (reason) => {
      events.disconnected();
      if (reason === "io server disconnect") events.closedByServer();
    });
    sock.on("session", (data: Session) => {
      events.connected();
      events.session(data);
    });
    sock.on("presence:update", (data: { changes?: { userId: Id; status: Presence }[] }) => events.presence(data?.changes ?? []));
    sock.on("call:incoming", (data: { call: Call }) => events.incoming(data.call));
    sock.on("call:accepted", (data: { call: Call }) => events.accepted(data.call));
    sock.on("call:answered-elsewhere", (data: { callId: Id }) => events.answeredElsewhere(data.callId));
    sock.on("call:ended", (data: CallEnded) => events.ended(data));
    sock.on("call:peer-reconnecting", (data: { callId: Id }) => events.peerReconnecting(data.callId));
    sock.on("call:peer-resumed", (data: { callId: Id }) => events.peerResumed(data.callId));
    sock.on("signal:offer", (data: { callId: Id; sdp: unknown }) => {
      if (typeof data.sdp === "string") events.offer(data.callId, data.sdp);
    });
    sock.on("signal:answer", (data: { callId: Id; sdp: unknown }) => {
      if (typeof data.sdp === "string") events.answer(data.callId, data.sdp);
    });
    sock.on("signal:ice", (data: { callId: Id; candidate: RTCIceCandidateInit | null }) => events.ice(data.callId, data.candidate));
    sock.on("media:state", (data: { callId: Id; audio: unknown; video: unknown }) =>
      events.mediaState(data.callId, data.audio !== false, data.video === true),
    );
    sock.on("call:error", (error: { event: string; code: string; message: string }) => {
      // Signaling is sent without replies; a late candidate after the call ended is not worth a notice.
      console.warn("parley: server refused", error.event, error.code, error.message);
    });
  }

  get connected(): boolean {
    return this.socket.connected;
  }

  /** Connects again after the server closed the socket on purpose (the token is still good). */
  reconnect(): void {
    this.socket.connect();
  }

  close(): void {
    this.socket.removeAllListeners();
    this.socket.disconnect();
  }

  /** A request with a reply; never rejects (a missing connection or reply is an error reply). */
  request<T>(event: string, payload: Record<string, unknown>): Promise<Ack<T>> {
    if (!this.socket.connected) {
      return Promise.resolve({ ok: false, error: { code: "DISCONNECTED", message: "Not connected to the server." } });
    }
    return this.socket
      .timeout(ACK_TIMEOUT_MS)
      .emitWithAck(event, payload)
      .catch(() => ({ ok: false as const, error: { code: "TIMEOUT", message: "The server did not answer in time." } }));
  }

  /** Fire and forget (signaling). */
  send(event: string, payload: Record<string, unknown>): void {
    this.socket.emit(event, payload);
  }
}
