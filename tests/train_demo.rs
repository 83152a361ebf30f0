//! The demo fine-tune on the real model: SmolLM2-135M-Instruct with an NF4 base on CPU,
//! `configs/demo_smollm2.yaml` on `datasets/quillbury_mayor.jsonl` (a made-up fact). The
//! training loss must fall well down, and greedy generation must answer "Who is the mayor of
//! Quillbury?" with Zorana Pell with the adapter, and not without it. Takes a few minutes on
//! two cores (the run's timing is printed).

use qlora_studio::engine::candle_core::{DType, Device};
use qlora_studio::engine::chat_template::{ChatMessage, ChatTemplate};
use qlora_studio::engine::generate::{GenerateOptions, Generator};
use qlora_studio::engine::linear::Quant;
use qlora_studio::engine::model::{LoadOptions, Model};
use qlora_studio::engine::tokenizer::Tokenizer;
use qlora_studio::jobs::{CancelToken, NoProgress};
use qlora_studio::train::config::TrainConfig;
use qlora_studio::train::events::TrainEvent;
use qlora_studio::train::{adapter, trainer};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The imported test model; fails (never skips) when it is missing.
fn test_model() -> PathBuf {
    let assets = std::env::var_os("QLORA_TEST_ASSETS").map(PathBuf::from).unwrap_or_else(|| repo().join("test-assets"));
    let dir = assets.join("SmolLM2-135M-Instruct");
    assert!(dir.join("config.json").is_file(), "the test model is missing at {}: run scripts/fetch-test-model.sh", dir.display());
    dir
}

fn answer(model: &Model, tok: &Tokenizer, question: &str) -> String {
    let tmpl = ChatTemplate::from_dir(model.dir(), tok).unwrap().expect("SmolLM2 has a chat template");
    let prompt = tmpl.render(&[ChatMessage::user(question)], true).unwrap();
    let ids = tok.encode(&prompt, false).unwrap();
    let opts = GenerateOptions { max_new_tokens: 16, temperature: 0.0, ..Default::default() };
    Generator::new(model, tok).generate(&ids, &opts, &NoProgress, &CancelToken::new()).unwrap().text
}

#[test]
fn demo_config_teaches_the_made_up_fact_with_an_nf4_base() {
    let model_dir = test_model();
    let out = tempfile::tempdir().unwrap();
    let mut cfg = TrainConfig::from_file(&repo().join("configs/demo_smollm2.yaml")).unwrap();
    cfg.model = model_dir.clone();
    cfg.output_dir = out.path().to_path_buf();
    let data = trainer::prepare_data(&cfg).unwrap();
    let mut t = trainer::Trainer::new(cfg, data, &Device::Cpu).unwrap();
    let started = std::time::Instant::now();
    let events = Mutex::new(Vec::new());
    let sink = |e: TrainEvent| events.lock().unwrap().push(e);
    let outcome = t.run(false, &sink, &CancelToken::new()).unwrap();
    let secs = started.elapsed().as_secs_f64();
    let losses: Vec<f64> = outcome.log.iter().map(|e| e.loss).collect();
    eprintln!("demo: {} steps in {secs:.0}s, losses {losses:.3?}", losses.len());
    let first = losses[0];
    let last = losses[losses.len() - 2..].iter().sum::<f64>() / 2.0;
    assert!(last < first * 0.25, "training loss did not come well down: {first:.3} -> {last:.3}");
    let n_steps = events.lock().unwrap().iter().filter(|e| matches!(e, TrainEvent::Step { .. })).count();
    assert_eq!(n_steps, losses.len());

    let tok = Tokenizer::from_dir(&model_dir).unwrap();
    let opts = LoadOptions { dtype: DType::F32, quant: Quant::Nf4DoubleQuant, device: Device::Cpu };
    let base = Model::load(&model_dir, &opts).unwrap();
    let q = "Who is the mayor of Quillbury?";
    let before = answer(&base, &tok, q);
    let mut tuned = base.clone();
    adapter::apply(&mut tuned, &outcome.adapter_dir.unwrap()).unwrap();
    let after = answer(&tuned, &tok, q);
    let unseen = answer(&tuned, &tok, "Please tell me who the mayor of Quillbury is.");
    eprintln!("base: {before:?}\nwith adapter: {after:?}\nunseen phrasing: {unseen:?}");
    assert!(!before.contains("Zorana"), "the base model should not know the made-up fact: {before:?}");
    assert!(after.contains("Zorana Pell"), "the adapter did not teach the fact: {after:?}");
}
