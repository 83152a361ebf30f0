//! The chat model with adapters, on the real starter model: an adapter of another base is
//! refused with the modules at fault; an adapter of this base changes the answer, scale 0 and
//! detach give the base's answer back, and the base is loaded once throughout.

use super::*;
use crate::conversations::Sampling;
use qlora_engine::candle_core::Tensor;
use qlora_engine::lora::{LoraSpec, TargetModules};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

pub(crate) fn starter() -> PathBuf {
    let assets = std::env::var_os("QLORA_TEST_ASSETS").map(PathBuf::from).unwrap_or_else(|| repo().join("test-assets"));
    let dir = assets.join("SmolLM2-135M-Instruct");
    assert!(dir.join("config.json").is_file(), "the test model is missing in {}: run scripts/fetch-test-model.sh", dir.display());
    dir
}

fn request(model: &Path, adapter: Option<&Path>, scale: f32) -> ChatRequest {
    ChatRequest {
        stream: 1,
        model: model.display().to_string(),
        adapter: adapter.map(|a| a.display().to_string()),
        adapter_scale: scale,
        system_prompt: String::new(),
        messages: vec![ChatMessage { role: "user".into(), content: "Name a colour.".into() }],
        sampling: Sampling { temperature: 0.0, top_p: 1.0, top_k: 0, max_new_tokens: 6, repetition_penalty: 1.0, seed: Some(1) },
    }
}

fn answer(loaded: &Loaded, req: &ChatRequest) -> CmdResult<String> {
    let text = Mutex::new(String::new());
    let send = |c: ChatChunk| {
        if let ChatChunk::Token { text: t } = c {
            text.lock().unwrap().push_str(&t);
        }
    };
    generate(loaded, req, &CancelToken::new(), &send)?;
    Ok(text.into_inner().unwrap())
}

/// A PEFT adapter for `model`'s q_proj/v_proj with random (non-zero) A and B, written to `dir`.
pub(crate) fn random_adapter(loaded: &Loaded, model: &Path, dir: &Path) {
    let (tm, layers) = loaded.get(model).unwrap();
    let spec = LoraSpec {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        use_rslora: false,
        target_modules: TargetModules::List(vec!["q_proj".into(), "v_proj".into()]),
        seed: 7,
        dtype: qlora_engine::candle_core::DType::F32,
    };
    let t = lora::create_trainable(&layers, &spec, tm.model.device()).unwrap();
    for (name, var) in t.vars() {
        if name.ends_with("lora_B.weight") {
            var.set(&Tensor::randn(0f32, 0.5, var.shape(), var.device()).unwrap()).unwrap();
        }
    }
    t.set_training(false);
    t.save_peft(dir).unwrap();
    lora::detach_all(&layers);
}

#[test]
fn adapter_attach_scale_and_detach_on_one_loaded_base() {
    let model = starter();
    let loaded = Loaded::default();
    let base = answer(&loaded, &request(&model, None, 1.0)).unwrap();
    let (first, _) = loaded.get(&model).unwrap();

    // An adapter made for another base (the tiny llama fixture): refused, naming the modules.
    let other = repo().join("tests/fixtures/peft/adapter");
    let e = loaded.attach(&model, &other).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidInput, "{e:?}");
    assert!(e.message.contains("does not fit this model") && e.message.contains("proj"), "{}", e.message);
    assert_eq!(loaded.adapter(), None);
    // A folder that is not an adapter.
    let e = loaded.attach(&model, &model).unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound, "{e:?}");
    assert!(e.message.contains("adapter_config.json"), "{}", e.message);

    let tmp = tempfile::tempdir().unwrap();
    let adapter = tmp.path().join("adapter");
    random_adapter(&loaded, &model, &adapter);
    let info = loaded.attach(&model, &adapter).unwrap();
    assert_eq!((info.rank, info.modules), (4, 60), "{info:?}"); // 30 layers x (q, v)
    assert_eq!(loaded.adapter().as_deref(), Some(adapter.as_path()));

    let tuned = answer(&loaded, &request(&model, Some(&adapter), 1.0)).unwrap();
    assert_ne!(tuned, base, "the adapter changes the answer");
    let at_zero = answer(&loaded, &request(&model, Some(&adapter), 0.0)).unwrap();
    assert_eq!(at_zero, base, "scale 0 is the base model");
    assert_eq!(answer(&loaded, &request(&model, Some(&adapter), 1.0)).unwrap(), tuned, "and back");
    // No adapter in the request: the base's answer, the adapter stays attached (side by side).
    assert_eq!(answer(&loaded, &request(&model, None, 1.0)).unwrap(), base);
    assert!(loaded.adapter().is_some());
    let e = answer(&loaded, &request(&model, Some(&adapter), f32::NAN)).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidInput);

    loaded.detach();
    assert_eq!(loaded.adapter(), None);
    assert_eq!(answer(&loaded, &request(&model, None, 1.0)).unwrap(), base);
    let (last, _) = loaded.get(&model).unwrap();
    assert!(Arc::ptr_eq(&first, &last), "the base was loaded once");
}
