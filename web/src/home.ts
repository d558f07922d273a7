// The home screen: a tablist with People and History and their two panels.

import { api, app } from "./app";
import { openConnectionTest } from "./conntest";
import { peoplePanel, renderPeople } from "./directory";
import { h } from "./dom";
import { historyPanel, loadHistory, markMissedSeen, renderHistory } from "./history";
import { showUnseen } from "./alerts";
import { icon } from "./icons";

type Tab = "people" | "history";

export function buildHome(): HTMLElement {
  const tab = (id: Tab, label: string, ...extra: Node[]) =>
    h(
      "button",
      { class: "tab", role: "tab", id: `tab-${id}`, "aria-controls": `panel-${id}`, onclick: () => selectTab(id), onkeydown: (event: Event) => arrowKeys(event as KeyboardEvent) },
      icon(id),
      label,
      ...extra,
    );
  return h(
    "div",
    { class: "home" },
    h("h2", { class: "sr" }, "Home"),
    h("div", { class: "tabs", role: "tablist", "aria-label": "Sections" }, tab("people", "People"), tab("history", "History", h("span", { class: "badge", id: "missed-badge", hidden: true }))),
    peoplePanel(),
    historyPanel(),
    h("p", { class: "home-footer" }, h("a", { class: "test-link", href: "#test-connection", onclick: (event: Event) => {
      event.preventDefault();
      openConnectionTest(api.token, event.currentTarget as HTMLElement);
    } }, "Test my connection")),
  );
}

/** The home screen is in the page: show the current tab and fill the lists. */
export function homeShown(): void {
  applyTab();
  renderPeople();
  renderHistory();
  showUnseen();
  if (app.tab === "history") void loadHistory(false);
}

function applyTab(): void {
  for (const id of ["people", "history"] as const) {
    const panel = document.getElementById(`panel-${id}`);
    const tab = document.getElementById(`tab-${id}`);
    if (panel) panel.hidden = app.tab !== id;
    tab?.setAttribute("aria-selected", String(app.tab === id));
    // Roving tab stop: Tab reaches the selected tab, arrows move between tabs.
    tab?.setAttribute("tabindex", app.tab === id ? "0" : "-1");
  }
}

export function selectTab(next: Tab): void {
  app.tab = next;
  applyTab();
  if (next === "history") {
    void loadHistory(false);
    void markMissedSeen();
  }
}

function arrowKeys(event: KeyboardEvent): void {
  if (!["ArrowLeft", "ArrowRight", "Home", "End"].includes(event.key)) return;
  event.preventDefault();
  const next: Tab = event.key === "Home" ? "people" : event.key === "End" ? "history" : app.tab === "people" ? "history" : "people";
  selectTab(next);
  document.getElementById(`tab-${next}`)?.focus();
}
