// What the Models page says about a Hub model before it is downloaded: a search hit's line,
// a detail's facts, and its files ordered for reading. Pure, so it is unit-tested.
import type { GpuView, ModelDetail, ModelHit, RepoFile } from "../bindings";
import { formatBytes } from "./format";

/** Counts as the Hub shows them: 950, 1.2k, 3.4M. */
export function formatCount(n: number): string {
  if (!Number.isFinite(n) || n < 0) return "?";
  if (n < 1000) return String(Math.round(n));
  if (n < 1_000_000) return `${Number((n / 1000).toFixed(1))}k`;
  return `${Number((n / 1_000_000).toFixed(1))}M`;
}

/** One line under a search hit: downloads, likes, task, gated. */
export function hitLine(m: ModelHit): string {
  const parts = [`${formatCount(m.downloads)} downloads`, `${formatCount(m.likes)} likes`];
  if (m.pipeline_tag) parts.push(m.pipeline_tag);
  if (m.gated) parts.push("gated: accept the licence on the Hub and set a token");
  return parts.join(" · ");
}

/** The facts line of a model's details. */
export function detailFacts(d: ModelDetail): string {
  const parts = [`licence ${d.license ?? "not stated"}`, `download size ${formatBytes(d.download_bytes)} (repository ${formatBytes(d.repo_bytes)})`];
  if (d.pipeline_tag) parts.push(d.pipeline_tag);
  if (!d.from_cache) parts.push(`${formatCount(d.downloads)} downloads`);
  if (d.gated) parts.push("gated");
  if (d.cached) parts.push("in the cache");
  if (d.from_cache) parts.push("offline: read from the cache");
  parts.push(`revision ${d.revision.slice(0, 10)}`);
  return parts.join(" · ");
}

/** The files a download fetches first (largest first), then the others (largest first). */
export function orderFiles(files: RepoFile[]): RepoFile[] {
  return [...files].sort((a, b) => Number(b.selected) - Number(a.selected) || b.size - a.size || a.path.localeCompare(b.path));
}

/** A summary, or what to say when the card has none. */
export function summaryText(d: ModelDetail): string {
  if (d.summary.trim()) return d.summary;
  if (d.from_cache) return "Offline: the model card was not downloaded with the model; it shows here when the Hub can be reached.";
  if (d.gated) return "The model card is behind the licence: accept it on the Hub and set a token in Settings to read it.";
  return "This model has no card text.";
}

/** How Settings names a compute device. */
export function deviceLabel(id: string, gpus: GpuView[]): string {
  if (id === "auto") return "auto: the GPU when this build has CUDA and one answers, else the CPU";
  if (id === "cpu") return "CPU";
  const m = /^cuda:(\d+)$/.exec(id);
  const g = m ? gpus.find((x) => x.index === Number(m[1])) : undefined;
  return g ? `${id}: ${g.name}` : id;
}
