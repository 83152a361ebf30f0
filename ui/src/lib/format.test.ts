import { describe, expect, it } from "vitest";
import { formatBytes, formatEta, formatLoss, formatParams, formatPercent, formatRate, formatGpuReadings } from "./format";

describe("formatBytes", () => {
  it("uses binary units with three significant digits", () => {
    expect(formatBytes(0)).toBe("0 B");
    expect(formatBytes(1023)).toBe("1023 B");
    expect(formatBytes(1536)).toBe("1.50 KB");
    expect(formatBytes(269_060_552)).toBe("257 MB");
    expect(formatBytes(8 * 2 ** 30)).toBe("8.00 GB");
    expect(formatBytes(14.5 * 2 ** 30)).toBe("14.5 GB");
  });
  it("says unknown for nonsense", () => {
    expect(formatBytes(-1)).toBe("?");
    expect(formatBytes(NaN)).toBe("?");
  });
});

describe("formatEta", () => {
  it("picks the two largest units", () => {
    expect(formatEta(42.4)).toBe("42s");
    expect(formatEta(185)).toBe("3m 05s");
    expect(formatEta(3720)).toBe("1h 02m");
    expect(formatEta(3 * 86400 + 3600)).toBe("3d 1h");
  });
  it("shows a dash while unknown", () => {
    expect(formatEta(null)).toBe("–");
    expect(formatEta(Infinity)).toBe("–");
    expect(formatEta(-3)).toBe("–");
  });
});

describe("other formats", () => {
  it("rate, percent, params, loss", () => {
    expect(formatRate(0)).toBe("–");
    expect(formatRate(10 * 2 ** 20)).toBe("10.0 MB/s");
    expect(formatPercent(1, 3)).toBe("33.3%");
    expect(formatPercent(5, 0)).toBe("0.0%");
    expect(formatPercent(12, 10)).toBe("100.0%");
    expect(formatParams(0.135)).toBe("135M");
    expect(formatParams(7.24)).toBe("7.2B");
    expect(formatLoss(2.345678)).toBe("2.346");
  });
});

describe("gpu readings", () => {
  it("shows a missing reading as n/a, never 0", () => {
    expect(formatGpuReadings(37, 64)).toBe("37% busy · 64 °C");
    expect(formatGpuReadings(0, null)).toBe("0% busy · temperature n/a");
    expect(formatGpuReadings(null, null)).toBe("utilisation n/a · temperature n/a");
  });
});
