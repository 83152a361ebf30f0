//! The planner against the GPU: for each target model's shape, the peak GPU memory of real
//! `qlora generate` runs (load + one token, and a generation that fills a stated context),
//! in bf16, int8 and NF4 (double quant), next to what `qlora plan` predicts for the same run.
//! Issue #4's last item and #7's planner check; `bench/gpu/memcheck.sh` runs it.
//!
//! Per shape (a folder holding a real `config.json`, e.g. `tests/fixtures/hub-configs/*`): a
//! random-weight checkpoint (bf16 safetensors, every tensor the planner lists for the
//! architecture) and a word-level tokenizer with the config's vocabulary (`t0 … tN`), so the
//! CLI runs exactly as a user runs it and a prompt of N words is N tokens. Weight values do
//! not change memory. The plan is made from that folder, i.e. from its safetensors headers.
//!
//! Measured: NVML's used memory of the GPU, sampled every ~0.5 ms while the child runs, peak
//! minus the value before it started: everything the process holds (CUDA context, cuBLAS,
//! the stream-ordered pool's reservation), which is what must fit on the card. Predicted: the
//! plan's `total_bytes` for that precision at that context (prompt + new tokens), batch 1.

#[path = "common.rs"]
mod common;

use anyhow::{Context, Result, bail};
use nvml_wrapper::Nvml;
use qlora_studio::plan as qp;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

struct Args {
    configs: PathBuf,
    qlora: PathBuf,
    workdir: PathBuf,
    context: u64,
    new_tokens: u64,
    out: Option<PathBuf>,
    only: Option<String>,
    synth_only: bool,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        configs: "tests/fixtures/hub-configs".into(),
        qlora: "target/cuda/release/qlora".into(),
        workdir: "/tmp/memcheck".into(),
        context: 2048,
        new_tokens: 16,
        out: None,
        only: None,
        synth_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--configs" => a.configs = v()?.into(),
            "--qlora" => a.qlora = v()?.into(),
            "--workdir" => a.workdir = v()?.into(),
            "--context" => a.context = v()?.parse()?,
            "--new-tokens" => a.new_tokens = v()?.parse()?,
            "--out" => a.out = Some(v()?.into()),
            "--only" => a.only = Some(v()?),
            "--synth-only" => a.synth_only = true,
            _ => bail!(
                "unknown argument {k}: use [--configs DIR] [--qlora BIN] [--workdir DIR] [--context N] [--new-tokens N] [--out FILE] [--only NAME] [--synth-only]"
            ),
        }
    }
    if a.context <= a.new_tokens {
        bail!("--context ({}) must exceed --new-tokens ({})", a.context, a.new_tokens);
    }
    Ok(a)
}

/// The shape's checkpoint (random weights) and a word-level tokenizer, unless already there.
fn synth_model(config_dir: &Path, dir: &Path) -> Result<()> {
    let spec = common::write_checkpoint(config_dir, dir, common::default_fill)?;
    if !dir.join("tokenizer.json").is_file() {
        write_tokenizer(dir, spec.vocab_size)?;
    }
    Ok(())
}

/// A word-level tokenizer: token `tK` is id K, whitespace splits, no special handling.
fn write_tokenizer(dir: &Path, vocab: u64) -> Result<()> {
    let v: serde_json::Map<String, Value> = (0..vocab).map(|i| (format!("t{i}"), json!(i))).collect();
    let tok = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": v, "unk_token": "t0"}
    });
    std::fs::write(dir.join("tokenizer.json"), serde_json::to_vec(&tok)?)?;
    Ok(())
}

/// A prompt of exactly `n` tokens (ids 100.. cycling, clear of special ids at the start).
fn prompt(n: u64, vocab: u64) -> String {
    (0..n).map(|i| format!("t{}", 100 + (i * 7919) % (vocab - 100))).collect::<Vec<_>>().join(" ")
}

/// Runs `cmd`, sampling the GPU's used memory; returns (peak - before, seconds, stderr tail).
fn measure(nvml: &Nvml, cmd: &mut Command, log: &Path) -> Result<(u64, f64)> {
    let dev = nvml.device_by_index(0)?;
    std::thread::sleep(Duration::from_millis(300));
    let before = dev.memory_info()?.used;
    let err = std::fs::File::create(log)?;
    let start = Instant::now();
    let mut child = cmd.stdout(Stdio::null()).stderr(err).spawn().with_context(|| format!("starting {cmd:?}"))?;
    let done = AtomicBool::new(false);
    let peak = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut peak = before;
            while !done.load(Ordering::Relaxed) {
                if let Ok(m) = dev.memory_info() {
                    peak = peak.max(m.used);
                }
                std::thread::sleep(Duration::from_micros(500));
            }
            peak
        });
        let status = child.wait();
        done.store(true, Ordering::Relaxed);
        (status, sampler.join().expect("sampler thread"))
    });
    let secs = start.elapsed().as_secs_f64();
    let (status, peak) = peak;
    if !status?.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: String = text.lines().rev().take(8).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        bail!("{cmd:?} failed:\n{tail}");
    }
    Ok((peak.saturating_sub(before), secs))
}

const GIB: f64 = (1u64 << 30) as f64;

fn main() -> Result<()> {
    let a = parse_args()?;
    if a.synth_only {
        // Only write the random checkpoints (to try them on the CPU: no NVML needed).
        for e in std::fs::read_dir(&a.configs)? {
            let p = e?.path();
            let name = p.file_name().unwrap_or_default().to_string_lossy().to_string();
            if p.join("config.json").is_file() && a.only.as_ref().is_none_or(|o| name.contains(o.as_str())) {
                synth_model(&p, &a.workdir.join(&name))?;
                eprintln!("wrote {}", a.workdir.join(&name).display());
            }
        }
        return Ok(());
    }
    let nvml = Nvml::init().context("NVML (the NVIDIA driver) is needed: run this on the GPU machine")?;
    let gpu = nvml.device_by_index(0)?.name()?;
    let target = qp::Target::preset("h100")?;
    let overheads = qp::Overheads::builtin()?;
    let mut shapes: Vec<PathBuf> =
        std::fs::read_dir(&a.configs)?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.join("config.json").is_file()).collect();
    shapes.sort();
    let mut rows = Vec::new();
    for cfg_dir in shapes {
        let name = cfg_dir.file_name().unwrap_or_default().to_string_lossy().to_string();
        if a.only.as_ref().is_some_and(|o| !name.contains(o.as_str())) {
            continue;
        }
        let dir = a.workdir.join(&name);
        let t = Instant::now();
        synth_model(&cfg_dir, &dir).with_context(|| format!("writing a random checkpoint for {name}"))?;
        eprintln!("{name}: checkpoint ready in {:.0}s", t.elapsed().as_secs_f64());
        let meta = qp::gather(&qp::LocalFolder::new(&dir))?;
        let vocab = meta.spec.vocab_size;
        let cells: [(&str, &str, qp::Precision, u64, u64); 5] = [
            ("load", "none", qp::Precision::Bf16, 1, 1),
            ("load", "int8", qp::Precision::Int8, 1, 1),
            ("load", "nf4-dq", qp::Precision::Nf4Dq, 1, 1),
            ("generate", "none", qp::Precision::Bf16, a.context - a.new_tokens, a.new_tokens),
            ("generate", "nf4-dq", qp::Precision::Nf4Dq, a.context - a.new_tokens, a.new_tokens),
        ];
        for (what, quant, precision, prompt_len, new) in cells {
            let opts = qp::PlanOptions { context: Some(prompt_len + new), batch: 1, ..Default::default() };
            let plan = qp::plan(&meta, &target, &opts, overheads)?;
            let m = &plan.inference.get(precision).memory;
            let log = a.workdir.join(format!("{name}-{what}-{quant}.log"));
            let mut cmd = Command::new(&a.qlora);
            cmd.args(["generate", "--device", "cuda:0", "--dtype", "bf16", "--quant", quant, "--raw"]).arg("--model").arg(&dir).args([
                "--max-new-tokens",
                &new.to_string(),
                "--prompt",
                &prompt(prompt_len, vocab),
            ]);
            let (measured, secs) = measure(&nvml, &mut cmd, &log)?;
            let row = json!({
                "metric": "peak_gpu_memory", "model": name, "cell": what, "quant": quant, "precision": precision,
                "context": prompt_len + new, "predicted_bytes": m.total_bytes, "measured_bytes": measured,
                "ratio": m.total_bytes as f64 / measured as f64, "seconds": secs, "gpu": gpu,
                "predicted_terms": {"weights": m.weights_bytes, "kv_cache": m.kv_cache_bytes, "activations": m.activations_bytes, "overhead": m.overhead_bytes},
            });
            common::emit(&a.out, row.clone())?;
            rows.push(row);
        }
        std::fs::remove_dir_all(&dir).ok();
    }
    println!("\n| model | run | storage | context | predicted (GiB) | measured (GiB) | predicted / measured |");
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {:.3} | {:.3} | {:.3} |",
            r["model"].as_str().unwrap_or(""),
            r["cell"].as_str().unwrap_or(""),
            r["quant"].as_str().unwrap_or(""),
            r["context"],
            r["predicted_bytes"].as_f64().unwrap_or(0.0) / GIB,
            r["measured_bytes"].as_f64().unwrap_or(0.0) / GIB,
            r["ratio"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(())
}
