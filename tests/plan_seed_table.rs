//! The seed's table — download, VRAM in fp16 / 8-bit / 4-bit, QLoRA training, RTX 2080
//! verdicts — recomputed for its four models from their real config.json files
//! (tests/fixtures/hub-configs/), with every expected number derived by hand below.
//!
//! Conventions (docs/PLANNER.md): context 2048 tokens, batch 1; compute in fp16 on the
//! RTX 2080 (Turing has no bf16); QLoRA: sequence 512, micro-batch 4, rank 16 on every
//! projection, gradient checkpointing, NF4 + double quantization base (the configuration
//! the GPU benchmarks of issue 7 measure). Overheads come from configs/overheads.json, so the
//! totals here are `working + fixed + ceil(slack × working)` with those values (the
//! training slack for QLoRA).

use qlora_studio::plan::{self as qp, Fit, Overheads, PlanOptions, Precision, Target, TrainOptions};

const GIB: u64 = 1 << 30;

struct Row {
    dir: &'static str,
    params: u64,
    /// Projection elements per layer × layers; everything else ("small": embeddings, head,
    /// norms, biases) stays 16-bit in every quantized load.
    layers: u64,
    proj_per_layer: &'static [(u64, u64)],
    small: u64,
    kv_cache: u64,
    /// Activations of the 2048-token prefill in fp16 on the CUDA path, and with a quantized
    /// base (+ the dense copy of the largest projection: numel × 2 for NF4, which dequantizes
    /// straight into fp16; numel × (8 + 2) for int8, through f32).
    act_fp16: u64,
    act_int8: u64,
    act_nf4: u64,
    /// QLoRA (stated configuration): LoRA parameters and the total before overhead.
    lora_params: u64,
    train_working: u64,
    verdicts_2080: [Fit; 4], // fp16, int8, nf4, qlora
}

fn nf4_dq(n: u64) -> u64 {
    // codes n/2, u8 absmax per 64, f32 per 256 absmax, f32 offset, 256 f32 map, 16 f32 code.
    n / 2 + n / 64 + (n / 64).div_ceil(256) * 4 + 4 + 1024 + 64
}

/// TinyLlama 1.1B: h 2048, I 5632, 22 layers, 32 heads, 4 kv heads (head_dim 64), vocab 32000.
/// Per layer q 2048², k = v 256·2048, o 2048², gate = up = down 5632·2048:
/// 4,194,304·2 + 524,288·2 + 11,534,336·3 = 44,040,192; × 22 = 968,884,224.
/// Small: embed 65,536,000 + head 65,536,000 + norms 22·2·2048 + 2048 = 131,164,160.
/// Params 1,100,048,384 (the published count). fp16 download 2,200,096,768 B = 2.20 GB.
/// KV 22·2·4·64·2048·2 = 46,137,344.
/// Prefill (CUDA path): attention dominates: qkv 2048·(2048+512)·2 = 10,485,760; q copies
/// 3·2048·2048·2 = 25,165,824; scores 3·32·2048²·2 = 805,306,368 → 840,957,952 (MLP
/// 4·2048·5632·2 = 92,274,688); + residual 4·2048·2048·2 = 33,554,432 → 874,512,384;
/// NF4 + 11,534,336·2 = 23,068,672, int8 + 11,534,336·10 = 115,343,360.
/// QLoRA (GPU path, c = 2, BT = 2048): LoRA 22·16·(4096+2304+2304+4096+7680·3) = 12,615,680;
/// per-layer activations of the fused training layer 289,406,976 (hidden 2048·2048·(2·2 + 6)
/// = 41,943,040, fused RMSNorm; q/k/v outputs, rotated q and k, v by heads 2048·2·2560·2 =
/// 20,971,520; the probabilities alone 4·32·512²·2 = 67,108,864; attn out 16,777,216; MLP
/// gate, up, SwiGLU 3·2048·5632·2 = 69,206,016; LoRA, one output per target 2048·2·17,920
/// = 73,400,320). The hand-written backward (Llama family on a GPU, with checkpointing): two
/// layer inputs on the device (the rest offloaded to host) 2·2048·2048·2 + ⌈0.21 × layer⌉ +
/// 2·2048·2048·2 = 16,777,216 + 60,775,465 + 16,777,216 = 94,329,897;
/// logits 4·256·32000·4 = 131,072,000 (the untied head needs no copy);
/// scratch: the largest projection's whole bf16 copy (≤ 64 MiB) 5632·2048·2 = 23,068,672;
/// base 762,313,960; LoRA+grads+AdamW 12,615,680·16.
const TINYLLAMA: Row = Row {
    dir: "TinyLlama--TinyLlama-1.1B-Chat-v1.0",
    params: 1_100_048_384,
    layers: 22,
    proj_per_layer: &[(2048, 2048), (256, 2048), (256, 2048), (2048, 2048), (5632, 2048), (5632, 2048), (2048, 5632)],
    small: 131_164_160,
    kv_cache: 46_137_344,
    act_fp16: 874_512_384,
    act_int8: 874_512_384 + 115_343_360,
    act_nf4: 874_512_384 + 23_068_672,
    lora_params: 12_615_680,
    train_working: 762_313_960 + 12_615_680 * 16 + 94_329_897 + 131_072_000 + 23_068_672,
    verdicts_2080: [Fit::Fits, Fit::Fits, Fit::Fits, Fit::Fits],
};

/// Phi-2: h 2560, I 10240, 32 layers, 32 heads (head_dim 80, no GQA), vocab 51200, biases
/// everywhere, one LayerNorm (weight + bias) per layer. Per layer q = k = v = dense 2560²,
/// fc1 10240·2560, fc2 2560·10240 → 78,643,200; × 32 = 2,516,582,400.
/// Small: embed 131,072,000 + head 131,072,000 + head bias 51,200 + per layer biases
/// (4·2560 + 10240 + 2560 = 23,040) and LN 5,120 → 28,160·32 = 901,120 + final LN 5,120
/// = 263,101,440. Params 2,779,683,840. fp16 download 5,559,367,680 B = 5.56 GB.
/// KV 32·2·32·80·2048·2 = 671,088,640.
/// Prefill (CUDA path): qkv 2048·7680·2 = 31,457,280; q copies 3·2048·2560·2 = 31,457,280;
/// scores 3·32·2048²·2 = 805,306,368 → 868,220,928; + residual 4·2048·2560·2 = 41,943,040
/// → 910,163,968; NF4 + 26,214,400·2 = 52,428,800, int8 + 26,214,400·10 = 262,144,000.
/// QLoRA: LoRA 32·16·(5120·4 + 12800·2) = 23,592,960; per-layer activations 444,596,224
/// (hidden 2048·2560·(16 + 6) = 115,343,360, one composite LayerNorm; q/k/v 2048·2·7680·2 =
/// 62,914,560; probabilities 4·32·512²·2 = 67,108,864; attn out 20,971,520; MLP
/// 2·2048·10240·2 = 83,886,080; LoRA 2048·2·23,040 = 94,371,840), with checkpointing (autograd,
/// inputs offloaded) 2·10,485,760 + ⌈2.88 × layer⌉ 1,280,437,126 (Phi's measured factor) +
/// 20,971,520 = 1,322,380,166; logits 4·256·51200·4 = 209,715,200; scratch 26,214,400·6.
const PHI2: Row = Row {
    dir: "microsoft--phi-2",
    params: 2_779_683_840,
    layers: 32,
    proj_per_layer: &[(2560, 2560), (2560, 2560), (2560, 2560), (2560, 2560), (10240, 2560), (2560, 10240)],
    small: 263_101_440,
    kv_cache: 671_088_640,
    act_fp16: 910_163_968,
    act_int8: 910_163_968 + 262_144_000,
    act_nf4: 910_163_968 + 52_428_800,
    lora_params: 23_592_960,
    train_working: 1_824_639_744 + 23_592_960 * 16 + 1_322_380_166 + 209_715_200 + 157_286_400,
    verdicts_2080: [Fit::Tight, Fit::Fits, Fit::Fits, Fit::Fits],
};

/// Gemma 2B: h 2048, I 16384, 18 layers, 8 heads of 256, 1 kv head, vocab 256000, tied head.
/// Per layer q 2048², k = v 256·2048, o 2048², gate = up = down 16384·2048 → 110,100,480;
/// × 18 = 1,981,808,640. Small: embed 524,288,000 + norms 18·2·2048 + 2048 = 524,363,776.
/// Params 2,506,172,416. fp16 download 5,012,344,832 B = 5.01 GB (the seed said ~4 GB).
/// KV 18·2·1·256·2048·2 = 37,748,736.
/// Prefill (CUDA path): the MLP wins: 4·2048·16384·2 = 268,435,456 (attention: qkv
/// 2048·2560·2 + q copies 3·2048·2048·2 + scores 3·8·2048²·2 = 236,978,176; logits of the
/// last position only 256000·6 = 1,536,000); + residual 4·2048·2048·2 = 33,554,432 →
/// 301,989,888; NF4 + 33,554,432·2 = 67,108,864, int8 + 33,554,432·10 = 335,544,320.
/// QLoRA: the fused loss's buffer 4·256·256000·4 = 1,048,576,000 (16-bit logits and their
/// gradient; the composite f32 loss took 20 bytes an element, 5.2 GB); the tied head needs no
/// copy. Per-layer activations 643,825,664 (hidden 2048·2048·(2·16 + 6) = 159,383,552, the
/// `1 + w` norm stays composite; q/k/v 20,971,520; probabilities 4·8·512²·2 = 16,777,216;
/// attn out 16,777,216; MLP (GELU-tanh, composite) 4·2048·16384·2 = 268,435,456; LoRA
/// 2048·2·39,424 = 161,480,704), with checkpointing (autograd, inputs offloaded)
/// 2·8,388,608 + ⌈1.62 × layer⌉ 1,042,997,576 (Gemma's measured factor) + 16,777,216 =
/// 1,076,552,008.
/// LoRA 18·16·(4096·2 + 2304·2 + 18432·3) = 19,611,648.
const GEMMA2B: Row = Row {
    dir: "google--gemma-2b",
    params: 2_506_172_416,
    layers: 18,
    proj_per_layer: &[(2048, 2048), (256, 2048), (256, 2048), (2048, 2048), (16384, 2048), (16384, 2048), (2048, 16384)],
    small: 524_363_776,
    kv_cache: 37_748_736,
    act_fp16: 301_989_888,
    act_int8: 301_989_888 + 335_544_320,
    act_nf4: 301_989_888 + 67_108_864,
    lora_params: 19_611_648,
    train_working: 2_071_219_064 + 19_611_648 * 16 + 1_076_552_008 + 1_048_576_000 + 201_326_592,
    verdicts_2080: [Fit::Fits, Fit::Fits, Fit::Fits, Fit::Fits],
};

/// Mistral 7B: h 4096, I 14336, 32 layers, 32 heads of 128, 8 kv heads, vocab 32000.
/// Per layer q 4096², k = v 1024·4096, o 4096², gate = up = down 14336·4096 → 218,103,808;
/// × 32 = 6,979,321,856. Small: embed + head 2·131,072,000 + norms 32·2·4096 + 4096 =
/// 262,410,240. Params 7,241,732,096. fp16 download 14,483,464,192 B = 14.48 GB.
/// KV 32·2·8·128·2048·2 = 268,435,456 (sliding window 4096 > 2048: no effect, and the
/// engine does not cap its cache by it anyway).
/// Prefill (CUDA path): qkv 2048·6144·2 = 25,165,824; q copies 3·2048·4096·2 = 50,331,648;
/// scores 3·32·2048²·2 = 805,306,368 → 880,803,840; + residual 4·2048·4096·2 = 67,108,864
/// → 947,912,704; NF4 + 58,720,256·2 = 117,440,512, int8 + 58,720,256·10 = 587,202,560.
/// QLoRA: LoRA 32·16·(8192·2 + 5120·2 + 18432·3) = 41,943,040; per-layer activations
/// 587,202,560 (hidden 2048·4096·10 = 83,886,080; q/k/v 2048·2·6144·2 = 50,331,648;
/// probabilities 67,108,864; attn out 33,554,432; MLP 3·2048·14336·2 = 176,160,768; LoRA
/// 2048·2·43,008 = 176,160,768); the hand-written backward: 2·16,777,216 + ⌈0.21 × layer⌉
/// 123,312,538 + 33,554,432 = 190,421,402; logits 4·256·32000·4 = 131,072,000; scratch:
/// q/o whole 4096·4096·2 = 33,554,432, the MLP weights (117,440,512 > 64 MiB) in 32 MiB slabs.
const MISTRAL7B: Row = Row {
    dir: "mistralai--Mistral-7B-v0.1",
    params: 7_241_732_096,
    layers: 32,
    proj_per_layer: &[(4096, 4096), (1024, 4096), (1024, 4096), (4096, 4096), (14336, 4096), (14336, 4096), (4096, 14336)],
    small: 262_410_240,
    kv_cache: 268_435_456,
    act_fp16: 947_912_704,
    act_int8: 947_912_704 + 587_202_560,
    act_nf4: 947_912_704 + 117_440_512,
    lora_params: 41_943_040,
    train_working: 4_125_481_856 + 41_943_040 * 16 + 190_421_402 + 131_072_000 + 33_554_432,
    // QLoRA: 5,151,618,330 working + 727,855,908 fixed + 1,545,485,499 slack = 6.92 GiB: the
    // offloaded layer inputs and the hand-written backward bring it under the 2080's 8 GiB.
    verdicts_2080: [Fit::WontFit, Fit::WontFit, Fit::Fits, Fit::Fits],
};

fn stated_training() -> TrainOptions {
    TrainOptions {
        seq_len: 512,
        micro_batch: 4,
        rank: 16,
        targets: vec![],
        checkpointing: true,
        base: Precision::Nf4Dq,
        dropout: false,
        offload_checkpoints: true,
    }
}

fn plan_on_2080(dir: &str) -> qp::Plan {
    let path = format!("{}/tests/fixtures/hub-configs/{dir}", env!("CARGO_MANIFEST_DIR"));
    let meta = qp::gather(&qp::LocalFolder::new(&path)).unwrap();
    let opts = PlanOptions { context: Some(2048), batch: 1, train: Some(stated_training()), ..Default::default() };
    qp::plan(&meta, &Target::preset("rtx2080").unwrap(), &opts, Overheads::builtin().unwrap()).unwrap()
}

/// Working set + the fixed CUDA bytes (context, cuBLAS, modules) + the inference slack.
fn with_overhead(working: u64) -> u64 {
    let o = Overheads::builtin().unwrap();
    let fixed = o.cuda.context_bytes.value + o.cuda.cublas_workspace_bytes.value + o.cuda.modules_bytes.value;
    working + fixed + (working as f64 * o.cuda.allocator_slack_fraction.value).ceil() as u64
}

/// The same for a QLoRA run, whose slack is the pool's measured in training.
fn with_training_overhead(working: u64) -> u64 {
    let o = Overheads::builtin().unwrap();
    let fixed = o.cuda.context_bytes.value + o.cuda.cublas_workspace_bytes.value + o.cuda.modules_bytes.value;
    working + fixed + (working as f64 * o.training.cuda_pool_slack_fraction.value).ceil() as u64
}

fn check(row: &Row) {
    let p = plan_on_2080(row.dir);
    let name = row.dir;
    assert_eq!(p.parameters, row.params, "{name}: parameters");
    assert_eq!(p.tensors_from, qp::TensorsFrom::Architecture, "{name}: config.json only");
    // Weights at the published 16-bit dtype, plus the small files the folder has (config.json).
    let config = std::fs::metadata(format!("{}/tests/fixtures/hub-configs/{name}/config.json", env!("CARGO_MANIFEST_DIR"))).unwrap().len();
    let download = row.params * 2 + config;
    assert_eq!((p.download_bytes, p.model_bytes, p.download_exact), (download, download, false), "{name}: download");

    let proj: u64 = row.proj_per_layer.iter().map(|(o, i)| o * i).sum();
    assert_eq!(row.layers * proj + row.small, row.params, "{name}: the hand split adds up");
    let int8: u64 = row.layers * row.proj_per_layer.iter().map(|(o, i)| o * i + o * 4).sum::<u64>() + row.small * 2;
    let nf4: u64 = row.layers * row.proj_per_layer.iter().map(|(o, i)| o * i / 2 + o * i / 64 * 4 + 64).sum::<u64>() + row.small * 2;
    let dq: u64 = row.layers * row.proj_per_layer.iter().map(|(o, i)| nf4_dq(o * i)).sum::<u64>() + row.small * 2;
    let expect = [
        (Precision::Fp16, row.params * 2, row.act_fp16),
        (Precision::Int8, int8, row.act_int8),
        (Precision::Nf4, nf4, row.act_nf4),
        (Precision::Nf4Dq, dq, row.act_nf4),
    ];
    for (prec, weights, act) in expect {
        let m = &p.inference.get(prec).memory;
        assert_eq!(m.weights_bytes, weights, "{name} {prec:?} weights");
        assert_eq!(m.kv_cache_bytes, row.kv_cache, "{name} {prec:?} kv");
        assert_eq!(m.activations_bytes, act, "{name} {prec:?} activations");
        assert_eq!(m.total_bytes, with_overhead(weights + row.kv_cache + act), "{name} {prec:?} total");
    }
    let t = p.training.as_ref().unwrap();
    assert_eq!(t.memory.lora_parameters, row.lora_params, "{name} LoRA parameters");
    assert_eq!(t.memory.base_weights_bytes, dq, "{name} QLoRA base");
    assert_eq!(t.memory.total_bytes, with_training_overhead(row.train_working), "{name} QLoRA total");
    let got = [p.inference.fp16.verdict, p.inference.int8.verdict, p.inference.nf4.verdict, t.verdict];
    assert_eq!(got, row.verdicts_2080, "{name}: RTX 2080 verdicts (fp16, int8, nf4, QLoRA)");
    println!(
        "{name}: download {:.2} GB, fp16 {:.2} GiB, int8 {:.2} GiB, nf4 {:.2} GiB, QLoRA {:.2} GiB",
        p.download_bytes as f64 / 1e9,
        p.inference.fp16.memory.total_bytes as f64 / GIB as f64,
        p.inference.int8.memory.total_bytes as f64 / GIB as f64,
        p.inference.nf4.memory.total_bytes as f64 / GIB as f64,
        t.memory.total_bytes as f64 / GIB as f64
    );
}

#[test]
fn tinyllama_1_1b() {
    check(&TINYLLAMA);
}

#[test]
fn phi_2() {
    check(&PHI2);
}

#[test]
fn gemma_2b() {
    check(&GEMMA2B);
}

#[test]
fn mistral_7b() {
    check(&MISTRAL7B);
}

/// Where the RTX 2080 says no, the planner names the smallest change that fits.
#[test]
fn rtx2080_suggestions() {
    let m = plan_on_2080(MISTRAL7B.dir);
    let s = m.inference_suggestion.unwrap();
    assert!(s.change.starts_with("load in nf4 "), "{}", s.change);
    assert_eq!(s.fit, Fit::Fits);
    let t = m.training.unwrap();
    assert!(t.suggestion.is_none(), "QLoRA fits as stated: nothing to suggest");
    // With the layer inputs kept on the GPU, 30 more of them (4·512·4096·2 bytes each) are on
    // the device and the 2080 is tight.
    let meta = qp::gather(&qp::LocalFolder::new(format!("{}/tests/fixtures/hub-configs/{}", env!("CARGO_MANIFEST_DIR"), MISTRAL7B.dir))).unwrap();
    let train = TrainOptions { offload_checkpoints: false, ..stated_training() };
    let opts = PlanOptions { context: Some(2048), batch: 1, train: Some(train), ..Default::default() };
    let on_gpu = qp::plan(&meta, &Target::preset("rtx2080").unwrap(), &opts, Overheads::builtin().unwrap()).unwrap().training.unwrap();
    assert_eq!(on_gpu.memory.activations_bytes - t.memory.activations_bytes, 30 * 16_777_216);
    assert_eq!(on_gpu.verdict, Fit::Tight);
    // Gemma's 256k vocabulary: with the fused cross-entropy its loss buffer (1.05 GB) is no
    // longer the largest term, and QLoRA fits the 2080 as stated.
    let g = plan_on_2080(GEMMA2B.dir).training.unwrap();
    assert!(g.memory.logits_bytes < g.memory.activations_bytes);
    assert_eq!(g.verdict, Fit::Fits);
}
