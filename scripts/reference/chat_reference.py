#!/usr/bin/env python3
"""Expected chat renderings for tests/model.rs (tests/fixtures/chat_reference.json).

Renders with jinja2 the way transformers' `apply_chat_template` does (trim_blocks,
lstrip_blocks, `bos_token` passed in):
* Llama 3: the standard-message (system/user/assistant, no tools) branch of Meta's
  Llama-3.1/3.2-Instruct chat template, with no `strftime_now` and no `date_string`, so the
  template's default date "26 Jul 2024" is used;
* ChatML: SmolLM2-Instruct's template exactly as stored in the GGUF (tokenizer.chat_template).

    /tmp/refvenv/bin/python scripts/reference/chat_reference.py > tests/fixtures/chat_reference.json
"""
import json, sys
import jinja2

LLAMA3 = """{{- bos_token }}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

SMOLLM2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
           "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
           "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
           "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)


def render(template, messages, gen, bos):
    return env.from_string(template).render(messages=messages, add_generation_prompt=gen, bos_token=bos)


cases = []
convs = {
    "east_prompt": ([{"role": "system", "content": SYSTEM},
                     {"role": "user", "content": "Janet has 3 apples. How many?"}], True),
    "east_training": ([{"role": "system", "content": SYSTEM},
                       {"role": "user", "content": "Janet has 3 apples. How many?"},
                       {"role": "assistant", "content": "She has \\boxed{3}.\n"}], False),
    "no_system": ([{"role": "user", "content": "Hi"}], True),
    "whitespace": ([{"role": "system", "content": "  sys \n"},
                    {"role": "user", "content": "\n q \n"}], True),
}
for name, (msgs, gen) in convs.items():
    cases.append({"name": name, "format": "llama3", "messages": msgs, "add_generation_prompt": gen,
                  "expected": render(LLAMA3, msgs, gen, "<|begin_of_text|>")})
    if msgs[0]["role"] == "system":  # east always passes a system prompt to ChatML models
        cases.append({"name": name, "format": "chatml", "messages": msgs, "add_generation_prompt": gen,
                      "expected": render(SMOLLM2, msgs, gen, "<|im_start|>")})
json.dump({"note": "made by scripts/reference/chat_reference.py (jinja2 %s)" % jinja2.__version__,
           "cases": cases}, sys.stdout, ensure_ascii=False, indent=1)
