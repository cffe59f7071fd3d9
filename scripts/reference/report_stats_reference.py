#!/usr/bin/env python3
"""Reference values for the statistics of `east report` (src/stats.rs), computed with
statsmodels and scipy, for tests/report.rs (tests/fixtures/report_stats_reference.json).

* Wilson's 95% score interval of a proportion:
    statsmodels.stats.proportion.proportion_confint(count, nobs, alpha=0.05, method="wilson")
* The exact McNemar test of a paired comparison with b and c discordant pairs:
    scipy.stats.binomtest(min(b, c), b + c, 0.5).pvalue (two-sided), checked here against
    statsmodels.stats.contingency_tables.mcnemar([[a, b], [c, d]], exact=True).pvalue;
    p = 1 when b + c = 0 (no discordant pair: no evidence either way).
* pass@k, the unbiased estimator of Chen et al. 2021 (HumanEval), from n samples with c correct:
    1 - C(n - c, k) / C(n, k), computed here in exact rational arithmetic (scipy.special.comb
    with exact=True) and checked against the paper's numpy product form.

    python3 scripts/reference/report_stats_reference.py > tests/fixtures/report_stats_reference.json
"""
import json
from fractions import Fraction

import numpy as np
from scipy.special import comb
from scipy.stats import binomtest, norm
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

WILSON = [(0, 40), (1, 40), (2, 40), (20, 40), (39, 40), (40, 40), (0, 1), (1, 1), (5, 7),
          (611, 1319), (1319, 1319), (0, 1319), (3, 5000), (2500, 5000)]

# (b, c): b = questions only side A got right, c = only side B.
MCNEMAR = [(0, 0), (0, 1), (1, 0), (3, 3), (0, 10), (2, 9), (9, 2), (7, 8), (40, 60),
           (150, 200), (500, 620), (1, 30), (0, 60), (1000, 1300)]

# (n, c, k)
PASS_AT_K = [(16, 0, 1), (16, 0, 16), (16, 16, 1), (16, 16, 16), (16, 1, 1), (16, 1, 4),
             (16, 1, 16), (16, 3, 4), (16, 12, 4), (16, 13, 4), (16, 15, 4), (10, 2, 4),
             (10, 9, 4), (1, 0, 1), (1, 1, 1), (128, 5, 64), (128, 1, 128), (128, 127, 4),
             (128, 64, 16), (1024, 3, 256)]


def chen_numpy(n, c, k):
    """Chen et al. 2021's numerically stable form (their Figure 3)."""
    if n - c < k:
        return 1.0
    return 1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1))


def pass_at_k(n, c, k):
    exact = 1 - Fraction(comb(n - c, k, exact=True), comb(n, k, exact=True))
    value = float(exact)
    assert abs(value - chen_numpy(n, c, k)) <= 1e-12, (n, c, k)
    return value


def mcnemar_p(b, c):
    if b + c == 0:
        return 1.0
    p = binomtest(min(b, c), b + c, 0.5).pvalue
    # statsmodels' exact McNemar is the same binomial test: a = d = 5 do not matter.
    assert abs(mcnemar([[5, b], [c, 5]], exact=True).pvalue - p) <= 1e-12 * max(p, 1e-300)
    return p


def main():
    wilson = []
    for count, nobs in WILSON:
        low, high = proportion_confint(count, nobs, alpha=0.05, method="wilson")
        wilson.append({"correct": count, "n": nobs, "low": low, "high": high})
    out = {
        "z": norm.ppf(0.975),
        "wilson": wilson,
        "mcnemar": [{"b": b, "c": c, "p": mcnemar_p(b, c)} for b, c in MCNEMAR],
        "pass_at_k": [{"n": n, "c": c, "k": k, "pass": pass_at_k(n, c, k)}
                      for n, c, k in PASS_AT_K],
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
