#!/usr/bin/env python3
"""transformers' side of bench/engine_cpu/run.sh: the same measurements as
crates/qlora-engine/examples/cpu_bench.rs on the same model folder, on CPU (eager attention).
Usage: transformers_bench.py MODEL_DIR [f32,bf16]; one JSON line per case."""
import json, statistics, sys, time
import torch
from transformers import AutoModelForCausalLM

torch.set_num_threads(int(__import__("os").environ.get("THREADS", torch.get_num_threads())))
model_dir = sys.argv[1]
cases = (sys.argv[2] if len(sys.argv) > 2 else "f32,bf16").split(",")

def prefill(model, n=128):
    ids = torch.tensor([[100 + i * 7 % 5000 for i in range(n)]])
    model(ids)
    t = []
    for _ in range(3):
        s = time.perf_counter(); model(ids); t.append(n / (time.perf_counter() - s))
    return statistics.median(t)

def decode(model, prompt=16, new=64):
    t = []
    for _ in range(3):
        ids = torch.tensor([[200 + i * 13 % 3000 for i in range(prompt)]])
        out = model(ids, use_cache=True)
        past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        s = time.perf_counter()
        for _ in range(new):
            out = model(nxt, past_key_values=past, use_cache=True)
            past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        t.append(new / (time.perf_counter() - s))
    return statistics.median(t)

with torch.inference_mode():
    for case in cases:
        dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[case]
        s = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="eager").eval()
        load = time.perf_counter() - s
        print(json.dumps({"impl": "transformers", "case": case, "load_s": load, "prefill_tok_s": prefill(model),
                          "decode_tok_s": decode(model)}), flush=True)
