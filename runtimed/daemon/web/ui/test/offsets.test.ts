import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import * as A from "@automerge/automerge/slim";
import { codePointsToUnits, unitsToCodePoints } from "../src/offsets";

await A.initializeWasm(readFileSync("node_modules/@automerge/automerge/dist/automerge.wasm"));

const WAVE = "👋🏽"; // U+1F44B U+1F3FD: 4 UTF-16 units, 2 code points
const ACUTE = "e\u0301"; // e + combining acute: 2 units, 2 code points

test("emoji: surrogate pairs are one code point each", () => {
  const text = `a${WAVE}b`;
  assert.equal(text.length, 6);
  assert.deepEqual([0, 1, 3, 5, 6].map((u) => unitsToCodePoints(text, u)), [0, 1, 2, 3, 4]);
  assert.deepEqual([0, 1, 2, 3, 4].map((p) => codePointsToUnits(text, p)), [0, 1, 3, 5, 6]);
});

test("combining characters count as they are stored", () => {
  const text = `${ACUTE}x`;
  assert.deepEqual([0, 1, 2, 3].map((u) => unitsToCodePoints(text, u)), [0, 1, 2, 3]);
});

test("round trip at every code-point boundary; clamped outside the text", () => {
  const text = `x${WAVE}${ACUTE}😀\n${WAVE}`;
  const points = [...text].length;
  for (let p = 0; p <= points; p++) assert.equal(unitsToCodePoints(text, codePointsToUnits(text, p)), p);
  assert.equal(codePointsToUnits(text, points + 5), text.length);
  assert.equal(unitsToCodePoints(text, text.length + 5), points);
  assert.equal(unitsToCodePoints("\ud83d", 1), 1); // a lone surrogate is one code point
});

test("the JS Automerge splices at UTF-16 offsets, as CodeMirror reports them", () => {
  let doc = A.from<{ source: string }>({ source: `a${WAVE}${ACUTE}` });
  const after = 1 + WAVE.length; // the editor's offset just after the emoji
  doc = A.change(doc, (d) => A.splice(d, ["source"], after, 0, "X"));
  assert.equal(doc.source, `a${WAVE}X${ACUTE}`);
  doc = A.change(doc, (d) => A.splice(d, ["source"], after + 1, ACUTE.length, "é"));
  assert.equal(doc.source, `a${WAVE}Xé`);
  // The Python side sees the same characters at code-point offsets.
  assert.equal([...doc.source].indexOf("X"), unitsToCodePoints(doc.source, after));
});
