"""A vectorised reverse-mode autograd on NumPy arrays (chapter 3.1, used by 3.2 and 3.3).

The same idea as :mod:`lm4f.autograd` (one ``_backward`` closure per operation, a topological
``backward()``), but every node holds a whole ``numpy`` array, so one matrix product replaces a
million scalar nodes. Three things are new compared with scalars:

* **Broadcasting.** ``x + b`` with ``x`` (N, D) and ``b`` (D,) copies ``b`` N times in the forward
  pass, so in the backward pass the N gradient rows are *summed* back into ``b``'s shape
  (:func:`unbroadcast`).
* **Matrix products.** For ``C = A @ B``: ``dA = dC @ B.T`` and ``dB = A.T @ dC``.
* **dtype.** Gradients keep the data's dtype (float32 in training, float64 in the tests).
* **Constants.** ``Tensor(images, requires_grad=False)`` (and every plain number or array mixed
  into an operation) gets no gradient, so the backward pass skips work nobody needs, such as
  d loss / d images in the first layer.

Semantics of ``backward()`` are those of :class:`lm4f.autograd.Value`: the gradients of the graph
below the root are reset and recomputed, so a repeated ``backward()`` never doubles them, and no
``zero_grad()`` is needed between training steps (each step builds a new graph).
"""

from __future__ import annotations

import time

import numpy as np

from lm4f.autograd import topological_order

__all__ = [
    "Tensor", "unbroadcast", "softmax_cross_entropy", "log_softmax", "dropout",
    "Linear", "MLP", "SGD", "accuracy", "mean_loss", "fit",
]


def unbroadcast(grad: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum ``grad`` over the axes that broadcasting added or stretched, back to ``shape``."""
    while grad.ndim > len(shape):  # leading axes that broadcasting added
        grad = grad.sum(axis=0)
    for axis, size in enumerate(shape):  # axes of size 1 that were stretched
        if size == 1 and grad.shape[axis] != 1:
            grad = grad.sum(axis=axis, keepdims=True)
    return grad


class Tensor:
    """An n-dimensional array that records how it was computed, for ``backward()``."""

    __array_priority__ = 100  # so ndarray * Tensor calls Tensor.__rmul__

    def __init__(self, data, _parents=(), _op="", label="", dtype=None, requires_grad=True):
        if isinstance(data, Tensor):
            raise TypeError("Tensor(Tensor(...)) is not allowed: use the Tensor itself.")
        array = np.asarray(data, dtype=dtype)
        if array.dtype.kind in "iub":  # integers and booleans become floats (gradients need them)
            array = array.astype(np.float64 if dtype is None else dtype)
        if array.dtype.kind != "f":
            raise TypeError(f"Tensor needs real numbers, got dtype {array.dtype}.")
        self.data = array
        self.grad = None
        self._parents = tuple(_parents)
        # a result needs a gradient if any input does; constants (requires_grad=False) are skipped
        self.requires_grad = any(p.requires_grad for p in self._parents) if self._parents else requires_grad
        self._backward = lambda: None
        self._op = _op
        self.label = label

    # ---- basics ------------------------------------------------------------------------
    @property
    def shape(self):
        return self.data.shape

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def dtype(self):
        return self.data.dtype

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        return f"Tensor(shape={self.shape}, dtype={self.dtype}, op={self._op or 'leaf'!r})"

    def numpy(self) -> np.ndarray:
        return self.data

    def item(self) -> float:
        return float(self.data)

    def _wrap(self, other) -> Tensor:
        if isinstance(other, Tensor):
            return other
        # a Python number or array constant takes our dtype, so float32 stays float32
        return Tensor(np.asarray(other, dtype=self.data.dtype), requires_grad=False)

    def _accumulate(self, grad: np.ndarray) -> None:
        if not self.requires_grad:
            return
        grad = unbroadcast(grad, self.shape)
        # never add in place: the same array may be another node's gradient too
        self.grad = grad if self.grad is None else self.grad + grad

    # ---- elementwise binary operations (broadcasting) ------------------------------------
    def __add__(self, other):
        other = self._wrap(other)
        out = Tensor(self.data + other.data, (self, other), "+")

        def _backward():
            self._accumulate(out.grad)
            other._accumulate(out.grad)

        out._backward = _backward
        return out

    def __mul__(self, other):
        other = self._wrap(other)
        out = Tensor(self.data * other.data, (self, other), "*")

        def _backward():
            if self.requires_grad:
                self._accumulate(out.grad * other.data)
            if other.requires_grad:
                other._accumulate(out.grad * self.data)

        out._backward = _backward
        return out

    def __truediv__(self, other):
        other = self._wrap(other)
        out = Tensor(self.data / other.data, (self, other), "/")

        def _backward():  # d(a/b)/da = 1/b, d(a/b)/db = -a/b^2
            self._accumulate(out.grad / other.data)
            other._accumulate(-out.grad * self.data / (other.data * other.data))

        out._backward = _backward
        return out

    def __pow__(self, exponent):
        if not isinstance(exponent, (int, float)):
            raise TypeError("Tensor ** k needs a constant number k.")
        out = Tensor(self.data ** exponent, (self,), f"**{exponent:g}")

        def _backward():
            self._accumulate(out.grad * exponent * self.data ** (exponent - 1))

        out._backward = _backward
        return out

    def __neg__(self):
        out = Tensor(-self.data, (self,), "neg")

        def _backward():
            self._accumulate(-out.grad)

        out._backward = _backward
        return out

    def __sub__(self, other):
        return self + (-self._wrap(other))

    def __radd__(self, other):
        return self + other

    def __rmul__(self, other):
        return self * other

    def __rsub__(self, other):
        return self._wrap(other) - self

    def __rtruediv__(self, other):
        return self._wrap(other) / self

    # ---- matrix product ----------------------------------------------------------------
    def __matmul__(self, other):
        other = self._wrap(other)
        if self.ndim == 0 or other.ndim == 0:
            raise ValueError("matmul needs arrays with at least one axis; use * for a scalar.")
        if self.shape[-1] != other.shape[0 if other.ndim == 1 else -2]:
            raise ValueError(f"matmul shapes {self.shape} @ {other.shape}: the last axis of the left "
                             f"({self.shape[-1]}) must equal the second-to-last of the right.")
        out = Tensor(self.data @ other.data, (self, other), "@")

        def _backward():
            # Work with at least 2-D views: a vector on the left is a row (1, K), on the right a column (K, 1).
            a = self.data[None, :] if self.ndim == 1 else self.data
            b = other.data[:, None] if other.ndim == 1 else other.data
            promoted_shape = np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1])
            g = out.grad.reshape(promoted_shape)  # (..., M, N): only axes of size 1 come back
            if self.requires_grad:  # skipped for the input images: saves a third of the work
                grad_a = g @ np.swapaxes(b, -1, -2)  # (..., M, N) @ (..., N, K) -> (..., M, K)
                self._accumulate(grad_a.squeeze(-2) if self.ndim == 1 else grad_a)
            if other.requires_grad:
                grad_b = np.swapaxes(a, -1, -2) @ g  # (..., K, M) @ (..., M, N) -> (..., K, N)
                other._accumulate(grad_b.squeeze(-1) if other.ndim == 1 else grad_b)

        out._backward = _backward
        return out

    def __rmatmul__(self, other):
        return self._wrap(other) @ self

    # ---- reductions --------------------------------------------------------------------
    def sum(self, axis=None, keepdims=False):
        out = Tensor(self.data.sum(axis=axis, keepdims=keepdims), (self,), "sum")

        def _backward():
            g = out.grad
            if axis is not None and not keepdims:  # put the summed axes back as size 1
                g = np.expand_dims(g, axis)
            self._accumulate(np.broadcast_to(g, self.shape))

        out._backward = _backward
        return out

    def mean(self, axis=None, keepdims=False):
        count = self.data.size if axis is None else int(np.prod([self.shape[a] for a in np.atleast_1d(axis)]))
        return self.sum(axis=axis, keepdims=keepdims) * (1.0 / count)

    def max(self, axis=None, keepdims=False):
        """Maximum; the gradient goes to the maximal entries (split evenly between ties)."""
        kept = self.data.max(axis=axis, keepdims=True)  # reduced axes kept as size 1
        out = Tensor(kept if keepdims else self.data.max(axis=axis), (self,), "max")

        def _backward():
            winners = (self.data == kept).astype(self.dtype)
            winners /= winners.sum(axis=axis, keepdims=True)
            self._accumulate(winners * out.grad.reshape(kept.shape))

        out._backward = _backward
        return out

    # ---- elementwise functions ---------------------------------------------------------
    def exp(self):
        out = Tensor(np.exp(self.data), (self,), "exp")

        def _backward():
            self._accumulate(out.grad * out.data)

        out._backward = _backward
        return out

    def log(self):
        out = Tensor(np.log(self.data), (self,), "log")

        def _backward():
            self._accumulate(out.grad / self.data)

        out._backward = _backward
        return out

    def relu(self):
        out = Tensor(np.maximum(self.data, 0), (self,), "relu")

        def _backward():  # 1 where x > 0, else 0 (0 at x = 0, as PyTorch)
            self._accumulate(out.grad * (self.data > 0))

        out._backward = _backward
        return out

    def tanh(self):
        out = Tensor(np.tanh(self.data), (self,), "tanh")

        def _backward():
            self._accumulate(out.grad * (1 - out.data * out.data))

        out._backward = _backward
        return out

    def sigmoid(self):
        out = Tensor(0.5 * (1 + np.tanh(0.5 * self.data)), (self,), "sigmoid")  # stable form

        def _backward():
            self._accumulate(out.grad * out.data * (1 - out.data))

        out._backward = _backward
        return out

    # ---- shape -------------------------------------------------------------------------
    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        out = Tensor(self.data.reshape(shape), (self,), "reshape")

        def _backward():
            self._accumulate(out.grad.reshape(self.shape))

        out._backward = _backward
        return out

    def transpose(self, *axes):
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else (axes or None)
        out = Tensor(np.transpose(self.data, axes), (self,), "transpose")

        def _backward():
            inverse = None if axes is None else np.argsort(axes)
            self._accumulate(np.transpose(out.grad, inverse))

        out._backward = _backward
        return out

    @property
    def T(self):
        return self.transpose()

    def __getitem__(self, index):
        if isinstance(index, Tensor):
            index = index.data.astype(np.int64)
        out = Tensor(self.data[index], (self,), "index")

        def _backward():
            grad = np.zeros_like(self.data)
            np.add.at(grad, index, out.grad)  # add.at: an index used twice gets both gradients
            self._accumulate(grad)

        out._backward = _backward
        return out

    # ---- reverse pass ------------------------------------------------------------------
    def backward(self, grad=None):
        """Fill ``.grad`` of every tensor below this one with d(self)/d(tensor).

        ``self`` must hold one number, unless ``grad`` (the upstream gradient, same shape) is given.
        Gradients of the graph are reset first: a second call gives the same result.
        """
        if not self.requires_grad:
            raise ValueError("backward() on a result that depends on no tensor with requires_grad=True: "
                             "nothing to differentiate.")
        if grad is None:
            if self.data.size != 1:
                raise ValueError(f"backward() on a tensor of shape {self.shape} needs grad= of that shape; "
                                 "reduce it to one number first (e.g. loss = x.mean()).")
            grad = np.ones_like(self.data)
        grad = np.asarray(grad, dtype=self.dtype)
        if grad.shape != self.shape:
            raise ValueError(f"grad has shape {grad.shape}, expected {self.shape}.")
        order = topological_order(self)
        for node in order:
            node.grad = None
        self.grad = grad
        for node in reversed(order):
            if node.requires_grad and node.grad is not None:
                node._backward()
        for node in order:  # every input that needs one gets an array (zeros if it had no influence)
            if node.grad is None and node.requires_grad:
                node.grad = np.zeros_like(node.data)


def log_softmax(logits: Tensor, axis: int = -1) -> Tensor:
    """log softmax, computed stably: x - max - log(sum(exp(x - max)))."""
    shifted = logits - logits.data.max(axis=axis, keepdims=True)  # a constant shift: no gradient needed
    return shifted - shifted.exp().sum(axis=axis, keepdims=True).log()


def softmax_cross_entropy(logits: Tensor, labels) -> Tensor:
    """Mean cross-entropy of integer ``labels`` (N,) under ``softmax(logits)`` (N, C), fused.

    Forward: loss = mean_i [ logsumexp(z_i) - z_i[y_i] ]. Backward in one step:
    d loss / d z = (softmax(z) - onehot(y)) / N, cheaper and more stable than chaining
    exp, sum, log and indexing.
    """
    labels = np.asarray(labels.data if isinstance(labels, Tensor) else labels)
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, C), got shape {logits.shape}.")
    if labels.shape != (logits.shape[0],) or labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be N={logits.shape[0]} integers (class ids), got shape "
                         f"{labels.shape} and dtype {labels.dtype}.")
    if labels.size and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise ValueError(f"labels must lie in 0..{logits.shape[1] - 1}, got {labels.min()}..{labels.max()}.")
    z = logits.data
    shifted = z - z.max(axis=1, keepdims=True)  # (N, C)
    log_sum = np.log(np.exp(shifted).sum(axis=1, keepdims=True))  # (N, 1)
    log_probs = shifted - log_sum  # (N, C)
    rows = np.arange(len(labels))
    out = Tensor(-log_probs[rows, labels].mean(), (logits,), "cross_entropy")

    def _backward():
        grad = np.exp(log_probs)  # softmax, (N, C)
        grad[rows, labels] -= 1
        logits._accumulate(grad * (out.grad / len(labels)))

    out._backward = _backward
    return out


def dropout(x: Tensor, rate: float, rng: np.random.Generator, training: bool = True) -> Tensor:
    """Inverted dropout: zero each unit with probability ``rate`` and scale the rest by 1/(1-rate).

    The scaling keeps the expected activation unchanged, so at evaluation (``training=False``)
    dropout is simply switched off.
    """
    if not 0 <= rate < 1:
        raise ValueError(f"dropout rate must be in [0, 1), got {rate}.")
    if not training or rate == 0:
        return x
    keep = (rng.random(x.shape) >= rate).astype(x.dtype) / np.asarray(1 - rate, dtype=x.dtype)
    return x * keep


# ---- a small MLP toolkit on top of Tensor (chapter 3.2 builds it step by step) -------------


class Linear:
    """y = x @ W + b with He (Kaiming) initialisation for ReLU layers: W ~ N(0, 2 / fan_in)."""

    def __init__(self, fan_in: int, fan_out: int, rng: np.random.Generator, dtype=np.float32, gain=2.0):
        self.weight = Tensor(rng.normal(0.0, np.sqrt(gain / fan_in), size=(fan_in, fan_out)).astype(dtype),
                             label="weight")  # (fan_in, fan_out)
        self.bias = Tensor(np.zeros(fan_out, dtype=dtype), label="bias")  # (fan_out,)

    def __call__(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.weight.shape[0]:
            raise ValueError(f"Linear expects inputs with {self.weight.shape[0]} features, got shape {x.shape}.")
        return x @ self.weight + self.bias

    def parameters(self):
        return [self.weight, self.bias]


class MLP:
    """ReLU MLP: sizes=(784, 256, 10) gives Linear-ReLU-(dropout)-Linear, returning logits.

    Hidden layers use He initialisation N(0, 2/fan_in); the output layer N(0, 1/fan_in).
    """

    def __init__(self, sizes, rng: np.random.Generator, dropout_rate: float = 0.0, dtype=np.float32):
        # He initialisation (gain 2) before each ReLU; gain 1 for the output layer, which has no ReLU
        gains = [2.0] * (len(sizes) - 2) + [1.0]
        self.layers = [Linear(a, b, rng, dtype, gain) for a, b, gain in zip(sizes[:-1], sizes[1:], gains)]
        self.dropout_rate = dropout_rate
        self.rng = rng
        self.training = True

    def __call__(self, x) -> Tensor:
        x = x if isinstance(x, Tensor) else Tensor(x, requires_grad=False)  # images need no gradient
        for layer in self.layers[:-1]:
            x = layer(x).relu()  # (N, hidden)
            x = dropout(x, self.dropout_rate, self.rng, self.training)
        return self.layers[-1](x)  # (N, classes) logits

    def parameters(self):
        return [p for layer in self.layers for p in layer.parameters()]

    def predict(self, images: np.ndarray, batch_size: int = 2048) -> np.ndarray:
        """Class ids for (N, D) inputs, without building a graph, dropout off."""
        predictions = []
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size]
            for layer in self.layers[:-1]:
                x = np.maximum(x @ layer.weight.data + layer.bias.data, 0)
            last = self.layers[-1]
            predictions.append((x @ last.weight.data + last.bias.data).argmax(axis=1))
        return np.concatenate(predictions)


class SGD:
    """SGD with momentum and weight decay, updating parameters in place (as ``torch.optim.SGD``).

    g = grad + weight_decay * p;   v = momentum * v + g;   p = p - lr * v
    Adding weight_decay * p to the gradient is exactly an L2 penalty weight_decay/2 * ||p||^2
    in the loss.
    """

    def __init__(self, parameters, lr: float, momentum: float = 0.9, weight_decay: float = 0.0):
        self.parameters = list(parameters)
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.velocity = [np.zeros_like(p.data) for p in self.parameters]

    def step(self):
        for p, v in zip(self.parameters, self.velocity):
            if p.grad is None:
                continue
            g = p.grad + self.weight_decay * p.data if self.weight_decay else p.grad
            v *= self.momentum
            v += g
            p.data -= self.lr * v


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.asarray(predictions) == np.asarray(labels)))


def mean_loss(model: MLP, images: np.ndarray, labels: np.ndarray, batch_size: int = 4096) -> float:
    """Mean cross-entropy over a data set, dropout off, no graph kept."""
    training, model.training = model.training, False
    total = 0.0
    for start in range(0, len(images), batch_size):
        batch = slice(start, start + batch_size)
        logits = model(images[batch])
        total += softmax_cross_entropy(logits, labels[batch]).item() * len(labels[batch])
    model.training = training
    return total / len(images)


def fit(model: MLP, optimizer: SGD, train_images, train_labels, val_images, val_labels, *,
        epochs: int, batch_size: int, rng: np.random.Generator, augment=None,
        decay_lr: bool = True, patience: int | None = None) -> dict:
    """The chapter 3.2 training loop, with early stopping: returns the history per epoch.

    Each epoch: shuffle, then for every mini-batch augment (optional), forward, loss, backward,
    SGD step; the learning rate falls linearly to 0 over the run when ``decay_lr``. After the
    epoch the validation loss and accuracy are measured. With ``patience``, training stops when
    the validation loss has not improved for ``patience`` epochs and the best weights come back.
    A loss that becomes NaN or infinite (learning rate too high) stops the run too.
    """
    with np.errstate(over="ignore", invalid="ignore"):  # a diverging run is reported, not warned about
        return _fit(model, optimizer, train_images, train_labels, val_images, val_labels, epochs=epochs,
                    batch_size=batch_size, rng=rng, augment=augment, decay_lr=decay_lr, patience=patience)


def _fit(model, optimizer, train_images, train_labels, val_images, val_labels, *,
         epochs, batch_size, rng, augment, decay_lr, patience) -> dict:
    history = {"epoch": [], "train_loss": [], "val_loss": [], "val_accuracy": [], "seconds": []}
    base_lr = optimizer.lr
    steps_per_epoch = -(-len(train_images) // batch_size)
    total_steps, step = epochs * steps_per_epoch, 0
    best_loss, best_weights, waited = np.inf, None, 0
    history["stopped_early"] = False
    history["diverged"] = False
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        model.training = True
        order = rng.permutation(len(train_images))
        running, seen = 0.0, 0
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            images = train_images[batch]  # (B, 784)
            if augment is not None:
                images = augment(images, rng)
            if decay_lr:
                optimizer.lr = base_lr * (1 - step / total_steps)
            loss = softmax_cross_entropy(model(images), train_labels[batch])
            loss.backward()
            optimizer.step()
            step += 1
            running += loss.item() * len(batch)
            seen += len(batch)
        train_loss = running / seen
        model.training = False
        val_loss = mean_loss(model, val_images, val_labels)
        val_accuracy = accuracy(model.predict(val_images), val_labels)
        for key, value in zip(("epoch", "train_loss", "val_loss", "val_accuracy", "seconds"),
                              (epoch, train_loss, val_loss, val_accuracy, time.perf_counter() - started)):
            history[key].append(value)
        if not np.isfinite(train_loss) or not np.isfinite(val_loss):
            history["diverged"] = True
            break
        if patience is not None:
            if val_loss < best_loss:
                best_loss, waited = val_loss, 0
                best_weights = [p.data.copy() for p in model.parameters()]
            else:
                waited += 1
                if waited >= patience:
                    history["stopped_early"] = True
                    break
    if patience is not None and best_weights is not None:
        for p, saved in zip(model.parameters(), best_weights):
            p.data[...] = saved
        history["best_epoch"] = history["epoch"][int(np.argmin(history["val_loss"]))]
    optimizer.lr = base_lr
    model.training = False
    return history
