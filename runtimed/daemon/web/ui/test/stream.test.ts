import assert from "node:assert/strict";
import { test } from "node:test";
import { fixCarriageReturns } from "../src/stream";

test("a progress bar redrawn with \\r shows its last state", () => {
  assert.equal(fixCarriageReturns("10%\r20%\r30%\n"), "30%\n");
  assert.equal(fixCarriageReturns("downloading 1/3\rdownloading 3/3"), "downloading 3/3");
});

test("\\r\\n is a line end, not a redraw", () => {
  assert.equal(fixCarriageReturns("a\r\nb\r\n"), "a\nb\n");
});

test("\\r only redraws its own line", () => {
  assert.equal(fixCarriageReturns("keep\nold\rnew\nnext"), "keep\nnew\nnext");
});

test("\\b deletes the character before it, never across a line", () => {
  assert.equal(fixCarriageReturns("abc\b\bd"), "ad");
  assert.equal(fixCarriageReturns("x\n\by"), "x\ny");
});

test("text without control characters is unchanged", () => {
  const text = "plain 👋🏽 e\u0301\n";
  assert.equal(fixCarriageReturns(text), text);
});
