// The "Test my connection" screen (a dialog, reachable signed out and signed in): in about
// 10 s it checks the microphone and camera, then reaches this server's relay over UDP, TCP
// and TLS, and says in plain words what that means for calls. "Send to administrator" puts
// the result in the server's log. The workings live in netprobe.ts.

import { h } from "./dom";
import {
  TRANSPORTS, checkMedia, probeAll, sendDiagnostics, testIceServers, verdict, TestError,
  type MediaCheck, type ProbeResult, type Results, type Transport,
} from "./netprobe";

const LABELS: Record<Transport, string> = { udp: "Relay over UDP", tcp: "Relay over TCP", tls: "Relay over TLS" };

function resultText(result: ProbeResult): string {
  return result.ok ? `works, ${result.rttMs} ms round trip` : `does not work: ${result.error}`;
}

/**
 * Opens the test. `token` is the signed-in user's (or null): the server then knows who sent
 * a result. `returnFocus` is where focus goes when the dialog closes.
 */
export function openConnectionTest(token: string | null, returnFocus?: HTMLElement | null): void {
  const status = h("p", { class: "test-status", role: "status" }, "Checks your microphone and camera, then this server's relay over UDP, TCP and TLS. Takes about 10 seconds.");
  const rows = h("dl", { class: "test-results", hidden: true });
  const summary = h("p", { class: "test-verdict", id: "test-verdict", hidden: true });
  const start = h("button", { type: "button", class: "primary", id: "test-start" }, "Start the test");
  const send = h("button", { type: "button", id: "test-send", hidden: true }, "Send to administrator");
  const close = h("button", { type: "button", onclick: () => dialog.close() }, "Close");
  const dialog = h(
    "dialog",
    { class: "conntest", "aria-labelledby": "conntest-title", "aria-describedby": "test-verdict" },
    h("h2", { id: "conntest-title" }, "Test my connection"),
    status,
    rows,
    summary,
    h("div", { class: "row" }, close, send, start),
  );

  let outcome: { summary: string; results: Results; media: MediaCheck } | null = null;
  let running = false;

  const row = (label: string, text: string, ok: boolean) => [
    h("dt", null, label),
    h("dd", { "data-ok": String(ok) }, h("span", { class: "sr" }, ok ? "Passed: " : "Failed: "), text),
  ];

  const run = async () => {
    if (running) return;
    running = true;
    outcome = null;
    start.disabled = true;
    send.hidden = true;
    summary.hidden = true;
    rows.hidden = true;
    rows.replaceChildren();
    try {
      status.textContent = "Checking your microphone and camera…";
      const media = await checkMedia();
      status.textContent = "Connecting to the relay over UDP, then TCP, then TLS…";
      const ice = await testIceServers(token);
      const results = await probeAll(ice.iceServers);
      if (!dialog.open) return;
      rows.append(
        ...row("Microphone", media.microphone ? "works" : "could not be opened", media.microphone),
        ...row("Camera", media.camera ? "works" : "could not be opened", media.camera),
        ...TRANSPORTS.flatMap((transport) => row(LABELS[transport], resultText(results[transport]), results[transport].ok)),
      );
      rows.hidden = false;
      const words = verdict(results, media);
      summary.textContent = words;
      summary.dataset.works = String(TRANSPORTS.some((transport) => results[transport].ok));
      summary.hidden = false;
      status.textContent = "Test finished.";
      outcome = { summary: words, results, media };
      send.hidden = false;
      send.disabled = false;
      send.textContent = "Send to administrator";
    } catch (error) {
      status.textContent = `The test could not run: ${error instanceof Error ? error.message : String(error)}`;
    } finally {
      running = false;
      start.disabled = false;
      start.textContent = "Test again";
    }
  };

  start.addEventListener("click", () => void run());
  send.addEventListener("click", async () => {
    if (!outcome) return;
    send.disabled = true;
    try {
      await sendDiagnostics(token, outcome.summary, outcome.results, outcome.media);
      status.textContent = "Sent. Your administrator can find this result in the server's log.";
      send.textContent = "Sent";
    } catch (error) {
      status.textContent = `Could not send the result: ${error instanceof TestError || error instanceof Error ? error.message : String(error)}`;
      send.disabled = false;
    }
  });
  dialog.addEventListener("close", () => {
    dialog.remove();
    returnFocus?.focus();
  });
  document.body.append(dialog);
  dialog.showModal();
  start.focus();
}
