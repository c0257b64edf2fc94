// Rendering output manifests (docs/blobs.md) into DOM nodes. Payloads too big for the
// runtime document come from /blob/<sha256> (fetched, or used as an <img> src): binary data
// never travels through the sync channel. HTML and SVG run only inside sandboxed frames.

import { ansiToFragment } from "./ansi";
import { renderMarkdown } from "./markdown";
import { fixCarriageReturns } from "./stream";
import { renderWidgetView } from "./widgets";

type Content = {
  inline?: string;
  encoding?: string;
  blob?: string;
  size?: number;
  media_type?: string;
  partial?: boolean;
  preview?: { head?: string; tail?: string };
};

const MIME_ORDER = [
  "text/html",
  "image/svg+xml",
  "image/png",
  "image/jpeg",
  "image/gif",
  "image/webp",
  "text/markdown",
  "application/json",
  "text/latex",
  "text/plain",
];
const IMAGE = new Set(["image/png", "image/jpeg", "image/gif", "image/webp"]);
const LONG_TEXT_LINES = 2000;
const LINE_HEIGHT = 18; // px; matches .long-text line-height in app.css

const textCache = new Map<string, Promise<string>>();

function fetchBlobText(hash: string): Promise<string> {
  let p = textCache.get(hash);
  if (!p) {
    p = fetch(`/blob/${hash}`, { credentials: "same-origin" }).then((r) => {
      if (!r.ok) throw new Error(`blob ${hash.slice(0, 12)}…: HTTP ${r.status}`);
      return r.text();
    });
    textCache.set(hash, p);
    p.catch(() => textCache.delete(hash));
  }
  return p;
}

/** The content as text (inline, a partial stream's preview, or the blob fetched). */
async function contentText(c: Content): Promise<string> {
  if (c.partial) {
    const head = c.preview?.head ?? "";
    const tail = c.preview?.tail ?? "";
    return `${head}\n[... ${c.size ?? "?"} characters so far; the full text is shown when the cell finishes ...]\n${tail}`;
  }
  if (typeof c.inline === "string") return c.inline;
  if (typeof c.blob === "string") return fetchBlobText(c.blob);
  throw new Error("unreadable output content");
}

async function contentJson(c: Content): Promise<unknown> {
  const text = await contentText(c);
  return c.encoding === "json" ? JSON.parse(text) : text;
}

function placeholder(text: string, cls = "output-placeholder"): HTMLElement {
  const el = document.createElement("div");
  el.className = cls;
  el.textContent = text;
  return el;
}

function deferred(render: (into: HTMLElement) => Promise<void>): HTMLElement {
  const el = document.createElement("div");
  el.className = "output-loading";
  render(el).then(
    () => el.classList.remove("output-loading"),
    (err) => {
      el.classList.remove("output-loading");
      el.replaceChildren(placeholder(`This output could not be shown: ${err?.message ?? err}`));
    },
  );
  return el;
}

// ------------------------------------------------------------------ text

export function textBlock(text: string, cls: string): HTMLElement {
  text = fixCarriageReturns(text);
  const newlines = countLines(text);
  if (newlines > LONG_TEXT_LINES) return longText(text, cls);
  const pre = document.createElement("pre");
  pre.className = cls;
  pre.appendChild(ansiToFragment(text));
  return pre;
}

function countLines(text: string): number {
  let n = 0;
  for (let i = text.indexOf("\n"); i !== -1 && n <= LONG_TEXT_LINES; i = text.indexOf("\n", i + 1)) n++;
  return n;
}

/** A very long text: only the lines in view are in the DOM, so the page stays responsive. */
function longText(text: string, cls: string): HTMLElement {
  const lines = text.split("\n");
  const outer = document.createElement("div");
  outer.className = `long-text ${cls}`;
  const note = document.createElement("div");
  note.className = "long-text-note";
  note.textContent = `${lines.length.toLocaleString()} lines`;
  const scroller = document.createElement("div");
  scroller.className = "long-text-scroller";
  const spacer = document.createElement("div");
  spacer.style.height = `${lines.length * LINE_HEIGHT}px`;
  spacer.style.position = "relative";
  const pre = document.createElement("pre");
  pre.className = "long-text-window";
  spacer.appendChild(pre);
  scroller.appendChild(spacer);
  outer.append(note, scroller);
  let shown = -1;
  let scheduled = false;
  const paint = () => {
    scheduled = false;
    const height = scroller.clientHeight || 400;
    const first = Math.max(0, Math.floor(scroller.scrollTop / LINE_HEIGHT) - 20);
    if (first === shown && pre.childNodes.length) return;
    shown = first;
    const count = Math.ceil(height / LINE_HEIGHT) + 40;
    pre.style.top = `${first * LINE_HEIGHT}px`;
    pre.replaceChildren(ansiToFragment(lines.slice(first, first + count).join("\n")));
  };
  scroller.addEventListener("scroll", () => {
    if (!scheduled) {
      scheduled = true;
      requestAnimationFrame(paint);
    }
  });
  requestAnimationFrame(paint);
  return outer;
}

// ------------------------------------------------------------------ sandboxed HTML/SVG

const frameContent = new Map<HTMLIFrameElement, string>();

window.addEventListener("message", (ev) => {
  for (const [frame, html] of frameContent) {
    if (frame.contentWindow !== ev.source) continue;
    const data = ev.data;
    if (data?.type === "ready") frame.contentWindow?.postMessage({ type: "render", html }, "*");
    else if (data?.type === "height" && typeof data.height === "number") {
      frame.style.height = `${Math.min(Math.max(data.height, 20), 4000)}px`;
    }
    return;
  }
});

/** Untrusted markup in a sandboxed frame (allow-scripts only: an opaque origin, so no
 * cookie, no access to this page, and its CSP lets it fetch nothing). */
function sandboxed(html: string): HTMLElement {
  const frame = document.createElement("iframe");
  frame.className = "output-frame";
  frame.setAttribute("sandbox", "allow-scripts");
  frame.setAttribute("referrerpolicy", "no-referrer");
  frame.src = "/frame";
  frameContent.set(frame, html);
  // Forget frames that left the page (outputs replaced).
  const gc = new MutationObserver(() => {
    if (!frame.isConnected) {
      frameContent.delete(frame);
      gc.disconnect();
    }
  });
  queueMicrotask(() => frame.parentNode && gc.observe(document.body, { childList: true, subtree: true }));
  return frame;
}

// ------------------------------------------------------------------ outputs

function renderData(data: Record<string, Content>, metadata: Record<string, any>): HTMLElement {
  const view = data["application/vnd.jupyter.widget-view+json"]?.inline;
  const modelId = typeof view === "string" ? JSON.parse(view)?.model_id : undefined;
  if (typeof modelId === "string") return renderWidgetView(modelId, data["text/plain"]?.inline ?? "");
  const mimes = Object.keys(data);
  const mime = MIME_ORDER.find((m) => m in data);
  if (!mime) {
    return placeholder(`No renderer for ${mimes.join(", ") || "an empty output"}`);
  }
  const c = data[mime];
  if (IMAGE.has(mime)) {
    const img = document.createElement("img");
    img.className = "output-image";
    img.loading = "lazy";
    img.decoding = "async";
    img.alt = "image output";
    const meta = metadata?.[mime] ?? {};
    if (typeof meta.width === "number") img.width = meta.width;
    if (typeof meta.height === "number") img.height = meta.height;
    if (c.blob) img.src = `/blob/${c.blob}`;
    else if (typeof c.inline === "string") img.src = `data:${mime};base64,${c.inline.replace(/\s/g, "")}`;
    else return placeholder("image without content");
    return img;
  }
  return deferred(async (into) => {
    if (mime === "text/html" || mime === "image/svg+xml") {
      into.appendChild(sandboxed(await contentText(c)));
    } else if (mime === "text/markdown") {
      const div = document.createElement("div");
      div.className = "markdown output-markdown";
      div.appendChild(renderMarkdown(await contentText(c)));
      into.appendChild(div);
    } else if (mime === "application/json") {
      const value = await contentJson(c);
      const pre = document.createElement("pre");
      pre.className = "output-json";
      pre.textContent = JSON.stringify(value, null, 2);
      into.appendChild(pre);
    } else {
      into.appendChild(textBlock(await contentText(c), "output-text"));
    }
  });
}

export function renderOutput(json: string): HTMLElement {
  let out: any;
  try {
    out = JSON.parse(json);
  } catch {
    return placeholder("An output that is not valid JSON");
  }
  const wrap = document.createElement("div");
  wrap.className = `output output-${out?.output_type ?? "unknown"}`;
  try {
    switch (out?.output_type) {
      case "stream":
        wrap.classList.add(`stream-${out.name === "stderr" ? "stderr" : "stdout"}`);
        wrap.appendChild(deferred(async (into) => {
          into.appendChild(textBlock(await contentText(out.text ?? {}), "output-text"));
        }));
        break;
      case "error": {
        const tb: string[] = Array.isArray(out.traceback) ? out.traceback.map(String) : [];
        const text = tb.length ? tb.join("\n") : `${out.ename}: ${out.evalue}`;
        wrap.appendChild(textBlock(text, "output-text output-error-text"));
        break;
      }
      case "execute_result":
      case "display_data":
        wrap.appendChild(renderData(out.data ?? {}, out.metadata ?? {}));
        break;
      default:
        wrap.appendChild(placeholder(`Unknown output type ${JSON.stringify(out?.output_type ?? null)}`));
    }
  } catch (err: any) {
    wrap.replaceChildren(placeholder(`This output could not be shown: ${err?.message ?? err}`));
  }
  return wrap;
}
