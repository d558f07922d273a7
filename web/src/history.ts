// The History panel: the call log (all, or missed only), Call back on every row,
// delete with a few seconds to undo, and the unseen missed count (badge, title).

import { ApiError } from "./api";
import { api, app, notify, retract } from "./app";
import { showUnseen } from "./alerts";
import { describeEntry, displayName, formatDuration } from "./callstate";
import { startCall } from "./directory";
import { clear, formatTime, h } from "./dom";
import { icon } from "./icons";
import { describeQuality, type Quality } from "./stats";
import { sameId, type HistoryEntry } from "./types";

const PAGE = 20;
/** How long a deleted row can be brought back before the server forgets it. */
const UNDO_MS = 6000;

let entries: HistoryEntry[] = [];
let nextCursor: string | null = null;
let loaded = false;
let loading = 0;
let filter: "missed" | null = null;
const pendingDeletes = new Map<string, { entry: HistoryEntry; timer: number }>();
/** Calls whose quality report was waited for once already (see `awaitQuality`). */
const qualityAwaited = new Set<string>();
/** The final quality report follows the end by a moment (and may take up to the spec's 60 s). */
const QUALITY_RETRY_MS = 3000;

export function resetHistory(): void {
  flushDeletes();
  entries = [];
  nextCursor = null;
  loaded = false;
  filter = null;
}

export function historyPanel(): HTMLElement {
  const filterButton = (value: "missed" | null, label: string) =>
    h("button", { class: "filter", "data-filter": value ?? "all", "aria-pressed": String(filter === value), onclick: () => setFilter(value) }, label);
  return h(
    "section",
    { id: "panel-history", class: "panel", role: "tabpanel", "aria-labelledby": "tab-history" },
    h("div", { class: "filters", role: "group", "aria-label": "Show" }, filterButton(null, "All calls"), filterButton("missed", "Missed")),
    h("ul", { class: "history", id: "history", "aria-label": "Call history" }),
    h("p", { class: "empty", id: "history-empty", hidden: true }),
    h("button", { id: "load-more", hidden: true, onclick: () => void loadHistory(true) }, "Load more"),
  );
}

function setFilter(value: "missed" | null): void {
  if (filter === value) return;
  filter = value;
  for (const button of document.querySelectorAll<HTMLButtonElement>("#panel-history button.filter")) {
    button.setAttribute("aria-pressed", String(button.dataset.filter === (value ?? "all")));
  }
  entries = [];
  nextCursor = null;
  loaded = false;
  renderHistory();
  void loadHistory(false);
}

export function renderHistory(): void {
  const list = document.getElementById("history");
  if (!list) return;
  clear(list);
  for (const entry of entries) {
    if (pendingDeletes.has(String(entry.id))) continue;
    const outgoing = entry.direction === "outgoing";
    const media = entry.media === "video" ? "Video" : "Audio";
    const label = `${outgoing ? "Outgoing" : "Incoming"} ${media.toLowerCase()} call`;
    const name = displayName(entry.peer);
    list.append(
      h(
        "li",
        {
          class: `entry${entry.missed ? " missed" : ""}${entry.missed && !entry.seen ? " unseen" : ""}`,
          "data-call-id": entry.id,
          "data-status": entry.status,
          "data-direction": entry.direction,
          "data-duration": entry.durationSecs,
        },
        h("span", { class: "direction", title: label }, icon(outgoing ? "outgoing" : "incoming"), h("span", { class: "sr" }, label)),
        h(
          "span",
          { class: "who" },
          h("span", { class: "name" }, name),
          h(
            "span",
            { class: "meta" },
            h("span", { class: "media" }, icon(entry.media === "video" ? "video" : "phone"), media),
            " · ",
            h("span", { class: "outcome" }, describeEntry(entry)),
            entry.status === "completed" ? h("span", { class: "duration" }, ` · ${formatDuration(entry.durationSecs)}`) : null,
            entry.message ? h("span", { class: "message" }, ` · “${entry.message}”`) : null,
          ),
          qualityLine(entry),
        ),
        h("time", { datetime: entry.createdAt }, formatTime(entry.createdAt)),
        h("button", { class: "ghost call-back", "aria-label": `Call back ${name}`, title: `Call back ${name}`, disabled: app.link !== "connected", onclick: () => startCall(entry.peer.id, entry.media) }, icon(entry.media === "video" ? "video" : "phone")),
        h("button", { class: "ghost delete", "aria-label": `Delete call with ${name}`, title: "Delete", onclick: () => deleteEntry(entry) }, icon("trash")),
      ),
    );
  }
  const visible = list.childElementCount;
  const empty = document.getElementById("history-empty");
  if (empty) {
    empty.hidden = !loaded || visible > 0;
    empty.textContent = filter === "missed" ? "No missed calls." : "No calls yet.";
  }
  const more = document.getElementById("load-more");
  if (more) more.hidden = nextCursor === null;
}

/** How the media went for me, from the server's `quality` (words, with the verdict as a mark too). */
function qualityLine(entry: HistoryEntry & { quality?: Quality | null }): HTMLElement | null {
  const quality = entry.quality;
  if (!quality) return null;
  return h(
    "span",
    { class: "quality", "data-verdict": quality.verdict, "data-path": quality.path, "data-relay-protocol": quality.relayProtocol ?? "" },
    describeQuality(quality),
  );
}

export async function loadHistory(more: boolean): Promise<void> {
  if (more && !nextCursor) return;
  // A newer request wins: a filter change or a fresh call must not be overwritten by an older page.
  const ticket = ++loading;
  const wanted = filter;
  try {
    const page = await api.history(more ? nextCursor : null, PAGE, wanted);
    if (ticket !== loading || wanted !== filter) return;
    entries = more ? [...entries, ...page.items.filter((item) => !entries.some((old) => sameId(old.id, item.id)))] : page.items;
    nextCursor = page.nextCursor;
    loaded = true;
    renderHistory();
    if (!more) awaitQuality();
  } catch (error) {
    if (error instanceof ApiError && error.status !== 401) notify(`Could not load the call history: ${error.message}`);
  }
}

/**
 * A call that just ended is listed before its parties' final quality reports have landed
 * (they are sent as the call closes, the list is fetched at the same moment): look once more
 * shortly after, so the row gains its "Good connection, relayed over UDP…" line.
 */
function awaitQuality(): void {
  const fresh = entries.filter(
    (entry: HistoryEntry & { quality?: Quality | null }) =>
      entry.answeredAt && !entry.quality && entry.endedAt && Date.now() - Date.parse(entry.endedAt) < 60_000 && !qualityAwaited.has(String(entry.id)),
  );
  if (fresh.length === 0) return;
  for (const entry of fresh) qualityAwaited.add(String(entry.id));
  window.setTimeout(() => {
    if (loaded) void loadHistory(false);
  }, QUALITY_RETRY_MS);
}

export function historyLoaded(): boolean {
  return loaded;
}

function deleteEntry(entry: HistoryEntry): void {
  const key = String(entry.id);
  const timer = window.setTimeout(() => void commitDelete(key), UNDO_MS);
  pendingDeletes.set(key, { entry, timer });
  renderHistory();
  notify(`Call with ${displayName(entry.peer)} deleted.`, "info", { label: "Undo", run: () => undoDelete(key) }, `delete:${key}`);
  document.getElementById("tab-history")?.focus();
}

function undoDelete(key: string): void {
  const pending = pendingDeletes.get(key);
  if (!pending) return;
  window.clearTimeout(pending.timer);
  pendingDeletes.delete(key);
  renderHistory();
  document.querySelector<HTMLElement>(`li.entry[data-call-id="${CSS.escape(key)}"] button.delete`)?.focus();
}

async function commitDelete(key: string, keepalive = false): Promise<void> {
  const pending = pendingDeletes.get(key);
  if (!pending) return;
  window.clearTimeout(pending.timer);
  retract(`delete:${key}`);
  try {
    await api.deleteEntry(pending.entry.id, keepalive);
    entries = entries.filter((entry) => !sameId(entry.id, pending.entry.id));
  } catch (error) {
    if (error instanceof ApiError && error.status !== 401) notify(`Could not delete the entry: ${error.message}`);
  } finally {
    pendingDeletes.delete(key);
    renderHistory();
  }
}

/** Commits every deletion still waiting for its undo time (the page is going away, or signing out). */
export function flushDeletes(): void {
  for (const key of [...pendingDeletes.keys()]) void commitDelete(key, true);
}

export async function refreshMissed(): Promise<void> {
  try {
    app.unseen = (await api.missedCount()).unseen;
    showUnseen();
    if (app.unseen > 0 && app.tab === "history" && !document.hidden && document.getElementById("panel-history")) {
      await markMissedSeen();
    }
  } catch {
    // The badge is a convenience; the history itself still shows every missed call.
  }
}

export async function markMissedSeen(): Promise<void> {
  if (app.unseen === 0) return;
  try {
    await api.markMissedSeen();
    app.unseen = 0;
    showUnseen();
    entries = entries.map((entry) => ({ ...entry, seen: true }));
  } catch {
    // Try again the next time the history is opened.
  }
}

/** After a call ends: the history and the missed count changed on the server. */
export function afterCallChanged(): void {
  if (app.tab === "history" || loaded) void loadHistory(false);
  void refreshMissed();
}
