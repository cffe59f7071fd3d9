#!/usr/bin/env python3
"""Reference logits for tests/model.rs::tiny_logits_match_transformers
(tests/fixtures/tiny_reference.json).

The tiny folders are written by east itself (seeded weights, see src/model/testing.rs):

    CARGO_TARGET_DIR=/work/main/target cargo test --test model dump_tiny -- --ignored
    /tmp/refvenv/bin/python scripts/reference/tiny_reference.py /tmp/east-tiny > tests/fixtures/tiny_reference.json

and run here through transformers' LlamaForCausalLM in float32, so the architecture (GQA,
RoPE layout and scaling, tied/untied head, RMS norm) is checked against an independent
implementation. Also records transformers' llama3 inverse frequencies for Llama-3.1's settings.
"""
import json, sys
import torch, transformers
from transformers import AutoModelForCausalLM, LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

root = sys.argv[1] if len(sys.argv) > 1 else "/tmp/east-tiny"
CASES = [("default", 101), ("llama3_rope_tied_mha", 102), ("gqa4_linear_rope", 103)]
# ids: ChatML-ish prompt with digits and merges, then arbitrary tokens
IDS = [1, 3 + 115, 3 + 121, 3 + 115, 2, 1, 3 + 117, 3 + 115, 2, 5, 77, 200, 33, 34, 35,
       260, 261, 262, 100, 101, 0, 2, 150, 151]

out = {"note": "made by scripts/reference/tiny_reference.py",
       "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
       "cases": []}
for name, seed in CASES:
    model = AutoModelForCausalLM.from_pretrained(f"{root}/{name}", dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([IDS])).logits[0]
    out["cases"].append({"name": name, "seed": seed, "ids": IDS,
                         "logits": [[round(x, 7) for x in row] for row in logits.tolist()]})

cfg = LlamaConfig(hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
                  max_position_embeddings=131072, rope_theta=500000.0,
                  rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
inv, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
out["llama31_inv_freq"] = inv.tolist()
json.dump(out, sys.stdout)
