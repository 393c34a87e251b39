"""Sphinx configuration of refpg's documentation: the API reference, the conventions and the README.

Build with ``python -m sphinx -W --keep-going -n docs docs/_build/html`` (``pip install -e ".[docs]"``);
tests/test_docs.py builds it the same way. Nothing here reaches the network: math is rendered in the
browser by MathJax, loaded from its script URL, and no intersphinx inventory is fetched.
"""

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(DOCS.parent / "src"))  # document the source tree, installed or not

import refpg  # noqa: E402

project = "refpg"
author = "refpg developers"
copyright = "refpg developers"
version = release = refpg.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
    "refpg_api",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_ext"]
templates_path = []

# `name` links to the object when it imports from the current module, and is emphasis otherwise
# (parameter names); a `refpg.…` name must resolve (see _ext/refpg_api.py).
default_role = "refpg-autolink"

# -n: every cross-reference must resolve. The ones into other projects cannot without intersphinx,
# which would need the network at build time; they are the only ones let through.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(numpy|np|scipy|sp|torch|gymnasium|hypothesis|st|matplotlib|pytest|collections|typing"
               r"|types|pathlib|dataclasses|enum|numbers|os|io)(\..*)?"),
]

autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the numpydoc Parameters and Returns sections give every type, with shapes
autodoc_preserve_defaults = True
autosummary_generate = False

numpydoc_show_class_members = False  # methods are documented in place by autodoc's :members:
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
numpydoc_attributes_as_param_list = True

myst_heading_anchors = 3  # conventions.md links to its own sections by their anchors
myst_enable_extensions = ["dollarmath"]

html_theme = "alabaster"
html_title = f"refpg {release}"
html_static_path = []
html_show_sourcelink = False
