// Stream text as Jupyter front ends show it: a "\r" not followed by "\n" discards what came
// before it on that line (so a progress bar redrawn with "\r" shows its latest state), and
// "\b" deletes the previous character.

export function fixCarriageReturns(text: string): string {
  if (text.includes("\r")) {
    text = text.replace(/\r+\n/g, "\n").replace(/^.*\r+/gm, "");
  }
  if (text.includes("\b")) {
    let out = text;
    let prev;
    do {
      prev = out;
      out = out.replace(/[^\n\b]\x08/g, "");
    } while (out !== prev);
    text = out.replace(/\x08/g, "");
  }
  return text;
}
