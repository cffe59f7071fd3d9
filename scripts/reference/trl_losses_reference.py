#!/usr/bin/env python3
"""DPO and KTO losses and gradients away from initialisation (policy != reference), computed
with TRL's formulas in PyTorch (float64, autograd), for src/train/loss.rs's tests
(tests/fixtures/trl_losses_reference.json).

TRL (0.12, what the EAST authors trained with), per example:
* DPOTrainer.dpo_loss, loss_type="sigmoid", label_smoothing=0:
    logits = (pi_chosen - pi_rejected) - (ref_chosen - ref_rejected)
    loss   = -logsigmoid(beta * logits)
* KTOTrainer.kto_loss:
    kl       = (policy_KL_logps - reference_KL_logps).mean().clamp(min=0)   # computed under no_grad
    desirable:   desirable_weight   * (1 - sigmoid(beta * ((pi - ref) - kl)))
    undesirable: undesirable_weight * (1 - sigmoid(beta * (kl - (pi - ref))))
EAST weights each example's loss by its weight w_i and averages over the step's B examples:
L = sum_i w_i * loss_i / B. Gradients are dL/d(log pi) of each packed row (DPO: chosen rows,
then rejected rows), by autograd.

    python3 scripts/reference/trl_losses_reference.py > tests/fixtures/trl_losses_reference.json
"""
import json, sys
import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)


def dpo_case(pi_c, pi_r, ref_c, ref_r, w, beta, b):
    pc = torch.tensor(pi_c, requires_grad=True)
    pr = torch.tensor(pi_r, requires_grad=True)
    logits = (pc - pr) - (torch.tensor(ref_c) - torch.tensor(ref_r))
    losses = -F.logsigmoid(beta * logits)
    loss = (torch.tensor(w) * losses).sum() / b
    loss.backward()
    return {"loss_type": "dpo", "beta": beta, "batch": b, "weights": w,
            "policy": pi_c + pi_r, "reference": ref_c + ref_r,
            "loss": loss.item(), "grad": pc.grad.tolist() + pr.grad.tolist()}


def kto_case(pi, ref, labels, kl_pi, kl_ref, w, beta, lam_d, lam_u, b):
    p = torch.tensor(pi, requires_grad=True)
    with torch.no_grad():
        kl = (torch.tensor(kl_pi) - torch.tensor(kl_ref)).mean().clamp(min=0)
    logratio = p - torch.tensor(ref)
    lab = torch.tensor(labels)
    losses = torch.where(lab, lam_d * (1 - torch.sigmoid(beta * (logratio - kl))),
                         lam_u * (1 - torch.sigmoid(beta * (kl - logratio))))
    loss = (torch.tensor(w) * losses).sum() / b
    loss.backward()
    return {"loss_type": "kto", "beta": beta, "batch": b, "weights": w, "desirable_weight": lam_d,
            "undesirable_weight": lam_u, "policy": pi, "reference": ref, "labels": labels,
            "kl_policy": kl_pi, "kl_reference": kl_ref, "kl": kl.item(),
            "loss": loss.item(), "grad": p.grad.tolist()}


cases = [
    # the policy moved towards the chosen answers, by different amounts
    dpo_case([-10.0, -3.0, -25.5], [-12.0, -4.0, -20.0], [-11.2, -3.9, -24.0], [-11.0, -3.1, -21.5],
             [0.5, 2.5, 1.0], 0.1, 4),
    # large margins (σ saturates) at the 1B beta, mixed signs
    dpo_case([-5.0, -80.0], [-60.0, -7.0], [-30.0, -40.0], [-30.0, -40.0], [1.2, 0.8], 0.01, 2),
    # KL estimate positive (clamped value used), both labels
    kto_case([-4.0, -7.5, -1.0, -20.0], [-5.0, -7.0, -1.3, -18.0], [True, False, True, False],
             [-1.0, -6.0], [-3.0, -5.0], [1.0, 2.0, 0.5, 1.5], 0.05, 1.0, 1.5, 4),
    # KL estimate negative: clamped at 0
    kto_case([-2.0, -9.0, -30.0], [-6.0, -4.0, -31.0], [True, False, False],
             [-8.0, -9.0, -2.0], [-3.0, -5.0, -1.0], [0.7, 1.3, 1.0], 0.1, 1.33, 1.0, 3),
]
json.dump({"note": "made by scripts/reference/trl_losses_reference.py (TRL's formulas, torch float64 autograd)",
           "versions": {"torch": torch.__version__}, "cases": cases}, sys.stdout, indent=1)
print()
