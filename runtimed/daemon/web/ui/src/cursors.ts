// Other viewers' cursors and selections inside a cell's editor (CodeMirror decorations),
// from the presence messages (docs/web.md "Presence"): ephemeral, never in the document.
// Positions arrive in code points (what the documents count) and are converted to the
// editor's UTF-16 offsets against its current text; between two presence messages they
// move with the text (mapped through every change).

import { type Range, StateEffect, StateField } from "@codemirror/state";
import { Decoration, type DecorationSet, EditorView, WidgetType } from "@codemirror/view";
import { codePointsToUnits } from "./offsets";

export interface RemoteCursor {
  viewerId: string;
  name: string;
  colour: string;
  anchor: number; // code points
  head: number; // code points
}

class CaretWidget extends WidgetType {
  constructor(
    readonly name: string,
    readonly colour: string,
  ) {
    super();
  }
  eq(other: CaretWidget): boolean {
    return other.name === this.name && other.colour === this.colour;
  }
  toDOM(): HTMLElement {
    const caret = document.createElement("span");
    caret.className = "remote-caret";
    caret.style.borderColor = this.colour;
    const label = document.createElement("span");
    label.className = "remote-caret-label";
    label.style.backgroundColor = this.colour;
    label.textContent = this.name;
    caret.append(label);
    return caret;
  }
  ignoreEvent(): boolean {
    return true;
  }
}

const setCursors = StateEffect.define<RemoteCursor[]>();

const cursorField = StateField.define<DecorationSet>({
  create: () => Decoration.none,
  update(value, tr) {
    let next = value.map(tr.changes);
    for (const effect of tr.effects) {
      if (!effect.is(setCursors)) continue;
      const text = tr.state.doc.toString();
      const ranges: Range<Decoration>[] = [];
      for (const c of effect.value) {
        const anchor = codePointsToUnits(text, c.anchor);
        const head = codePointsToUnits(text, c.head);
        const from = Math.min(anchor, head);
        const to = Math.max(anchor, head);
        if (to > from) {
          ranges.push(
            Decoration.mark({
              class: "remote-selection",
              attributes: { style: `background-color: ${c.colour}33`, "data-viewer": c.viewerId },
            }).range(from, to),
          );
        }
        ranges.push(
          Decoration.widget({ widget: new CaretWidget(c.name, c.colour), side: 1 }).range(head),
        );
      }
      next = Decoration.set(ranges, true);
    }
    return next;
  },
  provide: (f) => EditorView.decorations.from(f),
});

/** The editor extension that shows remote cursors. */
export const remoteCursors = cursorField;

export function showRemoteCursors(view: EditorView, cursors: RemoteCursor[]): void {
  view.dispatch({ effects: setCursors.of(cursors) });
}
