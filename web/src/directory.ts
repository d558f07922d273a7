// The People panel: everyone with an account, live presence, and the call buttons.

import { ApiError } from "./api";
import { api, app, notify } from "./app";
import { callButtonName, displayName, shownPresence } from "./callstate";
import { clear, h } from "./dom";
import { icon } from "./icons";
import { sameId, type Id, type Media, type Presence } from "./types";

const STATUS_TEXT = { online: "Online", busy: "In a call", offline: "Offline", unknown: "Status unknown" } as const;

/** Set by main.ts: starts a call (incall.ts). */
export let startCall: (userId: Id, media: Media) => void = () => {};
export function onStartCall(run: (userId: Id, media: Media) => void): void {
  startCall = run;
}

export function peoplePanel(): HTMLElement {
  return h(
    "section",
    { id: "panel-people", class: "panel", role: "tabpanel", "aria-labelledby": "tab-people" },
    h("ul", { class: "people", id: "people", "aria-label": "People" }),
    h("p", { class: "empty", id: "people-empty", hidden: true }, "No one else has an account yet."),
  );
}

export function renderPeople(): void {
  const list = document.getElementById("people");
  if (!list) return;
  const others = [...app.people.values()]
    .filter((person) => !sameId(person.id, app.me?.id))
    .sort((a, b) => displayName(a).localeCompare(displayName(b)));
  // Rebuild only when the set of people changes; presence updates patch in place
  // so keyboard focus stays on the button the user is on.
  const ids = others.map((person) => `${person.id}:${displayName(person)}`).join(",");
  if (list.dataset.ids !== ids) {
    clear(list);
    list.dataset.ids = ids;
    for (const person of others) {
      const name = displayName(person);
      const button = (media: Media) =>
        h("button", { class: "call-button", "data-media": media, "aria-label": callButtonName(media, name), title: callButtonName(media, name), onclick: () => startCall(person.id, media) }, icon(media === "video" ? "video" : "phone"));
      list.append(
        h(
          "li",
          { class: "person", "data-user-id": person.id },
          h("span", { class: "avatar", "aria-hidden": "true" }, name.slice(0, 1).toUpperCase()),
          h(
            "span",
            { class: "who" },
            // Display names are free text: the username beside one tells two "Bob"s apart.
            h("span", { class: "name" }, name),
            person.displayName && person.displayName !== person.username ? h("span", { class: "username" }, `@${person.username}`) : null,
            h("span", { class: "status" }),
          ),
          button("audio"),
          button("video"),
        ),
      );
    }
  }
  for (const item of list.querySelectorAll<HTMLLIElement>("li.person")) {
    const person = app.people.get(item.dataset.userId ?? "");
    if (!person) continue;
    const shown = shownPresence(person.status, app.link);
    item.dataset.status = shown;
    const status = item.querySelector(".status");
    if (status && status.textContent !== STATUS_TEXT[shown]) status.textContent = STATUS_TEXT[shown] ?? person.status;
    for (const button of item.querySelectorAll<HTMLButtonElement>("button.call-button")) {
      button.disabled = shown === "offline" || shown === "unknown";
    }
  }
  const empty = document.getElementById("people-empty");
  if (empty) empty.hidden = others.length > 0;
}

export async function loadPeople(): Promise<void> {
  try {
    const { users } = await api.users();
    app.people.clear();
    for (const user of users) app.people.set(String(user.id), user);
    renderPeople();
  } catch (error) {
    if (error instanceof ApiError && error.status !== 401) notify(`Could not load people: ${error.message}`);
  }
}

export function applyPresence(changes: { userId: Id; status: Presence }[]): void {
  let unknown = false;
  for (const change of changes) {
    const person = app.people.get(String(change.userId));
    if (person) person.status = change.status;
    else unknown = true;
  }
  if (unknown) void loadPeople();
  else renderPeople();
}
