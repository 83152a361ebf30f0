// Planner: any model id or local folder, this machine or a preset GPU, precision, context and
// training knobs; the breakdown as a chart, the verdict, and the change that would make it fit.
import { call } from "../api";
import type { AppError, GpuPresetView, PlanReport, PlanRequest } from "../bindings";
import { breakdownBar } from "../charts";
import { h, clear, errorBox, field, numberInput, select, textInput } from "../dom";
import { formatBytes } from "../lib/format";
import { validatePlan, PRECISIONS, type PlanForm } from "../lib/validate";

export function planView(r: PlanReport): HTMLElement {
  const label = { fits: "Fits", tight: "Fits, but tight", does_not_fit: "Does not fit" }[r.verdict];
  return h("div", { class: "plan", "data-testid": "plan-report" },
    h("div", { class: `verdict-banner verdict-${r.verdict}`, "data-testid": "plan-verdict" }, `${label}: ${formatBytes(r.total_bytes)} of ${formatBytes(r.budget_bytes)} on ${r.device}`),
    r.suggestion ? h("p", { class: "suggestion", "data-testid": "plan-suggestion" }, "To make it fit: ", h("b", {}, r.suggestion)) : null,
    breakdownBar(r.breakdown, r.budget_bytes),
    h("p", { class: "muted" }, `Download ${formatBytes(r.download_bytes)}${r.disk_free_bytes != null ? ` · free disk ${formatBytes(r.disk_free_bytes)}` : ""}`),
    r.notes.length ? h("ul", { class: "notes" }, ...r.notes.map((n) => h("li", {}, n))) : null);
}

export function toRequest(f: PlanForm, gpu: string, checkpointing: boolean): PlanRequest {
  return {
    model: f.model.trim(),
    gpu: gpu === "this" ? { kind: "this_machine" } : { kind: "preset", id: gpu },
    precision: f.precision, context: f.context, train: f.train,
    batch_size: f.batchSize, lora_rank: f.loraRank, gradient_checkpointing: checkpointing,
  };
}

export function plannerPage(root: HTMLElement, params: URLSearchParams): void {
  const model = textInput("plan-model", params.get("model") ?? "", "org/name or /path/to/model");
  const gpu = select("plan-gpu", [["this", "This machine"]], "this");
  const precision = select("plan-precision", PRECISIONS.map((p) => [p, p.toUpperCase()]), "nf4");
  const context = numberInput("plan-context", 1024);
  const train = h("input", { type: "checkbox", name: "plan-train", checked: true, "data-testid": "plan-train" });
  const batch = numberInput("plan-batch", 1);
  const rank = numberInput("plan-rank", 16);
  const ckpt = h("input", { type: "checkbox", checked: true, "data-testid": "plan-ckpt" });
  const errors = h("div", {});
  const out = h("div", { "data-testid": "plan-output" });
  call("gpu_presets", {}).then((ps: GpuPresetView[]) => {
    for (const p of ps) gpu.append(h("option", { value: p.id }, `${p.name} (${formatBytes(p.total_bytes)})`));
  }).catch((e) => errors.append(errorBox(e as AppError)));

  const submit = async (e: Event) => {
    e.preventDefault();
    clear(errors);
    clear(out);
    const form: PlanForm = { model: model.value, precision: precision.value, context: Number(context.value), train: train.checked, batchSize: Number(batch.value), loraRank: Number(rank.value) };
    const bad = validatePlan(form);
    if (Object.keys(bad).length) {
      for (const msg of Object.values(bad)) errors.append(errorBox({ code: "invalid_input", message: msg }, "plan-error"));
      return;
    }
    out.append(h("p", { class: "muted" }, "planning…"));
    try {
      const r = await call("plan_model", { request: toRequest(form, gpu.value, ckpt.checked) });
      clear(out);
      out.append(planView(r));
    } catch (err) {
      clear(out);
      out.append(errorBox(err as AppError, "plan-error"));
    }
  };
  root.append(h("h1", {}, "Planner"),
    h("form", { class: "form", onsubmit: submit },
      field("Model", model, undefined, "a Hub id or a local model folder"),
      h("div", { class: "row" }, field("GPU", gpu), field("Precision", precision), field("Context (tokens)", context)),
      h("div", { class: "row" }, h("label", { class: "check" }, train, " plan QLoRA training"), field("Batch size", batch), field("LoRA rank", rank), h("label", { class: "check" }, ckpt, " gradient checkpointing")),
      h("button", { type: "submit", class: "primary", "data-testid": "plan-go" }, "Plan")),
    errors, out);
}
