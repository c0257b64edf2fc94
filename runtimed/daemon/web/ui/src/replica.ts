// The page's replicas of a notebook's two documents and the WebSocket that syncs them.
// This is the state; views subscribe to it and never hold a copy of the documents.
//
// WebSocket (docs/web.md): binary = [doc byte: 0 notebook, 1 runtime] + Automerge sync
// message; text = JSON requests/replies/events. On every (re)connect both sync states start
// fresh; the runtime replica (written only by the daemon) also starts empty, while the
// notebook replica keeps everything, local edits made while offline included, and the sync
// protocol sends them once connected.

import * as A from "@automerge/automerge/slim";
import { generateKeyBetween } from "fractional-indexing";
import { cellsInOrder, type Doc } from "./schema";
import { measure } from "./timing";

export type ConnectionState = "connecting" | "connected" | "disconnected" | "gone";

export interface Viewer {
  viewer_id: string;
  name: string;
  colour: string;
  cell_id: string | null;
  editing: boolean;
  kind?: "browser" | "client"; // client: on the daemon's socket (no place in the notebook)
  anchor?: number | null; // the cursor in the cell's source, in code points
  head?: number | null;
  heads?: string[] | null; // the notebook heads that cursor is in (see view.ts)
}

export interface Cursor {
  anchor: number; // code points
  head: number;
}

export interface ReplicaEvents {
  change: { notebook: boolean; runtime: boolean };
  connection: ConnectionState;
  message: any; // daemon events and replies, as JSON
  presence: Viewer[];
}

type Listener<K extends keyof ReplicaEvents> = (value: ReplicaEvents[K]) => void;

const DOC_NOTEBOOK = 0;
const DOC_RUNTIME = 1;
const DOC_SNAPSHOT = 2; // from the server only: the notebook document, saved

/** A WebSocket opened as early as possible (before the wasm is ready), its messages kept
 * until the replica adopts it. */
export interface EarlySocket {
  ws: WebSocket;
  queue: Array<ArrayBuffer | string>;
  closed: boolean;
}

export function openSocket(notebookId: string, fresh: boolean): EarlySocket {
  const q = fresh ? "?fresh=1" : "";
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/notebooks/${encodeURIComponent(notebookId)}/ws${q}`;
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  const sock: EarlySocket = { ws, queue: [], closed: false };
  ws.onmessage = (ev) => sock.queue.push(ev.data);
  ws.onclose = () => (sock.closed = true);
  return sock;
}

export class Replica {
  notebook: Doc = A.init();
  runtime: Doc = A.init();
  // After runtime_resync: the runtime document being synced again from empty; the view keeps
  // reading `runtime` until this one holds the state (the page never shows it empty).
  private rtIncoming: Doc | null = null;
  notebookId: string;
  path: string | null = null;
  viewerId: string | null = null;
  viewers: Viewer[] = [];
  state: ConnectionState = "connecting";
  synced = false; // the notebook document has arrived (its cells map)
  goneReason = "";
  private nbSync = A.initSyncState();
  private rtSync = A.initSyncState();
  private ws: WebSocket | null = null;
  private listeners: Partial<Record<keyof ReplicaEvents, Set<(value: any) => void>>> = {};
  private nextId = 1;
  private pending = new Map<number, (reply: any) => void>();
  private retry = 250;
  private presenceTimer = 0;
  private lastPresence = "";
  private presenceCell: string | null = null;
  private presenceCursor: Cursor | null = null;

  constructor(notebookId: string) {
    this.notebookId = notebookId;
  }

  on<K extends keyof ReplicaEvents>(event: K, fn: Listener<K>): () => void {
    const set = (this.listeners[event] ??= new Set());
    set.add(fn);
    return () => set.delete(fn);
  }

  private emit<K extends keyof ReplicaEvents>(event: K, value: ReplicaEvents[K]): void {
    for (const fn of this.listeners[event] ?? []) fn(value);
  }

  // ------------------------------------------------------------ connection

  /** Connect, or adopt a socket opened before the wasm was ready (openSocket). */
  connect(early?: EarlySocket): void {
    // An empty replica asks for the saved document first (loading it is much faster than
    // receiving a long history change by change); sync then only confirms the heads.
    const sock = early ?? openSocket(this.notebookId, !this.notebook.cells);
    const ws = sock.ws;
    this.ws = ws;
    this.setState("connecting");
    const opened = () => {
      this.nbSync = A.initSyncState();
      this.rtSync = A.initSyncState();
      this.runtime = A.init();
      this.rtIncoming = null;
    };
    if (ws.readyState === WebSocket.OPEN) opened();
    ws.onopen = opened;
    ws.onmessage = (ev) => this.onMessage(ev.data);
    ws.onclose = () => this.onClose(ws);
    for (const data of sock.queue.splice(0)) this.onMessage(data);
    if (sock.closed) this.onClose(ws);
  }

  private onClose(ws: WebSocket): void {
    if (this.ws !== ws) return;
    this.ws = null;
    for (const resolve of this.pending.values()) resolve({ type: "error_reply", code: "connection_lost", message: "the connection to the daemon was lost" });
    this.pending.clear();
    if (this.state === "gone") return;
    this.setState("disconnected");
    const delay = this.retry;
    this.retry = Math.min(this.retry * 2, 4000);
    setTimeout(() => this.connect(), delay);
  }

  private setState(state: ConnectionState): void {
    this.state = state;
    this.emit("connection", state);
  }

  private onMessage(data: ArrayBuffer | string): void {
    if (typeof data !== "string") {
      const bytes = new Uint8Array(data);
      const message = bytes.subarray(1);
      if (bytes[0] === DOC_NOTEBOOK) {
        const t0 = performance.now();
        const [doc, state] = A.receiveSyncMessage(this.notebook, this.nbSync, message);
        measure("rt:sync-notebook", t0, message.length);
        const changed = doc !== this.notebook;
        this.notebook = doc;
        this.nbSync = state;
        if (!this.synced && this.notebook.cells) this.synced = true;
        this.flush(DOC_NOTEBOOK);
        if (changed) this.emit("change", { notebook: true, runtime: false });
      } else if (bytes[0] === DOC_SNAPSHOT) {
        if (this.notebook.cells) return; // we have a replica already: sync does the rest
        const t0 = performance.now();
        // Unchecked: the bytes come from our daemon over this authenticated socket, and
        // the sync that follows compares heads anyway; skipping the change-hash rebuild
        // saves a third of the load time on a long history.
        this.notebook = A.load(message, { unchecked: true });
        measure("rt:load-snapshot", t0, message.length);
        this.synced = !!this.notebook.cells;
        this.emit("change", { notebook: true, runtime: false });
      } else if (bytes[0] === DOC_RUNTIME) {
        const target = this.rtIncoming ?? this.runtime;
        const [doc, state] = A.receiveSyncMessage(target, this.rtSync, message);
        this.rtSync = state;
        let changed = false;
        if (this.rtIncoming !== null) {
          this.rtIncoming = doc;
          if ((doc as any).cells) {
            this.runtime = doc; // the copy arrived whole (one change): read it from now on
            this.rtIncoming = null;
            changed = true;
          }
        } else {
          changed = doc !== this.runtime;
          this.runtime = doc;
        }
        this.flush(DOC_RUNTIME);
        if (changed) this.emit("change", { notebook: false, runtime: true });
      }
      return;
    }
    const msg = JSON.parse(data);
    switch (msg.type) {
      case "hello":
        this.retry = 250;
        if (msg.notebook_id !== this.notebookId) {
          // The file changed while the daemon was away: it is a new document now.
          location.replace(`/notebooks/${encodeURIComponent(msg.notebook_id)}`);
          return;
        }
        this.path = msg.path;
        this.viewerId = msg.viewer_id;
        this.lastPresence = "";
        this.setState("connected");
        this.flush(DOC_NOTEBOOK);
        this.flush(DOC_RUNTIME);
        return;
      case "presence":
        this.viewers = msg.viewers;
        this.emit("presence", msg.viewers);
        return;
      case "bye":
        if (msg.reason === "not_found") {
          this.goneReason = msg.message;
          this.setState("gone");
        }
        return;
      case "runtime_resync":
        this.rtIncoming = A.init();
        this.rtSync = A.initSyncState();
        this.flush(DOC_RUNTIME);
        return;
    }
    if (typeof msg.id === "number" && this.pending.has(msg.id)) {
      this.pending.get(msg.id)!(msg);
      this.pending.delete(msg.id);
    }
    this.emit("message", msg);
  }

  private flush(kind: number): void {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN || this.state !== "connected") return;
    for (;;) {
      const doc = kind === DOC_NOTEBOOK ? this.notebook : (this.rtIncoming ?? this.runtime);
      const state = kind === DOC_NOTEBOOK ? this.nbSync : this.rtSync;
      const [next, message] = A.generateSyncMessage(doc, state);
      if (kind === DOC_NOTEBOOK) this.nbSync = next;
      else this.rtSync = next;
      if (!message) return;
      const out = new Uint8Array(message.length + 1);
      out[0] = kind;
      out.set(message, 1);
      ws.send(out);
    }
  }

  // ------------------------------------------------------------ requests

  request(body: Record<string, unknown>): Promise<any> {
    const id = this.nextId++;
    const ws = this.ws;
    if (!ws || this.state !== "connected") {
      return Promise.resolve({ type: "error_reply", code: "not_connected", message: "not connected to the daemon" });
    }
    return new Promise((resolve) => {
      this.pending.set(id, resolve);
      ws.send(JSON.stringify({ ...body, id, notebook_id: this.notebookId }));
    });
  }

  heads(): string[] {
    return A.getHeads(this.notebook);
  }

  /** Whether the notebook replica holds every change named by ``heads``. */
  hasHeads(heads: string[]): boolean {
    try {
      return A.hasHeads(this.notebook, heads);
    } catch {
      return false; // not hashes we can read: treat as not (yet) known
    }
  }

  execute(cellId: string) {
    return this.request({ type: "execute_cell", cell_id: cellId, heads: this.heads(), allow_stdin: true });
  }
  runAll() {
    return this.request({ type: "run_all", heads: this.heads(), allow_stdin: true });
  }
  interrupt() {
    return this.request({ type: "interrupt_kernel" });
  }
  restart() {
    return this.request({ type: "restart_kernel" });
  }
  clearOutputs(cellIds: string[] | null) {
    return this.request({ type: "clear_outputs", cell_ids: cellIds });
  }
  save() {
    return this.request({ type: "save_notebook", heads: this.heads() });
  }
  answerInput(executionId: string, value: string) {
    return this.request({ type: "input_reply", execution_id: executionId, value });
  }

  /** Where this viewer is; ``cursor`` undefined keeps the last one while editing the same
   * cell. Ephemeral: sent to the server, never written to the document. */
  setPresence(cellId: string | null, editing: boolean, cursor?: Cursor | null): void {
    if (cursor === undefined) cursor = editing && cellId === this.presenceCell ? this.presenceCursor : null;
    if (!editing) cursor = null;
    const key = `${cellId}|${editing}|${cursor?.anchor}|${cursor?.head}`;
    if (key === this.lastPresence) return;
    this.lastPresence = key;
    this.presenceCell = cellId;
    this.presenceCursor = cursor;
    clearTimeout(this.presenceTimer);
    // Coalesce: a cursor hopping across cells sends its last place only.
    this.presenceTimer = window.setTimeout(() => {
      if (this.ws && this.state === "connected") {
        // With the heads of the text the cursor is in: a page that has not received that
        // text yet keeps the previous place until it has (presence overtakes sync).
        const heads = cursor ? A.getHeads(this.notebook) : null;
        this.ws.send(JSON.stringify({ type: "presence", cell_id: cellId, editing, anchor: cursor?.anchor ?? null, head: cursor?.head ?? null, heads }));
      }
    }, 30);
  }

  // ------------------------------------------------------------ edits (docs/schema.md)

  private change(fn: (doc: any) => void): void {
    const next = A.change(this.notebook, fn);
    if (next === this.notebook) return;
    this.notebook = next;
    this.flush(DOC_NOTEBOOK);
    this.emit("change", { notebook: true, runtime: false });
  }

  /** Apply an editor change set: each (from, deleteCount, insert) in order, offsets in
   * UTF-16 code units, as CodeMirror and the JS Automerge both count them. */
  editSource(cellId: string, edits: Array<[number, number, string]>): void {
    this.change((doc) => {
      const cell = doc.cells?.[cellId];
      if (!cell) return;
      if (typeof cell.source !== "string") {
        // Not Text (a scalar or missing): replace it by Text holding the edited string.
        cell.source = "";
      }
      for (const [from, del, insert] of edits) A.splice(doc, ["cells", cellId, "source"], from, del, insert);
    });
  }

  addCell(index: number, cellType: "code" | "markdown" | "raw", source = ""): string {
    const cells = cellsInOrder(this.notebook);
    const before = index > 0 ? cells[index - 1]?.position ?? null : null;
    const after = index < cells.length ? cells[index]?.position ?? null : null;
    let position: string;
    try {
      position = generateKeyBetween(before || null, after && after > (before ?? "") ? after : null);
    } catch {
      position = generateKeyBetween(cells.at(-1)?.position || null, null);
    }
    const existing = new Set(cells.map((c) => c.id));
    let id = "";
    do {
      id = Array.from(crypto.getRandomValues(new Uint8Array(4)), (b) => b.toString(16).padStart(2, "0")).join("");
    } while (existing.has(id));
    this.change((doc) => {
      if (!doc.cells) return;
      // Scalars as ImmutableString: a plain JS string would become Text (docs/web.md).
      doc.cells[id] = {
        id: new A.ImmutableString(id),
        position: new A.ImmutableString(position),
        cell_type: new A.ImmutableString(cellType),
        source,
        metadata: {},
      };
    });
    return id;
  }

  deleteCell(cellId: string): void {
    this.change((doc) => {
      if (doc.cells?.[cellId]) delete doc.cells[cellId];
    });
  }

  moveCell(cellId: string, index: number): void {
    const others = cellsInOrder(this.notebook).filter((c) => c.id !== cellId);
    const before = index > 0 ? others[index - 1]?.position ?? null : null;
    const after = index < others.length ? others[index]?.position ?? null : null;
    let position: string;
    try {
      position = generateKeyBetween(before || null, after && after > (before ?? "") ? after : null);
    } catch {
      return;
    }
    this.change((doc) => {
      const cell = doc.cells?.[cellId];
      if (cell) cell.position = new A.ImmutableString(position);
    });
  }

  setCellType(cellId: string, cellType: "code" | "markdown" | "raw"): void {
    this.change((doc) => {
      const cell = doc.cells?.[cellId];
      if (cell) cell.cell_type = new A.ImmutableString(cellType);
    });
  }
}
