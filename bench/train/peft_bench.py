#!/usr/bin/env python3
"""Reference CPU training throughput for a qlora train config: transformers + peft (LoRA) on
a bitsandbytes NF4 base, run the way `qlora train` runs it, so `bench/train/run.sh` can
print our tokens/s next to this one and the ratio.

Mirrors the config: the same model folder, the same JSONL chat data rendered with the
model's own chat template (loss on assistant replies and their end-of-turn token, found the
way our trainer finds them: render without the reply + generation prompt, then with it),
truncated at max_len, one row per sample (no packing), rows shuffled per epoch with our
SplitMix64 permutation (seed + epoch) so every micro-batch holds the same samples as ours,
right padding to the longest row of the micro-batch, the same LoRA rank/alpha/dropout and
target modules, AdamW (lr, weight decay), warm-up then constant LR, gradient accumulation,
gradient clipping, f32 compute.

Tokens/s is counted as ours counts it: real (non-padding) tokens of the optimizer step's
micro-batches divided by that step's wall time (forward + backward + clip + AdamW); the
summary is the median over steps 3.. (the first two are warm-up).

With `--base dense` (or when bitsandbytes' 4-bit CPU path fails, which is reported) the
base stays dense f32 instead of NF4.

  python3 bench/train/peft_bench.py --config configs/demo_smollm2.yaml [--json OUT]
"""
import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

MASK = (1 << 64) - 1


def splitmix_permutation(n, seed):
    """`qlora_train::data::batch::permutation`: Fisher-Yates driven by SplitMix64."""
    state, v = seed & MASK, list(range(n))
    for i in range(n - 1, 0, -1):
        state = (state + 0x9E3779B97F4A7C15) & MASK
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        z ^= z >> 31
        j = z % (i + 1)
        v[i], v[j] = v[j], v[i]
    return v


def load_config(path):
    path = Path(path)
    cfg = yaml.safe_load(path.read_text())
    base = path.parent
    cfg["model"] = str((base / cfg["model"]).resolve())
    cfg["data"]["files"] = [str((base / f).resolve()) for f in cfg["data"]["files"]]
    if cfg["data"].get("format") != "messages" or cfg["data"].get("packing"):
        sys.exit(f"{path}: this reference bench mirrors unpacked `messages` data only")
    if cfg["data"].get("validation_split", 0) not in (0, 0.0):
        sys.exit(f"{path}: set validation_split: 0 (the reference does not split)")
    return cfg


def tokenize(tok, msgs, loss_on, max_len):
    """One sample as (ids, targets), the way `data/tokenize.rs` renders and masks it."""
    full = tok.apply_chat_template(msgs, tokenize=False)
    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    spans = []
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        before = tok.apply_chat_template(msgs[:i], tokenize=False, add_generation_prompt=True)
        upto = tok.apply_chat_template(msgs[: i + 1], tokenize=False)
        assert full.startswith(upto) and upto.startswith(before), "template not prefix-stable"
        spans.append((len(before), len(upto)))
    ids = enc["input_ids"]
    if loss_on == "all":
        targets = [True] * len(ids)
    else:
        targets = [e > s and any(a <= s < b for a, b in spans) for s, e in enc["offset_mapping"]]
    return ids[:max_len], targets[:max_len]


def collate(rows, pad):
    """Right padding to the longest row; labels are the next token where it is trained."""
    seq = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), seq), pad, dtype=torch.long)
    labels = torch.full((len(rows), seq), -100, dtype=torch.long)
    attn = torch.zeros((len(rows), seq), dtype=torch.long)
    for r, (row_ids, targets) in enumerate(rows):
        n = len(row_ids)
        ids[r, :n] = torch.tensor(row_ids)
        attn[r, :n] = 1
        for t in range(n):
            if targets[t]:
                labels[r, t] = row_ids[t]  # HF shifts labels inside the loss
    return ids, attn, labels, sum(len(i) for i, _ in rows)


def load_model(cfg, base):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if base == "nf4":
        q = cfg.get("quant", {})
        bnb = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=bool(q.get("double_quant", False)),
            bnb_4bit_compute_dtype=torch.float32,
        )
        return AutoModelForCausalLM.from_pretrained(
            cfg["model"], quantization_config=bnb, dtype=torch.float32, device_map="cpu"
        )
    return AutoModelForCausalLM.from_pretrained(cfg["model"], dtype=torch.float32)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--base", choices=["nf4", "dense"], default="nf4")
    ap.add_argument("--json", help="write the summary here as JSON")
    ap.add_argument("--max-steps", type=int, help="override max_steps (smoke runs)")
    args = ap.parse_args()
    cfg = load_config(args.config)
    if args.max_steps:
        cfg["max_steps"] = args.max_steps
    if cfg.get("compute_dtype", "f32") != "f32":
        print(f"note: config asks for {cfg['compute_dtype']}; the CPU reference computes in f32")
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    torch.manual_seed(cfg.get("seed", 0))
    tok = AutoTokenizer.from_pretrained(cfg["model"])
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    d = cfg["data"]
    samples = [json.loads(l)["messages"] for f in d["files"] for l in open(f) if l.strip()]
    rows = [tokenize(tok, m, d.get("loss_on", "assistant"), d["max_len"]) for m in samples]
    lens = [len(i) for i, _ in rows]
    print(f"reference: {len(rows)} samples, {min(lens)}-{max(lens)} tokens, torch threads {torch.get_num_threads()}")

    base, base_note = args.base, ""
    t0 = time.perf_counter()
    try:
        model = load_model(cfg, base)
    except Exception as e:  # noqa: BLE001 - reported, then the dense fallback is measured
        if base != "nf4":
            raise
        base_note = f"bitsandbytes NF4 on CPU failed ({type(e).__name__}: {e}); measured the dense f32 base"
        print("reference:", base_note)
        base = "dense"
        model = load_model(cfg, base)
    lc = cfg["lora"]
    model = get_peft_model(
        model,
        LoraConfig(
            r=lc["rank"],
            lora_alpha=lc["alpha"],
            lora_dropout=lc.get("dropout", 0.0),
            target_modules=lc["target_modules"],
            use_rslora=bool(lc.get("rslora", False)),
            task_type="CAUSAL_LM",
        ),
    )
    model.train()
    load_s = time.perf_counter() - t0
    n4 = 0
    if base == "nf4":
        import bitsandbytes as bnb

        n4 = sum(1 for m in model.modules() if type(m) is bnb.nn.Linear4bit)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"reference: base {base} ({n4} Linear4bit layers), {trainable} trainable parameters, load {load_s:.1f}s")

    o, mb, accum = cfg["optimizer"], cfg["micro_batch"], cfg.get("grad_accum", 1)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=o["lr"], weight_decay=o.get("weight_decay", 0.0))
    warmup = cfg.get("schedule", {}).get("warmup_steps", 0)
    if cfg.get("schedule", {}).get("kind", "constant") != "constant":
        print("note: the reference uses warm-up then constant LR (speed does not depend on it)")
    per_epoch = -(-len(rows) // mb)
    k, steps = 0, []
    for step in range(cfg["max_steps"]):
        for g in opt.param_groups:
            g["lr"] = o["lr"] * min(1.0, (step + 1) / warmup) if warmup else o["lr"]
        batches = []
        for _ in range(accum):
            epoch, first = divmod(k, per_epoch)
            order = splitmix_permutation(len(rows), cfg.get("seed", 0) + epoch)
            batches.append(collate([rows[i] for i in order[first * mb : first * mb + mb]], pad))
            k += 1
        n_targets = sum(int((lab[:, 1:] != -100).sum()) for _, _, lab, _ in batches)
        t = time.perf_counter()
        loss_total = 0.0
        for ids, attn, labels, _ in batches:
            out = model(input_ids=ids, attention_mask=attn)
            logits = out.logits[:, :-1].float()
            target = labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="sum"
            ) / max(n_targets, 1)
            loss.backward()
            loss_total += loss.item()
        gn = torch.nn.utils.clip_grad_norm_(params, cfg["grad_clip"]) if cfg.get("grad_clip") else None
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t
        tokens = sum(b[3] for b in batches)
        steps.append({"step": step + 1, "loss": loss_total, "tokens": tokens, "secs": dt, "tokens_per_s": tokens / dt})
        gn_s = f"{float(gn):.3f}" if gn is not None else "-"
        print(f"reference step {step + 1}: loss {loss_total:.4f}, grad norm {gn_s}, {tokens} tokens in {dt:.2f}s")
    rates = [s["tokens_per_s"] for s in steps[2:]] or [s["tokens_per_s"] for s in steps]
    summary = {
        "base": base,
        "base_note": base_note,
        "median_tokens_per_s": statistics.median(rates),
        "final_loss": steps[-1]["loss"],
        "first_loss": steps[0]["loss"],
        "load_s": load_s,
        "torch_threads": torch.get_num_threads(),
        "versions": {
            "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
            "peft": __import__("peft").__version__,
            "bitsandbytes": _version("bitsandbytes"),
        },
        "steps": steps,
    }
    print(f"reference training tokens/s (steps 3..): median {summary['median_tokens_per_s']:.1f}, "
          f"final loss {summary['final_loss']:.4f} (from {summary['first_loss']:.4f})")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))


def _version(mod):
    try:
        return __import__(mod).__version__
    except Exception:  # noqa: BLE001
        return None


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
