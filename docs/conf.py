"""Sphinx configuration: furo, MyST Markdown, autodoc with napoleon; the zoo and results pages are generated from
the model registry and ``leaderboard/`` by ``_ext/pprogen_docs.py`` at every build.

Build strictly from the repository root::

    pip install ".[docs]"
    sphinx-build -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))

import pprogen  # noqa: E402  (the version, and a clear failure when pprogen is not installed)

project = "pprogen"
author = "the pprogen authors"
copyright = "the pprogen authors"
release = version = pprogen.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "pprogen_docs",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "_generated", "figures", "Thumbs.db", ".DS_Store"]

myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

html_theme = "furo"
html_title = f"pprogen {release}"
html_static_path: list[str] = []

# autodoc: signatures as written (string annotations stay strings), members listed explicitly in docs/api/
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
add_module_names = False
