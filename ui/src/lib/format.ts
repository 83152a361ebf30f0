// Formatting of sizes, speeds and times, shared by every page.

const UNITS = ["B", "KB", "MB", "GB", "TB"];

/** Bytes in binary units with at most three significant digits: 1536 -> "1.50 KB". */
export function formatBytes(bytes: number): string {
  if (!Number.isFinite(bytes) || bytes < 0) return "?";
  if (bytes < 1024) return `${Math.round(bytes)} B`;
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < UNITS.length - 1) {
    v /= 1024;
    i++;
  }
  const digits = v >= 100 ? 0 : v >= 10 ? 1 : 2;
  return `${v.toFixed(digits)} ${UNITS[i]}`;
}

/** A speed in bytes per second: "12.3 MB/s". */
export function formatRate(bytesPerSec: number): string {
  if (!Number.isFinite(bytesPerSec) || bytesPerSec <= 0) return "–";
  return `${formatBytes(bytesPerSec)}/s`;
}

/** Seconds as "1h 02m", "3m 05s", "42s"; unknown (null, negative, infinite) as "–". */
export function formatEta(secs: number | null | undefined): string {
  if (secs == null || !Number.isFinite(secs) || secs < 0) return "–";
  const s = Math.round(secs);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(s % 60).padStart(2, "0")}s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h ${String(m % 60).padStart(2, "0")}m`;
  return `${Math.floor(h / 24)}d ${h % 24}h`;
}

/** A fraction as a percentage with one decimal, clamped to 0–100. */
export function formatPercent(done: number, total: number): string {
  if (!(total > 0)) return "0.0%";
  const p = Math.min(100, Math.max(0, (done / total) * 100));
  return `${p.toFixed(1)}%`;
}

/** Parameters in billions: 0.135 -> "135M", 7.2 -> "7.2B". */
export function formatParams(billions: number): string {
  if (billions < 1) return `${Math.round(billions * 1000)}M`;
  return `${Number(billions.toFixed(1))}B`;
}

/** A loss or other small float with 4 significant digits. */
export function formatLoss(x: number): string {
  return Number.isFinite(x) ? x.toPrecision(4) : "nan";
}

/** A GPU's load and temperature, or that the card does not report them. */
export function formatGpuReadings(utilizationPercent: number | null, temperatureC: number | null): string {
  const busy = utilizationPercent == null ? "utilisation n/a" : `${utilizationPercent}% busy`;
  const temp = temperatureC == null ? "temperature n/a" : `${temperatureC} °C`;
  return `${busy} · ${temp}`;
}
