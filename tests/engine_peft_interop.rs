// Adapters we train are adapters peft can use: a LoRA created by the engine (create_trainable,
// B set to non-zero values as after training), written by `save_peft`, is loaded by
// `PeftModel.from_pretrained` on the same tiny llama in Python, and peft's logits equal ours
// within 1e-4. Needs python3 with torch, transformers and peft
// (pip install -r tests/fixtures/requirements.txt).

use qlora_studio::engine::candle_core::{DType, Device, IndexOp, Tensor};
use qlora_studio::engine::lora::{LoraSpec, TargetModules, create_trainable};
use qlora_studio::engine::{LoadOptions, Model, Weights};
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

const PEFT_LOAD: &str = r#"
import sys, torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM
from peft import PeftModel
base, adapter, ids_file, out = sys.argv[1:5]
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
model = PeftModel.from_pretrained(model, adapter).eval()
ids = load_file(ids_file)["input_ids"]
with torch.no_grad():
    logits = model(input_ids=ids).logits[0].float().contiguous()
save_file({"logits": logits}, out)
"#;

#[test]
fn peft_loads_our_adapter_and_gives_our_logits() {
    let llama = fixtures().join("tiny/llama");
    let refs = llama.join("reference.safetensors");
    let w = Weights::from_files(&llama, std::slice::from_ref(&refs)).expect("run `python3 tests/fixtures/make_fixtures.py tiny`");
    let ids = w.get("input_ids", &Device::Cpu).unwrap().to_dtype(DType::U32).unwrap();
    let ids = if ids.rank() == 1 { ids.unsqueeze(0).unwrap() } else { ids };

    let mut model = Model::load(&llama, &LoadOptions::default()).unwrap();
    let layers = model.lora_layers().unwrap();
    let spec = LoraSpec {
        r: 4,
        alpha: 16.0,
        dropout: 0.0,
        use_rslora: true,
        target_modules: TargetModules::List(vec!["q_proj".into(), "v_proj".into(), "down_proj".into()]),
        seed: 3,
        dtype: DType::F32,
    };
    let tr = create_trainable(&layers, &spec, &Device::Cpu).unwrap();
    for (name, var) in tr.vars() {
        if name.contains("lora_B") {
            var.set(&Tensor::randn(0f32, 0.5, var.shape(), &Device::Cpu).unwrap()).unwrap();
        }
    }
    tr.set_training(false);
    let ours = model.forward(&ids, None).unwrap().i(0).unwrap();

    let dir = tempfile::tempdir().unwrap();
    tr.save_peft(dir.path()).unwrap();
    let out = dir.path().join("peft_logits.safetensors");
    let run = Command::new("python3")
        .args(["-c", PEFT_LOAD])
        .arg(&llama)
        .arg(dir.path())
        .arg(&refs)
        .arg(&out)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("python3 must be installed with torch, transformers and peft: pip install -r tests/fixtures/requirements.txt");
    assert!(
        run.status.success(),
        "peft could not load our adapter (or python lacks peft: pip install -r tests/fixtures/requirements.txt):\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let theirs = Weights::from_files(dir.path(), &[out]).unwrap().get("logits", &Device::Cpu).unwrap();
    let base = {
        let plain = Model::load(&llama, &LoadOptions::default()).unwrap();
        plain.forward(&ids, None).unwrap().i(0).unwrap()
    };
    let diff = |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff(&ours, &base) > 0.1, "the adapter must change the logits for this test to mean anything");
    let d = diff(&ours, &theirs);
    assert!(d < 1e-4, "peft's logits with our adapter differ from ours by {d}");
}
