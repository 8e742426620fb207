"""lm4f.autograd (the scalar engine) against torch autograd, plus its documented semantics."""

import math
import random

import matplotlib

matplotlib.use("Agg")

import pytest
import torch

from lm4f.autograd import Value, draw_graph, to_mermaid, topological_order

# Each operation is written once and applied to both engines; arguments are kept in the domain
# where the operation is defined and smooth (log and division see strictly positive values).
UNARY = {
    "neg": lambda a: -a,
    "exp_small": lambda a: (a * 0.3).exp(),
    "log_pos": lambda a: (a * a + 0.5).log(),
    "tanh": lambda a: a.tanh(),
    "sigmoid": lambda a: a.sigmoid(),
    "relu": lambda a: a.relu(),
    "square": lambda a: a ** 2,
    "cube": lambda a: a ** 3,
    "sqrt_pos": lambda a: (a * a + 0.1) ** 0.5,
    "add_const": lambda a: a + 1.5,
    "rsub_const": lambda a: 2.0 - a,
    "rdiv_const": lambda a: 1.0 / (a * a + 1.0),
}
BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div_pos": lambda a, b: a / (b * b + 0.5),
}


def _random_program(rng: random.Random, n_inputs: int, n_ops: int):
    """A random DAG: each step applies an op to nodes picked from *all* earlier nodes (reuse)."""
    program = []
    for step in range(n_ops):
        available = n_inputs + step
        if rng.random() < 0.5:
            program.append(("u", rng.choice(sorted(UNARY)), rng.randrange(available)))
        else:
            program.append(("b", rng.choice(sorted(BINARY)), rng.randrange(available), rng.randrange(available)))
    return program


def _run(program, inputs):
    nodes = list(inputs)
    for step in program:
        if step[0] == "u":
            nodes.append(UNARY[step[1]](nodes[step[2]]))
        else:
            nodes.append(BINARY[step[1]](nodes[step[2]], nodes[step[3]]))
    # the output mixes the last few nodes, so most of the graph matters
    out = nodes[-1]
    for node in nodes[-4:-1]:
        out = out + node * 0.5
    return out


@pytest.mark.parametrize("seed", range(300))
def test_random_expression_matches_torch(seed):
    rng = random.Random(seed)
    n_inputs = rng.randint(1, 4)
    program = _random_program(rng, n_inputs, n_ops=rng.randint(1, 12))
    numbers = [rng.uniform(-2, 2) for _ in range(n_inputs)]
    ours = [Value(x) for x in numbers]
    theirs = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in numbers]
    out_ours = _run(program, ours)
    out_theirs = _run(program, theirs)
    out_ours.backward()
    out_theirs.backward()
    assert out_ours.data == pytest.approx(out_theirs.item(), rel=1e-9, abs=1e-9)
    for mine, reference in zip(ours, theirs):
        expected = 0.0 if reference.grad is None else reference.grad.item()
        assert mine.grad == pytest.approx(expected, rel=1e-6, abs=1e-6), program


def test_reused_node_gets_the_sum_of_its_paths():
    x = Value(3.0)
    y = x * x + x  # dy/dx = 2x + 1 = 7
    y.backward()
    assert x.grad == 7.0
    a = Value(-2.0)
    b = a + a  # db/da = 2 (the same node twice in one operation)
    b.backward()
    assert a.grad == 2.0


def test_diamond_needs_topological_order():
    # x feeds two branches that meet again: x's gradient is complete only after both branches.
    x = Value(0.5)
    left, right = x.tanh(), x.exp()
    z = left * right
    z.backward()
    expected = (1 - math.tanh(0.5) ** 2) * math.exp(0.5) + math.tanh(0.5) * math.exp(0.5)
    assert x.grad == pytest.approx(expected, rel=1e-12)
    order = topological_order(z)
    position = {id(node): i for i, node in enumerate(order)}
    for node in order:
        for parent in node._parents:
            assert position[id(parent)] < position[id(node)]
    assert order[-1] is z and len(order) == len({id(n) for n in order})


def test_repeated_backward_recomputes_instead_of_doubling():
    x = Value(2.0)
    y = x * x * 3.0  # dy/dx = 6x = 12
    y.backward()
    first = x.grad
    y.backward()
    assert first == 12.0 and x.grad == 12.0
    # a stale gradient from another graph is cleared too
    x.grad = 100.0
    y.backward()
    assert x.grad == 12.0


def test_deep_chain_does_not_hit_the_recursion_limit():
    x = Value(1.0)
    y = x
    for _ in range(5000):
        y = y + x * 0.001  # dy/dx = 1 + 5000 * 0.001 = 6
    y.backward()
    assert x.grad == pytest.approx(6.0, rel=1e-9)


def test_relu_gradient_at_zero_is_zero_like_torch():
    x = Value(0.0)
    x.relu().backward()
    t = torch.tensor(0.0, requires_grad=True)
    t.relu().backward()
    assert x.grad == t.grad.item() == 0.0


def test_clear_errors():
    with pytest.raises(TypeError, match="one number"):
        Value([1.0, 2.0])
    with pytest.raises(TypeError, match="constant"):
        Value(2.0) ** Value(3.0)
    with pytest.raises(ValueError, match="must be positive"):
        Value(-1.0).log()


def test_mermaid_and_drawing_show_every_node():
    a, b = Value(2.0, label="a"), Value(-3.0, label="b")
    loss = (a * b + a).tanh()
    loss.label = "loss"
    loss.backward()
    text = to_mermaid(loss)
    assert text.startswith("flowchart LR")
    assert text.count('["') == len(topological_order(loss)) == 5
    assert '(("tanh"))' in text and "loss | data" in text
    ax = draw_graph(loss)
    assert len(ax.texts) >= 5 and ax.get_title() == "Computation graph"
