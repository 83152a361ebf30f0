import { describe, expect, it } from "vitest";
import { adapterSummary, chatRuns, checkScale, folderName, scaleLabel, shortPath } from "./adapter";

describe("chat runs", () => {
  it("no adapter: one base answer, whatever the other settings", () => {
    expect(chatRuns(null, 1, true)).toEqual([{ adapter: null, scale: 0, label: "base", testid: "answer" }]);
    expect(chatRuns("   ", 1, false)).toHaveLength(1);
    expect(chatRuns("  ", 1, false)[0].adapter).toBeNull();
  });
  it("an adapter: one answer at the slider's scale", () => {
    const [r] = chatRuns(" /runs/demo/adapter ", 0.5, false);
    expect(r).toEqual({ adapter: "/runs/demo/adapter", scale: 0.5, label: "base + adapter × 0.50", testid: "answer-adapter" });
    expect(chatRuns("/a", 0, false)[0].label).toBe("base (adapter at scale 0)");
  });
  it("side by side: the base first, then the adapter", () => {
    const runs = chatRuns("/a", 1, true);
    expect(runs.map((r) => [r.adapter, r.scale, r.testid])).toEqual([[null, 0, "answer"], ["/a", 1, "answer-adapter"]]);
  });
});

describe("scale", () => {
  it("accepts 0..2 and says what is wrong otherwise", () => {
    expect(checkScale(0)).toBeNull();
    expect(checkScale(2)).toBeNull();
    expect(checkScale(-0.1)).toMatch(/between 0/);
    expect(checkScale(2.5)).toMatch(/and 2/);
    expect(checkScale(NaN)).not.toBeNull();
  });
  it("labels 0 as the base", () => {
    expect(scaleLabel(0)).toBe("0.00 (base)");
    expect(scaleLabel(1.25)).toBe("1.25");
  });
});

describe("adapter summary", () => {
  it("names the folder, rank, alpha, layers and base", () => {
    expect(folderName("/runs/demo-run/adapter/")).toBe("adapter");
    expect(folderName("C:\\runs\\x")).toBe("x");
    expect(shortPath("/runs/demo-run/adapter/")).toBe("demo-run/adapter");
    expect(shortPath("adapter")).toBe("adapter");
    const s = adapterSummary({ dir: "/runs/demo-run/adapter", modules: 210, rank: 8, alpha: 16, base_model: "/assets/SmolLM2-135M-Instruct" });
    expect(s).toBe("Attached demo-run/adapter: r=8, alpha=16, on 210 layers · trained on SmolLM2-135M-Instruct");
    expect(adapterSummary({ dir: "a", modules: 1, rank: 2, alpha: 4, base_model: null })).not.toMatch(/trained on/);
  });
});
