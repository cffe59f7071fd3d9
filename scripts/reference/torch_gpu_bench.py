#!/usr/bin/env python3
"""PyTorch side of scripts/gpu-check.sh: the same workloads as `east-gpu-check sample-bench` and
`train-bench`, with transformers' LlamaForCausalLM on the shape in MODEL/config.json (written by
`east-gpu-check make-model`), random weights initialised on the device (speed does not depend on
them), bf16. Prints one JSON line.

    python3 scripts/reference/torch_gpu_bench.py --model DIR sample [--n 128 --tokens 256 --prompt-len 128]
    python3 scripts/reference/torch_gpu_bench.py --model DIR train [--steps 10 --batch 16 --micro-batch 4 --len 512] [--lora]

sample: `generate` with do_sample, temperature 0.7, top_p 1, top_k off, num_return_sequences n,
min_new_tokens = max_new_tokens (EOS never ends a sample), after a short warm-up.
train: SFT cross-entropy (the first quarter of each row masked as prompt), gradient accumulation
over micro-batches, clipping at 1, AdamW (fused) — full fine-tuning as transformers' Trainer with
bf16=True does it (f32 weights, bf16 autocast), LoRA (PEFT, r/alpha as given, all seven
projections, dropout 0) on bf16 base weights with f32 adapters under bf16 autocast. tokens/s
counts every token of the steps after the first.
"""
import argparse, json, os, resource, time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--model", required=True, help="folder with config.json")
p.add_argument("--device", default="cuda")
sub = p.add_subparsers(dest="what", required=True)
s = sub.add_parser("sample")
s.add_argument("--n", type=int, default=128)
s.add_argument("--tokens", type=int, default=256)
s.add_argument("--prompt-len", type=int, default=128)
s.add_argument("--temperature", type=float, default=0.7)
t = sub.add_parser("train")
t.add_argument("--steps", type=int, default=10)
t.add_argument("--batch", type=int, default=16)
t.add_argument("--micro-batch", type=int, default=4)
t.add_argument("--len", type=int, default=512)
t.add_argument("--lr", type=float, default=1e-5)
t.add_argument("--lora", action="store_true")
t.add_argument("--lora-rank", type=int, default=16)
t.add_argument("--lora-alpha", type=float, default=16)
a = p.parse_args()

dev = torch.device(a.device)
cuda = dev.type == "cuda"


def sync():
    if cuda:
        torch.cuda.synchronize()


cfg = LlamaConfig.from_pretrained(a.model)
torch.manual_seed(0)
t0 = time.time()
# bf16 weights for sampling and the LoRA base, f32 for full fine-tuning; all f32 in the CPU dry run
master = torch.float32 if (a.what == "train" and not a.lora) or not cuda else torch.bfloat16
with torch.device(dev):
    model = LlamaForCausalLM._from_config(cfg, dtype=master)
sync()
init_s = time.time() - t0
g = torch.Generator().manual_seed(1234)
out = {
    "check": f"torch-{a.what}" + ("-lora" if a.what == "train" and a.lora else ""),
    "device": str(dev),
    "gpu": torch.cuda.get_device_name(dev) if cuda else None,
    "torch": torch.__version__,
    "transformers": __import__("transformers").__version__,
    "attn_implementation": getattr(model.config, "_attn_implementation", None),
    "params": sum(p.numel() for p in model.parameters()),
    "init_s": init_s,
}

if a.what == "sample":
    model.eval()
    ids = torch.randint(259, cfg.vocab_size, (1, a.prompt_len), generator=g).to(dev)

    def gen(n, tokens):
        with torch.no_grad():
            return model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                temperature=a.temperature, top_p=1.0, top_k=0, num_return_sequences=n,
                max_new_tokens=tokens, min_new_tokens=tokens, pad_token_id=0,
            )

    sync()
    t0 = time.time()
    gen(min(a.n, 8), 4)
    sync()
    warm = time.time() - t0
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.time()
    res = gen(a.n, a.tokens)
    sync()
    secs = time.time() - t0
    new = res.shape[1] - a.prompt_len
    out.update(n=a.n, new_tokens=a.tokens, prompt_tokens=a.prompt_len, generated_tokens=a.n * new,
               seconds=secs, tokens_per_s=a.n * new / secs, warmup_s=warm, dtype=str(master).removeprefix("torch."))
    if new != a.tokens:
        out["error"] = f"generated {new} tokens per sample, not {a.tokens}"
else:
    if a.lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(
            r=a.lora_rank, lora_alpha=a.lora_alpha, lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
        for n_, p_ in model.named_parameters():
            if p_.requires_grad:
                p_.data = p_.data.float()  # f32 adapters (east: f32 masters), bf16 base
    model.train()
    params = [p_ for p_ in model.parameters() if p_.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0, fused=cuda)
    ids = torch.randint(259, cfg.vocab_size, (a.batch, a.len), generator=g).to(dev)
    labels = ids.clone()
    labels[:, : a.len // 4] = -100
    accum = max(1, a.batch // a.micro_batch)
    times, losses = [], []
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    for step in range(a.steps):
        sync()
        t0 = time.time()
        total = 0.0
        for m in range(0, a.batch, a.micro_batch):
            # bf16 autocast as on the GPU; the CPU dry run computes in f32 (bf16 backward on a
            # CPU without bf16 instructions takes minutes for even the mini shape)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
                loss = model(input_ids=ids[m:m + a.micro_batch], labels=labels[m:m + a.micro_batch]).loss / accum
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        times.append(time.time() - t0)
        losses.append(total)
    later = times[1:] or times
    out.update(steps=a.steps, batch=a.batch, micro_batch=a.micro_batch, len=a.len,
               lora_rank=a.lora_rank if a.lora else None, tokens_per_step=a.batch * a.len,
               tokens_per_s=a.batch * a.len * len(later) / sum(later), first_step_s=times[0],
               median_step_s=sorted(later)[len(later) // 2], losses=losses,
               dtype=("bf16 base, f32 adapters" if a.lora else "f32 weights, bf16 autocast") if cuda else
               "f32")

if cuda:
    out["peak_allocated_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
    out["peak_reserved_mib"] = torch.cuda.max_memory_reserved(dev) / 2**20
out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out), flush=True)
