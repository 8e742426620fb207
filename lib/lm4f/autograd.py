"""A scalar reverse-mode autograd engine, small enough to read in one sitting (chapter 3.1).

Every number is a :class:`Value`. Each operation returns a new ``Value`` that remembers its
inputs (``_parents``) and a closure ``_backward`` that applies the chain rule for that one
operation: it takes the gradient that arrived at the output (``out.grad``) and adds its share
to each input's ``grad``.

``loss.backward()`` then

1. orders the graph topologically (every node after all the nodes it was computed from),
2. sets every gradient in the graph to zero and ``loss.grad = 1``,
3. calls ``_backward`` of every node in reverse topological order.

Semantics of a repeated ``backward()``: step 2 makes ``backward()`` *recompute* the gradients of
the graph below the root, so calling it twice gives the same gradients as calling it once
(never silently doubled). To accumulate gradients over several losses, build one loss
(``total = loss_a + loss_b``) or add the ``.grad`` values up yourself.

A node used twice (``y = x * x``) receives the sum of both contributions, because the chain rule
adds the gradients of every path: that is why each ``_backward`` *adds* (``+=``) and why the
topological order matters (a node's gradient is complete only after all its users are done).
"""

from __future__ import annotations

import math

__all__ = ["Value", "topological_order", "to_mermaid", "draw_graph"]


class Value:
    """One scalar in the computation graph: ``data``, ``grad`` and how it was made."""

    __slots__ = ("data", "grad", "_parents", "_backward", "_op", "label")

    def __init__(self, data, _parents=(), _op="", label=""):
        if isinstance(data, Value):
            raise TypeError("Value(Value(...)) is not allowed: use the Value itself.")
        try:
            self.data = float(data)
        except (TypeError, ValueError):
            raise TypeError(f"Value holds one number, not {type(data).__name__} {data!r}.") from None
        self.grad = 0.0
        self._parents = tuple(_parents)
        self._backward = lambda: None
        self._op = _op
        self.label = label

    def __repr__(self):
        name = f"{self.label}=" if self.label else ""
        return f"Value({name}{self.data:.4g}, grad={self.grad:.4g})"

    # ---- arithmetic --------------------------------------------------------------------
    def __add__(self, other):
        other = _wrap(other)
        out = Value(self.data + other.data, (self, other), "+")

        def _backward():  # d(a+b)/da = 1, d(a+b)/db = 1
            self.grad += out.grad
            other.grad += out.grad

        out._backward = _backward
        return out

    def __mul__(self, other):
        other = _wrap(other)
        out = Value(self.data * other.data, (self, other), "*")

        def _backward():  # d(ab)/da = b, d(ab)/db = a
            self.grad += other.data * out.grad
            other.grad += self.data * out.grad

        out._backward = _backward
        return out

    def __pow__(self, exponent):
        if not isinstance(exponent, (int, float)):
            raise TypeError("Value ** k needs a constant number k (use exp/log for a Value exponent).")
        out = Value(self.data ** exponent, (self,), f"**{exponent:g}")

        def _backward():  # d(a^k)/da = k a^(k-1)
            self.grad += exponent * self.data ** (exponent - 1) * out.grad

        out._backward = _backward
        return out

    def exp(self):
        out = Value(math.exp(self.data), (self,), "exp")

        def _backward():  # d(e^a)/da = e^a
            self.grad += out.data * out.grad

        out._backward = _backward
        return out

    def log(self):
        if self.data <= 0:
            raise ValueError(f"log of {self.data:g}: the argument must be positive.")
        out = Value(math.log(self.data), (self,), "log")

        def _backward():  # d(ln a)/da = 1/a
            self.grad += out.grad / self.data

        out._backward = _backward
        return out

    def tanh(self):
        t = math.tanh(self.data)
        out = Value(t, (self,), "tanh")

        def _backward():  # d(tanh a)/da = 1 - tanh(a)^2
            self.grad += (1.0 - t * t) * out.grad

        out._backward = _backward
        return out

    def sigmoid(self):
        s = 1.0 / (1.0 + math.exp(-self.data)) if self.data >= 0 else math.exp(self.data) / (1.0 + math.exp(self.data))
        out = Value(s, (self,), "sigmoid")

        def _backward():  # d(sigma a)/da = sigma(a)(1 - sigma(a))
            self.grad += s * (1.0 - s) * out.grad

        out._backward = _backward
        return out

    def relu(self):
        out = Value(self.data if self.data > 0 else 0.0, (self,), "relu")

        def _backward():  # 1 where a > 0, else 0 (at a = 0 we take 0, as PyTorch does)
            self.grad += (1.0 if self.data > 0 else 0.0) * out.grad

        out._backward = _backward
        return out

    # ---- the rest is built from the operations above -----------------------------------
    def __neg__(self):
        return self * -1.0

    def __sub__(self, other):
        return self + (-_wrap(other))

    def __truediv__(self, other):
        return self * _wrap(other) ** -1.0

    def __radd__(self, other):
        return self + other

    def __rmul__(self, other):
        return self * other

    def __rsub__(self, other):
        return _wrap(other) - self

    def __rtruediv__(self, other):
        return _wrap(other) / self

    # ---- reverse pass ------------------------------------------------------------------
    def backward(self):
        """Fill ``.grad`` of every node this value depends on with d(self)/d(node).

        Gradients of the whole graph are reset first, so a second call gives the same result.
        """
        order = topological_order(self)
        for node in order:
            node.grad = 0.0
        self.grad = 1.0
        for node in reversed(order):
            node._backward()


def _wrap(value) -> Value:
    return value if isinstance(value, Value) else Value(value)


def topological_order(root) -> list:
    """Nodes below ``root`` (``root`` last), each after every node it was computed from.

    Iterative depth-first search, so deep graphs do not hit Python's recursion limit. Works for
    any object with a ``_parents`` tuple (``Value`` here, ``lm4f.tensor.Tensor`` too).
    """
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        node, parents_done = stack.pop()
        if parents_done:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        for parent in node._parents:
            if id(parent) not in visited:
                stack.append((parent, False))
    return order


def _node_text(node) -> str:
    name = f"{node.label} | " if node.label else ""
    return f"{name}data {node.data:.3g} | grad {node.grad:.3g}"


def to_mermaid(root) -> str:
    """The graph as Mermaid flowchart text (renders on the docs site and on GitHub)."""
    order = topological_order(root)
    ids = {id(node): f"n{i}" for i, node in enumerate(order)}
    lines = ["flowchart LR"]
    for node in order:
        node_id = ids[id(node)]
        lines.append(f'    {node_id}["{_node_text(node)}"]')
        if node._op:
            lines.append(f'    {node_id}_op(("{node._op}"))')
            lines.append(f"    {node_id}_op --> {node_id}")
            for parent in node._parents:
                lines.append(f"    {ids[id(parent)]} --> {node_id}_op")
    return "\n".join(lines)


def draw_graph(root, ax=None, title="Computation graph"):
    """Draw the graph with matplotlib: one column per depth, data and grad in every box.

    Depth is the longest path from a leaf, so inputs are on the left and ``root`` on the right;
    the operation that made a node is written on the arrows into it.
    """
    import matplotlib.pyplot as plt

    order = topological_order(root)
    depth = {}
    for node in order:  # parents come first in topological order
        depth[id(node)] = 1 + max((depth[id(p)] for p in node._parents), default=-1)
    columns: dict[int, list] = {}
    for node in order:
        columns.setdefault(depth[id(node)], []).append(node)
    position = {}
    for column, nodes in columns.items():
        for row, node in enumerate(nodes):
            position[id(node)] = (column * 3.0, -(row - (len(nodes) - 1) / 2) * 1.4)
    if ax is None:
        width = 3.0 + 2.2 * len(columns)
        height = 1.5 + 0.9 * max(len(nodes) for nodes in columns.values())
        _, ax = plt.subplots(figsize=(width, height))
    for node in order:
        x, y = position[id(node)]
        for parent in node._parents:
            px, py = position[id(parent)]
            ax.annotate("", xy=(x - 0.9, y), xytext=(px + 0.9, py),
                        arrowprops=dict(arrowstyle="->", color="0.5", lw=1))
        if node._op:
            ax.text(x - 1.2, y + 0.32, node._op, ha="center", va="center", fontsize=9,
                    color="tab:red", fontweight="bold")
        label = (node.label + "\n") if node.label else ""
        ax.text(x, y, f"{label}data {node.data:.3g}\ngrad {node.grad:.3g}", ha="center", va="center",
                fontsize=8, bbox=dict(boxstyle="round", facecolor="white", edgecolor="tab:blue"))
    xs = [p[0] for p in position.values()]
    ys = [p[1] for p in position.values()]
    ax.set_xlim(min(xs) - 1.3, max(xs) + 1.3)
    ax.set_ylim(min(ys) - 0.9, max(ys) + 0.9)
    ax.set_title(title)
    ax.set_xlabel("depth (longest path from an input) ->")
    ax.set_xticks([])
    ax.set_yticks([])
    return ax
