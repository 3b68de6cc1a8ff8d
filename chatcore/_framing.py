"""Picks the framing engine: the compiled one, or its pure-Python twin.

CHATCORE_NO_EXTENSIONS=1 (the same switch setup.py reads at build time) or a
failed import of the compiled module selects ``chatcore._framing_py``.
"""

import os
from types import ModuleType

from . import _framing_py


def _load() -> "tuple[ModuleType, str]":
    if os.environ.get("CHATCORE_NO_EXTENSIONS", "") not in ("", "0"):
        return _framing_py, "python"
    try:
        from . import _framing_c
    except ImportError:
        return _framing_py, "python"
    return _framing_c, "cython"


engine, implementation = _load()
