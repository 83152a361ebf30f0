// A few helpers to build the DOM without a framework (and without innerHTML, so nothing a
// model or the Hub returns is ever parsed as markup).
import type { AppError } from "./bindings";

type Attrs = Record<string, string | number | boolean | ((e: Event) => void) | undefined | null>;
export type Child = Node | string | number | null | undefined | false;

export function h<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Attrs = {}, ...children: Child[]): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (typeof v === "function") el.addEventListener(k.replace(/^on/, "").toLowerCase(), v);
    else if (k === "value" && "value" in el) (el as HTMLInputElement).value = String(v);
    else if (k === "checked" && v === true) (el as HTMLInputElement).checked = true;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, ...children);
  return el;
}

export function append(el: Element, ...children: Child[]): void {
  for (const c of children) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(el: Element): void {
  while (el.firstChild) el.removeChild(el.firstChild);
}

export function svg(tag: string, attrs: Record<string, string | number> = {}, ...children: (Node | string)[]): SVGElement {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  for (const c of children) el.append(c);
  return el;
}

const HINTS: Partial<Record<AppError["code"], string>> = {
  offline: "Check the network, or the endpoint and offline mode in Settings.",
  not_built_yet: "This part of the core is still being written.",
  does_not_fit: "Try the Planner's suggestion.",
};

/** A message box for an error: the code as a tag, the message, a hint. */
export function errorBox(err: AppError, testId = "error"): HTMLElement {
  return h("div", { class: `notice error code-${err.code}`, "data-testid": testId, role: "alert" },
    h("span", { class: "tag" }, err.code.replace(/_/g, " ")), " ", err.message,
    HINTS[err.code] ? h("div", { class: "hint" }, HINTS[err.code]) : null);
}

export function notice(text: string, kind: "info" | "ok" | "warn" = "info", testId?: string): HTMLElement {
  return h("div", { class: `notice ${kind}`, "data-testid": testId }, text);
}

/** A labelled field with a place for its error. */
export function field(label: string, input: HTMLElement, error?: string, help?: string): HTMLElement {
  return h("label", { class: "field" }, h("span", { class: "label" }, label), input,
    help ? h("small", { class: "help" }, help) : null,
    error ? h("small", { class: "field-error" }, error) : null);
}

export function numberInput(name: string, value: number, step = "1"): HTMLInputElement {
  return h("input", { type: "number", name, value, step, "data-testid": name });
}

export function textInput(name: string, value: string, placeholder = ""): HTMLInputElement {
  return h("input", { type: "text", name, value, placeholder, "data-testid": name, spellcheck: "false" });
}

export function select(name: string, options: [string, string][], value: string): HTMLSelectElement {
  const s = h("select", { name, "data-testid": name });
  for (const [v, label] of options) s.append(h("option", { value: v, selected: v === value }, label));
  s.value = value;
  return s;
}

export function progressBar(done: number, total: number, testId?: string): HTMLElement {
  const p = h("progress", { max: Math.max(1, total), value: Math.min(done, total), "data-testid": testId });
  return p;
}

/** What a live view shows: `live` is rebuilt on every redraw; `controls` only when `key` changes. */
export interface LiveParts {
  key: string;
  live: Child[];
  controls: () => Child[];
}

/** A view redrawn on every store change (download progress, training steps) whose buttons
 *  survive the redraws. A button replaced between the press and the release of a click gets no
 *  click event, so rebuilding Cancel on each progress event (several a second) ate clicks.
 *  Returns the redraw function. */
export function liveView(box: HTMLElement, parts: () => LiveParts): () => void {
  const live = h("div", { class: "live" });
  const controls = h("div", { class: "controls" });
  box.append(live, controls);
  let key: string | null = null;
  return () => {
    const p = parts();
    clear(live);
    append(live, ...p.live);
    if (p.key !== key) {
      key = p.key;
      clear(controls);
      append(controls, ...p.controls());
    }
  };
}
