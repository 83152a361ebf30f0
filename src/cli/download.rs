//! `qlora download REPO`: fetch what a load of the model needs into the standard Hugging Face
//! cache, several files at once (`--workers`), with a progress bar; Ctrl-C stops cleanly and
//! the same command resumes.

use anyhow::Context;
use qlora_studio::hub::download::{self, DownloadEvent, DownloadOptions};
use qlora_studio::hub::select::SelectOptions;
use qlora_studio::hub::{HubClient, HubConfig, human};
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// Model id on the Hub, e.g. TinyLlama/TinyLlama-1.1B-Chat-v1.0
    pub repo: String,
    /// Branch, tag or commit.
    #[arg(long, default_value = "main")]
    pub revision: String,
    /// Download exactly the files matching these globs (as `hf download --include`); without
    /// it, what loading the model needs (safetensors over duplicates, config, tokenizer).
    #[arg(long = "include", value_name = "GLOB")]
    pub include: Vec<String>,
    /// Precision the model will be loaded in (nf4, int8, bf16, fp16). Quantization happens on
    /// load, so the files are the same; the summary says what the load will do.
    #[arg(long, value_parser = ["nf4", "int8", "bf16", "fp16"])]
    pub quant: Option<String>,
    /// Cache folder (default: HF_HUB_CACHE, else $HF_HOME/hub).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Say what would be fetched (files, exact bytes) and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the plan and every progress event as JSON lines instead of a progress bar.
    #[arg(long)]
    pub json: bool,
    /// Seconds without data before a connection is dropped and retried.
    #[arg(long, default_value_t = 30)]
    pub stall_timeout: u64,
    /// Files downloaded at once (1 to 16).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=download::MAX_WORKERS as i64))]
    pub workers: u16,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut cfg = HubConfig::from_env();
    if let Some(dir) = &args.cache_dir {
        cfg.cache_dir = dir.clone();
    }
    let client = HubClient::new(cfg)?;
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(run_async(client, args))
}

async fn run_async(client: HubClient, args: Args) -> anyhow::Result<()> {
    let select = SelectOptions { include: args.include.clone() };
    let opts =
        DownloadOptions { stall_timeout: Duration::from_secs(args.stall_timeout.max(1)), workers: usize::from(args.workers), ..Default::default() };
    if client.config().offline {
        let out = download::download(&client, &args.repo, &args.revision, &select, &opts, &qlora_studio::jobs::NoProgress).await?;
        println!("{}", out.snapshot.display());
        return Ok(());
    }
    let plan = download::plan(&client, &args.repo, &args.revision, &select).await?;
    if args.json {
        println!("{}", serde_json::to_string(&plan)?);
    } else {
        print_plan(&plan, args.quant.as_deref());
    }
    if args.dry_run {
        return Ok(());
    }
    let cancel = opts.cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            cancel.cancel();
        }
    });
    let bar = (!args.json).then(|| progress_bar(plan.to_fetch_bytes));
    let json = args.json;
    let sink = {
        let bar = bar.clone();
        let in_flight = std::sync::Mutex::new(Vec::new());
        move |e: DownloadEvent| render(&e, bar.as_ref(), json, &in_flight)
    };
    let result = download::run(&client, &plan, &opts, &sink).await;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    match result {
        Ok(out) => {
            eprintln!("fetched {} in {}; ready at:", human(out.fetched_bytes), plan.repo);
            println!("{}", out.snapshot.display());
            Ok(())
        }
        Err(e) if e.code() == "cancelled" => {
            anyhow::bail!("download cancelled; the bytes so far are kept: run the same command to resume")
        }
        Err(e) => Err(e.into()),
    }
}

fn print_plan(plan: &download::DownloadPlan, quant: Option<&str>) {
    eprintln!("{}@{} (commit {})", plan.repo, plan.revision, &plan.commit[..plan.commit.len().min(12)]);
    for f in &plan.files {
        let state = if f.cached {
            "cached".to_string()
        } else if f.partial_bytes > 0 {
            format!("resume from {}", human(f.partial_bytes))
        } else {
            "to fetch".to_string()
        };
        eprintln!("  {:<48} {:>10}  {state}", f.file.path, human(f.file.size));
    }
    if !plan.skipped.is_empty() {
        let bytes: u64 = plan.skipped.iter().map(|s| s.size).sum();
        eprintln!("  skipped {} files ({}): not needed to load", plan.skipped.len(), human(bytes));
    }
    eprintln!("total {}; to fetch {} into {}", human(plan.total_bytes), human(plan.to_fetch_bytes), plan.cache_dir.display());
    if let Some(q) = quant {
        eprintln!("load with {q}: the weights are converted to {q} when the model is loaded");
    }
}

fn progress_bar(total: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    let style = indicatif::ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {wide_msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

/// `in_flight`: the files being fetched (several at once), shown as the first one and a count.
fn render(e: &DownloadEvent, bar: Option<&indicatif::ProgressBar>, json: bool, in_flight: &std::sync::Mutex<Vec<String>>) {
    if json {
        if let Ok(s) = serde_json::to_string(e) {
            println!("{s}");
        }
        return;
    }
    let Some(bar) = bar else { return };
    match e {
        DownloadEvent::FileStarted { path, .. } | DownloadEvent::FileDone { path, .. } => {
            let mut files = in_flight.lock().unwrap_or_else(|e| e.into_inner());
            match e {
                DownloadEvent::FileStarted { .. } => files.push(path.clone()),
                _ => files.retain(|f| f != path),
            }
            bar.set_message(match files.len() {
                0 => String::new(),
                1 => files[0].clone(),
                n => format!("{} (+{} more)", files[0], n - 1),
            });
        }
        DownloadEvent::Progress { done, .. } => bar.set_position(*done),
        DownloadEvent::Retrying { path, attempt, reason, wait_secs } => bar.println(format!("{path}: {reason}; retry {attempt} in {wait_secs:.1} s")),
        _ => {}
    }
}
