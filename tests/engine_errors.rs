// Bad input to the engine: each case a clear error naming the file, tensor or field and the
// fix, never a panic. Built from copies of the tiny llama fixture, altered on purpose.

use qlora_studio::engine::candle_core::{Device, Tensor};
use qlora_studio::engine::generate::GenerateOptions;
use qlora_studio::engine::tokenizer::Tokenizer;
use qlora_studio::engine::{Error, LoadOptions, Model, TextModel, Weights};
use qlora_studio::jobs::{CancelToken, NoProgress};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors().find(|d| d.join("tests/fixtures/tiny").is_dir()).expect("repo root").to_path_buf()
}

fn tiny() -> PathBuf {
    repo().join("tests/fixtures/tiny/llama")
}

/// A copy of the tiny llama folder to break.
fn copy_tiny() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors", "generation_config.json"] {
        std::fs::copy(tiny().join(f), dir.path().join(f)).unwrap();
    }
    dir
}

fn load_err(dir: &Path) -> (Error, String) {
    let e = Model::load(dir, &LoadOptions::default()).unwrap_err();
    let msg = e.to_string();
    eprintln!("{msg}");
    (e, msg)
}

#[test]
fn missing_safetensors() {
    let d = copy_tiny();
    std::fs::remove_file(d.path().join("model.safetensors")).unwrap();
    let (e, msg) = load_err(d.path());
    assert!(matches!(e, Error::NoWeights { .. }), "{e:?}");
    assert!(msg.contains("model.safetensors") && msg.contains(&d.path().display().to_string()), "{msg}");
}

#[test]
fn truncated_safetensors() {
    let d = copy_tiny();
    let p = d.path().join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 1000]).unwrap();
    let (e, msg) = load_err(d.path());
    assert!(matches!(e, Error::Truncated { .. }), "{e:?}");
    assert!(msg.contains("truncated") && msg.contains("model.safetensors") && msg.contains("download it again"), "{msg}");
    // Cut inside the header.
    std::fs::write(&p, &bytes[..20]).unwrap();
    let (e, msg) = load_err(d.path());
    assert!(matches!(e, Error::BadSafetensors { .. }), "{e:?}");
    assert!(msg.contains("header claims"), "{msg}");
}

fn write_safetensors(path: &Path, header: &str, data_len: usize) {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend(std::iter::repeat_n(0u8, data_len));
    std::fs::write(path, out).unwrap();
}

#[test]
fn header_lying_about_sizes() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("model.safetensors");
    // [2, 2] f32 is 16 bytes, the range says 8.
    write_safetensors(&p, r#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,8]}}"#, 8);
    let e = Weights::from_dir(d.path()).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::BadTensor { .. }) && msg.contains("'w'") && msg.contains("lies"), "{msg}");
    // A range past the end of the file.
    write_safetensors(&p, r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, 4);
    let e = Weights::from_dir(d.path()).unwrap_err();
    assert!(matches!(e, Error::Truncated { declared: 16, actual: 4, .. }), "{e:?}");
    // Unsupported dtype.
    write_safetensors(&p, r#"{"w":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]}}"#, 4);
    let msg = Weights::from_dir(d.path()).unwrap_err().to_string();
    assert!(msg.contains("F8_E4M3") && msg.contains("'w'"), "{msg}");
    // Not JSON.
    write_safetensors(&p, "{not json", 0);
    let msg = Weights::from_dir(d.path()).unwrap_err().to_string();
    assert!(msg.contains("not valid JSON"), "{msg}");
}

#[test]
fn shape_mismatch_names_the_tensor() {
    let d = copy_tiny();
    let cfg = std::fs::read_to_string(d.path().join("config.json")).unwrap();
    std::fs::write(d.path().join("config.json"), cfg.replace("\"intermediate_size\": 128", "\"intermediate_size\": 96")).unwrap();
    let (e, msg) = load_err(d.path());
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e:?}");
    assert!(msg.contains("mlp.gate_proj.weight") && msg.contains("[96, 64]") && msg.contains("[128, 64]"), "{msg}");
}

#[test]
fn missing_tensor_names_the_tensor() {
    let d = copy_tiny();
    let p = d.path().join("model.safetensors");
    let w = Weights::from_dir(&tiny()).unwrap();
    let mut keep: HashMap<String, Tensor> = HashMap::new();
    for name in w.names() {
        if name != "model.layers.1.self_attn.v_proj.weight" {
            keep.insert(name.to_string(), w.get(name, &Device::Cpu).unwrap());
        }
    }
    drop(w);
    qlora_studio::engine::candle_core::safetensors::save(&keep, &p).unwrap();
    let (e, msg) = load_err(d.path());
    assert!(matches!(e, Error::MissingTensor { .. }), "{e:?}");
    assert!(msg.contains("model.layers.1.self_attn.v_proj.weight"), "{msg}");
}

#[test]
fn missing_shard_is_named() {
    let src = repo().join("tests/fixtures/tiny/llama_sharded");
    let d = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors.index.json", "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors"] {
        std::fs::copy(src.join(f), d.path().join(f)).unwrap();
    }
    let (_, msg) = load_err(d.path());
    assert!(msg.contains("model-00003-of-00003.safetensors") && msg.contains("does not exist"), "{msg}");
}

#[test]
fn missing_tokenizer() {
    let e = Tokenizer::from_dir(&tiny()).unwrap_err();
    assert!(matches!(e, Error::MissingTokenizer { .. }), "{e:?}");
    assert!(e.to_string().contains("tokenizer.json"), "{e}");
    let e = TextModel::load(&tiny(), &LoadOptions::default()).unwrap_err();
    assert!(matches!(e, Error::MissingTokenizer { .. }), "{e:?}");
}

#[test]
fn unsupported_architecture() {
    let d = copy_tiny();
    let cfg = std::fs::read_to_string(d.path().join("config.json")).unwrap();
    std::fs::write(d.path().join("config.json"), cfg.replace("\"model_type\": \"llama\"", "\"model_type\": \"gpt_neox\"")).unwrap();
    let (e, msg) = load_err(d.path());
    assert!(matches!(e, Error::UnsupportedArchitecture { .. }), "{e:?}");
    assert!(msg.contains("gpt_neox") && msg.contains("llama, mistral, phi, gemma, qwen2") && msg.contains("config.json"), "{msg}");
}

#[test]
fn bad_config_json() {
    let d = copy_tiny();
    std::fs::write(d.path().join("config.json"), "{ \"model_type\": \"llama\", ").unwrap();
    let (e, msg) = load_err(d.path());
    assert!(matches!(e, Error::BadConfig { .. }) && msg.contains("config.json"), "{msg}");
}

/// The tiny llama (context 128) with a tokenizer: a prompt that leaves no room is refused.
#[test]
fn prompt_longer_than_the_context() {
    let model = Model::load(&tiny(), &LoadOptions::default()).unwrap();
    let tok_dir = tempfile::tempdir().unwrap();
    std::fs::write(tok_dir.path().join("tokenizer.json"), TINY_TOKENIZER).unwrap();
    let tok = Tokenizer::from_dir(tok_dir.path()).unwrap();
    let g = qlora_studio::engine::generate::Generator::new(&model, &tok);
    let prompt: Vec<u32> = (0..120).map(|i| 3 + i % 200).collect();
    let opts = GenerateOptions { max_new_tokens: 20, ..Default::default() };
    let e = g.generate(&prompt, &opts, &NoProgress, &CancelToken::new()).unwrap_err();
    assert!(matches!(e, Error::ContextOverflow { prompt: 120, max_new: 20, context: 128 }), "{e:?}");
    assert!(e.to_string().contains("--max-new-tokens"), "{e}");
    let too_long: Vec<u32> = vec![5; 200];
    assert!(g.generate(&too_long, &GenerateOptions::default(), &NoProgress, &CancelToken::new()).is_err());
    // Within the context it runs.
    let ok = GenerateOptions { max_new_tokens: 8, ..Default::default() };
    assert_eq!(g.generate(&prompt, &ok, &NoProgress, &CancelToken::new()).unwrap().ids.len(), 8);
}

/// A word-level tokenizer over ids 0..256, enough for the tiny model.
const TINY_TOKENIZER: &str = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
"normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
"model":{"type":"WordLevel","vocab":{"<unk>":0,"a":1,"b":2},"unk_token":"<unk>"}}"#;
