// HTTP half of the protocol: JSON under /api/v1 with a Bearer token.

import type { DirectoryUser, ErrorBody, HistoryEntry, IceServer, Id, User } from "./types";

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export interface AuthReply {
  token: string;
  expiresAt: string;
  user: User;
}

export class Api {
  token: string | null = null;
  /** Called when the server says our token is no longer valid. */
  onUnauthorized: () => void = () => {};

  private async request<T>(method: string, path: string, body?: unknown, keepalive = false): Promise<T> {
    const headers: Record<string, string> = {};
    if (this.token) headers["Authorization"] = `Bearer ${this.token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response: Response;
    try {
      response = await fetch(`/api/v1${path}`, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        keepalive,
      });
    } catch {
      throw new ApiError(0, "NETWORK", "Cannot reach the server. Check your connection.");
    }
    if (response.status === 204) return undefined as T;
    let data: unknown = null;
    try {
      data = await response.json();
    } catch {
      // A proxy error page or an empty body: fall through to the status check.
    }
    if (!response.ok) {
      const error = (data as { error?: ErrorBody } | null)?.error;
      const apiError = new ApiError(
        response.status,
        error?.code ?? "INTERNAL",
        error?.message ?? `The server answered ${response.status}.`,
      );
      // Wrong credentials on login are UNAUTHORIZED too, but they are not an expired session.
      if (response.status === 401 && this.token && !path.startsWith("/auth/")) {
        this.onUnauthorized();
      }
      throw apiError;
    }
    return data as T;
  }

  login(username: string, password: string): Promise<AuthReply> {
    return this.request("POST", "/auth/login", { username, password });
  }

  register(username: string, password: string, displayName?: string): Promise<AuthReply> {
    const body: Record<string, string> = { username, password };
    if (displayName) body.displayName = displayName;
    return this.request("POST", "/auth/register", body);
  }

  logout(): Promise<void> {
    return this.request("POST", "/auth/logout");
  }

  me(): Promise<{ user: User }> {
    return this.request("GET", "/me");
  }

  users(): Promise<{ users: DirectoryUser[] }> {
    return this.request("GET", "/users");
  }

  iceServers(): Promise<{ iceServers: IceServer[]; iceTransportPolicy: RTCIceTransportPolicy; ttlSecs: number }> {
    return this.request("GET", "/ice-servers");
  }

  history(before: string | null, limit = 20, filter: "missed" | null = null): Promise<{ items: HistoryEntry[]; nextCursor: string | null }> {
    const query = new URLSearchParams({ limit: String(limit) });
    if (before) query.set("before", before);
    if (filter) query.set("filter", filter);
    return this.request("GET", `/calls?${query}`);
  }

  missedCount(): Promise<{ unseen: number }> {
    return this.request("GET", "/calls/missed/count");
  }

  markMissedSeen(): Promise<void> {
    return this.request("POST", "/calls/missed/seen");
  }

  /** `keepalive`: the request outlives the page (a deletion committed as the tab closes). */
  deleteEntry(id: Id, keepalive = false): Promise<void> {
    return this.request("DELETE", `/calls/${encodeURIComponent(String(id))}`, undefined, keepalive);
  }
}
