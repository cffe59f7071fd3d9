#!/usr/bin/env python3
"""PEFT/transformers compatibility of what `east train` writes (fixture for tests/train.rs).

    cargo test --test train dump_peft -- --ignored          # writes /tmp/east-peft
    /work/refvenv/bin/pip install torch transformers peft   # (CPU) once
    /work/refvenv/bin/python scripts/reference/peft_reference.py /tmp/east-peft

Checks, with transformers' LlamaForCausalLM and PEFT's PeftModel:
  * the LoRA adapter east trained (adapter_config.json + adapter_model.safetensors) loads with
    PeftModel.from_pretrained on the base folder and gives east's logits (base + adapter);
  * the full fine-tuned checkpoint east wrote loads with AutoModelForCausalLM and
    AutoTokenizer and gives east's logits.
Writes tests/fixtures/peft_reference.json (PEFT's logits, the base logits, the measured
differences, versions) and copies the adapter into tests/fixtures/peft_tiny/.
"""
import json, os, shutil, sys
import torch, transformers, peft
from transformers import AutoModelForCausalLM, AutoTokenizer
from peft import PeftModel

root = sys.argv[1] if len(sys.argv) > 1 else "/tmp/east-peft"
here = os.path.dirname(os.path.abspath(__file__))
fixtures = os.path.join(here, "..", "..", "tests", "fixtures")
east = json.load(open(os.path.join(root, "east_logits.json")))
ids = torch.tensor([east["ids"]])

base = AutoModelForCausalLM.from_pretrained(os.path.join(root, "base"), torch_dtype=torch.float32).eval()
with torch.no_grad():
    base_logits = base(ids).logits[0]
model = PeftModel.from_pretrained(base, os.path.join(root, "adapter")).eval()
with torch.no_grad():
    peft_logits = model(ids).logits[0]
d_adapter = (peft_logits - torch.tensor(east["east_adapter_logits"])).abs().max().item()

full = AutoModelForCausalLM.from_pretrained(os.path.join(root, "full"), torch_dtype=torch.float32).eval()
tok = AutoTokenizer.from_pretrained(os.path.join(root, "full"))
with torch.no_grad():
    full_logits = full(ids).logits[0]
d_full = (full_logits - torch.tensor(east["east_full_logits"])).abs().max().item()
chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)

print(f"PEFT {peft.__version__}: max |logit(east base+adapter) - logit(PEFT)| = {d_adapter:.3g}")
print(f"transformers {transformers.__version__}: max |logit(east full) - logit(transformers)| = {d_full:.3g}")
print(f"tokenizer from the checkpoint renders: {chat!r}")
assert d_adapter < 1e-4 and d_full < 1e-4

out = {
    "note": "made by scripts/reference/peft_reference.py from the files of `cargo test --test train dump_peft -- --ignored`",
    "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
    "ids": east["ids"],
    "peft_logits": peft_logits.tolist(),
    "base_logits": base_logits.tolist(),
    "max_abs_diff_adapter": d_adapter,
    "max_abs_diff_full_checkpoint": d_full,
    "chat_template_render": chat,
}
json.dump(out, open(os.path.join(fixtures, "peft_reference.json"), "w"), indent=1)
dst = os.path.join(fixtures, "peft_tiny")
os.makedirs(dst, exist_ok=True)
for f in ("adapter_config.json", "adapter_model.safetensors"):
    shutil.copy(os.path.join(root, "adapter", f), os.path.join(dst, f))
print("wrote", os.path.join(fixtures, "peft_reference.json"))
