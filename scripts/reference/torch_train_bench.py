#!/usr/bin/env python3
"""PyTorch reference for `cargo bench --bench train`: full fine-tuning of a SmolLM2-135M-shaped
Llama (random weights; speed does not depend on them) in float32 on the CPU with transformers'
LlamaForCausalLM and torch.optim.AdamW, SFT cross-entropy on micro-batches of B x T tokens.

    /work/refvenv/bin/python scripts/reference/torch_train_bench.py [--batch 4] [--len 256] [--steps 4] [--lora]

Prints tokens/s per step (after one warm-up step) and the peak RSS of the process.
"""
import argparse, resource, time
import torch
from transformers import LlamaConfig, LlamaForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--batch", type=int, default=4)
p.add_argument("--len", type=int, default=256)
p.add_argument("--steps", type=int, default=4)
p.add_argument("--lora", action="store_true", help="LoRA r=16 on every projection (needs peft)")
a = p.parse_args()

cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                  num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                  rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True,
                  )
torch.manual_seed(0)
model = LlamaForCausalLM(cfg).float()
if a.lora:
    from peft import LoraConfig, get_peft_model
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
model.train()
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)
ids = torch.randint(0, cfg.vocab_size, (a.batch, a.len))
labels = ids.clone()
labels[:, : a.len // 4] = -100  # prompt tokens masked, like SFT on completions
times = []
cpu0 = 0.0
for step in range(a.steps + 1):
    if step == 1:
        cpu0 = time.process_time()
    t0 = time.time()
    out = model(input_ids=ids, labels=labels)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    dt = time.time() - t0
    if step > 0:
        times.append(dt)
    print(f"step {step}: loss {out.loss.item():.4f} {a.batch * a.len / dt:.1f} tokens/s", flush=True)
tps = a.batch * a.len * len(times) / sum(times)
cpu = time.process_time() - cpu0
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
load = " ".join(open("/proc/loadavg").read().split()[:3])
print(f"torch {torch.__version__} threads {torch.get_num_threads()}: {tps:.1f} tokens/s, "
      f"{a.batch * a.len * len(times) / cpu:.1f} tokens per CPU-second ({cpu / len(times):.1f} CPU-s/step), "
      f"peak RSS {rss:.2f} GB, load {load}")
