//! Peak memory, the QLoRA way: while training on an NF4 base, no dense copy of the weights
//! may stay alive until backward. Measured with a counting global allocator (candle's CPU
//! tensors live on the heap; the memory-mapped safetensors file does not count) on
//! SmolLM2-135M with an NF4 (double-quant) base in bf16 compute, as the planner prices it: the base's bytes must match the planner's
//! NF4 number, and the heap's peak during forward + backward must stay far below what dense
//! f32 copies of the projections would take, and within the planner's estimate.

use qlora_studio::engine::Quant;
use qlora_studio::engine::candle_core::{DType, Device};
use qlora_studio::engine::model::{LoadOptions, Model};
use qlora_studio::plan as qp;
use qlora_studio::train::config::TrainConfig;
use qlora_studio::train::data::batch::{Row, collate};
use qlora_studio::train::trainer;
#[path = "support/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::{CURRENT, MIB, PEAK, test_model};
use std::sync::atomic::Ordering;

#[test]
fn nf4_base_stays_nf4_sized_during_training() {
    let dir = test_model();
    let (seq, targets) = (32usize, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]);
    let yaml = format!(
        "model: {}\nquant: {{kind: nf4, double_quant: true}}\ncompute_dtype: bf16\n\
         lora: {{rank: 8, alpha: 16, target_modules: [{}]}}\ndata: {{files: [x.jsonl], max_len: {seq}}}\nmax_steps: 1\n",
        dir.display(),
        targets.join(", ")
    );
    let cfg = TrainConfig::from_yaml_str(&yaml, None).unwrap();

    let opts = LoadOptions { dtype: DType::BF16, quant: Quant::Nf4DoubleQuant, device: Device::Cpu };
    let mut model = Model::load(&dir, &opts).unwrap();
    model.set_training(true);
    let lora = trainer::attach(&mut model, &cfg).unwrap();
    let dense_projections: usize = model.projections().iter().map(|(_, l)| l.in_features() * l.out_features() * 4).sum();

    // The planner's numbers for this run.
    let meta = qp::gather(&qp::LocalFolder::new(&dir)).unwrap();
    let target = qp::Target::cpu(64 << 30, 64 << 30, None);
    let train = qp::TrainOptions {
        seq_len: seq as u64,
        micro_batch: 1,
        rank: 8,
        targets: targets.iter().map(|t| t.to_string()).collect(),
        checkpointing: false,
        base: qp::Precision::Nf4Dq,
        dropout: false,
        offload_checkpoints: true,
    };
    let popts = qp::PlanOptions { context: Some(seq as u64), batch: 1, train: Some(train), ..Default::default() };
    let plan = qp::plan(&meta, &target, &popts, qp::Overheads::builtin().unwrap()).unwrap();
    let planned = plan.training.unwrap().memory;

    let ours = model.weight_bytes();
    eprintln!(
        "base weights: ours {:.1} MiB, planner {:.1} MiB; dense f32 projections would be {:.1} MiB",
        ours as f64 / MIB,
        planned.base_weights_bytes as f64 / MIB,
        dense_projections as f64 / MIB
    );
    let ratio = ours as f64 / planned.base_weights_bytes as f64;
    assert!((0.85..1.15).contains(&ratio), "base weights {ours} vs the planner's {}", planned.base_weights_bytes);

    // Peak heap above the loaded model over forward + backward, at two sequence lengths: the
    // part that does not grow with the sequence is what weights cost during training.
    let peak_at = |t: usize| {
        let row = Row { ids: (0..t as u32).map(|i| 100 + i * 7).collect(), targets: vec![true; t] };
        let batch = collate(&[&row], 0);
        let before = CURRENT.load(Ordering::Relaxed);
        PEAK.store(before, Ordering::Relaxed);
        let (loss, grads) = trainer::step::micro_step(&model, &lora, &batch, t as f64, 1.0, false).unwrap();
        assert!(loss.is_finite() && grads.len() == lora.len() * 2);
        PEAK.load(Ordering::Relaxed) - before
    };
    let (short, long) = (peak_at(seq / 4), peak_at(seq));
    let per_token = (long - short) as f64 / (seq - seq / 4) as f64;
    let fixed = short as f64 - per_token * (seq / 4) as f64;
    let dense_bf16 = dense_projections as f64 / 2.0;
    let planned_working = planned.total_bytes - planned.base_weights_bytes;
    eprintln!(
        "training peak above the loaded model: {:.1} MiB at {seq} tokens (planner: {:.1} MiB beyond the base); \
         {:.2} MiB per token, {:.1} MiB independent of length; dense bf16 projections: {:.1} MiB",
        long as f64 / MIB,
        planned_working as f64 / MIB,
        per_token / MIB,
        fixed / MIB,
        dense_bf16 / MIB
    );
    assert!(fixed < dense_bf16 * 0.75, "{:.1} MiB held whatever the length: dense copies of the weights are being kept for backward", fixed / MIB);
    assert!(long as u64 <= planned_working, "peak {long} above the planner's {planned_working}");
}
