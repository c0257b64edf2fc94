// Jupyter widgets in the page, from the runtime document's comm state (docs/schema.md
// "Comms and widgets"): a widget-view output names a model id; its view reads the model's
// state from the runtime replica (never a copy) and re-reads it on every runtime change, so
// every page shows the same value. An interaction sends a `send_comm` update (docs/protocol.md);
// the daemon writes the new state into the document and forwards it to the kernel.
//
// A small renderer of the core @jupyter-widgets/controls models (sliders, numeric and text
// fields, checkbox, toggle, dropdown, button, label/HTML as text, progress, boxes) and
// @jupyter-widgets/output; anything else shows its text/plain. Not @jupyter-widgets/html-manager:
// see docs/web.md "Widgets" for why.

import * as A from "@automerge/automerge/slim";
import type { Replica } from "./replica";

type State = Record<string, any>;
type RenderOutput = (json: string) => HTMLElement;

let replica: Replica | null = null;
let renderOutput: RenderOutput | null = null;
const views = new Set<View>();

/** Hook the widget views to the replica (once, from main.ts). */
export function installWidgets(r: Replica, render: RenderOutput): void {
  replica = r;
  renderOutput = render;
  r.on("change", (c) => {
    if (!c.runtime) return;
    for (const view of [...views]) {
      if (!view.el.isConnected && view.mounted) views.delete(view);
      else view.update();
    }
  });
}

/** Plain JS from the replica: Automerge's ImmutableString (our Str scalars) as strings. */
function plain(value: any): any {
  if (value instanceof A.ImmutableString) return value.toString();
  if (Array.isArray(value)) return value.map(plain);
  if (value && typeof value === "object" && !(value instanceof Uint8Array) && !(value instanceof Date)) {
    const out: State = {};
    for (const [k, v] of Object.entries(value)) out[k] = plain(v);
    return out;
  }
  return value;
}

function model(modelId: string): { name: string; state: State } | null {
  const comm = (replica?.runtime as any)?.comms?.[modelId];
  if (!comm) return null;
  return { name: String(comm.model_name ?? ""), state: (comm.state ?? {}) as State };
}

function send(modelId: string, state: State): void {
  replica
    ?.request({ type: "send_comm", comm_id: modelId, data: { method: "update", state, buffer_paths: [] } })
    .catch(() => undefined); // a closed comm or a stopped kernel: the view shows the document
}

const SLIDERS = new Set(["IntSliderModel", "FloatSliderModel", "FloatLogSliderModel"]);
const NUMBERS = new Set(["IntTextModel", "FloatTextModel", "BoundedIntTextModel", "BoundedFloatTextModel"]);
const TEXTS = new Set(["TextModel", "TextareaModel", "PasswordModel"]);
const BOXES = new Set(["HBoxModel", "VBoxModel", "BoxModel", "GridBoxModel"]);
const LABELS = new Set(["LabelModel", "HTMLModel", "HTMLMathModel"]);

/** A view of one widget model (the element stays; its content follows the state). */
class View {
  el: HTMLElement;
  mounted = false;
  private kind = "";
  private input: HTMLInputElement | HTMLSelectElement | HTMLTextAreaElement | null = null;
  private readout: HTMLElement | null = null;
  private body: HTMLElement | null = null;
  private shown = "";

  constructor(public modelId: string, private fallback: string) {
    this.el = document.createElement("div");
    this.el.className = "widget-view";
    this.el.dataset.modelId = modelId;
    queueMicrotask(() => (this.mounted = true));
  }

  update(): void {
    const m = model(this.modelId);
    if (!m) {
      if (this.kind !== "missing") {
        this.kind = "missing";
        this.el.replaceChildren(text("div", this.fallback || "(widget not available: run the cell)", "widget-missing"));
      }
      return;
    }
    const state = plain(m.state);
    if (this.kind !== m.name) this.build(m.name, state);
    this.fill(m.name, state);
  }

  private build(name: string, state: State): void {
    this.kind = name;
    this.input = this.readout = this.body = null;
    this.shown = "";
    const row = document.createElement("div");
    row.className = `widget widget-${name.replace(/Model$/, "").toLowerCase()}`;
    if (state.description) row.append(text("label", String(state.description), "widget-label"));
    const id = this.modelId;
    if (SLIDERS.has(name)) {
      const input = document.createElement("input");
      input.type = "range";
      input.addEventListener("input", () => {
        const value = name === "IntSliderModel" ? parseInt(input.value, 10) : parseFloat(input.value);
        if (this.readout) this.readout.textContent = String(value);
        send(id, { value });
      });
      this.input = input;
      this.readout = text("span", "", "widget-readout");
      row.append(input, this.readout);
    } else if (NUMBERS.has(name) || TEXTS.has(name)) {
      const input = name === "TextareaModel" ? document.createElement("textarea") : document.createElement("input");
      if (input instanceof HTMLInputElement) input.type = NUMBERS.has(name) ? "number" : name === "PasswordModel" ? "password" : "text";
      input.addEventListener("change", () => {
        const raw = input.value;
        send(id, { value: NUMBERS.has(name) ? (name.includes("Int") ? parseInt(raw, 10) : parseFloat(raw)) : raw });
      });
      this.input = input;
      row.append(input);
    } else if (name === "CheckboxModel" || name === "ToggleButtonModel") {
      const input = document.createElement("input");
      input.type = "checkbox";
      input.addEventListener("change", () => send(id, { value: input.checked }));
      this.input = input;
      row.append(input);
    } else if (name === "DropdownModel" || name === "SelectModel" || name === "RadioButtonsModel") {
      const select = document.createElement("select");
      select.addEventListener("change", () => send(id, { index: parseInt(select.value, 10) }));
      this.input = select;
      row.append(select);
    } else if (name === "ButtonModel") {
      const button = document.createElement("button");
      button.className = "widget-button";
      button.addEventListener("click", () =>
        replica?.request({ type: "send_comm", comm_id: id, data: { method: "custom", content: { event: "click" } } }).catch(() => undefined),
      );
      this.body = button;
      row.append(button);
    } else if (name === "IntProgressModel" || name === "FloatProgressModel") {
      const bar = document.createElement("progress");
      this.body = bar;
      row.append(bar);
    } else {
      this.body = document.createElement("div");
      this.body.className = "widget-body";
      row.append(this.body);
    }
    this.el.replaceChildren(row);
  }

  private fill(name: string, state: State): void {
    const input = this.input;
    if (input instanceof HTMLInputElement && input.type === "range") {
      input.min = String(state.min ?? 0);
      input.max = String(state.max ?? 100);
      input.step = String(state.step ?? 1);
      if (input.value !== String(state.value ?? 0)) input.value = String(state.value ?? 0);
      input.disabled = Boolean(state.disabled);
      if (this.readout) this.readout.textContent = String(state.value ?? "");
    } else if (input instanceof HTMLSelectElement) {
      const labels: string[] = (state._options_labels ?? []).map(String);
      const key = labels.join("\u0000");
      if (key !== this.shown) {
        this.shown = key;
        input.replaceChildren(...labels.map((label, i) => Object.assign(document.createElement("option"), { value: String(i), textContent: label })));
      }
      input.value = String(state.index ?? 0);
    } else if (input instanceof HTMLInputElement && input.type === "checkbox") {
      input.checked = Boolean(state.value);
    } else if (input && document.activeElement !== input) {
      input.value = String(state.value ?? "");
    }
    const body = this.body;
    if (!body) return;
    if (body instanceof HTMLButtonElement) body.textContent = String(state.description ?? "");
    else if (body instanceof HTMLProgressElement) {
      body.max = Number(state.max ?? 100) - Number(state.min ?? 0);
      body.value = Number(state.value ?? 0) - Number(state.min ?? 0);
    } else if (LABELS.has(name)) body.textContent = String(state.value ?? "");
    else if (BOXES.has(name)) this.fillBox(body, state);
    else if (name === "OutputModel") this.fillOutput(body, state);
    else body.textContent = this.fallback || name;
  }

  private fillBox(body: HTMLElement, state: State): void {
    const ids: string[] = (state.children ?? []).map((c: string) => String(c).replace(/^IPY_MODEL_/, ""));
    const key = ids.join(",");
    if (key === this.shown) return;
    this.shown = key;
    body.style.display = "flex";
    body.style.flexDirection = this.kind === "VBoxModel" ? "column" : "row";
    body.replaceChildren(...ids.map((child) => renderWidgetView(child, "")));
  }

  private fillOutput(body: HTMLElement, state: State): void {
    const outputs: any[] = state.outputs ?? [];
    const key = JSON.stringify(outputs);
    if (key === this.shown || !renderOutput) return;
    this.shown = key;
    body.replaceChildren(...outputs.map((o) => renderOutput!(JSON.stringify(asManifest(o)))));
  }
}

/** An Output widget's nbformat output in the manifest form outputs.ts renders (inline). */
function asManifest(output: State): State {
  const inline = (v: any) => (typeof v === "string" ? { inline: v, encoding: "text" } : { inline: JSON.stringify(v), encoding: "json" });
  if (output.output_type === "stream") return { ...output, text: inline(String(output.text ?? "")) };
  if (output.data) {
    const data: State = {};
    for (const [mime, v] of Object.entries(output.data)) data[mime] = inline(Array.isArray(v) && !mime.includes("json") ? v.join("") : v);
    return { ...output, data };
  }
  return output;
}

function text(tag: string, content: string, cls: string): HTMLElement {
  const el = document.createElement(tag);
  el.className = cls;
  el.textContent = content;
  return el;
}

/** The view of an `application/vnd.jupyter.widget-view+json` output (``fallback``: its
 * text/plain, shown while the model is not in the runtime document). */
export function renderWidgetView(modelId: string, fallback: string): HTMLElement {
  const view = new View(modelId, fallback);
  views.add(view);
  view.update();
  return view.el;
}
