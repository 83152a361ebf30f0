// System: GPUs through NVML (name, memory used and free, utilisation, temperature), system
// RAM, the cache's disk, and the compute devices this build can use.
import type { GpuView } from "../bindings";
import { h, clear, errorBox, notice } from "../dom";
import { formatBytes, formatGpuReadings, formatPercent } from "../lib/format";
import { state, subscribe, loadSystem } from "../store";

function gauge(used: number, total: number, testId: string): HTMLElement {
  return h("div", { class: "gauge-row" }, h("meter", { min: 0, max: Math.max(1, total), value: used, high: total * 0.9, "data-testid": testId }),
    h("span", {}, `${formatBytes(used)} used of ${formatBytes(total)} (${formatPercent(used, total)})`));
}

function gpuCard(g: GpuView): HTMLElement {
  return h("div", { class: "card", "data-testid": `gpu-${g.index}` },
    h("div", { class: "card-head" }, h("b", {}, `GPU ${g.index}: ${g.name}`)),
    gauge(g.used_bytes, g.total_bytes, "vram"),
    h("div", { "data-testid": "gpu-readings" }, formatGpuReadings(g.utilization_percent, g.temperature_c)),
    h("div", { class: "muted" }, `free ${formatBytes(g.free_bytes)} · compute ${g.compute_capability}${g.supports_bf16 ? " (bf16)" : " (fp16 only)"} · driver ${g.driver_version}`));
}

export function systemPage(root: HTMLElement): () => void {
  const body = h("div", {});
  const draw = () => {
    clear(body);
    if (state.systemError) body.append(errorBox(state.systemError));
    const s = state.system;
    if (!s) return void body.append(notice("Reading the machine…"));
    body.append(h("h2", {}, "GPUs"));
    if (s.gpus.length === 0) {
      body.append(notice(`No NVIDIA GPU found: models run and train on the CPU (${s.cpu_threads} threads), slower but complete. No GPU memory, utilisation or temperature to show.`, "warn", "no-gpu"));
      if (s.no_gpu_reason) body.append(h("div", { class: "muted", "data-testid": "no-gpu-reason" }, `NVML says: ${s.no_gpu_reason}`));
    }
    for (const g of s.gpus) body.append(gpuCard(g));
    body.append(h("p", { class: "muted", "data-testid": "devices" }, `Compute devices this build can use: ${s.devices.join(", ")}${s.cuda_built ? "" : " (built without CUDA)"}. Pick one in Settings.`));
    body.append(h("h2", {}, "Memory"), gauge(s.ram_total_bytes - s.ram_available_bytes, s.ram_total_bytes, "ram"));
    body.append(h("h2", {}, "Disk"));
    if (s.cache_disk) body.append(h("div", { class: "muted" }, `model cache: ${s.cache_disk.path}`), gauge(s.cache_disk.total_bytes - s.cache_disk.available_bytes, s.cache_disk.total_bytes, "disk"), h("div", {}, `${formatBytes(s.cache_disk.available_bytes)} free`));
    else body.append(notice("The cache folder's disk could not be read."));
  };
  root.append(h("h1", {}, "System"), h("div", { class: "actions" }, h("button", { "data-testid": "system-refresh", onclick: () => void loadSystem() }, "Refresh")), body);
  draw();
  return subscribe(draw);
}
