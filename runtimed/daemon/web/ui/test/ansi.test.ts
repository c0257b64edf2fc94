import assert from "node:assert/strict";
import { test } from "node:test";
import { FakeElement, type FakeNode, installDom } from "./dom";

installDom();
const { ansiToFragment, stripAnsi } = await import("../src/ansi");

function parts(text: string): Array<[string, string, Record<string, string>]> {
  const frag = ansiToFragment(text) as unknown as FakeNode;
  return frag.childNodes.map((n) =>
    n instanceof FakeElement ? [n.textContent, n.className, n.style] : [n.textContent, "#text", {}],
  );
}

test("SGR colours become classes; reset ends them", () => {
  assert.deepEqual(parts("\x1b[31mred\x1b[0m plain"), [
    ["red", "ansi-red", {}],
    [" plain", "#text", {}],
  ]);
});

test("bold, bright and background combine", () => {
  assert.deepEqual(parts("\x1b[1;92;44mx"), [["x", "ansi-bright-green ansi-bg-blue ansi-bold", {}]]);
});

test("256-colour and true-colour codes become inline colours", () => {
  assert.deepEqual(parts("\x1b[38;5;196ma\x1b[48;2;1;2;3mb"), [
    ["a", "", { color: "rgb(255,0,0)" }],
    ["b", "", { color: "rgb(255,0,0)", backgroundColor: "rgb(1,2,3)" }],
  ]);
});

test("other CSI sequences are dropped, text is never markup", () => {
  assert.deepEqual(parts("\x1b[2K<b>not bold</b>"), [["<b>not bold</b>", "#text", {}]]);
});

test("a traceback line keeps every character", () => {
  const line = "\x1b[0;31mZeroDivisionError\x1b[0m: division by zero 👋🏽";
  assert.equal((ansiToFragment(line) as unknown as FakeNode).textContent, stripAnsi(line));
  assert.equal(stripAnsi(line), "ZeroDivisionError: division by zero 👋🏽");
});
