// One build command (`npm run build`): bundle src/main.ts and copy the static files into
// ../static, which is committed and shipped as package data. Deterministic: no timestamps,
// no absolute paths, no source maps; .ci/run rebuilds and fails if ../static differs.
import { build } from "esbuild";
import { copyFileSync, mkdirSync } from "node:fs";

const out = new URL("../static/", import.meta.url).pathname;
mkdirSync(out, { recursive: true });
await build({
  entryPoints: ["src/main.ts"],
  bundle: true,
  format: "esm",
  target: "es2022",
  minify: true,
  legalComments: "eof",
  outfile: out + "app.js",
  logLevel: "warning",
});
copyFileSync("node_modules/@automerge/automerge/dist/automerge.wasm", out + "automerge.wasm");
for (const name of ["app.css", "frame.html", "favicon.svg"]) copyFileSync("src/" + name, out + name);
