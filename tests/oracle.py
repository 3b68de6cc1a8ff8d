"""The oracle: the real ``asyncore``/``asynchat``, against which chatcore is compared.

On Python <= 3.11 that is the standard library's pair; on 3.12+, where they
were removed, PyPI's ``pyasyncore`` and ``pyasynchat`` (verbatim copies,
installed by the ``test`` extra).  This module is the one place that imports
them; tests use ``oracle.asynchat`` / ``oracle.asyncore``, or ``require()``.

Whatever ``chatcore.compat.install()`` left under those names in
``sys.modules`` is never taken for the oracle, and ``sys.modules`` is left as
it was found: the oracle is held here by reference only, so a later
``install()`` (which refuses to run beside foreign modules under those names)
and ``import asynchat`` in other tests are not affected by this import.
"""

import os
import sys
from importlib import metadata
from types import ModuleType
from typing import Optional

import pytest

from chatcore.benchmark.framing import STDLIB, import_legacy

__all__ = ["MISSING", "SOURCE", "asynchat", "asyncore", "is_chatcore", "load", "require"]


def is_chatcore(module: object) -> bool:
    """Whether *module* is one of chatcore's (its compat stand-ins included)."""
    name = getattr(module, "__name__", "") or ""
    path = getattr(module, "__file__", "") or ""
    return name.split(".")[0] == "chatcore" or "chatcore" in os.path.normpath(path).split(os.sep)


def load() -> tuple[Optional[tuple[ModuleType, ModuleType]], str]:
    """((asynchat, asyncore), label) for the oracle, or (None, the reason it is missing).

    The import, and the check that the files really are the standard
    library's or PyPI's copies, is ``chatcore.benchmark.framing.import_legacy``
    (the benchmark's legacy rows use the same).
    """
    python = "Python %s" % sys.version.split()[0]
    try:
        origin, asynchat, asyncore = import_legacy()
    except ImportError as exc:
        if sys.version_info < (3, 12):
            return None, "stdlib asyncore/asynchat, the oracle, cannot be imported on %s (%s)" % (python, exc)
        return None, (
            "the oracle, PyPI's pyasyncore and pyasynchat (stdlib's asyncore/asynchat were "
            'removed in Python 3.12), is not installed on %s: pip install -e ".[test]" (%s)' % (python, exc)
        )
    # pyasynchat must run on pyasyncore, not on whatever else was importable.
    if asynchat.asyncore is not asyncore:
        return None, "no oracle on %s: asynchat runs on another asyncore (%r)" % (python, asynchat.asyncore)
    if origin == STDLIB:
        source = "stdlib"
    else:
        source = " + ".join("%s %s" % (name, metadata.version(name)) for name in ("pyasyncore", "pyasynchat"))
    return (asynchat, asyncore), "%s on %s" % (source, python)


_modules, _label = load()
#: Why there is no oracle here (a skip reason), or None.
MISSING: Optional[str] = None if _modules is not None else _label
#: Where the oracle comes from, e.g. "stdlib on Python 3.11.7" or
#: "pyasyncore 1.0.5 + pyasynchat 1.0.5 on Python 3.13.0"; None without one.
SOURCE: Optional[str] = _label if _modules is not None else None
asynchat: Optional[ModuleType] = _modules[0] if _modules is not None else None
asyncore: Optional[ModuleType] = _modules[1] if _modules is not None else None


def require() -> None:
    """Skip the calling test (or, at import time, its module) when there is no oracle."""
    if MISSING is not None:
        pytest.skip(MISSING, allow_module_level=True)
