// CodeMirror 6 editors bound to a cell's source in the replica: every local change goes
// into the replica as splices (per keystroke), every remote change comes back as a minimal
// CodeMirror change (so the cursor stays where it was).

import { defaultKeymap, history, historyKeymap, indentWithTab } from "@codemirror/commands";
import { python } from "@codemirror/lang-python";
import { bracketMatching, defaultHighlightStyle, indentOnInput, syntaxHighlighting } from "@codemirror/language";
import { Annotation, EditorState, type Extension } from "@codemirror/state";
import { remoteCursors } from "./cursors";
import { unitsToCodePoints } from "./offsets";
import { drawSelection, EditorView, highlightActiveLine, keymap, placeholder } from "@codemirror/view";

const remote = Annotation.define<boolean>();

export { showRemoteCursors, type RemoteCursor } from "./cursors";

export interface EditorHooks {
  onEdit(edits: Array<[number, number, string]>): void;
  /** The local selection moved (offsets in code points, as the documents count). */
  onSelection(anchor: number, head: number): void;
  onFocus(): void;
  onBlur(): void;
  runAndAdvance(): void;
  runInPlace(): void;
  escape(): void;
}

export function createEditor(
  parent: HTMLElement,
  text: string,
  language: "python" | "plain",
  nonce: string,
  hooks: EditorHooks,
): EditorView {
  const extensions: Extension[] = [
    EditorView.cspNonce.of(nonce),
    history(),
    drawSelection(),
    highlightActiveLine(),
    indentOnInput(),
    bracketMatching(),
    syntaxHighlighting(defaultHighlightStyle, { fallback: true }),
    placeholder(language === "python" ? "code" : "markdown"),
    keymap.of([
      { key: "Shift-Enter", run: () => (hooks.runAndAdvance(), true) },
      { key: "Mod-Enter", run: () => (hooks.runInPlace(), true) },
      { key: "Escape", run: () => (hooks.escape(), true) },
      ...defaultKeymap,
      ...historyKeymap,
      indentWithTab,
    ]),
    EditorView.lineWrapping,
    remoteCursors,
    EditorView.updateListener.of((update) => {
      if (update.focusChanged) (update.view.hasFocus ? hooks.onFocus : hooks.onBlur)();
      if ((update.selectionSet || update.docChanged || update.focusChanged) && update.view.hasFocus) {
        const main = update.state.selection.main;
        const text = update.state.doc.toString();
        hooks.onSelection(unitsToCodePoints(text, main.anchor), unitsToCodePoints(text, main.head));
      }
      if (!update.docChanged) return;
      if (update.transactions.some((tr) => tr.annotation(remote))) return;
      // Changes come in document order; applied one after another, each starts at its
      // position in the new document (fromB) and removes (toA - fromA) characters.
      const edits: Array<[number, number, string]> = [];
      update.changes.iterChanges((fromA, toA, fromB, _toB, inserted) => {
        edits.push([fromB, toA - fromA, inserted.toString()]);
      });
      hooks.onEdit(edits);
    }),
  ];
  if (language === "python") extensions.push(python());
  return new EditorView({ parent, state: EditorState.create({ doc: text, extensions }) });
}

/** Bring the editor to ``text`` with one minimal change (common prefix and suffix kept). */
export function applyRemoteText(view: EditorView, text: string): void {
  const old = view.state.doc.toString();
  if (old === text) return;
  let start = 0;
  const max = Math.min(old.length, text.length);
  while (start < max && old.charCodeAt(start) === text.charCodeAt(start)) start++;
  let endOld = old.length;
  let endNew = text.length;
  while (endOld > start && endNew > start && old.charCodeAt(endOld - 1) === text.charCodeAt(endNew - 1)) {
    endOld--;
    endNew--;
  }
  view.dispatch({
    changes: { from: start, to: endOld, insert: text.slice(start, endNew) },
    annotations: [remote.of(true)],
  });
}
