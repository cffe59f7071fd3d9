#!/usr/bin/env python3
"""The AdamW numbers in src/train/optim.rs's test: two torch.optim.AdamW steps in float64.

    /work/refvenv/bin/python scripts/reference/adamw_reference.py
"""
import torch

p = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
opt = torch.optim.AdamW([p], lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
for g in ([0.5, 0.25], [-1.0, 0.5]):
    p.grad = torch.tensor(g, dtype=torch.float64)
    opt.step()
    print([f"{x:.13f}" for x in p.detach().tolist()])
