// The app's frame: a sidebar of pages, a status strip (offline, no GPU), and the page itself.
// Pages are plain functions that draw into a container and return a clean-up function.
import { h, clear, errorBox } from "./dom";
import { go } from "./nav";
import { state, subscribe, loadSettings, loadSystem, listenToJobs } from "./store";
import type { AppError } from "./bindings";
import { modelsPage } from "./pages/models";
import { libraryPage } from "./pages/library";
import { plannerPage } from "./pages/planner";
import { trainPage } from "./pages/train";
import { chatPage } from "./pages/chat";
import { settingsPage } from "./pages/settings";
import { systemPage } from "./pages/system";

export type Page = (root: HTMLElement, params: URLSearchParams) => (() => void) | void;

const PAGES: [string, string, Page][] = [
  ["models", "Models", modelsPage],
  ["library", "Library", libraryPage],
  ["planner", "Planner", plannerPage],
  ["train", "Train", trainPage],
  ["chat", "Chat", chatPage],
  ["settings", "Settings", settingsPage],
  ["system", "System", systemPage],
];

const app = document.getElementById("app")!;
const nav = h("nav", { class: "sidebar" }, h("div", { class: "brand" }, "qlora", h("span", {}, "studio")));
const status = h("div", { class: "status", "data-testid": "status" });
const main = h("main", { class: "page", "data-testid": "page" });
app.append(nav, h("div", { class: "content" }, status, main));
// Buttons, not links: a page change is a same-document hash change, never a navigation.
for (const [id, label] of PAGES) nav.append(h("button", { type: "button", "data-testid": `nav-${id}`, "data-page": id, onclick: () => go(id) }, label));

let cleanup: (() => void) | void;

function route(): void {
  const [path, query] = location.hash.replace(/^#\/?/, "").split("?");
  const entry = PAGES.find(([id]) => id === path) ?? PAGES[0];
  for (const a of nav.querySelectorAll("button")) a.classList.toggle("active", a.dataset.page === entry[0]);
  if (cleanup) cleanup();
  clear(main);
  main.dataset.page = entry[0];
  try {
    cleanup = entry[2](main, new URLSearchParams(query ?? ""));
  } catch (e) {
    main.append(errorBox({ code: "internal", message: String(e) }));
  }
}

function renderStatus(): void {
  clear(status);
  const s = state.settings;
  if (s?.offline) status.append(h("span", { class: "pill warn", "data-testid": "offline-banner" }, "Offline mode: only cached and local models"));
  const sys = state.system;
  if (sys && sys.gpus.length === 0) status.append(h("span", { class: "pill", "data-testid": "nogpu-banner", title: sys.no_gpu_reason ?? "" }, "No NVIDIA GPU: running on the CPU"));
  if (sys && sys.gpus.length > 0) status.append(h("span", { class: "pill ok" }, sys.gpus.map((g) => g.name).join(", ")));
  const running = Object.values(state.downloads).filter((d) => d.status === "running").length;
  if (running) status.append(h("span", { class: "pill" }, `${running} download${running > 1 ? "s" : ""} running`));
  if (state.training?.status === "running") status.append(h("span", { class: "pill" }, `training: step ${state.training.step}/${state.training.totalSteps}`));
}

subscribe(renderStatus);
window.addEventListener("hashchange", route);

async function start(): Promise<void> {
  try {
    await loadSettings();
    await listenToJobs();
  } catch (e) {
    main.append(errorBox(e as AppError));
  }
  route();
  document.body.dataset.ready = "true";
  void loadSystem();
}

void start();
