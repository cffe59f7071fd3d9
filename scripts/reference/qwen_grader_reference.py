#!/usr/bin/env python3
"""Verdicts of the Qwen2.5-Math evaluation toolkit's `math_equal` for the `qwen` grading preset's
test in src/grade/grading.rs (tests/fixtures/qwen_grading_reference.json).

The toolkit grades a prediction with `math_equal(pred, gt)` and its defaults,
`include_percentage=True, is_close=True` (evaluation/evaluate.py's `math_equal_process`); this
script calls exactly that on pairs already in normalised form (what east's `strip_string` and
the toolkit's agree on), where the toolkit's verdict differs from exact grading. Nothing of the
toolkit is copied here: point QWEN_EVAL at its `evaluation/` folder (github QwenLM/Qwen2.5-Math)
and run, in a virtual environment with the toolkit's pins (its requirements.txt):

    python3 -m venv /tmp/qwenvenv
    /tmp/qwenvenv/bin/pip install sympy==1.12 antlr4-python3-runtime==4.11.1 regex
    QWEN_EVAL=/path/to/Qwen2.5-Math/evaluation /tmp/qwenvenv/bin/python \\
        scripts/reference/qwen_grader_reference.py > tests/fixtures/qwen_grading_reference.json
"""
import json, os, subprocess, sys

EVAL = os.environ["QWEN_EVAL"]
sys.path[:0] = [EVAL, os.path.join(EVAL, "latex2sympy")]
from grader import math_equal  # noqa: E402

# (prediction, reference): the toolkit's tolerance on integers, decimals against exact values,
# irrational values, its percent rule both ways, inside tuples and after `x =`, and pairs it
# still tells apart (so the preset is not checked only on matches).
PAIRS = [
    ("123457", "123456"),
    ("10001", "10000"),
    ("0.6667", "\\frac{2}{3}"),
    ("3.3333", "\\frac{10}{3}"),
    ("1.4142", "\\sqrt{2}"),
    ("0.05357", "\\frac{3}{56}"),
    ("50", "0.5"),
    ("0.5", "50"),
    ("2500", "25"),
    ("(1,0.33333)", "(1,\\frac{1}{3})"),
    ("x=10001", "10000"),
    ("123", "124"),
    ("12.57", "4\\pi"),
    ("0.66", "\\frac{2}{3}"),
    ("5000", "0.5"),
    ("1.02", "1"),
    # The toolkit's sympy reads `\pi` as a symbol named pi, so 12.566 is not 4\pi there; its
    # percent rule covers plain numbers only, so \frac{1}{2} is not 50 (east differs on both).
    ("12.566", "4\\pi"),
    ("\\frac{1}{2}", "50"),
]


def commit():
    """The toolkit's commit: its git checkout's HEAD, else $QWEN_COMMIT (an exported copy)."""
    try:
        return subprocess.run(["git", "-C", EVAL, "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except Exception:
        return os.environ.get("QWEN_COMMIT")


cases = [{"pred": p, "ref": r, "math_equal": bool(math_equal(p, r))} for p, r in PAIRS]
json.dump({"source": "QwenLM/Qwen2.5-Math evaluation/grader.py math_equal(pred, gt)",
           "commit": commit(), "cases": cases}, sys.stdout, indent=1, ensure_ascii=False)
print()
