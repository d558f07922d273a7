// Builds the client into dist/: content-hashed assets (served with a one-year
// immutable cache) and an index.html that names them (served with no-cache).
// Every asset also gets a .gz sibling so the daemon can serve it compressed
// without compressing at run time.

import { build } from "esbuild";
import { createHash } from "node:crypto";
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { deflateSync, gzipSync } from "node:zlib";

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, "dist");
const assets = join(dist, "assets");

// ---------------------------------------------------------------- app icons
// Install prompts and home screens want bitmaps: the logo's speech bubble in white
// on the accent colour, full bleed (safe for "maskable" cropping), 4× supersampled,
// drawn here so the repository keeps no binary files.

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(bytes) {
  let c = 0xffffffff;
  for (const byte of bytes) c = CRC_TABLE[(c ^ byte) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type, data) {
  const length = Buffer.alloc(4);
  length.writeUInt32BE(data.length);
  const body = Buffer.concat([Buffer.from(type, "ascii"), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(body));
  return Buffer.concat([length, body, crc]);
}

/** Coverage of the white mark at a point in the unit square: a round bubble with a tail at the lower left. */
function inMark(x, y) {
  const dx = x - 0.52;
  const dy = y - 0.47;
  if (dx * dx + dy * dy <= 0.27 * 0.27) return true;
  // The tail: a triangle from the bubble towards the lower left corner.
  const [ax, ay, bx, by, cx, cy] = [0.24, 0.78, 0.33, 0.56, 0.46, 0.68];
  const sign = (px, py, qx, qy, rx, ry) => (px - rx) * (qy - ry) - (qx - rx) * (py - ry);
  const d1 = sign(x, y, ax, ay, bx, by);
  const d2 = sign(x, y, bx, by, cx, cy);
  const d3 = sign(x, y, cx, cy, ax, ay);
  return !((d1 < 0 || d2 < 0 || d3 < 0) && (d1 > 0 || d2 > 0 || d3 > 0));
}

function iconPng(size, [r, g, b]) {
  const rows = [];
  const samples = 4;
  for (let py = 0; py < size; py++) {
    const row = Buffer.alloc(1 + size * 4); // filter byte 0, then RGBA
    for (let px = 0; px < size; px++) {
      let covered = 0;
      for (let sy = 0; sy < samples; sy++) {
        for (let sx = 0; sx < samples; sx++) {
          if (inMark((px + (sx + 0.5) / samples) / size, (py + (sy + 0.5) / samples) / size)) covered++;
        }
      }
      const t = covered / (samples * samples);
      const o = 1 + px * 4;
      row[o] = Math.round(r + (255 - r) * t);
      row[o + 1] = Math.round(g + (255 - g) * t);
      row[o + 2] = Math.round(b + (255 - b) * t);
      row[o + 3] = 255;
    }
    rows.push(row);
  }
  const header = Buffer.alloc(13);
  header.writeUInt32BE(size, 0);
  header.writeUInt32BE(size, 4);
  header[8] = 8; // bit depth
  header[9] = 6; // RGBA
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", header),
    chunk("IDAT", deflateSync(Buffer.concat(rows), { level: 9 })),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}

// ---------------------------------------------------------------- the build

await rm(dist, { recursive: true, force: true });
await mkdir(assets, { recursive: true });

const result = await build({
  entryPoints: [join(here, "src/main.ts")],
  bundle: true,
  format: "esm",
  target: ["chrome100", "firefox100", "safari15"],
  minify: true,
  sourcemap: false,
  entryNames: "[name]-[hash]",
  outdir: assets,
  metafile: true,
  logLevel: "warning",
  legalComments: "eof",
  define: { "process.env.NODE_ENV": '"production"' },
});

const outputs = Object.keys(result.metafile.outputs).map((path) => basename(path));
const js = outputs.find((name) => name.endsWith(".js"));
const css = outputs.find((name) => name.endsWith(".css"));
if (!js || !css) throw new Error(`esbuild produced no ${js ? "CSS" : "JavaScript"} output`);

/** Writes `body` under assets/ with its content hash in the name; returns the name. */
async function hashed(stem, extension, body) {
  const name = `${stem}-${createHash("sha256").update(body).digest("hex").slice(0, 8).toUpperCase()}.${extension}`;
  await writeFile(join(assets, name), body);
  return name;
}

const iconName = await hashed("icon", "svg", await readFile(join(here, "src/icon.svg")));
const accent = [0x25, 0x63, 0xeb];
const icon192 = await hashed("icon-192", "png", iconPng(192, accent));
const icon512 = await hashed("icon-512", "png", iconPng(512, accent));
// Installable: the manifest names the app and its icons. It is a hashed asset like
// the rest (index.html, never cached, points at the current one), and there is no
// service worker, so an upgrade can never leave a stale client running.
const manifestName = await hashed(
  "manifest",
  "webmanifest",
  JSON.stringify({
    id: "/",
    name: "Parley",
    short_name: "Parley",
    description: "Audio and video calls on your own server",
    start_url: "/",
    scope: "/",
    display: "standalone",
    background_color: "#f5f6f8",
    theme_color: "#2563eb",
    icons: [
      { src: `/assets/${iconName}`, sizes: "any", type: "image/svg+xml" },
      { src: `/assets/${icon192}`, sizes: "192x192", type: "image/png", purpose: "any" },
      { src: `/assets/${icon512}`, sizes: "512x512", type: "image/png", purpose: "any" },
      { src: `/assets/${icon512}`, sizes: "512x512", type: "image/png", purpose: "maskable" },
    ],
  }),
);

const template = await readFile(join(here, "src/index.html"), "utf8");
const html = template
  .replace("%JS%", `/assets/${js}`)
  .replace("%CSS%", `/assets/${css}`)
  .replace("%ICON%", `/assets/${iconName}`)
  .replace("%ICON192%", `/assets/${icon192}`)
  .replace("%MANIFEST%", `/assets/${manifestName}`);
await writeFile(join(dist, "index.html"), html);

// Reported: what a visit downloads (the PNG icons only matter when installing).
let total = 0;
let totalGzip = 0;
for (const name of ["index.html", ...[js, css, iconName, manifestName, icon192, icon512].map((file) => `assets/${file}`)]) {
  const body = await readFile(join(dist, name));
  const gzipped = gzipSync(body, { level: 9 });
  // Only worth serving when it saves something (tiny files and PNGs can grow).
  if (gzipped.length < body.length) await writeFile(join(dist, `${name}.gz`), gzipped);
  if (name.endsWith(".png")) continue;
  total += body.length;
  totalGzip += Math.min(gzipped.length, body.length);
}
console.log(`web/dist: ${(total / 1024).toFixed(1)} KiB, ${(totalGzip / 1024).toFixed(1)} KiB gzipped`);
