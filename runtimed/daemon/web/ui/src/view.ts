// The notebook page: a view of the replica. It subscribes to the replica's changes and
// re-renders (at most once per frame); every action goes through the replica.

import { CellView, type CellHost } from "./cell";
import { loadEditor } from "./editor-loader";
import type { Replica, Viewer } from "./replica";
import { cellsInOrder, executionCell, kernelOf, runtimeCells } from "./schema";
import { measure } from "./timing";

function el<K extends keyof HTMLElementTagNameMap>(tag: K, cls: string, text = ""): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  e.className = cls;
  if (text) e.textContent = text;
  return e;
}

function tool(label: string, title: string, onClick: () => void, cls: string): HTMLButtonElement {
  const b = el("button", `tool ${cls}`, label);
  b.type = "button";
  b.title = title;
  b.addEventListener("click", onClick);
  return b;
}

export class NotebookView implements CellHost {
  private cells = new Map<string, CellView>();
  private order: string[] = [];
  private list = el("main", "cells");
  private kernelBadge = el("span", "kernel-badge state-not_started", "not started");
  private kernelMessage = el("span", "kernel-message");
  private connection = el("span", "connection-state");
  private viewersEl = el("span", "viewers");
  private title = el("span", "nb-title", "notebook");
  private toast = el("div", "toast");
  private scheduled = false;
  private active: string | null = null;
  private editing = false;
  private lastKey = "";
  private observer: IntersectionObserver;
  private firstPaint = false;
  private editorQueue = new Set<string>();
  private placed = new Map<string, Viewer>(); // other viewers' last cursors in known text

  constructor(
    readonly replica: Replica,
    readonly nonce: string,
    root: HTMLElement,
  ) {
    const header = el("header", "topbar");
    const home = el("a", "logo", "runtimed");
    home.href = "/";
    const status = el("span", "kernel-status");
    status.append(this.kernelBadge, this.kernelMessage);
    header.append(home, this.title, status, el("span", "spacer"), this.viewersEl, this.connection);
    const toolbar = el("nav", "toolbar");
    toolbar.append(
      tool("▶ Run", "Run the selected cell (Shift+Enter)", () => this.active && this.runCell(this.active, true), "run"),
      tool("▶▶ Run all", "Run every code cell", () => this.report(replica.runAll()), "run-all"),
      tool("■ Interrupt", "Interrupt the kernel", () => this.report(replica.interrupt()), "interrupt"),
      tool("↻ Restart", "Restart the kernel", () => this.report(replica.restart()), "restart"),
      el("span", "sep"),
      tool("+ Code", "Add a code cell below (b)", () => this.addCell("code"), "add-code"),
      tool("+ Markdown", "Add a markdown cell below", () => this.addCell("markdown"), "add-markdown"),
      tool("Clear outputs", "Clear every output", () => this.report(replica.clearOutputs(null)), "clear"),
      el("span", "sep"),
      tool("Save", "Save to the .ipynb (Ctrl+S)", () => this.save(), "save"),
    );
    // Keep the server-rendered first screen until the replica has the document.
    for (const ssr of root.querySelectorAll(".cell.ssr")) this.list.append(ssr);
    root.replaceChildren(header, toolbar, this.list, this.toast);
    this.observer = new IntersectionObserver(
      (entries) => {
        for (const entry of entries) {
          if (!entry.isIntersecting) continue;
          const id = (entry.target as HTMLElement).closest<HTMLElement>(".cell")?.dataset.cellId;
          if (id) this.editorQueue.add(id);
          this.observer.unobserve(entry.target);
        }
      },
      { rootMargin: "800px 0px" },
    );
    const makeEditors = (deadline: IdleDeadline) => {
      // Editors for cells in view are made when the page is idle: the static source is
      // already painted, and typing into it makes its editor at once.
      for (const id of this.editorQueue) {
        if (deadline.timeRemaining() < 4) break;
        this.editorQueue.delete(id);
        this.cells.get(id)?.ensureEditor();
      }
      requestIdleCallback(makeEditors, { timeout: 500 });
    };
    requestIdleCallback(makeEditors, { timeout: 500 });
    replica.on("change", () => this.schedule());
    replica.on("connection", () => this.renderConnection());
    // Through the next render, after the cells took in any text that came before: a cursor
    // is placed in the text its heads name, as the editor shows it.
    replica.on("presence", () => this.schedule());
    replica.on("message", (msg) => this.onMessage(msg));
    document.addEventListener("keydown", (ev) => this.onKey(ev));
    this.renderConnection();
  }

  // ------------------------------------------------------------ rendering

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    requestAnimationFrame(() => {
      this.scheduled = false;
      this.render();
    });
  }

  render(): void {
    const t0 = performance.now();
    this.renderInner();
    measure("rt:render", t0);
  }

  private renderInner(): void {
    const replica = this.replica;
    const cells = cellsInOrder(replica.notebook);
    if (cells.length || replica.synced) for (const ssr of this.list.querySelectorAll(".cell.ssr")) ssr.remove();
    const rt = runtimeCells(replica.runtime);
    const seen = new Set<string>();
    let prev: Element | null = null;
    for (const data of cells) {
      seen.add(data.id);
      let view = this.cells.get(data.id);
      if (!view) {
        view = new CellView(this, data);
        this.cells.set(data.id, view);
      }
      view.update(data, rt.get(data.id));
      const expected: Element | null = prev ? prev.nextElementSibling : this.list.firstElementChild;
      if (expected !== view.el) this.list.insertBefore(view.el, expected);
      prev = view.el;
    }
    for (const [id, view] of this.cells) {
      if (!seen.has(id)) {
        view.destroy();
        this.cells.delete(id);
      }
    }
    this.order = cells.map((c) => c.id);
    if (replica.synced && !cells.length && !this.list.querySelector(".empty-notebook")) {
      const empty = el("p", "empty-notebook", "This notebook has no cells. Add one with + Code.");
      this.list.append(empty);
    } else if (cells.length) {
      this.list.querySelector(".empty-notebook")?.remove();
    }
    const kernel = kernelOf(replica.runtime);
    this.kernelBadge.className = `kernel-badge state-${kernel.state}`;
    this.kernelBadge.textContent = kernel.state.replace(/_/g, " ");
    this.kernelBadge.title = kernel.name ? `kernel: ${kernel.name}` : "";
    this.kernelMessage.textContent = kernel.state === "building_env" || kernel.state === "dead" ? kernel.message : "";
    const name = replica.path ? replica.path.split("/").pop()! : `untitled ${replica.notebookId.slice(0, 8)}`;
    if (this.title.textContent !== name) {
      this.title.textContent = name;
      this.title.title = replica.path ?? "";
      document.title = `${name} — runtimed`;
    }
    if (this.active && !this.cells.has(this.active)) this.select(this.order[0] ?? null, false);
    else if (!this.active && this.order.length) this.select(this.order[0], false);
    this.renderPresence(replica.viewers);
    if (!this.firstPaint && cells.length) {
      this.firstPaint = true;
      document.body.dataset.firstCellPainted = String(performance.now());
    }
    if (replica.synced && document.body.dataset.synced !== "true") {
      document.body.dataset.synced = "true";
      performance.mark("rt:synced");
      // The editor's chunk, now that the notebook is on screen (editor-loader.ts).
      setTimeout(() => loadEditor().catch(() => this.flash("the code editor could not be loaded; reload the page", true)), 0);
    }
  }

  private renderConnection(): void {
    const state = this.replica.state;
    const text: Record<string, string> = {
      connecting: "connecting…",
      connected: "live",
      disconnected: "disconnected — reconnecting…",
      gone: "notebook not available",
    };
    this.connection.textContent = text[state];
    this.connection.className = `connection-state conn-${state}`;
    document.body.dataset.connection = state;
    if (state === "gone") {
      const msg = el("div", "gone-banner");
      msg.append(
        el("strong", "", "This notebook is not open in the daemon. "),
        document.createTextNode(this.replica.goneReason || ""),
      );
      this.list.replaceChildren(msg);
    }
  }

  private renderPresence(viewers: Viewer[]): void {
    const others = viewers.filter((v) => v.viewer_id !== this.replica.viewerId && v.kind !== "client");
    this.viewersEl.replaceChildren(
      ...viewers.map((v) => {
        const me = v.viewer_id === this.replica.viewerId;
        const chip = el("span", `viewer-chip${me ? " me" : ""}${v.kind === "client" ? " client" : ""}`, me ? "you" : v.name);
        chip.style.borderColor = v.colour;
        chip.style.color = v.colour;
        chip.title = v.kind === "client" ? "a client on the daemon's socket (Python client, runt, an agent)" : me ? "this page" : `${v.name}, in a browser`;
        return chip;
      }),
    );
    const byCell = new Map<string, Viewer[]>();
    for (const latest of others) {
      // A cursor in text this replica has not received yet would land in the wrong place:
      // keep that viewer's previous cursor until the text is here (renders re-check).
      let v = latest;
      if (v.heads?.length && !this.replica.hasHeads(v.heads)) {
        const prev = this.placed.get(v.viewer_id);
        v = prev && prev.cell_id === v.cell_id ? prev : { ...v, anchor: null, head: null };
      } else this.placed.set(v.viewer_id, v);
      if (v.cell_id) byCell.set(v.cell_id, [...(byCell.get(v.cell_id) ?? []), v]);
    }
    const key = JSON.stringify([...byCell].map(([c, vs]) => [c, vs.map((v) => [v.viewer_id, v.editing, v.anchor, v.head])]));
    if (key === this.lastKey) return;
    this.lastKey = key;
    for (const [id, view] of this.cells) view.setPresence(byCell.get(id) ?? []);
  }

  // ------------------------------------------------------------ CellHost

  observe(cell: CellView): void {
    const target = cell.el.querySelector(".static-source");
    if (target) this.observer.observe(target);
  }

  cursorMoved(cellId: string, anchor: number, head: number): void {
    // Only a focused editor reports its selection: that viewer is editing this cell.
    if (this.active !== cellId || !this.editing) this.select(cellId, true);
    this.replica.setPresence(cellId, true, { anchor, head });
  }

  select(cellId: string | null, editing: boolean): void {
    if (this.active !== cellId) {
      if (this.active) this.cells.get(this.active)?.el.classList.remove("selected");
      this.active = cellId;
      const view = cellId ? this.cells.get(cellId) : undefined;
      view?.el.classList.add("selected");
      view?.ensureToolbar();
    }
    this.editing = editing;
    document.body.dataset.mode = editing ? "edit" : "command";
    this.replica.setPresence(cellId, editing);
  }

  commandMode(cellId: string): void {
    const view = this.cells.get(cellId);
    view?.blurEditor();
    this.select(cellId, false);
    view?.el.focus();
  }

  runCell(cellId: string, advance: boolean): void {
    const view = this.cells.get(cellId);
    if (!view) return;
    const type = view.el.dataset.cellType;
    if (type === "code") this.report(this.replica.execute(cellId));
    else if (type === "markdown") view.renderMarkdownView();
    if (advance) {
      const index = this.order.indexOf(cellId);
      let next = this.order[index + 1];
      if (!next) {
        next = this.replica.addCell(index + 1, "code");
        this.render();
      }
      const nextView = this.cells.get(next);
      if (nextView) {
        this.select(next, nextView.el.dataset.cellType === "code");
        if (nextView.el.dataset.cellType === "code") nextView.focusEditor();
        else nextView.el.focus();
        nextView.el.scrollIntoView({ block: "nearest" });
      }
    }
  }

  private addCell(type: "code" | "markdown", offset = 1): void {
    const index = this.active ? this.order.indexOf(this.active) + offset : this.order.length;
    const id = this.replica.addCell(Math.max(0, index), type);
    this.render();
    this.select(id, true);
    this.cells.get(id)?.focusEditor();
  }

  private save(): void {
    this.report(this.replica.save(), "saved");
  }

  private report(p: Promise<any>, success?: string): void {
    p.then((reply) => {
      if (reply?.type === "error_reply") this.flash(reply.message, true);
      else if (success) this.flash(success, false);
    });
  }

  private flash(text: string, error: boolean): void {
    this.toast.textContent = text;
    this.toast.className = `toast show${error ? " error" : ""}`;
    clearTimeout((this.toast as any)._t);
    (this.toast as any)._t = setTimeout(() => (this.toast.className = "toast"), error ? 6000 : 1500);
  }

  private onMessage(msg: any): void {
    if (msg.type === "input_requested") {
      const cellId = executionCell(this.replica.runtime, msg.execution_id) ?? this.findRunning();
      const view = cellId ? this.cells.get(cellId) : undefined;
      view?.showStdin(msg.prompt, !!msg.password, (value) => this.report(this.replica.answerInput(msg.execution_id, value)));
    } else if (msg.type === "execution_done") {
      this.cells.get(msg.cell_id)?.clearStdin();
    } else if (msg.type === "daemon_shutting_down") {
      this.flash("the daemon is shutting down", true);
    }
  }

  private findRunning(): string | null {
    for (const [id, view] of this.cells) if (view.el.dataset.state === "running") return id;
    return null;
  }

  // ------------------------------------------------------------ keyboard (Jupyter-like)

  private lastKeyDown = "";

  private onKey(ev: KeyboardEvent): void {
    if ((ev.ctrlKey || ev.metaKey) && ev.key === "s") {
      ev.preventDefault();
      this.save();
      return;
    }
    const target = ev.target as HTMLElement;
    if (target.closest(".cm-editor") || target.tagName === "INPUT" || target.tagName === "SELECT") return;
    const active = this.active;
    if (!active) return;
    const index = this.order.indexOf(active);
    const go = (i: number) => {
      const id = this.order[Math.max(0, Math.min(this.order.length - 1, i))];
      if (!id) return;
      this.select(id, false);
      const v = this.cells.get(id);
      v?.el.focus();
      v?.el.scrollIntoView({ block: "nearest" });
    };
    const key = ev.key;
    let handled = true;
    if (key === "Enter" && ev.shiftKey) this.runCell(active, true);
    else if (key === "Enter" && (ev.ctrlKey || ev.metaKey)) this.runCell(active, false);
    else if (key === "Enter") {
      this.select(active, true);
      this.cells.get(active)?.focusEditor();
    } else if (key === "ArrowDown" || key === "j") go(index + 1);
    else if (key === "ArrowUp" || key === "k") go(index - 1);
    else if (key === "a") this.addCell("code", 0);
    else if (key === "b") this.addCell("code", 1);
    else if (key === "m") this.replica.setCellType(active, "markdown");
    else if (key === "y") this.replica.setCellType(active, "code");
    else if (key === "r") this.replica.setCellType(active, "raw");
    else if (key === "d" && this.lastKeyDown === "d") {
      this.replica.deleteCell(active);
      go(index);
    } else if (key === "i" && this.lastKeyDown === "i") this.report(this.replica.interrupt());
    else if (key === "0" && this.lastKeyDown === "0") this.report(this.replica.restart());
    else handled = key === "d" || key === "i" || key === "0";
    this.lastKeyDown = this.lastKeyDown === key ? "" : key;
    if (handled) ev.preventDefault();
  }
}
