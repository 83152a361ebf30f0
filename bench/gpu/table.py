#!/usr/bin/env python3
"""Side-by-side table of bench/gpu/run.sh: the reference stack (peer_bench.py) vs ours.

usage: table.py PEER.jsonl OURS.jsonl [GPU.txt]   (missing files or rows print as '-')
"""
import json
import os
import sys


def load(path):
    rows = []
    if path and os.path.exists(path):
        with open(path) as fh:
            for line in fh:
                line = line.strip()
                if line.startswith("{"):
                    rows.append(json.loads(line))
    return rows


def find(rows, metric, **kw):
    for r in rows:
        if r.get("metric") == metric and all(r.get(k) == v for k, v in kw.items()):
            return r
    return None


def fmt(v, digits=1):
    if v is None:
        return "-"
    return f"{v:,.{digits}f}"


def main():
    peer, ours = load(sys.argv[1]), load(sys.argv[2])
    gpu = open(sys.argv[3]).read().strip() if len(sys.argv) > 3 and os.path.exists(sys.argv[3]) else "?"
    bw = find(peer, "d2d_copy_bandwidth")
    bw = bw["value"] if bw else None
    print(f"GPU: {gpu}; device copy bandwidth (peer_bench, read+write): {fmt(bw)} GB/s\n")
    print("| model | metric | reference | ours | ours / reference | target |")
    print("|---|---|---|---|---|---|")
    for model in ("tinyllama", "mistral7b"):
        lines = []
        for quant in ("nf4", "bf16"):
            for b in (1, 8):
                p = find(peer, "decode_tok_s", model=model, quant=quant, batch=b)
                o = find(ours, "decode_tok_s", model=model, quant=quant, batch=b)
                target = "≥ 5×" if (quant, b) == ("nf4", 1) else ""
                lines.append((f"decode b{b} {quant} (tok/s)", p and p["value"], o and o["value"], target))
        for quant in ("nf4", "bf16"):
            p = find(peer, "prefill_tok_s", model=model, quant=quant)
            o = find(ours, "prefill_tok_s", model=model, quant=quant)
            lines.append((f"prefill 512 {quant} (tok/s)", p and p["value"], o and o["value"], "≥ 2× ref NF4" if quant == "nf4" else ""))
        for quant in ("nf4", "bf16"):
            p = find(peer, "mem_after_load", model=model, quant=quant)
            o = find(ours, "mem_after_load", model=model, quant=quant)
            # torch's memory_allocated counts tensor bytes; ours: the weights' bytes, and what the
            # driver reports in use (which includes freed memory the CUDA pool still holds)
            tensors = o and o.get("weight_bytes") and o["weight_bytes"] / 2 ** 30
            lines.append((f"memory after load {quant}, tensors (GiB)", p and p["allocated_GiB"], tensors, ""))
            lines.append((f"memory after load {quant}, driver used (GiB)", p and p["reserved_GiB"], o and o["allocated_GiB"], ""))
        for label, p, o, target in lines:
            ratio = f"{o / p:.2f}×" if p and o else "-"
            if "driver used" in label:
                label += " [ref: torch reserved]"
            digits = 3 if "GiB" in label else 1
            print(f"| {model} | {label} | {fmt(p, digits)} | {fmt(o, digits)} | {ratio} | {target} |")
        # fraction of the bandwidth bound, NF4 batch 1 (weight bytes per token / copy bandwidth)
        for side, rows in (("reference", peer), ("ours", ours)):
            r = find(rows, "decode_tok_s", model=model, quant="nf4", batch=1)
            if r and bw and r.get("weight_bytes_per_token"):
                bound = bw * 1e9 / r["weight_bytes_per_token"]
                goal = "≥ 50%" if model == "mistral7b" else "≥ 25%"
                print(f"| {model} | NF4 b1 share of bound, {side} | bound {fmt(bound)} tok/s | "
                      f"{100 * r['value'] / bound:.2f}% | | {goal if side == 'ours' else ''} |")


if __name__ == "__main__":
    main()
