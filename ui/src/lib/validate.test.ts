import { describe, expect, it } from "vitest";
import { checkModelRef, validatePlan, validateSampling, validateSettings, validateTrain } from "./validate";

describe("model references", () => {
  it("accepts Hub ids and absolute folders", () => {
    expect(checkModelRef("TinyLlama/TinyLlama-1.1B-Chat-v1.0")).toBeNull();
    expect(checkModelRef(" microsoft/phi-2 ")).toBeNull();
    expect(checkModelRef("/work/test-assets/SmolLM2-135M-Instruct")).toBeNull();
  });
  it("names what is wrong", () => {
    expect(checkModelRef("")).toMatch(/name a model/);
    expect(checkModelRef("gpt2")).toMatch(/'gpt2' is not a Hub model id/);
    expect(checkModelRef("a/b/c")).toMatch(/organisation\/name/);
    expect(checkModelRef("org/na me")).not.toBeNull();
  });
});

describe("forms", () => {
  const plan = { model: "microsoft/phi-2", precision: "nf4", context: 512, train: true, batchSize: 1, loraRank: 8 };
  it("plan", () => {
    expect(validatePlan(plan)).toEqual({});
    const e = validatePlan({ ...plan, precision: "fp8", context: 0, loraRank: 0 });
    expect(Object.keys(e).sort()).toEqual(["context", "loraRank", "precision"]);
    // Training knobs are not checked when only inference is planned.
    expect(validatePlan({ ...plan, train: false, loraRank: 0 })).toEqual({});
  });
  it("train", () => {
    const ok = { baseModel: "/m/SmolLM2", dataset: "/d/train.jsonl", outputDir: "/runs/a", steps: 10, learningRate: 2e-4, loraRank: 8, loraAlpha: 16, batchSize: 1, context: 256 };
    expect(validateTrain(ok)).toEqual({});
    const e = validateTrain({ ...ok, dataset: "/d/notes.txt", steps: 0, learningRate: 2, outputDir: "runs" });
    expect(e.dataset).toMatch(/jsonl/);
    expect(Object.keys(e).sort()).toEqual(["dataset", "learningRate", "outputDir", "steps"]);
  });
  it("settings", () => {
    const ok = { endpoint: "https://huggingface.co", cacheDir: "", hubToken: "", localModelDirs: ["/m"] };
    expect(validateSettings(ok)).toEqual({});
    const e = validateSettings({ endpoint: "huggingface.co", cacheDir: "cache", hubToken: "hf abc", localModelDirs: ["m"] });
    expect(Object.keys(e).sort()).toEqual(["cacheDir", "endpoint", "hubToken", "localModelDirs"]);
  });
  it("sampling", () => {
    expect(validateSampling({ temperature: 0.7, topP: 0.9, topK: 40, maxNewTokens: 128 })).toEqual({});
    expect(Object.keys(validateSampling({ temperature: -1, topP: 0, topK: 1.5, maxNewTokens: 0 })).length).toBe(4);
  });
});
