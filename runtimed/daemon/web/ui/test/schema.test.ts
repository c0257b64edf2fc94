import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import * as A from "@automerge/automerge/slim";

await A.initializeWasm(readFileSync("node_modules/@automerge/automerge/dist/automerge.wasm"));
const { cellsInOrder, kernelOf, runtimeCells, str } = await import("../src/schema");

const S = (v: string) => new A.ImmutableString(v);

test("str reads a scalar string, Text, or nothing", () => {
  assert.equal(str("text"), "text");
  assert.equal(str(S("scalar")), "scalar");
  assert.equal(str(3), null);
  assert.equal(str(null), null);
});

test("cells in order by position then id; Text where a scalar belongs is read too", () => {
  const doc = A.from<any>({
    cells: {
      b: { id: S("b"), position: S("a1"), cell_type: S("code"), source: "two" },
      a: { id: S("a"), position: S("a1"), cell_type: S("markdown"), source: "# one" },
      // An old client wrote Text for id, position and cell_type:
      c: { id: "c", position: "a0", cell_type: "raw", source: "zero 👋🏽" },
      d: { id: S("d"), position: S("a2"), cell_type: S("code"), source: 42 },
      e: ["not", "a", "map"],
    },
  });
  const cells = cellsInOrder(doc);
  assert.deepEqual(cells.map((c) => [c.id, c.cellType, c.source]), [
    ["c", "raw", "zero 👋🏽"],
    ["a", "markdown", "# one"],
    ["b", "code", "two"],
    ["d", "code", null], // not text: the page shows a placeholder
  ]);
});

test("runtime: queued, running, outputs and a failure without an error output", () => {
  const rt = A.from<any>({
    kernel: { state: S("busy"), name: S("python3") },
    queue: [S("e3")],
    running: S("e2"),
    executions: {
      e1: { cell_id: S("c1"), status: S("error"), ename: S("KernelDied"), evalue: S("gone") },
      e2: { cell_id: S("c2"), status: S("queued") },
      e3: { cell_id: S("c3"), status: S("queued") },
    },
    cells: {
      c1: { execution_id: S("e1"), execution_count: 4, outputs: [S('{"output_type":"stream"}')] },
      c2: { execution_id: S("e2"), execution_count: null, outputs: [] },
    },
  });
  const cells = runtimeCells(rt);
  assert.equal(kernelOf(rt).state, "busy");
  assert.deepEqual(cells.get("c1"), {
    executionCount: 4,
    executionId: "e1",
    status: "error",
    queued: false,
    outputs: ['{"output_type":"stream"}'],
    failure: "KernelDied: gone",
  });
  assert.equal(cells.get("c2")?.status, "running");
  assert.equal(cells.get("c3")?.status, "queued");
  assert.equal(kernelOf(A.init()).state, "not_started");
});
