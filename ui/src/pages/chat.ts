// Chat: conversations kept on disk, a system prompt, sampling settings, streamed answers with
// stop, base or base + adapter with a scale slider, and base vs fine-tuned side by side.
import { open } from "@tauri-apps/plugin-dialog";
import { call, Channel } from "../api";
import type { AppError, ChatChunk, ChatMessage, Conversation, Sampling } from "../bindings";
import { adapterSummary, chatRuns, checkScale, scaleLabel, SCALE_MAX, SCALE_MIN, type ChatRun } from "../lib/adapter";
import { h, clear, errorBox, field, numberInput, textInput } from "../dom";
import { blankChat, reduceChat, type ChatStream } from "../lib/reducers";
import { checkModelRef, validateSampling } from "../lib/validate";

let nextStream = Date.now();

function blank(model: string, adapter: string | null): Conversation {
  return { id: "", title: "New chat", model, adapter, adapter_scale: 1, system_prompt: "You are a helpful assistant.", sampling: { temperature: 0.7, top_p: 0.9, top_k: 40, max_new_tokens: 128, repetition_penalty: 1.1, seed: null }, messages: [], updated: 0 };
}

/** Streams one answer into `into`; resolves with the final stream state. */
async function stream(c: Conversation, run: ChatRun, into: HTMLElement, onStop: (stop: () => void) => void): Promise<ChatStream> {
  const id = nextStream++;
  let s = blankChat();
  const text = h("div", { class: "bubble assistant streaming", "data-testid": run.testid });
  into.append(text);
  onStop(() => void call("chat_stop", { stream: id }).catch(() => {}));
  const ch = new Channel<ChatChunk>();
  const done = new Promise<ChatStream>((resolve) => {
    ch.onmessage = (chunk) => {
      s = reduceChat(s, chunk);
      text.textContent = s.text;
      if (s.done) {
        text.classList.remove("streaming");
        text.append(h("small", { class: "muted" }, ` ${s.tokens} tokens · ${s.tokensPerSec.toFixed(1)} tokens/s${s.stopped ? " · stopped" : ""}`));
        if (s.error) into.append(errorBox(s.error, "chat-error"));
        resolve(s);
      }
    };
  });
  try {
    await call("chat_send", { request: { stream: id, model: c.model, adapter: run.adapter, adapter_scale: run.scale, system_prompt: c.system_prompt, messages: c.messages, sampling: c.sampling }, onChunk: ch });
  } catch (e) {
    text.remove();
    into.append(errorBox(e as AppError, "chat-error"));
    return { ...s, done: true, error: e as AppError };
  }
  return done;
}

export function chatPage(root: HTMLElement, params: URLSearchParams): void {
  let convo = blank(params.get("model") ?? "", params.get("adapter"));
  const side = h("aside", { class: "convos", "data-testid": "conversations" });
  const model = h("select", { "data-testid": "chat-model" });
  const modelText = textInput("chat-model-path", convo.model, "or a model folder / Hub id");
  const adapter = textInput("chat-adapter", convo.adapter ?? "", "adapter folder (optional)");
  const scale = h("input", { type: "range", min: SCALE_MIN, max: SCALE_MAX, step: 0.05, value: convo.adapter_scale, "data-testid": "adapter-scale" });
  const scaleText = h("span", { "data-testid": "adapter-scale-label" }, scaleLabel(convo.adapter_scale));
  const adapterStatus = h("div", { class: "muted", "data-testid": "adapter-status" }, "No adapter: answers come from the base model.");
  const adapterErrs = h("div", {});
  const sideBySide = h("input", { type: "checkbox", "data-testid": "side-by-side" });
  const system = h("textarea", { rows: 2, "data-testid": "system-prompt" }, convo.system_prompt);
  const sampling = { temperature: numberInput("temperature", 0.7, "0.05"), topP: numberInput("top-p", 0.9, "0.05"), topK: numberInput("top-k", 40), maxNewTokens: numberInput("max-new-tokens", 128) };
  const log = h("div", { class: "messages", "data-testid": "messages" });
  const input = h("textarea", { rows: 3, "data-testid": "chat-input", placeholder: "Ask something…" });
  const errs = h("div", {});
  let stops: (() => void)[] = [];
  const send = h("button", { class: "primary", "data-testid": "chat-send" }, "Send");
  const stop = h("button", { "data-testid": "chat-stop", disabled: true, onclick: () => stops.forEach((s) => s()) }, "Stop");
  scale.addEventListener("input", () => { scaleText.textContent = scaleLabel(Number(scale.value)); });
  // Attach: the adapter goes onto the loaded model (the base is not reloaded); the slider's
  // scale is applied to each answer, and Detach gives the base model back.
  let attached = ""; // "model\nadapter" of the adapter attached now
  const attach = async (): Promise<boolean> => {
    clear(adapterErrs);
    attachBtn.disabled = true;
    adapterStatus.textContent = "Attaching…";
    const req = { model: modelText.value.trim(), adapter: adapter.value.trim() };
    try {
      const info = await call("chat_attach_adapter", req);
      adapterStatus.textContent = adapterSummary(info);
      attached = `${req.model}\n${req.adapter}`;
      detachBtn.disabled = false;
      return true;
    } catch (e) {
      adapterStatus.textContent = "No adapter attached.";
      attached = "";
      adapterErrs.append(errorBox(e as AppError, "chat-error"));
      return false;
    } finally { attachBtn.disabled = false; }
  };
  const browse = h("button", { "data-testid": "adapter-browse", onclick: async () => {
    const picked = await open({ directory: true, multiple: false, title: "An adapter folder (adapter_config.json + adapter_model.safetensors)" });
    if (typeof picked === "string") { adapter.value = picked; await attach(); }
  } }, "Browse…");
  const attachBtn = h("button", { "data-testid": "adapter-attach", onclick: () => void attach() }, "Attach");
  const detachBtn = h("button", { "data-testid": "adapter-detach", disabled: true, onclick: async () => {
    clear(adapterErrs);
    try {
      await call("chat_detach_adapter", {});
      adapter.value = ""; attached = ""; detachBtn.disabled = true;
      adapterStatus.textContent = "Adapter detached: answers come from the base model.";
    } catch (e) { adapterErrs.append(errorBox(e as AppError, "chat-error")); }
  } }, "Detach");
  model.addEventListener("change", () => { modelText.value = model.value; });

  const drawLog = () => {
    clear(log);
    for (const m of convo.messages.filter((m) => m.role !== "system")) log.append(h("div", { class: `bubble ${m.role}` }, m.content));
  };
  const drawSide = async () => {
    clear(side);
    side.append(h("button", { "data-testid": "chat-new", onclick: () => { convo = blank(modelText.value, adapter.value || null); system.value = convo.system_prompt; drawLog(); } }, "+ New chat"));
    for (const c of await call("list_conversations", {}).catch(() => [])) {
      side.append(h("a", { class: c.id === convo.id ? "active" : "", onclick: async () => {
        try {
          convo = await call("load_conversation", { id: c.id });
          modelText.value = convo.model; adapter.value = convo.adapter ?? ""; system.value = convo.system_prompt; scale.value = String(convo.adapter_scale); scaleText.textContent = scaleLabel(convo.adapter_scale);
          drawLog(); void drawSide();
        } catch (e) { errs.append(errorBox(e as AppError)); }
      } }, c.title));
    }
  };
  send.addEventListener("click", async () => {
    clear(errs); clear(adapterErrs);
    const text = input.value.trim();
    const modelRef = modelText.value.trim();
    const badModel = checkModelRef(modelRef);
    const s: Sampling = { ...convo.sampling, temperature: Number(sampling.temperature.value), top_p: Number(sampling.topP.value), top_k: Number(sampling.topK.value), max_new_tokens: Number(sampling.maxNewTokens.value) };
    const bad = { ...validateSampling({ temperature: s.temperature, topP: s.top_p, topK: s.top_k, maxNewTokens: s.max_new_tokens }), ...(badModel ? { model: badModel } : {}), ...(text ? {} : { text: "type a message first" }) };
    if (Object.keys(bad).length) return void Object.values(bad).forEach((m) => errs.append(errorBox({ code: "invalid_input", message: m }, "chat-error")));
    const scaleValue = Number(scale.value);
    const badScale = checkScale(scaleValue);
    if (badScale) return void errs.append(errorBox({ code: "invalid_input", message: badScale }, "chat-error"));
    const adapterDir = adapter.value.trim() || null;
    // An adapter typed or loaded with a conversation but not attached yet: attach it first, so
    // a wrong one is refused next to its field and the status line says what answers.
    if (adapterDir && attached !== `${modelRef}\n${adapterDir}` && !(await attach())) return;
    convo = { ...convo, model: modelRef, adapter: adapterDir, adapter_scale: scaleValue, system_prompt: system.value, sampling: s, title: convo.messages.length ? convo.title : text.slice(0, 40) };
    const user: ChatMessage = { role: "user", content: text };
    convo.messages = [...convo.messages, user];
    input.value = "";
    drawLog();
    send.disabled = true; stop.disabled = false; stops = [];
    const runs = chatRuns(adapterDir, scaleValue, sideBySide.checked);
    const row = h("div", { class: runs.length > 1 ? "side-by-side" : "" });
    log.append(row);
    // One after the other: both answers come from the same loaded model, rescaled between.
    const results: ChatStream[] = [];
    for (const run of runs) {
      const col = runs.length > 1 || run.adapter ? h("div", { class: "col" }, h("small", { class: "muted" }, run.label)) : row;
      if (col !== row) row.append(col);
      const r = await stream(convo, run, col, (f) => stops.push(f));
      results.push(r);
      if (r.error || r.stopped) break;
    }
    const answer = results[results.length - 1];
    if (!answer.error) convo.messages = [...convo.messages, { role: "assistant", content: answer.text }];
    send.disabled = false; stop.disabled = true;
    try { convo = await call("save_conversation", { conversation: convo }); void drawSide(); } catch (e) { errs.append(errorBox(e as AppError)); }
  });

  call("list_local_models", {}).then((ms) => {
    model.append(h("option", { value: "" }, "— pick a ready model —"));
    for (const m of ms.filter((m) => m.ready)) model.append(h("option", { value: m.path, selected: m.path === convo.model }, m.name));
    if (!modelText.value && ms.some((m) => m.ready)) { modelText.value = ms.find((m) => m.ready)!.path; model.value = modelText.value; }
  }).catch(() => {});
  void drawSide();
  drawLog();
  if (params.get("adapter") && params.get("model")) void attach();
  root.append(h("h1", {}, "Chat"),
    h("div", { class: "chat" }, side,
      h("section", { class: "chat-main" },
        h("div", { class: "row" }, field("Model", model), field("", modelText), h("label", { class: "field" }, h("span", { class: "label" }, "Adapter scale ", scaleText), scale)),
        h("div", { class: "row" }, field("Adapter", adapter), h("div", { class: "actions" }, browse, attachBtn, detachBtn)),
        adapterStatus, adapterErrs,
        h("details", {}, h("summary", {}, "System prompt and sampling"), field("System prompt", system),
          h("div", { class: "row" }, field("Temperature", sampling.temperature), field("Top-p", sampling.topP), field("Top-k", sampling.topK), field("Max new tokens", sampling.maxNewTokens))),
        h("label", { class: "check" }, sideBySide, " side by side: base vs base + adapter"),
        log, errs, input, h("div", { class: "actions" }, send, stop))));
}
