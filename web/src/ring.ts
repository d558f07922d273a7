// Ring tones synthesised with Web Audio, so the client ships no sound files.

let context: AudioContext | null = null;
let timer: number | undefined;

function beep(frequencies: number[], seconds: number, volume: number): void {
  if (!context) return;
  const start = context.currentTime;
  const gain = context.createGain();
  gain.gain.setValueAtTime(0, start);
  gain.gain.linearRampToValueAtTime(volume, start + 0.02);
  gain.gain.setValueAtTime(volume, start + seconds - 0.05);
  gain.gain.linearRampToValueAtTime(0, start + seconds);
  gain.connect(context.destination);
  for (const frequency of frequencies) {
    const oscillator = context.createOscillator();
    oscillator.frequency.value = frequency;
    oscillator.connect(gain);
    oscillator.start(start);
    oscillator.stop(start + seconds);
  }
}

/** Incoming: a double ring every 3 s. Outgoing: the ringback tone every 4 s. */
export function startTone(kind: "incoming" | "outgoing"): void {
  stopTone();
  try {
    context ??= new AudioContext();
    // Browsers suspend audio until the page has had a user gesture; resume() is a no-op otherwise.
    void context.resume().catch(() => {});
  } catch {
    return; // No audio output: the dialog and the notification still tell the user.
  }
  const play = () => {
    if (kind === "incoming") {
      beep([440, 480], 0.4, 0.15);
      window.setTimeout(() => beep([440, 480], 0.4, 0.15), 600);
    } else {
      beep([440, 480], 1.2, 0.06);
    }
  };
  play();
  timer = window.setInterval(play, kind === "incoming" ? 3000 : 4000);
}

export function stopTone(): void {
  if (timer !== undefined) window.clearInterval(timer);
  timer = undefined;
}
