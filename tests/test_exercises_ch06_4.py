"""Case study 6.4 exercises: the solutions pass every check, the untouched stubs fail with a hint."""

import json
from pathlib import Path

import numpy as np
import pytest

from lm4f.checks import ExerciseError
from lm4f.exercises import ch06_4
from tests.nbtools import namespace_and_checks

REPO = Path(__file__).resolve().parents[1]
EXERCISES = REPO / "exercises" / "ch06_4_recommender.ipynb"
SOLUTIONS = REPO / "solutions" / "ch06_4_recommender.ipynb"
N_EXERCISES = 2


def test_solution_notebook_passes_every_check():
    _, checks = namespace_and_checks(SOLUTIONS)
    assert len(checks) == N_EXERCISES + 1   # two exercises and the real-data cell
    assert [(c.index, repr(c.error)) for c in checks if c.error is not None] == []


def test_untouched_stubs_fail_with_the_exercise_number_and_a_hint():
    _, checks = namespace_and_checks(EXERCISES)
    assert len(checks) == N_EXERCISES + 1
    for number, result in zip(["6.4.1", "6.4.2"], checks):
        assert isinstance(result.error, ExerciseError), (number, result.error)
        message = str(result.error)
        assert f"Exercise {number}" in message and "not implemented yet" in message and "Hint:" in message
    assert isinstance(checks[-1].error, NotImplementedError)   # the real-data cell needs both answers


def test_stub_and_solution_notebooks_differ_only_in_the_answers():
    stub = json.loads(EXERCISES.read_text())["cells"]
    solved = json.loads(SOLUTIONS.read_text())["cells"]
    assert len(stub) == len(solved)
    assert sum("raise NotImplementedError" in "".join(c["source"])
               for c in stub if c["cell_type"] == "code") == N_EXERCISES
    assert not any("raise NotImplementedError" in "".join(c["source"]) for c in solved if c["cell_type"] == "code")
    assert all(not c.get("outputs") for c in stub if c["cell_type"] == "code")


def _rank(scores, target, seen, strict=False, remove_seen=True):
    candidates = np.ones(len(scores), dtype=bool)
    candidates[0] = candidates[target] = False
    if remove_seen:
        candidates[[s for s in seen if s != target]] = False
    better = scores > scores[target] if strict else scores >= scores[target]
    return int(np.sum(candidates & better))


def test_right_rank_passes_and_typical_mistakes_get_specific_hints():
    ch06_4.check_rank_among_unseen(_rank)
    with pytest.raises(ExerciseError, match="seen items are still in the ranking"):
        ch06_4.check_rank_among_unseen(lambda s, t, seen: _rank(s, t, seen, remove_seen=False))
    with pytest.raises(ExerciseError, match="tied"):
        ch06_4.check_rank_among_unseen(lambda s, t, seen: _rank(s, t, seen, strict=True))
    with pytest.raises(ExerciseError, match="returned None"):
        ch06_4.check_rank_among_unseen(lambda s, t, seen: None)


def test_ndcg_check_catches_a_one_based_rank():
    def right(ranks):
        ranks = np.asarray(ranks, dtype=float)
        return float(np.mean(np.where(ranks < 10, 1 / np.log2(ranks + 2), 0.0)))

    ch06_4.check_ndcg_at_10(right)
    with pytest.raises(ExerciseError, match="log2"):
        ch06_4.check_ndcg_at_10(lambda ranks: right(np.asarray(ranks) + 1))   # treated ranks as 1-based
