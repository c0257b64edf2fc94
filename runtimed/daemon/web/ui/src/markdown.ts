// A small Markdown renderer that builds DOM nodes (never innerHTML), so a cell's source can
// never inject markup or script: raw HTML in Markdown is shown as text. Covers what notebooks
// mostly use: headings, paragraphs, emphasis, inline and fenced code, lists, block quotes,
// rules, links (http, https, mailto and relative only) and images from the same origin.

const SAFE_URL = /^(https?:|mailto:|#|\/|\.\/|[^:]*$)/i;

function inline(text: string, into: Node): void {
  // Tokens: `code`, **strong**, *em* / _em_, [text](url), ![alt](url)
  const re = /(`+)([\s\S]*?)\1|\*\*([^*]+)\*\*|__([^_]+)__|\*([^*\s][^*]*)\*|_([^_\s][^_]*)_|!\[([^\]]*)\]\(([^)\s]+)\)|\[([^\]]+)\]\(([^)\s]+)\)/g;
  let last = 0;
  for (const m of text.matchAll(re)) {
    const at = m.index ?? 0;
    if (at > last) into.appendChild(document.createTextNode(text.slice(last, at)));
    last = at + m[0].length;
    if (m[1]) {
      const code = document.createElement("code");
      code.textContent = m[2];
      into.appendChild(code);
    } else if (m[3] || m[4]) {
      const el = document.createElement("strong");
      inline(m[3] ?? m[4], el);
      into.appendChild(el);
    } else if (m[5] || m[6]) {
      const el = document.createElement("em");
      inline(m[5] ?? m[6], el);
      into.appendChild(el);
    } else if (m[8] !== undefined) {
      if (SAFE_URL.test(m[8]) && !/^https?:/i.test(m[8])) {
        const img = document.createElement("img");
        img.alt = m[7];
        img.src = m[8];
        img.loading = "lazy";
        into.appendChild(img);
      } else {
        into.appendChild(document.createTextNode(`[image: ${m[7] || m[8]}]`));
      }
    } else if (m[10] !== undefined) {
      if (SAFE_URL.test(m[10])) {
        const a = document.createElement("a");
        a.href = m[10];
        a.rel = "noopener noreferrer";
        a.target = "_blank";
        inline(m[9], a);
        into.appendChild(a);
      } else {
        into.appendChild(document.createTextNode(m[0]));
      }
    }
  }
  if (last < text.length) into.appendChild(document.createTextNode(text.slice(last)));
}

export function renderMarkdown(source: string): DocumentFragment {
  const frag = document.createDocumentFragment();
  const lines = source.replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  let para: string[] = [];
  const flush = () => {
    if (para.length) {
      const p = document.createElement("p");
      inline(para.join(" "), p);
      frag.appendChild(p);
      para = [];
    }
  };
  while (i < lines.length) {
    const line = lines[i];
    const fence = /^\s*(```|~~~)(.*)$/.exec(line);
    if (fence) {
      flush();
      const body: string[] = [];
      i++;
      while (i < lines.length && !lines[i].trim().startsWith(fence[1])) body.push(lines[i++]);
      i++;
      const pre = document.createElement("pre");
      const code = document.createElement("code");
      code.textContent = body.join("\n");
      pre.appendChild(code);
      frag.appendChild(pre);
      continue;
    }
    const heading = /^(#{1,6})\s+(.*?)\s*#*\s*$/.exec(line);
    if (heading) {
      flush();
      const h = document.createElement(`h${heading[1].length}`);
      inline(heading[2], h);
      frag.appendChild(h);
      i++;
      continue;
    }
    if (/^\s*([-*_])(\s*\1){2,}\s*$/.test(line)) {
      flush();
      frag.appendChild(document.createElement("hr"));
      i++;
      continue;
    }
    if (/^\s*>/.test(line)) {
      flush();
      const quoted: string[] = [];
      while (i < lines.length && /^\s*>/.test(lines[i])) quoted.push(lines[i++].replace(/^\s*>\s?/, ""));
      const bq = document.createElement("blockquote");
      bq.appendChild(renderMarkdown(quoted.join("\n")));
      frag.appendChild(bq);
      continue;
    }
    const item = /^\s*([-*+]|\d+[.)])\s+(.*)$/.exec(line);
    if (item) {
      flush();
      const ordered = /\d/.test(item[1]);
      const list = document.createElement(ordered ? "ol" : "ul");
      while (i < lines.length) {
        const m = /^\s*([-*+]|\d+[.)])\s+(.*)$/.exec(lines[i]);
        if (!m) {
          if (/^\s{2,}\S/.test(lines[i]) && list.lastChild) {
            list.lastChild.appendChild(document.createTextNode(" "));
            inline(lines[i].trim(), list.lastChild);
            i++;
            continue;
          }
          break;
        }
        const li = document.createElement("li");
        inline(m[2], li);
        list.appendChild(li);
        i++;
      }
      frag.appendChild(list);
      continue;
    }
    if (line.trim() === "") {
      flush();
      i++;
      continue;
    }
    para.push(line.trim());
    i++;
  }
  flush();
  return frag;
}
