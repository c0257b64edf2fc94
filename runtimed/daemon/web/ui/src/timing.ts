// User Timing entries (performance.measure): what the page spends its time on, for the
// benchmark (bench/bench_web.py) and anyone's profiler; no debug globals. Entries of one
// name are capped so a long session (a measure per sync message) does not grow the buffer.

const CAP = 200;
const counts = new Map<string, number>();

export function measure(name: string, start: number, detail?: unknown): void {
  const n = (counts.get(name) ?? 0) + 1;
  if (n > CAP) {
    performance.clearMeasures(name);
    counts.set(name, 1);
  } else counts.set(name, n);
  performance.measure(name, { start, detail });
}
