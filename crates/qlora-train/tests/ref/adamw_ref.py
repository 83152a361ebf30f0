"""Reference numbers for qlora-train's AdamW and LR schedules, from torch and transformers.

Run: python3 crates/qlora-train/tests/ref/adamw_ref.py
and paste the printed constants into src/optim.rs and src/schedule.rs tests.
"""
import math

import torch
from transformers import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
opt = torch.optim.AdamW([p], lr=0.1, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
for s in range(3):
    opt.zero_grad()
    p.grad = (p.detach() * 2.0 + s).clone()
    opt.step()
print("TORCH_ADAMW_3_STEPS =", [round(x, 7) for x in p.detach().tolist()])


def lrs(make, total=10, warmup=3):
    q = torch.nn.Parameter(torch.zeros(1))
    o = torch.optim.SGD([q], lr=1.0)
    sch = make(o, warmup, total)
    out = []
    for _ in range(total):
        out.append(o.param_groups[0]["lr"])
        o.step()
        sch.step()
    return [round(x, 7) for x in out]


print("LINEAR =", lrs(lambda o, w, t: get_linear_schedule_with_warmup(o, w, t)))
print("COSINE =", lrs(lambda o, w, t: get_cosine_schedule_with_warmup(o, w, t)))
print("CONSTANT =", lrs(lambda o, w, t: get_constant_schedule_with_warmup(o, w)))
