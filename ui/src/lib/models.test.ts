import { describe, expect, it } from "vitest";
import type { GpuView, ModelDetail } from "../bindings";
import { deviceLabel, detailFacts, formatCount, hitLine, orderFiles, summaryText } from "./models";

const detail: ModelDetail = {
  id: "a/b", revision: "0123456789abcdef", summary: "", license: "mit", gated: false, pipeline_tag: "text-generation", tags: [],
  downloads: 1234, likes: 5, files: [
    { path: "README.md", size: 10, selected: false },
    { path: "pytorch_model.bin", size: 5000, selected: false },
    { path: "config.json", size: 600, selected: true },
    { path: "model.safetensors", size: 4000, selected: true },
  ], download_bytes: 4600, repo_bytes: 9610, cached: false, from_cache: false,
};

describe("models page text", () => {
  it("counts like the Hub", () => {
    expect([formatCount(950), formatCount(1234), formatCount(3_400_000), formatCount(-1)]).toEqual(["950", "1.2k", "3.4M", "?"]);
  });
  it("a hit's line names task and gating", () => {
    expect(hitLine({ id: "a/b", downloads: 1500, likes: 3, pipeline_tag: "text-generation", gated: true }))
      .toBe("1.5k downloads · 3 likes · text-generation · gated: accept the licence on the Hub and set a token");
    expect(hitLine({ id: "a/b", downloads: 0, likes: 0, pipeline_tag: null, gated: false })).toBe("0 downloads · 0 likes");
  });
  it("details: what a download fetches against the whole repository", () => {
    expect(detailFacts(detail)).toBe("licence mit · download size 4.49 KB (repository 9.38 KB) · text-generation · 1.2k downloads · revision 0123456789");
    expect(detailFacts({ ...detail, license: null, gated: true, cached: true, from_cache: true })).toBe(
      "licence not stated · download size 4.49 KB (repository 9.38 KB) · text-generation · gated · in the cache · offline: read from the cache · revision 0123456789");
  });
  it("files a download fetches come first, largest first", () => {
    expect(orderFiles(detail.files).map((f) => f.path)).toEqual(["model.safetensors", "config.json", "pytorch_model.bin", "README.md"]);
  });
  it("an empty summary says why", () => {
    expect(summaryText(detail)).toBe("This model has no card text.");
    expect(summaryText({ ...detail, gated: true })).toContain("accept it on the Hub");
    expect(summaryText({ ...detail, summary: "A model." })).toBe("A model.");
    expect(summaryText({ ...detail, from_cache: true })).toContain("Offline: the model card was not downloaded");
  });
  it("device labels name the GPU", () => {
    const gpu = { index: 1, name: "RTX 2080" } as GpuView;
    expect(deviceLabel("cuda:1", [gpu])).toBe("cuda:1: RTX 2080");
    expect(deviceLabel("cpu", [])).toBe("CPU");
    expect(deviceLabel("cuda:3", [gpu])).toBe("cuda:3");
    expect(deviceLabel("auto", [])).toContain("else the CPU");
  });
});
