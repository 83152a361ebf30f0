// The engine against transformers on the tiny random-weight fixtures
// (`tests/fixtures/tiny/<arch>/`, recorded by `tests/fixtures/make_fixtures.py`): in f32,
// logits within 1e-4 absolute at every position, identical argmax, mean NLL within 1e-4
// relative, and greedy decoding through the KV cache giving transformers' ids.

use qlora_studio::engine::candle_core::{D, DType, Device, IndexOp, Tensor};
use qlora_studio::engine::{LoadOptions, Model, Weights};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = here.ancestors().find(|d| d.join("tests/fixtures/tiny").is_dir()).expect("tests/fixtures/tiny");
    root.join("tests/fixtures/tiny").join(name)
}

struct Reference {
    input_ids: Vec<u32>,
    logits: Tensor,
    greedy_ids: Vec<u32>,
    greedy_logits: Tensor,
    mean_nll: f64,
}

fn ids(t: Tensor) -> Vec<u32> {
    t.flatten_all().unwrap().to_dtype(DType::U32).unwrap().to_vec1().unwrap()
}

fn reference(name: &str) -> Reference {
    let dir = fixture(name);
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let tensors_dir = if name == "llama_sharded" { fixture("llama") } else { dir.clone() };
    let w = Weights::from_files(&tensors_dir, &[tensors_dir.join("reference.safetensors")]).unwrap();
    let dev = Device::Cpu;
    Reference {
        input_ids: ids(w.get("input_ids", &dev).unwrap()),
        logits: w.get("logits", &dev).unwrap(),
        greedy_ids: ids(w.get("greedy_ids", &dev).unwrap()),
        greedy_logits: w.get("greedy_logits", &dev).unwrap(),
        mean_nll: json["mean_nll"].as_f64().unwrap(),
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap()
}

fn argmax(t: &Tensor) -> Vec<u32> {
    t.argmax(D::Minus1).unwrap().to_vec1().unwrap()
}

/// Mean NLL of token t+1 given 0..=t, computed in f64 from f32 logits `[T, V]`.
fn mean_nll(logits: &Tensor, ids: &[u32]) -> f64 {
    let lp = logits.to_dtype(DType::F64).unwrap();
    let lse = lp.exp().unwrap().sum_keepdim(D::Minus1).unwrap().log().unwrap();
    let logp = lp.broadcast_sub(&lse).unwrap();
    let rows: Vec<Vec<f64>> = logp.to_vec2().unwrap();
    let n = ids.len() - 1;
    -(0..n).map(|t| rows[t][ids[t + 1] as usize]).sum::<f64>() / n as f64
}

fn greedy(model: &Model, prompt: &[u32], n: usize) -> (Vec<u32>, Tensor) {
    let mut cache = model.new_cache();
    let mut input = Tensor::new(prompt, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let (mut out, mut step_logits) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let logits = model.forward(&input, Some(&mut cache)).unwrap();
        let last = logits.i((0, logits.dim(1).unwrap() - 1)).unwrap().to_dtype(DType::F32).unwrap();
        let next = argmax(&last.unsqueeze(0).unwrap())[0];
        out.push(next);
        step_logits.push(last);
        input = Tensor::new(&[[next]], &Device::Cpu).unwrap();
    }
    (out, Tensor::stack(&step_logits, 0).unwrap())
}

fn check_dir(name: &str, dir: &Path) {
    let r = reference(name);
    let model = Model::load(dir, &LoadOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let input = Tensor::new(r.input_ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let logits = model.forward(&input, None).unwrap().squeeze(0).unwrap();
    let t = r.input_ids.len();
    let last = max_abs_diff(&logits.i(t - 1).unwrap(), &r.logits.i(t - 1).unwrap());
    let all = max_abs_diff(&logits, &r.logits);
    assert!(last <= 1e-4, "{name}: last-position logits differ by {last}");
    assert_eq!(argmax(&logits), argmax(&r.logits), "{name}: argmax differs (max logit diff {all})");
    let nll = mean_nll(&logits, &r.input_ids);
    let rel = ((nll - r.mean_nll) / r.mean_nll).abs();
    assert!(rel <= 1e-4, "{name}: mean NLL {nll} vs transformers {} (rel {rel})", r.mean_nll);
    let (ids, step_logits) = greedy(&model, &r.input_ids[..8], r.greedy_ids.len());
    assert_eq!(ids, r.greedy_ids, "{name}: greedy ids with the KV cache differ");
    let step = max_abs_diff(&step_logits, &r.greedy_logits);
    assert!(step <= 1e-4, "{name}: cached decode logits differ by {step}");
    // `Model::greedy_decode` (a greedy chat's path) gives the same ids, stopped half-way by its
    // callback and resumed on the same cache.
    let n = r.greedy_ids.len();
    let mut cache = model.new_cache();
    let prompt = Tensor::new(&r.input_ids[..8], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let mut got = argmax(&model.forward_last(&prompt, &mut cache).unwrap());
    let half = n / 2;
    let first = Tensor::new(&[[got[0]]], &Device::Cpu).unwrap();
    let ran = model
        .greedy_decode(&first, &mut cache, n, |ids| {
            got.extend_from_slice(ids);
            Ok(got.len() < half)
        })
        .unwrap();
    assert_eq!((ran, cache.len()), (half - 1, 8 + half - 1), "{name}: greedy_decode did not stop where its callback said");
    let resume = Tensor::new(&[[*got.last().unwrap()]], &Device::Cpu).unwrap();
    let more = n - got.len();
    assert_eq!(
        model
            .greedy_decode(&resume, &mut cache, more, |ids| {
                got.extend_from_slice(ids);
                Ok(true)
            })
            .unwrap(),
        more
    );
    assert_eq!(got, r.greedy_ids, "{name}: greedy_decode's ids differ from transformers' greedy ids");
    eprintln!("{name}: max |logit diff| {all:.2e}, mean NLL {nll:.6} (transformers {:.6}), cached step diff {step:.2e}", r.mean_nll);
}

/// The fixture with `config.transformers5.json` (transformers 5's own spelling) as its config.
fn check_transformers5_config(name: &str) {
    let src = fixture(name);
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("model.safetensors"), tmp.path().join("model.safetensors")).unwrap();
    std::fs::copy(src.join("config.transformers5.json"), tmp.path().join("config.json")).unwrap();
    check_dir(name, tmp.path());
}

macro_rules! conformance {
    ($($test:ident => $name:literal),* $(,)?) => {$(
        #[test]
        fn $test() {
            check_dir($name, &fixture($name));
            if fixture($name).join("config.transformers5.json").is_file() {
                check_transformers5_config($name);
            }
        }
    )*};
}

conformance! {
    llama => "llama",
    llama3_rope => "llama3_rope",
    mistral_sliding_window => "mistral",
    phi => "phi",
    gemma => "gemma",
    qwen2 => "qwen2",
    llama_sharded => "llama_sharded",
    llama_bf16_on_disk => "llama_bf16",
}

/// Computing in bf16 (weights and activations) stays close to the f32 reference: the argmax
/// agrees at most positions and logits stay within bf16 rounding of the whole network.
#[test]
fn llama_computes_in_bf16() {
    let r = reference("llama_bf16");
    let opts = LoadOptions { dtype: DType::BF16, ..LoadOptions::default() };
    let model = Model::load(&fixture("llama_bf16"), &opts).unwrap();
    let input = Tensor::new(r.input_ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let logits = model.forward(&input, None).unwrap().squeeze(0).unwrap().to_dtype(DType::F32).unwrap();
    let diff = max_abs_diff(&logits, &r.logits);
    let agree = argmax(&logits).iter().zip(argmax(&r.logits)).filter(|(a, b)| **a == *b).count();
    eprintln!("bf16 compute: max |logit diff| {diff:.3}, argmax agrees at {agree}/24 positions");
    assert!(diff < 0.5, "bf16 logits drift by {diff}");
    assert!(agree >= 20, "bf16 argmax agrees at only {agree}/24 positions");
}

/// A bitsandbytes pre-quantized 4-bit checkpoint (`tests/fixtures/bnb4`, NF4 + double quant)
/// gives transformers + bitsandbytes' logits, which equal its dequantized dense twin's.
#[test]
fn bnb_prequantized_nf4_checkpoint() {
    let dir = fixture("../bnb4");
    let model = Model::load(&dir, &LoadOptions::default()).unwrap();
    assert!(model.projections().iter().all(|(_, l)| l.storage() == qlora_studio::engine::Storage::Nf4DoubleQuant));
    let w = Weights::from_files(&dir, &[dir.join("reference.safetensors")]).unwrap();
    let input = w.get("input_ids", &Device::Cpu).unwrap().to_dtype(DType::U32).unwrap();
    let want = w.get("logits", &Device::Cpu).unwrap();
    let logits = model.forward(&input, None).unwrap().squeeze(0).unwrap();
    let diff = max_abs_diff(&logits, &want);
    eprintln!("bnb4: max |logit diff| vs transformers+bitsandbytes {diff:.2e}");
    assert!(diff <= 1e-4, "bnb4 logits differ by {diff}");
    assert_eq!(argmax(&logits), argmax(&want));
}

/// The tiny llama quantized on load to NF4 with double quantization is the same model
/// bitsandbytes makes of it: same logits as the bnb4 fixture (quantized from the same f32
/// weights by bitsandbytes).
#[test]
fn nf4_on_load_matches_bitsandbytes() {
    let opts = LoadOptions { quant: qlora_studio::engine::Quant::Nf4DoubleQuant, ..LoadOptions::default() };
    let model = Model::load(&fixture("llama"), &opts).unwrap();
    let dir = fixture("../bnb4");
    let w = Weights::from_files(&dir, &[dir.join("reference.safetensors")]).unwrap();
    let input = w.get("input_ids", &Device::Cpu).unwrap().to_dtype(DType::U32).unwrap();
    let want = w.get("logits", &Device::Cpu).unwrap();
    let logits = model.forward(&input, None).unwrap().squeeze(0).unwrap();
    let diff = max_abs_diff(&logits, &want);
    eprintln!("nf4 on load vs bitsandbytes: max |logit diff| {diff:.2e}");
    assert!(diff <= 1e-4, "NF4-on-load logits differ from bitsandbytes' by {diff}");
    let p = model.projections();
    let bytes: usize = p.iter().map(|(_, l)| l.storage_bytes()).sum();
    let dense: usize = p.iter().map(|(_, l)| l.in_features() * l.out_features() * 4).sum();
    assert!(bytes * 4 < dense, "NF4 storage {bytes} bytes is not well under a quarter of f32 {dense}");
}

/// `perplexity` over one window equals transformers' mean NLL; sliding windows score every
/// token after the first exactly once.
#[test]
fn perplexity_windows() {
    use qlora_studio::engine::perplexity::perplexity;
    let r = reference("llama");
    let model = Model::load(&fixture("llama"), &LoadOptions::default()).unwrap();
    let cancel = qlora_studio::jobs::CancelToken::new();
    let full = perplexity(&model, &r.input_ids, 64, 32, &cancel).unwrap();
    assert_eq!((full.windows, full.scored_tokens), (1, 23));
    assert!(((full.mean_nll - r.mean_nll) / r.mean_nll).abs() < 1e-4, "{} vs {}", full.mean_nll, r.mean_nll);
    let sliding = perplexity(&model, &r.input_ids, 12, 6, &cancel).unwrap();
    assert_eq!((sliding.windows, sliding.scored_tokens), (3, 23));
    let disjoint = perplexity(&model, &r.input_ids, 12, 12, &cancel).unwrap();
    assert_eq!((disjoint.windows, disjoint.scored_tokens), (2, 22));
    eprintln!("mean NLL: full {:.4}, sliding {:.4}, disjoint {:.4}", full.mean_nll, sliding.mean_nll, disjoint.mean_nll);
}

/// In training mode the gradient of the loss reaches the first layer's projections through
/// every op in between (norms, softmax, rope, activations, lm_head), for every architecture:
/// candle's fused ops would silently cut it.
#[test]
fn gradients_reach_the_first_layer_in_training_mode() {
    use qlora_studio::engine::candle_core::Var;
    use qlora_studio::engine::linear::DenseLinear;
    for name in ["llama", "mistral", "phi", "gemma", "qwen2"] {
        let mut model = Model::load(&fixture(name), &LoadOptions::default()).unwrap();
        model.set_training(true);
        let mut vars = Vec::new();
        for (path, lin) in model.projections().into_iter().filter(|(p, _)| p.starts_with("model.layers.0.")) {
            let var = Var::from_tensor(&lin.dense_weight(DType::F32).unwrap()).unwrap();
            let dense = DenseLinear::new(var.as_tensor().clone(), lin.bias().cloned());
            model.replace_projection(&path, std::sync::Arc::new(dense)).unwrap();
            vars.push((path, var));
        }
        let r = reference(name);
        let ids = Tensor::new(r.input_ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let logits = model.forward(&ids, None).unwrap().squeeze(0).unwrap();
        let n = r.input_ids.len();
        let logp = qlora_studio::engine::candle_core::Tensor::log(
            &qlora_studio::engine::ops::softmax_last_dim(&logits.narrow(0, 0, n - 1).unwrap()).unwrap(),
        )
        .unwrap();
        let targets = Tensor::new(&r.input_ids[1..], &Device::Cpu).unwrap().unsqueeze(1).unwrap();
        let loss = logp.gather(&targets, 1).unwrap().mean_all().unwrap().neg().unwrap();
        let l: f32 = loss.to_scalar().unwrap();
        assert!(((l as f64 - r.mean_nll) / r.mean_nll).abs() < 1e-4, "{name}: training-mode loss {l} vs {}", r.mean_nll);
        let grads = loss.backward().unwrap();
        for (path, var) in &vars {
            let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name}: no gradient reached {path}"));
            let norm: f32 = g.sqr().unwrap().sum_all().unwrap().sqrt().unwrap().to_scalar().unwrap();
            assert!(norm > 0.0 && norm.is_finite(), "{name}: gradient of {path} is {norm}");
        }
    }
}

/// A GGUF as llama.cpp writes it, imported and checked against transformers' own reading of
/// the same file (`tests/fixtures/<group>`, make_fixtures.py): the merges (recovered from the
/// scores for SentencePiece), token ids with and without BOS, decoded text, the chat prompt,
/// the last-position logits, and streaming decode through multi-token characters.
fn check_gguf_import(group: &str, file: &str, shape: (usize, usize, bool)) {
    use qlora_studio::engine::chat_template::ChatMessage;
    use qlora_studio::engine::tokenizer::StreamDecoder;
    use qlora_studio::engine::{Quant, TextModel};

    let dir = fixture(&format!("../{group}"));
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let as_ids = |v: &serde_json::Value| -> Vec<u32> { v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect() };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join(group);
    let report = qlora_studio::engine::gguf::import_gguf(&dir.join(file), &out).unwrap();
    assert_eq!((report.num_layers, report.vocab_size, report.tied_embeddings), shape);

    let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("tokenizer.json")).unwrap()).unwrap();
    let merges: Vec<String> =
        written["model"]["merges"].as_array().unwrap().iter().map(|m| format!("{} {}", m[0].as_str().unwrap(), m[1].as_str().unwrap())).collect();
    let want_merges: Vec<String> = r["merges"].as_array().unwrap().iter().map(|m| m.as_str().unwrap().to_string()).collect();
    assert_eq!(merges, want_merges, "{group}: merges");

    let tm = TextModel::load(&out, &LoadOptions { dtype: DType::F32, quant: Quant::None, device: Device::Cpu }).unwrap();
    for t in r["texts"].as_array().unwrap() {
        let text = t["text"].as_str().unwrap();
        let with_special = tm.tokenizer.encode(text, true).unwrap();
        assert_eq!(with_special, as_ids(&t["ids"]), "{group}: ids of {text:?}");
        let plain = tm.tokenizer.encode(text, false).unwrap();
        assert_eq!(plain, as_ids(&t["ids_no_special"]), "{group}: ids of {text:?} without special tokens");
        assert_eq!(tm.tokenizer.decode(&with_special, true).unwrap(), t["decoded"].as_str().unwrap(), "{group}: decoded {text:?}");
        // Token by token, as a chat streams it: nothing lost or doubled across the tokens of
        // one character.
        let mut stream = StreamDecoder::new();
        let mut streamed = String::new();
        for id in &plain {
            streamed += &stream.push(&tm.tokenizer, *id).unwrap();
        }
        assert_eq!(streamed, tm.tokenizer.decode(&plain, true).unwrap(), "{group}: streamed {text:?}");
    }

    let chat: Vec<ChatMessage> =
        r["chat"].as_array().unwrap().iter().map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap())).collect();
    let chat_ids = tm.chat_ids(&chat).unwrap();
    assert_eq!(chat_ids, as_ids(&r["chat_ids"]), "{group}: chat prompt (template + tokenizer)");

    let input = Tensor::new(chat_ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let last = tm.model.forward(&input, None).unwrap().i((0, chat_ids.len() - 1)).unwrap();
    let want: Vec<f32> = r["logits_last"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    let diff = max_abs_diff(&last, &Tensor::new(want.as_slice(), &Device::Cpu).unwrap());
    assert!(diff < 1e-4, "{group}: last-position logits differ from transformers by {diff}");
}

/// SentencePiece, as llama.cpp writes TinyLlama and Mistral: tokens + scores + types, no
/// merges; q/k rows permuted; Q8_0, F16 and F32 tensors.
#[test]
fn sentencepiece_gguf_import_matches_transformers() {
    check_gguf_import("gguf_spm", "tiny-llama-spm.gguf", (2, 400, false));
    let tmp = tempfile::tempdir().unwrap();
    let tm = qlora_studio::engine::TextModel::load(
        &{
            let out = tmp.path().join("m");
            qlora_studio::engine::gguf::import_gguf(&fixture("../gguf_spm").join("tiny-llama-spm.gguf"), &out).unwrap();
            out
        },
        &LoadOptions::default(),
    )
    .unwrap();
    assert!(tm.tokenizer.eos_ids().contains(&2), "</s> ends generation: {:?}", tm.tokenizer.eos_ids());
}

/// Qwen2, as llama.cpp writes Qwen2.5: byte-level BPE with Qwen2's split, ChatML specials,
/// q/k/v biases, tied embeddings, no permutation.
#[test]
fn qwen2_gguf_import_matches_transformers() {
    check_gguf_import("gguf_qwen2", "tiny-qwen2.gguf", (2, 423, true));
}
