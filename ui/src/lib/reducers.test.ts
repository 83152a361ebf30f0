import { describe, expect, it } from "vitest";
import { blankChat, blankTrain, reduceChat, reduceDownload, reduceImport, reduceTrain, resumedTrain, type Downloads } from "./reducers";
import type { DownloadEvent, ImportEvent, TrainEvent } from "../bindings";

describe("download events", () => {
  it("start, progress, cancel, resume, finish", () => {
    const evs: DownloadEvent[] = [
      { kind: "started", job: 1, model: "a/b", total_bytes: 1000, resumed_bytes: 0 },
      { kind: "progress", job: 1, file: "model.safetensors", done_bytes: 400, total_bytes: 1000, bytes_per_sec: 100, eta_secs: 6 },
      { kind: "progress", job: 1, file: "model.safetensors", done_bytes: 300, total_bytes: 1000, bytes_per_sec: 90, eta_secs: 7 },
      { kind: "cancelled", job: 1, done_bytes: 400 },
    ];
    let s: Downloads = {};
    for (const e of evs) s = reduceDownload(s, e);
    expect(s[1]).toMatchObject({ status: "cancelled", done: 400, total: 1000, etaSecs: null });
    // A late, smaller progress count did not move the bar back before the cancel.
    s = reduceDownload(s, { kind: "started", job: 2, model: "a/b", total_bytes: 1000, resumed_bytes: 400 });
    expect(s[2]).toMatchObject({ status: "running", done: 400, resumedBytes: 400 });
    s = reduceDownload(s, { kind: "finished", job: 2, path: "/cache/a" });
    expect(s[2]).toMatchObject({ status: "finished", done: 1000, path: "/cache/a" });
    expect(s[1].status).toBe("cancelled");
  });
  it("keeps the error of a failed job", () => {
    const s = reduceDownload({}, { kind: "failed", job: 3, error: { code: "offline", message: "connection refused" } });
    expect(s[3].status).toBe("failed");
    expect(s[3].error?.code).toBe("offline");
  });
});

describe("training events", () => {
  it("builds the loss series and the result", () => {
    const evs: TrainEvent[] = [
      { kind: "started", job: 7, total_steps: 3, resumed_from: 0 },
      { kind: "step", job: 7, step: 1, loss: 3.2, lr: 1e-4, tokens_per_sec: 50, eta_secs: 4, memory_bytes: null },
      { kind: "step", job: 8, step: 1, loss: 99, lr: 1, tokens_per_sec: 1, eta_secs: 1, memory_bytes: null },
      { kind: "step", job: 7, step: 2, loss: 2.9, lr: 2e-4, tokens_per_sec: 55, eta_secs: 2, memory_bytes: 1024 },
      { kind: "eval", job: 7, step: 2, loss: 3.0 },
      { kind: "finished", job: 7, adapter_dir: "/runs/a/adapter" },
    ];
    const s = evs.reduce(reduceTrain, blankTrain(7));
    expect(s.samplesStatus).toBe("pending");
    expect(s.loss).toEqual([{ x: 1, y: 3.2 }, { x: 2, y: 2.9 }]);
    expect(s.evalLoss).toEqual([{ x: 2, y: 3.0 }]);
    expect(s).toMatchObject({ status: "finished", step: 2, lr: 2e-4, memoryBytes: 1024, adapterDir: "/runs/a/adapter" });
  });
  it("sample answers arrive after the run finishes, or say why they did not", () => {
    let s = reduceTrain(blankTrain(7), { kind: "finished", job: 7, adapter_dir: "/runs/a/adapter" });
    const ok = reduceTrain(s, { kind: "samples", job: 7, samples: [{ prompt: "hi", before: "x", after: "y" }], error: null });
    expect(ok).toMatchObject({ samplesStatus: "done", samples: [{ prompt: "hi", before: "x", after: "y" }], adapterDir: "/runs/a/adapter" });
    s = reduceTrain(s, { kind: "samples", job: 7, samples: [], error: { code: "cancelled", message: "cancelled" } });
    expect(s).toMatchObject({ samplesStatus: "failed", status: "finished" });
    expect(s.samplesError?.code).toBe("cancelled");
    expect(reduceTrain(s, { kind: "samples", job: 8, samples: [], error: null })).toBe(s);
  });
  it("a resumed run continues the series without duplicates", () => {
    let s = blankTrain(1);
    s = reduceTrain(s, { kind: "step", job: 1, step: 1, loss: 3, lr: 0, tokens_per_sec: 0, eta_secs: null, memory_bytes: null });
    s = reduceTrain(s, { kind: "step", job: 1, step: 2, loss: 2.5, lr: 0, tokens_per_sec: 0, eta_secs: null, memory_bytes: null });
    s = reduceTrain(s, { kind: "cancelled", job: 1, step: 2 });
    expect(s.status).toBe("cancelled");
    s = reduceTrain({ ...s, job: 1 }, { kind: "started", job: 1, total_steps: 4, resumed_from: 2 });
    s = reduceTrain(s, { kind: "step", job: 1, step: 2, loss: 2.4, lr: 0, tokens_per_sec: 0, eta_secs: null, memory_bytes: null });
    expect(s.loss).toEqual([{ x: 1, y: 3 }, { x: 2, y: 2.4 }]);
    expect(s.status).toBe("running");
  });
});

describe("GGUF import events", () => {
  const model = { name: "tiny", path: "/m/tiny", bytes: 10, ready: true, missing: [], imported: true };
  it("start, progress, finish; jobs kept apart", () => {
    const evs: ImportEvent[] = [
      { kind: "started", job: 3, file: "/x/tiny.gguf", name: "tiny", total_bytes: 1000 },
      { kind: "progress", job: 3, done_bytes: 400, total_bytes: 1000 },
      { kind: "started", job: 4, file: "/x/other.gguf", name: "other", total_bytes: 50 },
      { kind: "progress", job: 3, done_bytes: 1000, total_bytes: 1000 },
      { kind: "finished", job: 3, model },
    ];
    const s = evs.reduce(reduceImport, {});
    expect(s[3]).toMatchObject({ status: "finished", name: "tiny", done: 1000, total: 1000, model, error: null });
    expect(s[4]).toMatchObject({ status: "running", name: "other", done: 0, total: 50 });
  });
  it("a cancel or a failure ends the job with what happened", () => {
    const start: ImportEvent = { kind: "started", job: 1, file: "/x/a.gguf", name: "a", total_bytes: 10 };
    expect(reduceImport(reduceImport({}, start), { kind: "cancelled", job: 1 })[1].status).toBe("cancelled");
    const failed = reduceImport(reduceImport({}, start), { kind: "failed", job: 1, error: { code: "bad_format", message: "gguf a.gguf: bad" } });
    expect(failed[1]).toMatchObject({ status: "failed", error: { code: "bad_format" } });
  });
});

describe("a resumed run", () => {
  const step = (job: number, n: number, loss: number): TrainEvent => ({ kind: "step", job, step: n, loss, lr: 0, tokens_per_sec: 0, eta_secs: null, memory_bytes: null });
  it("keeps the curve up to the checkpoint it resumes from, under the new job", () => {
    let s = [step(1, 1, 3), step(1, 2, 2.5), { kind: "eval", job: 1, step: 2, loss: 2.7 } as TrainEvent, step(1, 3, 2.2), step(1, 4, 2.0),
      { kind: "cancelled", job: 1, step: 4 } as TrainEvent].reduce(reduceTrain, blankTrain(1));
    s = resumedTrain(s, 2);
    expect(s).toMatchObject({ job: 2, status: "running", step: 0 });
    // Events of the old job no longer apply.
    expect(reduceTrain(s, step(1, 5, 1))).toBe(s);
    // It resumes from the checkpoint at step 2: steps 3 and 4 are trained again.
    s = reduceTrain(s, { kind: "started", job: 2, total_steps: 6, resumed_from: 2 });
    expect(s.loss).toEqual([{ x: 1, y: 3 }, { x: 2, y: 2.5 }]);
    expect(s.evalLoss).toEqual([{ x: 2, y: 2.7 }]);
    s = [step(2, 3, 2.1), step(2, 4, 1.9)].reduce(reduceTrain, s);
    expect(s.loss.map((p) => p.x)).toEqual([1, 2, 3, 4]);
    expect(s.loss[2].y).toBe(2.1);
  });
  it("starts an empty curve when there is no checkpoint to resume from", () => {
    let s = [step(1, 1, 3)].reduce(reduceTrain, blankTrain(1));
    s = reduceTrain(resumedTrain(s, 2), { kind: "started", job: 2, total_steps: 6, resumed_from: 0 });
    expect(s.loss).toEqual([]);
  });
});

describe("chat stream", () => {
  it("appends tokens and stops at done", () => {
    let s = blankChat();
    s = reduceChat(s, { kind: "token", text: "Hel" });
    s = reduceChat(s, { kind: "token", text: "lo" });
    s = reduceChat(s, { kind: "done", tokens: 2, tokens_per_sec: 10, stopped: true });
    s = reduceChat(s, { kind: "token", text: " late" });
    expect(s).toMatchObject({ text: "Hello", done: true, stopped: true, tokens: 2 });
  });
});
