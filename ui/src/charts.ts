// SVG charts: a line chart (training loss) and a stacked bar against a budget (planner).
// The maths is in lib/chart.ts; this only draws.
import { svg, h } from "./dom";
import { decimate, niceScale, project, stackWidths, type Point } from "./lib/chart";
import { formatBytes } from "./lib/format";

export interface Series {
  name: string;
  points: Point[];
  cls: string;
}

/** A line chart of one or more series, with axis ticks. */
export function lineChart(series: Series[], width = 560, height = 220, testId = "chart"): SVGElement {
  const m = { l: 44, r: 10, t: 10, b: 24 };
  const all = series.flatMap((s) => s.points);
  const xs = niceScale(all.map((p) => p.x), 6);
  const ys = niceScale(all.map((p) => p.y), 4);
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", "data-testid": testId, "data-points": all.length });
  const X = (x: number) => project(x, xs.min, xs.max, m.l, width - m.r);
  const Y = (y: number) => project(y, ys.min, ys.max, height - m.b, m.t);
  for (const t of ys.ticks) {
    root.append(svg("line", { x1: m.l, x2: width - m.r, y1: Y(t), y2: Y(t), class: "grid" }));
    root.append(svg("text", { x: m.l - 6, y: Y(t) + 4, class: "tick", "text-anchor": "end" }, String(t)));
  }
  for (const t of xs.ticks) root.append(svg("text", { x: X(t), y: height - 6, class: "tick", "text-anchor": "middle" }, String(t)));
  for (const s of series) {
    const pts = decimate(s.points, 400);
    if (pts.length === 0) continue;
    const d = pts.map((p, i) => `${i ? "L" : "M"}${X(p.x).toFixed(1)},${Y(p.y).toFixed(1)}`).join(" ");
    root.append(svg("path", { d, class: `line ${s.cls}` }));
    if (pts.length === 1) root.append(svg("circle", { cx: X(pts[0].x), cy: Y(pts[0].y), r: 3, class: `dot ${s.cls}` }));
  }
  if (all.length === 0) root.append(svg("text", { x: width / 2, y: height / 2, class: "empty", "text-anchor": "middle" }, "waiting for the first step…"));
  return root;
}

/** A horizontal stacked bar of a memory breakdown with the budget marked, and a legend. */
export function breakdownBar(items: { label: string; bytes: number }[], budget: number, testId = "breakdown"): HTMLElement {
  const width = 560;
  const { widths, budgetX } = stackWidths(items.map((i) => i.bytes), budget, width);
  const root = svg("svg", { viewBox: `0 0 ${width} 46`, class: "bar-chart" });
  let x = 0;
  widths.forEach((w, i) => {
    root.append(svg("rect", { x, y: 6, width: Math.max(0, w), height: 26, class: `seg seg-${i % 8}` }, svg("title", {}, `${items[i].label}: ${formatBytes(items[i].bytes)}`)));
    x += w;
  });
  root.append(svg("line", { x1: budgetX, x2: budgetX, y1: 0, y2: 38, class: "budget" }));
  root.append(svg("text", { x: Math.min(budgetX, width - 4), y: 45, class: "tick", "text-anchor": budgetX > width - 60 ? "end" : "middle" }, `budget ${formatBytes(budget)}`));
  const legend = h("ul", { class: "legend" }, ...items.map((it, i) => h("li", {}, h("span", { class: `swatch seg-${i % 8}` }), `${it.label} `, h("b", {}, formatBytes(it.bytes)))));
  return h("div", { class: "breakdown", "data-testid": testId }, root, legend);
}
