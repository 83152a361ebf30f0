// The real test model, SmolLM2-135M-Instruct, imported from its GGUF by `qlora import-gguf`
// (scripts/fetch-test-model.sh), checked against transformers' own reading of the same GGUF
// (tests/fixtures/smollm2_reference.py -> tests/fixtures/smollm2/reference.json): chat prompt
// token ids, last-position logits, greedy ids, the NLL of a fixed text. Then what a user sees:
// "What is the capital of France?" answered with Paris, greedy, in f32 and NF4; perplexity of
// NF4 and int8 against bf16 on the same text, printed.

use qlora_studio::engine::candle_core::{DType, Device, IndexOp, Tensor};
use qlora_studio::engine::chat_template::ChatMessage;
use qlora_studio::engine::generate::{GenerateOptions, StopReason};
use qlora_studio::engine::perplexity::perplexity;
use qlora_studio::engine::{LoadOptions, Quant, TextModel};
use qlora_studio::jobs::{CancelToken, NoProgress};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors().find(|d| d.join("tests/fixtures").is_dir()).expect("repo root").to_path_buf()
}

fn model_dir() -> PathBuf {
    let assets = std::env::var_os("QLORA_TEST_ASSETS").map(PathBuf::from).unwrap_or_else(|| repo().join("test-assets"));
    let dir = assets.join("SmolLM2-135M-Instruct");
    assert!(dir.join("config.json").is_file(), "the real test model is missing at {}: run scripts/fetch-test-model.sh", dir.display());
    dir
}

fn reference() -> serde_json::Value {
    let text = std::fs::read_to_string(repo().join("tests/fixtures/smollm2/reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn load(dtype: DType, quant: Quant) -> TextModel {
    TextModel::load(&model_dir(), &LoadOptions { dtype, quant, device: Device::Cpu }).unwrap()
}

fn text() -> String {
    std::fs::read_to_string(repo().join("tests/fixtures/smollm2/perplexity_text.txt")).unwrap()
}

fn ask_paris(tm: &TextModel) -> qlora_studio::engine::generate::Generation {
    let ids = tm.chat_ids(&[ChatMessage::user("What is the capital of France?")]).unwrap();
    let opts = GenerateOptions { max_new_tokens: 24, ..Default::default() };
    tm.generator().generate(&ids, &opts, &NoProgress, &CancelToken::new()).unwrap()
}

#[test]
fn import_matches_transformers_reading_of_the_gguf() {
    let r = reference();
    let tm = load(DType::F32, Quant::None);
    let chat = tm.chat_ids(&[ChatMessage::user(r["question"].as_str().unwrap())]).unwrap();
    assert_eq!(chat, ids(&r["chat_ids"]), "chat prompt token ids (template + tokenizer) differ");
    let input = Tensor::new(chat.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let logits = tm.model.forward(&input, None).unwrap().i((0, chat.len() - 1)).unwrap();
    let ours: Vec<f32> = logits.to_vec1().unwrap();
    let mut diff = 0f32;
    for (i, want) in floats(&r["last_logits_first16"]).iter().enumerate() {
        diff = diff.max((ours[i] - want).abs());
    }
    for (i, want) in ids(&r["last_logits_top10_ids"]).iter().zip(floats(&r["last_logits_top10_values"])) {
        diff = diff.max((ours[*i as usize] - want).abs());
    }
    eprintln!("SmolLM2 f32: max |logit diff| vs transformers {diff:.2e}");
    assert!(diff < 1e-3, "last-position logits differ from transformers by {diff}");
    let opts = GenerateOptions { max_new_tokens: 16, ..Default::default() };
    let mut greedy = Vec::new();
    let mut cache = tm.model.new_cache();
    let mut step = input;
    for _ in 0..opts.max_new_tokens {
        let l = tm.model.forward(&step, Some(&mut cache)).unwrap();
        let next: u32 = l.i((0, l.dim(1).unwrap() - 1)).unwrap().argmax(0).unwrap().to_scalar().unwrap();
        greedy.push(next);
        step = Tensor::new(&[[next]], &Device::Cpu).unwrap();
    }
    assert_eq!(greedy, ids(&r["greedy_ids"]), "greedy ids (no EOS stop) differ");
    let text_ids = tm.raw_ids(&text()).unwrap();
    assert_eq!(text_ids.len() as u64, r["text_ids_len"].as_u64().unwrap());
    assert_eq!(text_ids[..32], ids(&r["text_ids_first32"])[..]);
    let p = perplexity(&tm.model, &text_ids, 1024, 512, &CancelToken::new()).unwrap();
    let want = r["text_mean_nll_f32"].as_f64().unwrap();
    assert!(((p.mean_nll - want) / want).abs() < 1e-4, "mean NLL {} vs transformers {want}", p.mean_nll);
}

#[test]
fn answers_paris_in_f32() {
    let g = ask_paris(&load(DType::F32, Quant::None));
    eprintln!("f32 answer: {:?}", g.text);
    assert!(g.text.contains("Paris"), "{:?}", g.text);
    assert_eq!(g.reason, StopReason::Eos, "the answer should end with <|im_end|>: {:?}", g.text);
}

#[test]
fn answers_paris_in_nf4() {
    let tm = load(DType::F32, Quant::Nf4);
    assert!(tm.model.projections().iter().all(|(_, l)| l.storage() == qlora_studio::engine::Storage::Nf4));
    let g = ask_paris(&tm);
    eprintln!("nf4 answer: {:?}", g.text);
    assert!(g.text.contains("Paris"), "{:?}", g.text);
}

#[test]
fn perplexity_of_nf4_and_int8_against_bf16() {
    let score = |quant| {
        let tm = load(DType::BF16, quant);
        let ids = tm.raw_ids(&text()).unwrap();
        (perplexity(&tm.model, &ids, 1024, 512, &CancelToken::new()).unwrap().perplexity, tm.model.weight_bytes())
    };
    let (bf16, bf16_bytes) = score(Quant::None);
    let (int8, int8_bytes) = score(Quant::Int8);
    let (nf4, nf4_bytes) = score(Quant::Nf4);
    eprintln!("SmolLM2-135M perplexity on tests/fixtures/smollm2/perplexity_text.txt (bf16 compute):");
    eprintln!("  bf16 {bf16:.4} ({bf16_bytes} weight bytes)");
    eprintln!("  int8 {int8:.4} ({int8_bytes} bytes, {:+.2}%)", 100.0 * (int8 / bf16 - 1.0));
    eprintln!("  nf4  {nf4:.4} ({nf4_bytes} bytes, {:+.2}%)", 100.0 * (nf4 / bf16 - 1.0));
    assert!(bf16 > 1.0 && bf16 < 30.0, "bf16 perplexity {bf16} is implausible for fluent English");
    assert!((int8 / bf16 - 1.0).abs() < 0.05, "int8 moves perplexity by more than 5%: {int8} vs {bf16}");
    assert!(nf4 / bf16 < 1.5 && nf4 / bf16 > 0.9, "nf4 perplexity {nf4} is far from bf16 {bf16}");
    assert!(int8_bytes < bf16_bytes && nf4_bytes < int8_bytes);
}

/// A fresh `import_gguf` of the GGUF (not the folder fetched earlier) gives transformers'
/// logits: catches a change to the importer that the cached test-assets folder would hide.
#[test]
fn fresh_import_gives_transformers_logits() {
    let gguf = model_dir().parent().unwrap().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(gguf.is_file(), "missing {}: run scripts/fetch-test-model.sh", gguf.display());
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("imported");
    let report = qlora_studio::engine::gguf::import_gguf(&gguf, &out).unwrap();
    assert_eq!((report.num_layers, report.vocab_size, report.tied_embeddings), (30, 49152, true));
    let again = qlora_studio::engine::gguf::import_gguf(&gguf, &out).unwrap_err();
    assert!(again.to_string().contains("not empty"), "{again}");
    let r = reference();
    let tm = TextModel::load(&out, &LoadOptions::default()).unwrap();
    let chat = tm.chat_ids(&[ChatMessage::user(r["question"].as_str().unwrap())]).unwrap();
    assert_eq!(chat, ids(&r["chat_ids"]));
    let input = Tensor::new(chat.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let logits: Vec<f32> = tm.model.forward(&input, None).unwrap().i((0, chat.len() - 1)).unwrap().to_vec1().unwrap();
    for (i, want) in ids(&r["last_logits_top10_ids"]).iter().zip(floats(&r["last_logits_top10_values"])) {
        assert!((logits[*i as usize] - want).abs() < 1e-3, "token {i}: {} vs {want}", logits[*i as usize]);
    }
    let names: Vec<String> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    assert_eq!(names, vec!["imported".to_string()], "no temporary folder may be left behind");
}
