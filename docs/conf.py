"""Sphinx configuration of the pertx_scvi docs (MyST markdown, notebooks through myst-nb).

Build: ``sphinx-build -W -b html docs docs/_build/html`` (or ``bash docs/build.sh``). Notebooks
under ``tutorials/`` are rendered with the outputs stored in them and never executed here;
``bash docs/build.sh --execute`` re-runs them from their sources in ``../tutorials/``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the package, also when it is not installed
os.environ.setdefault("MPLBACKEND", "Agg")

import pertx_scvi  # noqa: E402

project = "pertx_scvi"
author = "pertx_scvi developers"
copyright = "pertx_scvi developers"  # noqa: A001
version = release = pertx_scvi.__version__

extensions = [
    "myst_nb",  # MyST markdown and .ipynb (includes myst_parser)
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

# .rst first: autosummary writes its generated stubs with the first suffix.
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
master_doc = root_doc = "index"
templates_path = ["_templates"]
exclude_patterns = [
    "_build",
    "build.sh",
    "**.ipynb_checkpoints",
    "results/*/*/**",
]
# docs/results/<run>/ holds the raw outputs of benchmark runs: their README.md is a page (the
# benchmark page links the folder, see _link_result_folders); the reports beside it (summary.md)
# stay files.
exclude_patterns += sorted(
    str(path.relative_to(HERE)) for path in HERE.glob("results/*/*.md") if path.name != "README.md"
)

# MyST / notebooks ------------------------------------------------------------------------------
myst_enable_extensions = ["colon_fence", "dollarmath", "deflist"]
myst_heading_anchors = 3  # `benchmark.md#speed`-style links resolve to section anchors
nb_execution_mode = "off"  # the notebooks carry their outputs; CI never trains a model here
nb_merge_streams = True

# API reference ---------------------------------------------------------------------------------
autosummary_generate = True
autosummary_imported_members = True
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "description"  # types from the signatures, next to the numpy-style text
autodoc_typehints_description_target = "documented_params"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True  # defaults as written ("auto", BASELINE_NAMES), not as reprs
autoclass_content = "class"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_param = True
napoleon_custom_sections = [("Params", "Parameters"), "Returns (prose)"]  # see _prose_returns

# The docstrings reference torch, AnnData, scvi-tools and numpy objects; without network access
# at build time there is no intersphinx inventory to resolve them against, so unresolved
# references stay plain text (nitpicky off) instead of failing the -W build.
nitpicky = False

# HTML -------------------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = "pertx_scvi"
html_theme_options = {
    "show_toc_level": 2,
    "navigation_with_keys": False,
}
html_static_path: list[str] = []
html_show_sourcelink = False


# Hooks -----------------------------------------------------------------------------------------


def _link_result_folders(app, env):
    """Let ``[...](results/<run>/)`` folder links (they suit GitHub) resolve to the run's README."""
    std = env.get_domain("std")
    for docname in sorted(env.found_docs):
        if docname.startswith("results/") and docname.endswith("/README"):
            folder = docname[: -len("README")]
            title = env.titles[docname].astext() if docname in env.titles else folder
            std.anonlabels[folder] = (docname, "")
            std.labels[folder] = (docname, "", title)


def _summary_safe_docstrings(app, what, name, obj, options, lines):
    """Keep autosummary's first-sentence cut out of inline literals.

    autosummary ends a summary at the first ". "; ``ViewAttention``'s first line has one inside
    an inline literal (``q . tanh``), and the cut summary fails the -W build (unclosed literal).
    Drop once the docstring reads ``q · tanh``.
    """
    if name.endswith(".ViewAttention") and lines:
        lines[0] = lines[0].replace("(q . tanh(", "(q · tanh(")


def _is_section_header(lines, i):
    return (
        i + 1 < len(lines)
        and lines[i].strip() != ""
        and len(lines[i + 1].strip()) >= 3
        and set(lines[i + 1].strip()) == {"-"}
    )


_PROSE_RETURNS = "Returns (prose)"


def _prose_returns(app, what, name, obj, options, lines):
    """Keep a numpy ``Returns`` section written as prose from being read as "name : type".

    Most docstrings here give a type line (``pandas.DataFrame``) and napoleon formats those.
    The model's prediction methods describe what they return in sentences and bullet lists
    (``AnnData with one row per source cell, ...:``), which napoleon would split into bogus
    name/type pairs. Before napoleon, such a section is renamed to a generic custom section
    (its text is kept as written); after napoleon, its heading reads "Returns" again.
    """
    for start in range(len(lines)):
        if lines[start].strip() == "Returns" and _is_section_header(lines, start):
            body = lines[start + 2] if start + 2 < len(lines) else ""
            if len(body.split()) > 5:  # not a type line such as "list of list of str"
                lines[start] = _PROSE_RETURNS
                lines[start + 1] = "-" * len(_PROSE_RETURNS)
            return


def _prose_returns_heading(app, what, name, obj, options, lines):
    for i, line in enumerate(lines):
        if line == f".. rubric:: {_PROSE_RETURNS}":
            lines[i] = ".. rubric:: Returns"


_BUILTIN_TYPES = (tuple, list, dict, set, frozenset, str, int, float, bool)


def _no_builtin_docstrings(app, what, name, obj, options, lines):
    """A constant such as ``BASELINE_NAMES`` shows its value, not ``tuple``'s docstring."""
    if what == "data" and type(obj) in _BUILTIN_TYPES:
        lines.clear()


# Subpackages whose ``__all__`` the API page has to cover (plus the top-level names).
_API_MODULES = ("graphs", "datasets", "metrics", "pl", "benchmark", "module", "data", "train")


def _resolve(dotted):
    import importlib

    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


def _check_api_page(app):
    """Warn (a -W failure) about a public name that ``api.md`` does not list.

    Public: in ``pertx_scvi.__all__`` or a subpackage's ``__all__``, or a public method that a
    ``pertx_scvi`` class adds to :class:`~pertx_scvi.PertTX`. A listed name that does not exist
    fails through autosummary; this catches the other direction.
    """
    import importlib
    import re

    from sphinx.util import logging

    logger = logging.getLogger(__name__)
    listed = set()
    module = "pertx_scvi"
    text = (HERE / "api.md").read_text(encoding="utf-8")
    for line in text.splitlines():
        if found := re.match(r"\.\. currentmodule:: (\S+)", line.strip()):
            module = found.group(1)
        elif re.fullmatch(r"   ~?[A-Za-z_][\w.]*", line):
            listed.add(f"{module}.{line.strip().lstrip('~')}")
    public = {f"pertx_scvi.{name}" for name in pertx_scvi.__all__}
    public -= {f"pertx_scvi.{name}" for name in (*_API_MODULES, "__version__")}
    for name in _API_MODULES:
        sub = importlib.import_module(f"pertx_scvi.{name}")
        public |= {f"pertx_scvi.{name}.{member}" for member in sub.__all__}
    for cls in pertx_scvi.PertTX.__mro__:
        if cls.__module__.startswith("pertx_scvi"):
            public |= {f"pertx_scvi.PertTX.{m}" for m in vars(cls) if not m.startswith("_")}
    listed_objects = [obj for obj in map(_resolve, listed) if obj is not None]
    missing = {
        name for name in public - listed if not any(_resolve(name) is obj for obj in listed_objects)
    }
    for name in sorted(missing):  # re-exports (px.GeneGraph) count as listed
        logger.warning(
            "%s is public but not in docs/api.md", name, type="pertx", subtype="api_missing"
        )


def setup(app):
    app.connect("builder-inited", _check_api_page)
    app.connect("autodoc-process-docstring", _no_builtin_docstrings)
    app.connect("env-updated", _link_result_folders)
    app.connect("autodoc-process-docstring", _prose_returns, priority=400)  # before napoleon
    app.connect("autodoc-process-docstring", _prose_returns_heading, priority=600)  # after
    app.connect("autodoc-process-docstring", _summary_safe_docstrings)
