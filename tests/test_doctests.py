"""The examples in the library's docstrings run and give what they show (doctest)."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil

import pytest

import tierplan

# the layer folders install as tierplan subpackages through package-dir, so tierplan.__path__ holds
# none of them: walk each one
LAYERS = ("partition", "devices", "planner", "runtime", "simulations")

def _modules_with_examples() -> list[str]:
    """Every tierplan module whose source holds a `>>>` example (found without importing it)."""
    out = []
    layers = [importlib.import_module(f"tierplan.{p}") for p in LAYERS]
    infos = [i for pkg in (tierplan, *layers) for i in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")]
    for info in infos:
        spec = importlib.util.find_spec(info.name)
        origin = spec.origin if spec is not None else None
        if origin and origin.endswith(".py") and ">>> " in open(origin, encoding="utf-8").read():
            out.append(info.name)
    return sorted(out)


MODULES = _modules_with_examples()


def test_the_library_has_examples() -> None:
    """The walk finds the packages' examples (an empty list would make the next test vacuous)."""
    assert len(MODULES) >= 5 and any(m.startswith("tierplan.planner.") for m in MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    """Each example in the module's docstrings prints what the docstring says it prints."""
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                             verbose=False, report=True)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} failed"


def test_enough_examples_run() -> None:
    """The examples that run number at least a dozen (not only illustrations marked to skip)."""
    finder = doctest.DocTestFinder()
    examples = sum(len(t.examples) for n in MODULES for t in finder.find(importlib.import_module(n)))
    assert examples >= 12, examples
