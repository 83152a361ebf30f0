//! `qlora plan MODEL`: disk and memory needs of a model for download, inference and QLoRA
//! training, read from metadata only, against this machine's GPU, a preset card or the CPU.
//! The core (`qlora_plan`) computes; this file parses flags and prints a table or `--json`.

use anyhow::Context;
use qlora_studio::plan::{self as qp, Fit, Plan, PlanOptions, Precision, Target, TrainOptions};
use std::path::Path;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A local model folder (config.json, safetensors) or a Hub id such as `org/name`.
    pub model: String,
    /// Hub revision (branch, tag or commit).
    #[arg(long, default_value = "main")]
    pub revision: String,
    /// `auto` (this machine's GPU, else the CPU), `cpu`, or a preset: rtx2080, rtx3060, rtx4090, a100-80, h100…
    #[arg(long, default_value = "auto")]
    pub gpu: String,
    /// Context length in tokens (prompt + answer); default min(2048, the model's maximum).
    #[arg(long)]
    pub context: Option<u64>,
    /// Sequences generated at once.
    #[arg(long, default_value_t = 1)]
    pub batch: u64,
    /// Also plan QLoRA training.
    #[arg(long)]
    pub train: bool,
    #[arg(long, default_value_t = 512)]
    pub seq_len: u64,
    #[arg(long, default_value_t = 4)]
    pub micro_batch: u64,
    /// LoRA rank.
    #[arg(long, default_value_t = 16)]
    pub rank: u64,
    /// LoRA target projections, comma-separated (default: all of them).
    #[arg(long, value_delimiter = ',')]
    pub targets: Vec<String>,
    /// Gradient checkpointing (recompute each layer in backward).
    #[arg(long)]
    pub checkpointing: bool,
    /// With --checkpointing on a GPU, keep the layer inputs on the GPU instead of pinned host
    /// memory (the trainer's `offload_checkpoints: false`).
    #[arg(long)]
    pub no_offload: bool,
    /// Base weights for training without double quantization (default: nf4 with double quantization).
    #[arg(long)]
    pub no_double_quant: bool,
    /// Training checkpoints kept on disk.
    #[arg(long, default_value_t = 2)]
    pub checkpoints: u64,
    /// Plan a merged 16-bit export after training.
    #[arg(long)]
    pub merged: bool,
    /// Print the plan as JSON (shape documented in docs/PLANNER.md).
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let target = match args.gpu.as_str() {
        "auto" => Target::detect()?,
        "cpu" => {
            let m = qlora_studio::gpu::system_memory()?;
            Target::cpu(m.total_bytes, m.available_bytes, None)
        }
        id => Target::preset(id)?,
    };
    let mut cached_note = None;
    let (meta, cache_dir) = if Path::new(&args.model).is_dir() {
        (qp::gather(&qp::LocalFolder::new(&args.model))?, None)
    } else {
        let client = qlora_studio::hub::HubClient::from_env().context("setting up the Hub client")?;
        let cache = client.config().cache_dir.clone();
        let offline = client.config().offline;
        let source = qp::HubSource::new(client, &args.model, &args.revision);
        let meta = qp::gather(&source)?;
        cached_note = source.cached_commit().map(|c| {
            let why = if offline { "offline mode (HF_HUB_OFFLINE)" } else { "the Hub could not be reached" };
            format!("{why}: planned from the cached snapshot {c}; the Hub may have a newer revision")
        });
        (meta, Some(cache))
    };
    let train = args.train.then(|| TrainOptions {
        seq_len: args.seq_len,
        micro_batch: args.micro_batch,
        rank: args.rank,
        targets: args.targets.clone(),
        checkpointing: args.checkpointing,
        base: if args.no_double_quant { Precision::Nf4 } else { Precision::Nf4Dq },
        dropout: false,
        offload_checkpoints: !args.no_offload,
    });
    let opts = PlanOptions { context: args.context, batch: args.batch, train, checkpoints: args.checkpoints, merged_export: args.merged };
    let overheads = qp::Overheads::builtin()?;
    let mut plan = qp::plan(&meta, &target, &opts, overheads)?;
    let disk_dir = cache_dir.unwrap_or_else(|| Path::new(&args.model).to_path_buf());
    plan.disk.check_free_space(&disk_dir, overheads.verdict.tight_fraction.value)?;
    plan.notes.extend(cached_note);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        print!("{}", render(&plan));
    }
    Ok(())
}

fn gib(b: u64) -> String {
    format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
}

fn fit(f: Fit) -> &'static str {
    f.label()
}

/// The readable table.
pub fn render(p: &Plan) -> String {
    let mut s = String::new();
    let from = match p.tensors_from {
        qp::TensorsFrom::SafetensorsHeaders => "safetensors headers",
        qp::TensorsFrom::Architecture => "config.json only (shapes from the architecture)",
    };
    s += &format!("model      {} ({:?}, {} parameters, from {from})\n", p.model, p.architecture, p.parameters);
    s += &format!("target     {} — {} available of {}\n", p.target.name, gib(p.target.available_bytes), gib(p.target.total_bytes));
    let exact = if p.download_exact { "" } else { " (estimate)" };
    s += &format!("download   {} to fetch, {} in all{exact}\n\n", gib(p.download_bytes), gib(p.model_bytes));
    s += &format!("inference, context {} × batch {}\n", p.context, p.batch);
    s += &format!("{:<8}{:>12}{:>12}{:>12}{:>12}{:>12}  verdict\n", "", "weights", "kv cache", "activations", "overhead", "total");
    for prec in Precision::ALL {
        let e = p.inference.get(prec);
        let m = &e.memory;
        s += &format!(
            "{:<8}{:>12}{:>12}{:>12}{:>12}{:>12}  {}\n",
            prec.key(),
            gib(m.weights_bytes),
            gib(m.kv_cache_bytes),
            gib(m.activations_bytes),
            gib(m.overhead_bytes),
            gib(m.total_bytes),
            fit(e.verdict)
        );
    }
    if let Some(sug) = &p.inference_suggestion {
        s += &format!("to fit in {}: {} → {} ({})\n", p.preferred_16bit.key(), sug.change, gib(sug.total_bytes), fit(sug.fit));
    }
    if let Some(t) = &p.training {
        let o = &t.options;
        let m = &t.memory;
        s += &format!(
            "\nQLoRA training: seq {} × micro-batch {}, rank {} on {}, checkpointing {}, base {}\n",
            o.seq_len,
            o.micro_batch,
            o.rank,
            if o.targets.is_empty() { "all projections".to_string() } else { o.targets.join(",") },
            if o.checkpointing { "on" } else { "off" },
            o.base.key()
        );
        for (name, v) in [
            ("base weights", m.base_weights_bytes),
            ("LoRA weights (f32)", m.lora_weights_bytes),
            ("LoRA gradients (f32)", m.lora_grads_bytes),
            ("AdamW states (2 × f32)", m.optimizer_bytes),
            ("activations", m.activations_bytes),
            ("logits / loss buffer", m.logits_bytes),
            ("dequantize scratch", m.dequant_scratch_bytes),
            ("overhead", m.overhead_bytes),
        ] {
            s += &format!("  {name:<24}{:>12}\n", gib(v));
        }
        s += &format!("  {:<24}{:>12}  {}\n", "total", gib(m.total_bytes), fit(t.verdict));
        if m.host_offload_bytes > 0 {
            s += &format!("  {:<24}{:>12}  (layer inputs offloaded, pinned host RAM)\n", "host memory", gib(m.host_offload_bytes));
        }
        if let Some(sug) = &t.suggestion {
            s += &format!("to fit: {} → {} ({})\n", sug.change, gib(sug.total_bytes), fit(sug.fit));
        }
    }
    let d = &p.disk;
    s += &format!("\ndisk       download {}", gib(d.download_bytes));
    if d.checkpoint_bytes > 0 {
        s += &format!(", {} checkpoints × {}, adapter {}", d.checkpoints, gib(d.checkpoint_bytes), gib(d.final_adapter_bytes));
    }
    if d.merged_export_bytes > 0 {
        s += &format!(", merged export {}", gib(d.merged_export_bytes));
    }
    s += &format!(" = {}", gib(d.total_new_bytes));
    if let (Some(a), Some(v)) = (d.available_bytes, d.verdict) {
        s += &format!(" of {} free: {}", gib(a), fit(v));
    }
    s += "\n";
    for n in &p.notes {
        s += &format!("note: {n}\n");
    }
    if p.overheads_estimated {
        s += "note: some runtime overheads are still estimates (configs/overheads.json says which and where the others were measured)\n";
    }
    s
}
