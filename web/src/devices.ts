// The Devices dialog: microphone, camera and speaker (where the browser can
// choose one: setSinkId), with a camera preview and a microphone level meter so
// a person can check before a call. Done saves; Esc or Cancel changes nothing.

import { app, loadDevices, notify, renderScreen, saveDevices } from "./app";
import type { DevicePreference } from "./call";
import { h } from "./dom";

function canChooseSpeaker(): boolean {
  return "setSinkId" in HTMLMediaElement.prototype;
}

export async function openDeviceSettings(): Promise<void> {
  const preference = loadDevices();
  let devices: MediaDeviceInfo[] = [];
  try {
    devices = (await navigator.mediaDevices?.enumerateDevices()) ?? [];
  } catch {
    // Listed as "System default" only.
  }
  const select = (kind: MediaDeviceKind, label: string, current: string) => {
    const options = devices.filter((device) => device.kind === kind && device.deviceId !== "default" && device.deviceId !== "");
    return h(
      "select",
      { id: `select-${kind}`, "aria-label": label },
      h("option", { value: "" }, "System default"),
      ...options.map((device, index) =>
        h("option", { value: device.deviceId, selected: device.deviceId === current }, device.label || `${label} ${index + 1}`),
      ),
    );
  };
  const microphone = select("audioinput", "Microphone", preference.audioInput);
  const camera = select("videoinput", "Camera", preference.videoInput);
  const speaker = canChooseSpeaker() ? select("audiooutput", "Speaker", preference.audioOutput) : null;
  const video = h("video", { class: "preview", "aria-label": "Camera preview", autoplay: true, playsinline: true, muted: true });
  video.muted = true;
  const meter = h("meter", { id: "mic-level", "aria-label": "Microphone level", min: 0, max: 1, low: 0.05, value: 0 });
  // Done saves in its own click, not in the close event (a task later): whoever reads the
  // choice right after the click finds it.
  const save = () => {
    const next: DevicePreference = { audioInput: microphone.value, videoInput: camera.value, audioOutput: speaker?.value ?? preference.audioOutput };
    saveDevices(next);
    const call = app.call;
    if (call?.phase === "active") {
      if (next.audioInput !== preference.audioInput && next.audioInput) void call.switchDevice("audio", next).catch(() => notify("Could not switch the microphone."));
      if (next.videoInput !== preference.videoInput && next.videoInput) void call.switchDevice("video", next).catch(() => notify("Could not switch the camera."));
    }
    renderScreen();
  };
  const done = h("button", { class: "primary", type: "button", onclick: () => (save(), dialog.close()) }, "Done");
  const cancel = h("button", { type: "button", onclick: () => dialog.close() }, "Cancel");
  const dialog = h(
    "dialog",
    { class: "settings", "aria-labelledby": "settings-title" },
    h("h2", { id: "settings-title" }, "Devices"),
    h("label", { for: "select-audioinput" }, "Microphone"),
    microphone,
    meter,
    h("label", { for: "select-videoinput" }, "Camera"),
    camera,
    video,
    speaker ? h("label", { for: "select-audiooutput" }, "Speaker") : null,
    speaker,
    devices.some((device) => device.label)
      ? null
      : h("p", { class: "hint" }, "Device names appear after you allow camera and microphone access."),
    h("div", { class: "row" }, cancel, done),
  );

  // The check: the chosen camera in the preview, the chosen microphone on the meter.
  // Not during a call: the call already holds the devices and shows the camera.
  let stream: MediaStream | null = null;
  let audio: AudioContext | null = null;
  let frame = 0;
  const stopCheck = () => {
    cancelAnimationFrame(frame);
    for (const track of stream?.getTracks() ?? []) track.stop();
    stream = null;
    void audio?.close().catch(() => {});
    audio = null;
    video.srcObject = null;
  };
  const startCheck = async () => {
    stopCheck();
    if (app.call || !navigator.mediaDevices?.getUserMedia) return;
    try {
      const opened = await navigator.mediaDevices.getUserMedia({
        audio: microphone.value ? { deviceId: { exact: microphone.value } } : true,
        video: { ...(camera.value ? { deviceId: { exact: camera.value } } : {}), width: { ideal: 320 }, height: { ideal: 240 } },
      });
      if (!dialog.open) {
        for (const track of opened.getTracks()) track.stop();
        return;
      }
      stream = opened;
      video.srcObject = opened;
      audio = new AudioContext();
      const analyser = audio.createAnalyser();
      analyser.fftSize = 512;
      audio.createMediaStreamSource(opened).connect(analyser);
      const samples = new Float32Array(analyser.fftSize);
      const tick = () => {
        analyser.getFloatTimeDomainData(samples);
        let sum = 0;
        for (const sample of samples) sum += sample * sample;
        // RMS scaled so speech sits mid-meter.
        meter.value = Math.min(1, Math.sqrt(sum / samples.length) * 4);
        frame = requestAnimationFrame(tick);
      };
      tick();
    } catch {
      video.hidden = true;
    }
  };
  microphone.addEventListener("change", () => void startCheck());
  camera.addEventListener("change", () => void startCheck());

  dialog.addEventListener("close", () => {
    stopCheck();
    dialog.remove();
    document.querySelector<HTMLElement>('button[aria-label="Devices"]')?.focus();
  });
  document.body.append(dialog);
  dialog.showModal();
  microphone.focus();
  void startCheck();
}
