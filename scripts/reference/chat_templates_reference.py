#!/usr/bin/env python3
"""Expected chat renderings for tests/chat_templates.rs (tests/fixtures/chat_templates_reference.json).

Every template in tests/fixtures/chat_templates/ (sources and licenses: SOURCES.md there) is
rendered by transformers' own `apply_chat_template(tokenize=False)` — transformers renders any
template string given a tokenizer object; here a tokenizer carrying the model's special tokens
(bos/eos as in the model's tokenizer_config.json). `strftime_now` is pinned to 2024-07-26
(east's default `model.date`) by replacing the `datetime` that transformers' `strftime_now`
calls (`datetime.now().strftime(fmt)`), so Llama 3.2 renders the same day as east.

Cases per template: the EAST prompt (system + user, generation prompt), the same without a
system message, a whitespace-laden prompt, and the training rendering in TRL's way
(`maybe_apply_chat_template` for prompt/completion rows: prompt = template(prompt messages,
add_generation_prompt=True); completion = template(prompt + completion)[len(prompt):]),
recording whether the prompt is a prefix of the whole conversation (east refuses to split when
it is not, where TRL would cut blindly).

For SmolLM2 the token ids are recorded too, encoded (no special tokens added) by the
official SmolLM2 tokenizer layout built from the bundled GGUF (smollm2_reference.py's
`official_tokenizer`).

    python3 scripts/reference/chat_templates_reference.py > tests/fixtures/chat_templates_reference.json
"""
import datetime, importlib.util, json, os, sys
import transformers
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "..", "tests", "fixtures", "chat_templates")
DATE = datetime.datetime(2024, 7, 26)
SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
QUESTION = "Janet has 3 apples and buys 4 more. How many apples does she have?"
ANSWER = "She has 3 + 4 = 7 apples.\nThe answer is \\boxed{7}.\n"

# special tokens of each model's tokenizer_config.json
TEMPLATES = {
    "HuggingFaceTB-SmolLM2-135M-Instruct": {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
                                            "unk_token": "<|endoftext|>", "pad_token": "<|im_end|>"},
    "meta-llama-Meta-Llama-3-8B-Instruct": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "meta-llama-Llama-3.1-8B-Instruct": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "meta-llama-Llama-3.2-3B-Instruct": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "Qwen-Qwen2.5-7B-Instruct": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    "mistralai-Mistral-Nemo-Instruct-2407": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B": {"bos_token": "<｜begin▁of▁sentence｜>",
                                                 "eos_token": "<｜end▁of▁sentence｜>"},
    "Qwen-Qwen3-0.6B": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B": {"bos_token": "<｜begin▁of▁sentence｜>",
                                                 "eos_token": "<｜end▁of▁sentence｜>",
                                                 "pad_token": "<｜end▁of▁sentence｜>"},
}

PROMPTS = {
    "east": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
    "no_system": [{"role": "user", "content": QUESTION}],
    "whitespace": [{"role": "system", "content": "  sys \n"}, {"role": "user", "content": "\n q \n"}],
}


class PinnedDatetime(datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        return DATE


import transformers.utils.chat_template_utils as _ctu
_ctu.datetime = PinnedDatetime


def tokenizer_with(specials):
    core = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    return PreTrainedTokenizerFast(tokenizer_object=core, **specials)


def render(tok, template, messages, gen):
    return tok.apply_chat_template(messages, chat_template=template, tokenize=False,
                                   add_generation_prompt=gen)


def smollm2_encoder():
    spec = importlib.util.spec_from_file_location("smollm2_reference", os.path.join(HERE, "smollm2_reference.py"))
    mod = importlib.util.module_from_spec(spec)
    cwd = os.getcwd()
    os.chdir(os.path.join(HERE, "..", ".."))  # the GGUF path there is relative to the repository
    try:
        spec.loader.exec_module(mod)
        tok = mod.official_tokenizer()
    finally:
        os.chdir(cwd)
    return lambda text: tok.encode(text, add_special_tokens=False).ids


def main():
    encode = smollm2_encoder()
    cases = []
    for name, specials in TEMPLATES.items():
        with open(os.path.join(FIXTURES, name + ".jinja"), encoding="utf-8") as f:
            template = f.read()
        tok = tokenizer_with(specials)
        for case, messages in PROMPTS.items():
            c = {"template": name, "case": case, "messages": messages, "add_generation_prompt": True}
            try:
                c["expected"] = render(tok, template, messages, True)
            except Exception as e:  # e.g. raise_exception in the template
                c["error"] = str(e)
            if "expected" in c and name.startswith("HuggingFaceTB-SmolLM2"):
                c["ids"] = encode(c["expected"])
            cases.append(c)
        completion = [{"role": "assistant", "content": ANSWER}]
        prompt = render(tok, template, PROMPTS["east"], True)
        full = render(tok, template, PROMPTS["east"] + completion, False)
        c = {"template": name, "case": "training", "messages": PROMPTS["east"], "completion": completion,
             "prompt": prompt, "full": full, "prefix": full.startswith(prompt),
             "trl_completion": full[len(prompt):]}
        if name.startswith("HuggingFaceTB-SmolLM2"):
            c["prompt_ids"] = encode(prompt)
            c["completion_ids"] = encode(full[len(prompt):])
        cases.append(c)
    out = {"note": "made by scripts/reference/chat_templates_reference.py",
           "versions": {"transformers": transformers.__version__, "python": sys.version.split()[0]},
           "specials": TEMPLATES, "date": "2024-07-26", "cases": cases}
    json.dump(out, sys.stdout, ensure_ascii=False, indent=1)
    print()


if __name__ == "__main__":
    main()
