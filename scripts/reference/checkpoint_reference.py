#!/usr/bin/env python3
"""Checks that transformers loads a checkpoint `east train` wrote from the SmolLM2 GGUF.

    east train --model models/SmolLM2-135M-Instruct.Q4_1.gguf --data train.jsonl --max-steps 1 \
        --batch-size 3 --micro-batch-size 3 --out /tmp/smol_ckpt     # step 1 runs at lr 0 (warmup)
    /work/refvenv/bin/python scripts/reference/checkpoint_reference.py /tmp/smol_ckpt

With the weights unchanged, transformers' logits on east's checkpoint must equal its logits on
the GGUF (its own dequantiser and Q/K un-permutation), and the tokenizer east wrote from the
GGUF metadata must split digits like the official SmolLM2 tokenizer.
"""
import sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ckpt = sys.argv[1]
gguf_dir, gguf_file = "models", "SmolLM2-135M-Instruct.Q4_1.gguf"
tok = AutoTokenizer.from_pretrained(ckpt)
text = tok.apply_chat_template([{"role": "system", "content": "Please reason step by step, and put your final answer within \\boxed{}."},
                                {"role": "user", "content": "What is 12 + 35?"}], tokenize=False, add_generation_prompt=True)
ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
digits = tok("12345", add_special_tokens=False).input_ids
mine = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
ref = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32).eval()
with torch.no_grad():
    a, b = mine(ids).logits, ref(ids).logits
print(f"prompt tokens {ids.shape[1]}, '12345' -> {digits}")
print(f"max |logit(east checkpoint) - logit(GGUF)| = {(a - b).abs().max().item():.3g}, argmax equal: {bool((a.argmax(-1) == b.argmax(-1)).all())}")
