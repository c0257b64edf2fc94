import assert from "node:assert/strict";
import { test } from "node:test";
import { type FakeElement, type FakeNode, installDom } from "./dom";

installDom();
const { renderMarkdown } = await import("../src/markdown");

function render(source: string): FakeNode {
  return renderMarkdown(source) as unknown as FakeNode;
}

function tags(node: FakeNode): string[] {
  return node.elements().map((e) => e.tagName);
}

test("raw HTML is shown as text, never made into elements", () => {
  const out = render('<script>alert(1)</script>\n\n<img src=x onerror="alert(2)">');
  assert.deepEqual(tags(out), ["p", "p"]);
  assert.match(out.textContent, /<script>alert\(1\)<\/script>/);
});

test("javascript: and data: links stay text", () => {
  for (const url of ["javascript:alert(1)", "JaVaScRiPt:alert(1)", "data:text/html,<b>x</b>"]) {
    const out = render(`[click](${url})`);
    assert.ok(!tags(out).includes("a"), url);
    assert.equal(out.textContent, `[click](${url})`);
  }
});

test("safe links open in a new tab without an opener", () => {
  const a = render("see [the docs](https://example.org/x)").elements().find((e) => e.tagName === "a") as FakeElement;
  assert.equal(a.href, "https://example.org/x");
  assert.equal(a.rel, "noopener noreferrer");
  assert.equal(a.textContent, "the docs");
});

test("remote images are not fetched; same-origin ones are", () => {
  assert.ok(!tags(render("![x](https://tracker.example/p.png)")).includes("img"));
  const img = render("![plot](/blob/abc)").elements().find((e) => e.tagName === "img") as FakeElement;
  assert.equal(img.src, "/blob/abc");
});

test("headings, emphasis, lists, quotes and fenced code", () => {
  const out = render("# Title\n\nSome *em* and **strong** and `code`.\n\n- one\n- two\n\n> quoted\n\n```\n<b>x</b>\n```");
  assert.deepEqual(tags(out), ["h1", "p", "em", "strong", "code", "ul", "li", "li", "blockquote", "p", "pre", "code"]);
  assert.equal(out.elements().at(-1)!.textContent, "<b>x</b>");
});
