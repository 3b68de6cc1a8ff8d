"""Sphinx configuration for chatcore's documentation.

Build: ``python -m sphinx -W --keep-going -b html docs docs/_build/html``
(warnings are errors; every cross-reference must resolve, see ``nitpicky``).
Nothing is fetched over the network: no intersphinx, so references to the
standard library's classes are listed in ``nitpick_ignore`` instead.
"""

import os
import sys

# The API reference documents this checkout, installed or not.
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))
# The pure-Python engine has the compiled one's names, signatures and
# docstrings (chatcore/_framing_c.pyi), and needs no compiler: document it, so
# every build shows the same pages whichever engine the machine could build.
os.environ["CHATCORE_NO_EXTENSIONS"] = "1"

import chatcore

project = "chatcore"
author = "chatcore contributors"
copyright = "chatcore contributors"
version = release = chatcore.__version__

extensions = ["sphinx.ext.autodoc"]

exclude_patterns = ["_build"]
nitpicky = True
nitpick_ignore = [
    # Standard-library targets (there is no intersphinx to resolve them).
    ("py:class", "socket.socket"),
    ("py:class", "ssl.SSLContext"),
    ("py:class", "ssl.SSLObject"),
    # Names the annotations import for type checkers only: typeshed's
    # ReadableBuffer (bytes, bytearray, memoryview, ...) and chatcore.chat's
    # Producer protocol (an object with a ``more()`` method).
    ("py:class", "ReadableBuffer"),
    ("py:class", "Producer"),
    # typeshed's HasFileno: push_file()'s file, an object with ``fileno()``.
    ("py:class", "HasFileno"),
]

autodoc_member_order = "bysource"
autodoc_typehints = "signature"

html_theme = "furo"
html_title = "chatcore %s" % release
html_static_path = ["_static"]
