// Form checks run before a command is sent, so the user sees what to fix next to the field.
// The shell checks again: these only save a round trip and give the message a place.

/** Errors of a form, by field name. Empty when the form is valid. */
export type FormErrors = Record<string, string>;

const ID_PART = /^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$/;

/** A Hub id (`org/name`) or an absolute local folder. */
export function checkModelRef(value: string): string | null {
  const v = value.trim();
  if (v === "") return "name a model: a Hub id such as TinyLlama/TinyLlama-1.1B-Chat-v1.0 or a local folder";
  if (v.startsWith("/")) return null;
  const parts = v.split("/");
  if (parts.length === 2 && parts.every((p) => ID_PART.test(p))) return null;
  return `'${v}' is not a Hub model id: use the form organisation/name, or an absolute folder path`;
}

function intIn(v: number, lo: number, hi: number): boolean {
  return Number.isInteger(v) && v >= lo && v <= hi;
}

export interface PlanForm {
  model: string;
  precision: string;
  context: number;
  train: boolean;
  batchSize: number;
  loraRank: number;
}

export const PRECISIONS = ["nf4", "int8", "fp16", "bf16"] as const;

export function validatePlan(f: PlanForm): FormErrors {
  const e: FormErrors = {};
  const m = checkModelRef(f.model);
  if (m) e.model = m;
  if (!(PRECISIONS as readonly string[]).includes(f.precision)) e.precision = `precision must be one of ${PRECISIONS.join(", ")}`;
  if (!intIn(f.context, 16, 131072)) e.context = "context must be a whole number of tokens between 16 and 131072";
  if (f.train) {
    if (!intIn(f.batchSize, 1, 512)) e.batchSize = "batch size must be between 1 and 512";
    if (!intIn(f.loraRank, 1, 1024)) e.loraRank = "LoRA rank must be between 1 and 1024";
  }
  return e;
}

export interface TrainForm {
  baseModel: string;
  dataset: string;
  outputDir: string;
  steps: number;
  learningRate: number;
  loraRank: number;
  loraAlpha: number;
  batchSize: number;
  context: number;
}

export function validateTrain(f: TrainForm): FormErrors {
  const e: FormErrors = {};
  const m = checkModelRef(f.baseModel);
  if (m) e.baseModel = m;
  // Empty: the preset's own data files.
  if (f.dataset.trim() && !/\.(jsonl|json|csv|parquet)$/i.test(f.dataset.trim())) e.dataset = "the dataset must be a .jsonl, .json, .csv or .parquet file";
  if (!f.outputDir.trim().startsWith("/")) e.outputDir = "the output folder must be an absolute path";
  if (!intIn(f.steps, 1, 1_000_000)) e.steps = "steps must be a whole number of at least 1";
  if (!(f.learningRate > 0 && f.learningRate < 1)) e.learningRate = "learning rate must be between 0 and 1 (e.g. 0.0002)";
  if (!intIn(f.loraRank, 1, 1024)) e.loraRank = "LoRA rank must be between 1 and 1024";
  if (!(f.loraAlpha > 0)) e.loraAlpha = "LoRA alpha must be positive";
  if (!intIn(f.batchSize, 1, 512)) e.batchSize = "batch size must be between 1 and 512";
  if (!intIn(f.context, 16, 131072)) e.context = "context must be between 16 and 131072 tokens";
  return e;
}

export interface SettingsForm {
  endpoint: string;
  cacheDir: string;
  hubToken: string;
  localModelDirs: string[];
}

export function validateSettings(f: SettingsForm): FormErrors {
  const e: FormErrors = {};
  if (!/^https?:\/\/[^\s/]{3,}/.test(f.endpoint.trim())) e.endpoint = "the endpoint must be a web address, e.g. https://huggingface.co";
  if (f.cacheDir.trim() && !f.cacheDir.trim().startsWith("/")) e.cacheDir = "the cache folder must be an absolute path (or empty for the default)";
  if (f.hubToken && /\s/.test(f.hubToken.trim())) e.hubToken = "the token has spaces in it: paste it again";
  const bad = f.localModelDirs.find((d) => !d.startsWith("/"));
  if (bad !== undefined) e.localModelDirs = `'${bad}' is not an absolute folder path`;
  return e;
}

export interface SamplingForm {
  temperature: number;
  topP: number;
  topK: number;
  maxNewTokens: number;
}

export function validateSampling(f: SamplingForm): FormErrors {
  const e: FormErrors = {};
  if (!(f.temperature >= 0 && f.temperature <= 5)) e.temperature = "temperature must be between 0 and 5";
  if (!(f.topP > 0 && f.topP <= 1)) e.topP = "top-p must be in (0, 1]";
  if (!intIn(f.topK, 0, 1000)) e.topK = "top-k must be a whole number from 0 (off) to 1000";
  if (!intIn(f.maxNewTokens, 1, 32768)) e.maxNewTokens = "max new tokens must be between 1 and 32768";
  return e;
}
