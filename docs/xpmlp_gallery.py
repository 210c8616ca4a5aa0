"""sphinx-gallery hooks of the xpmlp documentation (named in docs/conf.py's sphinx_gallery_conf)."""

from __future__ import annotations

import ast
from pathlib import Path


def run_as_script(gallery_conf, script_vars) -> list[str]:
    """``reset_argv``: run each example as ``python examples/<name>.py`` would, with no arguments.

    sphinx-gallery runs an example with ``__doc__ = ""`` (its docstring becomes the page's text);
    the examples' ``__main__`` blocks read their docstring (``argparse``'s description), so the
    example's namespace gets the file's real docstring back. Returns the command-line arguments:
    none, so every example runs with its defaults.
    """
    source = Path(script_vars["src_file"]).read_text(encoding="utf-8")
    script_vars["example_globals"]["__doc__"] = ast.get_docstring(ast.parse(source), clean=False)
    return []


# Figures the examples save. Most examples draw with matplotlib's object API (History.plot) or
# close their pyplot figure after saving it, so sphinx-gallery's matplotlib scraper, which takes
# the figures still open, finds none: the gallery shows the PNG files they write instead.
_saved: list[bytes] = []


def record_saved_figures(gallery_conf, fname) -> None:
    """``reset_modules``: before each example, forget the figures saved so far and make sure
    ``Figure.savefig`` keeps a copy of every PNG it writes (the file itself may be in a temporary
    folder that the example removes)."""
    from matplotlib.figure import Figure

    if not getattr(Figure.savefig, "_xpmlp_gallery", False):
        original = Figure.savefig

        def savefig(self, fname, *args, **kwargs):
            result = original(self, fname, *args, **kwargs)
            try:
                path = Path(fname)
            except TypeError:  # a file object
                return result
            if path.suffix.lower() == ".png" and path.is_file():
                _saved.append(path.read_bytes())
            return result

        savefig._xpmlp_gallery = True  # type: ignore[attr-defined]
        savefig.__wrapped__ = original  # type: ignore[attr-defined]
        savefig.__doc__ = original.__doc__
        Figure.savefig = savefig  # type: ignore[method-assign]
    _saved.clear()


def saved_figures(block, block_vars, gallery_conf) -> str:
    """Image scraper: the PNG files the code block saved, in order."""
    from sphinx_gallery.scrapers import figure_rst

    names = []
    for data in _saved:
        target = Path(next(block_vars["image_path_iterator"]))
        target.write_bytes(data)
        names.append(target)
    _saved.clear()
    return figure_rst(names, gallery_conf["src_dir"])
