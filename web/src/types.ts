// Shapes from the protocol spec (version 1). Only what the client reads is typed.

export type Presence = "online" | "busy" | "offline";
export type Media = "audio" | "video";

/** The spec leaves the type open; this server sends numbers. Compare with `sameId`. */
export type Id = string | number;

export function sameId(a: Id | null | undefined, b: Id | null | undefined): boolean {
  return a !== null && a !== undefined && b !== null && b !== undefined && String(a) === String(b);
}

export interface User {
  id: Id;
  username: string;
  displayName: string;
}

export interface DirectoryUser extends User {
  status: Presence;
}

export interface Call {
  id: Id;
  caller: User;
  callee: User;
  media: Media;
  state: "ringing" | "active" | "ended";
  status: string | null;
  reason: string | null;
  createdAt: string;
  answeredAt: string | null;
  endedAt: string | null;
  durationSecs: number;
}

export interface HistoryEntry {
  id: Id;
  peer: User;
  direction: "incoming" | "outgoing";
  media: Media;
  status: string;
  reason: string;
  missed: boolean;
  seen: boolean;
  message?: string | null;
  createdAt: string;
  answeredAt: string | null;
  endedAt: string | null;
  durationSecs: number;
}

export interface IceServer {
  urls: string | string[];
  username?: string;
  credential?: string;
}

export interface Session {
  user: User;
  deviceId: string;
  iceServers: IceServer[];
  iceTransportPolicy: RTCIceTransportPolicy;
  ttlSecs: number;
  activeCall: Call | null;
}

export interface CallEnded {
  callId: Id;
  status: string;
  reason: string;
  endedBy: Id | null;
  durationSecs: number;
  message?: string | null;
}

export interface ErrorBody {
  code: string;
  message: string;
}

export type Ack<T> = ({ ok: true } & T) | { ok: false; error: ErrorBody };
