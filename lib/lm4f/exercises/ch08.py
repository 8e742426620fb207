"""Checks for exercises/ch08_risks.ipynb: membership attack, magnitude pruning, contact scrubbing.

Each check calls the learner's function on fixed inputs, compares with a reference, prints a
one-line verdict and raises ``lm4f.checks.ExerciseError`` with a hint when the answer is wrong.
"""

from __future__ import annotations

import numpy as np

from lm4f.checks import ExerciseError, check_close, run_check
from lm4f.privacy import roc_auc


def check_membership_auc(membership_auc) -> float:
    """Exercise 8.1: AUC of the loss-threshold attack (members have LOWER loss)."""
    hint = ("Score each example by its negative loss (lower loss = more likely a member) and return "
            "P(score of a random member > score of a random non-member), ties counting 1/2.")
    rng = np.random.default_rng(8)
    member_losses = rng.gamma(2.0, 0.5, size=300).round(2)  # rounded: there are ties
    nonmember_losses = rng.gamma(2.0, 0.8, size=200).round(2)
    cases = [
        (member_losses, nonmember_losses),
        (np.array([0.1, 0.2]), np.array([0.9, 1.0, 1.1])),  # perfect attack: 1.0
        (np.array([1.0, 1.0]), np.array([1.0])),  # all tied: 0.5
    ]
    for members, nonmembers in cases:
        mine = run_check("membership_auc", membership_auc, members.copy(), nonmembers.copy(), hint=hint)
        if mine is None:
            raise ExerciseError(f"membership_auc: your function returned None. {hint}")
        reference = roc_auc(-members, -nonmembers)
        if abs(float(mine) - 0.5) > 1e-9 and abs(float(mine) - (1 - reference)) < 1e-9 and reference != 0.5:
            raise ExerciseError(f"membership_auc: you returned {float(mine):.3f} = 1 - AUC. Members have lower "
                                "loss, so the score is minus the loss.")
        check_close("membership_auc", float(mine), reference, atol=1e-9, hint=hint)
    return float(roc_auc(-member_losses, -nonmember_losses))


def check_magnitude_prune(magnitude_prune) -> None:
    """Exercise 8.2: zero the fraction ``amount`` of weights with the smallest absolute value."""
    import torch

    hint = ("Sort |w| over the whole tensor, find the k = round(amount * w.numel()) smallest, set those "
            "to zero, keep the others unchanged, and return a new tensor of the same shape.")
    generator = torch.Generator().manual_seed(8)
    weight = torch.randn(16, 12, generator=generator)  # (out_features, in_features)
    for amount in (0.0, 0.3, 0.5, 0.9):
        original = weight.clone()
        mine = run_check("magnitude_prune", magnitude_prune, weight, amount, hint=hint)
        if not torch.equal(weight, original):
            raise ExerciseError("magnitude_prune: the input tensor was changed in place. Work on a copy "
                                "(weight.clone()).")
        if mine is None:
            raise ExerciseError(f"magnitude_prune: your function returned None. {hint}")
        k = int(round(amount * weight.numel()))
        order = weight.abs().flatten().argsort()
        mask = torch.ones(weight.numel())
        mask[order[:k]] = 0
        reference = weight * mask.view_as(weight)
        check_close(f"magnitude_prune({amount})", mine, reference, atol=0, rtol=0, hint=hint)
        zeros = int((torch.as_tensor(mine) == 0).sum())
        if zeros != k:
            raise ExerciseError(f"magnitude_prune({amount}): {zeros} zeros, expected {k}. {hint}")


def check_scrub_contacts(scrub_contacts) -> None:
    """Exercise 8.3: replace e-mail addresses by [EMAIL] and phone numbers by [PHONE]."""
    hint = ("Use re.sub with one pattern for e-mails (name@domain.tld) and one for phone numbers "
            "(groups of digits split by spaces, dots or dashes, optional +country code or (area)); "
            "replace e-mails first. Leave sizes, prices and years alone.")
    cases = [
        ("write to ann.lee@example.com", "write to [EMAIL]"),
        ("or call 555-123-4567!", "or call [PHONE]!"),
        ("office (555) 123 4567", "office [PHONE]"),
        ("UK +44 20 7946 0958", "UK [PHONE]"),
        ("size 12, $59.99, bought in 2019", "size 12, $59.99, bought in 2019"),
        ("a@b.io / 555.123.4567", "[EMAIL] / [PHONE]"),
    ]
    wrong = []
    for text, expected in cases:
        mine = run_check("scrub_contacts", scrub_contacts, text, hint=hint)
        if mine != expected:
            wrong.append(f"{text!r} -> {mine!r}, expected {expected!r}")
    verdict = "exact" if not wrong else "WRONG"
    print(f"{'scrub_contacts':28s} {verdict:6s} {len(cases) - len(wrong)}/{len(cases)} cases")
    if wrong:
        raise ExerciseError("scrub_contacts: " + "; ".join(wrong) + f". {hint}")
