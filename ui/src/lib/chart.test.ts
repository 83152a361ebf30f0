import { describe, expect, it } from "vitest";
import { decimate, linePath, niceScale, niceStep, project, stackWidths } from "./chart";

describe("scales", () => {
  it("picks 1-2-5 steps", () => {
    expect(niceStep(10, 5)).toBe(2);
    expect(niceStep(0.9, 5)).toBeCloseTo(0.2);
    expect(niceStep(700, 5)).toBe(200);
    expect(niceStep(0, 5)).toBe(1);
  });
  it("covers every value with nice ends", () => {
    const s = niceScale([2.31, 3.97, 1.12]);
    expect(s.min).toBeLessThanOrEqual(1.12);
    expect(s.max).toBeGreaterThanOrEqual(3.97);
    expect(s.ticks[0]).toBe(s.min);
    expect(s.ticks[s.ticks.length - 1]).toBe(s.max);
    expect(s).toEqual({ min: 1, max: 4, ticks: [1, 2, 3, 4] });
  });
  it("widens a flat series and survives empty input", () => {
    const flat = niceScale([5, 5]);
    expect(flat.min).toBeLessThan(5);
    expect(flat.max).toBeGreaterThan(5);
    expect(niceScale([])).toEqual({ min: 0, max: 1, ticks: [0, 1] });
    expect(niceScale([NaN, 2]).min).toBeLessThanOrEqual(2);
  });
  it("projects onto a reversed axis", () => {
    expect(project(0, 0, 10, 100, 0)).toBe(100);
    expect(project(10, 0, 10, 100, 0)).toBe(0);
    expect(project(3, 3, 3, 0, 50)).toBe(25);
  });
});

describe("paths and bars", () => {
  it("draws a falling loss from top left to bottom right", () => {
    const d = linePath([{ x: 0, y: 4 }, { x: 10, y: 1 }], 100, 50);
    expect(d).toBe("M0.0,0.0 L100.0,50.0");
    expect(linePath([], 100, 50)).toBe("");
  });
  it("scales bars to the larger of total and budget", () => {
    const fits = stackWidths([2, 2], 8, 400);
    expect(fits.widths).toEqual([100, 100]);
    expect(fits.budgetX).toBe(400);
    const over = stackWidths([6, 4], 5, 100);
    expect(over.widths).toEqual([60, 40]);
    expect(over.budgetX).toBe(50);
  });
  it("decimates long series but keeps the last point", () => {
    const pts = Array.from({ length: 1001 }, (_, i) => i);
    const d = decimate(pts, 100);
    expect(d.length).toBeLessThanOrEqual(101);
    expect(d[0]).toBe(0);
    expect(d[d.length - 1]).toBe(1000);
    expect(decimate([1, 2, 3], 10)).toEqual([1, 2, 3]);
  });
});
