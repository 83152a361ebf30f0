// Library: what is in the Hugging Face cache, sizes and shared blobs; delete, prune and verify,
// each shown as a dry run first and done only after the user confirms.
import { call } from "../api";
import type { AppError, CacheReport, CachedRepo } from "../bindings";
import { h, clear, errorBox, notice } from "../dom";
import { formatBytes } from "../lib/format";

function reportView(r: CacheReport, confirm?: () => void): HTMLElement {
  return h("div", { class: "report", "data-testid": "cache-report" },
    h("b", {}, r.dry_run ? `Dry run: would free ${formatBytes(r.freed_bytes)}` : `Done: freed ${formatBytes(r.freed_bytes)}`),
    h("ul", {}, ...r.actions.map((a) => h("li", {}, a))),
    r.problems.length ? h("ul", { class: "problems" }, ...r.problems.map((p) => h("li", {}, p))) : null,
    r.dry_run && confirm && r.actions.length ? h("button", { class: "danger", "data-testid": "confirm", onclick: confirm }, "Do it") : null);
}

export function libraryPage(root: HTMLElement): void {
  const list = h("div", { "data-testid": "library" });
  const out = h("div", {});
  const act = async (dry: () => Promise<CacheReport>, real: () => Promise<CacheReport>) => {
    clear(out);
    try {
      const r = await dry();
      out.append(reportView(r, async () => {
        clear(out);
        try { out.append(reportView(await real())); await load(); } catch (e) { out.append(errorBox(e as AppError)); }
      }));
    } catch (e) {
      out.append(errorBox(e as AppError, "library-error"));
    }
  };
  const row = (r: CachedRepo) => h("tr", { "data-testid": `repo-${r.id}` },
    h("td", {}, r.id, r.complete ? null : h("span", { class: "chip verdict-tight" }, "incomplete")),
    h("td", {}, r.revisions.map((x) => x.slice(0, 8)).join(", ")),
    h("td", { class: "num" }, formatBytes(r.size_on_disk)),
    h("td", { class: "num" }, r.shared_bytes ? formatBytes(r.shared_bytes) : "–"),
    h("td", {},
      h("button", { "data-testid": "verify", onclick: () => act(() => call("library_verify", { id: r.id }), () => call("library_verify", { id: r.id })) }, "Verify"),
      h("button", { class: "danger", "data-testid": "delete", onclick: () => act(() => call("library_delete", { id: r.id, dryRun: true }), () => call("library_delete", { id: r.id, dryRun: false })) }, "Delete…")));
  const load = async () => {
    clear(list);
    try {
      const repos = await call("library_list", {});
      if (repos.length === 0) return void list.append(notice("The cache is empty. Download a model on the Models page.", "info", "library-empty"));
      const total = repos.reduce((a, r) => a + r.size_on_disk, 0);
      list.append(h("table", { class: "table" },
        h("thead", {}, h("tr", {}, h("th", {}, "Model"), h("th", {}, "Revisions"), h("th", {}, "On disk"), h("th", {}, "Shared"), h("th", {}, ""))),
        h("tbody", {}, ...repos.map(row))),
        h("p", { class: "muted" }, `${repos.length} models, ${formatBytes(total)} in all`));
    } catch (e) {
      list.append(errorBox(e as AppError, "library-error"));
    }
  };
  root.append(h("h1", {}, "Library"),
    h("div", { class: "actions" },
      h("button", { onclick: () => void load() }, "Refresh"),
      h("button", { "data-testid": "prune", onclick: () => act(() => call("library_prune", { dryRun: true }), () => call("library_prune", { dryRun: false })) }, "Prune old revisions…")),
    list, out);
  void load();
}
