// The least DOM the pure renderers (ansi.ts, markdown.ts) use, for node --test: nodes built
// with createElement / createTextNode / createDocumentFragment, never parsed from HTML, so
// the shim never parses either. What a test reads: tagName, textContent, children, the
// attributes set as properties (href, src, ...), className/classList, style.

export class FakeNode {
  childNodes: FakeNode[] = [];
  parentNode: FakeNode | null = null;
  constructor(readonly nodeName: string, private text = "") {}
  get textContent(): string {
    return this.nodeName === "#text" ? this.text : this.childNodes.map((c) => c.textContent).join("");
  }
  set textContent(value: string) {
    if (this.nodeName === "#text") this.text = value;
    else this.childNodes = value ? [new FakeNode("#text", value)] : [];
  }
  get lastChild(): FakeNode | null {
    return this.childNodes.at(-1) ?? null;
  }
  appendChild(child: FakeNode): FakeNode {
    if (child.nodeName === "#document-fragment") {
      for (const c of child.childNodes) this.appendChild(c);
      child.childNodes = [];
      return child;
    }
    child.parentNode = this;
    this.childNodes.push(child);
    return child;
  }
  append(...nodes: Array<FakeNode | string>): void {
    for (const n of nodes) this.appendChild(typeof n === "string" ? new FakeNode("#text", n) : n);
  }
  /** Every element below this node, depth first. */
  elements(): FakeElement[] {
    const out: FakeElement[] = [];
    for (const c of this.childNodes) {
      if (c instanceof FakeElement) out.push(c);
      out.push(...c.elements());
    }
    return out;
  }
}

export class FakeElement extends FakeNode {
  className = "";
  style: Record<string, string> = {};
  [attr: string]: unknown;
  constructor(readonly tagName: string) {
    super(tagName.toUpperCase());
  }
  get classList() {
    const self = this;
    const names = () => self.className.split(/\s+/).filter(Boolean);
    return {
      add: (...c: string[]) => (self.className = [...new Set([...names(), ...c])].join(" ")),
      remove: (...c: string[]) => (self.className = names().filter((n) => !c.includes(n)).join(" ")),
      contains: (c: string) => names().includes(c),
    };
  }
  setAttribute(name: string, value: string): void {
    this[name] = value;
  }
}

export function installDom(): void {
  (globalThis as any).document = {
    createElement: (tag: string) => new FakeElement(tag),
    createTextNode: (text: string) => new FakeNode("#text", text),
    createDocumentFragment: () => new FakeNode("#document-fragment"),
  };
}
