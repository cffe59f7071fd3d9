#!/usr/bin/env python3
"""transformers' `generate` on the workload of `cargo bench --bench sample`, for a side-by-side
tokens/s ratio: SmolLM2-135M-Instruct from the bundled Q4_1 GGUF (transformers' GGUF loader,
dequantized to f32, as east loads it), on the CPU with as many torch threads as the bench's
rayon threads, the same prompt token ids, n samples of up to TOKENS new tokens at temperature
0.7 (top_p 1, top_k off), EOS ending a sample. Prints one JSON line.

    EAST_BENCH_PROMPT_IDS=/tmp/prompt.json cargo bench --bench sample   # writes the prompt ids
    python3 scripts/reference/generate_bench.py --prompt-ids /tmp/prompt.json [--n 128 --tokens 256]

Tokens are counted as east counts them: every generated token of a sample up to and including
its EOS (generate keeps stepping finished rows along, padding them, until the longest is done).
"""
import argparse, json, os, time

import torch
import transformers
from transformers import AutoModelForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--prompt-ids", required=True, help="JSON list of prompt token ids")
p.add_argument("--model-dir", default="models")
p.add_argument("--gguf", default="SmolLM2-135M-Instruct.Q4_1.gguf")
p.add_argument("--n", type=int, default=128)
p.add_argument("--tokens", type=int, default=256)
p.add_argument("--temperature", type=float, default=0.7)
p.add_argument("--threads", type=int, default=int(os.environ.get("RAYON_NUM_THREADS", os.cpu_count())))
a = p.parse_args()

torch.set_num_threads(a.threads)
torch.manual_seed(42)
model = AutoModelForCausalLM.from_pretrained(a.model_dir, gguf_file=a.gguf, dtype=torch.float32).eval()
prompt = json.load(open(a.prompt_ids))
ids = torch.tensor([prompt])
eos = 2  # <|im_end|>, SmolLM2-Instruct's EOS (east's eos_ids)


def gen(n, tokens):
    with torch.no_grad():
        return model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
            temperature=a.temperature, top_p=1.0, top_k=0, num_return_sequences=n,
            max_new_tokens=tokens, eos_token_id=eos, pad_token_id=0,
        )


gen(min(a.n, 8), 4)  # warm-up
t0 = time.time()
res = gen(a.n, a.tokens)
secs = time.time() - t0
new = res[:, len(prompt):]
generated = 0
stopped = 0
for row in new.tolist():
    if eos in row:
        generated += row.index(eos) + 1
        stopped += 1
    else:
        generated += len(row)
print(json.dumps({
    "bench": "transformers-generate", "torch": torch.__version__,
    "transformers": transformers.__version__, "threads": a.threads, "n": a.n,
    "max_new_tokens": a.tokens, "temperature": a.temperature, "prompt_tokens": len(prompt),
    "generated_tokens": generated, "stopped_on_eos": stopped, "seconds": round(secs, 2),
    "tokens_per_s": round(generated / secs, 1),
}), flush=True)
