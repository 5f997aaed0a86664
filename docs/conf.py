"""Sphinx configuration of bayesfed's documentation site (``make docs`` builds it into ``site/``).

The build is strict: ``make docs`` and ``tests/test_docs.py`` run Sphinx with ``-W --keep-going
-n``, so any warning, broken reference or page outside the toctree fails it. No intersphinx:
the build must work without network, so references to numpy, PyMC, ArviZ, ... types stay
plain text (``nitpick_ignore_regex`` below).
"""

from __future__ import annotations

import sys
from pathlib import Path

import bayesfed

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))

project = "bayesfed"
author = "bayesfed developers"
copyright = "bayesfed developers"
release = bayesfed.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "bayesfed_docs",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store"]

# MyST: $...$ and $$...$$ maths, amsmath environments, ::: fences, heading anchors for
# [text](page.md#anchor) links.
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# autodoc + napoleon: numpydoc docstrings, members in source order, signatures with hints.
# docs/api.md wraps each automodule in a container: MyST registers the section titles at the
# top level of an eval-rst block as site-wide labels, so two module docstrings with a section
# of the same name ("Priors") would otherwise be a duplicate-label warning.
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "exclude-members": "model_config"}
toc_object_entries_show_parents = "hide"
autodoc_typehints = "signature"
autodoc_class_signature = "separated"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_attr_annotations = True

# Nitpicky: every cross-reference must resolve. Without intersphinx, other packages' types
# (numpy.ndarray, pymc.Model, xarray.DataTree, pathlib.Path, numpydoc type phrases such as
# "tuple of str") cannot, so py:class references outside bayesfed are not checked; references
# to bayesfed's own modules, classes and functions are.
nitpicky = True
nitpick_ignore_regex = [
    ("py:class", r"(?!bayesfed\.).*"),
]
# Private helpers named in public docstrings (not documented, so not resolvable).
nitpick_ignore = [
    ("py:func", "_fixed_effects"),  # bayesfed.modelling.event_pooled.Terms
]

html_theme = "furo"
html_title = f"bayesfed {release}"
html_show_sourcelink = False
html_copy_source = False
