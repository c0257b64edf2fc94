// One cell's DOM: prompt, editor (or rendered Markdown), state, outputs, stdin prompt.
// Holds no document state: update() is given what the replicas say now.

import type { EditorView } from "@codemirror/view";
import { editorModule, loadEditor } from "./editor-loader";
import { renderMarkdown } from "./markdown";
import { renderOutput } from "./outputs";
import type { Replica, Viewer } from "./replica";
import { type CellData, type CellRuntime, cellsInOrder } from "./schema";

export interface CellHost {
  replica: Replica;
  nonce: string;
  select(cellId: string, editing: boolean): void;
  runCell(cellId: string, advance: boolean): void;
  commandMode(cellId: string): void;
  cursorMoved(cellId: string, anchor: number, head: number): void;
  observe(cell: CellView): void;
}

function button(label: string, title: string, onClick: () => void, cls = ""): HTMLButtonElement {
  const b = document.createElement("button");
  b.type = "button";
  b.className = `icon-button ${cls}`;
  b.textContent = label;
  b.title = title;
  b.addEventListener("click", (ev) => {
    ev.stopPropagation();
    onClick();
  });
  return b;
}

export class CellView {
  readonly el: HTMLElement;
  id: string;
  private cellType = "";
  private source: string | null = null;
  private prompt: HTMLElement;
  private presenceEl: HTMLElement;
  private input: HTMLElement;
  private outputsEl: HTMLElement;
  private stdinEl: HTMLElement;
  private typeSelect: HTMLSelectElement | null = null;
  private body: HTMLElement;
  private editor: EditorView | null = null;
  private staticSource: HTMLElement | null = null;
  private editingMarkdown = false;
  private outputStrings: string[] = [];
  private outputEls: HTMLElement[] = [];
  private stateKey = "";
  private remote: Viewer[] = [];

  constructor(
    private host: CellHost,
    data: CellData,
  ) {
    this.id = data.id;
    this.el = document.createElement("div");
    this.el.className = "cell";
    this.el.dataset.cellId = data.id;
    this.el.tabIndex = -1;
    const gutter = document.createElement("div");
    gutter.className = "cell-gutter";
    this.prompt = document.createElement("div");
    this.prompt.className = "prompt";
    this.presenceEl = document.createElement("div");
    this.presenceEl.className = "cell-presence";
    gutter.append(this.prompt, this.presenceEl);
    const body = document.createElement("div");
    body.className = "cell-body";
    this.input = document.createElement("div");
    this.input.className = "cell-input";
    this.outputsEl = document.createElement("div");
    this.outputsEl.className = "cell-outputs";
    this.stdinEl = document.createElement("div");
    this.stdinEl.className = "cell-stdin";
    body.append(this.input, this.outputsEl, this.stdinEl);
    this.body = body;
    this.el.append(gutter, body);
    // A press inside the editor (or the source it replaces) is edit mode; elsewhere command.
    this.el.addEventListener("mousedown", (ev) =>
      host.select(this.id, !!(ev.target as HTMLElement).closest?.(".cm-editor, .static-source")),
    );
    // The toolbar is made on first use: a 1,000-cell notebook would otherwise build 1,000.
    this.el.addEventListener("mouseenter", () => this.ensureToolbar());
    this.el.addEventListener("dblclick", () => {
      if (this.cellType === "markdown" && !this.editingMarkdown) this.editMarkdown();
    });
    this.update(data, undefined);
  }

  ensureToolbar(): void {
    if (this.typeSelect) return;
    const host = this.host;
    const toolbar = document.createElement("div");
    toolbar.className = "cell-toolbar";
    const select = document.createElement("select");
    select.className = "cell-type-select";
    select.title = "Cell type";
    for (const t of ["code", "markdown", "raw"]) select.add(new Option(t, t));
    if (["code", "markdown", "raw"].includes(this.cellType)) select.value = this.cellType;
    select.addEventListener("change", () => host.replica.setCellType(this.id, select.value as any));
    this.typeSelect = select;
    toolbar.append(
      button("▶", "Run this cell (Shift+Enter)", () => host.runCell(this.id, false), "run-cell"),
      select,
      button("↑", "Move up", () => this.move(-1), "move-up"),
      button("↓", "Move down", () => this.move(1), "move-down"),
      button("✕", "Delete cell", () => host.replica.deleteCell(this.id), "delete-cell"),
    );
    this.body.prepend(toolbar);
  }

  private move(delta: number): void {
    // From the replica, not the DOM (which may not have caught up with the last move yet).
    const cells = cellsInOrder(this.host.replica.notebook).map((c) => c.id);
    const index = cells.indexOf(this.id);
    const target = index + delta;
    if (index < 0 || target < 0 || target >= cells.length) return;
    this.host.replica.moveCell(this.id, target);
  }

  get hasEditor(): boolean {
    return this.editor !== null;
  }

  /** Make the real editor (lazily: a 1,000-cell notebook creates only those in view). */
  ensureEditor(): EditorView | null {
    if (this.editor) return this.editor;
    if (this.source === null) return null;
    if (this.cellType === "markdown" && !this.editingMarkdown) return null;
    const cm = editorModule();
    if (!cm) {
      // Shown as static text until the editor's chunk is here (moments after the page).
      loadEditor().then(() => this.ensureEditor(), () => undefined);
      return null;
    }
    this.input.replaceChildren();
    this.staticSource = null;
    const hooks = {
      onEdit: (edits: Array<[number, number, string]>) => {
        this.source = this.editor!.state.doc.toString();
        this.host.replica.editSource(this.id, edits);
      },
      onSelection: (anchor: number, head: number) => this.host.cursorMoved(this.id, anchor, head),
      onFocus: () => this.host.select(this.id, true),
      onBlur: () => {
        if (this.cellType === "markdown" && this.editingMarkdown) this.renderMarkdownView();
      },
      runAndAdvance: () => this.host.runCell(this.id, true),
      runInPlace: () => this.host.runCell(this.id, false),
      escape: () => this.host.commandMode(this.id),
    };
    this.editor = cm.createEditor(this.input, this.source, this.cellType === "code" ? "python" : "plain", this.host.nonce, hooks);
    if (this.remote.length) this.showCursors();
    return this.editor;
  }

  focusEditor(): void {
    if (this.cellType === "markdown" && !this.editingMarkdown) this.editMarkdown();
    else this.focusWhenReady();
  }

  private focusWhenReady(): void {
    const editor = this.ensureEditor();
    if (editor) editor.focus();
    else if (!editorModule()) loadEditor().then(() => this.ensureEditor()?.focus(), () => undefined);
  }

  blurEditor(): void {
    this.editor?.contentDOM.blur();
    if (this.cellType === "markdown" && this.editingMarkdown) this.renderMarkdownView();
  }

  private editMarkdown(): void {
    this.editingMarkdown = true;
    this.el.classList.add("editing-markdown");
    this.focusWhenReady();
  }

  /** Markdown cells: Shift+Enter renders. */
  renderMarkdownView(): void {
    this.editingMarkdown = false;
    this.el.classList.remove("editing-markdown");
    this.editor?.destroy();
    this.editor = null;
    this.paintInput();
  }

  private paintInput(): void {
    if (this.source === null) {
      this.input.replaceChildren(Object.assign(document.createElement("div"), {
        className: "output-placeholder",
        textContent: "This cell's source is not text; it cannot be shown or edited here.",
      }));
      return;
    }
    if (this.cellType === "markdown" && !this.editingMarkdown) {
      const md = document.createElement("div");
      md.className = "markdown";
      try {
        md.appendChild(renderMarkdown(this.source));
        if (!this.source.trim()) md.appendChild(Object.assign(document.createElement("p"), { className: "empty-md", textContent: "Empty markdown cell — double-click to edit" }));
      } catch {
        md.textContent = this.source;
      }
      this.input.replaceChildren(md);
      return;
    }
    if (this.editor) {
      editorModule()!.applyRemoteText(this.editor, this.source);
      return;
    }
    if (!this.staticSource) {
      this.staticSource = document.createElement("pre");
      this.staticSource.className = "static-source";
      this.staticSource.addEventListener("mousedown", (ev) => {
        ev.preventDefault();
        this.host.select(this.id, true);
        this.focusEditor();
      });
      this.input.replaceChildren(this.staticSource);
      this.host.observe(this);
    }
    this.staticSource.textContent = this.source || " ";
  }

  update(data: CellData, rt: CellRuntime | undefined): void {
    const typeChanged = data.cellType !== this.cellType;
    if (typeChanged) {
      this.cellType = data.cellType;
      this.el.dataset.cellType = data.cellType;
      if (this.typeSelect && ["code", "markdown", "raw"].includes(data.cellType)) this.typeSelect.value = data.cellType;
      this.editor?.destroy();
      this.editor = null;
      this.staticSource = null;
      this.editingMarkdown = false;
      this.source = data.source;
      this.paintInput();
    } else if (data.source !== this.source) {
      this.source = data.source;
      this.paintInput();
    }
    this.updateRuntime(this.cellType === "code" ? rt : undefined);
  }

  private updateRuntime(rt: CellRuntime | undefined): void {
    const status = rt?.queued && rt.status !== "running" ? "queued" : rt?.status ?? "";
    const count = rt?.executionCount ?? null;
    const key = `${status}|${count}`;
    if (key !== this.stateKey) {
      this.stateKey = key;
      this.el.dataset.state = status || "idle";
      if (this.cellType !== "code") this.prompt.textContent = "";
      else if (status === "running" || status === "queued") this.prompt.textContent = "[*]:";
      else this.prompt.textContent = `[${count ?? " "}]:`;
      this.prompt.title = status ? `execution ${status}` : "";
    }
    const outputs = [...(rt?.outputs ?? [])];
    // An execution that failed without an error output (the kernel was starting, died, timed
    // out): say so from its record.
    if (rt?.failure && !outputs.some((o) => o.includes('"output_type":"error"'))) {
      outputs.push(JSON.stringify({ output_type: "error", ename: "", evalue: "", traceback: [`\x1b[31m${rt.failure}\x1b[0m`] }));
    }
    if (outputs.length === this.outputStrings.length && outputs.every((o, i) => o === this.outputStrings[i])) return;
    // Reuse rendered outputs whose manifest did not change (a stream growing re-renders
    // only its own output).
    const els: HTMLElement[] = [];
    outputs.forEach((o, i) => {
      els.push(this.outputStrings[i] === o ? this.outputEls[i] : renderOutput(o));
    });
    this.outputsEl.replaceChildren(...els);
    this.outputStrings = outputs;
    this.outputEls = els;
  }

  setPresence(viewers: Viewer[]): void {
    this.remote = viewers;
    if (this.editor) this.showCursors();
    this.presenceEl.replaceChildren(
      ...viewers.map((v) => {
        const dot = document.createElement("span");
        dot.className = `presence-dot${v.editing ? " editing" : ""}`;
        dot.style.backgroundColor = v.colour;
        dot.title = `${v.name}${v.editing ? " is editing" : " is here"}`;
        dot.textContent = v.name.replace(/^Viewer /, "").slice(0, 2);
        return dot;
      }),
    );
    this.el.classList.toggle("has-others", viewers.length > 0);
    if (viewers.length) this.el.style.setProperty("--presence-colour", viewers[0].colour);
  }

  /** Other viewers' cursors inside this cell's editor (cursors.ts). */
  private showCursors(): void {
    const cm = editorModule();
    if (!cm || !this.editor) return;
    const cursors = this.remote
      .filter((v) => v.editing && typeof v.anchor === "number" && typeof v.head === "number")
      .map((v) => ({ viewerId: v.viewer_id, name: v.name, colour: v.colour, anchor: v.anchor!, head: v.head! }));
    cm.showRemoteCursors(this.editor, cursors);
  }

  showStdin(prompt: string, password: boolean, answer: (value: string) => void): void {
    const label = document.createElement("label");
    label.className = "stdin-prompt";
    label.textContent = prompt || "input:";
    const field = document.createElement("input");
    field.className = "stdin-field";
    field.type = password ? "password" : "text";
    field.addEventListener("keydown", (ev) => {
      ev.stopPropagation();
      if (ev.key === "Enter") {
        answer(field.value);
        this.stdinEl.replaceChildren();
      }
    });
    this.stdinEl.replaceChildren(label, field);
    field.focus();
  }

  clearStdin(): void {
    this.stdinEl.replaceChildren();
  }

  destroy(): void {
    this.editor?.destroy();
    this.el.remove();
  }
}
