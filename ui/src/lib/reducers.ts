// Job state from job events: pure functions, so what the pages show is unit-tested.
import type { ChatChunk, DownloadEvent, ImportEvent, LocalModel, SampleAnswer, TrainEvent, AppError } from "../bindings";
import type { Point } from "./chart";

export type JobStatus = "running" | "finished" | "cancelled" | "failed";

export interface DownloadState {
  job: number;
  model: string;
  status: JobStatus;
  file: string;
  done: number;
  total: number;
  bytesPerSec: number;
  etaSecs: number | null;
  resumedBytes: number;
  path: string | null;
  error: AppError | null;
}

export type Downloads = Record<number, DownloadState>;

function blankDownload(job: number): DownloadState {
  return { job, model: "", status: "running", file: "", done: 0, total: 0, bytesPerSec: 0, etaSecs: null, resumedBytes: 0, path: null, error: null };
}

/** Applies one download event; returns a new map (the old one is not changed). */
export function reduceDownload(state: Downloads, ev: DownloadEvent): Downloads {
  const cur = state[ev.job] ?? blankDownload(ev.job);
  let next: DownloadState;
  switch (ev.kind) {
    case "started":
      next = { ...blankDownload(ev.job), model: ev.model, total: ev.total_bytes, done: ev.resumed_bytes, resumedBytes: ev.resumed_bytes };
      break;
    case "progress":
      // Events can arrive out of order across files: progress never goes backwards.
      next = { ...cur, file: ev.file, done: Math.max(cur.done, ev.done_bytes), total: ev.total_bytes || cur.total, bytesPerSec: ev.bytes_per_sec, etaSecs: ev.eta_secs };
      break;
    case "finished":
      next = { ...cur, status: "finished", path: ev.path, done: cur.total || cur.done, etaSecs: 0 };
      break;
    case "cancelled":
      next = { ...cur, status: "cancelled", done: ev.done_bytes, bytesPerSec: 0, etaSecs: null };
      break;
    case "failed":
      next = { ...cur, status: "failed", error: ev.error, bytesPerSec: 0, etaSecs: null };
      break;
  }
  return { ...state, [ev.job]: next };
}

export interface ImportState {
  job: number;
  status: JobStatus;
  name: string;
  done: number;
  total: number;
  model: LocalModel | null;
  error: AppError | null;
}

export type Imports = Record<number, ImportState>;

/** Applies one GGUF import event; returns a new map (the old one is not changed). */
export function reduceImport(state: Imports, ev: ImportEvent): Imports {
  const cur: ImportState = state[ev.job] ?? { job: ev.job, status: "running", name: "", done: 0, total: 0, model: null, error: null };
  let next: ImportState;
  switch (ev.kind) {
    case "started":
      next = { ...cur, status: "running", name: ev.name, total: ev.total_bytes, done: 0 };
      break;
    case "progress":
      next = { ...cur, done: Math.max(cur.done, ev.done_bytes), total: ev.total_bytes || cur.total };
      break;
    case "finished":
      next = { ...cur, status: "finished", model: ev.model, done: cur.total || cur.done };
      break;
    case "cancelled":
      next = { ...cur, status: "cancelled" };
      break;
    case "failed":
      next = { ...cur, status: "failed", error: ev.error };
      break;
  }
  return { ...state, [ev.job]: next };
}

export interface TrainState {
  job: number;
  status: JobStatus;
  totalSteps: number;
  resumedFrom: number;
  step: number;
  loss: Point[];
  evalLoss: Point[];
  lr: number;
  tokensPerSec: number;
  etaSecs: number | null;
  memoryBytes: number | null;
  lastCheckpoint: string | null;
  adapterDir: string | null;
  /** "none" until the run finishes; "pending" while the before/after answers are generated. */
  samplesStatus: "none" | "pending" | "done" | "failed";
  samples: SampleAnswer[];
  samplesError: AppError | null;
  error: AppError | null;
}

export function blankTrain(job: number): TrainState {
  return { job, status: "running", totalSteps: 0, resumedFrom: 0, step: 0, loss: [], evalLoss: [], lr: 0, tokensPerSec: 0, etaSecs: null, memoryBytes: null, lastCheckpoint: null, adapterDir: null, samplesStatus: "none", samples: [], samplesError: null, error: null };
}

/** The state of a resumed run (a new job on the same output folder): the curves so far carry
 *  over, so the chart shows the whole run, not only what the resumed job trains. */
export function resumedTrain(prev: TrainState | null, job: number): TrainState {
  return { ...blankTrain(job), loss: prev?.loss ?? [], evalLoss: prev?.evalLoss ?? [] };
}

/** Applies one training event. Events of another job are ignored. */
export function reduceTrain(s: TrainState, ev: TrainEvent): TrainState {
  if (ev.job !== s.job) return s;
  switch (ev.kind) {
    case "started": {
      // Points past the checkpoint it resumes from are trained again: they go.
      const kept = (p: Point) => p.x <= ev.resumed_from;
      return { ...s, status: "running", totalSteps: ev.total_steps, resumedFrom: ev.resumed_from, step: ev.resumed_from,
        loss: s.loss.filter(kept), evalLoss: s.evalLoss.filter(kept) };
    }
    case "step": {
      // A resumed run replays no steps; a repeated step replaces the old point.
      const loss = s.loss.filter((p) => p.x < ev.step).concat({ x: ev.step, y: ev.loss });
      return { ...s, step: ev.step, loss, lr: ev.lr, tokensPerSec: ev.tokens_per_sec, etaSecs: ev.eta_secs, memoryBytes: ev.memory_bytes };
    }
    case "eval":
      return { ...s, evalLoss: s.evalLoss.concat({ x: ev.step, y: ev.loss }) };
    case "checkpoint":
      return { ...s, lastCheckpoint: ev.path };
    case "finished":
      return { ...s, status: "finished", adapterDir: ev.adapter_dir, samplesStatus: "pending", etaSecs: 0 };
    case "samples":
      return { ...s, samples: ev.samples, samplesError: ev.error, samplesStatus: ev.error ? "failed" : "done" };
    case "cancelled":
      return { ...s, status: "cancelled", step: ev.step, etaSecs: null };
    case "failed":
      return { ...s, status: "failed", error: ev.error, etaSecs: null };
  }
}

export interface ChatStream {
  text: string;
  done: boolean;
  tokens: number;
  tokensPerSec: number;
  stopped: boolean;
  error: AppError | null;
}

export const blankChat = (): ChatStream => ({ text: "", done: false, tokens: 0, tokensPerSec: 0, stopped: false, error: null });

export function reduceChat(s: ChatStream, c: ChatChunk): ChatStream {
  if (s.done) return s;
  switch (c.kind) {
    case "token":
      return { ...s, text: s.text + c.text };
    case "done":
      return { ...s, done: true, tokens: c.tokens, tokensPerSec: c.tokens_per_sec, stopped: c.stopped };
    case "failed":
      return { ...s, done: true, error: c.error };
  }
}
