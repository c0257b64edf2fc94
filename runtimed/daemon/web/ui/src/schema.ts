// Reading the notebook and runtime documents (docs/schema.md) from the JS replicas.
// Stock @automerge/automerge reads a Str scalar as ImmutableString and Text as string; a
// field the schema says is a scalar may arrive as either (an old client wrote Text), so
// every read goes through str().

import * as A from "@automerge/automerge/slim";

export type Doc = A.Doc<any>;

export function str(value: unknown): string | null {
  if (typeof value === "string") return value;
  if (value instanceof A.ImmutableString) return value.val;
  if (value && typeof value === "object" && typeof (value as { val?: unknown }).val === "string") {
    return (value as { val: string }).val;
  }
  return null;
}

export function num(value: unknown): number | null {
  if (typeof value === "number") return value;
  if (typeof value === "bigint") return Number(value);
  return null;
}

export interface CellData {
  id: string;
  position: string;
  cellType: string; // "code" | "markdown" | "raw" | anything else (rendered as a placeholder)
  source: string | null; // null: the source is not a string or Text (placeholder)
}

export function cellsInOrder(doc: Doc): CellData[] {
  const cells = doc?.cells;
  if (!cells || typeof cells !== "object") return [];
  const out: CellData[] = [];
  for (const key of Object.keys(cells)) {
    const cell = cells[key];
    if (!cell || typeof cell !== "object" || Array.isArray(cell)) continue; // not a map: ignored
    out.push({
      id: str(cell.id) ?? key,
      position: str(cell.position) ?? "",
      cellType: str(cell.cell_type) ?? "code",
      source: str(cell.source),
    });
  }
  // Notebook order: by position, then id (plain code-unit order; positions are ASCII).
  out.sort((a, b) =>
    a.position < b.position ? -1 : a.position > b.position ? 1 : a.id < b.id ? -1 : a.id > b.id ? 1 : 0,
  );
  return out;
}

export interface KernelState {
  state: string;
  name: string;
  message: string;
}

export function kernelOf(runtime: Doc): KernelState {
  const k = runtime?.kernel ?? {};
  return { state: str(k.state) ?? "not_started", name: str(k.name) ?? "", message: str(k.message) ?? "" };
}

export interface CellRuntime {
  executionCount: number | null;
  executionId: string | null;
  status: string | null; // of executionId: queued | running | ok | error | ...
  queued: boolean;
  outputs: string[]; // JSON manifests, as stored
  failure: string | null; // why the execution failed when it says so only in its record
}

export function runtimeCells(runtime: Doc): Map<string, CellRuntime> {
  const out = new Map<string, CellRuntime>();
  const executions = runtime?.executions ?? {};
  const queuedCells = new Set<string>();
  for (const eid of runtime?.queue ?? []) {
    const cell = str(executions[str(eid) ?? ""]?.cell_id);
    if (cell) queuedCells.add(cell);
  }
  const running = str(runtime?.running);
  const runningCell = running ? str(executions[running]?.cell_id) : null;
  const cells = runtime?.cells ?? {};
  for (const id of Object.keys(cells)) {
    const c = cells[id] ?? {};
    const eid = str(c.execution_id);
    const outputs: string[] = [];
    for (const o of c.outputs ?? []) {
      const s = str(o);
      if (s !== null) outputs.push(s);
    }
    const record = eid ? executions[eid] : undefined;
    const ename = str(record?.ename);
    out.set(id, {
      executionCount: num(c.execution_count),
      executionId: eid,
      status: eid ? str(record?.status) : null,
      queued: queuedCells.has(id),
      outputs,
      failure: ename ? `${ename}: ${str(record?.evalue) ?? ""}` : null,
    });
  }
  for (const id of queuedCells) {
    if (!out.has(id)) out.set(id, { executionCount: null, executionId: null, status: "queued", queued: true, outputs: [], failure: null });
  }
  if (runningCell && out.has(runningCell)) out.get(runningCell)!.status = "running";
  return out;
}

export function executionCell(runtime: Doc, executionId: string): string | null {
  return str(runtime?.executions?.[executionId]?.cell_id);
}
