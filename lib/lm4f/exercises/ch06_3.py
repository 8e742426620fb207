"""Checks for exercises/ch06_3_cv.ipynb: the residual block, the confusion matrix and the expected
calibration error used by chapters/ch06_3_cv_product_images.ipynb.

Each check calls the learner's function on fixed inputs, compares with a reference, prints a
one-line verdict and raises ``lm4f.checks.ExerciseError`` with a hint when the answer is wrong.
"""

from __future__ import annotations

import numpy as np

from lm4f.checks import ExerciseError, check_close, run_check


def check_residual_forward(residual_forward) -> None:
    """Exercise 6.3.1: out = relu(bn2(conv2(relu(bn1(conv1(x))))) + skip(x))."""
    import torch
    import torch.nn.functional as F

    from lm4f.vision import ResidualBlock

    hint = ("Main path: conv1 -> bn1 -> relu -> conv2 -> bn2. Add skip(x) to it, and only then apply "
            "the last relu: out = relu(main + skip(x)).")
    torch.manual_seed(63)
    for in_channels, out_channels, stride in ((8, 8, 1), (8, 16, 2)):
        block = ResidualBlock(in_channels, out_channels, stride).eval()
        for bn in (block.bn1, block.bn2):  # non-trivial running statistics
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
        x = torch.randn(4, in_channels, 14, 14)  # (B, C_in, H, W)
        with torch.no_grad():
            reference = block(x)  # (B, C_out, H / stride, W / stride)
            mine = run_check("residual_forward", residual_forward, x, block.conv1, block.bn1, block.conv2,
                             block.bn2, block.skip, hint=hint)
            main = block.bn2(block.conv2(F.relu(block.bn1(block.conv1(x)))))
            relu_before_add = F.relu(main) + block.skip(x)
        if mine is not None and torch.is_tensor(mine) and mine.shape == reference.shape:
            if torch.allclose(mine, relu_before_add, atol=1e-5):
                raise ExerciseError("residual_forward: you applied relu before adding the skip path. "
                                    "The sum comes first: relu(main + skip(x)).")
            if torch.allclose(mine, F.relu(main), atol=1e-5):
                raise ExerciseError("residual_forward: the skip path is missing. Add skip(x) to the main path.")
        check_close(f"residual_forward stride {stride}", mine, reference, atol=1e-5, hint=hint)


def check_confusion_matrix(confusion_matrix) -> np.ndarray:
    """Exercise 6.3.2: counts[t, p] = number of images of true class t predicted as class p."""
    hint = ("Make a (classes, classes) integer array of zeros; for each image add 1 at "
            "[true class, predicted class] (rows = true, columns = predicted). np.add.at does it at once.")
    rng = np.random.default_rng(63)
    true = rng.integers(0, 10, size=500)
    predicted = np.where(rng.random(500) < 0.7, true, rng.integers(0, 10, size=500))
    predicted[:20] = 3  # an asymmetric block of errors, so a transposed matrix is caught
    reference = np.zeros((10, 10), dtype=np.int64)
    np.add.at(reference, (true, predicted), 1)
    mine = run_check("confusion_matrix", confusion_matrix, true.copy(), predicted.copy(), 10, hint=hint)
    if mine is None:
        raise ExerciseError(f"confusion_matrix: your function returned None. {hint}")
    mine_array = np.asarray(mine)
    if mine_array.shape == reference.shape and np.array_equal(mine_array, reference.T):
        raise ExerciseError("confusion_matrix: your matrix is transposed. Rows are the TRUE class, "
                            "columns the PREDICTED class.")
    check_close("confusion_matrix", mine_array, reference, atol=0, rtol=0, hint=hint)
    few = run_check("confusion_matrix", confusion_matrix, np.array([0, 1]), np.array([1, 1]), 4, hint=hint)
    check_close("confusion_matrix (4 classes)", few, np.array([[0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]),
            atol=0, rtol=0, hint="Use the number of classes given, even when some never occur. " + hint)
    return reference


def check_expected_calibration_error(expected_calibration_error) -> float:
    """Exercise 6.3.3: ECE = sum over bins of (images in bin / all images) * |mean confidence - accuracy|."""
    hint = ("Split [0, 1] into `bins` equal bins by confidence (a confidence of exactly 1.0 goes in the last "
            "bin). For each non-empty bin: gap = |mean confidence - fraction correct|. ECE = sum of "
            "gap * (images in the bin) / (all images).")
    rng = np.random.default_rng(63)
    confidence = rng.uniform(0.1, 1.0, size=2000)
    correct = rng.random(2000) < confidence ** 1.5  # over-confident on purpose
    confidence[:5] = 1.0

    def reference(conf, corr, bins):
        which = np.minimum((conf * bins).astype(int), bins - 1)
        total = 0.0
        for b in range(bins):
            inside = which == b
            if inside.any():
                total += inside.mean() * abs(conf[inside].mean() - corr[inside].mean())
        return total

    for bins in (10, 15):
        mine = run_check("expected_calibration_error", expected_calibration_error, confidence.copy(), correct.copy(),
                         bins, hint=hint)
        if mine is None:
            raise ExerciseError(f"expected_calibration_error: your function returned None. {hint}")
        expected = reference(confidence, correct, bins)
        unweighted = np.mean([abs(confidence[w].mean() - correct[w].mean())
                              for w in [np.minimum((confidence * bins).astype(int), bins - 1) == b for b in range(bins)]
                              if w.any()])
        if abs(float(mine) - unweighted) < 1e-9 and abs(unweighted - expected) > 1e-6:
            raise ExerciseError("expected_calibration_error: you averaged the bins equally. Weight each bin's gap "
                                "by the share of images that fall in it.")
        check_close(f"expected_calibration_error({bins})", float(mine), expected, atol=1e-9, hint=hint)
    return float(reference(confidence, correct, 10))
