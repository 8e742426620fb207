"""Chapter 6.3 exercises: the solutions pass every check, the untouched stubs fail with a hint."""

from pathlib import Path

import numpy as np
import pytest
import torch.nn.functional as F

from lm4f.checks import ExerciseError
from lm4f.exercises import ch06_3
from tests.nbtools import REPO, assert_untouched_stubs_fail, check_errors, run_cells

NOTEBOOK = Path("ch06_3_cv.ipynb")



def test_solutions_pass_every_check():
    assert check_errors(REPO / "solutions" / NOTEBOOK, 3) == [None, None, None]


def test_untouched_stubs_fail_with_hints():
    # the stubs raise, so the last (non-check) cell that uses them must not run: run only up to it
    namespace, results = run_cells_until_last_check(REPO / "exercises" / NOTEBOOK)
    errors = [result.error for result in results if "check" in result.tags]
    assert len(errors) == 3
    assert_untouched_stubs_fail(errors, ("6.3.1", "6.3.2", "6.3.3"))


def run_cells_until_last_check(path):
    """run_cells on a copy of the notebook without the cells after its last check cell."""
    import json
    import tempfile

    notebook = json.loads(Path(path).read_text())
    last = max(i for i, cell in enumerate(notebook["cells"]) if "check" in cell.get("metadata", {}).get("tags", []))
    notebook["cells"] = notebook["cells"][: last + 1]
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / path.name
        copy.write_text(json.dumps(notebook))
        return run_cells(copy)


def test_residual_check_catches_relu_before_the_add_and_a_missing_skip():
    def relu_first(x, conv1, bn1, conv2, bn2, skip):
        return F.relu(bn2(conv2(F.relu(bn1(conv1(x)))))) + skip(x)

    def no_skip(x, conv1, bn1, conv2, bn2, skip):
        return F.relu(bn2(conv2(F.relu(bn1(conv1(x))))))

    with pytest.raises(ExerciseError, match="before adding"):
        ch06_3.check_residual_forward(relu_first)
    with pytest.raises(ExerciseError, match="skip path is missing"):
        ch06_3.check_residual_forward(no_skip)


def test_confusion_check_catches_a_transposed_matrix():
    def transposed(true, predicted, classes):
        counts = np.zeros((classes, classes), dtype=np.int64)
        np.add.at(counts, (predicted, true), 1)
        return counts

    with pytest.raises(ExerciseError, match="transposed"):
        ch06_3.check_confusion_matrix(transposed)


def test_calibration_check_catches_unweighted_bins():
    def unweighted(confidence, correct, bins=10):
        which = np.minimum((confidence * bins).astype(int), bins - 1)
        gaps = [abs(confidence[which == b].mean() - correct[which == b].mean())
                for b in range(bins) if (which == b).any()]
        return float(np.mean(gaps))

    with pytest.raises(ExerciseError, match="equally"):
        ch06_3.check_expected_calibration_error(unweighted)
