"""Sphinx configuration of the s4kit book: ``make book`` (see the Makefile).

The source folder is the repository root (``sphinx-build -c book . book/_build/html``), so the
notebooks and the method notes are pages where they live; only the files listed in
``include_patterns`` are read. Notebooks are executed by myst-nb through jupyter-cache: an
unchanged notebook is not re-executed. A cell that raises fails the build.

``S4KIT_FAST=1`` executes every notebook at its smoke-test settings (``make test-book``) with a
cache of its own, so smoke outputs never stand in for the teaching ones.
"""
import os

import s4kit

project = "s4kit"
author = "the s4kit authors"
release = version = s4kit.__version__
copyright = "2026, the s4kit authors"

FAST = os.environ.get("S4KIT_FAST", "") not in ("", "0", "false", "False")

extensions = ["myst_nb", "sphinx.ext.mathjax", "sphinx-mathjax-offline"]  # MathJax served with the book: works offline
root_doc = "book/index"
include_patterns = ["book/*.md", "book/*.ipynb", "notebooks/*.ipynb", "docs/methods/*.md", "docs/protocols.md"]
exclude_patterns = ["book/_build", "**/.ipynb_checkpoints", "docs/methods/notes_fidelity.md"]

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
myst_dmath_double_inline = True

nb_execution_mode = "cache"
nb_execution_cache_path = os.path.join(os.path.dirname(__file__), "_build", ".jupyter_cache_fast" if FAST else ".jupyter_cache")
nb_execution_timeout = 1800
nb_execution_raise_on_error = True          # no silent allow_errors: a failing cell fails the build
nb_execution_show_tb = True
nb_merge_streams = True
nb_render_markdown_format = "myst"

html_theme = "sphinx_book_theme"
html_title = f"s4kit {version}"
html_theme_options = {"show_toc_level": 2, "use_download_button": True}
suppress_warnings = ["mystnb.unknown_mime_type", "myst.header"]
