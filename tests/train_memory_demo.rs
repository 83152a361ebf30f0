//! The planner's CPU training estimate against the heap the trainer really uses, for the CPU
//! demo's configuration (`configs/demo_smollm2.yaml`: SmolLM2-135M, NF4 double-quant base, f32
//! compute, LoRA r 8 on q, v, o, up, down, micro-batch 4 × 96 tokens, no gradient
//! checkpointing). A counting global allocator measures the heap's peak above the loaded model
//! during one micro-step (forward, chunked loss, backward) and one AdamW step; the planner's
//! terms for the same things (activations, logits buffer, LoRA gradients and AdamW moments,
//! dequantization scratch) must be within ±10% of it. (Its own binary: the allocator counts
//! every thread of the process, so nothing else may run beside it.)

use qlora_studio::engine::Quant;
use qlora_studio::engine::candle_core::{DType, Device};
use qlora_studio::engine::model::{LoadOptions, Model};
use qlora_studio::plan as qp;
use qlora_studio::train::config::TrainConfig;
use qlora_studio::train::data::batch::{Row, collate};
use qlora_studio::train::optim::{AdamW, AdamWParams, Param};
use qlora_studio::train::trainer;
#[path = "support/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::{CURRENT, MIB, PEAK, test_model};
use std::sync::atomic::Ordering;

#[test]
fn cpu_demo_peak_is_within_ten_percent_of_the_planner() {
    let dir = test_model();
    let (seq, mb, rank) = (96usize, 4usize, 8u64);
    let targets = ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"];
    let yaml = format!(
        "model: {}\nquant: {{kind: nf4, double_quant: true}}\ncompute_dtype: f32\n\
         lora: {{rank: {rank}, alpha: 16, target_modules: [{}]}}\ndata: {{files: [x.jsonl], max_len: {seq}}}\nmax_steps: 1\n",
        dir.display(),
        targets.join(", ")
    );
    let cfg = TrainConfig::from_yaml_str(&yaml, None).unwrap();
    let opts = LoadOptions { dtype: DType::F32, quant: Quant::Nf4DoubleQuant, device: Device::Cpu };
    let mut model = Model::load(&dir, &opts).unwrap();
    model.set_training(true);
    let lora = trainer::attach(&mut model, &cfg).unwrap();

    let meta = qp::gather(&qp::LocalFolder::new(&dir)).unwrap();
    let target = qp::Target::cpu(64 << 30, 64 << 30, None);
    let train = qp::TrainOptions {
        seq_len: seq as u64,
        micro_batch: mb as u64,
        rank,
        targets: targets.iter().map(|t| t.to_string()).collect(),
        checkpointing: false,
        base: qp::Precision::Nf4Dq,
        dropout: false,
        offload_checkpoints: true,
    };
    let popts = qp::PlanOptions { context: Some(seq as u64), batch: 1, train: Some(train), ..Default::default() };
    let plan = qp::plan(&meta, &target, &popts, qp::Overheads::builtin().unwrap()).unwrap();
    let p = plan.training.unwrap().memory;
    let planned = p.activations_bytes + p.logits_bytes + p.dequant_scratch_bytes + p.lora_grads_bytes + p.optimizer_bytes;

    let rows: Vec<Row> =
        (0..mb).map(|r| Row { ids: (0..seq as u32).map(|i| 100 + (i * 7 + r as u32 * 13) % 40_000).collect(), targets: vec![true; seq] }).collect();
    let batch = collate(&rows.iter().collect::<Vec<_>>(), 0);
    let params: Vec<Param> = lora
        .iter()
        .flat_map(|(n, l)| [Param { name: format!("{n}.lora_A"), var: l.a.clone() }, Param { name: format!("{n}.lora_B"), var: l.b.clone() }])
        .collect();
    let before = CURRENT.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let mut opt = AdamW::new(params, AdamWParams { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }).unwrap();
    let (loss, grads) = trainer::step::micro_step(&model, &lora, &batch, (mb * seq) as f64, 1.0, false).unwrap();
    opt.step(&grads, 1e-3).unwrap();
    assert!(loss.is_finite());
    let measured = PEAK.load(Ordering::Relaxed) - before;
    let ratio = planned as f64 / measured as f64;
    eprintln!(
        "cpu demo step: heap peak above the loaded model {:.1} MiB; planner {:.1} MiB (activations {:.1}, logits {:.1}, \
         grads + AdamW {:.1}, scratch {:.1}); predicted / measured {ratio:.3}",
        measured as f64 / MIB,
        planned as f64 / MIB,
        p.activations_bytes as f64 / MIB,
        p.logits_bytes as f64 / MIB,
        (p.lora_grads_bytes + p.optimizer_bytes) as f64 / MIB,
        p.dequant_scratch_bytes as f64 / MIB
    );
    assert!((0.9..=1.1).contains(&ratio), "the planner's CPU training estimate is {ratio:.3}× the measured peak");
}
