//! `qlora train --config FILE [--resume]`: QLoRA fine-tuning from a YAML config. Prints the
//! planner's memory estimate and the data preflight, then one progress line per optimizer
//! step; Ctrl-C stops after the current step with a checkpoint, so `--resume` continues.

use anyhow::Context;
use qlora_studio::engine::DeviceChoice;
use qlora_studio::jobs::{CancelToken, ProgressSink};
use qlora_studio::plan as qp;
use qlora_studio::train::config::{QuantKind, TrainConfig};
use qlora_studio::train::events::TrainEvent;
use qlora_studio::train::trainer::{self, Trainer};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The training config (YAML; see configs/).
    #[arg(long)]
    pub config: PathBuf,
    /// Continue from the newest checkpoint in the config's output_dir.
    #[arg(long)]
    pub resume: bool,
    /// Override the config's model folder.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Override the config's output_dir.
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    /// Override the config's max_steps.
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Print the preflight report and stop.
    #[arg(long)]
    pub preflight: bool,
    /// Print events as JSON lines instead of progress lines.
    #[arg(long)]
    pub json: bool,
    /// Where to train: auto (the first CUDA GPU if this build has CUDA and one answers, else
    /// the CPU), cpu, or cuda:N
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut cfg = TrainConfig::from_file(&args.config)?;
    if let Some(m) = args.model {
        cfg.model = m;
    }
    if let Some(o) = args.output_dir {
        cfg.output_dir = o;
    }
    if let Some(s) = args.max_steps {
        cfg.max_steps = Some(s);
    }
    print_plan(&cfg);
    let data = trainer::prepare_data(&cfg)?;
    eprint!("{}", data.preflight.to_text());
    if args.preflight {
        return Ok(());
    }
    let device = args.device.open()?;
    eprintln!("device: {}", qlora_studio::engine::device::device_name(&device));
    let mut t = Trainer::new(cfg, data, &device)?;
    let cancel = CancelToken::new();
    watch_ctrl_c(cancel.clone());
    let json = args.json;
    let sink = move |e: TrainEvent| print_event(&e, json);
    let out = t.run(args.resume, &sink as &dyn ProgressSink<TrainEvent>, &cancel)?;
    if out.interrupted {
        eprintln!("stopped at step {}; continue with --resume", out.step);
    } else if let Some(dir) = out.adapter_dir {
        println!("{}", dir.display());
    }
    Ok(())
}

/// The planner's estimate of this run's peak memory, or why there is none.
fn print_plan(cfg: &TrainConfig) {
    let estimate = || -> anyhow::Result<String> {
        let meta = qp::gather(&qp::LocalFolder::new(&cfg.model))?;
        let target = qp::Target::detect()?;
        let base = match (cfg.quant.kind, cfg.quant.double_quant) {
            (QuantKind::Nf4, true) => qp::Precision::Nf4Dq,
            (QuantKind::Nf4, false) => qp::Precision::Nf4,
            (QuantKind::None, _) => anyhow::bail!("the planner prices NF4 bases only"),
        };
        let train = qp::TrainOptions {
            seq_len: cfg.data.max_len as u64,
            micro_batch: cfg.micro_batch as u64,
            rank: cfg.lora.rank as u64,
            targets: cfg.lora.target_modules.iter().filter(|t| *t != "all-linear").cloned().collect(),
            checkpointing: cfg.gradient_checkpointing,
            base,
            dropout: cfg.lora.dropout > 0.0,
            offload_checkpoints: cfg.offload_checkpoints,
        };
        let opts =
            qp::PlanOptions { context: Some(cfg.data.max_len as u64), batch: cfg.micro_batch as u64, train: Some(train), ..Default::default() };
        let plan = qp::plan(&meta, &target, &opts, qp::Overheads::builtin()?)?;
        let t = plan.training.context("the planner returned no training estimate")?;
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        Ok(format!(
            "planner: peak about {:.2} GiB on {} (base weights {:.2} GiB, LoRA + optimizer {:.3} GiB, activations {:.2} GiB): {}",
            gib(t.memory.total_bytes),
            target.name,
            gib(t.memory.base_weights_bytes),
            gib(t.memory.lora_weights_bytes + t.memory.lora_grads_bytes + t.memory.optimizer_bytes),
            gib(t.memory.activations_bytes + t.memory.logits_bytes),
            t.verdict.label()
        ))
    };
    match estimate() {
        Ok(line) => eprintln!("{line}"),
        Err(e) => eprintln!("planner: no estimate ({e:#})"),
    }
}

fn print_event(e: &TrainEvent, json: bool) {
    if json {
        if let Ok(s) = serde_json::to_string(e) {
            println!("{s}");
        }
        return;
    }
    match e {
        TrainEvent::Start { total_steps, start_step, trainable_params, train_rows, valid_rows, base_weight_bytes } => eprintln!(
            "training {trainable_params} LoRA parameters on {train_rows} rows ({valid_rows} validation), \
             steps {start_step}..{total_steps}, base weights {:.1} MiB",
            *base_weight_bytes as f64 / (1u64 << 20) as f64
        ),
        TrainEvent::Step { step, total_steps, loss, lr, grad_norm, tokens_per_s, eta_s, memory, .. } => eprintln!(
            "step {step}/{total_steps} loss {loss:.4} lr {lr:.2e} grad_norm {grad_norm:.3} | {tokens_per_s:.0} tok/s | eta {} | rss {:.0} MiB",
            eta_s.map_or("?".into(), |s| format!("{s:.0}s")),
            memory.rss_bytes as f64 / (1u64 << 20) as f64
        ),
        TrainEvent::Eval { step, loss } => eprintln!("step {step}: eval loss {loss:.4}"),
        TrainEvent::Checkpoint { step, path } => eprintln!("step {step}: checkpoint {}", path.display()),
        TrainEvent::End { step, interrupted, .. } => {
            eprintln!("{} at step {step}", if *interrupted { "interrupted" } else { "done" })
        }
        _ => {}
    }
}

/// Ctrl-C cancels the run after the current optimizer step.
fn watch_ctrl_c(cancel: CancelToken) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        rt.block_on(async {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("stopping after this step (Ctrl-C again to kill)");
                cancel.cancel();
                let _ = tokio::signal::ctrl_c().await;
                std::process::exit(130);
            }
        });
    });
}
