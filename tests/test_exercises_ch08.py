"""Chapter 8 exercises: the solutions pass every check, the untouched stubs fail with a hint."""

from pathlib import Path

import pytest

from lm4f.checks import ExerciseError
from lm4f.exercises import ch08
from tests.nbtools import REPO, assert_untouched_stubs_fail, check_errors

NOTEBOOK = Path("ch08_risks.ipynb")



def test_solutions_pass_every_check():
    assert check_errors(REPO / "solutions" / NOTEBOOK, 3) == [None, None, None]


def test_untouched_stubs_fail_with_hints():
    errors = check_errors(REPO / "exercises" / NOTEBOOK, 3)
    assert_untouched_stubs_fail(errors, ("8.1", "8.2", "8.3"))


def test_membership_check_catches_the_inverted_score():
    def inverted(member_losses, nonmember_losses):  # uses +loss as the score: gives 1 - AUC
        members, nonmembers = member_losses[:, None], nonmember_losses[None, :]
        return float((members > nonmembers).mean() + 0.5 * (members == nonmembers).mean())

    with pytest.raises(ExerciseError, match="1 - AUC"):
        ch08.check_membership_auc(inverted)


def test_pruning_check_catches_in_place_change_and_wrong_count():
    def in_place(weight, amount):
        weight[weight.abs() < 0.1] = 0
        return weight

    def per_row(weight, amount):  # prunes each row separately: not the global smallest
        k = int(round(amount * weight.shape[1]))
        smallest = weight.abs().argsort(dim=1)[:, :k]
        return weight.clone().scatter_(1, smallest, 0.0)

    with pytest.raises(ExerciseError, match="in place"):
        ch08.check_magnitude_prune(in_place)
    with pytest.raises(ExerciseError):
        ch08.check_magnitude_prune(per_row)


def test_scrub_check_catches_a_greedy_digit_pattern():
    import re

    def greedy(text):  # replaces every number, so sizes and prices disappear too
        text = re.sub(r"\S+@\S+", "[EMAIL]", text)
        return re.sub(r"\+?\(?\d[\d\s().-]*\d", "[PHONE]", text)

    with pytest.raises(ExerciseError, match="scrub_contacts"):
        ch08.check_scrub_contacts(greedy)
