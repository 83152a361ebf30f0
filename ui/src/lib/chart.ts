// Chart maths (scales, ticks, paths) kept apart from the SVG so it can be unit-tested.

export interface Point {
  x: number;
  y: number;
}

export interface Scale {
  min: number;
  max: number;
  ticks: number[];
}

/** A "nice" step (1, 2 or 5 times a power of ten) so about `count` ticks cover `span`. */
export function niceStep(span: number, count = 5): number {
  if (!(span > 0) || !Number.isFinite(span)) return 1;
  const raw = span / Math.max(1, count);
  const pow = Math.pow(10, Math.floor(Math.log10(raw)));
  const f = raw / pow;
  const nice = f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10;
  return nice * pow;
}

/** A scale whose ends are multiples of a nice step and cover every value. */
export function niceScale(values: number[], count = 5): Scale {
  const finite = values.filter(Number.isFinite);
  if (finite.length === 0) return { min: 0, max: 1, ticks: [0, 1] };
  let lo = Math.min(...finite);
  let hi = Math.max(...finite);
  if (lo === hi) {
    const pad = lo === 0 ? 1 : Math.abs(lo) * 0.1;
    lo -= pad;
    hi += pad;
  }
  const step = niceStep(hi - lo, count);
  const min = Math.floor(lo / step) * step;
  const max = Math.ceil(hi / step) * step;
  const ticks: number[] = [];
  for (let t = min; t <= max + step / 2; t += step) ticks.push(Number(t.toPrecision(12)));
  return { min, max, ticks };
}

/** Maps a value of [min, max] onto [a, b] (b may be smaller than a, as for a y axis). */
export function project(v: number, min: number, max: number, a: number, b: number): number {
  if (max === min) return (a + b) / 2;
  return a + ((v - min) / (max - min)) * (b - a);
}

/** The SVG path of a line through the points, in a box of width x height with a margin. */
export function linePath(points: Point[], width: number, height: number, margin = 0): string {
  if (points.length === 0) return "";
  const xs = niceScale(points.map((p) => p.x));
  const ys = niceScale(points.map((p) => p.y));
  return points
    .map((p, i) => {
      const x = project(p.x, xs.min, xs.max, margin, width - margin);
      const y = project(p.y, ys.min, ys.max, height - margin, margin);
      return `${i === 0 ? "M" : "L"}${x.toFixed(1)},${y.toFixed(1)}`;
    })
    .join(" ");
}

/** Widths (in the same unit as `width`) of stacked bars for a breakdown, against a budget:
 *  the bar scale covers whichever is larger, the total or the budget. */
export function stackWidths(parts: number[], budget: number, width: number): { widths: number[]; budgetX: number } {
  const total = parts.reduce((a, b) => a + Math.max(0, b), 0);
  const full = Math.max(total, budget, 1);
  return {
    widths: parts.map((p) => (Math.max(0, p) / full) * width),
    budgetX: (budget / full) * width,
  };
}

/** Keeps at most `max` points by taking every n-th (always keeping the last), so a long run
 *  does not slow the chart. */
export function decimate<T>(points: T[], max: number): T[] {
  if (points.length <= max || max < 2) return points;
  const step = Math.ceil(points.length / (max - 1));
  const out = points.filter((_, i) => i % step === 0);
  if (out[out.length - 1] !== points[points.length - 1]) out.push(points[points.length - 1]);
  return out;
}
