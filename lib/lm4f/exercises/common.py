"""What the chapter check modules share: refusing delegation, and verdicts that read the same on every CPU.

``forbid(exercise, names)`` is a context manager: while a learner's function runs inside it, each
named function (``"torch.optim.Adam"``, ``"torch.Tensor.backward"``, ``"lm4f.cost.gpt2_params"``)
is replaced by a stand-in that raises :class:`lm4f.checks.ExerciseError`, and everything is put
back afterwards. ``forbid_names(exercise, function, names)`` also reads the function's code for
those names, which catches a name imported before the check ran (``from torch.optim import Adam``).
Checks compute their references outside the ``with`` block.

``agree(name, mine, reference, atol, rtol, hint)`` is :func:`lm4f.checks.check_close` with a verdict line
that states the tolerance met instead of the raw difference (which moves in its last digits from
one CPU's float kernels to another's), so a solved notebook prints the same text everywhere.
"""

from __future__ import annotations

import importlib
import io
import types
from contextlib import contextmanager, redirect_stdout

from lm4f.checks import ExerciseError, check_close

# Calling any of these computes a gradient for you: a backward rule written "by hand" must not.
AUTOGRAD = ("torch.Tensor.backward", "torch.autograd.backward", "torch.autograd.grad",
            "torch.autograd.functional.jacobian", "torch.autograd.functional.vjp",
            "torch.func.grad", "torch.func.vjp", "torch.func.jacrev", "torch.func.jacfwd")


def _resolve(dotted: str):
    """(owner, attribute) for a dotted path, importing the longest module prefix; None if absent."""
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            owner = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:-1]:
            owner = getattr(owner, part, None)
            if owner is None:
                return None
        return (owner, parts[-1]) if hasattr(owner, parts[-1]) else None
    return None


def _message(exercise: str, dotted: str) -> str:
    return (f"Exercise {exercise}: your answer calls {dotted}, which does the very work this exercise asks "
            "of you. Derive it and write it out yourself.")


@contextmanager
def forbid(exercise: str, names):
    """While the block runs, calling any of ``names`` raises ExerciseError (restored afterwards)."""
    saved = []
    try:
        for dotted in names:
            found = _resolve(dotted)
            if found is None:
                continue
            owner, attribute = found

            def refuse(*args, _dotted=dotted, **kwargs):
                raise ExerciseError(_message(exercise, _dotted))

            saved.append((owner, attribute, owner.__dict__.get(attribute, _MISSING)
                          if isinstance(owner, type) else getattr(owner, attribute)))
            setattr(owner, attribute, refuse)
        yield
    finally:
        for owner, attribute, original in reversed(saved):
            if original is _MISSING:
                delattr(owner, attribute)
            else:
                setattr(owner, attribute, original)


_MISSING = object()


def _code_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names) | set(code.co_freevars)
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            names |= _code_names(constant)
    return names


def names_used(function) -> set[str]:
    """Global and attribute names the function's code (and the code nested in it) refers to."""
    code = getattr(function, "__code__", None)
    return _code_names(code) if code is not None else set()


def forbid_names(exercise: str, function, names) -> None:
    """Raise ExerciseError when ``function``'s code refers to the last part of any dotted name."""
    used = names_used(function)
    for dotted in names:
        if dotted.rsplit(".", 1)[-1] in used:
            raise ExerciseError(_message(exercise, dotted))


def agree(name: str, mine, reference, atol: float = 1e-6, rtol: float = 1e-5, hint: str = "") -> None:
    """Check ``mine`` against ``reference`` like ``compare``; print the tolerance met, not the difference."""
    printed = io.StringIO()
    try:
        with redirect_stdout(printed):
            check_close(name, mine, reference, atol=atol, rtol=rtol, hint=hint)
    except ExerciseError:
        print(printed.getvalue(), end="")        # the WRONG line, with its difference
        raise
    if atol == 0 and rtol == 0:
        print(f"{name:28s} OK     exactly equal")
    else:
        print(f"{name:28s} OK     within tolerance (atol {atol:g}" + (f", rtol {rtol:g})" if rtol else ")"))
