// Settings: Hub token, cache folder, endpoint, offline mode, compute device, local model folders.
import { call } from "../api";
import type { AppError, Settings } from "../bindings";
import { open } from "@tauri-apps/plugin-dialog";
import { h, clear, errorBox, field, notice, select, textInput } from "../dom";
import { deviceLabel } from "../lib/models";
import { validateSettings } from "../lib/validate";
import { state, notify, loadSystem } from "../store";

export function settingsPage(root: HTMLElement): void {
  const s = state.settings;
  if (!s) return void root.append(notice("Settings are loading…"));
  const endpoint = textInput("endpoint", s.endpoint);
  const cache = textInput("cache-dir", s.cache_dir ?? "", "default: ~/.cache/huggingface/hub");
  const token = h("input", { type: "password", name: "hub-token", value: s.hub_token ?? "", "data-testid": "hub-token", placeholder: "hf_…", autocomplete: "off" });
  const offline = h("input", { type: "checkbox", "data-testid": "offline", checked: s.offline });
  // Only devices that exist here are offered (System lists them); a saved choice that is gone
  // (a GPU build's setting on this one) stays visible so the user sees it and changes it.
  const choices = state.system?.devices ?? ["auto", "cpu"];
  const ids = choices.includes(s.device) ? choices : [...choices, s.device];
  const device = select("device", ids.map((id) => [id, deviceLabel(id, state.system?.gpus ?? [])] as [string, string]), s.device);
  const dirs = h("textarea", { rows: 3, "data-testid": "local-dirs", spellcheck: "false" }, s.local_model_dirs.join("\n"));
  const out = h("div", {});
  const addDir = async () => {
    const picked = await open({ directory: true, multiple: false, title: "A folder of model folders" });
    if (typeof picked === "string") dirs.value = (dirs.value.trim() ? dirs.value.trim() + "\n" : "") + picked;
  };
  const save = async (e: Event) => {
    e.preventDefault();
    clear(out);
    const localModelDirs = dirs.value.split("\n").map((l) => l.trim()).filter(Boolean);
    const bad = validateSettings({ endpoint: endpoint.value, cacheDir: cache.value, hubToken: token.value, localModelDirs });
    if (Object.keys(bad).length) {
      for (const m of Object.values(bad)) out.append(errorBox({ code: "invalid_input", message: m }, "settings-error"));
      return;
    }
    const next: Settings = { endpoint: endpoint.value.trim(), cache_dir: cache.value.trim() || null, hub_token: token.value.trim() || null, offline: offline.checked, local_model_dirs: localModelDirs, device: device.value };
    try {
      state.settings = await call("save_settings", { settings: next });
      notify();
      void loadSystem();
      out.append(notice("Saved.", "ok", "settings-saved"));
    } catch (err) {
      out.append(errorBox(err as AppError, "settings-error"));
    }
  };
  root.append(h("h1", {}, "Settings"),
    h("form", { class: "form", onsubmit: save },
      field("Hub endpoint", endpoint, undefined, "https://huggingface.co, a mirror, or a local server"),
      field("Hub token", token, undefined, "needed for gated models (Gemma); stored in the app's settings file, readable only by you"),
      field("Cache folder", cache, undefined, "shared with Python tools; empty for the standard one"),
      h("label", { class: "check" }, offline, " Offline mode: never touch the network; use cached and local models only"),
      field("Compute device", device, undefined, "where chat models load and training runs"),
      field("Local model folders (one per line)", dirs, undefined, "folders holding ready model folders, such as the starter model"),
      h("div", { class: "actions" }, h("button", { type: "button", onclick: () => void addDir() }, "Add folder…"), h("button", { type: "submit", class: "primary", "data-testid": "settings-save" }, "Save"))),
    out);
}
