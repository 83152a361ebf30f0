#!/usr/bin/env python3
"""The planner's QLoRA factors from a `bench/gpu/run_train.sh` run (configs/overheads.json
`training`): per shape, the layers' worth of activations alive at the checkpointed peak and the
device pool's slack, from the measured live and reserved peaks (ours.jsonl) and the planner's
other terms for the same configuration (plan.jsonl, `qlora plan --train --json`).

    python3 bench/gpu/calibrate_train.py OURS.jsonl PLAN.jsonl

The per-layer activation bytes are the planner's fused GPU layer formula
(crates/qlora-plan/src/training.rs `layer_activation_bytes_fused`), recomputed here from the
shapes' config.json; with offload the device keeps two layer inputs (the last layer's and the
one being brought back).
"""
import json
import sys

CONFIGS = {
    "tinyllama": "bench/gpu/configs/tinyllama/config.json",
    "mistral7b": "bench/gpu/configs/mistral7b/config.json",
    "phi2": "tests/fixtures/hub-configs/microsoft--phi-2/config.json",
    "gemma2b": "tests/fixtures/hub-configs/google--gemma-2b/config.json",
}
B, T, C = 4, 512, 2


def layer_bytes(cfg):
    kind = cfg["model_type"]
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    nh = cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads") or nh
    hd = cfg.get("head_dim") or h // nh
    q, kv = nh * hd, nkv * hd
    bt = B * T
    parallel = kind == "phi"
    norms = 1 if parallel else 2
    per_norm = 8 + 4 + 2 * C if kind in ("gemma", "phi") else C
    hidden = bt * h * (norms * per_norm + 3 * C)
    qkv = bt * 2 * (q + 2 * kv) * C
    scores = B * nh * T * T * C
    attn_out = 2 * bt * q * C
    mlp = (2 if parallel else 4 if kind == "gemma" else 3) * bt * inter * C
    if parallel:
        outs = [q, kv, kv, h, inter, h]
    else:
        outs = [q, kv, kv, h, inter, inter, h]
    lora = sum(bt * o * C for o in outs)
    return hidden + qkv + scores + attn_out + mlp + lora, bt * h * C


def main(ours_path, plan_path):
    ours = {}
    for line in open(ours_path):
        r = json.loads(line)
        if r.get("metric") == "qlora_train":
            ours[r["model"]] = r
    plans = {}
    for line in open(plan_path):
        r = json.loads(line)
        plans[r["model"]] = r["training"]
    g = 1 << 30
    for m, r in ours.items():
        p = plans.get(m)
        cfg = json.load(open(CONFIGS[m]))
        layer, inp = layer_bytes(cfg)
        live = r["peak_training_phase"]["max_allocated_GiB"] * g
        reserved = r["peak_training_phase"]["max_reserved_GiB"] * g
        offload = r.get("offload_checkpoints", False)
        n = cfg["num_hidden_layers"]
        inputs = (min(n, 2) if offload else n) * inp
        outside = 2 * inp
        rest = (p["base_weights_bytes"] + p["lora_weights_bytes"] + p["lora_grads_bytes"] + p["optimizer_bytes"]
                + p["logits_bytes"] + p["dequant_scratch_bytes"] + inputs + outside)
        graphs = (live - rest) / layer
        slack = (reserved - live) / live
        print(json.dumps({"model": m, "layer_bytes": layer, "live_GiB": round(live / g, 3), "reserved_GiB": round(reserved / g, 3),
                          "rest_GiB": round(rest / g, 3), "layer_graphs": round(graphs, 3), "pool_slack": round(slack, 3),
                          "measured_process_GiB": round(r["context_and_cublas_GiB"] + reserved / g, 3),
                          "planned_GiB": round(p["total_bytes"] / g, 3)}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
