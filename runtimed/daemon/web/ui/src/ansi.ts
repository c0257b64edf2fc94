// ANSI SGR escapes (colours, bold, underline) to DOM nodes, as Jupyter front ends show
// tracebacks and coloured streams. Text is never parsed as HTML: nodes are built directly.

const NAMED = ["black", "red", "green", "yellow", "blue", "magenta", "cyan", "white"];

interface Style {
  fg?: string;
  bg?: string;
  bold?: boolean;
  italic?: boolean;
  underline?: boolean;
}

function xterm256(n: number): string {
  if (n < 16) return "";
  if (n < 232) {
    const i = n - 16;
    const c = (v: number) => (v === 0 ? 0 : 55 + v * 40);
    return `rgb(${c(Math.floor(i / 36))},${c(Math.floor(i / 6) % 6)},${c(i % 6)})`;
  }
  const g = 8 + (n - 232) * 10;
  return `rgb(${g},${g},${g})`;
}

function apply(style: Style, codes: number[]): Style {
  const s = { ...style };
  for (let i = 0; i < codes.length; i++) {
    const c = codes[i];
    if (c === 0) {
      for (const k of Object.keys(s)) delete (s as Record<string, unknown>)[k];
    } else if (c === 1) s.bold = true;
    else if (c === 3) s.italic = true;
    else if (c === 4) s.underline = true;
    else if (c === 22) s.bold = false;
    else if (c === 23) s.italic = false;
    else if (c === 24) s.underline = false;
    else if (c >= 30 && c <= 37) s.fg = "ansi-" + NAMED[c - 30];
    else if (c >= 90 && c <= 97) s.fg = "ansi-bright-" + NAMED[c - 90];
    else if (c >= 40 && c <= 47) s.bg = "ansi-bg-" + NAMED[c - 40];
    else if (c >= 100 && c <= 107) s.bg = "ansi-bg-bright-" + NAMED[c - 100];
    else if (c === 39) delete s.fg;
    else if (c === 49) delete s.bg;
    else if ((c === 38 || c === 48) && codes[i + 1] === 5) {
      const n = codes[i + 2] ?? 0;
      const colour = n < 8 ? "ansi-" + NAMED[n] : n < 16 ? "ansi-bright-" + NAMED[n - 8] : xterm256(n);
      if (c === 38) s.fg = colour;
      else s.bg = colour.startsWith("ansi-") ? colour.replace("ansi-", "ansi-bg-") : colour;
      i += 2;
    } else if ((c === 38 || c === 48) && codes[i + 1] === 2) {
      const rgb = `rgb(${codes[i + 2] ?? 0},${codes[i + 3] ?? 0},${codes[i + 4] ?? 0})`;
      if (c === 38) s.fg = rgb;
      else s.bg = rgb;
      i += 4;
    }
  }
  return s;
}

function span(text: string, style: Style): Node {
  if (!style.fg && !style.bg && !style.bold && !style.italic && !style.underline) {
    return document.createTextNode(text);
  }
  const el = document.createElement("span");
  el.textContent = text;
  for (const [key, value] of [["fg", style.fg], ["bg", style.bg]] as const) {
    if (!value) continue;
    if (value.startsWith("ansi-")) el.classList.add(value);
    else if (key === "fg") el.style.color = value;
    else el.style.backgroundColor = value;
  }
  if (style.bold) el.classList.add("ansi-bold");
  if (style.italic) el.classList.add("ansi-italic");
  if (style.underline) el.classList.add("ansi-underline");
  return el;
}

// CSI sequences: ESC [ params final-byte. Only SGR ("m") is rendered; others are dropped.
const CSI = /\x1b\[([0-9;]*)([A-Za-z])/g;

export function ansiToFragment(text: string): DocumentFragment {
  const frag = document.createDocumentFragment();
  let style: Style = {};
  let last = 0;
  for (const m of text.matchAll(CSI)) {
    const at = m.index ?? 0;
    if (at > last) frag.append(span(text.slice(last, at), style));
    if (m[2] === "m") {
      const codes = m[1] === "" ? [0] : m[1].split(";").map((x) => Number(x) || 0);
      style = apply(style, codes);
    }
    last = at + m[0].length;
  }
  if (last < text.length) frag.append(span(text.slice(last), style));
  return frag;
}

export function stripAnsi(text: string): string {
  return text.replace(CSI, "");
}
