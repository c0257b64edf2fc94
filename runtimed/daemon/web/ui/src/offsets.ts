// Text offsets: the JS side (CodeMirror, the JS Automerge) counts UTF-16 code units; the
// Python side (the documents, the Python client) counts code points. "👋🏽" is 4 units and
// 2 code points; "é" written as e + U+0301 is 2 of each. Positions that cross the boundary
// (presence cursors) are converted here.

/** The code-point offset of UTF-16 offset ``units`` in ``text`` (an offset inside a
 * surrogate pair counts the pair as passed). */
export function unitsToCodePoints(text: string, units: number): number {
  const end = Math.max(0, Math.min(units, text.length));
  let points = 0;
  for (let i = 0; i < end; i++) {
    const c = text.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < text.length) {
      const d = text.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) i++;
    }
    points++;
  }
  return points;
}

/** The UTF-16 offset of code-point offset ``points`` in ``text`` (clamped to its length). */
export function codePointsToUnits(text: string, points: number): number {
  let units = 0;
  for (let p = 0; p < points && units < text.length; p++) {
    const c = text.charCodeAt(units);
    const d = text.charCodeAt(units + 1);
    units += c >= 0xd800 && c <= 0xdbff && d >= 0xdc00 && d <= 0xdfff ? 2 : 1;
  }
  return units;
}
