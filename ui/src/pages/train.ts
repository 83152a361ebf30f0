// The Train wizard: base model → dataset (preview and preflight) → preset and knobs with the
// planner's verdict live → the run (loss chart, LR, tokens/s, ETA, GPU memory, cancel, resume)
// → the result (adapter, answers before and after).
import { call } from "../api";
import type { AppError, LocalModel, TrainRequest } from "../bindings";
import { open } from "@tauri-apps/plugin-dialog";
import { lineChart } from "../charts";
import { h, append, clear, errorBox, field, liveView, notice, numberInput, textInput } from "../dom";
import { formatBytes, formatEta, formatLoss } from "../lib/format";
import { validateTrain, type TrainForm } from "../lib/validate";
import { go } from "../nav";
import { state, subscribe, startTraining } from "../store";
import { planView, toRequest } from "./planner";

const STEPS = ["Base model", "Dataset", "Settings", "Run", "Result"];

interface Wizard {
  step: number;
  form: TrainForm;
  config: string;
}

const wiz: Wizard = {
  step: 0,
  config: "",
  // The knobs start at configs/demo_smollm2.yaml's values; what the user changes is what runs.
  form: { baseModel: "", dataset: "", outputDir: "", steps: 12, learningRate: 3e-3, loraRank: 8, loraAlpha: 16, batchSize: 4, context: 96 },
};

function request(resume: boolean): TrainRequest {
  const f = wiz.form;
  return { base_model: f.baseModel, dataset: f.dataset, config: wiz.config || null, output_dir: f.outputDir, steps: f.steps, learning_rate: f.learningRate, lora_rank: f.loraRank, lora_alpha: f.loraAlpha, batch_size: f.batchSize, context: f.context, resume };
}

function stepper(): HTMLElement {
  return h("ol", { class: "stepper" }, ...STEPS.map((s, i) => h("li", { class: i === wiz.step ? "active" : i < wiz.step ? "done" : "" }, s)));
}

function chooseBase(body: HTMLElement, next: () => void): void {
  const input = textInput("train-base", wiz.form.baseModel, "a local model folder or a Hub id");
  const list = h("div", { class: "grid" });
  call("list_local_models", {}).then((ms: LocalModel[]) => {
    for (const m of ms.filter((m) => m.ready)) list.append(h("button", { class: "card pick", onclick: () => { input.value = m.path; } }, h("b", {}, m.name), h("div", { class: "muted" }, formatBytes(m.bytes))));
  }).catch(() => {});
  body.append(field("Base model", input), list,
    h("button", { class: "primary", "data-testid": "wizard-next", onclick: () => { wiz.form.baseModel = input.value.trim(); next(); } }, "Next"));
}

function chooseDataset(body: HTMLElement, next: () => void): void {
  const config = textInput("train-config", wiz.config, "/path/to/configs/demo_smollm2.yaml");
  const input = textInput("train-dataset", wiz.form.dataset, "/path/to/train.jsonl (empty with a preset: the preset's own data)");
  const out = h("div", { "data-testid": "dataset-preview" });
  const preview = async () => {
    clear(out);
    wiz.form.dataset = input.value.trim();
    wiz.config = config.value.trim();
    try {
      const p = await call("preview_dataset", { request: request(false) });
      out.append(h("div", { class: "card" }, h("b", {}, `${p.rows} rows · ${p.format}`), p.token_stats ? h("div", { class: "muted" }, p.token_stats) : null,
        h("ol", { class: "samples" }, ...p.sample.map((s) => h("li", {}, h("pre", {}, s)))),
        ...p.warnings.map((w) => notice(w, "warn"))));
    } catch (e) {
      out.append(errorBox(e as AppError, "dataset-error"));
    }
  };
  const pick = async () => {
    const f = await open({ multiple: false, directory: false, filters: [{ name: "Datasets", extensions: ["jsonl", "json", "csv", "parquet"] }] });
    if (typeof f === "string") { input.value = f; await preview(); }
  };
  const pickConfig = async () => {
    const f = await open({ multiple: false, directory: false, filters: [{ name: "Training presets", extensions: ["yaml", "yml"] }] });
    if (typeof f === "string") config.value = f;
  };
  body.append(h("div", { class: "row" }, field("Preset config", config, undefined, "a training preset; empty: a config made for this model from its config.json. The next step's knobs adjust it"), h("button", { onclick: () => void pickConfig() }, "Browse…")),
    h("div", { class: "row" }, field("Dataset file", input), h("button", { onclick: () => void pick() }, "Browse…"), h("button", { "data-testid": "dataset-preview-go", onclick: () => void preview() }, "Preview")), out,
    h("button", { class: "primary", "data-testid": "wizard-next", onclick: () => { wiz.form.dataset = input.value.trim(); wiz.config = config.value.trim(); next(); } }, "Next"));
}

function chooseKnobs(body: HTMLElement, next: () => void): () => void {
  const f = wiz.form;
  const out = textInput("train-output", f.outputDir, "/path/to/runs/my-adapter");
  const inputs = { steps: numberInput("train-steps", f.steps), learningRate: numberInput("train-lr", f.learningRate, "0.00001"), loraRank: numberInput("train-rank", f.loraRank), loraAlpha: numberInput("train-alpha", f.loraAlpha), batchSize: numberInput("train-batch", f.batchSize), context: numberInput("train-context", f.context) };
  const verdict = h("div", { "data-testid": "live-verdict" });
  const errs = h("div", {});
  let timer = 0;
  const read = (): TrainForm => ({ ...f, outputDir: out.value.trim(), steps: Number(inputs.steps.value), learningRate: Number(inputs.learningRate.value), loraRank: Number(inputs.loraRank.value), loraAlpha: Number(inputs.loraAlpha.value), batchSize: Number(inputs.batchSize.value), context: Number(inputs.context.value) });
  const replan = () => {
    window.clearTimeout(timer);
    timer = window.setTimeout(async () => {
      const r = read();
      clear(verdict);
      try {
        const plan = await call("plan_model", { request: toRequest({ model: r.baseModel, precision: "nf4", context: r.context, train: true, batchSize: r.batchSize, loraRank: r.loraRank }, "this", true) });
        verdict.append(planView(plan));
      } catch (e) {
        verdict.append(errorBox(e as AppError, "plan-error"));
      }
    }, 300);
  };
  for (const i of Object.values(inputs)) i.addEventListener("input", replan);
  const made = h("div", { "data-testid": "train-defaults" });
  if (!wiz.config) {
    // No preset: the knobs start at a config made for this model from its config.json.
    made.append(h("span", { class: "muted" }, "making a config for this model…"));
    call("train_defaults", { baseModel: f.baseModel }).then((d) => {
      inputs.learningRate.value = String(d.learning_rate); inputs.loraRank.value = String(d.lora_rank);
      inputs.loraAlpha.value = String(d.lora_alpha); inputs.batchSize.value = String(d.batch_size); inputs.context.value = String(d.context);
      clear(made);
      made.append(notice(`No preset: a config made for this model. ${d.notes.join("; ")}.`, "info"));
      replan();
    }).catch((e) => { clear(made); made.append(errorBox(e as AppError, "train-error")); });
  }
  replan();
  const start = async () => {
    clear(errs);
    const form = read();
    const bad = validateTrain(form);
    if (Object.keys(bad).length) return void Object.values(bad).forEach((m) => errs.append(errorBox({ code: "invalid_input", message: m }, "train-error")));
    wiz.form = form;
    try {
      startTraining(await call("start_training", { request: request(false) }));
      next();
    } catch (e) {
      errs.append(errorBox(e as AppError, "train-error"));
    }
  };
  body.append(made, field("Output folder", out, undefined, "checkpoints and the adapter go here; the same folder resumes"),
    h("div", { class: "row" }, field("Steps", inputs.steps), field("Learning rate", inputs.learningRate), field("LoRA rank", inputs.loraRank), field("LoRA alpha", inputs.loraAlpha), field("Batch", inputs.batchSize), field("Context", inputs.context)),
    verdict, errs, h("button", { class: "primary", "data-testid": "train-start", onclick: () => void start() }, "Start training"));
  return () => window.clearTimeout(timer);
}

function runView(body: HTMLElement, next: () => void): () => void {
  const draw = liveView(body, () => {
    const t = state.training;
    if (!t) return { key: "none", live: [notice("No run in progress.")], controls: () => [] };
    return {
      key: `${t.job} ${t.status} ${t.error ? "error" : ""}`,
      live: [
        h("div", { class: "stats", "data-testid": "train-stats" },
          h("span", {}, `step ${t.step}/${t.totalSteps}`), h("span", {}, `loss ${t.loss.length ? formatLoss(t.loss[t.loss.length - 1].y) : "–"}`),
          h("span", {}, `LR ${t.lr.toExponential(2)}`), h("span", {}, `${t.tokensPerSec.toFixed(0)} tokens/s`), h("span", {}, `ETA ${formatEta(t.etaSecs)}`),
          h("span", {}, `memory ${t.memoryBytes != null ? formatBytes(t.memoryBytes) : "–"}`)),
        lineChart([{ name: "loss", points: t.loss, cls: "loss" }, { name: "eval", points: t.evalLoss, cls: "eval" }], 640, 240, "loss-chart"),
      ],
      controls: () => [
        t.error ? errorBox(t.error, "train-error") : null,
        t.status === "running" ? h("button", { class: "danger", "data-testid": "train-cancel", onclick: () => call("cancel_training", { job: t.job }).catch(() => {}) }, "Cancel") : null,
        t.status === "cancelled" || t.status === "failed" ? h("button", { "data-testid": "train-resume", onclick: async () => {
          try {
            startTraining(await call("start_training", { request: request(true) }), true);
          } catch (e) { body.append(errorBox(e as AppError, "train-error")); }
        } }, "Resume") : null,
        t.status === "finished" ? h("button", { class: "primary", "data-testid": "wizard-next", onclick: next }, "See the result") : null,
      ],
    };
  });
  draw();
  return subscribe(draw);
}

function samplesView(t: NonNullable<typeof state.training>): HTMLElement | null {
  if (t.samplesStatus === "pending") {
    return h("div", { class: "notice info row", "data-testid": "samples-pending" },
      "Answering a few of the dataset's prompts with the base model, then with the new adapter…",
      h("button", { "data-testid": "samples-skip", onclick: () => call("cancel_training", { job: t.job }).catch(() => {}) }, "Skip"));
  }
  if (t.samplesStatus === "failed" && t.samplesError?.code === "cancelled") return notice("Sample answers skipped.", "info", "samples-skipped");
  if (t.samplesStatus === "failed" && t.samplesError) return errorBox(t.samplesError, "samples-error");
  if (!t.samples.length) return null;
  return h("div", { class: "samples-block" },
    h("h2", {}, "Answers before and after"),
    h("p", { class: "muted" }, "Greedy, short answers to prompts from the dataset: the base model alone, then with the adapter this run made."),
    h("table", { class: "table samples-table", "data-testid": "samples" },
      h("thead", {}, h("tr", {}, h("th", {}, "Prompt"), h("th", {}, "Before (base)"), h("th", {}, "After (base + adapter)"))),
      h("tbody", {}, ...t.samples.map((s) => h("tr", {}, h("td", {}, s.prompt),
        h("td", { "data-testid": "sample-before" }, s.before || "(empty)"), h("td", { "data-testid": "sample-after" }, s.after || "(empty)"))))));
}

function resultView(body: HTMLElement): () => void {
  const draw = () => {
    clear(body);
    const t = state.training;
    if (!t?.adapterDir) return void body.append(notice("No finished run yet."));
    append(body, notice(`Adapter saved in ${t.adapterDir}`, "ok", "adapter-dir"), samplesView(t),
      h("button", { class: "primary", "data-testid": "chat-adapter", onclick: () => go("chat", { model: wiz.form.baseModel, adapter: t.adapterDir! }) }, "Chat with the adapter"));
  };
  draw();
  return subscribe(draw);
}

export function trainPage(root: HTMLElement, params: URLSearchParams): () => void {
  if (params.get("model")) { wiz.form.baseModel = params.get("model")!; wiz.step = 0; }
  if (state.training && wiz.step < 3) wiz.step = state.training.status === "finished" ? 4 : 3;
  const head = h("div", {});
  const body = h("div", { class: "wizard-body", "data-testid": "wizard" });
  let cleanup: (() => void) | void;
  const show = () => {
    if (cleanup) cleanup();
    clear(head); clear(body);
    head.append(stepper());
    const next = () => { wiz.step = Math.min(STEPS.length - 1, wiz.step + 1); show(); };
    if (wiz.step > 0 && wiz.step !== 3) head.append(h("button", { class: "link", onclick: () => { wiz.step--; show(); } }, "← Back"));
    if (wiz.step === 0) chooseBase(body, next);
    else if (wiz.step === 1) chooseDataset(body, next);
    else if (wiz.step === 2) cleanup = chooseKnobs(body, next);
    else if (wiz.step === 3) cleanup = runView(body, next);
    else cleanup = resultView(body);
    if (wiz.step > 0 && state.training?.status !== "running") head.append(h("button", { class: "link", "data-testid": "wizard-restart", onclick: () => { wiz.step = 0; state.training = null; show(); } }, "Start over"));
  };
  root.append(h("h1", {}, "Train an adapter"), head, body);
  show();
  return () => { if (cleanup) cleanup(); };
}
