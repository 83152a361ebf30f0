//! Every shipped training preset parses and validates (unknown or mistyped fields would be
//! errors), targets the projection names its architecture uses, and the demo config points
//! at the shipped dataset.

use qlora_studio::train::config::{QuantKind, TrainConfig};
use std::path::Path;

#[test]
fn presets_parse_and_use_an_nf4_base() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    for name in ["tinyllama_1.1b", "phi2_2.7b", "gemma_2b", "mistral_7b", "demo_smollm2"] {
        let cfg = TrainConfig::from_file(&dir.join(format!("{name}.yaml"))).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(cfg.quant.kind, QuantKind::Nf4, "{name}");
        assert!(cfg.data.files.iter().all(|f| f.is_file()), "{name}: dataset missing: {:?}", cfg.data.files);
    }
    let phi = TrainConfig::from_file(&dir.join("phi2_2.7b.yaml")).unwrap();
    assert!(phi.lora.target_modules.contains(&"dense".to_string()), "Phi-2 names its output projection `dense`");
}
