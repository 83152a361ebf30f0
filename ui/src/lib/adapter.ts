// Chat with a LoRA adapter: which answers one Send asks for (base, base + adapter, or both side
// by side, one after the other on the same loaded model), and how an attached adapter reads.
import type { AdapterInfo } from "../bindings";

/** One answer to stream: the adapter (null = the base model) and its scale. */
export interface ChatRun {
  adapter: string | null;
  scale: number;
  label: string;
  testid: "answer" | "answer-adapter";
}

/** The slider's range: 0 is the base model, 1 the adapter as trained. */
export const SCALE_MIN = 0;
export const SCALE_MAX = 2;

/** A scale the shell accepts, or a message saying what is wrong. */
export function checkScale(scale: number): string | null {
  if (!Number.isFinite(scale) || scale < SCALE_MIN || scale > SCALE_MAX) return `adapter scale must be between ${SCALE_MIN} (base) and ${SCALE_MAX}`;
  return null;
}

/** The slider's label. */
export function scaleLabel(scale: number): string {
  return scale === 0 ? "0.00 (base)" : scale.toFixed(2);
}

/** The answers one Send streams, in order (side by side: the base first, then the adapter). */
export function chatRuns(adapter: string | null, scale: number, sideBySide: boolean): ChatRun[] {
  const dir = adapter?.trim() || null;
  const base: ChatRun = { adapter: null, scale: 0, label: "base", testid: "answer" };
  if (!dir) return [base];
  const tuned: ChatRun = { adapter: dir, scale, label: scale === 0 ? "base (adapter at scale 0)" : `base + adapter × ${scale.toFixed(2)}`, testid: "answer-adapter" };
  return sideBySide ? [base, tuned] : [tuned];
}

/** The last folder name of a path. */
export function folderName(path: string): string {
  const parts = path.replace(/[\\/]+$/, "").split(/[\\/]/);
  return parts[parts.length - 1] || path;
}

/** The last two folder names of a path (`demo-run/adapter`): enough to tell runs apart. */
export function shortPath(path: string): string {
  const parts = path.replace(/[\\/]+$/, "").split(/[\\/]/).filter(Boolean);
  return parts.slice(-2).join("/") || path;
}

/** One line about an attached adapter. */
export function adapterSummary(a: AdapterInfo): string {
  const trained = a.base_model ? ` · trained on ${folderName(a.base_model)}` : "";
  return `Attached ${shortPath(a.dir)}: r=${a.rank}, alpha=${a.alpha}, on ${a.modules} layers${trained}`;
}
