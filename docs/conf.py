"""Sphinx configuration of the xpmlp documentation.

Build (CI: warnings are errors, every internal reference checked, gallery not executed)::

    python -m sphinx -W --keep-going -n -b html -D plot_gallery=0 docs docs/_build/html

Full build (every example in examples/ runs and shows its output and figures)::

    python -m sphinx -W --keep-going -n -b html docs docs/_build/html
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # document this checkout's xpmlp, not an installed copy
sys.path.insert(0, str(Path(__file__).resolve().parent))  # xpmlp_gallery (sphinx-gallery hooks)
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("XPMLP_DEVICE", "cpu")  # the gallery's runs mean the same on any machine

import xpmlp  # noqa: E402

project = "xpmlp"
author = "the xpmlp developers"
copyright = "the xpmlp developers, BSD-3-Clause"
release = version = xpmlp.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints",
                    # sphinx-gallery writes these next to the sources; they are generated
                    "auto_examples/*.py", "auto_examples/*.ipynb", "auto_examples/*.zip"]
root_doc = "index"
default_role = "literal"  # a single-backtick `name` is code, never a dangling reference

# -- references --------------------------------------------------------------------------------
# Every internal cross-reference must resolve (sphinx -n). intersphinx is not used: CI has no
# network, so a reference to a NumPy, Python or scikit-learn object could not resolve. Nothing
# this configuration generates needs an exception: signatures carry no type hints
# (autodoc_typehints = "none"), numpydoc writes parameter, return and Raises types as text
# (numpydoc_xref_param_type = False) and class pages show no base classes. Docstrings name
# third-party objects in double backticks, not with roles, so the list stays empty.
nitpicky = True
nitpick_ignore: list[tuple[str, str]] = []

# -- autodoc / autosummary -----------------------------------------------------------------------
autosummary_generate = True
autosummary_imported_members = False
autodoc_typehints = "none"  # numpydoc sections carry the types; hints name third-party types
autodoc_default_options = {"member-order": "bysource"}
# An override without a docstring of its own (Dense.backward) is not listed again: the base
# class (Layer.backward) documents it.
autodoc_inherit_docstrings = False
add_module_names = False

# -- numpydoc ----------------------------------------------------------------------------------
numpydoc_show_class_members = False  # the autosummary class template lists members (autodoc)
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = True
numpydoc_xref_param_type = False  # types are text: without intersphinx they could not resolve
numpydoc_validation_checks = {"GL08", "PR01", "PR02", "RT01"}
numpydoc_validation_exclude = {
    # dunder methods (__call__, __repr__, __init__, ...): documented by the class docstring
    r"\.__\w+__$",
    # scikit-learn's BaseEstimator / ClassifierMixin / RegressorMixin methods, inherited by
    # MLPClassifier and MLPRegressor (or xpmlp's same-behaviour fallbacks without scikit-learn):
    # scikit-learn's text, not ours
    r"\.(get_params|set_params|score|get_metadata_routing|set_\w+_request)$",
}

# -- sphinx-gallery ----------------------------------------------------------------------------
# Every example runs at build time (a file that filename_pattern does not match is listed but not
# run) except distributed_mnist.py, which needs mpiexec to show anything: it stays in the gallery,
# not run. MNIST is read from $XPMLP_DATA, the cache or a download; the UCI heart file cannot be
# downloaded, so without $XPMLP_DATA/uci-heart/processed.cleveland.data heart_disease.py is listed
# but not run (and the build says so).
NOT_RUN = ["distributed_mnist"]
HEART = Path(os.environ.get("XPMLP_DATA") or "/nonexistent") / "uci-heart" / "processed.cleveland.data"
if not HEART.is_file():
    NOT_RUN.append("heart_disease")
    print(f"sphinx-gallery: examples/heart_disease.py is not run: {HEART} not found "
          "(set XPMLP_DATA to a folder with uci-heart/processed.cleveland.data)")

sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/(?!(%s)\.py$)[^/]+\.py$" % "|".join(NOT_RUN),
    "ignore_pattern": r"__init__\.py",
    "download_all_examples": False,
    # each example runs as `python examples/<name>.py` would: no arguments, its own __doc__
    "reset_argv": "xpmlp_gallery.run_as_script",
    # figures: those left open (matplotlib's scraper) and the PNG files an example saves
    "image_scrapers": ("matplotlib", "xpmlp_gallery.saved_figures"),
    "reset_modules": ("matplotlib", "xpmlp_gallery.record_saved_figures"),
    "remove_config_comments": True,
    "matplotlib_animations": False,
    "show_memory": False,
    "min_reported_time": 1,
}

# -- HTML ----------------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"xpmlp {release}"
html_theme_options = {
    "navigation_depth": 2,
    "show_toc_level": 2,
    "navbar_align": "left",
    "secondary_sidebar_items": ["page-toc"],
}
html_sidebars = {"auto_examples/index": []}
html_show_sourcelink = False


# -- hooks ---------------------------------------------------------------------------------------
def _public_objects() -> dict[int, str]:
    """id(object) -> its public name, for every class, function and constant table of the public API."""
    names = [f"xpmlp.{n}" for n in xpmlp.__all__ if n not in ("callbacks", "datasets", "metrics", "schedules")]
    for sub in ("callbacks", "datasets", "metrics", "schedules", "distributed", "testing"):
        module = importlib.import_module(f"xpmlp.{sub}")
        names += [f"xpmlp.{sub}.{n}" for n in module.__all__]
    found = {}
    for full in names:
        module, _, attr = full.rpartition(".")
        obj = getattr(importlib.import_module(module), attr)
        if not isinstance(obj, (int, float, str, bool, type(None))):  # classes, functions, tables
            found[id(obj)] = full
    return found


PUBLIC_OBJECTS = _public_objects()
_current_class: list[type] = []


def _note_class(app, what, name, obj, options, lines):
    # The class a class page is about; its members are filtered (below) while it is documented.
    if what in ("class", "exception") and inspect.isclass(obj):
        _current_class[:] = [obj]


def _defining_class(owner: type, name: str) -> type | None:
    for cls in inspect.getmro(owner):
        if name in vars(cls):
            return cls
    return None


def _skip_member(app, what, name, obj, skip, options):
    if what == "module":
        # Internals pages (automodule): a public class, function or constant is documented once, on its
        # API reference page; references to its defining module's name resolve there (canonical).
        if id(obj) in PUBLIC_OBJECTS:
            return True
        return None
    if what in ("class", "exception") and _current_class:
        owner = _current_class[0]
        cls = _defining_class(owner, name)
        if cls is owner and _foreign(obj):
            # set_fit_request and its kind: scikit-learn puts them on each estimator class
            return True
        if cls is None or cls is owner:
            return None
        # An inherited member is shown when an xpmlp base that has no page of its own defines it
        # (MLPClassifier's fit machinery in _BaseMLP); a public base (Layer, Callback, ...) shows
        # it on its own page; Python's and scikit-learn's are not ours to document.
        if not cls.__module__.startswith("xpmlp") or not cls.__name__.startswith("_"):
            return True
    return None


def _foreign(obj) -> bool:
    """Whether a class member is a function or property written outside xpmlp."""
    if isinstance(obj, property):
        obj = obj.fget
    obj = getattr(obj, "__func__", obj)
    kind = type(obj).__module__
    if not callable(obj):
        # a descriptor of another library (scikit-learn's RequestMethod); plain values are ours
        return hasattr(obj, "__get__") and kind != "builtins" and not kind.startswith("xpmlp")
    module = getattr(inspect.unwrap(obj), "__module__", None)
    return module is not None and not module.startswith("xpmlp")


def _public_name(dotted: str) -> str | None:
    """The documented public name of ``dotted`` (an object, or a member of one, named by its
    defining module: ``xpmlp.backend.resolve`` -> ``xpmlp.resolve``), or None."""
    parts = dotted.split(".")
    if parts[0] != "xpmlp":
        return None
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        break
    else:
        return None
    for j in range(i, len(parts)):
        obj = getattr(obj, parts[j], None)
        if obj is None:
            return None
        public = PUBLIC_OBJECTS.get(id(obj))
        if public is not None:
            return ".".join([public, *parts[j + 1:]])
    return None


def _resolve_defining_name(app, env, node, contnode):
    # A public class or function is documented once, under its public name (xpmlp.resolve), and its
    # defining module's name (xpmlp.backend.resolve) is the same object: a reference to that name,
    # or to a member of it, resolves to the public page. Anything else stays unresolved (an error).
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"].lstrip(".~")
    module, cls = node.get("py:module"), node.get("py:class")
    candidates = [target]
    if module and cls:
        candidates.append(f"{module}.{cls}.{target}")
    if module:
        candidates.append(f"{module}.{target}")
    domain = env.get_domain("py")
    for candidate in candidates:
        public = _public_name(candidate)
        if public is None or public == candidate:
            continue
        found = domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], public, node, contnode)
        if found is not None:
            return found
    return None


def _module_constants() -> dict[str, list[tuple[object, str]]]:
    """Constant name -> (object, defining module) for every module-level name in xpmlp."""
    out: dict[str, list[tuple[object, str]]] = {}
    for info in pkgutil.iter_modules(xpmlp.__path__):
        if info.name == "__main__":
            continue
        module = importlib.import_module(f"xpmlp.{info.name}")
        for key, value in vars(module).items():
            if key.isupper():
                out.setdefault(key, []).append((value, module.__name__))
    return out


def _constant_doc(app, what, name, obj, options, lines):
    # A constant re-exported by xpmlp (xpmlp.ACTIVATIONS is xpmlp.layers.ACTIVATIONS) is documented
    # by the #: comment above its assignment in the module that defines it; autodoc only reads the
    # comments of the module named in the directive, so take the defining module's.
    if what not in ("data", "attribute") or "." not in name:
        return
    short = name.rpartition(".")[2]
    from sphinx.pycode import ModuleAnalyzer

    for value, module in _module_constants().get(short, []):
        if value is not obj or module == name.rpartition(".")[0]:
            continue
        comment = ModuleAnalyzer.for_module(module).find_attr_docs().get(("", short))
        if comment:
            lines[:] = [line for line in comment]
            return




def setup(app):
    app.connect("autodoc-process-docstring", _note_class, priority=100)
    app.connect("autodoc-process-docstring", _constant_doc, priority=200)
    app.connect("autodoc-skip-member", _skip_member)
    app.connect("missing-reference", _resolve_defining_name)
