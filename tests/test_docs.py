"""The API reference documents exactly the public API, and every public class and function has the
docstring sections the documentation standard asks for (numpydoc: Parameters when it takes any,
Examples always).

PUBLIC is every name in ``xpmlp.__all__`` except the public submodules it lists, plus every name
in the ``__all__`` of the public submodules. The documented names are the entries of the
``.. autosummary::`` directives of docs/api/*.rst, each under the ``.. currentmodule::`` before it.
Both are compared as dotted names (``xpmlp.MLP``, ``xpmlp.callbacks.History``): a name listed in
two ``__all__`` is documented under both.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

import xpmlp

ROOT = Path(__file__).resolve().parent.parent
API = ROOT / "docs" / "api"
SUBMODULES_IN_ALL = ("callbacks", "datasets", "metrics", "schedules")
PUBLIC_SUBMODULES = SUBMODULES_IN_ALL + ("distributed", "testing")


def public_names() -> list[str]:
    names = [f"xpmlp.{n}" for n in xpmlp.__all__ if n not in SUBMODULES_IN_ALL]
    for sub in PUBLIC_SUBMODULES:
        module = importlib.import_module(f"xpmlp.{sub}")
        names += [f"xpmlp.{sub}.{n}" for n in module.__all__]
    return names


def documented_names() -> list[tuple[str, str]]:
    """(dotted name, page) for every autosummary entry of docs/api/*.rst."""
    found = []
    for page in sorted(API.glob("*.rst")):
        module = None
        lines = page.read_text().splitlines()
        i = 0
        while i < len(lines):
            line = lines[i]
            m = re.match(r"\.\. (?:py:)?currentmodule:: *(\S+)", line)
            if m:
                module = None if m.group(1) == "None" else m.group(1)
            if re.match(r"\.\. autosummary::", line):
                i += 1
                while i < len(lines) and (not lines[i].strip() or lines[i].startswith((" ", "\t"))):
                    entry = lines[i].strip()
                    i += 1
                    if not entry or entry.startswith(":") or entry.startswith(".."):
                        continue
                    entry = entry.split()[0].lstrip("~")
                    full = entry if entry.startswith("xpmlp.") or module is None else f"{module}.{entry}"
                    found.append((full, page.name))
                continue
            i += 1
    return found


def resolve(dotted: str):
    module, _, attr = dotted.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def test_public_names_are_unique_per_module():
    names = public_names()
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def test_public_names_resolve():
    missing = []
    for name in public_names():
        try:
            resolve(name)
        except (AttributeError, ImportError):
            missing.append(name)
    assert not missing, f"listed in an __all__ but not importable: {missing}"


def test_api_reference_documents_exactly_the_public_names():
    documented = documented_names()
    assert documented, "no autosummary entries found in docs/api/*.rst"
    seen: dict[str, str] = {}
    twice = []
    for name, page in documented:
        if name in seen:
            twice.append(f"{name} ({seen[name]} and {page})")
        seen[name] = page
    public = set(public_names())
    missing = sorted(public - set(seen))
    extra = sorted(set(seen) - public)
    assert not (missing or extra or twice), (
        f"public names not in the API reference: {missing}; "
        f"documented names that are not public: {extra}; documented twice: {twice}")


def _kind(obj) -> str | None:
    if inspect.isclass(obj):
        return "class"
    if inspect.isfunction(obj) or inspect.isbuiltin(obj):
        return "function"
    return None  # constants (ACTIVATIONS, LOSSES, ...): a #: comment documents them


def _callables() -> list[str]:
    return [n for n in public_names() if _kind(resolve(n))]


def _constants() -> list[str]:
    return [n for n in public_names() if not _kind(resolve(n))]


def _own_init(cls):
    """The constructor whose parameters the class docstring documents, or None when the class
    keeps a built-in one (exceptions, warnings, object)."""
    for base in inspect.getmro(cls):
        if "__init__" in vars(base):
            init = vars(base)["__init__"]
            return init if inspect.isfunction(init) else None
    return None


def takes_parameters(obj) -> bool:
    """Whether obj has parameters to document: a function's own, or the ones its class's Python
    constructor takes (self excluded). *args and **kwargs count: numpydoc's PR01 asks for them."""
    target = obj
    if inspect.isclass(obj):
        target = _own_init(obj)
        if target is None:
            return False
    try:
        params = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return False
    if inspect.isclass(obj):
        params = params[1:]
    return bool(params)


def sections(doc: str) -> dict[str, str]:
    """numpydoc's reading of a docstring: section name -> its content (empty when absent)."""
    try:
        from numpydoc.docscrape import NumpyDocString
    except ImportError:  # a text check: a section title underlined with dashes
        found = {}
        lines = doc.splitlines()
        for i in range(len(lines) - 1):
            title, rule = lines[i].strip(), lines[i + 1].strip()
            if title and rule and set(rule) == {"-"} and len(rule) >= len(title) - 1:
                body = []
                for line in lines[i + 2:]:
                    if line.strip() and set(line.strip()) == {"-"}:
                        body.pop()
                        break
                    body.append(line)
                found[title] = "\n".join(body).strip()
        return found
    parsed = NumpyDocString(doc)
    return {"Parameters": "\n".join(p.name for p in parsed["Parameters"]),
            "Examples": "\n".join(parsed["Examples"]).strip()}


@pytest.mark.parametrize("name", _callables())
def test_public_docstring_has_the_standard_sections(name):
    obj = resolve(name)
    # its own docstring: inspect.getdoc would return a base class's text for a class without one
    doc = inspect.cleandoc(obj.__doc__) if obj.__doc__ else None
    assert doc, f"{name} has no docstring"
    found = sections(doc)
    problems = []
    if takes_parameters(obj) and not found.get("Parameters"):
        problems.append("no Parameters section")
    if ">>>" not in found.get("Examples", ""):
        problems.append("no Examples section with a >>> line")
    assert not problems, f"{name}: {', '.join(problems)}"


@pytest.mark.parametrize("name", _constants())
def test_public_constant_has_a_doc_comment(name):
    """Sphinx's autodata documents a constant by the ``#:`` comment above its assignment, in the
    module that defines it (the module of xpmlp that holds the same object and assigns it)."""
    obj, attr = resolve(name), name.rpartition(".")[2]
    assignment = re.compile(rf"^{re.escape(attr)}\s*(:[^=]*)?=")
    for path in sorted((ROOT / "xpmlp").glob("*.py")):
        if path.stem == "__main__":
            continue
        module = importlib.import_module("xpmlp" if path.stem == "__init__" else f"xpmlp.{path.stem}")
        if getattr(module, attr, None) is not obj:
            continue  # another module's constant of the same name (kernels_cupy.ACTIVATIONS)
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if assignment.match(line):
                assert i > 0 and lines[i - 1].lstrip().startswith("#:"), (
                    f"{name}: no #: comment above its assignment in xpmlp/{path.name}:{i + 1}")
                return
    pytest.fail(f"{name}: no module-level assignment of it found in xpmlp/*.py")
