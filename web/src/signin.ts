// The sign-in screen: sign in or create an account, then hand over to the app.

import { ApiError } from "./api";
import { api, app, root, saveSession, setLoginScreen, views } from "./app";
import { openConnectionTest } from "./conntest";
import { clear, h } from "./dom";
import { icon } from "./icons";

export function renderLogin(message = ""): void {
  document.title = "Parley";
  clear(root);
  const username = h("input", { id: "username", name: "username", autocomplete: "username", required: true, autocapitalize: "none", spellcheck: "false" });
  const password = h("input", { id: "password", name: "password", type: "password", autocomplete: "current-password", required: true });
  const display = h("input", { id: "display-name", name: "displayName", autocomplete: "name" });
  const error = h("p", { class: "form-error", role: "alert" }, message);
  const signIn = h("button", { type: "submit", class: "primary" }, "Sign in");
  const create = h("button", { type: "button" }, "Create account");

  const submit = async (mode: "login" | "register") => {
    if (!username.value.trim() || !password.value) {
      error.textContent = "Enter a username and a password.";
      (username.value.trim() ? password : username).focus();
      return;
    }
    signIn.disabled = create.disabled = true;
    error.textContent = "";
    try {
      const reply =
        mode === "login"
          ? await api.login(username.value.trim(), password.value)
          : await api.register(username.value.trim(), password.value, display.value.trim() || undefined);
      saveSession(reply.token, reply.user);
      api.token = reply.token;
      app.me = reply.user;
      views.signedIn();
    } catch (caught) {
      const code = caught instanceof ApiError ? caught.code : "";
      error.textContent =
        code === "UNAUTHORIZED"
          ? "Wrong username or password."
          : code === "FORBIDDEN" && mode === "register"
            ? "Registration is closed on this server. Ask an administrator for an account."
            : code === "USERNAME_TAKEN"
              ? "That username is taken. Choose another one."
              : code === "RATE_LIMITED"
                ? "Too many attempts. Wait a minute and try again."
                : caught instanceof Error
                  ? caught.message
                  : "Sign-in failed.";
      signIn.disabled = create.disabled = false;
    }
  };

  const form = h(
    "form",
    {
      class: "login",
      onsubmit: (event: Event) => {
        event.preventDefault();
        void submit("login");
      },
    },
    h("h1", null, icon("logo"), "Parley"),
    h("label", { for: "username" }, "Username"),
    username,
    h("label", { for: "password" }, "Password"),
    password,
    h("details", null, h("summary", null, "New here?"),
      h("label", { for: "display-name" }, "Display name (optional)"),
      display,
      h("p", { class: "hint" }, "Fill in a username and password above, then choose Create account."),
    ),
    error,
    h("div", { class: "row" }, signIn, create),
    h("a", { class: "test-link", href: "#test-connection", onclick: (event: Event) => {
      event.preventDefault();
      openConnectionTest(null, event.currentTarget as HTMLElement);
    } }, "Test my connection"),
  );
  create.addEventListener("click", () => void submit("register"));
  root.append(h("main", { class: "login-page" }, form));
  username.focus();
}

setLoginScreen(renderLogin);
