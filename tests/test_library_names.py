"""One name, one meaning: a public name defined in two lm4f modules must be the same object.

``lm4f.tensor.fit`` and ``lm4f.vision.fit`` once meant two different training loops, ``MLP`` and
``load_minilm`` two different models; a learner who reads ``fit(...)`` in one chapter should not
meet a different ``fit`` in another.
"""

import importlib
import inspect
import pkgutil

import lm4f

SKIP = {"lm4f.ddp_step"}   # a script run by torchrun
# Names that mean the same role in every module that has one: ``create_app()`` builds that app's FastAPI
# server (lm4f.apps.*), ``main(argv)`` is that module's command line.
SAME_ROLE = {"create_app", "main"}


def public_definitions():
    """(name -> {module: object}) for every public function and class defined in an lm4f module."""
    found = {}
    for info in pkgutil.walk_packages(lm4f.__path__, "lm4f."):
        if info.name in SKIP or info.name.endswith(".__main__"):   # command lines: they run on import
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if name.startswith("_") or not (inspect.isfunction(value) or inspect.isclass(value)):
                continue
            if getattr(value, "__module__", None) != module.__name__:
                continue                                   # imported here, defined elsewhere
            found.setdefault(name, {})[module.__name__] = value
    return found


def test_each_public_name_means_one_thing_across_the_library():
    clashes = {name: sorted(where) for name, where in public_definitions().items()
               if len(where) > 1 and name not in SAME_ROLE}
    # The exercise modules each define the same check helpers per chapter on purpose (check_*, reference_*):
    # those live in lm4f.exercises.chXX and are reached as chXX.name, so they are left out here.
    clashes = {name: where for name, where in clashes.items()
               if not all(module.startswith("lm4f.exercises.") for module in where)}
    assert clashes == {}, f"one name, two meanings: {clashes}"


def test_the_check_sees_the_names_it_guards():
    names = public_definitions()
    assert set(names["fit"]) == {"lm4f.tensor"}
    assert set(names["load_minilm"]) == {"lm4f.nlp"}
    assert set(names["count_parameters"]) == {"lm4f.utils"}
    assert "FeedForward" in names and "MLP" in names and set(names["MLP"]) == {"lm4f.tensor"}
    assert len(names["create_app"]) >= 4          # the same-role exemption covers real duplicates
