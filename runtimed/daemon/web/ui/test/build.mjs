// `npm test`: bundle each test/*.test.ts (with the modules it imports) into .test-build/,
// then node's own runner (node --test) runs them. Nothing here ships.
import { build } from "esbuild";
import { readdirSync, rmSync } from "node:fs";

const out = new URL("../.test-build/", import.meta.url).pathname;
rmSync(out, { recursive: true, force: true });
const tests = readdirSync(new URL(".", import.meta.url)).filter((f) => f.endsWith(".test.ts"));
await build({
  entryPoints: tests.map((f) => `test/${f}`),
  bundle: true,
  platform: "node",
  format: "esm",
  target: "node20",
  outdir: out,
  outExtension: { ".js": ".mjs" },
  logLevel: "warning",
});
