"""lm4f.tensor (vectorised NumPy autograd) against torch autograd in float64, plus the MLP toolkit."""

import numpy as np
import pytest
import torch

from lm4f.tensor import MLP, SGD, Tensor, dropout, log_softmax, softmax_cross_entropy, unbroadcast

# Shapes that broadcast against each other in every pair: (3, 4) with (4,), (1, 4), (3, 1) and ().
SHAPES = [(3, 4), (4,), (1, 4), (3, 1), ()]

UNARY = {
    "neg": lambda a: -a,
    "exp_small": lambda a: (a * 0.3).exp(),
    "log_pos": lambda a: (a * a + 0.5).log(),
    "tanh": lambda a: a.tanh(),
    "sigmoid": lambda a: a.sigmoid(),
    "relu": lambda a: a.relu(),
    "square": lambda a: a ** 2,
    "sqrt_pos": lambda a: (a * a + 0.1) ** 0.5,
    "rdiv_const": lambda a: 1.0 / (a * a + 1.0),
    "rsub_const": lambda a: 2.0 - a,
}
BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div_pos": lambda a, b: a / (b * b + 0.5),
}


def _reduce(kind, a):
    """Reductions and shape operations, written once for both engines."""
    if a.ndim == 0:
        return a
    if kind == "sum0":
        return a.sum(axis=0, keepdims=True) if a.ndim == 2 else a.sum()
    if kind == "mean_last":
        return a.mean(axis=-1, keepdims=True)
    if kind == "sum_all":
        return a.sum() * 0.1
    if kind == "transpose":
        return a.T if a.ndim == 2 else a
    if kind == "max_last":
        return a.max(axis=-1, keepdims=True) if isinstance(a, Tensor) else a.amax(dim=-1, keepdim=True)
    raise KeyError(kind)


REDUCE = ["sum0", "mean_last", "sum_all", "transpose", "max_last"]


def _random_program(rng: np.random.Generator, n_inputs: int, n_ops: int):
    program = []
    for step in range(n_ops):
        available = n_inputs + step
        kind = rng.random()
        if kind < 0.4:
            program.append(("u", str(rng.choice(sorted(UNARY))), int(rng.integers(available))))
        elif kind < 0.85:
            program.append(("b", str(rng.choice(sorted(BINARY))), int(rng.integers(available)),
                            int(rng.integers(available))))
        else:
            program.append(("r", str(rng.choice(REDUCE)), int(rng.integers(available))))
    return program


def _run(program, inputs):
    nodes = list(inputs)
    for step in program:
        try:
            if step[0] == "u":
                nodes.append(UNARY[step[1]](nodes[step[2]]))
            elif step[0] == "b":
                nodes.append(BINARY[step[1]](nodes[step[2]], nodes[step[3]]))
            else:
                nodes.append(_reduce(step[1], nodes[step[2]]))
        except (ValueError, RuntimeError):  # shapes that do not broadcast (after a transpose)
            nodes.append(nodes[step[2]])
    return nodes[-1]


@pytest.mark.parametrize("seed", range(300))
def test_random_broadcasting_expression_matches_torch(seed):
    rng = np.random.default_rng(seed)
    n_inputs = int(rng.integers(1, 4))
    shapes = [SHAPES[int(i)] for i in rng.integers(len(SHAPES), size=n_inputs)]
    arrays = [rng.uniform(-2, 2, size=shape) for shape in shapes]
    program = _random_program(rng, n_inputs, int(rng.integers(1, 10)))
    ours = [Tensor(a) for a in arrays]
    theirs = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays]
    out_ours = _run(program, ours)
    out_theirs = _run(program, theirs)
    assert out_ours.shape == tuple(out_theirs.shape)
    upstream = rng.normal(size=out_ours.shape)  # a random upstream gradient, not just ones
    out_ours.backward(upstream)
    out_theirs.backward(torch.tensor(upstream))
    np.testing.assert_allclose(out_ours.data, out_theirs.detach().numpy(), rtol=1e-9, atol=1e-9)
    for mine, reference in zip(ours, theirs):
        if reference.grad is None:  # an input the output does not depend on
            assert mine.grad is None or not mine.grad.any()
            continue
        expected = reference.grad.numpy()
        assert mine.grad.shape == mine.shape
        np.testing.assert_allclose(mine.grad, expected, rtol=1e-6, atol=1e-6, err_msg=str(program))


@pytest.mark.parametrize("shape_a, shape_b", [
    ((3, 4), (4, 5)), ((4,), (4, 5)), ((3, 4), (4,)), ((4,), (4,)),
    ((2, 3, 4), (4, 5)), ((2, 3, 4), (2, 4, 5)), ((1, 3, 4), (2, 4, 5)),
])
def test_matmul_matches_torch(shape_a, shape_b):
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=shape_a), rng.normal(size=shape_b)
    ta, tb = Tensor(a), Tensor(b)
    out = (ta @ tb).tanh()
    out.backward(np.ones(out.shape))
    ra, rb = (torch.tensor(x, requires_grad=True) for x in (a, b))
    (ra @ rb).tanh().backward(torch.ones(out.shape, dtype=torch.float64))
    np.testing.assert_allclose(ta.grad, ra.grad.numpy(), atol=1e-10)
    np.testing.assert_allclose(tb.grad, rb.grad.numpy(), atol=1e-10)


def test_matmul_shape_error_says_what_to_fix():
    with pytest.raises(ValueError, match=r"last axis of the left \(4\)"):
        Tensor(np.ones((3, 4))) @ Tensor(np.ones((5, 2)))


def test_softmax_cross_entropy_and_log_softmax_match_torch():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(16, 10)) * 5
    labels = rng.integers(0, 10, size=16)
    ours = Tensor(logits)
    loss = softmax_cross_entropy(ours, labels)
    loss.backward()
    theirs = torch.tensor(logits, requires_grad=True)
    reference = torch.nn.functional.cross_entropy(theirs, torch.tensor(labels))
    reference.backward()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-12)
    np.testing.assert_allclose(ours.grad, theirs.grad.numpy(), atol=1e-12)
    # the unfused version through the autograd graph gives the same gradient
    unfused_input = Tensor(logits)
    unfused = -(log_softmax(unfused_input)[np.arange(16), labels]).mean()
    unfused.backward()
    assert unfused.item() == pytest.approx(reference.item(), rel=1e-12)
    np.testing.assert_allclose(unfused_input.grad, theirs.grad.numpy(), atol=1e-12)


def test_cross_entropy_is_stable_for_huge_logits_and_checks_labels():
    loss = softmax_cross_entropy(Tensor(np.array([[1000.0, 0.0], [0.0, 1000.0]])), np.array([0, 0]))
    assert np.isfinite(loss.item()) and loss.item() == pytest.approx(500.0)
    with pytest.raises(ValueError, match="integers"):
        softmax_cross_entropy(Tensor(np.zeros((2, 3))), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="0..2"):
        softmax_cross_entropy(Tensor(np.zeros((2, 3))), np.array([0, 3]))


def test_indexing_with_a_repeated_index_adds_both_gradients():
    x = Tensor(np.arange(5.0))
    x[np.array([1, 1, 3])].sum().backward()
    np.testing.assert_array_equal(x.grad, [0, 2, 0, 1, 0])


def test_reshape_and_transpose_with_axes_match_torch():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(2, 3, 4))
    ours = Tensor(a)
    out = ours.transpose(2, 0, 1).reshape(4, 6) * np.arange(24.0).reshape(4, 6)
    out.sum().backward()
    theirs = torch.tensor(a, requires_grad=True)
    (theirs.permute(2, 0, 1).reshape(4, 6) * torch.arange(24.0, dtype=torch.float64).reshape(4, 6)).sum().backward()
    np.testing.assert_allclose(ours.grad, theirs.grad.numpy())


def test_unbroadcast():
    grad = np.ones((2, 3, 4))
    assert unbroadcast(grad, (4,)).tolist() == [6.0] * 4
    assert unbroadcast(grad, (3, 1)).shape == (3, 1) and unbroadcast(grad, (3, 1))[0, 0] == 8.0
    assert unbroadcast(grad, ()).shape == () and float(unbroadcast(grad, ())) == 24.0


def test_repeated_backward_does_not_double_and_needs_a_scalar():
    w = Tensor(np.array([1.0, -2.0]))
    loss = (w * w).sum()
    loss.backward()
    loss.backward()
    np.testing.assert_array_equal(w.grad, [2.0, -4.0])
    with pytest.raises(ValueError, match="reduce it to one number"):
        (w * 2.0).backward()


def test_float32_stays_float32():
    x = Tensor(np.ones((4, 3), dtype=np.float32))
    w = Tensor(np.ones((3, 2), dtype=np.float32))
    loss = softmax_cross_entropy((x @ w * 0.5 + 1.0).relu(), np.array([0, 1, 0, 1]))
    loss.backward()
    assert loss.dtype == np.float32 and w.grad.dtype == np.float32 and x.grad.dtype == np.float32


def test_dropout_scales_kept_units_and_is_off_in_evaluation():
    rng = np.random.default_rng(0)
    x = Tensor(np.ones((1000, 100)))
    dropped = dropout(x, 0.25, rng)
    kept = dropped.data[dropped.data != 0]
    assert np.allclose(kept, 1 / 0.75)
    assert abs((dropped.data == 0).mean() - 0.25) < 0.01
    assert dropout(x, 0.25, rng, training=False) is x
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        dropout(x, 1.0, rng)


def test_sgd_matches_torch_sgd_with_momentum_and_weight_decay():
    rng = np.random.default_rng(4)
    start = rng.normal(size=(5, 3))
    ours = Tensor(start.copy())
    theirs = torch.tensor(start.copy(), requires_grad=True)
    optimizer = SGD([ours], lr=0.1, momentum=0.9, weight_decay=0.01)
    reference = torch.optim.SGD([theirs], lr=0.1, momentum=0.9, weight_decay=0.01)
    target = rng.normal(size=(5, 3))
    for _ in range(5):
        ((ours - target) ** 2).sum().backward()
        optimizer.step()
        reference.zero_grad()
        ((theirs - torch.tensor(target)) ** 2).sum().backward()
        reference.step()
    np.testing.assert_allclose(ours.data, theirs.detach().numpy(), atol=1e-12)


def test_mlp_learns_digits_quickly():
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.data / 16.0).astype(np.float32)
    labels = digits.target
    rng = np.random.default_rng(0)
    model = MLP((64, 64, 10), rng, dropout_rate=0.1)
    optimizer = SGD(model.parameters(), lr=0.1, momentum=0.9)
    train, test = slice(0, 1500), slice(1500, None)
    for _ in range(10):
        order = rng.permutation(1500)
        for start in range(0, 1500, 64):
            batch = order[start:start + 64]
            softmax_cross_entropy(model(images[train][batch]), labels[train][batch]).backward()
            optimizer.step()
    model.training = False
    test_accuracy = (model.predict(images[test]) == labels[test]).mean()
    assert test_accuracy > 0.9
    with pytest.raises(ValueError, match="expects inputs with 64 features"):
        model(np.ones((2, 63), dtype=np.float32))


def test_constants_get_no_gradient_and_are_skipped():
    images = Tensor(np.ones((4, 3)), requires_grad=False)
    weight = Tensor(np.full((3, 2), 0.5))
    out = images @ weight
    assert out.requires_grad
    (out * np.array([1.0, 2.0])).sum().backward()
    assert images.grad is None
    np.testing.assert_array_equal(weight.grad, [[4.0, 8.0]] * 3)
    with pytest.raises(ValueError, match="nothing to differentiate"):
        (images * 2.0).sum().backward()


def test_fit_stops_early_and_restores_the_best_weights():
    from sklearn.datasets import load_digits

    from lm4f.tensor import fit, mean_loss

    digits = load_digits()
    images, labels = (digits.data / 16.0).astype(np.float32), digits.target
    rng = np.random.default_rng(0)
    # a tiny training set and a wide network: validation loss turns up after a few epochs
    model = MLP((64, 128, 10), rng)
    history = fit(model, SGD(model.parameters(), lr=0.2), images[:100], labels[:100], images[1000:], labels[1000:],
                  epochs=60, batch_size=16, rng=rng, patience=3)
    assert history["stopped_early"] and len(history["epoch"]) < 60
    best = int(np.argmin(history["val_loss"]))
    assert history["best_epoch"] == history["epoch"][best]
    assert mean_loss(model, images[1000:], labels[1000:]) == pytest.approx(history["val_loss"][best], rel=1e-4)
