// Builds the client into dist/: content-hashed assets (served with a one-year
// immutable cache) and an index.html that names them (served with no-cache).
// Every asset also gets a .gz sibling so the daemon can serve it compressed
// without compressing at run time.

import { build } from "esbuild";
import { createHash } from "node:crypto";
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, "dist");
const assets = join(dist, "assets");

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

const iconSource = await readFile(join(here, "src/icon.svg"));
const iconName = `icon-${createHash("sha256").update(iconSource).digest("hex").slice(0, 8).toUpperCase()}.svg`;
await writeFile(join(assets, iconName), iconSource);

const template = await readFile(join(here, "src/index.html"), "utf8");
const html = template
  .replace("%JS%", `/assets/${js}`)
  .replace("%CSS%", `/assets/${css}`)
  .replace("%ICON%", `/assets/${iconName}`);
await writeFile(join(dist, "index.html"), html);

let total = 0;
let totalGzip = 0;
for (const name of ["index.html", ...[js, css, iconName].map((file) => `assets/${file}`)]) {
  const body = await readFile(join(dist, name));
  const gzipped = gzipSync(body, { level: 9 });
  total += body.length;
  totalGzip += gzipped.length;
  // Only worth serving when it saves something (tiny files can grow).
  if (gzipped.length < body.length) await writeFile(join(dist, `${name}.gz`), gzipped);
}
console.log(`web/dist: ${(total / 1024).toFixed(1)} KiB, ${(totalGzip / 1024).toFixed(1)} KiB gzipped`);
