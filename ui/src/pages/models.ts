// Models: the curated list, Hub search, ready local models, a model's details, the planner's
// verdict for this machine, and downloads with progress, speed, ETA, cancel and resume.
import { call } from "../api";
import type { AppError, CuratedModel, LocalModel, ModelDetail, PlanReport } from "../bindings";
import { detailFacts, hitLine, orderFiles, summaryText } from "../lib/models";
import { h, append, clear, errorBox, field, liveView, notice, progressBar, textInput } from "../dom";
import { open } from "@tauri-apps/plugin-dialog";
import { formatBytes, formatEta, formatParams, formatPercent, formatRate } from "../lib/format";
import { checkModelRef } from "../lib/validate";
import { go } from "../nav";
import { state, subscribe } from "../store";

function verdictChip(r: PlanReport): HTMLElement {
  const label = { fits: "fits", tight: "tight fit", does_not_fit: "does not fit" }[r.verdict];
  return h("span", { class: `chip verdict-${r.verdict}`, "data-testid": "verdict", title: r.suggestion ?? "" }, `${label} on ${r.device}`);
}

async function checkFit(model: string, into: HTMLElement): Promise<void> {
  clear(into);
  into.append(h("span", { class: "muted" }, "planning…"));
  try {
    const r = await call("plan_model", { request: { model, gpu: { kind: "this_machine" }, precision: "nf4", context: 1024, train: true, batch_size: 1, lora_rank: 8, gradient_checkpointing: true } });
    clear(into);
    append(into, verdictChip(r), r.suggestion ? h("small", { class: "muted" }, ` ${r.suggestion}`) : null);
  } catch (e) {
    clear(into);
    into.append(errorBox(e as AppError, "plan-error"));
  }
}

function downloadPanel(model: string): HTMLElement {
  const box = h("div", { class: "download", "data-testid": "download-panel" });
  const draw = liveView(box, () => {
    const jobs = Object.values(state.downloads).filter((d) => d.model === model);
    const d = jobs[jobs.length - 1];
    if (!d) return { key: "none", live: [], controls: () => [] };
    return {
      key: `${d.job} ${d.status} ${d.error ? "error" : ""}`,
      live: [
        h("div", { class: "row" }, progressBar(d.done, d.total, "download-progress"),
          h("span", { "data-testid": "download-status" }, `${d.status} · ${formatPercent(d.done, d.total)} · ${formatBytes(d.done)} of ${formatBytes(d.total)} · ${formatRate(d.bytesPerSec)} · ETA ${formatEta(d.etaSecs)}`)),
        d.file ? h("small", { class: "muted" }, d.file) : null,
      ],
      controls: () => [
        d.error ? errorBox(d.error, "download-error") : null,
        d.status === "running"
          ? h("button", { "data-testid": "download-cancel", onclick: () => call("cancel_download", { job: d.job }).catch(() => {}) }, "Cancel")
          : d.status !== "finished"
            ? h("button", { "data-testid": "download-resume", onclick: () => startDownload(model, box) }, "Resume")
            : h("span", { class: "actions" }, h("span", { class: "chip verdict-fits", "data-testid": "downloaded" }, "downloaded"),
                h("button", { "data-testid": "chat-downloaded", onclick: () => go("chat", { model: d.path ?? "" }) }, "Chat"),
                h("button", { onclick: () => go("train", { model: d.path ?? "" }) }, "Train")),
      ],
    };
  });
  const un = subscribe(draw);
  (box as HTMLElement & { cleanup?: () => void }).cleanup = () => void un();
  draw();
  return box;
}

async function startDownload(model: string, into: HTMLElement): Promise<void> {
  try {
    await call("start_download", { model });
  } catch (e) {
    into.append(errorBox(e as AppError, "download-error"));
  }
}

/** The details panel: the card's summary, the facts, the files (those a download fetches
 *  marked), and the planner's verdict for this machine. */
function detailView(d: ModelDetail): HTMLElement {
  const fit = h("div", { class: "fit", "data-testid": "detail-fit" });
  void checkFit(d.id, fit);
  const files = orderFiles(d.files);
  return h("div", { class: "detail", "data-testid": "model-detail" },
    h("p", { "data-testid": "detail-summary" }, summaryText(d)),
    h("p", { class: "muted", "data-testid": "detail-facts" }, detailFacts(d)),
    h("div", { class: "row" }, h("b", {}, "QLoRA on this machine: "), fit),
    h("table", { class: "files", "data-testid": "detail-files" },
      h("thead", {}, h("tr", {}, h("th", {}, "File"), h("th", { class: "num" }, "Size"), h("th", {}, ""))),
      h("tbody", {}, ...files.map((f) => h("tr", { class: f.selected ? "selected" : "muted" },
        h("td", {}, f.path), h("td", { class: "num" }, formatBytes(f.size)), h("td", {}, f.selected ? "downloaded" : "skipped"))))));
}

function modelCard(id: string, title: string, meta: string, note: string, cleanups: (() => void)[]): HTMLElement {
  const fit = h("div", { class: "fit" });
  const more = h("div", {});
  const card = h("div", { class: "card", "data-testid": `model-${id}` },
    h("div", { class: "card-head" }, h("b", {}, title), h("span", { class: "muted" }, ` ${id}`)),
    h("div", { class: "muted" }, meta), h("p", {}, note), fit,
    h("div", { class: "actions" },
      h("button", { "data-testid": "check-fit", onclick: () => checkFit(id, fit) }, "Check fit"),
      h("button", { onclick: () => go("planner", { model: id }) }, "Plan…"),
      h("button", { "data-testid": "details", onclick: async () => {
        clear(more);
        more.append(h("span", { class: "muted" }, "reading the model card…"));
        try {
          const d = await call("model_info", { id });
          clear(more);
          card.classList.add("expanded"); // the files table needs the whole row
          more.append(detailView(d));
        } catch (e) { clear(more); more.append(errorBox(e as AppError, "details-error")); }
      } }, "Details"),
      h("button", { class: "primary", "data-testid": "download", onclick: () => startDownload(id, more) }, "Download")),
    more);
  const panel = downloadPanel(id);
  cleanups.push((panel as HTMLElement & { cleanup?: () => void }).cleanup ?? (() => {}));
  card.append(panel);
  return card;
}

/** Delete for an imported model, in two clicks: the second says what goes. */
function deleteImported(m: LocalModel, onDeleted: () => void): HTMLElement {
  const box = h("span", { class: "actions" });
  const ask = h("button", { class: "danger", "data-testid": "delete-local", onclick: () => {
    clear(box);
    append(box, h("span", {}, `Delete ${m.name} (${formatBytes(m.bytes)})? `),
      h("button", { class: "danger", "data-testid": "delete-local-confirm", onclick: async () => {
        try {
          await call("delete_local_model", { path: m.path });
          onDeleted();
        } catch (e) { box.append(errorBox(e as AppError, "delete-local-error")); }
      } }, "Delete"),
      h("button", { onclick: () => { clear(box); box.append(ask); } }, "Keep"));
  } }, "Delete…");
  box.append(ask);
  return box;
}

function localCard(m: LocalModel, onDeleted: () => void): HTMLElement {
  return h("div", { class: "card", "data-testid": `local-${m.name}` },
    h("div", { class: "card-head" }, h("b", {}, m.name), " ", m.ready ? h("span", { class: "chip verdict-fits", "data-testid": "ready" }, "ready") : h("span", { class: "chip verdict-does_not_fit" }, `missing ${m.missing.join(", ")}`)),
    h("div", { class: "muted" }, `${m.path} · ${formatBytes(m.bytes)}`),
    h("div", { class: "actions" },
      h("button", { disabled: !m.ready, "data-testid": "chat-local", onclick: () => go("chat", { model: m.path }) }, "Chat"),
      h("button", { disabled: !m.ready, onclick: () => go("train", { model: m.path }) }, "Train"),
      h("button", { onclick: () => go("planner", { model: m.path }) }, "Plan…"),
      m.imported ? deleteImported(m, onDeleted) : null));
}

export function modelsPage(root: HTMLElement): () => void {
  const cleanups: (() => void)[] = [];
  const local = h("div", { class: "grid", "data-testid": "local-models" });
  const curated = h("div", { class: "grid", "data-testid": "curated" });
  const results = h("div", { class: "grid", "data-testid": "search-results" });
  const query = textInput("search", "", "search the Hub, or type an id such as microsoft/phi-2");
  const doSearch = async () => {
    clear(results);
    const q = query.value.trim();
    if (q.includes("/")) {
      const bad = checkModelRef(q);
      if (bad) return void results.append(errorBox({ code: "invalid_input", message: bad }, "search-error"));
      results.append(modelCard(q, q, "Hub model", "", cleanups));
      return;
    }
    try {
      const hits = await call("search_models", { query: q });
      if (hits.length === 0) results.append(notice(`no model on the Hub matches '${q}'`, "info", "search-empty"));
      if (hits.length) results.append(h("div", { class: "muted full-row", "data-testid": "search-count" }, `${hits.length} model${hits.length > 1 ? "s" : ""} on the Hub match '${q}', most downloaded first`));
      for (const m of hits) results.append(modelCard(m.id, m.id.split("/")[1] ?? m.id, hitLine(m), "", cleanups));
    } catch (e) {
      results.append(errorBox(e as AppError, "search-error"));
    }
  };
  const ggufPath = textInput("gguf-path", "", "/path/to/model.gguf (llama.cpp, LM Studio, Ollama)");
  const ggufOut = h("div", { "data-testid": "gguf-out" });
  const ggufErr = h("div", {});
  let importJob: number | null = null;
  let listedFor: number | null = null;
  const drawImport = liveView(ggufOut, () => {
    const d = importJob != null ? state.imports[importJob] : undefined;
    if (!d) return { key: "none", live: [], controls: () => [] };
    if (d.status === "finished" && listedFor !== d.job) {
      listedFor = d.job;
      void listLocal();
    }
    return {
      key: `${d.job} ${d.status}`,
      live: d.status === "running" ? [h("div", { class: "row" }, progressBar(d.done, d.total, "gguf-progress"),
        h("span", { "data-testid": "gguf-status" }, `importing ${d.name} · ${formatPercent(d.done, d.total)} · ${formatBytes(d.done)} of ${formatBytes(d.total)}`))] : [],
      controls: () => [
        d.status === "running" ? h("button", { "data-testid": "gguf-cancel", onclick: () => call("cancel_import", { job: d.job }).catch(() => {}) }, "Cancel") : null,
        d.status === "finished" && d.model ? notice(`Imported ${d.model.name} into ${d.model.path} (${formatBytes(d.model.bytes)}).`, "ok", "gguf-imported") : null,
        d.status === "cancelled" ? notice("Import cancelled; nothing was written.", "info", "gguf-cancelled") : null,
        d.error ? errorBox(d.error, "gguf-error") : null,
      ],
    };
  });
  cleanups.push(subscribe(drawImport) as () => void);
  const importGguf = async () => {
    clear(ggufErr);
    try {
      importJob = await call("import_gguf", { path: ggufPath.value });
      drawImport();
    } catch (e) {
      ggufErr.append(errorBox(e as AppError, "gguf-error"));
    }
  };
  const pickGguf = async () => {
    const f = await open({ multiple: false, directory: false, filters: [{ name: "GGUF models", extensions: ["gguf"] }] });
    if (typeof f === "string") ggufPath.value = f;
  };
  const listLocal = () => call("list_local_models", {}).then((ms) => {
    clear(local);
    if (ms.length === 0) local.append(notice("No local models yet. Import a GGUF file, add a folder in Settings, or download one below.", "info", "no-local"));
    for (const m of ms) local.append(localCard(m, () => void listLocal()));
  }).catch((e) => local.append(errorBox(e as AppError)));
  root.append(
    h("h1", {}, "Models"),
    h("form", { class: "search", onsubmit: (e: Event) => { e.preventDefault(); void doSearch(); } }, query, h("button", { type: "submit", "data-testid": "search-go" }, "Search")),
    results,
    h("h2", {}, "Ready on this machine"), local,
    h("form", { class: "row import", onsubmit: (e: Event) => { e.preventDefault(); void importGguf(); } },
      field("Import a GGUF file", ggufPath, undefined, "a Llama or Qwen2 .gguf (TinyLlama, Mistral, SmolLM, Llama 2 and 3, Qwen2 and 2.5) becomes a model folder here, ready for chat and training"),
      h("button", { type: "button", onclick: () => void pickGguf() }, "Browse…"),
      h("button", { type: "submit", "data-testid": "gguf-import" }, "Import")),
    ggufErr, ggufOut,
    h("h2", {}, "Curated"), curated);
  void listLocal();
  call("curated_models", {}).then((ms: CuratedModel[]) => {
    for (const m of ms) curated.append(modelCard(m.id, m.name, `${formatParams(m.params_b)} parameters · ${m.license}${m.gated ? " · gated" : ""}`, m.note, cleanups));
  }).catch((e) => curated.append(errorBox(e as AppError)));
  return () => cleanups.forEach((c) => c());
}
