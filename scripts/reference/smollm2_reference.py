#!/usr/bin/env python3
"""Reference values for tests/model_smollm2.rs (SmolLM2-135M-Instruct Q4_1 GGUF).

Produced with transformers' own GGUF loader (dequantized to float32), independent of east:

    python3 -m venv /tmp/refvenv && /tmp/refvenv/bin/pip install torch transformers gguf accelerate
    /tmp/refvenv/bin/python scripts/reference/smollm2_reference.py > tests/fixtures/smollm2_reference.json

Versions used for the committed fixture are written into it ("versions").

Tokenizer: transformers builds a GGUF "gpt2" tokenizer as GPT-2 ByteLevel without SmolLM2's
single-digit split (llama.cpp's `smollm` pre-tokenizer / the official tokenizer.json:
Digits(individual_digits) + ByteLevel). We therefore also build the official layout with the
`tokenizers` library from the same vocabulary and merges, and record both; the test compares
east against the official layout and the fixture notes any string where transformers' GGUF
tokenizer differs.
"""
import json, sys
import torch, transformers, tokenizers, gguf
from transformers import AutoTokenizer, AutoModelForCausalLM
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, AddedToken
from gguf import GGUFReader

DIR = "models"
FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."

STRINGS = [
    "12345",
    "x = 12 + 345",
    "Hello world",
    "  leading",
    "trailing  ",
    "a\n\nb\tc",
    "café ✓ 你好",
    "\\frac{1}{2}",
    "$\\sqrt{2}^{10}$ = 32",
    "<|im_start|>user\nhi<|im_end|>",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "I'm 3.14 sure it's 1,000,000!",
    "DON'T stop: it's 123456789 Ünïcödé",
    "  \n\n  indented\r\nline   end",
]
QUESTION = "What is 12 + 35?"


def official_tokenizer():
    r = GGUFReader(f"{DIR}/{FILE}")
    toks = r.fields["tokenizer.ggml.tokens"].contents()
    merges = r.fields["tokenizer.ggml.merges"].contents()
    types = r.fields["tokenizer.ggml.token_type"].contents()
    vocab = {t: i for i, t in enumerate(toks)}
    bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges])
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(toks, types) if ty == 3])
    return tok


LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def llama_bpe_tokenizer():
    """Llama 3's pre-tokenizer (Split regex + ByteLevel without regex, ignore_merges) on the
    SmolLM2 vocabulary: checks east's `llama-bpe` GGUF path (regex engine, options)."""
    r = GGUFReader(f"{DIR}/{FILE}")
    toks = r.fields["tokenizer.ggml.tokens"].contents()
    merges = r.fields["tokenizer.ggml.merges"].contents()
    vocab = {t: i for i, t in enumerate(toks)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges], ignore_merges=True))
    from tokenizers import Regex
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    types = r.fields["tokenizer.ggml.token_type"].contents()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(toks, types) if ty == 3])
    return tok


def main():
    torch.manual_seed(0)
    tf_tok = AutoTokenizer.from_pretrained(DIR, gguf_file=FILE)
    off = official_tokenizer()
    llama_bpe = llama_bpe_tokenizer()
    tok_cases = []
    for s in STRINGS:
        a = off.encode(s, add_special_tokens=False).ids
        b = tf_tok.encode(s, add_special_tokens=False)
        c = llama_bpe.encode(s, add_special_tokens=False).ids
        tok_cases.append({"text": s, "ids": a, "transformers_gguf_ids": b, "same": a == b,
                          "llama_bpe_ids": c})

    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
    prompt = tf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = off.encode(prompt, add_special_tokens=False).ids

    model = AutoModelForCausalLM.from_pretrained(DIR, gguf_file=FILE, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]  # (T, V)
    last = logits[-1]
    top = torch.topk(last, 20)
    # A fixed, spread-out probe of vocabulary entries for elementwise comparison.
    probe = list(range(0, last.shape[0], 97))
    positions = []
    for p in [0, len(ids) // 2, len(ids) - 2]:
        t5 = torch.topk(logits[p], 5)
        positions.append({"pos": p, "top5_ids": t5.indices.tolist(), "top5_logits": t5.values.tolist()})
    with torch.no_grad():
        gen = model.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False,
                             eos_token_id=None, pad_token_id=2)
    continuation = gen[0, len(ids):].tolist()

    out = {
        "note": "made by scripts/reference/smollm2_reference.py (transformers GGUF loader, float32 dequantized)",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "tokenizers": tokenizers.__version__, "gguf": getattr(gguf, "__version__", "?")},
        "tokenizer_cases": tok_cases,
        "system": SYSTEM,
        "question": QUESTION,
        "prompt": prompt,
        "prompt_ids": ids,
        "last_top20_ids": top.indices.tolist(),
        "last_top20_logits": top.values.tolist(),
        "probe_ids": probe,
        "probe_logits": last[probe].tolist(),
        "logit_std": last.std().item(),
        "positions_top5": positions,
        "greedy20": continuation,
        "greedy20_text": off.decode(continuation),
    }
    json.dump(out, sys.stdout, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main()
