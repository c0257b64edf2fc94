// One build command (`npm run build`): bundle the page and copy the static files into
// ../static, which is committed and shipped as package data. Deterministic: no timestamps,
// no absolute paths, no source maps; .ci/run rebuilds and fails if ../static differs.
//
// Two bundles: app.js is what the page needs to load and show its replica; editor.js, the
// code editor (CodeMirror: two thirds of the code), is imported by app.js once the notebook
// is on screen (src/editor-loader.ts), so a cold page parses a third of the code first.
// They share no module, so neither waits for a third file.
import { build } from "esbuild";
import { copyFileSync, mkdirSync } from "node:fs";

const out = new URL("../static/", import.meta.url).pathname;
mkdirSync(out, { recursive: true });
const common = {
  bundle: true,
  format: "esm",
  target: "es2022",
  minify: true,
  legalComments: "eof",
  logLevel: "warning",
};
await build({ ...common, entryPoints: ["src/main.ts"], outfile: out + "app.js" });
await build({ ...common, entryPoints: ["src/editor.ts"], outfile: out + "editor.js" });
copyFileSync("node_modules/@automerge/automerge/dist/automerge.wasm", out + "automerge.wasm");
for (const name of ["app.css", "frame.html", "favicon.svg"]) copyFileSync("src/" + name, out + name);
