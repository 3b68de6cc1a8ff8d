"""Picks the framing engine: the compiled one, or its pure-Python twin.

CHATCORE_NO_EXTENSIONS=1 (the same switch setup.py reads at build time) or a
failed import of the compiled module selects ``chatcore._framing_py``, and so
does a compiled module built from older sources (with a warning).
"""

import os
import warnings
from types import ModuleType
from typing import TYPE_CHECKING, Literal

from . import _framing_py


def _load() -> "tuple[ModuleType, str]":
    if os.environ.get("CHATCORE_NO_EXTENSIONS", "") not in ("", "0"):
        return _framing_py, "python"
    try:
        from . import _framing_c
    except ImportError:
        return _framing_py, "python"
    missing = sorted(set(_framing_py.__all__) - set(dir(_framing_c)))
    if missing:
        # A build left over from an older checkout: running it would fail later
        # and far from the cause.
        warnings.warn(
            "chatcore's compiled engine %s is out of date (it lacks %s); using the "
            "pure-Python engine until it is rebuilt (pip install .)"
            % (getattr(_framing_c, "__file__", "?"), ", ".join(missing)),
            RuntimeWarning,
            stacklevel=2,
        )
        return _framing_py, "python"
    return _framing_c, "cython"


if TYPE_CHECKING:
    # Type checkers see the compiled engine's stub, _framing_c.pyi, which
    # describes both engines (tests/test_typing.py compares it with the twin).
    from . import _framing_c

    engine = _framing_c
    implementation: Literal["cython", "python"]
else:
    engine, implementation = _load()
