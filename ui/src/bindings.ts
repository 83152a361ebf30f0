// Generated from the Rust types in src-tauri by `UPDATE_BINDINGS=1 cargo test -p qlora-studio-app --lib bindings`.
// Do not edit: a test fails when this file is stale.
import type { Channel } from "@tauri-apps/api/core";

export type ErrorCode = "invalid_input" | "not_found" | "offline" | "bad_format" | "does_not_fit" | "cancelled" | "busy" | "io" | "not_built_yet" | "internal";

export type AppError = { code: ErrorCode, message: string, };

export type Settings = { 
/**
 * Hugging Face access token, for gated models (Gemma, Mistral). `None`: anonymous.
 */
hub_token: string | null, 
/**
 * The Hugging Face cache folder; `None`: the standard one (`$HF_HOME/hub`).
 */
cache_dir: string | null, 
/**
 * The Hub endpoint (a mirror, or the local test server).
 */
endpoint: string, 
/**
 * Never touch the network: only cached and local models are listed and used.
 */
offline: boolean, 
/**
 * Folders holding Hub-style model folders (config.json, tokenizer.json, safetensors)
 * that are ready to use without the Hub.
 */
local_model_dirs: Array<string>, 
/**
 * Where models load and train: `auto` (the first GPU when this build has CUDA and one
 * answers, else the CPU), `cpu` or `cuda:N`.
 */
device: string, };

export type GpuView = { index: number, name: string, total_bytes: number, free_bytes: number, used_bytes: number, compute_capability: string, driver_version: string, supports_bf16: boolean, 
/**
 * Percent busy over NVML's last sample period; None when the card does not report it.
 */
utilization_percent: number | null, 
/**
 * Degrees Celsius; None when the card does not report it.
 */
temperature_c: number | null, };

export type DiskView = { path: string, total_bytes: number, available_bytes: number, };

export type SystemInfo = { gpus: Array<GpuView>, 
/**
 * Why there is no GPU, in NVML's words (e.g. the driver library is missing), when `gpus`
 * is empty.
 */
no_gpu_reason: string | null, ram_total_bytes: number, ram_available_bytes: number, 
/**
 * The disk holding the model cache.
 */
cache_disk: DiskView | null, cpu_threads: number, 
/**
 * The compute devices Settings offers: `auto`, `cpu`, and `cuda:N` for each GPU when this
 * build has CUDA.
 */
devices: Array<string>, 
/**
 * This build can run on CUDA (built with the `cuda` feature).
 */
cuda_built: boolean, };

export type GpuPresetView = { id: string, name: string, total_bytes: number, compute_capability: string, supports_bf16: boolean, };

export type CuratedModel = { id: string, name: string, 
/**
 * Parameters in billions, from the model card.
 */
params_b: number, license: string, 
/**
 * Needs accepting a licence on the Hub (and a token).
 */
gated: boolean, note: string, };

export type ModelHit = { id: string, downloads: number, likes: number, pipeline_tag: string | null, 
/**
 * Needs accepting a licence on the Hub (and a token).
 */
gated: boolean, };

export type RepoFile = { path: string, size: number, 
/**
 * Part of what a download fetches (the loader's files; duplicate weight formats are not).
 */
selected: boolean, };

export type ModelDetail = { id: string, 
/**
 * The commit the details describe.
 */
revision: string, summary: string, license: string | null, gated: boolean, pipeline_tag: string | null, tags: Array<string>, downloads: number, likes: number, files: Array<RepoFile>, 
/**
 * What a download fetches: the selected files.
 */
download_bytes: number, 
/**
 * Every file of the repository.
 */
repo_bytes: number, 
/**
 * This revision is in the local cache.
 */
cached: boolean, 
/**
 * Read from the cache in offline mode (no counters, no tags).
 */
from_cache: boolean, };

export type LocalModel = { 
/**
 * The folder's name, shown as the model's name.
 */
name: string, path: string, 
/**
 * Total size of the files in the folder.
 */
bytes: number, 
/**
 * True when config.json, a tokenizer and at least one safetensors file are present.
 */
ready: boolean, 
/**
 * What is missing when not ready, e.g. "tokenizer.json".
 */
missing: Array<string>, 
/**
 * True for a GGUF imported into the app's models folder: the app may delete it.
 */
imported: boolean, };

export type GpuChoice = { "kind": "this_machine" } | { "kind": "preset", id: string, };

export type PlanRequest = { 
/**
 * A Hub model id (`org/name`) or a local model folder.
 */
model: string, gpu: GpuChoice, 
/**
 * "nf4", "int8", "fp16" or "bf16".
 */
precision: string, context: number, 
/**
 * Plan QLoRA training (else inference only).
 */
train: boolean, batch_size: number, lora_rank: number, gradient_checkpointing: boolean, };

export type PlanItem = { label: string, bytes: number, };

export type Verdict = "fits" | "tight" | "does_not_fit";

export type PlanReport = { model: string, device: string, verdict: Verdict, budget_bytes: number, total_bytes: number, breakdown: Array<PlanItem>, download_bytes: number, disk_free_bytes: number | null, 
/**
 * The smallest change that makes it fit, when it does not.
 */
suggestion: string | null, notes: Array<string>, };

export type DownloadEvent = { "kind": "started", job: number, model: string, total_bytes: number, resumed_bytes: number, } | { "kind": "progress", job: number, file: string, done_bytes: number, total_bytes: number, bytes_per_sec: number, eta_secs: number | null, } | { "kind": "finished", job: number, path: string, } | { "kind": "cancelled", job: number, done_bytes: number, } | { "kind": "failed", job: number, error: AppError, };

export type ImportEvent = { "kind": "started", job: number, file: string, name: string, total_bytes: number, } | { "kind": "progress", job: number, done_bytes: number, total_bytes: number, } | { "kind": "finished", job: number, model: LocalModel, } | { "kind": "cancelled", job: number, } | { "kind": "failed", job: number, error: AppError, };

export type CachedRepo = { id: string, revisions: Array<string>, size_on_disk: number, 
/**
 * Bytes shared with other revisions (the same blob).
 */
shared_bytes: number, complete: boolean, };

export type CacheReport = { dry_run: boolean, actions: Array<string>, freed_bytes: number, problems: Array<string>, };

export type DatasetPreview = { path: string, format: string, rows: number, sample: Array<string>, token_stats: string | null, warnings: Array<string>, };

export type TrainRequest = { base_model: string, dataset: string, 
/**
 * A config file such as `configs/demo_smollm2.yaml`, or None: a config made for the base
 * model from its config.json (`qlora_train::defaults`), with the knobs below.
 */
config: string | null, output_dir: string, steps: number, learning_rate: number, lora_rank: number, lora_alpha: number, batch_size: number, context: number, 
/**
 * Resume from the last checkpoint in `output_dir`.
 */
resume: boolean, };

export type TrainDefaults = { learning_rate: number, lora_rank: number, lora_alpha: number, batch_size: number, context: number, 
/**
 * What the form does not show: targets, dtype, accumulation, schedule.
 */
notes: Array<string>, };

export type TrainEvent = { "kind": "started", job: number, total_steps: number, resumed_from: number, } | { "kind": "step", job: number, step: number, loss: number, lr: number, tokens_per_sec: number, eta_secs: number | null, memory_bytes: number | null, } | { "kind": "eval", job: number, step: number, loss: number, } | { "kind": "checkpoint", job: number, step: number, path: string, } | { "kind": "finished", job: number, adapter_dir: string, } | { "kind": "samples", job: number, samples: Array<SampleAnswer>, error: AppError | null, } | { "kind": "cancelled", job: number, step: number, } | { "kind": "failed", job: number, error: AppError, };

export type SampleAnswer = { prompt: string, before: string, after: string, };

export type ChatMessage = { 
/**
 * "system", "user" or "assistant".
 */
role: string, content: string, };

export type Sampling = { temperature: number, top_p: number, top_k: number, max_new_tokens: number, repetition_penalty: number, 
/**
 * `None`: a random seed.
 */
seed: number | null, };

export type Conversation = { id: string, title: string, 
/**
 * The base model: a Hub id or a local folder.
 */
model: string, 
/**
 * An adapter folder applied on top of the base, if any.
 */
adapter: string | null, adapter_scale: number, system_prompt: string, sampling: Sampling, messages: Array<ChatMessage>, 
/**
 * Unix seconds of the last change.
 */
updated: number, };

export type ConversationSummary = { id: string, title: string, model: string, updated: number, };

export type ChatRequest = { 
/**
 * The stream id the UI picked, used by `chat_stop`.
 */
stream: number, model: string, adapter: string | null, adapter_scale: number, system_prompt: string, messages: Array<ChatMessage>, sampling: Sampling, };

export type ChatChunk = { "kind": "token", text: string, } | { "kind": "done", tokens: number, tokens_per_sec: number, stopped: boolean, } | { "kind": "failed", error: AppError, };

export type AdapterInfo = { 
/**
 * The adapter folder.
 */
dir: string, 
/**
 * How many of the model's linear layers now carry it.
 */
modules: number, rank: number, alpha: number, 
/**
 * The base model the adapter says it was trained on (`base_model_name_or_path`).
 */
base_model: string | null, };

/** Event names, and the payload each carries. */
export const EVENTS = { download: "download", train: "train", import: "import" } as const;
export interface EventPayloads { download: DownloadEvent; train: TrainEvent; import: ImportEvent }

/** Every command: its arguments and its result. */
export interface Commands {
  get_settings: { args: {  }; result: Settings };
  save_settings: { args: { settings: Settings }; result: Settings };
  system_info: { args: {  }; result: SystemInfo };
  curated_models: { args: {  }; result: CuratedModel[] };
  search_models: { args: { query: string }; result: ModelHit[] };
  model_info: { args: { id: string }; result: ModelDetail };
  list_local_models: { args: {  }; result: LocalModel[] };
  import_gguf: { args: { path: string }; result: number };
  cancel_import: { args: { job: number }; result: null };
  delete_local_model: { args: { path: string }; result: number };
  gpu_presets: { args: {  }; result: GpuPresetView[] };
  plan_model: { args: { request: PlanRequest }; result: PlanReport };
  start_download: { args: { model: string }; result: number };
  cancel_download: { args: { job: number }; result: null };
  library_list: { args: {  }; result: CachedRepo[] };
  library_delete: { args: { id: string; dryRun: boolean }; result: CacheReport };
  library_prune: { args: { dryRun: boolean }; result: CacheReport };
  library_verify: { args: { id: string }; result: CacheReport };
  preview_dataset: { args: { request: TrainRequest }; result: DatasetPreview };
  start_training: { args: { request: TrainRequest }; result: number };
  train_defaults: { args: { baseModel: string }; result: TrainDefaults };
  cancel_training: { args: { job: number }; result: null };
  list_conversations: { args: {  }; result: ConversationSummary[] };
  load_conversation: { args: { id: string }; result: Conversation };
  save_conversation: { args: { conversation: Conversation }; result: Conversation };
  delete_conversation: { args: { id: string }; result: null };
  chat_send: { args: { request: ChatRequest; onChunk: Channel<ChatChunk> }; result: null };
  chat_stop: { args: { stream: number }; result: null };
  chat_attach_adapter: { args: { model: string; adapter: string }; result: AdapterInfo };
  chat_detach_adapter: { args: {  }; result: null };
}
